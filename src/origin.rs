//! Scripted origins: small HTTP/1.1 servers that behave well or fail in one
//! precise way. `baton demo` runs them, and the integration tests use them
//! as deterministic fault injectors (real sockets, loopback only).
//!
//! Owns: the fault scripts and a minimal request reader.
//! Must not: be used on the gateway's request path. Written on raw sockets,
//! not hyper, because the faults (half a head, an RST, an HTTP/2 frame) are
//! exactly what a correct HTTP library refuses to produce.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio::task::JoinHandle;

/// How an origin answers each request.
#[derive(Clone, Debug)]
pub enum Script {
    /// `200 OK` with this body, keep-alive.
    Ok(String),
    /// `200 OK` with a JSON echo of the request head and body size.
    Echo,
    /// This status and body, as the application's own answer.
    Status(u16, String),
    /// Reads the request and never answers.
    Stall,
    /// Reads the request and resets the connection (RST).
    Reset,
    /// Reads the request and closes without a byte (FIN).
    CloseBeforeHead,
    /// Sends part of a head, then closes.
    PartialHead,
    /// Answers with bytes that are not HTTP.
    Garbage,
    /// Answers like an HTTP/2-only server: a SETTINGS frame.
    Http2Only,
    /// A response head of about this many bytes.
    OversizedHead(usize),
    /// Promises `Content-Length: 100`, sends 10 bytes, closes.
    ShortBody,
    /// Sends the head, then one byte every interval, for `len` bytes.
    SlowBody { interval: Duration, len: usize },
    /// Normal answers; closes a keep-alive connection idle this long.
    IdleClose(Duration),
    /// Accepts and never reads (the request write stalls once buffers fill).
    NoRead,
    /// Answers `101 Switching Protocols`, then echoes bytes.
    Upgrade,
    /// `200 OK` with this body after a delay (a slow application).
    Delay(Duration, String),
    /// `200 OK` with `Keep-Alive: timeout=N` (seconds), keep-alive.
    KeepAliveHint(u64),
    /// Answers the first `n` requests on each connection, then resets it
    /// when the next request arrives (a keep-alive connection dying).
    ResetAfter(usize),
    /// Answers every request with exactly these bytes (framing tests), and
    /// closes the connection after them if `close`.
    Raw { bytes: Vec<u8>, close: bool },
}

/// A running origin; it stops when dropped.
pub struct Origin {
    pub addr: SocketAddr,
    /// Requests (or connections, for scripts that never read) seen.
    pub hits: Arc<AtomicUsize>,
    /// Connections accepted.
    pub conns: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Origin {
    /// Starts an origin on `127.0.0.1:0`.
    pub async fn start(script: Script) -> std::io::Result<Origin> {
        Self::start_on("127.0.0.1:0".parse().expect("literal"), script).await
    }

    pub async fn start_on(addr: SocketAddr, script: Script) -> std::io::Result<Origin> {
        let l = TcpListener::bind(addr).await?;
        let addr = l.local_addr()?;
        Ok(launch(l, addr, move |s, hits| {
            serve(s, script.clone(), hits)
        }))
    }

    /// Starts an origin that speaks TLS with `tls` on `127.0.0.1:0`.
    pub async fn start_tls(
        script: Script,
        tls: Arc<rustls::ServerConfig>,
    ) -> std::io::Result<Origin> {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        let addr = l.local_addr()?;
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        Ok(launch(l, addr, move |s, hits| {
            let (acceptor, script) = (acceptor.clone(), script.clone());
            async move {
                if let Ok(tls) = acceptor.accept(s).await {
                    serve(tls, script, hits).await;
                }
            }
        }))
    }

    /// Starts an origin on a Unix socket at `path`.
    pub async fn start_unix(path: &Path, script: Script) -> std::io::Result<Origin> {
        let l = UnixListener::bind(path)?;
        let addr = "0.0.0.0:0".parse().expect("literal");
        Ok(launch(l, addr, move |s, hits| {
            serve(s, script.clone(), hits)
        }))
    }
}

/// A listening socket the origins accept from.
trait Listen: Send + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn next(&self) -> impl Future<Output = std::io::Result<Self::Stream>> + Send;
}

impl Listen for TcpListener {
    type Stream = TcpStream;
    async fn next(&self) -> std::io::Result<TcpStream> {
        let (s, _) = self.accept().await?;
        let _ = s.set_nodelay(true);
        Ok(s)
    }
}

impl Listen for UnixListener {
    type Stream = tokio::net::UnixStream;
    async fn next(&self) -> std::io::Result<Self::Stream> {
        Ok(self.accept().await?.0)
    }
}

