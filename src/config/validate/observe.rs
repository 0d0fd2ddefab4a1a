//! `[incidents]` and `[alerts]`.

use std::time::Duration;

use super::Validator;
use crate::config::raw;
use crate::config::*;

impl Validator<'_> {
    /// `[cache]`: sizes as `"256MiB"`, `"1GiB"`, `"512KiB"` or bytes.
    pub(super) fn cache(&mut self, r: &raw::Cache) -> CacheConfig {
        let memory = self.size("cache.memory", &r.memory, 64 << 20);
        let max_object = self.size("cache.max_object", &r.max_object, 8 << 20);
        let disk = r.dir.as_ref().map(|d| {
            let dir = self.path(d.get_ref());
            if let Err(e) = std::fs::create_dir_all(&dir) {
                self.err(
                    "cache.dir",
                    d.span(),
                    format!("cannot create {}: {e}", dir.display()),
                    "give a directory baton can write (e.g. /var/cache/baton), or remove dir for a memory-only cache",
                );
            }
            (dir, self.size("cache.disk", &r.disk, 1 << 30))
        });
        CacheConfig {
            disk,
            memory,
            max_object,
            lock_timeout: self.duration(
                "cache.lock_timeout",
                &r.lock_timeout,
                Duration::from_secs(5),
            ),
        }
    }

    fn size(&mut self, key: &str, v: &Option<toml::Spanned<String>>, default: u64) -> u64 {
        let Some(x) = v else { return default };
        match parse_size(x.get_ref()) {
            Some(n) if n > 0 => n,
            _ => {
                self.err(
                    key,
                    x.span(),
                    format!("{:?} is not a size", x.get_ref()),
                    "write \"256MiB\", \"1GiB\", \"512KiB\" or a number of bytes",
                );
                default
            }
        }
    }

    pub(super) fn incidents(&mut self, r: &raw::Incidents) -> IncidentConfig {
        let error_rate = match &r.error_rate {
            None => 0.2,
            Some(e) if *e.get_ref() > 0.0 && *e.get_ref() <= 1.0 => *e.get_ref(),
            Some(e) => {
                self.err(
                    "incidents.error_rate",
                    e.span(),
                    format!("{} is not a share of requests", e.get_ref()),
                    "write a number above 0 and at most 1, e.g. 0.2 for 20%",
                );
                0.2
            }
        };
        IncidentConfig {
            // Recorded by default, so `baton incidents` works on a fresh
            // install; "off" records nothing.
            dir: match r.dir.as_ref().map(|d| d.get_ref().as_str()) {
                None => Some(crate::config::state_dir().join("incidents")),
                Some("off") => None,
                Some(d) => Some(self.path(d)),
            },
            error_rate,
            min_requests: self.int(
                "incidents.min_requests",
                &r.min_requests,
                1,
                1_000_000,
                5,
                "use 1 or more",
            ) as u64,
            window: self.duration("incidents.window", &r.window, Duration::from_secs(30)),
            recover_after: self.duration(
                "incidents.recover_after",
                &r.recover_after,
                Duration::from_secs(30),
            ),
            max_age: self.duration(
                "incidents.max_age",
                &r.max_age,
                Duration::from_secs(90 * 86_400),
            ),
            max_incidents: self.int(
                "incidents.max_incidents",
                &r.max_incidents,
                1,
                10_000_000,
                10_000,
                "use 1 or more",
            ) as u64,
        }
    }

    pub(super) fn alerts(&mut self, r: &raw::Alerts) -> AlertConfig {
        let webhook = r
            .webhook
            .as_ref()
            .and_then(|w| match w.get_ref().parse::<http::Uri>() {
                Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {
                    Some(u)
                }
                _ => {
                    self.err(
                        "alerts.webhook",
                        w.span(),
                        format!("{:?} is not an http:// or https:// URL", w.get_ref()),
                        "write webhook = \"https://hooks.example.com/baton\"",
                    );
                    None
                }
            });
        let slack = match &r.format {
            None => false,
            Some(f) if f.get_ref() == "json" => false,
            Some(f) if f.get_ref() == "slack" => true,
            Some(f) => {
                self.err(
                    "alerts.format",
                    f.span(),
                    format!("unknown format {:?}", f.get_ref()),
                    "write format = \"json\" (baton's) or \"slack\" (Slack-compatible {\"text\"})",
                );
                false
            }
        };
        let webhook_ca = r
            .webhook_ca
            .as_ref()
            .map(|c| self.pem_certs("alerts.webhook_ca".into(), c))
            .unwrap_or_default();
        AlertConfig {
            webhook,
            webhook_ca,
            slack,
            command: r.command.as_ref().map(|c| c.get_ref().clone()),
            min_interval: self.duration(
                "alerts.min_interval",
                &r.min_interval,
                Duration::from_secs(300),
            ),
        }
    }
}

/// `"256MiB"`, `"1GiB"`, `"512KiB"`, `"10MB"`, `"4096"`.
fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}
