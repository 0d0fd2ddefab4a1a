//! One FastCGI exchange on a `Wire`, driven by the request's own task:
//! the CGI head parsed into an HTTP response, the body (`FcgiBody`), the
//! app's stderr logged, and every failure classified into one `Cause`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;

use crate::core::cause::Cause;
use crate::core::failure::Failure;
use crate::upstream::{UpBody, Wire};

use super::*;

/// FastCGI records on a [`Wire`].
impl Wire {
    /// Polls for the next record.
    fn poll_record(&mut self, cx: &mut Context<'_>) -> Poll<Result<Record, WireError>> {
        loop {
            if let Some(r) = take_record(&mut self.buf).map_err(WireError::Codec)? {
                return Poll::Ready(Ok(r));
            }
            let n = ready!(self.poll_fill(cx)).map_err(WireError::Io)?;
            if n == 0 {
                return Poll::Ready(Err(WireError::Closed));
            }
        }
    }

    async fn record(&mut self) -> Result<Record, WireError> {
        std::future::poll_fn(|cx| self.poll_record(cx)).await
    }
}

/// What went wrong on the wire.
#[derive(Debug)]
pub enum WireError {
    Io(io::Error),
    Codec(CodecError),
    /// The server closed the connection.
    Closed,
}

/// The outcome of sending a request.
pub enum Sent {
    /// The response head; the body reads on from the wire.
    Head(Response<FcgiBody>),
    /// Nothing was written (the pooled connection was dead): the request
    /// can go on a fresh connection as is.
    Unsent(UpBody),
    Failed(Failure),
}

/// Sends one request and reads up to the end of its CGI head. The caller
/// applies the head timeout around this future.
pub async fn exchange(
    mut wire: Box<Wire>,
    head: &[u8],
    body: UpBody,
    max_head: usize,
    tag: &LogTag,
) -> Sent {
    // BEGIN_REQUEST + PARAMS, and with a buffered body everything in one write.
    let mut first = Vec::with_capacity(head.len() + 64);
    first.extend_from_slice(head);
    let streamed = matches!(body, UpBody::Stream(..));
    if let UpBody::Full(Some(b)) = &body {
        push_stream(&mut first, kind::STDIN, b);
    }
    if !streamed {
        push_record(&mut first, kind::STDIN, &[]);
    }
    if let Err(e) = wire.io.write_all(&first).await {
        if crate::upstream::is_dead_peer(&e) {
            return Sent::Unsent(body);
        }
        return Sent::Failed(classify_write(&e));
    }
    if streamed {
        let mut body = body;
        let mut rec = Vec::with_capacity(MAX_CONTENT + 16);
        loop {
            match body.frame().await {
                None => break,
                Some(Err(_)) => {
                    // The client's fault, as the body recorded it.
                    let f = match &body {
                        UpBody::Stream(_, watch) => watch.failure(),
                        _ => None,
                    };
                    return Sent::Failed(f.unwrap_or_else(|| {
                        Failure::with(Cause::RequestBodyIncomplete, "the client's body failed")
                    }));
                }
                Some(Ok(f)) => {
                    let Ok(data) = f.into_data() else { continue };
                    rec.clear();
                    push_stream(&mut rec, kind::STDIN, &data);
                    if let Err(e) = wire.io.write_all(&rec).await {
                        return Sent::Failed(classify_write(&e));
                    }
                }
            }
        }
        rec.clear();
        push_record(&mut rec, kind::STDIN, &[]);
        if let Err(e) = wire.io.write_all(&rec).await {
            return Sent::Failed(classify_write(&e));
        }
    }
    // The CGI head: stdout up to the blank line.
    let mut out = BytesMut::new();
    let mut stderr = StderrLog::default();
    loop {
        let rec = match wire.record().await {
            Ok(r) => r,
            Err(e) => return Sent::Failed(classify_read(&e, !out.is_empty())),
        };
        if let Some(c) = &mut wire.claim {
            c.answered();
        }
        match rec {
            Record::Stdout(b) => {
                out.extend_from_slice(&b);
                match parse_head(&out, max_head) {
                    Ok(None) => continue,
                    Ok(Some((mut parts, used))) => {
                        out.advance(used);
                        if stderr.script_unknown && parts.0 == StatusCode::NOT_FOUND {
                            return Sent::Failed(Failure::with(
                                Cause::ScriptNotFound,
                                "PHP-FPM: Primary script unknown",
                            ));
                        }
                        let mut r = Response::new(FcgiBody {
                            wire: Some(wire),
                            first: (!out.is_empty()).then(|| out.freeze()),
                            done: false,
                            reusable: false,
                            stderr,
                            tag: tag.clone(),
                        });
                        *r.status_mut() = parts.0;
                        std::mem::swap(r.headers_mut(), &mut parts.1);
                        return Sent::Head(r);
                    }
                    Err(f) => return Sent::Failed(f),
                }
            }
            Record::Stderr(b) => stderr.note(&b, tag),
            Record::End {
                app_status,
                protocol_status,
            } => {
                return Sent::Failed(ended_early(app_status, protocol_status, &out));
            }
            Record::Values(_) | Record::Other(_) => {}
        }
    }
}

