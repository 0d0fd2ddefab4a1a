//! What the dashboard shows (`GET /api/state` on the admin address): each
//! upstream's servers and their state, its supervised process, its tally
//! and queue; the routes; open incidents, the series and recent events;
//! the running config with secrets hidden.

use std::sync::atomic::Ordering;

use crate::gateway::Gateway;

/// Everything the dashboard shows, as of now (`GET /api/state`).
pub fn state(gw: &Gateway) -> serde_json::Value {
    use serde_json::json;
    let rt = gw.runtime.load();
    let now = crate::core::clock::now_ms();
    let upstreams: Vec<serde_json::Value> = rt
        .upstreams
        .iter()
        .map(|u| {
            let servers: Vec<serde_json::Value> = u
                .servers
                .iter()
                .map(|s| {
                    json!({
                        "server": &*s.label,
                        "usable": s.health.usable(now),
                        "active": format!("{:?}", s.health.active()).to_ascii_lowercase(),
                        "ejected": s.health.ejected(now),
                        "draining": s.health.draining.load(Ordering::Relaxed),
                        "inflight": s.inflight.load(Ordering::Relaxed),
                        // Its last requests failed (passive results, also
                        // when nothing may eject it: the last server).
                        "failing": s.health.failing().map(|(n, what)| json!({"in_a_row": n, "last": what})),
                    })
                })
                .collect();
            let process = gw.supervisor(&u.cfg.name).map(|s| {
                let st = s.status();
                json!({"state": st.state.as_str(), "restarts": st.restarts, "pid": st.pid, "last_exit": st.last_exit})
            });
            json!({
                "name": &*u.cfg.name,
                "servers": servers,
                "process": process,
                "tally": gw.metrics.incidents.view(&u.cfg.name),
                "queue": u.slots.as_ref().map(|q| json!({"waiting": q.waiting(), "limit": q.limit().unwrap_or(u.cfg.max_concurrent.unwrap_or(0))})),
                "read_timeout_ms": u.cfg.read_timeout.as_millis() as u64,
                "connect_timeout_ms": u.cfg.connect_timeout.as_millis() as u64,
                "retries": u.cfg.retries,
            })
        })
        .collect();
    let routes: Vec<serde_json::Value> = rt
        .config
        .routes
        .iter()
        .map(|r| {
            json!({
                "name": &*r.name,
                "host": if r.host.is_empty() { "*".to_string() } else { r.host.iter().map(|h| h.to_string()).collect::<Vec<_>>().join(" ") },
                "path": r.path,
                "upstream": r.upstream.map_or("(redirect)", |u| &*rt.config.upstreams[u].name),
            })
        })
        .collect();
    let now_s = crate::core::clock::now_s();
    let within = rt.config.tls.expiry_warning.as_secs() as i64;
    let certificates: Vec<serde_json::Value> = gw
        .certificates()
        .into_iter()
        .map(|(name, source, not_after)| {
            let left = not_after - now_s;
            json!({"name": name, "source": source, "not_after": not_after, "days_left": left.div_euclid(86_400), "expiring": left < within})
        })
        .collect();
    let handshake_failures: serde_json::Map<String, serde_json::Value> =
        crate::observe::metrics::TLS_FAILURE_REASONS
            .iter()
            .map(|&reason| {
                let n = gw
                    .metrics
                    .tls_handshake_failures
                    .get_or_create(&crate::observe::metrics::TlsFailureLabels { reason })
                    .get();
                (reason.to_string(), json!(n))
            })
            .collect();
    let events: serde_json::Map<String, serde_json::Value> = crate::observe::metrics::CACHE_EVENTS
        .iter()
        .map(|&event| {
            let n = gw
                .metrics
                .cache
                .get_or_create(&crate::observe::metrics::CacheLabels { event })
                .get();
            (event.to_string(), json!(n))
        })
        .collect();
    let (bytes, entries) = gw.cache.size();
    json!({
        "cache": {
            "routes": rt.config.routes.iter().filter(|r| r.cache.is_some()).map(|r| &*r.name).collect::<Vec<_>>(),
            "memory": rt.config.cache.memory,
            "bytes": bytes,
            "entries": entries,
            "events": events,
        },
        "tls": {
            "listen": rt.config.tls.listen.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "certificates": certificates,
            "handshake_failures": handshake_failures,
        },
        "time": crate::core::clock::now(),
        "version": env!("CARGO_PKG_VERSION"),
        "listen": rt.config.listen.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "upstreams": upstreams,
        "routes": routes,
        "incidents_open": gw.metrics.incidents.open_incidents(),
        "latency_bounds_ms": crate::observe::incidents::latency_bounds_ms(),
        "series": gw.metrics.incidents.series(),
        "actions": rt.config.dashboard_actions,
        "config_toml": rt.config.shown,
        "events": gw.metrics.incidents.recent_events(30),
        // The running config, without what could be a secret: the
        // alert webhook's path and query, the alert command.
        "config": {
            "incidents": {"recorded": rt.config.incidents.dir.is_some(), "error_rate": rt.config.incidents.error_rate, "window_s": rt.config.incidents.window.as_secs(), "min_requests": rt.config.incidents.min_requests},
            "alerts": {
                "webhook": rt.config.alerts.webhook.as_ref().map(crate::core::text::shown_url),
                "command": rt.config.alerts.command.as_ref().map(|_| "(set)"),
            },
        },
    })
}
