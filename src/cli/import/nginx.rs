//! nginx's config: read (tokens, blocks, includes), then mapped server by
//! server onto a [`Plan`].
//!
//! The reader is written here: the crates that parse nginx configs are
//! unmaintained or bind to C, and the grammar is small (words, quoted
//! strings, `;`, `{`, `}`, `#` comments).

use std::path::{Path, PathBuf};

use toml::Value;
use toml::map::Map;

use super::{At, Plan, Verdict, duration, files_protocol, redirect_template, s, size, strings};

/// One directive, with its block if it has one.
#[derive(Debug, Clone)]
pub struct Directive {
    pub name: String,
    pub args: Vec<String>,
    pub at: At,
    pub block: Option<Vec<Directive>>,
}

impl Directive {
    fn text(&self) -> String {
        let mut t = self.name.clone();
        for a in &self.args {
            t.push(' ');
            t.push_str(a);
        }
        if self.block.is_some() {
            t.push_str(" { ... }");
        }
        t
    }

    fn arg(&self, i: usize) -> &str {
        self.args.get(i).map_or("", String::as_str)
    }
}

/// Reads a file (and what it includes) into directives.
pub fn read(path: &Path) -> Result<Vec<Directive>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let tokens = tokenize(&text, &path.display().to_string())?;
    let mut pos = 0;
    let mut out = parse_block(&tokens, &mut pos, &path.display().to_string(), false)?;
    expand_includes(&mut out, path, 0)?;
    Ok(out)
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Semi,
    Open,
    Close,
}

fn tokenize(text: &str, file: &str) -> Result<Vec<(Tok, usize)>, String> {
    let mut out = Vec::new();
    let mut line = 1;
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            '\n' => {
                line += 1;
                chars.next();
            }
            c if c.is_whitespace() => {
                chars.next();
            }
            '#' => {
                while chars.peek().is_some_and(|&c| c != '\n') {
                    chars.next();
                }
            }
            ';' => {
                out.push((Tok::Semi, line));
                chars.next();
            }
            '{' => {
                out.push((Tok::Open, line));
                chars.next();
            }
            '}' => {
                out.push((Tok::Close, line));
                chars.next();
            }
            '"' | '\'' => {
                let q = c;
                chars.next();
                let start = line;
                let mut w = String::new();
                loop {
                    match chars.next() {
                        None => return Err(format!("{file}:{start}: a quote is never closed")),
                        Some('\\') => match chars.next() {
                            Some(e) if e == q || e == '\\' => w.push(e),
                            Some(e) => {
                                w.push('\\');
                                w.push(e);
                            }
                            None => {}
                        },
                        Some(ch) if ch == q => break,
                        Some(ch) => {
                            if ch == '\n' {
                                line += 1;
                            }
                            w.push(ch);
                        }
                    }
                }
                out.push((Tok::Word(w), start));
            }
            _ => {
                let mut w = String::new();
                while let Some(&ch) = chars.peek() {
                    if ch.is_whitespace() || ch == ';' || ch == '"' || ch == '\'' {
                        break;
                    }
                    // `{` and `}` end a word, except in `${var}` and a
                    // regex's `{3}` written unquoted after other text.
                    if ch == '{' && !w.ends_with('$') {
                        break;
                    }
                    if ch == '}' && !w.contains("${") {
                        break;
                    }
                    if ch == '\\' {
                        chars.next();
                        w.push('\\');
                        if let Some(e) = chars.next() {
                            w.push(e);
                        }
                        continue;
                    }
                    w.push(ch);
                    chars.next();
                }
                out.push((Tok::Word(w), line));
            }
        }
    }
    Ok(out)
}

fn parse_block(
    toks: &[(Tok, usize)],
    pos: &mut usize,
    file: &str,
    nested: bool,
) -> Result<Vec<Directive>, String> {
    let mut out = Vec::new();
    while *pos < toks.len() {
        let (t, line) = &toks[*pos];
        match t {
            Tok::Close if nested => {
                *pos += 1;
                return Ok(out);
            }
            Tok::Close => return Err(format!("{file}:{line}: unexpected }}")),
            Tok::Semi => {
                *pos += 1;
            }
            Tok::Open => return Err(format!("{file}:{line}: a block without a directive")),
            Tok::Word(name) => {
                let at = At {
                    file: file.to_string(),
                    line: *line,
                };
                let name = name.clone();
                *pos += 1;
                let mut args = Vec::new();
                loop {
                    match toks.get(*pos) {
                        Some((Tok::Word(w), _)) => {
                            args.push(w.clone());
                            *pos += 1;
                        }
                        Some((Tok::Semi, _)) => {
                            *pos += 1;
                            out.push(Directive {
                                name,
                                args,
                                at,
                                block: None,
                            });
                            break;
                        }
                        Some((Tok::Open, _)) => {
                            *pos += 1;
                            let block = parse_block(toks, pos, file, true)?;
                            out.push(Directive {
                                name,
                                args,
                                at,
                                block: Some(block),
                            });
                            break;
                        }
                        Some((_, l)) => {
                            return Err(format!("{file}:{l}: {name} is not ended by ; or a block"));
                        }
                        None => return Err(format!("{file}: {name} is not ended by ;")),
                    }
                }
            }
        }
    }
    if nested {
        return Err(format!("{file}: a block is never closed"));
    }
    Ok(out)
}

/// `include` replaced by the directives of the files it names
/// ([`super::include_files`]).
fn expand_includes(ds: &mut Vec<Directive>, from: &Path, depth: u32) -> Result<(), String> {
    if depth > 16 {
        return Err("includes nest more than 16 deep (a loop?)".into());
    }
    let mut i = 0;
    while i < ds.len() {
        if let Some(b) = ds[i].block.as_mut() {
            expand_includes(b, from, depth)?;
        }
        if ds[i].name != "include" {
            i += 1;
            continue;
        }
        let pattern = ds[i].arg(0).to_string();
        let files = super::include_files(&pattern, from, "/etc/nginx");
        let mut read_in = Vec::new();
        for f in &files {
            let mut inner = read(f)?;
            expand_includes(&mut inner, f, depth + 1)?;
            read_in.extend(inner);
        }
        if files.is_empty() {
            // Kept: the mapper says what it was (fastcgi_params: baton
            // sends the standard CGI parameters itself).
            i += 1;
            continue;
        }
        let n = read_in.len();
        ds.splice(i..=i, read_in);
        i += n;
    }
    Ok(())
}

