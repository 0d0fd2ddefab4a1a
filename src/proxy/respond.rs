//! The one exit: every answer, proxied or baton's own, becomes a response
//! here. The response filters run on every one of them (request ID, rate
//! limit state), `Proxy-Status` is set for baton's own failures, and the
//! access log is settled: at once for baton's answers, when the body ends
//! for an upstream's.
//!
//! Owns: [`Answer`], [`exit`], the response filters, baton's error page
//! response. Must not: decide what the answer is (the phases before do).

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::response::Parts;
use http::{Response, StatusCode};

use super::body::{ProxiedBody, RespBody};
use super::context::Ctx;
use super::headers::{PROXY_STATUS, X_REQUEST_ID, proxy_status};
use super::pages::{self, Format, PageInfo};
use crate::core::failure::Failure;
use crate::upstream::files;

/// What a request is answered with.
pub(super) enum Answer {
    /// baton's own page for a failure: status and `Proxy-Status` from its
    /// cause, `Retry-After` when given (503s get one anyway).
    Failure {
        failure: Failure,
        next_hop: Option<Arc<str>>,
        retry_after: Option<u64>,
    },
    /// A static file from a FastCGI root.
    File(Box<files::Answer>),
    /// A page baton serves itself (the status page).
    Page {
        content_type: &'static str,
        body: String,
    },
    /// A redirect baton answers itself (plain HTTP to https).
    Redirect {
        status: StatusCode,
        location: HeaderValue,
    },
    /// The upstream's response: its head (already through the upstream
    /// response filter) and its body, which logs when it ends.
    Proxied(Parts, Box<ProxiedBody>),
    /// A stored response (`cache = true` routes).
    Cached(Box<Cached>),
}

/// A stored response as it is sent: its status, its headers (with `Age`),
/// its body unless HEAD or 304.
pub(super) struct Cached {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Option<Bytes>,
}

impl Answer {
    /// A redirect to `location`; `None` when it cannot be a header value.
    pub(super) fn redirect(status: StatusCode, location: &str) -> Option<Answer> {
        HeaderValue::from_str(location)
            .ok()
            .map(|location| Answer::Redirect { status, location })
    }

    /// baton's page for `failure`, with no next hop or `Retry-After`.
    pub fn failure(failure: Failure) -> Self {
        Answer::Failure {
            failure,
            next_hop: None,
            retry_after: None,
        }
    }
}

/// The response filters, in order: they run on every response, whoever
/// made it. A rule for every response (a security header, say) is one
/// function called here.
fn response_filters(ctx: &Ctx, h: &mut HeaderMap) {
    if let Some(route) = ctx.route_config() {
        route.response_headers.apply(h);
    }
    if let Some(v) = ctx.cache.as_deref().and_then(super::cache::status_header) {
        h.insert(HeaderName::from_static("cache-status"), v);
    }
    request_id(ctx, h);
    rate_limit_state(ctx, h);
    hsts(ctx, h);
}

/// The route's `expires`, as nginx's: on a successful or redirect
/// response, `Cache-Control: max-age` and `Expires`, replacing the
/// upstream's.
fn expires(ctx: &Ctx, status: StatusCode, h: &mut HeaderMap) {
    let Some(d) = ctx.route_config().and_then(|r| r.expires) else {
        return;
    };
    if !matches!(
        status.as_u16(),
        200 | 201 | 204 | 206 | 301 | 302 | 303 | 304 | 307 | 308
    ) {
        return;
    }
    let at = std::time::SystemTime::now() + d;
    if let Ok(v) = HeaderValue::from_str(&format!("max-age={}", d.as_secs())) {
        h.insert(header::CACHE_CONTROL, v);
    }
    if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(at)) {
        h.insert(header::EXPIRES, v);
    }
}

/// `Strict-Transport-Security` on HTTPS responses only (RFC 6797 §7.2: a
/// browser ignores it over plain HTTP), unless the application set its own.
fn hsts(ctx: &Ctx, h: &mut HeaderMap) {
    if let Some(v) = &ctx.rt.config.tls.hsts
        && ctx.https
        && !h.contains_key(header::STRICT_TRANSPORT_SECURITY)
    {
        h.insert(header::STRICT_TRANSPORT_SECURITY, v.clone());
    }
}

