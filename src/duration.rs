//! Go's `time.ParseDuration`, exactly: the syntax of every duration flag of both
//! binaries (as the older exporter's users write them: `1m30s`, `1.5h`, `300ms`) and of
//! `metav1.Duration` fields in kubelet configuration (`defaultCacheDuration`,
//! `cacheDuration`).
//!
//! `[-+]?([0-9]*(\.[0-9]*)?[a-z]+)+`, units `ns`, `us` (`µs`, `μs`), `ms`, `s`, `m`,
//! `h`; the bare string `0` is zero; the value must fit in an `i64` of nanoseconds.

use std::time::Duration;

/// Why a string is not a Go duration (Go's own wording).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("time: invalid duration {0:?}")]
    Invalid(String),
    #[error("time: missing unit in duration {0:?}")]
    MissingUnit(String),
    #[error("time: unknown unit {unit:?} in duration {input:?}")]
    UnknownUnit { unit: String, input: String },
    #[error("duration {0:?} is negative")]
    Negative(String),
    #[error("duration {0:?} must be greater than zero")]
    Zero(String),
}

const NANOS_PER: [(&str, u64); 8] = [
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000), // U+00B5 micro sign
    ("μs", 1_000), // U+03BC Greek mu
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

const LIMIT: u64 = 1 << 63;

/// Go's `time.ParseDuration`: signed nanoseconds.
pub fn parse_nanos(input: &str) -> Result<i64, DurationError> {
    let invalid = || DurationError::Invalid(input.to_string());
    let mut s = input.as_bytes();
    let mut negative = false;
    if let Some(&c) = s.first()
        && (c == b'-' || c == b'+')
    {
        negative = c == b'-';
        s = &s[1..];
    }
    if s == b"0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    let mut total: u64 = 0;
    while !s.is_empty() {
        if !(s[0] == b'.' || s[0].is_ascii_digit()) {
            return Err(invalid());
        }
        // [0-9]*
        let before = s.len();
        let (mut value, rest) = leading_int(s).ok_or_else(invalid)?;
        s = rest;
        let pre = before != s.len();
        // (\.[0-9]*)?
        let mut post = false;
        let (mut fraction, mut scale) = (0u64, 1f64);
        if s.first() == Some(&b'.') {
            s = &s[1..];
            let before = s.len();
            let (f, sc, rest) = leading_fraction(s);
            (fraction, scale, s) = (f, sc, rest);
            post = before != s.len();
        }
        if !pre && !post {
            return Err(invalid());
        }
        // The unit: everything up to the next '.' or digit.
        let unit_len = s
            .iter()
            .position(|&c| c == b'.' || c.is_ascii_digit())
            .unwrap_or(s.len());
        if unit_len == 0 {
            return Err(DurationError::MissingUnit(input.to_string()));
        }
        let unit_bytes = &s[..unit_len];
        s = &s[unit_len..];
        let Some(&(_, unit)) = NANOS_PER.iter().find(|(u, _)| u.as_bytes() == unit_bytes) else {
            return Err(DurationError::UnknownUnit {
                unit: String::from_utf8_lossy(unit_bytes).into_owned(),
                input: input.to_string(),
            });
        };
        if value > LIMIT / unit {
            return Err(invalid());
        }
        value *= unit;
        if fraction > 0 {
            // As Go: float64 is precise enough for fractions of the largest unit.
            value += (fraction as f64 * (unit as f64 / scale)) as u64;
            if value > LIMIT {
                return Err(invalid());
            }
        }
        total += value;
        if total > LIMIT {
            return Err(invalid());
        }
    }
    if negative {
        // total <= 2^63, so the negation fits.
        return Ok((total as i128).wrapping_neg() as i64);
    }
    i64::try_from(total).map_err(|_| invalid())
}

