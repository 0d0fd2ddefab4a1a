//! The client side of HTTP/1.1 as baton's own connection serves it
//! (`src/server/h1.rs`): `Expect: 100-continue`, pipelined requests,
//! HTTP/1.0 keep-alive, bytes sent after an upgrade request, an answer
//! that does not wait for the body, chunked responses. Raw sockets, exact
//! bytes.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// Reads one response (head, and a `Content-Length` or chunked body) off
/// `s`; `buf` keeps what was read past it.
async fn response(s: &mut TcpStream, buf: &mut Vec<u8>) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(end) = complete(buf) {
            let r: Vec<u8> = buf.drain(..end).collect();
            return String::from_utf8_lossy(&r).into_owned();
        }
        let mut b = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, s.read(&mut b))
            .await
            .expect("a response within 5 s")
            .unwrap();
        assert!(
            n > 0,
            "closed mid-response: {:?}",
            String::from_utf8_lossy(buf)
        );
        buf.extend_from_slice(&b[..n]);
    }
}

/// The length of the first complete response in `b`, if there is one.
fn complete(b: &[u8]) -> Option<usize> {
    let head_end = b.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&b[..head_end]).to_ascii_lowercase();
    if head.starts_with("http/1.1 1") {
        return Some(head_end);
    }
    if let Some(l) = head.lines().find_map(|l| l.strip_prefix("content-length:")) {
        let n: usize = l.trim().parse().unwrap();
        return (b.len() >= head_end + n).then_some(head_end + n);
    }
    if head.contains("transfer-encoding: chunked") {
        let end = b[head_end..].windows(5).position(|w| w == b"0\r\n\r\n")?;
        return Some(head_end + end + 5);
    }
    Some(head_end)
}

#[tokio::test]
async fn expect_100_continue_is_answered_when_the_body_is_wanted() {
    let o = Origin::start(Script::Echo).await.unwrap();
    let gw = Gw::start(&one_route(o.addr)).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(
        b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let interim = response(&mut s, &mut buf).await;
    assert_eq!(interim, "HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"hello").await.unwrap();
    let resp = response(&mut s, &mut buf).await;
    assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
    assert!(resp.contains("\"body_len\":5"), "{resp}");
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let o = Origin::start(Script::Echo).await.unwrap();
    let gw = Gw::start(&one_route(o.addr)).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(
        b"GET /one HTTP/1.1\r\nHost: t\r\n\r\n\
          POST /two HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
          GET /three HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    for (path, len) in [("/one", 0), ("/two", 3), ("/three", 0)] {
        let resp = response(&mut s, &mut buf).await;
        assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
        assert!(
            resp.contains(&format!("\"path\":\"{path}\"")),
            "{path}: {resp}"
        );
        assert!(
            resp.contains(&format!("\"body_len\":{len}")),
            "{path}: {resp}"
        );
    }
    assert!(buf.is_empty());
}

#[tokio::test]
async fn an_http_1_0_client_is_answered_in_1_0_and_kept_alive_when_it_asks() {
    let o = Origin::start(Script::Ok("ok\n".into())).await.unwrap();
    let gw = Gw::start(&one_route(o.addr)).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = Vec::new();
    for _ in 0..2 {
        s.write_all(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .await
            .unwrap();
        let resp = response(&mut s, &mut buf).await;
        assert!(resp.starts_with("HTTP/1.0 200 OK\r\n"), "{resp}");
        assert!(resp.contains("\r\nconnection: keep-alive\r\n"), "{resp}");
        assert!(resp.ends_with("\r\n\r\nok\n"), "{resp}");
    }
    // Without the ask: answered, then closed.
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    let rest = String::from_utf8(rest).unwrap();
    assert!(rest.starts_with("HTTP/1.0 200 OK\r\n"), "{rest}");
    assert!(rest.contains("\r\nconnection: close\r\n"), "{rest}");
}

#[tokio::test]
async fn bytes_sent_with_an_upgrade_request_reach_the_tunnel() {
    let o = Origin::start(Script::Upgrade).await.unwrap();
    let gw = Gw::start(&one_route(o.addr)).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    // The first frame follows the head in the same write, before the 101.
    s.write_all(b"GET /chat HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\nearly bytes")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let head = response(&mut s, &mut buf).await;
    assert!(
        head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{head}"
    );
    while buf.len() < 11 {
        let mut b = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        buf.extend_from_slice(&b[..n]);
    }
    assert_eq!(buf, b"early bytes");
}

#[tokio::test]
async fn an_answer_that_does_not_wait_for_the_body_reaches_the_client_whole() {
    let o = Origin::start(Script::Ok("ok".into())).await.unwrap();
    let gw = Gw::start(&format!(
        "[server]\nmax_body_bytes = 1000\n{}",
        one_route(o.addr)
    ))
    .await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    // Refused at its head (over max_body_bytes); the client goes on
    // sending what it declared, as uploaders do.
    s.write_all(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 2000000\r\n\r\n")
        .await
        .unwrap();
    let sender = tokio::spawn({
        let chunk = vec![b'x'; 64 * 1024];
        let (mut r, mut w) = s.into_split();
        async move {
            for _ in 0..30 {
                if w.write_all(&chunk).await.is_err() {
                    break;
                }
            }
            let mut got = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), r.read_to_end(&mut got)).await;
            got
        }
    });
    let got = String::from_utf8_lossy(&sender.await.unwrap()).into_owned();
    assert!(got.starts_with("HTTP/1.1 413 "), "{got}");
    let len = content_length(&got);
    let body = got.split_once("\r\n\r\n").unwrap().1;
    assert_eq!(body.len(), len, "the whole answer, not a reset: {got}");
    assert!(got.contains("\r\nconnection: close\r\n"), "{got}");
    assert_eq!(o.hits.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_body_of_unknown_length_is_sent_chunked_and_the_connection_kept() {
    let o = Origin::start(Script::Raw {
        bytes: b"HTTP/1.1 200 OK\r\n\r\nuntil the close".to_vec(),
        close: true,
    })
    .await
    .unwrap();
    let gw = Gw::start(&one_route(o.addr)).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = Vec::new();
    for _ in 0..2 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let resp = response(&mut s, &mut buf).await;
        assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
        assert!(
            resp.contains("\r\ntransfer-encoding: chunked\r\n"),
            "{resp}"
        );
        let body = resp.split_once("\r\n\r\n").unwrap().1;
        assert_eq!(dechunk(body), "until the close", "{resp}");
    }
}

/// A chunked body's data (the test's own reading, strict).
fn dechunk(mut b: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = b.split_once("\r\n").unwrap();
        let n = usize::from_str_radix(size, 16).unwrap();
        if n == 0 {
            assert_eq!(rest, "\r\n");
            return out;
        }
        out.push_str(&rest[..n]);
        assert_eq!(&rest[n..n + 2], "\r\n");
        b = &rest[n + 2..];
    }
}

#[tokio::test]
async fn static_files_go_whole_and_in_range_from_memory_and_by_sendfile() {
    let dir = tempfile::tempdir().unwrap();
    // 100 KB (kept in memory) and 5 MB (not kept), both sent with
    // sendfile, whole and in ranges: distinct bytes everywhere, so a
    // misplaced offset shows.
    let pattern = |n: usize| -> Vec<u8> { (0..n).map(|i| (i * 7 + i / 251) as u8).collect() };
    let small = pattern(100 * 1024);
    let large = pattern(5 * 1024 * 1024);
    std::fs::write(dir.path().join("photo.jpg"), &small).unwrap();
    std::fs::write(dir.path().join("clip.mp4"), &large).unwrap();
    let gw = serving(dir.path()).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = Vec::new();
    for (path, want, range) in [
        ("/photo.jpg", &small[..], None),
        ("/clip.mp4", &large[..], None),
        (
            "/clip.mp4",
            &large[1_000_000..3_000_001],
            Some("bytes=1000000-3000000"),
        ),
        ("/photo.jpg", &small[40_000..], Some("bytes=40000-")),
    ] {
        let range = range.map_or(String::new(), |r| format!("Range: {r}\r\n"));
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n{range}\r\n").as_bytes())
            .await
            .unwrap();
        // Read the head, then exactly its Content-Length.
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let mut b = [0u8; 4096];
            let n = s.read(&mut b).await.unwrap();
            assert!(n > 0);
            buf.extend_from_slice(&b[..n]);
        }
        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8(buf[..end].to_vec()).unwrap();
        let status = if range.is_empty() { "200" } else { "206" };
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status} ")),
            "{path}: {head}"
        );
        let len = content_length(&head);
        assert_eq!(len, want.len(), "{path}: {head}");
        buf.drain(..end);
        while buf.len() < len {
            let mut b = vec![0u8; 256 * 1024];
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "{path}: closed after {} of {len}", buf.len());
            buf.extend_from_slice(&b[..n]);
        }
        let body: Vec<u8> = buf.drain(..len).collect();
        assert!(body == want, "{path} {range:?}: the bytes differ");
    }
}

