//! Prometheus metrics served on the admin address.
//!
//! Owns: the registry and every metric family baton exports. Labels come
//! from the cause enum (`cause`, `phase`) and the config (route, upstream).
//! Must not: be read on the request path (only incremented).

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::core::cause::Cause;

/// Why client TLS handshakes fail, as counted (`server.rs`).
pub const TLS_FAILURE_REASONS: [&str; 8] = [
    "unknown_server_name",
    "no_shared_version",
    "no_shared_cipher",
    "client_alert",
    "client_closed",
    "protocol",
    "timeout",
    "plain_http",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TlsFailureLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertLabels {
    pub name: String,
    /// `file` (`[[tls.certificates]]`) or `acme`.
    pub source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: Arc<str>,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub upstream: Arc<str>,
    pub cause: &'static str,
    pub phase: &'static str,
    pub proxy_status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryLabels {
    pub upstream: Arc<str>,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabels {
    pub upstream: Arc<str>,
    pub server: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HealthLabels {
    pub upstream: Arc<str>,
    pub server: Arc<str>,
    /// "up", "down", "ejected", "returned"
    pub to: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShedLabels {
    pub upstream: Arc<str>,
    pub reason: &'static str,
}

/// Every `event` of `baton_cache_requests_total`, for the dashboard.
pub const CACHE_EVENTS: [&str; 7] = [
    "hit",
    "miss",
    "uncacheable",
    "revalidated",
    "stale_revalidate",
    "stale_error",
    "bypass",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    /// hit, stale_revalidate (served while refreshed), stale_error
    /// (served in place of a failure), revalidated (a 304), miss (stored),
    /// uncacheable, bypass.
    pub event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub upstream: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    pub upstream: Arc<str>,
    pub state: &'static str,
}

pub struct Metrics {
    /// 1 for a supervised backend's current state, 0 for the others.
    pub backend_state: Family<BackendLabels, prometheus_client::metrics::gauge::Gauge>,
    pub backend_restarts: Family<UpstreamLabels, Counter>,
    /// The adaptive concurrency limit of each upstream that has one.
    pub concurrency_limit: Family<UpstreamLabels, prometheus_client::metrics::gauge::Gauge>,
    pub connections_refused: Counter,
    /// New connections opened to each upstream's servers (a reused or
    /// handed-on connection opens none).
    pub upstream_connects: Family<UpstreamLabels, Counter>,
    /// Idle HTTP/1.1 client connections parked without a task
    /// (server/park.rs).
    pub connections_parked: prometheus_client::metrics::gauge::Gauge,
    /// Client TLS handshakes that failed, by reason.
    pub tls_handshake_failures: Family<TlsFailureLabels, Counter>,
    /// Each served certificate's notAfter (Unix seconds), by name.
    pub certificate_expiry: Family<CertLabels, prometheus_client::metrics::gauge::Gauge>,
    /// Lookups answered from the last good answer (shared by every
    /// resolver, across reloads).
    pub dns_stale: Counter,
    /// The shared cache's answers, by what happened.
    pub cache: Family<CacheLabels, Counter>,
    pub cache_bytes: prometheus_client::metrics::gauge::Gauge,
    pub cache_entries: prometheus_client::metrics::gauge::Gauge,
    pub cache_evictions: Counter,
    pub health: Family<HealthLabels, Counter>,
    pub shed: Family<ShedLabels, Counter>,
    pub registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub duration: Family<RouteLabels, Histogram>,
    pub upstream_failures: Family<FailureLabels, Counter>,
    pub retries: Family<RetryLabels, Counter>,
    pub log_dropped: Counter,
    /// Per-upstream tallies and recent events for incidents (shared across
    /// reloads, like the metrics).
    pub incidents: Arc<crate::observe::incidents::Tracks>,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms .. ~16 s
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("baton");
        let requests = Family::<RequestLabels, Counter>::default();
        let duration = Family::<RouteLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let upstream_failures = Family::<FailureLabels, Counter>::default();
        let retries = Family::<RetryLabels, Counter>::default();
        let log_dropped = Counter::default();
        let health = Family::<HealthLabels, Counter>::default();
        let shed = Family::<ShedLabels, Counter>::default();
        let connections_refused = Counter::default();
        let upstream_connects = Family::<UpstreamLabels, Counter>::default();
        registry.register(
            "upstream_connections_opened",
            "New connections opened to an upstream's servers for requests (reused ones open none)",
            upstream_connects.clone(),
        );
        let connections_parked = prometheus_client::metrics::gauge::Gauge::default();
        let backend_state =
            Family::<BackendLabels, prometheus_client::metrics::gauge::Gauge>::default();
        let backend_restarts = Family::<UpstreamLabels, Counter>::default();
        registry.register(
            "backend_state",
            "Supervised backends: 1 for the state each is in (starting, running, backoff, stopped)",
            backend_state.clone(),
        );
        registry.register(
            "backend_restarts",
            "Supervised backends restarted after an exit, a failed start or failing health checks",
            backend_restarts.clone(),
        );
        let concurrency_limit =
            Family::<UpstreamLabels, prometheus_client::metrics::gauge::Gauge>::default();
        registry.register(
            "upstream_concurrency_limit",
            "The adaptive concurrency limit (adaptive_latency upstreams)",
            concurrency_limit.clone(),
        );
        registry.register(
            "connections_refused",
            "Client connections closed at once because max_connections was reached",
            connections_refused.clone(),
        );
        registry.register(
            "connections_parked",
            "Idle HTTP/1.1 client connections parked without a task (after 1 s with no request)",
            connections_parked.clone(),
        );
        registry.register(
            "upstream_health_transitions",
            "Server state changes: active checks up/down, passive ejected/returned",
            health.clone(),
        );
        registry.register("upstream_shed", "Requests answered 503 without trying a server: no usable server, queue full, queue timeout", shed.clone());
        registry.register(
            "requests",
            "Requests answered, by route and status",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request to the end of the response, by route",
            duration.clone(),
        );
        registry.register(
            "upstream_failures",
            "Failed upstream attempts, by upstream and cause",
            upstream_failures.clone(),
        );
        registry.register(
            "upstream_retries",
            "Attempts repeated after a failure, by reason",
            retries.clone(),
        );
        registry.register(
            "log_lines_dropped",
            "Log lines dropped because the log writer fell behind",
            log_dropped.clone(),
        );
        let tls_handshake_failures = Family::<TlsFailureLabels, Counter>::default();
        registry.register(
            "tls_handshake_failures",
            "Client TLS handshakes that failed, by reason (unknown_server_name, no_shared_version, no_shared_cipher, client_alert: the client refused baton's certificate, client_closed, protocol, timeout, plain_http)",
            tls_handshake_failures.clone(),
        );
        let certificate_expiry =
            Family::<CertLabels, prometheus_client::metrics::gauge::Gauge>::default();
        registry.register(
            "tls_certificate_expiry_timestamp_seconds",
            "When each served certificate expires (notAfter, Unix seconds), by name and source (file or acme)",
            certificate_expiry.clone(),
        );
        let dns_stale = Counter::default();
        registry.register(
            "dns_stale_answers",
            "Lookups answered with the last good answer because the resolver failed",
            dns_stale.clone(),
        );
        let cache = Family::<CacheLabels, Counter>::default();
        registry.register(
            "cache_requests",
            "Requests on cached routes by what the cache did: hit, stale_revalidate, stale_error (a stored response served in place of a failure), revalidated, miss (stored), uncacheable, bypass",
            cache.clone(),
        );
        let cache_bytes = prometheus_client::metrics::gauge::Gauge::default();
        registry.register(
            "cache_bytes",
            "Bytes the shared cache holds (bodies and heads)",
            cache_bytes.clone(),
        );
        let cache_entries = prometheus_client::metrics::gauge::Gauge::default();
        registry.register(
            "cache_entries",
            "URLs the shared cache holds",
            cache_entries.clone(),
        );
        let cache_evictions = Counter::default();
        registry.register(
            "cache_evictions",
            "Stored responses dropped to stay within [cache] memory",
            cache_evictions.clone(),
        );
        Metrics {
            cache_bytes,
            cache_entries,
            cache_evictions,
            cache,
            backend_state,
            backend_restarts,
            concurrency_limit,
            dns_stale,
            connections_refused,
            upstream_connects,
            connections_parked,
            tls_handshake_failures,
            certificate_expiry,
            health,
            shed,
            registry,
            requests,
            duration,
            upstream_failures,
            retries,
            log_dropped,
            incidents: Arc::default(),
        }
    }

    pub fn cache_event(&self, event: &'static str) {
        self.cache.get_or_create(&CacheLabels { event }).inc();
    }

    pub fn transition(&self, upstream: &Arc<str>, server: &Arc<str>, to: &'static str) {
        self.health
            .get_or_create(&HealthLabels {
                upstream: upstream.clone(),
                server: server.clone(),
                to,
            })
            .inc();
        self.incidents.event(
            &format!("server_{to}"),
            Some(upstream),
            format!("server {server} {to}"),
        );
    }

    pub fn shed(&self, upstream: &Arc<str>, reason: &'static str) {
        self.shed
            .get_or_create(&ShedLabels {
                upstream: upstream.clone(),
                reason,
            })
            .inc();
    }

    pub fn failure(&self, upstream: &Arc<str>, cause: Cause) {
        self.upstream_failures
            .get_or_create(&FailureLabels {
                upstream: upstream.clone(),
                cause: cause.id(),
                phase: cause.phase().as_str(),
                proxy_status: cause.proxy_status(),
            })
            .inc();
    }

    pub fn encode(&self) -> String {
        let mut s = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        s
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
