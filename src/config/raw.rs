//! The serde layer: mirrors the file, `deny_unknown_fields`. Every leaf
//! that validation may complain about is `Spanned`, so an error can name
//! its line.

use serde::Deserialize;
use toml::Spanned;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Server {
    pub listen: Option<Spanned<Vec<Spanned<String>>>>,
    pub listen_tls: Option<Spanned<Vec<Spanned<String>>>>,
    pub tls_handshake_timeout: Option<Spanned<String>>,
    pub proxy_protocol: Option<bool>,
    pub redirect_https: Option<bool>,
    pub hsts: Option<Spanned<String>>,
    pub trusted_proxies: Option<Vec<Spanned<String>>>,
    pub details_to: Option<Vec<Spanned<String>>>,
    pub admin: Option<Spanned<String>>,
    pub workers: Option<Spanned<i64>>,
    pub header_read_timeout: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub body_read_timeout: Option<Spanned<String>>,
    pub send_timeout: Option<Spanned<String>>,
    pub outer_idle_timeout: Option<Spanned<String>>,
    pub admin_token: Option<Spanned<String>>,
    pub admin_hosts: Option<Vec<Spanned<String>>>,
    pub status_page: Option<Spanned<String>>,
    pub dashboard_actions: Option<bool>,
    pub max_request_header_bytes: Option<Spanned<i64>>,
    pub max_body_bytes: Option<Spanned<i64>>,
    pub max_connections: Option<Spanned<i64>>,
    pub user: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    pub certificates: Option<Vec<TlsCertificate>>,
    pub expiry_warning: Option<Spanned<String>>,
    pub acme: Option<TlsAcme>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsAcme {
    pub domains: Spanned<Vec<Spanned<String>>>,
    pub email: Option<Spanned<String>>,
    pub directory: Option<Spanned<String>>,
    pub directory_ca: Option<Spanned<String>>,
    pub challenge: Option<Spanned<String>>,
    pub dir: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsCertificate {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Cache {
    pub memory: Option<Spanned<String>>,
    pub dir: Option<Spanned<String>>,
    pub disk: Option<Spanned<String>>,
    pub max_object: Option<Spanned<String>>,
    pub lock_timeout: Option<Spanned<String>>,
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
    /// Absent only for `protocol = "static"`.
    pub servers: Option<Spanned<Vec<Spanned<String>>>>,
    pub display_name: Option<Spanned<String>>,
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
    pub tls_client_cert: Option<Spanned<String>>,
    pub tls_client_key: Option<Spanned<String>>,
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
    pub alias: Option<Spanned<std::collections::BTreeMap<String, String>>>,
    pub index: Option<Spanned<OneOrMany>>,
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
    pub host: Option<Spanned<OneOrMany>>,
    pub path: Option<Spanned<String>>,
    pub upstream: Option<Spanned<String>>,
    pub redirect: Option<Spanned<String>>,
    pub redirect_status: Option<Spanned<i64>>,
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
    pub response_headers: Option<Spanned<HeaderRules>>,
    pub compress: Option<bool>,
    pub allow: Option<Vec<Spanned<String>>>,
    pub deny: Option<Vec<Spanned<String>>>,
    pub request_headers: Option<Spanned<HeaderRules>>,
    pub path_regex: Option<Spanned<String>>,
    pub rewrite: Option<Spanned<String>>,
    pub basic_auth: Option<Spanned<String>>,
    pub basic_auth_realm: Option<Spanned<String>>,
    pub expires: Option<Spanned<String>>,
    pub cache: Option<bool>,
    pub stale_if_error: Option<Spanned<String>>,
    pub cache_ttl: Option<Spanned<String>>,
    pub cache_bypass_cookies: Option<Vec<Spanned<String>>>,
}

/// `{ set = { "Name" = "value" }, remove = ["Name"] }`.
#[derive(Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct HeaderRules {
    pub set: Option<std::collections::BTreeMap<String, String>>,
    pub remove: Option<Vec<String>>,
}

/// A key that takes one value or a list: `host = "a.com"` or
/// `host = ["a.com", "www.a.com"]`.
#[derive(Deserialize, Clone)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn items(&self) -> Vec<&str> {
        match self {
            OneOrMany::One(s) => vec![s.as_str()],
            OneOrMany::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}
