//! `baton import nginx FILE...` and `baton import apache FILE...`: read a
//! real server's config and write a baton.toml, with a report of each
//! directive: mapped, approximated (with how it differs) or not mapped
//! (with why). The written file is then loaded by the same loader as
//! `baton check`; its findings join the report.
//!
//! Owns: the [`Plan`] both readers fill (server keys, certificates,
//! upstreams, routes in order), the report, and the TOML written.

mod apache;
mod nginx;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use toml::Value;
use toml::map::Map;

/// What a directive became.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Mapped,
    Approximated,
    NotMapped,
}

impl Verdict {
    fn as_str(self) -> &'static str {
        match self {
            Verdict::Mapped => "mapped",
            Verdict::Approximated => "approximated",
            Verdict::NotMapped => "not mapped",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Finding {
    pub file: String,
    pub line: usize,
    pub directive: String,
    pub verdict: Verdict,
    pub note: String,
}

/// Where a directive was read.
#[derive(Debug, Clone, Default)]
pub struct At {
    pub file: String,
    pub line: usize,
}

/// The baton config being built, in the order it is written.
#[derive(Default)]
pub struct Plan {
    pub server: Map<String, Value>,
    pub listen: Vec<String>,
    pub listen_tls: Vec<String>,
    pub certificates: Vec<(String, String)>,
    pub log: Map<String, Value>,
    /// `(name, keys)`, in first-use order.
    pub upstreams: Vec<(String, Map<String, Value>)>,
    pub routes: Vec<Map<String, Value>>,
    /// Routes that must come last (servers without a name: nginx's
    /// default server takes what no named one does).
    pub default_routes: Vec<Map<String, Value>>,
    pub findings: Vec<Finding>,
}

impl Plan {
    pub fn note(&mut self, at: &At, directive: &str, verdict: Verdict, note: impl Into<String>) {
        self.findings.push(Finding {
            file: at.file.clone(),
            line: at.line,
            directive: directive.to_string(),
            verdict,
            note: note.into(),
        });
    }

    /// The upstream with these keys: an existing one with the same keys,
    /// or a new one named `name` (made unique).
    pub fn upstream(&mut self, name: &str, keys: Map<String, Value>) -> String {
        if let Some((n, _)) = self.upstreams.iter().find(|(_, k)| *k == keys) {
            return n.clone();
        }
        let base = sanitize(name);
        let mut n = base.clone();
        let mut i = 2;
        while self.upstreams.iter().any(|(u, _)| *u == n) {
            n = format!("{base}_{i}");
            i += 1;
        }
        self.upstreams.push((n.clone(), keys));
        n
    }

    /// nginx's and Apache's `user`: the account baton drops to.
    pub fn user(&mut self, at: &At, directive: &str, name: &str) {
        self.server.insert("user".into(), s(name));
        self.note(
            at,
            directive,
            Verdict::Mapped,
            "server.user: baton drops to it after binding its ports",
        );
    }

    pub fn upstream_keys(&mut self, name: &str) -> Option<&mut Map<String, Value>> {
        self.upstreams
            .iter_mut()
            .find(|(n, _)| n == name)
            .map(|(_, k)| k)
    }

    /// The config as TOML, with a header saying where it came from.
    pub fn toml(&self, from: &str) -> String {
        let mut doc = Map::new();
        let mut server = self.server.clone();
        if !self.listen.is_empty() {
            server.insert("listen".into(), strings(&self.listen));
        }
        if !self.listen_tls.is_empty() {
            server.insert("listen_tls".into(), strings(&self.listen_tls));
        }
        doc.insert("server".into(), Value::Table(server));
        if !self.certificates.is_empty() {
            let certs = self
                .certificates
                .iter()
                .map(|(c, k)| {
                    let mut t = Map::new();
                    t.insert("cert".into(), Value::String(c.clone()));
                    t.insert("key".into(), Value::String(k.clone()));
                    Value::Table(t)
                })
                .collect();
            let mut tls = Map::new();
            tls.insert("certificates".into(), Value::Array(certs));
            doc.insert("tls".into(), Value::Table(tls));
        }
        if !self.log.is_empty() {
            doc.insert("log".into(), Value::Table(self.log.clone()));
        }
        let mut ups = Map::new();
        for (n, k) in &self.upstreams {
            ups.insert(n.clone(), Value::Table(k.clone()));
        }
        if !ups.is_empty() {
            doc.insert("upstreams".into(), Value::Table(ups));
        }
        let routes: Vec<Value> = self
            .routes
            .iter()
            .chain(&self.default_routes)
            .cloned()
            .map(Value::Table)
            .collect();
        let body = toml::to_string_pretty(&Value::Table(doc)).unwrap_or_default();
        // Routes are written by hand after the rest: toml would sort the
        // array's tables with the rest of the document, and route order
        // is the matching order.
        let mut out = format!(
            "# Imported by `baton import` from {from}.\n# Routes match in file order; see the import report for what differs.\n\n{body}"
        );
        for r in routes {
            out.push_str("\n[[routes]]\n");
            if let Value::Table(t) = r {
                for (k, v) in &t {
                    let _ = writeln!(out, "{k} = {}", inline(v));
                }
            }
        }
        if !out.ends_with('\n') {
            out.push('\n');
        }
        out
    }

    /// The report: each finding, then the totals.
    pub fn report(&self) -> String {
        let mut out = String::new();
        for f in &self.findings {
            let _ = writeln!(
                out,
                "{}:{}: {}: {}: {}",
                f.file,
                f.line,
                f.directive,
                f.verdict.as_str(),
                f.note
            );
        }
        let count = |v| self.findings.iter().filter(|f| f.verdict == v).count();
        let _ = writeln!(
            out,
            "\n{} directives: {} mapped, {} approximated, {} not mapped",
            self.findings.len(),
            count(Verdict::Mapped),
            count(Verdict::Approximated),
            count(Verdict::NotMapped)
        );
        out
    }
}

/// A value written on one line (inline tables and arrays).
fn inline(v: &Value) -> String {
    match v {
        Value::Table(t) => {
            let items: Vec<String> = t
                .iter()
                .map(|(k, v)| format!("{} = {}", key(k), inline(v)))
                .collect();
            format!("{{ {} }}", items.join(", "))
        }
        Value::Array(a) => {
            let items: Vec<String> = a.iter().map(inline).collect();
            format!("[{}]", items.join(", "))
        }
        other => other.to_string(),
    }
}

/// A key, quoted when it is not a bare key.
fn key(k: &str) -> String {
    if !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        k.to_string()
    } else {
        Value::String(k.to_string()).to_string()
    }
}

/// The protocol of an upstream that serves a document root: FastCGI at
/// `fastcgi` when the site hands scripts to PHP-FPM there, else static
/// files (the keys both importers write).
pub fn files_protocol(k: &mut Map<String, Value>, fastcgi: Option<&str>) {
    match fastcgi {
        Some(a) => {
            k.insert("protocol".into(), s("fastcgi"));
            k.insert("servers".into(), strings(&[a.to_string()]));
        }
        None => {
            k.insert("protocol".into(), s("static"));
        }
    }
}

pub fn strings(v: &[String]) -> Value {
    Value::Array(v.iter().cloned().map(Value::String).collect())
}

pub fn s(v: impl Into<String>) -> Value {
    Value::String(v.into())
}

/// A name usable as an upstream's: letters, digits and `_`.
fn sanitize(name: &str) -> String {
    let mut n: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    while n.contains("__") {
        n = n.replace("__", "_");
    }
    let n = n.trim_matches('_').to_string();
    if n.is_empty() { "app".into() } else { n }
}

/// The files an `include` (nginx) or `Include` (Apache) names: an
/// absolute path, or a relative one tried from the including file's
/// directory, its parent, then the server's own directory (`prefix`:
/// `/etc/nginx`, `/etc/apache2`); a `*` in the file name is a glob
/// (sorted, as both servers read them).
pub fn include_files(pattern: &str, from: &Path, prefix: &str) -> Vec<PathBuf> {
    let p = Path::new(pattern);
    let candidates: Vec<PathBuf> = if p.is_absolute() {
        vec![p.to_path_buf()]
    } else {
        let dir = from.parent().unwrap_or(Path::new("."));
        let mut c = vec![dir.join(p)];
        if let Some(up) = dir.parent() {
            c.push(up.join(p));
        }
        c.push(Path::new(prefix).join(p));
        c
    };
    for c in candidates {
        let name = c.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let Some((pre, post)) = name.split_once('*') else {
            if c.is_file() {
                return vec![c];
            }
            continue;
        };
        let Some(Ok(entries)) = c.parent().map(std::fs::read_dir) else {
            continue;
        };
        let mut found: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|f| {
                f.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(pre) && n.ends_with(post))
                    && f.is_file()
            })
            .collect();
        found.sort();
        return found;
    }
    Vec::new()
}

