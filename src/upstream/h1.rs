//! HTTP/1.1 to upstreams for requests whose body is in hand (none, or
//! buffered for a replay), written and read by the request's own task.
//!
//! Written by hand rather than through hyper's client connection for the
//! common case only: hyper drives each connection from a task of its own and
//! hands every request and response across channels (an mpsc send, a
//! oneshot, a body channel, two task wake-ups a request), which was about a
//! third of baton's user-space CPU per proxied request (docs/benchmarks.md).
//! Here one `writev`-sized write sends the head and body, and the response
//! head and body are read straight off the socket. Streamed request bodies
//! and protocol upgrades still go through hyper
//! ([`crate::upstream::Server::hyper_link`]), which reads the response while
//! a body is still being sent.
//!
//! Parsing is httparse's (what hyper uses); framing follows RFC 9112 §6.3.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::AsyncWriteExt;

use crate::upstream::{Exchange, UpBody, Wire};

/// httparse's limit on header fields (hyper's default too).
const MAX_HEADERS: usize = 100;

/// The outcome of sending a request.
pub enum Sent {
    /// The response head; the body reads on from the wire.
    Head(Response<H1Body>),
    /// Nothing was delivered (the pooled connection was dead): the request
    /// can go on a fresh connection as is.
    Unsent(UpBody),
    Failed(Exchange),
}

/// Sends one request (head and body in one write) and reads its response
/// head, skipping interim (1xx) responses. The caller applies the head
/// timeout around this future.
pub async fn exchange(mut wire: Box<Wire>, req: Head<'_>, body: UpBody, max_head: usize) -> Sent {
    let out = encode(&req, &body);
    if let Err(e) = wire.io.write_all(&out).await {
        if crate::upstream::is_dead_peer(&e) {
            return Sent::Unsent(body);
        }
        return Sent::Failed(Exchange::Io(e));
    }
    drop(out);
    let head = std::future::poll_fn(|cx| poll_head(&mut wire, cx, max_head)).await;
    let RespHead {
        status,
        version,
        headers,
        fields,
    } = match head {
        Ok(h) => h,
        Err(e) => return Sent::Failed(e),
    };
    let framing = match framing(req.method, status, &fields) {
        Ok(f) => f,
        Err(e) => return Sent::Failed(e),
    };
    let keep_alive = keep_alive(version, &fields) && !matches!(framing, Framing::ToEnd);
    let done = matches!(framing, Framing::Length(0));
    let mut r = Response::new(H1Body {
        wire: Some(wire),
        framing,
        done,
        keep_alive,
        burst: false,
        held: None,
        hop: Hop {
            close: fields.close,
            keepalive_ms: fields.keepalive_ms,
        },
    });
    // The upstream's version stays on this hop (the client's response is
    // baton's own, HTTP/1.1 or HTTP/2).
    *r.status_mut() = status;
    *r.headers_mut() = headers;
    Sent::Head(r)
}

/// What the request head is written from.
#[derive(Clone, Copy)]
pub struct Head<'a> {
    pub method: &'a Method,
    /// The origin-form target (path and query).
    pub target: &'a http::Uri,
    pub headers: &'a HeaderMap,
    /// Sent after `headers` (`exchange::Request::added`).
    pub added: &'a [(HeaderName, HeaderValue)],
}

