//! Static files from a FastCGI or static upstream's document root.
//!
//! Owns: answering GET and HEAD for a file `fastcgi::resolve` found under
//! the root: `Content-Type` from the extension, `Last-Modified` and a
//! strong `ETag` (modification time and size, as nginx), `304` for
//! `If-None-Match`/`If-Modified-Since`, one byte range (`206`, `416`,
//! `If-Range`; RFC 9110 §14), `Cache-Control: max-age`, and the body
//! (small files from memory, [`FileCache`]).
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
    let Ok(meta) = file.metadata() else {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
        return Answer {
            status: StatusCode::NOT_FOUND,
            headers,
            body: None,
        };
    };
    let f = cache.facts(&meta, name);
    let len = f.len;
    headers.insert(header::ETAG, f.etag.clone());
    headers.insert(header::LAST_MODIFIED, f.last_modified.clone());
    let cc = max_age.map(|a| {
        if a.is_zero() {
            HeaderValue::from_static("no-cache")
        } else {
            HeaderValue::from_str(&format!("public, max-age={}", a.as_secs()))
                .unwrap_or(HeaderValue::from_static("no-cache"))
        }
    });
    if let Some(v) = cc {
        headers.insert(header::CACHE_CONTROL, v);
    }
    let etag = f.etag.as_bytes();
    let not_modified = match req.get(header::IF_NONE_MATCH) {
        // RFC 9110 §13.1.2: weak comparison; If-None-Match wins over
        // If-Modified-Since.
        Some(inm) => inm.to_str().is_ok_and(|v| {
            v.split(',').any(|t| {
                let t = t.trim();
                t == "*" || t.trim_start_matches("W/").as_bytes() == etag
            })
        }),
        None => req
            .get(header::IF_MODIFIED_SINCE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok())
            .is_some_and(|since| {
                since
                    .duration_since(UNIX_EPOCH)
                    .is_ok_and(|s| s.as_secs() >= f.secs)
            }),
    };
    if not_modified {
        return Answer {
            status: StatusCode::NOT_MODIFIED,
            headers,
            body: None,
        };
    }
    headers.insert(header::CONTENT_TYPE, f.content_type.clone());
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    // If-Range: the range only if the client's copy is this one (a strong
    // ETag or the exact date); otherwise the whole file.
    let if_range_ok = req
        .get(header::IF_RANGE)
        .is_none_or(|v| v.as_bytes() == etag || v == f.last_modified);
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
        // A small file's contents come from memory; a range of a file not
        // in memory yet reads only the range.
        let whole = f.bytes.get().cloned().or_else(|| {
            (len <= SMALL && status == StatusCode::OK)
                .then(|| read_at(&file, 0, len as usize).ok())
                .flatten()
                .inspect(|b| {
                    let _ = f.bytes.set(b.clone());
                })
        });
        FileBody {
            memory: whole.map(|b| b.slice(start as usize..(start + count) as usize)),
            file,
            offset: start,
            left: count,
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
pub(crate) fn byte_range(v: &str, len: u64) -> Result<Option<(u64, u64)>, ()> {
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

/// What baton knows of a file, keyed by device and inode and checked
/// against the modification time and size `fstat` gives on every request
/// (so an edited file is read again at once): its validators and type as
/// header values, and a small file's contents. nginx keeps descriptors
/// (`open_file_cache`) and sends with `sendfile`; hyper writes `Bytes`, so
/// the contents themselves are what saves the work here: a hit is a
/// reference count, no read, no copy, no header formatted.
pub struct FileCache {
    files: moka::sync::Cache<(u64, u64), Arc<Facts>>,
}

pub struct Facts {
    mtime_ns: i128,
    len: u64,
    /// Modification time in whole seconds (for `If-Modified-Since`).
    secs: u64,
    etag: HeaderValue,
    last_modified: HeaderValue,
    /// The name's extension the type was taken from.
    ext: Box<str>,
    content_type: HeaderValue,
    /// The whole file, once a full GET has read it (files up to
    /// [`SMALL`]).
    bytes: std::sync::OnceLock<Bytes>,
}

/// Files up to this size are kept whole; larger ones are read in pieces
/// of [`PIECE`].
const SMALL: u64 = 4 * 1024 * 1024;
const PIECE: u64 = 256 * 1024;

impl FileCache {
    /// Up to `bytes` of file contents.
    pub fn new(bytes: u64) -> Self {
        FileCache {
            files: moka::sync::Cache::builder()
                .max_capacity(bytes)
                // A small file may hold its contents; a larger one never does.
                .weigher(|_, f: &Arc<Facts>| {
                    let contents = if f.len <= SMALL { f.len } else { 0 };
                    u32::try_from(contents + 256).unwrap_or(u32::MAX)
                })
                .build(),
        }
    }

    /// The file's facts: remembered when it is the same file as last time.
    fn facts(&self, m: &std::fs::Metadata, name: &str) -> Arc<Facts> {
        use std::os::unix::fs::MetadataExt;
        let key = (m.dev(), m.ino());
        let mtime_ns = i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec());
        let ext = name.rsplit_once('.').map_or("", |(_, e)| e);
        if let Some(f) = self.files.get(&key)
            && f.mtime_ns == mtime_ns
            && f.len == m.len()
            && *f.ext == *ext
        {
            return f;
        }
        let len = m.len();
        let secs = u64::try_from(m.mtime()).unwrap_or(0);
        let f = Arc::new(Facts {
            mtime_ns,
            len,
            secs,
            etag: HeaderValue::from_str(&format!("\"{secs:x}-{len:x}\""))
                .unwrap_or(HeaderValue::from_static("\"0\"")),
            last_modified: HeaderValue::from_str(&httpdate::fmt_http_date(
                UNIX_EPOCH + Duration::from_secs(secs),
            ))
            .unwrap_or(HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT")),
            ext: ext.into(),
            content_type: content_type(name),
            bytes: std::sync::OnceLock::new(),
        });
        self.files.insert(key, f.clone());
        f
    }
}

/// The type by the name's extension, `charset=utf-8` for text.
fn content_type(name: &str) -> HeaderValue {
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
    HeaderValue::from_str(&ctype).unwrap_or(HeaderValue::from_static("application/octet-stream"))
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
/// every read); nginx reads the same way without `aio`. A plain HTTP/1.1
/// connection sends it with `sendfile` instead ([`FileBody::sendfile`]).
pub struct FileBody {
    /// The bytes to send, when the file is small enough to be kept.
    memory: Option<Bytes>,
    file: std::fs::File,
    offset: u64,
    left: u64,
}

impl FileBody {
    pub fn poll_chunk(&mut self, _cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        if let Some(b) = self.memory.take() {
            self.left = 0;
            return Poll::Ready(Some(Ok(b)));
        }
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let want = self.left.min(PIECE) as usize;
        match read_at(&self.file, self.offset, want) {
            Ok(b) => {
                self.offset += want as u64;
                self.left -= want as u64;
                Poll::Ready(Some(Ok(b)))
            }
            Err(e) => {
                // The file shrank while being served, or the disk failed.
                self.left = 0;
                Poll::Ready(Some(Err(e)))
            }
        }
    }

    /// Sends the next piece straight from the file to `socket` (a
    /// non-blocking TCP socket): the kernel reads the page cache into the
    /// socket, no copy through baton. Bytes sent; `WouldBlock` when the
    /// socket is full.
    pub fn sendfile(&mut self, socket: impl std::os::fd::AsFd) -> io::Result<usize> {
        // Once pieces go by sendfile, the kept bytes are not used.
        self.memory = None;
        let mut offset = self.offset as libc::off_t;
        let want = self.left.min(1 << 30) as usize;
        let n = nix::sys::sendfile::sendfile(socket, &self.file, Some(&mut offset), want)
            .map_err(io::Error::from)?;
        if n == 0 && want > 0 {
            // The file shrank while being served.
            self.left = 0;
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.offset += n as u64;
        self.left -= n as u64;
        Ok(n as usize)
    }

    pub fn is_end(&self) -> bool {
        self.left == 0
    }

    /// The bytes still to send.
    pub fn remaining(&self) -> u64 {
        self.left
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
