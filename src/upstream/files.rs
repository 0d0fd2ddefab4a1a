//! Static files from a FastCGI upstream's document root.
//!
//! Owns: answering GET and HEAD for a file `fastcgi::resolve` found under
//! the root: `Content-Type` from the extension, `Last-Modified` and a
//! strong `ETag` (modification time and size, as nginx), `304` for
//! `If-None-Match`/`If-Modified-Since`, one byte range (`206`, `416`,
//! `If-Range`; RFC 9110 §14), `Cache-Control: max-age`, and the body
//! streamed in 64 KiB reads.
//!
//! Must not: map paths (that is `fastcgi::resolve`, which keeps them under
//! the root) or serve scripts.

use std::io;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};

/// The answer for a static file: the head, and the file to stream (none
/// for HEAD, 304 and 405).
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Option<FileBody>,
}

/// Builds the answer to `method` for an open file (`name`: its URL path,
/// for the type), with the request's conditional headers.
pub fn answer(
    file: std::fs::File,
    name: &str,
    method: &Method,
    req: &HeaderMap,
    max_age: Option<Duration>,
    cache: &FileCache,
) -> Answer {
    let mut headers = HeaderMap::new();
    if method != Method::GET && method != Method::HEAD {
        headers.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Answer {
            status: StatusCode::METHOD_NOT_ALLOWED,
            headers,
            body: None,
        };
    }
    let meta = file.metadata().ok();
    let (len, mtime) = match &meta {
        Some(m) => (m.len(), m.modified().unwrap_or(UNIX_EPOCH)),
        None => (0, UNIX_EPOCH),
    };
    let secs = mtime.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let etag = format!("\"{secs:x}-{len:x}\"");
    let last_modified = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&last_modified) {
        headers.insert(header::LAST_MODIFIED, v);
    }
    let cc = max_age.map(|a| {
        if a.is_zero() {
            "no-cache".to_string()
        } else {
            format!("public, max-age={}", a.as_secs())
        }
    });
    if let Some(v) = cc.and_then(|c| HeaderValue::from_str(&c).ok()) {
        headers.insert(header::CACHE_CONTROL, v);
    }
    let not_modified = match req.get(header::IF_NONE_MATCH) {
        // RFC 9110 §13.1.2: weak comparison; If-None-Match wins over
        // If-Modified-Since.
        Some(inm) => inm.to_str().is_ok_and(|v| {
            v.split(',').any(|t| {
                let t = t.trim();
                t == "*" || t.trim_start_matches("W/") == etag.trim_start_matches("W/")
            })
        }),
        None => req
            .get(header::IF_MODIFIED_SINCE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok())
            .is_some_and(|since| {
                since
                    .duration_since(UNIX_EPOCH)
                    .is_ok_and(|s| s.as_secs() >= secs)
            }),
    };
    if not_modified {
        return Answer {
            status: StatusCode::NOT_MODIFIED,
            headers,
            body: None,
        };
    }
    let ctype = mime_guess::from_path(name).first_or_octet_stream();
    let ctype = match ctype.type_() {
        mime_guess::mime::TEXT | mime_guess::mime::APPLICATION
            if ctype.get_param("charset").is_none()
                && (ctype.type_() == mime_guess::mime::TEXT
                    || ctype.subtype() == mime_guess::mime::JAVASCRIPT
                    || ctype.subtype() == mime_guess::mime::JSON) =>
        {
            format!("{ctype}; charset=utf-8")
        }
        _ => ctype.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&ctype) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    // If-Range: the range only if the client's copy is this one (a strong
    // ETag or the exact date); otherwise the whole file.
    let if_range_ok = req.get(header::IF_RANGE).is_none_or(|v| {
        let v = v.to_str().unwrap_or("");
        v == etag || v == last_modified
    });
    let range = req
        .get(header::RANGE)
        .filter(|_| if_range_ok)
        .and_then(|v| v.to_str().ok())
        .map(|v| byte_range(v, len));
    let (status, start, count) = match range {
        Some(Ok(Some((a, b)))) => {
            let cr = format!("bytes {a}-{b}/{len}");
            if let Ok(v) = HeaderValue::from_str(&cr) {
                headers.insert(header::CONTENT_RANGE, v);
            }
            (StatusCode::PARTIAL_CONTENT, a, b - a + 1)
        }
        Some(Err(())) => {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                headers.insert(header::CONTENT_RANGE, v);
            }
            headers.remove(header::CONTENT_TYPE);
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
            return Answer {
                status: StatusCode::RANGE_NOT_SATISFIABLE,
                headers,
                body: None,
            };
        }
        // No range, or one baton does not serve (several ranges): the
        // whole file, which RFC 9110 §14.2 allows.
        _ => (StatusCode::OK, 0, len),
    };
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    let body = (method == Method::GET).then(|| {
        let whole = meta
            .as_ref()
            .filter(|_| len <= SMALL)
            .and_then(|m| cache.get(&file, m).ok());
        match whole {
            Some(b) => FileBody::Memory(Some(b.slice(start as usize..(start + count) as usize))),
            None => FileBody::Disk {
                file,
                offset: start,
                left: count,
            },
        }
    });
    Answer {
        status,
        headers,
        body,
    }
}

