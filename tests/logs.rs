//! `baton logs`: fixture lines in every supported format, and logs written
//! in the test by real nginx, HAProxy, Apache and baton in front of failing
//! origins.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::{Gw, Origin, Reap, Script, real_nginx, real_proxy, refusing_addr};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/logs");

/// Runs `baton logs ARGS --json`; its exit code and document.
fn logs(args: &[&str]) -> (i32, Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_baton"))
        .arg("logs")
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), v)
}

fn text(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_baton"))
        .arg("logs")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
    )
}

fn fixture(name: &str) -> String {
    format!("{FIXTURES}/{name}")
}

/// (file name, line) -> (source, cause, joined to (file, line)).
type Table = BTreeMap<(String, u64), (String, Option<String>, Option<(String, u64)>)>;

fn table(v: &Value) -> Table {
    v["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let file = Path::new(l["file"].as_str().unwrap())
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let joined = l.get("joined_to").map(|j| {
                (
                    Path::new(j["file"].as_str().unwrap())
                        .file_name()
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                    j["line"].as_u64().unwrap(),
                )
            });
            (
                (file, l["line"].as_u64().unwrap()),
                (
                    l["source"].as_str().unwrap().to_string(),
                    l["cause"].as_str().map(str::to_string),
                    joined,
                ),
            )
        })
        .collect()
}

/// file, line, source, cause, joined to (file, line).
type Want<'a> = (
    &'a str,
    u64,
    &'a str,
    Option<&'a str>,
    Option<(&'a str, u64)>,
);

