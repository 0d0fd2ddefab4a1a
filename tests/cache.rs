//! The shared cache (`cache = true`): RFC 9111 storage and reuse, Vary,
//! no-store/private/Set-Cookie, a 304 refreshing what is stored, requests
//! coalesced, unsafe methods invalidating, stale served when the origin
//! fails (with the failure still logged), stale-while-revalidate, and
//! WordPress's cookies bypassing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

/// An origin whose answers are chosen by path, counting requests per
/// path; `stop` closes it (connections refused afterwards).
struct Origin {
    addr: SocketAddr,
    hits: Arc<Mutex<HashMap<String, u32>>>,
    task: tokio::task::JoinHandle<()>,
    conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Origin {
    async fn start() -> Origin {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let hits: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
        let h = hits.clone();
        let conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let all = conns.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                let h = h.clone();
                let conn = tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let mut chunk = [0u8; 4096];
                        let n = match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).to_string();
                            let len = head
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase()
                                        .strip_prefix("content-length:")
                                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                                })
                                .unwrap_or(0);
                            buf.drain(..end + 4 + len.min(buf.len() - end - 4));
                            let mut first = head.lines().next().unwrap_or("").split(' ');
                            let (method, path) = (
                                first.next().unwrap_or("").to_string(),
                                first.next().unwrap_or("").to_string(),
                            );
                            let n = {
                                let mut m = h.lock().unwrap();
                                let c = m.entry(path.clone()).or_default();
                                *c += 1;
                                *c
                            };
                            let header = |name: &str| {
                                head.lines().find_map(|l| {
                                    l.split_once(':')
                                        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                                        .map(|(_, v)| v.trim().to_string())
                                })
                            };
                            let (status, extra, body): (&str, String, String) = match path
                                .split('?')
                                .next()
                                .unwrap_or("")
                            {
                                "/fresh" => (
                                    "200 OK",
                                    "Cache-Control: max-age=60\r\n".into(),
                                    format!("fresh {n}"),
                                ),
                                "/private" => (
                                    "200 OK",
                                    "Cache-Control: private, max-age=60\r\n".into(),
                                    format!("private {n}"),
                                ),
                                "/nostore" => (
                                    "200 OK",
                                    "Cache-Control: no-store\r\n".into(),
                                    format!("nostore {n}"),
                                ),
                                "/cookie" => (
                                    "200 OK",
                                    "Cache-Control: max-age=60\r\nSet-Cookie: session=abc\r\n"
                                        .into(),
                                    format!("cookie {n}"),
                                ),
                                "/vary" => {
                                    let lang = header("accept-language").unwrap_or_default();
                                    (
                                        "200 OK",
                                        "Cache-Control: max-age=60\r\nVary: Accept-Language\r\n"
                                            .into(),
                                        format!("vary {lang} {n}"),
                                    )
                                }
                                "/etag" if header("if-none-match").as_deref() == Some("\"v1\"") => {
                                    (
                                        "304 Not Modified",
                                        "Cache-Control: max-age=0\r\nETag: \"v1\"\r\n".into(),
                                        String::new(),
                                    )
                                }
                                "/etag" => (
                                    "200 OK",
                                    "Cache-Control: max-age=0\r\nETag: \"v1\"\r\n".into(),
                                    format!("etag {n}"),
                                ),
                                "/slow" => {
                                    tokio::time::sleep(Duration::from_millis(300)).await;
                                    (
                                        "200 OK",
                                        "Cache-Control: max-age=60\r\n".into(),
                                        format!("slow {n}"),
                                    )
                                }
                                "/swr" => (
                                    "200 OK",
                                    "Cache-Control: max-age=1, stale-while-revalidate=60\r\n"
                                        .into(),
                                    format!("swr {n}"),
                                ),
                                "/short" => (
                                    "200 OK",
                                    "Cache-Control: max-age=1\r\n".into(),
                                    format!("short {n}"),
                                ),
                                "/cdn" => (
                                    "200 OK",
                                    "Cache-Control: no-store\r\nCDN-Cache-Control: max-age=60\r\n"
                                        .into(),
                                    format!("cdn {n}"),
                                ),
                                "/wp" => (
                                    "200 OK",
                                    "Cache-Control: max-age=60\r\n".into(),
                                    format!("wp {n}"),
                                ),
                                "/post" if method == "POST" => {
                                    ("200 OK", String::new(), "posted".into())
                                }
                                "/post" => (
                                    "200 OK",
                                    "Cache-Control: max-age=60\r\n".into(),
                                    format!("post {n}"),
                                ),
                                "/down" => {
                                    ("503 Service Unavailable", String::new(), "down".into())
                                }
                                _ => ("404 Not Found", String::new(), "no".into()),
                            };
                            let resp = format!(
                                "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\n\r\n{body}",
                                body.len()
                            );
                            if s.write_all(resp.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    }
                });
                all.lock().unwrap().push(conn);
            }
        });
        Origin {
            addr,
            hits,
            task,
            conns,
        }
    }

    fn hits(&self, path: &str) -> u32 {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    /// Closes the listener and every connection (kept-alive ones too).
    fn stop(&self) {
        self.task.abort();
        for c in self.conns.lock().unwrap().iter() {
            c.abort();
        }
    }
}

