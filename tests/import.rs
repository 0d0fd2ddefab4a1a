//! `baton import nginx`: real nginx configs (Debian's default site,
//! Laravel's documented site, a typical reverse proxy, Debian's
//! WordPress example) imported, loaded by `baton check`'s loader, and
//! served side by side with nginx running the same file: the same
//! statuses, bodies and header rules, or a difference the docs name.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use baton::origin::{Origin, Script, refusing_addr};

use crate::support::php;
use crate::support::*;

fn fixture(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/import")
            .join(name),
    )
    .unwrap()
}

fn loopback() -> SocketAddr {
    format!("127.0.0.1:{}", refusing_addr().port())
        .parse()
        .unwrap()
}

/// nginx's main file around a site's file, with its paths in `dir`.
fn nginx_main(dir: &Path, site: &Path) -> PathBuf {
    let d = dir.display();
    let main = dir.join("nginx.conf");
    std::fs::write(
        &main,
        format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{ worker_connections 1024; }}\nhttp {{\n  include /etc/nginx/mime.types;\n  access_log off;\n  client_body_temp_path {d}/body; fastcgi_temp_path {d}/fcgi; proxy_temp_path {d}/proxy; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n  include {};\n}}\n",
            site.display()
        ),
    )
    .unwrap();
    main
}

/// `baton import nginx FILE --listen ADDR --out dir/baton.toml`: the exit
/// code, the written config and the report.
fn import(file: &Path, listen: SocketAddr, dir: &Path) -> (i32, String, String) {
    let out = dir.join("baton.toml");
    let report = dir.join("report.txt");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["import", "nginx"])
        .arg(file)
        .args(["--listen", &listen.to_string(), "--out"])
        .arg(&out)
        .arg("--report")
        .arg(&report)
        .status()
        .unwrap();
    (
        status.code().unwrap_or(-1),
        std::fs::read_to_string(&out).unwrap_or_default(),
        std::fs::read_to_string(&report).unwrap_or_default(),
    )
}

/// nginx and baton, both serving `site`.
async fn side_by_side(
    dir: &Path,
    site: &Path,
    port: u16,
) -> (SocketAddr, SocketAddr, Reap, Reap, String, String) {
    let main = nginx_main(dir, site);
    let n_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let b_addr = loopback();
    let (code, toml, report) = import(&main, b_addr, dir);
    assert_eq!(code, 0, "{toml}\n{report}");
    let nginx = real_proxy("nginx", &main, n_addr, None).await;
    let baton = serve_file(&dir.join("baton.toml"), b_addr, &dir.join("state")).await;
    (n_addr, b_addr, nginx, baton, toml, report)
}

/// The media type without parameters (nginx sends `text/html`, baton
/// `text/html; charset=utf-8`: a documented choice).
fn essence(ct: &str) -> &str {
    ct.split(';').next().unwrap_or("").trim()
}

async fn both(
    n: SocketAddr,
    b: SocketAddr,
    req: impl Fn() -> hyper::Request<http_body_util::Full<bytes::Bytes>>,
) -> (Resp, Resp) {
    (send(n, req()).await, send(b, req()).await)
}

