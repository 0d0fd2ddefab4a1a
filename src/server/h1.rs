//! Baton's own HTTP/1.1 server connection: one task per connection, the
//! head parsed with httparse off a buffer that exists only while a head
//! or a body is being read, the response written in as few writes as the
//! body allows.
//!
//! Written by hand rather than through hyper's server connection for
//! three measured reasons (docs/benchmarks.md): hyper's dispatcher and
//! header encoding were the largest user-space cost left per proxied
//! request; it keeps an 8 KB read buffer, an 8 KB write buffer and the box
//! it moves each request's future into for the connection's whole life
//! (an idle keep-alive connection cost ~36 KB against nginx's 0.7 KB);
//! and its writes cannot send a file with `sendfile`. HTTP/2 stays hyper's.
//!
//! The reading is hyper's to the letter, because the request-smuggling
//! results depend on it (docs/security.md): httparse with its default
//! configuration, at most 100 fields, the head bounded by
//! `max_request_header_bytes` (431); RFC 9112 §6.3 framing:
//! `Transfer-Encoding` in HTTP/1.0 or not ending in `chunked` is 400, with
//! `Content-Length` as well the length is dropped and the connection closed
//! after the response, differing or malformed lengths are 400. Chunked
//! bodies go through the same strict decoder as upstream responses
//! (`upstream::h1::step_chunk`).
//!
//! The deadlines are the socket's (`conn::Guarded`): a head not complete
//! in time gets 408, an idle connection is closed, a client that takes no
//! response data is dropped.

use std::future::{Future, poll_fn};
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri, Version};
use http_body::{Body, Frame};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::conn::{Active, Guarded, Shared, Tracked, give_back, refusal};
use crate::core::body::{ClientUpgrade, PipeTx, RequestBody, Tunnel, Want, pipe};
use crate::core::cause::Cause;
use crate::gateway::Gateway;
use crate::proxy;
use crate::upstream::h1::{Chunk, Step, content_length, has_token, step_chunk};

/// httparse's limit on header fields (hyper's default too).
const MAX_HEADERS: usize = 100;
/// hyper's bound on a request target.
const MAX_TARGET: usize = u16::MAX as usize - 1;
/// A head is read in pieces of up to this.
const HEAD_READ: usize = 4096;
/// A body is read in pieces of up to this.
const BODY_READ: usize = 64 * 1024;
/// Response frames are gathered into one write up to this.
const GATHER: usize = 64 * 1024;
/// A file at least this large goes with `sendfile` on a plain connection
/// (a smaller one goes in the head's write).
const SENDFILE_MIN: u64 = 32 * 1024;
/// A frame at least this large is written from where it is, not copied.
const COPY_MAX: usize = 8 * 1024;

/// The connection-level facts a request needs.
pub(super) struct Site {
    pub gw: Arc<Gateway>,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub https: bool,
    pub max_head: usize,
    /// An idle connection may be parked (server/park.rs).
    pub parks: bool,
}

/// How [`serve`] ended.
pub(super) enum Served {
    /// The connection is over (and how, logged).
    Closed,
    /// It was idle for `park::PARK_AFTER`: its socket, taken off the
    /// runtime to be parked, since when it is idle, and the client.
    Idle(std::net::TcpStream, tokio::time::Instant, SocketAddr),
}

