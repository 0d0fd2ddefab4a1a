//! Automatic certificates (ACME, RFC 8555) for `[tls.acme]`: an account
//! and one certificate for the configured names, kept in `dir` (the state
//! directory's `acme/` by default), obtained by HTTP-01 or TLS-ALPN-01
//! (RFC 8737), renewed when two thirds of its lifetime have passed, retried
//! with a growing pause after a failure while the old certificate keeps
//! serving. The protocol is the `instant-acme` crate's; this module only
//! decides when, answers the challenges and explains failures.

use std::sync::{Arc, Weak};
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::Gateway;
use crate::config::{AcmeChallenge, AcmeConfig, cert_facts, certified_key};

/// The first pause after a failed attempt; it doubles up to the cap.
const FIRST_RETRY: Duration = Duration::from_secs(30);
const MAX_RETRY: Duration = Duration::from_secs(6 * 3600);

/// Runs `cfg`'s certificate for the gateway's life (until it is dropped
/// or the task is aborted on a reload that changes `[tls.acme]`).
pub fn spawn(gw: &Arc<Gateway>, cfg: AcmeConfig) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(Arc::downgrade(gw), cfg))
}

async fn run(gw: Weak<Gateway>, cfg: AcmeConfig) {
    let mut renew_at = match stored(&cfg) {
        Some((key, facts)) => {
            let Some(g) = gw.upgrade() else { return };
            g.tls.acme.install(&cfg.domains, key, facts.not_after);
            g.publish_certificates();
            tracing::info!(target: "baton::acme", domains = %cfg.domains.join(", "), not_after = facts.not_after, "serving the stored ACME certificate");
            renewal_time(facts.not_before, facts.not_after)
        }
        None => 0,
    };
    let mut pause = FIRST_RETRY;
    loop {
        let now = crate::core::clock::now_s();
        if now < renew_at {
            // Sleep in steps, so a dropped gateway ends the task.
            let wait = Duration::from_secs((renew_at - now).min(3600) as u64);
            tokio::time::sleep(wait).await;
            if gw.strong_count() == 0 {
                return;
            }
            continue;
        }
        let Some(g) = gw.upgrade() else { return };
        match obtain(&g, &cfg).await {
            Ok((key, facts)) => {
                g.tls.acme.install(&cfg.domains, key, facts.not_after);
                g.publish_certificates();
                tracing::info!(target: "baton::acme", domains = %cfg.domains.join(", "), not_after = facts.not_after, "ACME certificate obtained");
                renew_at = renewal_time(facts.not_before, facts.not_after);
                pause = FIRST_RETRY;
            }
            Err(f) => {
                tracing::error!(target: "baton::acme", domains = %cfg.domains.join(", "), fix = %f.fix, retry_in_s = pause.as_secs(), "ACME certificate not obtained: {}", f.what);
                renew_at = crate::core::clock::now_s() + pause.as_secs() as i64;
                pause = (pause * 2).min(MAX_RETRY);
            }
        }
        drop(g);
    }
}

/// When two thirds of the lifetime have passed (Let's Encrypt's advice:
/// 60 days into a 90-day certificate).
fn renewal_time(not_before: i64, not_after: i64) -> i64 {
    not_before + (not_after - not_before) * 2 / 3
}

fn cert_path(cfg: &AcmeConfig) -> std::path::PathBuf {
    cfg.dir.join(format!("{}.crt", cfg.domains[0]))
}

fn key_path(cfg: &AcmeConfig) -> std::path::PathBuf {
    cfg.dir.join(format!("{}.key", cfg.domains[0]))
}

/// The stored certificate, if it covers every configured name and has
/// not expired.
fn stored(cfg: &AcmeConfig) -> Option<(Arc<rustls::sign::CertifiedKey>, crate::config::CertFacts)> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path(cfg))
        .ok()?
        .collect::<Result<_, _>>()
        .ok()?;
    let key = PrivateKeyDer::from_pem_file(key_path(cfg)).ok()?;
    let facts = cert_facts(chain.first()?)?;
    if facts.not_after <= crate::core::clock::now_s()
        || !cfg.domains.iter().all(|d| facts.names.contains(d))
    {
        return None;
    }
    Some((Arc::new(certified_key(chain, &key).ok()?), facts))
}