async fn gateway(o: &Origin, extra: &str) -> Gw {
    Gw::start(&format!(
        "[upstreams.app]\nservers = [\"{}\"]\nretries = 0\n[[routes]]\nupstream = \"app\"\ncache = true\n{extra}",
        o.addr
    ))
    .await
}

#[tokio::test]
async fn fresh_responses_are_stored_and_served_with_age_and_cache_status() {
    let o = Origin::start().await;
    let gw = gateway(&o, "").await;
    let r = send(gw.addr, get("/fresh")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "fresh 1"));
    assert_eq!(
        r.header("cache-status"),
        "baton; fwd=uri-miss; fwd-status=200; stored"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = send(gw.addr, get("/fresh")).await;
    assert_eq!(r.text(), "fresh 1");
    assert!(
        r.header("cache-status").starts_with("baton; hit; ttl=5"),
        "{}",
        r.header("cache-status")
    );
    assert!(
        r.header("age").parse::<u64>().unwrap() >= 1,
        "{}",
        r.header("age")
    );
    assert_eq!(o.hits("/fresh"), 1);
    // HEAD from the stored GET; the client's own validator gets 304.
    let head = hyper::Request::head("/fresh")
        .header("host", "test.local")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let r = send(gw.addr, head).await;
    assert_eq!((r.status, r.body.as_ref().unwrap().len()), (200, 0));
    // A range of the stored response.
    let r = send(gw.addr, get_with("/fresh", "range", "bytes=0-4")).await;
    assert_eq!((r.status, r.text().as_str()), (206, "fresh"));
    assert_eq!(r.header("content-range"), "bytes 0-4/7");
    let r = send(gw.addr, get_with("/fresh", "range", "bytes=50-")).await;
    assert_eq!((r.status, r.header("content-range")), (416, "bytes */7"));
    // Not stored: private, no-store, a Set-Cookie.
    for p in ["/private", "/nostore", "/cookie"] {
        let a = send(gw.addr, get(p)).await;
        let b = send(gw.addr, get(p)).await;
        assert_ne!(a.text(), b.text(), "{p}");
        assert_eq!(o.hits(p), 2, "{p}");
        assert!(
            b.header("cache-status")
                .starts_with("baton; fwd=uri-miss; fwd-status=200"),
            "{p}: {}",
            b.header("cache-status")
        );
        assert!(!b.header("cache-status").contains("stored"), "{p}");
    }
    let m = gw.metrics().await;
    assert!(
        m.contains("baton_cache_requests_total{event=\"hit\"} 4"),
        "{m}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn vary_keeps_variants_apart_and_304_refreshes_what_is_stored() {
    let o = Origin::start().await;
    let gw = gateway(&o, "").await;
    for (lang, n) in [("en", 1), ("fr", 2), ("en", 1), ("fr", 2)] {
        let r = send(gw.addr, get_with("/vary", "accept-language", lang)).await;
        assert_eq!(r.text(), format!("vary {lang} {n}"));
    }
    assert_eq!(o.hits("/vary"), 2);
    // max-age=0 with an ETag: each reuse is revalidated, the origin says
    // 304, the stored body is served.
    let r = send(gw.addr, get("/etag")).await;
    assert_eq!(r.text(), "etag 1");
    let r = send(gw.addr, get("/etag")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "etag 1"));
    assert_eq!(
        r.header("cache-status"),
        "baton; fwd=stale; fwd-status=304; stored"
    );
    assert_eq!(o.hits("/etag"), 2);
    gw.stop().await;
}

#[tokio::test]
async fn a_thousand_concurrent_misses_make_one_upstream_request() {
    let o = Origin::start().await;
    let gw = gateway(&o, "").await;
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let addr = gw.addr;
        tasks.push(tokio::spawn(async move { send(addr, get("/slow")).await }));
    }
    let mut collapsed = 0;
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "slow 1"));
        collapsed += r.header("cache-status").contains("collapsed") as u32;
    }
    assert_eq!(o.hits("/slow"), 1);
    assert!(collapsed > 900, "{collapsed}");
    gw.stop().await;
}

