//! The request filters: each looks at the client's request and the context,
//! and either lets the request go on (filling the context) or answers it.
//! They run in the order [`run`] calls them; a new check (an access rule,
//! a redirect, a cache lookup) is one function called there.
//!
//! Must not: talk to an upstream (the attempt loop does), or build a
//! response (the one exit does, from the [`Answer`]).

use http::Request;
use http::header::{self, HeaderValue};
use hyper::body::Incoming;

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
/// `fn(&mut Ctx, &Request<Incoming>) -> Result<(), Answer>`, called
/// directly (not through a table of pointers: they inline into the
/// request path).
pub(super) fn run(ctx: &mut Ctx, req: &Request<Incoming>) -> Result<(), Answer> {
    status_page(ctx, req)?;
    route(ctx, req)?;
    maintenance(ctx, req)?;
    rate_limit(ctx, req)?;
    body_size(ctx, req)?;
    try_files(ctx, req)
}

/// `[server] status_page`: baton answers it itself, on any host.
fn status_page(ctx: &mut Ctx, req: &Request<Incoming>) -> Result<(), Answer> {
    if ctx.rt.config.status_page.as_deref() == Some(req.uri().path()) {
        return Err(status_page::render(ctx));
    }
    Ok(())
}

/// The first route in file order whose host and path prefix match.
fn route(ctx: &mut Ctx, req: &Request<Incoming>) -> Result<(), Answer> {
    let Some(i) = ctx.rt.route(|| ctx.host(), req.uri().path()) else {
        return Err(Answer::failure(Failure::new(Cause::NoRoute)));
    };
    let route = &ctx.rt.config.routes[i];
    let upstream = ctx.rt.config.upstreams[route.upstream].name.clone();
    ctx.route = Some(route.name.clone());
    ctx.route_metrics = Some(ctx.rt.route_metrics[i].clone());
    ctx.upstream = Some(upstream);
    ctx.route_index = Some(i);
    Ok(())
}

/// A route or upstream under maintenance: 503 with its message.
fn maintenance(ctx: &mut Ctx, _: &Request<Incoming>) -> Result<(), Answer> {
    let route = ctx.route_config().expect("routed");
    let up = &ctx.rt.config.upstreams[route.upstream];
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
fn rate_limit(ctx: &mut Ctx, req: &Request<Incoming>) -> Result<(), Answer> {
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
fn body_size(ctx: &mut Ctx, req: &Request<Incoming>) -> Result<(), Answer> {
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
fn try_files(ctx: &mut Ctx, req: &Request<Incoming>) -> Result<(), Answer> {
    let route = ctx.route_config().expect("routed");
    let up = &ctx.rt.upstreams[route.upstream];
    let Some(fc) = &up.cfg.fastcgi else {
        return Ok(());
    };
    let target = match &up.docroot {
        Some(root) => fastcgi::resolve(fc, root, req.uri().path(), req.uri().query().unwrap_or("")),
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
        )))),
        Target::NotFound => Err(Answer::failure(Failure::with(
            Cause::FileNotFound,
            format!("nothing under {} for this path", fc.root.display()),
        ))),
        Target::Forbidden => Err(Answer::failure(Failure::new(Cause::Forbidden))),
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
