//! Incidents: opened and closed by failure bursts, kept in SQLite across
//! restarts, alerted to a webhook and a command; a corrupt store or a
//! full disk (a small tmpfs) is told and the gateway serves on.

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

/// A loopback webhook receiver: records each POST body, answers 200.
async fn webhook() -> (std::net::SocketAddr, Arc<Mutex<Vec<Value>>>) {
    webhook_on(None).await
}

/// The same over TLS when given a server config.
async fn webhook_on(
    tls: Option<Arc<rustls::ServerConfig>>,
) -> (std::net::SocketAddr, Arc<Mutex<Vec<Value>>>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let g = g.clone();
            match &tls {
                None => drop(tokio::spawn(receive(s, g))),
                Some(cfg) => {
                    let acc = tokio_rustls::TlsAcceptor::from(cfg.clone());
                    tokio::spawn(async move {
                        if let Ok(s) = acc.accept(s).await {
                            receive(s, g).await
                        }
                    });
                }
            }
        }
    });
    (addr, got)
}

/// Reads one POST, records its JSON body, answers 200.
async fn receive<S>(mut s: S, g: Arc<Mutex<Vec<Value>>>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(i) = text.find("\r\n\r\n") {
            let len: usize = text[..i]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if buf.len() >= i + 4 + len {
                let body = &buf[i + 4..i + 4 + len];
                g.lock()
                    .unwrap()
                    .push(serde_json::from_slice(body).unwrap());
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                    .await;
                let _ = s.shutdown().await;
                return;
            }
        }
    }
}

