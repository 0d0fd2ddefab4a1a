//! The upstream and its servers: per-worker idle lists (LIFO, idle limits,
//! the learned idle-close time), checkout and checkin, the reapers.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::connect::{tls_client, tls_name};
use super::*;
use crate::config::{ServerAddr, UpstreamConfig};
use crate::core::failure::Failure;
use crate::upstream::resolve::Resolver;
use crate::upstream::workers::{Claim, Queued, Turn};
use rustls::pki_types::ServerName;

struct Idle {
    tx: Link,
    info: Arc<ConnInfo>,
    since: Instant,
}

thread_local! {
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Marks the current thread as worker `id` (its own idle lists).
pub fn set_worker(id: usize) {
    WORKER.with(|w| w.set(id));
}

/// The worker thread this runs on.
pub(crate) fn worker_id() -> usize {
    WORKER.with(|w| w.get())
}

/// One server of an upstream, with its connection pool.
pub struct Server {
    pub addr: ServerAddr,
    pub weight: u32,
    pub backup: bool,
    pub health: crate::upstream::health::Health,
    /// Requests in flight on this server (for least_request).
    pub inflight: AtomicUsize,
    /// A FastCGI server's workers: held, learned, waited for.
    pub workers: Arc<crate::upstream::workers::Workers>,
    /// How the server appears in logs, metrics and `next-hop`.
    pub label: Arc<str>,
    /// One idle list per worker thread, so a request reuses connections
    /// driven by its own runtime (no cross-thread wake-ups).
    idle: Box<[Mutex<Vec<Idle>>]>,
    /// The shortest idle time after which this server was seen to close a
    /// pooled connection by itself (ms; 0 = never seen). Only shrinks.
    learned_idle_close_ms: AtomicU64,
    /// TLS client and the name to verify, when the upstream speaks TLS.
    pub(super) tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    /// For a named server: when its name was last resolved (ms) and the
    /// addresses it had, to notice a DNS change.
    resolved: Mutex<(u64, Vec<std::net::IpAddr>)>,
}

/// A connection checked out for one request.
pub struct Conn {
    /// `None` once a wire (HTTP/1.1 or FastCGI) moved into its response
    /// body.
    pub tx: Option<Link>,
    pub info: Arc<ConnInfo>,
    /// `Some(idle time)` when the connection came from the pool.
    pub reused: Option<Duration>,
    /// The server's address actually dialled (after DNS), for logs.
    pub peer: Arc<str>,
}

/// An upstream: its settings and servers.
pub struct Upstream {
    pub cfg: Arc<UpstreamConfig>,
    pub servers: Vec<Arc<Server>>,
    pub(crate) next: AtomicUsize,
    /// Consistent-hash ring: (point, server index), sorted by point.
    pub(crate) ring: Vec<(u64, usize)>,
    /// Requests in flight to the whole upstream and the queue, when
    /// `max_concurrent` is set.
    pub(crate) slots: Option<crate::upstream::balance::Slots>,
    pub(crate) budget: crate::upstream::balance::RetryBudget,
    /// Serialises ejection decisions so concurrent failures cannot eject
    /// more than max_ejected_percent of the pool between them.
    pub(crate) eject_lock: Mutex<()>,
    /// A FastCGI upstream's document root, held open (`None` if it could
    /// not be opened; requests then get 404 with the reason logged).
    pub docroot: Option<crate::upstream::fastcgi::DocRoot>,
}

/// What every connect needs besides the server.
pub struct Dialer {
    pub resolver: Resolver,
    /// baton's own listeners: dialling one of them is a loop.
    pub own: Vec<SocketAddr>,
}

impl Upstream {
    pub fn new(cfg: Arc<UpstreamConfig>, workers: usize) -> Self {
        let connector = cfg.tls.as_ref().and_then(|t| tls_client(t).ok());
        let servers: Vec<Arc<Server>> = cfg
            .servers
            .iter()
            .map(|spec| {
                let a = &spec.addr;
                Arc::new(Server {
                    label: a.to_string().into(),
                    addr: a.clone(),
                    weight: spec.weight,
                    backup: spec.backup,
                    health: crate::upstream::health::Health::new(cfg.health.is_some()),
                    inflight: AtomicUsize::new(0),
                    workers: Default::default(),
                    resolved: Mutex::new((0, Vec::new())),
                    idle: (0..workers.max(1))
                        .map(|_| Mutex::new(Vec::new()))
                        .collect(),
                    learned_idle_close_ms: AtomicU64::new(0),
                    tls: match (&connector, &cfg.tls) {
                        (Some(c), Some(t)) => tls_name(t, a).map(|n| (c.clone(), n)),
                        _ => None,
                    },
                })
            })
            .collect();
        let ring = crate::upstream::balance::ring(&servers);
        let slots = cfg
            .max_concurrent
            .map(|n| crate::upstream::balance::Slots::new(n, cfg.queue, cfg.adaptive.as_ref()));
        let docroot = cfg.fastcgi.as_ref().and_then(|f| {
            crate::upstream::fastcgi::DocRoot::open(f)
                .map_err(|e| {
                    tracing::error!(upstream = %cfg.name, root = %f.root.display(), error = %e, "cannot open the document root");
                })
                .ok()
        });
        Upstream {
            docroot,
            cfg,
            servers,
            next: AtomicUsize::new(0),
            ring,
            slots,
            budget: Default::default(),
            eject_lock: Mutex::new(()),
        }
    }
}

/// For each FastCGI upstream, a task that closes idle connections once
/// they pass keepalive_timeout (it ends when the upstream is dropped).
pub fn spawn_reapers(upstreams: &[Arc<Upstream>]) {
    for up in upstreams.iter().filter(|u| u.cfg.fastcgi.is_some()) {
        let weak = Arc::downgrade(up);
        let every = (up.cfg.keepalive_timeout / 4).max(Duration::from_millis(50));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(up) = weak.upgrade() else { return };
                for s in &up.servers {
                    s.reap(&up.cfg);
                }
            }
        });
    }
}

