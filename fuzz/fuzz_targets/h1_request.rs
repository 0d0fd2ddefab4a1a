//! baton's own HTTP/1.1 request reading (pipelined heads, RFC 9112 §6.3
//! framing, chunked bodies) on arbitrary bytes:
//! `cargo +nightly fuzz run h1_request -- -max_total_time=300`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    baton::server::fuzz_request(data);
});
