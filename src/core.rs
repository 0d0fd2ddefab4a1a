//! The core types every layer shares, and nothing else: the closed table
//! of failure causes, the one failure type, the client's request body,
//! clocks and small text helpers.
//!
//! Must not: import any other module of baton (the bottom layer; see
//! ARCHITECTURE.md, "Layers").

pub mod body;
pub mod cause;
pub mod clock;
pub mod failure;
pub mod text;

/// A seeded xorshift generator: the suite's deterministic random inputs
/// (the fuzz entry points' in-suite runs).
#[cfg(test)]
pub(crate) fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    }
}
