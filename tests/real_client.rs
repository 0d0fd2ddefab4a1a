//! The real client's address: the PROXY protocol (v1 and v2) from a real
//! HAProxy's `send-proxy`, and `X-Forwarded-For` believed only from
//! `trusted_proxies`. The client connects from 127.0.0.5, so its address
//! differs from the proxy's (127.0.0.1).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

/// GET `path` from 127.0.0.5 to `addr`; the raw answer.
async fn from_other_address(addr: SocketAddr, path: &str) -> String {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.5:0".parse().unwrap()).unwrap();
    let mut s = sock.connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: shop.test\r\nX-Forwarded-For: 6.6.6.6\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    out
}

/// HAProxy in front of baton (`front` lines in its frontend, `server_opts`
/// on its server line).
async fn haproxy_in_front(
    baton: SocketAddr,
    front: &str,
    server_opts: &str,
) -> (Reap, SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let port = refusing_addr().port();
    let conf = dir.path().join("haproxy.cfg");
    std::fs::write(
        &conf,
        format!(
            "defaults\n  mode http\n  timeout connect 1s\n  timeout client 5s\n  timeout server 5s\nfrontend web\n  bind 127.0.0.1:{port}\n{front}  default_backend baton\nbackend baton\n  server b1 {baton} {server_opts}\n"
        ),
    )
    .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let reap = real_proxy("haproxy", &conf, addr, None).await;
    (reap, addr, dir)
}

fn echoed_xff(answer: &str) -> String {
    let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("{answer}"));
    v["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h[0] == "x-forwarded-for")
        .map(|h| h[1].as_str().unwrap().to_string())
        .unwrap_or_default()
}

fn request_id(answer: &str) -> String {
    answer
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn proxy_protocol_v1_and_v2_from_haproxy_give_the_real_client() {
    let o = Origin::start(Script::Echo).await.unwrap();
    let gw = Gw::start(&format!(
        "[server]\nproxy_protocol = true\n{}",
        one_route(o.addr)
    ))
    .await;
    for opts in ["send-proxy", "send-proxy-v2"] {
        let (_h, front, _d) = haproxy_in_front(gw.addr, "", opts).await;
        let answer = from_other_address(front, "/pp").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{opts}: {answer}");
        // The client's own X-Forwarded-For is kept (baton does not trust
        // HAProxy's headers here), then the PROXY header's address.
        assert_eq!(echoed_xff(&answer), "6.6.6.6, 127.0.0.5", "{opts}");
        let line = gw.access(&request_id(&answer)).await;
        assert_eq!(line["client"], "127.0.0.5", "{opts}: {line}");
    }
    // A connection without the header is closed without an answer.
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(buf.is_empty(), "{}", String::from_utf8_lossy(&buf));
    gw.stop().await;
}

#[tokio::test]
async fn x_forwarded_for_is_believed_only_from_trusted_proxies() {
    let o = Origin::start(Script::Echo).await.unwrap();
    let gw = Gw::start(&format!(
        "[server]\ntrusted_proxies = [\"127.0.0.1\"]\n{}",
        one_route(o.addr)
    ))
    .await;
    // Through HAProxy (127.0.0.1, trusted) with `option forwardfor`: the
    // client is the address HAProxy appended, not the one the client made up.
    let (_h, front, _d) = haproxy_in_front(
        gw.addr,
        "  option forwardfor\n  http-request set-header X-Forwarded-Proto https\n",
        "",
    )
    .await;
    let answer = from_other_address(front, "/xff").await;
    assert_eq!(echoed_xff(&answer), "6.6.6.6, 127.0.0.5, 127.0.0.1");
    let line = gw.access(&request_id(&answer)).await;
    assert_eq!(line["client"], "127.0.0.5", "{line}");
    let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
    assert!(body.contains("[\"x-forwarded-proto\",\"https\"]"), "{body}");
    // Straight from 127.0.0.5 (not trusted): its X-Forwarded-For and
    // X-Forwarded-Proto are not believed.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.5:0".parse().unwrap()).unwrap();
    let mut s = sock.connect(gw.addr).await.unwrap();
    s.write_all(b"GET /direct HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Proto: https\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.unwrap();
    let line = gw.access(&request_id(&answer)).await;
    assert_eq!(line["client"], "127.0.0.5", "{line}");
    assert!(
        answer.contains("[\"x-forwarded-proto\",\"http\"]"),
        "{answer}"
    );
    gw.stop().await;
}
