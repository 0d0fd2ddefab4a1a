//! `baton logs` measured on lines its rules were not written from.
//!
//! A corpus is a list of blocks, one failure (or one harmless request)
//! each: `# SOURCE LABEL: TRUTH` then the lines that failure wrote, in any
//! of the peer's log files. TRUTH is the cause ids the failure really had
//! (several for a block of concurrent requests), `app` for the
//! application's own error answer, or `ok`. A block is read right when the
//! causes `baton logs` finds in its lines are exactly the truth and none of
//! its lines is an unexplained failure ("unclassified").
//!
//! Two corpora:
//! - written here, every run, by real nginx, Apache, HAProxy and PHP-FPM
//!   put through faults on loopback (fresh lines each run; with
//!   `BATON_WRITE_CORPUS=DIR` they are also saved, which is how
//!   `tests/fixtures/logs/corpus/real-*.log` were made);
//! - `tests/fixtures/logs/corpus/*.log`: those saved lines, and Envoy,
//!   Traefik, Caddy and ingress-nginx lines written from their
//!   documentation in non-default field orders and formats.
//!
//! docs/troubleshooting.md reports the figures.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use baton::cli::logs::{Kind, formats, hint_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{Dns, Origin, Reap, Script, php, real_proxy, refusing_addr};

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/logs/corpus");

/// What one failure really was.
#[derive(Clone, Debug, PartialEq)]
pub enum Truth {
    Causes(BTreeSet<String>),
    App,
    Ok,
}

impl Truth {
    fn parse(s: &str) -> Truth {
        match s.trim() {
            "app" => Truth::App,
            "ok" => Truth::Ok,
            c => Truth::Causes(c.split(',').map(|c| c.trim().to_string()).collect()),
        }
    }

    fn label(&self) -> String {
        match self {
            Truth::App => "app".into(),
            Truth::Ok => "ok".into(),
            Truth::Causes(c) => c.iter().cloned().collect::<Vec<_>>().join(","),
        }
    }
}

#[derive(Clone)]
pub struct Block {
    pub source: String,
    pub label: String,
    pub truth: Truth,
    pub lines: Vec<String>,
}

/// What `baton logs` reads in a block's lines: the causes, and whether a
/// line was an unexplained failure or in no known format.
pub fn reading(b: &Block) -> (BTreeSet<String>, usize, usize) {
    let hint = hint_for(&b.source);
    let (mut causes, mut weak) = (BTreeSet::new(), BTreeSet::new());
    let (mut unclassified, mut unrecognised) = (0, 0);
    for l in b.lines.iter().filter(|l| !l.trim().is_empty()) {
        match formats::parse(l, hint) {
            None => unrecognised += 1,
            Some(p) => match p.kind {
                Kind::Failure {
                    cause: Some(c),
                    weak: false,
                } => {
                    causes.insert(c.id().to_string());
                }
                // A companion line: joined to the line that says why, or
                // the only word on the failure.
                Kind::Failure {
                    cause: Some(c),
                    weak: true,
                } => {
                    weak.insert(c.id().to_string());
                }
                Kind::Failure {
                    cause: None,
                    weak: false,
                } => unclassified += 1,
                _ => {}
            },
        }
    }
    if causes.is_empty() {
        causes = weak;
    }
    (causes, unclassified, unrecognised)
}

pub fn right(b: &Block) -> bool {
    let (causes, unclassified, _) = reading(b);
    unclassified == 0
        && match &b.truth {
            Truth::Causes(t) => causes == *t,
            Truth::App | Truth::Ok => causes.is_empty(),
        }
}

pub fn parse_corpus(text: &str) -> Vec<Block> {
    let mut out: Vec<Block> = Vec::new();
    for line in text.lines() {
        if let Some(h) = line.strip_prefix("# ") {
            let (head, truth) = h.rsplit_once(": ").expect("# SOURCE LABEL: TRUTH");
            let (source, label) = head.split_once(' ').unwrap_or((head, ""));
            out.push(Block {
                source: source.to_string(),
                label: label.to_string(),
                truth: Truth::parse(truth),
                lines: Vec::new(),
            });
        } else if !line.is_empty() {
            out.last_mut()
                .expect("a block header first")
                .lines
                .push(line.to_string());
        }
    }
    out
}

