//! The one integration-test binary (see Cargo.toml `autotests = false`).

mod support;

mod acme;
mod browser;
mod cache;
mod causes;
mod client_h1;
mod config_errors;
mod dashboard;
mod deadlines;
mod docs;
mod doctor;
mod fastcgi;
mod framing;
mod grpc;
mod hardening;
mod https;
mod import;
mod incidents;
mod keepalive;
mod layers;
mod limits;
mod logs;
mod logs_corpus;
mod proxying;
mod real_client;
mod resilience;
mod site;
mod supervise;
mod tls;
mod wordpress;
