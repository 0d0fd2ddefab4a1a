//! What a config problem says: the key, where it is, why, and the fix;
//! and the helpers that write them (serde's errors explained, "did you
//! mean").

use std::fmt;

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

/// Turns a serde error into the key it concerns and a fix.
pub(super) fn explain_serde_error(section: &str, msg: &str, at: &str) -> (String, String) {
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
        let fix = match (closest(field, &expected), from_nginx(field)) {
            (Some(s), _) => format!("did you mean `{s}`?"),
            (None, Some(n)) => format!("that is nginx's `{field}`: {n}"),
            (None, None) => format!("remove it; valid keys here: {}", expected.join(", ")),
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

/// Where an nginx directive (or Apache's, HAProxy's) lives in baton's
/// config: what an admin moving a site writes out of habit.
pub(super) fn from_nginx(directive: &str) -> Option<&'static str> {
    Some(match directive {
        "client_max_body_size" | "LimitRequestBody" => {
            "in baton it is `max_body_bytes` in [server], in bytes (\"10m\" is max_body_bytes = 10485760)"
        }
        "server_name" | "ServerName" | "ServerAlias" => {
            "in baton it is `host` in a [[routes]] entry: host = [\"example.com\", \"www.example.com\"]"
        }
        "location" => {
            "in baton a location is a [[routes]] entry with `path` (a prefix) and `upstream`"
        }
        "proxy_pass" | "ProxyPass" => {
            "in baton the address goes in [upstreams.NAME] servers = [\"127.0.0.1:3000\"], and a [[routes]] entry names the upstream"
        }
        "fastcgi_pass" => {
            "in baton it is an upstream with protocol = \"fastcgi\" and servers = [\"unix:/run/php/php8.2-fpm.sock\"]"
        }
        "proxy_read_timeout" | "fastcgi_read_timeout" | "ProxyTimeout" => {
            "in baton it is `read_timeout` in [upstreams.NAME] (\"60s\")"
        }
        "proxy_connect_timeout" | "fastcgi_connect_timeout" => {
            "in baton it is `connect_timeout` in [upstreams.NAME]"
        }
        "proxy_send_timeout" | "fastcgi_send_timeout" => {
            "in baton it is `write_timeout` in [upstreams.NAME]"
        }
        "keepalive_timeout" | "KeepAliveTimeout" => {
            "in baton the client side is `idle_timeout` in [server]; the upstream side `keepalive_timeout` in [upstreams.NAME]"
        }
        "client_header_timeout" => "in baton it is `header_read_timeout` in [server]",
        "client_body_timeout" => "in baton it is `body_read_timeout` in [server]",
        "large_client_header_buffers" | "client_header_buffer_size" => {
            "in baton it is `max_request_header_bytes` in [server]"
        }
        "proxy_buffer_size" | "fastcgi_buffer_size" => {
            "in baton it is `max_response_header_bytes` in [upstreams.NAME]"
        }
        "worker_processes" => "in baton it is `workers` in [server] (0: one per core)",
        "worker_connections" => "in baton it is `max_connections` in [server]",
        "ssl_certificate" | "ssl_certificate_key" | "SSLCertificateFile" => {
            "in baton it is a [[tls.certificates]] entry with cert and key, and server.listen_tls"
        }
        "access_log" | "error_log" | "CustomLog" | "ErrorLog" => {
            "in baton logs are set in [log]: access, access_format, errors"
        }
        "limit_req" | "limit_req_zone" => {
            "in baton it is `rate_limit` (and rate_limit_burst) in a [[routes]] entry"
        }
        "resolver" => "in baton it is the [resolver] section with nameservers",
        "upstream" => {
            "in baton an nginx upstream block is an [upstreams.NAME] section with servers = [...]"
        }
        "listen" | "Listen" => "in baton it is `listen` (and `listen_tls`) in [server]",
        _ => return None,
    })
}

/// The candidate within edit distance 2, if any (for "did you mean").
pub(super) fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
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
