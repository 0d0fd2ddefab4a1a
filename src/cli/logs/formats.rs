//! Reading one log line of any supported format into a [`Parsed`] line.
//!
//! Owns: format detection (line by line: concatenated logs are normal) and
//! the mapping of each peer's failure messages onto the one [`Cause`] enum.
//! Matches errno numbers (via [`Cause::from_errno`], the gateway's own
//! table), nginx's `while <action>` phase, Apache's `AHnnnnn` ids, HAProxy's
//! termination state and Envoy's response flags; never libc's wording, which
//! differs between glibc and musl.
//! Must not: aggregate or print (that is `logs`).

use std::sync::LazyLock;

use regex::Regex;
use serde_json::Value;

use crate::core::cause::{Cause, Phase};

/// Who wrote a line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    Nginx,
    Apache,
    Haproxy,
    Envoy,
    Caddy,
    Traefik,
    PhpFpm,
    Gunicorn,
    Baton,
    /// The kernel (dmesg, journal): the OOM killer.
    Kernel,
    /// A line in no known format that still names a known failure.
    Other,
}

impl Source {
    /// The application side: what it logs explains a proxy's failure.
    pub const fn is_backend(self) -> bool {
        matches!(self, Source::PhpFpm | Source::Gunicorn | Source::Kernel)
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Source::Nginx => "nginx",
            Source::Apache => "apache",
            Source::Haproxy => "haproxy",
            Source::Envoy => "envoy",
            Source::Caddy => "caddy",
            Source::Traefik => "traefik",
            Source::PhpFpm => "php-fpm",
            Source::Gunicorn => "gunicorn",
            Source::Baton => "baton",
            Source::Kernel => "kernel",
            Source::Other => "other",
        }
    }
}

/// Something that changed: what an escalation report lists around the
/// start of a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    Start,
    Reload,
    Stop,
    /// A worker or backend process (re)started.
    WorkerStart,
    ServerDown,
    ServerUp,
    /// The kernel killed a process for memory.
    OomKill,
    /// The application logged its own error (its own 500, passed through).
    AppError,
}

impl Event {
    pub const fn as_str(self) -> &'static str {
        match self {
            Event::Start => "start",
            Event::Reload => "reload",
            Event::Stop => "stop",
            Event::WorkerStart => "worker_start",
            Event::ServerDown => "server_down",
            Event::ServerUp => "server_up",
            Event::OomKill => "oom_kill",
            Event::AppError => "app_error",
        }
    }
}

/// What a line says.
#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    /// Recognised; nothing wrong (a 200 in an access log, an info line).
    Fine,
    /// A failure. `cause` is `None` when the line says something failed
    /// but not why (a 502 in an access log, an unknown error message).
    Failure {
        cause: Option<Cause>,
        /// The line reports a failure another line of the same peer
        /// explains (an access-log 502, Apache's AH00898 after AH01102):
        /// joined to that line instead of counted twice.
        weak: bool,
    },
    /// The upstream application answered with its own 5xx, passed through
    /// by the proxy: not a gateway failure.
    AppAnswer,
    Event(Event),
}

impl Kind {
    /// A failure line in words no rule knows.
    pub const UNCLASSIFIED: Kind = Kind::Failure {
        cause: None,
        weak: false,
    };
}

/// A failure line that says why.
fn fail(c: Cause) -> Kind {
    Kind::Failure {
        cause: Some(c),
        weak: false,
    }
}

/// One recognised line.
#[derive(Clone, Debug)]
pub struct Parsed {
    pub source: Source,
    /// Unix seconds. Times without a zone (nginx, Apache, php-fpm) are
    /// read as UTC.
    pub time: Option<i64>,
    pub kind: Kind,
    pub status: Option<u16>,
    pub upstream: Option<String>,
    pub path: Option<String>,
    pub request_id: Option<String>,
    /// The identifier the classification rests on (`while reading response
    /// header from upstream`, `AH01102`, `SH--`, `UF`), for the evidence.
    pub marker: Option<String>,
    /// The cause was guessed from the words of a failure line no rule
    /// knows ("refused", "timed out", "certificate"): the closest cause,
    /// with lower confidence.
    pub guessed: bool,
}

impl Parsed {
    fn new(source: Source, time: Option<i64>, kind: Kind) -> Parsed {
        Parsed {
            source,
            time,
            kind,
            status: None,
            upstream: None,
            path: None,
            request_id: None,
            marker: None,
            guessed: false,
        }
    }

    fn failure(source: Source, time: Option<i64>, cause: Option<Cause>) -> Parsed {
        Parsed::new(source, time, Kind::Failure { cause, weak: false })
    }

    pub fn cause(&self) -> Option<Cause> {
        match self.kind {
            Kind::Failure { cause, .. } => cause,
            _ => None,
        }
    }
}

/// Reads one line. `hint` is the source a bare access-log line (the
/// combined format nginx, Apache and baton all write) is attributed to,
/// from the file name. `None`: the line is in no known format.
pub fn parse(line: &str, hint: Source) -> Option<Parsed> {
    let line = line.trim_end_matches(['\r', '\n']);
    let t = line.trim_start();
    let mut p = if t.starts_with('{')
        && let Ok(v) = serde_json::from_str::<Value>(t)
    {
        json_line(&v)?
    } else {
        // Anchored formats first; then the readers that find a peer's
        // markers anywhere in a line (custom formats put fields in any
        // order), then the fallback.
        nginx_error(line)
            .or_else(|| apache_error(line))
            .or_else(|| envoy(line))
            .or_else(|| php_fpm(line))
            .or_else(|| gunicorn(line))
            .or_else(|| klog(line))
            .or_else(|| caddy_console(line))
            .or_else(|| access(line, hint))
            .or_else(|| traefik_text(line))
            .or_else(|| haproxy(line))
            .or_else(|| envoy_anywhere(line))
            .or_else(|| haproxy_anywhere(line))
            .or_else(|| access_anywhere(line, hint))
            .or_else(|| other(line))?
    };
    if p.kind == Kind::UNCLASSIFIED
        && let Some(c) = guess(line)
    {
        p.kind = fail(c);
        p.guessed = true;
    }
    Some(p)
}

/// The closest cause for a failure line in words no rule knows, from the
/// words every proxy and runtime uses for it. Only asked about lines
/// already known to report a failure.
fn guess(line: &str) -> Option<Cause> {
    let l = line.to_ascii_lowercase();
    let has = |w: &[&str]| w.iter().any(|w| l.contains(w));
    Some(if has(&["refused"]) {
        Cause::ConnectionRefused
    } else if has(&[
        "no live upstream",
        "no healthy",
        "no available server",
        "no server available",
        "no endpoints",
        "active endpoint",
        "no upstream",
        "all servers",
        "all backends",
    ]) {
        Cause::NoHealthyServer
    } else if has(&[
        "resolv",
        "dns",
        "nxdomain",
        "no such host",
        "name or service not known",
        "host not found",
        "unknown host",
        "servfail",
    ]) {
        if has(&["timed out", "timeout"]) {
            Cause::DnsTimeout
        } else {
            Cause::DnsError
        }
    } else if has(&["certificate", "x509", "verify failed"]) {
        Cause::TlsCertificate
    } else if has(&[" tls", "ssl", "handshake"]) {
        Cause::TlsProtocol
    } else if has(&["header"]) && has(&["too big", "too large", "too long", "exceed", "limit"]) {
        Cause::ResponseHeaderTooLarge
    } else if has(&["timed out", "timeout", "deadline"]) {
        if has(&["connect", "dial"]) {
            Cause::ConnectionTimeout
        } else if has(&["body", "reading upstream", "while proxying", "idle"]) {
            Cause::ResponseBodyTimeout
        } else {
            Cause::ResponseHeadTimeout
        }
    } else if has(&["unreachable", "no route to host"]) {
        Cause::ConnectError
    } else if has(&["socket"]) && has(&["no such file", "not found", "does not exist"]) {
        Cause::SocketNotFound
    } else if has(&["socket"]) && has(&["permission denied", "access denied"]) {
        Cause::SocketPermission
    } else if has(&[
        "reset",
        "prematurely closed",
        "broken pipe",
        "eof",
        "connection closed",
        "closed connection",
        "hang up",
        "hung up",
        "terminated",
    ]) {
        Cause::ConnectionTerminated
    } else if has(&[
        "malformed",
        "invalid response",
        "invalid header",
        "bad header",
        "protocol",
    ]) {
        Cause::ProtocolError
    } else if has(&["too many open files"]) {
        Cause::Internal
    } else {
        return None;
    })
}

macro_rules! re {
    ($name:ident, $re:literal) => {
        static $name: LazyLock<Regex> = LazyLock::new(|| Regex::new($re).expect($re));
    };
}

// ---------------------------------------------------------------- nginx

