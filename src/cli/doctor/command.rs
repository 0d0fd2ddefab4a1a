//! `baton doctor`'s command line: one target (`--repeat` sums up what
//! varied), or every server of a config (`--config`) with the config's
//! own findings first.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use super::Options;
use crate::cli::{DoctorArgs, runtime};
use crate::config;

pub fn run(args: DoctorArgs) -> ExitCode {
    let DoctorArgs {
        target,
        json,
        timeout,
        idle_wait,
        repeat,
        config: config_file,
        fcgi_ping,
        nameserver,
    } = args;
    let (Some(timeout), Some(idle_wait)) = (
        config::parse_duration(&timeout),
        config::parse_duration(&idle_wait),
    ) else {
        eprintln!("baton doctor: invalid --timeout or --idle-wait: write \"5s\" or \"500ms\"");
        return ExitCode::from(2);
    };
    let rt = match runtime(1, 2) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let mut nameservers = Vec::new();
    for n in &nameserver {
        match n
            .parse::<std::net::SocketAddr>()
            .or_else(|_| n.parse::<std::net::IpAddr>().map(|ip| (ip, 53).into()))
        {
            Ok(a) => nameservers.push(a.to_string()),
            Err(_) => {
                eprintln!(
                    "baton doctor: --nameserver {n}: write an IP address, e.g. 127.0.0.53 or 10.0.0.2:53"
                );
                return ExitCode::from(2);
            }
        }
    }
    let opts = Options {
        timeout,
        idle_wait,
        ping_path: fcgi_ping,
        nameservers,
    };
    if let Some(file) = config_file {
        return rt.block_on(config_mode(&file, opts, json));
    }
    let Some(target) = target else {
        eprintln!("baton doctor: give a target or --config");
        return ExitCode::from(2);
    };
    rt.block_on(target_mode(&target, &opts, idle_wait, repeat, json))
}

/// Every server of every upstream in `file`.
async fn config_mode(file: &Path, mut opts: Options, json: bool) -> ExitCode {
    let cfg = match config::load(file) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::from(2);
        }
    };
    // The nameservers baton itself would ask.
    if opts.nameservers.is_empty() {
        opts.nameservers = cfg
            .resolver
            .nameservers
            .iter()
            .map(|a| a.to_string())
            .collect();
    }
    let mut worst = 0;
    let mut all = Vec::new();
    // The config's own findings first: the timeout ladder,
    // header limits, shadowed routes (as `baton check`).
    let ladder: Vec<String> = crate::cli::check::findings(&cfg, false)
        .iter()
        .map(|f| {
            format!(
                "{}:{}: {}: {} (fix: {})",
                f.line, f.col, f.key, f.message, f.fix
            )
        })
        .collect();
    if !ladder.is_empty() {
        worst = 1;
    }
    if !json {
        for f in &ladder {
            println!("config: {f}");
        }
    }
    for t in super::config_targets(&cfg) {
        let r = match super::run(&t.target, &opts).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("baton doctor: {}: {e}", t.target);
                worst = 2;
                continue;
            }
        };
        let mut findings = super::config_findings(&t, &r);
        // A FastCGI upstream is meant to speak FastCGI.
        let code = if t.fastcgi && r.fastcgi {
            0
        } else {
            r.exit_code()
        };
        if !findings.is_empty() {
            worst = worst.max(1);
        }
        worst = worst.max(code);
        if json {
            let mut v = r.json();
            v["upstream"] = serde_json::json!(t.upstream);
            v["findings"] = serde_json::json!(findings);
            all.push(v);
        } else {
            println!("[upstreams.{}]", t.upstream);
            print!("{}", r.render(crate::cli::term::Paint::stdout()));
            for f in findings.drain(..) {
                println!("finding: {f}");
            }
        }
    }
    if json {
        println!(
            "{}",
            serde_json::json!({"config": file.display().to_string(), "config_findings": ladder, "servers": all})
        );
    }
    ExitCode::from(worst)
}

/// One target, `repeat` times.
async fn target_mode(
    target: &str,
    opts: &Options,
    idle_wait: Duration,
    repeat: u32,
    json: bool,
) -> ExitCode {
    let mut runs = Vec::new();
    for i in 0..repeat.max(1) {
        // The idle keep-alive watch once is enough.
        let wait = if i == 0 { idle_wait } else { Duration::ZERO };
        let o = super::Options {
            idle_wait: wait,
            ..opts.clone()
        };
        match super::run(target, &o).await {
            Ok(r) => {
                if !json {
                    print!("{}", r.render(crate::cli::term::Paint::stdout()));
                }
                runs.push(r);
            }
            Err(e) => {
                eprintln!("baton doctor: {e}");
                return ExitCode::from(2);
            }
        }
    }
    if json {
        let v = if runs.len() == 1 {
            runs[0].json()
        } else {
            serde_json::json!({
                "target": target,
                "runs": runs.iter().map(|r| r.json()).collect::<Vec<_>>(),
                "summary": super::summary(&runs),
            })
        };
        println!("{v}");
    } else if runs.len() > 1 {
        print!("{}", super::summary_text(&runs));
    }
    ExitCode::from(runs.iter().map(|r| r.exit_code()).max().unwrap_or(0))
}
