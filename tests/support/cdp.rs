//! Headless Chromium driven over the DevTools protocol on a pipe
//! (`--remote-debugging-pipe`: Chromium reads fd 3 and writes fd 4, one
//! JSON message per NUL), for tests that click. Blocking: call it from
//! `spawn_blocking`.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::FromRawFd;
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Headless Chromium without a sandbox (root), GPU or any traffic of its
/// own (no updates, sync or QUIC): the tests' one set of flags.
pub const CHROMIUM_FLAGS: [&str; 8] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
];

pub struct Browser {
    child: std::process::Child,
    tx: std::fs::File,
    rx: BufReader<std::fs::File>,
    next: u64,
    session: String,
    _profile: tempfile::TempDir,
}

fn pipe() -> (i32, i32) {
    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    (fds[0], fds[1])
}

impl Browser {
    /// Starts Chromium and opens `url` in a new page.
    pub fn open(url: &str) -> Browser {
        Browser::open_with(url, &[])
    }

    /// `open`, with more Chromium flags.
    pub fn open_with(url: &str, flags: &[String]) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let (to_chrome, ours_w) = pipe();
        let (ours_r, from_chrome) = pipe();
        let mut cmd = std::process::Command::new("chromium");
        cmd.args(CHROMIUM_FLAGS)
            .args(flags)
            .arg("--remote-debugging-pipe")
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        // SAFETY: only async-signal-safe calls between fork and exec. The
        // ends are first moved above 9 so that dup2 onto 3 and 4 cannot
        // overwrite one with the other.
        unsafe {
            cmd.pre_exec(move || {
                let a = libc::fcntl(to_chrome, libc::F_DUPFD, 10);
                let b = libc::fcntl(from_chrome, libc::F_DUPFD, 10);
                if a < 0 || b < 0 || libc::dup2(a, 3) < 0 || libc::dup2(b, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .expect("chromium is installed (scripts/test.sh installs it)");
        unsafe {
            libc::close(to_chrome);
            libc::close(from_chrome);
        }
        let mut b = Browser {
            child,
            tx: unsafe { std::fs::File::from_raw_fd(ours_w) },
            rx: BufReader::new(unsafe { std::fs::File::from_raw_fd(ours_r) }),
            next: 0,
            session: String::new(),
            _profile: profile,
        };
        let target = b.call("Target.createTarget", json!({ "url": url }));
        let attached = b.call(
            "Target.attachToTarget",
            json!({ "targetId": target["targetId"], "flatten": true }),
        );
        b.session = attached["sessionId"].as_str().unwrap().to_string();
        b
    }

    /// Sends one command (to the page once attached); returns its result.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let mut msg = json!({ "id": self.next, "method": method, "params": params });
        if !self.session.is_empty() {
            msg["sessionId"] = json!(self.session);
        }
        let mut bytes = msg.to_string().into_bytes();
        bytes.push(0);
        self.tx.write_all(&bytes).unwrap();
        loop {
            let mut buf = Vec::new();
            let n = self.rx.read_until(0, &mut buf).unwrap();
            assert!(n > 0, "chromium closed the pipe");
            buf.pop();
            let v: Value = serde_json::from_slice(&buf).unwrap();
            if v["id"] == self.next {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Evaluates `expr` in the page (promises awaited); returns its value.
    pub fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expr, "awaitPromise": true, "returnByValue": true }),
        );
        assert!(r.get("exceptionDetails").is_none(), "{expr}: {r}");
        r["result"]["value"].clone()
    }

    /// Evaluates `expr` until it is truthy (10 s at most); returns it.
    pub fn wait(&mut self, expr: &str) -> Value {
        let start = Instant::now();
        loop {
            let v = self.eval(expr);
            if !(v.is_null() || v == false || v == "" || v == 0) {
                return v;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "waited 10 s for {expr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
