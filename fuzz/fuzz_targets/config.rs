//! The config loader (TOML, then validation) on arbitrary text: an error
//! list or a config, never a panic:
//! `cargo +nightly fuzz run config -- -max_total_time=300`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = baton::config::parse(text, "fuzz.toml", None);
    }
});
