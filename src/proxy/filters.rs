//! The request filters: each looks at the client's request and the context,
//! and either lets the request go on (filling the context) or answers it.
//! They run in the order [`run`] calls them; a new check (an access rule,
//! a redirect, a cache lookup) is one function called there.
//!
//! Must not: talk to an upstream (the attempt loop does), or build a
//! response (the one exit does, from the [`Answer`]).

use crate::core::body::RequestBody;
use http::header::{self, HeaderValue};
use http::{Request, Version};
use http_body::Body as _;

use super::context::Ctx;
use super::respond::Answer;
use super::status_page;
use crate::config::RateKey;
use crate::core::cause::Cause;
use crate::core::failure::Failure;
use crate::gateway::limit::Limiter;
use crate::upstream::balance::fnv1a;
use crate::upstream::fastcgi::{self, Target};
use crate::upstream::files;

/// The request filters, in order; the first answer wins. Each is
/// `fn(&mut Ctx, &Request<RequestBody>) -> Result<(), Answer>`, called
/// directly (not through a table of pointers: they inline into the
/// request path).
pub(super) fn run(ctx: &mut Ctx, req: &Request<RequestBody>) -> Result<(), Answer> {
    host(ctx, req)?;
    acme_challenge(ctx, req)?;
    https_redirect(ctx, req)?;
    transfer_coding(ctx, req)?;
    status_page(ctx, req)?;
    route(ctx, req)?;
    access(ctx, req)?;
    basic_auth(ctx, req)?;
    maintenance(ctx, req)?;
    rate_limit(ctx, req)?;
    body_size(ctx, req)?;
    try_files(ctx, req)
}

/// ACME's HTTP-01 challenge (RFC 8555 §8.3): `GET
/// /.well-known/acme-challenge/TOKEN` for a token of an order in progress
/// answers its key authorization, on any host and listener.
fn acme_challenge(ctx: &mut Ctx, req: &Request<RequestBody>) -> Result<(), Answer> {
    let Some(token) = req
        .uri()
        .path()
        .strip_prefix("/.well-known/acme-challenge/")
    else {
        return Ok(());
    };
    let answer = ctx
        .gw
        .tls
        .acme
        .http
        .lock()
        .ok()
        .and_then(|m| m.get(token).cloned());
    match answer {
        Some(body) => Err(Answer::Page {
            content_type: "application/octet-stream",
            body,
        }),
        None => Ok(()),
    }
}

/// `server.redirect_https`: a plain-HTTP request gets `308 Permanent
/// Redirect` to the same host and path on the HTTPS listener (308 keeps
/// the method and body, unlike 301). ACME's HTTP-01 challenges
/// (`/.well-known/acme-challenge/`) stay on plain HTTP, as they must.
fn https_redirect(ctx: &mut Ctx, req: &Request<RequestBody>) -> Result<(), Answer> {
    if ctx.https || !ctx.rt.config.tls.redirect_https {
        return Ok(());
    }
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    if path.starts_with("/.well-known/acme-challenge/") {
        return Ok(());
    }
    let host = ctx.host();
    let port = ctx.gw.https_port.load(std::sync::atomic::Ordering::Relaxed);
    let location = match port {
        443 | 0 => format!("https://{}{path}", bracket(host)),
        p => format!("https://{}:{p}{path}", bracket(host)),
    };
    // A host that cannot be a header value: the host filter's job.
    Answer::redirect(http::StatusCode::PERMANENT_REDIRECT, &location).map_or(Ok(()), Err)
}

/// An IPv6 literal host in brackets, as a URL needs it.
fn bracket(host: &str) -> std::borrow::Cow<'_, str> {
    if host.contains(':') {
        format!("[{host}]").into()
    } else {
        host.into()
    }
}

/// One unambiguous host (RFC 9112 §3.2, RFC 9113 §8.3.1): two `Host`
/// fields, none on HTTP/1.1, or HTTP/2's `:authority` and `Host` naming two
/// hosts get 400, as nginx and HAProxy answer. An absolute-form target
/// (`GET http://example.com/ HTTP/1.1`) names the host itself: its
/// authority wins over `Host` (RFC 9112 §3.2.2), for routing and for the
/// `Host` sent upstream.
fn host(ctx: &mut Ctx, req: &Request<RequestBody>) -> Result<(), Answer> {
    let bad = |why: &str| Err(Answer::failure(Failure::with(Cause::RequestMalformed, why)));
    if ctx.two_hosts {
        return bad("two Host fields");
    }
    let authority = req.uri().authority();
    match (ctx.version, ctx.host_field.as_ref(), authority) {
        (Version::HTTP_2, Some(h), Some(a))
            if !h.as_bytes().eq_ignore_ascii_case(a.as_str().as_bytes()) =>
        {
            bad(":authority and Host name different hosts")
        }
        (Version::HTTP_2 | Version::HTTP_11, None, None) => bad("no Host field"),
        // Absolute-form on HTTP/1.x: the target's authority is the host.
        (Version::HTTP_11 | Version::HTTP_10, _, Some(a)) => {
            match HeaderValue::from_str(a.as_str()) {
                Ok(v) => {
                    ctx.host_field = Some(v);
                    ctx.host_from_target = true;
                    Ok(())
                }
                Err(_) => bad("the target's authority is not a valid Host"),
            }
        }
        _ => Ok(()),
    }
}

