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
    /// The disk tier (`[cache] dir`), when there is one.
    disk: Option<Disk>,
    inflight: Mutex<HashMap<String, Arc<tokio::sync::Notify>>>,
    /// Responses dropped to stay within the memory bound.
    pub evictions: Arc<std::sync::atomic::AtomicU64>,
}

/// Variants kept per key at most (a `Vary: User-Agent` would otherwise
/// grow without bound).
const MAX_VARIANTS: usize = 8;

impl Store {
    pub fn new(memory: u64, disk: Option<(std::path::PathBuf, u64)>) -> Store {
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
            disk: disk.map(|(dir, max)| Disk::open(dir, max)),
        }
    }

    /// What the disk tier holds for `key` (read on a blocking thread),
    /// now also in memory.
    pub async fn load(&self, key: &str) -> Option<Variants> {
        let disk = self.disk.as_ref()?.clone();
        let k = key.to_string();
        let s = tokio::task::spawn_blocking(move || disk.read(&k))
            .await
            .ok()??;
        let v: Variants = Arc::new(vec![Arc::new(s)]);
        self.entries.insert(key.to_string(), v.clone());
        Some(v)
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
        if let Some(d) = &self.disk {
            // The latest variant goes to disk, written off the request's
            // thread.
            let (d, k, s) = (d.clone(), key.to_string(), s.clone());
            tokio::task::spawn_blocking(move || d.write(&k, &s));
        }
        list.insert(0, s);
        list.truncate(MAX_VARIANTS);
        self.entries.insert(key.to_string(), Arc::new(list));
    }

    /// Removes what is stored under `key` (an unsafe method's target,
    /// RFC 9111 §4.4, or a purge).
    pub fn remove(&self, key: &str) {
        self.entries.invalidate(key);
        if let Some(d) = &self.disk {
            let _ = std::fs::remove_file(d.file(key));
        }
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
        let on_disk = self.disk.as_ref().map_or(0, |d| d.purge_prefix(prefix));
        keys.len().max(on_disk)
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

/// The disk tier: one file per key (its latest variant), named by a hash
/// of the key, holding the key, status, headers, policy and body;
/// bounded by bytes, the least recently written files removed first.
/// Written by hand over plain files: what is stored is already a
/// serialisable policy and a body, and crates for disk caches bring their
/// own index and formats for what a directory and `rename` do here.
#[derive(Clone)]
struct Disk {
    dir: std::path::PathBuf,
    max: u64,
    used: Arc<std::sync::atomic::AtomicU64>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct OnDisk {
    key: String,
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    policy: CachePolicy,
    fresh_until: SystemTime,
    stale_while_revalidate: Duration,
    stale_if_error: Duration,
}

impl Disk {
    fn open(dir: std::path::PathBuf, max: u64) -> Disk {
        let used = std::fs::read_dir(&dir)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        Disk {
            dir,
            max,
            used: Arc::new(std::sync::atomic::AtomicU64::new(used)),
        }
    }

    fn file(&self, key: &str) -> std::path::PathBuf {
        self.dir.join(format!(
            "{:016x}.entry",
            crate::upstream::balance::fnv1a(key.as_bytes())
        ))
    }

    fn write(&self, key: &str, s: &Stored) {
        use std::sync::atomic::Ordering;
        let meta = OnDisk {
            key: key.to_string(),
            status: s.status.as_u16(),
            headers: s
                .headers
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
                .collect(),
            policy: s.policy.clone(),
            fresh_until: s.fresh_until,
            stale_while_revalidate: s.stale_while_revalidate,
            stale_if_error: s.stale_if_error,
        };
        let Ok(json) = serde_json::to_vec(&meta) else {
            return;
        };
        let mut out = Vec::with_capacity(8 + json.len() + s.body.len());
        out.extend_from_slice(&(json.len() as u64).to_le_bytes());
        out.extend_from_slice(&json);
        out.extend_from_slice(&s.body);
        let path = self.file(key);
        let tmp = path.with_extension("tmp");
        let old = std::fs::metadata(&path).map_or(0, |m| m.len());
        // Written whole, then renamed: a reader never sees half a file.
        if std::fs::write(&tmp, &out).is_ok() && std::fs::rename(&tmp, &path).is_ok() {
            let n = out.len() as u64;
            let used = (self.used.fetch_add(n, Ordering::Relaxed) + n).saturating_sub(old);
            self.used.fetch_sub(old.min(used), Ordering::Relaxed);
            if used > self.max {
                self.shrink();
            }
        } else {
            let _ = std::fs::remove_file(&tmp);
        }
    }

    fn read(&self, key: &str) -> Option<Stored> {
        let bytes = std::fs::read(self.file(key)).ok()?;
        let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?) as usize;
        let meta: OnDisk = serde_json::from_slice(bytes.get(8..8 + n)?).ok()?;
        if meta.key != key {
            return None;
        }
        let mut headers = http::HeaderMap::new();
        for (k, v) in meta.headers {
            if let (Ok(k), Ok(v)) = (
                http::HeaderName::from_bytes(k.as_bytes()),
                http::HeaderValue::from_bytes(&v),
            ) {
                headers.append(k, v);
            }
        }
        Some(Stored {
            policy: meta.policy,
            status: http::StatusCode::from_u16(meta.status).ok()?,
            headers,
            body: Bytes::copy_from_slice(&bytes[8 + n..]),
            fresh_until: meta.fresh_until,
            stale_while_revalidate: meta.stale_while_revalidate,
            stale_if_error: meta.stale_if_error,
        })
    }

    /// Oldest files removed until the tier is at 90 % of its bound.
    fn shrink(&self) {
        use std::sync::atomic::Ordering;
        let Ok(d) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut files: Vec<(SystemTime, u64, std::path::PathBuf)> = d
            .flatten()
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                Some((m.modified().ok()?, m.len(), e.path()))
            })
            .collect();
        files.sort();
        let mut used: u64 = files.iter().map(|f| f.1).sum();
        for (_, len, path) in files {
            if used <= self.max / 10 * 9 {
                break;
            }
            if std::fs::remove_file(&path).is_ok() {
                used -= len;
            }
        }
        self.used.store(used, Ordering::Relaxed);
    }

    fn purge_prefix(&self, prefix: &str) -> usize {
        let Ok(d) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        let mut n = 0;
        for e in d.flatten() {
            let p = e.path();
            let key = std::fs::read(&p).ok().and_then(|b| {
                let len = u64::from_le_bytes(b.get(..8)?.try_into().ok()?) as usize;
                serde_json::from_slice::<OnDisk>(b.get(8..8 + len)?)
                    .ok()
                    .map(|m| m.key)
            });
            if key.is_some_and(|k| k.starts_with(prefix)) && std::fs::remove_file(&p).is_ok() {
                n += 1;
            }
        }
        n
    }
}