/// Serves HTTP/1.1 on `c` until the client closes, a deadline passes, a
/// response must end the connection, or a close is asked for
/// (`Shared::close`: a deadline, a shortage of descriptors, the gateway
/// stopping), which is heeded between requests; or, where `site.parks`,
/// until it was idle for `park::PARK_AFTER` ([`Served::Idle`]).
///
/// A function returning an `async move` block, not an `async fn`: an
/// `async fn` copies its arguments into locals and keeps both in the task
/// (the connection, ~290 bytes, twice in every idle connection's task);
/// a block's captures are used in place.
#[allow(clippy::manual_async_fn)] // the task's size: see the comment
pub(super) fn serve(mut c: Conn, site: Site, shared: Arc<Shared>) -> impl Future<Output = Served> {
    async move {
        // Asked to close (a deadline, a shortage of descriptors, the gateway
        // stopping): heeded between requests.
        let closer = shared.close.notified();
        tokio::pin!(closer);
        let served = 'conn: loop {
            // The head is parsed between waits, never across one: a head held
            // over an `await` (as a wait's result) would take its ~300 bytes,
            // twice or more, in every idle connection's task.
            let head = loop {
                // (The parse's result ends with this statement: a `match`
                // that waits would keep it, ~300 bytes, in the task.)
                let refused = match c.buffered_head(site.max_head) {
                    Ok(Some(h)) => break h,
                    Ok(None) => None,
                    Err(cause) => Some(cause),
                };
                if let Some(cause) = refused {
                    proxy::client_fault(&site.gw, site.peer, cause);
                    Box::pin(c.end(Next::Refuse(cause))).await;
                    break 'conn Served::Closed;
                }
                // Nothing of the next request yet: the wait may end in
                // parking.
                c.io.allow_park(site.parks && c.rbuf.is_empty());
                let more = tokio::select! {
                    biased;
                    more = c.read_more() => more,
                    _ = &mut closer => break 'conn Served::Closed,
                };
                if !more {
                    if c.io.parking() {
                        return match c.io.park() {
                            Some((tcp, since)) => Served::Idle(tcp, since, site.peer),
                            None => Served::Closed,
                        };
                    }
                    break 'conn Served::Closed;
                }
            };
            // One request, in one allocation: the proxy's future and the
            // response's state live only while a request does, so an idle
            // connection's task holds only the connection. (The head is moved
            // into it before anything waits.)
            // The box is allocated before the future is made, so that it is
            // made in place (`Box::pin` would make ~5 KB on the stack, then
            // copy them into the box).
            let next = Box::into_pin(Box::write(
                Box::new_uninit(),
                exchange(&mut c, head, &site, &shared),
            ))
            .await;
            if let Next::Request = next {
                if c.rbuf.is_empty() {
                    // Idle: hold no buffer.
                    c.rbuf = BytesMut::new();
                }
                continue;
            }
            // The end of the connection (boxed too: rare, and its timers
            // would size every connection's task).
            Box::pin(c.end(next)).await;
            break 'conn Served::Closed;
        };
        super::ended(&site.gw, site.peer, &shared, Ok(()));
        served
    }
}

/// What follows a request on the connection.
enum Next {
    /// The next request.
    Request,
    /// The response said so, or the request: close.
    Close,
    /// A request body is left unread: close without a reset.
    Linger,
    /// A head baton will not read: answered with this cause, closed.
    Refuse(Cause),
    /// A `101` was written: the connection goes to the tunnel.
    Upgrade(tokio::sync::oneshot::Sender<Box<dyn Tunnel>>),
    /// The connection failed.
    Gone,
}

/// Serves one request whose head was read.
///
/// An `async move` block, not an `async fn`: that would keep the head
/// twice in the request's future (the argument, and the locals it is
/// moved to), and the future is moved into its box whole.
#[allow(clippy::manual_async_fn)] // the future's size: see the comment
fn exchange<'a>(
    c: &'a mut Conn,
    mut head: Head,
    site: &'a Site,
    shared: &'a Arc<Shared>,
) -> impl Future<Output = Next> + 'a {
    async move {
        // The head's fields are used where they are (moved into locals, the
        // request would be in the future twice).
        let req = &mut head.req;
        let mut keep_alive = head.keep_alive;
        let head_request = req.method() == Method::HEAD;
        let connect = req.method() == Method::CONNECT;
        let version = req.version();
        let active = Active::new(shared);
        if let Some(length) = head.length {
            let (tx, rx) = pipe(match length {
                Length::Bytes(n) => Some(n),
                Length::Chunked => None,
            });
            *req.body_mut() = RequestBody::Piped(rx);
            c.feed = Some(Feed {
                tx,
                length: match length {
                    Length::Bytes(n) => Framing::Left(n),
                    Length::Chunked => Framing::Chunked(Chunk::Size),
                },
                continue_at: head.expect_continue.then_some(0),
                end: None,
            });
        }
        let upgrade = head.wants_upgrade.then(|| {
            let (tx, rx) = tokio::sync::oneshot::channel();
            req.extensions_mut().insert(ClientUpgrade::new(rx));
            tx
        });
        let handling = proxy::handle(site.gw.clone(), head.req, site.peer, site.local, site.https);
        tokio::pin!(handling);
        let resp = poll_fn(|cx| {
            c.poll_feed(cx);
            handling.as_mut().poll(cx)
        })
        .await;
        let status = resp.status();
        let switching = status == StatusCode::SWITCHING_PROTOCOLS && upgrade.is_some();
        if switching {
            active.upgraded();
        }
        // A request body not yet read to its end when the answer is ready:
        // the connection will close after it, and the answer says so.
        if c.feed.as_ref().is_some_and(|f| f.end != Some(true)) {
            keep_alive = false;
        }
        let (parts, body) = resp.into_parts();
        let mut out = Out::default();
        let framing = out.head(
            &parts,
            version,
            head_request || connect && status.is_success(),
            &body,
            &mut keep_alive,
            switching,
        );
        let mut writing = Writing {
            body: (framing.is_some() && !switching).then(|| Tracked::new(body, active)),
            framing: framing.unwrap_or(Framing::Left(0)),
            trailers: head.te_trailers,
            sendfile: false,
        };
        // A static file as it is, large enough to be worth a second system
        // call, to a plain socket: `sendfile`, as nginx's `sendfile on`
        // (the kernel hands the page cache's pages to the socket: no copy
        // into it, even of a file baton keeps in memory, a third of the CPU
        // of a 100 KB response). The head goes first with `MSG_MORE`, so
        // it leaves in the file's first segment. A smaller file goes in the
        // head's write.
        if let (Some(b), Framing::Left(n)) = (writing.body.as_mut(), writing.framing) {
            writing.sendfile = c.io.can_sendfile()
                && n >= SENDFILE_MIN
                && b.body_mut().file_mut().is_some_and(|f| f.remaining() == n);
        }
        let written = poll_fn(|cx| {
            c.poll_feed(cx);
            c.poll_respond(cx, &mut out, &mut writing)
        })
        .await;
        if written.is_err() {
            return Next::Gone;
        }
        if switching {
            return upgrade.map_or(Next::Gone, Next::Upgrade);
        }
        // A body not read to its end (the answer came first, or nobody
        // wanted it) leaves the connection's framing unknown: close it.
        match c.feed.take() {
            Some(f) if f.end != Some(true) => Next::Linger,
            _ if !keep_alive => Next::Close,
            _ => Next::Request,
        }
    }
}