/// Accepts connections and serves each with `handle`, counting both.
fn launch<L, H, F>(l: L, addr: SocketAddr, handle: H) -> Origin
where
    L: Listen,
    H: Fn(L::Stream, Arc<AtomicUsize>) -> F + Send + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let hits = Arc::new(AtomicUsize::new(0));
    let conns = Arc::new(AtomicUsize::new(0));
    let (h, c) = (hits.clone(), conns.clone());
    let task = tokio::spawn(async move {
        let mut tasks = tokio::task::JoinSet::new();
        while let Ok(s) = l.next().await {
            c.fetch_add(1, Ordering::Relaxed);
            tasks.spawn(handle(s, h.clone()));
            while tasks.try_join_next().is_some() {}
        }
    });
    Origin {
        addr,
        hits,
        conns,
        task,
    }
}

/// An address on loopback where nothing listens (connections are refused).
///
/// The port stays bound, never listening, for the life of the process, so
/// no other socket picking a free port (`:0`) can take it and start
/// answering: a bound port is refused and is skipped by the kernel's
/// choice. `SO_REUSEADDR` is set, so a server told to listen on this
/// address later (the upstream that "comes back") still can: Linux lets
/// sockets that all set it share a port while at most one listens.
pub fn refusing_addr() -> SocketAddr {
    use socket2::{Domain, Socket, Type};
    static HELD: std::sync::Mutex<Vec<Socket>> = std::sync::Mutex::new(Vec::new());
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    s.set_reuse_address(true).expect("SO_REUSEADDR");
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind loopback");
    let addr = s
        .local_addr()
        .expect("local addr")
        .as_socket()
        .expect("inet");
    HELD.lock().unwrap_or_else(|e| e.into_inner()).push(s);
    addr
}

/// A listener whose accept queue is full, so new connects hang (a connect
/// timeout without netem): `listen(0)` and connections never accepted.
pub struct Blackhole {
    pub addr: SocketAddr,
    _listener: socket2::Socket,
    _fill: Vec<std::net::TcpStream>,
}

impl Blackhole {
    pub fn new() -> std::io::Result<Blackhole> {
        use socket2::{Domain, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        s.bind(&"127.0.0.1:0".parse::<SocketAddr>().expect("literal").into())?;
        s.listen(0)?;
        let addr = s.local_addr()?.as_socket().expect("inet");
        let mut fill = Vec::new();
        // Fill the accept queue until a connect no longer completes.
        for _ in 0..8 {
            match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                Ok(c) => fill.push(c),
                Err(_) => break,
            }
        }
        Ok(Blackhole {
            addr,
            _listener: s,
            _fill: fill,
        })
    }
}

struct Head {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body_len: usize,
}

/// Reads one request (head and body, chunked or not). `None` on EOF.
async fn read_request<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
) -> Option<Head> {
    let end = loop {
        // Like real servers, answer bytes that cannot start a request line
        // (a TLS ClientHello, binary junk) with 400 and close.
        if buf.first().is_some_and(|b| !b.is_ascii_uppercase()) {
            let _ = s
                .write_all(&response(400, "Bad Request", "not HTTP\n"))
                .await;
            return None;
        }
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        let mut tmp = [0u8; 8192];
        let n = s.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let text = String::from_utf8_lossy(&buf[..end]).to_string();
    buf.drain(..end);
    let mut lines = text.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let path = first.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let get = |k: &str| {
        headers
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    };
    let mut body_len = 0;
    if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            let line_end = loop {
                if let Some(i) = find(buf, b"\r\n") {
                    break i;
                }
                fill(s, buf).await?;
            };
            let size = usize::from_str_radix(
                String::from_utf8_lossy(&buf[..line_end])
                    .split(';')
                    .next()?
                    .trim(),
                16,
            )
            .ok()?;
            buf.drain(..line_end + 2);
            while buf.len() < size + 2 {
                fill(s, buf).await?;
            }
            buf.drain(..size + 2);
            body_len += size;
            if size == 0 {
                break;
            }
        }
    } else if let Some(n) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while buf.len() < n {
            fill(s, buf).await?;
        }
        buf.drain(..n);
        body_len = n;
    }
    Some(Head {
        method,
        path,
        headers,
        body_len,
    })
}

