//! Structured logs: one JSON line per failure, one access-log line per
//! request (JSON or the combined format that GoAccess reads).
//!
//! Owns: log sinks and the line formats. Lines are handed to a writer thread
//! through a bounded channel; when it is full the line is dropped and
//! counted, so logging never blocks a request.
//! Must not: decide what a failure is (records arrive classified).

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::config::{AccessFormat, LogConfig, LogPiece, LogTarget, LogVar};

const QUEUE_LINES: usize = 65_536;

/// How long a line may wait to be written with the ones after it.
const BATCH: Duration = Duration::from_millis(10);

/// A destination for log lines, written by its own thread.
pub struct Sink {
    tx: Option<SyncSender<Vec<u8>>>,
    pub dropped: Arc<AtomicU64>,
}

impl Sink {
    pub fn open(target: &LogTarget) -> io::Result<Sink> {
        let mut out: Box<dyn Write + Send> = match target {
            LogTarget::Off => {
                return Ok(Sink {
                    tx: None,
                    dropped: Arc::default(),
                });
            }
            LogTarget::Stdout => Box::new(io::stdout()),
            LogTarget::Stderr => Box::new(io::stderr()),
            LogTarget::File(p) => Box::new(OpenOptions::new().create(true).append(true).open(p)?),
        };
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(QUEUE_LINES);
        std::thread::Builder::new()
            .name("baton-log".into())
            .spawn(move || {
                // Woken by the first line, the writer lets lines gather for
                // BATCH before writing them all: under load a request's
                // line then costs no wake-up (a futex call and a context
                // switch) and no write of its own, as nginx's `buffer=`.
                let mut buf = Vec::with_capacity(64 * 1024);
                while let Ok(line) = rx.recv() {
                    buf.extend_from_slice(&line);
                    std::thread::sleep(BATCH);
                    while let Ok(l) = rx.try_recv() {
                        buf.extend_from_slice(&l);
                        if buf.len() >= 64 * 1024 {
                            let _ = out.write_all(&buf);
                            buf.clear();
                        }
                    }
                    let _ = out.write_all(&buf).and_then(|_| out.flush());
                    buf.clear();
                }
            })?;
        Ok(Sink {
            tx: Some(tx),
            dropped: Arc::default(),
        })
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    pub fn write(&self, line: Vec<u8>) {
        if let Some(tx) = &self.tx
            && let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = tx.try_send(line)
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Both logs of a running gateway.
pub struct Logs {
    pub access: Sink,
    pub access_format: AccessFormat,
    pub errors: Sink,
    /// The latest failure lines (request ID, JSON line), for the
    /// dashboard: kept whatever the error log's destination.
    recent: std::sync::Mutex<std::collections::VecDeque<(String, String)>>,
}

/// Failure lines the dashboard can open.
const RECENT_FAILURES: usize = 500;

impl Logs {
    pub fn open(cfg: &LogConfig) -> io::Result<Logs> {
        Ok(Logs {
            access: Sink::open(&cfg.access)?,
            access_format: cfg.access_format.clone(),
            errors: Sink::open(&cfg.errors)?,
            recent: Default::default(),
        })
    }

    pub fn failure(&self, r: &FailureRecord<'_>) {
        let mut v = serde_json::to_vec(r).unwrap_or_default();
        {
            let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            if recent.len() == RECENT_FAILURES {
                recent.pop_front();
            }
            recent.push_back((
                r.request_id.to_string(),
                String::from_utf8_lossy(&v).into_owned(),
            ));
        }
        if self.errors.enabled() {
            v.push(b'\n');
            self.errors.write(v);
        }
    }

    /// The failure lines kept for a request ID, oldest first.
    pub fn failure_lines(&self, request_id: &str) -> Vec<String> {
        self.recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(id, _)| id == request_id)
            .map(|(_, l)| l.clone())
            .collect()
    }

    pub fn access(&self, r: &AccessRecord<'_>) {
        if !self.access.enabled() {
            return;
        }
        let line = match &self.access_format {
            AccessFormat::Json => {
                // Sized for a whole line at once (to_vec starts at 128
                // bytes and grows twice for a typical 300-byte line).
                let mut v = Vec::with_capacity(384 + r.path.len() + r.user_agent.len());
                let _ = serde_json::to_writer(&mut v, r);
                v.push(b'\n');
                v
            }
            AccessFormat::Combined => combined(r),
            AccessFormat::Template(pieces) => templated(pieces, r),
        };
        self.access.write(line);
    }
}

/// One failed attempt (or a failure of the response body).
#[derive(Serialize)]
pub struct FailureRecord<'a> {
    pub time: String,
    pub level: &'static str,
    pub msg: &'static str,
    pub request_id: &'a str,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub route: Option<&'a str>,
    pub upstream: Option<&'a str>,
    pub server: Option<&'a str>,
    pub phase: &'static str,
    pub cause: &'static str,
    pub proxy_status: &'static str,
    /// The status the client got; null when baton retried instead.
    pub status: Option<u16>,
    pub details: Option<&'a str>,
    pub errno: Option<i32>,
    /// The status line the upstream sent before failing, if any.
    pub received_status: Option<u16>,
    pub reused: bool,
    pub idle_ms: Option<u64>,
    pub attempt: u32,
    /// What baton did next: "next_server", "fresh_connection", or null.
    pub retry: Option<&'static str>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub duration_ms: f64,
}

#[derive(Serialize)]
pub struct AccessRecord<'a> {
    #[serde(serialize_with = "ser_time")]
    pub time: SystemTime,
    pub request_id: &'a str,
    pub client: std::net::IpAddr,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub protocol: &'static str,
    pub status: u16,
    pub bytes: u64,
    pub duration_ms: f64,
    pub route: Option<&'a str>,
    pub upstream: Option<&'a str>,
    pub server: Option<&'a str>,
    pub attempts: u32,
    pub cause: Option<&'static str>,
    pub referer: &'a str,
    pub user_agent: &'a str,
}

