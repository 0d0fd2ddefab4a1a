//! `baton check`: every problem at once, each with key, line:column and fix.

use std::process::Command;

fn check(toml: &str) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("baton.toml");
    std::fs::write(&p, toml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["check", "--config"])
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
        "baton.toml: ok (1 listener, 1 upstream, 1 route)\nwarning: upstreams.app.servers: socket /run/app.sock does not exist: is the app running? (PHP-FPM creates it from the pool's `listen`; check the version in the path, e.g. php8.2-fpm)\n"
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
baton.toml:3:1: server.admn: unknown field `admn`, expected one of `listen`, `admin`, `workers`, `header_read_timeout`, `max_request_header_bytes`, `max_body_bytes`, `max_connections`\n    fix: did you mean `admin`?\n\
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
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot read the config file"), "{err}");
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
