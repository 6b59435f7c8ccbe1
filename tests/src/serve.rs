//! The serving core the bench's small servers and proxies share: a loopback listener
//! whose accept loop hands each connection to the server's own handler, the
//! connections living in a task set owned by the loop, so dropping the server cuts them
//! all.

use std::future::Future;
use std::net::SocketAddr;

use anyhow::{Context, Result};
use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// A listener bound on `127.0.0.1:<free port>`, not yet serving: its address is known
/// before the handler is built (for servers that name themselves in their answers).
pub(crate) struct LoopbackListener {
    listener: TcpListener,
    addr: SocketAddr,
}

impl LoopbackListener {
    /// Binds a free loopback port; `what` names the server in the error.
    pub(crate) async fn bind(what: &str) -> Result<LoopbackListener> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .with_context(|| format!("binding {what}"))?;
        let addr = listener.local_addr()?;
        Ok(LoopbackListener { listener, addr })
    }

    /// Binds `addr` (an IPv4 loopback address; port 0 for a free one) with
    /// `SO_REUSEADDR`, so that a server stopped with [`LoopbackServer::stop`] can bind
    /// its port again at once.
    pub(crate) fn bind_reusable(addr: SocketAddr) -> std::io::Result<LoopbackListener> {
        let socket = TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        let listener = socket.listen(1024)?;
        let addr = listener.local_addr()?;
        Ok(LoopbackListener { listener, addr })
    }

    /// The bound address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until dropped: each accepted connection (and its peer's address) goes to
    /// `connection`, run as its own task. Must be called inside a tokio runtime.
    pub(crate) fn serve<F, Fut>(self, connection: F) -> LoopbackServer
    where
        F: Fn(TcpStream, SocketAddr) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let LoopbackListener { listener, addr } = self;
        let task = tokio::spawn(async move {
            // Connection tasks live in this set and are aborted with it.
            let mut connections = JoinSet::new();
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    Some(_) = connections.join_next(), if !connections.is_empty() => continue,
                };
                let Ok((stream, peer)) = accepted else {
                    continue;
                };
                connections.spawn(connection(stream, peer));
            }
        });
        LoopbackServer { addr, task }
    }
}

/// A serving loopback listener; stops, cutting every connection, on drop.
pub(crate) struct LoopbackServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl LoopbackServer {
    /// `127.0.0.1:PORT`.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether the accept loop still runs.
    pub(crate) fn is_running(&self) -> bool {
        !self.task.is_finished()
    }

    /// Stops serving and waits until the listener and every connection are closed.
    pub(crate) async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for LoopbackServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves one HTTP/1 connection with `service` until the client closes it.
pub(crate) async fn serve_http1<S, B>(stream: TcpStream, service: S)
where
    S: Service<http::Request<Incoming>, Response = http::Response<B>>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}
