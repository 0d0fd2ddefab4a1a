//! The cache phases of a `cache = true` route: the lookup before the
//! upstream request (a fresh hit answers; a stale one is revalidated, or
//! served while it is refreshed in the background; concurrent misses wait
//! for the first), and what happens to the upstream's answer (stored, a
//! `304` refreshing what is stored, or a stored response served in place
//! of a failure within the stale windows). Every response of a cached
//! route says what happened in `Cache-Status` (RFC 9211).
//!
//! Must not: decide cacheability itself (that is the stored
//! `CachePolicy`'s, RFC 9111) or talk to an upstream (the attempt loop
//! does, for the cache too).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::core::body::RequestBody;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, StatusCode};
use http_cache_semantics::{AfterResponse, BeforeRequest, CachePolicy};

use super::context::Ctx;
use super::respond::{Answer, Cached};
use crate::gateway::cache::{Leader, Miss, Store, Stored};

/// The cache's part of a request's context.
pub(super) struct CacheCtx {
    pub key: String,
    /// The request as the cache sees it (for the policy).
    req: http::request::Parts,
    /// A stored response that needs revalidation, kept to answer a `304`
    /// or to serve in place of a failure.
    pub stale: Option<Arc<Stored>>,
    /// Conditional fields for the upstream request (`If-None-Match`,
    /// `If-Modified-Since`) when revalidating.
    pub revalidate: Option<HeaderMap>,
    leader: Option<Leader>,
    /// What `Cache-Status` says.
    pub status: String,
    /// An unsafe method: what is stored for the target goes if it succeeds.
    invalidate: bool,
    stale_if_error: Duration,
    /// The route's `cache_ttl`.
    ttl: Duration,
    /// A response to store when its body ends (taken by the exit).
    pub store: Option<Pending>,
    /// A stored response was served in place of a failure with this cause.
    pub served_stale: Option<crate::core::cause::Cause>,
    /// A follower that waited for another request's response.
    collapsed: bool,
    /// Not the cache's business: an unsafe method (after `invalidate`) or
    /// a bypass cookie.
    pass: bool,
    /// A HEAD: answered from a stored GET, never stored itself.
    head: bool,
}

impl CacheCtx {
    /// The same lookup, for the background request that refreshes a
    /// stale response served meanwhile.
    pub fn refresh(&self) -> CacheCtx {
        CacheCtx {
            key: self.key.clone(),
            req: self.req.clone(),
            stale: self.stale.clone(),
            revalidate: self.revalidate.clone(),
            leader: None,
            status: "fwd=stale; detail=background".into(),
            invalidate: false,
            stale_if_error: self.stale_if_error,
            ttl: self.ttl,
            store: None,
            served_stale: None,
            collapsed: false,
            pass: false,
            head: self.head,
        }
    }
}

/// What the lookup decided.
pub(super) enum Look {
    /// Go upstream (a miss, a revalidation, or not cacheable).
    Go,
    /// Answered from the cache.
    Answer(Answer),
    /// Answered with a stale response (within `stale-while-revalidate`);
    /// the caller refreshes it in the background.
    StaleRefresh(Answer),
}

/// The key: scheme, host and target (method aside: HEAD is answered from
/// a GET's response).
fn key(ctx: &Ctx, req: &Request<RequestBody>) -> String {
    format!(
        "{}://{}{}",
        if ctx.https { "https" } else { "http" },
        ctx.host().to_ascii_lowercase(),
        req.uri().path_and_query().map_or("/", |p| p.as_str())
    )
}

fn parts(req: &Request<RequestBody>) -> http::request::Parts {
    let mut r = Request::new(());
    *r.method_mut() = req.method().clone();
    *r.uri_mut() = req.uri().clone();
    *r.headers_mut() = req.headers().clone();
    r.into_parts().0
}

