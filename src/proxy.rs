//! The request path: route, forward, retry safely, and answer for failures.
//!
//! Owns: routing, header rewriting (hop-by-hop removal, `Via`,
//! `X-Forwarded-*`, request IDs), the attempt loop with its replay rules
//! (the one place that decides whether to retry), `Proxy-Status`, and the
//! response body wrapper that logs and returns connections to the pool.
//! Must not: inspect raw errors (`upstream::classify_*` does), or know
//! RFC 9209 tokens (`cause` does).

pub mod pages;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::config::{Balance, HashKey, UpstreamConfig};
use crate::core::cause::{Cause, Retry};
use crate::core::failure::Failure;
use crate::gateway::{Gateway, RouteMetrics, Runtime};
use crate::observe::log::{AccessRecord, FailureRecord};
use crate::observe::metrics::{RequestLabels, RetryLabels, RouteLabels};
use crate::upstream::fastcgi::{self, Target};
use crate::upstream::h1;
use crate::upstream::health;
use crate::upstream::supervise::Supervisor;
use crate::upstream::{
    self, AttemptView, Conn, ConnInfo, Link, Server, TimedBody, UpBody, UpIncoming, Upstream,
};
use pages::{Format, PageInfo};

/// An incoming `X-Request-Id` is kept when it is 1-128 safe characters.
fn valid_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.:+/=".contains(c))
}

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static PROXY_STATUS: HeaderName = HeaderName::from_static("proxy-status");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// The fields that are hop-by-hop by definition (RFC 9110 §7.6.1).
fn hop_by_hop_fields() -> [&'static HeaderName; 7] {
    [
        &header::CONNECTION,
        &header::TE,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
    ]
}

/// Removes hop-by-hop fields (RFC 9110 §7.6.1): those named in
/// `Connection`, and the well-known ones. `Upgrade` survives on an upgrade.
/// What the hop-by-hop fields said about the connection they came on.
#[derive(Default)]
struct Hop {
    /// `Connection: close`.
    close: bool,
    /// `Keep-Alive: timeout=N`, in ms.
    keepalive_ms: Option<u64>,
}

fn strip_hop_by_hop(h: &mut HeaderMap, upgrade: bool) -> Hop {
    // One pass over the (few) names, noting which hop-by-hop fields are
    // present: removing by name costs a hash each, and most messages carry
    // at most `Connection: keep-alive`.
    let fields = hop_by_hop_fields();
    let mut hop = Hop::default();
    let mut present = 0u8;
    for k in h.keys() {
        if let Some(i) = fields.iter().position(|f| *f == k) {
            present |= 1 << i;
        }
    }
    if present & 1 != 0
        && let header::Entry::Occupied(e) = h.entry(header::CONNECTION)
    {
        // One lookup reads and removes every `Connection` line.
        let mut named: Vec<HeaderName> = Vec::new();
        for v in e.iter() {
            for t in v.as_bytes().split(|b| *b == b',') {
                let t = t.trim_ascii();
                hop.close |= t.eq_ignore_ascii_case(b"close");
                // The usual tokens name no other field.
                if t.is_empty()
                    || [&b"keep-alive"[..], b"close", b"upgrade", b"te"]
                        .iter()
                        .any(|k| t.eq_ignore_ascii_case(k))
                {
                    continue;
                }
                if let Ok(n) = HeaderName::from_bytes(t) {
                    named.push(n);
                }
            }
        }
        e.remove_entry_mult();
        for n in named {
            h.remove(n);
        }
    }
    for (i, f) in fields.iter().enumerate().skip(1) {
        let keep = upgrade && **f == header::UPGRADE;
        if present & (1 << i) != 0 && !keep {
            let removed = h.remove(*f);
            if **f == KEEP_ALIVE {
                hop.keepalive_ms = removed.and_then(|v| upstream::keepalive_hint(v.as_bytes()));
            }
        }
    }
    if upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    hop
}

fn is_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE)
        && h.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
        })
}

fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

fn via_value(v: Version) -> HeaderValue {
    // Checked once, at compile time (`from_static` at run time scans the
    // bytes on every call).
    const H2: HeaderValue = HeaderValue::from_static("2 baton");
    const H10: HeaderValue = HeaderValue::from_static("1.0 baton");
    const H11: HeaderValue = HeaderValue::from_static("1.1 baton");
    match v {
        Version::HTTP_2 => H2,
        Version::HTTP_10 => H10,
        _ => H11,
    }
}

fn append_via(h: &mut HeaderMap, v: Version) {
    match h.entry(header::VIA) {
        header::Entry::Occupied(mut e) => {
            let old = e.get().as_bytes();
            let ours = via_value(v);
            let mut joined = Vec::with_capacity(old.len() + 2 + ours.len());
            joined.extend_from_slice(old);
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(ours.as_bytes());
            if let Ok(hv) = HeaderValue::from_maybe_shared(Bytes::from(joined)) {
                e.insert(hv);
            }
        }
        header::Entry::Vacant(e) => {
            e.insert(via_value(v));
        }
    }
}

/// `X-Forwarded-For` with the client's address appended. IPv4 is written by
/// hand: `Ipv4Addr`'s `Display` went through the formatter and cost more
/// than the rest of the request rewrite (callgrind, docs/benchmarks.md).
fn forwarded_for(prev: Option<&HeaderValue>, ip: std::net::IpAddr) -> HeaderValue {
    let mut buf: Vec<u8> = Vec::with_capacity(prev.map_or(0, |p| p.len() + 2) + 39);
    if let Some(p) = prev {
        buf.extend_from_slice(p.as_bytes());
        buf.extend_from_slice(b", ");
    }
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut num = itoa::Buffer::new();
            for (i, o) in v4.octets().iter().enumerate() {
                if i > 0 {
                    buf.push(b'.');
                }
                buf.extend_from_slice(num.format(*o).as_bytes());
            }
        }
        std::net::IpAddr::V6(v6) => buf.extend_from_slice(v6.to_string().as_bytes()),
    }
    HeaderValue::from_maybe_shared(Bytes::from(buf))
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// A `Proxy-Status` structured-field string: printable ASCII, escaped.
fn sf_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out.push('"');
}

/// `Proxy-Status: baton; error=<type>; next-hop="..."; details="..."`.
pub fn proxy_status(
    cause: Cause,
    next_hop: Option<&str>,
    details: Option<&str>,
    received: Option<u16>,
) -> HeaderValue {
    let mut s = String::with_capacity(96);
    s.push_str("baton; error=");
    s.push_str(cause.proxy_status());
    if let Some(h) = next_hop {
        s.push_str("; next-hop=");
        sf_string(&mut s, h);
    }
    if let Some(r) = received {
        s.push_str("; received-status=");
        s.push_str(&r.to_string());
    }
    if let Some(d) = details {
        s.push_str("; details=");
        sf_string(&mut s, d);
    }
    HeaderValue::from_str(&s)
        .unwrap_or_else(|_| HeaderValue::from_static("baton; error=proxy_internal_error"))
}

