//! The document root held open, and `try_files` resolved against it
//! (`openat2` + `RESOLVE_BENEATH`: a path never leaves the root).

use std::io;
use std::path::{Path, PathBuf};

use crate::config::FastCgiConfig;

/// Where a request goes under a FastCGI upstream.
#[derive(Debug)]
pub enum Target {
    /// A file under the root, opened, served by baton itself.
    Static(std::fs::File, String),
    /// A script for the FastCGI server.
    Script(Script),
    /// Nothing under the root matches and there is no fallback.
    NotFound,
    /// A path baton refuses to map: `..`, NUL, a hidden file, a symbolic
    /// link out of the root.
    Forbidden,
    /// A directory asked for without its trailing slash (`/wp-admin`):
    /// `301` to this location (path and query), as nginx answers, so that
    /// the page's relative links resolve inside the directory.
    AddSlash(String),
}

/// The script a request runs, split as nginx's `fastcgi_split_path_info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    /// URL path of the script (`/index.php`).
    pub name: String,
    /// What follows the script in the path (`/foo` of `/index.php/foo`).
    pub path_info: String,
    /// The absolute file name (root + name).
    pub filename: PathBuf,
    /// The query string after a `try_files` rewrite (`$args` kept).
    pub query: String,
}

/// Decodes a URL path and checks it stays under the root: no `..`, no NUL,
/// no hidden segments (`.git`, `.env`, `.htaccess`) except `.well-known`.
fn decoded_path(path: &str) -> Option<String> {
    let d = percent_encoding::percent_decode_str(path)
        .decode_utf8()
        .ok()?
        .into_owned();
    if !d.starts_with('/') || d.contains('\0') || d.contains('\\') {
        return None;
    }
    for seg in d.split('/') {
        if seg == ".." || (seg.starts_with('.') && seg != "." && seg != ".well-known") {
            return None;
        }
    }
    Some(d)
}

/// The document root and the `alias` directories, held open: every
/// lookup is one `openat2` with `RESOLVE_BENEATH`, so the kernel refuses
/// any path (`..`, a symbolic link) that would leave the directory, and
/// nothing is re-walked from `/`.
///
/// A symbolic link is followed only into the upstream's own directories
/// (the root or an alias): Debian's WordPress links its themes from
/// `/var/lib/wordpress/wp-content` back into `/usr/share/wordpress`. The
/// link's target is resolved by the kernel (`canonicalize`), then opened
/// beneath the directory that holds it, so a link swapped meanwhile can
/// still not reach anything else.
#[derive(Debug)]
pub struct DocRoot {
    /// `(url prefix, directory)`: the aliases, longest prefix first, then
    /// the root as `/`.
    dirs: Vec<Dir>,
}

#[derive(Debug)]
struct Dir {
    prefix: String,
    fd: std::os::fd::OwnedFd,
    /// As configured (for SCRIPT_FILENAME).
    path: PathBuf,
    /// With its links resolved (to match a link's target against).
    real: PathBuf,
}

/// What a path under the root is.
enum Kind {
    File(std::os::fd::OwnedFd),
    Dir,
    Missing,
    Escapes,
}

impl DocRoot {
    pub fn open(cfg: &FastCgiConfig) -> io::Result<DocRoot> {
        use nix::fcntl::OFlag;
        let mut all: Vec<(&str, &Path)> = cfg
            .aliases
            .iter()
            .map(|(p, d)| (p.as_str(), d.as_path()))
            .collect();
        all.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        all.push(("/", &cfg.root));
        let mut dirs = Vec::new();
        for (prefix, path) in all {
            let fd = nix::fcntl::open(
                path,
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )?;
            dirs.push(Dir {
                prefix: prefix.to_string(),
                fd,
                path: path.to_path_buf(),
                real: std::fs::canonicalize(path)?,
            });
        }
        Ok(DocRoot { dirs })
    }

    /// The directory a URL path is under, and the path relative to it.
    fn place<'p>(&self, path: &'p str) -> (&Dir, &'p str) {
        for d in &self.dirs {
            if let Some(rest) = path.strip_prefix(d.prefix.as_str()) {
                return (d, rest);
            }
            // `/wp-content` itself: the alias's directory.
            if d.prefix.len() > 1 && path == &d.prefix[..d.prefix.len() - 1] {
                return (d, "");
            }
        }
        let root = self.dirs.last().expect("the root is always there");
        (root, path.trim_start_matches('/'))
    }

    /// The file name a URL path maps to (SCRIPT_FILENAME).
    fn filename(&self, cfg: &FastCgiConfig, path: &str) -> PathBuf {
        let (d, rel) = self.place(path);
        if d.prefix == "/" {
            return script_filename(cfg, path);
        }
        d.path.join(rel)
    }

    fn lookup(&self, path: &str, read: bool) -> Kind {
        let (d, rel) = self.place(path);
        match open_beneath(&d.fd, rel, read) {
            Err(nix::errno::Errno::EXDEV) | Err(nix::errno::Errno::ELOOP) => {
                self.follow(d, rel, read)
            }
            r => kind(r),
        }
    }

    /// A path whose symbolic link leads out of its directory: allowed
    /// only into another of the upstream's directories.
    fn follow(&self, d: &Dir, rel: &str, read: bool) -> Kind {
        let Ok(target) = std::fs::canonicalize(d.path.join(rel)) else {
            return Kind::Missing;
        };
        for other in &self.dirs {
            if let Ok(inner) = target.strip_prefix(&other.real) {
                let Some(inner) = inner.to_str() else { break };
                return match open_beneath(&other.fd, inner, read) {
                    Err(nix::errno::Errno::EXDEV) | Err(nix::errno::Errno::ELOOP) => Kind::Escapes,
                    r => kind(r),
                };
            }
        }
        Kind::Escapes
    }
}