/// How a request body is delimited.
#[derive(Clone, Copy)]
enum Length {
    Bytes(u64),
    Chunked,
}

/// A parsed request head.
struct Head {
    req: Request<RequestBody>,
    /// None: no body.
    length: Option<Length>,
    keep_alive: bool,
    expect_continue: bool,
    wants_upgrade: bool,
    /// `TE: trailers`: the client takes trailer fields.
    te_trailers: bool,
}

/// How a body on the wire is delimited, and how much is left.
#[derive(Clone, Copy)]
enum Framing {
    /// Bytes left of a known length.
    Left(u64),
    Chunked(Chunk),
    /// Until the connection closes (an HTTP/1.0 client, a length unknown).
    Close,
}

/// The request body being read off the connection.
struct Feed {
    tx: PipeTx,
    length: Framing,
    /// `100 Continue` is owed once the body is asked for: how much of it
    /// was written.
    continue_at: Option<usize>,
    /// Ended: whole (`true`) or not.
    end: Option<bool>,
}

pub(super) struct Conn {
    io: Guarded,
    /// What the client sent and was not consumed yet; no allocation while
    /// the connection is idle.
    rbuf: BytesMut,
    feed: Option<Feed>,
}

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

impl Conn {
    pub(super) fn new(io: Guarded) -> Self {
        Conn {
            io,
            rbuf: BytesMut::new(),
            feed: None,
        }
    }

    /// The head at the front of what was read, if it is complete.
    fn buffered_head(&mut self, max: usize) -> Result<Option<Head>, Cause> {
        if self.rbuf.is_empty() {
            return Ok(None);
        }
        parse_head(&mut self.rbuf, max)
    }

    /// Waits for more of a head: false when the client closed (or a
    /// deadline ended the connection) first.
    async fn read_more(&mut self) -> bool {
        matches!(poll_fn(|cx| self.poll_fill(cx, HEAD_READ)).await, Ok(n) if n > 0)
    }

    /// Reads more into `rbuf`, up to about `want`. A head read with no
    /// buffer lands on the stack and only what came is kept: an idle
    /// connection allocates nothing until its client sends. (A body's
    /// reads go straight into the buffer.)
    fn poll_fill(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        if self.rbuf.capacity() == 0 && want <= HEAD_READ {
            let mut tmp = [MaybeUninit::<u8>::uninit(); HEAD_READ];
            let mut rb = ReadBuf::uninit(&mut tmp);
            ready!(Pin::new(&mut self.io).poll_read(cx, &mut rb))?;
            let n = rb.filled().len();
            self.rbuf = BytesMut::with_capacity(n.max(want.min(1024)));
            self.rbuf.extend_from_slice(rb.filled());
            return Poll::Ready(Ok(n));
        }
        if self.rbuf.capacity() - self.rbuf.len() < want / 2 {
            self.rbuf.reserve(want);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf)
    }

