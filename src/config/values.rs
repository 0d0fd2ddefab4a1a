//! Values written in the config, parsed: durations, server addresses,
//! users and signals.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::{RunAs, ServerAddr, ServerSpec};

/// Looks a user up in the password database.
pub fn lookup_user(name: &str) -> Option<RunAs> {
    let u = nix::unistd::User::from_name(name).ok()??;
    Some(RunAs {
        name: name.to_string(),
        uid: u.uid.as_raw(),
        gid: u.gid.as_raw(),
    })
}

/// `TERM`, `SIGTERM` or a number.
pub fn signal_number(s: &str) -> Option<i32> {
    let n = s.trim().trim_start_matches("SIG");
    Some(match n {
        "TERM" => libc::SIGTERM,
        "QUIT" => libc::SIGQUIT,
        "INT" => libc::SIGINT,
        "HUP" => libc::SIGHUP,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        other => other.parse().ok().filter(|n| (1..32).contains(n))?,
    })
}

/// Parses `"2s"`, `"500ms"`, `"1m"`, `"1h"`, `"1.5s"`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86_400.0,
        _ => return None,
    };
    (secs.is_finite() && secs < 1e9).then(|| Duration::from_secs_f64(secs))
}

/// Parses `"ADDRESS [weight=N] [backup]"`.
pub fn parse_server_spec(s: &str) -> Result<ServerSpec, String> {
    let mut parts = s.split_whitespace();
    let addr = parse_server(parts.next().unwrap_or(""))?;
    let mut spec = ServerSpec {
        addr,
        weight: 1,
        backup: false,
    };
    for p in parts {
        if p == "backup" {
            spec.backup = true;
        } else if let Some(w) = p.strip_prefix("weight=") {
            spec.weight = w
                .parse()
                .ok()
                .filter(|w| (1..=1000).contains(w))
                .ok_or_else(|| format!("weight {w:?} must be 1 to 1000"))?;
        } else {
            return Err(format!(
                "unknown server option {p:?} (known: weight=N, backup)"
            ));
        }
    }
    Ok(spec)
}

/// Parses one entry of an upstream's `servers`.
pub fn parse_server(s: &str) -> Result<ServerAddr, String> {
    if let Some(p) = s.strip_prefix("unix:") {
        if !p.starts_with('/') {
            return Err(format!("unix socket path {p:?} must be absolute"));
        }
        return Ok(ServerAddr::Unix(PathBuf::from(p)));
    }
    if s.contains("://") {
        return Err(format!("{s:?} has a scheme; servers are addresses"));
    }
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(ServerAddr::Tcp(a));
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!("{s:?} has no port"));
    };
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{s:?} has an invalid port"))?;
    let valid = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if !valid || port == 0 {
        return Err(format!("{s:?} is not a valid host:port"));
    }
    Ok(ServerAddr::Name {
        host: host.to_ascii_lowercase(),
        port,
    })
}