/// The body baton sends to its client.
pub enum RespBody {
    Local(Option<Bytes>),
    Proxied(Box<ProxiedBody>),
    File(Box<crate::upstream::files::FileBody>),
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = upstream::BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            RespBody::Local(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            RespBody::Proxied(p) => p.poll_frame(cx),
            RespBody::File(f) => f.poll_chunk(cx).map(|c| {
                c.map(|r| {
                    r.map(Frame::data).map_err(|e| {
                        upstream::BodyError::Failed(Failure::with(
                            Cause::Internal,
                            format!("reading a static file: {}", e.kind()),
                        ))
                    })
                })
            }),
        }
    }
    fn is_end_stream(&self) -> bool {
        match self {
            RespBody::Local(b) => b.is_none(),
            RespBody::Proxied(p) => p.body.is_end_stream(),
            RespBody::File(f) => f.is_end(),
        }
    }
    fn size_hint(&self) -> SizeHint {
        match self {
            RespBody::Local(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            RespBody::Proxied(p) => p.body.size_hint(),
            RespBody::File(_) => SizeHint::default(),
        }
    }
}

/// What the logs need about a request, carried until its response ends.
struct ReqLog {
    gw: Arc<Gateway>,
    id: HeaderValue,
    method: Method,
    uri: Uri,
    /// The `Host` field as received (HTTP/2: the `:authority` in `uri`).
    host_field: Option<HeaderValue>,
    client: SocketAddr,
    version: Version,
    start: Instant,
    route: Option<Arc<str>>,
    /// The route's metric handles, looked up once per config (not per request).
    route_metrics: Option<Arc<RouteMetrics>>,
    upstream: Option<Arc<str>>,
    server: Option<Arc<str>>,
    attempts: u32,
    referer: Option<HeaderValue>,
    user_agent: Option<HeaderValue>,
}

impl ReqLog {
    fn id(&self) -> &str {
        self.id.to_str().unwrap_or("-")
    }
    /// The host the request is for, without the port.
    fn host(&self) -> &str {
        let raw = match &self.host_field {
            Some(h) => h.to_str().unwrap_or(""),
            None => self.uri.authority().map_or("", |a| a.as_str()),
        };
        strip_port(raw)
    }
    fn path(&self) -> &str {
        self.uri.path_and_query().map_or("/", |p| p.as_str())
    }

    fn failure(
        &self,
        f: &Failure,
        status: Option<u16>,
        a: Option<&AttemptLog>,
        retry: Option<&'static str>,
    ) {
        let gw = &self.gw;
        if let Some(u) = &self.upstream {
            gw.metrics.failure(u, f.cause);
        }
        gw.logs.failure(&FailureRecord {
            time: crate::core::clock::now(),
            level: "error",
            msg: "upstream failure",
            request_id: self.id(),
            method: self.method.as_str(),
            host: self.host(),
            path: self.path(),
            route: self.route.as_deref(),
            upstream: self.upstream.as_deref(),
            server: a.map(|a| &*a.peer).or(self.server.as_deref()),
            phase: f.cause.phase().as_str(),
            cause: f.cause.id(),
            proxy_status: f.cause.proxy_status(),
            status,
            details: f.details.as_deref(),
            errno: f.errno,
            received_status: f.received_status,
            reused: a.is_some_and(|a| a.idle_ms.is_some()),
            idle_ms: a.and_then(|a| a.idle_ms),
            attempt: self.attempts,
            retry,
            bytes_sent: a.map_or(0, |a| a.sent),
            bytes_received: a.map_or(0, |a| a.received),
            duration_ms: ms(self.start.elapsed()),
        });
    }

    fn finish(&self, status: u16, bytes: u64, cause: Option<Cause>) {
        let gw = &self.gw;
        let elapsed = self.start.elapsed();
        if let Some(m) = &self.route_metrics {
            m.track.request(elapsed);
            if let Some(c) = cause
                && crate::observe::incidents::counts(c)
            {
                m.track.failure(
                    c,
                    self.id(),
                    self.route.as_deref().unwrap_or(""),
                    self.path(),
                    status,
                );
            }
        }
        match &self.route_metrics {
            // The common case without a label lookup (a RwLock and a hash).
            Some(m) if status == 200 => {
                m.ok.inc();
                m.duration.observe(elapsed.as_secs_f64());
            }
            _ => {
                let route: Arc<str> = self.route.clone().unwrap_or_else(|| Arc::from("(none)"));
                gw.metrics
                    .requests
                    .get_or_create(&RequestLabels {
                        route: route.clone(),
                        status,
                    })
                    .inc();
                gw.metrics
                    .duration
                    .get_or_create(&RouteLabels { route })
                    .observe(elapsed.as_secs_f64());
            }
        }
        if !gw.logs.access.enabled() {
            return;
        }
        gw.logs.access(&AccessRecord {
            time: std::time::SystemTime::now(),
            request_id: self.id(),
            client: self.client.ip(),
            method: self.method.as_str(),
            host: self.host(),
            path: self.path(),
            protocol: match self.version {
                Version::HTTP_2 => "HTTP/2.0",
                Version::HTTP_10 => "HTTP/1.0",
                _ => "HTTP/1.1",
            },
            status,
            bytes,
            duration_ms: ms(elapsed),
            route: self.route.as_deref(),
            upstream: self.upstream.as_deref(),
            server: self.server.as_deref(),
            attempts: self.attempts,
            cause: cause.map(Cause::id),
            referer: self
                .referer
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .unwrap_or(""),
            user_agent: self
                .user_agent
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .unwrap_or(""),
        });
    }
}

/// Per-attempt facts for the failure log.
struct AttemptLog {
    peer: Arc<str>,
    idle_ms: Option<u64>,
    sent: u64,
    received: u64,
}

/// Where a connection goes back once its response was read to the end.
struct PoolReturn {
    server: Arc<Server>,
    cfg: Arc<UpstreamConfig>,
    /// `None` for FastCGI: its wire is in the body until the end.
    tx: Option<Link>,
    info: Arc<ConnInfo>,
}

/// An upstream response body on its way to the client.
pub struct ProxiedBody {
    body: TimedBody,
    log: ReqLog,
    status: u16,
    bytes: u64,
    /// Where to return the connection once the body has been read to its end.
    pool: Option<PoolReturn>,
    read_before: u64,
    sent: u64,
    failed: Option<Cause>,
    /// Released when the response ends.
    _held: Held,
}

impl ProxiedBody {
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, upstream::BodyError>>> {
        let r = self.body.poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    self.bytes += d.len() as u64;
                }
            }
            Poll::Ready(Some(Err(e))) => {
                // The head is already with the client: the only honest
                // signal left is to abort its connection, which hyper does
                // when a body yields an error. Log it as a failure.
                let f = e.failure();
                let a = self.pool.take().map(|PoolReturn { info, .. }| {
                    info.retired.store(true, Ordering::Relaxed);
                    AttemptLog {
                        peer: self.log.server.clone().unwrap_or_else(|| Arc::from("-")),
                        idle_ms: None,
                        sent: self.sent,
                        received: info
                            .stats
                            .read
                            .load(Ordering::Relaxed)
                            .saturating_sub(self.read_before),
                    }
                });
                self.log.failure(&f, Some(self.status), a.as_ref(), None);
                self.failed = Some(f.cause);
            }
            _ => {}
        }
        r
    }
}