#[tokio::test]
async fn unsafe_methods_invalidate_and_cookies_bypass() {
    let o = Origin::start().await;
    let gw = gateway(&o, "cache_bypass_cookies = [\"wordpress_logged_in_\"]").await;
    assert_eq!(send(gw.addr, get("/post")).await.text(), "post 1");
    assert_eq!(send(gw.addr, get("/post")).await.text(), "post 1");
    let post = hyper::Request::post("/post")
        .header("host", "test.local")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"x=1")))
        .unwrap();
    let r = send(gw.addr, post).await;
    assert_eq!(r.header("cache-status"), "baton; fwd=method");
    assert_eq!(send(gw.addr, get("/post")).await.text(), "post 3");
    // A logged-in WordPress user is never served (nor stores) a page.
    assert_eq!(send(gw.addr, get("/wp")).await.text(), "wp 1");
    let r = send(
        gw.addr,
        get_with("/wp", "cookie", "a=b; wordpress_logged_in_abc=admin%7C1"),
    )
    .await;
    assert_eq!(r.text(), "wp 2");
    assert_eq!(
        r.header("cache-status"),
        "baton; fwd=bypass; detail=\"cookie wordpress_logged_in_\""
    );
    assert_eq!(send(gw.addr, get("/wp")).await.text(), "wp 1");
    gw.stop().await;
}

/// The origin killed: cached URLs keep answering (the stored response,
/// `Cache-Status` saying why) within the stale window, uncached ones get
/// baton's explained 502; every failure is logged with its cause and
/// counted by incidents.
#[tokio::test]
async fn a_dead_origin_is_answered_from_the_cache_within_the_stale_window() {
    let o = Origin::start().await;
    let gw = gateway(
        &o,
        "stale_if_error = \"1h\"\n[incidents]\ndir = \"off\"\nerror_rate = 0.5\nmin_requests = 3\nwindow = \"10s\"",
    )
    .await;
    assert_eq!(send(gw.addr, get("/short")).await.text(), "short 1");
    // stale-while-revalidate: served at once, refreshed behind.
    assert_eq!(send(gw.addr, get("/swr")).await.text(), "swr 1");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = send(gw.addr, get("/swr")).await;
    assert_eq!(r.text(), "swr 1");
    assert!(
        r.header("cache-status")
            .contains("detail=stale-while-revalidate"),
        "{}",
        r.header("cache-status")
    );
    for _ in 0..50 {
        if o.hits("/swr") == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(o.hits("/swr"), 2, "refreshed in the background");
    o.stop();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut errors = 0;
    for _ in 0..20 {
        let r = send(gw.addr, get("/short")).await;
        if r.status != 200 || r.text() != "short 1" {
            errors += 1;
        }
        assert!(
            r.header("cache-status")
                .starts_with("baton; fwd=stale; fwd-status=502; ttl=-"),
            "{}",
            r.header("cache-status")
        );
        assert!(
            r.header("cache-status")
                .ends_with("detail=\"stale-if-error connection_refused\""),
            "{}",
            r.header("cache-status")
        );
    }
    assert_eq!(errors, 0);
    let r = send(gw.addr, get("/never-cached")).await;
    assert_eq!((r.status, r.proxy_error()), (502, "connection_refused"));
    // The failures behind the stale answers are in the failure log, the
    // access log names the cause with the 200, and incidents count them.
    let id = send(gw.addr, get("/short")).await.request_id();
    let f = gw.failures(&id).await;
    assert_eq!(f[0]["cause"], "connection_refused");
    let a = gw.access(&id).await;
    assert_eq!(
        (a["status"].as_u64(), a["cause"].as_str()),
        (Some(200), Some("connection_refused"))
    );
    let m = gw.metrics().await;
    assert!(
        m.contains("baton_cache_requests_total{event=\"stale_error\"} 21"),
        "{m}"
    );
    // And on the dashboard's cache panel.
    let state = send(
        gw.admin,
        hyper::Request::get("/api/state")
            .header("host", gw.admin.to_string())
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap(),
    )
    .await
    .json();
    assert_eq!(
        state["cache"]["events"]["stale_error"], 21,
        "{}",
        state["cache"]
    );
    assert_eq!(state["cache"]["routes"][0], "*/");
    // The outage opened an incident, though every visitor got the page.
    let open = gw.open_incident().await;
    assert_eq!(open["upstream"], "app", "{open}");
    gw.stop().await;
}

/// Purge on the admin address: one URL, or a prefix.
#[tokio::test]
async fn purge_by_url_and_by_prefix() {
    let o = Origin::start().await;
    let gw = gateway(&o, "").await;
    for p in ["/fresh", "/fresh?a=1", "/vary"] {
        send(gw.addr, get(p)).await;
    }
    let purge = |q: &str| {
        hyper::Request::post(format!("/cache/purge?{q}"))
            .header("host", gw.admin.to_string())
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap()
    };
    let r = send(gw.admin, purge("url=http://test.local/fresh")).await;
    assert_eq!(r.json()["purged"], 1);
    // Counted per path and query by the origin.
    assert_eq!(send(gw.addr, get("/fresh")).await.text(), "fresh 2");
    assert_eq!(send(gw.addr, get("/fresh?a=1")).await.text(), "fresh 1");
    let r = send(gw.admin, purge("prefix=http://test.local/fresh")).await;
    assert_eq!(r.json()["purged"], 2);
    assert_eq!(send(gw.addr, get("/fresh?a=1")).await.text(), "fresh 2");
    assert_eq!(send(gw.addr, get("/vary")).await.text(), "vary  1");
    let r = send(gw.admin, purge("")).await;
    assert_eq!(r.status, 400);
    gw.stop().await;
}

/// The disk tier: what was stored is there after a restart, even with
/// the origin gone; a purge removes it from disk too.
#[tokio::test]
async fn the_disk_tier_survives_a_restart() {
    let o = Origin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cache = format!(
        "[cache]\ndir = \"{}\"\ndisk = \"10MiB\"\n",
        dir.path().display()
    );
    let gw = gateway(&o, &cache).await;
    assert_eq!(send(gw.addr, get("/fresh")).await.text(), "fresh 1");
    assert_eq!(send(gw.addr, get("/vary")).await.text(), "vary  1");
    // Written off the request's thread: wait for the files.
    for _ in 0..100 {
        if std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "entry")
            })
            .count()
            == 2
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gw.stop().await;
    o.stop();
    let gw = gateway(&o, &cache).await;
    let r = send(gw.addr, get("/fresh")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "fresh 1"));
    assert!(
        r.header("cache-status").starts_with("baton; hit; ttl="),
        "{}",
        r.header("cache-status")
    );
    let purge = hyper::Request::post("/cache/purge?prefix=http://test.local/")
        .header("host", gw.admin.to_string())
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    assert_eq!(send(gw.admin, purge).await.json()["purged"], 2);
    let r = send(gw.addr, get("/fresh")).await;
    assert_eq!((r.status, r.proxy_error()), (502, "connection_refused"));
    gw.stop().await;
}

