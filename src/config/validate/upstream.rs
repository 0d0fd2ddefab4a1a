//! `[upstreams.*]`: servers, TLS, FastCGI, a supervised process,
//! balancing, health, outlier ejection, limits and the timeout ladder.

use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::{Span, Validator};
use crate::config::raw;
use crate::config::*;

impl Validator<'_> {
    pub(super) fn upstream(
        &mut self,
        name: &Spanned<String>,
        u: &raw::Upstream,
        outer_idle_timeout: Option<Duration>,
    ) -> UpstreamConfig {
        let n = name.get_ref();
        let key = |k: &str| format!("upstreams.{n}.{k}");
        let mut servers = Vec::new();
        let is_static = u.protocol.as_ref().is_some_and(|p| p.get_ref() == "static");
        let (listed, servers_span) = match &u.servers {
            Some(s) => (s.get_ref().as_slice(), s.span()),
            None => (&[][..], u.protocol.as_ref().map_or(0..0, |p| p.span())),
        };
        if is_static && !listed.is_empty() {
            self.err(
                key("servers"),
                servers_span.clone(),
                "a static upstream serves files itself: it has no servers",
                "remove servers, or use protocol = \"fastcgi\" for PHP-FPM",
            );
        } else if !is_static && listed.is_empty() {
            self.err(
                key("servers"),
                servers_span.clone(),
                "an upstream needs at least one server",
                "list addresses: servers = [\"127.0.0.1:3000\"], or serve files with protocol = \"static\" and root = \"/var/www/html\"",
            );
        }
        for s in listed {
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
                servers_span.clone(),
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
        let rt_span = u.read_timeout.as_ref().map_or(servers_span, |r| r.span());
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
        UpstreamConfig {
            http2: http2(u),
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
            display_name: u.display_name.as_ref().and_then(|d| {
                let t = d.get_ref().trim();
                if t.is_empty() || t.chars().count() > 80 {
                    self.err(
                        key("display_name"),
                        d.span(),
                        "a display name is shown to visitors on the status page: 1 to 80 characters",
                        "name the part of the site as visitors know it, e.g. \"Online shop\"",
                    );
                    return None;
                }
                Some(t.to_string())
            }),
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
        }
    }

    pub(super) fn upstream_tls(
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
        let client = match (&u.tls_client_cert, &u.tls_client_key) {
            (Some(c), Some(k)) => {
                use rustls::pki_types::pem::PemObject;
                let chain = self.pem_certs(key("tls_client_cert"), c);
                let path = self.path(k.get_ref());
                match rustls::pki_types::PrivateKeyDer::from_pem_file(&path) {
                    Ok(pk) if !chain.is_empty() => match certified_key(chain, &pk) {
                        Ok(ck) => Some(Arc::new(ck)),
                        Err(e) => {
                            self.err(
                                key("tls_client_key"),
                                k.span(),
                                e,
                                "pair the client certificate with its own key",
                            );
                            None
                        }
                    },
                    Ok(_) => None,
                    Err(e) => {
                        self.err(
                            key("tls_client_key"),
                            k.span(),
                            format!("cannot read a private key from {}: {e}", path.display()),
                            "give the PEM private key of tls_client_cert",
                        );
                        None
                    }
                }
            }
            (Some(c), None) => {
                self.err(
                    key("tls_client_cert"),
                    c.span(),
                    "a client certificate without its key",
                    "add tls_client_key = \"FILE.key\"",
                );
                None
            }
            (None, Some(k)) => {
                self.err(
                    key("tls_client_key"),
                    k.span(),
                    "a client key without its certificate",
                    "add tls_client_cert = \"FILE.crt\"",
                );
                None
            }
            (None, None) => None,
        };
        Some(UpstreamTls {
            server_name,
            ca,
            client,
            http2: http2(u),
        })
    }

    pub(super) fn fastcgi(
        &mut self,
        key: &dyn Fn(&str) -> String,
        u: &raw::Upstream,
        tls: &Option<UpstreamTls>,
    ) -> Option<Arc<FastCgiConfig>> {
        let mut is_static = false;
        let fcgi = match &u.protocol {
            None => false,
            Some(p) => match p.get_ref().as_str() {
                "http" | "http2" | "grpc" => false,
                "fastcgi" => true,
                "static" => {
                    is_static = true;
                    true
                }
                other => {
                    self.err(
                        key("protocol"),
                        p.span(),
                        format!("unknown protocol {other:?}"),
                        "use \"http\" (HTTP/1.1, the default), \"http2\" (or \"grpc\": HTTP/2, h2c or by ALPN over TLS), \"fastcgi\" (PHP-FPM) or \"static\" (files from root, no servers)",
                    );
                    false
                }
            },
        };
        if !fcgi {
            let only: [(&str, Option<Span>); 7] = [
                ("root", u.root.as_ref().map(|v| v.span())),
                ("alias", u.alias.as_ref().map(|v| v.span())),
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
                        format!("{k} only applies to FastCGI and static upstreams"),
                        "add protocol = \"fastcgi\" (or \"static\") to this upstream, or remove the key",
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
                    "a FastCGI or static upstream needs its document root",
                    "add root = \"/var/www/html\" (for FastCGI, the path PHP-FPM sees, for SCRIPT_FILENAME)",
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
        let mut aliases = Vec::new();
        for (prefix, dir) in u
            .alias
            .as_ref()
            .map(|a| a.get_ref().iter())
            .into_iter()
            .flatten()
        {
            let span = u.alias.as_ref().map_or(0..0, |a| a.span());
            if !prefix.starts_with('/') || !prefix.ends_with('/') || prefix == "/" {
                self.err(
                    key("alias"),
                    span.clone(),
                    format!("alias prefix {prefix:?} must be a URL path under / ending in /"),
                    "write alias = { \"/wp-content/\" = \"/var/lib/wordpress/wp-content/\" }",
                );
                continue;
            }
            let p = self.path(dir);
            if !p.is_dir() {
                self.err(
                    key("alias"),
                    span,
                    format!("alias {prefix:?}: {} is not a directory", p.display()),
                    "give the directory that URL prefix is served from",
                );
                continue;
            }
            aliases.push((prefix.clone(), p));
        }
        let span = u.index.as_ref().map_or(0..0, |i| i.span());
        let mut index: Vec<String> = Vec::new();
        let default_index = if is_static { "index.html" } else { "index.php" };
        for f in u
            .index
            .as_ref()
            .map_or(vec![default_index], |i| i.get_ref().items())
        {
            if f.split_whitespace().count() > 1 {
                // nginx's `index index.php index.html;` habit.
                let list: Vec<String> = f.split_whitespace().map(|n| format!("{n:?}")).collect();
                self.err(
                    key("index"),
                    span.clone(),
                    format!("{f:?} is several file names in one string: no file has that name"),
                    &format!("write a list: index = [{}]", list.join(", ")),
                );
            } else if f.contains('/') || f.is_empty() {
                self.err(
                    key("index"),
                    span.clone(),
                    format!("index {f:?} must be a file name"),
                    "write index = \"index.php\" or a list, index = [\"index.php\", \"index.html\"]",
                );
            } else {
                index.push(f.to_string());
            }
        }
        let try_files = match &u.try_files {
            None if is_static => vec!["$uri".into(), "$uri/".into(), "=404".into()],
            None => vec![
                "$uri".to_string(),
                "$uri/".to_string(),
                format!(
                    "/{}?$args",
                    index.first().map_or("index.php", String::as_str)
                ),
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
        if is_static {
            for (k, span) in [
                ("script_ext", u.script_ext.as_ref().map(|v| v.span())),
                ("params", u.params.as_ref().map(|v| v.span())),
            ] {
                if let Some(span) = span {
                    self.err(
                        key(k),
                        span,
                        format!("{k} only applies to FastCGI upstreams: a static upstream runs no scripts"),
                        "remove the key, or use protocol = \"fastcgi\"",
                    );
                }
            }
        }
        let script_ext = match &u.script_ext {
            _ if is_static => String::new(),
            None => ".php".to_string(),
            Some(e) => e.get_ref().clone(),
        };
        if !is_static && (!script_ext.starts_with('.') || script_ext.len() < 2) {
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
        // "off": no Cache-Control at all (nginx's and Apache's default;
        // `baton import` writes it).
        let static_max_age = match &u.static_max_age {
            Some(v) if v.get_ref() == "off" => None,
            _ => Some(self.duration(
                &key("static_max_age"),
                &u.static_max_age,
                Duration::from_secs(3600),
            )),
        };
        Some(Arc::new(FastCgiConfig {
            root,
            aliases,
            index,
            try_files,
            script_ext,
            params,
            static_max_age,
        }))
    }

    pub(super) fn process(
        &mut self,
        key: &dyn Fn(&str) -> String,
        p: &Spanned<raw::Process>,
        servers: &[ServerSpec],
        has_health: bool,
    ) -> Option<Arc<ProcessConfig>> {
        let k = |x: &str| key(&format!("process.{x}"));
        let raw = p.get_ref();
        // `baton check` points at it (the backend's own config test).
        self.place(k("command"), raw.command.span());
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

    pub(super) fn balance(&mut self, key: &dyn Fn(&str) -> String, u: &raw::Upstream) -> Balance {
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

    pub(super) fn health(&mut self, key: &dyn Fn(&str) -> String, h: &raw::Health) -> HealthConfig {
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

    pub(super) fn outlier(
        &mut self,
        key: &dyn Fn(&str) -> String,
        o: Option<&raw::Outlier>,
    ) -> OutlierConfig {
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

/// `protocol = "http2"` or `"grpc"`.
fn http2(u: &raw::Upstream) -> bool {
    u.protocol
        .as_ref()
        .is_some_and(|p| matches!(p.get_ref().as_str(), "http2" | "grpc"))
}