/// Who a FastCGI server's stderr lines are logged under.
#[derive(Clone)]
pub struct LogTag {
    pub upstream: std::sync::Arc<str>,
    pub server: std::sync::Arc<str>,
    pub request_id: HeaderValue,
}

/// The app's stderr records: logged, and watched for PHP-FPM's
/// "Primary script unknown" (its message for a SCRIPT_FILENAME it cannot
/// open; PHP's own identifier, the same in every build).
#[derive(Default)]
struct StderrLog {
    script_unknown: bool,
}

impl StderrLog {
    fn note(&mut self, b: &[u8], tag: &LogTag) {
        let text = String::from_utf8_lossy(b);
        if text.contains("Primary script unknown") {
            self.script_unknown = true;
        }
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            tracing::warn!(
                target: "baton::fastcgi",
                upstream = %tag.upstream,
                server = %tag.server,
                request_id = tag.request_id.to_str().unwrap_or("-"),
                "FastCGI stderr: {line}"
            );
        }
    }
}

/// Parses the CGI response head (RFC 3875 §6): header lines up to a blank
/// line, `Status:` for the status, `Location:` alone meaning 302.
/// `Ok(None)` while incomplete.
/// A parsed CGI head and how many bytes it took.
type Head = ((StatusCode, HeaderMap), usize);

pub(super) fn parse_head(buf: &[u8], max: usize) -> Result<Option<Head>, Failure> {
    let mut raw = [httparse::EMPTY_HEADER; 128];
    match httparse::parse_headers(buf, &mut raw) {
        Ok(httparse::Status::Partial) => {
            if buf.len() > max {
                return Err(Failure::with(
                    Cause::ResponseHeaderTooLarge,
                    format!("CGI response head over {max} bytes"),
                ));
            }
            Ok(None)
        }
        Ok(httparse::Status::Complete((used, hs))) => {
            if used > max {
                return Err(Failure::with(
                    Cause::ResponseHeaderTooLarge,
                    format!("CGI response head of {used} bytes, limit {max}"),
                ));
            }
            let mut status = None;
            let mut headers = HeaderMap::with_capacity(hs.len());
            for h in hs.iter() {
                if h.name.eq_ignore_ascii_case("status") {
                    let code = h.value.get(..3).and_then(|c| std::str::from_utf8(c).ok());
                    status = code.and_then(|c| c.parse::<u16>().ok()).and_then(|c| {
                        StatusCode::from_u16(c)
                            .ok()
                            .filter(|_| (100..600).contains(&c))
                    });
                    if status.is_none() {
                        return Err(Failure::with(
                            Cause::ProtocolError,
                            format!(
                                "invalid CGI Status header {:?}",
                                String::from_utf8_lossy(h.value)
                            ),
                        ));
                    }
                    continue;
                }
                let (Ok(n), Ok(v)) = (
                    HeaderName::from_bytes(h.name.as_bytes()),
                    HeaderValue::from_bytes(h.value),
                ) else {
                    return Err(Failure::with(
                        Cause::ProtocolError,
                        format!("invalid CGI header {:?}", h.name),
                    ));
                };
                headers.append(n, v);
            }
            let status = status.unwrap_or(if headers.contains_key(http::header::LOCATION) {
                StatusCode::FOUND
            } else {
                StatusCode::OK
            });
            Ok(Some(((status, headers), used)))
        }
        Err(httparse::Error::TooManyHeaders) => Err(Failure::with(
            Cause::ResponseHeaderTooLarge,
            "more than 128 CGI response headers",
        )),
        Err(_) => Err(Failure::with(
            Cause::ProtocolError,
            format!(
                "the app's output does not start with CGI headers: {:?}",
                String::from_utf8_lossy(&buf[..buf.len().min(40)])
            ),
        )),
    }
}

