//! Spreading requests: which usable server gets the next attempt, and how
//! many requests an upstream takes at once.
//!
//! Owns: weighted round robin, least-request (power of two choices),
//! consistent hashing, backup servers, the concurrency limit with its
//! bounded queue, and `Retry-After` for "no server usable".
//! Must not: change health (that is `health`) or decide retries (`proxy`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::config::Balance;
use crate::upstream::{Server, Upstream};

/// Virtual nodes per unit of weight on the hash ring (ketama uses 160 per
/// server; 100 keeps key movement under ~10% for small pools).
const VNODES: u32 = 100;

/// FNV-1a: stable across processes and releases (ring points must not move
/// when baton restarts).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // Finalise (FNV alone spreads short keys poorly over the ring).
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

/// Builds the consistent-hash ring for `servers`.
pub fn ring(servers: &[Arc<Server>]) -> Vec<(u64, usize)> {
    let mut r = Vec::new();
    for (i, s) in servers.iter().enumerate() {
        for v in 0..VNODES * s.weight {
            r.push((fnv1a(format!("{}-{v}", s.label).as_bytes()), i));
        }
    }
    r.sort_unstable();
    r
}

impl Upstream {
    /// The server for the next attempt: usable, not yet tried by this
    /// request, a primary unless none is usable. `None`: nothing usable.
    pub fn choose(&self, tried: &[usize], key: Option<u64>, now: u64) -> Option<usize> {
        let ok = |i: usize, backup: bool| {
            let s = &self.servers[i];
            s.backup == backup && !tried.contains(&i) && s.health.usable(now)
        };
        if self.servers.len() == 1 {
            // The common single-server upstream (never a backup: config
            // refuses an all-backup list).
            return ok(0, false).then_some(0);
        }
        for backup in [false, true] {
            let pick = match (&self.cfg.balance, key) {
                (Balance::Hash(_), Some(k)) => self.by_hash(k, |i| ok(i, backup)),
                (Balance::LeastRequest, _) => self.least_request(|i| ok(i, backup)),
                _ => self.round_robin(now, |i| ok(i, backup)),
            };
            if pick.is_some() {
                return pick;
            }
        }
        None
    }

    /// Whether another server could take an attempt (does not advance the
    /// round robin: asking must not change whose turn it is).
    pub fn has_candidate(&self, tried: &[usize], now: u64) -> bool {
        self.servers
            .iter()
            .enumerate()
            .any(|(i, s)| !tried.contains(&i) && s.health.usable(now))
    }

    /// Weighted round robin over the candidates, with slow-start ramps.
    fn round_robin(&self, now: u64, ok: impl Fn(usize) -> bool) -> Option<usize> {
        let slow = self
            .cfg
            .health
            .as_ref()
            .map_or(Duration::ZERO, |h| h.slow_start);
        let weight =
            |i: usize| u64::from(self.servers[i].weight) * self.servers[i].health.ramp(now, slow);
        let total: u64 = (0..self.servers.len()).filter(|&i| ok(i)).map(weight).sum();
        if total == 0 {
            return None;
        }
        let mut n = (self.next.fetch_add(1, Ordering::Relaxed) as u64 * 1000) % total;
        for i in (0..self.servers.len()).filter(|&i| ok(i)) {
            let w = weight(i);
            if n < w {
                return Some(i);
            }
            n -= w;
        }
        None
    }

    /// Two candidates at random, the one with fewer requests in flight
    /// (relative to its weight) wins.
    fn least_request(&self, ok: impl Fn(usize) -> bool) -> Option<usize> {
        let c: Vec<usize> = (0..self.servers.len()).filter(|&i| ok(i)).collect();
        match c.len() {
            0 => None,
            1 => Some(c[0]),
            n => {
                let r = fnv1a(&(self.next.fetch_add(1, Ordering::Relaxed) as u64).to_le_bytes());
                let a = c[(r % n as u64) as usize];
                let mut b = c[((r >> 32) % (n as u64 - 1)) as usize];
                if b == a {
                    b = c[n - 1];
                }
                let load = |i: usize| {
                    self.servers[i].inflight.load(Ordering::Relaxed) * 1000
                        / self.servers[i].weight as usize
                };
                Some(if load(b) < load(a) { b } else { a })
            }
        }
    }

