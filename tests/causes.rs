//! One test per cause: exact status, Proxy-Status type, log cause and
//! request ID, against scripted origins on loopback.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::support::*;

fn one(name: &str, server: &str, extra: &str) -> String {
    format!(
        "[upstreams.{name}]\nservers = [\"{server}\"]\n{extra}\n[[routes]]\nupstream = \"{name}\"\n"
    )
}

#[tokio::test]
async fn connection_refused_is_502_with_next_hop() {
    let dead = refusing_addr();
    let gw = Gw::start(&one("app", &dead.to_string(), "")).await;
    let r = send(gw.addr, get("/")).await;
    let line = assert_failure(&gw, &r, 502, "connection_refused", "connection_refused").await;
    assert!(
        r.header("proxy-status")
            .contains(&format!("next-hop=\"{dead}\""))
    );
    assert_eq!(line["phase"], "connect");
    assert_eq!(line["errno"], 111);
    assert_eq!(line["bytes_sent"], 0);
}

#[tokio::test]
async fn connect_timeout_is_504() {
    let hole = Blackhole::new().unwrap();
    let gw = Gw::start(&one(
        "app",
        &hole.addr.to_string(),
        "connect_timeout = \"300ms\"",
    ))
    .await;
    let r = send(gw.addr, get("/")).await;
    let line = assert_failure(&gw, &r, 504, "connection_timeout", "connection_timeout").await;
    assert_eq!(line["phase"], "connect");
}

#[tokio::test]
async fn dns_nxdomain_is_dns_error() {
    let dns = Dns::start(vec![], false).await;
    let body = format!(
        "[resolver]\nnameservers = [\"{}\"]\ntimeout = \"1s\"\n\n{}",
        dns.addr,
        one("app", "nope.test:80", "")
    );
    let gw = Gw::start(&body).await;
    let r = send(gw.addr, get("/")).await;
    let line = assert_failure(&gw, &r, 502, "dns_error", "dns_error").await;
    assert_eq!(line["phase"], "dns");
}

#[tokio::test]
async fn silent_nameserver_is_dns_timeout() {
    let dns = Dns::start(vec![], true).await;
    let body = format!(
        "[resolver]\nnameservers = [\"{}\"]\ntimeout = \"300ms\"\nattempts = 1\n\n{}",
        dns.addr,
        one("app", "slow.test:80", "")
    );
    let gw = Gw::start(&body).await;
    let r = send(gw.addr, get("/")).await;
    assert_failure(&gw, &r, 504, "dns_timeout", "dns_timeout").await;
}

#[tokio::test]
async fn upstream_name_resolved_from_loopback_dns() {
    let origin = Origin::start(Script::Ok("named\n".into())).await.unwrap();
    let dns = Dns::start(vec![("app.test", "127.0.0.1".parse().unwrap())], false).await;
    let body = format!(
        "[resolver]\nnameservers = [\"{}\"]\n\n{}",
        dns.addr,
        one("app", &format!("app.test:{}", origin.addr.port()), "")
    );
    let gw = Gw::start(&body).await;
    let r = send(gw.addr, get("/")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "named\n");
}

#[tokio::test]
async fn reset_before_response_is_connection_terminated() {
    let o = Origin::start(Script::Reset).await.unwrap();
    let gw = Gw::start(&one("app", &o.addr.to_string(), "")).await;
    let r = send(gw.addr, get("/")).await;
    let line = assert_failure(
        &gw,
        &r,
        502,
        "connection_terminated",
        "connection_terminated",
    )
    .await;
    assert_eq!(line["reused"], false);
    assert_eq!(line["bytes_received"], 0);
    assert_eq!(line["errno"], 104);
}

#[tokio::test]
async fn close_before_head_is_connection_terminated() {
    let o = Origin::start(Script::CloseBeforeHead).await.unwrap();
    let gw = Gw::start(&one("app", &o.addr.to_string(), "")).await;
    let r = send(gw.addr, get("/")).await;
    assert_failure(
        &gw,
        &r,
        502,
        "connection_terminated",
        "connection_terminated",
    )
    .await;
}

#[tokio::test]
async fn close_in_the_middle_of_the_head_is_connection_terminated() {
    let o = Origin::start(Script::PartialHead).await.unwrap();
    let gw = Gw::start(&one("app", &o.addr.to_string(), "")).await;
    let r = send(gw.addr, get("/")).await;
    let line = assert_failure(
        &gw,
        &r,
        502,
        "connection_terminated",
        "connection_terminated",
    )
    .await;
    assert_eq!(
        line["bytes_received"],
        b"HTTP/1.1 200 OK\r\nContent-Type: te".len()
    );
}

