//! `server.listen_tls` and `[tls]`: HTTPS listeners and their certificates.
//! A certificate is read, parsed and matched with its key here, so that a
//! bad one is a config error naming its key and line (and a reload with
//! it keeps the old certificates serving).

use std::sync::Arc;

use toml::Spanned;

use super::Validator;
use crate::config::raw;
use crate::config::*;

impl Validator<'_> {
    pub(super) fn tls(&mut self, server: &raw::Server, tls: &raw::Tls) -> TlsConfig {
        let mut listen = Vec::new();
        if let Some(l) = &server.listen_tls {
            for a in l.get_ref() {
                if let Some(a) = self.socket_addr("server.listen_tls", a) {
                    listen.push(a);
                }
            }
        }
        let handshake_timeout = self.duration(
            "server.tls_handshake_timeout",
            &server.tls_handshake_timeout,
            defaults::TLS_HANDSHAKE_TIMEOUT,
        );
        let mut certificates = Vec::new();
        for (i, c) in tls.certificates.iter().flatten().enumerate() {
            if let Some(served) = self.served_cert(i, c) {
                certificates.push(served);
            }
        }
        if let Some(l) = &server.listen_tls
            && !listen.is_empty()
            && certificates.is_empty()
            && tls.certificates.as_ref().is_none_or(|c| c.is_empty())
        {
            self.err(
                "server.listen_tls",
                l.span(),
                "an HTTPS listener with no certificate to serve",
                "add a [[tls.certificates]] section with cert = \"FILE.crt\" and key = \"FILE.key\" (PEM)",
            );
        }
        let redirect_https = server.redirect_https.unwrap_or(false);
        if redirect_https && listen.is_empty() {
            self.err(
                "server.redirect_https",
                0..0,
                "redirect_https needs an HTTPS listener to send clients to",
                "add server.listen_tls (and [[tls.certificates]]), or remove redirect_https",
            );
        }
        let hsts = server.hsts.as_ref().and_then(|h| {
            let v = h.get_ref().trim();
            let ok = v.to_ascii_lowercase().starts_with("max-age=");
            match http::HeaderValue::from_str(v) {
                Ok(value) if ok => Some(value),
                _ => {
                    self.err(
                        "server.hsts",
                        h.span(),
                        format!("{v:?} is not a Strict-Transport-Security value"),
                        "write hsts = \"max-age=31536000\" (add \"; includeSubDomains\" only when every subdomain serves HTTPS)",
                    );
                    None
                }
            }
        });
        TlsConfig {
            listen,
            handshake_timeout,
            certificates,
            redirect_https,
            hsts,
        }
    }

    fn served_cert(&mut self, i: usize, c: &raw::TlsCertificate) -> Option<ServedCert> {
        use rustls::pki_types::PrivateKeyDer;
        use rustls::pki_types::pem::PemObject;
        let key_name = |k: &str| format!("tls.certificates[{i}].{k}");
        let chain = self.pem_certs(key_name("cert"), &c.cert);
        let key_path = self.path(c.key.get_ref());
        let key = match PrivateKeyDer::from_pem_file(&key_path) {
            Ok(k) => k,
            Err(e) => {
                self.err(
                    key_name("key"),
                    c.key.span(),
                    format!("cannot read a private key from {}: {e}", key_path.display()),
                    "give the PEM private key (-----BEGIN PRIVATE KEY-----, RSA or EC) that goes with the certificate",
                );
                return None;
            }
        };
        let leaf = chain.first()?.clone();
        let signer = match rustls::crypto::ring::sign::any_supported_type(&key) {
            Ok(s) => s,
            Err(e) => {
                self.err(
                    key_name("key"),
                    c.key.span(),
                    format!("unsupported private key in {}: {e}", key_path.display()),
                    "use an RSA (2048 bits or more), ECDSA P-256/P-384 or Ed25519 key",
                );
                return None;
            }
        };
        let certified = rustls::sign::CertifiedKey::new(chain, signer);
        if let Err(e) = certified.keys_match() {
            self.err(
                key_name("key"),
                c.key.span(),
                format!("the key does not belong to the certificate: {e}"),
                "pair each certificate with its own key (compare `openssl x509 -noout -pubkey -in CERT` with `openssl pkey -pubout -in KEY`)",
            );
            return None;
        }
        let (names, not_after) = match leaf_facts(&leaf) {
            Some(f) => f,
            None => {
                self.err(
                    key_name("cert"),
                    c.cert.span(),
                    "the first certificate in the file cannot be parsed",
                    "put the site's own certificate first, then its intermediates",
                );
                return None;
            }
        };
        self.expiry_warning(&key_name("cert"), &c.cert, not_after);
        Some(ServedCert {
            names,
            key: Arc::new(certified),
            not_after,
            file: self.path(c.cert.get_ref()),
        })
    }

    fn expiry_warning(&mut self, key: &str, c: &Spanned<String>, not_after: i64) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let left = not_after - now;
        let soon = defaults::CERT_EXPIRY_WARNING.as_secs() as i64;
        if left <= 0 {
            self.warn(
                key,
                c.span(),
                "the certificate has expired: browsers refuse it",
                "renew it (`certbot renew`, or your CA's process) and reload",
            );
        } else if left < soon {
            self.warn(
                key,
                c.span(),
                format!("the certificate expires in {} days", left / 86_400),
                "renew it before then and reload; baton serves the new file to new connections",
            );
        }
    }
}

/// The leaf's DNS names (subjectAltName, else the subject's CN), lower
/// case, and its notAfter in Unix seconds.
pub fn leaf_facts(der: &[u8]) -> Option<(Vec<String>, i64)> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let mut names: Vec<String> = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        names.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    Some((names, cert.validity().not_after.timestamp()))
}
