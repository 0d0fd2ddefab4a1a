//! `baton logs`: what broke, since when, how often, and the fix, read from
//! any proxy's logs.
//!
//! Owns: reading files (plain, `.gz`, stdin, `--follow`), joining the lines
//! that report one failure twice (an nginx error line and its access-log
//! 502; Apache's AH01102 and AH00898; baton's failure record and access
//! line), the summary, and its three renderings (text, `--json`,
//! `--report FILE.md`).
//! Must not: classify (that is [`formats`], onto the one [`Cause`] enum).

pub mod formats;

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

use crate::cli::term::{Paint, Progress};
use crate::core::cause::Cause;
use crate::core::clock::clock;
pub use formats::{Event, Kind, Parsed, Source};

/// One line worth reporting: a failure, an application's own error answer,
/// or an event.
#[derive(Clone, Debug)]
pub struct Entry {
    pub file: usize,
    pub line: usize,
    pub text: String,
    pub p: Parsed,
    /// For a line joined to the one that explains the same failure: that
    /// line's index in `entries`.
    pub joined: Option<usize>,
}

impl Entry {
    fn is_failure(&self) -> bool {
        matches!(self.p.kind, Kind::Failure { .. })
    }
    fn weak(&self) -> bool {
        matches!(self.p.kind, Kind::Failure { weak: true, .. })
    }
}

/// Everything read, ready to summarise.
#[derive(Default)]
pub struct Analysis {
    pub files: Vec<String>,
    pub lines: usize,
    pub entries: Vec<Entry>,
    /// Lines in no known format.
    pub unrecognised: usize,
    pub unrecognised_samples: Vec<(usize, usize, String)>,
    /// Per file: bytes read and the inode read from, where `--follow`
    /// carries on (a line written in between is not lost).
    pub read: Vec<(u64, u64)>,
    pub lines_in: Vec<usize>,
}

const SAMPLE_CHARS: usize = 400;

fn clip(s: &str) -> String {
    if s.len() <= SAMPLE_CHARS {
        return s.to_string();
    }
    let mut end = SAMPLE_CHARS;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The source a bare combined-format access line is attributed to.
pub fn hint_for(name: &str) -> Source {
    let n = name.to_ascii_lowercase();
    if n.contains("apache") || n.contains("httpd") {
        Source::Apache
    } else if n.contains("traefik") {
        Source::Traefik
    } else if n.contains("baton") {
        Source::Baton
    } else {
        Source::Nginx
    }
}

impl Analysis {
    /// Reads one line of file number `file`.
    pub fn add(&mut self, file: usize, line: usize, text: &str, hint: Source) -> Option<&Entry> {
        self.lines += 1;
        if text.trim().is_empty() {
            return None;
        }
        match formats::parse(text, hint) {
            None => {
                self.unrecognised += 1;
                if self.unrecognised_samples.len() < 10 {
                    self.unrecognised_samples.push((file, line, clip(text)));
                }
                None
            }
            Some(p) if p.kind == Kind::Fine => None,
            Some(p) => {
                self.entries.push(Entry {
                    file,
                    line,
                    text: clip(text.trim_end()),
                    p,
                    joined: None,
                });
                self.entries.last()
            }
        }
    }

    /// Joins each weak line (an access-log 5xx, a companion line) to the
    /// line of the same peer that explains the same failure: the same
    /// request ID, or within two seconds and for the same path. A joined
    /// line is not counted again; the explaining line takes its status.
    pub fn join(&mut self) {
        let mut by_id: HashMap<String, usize> = HashMap::new();
        // The explaining lines, twice (one pool for access lines, one for
        // companions: each explaining line takes at most one of each), by
        // source and path, by source for those without a path, and by
        // source alone; each sorted by time so a lookup is a range query
        // even in a burst of thousands of 502s a second.
        let mut pools: [Pools; 2] = Default::default();
        for (i, e) in self.entries.iter().enumerate() {
            if !e.is_failure() || e.weak() {
                continue;
            }
            if let Some(id) = &e.p.request_id {
                by_id.entry(id.clone()).or_insert(i);
            }
            if let Some(t) = e.p.time {
                for p in &mut pools {
                    p.insert(e, t, i);
                }
            }
        }
        // Companions first: they carry the path (Apache's AH00898) that
        // the access line is then matched on.
        let mut weak: Vec<usize> = (0..self.entries.len())
            .filter(|&i| self.entries[i].weak())
            .collect();
        weak.sort_by_key(|&i| (self.entries[i].p.status.is_some(), i));
        for w in weak {
            let e = &self.entries[w];
            let kind = usize::from(e.p.status.is_some());
            let by_request =
                e.p.request_id
                    .as_deref()
                    .and_then(|id| by_id.get(id).copied())
                    .filter(|&s| pools[kind].contains(&self.entries[s], s));
            let found = by_request.or_else(|| {
                let t = e.p.time?;
                pools[kind].nearest(e.p.source, e.p.path.as_deref(), t)
            });
            if let Some(s) = found {
                if let Some(t) = self.entries[s].p.time {
                    let path = self.entries[s].p.path.clone();
                    pools[kind].remove(self.entries[s].p.source, path.as_deref(), t, s);
                }
                let weak = self.entries[w].p.clone();
                let e = &mut self.entries[s];
                e.p.status = e.p.status.or(weak.status);
                // A path learnt from a companion is one more way for the
                // access line to find this line.
                if e.p.path.is_none()
                    && let (Some(p), Some(t)) = (&weak.path, e.p.time)
                {
                    pools[1].relearn(e.p.source, p, t, s);
                }
                e.p.path = e.p.path.take().or(weak.path);
                e.p.upstream = e.p.upstream.take().or(weak.upstream);
                e.p.request_id = e.p.request_id.take().or(weak.request_id);
                self.entries[w].joined = Some(s);
            }
        }
        self.join_backend();
    }

    /// Joins a backend's failure line (php-fpm, gunicorn) to a proxy's
    /// failure within SIGNAL_WINDOW seconds: the same incident seen from
    /// both sides, counted once (the proxy's line), the backend's kept as
    /// the evidence that explains it.
    fn join_backend(&mut self) {
        let mut proxy: Vec<(i64, usize)> = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.is_failure() && e.joined.is_none() && !e.p.source.is_backend())
            .filter_map(|(i, e)| Some((e.p.time?, i)))
            .collect();
        proxy.sort_unstable();
        for i in 0..self.entries.len() {
            let e = &self.entries[i];
            if !e.is_failure() || !e.p.source.is_backend() || e.joined.is_some() {
                continue;
            }
            let Some(t) = e.p.time else { continue };
            let from = proxy.partition_point(|&(x, _)| x < t - SIGNAL_WINDOW);
            let to = proxy.partition_point(|&(x, _)| x <= t + SIGNAL_WINDOW);
            if let Some(&(_, p)) = proxy[from..to].iter().min_by_key(|&&(x, _)| (x - t).abs()) {
                self.entries[i].joined = Some(p);
            }
        }
    }

    /// Failure lines that count (not joined to another), by group.
    pub fn groups(&self) -> Vec<Group> {
        let mut map: HashMap<GroupKey, Group> = HashMap::new();
        for (i, e) in self.entries.iter().enumerate() {
            if e.joined.is_some() {
                continue;
            }
            let key = match e.p.kind {
                Kind::Failure { cause, .. } => GroupKey::Cause(cause),
                Kind::AppAnswer => GroupKey::App,
                Kind::Event(_) | Kind::Fine => continue,
            };
            map.entry(key).or_insert_with(|| Group::new(key)).add(i, e);
        }
        let signals = self.backend_signals();
        let mut v: Vec<Group> = map.into_values().collect();
        for g in &mut v {
            g.finish(&signals);
        }
        // Ranked by count; the unclassified and the application's own
        // answers after the gateway causes of the same count.
        v.sort_by_key(|g| (std::cmp::Reverse(g.count), g.key.rank(), g.first));
        v
    }

    /// What the application side logged (php-fpm and gunicorn failures,
    /// worker starts, the kernel's OOM kills), by time: the evidence that
    /// links a proxy's 502 to its cause behind the proxy.
    fn backend_signals(&self) -> Vec<(i64, String, Source)> {
        let mut v: Vec<(i64, String, Source)> = self
            .entries
            .iter()
            .filter(|e| e.p.source.is_backend())
            .filter_map(|e| {
                let what = match e.p.kind {
                    Kind::Failure { cause: Some(c), .. } => c.id(),
                    Kind::Event(ev @ (Event::OomKill | Event::WorkerStart)) => ev.as_str(),
                    _ => return None,
                };
                Some((
                    e.p.time?,
                    format!("{} {what}", e.p.source.as_str()),
                    e.p.source,
                ))
            })
            .collect();
        v.sort();
        v
    }

    pub fn events(&self) -> impl Iterator<Item = (&Entry, Event)> {
        self.entries.iter().filter_map(|e| match e.p.kind {
            Kind::Event(ev) if ev != Event::AppError => Some((e, ev)),
            _ => None,
        })
    }

    pub fn unclassified(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| e.joined.is_none() && matches!(e.p.kind, Kind::Failure { cause: None, .. }))
            .count()
    }

    pub fn failures(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| e.joined.is_none() && e.is_failure())
            .count()
    }

    fn span(&self) -> Option<(i64, i64)> {
        let times = self
            .entries
            .iter()
            .filter(|e| e.joined.is_none() && e.is_failure())
            .filter_map(|e| e.p.time);
        let (mut lo, mut hi) = (i64::MAX, i64::MIN);
        for t in times {
            lo = lo.min(t);
            hi = hi.max(t);
        }
        (lo <= hi).then_some((lo, hi))
    }
}

