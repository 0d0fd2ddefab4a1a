//! `[[routes]]`: host and path, the upstream, maintenance, rate limits
//! and the retry policy; routes an earlier one shadows.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::Validator;
use crate::config::diagnostics::closest;
use crate::config::raw;
use crate::config::*;

impl Validator<'_> {
    /// Route number `i` (among those read so far), or `None` if it cannot
    /// be built.
    pub(super) fn route(
        &mut self,
        i: usize,
        r: &raw::Route,
        index: &HashMap<String, usize>,
        upstreams: &[Arc<UpstreamConfig>],
        routes: &[Route],
    ) -> Option<Route> {
        let redirect = self.redirect(i, r);
        let ui = self.route_upstream(i, r, redirect.is_some(), index)?;
        let host = self.route_hosts(i, r);
        let path_regex = self.path_regex(i, r);
        let path = self.route_path(i, r, path_regex.is_some())?;
        let name = format!(
            "{}{}",
            host.first().map_or("*".to_string(), |h| h.to_string()),
            r.path_regex
                .as_ref()
                .map_or(path.as_str(), |re| re.get_ref().as_str())
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
        let span = r
            .path
            .as_ref()
            .map(|p| p.span())
            .or_else(|| r.upstream.as_ref().map(|u| u.span()))
            .or_else(|| r.redirect.as_ref().map(|u| u.span()))
            .unwrap_or(0..0);
        if let Some(earlier) = routes.iter().find(|e: &&Route| {
            // Every host of this route is one the earlier route takes.
            let host_covers =
                e.host.is_empty() || (!host.is_empty() && host.iter().all(|h| e.host.contains(h)));
            // A regex route covers nothing for sure; one is covered only
            // by an earlier route for every path.
            let path_covers = match (&e.path_regex, &path_regex) {
                (Some(_), _) => false,
                (None, Some(_)) => e.path == "/",
                (None, None) => path_prefix_covers(&e.path, &path),
            };
            host_covers && path_covers
        }) {
            self.warn(
                format!("routes[{i}]"),
                span.clone(),
                format!("never matches: the earlier route {} takes every request it would (routes match in file order)", earlier.name),
                "move this route above the broader one, or narrow the earlier route's host or path",
            );
        }
        if let (Some(p), Some(t), Some(ui)) =
            (retry.per_try_timeout, r.per_try_timeout.as_ref(), ui)
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
        let response_headers = self.header_rules(
            &format!("routes[{i}].response_headers"),
            &r.response_headers,
        );
        let request_headers =
            self.header_rules(&format!("routes[{i}].request_headers"), &r.request_headers);
        let allow = self.client_list(&format!("routes[{i}].allow"), &r.allow);
        let deny = self.client_list(&format!("routes[{i}].deny"), &r.deny);
        let groups = path_regex.as_ref().map_or(0, |re| re.captures_len() - 1);
        let rewrite = r.rewrite.as_ref().and_then(|w| {
            let t = w.get_ref();
            let problem = if ui.is_none() {
                Some("a redirect route sends nothing upstream to rewrite".to_string())
            } else if !t.starts_with('/') {
                Some(format!("rewrite {t:?} does not start with /"))
            } else {
                highest_group(t)
                    .filter(|&n| n > groups)
                    .map(|n| format!("rewrite uses ${n} but the route's path_regex has {groups} group(s)"))
            };
            match problem {
                Some(p) => {
                    self.err(
                        format!("routes[{i}].rewrite"),
                        w.span(),
                        p,
                        "write a path, with $1..$9 for path_regex groups: path_regex = \"^/post/(\\\\d+)$\", rewrite = \"/index.php?p=$1\"",
                    );
                    None
                }
                None => Some(t.clone()),
            }
        });
        if let (Some(rd), Some(t)) = (&redirect, &r.redirect)
            && let Some(n) = highest_group(&rd.template).filter(|&n| n > groups)
        {
            self.err(
                format!("routes[{i}].redirect"),
                t.span(),
                format!("redirect uses ${n} but the route has {groups} path_regex group(s)"),
                "add groups to path_regex, or write $$ for a literal $",
            );
        }
        let basic_auth = self.basic_auth(i, r);
        let expires = r.expires.as_ref().map(|e| match e.get_ref().as_str() {
            // nginx's `expires max`: ten years.
            "max" => Duration::from_secs(315_360_000),
            _ => self.duration(&format!("routes[{i}].expires"), &r.expires, Duration::ZERO),
        });
        let cache = r.cache.unwrap_or(false).then(|| {
            let fastcgi = ui.is_some_and(|u| upstreams[u].fastcgi.is_some());
            RouteCache {
                stale_if_error: match &r.stale_if_error {
                    None => Duration::ZERO,
                    Some(_) => self.duration(
                        &format!("routes[{i}].stale_if_error"),
                        &r.stale_if_error,
                        Duration::ZERO,
                    ),
                },
                ttl: match &r.cache_ttl {
                    None => Duration::ZERO,
                    Some(_) => self.duration(
                        &format!("routes[{i}].cache_ttl"),
                        &r.cache_ttl,
                        Duration::ZERO,
                    ),
                },
                bypass_cookies: match &r.cache_bypass_cookies {
                    Some(list) => list.iter().map(|c| c.get_ref().clone()).collect(),
                    // The standard WordPress recipes' bypass: logged-in
                    // users, commenters, password-protected posts.
                    None if fastcgi => [
                        "wordpress_logged_in_",
                        "wp-postpass_",
                        "comment_author_",
                        "wordpress_sec_",
                    ]
                    .map(String::from)
                    .to_vec(),
                    None => Vec::new(),
                },
            }
        });
        if cache.is_none() {
            for (k, span) in [
                (
                    "stale_if_error",
                    r.stale_if_error.as_ref().map(|v| v.span()),
                ),
                ("cache_ttl", r.cache_ttl.as_ref().map(|v| v.span())),
                (
                    "cache_bypass_cookies",
                    r.cache_bypass_cookies
                        .as_ref()
                        .and_then(|v| v.first())
                        .map(|v| v.span()),
                ),
            ] {
                if let Some(span) = span {
                    self.err(
                        format!("routes[{i}].{k}"),
                        span,
                        format!("{k} applies to a cached route"),
                        "add cache = true to the route, or remove the key",
                    );
                }
            }
        }
        Some(Route {
            cache,
            path_regex,
            rewrite,
            basic_auth,
            expires,
            allow,
            deny,
            compress: r.compress.unwrap_or(false),
            response_headers,
            request_headers,
            retry,
            host,
            path,
            upstream: ui,
            redirect,
            name: name.into(),
            maintenance,
            rate_limit,
        })
    }

    /// The route's upstream (its index), `Some(None)` for a redirecting
    /// route, `None` when neither or both are given or the name is unknown.
    fn route_upstream(
        &mut self,
        i: usize,
        r: &raw::Route,
        redirect: bool,
        index: &HashMap<String, usize>,
    ) -> Option<Option<usize>> {
        let ui = match (&r.upstream, redirect) {
            (Some(u), false) => {
                let up = u.get_ref();
                let Some(&ui) = index.get(up) else {
                    let names: Vec<&str> = index.keys().map(String::as_str).collect();
                    let fix = match closest(up, &names) {
                        Some(s) => format!("did you mean \"{s}\"?"),
                        None if names.is_empty() => {
                            "define it with an [upstreams.NAME] section".into()
                        }
                        None => format!("use one of: {}", names.join(", ")),
                    };
                    self.err(
                        format!("routes[{i}].upstream"),
                        u.span(),
                        format!("unknown upstream {up:?}"),
                        &fix,
                    );
                    return None;
                };
                Some(ui)
            }
            (None, true) => None,
            (Some(u), true) => {
                self.err(
                    format!("routes[{i}].redirect"),
                    u.span(),
                    "a route either redirects or has an upstream",
                    "remove upstream from the redirecting route, or make it two routes",
                );
                return None;
            }
            (None, false) => {
                self.err(
                    format!("routes[{i}].upstream"),
                    0..0,
                    "the route names no upstream and no redirect",
                    "add upstream = \"NAME\", or redirect = \"https://example.com{uri}\"",
                );
                return None;
            }
        };
        Some(ui)
    }

    /// The route's `host` names, each checked; a bad one is reported and left out.
    fn route_hosts(&mut self, i: usize, r: &raw::Route) -> Vec<HostMatch> {
        let mut host = Vec::new();
        if let Some(h) = &r.host {
            for s in h.get_ref().items() {
                let s = s.to_ascii_lowercase();
                if s.split_whitespace().count() > 1 {
                    // nginx's server_name habit: one string, many names.
                    let list: Vec<String> =
                        s.split_whitespace().map(|n| format!("{n:?}")).collect();
                    self.err(
                        format!("routes[{i}].host"),
                        h.span(),
                        format!("{s:?} is several names in one string: no request would match it"),
                        &format!("write a list: host = [{}]", list.join(", ")),
                    );
                } else if let Some(rest) = s.strip_prefix("*.") {
                    if rest.is_empty() || rest.contains('*') {
                        self.err(
                            format!("routes[{i}].host"),
                            h.span(),
                            format!("invalid wildcard {s:?}"),
                            "write \"*.example.com\"",
                        );
                    }
                    host.push(HostMatch::Suffix(format!(".{rest}")));
                } else if s.is_empty() || s.contains('*') || s.contains('/') {
                    self.err(
                        format!("routes[{i}].host"),
                        h.span(),
                        format!("invalid host {s:?}"),
                        "write \"example.com\" or \"*.example.com\" (no scheme, no path)",
                    );
                } else {
                    host.push(HostMatch::Exact(s));
                }
            }
        }
        host
    }

    /// The route's path prefix (`/` when it has none, or a path_regex), or
    /// `None` when it has both or the prefix does not start with `/`.
    fn route_path(&mut self, i: usize, r: &raw::Route, regex: bool) -> Option<String> {
        let path = match &r.path {
            Some(p) if regex => {
                self.err(
                    format!("routes[{i}].path"),
                    p.span(),
                    "a route matches a path prefix or a path_regex, not both",
                    "keep one: path = \"/blog/\" or path_regex = \"^/blog/(\\\\d+)$\"",
                );
                return None;
            }
            None if regex => "/".to_string(),
            None => "/".to_string(),
            Some(p) if p.get_ref().starts_with('/') => p.get_ref().clone(),
            Some(p) => {
                self.err(
                    format!("routes[{i}].path"),
                    p.span(),
                    format!("path {:?} does not start with /", p.get_ref()),
                    "write a path prefix such as \"/api\"",
                );
                return None;
            }
        };
        Some(path)
    }

    /// `path_regex`: compiled, or the error with its position.
    fn path_regex(&mut self, i: usize, r: &raw::Route) -> Option<regex::Regex> {
        let p = r.path_regex.as_ref()?;
        match regex::Regex::new(p.get_ref()) {
            Ok(re) => Some(re),
            Err(e) => {
                self.err(
                    format!("routes[{i}].path_regex"),
                    p.span(),
                    format!("not a regular expression: {e}"),
                    "write a Rust regex (like nginx's, without (?<name>) lookarounds), e.g. \"^/blog/(\\\\d+)/(.*)$\"",
                );
                None
            }
        }
    }

    /// `basic_auth` (an htpasswd file, read now) and `basic_auth_realm`.
    fn basic_auth(&mut self, i: usize, r: &raw::Route) -> Option<Arc<BasicAuth>> {
        let f = r.basic_auth.as_ref()?;
        let key = format!("routes[{i}].basic_auth");
        let path = self.path(f.get_ref());
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                self.err(
                    key,
                    f.span(),
                    format!("cannot read {}: {e}", path.display()),
                    "create it with `htpasswd -cB FILE USER` (apache2-utils), readable by baton",
                );
                return None;
            }
        };
        let mut users = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match line.split_once(':') {
                Some((u, h)) if known_hash(h.split(':').next().unwrap_or(h)) => {
                    users.insert(u.to_string(), h.split(':').next().unwrap_or(h).to_string());
                }
                _ => {
                    self.err(
                        key.clone(),
                        f.span(),
                        format!("{} line {}: not a user with a password hash baton reads", path.display(), n + 1),
                        "write lines with `htpasswd -B FILE USER` (bcrypt); $apr1$, {SHA}, $1$, $5$ and $6$ hashes are read too; plain-text passwords are not",
                    );
                    return None;
                }
            }
        }
        if users.is_empty() {
            self.err(
                key,
                f.span(),
                format!("{} has no users: nobody could get in", path.display()),
                "add one with `htpasswd -B FILE USER`",
            );
            return None;
        }
        let realm = r
            .basic_auth_realm
            .as_ref()
            .map_or_else(|| "Restricted".to_string(), |v| v.get_ref().clone());
        if realm.contains(['"', '\\']) || realm.chars().any(char::is_control) {
            self.err(
                format!("routes[{i}].basic_auth_realm"),
                r.basic_auth_realm.as_ref().map_or(0..0, |v| v.span()),
                "a realm is shown in the browser's sign-in box: no quotes, backslashes or control characters",
                "write basic_auth_realm = \"Staff only\"",
            );
        }
        Some(Arc::new(BasicAuth {
            realm,
            users,
            verified: Default::default(),
        }))
    }

    /// `redirect` and `redirect_status`.
    fn redirect(&mut self, i: usize, r: &raw::Route) -> Option<RouteRedirect> {
        let t = r.redirect.as_ref()?;
        let template = t.get_ref().clone();
        let mut rest = template.as_str();
        // `$1`..`$9` are path_regex groups, checked with the route.
        while let Some(at) = rest.find('{') {
            let end = rest[at..].find('}').map_or(rest.len(), |e| at + e + 1);
            let name = &rest[at..end];
            if !matches!(name, "{scheme}" | "{host}" | "{uri}" | "{path}" | "{query}") {
                self.err(
                    format!("routes[{i}].redirect"),
                    t.span(),
                    format!("unknown placeholder {name}"),
                    "use {scheme}, {host}, {uri} (path and query), {path} or {query}",
                );
                return None;
            }
            rest = &rest[end..];
        }
        let status = match &r.redirect_status {
            None => 301,
            Some(s) if matches!(*s.get_ref(), 301 | 302 | 303 | 307 | 308) => *s.get_ref() as u16,
            Some(s) => {
                self.err(
                    format!("routes[{i}].redirect_status"),
                    s.span(),
                    format!("{} is not a redirect status", s.get_ref()),
                    "use 301 or 308 (permanent; 308 keeps the method), 302, 303 or 307 (temporary)",
                );
                301
            }
        };
        Some(RouteRedirect { template, status })
    }

    /// `"all"`, an address or a CIDR network, each.
    fn client_list(
        &mut self,
        key: &str,
        v: &Option<Vec<toml::Spanned<String>>>,
    ) -> Vec<ipnet::IpNet> {
        let mut all = Vec::new();
        let mut rest = Vec::new();
        for s in v.iter().flatten() {
            if s.get_ref().trim() == "all" {
                all.push("0.0.0.0/0".parse().expect("literal"));
                all.push("::/0".parse().expect("literal"));
            } else {
                rest.push(s.clone());
            }
        }
        all.extend(self.networks(key, &Some(rest)));
        all
    }

    fn header_rules(
        &mut self,
        key: &str,
        raw: &Option<toml::Spanned<raw::HeaderRules>>,
    ) -> HeaderRules {
        let mut out = HeaderRules::default();
        let Some(r) = raw else { return out };
        let span = r.span();
        // Fields that describe the connection or the framing are baton's to
        // set (RFC 9110 §7.6.1, RFC 9112 §6).
        const FRAMING: [&str; 9] = [
            "connection",
            "keep-alive",
            "proxy-connection",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "content-length",
            "host",
        ];
        let name = |v: &mut Self, n: &str| match http::HeaderName::from_bytes(n.as_bytes()) {
            Ok(h) if FRAMING.contains(&h.as_str()) => {
                v.err(
                    key,
                    span.clone(),
                    format!("{n:?} is a connection or framing field baton manages"),
                    "remove it from the rule",
                );
                None
            }
            Ok(h) => Some(h),
            Err(_) => {
                v.err(
                    key,
                    span.clone(),
                    format!("{n:?} is not a header field name"),
                    "use letters, digits and - only, e.g. \"X-Frame-Options\"",
                );
                None
            }
        };
        for n in r.get_ref().remove.iter().flatten() {
            if let Some(h) = name(self, n) {
                out.remove.push(h);
            }
        }
        for (n, v) in r.get_ref().set.iter().flatten() {
            let Some(h) = name(self, n) else { continue };
            match http::HeaderValue::from_str(v) {
                Ok(value) => out.set.push((h, value)),
                Err(_) => self.err(
                    key,
                    span.clone(),
                    format!("the value of {n:?} has characters a header cannot carry"),
                    "use printable ASCII",
                ),
            }
        }
        out
    }

    pub(super) fn rate_limit(&mut self, i: usize, r: &raw::Route) -> Option<RateLimit> {
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
}

/// Whether route prefix `a` matches every path prefix `b` matches.
fn path_prefix_covers(a: &str, b: &str) -> bool {
    b.starts_with(a) && (a.ends_with('/') || b.len() == a.len() || b[a.len()..].starts_with('/'))
}

/// The highest `$N` group a template names (`$$` is a literal `$`).
fn highest_group(t: &str) -> Option<usize> {
    let b = t.as_bytes();
    let mut i = 0;
    let mut max = None;
    while i + 1 < b.len() {
        if b[i] == b'$' {
            if b[i + 1] == b'$' {
                i += 2;
                continue;
            }
            if (b'1'..=b'9').contains(&b[i + 1]) {
                let n = (b[i + 1] - b'0') as usize;
                max = Some(max.map_or(n, |m: usize| m.max(n)));
            }
        }
        i += 1;
    }
    max
}
