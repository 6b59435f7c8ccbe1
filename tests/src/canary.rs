//! The secret canary: a distinctive password every credential test uses, and
//! assertions that it never shows up where it must not: the aggregator's and agents'
//! logs (captured process output, or this test process's own tracing output) and their
//! `/metrics`. Plain text and base64 (as in a docker config's `auth` field, at any
//! alignment) are both looked for.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use base64::Engine;

/// The password credential tests use. Never expected in any output.
pub const CANARY_PASSWORD: &str = "pw-CANARY-4fQx9Lz2-never-printed";

/// The canary and its base64 forms (three alignments, stable middle parts).
pub fn canary_forms() -> Vec<String> {
    let mut forms = vec![CANARY_PASSWORD.to_string()];
    for offset in 0..3 {
        let mut bytes = vec![b'x'; offset];
        bytes.extend_from_slice(CANARY_PASSWORD.as_bytes());
        let encoded = base64::engine::general_purpose::STANDARD.encode(&bytes);
        let start = if offset == 0 { 0 } else { 4 };
        let end = encoded.len().saturating_sub(4);
        if end > start + 16 {
            forms.push(encoded[start..end].to_string());
            // URL-safe alphabet too.
            forms.push(encoded[start..end].replace('+', "-").replace('/', "_"));
        }
    }
    forms.sort();
    forms.dedup();
    forms
}

/// A password with every character an encoding changes (quote, backslash-free JSON
/// escapes, HTML-escaped by Go's JSON, reserved in URLs and forms, non-ASCII): for the
/// tests where peers echo credentials in every encoding.
pub const HOSTILE_PASSWORD: &str = "pw-CANARY-\"q<&>/+ sp=ce%~\u{f6}-9Zr";

/// Every form `secret` takes when a peer echoes it: raw, JSON-escaped (serde's and
/// Go's), URL- and form-encoded (upper and lower case hex), and base64 at the three
/// alignments it can have in a longer run (standard and URL-safe alphabets, the
/// characters that depend on it alone).
pub fn secret_forms(secret: &str) -> Vec<String> {
    let mut forms = vec![secret.to_string()];
    let json = serde_json::to_string(secret).unwrap_or_default();
    let json = json.trim_matches('"').to_string();
    let go = json
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026");
    forms.push(json);
    forms.push(go);
    for (space, lower) in [("+", false), ("%20", false), ("+", true), ("%20", true)] {
        let mut encoded = String::new();
        for byte in secret.bytes() {
            match byte {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    encoded.push(byte as char)
                }
                b' ' => encoded.push_str(space),
                other if lower => encoded.push_str(&format!("%{other:02x}")),
                other => encoded.push_str(&format!("%{other:02X}")),
            }
        }
        forms.push(encoded);
    }
    for offset in 0..3 {
        let mut bytes = vec![0u8; offset];
        bytes.extend_from_slice(secret.as_bytes());
        let encoded = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&bytes);
        let first = (offset * 8).div_ceil(6);
        let end = ((offset + secret.len()) * 8) / 6;
        let core = encoded[first..end].to_string();
        forms.push(core.replace('+', "-").replace('/', "_"));
        forms.push(core);
    }
    forms.sort();
    forms.dedup();
    forms
}

/// Panics if `text` holds [`HOSTILE_PASSWORD`] in any of its [`secret_forms`], or
/// the canary marker at all (a secret's start, cut short, counts).
#[track_caller]
pub fn assert_no_hostile_secret(what: &str, text: &str) {
    let mut forms = secret_forms(HOSTILE_PASSWORD);
    forms.push("CANARY".to_string());
    for form in forms {
        if let Some(at) = text.find(&form) {
            panic!(
                "the hostile password leaked into {what} (as {form:?}), near:\n{}",
                leading_up_to(text, at, &form)
            );
        }
    }
}

/// The first canary form found in `text`, if any.
pub fn find_canary(text: &str) -> Option<String> {
    canary_forms().into_iter().find(|form| text.contains(form))
}

