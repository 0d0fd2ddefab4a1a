//! FastCGI upstreams (PHP-FPM and friends):
//!
//! - `codec`: the FastCGI record format (FastCGI 1.0 specification: 8-byte
//!   headers, name-value pairs with 1- or 4-byte lengths, padding to 8 bytes);
//! - `docroot`: the document root held open and `try_files` resolved
//!   against it (paths never leave it);
//! - `params`: the CGI parameters users know from nginx's `fastcgi_params`;
//! - `exchange`: one exchange on a connection, turning the app's CGI
//!   response (`Status:`, headers, body) into an HTTP response. Its failures
//!   are classified there into the shared `Cause` enum, as
//!   `upstream::classify` does for HTTP.
//!
//! Written by hand: the crates on crates.io (fastcgi-client and others)
//! either own the socket (no pooling over our metered, timed connections) or
//! buffer the whole response, and none reports typed failures by phase.
//!
//! Must not: decide retries (that is `proxy`) or touch the pool (`upstream`).

mod codec;
mod docroot;
mod exchange;
mod params;

use codec::{CANT_MPX_CONN, MAX_CONTENT, OVERLOADED, REQUEST_COMPLETE};
pub use codec::{
    CodecError, Pairs, Record, kind, parse_pairs, push_begin, push_management, push_pair,
    push_record, push_stream, take_record,
};
use docroot::script_filename;
pub use docroot::{DocRoot, Script, Target, resolve};
use exchange::parse_head;
pub use exchange::{FcgiBody, LogTag, Sent, WireError, exchange};
pub use params::{RequestInfo, health_request, request_head};

use bytes::BytesMut;

/// Sends FCGI_GET_VALUES (for FCGI_MAX_CONNS, FCGI_MAX_REQS and
/// FCGI_MPXS_CONNS) on a new connection and reads once into `buf`: how many
/// bytes came back (0: the server closed), `None` when the connect, the
/// write or the read failed. Used by `baton doctor` to see what a server
/// speaks and by `workers`' probe for a free worker.
pub async fn ask_values(addr: &crate::config::ServerAddr, buf: &mut [u8]) -> Option<usize> {
    use crate::config::ServerAddr;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
    /// One write, one read, whatever the socket.
    async fn talk(
        mut s: impl AsyncRead + AsyncWrite + Unpin,
        req: &[u8],
        buf: &mut [u8],
    ) -> Option<usize> {
        s.write_all(req).await.ok()?;
        s.read(buf).await.ok()
    }
    let mut pairs = Vec::new();
    for k in ["FCGI_MAX_CONNS", "FCGI_MAX_REQS", "FCGI_MPXS_CONNS"] {
        push_pair(&mut pairs, k.as_bytes(), b"");
    }
    let mut req = Vec::new();
    push_management(&mut req, kind::GET_VALUES, &pairs);
    match addr {
        ServerAddr::Unix(p) => {
            talk(tokio::net::UnixStream::connect(p).await.ok()?, &req, buf).await
        }
        ServerAddr::Tcp(a) => talk(tokio::net::TcpStream::connect(a).await.ok()?, &req, buf).await,
        ServerAddr::Name { host, port } => {
            let s = tokio::net::TcpStream::connect((host.as_str(), *port))
                .await
                .ok()?;
            talk(s, &req, buf).await
        }
    }
}

