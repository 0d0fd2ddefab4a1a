//! Resilience under load: failover, health checks, ejection, backups,
//! hashing and load shedding, against real sockets on loopback.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::support::*;

fn upstream(servers: &[String], extra: &str) -> String {
    let list: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "[upstreams.app]\nservers = [{}]\n{extra}\n[[routes]]\nupstream = \"app\"\n",
        list.join(", ")
    )
}

/// Runs `clients` keep-alive clients sending GETs for `dur`; returns the
/// statuses that were not 200 (with their Proxy-Status) and the count.
async fn load(
    addr: std::net::SocketAddr,
    clients: usize,
    dur: Duration,
) -> (Vec<(u16, String)>, usize) {
    let bad = Arc::new(std::sync::Mutex::new(Vec::new()));
    let total = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (bad, total) = (bad.clone(), total.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(addr).await;
            let end = Instant::now() + dur;
            while Instant::now() < end {
                let r = c.send(get("/")).await;
                total.fetch_add(1, Ordering::Relaxed);
                if r.status != 200 || r.body.is_err() {
                    bad.lock().unwrap().push((
                        r.status,
                        format!("{} id={}", r.header("proxy-status"), r.request_id()),
                    ));
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let b = bad.lock().unwrap().clone();
    (b, total.load(Ordering::Relaxed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_three_killed_under_load_zero_get_errors() {
    let a = Origin::start(Script::Ok("a".into())).await.unwrap();
    let b = Origin::start(Script::Ok("b".into())).await.unwrap();
    let c = Origin::start(Script::Ok("c".into())).await.unwrap();
    let servers = [a.addr.to_string(), b.addr.to_string(), c.addr.to_string()];
    let gw = Gw::start(&upstream(&servers, "retries = 2")).await;
    let addr = gw.addr;
    let run = tokio::spawn(load(addr, 8, Duration::from_millis(1500)));
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(b); // killed: listener and every connection gone
    let (bad, total) = run.await.unwrap();
    assert!(total > 200, "load ran: {total}");
    assert!(
        bad.is_empty(),
        "{} of {total} failed: {:?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
    let m = gw.metrics().await;
    assert!(m.contains(&format!("baton_upstream_health_transitions_total{{upstream=\"app\",server=\"{}\",to=\"ejected\"}} 1", servers[1])), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_under_load_zero_get_errors() {
    let mut origins = Vec::new();
    for _ in 0..3 {
        origins.push(Some(Origin::start(Script::Ok("ok".into())).await.unwrap()));
    }
    let addrs: Vec<std::net::SocketAddr> =
        origins.iter().map(|o| o.as_ref().unwrap().addr).collect();
    let servers: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    let gw = Gw::start(&upstream(&servers, "retries = 2")).await;
    let run = tokio::spawn(load(gw.addr, 8, Duration::from_millis(2600)));
    for i in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        origins[i] = None; // stop
        tokio::time::sleep(Duration::from_millis(400)).await;
        origins[i] = Some(
            Origin::start_on(addrs[i], Script::Ok("ok".into()))
                .await
                .unwrap(),
        ); // back on the same port
    }
    let (bad, total) = run.await.unwrap();
    if let Some((_, ps)) = bad.first() {
        let id = ps.rsplit("id=").next().unwrap();
        let m = gw.metrics().await;
        let m: Vec<&str> = m
            .lines()
            .filter(|l| l.contains("transitions_total{") || l.contains("retries_total{"))
            .collect();
        panic!(
            "{} of {total} failed: {:?}\nlog: {:#?}\n{m:#?}",
            bad.len(),
            &bad[..bad.len().min(3)],
            gw.failures(id).await
        );
    }
}

#[tokio::test]
async fn failing_health_check_keeps_traffic_away() {
    let good = Origin::start(Script::Ok("good".into())).await.unwrap();
    let sick = Origin::start(Script::Status(503, "sick".into()))
        .await
        .unwrap();
    let gw = Gw::start(&upstream(
        &[good.addr.to_string(), sick.addr.to_string()],
        "[upstreams.app.health]\npath = \"/healthz\"\ninterval = \"200ms\"",
    ))
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..10 {
        let r = send(gw.addr, get("/")).await;
        assert_eq!((r.status, r.text()), (200, "good".to_string()));
    }
}

#[tokio::test]
async fn no_usable_server_is_503_with_retry_after_never_502() {
    let sick = Origin::start(Script::Status(500, "sick".into()))
        .await
        .unwrap();
    let gw = Gw::start(&upstream(
        &[sick.addr.to_string()],
        "[upstreams.app.health]\npath = \"/healthz\"\ninterval = \"3s\"",
    ))
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = send(gw.addr, get("/")).await;
    assert_failure(&gw, &r, 503, "destination_unavailable", "no_healthy_server").await;
    let ra: u64 = r.header("retry-after").parse().unwrap();
    assert!(
        (1..=3).contains(&ra),
        "Retry-After {ra} comes from the next check"
    );
}

#[tokio::test]
async fn server_comes_back_after_passing_checks() {
    let dir_addr = refusing_addr();
    let gw = Gw::start(&upstream(
        &[dir_addr.to_string()],
        "[upstreams.app.health]\npath = \"/healthz\"\ninterval = \"100ms\"\nrise = 2",
    ))
    .await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(send(gw.addr, get("/")).await.status, 503);
    let _o = Origin::start_on(dir_addr, Script::Ok("back".into()))
        .await
        .unwrap();
    let mut status = 0;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        status = send(gw.addr, get("/")).await.status;
        if status == 200 {
            break;
        }
    }
    assert_eq!(status, 200);
    let m = gw.metrics().await;
    assert!(m.contains("to=\"up\"} 1"), "{m}");
}

#[tokio::test]
async fn backup_only_when_no_primary_is_usable() {
    let primary = Origin::start(Script::Ok("primary".into())).await.unwrap();
    let backup = Origin::start(Script::Ok("backup".into())).await.unwrap();
    let gw = Gw::start(&upstream(
        &[primary.addr.to_string(), format!("{} backup", backup.addr)],
        "",
    ))
    .await;
    for _ in 0..6 {
        assert_eq!(send(gw.addr, get("/")).await.text(), "primary");
    }
    assert_eq!(backup.hits.load(Ordering::Relaxed), 0);
    drop(primary);
    for _ in 0..6 {
        let r = send(gw.addr, get("/")).await;
        assert_eq!((r.status, r.text()), (200, "backup".to_string()));
    }
}

#[tokio::test]
async fn weighted_round_robin_follows_weights() {
    let a = Origin::start(Script::Ok("a".into())).await.unwrap();
    let b = Origin::start(Script::Ok("b".into())).await.unwrap();
    let gw = Gw::start(&upstream(
        &[format!("{} weight=3", a.addr), b.addr.to_string()],
        "",
    ))
    .await;
    for _ in 0..40 {
        send(gw.addr, get("/")).await;
    }
    assert_eq!(
        (
            a.hits.load(Ordering::Relaxed),
            b.hits.load(Ordering::Relaxed)
        ),
        (30, 10)
    );
}

#[tokio::test]
async fn consistent_hashing_keeps_a_key_on_one_server() {
    let mut origins = Vec::new();
    for n in ["a", "b", "c"] {
        origins.push(Origin::start(Script::Ok(n.into())).await.unwrap());
    }
    let servers: Vec<String> = origins.iter().map(|o| o.addr.to_string()).collect();
    let gw = Gw::start(&upstream(
        &servers,
        "balance = \"hash\"\nhash_key = \"header:X-User\"",
    ))
    .await;
    let user = |u: usize| {
        http::Request::get("/")
            .header("host", "t")
            .header("x-user", format!("user-{u}"))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap()
    };
    let mut first = Vec::new();
    for u in 0..30 {
        first.push(send(gw.addr, user(u)).await.text());
    }
    for (u, expected) in first.iter().enumerate() {
        assert_eq!(
            &send(gw.addr, user(u)).await.text(),
            expected,
            "user-{u} moved"
        );
    }
    let distinct: std::collections::HashSet<_> = first.iter().collect();
    assert_eq!(distinct.len(), 3, "keys spread over all servers: {first:?}");
}

#[tokio::test]
async fn least_request_avoids_the_slow_server() {
    let slow = Origin::start(Script::Delay(Duration::from_millis(400), "slow".into()))
        .await
        .unwrap();
    let fast = Origin::start(Script::Ok("fast".into())).await.unwrap();
    let gw = Gw::start(&upstream(
        &[slow.addr.to_string(), fast.addr.to_string()],
        "balance = \"least_request\"",
    ))
    .await;
    // Four requests hold the slow server busy; the fast one should take
    // nearly everything else.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(tokio::spawn(send(gw.addr, get("/"))));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut fast_answers = 0;
    for _ in 0..20 {
        if send(gw.addr, get("/")).await.text() == "fast" {
            fast_answers += 1;
        }
    }
    assert!(
        fast_answers >= 19,
        "{fast_answers}/20 went to the idle server"
    );
    for h in held {
        h.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_503_with_retry_after_never_502() {
    let slow = Origin::start(Script::Delay(Duration::from_millis(800), "slow".into()))
        .await
        .unwrap();
    let gw = Gw::start(&upstream(
        &[slow.addr.to_string()],
        "max_concurrent = 2\nqueue = 1\nqueue_timeout = \"200ms\"",
    ))
    .await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        tasks.push(tokio::spawn(send(gw.addr, get("/"))));
    }
    let mut ok = 0;
    let mut shed = 0;
    for t in tasks {
        let r = t.await.unwrap();
        match r.status {
            200 => ok += 1,
            503 => {
                assert_eq!(r.proxy_error(), "connection_limit_reached");
                assert_eq!(r.header("retry-after"), "1");
                shed += 1;
            }
            other => panic!("unexpected {other}: {}", r.header("proxy-status")),
        }
    }
    assert_eq!((ok, shed), (2, 6));
    let m = gw.metrics().await;
    assert!(
        m.contains("baton_upstream_shed_total{upstream=\"app\",reason=\"queue_full\"} 5"),
        "{m}"
    );
    assert!(
        m.contains("baton_upstream_shed_total{upstream=\"app\",reason=\"queue_timeout\"} 1"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_zero_failed_requests() {
    let a = Origin::start(Script::Ok("a".into())).await.unwrap();
    let b = Origin::start(Script::Ok("b".into())).await.unwrap();
    let gw = Gw::start(&upstream(&[a.addr.to_string()], "")).await;
    let run = tokio::spawn(load(gw.addr, 8, Duration::from_millis(1500)));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = gw.reload_with(&upstream(&[b.addr.to_string()], "")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["reloaded"], true);
    let (bad, total) = run.await.unwrap();
    assert!(
        bad.is_empty(),
        "{} of {total} failed: {:?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
    assert_eq!(
        send(gw.addr, get("/")).await.text(),
        "b",
        "the new config serves"
    );
    assert!(b.hits.load(Ordering::Relaxed) > 0 && a.hits.load(Ordering::Relaxed) > 0);
}

#[tokio::test]
async fn bad_reload_keeps_the_old_config_serving() {
    let a = Origin::start(Script::Ok("a".into())).await.unwrap();
    let gw = Gw::start(&upstream(&[a.addr.to_string()], "")).await;
    let r = gw.reload_with("[upstreams.app]\nservers = [\"127.0.0.1:1\"]\nconect_timeout = \"1s\"\n[[routes]]\nupstream = \"nope\"\n").await;
    assert_eq!(r.status, 400);
    let err = r.json()["error"].as_str().unwrap().to_string();
    assert!(err.contains("2 problems"), "{err}");
    assert!(
        err.contains("upstreams.app.conect_timeout: unknown field `conect_timeout`"),
        "{err}"
    );
    assert!(err.contains("did you mean `connect_timeout`?"), "{err}");
    assert!(
        err.contains("routes[0].upstream: unknown upstream \"nope\""),
        "{err}"
    );
    let r = send(gw.addr, get("/")).await;
    assert_eq!((r.status, r.text()), (200, "a".to_string()));
}

#[tokio::test]
async fn drained_server_gets_no_new_requests() {
    let a = Origin::start(Script::Ok("a".into())).await.unwrap();
    let b = Origin::start(Script::Ok("b".into())).await.unwrap();
    let gw = Gw::start(&upstream(&[a.addr.to_string(), b.addr.to_string()], "")).await;
    let drain = |m: http::Method| {
        http::Request::builder()
            .method(m)
            .uri(format!("/drain?server={}", a.addr))
            .header("host", "test.local")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap()
    };
    let r = send(gw.admin, drain(http::Method::POST)).await;
    assert_eq!(r.json()["draining"], true);
    for _ in 0..6 {
        assert_eq!(send(gw.addr, get("/")).await.text(), "b");
    }
    let r = send(gw.admin, drain(http::Method::GET)).await;
    assert_eq!(
        (r.json()["inflight"].as_u64(), r.json()["drained"].as_bool()),
        (Some(0), Some(true))
    );
    let undrain = http::Request::post(format!("/undrain?server={}", a.addr))
        .header("host", "test.local")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    assert_eq!(send(gw.admin, undrain).await.json()["draining"], false);
    let mut seen_a = false;
    for _ in 0..4 {
        seen_a |= send(gw.addr, get("/")).await.text() == "a";
    }
    assert!(seen_a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_cuts_no_request() {
    let slow = Origin::start(Script::Delay(Duration::from_millis(600), "done".into()))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = refusing_addr().port();
    let cfg = dir.path().join("baton.toml");
    std::fs::write(&cfg, format!("[server]\nlisten = [\"127.0.0.1:{port}\"]\n[log]\naccess = \"off\"\nerrors = \"stderr\"\n{}", upstream(&[slow.addr.to_string()], ""))).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let mut tasks = Vec::new();
    for _ in 0..10 {
        tasks.push(tokio::spawn(send(addr, get("/"))));
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    // The shell's builtin `kill`: no dependency on procps.
    std::process::Command::new("sh")
        .args(["-c", &format!("kill -TERM {}", child.id().unwrap())])
        .status()
        .unwrap();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(
            (r.status, r.text()),
            (200, "done".to_string()),
            "in-flight request finished"
        );
    }
    let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .expect("baton exits after draining")
        .unwrap();
    assert!(status.success());
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test]
async fn dns_change_is_picked_up_and_last_good_answer_survives_a_resolver_outage() {
    let b = Origin::start_on("127.0.0.2:0".parse().unwrap(), Script::Ok("b".into()))
        .await
        .unwrap();
    let port = b.addr.port();
    let a = Origin::start_on(
        format!("127.0.0.1:{port}").parse().unwrap(),
        Script::Ok("a".into()),
    )
    .await
    .unwrap();
    let dns = Dns::start(vec![("app.test", "127.0.0.1".parse().unwrap())], false).await;
    let body = format!(
        "[resolver]\nnameservers = [\"{}\"]\ntimeout = \"200ms\"\nattempts = 1\n\n{}",
        dns.addr,
        upstream(&[format!("app.test:{port}")], "")
    );
    let gw = Gw::start(&body).await;
    let mut c = Client::connect(gw.addr).await;
    assert_eq!(c.send(get("/")).await.text(), "a");
    dns.set("app.test", "127.0.0.2".parse().unwrap());
    let mut got = String::new();
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        got = c.send(get("/")).await.text();
        if got == "b" {
            break;
        }
    }
    assert_eq!(got, "b", "the new record is used without a restart");
    // The resolver goes silent: the last good answer keeps the site up.
    dns.set_silent(true);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for _ in 0..3 {
        let r = send(gw.addr, get("/")).await;
        assert_eq!((r.status, r.text()), (200, "b".to_string()));
    }
    let m = gw.metrics().await;
    let stale: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("baton_dns_stale_answers_total "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(stale >= 1, "stale answers are counted: {stale}");
    drop(a);
}

fn with_route(servers: &[String], upstream_extra: &str, route_extra: &str) -> String {
    let list: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "[upstreams.app]\nservers = [{}]\n{upstream_extra}\n[[routes]]\nupstream = \"app\"\n{route_extra}\n",
        list.join(", ")
    )
}

#[tokio::test]
async fn per_try_timeout_moves_an_idempotent_request_to_another_server() {
    let stall = Origin::start(Script::Stall).await.unwrap();
    let ok = Origin::start(Script::Ok("ok".into())).await.unwrap();
    let gw = Gw::start(&with_route(
        &[stall.addr.to_string(), ok.addr.to_string()],
        "",
        "per_try_timeout = \"200ms\"",
    ))
    .await;
    let t = Instant::now();
    let r = send(gw.addr, get("/")).await;
    assert_eq!((r.status, r.text()), (200, "ok".to_string()));
    assert!(t.elapsed() < Duration::from_secs(2));
    // It went to the stalled server first (round robin starts there).
    let lines = gw.failures(&r.request_id()).await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["cause"], "response_head_timeout");
    assert_eq!(lines[0]["retry"], "next_server");
    assert_eq!(stall.hits.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn deadline_bounds_the_whole_request() {
    let s1 = Origin::start(Script::Stall).await.unwrap();
    let s2 = Origin::start(Script::Stall).await.unwrap();
    let gw = Gw::start(&with_route(
        &[s1.addr.to_string(), s2.addr.to_string()],
        "",
        "per_try_timeout = \"300ms\"\ndeadline = \"450ms\"",
    ))
    .await;
    let t = Instant::now();
    let r = send(gw.addr, get("/")).await;
    let took = t.elapsed();
    assert_eq!(r.status, 504);
    assert_eq!(r.proxy_error(), "http_response_timeout");
    assert!(
        took >= Duration::from_millis(440) && took < Duration::from_millis(900),
        "{took:?}"
    );
}

#[tokio::test]
async fn exhausted_retry_budget_stops_retries() {
    // The app reads each request and resets: it may have acted on it, so a
    // retry could repeat work, and is budgeted.
    let reset = Origin::start(Script::Reset).await.unwrap();
    let ok = Origin::start(Script::Ok("ok".into())).await.unwrap();
    let gw = Gw::start(&with_route(
        &[reset.addr.to_string(), ok.addr.to_string()],
        "[upstreams.app.outlier]\nconsecutive_failures = 0",
        "retry_budget_percent = 0\nretry_budget_min = 0",
    ))
    .await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(send(gw.addr, get("/")).await.status);
    }
    statuses.sort();
    assert_eq!(
        statuses,
        vec![200, 200, 502, 502],
        "no budget: the reset attempts are not retried"
    );
    let m = gw.metrics().await;
    assert!(
        m.contains("baton_upstream_retries_total{upstream=\"app\",reason=\"budget_exhausted\"} 2"),
        "{m}"
    );
}

/// A server that goes down and up repeatedly is ejected for longer each
/// time, while clients see no errors (there is another server).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flapping_server_is_ejected_for_longer_each_time() {
    let steady = Origin::start(Script::Ok("steady".into())).await.unwrap();
    let flap_addr = refusing_addr();
    let gw = Gw::start(&with_route(
        &[steady.addr.to_string(), flap_addr.to_string()],
        "retries = 1\n[upstreams.app.outlier]\nconsecutive_failures = 2\nbase_ejection = \"200ms\"",
        "",
    ))
    .await;
    let run = tokio::spawn(load(gw.addr, 4, Duration::from_millis(2400)));
    let mut flap = None;
    for i in 0..6 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        flap = if i % 2 == 0 {
            Some(
                Origin::start_on(flap_addr, Script::Ok("flap".into()))
                    .await
                    .unwrap(),
            )
        } else {
            None
        };
    }
    drop(flap);
    let (bad, total) = run.await.unwrap();
    assert!(
        bad.is_empty(),
        "{} of {total} failed: {:?}",
        bad.len(),
        &bad[..bad.len().min(3)]
    );
    let m = gw.metrics().await;
    let ejected: u64 = m
        .lines()
        .find(|l| l.contains("to=\"ejected\"") && l.contains(&flap_addr.to_string()))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0);
    assert!(ejected >= 2, "ejected repeatedly: {m}");
}

#[tokio::test]
async fn tcp_health_check_and_slow_start() {
    let a = Origin::start(Script::Ok("a".into())).await.unwrap();
    let b_addr = refusing_addr();
    let gw = Gw::start(&with_route(
        &[a.addr.to_string(), b_addr.to_string()],
        "[upstreams.app.health]\ntcp = true\ninterval = \"100ms\"\nrise = 1\nslow_start = \"10s\"",
        "",
    ))
    .await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    for _ in 0..6 {
        assert_eq!(
            send(gw.addr, get("/")).await.text(),
            "a",
            "b fails its TCP check"
        );
    }
    let b = Origin::start_on(b_addr, Script::Ok("b".into()))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    // Just back: b gets a small share (slow start), not half.
    let mut to_b = 0;
    for _ in 0..40 {
        if send(gw.addr, get("/")).await.text() == "b" {
            to_b += 1;
        }
    }
    assert!(
        (1..=10).contains(&to_b),
        "{to_b}/40 to the returning server"
    );
    drop(b);
}

/// `baton reload` as an nginx user reaches for it: the file is checked
/// first, then the running gateway loads it (asked through its admin
/// address, or by SIGHUP when it has none); a bad file is not sent and
/// the running config keeps serving.
#[tokio::test(flavor = "multi_thread")]
async fn baton_reload_checks_the_file_then_reloads_the_running_gateway() {
    let a = Origin::start(Script::Ok("a".into())).await.unwrap();
    let b = Origin::start(Script::Ok("b".into())).await.unwrap();
    let reload = |cfg: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
            .args(["reload", "--config"])
            .arg(cfg)
            .output()
            .unwrap()
    };
    let route = |o: &Origin| {
        format!(
            "[upstreams.app]\nservers = [\"{}\"]\n[[routes]]\nupstream = \"app\"\n",
            o.addr
        )
    };
    for admin in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("baton.toml");
        let server = if admin {
            format!("admin = \"127.0.0.1:{}\"\n", refusing_addr().port())
        } else {
            String::new()
        };
        let log = dir.path().join("stderr.log");
        let (addr, _baton) = serve_child(
            dir.path(),
            &format!("{server}{}", route(&a)),
            std::fs::File::create(&log).unwrap().into(),
        )
        .await;
        assert_eq!(send(addr, get("/")).await.text(), "a");
        // The file with another upstream address (the harness's own
        // sections after it kept).
        let was = std::fs::read_to_string(&cfg).unwrap();
        let head = &was[..was.find("[upstreams.app]").unwrap()];
        let tail = &was[was.find("\n[incidents]").unwrap_or(was.len())..];
        std::fs::write(&cfg, format!("{head}{}{tail}", route(&b))).unwrap();
        let out = reload(&cfg);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "admin {admin}: {stdout}");
        if admin {
            assert_eq!(stdout, "reloaded\n");
        } else {
            assert!(stdout.starts_with("sent SIGHUP to baton (pid "), "{stdout}");
        }
        let mut got = String::new();
        for _ in 0..50 {
            got = send(addr, get("/")).await.text();
            if got == "b" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(got, "b", "admin {admin}: the new config serves");
        // A bad file: not sent; the running config keeps serving.
        std::fs::write(
            &cfg,
            format!("{head}[upstreams.app]\nservers = [\"nowhere\"]\n{tail}"),
        )
        .unwrap();
        let out = reload(&cfg);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("upstreams.app.servers: \"nowhere\" has no port"),
            "{stderr}"
        );
        assert!(stderr.contains("baton reload: not sent"), "{stderr}");
        assert_eq!(send(addr, get("/")).await.text(), "b");
        // baton's own lines say it in words, not Rust's debug text.
        let log = std::fs::read_to_string(&log).unwrap();
        assert!(log.contains("config reloaded"), "{log}");
        for bad in ["Some(", "None", "\"[]\""] {
            assert!(!log.contains(bad), "{bad} in {log}");
        }
        // One shape, the failure lines': {"time","level","msg",...}.
        for line in log.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert!(
                v["time"].is_string() && v["level"].is_string() && v["msg"].is_string(),
                "{line}"
            );
            assert!(
                v.get("fields").is_none() && v.get("timestamp").is_none(),
                "{line}"
            );
        }
    }
    // No gateway runs with this file.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("baton.toml");
    std::fs::write(
        &cfg,
        format!("[server]\nlisten = [\"127.0.0.1:1\"]\n{}", route(&a)),
    )
    .unwrap();
    let out = reload(&cfg);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no running `baton serve` uses"));
}