async fn fill<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> Option<()> {
    let mut tmp = [0u8; 65536];
    let n = s.read(&mut tmp).await.ok()?;
    if n == 0 {
        return None;
    }
    buf.extend_from_slice(&tmp[..n]);
    Some(())
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

fn response(status: u16, reason: &str, body: &str) -> Vec<u8> {
    format!("HTTP/1.1 {status} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nServer: origin\r\n\r\n{body}", content_type(body), body.len()).into_bytes()
}

/// What a scripted body is labelled: JSON when it is an object or array,
/// plain text otherwise.
fn content_type(body: &str) -> &'static str {
    let t = body.trim_start();
    if (t.starts_with('{') || t.starts_with('['))
        && serde_json::from_str::<serde_json::Value>(body).is_ok()
    {
        "application/json"
    } else {
        "text/plain; charset=utf-8"
    }
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    mut s: S,
    script: Script,
    hits: Arc<AtomicUsize>,
) {
    let mut buf = Vec::new();
    let mut served = 0usize;
    if let Script::NoRead = script {
        hits.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(3600)).await;
        return;
    }
    loop {
        let head = match &script {
            Script::IdleClose(idle) => {
                match tokio::time::timeout(*idle, read_request(&mut s, &mut buf)).await {
                    Ok(Some(h)) => h,
                    // Idle too long: close. Unread request bytes turn this into
                    // an RST, exactly as a real server's idle timer does.
                    _ => return,
                }
            }
            _ => match read_request(&mut s, &mut buf).await {
                Some(h) => h,
                None => return,
            },
        };
        hits.fetch_add(1, Ordering::Relaxed);
        let out: Vec<u8> = match &script {
            Script::Ok(body) => response(200, "OK", body),
            Script::Delay(d, body) => {
                tokio::time::sleep(*d).await;
                response(200, "OK", body)
            }
            Script::IdleClose(_) => response(200, "OK", "ok\n"),
            Script::KeepAliveHint(secs) => format!(
                "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nKeep-Alive: timeout={secs}\r\n\r\nok\n"
            )
            .into_bytes(),
            Script::ResetAfter(n) if served >= *n => {
                drop(buf);
                return reset(s);
            }
            Script::ResetAfter(_) => response(200, "OK", "ok\n"),
            Script::Echo => {
                let v = serde_json::json!({
                    "method": head.method,
                    "path": head.path,
                    "headers": head.headers.iter().map(|(k, v)| serde_json::json!([k, v])).collect::<Vec<_>>(),
                    "body_len": head.body_len,
                });
                let body = v.to_string();
                format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
            }
            Script::Status(code, body) => response(*code, "Application Error", body),
            Script::Stall => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return;
            }
            Script::Reset => {
                // SO_LINGER 0 makes close() send RST instead of FIN.
                drop(buf);
                return reset(s);
            }
            Script::CloseBeforeHead => return,
            Script::PartialHead => {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: te").await;
                let _ = s.flush().await;
                return;
            }
            Script::Garbage => {
                let _ = s.write_all(b"SSH-2.0-OpenSSH_9.2\r\n\r\n").await;
                return;
            }
            Script::Http2Only => {
                // SETTINGS (empty) then GOAWAY(PROTOCOL_ERROR), as an h2c-only
                // server answers an HTTP/1.1 request.
                let _ = s
                    .write_all(&[
                        0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
                    ])
                    .await;
                return;
            }
            Script::OversizedHead(n) => {
                let cookie = "a".repeat(*n);
                format!("HTTP/1.1 200 OK\r\nSet-Cookie: session={cookie}\r\nContent-Length: 3\r\n\r\nok\n").into_bytes()
            }
            Script::ShortBody => {
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
                    .await;
                let _ = s.flush().await;
                return;
            }
            Script::SlowBody { interval, len } => {
                if s.write_all(
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n").as_bytes(),
                )
                .await
                .is_err()
                {
                    return;
                }
                for _ in 0..*len {
                    tokio::time::sleep(*interval).await;
                    if s.write_all(b"x").await.is_err() {
                        return;
                    }
                }
                continue;
            }
            Script::Upgrade => {
                let _ = s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n").await;
                let (mut r, mut w) = tokio::io::split(s);
                if !buf.is_empty() {
                    let _ = w.write_all(&buf).await;
                }
                let _ = tokio::io::copy(&mut r, &mut w).await;
                return;
            }
            Script::Raw { bytes, close: true } => {
                let _ = s.write_all(bytes).await;
                return;
            }
            Script::Raw { bytes, .. } => bytes.clone(),
            Script::NoRead => unreachable!(),
        };
        served += 1;
        if s.write_all(&out).await.is_err() {
            return;
        }
    }
}

fn reset<S: Send + 'static>(s: S) {
    // Only TCP streams can reset; the generic stream is downcast through Any.
    let any: Box<dyn std::any::Any + Send> = Box::new(s);
    if let Ok(tcp) = any.downcast::<TcpStream>() {
        let _ = tcp.set_zero_linger();
    }
}