re!(
    NGINX,
    r"^(\d{4})/(\d\d)/(\d\d) (\d\d):(\d\d):(\d\d) \[(\w+)\] \d+#\d+: (?:\*\d+ )?(.*)$"
);
re!(ERRNO, r"\((\d+): [^)]*\)");
re!(NGX_UPSTREAM, r#", upstream: "([^"]*)""#);
re!(NGX_REQUEST, r#", request: "(\S+) (\S+)"#);
re!(NGX_RESOLVE, r"could not be resolved \((\d+):");

fn nginx_error(line: &str) -> Option<Parsed> {
    let c = NGINX.captures(line)?;
    let n = |i: usize| c[i].parse::<i64>().unwrap_or(0);
    let time = epoch(n(1), n(2), n(3), n(4), n(5), n(6));
    let level = &c[7];
    let rest = &c[8];
    let (msg, ctx) = rest.split_once(", client: ").unwrap_or((rest, ""));
    let (head, action) = match msg.rfind(" while ") {
        Some(i) => (&msg[..i], Some(&msg[i + 7..])),
        None => (msg, None),
    };
    let phase = action.and_then(nginx_phase);
    let upstream = NGX_UPSTREAM.captures(ctx).map(|c| c[1].to_string());
    let unix = upstream.as_deref().is_some_and(|u| u.contains("unix:")) || head.contains("unix:");
    let errno = ERRNO.captures(head).and_then(|c| c[1].parse::<i32>().ok());
    let mut kind = nginx_kind(level, head, phase, errno, unix);
    // A FastCGI server that closes or resets before its answer is a worker
    // that died mid-request (killed, request_terminate_timeout, a crash).
    if upstream
        .as_deref()
        .is_some_and(|u| u.starts_with("fastcgi://"))
        && kind == fail(Cause::ConnectionTerminated)
    {
        kind = fail(Cause::FastCgiNoResponse);
    }
    let mut p = Parsed::new(Source::Nginx, time, kind);
    p.upstream = upstream.map(|u| upstream_addr(&u));
    p.path = NGX_REQUEST.captures(ctx).map(|c| c[2].to_string());
    p.marker = match (errno, action) {
        (Some(e), Some(a)) => Some(format!("errno {e} while {a}")),
        (None, Some(a)) => Some(format!("while {a}")),
        (Some(e), None) => Some(format!("errno {e}")),
        _ => None,
    };
    Some(p)
}

/// `http://[::1]:3000/api` -> `[::1]:3000`;
/// `fastcgi://unix:/run/php.sock:` -> `unix:/run/php.sock`.
fn upstream_addr(u: &str) -> String {
    let rest = u.split_once("://").map_or(u, |(_, r)| r);
    if let Some(path) = rest.strip_prefix("unix:") {
        let path = path.split(':').next().unwrap_or(path);
        return format!("unix:{path}");
    }
    rest.split('/').next().unwrap_or(rest).to_string()
}

/// nginx's log action names the phase (ngx_http_upstream.c).
fn nginx_phase(action: &str) -> Option<Phase> {
    Some(if action.starts_with("connecting to upstream") {
        Phase::Connect
    } else if action.starts_with("SSL handshaking") {
        Phase::Tls
    } else if action.starts_with("sending request to upstream")
        || action.starts_with("sending to upstream")
    {
        Phase::WriteRequest
    } else if action.starts_with("reading response header from upstream") {
        Phase::ReadHead
    } else if action.starts_with("reading upstream")
        || action.starts_with("proxying")
        || action.starts_with("reading from upstream")
    {
        Phase::ReadBody
    } else {
        return None;
    })
}

fn nginx_kind(
    level: &str,
    msg: &str,
    phase: Option<Phase>,
    errno: Option<i32>,
    unix: bool,
) -> Kind {
    if msg.contains("client intended to send too large body") {
        return fail(Cause::BodyTooLarge);
    }
    if msg.contains("client prematurely closed")
        || msg.contains("client closed")
        || msg.contains("client timed out")
    {
        // A client abort (499) or a slow client (408): not an upstream fault.
        return Kind::Fine;
    }
    if msg.contains("upstream server temporarily disabled") {
        return Kind::Event(Event::ServerDown);
    }
    if msg.contains("no live upstreams") {
        return fail(Cause::NoHealthyServer);
    }
    if let Some(c) = NGX_RESOLVE.captures(msg) {
        // ngx_resolver_strerror: 110 is the resolver's own timeout.
        return fail(if &c[1] == "110" {
            Cause::DnsTimeout
        } else {
            Cause::DnsError
        });
    }
    if msg.contains("no resolver defined") || msg.contains("host not found in upstream") {
        return fail(Cause::DnsError);
    }
    if msg.contains("FastCGI sent in stderr") {
        if msg.contains("Primary script unknown") {
            return fail(Cause::ScriptNotFound);
        }
        return Kind::Event(Event::AppError);
    }
    if msg.contains("prematurely closed FastCGI") {
        return fail(if phase == Some(Phase::ReadBody) {
            Cause::ResponseIncomplete
        } else {
            Cause::FastCgiNoResponse
        });
    }
    if msg.contains("upstream prematurely closed") {
        return fail(if phase == Some(Phase::ReadBody) {
            Cause::ResponseIncomplete
        } else {
            Cause::ConnectionTerminated
        });
    }
    if msg.contains("upstream sent too big header") {
        return fail(Cause::ResponseHeaderTooLarge);
    }
    if msg.starts_with("upstream sent ") || msg.contains(" upstream sent ") {
        return fail(sniffed(msg).unwrap_or(Cause::ProtocolError));
    }
    if (phase == Some(Phase::Tls)
        || msg.contains("SSL_do_handshake")
        || msg.contains("SSL certificate"))
        && let Some(c) = tls_text(msg)
    {
        return fail(c);
    }
    if msg.starts_with("open()") || msg.starts_with("stat()") || msg.contains("is not found") {
        match errno {
            Some(2) | Some(20) => return fail(Cause::FileNotFound),
            Some(13) => return fail(Cause::Forbidden),
            _ => {}
        }
        if msg.contains("is not found") {
            return fail(Cause::FileNotFound);
        }
    }
    if msg.contains("directory index of") && msg.contains("is forbidden") {
        return fail(Cause::Forbidden);
    }
    if let Some(phase) = phase
        && phase != Phase::Tls
        && (msg.starts_with("SSL_read()") || msg.starts_with("SSL_write()"))
    {
        // The connection broke under TLS after the handshake: a close or
        // reset in that phase, not a TLS problem.
        return fail(if phase == Phase::ReadBody {
            Cause::ResponseIncomplete
        } else {
            Cause::ConnectionTerminated
        });
    }
    if let Some(phase) = phase {
        if msg.contains("timed out") {
            return fail(Cause::from_errno(libc::ETIMEDOUT, phase, unix));
        }
        if let Some(e) = errno {
            return fail(Cause::from_errno(e, phase, unix));
        }
    }
    match level {
        "error" | "crit" | "alert" | "emerg" => Kind::UNCLASSIFIED,
        _ => nginx_event(msg).map_or(Kind::Fine, Kind::Event),
    }
}

fn nginx_event(msg: &str) -> Option<Event> {
    Some(
        if msg.starts_with("reconfiguring") || msg.starts_with("signal process started") {
            Event::Reload
        } else if msg.starts_with("start worker process")
            && !msg.starts_with("start worker processes")
        {
            Event::WorkerStart
        } else if msg.starts_with("using the ") && msg.contains("event method") {
            Event::Start
        } else if msg.starts_with("gracefully shutting down") || msg.starts_with("exiting") {
            return None;
        } else if msg.contains("exited on signal") {
            Event::WorkerStart
        } else {
            return None;
        },
    )
}

/// A TLS failure from OpenSSL's or Go's wording (stable identifiers: alert
/// names and numbers, `wrong version number`, `certificate`).
fn tls_text(msg: &str) -> Option<Cause> {
    let m = msg.to_ascii_lowercase();
    Some(
        if m.contains("certificate verify")
            || m.contains("certificate does not match")
            || m.contains("x509")
            || m.contains("failed to verify certificate")
            || m.contains("certificate has expired")
            || m.contains("self signed")
            || m.contains("self-signed")
        {
            Cause::TlsCertificate
        } else if m.contains("alert number")
            || m.contains("remote error: tls")
            || m.contains("alert")
        {
            Cause::TlsAlert
        } else if m.contains("wrong version number")
            || m.contains("unknown protocol")
            || m.contains("packet length too long")
            || m.contains("record layer failure")
            || m.contains("does not look like a tls handshake")
            || m.contains("peer closed connection in ssl handshake")
            || m.contains("ssl_do_handshake")
            || m.contains("tls handshake")
        {
            Cause::TlsProtocol
        } else {
            return None;
        },
    )
}

/// What an invalid response's logged bytes show: an HTTP/2 SETTINGS frame
/// or a TLS record, escaped as nginx and Go print them.
fn sniffed(msg: &str) -> Option<Cause> {
    if msg.contains(r"\x00\x00") && (msg.contains(r"\x04") || msg.contains("PRI * HTTP/2")) {
        Some(Cause::UpstreamSpeaksHttp2)
    } else if msg.contains(r"\x15\x03") || msg.contains(r"\x16\x03") {
        Some(Cause::UpstreamSpeaksTls)
    } else {
        None
    }
}

// --------------------------------------------------------------- Apache

re!(
    APACHE,
    r"^\[\w{3} (\w{3}) +(\d{1,2}) (\d\d):(\d\d):(\d\d)(?:\.\d+)? (\d{4})\] \[(?:([\w.-]+):)?(\w+)\] (?:\[pid \d+(?::tid \d+)?\] )?(.*)$"
);
re!(APACHE_ERRNO, r"^\((\d+)\)[^:]*: ");
re!(AH, r"AH(\d{5}): (.*)$");
re!(
    APACHE_TARGET,
    r"(?:to|for|server|backend:?) \(?([\w.:\[\]*/-]+:\d+|unix:[^ )|]+)"
);

fn apache_error(line: &str) -> Option<Parsed> {
    let c = APACHE.captures(line)?;
    let n = |i: usize| c[i].parse::<i64>().unwrap_or(0);
    let time = epoch(n(6), month(&c[1])?, n(2), n(3), n(4), n(5));
    let module = c.get(7).map_or("", |m| m.as_str());
    let level = &c[8];
    let body = &c[9];
    let errno = APACHE_ERRNO
        .captures(body)
        .and_then(|c| c[1].parse::<i32>().ok());
    let (id, msg) = match AH.captures(body) {
        Some(a) => (Some(a[1].to_string()), a.get(2).map_or("", |m| m.as_str())),
        None => (None, body),
    };
    let kind = apache_kind(id.as_deref(), module, level, msg, errno);
    let mut p = Parsed::new(Source::Apache, time, kind);
    p.upstream = APACHE_TARGET.captures(msg).map(|c| c[1].to_string());
    if let Some(i) = msg.find("returned by /") {
        p.path = msg[i + 12..].split_whitespace().next().map(str::to_string);
    }
    p.marker = match (id, errno) {
        (Some(id), Some(e)) => Some(format!("AH{id} ({e})")),
        (Some(id), None) => Some(format!("AH{id}")),
        (None, Some(e)) => Some(format!("({e})")),
        _ => None,
    };
    Some(p)
}

/// APR status codes (70007 = APR_TIMEUP, 70014 = APR_EOF) onto errno.
fn apr_errno(e: i32) -> i32 {
    match e {
        70007 => libc::ETIMEDOUT,
        70014 => libc::ECONNRESET,
        e => e,
    }
}

fn apache_kind(id: Option<&str>, module: &str, level: &str, msg: &str, errno: Option<i32>) -> Kind {
    let weak = |c: Option<Cause>| Kind::Failure {
        cause: c,
        weak: true,
    };
    let timed_out = errno == Some(70007);
    let unix = msg.contains("Unix domain socket") || msg.contains("unix:");
    match id.unwrap_or("") {
        // error reading status line from remote server
        "01102" => fail(if timed_out {
            Cause::ResponseHeadTimeout
        } else {
            Cause::ConnectionTerminated
        }),
        // ap_proxyerror's line, "MESSAGE returned by URL": its message is
        // the cause ("DNS lookup failure for: HOST", "Corrupt status line
        // returned by remote server"), or the companion of AH01102 that
        // names the URL ("Error reading from remote server", "Timeout on
        // 100-Continue").
        "00898" if msg.contains("DNS lookup failure") => fail(Cause::DnsError),
        "00898" if msg.contains("Corrupt status line") => fail(Cause::ProtocolError),
        "00898" => weak(Some(if msg.contains("Timeout") {
            Cause::ResponseHeadTimeout
        } else {
            Cause::ConnectionTerminated
        })),
        // "header size is over the limit allowed by ResponseFieldSize"
        "10124" => fail(Cause::ResponseHeaderTooLarge),
        // attempt to connect to HOST (or a Unix socket) failed
        "00957" | "02454" => fail(Cause::from_errno(
            apr_errno(errno.unwrap_or(libc::ECONNREFUSED)),
            Phase::Connect,
            unix,
        )),
        // failed to make connection to backend (the companion of AH00957,
        // from mod_proxy_http, _fcgi, _ajp and the rest)
        "01114" | "01079" | "00896" => weak(None),
        _ if msg.starts_with("failed to make connection to backend") => weak(None),
        // "SSL Proxy connect failed": the handshake with the upstream; the
        // line that says why (AH02039's certificate) is more exact.
        "02004" => weak(Some(Cause::TlsProtocol)),
        "00959" => Kind::Event(Event::ServerDown),
        // the worker is in error state: every request gets 503 until `retry`
        "00940" => fail(Cause::NoHealthyServer),
        // balancer://NAME: All workers are in error state
        "01167" | "01170" => fail(Cause::NoHealthyServer),
        "01067" => fail(Cause::FastCgiNoResponse),
        "01075" => {
            if timed_out {
                fail(Cause::ResponseHeadTimeout)
            } else {
                weak(Some(Cause::FastCgiNoResponse))
            }
        }
        "01097" => fail(Cause::from_errno(
            apr_errno(errno.unwrap_or(libc::ECONNRESET)),
            Phase::WriteRequest,
            unix,
        )),
        // "bad HTTP/1.1 header returned by URL": ap_proxyerror's line
        // after the one that says why (AH10124), or alone.
        "01106" => weak(Some(Cause::ProtocolError)),
        "01107" | "02429" | "01104" => fail(Cause::ProtocolError),
        "01110" | "01111" => fail(Cause::ResponseIncomplete),
        "01071" if msg.contains("Primary script unknown") => fail(Cause::ScriptNotFound),
        "01071" => Kind::Event(Event::AppError),
        "00128" | "00132" => fail(Cause::FileNotFound),
        "01630" | "01797" | "00035" => fail(Cause::Forbidden),
        "00489" | "00163" => Kind::Event(Event::Start),
        "00493" | "00494" | "00497" => Kind::Event(Event::Reload),
        "00491" | "00492" => Kind::Event(Event::Stop),
        // "(502)Unknown error 502": an HTTP status where the errno goes,
        // the companion of the line that says why.
        _ if module.starts_with("proxy") && errno.is_some_and(|e| (134..1000).contains(&e)) => {
            weak(None)
        }
        _ if module.starts_with("proxy") && errno.is_some() => fail(Cause::from_errno(
            apr_errno(errno.unwrap_or(0)),
            Phase::ReadHead,
            unix,
        )),
        _ if msg.contains("SSL") || module == "ssl" => match tls_text(msg) {
            Some(c) if module.starts_with("proxy") || msg.contains("proxy") => fail(c),
            _ if matches!(level, "error" | "crit" | "alert" | "emerg") => Kind::UNCLASSIFIED,
            _ => Kind::Fine,
        },
        _ if matches!(level, "error" | "crit" | "alert" | "emerg") => Kind::UNCLASSIFIED,
        _ => Kind::Fine,
    }
}

// -------------------------------------------------------------- HAProxy

re!(
    HAPROXY,
    r#"(?:^|\s)\[?([\w.:\[\]-]+):(\d+)\]? \[(\d\d)/(\w{3})/(\d{4}):(\d\d):(\d\d):(\d\d)(?:\.\d+)?\] (\S+) ([^/\s]+)/(\S+) (-?\d+)/(-?\d+)/(-?\d+)/(-?\d+)/\+?(-?\d+) (-?\d+) \+?(\d+) \S+ \S+ ([A-Za-z-]{4}) .*?"(\S+)(?: (\S+))?"#
);
re!(
    HAPROXY_MSG,
    r"^(?:(?:<\d+>)?\w{3} +\d{1,2} \d\d:\d\d:\d\d \S+ haproxy\[\d+\]: )?((?:\[(?:WARNING|NOTICE|ALERT)\] +\(\d+\) : )?(?:(?:Health check for )?(?:backup )?[Ss]erver \S+ is (?:DOWN|UP)|backend \S+ has no server available|Proxy \S+ (?:started|stopped)|Stopping |Reexecuting ).*)$"
);
re!(HAPROXY_SERVER, r"[Ss]erver (\S+) is");
re!(
    ISO_TIME,
    r"(\d{4})-(\d\d)-(\d\d)[T ](\d\d):(\d\d):(\d\d)(?:[.,]\d+)?\s?(Z|[+-]\d\d:?\d\d)?"
);

fn haproxy(line: &str) -> Option<Parsed> {
    if let Some(c) = HAPROXY.captures(line) {
        let n = |i: usize| c[i].parse::<i64>().unwrap_or(0);
        let time = epoch(n(5), month(&c[4])?, n(3), n(6), n(7), n(8));
        let server = &c[11];
        let status = c[17].parse::<i32>().ok();
        let term = &c[19];
        let kind = haproxy_kind(term, server, status);
        let mut p = Parsed::new(Source::Haproxy, time, kind);
        p.status = status.and_then(|s| u16::try_from(s).ok());
        if server != "<NOSRV>" {
            p.upstream = Some(format!("{}/{}", &c[10], server));
        }
        p.path = c.get(21).map(|m| m.as_str().to_string());
        p.marker = Some(term.to_string());
        return Some(p);
    }
    // HAProxy's own messages, through syslog or raw on stdout.
    let c = HAPROXY_MSG.captures(line)?;
    let msg = &c[1];
    let kind = if msg.contains(" is DOWN") || msg.contains("has no server available") {
        Kind::Event(Event::ServerDown)
    } else if msg.contains(" is UP") {
        Kind::Event(Event::ServerUp)
    } else if msg.contains("started.") {
        Kind::Event(Event::Start)
    } else if msg.starts_with("Reexecuting") || msg.contains("reload") {
        Kind::Event(Event::Reload)
    } else if msg.contains("stopped") || msg.starts_with("Stopping") {
        Kind::Event(Event::Stop)
    } else {
        Kind::Fine
    };
    let mut p = Parsed::new(Source::Haproxy, syslog_time(line), kind);
    p.upstream = HAPROXY_SERVER.captures(msg).map(|c| c[1].to_string());
    Some(p)
}

/// HAProxy's termination state (doc/configuration.txt, "Session state at
/// disconnection"): who ended the session, and in which phase.
fn haproxy_kind(term: &str, server: &str, status: Option<i32>) -> Kind {
    let b = term.as_bytes();
    if server == "<NOSRV>" && status == Some(503) && b[1] != b'Q' {
        // No server to queue on or connect to: all down (`SC--`, `----`).
        return fail(Cause::NoHealthyServer);
    }
    let cause = match (b[0], b[1]) {
        (b'C' | b'c', _) => return Kind::Fine,
        (b'L', _) => return Kind::Fine,
        (b'S', b'C') => Some(Cause::ConnectionRefused),
        (b's', b'C') => Some(Cause::ConnectionTimeout),
        (b'S', b'H') => Some(Cause::ConnectionTerminated),
        (b's', b'H') => Some(Cause::ResponseHeadTimeout),
        (b'S', b'D' | b'L') => Some(Cause::ResponseIncomplete),
        (b's', b'D' | b'L') => Some(Cause::ResponseBodyTimeout),
        (b's' | b'S', b'Q') => Some(Cause::ConcurrencyLimit),
        (b'P', b'H' | b'D') => Some(Cause::ProtocolError),
        (b'R', _) => Some(Cause::ConnectError),
        (b'I', _) => Some(Cause::Internal),
        (b'D', _) => Some(Cause::NoHealthyServer),
        _ => None,
    };
    match (cause, status) {
        (Some(c), _) => fail(c),
        (None, Some(s)) if s >= 500 && b[0] == b'-' => Kind::AppAnswer,
        (None, Some(s)) if s >= 500 => Kind::UNCLASSIFIED,
        _ => Kind::Fine,
    }
}

// ---------------------------------------------------------------- Envoy

re!(
    ENVOY,
    r#"^\[(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.\d+)?Z?\] "(\S+) (\S+) [^"]*" (\d+) (\S+) \d+ \d+ \d+ \S+ "[^"]*" "[^"]*" "([^"]*)" "[^"]*" "([^"]*)""#
);
re!(
    ENVOY_APP,
    r"^\[(\d{4})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)\.\d+\]\[\d+\]\[(\w+)\]\[(\w+)\] (.*)$"
);

fn envoy(line: &str) -> Option<Parsed> {
    if let Some(c) = ENVOY.captures(line) {
        let n = |i: usize| c[i].parse::<i64>().unwrap_or(0);
        let time = epoch(n(1), n(2), n(3), n(4), n(5), n(6));
        let status = c[9].parse::<u16>().ok();
        let kind = envoy_kind(line, status);
        let mut p = Parsed::new(Source::Envoy, time, kind);
        p.status = status;
        p.path = Some(c[8].to_string());
        p.request_id = Some(c[11].to_string()).filter(|s| s != "-" && !s.is_empty());
        p.upstream = Some(c[12].to_string()).filter(|s| s != "-" && !s.is_empty());
        p.marker = Some(c[10].to_string());
        return Some(p);
    }
    let c = ENVOY_APP.captures(line)?;
    let n = |i: usize| c[i].parse::<i64>().unwrap_or(0);
    let time = epoch(n(1), n(2), n(3), n(4), n(5), n(6));
    let msg = &c[9];
    let kind = if msg.contains("starting main dispatch loop") {
        Kind::Event(Event::Start)
    } else if msg.contains("shutting down") {
        Kind::Event(Event::Stop)
    } else if let Some(c) = reset_reason(msg) {
        fail(c)
    } else if matches!(&c[7], "error" | "critical") {
        Kind::UNCLASSIFIED
    } else {
        Kind::Fine
    };
    Some(Parsed::new(Source::Envoy, time, kind))
}

/// An Envoy access line's reading from its flags and response code
/// details; with neither (`-`), a 5xx is the application's own.
fn envoy_kind(line: &str, status: Option<u16>) -> Kind {
    envoy_markers(line, status).map_or_else(
        || {
            if status.is_some_and(|s| s >= 500) {
                Kind::AppAnswer
            } else {
                Kind::Fine
            }
        },
        |(k, _)| k,
    )
}

/// Envoy's "upstream connect error or disconnect/reset before headers.
/// reset reason: ..." text, in bodies and logs.
fn reset_reason(msg: &str) -> Option<Cause> {
    let r = &msg[msg.find("reset reason: ")? + 14..];
    Some(if r.starts_with("connection timeout") {
        Cause::ConnectionTimeout
    } else if r.starts_with("remote connection failure") || r.starts_with("connection failure") {
        if msg.contains("TLS") || msg.contains("CERTIFICATE") {
            Cause::TlsCertificate
        } else {
            Cause::ConnectionRefused
        }
    } else if r.starts_with("connection termination") || r.starts_with("remote reset") {
        Cause::ConnectionTerminated
    } else if r.starts_with("overflow") {
        Cause::ConcurrencyLimit
    } else if r.starts_with("protocol error") {
        Cause::ProtocolError
    } else {
        Cause::ConnectionTerminated
    })
}

// ------------------------------------------------------ php-fpm, gunicorn

re!(
    FPM,
    r"^\[(\d\d)-(\w{3})-(\d{4}) (\d\d):(\d\d):(\d\d)(?:\.\d+)?\] (\w+): (?:\[pool ([^\]]+)\] )?(.*)$"
);

fn php_fpm(line: &str) -> Option<Parsed> {
    let c = FPM.captures(line)?;
    let n = |i: usize| c[i].parse::<i64>().unwrap_or(0);
    let time = epoch(n(3), month(&c[2])?, n(1), n(4), n(5), n(6));
    let level = &c[7];
    let msg = &c[9];
    let kind = if msg.contains("exited on signal") {
        // SIGTERM/SIGQUIT are FPM's own stops and reloads.
        if msg.contains("SIGTERM") || msg.contains("SIGQUIT") || msg.contains("(signal 15)") {
            Kind::Fine
        } else {
            fail(Cause::FastCgiNoResponse)
        }
    } else if msg.contains("execution timed out") {
        fail(Cause::FastCgiNoResponse)
    } else if msg.contains("max_children") || msg.contains("seems busy") {
        fail(Cause::UpstreamBusy)
    } else if msg.contains("PHP Fatal error") || msg.contains("PHP Parse error") {
        // A worker's stderr: the application failed, and answered 500 (its
        // stack trace's continuation lines are WARNINGs, and fine).
        Kind::AppAnswer
    } else if msg.contains("ready to handle connections") {
        // One line a start ("fpm is running, pid N" comes just before).
        Kind::Event(Event::Start)
    } else if msg.contains("Reloading in progress") {
        Kind::Event(Event::Reload)
    } else if msg.contains("exiting, bye-bye") {
        // One line a stop ("Terminating ..." comes just before).
        Kind::Event(Event::Stop)
    } else if matches!(level, "ERROR" | "ALERT" | "EMERGENCY") {
        Kind::UNCLASSIFIED
    } else {
        Kind::Fine
    };
    let mut p = Parsed::new(Source::PhpFpm, time, kind);
    p.upstream = c.get(8).map(|m| format!("pool {}", m.as_str()));
    if let Some(i) = msg.find("(request: \"") {
        p.path = msg[i + 11..]
            .split_whitespace()
            .nth(1)
            .map(|s| s.trim_end_matches(['"', ')']).to_string());
    }
    Some(p)
}

re!(
    GUNICORN,
    r"^\[(\d{4})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d) ([+-]\d{4})\] \[\d+\] \[(\w+)\] (.*)$"
);

fn gunicorn(line: &str) -> Option<Parsed> {
    let c = GUNICORN.captures(line)?;
    let n = |i: usize| c[i].parse::<i64>().unwrap_or(0);
    let time = epoch(n(1), n(2), n(3), n(4), n(5), n(6)).map(|t| t - offset(&c[7]));
    let msg = &c[9];
    // A killed worker drops its connection: the proxy sees a close, so
    // gunicorn's WORKER TIMEOUT shows up as a 502, not a 504.
    let kind = if msg.contains("WORKER TIMEOUT")
        || msg.contains("was sent SIGKILL")
        || msg.contains("was sent code 9")
    {
        fail(Cause::ConnectionTerminated)
    } else if msg.contains("Worker failed to boot") || msg.contains("App failed to load") {
        fail(Cause::ConnectionRefused)
    } else if msg.contains("Booting worker") {
        Kind::Event(Event::WorkerStart)
    } else if msg.contains("Handling signal: hup") {
        Kind::Event(Event::Reload)
    } else if msg.starts_with("Starting gunicorn") {
        Kind::Event(Event::Start)
    } else if msg.starts_with("Shutting down") {
        Kind::Event(Event::Stop)
    } else if msg.starts_with("Error handling request") || msg.starts_with("Exception in worker") {
        Kind::Event(Event::AppError)
    } else if matches!(&c[8], "ERROR" | "CRITICAL") {
        Kind::UNCLASSIFIED
    } else {
        Kind::Fine
    };
    Some(Parsed::new(Source::Gunicorn, time, kind))
}

// -------------------------------------------------------------- Traefik

re!(
    TRAEFIK_LOGRUS,
    r#"^time="([^"]+)" level=(\w+) msg="((?:[^"\\]|\\.)*)""#
);
re!(
    TRAEFIK_ZEROLOG,
    r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\S*) (TRC|DBG|INF|WRN|ERR|FTL) (.*)$"
);

fn traefik_text(line: &str) -> Option<Parsed> {
    let (time, level, msg) = if let Some(c) = TRAEFIK_LOGRUS.captures(line) {
        (
            iso_time(&c[1]),
            c[2].to_string(),
            // The fields after msg (error="...") say why as often as msg.
            format!("{} {}", &c[3], &line[c.get(0).map_or(0, |m| m.end())..]).replace("\\\"", "\""),
        )
    } else if let Some(c) = TRAEFIK_ZEROLOG.captures(line) {
        (iso_time(&c[1]), c[2].to_ascii_lowercase(), c[3].to_string())
    } else {
        return None;
    };
    let kind = traefik_kind(&level, &msg);
    Some(Parsed::new(Source::Traefik, time, kind))
}

fn traefik_kind(level: &str, msg: &str) -> Kind {
    if let Some(c) = go_error(msg) {
        // Traefik logs its proxy errors ("'502 Bad Gateway' caused by: ...",
        // "502 Bad Gateway error=...") at debug level.
        return fail(c);
    }
    if msg.contains("Configuration loaded") || msg.contains("configuration received") {
        Kind::Event(Event::Reload)
    } else if msg.contains("Starting provider") || msg.contains("Traefik version") {
        Kind::Event(Event::Start)
    } else if matches!(level, "error" | "err" | "fatal" | "ftl") {
        Kind::UNCLASSIFIED
    } else {
        Kind::Fine
    }
}

/// A Go net/http, net or crypto/tls error (Caddy, Traefik, any Go proxy),
/// by its stable parts.
pub fn go_error(msg: &str) -> Option<Cause> {
    let m = msg;
    Some(
        if m.contains("no such host") || m.contains("ENOTFOUND") || m.contains("EAI_NONAME") {
            Cause::DnsError
        } else if m.contains("EAI_AGAIN") {
            // Node's getaddrinfo: the resolver did not answer.
            Cause::DnsTimeout
        } else if m.contains("lookup ") && (m.contains("i/o timeout") || m.contains("timeout")) {
            Cause::DnsTimeout
        } else if m.contains("lookup ") && m.contains("server misbehaving") {
            Cause::DnsError
        } else if m.contains("dial unix") && m.contains("no such file or directory") {
            Cause::SocketNotFound
        } else if m.contains("dial unix") && m.contains("permission denied") {
            Cause::SocketPermission
        } else if m.contains("resource temporarily unavailable") {
            Cause::UpstreamBusy
        } else if m.contains("connection refused") {
            Cause::ConnectionRefused
        } else if m.contains("dial tcp") && m.contains("timeout") {
            Cause::ConnectionTimeout
        } else if m.contains("no route to host")
            || m.contains("network is unreachable")
            || m.contains("cannot assign requested address")
        {
            Cause::ConnectError
        } else if m.contains("timeout awaiting response headers") {
            Cause::ResponseHeadTimeout
        } else if m.contains("response headers exceeded") || m.contains("header too large") {
            Cause::ResponseHeaderTooLarge
        } else if m.contains("malformed HTTP") {
            sniffed(m).unwrap_or(Cause::ProtocolError)
        } else if m.contains("x509:") || m.contains("tls:") || m.contains("remote error") {
            tls_text(m).unwrap_or(Cause::TlsProtocol)
        } else if m.contains("no upstreams available") || m.contains("no available server") {
            Cause::NoHealthyServer
        } else if m.contains("unexpected EOF") && m.contains("body") {
            Cause::ResponseIncomplete
        } else if m.contains("connection reset by peer")
            || m.contains("broken pipe")
            || m.contains("EOF")
            || m.contains("server closed idle connection")
            || m.contains("transport connection broken")
        {
            Cause::ConnectionTerminated
        } else if m.contains("context deadline exceeded") {
            Cause::ResponseHeadTimeout
        } else {
            reset_reason(m)?
        },
    )
}

// ----------------------------------------------------------- JSON lines

fn json_line(v: &Value) -> Option<Parsed> {
    let s = |k: &str| v.get(k).and_then(Value::as_str);
    let num = |k: &str| {
        v.get(k)
            .and_then(Value::as_u64)
            .and_then(|n| u16::try_from(n).ok())
    };
    // baton's failure record and JSON access log.
    if s("proxy_status").is_some() && v.get("attempt").is_some() {
        let mut p = Parsed::failure(
            Source::Baton,
            s("time").and_then(iso_time),
            s("cause").and_then(Cause::from_id),
        );
        p.status = num("status");
        p.upstream = s("server").or(s("upstream")).map(str::to_string);
        p.path = s("path").map(str::to_string);
        p.request_id = s("request_id").map(str::to_string);
        p.marker = s("details").map(str::to_string);
        return Some(p);
    }
    if v.get("attempts").is_some() && v.get("request_id").is_some() {
        let status = num("status");
        let cause = s("cause").and_then(Cause::from_id);
        let kind = match (status, cause) {
            (_, Some(c)) => Kind::Failure {
                cause: Some(c),
                weak: true,
            },
            (Some(s), None) if s >= 500 => Kind::AppAnswer,
            _ => Kind::Fine,
        };
        let mut p = Parsed::new(Source::Baton, s("time").and_then(iso_time), kind);
        p.status = status;
        p.upstream = s("server").or(s("upstream")).map(str::to_string);
        p.path = s("path").map(str::to_string);
        p.request_id = s("request_id").map(str::to_string);
        return Some(p);
    }
    // baton's own events (tracing JSON).
    if v.get("target")
        .and_then(Value::as_str)
        .is_some_and(|t| t.starts_with("baton"))
    {
        // `{"time","level","msg","target",...}`; before 2026-12 tracing's
        // own shape, `{"timestamp","fields":{"message",...},"target"}`.
        let field = |k: &str| {
            v.get(k)
                .or_else(|| v.pointer(&format!("/fields/{k}")))
                .and_then(Value::as_str)
        };
        let msg = s("msg").or_else(|| field("message")).unwrap_or("");
        let kind = if msg == "config reloaded" {
            Kind::Event(Event::Reload)
        } else if msg == "baton serving" {
            Kind::Event(Event::Start)
        } else if msg.starts_with("shutting down") {
            Kind::Event(Event::Stop)
        } else if msg == "backend started" {
            Kind::Event(Event::WorkerStart)
        } else if msg.starts_with("backend exited")
            || msg.contains("crash loop")
            || msg.starts_with("health check: server down")
            || msg == "server ejected"
        {
            Kind::Event(Event::ServerDown)
        } else if msg.starts_with("health check: server up") {
            Kind::Event(Event::ServerUp)
        } else {
            Kind::Fine
        };
        let time = s("time").or_else(|| s("timestamp")).and_then(iso_time);
        let mut p = Parsed::new(Source::Baton, time, kind);
        p.upstream = field("upstream").map(str::to_string);
        return Some(p);
    }
    // Caddy: {"level","ts","logger","msg",...}.
    if let Some(logger) = s("logger").filter(|l| l.starts_with("http") || l.starts_with("tls")) {
        let time = v.get("ts").and_then(|t| {
            t.as_f64()
                .map(|f| f as i64)
                .or_else(|| t.as_str().and_then(iso_time))
        });
        let status = num("status");
        let msg = s("msg").unwrap_or("");
        let err = s("error").unwrap_or(msg);
        let kind = if logger.starts_with("http.log.access") {
            match status {
                Some(x) if x >= 500 => Kind::Failure {
                    cause: None,
                    weak: true,
                },
                _ => Kind::Fine,
            }
        } else if msg == "aborting with incomplete response" {
            Kind::Failure {
                cause: Some(Cause::ResponseIncomplete),
                weak: false,
            }
        } else if s("level").is_some_and(|l| l == "error") {
            // http.log.error is the one line per failed request; the
            // reverse_proxy handler's own line about it is its companion.
            Kind::Failure {
                cause: go_error(err),
                weak: logger.starts_with("http.handlers"),
            }
        } else if msg.contains("server running") || msg.contains("serving initial configuration") {
            Kind::Event(Event::Start)
        } else if msg.contains("load complete") {
            Kind::Event(Event::Reload)
        } else {
            Kind::Fine
        };
        let mut p = Parsed::new(Source::Caddy, time, kind);
        p.status = status;
        p.upstream = s("upstream").map(str::to_string);
        p.path = v
            .pointer("/request/uri")
            .and_then(Value::as_str)
            .map(str::to_string);
        p.request_id = v
            .pointer("/request/headers/X-Request-Id/0")
            .and_then(Value::as_str)
            .map(str::to_string);
        p.marker = Some(err.to_string()).filter(|e| !e.is_empty());
        return Some(p);
    }
    // Traefik's JSON access log.
    if let Some(down) = num("DownstreamStatus") {
        let origin = num("OriginStatus").unwrap_or(0);
        let kind = if down >= 500 {
            // Traefik reports its own 502s as OriginStatus too (traefik
            // #13609), so the app's log line, when there is one, decides.
            Kind::Failure {
                cause: None,
                weak: true,
            }
        } else {
            Kind::Fine
        };
        let mut p = Parsed::new(
            Source::Traefik,
            s("StartUTC").or(s("time")).and_then(iso_time),
            kind,
        );
        p.status = Some(down);
        p.upstream = s("ServiceURL").or(s("ServiceAddr")).map(str::to_string);
        p.path = s("RequestPath").map(str::to_string);
        p.request_id = s("request_X-Request-Id").map(str::to_string);
        p.marker = Some(format!("OriginStatus {origin}"));
        return Some(p);
    }
    // Traefik's JSON log: {"level","error","time","message"}.
    if s("level").is_some() && (s("message").is_some() || s("msg").is_some()) {
        let msg = format!(
            "{} {}",
            s("message").or(s("msg")).unwrap_or(""),
            s("error").unwrap_or("")
        );
        let kind = traefik_kind(s("level").unwrap_or(""), &msg);
        return Some(Parsed::new(
            Source::Traefik,
            s("time").and_then(iso_time),
            kind,
        ));
    }
    // Envoy's JSON access log (field names as in its docs' examples).
    if let Some(flags) = s("response_flags") {
        let status = num("response_code");
        let mut p = Parsed::new(
            Source::Envoy,
            s("start_time").and_then(iso_time),
            envoy_kind(&v.to_string(), status),
        );
        p.status = status;
        p.upstream = s("upstream_host").map(str::to_string);
        p.path = s("path").map(str::to_string);
        p.request_id = s("x_request_id").or(s("request_id")).map(str::to_string);
        p.marker = Some(flags.to_string());
        return Some(p);
    }
    // Envoy's JSON access log with its own key names: its markers in any
    // value.
    let text = v.to_string();
    if let Some(p) = haproxy_anywhere(&text) {
        return Some(p);
    }
    let status = any_status(&text);
    let (kind, marker) = envoy_markers(&text, status)?;
    let mut p = Parsed::new(Source::Envoy, any_time(&text), kind);
    p.status = status;
    p.path = any_path(&text);
    p.upstream = UPSTREAM_ADDR.captures(&text).map(|u| u[1].to_string());
    p.marker = Some(marker);
    Some(p)
}

// ------------------------------------------- markers anywhere in a line

/// The whitespace-, quote- and bracket-separated words of a line.
fn words(line: &str) -> impl Iterator<Item = &str> {
    line.split(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '[' | ']' | '|' | ';' | '='))
        .filter(|w| !w.is_empty())
}

