//! What a hostile or broken client does is the client's: a 4xx with the
//! client-side cause, never a failure counted against a server (ejection),
//! a retry or an incident.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

/// Writes `bytes` on a new connection and reads until the gateway closes
/// it (bounded: 5 s).
async fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    exchange(addr, bytes, false).await
}

/// `raw`, with the sending side closed after `bytes` when `half_close`.
async fn exchange(addr: std::net::SocketAddr, bytes: &[u8], half_close: bool) -> String {
    String::from_utf8_lossy(&exchange_bytes(addr, bytes, half_close).await).into_owned()
}

/// `raw`, as bytes.
async fn raw_bytes(addr: std::net::SocketAddr, bytes: &[u8]) -> Vec<u8> {
    exchange_bytes(addr, bytes, false).await
}

async fn exchange_bytes(addr: std::net::SocketAddr, bytes: &[u8], half_close: bool) -> Vec<u8> {
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    c.write_all(bytes).await.unwrap();
    if half_close {
        c.shutdown().await.unwrap();
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut out)).await;
    out
}

fn header<'a>(resp: &'a str, name: &str) -> Option<&'a str> {
    resp.split("\r\n\r\n").next()?.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_chunked_bodies_are_the_clients_fault_not_the_upstreams() {
    let o = Origin::start(Script::Ok("fine".into())).await.unwrap();
    let gw = Gw::start(&format!(
        "[upstreams.app]\nservers = [\"{}\"]\n[upstreams.app.outlier]\nconsecutive_failures = 2\n[[routes]]\nupstream = \"app\"\n",
        o.addr
    ))
    .await;
    let head =
        "POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    let bodies = [
        // A chunk size that is not hexadecimal.
        "0x5\r\nhello\r\n0\r\n\r\n",
        // A chunk size that overflows 64 bits.
        "fffffffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        // The client stops sending in the middle of a chunk.
        "a\r\nhel",
    ];
    for body in bodies {
        // Each twice: two upstream failures in a row would eject the server.
        for _ in 0..2 {
            // Sent whole, then the sending side closed (the last one stops
            // mid-chunk).
            let resp = exchange(gw.addr, format!("{head}{body}").as_bytes(), true).await;
            assert!(resp.starts_with("HTTP/1.1 400 "), "{body:?}: {resp}");
            assert_eq!(
                header(&resp, "proxy-status").map(|v| v.split(';').nth(1).unwrap_or("").trim()),
                Some("error=http_request_error"),
                "{resp}"
            );
            let id = header(&resp, "x-request-id").unwrap().to_string();
            let line = gw.access(&id).await;
            assert_eq!(line["cause"], "request_body_incomplete", "{line}");
            assert_eq!(line["status"], 400, "{line}");
        }
    }
    // The server was never blamed: not ejected, no incident, and the next
    // request goes through.
    assert_eq!(send(gw.addr, get("/")).await.status, 200);
    let m = gw.metrics().await;
    assert!(!m.contains("to=\"ejected\""), "{m}");
    let s = send(gw.admin, get("/api/state")).await.json();
    assert_eq!(s["incidents_open"].as_array().unwrap().len(), 0, "{s}");
    assert_eq!(s["upstreams"][0]["servers"][0]["ejected"], false, "{s}");
    let failures = std::fs::read_to_string(&gw.errors_log).unwrap_or_default();
    assert!(
        failures
            .lines()
            .all(|l| !l.contains("\"cause\":\"connection_terminated\"")),
        "{failures}"
    );
}