pub fn render(blocks: &[Block]) -> String {
    let mut s = String::new();
    for b in blocks {
        let _ = writeln!(s, "# {} {}: {}", b.source, b.label, b.truth.label());
        for l in &b.lines {
            let _ = writeln!(s, "{l}");
        }
    }
    s
}

/// Per-source `(right, total)` and the wrong blocks, described.
fn score(blocks: &[Block]) -> (Vec<(String, usize, usize)>, Vec<String>) {
    let mut per: Vec<(String, usize, usize)> = Vec::new();
    let mut wrong = Vec::new();
    for b in blocks {
        let ok = right(b);
        match per.iter_mut().find(|(s, ..)| *s == b.source) {
            Some(e) => {
                e.1 += usize::from(ok);
                e.2 += 1;
            }
            None => per.push((b.source.clone(), usize::from(ok), 1)),
        }
        if !ok {
            let (c, u, r) = reading(b);
            wrong.push(format!(
                "{} {}: truth {}, read {c:?} ({u} unclassified, {r} unrecognised)\n  {}",
                b.source,
                b.label,
                b.truth.label(),
                b.lines.join("\n  ")
            ));
        }
    }
    (per, wrong)
}

fn assert_95(name: &str, blocks: &[Block]) {
    let (per, wrong) = score(blocks);
    let (r, t) = per.iter().fold((0, 0), |(r, t), (_, a, b)| (r + a, t + b));
    let table: Vec<String> = per.iter().map(|(s, r, t)| format!("{s} {r}/{t}")).collect();
    eprintln!("{name}: {r}/{t} right ({})", table.join(", "));
    for w in &wrong {
        eprintln!("read wrong: {w}");
    }
    assert!(t > 0);
    assert!(
        r * 100 >= t * 95,
        "{name}: {r}/{t} right, under 95%:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn checked_in_corpus_is_read_right() {
    let mut all = Vec::new();
    let mut names: Vec<PathBuf> = std::fs::read_dir(CORPUS)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    for p in names {
        let blocks = parse_corpus(&std::fs::read_to_string(&p).unwrap());
        assert!(!blocks.is_empty(), "{}", p.display());
        all.extend(blocks);
    }
    assert!(all.len() >= 150, "{} blocks", all.len());
    assert_95("checked-in corpus", &all);
}

// ------------------------------------------------- real servers, faults

/// The faults every proxy is put in front of.
struct Faults {
    ok: Origin,
    stall: Origin,
    closed: Origin,
    reset: Origin,
    partial: Origin,
    garbage: Origin,
    big: Origin,
    short: Origin,
    slow_body: Origin,
    app500: Origin,
    refused: SocketAddr,
    refused2: SocketAddr,
    fpm: php::Fpm,
    fpm_log: PathBuf,
    fpm_child: Reap,
}

/// Extra scripts for the PHP site: a fatal error, a worker killed
/// mid-request, one over request_terminate_timeout, the app's own 500.
const SCRIPTS: &[(&str, &str)] = &[
    ("fatal.php", "<?php undefined_function_here();\n"),
    (
        "killed.php",
        "<?php posix_kill(getmypid(), 9); echo 'never';\n",
    ),
    ("timeout.php", "<?php sleep(5); echo 'late';\n"),
    (
        "err500.php",
        "<?php http_response_code(500); echo 'app says no';\n",
    ),
];

async fn faults() -> Faults {
    let o = |s| async move { Origin::start(s).await.unwrap() };
    let fpm = php::prepare("pm = static\npm.max_children = 2\nrequest_terminate_timeout = 1s\n");
    for (name, body) in SCRIPTS {
        let p = fpm.root.join(name);
        std::fs::write(&p, body).unwrap();
        php::set_mode(&p, 0o644);
    }
    // Its log in a file, at notice level (Debian's default).
    let fpm_log = fpm.dir.path().join("php8.2-fpm.log");
    let conf = std::fs::read_to_string(&fpm.conf).unwrap().replace(
        "error_log = /proc/self/fd/2",
        &format!("error_log = {}\nlog_level = notice", fpm_log.display()),
    );
    std::fs::write(&fpm.conf, conf).unwrap();
    let child = Reap(Some(
        Command::new(php::FPM)
            .args(["-F", "-y"])
            .arg(&fpm.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("php-fpm8.2 runs"),
    ));
    for _ in 0..200 {
        if tokio::net::UnixStream::connect(&fpm.sock).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Faults {
        ok: o(Script::Ok("fine".into())).await,
        stall: o(Script::Stall).await,
        closed: o(Script::CloseBeforeHead).await,
        reset: o(Script::Reset).await,
        partial: o(Script::PartialHead).await,
        garbage: o(Script::Garbage).await,
        big: o(Script::OversizedHead(40_000)).await,
        short: o(Script::ShortBody).await,
        slow_body: o(Script::SlowBody {
            interval: Duration::from_secs(3),
            len: 10,
        })
        .await,
        app500: o(Script::Status(500, "app error".into())).await,
        refused: refusing_addr(),
        refused2: refusing_addr(),
        fpm,
        fpm_log,
        fpm_child: child,
    }
}

/// A scenario: the request paths sent at once, and the truth.
struct Case {
    label: &'static str,
    paths: &'static [&'static str],
    truth: &'static str,
}

const fn case(label: &'static str, paths: &'static [&'static str], truth: &'static str) -> Case {
    Case {
        label,
        paths,
        truth,
    }
}

/// Sends `paths` at once and waits for every answer (or 10 s).
async fn hit(addr: SocketAddr, paths: &[&str]) {
    let mut tasks = Vec::new();
    for p in paths {
        let p = p.to_string();
        tasks.push(tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(
                format!("GET {p} HTTP/1.1\r\nHost: example.com\r\nUser-Agent: corpus\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .unwrap();
            let mut buf = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
        }));
        // Concurrent requests in a stated order.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Runs each case through the proxy at `addr` and cuts, from every file in
/// `files`, the lines it wrote into the case's block.
async fn run(source: &str, addr: SocketAddr, files: &[PathBuf], cases: &[Case]) -> Vec<Block> {
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let mut out = Vec::new();
    for c in cases {
        let before: Vec<u64> = files.iter().map(|f| size(f)).collect();
        hit(addr, c.paths).await;
        // Logs are written as the request ends; give buffered writers time.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut lines = Vec::new();
        for (f, from) in files.iter().zip(before) {
            let all = std::fs::read(f).unwrap_or_default();
            let new = String::from_utf8_lossy(&all[(from as usize).min(all.len())..]).to_string();
            lines.extend(new.lines().map(str::to_string));
        }
        out.push(Block {
            source: source.to_string(),
            label: c.label.to_string(),
            truth: Truth::parse(c.truth),
            lines,
        });
    }
    out
}

const NGINX_CASES: &[Case] = &[
    case("/ok", &["/ok"], "ok"),
    case("/refused", &["/refused"], "connection_refused"),
    case("/stall", &["/stall"], "response_head_timeout"),
    case("/closed", &["/closed"], "connection_terminated"),
    case("/reset", &["/reset"], "connection_terminated"),
    case("/partial", &["/partial"], "connection_terminated"),
    case("/big", &["/big"], "response_header_too_large"),
    case("/short", &["/short"], "response_incomplete"),
    case("/slowbody", &["/slowbody"], "response_body_timeout"),
    case("/app500", &["/app500"], "app"),
    case("/sock", &["/sock"], "socket_not_found"),
    case("/tls", &["/tls"], "tls_protocol_error"),
    case("/nxdomain", &["/nxdomain"], "dns_error"),
    case("/dnstimeout", &["/dnstimeout"], "dns_timeout"),
    case("/pool first", &["/pool"], "connection_refused"),
    case("/pool again", &["/pool"], "no_healthy_server"),
    case("/missing.php", &["/missing.php"], "script_not_found"),
    case("/fatal.php", &["/fatal.php"], "app"),
    case("/err500.php", &["/err500.php"], "app"),
    case("/killed.php", &["/killed.php"], "fastcgi_no_response"),
    case("/timeout.php", &["/timeout.php"], "fastcgi_no_response"),
    case("/hello.php", &["/hello.php"], "ok"),
];

/// nginx with three access logs: combined, ingress-nginx's format, and a
/// key=value format with the time first.
async fn nginx(f: &Faults, dns: &Dns, silent: &Dns) -> Vec<Block> {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let port = refusing_addr().port();
    let conf = dir.path().join("nginx.conf");
    let loc = |path: &str, to: String| format!("    location = {path} {{ proxy_pass {to}; }}\n");
    let mut locs = String::new();
    for (p, o) in [
        ("/ok", &f.ok),
        ("/stall", &f.stall),
        ("/closed", &f.closed),
        ("/reset", &f.reset),
        ("/partial", &f.partial),
        ("/big", &f.big),
        ("/short", &f.short),
        ("/slowbody", &f.slow_body),
        ("/app500", &f.app500),
    ] {
        locs += &loc(p, format!("http://{}", o.addr));
    }
    locs += &loc("/refused", format!("http://{}", f.refused));
    locs += &loc("/sock", format!("http://unix:{d}/gone.sock:"));
    locs += &loc("/tls", format!("https://{}", f.ok.addr));
    locs += &loc("/pool", "http://pool".into());
    locs += &format!(
        "    location = /nxdomain {{ resolver {} valid=1s; resolver_timeout 1s; set $b http://gone.test; proxy_pass $b; }}\n",
        dns.addr
    );
    locs += &format!(
        "    location = /dnstimeout {{ resolver {} valid=1s; resolver_timeout 1s; set $b http://app.test; proxy_pass $b; }}\n",
        silent.addr
    );
    locs += &format!(
        "    location ~ \\.php$ {{ include /etc/nginx/fastcgi_params; fastcgi_param SCRIPT_FILENAME {}$fastcgi_script_name; fastcgi_pass unix:{}; }}\n",
        f.fpm.root.display(),
        f.fpm.sock.display()
    );
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nmaster_process off;\npid {d}/n.pid;\nerror_log {d}/nginx-error.log notice;\nevents {{}}\nhttp {{\n  log_format ingress '$remote_addr - $remote_user [$time_local] \"$request\" $status $body_bytes_sent \"$http_referer\" \"$http_user_agent\" $request_length $request_time [default-web-80] [] $upstream_addr $upstream_response_length $upstream_response_time $upstream_status $request_id';\n  log_format kv 'time=$time_iso8601 status=$status method=$request_method uri=\"$request_uri\" upstream=$upstream_addr upstream_status=$upstream_status rt=$request_time';\n  access_log {d}/nginx-access.log combined;\n  access_log {d}/nginx-ingress.log ingress;\n  access_log {d}/nginx-kv.log kv;\n  client_body_temp_path {d}/b; proxy_temp_path {d}/p; fastcgi_temp_path {d}/f; uwsgi_temp_path {d}/u; scgi_temp_path {d}/s;\n  proxy_read_timeout 1s;\n  fastcgi_read_timeout 3s;\n  upstream pool {{ server {} max_fails=1 fail_timeout=30s; server {} max_fails=1 fail_timeout=30s; }}\n  server {{\n    listen 127.0.0.1:{port};\n{locs}  }}\n}}\n",
            f.refused, f.refused2
        ),
    )
    .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let _nginx = real_proxy("nginx", &conf, addr, None).await;
    let files: Vec<PathBuf> = [
        "nginx-error.log",
        "nginx-access.log",
        "nginx-ingress.log",
        "nginx-kv.log",
    ]
    .iter()
    .map(|n| dir.path().join(n))
    .chain([f.fpm_log.clone()])
    .collect();
    run("nginx", addr, &files, NGINX_CASES).await
}

const APACHE_CASES: &[Case] = &[
    case("/ok", &["/ok"], "ok"),
    case("/refused", &["/refused"], "connection_refused"),
    case("/stall", &["/stall"], "response_head_timeout"),
    case("/closed", &["/closed"], "connection_terminated"),
    case("/reset", &["/reset"], "connection_terminated"),
    case("/big", &["/big"], "response_header_too_large"),
    case("/short", &["/short"], "response_incomplete"),
    case("/app500", &["/app500"], "app"),
    case("/sock/x.php", &["/sock/x.php"], "socket_not_found"),
    case("/missing.php", &["/missing.php"], "script_not_found"),
    case("/fatal.php", &["/fatal.php"], "app"),
    case("/err500.php", &["/err500.php"], "app"),
    case("/killed.php", &["/killed.php"], "fastcgi_no_response"),
    case("/hello.php", &["/hello.php"], "ok"),
];

/// Apache with mod_proxy_http and mod_proxy_fcgi, and two access logs: the
/// combined format and one with the time and status first.
async fn apache(f: &Faults) -> Vec<Block> {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let port = refusing_addr().port();
    let m = "/usr/lib/apache2/modules";
    let conf = dir.path().join("httpd.conf");
    let mut pass = String::new();
    for (p, o) in [
        ("/ok", &f.ok),
        ("/stall", &f.stall),
        ("/closed", &f.closed),
        ("/reset", &f.reset),
        ("/big", &f.big),
        ("/short", &f.short),
        ("/app500", &f.app500),
    ] {
        pass += &format!("ProxyPass {p} http://{}/\n", o.addr);
    }
    pass += &format!("ProxyPass /refused http://{}/\n", f.refused);
    pass += &format!("ProxyPass /sock/ unix:{d}/gone.sock|fcgi://localhost/\n");
    pass += &format!(
        "ProxyPassMatch ^/(.*\\.php)$ unix:{}|fcgi://localhost{}/$1\n",
        f.fpm.sock.display(),
        f.fpm.root.display()
    );
    std::fs::write(
        &conf,
        format!(
            "ServerRoot {d}\nServerName localhost\nListen 127.0.0.1:{port}\nPidFile {d}/httpd.pid\nDefaultRuntimeDir {d}\nMutex file:{d} default\nErrorLog {d}/apache-error.log\nLogLevel warn\nLogFormat \"%h %l %u %t \\\"%r\\\" %>s %O \\\"%{{Referer}}i\\\" \\\"%{{User-Agent}}i\\\"\" combined\nLogFormat \"%{{%Y-%m-%dT%H:%M:%S%z}}t %>s %D \\\"%r\\\" %a\" timed\nCustomLog {d}/apache-access.log combined\nCustomLog {d}/apache-timed.log timed\nUser www-data\nGroup www-data\nLoadModule mpm_event_module {m}/mod_mpm_event.so\nLoadModule authz_core_module {m}/mod_authz_core.so\nLoadModule proxy_module {m}/mod_proxy.so\nLoadModule proxy_http_module {m}/mod_proxy_http.so\nLoadModule proxy_fcgi_module {m}/mod_proxy_fcgi.so\nProxyTimeout 1\n{pass}"
        ),
    )
    .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let _apache = real_proxy("apache2", &conf, addr, None).await;
    let files: Vec<PathBuf> = ["apache-error.log", "apache-access.log", "apache-timed.log"]
        .iter()
        .map(|n| dir.path().join(n))
        .chain([f.fpm_log.clone()])
        .collect();
    run("apache", addr, &files, APACHE_CASES).await
}

const HAPROXY_CASES: &[Case] = &[
    case("/ok", &["/ok"], "ok"),
    case("/refused", &["/refused"], "connection_refused"),
    case("/stall", &["/stall"], "response_head_timeout"),
    case("/closed", &["/closed"], "connection_terminated"),
    case("/reset", &["/reset"], "connection_terminated"),
    case("/garbage", &["/garbage"], "http_protocol_error"),
    case("/short", &["/short"], "response_incomplete"),
    case("/slowbody", &["/slowbody"], "response_body_timeout"),
    case("/app500", &["/app500"], "app"),
    case("/down", &["/down"], "no_healthy_server"),
    case(
        "/queue",
        &["/queue", "/queue"],
        "response_head_timeout,concurrency_limit",
    ),
];

/// HAProxy with its default HTTP log on one frontend and a custom
/// log-format (termination state first) on another.
async fn haproxy(f: &Faults) -> Vec<Block> {
    let dir = tempfile::tempdir().unwrap();
    let port = refusing_addr().port();
    let port2 = refusing_addr().port();
    let conf = dir.path().join("haproxy.cfg");
    let mut backends = String::new();
    let mut uses = String::new();
    for (p, addr) in [
        ("ok", f.ok.addr),
        ("refused", f.refused),
        ("stall", f.stall.addr),
        ("closed", f.closed.addr),
        ("reset", f.reset.addr),
        ("garbage", f.garbage.addr),
        ("short", f.short.addr),
        ("slowbody", f.slow_body.addr),
        ("app500", f.app500.addr),
    ] {
        uses += &format!("  use_backend {p} if {{ path /{p} }}\n");
        backends += &format!("backend {p}\n  server s1 {addr}\n");
    }
    uses += "  use_backend down if { path /down }\n  use_backend queue if { path /queue }\n";
    backends += &format!(
        "backend down\n  server s1 {} check inter 100ms fall 1 rise 1\nbackend queue\n  timeout queue 500ms\n  server s1 {} maxconn 1\n",
        f.refused2, f.stall.addr
    );
    std::fs::write(
        &conf,
        format!(
            "global\n  log stdout format raw local0\ndefaults\n  mode http\n  log global\n  timeout connect 1s\n  timeout client 5s\n  timeout server 1s\nfrontend web\n  bind 127.0.0.1:{port}\n  option httplog\n{uses}frontend custom\n  bind 127.0.0.1:{port2}\n  log-format \"%tsc %ST %{{+Q}}r %b/%s %ci:%cp [%tr] %TR/%Tw/%Tc/%Tr/%Ta %B\"\n{uses}{backends}"
        ),
    )
    .unwrap();
    let log = dir.path().join("haproxy.log");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let addr2: SocketAddr = format!("127.0.0.1:{port2}").parse().unwrap();
    let _haproxy = real_proxy("haproxy", &conf, addr, Some(&log)).await;
    // The health check marks `down` DOWN.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let files = [log];
    let mut out = run("haproxy", addr, &files, HAPROXY_CASES).await;
    let mut custom = run("haproxy", addr2, &files, HAPROXY_CASES).await;
    for b in &mut custom {
        b.label = format!("custom {}", b.label);
    }
    out.extend(custom);
    out
}

#[tokio::test]
async fn real_servers_lines_are_read_right() {
    let f = faults().await;
    let dns = Dns::start(vec![], false).await;
    let silent = Dns::start(vec![], true).await;
    let mut blocks = nginx(&f, &dns, &silent).await;
    blocks.extend(apache(&f).await);
    blocks.extend(haproxy(&f).await);
    // PHP-FPM's lines are in the nginx and Apache blocks; its process
    // events are cut too.
    drop(f.fpm_child);
    if let Ok(dir) = std::env::var("BATON_WRITE_CORPUS") {
        for source in ["nginx", "apache", "haproxy"] {
            let mine: Vec<Block> = blocks
                .iter()
                .filter(|b| b.source == source)
                .cloned()
                .collect();
            std::fs::write(
                Path::new(&dir).join(format!("real-{source}.log")),
                render(&mine),
            )
            .unwrap();
        }
    }
    assert_95("real servers", &blocks);
}
