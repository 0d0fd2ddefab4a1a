//! A real PHP-FPM (Debian's php8.2-fpm) in the foreground with its own
//! config, socket and document root in a temporary directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const FPM: &str = "php-fpm8.2";

/// The test site: scripts for every case and a static file.
pub const SITE: &[(&str, &str)] = &[
    (
        "index.php",
        r#"<?php
header('Content-Type: application/json');
$keys = ['SCRIPT_FILENAME','SCRIPT_NAME','PATH_INFO','QUERY_STRING','REQUEST_METHOD','REQUEST_URI','DOCUMENT_URI','DOCUMENT_ROOT','SERVER_PROTOCOL','SERVER_NAME','SERVER_PORT','REMOTE_ADDR','GATEWAY_INTERFACE','HTTP_HOST','HTTP_X_CUSTOM','HTTP_PROXY','HTTP_X_FORWARDED_FOR','HTTP_X_FORWARDED_PROTO','HTTP_X_FORWARDED_HOST','HTTP_VIA','HTTP_X_REQUEST_ID','CONTENT_TYPE','CONTENT_LENGTH','APP_ENV'];
$out = [];
foreach ($keys as $k) { $out[$k] = $_SERVER[$k] ?? null; }
$out['pid'] = getmypid();
echo json_encode($out);
"#,
    ),
    (
        "hello.php",
        "<?php echo 'hello from PHP ' . PHP_MAJOR_VERSION . '.' . PHP_MINOR_VERSION;\n",
    ),
    (
        "post.php",
        "<?php $b = file_get_contents('php://input'); header('Content-Type: text/plain'); echo strlen($b), ' ', md5($b), ' ', $_POST['name'] ?? '-';\n",
    ),
    (
        "big.php",
        "<?php $chunk = str_repeat('abcdefghij', 10240); for ($i = 0; $i < 500; $i++) { echo $chunk; }\n",
    ),
    (
        "slow.php",
        "<?php usleep((int)($_GET['ms'] ?? 3000) * 1000); echo 'slept';\n",
    ),
    (
        "pid.php",
        "<?php usleep((int)($_GET['ms'] ?? 20) * 1000); echo getmypid();\n",
    ),
    (
        "status.php",
        "<?php http_response_code(418); header('X-App: yes'); echo 'teapot';\n",
    ),
    ("style.css", "body { color: #333; }\n"),
    (
        "warn.php",
        "<?php error_log('boom from php'); echo 'warned';\n",
    ),
    ("sub/index.php", "<?php echo 'sub index';\n"),
];

pub struct Fpm {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub sock: PathBuf,
    pub conf: PathBuf,
    /// Where it listens when on TCP (`start_tcp`).
    pub tcp: Option<std::net::SocketAddr>,
    child: Option<Child>,
}

/// Writes the site and a pool config; `pool` adds pool settings.
pub fn prepare(pool: &str) -> Fpm {
    let dir = tempfile::tempdir().unwrap();
    // The workers run as www-data: they must read the root.
    set_mode(dir.path(), 0o755);
    let root = dir.path().join("www");
    for (name, body) in SITE {
        let p = root.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, body).unwrap();
        set_mode(&p, 0o644);
        set_mode(p.parent().unwrap(), 0o755);
    }
    let sock = dir.path().join("fpm.sock");
    let conf = dir.path().join("php-fpm.conf");
    let pool = if pool.contains("pm ") || pool.contains("pm=") {
        pool.to_string()
    } else {
        format!("pm = static\npm.max_children = 4\n{pool}")
    };
    std::fs::write(
        &conf,
        format!(
            "[global]\npid = {dir}/fpm.pid\nerror_log = /proc/self/fd/2\ndaemonize = no\n\n[www]\nuser = www-data\ngroup = www-data\nlisten = {sock}\nlisten.owner = www-data\nlisten.group = www-data\nlisten.mode = 0660\nping.path = /fpm-ping\ncatch_workers_output = yes\n{pool}\n",
            dir = dir.path().display(),
            sock = sock.display(),
        ),
    )
    .unwrap();
    Fpm {
        dir,
        root,
        sock,
        conf,
        tcp: None,
        child: None,
    }
}

/// Prepares and starts PHP-FPM, waiting for its socket.
pub async fn start(pool: &str) -> Fpm {
    let f = prepare(pool);
    spawn(f).await
}

/// PHP-FPM listening on TCP (`127.0.0.1:9000` in many setups) instead of a
/// Unix socket; the address is `Fpm::tcp`.
pub async fn start_tcp(pool: &str) -> (Fpm, std::net::SocketAddr) {
    let f = prepare(pool);
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let conf = std::fs::read_to_string(&f.conf).unwrap().replace(
        &format!("listen = {}\n", f.sock.display()),
        &format!("listen = {addr}\n"),
    );
    std::fs::write(&f.conf, conf).unwrap();
    let mut f = f;
    f.tcp = Some(addr);
    (spawn(f).await, addr)
}

async fn spawn(mut f: Fpm) -> Fpm {
    let child = Command::new(FPM)
        .args(["-F", "-O", "-y"])
        .arg(&f.conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("php-fpm8.2 runs (apt-get install php8.2-fpm)");
    f.child = Some(child);
    for _ in 0..200 {
        let up = match f.tcp {
            Some(a) => tokio::net::TcpStream::connect(a).await.is_ok(),
            None => tokio::net::UnixStream::connect(&f.sock).await.is_ok(),
        };
        if up {
            return f;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "php-fpm did not listen on {:?} / {}",
        f.tcp,
        f.sock.display()
    );
}

impl Fpm {
    /// The upstream section for this pool.
    pub fn upstream(&self, extra: &str) -> String {
        let server = match self.tcp {
            Some(a) => a.to_string(),
            None => format!("unix:{}", self.sock.display()),
        };
        format!(
            "[upstreams.php]\nservers = [\"{server}\"]\nprotocol = \"fastcgi\"\nroot = \"{}\"\nindex = \"index.php\"\n{extra}\n[[routes]]\nupstream = \"php\"\n",
            self.root.display()
        )
    }
}

impl Drop for Fpm {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            // SIGQUIT: PHP-FPM's graceful stop; then make sure.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGQUIT,
            );
            for _ in 0..40 {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn set_mode(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
}

/// nginx in front of the same pool, configured as the usual PHP site
/// (`fastcgi_pass` + Debian's fastcgi_params), for side-by-side tests.
pub async fn nginx_for(fpm: &Fpm) -> super::RealNginx {
    super::real_nginx(|_, port| {
        format!(
            "  access_log off;\n  server {{\n    listen 127.0.0.1:{port};\n    root {root};\n    location ~ \\.php$ {{\n      include /etc/nginx/fastcgi_params;\n      fastcgi_param SCRIPT_FILENAME $document_root$fastcgi_script_name;\n      fastcgi_pass unix:{sock};\n    }}\n  }}\n",
            root = fpm.root.display(),
            sock = fpm.sock.display(),
        )
    })
    .await
}