/// The request head, and a buffered body after it.
fn encode(req: &Head<'_>, body: &UpBody) -> Vec<u8> {
    let full = match body {
        UpBody::Full(Some(b)) => &b[..],
        _ => &[],
    };
    let path = req.target.path_and_query().map_or("/", |p| p.as_str());
    let mut size = req.method.as_str().len() + path.len() + 16 + full.len() + 24;
    for (k, v) in req
        .headers
        .iter()
        .chain(req.added.iter().map(|(k, v)| (k, v)))
    {
        size += k.as_str().len() + v.len() + 4;
    }
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(req.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (k, v) in req
        .headers
        .iter()
        .chain(req.added.iter().map(|(k, v)| (k, v)))
    {
        out.extend_from_slice(k.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // The length of what is sent, when the client's head did not say it
    // (a body-carrying method with no body says 0, as hyper does).
    if !req.headers.contains_key(header::CONTENT_LENGTH)
        && (!full.is_empty() || matches!(*req.method, Method::POST | Method::PUT | Method::PATCH))
    {
        let mut n = itoa::Buffer::new();
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(n.format(full.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(full);
    out
}

/// A final response head, and what its fields say of framing and the
/// connection.
struct RespHead {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    fields: Framed,
}

/// What a response's framing and connection fields said, noted while the
/// head is read (a lookup by name afterwards costs a hash each).
struct Framed {
    /// The last `Transfer-Encoding` line ends in `chunked`; `None`: none.
    te_chunked: Option<bool>,
    /// The `Content-Length` lines: none, one length (repeated lines agree),
    /// or `Err` (malformed or disagreeing).
    length: Result<Option<u64>, ()>,
    /// `Connection: close` was said.
    close: bool,
    /// `Connection: keep-alive` was said.
    keep_alive: bool,
    /// `Keep-Alive: timeout=N`, in ms.
    keepalive_ms: Option<u64>,
}

impl Default for Framed {
    fn default() -> Self {
        Framed {
            te_chunked: None,
            length: Ok(None),
            close: false,
            keep_alive: false,
            keepalive_ms: None,
        }
    }
}

impl Framed {
    /// Notes what a field says; true when the field is hop-by-hop and
    /// said all it had to say here, so that it need not go in the map
    /// (to be taken out again by the response filter, a hashed lookup
    /// and removal): `Transfer-Encoding`, `Keep-Alive`, and `Connection`
    /// when it names only `close` or `keep-alive`. A `Connection` naming
    /// other fields (or `upgrade`) stays, for the filter to act on.
    fn note(&mut self, name: &HeaderName, value: &[u8]) -> bool {
        match *name {
            header::TRANSFER_ENCODING => {
                let last = value.rsplit(|b| *b == b',').next().unwrap_or(b"");
                self.te_chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
                true
            }
            header::CONTENT_LENGTH => {
                self.length = match (self.length, content_length(value)) {
                    (Ok(None), Some(n)) => Ok(Some(n)),
                    (Ok(Some(l)), Some(n)) if l == n => Ok(Some(n)),
                    _ => Err(()),
                };
                false
            }
            header::CONNECTION => {
                let mut only_these = true;
                for t in value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                    if t.eq_ignore_ascii_case(b"close") {
                        self.close = true;
                    } else if t.eq_ignore_ascii_case(b"keep-alive") {
                        self.keep_alive = true;
                    } else if !t.is_empty() {
                        only_these = false;
                    }
                }
                only_these
            }
            _ if *name == "keep-alive" => {
                self.keepalive_ms = crate::upstream::keepalive_hint(value).or(self.keepalive_ms);
                true
            }
            _ => false,
        }
    }
}

/// Reads until a final response head is complete.
fn poll_head(
    wire: &mut Wire,
    cx: &mut Context<'_>,
    max: usize,
) -> Poll<Result<RespHead, Exchange>> {
    loop {
        if !wire.buf.is_empty() {
            match parse_head(&mut wire.buf, max)? {
                Parsed::Final(h) => return Poll::Ready(Ok(h)),
                Parsed::Interim => continue,
                Parsed::Partial => {}
            }
        }
        match ready!(wire.poll_fill(cx)) {
            Ok(0) => return Poll::Ready(Err(Exchange::Closed)),
            Ok(_) => {}
            Err(e) => return Poll::Ready(Err(Exchange::Io(e))),
        }
    }
}

enum Parsed {
    Final(RespHead),
    /// A 1xx other than 101, consumed.
    Interim,
    Partial,
}

fn parse_head(buf: &mut BytesMut, max: usize) -> Result<Parsed, Exchange> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut r = httparse::Response::new(&mut []);
    let n = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut r, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(n)) if n > max => return Err(Exchange::TooLarge),
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > max => return Err(Exchange::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(httparse::Error::TooManyHeaders) => return Err(Exchange::TooLarge),
        Err(_) => return Err(Exchange::Parse),
    };
    let code = r.code.unwrap_or(0);
    if (100..200).contains(&code) && code != 101 {
        buf.advance(n);
        return Ok(Parsed::Interim);
    }
    let status = StatusCode::from_u16(code).map_err(|_| Exchange::Parse)?;
    let version = if r.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // Names now; values as offsets, to be slices of the frozen head (no
    // copies) once the parser's borrow of the buffer ends.
    let base = buf.as_ptr() as usize;
    let mut fields = Vec::with_capacity(r.headers.len());
    for h in r.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| Exchange::Parse)?;
        let start = h.value.as_ptr() as usize - base;
        fields.push((name, start, start + h.value.len()));
    }
    let head = buf.split_to(n).freeze();
    // Room for what the response filters add (Via, X-Request-Id) without
    // growing.
    let mut headers = HeaderMap::with_capacity(fields.len() + 4);
    let mut framed = Framed::default();
    for (name, start, end) in fields {
        let value =
            HeaderValue::from_maybe_shared(head.slice(start..end)).map_err(|_| Exchange::Parse)?;
        if !framed.note(&name, value.as_bytes()) {
            headers.append(name, value);
        }
    }
    Ok(Parsed::Final(RespHead {
        status,
        version,
        headers,
        fields: framed,
    }))
}

/// How the response body is delimited (RFC 9112 §6.3).
enum Framing {
    /// Bytes left of a Content-Length (0 for no body).
    Length(u64),
    Chunked(Chunk),
    /// Until the server closes the connection.
    ToEnd,
}

#[derive(Clone, Copy)]
pub(crate) enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Bytes left of the current chunk's data.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines up to an empty line (the bytes
    /// of them read so far).
    Trailers(usize),
}

