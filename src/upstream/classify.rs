//! The classifiers: the only place (with FastCGI's) where a raw error
//! (`io::Error`, rustls, hickory, `hyper::Error`, an h1 exchange) becomes
//! a [`Failure`] with one [`Cause`]; and the head wait.

use std::future::Future;
use std::io;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::*;
use crate::core::cause::Cause;
use crate::core::failure::Failure;
use crate::upstream::resolve::ResolveError;

/// Classifies a failed connect by errno number (never by libc's wording).
pub fn classify_connect_io(e: &io::Error, to: &str) -> Failure {
    let unix = to.starts_with("unix:");
    let errno = e.raw_os_error().unwrap_or(0);
    let cause = Cause::from_errno(errno, crate::core::cause::Phase::Connect, unix);
    let details = match cause {
        Cause::ConnectionRefused if unix => {
            format!("nothing is listening on {to} (the socket file exists)")
        }
        Cause::ConnectionRefused => format!("{to} refused the connection"),
        Cause::SocketNotFound if errno == libc::ENOENT => {
            format!("socket {} does not exist", &to[5.min(to.len())..])
        }
        Cause::SocketNotFound => format!("{to} is not a listening socket"),
        Cause::SocketPermission => match socket_problem(Path::new(&to[5..])) {
            Some(SocketProblem::Permission(m)) => m,
            _ => format!("permission denied on socket {} for {}", &to[5..], whoami()),
        },
        Cause::UpstreamBusy => format!("accept queue of {to} is full"),
        Cause::ConnectionTimeout => format!("connect to {to} timed out"),
        Cause::Internal => "too many open files".to_string(),
        _ => match errno {
            libc::EHOSTUNREACH => format!("no route to host {to}"),
            libc::ENETUNREACH => format!("network unreachable for {to}"),
            libc::EADDRNOTAVAIL => format!("no local address/port free to reach {to}"),
            _ => format!("connect to {to} failed"),
        },
    };
    Failure::with(cause, details).errno(e)
}

/// Classifies a failed TLS handshake from the rustls error inside it.
pub fn classify_tls(e: &io::Error) -> Failure {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(t) => tls_failure(t),
        None => Failure::with(
            Cause::TlsProtocol,
            format!("connection failed during the TLS handshake ({})", e.kind()),
        )
        .errno(e),
    }
}

fn tls_failure(t: &rustls::Error) -> Failure {
    use rustls::{CertificateError as C, Error as E};
    match t {
        E::InvalidCertificate(c) => {
            let why = match c {
                C::Expired | C::ExpiredContext { .. } => "certificate expired",
                C::NotValidYet | C::NotValidYetContext { .. } => "certificate not valid yet",
                C::UnknownIssuer => {
                    "certificate issuer not trusted (self-signed or missing intermediate)"
                }
                C::NotValidForName | C::NotValidForNameContext { .. } => {
                    "certificate not valid for the server name"
                }
                C::Revoked => "certificate revoked",
                _ => "certificate rejected",
            };
            Failure::with(Cause::TlsCertificate, why)
        }
        E::AlertReceived(a) => {
            Failure::with(Cause::TlsAlert, format!("upstream sent TLS alert {a:?}"))
        }
        E::InvalidMessage(_)
        | E::InappropriateHandshakeMessage { .. }
        | E::InappropriateMessage { .. } => Failure::with(
            Cause::TlsProtocol,
            "upstream did not answer with TLS (a plain-HTTP port?)",
        ),
        other => Failure::with(Cause::TlsProtocol, format!("TLS handshake failed: {other}")),
    }
}

pub fn classify_dns(host: &str, e: ResolveError) -> Failure {
    match e {
        ResolveError::Timeout => {
            Failure::with(Cause::DnsTimeout, format!("no DNS answer for {host}"))
        }
        ResolveError::NotFound => Failure::with(
            Cause::DnsError,
            format!("{host} does not resolve (NXDOMAIN or no records)"),
        ),
        ResolveError::Other(why) => {
            Failure::with(Cause::DnsError, format!("lookup of {host} failed: {why}"))
        }
    }
}