/// nginx's and Apache's sizes (`64m`, `1G`, `512k`, bytes) in bytes.
pub fn size(v: &str) -> Option<u64> {
    let v = v.trim();
    let (num, mult) = match v.char_indices().last()? {
        (i, 'k' | 'K') => (&v[..i], 1024),
        (i, 'm' | 'M') => (&v[..i], 1024 * 1024),
        (i, 'g' | 'G') => (&v[..i], 1024 * 1024 * 1024),
        _ => (v, 1),
    };
    num.parse::<u64>().ok().map(|n| n * mult)
}

/// nginx's times (`60`, `60s`, `1m`, `500ms`, `1h`, `1d`) as baton writes
/// them.
pub fn duration(v: &str) -> Option<String> {
    let v = v.trim();
    if v.chars().all(|c| c.is_ascii_digit()) && !v.is_empty() {
        return Some(format!("{v}s"));
    }
    let split = v.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = v.split_at(split);
    n.parse::<u64>().ok()?;
    match unit {
        "ms" | "s" | "m" | "h" => Some(v.to_string()),
        "d" => Some(format!("{}h", n.parse::<u64>().ok()? * 24)),
        "w" => Some(format!("{}h", n.parse::<u64>().ok()? * 24 * 7)),
        "M" => Some(format!("{}h", n.parse::<u64>().ok()? * 24 * 30)),
        "y" => Some(format!("{}h", n.parse::<u64>().ok()? * 24 * 365)),
        _ => None,
    }
}

