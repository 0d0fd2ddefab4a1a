//! Upstream connections: resolve, connect, pool, and classify what failed.
//!
//! Owns: the per-server keep-alive pool (HTTP/1.1 over TCP or Unix sockets),
//! the metered I/O wrapper that counts bytes, keeps the first bytes for
//! protocol sniffing and enforces the write timeout, and [`classify`], which
//! turns an `io::Error`, a hickory error or a `hyper::Error` into exactly one
//! [`Cause`]. Nothing else in baton inspects a raw error.
//!
//! Must not: decide whether to retry (that is `proxy`), or build responses.

pub mod balance;
pub mod exchange;
pub mod fastcgi;
pub mod files;
pub mod h1;
pub mod health;
pub mod resolve;
pub mod supervise;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio::time::Sleep;

use crate::config::{ServerAddr, UpstreamConfig};
use crate::core::cause::Cause;
use crate::core::failure::Failure;
use crate::upstream::resolve::{ResolveError, Resolver};
use rustls::pki_types::ServerName;

/// The request body sent upstream: empty, buffered (replayable) or streamed.
pub enum UpBody {
    Empty,
    Full(Option<Bytes>),
    /// Streamed from the client, with what is left of `max_body_bytes`
    /// (for bodies without a Content-Length) and the flag set when it ran out.
    Stream(Incoming, Option<(u64, Arc<AtomicBool>)>),
}

/// The client's body passed `max_body_bytes` while streaming.
#[derive(Debug)]
pub struct BodyTooLarge;
impl std::fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request body larger than max_body_bytes")
    }
}
impl std::error::Error for BodyTooLarge {}

impl Body for UpBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            UpBody::Empty => Poll::Ready(None),
            UpBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            UpBody::Stream(s, limit) => {
                let r = ready!(Pin::new(s).poll_frame(cx));
                if let (Some(Ok(f)), Some((left, over))) = (&r, limit.as_mut()) {
                    let n = f.data_ref().map_or(0, |d| d.len() as u64);
                    if n > *left {
                        over.store(true, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                    }
                    *left -= n;
                }
                Poll::Ready(r.map(|r| r.map_err(Into::into)))
            }
        }
    }
    fn is_end_stream(&self) -> bool {
        match self {
            UpBody::Empty => true,
            UpBody::Full(b) => b.is_none(),
            UpBody::Stream(s, _) => s.is_end_stream(),
        }
    }
    fn size_hint(&self) -> SizeHint {
        match self {
            UpBody::Empty => SizeHint::with_exact(0),
            UpBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            UpBody::Stream(s, _) => s.size_hint(),
        }
    }
}

/// Counters shared between a connection's I/O and the requests on it.
#[derive(Default, Debug)]
pub struct ConnStats {
    pub read: AtomicU64,
    pub written: AtomicU64,
    /// The first (up to 16) bytes of the current response, packed, and how
    /// many there are: enough to recognise TLS or HTTP/2 frames, or to read
    /// the status of a head hyper then rejected.
    head: [AtomicU64; 2],
    head_len: AtomicUsize,
    /// `read` when the current request was sent (where its response starts).
    mark: AtomicU64,
    /// Milliseconds since `ConnInfo::created` of the last write progress.
    last_write_ms: AtomicU64,
}

impl ConnStats {
    /// The first bytes of the current response.
    pub fn first_bytes(&self) -> ([u8; 16], usize) {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.head[0].load(Ordering::Relaxed).to_be_bytes());
        b[8..].copy_from_slice(&self.head[1].load(Ordering::Relaxed).to_be_bytes());
        (b, self.head_len.load(Ordering::Relaxed))
    }

    /// Marks the start of a new response (called before each request).
    pub fn begin_response(&self) {
        self.mark
            .store(self.read.load(Ordering::Relaxed), Ordering::Relaxed);
        self.head_len.store(0, Ordering::Relaxed);
    }

    /// Records bytes read at offset `at` of the current response.
    fn capture(&self, at: u64, new: &[u8]) {
        let Some(off) = at.checked_sub(self.mark.load(Ordering::Relaxed)) else {
            return;
        };
        if off >= 16 {
            return;
        }
        let (mut b, _) = self.first_bytes();
        let off = off as usize;
        let take = (16 - off).min(new.len());
        b[off..off + take].copy_from_slice(&new[..take]);
        self.head[0].store(
            u64::from_be_bytes(b[..8].try_into().unwrap_or_default()),
            Ordering::Relaxed,
        );
        self.head[1].store(
            u64::from_be_bytes(b[8..].try_into().unwrap_or_default()),
            Ordering::Relaxed,
        );
        self.head_len.store(off + take, Ordering::Relaxed);
    }

    /// The status code of the current response's status line, if its first
    /// bytes are `HTTP/1.x NNN`.
    pub fn received_status(&self) -> Option<u16> {
        let (b, n) = self.first_bytes();
        if n < 12 || !b.starts_with(b"HTTP/1.") || b[8] != b' ' {
            return None;
        }
        std::str::from_utf8(&b[9..12])
            .ok()?
            .parse()
            .ok()
            .filter(|s| (100..600).contains(s))
    }
}

