//! Small pieces both binaries need, kept in one place: error chains for reasons and
//! logs, poison-tolerant locking, the TLS crypto provider, and start-up (logging and
//! the async runtime).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

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
/// Text lines escape control and bidi characters in every field (a name holding a
/// newline cannot forge a line, nor ESC rewrite the terminal) and carry colours only
/// when stderr is a terminal and `NO_COLOR` is unset.
pub fn init_logging(filter: &str, format: LogFormat) -> Result<(), LoggingError> {
    use std::io::IsTerminal;

    let env_filter =
        tracing_subscriber::EnvFilter::try_new(filter).map_err(|source| LoggingError {
            filter: filter.to_string(),
            source,
        })?;
    let colours = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_ansi(colours)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.fmt_fields(EscapedFields).init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

/// Text-log fields as tracing-subscriber writes them (`message`, then `name=value`,
/// the `log.*` fields of bridged `log` records left out), each value passed through
/// [`escape_controls`].
struct EscapedFields;

impl<'writer> tracing_subscriber::fmt::FormatFields<'writer> for EscapedFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        writer: tracing_subscriber::fmt::format::Writer<'writer>,
        fields: R,
    ) -> std::fmt::Result {
        let mut visitor = EscapingVisitor {
            writer,
            result: Ok(()),
            first: true,
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct EscapingVisitor<'writer> {
    writer: tracing_subscriber::fmt::format::Writer<'writer>,
    result: std::fmt::Result,
    first: bool,
}

impl tracing::field::Visit for EscapingVisitor<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let name = field.name();
        if self.result.is_err() || name.starts_with("log.") {
            return;
        }
        let text = format!("{value:?}");
        let text = escape_controls(&text);
        let separator = if std::mem::take(&mut self.first) {
            ""
        } else {
            " "
        };
        self.result = if name == "message" {
            write!(self.writer, "{separator}{text}")
        } else {
            let name = name.strip_prefix("r#").unwrap_or(name);
            write!(self.writer, "{separator}{name}={text}")
        };
    }
}

/// Bidirectional-text controls: they reorder what a terminal shows.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// `text` with control characters (C0, DEL, C1: newline, CR, ESC, BEL...) and bidi
/// controls written as `\u{…}`, so it prints on one line and cannot move the cursor,
/// recolour or reorder a terminal. Untouched (borrowed) when there is none.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(|c| c.is_control() || is_bidi_control(c)) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() || is_bidi_control(c) {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Lets a repeated event through at most once per interval per key, with how many
/// times it happened since the last one let through: a flood is one log line per
/// interval, its size still told.
pub struct Throttle {
    interval: Duration,
    seen: Mutex<HashMap<&'static str, (Option<Instant>, u64)>>,
}

impl Throttle {
    pub fn new(interval: Duration) -> Self {
        Throttle {
            interval,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one `key` event; Some(count since the last one let through, this one
    /// included) when this one is to be logged.
    pub fn hit(&self, key: &'static str) -> Option<u64> {
        let mut seen = lock(&self.seen);
        let (last, count) = seen.entry(key).or_insert((None, 0));
        *count += 1;
        if last.is_some_and(|at| at.elapsed() < self.interval) {
            return None;
        }
        let total = *count;
        *last = Some(Instant::now());
        *count = 0;
        Some(total)
    }
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
    fn controls_and_bidi_are_escaped() {
        assert!(matches!(escape_controls("plain näme"), Cow::Borrowed(_)));
        assert_eq!(
            escape_controls("a\nb\r\x1b[31mc\x07\u{202E}d\u{85}"),
            "a\\u{a}b\\u{d}\\u{1b}[31mc\\u{7}\\u{202e}d\\u{85}"
        );
    }

    #[test]
    fn text_log_fields_are_escaped() {
        use std::sync::Arc;
        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                lock(&self.0).extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .fmt_fields(EscapedFields)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let name = "web\n2026-01-01T00:00:00Z ERROR forged\x1b[31m";
            tracing::warn!(%name, r#type = "x", "workload {name} gone");
        });
        let text = String::from_utf8(lock(&buffer.0).clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(!text.contains('\x1b'), "{text}");
        assert!(
            text.contains(
                "workload web\\u{a}2026-01-01T00:00:00Z ERROR forged\\u{1b}[31m gone name=web\\u{a}"
            ),
            "{text}"
        );
        assert!(text.contains(" type=\"x\""), "{text}");
    }

    #[test]
    fn throttle_lets_one_through_per_interval_with_the_count() {
        let throttle = Throttle::new(Duration::from_millis(200));
        assert_eq!(throttle.hit("a"), Some(1));
        assert_eq!(throttle.hit("a"), None);
        assert_eq!(throttle.hit("a"), None);
        assert_eq!(throttle.hit("b"), Some(1), "keys apart");
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(throttle.hit("a"), Some(3), "the two held back and this one");
        assert_eq!(throttle.hit("a"), None);
    }

    #[test]
    fn sha256_digest_of_empty_content() {
        assert_eq!(
            sha256_digest(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