    /// Moves the request body along as far as its reader wants.
    fn poll_feed(&mut self, cx: &mut Context<'_>) {
        loop {
            let Some(f) = self.feed.as_mut() else { return };
            if f.end.is_some() {
                return;
            }
            match f.tx.poll_want(cx, f.continue_at.is_some()) {
                Poll::Pending => return,
                Poll::Ready(Want::Nothing) => {
                    f.end = Some(false);
                    return;
                }
                Poll::Ready(Want::Chunk) => {}
            }
            if let Some(at) = f.continue_at.as_mut() {
                while *at < CONTINUE.len() {
                    match Pin::new(&mut self.io).poll_write(cx, &CONTINUE[*at..]) {
                        Poll::Pending => return,
                        Poll::Ready(Ok(n)) if n > 0 => *at += n,
                        Poll::Ready(_) => {
                            f.tx.end(Err("the client went away".into()));
                            f.end = Some(false);
                            return;
                        }
                    }
                }
                f.continue_at = None;
            }
            match &mut f.length {
                Framing::Left(left) if !self.rbuf.is_empty() => {
                    let n = (*left).min(self.rbuf.len() as u64) as usize;
                    *left -= n as u64;
                    f.tx.send(self.rbuf.split_to(n).freeze());
                    if *left == 0 {
                        f.tx.end(Ok(()));
                        f.end = Some(true);
                    }
                    continue;
                }
                Framing::Chunked(state) => match step_chunk(state, &mut self.rbuf) {
                    Ok(Step::Data(d)) => {
                        f.tx.send(d);
                        continue;
                    }
                    Ok(Step::End) => {
                        f.tx.end(Ok(()));
                        f.end = Some(true);
                        return;
                    }
                    Ok(Step::More) => {}
                    Err(_) => {
                        f.tx.end(Err("malformed chunked framing".into()));
                        f.end = Some(false);
                        return;
                    }
                },
                _ => {}
            }
            match self.poll_fill(cx, BODY_READ) {
                Poll::Pending => return,
                Poll::Ready(Ok(n)) if n > 0 => {}
                Poll::Ready(r) => {
                    let why = match r {
                        Err(e) => format!("reading the request body: {e}"),
                        Ok(_) => "the client closed the connection mid-body".into(),
                    };
                    if let Some(f) = self.feed.as_mut() {
                        f.tx.end(Err(why));
                        f.end = Some(false);
                    }
                    return;
                }
            }
        }
    }

    /// Writes the response: the head gathered with whatever the body has
    /// ready, then the rest as it comes.
    fn poll_respond(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut Out,
        w: &mut Writing,
    ) -> Poll<Result<(), ()>> {
        loop {
            if w.sendfile && out.len == 0 {
                // The head is out; the file goes from the page cache.
                let Some(f) = w.body.as_mut().and_then(|b| b.body_mut().file_mut()) else {
                    return Poll::Ready(Ok(()));
                };
                if f.is_end() {
                    w.body = None;
                    return Poll::Ready(Ok(()));
                }
                match ready!(self.io.poll_sendfile(cx, f)) {
                    Ok(_) => continue,
                    Err(_) => return Poll::Ready(Err(())),
                }
            }
            while out.len < GATHER
                && !w.sendfile
                && let Some(body) = w.body.as_mut()
            {
                match Pin::new(body).poll_frame(cx) {
                    Poll::Pending => break,
                    Poll::Ready(None) => {
                        w.body = None;
                        match w.framing {
                            Framing::Chunked(_) => out.put_static(b"0\r\n\r\n"),
                            Framing::Left(0) | Framing::Close => {}
                            // Shorter than its Content-Length: the client
                            // must not take it for whole.
                            Framing::Left(_) => return Poll::Ready(Err(())),
                        }
                    }
                    Poll::Ready(Some(Err(_))) => return Poll::Ready(Err(())),
                    Poll::Ready(Some(Ok(frame))) => {
                        if !w.frame(out, frame) {
                            return Poll::Ready(Err(()));
                        }
                    }
                }
            }
            if out.len == 0 {
                return if w.body.is_none() {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Pending
                };
            }
            match ready!(out.poll_write(&mut self.io, cx, w.sendfile)) {
                Ok(()) => {}
                Err(_) => return Poll::Ready(Err(())),
            }
        }
    }