/// One upstream connection's shared state.
#[derive(Debug)]
pub struct ConnInfo {
    pub stats: ConnStats,
    pub created: Instant,
    /// Set when baton closes the connection itself (not the upstream).
    pub retired: AtomicBool,
    /// When it went idle, in ms since `created`; `u64::MAX` while in use.
    idle_since_ms: AtomicU64,
    /// From the upstream's `Keep-Alive: timeout=N`, in ms (0 = none).
    pub keepalive_hint_ms: AtomicU64,
}

impl ConnInfo {
    fn new() -> Self {
        ConnInfo {
            stats: ConnStats::default(),
            created: Instant::now(),
            retired: AtomicBool::new(false),
            idle_since_ms: AtomicU64::new(u64::MAX),
            keepalive_hint_ms: AtomicU64::new(0),
        }
    }
    fn ms_since_created(&self) -> u64 {
        self.created.elapsed().as_millis() as u64
    }
    /// Time of the last successful write to the upstream.
    pub fn last_write(&self) -> Instant {
        self.created + Duration::from_millis(self.stats.last_write_ms.load(Ordering::Relaxed))
    }
}

/// The transport under a connection.
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    TlsUnix(Box<tokio_rustls::client::TlsStream<UnixStream>>),
}

/// Dispatches an I/O call to whichever transport is underneath.
macro_rules! on_stream {
    ($s:expr, $x:ident => $e:expr) => {
        match $s {
            Stream::Tcp($x) => $e,
            Stream::Unix($x) => $e,
            Stream::Tls($x) => $e,
            Stream::TlsUnix($x) => $e,
        }
    };
}

/// Wraps a stream: counts bytes, keeps the first bytes, times out stalled
/// writes. The write timer only runs while a write is pending, so an idle
/// pooled connection never times out here.
pub struct Metered {
    inner: Stream,
    info: Arc<ConnInfo>,
    write_timeout: Duration,
    write_timer: Option<Pin<Box<Sleep>>>,
}

/// Marks the `io::Error` baton raises when a write stalls.
#[derive(Debug)]
pub struct WriteTimedOut;
impl std::fmt::Display for WriteTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("upstream write timed out")
    }
}
impl std::error::Error for WriteTimedOut {}

impl AsyncRead for Metered {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = on_stream!(&mut this.inner, s => Pin::new(s).poll_read(cx, buf));
        if let Poll::Ready(Ok(())) = r {
            let new = &buf.filled()[before..];
            if !new.is_empty() {
                let stats = &this.info.stats;
                let total = stats.read.fetch_add(new.len() as u64, Ordering::Relaxed);
                if total < stats.mark.load(Ordering::Relaxed) + 16 {
                    stats.capture(total, new);
                }
            }
        }
        r
    }
}

impl Metered {
    /// Moves the socket to the current thread's runtime (deregisters it
    /// from the reactor it was created on, registers it here).
    pub fn rebind(self) -> io::Result<Self> {
        let inner = match self.inner {
            Stream::Unix(u) => Stream::Unix(UnixStream::from_std(u.into_std()?)?),
            Stream::Tcp(t) => Stream::Tcp(TcpStream::from_std(t.into_std()?)?),
            tls => tls,
        };
        Ok(Metered {
            inner,
            info: self.info,
            write_timeout: self.write_timeout,
            write_timer: None,
        })
    }

    fn track_write(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match r {
            Poll::Ready(Ok(n)) => {
                self.write_timer = None;
                self.info
                    .stats
                    .written
                    .fetch_add(n as u64, Ordering::Relaxed);
                self.info
                    .stats
                    .last_write_ms
                    .store(self.info.ms_since_created(), Ordering::Relaxed);
                Poll::Ready(Ok(n))
            }
            Poll::Pending => {
                let wt = self.write_timeout;
                let timer = self
                    .write_timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(wt)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, WriteTimedOut)))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
            other => other,
        }
    }
}

impl AsyncWrite for Metered {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = on_stream!(&mut this.inner, s => Pin::new(s).poll_write(cx, buf));
        this.track_write(cx, r)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = on_stream!(&mut this.inner, s => Pin::new(s).poll_write_vectored(cx, bufs));
        this.track_write(cx, r)
    }
    fn is_write_vectored(&self) -> bool {
        true
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        on_stream!(&mut self.get_mut().inner, s => Pin::new(s).poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        on_stream!(&mut self.get_mut().inner, s => Pin::new(s).poll_shutdown(cx))
    }
}

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

/// One server of an upstream, with its connection pool.
pub struct Server {
    pub addr: ServerAddr,
    pub weight: u32,
    pub backup: bool,
    pub health: crate::upstream::health::Health,
    /// Requests in flight on this server (for least_request).
    pub inflight: AtomicUsize,
    /// FastCGI requests waiting for a worker of this server: connecting,
    /// or queued on a new connection (see `proxy::Waiting`).
    pub awaiting_worker: AtomicUsize,
    /// How the server appears in logs, metrics and `next-hop`.
    pub label: Arc<str>,
    /// One idle list per worker thread, so a request reuses connections
    /// driven by its own runtime (no cross-thread wake-ups).
    idle: Box<[Mutex<Vec<Idle>>]>,
    /// The shortest idle time after which this server was seen to close a
    /// pooled connection by itself (ms; 0 = never seen). Only shrinks.
    learned_idle_close_ms: AtomicU64,
    /// TLS client and the name to verify, when the upstream speaks TLS.
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    /// For a named server: when its name was last resolved (ms) and the
    /// addresses it had, to notice a DNS change.
    resolved: Mutex<(u64, Vec<std::net::IpAddr>)>,
}