/// A line's time, wherever it sits: RFC 3339, or the access-log
/// `[10/Oct/2026:13:55:36(.123)( +0000)]` form.
fn any_time(line: &str) -> Option<i64> {
    iso_time(line).or_else(|| {
        let c = CLF_TIME.captures(line)?;
        let n = |i: usize| c[i].parse::<i64>().unwrap_or(0);
        epoch(n(3), month(&c[2])?, n(1), n(4), n(5), n(6))
            .map(|t| t - c.get(7).map_or(0, |o| offset(o.as_str())))
    })
}

re!(
    CLF_TIME,
    r"(\d\d)/(\w{3})/(\d{4}):(\d\d):(\d\d):(\d\d)(?:\.\d+)?(?: ([+-]\d{4}))?"
);
re!(
    REQUEST_LINE,
    r#"\b(GET|HEAD|POST|PUT|DELETE|PATCH|OPTIONS|CONNECT|TRACE|PROPFIND) (\S+) HTTP/\d(?:\.\d)?"#
);
re!(
    KEYED_STATUS,
    r#"(?i)\b(?:status|status_code|response_code|code|downstreamstatus|st)["']?\s*[=:]\s*["']?(\d{3})\b"#
);
re!(
    KEYED_PATH,
    r#"(?i)\b(?:uri|path|request_uri|url)["']?\s*[=:]\s*["']?(/[^\s"',]*)"#
);

