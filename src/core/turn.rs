//! Writes to peers leave together, once per turn of a worker's loop.
//!
//! A write to a socket wakes the process that reads it: the upstream for a
//! request, the client for a response. Written as each task comes to it, a
//! worker's writes are spread over its whole turn; an upstream that serves
//! all of baton's connections from one process (an nginx or Node worker)
//! answers each request before the next one comes, sleeps, and is woken
//! again, one wake-up (a context switch for it, an inter-processor
//! interrupt for baton) a request. HAProxy reads everything that is ready,
//! then writes it all: the upstream is woken once and finds the whole
//! batch. [`gather`] gives baton's tasks the same order: an HTTP/1.1
//! client connection's request waits before its write to the upstream,
//! and its response before its write to the client.
//!
//! Not for requests over HTTP/2: hyper wakes a connection's streams one
//! after another from one read, so their writes follow each other already,
//! and with many streams in flight the upstream seldom sleeps. The pass
//! would be one more poll of each stream's whole future for nothing.
//!
//! Measured under `wrk -t2 -c64`, one worker, an nginx upstream (`perf
//! stat`): the upstream's context switches a request 0.19 -> 0.09, and
//! baton's own CPU a request down by a tenth (docs/benchmarks.md, "Issue
//! 19, eighth stop"). In the ninth stop's sitting the same switch
//! measured the other way at one worker, twice (0.94x and 0.89x req/s,
//! the upstream woken more often), and level at two: the pass costs an
//! extra poll of each task a write, and what it saves is wake-ups, whose
//! worth differed between sittings. Kept until more sittings decide.

/// Waits until the worker's other ready tasks have had their turn (and the
/// sockets were polled once more), so that the write that follows leaves
/// with theirs. One pass of the scheduler when nothing else is ready.
pub async fn gather() {
    // `yield_now` defers the wake-up until the runtime has polled its I/O
    // driver, behind every task already ready: exactly "after the others
    // have read".
    tokio::task::yield_now().await;
}