/// Explaining lines not yet joined, indexed for [`Analysis::join`].
#[derive(Default)]
struct Pools {
    by_path: HashMap<(Source, String), BTreeSet<(i64, usize)>>,
    no_path: HashMap<Source, BTreeSet<(i64, usize)>>,
    all: HashMap<Source, BTreeSet<(i64, usize)>>,
}

/// Seconds an access line may be stamped before the line that explains it
/// (Apache's `%t` is the request's start) when their paths agree, and
/// either way otherwise.
const JOIN_BEFORE_SAME_PATH: i64 = 300;
const JOIN_WINDOW: i64 = 2;

impl Pools {
    fn insert(&mut self, e: &Entry, t: i64, i: usize) {
        match &e.p.path {
            Some(p) => {
                self.by_path
                    .entry((e.p.source, p.clone()))
                    .or_default()
                    .insert((t, i));
            }
            None => {
                self.no_path.entry(e.p.source).or_default().insert((t, i));
            }
        }
        self.all.entry(e.p.source).or_default().insert((t, i));
    }

    fn contains(&self, e: &Entry, i: usize) -> bool {
        e.p.time.is_some_and(|t| {
            self.all
                .get(&e.p.source)
                .is_some_and(|s| s.contains(&(t, i)))
        })
    }

    fn remove(&mut self, source: Source, path: Option<&str>, t: i64, i: usize) {
        if let Some(p) = path
            && let Some(s) = self.by_path.get_mut(&(source, p.to_string()))
        {
            s.remove(&(t, i));
        }
        if let Some(s) = self.no_path.get_mut(&source) {
            s.remove(&(t, i));
        }
        if let Some(s) = self.all.get_mut(&source) {
            s.remove(&(t, i));
        }
    }

    /// A line without a path learnt one: index it under that path.
    fn relearn(&mut self, source: Source, path: &str, t: i64, i: usize) {
        if let Some(s) = self.no_path.get_mut(&source)
            && s.remove(&(t, i))
        {
            self.by_path
                .entry((source, path.to_string()))
                .or_default()
                .insert((t, i));
        }
    }