/// Go's `leadingInt`: the leading digits, None on overflow past 2^63.
fn leading_int(s: &[u8]) -> Option<(u64, &[u8])> {
    let mut x: u64 = 0;
    let mut i = 0;
    while i < s.len() && s[i].is_ascii_digit() {
        if x > LIMIT / 10 {
            return None;
        }
        x = x * 10 + u64::from(s[i] - b'0');
        if x > LIMIT {
            return None;
        }
        i += 1;
    }
    Some((x, &s[i..]))
}

/// Go's `leadingFraction`: digits after the point; stops gaining precision on overflow.
fn leading_fraction(s: &[u8]) -> (u64, f64, &[u8]) {
    let mut x: u64 = 0;
    let mut scale = 1f64;
    let mut overflow = false;
    let mut i = 0;
    while i < s.len() && s[i].is_ascii_digit() {
        if !overflow {
            if x > (LIMIT - 1) / 10 {
                overflow = true;
            } else {
                let y = x * 10 + u64::from(s[i] - b'0');
                if y > LIMIT {
                    overflow = true;
                } else {
                    x = y;
                    scale *= 10.0;
                }
            }
        }
        i += 1;
    }
    (x, scale, &s[i..])
}

/// A Go duration that must not be negative (`metav1.Duration` fields the kubelet
/// validates as `>= 0`).
pub fn parse_non_negative(input: &str) -> Result<Duration, DurationError> {
    let nanos = parse_nanos(input)?;
    u64::try_from(nanos)
        .map(Duration::from_nanos)
        .map_err(|_| DurationError::Negative(input.to_string()))
}

/// A duration flag: Go syntax (`1m30s`, `1.5h`, `300ms`), or one of the spellings
/// pullwatch's flags accepted before Go syntax was the rule (humantime's `1d`,
/// `5min`, `1h 30m`). Surrounding whitespace is ignored. Zero and negative durations
/// are refused: every duration flag is an interval or a timeout.
pub(crate) fn parse_flag(input: &str) -> Result<Duration, DurationError> {
    let text = input.trim();
    let duration = match parse_nanos(text) {
        Ok(nanos) => u64::try_from(nanos)
            .map(Duration::from_nanos)
            .map_err(|_| DurationError::Negative(input.to_string()))?,
        Err(go_error) => humantime::parse_duration(text).map_err(|_| go_error)?,
    };
    if duration.is_zero() {
        return Err(DurationError::Zero(input.to_string()));
    }
    Ok(duration)
}

