//! Opening a connection: TCP (names through the resolver, every address
//! in turn), Unix sockets, TLS with rustls; handing a wire to hyper's
//! client for the requests baton does not drive itself.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper::client::conn::http1::{self};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpStream, UnixStream};

use super::*;
use crate::config::{ServerAddr, UpstreamConfig};
use crate::core::cause::Cause;
use crate::core::failure::Failure;
use rustls::pki_types::ServerName;

/// Builds the TLS client for an upstream: Mozilla's roots plus `tls_ca`,
/// aws-lc-rs as the provider, ALPN `h2` then `http/1.1` for an HTTP/2 upstream
/// (`http/1.1` otherwise), and the client certificate when one is set.
pub(super) fn tls_client(
    tls: &crate::config::UpstreamTls,
) -> Result<tokio_rustls::TlsConnector, rustls::Error> {
    build_connector(&tls.ca, tls.client.clone(), tls.http2)
}

/// Presents one certificate to every server that asks (mTLS).
#[derive(Debug)]
struct ClientCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for ClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

/// A verifying TLS client: Mozilla's roots plus `ca`, aws-lc-rs, ALPN
/// http/1.1 (upstreams, and the alert webhook with no extra roots).
pub(crate) fn tls_connector(
    ca: &[rustls::pki_types::CertificateDer<'static>],
) -> Result<tokio_rustls::TlsConnector, rustls::Error> {
    build_connector(ca, None, false)
}

fn build_connector(
    ca: &[rustls::pki_types::CertificateDer<'static>],
    client: Option<Arc<rustls::sign::CertifiedKey>>,
    http2: bool,
) -> Result<tokio_rustls::TlsConnector, rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for c in ca {
        roots.add(c.clone())?;
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots);
    let mut cfg = match client {
        Some(ck) => cfg.with_client_cert_resolver(Arc::new(ClientCert(ck))),
        None => cfg.with_no_client_auth(),
    };
    cfg.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(tokio_rustls::TlsConnector::from(Arc::new(cfg)))
}

/// POSTs `body` to an `http://` or `https://` URL (verified against
/// Mozilla's roots plus `ca`) for baton's own needs (alert webhooks, OCSP
/// responders): connect within 5 s, the whole exchange within 10 s. The
/// status and the answer's body (up to 1 MiB).
pub async fn post(
    url: &http::Uri,
    ca: &[rustls::pki_types::CertificateDer<'static>],
    content_type: &'static str,
    body: bytes::Bytes,
) -> Result<(u16, bytes::Bytes), String> {
    use http_body_util::{BodyExt, Full, Limited};
    let host = url.host().ok_or("no host")?.to_string();
    let https = url.scheme_str() == Some("https");
    let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    .map_err(|_| "connect timed out".to_string())?
    .map_err(|e| e.to_string())?;
    let req = http::Request::post(url.path_and_query().map_or("/", |p| p.as_str()))
        .header(
            http::header::HOST,
            url.authority().map_or(host.as_str(), |a| a.as_str()),
        )
        .header(http::header::CONTENT_TYPE, content_type)
        .header(
            http::header::USER_AGENT,
            concat!("baton/", env!("CARGO_PKG_VERSION")),
        )
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    async fn exchange<T>(
        io: T,
        req: http::Request<Full<bytes::Bytes>>,
    ) -> Result<(u16, bytes::Bytes), String>
    where
        T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (mut tx, conn) = http1::handshake(io).await.map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let resp = tx.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), 1 << 20)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body))
    }
    let send = async {
        if https {
            let name = ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
            let tls = tls_connector(ca)
                .map_err(|e| e.to_string())?
                .connect(name, tcp)
                .await
                .map_err(|e| e.to_string())?;
            exchange(TokioIo::new(tls), req).await
        } else {
            exchange(TokioIo::new(tcp), req).await
        }
    };
    tokio::time::timeout(Duration::from_secs(10), send)
        .await
        .map_err(|_| "no answer in 10s".to_string())?
}

/// The name a server's certificate must carry.
pub(super) fn tls_name(
    tls: &crate::config::UpstreamTls,
    addr: &ServerAddr,
) -> Option<ServerName<'static>> {
    let raw = match (&tls.server_name, addr) {
        (Some(n), _) => n.clone(),
        (None, ServerAddr::Name { host, .. }) => host.clone(),
        (None, ServerAddr::Tcp(a)) => return Some(ServerName::IpAddress(a.ip().into())),
        (None, ServerAddr::Unix(_)) => return None,
    };
    ServerName::try_from(raw).ok()
}

