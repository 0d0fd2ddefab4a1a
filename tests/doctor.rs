//! `baton doctor`: each failure gets the gateway's own verdict.

use crate::support::*;

fn doctor(target: &str, extra: &[&str]) -> (i32, serde_json::Value) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["doctor", "--json", "--timeout", "500ms"])
        .args(if extra.is_empty() {
            &["--idle-wait", "0s"][..]
        } else {
            extra
        })
        .arg(target)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stdout)));
    (out.status.code().unwrap(), v)
}

fn verdict(v: &serde_json::Value) -> (String, String) {
    (
        v["verdict"]["cause"].as_str().unwrap_or("none").to_string(),
        v["verdict"]["proxy_status"]
            .as_str()
            .unwrap_or("none")
            .to_string(),
    )
}

#[tokio::test]
async fn healthy_origin_is_no_problem() {
    let o = Origin::start(Script::Ok("hi".into())).await.unwrap();
    let (code, v) =
        tokio::task::spawn_blocking(move || doctor(&format!("http://{}/x", o.addr), &[]))
            .await
            .unwrap();
    assert_eq!(code, 0, "{v}");
    let names: Vec<&str> = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    // HTTP expected (http://): asked first, no FastCGI record sent.
    assert_eq!(names, ["connect", "http"]);
    assert!(
        v["steps"][1]["detail"]
            .as_str()
            .unwrap()
            .starts_with("HTTP 200"),
        "{v}"
    );
    assert_eq!(v["verdict"]["summary"], "no problem found (HTTP 200)");
}

#[tokio::test]
async fn each_failure_gets_the_gateways_cause() {
    let stall = Origin::start(Script::Stall).await.unwrap();
    let garbage = Origin::start(Script::Garbage).await.unwrap();
    let h2 = Origin::start(Script::Http2Only).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cases = vec![
        (
            refusing_addr().to_string(),
            "connection_refused",
            "connection_refused",
        ),
        (
            format!("unix:{}/none.sock", dir.path().display()),
            "socket_not_found",
            "destination_unavailable",
        ),
        (
            stall.addr.to_string(),
            "response_head_timeout",
            "http_response_timeout",
        ),
        (
            h2.addr.to_string(),
            "upstream_speaks_http2",
            "http_protocol_error",
        ),
        (
            garbage.addr.to_string(),
            "http_protocol_error",
            "http_protocol_error",
        ),
    ];
    for (target, cause, token) in cases {
        let (code, v) = tokio::task::spawn_blocking(move || doctor(&target, &[]))
            .await
            .unwrap();
        assert_eq!(code, 1, "{v}");
        assert_eq!(verdict(&v), (cause.to_string(), token.to_string()), "{v}");
        assert!(!v["verdict"]["fix"].as_str().unwrap().is_empty());
        assert_eq!(v["steps"].as_array().unwrap().last().unwrap()["ok"], false);
    }
}

#[tokio::test]
async fn a_proxys_502_is_attributed_to_the_hop_that_made_it() {
    // baton in front of a refused upstream: its Proxy-Status names the cause.
    let gw = Gw::start(&format!(
        "[upstreams.app]\nservers = [\"{}\"]\n[[routes]]\nupstream = \"app\"\n",
        refusing_addr()
    ))
    .await;
    let addr = gw.addr;
    let (code, v) = tokio::task::spawn_blocking(move || doctor(&format!("http://{addr}/"), &[]))
        .await
        .unwrap();
    assert_eq!(code, 1);
    assert_eq!(
        verdict(&v),
        ("connection_refused".into(), "connection_refused".into()),
        "{v}"
    );
    assert!(
        doctor_step(&v, "http")["detail"]
            .as_str()
            .unwrap()
            .contains("proxy-status: baton; error=connection_refused")
    );
    // Real nginx in front of a dead upstream: its own 502 page, no Proxy-Status.
    let dir = tempfile::tempdir().unwrap();
    let port = refusing_addr().port();
    let d = dir.path().display();
    let conf = dir.path().join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nmaster_process off;\npid {d}/n.pid;\nerror_log {d}/error.log;\nevents {{}}\nhttp {{ access_log off; client_body_temp_path {d}/b; proxy_temp_path {d}/p; fastcgi_temp_path {d}/f; uwsgi_temp_path {d}/u; scgi_temp_path {d}/s;\n  server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://{}; }} }} }}\n",
            refusing_addr()
        ),
    )
    .unwrap();
    let _nginx = Reap(Some(
        std::process::Command::new("nginx")
            .arg("-c")
            .arg(&conf)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    ));
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (code, v) =
        tokio::task::spawn_blocking(move || doctor(&format!("http://127.0.0.1:{port}/"), &[]))
            .await
            .unwrap();
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["verdict"]["cause"], serde_json::Value::Null);
    let summary = v["verdict"]["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("nginx's own 502 error page"),
        "{summary}"
    );
}