/// What `baton import` was asked.
pub struct Options {
    pub kind: String,
    pub files: Vec<PathBuf>,
    pub out: Option<PathBuf>,
    pub report: Option<PathBuf>,
    /// Replace the listen addresses (to try the import beside the server
    /// it came from).
    pub listen: Vec<String>,
    pub listen_tls: Vec<String>,
}

/// Reads the files, writes the config and the report. Exit 0: written and
/// loadable, 1: written but the loader found errors, 2: could not read.
pub fn run(o: &Options) -> u8 {
    let plan = match o.kind.as_str() {
        "nginx" => nginx::import(&o.files),
        "apache" | "apache2" | "httpd" => apache::import(&o.files),
        other => {
            eprintln!("baton import: unknown server {other:?}: use `nginx` or `apache`");
            return 2;
        }
    };
    let mut plan = match plan {
        Ok(p) => p,
        Err(e) => {
            eprintln!("baton import: {e}");
            return 2;
        }
    };
    if !o.listen.is_empty() || !o.listen_tls.is_empty() {
        plan.listen = o.listen.clone();
        plan.listen_tls = o.listen_tls.clone();
    }
    let from: Vec<String> = o.files.iter().map(|f| f.display().to_string()).collect();
    let text = plan.toml(&from.join(", "));
    // The same loader as `baton check`, relative to where the file goes.
    let base = o
        .out
        .as_deref()
        .and_then(Path::parent)
        .map(Path::to_path_buf);
    let checked = crate::config::parse(&text, "baton.toml", base.as_deref());
    let mut report = plan.report();
    let code = match &checked {
        Ok(c) => {
            for w in &c.warnings {
                let _ = writeln!(
                    report,
                    "baton check warns: baton.toml:{}: {}: {} (fix: {})",
                    w.line, w.key, w.message, w.fix
                );
            }
            0
        }
        Err(e) => {
            let _ = write!(
                report,
                "\nthe written config does not load yet; fix these first:\n{e}"
            );
            1
        }
    };
    match &o.out {
        Some(p) => {
            if let Err(e) = std::fs::write(p, &text) {
                eprintln!("baton import: cannot write {}: {e}", p.display());
                return 2;
            }
        }
        None => print!("{text}"),
    }
    match &o.report {
        Some(p) => {
            if let Err(e) = std::fs::write(p, &report) {
                eprintln!("baton import: cannot write {}: {e}", p.display());
                return 2;
            }
        }
        None => eprint!("{report}"),
    }
    code
}

/// nginx's and Apache's variables in a redirect target, as baton's
/// placeholders; `None` when one has no equivalent.
pub fn redirect_template(t: &str, server_name: Option<&str>) -> Option<String> {
    let mut out = String::new();
    let mut rest = t;
    while let Some(at) = rest.find(['$', '%']) {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let (name, after) = if let Some(r) = rest.strip_prefix("${") {
            let end = r.find('}')?;
            (&r[..end], &r[end + 1..])
        } else if let Some(r) = rest.strip_prefix("%{") {
            // Apache's %{REQUEST_URI}.
            let end = r.find('}')?;
            (&r[..end], &r[end + 1..])
        } else if rest.starts_with('%') {
            out.push('%');
            rest = &rest[1..];
            continue;
        } else {
            let r = &rest[1..];
            let end = r
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(r.len());
            (&r[..end], &r[end..])
        };
        let v = match name {
            "request_uri" | "REQUEST_URI" => "{uri}".to_string(),
            "uri" | "document_uri" => "{path}".to_string(),
            "args" | "query_string" | "QUERY_STRING" => "{query}".to_string(),
            "host" | "http_host" | "HTTP_HOST" | "SERVER_NAME" => "{host}".to_string(),
            "server_name" => server_name.map_or("{host}".to_string(), str::to_string),
            "scheme" => "{scheme}".to_string(),
            n if n.len() == 1 && n.as_bytes()[0].is_ascii_digit() => format!("${n}"),
            _ => return None,
        };
        out.push_str(&v);
        rest = after;
    }
    out.push_str(rest);
    // `{uri}` already carries the query: `$request_uri?$args` is nginx's
    // habit for another purpose.
    Some(out)
}
