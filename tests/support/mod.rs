//! Test harness: a gateway on loopback with its logs in a temporary
//! directory, a small HTTP client, and a loopback DNS server.

#![allow(dead_code)]

pub mod cdp;
pub mod php;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;

pub use baton::origin::{Blackhole, Origin, Script, refusing_addr};

/// The config of one upstream (`app`, the server at `addr`) taking every
/// request: the body most gateway tests start from.
pub fn one_route(addr: SocketAddr) -> String {
    format!("[upstreams.app]\nservers = [\"{addr}\"]\n[[routes]]\nupstream = \"app\"\n")
}

pub struct Gw {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub errors_log: PathBuf,
    pub access_log: PathBuf,
    running: Option<baton::server::Running>,
}

impl Gw {
    /// Starts baton with `body` (upstreams, routes, any extra sections)
    /// plus a loopback listener, an admin address and file logs.
    pub async fn start(body: &str) -> Gw {
        Self::start_with(body, "127.0.0.1:0", "json").await
    }

    pub async fn start_with(body: &str, listen: &str, access_format: &str) -> Gw {
        let dir = tempfile::tempdir().unwrap();
        let errors_log = dir.path().join("errors.log");
        let access_log = dir.path().join("access.log");
        // A body starting with `[server]` adds its keys to the server section.
        let (server, body) = match body.strip_prefix("[server]\n") {
            Some(rest) => {
                let end = rest.find("\n[").map_or(rest.len(), |i| i + 1);
                rest.split_at(end)
            }
            None => ("", body),
        };
        // Incidents are recorded by default (in the state directory): a
        // test's own go to its directory unless it says where.
        let incidents = if body.contains("[incidents]") {
            String::new()
        } else {
            format!(
                "\n[incidents]\ndir = \"{}\"\n",
                dir.path().join("incidents").display()
            )
        };
        let toml = format!(
            "[server]\nlisten = [\"{listen}\"]\nadmin = \"127.0.0.1:0\"\nadmin_hosts = [\"test.local\"]\n{server}\n[log]\naccess = \"{}\"\naccess_format = \"{access_format}\"\nerrors = \"{}\"\n\n# body\n{body}{incidents}",
            access_log.display(),
            errors_log.display()
        );
        // Through a file, as `baton serve` does, so that reload works.
        let file = dir.path().join("baton.toml");
        std::fs::write(&file, &toml).unwrap();
        let cfg = match baton::config::load(&file) {
            Ok(c) => c,
            Err(e) => panic!("test config invalid:\n{e}\n{toml}"),
        };
        let running = baton::server::start(cfg).await.expect("gateway starts");
        Gw {
            addr: running.addrs[0],
            admin: running.admin.unwrap(),
            dir,
            errors_log,
            access_log,
            running: Some(running),
        }
    }

    /// The first HTTPS listener's address (`server.listen_tls`).
    pub fn tls_addr(&self) -> SocketAddr {
        self.running.as_ref().unwrap().tls_addrs[0]
    }

