//! The one config loader.
//!
//! Owns: reading `baton.toml` and turning it into a validated [`Config`], the
//! only configuration type the rest of baton sees. Two layers, as in river:
//! a serde layer (`raw`) that mirrors the file with `deny_unknown_fields` and
//! keeps spans, and a validation pass (`validate`, one file per section)
//! that reports *every* problem at once, each naming its key, line:column
//! and a fix (`diagnostics`). This file holds the validated model.
//!
//! Must not: panic on any input, touch the network, or start anything.
//! `check`, `serve` and `demo` all go through [`parse`].

mod diagnostics;
mod raw;
mod validate;
mod values;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use diagnostics::{ConfigError, ConfigErrors};
use validate::Validator;
pub use values::{lookup_user, parse_duration, parse_server, parse_server_spec, signal_number};

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub cache: CacheConfig,
    pub listen: Vec<SocketAddr>,
    /// `server.user`: the account baton runs as once its ports are bound
    /// (and its keys read), when started as root.
    pub user: Option<RunAs>,
    /// `server.listen_tls` and `[tls]`: HTTPS listeners and what they serve.
    pub tls: TlsConfig,
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
    /// `server.admin_hosts`: more names (`host` or `host:port`, lower case)
    /// the admin API answers to, besides its own address.
    pub admin_hosts: Vec<String>,
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

/// HTTPS listeners: addresses, the handshake's deadline, certificates.
#[derive(Debug, Clone, Default)]
pub struct TlsConfig {
    pub listen: Vec<SocketAddr>,
    /// A TLS handshake not complete by then is dropped.
    pub handshake_timeout: Duration,
    /// `[[tls.certificates]]`, in file order; the first is served to a
    /// client that sends no server name.
    pub certificates: Vec<ServedCert>,
    /// `server.redirect_https`: plain-HTTP requests get `308` to https.
    pub redirect_https: bool,
    /// `server.hsts`: the `Strict-Transport-Security` value sent on HTTPS
    /// responses.
    pub hsts: Option<http::HeaderValue>,
    /// `[tls.acme]`: certificates obtained and renewed automatically.
    pub acme: Option<AcmeConfig>,
    /// `tls.expiry_warning`: a certificate expiring within this is
    /// reported (`baton check`, the dashboard, the log and its events).
    pub expiry_warning: Duration,
}

/// `[tls.acme]`: one certificate for `domains` from an ACME CA (RFC 8555).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeConfig {
    pub domains: Vec<String>,
    pub email: Option<String>,
    /// The CA's directory URL.
    pub directory: String,
    /// A PEM root to trust for the directory's HTTPS (a test CA such as
    /// pebble); the public roots otherwise.
    pub directory_ca: Option<PathBuf>,
    pub challenge: AcmeChallenge,
    /// Where the account and certificates are kept.
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcmeChallenge {
    /// A file under `/.well-known/acme-challenge/` on port 80.
    Http01,
    /// A special certificate on port 443 (RFC 8737).
    TlsAlpn01,
}

/// What a certificate says about itself.
#[derive(Debug, Clone)]
pub struct CertFacts {
    /// DNS names (subjectAltName, else the subject's CN), lower case.
    pub names: Vec<String>,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
}

