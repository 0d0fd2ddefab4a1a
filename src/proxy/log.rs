//! The logging phase: a failure line for each failed attempt (with its
//! cause, errno, bytes and retry decision), and once a response has ended
//! its access line, metrics and the incident tally.

use std::net::SocketAddr;
use std::sync::Arc;

use super::context::Ctx;
use crate::core::cause::Cause;
use crate::core::failure::Failure;
use crate::gateway::Gateway;
use crate::observe::log::{AccessRecord, FailureRecord};
use crate::observe::metrics::{RequestLabels, RouteLabels};

/// Per-attempt facts for the failure log.
pub(super) struct AttemptLog {
    pub peer: Arc<str>,
    pub idle_ms: Option<u64>,
    pub sent: u64,
    pub received: u64,
}

impl Ctx {
    pub fn failure(
        &self,
        f: &Failure,
        status: Option<u16>,
        a: Option<&AttemptLog>,
        retry: Option<&'static str>,
    ) {
        let gw = &self.gw;
        if let Some(u) = &self.upstream {
            gw.metrics.failure(u, f.cause);
        }
        gw.logs.failure(&FailureRecord {
            time: crate::core::clock::now(),
            level: "error",
            msg: "upstream failure",
            request_id: self.id(),
            method: self.method.as_str(),
            host: self.host(),
            path: self.path(),
            route: self.route.as_deref(),
            upstream: self.upstream.as_deref(),
            server: a.map(|a| &*a.peer).or(self.server.as_deref()),
            phase: f.cause.phase().as_str(),
            cause: f.cause.id(),
            proxy_status: f.cause.proxy_status(),
            status,
            details: f.details.as_deref(),
            errno: f.errno,
            received_status: f.received_status,
            reused: a.is_some_and(|a| a.idle_ms.is_some()),
            idle_ms: a.and_then(|a| a.idle_ms),
            attempt: self.attempts,
            retry,
            bytes_sent: a.map_or(0, |a| a.sent),
            bytes_received: a.map_or(0, |a| a.received),
            duration_ms: ms(self.start.elapsed()),
        });
    }

    pub fn finish(&self, status: u16, bytes: u64, cause: Option<Cause>) {
        let gw = &self.gw;
        let elapsed = self.start.elapsed();
        if let Some(m) = &self.route_metrics {
            m.track.request();
            if !self.served_here {
                m.track.latency(elapsed);
            }
            if let Some(c) = cause
                && !crate::observe::incidents::counts(c)
            {
                m.track.refused(c);
            } else if let Some(c) = cause {
                m.track.failure(
                    c,
                    self.id(),
                    self.route.as_deref().unwrap_or(""),
                    self.path(),
                    status,
                );
            }
        }
        match &self.route_metrics {
            // The common case without a label lookup (a RwLock and a hash).
            Some(m) if status == 200 => {
                m.ok.inc();
                m.duration.observe(elapsed.as_secs_f64());
            }
            _ => {
                let route: Arc<str> = self.route.clone().unwrap_or_else(|| Arc::from("(none)"));
                gw.metrics
                    .requests
                    .get_or_create(&RequestLabels {
                        route: route.clone(),
                        status,
                    })
                    .inc();
                gw.metrics
                    .duration
                    .get_or_create(&RouteLabels { route })
                    .observe(elapsed.as_secs_f64());
            }
        }
        if !gw.logs.access.enabled() {
            return;
        }
        gw.logs.access(&AccessRecord {
            time: std::time::SystemTime::now(),
            request_id: self.id(),
            client: self.client.ip(),
            method: self.method.as_str(),
            host: self.host(),
            path: self.path(),
            protocol: self.protocol(),
            status,
            bytes,
            duration_ms: ms(elapsed),
            route: self.route.as_deref(),
            upstream: self.upstream.as_deref(),
            server: self.server.as_deref(),
            attempts: self.attempts,
            cause: cause.map(Cause::id),
            referer: self
                .referer
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .unwrap_or(""),
            user_agent: self
                .user_agent
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .unwrap_or(""),
        });
    }
}

/// A request hyper refused before baton saw it (not HTTP; a head over
/// `server.max_request_header_bytes`): hyper answered 400 or 431 and closed
/// the connection; baton counts it and writes it to the access log with
/// its cause and the client's address, as nginx logs its 400s.
pub fn client_error(gw: &Gateway, client: SocketAddr, e: &hyper::Error) {
    let cause = if e.is_parse_too_large() {
        Cause::RequestHeaderTooLarge
    } else if e.is_parse() {
        Cause::RequestMalformed
    } else {
        return; // the client went away
    };
    client_fault(gw, client, cause);
}

/// A client's fault answered before there was a request to log (a head
/// too large, malformed, or not complete in time): counted and written to
/// the access log with its cause and the client's address.
pub fn client_fault(gw: &Gateway, client: SocketAddr, cause: Cause) {
    gw.metrics
        .requests
        .get_or_create(&RequestLabels {
            route: Arc::from("(none)"),
            status: cause.status(),
        })
        .inc();
    gw.logs.access(&AccessRecord {
        time: std::time::SystemTime::now(),
        request_id: "",
        client: client.ip(),
        method: "",
        host: "",
        path: "",
        protocol: "",
        status: cause.status(),
        bytes: 0,
        duration_ms: 0.0,
        route: None,
        upstream: None,
        server: None,
        attempts: 0,
        cause: Some(cause.id()),
        referer: "",
        user_agent: "",
    });
}

/// Milliseconds to the microsecond, as the logs show them (0.092, not
/// 0.09222699999999999).
fn ms(d: std::time::Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}
