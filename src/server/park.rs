//! Idle HTTP/1.1 connections parked without a task.
//!
//! A keep-alive connection with no request for [`PARK_AFTER`] gives up
//! its task: its socket leaves the runtime (`TcpStream::into_std`) and is
//! watched by the listener's park, one epoll instance of its own that the
//! runtime watches in turn, with what the connection needs to be served
//! again (the client's address, its shared state, its place in the
//! count of open connections) in a slab. When the client sends (or
//! closes), the socket goes back to the runtime in a new task; when
//! `idle_timeout` passes first, it is closed, as an idle task would have
//! closed it.
//!
//! Why: a task per idle connection costs its future, tokio's task header,
//! tokio's registration of the socket (256 bytes) and a timer, about
//! 1.4 KB of live allocations, where nginx keeps ~0.7 KB. A parked one
//! costs its slab entry, its expiry and its shared state (about 250
//! bytes) and the kernel's epoll entry. Connections busier than one
//! request a second never park, so a keep-alive request pays nothing for
//! it.
//!
//! Written by hand because tokio gives no way to wait on a socket without
//! registering it (and a waker) per socket; the park is the one place
//! that knows parked sockets, so the runtime's own epoll sees one
//! descriptor for all of them.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use prometheus_client::metrics::gauge::Gauge;
use slab::Slab;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::time::{DelayQueue, delay_queue};

use super::ConnCount;
use super::conn::Shared;

/// How long an HTTP/1.1 connection waits for its next request in its own
/// task before it is parked.
pub(crate) const PARK_AFTER: Duration = Duration::from_secs(1);

/// An idle connection, without a task.
pub(super) struct Parked {
    pub tcp: std::net::TcpStream,
    pub peer: SocketAddr,
    /// Since when no request was in flight (the idle deadline's start).
    pub idle_since: Instant,
    pub shared: Arc<Shared>,
    pub count: ConnCount,
}

/// Where a connection's task sends its connection to be parked.
pub(super) type Door = mpsc::UnboundedSender<Parked>;

/// The runtime watches the park's epoll descriptor.
struct Fd(Epoll);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.0.as_raw_fd()
    }
}

/// One listener's parked connections (each worker's accept loop has its
/// own).
pub(super) struct Park {
    epoll: AsyncFd<Fd>,
    door: mpsc::UnboundedReceiver<Parked>,
    parked: Slab<(Parked, delay_queue::Key)>,
    /// Each parked connection's idle deadline, by its slab key.
    expiry: DelayQueue<usize>,
    idle: Duration,
    /// Connections whose client sent something, not yet handed back.
    woken: Vec<Parked>,
    /// `connections_parked`, shared by every park.
    gauge: Gauge,
}

/// What the park's wait saw.
enum Seen {
    Arrived(Parked),
    Readable,
    Expired(usize),
}

impl Park {
    /// A park for connections whose `idle_timeout` is `idle`, and the door
    /// their tasks park them through.
    pub fn new(idle: Duration, gauge: Gauge) -> io::Result<(Park, Door)> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        let (tx, rx) = mpsc::unbounded_channel();
        // `with_interest` is deprecated because a type's `as_raw_fd` may
        // change or its descriptor close while registered; `Fd` owns its
        // one descriptor for the registration's life (this crate forbids
        // the `unsafe` of the replacement).
        #[allow(deprecated)]
        let epoll = AsyncFd::with_interest(Fd(epoll), tokio::io::Interest::READABLE)?;
        let park = Park {
            epoll,
            door: rx,
            parked: Slab::new(),
            expiry: DelayQueue::new(),
            idle,
            woken: Vec::new(),
            gauge,
        };
        Ok((park, tx))
    }

    /// The next parked connection whose client sent something or closed:
    /// to be served again in a task. Meanwhile parks what comes through
    /// the door and closes what stays idle for `idle_timeout`. Cancel
    /// safe: what it found waits in the park for the next call.
    pub async fn next(&mut self) -> Parked {
        loop {
            if let Some(p) = self.woken.pop() {
                return p;
            }
            let seen = tokio::select! {
                Some(p) = self.door.recv() => Seen::Arrived(p),
                Ok(mut ready) = self.epoll.readable() => {
                    ready.clear_ready();
                    Seen::Readable
                }
                Some(e) = std::future::poll_fn(|cx| self.expiry.poll_expired(cx)) => {
                    Seen::Expired(e.into_inner())
                }
            };
            match seen {
                Seen::Arrived(p) => self.park(p),
                Seen::Readable => self.collect(),
                Seen::Expired(key) => {
                    // Idle for idle_timeout: closed quietly, as a task
                    // would have (dropping the socket closes it, which
                    // also takes it out of the epoll set).
                    self.take(key);
                }
            }
        }
    }

    /// Takes a connection out of the slab (its expiry is the caller's to
    /// remove).
    fn take(&mut self, key: usize) -> Option<(Parked, delay_queue::Key)> {
        let taken = self.parked.try_remove(key);
        if taken.is_some() {
            self.gauge.dec();
        }
        taken
    }

    fn park(&mut self, p: Parked) {
        let at = p.idle_since + self.idle;
        let entry = self.parked.vacant_entry();
        let key = entry.key();
        let ev = EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP, key as u64);
        if let Err(e) = self.epoll.get_ref().0.add(p.tcp.as_fd(), ev) {
            // Cannot be watched: closed, as a shortage would close it.
            tracing::warn!(error = %e, "could not park an idle connection; closed it");
            return;
        }
        let timer = self.expiry.insert_at(key, at);
        entry.insert((p, timer));
        self.gauge.inc();
    }

    /// Takes every parked connection with something to read out of the
    /// park, into `woken`.
    fn collect(&mut self) {
        let mut events = [EpollEvent::empty(); 64];
        loop {
            let n = match self.epoll.get_ref().0.wait(&mut events, 0u8) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return,
            };
            for ev in &events[..n] {
                let key = ev.data() as usize;
                let Some((p, timer)) = self.take(key) else {
                    continue;
                };
                self.expiry.remove(&timer);
                let _ = self.epoll.get_ref().0.delete(p.tcp.as_fd());
                self.woken.push(p);
            }
            if n < events.len() {
                return;
            }
        }
    }

    /// Closes up to `n` parked connections, longest idle first (a shortage
    /// of descriptors): how many were closed.
    pub fn shed(&mut self, n: usize) -> usize {
        let mut shed = 0;
        while shed < n {
            let Some(timer) = self.expiry.peek() else {
                break;
            };
            let key = self.expiry.remove(&timer).into_inner();
            self.take(key);
            shed += 1;
        }
        shed
    }
}

impl Drop for Park {
    /// The gateway stops: parked connections are idle, and closed.
    fn drop(&mut self) {
        self.gauge.dec_by(self.parked.len() as i64);
    }
}
