//! The attempt loop: a concurrency slot (or 503), a supervised backend
//! held while it starts, then attempts until one gets a response head or
//! the retry decision ([`retry::plan`]) says the failure is the answer.
//! Each attempt chooses a server, takes a pooled connection or opens one,
//! and runs one [`exchange`]; its outcome feeds passive health, the
//! adaptive limit and the logs.
//!
//! Must not: classify raw errors (`upstream` does), or decide a retry
//! anywhere but through [`retry::plan`].

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use http::{Response, StatusCode};
use hyper_util::rt::TokioIo;

use super::body::{Held, InFlight, PoolReturn, ProxiedBody, Upstreamed};
use super::context::Ctx;
use super::headers;
use super::log::AttemptLog;
use super::respond::Answer;
use super::retry::{self, Budget, Facts, Stage};
use super::upstream_request::UpRequest;
use crate::config::{RetryPolicy, UpstreamConfig};
use crate::core::body::ClientUpgrade;
use crate::core::cause::Cause;
use crate::core::clock::now_ms;
use crate::core::failure::Failure;
use crate::gateway::Gateway;
use crate::observe::metrics::{RetryLabels, UpstreamLabels};
use crate::upstream::balance::{Shed, Slot, backoff};
use crate::upstream::exchange::{self, Head, NoHead};
use crate::upstream::supervise::Supervisor;
use crate::upstream::{Conn, Server, TimedBody, UpBody, UpIncoming, Upstream, health};

/// The loop's state across attempts.
struct Attempts<'a> {
    up: &'a Arc<Upstream>,
    cfg: &'a Arc<UpstreamConfig>,
    policy: &'a RetryPolicy,
    /// Attempts allowed after the first.
    retries: usize,
    deadline: Option<Instant>,
    supervisor: Option<Arc<Supervisor>>,
    /// Servers tried, by index.
    tried: Vec<usize>,
    /// The server of a replay on a fresh connection, or after a restart.
    again: Option<usize>,
    used: retry::Used,
    permit: Option<Slot>,
    /// One clock read serves an attempt (budget, choice, success).
    now: u64,
}

/// A failed attempt, as the retry decision and the logs see it.
struct Failed {
    failure: Failure,
    stage: Stage,
    log: AttemptLog,
    server: usize,
    generation: u64,
    reused: bool,
    per_try_expired: bool,
}

/// Runs attempts until one answers.
///
/// An `async move` block (not an `async fn`, which would keep the request
/// twice in the future: as its argument and as the local it is moved to).
#[allow(clippy::manual_async_fn)] // the future's size: see the comment
pub(super) fn run(ctx: &mut Ctx, mut req: UpRequest) -> impl Future<Output = Answer> + Send {
    async move {
        let rt = ctx.rt.clone();
        let route = &rt.config.routes[ctx.route_index.expect("routed")];
        let up = &rt.upstreams[ctx.upstream_index()];
        let mut l = Attempts {
            up,
            cfg: &up.cfg,
            policy: &route.retry,
            retries: route.retry.retries.unwrap_or(up.cfg.retries) as usize,
            deadline: route.retry.deadline.map(|d| ctx.start + d),
            supervisor: up
                .cfg
                .process
                .as_ref()
                .and_then(|_| ctx.gw.supervisor(&up.cfg.name)),
            tried: Vec::with_capacity(2),
            again: None,
            used: retry::Used::default(),
            permit: None,
            now: now_ms(),
        };
        up.budget.request(l.now);
        match slot(ctx, &l).await {
            Ok(p) => l.permit = p,
            Err(a) => return a,
        }
        // A supervised backend that is (re)starting: hold the request briefly.
        if let Some(sup) = &l.supervisor
            && let Err(f) = sup.wait_ready(None, ctx.start).await
        {
            return backend_unavailable(ctx, sup, f);
        }
        loop {
            if let Some(answer) = attempt(ctx, &mut l, &mut req).await {
                return answer;
            }
        }
    }
}