    /// Ends the connection as `next` says.
    async fn end(mut self, next: Next) {
        match next {
            Next::Request | Next::Gone => {}
            Next::Refuse(cause) => {
                let _ = self.io.write_all(refusal(cause)).await;
                let _ = self.io.shutdown().await;
            }
            Next::Close => {
                let _ = self.io.shutdown().await;
            }
            Next::Linger => self.linger().await,
            Next::Upgrade(tx) => {
                let rest = self.rbuf.freeze();
                let _ = tx.send(Box::new(Rewound { rest, io: self.io }) as Box<dyn Tunnel>);
            }
        }
    }

    /// The connection closes with request bytes unread: the answer is
    /// sent, the sending side shut, and what the client still sends is
    /// read and dropped for a moment (as nginx's lingering close), so
    /// unread bytes do not make the kernel reset the connection before
    /// the client has read the answer.
    async fn linger(&mut self) {
        let _ = self.io.shutdown().await;
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
            let mut drained = 0usize;
            loop {
                self.rbuf.clear();
                match poll_fn(|cx| self.poll_fill(cx, BODY_READ)).await {
                    Ok(n) if n > 0 && drained < 4 << 20 => drained += n,
                    _ => return,
                }
            }
        })
        .await;
    }
}

/// The response being written.
struct Writing {
    body: Option<Tracked>,
    framing: Framing,
    trailers: bool,
    /// The body is a file sent with `sendfile` after the head.
    sendfile: bool,
}

impl Writing {
    /// Frames one body frame into `out`; false when the body says more
    /// than its length.
    fn frame(&mut self, out: &mut Out, frame: Frame<Bytes>) -> bool {
        let data = match frame.into_data() {
            Ok(d) => d,
            Err(frame) => {
                // Trailers: sent only in a chunked body to a client that
                // asked for them; the chunked end follows with them.
                if let (Framing::Chunked(_), Ok(t), true) =
                    (self.framing, frame.into_trailers(), self.trailers)
                {
                    out.put_static(b"0\r\n");
                    for (k, v) in &t {
                        out.put(k.as_str().as_bytes());
                        out.put(b": ");
                        out.put(v.as_bytes());
                        out.put(b"\r\n");
                    }
                    out.put(b"\r\n");
                    self.framing = Framing::Left(0);
                }
                return true;
            }
        };
        if data.is_empty() {
            return true;
        }
        match &mut self.framing {
            Framing::Left(left) => {
                if data.len() as u64 > *left {
                    return false;
                }
                *left -= data.len() as u64;
                out.data(data);
            }
            Framing::Chunked(_) => {
                let mut line = [0u8; 18];
                let n = hex_line(&mut line, data.len());
                out.put(&line[..n]);
                out.data(data);
                out.put(b"\r\n");
            }
            Framing::Close => out.data(data),
        }
        true
    }
}

/// `{len:x}\r\n` into `buf`; its length.
fn hex_line(buf: &mut [u8; 18], len: usize) -> usize {
    let digits = (usize::BITS - len.leading_zeros()).div_ceil(4).max(1) as usize;
    for (i, b) in buf.iter_mut().take(digits).enumerate() {
        *b = b"0123456789abcdef"[(len >> (4 * (digits - 1 - i))) & 0xf];
    }
    buf[digits] = b'\r';
    buf[digits + 1] = b'\n';
    digits + 2
}

/// Output waiting to be written: large frames where they are, small
/// pieces copied into one buffer behind them.
#[derive(Default)]
struct Out {
    segs: std::collections::VecDeque<Bytes>,
    tail: Vec<u8>,
    /// Bytes waiting in all.
    len: usize,
}

impl Out {
    fn put(&mut self, b: &[u8]) {
        self.tail.extend_from_slice(b);
        self.len += b.len();
    }
    fn put_static(&mut self, b: &'static [u8]) {
        self.put(b);
    }
    fn data(&mut self, d: Bytes) {
        if d.len() < COPY_MAX {
            self.put(&d);
            return;
        }
        if !self.tail.is_empty() {
            self.segs
                .push_back(Bytes::from(std::mem::take(&mut self.tail)));
        }
        self.len += d.len();
        self.segs.push_back(d);
    }

