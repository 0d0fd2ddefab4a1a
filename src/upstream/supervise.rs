//! Supervised backends: `[upstreams.NAME.process]`.
//!
//! Owns: starting a backend (PHP-FPM, gunicorn, node) in its own process
//! group as its configured user, waiting for it to be ready (its socket or
//! port accepts, or its health check passes), logging its output tagged by
//! upstream, noticing that it exited (with its exit code or signal, and
//! whether memory was the likely reason), restarting it with exponential
//! backoff, recognising a crash loop, restarting it when its health checks
//! fail for too long, and stopping it gracefully on shutdown.
//!
//! Requests read the supervisor's state through a `watch` channel: while a
//! backend (re)starts they wait (`start_wait`), then get `503
//! backend_restarting` with `Retry-After`, never a bare 502.
//!
//! Must not: decide retries (the attempt loop in `proxy` asks
//! [`Supervisor::restarting_since`] and decides).

use std::collections::VecDeque;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::watch;

use crate::config::{ProcessConfig, Readiness, RestartPolicy};
use crate::core::cause::Cause;
use crate::core::failure::Failure;

/// Where a backend is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Started, not ready yet.
    Starting,
    /// Ready: requests flow.
    Running,
    /// Exited; waiting before the next start.
    Backoff,
    /// Not running and not coming back (restart policy, or baton stopping).
    Stopped,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Running => "running",
            State::Backoff => "backoff",
            State::Stopped => "stopped",
        }
    }
}

/// What requests and the admin API see.
#[derive(Clone, Debug)]
pub struct Status {
    pub state: State,
    /// Counts the times the backend became ready.
    pub generation: u64,
    /// Starts since it was last ready (1 = the first try).
    pub attempt: u32,
    pub restarts: u64,
    pub pid: Option<u32>,
    pub crash_loop: bool,
    /// How the last run ended, in words.
    pub last_exit: Option<String>,
    /// When the next start is due (Backoff).
    pub next_start: Option<Instant>,
}

/// Is a health check passing for this upstream right now? (`None` when the
/// upstream has no active check.) Supplied by the gateway.
pub type HealthProbe = Arc<dyn Fn() -> Option<bool> + Send + Sync>;

/// One supervised backend.
pub struct Supervisor {
    pub name: Arc<str>,
    pub cfg: Arc<ProcessConfig>,
    status: watch::Sender<Status>,
    stop: watch::Sender<bool>,
    done: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The backend's last output lines, for the exit report.
    tail: Arc<Mutex<VecDeque<String>>>,
    probe: HealthProbe,
}

impl Supervisor {
    /// Starts the backend now (on the current runtime) and keeps it running.
    /// With `after`, that (older) supervisor is stopped first: the two
    /// would fight over the same socket or port.
    pub fn spawn(
        name: Arc<str>,
        cfg: Arc<ProcessConfig>,
        probe: HealthProbe,
        after: Option<Arc<Supervisor>>,
    ) -> Arc<Self> {
        let (status, _) = watch::channel(Status {
            state: State::Starting,
            generation: 0,
            attempt: 0,
            restarts: 0,
            pid: None,
            crash_loop: false,
            last_exit: None,
            next_start: None,
        });
        let (stop, _) = watch::channel(false);
        let s = Arc::new(Supervisor {
            name,
            cfg,
            status,
            stop,
            done: Mutex::new(None),
            tail: Arc::new(Mutex::new(VecDeque::new())),
            probe,
        });
        let me = s.clone();
        let task = tokio::spawn(async move {
            if let Some(old) = after {
                old.stop().await;
            }
            me.run().await
        });
        *s.done.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        s
    }

    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    pub fn generation(&self) -> u64 {
        self.status.borrow().generation
    }

