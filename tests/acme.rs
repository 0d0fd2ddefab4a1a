//! Automatic certificates end to end: a real ACME CA (Debian's `pebble`)
//! on loopback validates baton by HTTP-01 and by TLS-ALPN-01, against
//! baton's own listeners, names resolved by the test's DNS server.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

/// A client config trusting `root` (DER).
fn trusting(root: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    store.add(root.to_vec().into()).unwrap();
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth(),
    )
}

/// GET `path` over HTTPS (HTTP/1.1) from `addr` as `name`; the body.
async fn https_get(
    cfg: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    name: &str,
    path: &str,
) -> std::io::Result<(Vec<u8>, String)> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let sni = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    let mut s = tokio_rustls::TlsConnector::from(cfg)
        .connect(sni, tcp)
        .await?;
    let cert = s.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out).to_string();
    let body = text
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string());
    Ok((cert, body))
}

/// base64(SHA-256(SubjectPublicKeyInfo)) of a DER certificate, as
/// Chromium's `--ignore-certificate-errors-spki-list` wants it (by
/// openssl, as the Chromium docs show).
fn spki_sha256(der: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("root.der");
    std::fs::write(&f, der).unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl x509 -inform der -in {} -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64",
            f.display()
        ))
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

struct Pebble {
    child: Reap,
    _dir: tempfile::TempDir,
    directory: String,
    ca_file: std::path::PathBuf,
    ca_der: Vec<u8>,
    management: SocketAddr,
}