impl Upstream {
    /// How many worker idle lists its servers have.
    pub fn workers(&self) -> usize {
        self.servers.first().map_or(1, |s| s.idle.len())
    }
}

/// The shortest idle close that is learned as an idle timeout. No server
/// times out idleness sooner (nginx, Apache, Node, gunicorn and Go count
/// in seconds); a connection that ends sooner after its last response
/// ended for another reason: the upstream answered an upload before
/// reading it and closed, restarted or reloaded, or hyper closed it
/// itself. Learned, such a close would retire every pooled connection
/// after a millisecond, for good: a new connection a request.
const MIN_IDLE_CLOSE: Duration = Duration::from_millis(100);

impl Server {
    /// Idle time after which a pooled connection is not reused: the
    /// configured keepalive_timeout, shortened to 3/4 of the upstream's
    /// `Keep-Alive: timeout` hint and of its learned idle-close time, so baton
    /// always closes first (the keep-alive race, docs/errors.md).
    fn idle_limit(&self, cfg: &UpstreamConfig, info: &ConnInfo) -> Duration {
        let mut limit = cfg.keepalive_timeout;
        for ms in [
            info.keepalive_hint_ms.load(Ordering::Relaxed),
            self.learned_idle_close_ms.load(Ordering::Relaxed),
        ] {
            if ms > 0 {
                limit = limit.min(Duration::from_millis(ms * 3 / 4));
            }
        }
        limit
    }

    /// Records the addresses a name resolved to. When they changed, pooled
    /// connections (to the old addresses) are dropped so new requests go
    /// where DNS now points.
    pub(super) fn note_addrs(&self, addrs: &[std::net::IpAddr]) {
        let mut sorted = addrs.to_vec();
        sorted.sort();
        let mut r = self.resolved.lock().unwrap_or_else(|e| e.into_inner());
        r.0 = crate::core::clock::now_ms();
        if r.1 != sorted {
            let changed = !r.1.is_empty();
            r.1 = sorted;
            drop(r);
            if changed {
                tracing::info!(target: "baton::dns", server = %self.label, "DNS answer changed; closing pooled connections");
                self.clear();
            }
        }
    }

    /// For a named server, re-resolves (from the cache, honouring TTLs) at
    /// most once a second, so a record change is noticed while pooled
    /// connections keep it from reconnecting.
    async fn refresh_name(&self, dialer: &Dialer) {
        let ServerAddr::Name { host, .. } = &self.addr else {
            return;
        };
        let stale = crate::core::clock::now_ms()
            .saturating_sub(self.resolved.lock().unwrap_or_else(|e| e.into_inner()).0)
            > 1000;
        if stale && let Ok(a) = dialer.resolver.resolve(host).await {
            self.note_addrs(&a.addrs);
        }
    }

