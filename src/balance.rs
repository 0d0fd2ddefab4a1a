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

/// The concurrency limit of an upstream: `max` slots, at most `queue`
/// requests waiting for one.
pub struct Slots {
    sem: Arc<Semaphore>,
    waiting: AtomicUsize,
    queue: usize,
}

/// Why no slot was given.
#[derive(Debug, PartialEq, Eq)]
pub enum Shed {
    QueueFull,
    QueueTimeout,
}

impl Slots {
    pub fn new(max: usize, queue: usize) -> Self {
        Slots {
            sem: Arc::new(Semaphore::new(max)),
            waiting: AtomicUsize::new(0),
            queue,
        }
    }

    /// A slot, waiting in the queue for at most `timeout`.
    pub async fn acquire(
        &self,
        timeout: Duration,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, Shed> {
        if let Ok(p) = self.sem.clone().try_acquire_owned() {
            return Ok(p);
        }
        if self.waiting.fetch_add(1, Ordering::Relaxed) >= self.queue {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(Shed::QueueFull);
        }
        let r = tokio::time::timeout(timeout, self.sem.clone().acquire_owned()).await;
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        match r {
            Ok(Ok(p)) => Ok(p),
            _ => Err(Shed::QueueTimeout),
        }
    }
}
