//! Listeners: accept client connections (HTTP/1.1 and HTTP/2 prior
//! knowledge) and the admin endpoint, and drain on shutdown.
//!
//! Owns: binding, the accept loops, the per-connection server (baton's
//! own HTTP/1.1, `h1.rs`; hyper's HTTP/2), the
//! admin routes (`/metrics`, `/healthz`), and graceful shutdown.
//! Must not: make per-request decisions (that is `proxy`).

mod admin;
mod conn;
mod dashboard;
mod h1;
mod park;

#[doc(hidden)]
pub use h1::fuzz_request;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use http::Request;
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::core::body::RequestBody;
use crate::core::cause::Cause;
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
    /// The HTTPS listeners' addresses (`server.listen_tls`).
    pub tls_addrs: Vec<SocketAddr>,
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

/// Raises the open-file limit to its hard limit (each client connection
/// is a descriptor, and the usual soft limit of 1,024 is reached by a
/// thousand idle clients), and says so.
fn raise_descriptor_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if soft >= hard {
        tracing::info!(
            limit = soft,
            "open-file limit (client connections need one each)"
        );
        return;
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => tracing::info!(from = soft, to = hard, "raised the open-file limit"),
        Err(e) => tracing::warn!(limit = soft, error = %e, "cannot raise the open-file limit"),
    }
}