    /// A pooled connection that is open, ready and young enough, if any.
    pub async fn checkout(&self, cfg: &UpstreamConfig, dialer: &Dialer) -> Option<Conn> {
        self.refresh_name(dialer).await;
        loop {
            let mut idle = self.pop_idle(cfg)?;
            if let Link::H2(tx) = &idle.tx {
                // HTTP/2 carries many requests at once: the connection
                // stays listed and this request gets a clone of its sender
                // (hyper's PINGs watch it while it is idle).
                if tx.is_closed() {
                    continue;
                }
                let shared = Link::H2(tx.clone());
                let info = idle.info.clone();
                let age = idle.since.elapsed();
                self.my_idle()
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(idle);
                return Some(Conn {
                    tx: Some(shared),
                    info,
                    reused: Some(age),
                    peer: self.label.clone(),
                });
            }
            let age = idle.since.elapsed();
            if idle.tx.is_closed() {
                // A wire baton drives found closed while idle: the upstream
                // closed it within `age` (hyper's connections are watched by
                // their task, which learns the exact time).
                if matches!(idle.tx, Link::H1(_)) && !idle.info.retired.load(Ordering::Relaxed) {
                    self.learn_idle_close(age);
                }
                continue;
            }
            if age >= self.idle_limit(cfg, &idle.info) {
                idle.info.retired.store(true, Ordering::Relaxed);
                continue;
            }
            // The previous response has been read to its end; hyper flips
            // the connection back to ready right after, or closes it.
            if let Link::Http(tx) = &mut idle.tx
                && !tx.is_ready()
                && tx.ready().await.is_err()
            {
                continue;
            }
            idle.info.idle_since_ms.store(u64::MAX, Ordering::Relaxed);
            return Some(Conn {
                tx: Some(idle.tx),
                info: idle.info,
                reused: Some(age),
                peer: self.label.clone(),
            });
        }
    }