/// Builds the TLS client for an upstream: Mozilla's roots plus `tls_ca`,
/// ring as the provider, ALPN http/1.1.
fn tls_client(
    tls: &crate::config::UpstreamTls,
) -> Result<tokio_rustls::TlsConnector, rustls::Error> {
    tls_connector(&tls.ca)
}

/// A verifying TLS client: Mozilla's roots plus `ca`, ring, ALPN
/// http/1.1 (upstreams, and the alert webhook with no extra roots).
pub(crate) fn tls_connector(
    ca: &[rustls::pki_types::CertificateDer<'static>],
) -> Result<tokio_rustls::TlsConnector, rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for c in ca {
        roots.add(c.clone())?;
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(cfg)))
}

/// The name a server's certificate must carry.
fn tls_name(tls: &crate::config::UpstreamTls, addr: &ServerAddr) -> Option<ServerName<'static>> {
    let raw = match (&tls.server_name, addr) {
        (Some(n), _) => n.clone(),
        (None, ServerAddr::Name { host, .. }) => host.clone(),
        (None, ServerAddr::Tcp(a)) => return Some(ServerName::IpAddress(a.ip().into())),
        (None, ServerAddr::Unix(_)) => return None,
    };
    ServerName::try_from(raw).ok()
}

/// What a request is sent over: an HTTP/1.1 wire driven by the request
/// itself ([`crate::upstream::h1`]), hyper's HTTP/1.1 client connection (driven by
/// its own task: streamed request bodies and upgrades), or a FastCGI wire.
pub enum Link {
    H1(Box<Wire>),
    Http(SendRequest<UpBody>),
    Fcgi(Box<Wire>),
}

impl Link {
    /// The peer closed the connection (or sent what no request asked for).
    pub fn is_closed(&mut self) -> bool {
        match self {
            Link::Http(tx) => tx.is_closed(),
            Link::H1(w) | Link::Fcgi(w) => !w.is_open(),
        }
    }
}

/// A connection baton reads and writes itself, from the request's own
/// task (HTTP/1.1 in [`crate::upstream::h1`], FastCGI): the metered stream and what
/// was read ahead of the current message.
pub struct Wire {
    pub io: Metered,
    pub(crate) buf: BytesMut,
    /// How much the next read may fill: doubles while reads fill it (a
    /// large body), up to `MAX_READ`, as hyper's adaptive reads do.
    read_size: usize,
}

const MIN_READ: usize = 16 * 1024;
const MAX_READ: usize = 256 * 1024;

impl Wire {
    pub fn new(io: Metered) -> Self {
        Wire {
            io,
            buf: BytesMut::with_capacity(MIN_READ),
            read_size: MIN_READ,
        }
    }

    /// Reads more into the buffer; `Ok(0)` at the end of the stream.
    pub(crate) fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < self.read_size / 2 {
            self.buf.reserve(self.read_size);
        }
        let spare = self.buf.capacity() - self.buf.len();
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.io),
            cx,
            &mut self.buf
        ))?;
        if n == spare {
            self.read_size = (self.read_size * 2).min(MAX_READ);
        }
        Poll::Ready(Ok(n))
    }

    /// Moves the connection to the current thread's runtime.
    pub fn rebind(self) -> io::Result<Self> {
        Ok(Wire {
            io: self.io.rebind()?,
            ..self
        })
    }

    /// Whether a pooled connection is still open: the server closing it
    /// (an idle timeout, PHP-FPM recycling a worker after
    /// pm.max_requests) shows as a readable end of file; anything readable
    /// makes it unusable.
    pub fn is_open(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut probe = [0u8; 1];
        let mut rb = tokio::io::ReadBuf::new(&mut probe);
        matches!(
            Pin::new(&mut self.io).poll_read(&mut cx, &mut rb),
            Poll::Pending
        )
    }
}