/// The longest chunk-size line (with its extensions) and the largest
/// trailer section read: more is a framing attack, not a body (hyper's
/// bound on extensions is 16 KiB too).
const MAX_CHUNK_LINE: usize = 16 * 1024;

fn framing(method: &Method, status: StatusCode, f: &Framed) -> Result<Framing, Exchange> {
    if *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Framing::Length(0));
    }
    match f.te_chunked {
        Some(true) => return Ok(Framing::Chunked(Chunk::Size)),
        Some(false) => return Ok(Framing::ToEnd),
        None => {}
    }
    let length = f.length.map_err(|()| Exchange::Parse)?;
    Ok(length.map_or(Framing::ToEnd, Framing::Length))
}

/// A `Content-Length` value: digits, or a list of equal ones (`5, 5` is
/// 5; `5, 6`, `+5` and an empty part are `None`). Both directions read
/// lengths with it.
pub(crate) fn content_length(v: &[u8]) -> Option<u64> {
    let mut length = None;
    for part in v.split(|b| *b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n: u64 = std::str::from_utf8(part).ok()?.parse().ok()?;
        if length.is_some_and(|l| l != n) {
            return None;
        }
        length = Some(n);
    }
    length
}

/// Whether a comma-separated field value (`Connection`, `TE`) lists
/// `token`, in any case.
pub(crate) fn has_token(v: &[u8], token: &[u8]) -> bool {
    v.split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Whether the connection may carry another request after this response.
fn keep_alive(version: Version, f: &Framed) -> bool {
    !f.close && (version == Version::HTTP_11 || f.keep_alive)
}

/// A response body read off the wire.
pub struct H1Body {
    wire: Option<Box<Wire>>,
    framing: Framing,
    done: bool,
    keep_alive: bool,
    /// What the hop-by-hop fields left out of the head's map said.
    hop: Hop,
    /// Data was returned since the last `Pending`.
    burst: bool,
    /// A failure held back until the data before it was flushed.
    held: Option<BodyFault>,
}

/// What a message's hop-by-hop fields said about the connection it came
/// on (baton's HTTP/1.1 client notes it while reading a head, leaving
/// those fields out of the map; the response filter, from the fields).
#[derive(Clone, Copy, Default)]
pub struct Hop {
    /// `Connection: close`.
    pub close: bool,
    /// `Keep-Alive: timeout=N`, in ms.
    pub keepalive_ms: Option<u64>,
}

/// How a body read off a connection failed.
#[derive(Debug)]
pub enum BodyFault {
    /// The server closed the connection before the end.
    Closed,
    Io(io::Error),
    /// Chunked framing that does not parse.
    BadChunk,
}

impl H1Body {
    /// What the response's hop-by-hop fields said.
    pub fn hop(&self) -> Hop {
        self.hop
    }

    /// The connection, once the response ended cleanly and it may be reused.
    pub fn take_wire(&mut self) -> Option<Box<Wire>> {
        match &self.wire {
            Some(w) if self.done && self.keep_alive && w.buf.is_empty() => self.wire.take(),
            _ => None,
        }
    }

    /// The next data, with a failure that follows data in the same read
    /// held back for one turn: the server connection polls the body until
    /// it waits, then writes what it has, so a failure reported at once
    /// would drop the head and data already read (the client would see a
    /// bare reset instead of the truncated response, and the bytes logged
    /// as sent would never have left).
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, BodyFault>>> {
        if let Some(f) = self.held.take() {
            return Poll::Ready(Some(Err(f)));
        }
        match self.poll_read_data(cx) {
            Poll::Ready(Some(Err(f))) if self.burst => {
                self.held = Some(f);
                self.burst = false;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Poll::Ready(Some(Ok(d))) => {
                self.burst = true;
                Poll::Ready(Some(Ok(d)))
            }
            Poll::Pending => {
                self.burst = false;
                Poll::Pending
            }
            other => other,
        }
    }

    fn poll_read_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, BodyFault>>> {
        let Some(wire) = self.wire.as_mut() else {
            return Poll::Ready(None);
        };
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            let buf = &mut wire.buf;
            match &mut self.framing {
                Framing::Length(left) if !buf.is_empty() => {
                    let n = (*left).min(buf.len() as u64) as usize;
                    *left -= n as u64;
                    self.done = *left == 0;
                    return Poll::Ready(Some(Ok(buf.split_to(n).freeze())));
                }
                Framing::ToEnd if !buf.is_empty() => {
                    return Poll::Ready(Some(Ok(buf.split().freeze())));
                }
                Framing::Chunked(state) => match step_chunk(state, buf) {
                    Ok(Step::Data(data)) => return Poll::Ready(Some(Ok(data))),
                    Ok(Step::End) => {
                        self.done = true;
                        return Poll::Ready(None);
                    }
                    Ok(Step::More) => {}
                    Err(f) => return Poll::Ready(Some(Err(f))),
                },
                _ => {}
            }
            match ready!(wire.poll_fill(cx)) {
                Ok(0) if matches!(self.framing, Framing::ToEnd) => {
                    self.done = true;
                    return Poll::Ready(None);
                }
                Ok(0) => return Poll::Ready(Some(Err(BodyFault::Closed))),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(BodyFault::Io(e)))),
            }
        }
    }
}

