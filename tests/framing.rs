//! Response framing from HTTP/1.1 upstreams (RFC 9112 §6.3), through
//! baton's own upstream client (`src/h1.rs`): chunked bodies with
//! extensions and trailers, bodies delimited by the connection closing,
//! interim 1xx responses, responses without a body, and framing errors.
//! Each checks the bytes the client gets and whether the upstream
//! connection was reused.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::support::*;

fn raw(bytes: &str, close: bool) -> Script {
    Script::Raw {
        bytes: bytes.as_bytes().to_vec(),
        close,
    }
}

async fn gateway(o: &Origin) -> Gw {
    Gw::start(&one_route(o.addr)).await
}

/// `n` requests made by `make` on one client connection through a gateway
/// to an origin running `script`; the origin stays up for its counters.
async fn on_one_connection(
    script: Script,
    n: usize,
    make: fn(&str) -> Request<Full<Bytes>>,
) -> (Origin, Gw, Vec<Resp>) {
    let o = Origin::start(script).await.unwrap();
    let gw = gateway(&o).await;
    let mut c = Client::connect(gw.addr).await;
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(c.send(make("/")).await);
    }
    (o, gw, out)
}

fn head(path: &str) -> Request<Full<Bytes>> {
    Request::head(path)
        .header("host", "test.local")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

#[tokio::test]
async fn chunked_body_with_trailers_arrives_whole_and_the_connection_is_reused() {
    let script = raw(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n\
         5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 42\r\n\r\n",
        false,
    );
    let (o, _gw, rs) = on_one_connection(script, 3, get).await;
    for r in rs {
        assert_eq!(r.status, 200);
        assert_eq!(r.body.as_ref().unwrap(), &b"hello world"[..]);
    }
    assert_eq!(o.hits.load(Ordering::Relaxed), 3);
    assert_eq!(
        o.conns.load(Ordering::Relaxed),
        1,
        "one upstream connection"
    );
}

#[tokio::test]
async fn body_delimited_by_close_arrives_whole_and_is_not_reused() {
    let script = raw(
        "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end\n",
        true,
    );
    let (o, _gw, rs) = on_one_connection(script, 2, get).await;
    for r in rs {
        assert_eq!(r.status, 200);
        assert_eq!(r.body.as_ref().unwrap(), &b"until the end\n"[..]);
    }
    assert_eq!(o.conns.load(Ordering::Relaxed), 2, "a new connection each");
}

#[tokio::test]
async fn interim_responses_are_skipped() {
    let script = raw(
        "HTTP/1.1 100 Continue\r\n\r\n\
         HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n\
         HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        false,
    );
    let (o, _gw, rs) = on_one_connection(script, 2, get).await;
    for r in rs {
        assert_eq!(r.status, 200);
        assert_eq!(r.header("link"), "", "the 103's fields stay in the 103");
        assert_eq!(r.body.as_ref().unwrap(), &b"ok"[..]);
    }
    assert_eq!(o.conns.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn head_and_204_responses_have_no_body_and_keep_the_connection() {
    let script = raw("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", false);
    let (o, _gw, rs) = on_one_connection(script, 2, head).await;
    for r in rs {
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-length"), "10");
        assert_eq!(r.body.as_ref().unwrap(), &b""[..]);
    }
    assert_eq!(o.conns.load(Ordering::Relaxed), 1);

    let script = raw("HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n", false);
    let (o, _gw, rs) = on_one_connection(script, 2, get).await;
    for r in rs {
        assert_eq!(r.status, 204);
        assert_eq!(r.header("x-a"), "1");
        assert_eq!(r.body.as_ref().unwrap(), &b""[..]);
    }
    assert_eq!(o.conns.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn invalid_chunk_aborts_the_client_and_is_logged() {
    let o = Origin::start(raw(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
        false,
    ))
    .await
    .unwrap();
    let gw = gateway(&o).await;
    let r = send(gw.addr, get("/")).await;
    // The head and the chunk before the bad one reach the client; then its
    // connection is aborted, never ended cleanly.
    assert_eq!(r.status, 200);
    assert!(r.body.is_err(), "body must not complete: {:?}", r.body);
    assert_eq!(gw.access(&r.request_id()).await["bytes"], 5);
    let lines = gw.failures(&r.request_id()).await;
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["cause"], "response_incomplete");
    assert_eq!(lines[0]["proxy_status"], "http_response_incomplete");
    assert_eq!(
        lines[0]["details"],
        "invalid chunked encoding in the response body"
    );
}

#[tokio::test]
async fn conflicting_content_lengths_are_a_protocol_error() {
    let o = Origin::start(raw(
        "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        false,
    ))
    .await
    .unwrap();
    let gw = gateway(&o).await;
    let r = send(gw.addr, get("/")).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.proxy_error(), "http_protocol_error");
    let lines = gw.failures(&r.request_id()).await;
    assert_eq!(lines[0]["cause"], "http_protocol_error");
    assert_eq!(lines[0]["phase"], "read_head");
}

#[tokio::test]
async fn large_body_arrives_whole_and_the_connection_is_reused() {
    let body = "0123456789abcdef".repeat(1 << 18); // 4 MiB
    let (o, _gw, rs) = on_one_connection(Script::Ok(body.clone()), 2, get).await;
    for r in rs {
        assert_eq!(r.status, 200);
        assert_eq!(r.body.as_ref().unwrap(), body.as_bytes());
    }
    assert_eq!(o.conns.load(Ordering::Relaxed), 1);
}
