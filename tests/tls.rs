//! TLS to upstreams: verified by default, and each handshake failure told
//! apart (certificate, alert, protocol).

use std::sync::Arc;

use crate::support::*;

struct Pki {
    dir: tempfile::TempDir,
    ca_pem: std::path::PathBuf,
    server: Arc<rustls::ServerConfig>,
}

/// A self-signed certificate for `app.test` and a server config using it.
/// With `strict_sni`, the server refuses any other SNI with an alert.
fn pki(strict_sni: bool) -> Pki {
    let ck = rcgen::generate_simple_self_signed(vec!["app.test".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_pem = dir.path().join("ca.pem");
    std::fs::write(&ca_pem, ck.cert.pem()).unwrap();
    let cert = ck.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth();
    let server = if strict_sni {
        let mut sni = rustls::server::ResolvesServerCertUsingSni::new();
        let signing = provider.key_provider.load_private_key(key).unwrap();
        sni.add(
            "app.test",
            rustls::sign::CertifiedKey::new(vec![cert], signing),
        )
        .unwrap();
        builder.with_cert_resolver(Arc::new(sni))
    } else {
        builder.with_single_cert(vec![cert], key).unwrap()
    };
    Pki {
        dir,
        ca_pem,
        server: Arc::new(server),
    }
}

fn tls_upstream(addr: std::net::SocketAddr, extra: &str) -> String {
    format!(
        "[upstreams.app]\nservers = [\"{addr}\"]\ntls = true\n{extra}\n[[routes]]\nupstream = \"app\"\n"
    )
}

#[tokio::test]
async fn tls_upstream_with_its_ca_serves() {
    let p = pki(false);
    let o = Origin::start_tls(Script::Ok("secure\n".into()), p.server.clone())
        .await
        .unwrap();
    let gw = Gw::start(&tls_upstream(
        o.addr,
        &format!(
            "tls_server_name = \"app.test\"\ntls_ca = \"{}\"",
            p.ca_pem.display()
        ),
    ))
    .await;
    let r = send(gw.addr, get("/")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "secure\n");
    drop(p.dir);
}

#[tokio::test]
async fn untrusted_certificate_is_tls_certificate_error() {
    let p = pki(false);
    let o = Origin::start_tls(Script::Ok("x".into()), p.server.clone())
        .await
        .unwrap();
    let gw = Gw::start(&tls_upstream(o.addr, "tls_server_name = \"app.test\"")).await;
    let r = send(gw.addr, get("/")).await;
    let line = assert_failure(
        &gw,
        &r,
        502,
        "tls_certificate_error",
        "tls_certificate_error",
    )
    .await;
    assert_eq!(line["phase"], "tls");
    assert!(
        r.header("proxy-status").contains("issuer not trusted"),
        "{}",
        r.header("proxy-status")
    );
}

#[tokio::test]
async fn wrong_name_is_tls_certificate_error() {
    let p = pki(false);
    let o = Origin::start_tls(Script::Ok("x".into()), p.server.clone())
        .await
        .unwrap();
    let gw = Gw::start(&tls_upstream(
        o.addr,
        &format!(
            "tls_server_name = \"other.test\"\ntls_ca = \"{}\"",
            p.ca_pem.display()
        ),
    ))
    .await;
    let r = send(gw.addr, get("/")).await;
    assert_failure(
        &gw,
        &r,
        502,
        "tls_certificate_error",
        "tls_certificate_error",
    )
    .await;
    assert!(
        r.header("proxy-status")
            .contains("not valid for the server name")
    );
}

#[tokio::test]
async fn refused_sni_is_tls_alert_received() {
    let p = pki(true);
    let o = Origin::start_tls(Script::Ok("x".into()), p.server.clone())
        .await
        .unwrap();
    let gw = Gw::start(&tls_upstream(
        o.addr,
        &format!(
            "tls_server_name = \"other.test\"\ntls_ca = \"{}\"",
            p.ca_pem.display()
        ),
    ))
    .await;
    let r = send(gw.addr, get("/")).await;
    assert_failure(&gw, &r, 502, "tls_alert_received", "tls_alert_received").await;
}

#[tokio::test]
async fn tls_to_a_plain_http_port_is_tls_protocol_error() {
    let o = Origin::start(Script::Ok("plain".into())).await.unwrap();
    let gw = Gw::start(&tls_upstream(o.addr, "tls_server_name = \"app.test\"")).await;
    let r = send(gw.addr, get("/")).await;
    assert_failure(&gw, &r, 502, "tls_protocol_error", "tls_protocol_error").await;
    assert!(
        r.header("proxy-status").contains("did not answer with TLS"),
        "{}",
        r.header("proxy-status")
    );
}

#[tokio::test]
async fn plain_http_to_a_tls_port_is_named() {
    let p = pki(false);
    let o = Origin::start_tls(Script::Ok("x".into()), p.server.clone())
        .await
        .unwrap();
    let gw = Gw::start(&one_route(o.addr)).await;
    let r = send(gw.addr, get("/")).await;
    assert_failure(&gw, &r, 502, "http_protocol_error", "upstream_speaks_tls").await;
}

/// `baton doctor --json https://127.0.0.1:PORT/`: exit code and document.
async fn doctor_https(port: u16) -> (Option<i32>, serde_json::Value) {
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
            .args(["doctor", "--json", "--idle-wait", "0s"])
            .arg(format!("https://127.0.0.1:{port}/"))
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    (
        out.status.code(),
        serde_json::from_slice(&out.stdout).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_describes_the_certificate_it_rejects() {
    let p = pki(false);
    let o = Origin::start_tls(Script::Ok("secure\n".into()), p.server.clone())
        .await
        .unwrap();
    let (code, v) = doctor_https(o.addr.port()).await;
    assert_eq!(code, Some(1));
    assert_eq!(v["verdict"]["cause"], "tls_certificate_error");
    let cert = doctor_step(&v, "certificate");
    assert_eq!(cert["ok"], false);
    let d = cert["detail"].as_str().unwrap();
    assert!(d.starts_with("TLSv1_3, ALPN none, SNI 127.0.0.1; "), "{d}");
    assert!(d.contains("(names: app.test)"), "{d}");
    assert!(d.contains("chain of 1 certificate"), "{d}");
    assert!(
        d.contains("; does not name 127.0.0.1: clients verifying it fail"),
        "{d}"
    );
    assert!(
        d.contains("; self-signed: only clients given this certificate as a CA trust it"),
        "{d}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_flags_an_expired_certificate() {
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2019, 1, 1);
    params.not_after = rcgen::date_time_ymd(2020, 1, 1);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let server = tls_server(cert.der().clone(), key.serialize_der());
    let o = Origin::start_tls(Script::Ok("old\n".into()), server)
        .await
        .unwrap();
    let (code, v) = doctor_https(o.addr.port()).await;
    assert_eq!(code, Some(1));
    assert_eq!(v["verdict"]["cause"], "tls_certificate_error", "{v:#}");
    let cert = doctor_step(&v, "certificate");
    let d = cert["detail"].as_str().unwrap();
    assert!(d.contains("(names: 127.0.0.1)"), "{d}");
    assert!(d.contains("; valid until 2020-01-01 00:00:00 ("), "{d}");
    assert!(d.contains("; EXPIRED on 2020-01-01"), "{d}");
    assert!(!d.contains("does not name"), "{d}");
}

/// `protocol = "http2"` over TLS: ALPN chooses h2 with a server that
/// offers it (here another baton's HTTPS listener, whose access log says
/// HTTP/2.0), and http/1.1 with one that does not.
#[tokio::test]
async fn http2_upstream_over_tls_by_alpn_and_http_1_1_when_not_offered() {
    let origin = Origin::start(Script::Ok("deep".into())).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["app.test".to_string()]).unwrap();
    let (crt, key) = (dir.path().join("app.crt"), dir.path().join("app.key"));
    std::fs::write(&crt, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let inner = Gw::start(&format!(
        "[server]\nlisten_tls = [\"127.0.0.1:0\"]\n\n[[tls.certificates]]\ncert = \"{}\"\nkey = \"{}\"\n\n{}",
        crt.display(),
        key.display(),
        one_route(origin.addr)
    ))
    .await;
    let outer = Gw::start(&tls_upstream(
        inner.tls_addr(),
        &format!(
            "protocol = \"http2\"\ntls_server_name = \"app.test\"\ntls_ca = \"{}\"",
            crt.display()
        ),
    ))
    .await;
    let r = send(outer.addr, get("/h2")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "deep"));
    let line = inner.access(&r.request_id()).await;
    assert_eq!(line["protocol"], "HTTP/2.0", "{line}");
    // A TLS server that offers only http/1.1: HTTP/1.1 it is.
    let p = pki(false);
    let o = Origin::start_tls(Script::Ok("one\n".into()), p.server.clone())
        .await
        .unwrap();
    let gw = Gw::start(&tls_upstream(
        o.addr,
        &format!(
            "protocol = \"http2\"\ntls_server_name = \"app.test\"\ntls_ca = \"{}\"",
            p.ca_pem.display()
        ),
    ))
    .await;
    let r = send(gw.addr, get("/")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "one\n"));
    gw.stop().await;
    outer.stop().await;
    inner.stop().await;
}

/// A server that requires a client certificate (mTLS): baton presents
/// `tls_client_cert`; without one the handshake fails, explained.
#[tokio::test]
async fn client_certificate_to_an_upstream_that_requires_one() {
    let p = pki(false);
    // The client's own CA and certificate.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let client_key = rcgen::KeyPair::generate().unwrap();
    let client = rcgen::CertificateParams::new(vec!["baton.client".to_string()])
        .unwrap()
        .signed_by(&client_key, &issuer)
        .unwrap();
    std::fs::write(p.dir.path().join("client.crt"), client.pem()).unwrap();
    std::fs::write(p.dir.path().join("client.key"), client_key.serialize_pem()).unwrap();
    // The origin trusts that CA for clients and requires a certificate.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["app.test".to_string()]).unwrap();
    std::fs::write(p.dir.path().join("server.pem"), ck.cert.pem()).unwrap();
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![ck.cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into()),
        )
        .unwrap();
    let o = Origin::start_tls(Script::Ok("mutual\n".into()), Arc::new(server))
        .await
        .unwrap();
    let d = p.dir.path().display();
    let gw = Gw::start(&tls_upstream(
        o.addr,
        &format!(
            "tls_server_name = \"app.test\"\ntls_ca = \"{d}/server.pem\"\ntls_client_cert = \"{d}/client.crt\"\ntls_client_key = \"{d}/client.key\"\nretries = 0"
        ),
    ))
    .await;
    let r = send(gw.addr, get("/")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "mutual\n"));
    gw.stop().await;
    // Without the client certificate: the server's alert, classified.
    let gw = Gw::start(&tls_upstream(
        o.addr,
        &format!("tls_server_name = \"app.test\"\ntls_ca = \"{d}/server.pem\"\nretries = 0"),
    ))
    .await;
    let r = send(gw.addr, get("/")).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(
        r.proxy_error().starts_with("tls_"),
        "{}",
        r.header("proxy-status")
    );
    gw.stop().await;
}