#[tokio::test]
async fn stalled_upstream_is_504_response_timeout() {
    let o = Origin::start(Script::Stall).await.unwrap();
    let gw = Gw::start(&one("app", &o.addr.to_string(), "read_timeout = \"300ms\"")).await;
    let r = send(gw.addr, get("/")).await;
    let line = assert_failure(
        &gw,
        &r,
        504,
        "http_response_timeout",
        "response_head_timeout",
    )
    .await;
    assert_eq!(line["phase"], "read_head");
}

#[tokio::test]
async fn upstream_not_reading_is_write_timeout() {
    let o = Origin::start(Script::NoRead).await.unwrap();
    let gw = Gw::start(&one(
        "app",
        &o.addr.to_string(),
        "write_timeout = \"300ms\"\nread_timeout = \"20s\"",
    ))
    .await;
    // 64 MiB is far beyond loopback socket buffers, so the write stalls.
    let body = Bytes::from(vec![b'x'; 64 << 20]);
    let req = Request::post("/upload")
        .header("host", "t")
        .body(Full::new(body))
        .unwrap();
    let r = send(gw.addr, req).await;
    let line = assert_failure(
        &gw,
        &r,
        504,
        "connection_write_timeout",
        "request_write_timeout",
    )
    .await;
    assert_eq!(line["phase"], "write_request");
}

#[tokio::test]
async fn garbage_is_http_protocol_error() {
    let o = Origin::start(Script::Garbage).await.unwrap();
    let gw = Gw::start(&one("app", &o.addr.to_string(), "")).await;
    let r = send(gw.addr, get("/")).await;
    assert_failure(&gw, &r, 502, "http_protocol_error", "http_protocol_error").await;
}

#[tokio::test]
async fn http2_only_backend_is_named_in_details() {
    let o = Origin::start(Script::Http2Only).await.unwrap();
    let gw = Gw::start(&one("app", &o.addr.to_string(), "")).await;
    let r = send(gw.addr, get("/")).await;
    assert_failure(&gw, &r, 502, "http_protocol_error", "upstream_speaks_http2").await;
    assert!(
        r.header("proxy-status").contains("HTTP/2"),
        "{}",
        r.header("proxy-status")
    );
}

#[tokio::test]
async fn oversized_head_reports_size_and_limit() {
    let o = Origin::start(Script::OversizedHead(100_000)).await.unwrap();
    let gw = Gw::start(&one("app", &o.addr.to_string(), "")).await;
    let r = send(gw.addr, get("/")).await;
    assert_failure(
        &gw,
        &r,
        502,
        "http_response_header_section_size",
        "response_header_too_large",
    )
    .await;
    let ps = r.header("proxy-status");
    assert!(
        ps.contains("limit 65536") && ps.contains("100063 bytes received"),
        "{ps}"
    );
}

#[tokio::test]
async fn head_under_a_raised_limit_passes() {
    let o = Origin::start(Script::OversizedHead(100_000)).await.unwrap();
    let gw = Gw::start(&one(
        "app",
        &o.addr.to_string(),
        "max_response_header_bytes = 131072",
    ))
    .await;
    let r = send(gw.addr, get("/")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "ok\n");
}

#[tokio::test]
async fn short_body_aborts_the_client_and_is_logged() {
    let o = Origin::start(Script::ShortBody).await.unwrap();
    let gw = Gw::start(&one("app", &o.addr.to_string(), "")).await;
    let r = send(gw.addr, get("/")).await;
    // The head (200, Content-Length: 100) was already sent: the client's
    // connection must be aborted, never ended cleanly.
    assert_eq!(r.status, 200);
    assert!(r.body.is_err(), "body must not complete: {:?}", r.body);
    let lines = gw.failures(&r.request_id()).await;
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["cause"], "response_incomplete");
    assert_eq!(lines[0]["proxy_status"], "http_response_incomplete");
    assert_eq!(lines[0]["phase"], "read_body");
    let access = gw.access(&r.request_id()).await;
    assert_eq!(access["bytes"], 10);
    assert_eq!(access["cause"], "response_incomplete");
}

#[tokio::test]
async fn stalled_body_is_read_timeout_and_aborts() {
    let o = Origin::start(Script::SlowBody {
        interval: Duration::from_secs(5),
        len: 3,
    })
    .await
    .unwrap();
    let gw = Gw::start(&one("app", &o.addr.to_string(), "read_timeout = \"300ms\"")).await;
    let r = send(gw.addr, get("/")).await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_err());
    let lines = gw.failures(&r.request_id()).await;
    assert_eq!(lines[0]["cause"], "response_body_timeout");
    assert_eq!(lines[0]["proxy_status"], "connection_read_timeout");
}

#[tokio::test]
async fn missing_unix_socket_is_503_destination_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("php8.2-fpm.sock");
    let gw = Gw::start(&one("php", &format!("unix:{}", sock.display()), "")).await;
    let r = send(gw.addr, get("/index.php")).await;
    let line = assert_failure(&gw, &r, 503, "destination_unavailable", "socket_not_found").await;
    assert_eq!(r.header("retry-after"), "5");
    assert!(r.header("proxy-status").contains("does not exist"));
    assert_eq!(line["errno"], 2);
}