/// A response status in a line of unknown layout: a `status=`-style key,
/// else the first bare three-digit word after the request line.
fn any_status(line: &str) -> Option<u16> {
    if let Some(c) = KEYED_STATUS.captures(line) {
        return c[1].parse().ok();
    }
    let bare = |w: &str| {
        (w.len() == 3 && w.bytes().all(|b| b.is_ascii_digit()))
            .then(|| w.parse::<u16>().ok())
            .flatten()
            .filter(|s| (100..600).contains(s))
    };
    // The bare three-digit word nearest the request line: right after it
    // in the common log format, right before it where a custom format puts
    // the status first.
    let Some(m) = REQUEST_LINE.find(line) else {
        return words(line).find_map(bare);
    };
    let after = words(&line[m.end()..]).position(|w| bare(w).is_some());
    let before = words(&line[..m.start()])
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .position(|w| bare(w).is_some());
    let pick_after = match (after, before) {
        (Some(a), Some(b)) => a <= b,
        (a, _) => a.is_some(),
    };
    if pick_after {
        words(&line[m.end()..]).find_map(bare)
    } else {
        words(&line[..m.start()]).filter_map(bare).last()
    }
}

fn any_path(line: &str) -> Option<String> {
    REQUEST_LINE
        .captures(line)
        .map(|c| c[2].to_string())
        .or_else(|| KEYED_PATH.captures(line).map(|c| c[1].to_string()))
}

