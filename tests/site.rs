//! What an nginx admin uses on every site: regex routes with rewrites and
//! redirects, basic auth, per-path cache lifetimes, static-only sites and
//! SPAs, aliases with symbolic links (Debian's WordPress layout), access
//! log templates, and dropping privileges after binding.

use std::os::unix::fs::symlink;

use baton::origin::{Origin, Script};

use crate::support::*;

/// nginx's `rewrite ^/post/(\d+)$ /index.php?p=$1` and `return 301
/// /new/$1`: `path_regex` groups in `rewrite` (the upstream's target; the
/// client's query follows unless the rewrite ends in `?`) and `redirect`.
#[tokio::test]
async fn regex_routes_rewrite_and_redirect_with_groups() {
    let o = Origin::start(Script::Echo).await.unwrap();
    let gw = Gw::start(&format!(
        "[upstreams.app]\nservers = [\"{}\"]\n\
         [[routes]]\npath_regex = '^/post/(\\d+)$'\nupstream = \"app\"\nrewrite = \"/index.php?p=$1\"\n\
         [[routes]]\npath_regex = '^/bare/(\\w+)$'\nupstream = \"app\"\nrewrite = \"/b/$1?\"\n\
         [[routes]]\npath_regex = '^/old/(.*)\\.html$'\nredirect = \"/new/$1{{query}}\"\nredirect_status = 302\n\
         [[routes]]\npath = \"/\"\nupstream = \"app\"\n",
        o.addr
    ))
    .await;
    let r = send(gw.addr, get("/post/42?utm=x")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/index.php?p=42&utm=x");
    let r = send(gw.addr, get("/bare/abc?dropped=1")).await;
    assert_eq!(r.json()["path"], "/b/abc");
    // Not matching the regex: the next route, untouched.
    let r = send(gw.addr, get("/post/4x2")).await;
    assert_eq!(r.json()["path"], "/post/4x2");
    let r = send(gw.addr, get("/old/a/b.html")).await;
    assert_eq!((r.status, r.header("location")), (302, "/new/a/b"));
    // The access log keeps what the client asked for.
    let id = send(gw.addr, get("/post/7")).await.request_id();
    assert_eq!(gw.access(&id).await["path"], "/post/7");
    gw.stop().await;
    // A group the regex does not have, and a bad regex, are named.
    let e = baton::config::parse(
        &format!(
            "[upstreams.app]\nservers = [\"{}\"]\n[[routes]]\npath_regex = '^/p/(\\d+)$'\nupstream = \"app\"\nrewrite = \"/x?a=$2\"\n[[routes]]\npath_regex = '^/(['\nupstream = \"app\"\n",
            o.addr
        ),
        "baton.toml",
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("routes[0].rewrite: rewrite uses $2 but the route's path_regex has 1 group(s)"),
        "{e}"
    );
    assert!(
        e.contains("routes[1].path_regex: not a regular expression"),
        "{e}"
    );
}

/// `basic_auth` with a file `htpasswd` wrote (bcrypt, Apache's MD5 and
/// SHA-1): 401 with the realm's challenge without credentials or with
/// wrong ones, through with right ones; the upstream never sees a refused
/// request.
#[tokio::test]
async fn basic_auth_reads_htpasswd_files() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("htpasswd");
    std::fs::write(&file, "").unwrap();
    for (flag, user) in [("-bB", "bee"), ("-bm", "emm"), ("-bs", "sha")] {
        let out = std::process::Command::new("htpasswd")
            .args([flag, file.to_str().unwrap(), user, "s3cret"])
            .output()
            .expect("htpasswd (apache2-utils)");
        assert!(out.status.success(), "{out:?}");
    }
    let o = Origin::start(Script::Ok("inside".into())).await.unwrap();
    let gw = Gw::start(&format!(
        "[upstreams.app]\nservers = [\"{}\"]\n[[routes]]\npath = \"/admin/\"\nupstream = \"app\"\nbasic_auth = \"{}\"\nbasic_auth_realm = \"Staff\"\n[[routes]]\nupstream = \"app\"\n",
        o.addr,
        file.display()
    ))
    .await;
    use base64::Engine as _;
    let basic = |u: &str, p: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
        )
    };
    let r = send(gw.addr, get("/admin/")).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        "Basic realm=\"Staff\", charset=\"UTF-8\""
    );
    assert_eq!(r.proxy_error(), "http_request_denied");
    let line = gw.access(&r.request_id()).await;
    assert_eq!(line["cause"], "auth_required");
    for user in ["bee", "emm", "sha"] {
        let r = send(
            gw.addr,
            get_with("/admin/", "authorization", &basic(user, "s3cret")),
        )
        .await;
        assert_eq!((r.status, r.text().as_str()), (200, "inside"), "{user}");
        // Twice: the second from the verified set.
        let r = send(
            gw.addr,
            get_with("/admin/", "authorization", &basic(user, "s3cret")),
        )
        .await;
        assert_eq!(r.status, 200, "{user}");
        let r = send(
            gw.addr,
            get_with("/admin/", "authorization", &basic(user, "wrong")),
        )
        .await;
        assert_eq!(r.status, 401, "{user}");
    }
    let r = send(
        gw.addr,
        get_with("/admin/", "authorization", &basic("nobody", "s3cret")),
    )
    .await;
    assert_eq!(r.status, 401);
    let r = send(gw.addr, get_with("/admin/", "authorization", "Basic !!!")).await;
    assert_eq!(r.status, 401);
    // Elsewhere, no sign-in.
    assert_eq!(send(gw.addr, get("/")).await.status, 200);
    gw.stop().await;
    // A plain-text line is refused with the fix.
    std::fs::write(&file, "joe:password\n").unwrap();
    let e = baton::config::parse(
        &format!(
            "[upstreams.app]\nservers = [\"{}\"]\n[[routes]]\nupstream = \"app\"\nbasic_auth = \"{}\"\n",
            o.addr,
            file.display()
        ),
        "baton.toml",
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("line 1: not a user with a password hash"), "{e}");
    assert!(e.contains("htpasswd -B FILE USER"), "{e}");
}

