//! `baton doctor TARGET`: walks one upstream step by step (the socket,
//! DNS against the system resolver and every address on its own, connect
//! with TLS and the certificate, the protocol sniff, one HTTP request or a
//! FastCGI ping, the idle keep-alive watch) through the gateway's own
//! dialler and `upstream::exchange`, so every failure is
//! classified by the same classifiers into the same [`Cause`] as a
//! proxied request; prints each step with its timing and a verdict with
//! the fix. `--config` walks every server of a config; `--repeat` sums up
//! what varied.
//!
//! Must not: classify anything itself (`upstream` does) or need a running
//! gateway.

pub mod command;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header;
use http_body_util::BodyExt;

use crate::config::ServerAddr;
use crate::core::cause::Cause;
use crate::core::failure::Failure;
use crate::upstream::exchange::{self, Head, NoHead};
use crate::upstream::{self, Link, TimedBody, UpBody, UpIncoming};

/// One step of the walk.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Step {
    pub name: &'static str,
    pub ok: bool,
    /// Not ok, but not what breaks the target either (one address of a
    /// dual-stack name, two resolvers that disagree): the verdict names
    /// it with its consequence, and the exit code stays 0.
    pub warn: bool,
    pub ms: f64,
    pub detail: String,
}

/// What the walk found.
#[derive(Debug)]
pub struct Report {
    pub target: String,
    pub steps: Vec<Step>,
    /// The failure, classified; `None` when every step passed.
    pub failure: Option<Failure>,
    /// The status the target answered, when it answered.
    pub status: Option<u16>,
    /// For a 5xx without Proxy-Status: the proxy whose error page it is.
    pub hop: Option<&'static str>,
    /// The target speaks FastCGI (PHP-FPM): no HTTP step.
    pub fastcgi: bool,
}

/// What the first bytes back say the server speaks.
enum Spoken {
    /// FastCGI, with the values it reported (FCGI_MAX_CONNS and friends).
    FastCgi(Vec<(String, String)>),
    Http1,
    Http2,
    Tls,
    /// Bytes that are none of these.
    Other([u8; 8]),
    /// Nothing within the timeout.
    Silent,
    /// The connection closed at once.
    Closed,
}

impl Spoken {
    fn describe(&self) -> String {
        match self {
            Spoken::FastCgi(v) if v.is_empty() => "FastCGI (answered GET_VALUES)".into(),
            Spoken::FastCgi(v) => format!(
                "FastCGI: {}",
                v.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Spoken::Http1 => "HTTP/1.x".into(),
            Spoken::Http2 => "HTTP/2 only (answered with a SETTINGS frame)".into(),
            Spoken::Tls => "TLS".into(),
            Spoken::Other(b) => format!("unknown protocol: first bytes {b:02x?}"),
            Spoken::Silent => "nothing sent back (a server waiting for its own protocol)".into(),
            Spoken::Closed => "closed the connection at once".into(),
        }
    }
}

/// A FastCGI `GET ping_path` through the gateway's own exchange (PHP-FPM
/// answers its `ping.path` itself, with "pong").
async fn fastcgi_ping(t: &Target, o: &Options) -> Step {
    let start = Instant::now();
    // Advice, not a fault: the sniff already found FastCGI answering; a
    // pool without ping.path is told what to add.
    let step = |ok: bool, detail: String| Step {
        warn: !ok,
        name: "fastcgi-ping",
        ok,
        ms: ms(start),
        detail,
    };
    let path = o.ping_path.as_str();
    let rt = match probe_runtime(t, o, true) {
        Ok(rt) => rt,
        Err(e) => return step(false, e),
    };
    let up = &rt.upstreams[0];
    let Some(fc) = up.cfg.fastcgi.as_deref() else {
        return step(false, "no FastCGI settings".into());
    };
    let server = &up.servers[0];
    let mut conn = match server.connect(&up.cfg, &rt.dialer).await {
        Ok(c) => c,
        Err((f, _)) => return step(false, f.details.unwrap_or_default()),
    };
    let head = crate::upstream::fastcgi::health_request(fc, path);
    let target: http::Uri = path.parse().unwrap_or_else(|_| http::Uri::from_static("/"));
    let req = exchange::Request {
        method: &http::Method::GET,
        target: &target,
        headers: &http::HeaderMap::new(),
        added: &[],
        fcgi_head: &head,
        body: UpBody::Empty,
        upgrade: false,
        request_id: &http::HeaderValue::from_static("doctor"),
    };
    match exchange::exchange(server, &up.cfg, &mut conn, req, o.timeout, 0).await {
        Err(NoHead::TimedOut) => step(
            false,
            format!("no answer to GET {path} within {:?}", o.timeout),
        ),
        Ok(Head { response, .. }) => {
            let status = response.status().as_u16();
            let (body, _) = read_body(response.into_body(), o.timeout).await;
            let body = body.unwrap_or_default();
            let text = String::from_utf8_lossy(&body[..body.len().min(80)])
                .trim()
                .to_string();
            step(status == 200, format!("GET {path}: {status} {text:?}"))
        }
        Err(NoHead::Failed(f)) if f.cause == Cause::ScriptNotFound => step(
            false,
            format!(
                "GET {path}: Primary script unknown: the pool has no ping.path {path} (add `ping.path = {path}` to the pool for health checks)"
            ),
        ),
        Err(NoHead::Failed(f)) => step(
            false,
            format!(
                "GET {path}: {} ({})",
                f.cause.id(),
                f.details.unwrap_or_default()
            ),
        ),
        Err(NoHead::Unsent(_)) => step(false, "the connection closed at once".into()),
    }
}

/// Reads a response body to its end within `timeout`: its bytes (`None`
/// when it did not end cleanly in time) and the wire it came on, for the
/// keep-alive watch.
async fn read_body(body: UpIncoming, timeout: Duration) -> (Option<Bytes>, Option<Link>) {
    let mut timed = TimedBody::new(body, timeout);
    let mut out = Vec::new();
    let whole = tokio::time::timeout(timeout, async {
        while let Some(frame) = timed.frame().await {
            match frame {
                Ok(f) => {
                    if let Some(d) = f.data_ref() {
                        out.extend_from_slice(d);
                    }
                }
                Err(_) => return false,
            }
        }
        true
    })
    .await
    .unwrap_or(false);
    let wire = if whole { timed.take_wire() } else { None };
    (whole.then(|| Bytes::from(out)), wire)
}

/// Sends FCGI_GET_VALUES on a fresh connection and reads what comes back.
async fn sniff(addr: &ServerAddr, timeout: Duration) -> Spoken {
    let mut buf = vec![0u8; 512];
    let work = crate::upstream::fastcgi::ask_values(addr, &mut buf);
    let n = match tokio::time::timeout(timeout, work).await {
        Err(_) => return Spoken::Silent,
        Ok(None) | Ok(Some(0)) => return Spoken::Closed,
        Ok(Some(n)) => n,
    };
    let b = &buf[..n];
    if b.starts_with(b"HTTP/") {
        return Spoken::Http1;
    }
    if b.len() >= 2 && (b[0] == 0x16 || b[0] == 0x15) && b[1] == 0x03 {
        return Spoken::Tls;
    }
    if b.len() >= 4 && b[0] == 0 && b[3] == 0x04 {
        return Spoken::Http2;
    }
    let mut bm = bytes::BytesMut::from(b);
    if let Ok(Some(crate::upstream::fastcgi::Record::Values(v))) =
        crate::upstream::fastcgi::take_record(&mut bm)
    {
        let vals = crate::upstream::fastcgi::parse_pairs(&v)
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(k).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            })
            .collect();
        return Spoken::FastCgi(vals);
    }
    if b.first() == Some(&1) {
        return Spoken::FastCgi(Vec::new());
    }
    let mut first = [0u8; 8];
    first[..n.min(8)].copy_from_slice(&b[..n.min(8)]);
    Spoken::Other(first)
}

