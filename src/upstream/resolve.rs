//! Upstream host-name resolution with hickory (never the blocking system
//! resolver on the request path).
//!
//! Owns: building the resolver from `[resolver]` and sorting its failures
//! into the three outcomes baton reports (timeout, not found, other).
//! Must not: decide what a failure means to the visitor (that is `cause`).

use std::net::IpAddr;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolverConfig as HickoryConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};

use crate::config::ResolverConfig;

#[derive(Debug)]
pub enum ResolveError {
    Timeout,
    NotFound,
    Other(String),
}

impl std::fmt::Display for ResolveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResolveError::Timeout => f.write_str("no answer in time"),
            ResolveError::NotFound => f.write_str("no such name (NXDOMAIN or no records)"),
            ResolveError::Other(e) => f.write_str(e),
        }
    }
}

#[derive(Clone)]
pub struct Resolver {
    inner: TokioResolver,
    /// Bound on one whole lookup, whatever the resolver's own retries do.
    deadline: Duration,
    /// The last good answer per name, served (and flagged) when the
    /// resolver fails, so a DNS outage does not become a site outage.
    last_good: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Vec<IpAddr>>>>,
    /// Lookups answered from `last_good` because the resolver failed.
    pub stale_answers: prometheus_client::metrics::counter::Counter,
}

/// A lookup's addresses, and whether they are a stale last-good answer.
pub struct Answer {
    pub addrs: Vec<IpAddr>,
    pub stale: bool,
    /// How long the answer may still be cached (the shortest record TTL
    /// left); `None` for a stale answer.
    pub ttl: Option<Duration>,
}

impl Resolver {
    /// `stale_answers` counts lookups answered from the last good answer.
    pub fn new(
        cfg: &ResolverConfig,
        stale_answers: prometheus_client::metrics::counter::Counter,
    ) -> Result<Self, String> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = if cfg.nameservers.is_empty() {
            match TokioResolver::builder(provider.clone()) {
                Ok(b) => b,
                // No /etc/resolv.conf: names still resolve from /etc/hosts.
                Err(_) => TokioResolver::builder_with_config(
                    HickoryConfig::from_name_servers(Vec::new()),
                    provider,
                ),
            }
        } else {
            let servers = cfg
                .nameservers
                .iter()
                .map(|a| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = a.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = a.port();
                    let mut ns = NameServerConfig::udp(a.ip());
                    ns.connections = vec![udp, tcp];
                    ns
                })
                .collect();
            TokioResolver::builder_with_config(HickoryConfig::from_name_servers(servers), provider)
        };
        let opts = builder.options_mut();
        opts.timeout = cfg.timeout;
        opts.attempts = cfg.attempts;
        // `localhost` may be ::1 while the app listens on 127.0.0.1: ask for
        // both families and let the connect loop try each address.
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        opts.positive_min_ttl = Some(cfg.min_ttl);
        opts.positive_max_ttl = Some(cfg.max_ttl);
        opts.negative_max_ttl = Some(cfg.min_ttl);
        let inner = builder.build().map_err(|e| e.to_string())?;
        Ok(Resolver {
            inner,
            deadline: cfg.timeout * cfg.attempts as u32 + Duration::from_millis(100),
            last_good: Default::default(),
            stale_answers,
        })
    }

    /// Resolves `host`; on failure, the last good answer if there is one.
    pub async fn resolve(&self, host: &str) -> Result<Answer, ResolveError> {
        match self.lookup(host).await {
            Ok((addrs, ttl)) => {
                self.last_good
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(host.to_string(), addrs.clone());
                Ok(Answer {
                    addrs,
                    stale: false,
                    ttl: Some(ttl),
                })
            }
            Err(e) => match self
                .last_good
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(host)
            {
                Some(addrs) => {
                    self.stale_answers.inc();
                    tracing::warn!(target: "baton::dns", host, error = %e, "resolver failed; using the last good answer");
                    Ok(Answer {
                        addrs: addrs.clone(),
                        stale: true,
                        ttl: None,
                    })
                }
                None => Err(e),
            },
        }
    }

    async fn lookup(&self, host: &str) -> Result<(Vec<IpAddr>, Duration), ResolveError> {
        match tokio::time::timeout(self.deadline, self.inner.lookup_ip(host)).await {
            Err(_) => Err(ResolveError::Timeout),
            Ok(Ok(l)) => {
                let v: Vec<IpAddr> = l.iter().collect();
                let ttl = l
                    .valid_until()
                    .saturating_duration_since(std::time::Instant::now());
                if v.is_empty() {
                    Err(ResolveError::NotFound)
                } else {
                    Ok((v, ttl))
                }
            }
            Ok(Err(NetError::Timeout)) => Err(ResolveError::Timeout),
            Ok(Err(NetError::Dns(DnsError::NoRecordsFound(_)))) => Err(ResolveError::NotFound),
            Ok(Err(e)) => Err(ResolveError::Other(e.to_string())),
        }
    }
}