/// A write to a [`Wire`] that failed because the peer had already closed
/// the connection: nothing was delivered, so the request may go, as it is,
/// on a fresh connection.
pub(crate) fn is_dead_peer(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EPIPE) | Some(libc::ECONNRESET) | Some(libc::ENOTCONN)
    )
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
                    awaiting_worker: AtomicUsize::new(0),
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
            crate::upstream::fastcgi::DocRoot::open(&f.root)
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
    fn note_addrs(&self, addrs: &[std::net::IpAddr]) {
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

    /// Returns a connection whose response was read completely.
    pub fn checkin(&self, cfg: &UpstreamConfig, mut tx: Link, info: Arc<ConnInfo>) {
        if tx.is_closed() || info.retired.load(Ordering::Relaxed) {
            return;
        }
        // Requests are waiting for a worker of this FastCGI server: an idle
        // connection would keep the worker they wait for. Close it instead.
        if matches!(tx, Link::Fcgi(_)) && self.awaiting_worker.load(Ordering::Relaxed) > 0 {
            info.retired.store(true, Ordering::Relaxed);
            return;
        }
        let mut idle = self.my_idle().lock().unwrap_or_else(|e| e.into_inner());
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

    fn learn_idle_close(&self, idle: Duration) {
        let ms = (idle.as_millis() as u64).max(1);
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
        &self.idle[WORKER.with(|w| w.get()) % self.idle.len()]
    }

    /// Drops every pooled connection (used on reload and shutdown).
    pub fn clear(&self) {
        for list in self.idle.iter() {
            for i in list.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
                i.info.retired.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Opens a new connection. `Err` carries the classified failure and the
    /// address dialled.
    pub async fn connect(
        self: &Arc<Self>,
        cfg: &UpstreamConfig,
        dialer: &Dialer,
    ) -> Result<Conn, (Failure, Arc<str>)> {
        let (stream, peer) = match &self.addr {
            ServerAddr::Tcp(a) => (
                connect_tcp(*a, cfg, dialer)
                    .await
                    .map_err(|f| (f, self.label.clone()))?,
                self.label.clone(),
            ),
            ServerAddr::Unix(p) => (
                connect_unix(p, cfg)
                    .await
                    .map_err(|f| (f, self.label.clone()))?,
                self.label.clone(),
            ),
            ServerAddr::Name { host, port } => {
                let answer = dialer
                    .resolver
                    .resolve(host)
                    .await
                    .map_err(|e| (classify_dns(host, e), self.label.clone()))?;
                self.note_addrs(&answer.addrs);
                let addrs = answer.addrs;
                let mut last = None;
                let mut found = None;
                for ip in addrs.iter() {
                    let a = SocketAddr::new(*ip, *port);
                    match connect_tcp(a, cfg, dialer).await {
                        Ok(s) => {
                            found = Some((s, Arc::<str>::from(format!("{a}"))));
                            break;
                        }
                        Err(f) => last = Some((f, Arc::<str>::from(format!("{a}")))),
                    }
                }
                match found {
                    Some(x) => x,
                    None => {
                        return Err(last.unwrap_or_else(|| {
                            (
                                Failure::with(Cause::DnsError, format!("{host} has no addresses")),
                                self.label.clone(),
                            )
                        }));
                    }
                }
            }
        };
        let stream = match (&cfg.tls, &self.tls) {
            (None, _) => stream,
            (Some(_), None) => {
                return Err((
                    Failure::with(Cause::Internal, "TLS client could not be built"),
                    peer,
                ));
            }
            (Some(_), Some((connector, name))) => {
                let hs = async {
                    match stream {
                        Stream::Tcp(t) => connector
                            .connect(name.clone(), t)
                            .await
                            .map(|s| Stream::Tls(Box::new(s))),
                        Stream::Unix(u) => connector
                            .connect(name.clone(), u)
                            .await
                            .map(|s| Stream::TlsUnix(Box::new(s))),
                        other => Ok(other),
                    }
                };
                match tokio::time::timeout(cfg.connect_timeout, hs).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => return Err((classify_tls(&e), peer)),
                    Err(_) => {
                        return Err((
                            Failure::with(
                                Cause::TlsProtocol,
                                format!(
                                    "TLS handshake not finished within {:?}",
                                    cfg.connect_timeout
                                ),
                            ),
                            peer,
                        ));
                    }
                }
            }
        };
        let info = Arc::new(ConnInfo::new());
        let io = Metered {
            inner: stream,
            info: info.clone(),
            write_timeout: cfg.write_timeout,
            write_timer: None,
        };
        let wire = Box::new(Wire::new(io));
        Ok(Conn {
            tx: Some(if cfg.fastcgi.is_some() {
                Link::Fcgi(wire)
            } else {
                Link::H1(wire)
            }),
            info,
            reused: None,
            peer,
        })
    }

    /// Hands an idle HTTP/1.1 wire to hyper's client connection, driven by
    /// a task of its own, for a request [`crate::upstream::h1`] does not carry (a
    /// streamed body, an upgrade). Other links are returned as they are.
    pub async fn hyper_link(
        self: &Arc<Self>,
        cfg: &UpstreamConfig,
        link: Link,
        info: &Arc<ConnInfo>,
    ) -> Result<Link, Failure> {
        let Link::H1(wire) = link else {
            return Ok(link);
        };
        let mut b = http1::Builder::new();
        b.max_header_size(cfg.max_response_header_bytes)
            // hyper's read buffer must hold the whole head; leave room so the
            // exact header limit above is the one that triggers.
            .max_buf_size((cfg.max_response_header_bytes + 16 * 1024).max(400 * 1024));
        let (tx, conn) = b
            .handshake(TokioIo::new(wire.io))
            .await
            .map_err(|e| Failure::with(Cause::Internal, format!("handshake: {e}")))?;
        let server = self.clone();
        let task_info = info.clone();
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
            // The connection ended. If it was idle in the pool and baton did
            // not close it, the upstream closed it: remember after how long.
            let since = task_info.idle_since_ms.load(Ordering::Relaxed);
            if since != u64::MAX && !task_info.retired.load(Ordering::Relaxed) {
                let idle = task_info.ms_since_created().saturating_sub(since);
                server.learn_idle_close(Duration::from_millis(idle));
            }
        });
        Ok(Link::Http(tx))
    }
}

