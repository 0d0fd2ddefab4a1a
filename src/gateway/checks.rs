//! The active health checkers: one task per upstream with `[health]`,
//! probing every server at once each interval through the health module's
//! own probe, and logging each change of verdict.
//!
//! Owns: the checker tasks. They hold only a `Weak<Runtime>`, so a reload
//! that drops the runtime stops them. Must not: change a verdict other
//! than through `Health::check_result`.

use std::sync::{Arc, Weak};

use crate::core::cause::Cause;
use crate::gateway::Runtime;
use crate::upstream::health::{self, probe};
use crate::upstream::{Server, Upstream};

/// Starts the active checkers of every upstream that has `[health]`. They
/// stop by themselves when `rt` is replaced (reload) and dropped.
pub fn spawn_checkers(rt: &Arc<Runtime>) {
    for (i, up) in rt.upstreams.iter().enumerate() {
        if up.cfg.health.is_some() {
            tokio::spawn(checker(Arc::downgrade(rt), i));
        }
    }
}

async fn checker(rt: Weak<Runtime>, index: usize) {
    let mut first = true;
    loop {
        let interval = {
            let Some(rt) = rt.upgrade() else { return };
            let up = rt.upstreams[index].clone();
            let Some(cfg) = up.cfg.health.clone() else {
                return;
            };
            // All servers at once: a slow one must not delay the others.
            let mut probes = tokio::task::JoinSet::new();
            for (i, s) in up.servers.iter().enumerate() {
                let (rt, up, s, cfg) = (rt.clone(), up.clone(), s.clone(), cfg.clone());
                probes.spawn(async move { (i, probe(&rt.dialer, &up, s, &cfg).await) });
            }
            while let Some(Ok((i, result))) = probes.join_next().await {
                let server = &up.servers[i];
                if server.health.check_result(result.is_ok(), &cfg, first) {
                    note_health(&rt, &up, server, result.err());
                }
            }
            cfg.interval
        };
        first = false;
        tokio::time::sleep(interval).await;
    }
}

/// An active check changed a server's verdict: log and count it.
fn note_health(rt: &Runtime, up: &Upstream, server: &Server, why: Option<(Option<Cause>, String)>) {
    let to = if server.health.active() == health::Active::Up {
        "up"
    } else {
        "down"
    };
    rt.metrics.transition(&up.cfg.name, &server.label, to);
    let (cause, details) = why.map_or((None, String::new()), |(c, d)| (c.map(Cause::id), d));
    tracing::warn!(target: "baton::health", upstream = %up.cfg.name, server = %server.label, to, cause, details, "health check: server {to}");
}