fn ended_early(app_status: u32, protocol_status: u8, out: &[u8]) -> Failure {
    match protocol_status {
        OVERLOADED => Failure::with(
            Cause::UpstreamBusy,
            "the FastCGI server answered FCGI_OVERLOADED",
        ),
        CANT_MPX_CONN => Failure::with(
            Cause::ProtocolError,
            "the FastCGI server refused the request (FCGI_CANT_MPX_CONN)",
        ),
        REQUEST_COMPLETE if out.is_empty() => Failure::with(
            Cause::FastCgiNoResponse,
            format!("the app ended with status {app_status} before writing a response"),
        ),
        REQUEST_COMPLETE => Failure::with(
            Cause::ProtocolError,
            format!(
                "the app's output ended inside its CGI headers: {:?}",
                String::from_utf8_lossy(&out[..out.len().min(40)])
            ),
        ),
        other => Failure::with(
            Cause::ProtocolError,
            format!("the FastCGI server ended the request with protocol status {other}"),
        ),
    }
}

fn classify_write(e: &io::Error) -> Failure {
    if e.get_ref()
        .is_some_and(|i| i.is::<crate::upstream::WriteTimedOut>())
    {
        return Failure::with(
            Cause::WriteTimeout,
            "the FastCGI server stopped reading the request",
        );
    }
    let mut f = Failure::with(
        Cause::FastCgiNoResponse,
        "the FastCGI server closed the connection while the request was being sent",
    );
    f.errno = e.raw_os_error();
    f
}

fn classify_read(e: &WireError, started: bool) -> Failure {
    match e {
        WireError::Codec(CodecError::NotFastCgi(first)) => {
            let what = if first.starts_with(b"HTTP/") {
                "an HTTP server: set protocol = \"http\" on this upstream"
            } else if first[0] == 0x16 || first[0] == 0x15 {
                "a TLS server"
            } else {
                "not a FastCGI server"
            };
            Failure::with(
                Cause::ProtocolError,
                format!("the server answered like {what}"),
            )
        }
        WireError::Codec(c) => {
            Failure::with(Cause::ProtocolError, format!("bad FastCGI record: {c:?}"))
        }
        WireError::Io(io) => {
            let mut f = Failure::with(
                Cause::FastCgiNoResponse,
                if started {
                    "the connection failed inside the CGI headers"
                } else {
                    "the connection failed before the app wrote a response"
                },
            );
            f.errno = io.raw_os_error();
            f
        }
        WireError::Closed => Failure::with(
            Cause::FastCgiNoResponse,
            if started {
                "the FastCGI server closed the connection inside the CGI headers"
            } else {
                "the FastCGI server closed the connection before the app wrote a response (stdout ended)"
            },
        ),
    }
}

/// The response body: STDOUT records until END_REQUEST.
pub struct FcgiBody {
    wire: Option<Box<Wire>>,
    /// Body bytes that came in the record with the end of the head.
    first: Option<Bytes>,
    done: bool,
    /// END_REQUEST arrived with REQUEST_COMPLETE: the connection may be reused.
    reusable: bool,
    stderr: StderrLog,
    tag: LogTag,
}

impl FcgiBody {
    /// The connection, once the response ended cleanly.
    pub fn take_wire(&mut self) -> Option<Box<Wire>> {
        if self.done && self.reusable {
            self.wire.take()
        } else {
            None
        }
    }
}

impl Body for FcgiBody {
    type Data = Bytes;
    type Error = Failure;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Failure>>> {
        let this = self.get_mut();
        if let Some(b) = this.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        if this.done {
            return Poll::Ready(None);
        }
        let Some(wire) = this.wire.as_mut() else {
            return Poll::Ready(None);
        };
        loop {
            match ready!(wire.poll_record(cx)) {
                Ok(Record::Stdout(b)) if b.is_empty() => continue,
                Ok(Record::Stdout(b)) => return Poll::Ready(Some(Ok(Frame::data(b)))),
                Ok(Record::Stderr(b)) => this.stderr.note(&b, &this.tag),
                Ok(Record::End {
                    protocol_status, ..
                }) => {
                    this.done = true;
                    this.reusable = protocol_status == REQUEST_COMPLETE;
                    return Poll::Ready(None);
                }
                Ok(_) => continue,
                Err(e) => {
                    this.done = true;
                    let mut f = Failure::with(
                        Cause::ResponseIncomplete,
                        match &e {
                            WireError::Closed => {
                                "the FastCGI server closed the connection before END_REQUEST"
                                    .to_string()
                            }
                            other => format!("FastCGI body: {other:?}"),
                        },
                    );
                    if let WireError::Io(io) = &e {
                        f.errno = io.raw_os_error();
                    }
                    return Poll::Ready(Some(Err(f)));
                }
            }
        }
    }
    fn is_end_stream(&self) -> bool {
        self.done && self.first.is_none()
    }
    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