/// The directives every context may hold that baton does on its own, or
/// that only tune nginx itself.
const BUILT_IN: &[(&str, &str)] = &[
    (
        "sendfile",
        "baton sends static files of 32 KiB or more with sendfile itself",
    ),
    (
        "tcp_nopush",
        "baton sends a response head in the body's first segment itself",
    ),
    ("tcp_nodelay", "baton sets TCP_NODELAY on every connection"),
    ("types_hash_max_size", "nginx's own tuning"),
    ("server_names_hash_bucket_size", "nginx's own tuning"),
    ("types", "baton knows the MIME types of files itself"),
    ("default_type", "baton knows the MIME types of files itself"),
    ("server_tokens", "baton never sends its version"),
    ("pid", "baton writes no pid file; systemd tracks it"),
    ("daemon", "baton runs in the foreground (under systemd)"),
    (
        "master_process",
        "baton runs in one process with a thread per worker",
    ),
    (
        "client_body_temp_path",
        "baton keeps no temporary files: bodies are streamed, or held up to replay_buffer_bytes",
    ),
    (
        "proxy_temp_path",
        "baton keeps no temporary files: responses are streamed",
    ),
    (
        "fastcgi_temp_path",
        "baton keeps no temporary files: responses are streamed",
    ),
    ("uwsgi_temp_path", "baton has no uwsgi upstreams"),
    ("scgi_temp_path", "baton has no SCGI upstreams"),
    (
        "worker_connections",
        "baton has no per-worker connection cap; server.max_connections caps all",
    ),
    ("multi_accept", "nginx's own tuning"),
    (
        "log_not_found",
        "baton logs a 404 as an access line with cause file_not_found, not an error",
    ),
    (
        "fastcgi_split_path_info",
        "baton splits PATH_INFO after the script (.php) itself",
    ),
    ("fastcgi_index", "index names the directory index"),
    (
        "fastcgi_intercept_errors",
        "baton explains its own failures; the application's error pages pass through",
    ),
    (
        "proxy_http_version",
        "baton speaks HTTP/1.1 with keep-alive to upstreams",
    ),
    (
        "proxy_redirect",
        "baton passes Location as the upstream wrote it",
    ),
    ("proxy_buffering", "baton streams responses"),
    ("proxy_buffers", "baton streams responses"),
    (
        "proxy_buffer_size",
        "baton reads response heads up to max_response_header_bytes",
    ),
    ("fastcgi_buffers", "baton streams responses"),
    (
        "fastcgi_buffer_size",
        "baton reads response heads up to max_response_header_bytes",
    ),
    (
        "ssl_prefer_server_ciphers",
        "baton picks the cipher (server order)",
    ),
    (
        "ssl_session_cache",
        "baton keeps TLS sessions (tickets and a cache) itself",
    ),
    (
        "ssl_session_timeout",
        "baton keeps TLS sessions (tickets and a cache) itself",
    ),
    (
        "ssl_session_tickets",
        "baton keeps TLS sessions (tickets and a cache) itself",
    ),
    ("ssl_dhparam", "baton uses ECDHE only"),
    (
        "gzip_vary",
        "baton always sets Vary: Accept-Encoding when it compresses",
    ),
    (
        "gzip_proxied",
        "baton compresses proxied responses unless Cache-Control: no-transform",
    ),
    (
        "gzip_types",
        "baton compresses text, JSON, JavaScript, XML and SVG",
    ),
    (
        "gzip_comp_level",
        "baton's level is fixed (measured in docs/benchmarks.md)",
    ),
    ("gzip_min_length", "baton skips tiny bodies itself"),
    ("gzip_buffers", "nginx's own tuning"),
    ("gzip_http_version", "nginx's own tuning"),
    ("gzip_disable", "baton does not sniff browsers"),
    ("resolver_timeout", "[resolver] timeout"),
    ("charset", "baton passes the charset the upstream sent"),
];

/// What the http context (or a server) sets for what it holds.
#[derive(Clone, Default)]
struct Inherited {
    root: Option<String>,
    index: Option<Vec<String>>,
    gzip: bool,
    headers: Map<String, Value>,
    hide: Vec<String>,
    request_headers: Map<String, Value>,
    allow: Vec<String>,
    deny: Vec<String>,
    auth: Option<(String, String)>,
    expires: Option<String>,
    limit: Option<(String, Option<i64>)>,
    upstream_keys: Map<String, Value>,
    fastcgi_params: Vec<(String, String)>,
    try_files: Option<Vec<String>>,
}

struct Http {
    zones: Vec<(String, String, String)>,
    formats: Vec<(String, String)>,
    blocks: Vec<Directive>,
}

pub fn import(files: &[PathBuf]) -> Result<Plan, String> {
    let mut plan = Plan::default();
    let mut servers = Vec::new();
    let mut http = Http {
        zones: Vec::new(),
        formats: Vec::new(),
        blocks: Vec::new(),
    };
    let mut inh = Inherited::default();
    for f in files {
        let ds = read(f)?;
        walk_top(&mut plan, &ds, &mut servers, &mut http, &mut inh);
    }
    if servers.is_empty() {
        return Err(
            "no server block found: give nginx.conf or a site's file (sites-available/...)".into(),
        );
    }
    for d in &http.blocks {
        upstream_block(&mut plan, d);
    }
    // An HTTP server that only sends everyone to HTTPS is server.redirect_https.
    let mut https_names: Vec<String> = Vec::new();
    for sv in &servers {
        if sv
            .iter()
            .any(|d| d.name == "listen" && d.args.iter().any(|a| a == "ssl"))
        {
            https_names.extend(names(sv));
        }
    }
    for sv in &servers {
        server(&mut plan, sv, &inh, &http, &https_names);
    }
    Ok(plan)
}

fn walk_top(
    plan: &mut Plan,
    ds: &[Directive],
    servers: &mut Vec<Vec<Directive>>,
    http: &mut Http,
    inh: &mut Inherited,
) {
    for d in ds {
        match (d.name.as_str(), &d.block) {
            ("http", Some(b)) | ("events", Some(b)) => {
                plan.note(
                    &d.at,
                    &d.name,
                    Verdict::Mapped,
                    "its directives are read below",
                );
                walk_top(plan, b, servers, http, inh);
            }
            ("server", Some(b)) => servers.push(b.clone()),
            ("upstream", Some(_)) => http.blocks.push(d.clone()),
            ("limit_req_zone", None) => {
                let key = d.arg(0).to_string();
                let zone = d
                    .args
                    .iter()
                    .find_map(|a| a.strip_prefix("zone="))
                    .map(|z| z.split(':').next().unwrap_or(z).to_string())
                    .unwrap_or_default();
                let rate = d
                    .args
                    .iter()
                    .find_map(|a| a.strip_prefix("rate="))
                    .unwrap_or("")
                    .to_string();
                http.zones.push((zone, key, rate));
                plan.note(
                    &d.at,
                    &d.text(),
                    Verdict::Mapped,
                    "read with each limit_req that names the zone",
                );
            }
            ("log_format", None) => {
                let name = d.arg(0).to_string();
                let fmt = d.args[1..].join("");
                http.formats.push((name, fmt));
                plan.note(
                    &d.at,
                    &format!("log_format {}", d.arg(0)),
                    Verdict::Mapped,
                    "read with the access_log that uses it",
                );
            }
            ("user", None) => {
                plan.user(&d.at, &d.text(), d.arg(0));
            }
            ("worker_processes", None) => {
                if let Ok(n) = d.arg(0).parse::<i64>() {
                    plan.server.insert("workers".into(), Value::Integer(n));
                    plan.note(&d.at, &d.text(), Verdict::Mapped, "server.workers");
                } else {
                    plan.note(
                        &d.at,
                        &d.text(),
                        Verdict::Mapped,
                        "baton runs one worker per core by default",
                    );
                }
            }
            ("error_log", None) => {
                plan.note(&d.at, &d.text(), Verdict::Approximated, "baton's failure log is one JSON line per failed attempt with its cause: [log] errors names its file (default stderr)");
            }
            ("access_log", None) => access_log(plan, d, http),
            _ => common(plan, d, inh, http, "http"),
        }
    }
}

