//! Who is healthy: the per-server state machine fed by active checks and by
//! the outcome of real requests (passive outlier ejection).
//!
//! Owns: [`Health`] (named states, ejection with a growing duration, slow
//! start) and one active probe (the checker tasks are `gateway::checks`). Must not: choose servers (that is
//! `balance`) or decide retries (`proxy`). Only atomics on the request path.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method, Uri, header};
use http_body_util::BodyExt;

use super::exchange::{self, Head, NoHead};
use crate::config::{HealthConfig, OutlierConfig};
use crate::core::cause::Cause;
use crate::upstream::{Dialer, Server, UpBody, Upstream};

/// The active-check verdict on a server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Active {
    /// Not yet passed a check (at start, or after failing): no traffic.
    Down = 0,
    Up = 1,
}

/// A server's health, shared by the checker, the balancer and the proxy.
#[derive(Debug)]
pub struct Health {
    active: AtomicU8,
    /// Checks passed / failed in a row (written only by the checker).
    passes: AtomicU32,
    fails: AtomicU32,
    /// Request failures in a row (passive).
    consecutive: AtomicU32,
    /// Times ejected; the next ejection lasts base * 2^(ejections).
    ejections: AtomicU32,
    /// While now < this, the server is ejected (ms, `now_ms` clock).
    ejected_until: AtomicU64,
    /// When it last became usable (for slow start).
    up_since: AtomicU64,
    /// When the next active check is due (for `Retry-After`).
    next_check: AtomicU64,
    /// Set by the admin drain call: no new requests, in-flight ones finish.
    pub draining: std::sync::atomic::AtomicBool,
    /// Requests that failed on it in a row, whatever the outlier settings
    /// (what the dashboard shows; ejection counts `consecutive`), and the
    /// last one's cause: 0 none, `FIVE_XX`, else 1 + its index in
    /// `Cause::ALL`.
    failing: AtomicU32,
    last_failure: std::sync::atomic::AtomicU16,
}

/// [`Health::last_failure`]: the application answered 5xx (`count_5xx`).
const FIVE_XX: u16 = u16::MAX;

/// What a recorded outcome changed, for logs and metrics.
#[derive(Debug, PartialEq, Eq)]
pub enum Transition {
    None,
    Ejected(Duration),
    Returned,
}

impl Health {
    /// With active checks a server starts `Down` until its first pass.
    pub fn new(active_checks: bool) -> Self {
        Health {
            active: AtomicU8::new(if active_checks {
                Active::Down as u8
            } else {
                Active::Up as u8
            }),
            passes: AtomicU32::new(0),
            fails: AtomicU32::new(0),
            consecutive: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            up_since: AtomicU64::new(0),
            next_check: AtomicU64::new(0),
            draining: std::sync::atomic::AtomicBool::new(false),
            failing: AtomicU32::new(0),
            last_failure: std::sync::atomic::AtomicU16::new(0),
        }
    }

    /// A request failed on it in a way that counts against it (`None`: an
    /// application 5xx counted by `count_5xx`).
    pub fn note_failure(&self, cause: Option<Cause>) {
        let code = match cause {
            Some(c) => 1 + Cause::ALL.iter().position(|x| *x == c).unwrap_or(0) as u16,
            None => FIVE_XX,
        };
        self.last_failure.store(code, Ordering::Relaxed);
        self.failing.fetch_add(1, Ordering::Relaxed);
    }

    /// Requests failed on it in a row, and what the last one was (a cause
    /// id, or `"5xx"`); `None` when its last request succeeded.
    pub fn failing(&self) -> Option<(u32, &'static str)> {
        let n = self.failing.load(Ordering::Relaxed);
        if n == 0 {
            return None;
        }
        let what = match self.last_failure.load(Ordering::Relaxed) {
            FIVE_XX => "5xx",
            0 => "",
            i => Cause::ALL.get(i as usize - 1).map_or("", |c| c.id()),
        };
        Some((n, what))
    }

    pub fn active(&self) -> Active {
        if self.active.load(Ordering::Relaxed) == Active::Up as u8 {
            Active::Up
        } else {
            Active::Down
        }
    }

    pub fn ejected(&self, now: u64) -> bool {
        now < self.ejected_until.load(Ordering::Relaxed)
    }

    /// May receive traffic now.
    pub fn usable(&self, now: u64) -> bool {
        self.active() == Active::Up && !self.ejected(now) && !self.draining.load(Ordering::Relaxed)
    }

    /// When this server could next become usable (ms), for `Retry-After`.
    pub fn back_at(&self, now: u64) -> u64 {
        let mut t = now;
        if self.ejected(now) {
            t = t.max(self.ejected_until.load(Ordering::Relaxed));
        }
        if self.active() == Active::Down {
            t = t.max(self.next_check.load(Ordering::Relaxed));
        }
        t
    }