/// The facts of a DER certificate; `None` when it cannot be parsed.
pub fn cert_facts(der: &[u8]) -> Option<CertFacts> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let mut names: Vec<String> = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        names.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    Some(CertFacts {
        names,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// A chain and its key as rustls serves them; the reason when the key is
/// unsupported or not the certificate's.
pub fn certified_key(
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: &rustls::pki_types::PrivateKeyDer<'_>,
) -> Result<rustls::sign::CertifiedKey, String> {
    let signer = rustls::crypto::aws_lc_rs::sign::any_supported_type(key)
        .map_err(|e| format!("unsupported private key: {e}"))?;
    let certified = rustls::sign::CertifiedKey::new(chain, signer);
    certified
        .keys_match()
        .map_err(|e| format!("the key does not belong to the certificate: {e}"))?;
    Ok(certified)
}

/// One certificate chain and its key, ready to serve.
#[derive(Debug, Clone)]
pub struct ServedCert {
    /// The DNS names it is valid for (subjectAltName, else the subject's
    /// CN), lower case; `*.example.com` for a wildcard.
    pub names: Vec<String>,
    pub key: Arc<rustls::sign::CertifiedKey>,
    /// Unix seconds of the leaf's notAfter.
    pub not_after: i64,
    pub file: PathBuf,
}

/// Protection against clients: slowloris, huge heads and bodies, floods.
#[derive(Debug, Clone)]
pub struct ClientLimits {
    /// Time to receive a request head, from its first byte (and a new
    /// connection's first bytes); then 408 (or a close, before any byte).
    pub header_read_timeout: Duration,
    /// How long a client connection with no request in flight is kept
    /// (HTTP/1.1 keep-alive, HTTP/2 with no open stream).
    pub idle_timeout: Duration,
    /// Longest wait for the next piece of a request body; then 408.
    pub body_read_timeout: Duration,
    /// Longest wait for a client to take more of a response; then the
    /// connection is closed.
    pub send_timeout: Duration,
    /// Largest request head; larger gets 431.
    pub max_request_header_bytes: usize,
    /// Largest request body by `Content-Length`; larger gets 413.
    pub max_body_bytes: Option<u64>,
    /// Client connections per worker beyond which new ones are closed.
    pub max_connections: usize,
    /// `server.proxy_protocol`: every connection starts with a PROXY
    /// protocol header (v1 or v2) naming the real client.
    pub proxy_protocol: bool,
    /// `server.trusted_proxies`: peers whose `X-Forwarded-For`,
    /// `Forwarded` and `X-Forwarded-Proto` are believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// `server.details_to`: clients shown a failure's details (socket
    /// paths, addresses, users) on error pages and in `Proxy-Status`;
    /// everyone else gets the cause and the request ID. Loopback by
    /// default; the admin token shows them too.
    pub details_to: Vec<ipnet::IpNet>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    Off,
    Stdout,
    Stderr,
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessFormat {
    Json,
    /// The NCSA combined format, which GoAccess and most log tools read.
    Combined,
    /// A line from a template with nginx's variable names
    /// (`$remote_addr - [$time_local] "$request" $status ...`).
    Template(Vec<LogPiece>),
}

/// A piece of an access-log template: literal text or a variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogPiece {
    Text(String),
    Var(LogVar),
}

/// The variables an access-log template may use: nginx's names, so an
/// nginx `log_format` reads the same, and baton's own (`$cause`,
/// `$route`, `$attempts`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogVar {
    RemoteAddr,
    TimeLocal,
    TimeIso8601,
    Request,
    RequestMethod,
    RequestUri,
    ServerProtocol,
    Host,
    Status,
    BodyBytesSent,
    RequestTime,
    HttpReferer,
    HttpUserAgent,
    RequestId,
    UpstreamAddr,
    Upstream,
    Route,
    Attempts,
    Cause,
}

impl LogVar {
    pub const ALL: [(&'static str, LogVar); 20] = [
        ("remote_addr", LogVar::RemoteAddr),
        ("time_local", LogVar::TimeLocal),
        ("time_iso8601", LogVar::TimeIso8601),
        ("request", LogVar::Request),
        ("request_method", LogVar::RequestMethod),
        ("request_uri", LogVar::RequestUri),
        ("server_protocol", LogVar::ServerProtocol),
        ("host", LogVar::Host),
        ("status", LogVar::Status),
        ("body_bytes_sent", LogVar::BodyBytesSent),
        ("bytes_sent", LogVar::BodyBytesSent),
        ("request_time", LogVar::RequestTime),
        ("http_referer", LogVar::HttpReferer),
        ("http_user_agent", LogVar::HttpUserAgent),
        ("request_id", LogVar::RequestId),
        ("upstream_addr", LogVar::UpstreamAddr),
        ("upstream", LogVar::Upstream),
        ("route", LogVar::Route),
        ("attempts", LogVar::Attempts),
        ("cause", LogVar::Cause),
    ];

    /// Reads a template: `$name` or `${name}`; an unknown name is an
    /// error naming it.
    pub fn template(s: &str) -> Result<Vec<LogPiece>, String> {
        let mut out = Vec::new();
        let mut text = String::new();
        let mut rest = s;
        while let Some(i) = rest.find('$') {
            text.push_str(&rest[..i]);
            rest = &rest[i + 1..];
            let (name, after) = if let Some(r) = rest.strip_prefix('{') {
                let end = r.find('}').ok_or("a ${ without its }")?;
                (&r[..end], &r[end + 1..])
            } else {
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                (&rest[..end], &rest[end..])
            };
            let var = LogVar::ALL
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| *v)
                .ok_or_else(|| format!("unknown variable ${name}"))?;
            if !text.is_empty() {
                out.push(LogPiece::Text(std::mem::take(&mut text)));
            }
            out.push(LogPiece::Var(var));
            rest = after;
        }
        text.push_str(rest);
        if !text.is_empty() {
            out.push(LogPiece::Text(text));
        }
        Ok(out)
    }
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
    /// What visitors see on the status page instead of `name`.
    pub display_name: Option<String>,
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
    /// `protocol = "http2"` (or `"grpc"`): HTTP/2 to the servers, with
    /// prior knowledge over plain TCP (h2c), by ALPN over TLS.
    pub http2: bool,
    /// `[upstreams.NAME.process]`: a backend baton starts and supervises.
    pub process: Option<Arc<ProcessConfig>>,
}

/// A FastCGI upstream (PHP-FPM) or a static one (`protocol = "static"`):
/// where scripts and static files live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FastCgiConfig {
    /// Document root: SCRIPT_FILENAME and static files (absolute).
    pub root: PathBuf,
    /// `alias`: URL prefixes (ending in `/`) served from another
    /// directory, as nginx's `alias` (Debian's WordPress: `/wp-content/`
    /// from `/var/lib/wordpress/wp-content/`).
    pub aliases: Vec<(String, PathBuf)>,
    /// Directory index (`index.php`).
    /// Index files tried in a directory, in order.
    pub index: Vec<String>,
    /// nginx-style list: `$uri`, `$uri/`, and a last entry that is a
    /// fallback URI (`/index.php?$args`) or `=404`.
    pub try_files: Vec<String>,
    /// Paths ending in this (or followed by `/`) are scripts; empty for a
    /// static upstream (`protocol = "static"`: files only, no servers).
    pub script_ext: String,
    /// Extra parameters (`fastcgi_param`), sent after the standard ones.
    pub params: Vec<(String, String)>,
    /// `Cache-Control: max-age` for static files (0: `no-cache`; `None`,
    /// written "off": no Cache-Control).
    pub static_max_age: Option<Duration>,
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
    /// A client certificate and key to present (mTLS).
    pub client: Option<Arc<rustls::sign::CertifiedKey>>,
    /// Offer HTTP/2 by ALPN (`protocol = "http2"`).
    pub http2: bool,
}

