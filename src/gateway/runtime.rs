//! Everything built from one config, swapped whole on reload so a request
//! finishes on the config it started with.
//!
//! Owns: [`Runtime`] (the validated config, the upstreams with their pools
//! and health, rate limiters, per-route metric handles, the dialer) and
//! route matching. Must not: serve requests (`proxy` does).

use std::sync::Arc;

use crate::config::{Config, HostMatch};
use crate::observe::metrics::{Metrics, RequestLabels, RouteLabels};
use crate::upstream::resolve::Resolver;
use crate::upstream::{Dialer, Upstream};

/// A route's metric handles (the same series as the labelled families).
pub struct RouteMetrics {
    pub ok: prometheus_client::metrics::counter::Counter,
    pub duration: prometheus_client::metrics::histogram::Histogram,
    /// The route's upstream's incident tally.
    pub track: Arc<crate::observe::incidents::Track>,
}

/// Everything built from one config: swapped whole on reload, so a request
/// finishes on the config it started with.
pub struct Runtime {
    pub config: Config,
    pub upstreams: Vec<Arc<Upstream>>,
    /// One per route (`None` where the route has no rate_limit).
    pub limiters: Vec<Option<crate::gateway::limit::Limiter>>,
    /// One per route.
    pub route_metrics: Vec<Arc<RouteMetrics>>,
    pub dialer: Dialer,
    pub metrics: Arc<Metrics>,
}

impl Runtime {
    /// `workers` is the number of worker threads (one idle list each).
    pub fn new(config: Config, workers: usize, metrics: Arc<Metrics>) -> Result<Self, String> {
        let resolver = Resolver::new(&config.resolver, metrics.dns_stale.clone())?;
        let upstreams = config
            .upstreams
            .iter()
            .map(|u| Arc::new(Upstream::new(u.clone(), workers)))
            .collect();
        let own = config
            .listen
            .iter()
            .chain(&config.tls.listen)
            .copied()
            .collect();
        let limiters = config
            .routes
            .iter()
            .map(|r| {
                r.rate_limit
                    .clone()
                    .map(crate::gateway::limit::Limiter::new)
            })
            .collect();
        let route_metrics = config
            .routes
            .iter()
            .map(|r| {
                Arc::new(RouteMetrics {
                    ok: metrics
                        .requests
                        .get_or_create(&RequestLabels {
                            route: r.name.clone(),
                            status: 200,
                        })
                        .clone(),
                    duration: metrics
                        .duration
                        .get_or_create(&RouteLabels {
                            route: r.name.clone(),
                        })
                        .clone(),
                    // A redirect route's answers are tallied under its name.
                    track: metrics.incidents.get(
                        &r.upstream
                            .map_or_else(|| r.name.clone(), |u| config.upstreams[u].name.clone()),
                    ),
                })
            })
            .collect();
        Ok(Runtime {
            config,
            upstreams,
            limiters,
            route_metrics,
            dialer: Dialer { resolver, own },
            metrics,
        })
    }

    /// A runtime for probing servers (`baton doctor`, `baton check`): one
    /// worker, metrics of its own, and no listen address of its own, so
    /// any address may be probed, even one baton could listen on.
    pub fn detached(config: Config) -> Result<Self, String> {
        let mut rt = Runtime::new(config, 1, Arc::new(Metrics::new()))?;
        rt.dialer.own.clear();
        Ok(rt)
    }

    /// First route in file order whose host and path (prefix or regex) match. `host`
    /// is asked for only when a route names a host.
    pub fn route<'h>(&self, host: impl FnOnce() -> &'h str, path: &str) -> Option<usize> {
        let mut host = Some(host);
        let mut seen: Option<&str> = None;
        self.config.routes.iter().position(|r| {
            let host_ok = r.host.is_empty() || {
                let h = *seen.get_or_insert_with(|| host.take().map_or("", |f| f()));
                r.host.iter().any(|m| match m {
                    HostMatch::Exact(e) => e.eq_ignore_ascii_case(h),
                    HostMatch::Suffix(s) => {
                        h.len() > s.len() && h[h.len() - s.len()..].eq_ignore_ascii_case(s)
                    }
                })
            };
            host_ok
                && match &r.path_regex {
                    Some(re) => re.is_match(path),
                    None => path_matches(&r.path, path),
                }
        })
    }
}

/// `/api` matches `/api`, `/api/x` and `/api?q`, not `/apix`; a prefix
/// ending in `/` matches everything under it.
fn path_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        None => false,
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_prefixes() {
        assert!(path_matches("/", "/anything"));
        assert!(path_matches("/api", "/api"));
        assert!(path_matches("/api", "/api/v1"));
        assert!(!path_matches("/api", "/apix"));
        assert!(path_matches("/api/", "/api/x"));
    }
}
