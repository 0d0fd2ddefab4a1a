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
#[derive(Debug, PartialEq, Eq)]
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

/// The document root, held open: every lookup is one `openat2` with
/// `RESOLVE_BENEATH`, so the kernel refuses any path (`..`, a symbolic
/// link) that would leave the root, and nothing is re-walked from `/`.
#[derive(Debug)]
pub struct DocRoot {
    dir: std::os::fd::OwnedFd,
}

/// What a path under the root is.
enum Kind {
    File(std::os::fd::OwnedFd),
    Dir,
    Missing,
    Escapes,
}

impl DocRoot {
    pub fn open(path: &Path) -> io::Result<DocRoot> {
        use nix::fcntl::OFlag;
        let dir = nix::fcntl::open(
            path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )?;
        Ok(DocRoot { dir })
    }

    fn lookup(&self, path: &str, read: bool) -> Kind {
        use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
        let rel = path.trim_start_matches('/');
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
        match nix::fcntl::openat2(&self.dir, rel, how) {
            Ok(fd) => match nix::sys::stat::fstat(&fd) {
                Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFREG => Kind::File(fd),
                Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => Kind::Dir,
                _ => Kind::Missing,
            },
            Err(nix::errno::Errno::EXDEV) | Err(nix::errno::Errno::ELOOP) => Kind::Escapes,
            Err(_) => Kind::Missing,
        }
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
    let split = path
        .match_indices(ext.as_str())
        .map(|(i, _)| i + ext.len())
        .find(|&end| end == path.len() || path.as_bytes()[end] == b'/');
    match split {
        Some(end) => {
            let name = &path[..end];
            match root.lookup(name, false) {
                Kind::File(_) => Target::Script(Script {
                    name: name.to_string(),
                    path_info: path[end..].to_string(),
                    filename: script_filename(cfg, name),
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

/// SCRIPT_FILENAME: the configured root (as PHP-FPM sees it) + the name.
pub(super) fn script_filename(cfg: &FastCgiConfig, name: &str) -> PathBuf {
    let mut f = cfg.root.as_os_str().to_owned();
    if cfg.root.as_os_str().as_encoded_bytes().last() == Some(&b'/') {
        f.push(name.trim_start_matches('/'));
    } else {
        f.push(name);
    }
    PathBuf::from(f)
}