/// Debian's default site (/etc/nginx/sites-available/default, as the
/// package installs it): a static root with three index names and
/// `try_files $uri $uri/ =404`.
#[tokio::test]
async fn debians_default_site_serves_the_same() {
    let dir = tempfile::tempdir().unwrap();
    php::set_mode(dir.path(), 0o755);
    let www = dir.path().join("www");
    std::fs::create_dir_all(www.join("docs")).unwrap();
    std::fs::write(
        www.join("index.nginx-debian.html"),
        "<h1>Welcome to nginx!</h1>\n",
    )
    .unwrap();
    std::fs::write(www.join("docs/index.htm"), "<p>docs</p>\n").unwrap();
    std::fs::write(www.join("movie.mp4"), vec![7u8; 10_000]).unwrap();
    for p in [&www, &www.join("docs")] {
        php::set_mode(p, 0o755);
    }
    let port = loopback().port();
    let site = std::fs::read_to_string("/etc/nginx/sites-available/default")
        .expect("Debian's nginx package installs its default site")
        .replace(
            "listen 80 default_server;",
            &format!("listen 127.0.0.1:{port} default_server;"),
        )
        .replace("listen [::]:80 default_server;", "")
        .replace("root /var/www/html;", &format!("root {};", www.display()));
    let site_file = dir.path().join("default");
    std::fs::write(&site_file, site).unwrap();
    let (n, b, _nginx, _baton, toml, report) = side_by_side(dir.path(), &site_file, port).await;
    assert!(toml.contains("protocol = \"static\""), "{toml}");
    assert!(
        report.contains("try_files $uri $uri/ =404: mapped"),
        "{report}"
    );
    for path in [
        "/",
        "/index.nginx-debian.html",
        "/docs/",
        "/nothing",
        "/movie.mp4",
        "/?q=1",
    ] {
        let (x, y) = both(n, b, || get(path)).await;
        assert_eq!(x.status, y.status, "{path}");
        if x.status == 200 {
            assert_eq!(x.body, y.body, "{path}");
            assert_eq!(
                essence(x.header("content-type")),
                essence(y.header("content-type")),
                "{path}"
            );
        }
    }
    // The directory without its slash: 301 to it on both.
    let (x, y) = both(n, b, || get("/docs")).await;
    assert_eq!((x.status, y.status), (301, 301));
    assert!(
        x.header("location").ends_with("/docs/"),
        "{}",
        x.header("location")
    );
    assert_eq!(y.header("location"), "/docs/");
    // A range (media seeking) and a conditional request.
    let (x, y) = both(n, b, || get_with("/movie.mp4", "range", "bytes=100-199")).await;
    assert_eq!((x.status, y.status), (206, 206));
    assert_eq!(x.header("content-range"), y.header("content-range"));
    assert_eq!(x.body, y.body);
    for r in [&x, &y] {
        let etag = r.header("etag").to_string();
        let again = send(
            if std::ptr::eq(r, &x) { n } else { b },
            get_with("/movie.mp4", "if-none-match", &etag),
        )
        .await;
        assert_eq!(again.status, 304);
    }
}

/// Laravel's documented nginx site on a real PHP-FPM: the front
/// controller for every path without a file, static files by the
/// gateway, hidden files refused, X-Powered-By removed, security headers.
#[tokio::test]
async fn laravels_documented_site_serves_the_same() {
    let fpm = php::start("").await;
    let public = fpm.dir.path().join("public");
    std::fs::create_dir_all(public.join("css")).unwrap();
    std::fs::write(
        public.join("index.php"),
        "<?php header('Content-Type: application/json'); echo json_encode(['uri' => $_SERVER['REQUEST_URI'], 'query' => $_SERVER['QUERY_STRING'], 'script' => $_SERVER['SCRIPT_NAME'], 'method' => $_SERVER['REQUEST_METHOD']]);\n",
    )
    .unwrap();
    std::fs::write(public.join("css/app.css"), "body{}\n").unwrap();
    std::fs::write(public.join("robots.txt"), "User-agent: *\n").unwrap();
    std::fs::write(public.join(".env"), "APP_KEY=secret\n").unwrap();
    for p in [&public, &public.join("css")] {
        php::set_mode(p, 0o755);
    }
    for f in ["index.php", "css/app.css", "robots.txt", ".env"] {
        php::set_mode(&public.join(f), 0o644);
    }
    let dir = tempfile::tempdir().unwrap();
    php::set_mode(dir.path(), 0o755);
    let port = loopback().port();
    let site = fixture("laravel.conf")
        .replace("listen 80;", &format!("listen 127.0.0.1:{port};"))
        .replace("listen [::]:80;", "")
        .replace("/srv/example.com/public", &public.display().to_string())
        .replace(
            "/var/run/php/php8.2-fpm.sock",
            &fpm.sock.display().to_string(),
        )
        // nginx reads a relative include from its main file's directory.
        .replace(
            "include fastcgi_params;",
            "include /etc/nginx/fastcgi_params;",
        );
    let site_file = dir.path().join("laravel.conf");
    std::fs::write(&site_file, site).unwrap();
    let (n, b, _nginx, _baton, toml, _) = side_by_side(dir.path(), &site_file, port).await;
    assert!(toml.contains("protocol = \"fastcgi\""), "{toml}");
    let host = || "example.com";
    for path in [
        "/",
        "/users/5?tab=posts",
        "/css/app.css",
        "/robots.txt",
        "/missing.png",
        "/.env",
        "/index.php",
    ] {
        let (x, y) = both(n, b, || get_with(path, "host", host())).await;
        assert_eq!(x.status, y.status, "{path}");
        // nginx adds these (no `always`) to 2xx and 3xx only; baton to all.
        if x.status < 400 {
            assert_eq!(
                x.header("x-frame-options"),
                y.header("x-frame-options"),
                "{path}"
            );
            assert_eq!(x.header("x-content-type-options"), "nosniff", "{path}");
        }
        assert_eq!(y.header("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(y.header("x-powered-by"), "", "{path}");
        assert_eq!(x.header("x-powered-by"), "", "{path}");
        if x.status == 200 {
            if x.header("content-type").starts_with("application/json") {
                let (jx, jy) = (x.json(), y.json());
                assert_eq!(jx, jy, "{path}");
            } else {
                assert_eq!(x.body, y.body, "{path}");
            }
        }
    }
    // A POST goes to the front controller the same.
    let post = || {
        hyper::Request::post("/users")
            .header("host", "example.com")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                b"name=a",
            )))
            .unwrap()
    };
    let (x, y) = both(n, b, post).await;
    assert_eq!((x.status, x.json()), (y.status, y.json()));
}

