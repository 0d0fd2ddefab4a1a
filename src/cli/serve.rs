//! `baton serve`: load the config, start the gateway, reload on SIGHUP
//! (a bad file keeps the running config), drain on SIGINT or SIGTERM.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use super::{init_tracing, runtime, wait_for_signal};
use crate::config;

pub fn run(config: &Path) -> ExitCode {
    init_tracing();
    let cfg = match config::load(config) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::from(1);
        }
    };
    // Worker 0 is this runtime; server::start adds the others.
    let rt = match runtime(1, 1) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async move {
        let running = match crate::server::start(cfg).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("baton: {e}");
                return ExitCode::from(1);
            }
        };
        let listen: Vec<String> = running
            .addrs
            .iter()
            .map(|a| a.to_string())
            .chain(running.tls_addrs.iter().map(|a| format!("https://{a}")))
            .collect();
        let admin = running.admin.map_or("off".to_string(), |a| a.to_string());
        tracing::info!(listen = %listen.join(", "), admin = %admin, "baton serving");
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let stop = wait_for_signal();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = async { match hup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending().await } } => {
                    // A bad file is refused with its full error list;
                    // the running config keeps serving.
                    if let Err(e) = running.gateway.reload() {
                        tracing::error!(errors = %e, "reload refused: the running config keeps serving");
                    }
                }
            }
        }
        tracing::info!("shutting down: finishing in-flight requests");
        running.shutdown(Duration::from_secs(30)).await;
        ExitCode::SUCCESS
    })
}
