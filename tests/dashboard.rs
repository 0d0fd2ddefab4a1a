//! The dashboard on the admin address, rendered by Debian's headless
//! Chromium; the state API behind it; the admin token.

use std::time::Duration;

use crate::support::*;

async fn chromium(args: &[&str], url: &str) -> (bool, String) {
    let profile = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new("chromium")
        .args(cdp::CHROMIUM_FLAGS)
        .args(args)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .output()
        .await
        .expect("chromium is installed (scripts/test.sh installs it)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_renders_upstreams_failures_and_incidents_in_chromium() {
    let ok = Origin::start(Script::Ok("fine".into())).await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let gw = Gw::start(&format!(
        "[incidents]\ndir = \"{}\"\nmin_requests = 3\nwindow = \"5s\"\n\n[upstreams.shop]\nservers = [\"{}\"]\nretries = 0\n[upstreams.web]\nservers = [\"{}\"]\n[[routes]]\npath = \"/shop\"\nupstream = \"shop\"\n[[routes]]\nupstream = \"web\"\n",
        data.path().display(),
        refusing_addr(),
        ok.addr
    ))
    .await;
    let mut failed_id = String::new();
    for _ in 0..5 {
        let r = send(gw.addr, get("/shop/cart")).await;
        assert_eq!(r.status, 502);
        failed_id = r.request_id();
        assert_eq!(send(gw.addr, get("/")).await.status, 200);
    }
    // The detector opens the incident within a second or two; its
    // once-a-second series point may have been taken while the last
    // requests were still running, so wait for the point after them too.
    for _ in 0..60 {
        let s = send(gw.admin, get("/api/state")).await.json();
        let last_failures = s["series"]
            .as_array()
            .and_then(|a| a.last())
            .map_or(0, |p| p["failures"].as_u64().unwrap_or(0));
        if !s["incidents_open"].as_array().unwrap().is_empty() && last_failures >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The series the charts start from: totals once a second.
    let s = send(gw.admin, get("/api/state")).await.json();
    let last = s["series"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["failures"], 5, "{last}");
    assert_eq!(last["causes"]["connection_refused"], 5, "{last}");
    let url = format!("http://{}/dashboard", gw.admin);
    let (ok_run, dom) = chromium(&["--virtual-time-budget=5000", "--dump-dom"], &url).await;
    assert!(
        dom.contains("■ connection_refused</span>"),
        "the chart's legend from the series: {dom}"
    );
    assert!(ok_run, "{dom}");
    // Rendered by the page's script from /api/state; read-only by default.
    assert!(dom.contains("<b>shop</b>"), "{dom}");
    assert!(dom.contains(" · read-only</span>"), "{dom}");
    assert!(!dom.contains("data-act=\"drain\""), "{dom}");
    assert!(dom.contains("<b>web</b>"), "{dom}");
    assert!(
        dom.contains(&format!("data-id=\"{failed_id}\"")),
        "the failure's request id: {dom}"
    );
    assert!(
        dom.contains("<td class=\"bad\">connection_refused</td>"),
        "{dom}"
    );
    assert!(
        dom.contains("connection_refused ×5"),
        "causes per upstream: {dom}"
    );
    assert!(
        dom.contains("on upstream") || dom.contains("<b>#1 shop</b>"),
        "the open incident: {dom}"
    );
    assert!(
        dom.contains("· down · 0 in flight") || dom.contains("· up · 0 in flight"),
        "server chips: {dom}"
    );
    // The full log line of a failure, as the page opens it.
    let r = send(gw.admin, get(&format!("/api/failure?id={failed_id}"))).await;
    let v = r.json();
    let line: serde_json::Value = serde_json::from_str(v["lines"][0].as_str().unwrap()).unwrap();
    assert_eq!(line["request_id"], failed_id.as_str());
    assert_eq!(line["cause"], "connection_refused");
    // A screenshot, as docs/dashboard.png was made.
    let shot = data.path().join("dashboard.png");
    let (ok_run, _) = chromium(
        &[
            "--virtual-time-budget=5000",
            "--window-size=1280,1100",
            &format!("--screenshot={}", shot.display()),
        ],
        &url,
    )
    .await;
    assert!(ok_run);
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 20_000,
        "{} bytes",
        png.len()
    );
    gw.stop().await;
}

#[tokio::test]
async fn admin_token_guards_the_admin_api() {
    // Off loopback without a token: refused at load time.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("baton.toml");
    std::fs::write(
        &cfg,
        "[server]\nlisten = [\"127.0.0.1:0\"]\nadmin = \"0.0.0.0:9901\"\n[upstreams.web]\nservers = [\"127.0.0.1:1\"]\n[[routes]]\nupstream = \"web\"\n",
    )
    .unwrap();
    let e = baton::config::load(&cfg).unwrap_err().to_string();
    assert!(
        e.contains(":3:9: server.admin: the admin API on 0.0.0.0:9901 is reachable off this machine without a token\n    fix: set server.admin_token"),
        "{e}"
    );
    // With a token: every admin request needs it.
    let (port, admin) = (refusing_addr().port(), refusing_addr());
    std::fs::write(
        &cfg,
        format!("[server]\nlisten = [\"127.0.0.1:{port}\"]\nadmin = \"{admin}\"\nadmin_token = \"s3cret\"\nadmin_hosts = [\"test.local\"]\n[log]\naccess = \"off\"\n[upstreams.web]\nservers = [\"127.0.0.1:1\"]\n[[routes]]\nupstream = \"web\"\n"),
    )
    .unwrap();
    let _baton = peer(
        std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
            .args(["serve", "--config"])
            .arg(&cfg)
            .stderr(std::process::Stdio::null()),
        admin,
    )
    .await;
    let r = send(admin, get("/api/state")).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.text(),
        "admin token required: Authorization: Bearer TOKEN, or ?token=TOKEN\n"
    );
    assert_eq!(send(admin, get("/metrics")).await.status, 401);
    let with_bearer = get_with("/api/state", "authorization", "Bearer s3cret");
    let r = send(admin, with_bearer).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["upstreams"][0]["name"], "web");
    // The running config as loaded, the token hidden.
    let toml = r.json()["config_toml"].as_str().unwrap().to_string();
    assert!(toml.contains("admin_token = \"(hidden)\""), "{toml}");
    assert!(toml.contains("servers = [\"127.0.0.1:1\"]"), "{toml}");
    assert!(!toml.contains("s3cret"), "{toml}");
    assert_eq!(
        send(admin, get("/dashboard?token=s3cret")).await.status,
        200
    );
}