/// A typical reverse proxy: an upstream block with weights and a backup,
/// server-level rewrite and redirect, an exact-match rate-limited login,
/// an office-only admin area, a prefix replaced (`proxy_pass
/// http://x/v2/`), a path refused, a static directory with `expires`,
/// gzip and security headers.
#[tokio::test]
async fn a_reverse_proxy_config_serves_the_same() {
    let a = Origin::start(Script::Echo).await.unwrap();
    let c = Origin::start(Script::Echo).await.unwrap();
    let api = Origin::start(Script::Echo).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    php::set_mode(dir.path(), 0o755);
    let statics = dir.path().join("static");
    std::fs::create_dir_all(&statics).unwrap();
    php::set_mode(&statics, 0o755);
    std::fs::write(statics.join("logo.svg"), "<svg/>").unwrap();
    php::set_mode(&statics.join("logo.svg"), 0o644);
    let port = loopback().port();
    // Over plain HTTP here (the HTTPS parts are checked below).
    let conf = fixture("proxy.conf");
    let https_server = conf.find("server {\n    listen 80;").unwrap();
    let https_end = conf[https_server..].find("}\n\n").unwrap() + https_server + 3;
    let site = format!("{}{}", &conf[..https_server], &conf[https_end..])
        .replace(
            "listen 443 ssl http2;",
            &format!("listen 127.0.0.1:{port};"),
        )
        .replace("    ssl_certificate /etc/ssl/shop/fullchain.pem;\n", "")
        .replace("    ssl_certificate_key /etc/ssl/shop/privkey.pem;\n", "")
        .replace("    ssl_protocols TLSv1.2 TLSv1.3;\n", "")
        .replace(
            "access_log /var/log/nginx/shop.log timed;",
            &format!("access_log {}/shop.log timed;", dir.path().display()),
        )
        // The fixture's addresses become marks first, then the real ones:
        // a real port such as 40007 must not be matched by a later
        // "127.0.0.1:4000" (a CI run made it 454137 that way).
        .replace("127.0.0.1:3000", "@a@")
        .replace("127.0.0.1:3001", "@c@")
        .replace("127.0.0.1:3002", "@refused@")
        .replace("127.0.0.1:4000", "@api@")
        .replace("@a@", &a.addr.to_string())
        .replace("@c@", &c.addr.to_string())
        .replace("@refused@", &refusing_addr().to_string())
        .replace("@api@", &api.addr.to_string())
        .replace("allow 127.0.0.1;", "")
        .replace("/srv/shop/static/", &format!("{}/", statics.display()));
    let site_file = dir.path().join("shop.conf");
    std::fs::write(&site_file, site).unwrap();
    let (n, b, _nginx, _baton, toml, report) = side_by_side(dir.path(), &site_file, port).await;
    assert!(toml.contains("balance = \"least_request\""), "{toml}");
    assert!(
        report.contains("if ($http_user_agent ~* badbot) { ... }: not mapped"),
        "{report}"
    );
    let host = "shop.example.com";
    for path in [
        "/",
        "/products?page=2",
        "/blog/12/hello",
        "/api/users?x=1",
        "/old-shop/cart",
        "/xmlrpc.php",
        "/admin/",
        "/static/logo.svg",
    ] {
        let (x, y) = both(n, b, || get_with(path, "host", host)).await;
        assert_eq!(x.status, y.status, "{path}");
        assert_eq!(x.header("location"), y.header("location"), "{path}");
        // nginx adds a header without `always` only to 2xx and 3xx;
        // baton's rules apply to every response (docs/import.md).
        // And baton's own error pages are `Cache-Control: no-store`.
        let always = ["strict-transport-security", "x-powered-by"];
        let only_ok = ["x-frame-options", "cache-control"];
        for h in always
            .iter()
            .chain(if x.status < 400 { &only_ok[..] } else { &[] })
        {
            assert_eq!(x.header(h), y.header(h), "{path}: {h}");
        }
        if x.status >= 400 {
            assert_eq!(
                (x.header("x-frame-options"), y.header("x-frame-options")),
                ("", "DENY")
            );
        }
        if x.status == 200 && x.header("content-type").starts_with("application/json") {
            assert_eq!(x.json()["path"], y.json()["path"], "{path}");
        } else if x.status == 200 {
            assert_eq!(x.body, y.body, "{path}");
        }
    }
    // gzip on both when asked.
    let (x, y) = both(n, b, || get_with("/products", "host", host)).await;
    assert_eq!(x.status, 200);
    let gz = |addr| {
        let mut r = get_with("/products", "host", host);
        r.headers_mut()
            .insert("accept-encoding", "gzip".parse().unwrap());
        send(addr, r)
    };
    let (x2, y2) = (gz(n).await, gz(b).await);
    assert_eq!(
        (x2.header("content-encoding"), y2.header("content-encoding")),
        ("gzip", "gzip")
    );
    drop((x, y));
    // The login's rate limit: both let the burst through, then refuse;
    // nginx with 503, baton with 429 (docs/import.md).
    let mut refused = (Vec::new(), Vec::new());
    for _ in 0..25 {
        let (x, y) = both(n, b, || get_with("/login", "host", host)).await;
        refused.0.push(x.status);
        refused.1.push(y.status);
    }
    assert!(refused.0[..10].iter().all(|&s| s == 200), "{:?}", refused.0);
    assert!(refused.1[..10].iter().all(|&s| s == 200), "{:?}", refused.1);
    assert!(refused.0.contains(&503), "{:?}", refused.0);
    assert!(refused.1.contains(&429), "{:?}", refused.1);
    // The access log in the imported template.
    let log = std::fs::read_to_string(dir.path().join("shop.log")).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("\"GET /products?page=2 HTTP/1.1\" 200")),
        "{log}"
    );
}

