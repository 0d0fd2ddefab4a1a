//! Talking to upstreams: which server, over which connection, and what
//! went wrong when it failed.
//!
//! - [`pool`]: an upstream and its servers, the per-worker keep-alive pool;
//!   [`connect`]: TCP, Unix sockets, TLS, names through [`resolve`];
//!   [`wire`]: the metered connection and the `Link` a pooled one is;
//! - [`exchange`]: one request and its response head on any link, through
//!   [`h1`] (baton's own HTTP/1.1 client), hyper's client, or [`fastcgi`];
//!   [`body`]: the response body with its read timeout;
//! - [`classify`]: the one place (with FastCGI's records) where a raw
//!   error (`io::Error`, rustls, hickory, `hyper::Error`) becomes a
//!   [`Failure`](crate::core::failure::Failure) with one
//!   [`Cause`](crate::core::cause::Cause);
//! - [`health`]: per-server state and the active probe; [`balance`]: which
//!   usable server gets an attempt, the concurrency limit, retry budget;
//! - [`files`]: static files from a FastCGI root; [`supervise`]: backend
//!   processes baton runs; [`sockets`]: Unix socket findings;
//! - [`workers`]: a FastCGI server's workers as baton counts and learns
//!   them, and the hand-off of a finished connection to a waiting request.
//!
//! Must not: decide whether to retry (that is `proxy::retry`), or build
//! responses for clients.

pub mod balance;
pub mod exchange;
pub mod fastcgi;
pub mod files;
pub mod h1;
pub mod health;
pub mod resolve;
pub mod supervise;

pub mod body;
pub mod classify;
pub mod connect;
pub mod pool;
pub mod sockets;
pub mod wire;
pub mod workers;

pub use body::{BodyError, TimedBody, UpIncoming};
pub use classify::{
    AttemptView, Exchange, await_head, classify_body, classify_connect_io, classify_dns,
    classify_exchange, classify_h1, classify_h1_body, classify_tls, keepalive_hint,
};
pub(crate) use connect::post;
pub use pool::{Conn, Dialer, Server, Upstream, set_worker, spawn_reapers};
pub use sockets::{SocketProblem, socket_findings, socket_problem, whoami};
pub(crate) use wire::is_dead_peer;
pub use wire::{
    ClientBody, ClientBodyError, ConnInfo, ConnStats, Link, Metered, Stream, Streamed, UpBody,
    Wire, WriteTimedOut,
};