/// Why an attempt failed, and what to do.
struct Failed {
    what: String,
    fix: String,
}

impl Failed {
    fn new(what: impl Into<String>, fix: impl Into<String>) -> Failed {
        Failed {
            what: what.into(),
            fix: fix.into(),
        }
    }
}

/// An `instant-acme` error in the operator's terms: the CA's problem type
/// (RFC 8555 §6.7) names what went wrong; each gets its fix.
fn explain(cfg: &AcmeConfig, e: instant_acme::Error) -> Failed {
    let port = match cfg.challenge {
        AcmeChallenge::Http01 => "80",
        AcmeChallenge::TlsAlpn01 => "443",
    };
    match e {
        instant_acme::Error::Api(p) => {
            let kind = p
                .r#type
                .as_deref()
                .unwrap_or("")
                .rsplit(':')
                .next()
                .unwrap_or("")
                .to_string();
            let detail = p.detail.clone().unwrap_or_default();
            let fix = match kind.as_str() {
                "connection" | "incorrectResponse" | "unauthorized" => format!("the CA could not reach baton for the challenge: make port {port} of every name in tls.acme.domains reach this baton (DNS A/AAAA records, firewall, a proxy in front)"),
                "dns" => "the CA could not resolve a name: check its A/AAAA records (`dig NAME`), and CAA records if any".into(),
                "caa" => "a CAA record forbids this CA: add one for it or remove the restriction".into(),
                "rateLimited" => "the CA's rate limit: wait (the old certificate keeps serving); do not delete the state directory, which holds the account".into(),
                "rejectedIdentifier" => "the CA will not issue for this name (a private or reserved name?)".into(),
                "badNonce" | "serverInternal" => "a passing problem at the CA: baton retries".into(),
                _ => "see the CA's message; baton retries".into(),
            };
            Failed::new(format!("{kind}: {detail}"), fix)
        }
        other => Failed::new(
            format!("talking to {}: {other}", cfg.directory),
            "check that tls.acme.directory is right and reachable from this host (`curl -v URL`), and tls.acme.directory_ca for a private CA",
        ),
    }
}

