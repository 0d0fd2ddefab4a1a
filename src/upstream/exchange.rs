//! One request and its response head on a connection, whatever the link:
//! baton's own HTTP/1.1 client ([`h1`]), hyper's client (a
//! streamed body or an upgrade), or FastCGI. The proxy's attempts, the
//! active health checks and `baton doctor` all go through [`exchange`], so
//! a failure is classified the same way wherever it happens.
//!
//! Owns: choosing the client for a request, the head wait, the FastCGI
//! accept-queue "poke", and turning every raw error of an exchange into a
//! [`Failure`] (through `upstream`'s classifiers). Must not: decide what
//! happens after a failure (the proxy's retry decision does).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderName;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, Uri};

use super::{
    AttemptView, Conn, Link, Server, UpBody, UpIncoming, await_head, classify_exchange,
    classify_h1, fastcgi, h1,
};
use crate::config::UpstreamConfig;
use crate::core::cause::Cause;
use crate::core::failure::Failure;

/// What is sent: the head (kept by the caller, so a replay rebuilds it
/// without a copy) and the body.
pub struct Request<'a> {
    pub method: &'a Method,
    /// Origin-form target.
    pub target: &'a Uri,
    pub headers: &'a HeaderMap,
    /// Fields sent after `headers` (baton's `X-Forwarded-*`, `Via`,
    /// `X-Request-Id`), which `headers` does not hold: kept apart so that
    /// no request pays a hashed insert for each.
    pub added: &'a [(HeaderName, HeaderValue)],
    /// FastCGI only: BEGIN_REQUEST and the CGI parameters, built once.
    pub fcgi_head: &'a [u8],
    pub body: UpBody,
    /// The client asked for a protocol upgrade: the request goes through
    /// hyper's client, which hands over the upstream's side.
    pub upgrade: bool,
    /// Tags the FastCGI app's stderr lines in the log.
    pub request_id: &'a HeaderValue,
}

/// What one exchange came to: a response head, or why there is none.
pub type Outcome = Result<Head, NoHead>;

/// A response head (and the upstream's side of a protocol upgrade).
pub struct Head {
    pub response: Response<UpIncoming>,
    pub upgrade: Option<hyper::upgrade::OnUpgrade>,
}

/// Why an exchange brought no response head.
pub enum NoHead {
    /// The response head did not come within the head wait.
    TimedOut,
    /// The connection was dead before a byte was written: the request's
    /// body, intact, to resend (the head is rebuilt from what was kept).
    Unsent(UpBody),
    Failed(Failure),
}

