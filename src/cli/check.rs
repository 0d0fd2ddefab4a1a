//! `baton check`: the config's syntax (the one loader), what the loader
//! finds likely to cause 502s in a valid config, and live probes of every
//! server: names that do not resolve, servers not answering, health paths
//! that fail, Unix sockets missing or closed to baton.
//!
//! Owns: the findings and their output (text or `--json`) and exit code
//! (0: nothing wrong, warnings at most; 1: an error; 2: could not run).
//! Must not: judge a server in its own way; the probe is the health
//! checker's, so `check` and the running gateway agree.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::cli::term::Paint;
use crate::config::{self, Config, HealthConfig};
use crate::core::cause::Cause;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Error,
    Warning,
}

impl Severity {
    pub const fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

/// One thing wrong, where it is in the file, why it causes 502s and what
/// to change.
#[derive(Clone, Debug)]
pub struct Finding {
    pub severity: Severity,
    pub key: String,
    pub line: usize,
    pub col: usize,
    pub message: String,
    pub fix: String,
}

/// A supervised backend whose command has a config test (`php-fpm -t`,
/// `nginx -t`, `apache2 -t`, `haproxy -c`): run with the same arguments,
/// environment and directory baton would start it with. A backend that
/// cannot start is found here, not as a crash loop after `baton serve`.
fn backend_config_tests(cfg: &Config) -> Vec<Finding> {
    let mut out = Vec::new();
    for u in &cfg.upstreams {
        let Some(p) = &u.process else { continue };
        let program = std::path::Path::new(&p.command)
            .file_name()
            .map_or(String::new(), |n| n.to_string_lossy().into_owned());
        let flag = if program.starts_with("php-fpm")
            || program == "nginx"
            || program == "apache2"
            || program == "httpd"
        {
            "-t"
        } else if program == "haproxy" {
            "-c"
        } else {
            continue;
        };
        let mut cmd = std::process::Command::new(&p.command);
        cmd.arg(flag)
            .args(&p.args)
            .envs(p.env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null());
        if let Some(d) = &p.cwd {
            cmd.current_dir(d);
        }
        let key = format!("upstreams.{}.process.command", u.name);
        let (line, col) = cfg.place(&key);
        let shown = format!("{} {flag} {}", p.command, p.args.join(" "));
        let (message, fix) = match cmd.output() {
            Ok(o) if o.status.success() => continue,
            Ok(o) => {
                let said = String::from_utf8_lossy(&o.stderr).into_owned()
                    + &String::from_utf8_lossy(&o.stdout);
                let tail: Vec<&str> = said.lines().filter(|l| !l.trim().is_empty()).collect();
                let tail = tail[tail.len().saturating_sub(3)..].join(" / ");
                (
                    format!("`{shown}` fails ({}): {tail}", o.status),
                    "fix the backend's own config: as it is, baton would start it and it would exit at once (a crash loop: 503 backend_restarting)",
                )
            }
            Err(e) => (
                format!("`{shown}` cannot run: {e}"),
                "install the backend, or give its full path in command",
            ),
        };
        out.push(Finding {
            severity: Severity::Error,
            key,
            line,
            col,
            message,
            fix: fix.into(),
        });
    }
    out
}

/// How long a live probe may take when the upstream has no health check.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Everything wrong with a loaded config; `live`: also probe the servers.
pub fn findings(cfg: &Config, live: bool) -> Vec<Finding> {
    let mut out: Vec<Finding> = cfg
        .warnings
        .iter()
        .map(|w| Finding {
            severity: Severity::Warning,
            key: w.key.clone(),
            line: w.line,
            col: w.col,
            message: w.message.clone(),
            fix: w.fix.clone(),
        })
        .collect();
    // Unix sockets: a missing one may be a stopped app (a warning); one
    // baton may not open is an error.
    let mut sockets = Vec::new();
    for (key, p) in crate::upstream::socket_findings(cfg, false) {
        let (line, col) = cfg.place(&key);
        use crate::upstream::SocketProblem as P;
        let (severity, fix) = match p {
            P::Missing(_) => (
                Severity::Warning,
                "start the application, or make the path in servers the socket it creates",
            ),
            P::Permission(_) => (
                Severity::Error,
                "give baton's user access to the socket as the message says (PHP-FPM: listen.owner, listen.group, listen.mode), then restart the application",
            ),
            P::NotSocket(_) => (
                Severity::Error,
                "point servers at the application's socket, not at another file",
            ),
        };
        out.push(Finding {
            severity,
            line,
            col,
            message: p.message().to_string(),
            fix: fix.into(),
            key: key.clone(),
        });
        sockets.push(key);
    }
    out.extend(backend_config_tests(cfg));
    if live {
        out.extend(probe_all(cfg, &sockets));
    }
    out.sort_by_key(|f| (f.line, f.col, f.severity));
    out
}

/// Every server probed once, at once, the way the health checker does
/// (its HTTP check where the upstream has one, a connect otherwise).
fn probe_all(cfg: &Config, skip: &[String]) -> Vec<Finding> {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(_) => return Vec::new(),
    };
    // A server that is one of baton's own listeners is reported by the
    // loader; probing it must not fail as a loop (a detached runtime).
    let Ok(gw) = crate::gateway::Runtime::detached(cfg.clone()) else {
        return Vec::new();
    };
    let gw = Arc::new(gw);
    rt.block_on(async {
        let mut probes = tokio::task::JoinSet::new();
        for up in &gw.upstreams {
            // A supervised backend is not running while baton is not.
            if up.cfg.process.is_some() {
                continue;
            }
            for (i, server) in up.servers.iter().enumerate() {
                let key = format!("upstreams.{}.servers[{i}]", up.cfg.name);
                if skip.contains(&key) {
                    continue;
                }
                let health = up.cfg.health.clone().unwrap_or(HealthConfig {
                    path: None,
                    interval: PROBE_TIMEOUT,
                    timeout: PROBE_TIMEOUT,
                    rise: 1,
                    fall: 1,
                    expect: (200, 399),
                    slow_start: Duration::ZERO,
                });
                let (gw, up, server) = (gw.clone(), up.clone(), server.clone());
                probes.spawn(async move {
                    let r = crate::upstream::health::probe(&gw.dialer, &up, server.clone(), &health).await;
                    (key, up, server, health, r)
                });
            }
        }
        let mut out = Vec::new();
        while let Some(Ok((key, up, server, health, r))) = probes.join_next().await {
            let Err((cause, details)) = r else { continue };
            let (line, col) = cfg.place(&key);
            let name = &up.cfg.name;
            out.push(match cause {
                Some(c @ (Cause::DnsError | Cause::DnsTimeout)) => Finding {
                    severity: Severity::Error,
                    key,
                    line,
                    col,
                    message: format!(
                        "{}: {details}: every request to this server fails with 502 {}",
                        server.label,
                        c.id()
                    ),
                    fix: c.fix().into(),
                },
                Some(c) => Finding {
                    severity: Severity::Warning,
                    key,
                    line,
                    col,
                    message: format!(
                        "{} does not answer now ({}: {details}); requests sent to it get {} {}",
                        server.label,
                        c.id(),
                        c.status(),
                        c.proxy_status()
                    ),
                    fix: c.fix().into(),
                },
                None => {
                    let path_key = format!("upstreams.{name}.health.path");
                    let (line, col) = cfg.place(&path_key);
                    Finding {
                        severity: Severity::Warning,
                        key: path_key,
                        line,
                        col,
                        message: format!(
                            "{}: {details}: the health check fails, so this server never gets traffic (503 no_healthy_server once all fail)",
                            server.label
                        ),
                        fix: format!(
                            "point health.path at an endpoint that answers {}-{} without authentication (e.g. /healthz), or set health.expect",
                            health.expect.0, health.expect.1
                        ),
                    }
                }
            });
        }
        out
    })
}

