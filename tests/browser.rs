//! The HTML error page in a real browser (Debian's headless Chromium): the
//! page renders, its script runs, and it retries by itself with a growing
//! delay (5 s, then 10 s, then 20 s), never in a tight loop.

use crate::support::*;

#[tokio::test]
async fn error_page_retries_itself_with_growing_delay_in_chromium() {
    let dead = refusing_addr();
    let gw = Gw::start(&format!(
        "[upstreams.app]\nservers = [\"{dead}\"]\n[[routes]]\nupstream = \"app\"\n"
    ))
    .await;
    let profile = tempfile::tempdir().unwrap();
    let url = gw.url("/checkout");
    let out = tokio::process::Command::new("chromium")
        .args(cdp::CHROMIUM_FLAGS)
        .args([
            // Virtual time: 25 s of page time pass without waiting for them.
            "--virtual-time-budget=25000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(&url)
        .output()
        .await
        .expect("chromium is installed (scripts/test.sh installs it)");
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        dom.contains("<h1>The site's application is not running</h1>"),
        "{dom}"
    );
    assert!(dom.contains("(retrying in "), "the script ran: {dom}");
    // Loads at 0 s, after 5 s and after 10 more, the next waiting 20 s; how
    // far virtual time gets through the reloads varies a little, so bound
    // it: at least one reload by itself, and no more than a doubling delay
    // allows (a fixed 5 s would give five or six, a tight loop hundreds).
    let access = gw.access_raw().await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let access = std::fs::read_to_string(&gw.access_log).unwrap_or(access);
    let loads = access
        .lines()
        .filter(|l| l.contains("\"/checkout\""))
        .count();
    assert!((2..=4).contains(&loads), "{loads} loads: {access}");
}
