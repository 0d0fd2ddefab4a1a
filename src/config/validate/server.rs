//! `[server]`, `[log]` and `[resolver]`.

use std::net::SocketAddr;
use std::time::Duration;

use toml::Spanned;

use super::Validator;
use crate::config::raw;
use crate::config::*;

/// What `[server]` and `[log]` give the config.
pub(super) struct ServerPart {
    pub listen: Vec<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub workers: usize,
    pub limits: ClientLimits,
    pub outer_idle_timeout: Option<Duration>,
    pub log: LogConfig,
    pub admin_token: Option<String>,
    pub admin_hosts: Vec<String>,
    pub status_page: Option<String>,
    pub user: Option<RunAs>,
}

impl Validator<'_> {
    pub(super) fn server(&mut self, server: &raw::Server, log: &raw::Log) -> ServerPart {
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
            idle_timeout: self.duration(
                "server.idle_timeout",
                &server.idle_timeout,
                defaults::IDLE_TIMEOUT,
            ),
            body_read_timeout: self.duration(
                "server.body_read_timeout",
                &server.body_read_timeout,
                defaults::BODY_READ_TIMEOUT,
            ),
            send_timeout: self.duration(
                "server.send_timeout",
                &server.send_timeout,
                defaults::SEND_TIMEOUT,
            ),
            proxy_protocol: server.proxy_protocol.unwrap_or(false),
            trusted_proxies: self.networks("server.trusted_proxies", &server.trusted_proxies),
            details_to: match &server.details_to {
                Some(_) => self.networks("server.details_to", &server.details_to),
                None => vec![
                    "127.0.0.0/8".parse().expect("literal"),
                    "::1/128".parse().expect("literal"),
                ],
            },
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
            && limits.idle_timeout <= o
        {
            let span = server.idle_timeout.as_ref().map_or(at.span(), |h| h.span());
            self.warn(
                "server.idle_timeout",
                span,
                format!(
                    "baton closes idle client connections after {:?}, no later than the load balancer in front ({o:?}): it reuses a connection baton just closed and answers 502 itself",
                    limits.idle_timeout
                ),
                &format!(
                    "set idle_timeout above outer_idle_timeout, e.g. \"{}s\"",
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
                t if t.contains('$') => match LogVar::template(t) {
                    Ok(pieces) => AccessFormat::Template(pieces),
                    Err(e) => {
                        let names: Vec<String> =
                            LogVar::ALL.iter().map(|(n, _)| format!("${n}")).collect();
                        self.err(
                            "log.access_format",
                            f.span(),
                            format!("the access log template has {e}"),
                            &format!("use these variables: {}", names.join(" ")),
                        );
                        AccessFormat::Json
                    }
                },
                other => {
                    self.err(
                        "log.access_format",
                        f.span(),
                        format!("unknown access log format {other:?}"),
                        "use \"json\", \"combined\", or a template such as \"$remote_addr [$time_iso8601] \\\"$request\\\" $status $request_time $cause\"",
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

        let mut admin_hosts = Vec::new();
        for h in server.admin_hosts.iter().flatten() {
            let v = h.get_ref().trim().to_ascii_lowercase();
            if v.is_empty() || v.contains('/') || v.contains(char::is_whitespace) {
                self.err(
                    "server.admin_hosts",
                    h.span(),
                    format!("{:?} is not a host name", h.get_ref()),
                    "write names as a browser sends them in Host: \"dash.example.com\" or \"dash.example.com:9901\" (no scheme, no path)",
                );
            } else {
                admin_hosts.push(v);
            }
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

        let user = server.user.as_ref().and_then(|u| {
            let found = crate::config::values::lookup_user(u.get_ref());
            if found.is_none() {
                self.err(
                    "server.user",
                    u.span(),
                    format!("no user {:?} on this machine", u.get_ref()),
                    "name an existing unprivileged user, e.g. user = \"www-data\"",
                );
            }
            found.filter(|r| {
                if r.uid == 0 {
                    self.err(
                        "server.user",
                        u.span(),
                        "user is the account baton drops to after binding: root keeps every privilege",
                        "name an unprivileged user, e.g. user = \"www-data\", or remove the key",
                    );
                }
                r.uid != 0
            })
        });
        ServerPart {
            user,
            listen,
            admin,
            workers,
            limits,
            outer_idle_timeout,
            log,
            admin_token,
            admin_hosts,
            status_page,
        }
    }

    pub(super) fn resolver(&mut self, resolver: &raw::Resolver) -> ResolverConfig {
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
        ResolverConfig {
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
        }
    }
}

impl Validator<'_> {
    /// A list of networks (`10.0.0.0/8`) or single addresses (`127.0.0.1`,
    /// `::1`).
    pub(super) fn networks(
        &mut self,
        key: &str,
        v: &Option<Vec<Spanned<String>>>,
    ) -> Vec<ipnet::IpNet> {
        let mut out = Vec::new();
        for n in v.iter().flatten() {
            let text = n.get_ref().trim();
            let parsed = text.parse::<ipnet::IpNet>().ok().or_else(|| {
                text.parse::<std::net::IpAddr>()
                    .ok()
                    .map(ipnet::IpNet::from)
            });
            match parsed {
                Some(net) => out.push(net.trunc()),
                None => self.err(
                    key,
                    n.span(),
                    format!("{text:?} is not an address or network"),
                    "write an address (\"10.0.0.5\") or a network in CIDR form (\"10.0.0.0/8\", \"fd00::/8\")",
                ),
            }
        }
        out
    }
}
