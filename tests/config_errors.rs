//! `baton check`: every problem at once, each with key, line:column and fix.

use std::process::Command;

fn check(toml: &str) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("baton.toml");
    std::fs::write(&p, toml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["check", "--offline", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    let name = p.display().to_string();
    let norm = |b: &[u8]| String::from_utf8_lossy(b).replace(&name, "baton.toml");
    (out.status.success(), norm(&out.stdout), norm(&out.stderr))
}

#[test]
fn valid_config_passes() {
    let (ok, out, _) = check(
        "[server]\nlisten = [\"127.0.0.1:8080\"]\nadmin = \"127.0.0.1:9901\"\n\n[upstreams.app]\nservers = [\"127.0.0.1:3000\", \"unix:/run/app.sock\", \"app.internal:3000\"]\nconnect_timeout = \"2s\"\nread_timeout = \"30s\"\nwrite_timeout = \"30s\"\nmax_response_header_bytes = 65536\nretries = 1\n\n[[routes]]\nhost = \"example.com\"\npath = \"/api\"\nupstream = \"app\"\n",
    );
    assert!(ok);
    // A missing Unix socket is a warning (the app may just be stopped).
    assert_eq!(
        out,
        "baton.toml: ok (1 listener, 1 upstream, 1 route)\nwarning: baton.toml:6:30: upstreams.app.servers[1]: socket /run/app.sock does not exist: is the app running? (PHP-FPM creates it from the pool's `listen`; check the version in the path, e.g. php8.2-fpm)\n    fix: start the application, or make the path in servers the socket it creates\n"
    );
}

#[test]
fn every_problem_is_listed_with_line_and_fix() {
    let (ok, _, err) = check(
        "[server]\nlisten = [\"127.0.0.1:8080\"]\nadmn = \"127.0.0.1:9901\"\n\n[upstreams.app]\nservers = [\"127.0.0.1:3000\", \"http://bad:1\"]\nconnect_timeout = \"2x\"\n\n[[routes]]\npath = \"/api\"\nupstream = \"ap\"\n",
    );
    assert!(!ok);
    assert_eq!(
        err,
        "baton.toml: 4 problems\n\
baton.toml:3:1: server.admn: unknown field `admn`, expected one of `listen`, `listen_tls`, `tls_handshake_timeout`, `proxy_protocol`, `redirect_https`, `hsts`, `trusted_proxies`, `details_to`, `admin`, `workers`, `header_read_timeout`, `idle_timeout`, `body_read_timeout`, `send_timeout`, `outer_idle_timeout`, `admin_token`, `admin_hosts`, `status_page`, `dashboard_actions`, `max_request_header_bytes`, `max_body_bytes`, `max_connections`, `user`\n    fix: did you mean `admin`?\n\
baton.toml:6:30: upstreams.app.servers: \"http://bad:1\" has a scheme; servers are addresses\n    fix: write \"127.0.0.1:3000\", \"[::1]:3000\", \"app.internal:3000\" or \"unix:/run/app.sock\"\n\
baton.toml:7:19: upstreams.app.connect_timeout: invalid duration \"2x\"\n    fix: write a number with a unit: \"500ms\", \"2s\", \"1m\", \"1h\"\n\
baton.toml:11:12: routes[0].upstream: unknown upstream \"ap\"\n    fix: did you mean \"app\"?\n"
    );
}

#[test]
fn unknown_section_and_syntax_error() {
    let (ok, _, err) = check("[sever]\nlisten = 1\n");
    assert!(!ok);
    assert!(
        err.contains(
            "baton.toml:1:2: sever: unknown section `sever`\n    fix: did you mean `server`?"
        ),
        "{err}"
    );
    let (ok, _, err) = check("[server\nlisten = [\"127.0.0.1:8080\"]\n");
    assert!(!ok);
    assert!(err.contains("baton.toml:1:8: (syntax):"), "{err}");
}

#[test]
fn wrong_types_and_ranges() {
    let (ok, _, err) = check(
        "[upstreams.app]\nservers = [\"127.0.0.1:1\"]\nretries = -1\nmax_response_header_bytes = 1024\n[[routes]]\nupstream = \"app\"\n",
    );
    assert!(!ok);
    assert!(
        err.contains("baton.toml:3:11: upstreams.app.retries: -1 is out of range (0..=16)"),
        "{err}"
    );
    assert!(
        err.contains(
            "baton.toml:4:29: upstreams.app.max_response_header_bytes: 1024 is out of range"
        ),
        "{err}"
    );
}

#[test]
fn missing_file_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["check", "--config", "/nonexistent/baton.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "could not run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err,
        "baton check: /nonexistent/baton.toml: no such file; pass an existing file with --config\n"
    );
}