    /// The explaining line nearest in time to a weak line at `t`: one with
    /// the same path (up to JOIN_BEFORE_SAME_PATH later), or one without a
    /// path within JOIN_WINDOW; for a weak line without a path, any within
    /// JOIN_WINDOW.
    fn nearest(&self, source: Source, path: Option<&str>, t: i64) -> Option<usize> {
        let near = |set: Option<&BTreeSet<(i64, usize)>>, lo: i64, hi: i64| {
            let set = set?;
            let after = set.range((t, 0)..).next().filter(|(x, _)| *x <= hi);
            let before = set.range(..(t, 0)).next_back().filter(|(x, _)| *x >= lo);
            [after, before]
                .into_iter()
                .flatten()
                .min_by_key(|(x, _)| (x - t).abs())
                .copied()
        };
        let candidates = match path {
            Some(p) => [
                near(
                    self.by_path.get(&(source, p.to_string())),
                    t - JOIN_WINDOW,
                    t + JOIN_BEFORE_SAME_PATH,
                ),
                near(self.no_path.get(&source), t - JOIN_WINDOW, t + JOIN_WINDOW),
            ],
            None => [
                near(self.all.get(&source), t - JOIN_WINDOW, t + JOIN_WINDOW),
                None,
            ],
        };
        candidates
            .into_iter()
            .flatten()
            .min_by_key(|(x, _)| (x - t).abs())
            .map(|(_, i)| i)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GroupKey {
    Cause(Option<Cause>),
    App,
}

impl GroupKey {
    fn rank(self) -> u8 {
        match self {
            GroupKey::Cause(Some(_)) => 0,
            GroupKey::Cause(None) => 1,
            GroupKey::App => 2,
        }
    }

    pub fn id(self) -> &'static str {
        match self {
            GroupKey::Cause(Some(c)) => c.id(),
            GroupKey::Cause(None) => "unclassified",
            GroupKey::App => "application_error",
        }
    }
}

/// The lines of one cause.
pub struct Group {
    pub key: GroupKey,
    pub count: usize,
    pub first: Option<i64>,
    pub last: Option<i64>,
    pub times: Vec<i64>,
    pub sources: Vec<(Source, usize)>,
    pub statuses: Vec<(u16, usize)>,
    pub upstreams: Vec<(String, usize)>,
    pub paths: Vec<(String, usize)>,
    pub samples: Vec<usize>,
    /// Lines whose cause was guessed from their words (no known marker):
    /// the closest cause, with lower confidence.
    pub guessed: usize,
    /// Failures with a backend signal within SIGNAL_WINDOW seconds, and
    /// those signals by count.
    pub near_backend: usize,
    pub backend_signals: Vec<(String, usize)>,
    /// The backends those signals came from, by count.
    backend_sources: Vec<(Source, usize)>,
    /// Upstreams and paths counted while reading (many distinct URLs).
    counts: (HashMap<String, usize>, HashMap<String, usize>),
    /// The times of the lines a proxy (not the backend) wrote.
    proxy_times: Vec<i64>,
}

/// Seconds between a proxy's failure and a backend's log line that
/// explains it (clocks of one host agree to the second; a worker killed
/// at a timeout logs it just after the proxy).
const SIGNAL_WINDOW: i64 = 5;

fn bump<K: PartialEq>(v: &mut Vec<(K, usize)>, k: K) {
    match v.iter_mut().find(|(x, _)| *x == k) {
        Some((_, n)) => *n += 1,
        None => v.push((k, 1)),
    }
}

impl Group {
    fn new(key: GroupKey) -> Group {
        Group {
            key,
            count: 0,
            first: None,
            last: None,
            times: Vec::new(),
            sources: Vec::new(),
            statuses: Vec::new(),
            guessed: 0,
            upstreams: Vec::new(),
            paths: Vec::new(),
            samples: Vec::new(),
            near_backend: 0,
            backend_signals: Vec::new(),
            backend_sources: Vec::new(),
            counts: Default::default(),
            proxy_times: Vec::new(),
        }
    }

    fn add(&mut self, i: usize, e: &Entry) {
        self.count += 1;
        self.guessed += usize::from(e.p.guessed);
        if let Some(t) = e.p.time {
            self.first = Some(self.first.map_or(t, |f| f.min(t)));
            self.last = Some(self.last.map_or(t, |l| l.max(t)));
            self.times.push(t);
            if !e.p.source.is_backend() {
                self.proxy_times.push(t);
            }
        }
        bump(&mut self.sources, e.p.source);
        if let Some(s) = e.p.status {
            bump(&mut self.statuses, s);
        }
        if let Some(u) = &e.p.upstream {
            *self.counts.0.entry(u.clone()).or_default() += 1;
        }
        if let Some(p) = &e.p.path {
            *self.counts.1.entry(p.clone()).or_default() += 1;
        }
        // The first two and the latest.
        if self.samples.len() < 3 {
            self.samples.push(i);
        } else {
            self.samples[2] = i;
        }
    }

    fn finish(&mut self, signals: &[(i64, String, Source)]) {
        // How many of the proxies' lines have a backend signal within
        // SIGNAL_WINDOW seconds.
        for &t in &self.proxy_times {
            let from = signals.partition_point(|(x, ..)| *x < t - SIGNAL_WINDOW);
            let to = signals.partition_point(|(x, ..)| *x <= t + SIGNAL_WINDOW);
            let mut seen: Vec<(&str, Source)> = signals[from..to]
                .iter()
                .map(|(_, l, s)| (l.as_str(), *s))
                .collect();
            seen.sort();
            seen.dedup();
            if !seen.is_empty() {
                self.near_backend += 1;
            }
            let mut sources: Vec<Source> = seen.iter().map(|(_, s)| *s).collect();
            sources.dedup();
            for s in sources {
                bump(&mut self.backend_sources, s);
            }
            for (l, _) in seen {
                bump(&mut self.backend_signals, l.to_string());
            }
        }
        self.backend_sources.sort_by_key(|s| std::cmp::Reverse(s.1));
        let (ups, paths) = std::mem::take(&mut self.counts);
        self.upstreams = ups.into_iter().collect();
        self.paths = paths.into_iter().collect();
        for v in [
            &mut self.upstreams,
            &mut self.paths,
            &mut self.backend_signals,
        ] {
            v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        }
        self.sources.sort_by_key(|s| std::cmp::Reverse(s.1));
        self.statuses.sort_by_key(|s| std::cmp::Reverse(s.1));
    }

    pub fn cause(&self) -> Option<Cause> {
        match self.key {
            GroupKey::Cause(c) => c,
            GroupKey::App => None,
        }
    }

    /// The fix in the words of the peer that logged most of the lines.
    pub fn fix(&self) -> String {
        // When most of the proxy's lines coincide with a backend's own
        // signal (gunicorn's WORKER TIMEOUT), the backend's fix comes first.
        if let (GroupKey::Cause(Some(c)), Some((b, _))) = (self.key, self.backend_sources.first())
            && self.near_backend * 2 >= self.proxy_times.len()
            && fix_for(*b, c) != c.fix()
        {
            return fix_for(*b, c).to_string();
        }
        let source = self.sources.first().map(|s| s.0);
        match (self.key, source) {
            (GroupKey::Cause(Some(c)), Some(s)) => fix_for(s, c).to_string(),
            (GroupKey::Cause(None), _) => "Read the sample lines: baton does not know this message yet. The proxy's error log at the same time (or its debug log) usually names the cause.".into(),
            (GroupKey::App, _) => "The application answered with this error itself and the proxy passed it through: read the application's own log at these times.".into(),
            (GroupKey::Cause(Some(c)), None) => c.fix().to_string(),
        }
    }

    /// What the lines themselves show beyond the cause.
    pub fn notes(&self) -> Vec<String> {
        let mut n = Vec::new();
        if self.near_backend > 0 {
            n.push(format!(
                "{} of {} proxy line{} within {SIGNAL_WINDOW} s of a backend signal: {}",
                self.near_backend,
                self.proxy_times.len(),
                plural(self.proxy_times.len()),
                top(&self.backend_signals, 4)
            ));
        }
        if self.cause() == Some(Cause::ConnectionRefused)
            && self.upstreams.iter().any(|(u, _)| u.starts_with("[::1]"))
        {
            n.push("the proxy dialled [::1] (localhost resolved to IPv6): an app listening on 127.0.0.1 only refuses it; proxy to 127.0.0.1, or make the app listen on both".into());
        }
        n
    }