/// How a route matches the request's host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    Exact(String),
    /// `*.example.com`: any name ending in `.example.com` (stored with the dot).
    Suffix(String),
}

impl std::fmt::Display for HostMatch {
    /// As written in the config: `shop.example.com`, `*.example.com`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostMatch::Exact(h) => f.write_str(h),
            HostMatch::Suffix(h) => write!(f, "*{h}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Route {
    /// Any of these hosts; empty: every host.
    pub host: Vec<HostMatch>,
    pub path: String,
    /// Index into [`Config::upstreams`]; `None` for a redirect route.
    pub upstream: Option<usize>,
    /// `redirect`: answered by baton itself, no upstream.
    pub redirect: Option<RouteRedirect>,
    /// The route's name in logs and metrics: `host/path`.
    pub name: Arc<str>,
    /// Planned downtime: answer 503 with this message and `Retry-After`.
    pub maintenance: Option<Maintenance>,
    /// Per-client rate limit.
    pub rate_limit: Option<RateLimit>,
    pub retry: RetryPolicy,
    /// Header fields set or removed on every response of the route
    /// (security headers, `X-Powered-By`).
    pub response_headers: HeaderRules,
    /// Header fields set or removed on the request sent upstream.
    pub request_headers: HeaderRules,
    /// `compress`: responses compressed (zstd, br, gzip) for clients that
    /// accept it.
    pub compress: bool,
    /// `allow`: when not empty, only these clients get through.
    pub allow: Vec<ipnet::IpNet>,
    /// `deny`: these clients never get through (wins over `allow`).
    pub deny: Vec<ipnet::IpNet>,
    /// `path_regex`: the route matches paths this matches (instead of the
    /// `path` prefix); its groups are `$1`..`$9` in `redirect` and
    /// `rewrite`.
    pub path_regex: Option<regex::Regex>,
    /// `rewrite`: the path (and query) the upstream is asked for instead.
    pub rewrite: Option<String>,
    /// `basic_auth`: users and password hashes (an htpasswd file).
    pub basic_auth: Option<Arc<BasicAuth>>,
    /// `expires`: `Cache-Control: max-age` and `Expires` on the route's
    /// successful and redirect responses, as nginx's `expires`.
    pub expires: Option<Duration>,
    /// `cache = true`: the route's responses go through the shared cache.
    pub cache: Option<RouteCache>,
}

/// A route's cache settings.
#[derive(Debug, Clone)]
pub struct RouteCache {
    /// `stale_if_error`: a stored response is served up to this long past
    /// its freshness when the upstream fails (the operator's policy for
    /// origins that send no `stale-if-error`).
    pub stale_if_error: Duration,
    /// `cache_bypass_cookies`: a request carrying a cookie whose name
    /// starts with one of these is never answered from the cache nor
    /// stored (WordPress's logged-in, comment-author and password
    /// cookies by default on FastCGI upstreams).
    pub bypass_cookies: Vec<String>,
    /// `cache_ttl`: how long a `200`, `301` or `404` that says nothing of
    /// its freshness (no `Cache-Control` lifetime, no `Expires`; PHP
    /// pages) is fresh, as nginx's `fastcgi_cache_valid`. Zero: only what
    /// RFC 9111 allows.
    pub ttl: Duration,
}

/// `[cache]`: the shared HTTP cache's bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// Bytes of stored responses kept in memory.
    pub memory: u64,
    /// `dir` and `disk`: a second tier on disk (bytes), kept across
    /// restarts.
    pub disk: Option<(PathBuf, u64)>,
    /// A response larger than this is passed on, not stored.
    pub max_object: u64,
    /// How long concurrent misses for one URL wait for the first one's
    /// response (request coalescing) before going upstream themselves.
    pub lock_timeout: Duration,
}