#[tokio::test]
async fn a_file_sent_with_sendfile_leaves_with_its_head_in_one_segment() {
    // 40 000 bytes: enough for sendfile, less than loopback's 64 KiB
    // segment. The head goes with MSG_MORE, so the kernel holds it for the
    // file instead of sending it alone (nginx's `tcp_nopush`).
    let dir = tempfile::tempdir().unwrap();
    let file: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.path().join("mid.jpg"), &file).unwrap();
    let gw = serving(dir.path()).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = Vec::new();
    // The first answer on a connection may be split while its window
    // opens; the second is the steady case.
    let mut segments = Vec::new();
    for _ in 0..2 {
        let before = data_segments_in(&s);
        s.write_all(b"GET /mid.jpg HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let r = response(&mut s, &mut buf).await;
        assert!(r.starts_with("HTTP/1.1 200 "), "{r}");
        assert!(r.len() > file.len(), "{r}");
        segments.push(data_segments_in(&s) - before);
    }
    assert_eq!(segments[1], 1, "data segments of each answer: {segments:?}");
}

/// A gateway serving `root` as a static upstream, on every path.
async fn serving(root: &std::path::Path) -> Gw {
    Gw::start(&format!(
        "[upstreams.site]\nprotocol = \"static\"\nroot = \"{}\"\n[[routes]]\nupstream = \"site\"\n",
        root.display()
    ))
    .await
}

/// Segments with data this socket has received (Linux `tcp_info`'s
/// `tcpi_data_segs_in`, which the libc crate's struct stops short of).
fn data_segments_in(s: &TcpStream) -> u32 {
    use std::os::fd::AsRawFd;
    let mut info = [0u8; 256];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `info`.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    assert_eq!(r, 0, "getsockopt TCP_INFO");
    // struct tcp_info: tcpi_data_segs_in is the u32 at byte 152.
    assert!(
        len >= 156,
        "a tcp_info without data segment counts ({len} bytes)"
    );
    u32::from_ne_bytes(info[152..156].try_into().unwrap())
}

/// The `content-length` a response head (baton writes names in lower case)
/// gives.
fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .expect("a content-length field")
        .parse()
        .expect("a decimal length")
}
