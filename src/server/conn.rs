//! One client connection's deadlines, on its socket.
//!
//! hyper's HTTP/2 server has no idle, preface or SETTINGS deadline at all,
//! and nothing notices a client that stops reading; baton's own HTTP/1.1
//! connection (`server/h1.rs`) keeps no timers of its own either.
//! [`Guarded`] wraps the socket both read and write and gives every phase
//! a deadline from the requests it sees start and end ([`Shared`]):
//!
//! | phase | deadline | then |
//! |---|---|---|
//! | HTTP/1.1 head, from its first byte | `header_read_timeout` | `408`, closed |
//! | no request in flight (keep-alive, HTTP/2 with no open stream, a preface and SETTINGS only, a header block never ended) | `idle_timeout` | closed (HTTP/2: `GOAWAY`) |
//! | a write the client does not take | `send_timeout` | closed |
//! | a response frame the client does not take (HTTP/2 flow control kept shut) | `send_timeout` | `GOAWAY`, closed |
//!
//! A request body has its own deadline (`body_read_timeout`, in the body:
//! `upstream::ClientBody`); the first bytes of a new connection are
//! waited for before either protocol gets it (`server::protocol_known`).
//!
//! One timer per connection, created on the first wait and moved only
//! when a deadline comes closer: a keep-alive request costs two atomic
//! adds and a clock read, not a timer.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

use crate::config::ClientLimits;
use crate::core::cause::Cause;
use crate::proxy::RespBody;

/// What a connection's requests tell its I/O, and how it ended.
#[derive(Default)]
pub struct Shared {
    /// Requests whose head was complete, ever.
    started: AtomicU64,
    /// Requests not yet finished (their response is still being sent).
    in_flight: AtomicUsize,
    /// Responses holding a frame they handed over and were not asked for
    /// the next one since: the client's side has not taken it (HTTP/2
    /// flow control shut, or a full socket).
    waiting: AtomicUsize,
    /// Frames taken, ever: the client's side is moving when it grows.
    taken: AtomicU64,
    /// The connection became a tunnel (a `101`): the tunnel's own
    /// timeouts apply, not these.
    upgraded: AtomicBool,
    /// Which deadline ended it: `EXPIRED_*`.
    expired: AtomicU8,
    /// Asks the connection to close gracefully (an HTTP/2 `GOAWAY`): an
    /// idle deadline, or descriptors running out.
    pub close: Notify,
}

/// [`Shared::expired`]: the head was not complete in time (408 sent).
pub const EXPIRED_HEAD: u8 = 1;
/// [`Shared::expired`]: no request for `idle_timeout`.
pub const EXPIRED_IDLE: u8 = 2;
/// [`Shared::expired`]: the client took nothing for `send_timeout`.
pub const EXPIRED_SEND: u8 = 3;

impl Shared {
    /// Which deadline ended the connection (0: none).
    pub fn expired(&self) -> u8 {
        self.expired.load(Ordering::Relaxed)
    }
    /// No request in flight and not a tunnel: closing it loses nothing.
    pub fn idle(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0 && !self.upgraded.load(Ordering::Relaxed)
    }
}

/// A request in flight on a connection, from its complete head until its
/// response ends (or the client resets it).
pub struct Active(Arc<Shared>);

impl Active {
    pub fn new(s: &Arc<Shared>) -> Self {
        s.started.fetch_add(1, Ordering::Relaxed);
        s.in_flight.fetch_add(1, Ordering::Relaxed);
        Active(s.clone())
    }
}

