//! Protection: maintenance mode, rate limits, request size limits, the
//! slowloris timeout and the connection cap.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

fn app(o: &Origin, route_extra: &str) -> String {
    format!(
        "[upstreams.app]\nservers = [\"{}\"]\n[[routes]]\nupstream = \"app\"\n{route_extra}\n",
        o.addr
    )
}

#[tokio::test]
async fn maintenance_is_503_with_retry_after_and_the_message() {
    let o = Origin::start(Script::Ok("x".into())).await.unwrap();
    let gw = Gw::start(&app(&o, "maintenance = \"Upgrading the database, back at 14:00 UTC\"\nmaintenance_retry_after = \"30m\"")).await;
    let r = send(
        gw.addr,
        Request::get("/")
            .header("host", "test.local")
            .header("accept", "text/html")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 503);
    assert_eq!(r.proxy_error(), "destination_unavailable");
    assert_eq!(r.header("retry-after"), "1800");
    assert!(
        r.text().contains("down for maintenance")
            && r.text()
                .contains("Upgrading the database, back at 14:00 UTC"),
        "{}",
        r.text()
    );
    assert_eq!(o.hits.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[tokio::test]
async fn rate_limit_is_429_with_ratelimit_headers() {
    let o = Origin::start(Script::Ok("x".into())).await.unwrap();
    let gw = Gw::start(&app(
        &o,
        "rate_limit = \"2/s\"\nrate_limit_burst = 3\nrate_limit_key = \"header:X-Api-Key\"",
    ))
    .await;
    let req = |k: &str| {
        Request::get("/")
            .header("host", "t")
            .header("x-api-key", k)
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(send(gw.addr, req("alice")).await.status);
    }
    assert_eq!(statuses, vec![200, 200, 200, 429]);
    let r = send(gw.addr, req("alice")).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.proxy_error(), "http_request_denied");
    assert_eq!(r.header("retry-after"), "1");
    assert_eq!(r.header("ratelimit-policy"), "\"baton\";q=3;w=1");
    assert_eq!(r.header("ratelimit"), "\"baton\";r=0;t=1");
    assert_eq!(
        send(gw.addr, req("bob")).await.status,
        200,
        "keys are separate"
    );
    let a = gw.access(&r.request_id()).await;
    assert_eq!(a["cause"], "rate_limited");
}

#[tokio::test]
async fn body_over_max_body_bytes_is_413() {
    let o = Origin::start(Script::Echo).await.unwrap();
    let running = start_with_server(&o, "max_body_bytes = 1000").await;
    let addr = running.addrs[0];
    let big = Request::post("/up")
        .header("host", "t")
        .body(Full::new(Bytes::from(vec![b'x'; 1001])))
        .unwrap();
    let r = send(addr, big).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.proxy_error(), "http_request_error");
    let ok = Request::post("/up")
        .header("host", "t")
        .body(Full::new(Bytes::from(vec![b'x'; 1000])))
        .unwrap();
    assert_eq!(send(addr, ok).await.status, 200);
}

async fn start_with_server(o: &Origin, server: &str) -> baton::server::Running {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("b.toml");
    std::fs::write(&f, format!("[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\n{server}\n[log]\naccess = \"off\"\nerrors = \"off\"\n[incidents]\ndir = \"off\"\n{}", app(o, ""))).unwrap();
    baton::server::start(baton::config::load(&f).unwrap())
        .await
        .unwrap()
}