impl Drop for ProxiedBody {
    fn drop(&mut self) {
        if let Some(PoolReturn {
            server,
            cfg,
            tx,
            info,
        }) = self.pool.take()
            && self.body.is_end_stream()
            && let Some(link) = tx.or_else(|| self.body.take_wire())
        {
            server.checkin(&cfg, link, info);
        }
        self.log.finish(self.status, self.bytes, self.failed);
    }
}

/// A request hyper refused before baton saw it (not HTTP; a head over
/// `server.max_request_header_bytes`): hyper answered 400 or 431 and closed
/// the connection; baton counts it and writes it to the access log with
/// its cause and the client's address, as nginx logs its 400s.
pub fn client_error(gw: &Gateway, client: SocketAddr, e: &hyper::Error) {
    let cause = if e.is_parse_too_large() {
        Cause::RequestHeaderTooLarge
    } else if e.is_parse() {
        Cause::RequestMalformed
    } else {
        return; // the client went away, or a timeout while idle
    };
    gw.metrics
        .requests
        .get_or_create(&RequestLabels {
            route: Arc::from("(none)"),
            status: cause.status(),
        })
        .inc();
    gw.logs.access(&AccessRecord {
        time: std::time::SystemTime::now(),
        request_id: "",
        client: client.ip(),
        method: "",
        host: "",
        path: "",
        protocol: "",
        status: cause.status(),
        bytes: 0,
        duration_ms: 0.0,
        route: None,
        upstream: None,
        server: None,
        attempts: 0,
        cause: Some(cause.id()),
        referer: "",
        user_agent: "",
    });
}