fn ser_time<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&crate::core::clock::Rfc3339(*t))
}

/// The combined format (nginx's and Apache's default), written straight
/// into the line: no string per field.
fn combined(r: &AccessRecord<'_>) -> Vec<u8> {
    // `"` and `\` escaped as nginx does.
    fn escaped(out: &mut Vec<u8>, s: &str) {
        for &b in s.as_bytes() {
            if b == b'"' || b == b'\\' {
                out.push(b'\\');
            }
            out.push(b);
        }
    }
    fn quoted(out: &mut Vec<u8>, s: &str) {
        out.push(b'"');
        escaped(out, if s.is_empty() { "-" } else { s });
        out.push(b'"');
    }
    let mut out = Vec::with_capacity(128 + r.path.len() + r.user_agent.len() + r.referer.len());
    let _ = write!(out, "{} - - [", r.client);
    clf_time(&mut out, r.time);
    if r.method.is_empty() {
        // No request line could be read (nginx writes "-" too).
        let _ = write!(out, "] \"-\" {} ", r.status);
    } else {
        let _ = write!(out, "] \"{} ", r.method);
        escaped(&mut out, r.path);
        let _ = write!(out, " {}\" {} ", r.protocol, r.status);
    }
    if r.bytes == 0 {
        out.push(b'-');
    } else {
        let _ = write!(out, "{}", r.bytes);
    }
    out.push(b' ');
    quoted(&mut out, r.referer);
    out.push(b' ');
    quoted(&mut out, r.user_agent);
    out.push(b'\n');
    out
}