async fn connect_tcp(
    a: SocketAddr,
    cfg: &UpstreamConfig,
    dialer: &Dialer,
) -> Result<Stream, Failure> {
    if dialer.own.iter().any(|own| {
        *own == a || (own.ip().is_unspecified() && own.port() == a.port() && a.ip().is_loopback())
    }) {
        return Err(Failure::with(
            Cause::ProxyConfiguration,
            format!("{a} is one of baton's own listeners"),
        ));
    }
    match tokio::time::timeout(cfg.connect_timeout, TcpStream::connect(a)).await {
        Err(_) => Err(Failure::with(
            Cause::ConnectionTimeout,
            format!("no answer from {a} within {:?}", cfg.connect_timeout),
        )),
        Ok(Err(e)) => Err(classify_connect_io(&e, &a.to_string())),
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(Stream::Tcp(s))
        }
    }
}

/// Connects to a Unix socket. A full accept queue (EAGAIN: every PHP-FPM
/// worker busy) is waited out, polling with a growing pause, for up to
/// connect_timeout, as the kernel does for a TCP connect whose SYN was
/// dropped; only then is it `upstream_busy` (503), never a 502.
async fn connect_unix(p: &Path, cfg: &UpstreamConfig) -> Result<Stream, Failure> {
    let give_up = tokio::time::Instant::now() + cfg.connect_timeout;
    let mut pause = Duration::from_millis(2);
    let mut waited = false;
    loop {
        match tokio::time::timeout_at(give_up, UnixStream::connect(p)).await {
            Err(_) => {
                return Err(Failure::with(
                    Cause::ConnectionTimeout,
                    format!(
                        "no answer from unix:{} within {:?}",
                        p.display(),
                        cfg.connect_timeout
                    ),
                ));
            }
            Ok(Err(e)) if e.raw_os_error() == Some(libc::EAGAIN) => {
                let now = tokio::time::Instant::now();
                if now + pause >= give_up {
                    let mut f = classify_connect_io(&e, &format!("unix:{}", p.display()));
                    if waited {
                        f.details = Some(format!(
                            "accept queue of unix:{} stayed full for {:?} (every worker busy)",
                            p.display(),
                            cfg.connect_timeout
                        ));
                    }
                    return Err(f);
                }
                waited = true;
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Ok(Err(e)) => return Err(classify_connect_io(&e, &format!("unix:{}", p.display()))),
            Ok(Ok(s)) => return Ok(Stream::Unix(s)),
        }
    }
}

/// Classifies a failed connect by errno number (never by libc's wording).
pub fn classify_connect_io(e: &io::Error, to: &str) -> Failure {
    let unix = to.starts_with("unix:");
    let errno = e.raw_os_error().unwrap_or(0);
    let cause = Cause::from_errno(errno, crate::core::cause::Phase::Connect, unix);
    let details = match cause {
        Cause::ConnectionRefused if unix => {
            format!("nothing is listening on {to} (the socket file exists)")
        }
        Cause::ConnectionRefused => format!("{to} refused the connection"),
        Cause::SocketNotFound if errno == libc::ENOENT => {
            format!("socket {} does not exist", &to[5.min(to.len())..])
        }
        Cause::SocketNotFound => format!("{to} is not a listening socket"),
        Cause::SocketPermission => match socket_problem(Path::new(&to[5..])) {
            Some(SocketProblem::Permission(m)) => m,
            _ => format!("permission denied on socket {} for {}", &to[5..], whoami()),
        },
        Cause::UpstreamBusy => format!("accept queue of {to} is full"),
        Cause::ConnectionTimeout => format!("connect to {to} timed out"),
        Cause::Internal => "too many open files".to_string(),
        _ => match errno {
            libc::EHOSTUNREACH => format!("no route to host {to}"),
            libc::ENETUNREACH => format!("network unreachable for {to}"),
            libc::EADDRNOTAVAIL => format!("no local address/port free to reach {to}"),
            _ => format!("connect to {to} failed"),
        },
    };
    Failure::with(cause, details).errno(e)
}

/// Classifies a failed TLS handshake from the rustls error inside it.
pub fn classify_tls(e: &io::Error) -> Failure {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(t) => tls_failure(t),
        None => Failure::with(
            Cause::TlsProtocol,
            format!("connection failed during the TLS handshake ({})", e.kind()),
        )
        .errno(e),
    }
}

fn tls_failure(t: &rustls::Error) -> Failure {
    use rustls::{CertificateError as C, Error as E};
    match t {
        E::InvalidCertificate(c) => {
            let why = match c {
                C::Expired | C::ExpiredContext { .. } => "certificate expired",
                C::NotValidYet | C::NotValidYetContext { .. } => "certificate not valid yet",
                C::UnknownIssuer => {
                    "certificate issuer not trusted (self-signed or missing intermediate)"
                }
                C::NotValidForName | C::NotValidForNameContext { .. } => {
                    "certificate not valid for the server name"
                }
                C::Revoked => "certificate revoked",
                _ => "certificate rejected",
            };
            Failure::with(Cause::TlsCertificate, why)
        }
        E::AlertReceived(a) => {
            Failure::with(Cause::TlsAlert, format!("upstream sent TLS alert {a:?}"))
        }
        E::InvalidMessage(_)
        | E::InappropriateHandshakeMessage { .. }
        | E::InappropriateMessage { .. } => Failure::with(
            Cause::TlsProtocol,
            "upstream did not answer with TLS (a plain-HTTP port?)",
        ),
        other => Failure::with(Cause::TlsProtocol, format!("TLS handshake failed: {other}")),
    }
}