/// Milliseconds to the microsecond, as the logs show them (0.092, not
/// 0.09222699999999999).
fn ms(d: std::time::Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

/// The host part of a `Host` value or an authority: no port, no brackets.
fn strip_port(raw: &str) -> &str {
    if let Some(rest) = raw.strip_prefix('[') {
        rest.split_once(']').map_or(rest, |(h, _)| h)
    } else {
        raw.rsplit_once(':').map_or(raw, |(h, _)| h)
    }
}

/// Serves one request.
pub async fn handle(
    gw: Arc<Gateway>,
    mut req: Request<Incoming>,
    client: SocketAddr,
    local: SocketAddr,
) -> Response<RespBody> {
    let start = Instant::now();
    let rt = gw.runtime.load_full();
    let id = match req.headers().get(&X_REQUEST_ID) {
        Some(v) if valid_request_id(v) => v.clone(),
        _ => gw.next_request_id(),
    };
    let combined =
        gw.logs.access.enabled() && gw.logs.access_format == crate::config::AccessFormat::Combined;
    let mut log = ReqLog {
        gw: gw.clone(),
        id,
        method: req.method().clone(),
        uri: req.uri().clone(),
        host_field: req.headers().get(header::HOST).cloned(),
        client,
        version: req.version(),
        start,
        route: None,
        route_metrics: None,
        upstream: None,
        server: None,
        attempts: 0,
        referer: if combined {
            req.headers().get(header::REFERER).cloned()
        } else {
            None
        },
        user_agent: if combined {
            req.headers().get(header::USER_AGENT).cloned()
        } else {
            None
        },
    };
    // Negotiated only if baton has to answer itself (the failure path).
    let accept = req.headers().get(header::ACCEPT).cloned();

    if rt.config.status_page.as_deref() == Some(req.uri().path()) {
        return status_page(&gw, &rt, log, accept.as_ref());
    }
    let Some(ri) = rt.route(log.host(), req.uri().path()) else {
        let f = Failure::new(Cause::NoRoute);
        return local_error(&rt, log, &f, None, accept.as_ref(), None);
    };
    let route = &rt.config.routes[ri];
    let up = rt.upstreams[route.upstream].clone();
    let cfg = up.cfg.clone();
    log.route = Some(route.name.clone());
    log.route_metrics = Some(rt.route_metrics[ri].clone());
    log.upstream = Some(cfg.name.clone());
    if let Some(m) = route.maintenance.as_ref().or(cfg.maintenance.as_ref()) {
        let f = Failure::with(Cause::Maintenance, m.message.clone());
        return local_error(
            &rt,
            log,
            &f,
            None,
            accept.as_ref(),
            Some(m.retry_after.as_secs().max(1)),
        );
    }
    let mut rate_headers = None;
    if let Some(limiter) = &rt.limiters[ri] {
        let key = match &limiter.config().key {
            crate::config::RateKey::ClientIp => client_key(client),
            crate::config::RateKey::Header(h) => crate::upstream::balance::fnv1a(
                req.headers().get(h).map_or(&b""[..], |v| v.as_bytes()),
            ),
        };
        let v = limiter.check(key, crate::core::clock::now_ms() * 1000);
        let hv = (
            HeaderValue::from_str(&limiter.policy()).ok(),
            HeaderValue::from_str(&crate::gateway::limit::Limiter::header(&v)).ok(),
        );
        if !v.allowed {
            let f = Failure::with(
                Cause::RateLimited,
                format!(
                    "over {}/{}s for this client",
                    limiter.config().rate,
                    limiter.config().per.as_secs()
                ),
            );
            let mut r = local_error(&rt, log, &f, None, accept.as_ref(), Some(v.reset_secs));
            add_rate_headers(r.headers_mut(), hv);
            return r;
        }
        rate_headers = Some(hv);
    }
    if let Some(max) = rt.config.limits.max_body_bytes
        && let Some(n) = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
        && n > max
    {
        let f = Failure::with(Cause::BodyTooLarge, format!("{n} bytes, limit {max}"));
        return local_error(&rt, log, &f, None, accept.as_ref(), None);
    }

    // A FastCGI upstream: map the path under the document root first.
    let mut script = None;
    if let Some(fc) = &cfg.fastcgi {
        let target = match &up.docroot {
            Some(root) => {
                fastcgi::resolve(fc, root, req.uri().path(), req.uri().query().unwrap_or(""))
            }
            None => Target::NotFound,
        };
        match target {
            Target::Script(s) => script = Some(s),
            Target::Static(f, name) => {
                return serve_file(log, f, &name, &req, fc);
            }
            Target::NotFound => {
                let f = Failure::with(
                    Cause::FileNotFound,
                    format!("nothing under {} for this path", fc.root.display()),
                );
                return local_error(&rt, log, &f, None, accept.as_ref(), None);
            }
            Target::Forbidden => {
                let f = Failure::new(Cause::Forbidden);
                return local_error(&rt, log, &f, None, accept.as_ref(), None);
            }
        }
    }

    let upgrade = is_upgrade(req.headers()) && script.is_none();
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();

    // The upstream request head, built once.
    let mut headers = parts.headers;
    let _ = strip_hop_by_hop(&mut headers, upgrade);
    // `Host` as received (kept), or HTTP/2's :authority as `Host`.
    let host = log.host_field.clone().or_else(|| {
        let v = HeaderValue::from_str(parts.uri.authority()?.as_str()).ok()?;
        headers.insert(header::HOST, v.clone());
        Some(v)
    });
    let xff = forwarded_for(headers.get(&X_FORWARDED_FOR), client.ip());
    headers.insert(&X_FORWARDED_FOR, xff);
    const HTTP: HeaderValue = HeaderValue::from_static("http");
    headers.insert(&X_FORWARDED_PROTO, HTTP);
    if let Some(h) = host {
        headers.insert(&X_FORWARDED_HOST, h);
    }
    append_via(&mut headers, parts.version);
    headers.insert(&X_REQUEST_ID, log.id.clone());
    // The origin-form target, reusing the parsed path (no re-parse).
    let path = match parts.uri.path_and_query() {
        Some(pq) => {
            let mut up = http::uri::Parts::default();
            up.path_and_query = Some(pq.clone());
            Uri::from_parts(up).unwrap_or_else(|_| Uri::from_static("/"))
        }
        None => Uri::from_static("/"),
    };
    let method = parts.method;
    // Looked up only when a replay is being decided (failures).
    let may_replay_unsafe = || headers.contains_key(&IDEMPOTENCY_KEY);

    // The body: buffered when small enough to replay, else streamed.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut stream: Option<Incoming> = None;
    // CGI needs CONTENT_LENGTH: a FastCGI request body without one is
    // buffered (up to max_body_bytes, else 64 MiB), as nginx does.
    let must_buffer = script.is_some() && declared.is_none() && !body.is_end_stream();
    let replay: Option<Option<Bytes>> = if body.is_end_stream() || declared == Some(0) {
        Some(None)
    } else if must_buffer || declared.is_some_and(|n| n <= cfg.replay_buffer_bytes as u64) {
        let limit = match rt.config.limits.max_body_bytes {
            Some(m) if must_buffer => m as usize,
            None if must_buffer => FASTCGI_BUFFER_MAX,
            _ => usize::MAX,
        };
        let limited = http_body_util::Limited::new(body, limit);
        match tokio::time::timeout(cfg.read_timeout, limited.collect()).await {
            Ok(Ok(b)) => Some(Some(b.to_bytes())),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                let f = Failure::with(
                    Cause::BodyTooLarge,
                    format!("a body without Content-Length over {limit} bytes"),
                );
                return local_error(&rt, log, &f, None, accept.as_ref(), None);
            }
            // The client went away or stalled while sending its body.
            _ => {
                let l = log;
                l.finish(400, 0, None);
                return plain(StatusCode::BAD_REQUEST, "incomplete request body\n", &l.id);
            }
        }
    } else {
        stream = Some(body);
        None
    };
    let replayable = replay.is_some();
    // A body without a Content-Length is held to max_body_bytes as it
    // streams (the flag is only allocated when there is a limit).
    let body_limit = rt
        .config
        .limits
        .max_body_bytes
        .map(|m| (m, Arc::new(std::sync::atomic::AtomicBool::new(false))));
    let make_body = |stream: &mut Option<Incoming>| -> UpBody {
        match &replay {
            Some(None) => UpBody::Empty,
            Some(Some(b)) => UpBody::Full(Some(b.clone())),
            None => stream
                .take()
                .map_or(UpBody::Empty, |b| UpBody::Stream(b, body_limit.clone())),
        }
    };
    let build = |body: UpBody| -> Request<UpBody> {
        let mut r = Request::new(body);
        *r.method_mut() = method.clone();
        *r.uri_mut() = path.clone();
        *r.headers_mut() = headers.clone();
        r
    };

    // FastCGI: BEGIN_REQUEST and the CGI parameters, built once.
    let fcgi_head = match (&script, &cfg.fastcgi) {
        (Some(sc), Some(fc)) => {
            let content_length = declared.or(match &replay {
                Some(Some(b)) => Some(b.len() as u64),
                _ => None,
            });
            let request_uri = log.path().to_string();
            Some(fastcgi::request_head(
                fc,
                sc,
                &fastcgi::RequestInfo {
                    method: method.as_str(),
                    request_uri: &request_uri,
                    headers: &headers,
                    content_length,
                    protocol: match log.version {
                        Version::HTTP_2 => "HTTP/2.0",
                        Version::HTTP_10 => "HTTP/1.0",
                        _ => "HTTP/1.1",
                    },
                    client,
                    local,
                    server_name: log.host(),
                    https: false,
                },
            ))
        }
        _ => None,
    };
    let supervisor = cfg.process.as_ref().and_then(|_| gw.supervisor(&cfg.name));

    let key = hash_key(&cfg.balance, &headers, client);
    let policy = &route.retry;
    let retries = policy.retries.unwrap_or(cfg.retries) as usize;
    let deadline = policy.deadline.map(|d| start + d);
    // One clock read serves the first attempt (budget, choice, success).
    let mut now = crate::core::clock::now_ms();
    up.budget.request(now);
    // Whether another server may take this request: retries and servers
    // are left, the deadline has not passed, and, for a retry that may
    // repeat work at the upstream (`budgeted`: it may have seen the
    // request), the upstream's retry budget has room. Retries after a failed
    // connect are not budgeted: nothing reached the app, so they add no
    // work to it, and they are what carries traffic past a server that is
    // down.
    let another_server = |tried: &[usize], budgeted: bool| -> bool {
        if tried.len() > retries
            || !up.has_candidate(tried, crate::core::clock::now_ms())
            || deadline.is_some_and(|d| Instant::now() >= d)
        {
            return false;
        }
        if budgeted
            && !up.budget.try_retry(
                crate::core::clock::now_ms(),
                policy.budget_percent,
                policy.budget_min,
            )
        {
            retry_metric(&gw, &cfg, "budget_exhausted");
            return false;
        }
        true
    };
    let mut tried: Vec<usize> = Vec::with_capacity(2);
    // Set for a keep-alive-race replay: same server, fresh connection.
    let mut again: Option<usize> = None;
    let mut race_retry_used = false;
    let mut restart_replay_used = false;
    // The body of a request that never reached the upstream, to resend.
    let mut pending: Option<UpBody> = None;

    // The upstream's concurrency limit: a slot, or shed with 503.
    let permit = match &up.slots {
        None => None,
        Some(slots) => match slots.acquire(cfg.queue_timeout).await {
            Ok(p) => Some(p),
            Err(why) => {
                let reason = match why {
                    crate::upstream::balance::Shed::QueueFull => "queue_full",
                    crate::upstream::balance::Shed::QueueTimeout => "queue_timeout",
                };
                gw.metrics.shed(&cfg.name, reason);
                let f = Failure::with(
                    Cause::ConcurrencyLimit,
                    format!(
                        "{} requests in flight to {} and {reason}",
                        cfg.max_concurrent.unwrap_or(0),
                        cfg.name
                    ),
                );
                let secs = cfg.queue_timeout.as_secs().max(1);
                log.failure(&f, Some(f.cause.status()), None, None);
                return local_error(&rt, log, &f, None, accept.as_ref(), Some(secs));
            }
        },
    };

    // A supervised backend that is (re)starting: hold the request briefly.
    if let Some(sup) = &supervisor
        && let Err(f) = sup.wait_ready(None).await
    {
        return backend_unavailable(&rt, log, sup, &f, accept.as_ref());
    }

    loop {
        if log.attempts > 0 {
            now = crate::core::clock::now_ms();
        }
        let fresh_only = again.is_some();
        let si = match again.take().or_else(|| up.choose(&tried, key, now)) {
            Some(i) => i,
            None => {
                // Only reachable on the first attempt: a retry is only
                // taken when `choose` found another server.
                gw.metrics.shed(&cfg.name, "no_healthy_server");
                let f = Failure::with(
                    Cause::NoHealthyServer,
                    format!(
                        "none of the {} servers of {} is usable",
                        up.servers.len(),
                        cfg.name
                    ),
                );
                log.failure(&f, Some(f.cause.status()), None, None);
                return local_error(
                    &rt,
                    log,
                    &f,
                    None,
                    accept.as_ref(),
                    Some(up.retry_after(now)),
                );
            }
        };
        if !tried.contains(&si) {
            tried.push(si);
        }
        log.attempts += 1;
        let gen_at_start = supervisor.as_ref().map_or(0, |s| s.generation());
        let server = up.servers[si].clone();
        log.server = Some(server.label.clone());
        let busy = InFlight::new(server.clone());
        let checked_out = if fresh_only {
            None
        } else {
            server.checkout(&cfg, &rt.dialer).await
        };
        // A FastCGI request opening a connection (perhaps waiting out a
        // full accept queue): finished connections are closed meanwhile.
        let waiting =
            (checked_out.is_none() && cfg.fastcgi.is_some()).then(|| Waiting::new(&server));
        let mut conn: Conn = match checked_out {
            Some(c) => c,
            None => match server.connect(&cfg, &rt.dialer).await {
                Ok(c) => c,
                Err((f, peer)) => {
                    let a = AttemptLog {
                        peer: peer.clone(),
                        idle_ms: None,
                        sent: 0,
                        received: 0,
                    };
                    // A supervised backend that just died: wait for its
                    // restart and try it again (nothing reached it).
                    if let Some(sup) = &supervisor
                        && f.cause.retry() == Retry::NothingSent
                        && !restart_replay_used
                        && (replayable || pending.is_some() || stream.is_some())
                        && sup.restarting_since(gen_at_start).await
                    {
                        restart_replay_used = true;
                        if let Err(f) =
                            await_restart(&gw, &cfg, sup, gen_at_start, &log, &f, &a).await
                        {
                            return backend_unavailable(&rt, log, sup, &f, accept.as_ref());
                        }
                        again = Some(si);
                        continue;
                    }
                    passive_failure(&gw, &up, &server, f.cause.counts_against_server());
                    // Nothing reached the upstream: any method may go to
                    // another server, if one is left to try.
                    let next = f.cause.retry() == Retry::NothingSent
                        && (replayable || pending.is_some() || stream.is_some())
                        && another_server(&tried, false);
                    if next {
                        log.failure(&f, None, Some(&a), Some("next_server"));
                        retry_metric(&gw, &cfg, "next_server");
                        pause(policy.backoff, log.attempts, start).await;
                        continue;
                    }
                    log.failure(&f, Some(f.cause.status()), Some(&a), None);
                    log.server = Some(peer.clone());
                    return local_error(&rt, log, &f, Some(&peer), accept.as_ref(), None);
                }
            },
        };
        drop(waiting);
        let reused = conn.reused;
        let info = conn.info.clone();
        let read_before = info.stats.read.load(Ordering::Relaxed);
        let written_before = info.stats.written.load(Ordering::Relaxed);
        let body = pending.take().unwrap_or_else(|| make_body(&mut stream));
        info.stats.begin_response();
        // The head wait: read_timeout, shortened by the route's per-try
        // timeout and by what is left of its deadline.
        let mut head_wait = cfg.read_timeout;
        if let Some(p) = policy.per_try_timeout {
            head_wait = head_wait.min(p);
        }
        if let Some(d) = deadline {
            head_wait = head_wait.min(d.saturating_duration_since(Instant::now()));
        }
        let sent_at = Instant::now();
        // A streamed body or an upgrade goes through hyper's client, which
        // reads the response while a body is still being sent.
        if matches!(body, UpBody::Stream(..)) || client_upgrade.is_some() {
            conn.tx = match conn.tx.take() {
                Some(link) => match server.hyper_link(&cfg, link, &info).await {
                    Ok(l) => Some(l),
                    Err(f) => {
                        log.failure(&f, Some(f.cause.status()), None, None);
                        return local_error(&rt, log, &f, None, accept.as_ref(), None);
                    }
                },
                None => None,
            };
        }
        let view = AttemptView {
            info: &info,
            reused: reused.is_some(),
            read_before,
            max_header_bytes: cfg.max_response_header_bytes,
        };
        let outcome = match conn.tx.take() {
            Some(Link::H1(wire)) => {
                // Encoded straight from the request head kept for replays
                // (no copy of it).
                let head = h1::Head {
                    method: &method,
                    target: &path,
                    headers: &headers,
                };
                let fut = h1::exchange(wire, head, body, cfg.max_response_header_bytes);
                match upstream::await_head(fut, &info, head_wait).await {
                    None => Outcome::TimedOut,
                    Some(h1::Sent::Head(resp)) => Outcome::Head(resp.map(UpIncoming::H1), None),
                    Some(h1::Sent::Unsent(body)) => Outcome::Unsent(body),
                    Some(h1::Sent::Failed(e)) => Outcome::Failed(upstream::classify_h1(&e, &view)),
                }
            }
            Some(Link::Http(mut tx)) => {
                let fut = tx.try_send_request(build(body));
                conn.tx = Some(Link::Http(tx));
                match upstream::await_head(fut, &info, head_wait).await {
                    None => Outcome::TimedOut,
                    Some(Ok(mut resp)) => {
                        let up_upgrade = (resp.status() == StatusCode::SWITCHING_PROTOCOLS
                            && client_upgrade.is_some())
                        .then(|| hyper::upgrade::on(&mut resp));
                        Outcome::Head(resp.map(UpIncoming::Http), up_upgrade)
                    }
                    Some(Err(mut e)) => match e.take_message() {
                        Some(req) => Outcome::Unsent(req.into_body()),
                        None => Outcome::Failed(upstream::classify_exchange(e.error(), &view)),
                    },
                }
            }
            Some(Link::Fcgi(wire)) => {
                let tag = fastcgi::LogTag {
                    upstream: cfg.name.clone(),
                    server: conn.peer.clone(),
                    request_id: log.id.clone(),
                };
                let fut = fastcgi::exchange(
                    wire,
                    fcgi_head.as_deref().unwrap_or_default(),
                    body,
                    cfg.max_response_header_bytes,
                    &tag,
                );
                // On a new connection, no head after 2 ms may mean this
                // request sits in the accept queue behind workers that
                // baton's own idle connections hold: from then on it counts
                // as waiting (finished connections close instead of
                // idling), and the idle ones close now.
                let poked = async {
                    if reused.is_some() {
                        return fut.await;
                    }
                    let mut fut = std::pin::pin!(fut);
                    tokio::select! {
                        r = &mut fut => return r,
                        _ = tokio::time::sleep(FASTCGI_POKE) => {}
                    }
                    let _queued = Waiting::new(&server);
                    server.clear();
                    fut.await
                };
                match upstream::await_head(poked, &info, head_wait).await {
                    None => Outcome::TimedOut,
                    Some(fastcgi::Sent::Head(resp)) => {
                        Outcome::Head(resp.map(UpIncoming::Fcgi), None)
                    }
                    Some(fastcgi::Sent::Unsent(body)) => Outcome::Unsent(body),
                    Some(fastcgi::Sent::Failed(f)) => Outcome::Failed(f),
                }
            }
            None => Outcome::Failed(Failure::with(Cause::Internal, "connection without a link")),
        };
        if let Some(slots) = &up.slots {
            let latency = matches!(outcome, Outcome::Head(..)).then(|| sent_at.elapsed());
            if let Some(limit) = slots.observe(latency, crate::core::clock::now_ms()) {
                gw.metrics
                    .concurrency_limit
                    .get_or_create(&crate::observe::metrics::UpstreamLabels {
                        upstream: cfg.name.clone(),
                    })
                    .set(limit as i64);
            }
        }
        let attempt_log = |info: &ConnInfo| AttemptLog {
            peer: conn.peer.clone(),
            idle_ms: reused.map(|d| d.as_millis() as u64),
            sent: info
                .stats
                .written
                .load(Ordering::Relaxed)
                .saturating_sub(written_before),
            received: info
                .stats
                .read
                .load(Ordering::Relaxed)
                .saturating_sub(read_before),
        };
        let mut per_try_expired = false;
        let failure = match outcome {
            Outcome::Head(resp, up_upgrade) => {
                let app_error = cfg.outlier.count_5xx && resp.status().is_server_error();
                if app_error {
                    passive_failure(&gw, &up, &server, true);
                } else if server.health.record_success(now) == health::Transition::Returned {
                    note_transition(&gw, &cfg, &server, "returned", None);
                }
                let ctx = Held {
                    _busy: busy,
                    _permit: permit,
                };
                let mut r = respond(
                    resp,
                    conn,
                    server,
                    cfg,
                    log,
                    client_upgrade.zip(up_upgrade),
                    read_before,
                    written_before,
                    ctx,
                );
                if let Some(hv) = rate_headers {
                    add_rate_headers(r.headers_mut(), hv);
                }
                return r;
            }
            Outcome::TimedOut => {
                info.retired.store(true, Ordering::Relaxed);
                per_try_expired = head_wait < cfg.read_timeout;
                Failure::with(
                    Cause::ResponseHeadTimeout,
                    format!("no response head within {}s", head_wait.as_secs_f32()),
                )
            }
            Outcome::Unsent(body) => {
                // The connection was closed before a byte of this request
                // was written: resend it as is on a fresh one, for any
                // method (the upstream cannot have seen it).
                {
                    if !race_retry_used {
                        race_retry_used = true;
                        let f = Failure::with(
                            Cause::ConnectionTerminated,
                            "pooled connection closed before the request was sent",
                        );
                        log.failure(
                            &f,
                            None,
                            Some(&attempt_log(&info)),
                            Some("fresh_connection"),
                        );
                        retry_metric(&gw, &cfg, "fresh_connection");
                        pending = Some(body);
                        again = Some(si);
                        continue;
                    }
                }
                Failure::with(
                    Cause::ConnectionTerminated,
                    "a fresh connection closed before the request was sent",
                )
            }
            Outcome::Failed(f) => f,
        };
        info.retired.store(true, Ordering::Relaxed);
        let failure = if body_limit
            .as_ref()
            .is_some_and(|(_, over)| over.load(Ordering::Relaxed))
        {
            Failure::with(
                Cause::BodyTooLarge,
                format!(
                    "the streamed body passed {} bytes",
                    rt.config.limits.max_body_bytes.unwrap_or(0)
                ),
            )
        } else {
            failure
        };
        let a = attempt_log(&info);
        // The keep-alive race: a reused connection that died with zero
        // response bytes. Replay on a fresh connection when the request is
        // idempotent (or carries Idempotency-Key) and its body is replayable.
        // Not counted against the server: idle closes are normal.
        let race = failure.cause.retry() == Retry::MaybeProcessed
            && reused.is_some()
            && a.received == 0
            && replayable
            && (idempotent(&method) || may_replay_unsafe())
            && !race_retry_used;
        if race {
            race_retry_used = true;
            log.failure(&failure, None, Some(&a), Some("fresh_connection"));
            retry_metric(&gw, &cfg, "fresh_connection");
            again = Some(si);
            continue;
        }
        // A supervised backend that died under this request (killed,
        // crashed): an idempotent request with nothing received is replayed
        // once on the restarted backend.
        if let Some(sup) = &supervisor
            && failure.cause.retry() == Retry::MaybeProcessed
            && a.received == 0
            && replayable
            && (idempotent(&method) || may_replay_unsafe())
            && !restart_replay_used
            && sup.restarting_since(gen_at_start).await
        {
            restart_replay_used = true;
            if let Err(f) = await_restart(&gw, &cfg, sup, gen_at_start, &log, &failure, &a).await {
                return backend_unavailable(&rt, log, sup, &f, accept.as_ref());
            }
            again = Some(si);
            continue;
        }
        passive_failure(&gw, &up, &server, failure.cause.counts_against_server());
        // The upstream may have seen the request but sent nothing back: an
        // idempotent request (or one with Idempotency-Key) with a
        // replayable body goes to another server, within `retries`.
        // A per-try timeout counts the same way: the point of it is to try
        // another server sooner.
        let next = (failure.cause.retry() == Retry::MaybeProcessed || per_try_expired)
            && a.received == 0
            && replayable
            && (idempotent(&method) || may_replay_unsafe())
            && another_server(&tried, true);
        if next {
            log.failure(&failure, None, Some(&a), Some("next_server"));
            retry_metric(&gw, &cfg, "next_server");
            pause(policy.backoff, log.attempts, start).await;
            continue;
        }
        log.failure(&failure, Some(failure.cause.status()), Some(&a), None);
        let peer = a.peer.clone();
        return local_error(&rt, log, &failure, Some(&peer), accept.as_ref(), None);
    }
}