/// The whole proxy.conf, HTTPS included: the HTTP server that only
/// redirects becomes server.redirect_https, the certificate a
/// [[tls.certificates]] entry, and the file loads once the certificate
/// exists.
#[test]
fn the_https_parts_of_a_config_import() {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["shop.example.com".to_string()]).unwrap();
    std::fs::write(dir.path().join("fullchain.pem"), ck.cert.pem()).unwrap();
    std::fs::write(
        dir.path().join("privkey.pem"),
        ck.signing_key.serialize_pem(),
    )
    .unwrap();
    let site = fixture("proxy.conf")
        .replace("/etc/ssl/shop/", &format!("{}/", dir.path().display()))
        .replace("/srv/shop/static/", &format!("{}/", dir.path().display()));
    let file = dir.path().join("shop.conf");
    std::fs::write(&file, site).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["import", "nginx"])
        .arg(&file)
        .output()
        .unwrap();
    let (toml, report) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{toml}\n{report}");
    assert!(toml.contains("redirect_https = true"), "{toml}");
    assert!(toml.contains("listen_tls = [\"0.0.0.0:443\"]"), "{toml}");
    assert!(toml.contains("[[tls.certificates]]"), "{toml}");
    assert!(
        report.contains("return 301 https://$host$request_uri: mapped: server.redirect_https"),
        "{report}"
    );
    assert!(
        report.contains("ssl_protocols TLSv1.2 TLSv1.3: approximated"),
        "{report}"
    );
    // Every directive is in the report, with a verdict.
    let total: usize = report
        .lines()
        .find_map(|l| {
            l.split_once(" directives: ")
                .and_then(|(n, _)| n.parse().ok())
        })
        .unwrap_or(0);
    assert!(total >= 40, "{report}");
    // A config that cannot load says so, with the loader's own words.
    let bad = dir.path().join("bad.conf");
    std::fs::write(&bad, "server { listen 80; location / { proxy_pass http://127.0.0.1:3000; } ssl_certificate /nonexistent.pem; ssl_certificate_key /nonexistent.key; listen 443 ssl; }").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["import", "nginx"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let report = String::from_utf8_lossy(&out.stderr);
    assert!(
        report.contains("the written config does not load yet"),
        "{report}"
    );
    assert!(
        report.contains("tls.certificates[0].cert: cannot read certificates from /nonexistent.pem"),
        "{report}"
    );
}