    /// Replaces the config file's body (keeping server and log sections)
    /// and asks the admin endpoint to reload; returns its answer.
    pub async fn reload_with(&self, body: &str) -> Resp {
        let file = self.dir.path().join("baton.toml");
        let old = std::fs::read_to_string(&file).unwrap();
        let head = &old[..old.find("# body\n").unwrap()];
        let incidents = if body.contains("[incidents]") {
            String::new()
        } else {
            format!(
                "\n[incidents]\ndir = \"{}\"\n",
                self.dir.path().join("incidents").display()
            )
        };
        std::fs::write(&file, format!("{head}# body\n{body}{incidents}")).unwrap();
        send(
            self.admin,
            http::Request::post("/reload")
                .header("host", "test.local")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The failure-log lines for a request ID (waits for the log writer).
    pub async fn failures(&self, request_id: &str) -> Vec<Value> {
        read_lines(&self.errors_log, request_id, true).await
    }

    /// The access-log line for a request ID.
    pub async fn access(&self, request_id: &str) -> Value {
        read_lines(&self.access_log, request_id, true)
            .await
            .pop()
            .expect("an access line")
    }

    pub async fn access_raw(&self) -> String {
        for _ in 0..100 {
            if let Ok(s) = std::fs::read_to_string(&self.access_log)
                && !s.is_empty()
            {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        String::new()
    }

    /// The first open incident on the dashboard's state, waiting up to
    /// 6 s for the detector; `null` if none opened.
    pub async fn open_incident(&self) -> Value {
        for _ in 0..60 {
            let s = send(self.admin, get("/api/state")).await.json();
            if let Some(i) = s["incidents_open"].as_array().and_then(|a| a.first()) {
                return i.clone();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Value::Null
    }

    pub async fn metrics(&self) -> String {
        let r = send(self.admin, get("/metrics")).await;
        String::from_utf8(r.body.unwrap().to_vec()).unwrap()
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown(Duration::from_secs(2)).await;
        }
    }
}

async fn read_lines(path: &PathBuf, request_id: &str, wait: bool) -> Vec<Value> {
    let mut out = Vec::new();
    for _ in 0..150 {
        out = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["request_id"] == request_id)
            .collect();
        if !out.is_empty() || !wait {
            // Give a second line of the same request a moment to land.
            tokio::time::sleep(Duration::from_millis(30)).await;
            return std::fs::read_to_string(path)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|v| v["request_id"] == request_id)
                .collect();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    out
}

/// A response as the test sees it. `body` is `Err` when the connection was
/// aborted before the body completed.
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Result<Bytes, String>,
}

impl Resp {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }
    pub fn request_id(&self) -> String {
        self.header("x-request-id").to_string()
    }
    /// The `error=` token of `Proxy-Status`.
    pub fn proxy_error(&self) -> &str {
        let ps = self.header("proxy-status");
        ps.split("error=")
            .nth(1)
            .map_or("", |r| r.split(';').next().unwrap_or(""))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(self.body.as_ref().expect("complete body")).to_string()
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(self.body.as_ref().expect("complete body")).expect("json body")
    }
}

pub fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", "test.local")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// A GET with one more header field.
pub fn get_with(path: &str, name: &str, value: &str) -> Request<Full<Bytes>> {
    let mut r = get(path);
    r.headers_mut().insert(
        http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
        http::HeaderValue::from_str(value).unwrap(),
    );
    r
}

/// One request on a new HTTP/1.1 connection.
pub async fn send(addr: SocketAddr, req: Request<Full<Bytes>>) -> Resp {
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    read(tx.send_request(req).await.expect("response head")).await
}

/// Reads a whole response; an aborted body becomes `Err`.
async fn read(resp: http::Response<hyper::body::Incoming>) -> Resp {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|e| e.to_string());
    Resp {
        status,
        headers,
        body,
    }
}

/// A keep-alive client: reuses one connection for its requests.
pub struct Client {
    tx: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
            .await
            .unwrap();
        tokio::spawn(conn);
        Client { tx }
    }
    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Resp {
        self.tx.ready().await.unwrap();
        read(self.tx.send_request(req).await.expect("response head")).await
    }
}

/// A DNS server on loopback UDP: names in `records` get an A record (TTL
/// 1 s), others NXDOMAIN; AAAA questions get an empty answer. With
/// `silent`, it never answers (a DNS timeout).
pub struct Dns {
    pub addr: SocketAddr,
    records: std::sync::Arc<std::sync::Mutex<Vec<(String, IpAddr)>>>,
    silent: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Dns {
    /// Points `name` at `ip` from now on.
    pub fn set(&self, name: &str, ip: IpAddr) {
        let mut r = self.records.lock().unwrap();
        r.retain(|(n, _)| n != name);
        r.push((name.to_string(), ip));
    }

    /// Stops (or resumes) answering.
    pub fn set_silent(&self, on: bool) {
        self.silent.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    pub async fn start(records: Vec<(&'static str, IpAddr)>, silent: bool) -> Dns {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        let records = std::sync::Arc::new(std::sync::Mutex::new(
            records
                .into_iter()
                .map(|(n, ip)| (n.to_string(), ip))
                .collect::<Vec<_>>(),
        ));
        let silent = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(silent));
        let (recs, quiet) = (records.clone(), silent.clone());
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            loop {
                let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                    return;
                };
                if quiet.load(std::sync::atomic::Ordering::Relaxed) || n < 12 {
                    continue;
                }
                let q = &buf[..n];
                // Question: name labels from offset 12, then type and class.
                let mut i = 12;
                let mut labels = Vec::new();
                while i < n && q[i] != 0 {
                    let len = q[i] as usize;
                    labels
                        .push(String::from_utf8_lossy(&q[i + 1..i + 1 + len]).to_ascii_lowercase());
                    i += 1 + len;
                }
                let qend = i + 5;
                if qend > n {
                    continue;
                }
                let qtype = u16::from_be_bytes([q[i + 1], q[i + 2]]);
                let name = labels.join(".");
                let found = recs
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|(r, _)| *r == name)
                    .map(|(_, ip)| *ip);
                let mut out = Vec::new();
                out.extend_from_slice(&q[..2]);
                let (rcode, answer) = match (found, qtype) {
                    (None, _) => (3u8, None),
                    (Some(IpAddr::V4(v4)), 1) => (0, Some(v4.octets().to_vec())),
                    (Some(IpAddr::V6(v6)), 28) => (0, Some(v6.octets().to_vec())),
                    (Some(_), _) => (0, None),
                };
                out.extend_from_slice(&[0x81, 0x80 | rcode]);
                out.extend_from_slice(&[0, 1, 0, u8::from(answer.is_some()), 0, 0, 0, 0]);
                out.extend_from_slice(&q[12..qend]);
                if let Some(rdata) = answer {
                    out.extend_from_slice(&[0xc0, 0x0c]);
                    out.extend_from_slice(&qtype.to_be_bytes());
                    out.extend_from_slice(&[0, 1, 0, 0, 0, 1]);
                    out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
                    out.extend_from_slice(&rdata);
                }
                let _ = sock.send_to(&out, from).await;
            }
        });
        Dns {
            addr,
            records,
            silent,
            task,
        }
    }
}