/// `Transfer-Encoding` other than plain `chunked` (`identity, chunked`,
/// `cow, chunked`) is a coding baton does not implement: 501 (RFC 9112
/// §6.1), as nginx answers, rather than leave the framing to the reading
/// of whichever server is next.
fn transfer_coding(_: &mut Ctx, req: &Request<RequestBody>) -> Result<(), Answer> {
    // No body, no framing to doubt (most requests: no lookup).
    if req.body().is_end_stream() {
        return Ok(());
    }
    let mut codings = req
        .headers()
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii);
    match (codings.next(), codings.next()) {
        (None, _) => Ok(()),
        (Some(c), None) if c.eq_ignore_ascii_case(b"chunked") => Ok(()),
        _ => Err(Answer::failure(Failure::with(
            Cause::TransferCodingUnsupported,
            "Transfer-Encoding other than chunked",
        ))),
    }
}

/// `[server] status_page`: baton answers it itself, on any host.
fn status_page(ctx: &mut Ctx, req: &Request<RequestBody>) -> Result<(), Answer> {
    if ctx.rt.config.status_page.as_deref() == Some(req.uri().path()) {
        return Err(status_page::render(ctx));
    }
    Ok(())
}

/// The first route in file order whose host and path match; a redirect
/// route answers here, a `rewrite` sets the upstream's target.
fn route(ctx: &mut Ctx, req: &Request<RequestBody>) -> Result<(), Answer> {
    let path = req.uri().path();
    let Some(i) = ctx.rt.route(|| ctx.host(), path) else {
        return Err(Answer::failure(Failure::new(Cause::NoRoute)));
    };
    let rt = ctx.rt.clone();
    let route = &rt.config.routes[i];
    ctx.route = Some(route.name.clone());
    ctx.route_metrics = Some(ctx.rt.route_metrics[i].clone());
    ctx.route_index = Some(i);
    // The regex's groups, read only when a template uses them.
    let groups = match &route.path_regex {
        Some(re) if route.rewrite.is_some() || route.redirect.is_some() => re.captures(path),
        _ => None,
    };
    if let Some(w) = &route.rewrite {
        let mut target = crate::config::with_groups(w, groups.as_ref()).into_owned();
        // nginx's rule: the client's query goes along, after the
        // rewrite's own, unless the rewrite ends in `?`.
        if let Some(stripped) = target.strip_suffix('?') {
            target.truncate(stripped.len());
        } else if let Some(q) = req.uri().query() {
            target.push(if target.contains('?') { '&' } else { '?' });
            target.push_str(q);
        }
        if http::uri::PathAndQuery::try_from(target.as_str()).is_err() {
            return Err(Answer::failure(Failure::with(
                Cause::RequestMalformed,
                "the rewritten target is not a valid URI",
            )));
        }
        ctx.rewritten = Some(target);
    }
    let Some(u) = route.upstream else {
        // A redirect route: answered here, nothing goes upstream.
        let rd = route
            .redirect
            .as_ref()
            .expect("a route without an upstream redirects");
        let scheme = if ctx.https { "https" } else { "http" };
        let location = rd.location(scheme, ctx.host(), path, req.uri().query(), groups.as_ref());
        let status =
            http::StatusCode::from_u16(rd.status).unwrap_or(http::StatusCode::MOVED_PERMANENTLY);
        return Err(Answer::redirect(status, &location).unwrap_or_else(|| {
            Answer::failure(Failure::with(
                Cause::RequestMalformed,
                "the redirect target is not a valid header value",
            ))
        }));
    };
    ctx.upstream = Some(ctx.rt.config.upstreams[u].name.clone());
    Ok(())
}

/// The route's `allow` and `deny` lists, on the real client address
/// (after the PROXY protocol and trusted proxies): 403 `access_denied`.
fn access(ctx: &mut Ctx, _: &Request<RequestBody>) -> Result<(), Answer> {
    let route = ctx.route_config().expect("routed");
    let ip = ctx.client.ip();
    let denied = route.deny.iter().any(|n| n.contains(&ip))
        || (!route.allow.is_empty() && !route.allow.iter().any(|n| n.contains(&ip)));
    if denied {
        return Err(Answer::failure(Failure::new(Cause::AccessDenied)));
    }
    Ok(())
}