/// What baton knew about the attempt when hyper reported an error.
pub struct AttemptView<'a> {
    pub info: &'a ConnInfo,
    pub reused: bool,
    /// Bytes read on this connection before this request was sent.
    pub read_before: u64,
    pub max_header_bytes: usize,
}

/// What went wrong sending a request or reading its response head, as
/// [`crate::upstream::h1`] reports it.
#[derive(Debug)]
pub enum Exchange {
    Io(io::Error),
    /// The head passed max_response_header_bytes, or 100 fields.
    TooLarge,
    /// Not a valid HTTP/1.x response head.
    Parse,
    /// The upstream closed the connection before a complete head.
    Closed,
}

/// The same, borrowed from either client's error.
enum Fault<'a> {
    Io(&'a io::Error),
    TooLarge,
    Parse,
    Closed,
}

/// Classifies an error from hyper's client sending a request or reading its
/// response head.
pub fn classify_exchange(e: &hyper::Error, v: &AttemptView<'_>) -> Failure {
    let fault = if let Some(io) = find_io(e) {
        Fault::Io(io)
    } else if e.is_parse_too_large() {
        Fault::TooLarge
    } else if e.is_parse() || e.is_parse_status() || e.is_parse_version_h2() {
        Fault::Parse
    } else if e.is_incomplete_message() || e.is_canceled() || e.is_closed() {
        Fault::Closed
    } else {
        return Failure::with(Cause::ProtocolError, format!("{e}"));
    };
    classify_fault(fault, v)
}

/// Classifies a failed [`crate::upstream::h1`] exchange.
pub fn classify_h1(e: &Exchange, v: &AttemptView<'_>) -> Failure {
    classify_fault(
        match e {
            Exchange::Io(io) => Fault::Io(io),
            Exchange::TooLarge => Fault::TooLarge,
            Exchange::Parse => Fault::Parse,
            Exchange::Closed => Fault::Closed,
        },
        v,
    )
}

fn classify_fault(fault: Fault<'_>, v: &AttemptView<'_>) -> Failure {
    let mut f = classify_fault_inner(fault, v);
    if f.cause.phase() == crate::core::cause::Phase::ReadHead {
        f.received_status = v.info.stats.received_status();
    }
    f
}

fn classify_fault_inner(fault: Fault<'_>, v: &AttemptView<'_>) -> Failure {
    let received = v
        .info
        .stats
        .read
        .load(Ordering::Relaxed)
        .saturating_sub(v.read_before);
    match fault {
        Fault::Io(io) => {
            if let Some(t) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return tls_failure(t);
            }
            if io.get_ref().is_some_and(|i| i.is::<WriteTimedOut>()) {
                return Failure::with(
                    Cause::WriteTimeout,
                    "the upstream stopped reading the request",
                )
                .errno(io);
            }
            match io.kind() {
                io::ErrorKind::ConnectionReset
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::UnexpectedEof => Failure::with(
                    Cause::ConnectionTerminated,
                    terminated_details(v.reused, received, "reset"),
                )
                .errno(io),
                io::ErrorKind::TimedOut => {
                    Failure::with(Cause::ResponseHeadTimeout, "timed out reading the response")
                        .errno(io)
                }
                _ => Failure::with(
                    Cause::ConnectionTerminated,
                    format!("I/O error: {}", io.kind()),
                )
                .errno(io),
            }
        }
        Fault::TooLarge if received as usize > v.max_header_bytes => Failure::with(
            Cause::ResponseHeaderTooLarge,
            format!(
                "response head over {} bytes (limit {}; {received} bytes received)",
                v.max_header_bytes, v.max_header_bytes
            ),
        ),
        Fault::TooLarge => Failure::with(
            Cause::ResponseHeaderTooLarge,
            format!(
                "more than 100 header fields or a field over 64 KiB ({received} bytes received, limit {})",
                v.max_header_bytes
            ),
        ),
        Fault::Parse => {
            let (first, n) = v.info.stats.first_bytes();
            if !v.reused && n >= 4 && first[3] == 0x04 && first[0] == 0 {
                return Failure::with(
                    Cause::UpstreamSpeaksHttp2,
                    "upstream sent an HTTP/2 SETTINGS frame: it speaks HTTP/2 only (h2c), baton sent HTTP/1.1",
                );
            }
            if !v.reused && n >= 2 && (first[0] == 0x16 || first[0] == 0x15) && first[1] == 0x03 {
                return Failure::with(
                    Cause::UpstreamSpeaksTls,
                    "upstream answered with a TLS record: the port expects TLS",
                );
            }
            Failure::with(Cause::ProtocolError, "invalid HTTP/1.1 response head")
        }
        Fault::Closed => Failure::with(
            Cause::ConnectionTerminated,
            terminated_details(v.reused, received, "closed"),
        ),
    }
}

