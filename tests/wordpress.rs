//! Debian's `wordpress` package (with MariaDB and PHP-FPM) behind nginx
//! running Debian's example site config, and behind baton running that
//! same file through `baton import nginx`: install, login, permalinks,
//! `/wp-admin` without its slash, upload then view, static assets with
//! ranges and conditional requests, compression, header rules and
//! redirects. Each difference is a failure or a choice docs/import.md
//! names.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;

use baton::origin::refusing_addr;

use crate::support::php;
use crate::support::*;

/// A MariaDB on a Unix socket in a temporary directory.
struct Db {
    sock: PathBuf,
    _child: Reap,
}

async fn mariadb(dir: &Path) -> Db {
    let data = dir.join("db");
    let out = Command::new("mariadb-install-db")
        .arg(format!("--datadir={}", data.display()))
        .args([
            "--user=root",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
        ])
        .output()
        .expect("mariadb-server is installed (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sock = dir.join("db.sock");
    let child = Reap(Some(
        Command::new("mariadbd")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", sock.display()))
            .arg(format!("--pid-file={}", dir.join("db.pid").display()))
            .arg(format!("--log-error={}", dir.join("db.err").display()))
            .args(["--skip-networking", "--user=root"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    for _ in 0..200 {
        if tokio::net::UnixStream::connect(&sock).await.is_ok() {
            sql(
                &sock,
                "CREATE DATABASE wordpress; CREATE USER 'wp'@'localhost' IDENTIFIED BY 'wp-pass'; GRANT ALL ON wordpress.* TO 'wp'@'localhost';",
            );
            return Db {
                sock,
                _child: child,
            };
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("mariadbd did not start");
}

fn sql(sock: &Path, q: &str) -> String {
    let out = Command::new("mariadb")
        .arg(format!("--socket={}", sock.display()))
        .args(["-uroot", "-N", "-e", q])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{q}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A browser's cookies, as `name=value` pairs.
#[derive(Default)]
struct Jar(Vec<(String, String)>);

impl Jar {
    fn take(&mut self, r: &Resp) {
        for v in r.headers.get_all("set-cookie") {
            let v = v.to_str().unwrap();
            let pair = v.split(';').next().unwrap();
            if let Some((n, val)) = pair.split_once('=') {
                self.0.retain(|(k, _)| k != n);
                if !v.contains("expires=Thu, 01-Jan-1970") && !val.is_empty() && val != "deleted" {
                    self.0.push((n.to_string(), val.to_string()));
                }
            }
        }
    }
    fn header(&self) -> String {
        self.0
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

const HOST: &str = "wp.test";

fn req(
    method: &str,
    path: &str,
    jar: &Jar,
    body: Vec<u8>,
    ctype: Option<&str>,
) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", HOST);
    if !jar.0.is_empty() {
        b = b.header("cookie", jar.header());
    }
    if let Some(c) = ctype {
        b = b.header("content-type", c);
    }
    b.body(Full::new(Bytes::from(body))).unwrap()
}

fn form(pairs: &[(&str, &str)]) -> Vec<u8> {
    pairs
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                k,
                percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
        .into_bytes()
}

/// The `Location` without the scheme and authority (each server is on
/// its own port).
fn location(r: &Resp) -> String {
    let l = r.header("location");
    match l.strip_prefix("http://") {
        Some(rest) => rest
            .find('/')
            .map_or("/".to_string(), |i| rest[i..].to_string()),
        None => l.to_string(),
    }
}

/// Logs in as the admin through `addr`; the browser's cookies.
async fn login(addr: SocketAddr) -> Jar {
    let mut jar = Jar::default();
    jar.0
        .push(("wordpress_test_cookie".into(), "WP%20Cookie%20check".into()));
    let r = send(
        addr,
        req(
            "POST",
            "/wp-login.php",
            &jar,
            form(&[
                ("log", "admin"),
                ("pwd", "Secret-pass-123"),
                ("wp-submit", "Log In"),
                ("testcookie", "1"),
            ]),
            Some("application/x-www-form-urlencoded"),
        ),
    )
    .await;
    assert_eq!(
        r.status,
        302,
        "{}",
        String::from_utf8_lossy(r.body.as_ref().unwrap())
    );
    assert_eq!(location(&r), "/wp-admin/");
    jar.take(&r);
    assert!(
        jar.0
            .iter()
            .any(|(n, _)| n.starts_with("wordpress_logged_in_")),
        "{:?}",
        jar.0
    );
    jar
}

/// Uploads a file through `addr` as the logged-in admin (the media
/// library's own form and nonce); its URL path.
async fn upload(addr: SocketAddr, jar: &Jar, name: &str, bytes: &[u8]) -> String {
    let page = send(
        addr,
        req("GET", "/wp-admin/media-new.php", jar, Vec::new(), None),
    )
    .await;
    assert_eq!(page.status, 200);
    let html = page.text();
    let nonce = html
        .split("\"_wpnonce\":\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("the upload form's nonce")
        .to_string();
    let boundary = "batonboundary42";
    let mut body = Vec::new();
    for (k, v) in [
        ("name", name),
        ("action", "upload-attachment"),
        ("_wpnonce", nonce.as_str()),
    ] {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n")
                .as_bytes(),
        );
    }
    body.extend_from_slice(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"async-upload\"; filename=\"{name}\"\r\nContent-Type: image/png\r\n\r\n").as_bytes(),
    );
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let r = send(
        addr,
        req(
            "POST",
            "/wp-admin/async-upload.php",
            jar,
            body,
            Some(&format!("multipart/form-data; boundary={boundary}")),
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["success"], true, "{v}");
    let url = v["data"]["url"].as_str().unwrap().to_string();
    let rest = url.strip_prefix("http://").unwrap();
    rest[rest.find('/').unwrap()..].to_string()
}

/// A PNG of `n` bytes (a valid header, then filler WordPress does not
/// read: it keeps the file as uploaded).
fn png(seed: u8) -> Vec<u8> {
    // 1x1 transparent PNG.
    let mut v = vec![
        0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0, 0, 0, 13, 0x49, 0x48, 0x44, 0x52, 0, 0,
        0, 1, 0, 0, 0, 1, 8, 6, 0, 0, 0, 0x1F, 0x15, 0xC4, 0x89, 0, 0, 0, 13, 0x49, 0x44, 0x41,
        0x54, 0x78, 0x9C, 0x63, 0, 1, 0, 0, 5, 0, 1, 0x0D, 0x0A, 0x2D, 0xB4, 0, 0, 0, 0, 0x49,
        0x45, 0x4E, 0x44, 0xAE, 0x42, 0x60, 0x82,
    ];
    v.extend(std::iter::repeat_n(seed, 4000));
    v
}

#[tokio::test]
async fn debians_wordpress_behind_nginx_and_behind_baton() {
    let dir = tempfile::tempdir().unwrap();
    php::set_mode(dir.path(), 0o755);
    let db = mariadb(dir.path()).await;
    php::set_mode(&db.sock, 0o777);
    // Debian's layout: wp-content under /var/lib/wordpress, its themes
    // linked back into /usr/share/wordpress. This test's own copy, so
    // uploads stay in the test.
    let content = dir.path().join("wp-content");
    for sub in ["", "themes", "plugins", "uploads", "languages"] {
        std::fs::create_dir_all(content.join(sub)).unwrap();
    }
    std::os::unix::fs::symlink(
        "/usr/share/wordpress/wp-content/themes/twentytwentythree",
        content.join("themes/twentytwentythree"),
    )
    .unwrap();
    let www_data = nix::unistd::User::from_name("www-data").unwrap().unwrap();
    for sub in ["", "themes", "plugins", "uploads", "languages"] {
        nix::unistd::chown(&content.join(sub), Some(www_data.uid), Some(www_data.gid)).unwrap();
    }
    // Debian's wp-config.php reads /etc/wordpress/config-NAME.php, NAME
    // from WORDPRESS_CONFIG (set per site) or the host.
    let name = format!("batontest{}", std::process::id());
    let config = PathBuf::from(format!("/etc/wordpress/config-{name}.php"));
    std::fs::write(
        &config,
        format!(
            "<?php\ndefine('DB_NAME', 'wordpress');\ndefine('DB_USER', 'wp');\ndefine('DB_PASSWORD', 'wp-pass');\ndefine('DB_HOST', 'localhost:{sock}');\ndefine('WP_CONTENT_DIR', '{content}');\ndefine('WP_HOME', 'http://' . $_SERVER['HTTP_HOST']);\ndefine('WP_SITEURL', 'http://' . $_SERVER['HTTP_HOST']);\ndefine('FS_METHOD', 'direct');\ndefine('AUTOMATIC_UPDATER_DISABLED', true);\n",
            sock = db.sock.display(),
            content = content.display()
        ),
    )
    .unwrap();
    struct Remove(PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _remove = Remove(config);
    let fpm = php::start("").await;

    // Debian's example site, as an admin adapts it: this machine's PHP
    // socket, a port, the config name, compression and a header rule,
    // and a moved section.
    let port = refusing_addr().port();
    let site = std::fs::read_to_string("/usr/share/doc/wordpress/examples/nginx-wordpress.conf")
        .expect("the wordpress package installs its nginx example")
        .replace("server_name                  wordpress.local;", &format!("listen 127.0.0.1:{port};\n    server_name {HOST};\n    add_header X-Frame-Options SAMEORIGIN always;\n    rewrite ^/blog/(.*)$ /$1 permanent;"))
        .replace("unix:/var/run/php7.0-fpm.sock", &format!("unix:{}", fpm.sock.display()))
        .replace("fastcgi_index            index.php;", &format!("fastcgi_index index.php;\n        fastcgi_param WORDPRESS_CONFIG {name};"))
        .replace("/var/lib/wordpress/wp-content/", &format!("{}/", content.display()));
    assert!(site.contains(&format!("listen 127.0.0.1:{port}")), "{site}");
    let site_file = dir.path().join("wordpress.conf");
    std::fs::write(&site_file, &site).unwrap();
    let d = dir.path().display();
    let main = dir.path().join("nginx.conf");
    std::fs::write(
        &main,
        format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{ worker_connections 1024; }}\nhttp {{\n  include /etc/nginx/mime.types;\n  access_log off;\n  client_max_body_size 16m;\n  gzip on;\n  gzip_types text/css application/javascript;\n  client_body_temp_path {d}/body; fastcgi_temp_path {d}/fcgi; proxy_temp_path {d}/proxy; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n  include {};\n}}\n",
            site_file.display()
        ),
    )
    .unwrap();
    let n: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let b: SocketAddr = format!("127.0.0.1:{}", refusing_addr().port())
        .parse()
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["import", "nginx"])
        .arg(&main)
        .args(["--listen", &b.to_string(), "--out"])
        .arg(dir.path().join("baton.toml"))
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(0), "{report}");
    let toml = std::fs::read_to_string(dir.path().join("baton.toml")).unwrap();
    assert!(toml.contains("\"/wp-content/\""), "{toml}");
    let _nginx = real_proxy("nginx", &main, n, None).await;
    let _baton = serve_file(&dir.path().join("baton.toml"), b, &dir.path().join("state")).await;

    // Install, through baton.
    let none = Jar::default();
    let r = send(b, req("GET", "/", &none, Vec::new(), None)).await;
    assert_eq!(
        (r.status, location(&r).as_str()),
        (302, "/wp-admin/install.php")
    );
    let r = send(
        b,
        req(
            "POST",
            "/wp-admin/install.php?step=2",
            &none,
            form(&[
                ("weblog_title", "Side by side"),
                ("user_name", "admin"),
                ("admin_password", "Secret-pass-123"),
                ("admin_password2", "Secret-pass-123"),
                ("pw_weak", "1"),
                ("admin_email", "admin@example.com"),
                ("blog_public", "0"),
                ("language", ""),
            ]),
            Some("application/x-www-form-urlencoded"),
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("Success!"), "{}", r.text());

    // The front page, the same on both.
    let (x, y) = (
        send(n, req("GET", "/", &none, Vec::new(), None)).await,
        send(b, req("GET", "/", &none, Vec::new(), None)).await,
    );
    assert_eq!((x.status, y.status), (200, 200));
    assert!(y.text().contains("Side by side"));
    assert_eq!(
        (x.header("x-frame-options"), y.header("x-frame-options")),
        ("SAMEORIGIN", "SAMEORIGIN")
    );
    // `/wp-admin` and `/wp-includes/css` without their slash.
    for p in ["/wp-admin", "/wp-includes/css"] {
        let (x, y) = (
            send(n, req("GET", p, &none, Vec::new(), None)).await,
            send(b, req("GET", p, &none, Vec::new(), None)).await,
        );
        assert_eq!((x.status, y.status), (301, 301), "{p}");
        assert_eq!(location(&x), location(&y), "{p}");
        assert_eq!(location(&y), format!("{p}/"));
    }
    // Login on both; the dashboard with each one's cookies.
    let (jn, jb) = (login(n).await, login(b).await);
    let (x, y) = (
        send(n, req("GET", "/wp-admin/", &jn, Vec::new(), None)).await,
        send(b, req("GET", "/wp-admin/", &jb, Vec::new(), None)).await,
    );
    assert_eq!((x.status, y.status), (200, 200));
    assert!(y.text().contains("Dashboard"));
    // Permalinks: /%postname%/ through the front controller.
    sql(
        &db.sock,
        "UPDATE wordpress.wp_options SET option_value='/%postname%/' WHERE option_name='permalink_structure'",
    );
    for p in [
        "/hello-world/",
        "/sample-page/",
        "/no-such-post/",
        "/blog/hello-world/",
    ] {
        let (x, y) = (
            send(n, req("GET", p, &none, Vec::new(), None)).await,
            send(b, req("GET", p, &none, Vec::new(), None)).await,
        );
        assert_eq!(x.status, y.status, "{p}");
        assert_eq!(location(&x), location(&y), "{p}");
        if x.status == 200 {
            assert!(
                y.text().contains("Hello world!") || y.text().contains("Sample Page"),
                "{p}"
            );
        }
    }
    // A comment posted through each (a form POST to a script), as the
    // admin (WordPress's flood check spares them).
    for (addr, jar, text) in [
        (n, &jn, "first comment through nginx"),
        (b, &jb, "second comment through baton"),
    ] {
        let r = send(
            addr,
            req(
                "POST",
                "/wp-comments-post.php",
                jar,
                form(&[("comment", text), ("comment_post_ID", "1")]),
                Some("application/x-www-form-urlencoded"),
            ),
        )
        .await;
        assert_eq!(r.status, 302, "{}", r.text());
    }
    let count = sql(
        &db.sock,
        "SELECT COUNT(*) FROM wordpress.wp_comments WHERE comment_content LIKE '%comment through%'",
    );
    assert_eq!(count.trim(), "2");
    // Upload through each, view each through both: the same bytes.
    let (img_n, img_b) = (png(1), png(2));
    let via_n = upload(n, &jn, "from-nginx.png", &img_n).await;
    let via_b = upload(b, &jb, "from-baton.png", &img_b).await;
    assert!(via_b.starts_with("/wp-content/uploads/"), "{via_b}");
    for (path, bytes) in [(&via_n, &img_n), (&via_b, &img_b)] {
        let mut cache = Vec::new();
        for addr in [n, b] {
            let r = send(addr, req("GET", path, &none, Vec::new(), None)).await;
            assert_eq!(r.status, 200, "{path}");
            assert_eq!(
                r.body.as_ref().unwrap().as_ref(),
                bytes.as_slice(),
                "{path}"
            );
            assert_eq!(r.header("content-type"), "image/png");
            cache.push(r.header("cache-control").to_string());
        }
        // The example's `location ~^/wp-content/` comes before its
        // `expires max` one: nginx's first regex wins, and the import
        // keeps that order.
        assert_eq!(cache[0], cache[1], "{path}");
    }
    // A theme's file through Debian's link back into /usr/share/wordpress.
    let style = "/wp-content/themes/twentytwentythree/style.css";
    let (x, y) = (
        send(n, req("GET", style, &none, Vec::new(), None)).await,
        send(b, req("GET", style, &none, Vec::new(), None)).await,
    );
    assert_eq!((x.status, y.status), (200, 200));
    assert_eq!(x.body, y.body);
    // Static assets: a range, a conditional request, compression.
    let css = "/wp-includes/css/dashicons.min.css";
    let ranged = |addr| {
        send(addr, {
            let mut r = req("GET", css, &none, Vec::new(), None);
            r.headers_mut()
                .insert("range", "bytes=1000-1999".parse().unwrap());
            r
        })
    };
    let (x, y) = (ranged(n).await, ranged(b).await);
    assert_eq!((x.status, y.status), (206, 206));
    assert_eq!(
        (x.header("cache-control"), y.header("cache-control")),
        ("max-age=315360000", "max-age=315360000")
    );
    assert_eq!(x.header("content-range"), y.header("content-range"));
    assert_eq!(x.body, y.body);
    for addr in [n, b] {
        let r = send(addr, req("GET", css, &none, Vec::new(), None)).await;
        let etag = r.header("etag").to_string();
        let mut again = req("GET", css, &none, Vec::new(), None);
        again
            .headers_mut()
            .insert("if-none-match", etag.parse().unwrap());
        assert_eq!(send(addr, again).await.status, 304, "{addr}");
        let mut gz = req("GET", css, &none, Vec::new(), None);
        gz.headers_mut()
            .insert("accept-encoding", "gzip".parse().unwrap());
        let r = send(addr, gz).await;
        assert_eq!(r.header("content-encoding"), "gzip", "{addr}");
        // nginx sends Vary only with `gzip_vary on` (off in this
        // config); baton always does, so a cache keeps both forms apart.
        if addr == b {
            assert!(
                r.header("vary")
                    .to_ascii_lowercase()
                    .contains("accept-encoding")
            );
        }
    }
    // A missing file: WordPress's own 404 through both.
    let p = "/wp-config.php.bak";
    let (x, y) = (
        send(n, req("GET", p, &none, Vec::new(), None)).await,
        send(b, req("GET", p, &none, Vec::new(), None)).await,
    );
    assert_eq!((x.status, y.status), (404, 404));
    // Debian links /usr/share/wordpress/.htaccess to /etc/wordpress/htaccess;
    // nginx's example serves it, baton never serves a hidden file (a
    // documented difference, docs/import.md).
    let (x, y) = (
        send(n, req("GET", "/.htaccess", &none, Vec::new(), None)).await,
        send(b, req("GET", "/.htaccess", &none, Vec::new(), None)).await,
    );
    assert_eq!((x.status, y.status), (200, 403));
}