/// `$1`..`$9` in a template replaced by a regex's groups (an absent group
/// is empty); `$$` is a `$`.
pub fn with_groups<'t>(
    template: &'t str,
    groups: Option<&regex::Captures<'_>>,
) -> std::borrow::Cow<'t, str> {
    let Some(g) = groups else {
        return template.into();
    };
    if !template.contains('$') {
        return template.into();
    }
    let mut out = String::with_capacity(template.len() + 16);
    let mut chars = template.char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        match (c, chars.peek()) {
            ('$', Some(&(_, d))) if d.is_ascii_digit() && d != '0' => {
                chars.next();
                let i = d as usize - '0' as usize;
                out.push_str(g.get(i).map_or("", |m| m.as_str()));
            }
            ('$', Some(&(_, '$'))) => {
                chars.next();
                out.push('$');
            }
            _ => out.push(c),
        }
    }
    out.into()
}

/// A route's `basic_auth` file, read when the config is loaded: `user:hash`
/// lines as `htpasswd` writes them (bcrypt `$2y$`, Apache's `$apr1$`,
/// `{SHA}`, and crypt's `$1$`, `$5$`, `$6$`).
pub struct BasicAuth {
    pub realm: String,
    pub users: std::collections::HashMap<String, String>,
    /// `Authorization` values that verified, so a browser's repeated
    /// credentials cost a lookup, not a bcrypt round each request
    /// (bounded; cleared when full).
    pub verified: std::sync::Mutex<std::collections::HashSet<Vec<u8>>>,
}

impl std::fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicAuth")
            .field("realm", &self.realm)
            .field("users", &self.users.len())
            .finish()
    }
}

impl BasicAuth {
    /// Whether an `Authorization` field's value names a user of the file
    /// with their password.
    pub fn allows(&self, authorization: &[u8]) -> bool {
        const KEEP: usize = 1024;
        if self
            .verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(authorization)
        {
            return true;
        }
        let ok = self.check(authorization);
        if ok {
            let mut v = self.verified.lock().unwrap_or_else(|e| e.into_inner());
            if v.len() >= KEEP {
                v.clear();
            }
            v.insert(authorization.to_vec());
        }
        ok
    }

    fn check(&self, authorization: &[u8]) -> bool {
        use base64::Engine as _;
        let Some(b64) = authorization
            .split_at_checked(6)
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case(b"basic "))
            .map(|(_, rest)| rest.trim_ascii())
        else {
            return false;
        };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(b64) else {
            return false;
        };
        let Ok(pair) = std::str::from_utf8(&decoded) else {
            return false;
        };
        let Some((user, password)) = pair.split_once(':') else {
            return false;
        };
        let Some(hash) = self.users.get(user) else {
            return false;
        };
        verify_password(password, hash)
    }
}

