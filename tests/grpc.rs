//! gRPC through baton: HTTP/2 to the upstream (h2c), trailers passed on,
//! and baton's own failures answered in gRPC's form to a real gRPC client
//! (Python's grpcio).

use std::net::SocketAddr;
use std::process::{Command, Stdio};

use crate::support::*;

const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/grpc/peer.py");

/// One unary call through `addr`; the client's JSON account of it.
async fn call(addr: SocketAddr, method: &str) -> serde_json::Value {
    let method = method.to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args([PEER, "call", &addr.to_string(), &method])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[tokio::test]
async fn grpc_passes_through_and_failures_come_back_as_grpc_statuses() {
    let port = refusing_addr().port();
    let server: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let _server = peer(
        Command::new("python3")
            .args([PEER, "serve", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
        server,
    )
    .await;
    let down = refusing_addr();
    let gw = Gw::start(&format!(
        "[upstreams.grpc]\nservers = [\"{server}\"]\nprotocol = \"grpc\"\nread_timeout = \"1s\"\n\n[upstreams.gone]\nservers = [\"{down}\"]\nprotocol = \"grpc\"\nretries = 0\n\n[[routes]]\npath = \"/test.Echo/\"\nupstream = \"grpc\"\n\n[[routes]]\npath = \"/gone.Echo/\"\nupstream = \"gone\"\n"
    ))
    .await;

    // Through, with the server's trailers.
    let v = call(gw.addr, "/test.Echo/Say").await;
    assert_eq!(v["code"], "OK", "{v}");
    assert_eq!(v["reply"], "hello baton");
    assert_eq!(v["trailers"]["x-echo-trailer"], "kept", "{v}");

    // The server too slow: DEADLINE_EXCEEDED, with the cause.
    let v = call(gw.addr, "/test.Echo/Slow").await;
    assert_eq!(v["code"], "DEADLINE_EXCEEDED", "{v}");
    assert!(
        v["details"]
            .as_str()
            .unwrap()
            .starts_with("response_head_timeout: "),
        "{v}"
    );

    // The upstream down: UNAVAILABLE, with the cause.
    let v = call(gw.addr, "/gone.Echo/Say").await;
    assert_eq!(v["code"], "UNAVAILABLE", "{v}");
    assert!(
        v["details"]
            .as_str()
            .unwrap()
            .starts_with("connection_refused: "),
        "{v}"
    );
    gw.stop().await;
}
