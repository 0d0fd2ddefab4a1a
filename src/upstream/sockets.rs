//! Unix socket findings: what stops baton's user from connecting to a
//! socket (missing, not a socket, permissions), for the loader, `check`
//! and `doctor`.

use std::path::Path;

use crate::config::ServerAddr;

/// What stops baton's user from connecting to a Unix socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketProblem {
    /// The path (or its directory) does not exist.
    Missing(String),
    /// Something else is at the path.
    NotSocket(String),
    /// baton's user may not connect (the socket's mode, or a directory).
    Permission(String),
}

impl SocketProblem {
    pub fn message(&self) -> &str {
        match self {
            SocketProblem::Missing(m)
            | SocketProblem::NotSocket(m)
            | SocketProblem::Permission(m) => m,
        }
    }
}

/// Checks that the Unix socket `p` exists, is a socket, and that baton's
/// user may connect to it (write permission on the socket, search
/// permission on every directory above it); says what to change if not.
pub fn socket_problem(p: &Path) -> Option<SocketProblem> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let me = whoami();
    // A directory on the way that baton may not search.
    for dir in p.ancestors().skip(1).filter(|d| !d.as_os_str().is_empty()) {
        let Ok(md) = std::fs::metadata(dir) else {
            continue;
        };
        if !may_access(dir, nix::unistd::AccessFlags::X_OK) {
            // Never advise opening a privileged directory or joining a
            // privileged group: move the socket instead.
            let fix = if privileged(md.uid(), md.gid()) {
                "move the socket to a directory meant for it (PHP-FPM: listen = /run/php/NAME.sock)"
                    .to_string()
            } else {
                format!(
                    "give it search permission (`chmod o+x {}`, or add {me} to group {})",
                    dir.display(),
                    group_name(md.gid())
                )
            };
            return Some(SocketProblem::Permission(format!(
                "baton runs as {me} and may not enter {} (owner {}:{}, mode {:04o}): {fix}",
                dir.display(),
                user_name(md.uid()),
                group_name(md.gid()),
                md.mode() & 0o7777,
            )));
        }
    }
    let md = match std::fs::metadata(p) {
        Ok(m) => m,
        Err(_) => {
            let dir = p.parent().unwrap_or(Path::new("/"));
            return Some(SocketProblem::Missing(if dir.is_dir() {
                format!(
                    "socket {} does not exist: is the app running? (PHP-FPM creates it from the pool's `listen`; check the version in the path, e.g. php8.2-fpm)",
                    p.display()
                )
            } else {
                format!(
                    "socket {} does not exist, nor its directory {}: is the app installed and running?",
                    p.display(),
                    dir.display()
                )
            }));
        }
    };
    if !md.file_type().is_socket() {
        return Some(SocketProblem::NotSocket(format!(
            "{} is not a socket: point servers at the socket the app creates",
            p.display()
        )));
    }
    if !may_access(p, nix::unistd::AccessFlags::W_OK) {
        let (owner, group) = (user_name(md.uid()), group_name(md.gid()));
        let user = me.split(' ').next().unwrap_or(&me);
        let join = if privileged(md.uid(), md.gid()) {
            String::new()
        } else {
            format!(" (or add {user} to group {group})")
        };
        return Some(SocketProblem::Permission(format!(
            "baton runs as {me} but socket {} is {owner}:{group} mode {:04o}: in the PHP-FPM pool set listen.owner = {user}, or listen.group = {} with listen.mode = 0660{join}, then restart PHP-FPM",
            p.display(),
            md.mode() & 0o7777,
            my_group(),
        )));
    }
    None
}

/// Owned by root's group, or a group that grants power (reading every
/// log, the disks, sudo, Docker): joining it or opening it up would
/// weaken the machine, so baton never advises it.
fn privileged(uid: u32, gid: u32) -> bool {
    const POWERFUL: [&str; 8] = [
        "root", "sudo", "wheel", "adm", "shadow", "disk", "docker", "admin",
    ];
    gid == 0 || (uid == 0 && gid < 1000) || POWERFUL.contains(&group_name(gid).as_str())
}

fn may_access(p: &Path, mode: nix::unistd::AccessFlags) -> bool {
    nix::unistd::access(p, mode).is_ok()
}

/// "name (uid N)" of the user baton runs as.
pub fn whoami() -> String {
    let uid = nix::unistd::geteuid();
    format!("{} (uid {uid})", user_name(uid.as_raw()))
}

fn my_group() -> String {
    group_name(nix::unistd::getegid().as_raw())
}

fn user_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(uid.into()) {
        Ok(Some(u)) => u.name,
        _ => uid.to_string(),
    }
}

fn group_name(gid: u32) -> String {
    match nix::unistd::Group::from_gid(gid.into()) {
        Ok(Some(g)) => g.name,
        _ => gid.to_string(),
    }
}

/// Every Unix-socket server of a config with a problem, as
/// `upstreams.NAME: message`. Sockets of supervised backends that are not
/// there yet are skipped (baton creates them by starting the backend).
pub fn socket_findings(cfg: &crate::config::Config, started: bool) -> Vec<(String, SocketProblem)> {
    // Sockets a supervised backend creates when it starts: missing before
    // then is expected, for every upstream that uses them.
    let supervised: Vec<&std::path::Path> = cfg
        .upstreams
        .iter()
        .filter(|u| u.process.is_some())
        .flat_map(|u| u.servers.iter())
        .filter_map(|s| match &s.addr {
            ServerAddr::Unix(p) => Some(p.as_path()),
            _ => None,
        })
        .collect();
    let mut out = Vec::new();
    for u in &cfg.upstreams {
        for (i, s) in u.servers.iter().enumerate() {
            let ServerAddr::Unix(p) = &s.addr else {
                continue;
            };
            match socket_problem(p) {
                Some(SocketProblem::Missing(_))
                    if !started && supervised.contains(&p.as_path()) => {}
                Some(pb) => out.push((format!("upstreams.{}.servers[{i}]", u.name), pb)),
                None => {}
            }
        }
    }
    out
}

#[cfg(test)]
mod findings_tests {
    use super::*;

    /// A socket a supervised backend creates is not "missing" at start,
    /// also for a second upstream that uses it (one error per start was
    /// logged for it, about to be created).
    #[test]
    fn a_socket_a_supervised_backend_creates_is_not_missing_at_start() {
        let cfg = crate::config::parse(
            "[upstreams.php]\nservers = [\"unix:/nonexistent/baton-test/php.sock\"]\n[upstreams.php.process]\ncommand = \"/bin/true\"\n[upstreams.uploads]\nservers = [\"unix:/nonexistent/baton-test/php.sock\"]\n[upstreams.other]\nservers = [\"unix:/nonexistent/baton-test/other.sock\"]\n[[routes]]\nupstream = \"php\"\n[[routes]]\npath = \"/uploads\"\nupstream = \"uploads\"\n[[routes]]\npath = \"/other\"\nupstream = \"other\"\n",
            "t.toml",
            None,
        )
        .unwrap();
        let keys = |started| -> Vec<String> {
            socket_findings(&cfg, started)
                .into_iter()
                .map(|(k, _)| k)
                .collect()
        };
        assert_eq!(keys(false), ["upstreams.other.servers[0]"]);
        assert_eq!(
            keys(true),
            [
                "upstreams.other.servers[0]",
                "upstreams.php.servers[0]",
                "upstreams.uploads.servers[0]"
            ]
        );
    }
}
