//! FastCGI upstreams against a real PHP-FPM (Debian's php8.2-fpm).

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::support::php::{self, Fpm};

use crate::support::*;

async fn site(extra: &str) -> (Fpm, Gw) {
    let fpm = php::start("").await;
    let gw = Gw::start(&fpm.upstream(extra)).await;
    (fpm, gw)
}

fn with_header(path: &str, k: &str, v: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", "test.local")
        .header(k, v)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

#[tokio::test]
async fn php_page_gets_the_cgi_parameters_nginx_sends() {
    let (fpm, gw) = site("params = { APP_ENV = \"test\" }\n").await;
    let r = send(gw.addr, get("/hello.php")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "hello from PHP 8.2");

    let mut req = with_header("/index.php?a=1&b=two", "x-custom", "yes");
    req.headers_mut()
        .insert("proxy", "http://evil:1".parse().unwrap());
    let r = send(gw.addr, req).await;
    assert_eq!(r.status, 200);
    let v = r.json();
    let root = fpm.root.display().to_string();
    assert_eq!(v["SCRIPT_FILENAME"], format!("{root}/index.php"));
    assert_eq!(v["SCRIPT_NAME"], "/index.php");
    assert_eq!(v["QUERY_STRING"], "a=1&b=two");
    assert_eq!(v["REQUEST_METHOD"], "GET");
    assert_eq!(v["REQUEST_URI"], "/index.php?a=1&b=two");
    assert_eq!(v["DOCUMENT_ROOT"], root);
    assert_eq!(v["SERVER_PROTOCOL"], "HTTP/1.1");
    assert_eq!(v["SERVER_NAME"], "test.local");
    assert_eq!(v["SERVER_PORT"], gw.addr.port().to_string());
    assert_eq!(v["REMOTE_ADDR"], "127.0.0.1");
    assert_eq!(v["GATEWAY_INTERFACE"], "CGI/1.1");
    assert_eq!(v["HTTP_HOST"], "test.local");
    assert_eq!(v["HTTP_X_CUSTOM"], "yes");
    // Baton's own fields reach PHP too (WordPress behind a proxy reads
    // the scheme from HTTP_X_FORWARDED_PROTO).
    assert_eq!(v["HTTP_X_FORWARDED_FOR"], "127.0.0.1");
    assert_eq!(v["HTTP_X_FORWARDED_PROTO"], "http");
    assert_eq!(v["HTTP_X_FORWARDED_HOST"], "test.local");
    assert_eq!(v["HTTP_VIA"], "1.1 baton");
    assert_eq!(v["HTTP_X_REQUEST_ID"], r.header("x-request-id"));
    assert_eq!(v["APP_ENV"], "test");
    // httpoxy: the Proxy header never becomes HTTP_PROXY.
    assert_eq!(v["HTTP_PROXY"], serde_json::Value::Null);
    assert_eq!(r.header("content-type"), "application/json");
    assert_eq!(r.header("x-request-id").len(), 16);
}

#[tokio::test]
async fn front_controller_path_info_and_directory_index() {
    let (_fpm, gw) = site("").await;
    // WordPress pretty permalink: no such file, so /index.php?$args.
    let v = send(gw.addr, get("/blog/hello-world?x=1")).await.json();
    assert_eq!(v["SCRIPT_NAME"], "/index.php");
    assert_eq!(v["REQUEST_URI"], "/blog/hello-world?x=1");
    assert_eq!(v["QUERY_STRING"], "x=1");
    // /index.php/extra: PATH_INFO split as fastcgi_split_path_info.
    let v = send(gw.addr, get("/index.php/extra/path")).await.json();
    assert_eq!(v["SCRIPT_NAME"], "/index.php");
    assert_eq!(v["PATH_INFO"], "/extra/path");
    assert_eq!(v["DOCUMENT_URI"], "/index.php/extra/path");
    // A directory with an index.
    let r = send(gw.addr, get("/sub/")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "sub index"));
    // The app's own status and headers pass through.
    let r = send(gw.addr, get("/status.php")).await;
    assert_eq!((r.status, r.text().as_str()), (418, "teapot"));
    assert_eq!(r.header("x-app"), "yes");
    // A directory without its slash (WordPress's /wp-admin): 301 to it,
    // query kept, as nginx answers; the page's relative links then work.
    let r = send(gw.addr, get("/sub?tab=1")).await;
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), "/sub/?tab=1");
}

