//! baton: a reverse-proxy gateway that prevents the 502s a proxy can
//! prevent and explains the ones it must return.
//!
//! A tour of the layers, bottom up; each imports only those above it in
//! this list (ARCHITECTURE.md, "Layers"; `tests/layers.rs` holds it):
//!
//! - [`core`]: the closed table of failure causes ([`core::cause::Cause`]:
//!   status, RFC 9209 type, phase, retry safety, visitor text, operator
//!   fix), the one [`core::failure::Failure`], clocks, text helpers.
//! - [`config`]: the one loader: TOML file → validated [`config::Config`],
//!   every problem reported at once with key, line:column and a fix.
//! - [`upstream`]: servers and their pools, connecting (TCP, Unix, TLS,
//!   DNS), the one exchange (HTTP/1.1, hyper, FastCGI), the classifiers,
//!   health, balancing, static files, supervised backends.
//! - [`observe`]: structured logs, Prometheus metrics, incidents.
//! - [`gateway`]: the runtime built from one config, reload, drain, the
//!   active health checkers, rate limiters.
//! - [`proxy`]: the request path as phases: request filters, the upstream
//!   request, attempts with one retry decision, the one exit, logging.
//! - [`server`]: listeners (HTTP/1.1 + HTTP/2), the admin API and
//!   dashboard, graceful shutdown.
//! - [`origin`]: scripted fault origins for the demo and the tests.
//! - [`cli`]: `baton serve | check | demo | causes | doctor | logs |
//!   incidents | report`.

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