/// The lookup.
pub(super) async fn lookup(ctx: &mut Ctx, req: &Request<RequestBody>) -> Look {
    let Some(rc) = ctx.route_config().and_then(|r| r.cache.clone()) else {
        return Look::Go;
    };
    let store = ctx.gw.cache.clone();
    let key = key(ctx, req);
    let mut c = CacheCtx {
        key,
        req: parts(req),
        stale: None,
        revalidate: None,
        leader: None,
        status: String::new(),
        invalidate: false,
        stale_if_error: rc.stale_if_error,
        ttl: rc.ttl,
        store: None,
        served_stale: None,
        collapsed: false,
        pass: false,
        head: req.method() == Method::HEAD,
    };
    // A HEAD is answered from a stored GET (RFC 9110 §9.3.2).
    c.req.method = Method::GET;
    let method = req.method();
    if method != Method::GET && method != Method::HEAD {
        // RFC 9111 §4.4: a successful unsafe request invalidates.
        c.invalidate = !matches!(*method, Method::OPTIONS | Method::TRACE);
        c.pass = true;
        c.status = "fwd=method".into();
        ctx.cache = Some(Box::new(c));
        return Look::Go;
    }
    if let Some(name) = bypass_cookie(req.headers(), &rc.bypass_cookies) {
        c.pass = true;
        c.status = format!("fwd=bypass; detail=\"cookie {name}\"");
        ctx.gw.metrics.cache_event("bypass");
        ctx.cache = Some(Box::new(c));
        return Look::Go;
    }
    for round in 0..2 {
        let now = SystemTime::now();
        let variants = match store.get(&c.key) {
            Some(v) => Some(v),
            None => store.load(&c.key).await,
        };
        let mut vary_miss = variants.is_some();
        let mut stale: Option<(Arc<Stored>, HeaderMap)> = None;
        for s in variants.iter().flat_map(|v| v.iter()) {
            match s.policy.before_request(&c.req, now) {
                BeforeRequest::Fresh(p) => {
                    let ttl = s.policy.time_to_live(now).as_secs();
                    c.status = if c.collapsed {
                        format!("hit; ttl={ttl}; collapsed")
                    } else {
                        format!("hit; ttl={ttl}")
                    };
                    // The head as the origin sent it, with the policy's Age
                    // (the policy's own copy may carry what it was told by
                    // CDN-Cache-Control or cache_ttl).
                    let mut h = s.headers.clone();
                    if let Some(age) = p.headers.get(header::AGE) {
                        h.insert(header::AGE, age.clone());
                    }
                    let answer = cached(s, h, &c.req, c.head);
                    ctx.cache = Some(Box::new(c));
                    ctx.gw.metrics.cache_event("hit");
                    return Look::Answer(answer);
                }
                BeforeRequest::Stale {
                    request,
                    matches: true,
                } => {
                    vary_miss = false;
                    stale = Some((s.clone(), request.headers));
                    break;
                }
                BeforeRequest::Stale { .. } => {}
            }
        }
        if let Some((s, headers)) = stale {
            let late = s.staleness(now);
            // RFC 5861: within stale-while-revalidate, serve it and refresh
            // in the background (unless the client asked for a fresh one).
            // Only a response that is stale by its age: one the policy
            // sends back for another reason (the client's `max-age=0`,
            // `no-cache` on the response) is revalidated first.
            if !late.is_zero() && late <= s.stale_while_revalidate && !no_cache(req.headers()) {
                c.status = format!(
                    "hit; ttl=-{}; detail=stale-while-revalidate",
                    late.as_secs()
                );
                let mut h = s.headers.clone();
                h.insert(header::AGE, HeaderValue::from(s.policy.age(now).as_secs()));
                let answer = cached(&s, h, &c.req, c.head);
                c.revalidate = Some(conditionals(&headers));
                c.stale = Some(s);
                ctx.cache = Some(Box::new(c));
                ctx.gw.metrics.cache_event("stale_revalidate");
                return Look::StaleRefresh(answer);
            }
            c.revalidate = Some(conditionals(&headers));
            c.stale = Some(s);
            c.status = "fwd=stale".into();
            ctx.cache = Some(Box::new(c));
            return Look::Go;
        }
        // A miss: the first request for the key leads, the others wait for
        // its response (bounded), then look again.
        match store.miss(&c.key) {
            Miss::Lead(l) => {
                c.leader = Some(l);
                c.status = if vary_miss {
                    "fwd=vary-miss"
                } else {
                    "fwd=uri-miss"
                }
                .into();
                break;
            }
            Miss::Follow(n) if round == 0 => {
                store
                    .follow(&c.key, &n, ctx.rt.config.cache.lock_timeout)
                    .await;
                c.collapsed = true;
            }
            Miss::Follow(_) => {
                c.status = "fwd=uri-miss; collapsed".into();
                break;
            }
        }
    }
    ctx.cache = Some(Box::new(c));
    Look::Go
}

