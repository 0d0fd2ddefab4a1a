//! HTTPS listeners: TLS 1.2/1.3 with ALPN, certificates chosen by SNI
//! (wildcards too), rotation on reload, plain HTTP on the TLS port, the
//! handshake deadline, and the scheme passed upstream.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

/// A self-signed certificate for `names`, written as PEM to
/// `DIR/STEM.crt` and `DIR/STEM.key`; its DER.
fn cert(dir: &Path, stem: &str, names: &[&str]) -> Vec<u8> {
    let ck =
        rcgen::generate_simple_self_signed(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    std::fs::write(dir.join(format!("{stem}.crt")), ck.cert.pem()).unwrap();
    std::fs::write(
        dir.join(format!("{stem}.key")),
        ck.signing_key.serialize_pem(),
    )
    .unwrap();
    ck.cert.der().to_vec()
}

fn body(dir: &Path, origin: SocketAddr, extra: &str) -> String {
    format!(
        "[server]\nlisten_tls = [\"127.0.0.1:0\"]\n{extra}\n[[tls.certificates]]\ncert = \"{d}/shop.crt\"\nkey = \"{d}/shop.key\"\n\n[[tls.certificates]]\ncert = \"{d}/blog.crt\"\nkey = \"{d}/blog.key\"\n\n{}",
        one_route(origin),
        d = dir.display()
    )
}

/// An origin, two certificates (`shop.test`, `*.blog.test`) and a gateway
/// serving them on an HTTPS listener: (origin, dir, shop's DER, blog's
/// DER, gateway).
async fn site(script: Script, extra: &str) -> (Origin, tempfile::TempDir, Vec<u8>, Vec<u8>, Gw) {
    let o = Origin::start(script).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let shop = cert(dir.path(), "shop", &["shop.test"]);
    let blog = cert(dir.path(), "blog", &["*.blog.test"]);
    let gw = Gw::start(&body(dir.path(), o.addr, extra)).await;
    (o, dir, shop, blog, gw)
}

/// A TLS client trusting `roots`, offering h2 and http/1.1.
fn client(roots: &[Vec<u8>]) -> tokio_rustls::TlsConnector {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone().into()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(store)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn connect(
    c: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
    sni: &str,
) -> std::io::Result<Tls> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    c.connect(name, tcp).await
}

fn served(s: &Tls) -> Vec<u8> {
    s.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// A TLS connection to `gw`'s HTTPS listener as `shop.test`, trusting
/// `root` only.
async fn open(gw: &Gw, root: &[u8]) -> Tls {
    connect(&client(&[root.to_vec()]), gw.tls_addr(), "shop.test")
        .await
        .unwrap()
}

/// An HTTP/2 client connection over `s`, driven by a task of its own.
async fn h2(s: Tls) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(s),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    send
}

/// Sends GET `path` over HTTP/2 on `s`; the status and the echoed
/// request's headers.
async fn h2_get(s: Tls, path: &str, host: &str) -> (u16, serde_json::Value) {
    let mut send = h2(s).await;
    let req = http::Request::get(format!("https://{host}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = send.send_request(req).await.unwrap();
    let status = r.status().as_u16();
    let b = r.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&b).unwrap_or_default())
}

/// What `sh -c cmd` writes to stdout (run on a blocking thread): the
/// tests' `openssl s_client` runs.
async fn shell(cmd: String) -> String {
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn header<'a>(echo: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    echo["headers"]
        .as_array()?
        .iter()
        .find(|h| h[0].as_str().is_some_and(|k| k.eq_ignore_ascii_case(name)))
        .and_then(|h| h[1].as_str())
}

/// Baton's suite order wins over the client's (AES-128-GCM first, as
/// Mozilla's "intermediate"), and the post-quantum hybrid is preferred
/// when offered: a rustls client offering X25519MLKEM768 and AES-256-GCM
/// first, and OpenSSL's `s_client` (AES-256-GCM first, no hybrid).
#[tokio::test]
async fn the_server_picks_aes_128_gcm_and_the_post_quantum_hybrid() {
    let (_o, dir, shop, _blog, gw) = site(Script::Ok("ok".into()), "").await;
    let s = open(&gw, &shop).await;
    let tls = s.get_ref().1;
    assert_eq!(
        tls.negotiated_cipher_suite().unwrap().suite(),
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
    );
    assert_eq!(
        tls.negotiated_key_exchange_group().unwrap().name(),
        rustls::NamedGroup::X25519MLKEM768
    );
    drop(s);

    let addr = gw.tls_addr();
    let out = tokio::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            "shop.test",
        ])
        .arg("-CAfile")
        .arg(dir.path().join("shop.crt"))
        .args([
            "-ciphersuites",
            "TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("New, TLSv1.3, Cipher is TLS_AES_128_GCM_SHA256"),
        "{text}"
    );
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
}