/// Several index files, tried in order (nginx's `index index.html
/// index.php`); nginx's one-string habit is an error with the fix.
#[tokio::test]
async fn index_files_are_tried_in_order() {
    let fpm = php::start("").await;
    std::fs::write(fpm.root.join("sub/index.html"), "static sub index").unwrap();
    php::set_mode(&fpm.root.join("sub/index.html"), 0o644);
    let with_index = |index: &str| {
        fpm.upstream("")
            .replace("index = \"index.php\"", &format!("index = {index}"))
    };
    let gw = Gw::start(&with_index("[\"index.html\", \"index.php\"]")).await;
    let r = send(gw.addr, get("/sub/")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "static sub index"));
    // The root has only index.php: the second name.
    let r = send(gw.addr, get("/")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["SCRIPT_NAME"], "/index.php");
    gw.stop().await;
    let e = baton::config::parse(
        &with_index("\"index.php index.html\"").replace(
            "[[routes]]",
            "[[routes]]\nhost = \"example.com www.example.com\"",
        ),
        "baton.toml",
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("\"index.php index.html\" is several file names in one string: no file has that name\n    fix: write a list: index = [\"index.php\", \"index.html\"]"),
        "{e}"
    );
    assert!(
        e.contains("\"example.com www.example.com\" is several names in one string: no request would match it\n    fix: write a list: host = [\"example.com\", \"www.example.com\"]"),
        "{e}"
    );
}

#[tokio::test]
async fn post_bodies_reach_php_with_and_without_content_length() {
    let (_fpm, gw) = site("").await;
    let form = "name=baton&x=1";
    let r = send(
        gw.addr,
        Request::post("/post.php")
            .header("host", "test.local")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(form)))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), format!("14 {} baton", md5(form.as_bytes())));
    // 1 MiB: streamed to PHP-FPM (above replay_buffer_bytes).
    let big: Vec<u8> = (0..(1 << 20)).map(|i| (i % 251) as u8).collect();
    let r = send(
        gw.addr,
        Request::post("/post.php")
            .header("host", "test.local")
            .body(Full::new(Bytes::from(big.clone())))
            .unwrap(),
    )
    .await;
    assert_eq!(r.text(), format!("1048576 {} -", md5(&big)));
    // Chunked (no Content-Length): buffered so CONTENT_LENGTH is exact.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    c.write_all(b"POST /post.php HTTP/1.1\r\nHost: test.local\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n6\r\nhello \r\n8\r\nchunked \r\n5\r\nworld\r\n0\r\n\r\n")
        .await
        .unwrap();
    let mut raw = String::new();
    c.read_to_string(&mut raw).await.unwrap();
    assert!(raw.starts_with("HTTP/1.1 200 OK\r\n"), "{raw}");
    assert!(
        raw.contains(&format!("19 {} -", md5(b"hello chunked world"))),
        "{raw}"
    );
}

#[tokio::test]
async fn large_response_arrives_whole() {
    let (_fpm, gw) = site("").await;
    let r = send(gw.addr, get("/big.php")).await;
    assert_eq!(r.status, 200);
    let body = r.body.as_ref().unwrap();
    assert_eq!(body.len(), 500 * 102_400);
    assert!(body.chunks(10).all(|c| c == b"abcdefghij"));
}