    /// The most recently idled connection of this worker. A FastCGI
    /// upstream also takes one from another worker (moving its socket to
    /// this worker's reactor): each idle FastCGI connection holds a whole
    /// PHP-FPM worker, so a new connection while one sits idle elsewhere
    /// would wait in the accept queue behind it.
    fn pop_idle(&self, cfg: &UpstreamConfig) -> Option<Idle> {
        let mine = self.my_idle();
        if let Some(i) = mine.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return Some(i);
        }
        cfg.fastcgi.as_ref()?;
        for list in self.idle.iter() {
            if std::ptr::eq(list, mine) {
                continue;
            }
            let taken = list.lock().unwrap_or_else(|e| e.into_inner()).pop();
            if let Some(mut i) = taken {
                let Link::Fcgi(w) = i.tx else { continue };
                let w = *w;
                match w.rebind() {
                    Ok(w) => {
                        i.tx = Link::Fcgi(Box::new(w));
                        return Some(i);
                    }
                    Err(_) => continue,
                }
            }
        }
        None
    }

    /// A pooled connection, or a new one (only a new one when
    /// `fresh_only`). A FastCGI server's first waits for one of baton's
    /// connections to finish while they hold every worker it has
    /// (`upstream::workers`), and a new one carries its claim on a worker.
    pub async fn acquire(
        self: &Arc<Self>,
        cfg: &UpstreamConfig,
        dialer: &Dialer,
        fresh_only: bool,
    ) -> Result<Conn, (Failure, Arc<str>)> {
        if !fresh_only && let Some(c) = self.checkout(cfg, dialer).await {
            return Ok(c);
        }
        if cfg.fastcgi.is_none() {
            return self.connect(cfg, dialer).await;
        }
        // Pooling off (`max_idle_per_server = 0`): no connection is kept or
        // handed on, so there is nothing to wait for.
        if !fresh_only
            && cfg.max_idle_per_server > 0
            && let Some(c) = self.wait_for_worker(cfg, dialer).await
        {
            return Ok(c);
        }
        // Without a worker known to be free, connecting may mean waiting
        // out a full accept queue: finished connections are closed
        // meanwhile. (With one, they must not be: a connect yields once,
        // and a close then would start a churn of its own.)
        let claim = Claim::new(&self.workers);
        let _queued = (!claim.expected()).then(|| Queued::new(&self.workers));
        let mut conn = self.connect(cfg, dialer).await?;
        if let Some(Link::Fcgi(w)) = &mut conn.tx {
            w.claim = Some(claim);
        }
        Ok(conn)
    }

    /// For a FastCGI server whose every known worker baton's connections
    /// hold: waits (up to `connect_timeout`) for one of them to finish and
    /// takes it over. `None`: open a new connection.
    pub async fn wait_for_worker(&self, cfg: &UpstreamConfig, dialer: &Dialer) -> Option<Conn> {
        let give_up = tokio::time::Instant::now() + cfg.connect_timeout;
        let has_idle = || {
            self.idle
                .iter()
                .any(|l| !l.lock().unwrap_or_else(|e| e.into_inner()).is_empty())
        };
        loop {
            // The probe speaks plain FastCGI: not over TLS.
            let probe = cfg.tls.is_none().then_some(&self.addr);
            let h = match self.workers.turn(probe, give_up, has_idle).await {
                Turn::Connect => return None,
                Turn::Pooled => match self.checkout(cfg, dialer).await {
                    Some(c) => return Some(c),
                    None => continue,
                },
                Turn::Handed(h) => h,
            };
            let tx = match h.tx {
                Link::Fcgi(w) if h.worker != worker_id() => Link::Fcgi(Box::new(w.rebind().ok()?)),
                tx => tx,
            };
            return Some(Conn {
                tx: Some(tx),
                info: h.info,
                reused: Some(Duration::ZERO),
                peer: self.label.clone(),
            });
        }
    }

    /// Returns a connection whose response was read completely.
    pub fn checkin(&self, cfg: &UpstreamConfig, mut tx: Link, mut info: Arc<ConnInfo>) {
        if tx.is_closed() || info.retired.load(Ordering::Relaxed) {
            return;
        }
        if matches!(tx, Link::Fcgi(_)) && cfg.max_idle_per_server > 0 {
            // A request may be waiting in this FastCGI server's accept queue
            // for the worker this connection holds: close it. Otherwise a
            // request waiting in baton for a worker takes it as it is.
            if self.workers.queued() {
                info.retired.store(true, Ordering::Relaxed);
                return;
            }
            let handed = crate::upstream::workers::Handed {
                tx,
                info,
                worker: worker_id(),
            };
            match self.workers.hand_off(handed) {
                Ok(()) => return,
                Err(h) => (tx, info) = (h.tx, h.info),
            }
        }
        let mut idle = self.my_idle().lock().unwrap_or_else(|e| e.into_inner());
        // An HTTP/2 connection is listed once, however many requests used it.
        if matches!(tx, Link::H2(_)) && idle.iter().any(|i| Arc::ptr_eq(&i.info, &info)) {
            return;
        }
        if idle.len() >= cfg.max_idle_per_server {
            info.retired.store(true, Ordering::Relaxed);
            return;
        }
        info.idle_since_ms
            .store(info.ms_since_created(), Ordering::Relaxed);
        idle.push(Idle {
            tx,
            info,
            since: Instant::now(),
        });
    }

    /// The shortest idle time after which this server closed a pooled
    /// connection by itself, once seen.
    pub fn learned_idle_close(&self) -> Option<Duration> {
        match self.learned_idle_close_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    pub(super) fn learn_idle_close(&self, idle: Duration) {
        if idle < MIN_IDLE_CLOSE {
            return;
        }
        let ms = idle.as_millis() as u64;
        let _ =
            self.learned_idle_close_ms
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |cur| {
                    (cur == 0 || ms < cur).then_some(ms)
                });
    }

    /// Closes idle connections past their idle limit now, not at the next
    /// checkout (FastCGI: an idle connection holds a PHP-FPM worker that
    /// other clients of the pool may be queued for).
    fn reap(&self, cfg: &UpstreamConfig) {
        for list in self.idle.iter() {
            list.lock().unwrap_or_else(|e| e.into_inner()).retain(|i| {
                let keep = i.since.elapsed() < self.idle_limit(cfg, &i.info);
                if !keep {
                    i.info.retired.store(true, Ordering::Relaxed);
                }
                keep
            });
        }
    }

    fn my_idle(&self) -> &Mutex<Vec<Idle>> {
        &self.idle[worker_id() % self.idle.len()]
    }

    /// Drops every pooled connection (used on reload and shutdown).
    pub fn clear(&self) {
        for list in self.idle.iter() {
            for i in list.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
                i.info.retired.store(true, Ordering::Relaxed);
            }
        }
    }
}