/// The conditional fields of a revalidation request.
fn conditionals(h: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in [header::IF_NONE_MATCH, header::IF_MODIFIED_SINCE] {
        if let Some(v) = h.get(&name) {
            out.insert(name, v.clone());
        }
    }
    out
}

fn no_cache(h: &HeaderMap) -> bool {
    h.get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("no-cache"))
        || h.get(header::PRAGMA)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"no-cache"))
}

/// The first cookie whose name starts with a bypass prefix.
fn bypass_cookie<'a>(h: &HeaderMap, prefixes: &'a [String]) -> Option<&'a str> {
    if prefixes.is_empty() {
        return None;
    }
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            let name = c.trim().split('=').next().unwrap_or("");
            prefixes
                .iter()
                .find(|p| name.starts_with(p.as_str()))
                .map(String::as_str)
        })
}

/// A stored response as an answer: its status and `headers` (the
/// policy's, with `Age`), its body unless HEAD, `304` when the client's
/// own validator matches.
fn cached(s: &Stored, mut headers: HeaderMap, req: &http::request::Parts, head: bool) -> Answer {
    // The origin's Date, as stored (the policy writes its own, and not as
    // an HTTP-date).
    match s.headers.get(header::DATE) {
        Some(d) => headers.insert(header::DATE, d.clone()),
        None => headers.remove(header::DATE),
    };
    let etag = s.headers.get(header::ETAG);
    let not_modified = match (req.headers.get(header::IF_NONE_MATCH), etag) {
        (Some(inm), Some(e)) => inm.to_str().is_ok_and(|v| {
            let e = e.to_str().unwrap_or("").trim_start_matches("W/");
            v.split(',')
                .any(|t| t.trim() == "*" || t.trim().trim_start_matches("W/") == e)
        }),
        _ => false,
    };
    if not_modified && s.status == StatusCode::OK {
        headers.remove(header::CONTENT_LENGTH);
        return Answer::Cached(Box::new(Cached {
            status: StatusCode::NOT_MODIFIED,
            headers,
            body: None,
        }));
    }
    // One byte range of a stored whole response (media seeking), as the
    // files baton serves itself: If-Range with the stored validator.
    let len = s.body.len() as u64;
    let if_range_ok = req.headers.get(header::IF_RANGE).is_none_or(|v| {
        Some(v) == s.headers.get(header::ETAG) || Some(v) == s.headers.get(header::LAST_MODIFIED)
    });
    let range = req
        .headers
        .get(header::RANGE)
        .filter(|_| s.status == StatusCode::OK && if_range_ok)
        .and_then(|v| v.to_str().ok())
        .map(|v| crate::upstream::files::byte_range(v, len));
    match range {
        Some(Ok(Some((a, b)))) => {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {a}-{b}/{len}")) {
                headers.insert(header::CONTENT_RANGE, v);
            }
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(b - a + 1));
            return Answer::Cached(Box::new(Cached {
                status: StatusCode::PARTIAL_CONTENT,
                headers,
                body: (!head).then(|| s.body.slice(a as usize..=b as usize)),
            }));
        }
        Some(Err(())) => {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                headers.insert(header::CONTENT_RANGE, v);
            }
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
            return Answer::Cached(Box::new(Cached {
                status: StatusCode::RANGE_NOT_SATISFIABLE,
                headers,
                body: None,
            }));
        }
        _ => {}
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    Answer::Cached(Box::new(Cached {
        status: s.status,
        headers,
        body: (!head).then(|| s.body.clone()),
    }))
}

