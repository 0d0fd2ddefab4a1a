//! A FastCGI server's workers, as baton sees them, and the hand-off of a
//! finished connection to a request waiting for one.
//!
//! PHP-FPM serves a kept connection (`FCGI_KEEP_CONN`) with one worker
//! until the connection closes, and a new connection waits in the
//! server's accept queue meanwhile. So while baton's own connections hold
//! every worker, a new one only queues behind them, and gets in when baton
//! closes one: under load, a connection a request (nginx without
//! `fastcgi_keep_conn` does the same), or a second's wait (nginx with it).
//!
//! So baton counts the connections that hold a worker (`held`: answered
//! and still open) and those that will (`pending`: opened, not answered
//! yet), and learns how many workers the server has (`known`: the most
//! held at once lately). A request that finds no idle connection while
//! every known worker is taken waits here instead of connecting, and the
//! next connection to finish is handed to it (`hand_off`), never idled and
//! never closed. Meanwhile one probe (`FCGI_GET_VALUES` on a connection of
//! its own: the FastCGI specification has every server answer it, and
//! PHP-FPM does so from any free worker at once, then closes) waits in the
//! accept queue: its answer means a worker is free that baton does not
//! hold (`pm = dynamic` or `ondemand` started one, or another client of
//! the pool left), so one more connection is opened, and the probe looks
//! again while requests wait. A request that waited `connect_timeout`
//! connects anyway, as it would have without this.
//!
//! `queued` counts requests that may sit in the accept queue after all
//! (connecting, or a new connection unanswered after `poke_after`):
//! while any does, a finished connection is closed so its worker takes
//! them (`Server::checkin`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::config::ServerAddr;
use crate::upstream::{ConnInfo, Link};

/// How long the most held at once counts as the server's worker count:
/// `known` is the peak of this window and the one before it, so a count
/// that was wrong (a probe answered by a worker baton had just freed) or
/// that shrank (a pool restarted smaller) is forgotten within two.
const WINDOW_MS: u64 = 1000;

/// How long a probe may wait in the accept queue. It is answered as soon
/// as any worker is free, so under lasting saturation it waits long; one
/// given up stays in the queue until a worker takes it (and answers into a
/// closed socket in microseconds), so this bounds how fast such leftovers
/// can pile up. A server that accepted it but ignores `FCGI_GET_VALUES`
/// gets its worker back after this.
const PROBE_CAP: Duration = Duration::from_secs(60);

/// How long a request on a new connection opened without a known free
/// worker waits for an answer before it counts as queued.
const POKE_MIN: Duration = Duration::from_millis(2);

/// The least a request on a new connection opened for a worker baton knew
/// to be free waits before it counts as queued.
const POKE_EXPECTED: Duration = Duration::from_millis(50);

/// One FastCGI server's workers (one per `Server`; unused for HTTP).
#[derive(Default)]
pub struct Workers {
    held: AtomicUsize,
    pending: AtomicUsize,
    queued: AtomicUsize,
    peak: Mutex<Peak>,
    probing: AtomicBool,
    /// No probe before this (ms, `clock::now_ms`): the last went unanswered.
    probe_after_ms: AtomicU64,
    /// How long the server takes to answer on a connection a worker
    /// already has (µs, a moving average; 0: not seen yet).
    answer_us: AtomicU64,
    waiters: Mutex<VecDeque<oneshot::Sender<Option<Handed>>>>,
}

/// The most connections held at once in this window and the last.
#[derive(Default)]
struct Peak {
    since_ms: u64,
    now: usize,
    before: usize,
}

/// A finished connection on its way to a waiting request, with the
/// worker thread whose reactor it is registered with.
pub struct Handed {
    pub tx: Link,
    pub info: Arc<ConnInfo>,
    pub worker: usize,
}

/// What a request waiting for a worker does next.
pub enum Turn {
    /// Takes over this connection, just finished.
    Handed(Handed),
    /// Takes the pool's idle connection.
    Pooled,
    /// Opens a new connection: a worker is free, or may be.
    Connect,
}

impl Workers {
    /// How many workers the server has, as far as baton knows (0: not
    /// known yet, or not lately).
    pub fn known(&self) -> usize {
        let mut p = self.peak.lock().unwrap_or_else(|e| e.into_inner());
        p.roll(
            crate::core::clock::now_ms(),
            self.held.load(Ordering::Relaxed),
        );
        p.now.max(p.before)
    }

    /// Connections answered and still open: each holds a worker.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Requests waiting here for a connection.
    pub fn waiting(&self) -> usize {
        let waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        waiters.iter().filter(|w| !w.is_closed()).count()
    }

    /// Every worker baton knows of is held or about to be: a new
    /// connection would only queue behind baton's own.
    fn all_taken(&self) -> bool {
        self.taken(self.known())
    }

