//! The one failure type of the data path: a [`Cause`] plus what the
//! operator needs to see (details, errno, the status the upstream sent).
//!
//! Owns: [`Failure`]. Must not: classify raw errors (the classifiers in
//! `upstream` do) or know how a failure is reported (`cause` does).

use crate::core::cause::Cause;

/// Why an attempt failed: one cause plus what the operator needs to see.
#[derive(Debug, Clone)]
pub struct Failure {
    pub cause: Cause,
    /// Short; shown to trusted clients (`server.details_to`) in
    /// `Proxy-Status` `details` and on the error page, and always logged.
    pub details: Option<String>,
    pub errno: Option<i32>,
    /// The status the upstream sent, when it sent one before failing.
    pub received_status: Option<u16>,
}

impl Failure {
    pub fn new(cause: Cause) -> Self {
        Failure {
            cause,
            details: None,
            errno: None,
            received_status: None,
        }
    }
    pub fn with(cause: Cause, details: impl Into<String>) -> Self {
        Failure {
            cause,
            details: Some(details.into()),
            errno: None,
            received_status: None,
        }
    }
    /// Notes the OS error number of `e`, if it has one.
    pub fn errno(mut self, e: &std::io::Error) -> Self {
        self.errno = e.raw_os_error();
        self
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.cause)?;
        if let Some(d) = &self.details {
            write!(f, ": {d}")?;
        }
        Ok(())
    }
}
impl std::error::Error for Failure {}