/// The fuzz entry point for baton's own HTTP/1.1 response reading (cargo
/// fuzz target `h1_response`, and the in-suite test): the head parser
/// (1xx skipped), the framing and keep-alive decisions, then the body as
/// that framing reads it (chunked through the decoder). Must never panic.
#[doc(hidden)]
pub fn fuzz_response(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    let head = loop {
        match parse_head(&mut buf, 64 * 1024) {
            Ok(Parsed::Interim) => continue,
            Ok(Parsed::Final(h)) => break h,
            _ => return,
        }
    };
    let _ = keep_alive(head.version, &head.fields);
    if let Ok(Framing::Chunked(mut state)) = framing(&Method::GET, head.status, &head.fields) {
        let before = buf.len();
        let mut body = 0;
        while let Ok(Step::Data(d)) = step_chunk(&mut state, &mut buf) {
            body += d.len();
        }
        assert!(body <= before);
    }
}

/// The fuzz entry point for the chunked decoder alone (cargo fuzz target
/// `chunked`): the bytes after the first arrive in pieces of the first
/// byte's size (1 to 256), as a slow upstream sends them; the data out is
/// never more than the bytes in, and a complete body ends the same
/// whatever the pieces. Must never panic.
#[doc(hidden)]
pub fn fuzz_chunked(data: &[u8]) {
    let Some((&piece, rest)) = data.split_first() else {
        return;
    };
    let run = |piece: usize| {
        let (mut state, mut buf, mut out) = (Chunk::Size, BytesMut::new(), Vec::new());
        for part in rest.chunks(piece) {
            buf.extend_from_slice(part);
            loop {
                match step_chunk(&mut state, &mut buf) {
                    Ok(Step::Data(d)) => out.extend_from_slice(&d),
                    Ok(Step::More) => break,
                    Ok(Step::End) => return Some(out),
                    Err(_) => return None,
                }
            }
        }
        None
    };
    let whole = run(rest.len().max(1));
    let pieces = run(piece as usize + 1);
    if let Some(w) = &whole {
        assert!(w.len() <= rest.len());
    }
    assert_eq!(whole, pieces, "the pieces changed the body");
}