/// clap value parser for duration flags.
pub fn flag_value_parser(input: &str) -> Result<Duration, String> {
    parse_flag(input).map_err(|e| format!("{e} (write it like 30s, 1m30s, 1.5h or 300ms)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NS: i64 = 1;
    const US: i64 = 1_000;
    const MS: i64 = 1_000_000;
    const S: i64 = 1_000_000_000;
    const M: i64 = 60 * S;
    const H: i64 = 60 * M;

    /// Go's `parseDurationTests` (time/time_test.go).
    #[test]
    fn go_parse_duration_table() {
        let table: &[(&str, i64)] = &[
            ("0", 0),
            ("5s", 5 * S),
            ("30s", 30 * S),
            ("1478s", 1478 * S),
            ("-5s", -5 * S),
            ("+5s", 5 * S),
            ("-0", 0),
            ("+0", 0),
            ("5.0s", 5 * S),
            ("5.6s", 5 * S + 600 * MS),
            ("5.s", 5 * S),
            (".5s", 500 * MS),
            ("1.0s", S),
            ("1.00s", S),
            ("1.004s", S + 4 * MS),
            ("1.0040s", S + 4 * MS),
            ("100.00100s", 100 * S + MS),
            ("10ns", 10 * NS),
            ("11us", 11 * US),
            ("12µs", 12 * US),
            ("12μs", 12 * US),
            ("13ms", 13 * MS),
            ("14s", 14 * S),
            ("15m", 15 * M),
            ("16h", 16 * H),
            ("3h30m", 3 * H + 30 * M),
            ("10.5s4m", 4 * M + 10 * S + 500 * MS),
            ("-2m3.4s", -(2 * M + 3 * S + 400 * MS)),
            (
                "1h2m3s4ms5us6ns",
                H + 2 * M + 3 * S + 4 * MS + 5 * US + 6 * NS,
            ),
            ("39h9m14.425s", 39 * H + 9 * M + 14 * S + 425 * MS),
            ("52763797000ns", 52763797000 * NS),
            ("0.3333333333333333333h", 20 * M),
            ("9007199254740993ns", (1 << 53) + 1),
            ("9223372036854775807ns", i64::MAX),
            ("9223372036854775.807us", i64::MAX),
            ("9223372036s854ms775us807ns", i64::MAX),
            ("-9223372036854775808ns", i64::MIN),
            ("-9223372036854775.808us", i64::MIN),
            ("-9223372036s854ms775us808ns", i64::MIN),
            ("-2562047h47m16.854775808s", i64::MIN),
            ("0.100000000000000000000h", 6 * M),
            ("0.830103483285477580700h", 49 * M + 48 * S + 372539827 * NS),
        ];
        for (text, want) in table {
            assert_eq!(parse_nanos(text), Ok(*want), "{text:?}");
        }
        // Go's byte-string cases (`"\x85\x85"`...) are written as the nearest valid
        // UTF-8: a Rust &str cannot hold invalid bytes.
        let errors = [
            "",
            "3",
            "-",
            "s",
            ".",
            "-.",
            ".s",
            "+.s",
            "1d",
            "\u{85}\u{85}",
            "\u{ff}ff",
            "hello \u{ff}ff world",
            "9223372036854775808ns",
            "9223372036854775.808us",
            "9223372036854ms775us808ns",
            "9223372036s854ms775us808ns",
            "-9223372036854775809ns",
        ];
        for text in errors {
            assert!(parse_nanos(text).is_err(), "{text:?} should not parse");
        }
        assert_eq!(
            parse_nanos("3").unwrap_err().to_string(),
            "time: missing unit in duration \"3\""
        );
        assert_eq!(
            parse_nanos("1d").unwrap_err().to_string(),
            "time: unknown unit \"d\" in duration \"1d\""
        );
    }

    #[test]
    fn flags_take_go_syntax_and_the_older_spellings_and_refuse_zero() {
        assert_eq!(parse_flag("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_flag("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_flag("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse_flag(" 5m "), Ok(Duration::from_secs(300)));
        // Accepted before Go syntax was the rule (humantime), still accepted.
        assert_eq!(parse_flag("1d"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_flag("5min"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_flag("1h 30m"), Ok(Duration::from_secs(5400)));
        assert!(matches!(parse_flag("0"), Err(DurationError::Zero(_))));
        assert!(matches!(parse_flag("0s"), Err(DurationError::Zero(_))));
        assert!(matches!(parse_flag("-5s"), Err(DurationError::Negative(_))));
        // The Go error is reported, not humantime's.
        assert_eq!(
            parse_flag("soon").unwrap_err(),
            DurationError::Invalid("soon".into())
        );
        assert_eq!(parse_non_negative("0"), Ok(Duration::ZERO));
        assert!(parse_non_negative("-1m").is_err());
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn never_panics(text in "[-+]?[0-9.]{0,25}[a-zµμ]{0,3}([0-9.]{0,25}[a-z]{0,2}){0,3}|\\PC{0,20}") {
                let _ = parse_nanos(&text);
                let _ = parse_flag(&text);
            }

            // Whole units add up exactly.
            #[test]
            fn hours_minutes_seconds(h in 0u64..10_000, m in 0u64..60, s in 0u64..60) {
                let nanos = parse_nanos(&format!("{h}h{m}m{s}s")).unwrap();
                prop_assert_eq!(nanos as u64, ((h * 60 + m) * 60 + s) * 1_000_000_000);
            }
        }
    }
}
