//! The TLS side of HTTPS listeners: the rustls server config built from
//! `[tls]`, with a certificate chosen by the client's server name (SNI).
//!
//! Owns: certificate selection (exact names, then `*.` wildcards one label
//! deep, then the first certificate for a client that names no server) and
//! the protocol policy (TLS 1.2 and 1.3 only, rustls's default cipher
//! suites, which are all AEAD with forward secrecy; ALPN `h2` then
//! `http/1.1`; session resumption by tickets and a session cache).
//! Built into each [`super::Runtime`], so a reload serves rotated
//! certificates to new connections while open ones keep theirs.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::TlsConfig;

/// Picks a certificate by the client's server name.
#[derive(Debug)]
struct BySni {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` stored under `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    /// For a client that sends no server name (an IP address in the URL).
    default: Arc<CertifiedKey>,
}

impl BySni {
    fn new(tls: &TlsConfig) -> Option<BySni> {
        let default = tls.certificates.first()?.key.clone();
        let (mut exact, mut wildcard) = (HashMap::new(), HashMap::new());
        // The first certificate listed for a name wins, as in the file.
        for c in &tls.certificates {
            for n in &c.names {
                match n.strip_prefix("*.") {
                    Some(parent) => wildcard.entry(parent.to_string()),
                    None => exact.entry(n.clone()),
                }
                .or_insert_with(|| c.key.clone());
            }
        }
        Some(BySni {
            exact,
            wildcard,
            default,
        })
    }

    /// The certificate for `name`; `None` when no certificate names it.
    fn pick(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = name else {
            return Some(self.default.clone());
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(k) = self.exact.get(&name) {
            return Some(k.clone());
        }
        let parent = name.split_once('.')?.1;
        self.wildcard.get(parent).cloned()
    }
}

impl ResolvesServerCert for BySni {
    /// A server name no certificate covers fails the handshake (rustls
    /// sends the `access_denied` alert): serving another site's certificate
    /// would only move the error to the browser's certificate warning.
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name())
    }
}

/// The rustls server config for `tls`; `None` when it has no certificate.
pub fn server_config(tls: &TlsConfig) -> Option<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .ok()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(BySni::new(tls)?));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Resumption: TLS 1.3 tickets (keys rotated every 6 hours) and the
    // session cache rustls keeps by default for TLS 1.2.
    if let Ok(t) = rustls::crypto::ring::Ticketer::new() {
        cfg.ticketer = t;
    }
    cfg.send_tls13_tickets = 2;
    Some(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Arc<CertifiedKey> {
        let c = rcgen_free_key(name);
        Arc::new(c)
    }

    /// A `CertifiedKey` whose chain is just its name's bytes: selection
    /// does not look inside.
    fn rcgen_free_key(name: &str) -> CertifiedKey {
        let der = rustls::pki_types::PrivatePkcs8KeyDer::from(ED25519_PKCS8.to_vec());
        let signer = rustls::crypto::ring::sign::any_eddsa_type(&der).unwrap();
        CertifiedKey::new(
            vec![rustls::pki_types::CertificateDer::from(
                name.as_bytes().to_vec(),
            )],
            signer,
        )
    }

    /// An Ed25519 key in PKCS#8 (RFC 8410's example).
    const ED25519_PKCS8: [u8; 48] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20, 0xd4, 0xee, 0x72, 0xdb, 0xf9, 0x13, 0x58, 0x4a, 0xd5, 0xb6, 0xd8, 0xf1, 0xf7, 0x69,
        0xf8, 0xad, 0x3a, 0xfe, 0x7c, 0x28, 0xcb, 0xf1, 0xd4, 0xfb, 0xe0, 0x97, 0xa8, 0x8f, 0x44,
        0x75, 0x58, 0x42,
    ];

    #[test]
    fn sni_picks_exact_then_wildcard_then_refuses() {
        let sni = BySni {
            exact: [("shop.example".to_string(), key("shop"))].into(),
            wildcard: [("example".to_string(), key("wild"))].into(),
            default: key("default"),
        };
        let chain = |n: Option<&str>| {
            sni.pick(n)
                .map(|k| String::from_utf8(k.cert[0].to_vec()).unwrap())
        };
        assert_eq!(chain(Some("shop.example")).as_deref(), Some("shop"));
        assert_eq!(chain(Some("SHOP.example.")).as_deref(), Some("shop"));
        assert_eq!(chain(Some("blog.example")).as_deref(), Some("wild"));
        // A wildcard covers one label only.
        assert_eq!(chain(Some("a.blog.example")), None);
        assert_eq!(chain(Some("other.test")), None);
        assert_eq!(chain(None).as_deref(), Some("default"));
    }
}