    /// Waits until the backend is running (and, with `after`, has been
    /// ready again since generation `after`), until `since + start_wait`:
    /// a request waits at most `start_wait` for its backend in all, however
    /// many times it waits (before its first attempt, after a restart).
    pub async fn wait_ready(&self, after: Option<u64>, since: Instant) -> Result<(), Failure> {
        let ok = |s: &Status| s.state == State::Running && after.is_none_or(|g| s.generation > g);
        if ok(&self.status.borrow()) {
            return Ok(());
        }
        let left = (since + self.cfg.start_wait).saturating_duration_since(Instant::now());
        let mut rx = self.status.subscribe();
        let waited = tokio::time::timeout(left, async {
            loop {
                {
                    let s = rx.borrow_and_update();
                    if ok(&s) {
                        return true;
                    }
                    if s.state == State::Stopped {
                        return false;
                    }
                }
                if rx.changed().await.is_err() {
                    return false;
                }
            }
        })
        .await;
        match waited {
            Ok(true) => Ok(()),
            _ => Err(self.unavailable()),
        }
    }

    /// The failure requests get while the backend is not running.
    pub fn unavailable(&self) -> Failure {
        let s = self.status.borrow();
        let details = match s.state {
            State::Stopped => format!(
                "backend stopped{}",
                s.last_exit
                    .as_ref()
                    .map_or(String::new(), |e| format!(" ({e})"))
            ),
            State::Backoff if s.crash_loop => format!(
                "backend in a crash loop, next start in {}s (attempt {})",
                self.retry_after_secs(),
                s.attempt + 1
            ),
            State::Backoff => format!("backend restarting (attempt {})", s.attempt + 1),
            State::Starting if s.generation == 0 => {
                format!("backend starting (attempt {})", s.attempt.max(1))
            }
            _ => format!("backend restarting (attempt {})", s.attempt.max(1)),
        };
        Failure::with(Cause::BackendRestarting, details)
    }

    /// Seconds until the backend is expected back (for `Retry-After`).
    pub fn retry_after_secs(&self) -> u64 {
        let s = self.status.borrow();
        let until = s.next_start.map_or(Duration::ZERO, |t| {
            t.saturating_duration_since(Instant::now())
        });
        (until + Duration::from_secs(1)).as_secs().clamp(1, 300)
    }

    /// After a failed attempt: is the backend restarting (or restarted)
    /// since generation `gen`? Gives the supervisor a moment to notice a
    /// death that caused the failure (a killed process's socket fails a
    /// little before its exit is reaped).
    pub async fn restarting_since(&self, generation: u64) -> bool {
        let changed = |s: &Status| s.generation != generation || s.state != State::Running;
        if changed(&self.status.borrow()) {
            return true;
        }
        let mut rx = self.status.subscribe();
        tokio::time::timeout(Duration::from_millis(300), async {
            loop {
                if changed(&rx.borrow_and_update()) {
                    return true;
                }
                if rx.changed().await.is_err() {
                    return false;
                }
            }
        })
        .await
        .unwrap_or(false)
    }

    /// Stops the backend gracefully (stop_signal, then SIGKILL after
    /// stop_timeout) and waits for it.
    pub async fn stop(&self) {
        let _ = self.stop.send(true);
        let task = self.done.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = task {
            let _ = t.await;
        }
    }

    fn set(&self, f: impl FnOnce(&mut Status)) {
        self.status.send_modify(f);
    }

