//! Listeners: accept client connections (HTTP/1.1 and HTTP/2 prior
//! knowledge) and the admin endpoint, and drain on shutdown.
//!
//! Owns: binding, the accept loops, the per-connection hyper server, the
//! admin routes (`/metrics`, `/healthz`), and graceful shutdown.
//! Must not: make per-request decisions (that is `proxy`).

mod admin;
mod dashboard;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::gateway::{Gateway, Runtime};
use crate::observe::log::Logs;
use crate::proxy;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source} (is another process using the port? `ss -ltnp | grep {port}`)", port = addr.port())]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot open a log file: {0}")]
    Log(std::io::Error),
    #[error("cannot set up the DNS resolver: {0}")]
    Resolver(String),
}

/// A running gateway.
pub struct Running {
    pub addrs: Vec<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub gateway: Arc<Gateway>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// Completion signals of the extra worker threads.
    workers: Vec<tokio::sync::oneshot::Receiver<()>>,
}

impl Running {
    /// Stops accepting, lets in-flight requests finish (up to `grace`), and
    /// returns when every listener has ended.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.shutdown.send(true);
        let all = async {
            for t in self.tasks {
                let _ = t.await;
            }
            for w in self.workers {
                let _ = w.await;
            }
        };
        let _ = tokio::time::timeout(grace + Duration::from_millis(100), all).await;
        self.gateway.stop_supervisors().await;
    }
}

