//! Supervised backends: PHP-FPM and a Python app started, restarted and
//! stopped by baton.

use std::time::{Duration, Instant};

use crate::support::php;
use crate::support::*;

async fn processes(gw: &Gw) -> serde_json::Value {
    send(gw.admin, get("/processes")).await.json()["processes"][0].clone()
}

/// Polls /processes until `done` holds for the (only) backend, for up to
/// ten seconds; returns its entry.
async fn until(
    gw: &Gw,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let p = processes(gw).await;
        if done(&p) {
            return p;
        }
        assert!(Instant::now() < deadline, "{what}: {p}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A gateway whose one upstream's backend is `sh -c SCRIPT` (never
/// listening on its port), with extra `[process]` keys.
async fn sh_backend(script: &str, process: &str) -> Gw {
    let port = refusing_addr().port();
    Gw::start(&format!(
        "[upstreams.app]\nservers = [\"127.0.0.1:{port}\"]\n[upstreams.app.process]\ncommand = \"sh\"\nargs = [\"-c\", \"{script}\"]\n{process}\n[[routes]]\nupstream = \"app\"\n"
    ))
    .await
}

fn sigkill(pid: u64) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
}

fn alive(pid: u64) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok()
}

fn supervised_fpm(fpm: &php::Fpm, extra: &str) -> String {
    fpm.upstream(&format!(
        "[upstreams.php.process]\ncommand = \"{}\"\nargs = [\"-F\", \"-O\", \"-y\", \"{}\"]\nstop_signal = \"QUIT\"\nbackoff = \"100ms\"\n{extra}",
        php::FPM,
        fpm.conf.display()
    ))
}

#[tokio::test]
async fn php_fpm_killed_under_load_is_restarted_and_no_request_fails() {
    let fpm = php::prepare("");
    let gw = Gw::start(&supervised_fpm(&fpm, "")).await;
    // Started before serving: the first request just works.
    let r = send(gw.addr, get("/hello.php")).await;
    assert_eq!(r.status, 200);
    let p = processes(&gw).await;
    assert_eq!(p["state"], "running");
    let pid = p["pid"].as_u64().unwrap();

    let stop_at = Instant::now() + Duration::from_secs(3);
    let mut load = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let addr = gw.addr;
        load.spawn(async move {
            let mut statuses = Vec::new();
            while Instant::now() < stop_at {
                let r = send(addr, get("/slow.php?ms=20")).await;
                statuses.push((r.status, r.header("proxy-status").to_string()));
            }
            statuses
        });
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    sigkill(pid);
    let mut all = Vec::new();
    while let Some(s) = load.join_next().await {
        all.extend(s.unwrap());
    }
    let failed: Vec<_> = all.iter().filter(|(s, _)| *s != 200).collect();
    assert!(all.len() > 100, "{} requests", all.len());
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:?}",
        failed.len(),
        all.len()
    );

    let p = processes(&gw).await;
    assert_eq!(p["state"], "running");
    assert_eq!(p["restarts"], 1);
    assert_ne!(p["pid"].as_u64().unwrap(), pid);
    let exit = p["last_exit"].as_str().unwrap();
    assert!(exit.starts_with("killed by signal 9 (SIGKILL)"), "{exit}");
    let m = gw.metrics().await;
    assert!(
        m.contains("baton_backend_restarts_total{upstream=\"php\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("baton_backend_state{upstream=\"php\",state=\"running\"} 1"),
        "{m}"
    );
    let new_pid = p["pid"].as_u64().unwrap();
    gw.stop().await;
    // Stopped gracefully with baton.
    assert!(!alive(new_pid), "php-fpm still running after baton stopped");
}

#[tokio::test]
async fn supervised_python_app_comes_back_and_requests_wait_for_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello.txt"), "hello from python\n").unwrap();
    let port = refusing_addr().port();
    let gw = Gw::start(&format!(
        "[upstreams.py]\nservers = [\"127.0.0.1:{port}\"]\n[upstreams.py.process]\ncommand = \"python3\"\nargs = [\"-m\", \"http.server\", \"{port}\", \"--bind\", \"127.0.0.1\"]\ncwd = \"{}\"\nbackoff = \"200ms\"\n\n[[routes]]\nupstream = \"py\"\n",
        dir.path().display()
    ))
    .await;
    let r = send(gw.addr, get("/hello.txt")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "hello from python\n"));
    let pid = processes(&gw).await["pid"].as_u64().unwrap();
    sigkill(pid);
    // Right after the kill: held until the app is back, then served.
    let r = send(gw.addr, get("/hello.txt")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "hello from python\n"));
    let p = processes(&gw).await;
    assert_eq!(p["restarts"], 1);
    assert_eq!(p["state"], "running");
    gw.stop().await;
}

#[tokio::test]
async fn crash_loop_is_detected_and_requests_get_503_backend_restarting() {
    let gw = sh_backend(
        "echo fatal: cannot read config >&2; exit 3",
        "backoff = \"20ms\"\nbackoff_max = \"3s\"\ncrash_loop_exits = 3\nstart_wait = \"300ms\"\n",
    )
    .await;
    let p = until(&gw, "no crash loop detected", |p| p["crash_loop"] == true).await;
    assert_eq!(p["last_exit"], "exited with code 3");
    assert_eq!(p["state"], "backoff");
    let r = send(gw.addr, get("/")).await;
    let line = assert_failure(
        &gw,
        &r,
        503,
        "destination_unavailable",
        "backend_restarting",
    )
    .await;
    let ps = r.header("proxy-status");
    assert!(
        ps.contains("backend in a crash loop, next start in"),
        "{ps}"
    );
    let secs: u64 = r.header("retry-after").parse().unwrap();
    assert!((1..=4).contains(&secs), "{secs}");
    assert_eq!(line["phase"], "route");
    gw.stop().await;
}