/// Directives allowed in http, server and location alike.
fn common(plan: &mut Plan, d: &Directive, inh: &mut Inherited, http: &Http, ctx: &str) {
    let at = &d.at;
    let text = d.text();
    match d.name.as_str() {
        "root" => {
            inh.root = Some(d.arg(0).trim_end_matches('/').to_string());
            plan.note(at, &text, Verdict::Mapped, "root of the static or FastCGI upstream");
        }
        "index" => {
            inh.index = Some(d.args.clone());
            plan.note(at, &text, Verdict::Mapped, "index of the static or FastCGI upstream");
        }
        "try_files" => {
            inh.try_files = Some(d.args.clone());
            plan.note(at, &text, Verdict::Mapped, "try_files of the static or FastCGI upstream");
        }
        "gzip" | "brotli" | "zstd" => {
            inh.gzip = d.arg(0) == "on";
            plan.note(at, &text, Verdict::Mapped, "compress = true on the routes (baton offers zstd, br and gzip, by Accept-Encoding)");
        }
        "add_header" => {
            inh.headers.insert(d.arg(0).to_string(), s(d.arg(1)));
            let always = d.args.iter().any(|a| a == "always");
            let (v, why) = if d.arg(1).contains('$') {
                (Verdict::Approximated, "response_headers.set with the text as written: baton does not expand nginx variables")
            } else if always {
                (Verdict::Mapped, "response_headers.set on the routes")
            } else {
                (Verdict::Approximated, "response_headers.set on the routes: on every response, error pages too (nginx without `always` adds it to 2xx and 3xx only)")
            };
            plan.note(at, &text, v, why);
        }
        "proxy_hide_header" | "fastcgi_hide_header" | "more_clear_headers" => {
            inh.hide.extend(d.args.iter().cloned());
            plan.note(at, &text, Verdict::Mapped, "response_headers.remove on the routes");
        }
        "proxy_set_header" => {
            let name = d.arg(0).to_ascii_lowercase();
            if matches!(name.as_str(), "host" | "x-real-ip" | "x-forwarded-for" | "x-forwarded-proto" | "x-forwarded-host" | "forwarded" | "connection" | "upgrade") {
                plan.note(at, &text, Verdict::Mapped, "baton sends Host as received, X-Forwarded-For/-Proto/-Host and X-Real-IP itself, and passes upgrades");
            } else if d.arg(1).contains('$') {
                plan.note(at, &text, Verdict::NotMapped, "request_headers.set takes fixed values; baton does not expand nginx variables");
            } else {
                inh.request_headers.insert(d.arg(0).to_string(), s(d.arg(1)));
                plan.note(at, &text, Verdict::Mapped, "request_headers.set on the routes");
            }
        }
        "allow" => {
            inh.allow.push(d.arg(0).to_string());
            plan.note(at, &text, Verdict::Mapped, "allow on the routes");
        }
        "deny" => {
            inh.deny.push(d.arg(0).to_string());
            plan.note(at, &text, Verdict::Mapped, "deny on the routes");
        }
        "auth_basic" if d.arg(0) == "off" => {
            inh.auth = None;
            plan.note(at, &text, Verdict::Mapped, "no basic_auth on these routes");
        }
        "auth_basic" => {
            let file = inh.auth.as_ref().map(|a| a.1.clone()).unwrap_or_default();
            inh.auth = Some((d.arg(0).to_string(), file));
            plan.note(at, &text, Verdict::Mapped, "basic_auth_realm");
        }
        "auth_basic_user_file" => {
            let realm = inh.auth.as_ref().map_or("Restricted".to_string(), |a| a.0.clone());
            inh.auth = Some((realm, d.arg(0).to_string()));
            plan.note(at, &text, Verdict::Mapped, "basic_auth (the same htpasswd file; plain-text lines are refused)");
        }
        "expires" => {
            let v = match d.arg(0) {
                "max" => Some("max".to_string()),
                "off" | "epoch" => None,
                other => duration(other),
            };
            match v {
                Some(v) => {
                    inh.expires = Some(v);
                    plan.note(at, &text, Verdict::Mapped, "expires on the route");
                }
                None => plan.note(at, &text, Verdict::NotMapped, "only a duration or max has a baton equivalent"),
            }
        }
        "limit_req" => {
            let zone = d.args.iter().find_map(|a| a.strip_prefix("zone=")).unwrap_or("");
            let burst = d
                .args
                .iter()
                .find_map(|a| a.strip_prefix("burst="))
                .and_then(|b| b.parse::<i64>().ok());
            match http.zones.iter().find(|(z, _, _)| z == zone) {
                Some((_, key, rate)) if rate_of(rate).is_some() && rate_key(key).is_some() => {
                    inh.limit = Some((zone.to_string(), burst));
                    plan.note(at, &text, Verdict::Approximated, "rate_limit on the route: baton answers 429 over the rate (nginx's default is 503) and counts per worker-shared GCRA, without nginx's delay queue");
                }
                _ => plan.note(at, &text, Verdict::NotMapped, "its limit_req_zone is missing or keyed on something other than the client address or a request header"),
            }
        }
        "client_max_body_size" => match size(d.arg(0)) {
            Some(0) => plan.note(at, &text, Verdict::Mapped, "no limit (baton's default)"),
            Some(n) => {
                let cur = plan
                    .server
                    .get("max_body_bytes")
                    .and_then(Value::as_integer)
                    .unwrap_or(0);
                plan.server.insert("max_body_bytes".into(), Value::Integer(cur.max(n as i64)));
                let v = if ctx == "http" { Verdict::Mapped } else { Verdict::Approximated };
                plan.note(at, &text, v, "server.max_body_bytes (one limit for the whole gateway: the largest given)");
            }
            None => plan.note(at, &text, Verdict::NotMapped, "not a size"),
        },
        "proxy_read_timeout" | "fastcgi_read_timeout" | "uwsgi_read_timeout" => {
            timeout(plan, d, inh, "read_timeout")
        }
        "proxy_connect_timeout" | "fastcgi_connect_timeout" => timeout(plan, d, inh, "connect_timeout"),
        "proxy_send_timeout" | "fastcgi_send_timeout" => timeout(plan, d, inh, "write_timeout"),
        "proxy_next_upstream_tries" => {
            if let Ok(n) = d.arg(0).parse::<i64>() {
                inh.upstream_keys.insert("retries".into(), Value::Integer((n - 1).max(0)));
                plan.note(at, &text, Verdict::Mapped, "retries on the upstream (tries minus the first)");
            }
        }
        "proxy_next_upstream" | "fastcgi_next_upstream" => {
            plan.note(at, &text, Verdict::Approximated, "baton retries what is safe to retry (nothing sent, or an idempotent request) on another server, by cause; not by status");
        }
        "keepalive_timeout" => server_duration(plan, d, "idle_timeout"),
        "client_header_timeout" => server_duration(plan, d, "header_read_timeout"),
        "client_body_timeout" => server_duration(plan, d, "body_read_timeout"),
        "send_timeout" => server_duration(plan, d, "send_timeout"),
        "large_client_header_buffers" => {
            if let Some(n) = size(d.arg(1)) {
                plan.server.insert("max_request_header_bytes".into(), Value::Integer((n as i64).max(8192)));
                plan.note(at, &text, Verdict::Approximated, "server.max_request_header_bytes: one limit for the whole head");
            }
        }
        "fastcgi_param" => {
            let (k, v) = (d.arg(0), d.arg(1));
            if STANDARD_CGI.contains(&k) {
                plan.note(at, &text, Verdict::Mapped, "baton sends this CGI parameter itself");
            } else if v.contains('$') {
                plan.note(at, &text, Verdict::NotMapped, "params take fixed values; baton does not expand nginx variables");
            } else {
                inh.fastcgi_params.push((k.to_string(), v.to_string()));
                plan.note(at, &text, Verdict::Mapped, "params on the FastCGI upstream");
            }
        }
        "include" => {
            let what = d.arg(0);
            if what.contains("fastcgi") {
                plan.note(at, &text, Verdict::Mapped, "baton sends the standard CGI parameters itself");
            } else if what.contains("mime.types") {
                plan.note(at, &text, Verdict::Mapped, "baton knows the MIME types of files itself");
            } else {
                plan.note(at, &text, Verdict::NotMapped, "the file was not found: its directives were not read");
            }
        }
        "ssl_protocols" | "ssl_ciphers" | "ssl_ecdh_curve" => {
            plan.note(at, &text, Verdict::Approximated, "baton offers TLS 1.2 and 1.3 with rustls's safe suites only; older protocols and weak ciphers are never offered");
        }
        "ssl_stapling" | "ssl_stapling_verify" => {
            plan.note(at, &text, Verdict::Mapped, "baton staples OCSP for certificates that name a responder");
        }
        "access_log" => access_log(plan, d, http),
        "resolver" => {
            let ns: Vec<String> = d.args.iter().filter(|a| !a.contains('=')).cloned().collect();
            plan.note(at, &text, Verdict::Approximated, "[resolver] nameservers (baton follows each record's TTL within min_ttl and max_ttl)");
            let _ = ns;
        }
        "if" => plan.note(at, &d.text(), Verdict::NotMapped, "baton has no `if`: write the condition as a route (host, path, path_regex) or a header rule"),
        "set" => plan.note(at, &text, Verdict::NotMapped, "baton has no variables"),
        "error_page" => plan.note(at, &text, Verdict::Approximated, "baton's own error pages explain each failure ([error_pages] templates); the application's error pages pass through"),
        "ssl_certificate" | "ssl_certificate_key" | "listen" | "server_name" => {}
        name => match BUILT_IN.iter().find(|(n, _)| *n == name) {
            Some((_, why)) => plan.note(at, &text, Verdict::Mapped, *why),
            None => plan.note(at, &text, Verdict::NotMapped, "no baton equivalent"),
        },
    }
}

/// The CGI parameters baton sends on its own (fastcgi_params, fastcgi.conf).
const STANDARD_CGI: &[&str] = &[
    "QUERY_STRING",
    "REQUEST_METHOD",
    "CONTENT_TYPE",
    "CONTENT_LENGTH",
    "SCRIPT_NAME",
    "SCRIPT_FILENAME",
    "REQUEST_URI",
    "DOCUMENT_URI",
    "DOCUMENT_ROOT",
    "SERVER_PROTOCOL",
    "REQUEST_SCHEME",
    "HTTPS",
    "GATEWAY_INTERFACE",
    "SERVER_SOFTWARE",
    "REMOTE_ADDR",
    "REMOTE_PORT",
    "SERVER_ADDR",
    "SERVER_PORT",
    "SERVER_NAME",
    "REDIRECT_STATUS",
    "PATH_INFO",
    "PATH_TRANSLATED",
    "HTTP_PROXY",
    "HTTP_HOST",
];