impl Server {
    /// Opens a new connection. `Err` carries the classified failure and the
    /// address dialled.
    pub async fn connect(
        self: &Arc<Self>,
        cfg: &UpstreamConfig,
        dialer: &Dialer,
    ) -> Result<Conn, (Failure, Arc<str>)> {
        let (stream, peer) = match &self.addr {
            ServerAddr::Tcp(a) => (
                connect_tcp(*a, cfg, dialer)
                    .await
                    .map_err(|f| (f, self.label.clone()))?,
                self.label.clone(),
            ),
            ServerAddr::Unix(p) => (
                connect_unix(p, cfg)
                    .await
                    .map_err(|f| (f, self.label.clone()))?,
                self.label.clone(),
            ),
            ServerAddr::Name { host, port } => {
                let answer = dialer
                    .resolver
                    .resolve(host)
                    .await
                    .map_err(|e| (classify_dns(host, e), self.label.clone()))?;
                self.note_addrs(&answer.addrs);
                let addrs = answer.addrs;
                let mut last = None;
                let mut found = None;
                for ip in addrs.iter() {
                    let a = SocketAddr::new(*ip, *port);
                    match connect_tcp(a, cfg, dialer).await {
                        Ok(s) => {
                            found = Some((s, Arc::<str>::from(format!("{a}"))));
                            break;
                        }
                        Err(f) => last = Some((f, Arc::<str>::from(format!("{a}")))),
                    }
                }
                match found {
                    Some(x) => x,
                    None => {
                        return Err(last.unwrap_or_else(|| {
                            (
                                Failure::with(Cause::DnsError, format!("{host} has no addresses")),
                                self.label.clone(),
                            )
                        }));
                    }
                }
            }
        };
        let stream = match (&cfg.tls, &self.tls) {
            (None, _) => stream,
            (Some(_), None) => {
                return Err((
                    Failure::with(Cause::Internal, "TLS client could not be built"),
                    peer,
                ));
            }
            (Some(_), Some((connector, name))) => {
                let hs = async {
                    match stream {
                        Stream::Tcp(t) => connector
                            .connect(name.clone(), t)
                            .await
                            .map(|s| Stream::Tls(Box::new(s))),
                        Stream::Unix(u) => connector
                            .connect(name.clone(), u)
                            .await
                            .map(|s| Stream::TlsUnix(Box::new(s))),
                        other => Ok(other),
                    }
                };
                match tokio::time::timeout(cfg.connect_timeout, hs).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => return Err((classify_tls(&e), peer)),
                    Err(_) => {
                        return Err((
                            Failure::with(
                                Cause::TlsProtocol,
                                format!(
                                    "TLS handshake not finished within {:?}",
                                    cfg.connect_timeout
                                ),
                            ),
                            peer,
                        ));
                    }
                }
            }
        };
        // HTTP/2: with prior knowledge without TLS (h2c), when ALPN chose it
        // with TLS (a server that picked http/1.1 gets HTTP/1.1).
        let h2 = cfg.http2
            && match stream.alpn() {
                Some(p) => p == b"h2",
                None => cfg.tls.is_none(),
            };
        let info = Arc::new(ConnInfo::new());
        let io = Metered {
            inner: stream,
            info: info.clone(),
            write_timeout: cfg.write_timeout,
            write_timer: None,
        };
        if h2 {
            let tx = self
                .h2_handshake(io, cfg, &info)
                .await
                .map_err(|f| (f, peer.clone()))?;
            return Ok(Conn {
                tx: Some(Link::H2(tx)),
                info,
                reused: None,
                peer,
            });
        }
        let wire = Box::new(Wire::new(io));
        Ok(Conn {
            tx: Some(if cfg.fastcgi.is_some() {
                Link::Fcgi(wire)
            } else {
                Link::H1(wire)
            }),
            info,
            reused: None,
            peer,
        })
    }

    /// Starts HTTP/2 on a new connection (hyper's client, driven by a task
    /// of its own): the SETTINGS exchange within `connect_timeout`.
    async fn h2_handshake(
        self: &Arc<Self>,
        io: Metered,
        cfg: &UpstreamConfig,
        info: &Arc<ConnInfo>,
    ) -> Result<hyper::client::conn::http2::SendRequest<UpBody>, Failure> {
        let mut b = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
        b.timer(hyper_util::rt::TokioTimer::new())
            .max_header_list_size(cfg.max_response_header_bytes as u32)
            // A server gone silent with streams open: found by PING.
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10));
        let hs = b.handshake(TokioIo::new(io));
        let (tx, conn) = match tokio::time::timeout(cfg.connect_timeout, hs).await {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => {
                return Err(Failure::with(
                    Cause::ProtocolError,
                    format!("HTTP/2 handshake: {e}"),
                ));
            }
            Err(_) => {
                return Err(Failure::with(
                    Cause::ProtocolError,
                    "no HTTP/2 SETTINGS from the server: is it an HTTP/1.1-only port?",
                ));
            }
        };
        let task_info = info.clone();
        tokio::spawn(async move {
            let _ = conn.await;
            task_info.retired.store(true, Ordering::Relaxed);
        });
        Ok(tx)
    }

    /// Hands an idle HTTP/1.1 wire to hyper's client connection, driven by
    /// a task of its own, for a request [`crate::upstream::h1`] does not carry (a
    /// streamed body, an upgrade). Other links are returned as they are.
    pub async fn hyper_link(
        self: &Arc<Self>,
        cfg: &UpstreamConfig,
        link: Link,
        info: &Arc<ConnInfo>,
    ) -> Result<Link, Failure> {
        let Link::H1(wire) = link else {
            return Ok(link);
        };
        let mut b = http1::Builder::new();
        b.max_header_size(cfg.max_response_header_bytes)
            // hyper's read buffer must hold the whole head; leave room so the
            // exact header limit above is the one that triggers.
            .max_buf_size((cfg.max_response_header_bytes + 16 * 1024).max(400 * 1024));
        let (tx, conn) = b
            .handshake(TokioIo::new(wire.io))
            .await
            .map_err(|e| Failure::with(Cause::Internal, format!("handshake: {e}")))?;
        let server = self.clone();
        let task_info = info.clone();
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
            // The connection ended. If it was idle in the pool and baton did
            // not close it, the upstream closed it: remember after how long.
            let since = task_info.idle_since_ms.load(Ordering::Relaxed);
            if since != u64::MAX && !task_info.retired.load(Ordering::Relaxed) {
                let idle = task_info.ms_since_created().saturating_sub(since);
                server.learn_idle_close(Duration::from_millis(idle));
            }
        });
        Ok(Link::Http(tx))
    }
}