#[tokio::test]
async fn php_fpm_socket_is_recognised_as_fastcgi() {
    let fpm = crate::support::php::start("").await;
    let sock = format!("unix:{}", fpm.sock.display());
    let (code, v) = tokio::task::spawn_blocking(move || doctor(&sock, &[]))
        .await
        .unwrap();
    assert_eq!(code, 0, "{v}");
    let sniff = &v["steps"][2];
    assert_eq!(sniff["name"], "sniff");
    assert!(
        sniff["detail"].as_str().unwrap().starts_with("FastCGI"),
        "{v}"
    );
    assert!(
        v["verdict"]["summary"]
            .as_str()
            .unwrap()
            .contains("protocol = \"fastcgi\""),
        "{v}"
    );
    // No ping.path /ping in this pool: said so, with the setting to add.
    let ping = &v["steps"][3];
    assert_eq!(ping["name"], "fastcgi-ping");
    assert_eq!(ping["ok"], false);
    assert!(
        ping["detail"]
            .as_str()
            .unwrap()
            .contains("the pool has no ping.path /ping"),
        "{v}"
    );
    // Its real ping.path answers "pong" through baton's FastCGI exchange.
    let sock = format!("unix:{}", fpm.sock.display());
    let (code, v) =
        tokio::task::spawn_blocking(move || doctor(&sock, &["--fcgi-ping", "/fpm-ping"]))
            .await
            .unwrap();
    assert_eq!(code, 0);
    assert_eq!(
        v["steps"][3]["detail"], "GET /fpm-ping: 200 \"pong\"",
        "{v}"
    );
    // An HTTP origin sniffs as HTTP/1.x.
    let o = Origin::start(Script::Ok("hi".into())).await.unwrap();
    let (_, v) = tokio::task::spawn_blocking(move || doctor(&o.addr.to_string(), &[]))
        .await
        .unwrap();
    assert_eq!(v["steps"][1]["detail"], "HTTP/1.x");
}

#[tokio::test]
async fn idle_keepalive_close_is_measured() {
    // The origin closes a kept-alive connection idle for 1.5 s (like
    // gunicorn's 2 s): the proxy in front must close sooner.
    let o = Origin::start(Script::IdleClose(std::time::Duration::from_millis(1500)))
        .await
        .unwrap();
    let (code, v) =
        tokio::task::spawn_blocking(move || doctor(&o.addr.to_string(), &["--idle-wait", "4s"]))
            .await
            .unwrap();
    assert_eq!(code, 0, "{v}");
    let step = &v["steps"][3];
    assert_eq!(step["name"], "keepalive");
    let d = step["detail"].as_str().unwrap();
    assert!(
        d.starts_with("the server closed an idle kept-alive connection after 1.5s")
            || d.starts_with("the server closed an idle kept-alive connection after 1.6s"),
        "{d}"
    );
}

