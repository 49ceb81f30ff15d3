//! A minimal HTTP/1.1 client for the tests of the metrics address: one
//! request per connection, read to the end.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

/// A free loopback TCP port.
pub fn tcp_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Sends `raw` (a whole request) and reads the answer to the end: (status
/// code, head, body). Status 0 when the connection was closed without one.
pub fn http_raw(addr: SocketAddr, raw: &[u8]) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(raw).expect("write");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, head.to_owned(), body.to_owned())
}

/// `METHOD path` with extra header lines, connection closed after it.
pub fn http(addr: SocketAddr, method: &str, path: &str, headers: &str) -> (u16, String, String) {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Connection: close\r\nContent-Length: 0\r\n\r\n"
    );
    http_raw(addr, req.as_bytes())
}

/// `GET path`: (status, body).
pub fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let (code, _, body) = http(addr, "GET", path, "");
    (code, body)
}

/// `GET path` that must answer 200 with JSON.
pub fn get_json(addr: SocketAddr, path: &str) -> serde_json::Value {
    let (code, head, body) = http(addr, "GET", path, "");
    assert_eq!(code, 200, "GET {path}: {head}\n{body}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "GET {path}: {head}"
    );
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {body}"))
}

/// Waits until `addr` answers `/healthz`.
pub fn wait_healthy(addr: SocketAddr) {
    super::eventually(
        &format!("{addr}/healthz answers"),
        Duration::from_secs(30),
        || {
            TcpStream::connect(addr).ok()?;
            (get(addr, "/healthz") == (200, "ok\n".to_owned())).then_some(())
        },
    );
}
