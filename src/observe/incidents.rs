//! Incidents: when an upstream's failures cross a threshold (or none of its
//! servers is usable), an incident opens; it closes when the upstream has
//! recovered. Each is kept in an SQLite store (it survives restarts; age
//! and count bounded) with what an escalation needs: start, end, peak rate,
//! causes, routes, sample request IDs, and the reloads, ejections and
//! restarts around it; alerts go to a webhook and a command.
//!
//! Owns: the per-upstream tallies the request path feeds (two atomic adds
//! a request, a short lock only on a failure), the detector task, the
//! store, the alerts, and the `baton incidents` / `baton report` output.
//! Must not: block or fail a request: store and alert errors are logged and
//! the gateway serves on.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{AlertConfig, IncidentConfig};
use crate::core::cause::{Cause, Side};
use crate::core::clock::now_s;
use crate::core::text::shown_url;

/// Samples kept per upstream (request IDs of recent failures).
const SAMPLES: usize = 20;
/// Events kept for "what happened around it".
const EVENTS: usize = 500;

/// One failed request, as an incident keeps it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sample {
    pub time: i64,
    pub request_id: String,
    pub route: String,
    pub path: String,
    pub cause: String,
    pub status: u16,
    /// The request's failure log lines (one per attempt), as baton wrote
    /// them; kept with an incident's samples.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lines: Vec<String>,
}

/// What the request path adds to, per upstream.
#[derive(Default)]
pub struct Track {
    requests: AtomicU64,
    failures: AtomicU64,
    /// Request durations: bucket i counts those up to LATENCY_BASE_MS * 2^i
    /// (the last one, everything longer), as the metric's histogram.
    latency: [AtomicU64; LATENCY_BUCKETS],
    detail: Mutex<Detail>,
}

const LATENCY_BUCKETS: usize = 17;
const LATENCY_BASE_MS: f64 = 0.5;

/// The upper bounds of the latency buckets, in milliseconds (the last is
/// unbounded).
pub fn latency_bounds_ms() -> Vec<f64> {
    (0..LATENCY_BUCKETS - 1)
        .map(|i| LATENCY_BASE_MS * f64::from(1u32 << i))
        .collect()
}

#[derive(Default)]
struct Detail {
    causes: HashMap<&'static str, u64>,
    /// Requests baton refused on purpose (the client's side: a rate limit,
    /// a body too large, a malformed request), by cause: not failures of
    /// the upstream, but shown beside them.
    refused: HashMap<&'static str, u64>,
    routes: HashMap<String, u64>,
    samples: VecDeque<Sample>,
}

/// Whether a request's outcome counts against its upstream: the gateway
/// could not deliver an upstream answer for a reason on the upstream's or
/// the gateway's side (not the client's, not planned maintenance).
pub fn counts(c: Cause) -> bool {
    !matches!(c.side(), Side::Client) && c != Cause::Maintenance
}

impl Track {
    #[inline]
    pub fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// How long a request the upstream answered (or failed) took: files
    /// baton serves itself from a FastCGI root are not the upstream's
    /// latency.
    #[inline]
    pub fn latency(&self, took: Duration) {
        let ms = took.as_secs_f64() * 1000.0;
        // The first power of two at or above ms / base.
        let i = if ms <= LATENCY_BASE_MS {
            0
        } else {
            ((ms / LATENCY_BASE_MS).log2().ceil() as usize).min(LATENCY_BUCKETS - 1)
        };
        self.latency[i].fetch_add(1, Ordering::Relaxed);
    }

    /// A request refused on the client's side (not a failure of the
    /// upstream: [`counts`] says no).
    pub fn refused(&self, c: Cause) {
        let mut d = self.detail.lock().unwrap_or_else(|e| e.into_inner());
        *d.refused.entry(c.id()).or_default() += 1;
    }

    pub fn failure(&self, c: Cause, request_id: &str, route: &str, path: &str, status: u16) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let mut d = self.detail.lock().unwrap_or_else(|e| e.into_inner());
        *d.causes.entry(c.id()).or_default() += 1;
        *d.routes.entry(route.to_string()).or_default() += 1;
        if d.samples.len() == SAMPLES {
            d.samples.pop_front();
        }
        d.samples.push_back(Sample {
            time: now_s(),
            request_id: request_id.to_string(),
            route: route.to_string(),
            path: path.chars().take(200).collect(),
            cause: c.id().to_string(),
            status,
            lines: Vec::new(),
        });
    }
}