pub fn classify_dns(host: &str, e: ResolveError) -> Failure {
    match e {
        ResolveError::Timeout => {
            Failure::with(Cause::DnsTimeout, format!("no DNS answer for {host}"))
        }
        ResolveError::NotFound => Failure::with(
            Cause::DnsError,
            format!("{host} does not resolve (NXDOMAIN or no records)"),
        ),
        ResolveError::Other(why) => {
            Failure::with(Cause::DnsError, format!("lookup of {host} failed: {why}"))
        }
    }
}

/// What baton knew about the attempt when hyper reported an error.
pub struct AttemptView<'a> {
    pub info: &'a ConnInfo,
    pub reused: bool,
    /// Bytes read on this connection before this request was sent.
    pub read_before: u64,
    pub max_header_bytes: usize,
}

/// What went wrong sending a request or reading its response head, as
/// [`crate::upstream::h1`] reports it.
#[derive(Debug)]
pub enum Exchange {
    Io(io::Error),
    /// The head passed max_response_header_bytes, or 100 fields.
    TooLarge,
    /// Not a valid HTTP/1.x response head.
    Parse,
    /// The upstream closed the connection before a complete head.
    Closed,
}

/// The same, borrowed from either client's error.
enum Fault<'a> {
    Io(&'a io::Error),
    TooLarge,
    Parse,
    Closed,
}

/// Classifies an error from hyper's client sending a request or reading its
/// response head.
pub fn classify_exchange(e: &hyper::Error, v: &AttemptView<'_>) -> Failure {
    let fault = if let Some(io) = find_io(e) {
        Fault::Io(io)
    } else if e.is_parse_too_large() {
        Fault::TooLarge
    } else if e.is_parse() || e.is_parse_status() || e.is_parse_version_h2() {
        Fault::Parse
    } else if e.is_incomplete_message() || e.is_canceled() || e.is_closed() {
        Fault::Closed
    } else {
        return Failure::with(Cause::ProtocolError, format!("{e}"));
    };
    classify_fault(fault, v)
}

/// Classifies a failed [`crate::upstream::h1`] exchange.
pub fn classify_h1(e: &Exchange, v: &AttemptView<'_>) -> Failure {
    classify_fault(
        match e {
            Exchange::Io(io) => Fault::Io(io),
            Exchange::TooLarge => Fault::TooLarge,
            Exchange::Parse => Fault::Parse,
            Exchange::Closed => Fault::Closed,
        },
        v,
    )
}

fn classify_fault(fault: Fault<'_>, v: &AttemptView<'_>) -> Failure {
    let mut f = classify_fault_inner(fault, v);
    if f.cause.phase() == crate::core::cause::Phase::ReadHead {
        f.received_status = v.info.stats.received_status();
    }
    f
}

fn classify_fault_inner(fault: Fault<'_>, v: &AttemptView<'_>) -> Failure {
    let received = v
        .info
        .stats
        .read
        .load(Ordering::Relaxed)
        .saturating_sub(v.read_before);
    match fault {
        Fault::Io(io) => {
            if let Some(t) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return tls_failure(t);
            }
            if io.get_ref().is_some_and(|i| i.is::<WriteTimedOut>()) {
                return Failure::with(
                    Cause::WriteTimeout,
                    "the upstream stopped reading the request",
                )
                .errno(io);
            }
            match io.kind() {
                io::ErrorKind::ConnectionReset
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::UnexpectedEof => Failure::with(
                    Cause::ConnectionTerminated,
                    terminated_details(v.reused, received, "reset"),
                )
                .errno(io),
                io::ErrorKind::TimedOut => {
                    Failure::with(Cause::ResponseHeadTimeout, "timed out reading the response")
                        .errno(io)
                }
                _ => Failure::with(
                    Cause::ConnectionTerminated,
                    format!("I/O error: {}", io.kind()),
                )
                .errno(io),
            }
        }
        Fault::TooLarge if received as usize > v.max_header_bytes => Failure::with(
            Cause::ResponseHeaderTooLarge,
            format!(
                "response head over {} bytes (limit {}; {received} bytes received)",
                v.max_header_bytes, v.max_header_bytes
            ),
        ),
        Fault::TooLarge => Failure::with(
            Cause::ResponseHeaderTooLarge,
            format!(
                "more than 100 header fields or a field over 64 KiB ({received} bytes received, limit {})",
                v.max_header_bytes
            ),
        ),
        Fault::Parse => {
            let (first, n) = v.info.stats.first_bytes();
            if !v.reused && n >= 4 && first[3] == 0x04 && first[0] == 0 {
                return Failure::with(
                    Cause::UpstreamSpeaksHttp2,
                    "upstream sent an HTTP/2 SETTINGS frame: it speaks HTTP/2 only (h2c), baton sent HTTP/1.1",
                );
            }
            if !v.reused && n >= 2 && (first[0] == 0x16 || first[0] == 0x15) && first[1] == 0x03 {
                return Failure::with(
                    Cause::UpstreamSpeaksTls,
                    "upstream answered with a TLS record: the port expects TLS",
                );
            }
            Failure::with(Cause::ProtocolError, "invalid HTTP/1.1 response head")
        }
        Fault::Closed => Failure::with(
            Cause::ConnectionTerminated,
            terminated_details(v.reused, received, "closed"),
        ),
    }
}

fn terminated_details(reused: bool, received: u64, how: &str) -> String {
    let conn = if reused { "a reused" } else { "a new" };
    if received == 0 {
        format!("upstream {how} {conn} connection before sending any response")
    } else {
        format!(
            "upstream {how} {conn} connection after {received} bytes of an incomplete response head"
        )
    }
}