    /// Weight multiplier in 1/1000 during slow start after coming back.
    pub fn ramp(&self, now: u64, slow_start: Duration) -> u64 {
        let window = slow_start.as_millis() as u64;
        if window == 0 {
            return 1000;
        }
        let since = self
            .up_since
            .load(Ordering::Relaxed)
            .max(self.ejected_until.load(Ordering::Relaxed));
        // 0: up since the start, or never away (not a time: `now_ms` is
        // counted from the process's first reading, so it is small for the
        // first `slow_start` after baton starts).
        if since == 0 {
            return 1000;
        }
        let elapsed = now.saturating_sub(since);
        (elapsed * 1000 / window).clamp(50, 1000)
    }

    /// An active check result. Returns true when the verdict changed.
    pub fn check_result(&self, ok: bool, cfg: &HealthConfig, first: bool) -> bool {
        let now = crate::core::clock::now_ms();
        self.next_check
            .store(now + cfg.interval.as_millis() as u64, Ordering::Relaxed);
        if ok {
            self.fails.store(0, Ordering::Relaxed);
            let p = self.passes.fetch_add(1, Ordering::Relaxed) + 1;
            // At start one pass is enough; after failing, `rise` in a row.
            if self.active() == Active::Down && (p >= cfg.rise || first) {
                self.active.store(Active::Up as u8, Ordering::Relaxed);
                // Slow start is for servers coming back, not for the first
                // pass at start, when every server would ramp together.
                self.up_since
                    .store(if first { 0 } else { now }, Ordering::Relaxed);
                return true;
            }
        } else {
            self.passes.store(0, Ordering::Relaxed);
            let f = self.fails.fetch_add(1, Ordering::Relaxed) + 1;
            if self.active() == Active::Up && f >= cfg.fall {
                self.active.store(Active::Down as u8, Ordering::Relaxed);
                return true;
            }
        }
        false
    }

    /// A request succeeded on this server.
    pub fn record_success(&self, now: u64) -> Transition {
        self.consecutive.store(0, Ordering::Relaxed);
        if self.failing.load(Ordering::Relaxed) != 0 {
            self.failing.store(0, Ordering::Relaxed);
        }
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until != 0 && now >= until {
            // First success after an ejection ended: it is back. The next
            // ejection still lasts longer (ejections is kept), so a flapping
            // server is kept out for longer each time.
            if self
                .ejected_until
                .compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                self.up_since.store(until, Ordering::Relaxed);
                return Transition::Returned;
            }
        }
        Transition::None
    }

    /// A request failed on this server in a way that counts against it
    /// (`Cause::counts_against_server`, or an app 5xx with `count_5xx`).
    /// `ejected_peers` and `pool` bound how much of the pool may be out.
    pub fn record_failure(
        &self,
        cfg: &OutlierConfig,
        now: u64,
        ejected_peers: usize,
        pool: usize,
    ) -> Transition {
        if cfg.consecutive_failures == 0 || self.ejected(now) {
            return Transition::None;
        }
        let n = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        if n < cfg.consecutive_failures {
            return Transition::None;
        }
        if (ejected_peers + 1) * 100 > cfg.max_ejected_percent as usize * pool {
            return Transition::None;
        }
        self.consecutive.store(0, Ordering::Relaxed);
        let k = self.ejections.fetch_add(1, Ordering::Relaxed).min(16);
        let d = cfg
            .base_ejection
            .saturating_mul(1 << k)
            .min(cfg.max_ejection);
        self.ejected_until
            .store(now + d.as_millis() as u64, Ordering::Relaxed);
        Transition::Ejected(d)
    }
}