/// One htpasswd hash. `{SHA}` (base64 of SHA-1) is checked here; the crypt
/// family by crypt3_rs, the one maintained crate that also reads Apache's
/// `$apr1$` (htpasswd's default).
pub fn verify_password(password: &str, hash: &str) -> bool {
    if let Some(sha) = hash.strip_prefix("{SHA}") {
        use base64::Engine as _;
        use sha1::Digest as _;
        let mine = base64::engine::general_purpose::STANDARD.encode(sha1::Sha1::digest(password));
        // Compared in full whatever the first difference.
        return mine.len() == sha.len()
            && mine
                .bytes()
                .zip(sha.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
    }
    if hash.starts_with('$') {
        return crypt3_rs::unix::verify(password, hash);
    }
    false
}

/// Whether a hash is in a format [`verify_password`] reads.
pub fn known_hash(hash: &str) -> bool {
    hash.starts_with("{SHA}")
        || ["$2y$", "$2b$", "$2a$", "$apr1$", "$1$", "$5$", "$6$"]
            .iter()
            .any(|p| hash.starts_with(p))
}

/// A route that redirects: `Location` from a template with `{scheme}`,
/// `{host}`, `{uri}` (path and query), `{path}`, `{query}`.
#[derive(Debug, Clone)]
pub struct RouteRedirect {
    pub template: String,
    pub status: u16,
}

impl RouteRedirect {
    /// The `Location` for a request (`groups`: a `path_regex` route's).
    pub fn location(
        &self,
        scheme: &str,
        host: &str,
        path: &str,
        query: Option<&str>,
        groups: Option<&regex::Captures<'_>>,
    ) -> String {
        // One pass, so a value (a path with `{host}` or `$1` in it) is
        // never read as a placeholder.
        let t = &self.template;
        let mut out = String::with_capacity(t.len() + path.len() + 32);
        let mut rest = t.as_str();
        while let Some(at) = rest.find(['{', '$']) {
            out.push_str(&rest[..at]);
            rest = &rest[at..];
            let value = |name: &str| match name {
                "{scheme}" => Some(scheme),
                "{host}" => Some(host),
                "{path}" => Some(path),
                "{query}" => Some(query.unwrap_or("")),
                _ => None,
            };
            let end = if rest.starts_with('{') {
                rest.find('}').map_or(1, |e| e + 1)
            } else {
                2.min(rest.len())
            };
            let token = &rest[..end];
            if token == "{uri}" {
                out.push_str(path);
                if let Some(q) = query {
                    out.push('?');
                    out.push_str(q);
                }
            } else if let Some(v) = value(token) {
                out.push_str(v);
            } else if token.len() == 2 && token.starts_with('$') {
                out.push_str(&with_groups(token, groups));
            } else {
                out.push_str(token);
            }
            rest = &rest[end..];
        }
        out.push_str(rest);
        out
    }
}

/// Fields to remove, then fields to set (replacing any of that name).
#[derive(Debug, Clone, Default)]
pub struct HeaderRules {
    pub remove: Vec<http::HeaderName>,
    pub set: Vec<(http::HeaderName, http::HeaderValue)>,
}

impl HeaderRules {
    pub fn apply(&self, h: &mut http::HeaderMap) {
        for n in &self.remove {
            h.remove(n);
        }
        for (n, v) in &self.set {
            h.insert(n.clone(), v.clone());
        }
    }
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
    // nginx's client_header_timeout, client_body_timeout and send_timeout.
    pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(60);
    /// nginx gives the handshake its client_header_timeout (60 s); a
    /// handshake needs two round trips, so 10 s is generous.
    pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
    /// `baton check` warns of a certificate expiring within this.
    pub const CERT_EXPIRY_WARNING: Duration = Duration::from_secs(21 * 86_400);
    pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);
    pub const SEND_TIMEOUT: Duration = Duration::from_secs(60);
    // Longer than the usual load balancer in front (AWS ALB 60 s), as
    // nginx's 75 s keepalive_timeout, or the balancer reuses a connection
    // baton just closed and answers 502.
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(75);
    // Below Node's 5 s and Puma's 20 s default idle timeouts; gunicorn's 2 s
    // is caught by the pool learning the observed idle close (upstream.rs).
    pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(4);
    pub const MAX_IDLE_PER_SERVER: usize = 256;
    pub const REPLAY_BUFFER_BYTES: usize = 64 * 1024;
    pub const RESOLVER_TIMEOUT: Duration = Duration::from_secs(2);
    pub const RESOLVER_ATTEMPTS: usize = 2;
}