/// What the chunked decoder made of the buffered bytes.
pub(crate) enum Step {
    Data(Bytes),
    /// It needs more bytes.
    More,
    /// The last chunk and the trailer section are read.
    End,
}

/// Advances the chunked decoder over what is buffered.
///
/// Stricter than httparse's chunk-size reader, as hyper's decoder is: the
/// size line starts with a hex digit (httparse reads an empty one as the
/// last chunk), and no line holds a bare CR or LF or another control byte
/// (two readers could end it at different places). Lines and the trailer
/// section are bounded by `MAX_CHUNK_LINE`.
pub(crate) fn step_chunk(state: &mut Chunk, buf: &mut BytesMut) -> Result<Step, BodyFault> {
    loop {
        match *state {
            Chunk::Size => {
                let Some(eol) = clean_line(buf)? else {
                    if buf.len() > MAX_CHUNK_LINE {
                        return Err(BodyFault::BadChunk);
                    }
                    return Ok(Step::More);
                };
                if eol > MAX_CHUNK_LINE || !buf[0].is_ascii_hexdigit() {
                    return Err(BodyFault::BadChunk);
                }
                match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((used, 0))) => {
                        buf.advance(used);
                        *state = Chunk::Trailers(0);
                    }
                    Ok(httparse::Status::Complete((used, size))) => {
                        buf.advance(used);
                        *state = Chunk::Data(size);
                    }
                    _ => return Err(BodyFault::BadChunk),
                }
            }
            Chunk::Data(left) => {
                if buf.is_empty() {
                    return Ok(Step::More);
                }
                let n = left.min(buf.len() as u64) as usize;
                *state = if n as u64 == left {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left - n as u64)
                };
                return Ok(Step::Data(buf.split_to(n).freeze()));
            }
            Chunk::DataEnd => {
                if buf.len() < 2 {
                    return Ok(Step::More);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(BodyFault::BadChunk);
                }
                buf.advance(2);
                *state = Chunk::Size;
            }
            Chunk::Trailers(read) => {
                // Trailer fields are dropped; the section ends at an empty
                // line.
                let Some(eol) = clean_line(buf)? else {
                    if read + buf.len() > MAX_CHUNK_LINE {
                        return Err(BodyFault::BadChunk);
                    }
                    return Ok(Step::More);
                };
                if read + eol > MAX_CHUNK_LINE {
                    return Err(BodyFault::BadChunk);
                }
                buf.advance(eol + 2);
                if eol == 0 {
                    return Ok(Step::End);
                }
                *state = Chunk::Trailers(read + eol + 2);
            }
        }
    }
}