fn request_id(ctx: &Ctx, h: &mut HeaderMap) {
    h.insert(&X_REQUEST_ID, ctx.id.clone());
}

fn rate_limit_state(ctx: &Ctx, h: &mut HeaderMap) {
    let Some((policy, state)) = &ctx.rate_headers else {
        return;
    };
    if let Some(p) = policy {
        h.insert(HeaderName::from_static("ratelimit-policy"), p.clone());
    }
    if let Some(s) = state {
        h.insert(HeaderName::from_static("ratelimit"), s.clone());
    }
}

/// Seconds a client should wait before retrying a 503 (RFC 9110 §10.2.3).
const RETRY_AFTER_SECS: u64 = 5;

/// The one exit.
pub(super) fn exit(mut ctx: Box<Ctx>, answer: Answer) -> Response<RespBody> {
    ctx.served_here = matches!(
        answer,
        Answer::File(_) | Answer::Page { .. } | Answer::Cached(_)
    );
    let (mut r, len, cause) = match answer {
        Answer::Proxied(mut parts, mut body) => {
            let store = ctx.cache.as_mut().and_then(|c| c.store.take());
            response_filters(&ctx, &mut parts.headers);
            expires(&ctx, parts.status, &mut parts.headers);
            let coding = compression(&ctx, parts.status, &mut parts.headers);
            // The body logs the request when it ends.
            body.ctx = Some(ctx);
            let mut inner = RespBody::Proxied(body);
            if let Some(p) = store {
                inner = RespBody::Storing(Box::new(super::body::Storing::new(inner, p)));
            }
            let body = encoded(inner, coding, &mut parts.headers);
            return Response::from_parts(parts, body);
        }
        Answer::Cached(c) => {
            let Cached {
                status,
                headers,
                body,
            } = *c;
            let len = body.as_ref().map_or(0, |b| b.len() as u64);
            let mut r = Response::new(RespBody::Local(body));
            *r.status_mut() = status;
            *r.headers_mut() = headers;
            (r, len, ctx.cache.as_ref().and_then(|c| c.served_stale))
        }
        Answer::Failure {
            failure,
            next_hop,
            retry_after,
        } => {
            let (r, len) = error_page(&ctx, &failure, next_hop.as_deref(), retry_after);
            (r, len, Some(failure.cause))
        }
        Answer::File(a) => {
            let a = *a;
            let len = a.body.as_ref().map_or(0, files::FileBody::remaining);
            let mut r = Response::new(match a.body {
                Some(f) => RespBody::File(Box::new(f)),
                None => RespBody::Local(None),
            });
            *r.status_mut() = a.status;
            *r.headers_mut() = a.headers;
            (r, len, None)
        }
        Answer::Redirect { status, location } => {
            let mut r = Response::new(RespBody::Local(None));
            *r.status_mut() = status;
            r.headers_mut().insert(header::LOCATION, location);
            (r, 0, None)
        }
        Answer::Page { content_type, body } => {
            let len = body.len() as u64;
            let mut r = local(Bytes::from(body), content_type);
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            (r, len, None)
        }
    };
    response_filters(&ctx, r.headers_mut());
    if cause.is_none() {
        expires(&ctx, r.status(), r.headers_mut());
    }
    ctx.finish(r.status().as_u16(), len, cause);
    if ctx.served_here {
        let status = r.status();
        let coding = compression(&ctx, status, r.headers_mut());
        let (mut parts, body) = r.into_parts();
        let body = encoded(body, coding, &mut parts.headers);
        return Response::from_parts(parts, body);
    }
    r
}

/// The coding for this response when the route compresses and the
/// response and the client allow it (`Vary` set whenever the response
/// could have been compressed).
fn compression(
    ctx: &Ctx,
    status: StatusCode,
    h: &mut HeaderMap,
) -> Option<super::compress::Coding> {
    use super::compress;
    if !ctx.route_config().is_some_and(|r| r.compress)
        || !compress::eligible(&ctx.method, status, h)
    {
        return None;
    }
    compress::vary(h);
    compress::choose(ctx.accept_encoding.as_ref())
}