/// The route's `basic_auth`: 401 `auth_required` (the exit adds
/// `WWW-Authenticate`) without a user and password of its file.
fn basic_auth(ctx: &mut Ctx, req: &Request<RequestBody>) -> Result<(), Answer> {
    let Some(auth) = &ctx.route_config().expect("routed").basic_auth else {
        return Ok(());
    };
    let given = req.headers().get(header::AUTHORIZATION);
    if given.is_some_and(|v| auth.allows(v.as_bytes())) {
        return Ok(());
    }
    Err(Answer::failure(Failure::with(
        Cause::AuthRequired,
        if given.is_some() {
            "unknown user or wrong password"
        } else {
            "no credentials"
        },
    )))
}

/// A route or upstream under maintenance: 503 with its message.
fn maintenance(ctx: &mut Ctx, _: &Request<RequestBody>) -> Result<(), Answer> {
    let route = ctx.route_config().expect("routed");
    let up = &ctx.rt.config.upstreams[ctx.upstream_index()];
    let Some(m) = route.maintenance.as_ref().or(up.maintenance.as_ref()) else {
        return Ok(());
    };
    Err(Answer::Failure {
        failure: Failure::with(Cause::Maintenance, m.message.clone()),
        next_hop: None,
        retry_after: Some(m.retry_after.as_secs().max(1)),
    })
}

/// The route's per-client rate limit: 429 over it; the limit's state
/// goes on every response either way.
fn rate_limit(ctx: &mut Ctx, req: &Request<RequestBody>) -> Result<(), Answer> {
    let i = ctx.route_index.expect("routed");
    let Some(limiter) = &ctx.rt.limiters[i] else {
        return Ok(());
    };
    let key = match &limiter.config().key {
        RateKey::ClientIp => client_key(ctx.client),
        RateKey::Header(h) => fnv1a(req.headers().get(h).map_or(&b""[..], |v| v.as_bytes())),
    };
    let v = limiter.check(key, crate::core::clock::now_ms() * 1000);
    let c = limiter.config();
    let over = (!v.allowed).then(|| {
        Failure::with(
            Cause::RateLimited,
            format!("over {}/{}s for this client", c.rate, c.per.as_secs()),
        )
    });
    ctx.rate_headers = Some((
        HeaderValue::from_str(&limiter.policy()).ok(),
        HeaderValue::from_str(&Limiter::header(&v)).ok(),
    ));
    match over {
        None => Ok(()),
        Some(failure) => Err(Answer::Failure {
            failure,
            next_hop: None,
            retry_after: Some(v.reset_secs),
        }),
    }
}

/// A declared body over `max_body_bytes`: 413 before anything is read.
/// (A body without a length is held to the limit as it is read.)
fn body_size(ctx: &mut Ctx, req: &Request<RequestBody>) -> Result<(), Answer> {
    if let Some(max) = ctx.rt.config.limits.max_body_bytes
        && let Some(n) = declared_length(req.headers())
        && n > max
    {
        let f = Failure::with(Cause::BodyTooLarge, format!("{n} bytes, limit {max}"));
        return Err(Answer::failure(f));
    }
    Ok(())
}

/// A FastCGI upstream maps the path under its document root first: a
/// script goes on to the app, a static file is served here, nothing is 404
/// and a path out of the root is 403.
fn try_files(ctx: &mut Ctx, req: &Request<RequestBody>) -> Result<(), Answer> {
    let up = &ctx.rt.upstreams[ctx.upstream_index()];
    let Some(fc) = &up.cfg.fastcgi else {
        return Ok(());
    };
    let (path, query) = match &ctx.rewritten {
        Some(t) => t.split_once('?').unwrap_or((t, "")),
        None => (req.uri().path(), req.uri().query().unwrap_or("")),
    };
    let target = match &up.docroot {
        Some(root) => fastcgi::resolve(fc, root, path, query),
        None => Target::NotFound,
    };
    match target {
        Target::Script(s) => {
            ctx.script = Some(Box::new(s));
            Ok(())
        }
        Target::Static(f, name) => Err(Answer::File(Box::new(files::answer(
            f,
            &name,
            req.method(),
            req.headers(),
            fc.static_max_age,
            &ctx.gw.files,
        )))),
        Target::NotFound => Err(Answer::failure(Failure::with(
            Cause::FileNotFound,
            format!("nothing under {} for this path", fc.root.display()),
        ))),
        Target::Forbidden => Err(Answer::failure(Failure::new(Cause::Forbidden))),
        Target::AddSlash(location) => Err(Answer::redirect(
            http::StatusCode::MOVED_PERMANENTLY,
            &location,
        )
        .unwrap_or_else(|| Answer::failure(Failure::new(Cause::Forbidden)))),
    }
}

/// The `Content-Length` the client declared, if it is a number.
pub(super) fn declared_length(h: &http::HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// The key of a client's address, for client-IP hashing and rate limits.
pub(super) fn client_key(client: std::net::SocketAddr) -> u64 {
    fnv1a(client.ip().to_string().as_bytes())
}
