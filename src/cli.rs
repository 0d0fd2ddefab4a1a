//! The command line: `baton serve`, `baton check`, `baton demo`.
//!
//! Owns: argument parsing, the tokio runtime, process signals and exit
//! codes. The only module that uses `anyhow`-style reporting; everything
//! below returns typed errors.

pub mod check;
pub mod demo;
pub mod doctor;
pub mod logs;
pub mod term;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config;

#[derive(Parser)]
#[command(
    name = "baton",
    version,
    about = "A reverse-proxy gateway that prevents and explains 502s"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway.
    Serve {
        #[arg(long, short, default_value = "baton.toml")]
        config: PathBuf,
    },
    /// Validate a config file: every problem with its line and fix, what
    /// is likely to cause 502s, and a live probe of every server. Exit 0:
    /// nothing wrong (warnings at most), 1: an error, 2: could not run.
    Check {
        #[arg(long, short, default_value = "baton.toml")]
        config: PathBuf,
        /// Skip the live probes (DNS, connect, health paths).
        #[arg(long)]
        offline: bool,
        #[arg(long)]
        json: bool,
    },
    /// Start the gateway with built-in demo origins on loopback.
    Demo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Request every demo URL once, print what came back, and exit
        /// (non-zero if anything differs from the table).
        #[arg(long)]
        self_test: bool,
    },
    /// Print the cause table (the one in docs/errors.md).
    Causes,
    /// Walk an upstream step by step (socket, DNS, connect, TLS, HTTP) and
    /// say what is wrong and how to fix it. Exit 0: nothing wrong, 1: a
    /// problem found, 2: could not run.
    Doctor {
        /// `https://host/path`, `host:port` or `unix:/path/to.sock`.
        #[arg(required_unless_present = "config")]
        target: Option<String>,
        /// Walk every server of every upstream in this config instead.
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
        /// Per step.
        #[arg(long, default_value = "5s")]
        timeout: String,
        /// How long to watch an idle kept-alive connection for the server
        /// closing it ("0s" skips the step).
        #[arg(long, default_value = "6s")]
        idle_wait: String,
        /// Walk N times (intermittent failures) and summarise what varied.
        #[arg(long, default_value_t = 1)]
        repeat: u32,
        /// The path requested from a FastCGI server (PHP-FPM's ping.path).
        #[arg(long, default_value = "/ping")]
        fcgi_ping: String,
        /// Ask this nameserver (`ip` or `ip:port`, repeatable) instead of
        /// those in /etc/resolv.conf; the system resolver is asked too.
        #[arg(long)]
        nameserver: Vec<String>,
    },
    /// List the incidents recorded in `[incidents] dir`, newest first.
    Incidents {
        #[arg(long, short, default_value = "baton.toml")]
        config: PathBuf,
        /// The store's directory, instead of reading it from the config.
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Write an incident's escalation report as Markdown and HTML
    /// (`incident-ID.md` and `incident-ID.html`, or `--out PREFIX`).
    Report {
        id: i64,
        #[arg(long, short, default_value = "baton.toml")]
        config: PathBuf,
        /// The store's directory, instead of reading it from the config.
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Read nginx, Apache, HAProxy, Envoy, Caddy, Traefik, php-fpm,
    /// gunicorn or baton logs (any mix, any number of files) and say what
    /// broke, since when, how often, and the fix. Exit 0: no failure found,
    /// 1: failures found, 2: could not read an input.
    Logs {
        /// Log files (`.gz` too); `-` or none for stdin.
        files: Vec<String>,
        /// One JSON document instead of text (with --follow: one JSON
        /// object per new line).
        #[arg(long)]
        json: bool,
        /// Also write an escalation report in Markdown.
        #[arg(long, value_name = "FILE.md")]
        report: Option<PathBuf>,
        /// After the summary, print each new failure as it is written.
        #[arg(long, short)]
        follow: bool,
    },
}

fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut b = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    if workers > 1 {
        b.worker_threads(workers);
    }
    b.enable_all().build()
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .json()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BATON_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .try_init();
}

