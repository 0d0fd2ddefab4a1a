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
    let provider = Arc::new(rustls::crypto::ring::default_provider());
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