async fn account(cfg: &AcmeConfig) -> Result<Account, Failed> {
    let e = |e| explain(cfg, e);
    let builder = || match &cfg.directory_ca {
        Some(ca) => Account::builder_with_root(ca),
        None => Account::builder(),
    };
    // The account file is per directory: another CA is another account.
    let file = cfg.dir.join(format!(
        "account-{:016x}.json",
        crate::upstream::balance::fnv1a(cfg.directory.as_bytes())
    ));
    if let Ok(text) = std::fs::read_to_string(&file)
        && let Ok(creds) = serde_json::from_str::<AccountCredentials>(&text)
    {
        return builder()
            .map_err(e)?
            .from_credentials(creds)
            .await
            .map_err(e);
    }
    let contact = cfg.email.as_ref().map(|m| format!("mailto:{m}"));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (account, creds) = builder()
        .map_err(e)?
        .create(
            &NewAccount {
                contact: &contacts,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            cfg.directory.clone(),
            None,
        )
        .await
        .map_err(e)?;
    let json = serde_json::to_string(&creds).unwrap_or_default();
    write_private(&file, json.as_bytes()).map_err(|err| {
        Failed::new(
            format!("cannot keep the account in {}: {err}", file.display()),
            "make tls.acme.dir writable by baton's user",
        )
    })?;
    Ok(account)
}

/// Writes a secret file readable by its owner only.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// One order, from account to stored certificate.
async fn obtain(
    gw: &Gateway,
    cfg: &AcmeConfig,
) -> Result<(Arc<rustls::sign::CertifiedKey>, crate::config::CertFacts), Failed> {
    let e = |e| explain(cfg, e);
    let account = account(cfg).await?;
    let ids: Vec<Identifier> = cfg.domains.iter().cloned().map(Identifier::Dns).collect();
    let mut order = account.new_order(&NewOrder::new(&ids)).await.map_err(e)?;
    let kind = match cfg.challenge {
        AcmeChallenge::Http01 => ChallengeType::Http01,
        AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
    };
    let acme = &gw.tls.acme;
    let mut tokens = Vec::new();
    let mut auths = order.authorizations();
    while let Some(a) = auths.next().await {
        let mut a = a.map_err(e)?;
        if a.status == AuthorizationStatus::Valid {
            continue;
        }
        let mut ch = a.challenge(kind.clone()).ok_or_else(|| {
            Failed::new(
                format!("the CA offers no {kind:?} challenge"),
                "set tls.acme.challenge to the other kind",
            )
        })?;
        let name = ch.identifier().to_string();
        let ka = ch.key_authorization();
        match kind {
            ChallengeType::TlsAlpn01 => {
                let key = alpn_certificate(&name, ka.digest().as_ref())
                    .map_err(|w| Failed::new(w, "report a bug"))?;
                if let Ok(mut m) = acme.alpn.lock() {
                    m.insert(name.clone(), key);
                }
            }
            _ => {
                if let Ok(mut m) = acme.http.lock() {
                    m.insert(ch.token.clone(), ka.as_str().to_string());
                }
            }
        }
        tokens.push((ch.token.clone(), name));
        ch.set_ready().await.map_err(e)?;
    }
    let status = order.poll_ready(&RetryPolicy::default()).await;
    // The challenges are answered; forget them whatever the outcome.
    for (token, name) in &tokens {
        if let Ok(mut m) = acme.http.lock() {
            m.remove(token);
        }
        if let Ok(mut m) = acme.alpn.lock() {
            m.remove(name);
        }
    }
    let status = status.map_err(e)?;
    if status != OrderStatus::Ready {
        // The failed authorization's problem says why.
        let mut why = None;
        let mut auths = order.authorizations();
        while let Some(Ok(mut a)) = auths.next().await {
            if let Some(ch) = a.challenge(kind.clone())
                && let Some(p) = ch.error.clone()
            {
                why = Some(p);
                break;
            }
        }
        return Err(match why {
            Some(p) => explain(cfg, instant_acme::Error::Api(p)),
            None => Failed::new(
                format!("the order ended {status:?}"),
                "see the CA's account page; baton retries",
            ),
        });
    }
    let key_pem = order.finalize().await.map_err(e)?;
    let chain_pem = order
        .poll_certificate(&RetryPolicy::default())
        .await
        .map_err(e)?;
    let keep = |path: std::path::PathBuf, bytes: &[u8]| {
        write_private(&path, bytes).map_err(|err| {
            Failed::new(
                format!("cannot keep the certificate in {}: {err}", path.display()),
                "make tls.acme.dir writable by baton's user",
            )
        })
    };
    keep(key_path(cfg), key_pem.as_bytes())?;
    keep(cert_path(cfg), chain_pem.as_bytes())?;
    stored(cfg).ok_or_else(|| {
        Failed::new(
            "the issued certificate does not cover every name, or cannot be read",
            "report a bug with the files in tls.acme.dir",
        )
    })
}

/// The TLS-ALPN-01 certificate for `name`: self-signed, with the
/// acmeIdentifier extension holding the key authorization's digest.
fn alpn_certificate(name: &str, digest: &[u8]) -> Result<Arc<rustls::sign::CertifiedKey>, String> {
    let mut params =
        rcgen::CertificateParams::new(vec![name.to_string()]).map_err(|e| e.to_string())?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let der = PrivateKeyDer::Pkcs8(key.serialize_der().into());
    // Not through `certified_key`: its key check parses the certificate
    // with webpki, which refuses the critical acmeIdentifier extension.
    let signer =
        rustls::crypto::aws_lc_rs::sign::any_supported_type(&der).map_err(|e| e.to_string())?;
    Ok(Arc::new(rustls::sign::CertifiedKey::new(
        vec![cert.der().clone()],
        signer,
    )))
}

#[cfg(test)]
mod tests {
    use super::renewal_time;

    #[test]
    fn renewal_at_two_thirds_of_the_lifetime() {
        let day = 86_400;
        assert_eq!(renewal_time(0, 90 * day), 60 * day);
        assert_eq!(renewal_time(1000, 1000 + 6 * day), 1000 + 4 * day);
    }
}