/// Classifies an error while streaming the response body.
pub fn classify_body(e: &hyper::Error) -> Failure {
    classify_body_io(find_io(e))
}

/// Classifies a [`crate::upstream::h1`] response body that failed.
pub fn classify_h1_body(f: &crate::upstream::h1::BodyFault) -> Failure {
    match f {
        crate::upstream::h1::BodyFault::Io(e) => classify_body_io(Some(e)),
        crate::upstream::h1::BodyFault::Closed => classify_body_io(None),
        crate::upstream::h1::BodyFault::BadChunk => Failure::with(
            Cause::ResponseIncomplete,
            "invalid chunked encoding in the response body",
        ),
    }
}

/// A response body that ended early: on an I/O error, or (`None`) the
/// upstream closing the connection.
fn classify_body_io(e: Option<&io::Error>) -> Failure {
    let f = Failure::with(
        Cause::ResponseIncomplete,
        "upstream closed the connection before the end of the body",
    );
    match e {
        Some(io) => Failure {
            details: Some(format!(
                "upstream connection failed mid-body ({})",
                io.kind()
            )),
            ..f
        }
        .errno(io),
        None => f,
    }
}

fn find_io(e: &hyper::Error) -> Option<&io::Error> {
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<io::Error>() {
            return Some(io);
        }
        src = s.source();
    }
    None
}

/// Parses `Keep-Alive: timeout=N` (seconds) into milliseconds.
pub fn keepalive_hint(v: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(v).ok()?;
    s.split(',').find_map(|p| {
        let (k, v) = p.split_once('=')?;
        if k.trim().eq_ignore_ascii_case("timeout") {
            v.trim().parse::<u64>().ok().map(|s| s * 1000)
        } else {
            None
        }
    })
}

/// Polls a response-head future with the read timeout, restarting the clock
/// while the request is still being written (a slow upload is not a slow
/// upstream; a stalled one is caught by the write timeout).
pub async fn await_head<F, T>(fut: F, info: &ConnInfo, read_timeout: Duration) -> Option<T>
where
    F: Future<Output = T>,
{
    let mut fut = std::pin::pin!(fut);
    let mut deadline = tokio::time::Instant::now() + read_timeout;
    loop {
        match tokio::time::timeout_at(deadline, &mut fut).await {
            Ok(t) => return Some(t),
            Err(_) => {
                let next = tokio::time::Instant::from_std(info.last_write()) + read_timeout;
                if next > deadline {
                    deadline = next;
                    continue;
                }
                return None;
            }
        }
    }
}

/// A response body as it comes from the upstream.
pub enum UpIncoming {
    H1(crate::upstream::h1::H1Body),
    Http(Incoming),
    Fcgi(crate::upstream::fastcgi::FcgiBody),
}

/// A response body from the upstream with the body read timeout applied.
pub struct TimedBody {
    inner: UpIncoming,
    timeout: Duration,
    // Created on the first read that has to wait: most small responses are
    // complete in the first poll and never allocate a timer.
    timer: Option<Pin<Box<Sleep>>>,
}

/// The error a [`TimedBody`] yields.
#[derive(Debug)]
pub enum BodyError {
    Upstream(hyper::Error),
    /// Already classified (FastCGI).
    Failed(Failure),
    TimedOut(Duration),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::Upstream(e) => write!(f, "{e}"),
            BodyError::Failed(e) => write!(f, "{e}"),
            BodyError::TimedOut(d) => write!(f, "no body data for {d:?}"),
        }
    }
}
impl std::error::Error for BodyError {}

impl BodyError {
    pub fn failure(&self) -> Failure {
        match self {
            BodyError::Upstream(e) => classify_body(e),
            BodyError::Failed(f) => f.clone(),
            BodyError::TimedOut(d) => Failure::with(
                Cause::ResponseBodyTimeout,
                format!("no body data from the upstream for {}s", d.as_secs_f32()),
            ),
        }
    }
}

impl TimedBody {
    pub fn new(inner: UpIncoming, timeout: Duration) -> Self {
        TimedBody {
            inner,
            timeout,
            timer: None,
        }
    }
    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let polled = match &mut self.inner {
            UpIncoming::Http(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|r| r.map(|r| r.map_err(BodyError::Upstream))),
            UpIncoming::Fcgi(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|r| r.map(|r| r.map_err(BodyError::Failed))),
            UpIncoming::H1(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|r| r.map(|r| r.map_err(|e| BodyError::Failed(classify_h1_body(&e))))),
        };
        match polled {
            Poll::Ready(r) => {
                if let Some(t) = self.timer.as_mut() {
                    t.as_mut().reset(tokio::time::Instant::now() + self.timeout);
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                let timeout = self.timeout;
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                ready!(timer.as_mut().poll(cx));
                Poll::Ready(Some(Err(BodyError::TimedOut(self.timeout))))
            }
        }
    }
    pub fn is_end_stream(&self) -> bool {
        match &self.inner {
            UpIncoming::Http(b) => b.is_end_stream(),
            UpIncoming::Fcgi(b) => b.is_end_stream(),
            UpIncoming::H1(b) => b.is_end_stream(),
        }
    }
    pub fn size_hint(&self) -> SizeHint {
        match &self.inner {
            UpIncoming::Http(b) => b.size_hint(),
            UpIncoming::Fcgi(b) => b.size_hint(),
            UpIncoming::H1(b) => b.size_hint(),
        }
    }
    /// A wire baton drives whose response ended cleanly, for the pool
    /// (hyper's connections go back through their `SendRequest`).
    pub fn take_wire(&mut self) -> Option<Link> {
        match &mut self.inner {
            UpIncoming::Fcgi(b) => b.take_wire().map(Link::Fcgi),
            UpIncoming::H1(b) => b.take_wire().map(Link::H1),
            UpIncoming::Http(_) => None,
        }
    }
}