/// Feeds arbitrary bytes to every decoder (the fuzz target in `fuzz/`
/// and the in-suite fuzz test call this): record stream, name-value pairs,
/// CGI head. Must never panic.
#[doc(hidden)]
pub fn fuzz_decode(data: &[u8]) {
    let mut b = BytesMut::from(data);
    while let Ok(Some(_)) = take_record(&mut b) {}
    let _ = parse_pairs(data);
    let _ = parse_head(data, 4096);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::cause::Cause;
    use bytes::Bytes;

    #[test]
    fn records_round_trip_with_padding() {
        for n in [0usize, 1, 7, 8, 9, 127, 128, 65535] {
            let data = vec![b'x'; n];
            let mut out = Vec::new();
            push_record(&mut out, kind::STDOUT, &data);
            assert_eq!(out.len() % 8, 0, "{n}");
            let mut b = BytesMut::from(&out[..]);
            assert_eq!(
                take_record(&mut b).unwrap(),
                Some(Record::Stdout(Bytes::from(data)))
            );
            assert!(b.is_empty());
        }
    }

    #[test]
    fn long_streams_split_at_65535() {
        let mut out = Vec::new();
        push_stream(&mut out, kind::STDOUT, &vec![1u8; 140_000]);
        let mut b = BytesMut::from(&out[..]);
        let mut total = 0;
        while let Some(Record::Stdout(d)) = take_record(&mut b).unwrap() {
            assert!(d.len() <= 65535);
            total += d.len();
        }
        assert_eq!(total, 140_000);
    }

    #[test]
    fn pairs_use_four_byte_lengths_from_128() {
        let long = vec![b'v'; 300];
        let mut out = Vec::new();
        push_pair(&mut out, b"A", b"b");
        push_pair(&mut out, b"LONG", &long);
        assert_eq!(out[0], 1);
        assert_eq!(&out[5..9], &(0x8000_0000u32 | 300).to_be_bytes());
        let pairs = parse_pairs(&out).unwrap();
        assert_eq!(
            pairs,
            vec![(&b"A"[..], &b"b"[..]), (&b"LONG"[..], &long[..])]
        );
        assert_eq!(parse_pairs(&out[..out.len() - 1]), Err(CodecError::BadPair));
    }

    #[test]
    fn http_is_recognised() {
        let mut b = BytesMut::from(&b"HTTP/1.1 200 OK\r\n"[..]);
        assert!(matches!(
            take_record(&mut b),
            Err(CodecError::NotFastCgi(f)) if f.starts_with(b"HTTP/")
        ));
    }

    #[test]
    fn cgi_heads() {
        let ((s, h), used) = parse_head(
            b"Status: 404 Not Found\r\nContent-type: text/html\r\n\r\nbody",
            1024,
        )
        .unwrap()
        .unwrap();
        assert_eq!(s, 404);
        assert_eq!(h["content-type"], "text/html");
        assert_eq!(used, 50);
        let ((s, _), _) = parse_head(b"Location: /x\n\n", 1024).unwrap().unwrap();
        assert_eq!(s, 302);
        assert!(parse_head(b"X-A: 1\r\n", 1024).unwrap().is_none());
        assert_eq!(
            parse_head(&[b'a'; 100], 50).unwrap_err().cause,
            Cause::ResponseHeaderTooLarge
        );
        assert_eq!(
            parse_head(b"<html>oops\r\n\r\n", 1024).unwrap_err().cause,
            Cause::ProtocolError
        );
    }

    /// Random input never panics the decoder, and what the encoder writes
    /// always decodes to what went in (a small deterministic fuzzer; the
    /// cargo-fuzz target in fuzz/ runs the same properties unbounded).
    #[test]
    fn fuzz_decoder_and_round_trips() {
        let mut next = crate::core::xorshift(0x9E37_79B9_7F4A_7C15u64);
        for _ in 0..20_000 {
            let len = (next() % 300) as usize;
            let mut junk: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if next().is_multiple_of(2) && !junk.is_empty() {
                junk[0] = 1; // get past the version check more often
            }
            fuzz_decode(&junk);
            // Encode random pairs, decode them back.
            let pairs: Vec<(Vec<u8>, Vec<u8>)> = (0..(next() % 5))
                .map(|_| {
                    let n = (next() % 200) as usize;
                    let v = (next() % 400) as usize;
                    (vec![b'k'; n], vec![b'v'; v])
                })
                .collect();
            let mut enc = Vec::new();
            for (k, v) in &pairs {
                push_pair(&mut enc, k, v);
            }
            let dec = parse_pairs(&enc).unwrap();
            assert_eq!(dec.len(), pairs.len());
            for ((k, v), (dk, dv)) in pairs.iter().zip(dec) {
                assert_eq!((&k[..], &v[..]), (dk, dv));
            }
        }
    }
}