async fn connect_tcp(
    a: SocketAddr,
    cfg: &UpstreamConfig,
    dialer: &Dialer,
) -> Result<Stream, Failure> {
    if dialer.own.iter().any(|own| {
        *own == a || (own.ip().is_unspecified() && own.port() == a.port() && a.ip().is_loopback())
    }) {
        return Err(Failure::with(
            Cause::ProxyConfiguration,
            format!("{a} is one of baton's own listeners"),
        ));
    }
    match tokio::time::timeout(cfg.connect_timeout, TcpStream::connect(a)).await {
        Err(_) => Err(Failure::with(
            Cause::ConnectionTimeout,
            format!("no answer from {a} within {:?}", cfg.connect_timeout),
        )),
        Ok(Err(e)) => Err(classify_connect_io(&e, &a.to_string())),
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(Stream::Tcp(s))
        }
    }
}

/// Connects to a Unix socket. A full accept queue (EAGAIN: every PHP-FPM
/// worker busy) is waited out, polling with a growing pause, for up to
/// connect_timeout, as the kernel does for a TCP connect whose SYN was
/// dropped; only then is it `upstream_busy` (503), never a 502.
async fn connect_unix(p: &Path, cfg: &UpstreamConfig) -> Result<Stream, Failure> {
    let give_up = tokio::time::Instant::now() + cfg.connect_timeout;
    let mut pause = Duration::from_millis(2);
    let mut waited = false;
    loop {
        match tokio::time::timeout_at(give_up, UnixStream::connect(p)).await {
            Err(_) => {
                return Err(Failure::with(
                    Cause::ConnectionTimeout,
                    format!(
                        "no answer from unix:{} within {:?}",
                        p.display(),
                        cfg.connect_timeout
                    ),
                ));
            }
            Ok(Err(e)) if e.raw_os_error() == Some(libc::EAGAIN) => {
                let now = tokio::time::Instant::now();
                if now + pause >= give_up {
                    let mut f = classify_connect_io(&e, &format!("unix:{}", p.display()));
                    if waited {
                        f.details = Some(format!(
                            "accept queue of unix:{} stayed full for {:?} (every worker busy)",
                            p.display(),
                            cfg.connect_timeout
                        ));
                    }
                    return Err(f);
                }
                waited = true;
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Ok(Err(e)) => return Err(classify_connect_io(&e, &format!("unix:{}", p.display()))),
            Ok(Ok(s)) => return Ok(Stream::Unix(s)),
        }
    }
}
