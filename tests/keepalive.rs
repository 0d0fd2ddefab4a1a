//! The keep-alive race: upstreams that close idle connections, and the
//! replay rules for a reused connection that dies before answering.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::support::*;

fn one(server: &str, extra: &str) -> String {
    format!("[upstreams.app]\nservers = [\"{server}\"]\n{extra}\n[[routes]]\nupstream = \"app\"\n")
}

/// Requests arrive at about the upstream's idle timeout (200 ms, with
/// jitter either side): some land just before its close, some just after.
#[tokio::test]
async fn keepalive_race_zero_errors_for_get_and_small_post() {
    let o = Origin::start(Script::IdleClose(Duration::from_millis(200)))
        .await
        .unwrap();
    let gw = Gw::start(&one(&o.addr.to_string(), "")).await;
    let mut c = Client::connect(gw.addr).await;
    let mut failures = Vec::new();
    for i in 0..40u64 {
        // 185..215 ms, spread deterministically.
        tokio::time::sleep(Duration::from_millis(185 + (i * 7) % 31)).await;
        let req = if i % 2 == 0 {
            get("/race")
        } else {
            Request::post("/race")
                .header("host", "t")
                .header("content-type", "application/x-www-form-urlencoded")
                .body(Full::new(Bytes::from_static(b"n=1")))
                .unwrap()
        };
        let r = c.send(req).await;
        if r.status != 200 {
            failures.push((i, r.status, r.header("proxy-status").to_string()));
        }
    }
    assert!(failures.is_empty(), "client-visible errors: {failures:?}");
    assert!(
        o.conns.load(Ordering::Relaxed) > 5,
        "the upstream really closed idle connections"
    );
}

#[tokio::test]
async fn reused_connection_reset_replays_get_on_a_fresh_connection() {
    let o = Origin::start(Script::ResetAfter(1)).await.unwrap();
    let gw = Gw::start(&one(&o.addr.to_string(), "")).await;
    // One client connection: it stays on one worker, whose pool holds the
    // upstream connection the first request left behind.
    let mut c = Client::connect(gw.addr).await;
    assert_eq!(c.send(get("/1")).await.status, 200);
    let r = c.send(get("/2")).await;
    assert_eq!(
        r.status, 200,
        "GET replayed after the pooled connection died"
    );
    let lines = gw.failures(&r.request_id()).await;
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["cause"], "connection_terminated");
    assert_eq!(lines[0]["reused"], true);
    assert_eq!(lines[0]["retry"], "fresh_connection");
    assert_eq!(lines[0]["status"], serde_json::Value::Null);
    assert_eq!(gw.access(&r.request_id()).await["attempts"], 2);
}

#[tokio::test]
async fn reused_connection_reset_does_not_replay_a_post() {
    let o = Origin::start(Script::ResetAfter(1)).await.unwrap();
    let gw = Gw::start(&one(&o.addr.to_string(), "")).await;
    let mut c = Client::connect(gw.addr).await;
    assert_eq!(c.send(get("/1")).await.status, 200);
    let post = Request::post("/pay")
        .header("host", "t")
        .body(Full::new(Bytes::from_static(b"amount=5")))
        .unwrap();
    let r = c.send(post).await;
    let line = assert_failure(
        &gw,
        &r,
        502,
        "connection_terminated",
        "connection_terminated",
    )
    .await;
    assert_eq!(line["reused"], true);
    assert_eq!(line["retry"], serde_json::Value::Null);
    assert_eq!(
        o.hits.load(Ordering::Relaxed),
        2,
        "the upstream read the POST exactly once"
    );
}

#[tokio::test]
async fn idempotency_key_makes_a_post_replayable() {
    let o = Origin::start(Script::ResetAfter(1)).await.unwrap();
    let gw = Gw::start(&one(&o.addr.to_string(), "")).await;
    let mut c = Client::connect(gw.addr).await;
    assert_eq!(c.send(get("/1")).await.status, 200);
    let post = Request::post("/pay")
        .header("host", "t")
        .header("idempotency-key", "k-1")
        .body(Full::new(Bytes::from_static(b"amount=5")))
        .unwrap();
    let r = c.send(post).await;
    assert_eq!(r.status, 200);
}

/// `Keep-Alive: timeout=1` makes baton retire a pooled connection after
/// 3/4 of a second of idleness, before the upstream would close it.
#[tokio::test]
async fn keep_alive_timeout_hint_is_honoured() {
    let hinted = Origin::start(Script::KeepAliveHint(1)).await.unwrap();
    let plain = Origin::start(Script::Ok("ok\n".into())).await.unwrap();
    for (o, expected_conns) in [(&hinted, 2), (&plain, 1)] {
        let gw = Gw::start(&one(&o.addr.to_string(), "")).await;
        let mut c = Client::connect(gw.addr).await;
        assert_eq!(c.send(get("/a")).await.status, 200);
        tokio::time::sleep(Duration::from_millis(850)).await;
        assert_eq!(c.send(get("/b")).await.status, 200);
        assert_eq!(o.conns.load(Ordering::Relaxed), expected_conns);
    }
}

/// A real nginx answers an upload before reading it (`return`, as an
/// application does when it refuses one), and the connection that carried
/// it ends right after. That is not an idle timeout: the requests after it
/// still share one pooled connection (before, baton learned an "idle close"
/// of about a millisecond and opened a connection for every request after).
#[tokio::test]
async fn a_connection_ended_after_an_early_answer_does_not_stop_pooling() {
    let nginx = real_nginx(|dir, port| {
        let d = dir.display();
        format!(
            "  log_format conn '$connection $request_method';\n  access_log {d}/access.log conn;\n  keepalive_timeout 75s;\n  server {{\n    listen 127.0.0.1:{port};\n    location = /upload {{ return 200 \"ok\\n\"; }}\n    location / {{ return 200 \"ok\\n\"; }}\n  }}\n"
        )
    })
    .await;
    let gw = Gw::start(&one(&nginx.addr.to_string(), "")).await;
    // Whether the answer beats the end of the upload is a race; five
    // uploads make one that does near certain. (Baton closes a client
    // connection whose request body it did not read to the end: a new
    // one for each.)
    for _ in 0..5 {
        let mut u = Client::connect(gw.addr).await;
        let upload = Request::post("/upload")
            .header("host", "t")
            .header("content-type", "application/octet-stream")
            .body(Full::new(Bytes::from(vec![b'u'; 1 << 20])))
            .unwrap();
        assert_eq!(u.send(upload).await.status, 200);
    }
    let mut c = Client::connect(gw.addr).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    for _ in 0..10 {
        assert_eq!(c.send(get("/page")).await.status, 200);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let log = std::fs::read_to_string(nginx.dir.path().join("access.log")).unwrap();
    let gets: Vec<&str> = log.lines().filter(|l| l.ends_with(" GET")).collect();
    assert_eq!(gets.len(), 10, "{log}");
    let mut conns: Vec<&str> = gets.iter().map(|l| l.split(' ').next().unwrap()).collect();
    conns.dedup();
    assert_eq!(
        conns.len(),
        1,
        "the GETs came over connections {conns:?}\n{log}"
    );
}