#[tokio::test]
async fn oversized_request_head_is_431() {
    let o = Origin::start(Script::Ok("x".into())).await.unwrap();
    let running = start_with_server(&o, "max_request_header_bytes = 8192").await;
    let r = send(
        running.addrs[0],
        Request::get("/")
            .header("host", "t")
            .header("cookie", "a".repeat(10_000))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 431);
    assert_eq!(o.hits.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[tokio::test]
async fn slowloris_connection_is_closed_after_header_read_timeout() {
    let o = Origin::start(Script::Ok("x".into())).await.unwrap();
    let running = start_with_server(&o, "header_read_timeout = \"300ms\"").await;
    let mut s = tokio::net::TcpStream::connect(running.addrs[0])
        .await
        .unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "baton closed the connection");
    assert!(
        String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 408") || buf.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );
}

#[tokio::test]
async fn connections_over_max_connections_are_closed() {
    let o = Origin::start(Script::Ok("x".into())).await.unwrap();
    let running = start_with_server(&o, "max_connections = 2").await;
    let addr = running.addrs[0];
    let mut a = Client::connect(addr).await;
    let mut b = Client::connect(addr).await;
    assert_eq!(a.send(get("/")).await.status, 200);
    assert_eq!(b.send(get("/")).await.status, 200);
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").await;
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(2), c.read_to_end(&mut buf))
        .await
        .expect("closed at once");
    assert!(
        n.is_err() || buf.is_empty(),
        "the third connection got no answer: {:?}",
        String::from_utf8_lossy(&buf)
    );
    assert_eq!(
        a.send(get("/")).await.status,
        200,
        "existing connections keep working"
    );
}

#[tokio::test]
async fn chunked_body_over_max_body_bytes_is_413() {
    let o = Origin::start(Script::Echo).await.unwrap();
    let running = start_with_server(&o, "max_body_bytes = 1000").await;
    let mut s = tokio::net::TcpStream::connect(running.addrs[0])
        .await
        .unwrap();
    s.write_all(b"POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let chunk = format!("258\r\n{}\r\n", "x".repeat(600));
    for _ in 0..3 {
        if s.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let _ = s.write_all(b"0\r\n\r\n").await;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(head.contains("error=http_request_error"), "{head}");
}

#[tokio::test]
async fn upstream_maintenance_covers_every_route() {
    let o = Origin::start(Script::Ok("x".into())).await.unwrap();
    let gw = Gw::start(&format!("[upstreams.app]\nservers = [\"{}\"]\nmaintenance = \"Moving to a new host\"\nmaintenance_retry_after = \"5m\"\n[[routes]]\npath = \"/a\"\nupstream = \"app\"\n[[routes]]\nupstream = \"app\"\n", o.addr)).await;
    for p in ["/a", "/b"] {
        let r = send(gw.addr, get(p)).await;
        assert_eq!((r.status, r.header("retry-after")), (503, "300"));
        assert!(r.header("proxy-status").contains("Moving to a new host"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_concurrency_finds_a_lower_limit_when_latency_rises() {
    let slow = Origin::start(Script::Delay(Duration::from_millis(80), "slow".into()))
        .await
        .unwrap();
    let gw = Gw::start(&format!("[upstreams.app]\nservers = [\"{}\"]\nmax_concurrent = 20\nadaptive_latency = \"20ms\"\nadaptive_min = 2\n[[routes]]\nupstream = \"app\"\n", slow.addr)).await;
    // A load step: answers now take 80 ms against a 20 ms target.
    for _ in 0..10 {
        assert_eq!(send(gw.addr, get("/")).await.status, 200);
    }
    let m = gw.metrics().await;
    assert!(
        m.contains("baton_upstream_concurrency_limit{upstream=\"app\"} 2"),
        "{m}"
    );
    let mut tasks = Vec::new();
    for _ in 0..6 {
        tasks.push(tokio::spawn(send(gw.addr, get("/"))));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        if r.status == 503 {
            assert_eq!(r.proxy_error(), "connection_limit_reached");
        }
        statuses.push(r.status);
    }
    statuses.sort();
    assert_eq!(
        statuses,
        vec![200, 200, 503, 503, 503, 503],
        "two slots at the adapted limit"
    );
}

#[tokio::test]
async fn requests_refused_before_routing_are_logged_and_counted() {
    let o = Origin::start(Script::Ok("x".into())).await.unwrap();
    let gw = Gw::start(&format!(
        "[server]\nmax_request_header_bytes = 8192\n{}",
        app(&o, "")
    ))
    .await;
    // A request line HTTP forbids (a space in the target): hyper answers
    // 400 before any route. (A line with no HTTP version at all is not
    // HTTP/1.x: it gets HTTP/2's GOAWAY, tests/hardening.rs.)
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /a b HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut buf)).await;
    assert!(
        buf.starts_with(b"HTTP/1.1 400 Bad Request\r\n"),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );
    // A head over max_request_header_bytes: 431.
    let big = Request::get("/")
        .header("host", "t")
        .header("cookie", "a".repeat(10_000))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(gw.addr, big).await.status, 431);
    assert_eq!(o.hits.load(std::sync::atomic::Ordering::Relaxed), 0);
    // Both are in the access log, with their cause and the client.
    let mut lines: Vec<serde_json::Value> = Vec::new();
    for _ in 0..100 {
        lines = std::fs::read_to_string(&gw.access_log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        if lines.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let causes: Vec<(u64, &str, &str)> = lines
        .iter()
        .map(|l| {
            (
                l["status"].as_u64().unwrap(),
                l["cause"].as_str().unwrap(),
                l["client"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(
        causes.contains(&(400, "request_malformed", "127.0.0.1")),
        "{lines:?}"
    );
    assert!(
        causes.contains(&(431, "request_header_too_large", "127.0.0.1")),
        "{lines:?}"
    );
    let m = gw.metrics().await;
    assert!(
        m.contains("baton_requests_total{route=\"(none)\",status=\"400\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("baton_requests_total{route=\"(none)\",status=\"431\"} 1"),
        "{m}"
    );
    gw.stop().await;
}
