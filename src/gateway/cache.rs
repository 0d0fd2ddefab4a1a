//! The shared HTTP cache's store (RFC 9111): stored responses in memory,
//! bounded by bytes, kept across reloads; and the misses in flight, so
//! concurrent misses for one URL make one upstream request.
//!
//! Owns: [`Store`], [`Stored`] and the coalescing of misses. What may be
//! stored, and for how long, is `http-cache-semantics`' `CachePolicy`
//! (RFC 9111's rules, well tested by its authors and users); eviction is
//! moka's (TinyLFU, weighted by size). What is written here: the key,
//! Vary variants, the stale windows of RFC 5861 (the crate does not read
//! `stale-while-revalidate` or `stale-if-error`), coalescing and purge.
//!
//! Must not: talk to an upstream (the request path does, and stores
//! what it got).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_cache_semantics::CachePolicy;

/// One stored response.
pub struct Stored {
    pub policy: CachePolicy,
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    /// Fresh until then (the policy's time to live when stored or
    /// refreshed): how stale a response is, for the stale windows.
    pub fresh_until: SystemTime,
    /// From the response's `Cache-Control` (RFC 5861).
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
}

impl Stored {
    pub fn new(
        policy: CachePolicy,
        status: http::StatusCode,
        headers: http::HeaderMap,
        body: Bytes,
        now: SystemTime,
    ) -> Stored {
        let cc = |name: &str| directive(&headers, name).unwrap_or(Duration::ZERO);
        Stored {
            fresh_until: now + policy.time_to_live(now),
            stale_while_revalidate: cc("stale-while-revalidate"),
            stale_if_error: cc("stale-if-error"),
            policy,
            status,
            headers,
            body,
        }
    }

    /// How long past its freshness it is (zero while fresh).
    pub fn staleness(&self, now: SystemTime) -> Duration {
        now.duration_since(self.fresh_until)
            .unwrap_or(Duration::ZERO)
    }

    fn weight(&self) -> u32 {
        let head: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 32)
            .sum();
        u32::try_from(self.body.len() + head + 512).unwrap_or(u32::MAX)
    }
}

/// `name=N` seconds in `Cache-Control`.
fn directive(h: &http::HeaderMap, name: &str) -> Option<Duration> {
    h.get_all(http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|d| {
            let (k, v) = d.trim().split_once('=')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().trim_matches('"').parse::<u64>().ok())
                .flatten()
        })
        .map(Duration::from_secs)
}

/// The responses stored under one key: one per `Vary` variant.
pub type Variants = Arc<Vec<Arc<Stored>>>;

/// The cache: stored responses by key, and the misses in flight.
pub struct Store {
    entries: moka::sync::Cache<String, Variants>,
    inflight: Mutex<HashMap<String, Arc<tokio::sync::Notify>>>,
    /// Responses dropped to stay within the memory bound.
    pub evictions: Arc<std::sync::atomic::AtomicU64>,
}

/// Variants kept per key at most (a `Vary: User-Agent` would otherwise
/// grow without bound).
const MAX_VARIANTS: usize = 8;

impl Store {
    pub fn new(memory: u64) -> Store {
        let evictions = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = evictions.clone();
        Store {
            entries: moka::sync::Cache::builder()
                .max_capacity(memory)
                .weigher(|k: &String, v: &Variants| {
                    v.iter()
                        .map(|s| s.weight())
                        .fold(k.len() as u32, u32::saturating_add)
                })
                .eviction_listener(move |_, _, cause| {
                    if cause == moka::notification::RemovalCause::Size {
                        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                })
                .build(),
            inflight: Mutex::new(HashMap::new()),
            evictions,
        }
    }

    pub fn get(&self, key: &str) -> Option<Variants> {
        self.entries.get(key)
    }

    /// Stores `s` under `key`, replacing the variant the same request
    /// would select.
    pub fn put<R: http_cache_semantics::RequestLike>(&self, key: &str, req: &R, s: Arc<Stored>) {
        let now = SystemTime::now();
        let mut list: Vec<Arc<Stored>> = self
            .entries
            .get(key)
            .map(|v| {
                v.iter()
                    .filter(|old| {
                        !matches!(
                            old.policy.before_request(req, now),
                            http_cache_semantics::BeforeRequest::Fresh(_)
                                | http_cache_semantics::BeforeRequest::Stale { matches: true, .. }
                        )
                    })
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        list.insert(0, s);
        list.truncate(MAX_VARIANTS);
        self.entries.insert(key.to_string(), Arc::new(list));
    }

    /// Removes what is stored under `key` (an unsafe method's target,
    /// RFC 9111 §4.4, or a purge).
    pub fn remove(&self, key: &str) {
        self.entries.invalidate(key);
    }

    /// Removes every key that starts with `prefix`; how many.
    pub fn purge_prefix(&self, prefix: &str) -> usize {
        let keys: Vec<Arc<String>> = self
            .entries
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k)
            .collect();
        for k in &keys {
            self.entries.invalidate(k.as_str());
        }
        keys.len()
    }

    /// Bytes stored (by the weigher) and entries.
    pub fn size(&self) -> (u64, u64) {
        self.entries.run_pending_tasks();
        (self.entries.weighted_size(), self.entries.entry_count())
    }

    /// The first miss for `key` leads (`Lead`); later ones get the
    /// leader's signal to wait on (`Follow`).
    pub fn miss(self: &Arc<Self>, key: &str) -> Miss {
        let mut m = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        match m.get(key) {
            Some(n) => Miss::Follow(n.clone()),
            None => {
                let n = Arc::new(tokio::sync::Notify::new());
                m.insert(key.to_string(), n.clone());
                Miss::Lead(Leader {
                    store: self.clone(),
                    key: key.to_string(),
                    notify: n,
                })
            }
        }
    }
}

impl Store {
    /// Waits (at most `timeout`) for the leader of `key` to finish.
    pub async fn follow(&self, key: &str, n: &Arc<tokio::sync::Notify>, timeout: Duration) {
        let woken = n.notified();
        tokio::pin!(woken);
        // Registered before looking again, so a leader finishing now
        // cannot be missed.
        woken.as_mut().enable();
        let still = self
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .is_some_and(|m| Arc::ptr_eq(m, n));
        if still {
            let _ = tokio::time::timeout(timeout, woken).await;
        }
    }
}

pub enum Miss {
    Lead(Leader),
    Follow(Arc<tokio::sync::Notify>),
}

/// The one request fetching a key; when it is dropped (its response
/// stored, or not storable, or failed) the waiting requests go on.
pub struct Leader {
    store: Arc<Store>,
    key: String,
    notify: Arc<tokio::sync::Notify>,
}

impl Drop for Leader {
    fn drop(&mut self) {
        self.store
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
        self.notify.notify_waiters();
    }
}
