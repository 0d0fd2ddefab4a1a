//! OCSP stapling for the configured certificates whose leaf names an OCSP
//! responder (Authority Information Access): the response is fetched from
//! the responder, checked (this certificate, status good, still current),
//! and sent in the handshake, so browsers need not ask the CA themselves.
//! Refreshed when half its validity has passed; a responder that fails is
//! logged and the last good response kept while it is current. Requests
//! and responses are encoded and parsed by the `x509-ocsp` crate. Like
//! nginx's default (`ssl_stapling_verify off`), the response's signature
//! is left to the client, which checks it anyway.

use std::sync::{Arc, Weak};
use std::time::Duration;

use der::{Decode, Encode};
use rustls::pki_types::CertificateDer;

use super::Gateway;

/// A fetched response: its DER and when to fetch again.
pub struct Staple {
    pub der: Vec<u8>,
    pub refresh_at: i64,
    pub next_update: i64,
}

/// The OCSP responder a certificate names, if any (`http://` only: OCSP
/// responders are plain HTTP by design, RFC 6960 appendix A).
pub fn responder(leaf: &[u8]) -> Option<String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(leaf).ok()?;
    for ext in cert.extensions() {
        if let ParsedExtension::AuthorityInfoAccess(aia) = ext.parsed_extension() {
            for d in &aia.accessdescs {
                if d.access_method == x509_parser::oid_registry::OID_PKIX_ACCESS_DESCRIPTOR_OCSP
                    && let GeneralName::URI(u) = &d.access_location
                    && u.starts_with("http://")
                {
                    return Some(u.to_string());
                }
            }
        }
    }
    None
}

/// Fetches and checks the OCSP response for `chain`'s leaf (its issuer the
/// second certificate).
pub async fn fetch(chain: &[CertificateDer<'static>], url: &str) -> Result<Staple, String> {
    use x509_ocsp::builder::OcspRequestBuilder;
    use x509_ocsp::{BasicOcspResponse, CertStatus, OcspResponse, OcspResponseStatus, Request};
    let [leaf, issuer, ..] = chain else {
        return Err("the chain has no issuer certificate after the leaf".into());
    };
    let leaf = x509_cert::Certificate::from_der(leaf).map_err(|e| e.to_string())?;
    let issuer = x509_cert::Certificate::from_der(issuer).map_err(|e| e.to_string())?;
    let req = Request::from_cert::<sha1::Sha1>(&issuer, &leaf).map_err(|e| e.to_string())?;
    let id = req.req_cert.clone();
    let body = OcspRequestBuilder::default()
        .with_request(req)
        .build()
        .to_der()
        .map_err(|e| e.to_string())?;
    let der = post(url, body).await?;
    let resp = OcspResponse::from_der(&der).map_err(|e| format!("not an OCSP response: {e}"))?;
    if resp.response_status != OcspResponseStatus::Successful {
        return Err(format!("the responder answered {:?}", resp.response_status));
    }
    let bytes = resp
        .response_bytes
        .ok_or("a successful response without a body")?;
    let basic = BasicOcspResponse::from_der(bytes.response.as_bytes())
        .map_err(|e| format!("not a basic OCSP response: {e}"))?;
    let single = basic
        .tbs_response_data
        .responses
        .iter()
        .find(|r| r.cert_id == id)
        .ok_or("the response is not about this certificate")?;
    match single.cert_status {
        CertStatus::Good(_) => {}
        CertStatus::Revoked(_) => return Err("the CA says this certificate is REVOKED".into()),
        CertStatus::Unknown(_) => return Err("the responder does not know this certificate".into()),
    }
    let secs = |t: &x509_ocsp::OcspGeneralizedTime| t.0.to_unix_duration().as_secs() as i64;
    let this_update = secs(&single.this_update);
    let next_update = single.next_update.as_ref().map_or(this_update + 3600, secs);
    let now = crate::core::clock::now_s();
    if next_update <= now {
        return Err("the response has already expired".into());
    }
    Ok(Staple {
        der,
        refresh_at: this_update + (next_update - this_update) / 2,
        next_update,
    })
}

/// POSTs an OCSP request to `url`; the body of a 2xx answer.
async fn post(url: &str, body: Vec<u8>) -> Result<Vec<u8>, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let (status, answer) =
        crate::upstream::post(&uri, &[], "application/ocsp-request", body.into())
            .await
            .map_err(|e| format!("{url}: {e}"))?;
    if !(200..300).contains(&status) {
        return Err(format!("{url} answered {status}"));
    }
    Ok(answer.to_vec())
}

/// Keeps the configured certificates' staples fresh, checking every
/// minute what is due.
pub fn spawn(gw: &Arc<Gateway>) {
    let gw: Weak<Gateway> = Arc::downgrade(gw);
    tokio::spawn(async move {
        loop {
            let Some(g) = gw.upgrade() else { return };
            let certs = g.runtime.load().config.tls.certificates.clone();
            for c in &certs {
                let Some(url) = c.key.cert.first().and_then(|l| responder(l)) else {
                    continue;
                };
                if !g.tls.staple_due(&c.key) {
                    continue;
                }
                match fetch(&c.key.cert, &url).await {
                    Ok(s) => {
                        tracing::info!(target: "baton::tls", file = %c.file.display(), responder = %url, next_update = s.next_update, "OCSP response stapled");
                        g.tls.staple(&c.key, s);
                    }
                    Err(e) => {
                        tracing::warn!(target: "baton::tls", file = %c.file.display(), responder = %url, fix = "check that this host reaches the responder; the handshake works without a staple, clients then ask the CA themselves", "OCSP response not fetched: {e}");
                        g.tls.staple_failed(&c.key);
                    }
                }
            }
            drop(g);
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
    });
}