/// One active check: connect (TCP) or `GET path` (HTTP, or FastCGI as
/// PHP-FPM's `ping.path`) within the timeout, through the same
/// [`exchange`](super::exchange::exchange) as a proxied request. Also
/// `baton check`'s live probe of every server.
pub async fn probe(
    dialer: &Dialer,
    up: &Upstream,
    server: Arc<Server>,
    cfg: &HealthConfig,
) -> Result<(), (Option<Cause>, String)> {
    let no_answer = || (None, format!("no answer within {:?}", cfg.timeout));
    let work = async {
        // A FastCGI check asks a worker as a request would (a pooled or
        // handed-on connection): a new connection would wait in the accept
        // queue behind the workers baton's own connections hold.
        let conn = match up.cfg.fastcgi {
            Some(_) => server.acquire(&up.cfg, dialer, false).await,
            None => server.connect(&up.cfg, dialer).await,
        };
        let mut conn = conn.map_err(|(f, _)| (Some(f.cause), f.details.unwrap_or_default()))?;
        let Some(path) = &cfg.path else { return Ok(()) };
        let host = server
            .label
            .rsplit_once(':')
            .map_or(&*server.label, |(h, _)| h);
        let mut headers = HeaderMap::new();
        headers.insert(
            header::HOST,
            HeaderValue::from_str(host).map_err(|e| (None, e.to_string()))?,
        );
        headers.insert(
            header::USER_AGENT,
            HeaderValue::from_static("baton-health-check"),
        );
        let target: Uri = path
            .parse()
            .map_err(|e: http::uri::InvalidUri| (None, e.to_string()))?;
        let fcgi_head = match up.cfg.fastcgi.as_deref() {
            Some(fc) => super::fastcgi::health_request(fc, path),
            None => Vec::new(),
        };
        let req = exchange::Request {
            method: &Method::GET,
            target: &target,
            headers: &headers,
            added: &[],
            fcgi_head: &fcgi_head,
            body: UpBody::Empty,
            upgrade: false,
            request_id: &HeaderValue::from_static("health-check"),
        };
        let status = match exchange::exchange(&server, &up.cfg, &mut conn, req, cfg.timeout, 0)
            .await
        {
            Ok(Head { response, .. }) => {
                let status = response.status().as_u16();
                let mut body = super::TimedBody::new(response.into_body(), cfg.timeout);
                while let Some(Ok(_)) = body.frame().await {}
                if up.cfg.fastcgi.is_some()
                    && let Some(link) = body.take_wire()
                {
                    server.checkin(&up.cfg, link, conn.info.clone());
                }
                status
            }
            Err(NoHead::Failed(f)) => return Err((Some(f.cause), f.details.unwrap_or_default())),
            Err(NoHead::Unsent(_)) => {
                return Err((Some(Cause::ConnectionTerminated), "closed".into()));
            }
            Err(NoHead::TimedOut) => return Err(no_answer()),
        };
        if (cfg.expect.0..=cfg.expect.1).contains(&status) {
            Ok(())
        } else {
            Err((
                None,
                format!(
                    "GET {path} answered {status}, expected {}-{}",
                    cfg.expect.0, cfg.expect.1
                ),
            ))
        }
    };
    match tokio::time::timeout(cfg.timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(no_answer()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outlier() -> OutlierConfig {
        OutlierConfig {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(25),
            max_ejected_percent: 50,
            count_5xx: false,
        }
    }

    #[test]
    fn ejection_grows_and_is_capped() {
        let h = Health::new(false);
        let c = outlier();
        let mut now = 1000;
        let mut durations = Vec::new();
        for _ in 0..3 {
            let mut t = Transition::None;
            for _ in 0..3 {
                t = h.record_failure(&c, now, 0, 4);
            }
            let Transition::Ejected(d) = t else {
                panic!("{t:?}")
            };
            durations.push(d.as_secs());
            assert!(!h.usable(now));
            now += d.as_millis() as u64;
            assert!(h.usable(now));
            assert_eq!(h.record_success(now), Transition::Returned);
        }
        assert_eq!(durations, vec![10, 20, 25]);
    }

    #[test]
    fn never_ejects_more_than_the_share() {
        let h = Health::new(false);
        let c = outlier();
        for _ in 0..10 {
            assert_eq!(
                h.record_failure(&c, 1000, 0, 1),
                Transition::None,
                "a one-server pool is never ejected at 50%"
            );
        }
        assert_eq!(h.record_failure(&c, 1000, 1, 2), Transition::None);
    }

    #[test]
    fn application_errors_do_not_count() {
        assert!(Cause::ConnectionRefused.counts_against_server());
        assert!(Cause::ConnectionTerminated.counts_against_server());
        assert!(!Cause::ResponseHeaderTooLarge.counts_against_server());
        assert!(!Cause::ConcurrencyLimit.counts_against_server());
        assert!(!Cause::NoRoute.counts_against_server());
    }

    #[test]
    fn active_rise_and_fall() {
        let cfg = HealthConfig {
            path: None,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 2,
            expect: (200, 399),
            slow_start: Duration::ZERO,
        };
        let h = Health::new(true);
        assert_eq!(h.active(), Active::Down);
        assert!(h.check_result(true, &cfg, true), "one pass at start");
        assert!(!h.check_result(false, &cfg, false));
        assert!(h.check_result(false, &cfg, false), "down after `fall`");
        assert!(!h.check_result(true, &cfg, false));
        assert!(h.check_result(true, &cfg, false), "up after `rise`");
    }
}