/// A line from an access-log template; nginx's `-` for a value baton
/// does not have, and nginx's `\xHH` for a quote, a backslash or a
/// control byte a client sent (so a field cannot forge another).
fn templated(pieces: &[LogPiece], r: &AccessRecord<'_>) -> Vec<u8> {
    fn or_dash(out: &mut Vec<u8>, s: Option<&str>) {
        match s {
            Some(s) if !s.is_empty() => {
                for &b in s.as_bytes() {
                    if b == b'"' || b == b'\\' || b < 0x20 || b == 0x7f {
                        let _ = write!(out, "\\x{b:02X}");
                    } else {
                        out.push(b);
                    }
                }
            }
            _ => out.push(b'-'),
        }
    }
    let mut out = Vec::with_capacity(128 + r.path.len() + r.user_agent.len());
    for p in pieces {
        match p {
            LogPiece::Text(t) => out.extend_from_slice(t.as_bytes()),
            LogPiece::Var(v) => match v {
                LogVar::RemoteAddr => {
                    let _ = write!(out, "{}", r.client);
                }
                LogVar::TimeLocal => clf_time(&mut out, r.time),
                LogVar::TimeIso8601 => {
                    let _ = write!(out, "{}", crate::core::clock::Rfc3339(r.time));
                }
                LogVar::Request if r.method.is_empty() => out.push(b'-'),
                LogVar::Request => {
                    let _ = write!(out, "{} ", r.method);
                    or_dash(&mut out, Some(r.path));
                    let _ = write!(out, " {}", r.protocol);
                }
                LogVar::RequestMethod => or_dash(&mut out, Some(r.method)),
                LogVar::RequestUri => or_dash(&mut out, Some(r.path)),
                LogVar::ServerProtocol => or_dash(&mut out, Some(r.protocol)),
                LogVar::Host => or_dash(&mut out, Some(r.host)),
                LogVar::Status => {
                    let _ = write!(out, "{}", r.status);
                }
                LogVar::BodyBytesSent => {
                    let _ = write!(out, "{}", r.bytes);
                }
                LogVar::RequestTime => {
                    let _ = write!(out, "{:.3}", r.duration_ms / 1000.0);
                }
                LogVar::HttpReferer => or_dash(&mut out, Some(r.referer)),
                LogVar::HttpUserAgent => or_dash(&mut out, Some(r.user_agent)),
                LogVar::RequestId => or_dash(&mut out, Some(r.request_id)),
                LogVar::UpstreamAddr => or_dash(&mut out, r.server),
                LogVar::Upstream => or_dash(&mut out, r.upstream),
                LogVar::Route => or_dash(&mut out, r.route),
                LogVar::Attempts => {
                    let _ = write!(out, "{}", r.attempts);
                }
                LogVar::Cause => or_dash(&mut out, r.cause),
            },
        }
    }
    out.push(b'\n');
    out
}

fn clf_time(out: &mut Vec<u8>, t: SystemTime) {
    const M: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (y, mo, d, h, mi, s, _) = crate::core::clock::civil(t);
    let _ = write!(
        out,
        "{d:02}/{}/{y:04}:{h:02}:{mi:02}:{s:02} +0000",
        M[(mo - 1) as usize]
    );
}

/// baton's own log lines (tracing's events: start, reload, health,
/// supervised backends, incidents) in the failure lines' shape: one JSON
/// object a line, `{"time", "level", "msg", "target", ...fields}`, the
/// time in RFC 3339 UTC and the level in lower case, fields at the top.
/// Written by hand: tracing-subscriber's JSON nests the fields under
/// `"fields"` and names the time `"timestamp"`, a second shape for
/// readers of the same stream.
pub struct OneShape;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for OneShape
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut w: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let meta = event.metadata();
        let mut fields = Fields(serde_json::Map::new());
        event.record(&mut fields);
        let mut line = serde_json::Map::new();
        line.insert("time".into(), crate::core::clock::now().into());
        line.insert(
            "level".into(),
            meta.level().as_str().to_ascii_lowercase().into(),
        );
        line.insert("msg".into(), fields.0.remove("message").unwrap_or_default());
        line.insert("target".into(), meta.target().into());
        line.extend(fields.0);
        writeln!(w, "{}", serde_json::Value::Object(line))
    }
}

/// An event's fields, as JSON values.
struct Fields(serde_json::Map<String, serde_json::Value>);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
        self.0.insert(f.name().into(), format!("{v:?}").into());
    }
    fn record_str(&mut self, f: &tracing::field::Field, v: &str) {
        self.0.insert(f.name().into(), v.into());
    }
    fn record_i64(&mut self, f: &tracing::field::Field, v: i64) {
        self.0.insert(f.name().into(), v.into());
    }
    fn record_u64(&mut self, f: &tracing::field::Field, v: u64) {
        self.0.insert(f.name().into(), v.into());
    }
    fn record_bool(&mut self, f: &tracing::field::Field, v: bool) {
        self.0.insert(f.name().into(), v.into());
    }
    fn record_f64(&mut self, f: &tracing::field::Field, v: f64) {
        self.0.insert(f.name().into(), v.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        let t = std::time::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(crate::core::clock::rfc3339(t), "2023-11-14T22:13:20.123Z");
        let mut clf = Vec::new();
        clf_time(&mut clf, t);
        assert_eq!(clf, b"14/Nov/2023:22:13:20 +0000");
    }
}