/// A static-only site (no FastCGI, no servers) and a single-page app whose
/// routes all fall back to `/index.html`; `expires` as nginx's on the
/// assets' route; a range and a conditional request on a static file.
#[tokio::test]
async fn static_sites_and_spas_without_an_application() {
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("site");
    std::fs::create_dir_all(site.join("docs")).unwrap();
    std::fs::create_dir_all(site.join("assets")).unwrap();
    std::fs::write(site.join("index.html"), "<h1>home</h1>").unwrap();
    std::fs::write(site.join("docs/index.html"), "<h1>docs</h1>").unwrap();
    std::fs::write(site.join("assets/app.js"), "console.log(1)").unwrap();
    let gw = Gw::start(&format!(
        "[upstreams.site]\nprotocol = \"static\"\nroot = \"{0}\"\n\
         [upstreams.spa]\nprotocol = \"static\"\nroot = \"{0}\"\ntry_files = [\"$uri\", \"/index.html\"]\n\
         [[routes]]\npath_regex = '\\.(js|css|png)$'\nupstream = \"site\"\nexpires = \"30d\"\n\
         [[routes]]\nhost = \"app.test\"\nupstream = \"spa\"\n\
         [[routes]]\nupstream = \"site\"\n",
        site.display()
    ))
    .await;
    let r = send(gw.addr, get("/")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "<h1>home</h1>"));
    assert_eq!(r.header("content-type"), "text/html; charset=utf-8");
    let r = send(gw.addr, get("/docs")).await;
    assert_eq!((r.status, r.header("location")), (301, "/docs/"));
    let r = send(gw.addr, get("/docs/")).await;
    assert_eq!(r.text(), "<h1>docs</h1>");
    let r = send(gw.addr, get("/nothing")).await;
    assert_eq!(r.status, 404);
    assert_eq!(gw.access(&r.request_id()).await["cause"], "file_not_found");
    let r = send(gw.addr, get("/assets/app.js")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("cache-control"), "max-age=2592000");
    let expires = httpdate::parse_http_date(r.header("expires")).unwrap();
    let ahead = expires
        .duration_since(std::time::SystemTime::now())
        .unwrap()
        .as_secs();
    assert!((2_591_990..=2_592_000).contains(&ahead), "{ahead}");
    let etag = r.header("etag").to_string();
    let r = send(gw.addr, get_with("/assets/app.js", "if-none-match", &etag)).await;
    assert_eq!(r.status, 304);
    assert_eq!(r.header("cache-control"), "max-age=2592000");
    let r = send(gw.addr, get_with("/assets/app.js", "range", "bytes=8-")).await;
    assert_eq!((r.status, r.text().as_str()), (206, "log(1)"));
    // Small files are kept in memory: an edit (here the same size, within
    // the same second) is served at once.
    std::fs::write(site.join("assets/app.js"), "console.log(2)").unwrap();
    let r = send(gw.addr, get("/assets/app.js")).await;
    assert_eq!(r.text(), "console.log(2)");
    // The SPA: any path is the app's page, a file is itself.
    for p in ["/", "/settings/profile", "/docs"] {
        let r = send(gw.addr, get_with(p, "host", "app.test")).await;
        assert_eq!((r.status, r.text().as_str()), (200, "<h1>home</h1>"), "{p}");
    }
    let r = send(gw.addr, get_with("/assets/app.js", "host", "app.test")).await;
    assert_eq!(r.text(), "console.log(2)");
    gw.stop().await;
    // A static upstream has no servers and runs no scripts.
    let e = baton::config::parse(
        &format!(
            "[upstreams.s]\nprotocol = \"static\"\nroot = \"{}\"\nservers = [\"127.0.0.1:9\"]\nscript_ext = \".php\"\n[[routes]]\nupstream = \"s\"\n",
            site.display()
        ),
        "baton.toml",
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("upstreams.s.servers: a static upstream serves files itself"),
        "{e}"
    );
    assert!(
        e.contains("upstreams.s.script_ext: script_ext only applies to FastCGI upstreams"),
        "{e}"
    );
}