impl Active {
    /// Its response switched protocols: the connection is a tunnel now.
    pub fn upgraded(&self) {
        self.0.upgraded.store(true, Ordering::Relaxed);
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its request [`Active`] until it ends, and
/// tells the connection whether the client takes its frames.
pub struct Tracked {
    body: RespBody,
    active: Active,
    /// The head or the last frame was handed over and not yet followed by
    /// a poll for the next.
    holding: bool,
}

impl Tracked {
    pub fn new(body: RespBody, active: Active) -> Self {
        // Handed over with the head: the first frame is the client's side
        // to ask for (HTTP/2 asks only once the client's window allows).
        let holding = !body.is_end_stream();
        if holding {
            active.0.waiting.fetch_add(1, Ordering::Relaxed);
        }
        Tracked {
            body,
            active,
            holding,
        }
    }

    /// The response body (for a connection that sends a file itself).
    pub fn body_mut(&mut self) -> &mut RespBody {
        &mut self.body
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if self.holding {
            self.active.0.waiting.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = <RespBody as Body>::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let shared = &this.active.0;
        if this.holding {
            // Asked for more: the last frame was taken.
            this.holding = false;
            shared.waiting.fetch_sub(1, Ordering::Relaxed);
            shared.taken.fetch_add(1, Ordering::Relaxed);
        }
        let r = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(_))) = &r
            && !this.body.is_end_stream()
        {
            this.holding = true;
            shared.waiting.fetch_add(1, Ordering::Relaxed);
        }
        r
    }
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The deadlines one connection keeps (from `[server]`).
#[derive(Clone, Copy)]
pub struct Deadlines {
    pub header: Duration,
    pub idle: Duration,
    pub send: Duration,
}

impl Deadlines {
    pub fn new(l: &ClientLimits) -> Self {
        Deadlines {
            header: l.header_read_timeout,
            idle: l.idle_timeout,
            send: l.send_timeout,
        }
    }
}

/// What a pending read is waiting for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// The rest of an HTTP/1.1 head.
    Head,
    /// A request, on a connection with none in flight.
    Idle,
    /// A request is in flight: look again later.
    Recheck,
    /// Responses wait for the client to take a frame, and none has been
    /// taken since (HTTP/2 flow control the client keeps shut).
    Stalled,
    /// A request, on an HTTP/1.1 connection that may be parked
    /// ([`Guarded::allow_park`]) once idle for [`super::park::PARK_AFTER`].
    Park,
}

/// The answer to a head baton will not read, or that did not arrive in
/// time (written raw: there is no request to answer), with the cause in
/// `Proxy-Status`: `request_malformed` (400), `request_header_too_large`
/// (431) or `request_timeout` (408).
pub fn refusal(cause: Cause) -> &'static [u8] {
    use std::sync::OnceLock;
    static ANSWERS: [OnceLock<Vec<u8>>; 3] = [const { OnceLock::new() }; 3];
    let slot = match cause {
        Cause::RequestTimeout => 0,
        Cause::RequestHeaderTooLarge => 1,
        _ => 2,
    };
    ANSWERS[slot].get_or_init(|| {
        let c = [
            Cause::RequestTimeout,
            Cause::RequestHeaderTooLarge,
            Cause::RequestMalformed,
        ][slot];
        let status = http::StatusCode::from_u16(c.status()).unwrap_or(http::StatusCode::BAD_REQUEST);
        format!(
            "HTTP/1.1 {} {}\r\nconnection: close\r\ncontent-length: 0\r\nproxy-status: baton; error={}; details=\"{}\"\r\n\r\n",
            status.as_str(),
            status.canonical_reason().unwrap_or(""),
            c.proxy_status(),
            c.id()
        )
        .into_bytes()
    })
}

/// A client socket with its deadlines (see the module's table).
pub struct Guarded {
    io: Stream,
    shared: Arc<Shared>,
    limits: Deadlines,
    h2: bool,
    /// `started` when the head being read began, and when.
    head: Option<(u64, Instant)>,
    /// `started` when the connection was last seen idle, and since when.
    idle: (u64, Instant),
    /// Since when a write has been waiting for the client.
    blocked: Option<Instant>,
    /// `taken` when responses were last seen moving, and when.
    moved: (u64, Instant),
    timer: Option<Pin<Box<Sleep>>>,
    /// A deadline fired and the close was asked for.
    closing: bool,
    /// The wait for the next request may end in parking
    /// ([`Guarded::allow_park`]).
    parkable: bool,
    /// It did: the read ended for the connection to be parked.
    parking: bool,
    /// Served again from the park, and nothing read yet: not parked
    /// again before it reads (its first wait is for the readiness that
    /// woke it, which the runtime has yet to learn of).
    resumed: bool,
}