impl Body for TimedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        TimedBody::poll_frame(self.get_mut(), cx)
    }
    fn is_end_stream(&self) -> bool {
        TimedBody::is_end_stream(self)
    }
    fn size_hint(&self) -> SizeHint {
        TimedBody::size_hint(self)
    }
}

/// What stops baton's user from connecting to a Unix socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketProblem {
    /// The path (or its directory) does not exist.
    Missing(String),
    /// Something else is at the path.
    NotSocket(String),
    /// baton's user may not connect (the socket's mode, or a directory).
    Permission(String),
}

impl SocketProblem {
    pub fn message(&self) -> &str {
        match self {
            SocketProblem::Missing(m)
            | SocketProblem::NotSocket(m)
            | SocketProblem::Permission(m) => m,
        }
    }
}

/// Checks that the Unix socket `p` exists, is a socket, and that baton's
/// user may connect to it (write permission on the socket, search
/// permission on every directory above it); says what to change if not.
pub fn socket_problem(p: &Path) -> Option<SocketProblem> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let me = whoami();
    // A directory on the way that baton may not search.
    for dir in p.ancestors().skip(1).filter(|d| !d.as_os_str().is_empty()) {
        let Ok(md) = std::fs::metadata(dir) else {
            continue;
        };
        if !may_access(dir, nix::unistd::AccessFlags::X_OK) {
            return Some(SocketProblem::Permission(format!(
                "baton runs as {me} and may not enter {} (owner {}:{}, mode {:04o}): give it search permission (`chmod o+x {}`, or add {me} to group {})",
                dir.display(),
                user_name(md.uid()),
                group_name(md.gid()),
                md.mode() & 0o7777,
                dir.display(),
                group_name(md.gid()),
            )));
        }
    }
    let md = match std::fs::metadata(p) {
        Ok(m) => m,
        Err(_) => {
            let dir = p.parent().unwrap_or(Path::new("/"));
            return Some(SocketProblem::Missing(if dir.is_dir() {
                format!(
                    "socket {} does not exist: is the app running? (PHP-FPM creates it from the pool's `listen`; check the version in the path, e.g. php8.2-fpm)",
                    p.display()
                )
            } else {
                format!(
                    "socket {} does not exist, nor its directory {}: is the app installed and running?",
                    p.display(),
                    dir.display()
                )
            }));
        }
    };
    if !md.file_type().is_socket() {
        return Some(SocketProblem::NotSocket(format!(
            "{} is not a socket: point servers at the socket the app creates",
            p.display()
        )));
    }
    if !may_access(p, nix::unistd::AccessFlags::W_OK) {
        let (owner, group) = (user_name(md.uid()), group_name(md.gid()));
        return Some(SocketProblem::Permission(format!(
            "baton runs as {me} but socket {} is {owner}:{group} mode {:04o}: in the PHP-FPM pool set listen.owner = {}, or listen.group = {} with listen.mode = 0660 (or add {} to group {group}), then restart PHP-FPM",
            p.display(),
            md.mode() & 0o7777,
            me.split(' ').next().unwrap_or(&me),
            my_group(),
            me.split(' ').next().unwrap_or(&me),
        )));
    }
    None
}

fn may_access(p: &Path, mode: nix::unistd::AccessFlags) -> bool {
    nix::unistd::access(p, mode).is_ok()
}

/// "name (uid N)" of the user baton runs as.
pub fn whoami() -> String {
    let uid = nix::unistd::geteuid();
    format!("{} (uid {uid})", user_name(uid.as_raw()))
}

fn my_group() -> String {
    group_name(nix::unistd::getegid().as_raw())
}

fn user_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(uid.into()) {
        Ok(Some(u)) => u.name,
        _ => uid.to_string(),
    }
}

fn group_name(gid: u32) -> String {
    match nix::unistd::Group::from_gid(gid.into()) {
        Ok(Some(g)) => g.name,
        _ => gid.to_string(),
    }
}

/// Every Unix-socket server of a config with a problem, as
/// `upstreams.NAME: message`. Sockets of supervised backends that are not
/// there yet are skipped (baton creates them by starting the backend).
pub fn socket_findings(cfg: &crate::config::Config, started: bool) -> Vec<(String, SocketProblem)> {
    let mut out = Vec::new();
    for u in &cfg.upstreams {
        for (i, s) in u.servers.iter().enumerate() {
            let ServerAddr::Unix(p) = &s.addr else {
                continue;
            };
            match socket_problem(p) {
                Some(SocketProblem::Missing(_)) if u.process.is_some() && !started => {}
                Some(pb) => out.push((format!("upstreams.{}.servers[{i}]", u.name), pb)),
                None => {}
            }
        }
    }
    out
}