    async fn run(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        let mut exits: VecDeque<Instant> = VecDeque::new();
        let mut failures_in_a_row: u32 = 0;
        loop {
            if *stop.borrow() {
                break;
            }
            self.set(|s| {
                s.state = State::Starting;
                s.attempt += 1;
                s.next_start = None;
            });
            let started = Instant::now();
            let outcome = self.run_once(&mut stop).await;
            let Some((exit, success)) = outcome else {
                // Stopped by baton.
                break;
            };
            let ran = started.elapsed();
            exits.push_back(Instant::now());
            while exits
                .front()
                .is_some_and(|t| t.elapsed() > self.cfg.crash_loop_window)
            {
                exits.pop_front();
            }
            let crash_loop = exits.len() as u32 >= self.cfg.crash_loop_exits;
            let tail: Vec<String> = self
                .tail
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .cloned()
                .collect();
            let again = match self.cfg.restart {
                RestartPolicy::Always => true,
                RestartPolicy::OnFailure => !success,
                RestartPolicy::Never => false,
            };
            if ran > self.cfg.crash_loop_window {
                failures_in_a_row = 0;
            }
            failures_in_a_row += 1;
            let delay = if crash_loop {
                self.cfg.backoff_max
            } else {
                let exp = failures_in_a_row.saturating_sub(1).min(16);
                (self.cfg.backoff * 2u32.pow(exp)).min(self.cfg.backoff_max)
            };
            if crash_loop {
                tracing::error!(target: "baton::process", upstream = %self.name, exit = %exit, exits = exits.len(), window_s = self.cfg.crash_loop_window.as_secs(), last_output = %tail.join("\n"), "backend is in a crash loop: it keeps exiting soon after start; retrying every {}s", delay.as_secs());
            } else {
                tracing::error!(target: "baton::process", upstream = %self.name, exit = %exit, ran_ms = ran.as_millis() as u64, restart = again, last_output = %tail.join("\n"), "backend exited");
            }
            if !again {
                self.set(|s| {
                    s.state = State::Stopped;
                    s.pid = None;
                    s.last_exit = Some(exit);
                    s.crash_loop = crash_loop;
                });
                return;
            }
            let next = Instant::now() + delay;
            self.set(|s| {
                s.state = State::Backoff;
                s.pid = None;
                s.last_exit = Some(exit);
                s.crash_loop = crash_loop;
                s.restarts += 1;
                s.next_start = Some(next);
            });
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.changed() => break,
            }
        }
        self.set(|s| {
            s.state = State::Stopped;
            s.pid = None;
        });
    }

    /// One run of the backend: start, wait for readiness, wait for its end.
    /// `None` when baton stopped it; otherwise how it ended and whether that
    /// was a clean exit.
    async fn run_once(&self, stop: &mut watch::Receiver<bool>) -> Option<(String, bool)> {
        let mut child = match self.command().spawn() {
            Ok(c) => c,
            Err(e) => {
                return Some((format!("cannot start {:?}: {e}", self.cfg.command), false));
            }
        };
        let pid = child.id();
        tracing::info!(target: "baton::process", upstream = %self.name, pid, command = %self.cfg.command, "backend started");
        self.set(|s| s.pid = pid);
        for (out, stream) in [
            (child.stdout.take().map(Output::Out), "stdout"),
            (child.stderr.take().map(Output::Err), "stderr"),
        ] {
            if let Some(o) = out {
                tokio::spawn(pump(o, stream, self.name.clone(), self.tail.clone()));
            }
        }
        let memory = Arc::new(Mutex::new(MemorySample::default()));
        let sampler = pid.map(|p| tokio::spawn(sample_memory(p, memory.clone())));
        let ready_by = Instant::now() + self.cfg.ready_timeout;
        let mut ready = false;
        let mut unhealthy_since: Option<Instant> = None;
        let mut tick = tokio::time::interval(Duration::from_millis(25));
        let result = loop {
            tokio::select! {
                st = child.wait() => break Some(st),
                _ = stop.changed() => break None,
                _ = tick.tick() => {
                    if !ready {
                        if self.is_ready().await {
                            ready = true;
                            tick = tokio::time::interval(Duration::from_millis(500));
                            tracing::info!(target: "baton::process", upstream = %self.name, pid, "backend ready");
                            self.set(|s| { s.state = State::Running; s.generation += 1; s.attempt = 0; });
                        } else if Instant::now() > ready_by {
                            tracing::error!(target: "baton::process", upstream = %self.name, pid, timeout_s = self.cfg.ready_timeout.as_secs(), "backend not ready in time; restarting it");
                            break Some(Err(std::io::Error::other("not ready within ready_timeout")));
                        }
                    } else if let Some(limit) = self.cfg.unhealthy_restart {
                        match (self.probe)() {
                            Some(false) => {
                                let since = *unhealthy_since.get_or_insert_with(Instant::now);
                                if since.elapsed() >= limit {
                                    tracing::error!(target: "baton::process", upstream = %self.name, pid, after_s = limit.as_secs(), "health checks failing too long; restarting the backend");
                                    break Some(Err(std::io::Error::other("health checks failing")));
                                }
                            }
                            _ => unhealthy_since = None,
                        }
                    }
                }
            }
        };
        if let Some(s) = sampler {
            s.abort();
        }
        let pgid = pid.map(|p| p as i32);
        match result {
            None => {
                self.set(|s| s.state = State::Stopped);
                self.terminate(&mut child, pgid).await;
                tracing::info!(target: "baton::process", upstream = %self.name, "backend stopped");
                None
            }
            Some(Ok(st)) => {
                // The main process is gone: end what it left in its group
                // (orphaned workers would keep an old socket open).
                if let Some(g) = pgid {
                    kill_group(g, libc::SIGKILL);
                }
                let sample = *memory.lock().unwrap_or_else(|e| e.into_inner());
                Some((describe_exit(&st, &sample), st.success()))
            }
            Some(Err(why)) => {
                self.terminate(&mut child, pgid).await;
                Some((why.to_string(), false))
            }
        }
    }

    async fn terminate(&self, child: &mut tokio::process::Child, pgid: Option<i32>) {
        let Some(g) = pgid else {
            let _ = child.kill().await;
            return;
        };
        kill_group(g, self.cfg.stop_signal);
        if tokio::time::timeout(self.cfg.stop_timeout, child.wait())
            .await
            .is_err()
        {
            tracing::warn!(target: "baton::process", upstream = %self.name, "backend did not stop within stop_timeout; killing it");
        }
        kill_group(g, libc::SIGKILL);
        let _ = child.wait().await;
    }

    fn command(&self) -> tokio::process::Command {
        let c = &self.cfg;
        let mut cmd = tokio::process::Command::new(&c.command);
        cmd.args(&c.args)
            .envs(c.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: stopping it stops its workers too.
            .process_group(0)
            .kill_on_drop(true);
        if let Some(d) = &c.cwd {
            cmd.current_dir(d);
        }
        // As root, drop to the user and its primary group (std clears the
        // supplementary groups when it changes the uid).
        if let Some(u) = &c.user
            && nix::unistd::geteuid().is_root()
        {
            cmd.uid(u.uid).gid(u.gid);
        }
        cmd
    }

    async fn is_ready(&self) -> bool {
        let quick = Duration::from_millis(200);
        match &self.cfg.ready {
            Readiness::Socket(p) => matches!(
                tokio::time::timeout(quick, tokio::net::UnixStream::connect(p)).await,
                Ok(Ok(_))
            ),
            Readiness::Port(a) => matches!(
                tokio::time::timeout(quick, tokio::net::TcpStream::connect(a)).await,
                Ok(Ok(_))
            ),
            Readiness::Health => (self.probe)().unwrap_or(false),
        }
    }
}