impl Guarded {
    pub fn new(io: Stream, shared: Arc<Shared>, limits: Deadlines, h2: bool) -> Self {
        Guarded {
            io,
            shared,
            limits,
            h2,
            head: None,
            idle: (0, Instant::now()),
            blocked: None,
            moved: (0, Instant::now()),
            timer: None,
            closing: false,
            parkable: false,
            parking: false,
            resumed: false,
        }
    }

    /// A parked connection served again: its idle time goes on from
    /// `idle_since` (the idle deadline does not start over).
    pub fn resumed(
        io: Stream,
        shared: Arc<Shared>,
        limits: Deadlines,
        idle_since: Instant,
    ) -> Self {
        let started = shared.started.load(Ordering::Relaxed);
        let mut g = Guarded::new(io, shared, limits, false);
        g.idle = (started, idle_since);
        g.resumed = true;
        g
    }

    /// Whether the wait for the next request (HTTP/1.1, nothing of it read
    /// yet) may end after [`super::park::PARK_AFTER`] of idleness with the
    /// read returning no bytes and [`Guarded::park`] giving the socket to
    /// the park. Plain TCP only: a TLS connection's state stays in its
    /// task. Any bytes read end the permission.
    pub fn allow_park(&mut self, yes: bool) {
        self.parkable = yes && !self.h2 && !self.resumed && matches!(self.io, Stream::Plain(_));
    }

    /// Whether the last read ended for the connection to be parked.
    pub fn parking(&self) -> bool {
        self.parking
    }

    /// The socket, taken off the runtime to be parked, and since when the
    /// connection is idle (`None`: the runtime would not let it go, and
    /// the connection is closed).
    pub fn park(self) -> Option<(std::net::TcpStream, Instant)> {
        match self.io {
            Stream::Plain(tcp) => tcp.into_std().ok().map(|t| (t, self.idle.1)),
            Stream::Tls(..) => None,
        }
    }

    /// What a read that has to wait is waiting for, and until when.
    fn read_deadline(&mut self, now: Instant) -> (Wait, Instant) {
        let s = &self.shared;
        if s.upgraded.load(Ordering::Relaxed) {
            return (Wait::Recheck, now + self.limits.idle);
        }
        if s.in_flight.load(Ordering::Relaxed) > 0 {
            let taken = s.taken.load(Ordering::Relaxed);
            if s.waiting.load(Ordering::Relaxed) == 0 || taken != self.moved.0 {
                self.moved = (taken, now);
                return (Wait::Recheck, now + self.limits.send);
            }
            return (Wait::Stalled, self.moved.1 + self.limits.send);
        }
        let started = s.started.load(Ordering::Relaxed);
        if self.idle.0 != started {
            // A request ended since: idle from now.
            self.idle = (started, now);
        }
        match self.head {
            Some((g, t)) if g == started => (Wait::Head, t + self.limits.header),
            _ if self.parkable && super::park::PARK_AFTER < self.limits.idle => {
                (Wait::Park, self.idle.1 + super::park::PARK_AFTER)
            }
            _ => (Wait::Idle, self.idle.1 + self.limits.idle),
        }
    }

    /// Polls the one timer for `at`: ready when `at` has passed. Moves it
    /// only when `at` is sooner than where it is set (a later deadline is
    /// found when it fires early).
    fn poll_timer(&mut self, cx: &mut Context<'_>, at: Instant) -> Poll<()> {
        let t = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        if t.deadline() > at || t.is_elapsed() {
            t.as_mut().reset(at);
        }
        t.as_mut().poll(cx)
    }

    fn expire(&mut self, what: u8) {
        self.shared.expired.store(what, Ordering::Relaxed);
        self.closing = true;
    }

