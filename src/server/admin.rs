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
    let Ok(own) = l.local_addr() else { return };
    loop {
        tokio::select! {
            r = l.accept() => {
                let Ok((s, _)) = r else { continue };
                let gw = gw.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let gw = gw.clone();
                        async move { Ok::<_, Infallible>(admin(&gw, own, &req)) }
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

/// Whether `Host` names this admin address: an IP literal with its port
/// (an address cannot be rebound to another host), `localhost` when it is
/// on loopback, or a name in `server.admin_hosts`. A page elsewhere that
/// rebinds its own name to this address (DNS rebinding) sends its own
/// name, and its `Origin` then matches its `Host`, so the cross-site check
/// alone would let it through.
fn host_allowed(host: Option<&str>, own: std::net::SocketAddr, names: &[String]) -> bool {
    let Some(host) = host.map(str::to_ascii_lowercase) else {
        return false;
    };
    let port = own.port().to_string();
    let (name, p) = match host.rsplit_once(':') {
        Some((n, p)) if !n.ends_with(':') => (n, Some(p)),
        _ => (host.as_str(), None),
    };
    let right_port = p.is_none_or(|p| p == port);
    let ip = name.trim_start_matches('[').trim_end_matches(']');
    right_port
        && (ip.parse::<std::net::IpAddr>().is_ok()
            || (name == "localhost" && own.ip().is_loopback())
            || names.iter().any(|n| *n == host || *n == name))
}

fn admin(
    gw: &Arc<Gateway>,
    own: std::net::SocketAddr,
    req: &Request<Incoming>,
) -> Response<Full<Bytes>> {
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
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok());
    if !host_allowed(host, own, &gw.runtime.load().config.admin_hosts) {
        let mut r = Response::new(Full::new(Bytes::from(format!(
            "admin API: Host {:?} does not name this address; use http://{own}/ or add the name to server.admin_hosts\n",
            host.unwrap_or("")
        ))));
        *r.status_mut() = StatusCode::MISDIRECTED_REQUEST;
        return r;
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
        (&Method::POST, "/cache/purge") => {
            // ?url=http://host/path?q (one key) or ?prefix=http://host/blog/
            let arg = |name: &str| {
                query.split('&').find_map(|kv| kv.strip_prefix(name)).map(|v| {
                    percent_encoding::percent_decode_str(v)
                        .decode_utf8_lossy()
                        .into_owned()
                })
            };
            match (arg("url="), arg("prefix=")) {
                (Some(u), _) => {
                    let had = gw.cache.get(&u).is_some();
                    gw.cache.remove(&u);
                    json(StatusCode::OK, serde_json::json!({"purged": had as usize, "url": u}))
                }
                (None, Some(p)) => json(
                    StatusCode::OK,
                    serde_json::json!({"purged": gw.cache.purge_prefix(&p), "prefix": p}),
                ),
                (None, None) => json(
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({"error": "pass ?url=http://HOST/PATH or ?prefix=http://HOST/PATH (the cache's key: scheme, host, path and query)"}),
                ),
            }
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
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found: GET /dashboard, GET /api/state, GET /api/failure?id=REQUEST_ID, GET /metrics, GET /healthz, GET /processes, POST /reload, POST|GET /drain?server=ADDR, POST /undrain?server=ADDR, POST /cache/purge?url=URL|prefix=URL\n".to_string()),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(ctype),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_api_answers_only_to_its_own_names() {
        let own: std::net::SocketAddr = "127.0.0.1:9901".parse().unwrap();
        let names = vec!["dash.example.com".to_string()];
        for ok in [
            "127.0.0.1:9901",
            "localhost:9901",
            "[::1]:9901",
            "10.0.0.5:9901",
            "dash.example.com",
            "DASH.example.com:9901",
        ] {
            assert!(host_allowed(Some(ok), own, &names), "{ok}");
        }
        for refused in [
            "evil.example:9901",
            "evil.example",
            "127.0.0.1:80",
            "localhost:80",
        ] {
            assert!(!host_allowed(Some(refused), own, &names), "{refused}");
        }
        assert!(!host_allowed(None, own, &names));
        let public: std::net::SocketAddr = "0.0.0.0:9901".parse().unwrap();
        assert!(!host_allowed(Some("localhost:9901"), public, &names));
    }
}