/// Pebble validating on `http_port` and `tls_port`, resolving by `dns`.
async fn pebble(http_port: u16, tls_port: u16, dns: SocketAddr) -> Pebble {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let ca_file = dir.path().join("pebble.crt");
    std::fs::write(&ca_file, ck.cert.pem()).unwrap();
    std::fs::write(
        dir.path().join("pebble.key"),
        ck.signing_key.serialize_pem(),
    )
    .unwrap();
    let listen = refusing_addr();
    let management = refusing_addr();
    let conf = dir.path().join("pebble.json");
    std::fs::write(
        &conf,
        serde_json::json!({"pebble": {
            "listenAddress": listen.to_string(),
            "managementListenAddress": management.to_string(),
            "certificate": dir.path().join("pebble.crt"),
            "privateKey": dir.path().join("pebble.key"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false
        }})
        .to_string(),
    )
    .unwrap();
    let child = peer(
        Command::new("pebble")
            .arg("-config")
            .arg(&conf)
            .arg("-dnsserver")
            .arg(dns.to_string())
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
        listen,
    )
    .await;
    // Pebble opens its management listener after the main one: wait for
    // it too (under load it came second by a few milliseconds).
    for _ in 0..250 {
        if tokio::net::TcpStream::connect(management).await.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Pebble {
        child,
        directory: format!("https://{listen}/dir"),
        ca_der: ck.cert.der().to_vec(),
        ca_file,
        _dir: dir,
        management,
    }
}

impl Pebble {
    /// The root that signs the certificates this pebble issues.
    async fn issuing_root(&self) -> Vec<u8> {
        let (_, pem) = https_get(
            trusting(&self.ca_der),
            self.management,
            "127.0.0.1",
            "/roots/0",
        )
        .await
        .unwrap();
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    }
}

/// The chain baton serves for `name` (leaf first), unverified.
async fn served_chain(addr: SocketAddr, name: &str) -> Vec<Vec<u8>> {
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .dangerous()
    // The doctor's verifier: takes any chain, still checks signatures.
    .with_custom_certificate_verifier(Arc::new(baton::cli::doctor::Inspect(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))))
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let sni = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    let s = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(sni, tcp)
        .await
        .unwrap();
    s.get_ref()
        .1
        .peer_certificates()
        .unwrap()
        .iter()
        .map(|c| c.to_vec())
        .collect()
}

/// Waits until baton serves `name` a certificate `root` vouches for.
async fn served_by_acme(gw: &Gw, root: &[u8], addr: SocketAddr, name: &str) -> (Vec<u8>, String) {
    for _ in 0..300 {
        if let Ok(r) = https_get(trusting(root), addr, name, "/x").await {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "no certificate from the ACME CA for {name} within 30 s:\n{}",
        std::fs::read_to_string(&gw.errors_log).unwrap_or_default()
    );
}

#[tokio::test]
async fn pebble_issues_by_http_01_and_tls_alpn_01_and_the_certificate_is_kept() {
    let o = Origin::start(Script::Ok("through https".into()))
        .await
        .unwrap();
    let dns = Dns::start(
        vec![
            ("shop.test", "127.0.0.1".parse().unwrap()),
            ("www.shop.test", "127.0.0.1".parse().unwrap()),
            ("blog.test", "127.0.0.1".parse().unwrap()),
        ],
        false,
    )
    .await;
    let http = refusing_addr();
    let tls = refusing_addr();
    let p = pebble(http.port(), tls.port(), dns.addr).await;
    let root = p.issuing_root().await;
    let state = tempfile::tempdir().unwrap();
    let config = |domains: &str, challenge: &str| {
        format!(
            "[server]\nlisten_tls = [\"{tls}\"]\n\n[tls.acme]\ndomains = [{domains}]\nemail = \"ops@shop.test\"\ndirectory = \"{}\"\ndirectory_ca = \"{}\"\nchallenge = \"{challenge}\"\ndir = \"{}\"\n\n{}",
            p.directory,
            p.ca_file.display(),
            state.path().display(),
            one_route(o.addr)
        )
    };

    // HTTP-01, two names on one certificate.
    let gw = Gw::start_with(
        &config("\"shop.test\", \"www.shop.test\"", "http-01"),
        &http.to_string(),
        "json",
    )
    .await;
    let (cert, body) = served_by_acme(&gw, &root, tls, "www.shop.test").await;
    assert_eq!(body, "through https");
    let mut names = baton::config::cert_facts(&cert).unwrap().names;
    names.sort();
    assert_eq!(names, ["shop.test", "www.shop.test"]);
    // Chromium loads the page over HTTPS and HTTP/2, trusting the CA's
    // issuing certificate (by its key, `--ignore-certificate-errors-spki-list`:
    // Chromium matches it against the chain the server sends), the name
    // mapped to loopback.
    let intermediate = served_chain(tls, "www.shop.test").await[1].clone();
    let spki = spki_sha256(&intermediate);
    let url = format!("https://www.shop.test:{}/x", tls.port());
    let (text, protocol) = tokio::task::spawn_blocking(move || {
        let mut b = crate::support::cdp::Browser::open_with(
            &url,
            &[
                "--host-resolver-rules=MAP www.shop.test 127.0.0.1".to_string(),
                format!("--ignore-certificate-errors-spki-list={spki}"),
            ],
        );
        let text = b.wait("document.body && document.body.innerText");
        let protocol = b.eval("performance.getEntriesByType('navigation')[0].nextHopProtocol");
        (text, protocol)
    })
    .await
    .unwrap();
    assert_eq!(text, "through https");
    assert_eq!(protocol, "h2");
    gw.stop().await;
    // Kept in the state directory: a restart serves it without asking the
    // CA (the account too: one account file).
    let kept: Vec<String> = std::fs::read_dir(state.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert!(kept.contains(&"shop.test.crt".to_string()), "{kept:?}");
    assert_eq!(
        kept.iter().filter(|f| f.starts_with("account-")).count(),
        1,
        "{kept:?}"
    );
    // The CA goes away.
    drop(p.child);
    let gw = Gw::start_with(
        &config("\"shop.test\", \"www.shop.test\"", "http-01"),
        &http.to_string(),
        "json",
    )
    .await;
    let (again, _) = served_by_acme(&gw, &root, tls, "shop.test").await;
    assert_eq!(again, cert, "the stored certificate, with the CA gone");
    gw.stop().await;

    // TLS-ALPN-01 on the HTTPS listener.
    let p2 = pebble(http.port(), tls.port(), dns.addr).await;
    let root = p2.issuing_root().await;
    let body = config("\"blog.test\"", "tls-alpn-01")
        .replace(&p.directory, &p2.directory)
        .replace(
            &p.ca_file.display().to_string(),
            &p2.ca_file.display().to_string(),
        );
    let gw = Gw::start_with(&body, &http.to_string(), "json").await;
    let (cert, body) = served_by_acme(&gw, &root, tls, "blog.test").await;
    assert_eq!(body, "through https");
    assert_eq!(
        baton::config::cert_facts(&cert).unwrap().names,
        ["blog.test"]
    );
    gw.stop().await;
}

/// A CA that cannot reach baton for the challenge: the failure is logged
/// with the CA's problem and the fix, and retried; HTTPS for other names
/// keeps being served from the configured certificate.
#[tokio::test]
async fn an_unreachable_challenge_is_explained_with_the_fix() {
    let dns = Dns::start(vec![("shop.test", "127.0.0.1".parse().unwrap())], false).await;
    // Pebble validates on ports where nothing listens.
    let p = pebble(refusing_addr().port(), refusing_addr().port(), dns.addr).await;
    let dir = tempfile::tempdir().unwrap();
    let tls = refusing_addr();
    let log = dir.path().join("stderr.log");
    let (_addr, _child) = serve_child(
        dir.path(),
        &format!(
            "listen_tls = [\"{tls}\"]\n\n[tls.acme]\ndomains = [\"shop.test\"]\ndirectory = \"{}\"\ndirectory_ca = \"{}\"\ndir = \"{}\"\n\n{}",
            p.directory,
            p.ca_file.display(),
            dir.path().join("acme").display(),
            one_route(refusing_addr())
        ),
        std::fs::File::create(&log).unwrap().into(),
    )
    .await;
    let mut text = String::new();
    for _ in 0..100 {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("ACME certificate not obtained") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let line = text
        .lines()
        .find(|l| l.contains("ACME certificate not obtained"))
        .unwrap_or_else(|| panic!("{text}"));
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["level"], "error");
    assert!(
        v["msg"]
            .as_str()
            .unwrap()
            .starts_with("ACME certificate not obtained: connection: "),
        "{line}"
    );
    assert!(
        v["fix"]
            .as_str()
            .unwrap()
            .starts_with("the CA could not reach baton for the challenge: make port 80"),
        "{line}"
    );
    assert_eq!(v["retry_in_s"], 30);
}