/// PHP pages (no cache headers) behind a real PHP-FPM: cached for the
/// route's `cache_ttl`, as nginx's `fastcgi_cache_valid`; a WordPress
/// logged-in cookie is never served the cached page (the default bypass
/// on FastCGI upstreams).
#[tokio::test]
async fn php_pages_are_cached_for_cache_ttl_and_logged_in_users_bypass() {
    let fpm = crate::support::php::start("").await;
    std::fs::write(
        fpm.root.join("page.php"),
        "<?php echo 'page at ', microtime(true), ' pid ', getmypid();\n",
    )
    .unwrap();
    crate::support::php::set_mode(&fpm.root.join("page.php"), 0o644);
    let gw = Gw::start(&format!(
        "{}cache = true\ncache_ttl = \"1m\"\n",
        fpm.upstream("")
    ))
    .await;
    let first = send(gw.addr, get("/page.php")).await;
    assert_eq!(first.status, 200);
    assert!(
        first
            .header("cache-status")
            .ends_with("fwd-status=200; stored"),
        "{}",
        first.header("cache-status")
    );
    let again = send(gw.addr, get("/page.php")).await;
    assert_eq!(again.text(), first.text());
    assert!(
        again.header("cache-status").starts_with("baton; hit"),
        "{}",
        again.header("cache-status")
    );
    // Logged in: PHP runs, nothing is stored, the cached page stays.
    let mine = send(
        gw.addr,
        get_with("/page.php", "cookie", "wordpress_logged_in_123=admin%7Cx"),
    )
    .await;
    assert_ne!(mine.text(), first.text());
    assert!(
        mine.header("cache-status").starts_with("baton; fwd=bypass"),
        "{}",
        mine.header("cache-status")
    );
    assert_eq!(send(gw.addr, get("/page.php")).await.text(), first.text());
    gw.stop().await;
}

/// RFC 9213: the origin tells caches like baton apart from browsers with
/// `CDN-Cache-Control`; the browser still gets the `Cache-Control` sent.
#[tokio::test]
async fn cdn_cache_control_is_for_the_gateway_cache_only() {
    let o = Origin::start().await;
    let gw = gateway(&o, "").await;
    assert_eq!(send(gw.addr, get("/cdn")).await.text(), "cdn 1");
    let r = send(gw.addr, get("/cdn")).await;
    assert_eq!(r.text(), "cdn 1");
    assert!(
        r.header("cache-status").starts_with("baton; hit"),
        "{}",
        r.header("cache-status")
    );
    assert_eq!(r.header("cache-control"), "no-store");
    assert_eq!(o.hits("/cdn"), 1);
    gw.stop().await;
}
