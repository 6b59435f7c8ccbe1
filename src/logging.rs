//! Logging both binaries share: the log line formats, setting up tracing on stderr
//! with every text field escaped, and a throttle that turns a flood of one event into
//! one line per interval.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::locks::lock;
use crate::terminal::escape_controls;

/// Log line formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("--log-level {filter:?} is not a valid filter: {source}")]
    Invalid {
        filter: String,
        source: tracing_subscriber::filter::ParseError,
    },
    #[error(
        "--log-level {filter:?} would hide every log of pullwatch, errors included: {word:?} is not a level (off, error, warn, info, debug, trace) but a log target; e.g. info, or info,pullwatch_agent=debug"
    )]
    HidesPullwatch { filter: String, word: String },
}

/// Refuses a filter none of whose directives reaches pullwatch's own targets: EnvFilter
/// takes a word that is no level (`verbose`, `warning`) for a target, and pullwatch
/// would then log nothing at all. Filters with span or field selectors are left to
/// EnvFilter.
fn filter_hides_pullwatch(filter: &str) -> Result<(), LoggingError> {
    use std::str::FromStr;
    use tracing_subscriber::filter::LevelFilter;

    if filter.trim().is_empty() || filter.contains(['[', '{']) {
        return Ok(());
    }
    let ours = |target: &str| target.starts_with("pullwatch") || "pullwatch".starts_with(target);
    let mut first_target = None;
    for directive in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let reaches_us = match directive.split_once('=') {
            Some((target, _)) => ours(target.trim()),
            None => LevelFilter::from_str(directive).is_ok() || ours(directive),
        };
        if reaches_us {
            return Ok(());
        }
        first_target.get_or_insert(directive.split('=').next().unwrap_or(directive));
    }
    Err(LoggingError::HidesPullwatch {
        filter: filter.to_string(),
        word: first_target.unwrap_or(filter).to_string(),
    })
}

/// Logs to stderr (stdout stays machine-readable for `-o json`) with an EnvFilter.
/// Text lines escape control and bidi characters in every field (a name holding a
/// newline cannot forge a line, nor ESC rewrite the terminal) and carry colours only
/// when stderr is a terminal and `NO_COLOR` is unset.
pub(crate) fn init_logging(filter: &str, format: LogFormat) -> Result<(), LoggingError> {
    use std::io::IsTerminal;

    let env_filter =
        tracing_subscriber::EnvFilter::try_new(filter).map_err(|source| LoggingError::Invalid {
            filter: filter.to_string(),
            source,
        })?;
    filter_hides_pullwatch(filter)?;
    let colours = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_ansi(colours)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .fmt_fields(EscapedFields)
            .finish()
            .with(QuietVerifierErrors)
            .init(),
        LogFormat::Json => builder.json().finish().with(QuietVerifierErrors).init(),
    }
    Ok(())
}

/// Drops rustls-platform-verifier's ERROR records ("failed to verify TLS certificate"),
/// one per failed handshake: the check that made the handshake already says why in its
/// status and reason, and a registry with an untrusted certificate would otherwise
/// write an ERROR line at every check. The crate's warnings (a platform root that does
/// not load) stay. Its records come through `log`, whose target tracing-log restores.
struct QuietVerifierErrors;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for QuietVerifierErrors {
    fn event_enabled(
        &self,
        event: &tracing::Event<'_>,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        use tracing_log::NormalizeEvent as _;
        let normalized = event.normalized_metadata();
        let metadata = normalized.as_ref().unwrap_or_else(|| event.metadata());
        !(*metadata.level() == tracing::Level::ERROR
            && metadata.target().starts_with("rustls_platform_verifier"))
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_filters_are_reported() {
        let error = init_logging("=[", LogFormat::Text).unwrap_err();
        assert!(error.to_string().contains("--log-level"), "{error}");
    }

    /// EnvFilter takes a word that is no level for a target: `verbose` or `warning`
    /// would show only that target's logs, so pullwatch would run without a single log
    /// line, errors included. Refused; every filter that keeps pullwatch's own logs
    /// (a level, or a directive for a pullwatch target) is taken.
    #[test]
    fn filters_that_hide_every_pullwatch_log_are_refused() {
        for silent in [
            "verbose",
            "warning",
            "INFORMATION",
            "tonic",
            "hyper=debug,h2",
        ] {
            let error = filter_hides_pullwatch(silent).unwrap_err();
            let text = error.to_string();
            assert!(
                text.contains("--log-level") && text.contains(silent),
                "{text}"
            );
            assert!(text.contains("not a level"), "{text}");
        }
        for kept in [
            "info",
            "WARN",
            "off",
            "3",
            "info,pullwatch_aggregator=debug",
            "pullwatch_agent=debug",
            "pullwatch=trace,tonic=off",
            "pullwatch_agent::session",
            "tonic=debug,warn",
            "[request]=debug",
            "",
        ] {
            assert!(filter_hides_pullwatch(kept).is_ok(), "{kept}");
        }
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
}