async fn wait_for(got: &Arc<Mutex<Vec<Value>>>, event: &str) -> Value {
    for _ in 0..200 {
        if let Some(v) = got.lock().unwrap().iter().find(|v| v["event"] == event) {
            return v.clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no {event} alert; got {:?}", got.lock().unwrap());
}

fn baton(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failure_burst_opens_and_closes_an_incident_recorded_and_alerted() {
    let (hook, got) = webhook().await;
    let data = tempfile::tempdir().unwrap();
    let d = data.path().display();
    let ok = Origin::start(Script::Ok("fine".into())).await.unwrap();
    let body = format!(
        "[incidents]\ndir = \"{d}/store\"\nerror_rate = 0.5\nmin_requests = 3\nwindow = \"2s\"\nrecover_after = \"2s\"\n\n[alerts]\nwebhook = \"http://{hook}/hook\"\ncommand = \"cat > {d}/alert-$BATON_EVENT.json\"\n\n[upstreams.app]\nservers = [\"{}\"]\nretries = 0\n[upstreams.ok]\nservers = [\"{}\"]\n\n[[routes]]\npath = \"/ok\"\nupstream = \"ok\"\n[[routes]]\nupstream = \"app\"\n",
        refusing_addr(),
        ok.addr
    );
    let gw = Gw::start(&body).await;
    let mut ids = Vec::new();
    for _ in 0..6 {
        let r = send(gw.addr, get("/checkout")).await;
        assert_eq!(r.status, 502);
        ids.push(r.request_id());
        assert_eq!(send(gw.addr, get("/ok")).await.status, 200);
    }
    let opened = wait_for(&got, "incident_opened").await;
    let i = &opened["incident"];
    assert_eq!(i["upstream"], "app");
    assert!(
        i["reason"]
            .as_str()
            .unwrap()
            .ends_with("requests failed in 2s"),
        "{i}"
    );
    assert!(
        i["causes"]["connection_refused"].as_u64().unwrap() >= 3,
        "{i}"
    );
    let sample = i["samples"][0]["request_id"].as_str().unwrap().to_string();
    assert!(ids.contains(&sample), "{sample} in {ids:?}");
    assert_eq!(i["samples"][0]["cause"], "connection_refused");
    // With the sample's failure log line, as baton wrote it.
    let line: Value = serde_json::from_str(i["samples"][0]["lines"][0].as_str().unwrap()).unwrap();
    assert_eq!(line["request_id"], sample.as_str());
    assert_eq!(line["cause"], "connection_refused");
    assert_eq!(line["upstream"], "app");
    // The healthy upstream opened nothing.
    assert!(
        got.lock()
            .unwrap()
            .iter()
            .all(|v| v["incident"]["upstream"] == "app")
    );
    // Quiet: the incident closes after recover_after.
    let closed = wait_for(&got, "incident_closed").await;
    assert_eq!(closed["incident"]["id"], i["id"]);
    assert!(closed["incident"]["ended"].as_i64().is_some());
    assert_eq!(closed["incident"]["failures"], 6);
    // The command hook got the same JSON on stdin.
    let mut cmd = None;
    for _ in 0..100 {
        if let Ok(s) = std::fs::read_to_string(data.path().join("alert-incident_closed.json"))
            && !s.is_empty()
        {
            cmd = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cmd: Value = serde_json::from_str(&cmd.expect("the command ran")).unwrap();
    assert_eq!(cmd["event"], "incident_closed");
    gw.stop().await;

    // The store survives the gateway: list it and write the report.
    let cfg = data.path().join("baton.toml");
    std::fs::write(&cfg, &body).unwrap();
    let cfg_s = cfg.to_str().unwrap().to_string();
    let (code, out, err) = tokio::task::spawn_blocking({
        let c = cfg_s.clone();
        move || baton(&["incidents", "--config", &c])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    let line = out.lines().nth(1).unwrap();
    assert!(
        line.starts_with(&format!("{:>4}  app ", i["id"].as_i64().unwrap())),
        "{out}"
    );
    assert!(line.contains("      6  "), "{out}");
    let prefix = data.path().join("report");
    let (code, _, err) = tokio::task::spawn_blocking({
        let (c, p) = (cfg_s.clone(), prefix.to_str().unwrap().to_string());
        let id = i["id"].to_string();
        move || baton(&["report", &id, "--config", &c, "--out", &p])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    let md = std::fs::read_to_string(prefix.with_extension("md")).unwrap();
    assert!(
        md.starts_with(&format!("# Incident #{} on upstream `app`\n", i["id"])),
        "{md}"
    );
    assert!(
        md.contains("| `connection_refused` | 6 | `connection_refused` |"),
        "{md}"
    );
    assert!(md.contains(&format!("| `{sample}` |")), "{md}");
    assert!(
        md.contains("Their failure log lines (the first five):\n\n```\n{\""),
        "{md}"
    );
    assert!(md.contains("## For your hosting provider"), "{md}");
    let html = std::fs::read_to_string(prefix.with_extension("html")).unwrap();
    assert!(html.starts_with("<!doctype html>"), "{html}");
    assert!(html.contains("<td>connection_refused</td>"), "{html}");
    assert!(html.contains("<pre>{&quot;"), "{html}");

    // A restarted gateway keeps counting from the same store.
    let gw = Gw::start(&body).await;
    for _ in 0..6 {
        send(gw.addr, get("/again")).await;
    }
    let again = {
        let mut found = None;
        for _ in 0..200 {
            if let Some(v) = got
                .lock()
                .unwrap()
                .iter()
                .filter(|v| v["event"] == "incident_opened")
                .nth(1)
            {
                found = Some(v.clone());
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        found.expect("a second incident")
    };
    assert_eq!(
        again["incident"]["id"].as_i64().unwrap(),
        i["id"].as_i64().unwrap() + 1
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_store_is_reported_and_the_gateway_serves_on() {
    let data = tempfile::tempdir().unwrap();
    let store = data.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    std::fs::write(store.join("incidents.db"), vec![0x42u8; 8192]).unwrap();
    let ok = Origin::start(Script::Ok("fine".into())).await.unwrap();
    let cfg = data.path().join("baton.toml");
    let (addr, mut child) = serve_child(
        data.path(),
        &format!(
            "[log]\naccess = \"off\"\nerrors = \"stderr\"\n[incidents]\ndir = \"{}\"\n[upstreams.ok]\nservers = [\"{}\"]\n[[routes]]\nupstream = \"ok\"\n",
            store.display(),
            ok.addr
        ),
        Stdio::piped(),
    )
    .await;
    assert_eq!(send(addr, get("/")).await.status, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(send(addr, get("/")).await.status, 200, "still serving");
    let mut c = child.take();
    c.kill().unwrap();
    let err = String::from_utf8_lossy(&c.wait_with_output().unwrap().stderr).to_string();
    let line = err
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["target"] == "baton::incidents")
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        line["msg"].as_str().unwrap().starts_with(
            "incident store unavailable: incidents are detected and alerted but not recorded"
        ),
        "{line}"
    );
    assert!(
        line["error"]
            .as_str()
            .unwrap()
            .contains("file is not a database"),
        "{line}"
    );
    let cfg_s = cfg.to_str().unwrap().to_string();
    let (code, _, err) =
        tokio::task::spawn_blocking(move || baton(&["incidents", "--config", &cfg_s]))
            .await
            .unwrap();
    assert_eq!(code, 2);
    assert!(
        err.contains("the store cannot be read: file is not a database"),
        "{err}"
    );
}

/// A tmpfs of `size` mounted on a fresh directory, unmounted when dropped.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let d = tempfile::tempdir().unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(d.path())
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs (the suite runs as root)");
        Tmpfs(d)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_is_reported_the_gateway_serves_on_and_the_incident_is_recorded_later() {
    let (hook, got) = webhook().await;
    let disk = Tmpfs::mount("512k");
    let store = disk.0.path().join("store");
    let data = tempfile::tempdir().unwrap();
    let ok = Origin::start(Script::Ok("fine".into())).await.unwrap();
    let cfg = data.path().join("baton.toml");
    let (addr, mut child) = serve_child(
        data.path(),
        &format!(
            "[log]\naccess = \"off\"\nerrors = \"off\"\n[incidents]\ndir = \"{}\"\nerror_rate = 0.5\nmin_requests = 3\nwindow = \"2s\"\nrecover_after = \"2s\"\n[alerts]\nwebhook = \"http://{hook}/hook\"\n[upstreams.app]\nservers = [\"{}\"]\nretries = 0\n[upstreams.ok]\nservers = [\"{}\"]\n[[routes]]\npath = \"/ok\"\nupstream = \"ok\"\n[[routes]]\nupstream = \"app\"\n",
            store.display(),
            refusing_addr(),
            ok.addr
        ),
        Stdio::piped(),
    )
    .await;
    // The log, read as it comes.
    let log = Arc::new(Mutex::new(Vec::<Value>::new()));
    let stderr = child.0.as_mut().unwrap().stderr.take().unwrap();
    std::thread::spawn({
        let log = log.clone();
        move || {
            use std::io::BufRead;
            for l in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if let Ok(v) = serde_json::from_str::<Value>(&l) {
                    log.lock().unwrap().push(v);
                }
            }
        }
    });
    let logged = |msg: &'static str| {
        let log = log.clone();
        async move {
            for _ in 0..200 {
                if let Some(v) = log
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|v| v["msg"].as_str().is_some_and(|m| m.starts_with(msg)))
                {
                    return v.clone();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("no {msg:?} in {:?}", log.lock().unwrap());
        }
    };
    // The store is made at start; then the disk fills up.
    for _ in 0..100 {
        if store.join("incidents.db").exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let filler = disk.0.path().join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 4096];
        let e = loop {
            if let Err(e) = f.write_all(&block) {
                break e;
            }
        };
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
    }
    for _ in 0..6 {
        assert_eq!(send(addr, get("/checkout")).await.status, 502);
    }
    let opened = wait_for(&got, "incident_opened").await;
    assert_eq!(opened["incident"]["id"], 0, "not recorded: {opened}");
    let err = logged("cannot record incidents").await;
    assert_eq!(
        err["msg"],
        "cannot record incidents: they are still detected, alerted and shown on the dashboard (id 0); free space or fix permissions in the directory, baton tries again at each change"
    );
    assert_eq!(err["error"], "database or disk is full", "{err}");
    assert_eq!(err["dir"], store.display().to_string());
    assert_eq!(send(addr, get("/ok")).await.text(), "fine", "still serving");
    // Space again: the incident is recorded when it closes.
    std::fs::remove_file(&filler).unwrap();
    let closed = wait_for(&got, "incident_closed").await;
    let id = closed["incident"]["id"].as_i64().unwrap();
    assert!(id > 0, "{closed}");
    logged("incident store writable again").await;
    assert_eq!(
        log.lock()
            .unwrap()
            .iter()
            .filter(|v| v["msg"]
                .as_str()
                .is_some_and(|m| m.starts_with("cannot record")))
            .count(),
        1,
        "logged once"
    );
    child.take().kill().unwrap();
    let cfg_s = cfg.to_str().unwrap().to_string();
    let (code, out, err) =
        tokio::task::spawn_blocking(move || baton(&["incidents", "--config", &cfg_s, "--json"]))
            .await
            .unwrap();
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["incidents"][0]["id"], id, "{v}");
    assert_eq!(v["incidents"][0]["failures"], 6, "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_https_webhook_with_a_private_ca_gets_the_alert() {
    // A certificate for 127.0.0.1, trusted through `webhook_ca` only. It
    // opens at 4 requests, so all 4 are in the alert.
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("hooks-ca.pem");
    std::fs::write(&ca, ck.cert.pem()).unwrap();
    let server = tls_server(ck.cert.der().clone(), ck.signing_key.serialize_der());
    let (hook, got) = webhook_on(Some(server)).await;
    let gw = Gw::start(&format!(
        "[incidents]\ndir = \"{}/store\"\nerror_rate = 0.5\nmin_requests = 4\nwindow = \"2s\"\n[alerts]\nwebhook = \"https://{hook}/hook/T0000/SECRET\"\nwebhook_ca = \"{}\"\nformat = \"slack\"\n[upstreams.app]\nservers = [\"{}\"]\nretries = 0\n[[routes]]\nupstream = \"app\"\n",
        dir.path().display(),
        ca.display(),
        refusing_addr()
    ))
    .await;
    for _ in 0..4 {
        assert_eq!(send(gw.addr, get("/pay")).await.status, 502);
    }
    let mut text = None;
    for _ in 0..200 {
        if let Some(v) = got.lock().unwrap().first() {
            text = Some(v["text"].as_str().unwrap().to_string());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = text.expect("the alert reached the https webhook");
    assert!(
        text.starts_with(":rotating_light: baton: incident #1 opened on upstream *app*: "),
        "{text}"
    );
    assert!(text.ends_with("causes: connection_refused x4"), "{text}");
    // The dashboard's config shows the webhook without its secret path.
    let state = send(gw.admin, get("/api/state")).await.json();
    assert_eq!(
        state["config"]["alerts"]["webhook"],
        format!("https://{hook}/…")
    );
    let toml = state["config_toml"].as_str().unwrap();
    assert!(
        toml.contains(&format!("webhook = \"https://{hook}/…\"")),
        "{toml}"
    );
    assert!(!toml.contains("SECRET"), "{toml}");
    gw.stop().await;
}

/// An incident starts when its window first saw a failure, never before
/// the gateway started; the dashboard's line takes its counts from one
/// window and says what opened it.
#[tokio::test(flavor = "multi_thread")]
async fn an_incident_starts_at_its_first_failure_and_counts_from_one_window() {
    let dead = refusing_addr();
    let t0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let gw = Gw::start(&format!(
        "[incidents]\nerror_rate = 0.5\nmin_requests = 3\nwindow = \"10s\"\n[upstreams.app]\nservers = [\"{dead}\"]\n[[routes]]\nupstream = \"app\"\n"
    ))
    .await;
    for _ in 0..3 {
        assert_eq!(send(gw.addr, get("/")).await.status, 502);
    }
    let open = gw.open_incident().await;
    let started = open["started"].as_i64().expect("an incident opened");
    assert!(started >= t0, "started {started}, the gateway at {t0}");
    assert_eq!(open["reason"], "100% of 3 requests failed in 10s");
    assert_eq!(
        (open["requests"].as_u64(), open["failures"].as_u64()),
        (Some(3), Some(3))
    );
    let admin = gw.admin;
    let line = tokio::task::spawn_blocking(move || {
        let mut page = cdp::Browser::open(&format!("http://{admin}/dashboard"));
        page.wait("document.querySelector('#incident-list p') && document.querySelector('#incident-list p').textContent")
    })
    .await
    .unwrap();
    let line = line.as_str().unwrap().to_string();
    assert!(
        line.starts_with("app since ") || line.contains(" app since "),
        "{line}"
    );
    assert!(
        line.ends_with(": 3 of 3 requests failed (connection_refused ×3); opened on 100% of 3 requests failed in 10s"),
        "{line}"
    );
}

/// Incidents are recorded by default, in the state directory
/// (`$BATON_STATE_DIR` here; `/var/lib/baton` as root, else the XDG state
/// directory), so `baton incidents` works on a fresh install with no
/// `[incidents] dir`; `dir = "off"` records nothing.
#[tokio::test(flavor = "multi_thread")]
async fn incidents_are_recorded_by_default_and_listed_without_config() {
    let state = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("baton.toml");
    let port = refusing_addr().port();
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = [\"127.0.0.1:{port}\"]\n[log]\naccess = \"off\"\nerrors = \"off\"\n[incidents]\nerror_rate = 0.5\nmin_requests = 3\nwindow = \"2s\"\n[upstreams.app]\nservers = [\"{}\"]\n[[routes]]\nupstream = \"app\"\n",
            refusing_addr()
        ),
    )
    .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let _baton = peer(
        Command::new(env!("CARGO_BIN_EXE_baton"))
            .args(["serve", "--config"])
            .arg(&cfg)
            .env("BATON_STATE_DIR", state.path())
            .stderr(Stdio::null()),
        addr,
    )
    .await;
    for _ in 0..4 {
        assert_eq!(send(addr, get("/")).await.status, 502);
    }
    let list = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_baton"))
            .arg("incidents")
            .args(args)
            .env("BATON_STATE_DIR", state.path())
            .output()
            .unwrap()
    };
    let cfg_arg = cfg.to_str().unwrap().to_string();
    let mut out = String::new();
    for _ in 0..50 {
        let o = list(&["--config", &cfg_arg]);
        out = String::from_utf8_lossy(&o.stdout).into_owned();
        if out.contains(" app ") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(out.contains(" app "), "{out}");
    assert!(state.path().join("incidents").is_dir());
    // A fresh install: no config file at all, the same store.
    let o = list(&["--config", "/nonexistent/baton.toml"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(" app "),
        "{:?}",
        o
    );
    // "off": nothing recorded, and said so.
    let off = dir.path().join("off.toml");
    std::fs::write(&off, "[incidents]\ndir = \"off\"\n[upstreams.app]\nservers = [\"127.0.0.1:1\"]\n[[routes]]\nupstream = \"app\"\n").unwrap();
    let o = list(&["--config", off.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("dir = \"off\": incidents are not recorded"),
        "{:?}",
        o
    );
}