#[tokio::test]
async fn https_serves_h2_by_alpn_picks_the_certificate_by_sni_and_says_https_upstream() {
    let (_o, _dir, shop, blog, gw) = site(Script::Echo, "").await;
    let c = client(&[shop.clone(), blog.clone()]);

    let s = connect(&c, gw.tls_addr(), "shop.test").await.unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(served(&s), shop);
    let (status, echo) = h2_get(s, "/x", "shop.test").await;
    assert_eq!(status, 200);
    assert_eq!(header(&echo, "x-forwarded-proto"), Some("https"));

    // A wildcard covers one label.
    let s = connect(&c, gw.tls_addr(), "www.blog.test").await.unwrap();
    assert_eq!(served(&s), blog);
    // A name no certificate covers fails the handshake.
    let e = connect(&c, gw.tls_addr(), "other.test").await.unwrap_err();
    assert_eq!(e.to_string(), "received fatal alert: AccessDenied");
    // A client that does not trust the certificate says so with an alert.
    let stranger = client(std::slice::from_ref(&blog));
    assert!(
        connect(&stranger, gw.tls_addr(), "shop.test")
            .await
            .is_err()
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let m = gw.metrics().await;
    for (reason, n) in [("unknown_server_name", 1), ("client_alert", 1)] {
        assert!(
            m.contains(&format!(
                "baton_tls_handshake_failures_total{{reason=\"{reason}\"}} {n}\n"
            )),
            "{reason}: {m}"
        );
    }
    let not_after = baton::config::cert_facts(&shop).unwrap().not_after;
    assert!(
        m.contains(&format!("baton_tls_certificate_expiry_timestamp_seconds{{name=\"shop.test\",source=\"file\"}} {not_after}\n")),
        "{m}"
    );

    // HTTP/1.1 by ALPN works too, and the plain listener still says http.
    let mut one = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates({
        let mut r = rustls::RootCertStore::empty();
        r.add(shop.clone().into()).unwrap();
        r
    })
    .with_no_client_auth();
    one.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut s = connect(
        &tokio_rustls::TlsConnector::from(Arc::new(one)),
        gw.tls_addr(),
        "shop.test",
    )
    .await
    .unwrap();
    s.write_all(b"GET /y HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut got = String::new();
    let _ = s.read_to_string(&mut got).await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(got.contains("[\"x-forwarded-proto\",\"https\"]"), "{got}");
    let r = send(gw.addr, get("/z")).await;
    assert!(
        r.text().contains("[\"x-forwarded-proto\",\"http\"]"),
        "{}",
        r.text()
    );
    gw.stop().await;
}

#[tokio::test]
async fn plain_http_to_the_tls_port_gets_a_400_that_says_use_https() {
    let (_o, _dir, _, _, gw) = site(Script::Ok("hi".into()), "").await;
    let mut s = tokio::net::TcpStream::connect(gw.tls_addr()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n")
        .await
        .unwrap();
    let mut got = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert!(got.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{got}");
    assert!(
        got.contains(
            "Proxy-Status: baton; error=http_request_error; details=\"plain HTTP to an HTTPS port\""
        ),
        "{got}"
    );
    assert!(got.contains("This port speaks HTTPS"), "{got}");
    gw.stop().await;
}

#[tokio::test]
async fn a_handshake_that_stalls_is_dropped_at_the_deadline() {
    let (_o, _dir, _, _, gw) =
        site(Script::Ok("hi".into()), "tls_handshake_timeout = \"300ms\"").await;
    for sent in [&b""[..], &b"\x16\x03\x01"[..]] {
        let mut s = tokio::net::TcpStream::connect(gw.tls_addr()).await.unwrap();
        s.write_all(sent).await.unwrap();
        let t = std::time::Instant::now();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("closed at the deadline")
            .unwrap_or(0);
        assert_eq!(n, 0, "{sent:?}");
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{sent:?}: {:?}",
            t.elapsed()
        );
    }
    gw.stop().await;
}

#[tokio::test]
async fn a_certificate_rotated_on_reload_goes_to_new_connections_while_old_ones_finish() {
    let (o, dir, old, _, gw) = site(Script::Echo, "").await;
    let b = body(dir.path(), o.addr, "");
    let before = open(&gw, &old).await;
    let mut send_old = h2(before).await;

    let new = cert(dir.path(), "shop", &["shop.test"]);
    let body_only = &b[b.find("[[tls.certificates]]").unwrap()..];
    let r = gw.reload_with(body_only).await;
    assert_eq!(r.status, 200, "{}", r.text());

    let s = open(&gw, &new).await;
    assert_eq!(served(&s), new);
    // The connection made before the reload carries on.
    let req = http::Request::get("https://shop.test/still")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send_old.send_request(req).await.unwrap().status(), 200);

    // A reload with a key that is not the certificate's is refused, and
    // the current certificate keeps serving.
    std::fs::copy(dir.path().join("blog.key"), dir.path().join("shop.key")).unwrap();
    let r = gw.reload_with(body_only).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("tls.certificates[0].key"), "{}", r.text());
    let s = open(&gw, &new).await;
    assert_eq!(served(&s), new);
    gw.stop().await;
}

#[test]
fn baton_check_warns_of_a_certificate_that_expires_within_21_days() {
    let dir = tempfile::tempdir().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["shop.test".to_string()]).unwrap();
    let soon = time_in_days(5);
    params.not_after = rcgen::date_time_ymd(soon.0, soon.1, soon.2);
    let key = rcgen::KeyPair::generate().unwrap();
    let c = params.self_signed(&key).unwrap();
    std::fs::write(dir.path().join("shop.crt"), c.pem()).unwrap();
    std::fs::write(dir.path().join("shop.key"), key.serialize_pem()).unwrap();
    let file = dir.path().join("baton.toml");
    std::fs::write(
        &file,
        format!(
            "[server]\nlisten_tls = [\"127.0.0.1:8443\"]\n\n[[tls.certificates]]\ncert = \"shop.crt\"\nkey = \"shop.key\"\n\n{}",
            one_route("127.0.0.1:3000".parse().unwrap())
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("tls.certificates[0].cert"), "{text}");
    assert!(
        text.contains("the certificate expires in 4 days")
            || text.contains("the certificate expires in 5 days"),
        "{text}"
    );
}

/// The civil date `days` from now (UTC).
fn time_in_days(days: i64) -> (i32, u8, u8) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        + days * 86_400;
    // Howard Hinnant's civil_from_days.
    let z = secs.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y as i32, m as u8, d as u8)
}

