//! The TLS side of HTTPS listeners: one rustls server config for the
//! gateway's life, whose certificate resolver reads the certificates of
//! the current config (swapped on reload) and those ACME obtained.
//!
//! Owns: certificate selection (exact names, then `*.` wildcards one label
//! deep, then the first certificate for a client that names no server;
//! ACME's TLS-ALPN-01 challenge certificates for a validator that asks
//! for `acme-tls/1`) and the protocol policy (TLS 1.2 and 1.3 only,
//! rustls's default cipher suites, which are all AEAD with forward
//! secrecy; ALPN `h2` then `http/1.1`; session resumption by tickets and a
//! session cache). New connections see a reload's or a renewal's
//! certificates; open ones keep theirs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::TlsConfig;

/// The ALPN protocol of ACME's TLS-ALPN-01 validation (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Certificates by name.
#[derive(Debug, Default)]
struct BySni {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` stored under `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    /// For a client that sends no server name (an IP address in the URL).
    default: Option<Arc<CertifiedKey>>,
}

impl BySni {
    fn new<'a>(certs: impl IntoIterator<Item = (&'a [String], &'a Arc<CertifiedKey>)>) -> BySni {
        let mut sni = BySni::default();
        // The first certificate listed for a name wins, as in the file.
        for (names, key) in certs {
            sni.default.get_or_insert_with(|| key.clone());
            for n in names {
                match n.strip_prefix("*.") {
                    Some(parent) => sni.wildcard.entry(parent.to_string()),
                    None => sni.exact.entry(n.clone()),
                }
                .or_insert_with(|| key.clone());
            }
        }
        sni
    }

    fn exact(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.exact.get(name).cloned()
    }

    fn wildcard(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let parent = name.split_once('.')?.1;
        self.wildcard.get(parent).cloned()
    }
}

/// What ACME obtained and what its validations need, shared with the
/// ACME task (`gateway::acme`).
#[derive(Debug, Default)]
pub struct AcmeCerts {
    /// Issued certificates by name.
    pub issued: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
    /// TLS-ALPN-01: the challenge certificate by name.
    pub alpn: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    /// HTTP-01: the key authorization by token.
    pub http: Mutex<HashMap<String, String>>,
    /// The issued certificates' notAfter by name (for metrics).
    pub expiry: Mutex<HashMap<String, i64>>,
}

impl AcmeCerts {
    /// Serves `key` (valid until `not_after`) for `names` from now on.
    pub fn install(&self, names: &[String], key: Arc<CertifiedKey>, not_after: i64) {
        let mut next = (**self.issued.load()).clone();
        for n in names {
            next.insert(n.clone(), key.clone());
        }
        self.issued.store(Arc::new(next));
        if let Ok(mut e) = self.expiry.lock() {
            for n in names {
                e.insert(n.clone(), not_after);
            }
        }
    }
}

#[derive(Debug)]
struct Resolver {
    configured: ArcSwap<BySni>,
    acme: Arc<AcmeCerts>,
    /// The configured certificates with an OCSP response stapled, by the
    /// address of the configured `CertifiedKey`.
    stapled: ArcSwap<HashMap<usize, Arc<CertifiedKey>>>,
}

fn key_id(k: &Arc<CertifiedKey>) -> usize {
    Arc::as_ptr(k) as usize
}

impl ResolvesServerCert for Resolver {
    /// A server name no certificate covers fails the handshake (rustls
    /// sends the `access_denied` alert): serving another site's certificate
    /// would only move the error to the browser's certificate warning.
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello
            .server_name()
            .map(|n| n.trim_end_matches('.').to_ascii_lowercase());
        let acme_validation = hello
            .alpn()
            .is_some_and(|mut p| p.any(|p| p == ACME_TLS_ALPN));
        if acme_validation {
            let n = name?;
            return self.acme.alpn.lock().ok()?.get(&n).cloned();
        }
        let configured = self.configured.load();
        let Some(name) = name else {
            return configured
                .default
                .clone()
                .map(|k| self.with_staple(k))
                .or_else(|| self.acme.issued.load().values().next().cloned());
        };
        configured
            .exact(&name)
            .map(|k| self.with_staple(k))
            .or_else(|| self.acme.issued.load().get(&name).cloned())
            .or_else(|| configured.wildcard(&name).map(|k| self.with_staple(k)))
    }
}

impl Resolver {
    fn with_staple(&self, k: Arc<CertifiedKey>) -> Arc<CertifiedKey> {
        self.stapled.load().get(&key_id(&k)).cloned().unwrap_or(k)
    }
}

/// When each staple is due again, by key id: `(refresh_at, expires_at)`.
type Due = Mutex<HashMap<usize, (i64, i64)>>;

/// The HTTPS side of the gateway.
pub struct Tls {
    due: Due,
    resolver: Arc<Resolver>,
    /// For HTTPS listeners; one for the gateway's life.
    pub server_config: Arc<rustls::ServerConfig>,
    pub acme: Arc<AcmeCerts>,
}

