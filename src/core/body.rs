//! A client's request body as the server received it, and the pipe an
//! HTTP/1.1 body comes through.
//!
//! HTTP/2 bodies are hyper's (`Incoming`). HTTP/1.1 connections are read
//! by baton's own server (`server::h1`), which owns the socket: the body's
//! bytes are handed from the connection's reader to whoever polls the body
//! (the request's own task, or hyper's upstream connection task for a
//! streamed body) through a [`Pipe`] that holds one chunk at a time, so a
//! client can never make baton buffer more than one read ahead of the
//! upstream.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};

/// What a request body's failure carries: the reason, for the log (the
/// cause is always the client's: `request_body_incomplete`).
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// A request body: none, HTTP/2's, or HTTP/1.1's through a pipe.
pub enum RequestBody {
    Empty,
    Hyper(hyper::body::Incoming),
    Piped(PipeRx),
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Hyper(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|o| o.map(|r| r.map_err(Into::into))),
            RequestBody::Piped(p) => p.poll_data(cx).map(|o| o.map(|r| r.map(Frame::data))),
        }
    }
    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Hyper(b) => b.is_end_stream(),
            RequestBody::Piped(p) => p.done,
        }
    }
    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Hyper(b) => b.size_hint(),
            RequestBody::Piped(p) => match p.left {
                Some(n) => SizeHint::with_exact(n),
                None => SizeHint::default(),
            },
        }
    }
}

/// What the two ends of a pipe share.
#[derive(Default)]
struct Slot {
    /// A chunk read and not yet taken.
    chunk: Option<Bytes>,
    /// The body ended: whole (`Ok`) or not (the reason).
    end: Option<Result<(), String>>,
    /// The body was asked for at least once (the cue for `100 Continue`).
    asked: bool,
    /// The reading end was dropped: nobody wants the rest.
    abandoned: bool,
    reader: Option<Waker>,
    writer: Option<Waker>,
}

/// Creates a pipe for a body of `length` bytes (`None`: chunked).
pub fn pipe(length: Option<u64>) -> (PipeTx, PipeRx) {
    let slot = Arc::new(Mutex::new(Slot::default()));
    (
        PipeTx { slot: slot.clone() },
        PipeRx {
            slot,
            left: length,
            done: false,
        },
    )
}

fn lock(s: &Mutex<Slot>) -> std::sync::MutexGuard<'_, Slot> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// The connection's end of a body pipe.
pub struct PipeTx {
    slot: Arc<Mutex<Slot>>,
}

/// What the reading end wants of the connection.
pub enum Want {
    /// Room for the next chunk.
    Chunk,
    /// The reading end is gone: the rest of the body is unwanted.
    Nothing,
}

impl PipeTx {
    /// Ready when the slot is empty (`first_ask`: and the body has been
    /// asked for, for a client waiting for `100 Continue`), or when the
    /// reading end is gone.
    pub fn poll_want(&self, cx: &mut Context<'_>, first_ask: bool) -> Poll<Want> {
        let mut s = lock(&self.slot);
        if s.abandoned {
            return Poll::Ready(Want::Nothing);
        }
        if s.chunk.is_none() && (s.asked || !first_ask) {
            return Poll::Ready(Want::Chunk);
        }
        s.writer = Some(cx.waker().clone());
        Poll::Pending
    }
    /// Hands over the next chunk (the slot must be empty).
    pub fn send(&self, b: Bytes) {
        let mut s = lock(&self.slot);
        s.chunk = Some(b);
        if let Some(w) = s.reader.take() {
            w.wake();
        }
    }
    /// The body ended: whole, or with the reason it did not.
    pub fn end(&self, r: Result<(), String>) {
        let mut s = lock(&self.slot);
        s.end = Some(r);
        if let Some(w) = s.reader.take() {
            w.wake();
        }
    }
}

impl Drop for PipeTx {
    fn drop(&mut self) {
        let mut s = lock(&self.slot);
        if s.end.is_none() {
            s.end = Some(Err("the connection ended before the request body".into()));
        }
        if let Some(w) = s.reader.take() {
            w.wake();
        }
    }
}

/// The request's end of a body pipe.
pub struct PipeRx {
    slot: Arc<Mutex<Slot>>,
    /// Bytes still to come of a Content-Length body.
    left: Option<u64>,
    done: bool,
}

impl PipeRx {
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, BodyError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let mut s = lock(&self.slot);
        if let Some(b) = s.chunk.take() {
            if let Some(l) = self.left.as_mut() {
                *l = l.saturating_sub(b.len() as u64);
                self.done = *l == 0;
            }
            if let Some(w) = s.writer.take() {
                w.wake();
            }
            return Poll::Ready(Some(Ok(b)));
        }
        match s.end.take() {
            Some(Ok(())) => {
                self.done = true;
                Poll::Ready(None)
            }
            Some(Err(why)) => {
                self.done = true;
                Poll::Ready(Some(Err(why.into())))
            }
            None => {
                if !s.asked {
                    s.asked = true;
                }
                s.reader = Some(cx.waker().clone());
                if let Some(w) = s.writer.take() {
                    w.wake();
                }
                Poll::Pending
            }
        }
    }
}

impl Drop for PipeRx {
    fn drop(&mut self) {
        let mut s = lock(&self.slot);
        s.abandoned = true;
        if let Some(w) = s.writer.take() {
            w.wake();
        }
    }
}

/// A client connection handed over after `101 Switching Protocols`.
pub trait Tunnel: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Tunnel for T {}

type TunnelRx = tokio::sync::oneshot::Receiver<Box<dyn Tunnel>>;

/// In a request's extensions when the client asked for a protocol upgrade
/// on an HTTP/1.1 connection: the connection arrives here once a `101`
/// was written to it. (Shared, as extensions must be clonable; the first
/// to wait gets it.)
#[derive(Clone)]
pub struct ClientUpgrade(Arc<Mutex<Option<TunnelRx>>>);

impl ClientUpgrade {
    pub fn new(rx: TunnelRx) -> Self {
        ClientUpgrade(Arc::new(Mutex::new(Some(rx))))
    }
    /// The connection, once the `101` is written (`None`: it never was).
    pub async fn wait(self) -> Option<Box<dyn Tunnel>> {
        let rx = self.0.lock().unwrap_or_else(|e| e.into_inner()).take()?;
        rx.await.ok()
    }
}