#[tokio::test]
async fn plain_http_is_redirected_to_https_and_https_gets_hsts() {
    let (_o, _dir, shop, _, gw) = site(
        Script::Echo,
        "redirect_https = true\nhsts = \"max-age=31536000\"",
    )
    .await;
    let port = gw.tls_addr().port();
    let r = send(gw.addr, get_with("/a/b?c=1", "host", "shop.test:8080")).await;
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        format!("https://shop.test:{port}/a/b?c=1")
    );
    // No HSTS over plain HTTP (RFC 6797 §7.2).
    assert_eq!(r.header("strict-transport-security"), "");
    // ACME's HTTP-01 challenges stay on plain HTTP.
    let r = send(
        gw.addr,
        get_with("/.well-known/acme-challenge/tok", "host", "shop.test"),
    )
    .await;
    assert_eq!(r.status, 200);
    let s = open(&gw, &shop).await;
    let mut send_h2 = h2(s).await;
    let r = send_h2
        .send_request(
            http::Request::get("https://shop.test/x")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["strict-transport-security"], "max-age=31536000");
    gw.stop().await;
}

/// RFC 9113 §3.4 over TLS: an invalid preface after ALPN chose h2 gets
/// GOAWAY(PROTOCOL_ERROR), as on the plain port (h2spec 3.5/2).
#[tokio::test]
async fn an_invalid_http2_preface_over_tls_gets_goaway() {
    let (_o, _dir, shop, _, gw) = site(Script::Ok("hi".into()), "").await;
    let mut s = open(&gw, &shop).await;
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    s.write_all(b"INVALID CONNECTION PREFACE\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
    let frames = h2_frames(&got);
    assert_eq!(frames.len(), 1, "{got:?}");
    let (kind, _, stream, payload) = &frames[0];
    assert_eq!((*kind, *stream), (7, 0), "a GOAWAY");
    assert_eq!(payload[4..8], [0, 0, 0, 1], "PROTOCOL_ERROR");
    gw.stop().await;
}

/// A certificate that expires within `tls.expiry_warning`: on the
/// dashboard (red, days left), in its events, and in metrics.
#[tokio::test]
async fn an_expiring_certificate_shows_on_the_dashboard_and_in_events() {
    let o = Origin::start(Script::Ok("hi".into())).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["shop.test".to_string()]).unwrap();
    let soon = time_in_days(10);
    params.not_after = rcgen::date_time_ymd(soon.0, soon.1, soon.2);
    let key = rcgen::KeyPair::generate().unwrap();
    let c = params.self_signed(&key).unwrap();
    std::fs::write(dir.path().join("shop.crt"), c.pem()).unwrap();
    std::fs::write(dir.path().join("shop.key"), key.serialize_pem()).unwrap();
    let d = dir.path().display();
    let gw = Gw::start(&format!(
        "[server]\nlisten_tls = [\"127.0.0.1:0\"]\n\n[tls]\nexpiry_warning = \"30d\"\n\n[[tls.certificates]]\ncert = \"{d}/shop.crt\"\nkey = \"{d}/shop.key\"\n\n[alerts]\ncommand = \"cat > {d}/alert.json\"\n\n{}",
        one_route(o.addr)
    ))
    .await;
    let mut state = serde_json::Value::Null;
    for _ in 0..50 {
        state = send(gw.admin, get("/api/state")).await.json();
        if state["events"].as_array().is_some_and(|e| !e.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cert = &state["tls"]["certificates"][0];
    assert_eq!(cert["name"], "shop.test", "{state}");
    assert_eq!(cert["source"], "file");
    assert_eq!(cert["expiring"], true);
    let days = cert["days_left"].as_i64().unwrap();
    assert!((9..=10).contains(&days), "{days}");
    let event = state["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "certificate")
        .unwrap_or_else(|| panic!("{state}"));
    assert!(
        event["text"].as_str().unwrap().starts_with(&format!(
            "the certificate for shop.test (file) expires in {days} days; renew it and reload"
        )),
        "{event}"
    );
    // The alert command got it too.
    let mut alert = String::new();
    for _ in 0..50 {
        alert = std::fs::read_to_string(dir.path().join("alert.json")).unwrap_or_default();
        if !alert.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let v: serde_json::Value =
        serde_json::from_str(&alert).unwrap_or_else(|e| panic!("{e}: {alert:?}"));
    assert_eq!(v["event"], "certificate_expiring");
    assert_eq!(v["text"], event["text"]);
    gw.stop().await;
}

/// OCSP stapling: a certificate that names a responder (a real `openssl
/// ocsp` responder for a test CA) gets the responder's answer in the
/// handshake, as `openssl s_client -status` sees it.
#[tokio::test]
async fn the_ocsp_response_is_stapled_when_the_certificate_names_a_responder() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let ocsp = refusing_addr();
    std::fs::write(
        dir.path().join("ca.cnf"),
        format!(
            "[ca]\ndefault_ca = ca_default\n[ca_default]\ndir = {d}\ndatabase = {d}/index.txt\nnew_certs_dir = {d}\nserial = {d}/serial\ndefault_md = sha256\npolicy = any\ndefault_days = 30\ncopy_extensions = copy\n[any]\ncommonName = supplied\n[leaf]\nsubjectAltName = DNS:shop.test\nauthorityInfoAccess = OCSP;URI:http://{ocsp}\n"
        ),
    )
    .unwrap();
    std::fs::write(dir.path().join("index.txt"), "").unwrap();
    std::fs::write(dir.path().join("serial"), "01\n").unwrap();
    let sh = |cmd: &str| {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sh(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.crt -days 30 -subj '/CN=Test CA' -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
    );
    sh(
        "openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout shop.key -out shop.csr -subj /CN=shop.test",
    );
    sh(
        "openssl ca -batch -config ca.cnf -extensions leaf -in shop.csr -out shop.crt -cert ca.crt -keyfile ca.key -notext",
    );
    sh("cat shop.crt ca.crt > chain.crt");
    // Not `peer()`: a probing connect would hold openssl's one-at-a-time
    // responder for good; it says when it listens.
    let log = dir.path().join("ocsp.log");
    let _responder = Reap(Some(
        std::process::Command::new("openssl")
            .args(["ocsp", "-index", "index.txt", "-port"])
            .arg(ocsp.port().to_string())
            .args([
                "-rsigner", "ca.crt", "-rkey", "ca.key", "-CA", "ca.crt", "-ndays", "1",
            ])
            .current_dir(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    ));
    for _ in 0..100 {
        if std::fs::read_to_string(&log)
            .is_ok_and(|l| l.contains("waiting for OCSP client connections"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let o = Origin::start(Script::Ok("hi".into())).await.unwrap();
    let gw = Gw::start(&format!(
        "[server]\nlisten_tls = [\"127.0.0.1:0\"]\n\n[[tls.certificates]]\ncert = \"{d}/chain.crt\"\nkey = \"{d}/shop.key\"\n\n{}",
        one_route(o.addr)
    ))
    .await;
    let tls = gw.tls_addr();
    let mut seen = String::new();
    for _ in 0..50 {
        seen = shell(format!(
            "openssl s_client -connect {tls} -servername shop.test -status < /dev/null 2>&1"
        ))
        .await;
        if seen.contains("OCSP Response Status: successful") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen.contains("OCSP Response Status: successful"), "{seen}");
    assert!(seen.contains("Cert Status: good"), "{seen}");
    gw.stop().await;
}

/// A client that sends an IP address as SNI (as wrk and many scanners
/// do) is served, and writes nothing into baton's log: rustls warns of
/// each such handshake, one line per connection a client chooses to open,
/// and baton keeps rustls's lines to errors unless `BATON_LOG` asks.
#[tokio::test]
async fn an_ip_address_as_sni_is_served_without_a_log_line() {
    let o = Origin::start(Script::Ok("hi".into())).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    cert(dir.path(), "ip", &["127.0.0.1"]);
    let tls: SocketAddr = format!("127.0.0.1:{}", refusing_addr().port())
        .parse()
        .unwrap();
    let (_addr, mut child) = serve_child(
        dir.path(),
        &format!(
            "listen_tls = [\"{tls}\"]\n[log]\naccess = \"off\"\n\n[[tls.certificates]]\ncert = \"{d}/ip.crt\"\nkey = \"{d}/ip.key\"\n\n{}",
            one_route(o.addr),
            d = dir.path().display()
        ),
        std::process::Stdio::piped(),
    )
    .await;
    for _ in 0..3 {
        let text = shell(format!(
            "printf 'GET / HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\nConnection: close\\r\\n\\r\\n' | openssl s_client -connect {tls} -servername 127.0.0.1 -quiet 2>/dev/null"
        ))
        .await;
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nhi"), "{text}");
    }
    let mut c = child.take();
    c.kill().unwrap();
    let err = String::from_utf8_lossy(&c.wait_with_output().unwrap().stderr).to_string();
    let targets: Vec<String> = err
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|_| panic!("{l}"));
            format!("{} {}", v["level"], v["target"])
        })
        .collect();
    assert_eq!(
        targets,
        [
            "\"info\" \"baton::server\"",
            "\"info\" \"baton::cli::serve\""
        ],
        "{err}"
    );
}