fn add_rate_headers(
    h: &mut HeaderMap,
    (policy, state): (Option<HeaderValue>, Option<HeaderValue>),
) {
    if let Some(p) = policy {
        h.insert(HeaderName::from_static("ratelimit-policy"), p);
    }
    if let Some(s) = state {
        h.insert(HeaderName::from_static("ratelimit"), s);
    }
}

/// The key of a client's address, for client-IP hashing and rate limits.
fn client_key(client: SocketAddr) -> u64 {
    crate::upstream::balance::fnv1a(client.ip().to_string().as_bytes())
}

/// The request's consistent-hash key, when the upstream hashes.
fn hash_key(balance: &Balance, headers: &HeaderMap, client: SocketAddr) -> Option<u64> {
    let Balance::Hash(k) = balance else {
        return None;
    };
    match k {
        HashKey::ClientIp => Some(client_key(client)),
        HashKey::Header(name) => headers
            .get(name)
            .map(|v| crate::upstream::balance::fnv1a(v.as_bytes())),
        HashKey::Cookie(name) => headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|c| {
                let (k, v) = c.trim().split_once('=')?;
                (k == name).then(|| crate::upstream::balance::fnv1a(v.as_bytes()))
            }),
    }
}

/// A failed attempt on `server`: passive ejection, logged and counted.
fn passive_failure(gw: &Gateway, up: &Upstream, server: &Arc<Server>, counts: bool) {
    if !counts {
        return;
    }
    let now = crate::core::clock::now_ms();
    let t = {
        let _one_at_a_time = up.eject_lock.lock().unwrap_or_else(|e| e.into_inner());
        server
            .health
            .record_failure(&up.cfg.outlier, now, up.ejected(now), up.servers.len())
    };
    if let health::Transition::Ejected(d) = t {
        note_transition(gw, &up.cfg, server, "ejected", Some(d));
    }
}

