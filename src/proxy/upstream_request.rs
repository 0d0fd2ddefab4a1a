//! The upstream request phase: the request as it will be sent to every
//! attempt, built once: the rewritten head (kept, so a replay sends it
//! again without a copy), the body (buffered when small enough to replay,
//! else streamed), FastCGI's parameters, and the consistent-hash key.
//!
//! Must not: choose a server or talk to one (the attempt loop does).

use crate::core::body::{ClientUpgrade, RequestBody};
use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::{Method, Request, Uri};
use http_body::Body as _;
use http_body_util::BodyExt;

use super::context::Ctx;
use super::filters::{client_key, declared_length};
use super::headers::{self, is_upgrade};
use super::respond::Answer;
use crate::config::{Balance, HashKey, UpstreamConfig};
use crate::core::cause::Cause;
use crate::core::failure::Failure;
use crate::upstream::balance::fnv1a;
use crate::upstream::fastcgi;
use crate::upstream::{ClientBody, ClientBodyError, Streamed, UpBody};

/// Largest FastCGI request body without a Content-Length that is buffered
/// when server.max_body_bytes is not set.
const FASTCGI_BUFFER_MAX: usize = 64 << 20;

/// The request every attempt sends.
pub(super) struct UpRequest {
    pub method: Method,
    /// Origin-form target.
    pub target: Uri,
    pub headers: HeaderMap,
    /// Baton's own fields, sent after `headers` (`headers::Added`).
    pub added: headers::Added,
    /// FastCGI: BEGIN_REQUEST and the CGI parameters.
    pub fcgi_head: Option<Vec<u8>>,
    pub body: BodyPlan,
    /// The client's side of a protocol upgrade it asked for.
    pub client_upgrade: Option<ClientUpgrade>,
    /// The consistent-hash key, when the upstream hashes.
    pub hash_key: Option<u64>,
}

/// The request body, as attempts take it.
pub(super) struct BodyPlan {
    /// `Some(None)`: no body; `Some(Some(b))`: buffered, replayable;
    /// `None`: streamed (sent once).
    replay: Option<Option<Bytes>>,
    stream: Option<ClientBody>,
    /// A body that never reached the upstream, to resend as is.
    pub pending: Option<UpBody>,
    /// A streamed body is held to max_body_bytes as it streams, and says
    /// when the client failed it (only a streamed body has this).
    watch: Option<Streamed>,
}

impl BodyPlan {
    fn new(ctx: &Ctx, replay: Option<Option<Bytes>>, stream: Option<ClientBody>) -> Self {
        let watch = stream
            .as_ref()
            .map(|_| Streamed::new(ctx.rt.config.limits.max_body_bytes));
        BodyPlan {
            replay,
            stream,
            pending: None,
            watch,
        }
    }

    /// The body for the next attempt.
    pub fn take(&mut self) -> UpBody {
        if let Some(b) = self.pending.take() {
            return b;
        }
        match &self.replay {
            Some(None) => UpBody::Empty,
            Some(Some(b)) => UpBody::Full(Some(b.clone())),
            None => match (self.stream.take(), &self.watch) {
                (Some(b), Some(w)) => UpBody::Stream(b, w.clone()),
                _ => UpBody::Empty,
            },
        }
    }
    /// Whether a body that was sent can be sent again.
    pub fn replayable(&self) -> bool {
        self.replay.is_some()
    }
    /// Whether the next attempt still has the whole body to send.
    pub fn in_hand(&self) -> bool {
        self.replayable() || self.pending.is_some() || self.stream.is_some()
    }
    /// The client-side failure that stopped the streamed body, if one did.
    pub fn fault(&self) -> Option<Failure> {
        self.watch.as_ref()?.failure()
    }
}

impl UpRequest {
    /// The method is idempotent or the request carries `Idempotency-Key`
    /// (looked up only when a replay is being decided).
    pub fn repeatable(&self) -> bool {
        headers::idempotent(&self.method) || self.headers.contains_key(&headers::IDEMPOTENCY_KEY)
    }
}