enum Output {
    Out(tokio::process::ChildStdout),
    Err(tokio::process::ChildStderr),
}

/// Logs a backend's output line by line, tagged by upstream, keeping the
/// last 20 lines for the exit report.
async fn pump(o: Output, stream: &'static str, name: Arc<str>, tail: Arc<Mutex<VecDeque<String>>>) {
    let r: Box<dyn tokio::io::AsyncRead + Unpin + Send> = match o {
        Output::Out(s) => Box::new(s),
        Output::Err(s) => Box::new(s),
    };
    let mut lines = BufReader::new(r).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::info!(target: "baton::process", upstream = %name, stream, "{line}");
        let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
        if t.len() == 20 {
            t.pop_front();
        }
        t.push_back(line);
    }
}

/// The backend's memory, sampled while it runs, and the limit it lives under.
#[derive(Clone, Copy, Default, Debug)]
pub struct MemorySample {
    /// Resident memory of its whole process group, bytes.
    pub rss: u64,
    /// The cgroup's memory.max, or the machine's memory, bytes.
    pub limit: u64,
    /// The cgroup's oom_kill count when sampled.
    pub oom_kills: u64,
}

async fn sample_memory(pid: u32, out: Arc<Mutex<MemorySample>>) {
    loop {
        let s = MemorySample {
            rss: group_rss(pid as i32),
            limit: memory_limit(),
            oom_kills: oom_kills(),
        };
        *out.lock().unwrap_or_else(|e| e.into_inner()) = s;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Sum of VmRSS of every process in the group `pgid` (from /proc).
fn group_rss(pgid: i32) -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut total = 0;
    for e in dir.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command (which may hold spaces): state ppid pgrp ...
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let pgrp = rest
            .split_whitespace()
            .nth(2)
            .and_then(|v| v.parse::<i32>().ok());
        if pgrp != Some(pgid) {
            continue;
        }
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            total += status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or(0)
                * 1024;
        }
    }
    total
}