/// `baton check`.
pub fn run(path: &Path, live: bool, json: bool) -> u8 {
    if !path.exists() {
        let msg = format!("{}: no such file", path.display());
        if json {
            println!(
                "{}",
                json!({ "file": path.display().to_string(), "error": msg })
            );
        }
        eprintln!("baton check: {msg}; pass an existing file with --config");
        return 2;
    }
    let cfg = match config::load(path) {
        Ok(c) => c,
        Err(e) => {
            if json {
                let errors: Vec<_> = e
                    .errors
                    .iter()
                    .map(|x| json!({"severity": "error", "key": x.key, "line": x.line, "col": x.col, "message": x.message, "fix": x.fix}))
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &json!({"file": e.file, "ok": false, "findings": errors})
                    )
                    .unwrap_or_default()
                );
            } else {
                eprint!("{e}");
            }
            return 1;
        }
    };
    let found = findings(&cfg, live);
    let errors = found
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    if json {
        let list: Vec<_> = found
            .iter()
            .map(|f| json!({"severity": f.severity.as_str(), "key": f.key, "line": f.line, "col": f.col, "message": f.message, "fix": f.fix}))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"file": path.display().to_string(), "ok": errors == 0, "findings": list})
            )
            .unwrap_or_default()
        );
        return u8::from(errors > 0);
    }
    let paint = Paint::stdout();
    let n = |k: usize, w: &str| format!("{k} {w}{}", if k == 1 { "" } else { "s" });
    println!(
        "{}: {} ({}, {}, {})",
        path.display(),
        if errors == 0 {
            paint.green("ok")
        } else {
            paint.red("problems found")
        },
        n(cfg.listen.len(), "listener"),
        n(cfg.upstreams.len(), "upstream"),
        n(cfg.routes.len(), "route"),
    );
    for f in &found {
        let level = match f.severity {
            Severity::Error => paint.red("error"),
            Severity::Warning => paint.yellow("warning"),
        };
        println!(
            "{level}: {}:{}:{}: {}: {}\n    fix: {}",
            path.display(),
            f.line,
            f.col,
            f.key,
            f.message,
            f.fix
        );
    }
    u8::from(errors > 0)
}