fn timeout(plan: &mut Plan, d: &Directive, inh: &mut Inherited, key: &str) {
    match duration(d.arg(0)) {
        Some(v) => {
            inh.upstream_keys.insert(key.into(), s(v));
            plan.note(
                &d.at,
                &d.text(),
                Verdict::Mapped,
                format!("{key} on the upstream"),
            );
        }
        None => plan.note(&d.at, &d.text(), Verdict::NotMapped, "not a time"),
    }
}

fn server_duration(plan: &mut Plan, d: &Directive, key: &str) {
    match duration(d.arg(0)) {
        Some(v) => {
            plan.server.insert(key.into(), s(v));
            plan.note(&d.at, &d.text(), Verdict::Mapped, format!("server.{key}"));
        }
        None => plan.note(&d.at, &d.text(), Verdict::NotMapped, "not a time"),
    }
}

fn access_log(plan: &mut Plan, d: &Directive, http: &Http) {
    let at = &d.at;
    let text = d.text();
    if d.arg(0) == "off" {
        plan.note(at, &text, Verdict::NotMapped, "baton logs every request (one access line each): filter with the access log's route field instead");
        return;
    }
    if plan.log.contains_key("access") {
        plan.note(
            at,
            &text,
            Verdict::Approximated,
            "baton writes one access log: the first access_log read names it",
        );
        return;
    }
    plan.log.insert("access".into(), s(d.arg(0)));
    let fmt = d.args.get(1).map(String::as_str).unwrap_or("combined");
    if fmt == "combined" {
        plan.log.insert("access_format".into(), s("combined"));
        plan.note(
            at,
            &text,
            Verdict::Mapped,
            "[log] access, access_format = \"combined\"",
        );
        return;
    }
    match http.formats.iter().find(|(n, _)| n == fmt) {
        Some((_, t)) => {
            let (template, unknown) = log_template(t);
            plan.log.insert("access_format".into(), s(template));
            if unknown.is_empty() {
                plan.note(
                    at,
                    &text,
                    Verdict::Mapped,
                    "[log] access_format as a template with the same variables",
                );
            } else {
                plan.note(
                    at,
                    &text,
                    Verdict::Approximated,
                    format!(
                        "[log] access_format as a template; written as -: {}",
                        unknown.join(" ")
                    ),
                );
            }
        }
        None => {
            plan.log.insert("access_format".into(), s("combined"));
            plan.note(
                at,
                &text,
                Verdict::Approximated,
                format!("log_format {fmt} was not found: combined"),
            );
        }
    }
}

/// An nginx log format as baton's template: the variables baton knows
/// kept, the others written as `-`.
fn log_template(t: &str) -> (String, Vec<String>) {
    let mut out = String::new();
    let mut unknown = Vec::new();
    let mut rest = t;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let r = &rest[at + 1..];
        let (name, after) = if let Some(r) = r.strip_prefix('{') {
            let end = r.find('}').unwrap_or(r.len());
            (&r[..end], r.get(end + 1..).unwrap_or(""))
        } else {
            let end = r
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(r.len());
            (&r[..end], &r[end..])
        };
        let known = crate::config::LogVar::ALL.iter().any(|(n, _)| *n == name);
        // nginx's names for what baton has under another.
        let alias = match name {
            "remote_user" | "upstream_cache_status" | "gzip_ratio" => None,
            "upstream_response_time" | "request_length" => None,
            "msec" => Some("time_iso8601"),
            "http_x_request_id" => Some("request_id"),
            "upstream_status" => Some("status"),
            _ => None,
        };
        if known {
            out.push('$');
            out.push_str(name);
        } else if let Some(a) = alias {
            out.push('$');
            out.push_str(a);
        } else {
            out.push('-');
            unknown.push(format!("${name}"));
        }
        rest = after;
    }
    out.push_str(rest);
    (out, unknown)
}

fn rate_of(r: &str) -> Option<String> {
    let (n, unit) = r
        .strip_suffix("r/s")
        .map(|n| (n, "s"))
        .or_else(|| r.strip_suffix("r/m").map(|n| (n, "m")))?;
    n.parse::<u64>().ok()?;
    Some(format!("{n}/{unit}"))
}

fn rate_key(k: &str) -> Option<String> {
    match k {
        "$binary_remote_addr" | "$remote_addr" => Some("client_ip".into()),
        _ => k
            .strip_prefix("$http_")
            .map(|h| format!("header:{}", h.replace('_', "-"))),
    }
}

/// `upstream NAME { server ...; }` as an upstream.
fn upstream_block(plan: &mut Plan, d: &Directive) {
    let name = d.arg(0).to_string();
    let mut keys = Map::new();
    let mut servers = Vec::new();
    for x in d.block.iter().flatten() {
        let text = x.text();
        match x.name.as_str() {
            "server" => {
                let mut spec = x.arg(0).to_string();
                let mut notes = Vec::new();
                for o in &x.args[1..] {
                    if o == "backup" || o.starts_with("weight=") {
                        spec.push(' ');
                        spec.push_str(o);
                    } else if o == "down" {
                        notes.push("down: left out");
                    } else if !notes.iter().any(|n| n.starts_with("max_fails")) {
                        notes.push("max_fails/fail_timeout: baton's passive health check ejects a failing server by cause ([upstreams.NAME.outlier])");
                    }
                }
                if x.args.iter().any(|a| a == "down") {
                    plan.note(
                        &x.at,
                        &text,
                        Verdict::Approximated,
                        "a server marked down is left out",
                    );
                    continue;
                }
                servers.push(spec);
                if notes.is_empty() {
                    plan.note(
                        &x.at,
                        &text,
                        Verdict::Mapped,
                        format!("servers of upstream {name}"),
                    );
                } else {
                    plan.note(&x.at, &text, Verdict::Approximated, notes.join("; "));
                }
            }
            "least_conn" => {
                keys.insert("balance".into(), s("least_request"));
                plan.note(&x.at, &text, Verdict::Mapped, "balance = \"least_request\"");
            }
            "ip_hash" => {
                keys.insert("balance".into(), s("hash"));
                keys.insert("hash_key".into(), s("client_ip"));
                plan.note(
                    &x.at,
                    &text,
                    Verdict::Mapped,
                    "balance = \"hash\" on the client address",
                );
            }
            "hash" => {
                let k = x.arg(0);
                let key = if k == "$remote_addr" || k == "$binary_remote_addr" {
                    Some("client_ip".to_string())
                } else {
                    k.strip_prefix("$http_")
                        .map(|h| format!("header:{}", h.replace('_', "-")))
                };
                match key {
                    Some(key) => {
                        keys.insert("balance".into(), s("hash"));
                        keys.insert("hash_key".into(), s(key));
                        plan.note(
                            &x.at,
                            &text,
                            Verdict::Mapped,
                            "balance = \"hash\" (a consistent ring)",
                        );
                    }
                    None => plan.note(
                        &x.at,
                        &text,
                        Verdict::NotMapped,
                        "baton hashes the client address or a request header",
                    ),
                }
            }
            "keepalive" => {
                if let Ok(n) = x.arg(0).parse::<i64>() {
                    keys.insert("max_idle_per_server".into(), Value::Integer(n));
                }
                plan.note(
                    &x.at,
                    &text,
                    Verdict::Mapped,
                    "max_idle_per_server (baton keeps connections alive by default)",
                );
            }
            "keepalive_timeout" => {
                if let Some(v) = duration(x.arg(0)) {
                    keys.insert("keepalive_timeout".into(), s(v));
                }
                plan.note(
                    &x.at,
                    &text,
                    Verdict::Mapped,
                    "keepalive_timeout on the upstream",
                );
            }
            _ => plan.note(&x.at, &text, Verdict::NotMapped, "no baton equivalent"),
        }
    }
    keys.insert("servers".into(), strings(&servers));
    plan.upstreams.push((super::sanitize(&name), keys));
}