/// The upstream's concurrency limit: a slot, or shed with 503.
async fn slot(ctx: &Ctx, l: &Attempts<'_>) -> Result<Option<Slot>, Answer> {
    let Some(slots) = &l.up.slots else {
        return Ok(None);
    };
    let why = match slots.acquire(l.cfg.queue_timeout).await {
        Ok(p) => return Ok(Some(p)),
        Err(why) => why,
    };
    let reason = match why {
        Shed::QueueFull => "queue_full",
        Shed::QueueTimeout => "queue_timeout",
    };
    ctx.gw.metrics.shed(&l.cfg.name, reason);
    let f = Failure::with(
        Cause::ConcurrencyLimit,
        format!(
            "{} requests in flight to {} and {reason}",
            l.cfg.max_concurrent.unwrap_or(0),
            l.cfg.name
        ),
    );
    ctx.failure(&f, Some(f.cause.status()), None, None);
    Err(Answer::Failure {
        failure: f,
        next_hop: None,
        retry_after: Some(l.cfg.queue_timeout.as_secs().max(1)),
    })
}

/// One attempt: `Some` is the request's answer, `None` means try again.
async fn attempt(ctx: &mut Ctx, l: &mut Attempts<'_>, req: &mut UpRequest) -> Option<Answer> {
    if ctx.attempts > 0 {
        l.now = now_ms();
    }
    let fresh_only = l.again.is_some();
    let Some(si) = l
        .again
        .take()
        .or_else(|| l.up.choose(&l.tried, req.hash_key, l.now))
    else {
        // Only reachable on the first attempt: a retry is only taken when
        // another server was found.
        return Some(no_server(ctx, l));
    };
    if !l.tried.contains(&si) {
        l.tried.push(si);
    }
    ctx.attempts += 1;
    let generation = l.supervisor.as_ref().map_or(0, |s| s.generation());
    let server = l.up.servers[si].clone();
    ctx.server = Some(server.label.clone());
    let busy = InFlight::new(server.clone());
    let mut conn = match connection(ctx, l, &server, fresh_only).await {
        Ok(c) => c,
        Err((failure, peer)) => {
            ctx.server = Some(peer.clone());
            let failed = Failed {
                failure,
                stage: Stage::Connect,
                log: AttemptLog {
                    peer,
                    idle_ms: None,
                    sent: 0,
                    received: 0,
                },
                server: si,
                generation,
                reused: false,
                per_try_expired: false,
            };
            return after_failure(ctx, l, req, failed, None).await;
        }
    };
    let info = conn.info.clone();
    let read_before = info.stats.read.load(Ordering::Relaxed);
    let written_before = info.stats.written.load(Ordering::Relaxed);
    info.stats.begin_response();
    let head_wait = head_wait(l);
    // The head's latency feeds only an adaptive limit (a clock read less
    // for a request without one).
    let sent_at = l.up.slots.is_some().then(Instant::now);
    let outcome = exchange::exchange(
        &server,
        l.cfg,
        &mut conn,
        exchange::Request {
            method: &req.method,
            target: &req.target,
            headers: &req.headers,
            added: &req.added,
            fcgi_head: req.fcgi_head.as_deref().unwrap_or_default(),
            body: req.body.take(),
            upgrade: req.client_upgrade.is_some(),
            request_id: &ctx.id,
        },
        head_wait,
        read_before,
    )
    .await;
    observe_latency(
        ctx,
        l,
        sent_at.filter(|_| outcome.is_ok()).map(|t| t.elapsed()),
    );
    let sent = info
        .stats
        .written
        .load(Ordering::Relaxed)
        .saturating_sub(written_before);
    let (mut failure, stage, per_try_expired, unsent) = match outcome {
        // A 101 only for an upgrade the client asked for, to a protocol
        // it named: anything else would tunnel bytes past routing.
        Ok(Head { response, .. })
            if response.status() == StatusCode::SWITCHING_PROTOCOLS
                && (req.client_upgrade.is_none()
                    || !headers::upgrade_agreed(&req.headers, response.headers())) =>
        {
            let f = Failure::with(
                Cause::UpgradeFailed,
                "the upstream switched protocols to one the client did not ask for",
            );
            (f, Stage::Exchange, false, None)
        }
        Ok(Head { response, upgrade }) => {
            let held = Held {
                _busy: busy,
                _permit: l.permit.take(),
            };
            let upgrades = req.client_upgrade.take().zip(upgrade);
            return Some(success(
                ctx,
                l,
                response,
                conn,
                server,
                upgrades,
                read_before,
                sent,
                held,
            ));
        }
        Err(no_head) => exchange_failure(no_head, head_wait, l),
    };
    if stage == Stage::Exchange {
        info.retired.store(true, Ordering::Relaxed);
        // A failure the client's own body caused is the client's: a 4xx,
        // never counted against the server, a budget or an incident.
        if let Some(f) = req.body.fault() {
            failure = f;
        }
    }
    let failed = Failed {
        failure,
        stage,
        log: AttemptLog {
            peer: conn.peer.clone(),
            idle_ms: conn.reused.map(|d| d.as_millis() as u64),
            sent,
            received: info
                .stats
                .read
                .load(Ordering::Relaxed)
                .saturating_sub(read_before),
        },
        server: si,
        generation,
        reused: conn.reused.is_some(),
        per_try_expired,
    };
    after_failure(ctx, l, req, failed, unsent).await
}