/// Asserts the whole failure contract for one response: status,
/// `Proxy-Status` type, request ID, and the final failure-log line's cause.
pub async fn assert_failure(
    gw: &Gw,
    r: &Resp,
    status: u16,
    proxy_error: &str,
    cause: &str,
) -> Value {
    assert_eq!(r.status, status, "status; headers: {:?}", r.headers);
    assert_eq!(
        r.proxy_error(),
        proxy_error,
        "Proxy-Status: {}",
        r.header("proxy-status")
    );
    let id = r.request_id();
    assert_eq!(id.len(), 16, "a generated request id");
    let lines = gw.failures(&id).await;
    let last = lines
        .last()
        .unwrap_or_else(|| panic!("no failure log line for {id}"));
    assert_eq!(last["cause"], cause, "log line: {last}");
    assert_eq!(last["proxy_status"], proxy_error);
    assert_eq!(last["status"], status);
    assert!(
        r.text().contains(&id),
        "the request id is on the error page"
    );
    last.clone()
}

/// Kills a child process if the test ends (or panics) while it runs, so a
/// failed test never leaves a baton or PHP-FPM behind holding its pipes.
pub struct Reap(pub Option<std::process::Child>);

impl Reap {
    pub fn take(&mut self) -> std::process::Child {
        self.0.take().expect("child already taken")
    }
    pub fn id(&self) -> u32 {
        self.0.as_ref().map_or(0, |c| c.id())
    }
}

impl Drop for Reap {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A real nginx on a free loopback port, for the tests that compare with
/// it or read its logs. Dropped, it is stopped, then its directory (config,
/// logs, temporary files) removed.
pub struct RealNginx {
    pub addr: SocketAddr,
    _nginx: Reap,
    pub dir: tempfile::TempDir,
}

/// Starts a real nginx whose `http` block is what `http(dir, port)` gives
/// (`dir` is its directory, `port` the one to listen on).
pub async fn real_nginx(http: impl FnOnce(&std::path::Path, u16) -> String) -> RealNginx {
    let dir = tempfile::tempdir().unwrap();
    let port = refusing_addr().port();
    let conf = nginx_conf(dir.path(), &http(dir.path(), port));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    RealNginx {
        addr,
        _nginx: real_proxy("nginx", &conf, addr, None).await,
        dir,
    }
}

/// A real nginx's config, written to `dir/nginx.conf`: one process in the
/// foreground, its pid, error log and temporary files in `dir`, and `http`
/// inside its `http` block. Returns the config's path.
fn nginx_conf(dir: &std::path::Path, http: &str) -> std::path::PathBuf {
    let d = dir.display();
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nmaster_process off;\npid {d}/n.pid;\nerror_log {d}/error.log;\nevents {{}}\nhttp {{\n  client_body_temp_path {d}/b; proxy_temp_path {d}/p; fastcgi_temp_path {d}/f; uwsgi_temp_path {d}/u; scgi_temp_path {d}/s;\n{http}}}\n"
        ),
    )
    .unwrap();
    conf
}

