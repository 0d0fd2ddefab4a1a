//! Apache httpd's vhosts: read (directives, `<Section>` blocks, Include),
//! then mapped virtual host by virtual host onto a [`Plan`].
//!
//! Written here for the same reason as the nginx reader: the grammar is a
//! line per directive and nested `<Section>` tags.

use std::path::{Path, PathBuf};

use toml::Value;
use toml::map::Map;

use super::{At, Plan, Verdict, files_protocol, redirect_template, s, size, strings};

#[derive(Debug, Clone)]
struct Node {
    name: String,
    args: Vec<String>,
    at: At,
    block: Option<Vec<Node>>,
}

impl Node {
    fn text(&self) -> String {
        let t = format!("{} {}", self.name, self.args.join(" "));
        if self.block.is_some() {
            format!("<{}>", t.trim())
        } else {
            t.trim().to_string()
        }
    }
    fn arg(&self, i: usize) -> &str {
        self.args.get(i).map_or("", String::as_str)
    }
}

fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote = None;
    let mut any = false;
    for c in line.chars() {
        match (quote, c) {
            (None, '"' | '\'') => {
                quote = Some(c);
                any = true;
            }
            (Some(q), c) if c == q => quote = None,
            (None, c) if c.is_whitespace() => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            (_, c) => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

fn read(path: &Path, depth: u32) -> Result<Vec<Node>, String> {
    if depth > 16 {
        return Err("includes nest more than 16 deep (a loop?)".into());
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let file = path.display().to_string();
    let mut stack: Vec<(Node, Vec<Node>)> = Vec::new();
    let mut top = Vec::new();
    let mut joined = String::new();
    let mut start = 0;
    for (i, raw) in text.lines().enumerate() {
        if joined.is_empty() {
            start = i + 1;
        }
        if let Some(l) = raw.strip_suffix('\\') {
            joined.push_str(l);
            joined.push(' ');
            continue;
        }
        joined.push_str(raw);
        let line = std::mem::take(&mut joined);
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = At {
            file: file.clone(),
            line: start,
        };
        if let Some(close) = line.strip_prefix("</") {
            let Some((node, children)) = stack.pop() else {
                return Err(format!("{file}:{start}: </{close} without its opening tag"));
            };
            let done = Node {
                block: Some(children),
                ..node
            };
            match stack.last_mut() {
                Some((_, c)) => c.push(done),
                None => top.push(done),
            }
            continue;
        }
        if let Some(open) = line.strip_prefix('<') {
            let inner = open.trim_end_matches('>');
            let mut w = words(inner);
            if w.is_empty() {
                continue;
            }
            let name = w.remove(0);
            stack.push((
                Node {
                    name,
                    args: w,
                    at,
                    block: None,
                },
                Vec::new(),
            ));
            continue;
        }
        let mut w = words(line);
        let name = w.remove(0);
        let node = Node {
            name,
            args: w,
            at,
            block: None,
        };
        let nodes = if matches!(node.name.as_str(), "Include" | "IncludeOptional") {
            let mut inc = Vec::new();
            for f in super::include_files(node.arg(0), path, "/etc/apache2") {
                inc.extend(read(&f, depth + 1)?);
            }
            inc
        } else {
            vec![node]
        };
        match stack.last_mut() {
            Some((_, c)) => c.extend(nodes),
            None => top.extend(nodes),
        }
    }
    if !stack.is_empty() {
        return Err(format!("{file}: a <section> is never closed"));
    }
    Ok(top)
}

pub fn import(files: &[PathBuf]) -> Result<Plan, String> {
    let mut plan = Plan::default();
    let mut vhosts = Vec::new();
    for f in files {
        let nodes = read(f, 0)?;
        collect(&mut plan, &nodes, &mut vhosts);
    }
    if vhosts.is_empty() {
        return Err("no <VirtualHost> found: give a site's file (sites-available/...)".into());
    }
    for v in &vhosts {
        vhost(&mut plan, v);
    }
    Ok(plan)
}

fn collect(plan: &mut Plan, nodes: &[Node], vhosts: &mut Vec<Node>) {
    for n in nodes {
        match (n.name.as_str(), &n.block) {
            ("VirtualHost", Some(_)) => vhosts.push(n.clone()),
            ("IfModule", Some(b)) => collect(plan, b, vhosts),
            ("Listen", None) => plan.note(
                &n.at,
                &n.text(),
                Verdict::Mapped,
                "read with each VirtualHost's address",
            ),
            ("User", None) => {
                plan.user(&n.at, &n.text(), n.arg(0));
            }
            _ => plan.note(
                &n.at,
                &n.text(),
                Verdict::NotMapped,
                "outside a VirtualHost: no baton equivalent",
            ),
        }
    }
}

fn vhost(plan: &mut Plan, v: &Node) {
    let body = v.block.as_deref().unwrap_or(&[]);
    listener(plan, v, body);
    let mut hosts: Vec<String> = Vec::new();
    let mut root = None;
    let mut index = None;
    let mut fastcgi = None;
    let mut aliases = Map::new();
    let mut headers = Map::new();
    let mut remove = Vec::new();
    let mut compress = false;
    let mut routes: Vec<Map<String, Value>> = Vec::new();
    let mut proxies: Vec<(String, String, Option<String>)> = Vec::new();
    let (mut cert, mut key) = (None, None);
    let mut conds = Vec::new();
    for n in body {
        let t = n.text();
        let at = &n.at;
        match n.name.as_str() {
            "ServerName" | "ServerAlias" => {
                hosts.extend(
                    n.args
                        .iter()
                        .filter(|h| !h.contains('*') || h.starts_with("*."))
                        .cloned(),
                );
                plan.note(at, &t, Verdict::Mapped, "host on the virtual host's routes");
            }
            "DocumentRoot" => {
                root = Some(n.arg(0).trim_end_matches('/').to_string());
                plan.note(
                    at,
                    &t,
                    Verdict::Mapped,
                    "root of the static or FastCGI upstream",
                );
            }
            "DirectoryIndex" => {
                index = Some(n.args.clone());
                plan.note(at, &t, Verdict::Mapped, "index of the upstream");
            }
            "SSLEngine" => plan.note(at, &t, Verdict::Mapped, "server.listen_tls"),
            "SSLCertificateFile" => cert = Some(n.arg(0).to_string()),
            "SSLCertificateKeyFile" => key = Some(n.arg(0).to_string()),
            "SSLProtocol" | "SSLCipherSuite" | "SSLHonorCipherOrder" => plan.note(
                at,
                &t,
                Verdict::Approximated,
                "baton offers TLS 1.2 and 1.3 with rustls's safe suites only",
            ),
            "ProxyPass" => {
                if n.arg(1) == "!" {
                    plan.note(at, &t, Verdict::Approximated, "an exclusion: write a route for that path to the files upstream above the proxied one");
                    continue;
                }
                let (path, url) = (n.arg(0).to_string(), n.arg(1));
                if let Some(h) = url.strip_prefix("fcgi://") {
                    fastcgi = Some(h.split('/').next().unwrap_or(h).to_string());
                    plan.note(
                        at,
                        &t,
                        Verdict::Approximated,
                        "a FastCGI upstream; baton maps the path under DocumentRoot itself",
                    );
                    continue;
                }
                let (up, uri) = proxied_upstream(plan, url);
                proxies.push((path, up, uri));
                plan.note(at, &t, Verdict::Mapped, "a route to the upstream");
            }
            "ProxyPassReverse" | "ProxyPreserveHost" | "ProxyRequests" => plan.note(
                at,
                &t,
                Verdict::Mapped,
                "baton sends Host as received and passes Location unchanged",
            ),
            "ProxyPassMatch" => {
                if let Some(h) = n.arg(1).strip_prefix("fcgi://") {
                    fastcgi = Some(h.split('/').next().unwrap_or(h).to_string());
                    plan.note(
                        at,
                        &t,
                        Verdict::Mapped,
                        "a FastCGI upstream for the scripts under DocumentRoot",
                    );
                } else {
                    plan.note(
                        at,
                        &t,
                        Verdict::NotMapped,
                        "write it as a route with path_regex",
                    );
                }
            }
            "FilesMatch" => {
                let inner = n.block.as_deref().unwrap_or(&[]);
                if let Some(h) = inner
                    .iter()
                    .find(|x| x.name == "SetHandler" && x.arg(0).starts_with("proxy:"))
                {
                    let spec = h.arg(0).trim_start_matches("proxy:");
                    let addr = spec.split('|').next().unwrap_or(spec);
                    let addr = addr
                        .strip_prefix("fcgi://")
                        .map_or(addr.to_string(), |a| a.trim_end_matches('/').to_string());
                    fastcgi = Some(addr);
                    plan.note(
                        at,
                        &t,
                        Verdict::Mapped,
                        "a FastCGI upstream (PHP-FPM) for the scripts under DocumentRoot",
                    );
                } else {
                    plan.note(at, &t, Verdict::NotMapped, "no baton equivalent");
                }
            }
            "Alias" => {
                aliases.insert(with_slash(n.arg(0)), s(with_slash(n.arg(1))));
                plan.note(at, &t, Verdict::Mapped, "alias on the files upstream");
            }
            "Redirect" | "RedirectPermanent" | "RedirectMatch" => {
                routes.push(redirect_route(n));
                plan.note(at, &t, Verdict::Mapped, "a redirect route");
            }
            "RewriteEngine" | "RewriteBase" => {
                plan.note(at, &t, Verdict::Mapped, "read with the rules")
            }
            "RewriteCond" => conds.push(n.clone()),
            "RewriteRule" => {
                rewrite_rule(
                    plan,
                    n,
                    &conds,
                    hosts.first().map(String::as_str),
                    &mut routes,
                );
                conds.clear();
            }
            "Header" => {
                let mut a: Vec<&str> = n.args.iter().map(String::as_str).collect();
                if a.first() == Some(&"always") {
                    a.remove(0);
                }
                match a.as_slice() {
                    ["set" | "append" | "add", name, value, ..] => {
                        headers.insert(name.to_string(), s(*value));
                        plan.note(at, &t, Verdict::Mapped, "response_headers.set");
                    }
                    ["unset", name, ..] => {
                        remove.push(name.to_string());
                        plan.note(at, &t, Verdict::Mapped, "response_headers.remove");
                    }
                    _ => plan.note(at, &t, Verdict::NotMapped, "baton sets and removes fields"),
                }
            }
            "AddOutputFilterByType" | "SetOutputFilter"
                if t.contains("DEFLATE") || t.contains("BROTLI") =>
            {
                compress = true;
                plan.note(
                    at,
                    &t,
                    Verdict::Mapped,
                    "compress = true (baton picks the types)",
                );
            }
            "ErrorLog" => plan.note(
                at,
                &t,
                Verdict::Approximated,
                "baton's failure log is JSON lines with causes: [log] errors",
            ),
            "CustomLog" => {
                if !plan.log.contains_key("access") {
                    plan.log.insert(
                        "access".into(),
                        s(n.arg(0).replace("${APACHE_LOG_DIR}", "/var/log/apache2")),
                    );
                    plan.log.insert("access_format".into(), s("combined"));
                }
                plan.note(
                    at,
                    &t,
                    Verdict::Mapped,
                    "[log] access in the combined format",
                );
            }
            "LimitRequestBody" => {
                if let Some(b) = size(n.arg(0)).filter(|b| *b > 0) {
                    plan.server
                        .insert("max_body_bytes".into(), Value::Integer(b as i64));
                }
                plan.note(at, &t, Verdict::Mapped, "server.max_body_bytes");
            }
            "ServerAdmin" => plan.note(
                at,
                &t,
                Verdict::NotMapped,
                "baton's error pages carry the request ID instead of an address",
            ),
            "Directory" | "Location" => plan.note(
                at,
                &t,
                Verdict::Approximated,
                "its access rules: write allow/deny or basic_auth on a route for that path",
            ),
            _ => plan.note(at, &t, Verdict::NotMapped, "no baton equivalent"),
        }
    }
    if let (Some(c), Some(k)) = (cert, key) {
        plan.certificates.push((c, k));
    }
    let main = root.map(|r| files_upstream(plan, r, fastcgi.as_deref(), index, aliases));
    let common = route_common(&hosts, compress, headers, remove);
    let out = vhost_routes(&common, routes, proxies, main);
    if hosts.is_empty() {
        plan.default_routes.extend(out);
    } else {
        plan.routes.extend(out);
    }
}

/// The virtual host's address, in `server.listen` or, with `SSLEngine on`,
/// `server.listen_tls`.
fn listener(plan: &mut Plan, v: &Node, body: &[Node]) {
    let port = v
        .arg(0)
        .rsplit_once(':')
        .map_or("80", |(_, p)| p)
        .to_string();
    let ssl = body
        .iter()
        .any(|n| n.name == "SSLEngine" && n.arg(0).eq_ignore_ascii_case("on"));
    let addr = format!("0.0.0.0:{port}");
    let list = if ssl {
        &mut plan.listen_tls
    } else {
        &mut plan.listen
    };
    if !list.contains(&addr) {
        list.push(addr);
    }
    plan.note(
        &v.at,
        &v.text(),
        Verdict::Mapped,
        if ssl {
            "server.listen_tls"
        } else {
            "server.listen"
        },
    );
}

/// A `ProxyPass` target (`http://` or `https://`) as an upstream: its
/// name, and the path the target adds, if any.
fn proxied_upstream(plan: &mut Plan, url: &str) -> (String, Option<String>) {
    let tls = url.starts_with("https://");
    let rest = url
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let (hostport, uri) = match rest.find('/') {
        Some(i) => (rest[..i].to_string(), Some(rest[i..].to_string())),
        None => (rest.to_string(), None),
    };
    let hp = if hostport.contains(':') {
        hostport.clone()
    } else {
        format!("{hostport}:{}", if tls { 443 } else { 80 })
    };
    let mut k = Map::new();
    k.insert("servers".into(), strings(&[hp]));
    if tls {
        k.insert("tls".into(), Value::Boolean(true));
    }
    let name = if hostport.starts_with("127.") || hostport.starts_with("localhost") {
        "app"
    } else {
        hostport.split(':').next().unwrap_or("app")
    };
    (plan.upstream(name, k), uri)
}

/// `p` ending in `/`.
fn with_slash(p: &str) -> String {
    if p.ends_with('/') {
        p.to_string()
    } else {
        format!("{p}/")
    }
}

/// A `RewriteRule` under the `RewriteCond`s before it: `server.redirect_https`
/// for the usual HTTPS redirect, else (with no conditions) a route with
/// `path_regex` that redirects or rewrites, pushed on `routes`.
fn rewrite_rule(
    plan: &mut Plan,
    n: &Node,
    conds: &[Node],
    host: Option<&str>,
    routes: &mut Vec<Map<String, Value>>,
) {
    let (at, t) = (&n.at, n.text());
    let (pat, to) = (n.arg(0), n.arg(1));
    let flags = n.arg(2);
    let https = conds.iter().any(|c| {
        c.arg(0) == "%{HTTPS}" && c.arg(1) == "off"
            || c.arg(0) == "%{SERVER_PORT}" && c.arg(1) == "80"
    });
    if https && to.starts_with("https://") {
        plan.server
            .insert("redirect_https".into(), Value::Boolean(true));
        plan.note(at, &t, Verdict::Mapped, "server.redirect_https");
    } else if !conds.is_empty() {
        plan.note(at, &t, Verdict::NotMapped, "a rule under RewriteCond: baton has no conditions; a front controller is the FastCGI upstream's try_files");
    } else {
        let mut r = Map::new();
        let re = if pat.starts_with('^') && !pat.starts_with("^/") {
            format!("^/{}", &pat[1..])
        } else {
            pat.to_string()
        };
        r.insert("path_regex".into(), s(re));
        let status = flags
            .split([',', '[', ']'])
            .find_map(|f| f.strip_prefix("R="))
            .and_then(|c| c.parse::<i64>().ok());
        let redirect = flags.contains("R")
            && flags
                .split([',', '[', ']'])
                .any(|f| f == "R" || f.starts_with("R="));
        match redirect_template(to, host) {
            Some(tpl) if redirect || to.starts_with("http") => {
                r.insert("redirect".into(), s(tpl));
                r.insert(
                    "redirect_status".into(),
                    Value::Integer(status.unwrap_or(302)),
                );
                routes.push(r);
                plan.note(at, &t, Verdict::Mapped, "a redirect route with path_regex");
            }
            Some(tpl) => {
                r.insert(
                    "rewrite".into(),
                    s(if tpl.starts_with('/') {
                        tpl
                    } else {
                        format!("/{tpl}")
                    }),
                );
                routes.push(r);
                plan.note(
                    at,
                    &t,
                    Verdict::Approximated,
                    "a route with path_regex and rewrite to the virtual host's main upstream",
                );
            }
            None => plan.note(
                at,
                &t,
                Verdict::NotMapped,
                "the substitution uses a variable baton has no placeholder for",
            ),
        }
    }
}

/// A `Redirect`, `RedirectPermanent` or `RedirectMatch` as a redirect route
/// (the status as its first argument, or by its keyword).
fn redirect_route(n: &Node) -> Map<String, Value> {
    let mut args: Vec<&str> = n.args.iter().map(String::as_str).collect();
    let mut status = if n.name == "RedirectPermanent" {
        301
    } else {
        302
    };
    if let Some(first) = args.first() {
        match *first {
            "permanent" => {
                status = 301;
                args.remove(0);
            }
            "temp" => {
                status = 302;
                args.remove(0);
            }
            "seeother" => {
                status = 303;
                args.remove(0);
            }
            c if c.parse::<i64>().is_ok() => {
                status = c.parse().unwrap_or(302);
                args.remove(0);
            }
            _ => {}
        }
    }
    let (from, to) = (
        args.first().copied().unwrap_or("/"),
        args.get(1).copied().unwrap_or(""),
    );
    let mut r = Map::new();
    if n.name == "RedirectMatch" {
        r.insert("path_regex".into(), s(from));
        r.insert("redirect".into(), s(to));
    } else if from == "/" {
        r.insert(
            "redirect".into(),
            s(format!("{}{{uri}}", to.trim_end_matches('/'))),
        );
    } else {
        r.insert(
            "path_regex".into(),
            s(format!(
                "^{}(.*)$",
                regex::escape(from.trim_end_matches('/'))
            )),
        );
        r.insert(
            "redirect".into(),
            s(format!("{}$1", to.trim_end_matches('/'))),
        );
    }
    if status != 301 {
        r.insert("redirect_status".into(), Value::Integer(status));
    }
    r
}

/// The files upstream of a `DocumentRoot`: FastCGI when the virtual host
/// hands scripts to PHP-FPM, else static.
fn files_upstream(
    plan: &mut Plan,
    root: String,
    fastcgi: Option<&str>,
    index: Option<Vec<String>>,
    aliases: Map<String, Value>,
) -> String {
    let mut k = Map::new();
    files_protocol(&mut k, fastcgi);
    k.insert("root".into(), s(root));
    // Apache sends no Cache-Control for a file unless told.
    k.insert("static_max_age".into(), s("off"));
    let idx = index.unwrap_or_else(|| vec!["index.html".into()]);
    k.insert("index".into(), strings(&idx));
    if !aliases.is_empty() {
        k.insert("alias".into(), Value::Table(aliases));
    }
    plan.upstream(if fastcgi.is_some() { "php" } else { "static" }, k)
}

/// What every route of the virtual host carries: its hosts, compression,
/// the `Header` rules.
fn route_common(
    hosts: &[String],
    compress: bool,
    headers: Map<String, Value>,
    remove: Vec<String>,
) -> Map<String, Value> {
    let mut common = Map::new();
    if !hosts.is_empty() {
        common.insert("host".into(), strings(hosts));
    }
    if compress {
        common.insert("compress".into(), Value::Boolean(true));
    }
    if !headers.is_empty() || !remove.is_empty() {
        let mut h = Map::new();
        if !headers.is_empty() {
            h.insert("set".into(), Value::Table(headers));
        }
        if !remove.is_empty() {
            h.insert("remove".into(), strings(&remove));
        }
        common.insert("response_headers".into(), Value::Table(h));
    }
    common
}

/// The virtual host's routes in order: redirects and rewrites, the proxied
/// prefixes (longest first), then the files upstream.
fn vhost_routes(
    common: &Map<String, Value>,
    routes: Vec<Map<String, Value>>,
    mut proxies: Vec<(String, String, Option<String>)>,
    main: Option<String>,
) -> Vec<Map<String, Value>> {
    let mut out = Vec::new();
    for mut r in routes {
        if r.contains_key("rewrite") {
            match proxies.first().map(|p| p.1.clone()).or(main.clone()) {
                Some(u) => {
                    r.insert("upstream".into(), s(u));
                }
                None => continue,
            }
        }
        let mut full = common.clone();
        full.extend(r);
        out.push(full);
    }
    // Longest proxied prefix first.
    proxies.sort_by_key(|(p, _, _)| std::cmp::Reverse(p.len()));
    for (path, up, uri) in proxies {
        let mut r = common.clone();
        match uri.filter(|u| *u != path) {
            Some(u) => {
                r.insert(
                    "path_regex".into(),
                    s(format!(
                        "^{}/?(.*)$",
                        regex::escape(path.trim_end_matches('/'))
                    )),
                );
                r.insert("rewrite".into(), s(format!("{}$1", with_slash(&u))));
            }
            None if path != "/" => {
                r.insert("path".into(), s(path));
            }
            None => {}
        }
        r.insert("upstream".into(), s(up));
        out.push(r);
    }
    if let Some(m) = main {
        let mut r = common.clone();
        r.insert("upstream".into(), s(m));
        out.push(r);
    }
    out
}