#[tokio::test]
async fn repeat_summarises_what_varied() {
    let o = Origin::start(Script::Ok("hi".into())).await.unwrap();
    let (code, v) = tokio::task::spawn_blocking(move || {
        doctor(&o.addr.to_string(), &["--repeat", "3", "--idle-wait", "0s"])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["runs"].as_array().unwrap().len(), 3);
    assert_eq!(v["summary"]["verdicts"], serde_json::json!({"ok": 3}));
    assert_eq!(v["summary"]["steps"]["http"]["runs"], 3);
}

#[tokio::test]
async fn config_mode_checks_every_server_against_its_settings() {
    let fpm = crate::support::php::start("").await;
    let idle = Origin::start(Script::IdleClose(std::time::Duration::from_millis(1500)))
        .await
        .unwrap();
    let cfg = fpm.dir.path().join("doctor.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}[upstreams.wrong]\nservers = [\"unix:{}\"]\n[upstreams.app]\nservers = [\"{}\"]\nkeepalive_timeout = \"4s\"\n",
            fpm.upstream(""),
            fpm.sock.display(),
            idle.addr
        ),
    )
    .unwrap();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
            .args([
                "doctor",
                "--json",
                "--timeout",
                "500ms",
                "--idle-wait",
                "3s",
                "--config",
            ])
            .arg(&cfg)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let by = |name: &str| {
        v["servers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["upstream"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(by("php")["findings"], serde_json::json!([]));
    let wrong = by("wrong")["findings"][0].as_str().unwrap().to_string();
    assert!(
        wrong.contains("speaks FastCGI but the upstream is HTTP: add protocol = \"fastcgi\""),
        "{wrong}"
    );
    let app = by("app")["findings"][0].as_str().unwrap().to_string();
    assert!(
        app.starts_with("upstreams.app: keepalive_timeout 4s is not shorter than the 1."),
        "{app}"
    );
}

#[tokio::test]
async fn an_app_on_127_0_0_1_only_is_caught_for_its_ipv6_address() {
    // "localhost" has 127.0.0.1 and ::1 (from /etc/hosts, no query off the
    // machine); the origin listens on 127.0.0.1 only.
    let o = Origin::start(Script::Ok("hi".into())).await.unwrap();
    let port = o.addr.port();
    let (code, v) = tokio::task::spawn_blocking(move || doctor(&format!("localhost:{port}"), &[]))
        .await
        .unwrap();
    let step = doctor_step(&v, "addresses");
    assert_eq!(step["ok"], false);
    // One family works: a warning with its consequence, not a failure
    // followed by "no problem found".
    assert_eq!(step["warn"], true);
    let d = step["detail"].as_str().unwrap();
    assert!(
        d.starts_with(&format!(
            "127.0.0.1:{port} ok; [::1]:{port} connection_refused"
        )),
        "{d}"
    );
    assert!(d.contains("a client that tries only the first"), "{d}");
    // Steps and verdict agree: it works, with that warning.
    let summary = v["verdict"]["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("no problem found (HTTP 200), with warnings (")
            && summary.contains("addresses"),
        "{summary}"
    );
    assert_eq!(code, 0, "{v}");
    for s in v["steps"].as_array().unwrap() {
        assert!(
            s["ok"] == true || s["warn"] == true,
            "a failed step under a clean verdict: {v}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn dns_step_compares_the_direct_answer_with_the_system_resolver() {
    // The nameserver asked is a loopback one; "localhost" is answered by
    // /etc/hosts for the system resolver (no query off the machine).
    let dns = Dns::start(vec![], false).await;
    let o = Origin::start(Script::Ok("hi".into())).await.unwrap();
    let (port, ns) = (o.addr.port(), dns.addr.to_string());
    let (_, v) = tokio::task::spawn_blocking(move || {
        doctor(
            &format!("localhost:{port}"),
            &["--idle-wait", "0s", "--nameserver", &ns],
        )
    })
    .await
    .unwrap();
    let step = v["steps"][0].clone();
    assert_eq!(step["name"], "dns", "{v}");
    let d = step["detail"].as_str().unwrap();
    assert!(d.contains("; TTL "), "{d}");
    assert!(
        d.contains(&format!(" (asked {}); system resolver: ", dns.addr)),
        "{d}"
    );
    // Whatever /etc/hosts says, the step says whether the two agree.
    let system: Vec<std::net::IpAddr> = std::net::ToSocketAddrs::to_socket_addrs(&("localhost", 0))
        .unwrap()
        .map(|a| a.ip())
        .collect();
    let both = system.iter().any(|i| i.is_ipv4()) && system.iter().any(|i| i.is_ipv6());
    assert_eq!(step["ok"], both, "{d}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["doctor", "--nameserver", "not-an-ip", "localhost:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "baton doctor: --nameserver not-an-ip: write an IP address, e.g. 127.0.0.53 or 10.0.0.2:53\n"
    );
}

#[test]
fn colour_on_a_terminal_only_and_never_with_no_color() {
    // `script` gives baton a pseudo-terminal, as a person's shell would.
    let run = |no_color: bool| {
        let mut c = std::process::Command::new("script");
        c.args(["-qec"])
            .arg(format!(
                "{} doctor 127.0.0.1:1",
                env!("CARGO_BIN_EXE_baton")
            ))
            .arg("/dev/null");
        if no_color {
            c.env("NO_COLOR", "1");
        } else {
            c.env_remove("NO_COLOR");
        }
        String::from_utf8(c.output().expect("script (util-linux)").stdout).unwrap()
    };
    let tty = run(false);
    assert!(tty.contains("\x1b[1;31mFAIL\x1b[0m connect"), "{tty:?}");
    assert!(tty.contains("\x1b[1mverdict:\x1b[0m"), "{tty:?}");
    let plain = run(true);
    assert!(!plain.contains('\x1b'), "{plain:?}");
    assert!(plain.contains("  FAIL connect "), "{plain:?}");
}

/// An HTTP target is asked with HTTP first: the server sees one GET and
/// no FastCGI record (which nginx logs as a binary 400 line).
#[tokio::test(flavor = "multi_thread")]
async fn an_http_target_gets_http_first_and_no_fastcgi_record() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Vec<u8>>::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                log.lock().unwrap().push(buf[..n].to_vec());
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    let (code, v) = tokio::task::spawn_blocking(move || {
        doctor(&format!("http://{addr}/"), &["--idle-wait", "0s"])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{v}");
    // The connect step's own connection sends nothing.
    let sent: Vec<Vec<u8>> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|b| !b.is_empty())
        .cloned()
        .collect();
    assert_eq!(sent.len(), 1, "one request: {sent:?}");
    assert!(sent[0].starts_with(b"GET / HTTP/1.1\r\n"), "{sent:?}");
}
