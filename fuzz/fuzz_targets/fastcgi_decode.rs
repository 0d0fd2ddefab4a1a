//! The FastCGI decoders (records, name-value pairs, CGI head) on arbitrary
//! bytes: `cargo +nightly fuzz run fastcgi_decode -- -max_total_time=60`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    baton::upstream::fastcgi::fuzz_decode(data);
});
