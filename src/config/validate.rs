//! The validation pass: from the serde mirror to the validated model,
//! every problem at once, each with its key, line:column and a fix. One
//! file per section: [`server`] (`[server]`, `[log]`, `[resolver]`),
//! [`upstream`] (`[upstreams.*]`), [`routes`] (`[[routes]]`),
//! [`observe`] (`[incidents]`, `[alerts]`); this file holds the shared
//! helpers and the order the sections are read in.

mod observe;
mod routes;
mod server;
mod tls;
mod upstream;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::diagnostics::{ConfigError, closest, explain_serde_error};
use super::raw;
use super::*;

pub(super) struct Validator<'s> {
    src: &'s str,
    base: Option<PathBuf>,
    pub(super) errors: Vec<ConfigError>,
    /// Valid but likely to cause 502s (`baton check` prints them).
    warnings: Vec<ConfigError>,
    places: HashMap<String, (usize, usize)>,
}

pub(super) type Span = std::ops::Range<usize>;

/// The file's sections, as the serde mirror read them.
struct Sections {
    server: raw::Server,
    log: raw::Log,
    incidents: raw::Incidents,
    cache: raw::Cache,
    alerts: raw::Alerts,
    resolver: raw::Resolver,
    pages: raw::ErrorPages,
    tls: raw::Tls,
    upstreams: Vec<(Spanned<String>, raw::Upstream)>,
    routes: Vec<raw::Route>,
    saw_routes: bool,
    doc_span: Span,
}

impl<'s> Validator<'s> {
    /// A validator of `src`; `base` resolves relative file paths.
    pub(super) fn new(src: &'s str, base: Option<PathBuf>) -> Self {
        Validator {
            src,
            base,
            errors: Vec::new(),
            warnings: Vec::new(),
            places: HashMap::new(),
        }
    }

    pub(super) fn pos(&self, offset: usize) -> (usize, usize) {
        let before = &self.src[..offset.min(self.src.len())];
        let line = before.matches('\n').count() + 1;
        let col = before
            .rfind('\n')
            .map_or(before.len(), |i| before.len() - i - 1)
            + 1;
        (line, col)
    }

    pub(super) fn located(
        &self,
        key: String,
        span: Span,
        message: String,
        fix: &str,
    ) -> ConfigError {
        let (line, col) = self.pos(span.start);
        ConfigError {
            key,
            line,
            col,
            message,
            fix: fix.to_string(),
        }
    }

    pub(super) fn place(&mut self, key: String, span: Span) {
        let at = self.pos(span.start);
        self.places.insert(key, at);
    }

    pub(super) fn warn(
        &mut self,
        key: impl Into<String>,
        span: Span,
        message: impl Into<String>,
        fix: &str,
    ) {
        let w = self.located(key.into(), span, message.into(), fix);
        self.warnings.push(w);
    }

    pub(super) fn err(
        &mut self,
        key: impl Into<String>,
        span: Span,
        message: impl Into<String>,
        fix: &str,
    ) {
        let e = self.located(key.into(), span, message.into(), fix);
        self.errors.push(e);
    }

    pub(super) fn section<T: for<'de> Deserialize<'de>>(
        &mut self,
        key: &str,
        value: Spanned<toml::de::DeValue<'s>>,
    ) -> Option<T> {
        let whole = value.span();
        let mut value = value;
        let mut failed = false;
        // Every problem of the table at once: each unknown key or value of
        // the wrong type is reported, taken out, and the rest read again.
        for _ in 0..64 {
            let e = match T::deserialize(serde::de::IntoDeserializer::into_deserializer(
                value.clone(),
            )) {
                Ok(t) => return (!failed).then_some(t),
                Err(e) => e,
            };
            failed = true;
            let span = e.span().unwrap_or(whole.clone());
            let msg = e.message().trim().to_string();
            let (mut name, fix) = explain_serde_error(key, &msg, &self.src[span.clone()]);
            let toml::de::DeValue::Table(t) = value.get_mut() else {
                self.err(name, span, msg, &fix);
                return None;
            };
            let unknown = msg
                .strip_prefix("unknown field `")
                .and_then(|r| r.split('`').next())
                .map(str::to_string);
            // The entry the error is about: by name, else by position.
            let hit = t
                .iter()
                .find(|(k, v)| {
                    unknown.as_deref() == Some(k.get_ref().as_ref())
                        || (v.span().start <= span.start && span.end <= v.span().end)
                })
                .map(|(k, _)| k.get_ref().to_string());
            if unknown.is_none()
                && let Some(k) = &hit
            {
                name = format!("{key}.{k}");
            }
            self.err(name, span, msg, &fix);
            match hit {
                Some(k) => {
                    t.remove(k.as_str());
                }
                None => return None,
            }
        }
        None
    }