/// Envoy's response flags, short (`UF,URX`) and long
/// (`UpstreamConnectionFailure`) forms (docs: access logging,
/// %RESPONSE_FLAGS% and %RESPONSE_FLAGS_LONG%).
fn envoy_flag(f: &str) -> Option<Option<Cause>> {
    Some(match f {
        "UF" | "UpstreamConnectionFailure" => Some(Cause::ConnectionRefused),
        "URX" | "UpstreamRetryLimitExceeded" => None,
        "UO" | "UpstreamOverflow" => Some(Cause::ConcurrencyLimit),
        "NR" | "NoRouteFound" | "NC" | "NoClusterFound" => Some(Cause::NoRoute),
        "UH" | "NoHealthyUpstream" => Some(Cause::NoHealthyServer),
        "UT" | "UpstreamRequestTimeout" => Some(Cause::ResponseHeadTimeout),
        "UC" | "UpstreamConnectionTermination" | "UR" | "UpstreamRemoteReset" => {
            Some(Cause::ConnectionTerminated)
        }
        "UPE" | "UpstreamProtocolError" => Some(Cause::ProtocolError),
        "RL" | "RateLimited" => Some(Cause::RateLimited),
        "SI" | "StreamIdleTimeout" | "UMSDR" | "UpstreamMaxStreamDurationReached" => {
            Some(Cause::ResponseBodyTimeout)
        }
        "DF" | "DnsResolutionFailed" => Some(Cause::DnsError),
        // Client-side and local flags: not an upstream failure.
        "DC"
        | "DownstreamConnectionTermination"
        | "LR"
        | "LocalReset"
        | "DI"
        | "DelayInjected"
        | "FI"
        | "FaultInjected"
        | "LH"
        | "FailedLocalHealthCheck"
        | "DPE"
        | "DownstreamProtocolError"
        | "IH"
        | "InvalidEnvoyRequestHeaders"
        | "RLSE"
        | "RateLimitServiceError"
        | "UAEX"
        | "UnauthorizedExternalService"
        | "DT"
        | "DurationTimeout"
        | "OM"
        | "OverloadManagerTerminated"
        | "DO"
        | "DropOverload"
        | "UDO"
        | "UpstreamDropOverload"
        | "RFCF"
        | "ResponseFromCacheFilter"
        | "NFCF"
        | "NoFilterConfigFound" => None,
        _ => return None,
    })
}