#[tokio::test]
async fn restart_never_leaves_it_stopped_and_says_so() {
    let gw = sh_backend("exit 0", "restart = \"never\"\nstart_wait = \"200ms\"\n").await;
    until(&gw, "not stopped", |p| p["state"] == "stopped").await;
    let r = send(gw.addr, get("/")).await;
    assert_failure(
        &gw,
        &r,
        503,
        "destination_unavailable",
        "backend_restarting",
    )
    .await;
    assert_eq!(
        r.header("proxy-status"),
        "baton; error=destination_unavailable; details=\"backend stopped (exited with code 0)\""
    );
    gw.stop().await;
}

#[tokio::test]
async fn failing_health_checks_restart_the_backend() {
    let dir = tempfile::tempdir().unwrap();
    let port = refusing_addr().port();
    // The app runs, but its health path 404s: restarted after 1 s of that.
    let gw = Gw::start(&format!(
        "[upstreams.py]\nservers = [\"127.0.0.1:{port}\"]\n[upstreams.py.health]\npath = \"/healthz\"\ninterval = \"100ms\"\nfall = 1\n[upstreams.py.process]\ncommand = \"python3\"\nargs = [\"-m\", \"http.server\", \"{port}\", \"--bind\", \"127.0.0.1\"]\ncwd = \"{}\"\nbackoff = \"100ms\"\nunhealthy_restart = \"1s\"\n\n[[routes]]\nupstream = \"py\"\n",
        dir.path().display()
    ))
    .await;
    let p = until(&gw, "not restarted", |p| p["restarts"].as_u64() >= Some(1)).await;
    assert_eq!(p["last_exit"], "health checks failing");
    gw.stop().await;
}

#[tokio::test]
async fn reload_reports_socket_problems_and_keeps_an_unchanged_backend() {
    let fpm = php::prepare("");
    let gw = Gw::start(&supervised_fpm(&fpm, "")).await;
    let pid = processes(&gw).await["pid"].as_u64().unwrap();
    // Same [process], plus an upstream whose socket is missing.
    let body = format!(
        "{}[upstreams.gone]\nservers = [\"unix:{}/nope.sock\"]\n",
        supervised_fpm(&fpm, ""),
        fpm.dir.path().display()
    );
    let r = gw.reload_with(&body).await;
    assert_eq!(r.status, 200);
    let notes = r.json()["notes"].to_string();
    assert!(
        notes.contains("upstreams.gone.servers[0]: socket")
            && notes.contains("nope.sock does not exist"),
        "{notes}"
    );
    // The backend was not restarted by the reload.
    let p = processes(&gw).await;
    assert_eq!(p["pid"].as_u64().unwrap(), pid);
    assert_eq!(p["restarts"], 0);
    assert_eq!(send(gw.addr, get("/hello.php")).await.status, 200);
    gw.stop().await;
}

/// `baton check` runs a supervised backend's own config test (php-fpm
/// `-t`) with the arguments baton starts it with: a broken pool config is
/// an error with PHP-FPM's own words, not "ok" and then a crash loop.
#[tokio::test]
async fn check_runs_the_backends_own_config_test() {
    let fpm = php::prepare("");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("baton.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = [\"127.0.0.1:{}\"]\n{}",
            refusing_addr().port(),
            supervised_fpm(&fpm, "")
        ),
    )
    .unwrap();
    let check = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
            .args(["check", "--offline", "--config"])
            .arg(&cfg)
            .output()
            .unwrap()
    };
    let out = check();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // A pool setting PHP-FPM refuses.
    let conf = std::fs::read_to_string(&fpm.conf).unwrap();
    std::fs::write(&fpm.conf, conf.replace("pm = ", "pm = sometimes\n;pm = ")).unwrap();
    let out = check();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("upstreams.php.process.command: `php-fpm8.2 -t -F -O -y "),
        "{stdout}"
    );
    assert!(
        stdout.contains(":9:11: upstreams.php.process.command"),
        "its line: {stdout}"
    );
    assert!(
        stdout.contains("unable to parse value for entry 'pm': invalid process manager"),
        "PHP-FPM's own words: {stdout}"
    );
}

/// A request waits at most `start_wait` for its backend in all: a backend
/// that restarts under it does not buy the request a second full wait.
#[tokio::test]
async fn a_request_waits_start_wait_in_all_for_a_restarting_backend() {
    let port = refusing_addr().port();
    // Listens (ready), never answers, exits after 0.5 s; restarted at once.
    let script = format!(
        "import socket,time\\ns=socket.socket()\\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\\ns.bind(('127.0.0.1',{port}))\\ns.listen()\\ntime.sleep(0.5)"
    );
    let gw = Gw::start(&format!(
        "[upstreams.app]\nservers = [\"127.0.0.1:{port}\"]\nread_timeout = \"30s\"\n[upstreams.app.process]\ncommand = \"python3\"\nargs = [\"-c\", \"{script}\"]\nbackoff = \"50ms\"\nstart_wait = \"300ms\"\n[[routes]]\nupstream = \"app\"\n"
    ))
    .await;
    until(&gw, "not running", |p| p["state"] == "running").await;
    let start = Instant::now();
    let r = send(gw.addr, get("/")).await;
    let took = start.elapsed();
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.proxy_error(), "destination_unavailable");
    // The attempt itself waited for the backend to die (up to 0.5 s); no
    // second wait and retry after its restart (which would take ~1.1 s).
    assert!(took < Duration::from_millis(900), "waited {took:?}");
    gw.stop().await;
}