/// A target as the user wrote it: `http(s)://host[:port]/path`,
/// `host:port` or `unix:/path`.
struct Target {
    server: String,
    /// Written as `http://` or `https://`: HTTP is expected, so it is
    /// asked first, and FastCGI records are sent only when HTTP gets no
    /// HTTP answer (they would land in an HTTP server's access log as a
    /// binary 400 line, and wait on a silent one).
    http: bool,
    tls_name: Option<String>,
    host: String,
    path: String,
}

fn parse_target(t: &str) -> Result<Target, String> {
    if t.starts_with("unix:") {
        return Ok(Target {
            server: t.to_string(),
            http: false,
            tls_name: None,
            host: "localhost".into(),
            path: "/".into(),
        });
    }
    let (tls, rest) = match t.split_once("://") {
        Some(("https", r)) => (true, r),
        Some(("http", r)) => (false, r),
        Some((s, _)) => {
            return Err(format!(
                "unsupported scheme {s:?}: use http, https or unix:"
            ));
        }
        None => (false, t),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let default_port = if tls { 443 } else { 80 };
    let has_port = authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok() && !authority.ends_with(']'));
    let server = if has_port {
        authority.to_string()
    } else {
        format!("{authority}:{default_port}")
    };
    let host = authority
        .rsplit_once(':')
        .filter(|_| has_port)
        .map_or(authority, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    if host.is_empty() {
        return Err(format!("no host in {t:?}"));
    }
    Ok(Target {
        server,
        http: t.contains("://"),
        tls_name: tls.then(|| host.clone()),
        host,
        path: path.to_string(),
    })
}

/// Accepts any certificate, so that the `certificate` step can describe
/// what a server presents even when verification (the connect step, with
/// the gateway's own verifier) rejects it. Signatures are still checked.
#[derive(Debug)]
pub struct Inspect(pub Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for Inspect {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Certificates expiring sooner than this are flagged.
const EXPIRY_WARNING_DAYS: i64 = 14;

/// What the server at `peer` presents for `sni`: protocol version, ALPN,
/// the leaf's names, issuer and expiry, the chain's length.
async fn certificate(peer: &str, sni: &str, timeout: Duration) -> Step {
    let start = Instant::now();
    let fail = |detail: String| Step {
        warn: false,
        name: "certificate",
        ok: false,
        ms: ms(start),
        detail,
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = match rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
    {
        Ok(b) => {
            let mut c = b
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Inspect(provider)))
                .with_no_client_auth();
            c.alpn_protocols = vec![b"http/1.1".to_vec()];
            c
        }
        Err(e) => return fail(e.to_string()),
    };
    let Ok(name) = rustls::pki_types::ServerName::try_from(sni.to_string()) else {
        return fail(format!("{sni} is not a valid TLS server name"));
    };
    let work = async {
        let tcp = tokio::net::TcpStream::connect(peer).await?;
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
    };
    let tls = match tokio::time::timeout(timeout, work).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return fail(format!("no handshake with {peer} (SNI {sni}): {e}")),
        Err(_) => return fail(format!("no handshake with {peer} within {timeout:?}")),
    };
    let (_, conn) = tls.get_ref();
    let version = conn
        .protocol_version()
        .map_or("unknown version".to_string(), |v| format!("{v:?}"));
    let alpn = conn.alpn_protocol().map_or("none".to_string(), |a| {
        String::from_utf8_lossy(a).into_owned()
    });
    let chain = conn.peer_certificates().unwrap_or_default();
    let Some(leaf) = chain.first() else {
        return fail(format!("{version}: the server sent no certificate"));
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf.as_ref()) else {
        return fail(format!("{version}: the certificate cannot be parsed"));
    };
    let cn = |n: &x509_parser::x509::X509Name<'_>| {
        n.iter_common_name()
            .next()
            .and_then(|c| c.as_str().ok())
            .map_or_else(|| n.to_string(), str::to_string)
    };
    let mut names: Vec<String> = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for g in &san.value.general_names {
            match g {
                x509_parser::extensions::GeneralName::DNSName(d) => names.push(d.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(ip) => match ip.len() {
                    4 => {
                        names.push(std::net::Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]).to_string())
                    }
                    16 => {
                        let mut b = [0u8; 16];
                        b.copy_from_slice(ip);
                        names.push(std::net::Ipv6Addr::from(b).to_string());
                    }
                    _ => {}
                },
                _ => {}
            }
        }
    }
    let not_after = cert.validity().not_after.timestamp();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let days = (not_after - now).div_euclid(86_400);
    let until = crate::core::clock::clock(not_after);
    let self_signed = cert.subject() == cert.issuer();
    let covers = |n: &str| {
        n.eq_ignore_ascii_case(sni)
            || n.strip_prefix("*.").is_some_and(|rest| {
                sni.split_once('.')
                    .is_some_and(|(_, parent)| parent.eq_ignore_ascii_case(rest))
            })
    };
    let mut problems = Vec::new();
    if days < 0 {
        problems.push(format!("EXPIRED on {}", &until[..10]));
    } else if days < EXPIRY_WARNING_DAYS {
        problems.push(format!("expires in {days} days: renew it now"));
    }
    if !names.iter().any(|n| covers(n)) {
        problems.push(format!("does not name {sni}: clients verifying it fail"));
    }
    if self_signed {
        problems.push("self-signed: only clients given this certificate as a CA trust it".into());
    }
    let mut detail = format!(
        "{version}, ALPN {alpn}, SNI {sni}; {} (names: {}); issuer {}; valid until {until} ({days} days); chain of {} certificate{}",
        cn(cert.subject()),
        list(&names),
        cn(cert.issuer()),
        chain.len(),
        if chain.len() == 1 { "" } else { "s" },
    );
    for p in &problems {
        detail.push_str("; ");
        detail.push_str(p);
    }
    // Self-signed alone is a fact, not a fault (an internal CA's upstream).
    let ok = days >= EXPIRY_WARNING_DAYS && names.iter().any(|n| covers(n));
    Step {
        warn: false,
        name: "certificate",
        ok,
        ms: ms(start),
        detail,
    }
}

