//! The running gateway: everything built from one config (a [`Runtime`]),
//! swapped whole on reload, and what outlives a reload: supervised
//! backends, drains, metrics, the log writers.
//!
//! Owns: [`Gateway`] (the `ArcSwap` of the runtime, supervisors, request
//! IDs), reload, drain, the active health checkers. Must not: serve a
//! request (`proxy`) or listen (`server`).

pub mod acme;
pub mod cache;
pub mod checks;
pub mod limit;
pub mod ocsp;
mod reload;
mod runtime;
pub mod tls;

pub use runtime::{RouteMetrics, Runtime};

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use http::HeaderValue;

use crate::observe::log::Logs;
use crate::observe::metrics::Metrics;
use crate::upstream::health;
use crate::upstream::supervise::Supervisor;

/// The running gateway shared by every connection.
pub struct Gateway {
    pub runtime: ArcSwap<Runtime>,
    pub logs: Logs,
    pub metrics: Arc<Metrics>,
    ids: RequestIds,
    /// Supervised backends by upstream name; they outlive reloads that
    /// leave their `[process]` unchanged.
    supervisors: ArcSwap<std::collections::HashMap<Arc<str>, Arc<Supervisor>>>,
    /// The first HTTPS listener's port as bound (redirects to https name
    /// it); 0 before the listeners are bound or without one.
    pub https_port: std::sync::atomic::AtomicU16,
    /// HTTPS listeners' certificates (the config's and ACME's).
    pub tls: tls::Tls,
    /// The shared HTTP cache (`cache = true` routes), kept across
    /// reloads (its size is the first config's `[cache] memory`).
    pub cache: Arc<cache::Store>,
    /// Small static files' contents, for every upstream's root (kept
    /// across reloads; each hit is checked against the file's `fstat`).
    pub files: crate::upstream::files::FileCache,
    /// The `[tls.acme]` task, and the config it runs.
    acme: std::sync::Mutex<Option<(crate::config::AcmeConfig, tokio::task::JoinHandle<()>)>>,
}

impl Gateway {
    /// Starts serving `rt` (and its health checkers).
    pub fn new(rt: Runtime, logs: Logs) -> Self {
        let rt = Arc::new(rt);
        checks::spawn_checkers(&rt);
        crate::upstream::spawn_reapers(&rt.upstreams);
        Gateway {
            cache: Arc::new(cache::Store::new(
                rt.config.cache.memory,
                rt.config.cache.disk.clone(),
            )),
            tls: tls::Tls::new(&rt.config.tls),
            metrics: rt.metrics.clone(),
            runtime: ArcSwap::new(rt),
            logs,
            ids: RequestIds::new(),
            supervisors: ArcSwap::from_pointee(Default::default()),
            https_port: std::sync::atomic::AtomicU16::new(0),
            files: crate::upstream::files::FileCache::new(64 * 1024 * 1024),

            acme: std::sync::Mutex::new(None),
        }
    }