#[tokio::test]
async fn slow_script_is_504_response_head_timeout() {
    let (_fpm, gw) = site("read_timeout = \"1s\"\n").await;
    let r = send(gw.addr, get("/slow.php?ms=3000")).await;
    let line = assert_failure(
        &gw,
        &r,
        504,
        "http_response_timeout",
        "response_head_timeout",
    )
    .await;
    assert_eq!(line["phase"], "read_head");
    // The pool is fine afterwards.
    let r = send(gw.addr, get("/hello.php")).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn static_files_are_served_from_the_root_with_cache_headers() {
    let (_fpm, gw) = site("static_max_age = \"10m\"\n").await;
    let r = send(gw.addr, get("/style.css")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "body { color: #333; }\n");
    assert_eq!(r.header("content-type"), "text/css; charset=utf-8");
    assert_eq!(r.header("cache-control"), "public, max-age=600");
    assert_eq!(r.header("content-length"), "22");
    // A strong validator, as nginx's (ranges may use it).
    let etag = r.header("etag").to_string();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    assert_eq!(r.header("accept-ranges"), "bytes");
    assert!(!r.header("last-modified").is_empty());
    let r = send(gw.addr, with_header("/style.css", "if-none-match", &etag)).await;
    assert_eq!(r.status, 304);
    assert_eq!(r.body.as_ref().unwrap().len(), 0);
    // Ranges (media seeking, resumed downloads): RFC 9110 §14.
    for (range, status, body, content_range) in [
        ("bytes=0-3", 206, "body", "bytes 0-3/22"),
        ("bytes=-6", 206, "33; }\n", "bytes 16-21/22"),
        ("bytes=7-", 206, "color: #333; }\n", "bytes 7-21/22"),
        ("bytes=22-", 416, "", "bytes */22"),
        ("bytes=0-1,4-5", 200, "body { color: #333; }\n", ""),
    ] {
        let r = send(gw.addr, with_header("/style.css", "range", range)).await;
        assert_eq!(r.status, status, "{range}");
        assert_eq!(r.text(), body, "{range}");
        assert_eq!(r.header("content-range"), content_range, "{range}");
        assert_eq!(
            r.header("content-length"),
            body.len().to_string(),
            "{range}"
        );
    }
    // If-Range: the range only for the client's own copy.
    let mut req = with_header("/style.css", "range", "bytes=0-3");
    req.headers_mut().insert("if-range", etag.parse().unwrap());
    assert_eq!(send(gw.addr, req).await.status, 206);
    let mut req = with_header("/style.css", "range", "bytes=0-3");
    req.headers_mut()
        .insert("if-range", "\"other\"".parse().unwrap());
    let r = send(gw.addr, req).await;
    assert_eq!((r.status, r.text().len()), (200, 22));
    let r = send(
        gw.addr,
        Request::post("/style.css")
            .header("host", "test.local")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), "GET, HEAD");
}

#[tokio::test]
async fn paths_never_leave_the_root() {
    let (fpm, gw) = site("try_files = [\"$uri\", \"=404\"]\n").await;
    std::fs::write(fpm.root.join(".env"), "SECRET=1").unwrap();
    for path in [
        "/.env",
        "/%2e%2e/php-fpm.conf",
        "/sub/%2E%2E/%2E%2E/php-fpm.conf",
        "/.git/config",
    ] {
        let r = send(gw.addr, get(path)).await;
        assert_eq!(r.status, 403, "{path}");
        assert_eq!(r.proxy_error(), "http_request_denied", "{path}");
        assert!(!r.text().contains("SECRET"), "{path}");
    }
    // A symbolic link out of the root is refused too.
    std::os::unix::fs::symlink(&fpm.conf, fpm.root.join("conf.txt")).unwrap();
    let r = send(gw.addr, get("/conf.txt")).await;
    assert_eq!(r.status, 403);
    // try_files ending in =404: a missing file is baton's 404.
    let r = send(gw.addr, get("/missing.css")).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.proxy_error(), "destination_not_found");
}

/// Hex MD5, as PHP's md5() prints it.
fn md5(b: &[u8]) -> String {
    use md5::Digest;
    md5::Md5::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// Twelve one-second requests at once to a pool with one worker and a
/// backlog of one: the classic PHP-FPM 502 (EAGAIN on the socket).
async fn burst(addr: std::net::SocketAddr, n: usize, path: &str) -> Vec<Resp> {
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let path = path.to_string();
        set.spawn(async move {
            let t = std::time::Instant::now();
            let r = send(addr, get(&path)).await;
            if std::env::var("BURST_DEBUG").is_ok() {
                println!("req {i}: {} after {:?}", r.status, t.elapsed());
            }
            (i, r)
        });
    }
    let mut out: Vec<(usize, Resp)> = Vec::new();
    while let Some(r) = set.join_next().await {
        out.push(r.unwrap());
    }
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, r)| r).collect()
}

