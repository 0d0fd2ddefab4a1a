//! Per-client rate limits with GCRA (the generic cell rate algorithm).
//!
//! Owns: one limiter per rate-limited route, keyed by client IP or a
//! header, and the IETF `RateLimit` / `RateLimit-Policy` header values.
//! Must not: know about routes or responses beyond the verdict.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::config::RateLimit;

const SHARDS: usize = 16;
/// Keys tracked per shard before idle ones are swept.
const SWEEP_AT: usize = 4096;

/// A route's limiter. Each key stores its theoretical arrival time (TAT).
pub struct Limiter {
    cfg: RateLimit,
    /// Emission interval in µs: one request per `per / rate`.
    t: u64,
    /// Burst tolerance in µs.
    tau: u64,
    shards: Vec<Mutex<HashMap<u64, u64>>>,
}

/// What the limiter decided.
pub struct Verdict {
    pub allowed: bool,
    /// Requests left in the burst right now.
    pub remaining: u64,
    /// Seconds until a request is allowed again (when refused) or until the
    /// burst is full again.
    pub reset_secs: u64,
}

impl Limiter {
    pub fn new(cfg: RateLimit) -> Self {
        let t = (cfg.per.as_micros() as u64 / u64::from(cfg.rate)).max(1);
        let tau = t * u64::from(cfg.burst.saturating_sub(1));
        Limiter {
            cfg,
            t,
            tau,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    pub fn config(&self) -> &RateLimit {
        &self.cfg
    }

    /// One request from `key` at `now_us`.
    pub fn check(&self, key: u64, now_us: u64) -> Verdict {
        let mut shard = self.shards[(key as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if shard.len() >= SWEEP_AT {
            shard.retain(|_, tat| *tat > now_us);
        }
        let tat = shard.get(&key).copied().unwrap_or(now_us).max(now_us);
        if tat > now_us + self.tau {
            let wait = tat - self.tau - now_us;
            return Verdict {
                allowed: false,
                remaining: 0,
                reset_secs: wait.div_ceil(1_000_000).max(1),
            };
        }
        let new_tat = tat + self.t;
        shard.insert(key, new_tat);
        let headroom = (now_us + self.tau + self.t).saturating_sub(new_tat);
        Verdict {
            allowed: true,
            remaining: headroom / self.t,
            reset_secs: (new_tat - now_us).div_ceil(1_000_000),
        }
    }

    /// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers).
    pub fn policy(&self) -> String {
        format!(
            "\"baton\";q={};w={}",
            self.cfg.burst,
            self.cfg.per.as_secs().max(1) * u64::from(self.cfg.burst)
                / u64::from(self.cfg.rate).max(1)
        )
    }

    /// `RateLimit` for a verdict.
    pub fn header(v: &Verdict) -> String {
        format!("\"baton\";r={};t={}", v.remaining, v.reset_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RateKey;
    use std::time::Duration;

    #[test]
    fn gcra_allows_the_burst_then_the_rate() {
        let l = Limiter::new(RateLimit {
            rate: 2,
            per: Duration::from_secs(1),
            burst: 3,
            key: RateKey::ClientIp,
        });
        let allowed: Vec<bool> = (0..5).map(|_| l.check(7, 0).allowed).collect();
        assert_eq!(allowed, vec![true, true, true, false, false]);
        let v = l.check(7, 0);
        assert_eq!(v.reset_secs, 1);
        assert!(l.check(7, 500_000).allowed, "one more after 1/rate");
        assert!(!l.check(7, 500_000).allowed);
        assert!(l.check(8, 0).allowed, "keys are independent");
    }
}