fn names(sv: &[Directive]) -> Vec<String> {
    sv.iter()
        .filter(|d| d.name == "server_name")
        .flat_map(|d| d.args.iter().cloned())
        .filter(|n| n != "_" && !n.is_empty() && !n.starts_with('~'))
        .map(|n| {
            // nginx's `.example.com`: the name and every subdomain.
            n.strip_prefix('.').map_or(n.clone(), |r| format!("*.{r}"))
        })
        .collect()
}

/// A location's match, as a route's `path` or `path_regex`, and its
/// place in nginx's order (exact, `^~` prefixes, regexes in file order,
/// then prefixes longest first).
fn location_match(args: &[String]) -> (u8, Option<String>, Option<String>) {
    match args {
        [op, p] if op == "=" => (0, None, Some(format!("^{}$", regex::escape(p)))),
        [op, p] if op == "^~" => (1, Some(p.clone()), None),
        [op, p] if op == "~" => (2, None, Some(p.clone())),
        [op, p] if op == "~*" => (2, None, Some(format!("(?i){p}"))),
        [p] if p.starts_with("~*") => (2, None, Some(format!("(?i){}", &p[2..]))),
        [p] if p.starts_with('~') => (2, None, Some(p[1..].to_string())),
        [p] if p.starts_with('@') => (9, None, None),
        [p] => (3, Some(p.clone()), None),
        _ => (9, None, None),
    }
}

/// The address part of `proxy_pass`/`fastcgi_pass`, and the URI after it.
fn pass_target(v: &str) -> (String, bool, Option<String>) {
    let (tls, rest) = match v.strip_prefix("https://") {
        Some(r) => (true, r),
        None => (false, v.strip_prefix("http://").unwrap_or(v)),
    };
    if let Some(sock) = rest.strip_prefix("unix:") {
        // `unix:/run/app.sock:/uri`.
        let (path, uri) = match sock.split_once(":/") {
            Some((p, u)) => (p, Some(format!("/{u}"))),
            None => (sock, None),
        };
        return (format!("unix:{path}"), tls, uri);
    }
    match rest.find('/') {
        Some(i) => (rest[..i].to_string(), tls, Some(rest[i..].to_string())),
        None => (rest.to_string(), tls, None),
    }
}

/// A server address as baton writes it: a port when nginx has none.
fn with_port(a: &str, tls: bool) -> String {
    if a.starts_with("unix:")
        || a.rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
            && !a.ends_with(']')
    {
        a.to_string()
    } else {
        format!("{a}:{}", if tls { 443 } else { 80 })
    }
}

fn listen_addr(a: &str) -> String {
    if a.parse::<u16>().is_ok() {
        format!("0.0.0.0:{a}")
    } else if a.starts_with('[') && a.ends_with(']') {
        format!("{a}:80")
    } else if a.contains(':') {
        a.replace('*', "0.0.0.0")
    } else {
        format!("{a}:80")
    }
}

/// The route keys one context's settings give.
fn route_keys(inh: &Inherited, http: &Http) -> Map<String, Value> {
    let mut r = Map::new();
    if inh.gzip {
        r.insert("compress".into(), Value::Boolean(true));
    }
    if !inh.headers.is_empty() || !inh.hide.is_empty() {
        let mut h = Map::new();
        if !inh.headers.is_empty() {
            h.insert("set".into(), Value::Table(inh.headers.clone()));
        }
        if !inh.hide.is_empty() {
            h.insert("remove".into(), strings(&inh.hide));
        }
        r.insert("response_headers".into(), Value::Table(h));
    }
    if !inh.request_headers.is_empty() {
        let mut h = Map::new();
        h.insert("set".into(), Value::Table(inh.request_headers.clone()));
        r.insert("request_headers".into(), Value::Table(h));
    }
    // nginx reads allow and deny in order, first match wins; baton's deny
    // wins over allow and a non-empty allow admits only its own. So
    // `allow X; deny all;` is `allow = [X]`, and `deny X; allow all;` is
    // `deny = [X]`.
    let allow: Vec<String> = inh
        .allow
        .iter()
        .filter(|a| *a != "all" || inh.deny.is_empty())
        .cloned()
        .collect();
    let deny: Vec<String> = inh
        .deny
        .iter()
        .filter(|d| *d != "all" || inh.allow.is_empty())
        .cloned()
        .collect();
    if !allow.is_empty() && allow != ["all"] {
        r.insert("allow".into(), strings(&allow));
    }
    if !deny.is_empty() {
        r.insert("deny".into(), strings(&deny));
    }
    if let Some((realm, file)) = &inh.auth
        && !file.is_empty()
    {
        r.insert("basic_auth".into(), s(file.clone()));
        r.insert("basic_auth_realm".into(), s(realm.clone()));
    }
    if let Some(e) = &inh.expires {
        r.insert("expires".into(), s(e.clone()));
    }
    if let Some((zone, burst)) = &inh.limit
        && let Some((_, key, rate)) = http.zones.iter().find(|(z, _, _)| z == zone)
    {
        r.insert("rate_limit".into(), s(rate_of(rate).unwrap_or_default()));
        if let Some(b) = burst {
            r.insert("rate_limit_burst".into(), Value::Integer(*b.max(&1)));
        }
        let k = rate_key(key).unwrap_or_default();
        if k != "client_ip" {
            r.insert("rate_limit_key".into(), s(k));
        }
    }
    r
}

/// The upstream files are served from (FastCGI or static) for this
/// context's root, index and try_files.
fn files_upstream(
    plan: &mut Plan,
    inh: &Inherited,
    fastcgi: Option<&str>,
    aliases: &Map<String, Value>,
) -> Option<String> {
    let root = inh.root.clone()?;
    let mut k = inh.upstream_keys.clone();
    files_protocol(&mut k, fastcgi);
    if fastcgi.is_none() {
        // Timeouts and retries mean nothing without servers.
        for t in [
            "read_timeout",
            "connect_timeout",
            "write_timeout",
            "retries",
        ] {
            k.remove(t);
        }
    }
    k.insert("root".into(), s(root));
    // nginx sends no Cache-Control for a file unless `expires` says so.
    k.insert("static_max_age".into(), s("off"));
    if let Some(i) = &inh.index {
        k.insert("index".into(), strings(i));
    } else if fastcgi.is_none() {
        k.insert("index".into(), strings(&["index.html".into()]));
    }
    if let Some(t) = &inh.try_files {
        // nginx's `$uri/` and `=404` read the same; `$args` is `$args`;
        // `$is_args` is the `?` before them.
        let t: Vec<String> = t
            .iter()
            .map(|e| {
                e.replace("$is_args", "?")
                    .replace("$query_string", "$args")
                    .replace("??", "?")
            })
            .collect();
        if fastcgi.is_none() && t.last().is_some_and(|l| l.contains(".php")) {
            // A static upstream cannot run the front controller.
        } else {
            k.insert("try_files".into(), strings(&t));
        }
    }
    if fastcgi.is_some() && !inh.fastcgi_params.is_empty() {
        let mut p = Map::new();
        for (a, b) in &inh.fastcgi_params {
            p.insert(a.clone(), s(b.clone()));
        }
        k.insert("params".into(), Value::Table(p));
    }
    if !aliases.is_empty() {
        k.insert("alias".into(), Value::Table(aliases.clone()));
    }
    let name = if fastcgi.is_some() { "php" } else { "static" };
    Some(plan.upstream(name, k))
}

/// The upstream `proxy_pass` names: an `upstream` block, or an address.
fn proxy_upstream(plan: &mut Plan, target: &str, tls: bool, inh: &Inherited, grpc: bool) -> String {
    let named = super::sanitize(target);
    if plan.upstream_keys(&named).is_some() && !target.contains(':') {
        if let Some(k) = plan.upstream_keys(&named) {
            for (a, b) in &inh.upstream_keys {
                k.insert(a.clone(), b.clone());
            }
            if tls {
                k.insert("tls".into(), Value::Boolean(true));
            }
            if grpc {
                k.insert("protocol".into(), s("grpc"));
            }
        }
        return named;
    }
    let mut k = inh.upstream_keys.clone();
    k.insert("servers".into(), strings(&[with_port(target, tls)]));
    if tls {
        k.insert("tls".into(), Value::Boolean(true));
    }
    if grpc {
        k.insert("protocol".into(), s("grpc"));
    }
    let host = target.split(':').next().unwrap_or(target);
    let name = if host == "127.0.0.1"
        || host == "localhost"
        || host == "[::1]"
        || target.starts_with("unix:")
    {
        "app".to_string()
    } else {
        host.to_string()
    };
    plan.upstream(&name, k)
}