/// `baton import apache`: Debian's default vhost loads; a vhost with a
/// document root, an alias, a proxied API with its prefix replaced, a
/// redirect and header rules serves the same as Apache running it.
#[tokio::test]
async fn an_apache_vhost_serves_the_same() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
        .args([
            "import",
            "apache",
            "/etc/apache2/sites-available/000-default.conf",
        ])
        .output()
        .unwrap();
    let (toml, report) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{toml}\n{report}");
    assert!(toml.contains("root = \"/var/www/html\""), "{toml}");
    assert!(toml.contains("access_format = \"combined\""), "{toml}");

    let api = Origin::start(Script::Echo).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    php::set_mode(dir.path(), 0o755);
    let d = dir.path().display().to_string();
    let www = dir.path().join("www");
    let media = dir.path().join("media");
    for p in [&www, &www.join("docs"), &media] {
        std::fs::create_dir_all(p).unwrap();
        php::set_mode(p, 0o755);
    }
    for (f, body) in [
        (www.join("index.html"), "<h1>home</h1>"),
        (www.join("docs/index.html"), "<h1>docs</h1>"),
        (media.join("a.txt"), "media file"),
    ] {
        std::fs::write(&f, body).unwrap();
        php::set_mode(&f, 0o644);
    }
    let port = loopback().port();
    let vhost = dir.path().join("site.conf");
    std::fs::write(
        &vhost,
        format!(
            "<VirtualHost 127.0.0.1:{port}>\n    ServerName example.com\n    DocumentRoot {d}/www\n    Alias /media {d}/media\n    ProxyPass /api/ http://{api}/v1/\n    ProxyPassReverse /api/ http://{api}/v1/\n    Redirect permanent /old /docs\n    Header always set X-Frame-Options DENY\n    Header unset X-Powered-By\n</VirtualHost>\n",
            api = api.addr
        ),
    )
    .unwrap();
    let m = "/usr/lib/apache2/modules";
    let main = dir.path().join("apache2.conf");
    std::fs::write(
        &main,
        format!(
            "ServerRoot {d}\nServerName localhost\nListen 127.0.0.1:{port}\nPidFile {d}/httpd.pid\nDefaultRuntimeDir {d}\nMutex file:{d} default\nErrorLog {d}/error.log\nUser www-data\nGroup www-data\nLoadModule mpm_event_module {m}/mod_mpm_event.so\nLoadModule authz_core_module {m}/mod_authz_core.so\nLoadModule dir_module {m}/mod_dir.so\nLoadModule mime_module {m}/mod_mime.so\nTypesConfig /etc/mime.types\nLoadModule alias_module {m}/mod_alias.so\nLoadModule headers_module {m}/mod_headers.so\nLoadModule proxy_module {m}/mod_proxy.so\nLoadModule proxy_http_module {m}/mod_proxy_http.so\n<Directory {d}>\n    Require all granted\n</Directory>\nInclude {}\n",
            vhost.display()
        ),
    )
    .unwrap();
    let b = loopback();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["import", "apache"])
        .arg(&vhost)
        .args(["--listen", &b.to_string(), "--out"])
        .arg(dir.path().join("baton.toml"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let _apache = real_proxy("apache2", &main, n, None).await;
    let _baton = serve_file(&dir.path().join("baton.toml"), b, &dir.path().join("state")).await;
    for path in [
        "/",
        "/docs/",
        "/docs",
        "/media/a.txt",
        "/api/users?x=1",
        "/old/page",
        "/nothing",
    ] {
        let (x, y) = both(n, b, || get_with(path, "host", "example.com")).await;
        assert_eq!(x.status, y.status, "{path}");
        assert_eq!(
            x.header("x-frame-options"),
            y.header("x-frame-options"),
            "{path}"
        );
        let loc = |r: &Resp| {
            r.header("location")
                .trim_start_matches(&format!("http://example.com:{port}"))
                .trim_start_matches("http://example.com")
                .to_string()
        };
        assert_eq!(loc(&x), loc(&y), "{path}");
        if x.status == 200 && x.header("content-type").starts_with("application/json") {
            assert_eq!(x.json()["path"], y.json()["path"], "{path}");
        } else if x.status == 200 {
            assert_eq!(x.body, y.body, "{path}");
        }
    }
}