/// Binds every listener, then serves until [`Running::shutdown`].
///
/// Worker 0 runs on the caller's runtime; each further worker is a thread
/// with its own single-threaded runtime and its own listening sockets, like
/// nginx's worker processes: no work stealing, no cross-thread wake-ups on
/// the request path.
pub async fn start(config: Config) -> Result<Running, StartError> {
    raise_descriptor_limit();
    let n = worker_count(config.workers);
    let reuse = n > 1;
    // Each worker's listeners, and whether each is an HTTPS one.
    let mut sets: Vec<Vec<(std::net::TcpListener, bool)>> = (0..n).map(|_| Vec::new()).collect();
    let (mut addrs, mut tls_addrs) = (Vec::new(), Vec::new());
    let all = config.listen.iter().map(|a| (a, false));
    for (a, tls) in all.chain(config.tls.listen.iter().map(|a| (a, true))) {
        let first = bind(*a, reuse).map_err(|source| StartError::Bind { addr: *a, source })?;
        // Port 0 in tests: the other workers join the port the first got.
        let actual = first
            .local_addr()
            .map_err(|source| StartError::Bind { addr: *a, source })?;
        if tls { &mut tls_addrs } else { &mut addrs }.push(actual);
        sets[0].push((first, tls));
        for set in sets.iter_mut().skip(1) {
            let l = bind(actual, true).map_err(|source| StartError::Bind {
                addr: actual,
                source,
            })?;
            set.push((l, tls));
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
    if let Some(u) = &config.user {
        drop_privileges(u, &config).map_err(StartError::Log)?;
    }
    let metrics = Arc::new(crate::observe::metrics::Metrics::new());
    let mut rt = Runtime::new(config, n, metrics).map_err(StartError::Resolver)?;
    rt.dialer.own = addrs.iter().chain(&tls_addrs).copied().collect();
    let gateway = Arc::new(Gateway::new(rt, logs));
    if let Some(a) = tls_addrs.first() {
        gateway.https_port.store(a.port(), Ordering::Relaxed);
    }
    gateway.spawn_incidents();
    gateway.publish_certificates();
    gateway.spawn_certificate_watch();
    crate::gateway::ocsp::spawn(&gateway);
    gateway.sync_acme();
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
    for (l, tls) in sets.next().unwrap_or_default() {
        let l = TcpListener::from_std(l).map_err(StartError::Log)?;
        tasks.push(tokio::spawn(accept_loop(
            l,
            tls,
            gateway.clone(),
            rx.clone(),
        )));
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
                    for (l, tls) in set {
                        if let Ok(l) = TcpListener::from_std(l) {
                            loops.push(tokio::spawn(accept_loop(l, tls, gw.clone(), stop.clone())));
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
        tls_addrs,
        admin,
        gateway,
        shutdown: tx,
        tasks,
        workers,
    })
}

/// `server.user`: with the ports bound, the logs open and the keys read,
/// baton becomes that user for good (supplementary groups, group, then
/// user; glibc applies each to every thread). What it writes later (the
/// state directory: incidents, ACME; the log files, reopened on reload)
/// is handed to the user first. Started as that user already: nothing to
/// do; as anyone else: an error, not a silent run as the wrong account.
fn drop_privileges(u: &crate::config::RunAs, config: &Config) -> std::io::Result<()> {
    use nix::unistd::{Gid, Uid};
    let me = nix::unistd::geteuid();
    if me.as_raw() == u.uid {
        return Ok(());
    }
    if !me.is_root() {
        return Err(std::io::Error::other(format!(
            "server.user = {:?} needs baton to start as root (it runs as uid {me})",
            u.name
        )));
    }
    let mut owned: Vec<std::path::PathBuf> = vec![crate::config::state_dir()];
    owned.extend(config.incidents.dir.clone());
    owned.extend(config.tls.acme.as_ref().map(|a| a.dir.clone()));
    for t in [&config.log.access, &config.log.errors] {
        if let crate::config::LogTarget::File(p) = t {
            owned.push(p.clone());
        }
    }
    let (uid, gid) = (Uid::from_raw(u.uid), Gid::from_raw(u.gid));
    let _ = std::fs::create_dir_all(crate::config::state_dir());
    for p in &owned {
        hand_over(p, uid, gid, 3);
    }
    let name = std::ffi::CString::new(u.name.clone()).map_err(std::io::Error::other)?;
    nix::unistd::initgroups(&name, gid)?;
    nix::unistd::setgid(gid)?;
    nix::unistd::setuid(uid)?;
    // Never back: a process that could regain root has not dropped it.
    if nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
        return Err(std::io::Error::other("root could be regained after setuid"));
    }
    tracing::info!(user = %u.name, uid = u.uid, "privileges dropped");
    Ok(())
}

/// `chown` a path (and what a directory holds, `depth` levels down).
fn hand_over(p: &std::path::Path, uid: nix::unistd::Uid, gid: nix::unistd::Gid, depth: u32) {
    if nix::unistd::chown(p, Some(uid), Some(gid)).is_err() {
        return;
    }
    if depth > 0
        && let Ok(entries) = std::fs::read_dir(p)
    {
        for e in entries.flatten() {
            hand_over(&e.path(), uid, gid, depth - 1);
        }
    }
}

/// What an accept loop knows of its connections: how many are open (for
/// `max_connections` and the drain at shutdown) and which, to close idle
/// ones when descriptors run out.
struct Conns {
    open: Arc<AtomicUsize>,
    /// Notified when the last connection closes.
    drained: Arc<Notify>,
    all: Vec<Weak<conn::Shared>>,
    /// When the last "out of descriptors" warning was logged, and how many
    /// more happened since.
    warned: Option<Instant>,
    unwarned: u64,
}

/// How many idle connections one descriptor shortage closes (nginx
/// closes up to 32 reusable connections the same way).
const SHED_AT_ONCE: usize = 32;

impl Conns {
    fn new() -> Self {
        Conns {
            open: Arc::new(AtomicUsize::new(0)),
            drained: Arc::new(Notify::new()),
            all: Vec::new(),
            warned: None,
            unwarned: 0,
        }
    }

    fn add(&mut self, shared: &Arc<conn::Shared>) -> ConnCount {
        if self.all.len() >= 64 && self.all.len() >= 2 * self.open.load(Ordering::Relaxed) {
            self.all.retain(|w| w.strong_count() > 0);
        }
        self.all.push(Arc::downgrade(shared));
        self.open.fetch_add(1, Ordering::Relaxed);
        ConnCount(self.open.clone(), self.drained.clone())
    }

    /// Out of descriptors: asks up to [`SHED_AT_ONCE`] connections with no
    /// request in flight (oldest first) to close, counting the `parked`
    /// ones the park closed first, and warns at most once a
    /// second. Returns how many were asked.
    fn shed(&mut self, e: &std::io::Error, parked: usize) -> usize {
        // `parked` were closed in the park already (idle, oldest first).
        let mut shed = parked;
        for w in &self.all {
            if shed == SHED_AT_ONCE {
                break;
            }
            if let Some(c) = w.upgrade()
                && c.idle()
            {
                c.close.notify_one();
                shed += 1;
            }
        }
        let now = Instant::now();
        if self
            .warned
            .is_none_or(|t| now - t >= Duration::from_secs(1))
        {
            tracing::warn!(
                error = %e,
                open = self.open.load(Ordering::Relaxed),
                closed_idle = shed,
                more_since_last = self.unwarned,
                "out of file descriptors: closing idle client connections to accept new ones (raise the limit: LimitNOFILE= in the unit, or ulimit -n)"
            );
            self.warned = Some(now);
            self.unwarned = 0;
        } else {
            self.unwarned += 1;
        }
        shed
    }

    /// Asks every open connection to close once it has no request in
    /// flight (the gateway is stopping).
    fn close_all(&self) {
        for c in self.all.iter().filter_map(Weak::upgrade) {
            c.close.notify_one();
        }
    }

    /// Waits until every connection has closed.
    async fn drain(&self) {
        loop {
            let n = self.drained.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if self.open.load(Ordering::Relaxed) == 0 {
                return;
            }
            n.await;
        }
    }
}

/// Whether accept failed for want of descriptors (the process's or the
/// system's).
fn out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

async fn accept_loop(l: TcpListener, tls: bool, gw: Arc<Gateway>, mut stop: watch::Receiver<bool>) {
    // Client limits are read once: changing them needs a restart.
    let limits = gw.runtime.load().config.limits.clone();
    let deadlines = conn::Deadlines::new(&limits);
    let handshake_timeout = gw.runtime.load().config.tls.handshake_timeout;
    // HTTP/1.1 is baton's own (server/h1.rs); HTTP/2 is hyper's.
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        // The decoded header list, held to the HTTP/1.1 head's limit
        // (HPACK can make a few bytes decode to many).
        .max_header_list_size(limits.max_request_header_bytes as u32)
        // A peer that vanished while streams are open: a PING unanswered
        // for 20 s closes the connection.
        .keep_alive_interval(Some(H2_PING_INTERVAL))
        .keep_alive_timeout(H2_PING_TIMEOUT);
    let builder = Arc::new(builder);
    let local = l
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let mut conns = Conns::new();
    // Idle HTTP/1.1 connections of a plain listener are parked without a
    // task (server/park.rs).
    let (mut park, door) = match tls {
        true => (None, None),
        false => {
            match park::Park::new(limits.idle_timeout, gw.metrics.connections_parked.clone()) {
                Ok((p, d)) => (Some(p), Some(d)),
                Err(e) => {
                    tracing::warn!(error = %e, "idle connections will keep their tasks: no epoll instance for the park");
                    (None, None)
                }
            }
        }
    };
    loop {
        tokio::select! {
            p = woken(&mut park) => {
                let door = door.clone().expect("a park has a door");
                tokio::spawn(resume(p, gw.clone(), local, limits.max_request_header_bytes, deadlines, door));
            }
            r = l.accept() => {
                let (s, peer) = match r {
                    Ok(x) => x,
                    Err(e) if out_of_descriptors(&e) => {
                        // Keep serving: idle connections make room (their
                        // tasks close them), else back off.
                        let parked = park.as_mut().map_or(0, |p| p.shed(SHED_AT_ONCE));
                        let pause = if conns.shed(&e, parked) > 0 { 5 } else { 50 };
                        tokio::time::sleep(Duration::from_millis(pause)).await;
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if conns.open.load(Ordering::Relaxed) >= limits.max_connections {
                    // Over max_connections: close at once rather than let a
                    // flood exhaust file descriptors for everyone.
                    gw.metrics.connections_refused.inc();
                    drop(s);
                    continue;
                }
                let _ = s.set_nodelay(true);
                let shared = Arc::new(conn::Shared::default());
                let count = conns.add(&shared);
                tokio::spawn(serve_connection(
                    s,
                    Opening {
                        tls: tls.then_some(handshake_timeout),
                        proxy_protocol: limits.proxy_protocol,
                        door: door.clone(),
                    },
                    peer,
                    local,
                    gw.clone(),
                    builder.clone(),
                    limits.max_request_header_bytes,
                    shared,
                    deadlines,
                    stop.clone(),
                    count,
                ));
            }
            _ = stop.changed() => break,
        }
    }
    drop(l);
    // Parked connections are idle: closed at once.
    drop(park);
    conns.close_all();
    conns.drain().await;
}

/// The next parked connection whose client sent something, if the
/// listener parks.
async fn woken(park: &mut Option<park::Park>) -> park::Parked {
    match park {
        Some(p) => p.next().await,
        None => std::future::pending().await,
    }
}

/// A parked connection whose client sent something, served again in
/// its own task.
#[allow(clippy::manual_async_fn)] // the task's size: see serve_connection
fn resume(
    p: park::Parked,
    gw: Arc<Gateway>,
    local: SocketAddr,
    max_head: usize,
    deadlines: conn::Deadlines,
    door: park::Door,
) -> impl Future<Output = ()> {
    async move {
        let Ok(tcp) = tokio::net::TcpStream::from_std(p.tcp) else {
            return;
        };
        let io = conn::Guarded::resumed(
            conn::Stream::Plain(tcp),
            p.shared.clone(),
            deadlines,
            p.idle_since,
        );
        let site = h1::Site {
            gw,
            peer: p.peer,
            local,
            https: false,
            max_head,
            parks: true,
        };
        if let h1::Served::Idle(tcp, since, peer) =
            h1::serve(h1::Conn::new(io), site, p.shared.clone()).await
        {
            park_idle((tcp, since, peer), p.shared, p.count, Some(door));
        }
    }
}

/// Gives an idle HTTP/1.1 connection to the park (`door`: server/park.rs).
fn park_idle(
    (tcp, idle_since, peer): (std::net::TcpStream, tokio::time::Instant, SocketAddr),
    shared: Arc<conn::Shared>,
    count: ConnCount,
    door: Option<park::Door>,
) {
    if let Some(door) = door {
        // A park that is gone (the gateway stopping) drops it: closed, as
        // an idle connection then is.
        let _ = door.send(park::Parked {
            tcp,
            peer,
            idle_since,
            shared,
            count,
        });
    }
}

/// An HTTP/2 PING after this long without frames from the client...
const H2_PING_INTERVAL: Duration = Duration::from_secs(60);
/// ...must be answered within this, or the connection is closed.
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a connection asked to close may take to say so (HTTP/2's
/// GOAWAY) before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Serves one client connection until it ends, a deadline passes, it is
/// asked to close, or the gateway stops.
#[allow(clippy::too_many_arguments)]
#[allow(clippy::manual_async_fn)] // the task's size: see the comment
fn serve_connection(
    mut s: tokio::net::TcpStream,
    opening: Opening,
    mut peer: SocketAddr,
    local: SocketAddr,
    gw: Arc<Gateway>,
    builder: Arc<http2::Builder<TokioExecutor>>,
    max_head: usize,
    shared: Arc<conn::Shared>,
    deadlines: conn::Deadlines,
    mut stop: watch::Receiver<bool>,
    count: ConnCount,
) -> impl Future<Output = ()> {
    // An `async move` block, not an `async fn`: an `async fn` keeps its
    // arguments twice in the task (as arguments and as locals), for the
    // connection's life.
    async move {
        // Named, so the block takes it: the connection counts as open
        // (`max_connections`, the drain at stop) until its task ends.
        let _open = &count;
        // Until the protocol is known, neither server has a deadline of its
        // own: baton gives it one.
        let tls = opening.tls;
        let first = async {
            if opening.proxy_protocol {
                match proxy_header(&mut s, deadlines.header).await {
                    Ok(Some(client)) => peer = client,
                    Ok(None) => {}
                    Err(why) => {
                        tracing::info!(target: "baton::proxy_protocol", peer = %peer.ip(), "closed a connection without a valid PROXY protocol header: {why}");
                        return None;
                    }
                }
            }
            match tls {
                Some(limit) => tls_handshake(&gw, s, peer, limit).await,
                None => match protocol_known(&s, deadlines.header).await {
                    Some(Speaks::Http1) => Some((conn::Stream::Plain(s), false)),
                    Some(Speaks::Http2) => Some((conn::Stream::Plain(s), true)),
                    Some(Speaks::Neither) => {
                        proxy::client_fault(&gw, peer, Cause::RequestMalformed);
                        refuse_unknown_protocol(s).await;
                        None
                    }
                    None => None,
                },
            }
        };
        // Boxed, as the HTTP/2 connection below: the task an idle HTTP/1.1
        // connection keeps is then only what HTTP/1.1 needs (the TLS
        // handshake's and hyper's HTTP/2 state would size it at ~9.6 KB).
        let first = Box::pin(first);
        let (s, h2) = tokio::select! {
            r = first => match r {
                Some(x) => x,
                None => return,
            },
            _ = shared.close.notified() => return,
            _ = stop.changed() => return,
        };
        let https = tls.is_some();
        let io = conn::Guarded::new(s, shared.clone(), deadlines, h2);
        if !h2 {
            let site = h1::Site {
                gw,
                peer,
                local,
                https,
                max_head,
                parks: opening.door.is_some(),
            };
            if let h1::Served::Idle(tcp, since, peer) =
                h1::serve(h1::Conn::new(io), site, shared.clone()).await
            {
                park_idle((tcp, since, peer), shared, count, opening.door);
            }
            return;
        }
        let site = (peer, local, https);
        Box::pin(serve_h2(io, gw, builder, shared, site, stop)).await;
    }
}

/// Serves HTTP/2 on `io` with hyper until it ends, or closes it
/// gracefully (GOAWAY) when asked to or when the gateway stops.
async fn serve_h2(
    io: conn::Guarded,
    gw: Arc<Gateway>,
    builder: Arc<http2::Builder<TokioExecutor>>,
    shared: Arc<conn::Shared>,
    (peer, local, https): (SocketAddr, SocketAddr, bool),
    mut stop: watch::Receiver<bool>,
) {
    let for_svc = gw.clone();
    let for_svc_shared = shared.clone();
    let svc = service_fn(move |req: Request<Incoming>| {
        let active = conn::Active::new(&for_svc_shared);
        let gw = for_svc.clone();
        // Boxed: hyper spawns a task a stream, and the stream's future is
        // otherwise moved whole (~5 KB) into it, and more than once. Made
        // in its box (allocated first), not on the stack and copied.
        Box::into_pin(Box::write(Box::new_uninit(), async move {
            let req = req.map(RequestBody::Hyper);
            let resp = proxy::handle(gw, req, peer, local, https).await;
            Ok::<_, Infallible>(resp.map(|b| conn::Tracked::new(b, active)))
        }))
    });
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let grace = tokio::select! {
        r = conn.as_mut() => {
            ended(&gw, peer, &shared, r);
            return;
        }
        // Asked to close: by a deadline or a shortage (GOAWAY, then a
        // short grace), or because the gateway stops (in-flight streams
        // finish).
        _ = shared.close.notified() => (!*stop.borrow()).then_some(CLOSE_GRACE),
        _ = stop.changed() => None,
    };
    conn.as_mut().graceful_shutdown();
    let r = match grace {
        Some(g) => tokio::time::timeout(g, conn).await.unwrap_or(Ok(())),
        None => conn.await,
    };
    ended(&gw, peer, &shared, r);
}

/// Logs how a client connection ended, when it says something: a head
/// that did not arrive in time (baton answered 408), a client that
/// stopped reading, an HTTP/2 error of the client's. (HTTP/1.1's
/// malformed and oversized heads are logged where they are answered,
/// `server/h1.rs`.)
fn ended(gw: &Gateway, peer: SocketAddr, shared: &conn::Shared, r: Result<(), hyper::Error>) {
    match shared.expired() {
        conn::EXPIRED_HEAD => proxy::client_fault(gw, peer, Cause::RequestTimeout),
        conn::EXPIRED_SEND => tracing::info!(
            client = %peer.ip(),
            "closed a client connection that took no response data for send_timeout"
        ),
        _ => {
            if let Err(e) = r {
                proxy::client_error(gw, peer, &e);
            }
        }
    }
}

/// What a new connection's first bytes say it speaks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Speaks {
    Http1,
    Http2,
    /// A complete first line that is not an HTTP/1.x request line and not
    /// the HTTP/2 preface: an HTTP/2 client with a broken preface, or
    /// something else entirely.
    Neither,
}

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What `first` (the bytes so far) says, or `None` to wait for more.
/// HTTP/1.x whenever it may be (anything the HTTP/1.1 reader should
/// answer, a TLS handshake to this plain port included: a 400); `Neither` only for
/// a complete line of text with no HTTP version in it.
fn speaks(first: &[u8], full: bool) -> Option<Speaks> {
    let n = first.len().min(PREFACE.len());
    if PREFACE.starts_with(&first[..n]) {
        return (n == PREFACE.len()).then_some(Speaks::Http2);
    }
    let text = |b: &u8| b.is_ascii_graphic() || *b == b' ' || *b == b'\r';
    match first.iter().position(|&b| b == b'\n') {
        Some(end) if first[..end].iter().all(text) => {
            let line = &first[..end];
            let http = line.windows(6).any(|w| w == b" HTTP/");
            Some(if http { Speaks::Http1 } else { Speaks::Neither })
        }
        None if !full && first.iter().all(text) => None,
        _ => Some(Speaks::Http1),
    }
}

/// Waits, up to `deadline`, until the client's first bytes say which
/// protocol it speaks (`speaks`). `None`: it sent nothing, only part of
/// the preface (`PRI * HTTP`) or of a first line, or closed, within the
/// deadline; the connection is dropped (nginx and HAProxy close it within
/// their header timeouts). Peeks ([`peek_until`]): the bytes stay for the
/// protocol's server.
async fn protocol_known(s: &tokio::net::TcpStream, deadline: Duration) -> Option<Speaks> {
    let mut buf = [0u8; 256];
    peek_until(s, &mut buf, deadline, speaks).await.ok()
}

/// How [`peek_until`] ended without an answer.
enum PeekEnd {
    /// The client closed (or the read failed).
    Closed,
    TimedOut,
}

/// Peeks at a new connection's first bytes (they stay for whoever reads
/// next) until `decide`, given the bytes so far and whether `buf` is full,
/// has an answer, within `limit`. Bytes that arrive in pieces are looked at
/// again after 5 ms, doubling to 1 s, so that slow clients cost few
/// wake-ups.
async fn peek_until<T>(
    s: &tokio::net::TcpStream,
    buf: &mut [u8],
    limit: Duration,
    mut decide: impl FnMut(&[u8], bool) -> Option<T>,
) -> Result<T, PeekEnd> {
    let known = async {
        let mut pause = Duration::from_millis(5);
        loop {
            match s.peek(buf).await {
                Ok(0) | Err(_) => return Err(PeekEnd::Closed),
                Ok(n) => {
                    if let Some(t) = decide(&buf[..n], n == buf.len()) {
                        return Ok(t);
                    }
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    };
    tokio::time::timeout(limit, known)
        .await
        .unwrap_or(Err(PeekEnd::TimedOut))
}

/// Reads the HTTP/2 client preface off a TLS stream (it cannot be
/// peeked), by `deadline`: `Ok` with the bytes read (all of the preface),
/// `Err` when they are not the preface, `None` when the client closed or
/// went silent.
async fn h2_preface(
    tls: &mut tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    deadline: tokio::time::Instant,
) -> Option<Result<bytes::Bytes, ()>> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::with_capacity(PREFACE.len());
    let mut buf = [0u8; 24];
    while got.len() < PREFACE.len() {
        let want = PREFACE.len() - got.len();
        let n = match tokio::time::timeout_at(deadline, tls.read(&mut buf[..want])).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return None,
        };
        got.extend_from_slice(&buf[..n]);
        if !PREFACE.starts_with(&got) {
            return Some(Err(()));
        }
    }
    Some(Ok(bytes::Bytes::from(got)))
}

/// How a listener's connections begin.
struct Opening {
    /// An HTTPS listener: the handshake's deadline.
    tls: Option<Duration>,
    /// A PROXY protocol header comes first (`server.proxy_protocol`).
    proxy_protocol: bool,
    /// Where an idle HTTP/1.1 connection is parked (plain listeners).
    door: Option<park::Door>,
}

/// Reads a PROXY protocol header (v1 text or v2 binary, HAProxy's
/// spec) off the front of `s`, within `limit`: the client it names, or
/// `None` for a `LOCAL`/`UNKNOWN` header (a health check by the proxy
/// itself: the connection's own address stands). `Err`: no valid header,
/// and the connection is closed, as nginx and HAProxy do. Parsed by the
/// `ppp` crate; only the header's bytes are consumed.
async fn proxy_header(
    s: &mut tokio::net::TcpStream,
    limit: Duration,
) -> Result<Option<SocketAddr>, &'static str> {
    use ppp::{HeaderResult, PartialResult};
    use tokio::io::AsyncReadExt;
    // v1 is at most 107 bytes; v2 is 16 plus its length (addresses and
    // TLVs: 536 bytes is the spec's advice for a first read).
    let mut buf = vec![0u8; 536];
    let found = peek_until(s, &mut buf, limit, |first, full| {
        let parsed = HeaderResult::parse(first);
        if parsed.is_incomplete() {
            return full.then_some(Err("header longer than 536 bytes"));
        }
        Some(Ok(match parsed {
            HeaderResult::V1(Ok(h)) => (
                h.header.len(),
                match h.addresses {
                    ppp::v1::Addresses::Tcp4(a) => {
                        Some(SocketAddr::from((a.source_address, a.source_port)))
                    }
                    ppp::v1::Addresses::Tcp6(a) => {
                        Some(SocketAddr::from((a.source_address, a.source_port)))
                    }
                    ppp::v1::Addresses::Unknown => None,
                },
            ),
            HeaderResult::V2(Ok(h)) => (
                h.header.len(),
                match (h.command, h.addresses) {
                    (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv4(a)) => {
                        Some(SocketAddr::from((a.source_address, a.source_port)))
                    }
                    (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv6(a)) => {
                        Some(SocketAddr::from((a.source_address, a.source_port)))
                    }
                    _ => None,
                },
            ),
            _ => return Some(Err("not a PROXY protocol header")),
        }))
    })
    .await;
    let (len, client) = match found {
        Ok(r) => r?,
        Err(PeekEnd::Closed) => return Err("closed before the header"),
        Err(PeekEnd::TimedOut) => return Err("no header within header_read_timeout"),
    };
    s.read_exact(&mut buf[..len])
        .await
        .map_err(|_| "read failed")?;
    Ok(client)
}

/// The TLS handshake of an HTTPS listener's connection, within `limit`
/// from accept: the stream and whether ALPN chose HTTP/2. `None` when the
/// connection is to be dropped: silent, closed, plain HTTP (answered with
/// a 400 that says to use https, as nginx's 497 does), or a failed
/// handshake (logged with the client's address and the reason).
async fn tls_handshake(
    gw: &Gateway,
    s: tokio::net::TcpStream,
    peer: SocketAddr,
    limit: Duration,
) -> Option<(conn::Stream, bool)> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(deadline, s.peek(&mut first)).await {
        Ok(Ok(1..)) => {}
        _ => return None,
    }
    // 0x16: a TLS handshake record; anything else is not TLS.
    if first[0] != 0x16 {
        tls_failure(gw, "plain_http");
        proxy::client_fault(gw, peer, Cause::RequestMalformed);
        plain_http_to_tls_port(s).await;
        return None;
    }
    let accept = tokio_rustls::TlsAcceptor::from(gw.tls.server_config.clone()).accept(s);
    match tokio::time::timeout_at(deadline, accept).await {
        Ok(Ok(tls)) => {
            let alpn = tls.get_ref().1.alpn_protocol();
            if alpn == Some(crate::gateway::tls::ACME_TLS_ALPN) {
                // An ACME TLS-ALPN-01 validation: the handshake was all.
                return None;
            }
            let h2 = alpn == Some(b"h2");
            let mut tls = Box::new(tls);
            let first = if h2 {
                // hyper closes on an invalid HTTP/2 preface without a word;
                // RFC 9113 §3.4 wants GOAWAY(PROTOCOL_ERROR), as on the
                // plain port.
                match h2_preface(&mut tls, deadline).await {
                    Some(Ok(first)) => first,
                    Some(Err(())) => {
                        use tokio::io::AsyncWriteExt;
                        let _ = tokio::time::timeout(Duration::from_secs(1), async {
                            let _ = tls.write_all(&GOAWAY_PROTOCOL_ERROR).await;
                            let _ = tls.shutdown().await;
                        })
                        .await;
                        return None;
                    }
                    None => return None,
                }
            } else {
                bytes::Bytes::new()
            };
            Some((conn::Stream::Tls(tls, first), h2))
        }
        Ok(Err(e)) => {
            let reason = handshake_failure(&e);
            tls_failure(gw, reason);
            tracing::info!(target: "baton::tls", client = %peer.ip(), reason, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tls_failure(gw, "timeout");
            tracing::info!(target: "baton::tls", client = %peer.ip(), reason = "timeout", "TLS handshake not complete within tls_handshake_timeout");
            None
        }
    }
}

fn tls_failure(gw: &Gateway, reason: &'static str) {
    gw.metrics
        .tls_handshake_failures
        .get_or_create(&crate::observe::metrics::TlsFailureLabels { reason })
        .inc();
}

/// Why a client's TLS handshake failed, in a word for the metric and log:
/// rustls's error kinds, grouped as an operator acts on them.
fn handshake_failure(e: &std::io::Error) -> &'static str {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        return "client_closed";
    }
    let Some(r) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return "protocol";
    };
    match r {
        rustls::Error::General(m) if m.contains("no server certificate") => "unknown_server_name",
        rustls::Error::PeerIncompatible(p) => {
            let p = format!("{p:?}");
            if p.contains("Version") || p.contains("Tls12") {
                "no_shared_version"
            } else {
                "no_shared_cipher"
            }
        }
        // Typically `bad_certificate`/`unknown_ca`: the client does not
        // trust the certificate baton served (expired, wrong name, missing
        // intermediate).
        rustls::Error::AlertReceived(_) => "client_alert",
        _ => "protocol",
    }
}

/// The answer to plain HTTP on an HTTPS port: a 400 that says what to do
/// (the client cannot read a TLS alert), then the close.
async fn plain_http_to_tls_port(mut s: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const BODY: &str = "<!doctype html><title>400 Use HTTPS</title><h1>This port speaks HTTPS</h1><p>The request was sent as plain HTTP to a port that expects HTTPS. Use an <code>https://</code> address.</p>\n";
    let head = format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nProxy-Status: baton; error=http_request_error; details=\"plain HTTP to an HTTPS port\"\r\nConnection: close\r\n\r\n",
        BODY.len()
    );
    // Read what the client sent first, so that closing does not reset
    // the connection before it reads the answer.
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await;
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        s.write_all(format!("{head}{BODY}").as_bytes()),
    )
    .await;
    let _ = s.shutdown().await;
}