/// Something that changed, kept to show around an incident.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Event {
    pub time: i64,
    pub kind: String,
    pub upstream: Option<String>,
    pub text: String,
}

/// The tallies of every upstream, shared across reloads (they live in
/// [`crate::observe::metrics::Metrics`]), and the recent events.
#[derive(Default)]
pub struct Tracks {
    by_upstream: Mutex<HashMap<Arc<str>, Arc<Track>>>,
    events: Mutex<VecDeque<Event>>,
    /// The incidents open now, by upstream (for the dashboard).
    open: Mutex<BTreeMap<String, Incident>>,
    /// Totals once a second for the last SERIES seconds (the dashboard's
    /// charts start from them).
    series: Mutex<VecDeque<SeriesPoint>>,
}

const SERIES: usize = 300;

/// Cumulative totals over every upstream at one second.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SeriesPoint {
    pub time: i64,
    pub requests: u64,
    pub failures: u64,
    pub causes: BTreeMap<&'static str, u64>,
}

/// What the dashboard shows of one upstream's tally.
#[derive(Serialize)]
pub struct TrackView {
    pub requests: u64,
    pub failures: u64,
    /// Cumulative counts per latency bucket (bounds: `latency_bounds_ms`).
    pub latency: Vec<u64>,
    pub causes: BTreeMap<&'static str, u64>,
    /// Requests refused on the client's side, by cause.
    pub refused: BTreeMap<&'static str, u64>,
    pub recent: Vec<Sample>,
}

impl Tracks {
    /// The tally of `upstream` (made on first use; looked up once per
    /// config, not per request).
    pub fn get(&self, upstream: &Arc<str>) -> Arc<Track> {
        self.by_upstream
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(upstream.clone())
            .or_default()
            .clone()
    }

    pub fn event(&self, kind: &str, upstream: Option<&str>, text: impl Into<String>) {
        let mut e = self.events.lock().unwrap_or_else(|e| e.into_inner());
        if e.len() == EVENTS {
            e.pop_front();
        }
        e.push_back(Event {
            time: now_s(),
            kind: kind.to_string(),
            upstream: upstream.map(str::to_string),
            text: text.into(),
        });
    }