/// The access line of the request a raw exchange got.
async fn access_of(gw: &Gw, resp: &str) -> serde_json::Value {
    let id = header(resp, "x-request-id")
        .expect("a request id")
        .to_string();
    gw.access(&id).await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_host_is_one_and_unambiguous() {
    let public = Origin::start(Script::Echo).await.unwrap();
    let admin = Origin::start(Script::Status(403, "admin\n".into()))
        .await
        .unwrap();
    let gw = Gw::start(&format!(
        "[upstreams.public]\nservers = [\"{}\"]\n[upstreams.admin]\nservers = [\"{}\"]\n[[routes]]\nhost = \"public.example\"\nupstream = \"public\"\n[[routes]]\nhost = \"admin.internal\"\nupstream = \"admin\"\n",
        public.addr, admin.addr
    ))
    .await;
    // Refused: two Host fields, and HTTP/1.1 without one.
    for (req, why) in [
        (
            "GET / HTTP/1.1\r\nHost: public.example\r\nHost: admin.internal\r\nConnection: close\r\n\r\n",
            "two Host fields",
        ),
        (
            "GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
            "no Host field",
        ),
    ] {
        let resp = raw(gw.addr, req.as_bytes()).await;
        assert!(resp.starts_with("HTTP/1.1 400 "), "{req:?}: {resp}");
        let line = access_of(&gw, &resp).await;
        assert_eq!(line["cause"], "request_malformed", "{line}");
        assert!(resp.contains(why), "{resp}");
    }
    // An absolute-form target names the host: routed by it, and the
    // upstream gets it as Host.
    let resp = raw(
        gw.addr,
        b"GET http://public.example/x HTTP/1.1\r\nHost: admin.internal\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200 "), "{resp}");
    let body = resp.split("\r\n\r\n").nth(1).unwrap();
    let echo: serde_json::Value = serde_json::from_str(body).unwrap();
    let hosts: Vec<&str> = echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h[0].as_str().unwrap().eq_ignore_ascii_case("host"))
        .map(|h| h[1].as_str().unwrap())
        .collect();
    assert_eq!(hosts, ["public.example"], "{echo}");
    // `Connection: host` cannot strip the Host routing rests on.
    let resp = raw(
        gw.addr,
        b"GET /y HTTP/1.1\r\nHost: public.example\r\nConnection: close, host\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200 "), "{resp}");
    assert!(resp.contains(r#"["host","public.example"]"#), "{resp}");
    // HTTP/1.0 needs no Host (it routes to no host-specific route: 404).
    let resp = raw(gw.addr, b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.0 404 "), "{resp}");
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_authority_and_host_must_agree() {
    let public = Origin::start(Script::Ok("public\n".into())).await.unwrap();
    let admin = Origin::start(Script::Ok("admin\n".into())).await.unwrap();
    let gw = Gw::start(&format!(
        "[upstreams.public]\nservers = [\"{}\"]\n[upstreams.admin]\nservers = [\"{}\"]\n[[routes]]\nhost = \"public.example\"\nupstream = \"public\"\n[[routes]]\nhost = \"admin.internal\"\nupstream = \"admin\"\n",
        public.addr, admin.addr
    ))
    .await;
    let s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(s),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let send2 = |host: Option<&'static str>| {
        let mut r = http::Request::get("http://public.example/x");
        if let Some(h) = host {
            r = r.header("host", h);
        }
        r.body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap()
    };
    let r = tx
        .send_request(send2(Some("admin.internal")))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = tx.send_request(send2(None)).await.unwrap();
    assert_eq!(r.status(), 200);
    let body = http_body_util::BodyExt::collect(r.into_body())
        .await
        .unwrap();
    assert_eq!(body.to_bytes(), "public\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn transfer_codings_other_than_chunked_get_501() {
    let o = Origin::start(Script::Echo).await.unwrap();
    let gw = Gw::start(&one_route(o.addr)).await;
    for te in [
        "identity, chunked",
        "cow, chunked",
        "gzip, chunked",
        "chunked, chunked",
    ] {
        let req = format!(
            "POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: {te}\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        );
        let resp = raw(gw.addr, req.as_bytes()).await;
        assert!(resp.starts_with("HTTP/1.1 501 "), "{te}: {resp}");
        let line = access_of(&gw, &resp).await;
        assert_eq!(line["cause"], "transfer_coding_unsupported", "{line}");
    }
    // Plain chunked goes through.
    let resp = raw(
        gw.addr,
        b"POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200 "), "{resp}");
    assert!(resp.contains(r#""body_len":5"#), "{resp}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_json_access_line_keeps_referer_and_user_agent() {
    let o = Origin::start(Script::Ok("fine".into())).await.unwrap();
    let gw = Gw::start(&one_route(o.addr)).await;
    let resp = raw(
        gw.addr,
        b"GET / HTTP/1.1\r\nHost: t\r\nReferer: https://example.com/from\r\nUser-Agent: probe/1.0\r\nConnection: close\r\n\r\n",
    )
    .await;
    let line = access_of(&gw, &resp).await;
    assert_eq!(line["referer"], "https://example.com/from", "{line}");
    assert_eq!(line["user_agent"], "probe/1.0", "{line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_h2c_upgrade_is_never_tunnelled_past_routing() {
    // An ordinary backend gets the request as plain HTTP/1.1.
    let echo = Origin::start(Script::Echo).await.unwrap();
    // A backend that answers 101 whatever it is asked.
    let switcher = Origin::start(Script::Upgrade).await.unwrap();
    let gw = Gw::start(&format!(
        "[upstreams.echo]\nservers = [\"{}\"]\n[upstreams.switcher]\nservers = [\"{}\"]\n[[routes]]\npath = \"/public\"\nupstream = \"echo\"\n[[routes]]\npath = \"/switch\"\nupstream = \"switcher\"\n",
        echo.addr, switcher.addr
    ))
    .await;
    let h2c = "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n";
    let resp = raw(
        gw.addr,
        format!("GET /public HTTP/1.1\r\nHost: t\r\n{h2c}Connection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200 "), "{resp}");
    let lower = resp.to_ascii_lowercase();
    assert!(!lower.contains("\"upgrade\""), "{resp}");
    assert!(!lower.contains("http2-settings"), "{resp}");
    // A 101 the client did not get to ask for is not passed on: the bytes
    // after it would reach the backend unrouted.
    let resp = raw(
        gw.addr,
        format!(
            "GET /switch HTTP/1.1\r\nHost: t\r\n{h2c}\r\nGET /private/admin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 502 "), "{resp}");
    let first = resp.split("HTTP/1.1 ").nth(1).unwrap();
    assert!(first.contains("error=http_upgrade_failed"), "{resp}");
    let line = access_of(&gw, &resp).await;
    assert_eq!(line["cause"], "upgrade_failed", "{line}");
    // The request after it was routed on its own: no route for it.
    assert!(resp.contains("HTTP/1.1 404 "), "{resp}");
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_and_half_preface_connections_are_closed_at_the_header_deadline() {
    let o = Origin::start(Script::Ok("fine".into())).await.unwrap();
    let gw = Gw::start(&format!(
        "[server]\nheader_read_timeout = \"1s\"\n[upstreams.app]\nservers = [\"{}\"]\n[[routes]]\nupstream = \"app\"\n",
        o.addr
    ))
    .await;
    for first in [&b""[..], b"PRI * HTTP", b"PRI * HTTP/2.0\r\n\r\nSM\r\n"] {
        let mut c = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        c.write_all(first).await.unwrap();
        let start = std::time::Instant::now();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
            .await
            .expect("closed within the deadline")
            .unwrap_or(0);
        let took = start.elapsed();
        assert_eq!(n, 0, "{first:?}: closed without an answer");
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(3),
            "{first:?}: closed after {took:?}"
        );
    }
    // A normal client is served as before.
    assert_eq!(send(gw.addr, get("/")).await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_api_refuses_a_rebound_name() {
    let a = Origin::start(Script::Ok("a".into())).await.unwrap();
    let gw = Gw::start(&format!(
        "[server]\ndashboard_actions = true\n[upstreams.web]\nservers = [\"{}\"]\n[[routes]]\nupstream = \"web\"\n",
        a.addr
    ))
    .await;
    let port = gw.admin.port();
    // What a browser sends once evil.example resolves to the admin address:
    // its own name as Host, and an Origin that matches it.
    let rebound = format!("evil.example:{port}");
    let origin = format!("http://evil.example:{port}");
    let drain = format!(
        "POST /drain?server={} HTTP/1.1\r\nHost: {rebound}\r\nOrigin: {origin}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        a.addr
    );
    let resp = raw(gw.admin, drain.as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 421 "), "{resp}");
    let state = format!("GET /api/state HTTP/1.1\r\nHost: {rebound}\r\nConnection: close\r\n\r\n");
    let resp = raw(gw.admin, state.as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 421 "), "{resp}");
    assert!(!resp.contains("config_toml"), "{resp}");
    // Nothing was drained; the admin address itself still answers.
    let own =
        format!("GET /api/state HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    let resp = raw(gw.admin, own.as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 200 "), "{resp}");
    assert!(resp.contains("\"draining\":false"), "{resp}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_http2_preface_gets_goaway_and_http_1_2_is_read_as_1_1() {
    let o = Origin::start(Script::Ok("fine".into())).await.unwrap();
    let gw = Gw::start(&one_route(o.addr)).await;
    // h2spec 3.5/2: a connection error of type PROTOCOL_ERROR (RFC 9113
    // §3.4). Any first line with no HTTP version is neither HTTP/1.x nor
    // the preface: the same answer, and an access line with its cause.
    for line in [
        &b"INVALID CONNECTION PREFACE\r\n\r\n"[..],
        b"HELLO THERE\r\n\r\n",
    ] {
        let resp = raw_bytes(gw.addr, line).await;
        assert_eq!(
            resp,
            [0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            "GOAWAY(PROTOCOL_ERROR), then the close"
        );
    }
    let mut log = String::new();
    for _ in 0..60 {
        log = gw.access_raw().await;
        if log.matches(r#""cause":"request_malformed""#).count() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        log.matches(r#""cause":"request_malformed""#).count(),
        2,
        "{log}"
    );
    // RFC 9110 §2.5: HTTP/1.2 is answered as HTTP/1.1.
    let resp = raw(
        gw.addr,
        b"GET / HTTP/1.2\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200 "), "{resp}");
    assert!(resp.ends_with("fine"), "{resp}");
    // A TLS handshake to this plain port still gets hyper's 400.
    let resp = raw(gw.addr, b"\x16\x03\x01\x00\x05hello").await;
    assert!(resp.starts_with("HTTP/1.1 400 "), "{resp}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_hpack_bomb_is_held_to_the_head_limit() {
    let o = Origin::start(Script::Ok("fine".into())).await.unwrap();
    let gw = Gw::start(&one_route(o.addr)).await;
    // One 4,000-byte field added to the HPACK table, then referred to 20
    // times by one byte each: 4 KB on the wire decode to about 85 KB, over
    // max_request_header_bytes (64 KiB).
    let mut block = vec![0x82, 0x86, 0x84, 0x01, 0x01, b't'];
    block.extend([0x40, 0x05]);
    block.extend(b"x-big");
    block.extend([0x7f, 0xa1, 0x1e]);
    block.extend(std::iter::repeat_n(b'a', 4000));
    block.extend(std::iter::repeat_n(0xbe, 20));
    let mut wire = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    wire.extend(h2_frame(4, 0, 0, &[]));
    wire.extend(h2_frame(1, 0x5, 1, &block));
    let mut c = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    c.write_all(&wire).await.unwrap();
    // Frames until the answer on stream 1 (bounded: 5 s).
    let mut out = Vec::new();
    let answer = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 4096];
        loop {
            let n = c.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed without an answer");
            out.extend_from_slice(&buf[..n]);
            if let Some(f) = h2_frames(&out).into_iter().find(|f| f.0 == 1 && f.2 == 1) {
                return f;
            }
        }
    })
    .await
    .expect("an answer on stream 1");
    // HEADERS, END_STREAM | END_HEADERS, `:status: 431` (HPACK: indexed
    // name 8, Huffman-coded "431").
    assert_eq!(answer.1, 0x5);
    assert_eq!(answer.3, [0x48, 0x83, 0x69, 0x90, 0xff]);
    assert_eq!(o.hits.load(std::sync::atomic::Ordering::Relaxed), 0);
}
