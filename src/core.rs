//! The core types every layer shares, and nothing else: the closed table
//! of failure causes, the one failure type, clocks and small text helpers.
//!
//! Must not: import any other module of baton (the bottom layer; see
//! ARCHITECTURE.md, "Layers").

pub mod cause;
pub mod clock;
pub mod failure;
pub mod text;
