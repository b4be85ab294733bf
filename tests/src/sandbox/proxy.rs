//! A TCP proxy in front of a queue emulator that can cut the line: while cut, every open
//! connection is closed and new ones are closed as soon as they are accepted, as a queue API
//! that is unreachable looks to its clients.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct FaultProxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    /// Bumped on every cut, so the connections open at that moment close.
    epoch: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let cut = Arc::new(AtomicBool::new(false));
        let (epoch, _) = watch::channel(0u64);
        let task = tokio::spawn({
            let cut = cut.clone();
            let epoch = epoch.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    if cut.load(Ordering::SeqCst) {
                        drop(client);
                        continue;
                    }
                    let mut closed = epoch.subscribe();
                    tokio::spawn(async move {
                        let Ok(server) = TcpStream::connect(upstream).await else {
                            return;
                        };
                        let (mut client, mut server) = (client, server);
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            _ = closed.changed() => {}
                        }
                    });
                }
            }
        });
        Ok(Self {
            addr,
            cut,
            epoch,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The queue API becomes unreachable.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.epoch.send_modify(|e| *e += 1);
    }

    /// The queue API is back.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.epoch.send_modify(|e| *e += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn it_forwards_until_cut_and_again_once_restored() {
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream_addr = upstream.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = upstream.accept().await {
                tokio::spawn(async move {
                    let mut buffer = [0u8; 4];
                    while socket.read_exact(&mut buffer).await.is_ok() {
                        if socket.write_all(&buffer).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let proxy = FaultProxy::start(upstream_addr).await.unwrap();
        let echo = |mut s: TcpStream| async move {
            s.write_all(b"ping").await.ok()?;
            let mut buffer = [0u8; 4];
            s.read_exact(&mut buffer).await.ok()?;
            Some((buffer, s))
        };
        let (answer, open) = echo(TcpStream::connect(proxy.addr()).await.unwrap())
            .await
            .unwrap();
        assert_eq!(&answer, b"ping");
        proxy.cut();
        assert!(echo(open).await.is_none(), "an open connection is closed");
        let refused = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(echo(refused).await.is_none(), "a new one is closed at once");
        proxy.restore();
        let (answer, _) = echo(TcpStream::connect(proxy.addr()).await.unwrap())
            .await
            .unwrap();
        assert_eq!(&answer, b"ping");
    }
}