    /// Writes until everything waiting is written or the socket is full;
    /// with `more` (a file follows by `sendfile`), marked to wait for it.
    fn poll_write(
        &mut self,
        io: &mut Guarded,
        cx: &mut Context<'_>,
        more: bool,
    ) -> Poll<io::Result<()>> {
        while self.len > 0 {
            let n = if more && self.segs.is_empty() {
                ready!(io.poll_write_more(cx, &self.tail))?
            } else if self.segs.is_empty() {
                ready!(Pin::new(&mut *io).poll_write(cx, &self.tail))?
            } else {
                let mut slices = [IoSlice::new(&[]); 16];
                let mut k = 0;
                for s in self.segs.iter().take(15) {
                    slices[k] = IoSlice::new(s);
                    k += 1;
                }
                if k == self.segs.len() && !self.tail.is_empty() {
                    slices[k] = IoSlice::new(&self.tail);
                    k += 1;
                }
                ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..k]))?
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.advance(n);
        }
        Poll::Ready(Ok(()))
    }

    fn advance(&mut self, mut n: usize) {
        self.len -= n;
        while n > 0 {
            match self.segs.front_mut() {
                Some(s) if s.len() <= n => {
                    n -= s.len();
                    self.segs.pop_front();
                }
                Some(s) => {
                    s.advance(n);
                    return;
                }
                None => {
                    self.tail.drain(..n);
                    return;
                }
            }
        }
        if self.len == 0 {
            self.tail.clear();
        }
    }

    /// Encodes the response head and chooses the body's framing (`None`:
    /// no body is written), in one pass over the fields: the framing
    /// fields are baton's and follow the handler's. Names go out as they
    /// are (lower case).
    fn head(
        &mut self,
        parts: &http::response::Parts,
        version: Version,
        no_body: bool,
        body: &proxy::RespBody,
        keep_alive: &mut bool,
        switching: bool,
    ) -> Option<Framing> {
        let status = parts.status;
        let h = &parts.headers;
        // 1xx and 204 have no length at all (RFC 9110 §8.6).
        let lengthless = status.is_informational() || status == StatusCode::NO_CONTENT;
        let bodiless = lengthless || status == StatusCode::NOT_MODIFIED;
        let t = &mut self.tail;
        t.reserve(256 + h.len() * 48);
        // An HTTP/1.0 client is answered in its version (as hyper does).
        t.extend_from_slice(if version == Version::HTTP_10 {
            b"HTTP/1.0 "
        } else {
            b"HTTP/1.1 "
        });
        t.extend_from_slice(status.as_str().as_bytes());
        t.push(b' ');
        t.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
        t.extend_from_slice(b"\r\n");
        let (mut declared, mut dated, mut close, mut connection) = (None, false, false, false);
        for (k, v) in h.iter() {
            match *k {
                // The framing is baton's to choose.
                header::TRANSFER_ENCODING => continue,
                header::CONTENT_LENGTH if lengthless => continue,
                header::CONTENT_LENGTH => {
                    if declared.is_some() {
                        continue;
                    }
                    match std::str::from_utf8(v.as_bytes())
                        .ok()
                        .and_then(|s| s.trim().parse().ok())
                    {
                        Some(n) => declared = Some(n),
                        None => continue,
                    }
                }
                header::DATE => dated = true,
                header::CONNECTION => {
                    connection = true;
                    close |= has_token(v.as_bytes(), b"close");
                }
                _ => {}
            }
            t.extend_from_slice(k.as_str().as_bytes());
            t.extend_from_slice(b": ");
            t.extend_from_slice(v.as_bytes());
            t.extend_from_slice(b"\r\n");
        }
        if close {
            *keep_alive = false;
        }
        let framing = if switching || bodiless {
            None
        } else if let Some(n) = declared {
            (!no_body).then_some(Framing::Left(n))
        } else if let Some(n) = body.size_hint().exact() {
            if !no_body || n > 0 {
                t.extend_from_slice(b"content-length: ");
                t.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
                t.extend_from_slice(b"\r\n");
            }
            (!no_body).then_some(Framing::Left(n))
        } else if no_body {
            None
        } else if version == Version::HTTP_11 {
            t.extend_from_slice(b"transfer-encoding: chunked\r\n");
            Some(Framing::Chunked(Chunk::Size))
        } else {
            *keep_alive = false;
            Some(Framing::Close)
        };
        if !dated {
            t.extend_from_slice(b"date: ");
            date(t);
            t.extend_from_slice(b"\r\n");
        }
        if !switching {
            if !*keep_alive {
                if !close {
                    t.extend_from_slice(b"connection: close\r\n");
                }
            } else if version == Version::HTTP_10 && !connection {
                t.extend_from_slice(b"connection: keep-alive\r\n");
            }
        }
        t.extend_from_slice(b"\r\n");
        self.len = t.len();
        framing
    }
}

