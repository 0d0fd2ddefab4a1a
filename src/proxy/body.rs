//! The bodies baton sends to its clients: its own (a page, a file) or an
//! upstream's, which counts bytes, turns a mid-body failure into an
//! aborted connection and a failure line, returns the connection to the
//! pool once read to its end, and logs the request when it ends.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::context::Ctx;
use super::log::AttemptLog;
use crate::config::UpstreamConfig;
use crate::core::cause::Cause;
use crate::core::failure::Failure;
use crate::upstream::{self, ConnInfo, Link, Server, TimedBody};

/// The body baton sends to its client.
pub enum RespBody {
    Local(Option<Bytes>),
    Proxied(Box<ProxiedBody>),
    File(Box<crate::upstream::files::FileBody>),
    /// Compressed on the way out (`compress = true`).
    Encoded(Box<super::compress::Encoded>),
    /// Passed on and kept, to be stored when it ends whole (a cached
    /// route's storable response).
    Storing(Box<Storing>),
}

/// A response body copied as it passes, stored by the cache when it
/// ends whole and within `max_object` (a larger one is passed on and
/// dropped from the copy).
pub struct Storing {
    inner: RespBody,
    kept: Option<(bytes::BytesMut, super::cache::Pending)>,
}

impl Storing {
    pub(super) fn new(inner: RespBody, p: super::cache::Pending) -> Self {
        Storing {
            inner,
            kept: Some((bytes::BytesMut::new(), p)),
        }
    }

    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, upstream::BodyError>>> {
        let f = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &f {
            Some(Ok(frame)) => {
                if let (Some(d), Some((buf, p))) = (frame.data_ref(), self.kept.as_mut()) {
                    if (buf.len() + d.len()) as u64 > p.max() {
                        self.kept = None;
                    } else {
                        buf.extend_from_slice(d);
                    }
                }
            }
            // A failed body is not stored.
            Some(Err(_)) => self.kept = None,
            None => {
                if let Some((buf, p)) = self.kept.take() {
                    p.finish(buf.freeze());
                }
            }
        }
        // hyper stops polling a body that says it has ended.
        if self.inner.is_end_stream()
            && let Some((buf, p)) = self.kept.take()
        {
            p.finish(buf.freeze());
        }
        Poll::Ready(f)
    }
}

impl RespBody {
    /// A static file sent as it is (not compressed, not being stored):
    /// what a connection may send with `sendfile`.
    pub fn file_mut(&mut self) -> Option<&mut crate::upstream::files::FileBody> {
        match self {
            RespBody::File(f) => Some(f),
            _ => None,
        }
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = upstream::BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            RespBody::Local(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            RespBody::Proxied(p) => p.poll_frame(cx),
            RespBody::Encoded(e) => e.poll_frame(cx),
            RespBody::Storing(s) => s.poll_frame(cx),
            RespBody::File(f) => f.poll_chunk(cx).map(|c| {
                c.map(|r| {
                    r.map(Frame::data).map_err(|e| {
                        upstream::BodyError::Failed(Failure::with(
                            Cause::Internal,
                            format!("reading a static file: {}", e.kind()),
                        ))
                    })
                })
            }),
        }
    }
    fn is_end_stream(&self) -> bool {
        match self {
            RespBody::Local(b) => b.is_none(),
            RespBody::Proxied(p) => p.body.is_end_stream(),
            RespBody::File(f) => f.is_end(),
            RespBody::Encoded(e) => e.is_end_stream(),
            RespBody::Storing(s) => s.inner.is_end_stream(),
        }
    }
    fn size_hint(&self) -> SizeHint {
        match self {
            RespBody::Local(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            RespBody::Proxied(p) => p.body.size_hint(),
            RespBody::File(f) => SizeHint::with_exact(f.remaining()),
            RespBody::Encoded(e) => e.size_hint(),
            RespBody::Storing(s) => s.inner.size_hint(),
        }
    }
}

/// Where a connection goes back once its response was read to the end.
pub(super) struct PoolReturn {
    pub server: Arc<Server>,
    pub cfg: Arc<UpstreamConfig>,
    /// `None` for FastCGI: its wire is in the body until the end.
    pub tx: Option<Link>,
    pub info: Arc<ConnInfo>,
}

/// An upstream's response body as the attempt loop hands it over, with
/// what it holds until it ends.
pub(super) struct Upstreamed {
    pub body: TimedBody,
    pub status: u16,
    /// Where to return the connection once the body has been read to its end.
    pub pool: Option<PoolReturn>,
    /// Bytes the connection had read before this response.
    pub read_before: u64,
    /// Bytes of this request written upstream.
    pub sent: u64,
    pub held: Held,
}

/// An upstream response body on its way to the client.
pub struct ProxiedBody {
    body: TimedBody,
    /// Set by the one exit; the request is logged from it when the body ends.
    pub(super) ctx: Option<Box<Ctx>>,
    status: u16,
    bytes: u64,
    /// Where to return the connection once the body has been read to its end.
    pool: Option<PoolReturn>,
    read_before: u64,
    sent: u64,
    failed: Option<Cause>,
    /// Released when the response ends.
    _held: Held,
}

impl ProxiedBody {
    /// The body of `up`; the one exit gives it the request's context.
    pub(super) fn new(up: Upstreamed) -> Self {
        ProxiedBody {
            ctx: None,
            body: up.body,
            status: up.status,
            bytes: 0,
            pool: up.pool,
            read_before: up.read_before,
            sent: up.sent,
            failed: None,
            _held: up.held,
        }
    }

    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, upstream::BodyError>>> {
        let r = Pin::new(&mut self.body).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    self.bytes += d.len() as u64;
                }
            }
            Poll::Ready(Some(Err(e))) => {
                // The head is already with the client: the only honest
                // signal left is to abort its connection, which hyper does
                // when a body yields an error. Log it as a failure.
                let f = e.failure();
                let server = self.ctx.as_ref().and_then(|c| c.server.clone());
                let a = self.pool.take().map(|PoolReturn { info, .. }| {
                    info.retired.store(true, Ordering::Relaxed);
                    AttemptLog {
                        peer: server.unwrap_or_else(|| Arc::from("-")),
                        idle_ms: None,
                        sent: self.sent,
                        received: info
                            .stats
                            .read
                            .load(Ordering::Relaxed)
                            .saturating_sub(self.read_before),
                    }
                });
                if let Some(ctx) = &self.ctx {
                    ctx.failure(&f, Some(self.status), a.as_ref(), None);
                }
                self.failed = Some(f.cause);
            }
            _ => {}
        }
        r
    }
}

impl Drop for ProxiedBody {
    fn drop(&mut self) {
        if let Some(PoolReturn {
            server,
            cfg,
            tx,
            info,
        }) = self.pool.take()
            && self.body.is_end_stream()
            && let Some(link) = tx.or_else(|| self.body.take_wire())
        {
            server.checkin(&cfg, link, info);
        }
        if let Some(ctx) = &self.ctx {
            ctx.finish(self.status, self.bytes, self.failed);
        }
    }
}

/// A request in flight on a server (for least_request); dropped when its
/// response ends or the attempt fails.
pub struct InFlight(Arc<Server>);

impl InFlight {
    pub(super) fn new(s: Arc<Server>) -> Self {
        s.inflight.fetch_add(1, Ordering::Relaxed);
        InFlight(s)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a response holds until it ends: its in-flight mark and its slot.
pub(super) struct Held {
    // Never read: they act when dropped, with the response.
    pub _busy: InFlight,
    pub _permit: Option<crate::upstream::balance::Slot>,
}