    /// A read would wait: applies the deadline of what it waits for.
    fn poll_read_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.closing {
            return Poll::Pending;
        }
        loop {
            let now = Instant::now();
            let (wait, at) = self.read_deadline(now);
            if self.poll_timer(cx, at).is_pending() {
                return Poll::Pending;
            }
            if wait == Wait::Recheck || Instant::now() < at {
                continue;
            }
            return match wait {
                Wait::Head => {
                    self.expire(EXPIRED_HEAD);
                    // Best effort: the socket has room for a short answer
                    // unless the client also stopped reading.
                    self.io.try_send(refusal(Cause::RequestTimeout));
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "request head not complete within header_read_timeout",
                    )))
                }
                Wait::Park => {
                    // The end of this task's reading: the connection waits
                    // on in the park, without a task (server/park.rs).
                    self.parking = true;
                    Poll::Ready(Ok(()))
                }
                Wait::Stalled => {
                    // The client keeps its window shut: GOAWAY, then the
                    // close once the grace is over (server.rs).
                    self.expire(EXPIRED_SEND);
                    self.shared.close.notify_one();
                    Poll::Pending
                }
                _ if self.h2 => {
                    // hyper sends GOAWAY and closes (server.rs).
                    self.expire(EXPIRED_IDLE);
                    self.shared.close.notify_one();
                    Poll::Pending
                }
                // HTTP/1.1 idle: the end of the stream, closed quietly.
                _ => {
                    self.expire(EXPIRED_IDLE);
                    Poll::Ready(Ok(()))
                }
            };
        }
    }

    /// A write would wait: the client has `send_timeout` to take more.
    fn poll_write_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let now = Instant::now();
        let since = *self.blocked.get_or_insert(now);
        let at = since + self.limits.send;
        if self.poll_timer(cx, at).is_pending() || Instant::now() < at {
            return Poll::Pending;
        }
        self.expire(EXPIRED_SEND);
        Poll::Ready(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client took no response data within send_timeout",
        ))
    }

    /// Whether files can go to this socket with `sendfile` (plain TCP).
    pub fn can_sendfile(&self) -> bool {
        matches!(self.io, Stream::Plain(_))
    }

    /// Writes `buf` with `MSG_MORE` (plain TCP only): the kernel holds a
    /// short piece until the next write fills the segment, as nginx's
    /// `tcp_nopush` does for a head before `sendfile` (without its two
    /// `setsockopt` calls a response).
    pub fn poll_write_more(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        use std::os::fd::AsRawFd;
        // nix names no MSG_MORE; the flag is Linux's own.
        let more = nix::sys::socket::MsgFlags::from_bits_retain(libc::MSG_MORE);
        self.poll_plain(cx, |tcp| {
            nix::sys::socket::send(tcp.as_raw_fd(), buf, more).map_err(io::Error::from)
        })
    }

    /// Sends the next piece of `f` with `sendfile`, under the same send
    /// deadline as a write. Plain TCP only ([`Guarded::can_sendfile`]).
    pub fn poll_sendfile(
        &mut self,
        cx: &mut Context<'_>,
        f: &mut crate::upstream::files::FileBody,
    ) -> Poll<io::Result<usize>> {
        self.poll_plain(cx, |tcp| f.sendfile(tcp))
    }

    /// A write by a system call tokio has no method for, on the plain
    /// socket, polled and under the send deadline as any write.
    fn poll_plain(
        &mut self,
        cx: &mut Context<'_>,
        mut write: impl FnMut(&TcpStream) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        loop {
            let Stream::Plain(tcp) = &self.io else {
                return Poll::Ready(Err(io::ErrorKind::Unsupported.into()));
            };
            match tcp.try_io(tokio::io::Interest::WRITABLE, || write(tcp)) {
                Ok(n) => return self.wrote(cx, Poll::Ready(Ok(n))),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            match tcp.poll_write_ready(cx) {
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return self.wrote(cx, Poll::Pending),
            }
        }
    }
}

impl AsyncRead for Guarded {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Pending => this.poll_read_deadline(cx),
            Poll::Ready(Ok(())) => {
                if !this.h2 && buf.filled().len() > before {
                    this.parkable = false;
                    this.resumed = false;
                    // The first bytes of a head start its deadline.
                    let started = this.shared.started.load(Ordering::Relaxed);
                    if this.head.is_none_or(|(g, _)| g != started)
                        && this.shared.in_flight.load(Ordering::Relaxed) == 0
                    {
                        this.head = Some((started, Instant::now()));
                        http_1x_as_11(&mut buf.filled_mut()[before..]);
                    }
                }
                Poll::Ready(Ok(()))
            }
            r => r,
        }
    }
}

impl Guarded {
    /// A write's result, with the send deadline applied when it waits.
    #[inline]
    fn wrote(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match r {
            Poll::Pending => self.poll_write_deadline(cx).map(Err),
            r => {
                self.blocked = None;
                r
            }
        }
    }
}

