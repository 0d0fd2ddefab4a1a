//! `baton reload`: check the file, then have the running gateway load it:
//! through its admin API when it has one (the answer says what changed or
//! why the file was refused), else by SIGHUP to the `baton serve` process
//! started with this file.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use crate::config;

pub fn run(path: &Path) -> ExitCode {
    let cfg = match config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            eprintln!(
                "baton reload: not sent: the running gateway would refuse this file and keep its config"
            );
            return ExitCode::from(1);
        }
    };
    match cfg.admin {
        Some(admin) => through_admin(admin, cfg.admin_token.as_deref()),
        None => by_signal(path),
    }
}

/// `POST /reload` on the admin address; prints what the gateway said.
fn through_admin(admin: SocketAddr, token: Option<&str>) -> ExitCode {
    let answer = (|| -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        write!(
            s,
            "POST /reload HTTP/1.1\r\nHost: {admin}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })();
    let answer = match answer {
        Ok(a) => a,
        Err(e) => {
            eprintln!(
                "baton reload: no gateway answers on its admin address {admin} ({e}): is `baton serve` running with this config?"
            );
            return ExitCode::from(2);
        }
    };
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let Ok(v) = serde_json::from_str::<serde_json::Value>(body) else {
        let status = answer.lines().next().unwrap_or("no answer");
        eprintln!("baton reload: the admin API answered {status}");
        return ExitCode::from(1);
    };
    if v["reloaded"] == true {
        println!("reloaded");
        for n in v["notes"].as_array().into_iter().flatten() {
            println!("note: {}", n.as_str().unwrap_or_default());
        }
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "baton reload: refused, the running config keeps serving:\n{}",
            v["error"].as_str().unwrap_or("(no reason given)")
        );
        ExitCode::from(1)
    }
}

/// SIGHUP to every `baton serve` started with this file.
fn by_signal(path: &Path) -> ExitCode {
    let pids = serving(path);
    if pids.is_empty() {
        eprintln!(
            "baton reload: no running `baton serve` uses {} (and it has no [server] admin address to ask)",
            path.display()
        );
        return ExitCode::from(2);
    }
    for pid in &pids {
        if let Err(e) = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid),
            nix::sys::signal::Signal::SIGHUP,
        ) {
            eprintln!("baton reload: cannot signal pid {pid}: {e}");
            return ExitCode::from(1);
        }
        println!(
            "sent SIGHUP to baton (pid {pid}): it reloads, or keeps its config and logs why (set [server] admin to see the result here)"
        );
    }
    ExitCode::SUCCESS
}

/// The pids of `baton serve` processes whose config is `path`.
fn serving(path: &Path) -> Vec<i32> {
    let Ok(want) = path.canonicalize() else {
        return Vec::new();
    };
    let me = std::process::id() as i32;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if pid == me || !args.iter().any(|a| *a == b"serve") {
            continue;
        }
        let cwd = std::fs::read_link(e.path().join("cwd")).unwrap_or_default();
        // `--config FILE`, `-c FILE`, `--config=FILE`, or the default.
        let mut config = None;
        for (i, a) in args.iter().enumerate() {
            let a = String::from_utf8_lossy(a);
            if a == "--config" || a == "-c" {
                config = args
                    .get(i + 1)
                    .map(|v| String::from_utf8_lossy(v).into_owned());
            } else if let Some(v) = a.strip_prefix("--config=") {
                config = Some(v.to_string());
            }
        }
        let is_baton = args
            .first()
            .is_some_and(|a| String::from_utf8_lossy(a).ends_with("baton"));
        let file = cwd.join(config.unwrap_or_else(|| "baton.toml".into()));
        if is_baton && file.canonicalize().is_ok_and(|f| f == want) {
            pids.push(pid);
        }
    }
    pids
}