/// The length of the complete line at the start of `buf` (its CRLF not
/// counted), `None` when no line ends yet; a bare CR or LF, or a control
/// byte other than a tab, is a framing error.
fn clean_line(buf: &[u8]) -> Result<Option<usize>, BodyFault> {
    for (i, &b) in buf.iter().enumerate() {
        match b {
            b'\r' => {
                return match buf.get(i + 1) {
                    Some(b'\n') => Ok(Some(i)),
                    Some(_) => Err(BodyFault::BadChunk),
                    None => Ok(None),
                };
            }
            b'\t' => {}
            b'\n' | 0..0x20 | 0x7f => return Err(BodyFault::BadChunk),
            _ => {}
        }
    }
    Ok(None)
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = BodyFault;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyFault>>> {
        self.get_mut()
            .poll_data(cx)
            .map(|r| r.map(|r| r.map(Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds a chunked body one byte at a time, as the slowest network would.
    fn dechunk(wire: &[u8]) -> Result<(Vec<u8>, bool), ()> {
        let mut state = Chunk::Size;
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for b in wire {
            buf.extend_from_slice(&[*b]);
            loop {
                match step_chunk(&mut state, &mut buf).map_err(|_| ())? {
                    Step::Data(d) => out.extend_from_slice(&d),
                    Step::More => break,
                    Step::End => return Ok((out, true)),
                }
            }
        }
        Ok((out, false))
    }

    #[test]
    fn chunked_decoding_byte_by_byte() {
        let (body, end) =
            dechunk(b"5;a=b\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nx-t: 1\r\ny: 2\r\n\r\n")
                .unwrap();
        assert_eq!(body, b"hello world");
        assert!(end);
        let (body, end) = dechunk(b"3\r\nabc\r\n").unwrap();
        assert_eq!((body.as_slice(), end), (&b"abc"[..], false));
        assert!(
            dechunk(b"3\r\nabcX\r\n").is_err(),
            "data must end with CRLF"
        );
        assert!(dechunk(b"zz\r\n").is_err());
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let h = |pairs: &[(&str, &str)]| {
            let mut f = Framed::default();
            for (k, v) in pairs {
                f.note(&HeaderName::from_bytes(k.as_bytes()).unwrap(), v.as_bytes());
            }
            f
        };
        let ok = StatusCode::OK;
        let len = |m: &Method, s, f: &Framed| match framing(m, s, f) {
            Ok(Framing::Length(n)) => Some(n),
            _ => None,
        };
        let cl = h(&[("content-length", "10")]);
        assert_eq!(len(&Method::GET, ok, &cl), Some(10));
        assert_eq!(len(&Method::HEAD, ok, &cl), Some(0));
        assert_eq!(len(&Method::GET, StatusCode::NO_CONTENT, &cl), Some(0));
        assert_eq!(len(&Method::GET, StatusCode::NOT_MODIFIED, &cl), Some(0));
        assert_eq!(
            len(&Method::GET, ok, &h(&[("content-length", "7, 7")])),
            Some(7)
        );
        assert!(framing(&Method::GET, ok, &h(&[("content-length", "7, 8")])).is_err());
        assert!(framing(&Method::GET, ok, &h(&[("content-length", "-1")])).is_err());
        assert!(framing(&Method::GET, ok, &h(&[("content-length", "+7")])).is_err());
        // Transfer-Encoding wins over Content-Length; chunked must be last.
        let te = h(&[
            ("transfer-encoding", "gzip, chunked"),
            ("content-length", "3"),
        ]);
        assert!(matches!(
            framing(&Method::GET, ok, &te),
            Ok(Framing::Chunked(_))
        ));
        let te = h(&[("transfer-encoding", "chunked, gzip")]);
        assert!(matches!(framing(&Method::GET, ok, &te), Ok(Framing::ToEnd)));
        assert!(matches!(
            framing(&Method::GET, ok, &h(&[])),
            Ok(Framing::ToEnd)
        ));
    }

    #[test]
    fn keep_alive_by_version_and_connection() {
        let with = |lines: &[&str]| {
            let mut f = Framed::default();
            for v in lines {
                f.note(&header::CONNECTION, v.as_bytes());
            }
            f
        };
        assert!(keep_alive(Version::HTTP_11, &with(&[])));
        assert!(!keep_alive(Version::HTTP_11, &with(&["Close"])));
        assert!(!keep_alive(Version::HTTP_10, &with(&[])));
        assert!(keep_alive(Version::HTTP_10, &with(&["keep-alive"])));
        assert!(!keep_alive(
            Version::HTTP_10,
            &with(&["keep-alive", "close"])
        ));
    }

    #[test]
    fn head_limits() {
        let mut b = BytesMut::from(&b"HTTP/1.1 200 OK\r\nA: 1\r\n\r\n"[..]);
        assert!(matches!(parse_head(&mut b, 10), Err(Exchange::TooLarge)));
        let mut b = BytesMut::from(&b"HTTP/1.1 200 OK\r\nA: 1"[..]);
        assert!(matches!(parse_head(&mut b, 10), Err(Exchange::TooLarge)));
        assert!(matches!(parse_head(&mut b, 100), Ok(Parsed::Partial)));
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..101 {
            many.extend_from_slice(format!("h{i}: x\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        let mut b = BytesMut::from(&many[..]);
        assert!(matches!(
            parse_head(&mut b, 1 << 20),
            Err(Exchange::TooLarge)
        ));
        let mut b = BytesMut::from(&b"HTTP/1.1 2x0 OK\r\n\r\n"[..]);
        assert!(matches!(parse_head(&mut b, 100), Err(Exchange::Parse)));
        let mut b = BytesMut::from(&b"HTTP/1.1 200 OK\r\nA: 1\r\n\r\nbody"[..]);
        match parse_head(&mut b, 100) {
            Ok(Parsed::Final(h)) => {
                assert_eq!(
                    (h.status, h.version, h.headers["a"].as_bytes()),
                    (StatusCode::OK, Version::HTTP_11, &b"1"[..])
                );
                assert_eq!(&b[..], b"body", "the body stays in the buffer");
            }
            _ => panic!("a complete head"),
        }
    }

    #[test]
    fn hop_by_hop_fields_that_said_all_stay_out_of_the_map() {
        let head = |raw: &str| match parse_head(&mut BytesMut::from(raw.as_bytes()), 1024) {
            Ok(Parsed::Final(h)) => h,
            _ => panic!("a complete head"),
        };
        let h = head(
            "HTTP/1.1 200 OK\r\nConnection: Keep-Alive\r\nKeep-Alive: timeout=5, max=100\r\nTransfer-Encoding: chunked\r\nX-App: 1\r\n\r\n",
        );
        let names: Vec<&str> = h.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-app"]);
        assert!(h.fields.keep_alive && !h.fields.close);
        assert_eq!(h.fields.keepalive_ms, Some(5000));
        assert!(matches!(
            framing(&Method::GET, h.status, &h.fields),
            Ok(Framing::Chunked(_))
        ));
        // Naming another field (or `upgrade`): left for the response filter,
        // which removes it and the field it names.
        let h = head("HTTP/1.1 200 OK\r\nConnection: close, x-secret\r\nX-Secret: s\r\n\r\n");
        assert_eq!(h.headers["connection"], "close, x-secret");
        assert!(h.fields.close);
        let h = head(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        );
        assert_eq!(h.headers["connection"], "Upgrade");
        assert_eq!(h.headers["upgrade"], "websocket");
    }

    /// The fuzz entry points on seeded random bytes (the cargo-fuzz
    /// targets run them much longer, in fuzz/): responses built from real
    /// pieces, so that the parser gets past the status line.
    #[test]
    fn fuzz_entry_points_hold_on_random_input() {
        let mut next = crate::core::xorshift(0x2545_F491_4F6C_DD1Du64);
        let pieces: [&[u8]; 10] = [
            b"HTTP/1.1 200 OK\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\n",
            b"Transfer-Encoding: chunked\r\n",
            b"Content-Length: 5\r\n",
            b"\r\n",
            b"5\r\nhello\r\n",
            b"0\r\n\r\n",
            b"fffffffffffffffffff\r\n",
            b"3;ext=1\r\nabc\r\n",
            b"\n",
        ];
        for _ in 0..20_000 {
            let mut data = vec![next() as u8];
            for _ in 0..(next() % 8) {
                if next().is_multiple_of(4) {
                    data.extend((0..next() % 16).map(|_| next() as u8));
                } else {
                    data.extend_from_slice(pieces[(next() % 10) as usize]);
                }
            }
            fuzz_response(&data[1..]);
            fuzz_chunked(&data);
        }
    }
}