/// How many worker threads `workers = N` means (0: one per core).
pub fn worker_count(configured: usize) -> usize {
    match configured {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// A listening socket; with several workers each binds its own socket to
/// the same address with SO_REUSEPORT and the kernel spreads connections.
fn bind(addr: SocketAddr, reuse_port: bool) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.bind(&addr.into())?;
    s.listen(4096)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// Binds every listener, then serves until [`Running::shutdown`].
///
/// Worker 0 runs on the caller's runtime; each further worker is a thread
/// with its own single-threaded runtime and its own listening sockets, like
/// nginx's worker processes: no work stealing, no cross-thread wake-ups on
/// the request path.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let n = worker_count(config.workers);
    let reuse = n > 1;
    let mut sets: Vec<Vec<std::net::TcpListener>> = (0..n).map(|_| Vec::new()).collect();
    let mut addrs = Vec::new();
    for a in &config.listen {
        let first = bind(*a, reuse).map_err(|source| StartError::Bind { addr: *a, source })?;
        // Port 0 in tests: the other workers join the port the first got.
        let actual = first
            .local_addr()
            .map_err(|source| StartError::Bind { addr: *a, source })?;
        addrs.push(actual);
        sets[0].push(first);
        for set in sets.iter_mut().skip(1) {
            set.push(bind(actual, true).map_err(|source| StartError::Bind {
                addr: actual,
                source,
            })?);
        }
    }
    let admin_listener = match config.admin {
        Some(a) => Some(
            TcpListener::bind(a)
                .await
                .map_err(|source| StartError::Bind { addr: a, source })?,
        ),
        None => None,
    };
    let admin = admin_listener.as_ref().and_then(|l| l.local_addr().ok());
    let logs = Logs::open(&config.log).map_err(StartError::Log)?;
    let metrics = Arc::new(crate::observe::metrics::Metrics::new());
    let mut rt = Runtime::new(config, n, metrics).map_err(StartError::Resolver)?;
    rt.dialer.own = addrs.clone();
    let gateway = Arc::new(Gateway::new(rt, logs));
    gateway.spawn_incidents();
    for (key, problem) in crate::upstream::socket_findings(&gateway.runtime.load().config, false) {
        tracing::error!(target: "baton::sockets", key, "{}", problem.message());
    }
    // Supervised backends start before the listeners accept (connections
    // wait in the accept queue meanwhile; each start is bounded).
    gateway.sync_supervisors();
    gateway.backends_ready().await;
    let (tx, rx) = watch::channel(false);
    let mut tasks = Vec::new();
    let mut workers = Vec::new();
    let mut sets = sets.into_iter();
    for l in sets.next().unwrap_or_default() {
        let l = TcpListener::from_std(l).map_err(StartError::Log)?;
        tasks.push(tokio::spawn(accept_loop(l, gateway.clone(), rx.clone())));
    }
    for (i, set) in sets.enumerate() {
        let (gw, stop) = (gateway.clone(), rx.clone());
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(StartError::Log)?;
        std::thread::Builder::new()
            .name(format!("baton-worker-{}", i + 1))
            .spawn(move || {
                crate::upstream::set_worker(i + 1);
                rt.block_on(async move {
                    let mut loops = Vec::new();
                    for l in set {
                        if let Ok(l) = TcpListener::from_std(l) {
                            loops.push(tokio::spawn(accept_loop(l, gw.clone(), stop.clone())));
                        }
                    }
                    for l in loops {
                        let _ = l.await;
                    }
                });
                let _ = done_tx.send(());
            })
            .map_err(StartError::Log)?;
        workers.push(done_rx);
    }
    if let Some(l) = admin_listener {
        tasks.push(tokio::spawn(admin::admin_loop(
            l,
            gateway.clone(),
            rx.clone(),
        )));
    }
    Ok(Running {
        addrs,
        admin,
        gateway,
        shutdown: tx,
        tasks,
        workers,
    })
}

async fn accept_loop(l: TcpListener, gw: Arc<Gateway>, mut stop: watch::Receiver<bool>) {
    // Client limits are read once: changing them needs a restart.
    let limits = gw.runtime.load().config.limits.clone();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // A head larger than this gets 431 from hyper.
        .max_buf_size(limits.max_request_header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_request_header_bytes as u32);
    let builder = Arc::new(builder);
    let local = l
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            r = l.accept() => {
                let (s, peer) = match r {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if open.load(std::sync::atomic::Ordering::Relaxed) >= limits.max_connections {
                    // Over max_connections: close at once rather than let a
                    // flood exhaust file descriptors for everyone.
                    gw.metrics.connections_refused.inc();
                    drop(s);
                    continue;
                }
                let _ = s.set_nodelay(true);
                let gw = gw.clone();
                let guard = ConnCount::new(open.clone());
                let for_svc = gw.clone();
                let svc = service_fn(move |req: Request<Incoming>| {
                    let gw = for_svc.clone();
                    async move { Ok::<_, Infallible>(proxy::handle(gw, req, peer, local).await) }
                });
                let watcher = graceful.watcher();
                let builder = builder.clone();
                let deadline = limits.header_read_timeout;
                tokio::spawn(async move {
                    // Until the protocol is known, hyper has no deadline
                    // of its own: baton gives it one.
                    if !protocol_known(&s, deadline).await {
                        return;
                    }
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(s), svc);
                    if let Err(e) = watcher.watch(conn.into_owned()).await
                        && let Some(e) = e.downcast_ref::<hyper::Error>()
                    {
                        proxy::client_error(&gw, peer, e);
                    }
                    drop(guard);
                });
            }
            _ = stop.changed() => break,
        }
    }
    drop(l);
    graceful.shutdown().await;
}

/// Waits, up to `deadline`, until the client's first bytes say which
/// protocol it speaks: anything but the start of the HTTP/2 preface is
/// HTTP/1.x; the whole preface is HTTP/2. `false`: it sent nothing, only
/// part of the preface (`PRI * HTTP`), or closed, within the deadline; the
/// connection is dropped. hyper-util's protocol detection waits forever,
/// so a silent connection would hold a descriptor for good (nginx and
/// HAProxy close it within their header timeouts). Peeks: the bytes stay
/// for hyper.
async fn protocol_known(s: &tokio::net::TcpStream, deadline: Duration) -> bool {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let known = async {
        let mut buf = [0u8; 24];
        loop {
            match s.peek(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) if n == PREFACE.len() || !PREFACE.starts_with(&buf[..n]) => return true,
                // Part of the preface: wait for the rest.
                Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    };
    tokio::time::timeout(deadline, known).await.unwrap_or(false)
}

/// One open client connection, counted for max_connections.
struct ConnCount(Arc<std::sync::atomic::AtomicUsize>);

impl ConnCount {
    fn new(n: Arc<std::sync::atomic::AtomicUsize>) -> Self {
        n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ConnCount(n)
    }
}

impl Drop for ConnCount {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}
