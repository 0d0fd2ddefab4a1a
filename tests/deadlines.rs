//! Every phase of a client connection has a deadline: the head, keep-alive
//! and HTTP/2 idle time (a preface and SETTINGS only, a header block never
//! ended), a stalled body, a client that stops reading; silent connections
//! and a descriptor shortage do not lock a normal client out; an idle
//! HTTP/1.1 connection parked without a task keeps every one of those.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// Every deadline at one second.
const FAST: &str = "[server]\nheader_read_timeout = \"1s\"\nidle_timeout = \"1s\"\nbody_read_timeout = \"1s\"\nsend_timeout = \"1s\"\n";

async fn gateway(script: Script, extra: &str) -> (Origin, Gw) {
    let o = Origin::start(script).await.unwrap();
    let gw = Gw::start(&format!(
        "{FAST}[upstreams.app]\nservers = [\"{}\"]\n[upstreams.app.outlier]\nconsecutive_failures = 2\n{extra}[[routes]]\nupstream = \"app\"\n",
        o.addr
    ))
    .await;
    (o, gw)
}

/// Reads until the gateway closes the connection (bounded: 6 s); returns
/// what came and how long the close took.
async fn until_closed(c: &mut TcpStream) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    let mut out = Vec::new();
    let done = tokio::time::timeout(Duration::from_secs(6), async {
        let mut buf = [0u8; 4096];
        loop {
            match c.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(done.is_ok(), "still open after 6 s");
    (out, start.elapsed())
}

fn about_one_second(took: Duration, what: &str) {
    assert!(
        took >= Duration::from_millis(850) && took < Duration::from_secs(3),
        "{what}: closed after {took:?}"
    );
}

/// The types of the HTTP/2 frames in `bytes`.
fn frame_types(bytes: &[u8]) -> Vec<u8> {
    h2_frames(bytes).into_iter().map(|f| f.0).collect()
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const SETTINGS: u8 = 4;
const HEADERS: u8 = 1;
const GOAWAY: u8 = 7;

#[tokio::test(flavor = "multi_thread")]
async fn a_head_not_complete_in_time_gets_408() {
    let (o, gw) = gateway(Script::Ok("fine".into()), "").await;
    let mut c = TcpStream::connect(gw.addr).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        .await
        .unwrap();
    let (out, took) = until_closed(&mut c).await;
    let resp = String::from_utf8_lossy(&out);
    assert!(resp.starts_with("HTTP/1.1 408 "), "{resp}");
    assert!(
        resp.contains("proxy-status: baton; error=http_request_error; details=\"request_timeout\""),
        "{resp}"
    );
    about_one_second(took, "a partial head");
    let log = wait_for(&gw, "request_timeout").await;
    assert!(log.contains("\"status\":408"), "{log}");
    assert_eq!(o.hits.load(std::sync::atomic::Ordering::Relaxed), 0);
}

/// The access log, once it names `what` (bounded: 3 s).
async fn wait_for(gw: &Gw, what: &str) -> String {
    for _ in 0..60 {
        let log = gw.access_raw().await;
        if log.contains(what) {
            return log;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no {what} in the access log: {}", gw.access_raw().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slowloris_dripping_bytes_is_closed_at_the_head_deadline() {
    let (_o, gw) = gateway(Script::Ok("fine".into()), "").await;
    // The deadline counts from the head's first byte, not its last.
    let c = TcpStream::connect(gw.addr).await.unwrap();
    let (mut rd, mut wr) = c.into_split();
    wr.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        .await
        .unwrap();
    let drip = tokio::spawn(async move {
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if wr.write_all(b"a").await.is_err() {
                break;
            }
        }
    });
    let start = Instant::now();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(6), rd.read_to_end(&mut out)).await;
    let took = start.elapsed();
    drip.abort();
    let resp = String::from_utf8_lossy(&out);
    assert!(resp.starts_with("HTTP/1.1 408 "), "{resp}");
    about_one_second(took, "a dripping head");
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_are_closed_at_idle_timeout() {
    let (_o, gw) = gateway(Script::Ok("fine".into()), "").await;
    // HTTP/1.1 keep-alive: one request, then nothing.
    let mut c = TcpStream::connect(gw.addr).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = c.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200 "));
    let (out, took) = until_closed(&mut c).await;
    assert!(out.is_empty(), "{:?}", String::from_utf8_lossy(&out));
    about_one_second(took, "an idle keep-alive connection");

    // HTTP/2: the preface and SETTINGS, then nothing.
    let mut c = TcpStream::connect(gw.addr).await.unwrap();
    c.write_all(&[PREFACE, &h2_frame(SETTINGS, 0, 0, &[])].concat())
        .await
        .unwrap();
    let (out, took) = until_closed(&mut c).await;
    let types = frame_types(&out);
    assert_eq!(types.first(), Some(&SETTINGS), "{types:?}");
    assert!(types.contains(&GOAWAY), "{types:?}");
    about_one_second(took, "HTTP/2 with SETTINGS only");

    // HTTP/2: a HEADERS frame without END_HEADERS, and no CONTINUATION.
    let mut c = TcpStream::connect(gw.addr).await.unwrap();
    // :method GET, :scheme http, :path / (HPACK static table), END_STREAM.
    let headers = h2_frame(HEADERS, 0x1, 1, &[0x82, 0x86, 0x84]);
    c.write_all(&[PREFACE, &h2_frame(SETTINGS, 0, 0, &[]), &headers].concat())
        .await
        .unwrap();
    let (out, took) = until_closed(&mut c).await;
    let types = frame_types(&out);
    assert!(!types.contains(&HEADERS), "no answer: {types:?}");
    assert!(types.contains(&GOAWAY), "{types:?}");
    about_one_second(took, "an HTTP/2 header block never ended");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_in_flight_is_not_idle() {
    // The response takes 2 s, twice idle_timeout: it is not cut.
    let (_o, gw) = gateway(
        Script::SlowBody {
            interval: Duration::from_millis(200),
            len: 10,
        },
        "",
    )
    .await;
    let mut c = Client::connect(gw.addr).await;
    let r = c.send(get("/")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.as_ref().map(|b| b.len()), Ok(10));
    // And the connection is still good for another request.
    assert_eq!(c.send(get("/")).await.body.map(|b| b.len()), Ok(10));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_request_body_is_the_clients_408() {
    let (o, gw) = gateway(Script::Echo, "").await;
    // Buffered (small) and streamed (larger than the replay buffer), each
    // twice: two upstream failures would eject the server.
    for (declared, sent) in [(10usize, 3usize), (1_000_000, 100_000)] {
        for _ in 0..2 {
            let mut c = TcpStream::connect(gw.addr).await.unwrap();
            c.write_all(
                format!("POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: {declared}\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .unwrap();
            c.write_all(&vec![b'x'; sent]).await.unwrap();
            let (out, took) = until_closed(&mut c).await;
            let resp = String::from_utf8_lossy(&out);
            assert!(resp.starts_with("HTTP/1.1 408 "), "{declared}: {resp}");
            about_one_second(took, "a stalled body");
            let id = resp
                .lines()
                .find_map(|l| l.strip_prefix("x-request-id: "))
                .unwrap()
                .to_string();
            let line = gw.access(&id).await;
            assert_eq!(line["cause"], "request_timeout", "{line}");
        }
    }
    let s = send(gw.admin, get("/api/state")).await.json();
    assert_eq!(s["upstreams"][0]["servers"][0]["ejected"], false, "{s}");
    assert_eq!(s["incidents_open"].as_array().unwrap().len(), 0, "{s}");
    let m = gw.metrics().await;
    assert!(!m.contains("to=\"ejected\""), "{m}");
    drop(o);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_reading_is_closed_at_send_timeout() {
    const LEN: usize = 64 << 20;
    let (_o, gw) = gateway(Script::Ok("x".repeat(LEN)), "").await;
    let mut c = TcpStream::connect(gw.addr).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    // Reads nothing while the socket buffers fill and the gateway waits.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let start = Instant::now();
    let mut out = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut out)).await;
    assert!(r.is_ok(), "still open");
    assert!(
        out.len() < LEN,
        "closed before the whole response: {} bytes",
        out.len()
    );
    assert!(start.elapsed() < Duration::from_secs(5));

    // HTTP/2: a client that grants no flow-control window (its initial
    // window is 0) gets the response head and then GOAWAY and the close:
    // the socket never blocks, the response never moves.
    let mut c = TcpStream::connect(gw.addr).await.unwrap();
    let no_window = [0, 4, 0, 0, 0, 0]; // SETTINGS_INITIAL_WINDOW_SIZE = 0
    let headers = h2_frame(HEADERS, 0x5, 1, &[0x82, 0x86, 0x84, 0x01, 0x01, b't']);
    c.write_all(&[PREFACE, &h2_frame(SETTINGS, 0, 0, &no_window), &headers].concat())
        .await
        .unwrap();
    let (out, took) = until_closed(&mut c).await;
    let types = frame_types(&out);
    assert!(types.contains(&HEADERS), "the head was sent: {types:?}");
    assert!(!types.contains(&0), "no DATA: {types:?}");
    assert!(types.contains(&GOAWAY), "{types:?}");
    assert!(
        took >= Duration::from_millis(850) && took < Duration::from_secs(4),
        "closed after {took:?}"
    );

    // The gateway serves on.
    assert_eq!(send(gw.addr, get_with("/", "x", "y")).await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_thousand_silent_connections_do_not_lock_out_a_client() {
    let (_o, gw) = gateway(Script::Ok("fine".into()), "").await;
    let mut silent = Vec::new();
    for _ in 0..2000 {
        silent.push(TcpStream::connect(gw.addr).await.unwrap());
    }
    // A normal client is served at once, every time, meanwhile.
    for _ in 0..20 {
        let start = Instant::now();
        assert_eq!(send(gw.addr, get("/")).await.status, 200);
        assert!(start.elapsed() < Duration::from_millis(500));
    }
    // And every silent connection is closed at the deadline.
    let start = Instant::now();
    for mut c in silent {
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut b))
            .await
            .expect("closed")
            .unwrap_or(0);
        assert_eq!(n, 0);
    }
    assert!(start.elapsed() < Duration::from_secs(4));
}

#[tokio::test(flavor = "multi_thread")]
async fn out_of_descriptors_idle_connections_make_room() {
    idle_connections_make_room(Duration::from_millis(300)).await;
}

/// The same with the idle connections parked (idle for over a second):
/// the park closes them.
#[tokio::test(flavor = "multi_thread")]
async fn out_of_descriptors_parked_connections_make_room() {
    idle_connections_make_room(Duration::from_millis(1600)).await;
}

async fn idle_connections_make_room(idle_for: Duration) {
    let o = Origin::start(Script::Ok("fine".into())).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let errors = dir.path().join("errors.log");
    let stderr = dir.path().join("stderr.log");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", refusing_addr().port())
        .parse()
        .unwrap();
    std::fs::write(
        dir.path().join("baton.toml"),
        format!(
            "[server]\nlisten = [\"{addr}\"]\nworkers = 1\n[log]\nerrors = \"{}\"\n[upstreams.app]\nservers = [\"{}\"]\n[[routes]]\nupstream = \"app\"\n",
            errors.display(),
            o.addr
        ),
    )
    .unwrap();
    // 128 descriptors, soft and hard: baton cannot raise it.
    let _baton = peer(
        std::process::Command::new("prlimit")
            .arg("--nofile=128:128")
            .arg(env!("CARGO_BIN_EXE_baton"))
            .args(["serve", "--config"])
            .arg(dir.path().join("baton.toml"))
            .stderr(std::fs::File::create(&stderr).unwrap()),
        addr,
    )
    .await;
    // Keep-alive clients that made one request each and went idle: more
    // than the descriptors baton has.
    let mut idle = Vec::new();
    for _ in 0..150 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        idle.push(c);
    }
    tokio::time::sleep(idle_for).await;
    // A new client is served: idle connections were closed to make room.
    for _ in 0..5 {
        let r = tokio::time::timeout(Duration::from_secs(3), send(addr, get("/")))
            .await
            .expect("served while out of descriptors");
        assert_eq!(r.status, 200);
    }
    // Said, at most once a second, with the limit baton runs with.
    let log = std::fs::read_to_string(&stderr).unwrap();
    let warnings = log.matches("out of file descriptors").count();
    assert!((1..=3).contains(&warnings), "{warnings} warnings: {log}");
    assert!(log.contains(r#""limit":128"#), "{log}");
    drop(idle);
}

/// `baton_connections_parked`'s value.
async fn parked(gw: &Gw) -> u64 {
    let m = gw.metrics().await;
    let line = m
        .lines()
        .find(|l| l.starts_with("baton_connections_parked "))
        .unwrap_or_else(|| panic!("no baton_connections_parked in {m}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// Waits until the gateway closes `c` without sending anything: when,
/// counted from `t0`.
async fn closed_silently(c: &mut TcpStream, t0: Instant) -> Duration {
    let (out, _) = until_closed(c).await;
    assert!(out.is_empty(), "{:?}", String::from_utf8_lossy(&out));
    t0.elapsed()
}

/// Sends one request on `c` and reads its whole response (`fine`).
async fn one_request(c: &mut TcpStream) -> String {
    c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(b"fine") {
        let n = tokio::time::timeout(Duration::from_secs(3), c.read(&mut buf))
            .await
            .expect("a response within 3 s")
            .unwrap();
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(got).unwrap()
}

/// A gateway with `server` as its `[server]` section, and `n` keep-alive
/// connections that made one request each (answered `fine`).
async fn idle_clients(server: &str, n: usize) -> (Origin, Gw, Vec<TcpStream>) {
    let o = Origin::start(Script::Ok("fine".into())).await.unwrap();
    let gw = Gw::start(&format!("[server]\n{server}{}", one_route(o.addr))).await;
    let mut conns = Vec::new();
    for _ in 0..n {
        let mut c = TcpStream::connect(gw.addr).await.unwrap();
        assert!(one_request(&mut c).await.starts_with("HTTP/1.1 200 "));
        conns.push(c);
    }
    (o, gw, conns)
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_keep_alive_connections_are_parked_and_served_again() {
    let (_o, gw, mut conns) =
        idle_clients("header_read_timeout = \"1s\"\nidle_timeout = \"3s\"\n", 10).await;
    let t0 = Instant::now();
    // Busy connections are not parked; idle ones are, after a second.
    assert_eq!(parked(&gw).await, 0);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(parked(&gw).await, 10);

    // A client that closes a parked connection: it is gone from the park.
    drop(conns.remove(9));
    // One that sends part of a head: woken, and the head's deadline runs.
    let begun = Instant::now();
    conns[8]
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(parked(&gw).await, 8);

    // A parked connection's next request is served on it, in a task again.
    for c in &mut conns[..3] {
        let r = one_request(c).await;
        assert!(r.starts_with("HTTP/1.1 200 "), "{r}");
    }
    // Two pipelined in one write: both answered, in order.
    conns[3]
        .write_all(b"GET /1 HTTP/1.1\r\nHost: t\r\n\r\nGET /2 HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.windows(4).filter(|w| w == b"fine").count() < 2 {
        let n = tokio::time::timeout(Duration::from_secs(3), conns[3].read(&mut buf))
            .await
            .expect("both responses within 3 s")
            .unwrap();
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let got = String::from_utf8(got).unwrap();
    assert_eq!(got.matches("HTTP/1.1 200 ").count(), 2, "{got}");
    assert_eq!(parked(&gw).await, 4);

    // The head begun on a parked connection: 408 at header_read_timeout.
    let (out, _) = until_closed(&mut conns[8]).await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 408 "), "{out}");
    about_one_second(begun.elapsed(), "a head begun on a parked connection");

    // The rest stay parked until idle_timeout (3 s) from their last
    // request, then are closed without a word, as a task would close them.
    let at = closed_silently(&mut conns[7], t0).await;
    assert!(
        at >= Duration::from_millis(2800) && at < Duration::from_millis(3800),
        "closed {at:?} after its request"
    );
    // The four served again (at 1.6 s) parked again, and close at their
    // own deadline.
    let at = closed_silently(&mut conns[0], t0).await;
    assert!(
        at >= Duration::from_millis(4400) && at < Duration::from_millis(5500),
        "closed {at:?} after its first request"
    );
    for c in &mut conns[1..] {
        closed_silently(c, t0).await;
    }
    assert_eq!(parked(&gw).await, 0);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopping_gateway_closes_parked_connections_at_once() {
    let (_o, gw, mut conns) = idle_clients("idle_timeout = \"60s\"\n", 1).await;
    let c = &mut conns[0];
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(parked(&gw).await, 1);
    let start = Instant::now();
    gw.stop().await;
    let at = closed_silently(c, start).await;
    assert!(at < Duration::from_secs(1), "{at:?}");
}

/// The allocator commits memory on demand, so what idle connections free
/// leaves the process (`src/main.rs` sets mimalloc's option by its index,
/// which an upgrade of mimalloc could move: this names it).
#[test]
fn the_allocator_commits_memory_on_demand() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
        .arg("--version")
        .env("MIMALLOC_VERBOSE", "1")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("option 'arena_eager_commit': 0"),
        "mimalloc's options: {said}"
    );
}