    /// Whether `known` workers are all held or about to be.
    fn taken(&self, known: usize) -> bool {
        known > 0
            && self.held.load(Ordering::Relaxed) + self.pending.load(Ordering::Relaxed) >= known
    }

    /// Notes how long an answer took on a connection a worker had.
    pub fn note_answer(&self, took: Duration) {
        let us = took.as_micros().min(u64::MAX as u128) as u64;
        let _ = self
            .answer_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(if old == 0 { us } else { old - old / 8 + us / 8 })
            });
    }

    /// How long a request on a new connection waits for an answer before
    /// it counts as queued. Opened while baton knew of a free worker
    /// (`expected`), it should be answered in about one of the server's
    /// usual answer times: four of them, at least `POKE_EXPECTED` (a busy
    /// machine is slow to schedule the worker, and a false alarm closes
    /// connections). Otherwise it may well be queued: `POKE_MIN`.
    pub fn poke_after(&self, expected: bool) -> Duration {
        if !expected {
            return POKE_MIN;
        }
        Duration::from_micros(4 * self.answer_us.load(Ordering::Relaxed)).max(POKE_EXPECTED)
    }

    /// Whether a request may sit in the server's accept queue.
    pub fn queued(&self) -> bool {
        self.queued.load(Ordering::Relaxed) > 0
    }

    /// Gives a finished connection to the longest-waiting request; `Err`
    /// returns it when nobody waits.
    pub fn hand_off(&self, mut h: Handed) -> Result<(), Handed> {
        let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(w) = waiters.pop_front() {
            match w.send(Some(h)) {
                Ok(()) => return Ok(()),
                // That request is gone (its client left): the next one.
                Err(back) => h = back.expect("sent Some"),
            }
        }
        Err(h)
    }

    /// A worker may be free (a connection closed, or one never got
    /// through): the longest-waiting request looks again.
    fn wake_one(&self) {
        if self.queued() || self.all_taken() {
            return;
        }
        let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(w) = waiters.pop_front() {
            if w.send(None).is_ok() {
                return;
            }
        }
    }

    /// Waits, while every known worker is taken, for one of baton's
    /// connections to finish, until `give_up`. `idle` says whether the
    /// pool has an idle connection (one may be checked in between the
    /// caller's look and this wait). `probe`: where the probe may go (a
    /// plain Unix or TCP address; none over TLS or to a name).
    pub async fn turn(
        self: &Arc<Self>,
        probe: Option<&ServerAddr>,
        give_up: tokio::time::Instant,
        idle: impl Fn() -> bool,
    ) -> Turn {
        loop {
            if !self.all_taken() {
                return Turn::Connect;
            }
            let (tx, rx) = oneshot::channel();
            self.waiters
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push_back(tx);
            // What changed between the look above and the queueing.
            if !self.all_taken() {
                return Turn::Connect;
            }
            if idle() {
                return Turn::Pooled;
            }
            if let Some(addr) = probe {
                self.probe(addr);
            }
            match tokio::time::timeout_at(give_up, rx).await {
                Ok(Ok(Some(h))) => return Turn::Handed(h),
                // Woken to look again, or dropped with the upstream.
                Ok(Ok(None)) | Ok(Err(_)) => continue,
                Err(_) => return Turn::Connect,
            }
        }
    }

    /// Starts the probe unless one is out (or one went unanswered within
    /// the last second): `FCGI_GET_VALUES` on a new connection, answered
    /// as soon as any worker is free. Elsewhere the `connect_timeout` wait
    /// in `turn` is the fallback.
    fn probe(self: &Arc<Self>, addr: &ServerAddr) {
        let now = crate::core::clock::now_ms();
        if matches!(addr, ServerAddr::Name { .. })
            || now < self.probe_after_ms.load(Ordering::Relaxed)
            || self.probing.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let me = self.clone();
        let addr = addr.clone();
        tokio::spawn(async move {
            while me.waiting() > 0 {
                if !me.all_taken() {
                    // A worker is free for a waiting request: it connects.
                    me.wake_one();
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                let answered = tokio::time::timeout(PROBE_CAP, values_answered(&addr))
                    .await
                    .unwrap_or(false);
                if !answered {
                    // Closed, refused or silent: not again for a second.
                    let again = crate::core::clock::now_ms() + 1000;
                    me.probe_after_ms.store(again, Ordering::Relaxed);
                    break;
                }
                // A worker none of baton's answered connections holds: one
                // more than those. (Pending ones do not count: they may be
                // queued behind the probe, for the worker that answered it.)
                let known = me.known();
                let seen = me.held.load(Ordering::Relaxed) + 1;
                {
                    let mut p = me.peak.lock().unwrap_or_else(|e| e.into_inner());
                    p.now = p.now.max(seen);
                }
                me.wake_one();
                // Then look again while requests wait: soon after a new
                // worker, and after a pause when the answer showed none (a
                // worker baton freed itself, or one a pending connection
                // of baton's is about to be answered on), which would only
                // answer again.
                let pause = if seen > known { 1 } else { 10 };
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            me.probing.store(false, Ordering::Release);
        });
    }
}

impl Peak {
    /// Starts a new window when this one is over: the last window's peak
    /// is kept, and the new one starts at what is held now.
    fn roll(&mut self, now_ms: u64, held: usize) {
        if now_ms.saturating_sub(self.since_ms) >= WINDOW_MS {
            let ended_long_ago = now_ms.saturating_sub(self.since_ms) >= 2 * WINDOW_MS;
            self.before = if ended_long_ago { held } else { self.now };
            self.now = held;
            self.since_ms = now_ms;
        }
    }
}

/// Asks FCGI_GET_VALUES on a new connection; true once anything comes
/// back (from a free worker), false when the server closes or fails.
async fn values_answered(addr: &ServerAddr) -> bool {
    let mut first = [0u8; 8];
    matches!(crate::upstream::fastcgi::ask_values(addr, &mut first).await, Some(n) if n > 0)
}

/// A connection's claim on one of the server's workers, kept in its
/// `Wire`: pending from before the connect until the server first
/// answers, held from then until the connection closes.
pub struct Claim {
    workers: Arc<Workers>,
    held: bool,
    expected: bool,
}

impl Claim {
    pub fn new(workers: &Arc<Workers>) -> Self {
        let known = workers.known();
        let expected = known > 0 && !workers.taken(known);
        workers.pending.fetch_add(1, Ordering::Relaxed);
        Claim {
            workers: workers.clone(),
            held: false,
            expected,
        }
    }

    /// Opened while baton knew of a free worker for it.
    pub fn expected(&self) -> bool {
        self.expected
    }

    /// The server answered on this connection: a worker has it.
    pub fn answered(&mut self) {
        if self.held {
            return;
        }
        self.held = true;
        let w = &self.workers;
        let held = w.held.fetch_add(1, Ordering::Relaxed) + 1;
        w.pending.fetch_sub(1, Ordering::Relaxed);
        let mut p = w.peak.lock().unwrap_or_else(|e| e.into_inner());
        p.roll(crate::core::clock::now_ms(), held);
        p.now = p.now.max(held);
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let w = &self.workers;
        if self.held {
            w.held.fetch_sub(1, Ordering::Relaxed);
        } else {
            w.pending.fetch_sub(1, Ordering::Relaxed);
        }
        w.wake_one();
    }
}

/// Marks a FastCGI request that may sit in the server's accept queue:
/// connecting (perhaps waiting out a full queue), or on a new connection
/// without a head after `Workers::poke_after`. While any is, `Server::checkin`
/// closes finished connections instead of keeping or handing them on,
/// since each holds a worker.
pub struct Queued(Arc<Workers>);

impl Queued {
    pub fn new(w: &Arc<Workers>) -> Self {
        w.queued.fetch_add(1, Ordering::Relaxed);
        Queued(w.clone())
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Ordering::Relaxed);
        self.0.wake_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worker_count_is_the_peak_of_two_windows() {
        let mut p = Peak::default();
        p.roll(5000, 0);
        p.now = 4;
        p.roll(5500, 2);
        assert_eq!(p.now.max(p.before), 4, "same window");
        p.roll(6000, 2);
        assert_eq!(
            (p.now, p.before),
            (2, 4),
            "the next window keeps the last peak"
        );
        p.roll(7000, 3);
        assert_eq!((p.now, p.before), (3, 2), "two windows on, 4 is forgotten");
        p.roll(9500, 1);
        assert_eq!(
            (p.now, p.before),
            (1, 1),
            "after a quiet spell, only what is held now"
        );
    }

    #[tokio::test]
    async fn claims_count_pending_then_held_and_a_close_wakes_a_waiter() {
        let w = Arc::new(Workers::default());
        let mut a = Claim::new(&w);
        assert_eq!((w.held(), w.pending.load(Ordering::Relaxed)), (0, 1));
        a.answered();
        a.answered();
        assert_eq!((w.held(), w.pending.load(Ordering::Relaxed)), (1, 0));
        assert_eq!(w.known(), 1);
        // Every known worker is held: a request waits (no probe: a name).
        let addr = ServerAddr::Name {
            host: "fpm.invalid".into(),
            port: 9000,
        };
        let waiter = tokio::spawn({
            let w = w.clone();
            let give_up = tokio::time::Instant::now() + Duration::from_secs(30);
            async move { matches!(w.turn(Some(&addr), give_up, || false).await, Turn::Connect) }
        });
        while w.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        drop(a);
        assert!(waiter.await.unwrap(), "woken to connect");
        assert_eq!(w.held(), 0);
    }
}