#[tokio::test]
async fn stale_socket_file_is_connection_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("app.sock");
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let gw = Gw::start(&one("app", &format!("unix:{}", sock.display()), "")).await;
    let r = send(gw.addr, get("/")).await;
    assert_failure(&gw, &r, 502, "connection_refused", "connection_refused").await;
}

#[tokio::test]
async fn full_unix_accept_queue_is_503_connection_limit_reached() {
    use socket2::{Domain, SockAddr, Socket, Type};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fpm.sock");
    let l = Socket::new(Domain::UNIX, Type::STREAM, None).unwrap();
    l.bind(&SockAddr::unix(&path).unwrap()).unwrap();
    l.listen(0).unwrap();
    let mut fill = Vec::new();
    for _ in 0..4 {
        let c = Socket::new(Domain::UNIX, Type::STREAM, None).unwrap();
        c.set_nonblocking(true).unwrap();
        if c.connect(&SockAddr::unix(&path).unwrap()).is_err() {
            break;
        }
        fill.push(c);
    }
    // The full queue is waited out for connect_timeout, then 503.
    let gw = Gw::start(&one(
        "php",
        &format!("unix:{}", path.display()),
        "connect_timeout = \"300ms\"\n",
    ))
    .await;
    let r = send(gw.addr, get("/")).await;
    let line = assert_failure(&gw, &r, 503, "connection_limit_reached", "upstream_busy").await;
    assert_eq!(line["errno"], 11);
    assert!(
        r.header("proxy-status")
            .contains("stayed full for 300ms (every worker busy)"),
        "{}",
        r.header("proxy-status")
    );
}

#[tokio::test]
async fn unreadable_unix_socket_is_permission_denied() {
    // Root bypasses file permissions, so the gateway runs as `nobody` in a
    // child process (`baton serve`) for this one.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let sock = dir.path().join("app.sock");
    let _origin = Origin::start_unix(&sock, Script::Ok("hi".into()))
        .await
        .unwrap();
    std::fs::set_permissions(&sock, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let port = refusing_addr().port();
    let cfg = dir.path().join("baton.toml");
    std::fs::write(&cfg, format!("[server]\nlisten = [\"127.0.0.1:{port}\"]\n[log]\naccess = \"off\"\nerrors = \"stderr\"\n{}", one("app", &format!("unix:{}", sock.display()), ""))).unwrap();
    std::fs::set_permissions(&cfg, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let mut child = std::process::Command::new("setpriv")
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            env!("CARGO_BIN_EXE_baton"),
            "serve",
            "--config",
        ])
        .arg(&cfg)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("setpriv (util-linux) runs baton as nobody");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut up = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "baton serve started as nobody");
    let r = send(addr, get("/")).await;
    // The log writer is a thread of its own: wait for the line before the
    // process is killed, or a loaded machine may kill it first.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    let id = r.request_id();
    let mut log = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !log.contains(&id) && std::time::Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
            log.push_str(&l);
            log.push('\n');
        }
    }
    child.kill().unwrap();
    let _ = child.wait();
    assert_eq!(r.status, 503);
    assert_eq!(r.proxy_error(), "destination_unavailable");
    // The details name the user, the socket's owner and mode, and the fix.
    let ps = r.header("proxy-status");
    assert!(
        ps.contains("baton runs as nobody (uid 65534) but socket")
            && ps.contains("app.sock is root:root mode 0600")
            && ps.contains("listen.owner = nobody"),
        "{ps}"
    );
    let line = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["request_id"] == r.request_id().as_str())
        .expect("failure line");
    assert_eq!(line["cause"], "socket_permission_denied");
    assert_eq!(line["errno"], 13);
}

#[tokio::test]
async fn upstream_pointing_at_baton_itself_is_a_configuration_error() {
    let port = refusing_addr().port();
    let me = format!("127.0.0.1:{port}");
    let gw = Gw::start_with(&one("loop", &me, ""), &me, "json").await;
    let r = send(gw.addr, get("/")).await;
    assert_failure(
        &gw,
        &r,
        500,
        "proxy_configuration_error",
        "proxy_configuration",
    )
    .await;
}

#[tokio::test]
async fn no_route_is_404_marked_as_batons() {
    let o = Origin::start(Script::Ok("x".into())).await.unwrap();
    let gw = Gw::start(&format!("[upstreams.app]\nservers = [\"{}\"]\n[[routes]]\nhost = \"example.com\"\nupstream = \"app\"\n", o.addr)).await;
    let r = send(gw.addr, get("/")).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.proxy_error(), "destination_not_found");
    assert_eq!(r.header("server"), "baton");
    assert_eq!(o.hits.load(std::sync::atomic::Ordering::Relaxed), 0);
    let a = gw.access(&r.request_id()).await;
    assert_eq!(a["cause"], "no_route");
}
