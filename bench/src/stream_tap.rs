//! A TCP relay between a Pub/Sub consumer and the emulator that notes when each benchmark
//! message passes through on its way to the consumer.
//!
//! The emulator cannot be instrumented, so on Pub/Sub "received" had no exact time. Messages
//! reach a consumer in streaming-pull responses: gRPC over plaintext HTTP/2, where a
//! message's data travels as its own bytes (HPACK compresses headers, not data, and none of
//! the consumers asks for message compression). Every benchmark body starts with `{"n":N,`,
//! so the relay reads the emulator's bytes, hands them to the consumer, and then notes the
//! time for each body number it saw in them: the moment the message was written to the
//! consumer's socket, the same moment the SQS endpoint notes when it serves a receive.
//! Added latency is then exact: worker request start − that moment. A body split by an
//! HTTP/2 frame header inside its first bytes is missed, and the run reports how many
//! messages had a time.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::worker::unix_nanos;

const MARKER: &[u8] = b"{\"n\":";
/// Long enough for the marker and the longest number after it.
const CARRY: usize = 32;

#[derive(Clone, Default)]
pub struct Seen {
    recording: Arc<AtomicBool>,
    /// Body number → when its bytes were handed to the consumer (Unix ns); the first time only.
    at: Arc<Mutex<HashMap<u64, u64>>>,
}

impl Seen {
    /// Starts noting afresh.
    pub fn record(&self) {
        self.at.lock().expect("seen lock").clear();
        self.recording.store(true, Ordering::SeqCst);
    }

    pub fn take(&self) -> HashMap<u64, u64> {
        self.recording.store(false, Ordering::SeqCst);
        std::mem::take(&mut *self.at.lock().expect("seen lock"))
    }

    fn note(&self, numbers: &[u64], when: u64) {
        if numbers.is_empty() || !self.recording.load(Ordering::SeqCst) {
            return;
        }
        let mut at = self.at.lock().expect("seen lock");
        for n in numbers {
            at.entry(*n).or_insert(when);
        }
    }
}

pub struct StreamTap {
    pub addr: SocketAddr,
    pub seen: Seen,
    accept: tokio::task::JoinHandle<()>,
}

impl StreamTap {
    /// Relays 127.0.0.1:<free port> to `upstream` until dropped.
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let seen = Seen::default();
        let for_connections = seen.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let seen = for_connections.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        relay(client, server, seen).await;
                    }
                });
            }
        });
        Ok(Self { addr, seen, accept })
    }
}

impl Drop for StreamTap {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn relay(client: TcpStream, server: TcpStream, seen: Seen) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    let upstream = async {
        let _ = tokio::io::copy(&mut from_client, &mut to_server).await;
        let _ = to_server.shutdown().await;
    };
    let downstream = async {
        let mut buf = vec![0u8; 64 * 1024];
        let mut carry: Vec<u8> = Vec::with_capacity(CARRY * 2);
        loop {
            let n = match from_server.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if to_client.write_all(&buf[..n]).await.is_err() {
                break;
            }
            let when = unix_nanos();
            // Scan the bytes with the tail of the previous read in front, so a marker cut
            // between two reads is found; a number is taken only when a byte after it shows
            // it is complete.
            let mut window = std::mem::take(&mut carry);
            window.extend_from_slice(&buf[..n]);
            let (numbers, consumed) = body_numbers(&window);
            seen.note(&numbers, when);
            let keep_from = consumed.max(window.len().saturating_sub(CARRY));
            carry.extend_from_slice(&window[keep_from..]);
        }
        let _ = to_client.shutdown().await;
    };
    tokio::join!(upstream, downstream);
}

/// The body numbers whose `{"n":N` is complete in `bytes` (a non-digit follows N), and how
/// far the scan got past the last of them.
fn body_numbers(bytes: &[u8]) -> (Vec<u64>, usize) {
    let mut numbers = Vec::new();
    let mut consumed = 0;
    let mut i = 0;
    while let Some(offset) = find(&bytes[i..], MARKER) {
        let start = i + offset + MARKER.len();
        let digits = bytes[start..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        let end = start + digits;
        if end >= bytes.len() {
            break; // the number may go on in the next read
        }
        if digits > 0
            && let Some(n) = std::str::from_utf8(&bytes[start..end])
                .ok()
                .and_then(|d| d.parse().ok())
        {
            numbers.push(n);
        }
        consumed = end;
        i = end;
    }
    (numbers, consumed)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_complete_body_numbers_only() {
        let bytes = b"\x00\x00junk{\"n\":12,\"pad\":\"x\"}more{\"n\":7}{\"n\":34";
        let (numbers, consumed) = body_numbers(bytes);
        assert_eq!(numbers, vec![12, 7]);
        // `{"n":34` may continue in the next read, so the scan stops before it.
        assert!(consumed < bytes.len() - 2);
        assert_eq!(&bytes[consumed..consumed + 1], b"}");
    }

    #[tokio::test]
    async fn relays_both_ways_and_notes_bodies_cut_across_reads() {
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream_addr = upstream.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut socket, _) = upstream.accept().await.unwrap();
            let mut hello = [0u8; 5];
            socket.read_exact(&mut hello).await.unwrap();
            assert_eq!(&hello, b"hello");
            // One body cut inside its number, then two more in one write.
            for part in [
                &b"frame{\"n\":12"[..],
                b"3,\"pad\":1}",
                b"{\"n\":5}{\"n\":6}.",
            ] {
                socket.write_all(part).await.unwrap();
                socket.flush().await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(30)).await;
            }
        });
        let tap = StreamTap::start(upstream_addr).await.unwrap();
        tap.seen.record();
        let mut client = TcpStream::connect(tap.addr).await.unwrap();
        client.write_all(b"hello").await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        server.await.unwrap();
        assert_eq!(got, b"frame{\"n\":123,\"pad\":1}{\"n\":5}{\"n\":6}.");
        let seen = tap.seen.take();
        let mut numbers: Vec<u64> = seen.keys().copied().collect();
        numbers.sort();
        assert_eq!(numbers, vec![5, 6, 123]);
    }
}
