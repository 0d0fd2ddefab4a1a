//! baton's own HTTP/1.1 response reading (head, framing, keep-alive, the
//! chunked body) on arbitrary bytes:
//! `cargo +nightly fuzz run h1_response -- -max_total_time=300`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    baton::upstream::h1::fuzz_response(data);
});
