//! A binary's process from start to stop: [`start`] (logging, the allocator's
//! arenas, the async runtime), the TLS crypto provider every client and server needs
//! once per process, and the signal to shut down on.

use crate::logging::{LogFormat, init_logging};
use crate::memory::limit_malloc_arenas;

/// What both binaries do first: logging as [`init_logging`], the allocator's arenas
/// capped, then the multi-threaded tokio runtime they run on. Err: [`crate::Error::Logging`] (a bad `--log-level`, a
/// usage error) or [`crate::Error::AsyncRuntime`].
pub fn start(log_filter: &str, format: LogFormat) -> crate::Result<tokio::runtime::Runtime> {
    init_logging(log_filter, format)?;
    limit_malloc_arenas();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(crate::Error::AsyncRuntime)
}

/// rustls needs one process-wide crypto provider; ring is the one pullwatch builds with.
pub fn install_crypto_provider() {
    // Err means one is installed already, which is all that is needed.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// SIGTERM (the kubelet stopping the pod) or Ctrl-C: when both binaries shut down.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