/// A `listen` directive: its address in `server.listen` or `listen_tls`
/// (`proxy_protocol` too); whether it is an HTTPS one.
fn listen(plan: &mut Plan, d: &Directive) -> bool {
    let ssl = d.args.iter().any(|a| a == "ssl" || a == "quic");
    let addr = listen_addr(d.arg(0));
    let list = if ssl {
        &mut plan.listen_tls
    } else {
        &mut plan.listen
    };
    let addr = if ssl
        && d.arg(0).parse::<u16>().is_err()
        && d.arg(0).starts_with('[')
        && !d.arg(0).contains("]:")
    {
        addr.replace(":80", ":443")
    } else {
        addr
    };
    if !list.contains(&addr) {
        list.push(addr);
    }
    let extra: Vec<&String> = d.args[1..]
        .iter()
        .filter(|a| {
            !matches!(
                a.as_str(),
                "ssl" | "default_server" | "default" | "http2" | "reuseport" | "ipv6only=on"
            )
        })
        .collect();
    if d.args.iter().any(|a| a == "proxy_protocol") {
        plan.server
            .insert("proxy_protocol".into(), Value::Boolean(true));
    }
    if extra.iter().all(|a| a.as_str() == "proxy_protocol") {
        plan.note(
            &d.at,
            &d.text(),
            Verdict::Mapped,
            if ssl {
                "server.listen_tls (HTTP/2 by ALPN)"
            } else {
                "server.listen (HTTP/1.1 and h2c)"
            },
        );
    } else {
        plan.note(&d.at, &d.text(), Verdict::Approximated, "the address is listened on; baton has no per-listener options besides TLS and proxy_protocol");
    }
    ssl
}

/// What the server's files are: the FastCGI address of its PHP location
/// (whose settings go to the FastCGI upstream), and the root, index and
/// try_files of the server and its `location /`.
fn files_context(
    plan: &mut Plan,
    locations: &[Directive],
    inh: &Inherited,
    http: &Http,
) -> (Option<String>, Inherited) {
    let mut fastcgi: Option<String> = None;
    let mut root_inh = inh.clone();
    for l in locations {
        let body = l.block.as_deref().unwrap_or(&[]);
        if let Some(fp) = body.iter().find(|d| d.name == "fastcgi_pass") {
            let (addr, _, _) = pass_target(fp.arg(0));
            if fastcgi.is_none() {
                fastcgi = Some(with_port(&addr, false));
            }
            // The PHP location's settings belong to the FastCGI upstream
            // (params, timeouts) and its responses (hidden fields).
            for d in body {
                match d.name.as_str() {
                    "fastcgi_pass" => plan.note(&d.at, &d.text(), Verdict::Mapped, "the FastCGI upstream's server: scripts under the root run there, files are served by baton"),
                    "try_files" => plan.note(&d.at, &d.text(), Verdict::Mapped, "baton checks the script exists before passing it (404 file_not_found)"),
                    _ => common(plan, d, &mut root_inh, http, "location"),
                }
            }
        }
        if l.args == ["/"] {
            for d in body {
                if matches!(d.name.as_str(), "root" | "index" | "try_files") {
                    let mut scratch = Plan::default();
                    common(&mut scratch, d, &mut root_inh, http, "location");
                }
            }
        }
    }
    (fastcgi, root_inh)
}

/// Locations in nginx's match order: exact, `^~` (longest first),
/// regexes (file order), prefixes (longest first); with each one's rank.
fn nginx_order(locations: &[Directive]) -> Vec<(u8, usize, &Directive)> {
    let mut sorted: Vec<(u8, usize, &Directive)> = locations
        .iter()
        .enumerate()
        .map(|(i, l)| (location_match(&l.args).0, i, l))
        .collect();
    sorted.sort_by_key(|(rank, i, l)| {
        let len = location_match(&l.args).1.map_or(0, |p| p.len());
        match rank {
            1 | 3 => (*rank, usize::MAX - len, *i),
            _ => (*rank, 0, *i),
        }
    });
    sorted
}

/// The `alias` of each location, as the files upstream's `alias` map.
fn location_aliases(plan: &mut Plan, sorted: &[(u8, usize, &Directive)]) -> Map<String, Value> {
    let mut aliases = Map::new();
    for (_, _, l) in sorted {
        let body = l.block.as_deref().unwrap_or(&[]);
        if let Some(a) = body.iter().find(|d| d.name == "alias") {
            let (_, prefix, regex) = location_match(&l.args);
            let url = prefix.or_else(|| regex.as_deref().and_then(regex_prefix));
            let dir = a.arg(0).trim_end_matches("$1").to_string();
            match url {
                Some(u) if u.ends_with('/') && (regex.is_none() || a.arg(0).ends_with("$1")) => {
                    let dir = if dir.ends_with('/') {
                        dir
                    } else {
                        format!("{dir}/")
                    };
                    aliases.insert(u.clone(), s(dir));
                    plan.note(
                        &a.at,
                        &a.text(),
                        Verdict::Mapped,
                        format!("alias {u} on the files upstream"),
                    );
                }
                _ => plan.note(
                    &a.at,
                    &a.text(),
                    Verdict::NotMapped,
                    "baton's alias maps a URL prefix ending in / to a directory",
                ),
            }
        }
    }
    aliases
}

/// A server without `listen` listens where nginx's default does: every
/// address, port 80.
fn default_listen(plan: &mut Plan, sv: &[Directive]) {
    if sv.iter().any(|d| d.name == "listen") {
        return;
    }
    let addr = "0.0.0.0:80".to_string();
    if !plan.listen.contains(&addr) {
        plan.listen.push(addr);
    }
    let at = sv.first().map(|d| d.at.clone()).unwrap_or_default();
    plan.note(
        &at,
        "server { (no listen) }",
        Verdict::Mapped,
        "nginx's default listen *:80: server.listen = [\"0.0.0.0:80\"]",
    );
}

/// The upstream `location /` proxies to, with its own timeouts, if it
/// proxies.
fn root_proxy_upstream(
    plan: &mut Plan,
    locations: &[Directive],
    inh: &Inherited,
    http: &Http,
) -> Option<String> {
    let root_loc = locations.iter().find(|l| l.args == ["/"])?;
    let pass = root_loc
        .block
        .as_deref()?
        .iter()
        .find(|d| d.name == "proxy_pass")?;
    let (addr, tls, _) = pass_target(pass.arg(0));
    let mut linh = inh.clone();
    for d in root_loc.block.as_deref().unwrap_or(&[]) {
        if d.name.ends_with("_timeout") {
            let mut scratch = Plan::default();
            common(&mut scratch, d, &mut linh, http, "location");
        }
    }
    Some(proxy_upstream(plan, &addr, tls, &linh, false))
}

/// The server's certificate and key, once for all servers naming them.
fn certificate(plan: &mut Plan, sv: &[Directive], cert: &str, key: &str) {
    if !plan.certificates.iter().any(|(a, _)| a == cert) {
        plan.certificates.push((cert.to_string(), key.to_string()));
    }
    let at = sv
        .iter()
        .find(|d| d.name == "ssl_certificate")
        .map(|d| d.at.clone())
        .unwrap_or_default();
    plan.note(
        &at,
        &format!("ssl_certificate {cert}"),
        Verdict::Mapped,
        "[[tls.certificates]] (chosen by SNI)",
    );
}

/// `return 301 https://$host$request_uri;` (or the same to the server's
/// own names over HTTPS): all a plain-HTTP server does is send visitors to
/// HTTPS.
fn redirects_to_https(r: &Directive, hosts: &[String], https_names: &[String]) -> bool {
    matches!(r.arg(0), "301" | "302" | "307" | "308")
        && r.arg(1).starts_with("https://")
        && (r.arg(1).ends_with("$request_uri") || r.arg(1).ends_with("$uri"))
        && (hosts.is_empty()
            || hosts.iter().all(|h| https_names.contains(h))
            || r.arg(1).contains("$host"))
}