#[test]
fn likely_502_causes_are_warnings_with_line_and_fix() {
    let (ok, out, _) = check(
        "[upstreams.app]\nservers = [\"127.0.0.1:3000\"]\nread_timeout = \"30s\"\nmax_response_header_bytes = 8192\n\n[[routes]]\nupstream = \"app\"\n\n[[routes]]\npath = \"/api\"\nupstream = \"app\"\nper_try_timeout = \"40s\"\n",
    );
    assert!(ok, "warnings do not fail the check");
    assert_eq!(
        out,
        "baton.toml: ok (1 listener, 1 upstream, 2 routes)\n\
warning: baton.toml:4:29: upstreams.app.max_response_header_bytes: 8192 bytes is under 16 KiB: large Set-Cookie (OAuth, JWT sessions) or CSP headers overflow it and become 502 response_header_too_large\n    fix: keep the default 65536 unless memory is tight\n\
warning: baton.toml:10:8: routes[1]: never matches: the earlier route */ takes every request it would (routes match in file order)\n    fix: move this route above the broader one, or narrow the earlier route's host or path\n\
warning: baton.toml:12:19: routes[1].per_try_timeout: per_try_timeout 40s is not shorter than upstream app's read_timeout 30s: it never fires\n    fix: make per_try_timeout shorter than read_timeout, or remove it\n"
    );
}

/// The live probes and the timeout ladder, against loopback origins and a
/// loopback DNS server.
#[tokio::test(flavor = "multi_thread")]
async fn check_probes_every_server_and_the_timeout_ladder() {
    use crate::support::{Dns, Origin, Script, refusing_addr};
    let dns = Dns::start(vec![("app.test", "127.0.0.1".parse().unwrap())], false).await;
    let ok = Origin::start(Script::Ok("hi".into())).await.unwrap();
    let no_health = Origin::start(Script::Status(404, "not found".into()))
        .await
        .unwrap();
    let toml = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nidle_timeout = \"30s\"\nouter_idle_timeout = \"60s\"\n\n[resolver]\nnameservers = [\"{}\"]\ntimeout = \"500ms\"\n\n[upstreams.app]\nservers = [\"app.test:{}\", \"gone.test:80\", \"{}\"]\n\n[upstreams.web]\nservers = [\"{}\"]\nread_timeout = \"20s\"\n[upstreams.web.health]\npath = \"/healthz\"\n\n[upstreams.py]\nservers = [\"127.0.0.1:{}\"]\nread_timeout = \"30s\"\n[upstreams.py.process]\ncommand = \"/usr/bin/env\"\nargs = [\"gunicorn\", \"--timeout\", \"45\", \"app:app\"]\n\n[[routes]]\nupstream = \"app\"\n",
        dns.addr,
        ok.addr.port(),
        refusing_addr(),
        no_health.addr,
        refusing_addr().port(),
    );
    let (code, out) = tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("baton.toml");
        std::fs::write(&p, toml).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_baton"))
            .args(["check", "--config"])
            .arg(&p)
            .output()
            .unwrap();
        let name = p.display().to_string();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).replace(&name, "baton.toml"),
        )
    })
    .await
    .unwrap();
    assert_eq!(code, Some(1), "a name that does not resolve is an error");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        "baton.toml: problems found (1 listener, 3 upstreams, 1 route)"
    );
    let expect = [
        "warning: baton.toml:3:16: server.idle_timeout: baton closes idle client connections after 30s, no later than the load balancer in front (60s): it reuses a connection baton just closed and answers 502 itself",
        "    fix: set idle_timeout above outer_idle_timeout, e.g. \"75s\"",
        "error: baton.toml:11:30: upstreams.app.servers[1]: gone.test:80: gone.test does not resolve (NXDOMAIN or no records): every request to this server fails with 502 dns_error",
    ];
    for e in expect {
        assert!(lines.contains(&e), "missing {e:?} in:\n{out}");
    }
    let has = |needle: &str| {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    };
    // The refused server: a warning (it may just be stopped).
    has(": upstreams.app.servers[2]: 127.0.0.1:");
    has(" does not answer now (connection_refused: ");
    // The default read_timeout (60s) against the outer balancer, at the
    // upstream's servers (the key is not in the file).
    has(
        "warning: baton.toml:11:11: upstreams.app.read_timeout: read_timeout 60s is not shorter than the load balancer in front (60s): a slow answer becomes the load balancer's bare 504 instead of baton's explained one\n    fix: keep read_timeout below outer_idle_timeout, e.g. \"55s\"",
    );
    // The health path that 404s, at its line.
    has("warning: baton.toml:17:8: upstreams.web.health.path: ");
    has(
        ": GET /healthz answered 404, expected 200-399: the health check fails, so this server never gets traffic (503 no_healthy_server once all fail)",
    );
    // gunicorn's --timeout 45 against read_timeout 30s.
    has(
        "warning: baton.toml:21:16: upstreams.py.read_timeout: the application's own timeout (gunicorn's --timeout 45s) is not shorter than read_timeout 30s: baton answers 504 first while the application keeps working on a request nobody waits for\n    fix: set read_timeout above the application's timeout, e.g. \"50s\"",
    );
    // The working server and the supervised one (not running): no finding.
    assert!(!out.contains("servers[0]:"), "{out}");
    assert!(!out.contains("upstreams.py.servers"), "{out}");
}