fn note_transition(
    gw: &Gateway,
    cfg: &UpstreamConfig,
    server: &Arc<Server>,
    to: &'static str,
    ejected_for: Option<std::time::Duration>,
) {
    gw.metrics.transition(&cfg.name, &server.label, to);
    tracing::warn!(target: "baton::health", upstream = %cfg.name, server = %server.label, to, ejected_for_ms = ejected_for.map(|d| d.as_millis() as u64), "server {to}");
}

/// A supervised backend died under this attempt: log the failed attempt,
/// then wait for the restart. `Err`: it was not back within start_wait.
async fn await_restart(
    gw: &Gateway,
    cfg: &UpstreamConfig,
    sup: &Supervisor,
    generation: u64,
    log: &ReqLog,
    f: &Failure,
    a: &AttemptLog,
) -> Result<(), Failure> {
    log.failure(f, None, Some(a), Some("backend_restart"));
    retry_metric(gw, cfg, "backend_restart");
    sup.wait_ready(Some(generation)).await
}

/// `503 backend_restarting` with the supervisor's `Retry-After`.
fn backend_unavailable(
    rt: &Runtime,
    log: ReqLog,
    sup: &Supervisor,
    f: &Failure,
    accept: Option<&HeaderValue>,
) -> Response<RespBody> {
    log.failure(f, Some(f.cause.status()), None, None);
    local_error(rt, log, f, None, accept, Some(sup.retry_after_secs()))
}