/// What the cache does with the upstream's answer.
pub(super) fn after(ctx: &mut Ctx, answer: Answer) -> Answer {
    let Some(c) = ctx.cache.as_mut() else {
        return answer;
    };
    let store = ctx.gw.cache.clone();
    let now = SystemTime::now();
    match answer {
        Answer::Proxied(parts, body) => {
            if c.pass {
                if c.invalidate && (parts.status.is_success() || parts.status.is_redirection()) {
                    store.remove(&c.key);
                    // And the same site's Location and Content-Location
                    // (RFC 9111 §4.4).
                    for name in [header::LOCATION, header::CONTENT_LOCATION] {
                        if let Some(u) = parts.headers.get(&name).and_then(|v| v.to_str().ok()) {
                            store.remove(&same_site(&c.key, u));
                        }
                    }
                }
                return Answer::Proxied(parts, body);
            }
            // A revalidation answered 304: what is stored is fresh again.
            if parts.status == StatusCode::NOT_MODIFIED
                && let Some(s) = c.stale.take()
            {
                if let AfterResponse::NotModified(policy, p) =
                    s.policy.after_response(&c.req, &parts, now)
                {
                    let fresh = Arc::new(Stored::new(
                        policy,
                        s.status,
                        strip_age(p.headers.clone()),
                        s.body.clone(),
                        now,
                    ));
                    store.put(&c.key, &c.req, fresh.clone());
                    c.status = "fwd=stale; fwd-status=304; stored".into();
                    ctx.gw.metrics.cache_event("revalidated");
                    return cached(&fresh, p.headers, &c.req, c.head);
                }
                c.stale = Some(s);
            }
            // The origin answered with a server error: the stored response
            // instead, within the stale windows.
            if matches!(parts.status.as_u16(), 500 | 502 | 503 | 504)
                && let Some(a) = serve_stale(c, &format!("{}", parts.status.as_u16()), now)
            {
                ctx.gw.metrics.cache_event("stale_error");
                return a;
            }
            // What the policy reads: the origin's CDN-Cache-Control (RFC
            // 9213, for caches like this one) in place of Cache-Control,
            // else the route's cache_ttl for a page that says nothing.
            let policy = match targeted(&parts).or_else(|| with_ttl(&parts, c.ttl)) {
                Some(p) => CachePolicy::new(&c.req, &p),
                None => CachePolicy::new(&c.req, &parts),
            };
            let fits = parts
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .is_none_or(|n| n <= ctx.rt.config.cache.max_object);
            let status = parts.status.as_u16();
            // A response that sets a cookie is one visitor's: never
            // stored (RFC 9111 allows it; nginx and Varnish refuse too),
            // so no other visitor can be served it, stale or fresh.
            let cookie = parts.headers.contains_key(header::SET_COOKIE);
            if policy.is_storable() && fits && !cookie && !c.head {
                c.status = format!("{}; fwd-status={status}; stored", c.status);
                ctx.gw.metrics.cache_event("miss");
                c.store = Some(Pending {
                    key: c.key.clone(),
                    req: c.req.clone(),
                    policy,
                    status: parts.status,
                    headers: parts.headers.clone(),
                    max: ctx.rt.config.cache.max_object,
                    store,
                    leader: c.leader.take(),
                });
            } else {
                c.status = format!("{}; fwd-status={status}", c.status);
                ctx.gw.metrics.cache_event("uncacheable");
                // Nothing to wait for: requests for the same URL go on now.
                c.leader = None;
            }
            Answer::Proxied(parts, body)
        }
        Answer::Failure {
            failure,
            next_hop,
            retry_after,
        } => {
            let cause = failure.cause;
            // Only the upstream's failures: a client's fault (a bad request,
            // a body too large) gets its own answer.
            if cause.side() != crate::core::cause::Side::Client
                && let Some(a) = serve_stale(c, cause.id(), now)
            {
                ctx.gw.metrics.cache_event("stale_error");
                c.served_stale = Some(cause);
                return a;
            }
            Answer::Failure {
                failure,
                next_hop,
                retry_after,
            }
        }
        other => other,
    }
}

/// The stale response kept for this request, if it is within the stale
/// windows (the response's `stale-if-error`, or the route's policy).
fn serve_stale(c: &mut CacheCtx, why: &str, now: SystemTime) -> Option<Answer> {
    let s = c.stale.as_ref()?;
    let late = s.staleness(now);
    if late > s.stale_if_error.max(c.stale_if_error) {
        return None;
    }
    let fwd = c
        .status
        .split(';')
        .next()
        .unwrap_or("fwd=stale")
        .to_string();
    c.status = format!(
        "{fwd}; fwd-status={}; ttl=-{}; detail=\"stale-if-error {why}\"",
        if why.bytes().all(|b| b.is_ascii_digit()) {
            why
        } else {
            "502"
        },
        late.as_secs()
    );
    let mut h = s.headers.clone();
    h.insert(header::AGE, HeaderValue::from(s.policy.age(now).as_secs()));
    Some(cached(s, h, &c.req, c.head))
}