    /// The first candidate clockwise from the key's point on the ring.
    fn by_hash(&self, key: u64, ok: impl Fn(usize) -> bool) -> Option<usize> {
        if self.ring.is_empty() {
            return None;
        }
        let start = self.ring.partition_point(|(p, _)| *p < key);
        (0..self.ring.len())
            .map(|k| self.ring[(start + k) % self.ring.len()].1)
            .find(|&i| ok(i))
    }

    /// Servers currently ejected (for the max-ejected share).
    pub fn ejected(&self, now: u64) -> usize {
        self.servers
            .iter()
            .filter(|s| s.health.ejected(now))
            .count()
    }

    /// Seconds until a server could be usable again (at least 1).
    pub fn retry_after(&self, now: u64) -> u64 {
        let soonest = self
            .servers
            .iter()
            .map(|s| s.health.back_at(now))
            .min()
            .unwrap_or(now);
        soonest.saturating_sub(now).div_ceil(1000).max(1)
    }
}

/// The concurrency limit of an upstream: `max` slots (or an adaptive limit
/// within [min, max]), at most `queue` requests waiting for one.
pub struct Slots {
    sem: Arc<Semaphore>,
    waiting: AtomicUsize,
    queue: usize,
    /// Permits to retire as slots come back (when the adaptive limit fell
    /// while they were in use).
    debt: Arc<AtomicUsize>,
    aimd: Option<Aimd>,
}

/// Additive increase, multiplicative decrease on response-head latency.
struct Aimd {
    target: Duration,
    min: usize,
    max: usize,
    limit: AtomicUsize,
    /// Fast answers since the last increase.
    good: AtomicUsize,
    last_decrease: std::sync::atomic::AtomicU64,
}

/// Why no slot was given.
#[derive(Debug, PartialEq, Eq)]
pub enum Shed {
    QueueFull,
    QueueTimeout,
}

/// A slot in use; returned (or retired, if the limit fell) when dropped.
pub struct Slot {
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    debt: Arc<AtomicUsize>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(p) = self.permit.take()
            && self
                .debt
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| d.checked_sub(1))
                .is_ok()
        {
            p.forget();
        }
    }
}

impl Slots {
    pub fn new(max: usize, queue: usize, adaptive: Option<&crate::config::Adaptive>) -> Self {
        Slots {
            sem: Arc::new(Semaphore::new(max)),
            waiting: AtomicUsize::new(0),
            queue,
            debt: Arc::new(AtomicUsize::new(0)),
            aimd: adaptive.map(|a| Aimd {
                target: a.target,
                min: a.min,
                max,
                limit: AtomicUsize::new(max),
                good: AtomicUsize::new(0),
                last_decrease: Default::default(),
            }),
        }
    }

    /// Requests waiting for a slot now (the dashboard's queue).
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// The current limit.
    pub fn limit(&self) -> Option<usize> {
        self.aimd.as_ref().map(|a| a.limit.load(Ordering::Relaxed))
    }

    /// A slot, waiting in the queue for at most `timeout`.
    pub async fn acquire(&self, timeout: Duration) -> Result<Slot, Shed> {
        let slot = |p| Slot {
            permit: Some(p),
            debt: self.debt.clone(),
        };
        if let Ok(p) = self.sem.clone().try_acquire_owned() {
            return Ok(slot(p));
        }
        if self.waiting.fetch_add(1, Ordering::Relaxed) >= self.queue {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(Shed::QueueFull);
        }
        let r = tokio::time::timeout(timeout, self.sem.clone().acquire_owned()).await;
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        match r {
            Ok(Ok(p)) => Ok(slot(p)),
            _ => Err(Shed::QueueTimeout),
        }
    }

    /// Feeds the adaptive limit one response-head latency (`None`: the
    /// attempt timed out). Returns the new limit when it changed.
    pub fn observe(&self, latency: Option<Duration>, now_ms: u64) -> Option<usize> {
        let a = self.aimd.as_ref()?;
        let limit = a.limit.load(Ordering::Relaxed);
        if latency.is_some_and(|l| l <= a.target) {
            if a.good.fetch_add(1, Ordering::Relaxed) + 1 < limit || limit >= a.max {
                return None;
            }
            a.good.store(0, Ordering::Relaxed);
            a.limit.store(limit + 1, Ordering::Relaxed);
            // Pay back a retired permit before adding a new one.
            if self
                .debt
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| d.checked_sub(1))
                .is_err()
            {
                self.sem.add_permits(1);
            }
            return Some(limit + 1);
        }
        // Slow: shrink by a quarter, at most once per target interval (one
        // slow burst is one signal, not many).
        let last = a.last_decrease.load(Ordering::Relaxed);
        if now_ms.saturating_sub(last) < a.target.as_millis() as u64
            || a.last_decrease
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return None;
        }
        let new = (limit * 3 / 4).max(a.min);
        if new == limit {
            return None;
        }
        a.limit.store(new, Ordering::Relaxed);
        a.good.store(0, Ordering::Relaxed);
        let cut = limit - new;
        let forgotten = self.sem.forget_permits(cut);
        self.debt.fetch_add(cut - forgotten, Ordering::Relaxed);
        Some(new)
    }
}