/// What a server's locations are read against: its inherited settings,
/// those of `location /`, its names, and the upstreams its files and
/// rewrites go to.
struct ServerFacts<'a> {
    inh: &'a Inherited,
    root_inh: &'a Inherited,
    http: &'a Http,
    hosts: &'a [String],
    main: &'a Option<String>,
    fallback: &'a Option<String>,
    aliases: &'a Map<String, Value>,
}

/// One location (in nginx's order): its routes go to `out`, except the
/// route of `location /`, which becomes the server's catch-all.
fn location(
    plan: &mut Plan,
    cx: &ServerFacts,
    rank: u8,
    l: &Directive,
    out: &mut Vec<Map<String, Value>>,
    catch_all: &mut Option<Map<String, Value>>,
) {
    let ServerFacts {
        inh,
        root_inh,
        http,
        hosts,
        main,
        fallback,
        aliases,
    } = *cx;
    let host_key = |r: &mut Map<String, Value>| {
        if !hosts.is_empty() {
            r.insert("host".into(), strings(hosts));
        }
    };
    let body = l.block.as_deref().unwrap_or(&[]);
    let (_, prefix, regex) = location_match(&l.args);
    let at = &l.at;
    if rank == 9 {
        plan.note(
            at,
            &l.text(),
            Verdict::NotMapped,
            "named and nested locations have no baton equivalent",
        );
        return;
    }
    if body.iter().any(|d| d.name == "fastcgi_pass") && !body.iter().any(|d| d.name == "proxy_pass")
    {
        plan.note(at, &l.text(), Verdict::Mapped, "scripts: the FastCGI upstream runs what exists under the root with the script extension");
        return;
    }
    let mut linh = inh.clone();
    // nginx: add_header in a location replaces the server's.
    if body.iter().any(|d| d.name == "add_header") {
        linh.headers.clear();
    }
    let mut target: Option<String> = None;
    let mut rewrite: Option<String> = None;
    let mut php = false;
    let mut loc_returns = None;
    let mut loc_rewrites = Vec::new();
    let mut effective = false;
    for d in body {
        match d.name.as_str() {
            "proxy_pass" | "grpc_pass" => {
                let (addr, tls, uri) = pass_target(d.arg(0));
                let grpc = d.name == "grpc_pass" || d.arg(0).starts_with("grpc");
                let addr = addr
                    .trim_start_matches("grpc://")
                    .trim_start_matches("grpcs://")
                    .to_string();
                target = Some(proxy_upstream(plan, &addr, tls, &linh, grpc));
                effective = true;
                match (&uri, &prefix) {
                    (Some(u), Some(p)) if u != p => {
                        rewrite = Some(format!("{u}$1"));
                        plan.note(&d.at, &d.text(), Verdict::Mapped, format!("route {p} to upstream {}, the prefix replaced by {u} (path_regex and rewrite)", target.as_deref().unwrap_or("")));
                    }
                    (Some(_), None) if regex.is_some() => {
                        plan.note(&d.at, &d.text(), Verdict::Approximated, "the URI after the address is dropped: nginx forbids it in a regex location too");
                    }
                    _ => plan.note(
                        &d.at,
                        &d.text(),
                        Verdict::Mapped,
                        format!("route to upstream {}", target.as_deref().unwrap_or("")),
                    ),
                }
            }
            "fastcgi_pass" => {
                php = true;
                effective = true;
                plan.note(
                    &d.at,
                    &d.text(),
                    Verdict::Mapped,
                    format!(
                        "scripts under the root run on the FastCGI upstream {}",
                        main.as_deref().unwrap_or("php")
                    ),
                );
            }
            "alias" => {}
            "return" => loc_returns = Some(d.clone()),
            "rewrite" => loc_rewrites.push(d.clone()),
            "location" => plan.note(
                &d.at,
                &d.text(),
                Verdict::NotMapped,
                "nested locations: write each as its own route",
            ),
            "access_log" | "log_not_found" => {
                let mut scratch = Inherited::default();
                common(plan, d, &mut scratch, http, "location");
            }
            "root" | "index" | "try_files" if l.args == ["/"] => {
                plan.note(&d.at, &d.text(), Verdict::Mapped, "of the files upstream");
            }
            "root" => {
                effective = true;
                let mut x = linh.clone();
                common(plan, d, &mut x, http, "location");
                linh.root = x.root;
            }
            _ => {
                effective = true;
                common(plan, d, &mut linh, http, "location");
            }
        }
    }
    // Hidden files: baton never serves them from a root.
    if regex.as_deref().is_some_and(|r| r.contains("/\\."))
        && linh.deny.iter().any(|d| d == "all")
        && target.is_none()
    {
        plan.note(
            at,
            &l.text(),
            Verdict::Mapped,
            "baton never serves hidden files (.ht*, .git, .env) from a root: 403",
        );
        return;
    }
    for r in &loc_rewrites {
        let mut route = route_keys(&linh, http);
        host_key(&mut route);
        if rewrite_route(
            plan,
            r,
            &mut route,
            target.as_deref().or(fallback.as_deref()),
            hosts.first().map(String::as_str),
        ) {
            out.push(route);
        }
    }
    let mut route = route_keys(&linh, http);
    host_key(&mut route);
    if let Some(r) = &loc_returns {
        if let Some(p) = &prefix {
            route.insert("path".into(), s(p.clone()));
        }
        if let Some(re) = &regex {
            route.insert("path_regex".into(), s(re.clone()));
        }
        if return_route(
            plan,
            r,
            &mut route,
            hosts.first().map(String::as_str),
            fallback.as_deref(),
        ) {
            out.push(route);
        }
        return;
    }
    if php && target.is_none() {
        // `location ~ \.php$`: the FastCGI upstream decides per path.
        return;
    }
    let alias_dir = body
        .iter()
        .find(|d| d.name == "alias")
        .and(prefix.as_ref())
        .and_then(|p| {
            aliases
                .get(p)
                .and_then(Value::as_str)
                .map(|d| (p.clone(), d.to_string()))
        });
    let upstream = match (&target, linh.root != root_inh.root && linh.root.is_some()) {
        (Some(t), _) => Some(t.clone()),
        (None, true) => files_upstream(plan, &linh, None, &Map::new()),
        (None, false) if main.is_none() && alias_dir.is_some() => {
            // A directory served beside a proxied app: a static
            // upstream of its own.
            let (p, d) = alias_dir.clone().unwrap_or_default();
            let mut x = linh.clone();
            x.root = Some(d.trim_end_matches('/').to_string());
            let mut a = Map::new();
            a.insert(p, s(d));
            effective = true;
            files_upstream(plan, &x, None, &a)
        }
        (None, false) => main.clone(),
    };
    let Some(upstream) = upstream else {
        if effective {
            plan.note(
                at,
                &l.text(),
                Verdict::NotMapped,
                "the location names no proxy_pass, fastcgi_pass or root to serve from",
            );
        }
        return;
    };
    route.insert("upstream".into(), s(upstream));
    if l.args == ["/"] {
        *catch_all = Some(route);
        plan.note(
            at,
            &l.text(),
            Verdict::Mapped,
            "the server's route for every other path",
        );
        return;
    }
    // Kept even when it only serves files as the server does: in
    // nginx it takes its paths from every location after it (a
    // later regex with `expires` does not apply to them).
    let why = if !effective && route_keys(&linh, http) == route_keys(inh, http) {
        "a route of its own, as the server's, so routes after it do not take its paths (nginx's first match)"
    } else {
        "a route (in nginx's order: exact, ^~, regex, then longest prefix)"
    };
    match (&prefix, &regex, &rewrite) {
        (Some(p), _, Some(w)) => {
            let base = p.trim_end_matches('/');
            route.insert(
                "path_regex".into(),
                s(format!("^{}/?(.*)$", regex::escape(base))),
            );
            route.insert("rewrite".into(), s(w.replace("//", "/")));
        }
        (Some(p), _, None) => {
            route.insert("path".into(), s(p.clone()));
        }
        (None, Some(re), _) => {
            route.insert("path_regex".into(), s(re.clone()));
        }
        _ => {}
    }
    plan.note(at, &l.text(), Verdict::Mapped, why);
    out.push(route);
}