/// A real nginx, Apache or HAProxy in the foreground on `conf`, listening
/// on `addr`; HAProxy's log (to stdout) goes to `stdout` when given.
pub async fn real_proxy(
    which: &str,
    conf: &std::path::Path,
    addr: SocketAddr,
    stdout: Option<&std::path::Path>,
) -> Reap {
    let mut cmd = std::process::Command::new(which);
    match which {
        "nginx" => cmd.arg("-c"),
        "apache2" => cmd.args(["-X", "-f"]),
        "haproxy" => cmd.args(["-db", "-f"]),
        other => panic!("no such peer {other}"),
    };
    cmd.arg(conf).stderr(std::process::Stdio::null());
    if let Some(out) = stdout {
        cmd.stdout(std::fs::File::create(out).unwrap());
    }
    peer(&mut cmd, addr).await
}

/// Starts a program (nginx, HAProxy, Apache, `baton serve`) and waits
/// until `addr` accepts connections; killed when the result drops.
pub async fn peer(cmd: &mut std::process::Command, addr: SocketAddr) -> Reap {
    let child = Reap(Some(cmd.spawn().expect("the program is installed")));
    for _ in 0..250 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return child;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{cmd:?} did not start listening on {addr}");
}

/// `baton serve` as its own process on a fresh loopback port: writes
/// `dir/baton.toml` as `[server] listen` followed by `body` (which may go
/// on with more `[server]` keys), starts it with `stderr` and waits until
/// it listens. Returns its address and the child (killed when dropped).
pub async fn serve_child(
    dir: &std::path::Path,
    body: &str,
    stderr: std::process::Stdio,
) -> (SocketAddr, Reap) {
    let addr: SocketAddr = format!("127.0.0.1:{}", refusing_addr().port())
        .parse()
        .unwrap();
    let cfg = dir.join("baton.toml");
    let incidents = if body.contains("[incidents]") {
        String::new()
    } else {
        format!(
            "\n[incidents]\ndir = \"{}\"\n",
            dir.join("incidents").display()
        )
    };
    std::fs::write(
        &cfg,
        format!("[server]\nlisten = [\"{addr}\"]\n{body}{incidents}"),
    )
    .unwrap();
    let child = peer(
        std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
            .args(["serve", "--config"])
            .arg(&cfg)
            .stderr(stderr),
        addr,
    )
    .await;
    (addr, child)
}

/// `baton serve --config cfg` as its own process, with its state
/// directory (incidents) under `state`, waiting until it listens on `addr`.
pub async fn serve_file(cfg: &std::path::Path, addr: SocketAddr, state: &std::path::Path) -> Reap {
    peer(
        std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
            .args(["serve", "--config"])
            .arg(cfg)
            .env("BATON_STATE_DIR", state)
            .stderr(std::process::Stdio::null()),
        addr,
    )
    .await
}

/// A TLS server config (ring, safe defaults) serving one certificate with
/// its PKCS#8 key.
pub fn tls_server(
    cert: rustls::pki_types::CertificateDer<'static>,
    pkcs8_key: Vec<u8>,
) -> std::sync::Arc<rustls::ServerConfig> {
    let cfg = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert],
        rustls::pki_types::PrivateKeyDer::Pkcs8(pkcs8_key.into()),
    )
    .unwrap();
    std::sync::Arc::new(cfg)
}

/// The step named `name` of a `baton doctor --json` document.
pub fn doctor_step(v: &Value, name: &str) -> Value {
    v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no {name} step in {v:#}"))
        .clone()
}

/// An HTTP/2 frame, as a client writes it.
pub fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The HTTP/2 frames in `bytes`: type, flags, stream, payload.
pub fn h2_frames(bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
    let mut frames = Vec::new();
    let mut at = 0;
    while at + 9 <= bytes.len() {
        let len = u32::from_be_bytes([0, bytes[at], bytes[at + 1], bytes[at + 2]]) as usize;
        let stream = u32::from_be_bytes(bytes[at + 5..at + 9].try_into().unwrap()) & 0x7fff_ffff;
        let end = (at + 9 + len).min(bytes.len());
        frames.push((
            bytes[at + 3],
            bytes[at + 4],
            stream,
            bytes[at + 9..end].to_vec(),
        ));
        at += 9 + len;
    }
    frames
}
