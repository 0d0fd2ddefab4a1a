//! A response body from the upstream, with the body read timeout.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Sleep;

use super::*;
use crate::core::cause::Cause;
use crate::core::failure::Failure;

/// A response body as it comes from the upstream.
pub enum UpIncoming {
    H1(crate::upstream::h1::H1Body),
    Http(Incoming),
    Fcgi(crate::upstream::fastcgi::FcgiBody),
}

/// A response body from the upstream with the body read timeout applied.
pub struct TimedBody {
    inner: UpIncoming,
    idle: IdleTimer,
}

/// A body's read deadline: no data for `timeout` between two frames.
pub struct IdleTimer {
    pub timeout: Duration,
    // Created on the first read that has to wait: most small bodies are
    // complete in the first poll and never allocate a timer.
    timer: Option<Pin<Box<Sleep>>>,
}

impl IdleTimer {
    pub fn new(timeout: Duration) -> Self {
        IdleTimer {
            timeout,
            timer: None,
        }
    }
    /// Data (or the end) came: the deadline starts again.
    #[inline]
    pub fn progressed(&mut self) {
        if let Some(t) = self.timer.as_mut() {
            t.as_mut().reset(tokio::time::Instant::now() + self.timeout);
        }
    }
    /// Nothing came: ready once the deadline has passed.
    pub fn poll_elapsed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let timeout = self.timeout;
        self.timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)))
            .as_mut()
            .poll(cx)
    }
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
            idle: IdleTimer::new(timeout),
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

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let polled = match &mut this.inner {
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
                this.idle.progressed();
                Poll::Ready(r)
            }
            Poll::Pending => {
                ready!(this.idle.poll_elapsed(cx));
                Poll::Ready(Some(Err(BodyError::TimedOut(this.idle.timeout))))
            }
        }
    }
    fn is_end_stream(&self) -> bool {
        match &self.inner {
            UpIncoming::Http(b) => b.is_end_stream(),
            UpIncoming::Fcgi(b) => b.is_end_stream(),
            UpIncoming::H1(b) => b.is_end_stream(),
        }
    }
    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            UpIncoming::Http(b) => b.size_hint(),
            UpIncoming::Fcgi(b) => b.size_hint(),
            UpIncoming::H1(b) => b.size_hint(),
        }
    }
}
