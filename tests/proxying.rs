//! Forwarding: headers, pass-through of application errors, error page
//! formats, HTTP/2 clients, upgrades, safe retries, metrics and logs.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

fn route(name: &str, servers: &[String], extra: &str) -> String {
    let list: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "[upstreams.{name}]\nservers = [{}]\n{extra}\n[[routes]]\nupstream = \"{name}\"\n",
        list.join(", ")
    )
}

#[tokio::test]
async fn application_error_bodies_pass_through_byte_for_byte() {
    for code in [500u16, 502, 503] {
        let body = format!("{{\"error\":\"app says {code}\"}}\n");
        let o = Origin::start(Script::Status(code, body.clone()))
            .await
            .unwrap();
        let gw = Gw::start(&route("app", &[o.addr.to_string()], "")).await;
        let r = send(gw.addr, get("/")).await;
        assert_eq!(r.status, code);
        assert_eq!(r.body.as_ref().unwrap(), body.as_bytes());
        assert_eq!(
            r.header("proxy-status"),
            "",
            "baton never marks an application's own answer"
        );
        assert_eq!(r.header("server"), "origin");
        assert!(gw.failures(&r.request_id()).await.is_empty() || code != 500);
    }
}

#[tokio::test]
async fn forwarding_headers_and_hop_by_hop_removal() {
    let o = Origin::start(Script::Echo).await.unwrap();
    let gw = Gw::start(&route("app", &[o.addr.to_string()], "")).await;
    let req = Request::get("/echo?q=1")
        .header("host", "shop.example")
        .header("connection", "x-private")
        .header("x-private", "secret")
        .header("keep-alive", "timeout=5")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-request-id", "client-id-123")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "spoofed.example")
        .header("via", "1.0 squid")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = send(gw.addr, req).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.request_id(),
        "client-id-123",
        "a well-formed incoming id is kept"
    );
    assert_eq!(r.header("via"), "1.1 baton");
    let echo = r.json();
    assert_eq!(echo["path"], "/echo?q=1");
    let h: Vec<(String, String)> = echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p[0].as_str().unwrap().to_string(),
                p[1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let get = |k: &str| h.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!(get("host"), Some("shop.example"), "Host is kept");
    // Baton's own fields: the client's replaced (the proto and host it
    // claims are not believed) or continued, each sent once.
    assert_eq!(get("x-forwarded-for"), Some("203.0.113.9, 127.0.0.1"));
    assert_eq!(get("x-forwarded-proto"), Some("http"));
    assert_eq!(get("x-forwarded-host"), Some("shop.example"));
    assert_eq!(get("via"), Some("1.0 squid, 1.1 baton"));
    assert_eq!(get("x-request-id"), Some("client-id-123"));
    for own in [
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "via",
        "x-request-id",
    ] {
        let lines = h.iter().filter(|(n, _)| n == own).count();
        assert_eq!(lines, 1, "{own} is sent once: {h:?}");
    }
    assert_eq!(
        get("x-private"),
        None,
        "fields named in Connection are hop-by-hop"
    );
    assert_eq!(get("keep-alive"), None);
}

#[tokio::test]
async fn malformed_request_id_is_replaced() {
    let o = Origin::start(Script::Ok("ok".into())).await.unwrap();
    let gw = Gw::start(&route("app", &[o.addr.to_string()], "")).await;
    let req = Request::get("/")
        .header("host", "t")
        .header("x-request-id", "bad id with spaces")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = send(gw.addr, req).await;
    assert_eq!(r.request_id().len(), 16);
}