fn server(
    plan: &mut Plan,
    sv: &[Directive],
    http_inh: &Inherited,
    http: &Http,
    https_names: &[String],
) {
    let mut inh = http_inh.clone();
    let hosts = names(sv);
    let mut tls = false;
    let mut cert: Option<String> = None;
    let mut key: Option<String> = None;
    let mut locations = Vec::new();
    let mut rewrites = Vec::new();
    let mut returns = None;
    default_listen(plan, sv);
    for d in sv {
        match d.name.as_str() {
            "listen" => tls |= listen(plan, d),
            "http2" => plan.note(
                &d.at,
                &d.text(),
                Verdict::Mapped,
                "baton offers HTTP/2 on every TLS listener by ALPN",
            ),
            "server_name" => plan.note(
                &d.at,
                &d.text(),
                Verdict::Mapped,
                "host on the server's routes",
            ),
            "ssl_certificate" => cert = Some(d.arg(0).to_string()),
            "ssl_certificate_key" => key = Some(d.arg(0).to_string()),
            "location" => locations.push(d.clone()),
            "rewrite" => rewrites.push(d.clone()),
            "return" => returns = Some(d.clone()),
            "access_log" => access_log(plan, d, http),
            _ => common(plan, d, &mut inh, http, "server"),
        }
    }
    if let (Some(c), Some(k)) = (&cert, &key) {
        certificate(plan, sv, c, k);
    }
    if let Some(r) = &returns
        && !tls
        && locations.is_empty()
        && redirects_to_https(r, &hosts, https_names)
    {
        plan.server
            .insert("redirect_https".into(), Value::Boolean(true));
        plan.note(
            &r.at,
            &r.text(),
            Verdict::Mapped,
            "server.redirect_https: plain HTTP is sent to HTTPS (ACME challenges excepted)",
        );
        return;
    }
    let host_key = |r: &mut Map<String, Value>| {
        if !hosts.is_empty() {
            r.insert("host".into(), strings(&hosts));
        }
    };
    let mut out: Vec<Map<String, Value>> = Vec::new();
    if let Some(r) = &returns {
        let mut route = route_keys(&inh, http);
        host_key(&mut route);
        if return_route(plan, r, &mut route, hosts.first().map(String::as_str), None) {
            out.push(route);
        }
        push_routes(plan, out, hosts.is_empty());
        return;
    }
    // What `location /` (or the server) says about files, and where PHP goes.
    let (fastcgi, root_inh) = files_context(plan, &locations, &inh, http);
    inh.hide = root_inh.hide.clone();
    let sorted = nginx_order(&locations);
    // Aliases first: they belong to the files upstream.
    let aliases = location_aliases(plan, &sorted);
    let main = if fastcgi.is_some() || root_inh.root.is_some() {
        files_upstream(plan, &root_inh, fastcgi.as_deref(), &aliases)
    } else {
        None
    };
    // Where a rewritten or refused request goes: the files upstream, or
    // what `location /` proxies to.
    let fallback = main
        .clone()
        .or_else(|| root_proxy_upstream(plan, &locations, &inh, http));
    // Server-level rewrites, in order, before any location (as nginx).
    for r in &rewrites {
        let mut route = route_keys(&inh, http);
        host_key(&mut route);
        if rewrite_route(
            plan,
            r,
            &mut route,
            fallback.as_deref(),
            hosts.first().map(String::as_str),
        ) {
            out.push(route);
        }
    }
    let mut catch_all: Option<Map<String, Value>> = None;
    let cx = ServerFacts {
        inh: &inh,
        root_inh: &root_inh,
        http,
        hosts: &hosts,
        main: &main,
        fallback: &fallback,
        aliases: &aliases,
    };
    for (rank, _, l) in &sorted {
        location(plan, &cx, *rank, l, &mut out, &mut catch_all);
    }
    let catch_all = catch_all.or_else(|| {
        main.clone().map(|m| {
            let mut r = route_keys(&inh, http);
            host_key(&mut r);
            r.insert("upstream".into(), s(m));
            r
        })
    });
    if let Some(c) = catch_all {
        out.push(c);
    }
    push_routes(plan, out, hosts.is_empty());
}

fn push_routes(plan: &mut Plan, routes: Vec<Map<String, Value>>, default: bool) {
    if default {
        plan.default_routes.extend(routes);
    } else {
        plan.routes.extend(routes);
    }
}

/// The literal prefix of a regex such as `^/wp-content/(.*)$`.
fn regex_prefix(re: &str) -> Option<String> {
    let r = re.strip_prefix('^')?;
    let end = r
        .find(['(', '.', '*', '+', '?', '[', '\\', '$', '|'])
        .unwrap_or(r.len());
    let p = &r[..end];
    (p.starts_with('/') && p.ends_with('/')).then(|| p.to_string())
}

/// `return CODE [URL]` as a route; false when it has no equivalent.
fn return_route(
    plan: &mut Plan,
    r: &Directive,
    route: &mut Map<String, Value>,
    server_name: Option<&str>,
    upstream: Option<&str>,
) -> bool {
    let code = r.arg(0);
    let (code, url) = if code.starts_with("http") || code.starts_with('/') || code.starts_with('$')
    {
        ("302", code)
    } else {
        (code, r.arg(1))
    };
    match code {
        "301" | "302" | "303" | "307" | "308" => match redirect_template(url, server_name) {
            Some(t) => {
                route.insert("redirect".into(), s(t));
                if code != "301" {
                    route.insert(
                        "redirect_status".into(),
                        Value::Integer(code.parse().unwrap_or(302)),
                    );
                }
                plan.note(&r.at, &r.text(), Verdict::Mapped, "a redirect route");
                true
            }
            None => {
                plan.note(&r.at, &r.text(), Verdict::NotMapped, "the target uses a variable baton has no placeholder for ({scheme}, {host}, {uri}, {path}, {query}, $1..$9 exist)");
                false
            }
        },
        "403" if upstream.is_some() => {
            // Nothing reaches the upstream: deny answers first.
            route.insert("deny".into(), strings(&["all".into()]));
            route.insert("upstream".into(), s(upstream.unwrap_or_default()));
            plan.note(
                &r.at,
                &r.text(),
                Verdict::Mapped,
                "deny = [\"all\"] on the route: 403 access_denied",
            );
            true
        }
        _ => {
            plan.note(&r.at, &r.text(), Verdict::NotMapped, "baton answers itself only with redirects and 403; other statuses come from the upstream");
            false
        }
    }
}

/// `rewrite REGEX REPLACEMENT [flag]` as a route.
fn rewrite_route(
    plan: &mut Plan,
    r: &Directive,
    route: &mut Map<String, Value>,
    upstream: Option<&str>,
    server_name: Option<&str>,
) -> bool {
    let (re, to, flag) = (r.arg(0), r.arg(1), r.arg(2));
    route.insert("path_regex".into(), s(re));
    let external =
        to.starts_with("http://") || to.starts_with("https://") || to.starts_with("$scheme");
    if flag == "redirect" || flag == "permanent" || external {
        match redirect_template(to, server_name) {
            Some(t) => {
                route.insert("redirect".into(), s(t));
                if flag != "permanent" {
                    route.insert("redirect_status".into(), Value::Integer(302));
                }
                plan.note(
                    &r.at,
                    &r.text(),
                    Verdict::Mapped,
                    "a redirect route with path_regex",
                );
                true
            }
            None => {
                plan.note(
                    &r.at,
                    &r.text(),
                    Verdict::NotMapped,
                    "the replacement uses a variable baton has no placeholder for",
                );
                false
            }
        }
    } else {
        let Some(u) = upstream else {
            plan.note(
                &r.at,
                &r.text(),
                Verdict::NotMapped,
                "no upstream to send the rewritten request to",
            );
            return false;
        };
        let stripped_vars = to
            .chars()
            .collect::<Vec<_>>()
            .windows(2)
            .any(|w| w[0] == '$' && !w[1].is_ascii_digit());
        if stripped_vars {
            plan.note(
                &r.at,
                &r.text(),
                Verdict::NotMapped,
                "the replacement uses nginx variables; baton's rewrite takes $1..$9",
            );
            return false;
        }
        route.insert("upstream".into(), s(u));
        route.insert("rewrite".into(), s(to));
        let v = if flag == "break" || flag == "last" || flag.is_empty() {
            Verdict::Mapped
        } else {
            Verdict::Approximated
        };
        plan.note(&r.at, &r.text(), v, "a route with path_regex and rewrite (the upstream sees the new path; the client's query follows)");
        true
    }
}