    /// Every certificate served, by name: `(name, source, not_after)`,
    /// `source` being `file` (`[[tls.certificates]]`) or `acme`.
    pub fn certificates(&self) -> Vec<(String, &'static str, i64)> {
        let rt = self.runtime.load();
        let mut out: Vec<(String, &'static str, i64)> = rt
            .config
            .tls
            .certificates
            .iter()
            .flat_map(|c| c.names.iter().map(|n| (n.clone(), "file", c.not_after)))
            .collect();
        if let Ok(e) = self.tls.acme.expiry.lock() {
            out.extend(e.iter().map(|(n, t)| (n.clone(), "acme", *t)));
        }
        out.sort();
        out
    }

    /// Sets the certificate expiry gauges.
    pub fn publish_certificates(&self) {
        let g = &self.metrics.certificate_expiry;
        g.clear();
        for (name, source, not_after) in self.certificates() {
            g.get_or_create(&crate::observe::metrics::CertLabels { name, source })
                .set(not_after);
        }
    }

    /// Checks every hour (first at once) for certificates that expire
    /// within `tls.expiry_warning`: each is logged as a warning and
    /// recorded as an event (the dashboard's "What changed", incident
    /// timelines) once a day.
    pub fn spawn_certificate_watch(self: &Arc<Self>) {
        let gw = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut said: std::collections::HashMap<String, i64> = Default::default();
            loop {
                let Some(g) = gw.upgrade() else { return };
                let now = crate::core::clock::now_s();
                let within = g.runtime.load().config.tls.expiry_warning.as_secs() as i64;
                for (name, source, not_after) in g.certificates() {
                    let left = not_after - now;
                    if left >= within || said.get(&name).is_some_and(|t| now - t < 86_400) {
                        continue;
                    }
                    said.insert(name.clone(), now);
                    let text = if left <= 0 {
                        format!(
                            "the certificate for {name} ({source}) has expired: browsers refuse it"
                        )
                    } else {
                        format!(
                            "the certificate for {name} ({source}) expires in {} days",
                            left / 86_400
                        )
                    };
                    let fix = if source == "acme" {
                        "ACME has not renewed it: look for \"ACME certificate not obtained\" in the log"
                    } else {
                        "renew it and reload (`baton reload`)"
                    };
                    tracing::warn!(target: "baton::tls", name = %name, source, days_left = left / 86_400, fix, "{text}");
                    let text = format!("{text}; {fix}");
                    g.metrics.incidents.event("certificate", None, text.clone());
                    crate::observe::incidents::send_notice(
                        &g.runtime.load().config.alerts,
                        "certificate_expiring",
                        &text,
                    );
                }
                drop(g);
                tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
            }
        });
    }

    /// Starts, restarts or stops the ACME task to match the config's
    /// `[tls.acme]` (a reload that leaves it unchanged leaves it running).
    pub fn sync_acme(self: &Arc<Self>) {
        let want = self.runtime.load().config.tls.acme.clone();
        let Ok(mut cur) = self.acme.lock() else {
            return;
        };
        if cur.as_ref().map(|(c, _)| c) == want.as_ref() {
            return;
        }
        if let Some((_, task)) = cur.take() {
            task.abort();
        }
        if let Some(cfg) = want {
            let task = acme::spawn(self, cfg.clone());
            *cur = Some((cfg, task));
        }
    }

    /// Starts the detector: the dashboard's series always, incidents when
    /// `[incidents]` is configured. It ends with the gateway.
    pub fn spawn_incidents(self: &Arc<Self>) {
        let rt = self.runtime.load();
        let cfg = rt.config.incidents.clone();
        let alerts = rt.config.alerts.clone();
        let gw = Arc::downgrade(self);
        tokio::spawn(crate::observe::incidents::detect(
            self.metrics.incidents.clone(),
            cfg,
            alerts,
            move |name| {
                let gw = gw.upgrade()?;
                let rt = gw.runtime.load();
                let now = crate::core::clock::now_ms();
                let usable = rt
                    .upstreams
                    .iter()
                    .find(|u| &*u.cfg.name == name)
                    .map(|u| u.servers.iter().any(|s| s.health.usable(now)));
                let restarts = gw.supervisor(name).map(|s| s.status().restarts);
                Some(crate::observe::incidents::UpstreamNow { usable, restarts })
            },
            {
                let gw = Arc::downgrade(self);
                move |id| {
                    gw.upgrade()
                        .map_or_else(Vec::new, |gw| gw.logs.failure_lines(id))
                }
            },
        ));
    }

    /// A new request ID (16 hex digits).
    pub fn next_request_id(&self) -> HeaderValue {
        self.ids.next()
    }

    /// The supervisor of an upstream's backend, if it has one.
    pub fn supervisor(&self, upstream: &str) -> Option<Arc<Supervisor>> {
        self.supervisors.load().get(upstream).cloned()
    }

    /// Every supervisor, by upstream name.
    pub fn supervisors(&self) -> Vec<Arc<Supervisor>> {
        let mut v: Vec<_> = self.supervisors.load().values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Starts a supervisor for each upstream with `[process]` in the
    /// running config, keeps those whose `[process]` did not change,
    /// restarts changed ones and stops removed ones.
    pub fn sync_supervisors(self: &Arc<Self>) {
        let rt = self.runtime.load_full();
        let old = self.supervisors.load_full();
        let mut next = std::collections::HashMap::new();
        for u in &rt.upstreams {
            let Some(pc) = &u.cfg.process else { continue };
            let name = u.cfg.name.clone();
            let sup = match old.get(&name) {
                Some(s) if *s.cfg == **pc => s.clone(),
                prev => {
                    let weak = Arc::downgrade(self);
                    let probe_name = name.clone();
                    let probe: crate::upstream::supervise::HealthProbe = Arc::new(move || {
                        let gw = weak.upgrade()?;
                        let rt = gw.runtime.load();
                        let up = rt.upstreams.iter().find(|u| u.cfg.name == probe_name)?;
                        up.cfg.health.as_ref()?;
                        Some(
                            up.servers
                                .iter()
                                .any(|s| s.health.active() == health::Active::Up),
                        )
                    });
                    Supervisor::spawn(name.clone(), pc.clone(), probe, prev.cloned())
                }
            };
            next.insert(name, sup);
        }
        for (name, s) in old.iter() {
            if !next.contains_key(name) {
                let s = s.clone();
                tokio::spawn(async move { s.stop().await });
            }
        }
        self.supervisors.store(Arc::new(next));
    }

    /// Waits (each at most its start_wait) for the supervised backends to
    /// be ready, so the first requests do not wait.
    pub async fn backends_ready(&self) {
        for s in self.supervisors() {
            let _ = s.wait_ready(None, std::time::Instant::now()).await;
        }
    }

    /// Stops every supervised backend gracefully.
    pub async fn stop_supervisors(&self) {
        let all = self.supervisors();
        self.supervisors.store(Arc::new(Default::default()));
        for s in all {
            s.stop().await;
        }
    }

    /// Starts (`Some(true)`) or stops draining the server labelled `label`,
    /// or just reports; returns (draining, requests in flight), or `None`
    /// if no upstream has that server.
    pub fn drain(&self, label: &str, on: Option<bool>) -> Option<(bool, usize)> {
        let rt = self.runtime.load();
        let mut found: Option<(bool, usize)> = None;
        for up in &rt.upstreams {
            for s in up.servers.iter().filter(|s| &*s.label == label) {
                if let Some(on) = on {
                    s.health.draining.store(on, Ordering::Relaxed);
                }
                let f = found.get_or_insert((false, 0));
                f.0 |= s.health.draining.load(Ordering::Relaxed);
                f.1 += s.inflight.load(Ordering::Relaxed);
            }
        }
        found
    }

    /// Publishes log drops into the metric (called when metrics are read).
    pub fn sync_counters(&self) {
        let (bytes, entries) = self.cache.size();
        self.metrics.cache_bytes.set(bytes as i64);
        self.metrics.cache_entries.set(entries as i64);
        let ev = self
            .cache
            .evictions
            .load(std::sync::atomic::Ordering::Relaxed);
        let c = &self.metrics.cache_evictions;
        if ev > c.get() {
            c.inc_by(ev - c.get());
        }
        for sup in self.supervisors() {
            let st = sup.status();
            for state in [
                crate::upstream::supervise::State::Starting,
                crate::upstream::supervise::State::Running,
                crate::upstream::supervise::State::Backoff,
                crate::upstream::supervise::State::Stopped,
            ] {
                self.metrics
                    .backend_state
                    .get_or_create(&crate::observe::metrics::BackendLabels {
                        upstream: sup.name.clone(),
                        state: state.as_str(),
                    })
                    .set((st.state == state) as i64);
            }
            let c = self.metrics.backend_restarts.get_or_create(
                &crate::observe::metrics::UpstreamLabels {
                    upstream: sup.name.clone(),
                },
            );
            if st.restarts > c.get() {
                c.inc_by(st.restarts - c.get());
            }
        }
        let d = self.logs.access.dropped.load(Ordering::Relaxed)
            + self.logs.errors.dropped.load(Ordering::Relaxed);
        let cur = self.metrics.log_dropped.get();
        if d > cur {
            self.metrics.log_dropped.inc_by(d - cur);
        }
    }
}

/// Request IDs: unique per process, not guessable across restarts.
struct RequestIds {
    seed: u64,
    counter: AtomicU64,
}

impl RequestIds {
    fn new() -> Self {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let seed =
            (t.as_nanos() as u64) ^ (u64::from(std::process::id()) << 32) ^ (&t as *const _ as u64);
        RequestIds {
            seed,
            counter: AtomicU64::new(0),
        }
    }
    fn next(&self) -> HeaderValue {
        // splitmix64 of seed + counter: a bijection, so IDs never repeat
        // within a process.
        let mut z = self.seed.wrapping_add(
            self.counter
                .fetch_add(1, Ordering::Relaxed)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut buf = [0u8; 16];
        for (i, b) in buf.iter_mut().enumerate() {
            *b = HEX[((z >> (60 - 4 * i)) & 0xf) as usize];
        }
        HeaderValue::from_bytes(&buf).expect("hex is a valid header value")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_unique() {
        let ids = RequestIds::new();
        let a = ids.next();
        let b = ids.next();
        assert_ne!(a, b);
        assert_eq!(a.len(), 16);
    }
}
