//! The one config loader.
//!
//! Owns: reading `baton.toml` and turning it into a validated [`Config`], the
//! only configuration type the rest of baton sees. Two layers, as in river:
//! a serde layer (`raw`) that mirrors the file with `deny_unknown_fields` and
//! keeps spans, and a validation pass that reports *every* problem at once,
//! each naming its key, line:column and a fix.
//!
//! Must not: panic on any input, touch the network, or start anything.
//! `check`, `serve` and `demo` all go through [`parse`].

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: Vec<SocketAddr>,
    pub admin: Option<SocketAddr>,
    /// Worker threads; 0 means one per CPU core.
    pub workers: usize,
    pub limits: ClientLimits,
    pub log: LogConfig,
    pub resolver: ResolverConfig,
    pub pages: PageTemplates,
    pub upstreams: Vec<Arc<UpstreamConfig>>,
    pub routes: Vec<Route>,
    /// The file this came from (reload reads it again).
    pub source: Option<PathBuf>,
    /// The config text as loaded, secrets hidden (the dashboard shows it).
    pub shown: String,
    /// Valid, but likely to cause 502s: shadowed routes, small header
    /// limits, timeouts that never fire (`baton check` lists them).
    pub warnings: Vec<ConfigError>,
    /// Where keys are in the file (line, column), for findings made after
    /// loading: `baton check`'s live probes of `upstreams.NAME.servers[i]`
    /// and `upstreams.NAME.health.path`.
    pub places: HashMap<String, (usize, usize)>,
    /// `server.outer_idle_timeout`: the idle timeout of a load balancer in
    /// front of baton (AWS ALB 60 s), checked against baton's timeouts.
    pub outer_idle_timeout: Option<Duration>,
    /// `[incidents]`: recorded when `dir` is set.
    pub incidents: IncidentConfig,
    /// `server.admin_token`: required by every admin request when set
    /// (and it must be set when the admin address is off loopback).
    pub admin_token: Option<String>,
    /// `server.status_page`: a path on every listener answering whether
    /// the site's backends are up (linked from error pages).
    pub status_page: Option<String>,
    /// `server.dashboard_actions`: the dashboard shows drain/undrain and
    /// reload buttons (it is read-only otherwise).
    pub dashboard_actions: bool,
    /// `[alerts]`: where incident alerts go.
    pub alerts: AlertConfig,
}

/// `[incidents]`: when an upstream's failures open an incident, and where
/// incidents are kept.
#[derive(Debug, Clone, PartialEq)]
pub struct IncidentConfig {
    /// Where incidents are recorded; without it they are detected, shown
    /// and alerted, not kept.
    pub dir: Option<PathBuf>,
    /// Share of an upstream's requests failing over `window` (0..1).
    pub error_rate: f64,
    /// Requests over `window` below which no rate opens an incident.
    pub min_requests: u64,
    pub window: Duration,
    /// Below half the error rate for this long: the incident closes.
    pub recover_after: Duration,
    pub max_age: Duration,
    pub max_incidents: u64,
}

/// `[alerts]`: a webhook and/or a command on incident open and close.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AlertConfig {
    pub webhook: Option<http::Uri>,
    /// Slack's `{"text": ...}` shape instead of baton's JSON.
    pub slack: bool,
    /// Extra roots for an https webhook (a private CA).
    pub webhook_ca: Vec<rustls::pki_types::CertificateDer<'static>>,
    pub command: Option<String>,
    /// At most one "opened" alert per upstream in this time.
    pub min_interval: Duration,
}

impl Config {
    /// Line and column of `key` (0, 0 when it is not in the file).
    pub fn place(&self, key: &str) -> (usize, usize) {
        self.places.get(key).copied().unwrap_or((0, 0))
    }
}

/// Protection against clients: slowloris, huge heads and bodies, floods.
#[derive(Debug, Clone)]
pub struct ClientLimits {
    /// Time to receive a request head (and between keep-alive requests).
    pub header_read_timeout: Duration,
    /// Largest request head; larger gets 431.
    pub max_request_header_bytes: usize,
    /// Largest request body by `Content-Length`; larger gets 413.
    pub max_body_bytes: Option<u64>,
    /// Client connections per worker beyond which new ones are closed.
    pub max_connections: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    Off,
    Stdout,
    Stderr,
    File(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessFormat {
    Json,
    /// The NCSA combined format, which GoAccess and most log tools read.
    Combined,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub access: LogTarget,
    pub access_format: AccessFormat,
    pub errors: LogTarget,
}

#[derive(Debug, Clone)]
pub struct ResolverConfig {
    /// Empty means the system's `/etc/resolv.conf`.
    pub nameservers: Vec<SocketAddr>,
    pub timeout: Duration,
    pub attempts: usize,
    /// Answers are cached for their TTL, clamped to [min_ttl, max_ttl].
    pub min_ttl: Duration,
    pub max_ttl: Duration,
}

/// Operator-supplied error page templates (file contents), if any.
#[derive(Debug, Clone, Default)]
pub struct PageTemplates {
    pub html: Option<Arc<str>>,
    pub json: Option<Arc<str>>,
    pub text: Option<Arc<str>>,
}

/// Where an upstream server lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
    /// A host name, resolved with hickory when connecting.
    Name {
        host: String,
        port: u16,
    },
}

impl fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerAddr::Tcp(a) => write!(f, "{a}"),
            ServerAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            ServerAddr::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: Arc<str>,
    pub servers: Vec<ServerSpec>,
    pub balance: Balance,
    /// Active health checks, when configured.
    pub health: Option<HealthConfig>,
    /// Passive outlier ejection (on by default).
    pub outlier: OutlierConfig,
    /// At most this many requests in flight to the upstream (None: no limit).
    pub max_concurrent: Option<usize>,
    /// Planned downtime of the whole upstream (as a route's `maintenance`).
    pub maintenance: Option<Maintenance>,
    /// Requests that may wait for a free slot beyond `max_concurrent`.
    pub queue: usize,
    /// Adaptive concurrency (AIMD on response-head latency), within
    /// [min, max_concurrent].
    pub adaptive: Option<Adaptive>,
    pub queue_timeout: Duration,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub max_response_header_bytes: usize,
    pub retries: u32,
    /// Pooled connections idle longer than this are closed before reuse.
    pub keepalive_timeout: Duration,
    pub max_idle_per_server: usize,
    /// Request bodies up to this size are buffered so a retry can replay them.
    pub replay_buffer_bytes: usize,
    /// TLS to the servers, when enabled.
    pub tls: Option<UpstreamTls>,
    /// `protocol = "fastcgi"`: the document root, try_files and params.
    pub fastcgi: Option<Arc<FastCgiConfig>>,
    /// `[upstreams.NAME.process]`: a backend baton starts and supervises.
    pub process: Option<Arc<ProcessConfig>>,
}

/// A FastCGI upstream (PHP-FPM): where scripts and static files live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FastCgiConfig {
    /// Document root: SCRIPT_FILENAME and static files (absolute).
    pub root: PathBuf,
    /// Directory index (`index.php`).
    pub index: String,
    /// nginx-style list: `$uri`, `$uri/`, and a last entry that is a
    /// fallback URI (`/index.php?$args`) or `=404`.
    pub try_files: Vec<String>,
    /// Paths ending in this (or followed by `/`) are scripts.
    pub script_ext: String,
    /// Extra parameters (`fastcgi_param`), sent after the standard ones.
    pub params: Vec<(String, String)>,
    /// `Cache-Control: max-age` for static files (0: `no-cache`).
    pub static_max_age: Duration,
}

/// `[upstreams.NAME.process]`: a supervised backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessConfig {
    pub command: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
    /// Run as this user (and its groups) when baton runs as root.
    pub user: Option<RunAs>,
    pub ready: Readiness,
    /// How long a start may take to become ready before it counts as failed.
    pub ready_timeout: Duration,
    pub restart: RestartPolicy,
    pub backoff: Duration,
    pub backoff_max: Duration,
    /// This many exits within `crash_loop_window` is a crash loop.
    pub crash_loop_exits: u32,
    pub crash_loop_window: Duration,
    /// How long requests wait for a (re)starting backend before 503.
    pub start_wait: Duration,
    /// Signal asking the process to stop (PHP-FPM: QUIT is graceful).
    pub stop_signal: i32,
    pub stop_timeout: Duration,
    /// Restart when every server has failed its health checks this long.
    pub unhealthy_restart: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// The Unix socket exists and accepts a connection.
    Socket(PathBuf),
    /// The TCP port accepts a connection.
    Port(SocketAddr),
    /// The upstream's active health check passes.
    Health,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

/// AIMD: the limit grows by one per `limit` answers faster than `target`
/// and shrinks by a quarter on a slower one (at most once per `target`).
#[derive(Debug, Clone)]
pub struct Adaptive {
    pub target: Duration,
    pub min: usize,
}

/// One entry of `servers`: `"ADDRESS [weight=N] [backup]"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    pub addr: ServerAddr,
    pub weight: u32,
    /// Gets traffic only when no primary server is usable.
    pub backup: bool,
}

/// How an upstream spreads requests over its usable servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Balance {
    /// Weighted round robin.
    RoundRobin,
    /// Power of two choices on requests in flight.
    LeastRequest,
    /// Consistent hashing on a request key; few keys move when a server
    /// comes or goes.
    Hash(HashKey),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    Header(http::HeaderName),
    Cookie(String),
    ClientIp,
}

/// `[upstreams.NAME.health]`: active checks.
#[derive(Debug, Clone)]
pub struct HealthConfig {
    /// `Some(path)`: HTTP GET; `None`: a TCP connect.
    pub path: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    /// Passes in a row before a server gets traffic (at start and after failing).
    pub rise: u32,
    /// Failures in a row before it stops getting traffic.
    pub fall: u32,
    /// Accepted statuses, inclusive.
    pub expect: (u16, u16),
    /// A returning server's share ramps up over this window.
    pub slow_start: Duration,
}