/// What an exchange that brought no head failed with, where, whether the
/// route's per-try timeout (not the read timeout) expired, and a body that
/// was never sent.
fn exchange_failure(
    no_head: NoHead,
    head_wait: std::time::Duration,
    l: &Attempts<'_>,
) -> (Failure, Stage, bool, Option<UpBody>) {
    let terminated = |how| Failure::with(Cause::ConnectionTerminated, how);
    match no_head {
        NoHead::TimedOut => (
            Failure::with(
                Cause::ResponseHeadTimeout,
                format!("no response head within {}s", head_wait.as_secs_f32()),
            ),
            Stage::Exchange,
            head_wait < l.cfg.read_timeout,
            None,
        ),
        // The connection was closed before a byte of this request was
        // written: the upstream cannot have seen it.
        NoHead::Unsent(body) if !l.used.fresh_connection => (
            terminated("pooled connection closed before the request was sent"),
            Stage::Unsent,
            false,
            Some(body),
        ),
        NoHead::Unsent(_) => (
            terminated("a fresh connection closed before the request was sent"),
            Stage::Exchange,
            false,
            None,
        ),
        NoHead::Failed(f) => (f, Stage::Exchange, false, None),
    }
}

/// A connection for this attempt (`Server::acquire`), counted when new.
async fn connection(
    ctx: &Ctx,
    l: &Attempts<'_>,
    server: &Arc<Server>,
    fresh_only: bool,
) -> Result<Conn, (Failure, Arc<str>)> {
    let conn = server.acquire(l.cfg, &ctx.rt.dialer, fresh_only).await?;
    if conn.reused.is_none() {
        ctx.gw
            .metrics
            .upstream_connects
            .get_or_create(&UpstreamLabels {
                upstream: l.cfg.name.clone(),
            })
            .inc();
    }
    Ok(conn)
}

/// The head wait: read_timeout, shortened by the route's per-try timeout
/// and by what is left of its deadline.
fn head_wait(l: &Attempts<'_>) -> std::time::Duration {
    let mut wait = l.cfg.read_timeout;
    if let Some(p) = l.policy.per_try_timeout {
        wait = wait.min(p);
    }
    if let Some(d) = l.deadline {
        wait = wait.min(d.saturating_duration_since(Instant::now()));
    }
    wait
}

/// Feeds the adaptive concurrency limit (a head's latency, or a failure).
fn observe_latency(ctx: &Ctx, l: &Attempts<'_>, latency: Option<std::time::Duration>) {
    let Some(slots) = &l.up.slots else { return };
    if let Some(limit) = slots.observe(latency, now_ms()) {
        ctx.gw
            .metrics
            .concurrency_limit
            .get_or_create(&UpstreamLabels {
                upstream: l.cfg.name.clone(),
            })
            .set(limit as i64);
    }
}