const SATURATED: &str = "pm = static\npm.max_children = 1\nlisten.backlog = 1\n";

#[tokio::test]
async fn saturated_pool_nginx_502s_baton_serves_everyone() {
    let fpm = php::start(SATURATED).await;
    // nginx in front of the pool: EAGAIN on connect is a 502 at once.
    let nginx = php::nginx_for(&fpm).await;
    let rs = burst(nginx.addr, 12, "/slow.php?ms=1000").await;
    let bad = rs.iter().filter(|r| r.status == 502).count();
    println!("nginx: {bad} of 12 answered 502");
    drop(nginx);
    // Baton waits out the full accept queue (within connect_timeout).
    let gw = Gw::start(&fpm.upstream("connect_timeout = \"20s\"\n")).await;
    let rs = burst(gw.addr, 12, "/slow.php?ms=1000").await;
    let statuses: Vec<u16> = rs.iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![200; 12], "baton");
    assert!(rs.iter().all(|r| r.text() == "slept"));
    assert!(bad >= 1, "nginx returned no 502: the pool is not saturated");
}

#[tokio::test]
async fn saturated_pool_past_connect_timeout_is_503_with_retry_after_never_502() {
    let fpm = php::start(SATURATED).await;
    let gw = Gw::start(&fpm.upstream("connect_timeout = \"1500ms\"\n")).await;
    let rs = burst(gw.addr, 12, "/slow.php?ms=1000").await;
    let ok = rs.iter().filter(|r| r.status == 200).count();
    let busy: Vec<&Resp> = rs.iter().filter(|r| r.status == 503).collect();
    assert_eq!(ok + busy.len(), 12, "only 200 and 503");
    assert!(ok >= 1 && !busy.is_empty(), "{ok} ok, {} busy", busy.len());
    for r in busy {
        assert_eq!(r.proxy_error(), "connection_limit_reached");
        assert_eq!(r.header("retry-after"), "5");
        let line = gw.failures(&r.request_id()).await.pop().unwrap();
        assert_eq!(line["cause"], "upstream_busy");
        assert_eq!(line["errno"], 11);
    }
}

/// `setpriv` runs baton as nobody (root may open any socket).
fn as_nobody(args: &[&str], cfg: &std::path::Path) -> std::process::Command {
    let mut c = std::process::Command::new("setpriv");
    c.args([
        "--reuid=nobody",
        "--regid=nogroup",
        "--clear-groups",
        env!("CARGO_BIN_EXE_baton"),
    ])
    .args(args)
    .arg(cfg);
    c
}

#[tokio::test]
async fn socket_baton_may_not_open_is_explained_by_check_and_at_start() {
    let fpm = php::start("").await;
    let port = refusing_addr().port();
    let cfg = fpm.dir.path().join("baton.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = [\"127.0.0.1:{port}\"]\n[log]\naccess = \"off\"\nerrors = \"stderr\"\n{}",
            fpm.upstream("")
        ),
    )
    .unwrap();
    php::set_mode(&cfg, 0o644);
    let expected = format!(
        "upstreams.php.servers[0]: baton runs as nobody (uid 65534) but socket {} is www-data:www-data mode 0660: in the PHP-FPM pool set listen.owner = nobody, or listen.group = nogroup with listen.mode = 0660 (or add nobody to group www-data), then restart PHP-FPM",
        fpm.sock.display()
    );
    let out = as_nobody(&["check", "--config"], &cfg).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.ends_with(&format!(
            ": {expected}\n    fix: give baton's user access to the socket as the message says (PHP-FPM: listen.owner, listen.group, listen.mode), then restart the application\n"
        )),
        "{stdout}"
    );
    assert!(stdout.contains("\nerror: "), "{stdout}");
    // `baton serve` says the same when it starts, and keeps serving.
    let mut child = Reap(Some(
        as_nobody(&["serve", "--config"], &cfg)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let r = send(addr, get("/hello.php")).await;
    let mut child = child.take();
    child.kill().unwrap();
    let log = String::from_utf8_lossy(&child.wait_with_output().unwrap().stderr).to_string();
    assert_eq!(r.status, 503);
    assert_eq!(r.proxy_error(), "destination_unavailable");
    let start = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["target"] == "baton::sockets")
        .expect("a socket line at start");
    assert_eq!(
        format!(
            "{}: {}",
            start["key"].as_str().unwrap(),
            start["msg"].as_str().unwrap()
        ),
        expected
    );
}

