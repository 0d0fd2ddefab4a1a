//! The connection and what flows over it: the request body sent
//! (`UpBody`), the metered stream (bytes counted, first bytes kept, the
//! write timeout), the `Wire` baton drives itself, and the `Link` a pooled
//! connection is.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use hyper::client::conn::http1::SendRequest;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio::time::Sleep;

use crate::core::body::{BodyError, RequestBody};
use crate::core::cause::Cause;
use crate::core::failure::Failure;

/// The request body sent upstream: empty, buffered (replayable) or streamed.
pub enum UpBody {
    Empty,
    Full(Option<Bytes>),
    /// Streamed from the client, watched (`max_body_bytes`, client faults).
    Stream(ClientBody, Streamed),
}

/// A client's request body with the body read deadline
/// (`server.body_read_timeout`): no data for that long between two reads
/// is the client's fault.
pub struct ClientBody {
    inner: RequestBody,
    idle: super::body::IdleTimer,
}

/// Why a client's request body failed.
#[derive(Debug)]
pub enum ClientBodyError {
    /// Malformed framing, or the connection closed or reset mid-body.
    Broken(BodyError),
    /// No data for this long.
    Stalled(Duration),
}

impl std::fmt::Display for ClientBodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientBodyError::Broken(e) => write!(f, "{e}"),
            ClientBodyError::Stalled(d) => {
                write!(f, "the client sent no body data for {}s", d.as_secs_f32())
            }
        }
    }
}
impl std::error::Error for ClientBodyError {}

impl ClientBodyError {
    /// The client-side failure it is (never the upstream's).
    pub fn failure(&self) -> Failure {
        match self {
            ClientBodyError::Broken(_) => Failure::with(
                Cause::RequestBodyIncomplete,
                "the client's request body was malformed or ended early",
            ),
            ClientBodyError::Stalled(_) => Failure::with(Cause::RequestTimeout, self.to_string()),
        }
    }
}

impl ClientBody {
    pub fn new(inner: RequestBody, idle: Duration) -> Self {
        ClientBody {
            inner,
            idle: super::body::IdleTimer::new(idle),
        }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(r) => {
                this.idle.progressed();
                Poll::Ready(r.map(|r| r.map_err(ClientBodyError::Broken)))
            }
            Poll::Pending => {
                ready!(this.idle.poll_elapsed(cx));
                Poll::Ready(Some(Err(ClientBodyError::Stalled(this.idle.timeout))))
            }
        }
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What a streamed client body reports to the attempt loop, which cannot
/// see it once a client (hyper's) polls it: the client's own fault, not
/// the upstream's, when the exchange then fails.
#[derive(Clone)]
pub struct Streamed {
    /// `max_body_bytes` (bodies without a Content-Length).
    pub limit: Option<u64>,
    /// What is left of it.
    pub left: Option<u64>,
    /// Why the body stopped short (the client's fault), once it did.
    failure: Arc<std::sync::OnceLock<Failure>>,
}

impl Streamed {
    pub fn new(limit: Option<u64>) -> Self {
        Streamed {
            limit,
            left: limit,
            failure: Arc::default(),
        }
    }
    /// The client-side failure that stopped the body, if one did: the
    /// attempt answers with it instead of blaming the upstream.
    pub fn failure(&self) -> Option<Failure> {
        self.failure.get().cloned()
    }
    fn failed(&self, f: Failure) {
        let _ = self.failure.set(f);
    }
}

/// The client's body passed `max_body_bytes` while streaming.
#[derive(Debug)]
struct BodyTooLarge;
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
            UpBody::Stream(s, watch) => {
                let r = ready!(Pin::new(s).poll_frame(cx));
                match (&r, watch.left.as_mut()) {
                    (Some(Ok(f)), Some(left)) => {
                        let n = f.data_ref().map_or(0, |d| d.len() as u64);
                        if n > *left {
                            watch.failed(Failure::with(
                                Cause::BodyTooLarge,
                                format!(
                                    "the streamed body passed {} bytes",
                                    watch.limit.unwrap_or(0)
                                ),
                            ));
                            return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                        }
                        *left -= n;
                    }
                    (Some(Err(e)), _) => watch.failed(e.failure()),
                    _ => {}
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
    pub(super) idle_since_ms: AtomicU64,
    /// From the upstream's `Keep-Alive: timeout=N`, in ms (0 = none).
    pub keepalive_hint_ms: AtomicU64,
}

impl ConnInfo {
    pub(super) fn new() -> Self {
        ConnInfo {
            stats: ConnStats::default(),
            created: Instant::now(),
            retired: AtomicBool::new(false),
            idle_since_ms: AtomicU64::new(u64::MAX),
            keepalive_hint_ms: AtomicU64::new(0),
        }
    }
    pub(super) fn ms_since_created(&self) -> u64 {
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

impl Stream {
    /// The protocol the TLS handshake agreed on (ALPN); `None` without TLS.
    pub fn alpn(&self) -> Option<&[u8]> {
        match self {
            Stream::Tls(s) => s.get_ref().1.alpn_protocol(),
            Stream::TlsUnix(s) => s.get_ref().1.alpn_protocol(),
            _ => None,
        }
    }
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
    pub(super) inner: Stream,
    pub(super) info: Arc<ConnInfo>,
    pub(super) write_timeout: Duration,
    pub(super) write_timer: Option<Pin<Box<Sleep>>>,
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

/// What a request is sent over: an HTTP/1.1 wire driven by the request
/// itself ([`crate::upstream::h1`]), hyper's HTTP/1.1 client connection (driven by
/// its own task: streamed request bodies and upgrades), or a FastCGI wire.
pub enum Link {
    H1(Box<Wire>),
    Http(SendRequest<UpBody>),
    Fcgi(Box<Wire>),
    /// An HTTP/2 connection (`protocol = "http2"`): many requests at once;
    /// the pool hands out clones of its sender.
    H2(hyper::client::conn::http2::SendRequest<UpBody>),
}

impl Link {
    /// The peer closed the connection (or sent what no request asked for).
    pub fn is_closed(&mut self) -> bool {
        match self {
            Link::Http(tx) => tx.is_closed(),
            Link::H2(tx) => tx.is_closed(),
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
    /// A FastCGI connection's claim on one of the server's workers.
    pub(crate) claim: Option<crate::upstream::workers::Claim>,
}

const MIN_READ: usize = 16 * 1024;
const MAX_READ: usize = 256 * 1024;

impl Wire {
    pub fn new(io: Metered) -> Self {
        Wire {
            io,
            buf: BytesMut::with_capacity(MIN_READ),
            read_size: MIN_READ,
            claim: None,
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
