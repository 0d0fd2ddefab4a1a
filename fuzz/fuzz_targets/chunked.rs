//! The chunked decoder, fed in pieces: the same body whatever the pieces,
//! never more data out than bytes in:
//! `cargo +nightly fuzz run chunked -- -max_total_time=300`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    baton::upstream::h1::fuzz_chunked(data);
});