/// Appends the `Date` field's value, formatted once a second per thread.
fn date(out: &mut Vec<u8>) {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static CACHED: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs || c.1.is_empty() {
            *c = (secs, httpdate::fmt_http_date(now));
        }
        out.extend_from_slice(c.1.as_bytes());
    })
}

/// Parses a request head at the start of `buf` (consumed when complete):
/// `None` when more bytes are needed; the cause when it must be refused.
fn parse_head(buf: &mut BytesMut, max: usize) -> Result<Option<Head>, Cause> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut r = httparse::Request::new(&mut []);
    let n = match httparse::ParserConfig::default()
        .parse_request_with_uninit_headers(&mut r, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(n)) if n > max => return Err(Cause::RequestHeaderTooLarge),
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= max => {
            return Err(Cause::RequestHeaderTooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Cause::RequestHeaderTooLarge),
        Err(_) => return Err(Cause::RequestMalformed),
    };
    let (Some(method), Some(path), Some(minor)) = (r.method, r.path, r.version) else {
        return Err(Cause::RequestMalformed);
    };
    if path.len() > MAX_TARGET {
        return Err(Cause::RequestHeaderTooLarge);
    }
    let method = Method::from_bytes(method.as_bytes()).map_err(|_| Cause::RequestMalformed)?;
    let http11 = minor == 1;
    // Names now; the target and values as offsets, to be slices of the
    // frozen head (no copies) once the parser's borrow of the buffer ends.
    let base = buf.as_ptr() as usize;
    let target = (path.as_ptr() as usize - base, path.len());
    let mut fields = Vec::with_capacity(r.headers.len());
    for h in r.headers.iter() {
        let name =
            HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| Cause::RequestMalformed)?;
        let start = h.value.as_ptr() as usize - base;
        fields.push((name, start, start + h.value.len()));
    }
    let head = buf.split_to(n).freeze();
    let uri = Uri::from_maybe_shared(head.slice(target.0..target.0 + target.1))
        .map_err(|_| Cause::RequestMalformed)?;
    let mut keep_alive = http11;
    let mut saw_close = false;
    let mut expect_continue = false;
    let mut wants_upgrade = method == Method::CONNECT;
    let mut te_trailers = false;
    let (mut te, mut te_chunked, mut cl_seen) = (false, false, false);
    let mut length: Option<u64> = None;
    // Room for the fields the proxy adds (X-Forwarded-*, Via,
    // X-Request-Id) without growing.
    let mut headers = HeaderMap::with_capacity(fields.len() + 8);
    for (name, start, end) in fields {
        let value = HeaderValue::from_maybe_shared(head.slice(start..end))
            .map_err(|_| Cause::RequestMalformed)?;
        match name {
            header::TRANSFER_ENCODING => {
                if !http11 {
                    return Err(Cause::RequestMalformed);
                }
                te = true;
                if length.take().is_some() {
                    headers.remove(header::CONTENT_LENGTH);
                }
                te_chunked = value
                    .as_bytes()
                    .rsplit(|b| *b == b',')
                    .next()
                    .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            }
            header::CONTENT_LENGTH => {
                cl_seen = true;
                if te {
                    continue;
                }
                let n = content_length(value.as_bytes()).ok_or(Cause::RequestMalformed)?;
                match length {
                    Some(prev) if prev != n => return Err(Cause::RequestMalformed),
                    Some(_) => continue,
                    None => length = Some(n),
                }
            }
            header::CONNECTION => {
                if saw_close || has_token(value.as_bytes(), b"close") {
                    saw_close = true;
                    keep_alive = false;
                } else if !keep_alive {
                    keep_alive = has_token(value.as_bytes(), b"keep-alive");
                }
            }
            header::EXPECT => {
                expect_continue = value.as_bytes().eq_ignore_ascii_case(b"100-continue");
            }
            header::UPGRADE => wants_upgrade = http11,
            header::TE => {
                te_trailers |= has_token(value.as_bytes(), b"trailers");
            }
            _ => {}
        }
        headers.append(name, value);
    }
    if te && !te_chunked {
        return Err(Cause::RequestMalformed);
    }
    if te && cl_seen {
        keep_alive = false;
    }
    let body_length = if te {
        Some(Length::Chunked)
    } else {
        length.filter(|n| *n > 0).map(Length::Bytes)
    };
    let mut req = Request::new(RequestBody::Empty);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = if http11 {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    *req.headers_mut() = headers;
    Ok(Some(Head {
        req,
        length: body_length,
        keep_alive,
        expect_continue,
        wants_upgrade,
        te_trailers,
    }))
}

