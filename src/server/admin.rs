//! The admin API on its own address: `/metrics`, `/healthz`, the
//! dashboard and its JSON, `/processes`, `POST /reload`, drain and
//! undrain; a bearer token off loopback, and cross-site POSTs refused.
//!
//! Must not: serve client traffic.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::gateway::Gateway;

pub(super) async fn admin_loop(l: TcpListener, gw: Arc<Gateway>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            r = l.accept() => {
                let Ok((s, _)) = r else { continue };
                let gw = gw.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let gw = gw.clone();
                        async move { Ok::<_, Infallible>(admin(&gw, &req)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc).await;
                });
            }
            _ = stop.changed() => break,
        }
    }
}

/// Compares a secret without stopping at the first differing byte (the
/// time does not tell an attacker how much of a guess was right).
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// A browser's request from another site: `Sec-Fetch-Site` says so, or
/// `Origin` names another host than `Host`.
fn cross_site(h: &header::HeaderMap) -> bool {
    let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok());
    if let Some(site) = get("sec-fetch-site") {
        return !matches!(site, "same-origin" | "none");
    }
    match (get("origin"), get("host")) {
        (None, _) => false,
        (Some(o), Some(host)) => o
            .split_once("://")
            .is_none_or(|(_, authority)| authority != host),
        (Some(_), None) => true,
    }
}

fn admin(gw: &Arc<Gateway>, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    use http::Method;
    let query = req.uri().query().unwrap_or("");
    let server = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("server="))
        .map(|v| v.replace("%3A", ":").replace("%3a", ":"));
    let json = |status: StatusCode, v: serde_json::Value| {
        (status, "application/json", v.to_string() + "\n")
    };
    // Off loopback the admin API needs the token (checked at load time).
    if let Some(t) = &gw.runtime.load().config.admin_token {
        let bearer = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let query_token = query.split('&').find_map(|kv| kv.strip_prefix("token="));
        let ok = |given: Option<&str>| given.is_some_and(|g| same_secret(g, t));
        if !ok(bearer) && !ok(query_token) {
            let mut r = Response::new(Full::new(Bytes::from_static(
                b"admin token required: Authorization: Bearer TOKEN, or ?token=TOKEN\n",
            )));
            *r.status_mut() = StatusCode::UNAUTHORIZED;
            return r;
        }
    }
    // A web page elsewhere must not drive the admin API through the
    // operator's browser (a form POST needs no CORS preflight): a POST a
    // browser marks as cross-site, or whose Origin is not this address,
    // is refused. curl and scripts send neither header.
    if req.method() == Method::POST && cross_site(req.headers()) {
        let mut r = Response::new(Full::new(Bytes::from_static(
            b"cross-site admin request refused: POST from the dashboard itself, or without Origin (curl)\n",
        )));
        *r.status_mut() = StatusCode::FORBIDDEN;
        return r;
    }
    let (status, ctype, body) = match (req.method(), req.uri().path()) {
        (_, "/" | "/dashboard") => (
            StatusCode::OK,
            "text/html; charset=utf-8",
            include_str!("../../assets/dashboard.html").to_string(),
        ),
        (_, "/api/state") => json(StatusCode::OK, super::dashboard::state(gw)),
        (_, "/api/failure") => {
            let id = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("id="))
                .unwrap_or("");
            json(
                StatusCode::OK,
                serde_json::json!({"request_id": id, "lines": gw.logs.failure_lines(id)}),
            )
        }
        (_, "/metrics") => {
            gw.sync_counters();
            (StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", gw.metrics.encode())
        }
        (_, "/healthz") => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        (_, "/processes") => {
            let list: Vec<serde_json::Value> = gw.supervisors().iter().map(|s| {
                let st = s.status();
                serde_json::json!({
                    "upstream": &*s.name,
                    "command": s.cfg.command,
                    "state": st.state.as_str(),
                    "pid": st.pid,
                    "attempt": st.attempt,
                    "restarts": st.restarts,
                    "ready_count": st.generation,
                    "crash_loop": st.crash_loop,
                    "last_exit": st.last_exit,
                    "next_start_in_ms": st.next_start.map(|t| t.saturating_duration_since(std::time::Instant::now()).as_millis() as u64),
                })
            }).collect();
            json(StatusCode::OK, serde_json::json!({"processes": list}))
        }
        (&Method::POST, "/reload") => match gw.reload() {
            Ok(notes) => json(StatusCode::OK, serde_json::json!({"reloaded": true, "notes": notes})),
            Err(e) => json(StatusCode::BAD_REQUEST, serde_json::json!({"reloaded": false, "error": e})),
        },
        (m, p @ ("/drain" | "/undrain")) => {
            let on = match (m, p) {
                (&Method::POST, "/drain") => Some(true),
                (&Method::POST, _) => Some(false),
                _ => None,
            };
            match server.as_deref().and_then(|s| gw.drain(s, on).map(|d| (s, d))) {
                Some((s, (draining, n))) => json(StatusCode::OK, serde_json::json!({"server": s, "draining": draining, "inflight": n, "drained": draining && n == 0})),
                None => json(StatusCode::NOT_FOUND, serde_json::json!({"error": "no such server; pass ?server=ADDRESS as written in servers"})),
            }
        }
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found: GET /dashboard, GET /api/state, GET /api/failure?id=REQUEST_ID, GET /metrics, GET /healthz, GET /processes, POST /reload, POST|GET /drain?server=ADDR, POST /undrain?server=ADDR\n".to_string()),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(ctype),
    );
    r
}