#[tokio::test]
async fn php_stderr_and_backend_output_are_in_batons_log() {
    let fpm = php::prepare("");
    let port = refusing_addr().port();
    let cfg = fpm.dir.path().join("baton.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = [\"127.0.0.1:{port}\"]\n[log]\naccess = \"off\"\nerrors = \"stderr\"\n{}[upstreams.php.process]\ncommand = \"{}\"\nargs = [\"-F\", \"-O\", \"-y\", \"{}\"]\nstop_signal = \"QUIT\"\n",
            fpm.upstream(""),
            php::FPM,
            fpm.conf.display()
        ),
    )
    .unwrap();
    let mut child = Reap(Some(
        std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
            .args(["serve", "--config"])
            .arg(&cfg)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut r = None;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            r = Some(send(addr, get("/warn.php")).await);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let r = r.expect("baton serves");
    assert_eq!((r.status, r.text().as_str()), (200, "warned"));
    // SIGTERM: baton drains, then stops PHP-FPM gracefully.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = child.take().wait_with_output().unwrap();
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let stderr_line = lines
        .iter()
        .find(|v| v["target"] == "baton::fastcgi")
        .expect("the FastCGI stderr record is logged");
    assert_eq!(stderr_line["upstream"], "php");
    assert_eq!(stderr_line["request_id"], r.request_id().as_str());
    assert!(
        stderr_line["msg"]
            .as_str()
            .unwrap()
            .contains("boom from php"),
        "{stderr_line}"
    );
    // PHP-FPM's own output, tagged with its upstream.
    let notices: Vec<&str> = lines
        .iter()
        .filter(|v| v["target"] == "baton::process" && v["upstream"] == "php")
        .filter_map(|v| v["msg"].as_str())
        .collect();
    assert!(
        notices.iter().any(|m| m.contains("fpm is running")),
        "{notices:?}"
    );
    assert!(notices.contains(&"backend stopped"), "{notices:?}");
}

#[tokio::test]
async fn primary_script_unknown_is_404_not_502() {
    // A pool chrooted elsewhere: SCRIPT_FILENAME names a file PHP-FPM
    // cannot see, as when PHP-FPM runs in another container.
    let jail = tempfile::tempdir().unwrap();
    php::set_mode(jail.path(), 0o755);
    let fpm = php::start(&format!("chroot = {}\n", jail.path().display())).await;
    let gw = Gw::start(&fpm.upstream("")).await;
    let r = send(gw.addr, get("/hello.php")).await;
    let line = assert_failure(&gw, &r, 404, "destination_not_found", "script_not_found").await;
    assert_eq!(line["details"], "PHP-FPM: Primary script unknown");
}

/// The upstream's latency on the dashboard is PHP's, not that of static
/// files baton serves itself from the root (a WordPress showed p50
/// "≤ 0.5 ms" for a site whose PHP took 50 ms).
#[tokio::test]
async fn static_files_are_not_the_upstreams_latency() {
    let (_fpm, gw) = site("").await;
    for _ in 0..20 {
        assert_eq!(send(gw.addr, get("/style.css")).await.status, 200);
    }
    let r = send(gw.addr, get("/slow.php?ms=50")).await;
    assert_eq!(r.text(), "slept");
    let s = send(gw.admin, get("/api/state")).await.json();
    let t = &s["upstreams"][0]["tally"];
    assert_eq!(t["requests"], 21, "{t}");
    // Buckets of 0.5 ms doubling: one request, over 32 ms.
    let latency: Vec<u64> = t["latency"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(latency.iter().sum::<u64>(), 1, "{latency:?}");
    assert!(latency[..=6].iter().all(|n| *n == 0), "{latency:?}");
}

/// The connections baton has opened to the upstream `php`.
async fn connects(gw: &Gw) -> u64 {
    let m = gw.metrics().await;
    m.lines()
        .find_map(|l| l.strip_prefix("baton_upstream_connections_opened_total{upstream=\"php\"} "))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn a_saturated_pool_hands_finished_connections_to_waiting_requests() {
    // Two workers, sixteen requests at a time: each finished connection
    // goes to a waiting request instead of being closed and reopened.
    let fpm = php::start("pm = static\npm.max_children = 2\n").await;
    let gw = Gw::start(&fpm.upstream("")).await;
    // The first burst connects for all of them (the pool's size is not
    // known yet) and teaches it; it may end holding fewer than two
    // connections, which the second makes up.
    for _ in 0..2 {
        let rs = burst(gw.addr, 16, "/pid.php?ms=20").await;
        assert!(rs.iter().all(|r| r.status == 200));
    }
    let learned = connects(&gw).await;
    for _ in 0..3 {
        let rs = burst(gw.addr, 16, "/pid.php?ms=20").await;
        assert_eq!(
            rs.iter().map(|r| r.status).collect::<Vec<_>>(),
            vec![200; 16]
        );
    }
    let after = connects(&gw).await;
    println!(
        "the first bursts opened {learned}, the next 48 requests {}",
        after - learned
    );
    assert!(learned >= 2, "{learned}");
    assert_eq!(after - learned, 0, "48 requests opened connections");
}

#[tokio::test]
async fn a_worker_another_client_frees_is_found_and_used() {
    // Three workers; the test holds one with a request it never finishes
    // (another client of the pool: a cron, a second proxy).
    let fpm = php::start("pm = static\npm.max_children = 3\n").await;
    let mut other = tokio::net::UnixStream::connect(&fpm.sock).await.unwrap();
    let mut begin = Vec::new();
    baton::upstream::fastcgi::push_begin(&mut begin, false);
    tokio::io::AsyncWriteExt::write_all(&mut other, &begin)
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let gw = Gw::start(&fpm.upstream("")).await;
    let pids = |rs: &[Resp]| {
        assert!(rs.iter().all(|r| r.status == 200));
        rs.iter()
            .map(|r| r.text())
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    };
    let rs = burst(gw.addr, 12, "/pid.php?ms=20").await;
    assert_eq!(pids(&rs), 2, "two workers are free");
    // The other client lets go: baton's probe in the accept queue gets the
    // worker's answer, and the next burst uses all three.
    drop(other);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let rs = burst(gw.addr, 12, "/pid.php?ms=20").await;
    assert_eq!(pids(&rs), 3, "the freed worker serves baton too");
}

#[tokio::test]
async fn an_ondemand_pool_on_tcp_grows_to_its_size_and_keeps_its_connections() {
    // `pm = ondemand` starts with no worker and forks one per connection
    // waiting in its accept queue, up to three; over TCP, as in the many
    // setups with PHP-FPM on 127.0.0.1:9000.
    let (fpm, _) =
        php::start_tcp("pm = ondemand\npm.max_children = 3\npm.process_idle_timeout = 60s\n").await;
    let gw = Gw::start(&fpm.upstream("")).await;
    let pids = |rs: &[Resp]| {
        assert_eq!(
            rs.iter().map(|r| r.status).collect::<Vec<_>>(),
            vec![200; rs.len()]
        );
        rs.iter()
            .map(|r| r.text())
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    };
    // Whatever the first bursts learn while workers are being forked, the
    // probe finds the rest: the pool ends up serving with all three.
    for _ in 0..2 {
        let n = pids(&burst(gw.addr, 12, "/pid.php?ms=20").await);
        println!(
            "burst: {n} workers, {} connections so far",
            connects(&gw).await
        );
    }
    let before = connects(&gw).await;
    let rs = burst(gw.addr, 12, "/pid.php?ms=20").await;
    assert_eq!(pids(&rs), 3, "every worker serves");
    let rs = burst(gw.addr, 12, "/pid.php?ms=20").await;
    assert_eq!(pids(&rs), 3, "every worker serves");
    // Once grown, the connections are kept and handed on.
    assert_eq!(
        connects(&gw).await - before,
        0,
        "24 requests opened connections"
    );
}