/// `[upstreams.NAME.outlier]`: passive ejection.
#[derive(Debug, Clone)]
pub struct OutlierConfig {
    /// Consecutive failures that eject a server (0 disables ejection).
    pub consecutive_failures: u32,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    /// Never eject more than this share of the pool (percent).
    pub max_ejected_percent: u32,
    /// Also count the application's own 5xx answers as failures.
    pub count_5xx: bool,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(300),
            max_ejected_percent: 50,
            count_5xx: false,
        }
    }
}

/// TLS settings of an upstream (certificates are always verified).
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    /// SNI and the name the certificate must carry; default: the server's
    /// host name or IP address.
    pub server_name: Option<String>,
    /// Extra trust anchors (PEM), on top of the Mozilla roots.
    pub ca: Vec<rustls::pki_types::CertificateDer<'static>>,
}

/// How a route matches the request's host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    Exact(String),
    /// `*.example.com`: any name ending in `.example.com` (stored with the dot).
    Suffix(String),
}

#[derive(Debug, Clone)]
pub struct Route {
    pub host: Option<HostMatch>,
    pub path: String,
    /// Index into [`Config::upstreams`].
    pub upstream: usize,
    /// The route's name in logs and metrics: `host/path`.
    pub name: Arc<str>,
    /// Planned downtime: answer 503 with this message and `Retry-After`.
    pub maintenance: Option<Maintenance>,
    /// Per-client rate limit.
    pub rate_limit: Option<RateLimit>,
    pub retry: RetryPolicy,
}

/// How a route retries (on top of the upstream's `retries`).
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Overrides the upstream's `retries` for this route.
    pub retries: Option<u32>,
    /// Bound on waiting for one attempt's response head; an idempotent
    /// request that hits it goes to another server.
    pub per_try_timeout: Option<Duration>,
    /// Bound on the whole request, retries included.
    pub deadline: Option<Duration>,
    /// Base of the jittered exponential backoff between attempts.
    pub backoff: Duration,
    /// Retries may be at most this percentage of requests (per upstream,
    /// over 10 s), never fewer than `budget_min` per second.
    pub budget_percent: u32,
    pub budget_min: u32,
}

#[derive(Debug, Clone)]
pub struct Maintenance {
    pub message: String,
    pub retry_after: Duration,
}

/// GCRA: `rate` requests per `per`, with bursts up to `burst`.
#[derive(Debug, Clone)]
pub struct RateLimit {
    pub rate: u32,
    pub per: Duration,
    pub burst: u32,
    pub key: RateKey,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateKey {
    ClientIp,
    Header(http::HeaderName),
}

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub line: usize,
    pub col: usize,
    pub message: String,
    pub fix: String,
}