fn terminated_details(reused: bool, received: u64, how: &str) -> String {
    let conn = if reused { "a reused" } else { "a new" };
    if received == 0 {
        format!("upstream {how} {conn} connection before sending any response")
    } else {
        format!(
            "upstream {how} {conn} connection after {received} bytes of an incomplete response head"
        )
    }
}

/// Classifies an error while streaming the response body.
pub fn classify_body(e: &hyper::Error) -> Failure {
    classify_body_io(find_io(e))
}

/// Classifies a [`crate::upstream::h1`] response body that failed.
pub fn classify_h1_body(f: &crate::upstream::h1::BodyFault) -> Failure {
    match f {
        crate::upstream::h1::BodyFault::Io(e) => classify_body_io(Some(e)),
        crate::upstream::h1::BodyFault::Closed => classify_body_io(None),
        crate::upstream::h1::BodyFault::BadChunk => Failure::with(
            Cause::ResponseIncomplete,
            "invalid chunked encoding in the response body",
        ),
    }
}

/// A response body that ended early: on an I/O error, or (`None`) the
/// upstream closing the connection.
fn classify_body_io(e: Option<&io::Error>) -> Failure {
    let f = Failure::with(
        Cause::ResponseIncomplete,
        "upstream closed the connection before the end of the body",
    );
    match e {
        Some(io) => Failure {
            details: Some(format!(
                "upstream connection failed mid-body ({})",
                io.kind()
            )),
            ..f
        }
        .errno(io),
        None => f,
    }
}

fn find_io(e: &hyper::Error) -> Option<&io::Error> {
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<io::Error>() {
            return Some(io);
        }
        src = s.source();
    }
    None
}

/// Parses `Keep-Alive: timeout=N` (seconds) into milliseconds.
pub fn keepalive_hint(v: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(v).ok()?;
    s.split(',').find_map(|p| {
        let (k, v) = p.split_once('=')?;
        if k.trim().eq_ignore_ascii_case("timeout") {
            v.trim().parse::<u64>().ok().map(|s| s * 1000)
        } else {
            None
        }
    })
}

/// Polls a response-head future with the read timeout, restarting the clock
/// while the request is still being written (a slow upload is not a slow
/// upstream; a stalled one is caught by the write timeout).
pub async fn await_head<F, T>(fut: F, info: &ConnInfo, read_timeout: Duration) -> Option<T>
where
    F: Future<Output = T>,
{
    let mut fut = std::pin::pin!(fut);
    let mut deadline = tokio::time::Instant::now() + read_timeout;
    loop {
        match tokio::time::timeout_at(deadline, &mut fut).await {
            Ok(t) => return Some(t),
            Err(_) => {
                let next = tokio::time::Instant::from_std(info.last_write()) + read_timeout;
                if next > deadline {
                    deadline = next;
                    continue;
                }
                return None;
            }
        }
    }
}
