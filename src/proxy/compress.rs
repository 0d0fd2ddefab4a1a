//! Response compression for routes with `compress = true`: zstd, brotli
//! or gzip, as the client's `Accept-Encoding` prefers, streamed.
//!
//! Owns: whether a response is compressed (a compressible type, not
//! already encoded, no `Cache-Control: no-transform`, not a range, not
//! tiny, not an event stream), the header changes that keep caches right
//! (`Content-Encoding`, `Vary: Accept-Encoding`, no `Content-Length`, the
//! `ETag` made weak as nginx does), and the encoding body. The codecs are
//! the flate2, brotli and zstd crates.

use std::io::Write;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use http_body::{Body, Frame, SizeHint};

use super::body::RespBody;
use crate::upstream;

/// Below this many bytes (when the length is known) compression costs
/// more than it saves (nginx's `gzip_min_length` is 20; CDNs use ~1 KB).
const MIN_LEN: u64 = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coding {
    Zstd,
    Br,
    Gzip,
}

impl Coding {
    fn token(self) -> &'static str {
        match self {
            Coding::Zstd => "zstd",
            Coding::Br => "br",
            Coding::Gzip => "gzip",
        }
    }
}

/// The coding to use for `accept_encoding` (RFC 9110 §12.5.3): the
/// client's highest q-value among those baton has, ties broken zstd, br,
/// gzip (smaller output first); `None` when the client takes none.
pub fn choose(accept_encoding: Option<&HeaderValue>) -> Option<Coding> {
    let v = accept_encoding?.to_str().ok()?;
    let mut best: Option<(f32, Coding)> = None;
    for part in v.split(',') {
        let mut it = part.split(';');
        let name = it.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = it
            .find_map(|p| p.trim().strip_prefix("q="))
            .and_then(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        let coding = match name.as_str() {
            "zstd" => Coding::Zstd,
            "br" => Coding::Br,
            "gzip" | "x-gzip" => Coding::Gzip,
            _ => continue,
        };
        if q <= 0.0 {
            continue;
        }
        let rank = |c: Coding| match c {
            Coding::Zstd => 0,
            Coding::Br => 1,
            Coding::Gzip => 2,
        };
        best = match best {
            Some((bq, bc)) if bq > q || (bq == q && rank(bc) <= rank(coding)) => Some((bq, bc)),
            _ => Some((q, coding)),
        };
    }
    best.map(|(_, c)| c)
}

/// Whether a response may be compressed.
pub fn eligible(method: &Method, status: StatusCode, h: &HeaderMap) -> bool {
    if method == Method::HEAD || status != StatusCode::OK {
        return false;
    }
    if h.contains_key(header::CONTENT_ENCODING) || h.contains_key(header::CONTENT_RANGE) {
        return false;
    }
    let no_transform = h.get_all(header::CACHE_CONTROL).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.to_ascii_lowercase().contains("no-transform"))
    });
    if no_transform {
        return false;
    }
    let small = h
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n < MIN_LEN);
    if small {
        return false;
    }
    let Some(ct) = h.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let ct = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    (ct.starts_with("text/") && ct != "text/event-stream")
        || matches!(
            ct.as_str(),
            "application/json"
                | "application/javascript"
                | "application/xml"
                | "application/xhtml+xml"
                | "application/rss+xml"
                | "application/atom+xml"
                | "application/manifest+json"
                | "application/wasm"
                | "image/svg+xml"
                | "font/ttf"
                | "font/otf"
        )
        || ct.ends_with("+json")
        || ct.ends_with("+xml")
}

/// Marks `h` for `coding`: `Content-Encoding`, `Vary`, no length, a weak
/// `ETag` (the bytes differ from the identity's), no ranges.
pub fn encode_headers(h: &mut HeaderMap, coding: Coding) {
    h.insert(
        header::CONTENT_ENCODING,
        HeaderValue::from_static(coding.token()),
    );
    h.remove(header::CONTENT_LENGTH);
    h.remove(header::ACCEPT_RANGES);
    vary(h);
    if let Some(e) = h.get(header::ETAG).and_then(|v| v.to_str().ok())
        && !e.starts_with("W/")
        && let Ok(weak) = HeaderValue::from_str(&format!("W/{e}"))
    {
        h.insert(header::ETAG, weak);
    }
}

