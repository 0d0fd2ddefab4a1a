//! What the gateway tells its operators: structured logs, Prometheus
//! metrics, and incidents opened from each upstream's failure rate.
//!
//! Must not: block or fail a request (bounded queues, drops counted; store
//! writes on a blocking thread), or decide anything about a request.

pub mod incidents;
pub mod log;
pub mod metrics;