/// An nginx admin's file: every mistake of every table in one run, each
/// named by its key, nginx's directives pointed at baton's keys.
#[test]
fn nginx_habits_are_all_reported_at_once_with_baton_s_keys() {
    let (ok, _, err) = check(
        "[server]\nlisten = [\"127.0.0.1:8080\"]\nclient_max_body_size = \"10m\"\nworkers = \"two\"\nkeepalive_timeout = \"65s\"\n\n[upstreams.app]\nservers = [\"127.0.0.1:3000\"]\nproxy_read_timeout = \"60s\"\nretries = \"1\"\n\n[[routes]]\nserver_name = \"example.com\"\nupstream = \"app\"\n\n[location]\npath = \"/\"\n",
    );
    assert!(!ok);
    assert!(err.starts_with("baton.toml: 7 problems\n"), "{err}");
    for (place, fix) in [
        (
            "baton.toml:3:1: server.client_max_body_size:",
            "fix: that is nginx's `client_max_body_size`: in baton it is `max_body_bytes` in [server]",
        ),
        (
            "baton.toml:4:11: server.workers: invalid type",
            "fix: check the value's type",
        ),
        (
            "baton.toml:5:1: server.keepalive_timeout:",
            "fix: that is nginx's `keepalive_timeout`: in baton the client side is `idle_timeout` in [server]",
        ),
        (
            "baton.toml:9:1: upstreams.app.proxy_read_timeout:",
            "fix: that is nginx's `proxy_read_timeout`: in baton it is `read_timeout` in [upstreams.NAME]",
        ),
        (
            "baton.toml:10:11: upstreams.app.retries: invalid type",
            "fix: check the value's type",
        ),
        (
            "baton.toml:13:1: routes[0].server_name:",
            "fix: that is nginx's `server_name`: in baton it is `host` in a [[routes]] entry",
        ),
        (
            "baton.toml:16:2: location: unknown section",
            "fix: that is nginx's `location`: in baton a location is a [[routes]] entry",
        ),
    ] {
        let at = err.find(place).unwrap_or_else(|| panic!("{place}\n{err}"));
        let next = err[at..].lines().nth(1).unwrap();
        assert!(next.trim_start().starts_with(fix), "{place}: {next}");
    }
}