/// `Vary: Accept-Encoding` on every response that could have been
/// compressed, so a cache does not give a compressed copy to a client that
/// did not ask for one.
pub fn vary(h: &mut HeaderMap) {
    let varies = h.get_all(header::VARY).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|p| p.trim().eq_ignore_ascii_case("accept-encoding") || p.trim() == "*")
        })
    });
    if !varies {
        h.append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }
}

enum Encoder {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Br(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl Encoder {
    fn new(c: Coding) -> std::io::Result<Encoder> {
        Ok(match c {
            // Levels as common site configs: gzip 5, brotli 4, zstd 3.
            Coding::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(5),
            )),
            Coding::Br => Encoder::Br(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                16 * 1024,
                4,
                22,
            ))),
            Coding::Zstd => Encoder::Zstd(zstd::stream::write::Encoder::new(Vec::new(), 3)?),
        })
    }

    fn write(&mut self, b: &[u8]) -> std::io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.write_all(b),
            Encoder::Br(e) => e.write_all(b),
            Encoder::Zstd(e) => e.write_all(b),
        }
    }

    /// What is ready to send.
    fn take(&mut self) -> Vec<u8> {
        match self {
            Encoder::Gzip(e) => std::mem::take(e.get_mut()),
            Encoder::Br(e) => std::mem::take(e.get_mut()),
            Encoder::Zstd(e) => std::mem::take(e.get_mut()),
        }
    }

    fn finish(self) -> std::io::Result<Vec<u8>> {
        match self {
            Encoder::Gzip(e) => e.finish(),
            Encoder::Br(e) => Ok(e.into_inner()),
            Encoder::Zstd(e) => e.finish(),
        }
    }
}

/// A response body encoded on the way out.
pub struct Encoded {
    inner: RespBody,
    enc: Option<Encoder>,
    /// Trailers that arrived while encoded bytes were still to send.
    trailers: Option<Frame<Bytes>>,
}

impl Encoded {
    pub fn new(inner: RespBody, coding: Coding) -> Result<Encoded, RespBody> {
        match Encoder::new(coding) {
            Ok(e) => Ok(Encoded {
                inner,
                enc: Some(e),
                trailers: None,
            }),
            Err(_) => Err(inner),
        }
    }

    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, upstream::BodyError>>> {
        loop {
            let Some(enc) = self.enc.as_mut() else {
                return Poll::Ready(self.trailers.take().map(Ok));
            };
            match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
                Some(Ok(f)) => match f.into_data() {
                    Ok(d) => {
                        if enc.write(&d).is_err() {
                            return Poll::Ready(None);
                        }
                        let out = enc.take();
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                        }
                    }
                    // Trailers pass after the encoded data.
                    Err(f) => {
                        let rest = self
                            .enc
                            .take()
                            .and_then(|e| e.finish().ok())
                            .unwrap_or_default();
                        if rest.is_empty() {
                            return Poll::Ready(Some(Ok(f)));
                        }
                        self.trailers = Some(f);
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from(rest)))));
                    }
                },
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => {
                    let rest = self
                        .enc
                        .take()
                        .and_then(|e| e.finish().ok())
                        .unwrap_or_default();
                    return Poll::Ready(
                        (!rest.is_empty()).then(|| Ok(Frame::data(Bytes::from(rest)))),
                    );
                }
            }
        }
    }

    pub fn is_end_stream(&self) -> bool {
        self.enc.is_none() && self.trailers.is_none()
    }

    pub fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_s_preference_then_the_smallest() {
        let c = |v: &str| choose(Some(&HeaderValue::from_str(v).unwrap()));
        assert_eq!(c("gzip, deflate, br, zstd"), Some(Coding::Zstd));
        assert_eq!(c("gzip, deflate, br"), Some(Coding::Br));
        assert_eq!(c("gzip;q=1, br;q=0.5"), Some(Coding::Gzip));
        assert_eq!(c("br;q=0, gzip"), Some(Coding::Gzip));
        assert_eq!(c("identity"), None);
        assert_eq!(choose(None), None);
    }
}
