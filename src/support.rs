//! Small pieces both binaries need, kept in one place: error chains for reasons and
//! logs, poison-tolerant locking, the TLS crypto provider, and start-up (logging and
//! the async runtime).

use std::sync::{Mutex, MutexGuard};

/// An error and all its causes, `: `-joined. (reqwest's own Display omits the cause,
/// which is where "connection refused" lives.) Never contains credentials as long as
/// none are put in URLs, which pullwatch never does.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![error.to_string()];
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    parts.join(": ")
}

/// Locks a std mutex, recovering the data if a holder panicked: every value pullwatch
/// guards this way is valid at every point, so a poisoned lock carries nothing
/// half-written.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// rustls needs one process-wide crypto provider; ring is the one pullwatch builds with.
pub fn install_crypto_provider() {
    // Err means one is installed already, which is all that is needed.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Log line formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("--log-level {filter:?} is not a valid filter: {source}")]
pub struct LoggingError {
    filter: String,
    source: tracing_subscriber::filter::ParseError,
}

/// Logs to stderr (stdout stays machine-readable for `-o json`) with an EnvFilter.
pub fn init_logging(filter: &str, format: LogFormat) -> Result<(), LoggingError> {
    let env_filter =
        tracing_subscriber::EnvFilter::try_new(filter).map_err(|source| LoggingError {
            filter: filter.to_string(),
            source,
        })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

/// Heap arenas glibc may create, unless `MALLOC_ARENA_MAX` (or `GLIBC_TUNABLES`) says
/// otherwise.
pub const MALLOC_ARENAS: i32 = 1;

/// Caps glibc's heap arenas at [`MALLOC_ARENAS`]. By default each thread that finds
/// the heap locked gets an arena of its own (up to 8 per core), and each keeps what it
/// freed: after 30 s of pod churn at 20k workloads (`cluster_scale`) RSS was 72 MiB
/// with the default, 66 with two arenas, 62 with one, at the same CPU. One suffices
/// for processes that allocate little in parallel: glibc's per-thread cache serves
/// most small allocations without the arena's lock. Runs before the runtime starts
/// its threads.
fn limit_malloc_arenas() {
    let set_by_user = std::env::var_os("MALLOC_ARENA_MAX").is_some()
        || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc.arena_max"));
    if set_by_user {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a tunable of the allocator; it takes no pointers.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS);
    }
}

/// Gives the allocator's free memory back to the OS: glibc's `malloc_trim`, which also
/// releases whole free pages inside the heap (not only at its top). Freed buffers
/// scattered among live ones are otherwise kept: after a wave of thousands of
/// connections closing and reopening, RSS stays up by a third. Costs a walk of the
/// heap's free chunks (milliseconds); nothing elsewhere than glibc.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers; it only returns free heap pages.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// What both binaries do first: logging as [`init_logging`], then the multi-threaded
/// tokio runtime they run on. Err: [`crate::Error::Logging`] (a bad `--log-level`, a
/// usage error) or [`crate::Error::AsyncRuntime`].
pub fn start(log_filter: &str, format: LogFormat) -> crate::Result<tokio::runtime::Runtime> {
    init_logging(log_filter, format)?;
    limit_malloc_arenas();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(crate::Error::AsyncRuntime)
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

/// `sha256:<hex>` of `bytes`: the digest of content in the OCI/distribution sense.
pub fn sha256_digest(bytes: &[u8]) -> String {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(bytes);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for byte in hash {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn chains_causes_without_repeating_them() {
        let error = Outer(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connection refused",
        ));
        assert_eq!(error_chain(&error), "outer: connection refused");
    }

    #[test]
    fn poisoned_locks_still_give_the_data() {
        let mutex = std::sync::Arc::new(Mutex::new(5));
        let clone = mutex.clone();
        let _ = std::thread::spawn(move || {
            let _guard = clone.lock().unwrap();
            panic!("poison");
        })
        .join();
        assert_eq!(*lock(&mutex), 5);
    }

    #[test]
    fn bad_filters_are_reported() {
        let error = init_logging("=[", LogFormat::Text).unwrap_err();
        assert!(error.to_string().contains("--log-level"), "{error}");
    }

    #[test]
    fn sha256_digest_of_empty_content() {
        assert_eq!(
            sha256_digest(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