/// Every problem found in a config file, in file order.
#[derive(Debug, Clone)]
pub struct ConfigErrors {
    pub file: String,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        writeln!(
            f,
            "{}: {n} problem{}",
            self.file,
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            writeln!(
                f,
                "{}:{}:{}: {}: {}\n    fix: {}",
                self.file, e.line, e.col, e.key, e.message, e.fix
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

// The serde layer: mirrors the file. Every leaf that validation may complain
// about is `Spanned` so the error can name its line.
mod raw {
    use super::*;

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Server {
        pub listen: Option<Spanned<Vec<Spanned<String>>>>,
        pub admin: Option<Spanned<String>>,
        pub workers: Option<Spanned<i64>>,
        pub header_read_timeout: Option<Spanned<String>>,
        pub outer_idle_timeout: Option<Spanned<String>>,
        pub admin_token: Option<Spanned<String>>,
        pub status_page: Option<Spanned<String>>,
        pub dashboard_actions: Option<bool>,
        pub max_request_header_bytes: Option<Spanned<i64>>,
        pub max_body_bytes: Option<Spanned<i64>>,
        pub max_connections: Option<Spanned<i64>>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Incidents {
        pub dir: Option<Spanned<String>>,
        pub error_rate: Option<Spanned<f64>>,
        pub min_requests: Option<Spanned<i64>>,
        pub window: Option<Spanned<String>>,
        pub recover_after: Option<Spanned<String>>,
        pub max_age: Option<Spanned<String>>,
        pub max_incidents: Option<Spanned<i64>>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Alerts {
        pub webhook: Option<Spanned<String>>,
        pub webhook_ca: Option<Spanned<String>>,
        pub format: Option<Spanned<String>>,
        pub command: Option<Spanned<String>>,
        pub min_interval: Option<Spanned<String>>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Log {
        pub access: Option<Spanned<String>>,
        pub access_format: Option<Spanned<String>>,
        pub errors: Option<Spanned<String>>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Resolver {
        pub nameservers: Option<Vec<Spanned<String>>>,
        pub timeout: Option<Spanned<String>>,
        pub attempts: Option<Spanned<i64>>,
        pub min_ttl: Option<Spanned<String>>,
        pub max_ttl: Option<Spanned<String>>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct ErrorPages {
        pub html: Option<Spanned<String>>,
        pub json: Option<Spanned<String>>,
        pub text: Option<Spanned<String>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Upstream {
        pub servers: Spanned<Vec<Spanned<String>>>,
        pub connect_timeout: Option<Spanned<String>>,
        pub read_timeout: Option<Spanned<String>>,
        pub app_timeout: Option<Spanned<String>>,
        pub write_timeout: Option<Spanned<String>>,
        pub max_response_header_bytes: Option<Spanned<i64>>,
        pub retries: Option<Spanned<i64>>,
        pub keepalive_timeout: Option<Spanned<String>>,
        pub max_idle_per_server: Option<Spanned<i64>>,
        pub replay_buffer_bytes: Option<Spanned<i64>>,
        pub tls: Option<Spanned<bool>>,
        pub tls_server_name: Option<Spanned<String>>,
        pub tls_ca: Option<Spanned<String>>,
        pub balance: Option<Spanned<String>>,
        pub hash_key: Option<Spanned<String>>,
        pub health: Option<Health>,
        pub outlier: Option<Outlier>,
        pub max_concurrent: Option<Spanned<i64>>,
        pub adaptive_latency: Option<Spanned<String>>,
        pub adaptive_min: Option<Spanned<i64>>,
        pub maintenance: Option<Spanned<String>>,
        pub maintenance_retry_after: Option<Spanned<String>>,
        pub queue: Option<Spanned<i64>>,
        pub queue_timeout: Option<Spanned<String>>,
        pub protocol: Option<Spanned<String>>,
        pub root: Option<Spanned<String>>,
        pub index: Option<Spanned<String>>,
        pub try_files: Option<Spanned<Vec<Spanned<String>>>>,
        pub script_ext: Option<Spanned<String>>,
        pub params: Option<Spanned<std::collections::BTreeMap<String, String>>>,
        pub static_max_age: Option<Spanned<String>>,
        pub process: Option<Spanned<Process>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Process {
        pub command: Spanned<String>,
        pub args: Option<Vec<String>>,
        pub env: Option<std::collections::BTreeMap<String, String>>,
        pub cwd: Option<Spanned<String>>,
        pub user: Option<Spanned<String>>,
        pub ready: Option<Spanned<String>>,
        pub ready_timeout: Option<Spanned<String>>,
        pub restart: Option<Spanned<String>>,
        pub backoff: Option<Spanned<String>>,
        pub backoff_max: Option<Spanned<String>>,
        pub crash_loop_exits: Option<Spanned<i64>>,
        pub crash_loop_window: Option<Spanned<String>>,
        pub start_wait: Option<Spanned<String>>,
        pub stop_signal: Option<Spanned<String>>,
        pub stop_timeout: Option<Spanned<String>>,
        pub unhealthy_restart: Option<Spanned<String>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Health {
        pub path: Option<Spanned<String>>,
        pub tcp: Option<bool>,
        pub interval: Option<Spanned<String>>,
        pub timeout: Option<Spanned<String>>,
        pub rise: Option<Spanned<i64>>,
        pub fall: Option<Spanned<i64>>,
        pub expect: Option<Spanned<String>>,
        pub slow_start: Option<Spanned<String>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Outlier {
        pub consecutive_failures: Option<Spanned<i64>>,
        pub base_ejection: Option<Spanned<String>>,
        pub max_ejection: Option<Spanned<String>>,
        pub max_ejected_percent: Option<Spanned<i64>>,
        pub count_5xx: Option<bool>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Route {
        pub host: Option<Spanned<String>>,
        pub path: Option<Spanned<String>>,
        pub upstream: Spanned<String>,
        pub maintenance: Option<Spanned<String>>,
        pub maintenance_retry_after: Option<Spanned<String>>,
        pub rate_limit: Option<Spanned<String>>,
        pub rate_limit_burst: Option<Spanned<i64>>,
        pub rate_limit_key: Option<Spanned<String>>,
        pub retries: Option<Spanned<i64>>,
        pub per_try_timeout: Option<Spanned<String>>,
        pub deadline: Option<Spanned<String>>,
        pub retry_backoff: Option<Spanned<String>>,
        pub retry_budget_percent: Option<Spanned<i64>>,
        pub retry_budget_min: Option<Spanned<i64>>,
    }
}

/// Defaults, in one place (docs/config.md lists the same values).
pub mod defaults {
    use std::time::Duration;
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    pub const READ_TIMEOUT: Duration = Duration::from_secs(60);
    pub const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
    pub const MAX_RESPONSE_HEADER_BYTES: usize = 64 * 1024;
    // hyper cannot buffer less than 8 KiB; nginx's smallest default is 4 KiB,
    // which is the usual source of "upstream sent too big header".
    pub const MIN_RESPONSE_HEADER_BYTES: usize = 8 * 1024;
    pub const RETRIES: u32 = 1;
    // Also the keep-alive idle time towards clients (hyper has one timer
    // for both): longer than the usual load balancer in front (AWS ALB
    // 60 s), as nginx's 75 s keepalive_timeout, or the balancer reuses a
    // connection baton just closed and answers 502.
    pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(75);
    // Below Node's 5 s and Puma's 20 s default idle timeouts; gunicorn's 2 s
    // is caught by the pool learning the observed idle close (upstream.rs).
    pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(4);
    pub const MAX_IDLE_PER_SERVER: usize = 256;
    pub const REPLAY_BUFFER_BYTES: usize = 64 * 1024;
    pub const RESOLVER_TIMEOUT: Duration = Duration::from_secs(2);
    pub const RESOLVER_ATTEMPTS: usize = 2;
}

/// gunicorn's worker timeout from a supervised process's arguments
/// (`--timeout N`, `-t N`, `--timeout=N`; 30 s when not given; 0 = none).
fn gunicorn_timeout(p: &ProcessConfig) -> Option<Duration> {
    let is_gunicorn = std::iter::once(&p.command).chain(&p.args).any(|a| {
        a.rsplit('/')
            .next()
            .is_some_and(|b| b.starts_with("gunicorn"))
    });
    if !is_gunicorn {
        return None;
    }
    let mut secs = 30;
    let mut it = p.args.iter();
    while let Some(a) = it.next() {
        let v = if a == "--timeout" || a == "-t" {
            it.next().map(String::as_str)
        } else {
            a.strip_prefix("--timeout=")
        };
        if let Some(n) = v.and_then(|v| v.parse::<u64>().ok()) {
            secs = n;
        }
    }
    (secs > 0).then(|| Duration::from_secs(secs))
}

/// Whether route prefix `a` matches every path prefix `b` matches.
fn path_prefix_covers(a: &str, b: &str) -> bool {
    b.starts_with(a) && (a.ends_with('/') || b.len() == a.len() || b[a.len()..].starts_with('/'))
}

/// Looks a user up in the password database.
pub fn lookup_user(name: &str) -> Option<RunAs> {
    let u = nix::unistd::User::from_name(name).ok()??;
    Some(RunAs {
        name: name.to_string(),
        uid: u.uid.as_raw(),
        gid: u.gid.as_raw(),
    })
}

/// `TERM`, `SIGTERM` or a number.
pub fn signal_number(s: &str) -> Option<i32> {
    let n = s.trim().trim_start_matches("SIG");
    Some(match n {
        "TERM" => libc::SIGTERM,
        "QUIT" => libc::SIGQUIT,
        "INT" => libc::SIGINT,
        "HUP" => libc::SIGHUP,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        other => other.parse().ok().filter(|n| (1..32).contains(n))?,
    })
}

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let name = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(src) => parse(&src, &name, path.parent()).map(|mut c| {
            c.source = Some(path.to_path_buf());
            c
        }),
        Err(e) => Err(ConfigErrors {
            file: name,
            errors: vec![ConfigError {
                key: "(file)".into(),
                line: 0,
                col: 0,
                message: format!("cannot read the config file: {e}"),
                fix:
                    "pass an existing file with --config, or create baton.toml (see docs/config.md)"
                        .into(),
            }],
        }),
    }
}

/// Parses and validates config text. `base` resolves relative file paths.
pub fn parse(src: &str, file: &str, base: Option<&Path>) -> Result<Config, ConfigErrors> {
    let mut v = Validator {
        src,
        base: base.map(Path::to_path_buf),
        errors: Vec::new(),
        warnings: Vec::new(),
        places: HashMap::new(),
    };
    let cfg = v.run();
    if v.errors.is_empty()
        && let Some(mut cfg) = cfg
    {
        cfg.shown = shown(src);
        return Ok(cfg);
    }
    v.errors.sort_by_key(|e| (e.line, e.col));
    Err(ConfigErrors {
        file: file.to_string(),
        errors: v.errors,
    })
}

/// The config as loaded, for the dashboard, with what could be a secret
/// hidden: `admin_token`, the alert command, every `env` value, any key
/// naming a token, secret, password or key (FastCGI params too), and the
/// alert webhook's path and query (where hooks keep theirs).
fn shown(src: &str) -> String {
    fn walk(t: &mut toml::Table, section: &str) {
        for (k, v) in t.iter_mut() {
            let lower = k.to_ascii_lowercase();
            let secret = ["token", "secret", "password", "passwd", "api_key", "apikey"]
                .iter()
                .any(|w| lower.contains(w))
                || (section == "alerts" && k == "command");
            if secret {
                *v = toml::Value::String("(hidden)".into());
            } else if k == "webhook"
                && let Some(u) = v.as_str().and_then(|u| u.parse::<http::Uri>().ok())
            {
                *v = toml::Value::String(crate::core::text::shown_url(&u));
            } else if k == "env"
                && let Some(env) = v.as_table_mut()
            {
                for (_, e) in env.iter_mut() {
                    *e = toml::Value::String("(hidden)".into());
                }
            } else if let Some(inner) = v.as_table_mut() {
                walk(inner, k);
            } else if let Some(list) = v.as_array_mut() {
                for item in list.iter_mut() {
                    if let Some(inner) = item.as_table_mut() {
                        walk(inner, k);
                    }
                }
            }
        }
    }
    match src.parse::<toml::Table>() {
        Ok(mut t) => {
            walk(&mut t, "");
            toml::to_string_pretty(&t).unwrap_or_default()
        }
        Err(_) => String::new(),
    }
}

struct Validator<'s> {
    src: &'s str,
    base: Option<PathBuf>,
    errors: Vec<ConfigError>,
    /// Valid but likely to cause 502s (`baton check` prints them).
    warnings: Vec<ConfigError>,
    places: HashMap<String, (usize, usize)>,
}

type Span = std::ops::Range<usize>;

impl<'s> Validator<'s> {
    fn pos(&self, offset: usize) -> (usize, usize) {
        let before = &self.src[..offset.min(self.src.len())];
        let line = before.matches('\n').count() + 1;
        let col = before
            .rfind('\n')
            .map_or(before.len(), |i| before.len() - i - 1)
            + 1;
        (line, col)
    }

    fn located(&self, key: String, span: Span, message: String, fix: &str) -> ConfigError {
        let (line, col) = self.pos(span.start);
        ConfigError {
            key,
            line,
            col,
            message,
            fix: fix.to_string(),
        }
    }

    fn place(&mut self, key: String, span: Span) {
        let at = self.pos(span.start);
        self.places.insert(key, at);
    }

    fn warn(&mut self, key: impl Into<String>, span: Span, message: impl Into<String>, fix: &str) {
        let w = self.located(key.into(), span, message.into(), fix);
        self.warnings.push(w);
    }

    fn err(&mut self, key: impl Into<String>, span: Span, message: impl Into<String>, fix: &str) {
        let e = self.located(key.into(), span, message.into(), fix);
        self.errors.push(e);
    }

    /// Deserializes one section, turning a serde error into a located one.
    fn section<T: for<'de> Deserialize<'de>>(
        &mut self,
        key: &str,
        value: Spanned<toml::de::DeValue<'s>>,
    ) -> Option<T> {
        let span = value.span();
        match T::deserialize(serde::de::IntoDeserializer::into_deserializer(value)) {
            Ok(t) => Some(t),
            Err(e) => {
                let span = e.span().unwrap_or(span);
                let msg = e.message().trim().to_string();
                let (key, fix) = explain_serde_error(key, &msg, &self.src[span.clone()]);
                self.err(key, span, msg, &fix);
                None
            }
        }
    }

    fn duration(&mut self, key: &str, v: &Option<Spanned<String>>, default: Duration) -> Duration {
        let Some(v) = v else { return default };
        match parse_duration(v.get_ref()) {
            Some(d) if !d.is_zero() => d,
            Some(_) => {
                self.err(
                    key,
                    v.span(),
                    "a duration of zero disables nothing and breaks every request",
                    "use a positive duration such as \"2s\"",
                );
                default
            }
            None => {
                self.err(
                    key,
                    v.span(),
                    format!("invalid duration {:?}", v.get_ref()),
                    "write a number with a unit: \"500ms\", \"2s\", \"1m\", \"1h\"",
                );
                default
            }
        }
    }

    fn int(
        &mut self,
        key: &str,
        v: &Option<Spanned<i64>>,
        min: i64,
        max: i64,
        default: i64,
        fix: &str,
    ) -> i64 {
        let Some(v) = v else { return default };
        let n = *v.get_ref();
        if n < min || n > max {
            self.err(
                key,
                v.span(),
                format!("{n} is out of range ({min}..={max})"),
                fix,
            );
            return default;
        }
        n
    }

    fn socket_addr(&mut self, key: &str, v: &Spanned<String>) -> Option<SocketAddr> {
        match v.get_ref().parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.err(
                    key,
                    v.span(),
                    format!("{:?} is not an IP address with a port", v.get_ref()),
                    "write \"127.0.0.1:8080\" or \"[::1]:8080\"",
                );
                None
            }
        }
    }

    fn log_target(
        &mut self,
        key: &str,
        v: &Option<Spanned<String>>,
        default: LogTarget,
    ) -> LogTarget {
        let Some(v) = v else { return default };
        match v.get_ref().as_str() {
            "off" => LogTarget::Off,
            "stdout" => LogTarget::Stdout,
            "stderr" => LogTarget::Stderr,
            "" => {
                self.err(
                    key,
                    v.span(),
                    "empty log target",
                    "use \"off\", \"stdout\", \"stderr\" or a file path",
                );
                default
            }
            p => LogTarget::File(self.path(p)),
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        let p = PathBuf::from(p);
        match &self.base {
            Some(b) if p.is_relative() => b.join(p),
            _ => p,
        }
    }

    fn template(&mut self, key: &str, v: &Option<Spanned<String>>) -> Option<Arc<str>> {
        let v = v.as_ref()?;
        let path = self.path(v.get_ref());
        match std::fs::read_to_string(&path) {
            Ok(s) => Some(s.into()),
            Err(e) => {
                self.err(
                    key,
                    v.span(),
                    format!("cannot read template {}: {e}", path.display()),
                    "give a readable file; relative paths are relative to the config file",
                );
                None
            }
        }
    }

    fn upstream_tls(
        &mut self,
        key: &dyn Fn(&str) -> String,
        u: &raw::Upstream,
        servers: &[ServerAddr],
    ) -> Option<UpstreamTls> {
        let on = u.tls.as_ref().is_some_and(|t| *t.get_ref());
        if !on {
            for (k, v) in [
                ("tls_server_name", u.tls_server_name.as_ref()),
                ("tls_ca", u.tls_ca.as_ref()),
            ] {
                if let Some(v) = v {
                    self.err(
                        key(k),
                        v.span(),
                        format!("{k} is set but tls is not enabled"),
                        "add `tls = true` to this upstream, or remove the key",
                    );
                }
            }
            return None;
        }
        let server_name = u.tls_server_name.as_ref().map(|n| n.get_ref().clone());
        if let Some(n) = &u.tls_server_name
            && rustls::pki_types::ServerName::try_from(n.get_ref().as_str()).is_err()
        {
            self.err(
                key("tls_server_name"),
                n.span(),
                format!("{:?} is not a valid server name", n.get_ref()),
                "use the DNS name on the upstream's certificate",
            );
        }
        if server_name.is_none() && servers.iter().any(|s| matches!(s, ServerAddr::Unix(_))) {
            let span = u.tls.as_ref().map_or(0..0, |t| t.span());
            self.err(
                key("tls"),
                span,
                "TLS over a Unix socket needs the name to verify",
                "add tls_server_name = \"NAME ON THE CERTIFICATE\"",
            );
        }
        let ca = u
            .tls_ca
            .as_ref()
            .map(|c| self.pem_certs(key("tls_ca"), c))
            .unwrap_or_default();
        Some(UpstreamTls { server_name, ca })
    }

    /// `protocol`, and for FastCGI its root, index, try_files and params.
    fn fastcgi(
        &mut self,
        key: &dyn Fn(&str) -> String,
        u: &raw::Upstream,
        tls: &Option<UpstreamTls>,
    ) -> Option<Arc<FastCgiConfig>> {
        let fcgi = match &u.protocol {
            None => false,
            Some(p) => match p.get_ref().as_str() {
                "http" => false,
                "fastcgi" => true,
                other => {
                    self.err(
                        key("protocol"),
                        p.span(),
                        format!("unknown protocol {other:?}"),
                        "use \"http\" (the default) or \"fastcgi\" (PHP-FPM)",
                    );
                    false
                }
            },
        };
        if !fcgi {
            let only: [(&str, Option<Span>); 6] = [
                ("root", u.root.as_ref().map(|v| v.span())),
                ("index", u.index.as_ref().map(|v| v.span())),
                ("try_files", u.try_files.as_ref().map(|v| v.span())),
                ("script_ext", u.script_ext.as_ref().map(|v| v.span())),
                ("params", u.params.as_ref().map(|v| v.span())),
                (
                    "static_max_age",
                    u.static_max_age.as_ref().map(|v| v.span()),
                ),
            ];
            for (k, span) in only {
                if let Some(span) = span {
                    self.err(
                        key(k),
                        span,
                        format!("{k} only applies to FastCGI upstreams"),
                        "add protocol = \"fastcgi\" to this upstream, or remove the key",
                    );
                }
            }
            return None;
        }
        if let Some(t) = &u.tls
            && tls.is_some()
        {
            self.err(
                key("tls"),
                t.span(),
                "FastCGI over TLS is not supported",
                "remove tls; PHP-FPM listens on a Unix socket or a local port",
            );
        }
        let root = match &u.root {
            None => {
                let span = u.protocol.as_ref().map_or(0..0, |p| p.span());
                self.err(
                    key("root"),
                    span,
                    "a FastCGI upstream needs its document root",
                    "add root = \"/var/www/html\" (the path PHP-FPM sees, for SCRIPT_FILENAME)",
                );
                PathBuf::new()
            }
            Some(r) => {
                let p = self.path(r.get_ref());
                if !p.is_dir() {
                    self.err(
                        key("root"),
                        r.span(),
                        format!("{} is not a directory", p.display()),
                        "give the site's document root (where index.php is)",
                    );
                }
                p
            }
        };
        let index = u
            .index
            .as_ref()
            .map_or_else(|| "index.php".to_string(), |i| i.get_ref().clone());
        if index.contains('/') || index.is_empty() {
            let span = u.index.as_ref().map_or(0..0, |i| i.span());
            self.err(
                key("index"),
                span,
                format!("index {index:?} must be a file name"),
                "write index = \"index.php\"",
            );
        }
        let try_files = match &u.try_files {
            None => vec![
                "$uri".to_string(),
                "$uri/".to_string(),
                format!("/{index}?$args"),
            ],
            Some(list) => {
                let v: Vec<String> = list.get_ref().iter().map(|e| e.get_ref().clone()).collect();
                for (i, e) in list.get_ref().iter().enumerate() {
                    let s = e.get_ref();
                    let last = i + 1 == v.len();
                    let ok = if let Some(code) = s.strip_prefix('=') {
                        last && code.parse::<u16>().is_ok_and(|c| (400..600).contains(&c))
                    } else {
                        s.starts_with('/') || s.starts_with("$uri")
                    };
                    if !ok {
                        self.err(
                            key("try_files"),
                            e.span(),
                            format!("invalid try_files entry {s:?}"),
                            "entries are \"$uri\", \"$uri/\" or a path; the last may be \"/index.php?$args\" or \"=404\"",
                        );
                    }
                }
                if v.is_empty() {
                    self.err(
                        key("try_files"),
                        list.span(),
                        "try_files is empty",
                        "write try_files = [\"$uri\", \"$uri/\", \"/index.php?$args\"]",
                    );
                }
                v
            }
        };
        let script_ext = u
            .script_ext
            .as_ref()
            .map_or_else(|| ".php".to_string(), |e| e.get_ref().clone());
        if !script_ext.starts_with('.') || script_ext.len() < 2 {
            let span = u.script_ext.as_ref().map_or(0..0, |e| e.span());
            self.err(
                key("script_ext"),
                span,
                format!("{script_ext:?} is not a file extension"),
                "write script_ext = \".php\"",
            );
        }
        let params = u.params.as_ref().map_or_else(Vec::new, |p| {
            p.get_ref()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        });
        let static_max_age = self.duration(
            &key("static_max_age"),
            &u.static_max_age,
            Duration::from_secs(3600),
        );
        Some(Arc::new(FastCgiConfig {
            root,
            index,
            try_files,
            script_ext,
            params,
            static_max_age,
        }))
    }

    /// `[upstreams.NAME.process]`.
    fn process(
        &mut self,
        key: &dyn Fn(&str) -> String,
        p: &Spanned<raw::Process>,
        servers: &[ServerSpec],
        has_health: bool,
    ) -> Option<Arc<ProcessConfig>> {
        let k = |x: &str| key(&format!("process.{x}"));
        let raw = p.get_ref();
        let command = raw.command.get_ref().clone();
        if command.trim().is_empty() {
            self.err(
                k("command"),
                raw.command.span(),
                "empty command",
                "give the program to run, e.g. command = \"/usr/sbin/php-fpm8.2\"",
            );
        }
        let user = raw
            .user
            .as_ref()
            .and_then(|u| match lookup_user(u.get_ref()) {
                Some(r) => Some(r),
                None => {
                    self.err(
                        k("user"),
                        u.span(),
                        format!("no user named {:?} on this machine", u.get_ref()),
                        "give an existing user (`getent passwd NAME`), e.g. \"www-data\"",
                    );
                    None
                }
            });
        let first = servers.first().map(|s| &s.addr);
        let ready = match raw.ready.as_ref().map(|r| (r.get_ref().as_str(), r.span())) {
            None | Some(("connect", _)) => match first {
                Some(ServerAddr::Unix(p)) => Some(Readiness::Socket(p.clone())),
                Some(ServerAddr::Tcp(a)) => Some(Readiness::Port(*a)),
                _ => None,
            },
            Some(("health", span)) => {
                if !has_health {
                    self.err(
                        k("ready"),
                        span,
                        "ready = \"health\" needs a [health] check on this upstream",
                        "add [upstreams.NAME.health] with a path, or use ready = \"connect\"",
                    );
                }
                Some(Readiness::Health)
            }
            Some((other, span)) => {
                self.err(
                    k("ready"),
                    span,
                    format!("unknown readiness {other:?}"),
                    "use \"connect\" (the socket or port accepts) or \"health\"",
                );
                None
            }
        };
        let ready = ready.unwrap_or_else(|| {
            if servers.len() != 1 || !matches!(first, Some(ServerAddr::Unix(_) | ServerAddr::Tcp(_))) {
                self.err(
                    key("servers"),
                    p.span(),
                    "a supervised process needs exactly one server: the socket or IP:port it listens on",
                    "list the process's own address, e.g. servers = [\"unix:/run/app.sock\"]",
                );
            }
            Readiness::Health
        });
        let restart = match raw
            .restart
            .as_ref()
            .map(|r| (r.get_ref().as_str(), r.span()))
        {
            None | Some(("always", _)) => RestartPolicy::Always,
            Some(("on-failure", _)) => RestartPolicy::OnFailure,
            Some(("never", _)) => RestartPolicy::Never,
            Some((other, span)) => {
                self.err(
                    k("restart"),
                    span,
                    format!("unknown restart policy {other:?}"),
                    "use \"always\", \"on-failure\" or \"never\"",
                );
                RestartPolicy::Always
            }
        };
        let stop_signal = match raw.stop_signal.as_ref() {
            None => libc::SIGTERM,
            Some(s) => match signal_number(s.get_ref()) {
                Some(n) => n,
                None => {
                    self.err(
                        k("stop_signal"),
                        s.span(),
                        format!("unknown signal {:?}", s.get_ref()),
                        "use TERM, QUIT (PHP-FPM's graceful stop), INT or HUP",
                    );
                    libc::SIGTERM
                }
            },
        };
        let cwd = raw.cwd.as_ref().map(|c| {
            let p = self.path(c.get_ref());
            if !p.is_dir() {
                self.err(
                    k("cwd"),
                    c.span(),
                    format!("{} is not a directory", p.display()),
                    "give an existing directory",
                );
            }
            p
        });
        let backoff = self.duration(&k("backoff"), &raw.backoff, Duration::from_millis(500));
        let backoff_max =
            self.duration(&k("backoff_max"), &raw.backoff_max, Duration::from_secs(30));
        Some(Arc::new(ProcessConfig {
            command,
            args: raw.args.clone().unwrap_or_default(),
            env: raw.env.as_ref().map_or_else(Vec::new, |e| {
                e.iter().map(|(a, b)| (a.clone(), b.clone())).collect()
            }),
            cwd,
            user,
            ready,
            ready_timeout: self.duration(
                &k("ready_timeout"),
                &raw.ready_timeout,
                Duration::from_secs(30),
            ),
            restart,
            backoff,
            backoff_max: backoff_max.max(backoff),
            crash_loop_exits: self.int(
                &k("crash_loop_exits"),
                &raw.crash_loop_exits,
                2,
                1000,
                5,
                "use 2 or more",
            ) as u32,
            crash_loop_window: self.duration(
                &k("crash_loop_window"),
                &raw.crash_loop_window,
                Duration::from_secs(60),
            ),
            start_wait: self.duration(&k("start_wait"), &raw.start_wait, Duration::from_secs(10)),
            stop_signal,
            stop_timeout: self.duration(
                &k("stop_timeout"),
                &raw.stop_timeout,
                Duration::from_secs(10),
            ),
            unhealthy_restart: raw.unhealthy_restart.as_ref().map(|_| {
                self.duration(
                    &k("unhealthy_restart"),
                    &raw.unhealthy_restart,
                    Duration::from_secs(30),
                )
            }),
        }))
    }

    fn rate_limit(&mut self, i: usize, r: &raw::Route) -> Option<RateLimit> {
        let spec = r.rate_limit.as_ref()?;
        let key = format!("routes[{i}].rate_limit");
        let parsed = spec.get_ref().split_once('/').and_then(|(n, per)| {
            let n: u32 = n.trim().parse().ok().filter(|n| *n > 0)?;
            let per = match per.trim() {
                "s" => Duration::from_secs(1),
                "m" => Duration::from_secs(60),
                "h" => Duration::from_secs(3600),
                _ => return None,
            };
            Some((n, per))
        });
        let Some((rate, per)) = parsed else {
            self.err(
                key,
                spec.span(),
                format!("invalid rate {:?}", spec.get_ref()),
                "write \"10/s\", \"600/m\" or \"1000/h\"",
            );
            return None;
        };
        let burst = self.int(
            &format!("routes[{i}].rate_limit_burst"),
            &r.rate_limit_burst,
            1,
            1_000_000,
            i64::from(rate),
            "use 1 or more",
        ) as u32;
        let rk = match r.rate_limit_key.as_ref().map(|k| k.get_ref().as_str()) {
            None | Some("client_ip") => RateKey::ClientIp,
            Some(k) => match k
                .strip_prefix("header:")
                .and_then(|h| http::HeaderName::from_bytes(h.trim().as_bytes()).ok())
            {
                Some(h) => RateKey::Header(h),
                None => {
                    let span = r.rate_limit_key.as_ref().map_or(0..0, |k| k.span());
                    self.err(
                        format!("routes[{i}].rate_limit_key"),
                        span,
                        format!("invalid key {k:?}"),
                        "use \"client_ip\" or \"header:NAME\"",
                    );
                    RateKey::ClientIp
                }
            },
        };
        Some(RateLimit {
            rate,
            per,
            burst,
            key: rk,
        })
    }

    fn balance(&mut self, key: &dyn Fn(&str) -> String, u: &raw::Upstream) -> Balance {
        let Some(b) = &u.balance else {
            if let Some(h) = &u.hash_key {
                self.err(
                    key("hash_key"),
                    h.span(),
                    "hash_key is set but balance is not \"hash\"",
                    "add balance = \"hash\"",
                );
            }
            return Balance::RoundRobin;
        };
        match b.get_ref().as_str() {
            "round_robin" => Balance::RoundRobin,
            "least_request" => Balance::LeastRequest,
            "hash" => {
                let Some(h) = &u.hash_key else {
                    self.err(
                        key("balance"),
                        b.span(),
                        "balance = \"hash\" needs a hash_key",
                        "add hash_key = \"header:X-User-Id\", \"cookie:session\" or \"client_ip\"",
                    );
                    return Balance::RoundRobin;
                };
                let v = h.get_ref();
                let k = if v == "client_ip" {
                    Some(HashKey::ClientIp)
                } else if let Some(name) = v.strip_prefix("header:") {
                    http::HeaderName::from_bytes(name.trim().as_bytes())
                        .ok()
                        .map(HashKey::Header)
                } else {
                    v.strip_prefix("cookie:")
                        .filter(|c| !c.trim().is_empty())
                        .map(|c| HashKey::Cookie(c.trim().to_string()))
                };
                match k {
                    Some(k) => Balance::Hash(k),
                    None => {
                        self.err(
                            key("hash_key"),
                            h.span(),
                            format!("invalid hash key {v:?}"),
                            "use \"header:NAME\", \"cookie:NAME\" or \"client_ip\"",
                        );
                        Balance::RoundRobin
                    }
                }
            }
            other => {
                self.err(
                    key("balance"),
                    b.span(),
                    format!("unknown balance {other:?}"),
                    "use \"round_robin\", \"least_request\" or \"hash\"",
                );
                Balance::RoundRobin
            }
        }
    }

    /// `[incidents]`: detection always runs (these defaults without the
    /// section); recording needs `dir`.
    fn incidents(&mut self, r: &raw::Incidents) -> IncidentConfig {
        let error_rate = match &r.error_rate {
            None => 0.2,
            Some(e) if *e.get_ref() > 0.0 && *e.get_ref() <= 1.0 => *e.get_ref(),
            Some(e) => {
                self.err(
                    "incidents.error_rate",
                    e.span(),
                    format!("{} is not a share of requests", e.get_ref()),
                    "write a number above 0 and at most 1, e.g. 0.2 for 20%",
                );
                0.2
            }
        };
        IncidentConfig {
            dir: r.dir.as_ref().map(|d| self.path(d.get_ref())),
            error_rate,
            min_requests: self.int(
                "incidents.min_requests",
                &r.min_requests,
                1,
                1_000_000,
                5,
                "use 1 or more",
            ) as u64,
            window: self.duration("incidents.window", &r.window, Duration::from_secs(30)),
            recover_after: self.duration(
                "incidents.recover_after",
                &r.recover_after,
                Duration::from_secs(30),
            ),
            max_age: self.duration(
                "incidents.max_age",
                &r.max_age,
                Duration::from_secs(90 * 86_400),
            ),
            max_incidents: self.int(
                "incidents.max_incidents",
                &r.max_incidents,
                1,
                10_000_000,
                10_000,
                "use 1 or more",
            ) as u64,
        }
    }

    /// The certificates of a PEM file named at `key` (relative to the
    /// config file); none, with an error, when it cannot be read.
    fn pem_certs(
        &mut self,
        key: String,
        c: &Spanned<String>,
    ) -> Vec<rustls::pki_types::CertificateDer<'static>> {
        use rustls::pki_types::pem::PemObject;
        let path = self.path(c.get_ref());
        match rustls::pki_types::CertificateDer::pem_file_iter(&path)
            .map(|it| it.collect::<Result<Vec<_>, _>>())
        {
            Ok(Ok(certs)) if !certs.is_empty() => return certs,
            Ok(Ok(_)) => self.err(
                key,
                c.span(),
                format!("no certificate in {}", path.display()),
                "give a PEM file with -----BEGIN CERTIFICATE----- blocks",
            ),
            Ok(Err(e)) | Err(e) => self.err(
                key,
                c.span(),
                format!("cannot read certificates from {}: {e}", path.display()),
                "give a readable PEM file; relative paths are relative to the config file",
            ),
        }
        Vec::new()
    }

    fn alerts(&mut self, r: &raw::Alerts) -> AlertConfig {
        let webhook = r
            .webhook
            .as_ref()
            .and_then(|w| match w.get_ref().parse::<http::Uri>() {
                Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {
                    Some(u)
                }
                _ => {
                    self.err(
                        "alerts.webhook",
                        w.span(),
                        format!("{:?} is not an http:// or https:// URL", w.get_ref()),
                        "write webhook = \"https://hooks.example.com/baton\"",
                    );
                    None
                }
            });
        let slack = match &r.format {
            None => false,
            Some(f) if f.get_ref() == "json" => false,
            Some(f) if f.get_ref() == "slack" => true,
            Some(f) => {
                self.err(
                    "alerts.format",
                    f.span(),
                    format!("unknown format {:?}", f.get_ref()),
                    "write format = \"json\" (baton's) or \"slack\" (Slack-compatible {\"text\"})",
                );
                false
            }
        };
        let webhook_ca = r
            .webhook_ca
            .as_ref()
            .map(|c| self.pem_certs("alerts.webhook_ca".into(), c))
            .unwrap_or_default();
        AlertConfig {
            webhook,
            webhook_ca,
            slack,
            command: r.command.as_ref().map(|c| c.get_ref().clone()),
            min_interval: self.duration(
                "alerts.min_interval",
                &r.min_interval,
                Duration::from_secs(300),
            ),
        }
    }

    fn health(&mut self, key: &dyn Fn(&str) -> String, h: &raw::Health) -> HealthConfig {
        let k = |x: &str| key(&format!("health.{x}"));
        let path = match (&h.path, h.tcp) {
            (Some(p), Some(true)) => {
                self.err(
                    k("tcp"),
                    p.span(),
                    "both path and tcp = true",
                    "use path for an HTTP check or tcp = true for a connect check, not both",
                );
                None
            }
            (Some(p), _) if !p.get_ref().starts_with('/') => {
                self.err(
                    k("path"),
                    p.span(),
                    format!("path {:?} does not start with /", p.get_ref()),
                    "write path = \"/healthz\"",
                );
                None
            }
            (Some(p), _) => {
                self.place(k("path"), p.span());
                Some(p.get_ref().clone())
            }
            (None, _) => None,
        };
        let expect = match &h.expect {
            None => (200, 399),
            Some(e) => {
                let v = e.get_ref();
                let parsed = match v.split_once('-') {
                    Some((a, b)) => a.trim().parse().ok().zip(b.trim().parse().ok()),
                    None => v.trim().parse().ok().map(|x| (x, x)),
                };
                match parsed {
                    Some((a, b)) if (100..600).contains(&a) && (a..600).contains(&b) => (a, b),
                    _ => {
                        self.err(
                            k("expect"),
                            e.span(),
                            format!("invalid status range {v:?}"),
                            "write \"200-399\" or \"204\"",
                        );
                        (200, 399)
                    }
                }
            }
        };
        HealthConfig {
            path,
            interval: self.duration(&k("interval"), &h.interval, Duration::from_secs(2)),
            timeout: self.duration(&k("timeout"), &h.timeout, Duration::from_secs(1)),
            rise: self.int(&k("rise"), &h.rise, 1, 100, 2, "use 1 to 100") as u32,
            fall: self.int(&k("fall"), &h.fall, 1, 100, 3, "use 1 to 100") as u32,
            expect,
            slow_start: h.slow_start.as_ref().map_or(Duration::ZERO, |_| {
                self.duration(&k("slow_start"), &h.slow_start, Duration::ZERO)
            }),
        }
    }

    fn outlier(&mut self, key: &dyn Fn(&str) -> String, o: Option<&raw::Outlier>) -> OutlierConfig {
        let d = OutlierConfig::default();
        let Some(o) = o else { return d };
        let k = |x: &str| key(&format!("outlier.{x}"));
        OutlierConfig {
            consecutive_failures: self.int(
                &k("consecutive_failures"),
                &o.consecutive_failures,
                0,
                1000,
                d.consecutive_failures as i64,
                "use 0 (off) to 1000",
            ) as u32,
            base_ejection: self.duration(&k("base_ejection"), &o.base_ejection, d.base_ejection),
            max_ejection: self.duration(&k("max_ejection"), &o.max_ejection, d.max_ejection),
            max_ejected_percent: self.int(
                &k("max_ejected_percent"),
                &o.max_ejected_percent,
                0,
                100,
                d.max_ejected_percent as i64,
                "use 0 to 100",
            ) as u32,
            count_5xx: o.count_5xx.unwrap_or(false),
        }
    }

    fn run(&mut self) -> Option<Config> {
        let (doc, syntax) = toml::de::DeTable::parse_recoverable(self.src);
        for e in syntax {
            let span = e.span().unwrap_or(0..0);
            self.err(
                "(syntax)",
                span,
                e.message().trim().to_string(),
                "fix the TOML syntax at this position",
            );
        }
        let doc_span = doc.span();
        let mut server = raw::Server::default();
        let mut log = raw::Log::default();
        let mut incidents = raw::Incidents::default();
        let mut alerts = raw::Alerts::default();
        let mut resolver = raw::Resolver::default();
        let mut pages = raw::ErrorPages::default();
        let mut upstream_tables: Vec<(Spanned<String>, raw::Upstream)> = Vec::new();
        let mut raw_routes: Vec<raw::Route> = Vec::new();
        let mut saw_routes = false;

        for (k, v) in doc.into_inner() {
            let key_span = k.span();
            let key = k.into_inner();
            match key.as_ref() {
                "server" => server = self.section("server", v).unwrap_or_default(),
                "log" => log = self.section("log", v).unwrap_or_default(),
                "incidents" => incidents = self.section("incidents", v).unwrap_or_default(),
                "alerts" => alerts = self.section("alerts", v).unwrap_or_default(),
                "resolver" => resolver = self.section("resolver", v).unwrap_or_default(),
                "error_pages" => pages = self.section("error_pages", v).unwrap_or_default(),
                "upstreams" => {
                    let span = v.span();
                    match v.into_inner() {
                        toml::de::DeValue::Table(t) => {
                            for (name, uv) in t {
                                let nspan = name.span();
                                let name = name.into_inner().to_string();
                                if let Some(u) = self.section(&format!("upstreams.{name}"), uv) {
                                    upstream_tables.push((Spanned::new(nspan, name), u));
                                }
                            }
                        }
                        _ => self.err(
                            "upstreams",
                            span,
                            "upstreams must be a table of named upstreams",
                            "write [upstreams.NAME] sections",
                        ),
                    }
                }
                "routes" => {
                    saw_routes = true;
                    let span = v.span();
                    match v.into_inner() {
                        toml::de::DeValue::Array(a) => {
                            for (i, rv) in a.into_iter().enumerate() {
                                if let Some(r) = self.section(&format!("routes[{i}]"), rv) {
                                    raw_routes.push(r);
                                }
                            }
                        }
                        _ => self.err(
                            "routes",
                            span,
                            "routes must be an array of tables",
                            "write each route as a [[routes]] section",
                        ),
                    }
                }
                other => {
                    let fix = match closest(other, &["server", "log", "resolver", "error_pages", "upstreams", "routes", "incidents", "alerts"]) {
                        Some(s) => format!("did you mean `{s}`? Known sections: server, log, resolver, error_pages, upstreams, routes"),
                        None => "remove it; known sections: server, log, resolver, error_pages, upstreams, routes, incidents, alerts".into(),
                    };
                    self.err(
                        other.to_string(),
                        key_span,
                        format!("unknown section `{other}`"),
                        &fix,
                    );
                }
            }
        }

        // [server]
        let mut listen = Vec::new();
        match &server.listen {
            Some(l) if l.get_ref().is_empty() => self.err(
                "server.listen",
                l.span(),
                "no listen address",
                "list at least one address, e.g. listen = [\"127.0.0.1:8080\"]",
            ),
            Some(l) => {
                for a in l.get_ref() {
                    if let Some(a) = self.socket_addr("server.listen", a) {
                        listen.push(a);
                    }
                }
            }
            None => listen.push(SocketAddr::from(([127, 0, 0, 1], 8080))),
        }
        let admin = server
            .admin
            .as_ref()
            .and_then(|a| self.socket_addr("server.admin", a));
        let workers = self.int(
            "server.workers",
            &server.workers,
            0,
            1024,
            0,
            "use 0 (one per core) up to 1024",
        ) as usize;
        let limits = ClientLimits {
            header_read_timeout: self.duration(
                "server.header_read_timeout",
                &server.header_read_timeout,
                defaults::HEADER_READ_TIMEOUT,
            ),
            max_request_header_bytes: self.int(
                "server.max_request_header_bytes",
                &server.max_request_header_bytes,
                8192,
                16 << 20,
                64 * 1024,
                "use 8192 or more",
            ) as usize,
            max_body_bytes: server.max_body_bytes.as_ref().map(|_| {
                self.int(
                    "server.max_body_bytes",
                    &server.max_body_bytes,
                    0,
                    i64::MAX,
                    0,
                    "use a size in bytes",
                ) as u64
            }),
            max_connections: self.int(
                "server.max_connections",
                &server.max_connections,
                1,
                10_000_000,
                100_000,
                "use 1 or more",
            ) as usize,
        };
        // The timeout ladder against a load balancer in front of baton.
        let outer_idle_timeout = server.outer_idle_timeout.as_ref().map(|_| {
            self.duration(
                "server.outer_idle_timeout",
                &server.outer_idle_timeout,
                Duration::from_secs(60),
            )
        });
        if let (Some(o), Some(at)) = (outer_idle_timeout, &server.outer_idle_timeout)
            && limits.header_read_timeout <= o
        {
            let span = server
                .header_read_timeout
                .as_ref()
                .map_or(at.span(), |h| h.span());
            self.warn(
                "server.header_read_timeout",
                span,
                format!(
                    "baton closes idle client connections after {:?}, no later than the load balancer in front ({o:?}): it reuses a connection baton just closed and answers 502 itself",
                    limits.header_read_timeout
                ),
                &format!(
                    "set header_read_timeout above outer_idle_timeout, e.g. \"{}s\"",
                    o.as_secs() + 15
                ),
            );
        }

        // [log]
        let access_format = match &log.access_format {
            None => AccessFormat::Json,
            Some(f) => match f.get_ref().as_str() {
                "json" => AccessFormat::Json,
                "combined" => AccessFormat::Combined,
                other => {
                    self.err(
                        "log.access_format",
                        f.span(),
                        format!("unknown access log format {other:?}"),
                        "use \"json\" or \"combined\"",
                    );
                    AccessFormat::Json
                }
            },
        };
        let log = LogConfig {
            access: self.log_target("log.access", &log.access, LogTarget::Stdout),
            access_format,
            errors: self.log_target("log.errors", &log.errors, LogTarget::Stderr),
        };

        // The admin API (metrics, dashboard, reload, drain) off loopback
        // needs a token.
        let admin_token = server.admin_token.as_ref().map(|t| t.get_ref().clone());
        if let (Some(a), None, Some(at)) = (admin, &admin_token, &server.admin)
            && !a.ip().is_loopback()
        {
            self.err(
                "server.admin",
                at.span(),
                format!("the admin API on {a} is reachable off this machine without a token"),
                "set server.admin_token = \"a long random string\" (sent as Authorization: Bearer, or ?token=), or keep admin on 127.0.0.1",
            );
        }

        let status_page = match &server.status_page {
            Some(p) if !p.get_ref().starts_with('/') => {
                self.err(
                    "server.status_page",
                    p.span(),
                    format!("{:?} is not a path", p.get_ref()),
                    "write status_page = \"/.well-known/status\"",
                );
                None
            }
            Some(p) => Some(p.get_ref().clone()),
            None => None,
        };

        // [incidents], [alerts]
        let incidents = self.incidents(&incidents);
        let alerts = self.alerts(&alerts);

        // [resolver]
        let mut nameservers = Vec::new();
        for ns in resolver.nameservers.iter().flatten() {
            let s = ns.get_ref();
            let parsed = s.parse::<SocketAddr>().ok().or_else(|| {
                s.parse::<std::net::IpAddr>()
                    .ok()
                    .map(|ip| SocketAddr::new(ip, 53))
            });
            match parsed {
                Some(a) => nameservers.push(a),
                None => self.err(
                    "resolver.nameservers",
                    ns.span(),
                    format!("{s:?} is not an IP address"),
                    "write \"127.0.0.53\" or \"127.0.0.1:5353\"",
                ),
            }
        }
        let resolver = ResolverConfig {
            min_ttl: match &resolver.min_ttl {
                None => Duration::from_secs(1),
                Some(_) => self.duration(
                    "resolver.min_ttl",
                    &resolver.min_ttl,
                    Duration::from_secs(1),
                ),
            },
            max_ttl: self.duration(
                "resolver.max_ttl",
                &resolver.max_ttl,
                Duration::from_secs(300),
            ),
            nameservers,
            timeout: self.duration(
                "resolver.timeout",
                &resolver.timeout,
                defaults::RESOLVER_TIMEOUT,
            ),
            attempts: self.int(
                "resolver.attempts",
                &resolver.attempts,
                1,
                10,
                defaults::RESOLVER_ATTEMPTS as i64,
                "use 1 to 10",
            ) as usize,
        };

        let pages = PageTemplates {
            html: self.template("error_pages.html", &pages.html),
            json: self.template("error_pages.json", &pages.json),
            text: self.template("error_pages.text", &pages.text),
        };

        // [upstreams.*]
        let mut upstreams = Vec::new();
        let mut index = HashMap::new();
        for (name, u) in &upstream_tables {
            let n = name.get_ref();
            let key = |k: &str| format!("upstreams.{n}.{k}");
            let mut servers = Vec::new();
            if u.servers.get_ref().is_empty() {
                self.err(
                    key("servers"),
                    u.servers.span(),
                    "an upstream needs at least one server",
                    "list addresses: servers = [\"127.0.0.1:3000\"]",
                );
            }
            for s in u.servers.get_ref() {
                self.place(format!("{}[{}]", key("servers"), servers.len()), s.span());
                match parse_server_spec(s.get_ref()) {
                    Ok(a) => servers.push(a),
                    Err(why) => self.err(key("servers"), s.span(), why, "write \"127.0.0.1:3000\", \"[::1]:3000\", \"app.internal:3000\" or \"unix:/run/app.sock\""),
                }
            }
            if let Some(m) = &u.max_response_header_bytes
                && *m.get_ref() < 16 * 1024
                && *m.get_ref() >= defaults::MIN_RESPONSE_HEADER_BYTES as i64
            {
                self.warn(
                    key("max_response_header_bytes"),
                    m.span(),
                    format!("{} bytes is under 16 KiB: large Set-Cookie (OAuth, JWT sessions) or CSP headers overflow it and become 502 response_header_too_large", m.get_ref()),
                    "keep the default 65536 unless memory is tight",
                );
            }
            let mrh = self.int(
                &key("max_response_header_bytes"),
                &u.max_response_header_bytes,
                defaults::MIN_RESPONSE_HEADER_BYTES as i64,
                16 * 1024 * 1024,
                defaults::MAX_RESPONSE_HEADER_BYTES as i64,
                "use 8192 or more (the default 65536 fits OAuth/JWT cookies)",
            ) as usize;
            let addrs: Vec<ServerAddr> = servers.iter().map(|s| s.addr.clone()).collect();
            let tls = self.upstream_tls(&key, u, &addrs);
            if !servers.is_empty() && servers.iter().all(|s| s.backup) {
                self.err(
                    key("servers"),
                    u.servers.span(),
                    "every server is a backup: none would ever get traffic",
                    "remove `backup` from at least one server",
                );
            }
            let balance = self.balance(&key, u);
            let health = u.health.as_ref().map(|h| self.health(&key, h));
            let outlier = self.outlier(&key, u.outlier.as_ref());
            let max_concurrent = u.max_concurrent.as_ref().map(|_| {
                self.int(
                    &key("max_concurrent"),
                    &u.max_concurrent,
                    1,
                    1 << 20,
                    1,
                    "use 1 or more",
                ) as usize
            });
            let queue = self.int(
                &key("queue"),
                &u.queue,
                0,
                1 << 20,
                0,
                "use 0 (no queue) or more",
            ) as usize;
            let adaptive = match (&u.adaptive_latency, max_concurrent) {
                (None, _) => None,
                (Some(a), None) => {
                    self.err(
                        key("adaptive_latency"),
                        a.span(),
                        "adaptive concurrency needs max_concurrent as its ceiling",
                        "add max_concurrent = 100 (or the most the app can take)",
                    );
                    None
                }
                (Some(_), Some(max)) => Some(Adaptive {
                    target: self.duration(
                        &key("adaptive_latency"),
                        &u.adaptive_latency,
                        Duration::from_millis(100),
                    ),
                    min: self.int(
                        &key("adaptive_min"),
                        &u.adaptive_min,
                        1,
                        max as i64,
                        1.max((max as i64 / 10).min(4)),
                        "use 1 up to max_concurrent",
                    ) as usize,
                }),
            };
            let maintenance = u.maintenance.as_ref().map(|m| Maintenance {
                message: m.get_ref().clone(),
                retry_after: self.duration(
                    &key("maintenance_retry_after"),
                    &u.maintenance_retry_after,
                    Duration::from_secs(600),
                ),
            });
            let queue_timeout = self.duration(
                &key("queue_timeout"),
                &u.queue_timeout,
                Duration::from_secs(1),
            );
            let fastcgi = self.fastcgi(&key, u, &tls);
            let process = u
                .process
                .as_ref()
                .and_then(|p| self.process(&key, p, &servers, health.is_some()));
            let read_timeout = self.duration(
                &key("read_timeout"),
                &u.read_timeout,
                defaults::READ_TIMEOUT,
            );
            // The timeout ladder: the app's own timeout < read_timeout <
            // the idle timeout of a load balancer in front.
            let app_timeout = match &u.app_timeout {
                Some(_) => Some((
                    self.duration(&key("app_timeout"), &u.app_timeout, defaults::READ_TIMEOUT),
                    "app_timeout",
                )),
                None => process
                    .as_deref()
                    .and_then(gunicorn_timeout)
                    .map(|t| (t, "gunicorn's --timeout")),
            };
            let rt_span = u
                .read_timeout
                .as_ref()
                .map_or(u.servers.span(), |r| r.span());
            if let Some((a, from)) = app_timeout
                && a >= read_timeout
            {
                self.warn(
                    key("read_timeout"),
                    rt_span.clone(),
                    format!("the application's own timeout ({from} {a:?}) is not shorter than read_timeout {read_timeout:?}: baton answers 504 first while the application keeps working on a request nobody waits for"),
                    &format!("set read_timeout above the application's timeout, e.g. \"{}s\"", a.as_secs() + 5),
                );
            }
            if let Some(o) = outer_idle_timeout
                && read_timeout >= o
            {
                self.warn(
                    key("read_timeout"),
                    rt_span,
                    format!("read_timeout {read_timeout:?} is not shorter than the load balancer in front ({o:?}): a slow answer becomes the load balancer's bare 504 instead of baton's explained one"),
                    &format!("keep read_timeout below outer_idle_timeout, e.g. \"{}s\"", o.as_secs().saturating_sub(5).max(1)),
                );
            }
            let cfg = UpstreamConfig {
                fastcgi,
                process,
                adaptive,
                maintenance,
                balance,
                health,
                outlier,
                max_concurrent,
                queue,
                queue_timeout,
                tls,
                name: n.as_str().into(),
                servers,
                connect_timeout: self.duration(
                    &key("connect_timeout"),
                    &u.connect_timeout,
                    defaults::CONNECT_TIMEOUT,
                ),
                read_timeout,
                write_timeout: self.duration(
                    &key("write_timeout"),
                    &u.write_timeout,
                    defaults::WRITE_TIMEOUT,
                ),
                max_response_header_bytes: mrh,
                retries: self.int(
                    &key("retries"),
                    &u.retries,
                    0,
                    16,
                    defaults::RETRIES as i64,
                    "use 0 (no retries) to 16",
                ) as u32,
                keepalive_timeout: self.duration(
                    &key("keepalive_timeout"),
                    &u.keepalive_timeout,
                    defaults::KEEPALIVE_TIMEOUT,
                ),
                max_idle_per_server: self.int(
                    &key("max_idle_per_server"),
                    &u.max_idle_per_server,
                    0,
                    1 << 16,
                    defaults::MAX_IDLE_PER_SERVER as i64,
                    "use 0 (no pooling) to 65536",
                ) as usize,
                replay_buffer_bytes: self.int(
                    &key("replay_buffer_bytes"),
                    &u.replay_buffer_bytes,
                    0,
                    64 << 20,
                    defaults::REPLAY_BUFFER_BYTES as i64,
                    "use 0 (never buffer) up to 64 MiB",
                ) as usize,
            };
            index.insert(n.clone(), upstreams.len());
            upstreams.push(Arc::new(cfg));
        }

        // [[routes]]
        if !saw_routes && self.errors.is_empty() {
            self.err(
                "routes",
                doc_span.clone(),
                "no routes: every request would get 404",
                "add a [[routes]] section with upstream = \"NAME\"",
            );
        }
        let mut routes = Vec::new();
        for r in &raw_routes {
            let i = routes.len();
            let up = r.upstream.get_ref();
            let Some(&ui) = index.get(up) else {
                let names: Vec<&str> = index.keys().map(String::as_str).collect();
                let fix = match closest(up, &names) {
                    Some(s) => format!("did you mean \"{s}\"?"),
                    None if names.is_empty() => "define it with an [upstreams.NAME] section".into(),
                    None => format!("use one of: {}", names.join(", ")),
                };
                self.err(
                    format!("routes[{i}].upstream"),
                    r.upstream.span(),
                    format!("unknown upstream {up:?}"),
                    &fix,
                );
                continue;
            };
            let host = match &r.host {
                None => None,
                Some(h) => {
                    let s = h.get_ref().to_ascii_lowercase();
                    if let Some(rest) = s.strip_prefix("*.") {
                        if rest.is_empty() || rest.contains('*') {
                            self.err(
                                format!("routes[{i}].host"),
                                h.span(),
                                format!("invalid wildcard {s:?}"),
                                "write \"*.example.com\"",
                            );
                        }
                        Some(HostMatch::Suffix(format!(".{rest}")))
                    } else if s.is_empty() || s.contains('*') || s.contains('/') {
                        self.err(
                            format!("routes[{i}].host"),
                            h.span(),
                            format!("invalid host {s:?}"),
                            "write \"example.com\" or \"*.example.com\" (no scheme, no path)",
                        );
                        None
                    } else {
                        Some(HostMatch::Exact(s))
                    }
                }
            };
            let path = match &r.path {
                None => "/".to_string(),
                Some(p) if p.get_ref().starts_with('/') => p.get_ref().clone(),
                Some(p) => {
                    self.err(
                        format!("routes[{i}].path"),
                        p.span(),
                        format!("path {:?} does not start with /", p.get_ref()),
                        "write a path prefix such as \"/api\"",
                    );
                    continue;
                }
            };
            let name = format!(
                "{}{}",
                r.host.as_ref().map_or("*", |h| h.get_ref().as_str()),
                path
            );
            let maintenance = r.maintenance.as_ref().map(|m| Maintenance {
                message: m.get_ref().clone(),
                retry_after: self.duration(
                    &format!("routes[{i}].maintenance_retry_after"),
                    &r.maintenance_retry_after,
                    Duration::from_secs(600),
                ),
            });
            let rate_limit = self.rate_limit(i, r);
            let k = |x: &str| format!("routes[{i}].{x}");
            let retry = RetryPolicy {
                retries: r
                    .retries
                    .as_ref()
                    .map(|_| self.int(&k("retries"), &r.retries, 0, 16, 1, "use 0 to 16") as u32),
                per_try_timeout: r.per_try_timeout.as_ref().map(|_| {
                    self.duration(
                        &k("per_try_timeout"),
                        &r.per_try_timeout,
                        Duration::from_secs(1),
                    )
                }),
                deadline: r
                    .deadline
                    .as_ref()
                    .map(|_| self.duration(&k("deadline"), &r.deadline, Duration::from_secs(1))),
                // Off by default: a retry goes to another server, which
                // does not need the first one to recover.
                backoff: match &r.retry_backoff {
                    None => Duration::ZERO,
                    Some(_) => self.duration(&k("retry_backoff"), &r.retry_backoff, Duration::ZERO),
                },
                budget_percent: self.int(
                    &k("retry_budget_percent"),
                    &r.retry_budget_percent,
                    0,
                    100,
                    20,
                    "use 0 to 100",
                ) as u32,
                budget_min: self.int(
                    &k("retry_budget_min"),
                    &r.retry_budget_min,
                    0,
                    100_000,
                    3,
                    "use 0 or more retries per second",
                ) as u32,
            };
            // Never matched: an earlier route takes every request it would.
            let span = r.path.as_ref().map_or(r.upstream.span(), |p| p.span());
            if let Some(earlier) = routes.iter().find(|e: &&Route| {
                let host_covers = match (&e.host, &host) {
                    (None, _) => true,
                    (Some(a), Some(b)) => a == b,
                    (Some(_), None) => false,
                };
                host_covers && path_prefix_covers(&e.path, &path)
            }) {
                self.warn(
                    format!("routes[{i}]"),
                    span.clone(),
                    format!("never matches: the earlier route {} takes every request it would (routes match in file order)", earlier.name),
                    "move this route above the broader one, or narrow the earlier route's host or path",
                );
            }
            if let (Some(p), Some(t)) = (retry.per_try_timeout, r.per_try_timeout.as_ref())
                && p >= upstreams[ui].read_timeout
            {
                self.warn(
                    format!("routes[{i}].per_try_timeout"),
                    t.span(),
                    format!(
                        "per_try_timeout {p:?} is not shorter than upstream {}'s read_timeout {:?}: it never fires",
                        upstreams[ui].name,
                        upstreams[ui].read_timeout
                    ),
                    "make per_try_timeout shorter than read_timeout, or remove it",
                );
            }
            routes.push(Route {
                retry,
                host,
                path,
                upstream: ui,
                name: name.into(),
                maintenance,
                rate_limit,
            });
        }

        Some(Config {
            listen,
            admin,
            workers,
            limits,
            log,
            resolver,
            pages,
            upstreams,
            routes,
            source: None,
            shown: String::new(),
            warnings: std::mem::take(&mut self.warnings),
            places: std::mem::take(&mut self.places),
            outer_idle_timeout,
            incidents,
            alerts,
            admin_token,
            status_page,
            dashboard_actions: server.dashboard_actions.unwrap_or(false),
        })
    }
}

/// Turns a serde error into the key it concerns and a fix.
fn explain_serde_error(section: &str, msg: &str, at: &str) -> (String, String) {
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        let field = rest.split('`').next().unwrap_or(at);
        let expected: Vec<&str> = msg
            .split("expected ")
            .nth(1)
            .map(|e| {
                e.split(['`', ',', ' '])
                    .filter(|s| !s.is_empty() && *s != "one" && *s != "of" && *s != "or")
                    .collect()
            })
            .unwrap_or_default();
        let fix = match closest(field, &expected) {
            Some(s) => format!("did you mean `{s}`?"),
            None => format!("remove it; valid keys here: {}", expected.join(", ")),
        };
        return (format!("{section}.{field}"), fix);
    }
    if let Some(rest) = msg.strip_prefix("missing field `") {
        let field = rest.split('`').next().unwrap_or("");
        return (
            format!("{section}.{field}"),
            format!("add `{field} = ...` to this section (see docs/config.md)"),
        );
    }
    if msg.starts_with("invalid type") {
        return (section.to_string(), "check the value's type: durations are strings (\"2s\"), counts are integers, lists use [ ]".into());
    }
    (
        section.to_string(),
        "see docs/config.md for this section's keys".into(),
    )
}

/// The candidate within edit distance 2, if any (for "did you mean").
fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    fn distance(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut prev: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut cur = vec![i + 1];
            for (j, cb) in b.iter().enumerate() {
                cur.push(
                    (prev[j] + usize::from(ca != *cb))
                        .min(prev[j + 1] + 1)
                        .min(cur[j] + 1),
                );
            }
            prev = cur;
        }
        prev[b.len()]
    }
    candidates
        .iter()
        .map(|c| (distance(word, c), *c))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, c)| c)
}

/// Parses `"2s"`, `"500ms"`, `"1m"`, `"1h"`, `"1.5s"`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86_400.0,
        _ => return None,
    };
    (secs.is_finite() && secs < 1e9).then(|| Duration::from_secs_f64(secs))
}

/// Parses `"ADDRESS [weight=N] [backup]"`.
pub fn parse_server_spec(s: &str) -> Result<ServerSpec, String> {
    let mut parts = s.split_whitespace();
    let addr = parse_server(parts.next().unwrap_or(""))?;
    let mut spec = ServerSpec {
        addr,
        weight: 1,
        backup: false,
    };
    for p in parts {
        if p == "backup" {
            spec.backup = true;
        } else if let Some(w) = p.strip_prefix("weight=") {
            spec.weight = w
                .parse()
                .ok()
                .filter(|w| (1..=1000).contains(w))
                .ok_or_else(|| format!("weight {w:?} must be 1 to 1000"))?;
        } else {
            return Err(format!(
                "unknown server option {p:?} (known: weight=N, backup)"
            ));
        }
    }
    Ok(spec)
}

/// Parses one entry of an upstream's `servers`.
pub fn parse_server(s: &str) -> Result<ServerAddr, String> {
    if let Some(p) = s.strip_prefix("unix:") {
        if !p.starts_with('/') {
            return Err(format!("unix socket path {p:?} must be absolute"));
        }
        return Ok(ServerAddr::Unix(PathBuf::from(p)));
    }
    if s.contains("://") {
        return Err(format!("{s:?} has a scheme; servers are addresses"));
    }
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(ServerAddr::Tcp(a));
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!("{s:?} has no port"));
    };
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{s:?} has an invalid port"))?;
    let valid = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if !valid || port == 0 {
        return Err(format!("{s:?} is not a valid host:port"));
    }
    Ok(ServerAddr::Name {
        host: host.to_ascii_lowercase(),
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shown_config_hides_secrets() {
        let t = shown(
            r#"
[server]
admin_token = "t0k"
[alerts]
webhook = "https://hooks.slack.com/services/T0/B0/XYZ"
command = "notify --key abc"
[upstreams.php]
servers = ["unix:/run/php.sock"]
protocol = "fastcgi"
[upstreams.php.params]
DB_PASSWORD = "hunter2"
APP_ENV = "prod"
[upstreams.php.process]
command = "php-fpm8.2"
env = { SECRET_KEY_BASE = "s3", LANG = "C" }
"#,
        );
        for gone in ["t0k", "XYZ", "notify", "hunter2", "s3", "\"C\""] {
            assert!(!t.contains(gone), "{gone} in {t}");
        }
        for kept in [
            "webhook = \"https://hooks.slack.com/…\"",
            "APP_ENV = \"prod\"",
            "command = \"php-fpm8.2\"",
            "servers = [\"unix:/run/php.sock\"]",
        ] {
            assert!(t.contains(kept), "{kept} not in {t}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m"), Some(Duration::from_secs(60)));
        assert_eq!(parse_duration("2"), None);
        assert_eq!(parse_duration("2x"), None);
        assert_eq!(parse_duration("s"), None);
    }

    #[test]
    fn servers() {
        assert_eq!(
            parse_server("127.0.0.1:3000"),
            Ok(ServerAddr::Tcp("127.0.0.1:3000".parse().unwrap()))
        );
        assert_eq!(
            parse_server("[::1]:3000"),
            Ok(ServerAddr::Tcp("[::1]:3000".parse().unwrap()))
        );
        assert_eq!(
            parse_server("unix:/run/app.sock"),
            Ok(ServerAddr::Unix("/run/app.sock".into()))
        );
        assert_eq!(
            parse_server("App.internal:3000"),
            Ok(ServerAddr::Name {
                host: "app.internal".into(),
                port: 3000
            })
        );
        assert!(parse_server("http://x:1").is_err());
        assert!(parse_server("x").is_err());
        assert!(parse_server("unix:rel.sock").is_err());
    }
}