/// The gateway's runtime for the target alone, without listeners (so any
/// address may be diagnosed, even one baton could listen on).
fn probe_runtime(
    t: &Target,
    o: &Options,
    fastcgi: bool,
) -> Result<crate::gateway::Runtime, String> {
    let cfg = crate::config::probe(&crate::config::Probe {
        server: &t.server,
        fastcgi,
        timeout: o.timeout,
        tls: t.tls_name.as_deref().map(Some),
        nameservers: &o.nameservers,
    })
    .map_err(|e| e.to_string())?;
    crate::gateway::Runtime::detached(cfg)
}

fn ms(since: Instant) -> f64 {
    (since.elapsed().as_secs_f64() * 1000.0 * 100.0).round() / 100.0
}

/// How a walk is made.
#[derive(Clone, Debug)]
pub struct Options {
    /// Per step.
    pub timeout: Duration,
    /// How long to watch an idle kept-alive connection for the server
    /// closing it (zero: skip the step).
    pub idle_wait: Duration,
    /// The FastCGI request sent to a FastCGI server (PHP-FPM's `ping.path`).
    pub ping_path: String,
    /// Nameservers to query directly (`ip:port`); empty: those of
    /// /etc/resolv.conf.
    pub nameservers: Vec<String>,
}

/// Walks `target`. `Err` only when the walk could not run at all.
pub async fn run(target: &str, o: &Options) -> Result<Report, String> {
    let t = parse_target(target)?;
    let rt = probe_runtime(&t, o, false)?;
    let up = rt.upstreams[0].clone();
    let server = up.servers[0].clone();
    let mut w = Walk {
        target,
        steps: Vec::new(),
    };
    let reached = async {
        match &server.addr {
            ServerAddr::Unix(p) => w.socket(p)?,
            ServerAddr::Name { host, port } => w.dns(&rt, host, *port, o).await?,
            ServerAddr::Tcp(_) => {}
        }
        w.connect(&rt, &server, &t, o.timeout).await
    };
    let dialled = match reached.await {
        Ok(d) => d,
        Err(f) => return Ok(w.report(Some(f), None)),
    };
    // HTTP expected: asked first; the sniff only explains an answer that
    // was not HTTP.
    if t.http {
        let http = match w.http(&rt, &server, &t, o.timeout).await {
            Ok(h) => h,
            Err(f) => return Ok(w.report(Some(f), None)),
        };
        if http.status.is_none()
            && http.failure.as_ref().is_some_and(|f| not_http(f.cause))
            && let Spoken::FastCgi(_) = w.sniff(&dialled, o.timeout).await
        {
            // Not a broken HTTP server: a FastCGI one, as if the target
            // had been given without a scheme.
            if let Some(s) = w.steps.iter_mut().rev().find(|s| s.name == "http") {
                s.warn = true;
            }
            w.steps.push(fastcgi_ping(&t, o).await);
            let mut r = w.report(None, None);
            r.fastcgi = true;
            return Ok(r);
        }
        return Ok(w.finish_http(http, o).await);
    }
    let spoken = w.sniff(&dialled, o.timeout).await;
    let wrong = match &spoken {
        Spoken::FastCgi(_) => {
            w.steps.push(fastcgi_ping(&t, o).await);
            let mut r = w.report(None, None);
            r.fastcgi = true;
            return Ok(r);
        }
        Spoken::Tls if t.tls_name.is_none() => Some(Failure::with(
            Cause::UpstreamSpeaksTls,
            "the port answered with a TLS record: use https://",
        )),
        Spoken::Http2 => Some(Failure::with(
            Cause::UpstreamSpeaksHttp2,
            "the port speaks HTTP/2 only (h2c or gRPC)",
        )),
        _ => None,
    };
    if let Some(f) = wrong {
        return Ok(w.report(Some(f), None));
    }
    let http = match w.http(&rt, &server, &t, o.timeout).await {
        Ok(h) => h,
        Err(f) => return Ok(w.report(Some(f), None)),
    };
    Ok(w.finish_http(http, o).await)
}