    pub fn title(&self) -> String {
        match self.key {
            GroupKey::Cause(Some(c)) => c.title().to_string(),
            GroupKey::Cause(None) => "A failure baton cannot classify".into(),
            GroupKey::App => "The application's own error answers".into(),
        }
    }

    pub fn why(&self) -> &'static str {
        match self.key {
            GroupKey::Cause(Some(c)) => c.seen_when(),
            GroupKey::Cause(None) => {
                "The line reports a failure (an error level, a 5xx status) in words baton has no rule for."
            }
            GroupKey::App => {
                "The upstream answered; the error page or JSON is the application's own."
            }
        }
    }
}

/// The cause's fix, in the configuration words of the peer that logged it
/// (an nginx user needs `proxy_buffer_size`, not baton's key). Falls back
/// to the cause's own fix.
pub fn fix_for(source: Source, c: Cause) -> &'static str {
    use Cause::*;
    use Source::*;
    match (source, c) {
        (Nginx, ResponseHeaderTooLarge) => {
            "Raise proxy_buffer_size together with proxy_buffers and proxy_busy_buffers_size (e.g. 16k; 8 16k; 32k), or fastcgi_buffer_size/fastcgi_buffers for PHP; or shrink the app's cookies and headers."
        }
        (Nginx, ConnectionTerminated) => {
            "If the connection was reused: keep nginx's upstream keepalive_timeout shorter than the app's idle timeout (Node 5s, gunicorn 2s). Otherwise the app dropped it: look for killed or crashed workers in the app's log at the same time."
        }
        (Nginx, ResponseHeadTimeout) => {
            "Find the slow request in the app (its slow log). Raise proxy_read_timeout (fastcgi_read_timeout) only deliberately, and keep it below any outer load balancer's idle timeout."
        }
        (Nginx, DnsError) | (Nginx, DnsTimeout) => {
            "nginx resolves a proxy_pass name once at start: add `resolver` and put the name in a variable, or `server NAME resolve;` in the upstream block (nginx 1.27.3+); check the name with `dig NAME`."
        }
        (Nginx, NoHealthyServer) => {
            "nginx marked every server failed after earlier errors (max_fails, fail_timeout): fix the first error before these lines; avoid a lone server with max_fails."
        }
        (Nginx, SocketPermission) => {
            "Let nginx's user connect: the PHP-FPM pool's listen.owner and listen.group = www-data (nginx's user), listen.mode = 0660; check parent directories with `namei -l SOCKET`; on SELinux, the audit log."
        }
        (Nginx, SocketNotFound) => {
            "Make fastcgi_pass/proxy_pass name the socket the pool really creates (its `listen`, e.g. /run/php/php8.2-fpm.sock after a PHP upgrade), and start the service."
        }
        (Nginx, ConnectError) => {
            "Errno 99: no free local ports; turn on `keepalive` in the upstream block. Errno 13 on TCP: SELinux, `setsebool -P httpd_can_network_connect 1`. 113/101: routing to the upstream."
        }
        (Nginx, TlsAlert) => {
            "The upstream wants SNI: `proxy_ssl_server_name on;` and `proxy_ssl_name HOST;`."
        }
        (Nginx, TlsCertificate) => {
            "Fix the upstream's certificate chain, or make proxy_ssl_name the name on the certificate (and proxy_ssl_trusted_certificate its CA)."
        }
        (Nginx, UpstreamBusy) | (PhpFpm, UpstreamBusy) => {
            "Every PHP-FPM worker is busy: raise pm.max_children (each child's memory x max_children must fit), listen.backlog and net.core.somaxconn, or find what makes requests slow (request_slowlog_timeout)."
        }
        (Apache, ConnectionTerminated) => {
            "Keep the backend's keep-alive timeout longer than Apache's, or add disablereuse=On (or ping=) to the ProxyPass worker; look for crashes in the backend's log at the same time."
        }
        (Apache, NoHealthyServer) => {
            "Apache put the worker in error state after one failure and refuses requests until `retry` expires: add retry=0 to ProxyPass, or use mod_proxy_hcheck."
        }
        (Apache, ResponseHeadTimeout) => {
            "Find the slow request in the backend; raise ProxyTimeout (or timeout= on ProxyPass) only deliberately."
        }
        (Haproxy, ConnectionTerminated) => {
            "Keep `timeout http-keep-alive`/`timeout server` below the backend's idle timeout; `retry-on conn-failure empty-response` with `option redispatch` replays safe requests."
        }
        (Haproxy, NoHealthyServer) => {
            "No server of the backend is UP: read HAProxy's \"is DOWN, reason: ...\" lines, then the servers themselves."
        }
        (Haproxy, ConcurrencyLimit) => {
            "Requests waited in the queue longer than `timeout queue`: raise the servers' maxconn if they have capacity, or add servers."
        }
        (Envoy, ConnectionTerminated) => {
            "Set the cluster's idle_timeout (common_http_protocol_options) below the backend's keep-alive timeout, and `retry_on: reset` for idempotent routes."
        }
        (Envoy, ConcurrencyLimit) => {
            "The cluster's circuit breaker overflowed (max_connections, max_pending_requests, max_requests): raise it if the backend has capacity."
        }
        (Gunicorn, ConnectionTerminated) => {
            "WORKER TIMEOUT: the handler ran longer than gunicorn's --timeout (30s); fix the slow handler or raise --timeout above the proxy's read timeout. SIGKILL / \"out of memory\": give the app memory or run fewer workers."
        }
        (Caddy | Traefik, ConnectionTerminated) => {
            "If the connection was reused: make the backend's idle timeout longer than the proxy's (Caddy keepalive 2m, Traefik idleConnTimeout 90s), or shorten the proxy's; otherwise look for crashes in the app's log."
        }
        _ => c.fix(),
    }
}

// -------------------------------------------------------------- reading

/// What to read and how to show it.
pub struct Options {
    pub files: Vec<String>,
    pub json: bool,
    pub report: Option<PathBuf>,
    pub follow: bool,
}

/// The reader for `name`, and its inode (0 for stdin).
fn open(name: &str) -> io::Result<(Box<dyn Read>, u64)> {
    use std::os::unix::fs::MetadataExt;
    if name == "-" {
        return Ok((Box::new(io::stdin()), 0));
    }
    let f = std::fs::File::open(name)?;
    let ino = f.metadata()?.ino();
    if name.ends_with(".gz") {
        Ok((Box::new(flate2::read::MultiGzDecoder::new(f)), ino))
    } else {
        Ok((Box::new(f), ino))
    }
}