/// An HTTP/2 GOAWAY frame: length 8, type 7, no flags, stream 0; last
/// stream 0, error PROTOCOL_ERROR (1).
const GOAWAY_PROTOCOL_ERROR: [u8; 17] = [0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// Ends a connection whose first line is neither HTTP/1.x nor the HTTP/2
/// preface: an HTTP/2 `GOAWAY` with `PROTOCOL_ERROR` (RFC 9113 §3.4: an
/// invalid preface is a connection error), then the close.
async fn refuse_unknown_protocol(mut s: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    let _ = tokio::time::timeout(Duration::from_secs(1), s.write_all(&GOAWAY_PROTOCOL_ERROR)).await;
}

/// One open client connection, counted for max_connections and the drain.
struct ConnCount(Arc<AtomicUsize>, Arc<Notify>);

impl Drop for ConnCount {
    fn drop(&mut self) {
        if self.0.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.1.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Speaks, speaks};

    #[allow(clippy::too_many_arguments)]
    fn future_size<A, B, C, D, E, F, G, H, I, J, K, R: std::future::Future>(
        _: impl Fn(A, B, C, D, E, F, G, H, I, J, K) -> R,
    ) -> usize {
        std::mem::size_of::<R>()
    }

    /// What an idle HTTP/1.1 connection's task holds besides its socket:
    /// the request's future, the TLS handshake and HTTP/2 are boxed while
    /// they run (9.6 KB when they were not, 36 KB a connection with
    /// hyper's buffers), and no argument or head is kept twice (1.6 KB
    /// before; docs/benchmarks.md).
    #[test]
    fn an_idle_connection_keeps_a_small_task() {
        let n = future_size(super::serve_connection);
        assert!(n <= 800, "serve_connection's future is {n} bytes");
    }

    #[test]
    fn first_bytes_name_the_protocol() {
        for (first, full, expect) in [
            (
                &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
                false,
                Some(Speaks::Http2),
            ),
            (b"PRI * HTTP", false, None),
            (
                b"GET / HTTP/1.1\r\nHost: t\r\n\r\n",
                false,
                Some(Speaks::Http1),
            ),
            (b"GET /a-long-path", false, None),
            (b"GET /a-long-path", true, Some(Speaks::Http1)),
            // A TLS ClientHello to this plain port: the HTTP/1.1 reader answers 400.
            (b"\x16\x03\x01\x02\x00\x01", false, Some(Speaks::Http1)),
            // h2spec 3.5/2: an invalid preface.
            (
                b"INVALID CONNECTION PREFACE\r\n\r\n",
                false,
                Some(Speaks::Neither),
            ),
            (b"GET /\r\n", false, Some(Speaks::Neither)),
        ] {
            assert!(speaks(first, full) == expect, "{first:?}");
        }
    }
}