/// An HTTP exchange that got no HTTP answer: the server may speak
/// something else (FastCGI closes on an HTTP request).
fn not_http(c: Cause) -> bool {
    matches!(c, Cause::ConnectionTerminated | Cause::ProtocolError)
}

/// A walk in progress: the steps so far.
struct Walk<'a> {
    target: &'a str,
    steps: Vec<Step>,
}

/// What the HTTP step found.
struct HttpStep {
    failure: Option<Failure>,
    status: Option<u16>,
    /// For a 5xx without Proxy-Status: the proxy whose error page it is.
    hop: Option<&'static str>,
    /// The connection, idle after a whole response, for the keep-alive watch.
    idle: Option<Link>,
}

impl Walk<'_> {
    fn report(self, failure: Option<Failure>, status: Option<u16>) -> Report {
        Report {
            target: self.target.to_string(),
            steps: self.steps,
            failure,
            status,
            hop: None,
            fastcgi: false,
        }
    }

    /// A step that did not pass but does not break the target.
    fn push_warning(&mut self, name: &'static str, start: Instant, detail: String) {
        self.push(name, false, start, detail);
        if let Some(s) = self.steps.last_mut() {
            s.warn = true;
        }
    }

    fn push(&mut self, name: &'static str, ok: bool, start: Instant, detail: String) {
        self.steps.push(Step {
            warn: false,
            name,
            ok,
            ms: ms(start),
            detail,
        });
    }

    /// The socket itself, for `unix:` targets.
    fn socket(&mut self, p: &std::path::Path) -> Result<(), Failure> {
        let start = Instant::now();
        let Some(pb) = upstream::socket_problem(p) else {
            let detail = format!(
                "{} exists, is a socket, and this user may connect",
                p.display()
            );
            self.push("socket", true, start, detail);
            return Ok(());
        };
        let cause = match pb {
            upstream::SocketProblem::Permission(_) => Cause::SocketPermission,
            _ => Cause::SocketNotFound,
        };
        self.push("socket", false, start, pb.message().to_string());
        Err(Failure::with(cause, pb.message()))
    }

    /// DNS, for names: a direct query (with its TTL) against the system
    /// resolver, then every address on its own.
    async fn dns(
        &mut self,
        rt: &crate::gateway::Runtime,
        host: &str,
        port: u16,
        o: &Options,
    ) -> Result<(), Failure> {
        let start = Instant::now();
        let a = match rt.dialer.resolver.resolve(host).await {
            Ok(a) => a,
            Err(e) => {
                let f = upstream::classify_dns(host, e);
                self.push("dns", false, start, f.details.clone().unwrap_or_default());
                return Err(f);
            }
        };
        let family = |v4: bool| -> Vec<String> {
            a.addrs
                .iter()
                .filter(|a| a.is_ipv4() == v4)
                .map(|a| a.to_string())
                .collect()
        };
        let ttl = a
            .ttl
            .map_or(String::new(), |t| format!("; TTL {}s", t.as_secs()));
        let asked = if o.nameservers.is_empty() {
            "the nameservers in /etc/resolv.conf".to_string()
        } else {
            o.nameservers.join(", ")
        };
        // What the system resolver (getaddrinfo: /etc/hosts, nscd,
        // systemd-resolved) says: what nginx and most apps use, once at
        // start for nginx.
        let system = tokio::time::timeout(o.timeout, tokio::net::lookup_host((host, port))).await;
        let mut mine: Vec<std::net::IpAddr> = a.addrs.clone();
        mine.sort();
        mine.dedup();
        let (agree, sys) = match system {
            Ok(Ok(it)) => {
                let mut v: Vec<std::net::IpAddr> = it.map(|sa| sa.ip()).collect();
                v.sort();
                v.dedup();
                let shown: Vec<String> = v.iter().map(|i| i.to_string()).collect();
                (v == mine, list(&shown))
            }
            Ok(Err(e)) => (false, format!("fails ({e})")),
            Err(_) => (false, "no answer in time".to_string()),
        };
        let mut detail = format!(
            "A: {}; AAAA: {}{ttl} (asked {asked}); system resolver: {}",
            list(&family(true)),
            list(&family(false)),
            if agree { "the same".to_string() } else { sys }
        );
        if agree {
            self.push("dns", true, start, detail);
        } else {
            detail.push_str(": the two disagree; a stale /etc/hosts entry or a cache (nscd, systemd-resolved) answers differently, and a proxy that resolves once at start (nginx) keeps what it got then");
            self.push_warning("dns", start, detail);
        }
        if a.addrs.len() > 1 {
            self.addresses(&a.addrs, port, o.timeout).await;
        }
        Ok(())
    }

    /// Every address on its own: an app listening on 127.0.0.1 only
    /// refuses whoever picks ::1 (and the reverse).
    async fn addresses(&mut self, addrs: &[std::net::IpAddr], port: u16, timeout: Duration) {
        let start = Instant::now();
        let mut results = Vec::new();
        let mut all_ok = true;
        for ip in addrs {
            let sa = std::net::SocketAddr::new(*ip, port);
            let r = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(sa)).await;
            let what = match r {
                Ok(Ok(_)) => "ok".to_string(),
                Ok(Err(e)) => {
                    all_ok = false;
                    upstream::classify_connect_io(&e, &sa.to_string())
                        .cause
                        .id()
                        .to_string()
                }
                Err(_) => {
                    all_ok = false;
                    "connection_timeout".to_string()
                }
            };
            results.push(format!("{sa} {what}"));
        }
        let mut detail = results.join("; ");
        let any_ok = results.iter().any(|r| r.ends_with(" ok"));
        if all_ok {
            self.push("addresses", true, start, detail);
        } else if any_ok {
            // Dual-stack, one family working: it works for whoever falls
            // back, and fails for whoever does not.
            detail.push_str(": not every address answers; a client that tries only the first (or a proxy resolving once, as nginx does with one upstream address) gets connection refused or a 502 when it picks a failing one; browsers, curl and baton fall back to the next. Make the app listen on every address the name has (e.g. [::] and 0.0.0.0), or remove the record");
            self.push_warning("addresses", start, detail);
        } else {
            detail.push_str(": no address answers");
            self.push("addresses", false, start, detail);
        }
    }

    /// Connect (and the TLS handshake), through the gateway's own dialler;
    /// the certificate described either way. `Ok`: the address dialled.
    async fn connect(
        &mut self,
        rt: &crate::gateway::Runtime,
        server: &Arc<upstream::Server>,
        t: &Target,
        timeout: Duration,
    ) -> Result<ServerAddr, Failure> {
        let start = Instant::now();
        let name = if t.tls_name.is_some() {
            "connect+tls"
        } else {
            "connect"
        };
        let up = &rt.upstreams[0];
        match server.connect(&up.cfg, &rt.dialer).await {
            Ok(c) => {
                self.push(name, true, start, format!("connected to {}", c.peer));
                if let Some(sni) = &t.tls_name {
                    self.steps.push(certificate(&c.peer, sni, timeout).await);
                }
                // The address actually dialled (after DNS), or the socket.
                Ok(match &server.addr {
                    ServerAddr::Name { .. } => c
                        .peer
                        .parse()
                        .map(ServerAddr::Tcp)
                        .unwrap_or_else(|_| server.addr.clone()),
                    other => other.clone(),
                })
            }
            Err((f, peer)) => {
                let detail = format!("{peer}: {}", f.details.clone().unwrap_or_default());
                self.push(name, false, start, detail);
                // A rejected certificate: say what it is.
                if let Some(sni) = &t.tls_name
                    && f.cause.phase() == crate::core::cause::Phase::Tls
                {
                    self.steps.push(certificate(&peer, sni, timeout).await);
                }
                Err(f)
            }
        }
    }

    /// After the HTTP step: the keep-alive watch, and the report.
    async fn finish_http(mut self, http: HttpStep, o: &Options) -> Report {
        if let Some(link) = http.idle
            && !o.idle_wait.is_zero()
        {
            self.keepalive(link, o.idle_wait).await;
        }
        let mut r = self.report(http.failure, http.status);
        r.hop = http.hop;
        r
    }

    /// What the server speaks: one FastCGI GET_VALUES record, and its first
    /// bytes back (PHP-FPM answers GET_VALUES_RESULT, an HTTP server a 400).
    async fn sniff(&mut self, dialled: &ServerAddr, timeout: Duration) -> Spoken {
        let start = Instant::now();
        let spoken = {
            let progress = crate::cli::term::Progress::new();
            progress.show(&format!(
                "sniff: waiting up to {:.0}s for the server to answer a FastCGI record",
                timeout.as_secs_f64()
            ));
            sniff(dialled, timeout).await
        };
        self.push("sniff", true, start, spoken.describe());
        spoken
    }

    /// One GET through the gateway's own exchange, classified as a proxied
    /// request would be.
    async fn http(
        &mut self,
        rt: &crate::gateway::Runtime,
        server: &Arc<upstream::Server>,
        t: &Target,
        timeout: Duration,
    ) -> Result<HttpStep, Failure> {
        let up = &rt.upstreams[0];
        let mut conn = server
            .connect(&up.cfg, &rt.dialer)
            .await
            .map_err(|(f, _)| f)?;
        let start = Instant::now();
        let mut headers = http::HeaderMap::new();
        if let Ok(h) = http::HeaderValue::from_str(&t.host) {
            headers.insert(header::HOST, h);
        }
        headers.insert(
            header::USER_AGENT,
            http::HeaderValue::from_static(concat!("baton-doctor/", env!("CARGO_PKG_VERSION"))),
        );
        let target: http::Uri = t.path.parse().map_err(|e: http::uri::InvalidUri| {
            Failure::with(Cause::Internal, format!("path {:?}: {e}", t.path))
        })?;
        let info = conn.info.clone();
        info.stats.begin_response();
        let req = exchange::Request {
            method: &http::Method::GET,
            target: &target,
            headers: &headers,
            added: &[],
            fcgi_head: &[],
            body: UpBody::Empty,
            upgrade: false,
            request_id: &http::HeaderValue::from_static("doctor"),
        };
        let outcome = exchange::exchange(server, &up.cfg, &mut conn, req, timeout, 0).await;
        let response = match outcome {
            Ok(Head { response, .. }) => response,
            Err(no_head) => {
                let f = match no_head {
                    NoHead::Failed(f) => f,
                    NoHead::TimedOut => Failure::with(
                        Cause::ResponseHeadTimeout,
                        format!("no response head within {}s", timeout.as_secs_f64()),
                    ),
                    NoHead::Unsent(_) => Failure::with(
                        Cause::ConnectionTerminated,
                        "closed before the request was sent",
                    ),
                };
                self.push("http", false, start, f.details.clone().unwrap_or_default());
                return Ok(HttpStep {
                    failure: Some(f),
                    status: None,
                    hop: None,
                    idle: None,
                });
            }
        };
        let status = response.status().as_u16();
        let head_bytes = info.stats.read.load(std::sync::atomic::Ordering::Relaxed);
        let (parts, body) = response.into_parts();
        let detail = head_detail(status, head_bytes, &parts.headers);
        let failure = (status >= 500)
            .then(|| announced_failure(status, &parts.headers))
            .flatten();
        let (body, idle) = read_body(body, timeout).await;
        let hop = (status >= 500 && failure.is_none())
            .then(|| {
                let server_field = parts
                    .headers
                    .get(header::SERVER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_ascii_lowercase();
                let body = body.clone().unwrap_or_default();
                proxy_page(&server_field, &body[..body.len().min(8192)])
            })
            .flatten();
        self.push("http", status < 500, start, detail);
        Ok(HttpStep {
            failure,
            status: Some(status),
            hop,
            idle,
        })
    }

    /// How long the server keeps an idle kept-alive connection: the
    /// connection watched until the server closes it.
    async fn keepalive(&mut self, mut link: Link, idle_wait: Duration) {
        let start = Instant::now();
        let mut closed = None;
        let progress = crate::cli::term::Progress::new();
        while start.elapsed() < idle_wait {
            progress.show(&format!(
                "keepalive: watching an idle connection for the server closing it, {:.0}s of {:.0}s",
                start.elapsed().as_secs_f64(),
                idle_wait.as_secs_f64()
            ));
            tokio::time::sleep(Duration::from_millis(20)).await;
            if link.is_closed() {
                closed = Some(start.elapsed());
                break;
            }
        }
        let detail = match closed {
            Some(d) => format!(
                "the server closed an idle kept-alive connection after {:.1}s: a proxy in front must close idle connections sooner (baton learns this; nginx: keepalive_timeout in the upstream block, HAProxy: timeout http-keep-alive)",
                d.as_secs_f64()
            ),
            None => format!(
                "an idle kept-alive connection stayed open for the {:.0}s watched",
                idle_wait.as_secs_f64()
            ),
        };
        self.push("keepalive", true, start, detail);
    }
}