/// Carries out the retry decision for a failed attempt: `None` to try
/// again, or the failure as the answer.
async fn after_failure(
    ctx: &mut Ctx,
    l: &mut Attempts<'_>,
    req: &mut UpRequest,
    f: Failed,
    unsent: Option<UpBody>,
) -> Option<Answer> {
    let facts = Facts {
        stage: f.stage,
        retry: f.failure.cause.retry(),
        reused: f.reused,
        received: f.log.received,
        per_try_expired: f.per_try_expired,
        body_in_hand: match f.stage {
            Stage::Connect => req.body.in_hand(),
            _ => req.body.replayable(),
        },
        repeatable: req.repeatable(),
        supervised: l.supervisor.is_some(),
    };
    let plan = retry::plan(&facts, l.used);
    let retry_log = |ctx: &Ctx, why: &'static str| {
        ctx.failure(&f.failure, None, Some(&f.log), Some(why));
        retry_metric(&ctx.gw, l.cfg, why);
    };
    if plan.fresh_connection {
        l.used.fresh_connection = true;
        retry_log(ctx, "fresh_connection");
        req.body.pending = unsent;
        l.again = Some(f.server);
        return None;
    }
    if plan.wait_for_restart
        && let Some(sup) = &l.supervisor
        && sup.restarting_since(f.generation).await
    {
        l.used.restart = true;
        retry_log(ctx, "backend_restart");
        if let Err(e) = sup.wait_ready(Some(f.generation), ctx.start).await {
            return Some(backend_unavailable(ctx, sup, e));
        }
        l.again = Some(f.server);
        return None;
    }
    let server = &l.up.servers[f.server];
    passive_failure(
        &ctx.gw,
        l.up,
        server,
        f.failure.cause.counts_against_server(),
        Some(f.failure.cause),
    );
    if let Some(budget) = plan.another_server
        && another_server(ctx, l, budget)
    {
        retry_log(ctx, "next_server");
        pause(l.policy.backoff, ctx.attempts, ctx.start).await;
        return None;
    }
    ctx.failure(
        &f.failure,
        Some(f.failure.cause.status()),
        Some(&f.log),
        None,
    );
    Some(Answer::Failure {
        failure: f.failure,
        next_hop: Some(f.log.peer),
        retry_after: None,
    })
}

/// Whether another server may take this request: retries and servers are
/// left, the deadline has not passed, and for a retry that may repeat work
/// at the upstream, its retry budget has room. Retries after a failed
/// connect are not budgeted: nothing reached the app, and they are what
/// carries traffic past a server that is down.
fn another_server(ctx: &Ctx, l: &Attempts<'_>, budget: Budget) -> bool {
    if l.tried.len() > l.retries
        || !l.up.has_candidate(&l.tried, now_ms())
        || l.deadline.is_some_and(|d| Instant::now() >= d)
    {
        return false;
    }
    if budget == Budget::Draw
        && !l
            .up
            .budget
            .try_retry(now_ms(), l.policy.budget_percent, l.policy.budget_min)
    {
        retry_metric(&ctx.gw, l.cfg, "budget_exhausted");
        return false;
    }
    true
}

/// No usable server: 503 with the time the first one is back.
fn no_server(ctx: &Ctx, l: &Attempts<'_>) -> Answer {
    ctx.gw.metrics.shed(&l.cfg.name, "no_healthy_server");
    let f = Failure::with(
        Cause::NoHealthyServer,
        format!(
            "none of the {} servers of {} is usable",
            l.up.servers.len(),
            l.cfg.name
        ),
    );
    ctx.failure(&f, Some(f.cause.status()), None, None);
    Answer::Failure {
        failure: f,
        next_hop: None,
        retry_after: Some(l.up.retry_after(l.now)),
    }
}

/// `503 backend_restarting` with the supervisor's `Retry-After`.
fn backend_unavailable(ctx: &Ctx, sup: &Supervisor, f: Failure) -> Answer {
    ctx.failure(&f, Some(f.cause.status()), None, None);
    Answer::Failure {
        failure: f,
        next_hop: None,
        retry_after: Some(sup.retry_after_secs()),
    }
}