    fn events_between(&self, from: i64, to: i64) -> Vec<Event> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|e| e.time >= from && e.time <= to)
            .cloned()
            .collect()
    }

    /// One upstream's totals and latest failures.
    pub fn view(&self, upstream: &str) -> Option<TrackView> {
        let t = self
            .by_upstream
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(upstream)?
            .clone();
        let d = t.detail.lock().unwrap_or_else(|e| e.into_inner());
        Some(TrackView {
            requests: t.requests.load(Ordering::Relaxed),
            failures: t.failures.load(Ordering::Relaxed),
            latency: t
                .latency
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            causes: d.causes.iter().map(|(k, v)| (*k, *v)).collect(),
            refused: d.refused.iter().map(|(k, v)| (*k, *v)).collect(),
            recent: d.samples.iter().rev().cloned().collect(),
        })
    }

    fn push_series(&self, p: SeriesPoint) {
        let mut s = self.series.lock().unwrap_or_else(|e| e.into_inner());
        if s.len() == SERIES {
            s.pop_front();
        }
        s.push_back(p);
    }

    /// The last SERIES seconds of totals, oldest first.
    pub fn series(&self) -> Vec<SeriesPoint> {
        self.series
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// The time of each upstream's latest server state change.
    pub fn last_change_by_upstream(&self) -> HashMap<String, i64> {
        let mut m = HashMap::new();
        for e in self.events.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            if e.kind.starts_with("server_")
                && let Some(u) = &e.upstream
            {
                m.insert(u.clone(), e.time);
            }
        }
        m
    }

    pub fn open_incidents(&self) -> Vec<Incident> {
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub fn recent_events(&self, n: usize) -> Vec<Event> {
        let e = self.events.lock().unwrap_or_else(|e| e.into_inner());
        e.iter().rev().take(n).cloned().collect()
    }

    fn set_open(&self, upstream: &str, i: Option<&Incident>) {
        let mut o = self.open.lock().unwrap_or_else(|e| e.into_inner());
        match i {
            Some(i) => {
                o.insert(upstream.to_string(), i.clone());
            }
            None => {
                o.remove(upstream);
            }
        }
    }

    fn all(&self) -> Vec<(Arc<str>, Arc<Track>)> {
        self.by_upstream
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// An incident, as stored and reported.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Incident {
    pub id: i64,
    pub upstream: String,
    pub started: i64,
    pub ended: Option<i64>,
    /// Why it opened: "error rate 62% over 30s" or "no usable server".
    pub reason: String,
    /// The highest failure rate seen (share of requests, 0..1).
    pub peak_rate: f64,
    pub requests: u64,
    pub failures: u64,
    pub causes: BTreeMap<String, u64>,
    pub routes: BTreeMap<String, u64>,
    pub samples: Vec<Sample>,
    pub events: Vec<Event>,
}

// ---------------------------------------------------------------- store

/// Why the incident store could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `baton incidents` before anything was recorded.
    #[error("no incident store at {} yet", .0.display())]
    Missing(PathBuf),
    #[error("cannot create {}: {source}", path.display())]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open {}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    /// A statement failed (a full disk: "database or disk is full").
    #[error("{0}")]
    Sql(#[from] rusqlite::Error),
    #[error("a stored incident cannot be read: {0}")]
    Json(#[from] serde_json::Error),
    /// The blocking write task did not finish.
    #[error("the store's writer stopped: {0}")]
    Writer(String),
}

/// The SQLite store in `dir/incidents.db`.
pub struct Store {
    db: rusqlite::Connection,
}

impl Store {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("incidents.db")
    }

    /// Opens (creating) the store.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Create {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = Self::path(dir);
        let db = rusqlite::Connection::open(&path).map_err(|source| StoreError::Open {
            path: path.clone(),
            source,
        })?;
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS incidents (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                upstream TEXT NOT NULL,
                started INTEGER NOT NULL,
                ended INTEGER,
                body TEXT NOT NULL
            );",
        )
        .map_err(|source| StoreError::Open { path, source })?;
        Ok(Store { db })
    }

    /// Opens an existing store read-only (for `baton incidents`).
    pub fn open_existing(dir: &Path) -> Result<Store, StoreError> {
        let path = Self::path(dir);
        if !path.exists() {
            return Err(StoreError::Missing(path));
        }
        let db = rusqlite::Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .map_err(|source| StoreError::Open { path, source })?;
        Ok(Store { db })
    }

    /// Records a new incident; returns its id. Drops incidents older than
    /// `max_age` and beyond `max_count`.
    pub fn insert(
        &self,
        i: &Incident,
        max_age: Duration,
        max_count: u64,
    ) -> Result<i64, StoreError> {
        let body = serde_json::to_string(i)?;
        self.db.execute(
            "INSERT INTO incidents (upstream, started, ended, body) VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![i.upstream, i.started, i.ended, body],
        )?;
        let id = self.db.last_insert_rowid();
        let _ = self.db.execute(
            "DELETE FROM incidents WHERE started < ?1",
            rusqlite::params![now_s() - max_age.as_secs() as i64],
        );
        let _ = self.db.execute(
            "DELETE FROM incidents WHERE id NOT IN (SELECT id FROM incidents ORDER BY id DESC LIMIT ?1)",
            rusqlite::params![max_count as i64],
        );
        Ok(id)
    }

    pub fn update(&self, i: &Incident) -> Result<(), StoreError> {
        let body = serde_json::to_string(i)?;
        self.db.execute(
            "UPDATE incidents SET ended = ?1, body = ?2 WHERE id = ?3",
            rusqlite::params![i.ended, body, i.id],
        )?;
        Ok(())
    }

    pub fn list(&self) -> Result<Vec<Incident>, StoreError> {
        let mut st = self
            .db
            .prepare("SELECT id, body FROM incidents ORDER BY id DESC")?;
        let rows = st.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = Vec::new();
        for r in rows {
            let (id, body) = r?;
            let mut i: Incident = serde_json::from_str(&body)?;
            i.id = id;
            out.push(i);
        }
        Ok(out)
    }

    pub fn get(&self, id: i64) -> Result<Option<Incident>, StoreError> {
        Ok(self.list()?.into_iter().find(|i| i.id == id))
    }
}

