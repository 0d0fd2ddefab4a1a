//! The one retry decision: after a failed attempt, what may happen next.
//!
//! Owns: [`plan`], a pure function from the facts of the failed attempt and
//! the request's retry state to the steps that are allowed, in the order
//! they are tried. The attempt loop checks what the plan cannot know
//! (whether a supervised backend is restarting, whether another server is
//! left within `retries`, the deadline and the retry budget) and carries
//! out the first step that holds. Must not: do I/O, read clocks or touch
//! shared state.
//!
//! The rules, from the safest step to the last resort:
//! - **fresh connection** (same server): a pooled connection that was dead
//!   before a byte was written (`Unsent`), for any method; or a reused
//!   connection that died with zero response bytes (the keep-alive race),
//!   for a request that may be repeated. Once per request; not counted
//!   against the server (idle closes are normal).
//! - **wait for the restart** (same server): a supervised backend that died
//!   under the attempt, once per request, when nothing reached it or a
//!   repeatable request got nothing back.
//! - **another server**: nothing reached the upstream (any method; not
//!   budgeted: it adds no work to the app), or a repeatable request got
//!   nothing back or hit its per-try timeout (budgeted: the app may have
//!   done the work).
//! - otherwise **give up**: the failure is the answer.

use crate::core::cause::Retry;

/// Where the attempt failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Connecting: nothing reached the upstream.
    Connect,
    /// The connection was closed before a byte of the request was written.
    Unsent,
    /// After the request was (at least partly) written.
    Exchange,
}

/// What is known about the failed attempt.
#[derive(Clone, Copy, Debug)]
pub struct Facts {
    pub stage: Stage,
    /// What the failure's cause says about repeating the request.
    pub retry: Retry,
    /// The connection came from the pool.
    pub reused: bool,
    /// Response bytes received on this attempt.
    pub received: u64,
    /// The route's per-try timeout (not the upstream's read timeout) expired.
    pub per_try_expired: bool,
    /// The request body can still be sent again (none, buffered, or a
    /// streamed body that was never taken).
    pub body_in_hand: bool,
    /// The method is idempotent, or the request carries `Idempotency-Key`.
    pub repeatable: bool,
    /// The upstream's backend is supervised by baton.
    pub supervised: bool,
}

/// The once-per-request steps already taken.
#[derive(Clone, Copy, Debug, Default)]
pub struct Used {
    pub fresh_connection: bool,
    pub restart: bool,
}

/// Whether a retry on another server draws on the upstream's retry budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Budget {
    /// The app may have seen the request: a retry repeats its work.
    Draw,
    /// Nothing reached the app.
    Free,
}

/// The steps allowed after a failure, tried in this order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Resend on a fresh connection to the same server.
    pub fresh_connection: bool,
    /// If the supervised backend is restarting, wait and resend to it.
    pub wait_for_restart: bool,
    /// If another server is left (retries, deadline, budget), go there.
    pub another_server: Option<Budget>,
}

impl Plan {
    /// Nothing may follow: the failure is the answer.
    pub fn give_up(&self) -> bool {
        *self == Plan::default()
    }
}

/// The one retry decision.
pub fn plan(f: &Facts, used: Used) -> Plan {
    match f.stage {
        // Dead before a byte was written: resend as is, for any method.
        Stage::Unsent if !used.fresh_connection => Plan {
            fresh_connection: true,
            ..Plan::default()
        },
        // A second dead connection is an ordinary failure.
        Stage::Unsent | Stage::Exchange => after_exchange(f, used),
        Stage::Connect => {
            let nothing_sent = f.retry == Retry::NothingSent && f.body_in_hand;
            Plan {
                fresh_connection: false,
                wait_for_restart: f.supervised && nothing_sent && !used.restart,
                another_server: nothing_sent.then_some(Budget::Free),
            }
        }
    }
}

