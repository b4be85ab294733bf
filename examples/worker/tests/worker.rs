//! The example worker as the sidecar and the sandbox use it: 200 for ordinary messages, 422
//! for poison, 500 at the configured failure rate, and one line per delivery with
//! `WORKER_VERBOSE` (the sandbox's ledger reads those lines).
//!
//! Being an integration test also makes `cargo test --workspace` build the binary, which the
//! operator's live tests and the end-to-end suite run as their pods' worker.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Worker {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(failure_rate: &str) -> Worker {
    let addr = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let child = Command::new(env!("CARGO_BIN_EXE_ferry-example-worker"))
        .env("WORKER_LISTEN", addr.to_string())
        .env("WORKER_LATENCY_MS", "1")
        .env("WORKER_FAILURE_RATE", failure_rate)
        .env("WORKER_VERBOSE", "true")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the example worker");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "the worker never listened on {addr}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Worker { child, addr }
}

/// POSTs `body` as the sidecar would and returns the status code.
fn deliver(addr: SocketAddr, id: &str, body: &str) -> u16 {
    let mut stream = TcpStream::connect(addr).expect("connect");
    write!(
        stream,
        "POST / HTTP/1.1\r\nHost: worker\r\nFerry-Message-Id: {id}\r\nFerry-Delivery-Attempt: 1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"))
}

#[test]
fn ordinary_messages_succeed_poison_is_rejected_and_each_delivery_is_logged() {
    let mut worker = start("0");
    assert_eq!(deliver(worker.addr, "m-1", r#"{"order":1}"#), 200);
    assert_eq!(deliver(worker.addr, "m-2", r#"{"order":"poison"}"#), 422);

    let stdout = worker.child.stdout.take().expect("stdout");
    let lines: Vec<String> = BufReader::new(stdout)
        .lines()
        .take(2)
        .map(|l| l.expect("a line"))
        .collect();
    assert!(
        lines[0].starts_with("200 message=m-1 attempt=1 ") && lines[0].contains("started_ms="),
        "{lines:?}"
    );
    assert!(
        lines[0].ends_with(r#" body={"order":1}"#),
        "the body, last: {lines:?}"
    );
    assert!(lines[1].starts_with("422 message=m-2 "), "{lines:?}");
}

#[test]
fn a_failure_rate_of_one_fails_every_delivery_with_500() {
    let worker = start("1");
    for i in 0..5 {
        assert_eq!(deliver(worker.addr, &format!("m-{i}"), "{}"), 500);
    }
}