#[test]
fn every_fixture_line_is_classified_by_its_identifiers() {
    let names = [
        "nginx-error.log",
        "nginx-access.log",
        "apache-error.log",
        "haproxy.log",
        "envoy.log",
        "caddy.log",
        "traefik.log",
        "php8.2-fpm.log",
        "gunicorn.log",
        "other.log",
    ];
    let files: Vec<String> = names.iter().map(|n| fixture(n)).collect();
    let args: Vec<&str> = files.iter().map(String::as_str).collect();
    let (code, v) = logs(&args);
    assert_eq!(code, 1, "failures found");
    #[rustfmt::skip]
    let expected: &[Want] = &[
        ("apache-error.log", 1, "apache", Some("connection_refused"), None),
        ("apache-error.log", 2, "apache", None, Some(("apache-error.log", 1))),
        ("apache-error.log", 4, "apache", Some("no_healthy_server"), None),
        ("apache-error.log", 5, "apache", Some("connection_terminated"), None),
        ("apache-error.log", 6, "apache", Some("connection_terminated"), Some(("apache-error.log", 5))),
        ("apache-error.log", 7, "apache", Some("response_head_timeout"), None),
        ("apache-error.log", 8, "apache", Some("fastcgi_no_response"), None),
        ("apache-error.log", 9, "apache", Some("fastcgi_no_response"), Some(("apache-error.log", 8))),
        ("apache-error.log", 10, "apache", Some("socket_not_found"), None),
        ("apache-error.log", 11, "apache", Some("script_not_found"), None),
        ("apache-error.log", 14, "apache", Some("dns_error"), None),
        ("apache-error.log", 15, "apache", Some("response_header_too_large"), None),
        // AH01106 "bad HTTP/1.1 header returned by" after the line that
        // says why.
        ("apache-error.log", 16, "apache", Some("http_protocol_error"), Some(("apache-error.log", 15))),
        ("apache-error.log", 17, "apache", Some("http_protocol_error"), None),
        ("caddy.log", 2, "caddy", Some("connection_refused"), None),
        ("caddy.log", 3, "caddy", Some("response_head_timeout"), None),
        ("caddy.log", 4, "caddy", Some("dns_error"), None),
        ("caddy.log", 5, "caddy", Some("response_incomplete"), None),
        ("caddy.log", 6, "caddy", Some("upstream_speaks_http2"), None),
        ("envoy.log", 1, "envoy", Some("connection_refused"), None),
        ("envoy.log", 2, "envoy", Some("connection_terminated"), None),
        ("envoy.log", 3, "envoy", Some("response_head_timeout"), None),
        ("envoy.log", 4, "envoy", Some("no_healthy_server"), None),
        ("envoy.log", 6, "envoy", Some("http_protocol_error"), None),
        ("gunicorn.log", 3, "gunicorn", Some("connection_terminated"), None),
        ("gunicorn.log", 4, "gunicorn", Some("connection_terminated"), None),
        ("haproxy.log", 1, "haproxy", Some("connection_terminated"), None),
        ("haproxy.log", 2, "haproxy", Some("connection_refused"), None),
        ("haproxy.log", 3, "haproxy", Some("response_head_timeout"), None),
        ("haproxy.log", 4, "haproxy", Some("no_healthy_server"), None),
        // The application's own 500 (termination state ----).
        ("haproxy.log", 5, "haproxy", None, None),
        ("haproxy.log", 6, "haproxy", Some("http_protocol_error"), None),
        ("nginx-access.log", 1, "nginx", None, Some(("nginx-error.log", 2))),
        ("nginx-access.log", 3, "nginx", None, Some(("nginx-error.log", 8))),
        // A 504 with no error-log line: counted, unclassified.
        ("nginx-access.log", 4, "nginx", None, None),
        ("nginx-error.log", 2, "nginx", Some("connection_refused"), None),
        ("nginx-error.log", 3, "nginx", Some("socket_permission_denied"), None),
        ("nginx-error.log", 4, "nginx", Some("socket_not_found"), None),
        ("nginx-error.log", 5, "nginx", Some("upstream_busy"), None),
        // musl's "Operation timed out": the errno number decides.
        ("nginx-error.log", 6, "nginx", Some("connection_timeout"), None),
        ("nginx-error.log", 7, "nginx", Some("response_head_timeout"), None),
        ("nginx-error.log", 8, "nginx", Some("connection_terminated"), None),
        ("nginx-error.log", 9, "nginx", Some("response_incomplete"), None),
        // "(104: Unknown error)": no strerror text at all.
        ("nginx-error.log", 10, "nginx", Some("connection_terminated"), None),
        ("nginx-error.log", 11, "nginx", Some("response_incomplete"), None),
        ("nginx-error.log", 12, "nginx", Some("response_header_too_large"), None),
        ("nginx-error.log", 13, "nginx", Some("http_protocol_error"), None),
        ("nginx-error.log", 14, "nginx", Some("no_healthy_server"), None),
        ("nginx-error.log", 16, "nginx", Some("tls_alert_received"), None),
        ("nginx-error.log", 17, "nginx", Some("tls_protocol_error"), None),
        ("nginx-error.log", 18, "nginx", Some("tls_certificate_error"), None),
        ("nginx-error.log", 19, "nginx", Some("fastcgi_no_response"), None),
        ("nginx-error.log", 20, "nginx", Some("script_not_found"), None),
        ("nginx-error.log", 21, "nginx", Some("dns_error"), None),
        ("nginx-error.log", 22, "nginx", Some("dns_timeout"), None),
        ("nginx-error.log", 23, "nginx", Some("connect_error"), None),
        ("nginx-error.log", 24, "nginx", Some("request_body_too_large"), None),
        ("nginx-error.log", 26, "nginx", Some("upstream_speaks_http2"), None),
        ("nginx-error.log", 27, "nginx", Some("file_not_found"), None),
        ("nginx-error.log", 28, "nginx", Some("connection_terminated"), None),
        // An error line in words no rule knows: counted and shown.
        ("nginx-error.log", 29, "nginx", None, None),
        // A Rust client's "os error 104" in a format baton does not know.
        ("other.log", 1, "other", Some("connection_terminated"), None),
        ("php8.2-fpm.log", 3, "php-fpm", Some("upstream_busy"), None),
        ("php8.2-fpm.log", 4, "php-fpm", Some("fastcgi_no_response"), None),
        ("php8.2-fpm.log", 5, "php-fpm", Some("fastcgi_no_response"), None),
        ("php8.2-fpm.log", 6, "php-fpm", Some("fastcgi_no_response"), None),
        // A PHP fatal error: the application's own failure (no gateway cause).
        ("php8.2-fpm.log", 8, "php-fpm", None, None),
        ("traefik.log", 1, "traefik", Some("connection_refused"), None),
        ("traefik.log", 2, "traefik", Some("connection_terminated"), None),
        ("traefik.log", 3, "traefik", Some("tls_certificate_error"), None),
        ("traefik.log", 4, "traefik", None, Some(("traefik.log", 1))),
        ("traefik.log", 5, "traefik", None, Some(("traefik.log", 2))),
    ];
    let want: Table = expected
        .iter()
        .map(|(f, l, s, c, j)| {
            (
                (f.to_string(), *l),
                (
                    s.to_string(),
                    c.map(str::to_string),
                    j.map(|(f, l)| (f.to_string(), l)),
                ),
            )
        })
        .collect();
    let got = table(&v);
    for (k, w) in &want {
        assert_eq!(got.get(k), Some(w), "{k:?}");
    }
    assert_eq!(got.len(), want.len(), "no other failure lines: {got:#?}");
    // The unknown nginx message and the orphan 504.
    assert_eq!(v["unclassified"], 2);
    // "just a line of text"; the kernel's OOM line is an event.
    assert_eq!(v["unrecognised"], 1);
    assert_eq!(v["unrecognised_samples"][0]["line"], 3);
    let events: Vec<(String, u64, String)> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["source"].as_str().unwrap().to_string(),
                e["line"].as_u64().unwrap(),
                e["event"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for e in [
        ("nginx", 1, "reload"),
        ("nginx", 15, "server_down"),
        ("apache", 3, "server_down"),
        ("apache", 12, "reload"),
        ("haproxy", 8, "server_down"),
        ("gunicorn", 5, "worker_start"),
        ("kernel", 2, "oom_kill"),
        ("php-fpm", 7, "reload"),
        ("php-fpm", 2, "start"),
        ("php-fpm", 12, "stop"),
    ] {
        assert!(
            events.contains(&(e.0.to_string(), e.1, e.2.to_string())),
            "{e:?} in {events:?}"
        );
    }
    // One event a php-fpm start and stop ("fpm is running" and
    // "Terminating" are the same start and stop).
    for (line, what) in [(1, "start"), (11, "stop")] {
        assert!(
            !events.contains(&("php-fpm".to_string(), line, what.to_string())),
            "php-fpm line {line} counted as a second {what}: {events:?}"
        );
    }
    // Contract fields of one line.
    let l = v["lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["file"].as_str().unwrap().ends_with("nginx-error.log") && l["line"] == 2)
        .unwrap();
    assert_eq!(l["proxy_status"], "connection_refused");
    assert_eq!(l["status"], 502, "taken from the joined access line");
    assert_eq!(l["upstream"], "[::1]:3000");
    assert_eq!(l["path"], "/api/orders");
    assert_eq!(l["time"], "2026-11-20T10:00:01Z");
    assert!(l["fix"].as_str().unwrap().contains("ss -ltnp"));
}

#[test]
fn text_summary_ranks_causes_with_rate_evidence_and_the_peers_fix() {
    let (code, out) = text(&[&fixture("nginx-error.log"), &fixture("nginx-access.log")]);
    assert_eq!(code, 1);
    assert!(!out.contains('\x1b'), "no colour when piped:\n{out}");
    assert!(out.starts_with("baton logs: 33 lines read from "), "{out}");
    assert!(out.contains(": 27 failures (2 unclassified), 0 lines in no known format\n"));
    assert!(out.contains(
        "from 2026-11-20 10:00:01 to 2026-11-20 10:00:40 (UTC, or as written); chart: one column = 1 s"
    ));
    // Ranked by count: three connection_terminated lines come first.
    let first = out.lines().nth(3).unwrap();
    assert_eq!(
        first.trim(),
        "3  connection_terminated  The site's application stopped answering  Proxy-Status connection_terminated"
    );
    assert!(out.contains("        upstreams: 127.0.0.1:3000 (3)\n"));
    assert!(out.contains("        urls: /api/orders (2), /upload (1)\n"));
    assert!(out.contains("        ······█·█·················█·············\n"));
    // nginx's words for the fix, not baton's keys.
    assert!(out.contains("Raise proxy_buffer_size together with proxy_buffers"));
    assert!(out.contains("what changed (2 events):\n  2026-11-20 09:58:02 nginx reload"));
}

#[test]
fn escalation_report_says_when_how_often_what_changed_and_what_to_ask() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.md");
    let out = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["logs", "--report"])
        .arg(&report)
        .arg(fixture("gunicorn.log"))
        .arg(fixture("nginx-error.log"))
        .arg(fixture("other.log"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let md = std::fs::read_to_string(&report).unwrap();
    assert!(
        md.starts_with("# Incident report: The site's application stopped answering\n"),
        "{md}"
    );
    for needle in [
        "- **Started:** 2026-11-20 10:00:01 (first failure line)",
        "- **Last seen:** 2026-11-20 10:08:00 (8 min after the start)",
        "- **How often:** 29 failures (1 unclassified); per cause below.",
        "- **Most likely cause:** `connection_terminated` (HTTP 502, Proxy-Status `connection_terminated`)",
        "| `connection_terminated` | 6 |",
        "## What changed around then",
        "gunicorn **worker_start** (`",
        "kernel **oom_kill**",
        "## What to try\n\n1. **`connection_terminated`**: ",
        "## For your hosting provider",
        "- Time window: 2026-11-20 10:00:01 to 2026-11-20 10:08:00.",
        "was the backend restarted, killed (OOM) or overloaded in this window",
        "## Lines baton could not classify",
        "the frobnicator reported a wobble",
    ] {
        assert!(md.contains(needle), "missing {needle:?} in:\n{md}");
    }
}

#[test]
fn stdin_and_gzip_inputs() {
    use std::io::Write;
    let raw = std::fs::read(fixture("haproxy.log")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["logs", "-", "--json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&raw).unwrap();
    let out = child.wait_with_output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["lines"].as_array().unwrap().len(), 6);
    assert_eq!(v["lines"][0]["cause"], "connection_terminated");
    assert_eq!(v["lines"][0]["marker"], "SH--");
    assert_eq!(v["lines"][0]["upstream"], "app/app1");

    let dir = tempfile::tempdir().unwrap();
    let gz = dir.path().join("error.log.2.gz");
    let mut enc = flate2::write::GzEncoder::new(
        std::fs::File::create(&gz).unwrap(),
        flate2::Compression::default(),
    );
    enc.write_all(&std::fs::read(fixture("nginx-error.log")).unwrap())
        .unwrap();
    enc.finish().unwrap();
    let (code, v) = logs(&[gz.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert_eq!(v["lines_read"], 29);
    assert_eq!(v["failures"], 26);

    let (code, v) = logs(&[dir.path().join("missing.log").to_str().unwrap()]);
    assert_eq!(code, 2, "{v}");
    assert!(
        v["error"].as_str().unwrap().starts_with(&format!(
            "cannot read {}",
            dir.path().join("missing.log").display()
        )),
        "{v}"
    );
}

/// A failure line in words no rule knows, that still names its failure
/// ("reset", "refused"): the closest cause, said to be a guess.
#[test]
fn unknown_wording_gets_the_closest_cause_marked_as_guessed() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("error.log");
    std::fs::write(
        &f,
        "2026/11/20 10:06:23 [error] 12#12: *214 upstream connection was reset unexpectedly, client: 203.0.113.63, server: example.com, request: \"GET / HTTP/1.1\", upstream: \"http://127.0.0.1:3000/\", host: \"example.com\"\n\
         2026/11/20 10:06:24 [error] 12#12: *215 connect() failed (111: Connection refused) while connecting to upstream, client: 203.0.113.64, server: example.com, request: \"GET / HTTP/1.1\", upstream: \"http://127.0.0.1:3000/\", host: \"example.com\"\n",
    )
    .unwrap();
    let (code, v) = logs(&[f.to_str().unwrap()]);
    assert_eq!(code, 1);
    let lines = v["lines"].as_array().unwrap();
    assert_eq!(lines[0]["cause"], "connection_terminated", "{v:#}");
    assert_eq!(lines[0]["guessed"], true);
    assert_eq!(lines[1]["cause"], "connection_refused");
    assert!(lines[1].get("guessed").is_none(), "errno 111 is a marker");
    let (_, out) = text(&[f.to_str().unwrap()]);
    assert!(
        out.contains("1 of 1 read from the line's words, no known marker: lower confidence"),
        "{out}"
    );
}

#[test]
fn no_failures_exit_zero() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("access.log");
    std::fs::write(
        &f,
        "127.0.0.1 - - [20/Nov/2026:10:00:01 +0000] \"GET / HTTP/1.1\" 200 612 \"-\" \"curl/8\"\n",
    )
    .unwrap();
    let (code, out) = text(&[f.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("no failures found"), "{out}");
}

#[test]
fn follow_prints_new_failures_through_rotation() {
    use std::io::{BufRead, BufReader, Write};
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("error.log");
    std::fs::write(&f, "").unwrap();
    let mut child = Reap(Some(
        Command::new(env!("CARGO_BIN_EXE_baton"))
            .args(["logs", "--follow", "--json"])
            .arg(&f)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    let stdout = child.0.as_mut().unwrap().stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    // The summary of what is there (nothing), as one JSON document on
    // one line; then one JSON object per new failure.
    let v: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(v["failures"], 0);
    let nginx = std::fs::read_to_string(fixture("nginx-error.log")).unwrap();
    let line = |n: usize| format!("{}\n", nginx.lines().nth(n - 1).unwrap());
    let mut w = std::fs::OpenOptions::new().append(true).open(&f).unwrap();
    w.write_all(line(2).as_bytes()).unwrap();
    w.flush().unwrap();
    let got: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(got["cause"], "connection_refused");
    assert_eq!(got["line"], 1);
    // logrotate: move the file away, start a new one.
    std::fs::rename(&f, dir.path().join("error.log.1")).unwrap();
    std::fs::write(&f, line(7)).unwrap();
    let got: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(got["cause"], "response_head_timeout");
    assert_eq!(got["line"], 1, "the new file, from its start");
}

// ------------------------------------------------------- real peers

/// The fault origins every peer is put in front of.
struct Faults {
    stall: Origin,
    closed: Origin,
    garbage: Origin,
    big: Origin,
    short: Origin,
    app500: Origin,
    refused: SocketAddr,
}

async fn faults() -> Faults {
    Faults {
        stall: Origin::start(Script::Stall).await.unwrap(),
        closed: Origin::start(Script::CloseBeforeHead).await.unwrap(),
        garbage: Origin::start(Script::Garbage).await.unwrap(),
        big: Origin::start(Script::OversizedHead(12_000)).await.unwrap(),
        short: Origin::start(Script::ShortBody).await.unwrap(),
        app500: Origin::start(Script::Status(500, "app error".into()))
            .await
            .unwrap(),
        refused: refusing_addr(),
    }
}

/// Requests each path through the peer (raw HTTP/1.1: a peer may pass
/// an upstream's garbage on as HTTP/0.9) and returns the status each got,
/// 0 for an answer that is not HTTP.
async fn hit(addr: SocketAddr, paths: &[&str]) -> BTreeMap<String, u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut out = BTreeMap::new();
    for p in paths {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {p} HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{p} answered"));
        let head = String::from_utf8_lossy(&buf);
        let status = head
            .strip_prefix("HTTP/1.1 ")
            .and_then(|r| r.get(..3))
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        out.insert(p.to_string(), status);
    }
    out
}

/// path -> (cause, status) of the counted (not joined) failure lines.
fn by_path(v: &Value) -> BTreeMap<String, (Option<String>, Option<u64>)> {
    v["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l.get("joined_to").is_none())
        .map(|l| {
            (
                l["path"].as_str().unwrap_or("").to_string(),
                (
                    l["cause"].as_str().map(str::to_string),
                    l["status"].as_u64(),
                ),
            )
        })
        .collect()
}

fn expect(v: &Value, want: &[(&str, Option<&str>, Option<u64>)]) {
    let got = by_path(v);
    for (path, cause, status) in want {
        assert_eq!(
            got.get(*path),
            Some(&(cause.map(str::to_string), *status)),
            "{path} in {got:#?}\n{v:#}"
        );
    }
    assert_eq!(got.len(), want.len(), "{got:#?}");
}

#[tokio::test]
async fn real_nginx_logs_are_classified() {
    let f = faults().await;
    let nginx = real_nginx(|dir, port| {
        let d = dir.display();
        format!(
            "  access_log {d}/access.log;\n  proxy_read_timeout 1s;\n  server {{\n    listen 127.0.0.1:{port};\n    location /refused {{ proxy_pass http://{}; }}\n    location /slow {{ proxy_pass http://{}; }}\n    location /closed {{ proxy_pass http://{}; }}\n    location /garbage {{ proxy_pass http://{}; }}\n    location /big {{ proxy_pass http://{}; }}\n    location /short {{ proxy_pass http://{}; }}\n    location /app500 {{ proxy_pass http://{}; }}\n    location /sock {{ proxy_pass http://unix:{d}/missing.sock:; }}\n    location /php {{ include /etc/nginx/fastcgi_params; fastcgi_pass unix:{d}/php-fpm.sock; }}\n  }}\n",
            f.refused,
            f.stall.addr,
            f.closed.addr,
            f.garbage.addr,
            f.big.addr,
            f.short.addr,
            f.app500.addr
        )
    })
    .await;
    let addr = nginx.addr;
    let statuses = hit(
        addr,
        &[
            "/refused", "/slow", "/closed", "/garbage", "/big", "/sock", "/php", "/app500",
        ],
    )
    .await;
    assert_eq!(statuses["/slow"], 504);
    assert_eq!(statuses["/refused"], 502);
    // nginx logs "upstream sent no valid HTTP/1.0 header" and passes the
    // bytes on as an HTTP/0.9 answer, logged as a 200.
    assert_eq!(statuses["/garbage"], 0);
    // The short body: nginx already sent a 200 head.
    assert_eq!(hit(addr, &["/short"]).await["/short"], 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let d = nginx.dir.path().to_path_buf();
    let (code, v) = tokio::task::spawn_blocking(move || {
        logs(&[
            d.join("error.log").to_str().unwrap(),
            d.join("access.log").to_str().unwrap(),
        ])
    })
    .await
    .unwrap();
    assert_eq!(code, 1);
    expect(
        &v,
        &[
            ("/refused", Some("connection_refused"), Some(502)),
            ("/slow", Some("response_head_timeout"), Some(504)),
            ("/closed", Some("connection_terminated"), Some(502)),
            ("/garbage", Some("http_protocol_error"), None),
            ("/big", Some("response_header_too_large"), Some(502)),
            ("/sock", Some("socket_not_found"), Some(502)),
            ("/php", Some("socket_not_found"), Some(502)),
            ("/short", Some("response_incomplete"), None),
            // nginx passes the application's own 500 through and logs no
            // error: its access line alone cannot say whose it is.
            ("/app500", None, Some(500)),
        ],
    );
    assert_eq!(v["unrecognised"], 0, "{v:#}");
}

#[tokio::test]
async fn real_haproxy_logs_are_classified() {
    let f = faults().await;
    let dir = tempfile::tempdir().unwrap();
    let port = refusing_addr().port();
    let conf = dir.path().join("haproxy.cfg");
    std::fs::write(
        &conf,
        format!(
            "global\n  log stdout format raw local0\ndefaults\n  mode http\n  log global\n  option httplog\n  timeout connect 1s\n  timeout client 5s\n  timeout server 1s\nfrontend web\n  bind 127.0.0.1:{port}\n  use_backend refused if {{ path_beg /refused }}\n  use_backend slow if {{ path_beg /slow }}\n  use_backend closed if {{ path_beg /closed }}\n  use_backend garbage if {{ path_beg /garbage }}\n  use_backend app500 if {{ path_beg /app500 }}\n  use_backend down if {{ path_beg /down }}\nbackend refused\n  server s1 {}\nbackend slow\n  server s1 {}\nbackend closed\n  server s1 {}\nbackend garbage\n  server s1 {}\nbackend app500\n  server s1 {}\nbackend down\n  server s1 {} check inter 100ms fall 1 rise 1\n",
            f.refused, f.stall.addr, f.closed.addr, f.garbage.addr, f.app500.addr, f.refused
        ),
    )
    .unwrap();
    let log = dir.path().join("haproxy.log");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let _haproxy = real_proxy("haproxy", &conf, addr, Some(&log)).await;
    // Let the health check mark the `down` server DOWN (HAProxy logs it;
    // under load it takes longer than its 100 ms interval).
    for _ in 0..100 {
        if std::fs::read_to_string(&log).is_ok_and(|l| l.contains("is DOWN")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let statuses = hit(
        addr,
        &[
            "/refused", "/slow", "/closed", "/garbage", "/app500", "/down",
        ],
    )
    .await;
    assert_eq!(statuses["/app500"], 500);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (code, v) = tokio::task::spawn_blocking(move || logs(&[log.to_str().unwrap()]))
        .await
        .unwrap();
    assert_eq!(code, 1);
    expect(
        &v,
        &[
            ("/refused", Some("connection_refused"), Some(503)),
            ("/slow", Some("response_head_timeout"), Some(504)),
            ("/closed", Some("connection_terminated"), Some(502)),
            ("/garbage", Some("http_protocol_error"), Some(502)),
            ("/app500", None, Some(500)),
            ("/down", Some("no_healthy_server"), Some(503)),
        ],
    );
    let app = v["lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["path"] == "/app500")
        .unwrap();
    assert_eq!(app["origin"], "application", "termination state ----");
    assert!(
        v["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event"] == "server_down"),
        "{v:#}"
    );
}

#[tokio::test]
async fn real_apache_logs_are_classified() {
    let f = faults().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let port = refusing_addr().port();
    let m = "/usr/lib/apache2/modules";
    let conf = dir.path().join("httpd.conf");
    std::fs::write(
        &conf,
        format!(
            "ServerRoot {d}\nServerName localhost\nListen 127.0.0.1:{port}\nPidFile {d}/httpd.pid\nDefaultRuntimeDir {d}\nMutex file:{d} default\nErrorLog {d}/error.log\nLogLevel warn\nLogFormat \"%h %l %u %t \\\"%r\\\" %>s %b\" common\nCustomLog {d}/apache-access.log common\nUser nobody\nGroup nogroup\nLoadModule mpm_event_module {m}/mod_mpm_event.so\nLoadModule authz_core_module {m}/mod_authz_core.so\nLoadModule proxy_module {m}/mod_proxy.so\nLoadModule proxy_http_module {m}/mod_proxy_http.so\nLoadModule proxy_fcgi_module {m}/mod_proxy_fcgi.so\nProxyTimeout 1\nProxyPass /refused http://{}/\nProxyPass /slow http://{}/\nProxyPass /closed http://{}/\nProxyPass /garbage http://{}/\nProxyPass /php unix:{d}/php-fpm.sock|fcgi://localhost/\n",
            f.refused, f.stall.addr, f.closed.addr, f.garbage.addr
        ),
    )
    .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let _apache = real_proxy("apache2", &conf, addr, None).await;
    let statuses = hit(addr, &["/refused", "/slow", "/closed", "/garbage", "/php"]).await;
    // Apache answers its read timeout with 502, not 504, and passes an
    // upstream's garbage on as an HTTP/0.9 answer without an error line.
    assert_eq!(statuses["/slow"], 502);
    assert_eq!(statuses["/garbage"], 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let d = dir.path().to_path_buf();
    let (code, v) = tokio::task::spawn_blocking(move || {
        logs(&[
            d.join("error.log").to_str().unwrap(),
            d.join("apache-access.log").to_str().unwrap(),
        ])
    })
    .await
    .unwrap();
    assert_eq!(code, 1);
    expect(
        &v,
        &[
            ("/refused", Some("connection_refused"), Some(503)),
            ("/slow", Some("response_head_timeout"), Some(502)),
            ("/closed", Some("connection_terminated"), Some(502)),
            ("/php", Some("socket_not_found"), Some(503)),
        ],
    );
    // AH01114/AH01079 and AH00898 joined to the line that explains them,
    // and every 5xx access line to its error line.
    let joined: Vec<&str> = v["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l.get("joined_to").is_some())
        .map(|l| l["marker"].as_str().unwrap_or("access"))
        .collect();
    assert_eq!(
        joined,
        [
            "AH01114", "AH00898", "AH00898", "AH01079", "access", "access", "access", "access"
        ],
        "{v:#}"
    );
    assert_eq!(v["unclassified"], 0);
    assert_eq!(v["unrecognised"], 0);
}

#[tokio::test]
async fn real_baton_logs_join_failure_records_to_access_lines_by_request_id() {
    let f = faults().await;
    let gw = Gw::start(&format!(
        "[upstreams.refused]\nservers = [\"{}\"]\nretries = 0\n[upstreams.slow]\nservers = [\"{}\"]\nread_timeout = \"500ms\"\n[[routes]]\npath = \"/refused\"\nupstream = \"refused\"\n[[routes]]\npath = \"/slow\"\nupstream = \"slow\"\n",
        f.refused, f.stall.addr
    ))
    .await;
    let statuses = hit(gw.addr, &["/refused", "/slow"]).await;
    assert_eq!(statuses["/refused"], 502);
    assert_eq!(statuses["/slow"], 504);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (errors, access) = (gw.errors_log.clone(), gw.access_log.clone());
    let (code, v) = tokio::task::spawn_blocking(move || {
        logs(&[errors.to_str().unwrap(), access.to_str().unwrap()])
    })
    .await
    .unwrap();
    assert_eq!(code, 1);
    expect(
        &v,
        &[
            ("/refused", Some("connection_refused"), Some(502)),
            ("/slow", Some("response_head_timeout"), Some(504)),
        ],
    );
    let joined = v["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l.get("joined_to").is_some())
        .count();
    assert_eq!(joined, 2, "each access line joined by request ID");
    assert_eq!(v["unrecognised"], 0);
    gw.stop().await;
}

#[test]
fn proxy_failures_are_linked_to_backend_signals_at_the_same_time() {
    let dir = tempfile::tempdir().unwrap();
    let nginx = dir.path().join("error.log");
    let app = dir.path().join("gunicorn.log");
    std::fs::write(
        &nginx,
        "2026/11/20 10:07:31 [error] 1201#1201: *9 upstream prematurely closed connection while reading response header from upstream, client: 203.0.113.12, server: example.com, request: \"POST /api/orders HTTP/1.1\", upstream: \"http://127.0.0.1:8000/api/orders\", host: \"example.com\"\n\
         2026/11/20 10:20:00 [error] 1201#1201: *10 upstream prematurely closed connection while reading response header from upstream, client: 203.0.113.12, server: example.com, request: \"POST /api/orders HTTP/1.1\", upstream: \"http://127.0.0.1:8000/api/orders\", host: \"example.com\"\n",
    )
    .unwrap();
    std::fs::copy(fixture("gunicorn.log"), &app).unwrap();
    let (_, v) = logs(&[nginx.to_str().unwrap(), app.to_str().unwrap()]);
    let g = &v["summary"][0];
    assert_eq!(g["cause"], "connection_terminated");
    assert_eq!(
        g["count"], 2,
        "two nginx lines; gunicorn's two are joined to the first as its explanation"
    );
    let joined: Vec<u64> = v["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["source"] == "gunicorn" && l["joined_to"]["line"] == 1)
        .map(|l| l["line"].as_u64().unwrap())
        .collect();
    assert_eq!(joined, [3, 4]);
    assert!(
        g["fix"].as_str().unwrap().starts_with("WORKER TIMEOUT: "),
        "the backend's fix first: {g:#}"
    );
    assert_eq!(g["near_backend_signal"], 1, "{g:#}");
    assert_eq!(
        g["notes"][0],
        "1 of 2 proxy lines within 5 s of a backend signal: gunicorn connection_terminated (1), gunicorn worker_start (1)"
    );
}
