//! Reload: re-read the config file and swap a new runtime in, or keep the
//! running one and return every problem.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{Gateway, Runtime, checks};
use crate::upstream;

impl Gateway {
    /// Re-reads the config file and swaps it in. A bad file changes
    /// nothing: the old config keeps serving and the errors are returned.
    /// In-flight requests finish on the old config; its pooled connections
    /// close when the last of them ends, and its health checkers stop.
    pub fn reload(self: &Arc<Self>) -> Result<Vec<String>, String> {
        let old = self.runtime.load_full();
        let Some(path) = old.config.source.clone() else {
            return Err("this gateway was not started from a config file".into());
        };
        let cfg = crate::config::load(&path).map_err(|e| e.to_string())?;
        let mut notes = Vec::new();
        let c = &old.config;
        if cfg.listen != c.listen || cfg.admin != c.admin || cfg.workers != c.workers {
            notes.push("listen, admin and workers changes take effect after a restart".to_string());
        }
        if cfg.log.access != c.log.access
            || cfg.log.errors != c.log.errors
            || cfg.log.access_format != c.log.access_format
        {
            notes.push("[log] changes take effect after a restart".to_string());
        }
        if cfg.incidents != c.incidents || cfg.alerts != c.alerts {
            notes.push("[incidents] and [alerts] changes take effect after a restart".to_string());
        }
        let workers = old.upstreams.first().map_or(1, |u| u.workers());
        let mut rt = Runtime::new(cfg, workers, self.metrics.clone())?;
        rt.dialer.own = old.dialer.own.clone();
        // A drain is the operator's decision (a deploy in progress): it
        // outlives a reload for the same server of the same upstream.
        for up in &rt.upstreams {
            let Some(was) = old.upstreams.iter().find(|o| o.cfg.name == up.cfg.name) else {
                continue;
            };
            for s in &up.servers {
                if was
                    .servers
                    .iter()
                    .any(|o| o.label == s.label && o.health.draining.load(Ordering::Relaxed))
                {
                    s.health.draining.store(true, Ordering::Relaxed);
                    notes.push(format!(
                        "{}: still draining (POST /undrain to end it)",
                        s.label
                    ));
                }
            }
        }
        let rt = Arc::new(rt);
        checks::spawn_checkers(&rt);
        upstream::spawn_reapers(&rt.upstreams);
        for (key, problem) in crate::upstream::socket_findings(&rt.config, true) {
            notes.push(format!("{key}: {}", problem.message()));
        }
        self.tls.reload(&rt.config.tls);
        self.runtime.store(rt);
        self.publish_certificates();
        self.sync_acme();
        self.sync_supervisors();
        tracing::info!(file = %path.display(), notes = %notes.join("; "), "config reloaded");
        self.metrics.incidents.event(
            "reload",
            None,
            format!("config reloaded from {}", path.display()),
        );
        Ok(notes)
    }
}