/// `body` encoded with `coding` and `h` marked so, or as it is.
fn encoded(body: RespBody, coding: Option<super::compress::Coding>, h: &mut HeaderMap) -> RespBody {
    let Some(c) = coding else { return body };
    match super::compress::Encoded::new(body, c) {
        Ok(e) => {
            super::compress::encode_headers(h, c);
            RespBody::Encoded(Box::new(e))
        }
        Err(b) => b,
    }
}

fn local(body: Bytes, content_type: &'static str) -> Response<RespBody> {
    let mut r = Response::new(RespBody::Local(Some(body)));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// A failure answered to a gRPC client, which cannot read an error page:
/// a trailers-only response (HTTP 200, `content-type: application/grpc`,
/// no body) whose `grpc-status` follows the status the cause has (gRPC's
/// HTTP-to-status mapping, with timeouts as `DEADLINE_EXCEEDED` and limits
/// as `RESOURCE_EXHAUSTED`), `grpc-message` the cause, and `Proxy-Status`.
fn grpc_failure(f: &Failure, next_hop: Option<&str>) -> Response<RespBody> {
    let code = match f.cause.status() {
        504 | 408 => 4,       // DEADLINE_EXCEEDED
        429 | 413 | 431 => 8, // RESOURCE_EXHAUSTED
        403 => 7,             // PERMISSION_DENIED
        404 => 12,            // UNIMPLEMENTED
        502 | 503 => 14,      // UNAVAILABLE
        _ => 13,              // INTERNAL
    };
    let mut message = format!("{}: {}", f.cause.id(), f.cause.title());
    if let Some(d) = &f.details {
        message.push_str(" (");
        message.push_str(d);
        message.push(')');
    }
    // grpc-message is percent-encoded (gRPC over HTTP/2, "Responses").
    let encoded = percent_encoding::utf8_percent_encode(&message, GRPC_MESSAGE).to_string();
    let mut r = Response::new(RespBody::Local(None));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from(code));
    if let Ok(v) = HeaderValue::from_str(&encoded) {
        h.insert("grpc-message", v);
    }
    h.insert(
        &PROXY_STATUS,
        proxy_status(f.cause, next_hop, f.details.as_deref(), f.received_status),
    );
    r
}

/// What grpc-message leaves as it is: printable ASCII but `%`.
const GRPC_MESSAGE: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%');

/// baton's own answer for a failure: status from the cause, `Proxy-Status`,
/// and a page in the format the client asked for.
fn error_page(
    ctx: &Ctx,
    f: &Failure,
    next_hop: Option<&str>,
    retry_after: Option<u64>,
) -> (Response<RespBody>, u64) {
    // Details (socket paths, addresses, users) and the next hop are for
    // the operator: the public gets the cause and the request ID.
    let public;
    let (f, next_hop) = if ctx.trusted {
        (f, next_hop)
    } else {
        public = Failure {
            details: None,
            ..f.clone()
        };
        (&public, None)
    };
    if ctx.grpc {
        return (grpc_failure(f, next_hop), 0);
    }
    let format = Format::negotiate(ctx.accept.as_ref().map(|v| v.as_bytes()));
    let status = f.cause.status();
    let retry_after = retry_after.or((status == 503).then_some(RETRY_AFTER_SECS));
    let body = pages::render(
        format,
        &PageInfo {
            cause: f.cause,
            status,
            details: f.details.as_deref(),
            request_id: ctx.id(),
            retry_after,
            status_page: ctx.rt.config.status_page.as_deref(),
            safe_method: matches!(
                ctx.method,
                http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
            ),
        },
        &ctx.rt.config.pages,
    );
    let len = body.len() as u64;
    let mut r = local(body, format.content_type());
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::SERVER, HeaderValue::from_static("baton"));
    h.insert(
        &PROXY_STATUS,
        proxy_status(f.cause, next_hop, f.details.as_deref(), f.received_status),
    );
    if let Some(s) = retry_after {
        h.insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    // The challenge a browser answers with its sign-in box (RFC 7617).
    if f.cause == crate::core::cause::Cause::AuthRequired
        && let Some(auth) = ctx.route_config().and_then(|r| r.basic_auth.as_ref())
        && let Ok(v) = HeaderValue::from_str(&format!(
            "Basic realm=\"{}\", charset=\"UTF-8\"",
            auth.realm
        ))
    {
        h.insert(header::WWW_AUTHENTICATE, v);
    }
    (r, len)
}