/// A word that is an Envoy flag list: every comma-separated part a flag.
fn envoy_flags(w: &str) -> Option<Vec<Option<Cause>>> {
    let w = w.trim_matches(|c: char| c == ',' || c == ':');
    if w.is_empty() || w == "-" {
        return None;
    }
    w.split(',').map(envoy_flag).collect()
}

re!(
    ENVOY_DETAILS,
    r"\b(upstream_reset_before_response_started|upstream_reset_after_response_started)\{([^}]*)\}|\b(no_healthy_upstream|upstream_response_timeout|upstream_per_try_timeout|upstream_per_try_idle_timeout|route_not_found|cluster_not_found|upstream_max_stream_duration_reached|stream_idle_timeout|request_overall_timeout|via_upstream|maintenance_mode|response_payload_too_large|request_payload_too_large|downstream_remote_disconnect|downstream_local_disconnect|request_rate_limited|overload_manager|direct_response|upstream_response_headers_too_large|dns_resolution_failure)\b"
);

/// Envoy's response code details (%RESPONSE_CODE_DETAILS%): the most
/// specific word Envoy has on a failure. `Err(())` for details that are
/// no upstream failure (via_upstream, a client disconnect).
fn envoy_details(line: &str) -> Option<Result<Cause, ()>> {
    let c = ENVOY_DETAILS.captures(line)?;
    if let Some(reason) = c.get(2) {
        let r = reason.as_str().to_ascii_lowercase();
        let after = c
            .get(1)
            .is_some_and(|m| m.as_str().ends_with("after_response_started"));
        return Some(Ok(if after {
            Cause::ResponseIncomplete
        } else if r.contains("certificate") || r.contains("tls_error") && r.contains("verify") {
            Cause::TlsCertificate
        } else if r.contains("tls_error") || r.contains("ssl") {
            Cause::TlsProtocol
        } else if r.contains("connection_timeout") {
            Cause::ConnectionTimeout
        } else if r.contains("connection_failure") || r.contains("connect_error") {
            Cause::ConnectionRefused
        } else if r.contains("overflow") {
            Cause::ConcurrencyLimit
        } else if r.contains("protocol_error") {
            Cause::ProtocolError
        } else {
            // remote_reset, connection_termination, local_reset
            Cause::ConnectionTerminated
        }));
    }
    Some(match &c[3] {
        "no_healthy_upstream" | "maintenance_mode" => Ok(Cause::NoHealthyServer),
        "upstream_response_timeout" | "upstream_per_try_timeout" | "request_overall_timeout" => {
            Ok(Cause::ResponseHeadTimeout)
        }
        "upstream_per_try_idle_timeout"
        | "stream_idle_timeout"
        | "upstream_max_stream_duration_reached" => Ok(Cause::ResponseBodyTimeout),
        "route_not_found" | "cluster_not_found" => Ok(Cause::NoRoute),
        "request_payload_too_large" => Ok(Cause::BodyTooLarge),
        "request_rate_limited" => Ok(Cause::RateLimited),
        "upstream_response_headers_too_large" => Ok(Cause::ResponseHeaderTooLarge),
        "dns_resolution_failure" => Ok(Cause::DnsError),
        _ => Err(()),
    })
}

