//! The request path, as named phases over one per-request context
//! (`context::Ctx`):
//!
//! 1. **request filters** (`filters`): the status page, routing,
//!    maintenance, the rate limit, the body size, FastCGI's `try_files`;
//!    each may answer the request itself;
//! 2. **upstream request** (`upstream_request`, `headers`): the head
//!    rewritten once (hop-by-hop out, `X-Forwarded-*`, `Via`, request ID),
//!    the body buffered for replay or streamed, FastCGI's parameters;
//! 3. **attempts** (`attempt`): a concurrency slot, then attempts on
//!    chosen servers through `upstream::exchange`, with one retry decision
//!    ([`retry::plan`]) after each failure;
//! 4. **response filters and the one exit** (`respond`): every answer,
//!    proxied or baton's own, leaves through `respond::exit`, where the
//!    request ID and rate-limit state are added, `Proxy-Status` is set for
//!    baton's failures, and the access log is settled;
//! 5. **logging** (`log`): failure lines per attempt, the access line,
//!    metrics and the incident tally when the response ends.
//!
//! [`handle`] only sequences them. A new capability (a header rule,
//! compression, a cache lookup) is one function in one phase.
//!
//! Must not: inspect raw errors (`upstream`'s classifiers do), or know
//! RFC 9209 tokens (`core::cause` does).

mod attempt;
mod body;
mod cache;
mod compress;
mod context;
mod filters;
mod headers;
mod log;
pub mod pages;
mod respond;
pub mod retry;
mod status_page;
mod upstream_request;

use std::net::SocketAddr;
use std::sync::Arc;

use crate::core::body::RequestBody;
use http::{Request, Response};

pub use body::{ProxiedBody, RespBody};
pub use log::{client_error, client_fault};

use crate::gateway::Gateway;

/// Serves one request.
///
/// A function returning an `async move` block, not an `async fn`: an
/// `async fn` keeps its arguments and the locals they are moved into, both,
/// in the request's future (the request, ~260 bytes, twice); a block's
/// captures are used in place.
#[allow(clippy::manual_async_fn)] // the future's size: see the comment
pub fn handle(
    gw: Arc<Gateway>,
    req: Request<RequestBody>,
    client: SocketAddr,
    local: SocketAddr,
    https: bool,
) -> impl std::future::Future<Output = Response<RespBody>> + Send {
    async move {
        // Boxed: the context moves from phase to phase and into the response
        // body, which logs from it when it ends (a pointer moves, not ~600
        // bytes). Made in its box (allocated first), not copied into it.
        let mut ctx = Box::write(
            Box::new_uninit(),
            context::Ctx::new(gw, &req, client, local, https),
        );
        if let Err(answer) = filters::run(&mut ctx, &req) {
            return respond::exit(ctx, answer);
        }
        match cache::lookup(&mut ctx, &req).await {
            cache::Look::Go => {}
            cache::Look::Answer(answer) => return respond::exit(ctx, answer),
            cache::Look::StaleRefresh(answer) => {
                // Served stale; the same request goes upstream in the
                // background and its answer is stored.
                let mut bg = Box::new(ctx.fork(&req));
                tokio::spawn(async move {
                    let answer = fetch(&mut bg, req).await;
                    let resp = respond::exit(bg, answer);
                    let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
                });
                return respond::exit(ctx, answer);
            }
        }
        let answer = fetch(&mut ctx, req).await;
        respond::exit(ctx, answer)
    }
}

/// The upstream request, its attempts, and what the cache makes of the
/// answer.
async fn fetch(ctx: &mut context::Ctx, req: Request<RequestBody>) -> respond::Answer {
    let answer = match upstream_request::build(ctx, req).await {
        Ok(up) => attempt::run(ctx, up).await,
        Err(answer) => answer,
    };
    cache::after(ctx, answer)
}

#[cfg(test)]
mod tests {
    fn future_size<A, B, C, D, E, F: std::future::Future>(_: impl Fn(A, B, C, D, E) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Each request in flight holds an allocation of this size (moved
    /// into it when the request starts: a larger future is more to copy).
    /// Boxing the whole attempt phase would make it 624 bytes but costs
    /// ~620 instructions a request (2.2%, docs/benchmarks.md); the rare
    /// large futures are boxed instead (FastCGI's exchange, hyper's
    /// handshake).
    #[test]
    fn the_request_future_a_connection_keeps_stays_small() {
        let n = future_size(super::handle);
        assert!(n <= 5 * 1024, "proxy::handle's future is {n} bytes");
    }
}