/// A connection handed to a tunnel, with what the client sent after the
/// upgrade request given back first.
struct Rewound {
    rest: Bytes,
    io: Guarded,
}

impl AsyncRead for Rewound {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if give_back(&mut this.rest, buf) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewound {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// The fuzz entry point for the request reading (cargo fuzz target
/// `h1_request`, and the in-suite test): pipelined heads parsed as the
/// connection parses them, each body skipped as its framing says. Must
/// never panic, and what is forwarded is never ambiguous: a request with
/// `Transfer-Encoding` is chunked and keeps no `Content-Length`.
#[doc(hidden)]
pub fn fuzz_request(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    for _ in 0..4 {
        let before = buf.len();
        let Ok(Some(h)) = parse_head(&mut buf, 8192) else {
            return;
        };
        assert!(buf.len() < before);
        let fields = h.req.headers();
        if fields.contains_key(header::TRANSFER_ENCODING) {
            assert!(matches!(h.length, Some(Length::Chunked)));
            assert!(!fields.contains_key(header::CONTENT_LENGTH));
        }
        match h.length {
            Some(Length::Chunked) => {
                let (mut state, mut body, before) = (Chunk::Size, 0, buf.len());
                loop {
                    match step_chunk(&mut state, &mut buf) {
                        Ok(Step::Data(d)) => body += d.len(),
                        Ok(Step::End) => break,
                        _ => return,
                    }
                }
                assert!(body <= before);
            }
            Some(Length::Bytes(n)) => {
                if (buf.len() as u64) < n {
                    return;
                }
                buf.advance(n as usize);
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fuzz_entry_point_holds_on_random_input() {
        let mut next = crate::core::xorshift(0x9E37_79B9_7F4A_7C15u64);
        let pieces: [&[u8]; 12] = [
            b"POST / HTTP/1.1\r\n",
            b"GET /a?b HTTP/1.0\r\n",
            b"Host: a\r\n",
            b"Transfer-Encoding: chunked\r\n",
            b"Transfer-Encoding: gzip\r\n",
            b"Content-Length: 5\r\n",
            b"Content-Length: 5, 5\r\n",
            b"\r\n",
            b"5\r\nhello\r\n",
            b"0\r\n\r\n",
            b"3;ext=1\r\nabc\r\n",
            b"\n",
        ];
        for _ in 0..20_000 {
            let mut data = Vec::new();
            for _ in 0..(next() % 10) {
                if next().is_multiple_of(5) {
                    data.extend((0..next() % 16).map(|_| next() as u8));
                } else {
                    data.extend_from_slice(pieces[(next() % 12) as usize]);
                }
            }
            fuzz_request(&data);
        }
    }

    fn parse(s: &str) -> Result<Option<Head>, Cause> {
        parse_head(&mut BytesMut::from(s), 8192)
    }

    #[test]
    fn framing_is_read_as_hyper_reads_it() {
        let h = parse("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(matches!(h.length, Some(Length::Bytes(5))) && h.keep_alive);
        // Chunked wins over a length, which is dropped; the connection
        // closes after.
        let h = parse("POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(matches!(h.length, Some(Length::Chunked)) && !h.keep_alive);
        assert!(!h.req.headers().contains_key(header::CONTENT_LENGTH));
        for bad in [
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\n",
            "GET /a b HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
        ] {
            assert_eq!(parse(bad).err(), Some(Cause::RequestMalformed), "{bad:?}");
        }
        assert!(parse("GET / HTTP/1.1\r\nHost: a\r\n").unwrap().is_none());
        let big = format!("GET / HTTP/1.1\r\nCookie: {}\r\n\r\n", "a".repeat(9000));
        assert_eq!(parse(&big).err(), Some(Cause::RequestHeaderTooLarge));
        let h = parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.keep_alive && h.length.is_none());
        let h = parse("GET / HTTP/1.1\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive);
    }

    #[test]
    fn chunk_size_lines_are_hex() {
        for n in [0usize, 1, 15, 16, 255, 4096, 65535, 1 << 20] {
            let mut b = [0u8; 18];
            let k = hex_line(&mut b, n);
            assert_eq!(&b[..k], format!("{n:x}\r\n").as_bytes());
        }
    }
}