/// What Envoy's markers say, and the marker: the response code details
/// where they name a cause, else the flags.
fn envoy_markers(line: &str, status: Option<u16>) -> Option<(Kind, String)> {
    let details = envoy_details(line);
    let flags: Option<(&str, Vec<Option<Cause>>)> =
        words(line).find_map(|w| envoy_flags(w).map(|f| (w, f)));
    if details.is_none() && flags.is_none() {
        return None;
    }
    let from_flags = flags
        .as_ref()
        .and_then(|(_, f)| f.iter().flatten().next().copied());
    let dns = flags.as_ref().is_some_and(|(w, _)| {
        w.split(',')
            .any(|f| f == "DF" || f == "DnsResolutionFailed")
    });
    let cause = match details {
        // A DNS failure shows as a connection failure in the details.
        _ if dns => Some(Cause::DnsError),
        Some(Ok(c)) => Some(c),
        Some(Err(())) => None,
        None => from_flags,
    };
    let marker = ENVOY_DETAILS
        .find(line)
        .map(|m| m.as_str().to_string())
        .or_else(|| flags.map(|(w, _)| w.to_string()))
        .unwrap_or_default();
    let kind = match cause {
        Some(c) => fail(c),
        None if status.is_some_and(|s| s >= 500) && details.is_some() => Kind::AppAnswer,
        None if status.is_some_and(|s| s >= 500) => Kind::UNCLASSIFIED,
        None => Kind::Fine,
    };
    Some((kind, marker))
}

/// An Envoy access line in a custom format: its flags or response code
/// details wherever they sit. Needs a request line or a status beside them,
/// so a word like `UT` in free text is not read as a flag.
fn envoy_anywhere(line: &str) -> Option<Parsed> {
    let status = any_status(line);
    let path = any_path(line);
    if status.is_none() && path.is_none() {
        return None;
    }
    let (kind, marker) = envoy_markers(line, status)?;
    let mut p = Parsed::new(Source::Envoy, any_time(line), kind);
    p.status = status;
    p.path = path;
    p.upstream = UPSTREAM_ADDR.captures(line).map(|u| u[1].to_string());
    p.marker = Some(marker);
    Some(p)
}

re!(
    HAPROXY_TERM,
    r"^[CSPLRIDUKcs-][RQCHDLT-][NIDVEO-][NPRUVD-]$"
);

/// An HAProxy log line in a custom `log-format`: its termination state
/// (`%tsc`) and `backend/server` (`%b/%s`) wherever they sit.
fn haproxy_anywhere(line: &str) -> Option<Parsed> {
    let term = words(line).find(|w| HAPROXY_TERM.is_match(w))?;
    let keyed = words(line).any(|w| matches!(w, "termination_state" | "tsc"));
    let named = words(line).find_map(|w| {
        let (b, s) = w.split_once('/')?;
        let name = |x: &str| {
            !x.is_empty()
                && x.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.' | b':'))
        };
        (name(b) && !b.starts_with("HTTP") && (name(s) || s == "<NOSRV>") && !s.contains('/'))
            .then_some((b, s))
    });
    let (backend, server) = match named {
        Some(n) => n,
        None if keyed => ("", ""),
        None => return None,
    };
    let status = any_status(line);
    let kind = haproxy_kind(term, server, status.map(i32::from));
    let mut p = Parsed::new(Source::Haproxy, any_time(line), kind);
    p.status = status;
    if !matches!(server, "<NOSRV>" | "") {
        p.upstream = Some(format!("{backend}/{server}"));
    }
    p.path = any_path(line);
    p.marker = Some(term.to_string());
    Some(p)
}

/// An access line in a custom layout (`time=... status=502 uri=/x`, the
/// time or status first): a request line or path, and a status.
fn access_anywhere(line: &str, hint: Source) -> Option<Parsed> {
    // A request line with a status near it, or both keyed: a bare number
    // next to a `url:` in free text is no access line.
    let (path, status) = match REQUEST_LINE.captures(line) {
        Some(c) => (c[2].to_string(), any_status(line)?),
        None => (
            KEYED_PATH.captures(line)?[1].to_string(),
            KEYED_STATUS.captures(line)?[1].parse().ok()?,
        ),
    };
    let kind = if status >= 500 {
        Kind::Failure {
            cause: None,
            weak: true,
        }
    } else {
        Kind::Fine
    };
    let mut p = Parsed::new(hint, any_time(line), kind);
    p.status = Some(status);
    p.path = Some(path);
    p.upstream = UPSTREAM_ADDR.captures(line).map(|u| u[1].to_string());
    Some(p)
}

// ---------------------------------------------------- Caddy's console

re!(
    CADDY_CONSOLE,
    r"^(\d{4})/(\d\d)/(\d\d) (\d\d):(\d\d):(\d\d)(?:\.\d+)?\t([A-Z]+)\t(\S+)\t([^\t]*)(?:\t(\{.*\}))?$"
);

/// Caddy's `format console` (zap's console encoder): time, level, logger
/// and message between tabs, then the same fields as its JSON. Read as
/// the JSON line it stands for.
fn caddy_console(line: &str) -> Option<Parsed> {
    let c = CADDY_CONSOLE.captures(line)?;
    let mut v: Value = c
        .get(10)
        .and_then(|j| serde_json::from_str(j.as_str()).ok())
        .unwrap_or_else(|| Value::Object(Default::default()));
    let o = v.as_object_mut()?;
    let time = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &c[1], &c[2], &c[3], &c[4], &c[5], &c[6]
    );
    o.insert("ts".into(), Value::String(time));
    o.insert("level".into(), Value::String(c[7].to_ascii_lowercase()));
    o.insert("logger".into(), Value::String(c[8].to_string()));
    o.insert("msg".into(), Value::String(c[9].to_string()));
    json_line(&v)
}

// ---------------------------------------------------- Kubernetes (klog)