/// Debian's WordPress layout: `/wp-content/` is an alias of
/// `/var/lib/wordpress/wp-content`, whose themes are symbolic links back
/// into the root. Links into the upstream's own directories are followed;
/// a link anywhere else is still 403.
#[tokio::test]
async fn aliases_and_links_between_the_upstreams_own_directories() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("share");
    let content = dir.path().join("lib/wp-content");
    let outside = dir.path().join("secret");
    std::fs::create_dir_all(root.join("wp-content/themes/t1")).unwrap();
    std::fs::create_dir_all(content.join("themes")).unwrap();
    std::fs::create_dir_all(content.join("uploads")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(root.join("wp-content/themes/t1/style.css"), "body{}").unwrap();
    std::fs::write(content.join("uploads/cat.jpg"), "JPEG").unwrap();
    std::fs::write(outside.join("passwd"), "root:x:0:0").unwrap();
    symlink(root.join("wp-content/themes/t1"), content.join("themes/t1")).unwrap();
    symlink(&outside, content.join("uploads/leak")).unwrap();
    let gw = Gw::start(&format!(
        "[upstreams.wp]\nprotocol = \"static\"\nroot = \"{}\"\nalias = {{ \"/wp-content/\" = \"{}\" }}\n[[routes]]\nupstream = \"wp\"\n",
        root.display(),
        content.display()
    ))
    .await;
    let r = send(gw.addr, get("/wp-content/uploads/cat.jpg")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "JPEG"));
    let r = send(gw.addr, get("/wp-content/themes/t1/style.css")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "body{}"));
    let r = send(gw.addr, get("/wp-content/uploads/leak/passwd")).await;
    assert_eq!(r.status, 403);
    assert_eq!(gw.access(&r.request_id()).await["cause"], "path_forbidden");
    let r = send(gw.addr, get("/wp-content/../../secret/passwd")).await;
    assert!([400, 403].contains(&r.status), "{}", r.status);
    gw.stop().await;
}

/// `access_format` as a template with nginx's variable names; a client's
/// quote cannot forge a field; an unknown variable is named.
#[tokio::test]
async fn access_log_templates_use_nginx_variables() {
    let o = Origin::start(Script::Ok("ok".into())).await.unwrap();
    let gw = Gw::start_with(
        &one_route(o.addr),
        "127.0.0.1:0",
        "$remote_addr \\\"$request\\\" $status $body_bytes_sent rid=$request_id up=$upstream_addr cause=$cause ua=\\\"$http_user_agent\\\"",
    )
    .await;
    let r = send(gw.addr, get_with("/x?y=1", "user-agent", "evil\" 200 fake")).await;
    let id = r.request_id();
    let log = gw.access_raw().await;
    let line = log.lines().find(|l| l.contains(&id)).expect("the line");
    assert_eq!(
        line,
        format!(
            "127.0.0.1 \"GET /x?y=1 HTTP/1.1\" 200 2 rid={id} up={} cause=- ua=\"evil\\x22 200 fake\"",
            o.addr
        )
    );
    gw.stop().await;
    let e = baton::config::parse(
        &format!(
            "{}[log]\naccess_format = \"$remote_addr $upstream_cache_status\"\n",
            one_route(o.addr)
        ),
        "baton.toml",
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains(
            "log.access_format: the access log template has unknown variable $upstream_cache_status"
        ),
        "{e}"
    );
}

/// `server.user`: started as root, baton binds its port, then runs as the
/// user (every thread), still serving; root cannot be regained.
#[tokio::test]
async fn user_drops_privileges_after_binding() {
    assert!(nix::unistd::geteuid().is_root(), "the suite runs as root");
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let o = Origin::start(Script::Ok("ok".into())).await.unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", baton::origin::refusing_addr().port())
        .parse()
        .unwrap();
    let cfg = dir.path().join("baton.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = [\"{addr}\"]\nuser = \"nobody\"\n[log]\naccess = \"off\"\n{}",
            one_route(o.addr)
        ),
    )
    .unwrap();
    let child = serve_file(&cfg, addr, &dir.path().join("state")).await;
    assert_eq!(send(addr, get("/")).await.status, 200);
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap().uid;
    for field in ["Uid:", "Gid:"] {
        let line = status.lines().find(|l| l.starts_with(field)).unwrap();
        let ids: Vec<u32> = line
            .split_whitespace()
            .skip(1)
            .map(|v| v.parse().unwrap())
            .collect();
        assert!(ids.iter().all(|&i| i != 0), "{line}");
        if field == "Uid:" {
            assert!(ids.iter().all(|&i| i == nobody.as_raw()), "{line}");
        }
    }
    // Every thread, not only the main one.
    for t in std::fs::read_dir(format!("/proc/{}/task", child.id())).unwrap() {
        let s = std::fs::read_to_string(t.unwrap().path().join("status")).unwrap();
        let uid = s.lines().find(|l| l.starts_with("Uid:")).unwrap();
        assert!(!uid.split_whitespace().skip(1).any(|v| v == "0"), "{uid}");
    }
}