/// Builds the upstream request from the client's, consuming it.
pub(super) async fn build(ctx: &Ctx, mut req: Request<RequestBody>) -> Result<UpRequest, Answer> {
    let cfg = &ctx.rt.upstreams[ctx.upstream_index()].cfg;
    let upgrade = is_upgrade(req.headers()) && ctx.script.is_none();
    let client_upgrade = if upgrade {
        req.extensions_mut().remove::<ClientUpgrade>()
    } else {
        None
    };
    let (parts, body) = req.into_parts();
    let mut hdrs = parts.headers;
    let added = headers::upstream_request(ctx, &mut hdrs, upgrade);
    // A cache revalidation asks with the stored response's validators.
    if let Some(cond) = ctx.cache.as_ref().and_then(|c| c.revalidate.as_ref()) {
        hdrs.remove(http::header::IF_NONE_MATCH);
        hdrs.remove(http::header::IF_MODIFIED_SINCE);
        for (k, v) in cond {
            hdrs.insert(k, v.clone());
        }
    }
    // The origin-form target, reusing the parsed path (no re-parse), or
    // the route's rewrite (checked by the route filter).
    let rewritten = ctx
        .rewritten
        .as_deref()
        .and_then(|t| http::uri::PathAndQuery::try_from(t).ok());
    let target = match rewritten.as_ref().or(parts.uri.path_and_query()) {
        Some(pq) => {
            let mut up = http::uri::Parts::default();
            up.path_and_query = Some(pq.clone());
            Uri::from_parts(up).unwrap_or_else(|_| Uri::from_static("/"))
        }
        None => Uri::from_static("/"),
    };
    let declared = declared_length(&hdrs);
    let body = if body.is_end_stream() || declared == Some(0) {
        // No body (most requests): no future to build for it.
        BodyPlan::new(ctx, Some(None), None)
    } else {
        body_plan(ctx, cfg, body, declared).await?
    };
    let fcgi_head = fcgi_head(ctx, cfg, &parts.method, &hdrs, &added, declared, &body);
    Ok(UpRequest {
        hash_key: hash_key(&cfg.balance, &hdrs, &added, ctx.client),
        method: parts.method,
        target,
        headers: hdrs,
        added,
        fcgi_head,
        body,
        client_upgrade,
    })
}

/// A body: buffered when small enough to replay (or when FastCGI needs
/// its length), else streamed.
async fn body_plan(
    ctx: &Ctx,
    cfg: &UpstreamConfig,
    body: RequestBody,
    declared: Option<u64>,
) -> Result<BodyPlan, Answer> {
    let body = ClientBody::new(body, ctx.rt.config.limits.body_read_timeout);
    let max_body = ctx.rt.config.limits.max_body_bytes;
    // CGI needs CONTENT_LENGTH: a FastCGI request body without one is
    // buffered (up to max_body_bytes, else 64 MiB), as nginx does.
    let must_buffer = ctx.script.is_some() && declared.is_none();
    if !(must_buffer || declared.is_some_and(|n| n <= cfg.replay_buffer_bytes as u64)) {
        return Ok(BodyPlan::new(ctx, None, Some(body)));
    }
    let limit = match max_body {
        Some(m) if must_buffer => m as usize,
        None if must_buffer => FASTCGI_BUFFER_MAX,
        _ => usize::MAX,
    };
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(b) => Ok(BodyPlan::new(ctx, Some(Some(b.to_bytes())), None)),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(Answer::failure(Failure::with(
                Cause::BodyTooLarge,
                format!("a body without Content-Length over {limit} bytes"),
            )))
        }
        // The client went away, stalled or sent a malformed body.
        Err(e) => Err(Answer::failure(match e.downcast_ref::<ClientBodyError>() {
            Some(e) => e.failure(),
            None => Failure::with(Cause::RequestBodyIncomplete, e.to_string()),
        })),
    }
}

/// FastCGI: BEGIN_REQUEST and the CGI parameters, built once.
fn fcgi_head(
    ctx: &Ctx,
    cfg: &UpstreamConfig,
    method: &Method,
    headers: &HeaderMap,
    added: &headers::Added,
    declared: Option<u64>,
    body: &BodyPlan,
) -> Option<Vec<u8>> {
    let (sc, fc) = (ctx.script.as_ref()?, cfg.fastcgi.as_ref()?);
    let content_length = declared.or(match &body.replay {
        Some(Some(b)) => Some(b.len() as u64),
        _ => None,
    });
    Some(fastcgi::request_head(
        fc,
        sc,
        &fastcgi::RequestInfo {
            method: method.as_str(),
            request_uri: ctx.path(),
            headers,
            added,
            content_length,
            protocol: ctx.protocol(),
            client: ctx.client,
            local: ctx.local,
            server_name: ctx.host(),
            https: ctx.https,
        },
    ))
}

/// The request's consistent-hash key, when the upstream hashes.
fn hash_key(
    balance: &Balance,
    headers: &HeaderMap,
    added: &headers::Added,
    client: std::net::SocketAddr,
) -> Option<u64> {
    let Balance::Hash(k) = balance else {
        return None;
    };
    match k {
        HashKey::ClientIp => Some(client_key(client)),
        HashKey::Header(name) => added
            .iter()
            .find_map(|(n, v)| (n == name).then_some(v))
            .or_else(|| headers.get(name))
            .map(|v| fnv1a(v.as_bytes())),
        HashKey::Cookie(name) => headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|c| {
                let (k, v) = c.trim().split_once('=')?;
                (k == name).then(|| fnv1a(v.as_bytes()))
            }),
    }
}