re!(
    KLOG,
    r"^([IWEF])(\d\d)(\d\d) (\d\d):(\d\d):(\d\d)\.\d+\s+\d+ [\w./-]+:\d+\] (.*)$"
);
re!(KLOG_SERVICE, r#"Service "([^"]+)""#);

/// A Kubernetes component's line (klog): ingress-nginx's controller says
/// here what its nginx cannot, a Service with no ready endpoint.
fn klog(line: &str) -> Option<Parsed> {
    let c = KLOG.captures(line)?;
    let n = |i: usize| c[i].parse::<i64>().unwrap_or(0);
    // klog lines carry no year.
    let year = crate::core::clock::now()[..4].parse().unwrap_or(1970);
    let time = epoch(year, n(2), n(3), n(4), n(5), n(6));
    let msg = &c[7];
    let kind = if msg.contains("does not have any active Endpoint")
        || msg.contains("Error obtaining Endpoints for Service")
        || msg.contains("no endpoints")
    {
        fail(Cause::NoHealthyServer)
    } else if msg.contains("Backend successfully reloaded") {
        Kind::Event(Event::Reload)
    } else if msg.contains("Starting NGINX Ingress controller") {
        Kind::Event(Event::Start)
    } else if msg.contains("Shutting down controller") || msg.contains("Received SIGTERM") {
        Kind::Event(Event::Stop)
    } else if matches!(&c[1], "E" | "F") {
        Kind::UNCLASSIFIED
    } else {
        Kind::Fine
    };
    let mut p = Parsed::new(Source::Nginx, time, kind);
    p.upstream = KLOG_SERVICE.captures(msg).map(|s| s[1].to_string());
    Some(p)
}

// ------------------------------------------------ access logs, fallback

re!(
    ACCESS,
    r#"^(\S+) \S+ \S+ \[(\d\d)/(\w{3})/(\d{4}):(\d\d):(\d\d):(\d\d)(?: ([+-]\d{4}))?\] "(?:(\S+) (\S+)[^"]*|[^"]*)" (\d{3}) (\S+)(.*)$"#
);
re!(
    TRAEFIK_CLF_TAIL,
    r#"^ "[^"]*" "[^"]*" \d+ "([^"]*)" "([^"]*)" \d+ms"#
);
re!(
    UPSTREAM_ADDR,
    r"(?:^|\s)((?:\d{1,3}\.){3}\d{1,3}:\d+|\[[0-9a-f:]+\]:\d+|unix:\S+)"
);

/// The common and combined formats (nginx, Apache, baton, Traefik's CLF
/// with its router and service appended).
fn access(line: &str, hint: Source) -> Option<Parsed> {
    let c = ACCESS.captures(line)?;
    let n = |i: usize| c[i].parse::<i64>().unwrap_or(0);
    let time = epoch(n(4), month(&c[3])?, n(2), n(5), n(6), n(7))
        .map(|t| t - c.get(8).map_or(0, |o| offset(o.as_str())));
    let status = c[11].parse::<u16>().ok();
    let tail = c.get(13).map_or("", |m| m.as_str());
    let traefik = TRAEFIK_CLF_TAIL.captures(tail);
    let source = if traefik.is_some() {
        Source::Traefik
    } else {
        hint
    };
    let kind = match status {
        Some(s) if s >= 500 => Kind::Failure {
            cause: None,
            weak: true,
        },
        _ => Kind::Fine,
    };
    let mut p = Parsed::new(source, time, kind);
    p.status = status;
    p.path = c.get(10).map(|m| m.as_str().to_string());
    p.upstream = match traefik {
        Some(t) => Some(t[2].to_string()),
        // ingress-nginx and many custom formats append $upstream_addr.
        None => UPSTREAM_ADDR.captures(tail).map(|u| u[1].to_string()),
    };
    Some(p)
}

re!(OS_ERROR, r"os error (\d+)");
re!(PY_ERRNO, r"\[Errno (\d+)\]");
re!(
    CONNECTING,
    r"connecting|connect\(|connect:|connect to|\bdial"
);
re!(
    OOM,
    r"Out of memory: Killed process \d+ \(([^)]+)\)|oom-kill:.*task=([^,\s]+)"
);

/// A line in no known format: still classified when it carries a known
/// failure (a Go or Rust proxy's error, nginx-style wording in another
/// product's log). `None` when it does not.
fn other(line: &str) -> Option<Parsed> {
    let time = iso_time(line);
    if let Some(c) = OOM.captures(line) {
        // The kernel's OOM killer: the usual reason a worker vanished.
        let mut p = Parsed::new(
            Source::Kernel,
            time.or_else(|| syslog_time(line)),
            Kind::Event(Event::OomKill),
        );
        p.upstream = c.get(1).or(c.get(2)).map(|m| m.as_str().to_string());
        return Some(p);
    }
    let cause = go_error(line).or_else(|| {
        let l = line.to_ascii_lowercase();
        let errno = OS_ERROR
            .captures(line)
            .or_else(|| ERRNO.captures(line))
            .or_else(|| PY_ERRNO.captures(line))
            .and_then(|c| c[1].parse::<i32>().ok())
            .or_else(|| errno_name(line))
            .or_else(|| {
                // Java's and .NET's "Connection refused", any runtime's
                // "Connection reset by peer", without a number.
                if l.contains("connection refused") {
                    Some(libc::ECONNREFUSED)
                } else if l.contains("connection reset by peer") {
                    Some(libc::ECONNRESET)
                } else {
                    None
                }
            })?;
        // A refusal only ever answers a connect.
        let phase = if CONNECTING.is_match(&l) || errno == libc::ECONNREFUSED {
            Phase::Connect
        } else if l.contains("body") {
            Phase::ReadBody
        } else if l.contains("write") || l.contains("send") {
            Phase::WriteRequest
        } else {
            Phase::ReadHead
        };
        Some(Cause::from_errno(errno, phase, l.contains("unix")))
    })?;
    let mut p = Parsed::failure(Source::Other, time, Some(cause));
    p.upstream = UPSTREAM_ADDR.captures(line).map(|u| u[1].to_string());
    Some(p)
}

re!(
    ERRNO_NAME,
    r"\b(ECONNREFUSED|ECONNRESET|ETIMEDOUT|EHOSTUNREACH|ENETUNREACH|EPIPE|ECONNABORTED|EADDRNOTAVAIL|EAGAIN|ENOENT|EACCES)\b"
);

/// A symbolic errno (Node's `code=ECONNRESET`, Python's `[Errno
/// ECONNREFUSED]`) as its number.
fn errno_name(line: &str) -> Option<i32> {
    Some(match &ERRNO_NAME.captures(line)?[1] {
        "ECONNREFUSED" => libc::ECONNREFUSED,
        "ECONNRESET" | "ECONNABORTED" => libc::ECONNRESET,
        "ETIMEDOUT" => libc::ETIMEDOUT,
        "EHOSTUNREACH" => libc::EHOSTUNREACH,
        "ENETUNREACH" => libc::ENETUNREACH,
        "EPIPE" => libc::EPIPE,
        "EADDRNOTAVAIL" => libc::EADDRNOTAVAIL,
        "EAGAIN" => libc::EAGAIN,
        "ENOENT" => libc::ENOENT,
        "EACCES" => libc::EACCES,
        _ => return None,
    })
}

// ----------------------------------------------------------------- time

fn month(m: &str) -> Option<i64> {
    const M: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    M.iter().position(|x| *x == m).map(|i| i as i64 + 1)
}

/// `+0100` or `+01:00` in seconds.
fn offset(o: &str) -> i64 {
    let d: String = o.chars().filter(char::is_ascii_digit).collect();
    let v = d.parse::<i64>().unwrap_or(0);
    let secs = (v / 100) * 3600 + (v % 100) * 60;
    if o.starts_with('-') { -secs } else { secs }
}

/// RFC 3339 / ISO 8601 anywhere in `s`, to Unix seconds.
pub fn iso_time(s: &str) -> Option<i64> {
    let c = ISO_TIME.captures(s)?;
    let n = |i: usize| c[i].parse::<i64>().unwrap_or(0);
    let t = epoch(n(1), n(2), n(3), n(4), n(5), n(6))?;
    Some(match c.get(7).map(|m| m.as_str()) {
        Some("Z") | None => t,
        Some(o) => t - offset(o),
    })
}

/// Unix seconds of a civil UTC time (Howard Hinnant's days_from_civil; by
/// hand for the same reason as `log::civil`).
pub fn epoch(y: i64, m: i64, d: i64, h: i64, mi: i64, s: i64) -> Option<i64> {
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + s)
}

re!(
    SYSLOG,
    r"^(?:<\d+>)?(\w{3}) +(\d{1,2}) (\d\d):(\d\d):(\d\d) "
);

/// A syslog line's time (`Nov 20 10:02:07`), in this year: syslog lines
/// carry none.
fn syslog_time(line: &str) -> Option<i64> {
    let c = SYSLOG.captures(line)?;
    let n = |i: usize| c[i].parse::<i64>().unwrap_or(0);
    let year = crate::core::clock::now()[..4].parse().unwrap_or(1970);
    epoch(year, month(&c[1])?, n(2), n(3), n(4), n(5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_matches_the_log_writer() {
        assert_eq!(epoch(2023, 11, 14, 22, 13, 20), Some(1_700_000_000));
        assert_eq!(iso_time("2023-11-14T23:13:20+01:00"), Some(1_700_000_000));
        assert_eq!(epoch(1970, 1, 1, 0, 0, 0), Some(0));
        assert_eq!(epoch(2024, 2, 29, 0, 0, 0), Some(1_709_164_800));
    }
}