fn open_beneath(
    dir: &std::os::fd::OwnedFd,
    rel: &str,
    read: bool,
) -> nix::Result<std::os::fd::OwnedFd> {
    use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
    let rel = if rel.is_empty() { "." } else { rel };
    // openat2 refuses O_PATH with any flag but O_CLOEXEC (EINVAL).
    let flags = if read {
        OFlag::O_RDONLY | OFlag::O_NOCTTY | OFlag::O_NONBLOCK
    } else {
        OFlag::O_PATH
    };
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    nix::fcntl::openat2(dir, rel, how)
}

fn kind(r: nix::Result<std::os::fd::OwnedFd>) -> Kind {
    match r {
        Ok(fd) => match nix::sys::stat::fstat(&fd) {
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFREG => Kind::File(fd),
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => Kind::Dir,
            _ => Kind::Missing,
        },
        Err(_) => Kind::Missing,
    }
}

/// Resolves a request path with the upstream's `try_files` list, as nginx
/// does for `try_files $uri $uri/ /index.php?$args` followed by a
/// `location ~ \.php$` with `fastcgi_split_path_info ^(.+?\.php)(/.*)$`
/// and `try_files $fastcgi_script_name =404`.
pub fn resolve(cfg: &FastCgiConfig, root: &DocRoot, raw_path: &str, query: &str) -> Target {
    let Some(path) = decoded_path(raw_path) else {
        return Target::Forbidden;
    };
    let n = cfg.try_files.len();
    for (i, entry) in cfg.try_files.iter().enumerate() {
        let last = i + 1 == n;
        if last && entry.starts_with('=') {
            return Target::NotFound;
        }
        let expanded = entry.replace("$uri", &path);
        let (epath, equery) = match expanded.split_once('?') {
            Some((p, q)) => (p.to_string(), q.replace("$args", query)),
            None => (expanded, query.to_string()),
        };
        if last {
            // The fallback: an internal redirect to a script (or a file).
            return script_or_file(cfg, root, &epath, &equery);
        }
        if epath.ends_with('/') {
            // `$uri/`: a directory with an index file (the first of
            // `index` that exists).
            let dir = epath.trim_end_matches('/');
            if matches!(root.lookup(dir, false), Kind::Dir) {
                if !path.ends_with('/') && !dir.is_empty() {
                    let q = if query.is_empty() {
                        String::new()
                    } else {
                        format!("?{query}")
                    };
                    return Target::AddSlash(format!("{raw_path}/{q}"));
                }
                for name in &cfg.index {
                    let index = format!("{dir}/{name}");
                    if let t @ (Target::Script(_) | Target::Static(..) | Target::Forbidden) =
                        script_or_file(cfg, root, &index, &equery)
                    {
                        return t;
                    }
                }
            }
            continue;
        }
        // `$uri`: a file, or a script with PATH_INFO after it.
        match script_or_file(cfg, root, &epath, &equery) {
            Target::NotFound => continue,
            t => return t,
        }
    }
    Target::NotFound
}

/// Maps a path to a script (split at the script extension) or a static
/// file, if it exists.
fn script_or_file(cfg: &FastCgiConfig, root: &DocRoot, path: &str, query: &str) -> Target {
    let ext = &cfg.script_ext;
    // A static upstream (no script extension) has no scripts.
    let split = path
        .match_indices(ext.as_str())
        .map(|(i, _)| i + ext.len())
        .find(|&end| !ext.is_empty() && (end == path.len() || path.as_bytes()[end] == b'/'));
    match split {
        Some(end) => {
            let name = &path[..end];
            match root.lookup(name, false) {
                Kind::File(_) => Target::Script(Script {
                    name: name.to_string(),
                    path_info: path[end..].to_string(),
                    filename: root.filename(cfg, name),
                    query: query.to_string(),
                }),
                Kind::Escapes => Target::Forbidden,
                Kind::Dir | Kind::Missing => Target::NotFound,
            }
        }
        None => match root.lookup(path, true) {
            Kind::File(fd) => Target::Static(std::fs::File::from(fd), path.to_string()),
            Kind::Escapes => Target::Forbidden,
            Kind::Dir | Kind::Missing => Target::NotFound,
        },
    }
}

/// SCRIPT_FILENAME of a path under the root itself (the health check's
/// ping path): the configured root (as PHP-FPM sees it) + the name.
pub(super) fn script_filename(cfg: &FastCgiConfig, name: &str) -> PathBuf {
    let mut f = cfg.root.as_os_str().to_owned();
    if cfg.root.as_os_str().as_encoded_bytes().last() == Some(&b'/') {
        f.push(name.trim_start_matches('/'));
    } else {
        f.push(name);
    }
    PathBuf::from(f)
}