/// A response head arrived: passive health hears of it, and the upstream
/// response filter turns it into the answer, its body holding the
/// connection (back to the pool at its end), the in-flight mark and slot.
#[allow(clippy::too_many_arguments)]
fn success(
    ctx: &mut Ctx,
    l: &Attempts<'_>,
    resp: Response<UpIncoming>,
    conn: Conn,
    server: Arc<Server>,
    upgrades: Option<(ClientUpgrade, hyper::upgrade::OnUpgrade)>,
    read_before: u64,
    sent: u64,
    held: Held,
) -> Answer {
    let cfg = l.cfg;
    if cfg.outlier.count_5xx && resp.status().is_server_error() {
        passive_failure(&ctx.gw, l.up, &server, true, None);
    } else if server.health.record_success(l.now) == health::Transition::Returned {
        note_transition(&ctx.gw, cfg, &server, "returned", None);
    }
    let info = conn.info.clone();
    ctx.server = Some(conn.peer.clone());
    let status = resp.status();
    let upgraded = status == StatusCode::SWITCHING_PROTOCOLS && upgrades.is_some();
    if let Some((client_upgrade, upstream_upgrade)) = upgrades.filter(|_| upgraded) {
        tokio::spawn(async move {
            if let (Some(mut c), Ok(u)) = (client_upgrade.wait().await, upstream_upgrade.await) {
                let _ = tokio::io::copy_bidirectional(&mut c, &mut TokioIo::new(u)).await;
            }
        });
    }
    let (mut parts, body) = resp.into_parts();
    let mut hop = headers::upstream_response(&mut parts.headers, upgraded);
    // Baton's own HTTP/1.1 client keeps most hop-by-hop fields out of the
    // map: what they said comes with the body.
    if let UpIncoming::H1(b) = &body {
        let said = b.hop();
        hop.close |= said.close;
        hop.keepalive_ms = hop.keepalive_ms.or(said.keepalive_ms);
    }
    if let Some(ms) = hop.keepalive_ms {
        info.keepalive_hint_ms.store(ms, Ordering::Relaxed);
    }
    if hop.close {
        // Never pooled, and not mistaken for an idle close (learning).
        info.retired.store(true, Ordering::Relaxed);
    }
    let pool = (!upgraded).then(|| PoolReturn {
        server,
        cfg: cfg.clone(),
        tx: conn.tx,
        info,
    });
    // Made in its box (allocated first), not copied into it.
    let body = Box::write(
        Box::new_uninit(),
        ProxiedBody::new(Upstreamed {
            body: TimedBody::new(body, cfg.read_timeout),
            status: status.as_u16(),
            pool,
            read_before,
            sent,
            held,
        }),
    );
    Answer::Proxied(parts, body)
}

/// A failed attempt on `server`: passive ejection, logged and counted.
fn passive_failure(
    gw: &Gateway,
    up: &Upstream,
    server: &Arc<Server>,
    counts: bool,
    cause: Option<Cause>,
) {
    if !counts {
        return;
    }
    server.health.note_failure(cause);
    let now = now_ms();
    let t = {
        let _one_at_a_time = up.eject_lock.lock().unwrap_or_else(|e| e.into_inner());
        server
            .health
            .record_failure(&up.cfg.outlier, now, up.ejected(now), up.servers.len())
    };
    if let health::Transition::Ejected(d) = t {
        note_transition(gw, &up.cfg, server, "ejected", Some(d));
    }
}

fn note_transition(
    gw: &Gateway,
    cfg: &UpstreamConfig,
    server: &Arc<Server>,
    to: &'static str,
    ejected_for: Option<std::time::Duration>,
) {
    gw.metrics.transition(&cfg.name, &server.label, to);
    tracing::warn!(target: "baton::health", upstream = %cfg.name, server = %server.label, to, ejected_for_ms = ejected_for.map(|d| d.as_millis() as u64), "server {to}");
}

/// The route's backoff before the next attempt (none by default).
async fn pause(base: std::time::Duration, attempt: u32, start: Instant) {
    let d = backoff(base, attempt, start.elapsed().as_nanos() as u64);
    if !d.is_zero() {
        tokio::time::sleep(d).await;
    }
}

fn retry_metric(gw: &Gateway, cfg: &UpstreamConfig, reason: &'static str) {
    gw.metrics
        .retries
        .get_or_create(&RetryLabels {
            upstream: cfg.name.clone(),
            reason,
        })
        .inc();
}
