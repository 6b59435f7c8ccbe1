//! Text made safe to print on a terminal: what log lines and report tables carry of
//! names and reasons that came from elsewhere (a workload, a registry); and a report
//! written to standard output whoever reads it.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Writes a command's report to stdout. A reader that stopped reading (`check ... |
/// head`) took what it wanted: not an error, so the command ends with its own status
/// rather than the panic of `println!`.
pub fn write_stdout(report: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(report.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => Err(error),
        _ => Ok(()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_and_bidi_are_escaped() {
        assert!(matches!(escape_controls("plain näme"), Cow::Borrowed(_)));
        assert_eq!(
            escape_controls("a\nb\r\x1b[31mc\x07\u{202E}d\u{85}"),
            "a\\u{a}b\\u{d}\\u{1b}[31mc\\u{7}\\u{202e}d\\u{85}"
        );
    }
}