/// Sends `req` on `conn` and waits up to `head_wait` for the response head
/// (the clock restarts while the request body is still being written).
/// `read_before` is what the connection had read before this request, for
/// the classifiers. A link that carries a response body moves into it.
///
/// An `async move` block, not an `async fn`: that would keep the request
/// twice in the future (the argument, and the local it is moved to).
#[allow(clippy::manual_async_fn)] // the future's size: see the comment
pub fn exchange<'a>(
    server: &'a Arc<Server>,
    cfg: &'a UpstreamConfig,
    conn: &'a mut Conn,
    req: Request<'a>,
    head_wait: Duration,
    read_before: u64,
) -> impl Future<Output = Outcome> + Send + 'a {
    async move {
        let info = &conn.info;
        // A streamed body or an upgrade goes through hyper's client, which
        // reads the response while a body is still being sent.
        if matches!(req.body, UpBody::Stream(..)) || req.upgrade {
            conn.tx = match conn.tx.take() {
                // Boxed: hyper's handshake would make every exchange's future
                // (and its moves) as large as itself, for a rare path.
                Some(link) => match Box::pin(server.hyper_link(cfg, link, info)).await {
                    Ok(l) => Some(l),
                    Err(f) => return Err(NoHead::Failed(f)),
                },
                None => None,
            };
        }
        let view = AttemptView {
            info,
            reused: conn.reused.is_some(),
            read_before,
            max_header_bytes: cfg.max_response_header_bytes,
        };
        match conn.tx.take() {
            Some(Link::H1(wire)) => {
                let head = h1::Head {
                    method: req.method,
                    target: req.target,
                    headers: req.headers,
                    added: req.added,
                };
                let max = cfg.max_response_header_bytes;
                let fut = h1::exchange(wire, head, req.body, max);
                match await_head(fut, info, head_wait).await {
                    None => Err(NoHead::TimedOut),
                    Some(h1::Sent::Head(resp)) => Ok(Head {
                        response: resp.map(UpIncoming::H1),
                        upgrade: None,
                    }),
                    Some(h1::Sent::Unsent(body)) => Err(NoHead::Unsent(body)),
                    Some(h1::Sent::Failed(e)) => Err(NoHead::Failed(classify_h1(&e, &view))),
                }
            }
            Some(Link::Http(mut tx)) => {
                let mut r = http::Request::new(req.body);
                *r.method_mut() = req.method.clone();
                *r.uri_mut() = req.target.clone();
                *r.headers_mut() = with_added(req.headers, req.added);
                let fut = tx.try_send_request(r);
                conn.tx = Some(Link::Http(tx));
                match await_head(fut, info, head_wait).await {
                    None => Err(NoHead::TimedOut),
                    Some(Ok(mut resp)) => {
                        let up_upgrade = (resp.status() == StatusCode::SWITCHING_PROTOCOLS
                            && req.upgrade)
                            .then(|| hyper::upgrade::on(&mut resp));
                        Ok(Head {
                            response: resp.map(UpIncoming::Http),
                            upgrade: up_upgrade,
                        })
                    }
                    Some(Err(mut e)) => match e.take_message() {
                        Some(req) => Err(NoHead::Unsent(req.into_body())),
                        None => Err(NoHead::Failed(classify_exchange(e.error(), &view))),
                    },
                }
            }
            Some(Link::H2(mut tx)) => {
                let r = h2_request(req, cfg);
                let ready = tx.ready().await;
                conn.tx = Some(Link::H2(tx.clone()));
                if let Err(e) = ready {
                    return Err(NoHead::Failed(classify_exchange(&e, &view)));
                }
                let fut = tx.send_request(r);
                match await_head(fut, info, head_wait).await {
                    None => Err(NoHead::TimedOut),
                    Some(Ok(resp)) => Ok(Head {
                        response: resp.map(UpIncoming::Http),
                        upgrade: None,
                    }),
                    Some(Err(e)) => Err(NoHead::Failed(classify_exchange(&e, &view))),
                }
            }
            Some(Link::Fcgi(wire)) => {
                let expected = wire.claim.as_ref().is_some_and(|c| c.expected());
                let tag = fastcgi::LogTag {
                    upstream: cfg.name.clone(),
                    server: conn.peer.clone(),
                    request_id: req.request_id.clone(),
                };
                let fut = fastcgi::exchange(
                    wire,
                    req.fcgi_head,
                    req.body,
                    cfg.max_response_header_bytes,
                    &tag,
                );
                // On a new connection, no head after 2 ms (opened for a
                // worker known to be free: a few of the server's usual answer
                // times) may mean this request sits in the accept queue
                // behind workers that baton's own connections hold: from then
                // on it counts as queued (finished connections close instead
                // of idling or being handed on), and the idle ones close now.
                let workers = &server.workers;
                let poked = async {
                    if conn.reused.is_some() {
                        let t = std::time::Instant::now();
                        let r = fut.await;
                        if matches!(r, fastcgi::Sent::Head(_)) {
                            workers.note_answer(t.elapsed());
                        }
                        return r;
                    }
                    let mut fut = std::pin::pin!(fut);
                    tokio::select! {
                        r = &mut fut => return r,
                        _ = tokio::time::sleep(workers.poke_after(expected)) => {}
                    }
                    let _queued = crate::upstream::workers::Queued::new(workers);
                    server.clear();
                    fut.await
                };
                // Boxed: FastCGI's exchange is the largest future here, and
                // every exchange (HTTP/1.1 too) would otherwise be its size.
                match await_head(Box::pin(poked), info, head_wait).await {
                    None => Err(NoHead::TimedOut),
                    Some(fastcgi::Sent::Head(resp)) => Ok(Head {
                        response: resp.map(UpIncoming::Fcgi),
                        upgrade: None,
                    }),
                    Some(fastcgi::Sent::Unsent(body)) => Err(NoHead::Unsent(body)),
                    Some(fastcgi::Sent::Failed(f)) => Err(NoHead::Failed(f)),
                }
            }
            None => Err(NoHead::Failed(Failure::with(
                Cause::Internal,
                "connection without a link",
            ))),
        }
    }
}

/// A copy of `headers` with `added` in it: the request as hyper's client,
/// HTTP/2 and FastCGI take it.
pub fn with_added(headers: &HeaderMap, added: &[(HeaderName, HeaderValue)]) -> HeaderMap {
    let mut h = headers.clone();
    for (n, v) in added {
        h.insert(n.clone(), v.clone());
    }
    h
}

/// The request as HTTP/2 sends it: an absolute target (`:scheme`,
/// `:authority` from `Host`), no `Host` field, and `te: trailers` for gRPC
/// (its servers require it; the client's `TE` was removed as hop-by-hop).
fn h2_request(req: Request<'_>, cfg: &UpstreamConfig) -> http::Request<UpBody> {
    let scheme = if cfg.tls.is_some() { "https" } else { "http" };
    let mut headers = with_added(req.headers, req.added);
    let authority = headers
        .remove(http::header::HOST)
        .and_then(|h| h.to_str().ok().map(str::to_string))
        .unwrap_or_else(|| "localhost".into());
    let path = req
        .target
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let grpc = headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|c| c.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
    }
    let mut r = http::Request::new(req.body);
    *r.method_mut() = req.method.clone();
    *r.version_mut() = http::Version::HTTP_2;
    *r.uri_mut() = http::Uri::builder()
        .scheme(scheme)
        .authority(authority.as_str())
        .path_and_query(path.as_str())
        .build()
        .unwrap_or_else(|_| req.target.clone());
    *r.headers_mut() = headers;
    r
}