/// One `bytes=` range of a file of `len` bytes (RFC 9110 §14.1.2):
/// `Ok(Some((first, last)))` to serve, `Ok(None)` to ignore (not bytes,
/// several ranges, malformed), `Err` when it lies past the end (416).
fn byte_range(v: &str, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = v.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Ok(None);
    };
    let num = |s: &str| s.trim().parse::<u64>().ok();
    match (a.trim().is_empty(), b.trim().is_empty()) {
        // bytes=-N: the last N bytes.
        (true, false) => match num(b) {
            Some(0) => Err(()),
            Some(n) if len > 0 => Ok(Some((len.saturating_sub(n), len - 1))),
            Some(_) => Err(()),
            None => Ok(None),
        },
        (false, _) => {
            let Some(first) = num(a) else { return Ok(None) };
            let last = if b.trim().is_empty() {
                len.saturating_sub(1)
            } else {
                match num(b) {
                    Some(l) if l >= first => l.min(len.saturating_sub(1)),
                    _ => return Ok(None),
                }
            };
            if first >= len {
                Err(())
            } else {
                Ok(Some((first, last)))
            }
        }
        (true, true) => Ok(None),
    }
}

/// Small files kept in memory, keyed by device and inode and checked
/// against the modification time and size `fstat` gives on every request
/// (so an edited file is read again at once). nginx keeps descriptors
/// (`open_file_cache`) and sends with `sendfile`; hyper writes `Bytes`, so
/// the contents themselves are what saves the work here: a hit is a
/// reference count, no read, no copy into a new buffer.
pub struct FileCache {
    files: moka::sync::Cache<(u64, u64), Arc<Cached>>,
}

pub struct Cached {
    mtime_ns: i128,
    bytes: Bytes,
}

/// Files up to this size are kept whole; larger ones are read in pieces
/// of this size.
const SMALL: u64 = 1024 * 1024;
const PIECE: u64 = 256 * 1024;

impl FileCache {
    /// Up to `bytes` of file contents.
    pub fn new(bytes: u64) -> Self {
        FileCache {
            files: moka::sync::Cache::builder()
                .max_capacity(bytes)
                .weigher(|_, c: &Arc<Cached>| u32::try_from(c.bytes.len()).unwrap_or(u32::MAX))
                .build(),
        }
    }

    /// The whole file, from memory when it is the same file as last read.
    fn get(&self, file: &std::fs::File, m: &std::fs::Metadata) -> io::Result<Bytes> {
        use std::os::unix::fs::MetadataExt;
        let key = (m.dev(), m.ino());
        let mtime_ns = i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec());
        if let Some(c) = self.files.get(&key)
            && c.mtime_ns == mtime_ns
            && c.bytes.len() as u64 == m.len()
        {
            return Ok(c.bytes.clone());
        }
        let bytes = read_at(file, 0, m.len() as usize)?;
        self.files.insert(
            key,
            Arc::new(Cached {
                mtime_ns,
                bytes: bytes.clone(),
            }),
        );
        Ok(bytes)
    }
}

/// `len` bytes at `offset`, in one buffer.
fn read_at(file: &std::fs::File, offset: u64, len: usize) -> io::Result<Bytes> {
    use std::os::unix::fs::FileExt;
    let mut buf = BytesMut::zeroed(len);
    file.read_exact_at(&mut buf, offset)?;
    Ok(buf.freeze())
}

/// A file's bytes: in memory (a small file, from the [`FileCache`]), or
/// read with `pread` from the request's own task 256 KiB at a time. A read
/// of the page cache takes microseconds, far less than the thread hop an
/// async file read costs (tokio's files go through its blocking pool for
/// every read); nginx reads the same way without `aio`.
pub enum FileBody {
    Memory(Option<Bytes>),
    Disk {
        file: std::fs::File,
        offset: u64,
        left: u64,
    },
}

impl FileBody {
    pub fn poll_chunk(&mut self, _cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        match self {
            FileBody::Memory(b) => Poll::Ready(b.take().map(Ok)),
            FileBody::Disk { left: 0, .. } => Poll::Ready(None),
            FileBody::Disk { file, offset, left } => {
                let want = (*left).min(PIECE) as usize;
                match read_at(file, *offset, want) {
                    Ok(b) => {
                        *offset += want as u64;
                        *left -= want as u64;
                        Poll::Ready(Some(Ok(b)))
                    }
                    Err(e) => {
                        // The file shrank while being served, or the disk failed.
                        *left = 0;
                        Poll::Ready(Some(Err(e)))
                    }
                }
            }
        }
    }

    pub fn is_end(&self) -> bool {
        match self {
            FileBody::Memory(b) => b.is_none(),
            FileBody::Disk { left, .. } => *left == 0,
        }
    }

    /// The bytes still to send.
    pub fn remaining(&self) -> u64 {
        match self {
            FileBody::Memory(b) => b.as_ref().map_or(0, |b| b.len() as u64),
            FileBody::Disk { left, .. } => *left,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::byte_range;

    #[test]
    fn byte_ranges_follow_rfc_9110() {
        assert_eq!(byte_range("bytes=0-3", 10), Ok(Some((0, 3))));
        assert_eq!(byte_range("bytes=4-", 10), Ok(Some((4, 9))));
        assert_eq!(byte_range("bytes=-3", 10), Ok(Some((7, 9))));
        assert_eq!(byte_range("bytes=-30", 10), Ok(Some((0, 9))));
        assert_eq!(byte_range("bytes=5-100", 10), Ok(Some((5, 9))));
        assert_eq!(byte_range("bytes=10-", 10), Err(()));
        assert_eq!(byte_range("bytes=-0", 10), Err(()));
        assert_eq!(byte_range("bytes=0-1,4-5", 10), Ok(None));
        assert_eq!(byte_range("bytes=5-2", 10), Ok(None));
        assert_eq!(byte_range("items=0-1", 10), Ok(None));
        assert_eq!(byte_range("bytes=x-1", 10), Ok(None));
    }
}