/// The store as the detector uses it: every write on a blocking thread
/// (a slow disk never holds a runtime worker), a failing store logged once
/// when it starts failing and once when it works again, and an incident
/// that could not be inserted inserted at its next save.
struct Recorder {
    store: Option<Arc<Mutex<Store>>>,
    dir: PathBuf,
    max_age: Duration,
    max_count: u64,
    failing: bool,
}

impl Recorder {
    fn open(cfg: &IncidentConfig) -> Recorder {
        let store = match &cfg.dir {
            None => None,
            Some(dir) => match Store::open(dir) {
                Ok(s) => Some(Arc::new(Mutex::new(s))),
                Err(e) => {
                    tracing::error!(target: "baton::incidents", error = %e, "incident store unavailable: incidents are detected and alerted but not recorded; fix the directory (space, permissions) and restart");
                    None
                }
            },
        };
        Recorder {
            store,
            dir: cfg.dir.clone().unwrap_or_default(),
            max_age: cfg.max_age,
            max_count: cfg.max_incidents,
            failing: false,
        }
    }

    /// Inserts (id 0) or updates the incident; returns its id, still 0 when
    /// it could not be recorded.
    async fn save(&mut self, i: &Incident) -> i64 {
        let Some(s) = self.store.clone() else {
            return i.id;
        };
        let (inc, age, count) = (i.clone(), self.max_age, self.max_count);
        let r = tokio::task::spawn_blocking(move || {
            let s = s.lock().unwrap_or_else(|e| e.into_inner());
            if inc.id == 0 {
                s.insert(&inc, age, count)
            } else {
                s.update(&inc).map(|()| inc.id)
            }
        })
        .await
        .unwrap_or_else(|e| Err(StoreError::Writer(e.to_string())));
        match r {
            Ok(id) => {
                if std::mem::take(&mut self.failing) {
                    tracing::info!(target: "baton::incidents", dir = %self.dir.display(), "incident store writable again");
                }
                id
            }
            Err(e) => {
                if !std::mem::replace(&mut self.failing, true) {
                    tracing::error!(target: "baton::incidents", error = %e, dir = %self.dir.display(), "cannot record incidents: they are still detected, alerted and shown on the dashboard (id 0); free space or fix permissions in the directory, baton tries again at each change");
                }
                i.id
            }
        }
    }
}

// ------------------------------------------------------------- detector

/// Per upstream: the cumulative tallies of the last `window` seconds and
/// the open incident, if any.
/// Tallies at one tick: time, requests, failures, causes, routes.
type Tally = (
    i64,
    u64,
    u64,
    HashMap<&'static str, u64>,
    HashMap<String, u64>,
);