/// The key a `Location` names on the same site as `key` (an absolute URL
/// is kept, so another site's is never found).
fn same_site(key: &str, target: &str) -> String {
    if target.contains("://") {
        return target.to_string();
    }
    let origin_end = key
        .find("://")
        .and_then(|i| key[i + 3..].find('/').map(|j| i + 3 + j))
        .unwrap_or(key.len());
    if target.starts_with('/') {
        format!("{}{target}", &key[..origin_end])
    } else {
        // Relative to the target's directory.
        let dir_end = key.rfind('/').map_or(key.len(), |i| i + 1);
        format!("{}{target}", &key[..dir_end.max(origin_end)])
    }
}

/// RFC 9213: a response with a valid `CDN-Cache-Control` is read by a
/// gateway cache with that field in place of `Cache-Control` and
/// `Expires`; the client still gets both as sent.
fn targeted(parts: &http::response::Parts) -> Option<http::response::Parts> {
    const CDN: http::HeaderName = http::HeaderName::from_static("cdn-cache-control");
    let v = parts.headers.get(&CDN)?.to_str().ok()?.trim();
    // A structured-field dictionary: `max-age=60, stale-if-error=30`.
    let valid = !v.is_empty()
        && v.split(',').all(|d| {
            let d = d.trim();
            let name = d.split('=').next().unwrap_or("");
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && d.split_once('=').is_none_or(|(k, n)| {
                    // Lifetimes are integers; other values may be strings.
                    n.parse::<u64>().is_ok()
                        || (!k.contains("age")
                            && !k.starts_with("stale")
                            && (n.starts_with('"') || n == "?1"))
                })
        });
    if !valid {
        return None;
    }
    let cc = HeaderValue::from_str(v).ok()?;
    Some(with_headers(parts, |h| {
        h.remove(header::EXPIRES);
        h.insert(header::CACHE_CONTROL, cc);
    }))
}

/// A copy of a response head with its fields changed (what the policy
/// reads; the stored head stays as sent).
fn with_headers(
    parts: &http::response::Parts,
    change: impl FnOnce(&mut HeaderMap),
) -> http::response::Parts {
    let mut r = http::Response::new(());
    *r.status_mut() = parts.status;
    *r.version_mut() = parts.version;
    *r.headers_mut() = parts.headers.clone();
    change(r.headers_mut());
    r.into_parts().0
}

/// The route's `cache_ttl` for a response that says nothing of its
/// freshness: the same head with `s-maxage` added (what the policy reads,
/// and what a stored answer carries).
fn with_ttl(parts: &http::response::Parts, ttl: Duration) -> Option<http::response::Parts> {
    if ttl.is_zero() || !matches!(parts.status.as_u16(), 200 | 301 | 404) {
        return None;
    }
    let says = parts.headers.contains_key(header::EXPIRES)
        || parts
            .headers
            .get_all(header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                let v = v.to_ascii_lowercase();
                ["max-age", "s-maxage", "no-store", "no-cache", "private"]
                    .iter()
                    .any(|d| v.contains(d))
            });
    if says {
        return None;
    }
    let cc = HeaderValue::from_str(&format!("s-maxage={}", ttl.as_secs())).ok()?;
    Some(with_headers(parts, |h| {
        h.append(header::CACHE_CONTROL, cc);
    }))
}

/// `Age` is computed when served, never stored.
fn strip_age(mut h: HeaderMap) -> HeaderMap {
    h.remove(header::AGE);
    h
}

/// A response on its way to the client that is stored when its body ends
/// whole (and within `max_object`).
pub(super) struct Pending {
    key: String,
    req: http::request::Parts,
    policy: CachePolicy,
    status: StatusCode,
    headers: HeaderMap,
    max: u64,
    store: Arc<Store>,
    /// Released (waiters go on) when the response is stored or dropped.
    leader: Option<Leader>,
}

impl Pending {
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The whole body arrived: store it.
    pub fn finish(self, body: bytes::Bytes) {
        let now = SystemTime::now();
        let s = Arc::new(Stored::new(
            self.policy,
            self.status,
            strip_age(self.headers),
            body,
            now,
        ));
        self.store.put(&self.key, &self.req, s);
        drop(self.leader);
    }
}

/// `Cache-Status` for the response.
pub(super) fn status_header(c: &CacheCtx) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!("baton; {}", c.status)).ok()
}