#[tokio::test]
async fn status_page_says_whether_it_is_down_for_everyone_and_error_pages_link_it() {
    let ok = Origin::start(Script::Ok("fine".into())).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (addr, _baton) = serve_child(
        dir.path(),
        &format!(
            "status_page = \"/status\"\n[log]\naccess = \"off\"\n[upstreams.shop]\ndisplay_name = \"Online shop\"\nservers = [\"{}\"]\n[upstreams.shop.health]\npath = \"/\"\ninterval = \"200ms\"\n[upstreams.blog]\nservers = [\"{}\"]\n[upstreams.pay]\nservers = [\"{}\"]\nretries = 0\n[[routes]]\npath = \"/shop\"\nupstream = \"shop\"\n[[routes]]\npath = \"/pay\"\nupstream = \"pay\"\n[[routes]]\nupstream = \"blog\"\n",
            refusing_addr(),
            ok.addr,
            refusing_addr()
        ),
        std::process::Stdio::null(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let r = send(addr, get("/status")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("cache-control"), "no-store");
    let html = r.text();
    assert!(
        html.contains("<h1>Part of this site is down for everyone</h1>"),
        "{html}"
    );
    assert!(
        html.contains("<li class=\"down\"><b>Online shop</b>: not available"),
        "{html}"
    );
    assert!(
        html.contains("<li class=\"working\"><b>The rest of the site</b>: working</li>"),
        "{html}"
    );
    assert!(
        html.contains("<li class=\"working\"><b>/pay</b>: working</li>"),
        "no failures yet: {html}"
    );
    let json_req = get_with("/status", "accept", "application/json");
    let v = send(addr, json_req).await.json();
    assert_eq!(v["up"], false);
    let svc = |name: &str| {
        v["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(svc("Online shop")["up"], false, "{v}");
    assert_eq!(svc("Online shop")["state"], "down", "{v}");
    assert_eq!(svc("The rest of the site")["up"], true, "{v}");
    // Internal upstream names are never shown to visitors.
    for internal in ["shop", "blog", "pay"] {
        assert!(!html.contains(&format!("<b>{internal}</b>")), "{html}");
        assert!(!v.to_string().contains(&format!("\"{internal}\"")), "{v}");
    }
    // Its server accepts health-wise but every request fails: an incident
    // opens (the default thresholds, no [incidents] section) and the page
    // says that part is having problems, since when.
    // From its first failure the page says so (its server's last request
    // failed), before there are enough for an incident.
    assert_eq!(send(addr, get("/pay")).await.status, 502);
    let html = send(addr, get("/status")).await.text();
    assert!(
        html.contains("<li class=\"failing\"><b>/pay</b>: having problems</li>"),
        "{html}"
    );
    for _ in 0..5 {
        assert_eq!(send(addr, get("/pay")).await.status, 502);
    }
    let mut html = String::new();
    for _ in 0..40 {
        html = send(addr, get("/status")).await.text();
        if html.contains("having problems (since ") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        html.contains("<li class=\"failing\"><b>/pay</b>: having problems (since "),
        "{html}"
    );
    let checked = html.split("Checked ").nth(1).unwrap();
    assert!(checked.starts_with("20"), "wall-clock time: {checked}");
    // The error page of the down part links the status page.
    let html_req = get_with("/shop/cart", "accept", "text/html");
    let r = send(addr, html_req).await;
    assert_eq!(r.status, 503);
    assert!(
        r.text()
            .contains("<p><a href=\"/status\">Is it down for everyone? The site's status</a></p>"),
        "{}",
        r.text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_updates_while_failures_happen() {
    let gw = Gw::start(&format!(
        "[upstreams.shop]\nservers = [\"{}\"]\nretries = 0\nmax_concurrent = 4\n[[routes]]\nupstream = \"shop\"\n",
        refusing_addr()
    ))
    .await;
    let addr = gw.addr;
    // Failures keep coming while the page is open: 60 s of the page's
    // (virtual) time is 30 polls, each a real request to the admin API.
    let traffic = tokio::spawn(async move {
        loop {
            send(addr, get("/cart")).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let url = format!("http://{}/dashboard", gw.admin);
    let (ok_run, dom) = chromium(&["--virtual-time-budget=60000", "--dump-dom"], &url).await;
    traffic.abort();
    assert!(ok_run, "{dom}");
    let attr = |name: &str| -> u64 {
        let key = format!("{name}=\"");
        let i = dom.find(&key).unwrap_or_else(|| panic!("{name} in {dom}"));
        dom[i + key.len()..]
            .split('"')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(attr("data-polls") >= 2, "the page polled again: {dom}");
    assert!(
        attr("data-failures") > attr("data-first-failures"),
        "the failure count grew on the page"
    );
    assert!(dom.contains("queue: 0 waiting, limit 4"), "{dom}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_actions_drain_and_reload_when_configured_and_refuse_cross_site_posts() {
    let a = Origin::start(Script::Ok("a".into())).await.unwrap();
    let b = Origin::start(Script::Ok("b".into())).await.unwrap();
    let gw = Gw::start(&format!(
        "[server]\ndashboard_actions = true\n[upstreams.web]\nservers = [\"{}\", \"{}\"]\n[[routes]]\nupstream = \"web\"\n",
        a.addr, b.addr
    ))
    .await;
    let (admin, target) = (gw.admin, a.addr.to_string());
    // A page elsewhere cannot drive the admin API through a browser.
    for (name, value) in [
        ("origin", "http://evil.example"),
        ("sec-fetch-site", "cross-site"),
    ] {
        let mut req = get_with(&format!("/drain?server={target}"), name, value);
        *req.method_mut() = http::Method::POST;
        let r = send(admin, req).await;
        assert_eq!(r.status, 403, "{name}");
        assert_eq!(
            r.text(),
            "cross-site admin request refused: POST from the dashboard itself, or without Origin (curl)\n"
        );
    }
    let state = send(admin, get("/api/state")).await.json();
    assert_eq!(state["actions"], true);
    assert_eq!(state["upstreams"][0]["servers"][0]["draining"], false);
    // The operator clicks "drain" on the first server, then "reload".
    let said = tokio::task::spawn_blocking(move || {
        let mut page = cdp::Browser::open(&format!("http://{admin}/dashboard"));
        page.wait(&format!(
            "document.querySelector('button[data-act=drain][data-server=\"{target}\"]') !== null"
        ));
        page.eval(&format!(
            "document.querySelector('button[data-act=drain][data-server=\"{target}\"]').click()"
        ));
        let drained = page.wait("document.getElementById('said').textContent");
        page.wait(&format!(
            "document.querySelector('button[data-act=undrain][data-server=\"{target}\"]') !== null"
        ));
        page.eval("document.getElementById('reload').click()");
        let reloaded = page.wait(
            "document.getElementById('said').textContent.startsWith('config') && document.getElementById('said').textContent",
        );
        (drained, reloaded)
    })
    .await
    .unwrap();
    assert_eq!(said.0, format!("{}: draining, 0 in flight", a.addr));
    // The drain outlives the reload (a deploy in progress).
    assert_eq!(
        said.1,
        format!(
            "config reloaded: {}: still draining (POST /undrain to end it)",
            a.addr
        )
    );
    let r = send(admin, get(&format!("/drain?server={}", a.addr))).await;
    assert_eq!(r.json()["draining"], true);
    for _ in 0..4 {
        assert_eq!(send(gw.addr, get("/")).await.text(), "b");
    }
    gw.stop().await;
}

/// Without active checks a server's state still follows what its
/// requests say: one that refuses every request is not shown "up", even
/// though nothing may eject it (it is the last server).
#[tokio::test(flavor = "multi_thread")]
async fn a_server_whose_requests_fail_is_not_shown_up() {
    let dead = refusing_addr();
    let ok = Origin::start(Script::Ok("fine".into())).await.unwrap();
    let gw = Gw::start(&format!(
        "[upstreams.dead]\nservers = [\"{dead}\"]\n[upstreams.fine]\nservers = [\"{}\"]\n[[routes]]\npath = \"/dead\"\nupstream = \"dead\"\n[[routes]]\nupstream = \"fine\"\n",
        ok.addr
    ))
    .await;
    for _ in 0..3 {
        assert_eq!(send(gw.addr, get("/dead")).await.status, 502);
    }
    assert_eq!(send(gw.addr, get("/")).await.status, 200);
    let s = send(gw.admin, get("/api/state")).await.json();
    let failing = &s["upstreams"][0]["servers"][0];
    assert_eq!(failing["usable"], true, "the last server is never ejected");
    assert_eq!(
        failing["failing"],
        serde_json::json!({"in_a_row": 3, "last": "connection_refused"})
    );
    assert_eq!(
        s["upstreams"][1]["servers"][0]["failing"],
        serde_json::Value::Null
    );
    let admin = gw.admin;
    let chips = tokio::task::spawn_blocking(move || {
        let mut page = cdp::Browser::open(&format!("http://{admin}/dashboard"));
        page.wait(
            "document.querySelectorAll('.chip').length === 2 && [...document.querySelectorAll('.chip')].map(c => c.className + ': ' + c.textContent).join(' | ')",
        )
    })
    .await
    .unwrap();
    assert_eq!(
        chips,
        format!(
            "chip down: {dead} · failing: 3 in a row (connection_refused) · 0 in flight | chip up: {} · up · 0 in flight",
            ok.addr
        )
    );
}

/// When every part is down, the status page says the site is down, not
/// "part of" it; a part no route leads to is not listed.
#[tokio::test(flavor = "multi_thread")]
async fn the_status_page_says_whole_or_part_honestly() {
    let gw = Gw::start(&format!(
        "[server]\nstatus_page = \"/status\"\n[upstreams.app]\nservers = [\"{}\"]\n[upstreams.app.health]\npath = \"/\"\ninterval = \"200ms\"\n[upstreams.unrouted]\nservers = [\"{}\"]\n[[routes]]\nupstream = \"app\"\n",
        refusing_addr(),
        refusing_addr()
    ))
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let html = send(gw.addr, get("/status")).await.text();
    assert!(
        html.contains("<h1>This site is down for everyone</h1>"),
        "{html}"
    );
    assert!(
        html.contains("<li class=\"down\"><b>The site</b>: not available"),
        "{html}"
    );
    assert_eq!(html.matches("<li ").count(), 1, "{html}");
}

/// Requests baton refused on purpose (429, 413) are on the dashboard,
/// apart from the upstream's failures.
#[tokio::test(flavor = "multi_thread")]
async fn refused_requests_are_shown_apart_from_failures() {
    let ok = Origin::start(Script::Ok("fine".into())).await.unwrap();
    let gw = Gw::start(&format!(
        "[server]\nmax_body_bytes = 10\n[upstreams.app]\nservers = [\"{}\"]\n[[routes]]\nupstream = \"app\"\nrate_limit = \"1/s\"\nrate_limit_burst = 2\n",
        ok.addr
    ))
    .await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(send(gw.addr, get("/")).await.status);
    }
    assert_eq!(statuses, [200, 200, 429, 429]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut big = get("/");
    *big.body_mut() = http_body_util::Full::new(bytes::Bytes::from(vec![b'x'; 100]));
    *big.method_mut() = http::Method::POST;
    assert_eq!(send(gw.addr, big).await.status, 413);
    let s = send(gw.admin, get("/api/state")).await.json();
    let t = &s["upstreams"][0]["tally"];
    assert_eq!(t["failures"], 0, "{t}");
    assert_eq!(
        t["refused"],
        serde_json::json!({"rate_limited": 2, "request_body_too_large": 1}),
        "{t}"
    );
    let admin = gw.admin;
    let cell = tokio::task::spawn_blocking(move || {
        let mut page = cdp::Browser::open(&format!("http://{admin}/dashboard"));
        page.wait("document.querySelector('td.refused') && document.querySelector('td.refused').textContent")
    })
    .await
    .unwrap();
    assert_eq!(cell, "3 (rate_limited ×2, request_body_too_large ×1)");
}

/// At 1400 px wide no panel's text runs out of its panel (long config
/// paths, long event texts, long route names wrap instead).
#[tokio::test(flavor = "multi_thread")]
async fn no_panel_clips_its_text_at_1400_px() {
    let ok = Origin::start(Script::Ok("fine".into())).await.unwrap();
    let long = "a-rather-long-path-segment-that-does-not-break-anywhere-on-its-own";
    let gw = Gw::start(&format!(
        "[server]\ndashboard_actions = true\n[upstreams.application_backend_with_a_long_name]\nservers = [\"{}\"]\n[[routes]]\nhost = \"www.an-example-with-a-long-host-name.example.com\"\npath = \"/{long}/{long}\"\nupstream = \"application_backend_with_a_long_name\"\n",
        ok.addr
    ))
    .await;
    // A reload whose note is long: "What changed" gets a long line.
    let mut req = get("/reload");
    *req.method_mut() = http::Method::POST;
    assert_eq!(send(gw.admin, req).await.status, 200);
    let admin = gw.admin;
    let clipped = tokio::task::spawn_blocking(move || {
        let mut page = cdp::Browser::open(&format!("http://{admin}/dashboard"));
        page.call(
            "Emulation.setDeviceMetricsOverride",
            serde_json::json!({"width": 1400, "height": 900, "deviceScaleFactor": 1, "mobile": false}),
        );
        page.wait("document.querySelectorAll('#events tr').length > 0 && document.getElementById('config').textContent.length > 0 && document.querySelectorAll('#routes tr').length > 0");
        page.eval(
            "[...document.querySelectorAll('main section')].filter(s => s.offsetParent !== null && s.scrollWidth > s.clientWidth + 1).map(s => s.querySelector('h2').textContent)",
        )
    })
    .await
    .unwrap();
    assert_eq!(clipped, serde_json::json!([]));
}