/// Keeps retries to a share of requests, so retries never multiply an
/// outage: over a 10 s window, retries <= max(percent of requests, min/s).
#[derive(Default)]
pub struct RetryBudget {
    window_start: std::sync::atomic::AtomicU64,
    requests: std::sync::atomic::AtomicU64,
    retries: std::sync::atomic::AtomicU64,
}

const BUDGET_WINDOW_MS: u64 = 10_000;

impl RetryBudget {
    fn roll(&self, now: u64) {
        let start = self.window_start.load(Ordering::Relaxed);
        if now.saturating_sub(start) >= BUDGET_WINDOW_MS
            && self
                .window_start
                .compare_exchange(start, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.requests.store(0, Ordering::Relaxed);
            self.retries.store(0, Ordering::Relaxed);
        }
    }

    pub fn request(&self, now: u64) {
        self.roll(now);
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry from the budget, if there is one left.
    pub fn try_retry(&self, now: u64, percent: u32, min_per_sec: u32) -> bool {
        self.roll(now);
        let allowed = (self.requests.load(Ordering::Relaxed) * u64::from(percent) / 100)
            .max(u64::from(min_per_sec) * BUDGET_WINDOW_MS / 1000);
        if self.retries.fetch_add(1, Ordering::Relaxed) < allowed {
            true
        } else {
            self.retries.fetch_sub(1, Ordering::Relaxed);
            false
        }
    }
}

/// Full-jitter exponential backoff: a random wait in [0, base * 2^n],
/// capped at 1 s.
pub fn backoff(base: Duration, attempt: u32, seed: u64) -> Duration {
    if base.is_zero() {
        return Duration::ZERO;
    }
    let cap = base
        .saturating_mul(1 << attempt.min(10))
        .min(Duration::from_secs(1));
    let r = fnv1a(&seed.to_le_bytes()) % (cap.as_micros() as u64 + 1);
    Duration::from_micros(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_allows_the_floor_then_the_share() {
        let b = RetryBudget::default();
        let now = 1;
        for _ in 0..1000 {
            b.request(now);
        }
        let granted = (0..500).filter(|_| b.try_retry(now, 20, 3)).count();
        assert_eq!(granted, 200, "20% of 1000 requests");
        let quiet = RetryBudget::default();
        quiet.request(now);
        assert_eq!(
            (0..100).filter(|_| quiet.try_retry(now, 20, 3)).count(),
            30,
            "3/s floor over 10 s"
        );
    }

    #[test]
    fn aimd_shrinks_on_slow_answers_and_grows_on_fast_ones() {
        let a = crate::config::Adaptive {
            target: Duration::from_millis(20),
            min: 2,
        };
        let s = Slots::new(8, 0, Some(&a));
        let slow = Some(Duration::from_millis(100));
        assert_eq!(s.observe(slow, 1000), Some(6));
        assert_eq!(
            s.observe(slow, 1010),
            None,
            "at most once per target interval"
        );
        assert_eq!(s.observe(None, 1030), Some(4), "a timeout is slow");
        assert_eq!(s.observe(slow, 1060), Some(3));
        assert_eq!(s.observe(slow, 1090), Some(2));
        assert_eq!(s.observe(slow, 1120), None, "never below min");
        let fast = Some(Duration::from_millis(5));
        assert_eq!(s.observe(fast, 1200), None);
        assert_eq!(
            s.observe(fast, 1201),
            Some(3),
            "one more per `limit` fast answers"
        );
        assert_eq!(s.sem.available_permits(), 3);
    }

    #[test]
    fn backoff_is_bounded() {
        for n in 0..20 {
            assert!(backoff(Duration::from_millis(25), n, n as u64) <= Duration::from_secs(1));
        }
        assert_eq!(backoff(Duration::ZERO, 3, 1), Duration::ZERO);
    }
}