#[tokio::test]
async fn error_formats_follow_accept() {
    let dead = refusing_addr();
    let gw = Gw::start(&route("app", &[dead.to_string()], "")).await;

    let html = send(
        gw.addr,
        Request::get("/")
            .header("host", "test.local")
            .header("accept", "text/html,application/xhtml+xml,*/*;q=0.8")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(html.status, 502);
    assert_eq!(html.header("content-type"), "text/html; charset=utf-8");
    let page = html.text();
    assert!(
        page.contains("The site&#39;s application is not running"),
        "{page}"
    );
    assert!(page.contains("won't help"));
    assert!(page.contains(&html.request_id()));
    assert!(
        page.contains("location.reload()") && page.contains("Math.pow(2, n)"),
        "retries by itself, with a growing delay"
    );

    let api = send(
        gw.addr,
        Request::get("/")
            .header("host", "test.local")
            .header("accept", "application/json")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(api.header("content-type"), "application/problem+json");
    let j = api.json();
    assert_eq!(j["status"], 502);
    assert_eq!(j["type"], "urn:baton:cause:connection_refused");
    assert_eq!(j["proxy_status"], "connection_refused");
    assert_eq!(j["request_id"], api.request_id().as_str());
    assert!(j["title"].as_str().unwrap().contains("not running"));

    let curl = send(
        gw.addr,
        Request::get("/")
            .header("host", "test.local")
            .header("accept", "*/*")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(curl.header("content-type"), "text/plain; charset=utf-8");
    assert!(
        curl.text()
            .starts_with("502 Bad Gateway: The site's application is not running\n"),
        "{}",
        curl.text()
    );
}

#[tokio::test]
async fn operator_templates_replace_the_pages() {
    let dead = refusing_addr();
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("error.html");
    std::fs::write(
        &t,
        "<h1>Oops {{status}}</h1><p>{{cause}} {{request_id}}</p>",
    )
    .unwrap();
    let body = format!(
        "[error_pages]\nhtml = \"{}\"\n\n{}",
        t.display(),
        route("app", &[dead.to_string()], "")
    );
    let gw = Gw::start(&body).await;
    let r = send(
        gw.addr,
        Request::get("/")
            .header("host", "test.local")
            .header("accept", "text/html")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(
        r.text(),
        format!(
            "<h1>Oops 502</h1><p>connection_refused {}</p>",
            r.request_id()
        )
    );
}

#[tokio::test]
async fn connect_failure_fails_over_for_any_method() {
    let dead = refusing_addr();
    let o = Origin::start(Script::Echo).await.unwrap();
    let gw = Gw::start(&route(
        "app",
        &[dead.to_string(), o.addr.to_string()],
        "retries = 1",
    ))
    .await;
    for _ in 0..4 {
        let req = Request::post("/form")
            .header("host", "t")
            .body(Full::new(Bytes::from_static(b"a=1")))
            .unwrap();
        let r = send(gw.addr, req).await;
        assert_eq!(
            r.status, 200,
            "POST failed over: nothing had been sent to the dead server"
        );
        assert_eq!(r.json()["body_len"], 3);
    }
    assert_eq!(o.hits.load(Ordering::Relaxed), 4);
}

#[tokio::test]
async fn without_retries_the_first_failure_is_final() {
    let dead = refusing_addr();
    let o = Origin::start(Script::Ok("ok".into())).await.unwrap();
    let gw = Gw::start(&route(
        "app",
        &[dead.to_string(), o.addr.to_string()],
        "retries = 0",
    ))
    .await;
    let mut statuses = Vec::new();
    for _ in 0..2 {
        statuses.push(send(gw.addr, get("/")).await.status);
    }
    statuses.sort();
    assert_eq!(statuses, vec![200, 502], "round robin, no retry");
}

#[tokio::test]
async fn large_streamed_body_reaches_the_upstream() {
    let o = Origin::start(Script::Echo).await.unwrap();
    let gw = Gw::start(&route("app", &[o.addr.to_string()], "")).await;
    let body = Bytes::from(vec![b'z'; 5 << 20]);
    let r = send(
        gw.addr,
        Request::put("/big")
            .header("host", "t")
            .body(Full::new(body))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body_len"], 5 << 20);
}

#[tokio::test]
async fn http2_prior_knowledge_client() {
    let o = Origin::start(Script::Echo).await.unwrap();
    let gw = Gw::start(&route("app", &[o.addr.to_string()], "")).await;
    let s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut tx, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get("http://h2.example/over/h2")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tx.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["via"], "1.1 baton");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo["path"], "/over/h2");
    let h = echo["headers"].as_array().unwrap();
    assert!(
        h.iter().any(|p| p[0] == "host" && p[1] == "h2.example"),
        "{h:?}"
    );
    assert!(h.iter().any(|p| p[0] == "via" && p[1] == "2 baton"));
}

#[tokio::test]
async fn websocket_upgrade_is_passed_through() {
    let o = Origin::start(Script::Upgrade).await.unwrap();
    let gw = Gw::start(&route("ws", &[o.addr.to_string()], "")).await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /chat HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").await.unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.to_ascii_lowercase().contains("upgrade: websocket"));
    s.write_all(b"ping over the tunnel").await.unwrap();
    let mut echo = [0u8; 20];
    s.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"ping over the tunnel");
}

#[tokio::test]
async fn metrics_count_requests_and_failures_by_cause() {
    let dead = refusing_addr();
    let o = Origin::start(Script::Ok("ok".into())).await.unwrap();
    let body = format!(
        "[upstreams.good]\nservers = [\"{}\"]\n[upstreams.bad]\nservers = [\"{dead}\"]\n[[routes]]\npath = \"/bad\"\nupstream = \"bad\"\n[[routes]]\nupstream = \"good\"\n",
        o.addr
    );
    let gw = Gw::start(&body).await;
    assert_eq!(send(gw.addr, get("/")).await.status, 200);
    assert_eq!(send(gw.addr, get("/bad")).await.status, 502);
    assert_eq!(send(gw.addr, get("/bad")).await.status, 502);
    let m = gw.metrics().await;
    assert!(
        m.contains("baton_requests_total{route=\"*/\",status=\"200\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("baton_requests_total{route=\"*/bad\",status=\"502\"} 2"),
        "{m}"
    );
    assert!(m.contains("baton_upstream_failures_total{upstream=\"bad\",cause=\"connection_refused\",phase=\"connect\",proxy_status=\"connection_refused\"} 2"), "{m}");
    assert!(
        m.contains("baton_request_duration_seconds_bucket{le="),
        "{m}"
    );
    let health = send(gw.admin, get("/healthz")).await;
    assert_eq!(health.status, 200);
}

#[tokio::test]
async fn access_log_json_line_per_request() {
    let o = Origin::start(Script::Ok("hello".into())).await.unwrap();
    let gw = Gw::start(&route("app", &[o.addr.to_string()], "")).await;
    let r = send(gw.addr, get("/page?x=1")).await;
    let a = gw.access(&r.request_id()).await;
    assert_eq!(a["status"], 200);
    assert_eq!(a["bytes"], 5);
    assert_eq!(a["method"], "GET");
    assert_eq!(a["path"], "/page?x=1");
    assert_eq!(a["upstream"], "app");
    assert_eq!(a["server"], o.addr.to_string());
    assert_eq!(a["attempts"], 1);
}

#[tokio::test]
async fn access_log_combined_format() {
    let o = Origin::start(Script::Ok("hello".into())).await.unwrap();
    let gw = Gw::start_with(
        &route("app", &[o.addr.to_string()], ""),
        "127.0.0.1:0",
        "combined",
    )
    .await;
    let req = Request::get("/c")
        .header("host", "t")
        .header("user-agent", "curl/8.0")
        .header("referer", "http://r/")
        .body(Full::new(Bytes::new()))
        .unwrap();
    send(gw.addr, req).await;
    let line = gw.access_raw().await;
    let re = line.trim_end();
    assert!(re.starts_with("127.0.0.1 - - ["), "{re}");
    assert!(
        re.ends_with("\"GET /c HTTP/1.1\" 200 5 \"http://r/\" \"curl/8.0\""),
        "{re}"
    );
}

#[tokio::test]
async fn keep_alive_pooling_reuses_upstream_connections() {
    let o = Origin::start(Script::Ok("ok".into())).await.unwrap();
    let gw = Gw::start(&route("app", &[o.addr.to_string()], "")).await;
    let mut c = Client::connect(gw.addr).await;
    for _ in 0..20 {
        assert_eq!(c.send(get("/")).await.status, 200);
    }
    assert_eq!(
        o.conns.load(Ordering::Relaxed),
        1,
        "one pooled upstream connection"
    );
}

#[tokio::test]
async fn ipv6_upstream_and_listener() {
    let o = Origin::start_on("[::1]:0".parse().unwrap(), Script::Ok("v6\n".into()))
        .await
        .unwrap();
    let gw = Gw::start_with(&route("app", &[o.addr.to_string()], ""), "[::1]:0", "json").await;
    let r = send(gw.addr, get("/")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "v6\n");
    let a = gw.access(&r.request_id()).await;
    assert_eq!(a["client"], "::1");
}

/// The demo's application error (`/app-error`) is JSON and says so: an
/// application's own error passes through with its own type.
#[tokio::test]
async fn an_applications_json_error_passes_through_labelled_json() {
    let body = r#"{"error":"database unavailable","code":500}"#;
    let o = Origin::start(Script::Status(500, body.into()))
        .await
        .unwrap();
    let gw = Gw::start(&one_route(o.addr)).await;
    let r = send(gw.addr, get("/app-error")).await;
    assert_eq!(r.status, 500);
    assert_eq!(r.header("content-type"), "application/json");
    assert_eq!(r.text(), body);
    assert_eq!(r.header("proxy-status"), "");
}

/// A failure's details (addresses, socket paths, users) are for the
/// operator: a client outside `server.details_to` gets the cause and the
/// request ID only; the admin token shows them.
#[tokio::test]
async fn failure_details_reach_only_trusted_clients() {
    let down = refusing_addr();
    let sock = "/run/baton-test-missing/app.sock";
    let gw = Gw::start(&format!(
        "[server]\ndetails_to = []\nadmin_token = \"s3cret\"\n[upstreams.a]\nservers = [\"{down}\"]\nretries = 0\n[upstreams.b]\nservers = [\"unix:{sock}\"]\nretries = 0\n[[routes]]\npath = \"/a\"\nupstream = \"a\"\n[[routes]]\npath = \"/b\"\nupstream = \"b\"\n"
    ))
    .await;
    for (path, leak) in [("/a", down.to_string()), ("/b", sock.to_string())] {
        let r = send(gw.addr, get_with(path, "accept", "text/html")).await;
        assert_eq!(r.status, if path == "/a" { 502 } else { 503 });
        let ps = r.header("proxy-status");
        assert!(!ps.contains("details") && !ps.contains("next-hop"), "{ps}");
        assert!(!r.text().contains(&leak), "{path} leaks {leak}");
        assert!(
            r.text().contains(&r.request_id()),
            "the request ID is shown"
        );
        // The log keeps them.
        let line = gw.failures(&r.request_id()).await.pop().unwrap();
        assert!(line.to_string().contains(&leak), "{line}");
        // The admin token shows them.
        let mut req = get_with(path, "accept", "text/html");
        req.headers_mut()
            .insert("authorization", "Bearer s3cret".parse().unwrap());
        let r = send(gw.addr, req).await;
        assert!(
            r.header("proxy-status").contains("details="),
            "{}",
            r.header("proxy-status")
        );
        assert!(r.text().contains(&leak));
    }
    gw.stop().await;
    // Loopback is trusted by default, but not a visitor forwarded through
    // a proxy baton does not trust (nginx in front on the same host).
    let gw = Gw::start(&format!(
        "[upstreams.a]\nservers = [\"{down}\"]\nretries = 0\n[[routes]]\nupstream = \"a\"\n"
    ))
    .await;
    let r = send(gw.addr, get("/")).await;
    assert!(
        r.header("proxy-status").contains("details="),
        "loopback itself"
    );
    let r = send(gw.addr, get_with("/", "x-forwarded-for", "203.0.113.9")).await;
    assert!(
        !r.header("proxy-status").contains("details="),
        "{}",
        r.header("proxy-status")
    );
    gw.stop().await;
}

/// The error page retries by itself only for a method that may be sent
/// again: a POST's page never resends the form.
#[tokio::test]
async fn the_error_page_reloads_itself_only_for_safe_methods() {
    let gw = Gw::start(&one_route(refusing_addr())).await;
    let r = send(gw.addr, get_with("/", "accept", "text/html")).await;
    assert!(
        r.text().contains(r#"if ("1" !== "1") return;"#),
        "GET retries"
    );
    assert!(r.text().contains("this page will do so by itself"));
    let post = Request::post("/")
        .header("host", "t")
        .header("accept", "text/html")
        .body(Full::new(Bytes::from_static(b"comment=hi")))
        .unwrap();
    let r = send(gw.addr, post).await;
    assert_eq!(r.status, 502);
    assert!(
        r.text().contains(r#"if ("0" !== "1") return;"#),
        "POST does not"
    );
    assert!(
        r.text().contains(
            "What you sent may or may not have been received: check before sending it again."
        ),
        "{}",
        r.text()
    );
    gw.stop().await;
}

/// A route for several host names (nginx's `server_name a b`).
#[tokio::test]
async fn a_route_takes_a_list_of_hosts() {
    let a = Origin::start(Script::Ok("site".into())).await.unwrap();
    let b = Origin::start(Script::Ok("other".into())).await.unwrap();
    let gw = Gw::start(&format!(
        "[upstreams.a]\nservers = [\"{}\"]\n[upstreams.b]\nservers = [\"{}\"]\n[[routes]]\nhost = [\"example.com\", \"www.example.com\"]\nupstream = \"a\"\n[[routes]]\nupstream = \"b\"\n",
        a.addr, b.addr
    ))
    .await;
    for (host, want) in [
        ("example.com", "site"),
        ("WWW.example.com:8080", "site"),
        ("x.example.com", "other"),
    ] {
        let r = send(gw.addr, get_with("/", "host", host)).await;
        assert_eq!(r.text(), want, "{host}");
    }
    gw.stop().await;
}

/// A route's header rules: set and remove, on every response of the
/// route (baton's error pages too) and on the request sent upstream.
#[tokio::test]
async fn route_header_rules_set_and_remove_fields() {
    let o = Origin::start(Script::Raw {
        bytes: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Powered-By: PHP/8.2\r\nServer: app\r\n\r\nok".to_vec(),
        close: false,
    })
    .await
    .unwrap();
    let echo = Origin::start(Script::Echo).await.unwrap();
    let rules = "response_headers = { set = { \"X-Frame-Options\" = \"DENY\", \"Strict-Transport-Security\" = \"max-age=63072000\" }, remove = [\"X-Powered-By\"] }\nrequest_headers = { set = { \"X-Env\" = \"prod\" }, remove = [\"Cookie\"] }";
    let gw = Gw::start(&format!(
        "[upstreams.app]\nservers = [\"{}\"]\n[upstreams.echo]\nservers = [\"{}\"]\n[upstreams.down]\nservers = [\"{}\"]\nretries = 0\n[[routes]]\npath = \"/echo\"\nupstream = \"echo\"\n{rules}\n[[routes]]\npath = \"/down\"\nupstream = \"down\"\n{rules}\n[[routes]]\nupstream = \"app\"\n{rules}\n",
        o.addr,
        echo.addr,
        refusing_addr()
    ))
    .await;
    let r = send(gw.addr, get("/")).await;
    assert_eq!(r.text(), "ok");
    assert_eq!(r.header("x-frame-options"), "DENY");
    assert_eq!(r.header("strict-transport-security"), "max-age=63072000");
    assert_eq!(r.header("x-powered-by"), "");
    assert_eq!(r.header("server"), "app");
    // baton's own error page of the route too.
    let r = send(gw.addr, get("/down")).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.header("x-frame-options"), "DENY");
    // The request sent upstream.
    let v = send(gw.addr, get_with("/echo", "cookie", "session=1"))
        .await
        .json();
    let has = |name: &str| {
        v["headers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h[0] == name)
            .map(|h| h[1].as_str().unwrap().to_string())
    };
    assert_eq!(has("x-env").as_deref(), Some("prod"));
    assert_eq!(has("cookie"), None);
    gw.stop().await;
    // Framing fields are baton's.
    let e = baton::config::parse(
        &format!(
            "{}response_headers = {{ set = {{ \"Content-Length\" = \"1\" }} }}\n",
            one_route(refusing_addr())
        ),
        "baton.toml",
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("routes[0].response_headers: \"Content-Length\" is a connection or framing field baton manages"), "{e}");
}

/// `compress = true`: zstd, br or gzip as the client prefers; never twice,
/// never against `no-transform`, `Vary` set, validators weakened.
#[tokio::test]
async fn compression_follows_accept_encoding_and_never_double_encodes() {
    let page = "<p>hello baton</p>\n".repeat(500);
    let raw = |headers: &str, body: &str| Script::Raw {
        bytes: format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n{headers}\r\n{body}",
            body.len()
        )
        .into_bytes(),
        close: false,
    };
    let html = Origin::start(raw("Content-Type: text/html\r\nETag: \"v1\"\r\n", &page))
        .await
        .unwrap();
    let gz = Origin::start(raw(
        "Content-Type: text/html\r\nContent-Encoding: gzip\r\n",
        "not really gzip",
    ))
    .await
    .unwrap();
    let nt = Origin::start(raw(
        "Content-Type: text/html\r\nCache-Control: no-transform\r\n",
        &page,
    ))
    .await
    .unwrap();
    let png = Origin::start(raw("Content-Type: image/png\r\n", &page))
        .await
        .unwrap();
    let small = Origin::start(raw("Content-Type: text/html\r\n", "<p>hi</p>"))
        .await
        .unwrap();
    let mut body = String::new();
    for (name, o) in [
        ("html", &html),
        ("gz", &gz),
        ("nt", &nt),
        ("png", &png),
        ("small", &small),
    ] {
        body += &format!(
            "[upstreams.{name}]\nservers = [\"{}\"]\n[[routes]]\npath = \"/{name}\"\nupstream = \"{name}\"\ncompress = true\n",
            o.addr
        );
    }
    let gw = Gw::start(&body).await;
    let get_ae = |path: &str, ae: &str| get_with(path, "accept-encoding", ae);
    for (ae, coding) in [
        ("gzip", "gzip"),
        ("gzip, br", "br"),
        ("gzip, deflate, br, zstd", "zstd"),
    ] {
        let r = send(gw.addr, get_ae("/html", ae)).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-encoding"), coding, "{ae}");
        assert_eq!(r.header("vary"), "Accept-Encoding");
        assert_eq!(r.header("content-length"), "");
        assert_eq!(r.header("etag"), "W/\"v1\"");
        let bytes = r.body.clone().unwrap();
        assert!(
            bytes.len() < page.len() / 10,
            "{coding}: {} bytes",
            bytes.len()
        );
        let plain = match coding {
            "gzip" => {
                let mut s = String::new();
                std::io::Read::read_to_string(
                    &mut flate2::read::GzDecoder::new(&bytes[..]),
                    &mut s,
                )
                .unwrap();
                s
            }
            "br" => {
                let mut s = String::new();
                std::io::Read::read_to_string(
                    &mut brotli::Decompressor::new(&bytes[..], 4096),
                    &mut s,
                )
                .unwrap();
                s
            }
            _ => String::from_utf8(zstd::decode_all(&bytes[..]).unwrap()).unwrap(),
        };
        assert_eq!(plain, page, "{coding}");
    }
    // No Accept-Encoding: as it is, but Vary says it could differ.
    let r = send(gw.addr, get("/html")).await;
    assert_eq!(
        (r.header("content-encoding"), r.header("vary")),
        ("", "Accept-Encoding")
    );
    assert_eq!(r.text(), page);
    // Never twice, never against no-transform, not images, not tiny.
    for (path, want) in [("/gz", "gzip"), ("/nt", ""), ("/png", ""), ("/small", "")] {
        let r = send(gw.addr, get_ae(path, "gzip, br")).await;
        assert_eq!(r.header("content-encoding"), want, "{path}");
    }
    let r = send(gw.addr, get_ae("/gz", "gzip")).await;
    assert_eq!(r.text(), "not really gzip");
    gw.stop().await;
}

/// A route's `allow` and `deny` lists (nginx's allow/deny): 403
/// `access_denied` on the real client address; `deny = ["all"]` blocks a
/// path for everyone (WordPress's xmlrpc.php).
#[tokio::test]
async fn allow_and_deny_lists_on_the_client_address() {
    let o = Origin::start(Script::Ok("in".into())).await.unwrap();
    let gw = Gw::start(&format!(
        "[upstreams.app]\nservers = [\"{}\"]\n[[routes]]\npath = \"/xmlrpc.php\"\nupstream = \"app\"\ndeny = [\"all\"]\n[[routes]]\npath = \"/admin\"\nupstream = \"app\"\nallow = [\"127.0.0.5\", \"10.0.0.0/8\"]\n[[routes]]\nupstream = \"app\"\ndeny = [\"127.0.0.6\"]\n",
        o.addr
    ))
    .await;
    async fn from(ip: &str, addr: std::net::SocketAddr, path: &str) -> u16 {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(format!("{ip}:0").parse().unwrap()).unwrap();
        let mut s = sock.connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out[9..12].parse().unwrap()
    }
    for (ip, path, want) in [
        ("127.0.0.5", "/xmlrpc.php", 403),
        ("127.0.0.5", "/admin", 200),
        ("127.0.0.7", "/admin", 403),
        ("127.0.0.7", "/", 200),
        ("127.0.0.6", "/", 403),
    ] {
        assert_eq!(from(ip, gw.addr, path).await, want, "{ip} {path}");
    }
    let r = send(gw.addr, get("/xmlrpc.php")).await;
    assert_eq!(r.status, 403);
    assert!(
        r.header("proxy-status")
            .starts_with("baton; error=http_request_denied"),
        "{}",
        r.header("proxy-status")
    );
    let line = gw.access(&r.request_id()).await;
    assert_eq!(line["cause"], "access_denied");
    gw.stop().await;
}

/// Redirect routes (nginx's `return 301 https://...$request_uri`): no
/// upstream, `Location` from a template, 301 unless told.
#[tokio::test]
async fn redirect_routes_answer_without_an_upstream() {
    let o = Origin::start(Script::Ok("site".into())).await.unwrap();
    let gw = Gw::start(&format!(
        "[upstreams.app]\nservers = [\"{}\"]\n[[routes]]\nhost = \"old.example.com\"\nredirect = \"https://example.com{{uri}}\"\n[[routes]]\nhost = \"www.example.com\"\nredirect = \"{{scheme}}://example.com{{path}}\"\nredirect_status = 308\n[[routes]]\nhost = \"example.com\"\nupstream = \"app\"\n",
        o.addr
    ))
    .await;
    let r = send(gw.addr, get_with("/a/b?c=1", "host", "old.example.com")).await;
    assert_eq!(
        (r.status, r.header("location")),
        (301, "https://example.com/a/b?c=1")
    );
    let r = send(gw.addr, get_with("/a/b?c=1", "host", "www.example.com")).await;
    assert_eq!(
        (r.status, r.header("location")),
        (308, "http://example.com/a/b")
    );
    let r = send(gw.addr, get_with("/", "host", "example.com")).await;
    assert_eq!(r.text(), "site");
    let line = gw
        .access(
            &send(gw.addr, get_with("/x", "host", "old.example.com"))
                .await
                .request_id(),
        )
        .await;
    assert_eq!(line["status"], 301);
    gw.stop().await;
    // Mistakes are named.
    let e = baton::config::parse(
        &format!(
            "{}[[routes]]\nhost = \"a.test\"\nredirect = \"https://b.test{{url}}\"\n",
            one_route(o.addr)
        ),
        "baton.toml",
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("routes[1].redirect: unknown placeholder {url}"),
        "{e}"
    );
}

/// HPACK's Huffman code (RFC 7541, Appendix B) for the symbols of
/// `x-request-id` and of request IDs in hex: (symbol, bits, code).
const HUFFMAN: &[(u8, u32, u32)] = &[
    (b'-', 6, 0b010110),
    (b'0', 5, 0b00000),
    (b'1', 5, 0b00001),
    (b'2', 5, 0b00010),
    (b'3', 6, 0b011001),
    (b'4', 6, 0b011010),
    (b'5', 6, 0b011011),
    (b'6', 6, 0b011100),
    (b'7', 6, 0b011101),
    (b'8', 6, 0b011110),
    (b'9', 6, 0b011111),
    (b'a', 5, 0b00011),
    (b'b', 6, 0b100011),
    (b'c', 5, 0b00100),
    (b'd', 6, 0b100100),
    (b'e', 5, 0b00101),
    (b'f', 6, 0b100101),
    (b'i', 5, 0b00110),
    (b'q', 7, 0b1110110),
    (b'r', 6, 0b101100),
    (b's', 5, 0b01000),
    (b't', 5, 0b01001),
    (b'u', 6, 0b101101),
    (b'x', 7, 0b1111001),
];

/// A Huffman-coded string, when all its symbols are in [`HUFFMAN`].
fn huffman(b: &[u8]) -> Option<Vec<u8>> {
    let (mut code, mut bits, mut out) = (0u32, 0u32, Vec::new());
    for bit in b
        .iter()
        .flat_map(|x| (0..8).rev().map(move |i| (x >> i) & 1))
    {
        code = code << 1 | u32::from(bit);
        bits += 1;
        if let Some(s) = HUFFMAN.iter().find(|h| h.1 == bits && h.2 == code) {
            out.push(s.0);
            (code, bits) = (0, 0);
        } else if bits > 7 {
            return None;
        }
    }
    // The rest is padding: fewer than 8 bits, all ones.
    (code == (1 << bits) - 1).then_some(out)
}

/// An HPACK integer with a `bits`-bit prefix (RFC 7541 §5.1).
fn hpack_int(b: &[u8], at: &mut usize, bits: u32) -> usize {
    let max = (1usize << bits) - 1;
    let mut v = usize::from(b[*at]) & max;
    *at += 1;
    if v == max {
        let mut shift = 0;
        loop {
            let c = b[*at];
            *at += 1;
            v += usize::from(c & 0x7f) << shift;
            shift += 7;
            if c & 0x80 == 0 {
                break;
            }
        }
    }
    v
}

/// An HPACK string literal (§5.2), its Huffman coding undone when
/// [`huffman`] can.
fn hpack_str(b: &[u8], at: &mut usize) -> Option<Vec<u8>> {
    let coded = b[*at] & 0x80 != 0;
    let len = hpack_int(b, at, 7);
    let s = &b[*at..*at + len];
    *at += len;
    if coded { huffman(s) } else { Some(s.to_vec()) }
}

/// An HPACK block's representations in order (§6): the kind, and for a
/// literal its new name (if not indexed) and its value.
type Field = (&'static str, Option<Vec<u8>>, Option<Vec<u8>>);
fn hpack_fields(b: &[u8]) -> Vec<Field> {
    let (mut at, mut fields) = (0, Vec::new());
    while at < b.len() {
        let (kind, bits) = match b[at] {
            f if f & 0x80 != 0 => ("indexed", 7),
            f if f & 0xc0 == 0x40 => ("incremental indexing", 6),
            f if f & 0xe0 == 0x20 => ("table size update", 5),
            f if f & 0xf0 == 0x10 => ("never indexed", 4),
            _ => ("without indexing", 4),
        };
        let index = hpack_int(b, &mut at, bits);
        if matches!(kind, "indexed" | "table size update") {
            fields.push((kind, None, None));
            continue;
        }
        let name = if index == 0 {
            hpack_str(b, &mut at)
        } else {
            None
        };
        fields.push((kind, name, hpack_str(b, &mut at)));
    }
    fields
}

#[tokio::test]
async fn http2_responses_send_the_request_id_never_indexed() {
    // A request ID is new in every response: in HPACK's dynamic table it
    // would only push out fields that repeat (and h2's encoder walked the
    // name's earlier values to insert it each time). Baton's own ID and a
    // client's go as literals never indexed; nothing else does.
    let o = Origin::start(Script::Echo).await.unwrap();
    let gw = Gw::start(&route("app", &[o.addr.to_string()], "")).await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    // GET / (static table), :authority "t" without indexing; stream 3
    // also carries the client's own ID.
    let get = [0x82, 0x86, 0x84, 0x01, 0x01, b't'];
    let own = [&get[..], &[0x00, 12], b"x-request-id", &[8], b"0123-abc"].concat();
    let (settings, headers) = (4, 1);
    s.write_all(
        &[
            &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
            &h2_frame(settings, 0, 0, &[]),
            &h2_frame(headers, 0x5, 1, &get),
            &h2_frame(headers, 0x5, 3, &own),
            &h2_frame(headers, 0x5, 5, &get),
        ]
        .concat(),
    )
    .await
    .unwrap();
    let (mut wire, mut buf) = (Vec::new(), [0u8; 16384]);
    let blocks = loop {
        let blocks: Vec<(u32, Vec<u8>)> = h2_frames(&wire)
            .into_iter()
            .filter(|f| f.0 == headers)
            .map(|f| (f.2, f.3))
            .collect();
        if blocks.len() == 3 {
            break blocks;
        }
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("three responses within 5 s")
            .unwrap();
        assert!(n > 0, "closed after {:?}", h2_frames(&wire));
        wire.extend_from_slice(&buf[..n]);
    };
    let mut ids = Vec::new();
    for (stream, block) in blocks {
        let fields = hpack_fields(&block);
        let never: Vec<&Field> = fields.iter().filter(|f| f.0 == "never indexed").collect();
        assert_eq!(never.len(), 1, "stream {stream}: {fields:?}");
        assert_eq!(
            never[0].1.as_deref(),
            Some(&b"x-request-id"[..]),
            "{fields:?}"
        );
        let id = never[0].2.clone().expect("an ID of hex digits");
        if stream == 3 {
            assert_eq!(id, b"0123-abc");
        } else {
            assert_eq!(id.len(), 16, "{:?}", String::from_utf8_lossy(&id));
            ids.push(id);
        }
    }
    assert_ne!(ids[0], ids[1], "each request its own ID");
}