/// Reads every line of `r` into `a` as file number `file`; returns the
/// bytes and lines read. Bytes that are
/// not UTF-8 are replaced, never dropped.
fn read_all(
    a: &mut Analysis,
    file: usize,
    r: impl Read,
    hint: Source,
    progress: &Progress,
) -> io::Result<(u64, usize)> {
    let mut r = BufReader::with_capacity(256 * 1024, r);
    let mut buf = Vec::new();
    let (mut bytes, mut n) = (0, 0);
    loop {
        buf.clear();
        let got = r.read_until(b'\n', &mut buf)?;
        if got == 0 {
            return Ok((bytes, n));
        }
        bytes += got as u64;
        n += 1;
        if n % 200_000 == 0 {
            progress.show(&format!("reading {}: {n} lines", a.files[file]));
        }
        a.add(file, n, &String::from_utf8_lossy(&buf), hint);
    }
}

/// Reads the inputs; `Err` names the file that could not be read.
pub fn analyse(files: &[String]) -> Result<Analysis, String> {
    let mut a = Analysis {
        files: files.to_vec(),
        ..Analysis::default()
    };
    let progress = Progress::new();
    for (i, name) in files.iter().enumerate() {
        let (r, ino) = open(name).map_err(|e| format!("cannot read {name}: {e}"))?;
        let (bytes, lines) = read_all(&mut a, i, r, hint_for(name), &progress)
            .map_err(|e| format!("cannot read {name}: {e}"))?;
        a.read.push((bytes, ino));
        a.lines_in.push(lines);
    }
    a.join();
    Ok(a)
}

/// `baton logs`. Exit 0: no failure found, 1: failures found, 2: could
/// not read an input.
pub fn run(o: &Options) -> u8 {
    let files = if o.files.is_empty() {
        vec!["-".to_string()]
    } else {
        o.files.clone()
    };
    let a = match analyse(&files) {
        Ok(a) => a,
        Err(e) => {
            if o.json {
                println!("{}", json!({ "error": e }));
            }
            eprintln!("baton logs: {e}");
            return 2;
        }
    };
    let groups = a.groups();
    if o.json {
        let stdout = io::stdout();
        let mut w = io::BufWriter::new(stdout.lock());
        if write_json(&a, &groups, &mut w)
            .and_then(|_| io::Write::flush(&mut w))
            .is_err()
        {
            return 2;
        }
    } else {
        print!("{}", text(&a, &groups, Paint::stdout()));
    }
    if let Some(path) = &o.report {
        if let Err(e) = std::fs::write(path, report(&a, &groups)) {
            eprintln!("baton logs: cannot write {}: {e}", path.display());
            return 2;
        }
        if !o.json {
            println!("report written to {}", path.display());
        }
    }
    let mut code = u8::from(a.failures() > 0);
    if o.follow {
        code = follow(&files, a, o.json);
    }
    code
}

// ------------------------------------------------------------ following

