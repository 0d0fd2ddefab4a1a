//! What a hostile or broken client does is the client's: a 4xx with the
//! client-side cause, never a failure counted against a server (ejection),
//! a retry or an incident.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

/// Writes `bytes` on a new connection, closes its sending side, and reads
/// until the gateway closes it (bounded: 5 s).
async fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    c.write_all(bytes).await.unwrap();
    c.shutdown().await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
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
            let resp = raw(gw.addr, format!("{head}{body}").as_bytes()).await;
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
