//! A fault-injecting TCP proxy in front of a real registry: it passes bytes through,
//! answers every request with an HTTP error status (a registry answering 5xx), or holds
//! new connections without a word until told otherwise (a check caught mid-flight).
//! Changing the mode cuts the connections it was passing through, so pooled keep-alive
//! connections see the new mode at their next request.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::serve::{LoopbackListener, LoopbackServer};

/// What the proxy does with a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyMode {
    /// Pass bytes to the registry and back.
    Pass,
    /// Answer every request with this status (`Connection: close`).
    Status(u16),
    /// Accept, read nothing, answer nothing, until the mode changes.
    Hold,
}

/// The proxy, on `127.0.0.1:<free port>`. Stops (cutting every connection) on drop.
pub struct FaultProxy {
    server: LoopbackServer,
    mode: watch::Sender<ProxyMode>,
    held: Arc<Mutex<Vec<SocketAddr>>>,
}

impl FaultProxy {
    /// Starts in [`ProxyMode::Pass`] towards `backend`. Must be called inside a tokio
    /// runtime.
    pub async fn start(backend: SocketAddr) -> Result<FaultProxy> {
        let listener = LoopbackListener::bind("the fault proxy").await?;
        let (mode, _) = watch::channel(ProxyMode::Pass);
        let held: Arc<Mutex<Vec<SocketAddr>>> = Arc::default();
        let (modes, held_list) = (mode.clone(), held.clone());
        let server = listener.serve(move |stream, peer| {
            serve(stream, peer, backend, modes.subscribe(), held_list.clone())
        });
        Ok(FaultProxy { server, mode, held })
    }

    /// `127.0.0.1:PORT`: the registry host images name.
    pub fn host(&self) -> String {
        self.server.addr().to_string()
    }

    /// Switches the mode; connections being passed through are cut.
    pub fn set(&self, mode: ProxyMode) {
        self.mode.send_replace(mode);
    }

    /// The peers (client addresses) of the connections held right now.
    pub fn held_peers(&self) -> Vec<SocketAddr> {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

async fn serve(
    mut client: TcpStream,
    peer: SocketAddr,
    backend: SocketAddr,
    mut rx: watch::Receiver<ProxyMode>,
    held: Arc<Mutex<Vec<SocketAddr>>>,
) {
    loop {
        let mode = *rx.borrow_and_update();
        match mode {
            ProxyMode::Hold => {
                held.lock().unwrap_or_else(|e| e.into_inner()).push(peer);
                let changed = rx.changed().await;
                held.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .retain(|p| *p != peer);
                if changed.is_err() {
                    return;
                }
            }
            ProxyMode::Status(code) => {
                answer_status(&mut client, code).await;
                return;
            }
            ProxyMode::Pass => {
                let Ok(mut upstream) = TcpStream::connect(backend).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                    _ = rx.changed() => {}
                }
                return;
            }
        }
    }
}

/// Reads one request head and answers `code` with no body, closing the connection.
async fn answer_status(client: &mut TcpStream, code: u16) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
        match client.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let response = format!(
        "HTTP/1.1 {code} Fault Injected\r\nContent-Type: text/plain\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let _ = client.write_all(response.as_bytes()).await;
    let _ = client.shutdown().await;
}