/// Prints each new failure line as it is written, until interrupted (or
/// stdin ends). Follows a file through rotation (a new inode) and
/// truncation.
fn follow(files: &[String], mut a: Analysis, json: bool) -> u8 {
    use std::os::unix::fs::MetadataExt;
    let paint = Paint::stdout();
    if !json {
        println!("following {} (Ctrl-C to stop)", files.join(", "));
    }
    if files.iter().any(|f| f == "-") {
        let mut found = a.failures() > 0;
        let stdin = io::stdin();
        let mut line_no = a.lines_in.first().copied().unwrap_or(0);
        for line in stdin.lock().lines() {
            let Ok(line) = line else { break };
            line_no += 1;
            found |= stream_line(&mut a, 0, line_no, &line, Source::Nginx, json, paint);
        }
        return u8::from(found);
    }
    struct Tail {
        pos: u64,
        ino: u64,
        line: usize,
        partial: Vec<u8>,
    }
    // Carry on exactly where the first read stopped (a line written
    // since is not lost); a compressed file has nothing more to follow.
    let mut tails: Vec<Tail> = files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let (bytes, ino) = a.read[i];
            Tail {
                pos: if f.ends_with(".gz") {
                    std::fs::metadata(f).map_or(0, |m| m.len())
                } else {
                    bytes
                },
                ino,
                line: a.lines_in[i],
                partial: Vec::new(),
            }
        })
        .collect();
    loop {
        for (i, name) in files.iter().enumerate() {
            let t = &mut tails[i];
            let Ok(m) = std::fs::metadata(name) else {
                continue;
            };
            if m.ino() != t.ino || m.len() < t.pos {
                // Rotated or truncated: read the new file from its start.
                t.ino = m.ino();
                t.pos = 0;
                t.line = 0;
                t.partial.clear();
            }
            if m.len() == t.pos {
                continue;
            }
            let Ok(mut f) = std::fs::File::open(name) else {
                continue;
            };
            if f.seek(SeekFrom::Start(t.pos)).is_err() {
                continue;
            }
            let mut chunk = Vec::new();
            if f.read_to_end(&mut chunk).is_err() {
                continue;
            }
            t.pos += chunk.len() as u64;
            t.partial.extend_from_slice(&chunk);
            while let Some(nl) = t.partial.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = t.partial.drain(..=nl).collect();
                t.line += 1;
                let text = String::from_utf8_lossy(&line).into_owned();
                stream_line(&mut a, i, t.line, &text, hint_for(name), json, paint);
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Classifies one followed line and prints it if it reports a failure not
/// already printed (an access-log 502 right after its error-log line is
/// the same failure).
fn stream_line(
    a: &mut Analysis,
    file: usize,
    n: usize,
    text: &str,
    hint: Source,
    json: bool,
    paint: Paint,
) -> bool {
    let before = a.entries.len();
    let Some(e) = a.add(file, n, text, hint).cloned() else {
        return false;
    };
    if !e.is_failure() && !matches!(e.p.kind, Kind::Event(_)) {
        return false;
    }
    if e.weak() {
        let dup = a.entries[..before].iter().rev().take(50).any(|s| {
            s.is_failure()
                && !s.weak()
                && s.p.source == e.p.source
                && matches!((s.p.time, e.p.time), (Some(x), Some(y)) if (x - y).abs() <= 2)
        });
        if dup {
            return false;
        }
    }
    if json {
        println!("{}", line_json(a, &e));
    } else {
        println!("{}", one_line(a, &e, paint));
    }
    e.is_failure()
}

fn one_line(a: &Analysis, e: &Entry, paint: Paint) -> String {
    let what = match e.p.kind {
        Kind::Failure { cause: Some(c), .. } => paint.red(c.id()),
        Kind::Failure { cause: None, .. } => paint.yellow("unclassified"),
        Kind::AppAnswer => "application_error".into(),
        Kind::Event(ev) => paint.dim(ev.as_str()),
        Kind::Fine => String::new(),
    };
    let mut s = format!(
        "{} {} {} {}",
        e.p.time.map_or("-".into(), clock),
        e.p.source.as_str(),
        what,
        e.p.status.map_or(String::new(), |s| s.to_string())
    );
    if let Some(u) = &e.p.upstream {
        let _ = write!(s, " upstream {u}");
    }
    if let Some(p) = &e.p.path {
        let _ = write!(s, " {p}");
    }
    let _ = write!(s, "  ({}:{})", a.files[e.file], e.line);
    s
}

// -------------------------------------------------------------- output

/// `YYYY-MM-DD HH:MM:SS` (UTC, or as written for logs without a zone).
fn iso(t: Option<i64>) -> Value {
    t.map_or(Value::Null, |t| {
        let s = crate::core::clock::rfc3339(
            std::time::UNIX_EPOCH + Duration::from_secs(t.max(0) as u64),
        );
        Value::String(format!("{}Z", &s[..19]))
    })
}

/// A column width for the rate chart: at most 60 columns over the span.
fn bucket(span: i64) -> i64 {
    [1, 10, 60, 300, 900, 3600, 6 * 3600, 86_400, 7 * 86_400]
        .into_iter()
        .find(|b| span / b < 60)
        .unwrap_or(30 * 86_400)
}

fn bucket_name(b: i64) -> String {
    match b {
        b if b < 60 => format!("{b} s"),
        b if b < 3600 => format!("{} min", b / 60),
        b if b < 86_400 => format!("{} h", b / 3600),
        b => format!("{} d", b / 86_400),
    }
}

/// Counts per column, the peak column and its count.
fn columns(times: &[i64], (lo, hi): (i64, i64), b: i64) -> Vec<usize> {
    // Columns start on whole multiples of their width (10:00:00, 10:00:10).
    let lo = lo - lo.rem_euclid(b);
    let n = ((hi - lo) / b + 1) as usize;
    let mut v = vec![0; n];
    for t in times {
        if (lo..=hi).contains(t) {
            v[((t - lo) / b) as usize] += 1;
        }
    }
    v
}

fn sparkline(cols: &[usize]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let max = cols.iter().copied().max().unwrap_or(0).max(1);
    cols.iter()
        .map(|&c| {
            if c == 0 {
                '·'
            } else {
                BARS[(c * 7).div_ceil(max).min(7)]
            }
        })
        .collect()
}

fn top(v: &[(String, usize)], n: usize) -> String {
    let mut s: Vec<String> = v
        .iter()
        .take(n)
        .map(|(k, c)| format!("{k} ({c})"))
        .collect();
    if v.len() > n {
        s.push(format!("+{} more", v.len() - n));
    }
    s.join(", ")
}

fn peak(g: &Group, span: (i64, i64), b: i64) -> Option<(i64, usize)> {
    let cols = columns(&g.times, span, b);
    let (i, &n) = cols
        .iter()
        .enumerate()
        .max_by_key(|(i, n)| (**n, std::cmp::Reverse(*i)))?;
    (n > 0).then_some((span.0 - span.0.rem_euclid(b) + i as i64 * b, n))
}

fn text(a: &Analysis, groups: &[Group], paint: Paint) -> String {
    let mut o = String::new();
    let failures = a.failures();
    let _ = writeln!(
        o,
        "{} {} line{} read from {}: {} failure{} ({} unclassified), {} line{} in no known format",
        paint.bold("baton logs:"),
        a.lines,
        plural(a.lines),
        a.files.join(", "),
        failures,
        plural(failures),
        a.unclassified(),
        a.unrecognised,
        plural(a.unrecognised),
    );
    let span = a.span();
    let b = span.map_or(60, |(lo, hi)| bucket(hi - lo));
    if let Some((lo, hi)) = span {
        let _ = writeln!(
            o,
            "from {} to {} (UTC, or as written); chart: one column = {}",
            clock(lo),
            clock(hi),
            bucket_name(b)
        );
    }
    if groups.is_empty() {
        let _ = writeln!(o, "{}", paint.green("no failures found"));
    }
    for g in groups {
        let _ = writeln!(o);
        let label = match g.key {
            GroupKey::Cause(Some(c)) => paint.red(c.id()),
            GroupKey::Cause(None) => paint.yellow("unclassified"),
            GroupKey::App => paint.yellow("application_error"),
        };
        let status: Vec<String> = g
            .statuses
            .iter()
            .map(|(s, n)| format!("{s} x{n}"))
            .collect();
        let proxy = g.cause().map_or(String::new(), |c| {
            format!("  Proxy-Status {}", c.proxy_status())
        });
        let _ = writeln!(o, "{:>6}  {}  {}{}", g.count, label, g.title(), proxy);
        let sources: Vec<String> = g
            .sources
            .iter()
            .map(|(s, n)| format!("{} {n}", s.as_str()))
            .collect();
        let _ = writeln!(
            o,
            "        seen in: {}{}",
            sources.join(", "),
            if status.is_empty() {
                String::new()
            } else {
                format!("; status {}", status.join(", "))
            }
        );
        if g.guessed > 0 {
            let _ = writeln!(
                o,
                "        {} of {} read from the line's words, no known marker: lower confidence",
                g.guessed, g.count
            );
        }
        if let (Some(f), Some(l), Some(span)) = (g.first, g.last, span) {
            let pk = peak(g, span, b).map_or(String::new(), |(t, n)| {
                format!("; peak {n} per {} at {}", bucket_name(b), clock(t))
            });
            let _ = writeln!(o, "        first {}, last {}{}", clock(f), clock(l), pk);
            let _ = writeln!(o, "        {}", sparkline(&columns(&g.times, span, b)));
        }
        if !g.upstreams.is_empty() {
            let _ = writeln!(o, "        upstreams: {}", top(&g.upstreams, 3));
        }
        if !g.paths.is_empty() {
            let _ = writeln!(o, "        urls: {}", top(&g.paths, 3));
        }
        for note in g.notes() {
            let _ = writeln!(o, "        {} {note}", paint.bold("note:"));
        }
        for &i in &g.samples {
            let e = &a.entries[i];
            let _ = writeln!(
                o,
                "        {} {}",
                paint.dim(&format!("{}:{}", a.files[e.file], e.line)),
                e.text
            );
        }
        let _ = writeln!(o, "        why: {}", g.why());
        let _ = writeln!(o, "        {} {}", paint.bold("fix:"), g.fix());
    }
    let events: Vec<_> = a.events().collect();
    if !events.is_empty() {
        let _ = writeln!(
            o,
            "\nwhat changed ({} event{}):",
            events.len(),
            plural(events.len())
        );
        for (e, ev) in events.iter().take(20) {
            let _ = writeln!(
                o,
                "  {} {} {}  ({}:{})",
                e.p.time.map_or("-".into(), clock),
                e.p.source.as_str(),
                ev.as_str(),
                a.files[e.file],
                e.line
            );
        }
        if events.len() > 20 {
            let _ = writeln!(o, "  ... {} more (see --json)", events.len() - 20);
        }
    }
    if a.unrecognised > 0 {
        let _ = writeln!(
            o,
            "\n{} line{} in no known format, e.g.:",
            a.unrecognised,
            plural(a.unrecognised)
        );
        for (f, l, t) in a.unrecognised_samples.iter().take(5) {
            let _ = writeln!(o, "  {}:{} {}", a.files[*f], l, t);
        }
    }
    o
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn line_json(a: &Analysis, e: &Entry) -> Value {
    let (cause, origin) = match e.p.kind {
        Kind::Failure { cause, .. } => (cause, "proxy"),
        Kind::AppAnswer => (None, "application"),
        _ => (None, ""),
    };
    let fix = match e.p.kind {
        Kind::Failure { cause: Some(c), .. } => Value::from(fix_for(e.p.source, c)),
        _ => Value::Null,
    };
    let mut v = json!({
        "file": a.files[e.file],
        "line": e.line,
        "source": e.p.source.as_str(),
        "time": iso(e.p.time),
        "proxy_status": cause.map(Cause::proxy_status),
        "cause": cause.map(Cause::id),
        "status": e.p.status,
        "origin": origin,
        "upstream": e.p.upstream,
        "path": e.p.path,
        "request_id": e.p.request_id,
        "marker": e.p.marker,
        "fix": fix,
        "text": e.text,
    });
    if let Kind::Event(ev) = e.p.kind {
        v["event"] = ev.as_str().into();
    }
    if e.p.guessed {
        v["guessed"] = true.into();
    }
    v
}

/// The `--json` document, on one line. The failure lines are written one
/// by one (a log of a million 502s is not built in memory twice).
fn write_json(a: &Analysis, groups: &[Group], w: &mut impl io::Write) -> io::Result<()> {
    w.write_all(b"{\"lines\":[")?;
    let mut first = true;
    for e in a
        .entries
        .iter()
        .filter(|e| e.is_failure() || e.p.kind == Kind::AppAnswer)
    {
        let mut v = line_json(a, e);
        if let Some(j) = e.joined {
            let s = &a.entries[j];
            v["joined_to"] = json!({"file": a.files[s.file], "line": s.line});
        }
        if !first {
            w.write_all(b",")?;
        }
        first = false;
        serde_json::to_writer(&mut *w, &v)?;
    }
    w.write_all(b"],")?;
    // The rest of the document, after its opening brace.
    let rest = serde_json::to_string(&json_rest(a, groups))?;
    w.write_all(&rest.as_bytes()[1..])?;
    w.write_all(b"\n")
}

/// Every field of the `--json` document but `lines`.
fn json_rest(a: &Analysis, groups: &[Group]) -> Value {
    let span = a.span();
    let b = span.map_or(60, |(lo, hi)| bucket(hi - lo));
    let summary: Vec<Value> = groups
        .iter()
        .map(|g| {
            json!({
                "cause": g.cause().map(Cause::id),
                "group": g.key.id(),
                "proxy_status": g.cause().map(Cause::proxy_status),
                "count": g.count,
                "guessed": g.guessed,
                "statuses": g.statuses.iter().map(|(s, n)| json!({"status": s, "count": n})).collect::<Vec<_>>(),
                "sources": g.sources.iter().map(|(s, n)| json!({"source": s.as_str(), "count": n})).collect::<Vec<_>>(),
                "first": iso(g.first),
                "last": iso(g.last),
                "per_bucket": span.map(|s| columns(&g.times, s, b)),
                "upstreams": g.upstreams.iter().map(|(u, n)| json!({"upstream": u, "count": n})).collect::<Vec<_>>(),
                "paths": g.paths.iter().take(20).map(|(u, n)| json!({"path": u, "count": n})).collect::<Vec<_>>(),
                "samples": g.samples.iter().map(|&i| json!({"file": a.files[a.entries[i].file], "line": a.entries[i].line})).collect::<Vec<_>>(),
                "near_backend_signal": g.near_backend,
                "backend_signals": g.backend_signals.iter().map(|(u, n)| json!({"signal": u, "count": n})).collect::<Vec<_>>(),
                "notes": g.notes(),
                "title": g.title(),
                "why": g.why(),
                "fix": g.fix(),
            })
        })
        .collect();
    let events: Vec<Value> = a
        .events()
        .map(|(e, ev)| json!({"file": a.files[e.file], "line": e.line, "source": e.p.source.as_str(), "time": iso(e.p.time), "event": ev.as_str(), "upstream": e.p.upstream}))
        .collect();
    json!({
        "files": a.files,
        "lines_read": a.lines,
        "failures": a.failures(),
        "unclassified": a.unclassified(),
        "unrecognised": a.unrecognised,
        "unrecognised_samples": a.unrecognised_samples.iter().map(|(f, l, t)| json!({"file": a.files[*f], "line": l, "text": t})).collect::<Vec<_>>(),
        "bucket_seconds": b,
        "span": span.map(|(lo, hi)| json!({"first": iso(Some(lo)), "last": iso(Some(hi))})),
        "summary": summary,
        "events": events,
    })
}

/// The escalation report (`--report FILE.md`).
pub fn report(a: &Analysis, groups: &[Group]) -> String {
    let mut o = String::new();
    let main = groups.iter().find(|g| g.key != GroupKey::App);
    let _ = writeln!(
        o,
        "# Incident report: {}\n",
        main.map_or("no failures found".to_string(), |g| g.title())
    );
    let _ = writeln!(
        o,
        "Written by `baton logs` {} at {} from {} ({} lines).\n",
        env!("CARGO_PKG_VERSION"),
        crate::core::clock::now(),
        a.files
            .iter()
            .map(|f| format!("`{f}`"))
            .collect::<Vec<_>>()
            .join(", "),
        a.lines
    );
    let span = a.span();
    let b = span.map_or(60, |(lo, hi)| bucket(hi - lo));
    let _ = writeln!(o, "## Summary\n");
    match span {
        Some((lo, hi)) => {
            let _ = writeln!(o, "- **Started:** {} (first failure line)", clock(lo));
            let _ = writeln!(
                o,
                "- **Last seen:** {} ({} after the start)",
                clock(hi),
                human(hi - lo)
            );
        }
        None => {
            let _ = writeln!(o, "- No failure line carries a time.");
        }
    }
    let _ = writeln!(
        o,
        "- **How often:** {} failure{} ({} unclassified); per cause below.",
        a.failures(),
        plural(a.failures()),
        a.unclassified()
    );
    if let Some(g) = main {
        let _ = writeln!(
            o,
            "- **Most likely cause:** `{}`{}: {}",
            g.key.id(),
            g.cause().map_or(String::new(), |c| format!(
                " (HTTP {}, Proxy-Status `{}`)",
                c.status(),
                c.proxy_status()
            )),
            g.why()
        );
    }
    let _ = writeln!(
        o,
        "- Times are UTC where the log gives a zone, otherwise as written.\n"
    );
    let _ = writeln!(o, "## Causes\n");
    let _ = writeln!(
        o,
        "| cause | lines | status | first | last | peak per {} | upstreams |",
        bucket_name(b)
    );
    let _ = writeln!(o, "|---|---|---|---|---|---|---|");
    for g in groups {
        let status: Vec<String> = g.statuses.iter().map(|(s, _)| s.to_string()).collect();
        let pk = span
            .and_then(|s| peak(g, s, b))
            .map_or("-".into(), |(t, n)| format!("{n} at {}", clock(t)));
        let _ = writeln!(
            o,
            "| `{}` | {} | {} | {} | {} | {} | {} |",
            g.key.id(),
            g.count,
            if status.is_empty() {
                "-".into()
            } else {
                status.join(", ")
            },
            g.first.map_or("-".into(), clock),
            g.last.map_or("-".into(), clock),
            pk,
            if g.upstreams.is_empty() {
                "-".into()
            } else {
                top(&g.upstreams, 3)
            }
        );
    }
    if let Some(span) = span {
        let _ = writeln!(
            o,
            "\nRate over time (one column = {}):\n\n```",
            bucket_name(b)
        );
        for g in groups {
            let _ = writeln!(
                o,
                "{:<26} {}",
                g.key.id(),
                sparkline(&columns(&g.times, span, b))
            );
        }
        let _ = writeln!(o, "```");
    }
    let _ = writeln!(o, "\n## Evidence\n");
    for g in groups {
        let _ = writeln!(o, "### `{}`: {}\n", g.key.id(), g.title());
        let _ = writeln!(o, "{}\n", g.why());
        if !g.paths.is_empty() {
            let _ = writeln!(o, "Affected URLs: {}\n", top(&g.paths, 5));
        }
        for note in g.notes() {
            let _ = writeln!(o, "Note: {note}.\n");
        }
        let _ = writeln!(o, "```");
        for &i in &g.samples {
            let e = &a.entries[i];
            let _ = writeln!(o, "{}:{}: {}", a.files[e.file], e.line, e.text);
        }
        let _ = writeln!(o, "```\n");
    }
    let _ = writeln!(o, "## What changed around then\n");
    let window = span.map(|(lo, hi)| (lo - 15 * 60, hi + 5 * 60));
    let near: Vec<_> = a
        .events()
        .filter(|(e, _)| match (window, e.p.time) {
            (Some((lo, hi)), Some(t)) => (lo..=hi).contains(&t),
            _ => window.is_none(),
        })
        .collect();
    if near.is_empty() {
        let _ = writeln!(
            o,
            "No reloads, restarts, deploys or servers going down were logged from 15 minutes before the first failure to 5 minutes after the last.\n"
        );
    }
    for (e, ev) in near.iter().take(30) {
        let _ = writeln!(
            o,
            "- {} {} **{}** (`{}:{}`): `{}`",
            e.p.time.map_or("-".into(), clock),
            e.p.source.as_str(),
            ev.as_str(),
            a.files[e.file],
            e.line,
            e.text.replace('`', "'")
        );
    }
    let _ = writeln!(o, "\n## What to try\n");
    for (n, g) in groups.iter().enumerate() {
        let _ = writeln!(o, "{}. **`{}`**: {}", n + 1, g.key.id(), g.fix());
    }
    let _ = writeln!(o, "\n## For your hosting provider\n");
    let _ = writeln!(
        o,
        "Please check the following, with the times and lines below:\n"
    );
    if let Some((lo, hi)) = span {
        let _ = writeln!(o, "- Time window: {} to {}.", clock(lo), clock(hi));
    }
    let mut ups: Vec<(String, usize)> = Vec::new();
    for g in groups {
        for (u, n) in &g.upstreams {
            match ups.iter_mut().find(|(x, _)| x == u) {
                Some((_, m)) => *m += n,
                None => ups.push((u.clone(), *n)),
            }
        }
    }
    ups.sort_by_key(|u| std::cmp::Reverse(u.1));
    if !ups.is_empty() {
        let _ = writeln!(o, "- Backends involved: {}.", top(&ups, 5));
    }
    for g in groups.iter().filter(|g| g.cause().is_some()).take(3) {
        let c = g.cause().unwrap_or(Cause::Internal);
        let _ = writeln!(
            o,
            "- {} x `{}` ({}, phase {}): {}",
            g.count,
            c.id(),
            c.proxy_status(),
            c.phase().as_str(),
            provider_question(c)
        );
    }
    let ids: Vec<&str> = a
        .entries
        .iter()
        .filter(|e| e.is_failure())
        .filter_map(|e| e.p.request_id.as_deref())
        .take(10)
        .collect();
    if !ids.is_empty() {
        let _ = writeln!(
            o,
            "- Request IDs of failed requests: {}.",
            ids.iter()
                .map(|i| format!("`{i}`"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if a.unrecognised > 0 || a.unclassified() > 0 {
        let _ = writeln!(o, "\n## Lines baton could not classify\n");
        let _ = writeln!(
            o,
            "{} failure line(s) without a known cause, {} line(s) in no known format.\n\n```",
            a.unclassified(),
            a.unrecognised
        );
        for e in a
            .entries
            .iter()
            .filter(|e| e.joined.is_none() && matches!(e.p.kind, Kind::Failure { cause: None, .. }))
            .take(5)
        {
            let _ = writeln!(o, "{}:{}: {}", a.files[e.file], e.line, e.text);
        }
        for (f, l, t) in a.unrecognised_samples.iter().take(5) {
            let _ = writeln!(o, "{}:{}: {}", a.files[*f], l, t);
        }
        let _ = writeln!(o, "```");
    }
    o
}

/// What to ask whoever runs the machines, per phase of the failure.
fn provider_question(c: Cause) -> &'static str {
    use crate::core::cause::Phase::*;
    match c.phase() {
        Dns => "did DNS for the backend's name change or fail in this window?",
        Connect => {
            "was the backend running and reachable from the proxy (firewall, security group, container network) in this window?"
        }
        Tls => "did the backend's certificate or TLS settings change in this window?",
        WriteRequest | ReadHead => {
            "was the backend restarted, killed (OOM) or overloaded in this window, and what is its keep-alive idle timeout?"
        }
        ReadBody => "did the backend crash or run out of memory while answering in this window?",
        Route => "were the backends up and healthy in this window?",
    }
}

fn human(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", (s + 30) / 60),
        s if s < 172_800 => format!("{:.1} h", s as f64 / 3600.0),
        s => format!("{:.1} days", s as f64 / 86_400.0),
    }
}

/// For tests: the analysis of in-memory lines.
pub fn analyse_text(name: &str, text: &str) -> Analysis {
    let mut a = Analysis {
        files: vec![name.to_string()],
        ..Analysis::default()
    };
    for (i, l) in text.lines().enumerate() {
        a.add(0, i + 1, l, hint_for(name));
    }
    a.join();
    a
}
