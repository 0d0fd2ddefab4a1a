//! baton: a reverse-proxy gateway that prevents the 502s a proxy can
//! prevent and explains the ones it must return.
//!
//! A tour of the modules, in the order a request meets them:
//!
//! - [`cli`]: `baton serve | check | demo`; the only place with `anyhow`.
//! - [`config`]: the one loader: TOML file → validated [`config::Config`],
//!   every problem reported at once with key, line:column and a fix.
//! - [`server`]: listeners (HTTP/1.1 + HTTP/2), the admin endpoint
//!   (`/metrics`, `/healthz`) and graceful shutdown.
//! - [`proxy`]: routing, header rewriting, the attempt loop and its replay
//!   rules, `Proxy-Status`, and the response body that logs and pools.
//! - [`upstream`]: connecting (TCP, Unix, DNS names), the keep-alive pool,
//!   and the classifier that maps any raw error to one [`cause::Cause`].
//! - [`health`]: per-server state (active checks, passive ejection, slow
//!   start); [`balance`]: which usable server gets an attempt, and the
//!   concurrency limit.
//! - [`limit`]: per-client rate limits (GCRA).
//! - [`resolve`]: hickory-based DNS for upstream names.
//! - [`cause`]: the closed table of failure causes: status, RFC 9209 type,
//!   phase, retry safety, visitor text and operator fix.
//! - [`pages`]: error bodies (HTML, problem+json, text) and templates.
//! - [`log`], [`metrics`]: the structured logs and Prometheus metrics.
//! - [`incidents`]: incidents opened and closed from each upstream's
//!   failure rate, kept in SQLite, alerted to a webhook or command.
//! - [`origin`]: scripted fault origins for the demo and the tests.
//! - [`demo`]: `baton demo`.
//! - [`doctor`], [`logs`]: the 502 toolkit for any stack: walk an upstream
//!   step by step; read any proxy's logs into the one cause table.
//! - [`term`]: colour (respecting `NO_COLOR`) and progress for people.

#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
pub mod core;
pub mod gateway;
pub mod observe;
pub mod origin;
pub mod proxy;
pub mod server;
pub mod upstream;
