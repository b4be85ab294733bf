//! The example worker as the sidecar and the sandbox use it: 200 for ordinary messages, 422
//! for poison, 500 at the configured failure rate, and one line per delivery with
//! `WORKER_VERBOSE` (the sandbox's ledger reads those lines).
//!
//! Being an integration test also makes `cargo test --workspace` build the binary, which the
//! operator's live tests and the end-to-end suite run as their pods' worker.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStderr, Command, Stdio};

struct Worker {
    child: Child,
    addr: SocketAddr,
    /// Held open so that a later line on stderr does not fail the worker's write.
    _stderr: BufReader<ChildStderr>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(failure_rate: &str) -> Worker {
    // Port 0, and the address read back from the worker's first line: choosing a free port
    // here and handing it over would race with the other test doing the same, and two
    // workers could end up sharing one port (one of them failing to bind).
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry-example-worker"))
        .env("WORKER_LISTEN", "127.0.0.1:0")
        .env("WORKER_LATENCY_MS", "1")
        .env("WORKER_FAILURE_RATE", failure_rate)
        .env("WORKER_VERBOSE", "true")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the example worker");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut first_line = String::new();
    stderr
        .read_line(&mut first_line)
        .expect("the worker's first line");
    let addr = first_line
        .trim()
        .strip_prefix("example worker listening on http://")
        .and_then(|rest| rest.strip_suffix('/'))
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("no listening address in {first_line:?}"));
    Worker {
        child,
        addr,
        _stderr: stderr,
    }
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