    pub(super) fn duration(
        &mut self,
        key: &str,
        v: &Option<Spanned<String>>,
        default: Duration,
    ) -> Duration {
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

    pub(super) fn int(
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

    pub(super) fn socket_addr(&mut self, key: &str, v: &Spanned<String>) -> Option<SocketAddr> {
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

    pub(super) fn log_target(
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

    pub(super) fn path(&self, p: &str) -> PathBuf {
        let p = PathBuf::from(p);
        match &self.base {
            Some(b) if p.is_relative() => b.join(p),
            _ => p,
        }
    }

    pub(super) fn template(&mut self, key: &str, v: &Option<Spanned<String>>) -> Option<Arc<str>> {
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

    pub(super) fn pem_certs(
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

    /// Validates the whole file; `None` when it could not be read at all.
    pub(super) fn run(&mut self) -> Option<Config> {
        let s = self.sections();
        let server = self.server(&s.server, &s.log);
        let tls = self.tls(&s.server, &s.tls);
        let incidents = self.incidents(&s.incidents);
        let alerts = self.alerts(&s.alerts);
        let resolver = self.resolver(&s.resolver);
        let pages = PageTemplates {
            html: self.template("error_pages.html", &s.pages.html),
            json: self.template("error_pages.json", &s.pages.json),
            text: self.template("error_pages.text", &s.pages.text),
        };
        let mut upstreams = Vec::new();
        let mut index = HashMap::new();
        for (name, u) in &s.upstreams {
            let cfg = self.upstream(name, u, server.outer_idle_timeout);
            index.insert(name.get_ref().clone(), upstreams.len());
            upstreams.push(Arc::new(cfg));
        }
        if !s.saw_routes && self.errors.is_empty() {
            self.err(
                "routes",
                s.doc_span.clone(),
                "no routes: every request would get 404",
                "add a [[routes]] section with upstream = \"NAME\"",
            );
        }
        let mut routes = Vec::new();
        for r in &s.routes {
            if let Some(route) = self.route(routes.len(), r, &index, &upstreams, &routes) {
                routes.push(route);
            }
        }
        // A supervised backend's own user needs baton to keep root.
        if let Some(u) = &server.user {
            for up in &upstreams {
                if let Some(p) = &up.process
                    && let Some(pu) = &p.user
                    && pu.uid != u.uid
                {
                    self.err(
                        format!("upstreams.{}.process.user", up.name),
                        0..0,
                        format!("baton runs as {} (server.user), which cannot start a process as {}", u.name, pu.name),
                        "remove one of the two: run the backend as server.user, or keep baton as root",
                    );
                }
            }
        }
        let cache = self.cache(&s.cache);
        Some(Config {
            cache,
            user: server.user,
            listen: server.listen,
            tls,
            admin: server.admin,
            workers: server.workers,
            limits: server.limits,
            log: server.log,
            resolver,
            pages,
            upstreams,
            routes,
            source: None,
            shown: String::new(),
            warnings: std::mem::take(&mut self.warnings),
            places: std::mem::take(&mut self.places),
            outer_idle_timeout: server.outer_idle_timeout,
            incidents,
            alerts,
            admin_token: server.admin_token,
            admin_hosts: server.admin_hosts,
            status_page: server.status_page,
            dashboard_actions: s.server.dashboard_actions.unwrap_or(false),
        })
    }

    /// Reads the document into its sections (unknown ones are errors).
    fn sections(&mut self) -> Sections {
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
        let mut cache = raw::Cache::default();
        let mut alerts = raw::Alerts::default();
        let mut resolver = raw::Resolver::default();
        let mut pages = raw::ErrorPages::default();
        let mut tls = raw::Tls::default();
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
                "cache" => cache = self.section("cache", v).unwrap_or_default(),
                "alerts" => alerts = self.section("alerts", v).unwrap_or_default(),
                "resolver" => resolver = self.section("resolver", v).unwrap_or_default(),
                "error_pages" => pages = self.section("error_pages", v).unwrap_or_default(),
                "tls" => tls = self.section("tls", v).unwrap_or_default(),
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
                    let fix = match (closest(other, &["server", "log", "resolver", "error_pages", "upstreams", "routes", "incidents", "alerts", "tls", "cache"]), super::diagnostics::from_nginx(other)) {
                        (Some(s), _) => format!("did you mean `{s}`? Known sections: server, log, resolver, error_pages, upstreams, routes, incidents, alerts, tls, cache"),
                        (None, Some(n)) => format!("that is nginx's `{other}`: {n}"),
                        (None, None) => "remove it; known sections: server, log, resolver, error_pages, upstreams, routes, incidents, alerts, tls, cache".into(),
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

        Sections {
            tls,
            server,
            log,
            incidents,
            cache,
            alerts,
            resolver,
            pages,
            upstreams: upstream_tables,
            routes: raw_routes,
            saw_routes,
            doc_span,
        }
    }
}
