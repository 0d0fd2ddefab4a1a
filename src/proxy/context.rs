//! The per-request context every phase reads and fills: the client and
//! connection facts, the route and upstream once chosen, what the access
//! and failure logs need, and what the response filters add.
//!
//! Owns: [`Ctx`]. It lives until the response ends (a proxied body carries
//! it, and logs from it when it is dropped).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::core::body::RequestBody;
use http::header::{self, HeaderValue};
use http::{Method, Request, Uri, Version};

use super::headers::{HAS_REQUEST_ID, HAS_XFF, own_field, strip_port, valid_request_id};
use crate::config::Route;
use crate::gateway::{Gateway, RouteMetrics, Runtime};
use crate::upstream::fastcgi::Script;

/// One request, as the phases see it.
pub(super) struct Ctx {
    pub gw: Arc<Gateway>,
    /// The config this request runs on to its end, even across a reload.
    pub rt: Arc<Runtime>,
    pub id: HeaderValue,
    pub method: Method,
    pub uri: Uri,
    /// The `Host` field as received (HTTP/2: the `:authority` in `uri`), or
    /// an absolute-form target's authority (`host_from_target`).
    pub host_field: Option<HeaderValue>,
    pub host_from_target: bool,
    /// The request had two `Host` fields (the host filter refuses it).
    pub two_hosts: bool,
    pub client: SocketAddr,
    pub local: SocketAddr,
    /// The address the connection came from (after a PROXY protocol
    /// header): `client` unless it is a trusted proxy.
    pub peer: SocketAddr,
    /// The request came over TLS: an HTTPS listener, or a trusted proxy's
    /// `X-Forwarded-Proto: https` (or `Forwarded: proto=https`).
    pub https: bool,
    pub version: Version,
    pub start: Instant,
    /// `Accept`, negotiated only if baton answers itself.
    pub accept: Option<HeaderValue>,
    pub accept_encoding: Option<HeaderValue>,
    /// A gRPC request (`content-type: application/grpc...`): baton's own
    /// failures are answered in gRPC's form.
    pub grpc: bool,
    /// A client shown failure details (`server.details_to`, or the admin
    /// token as `Authorization: Bearer`).
    pub trusted: bool,
    /// The route's index in the config, once routed.
    pub route_index: Option<usize>,
    pub route: Option<Arc<str>>,
    /// The route's metric handles, looked up once per config (not per request).
    pub route_metrics: Option<Arc<RouteMetrics>>,
    pub upstream: Option<Arc<str>>,
    pub server: Option<Arc<str>>,
    pub attempts: u32,
    /// Answered by baton itself (a file from a FastCGI root, the status
    /// page): not part of the upstream's latency.
    pub served_here: bool,
    pub referer: Option<HeaderValue>,
    pub user_agent: Option<HeaderValue>,
    /// `RateLimit-Policy` and `RateLimit`, added to the response.
    pub rate_headers: Option<(Option<HeaderValue>, Option<HeaderValue>)>,
    /// The route's `rewrite`: the path and query the upstream is asked
    /// for (the logs keep the client's).
    pub rewritten: Option<String>,
    /// A cached route's lookup, what `Cache-Status` says, and what is to
    /// be stored.
    pub cache: Option<Box<super::cache::CacheCtx>>,
    /// Which of the fields baton sets upstream the client sent
    /// (`headers::HAS_*` bits): the others need no lookup to be replaced.
    pub own_fields: u8,
    /// FastCGI: the script `try_files` chose (boxed: the HTTP path moves
    /// the context without it).
    pub script: Option<Box<Script>>,
}

/// The request fields [`Ctx::new`] reads: the first of each name.
#[derive(Default)]
struct Seen<'a> {
    host: Option<&'a HeaderValue>,
    two_hosts: bool,
    request_id: Option<&'a HeaderValue>,
    accept: Option<&'a HeaderValue>,
    accept_encoding: Option<&'a HeaderValue>,
    content_type: Option<&'a HeaderValue>,
    authorization: Option<&'a HeaderValue>,
    referer: Option<&'a HeaderValue>,
    user_agent: Option<&'a HeaderValue>,
    /// `Forwarded` or `X-Forwarded-For` is present.
    forwarded: bool,
    /// [`Ctx::own_fields`].
    own: u8,
}

