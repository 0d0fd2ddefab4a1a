//! The command line: `baton serve`, `check`, `demo`, `causes`, `doctor`,
//! `logs`, `incidents` and `report`, one file each under `cli/` (the tools
//! `check`, `doctor` and `logs` use the library; nothing on the request
//! path imports them).
//!
//! Owns: argument parsing, the tokio runtime, process signals and exit
//! codes; errors become a message on stderr and an exit code here.

pub mod check;
pub mod demo;
pub mod doctor;
mod import;
mod incidents;
pub mod logs;
mod reload;
mod serve;
pub mod term;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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

/// `baton doctor`'s arguments.
#[derive(clap::Args)]
pub struct DoctorArgs {
    /// `https://host/path`, `host:port` or `unix:/path/to.sock`.
    #[arg(required_unless_present = "config")]
    pub target: Option<String>,
    /// Walk every server of every upstream in this config instead.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
    /// Per step.
    #[arg(long, default_value = "5s")]
    pub timeout: String,
    /// How long to watch an idle kept-alive connection for the server
    /// closing it ("0s" skips the step).
    #[arg(long, default_value = "6s")]
    pub idle_wait: String,
    /// Walk N times (intermittent failures) and summarise what varied.
    #[arg(long, default_value_t = 1)]
    pub repeat: u32,
    /// The path requested from a FastCGI server (PHP-FPM's ping.path).
    #[arg(long, default_value = "/ping")]
    pub fcgi_ping: String,
    /// Ask this nameserver (`ip` or `ip:port`, repeatable) instead of
    /// those in /etc/resolv.conf; the system resolver is asked too.
    #[arg(long)]
    pub nameserver: Vec<String>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway.
    Serve {
        #[arg(long, short, default_value = "baton.toml")]
        config: PathBuf,
    },
    /// Reload the running gateway's config (as `nginx -s reload`): the file
    /// is checked first; then the gateway is asked through its admin
    /// address (and says what changed), or sent SIGHUP when it has none.
    /// Exit 0: reloaded (or signalled), 1: the file or the gateway refused,
    /// 2: no running gateway found.
    Reload {
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
    /// Read an nginx or Apache config (includes, server blocks or
    /// virtual hosts, locations, upstreams) and write a baton.toml, with a
    /// report of each directive: mapped, approximated or not mapped, and
    /// why. Exit 0: written and it loads, 1: written but `baton check`
    /// finds errors, 2: could not read.
    Import {
        /// `nginx` or `apache`.
        server: String,
        /// nginx.conf or a site's file (sites-available/...); Apache's
        /// vhost files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Write the config here instead of stdout.
        #[arg(long, short)]
        out: Option<PathBuf>,
        /// Write the report here instead of stderr.
        #[arg(long)]
        report: Option<PathBuf>,
        /// Listen here instead of the imported addresses (to try it
        /// beside the server it came from); repeatable.
        #[arg(long)]
        listen: Vec<String>,
        /// HTTPS listen addresses instead of the imported ones.
        #[arg(long)]
        listen_tls: Vec<String>,
    },
    /// Walk an upstream step by step (socket, DNS, connect, TLS, HTTP) and
    /// say what is wrong and how to fix it. Exit 0: nothing wrong, 1: a
    /// problem found, 2: could not run.
    Doctor(DoctorArgs),
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

/// A tokio runtime (`workers` 0: one per core, 1: current thread), or the
/// exit code `fail` after saying why.
pub(crate) fn runtime(workers: usize, fail: u8) -> Result<tokio::runtime::Runtime, ExitCode> {
    build_runtime(workers).map_err(|e| {
        eprintln!("baton: cannot start the runtime: {e}");
        ExitCode::from(fail)
    })
}

fn build_runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
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

/// Baton's own lines at `info` and above unless `BATON_LOG` says
/// otherwise; rustls's only at `error`. Each of rustls's warnings on a
/// server is about one connection and what its client chose to send (an
/// IP address as SNI, as wrk and many scanners send it; a warning alert;
/// an out-of-order message): at `warn` any client could have baton write
/// a line for every connection it opens. Baton counts failed handshakes
/// itself, by reason (`baton_tls_handshake_failures_total`).
const DEFAULT_LOG_FILTER: &str = "info,rustls=error";

pub(crate) fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .event_format(crate::observe::log::OneShape)
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BATON_LOG")
                .unwrap_or_else(|_| DEFAULT_LOG_FILTER.into()),
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
        } => ExitCode::from(check::run(&config, !offline, json)),
        Cmd::Serve { config } => serve::run(&config),
        Cmd::Reload { config } => reload::run(&config),
        Cmd::Demo { listen, self_test } => {
            let rt = match runtime(0, 1) {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            rt.block_on(demo::run(listen, self_test))
        }
        Cmd::Incidents { config, dir, json } => incidents::list(&config, dir, json),
        Cmd::Report {
            id,
            config,
            dir,
            out,
        } => incidents::report(id, &config, dir, out),
        Cmd::Logs {
            files,
            json,
            report,
            follow,
        } => ExitCode::from(logs::run(&logs::Options {
            files,
            json,
            report,
            follow,
        })),
        Cmd::Doctor(args) => doctor::command::run(args),
        Cmd::Import {
            server,
            files,
            out,
            report,
            listen,
            listen_tls,
        } => ExitCode::from(import::run(&import::Options {
            kind: server,
            files,
            out,
            report,
            listen,
            listen_tls,
        })),
        Cmd::Causes => {
            print!("{}", crate::core::cause::Cause::markdown_table());
            ExitCode::SUCCESS
        }
    }
}

/// Ctrl-C or SIGTERM.
pub async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}