/// The HTTP step's line: status, head size, the fields that name a hop.
fn head_detail(status: u16, head_bytes: u64, h: &http::HeaderMap) -> String {
    let mut detail = format!("HTTP {status}, response head about {head_bytes} bytes");
    for name in ["server", "via", "proxy-status", "cf-ray", "x-request-id"] {
        if let Some(v) = h.get(name).and_then(|v| v.to_str().ok()) {
            detail.push_str(&format!("; {name}: {v}"));
        }
    }
    if head_bytes > 4096 {
        detail.push_str("; larger than nginx's default 4 KiB proxy_buffer_size (\"upstream sent too big header\")");
    }
    detail
}

/// A 5xx whose Proxy-Status names the hop's cause: that cause.
fn announced_failure(status: u16, h: &http::HeaderMap) -> Option<Failure> {
    let token = h
        .get("proxy-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split("error=").nth(1))
        .map(|v| v.split(';').next().unwrap_or("").trim().to_string())?;
    let c = Cause::ALL
        .iter()
        .copied()
        .find(|c| c.proxy_status() == token)?;
    Some(Failure::with(
        c,
        format!(
            "a proxy on the way answered {status} with Proxy-Status {}",
            c.proxy_status()
        ),
    ))
}

/// Whose error page a 5xx body is, from the `Server` field and the page
/// each proxy writes by default.
fn proxy_page(server: &str, body: &[u8]) -> Option<&'static str> {
    let b = String::from_utf8_lossy(body).to_ascii_lowercase();
    let signs: [(&str, &[&str]); 6] = [
        ("nginx", &["<center>nginx", "nginx</center>"]),
        ("Cloudflare", &["cloudflare", "cf-error"]),
        ("HAProxy", &["haproxy"]),
        ("Apache", &["proxy error", "apache/"]),
        ("Caddy", &["caddy"]),
        ("Envoy", &["upstream connect error", "no healthy upstream"]),
    ];
    signs
        .iter()
        .find(|(name, marks)| {
            server.contains(&name.to_ascii_lowercase())
                && (b.is_empty() || marks.iter().any(|m| b.contains(m)))
                || marks.iter().any(|m| b.contains(m))
        })
        .map(|(name, _)| *name)
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

impl Report {
    /// The verdict when no step failed on the way.
    fn clean_summary(&self) -> String {
        // A step that failed is the verdict, unless the answer itself
        // already says what is wrong (a 5xx).
        if let Some(s) = self.steps.iter().find(|s| !s.ok && !s.warn)
            && self.status.is_none_or(|st| st < 500)
        {
            return format!("the {} step failed: {}", s.name, s.detail);
        }
        let summary = self.answer_summary();
        let warned: Vec<&str> = self
            .steps
            .iter()
            .filter(|s| s.warn)
            .map(|s| s.name)
            .collect();
        if warned.is_empty() {
            summary
        } else {
            format!(
                "{summary}, with warnings ({}): see those steps for who it fails for",
                warned.join(", ")
            )
        }
    }

    /// What the answer says, when no step failed.
    fn answer_summary(&self) -> String {
        match self.status {
            Some(s) if s >= 500 => match self.hop {
                Some(p) => format!(
                    "{p}'s own {s} error page: the proxy at this address could not get an answer from the upstream behind it; run baton doctor against that upstream, and baton logs on {p}'s error log"
                ),
                None => format!(
                    "the target itself answered {s} (no Proxy-Status, not a known proxy's error page): the application's own error; read its log"
                ),
            },
            Some(s) => format!("no problem found (HTTP {s})"),
            None if self.fastcgi => "a FastCGI server (PHP-FPM?) answers here: point a proxy at it with protocol = \"fastcgi\" (nginx: fastcgi_pass), not HTTP".into(),
            None => "no problem found".into(),
        }
    }

    /// Exit code: 0 nothing wrong, 1 a problem found.
    pub fn exit_code(&self) -> u8 {
        u8::from(
            self.failure.is_some()
                || self.status.is_some_and(|s| s >= 500)
                || self.steps.iter().any(|s| !s.ok && !s.warn),
        )
    }

    /// The JSON contract of issue 5.
    pub fn json(&self) -> serde_json::Value {
        let verdict = match &self.failure {
            None => serde_json::json!({
                "proxy_status": null,
                "cause": null,
                "summary": self.clean_summary(),
                "fix": null,
            }),
            Some(f) => serde_json::json!({
                "proxy_status": f.cause.proxy_status(),
                "cause": f.cause.id(),
                "status": f.cause.status(),
                "summary": format!("{}: {}", f.cause.title(), f.details.clone().unwrap_or_default()),
                "fix": f.cause.fix(),
            }),
        };
        serde_json::json!({"target": self.target, "steps": self.steps, "verdict": verdict})
    }

    /// Plain text for a terminal.
    pub fn text(&self) -> String {
        self.render(crate::cli::term::Paint::plain())
    }

    /// The text, coloured when `paint` is on.
    pub fn render(&self, paint: crate::cli::term::Paint) -> String {
        let mut out = format!("baton doctor {}\n", paint.bold(&self.target));
        for s in &self.steps {
            out.push_str(&format!(
                "  {} {:<12} {:>8.2} ms  {}\n",
                if s.ok {
                    paint.green("ok  ")
                } else if s.warn {
                    paint.yellow("WARN")
                } else {
                    paint.red("FAIL")
                },
                s.name,
                s.ms,
                s.detail
            ));
        }
        match &self.failure {
            None => out.push_str(&format!(
                "{} {}\n",
                paint.bold("verdict:"),
                self.clean_summary()
            )),
            Some(f) => out.push_str(&format!(
                "{} {} ({}, Proxy-Status {}, a gateway would answer {})\n  evidence: {}\n  fix: {}\n",
                paint.bold("verdict:"),
                paint.red(f.cause.title()),
                f.cause.id(),
                f.cause.proxy_status(),
                f.cause.status(),
                f.details.clone().unwrap_or_default(),
                f.cause.fix()
            )),
        }
        out
    }
}

/// `--repeat N`: what varied between the runs.
pub fn summary(runs: &[Report]) -> serde_json::Value {
    let mut verdicts: std::collections::BTreeMap<String, usize> = Default::default();
    let mut times: std::collections::BTreeMap<&'static str, Vec<f64>> = Default::default();
    for r in runs {
        let v = match (&r.failure, r.status) {
            (Some(f), _) => f.cause.id().to_string(),
            (None, Some(s)) if s >= 500 => format!("http_{s}"),
            _ => "ok".to_string(),
        };
        *verdicts.entry(v).or_default() += 1;
        for st in &r.steps {
            times.entry(st.name).or_default().push(st.ms);
        }
    }
    let steps: serde_json::Map<String, serde_json::Value> = times
        .into_iter()
        .map(|(name, mut t)| {
            t.sort_by(f64::total_cmp);
            (
                name.to_string(),
                serde_json::json!({"min_ms": t[0], "median_ms": t[t.len() / 2], "max_ms": t[t.len() - 1], "runs": t.len()}),
            )
        })
        .collect();
    serde_json::json!({"runs": runs.len(), "verdicts": verdicts, "steps": steps})
}

/// `--repeat N` as text: the verdict counts and each step's spread.
pub fn summary_text(runs: &[Report]) -> String {
    let s = summary(runs);
    let mut out = format!("{} runs:", runs.len());
    if let Some(v) = s["verdicts"].as_object() {
        for (k, n) in v {
            out.push_str(&format!(" {k} x{n}"));
        }
    }
    out.push('\n');
    if let Some(st) = s["steps"].as_object() {
        for (k, t) in st {
            out.push_str(&format!(
                "  {k:<12} min {:.2} ms, median {:.2} ms, max {:.2} ms ({} runs)\n",
                t["min_ms"].as_f64().unwrap_or(0.0),
                t["median_ms"].as_f64().unwrap_or(0.0),
                t["max_ms"].as_f64().unwrap_or(0.0),
                t["runs"]
            ));
        }
    }
    out
}

/// `baton doctor --config FILE`: every server of every upstream, as targets
/// for [`run`], with what the config expects of each.
pub struct ConfigTarget {
    pub upstream: String,
    pub target: String,
    pub fastcgi: bool,
    pub keepalive_timeout: Duration,
}

pub fn config_targets(cfg: &crate::config::Config) -> Vec<ConfigTarget> {
    let mut out = Vec::new();
    for u in &cfg.upstreams {
        let path = u
            .health
            .as_ref()
            .and_then(|h| h.path.clone())
            .unwrap_or_else(|| "/".into());
        for s in &u.servers {
            let target = match (&s.addr, &u.tls) {
                (ServerAddr::Unix(p), _) => format!("unix:{}", p.display()),
                // FastCGI expected: no scheme, so the walk sniffs first.
                (a, None) if u.fastcgi.is_some() => a.to_string(),
                (a, Some(_)) => format!("https://{a}{path}"),
                (a, None) => format!("http://{a}{path}"),
            };
            out.push(ConfigTarget {
                upstream: u.name.to_string(),
                target,
                fastcgi: u.fastcgi.is_some(),
                keepalive_timeout: u.keepalive_timeout,
            });
        }
    }
    out
}

/// What the walk found that the config gets wrong for this server.
pub fn config_findings(t: &ConfigTarget, r: &Report) -> Vec<String> {
    let mut f = Vec::new();
    if r.fastcgi && !t.fastcgi {
        f.push(format!(
            "upstreams.{}: {} speaks FastCGI but the upstream is HTTP: add protocol = \"fastcgi\" and root",
            t.upstream, t.target
        ));
    }
    let spoke_http = r
        .steps
        .iter()
        .any(|s| s.name == "sniff" && s.detail == "HTTP/1.x");
    if t.fastcgi && spoke_http {
        f.push(format!(
            "upstreams.{}: {} speaks HTTP but the upstream has protocol = \"fastcgi\": remove it",
            t.upstream, t.target
        ));
    }
    if let Some(step) = r.steps.iter().find(|s| s.name == "keepalive")
        && let Some(secs) = step
            .detail
            .strip_prefix("the server closed an idle kept-alive connection after ")
            .and_then(|d| d.split('s').next())
            .and_then(|d| d.parse::<f64>().ok())
        && t.keepalive_timeout.as_secs_f64() >= secs
    {
        f.push(format!(
            "upstreams.{}: keepalive_timeout {:?} is not shorter than the {secs}s after which {} closes idle connections: set keepalive_timeout = \"{}ms\" (baton also learns this, but only after a first race)",
            t.upstream,
            t.keepalive_timeout,
            t.target,
            (secs * 750.0) as u64
        ));
    }
    f
}