struct Watch {
    history: VecDeque<Tally>,
    open: Option<Incident>,
    /// Tallies when the incident opened (the breakdown is the difference).
    base: (u64, u64, HashMap<&'static str, u64>, HashMap<String, u64>),
    calm_since: Option<i64>,
    last_alert: Option<i64>,
    restarts: Option<u64>,
}

/// What the detector asks the gateway about an upstream each second.
pub struct UpstreamNow {
    /// `Some(false)`: none of its servers is usable (health checks,
    /// ejections); `None`: unknown (no such upstream now).
    pub usable: Option<bool>,
    /// A supervised backend's restart count.
    pub restarts: Option<u64>,
}

/// Runs until the gateway stops: once a second, checks every upstream.
/// Without `[incidents]` it only keeps the dashboard's series. Ends when
/// `state` says the gateway is gone.
pub async fn detect(
    tracks: Arc<Tracks>,
    cfg: IncidentConfig,
    alerts: AlertConfig,
    state: impl Fn(&str) -> Option<UpstreamNow> + Send + 'static,
    lines: impl Fn(&str) -> Vec<String> + Send + 'static,
) {
    let mut store = Recorder::open(&cfg);
    let mut watches: HashMap<Arc<str>, Watch> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // At start no server is usable until its first health checks pass:
    // that alone opens nothing for one window.
    let started = now_s();
    loop {
        tick.tick().await;
        let now = now_s();
        // The dashboard's series: totals over every upstream.
        let mut point = SeriesPoint {
            time: now,
            ..SeriesPoint::default()
        };
        for (_, track) in tracks.all() {
            point.requests += track.requests.load(Ordering::Relaxed);
            point.failures += track.failures.load(Ordering::Relaxed);
            for (c, n) in &track
                .detail
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .causes
            {
                *point.causes.entry(c).or_default() += n;
            }
        }
        tracks.push_series(point);
        if state("").is_none() {
            return; // the gateway is gone
        }
        for (name, track) in tracks.all() {
            let w = watches.entry(name.clone()).or_insert_with(|| Watch {
                history: VecDeque::new(),
                open: None,
                base: Default::default(),
                calm_since: None,
                last_alert: None,
                restarts: None,
            });
            let Some(st) = state(&name) else { return };
            if let (Some(was), Some(now_r)) = (w.restarts, st.restarts)
                && now_r > was
            {
                tracks.event(
                    "backend_restart",
                    Some(&name),
                    format!("supervised backend restarted (restart {now_r})"),
                );
            }
            w.restarts = st.restarts.or(w.restarts);
            let req = track.requests.load(Ordering::Relaxed);
            let fail = track.failures.load(Ordering::Relaxed);
            let (causes, routes) = {
                let d = track.detail.lock().unwrap_or_else(|e| e.into_inner());
                (d.causes.clone(), d.routes.clone())
            };
            // The tally before any request counts from zero.
            if w.history.is_empty() {
                w.history
                    .push_back((now - 1, 0, 0, HashMap::new(), HashMap::new()));
            }
            w.history.push_back((now, req, fail, causes, routes));
            while w.history.len() > 1
                && w.history
                    .front()
                    .is_some_and(|(t, ..)| *t < now - cfg.window.as_secs() as i64)
            {
                w.history.pop_front();
            }
            let (r0, f0) = w.history.front().map_or((req, fail), |h| (h.1, h.2));
            let (dr, df) = (req - r0, fail - f0);
            let rate = if dr == 0 { 0.0 } else { df as f64 / dr as f64 };
            let none_usable =
                st.usable == Some(false) && now - started >= cfg.window.as_secs() as i64;
            let bad = (dr >= cfg.min_requests && rate >= cfg.error_rate) || none_usable;
            match &mut w.open {
                None if bad => {
                    let reason =
                        if none_usable && !(dr >= cfg.min_requests && rate >= cfg.error_rate) {
                            "no usable server".to_string()
                        } else {
                            format!(
                                "{:.0}% of {dr} requests failed in {}s",
                                rate * 100.0,
                                cfg.window.as_secs()
                            )
                        };
                    // Counted from the start of the window that opened it.
                    w.base = w
                        .history
                        .front()
                        .map(|h| (h.1, h.2, h.3.clone(), h.4.clone()))
                        .unwrap_or_default();
                    // It started when the window first saw a failure
                    // (never before the gateway did: the history starts
                    // with it).
                    let started = w.history.iter().find(|h| h.2 > f0).map_or(now, |h| h.0);
                    let mut i = Incident {
                        upstream: name.to_string(),
                        started,
                        reason,
                        peak_rate: rate,
                        ..Incident::default()
                    };
                    fill(&mut i, &track, &w.base, req, fail, &tracks, &lines);
                    i.id = store.save(&i).await;
                    tracing::error!(target: "baton::incidents", id = i.id, upstream = %name, reason = %i.reason, "incident opened");
                    if w.last_alert
                        .is_none_or(|t| now - t >= alerts.min_interval.as_secs() as i64)
                    {
                        w.last_alert = Some(now);
                        send_alert(&alerts, "incident_opened", &i);
                    }
                    w.calm_since = None;
                    tracks.set_open(&name, Some(&i));
                    w.open = Some(i);
                }
                None => {}
                Some(i) => {
                    i.peak_rate = i.peak_rate.max(rate);
                    fill(i, &track, &w.base, req, fail, &tracks, &lines);
                    let calm = !none_usable && rate < cfg.error_rate / 2.0;
                    if !calm {
                        w.calm_since = None;
                    } else if w.calm_since.is_none() {
                        w.calm_since = Some(now);
                    }
                    let closed = w
                        .calm_since
                        .is_some_and(|t| now - t >= cfg.recover_after.as_secs() as i64);
                    if closed {
                        i.ended = Some(now);
                        fill(i, &track, &w.base, req, fail, &tracks, &lines);
                    }
                    if closed || now % 10 == 0 {
                        i.id = store.save(i).await;
                    }
                    if closed {
                        tracing::info!(target: "baton::incidents", id = i.id, upstream = %name, failures = i.failures, "incident closed");
                        send_alert(&alerts, "incident_closed", i);
                        tracks.set_open(&name, None);
                        w.open = None;
                    } else {
                        tracks.set_open(&name, Some(i));
                    }
                }
            }
        }
    }
}

/// Brings an incident's counts, breakdowns, samples and events up to date.
fn fill(
    i: &mut Incident,
    track: &Track,
    base: &(u64, u64, HashMap<&'static str, u64>, HashMap<String, u64>),
    req: u64,
    fail: u64,
    tracks: &Tracks,
    lines: &dyn Fn(&str) -> Vec<String>,
) {
    i.requests = req.saturating_sub(base.0);
    i.failures = fail.saturating_sub(base.1);
    let d = track.detail.lock().unwrap_or_else(|e| e.into_inner());
    for (c, n) in &d.causes {
        let was = base.2.get(c).copied().unwrap_or(0);
        if *n > was {
            i.causes.insert(c.to_string(), n - was);
        }
    }
    for (r, n) in &d.routes {
        let was = base.3.get(r).copied().unwrap_or(0);
        if *n > was {
            i.routes.insert(r.clone(), n - was);
        }
    }
    for s in &d.samples {
        if s.time >= i.started - 60
            && i.samples.len() < SAMPLES
            && !i.samples.iter().any(|x| x.request_id == s.request_id)
        {
            i.samples.push(s.clone());
        }
    }
    drop(d);
    // Their log lines, while baton still keeps them in memory.
    for s in i.samples.iter_mut().filter(|s| s.lines.is_empty()) {
        s.lines = lines(&s.request_id);
    }
    i.events = tracks.events_between(i.started - 300, i.ended.unwrap_or(now_s()));
}

// --------------------------------------------------------------- alerts

/// The alert body: JSON, or Slack's `{"text": ...}`.
pub fn alert_body(event: &str, i: &Incident, slack: bool) -> String {
    if slack {
        let what = if event == "incident_opened" {
            format!(
                ":rotating_light: baton: incident #{} opened on upstream *{}*: {}",
                i.id, i.upstream, i.reason
            )
        } else {
            format!(
                ":white_check_mark: baton: incident #{} on upstream *{}* closed after {}s ({} failures)",
                i.id,
                i.upstream,
                i.ended.unwrap_or(i.started) - i.started,
                i.failures
            )
        };
        let causes: Vec<String> = i.causes.iter().map(|(c, n)| format!("{c} x{n}")).collect();
        serde_json::json!({"text": format!("{what}\ncauses: {}", if causes.is_empty() { "-".into() } else { causes.join(", ") })}).to_string()
    } else {
        serde_json::json!({"event": event, "incident": i}).to_string()
    }
}

/// Sends an alert in the background: never blocks the detector. Retried
/// three times with a growing pause; each failure is logged.
fn send_alert(cfg: &AlertConfig, event: &'static str, i: &Incident) {
    deliver(
        cfg,
        event,
        alert_body(event, i, cfg.slack),
        alert_body(event, i, false),
        vec![
            ("BATON_INCIDENT_ID", i.id.to_string()),
            ("BATON_UPSTREAM", i.upstream.clone()),
            ("BATON_REASON", i.reason.clone()),
        ],
    );
}

/// A notice that is no incident (a certificate about to expire), sent
/// where incident alerts go: the webhook gets `{"event", "text"}` (Slack:
/// `{"text"}`), the command `BATON_EVENT`, `BATON_REASON` and the JSON
/// on stdin.
pub fn send_notice(cfg: &AlertConfig, event: &'static str, text: &str) {
    let json = serde_json::json!({"event": event, "text": text}).to_string();
    let web = if cfg.slack {
        serde_json::json!({"text": format!(":warning: baton: {text}")}).to_string()
    } else {
        json.clone()
    };
    deliver(
        cfg,
        event,
        web,
        json,
        vec![("BATON_REASON", text.to_string())],
    );
}

/// Delivers an alert to the webhook (`web_body`) and the command
/// (`cmd_body` on stdin, `env` and `BATON_EVENT` in its environment), in
/// the background. The webhook is tried three times with a growing pause;
/// each failure is logged.
fn deliver(
    cfg: &AlertConfig,
    event: &'static str,
    web_body: String,
    cmd_body: String,
    env: Vec<(&'static str, String)>,
) {
    if let Some(url) = cfg.webhook.clone() {
        let body = web_body;
        let ca = cfg.webhook_ca.clone();
        tokio::spawn(async move {
            let shown = shown_url(&url);
            for attempt in 1..=3u32 {
                match crate::upstream::post(&url, &ca, "application/json", body.clone().into())
                    .await
                    .map(|(s, _)| s)
                {
                    Ok(s) if (200..300).contains(&s) => return,
                    Ok(s) => {
                        tracing::warn!(target: "baton::alerts", url = %shown, status = s, attempt, "webhook refused the alert")
                    }
                    Err(e) => {
                        tracing::warn!(target: "baton::alerts", url = %shown, error = %e, attempt, "webhook unreachable")
                    }
                }
                tokio::time::sleep(Duration::from_secs(1 << attempt)).await;
            }
            tracing::error!(target: "baton::alerts", url = %shown, event, "alert not delivered after 3 attempts");
        });
    }
    if let Some(cmd) = cfg.command.clone() {
        let body = cmd_body;
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let child = tokio::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(&cmd)
                .env("BATON_EVENT", event)
                .envs(env)
                .stdin(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn();
            let mut child = match child {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(target: "baton::alerts", command = %cmd, error = %e, "alert command did not start");
                    return;
                }
            };
            if let Some(mut stdin) = child.stdin.take() {
                let _ = stdin.write_all(body.as_bytes()).await;
            }
            match tokio::time::timeout(Duration::from_secs(30), child.wait()).await {
                Ok(Ok(s)) if s.success() => {}
                Ok(Ok(s)) => {
                    tracing::warn!(target: "baton::alerts", command = %cmd, status = %s, "alert command failed")
                }
                _ => {
                    tracing::warn!(target: "baton::alerts", command = %cmd, "alert command did not finish in 30s")
                }
            }
        });
    }
}

// --------------------------------------------------------------- output

fn when(t: i64) -> String {
    crate::core::clock::clock(t)
}

/// `baton incidents`: one line each, newest first.
pub fn list_text(v: &[Incident]) -> String {
    if v.is_empty() {
        return "no incidents recorded\n".into();
    }
    let mut o = String::from(
        "  id  upstream          started              duration  failures  peak   reason\n",
    );
    for i in v {
        let dur = match i.ended {
            Some(e) => format!("{}s", e - i.started),
            None => "open".into(),
        };
        o.push_str(&format!(
            "{:>4}  {:<16}  {}  {:>8}  {:>8}  {:>4.0}%  {}\n",
            i.id,
            i.upstream,
            when(i.started),
            dur,
            i.failures,
            i.peak_rate * 100.0,
            i.reason
        ));
    }
    o
}

/// `baton report ID`: the escalation report in Markdown.
pub fn report_md(i: &Incident) -> String {
    let mut o = format!("# Incident #{} on upstream `{}`\n\n", i.id, i.upstream);
    o.push_str(&format!("- **Started:** {} UTC\n", when(i.started)));
    match i.ended {
        Some(e) => o.push_str(&format!(
            "- **Ended:** {} UTC ({}s)\n",
            when(e),
            e - i.started
        )),
        None => o.push_str("- **Ended:** still open\n"),
    }
    o.push_str(&format!("- **Why it opened:** {}\n", i.reason));
    o.push_str(&format!(
        "- **How bad:** {} of {} requests failed; peak failure rate {:.0}%\n\n",
        i.failures,
        i.requests,
        i.peak_rate * 100.0
    ));
    o.push_str("## Causes\n\n| cause | requests | Proxy-Status | what usually causes it | fix |\n|---|---|---|---|---|\n");
    let mut causes: Vec<(&String, &u64)> = i.causes.iter().collect();
    causes.sort_by_key(|(_, n)| std::cmp::Reverse(**n));
    for (c, n) in causes {
        let (ps, seen, fix) =
            Cause::from_id(c).map_or(("", "", ""), |c| (c.proxy_status(), c.seen_when(), c.fix()));
        o.push_str(&format!("| `{c}` | {n} | `{ps}` | {seen} | {fix} |\n"));
    }
    o.push_str("\n## Routes affected\n\n");
    for (r, n) in &i.routes {
        o.push_str(&format!("- `{r}`: {n} failed requests\n"));
    }
    o.push_str("\n## Sample requests\n\nSearch baton's logs for these request IDs (`X-Request-Id`; `baton logs` reads them too).\n\n| time | request id | route | path | cause | status |\n|---|---|---|---|---|---|\n");
    for s in &i.samples {
        o.push_str(&format!(
            "| {} | `{}` | {} | `{}` | `{}` | {} |\n",
            when(s.time),
            s.request_id,
            s.route,
            s.path.replace('|', "%7C"),
            s.cause,
            s.status
        ));
    }
    let logged: Vec<&String> = i.samples.iter().flat_map(|s| &s.lines).take(5).collect();
    if !logged.is_empty() {
        o.push_str("\nTheir failure log lines (the first five):\n\n```\n");
        for l in logged {
            o.push_str(l);
            o.push('\n');
        }
        o.push_str("```\n");
    }
    o.push_str("\n## What changed around it\n\nReloads, servers marked down or ejected, backend restarts, from 5 minutes before the start to the end.\n\n");
    if i.events.is_empty() {
        o.push_str("Nothing changed in that time.\n");
    }
    for e in &i.events {
        o.push_str(&format!(
            "- {} **{}**{}: {}\n",
            when(e.time),
            e.kind,
            e.upstream
                .as_deref()
                .map_or(String::new(), |u| format!(" (`{u}`)")),
            e.text
        ));
    }
    o.push_str("\n## For your hosting provider\n\n");
    o.push_str(&format!(
        "Between {} and {} UTC, requests to upstream `{}` failed ({}). Please check whether its servers were restarted, out of memory, overloaded or unreachable in that window; the request IDs above identify individual failures.\n",
        when(i.started),
        i.ended.map_or("now".to_string(), when),
        i.upstream,
        i.causes.keys().cloned().collect::<Vec<_>>().join(", ")
    ));
    o
}

/// The same report as a standalone HTML page (no external assets).
pub fn report_html(i: &Incident) -> String {
    let esc = crate::core::text::html_escape;
    let md = report_md(i);
    let mut body = String::new();
    let mut in_table = false;
    let mut in_code = false;
    for line in md.lines() {
        if line == "```" {
            body.push_str(if in_code { "</pre>\n" } else { "<pre>" });
            in_code = !in_code;
            continue;
        }
        if in_code {
            body.push_str(&esc(line));
            body.push('\n');
            continue;
        }
        if let Some(h) = line.strip_prefix("# ") {
            body.push_str(&format!("<h1>{}</h1>\n", esc(h)));
        } else if let Some(h) = line.strip_prefix("## ") {
            body.push_str(&format!("<h2>{}</h2>\n", esc(h)));
        } else if line.starts_with('|') {
            if line.starts_with("|---") {
                continue;
            }
            if !in_table {
                body.push_str("<table>\n");
                in_table = true;
            }
            let cells: Vec<String> = line
                .trim_matches('|')
                .split(" | ")
                .map(|c| format!("<td>{}</td>", esc(c.trim()).replace('`', "")))
                .collect();
            body.push_str(&format!("<tr>{}</tr>\n", cells.join("")));
            continue;
        } else if let Some(item) = line.strip_prefix("- ") {
            body.push_str(&format!(
                "<li>{}</li>\n",
                esc(item).replace("**", "").replace('`', "")
            ));
        } else if !line.is_empty() {
            body.push_str(&format!("<p>{}</p>\n", esc(line).replace('`', "")));
        }
        if in_table {
            body.push_str("</table>\n");
            in_table = false;
        }
    }
    if in_table {
        body.push_str("</table>\n");
    }
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Incident #{} on {}</title>\n<style>body{{font:15px/1.5 system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em;color:#222}}table{{border-collapse:collapse}}td{{border:1px solid #ccc;padding:.2em .5em;vertical-align:top}}tr:first-child td{{font-weight:bold;background:#f4f4f4}}pre{{background:#f4f4f4;padding:.6em;white-space:pre-wrap;word-break:break-all;font-size:12px}}</style></head><body>\n{body}</body></html>\n",
        i.id,
        esc(&i.upstream)
    )
}