impl AsyncWrite for Guarded {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        this.wrote(cx, r)
    }
    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.wrote(cx, r)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// A client connection: plain TCP, or TLS over it (boxed: rustls's
/// state is large, and most connections of a plain listener never need it).
pub enum Stream {
    Plain(TcpStream),
    /// TLS, and bytes already read from it (the HTTP/2 preface, checked
    /// before hyper sees the connection), given back first.
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>, Bytes),
}

impl Stream {
    /// Writes `b` if the socket takes it now, without waiting (the 408 on
    /// a head deadline: best effort).
    fn try_send(&mut self, b: &[u8]) {
        match self {
            Stream::Plain(s) => {
                let _ = s.try_write(b);
            }
            Stream::Tls(s, _) => {
                // Encrypts into rustls's buffer, then one non-blocking
                // flush to the socket.
                let (tcp, tls) = s.get_mut();
                let _ = std::io::Write::write_all(&mut tls.writer(), b);
                let mut out = Vec::new();
                let _ = tls.write_tls(&mut out);
                let _ = tcp.try_write(&out);
            }
        }
    }
}

macro_rules! each_stream {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Stream::Plain($s) => {
                let $s = Pin::new($s);
                $e
            }
            Stream::Tls($s, _) => {
                let $s = Pin::new(&mut **$s);
                $e
            }
        }
    };
}

impl AsyncRead for Stream {
    #[inline]
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Stream::Tls(_, first) = self.as_mut().get_mut()
            && give_back(first, buf)
        {
            return Poll::Ready(Ok(()));
        }
        each_stream!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each_stream!(self, s => s.poll_write(cx, buf))
    }
    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        each_stream!(self, s => s.poll_write_vectored(cx, bufs))
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s, _) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each_stream!(self, s => s.poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each_stream!(self, s => s.poll_shutdown(cx))
    }
}

/// Bytes read ahead of whoever reads next (the HTTP/2 preface checked
/// before hyper, what a client sent after an upgrade request): handed
/// over first. False when none are left.
pub(super) fn give_back(ahead: &mut Bytes, buf: &mut ReadBuf<'_>) -> bool {
    if ahead.is_empty() {
        return false;
    }
    let n = ahead.len().min(buf.remaining());
    buf.put_slice(&ahead.split_to(n));
    true
}

/// RFC 9110 §2.5: a request line of a later HTTP/1 minor version
/// (`HTTP/1.2`) is answered as HTTP/1.1, the highest baton speaks; hyper's
/// parser knows only 1.0 and 1.1 and would answer 400. Rewrites the digit
/// in the head's first read (a request line cut before its version is
/// left to hyper).
fn http_1x_as_11(first: &mut [u8]) {
    let Some(end) = first.iter().position(|&b| b == b'\n') else {
        return;
    };
    let line = first[..end].strip_suffix(b"\r").unwrap_or(&first[..end]);
    let len = line.len();
    if len > 9 && &line[len - 9..len - 1] == b" HTTP/1." && (b'2'..=b'9').contains(&line[len - 1]) {
        first[len - 1] = b'1';
    }
}

#[cfg(test)]
mod tests {
    use super::http_1x_as_11;

    #[test]
    fn later_http_1_minor_versions_are_read_as_1_1() {
        for (sent, read) in [
            (
                "GET / HTTP/1.2\r\nHost: t\r\n\r\n",
                "GET / HTTP/1.1\r\nHost: t\r\n\r\n",
            ),
            ("GET / HTTP/1.9\n\n", "GET / HTTP/1.1\n\n"),
            ("GET / HTTP/1.1\r\n", "GET / HTTP/1.1\r\n"),
            ("GET / HTTP/1.0\r\n", "GET / HTTP/1.0\r\n"),
            ("GET / HTTP/2.0\r\n", "GET / HTTP/2.0\r\n"),
            ("GET / HTTP/1.2", "GET / HTTP/1.2"),
        ] {
            let mut b = sent.as_bytes().to_vec();
            http_1x_as_11(&mut b);
            assert_eq!(String::from_utf8(b).unwrap(), read);
        }
    }
}