pub fn run() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Check {
            config,
            offline,
            json,
        } => ExitCode::from(crate::cli::check::run(&config, !offline, json)),
        Cmd::Serve { config } => {
            init_tracing();
            let cfg = match config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprint!("{e}");
                    return ExitCode::from(1);
                }
            };
            // Worker 0 is this runtime; server::start adds the others.
            let rt = match runtime(1) {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("baton: cannot start the runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            rt.block_on(async move {
                let running = match crate::server::start(cfg).await {
                    Ok(r) => r,
                    Err(e) => {
                        eprintln!("baton: {e}");
                        return ExitCode::from(1);
                    }
                };
                tracing::info!(listen = ?running.addrs, admin = ?running.admin, "baton serving");
                let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
                let stop = wait_for_signal();
                tokio::pin!(stop);
                loop {
                    tokio::select! {
                        _ = &mut stop => break,
                        _ = async { match hup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending().await } } => {
                            // A bad file is refused with its full error list;
                            // the running config keeps serving.
                            if let Err(e) = running.gateway.reload() {
                                tracing::error!(errors = %e, "reload refused: the running config keeps serving");
                            }
                        }
                    }
                }
                tracing::info!("shutting down: finishing in-flight requests");
                running.shutdown(Duration::from_secs(30)).await;
                ExitCode::SUCCESS
            })
        }
        Cmd::Demo { listen, self_test } => {
            let rt = match runtime(0) {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("baton: cannot start the runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            rt.block_on(crate::cli::demo::run(listen, self_test))
        }
        Cmd::Incidents { config, dir, json } => {
            let store = match incident_store(&config, dir) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("baton incidents: {e}");
                    return ExitCode::from(2);
                }
            };
            match store.list() {
                Ok(v) if json => {
                    println!("{}", serde_json::json!({ "incidents": v }));
                    ExitCode::SUCCESS
                }
                Ok(v) => {
                    print!("{}", crate::observe::incidents::list_text(&v));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("baton incidents: the store cannot be read: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Cmd::Report {
            id,
            config,
            dir,
            out,
        } => {
            let found = incident_store(&config, dir).and_then(|s| s.get(id));
            match found {
                Ok(Some(i)) => {
                    let prefix = out.unwrap_or_else(|| PathBuf::from(format!("incident-{id}")));
                    let md = prefix.with_extension("md");
                    let html = prefix.with_extension("html");
                    if let Err(e) = std::fs::write(&md, crate::observe::incidents::report_md(&i))
                        .and_then(|_| {
                            std::fs::write(&html, crate::observe::incidents::report_html(&i))
                        })
                    {
                        eprintln!("baton report: cannot write {}: {e}", md.display());
                        return ExitCode::from(2);
                    }
                    println!("{}\n{}", md.display(), html.display());
                    ExitCode::SUCCESS
                }
                Ok(None) => {
                    eprintln!("baton report: no incident {id} (`baton incidents` lists them)");
                    ExitCode::from(1)
                }
                Err(e) => {
                    eprintln!("baton report: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Cmd::Logs {
            files,
            json,
            report,
            follow,
        } => ExitCode::from(crate::cli::logs::run(&crate::cli::logs::Options {
            files,
            json,
            report,
            follow,
        })),
        Cmd::Doctor {
            target,
            json,
            timeout,
            idle_wait,
            repeat,
            config: config_file,
            fcgi_ping,
            nameserver,
        } => {
            let (Some(timeout), Some(idle_wait)) = (
                config::parse_duration(&timeout),
                config::parse_duration(&idle_wait),
            ) else {
                eprintln!(
                    "baton doctor: invalid --timeout or --idle-wait: write \"5s\" or \"500ms\""
                );
                return ExitCode::from(2);
            };
            let rt = match runtime(1) {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("baton: cannot start the runtime: {e}");
                    return ExitCode::from(2);
                }
            };
            let mut nameservers = Vec::new();
            for n in &nameserver {
                match n
                    .parse::<std::net::SocketAddr>()
                    .or_else(|_| n.parse::<std::net::IpAddr>().map(|ip| (ip, 53).into()))
                {
                    Ok(a) => nameservers.push(a.to_string()),
                    Err(_) => {
                        eprintln!(
                            "baton doctor: --nameserver {n}: write an IP address, e.g. 127.0.0.53 or 10.0.0.2:53"
                        );
                        return ExitCode::from(2);
                    }
                }
            }
            let mut opts = crate::cli::doctor::Options {
                timeout,
                idle_wait,
                ping_path: fcgi_ping,
                nameservers,
            };
            if let Some(file) = config_file {
                let cfg = match config::load(&file) {
                    Ok(c) => c,
                    Err(e) => {
                        eprint!("{e}");
                        return ExitCode::from(2);
                    }
                };
                // The nameservers baton itself would ask.
                if opts.nameservers.is_empty() {
                    opts.nameservers = cfg
                        .resolver
                        .nameservers
                        .iter()
                        .map(|a| a.to_string())
                        .collect();
                }
                let mut worst = 0;
                let mut all = Vec::new();
                // The config's own findings first: the timeout ladder,
                // header limits, shadowed routes (as `baton check`).
                let ladder: Vec<String> = crate::cli::check::findings(&cfg, false)
                    .iter()
                    .map(|f| {
                        format!(
                            "{}:{}: {}: {} (fix: {})",
                            f.line, f.col, f.key, f.message, f.fix
                        )
                    })
                    .collect();
                if !ladder.is_empty() {
                    worst = 1;
                }
                if !json {
                    for f in &ladder {
                        println!("config: {f}");
                    }
                }
                for t in crate::cli::doctor::config_targets(&cfg) {
                    let r = match rt.block_on(crate::cli::doctor::run(&t.target, &opts)) {
                        Ok(r) => r,
                        Err(e) => {
                            eprintln!("baton doctor: {}: {e}", t.target);
                            worst = 2;
                            continue;
                        }
                    };
                    let mut findings = crate::cli::doctor::config_findings(&t, &r);
                    // A FastCGI upstream is meant to speak FastCGI.
                    let code = if t.fastcgi && r.fastcgi {
                        0
                    } else {
                        r.exit_code()
                    };
                    if !findings.is_empty() {
                        worst = worst.max(1);
                    }
                    worst = worst.max(code);
                    if json {
                        let mut v = r.json();
                        v["upstream"] = serde_json::json!(t.upstream);
                        v["findings"] = serde_json::json!(findings);
                        all.push(v);
                    } else {
                        println!("[upstreams.{}]", t.upstream);
                        print!("{}", r.render(crate::cli::term::Paint::stdout()));
                        for f in findings.drain(..) {
                            println!("finding: {f}");
                        }
                    }
                }
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"config": file.display().to_string(), "config_findings": ladder, "servers": all})
                    );
                }
                return ExitCode::from(worst);
            }
            let Some(target) = target else {
                eprintln!("baton doctor: give a target or --config");
                return ExitCode::from(2);
            };
            let mut runs = Vec::new();
            for i in 0..repeat.max(1) {
                // The idle keep-alive watch once is enough.
                let wait = if i == 0 { idle_wait } else { Duration::ZERO };
                let o = crate::cli::doctor::Options {
                    idle_wait: wait,
                    ..opts.clone()
                };
                match rt.block_on(crate::cli::doctor::run(&target, &o)) {
                    Ok(r) => {
                        if !json {
                            print!("{}", r.render(crate::cli::term::Paint::stdout()));
                        }
                        runs.push(r);
                    }
                    Err(e) => {
                        eprintln!("baton doctor: {e}");
                        return ExitCode::from(2);
                    }
                }
            }
            if json {
                let v = if runs.len() == 1 {
                    runs[0].json()
                } else {
                    serde_json::json!({
                        "target": target,
                        "runs": runs.iter().map(|r| r.json()).collect::<Vec<_>>(),
                        "summary": crate::cli::doctor::summary(&runs),
                    })
                };
                println!("{v}");
            } else if runs.len() > 1 {
                print!("{}", crate::cli::doctor::summary_text(&runs));
            }
            ExitCode::from(runs.iter().map(|r| r.exit_code()).max().unwrap_or(0))
        }
        Cmd::Causes => {
            print!("{}", crate::core::cause::Cause::markdown_table());
            ExitCode::SUCCESS
        }
    }
}

/// The incident store in `dir`, or else the one named by the config's
/// `[incidents] dir`.
fn incident_store(
    config: &std::path::Path,
    dir: Option<PathBuf>,
) -> Result<crate::observe::incidents::Store, String> {
    let dir = match dir {
        Some(d) => d,
        None => config::load(config)
            .map_err(|e| e.to_string())?
            .incidents
            .dir
            .ok_or("the config has no [incidents] dir: incidents are not recorded")?,
    };
    crate::observe::incidents::Store::open_existing(&dir)
}

/// Ctrl-C or SIGTERM.
pub async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}