impl Ctx {
    pub fn new(
        gw: Arc<Gateway>,
        req: &Request<RequestBody>,
        peer: SocketAddr,
        local: SocketAddr,
        https: bool,
    ) -> Self {
        let start = Instant::now();
        let rt = gw.runtime.load_full();
        let h = req.headers();
        // Behind a trusted proxy, the client and scheme it names.
        let (client, forwarded_https) =
            super::headers::real_client(h, peer, &rt.config.limits.trusted_proxies);
        // One pass over the fields finds what the context keeps (a lookup
        // by name costs a hash each; a request has few fields).
        let logged = gw.logs.access.enabled();
        let mut seen = Seen::default();
        for (name, value) in h {
            let slot = match *name {
                header::HOST => {
                    seen.two_hosts |= seen.host.is_some();
                    &mut seen.host
                }
                header::ACCEPT => &mut seen.accept,
                header::ACCEPT_ENCODING => &mut seen.accept_encoding,
                header::CONTENT_TYPE => &mut seen.content_type,
                header::AUTHORIZATION => &mut seen.authorization,
                header::FORWARDED => {
                    seen.forwarded = true;
                    continue;
                }
                // Referer and User-Agent are kept only when an access line
                // shows them (both formats do).
                header::REFERER if logged => &mut seen.referer,
                header::USER_AGENT if logged => &mut seen.user_agent,
                _ => {
                    // Fields of the names baton sets upstream.
                    let own = own_field(name);
                    seen.own |= own;
                    seen.forwarded |= own == HAS_XFF;
                    if own != HAS_REQUEST_ID {
                        continue;
                    }
                    &mut seen.request_id
                }
            };
            if slot.is_none() {
                *slot = Some(value);
            }
        }
        let mut id = match seen.request_id {
            Some(v) if valid_request_id(v) => v.clone(),
            _ => gw.next_request_id(),
        };
        // Unique to this request: in HPACK's dynamic table it would only
        // churn (h2's encoder walks the name's earlier values, inserts it
        // and evicts another, each time), so HTTP/2 sends it as a literal
        // never indexed. HTTP/1.1 ignores the mark.
        id.set_sensitive(true);
        Ctx {
            id,
            method: req.method().clone(),
            uri: req.uri().clone(),
            host_field: seen.host.cloned(),
            two_hosts: seen.two_hosts,
            host_from_target: false,
            client,
            peer,
            local,
            https: https || forwarded_https,
            version: req.version(),
            start,
            accept: seen.accept.cloned(),
            accept_encoding: seen.accept_encoding.cloned(),
            grpc: seen
                .content_type
                .is_some_and(|c| c.as_bytes().starts_with(b"application/grpc")),
            // A request forwarded by a proxy baton does not trust (nginx on
            // the same host: every visitor arrives from 127.0.0.1) comes
            // from someone unknown: no details then.
            trusted: (rt
                .config
                .limits
                .details_to
                .iter()
                .any(|n| n.contains(&client.ip()))
                && (client != peer || !seen.forwarded))
                || rt.config.admin_token.as_ref().is_some_and(|t| {
                    seen.authorization
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.strip_prefix("Bearer "))
                        .is_some_and(|v| v.trim() == t)
                }),
            route_index: None,
            route: None,
            route_metrics: None,
            upstream: None,
            server: None,
            attempts: 0,
            served_here: false,
            referer: seen.referer.cloned(),
            user_agent: seen.user_agent.cloned(),
            rate_headers: None,
            rewritten: None,
            cache: None,
            own_fields: seen.own,
            script: None,
            rt,
            gw,
        }
    }

    /// A second context for the same request, routed the same (a cache
    /// refresh in the background): its own request ID and clock.
    pub fn fork(&self, req: &Request<RequestBody>) -> Ctx {
        let mut c = Ctx::new(self.gw.clone(), req, self.peer, self.local, self.https);
        c.rt = self.rt.clone();
        c.route_index = self.route_index;
        c.route = self.route.clone();
        c.route_metrics = self.route_metrics.clone();
        c.upstream = self.upstream.clone();
        c.rewritten = self.rewritten.clone();
        c.script = self.script.clone();
        c.cache = self.cache.as_ref().map(|k| Box::new(k.refresh()));
        c
    }

    pub fn id(&self) -> &str {
        self.id.to_str().unwrap_or("-")
    }

    /// The host the request is for, without the port.
    pub fn host(&self) -> &str {
        let raw = match &self.host_field {
            Some(h) => h.to_str().unwrap_or(""),
            None => self.uri.authority().map_or("", |a| a.as_str()),
        };
        strip_port(raw)
    }

    pub fn path(&self) -> &str {
        self.uri.path_and_query().map_or("/", |p| p.as_str())
    }

    /// The route, once the routing filter has run.
    pub fn route_config(&self) -> Option<&Route> {
        self.route_index.map(|i| &self.rt.config.routes[i])
    }

    /// The upstream of the route: a route without one (a redirect) is
    /// answered by the route filter before anything asks.
    pub fn upstream_index(&self) -> usize {
        self.route_config()
            .and_then(|r| r.upstream)
            .expect("routed to an upstream")
    }

    /// The protocol as logs and CGI write it.
    pub fn protocol(&self) -> &'static str {
        match self.version {
            Version::HTTP_2 => "HTTP/2.0",
            Version::HTTP_10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        }
    }
}