/// baton's cgroup directory (cgroup v2), which its children share.
fn cgroup_dir() -> Option<std::path::PathBuf> {
    let c = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = c.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(std::path::Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/')))
}

fn memory_limit() -> u64 {
    let cg = cgroup_dir()
        .and_then(|d| std::fs::read_to_string(d.join("memory.max")).ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    cg.unwrap_or_else(|| {
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .map_or(0, |kb| kb * 1024)
    })
}

fn oom_kills() -> u64 {
    cgroup_dir()
        .and_then(|d| std::fs::read_to_string(d.join("memory.events")).ok())
        .and_then(|e| {
            e.lines()
                .find_map(|l| l.strip_prefix("oom_kill "))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// How a run ended, in words, with the memory verdict for a SIGKILL.
pub fn describe_exit(st: &std::process::ExitStatus, m: &MemorySample) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = st.code() {
        return format!("exited with code {code}");
    }
    let sig = st.signal().unwrap_or(0);
    let name = signal_name(sig);
    if sig != libc::SIGKILL {
        return format!("killed by signal {sig} ({name})");
    }
    let now_ooms = oom_kills();
    if now_ooms > m.oom_kills {
        return format!(
            "killed by signal 9 (SIGKILL): the kernel's OOM killer ran (memory.events oom_kill {} -> {now_ooms}); likely killed for memory",
            m.oom_kills
        );
    }
    if m.limit > 0 && m.rss * 10 >= m.limit * 9 {
        return format!(
            "killed by signal 9 (SIGKILL) using {} MiB of a {} MiB limit: likely killed for memory",
            m.rss >> 20,
            m.limit >> 20
        );
    }
    format!(
        "killed by signal 9 (SIGKILL) from outside baton (last seen using {} MiB; not near its memory limit)",
        m.rss >> 20
    )
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGHUP => "SIGHUP",
        libc::SIGPIPE => "SIGPIPE",
        _ => "signal",
    }
}

fn kill_group(pgid: i32, sig: i32) {
    if let Ok(sig) = nix::sys::signal::Signal::try_from(sig) {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), sig);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn exits_are_described() {
        let m = MemorySample {
            rss: 950 << 20,
            limit: 1000 << 20,
            oom_kills: u64::MAX,
        };
        assert_eq!(
            describe_exit(&std::process::ExitStatus::from_raw(3 << 8), &m),
            "exited with code 3"
        );
        assert_eq!(
            describe_exit(&std::process::ExitStatus::from_raw(libc::SIGSEGV), &m),
            "killed by signal 11 (SIGSEGV)"
        );
        let killed = describe_exit(&std::process::ExitStatus::from_raw(libc::SIGKILL), &m);
        assert!(killed.contains("likely killed for memory"), "{killed}");
        let small = MemorySample { rss: 10 << 20, ..m };
        let outside = describe_exit(&std::process::ExitStatus::from_raw(libc::SIGKILL), &small);
        assert!(outside.contains("from outside baton"), "{outside}");
    }
}