/// What one attempt came to.
enum Outcome {
    /// A response head (and the upstream's side of a protocol upgrade).
    Head(Response<UpIncoming>, Option<hyper::upgrade::OnUpgrade>),
    /// The response head did not come within the head wait.
    TimedOut,
    /// The connection was dead before a byte was written: the request's
    /// body, intact, to resend (the head is rebuilt from what was kept).
    Unsent(UpBody),
    Failed(Failure),
}

/// Marks a FastCGI request as waiting for a server worker: connecting
/// (perhaps waiting out a full accept queue), or on a new connection
/// without a head after `FASTCGI_POKE`. While any is, `Server::checkin`
/// closes finished connections instead of keeping them idle, since each
/// holds a worker.
struct Waiting(Arc<Server>);

impl Waiting {
    fn new(s: &Arc<Server>) -> Self {
        s.awaiting_worker.fetch_add(1, Ordering::Relaxed);
        Waiting(s.clone())
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.awaiting_worker.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How long a FastCGI request on a new connection waits for its head
/// before it counts as queued and closes the server's idle connections
/// (see the attempt loop).
const FASTCGI_POKE: std::time::Duration = std::time::Duration::from_millis(2);

/// Largest FastCGI request body without a Content-Length that is buffered
/// when server.max_body_bytes is not set.
const FASTCGI_BUFFER_MAX: usize = 64 << 20;

/// A static file from a FastCGI upstream's root (already open).
fn serve_file(
    log: ReqLog,
    file: std::fs::File,
    name: &str,
    req: &Request<Incoming>,
    fc: &crate::config::FastCgiConfig,
) -> Response<RespBody> {
    let a =
        crate::upstream::files::answer(file, name, req.method(), req.headers(), fc.static_max_age);
    let len = a.body.as_ref().map_or(0, |b| b.1);
    let mut r = Response::new(match a.body {
        Some((f, n)) => RespBody::File(Box::new(crate::upstream::files::FileBody::new(f, n))),
        None => RespBody::Local(None),
    });
    *r.status_mut() = a.status;
    *r.headers_mut() = a.headers;
    r.headers_mut().insert(&X_REQUEST_ID, log.id.clone());
    log.finish(a.status.as_u16(), len, None);
    r
}

/// A request in flight on a server (for least_request); dropped when its
/// response ends or the attempt fails.
pub struct InFlight(Arc<Server>);

impl InFlight {
    fn new(s: Arc<Server>) -> Self {
        s.inflight.fetch_add(1, Ordering::Relaxed);
        InFlight(s)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a response holds until it ends: its in-flight mark and its slot.
struct Held {
    // Never read: they act when dropped, with the response.
    _busy: InFlight,
    _permit: Option<crate::upstream::balance::Slot>,
}

/// The route's backoff before the next attempt (none by default).
async fn pause(base: std::time::Duration, attempt: u32, start: Instant) {
    let d = crate::upstream::balance::backoff(base, attempt, start.elapsed().as_nanos() as u64);
    if !d.is_zero() {
        tokio::time::sleep(d).await;
    }
}

fn retry_metric(gw: &Gateway, cfg: &UpstreamConfig, reason: &'static str) {
    gw.metrics
        .retries
        .get_or_create(&RetryLabels {
            upstream: cfg.name.clone(),
            reason,
        })
        .inc();
}

#[allow(clippy::too_many_arguments)]
fn respond(
    resp: Response<UpIncoming>,
    conn: Conn,
    server: Arc<Server>,
    cfg: Arc<UpstreamConfig>,
    mut log: ReqLog,
    upgrades: Option<(hyper::upgrade::OnUpgrade, hyper::upgrade::OnUpgrade)>,
    read_before: u64,
    written_before: u64,
    held: Held,
) -> Response<RespBody> {
    let info = conn.info.clone();
    log.server = Some(conn.peer.clone());
    let status = resp.status();
    let upgraded = status == StatusCode::SWITCHING_PROTOCOLS && upgrades.is_some();
    if let Some((client_upgrade, upstream_upgrade)) = upgrades.filter(|_| upgraded) {
        tokio::spawn(async move {
            if let (Ok(c), Ok(u)) = (client_upgrade.await, upstream_upgrade.await) {
                let _ =
                    tokio::io::copy_bidirectional(&mut TokioIo::new(c), &mut TokioIo::new(u)).await;
            }
        });
    }
    let (mut parts, body) = resp.into_parts();
    let hop = strip_hop_by_hop(&mut parts.headers, upgraded);
    if let Some(ms) = hop.keepalive_ms {
        info.keepalive_hint_ms.store(ms, Ordering::Relaxed);
    }
    if hop.close {
        // Never pooled, and not mistaken for an idle close (learning).
        info.retired.store(true, Ordering::Relaxed);
    }
    append_via(&mut parts.headers, Version::HTTP_11);
    parts.headers.insert(&X_REQUEST_ID, log.id.clone());
    let sent = info
        .stats
        .written
        .load(Ordering::Relaxed)
        .saturating_sub(written_before);
    let pool = (!upgraded).then(|| PoolReturn {
        server,
        cfg: cfg.clone(),
        tx: conn.tx,
        info,
    });
    let body = ProxiedBody {
        body: TimedBody::new(body, cfg.read_timeout),
        status: status.as_u16(),
        log,
        bytes: 0,
        pool,
        read_before,
        sent,
        failed: None,
        _held: held,
    };
    Response::from_parts(parts, RespBody::Proxied(Box::new(body)))
}

fn plain(status: StatusCode, msg: &'static str, id: &HeaderValue) -> Response<RespBody> {
    let mut r = Response::new(RespBody::Local(Some(Bytes::from_static(msg.as_bytes()))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut().insert(&X_REQUEST_ID, id.clone());
    r
}

/// Seconds a client should wait before retrying a 503 (RFC 9110 §10.2.3).
const RETRY_AFTER_SECS: u64 = 5;

/// baton's own answer for a failure: status from the cause, `Proxy-Status`,
/// request ID, and a page in the format the client asked for.
/// `[server] status_page`: whether each upstream has a usable server now,
/// and since its servers last changed state; HTML, or JSON on request.
fn status_page(
    gw: &Gateway,
    rt: &Runtime,
    log: ReqLog,
    accept: Option<&HeaderValue>,
) -> Response<RespBody> {
    let now = crate::core::clock::now_ms();
    let since = gw.metrics.incidents.last_change_by_upstream();
    let open: std::collections::HashMap<String, i64> = gw
        .metrics
        .incidents
        .open_incidents()
        .into_iter()
        .map(|i| (i.upstream, i.started))
        .collect();
    // Per upstream: down (no usable server), failing (an open incident:
    // servers answer but requests fail), or working; and since when.
    let rows: Vec<(&str, &str, Option<i64>)> = rt
        .upstreams
        .iter()
        .map(|u| {
            let name = &*u.cfg.name;
            if !u.servers.iter().any(|s| s.health.usable(now)) {
                (name, "down", since.get(name).copied())
            } else if let Some(t) = open.get(name) {
                (name, "failing", Some(*t))
            } else {
                (name, "working", since.get(name).copied())
            }
        })
        .collect();
    let worst = |st: &str| rows.iter().any(|r| r.1 == st);
    let checked = crate::core::clock::clock(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64),
    );
    let (ctype, body) = if Format::negotiate(accept.map(|v| v.as_bytes())) == Format::Json {
        let v = serde_json::json!({
            "up": !worst("down") && !worst("failing"),
            "time": crate::core::clock::now(),
            "services": rows.iter().map(|(n, st, t)| serde_json::json!({"name": n, "up": *st == "working", "state": st, "since": t.map(crate::core::clock::clock)})).collect::<Vec<_>>(),
        });
        ("application/json", v.to_string() + "\n")
    } else {
        let esc = crate::core::text::html_escape;
        let list: String = rows
            .iter()
            .map(|(n, st, t)| {
                format!(
                    "<li class=\"{st}\"><b>{}</b>: {}{}</li>\n",
                    esc(n),
                    match *st {
                        "down" => "not available",
                        "failing" => "having problems",
                        _ => "working",
                    },
                    t.map_or(String::new(), |t| format!(
                        " (since {} UTC)",
                        crate::core::clock::clock(t)
                    ))
                )
            })
            .collect();
        let (title, lead) = if worst("down") {
            (
                "Part of this site is down for everyone",
                "It is not just you: the site's gateway sees the parts below as not available.",
            )
        } else if worst("failing") {
            (
                "Part of this site is having problems",
                "It is not just you: many requests to the parts below are failing right now.",
            )
        } else {
            (
                "Everything is working",
                "If the site does not work for you, the problem is likely between you and the site (your network, DNS, or browser).",
            )
        };
        (
            "text/html; charset=utf-8",
            format!(
                "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><meta http-equiv=\"refresh\" content=\"30\"><title>Status</title><style>body{{font:16px/1.5 system-ui,sans-serif;max-width:40em;margin:3em auto;padding:0 1em}}.working b{{color:#15803d}}.failing b{{color:#b45309}}.down b{{color:#b91c1c}}</style></head><body>\n<h1>{title}</h1>\n<p>{lead}</p>\n<ul>\n{list}</ul>\n<p><small>Checked {checked} UTC by the site's gateway; this page refreshes every 30 seconds.</small></p>\n</body></html>\n",
            ),
        )
    };
    let len = body.len() as u64;
    let mut r = Response::new(RespBody::Local(Some(Bytes::from(body))));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    log.finish(200, len, None);
    r
}

fn local_error(
    rt: &Runtime,
    log: ReqLog,
    f: &Failure,
    next_hop: Option<&str>,
    accept: Option<&HeaderValue>,
    retry_after: Option<u64>,
) -> Response<RespBody> {
    let format = Format::negotiate(accept.map(|v| v.as_bytes()));
    let status = f.cause.status();
    let retry_after = retry_after.or((status == 503).then_some(RETRY_AFTER_SECS));
    let id = log.id.clone();
    let body = pages::render(
        format,
        &PageInfo {
            cause: f.cause,
            status,
            details: f.details.as_deref(),
            request_id: log.id(),
            retry_after,
            status_page: rt.config.status_page.as_deref(),
        },
        &rt.config.pages,
    );
    let len = body.len() as u64;
    let mut r = Response::new(RespBody::Local(Some(body)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::SERVER, HeaderValue::from_static("baton"));
    h.insert(
        &PROXY_STATUS,
        proxy_status(f.cause, next_hop, f.details.as_deref(), f.received_status),
    );
    h.insert(&X_REQUEST_ID, id);
    if let Some(s) = retry_after {
        h.insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    log.finish(status, len, Some(f.cause));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_status_escapes() {
        let v = proxy_status(
            Cause::ConnectionRefused,
            Some("127.0.0.1:1"),
            Some("say \"hi\"\n"),
            None,
        );
        assert_eq!(
            v.to_str().unwrap(),
            r#"baton; error=connection_refused; next-hop="127.0.0.1:1"; details="say \"hi\"?""#
        );
    }

    #[test]
    fn hop_by_hop() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn forwarded_for_appends() {
        let v4: std::net::IpAddr = "10.0.0.25".parse().unwrap();
        assert_eq!(forwarded_for(None, v4), "10.0.0.25");
        let prev = HeaderValue::from_static("203.0.113.9");
        assert_eq!(
            forwarded_for(Some(&prev), "::1".parse().unwrap()),
            "203.0.113.9, ::1"
        );
    }

    #[test]
    fn ports_are_stripped() {
        assert_eq!(strip_port("example.com:8080"), "example.com");
        assert_eq!(strip_port("[::1]:8080"), "::1");
        assert_eq!(strip_port("example.com"), "example.com");
    }
}
