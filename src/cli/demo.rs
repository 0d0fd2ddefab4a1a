//! `baton demo`: the gateway in front of built-in origins, one per common
//! failure, on loopback, with a table of curl commands to try.
//!
//! Owns: the demo's origins, its config (generated as TOML text and loaded
//! through the normal loader) and its table. Must not: hold logic the
//! gateway needs; it only wires existing pieces together.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

use crate::origin::{Origin, Script, refusing_addr};

struct Row {
    path: &'static str,
    what: &'static str,
    status: u16,
    proxy_status: Option<&'static str>,
}

const ROWS: &[Row] = &[
    Row {
        path: "/healthy",
        what: "a healthy app: 200 from the origin",
        status: 200,
        proxy_status: None,
    },
    Row {
        path: "/refused",
        what: "app not running: 502 connection_refused",
        status: 502,
        proxy_status: Some("connection_refused"),
    },
    Row {
        path: "/stall",
        what: "app never answers: 504 after read_timeout (2s)",
        status: 504,
        proxy_status: Some("http_response_timeout"),
    },
    Row {
        path: "/garbage",
        what: "app answers non-HTTP bytes: 502 http_protocol_error",
        status: 502,
        proxy_status: Some("http_protocol_error"),
    },
    Row {
        path: "/big-header",
        what: "app sends a 100 KB Set-Cookie: 502 with size and limit",
        status: 502,
        proxy_status: Some("http_response_header_section_size"),
    },
    Row {
        path: "/failover",
        what: "first server down, second up: 200 after one safe retry",
        status: 200,
        proxy_status: None,
    },
    Row {
        path: "/app-error",
        what: "the app's own 500 passes through untouched",
        status: 500,
        proxy_status: None,
    },
    Row {
        path: "/php",
        what: "PHP-FPM socket missing: 503 destination_unavailable",
        status: 503,
        proxy_status: Some("destination_unavailable"),
    },
];

pub async fn run(listen: SocketAddr, self_test: bool) -> ExitCode {
    match start(listen, self_test).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("baton demo: {e}");
            ExitCode::from(1)
        }
    }
}