impl Tls {
    pub fn new(tls: &TlsConfig) -> Tls {
        let acme = Arc::new(AcmeCerts::default());
        let resolver = Arc::new(Resolver {
            configured: ArcSwap::from_pointee(configured(tls)),
            acme: acme.clone(),
            stapled: ArcSwap::from_pointee(HashMap::new()),
        });
        Tls {
            due: Mutex::new(HashMap::new()),
            server_config: server_config(resolver.clone()),
            resolver,
            acme,
        }
    }

    /// Serves the certificates of a new config to new connections (their
    /// staples are fetched anew).
    pub fn reload(&self, tls: &TlsConfig) {
        self.resolver.configured.store(Arc::new(configured(tls)));
        self.resolver.stapled.store(Arc::new(HashMap::new()));
        if let Ok(mut d) = self.due.lock() {
            d.clear();
        }
    }

    /// Whether `key`'s OCSP response should be fetched now.
    pub fn staple_due(&self, key: &Arc<CertifiedKey>) -> bool {
        let now = crate::core::clock::now_s();
        self.due
            .lock()
            .map(|d| d.get(&key_id(key)).is_none_or(|(at, _)| now >= *at))
            .unwrap_or(false)
    }

    /// Staples `s` to `key` from now on.
    pub fn staple(&self, key: &Arc<CertifiedKey>, s: super::ocsp::Staple) {
        let stapled = Arc::new(CertifiedKey {
            cert: key.cert.clone(),
            key: key.key.clone(),
            ocsp: Some(s.der),
        });
        let mut next = (**self.resolver.stapled.load()).clone();
        next.insert(key_id(key), stapled);
        self.resolver.stapled.store(Arc::new(next));
        if let Ok(mut d) = self.due.lock() {
            d.insert(key_id(key), (s.refresh_at, s.next_update));
        }
    }

    /// A fetch failed: try again in 5 minutes; drop a staple that is no
    /// longer current (an expired response would fail the handshake in
    /// clients that check it).
    pub fn staple_failed(&self, key: &Arc<CertifiedKey>) {
        let now = crate::core::clock::now_s();
        let Ok(mut d) = self.due.lock() else { return };
        let expires = d.get(&key_id(key)).map_or(0, |(_, e)| *e);
        d.insert(key_id(key), (now + 300, expires));
        if expires <= now {
            let mut next = (**self.resolver.stapled.load()).clone();
            next.remove(&key_id(key));
            self.resolver.stapled.store(Arc::new(next));
        }
    }
}

fn configured(tls: &TlsConfig) -> BySni {
    BySni::new(
        tls.certificates
            .iter()
            .map(|c| (c.names.as_slice(), &c.key)),
    )
}

fn server_config(resolver: Arc<Resolver>) -> Arc<rustls::ServerConfig> {
    use rustls::crypto::aws_lc_rs::cipher_suite::*;
    // aws-lc-rs, not ring: its X25519, P-256 and SHA-2 are assembly of
    // the kind OpenSSL's are; with ring, baton served a quarter fewer full
    // handshakes a second in the same run (docs/benchmarks.md, "HTTPS
    // handshakes").
    let provider = rustls::crypto::CryptoProvider {
        // The server's order, not the client's (`ignore_client_order`),
        // and Mozilla's "intermediate" order: AES-128-GCM first. Its
        // SHA-256 key schedule runs on the CPU's SHA instructions where
        // AES-256-GCM's SHA-384 has none, and clients (OpenSSL, curl,
        // wrk) list AES-256 first.
        cipher_suites: vec![
            TLS13_AES_128_GCM_SHA256,
            TLS13_AES_256_GCM_SHA384,
            TLS13_CHACHA20_POLY1305_SHA256,
            TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ],
        ..rustls::crypto::aws_lc_rs::default_provider()
    };
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("aws-lc-rs supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
    cfg.ignore_client_order = true;
    // Resumption: TLS 1.3 tickets (keys rotated every 6 hours) and the
    // session cache rustls keeps by default for TLS 1.2.
    if let Ok(t) = rustls::crypto::aws_lc_rs::Ticketer::new() {
        cfg.ticketer = t;
    }
    cfg.send_tls13_tickets = 2;
    Arc::new(cfg)
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
        let signer = rustls::crypto::aws_lc_rs::sign::any_eddsa_type(&der).unwrap();
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
    fn sni_picks_exact_then_wildcard_and_the_first_as_default() {
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (d, s, w) = (key("default"), key("shop"), key("wild"));
        let (dn, sn, wn) = (
            names(&["other.example"]),
            names(&["shop.example"]),
            names(&["*.example"]),
        );
        let sni = BySni::new([
            (dn.as_slice(), &d),
            (sn.as_slice(), &s),
            (wn.as_slice(), &w),
        ]);
        let chain = |k: Option<Arc<CertifiedKey>>| {
            k.map(|k| String::from_utf8(k.cert[0].to_vec()).unwrap())
        };
        assert_eq!(chain(sni.exact("shop.example")).as_deref(), Some("shop"));
        assert_eq!(chain(sni.wildcard("blog.example")).as_deref(), Some("wild"));
        // A wildcard covers one label only.
        assert_eq!(chain(sni.wildcard("a.blog.example")), None);
        assert_eq!(chain(sni.exact("other.test")), None);
        assert_eq!(chain(sni.default.clone()).as_deref(), Some("default"));
    }
}