/// Panics if `text` (described by `what`: "aggregator log", "/metrics"...) contains
/// the canary in any form.
#[track_caller]
pub fn assert_no_canary(what: &str, text: &str) {
    if let Some(form) = find_canary(text) {
        let at = text.find(&form).unwrap_or(0);
        panic!(
            "the canary password leaked into {what} (as {form:?}), near:\n{}",
            leading_up_to(text, at, &form)
        );
    }
}

/// The 200 characters of `text` before `form` (found at byte `at`), and `form`: where a
/// leak is, for its panic message.
fn leading_up_to<'a>(text: &'a str, at: usize, form: &str) -> &'a str {
    let from = text[..at]
        .char_indices()
        .rev()
        .nth(200)
        .map_or(0, |(i, _)| i);
    &text[from..(at + form.len()).min(text.len())]
}

/// [`assert_no_canary`] over a file (a captured process log); a missing file is empty.
#[track_caller]
pub fn assert_no_canary_in_file(what: &str, path: &Path) {
    let text = std::fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default();
    assert_no_canary(&format!("{what} ({})", path.display()), &text);
}

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

static CAPTURED: OnceLock<Option<Buffer>> = OnceLock::new();

/// Captures this test process's tracing output (every level, every crate) from now
/// on, for in-process aggregators and agents; call it first in each test. Returns
/// false when another global subscriber was installed first (nothing is captured).
pub fn capture_process_logs() -> bool {
    CAPTURED
        .get_or_init(|| {
            let buffer = Buffer::default();
            let writer = buffer.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_max_level(tracing::Level::TRACE)
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .finish();
            tracing::subscriber::set_global_default(subscriber)
                .ok()
                .map(|()| buffer)
        })
        .is_some()
}

/// What [`capture_process_logs`] captured so far (all tests of this process).
pub fn captured_process_logs() -> String {
    match CAPTURED.get() {
        Some(Some(buffer)) => {
            let bytes = buffer.0.lock().unwrap_or_else(|e| e.into_inner());
            String::from_utf8_lossy(&bytes).into_owned()
        }
        _ => String::new(),
    }
}

/// [`assert_no_canary`] over this process's captured tracing output; panics if
/// nothing was ever captured (a test that forgot [`capture_process_logs`] must not
/// pass vacuously).
#[track_caller]
pub fn assert_no_canary_in_process_logs() {
    assert!(
        matches!(CAPTURED.get(), Some(Some(_))),
        "capture_process_logs() was not called (or another subscriber won)"
    );
    assert_no_canary("this process's logs", &captured_process_logs());
}

/// A test body run with this process's logs captured, failing if it runs past `limit`,
/// then [`assert_no_canary_in_process_logs`]: the frame of every test that runs an
/// aggregator or agent in-process.
pub async fn bounded_without_canary<F: std::future::Future<Output = ()>>(
    limit: std::time::Duration,
    test: F,
) {
    capture_process_logs();
    tokio::time::timeout(limit, test)
        .await
        .expect("test did not finish in time");
    assert_no_canary_in_process_logs();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_canary_plain_and_in_base64_at_any_alignment() {
        assert!(find_canary("nothing here").is_none());
        assert!(find_canary(&format!("password={CANARY_PASSWORD}")).is_some());
        for user in ["a", "al", "ali", "alice"] {
            let auth = base64::engine::general_purpose::STANDARD
                .encode(format!("{user}:{CANARY_PASSWORD}"));
            assert!(find_canary(&auth).is_some(), "{user}: {auth}");
        }
        let result = std::panic::catch_unwind(|| assert_no_canary("x", CANARY_PASSWORD));
        assert!(result.is_err());
    }

    #[test]
    fn captured_logs_see_tracing_output() {
        assert!(capture_process_logs());
        tracing::warn!(marker = "canary-capture-check", "hello");
        assert!(captured_process_logs().contains("canary-capture-check"));
        assert_no_canary_in_process_logs();
        tracing::debug!("{CANARY_PASSWORD}");
        let result = std::panic::catch_unwind(assert_no_canary_in_process_logs);
        assert!(result.is_err(), "a leak is caught");
    }
}
