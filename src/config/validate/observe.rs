//! `[incidents]` and `[alerts]`.

use std::time::Duration;

use super::Validator;
use crate::config::raw;
use crate::config::*;

impl Validator<'_> {
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
