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
        let expiry_warning = self.duration(
            "tls.expiry_warning",
            &tls.expiry_warning,
            defaults::CERT_EXPIRY_WARNING,
        );
        let mut certificates = Vec::new();
        for (i, c) in tls.certificates.iter().flatten().enumerate() {
            if let Some(served) = self.served_cert(i, c, expiry_warning) {
                certificates.push(served);
            }
        }
        let acme = tls
            .acme
            .as_ref()
            .and_then(|a| self.acme(a, !listen.is_empty()));
        if let Some(l) = &server.listen_tls
            && !listen.is_empty()
            && certificates.is_empty()
            && tls.certificates.as_ref().is_none_or(|c| c.is_empty())
            && tls.acme.is_none()
        {
            self.err(
                "server.listen_tls",
                l.span(),
                "an HTTPS listener with no certificate to serve",
                "add a [[tls.certificates]] section with cert = \"FILE.crt\" and key = \"FILE.key\" (PEM), or [tls.acme] with domains = [\"example.com\"]",
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
            acme,
            expiry_warning,
        }
    }

    fn acme(&mut self, a: &raw::TlsAcme, https: bool) -> Option<AcmeConfig> {
        let mut domains = Vec::new();
        for d in a.domains.get_ref() {
            let name = d
                .get_ref()
                .trim()
                .trim_end_matches('.')
                .to_ascii_lowercase();
            let valid = !name.is_empty()
                && name.len() <= 253
                && name.contains('.')
                && name.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            if name.starts_with("*.") {
                self.err(
                    "tls.acme.domains",
                    d.span(),
                    format!("{name:?} is a wildcard: HTTP-01 and TLS-ALPN-01 cannot prove it"),
                    "list each name (\"www.example.com\"), or get the wildcard by DNS-01 elsewhere and give it in [[tls.certificates]]",
                );
            } else if !valid {
                self.err(
                    "tls.acme.domains",
                    d.span(),
                    format!("{name:?} is not a DNS name a CA can issue for"),
                    "write names such as \"example.com\" and \"www.example.com\"",
                );
            } else {
                domains.push(name);
            }
        }
        if a.domains.get_ref().is_empty() {
            self.err(
                "tls.acme.domains",
                a.domains.span(),
                "no domain to get a certificate for",
                "write domains = [\"example.com\", \"www.example.com\"]",
            );
        }
        if !https {
            self.err(
                "tls.acme",
                a.domains.span(),
                "an ACME certificate with no HTTPS listener to serve it",
                "add server.listen_tls = [\"0.0.0.0:443\"]",
            );
        }
        let directory = a.directory.as_ref().map_or(
            "https://acme-v02.api.letsencrypt.org/directory".to_string(),
            |d| d.get_ref().clone(),
        );
        if let Some(d) = &a.directory
            && !d.get_ref().starts_with("https://")
        {
            self.err(
                "tls.acme.directory",
                d.span(),
                format!("{:?} is not an https:// URL", d.get_ref()),
                "use the CA's directory URL, e.g. https://acme-v02.api.letsencrypt.org/directory",
            );
        }
        let challenge = match a.challenge.as_ref().map(|c| c.get_ref().as_str()) {
            None | Some("http-01") => AcmeChallenge::Http01,
            Some("tls-alpn-01") => AcmeChallenge::TlsAlpn01,
            Some(other) => {
                let c = a.challenge.as_ref().expect("matched Some");
                self.err(
                    "tls.acme.challenge",
                    c.span(),
                    format!("unknown challenge {other:?}"),
                    "use \"http-01\" (port 80 must reach baton) or \"tls-alpn-01\" (port 443 must reach baton)",
                );
                AcmeChallenge::Http01
            }
        };
        let directory_ca = a.directory_ca.as_ref().map(|c| {
            let p = self.path(c.get_ref());
            let _ = self.pem_certs("tls.acme.directory_ca".into(), c);
            p
        });
        let dir = a.dir.as_ref().map_or_else(
            || crate::config::state_dir().join("acme"),
            |d| self.path(d.get_ref()),
        );
        (!domains.is_empty()).then_some(AcmeConfig {
            domains,
            email: a.email.as_ref().map(|e| e.get_ref().clone()),
            directory,
            directory_ca,
            challenge,
            dir,
        })
    }

    fn served_cert(
        &mut self,
        i: usize,
        c: &raw::TlsCertificate,
        warn_within: std::time::Duration,
    ) -> Option<ServedCert> {
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
        let certified = match certified_key(chain, &key) {
            Ok(k) => k,
            Err(e) => {
                self.err(
                    key_name("key"),
                    c.key.span(),
                    e,
                    "pair each certificate with its own RSA, ECDSA or Ed25519 key (compare `openssl x509 -noout -pubkey -in CERT` with `openssl pkey -pubout -in KEY`)",
                );
                return None;
            }
        };
        let Some(CertFacts {
            names, not_after, ..
        }) = cert_facts(&leaf)
        else {
            self.err(
                key_name("cert"),
                c.cert.span(),
                "the first certificate in the file cannot be parsed",
                "put the site's own certificate first, then its intermediates",
            );
            return None;
        };
        self.expiry_warning(&key_name("cert"), &c.cert, not_after, warn_within);
        Some(ServedCert {
            names,
            key: Arc::new(certified),
            not_after,
            file: self.path(c.cert.get_ref()),
        })
    }

    fn expiry_warning(
        &mut self,
        key: &str,
        c: &Spanned<String>,
        not_after: i64,
        within: std::time::Duration,
    ) {
        let left = not_after - crate::core::clock::now_s();
        let soon = within.as_secs() as i64;
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