fn after_exchange(f: &Facts, used: Used) -> Plan {
    // The upstream may have seen the request but sent nothing back.
    let may_repeat = f.received == 0 && f.body_in_hand && f.repeatable;
    let maybe_processed = f.retry == Retry::MaybeProcessed && may_repeat;
    Plan {
        fresh_connection: maybe_processed && f.reused && !used.fresh_connection,
        wait_for_restart: maybe_processed && f.supervised && !used.restart,
        // A per-try timeout counts the same way: the point of it is to try
        // another server sooner.
        another_server: (may_repeat && (f.retry == Retry::MaybeProcessed || f.per_try_expired))
            .then_some(Budget::Draw),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(stage: Stage, retry: Retry) -> Facts {
        Facts {
            stage,
            retry,
            reused: false,
            received: 0,
            per_try_expired: false,
            body_in_hand: true,
            repeatable: true,
            supervised: false,
        }
    }

    #[test]
    fn refused_connect_goes_to_another_server_for_any_method_unbudgeted() {
        let mut f = facts(Stage::Connect, Retry::NothingSent);
        f.repeatable = false; // a POST
        let p = plan(&f, Used::default());
        assert_eq!(p.another_server, Some(Budget::Free));
        assert!(!p.fresh_connection && !p.wait_for_restart);
    }

    #[test]
    fn connect_failure_of_a_taken_stream_gives_up() {
        let mut f = facts(Stage::Connect, Retry::NothingSent);
        f.body_in_hand = false;
        assert!(plan(&f, Used::default()).give_up());
    }

    #[test]
    fn supervised_backend_down_at_connect_waits_once() {
        let mut f = facts(Stage::Connect, Retry::NothingSent);
        f.supervised = true;
        assert!(plan(&f, Used::default()).wait_for_restart);
        let used = Used {
            restart: true,
            ..Used::default()
        };
        let p = plan(&f, used);
        assert!(!p.wait_for_restart);
        assert_eq!(p.another_server, Some(Budget::Free));
    }

    #[test]
    fn unsent_goes_on_a_fresh_connection_once_whatever_the_method() {
        let mut f = facts(Stage::Unsent, Retry::MaybeProcessed);
        f.repeatable = false;
        f.reused = true;
        let p = plan(&f, Used::default());
        assert_eq!(
            p,
            Plan {
                fresh_connection: true,
                ..Plan::default()
            }
        );
        let used = Used {
            fresh_connection: true,
            ..Used::default()
        };
        assert!(plan(&f, used).give_up(), "a POST is not repeated");
    }

    #[test]
    fn keepalive_race_replays_a_get_on_a_fresh_connection_once() {
        let mut f = facts(Stage::Exchange, Retry::MaybeProcessed);
        f.reused = true;
        let p = plan(&f, Used::default());
        assert!(p.fresh_connection);
        assert_eq!(p.another_server, Some(Budget::Draw));
        let used = Used {
            fresh_connection: true,
            ..Used::default()
        };
        assert!(!plan(&f, used).fresh_connection);
    }

    #[test]
    fn a_new_connection_that_died_is_not_a_keepalive_race() {
        let f = facts(Stage::Exchange, Retry::MaybeProcessed);
        let p = plan(&f, Used::default());
        assert!(!p.fresh_connection);
        assert_eq!(p.another_server, Some(Budget::Draw));
    }

    #[test]
    fn post_without_idempotency_key_is_never_repeated_after_sending() {
        let mut f = facts(Stage::Exchange, Retry::MaybeProcessed);
        f.repeatable = false;
        f.reused = true;
        f.supervised = true;
        assert!(plan(&f, Used::default()).give_up());
    }

    #[test]
    fn bytes_received_end_retries() {
        let mut f = facts(Stage::Exchange, Retry::MaybeProcessed);
        f.received = 1;
        f.reused = true;
        f.supervised = true;
        assert!(plan(&f, Used::default()).give_up());
    }

    #[test]
    fn streamed_body_cannot_be_replayed_after_sending() {
        let mut f = facts(Stage::Exchange, Retry::MaybeProcessed);
        f.body_in_hand = false;
        assert!(plan(&f, Used::default()).give_up());
    }

    #[test]
    fn per_try_timeout_moves_on_but_a_read_timeout_does_not() {
        let mut f = facts(Stage::Exchange, Retry::Never);
        assert!(plan(&f, Used::default()).give_up());
        f.per_try_expired = true;
        let p = plan(&f, Used::default());
        assert_eq!(p.another_server, Some(Budget::Draw));
        assert!(!p.fresh_connection && !p.wait_for_restart);
    }

    #[test]
    fn supervised_backend_dying_under_a_get_waits_for_its_restart() {
        let mut f = facts(Stage::Exchange, Retry::MaybeProcessed);
        f.supervised = true;
        let p = plan(&f, Used::default());
        assert!(p.wait_for_restart);
        let used = Used {
            restart: true,
            ..Used::default()
        };
        assert!(!plan(&f, used).wait_for_restart);
    }
}