/// Where baton keeps its state (the incident store) when the config does
/// not say: `$BATON_STATE_DIR` when set, `/var/lib/baton` as root, else
/// `$XDG_STATE_HOME/baton` (`~/.local/state/baton`).
pub fn state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("BATON_STATE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/baton");
    }
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("baton")
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

/// One server to walk or probe (`baton doctor`), as a typed request.
pub struct Probe<'a> {
    /// As an upstream's `servers` entry: `host:port` or `unix:/path`.
    pub server: &'a str,
    pub fastcgi: bool,
    /// Connect and read timeout.
    pub timeout: Duration,
    /// `Some`: TLS, with this server name when it is not an IP address.
    pub tls: Option<Option<&'a str>>,
    /// Nameservers to ask (`ip[:port]`); empty: /etc/resolv.conf's.
    pub nameservers: &'a [String],
}

/// A config of one upstream (`target`) and one route to it, for a probe:
/// no retries, no ejection, no logs. It goes through the one loader, so
/// it gets every default and every check a file would; the table is built
/// as data (a server string cannot inject a key).
pub fn probe(p: &Probe<'_>) -> Result<Config, ConfigErrors> {
    use toml::{Table, Value};
    let secs = format!("{}s", p.timeout.as_secs_f64());
    let mut up = Table::new();
    up.insert("servers".into(), Value::Array(vec![p.server.into()]));
    up.insert("connect_timeout".into(), secs.clone().into());
    up.insert("read_timeout".into(), secs.into());
    up.insert("retries".into(), Value::Integer(0));
    if p.fastcgi {
        up.insert("protocol".into(), "fastcgi".into());
        up.insert("root".into(), "/".into());
    }
    if let Some(name) = p.tls {
        up.insert("tls".into(), Value::Boolean(true));
        if let Some(n) = name.filter(|n| n.parse::<std::net::IpAddr>().is_err()) {
            up.insert("tls_server_name".into(), n.into());
        }
    }
    let mut outlier = Table::new();
    outlier.insert("consecutive_failures".into(), Value::Integer(0));
    up.insert("outlier".into(), Value::Table(outlier));
    let mut doc = Table::new();
    if !p.nameservers.is_empty() {
        let list = p.nameservers.iter().map(|n| n.as_str().into()).collect();
        let mut r = Table::new();
        r.insert("nameservers".into(), Value::Array(list));
        doc.insert("resolver".into(), Value::Table(r));
    }
    let mut log = Table::new();
    log.insert("access".into(), "off".into());
    log.insert("errors".into(), "off".into());
    doc.insert("log".into(), Value::Table(log));
    let mut ups = Table::new();
    ups.insert("target".into(), Value::Table(up));
    doc.insert("upstreams".into(), Value::Table(ups));
    let mut route = Table::new();
    route.insert("upstream".into(), "target".into());
    doc.insert("routes".into(), Value::Array(vec![Value::Table(route)]));
    parse(&doc.to_string(), "(probe)", None)
}

/// Parses and validates config text. `base` resolves relative file paths.
pub fn parse(src: &str, file: &str, base: Option<&Path>) -> Result<Config, ConfigErrors> {
    let mut v = Validator::new(src, base.map(Path::to_path_buf));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The config fuzz target's property on seeded mutations of a real
    /// config (fuzz/ runs it much longer): errors, never a panic.
    #[test]
    fn mutated_configs_give_errors_not_panics() {
        let good = "[server]\nlisten = [\"127.0.0.1:8080\"]\nheader_read_timeout = \"5s\"\n[upstreams.app]\nservers = [\"127.0.0.1:3000\"]\nread_timeout = \"20s\"\n[upstreams.app.health]\npath = \"/h\"\n[[routes]]\npath = \"/\"\nupstream = \"app\"\n";
        let mut next = crate::core::xorshift(0x9E37_79B9_7F4A_7C15u64);
        for _ in 0..3_000 {
            let mut b = good.as_bytes().to_vec();
            for _ in 0..1 + next() % 4 {
                let at = (next() as usize) % b.len();
                match next() % 3 {
                    0 => {
                        let with = b" =[]\"\n.0s-_x9";
                        b[at] = with[(next() as usize) % with.len()];
                    }
                    1 => {
                        b.remove(at);
                    }
                    _ => b.insert(at, b"\"0[]=\n"[(next() % 6) as usize]),
                }
            }
            if let Ok(text) = std::str::from_utf8(&b) {
                let _ = parse(text, "fuzz.toml", None);
            }
        }
    }

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