async fn start(listen: SocketAddr, self_test: bool) -> Result<ExitCode, String> {
    let err = |e: std::io::Error| e.to_string();
    let healthy = Origin::start(Script::Ok("hello from the healthy origin\n".into()))
        .await
        .map_err(err)?;
    let stall = Origin::start(Script::Stall).await.map_err(err)?;
    let garbage = Origin::start(Script::Garbage).await.map_err(err)?;
    let big = Origin::start(Script::OversizedHead(100_000))
        .await
        .map_err(err)?;
    let app_error = Origin::start(Script::Status(
        500,
        "{\"error\":\"the app's own error body\"}\n".into(),
    ))
    .await
    .map_err(err)?;
    let refused = refusing_addr();
    let demo_dir = std::env::temp_dir().join(format!("baton-demo-{}", std::process::id()));
    let missing_sock = demo_dir.join("php8.2-fpm.sock");
    let incidents = demo_dir.join("incidents");
    // The admin API on loopback (it has no token here), next to the
    // gateway's port when that is free.
    let loopback = std::net::IpAddr::from([127, 0, 0, 1]);
    let next = SocketAddr::new(loopback, listen.port().wrapping_add(1));
    let admin = if listen.port() != 0 && std::net::TcpListener::bind(next).is_ok() {
        next
    } else {
        SocketAddr::new(loopback, 0)
    };
    let toml = format!(
        r#"
[server]
listen = ["{listen}"]
admin = "{admin}"
status_page = "/status"
dashboard_actions = true

[log]
access = "off"
errors = "stderr"

[incidents]
dir = "{incidents}"
min_requests = 3
window = "10s"
recover_after = "20s"

[upstreams.healthy]
servers = ["{h}"]
[upstreams.refused]
servers = ["{refused}"]
[upstreams.stall]
servers = ["{s}"]
read_timeout = "2s"
[upstreams.garbage]
servers = ["{g}"]
[upstreams.big]
servers = ["{b}"]
[upstreams.failover]
servers = ["{refused}", "{h}"]
retries = 1
[upstreams.app_error]
servers = ["{e}"]
[upstreams.php]
servers = ["unix:{sock}"]

[[routes]]
path = "/healthy"
upstream = "healthy"
[[routes]]
path = "/refused"
upstream = "refused"
[[routes]]
path = "/stall"
upstream = "stall"
[[routes]]
path = "/garbage"
upstream = "garbage"
[[routes]]
path = "/big-header"
upstream = "big"
[[routes]]
path = "/failover"
upstream = "failover"
[[routes]]
path = "/app-error"
upstream = "app_error"
[[routes]]
path = "/php"
upstream = "php"
"#,
        h = healthy.addr,
        s = stall.addr,
        g = garbage.addr,
        b = big.addr,
        e = app_error.addr,
        sock = missing_sock.display(),
        incidents = incidents.display(),
    );
    // From a real file, as `baton serve` runs: "reload config" on the
    // dashboard and `baton reload` work on the demo too.
    std::fs::create_dir_all(&demo_dir).map_err(|e| format!("{}: {e}", demo_dir.display()))?;
    let file = demo_dir.join("baton.toml");
    std::fs::write(&file, &toml).map_err(|e| format!("{}: {e}", file.display()))?;
    let cfg = crate::config::load(&file).map_err(|e| e.to_string())?;
    let running = crate::server::start(cfg).await.map_err(|e| e.to_string())?;
    let addr = running.addrs[0];
    println!(
        "baton demo: gateway on http://{addr}  (failure log lines appear on stderr)\nconfig: {}  (edit it, then `baton reload --config {}` or the dashboard's \"reload config\")\n",
        file.display(),
        file.display()
    );
    println!("{:<52} what it shows", "try");
    for r in ROWS {
        println!(
            "{:<52} {}",
            format!("curl -si http://{addr}{}", r.path),
            r.what
        );
    }
    println!(
        "\nAlso: -H 'Accept: application/json' (problem+json), or open a failing URL in a browser (HTML page)."
    );
    if let Some(admin) = running.admin {
        println!(
            "Dashboard: http://{admin}/dashboard   status page: http://{addr}/status\nIncidents (while the demo runs): baton incidents --dir {}",
            incidents.display()
        );
    }
    if self_test {
        let mut ok = true;
        for r in ROWS {
            let (status, ps) = get(addr, r.path).await.unwrap_or((0, None));
            let got = ps
                .as_deref()
                .and_then(|p| p.split("error=").nth(1))
                .map(|p| p.split(';').next().unwrap_or(""));
            let pass = status == r.status && got == r.proxy_status;
            ok &= pass;
            println!(
                "{} {:<12} {} {}",
                if pass { "ok  " } else { "FAIL" },
                r.path,
                status,
                ps.unwrap_or_default()
            );
        }
        // The dashboard's "reload config" (the admin API's POST /reload).
        if let Some(admin) = running.admin {
            let said = request(admin, http::Method::POST, &admin.to_string(), "/reload").await;
            let reloaded = said.is_some_and(|(status, _)| status == 200);
            ok &= reloaded;
            println!(
                "{} {:<12} {}",
                if reloaded { "ok  " } else { "FAIL" },
                "reload",
                format_args!("POST http://{admin}/reload re-reads {}", file.display())
            );
        }
        running.shutdown(Duration::from_secs(1)).await;
        let _ = std::fs::remove_dir_all(&demo_dir);
        return Ok(if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    println!("\nCtrl-C to stop.");
    crate::cli::wait_for_signal().await;
    running.shutdown(Duration::from_secs(2)).await;
    let _ = std::fs::remove_dir_all(&demo_dir);
    Ok(ExitCode::SUCCESS)
}

async fn get(addr: SocketAddr, path: &str) -> Option<(u16, Option<String>)> {
    request(addr, http::Method::GET, "demo", path).await
}

async fn request(
    addr: SocketAddr,
    method: http::Method,
    host: &str,
    path: &str,
) -> Option<(u16, Option<String>)> {
    let s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .ok()?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", host)
        .body(Empty::<bytes::Bytes>::new())
        .ok()?;
    let resp = tx.send_request(req).await.ok()?;
    let status = resp.status().as_u16();
    let ps = resp
        .headers()
        .get("proxy-status")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let _ = resp.into_body().collect().await;
    Some((status, ps))
}
