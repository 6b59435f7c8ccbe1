//! From what a registry (or its token endpoint) answered, or why it did not, to a check
//! status. Pure functions: the status tables, testable without a network.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode};
use serde::Deserialize;

use crate::error_chain;
use crate::{CheckOutcome, CheckStatus};

/// At most this many characters of a response body are quoted in a reason.
pub(crate) const MAX_QUOTED_CHARS: usize = 300;

/// A distribution-spec error envelope: `{"errors":[{"code":"MANIFEST_UNKNOWN",...}]}`.
#[derive(Debug, Deserialize)]
struct Envelope {
    errors: Vec<EnvelopeError>,
}

#[derive(Debug, Deserialize)]
struct EnvelopeError {
    code: String,
    #[serde(default)]
    message: String,
}

/// The status for a final HTTP answer to a manifest (or blob) request. `body` is empty
/// for HEAD.
pub fn classify_response(status: StatusCode, body: &[u8]) -> CheckOutcome {
    if status.is_success() {
        return CheckOutcome::available();
    }
    let envelope: Option<Envelope> = serde_json::from_slice(body).ok();
    let codes: Vec<&str> = envelope
        .iter()
        .flat_map(|e| e.errors.iter().map(|err| err.code.as_str()))
        .collect();
    let detail = envelope
        .as_ref()
        .map(|e| {
            e.errors
                .iter()
                .map(|err| format!("{}: {}", err.code, err.message))
                .collect::<Vec<_>>()
                .join("; ")
        })
        .filter(|d| !d.is_empty())
        .map(|d| excerpt(d.as_bytes()))
        .unwrap_or_else(|| excerpt(body));
    let reason = |what: &str| {
        if detail.is_empty() {
            format!("{what} (HTTP {status})")
        } else {
            format!("{what} (HTTP {status}: {detail})")
        }
    };
    let has = |code: &str| codes.contains(&code);

    if status == StatusCode::NOT_FOUND || has("MANIFEST_UNKNOWN") || has("NAME_UNKNOWN") {
        CheckOutcome::new(CheckStatus::Absent, reason("manifest not found"))
    } else if status == StatusCode::UNAUTHORIZED || has("UNAUTHORIZED") {
        CheckOutcome::new(
            CheckStatus::AuthenticationFailure,
            reason("authentication failed"),
        )
    } else if status == StatusCode::FORBIDDEN || has("DENIED") {
        CheckOutcome::new(CheckStatus::AuthorizationFailure, reason("access denied"))
    } else if status == StatusCode::TOO_MANY_REQUESTS || has("TOOMANYREQUESTS") {
        CheckOutcome::new(CheckStatus::RateLimited, reason("rate limited"))
    } else if status.is_server_error() {
        CheckOutcome::new(CheckStatus::RegistryUnavailable, reason("registry error"))
    } else if has("NAME_INVALID") || has("TAG_INVALID") {
        CheckOutcome::new(
            CheckStatus::BadImageFormat,
            reason("registry rejected the reference"),
        )
    } else {
        CheckOutcome::new(CheckStatus::UnknownError, reason("unexpected answer"))
    }
}

/// The status for a token endpoint's answer other than 2xx: the same classes as a
/// manifest answer. `what` names the endpoint (`token endpoint auth.example.com`).
pub(crate) fn classify_token_response(status: StatusCode, body: &[u8], what: &str) -> CheckOutcome {
    let quoted = excerpt(body);
    let reason = |verdict: &str| {
        if quoted.is_empty() {
            format!("{what} {verdict} (HTTP {status})")
        } else {
            format!("{what} {verdict} (HTTP {status}: {quoted})")
        }
    };
    match status.as_u16() {
        // Docker's token server answers 400 for unusable credentials (e.g. a
        // malformed refresh token): the credentials' problem, as containerd reports it.
        400 | 401 => CheckOutcome::new(
            CheckStatus::AuthenticationFailure,
            reason("refused the credentials"),
        ),
        403 => CheckOutcome::new(
            CheckStatus::AuthorizationFailure,
            reason("denied access to the repository"),
        ),
        429 => CheckOutcome::new(CheckStatus::RateLimited, reason("rate limited")),
        500..=599 => CheckOutcome::new(CheckStatus::RegistryUnavailable, reason("failed")),
        _ => CheckOutcome::new(CheckStatus::UnknownError, reason("answered unexpectedly")),
    }
}

/// What kind of failure a request without an HTTP answer was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TransportFailure {
    /// The deadline passed (connect, TLS or waiting for the answer).
    Timeout,
    /// The port refused the connection.
    Refused,
    /// The peer answered the TLS handshake with bytes that are not TLS: it speaks
    /// plain HTTP there.
    NotTls,
    /// TLS failed: certificate, protocol, handshake.
    Tls,
    /// Name resolution failed.
    Dns,
    /// Anything else on the way (reset, closed, unreachable...).
    Other,
}

impl TransportFailure {
    /// Whether plain HTTP may be tried instead (with `--allow-plain-http`): only when
    /// the port does not speak TLS (refused, or answered in plain HTTP), or when no
    /// connection could be made at all because the name does not resolve here (an
    /// `HTTP_PROXY` may still reach the plain-HTTP endpoint; nothing TLS was seen, so
    /// nothing is downgraded: whoever controls the name could answer in plain HTTP
    /// anyway). Never after a certificate error or a timeout, which would downgrade a
    /// TLS registry to clear text.
    pub(crate) fn plain_http_may_answer(self) -> bool {
        matches!(
            self,
            TransportFailure::Refused | TransportFailure::NotTls | TransportFailure::Dns
        )
    }
}

/// Classifies a reqwest error by walking its source chain for the typed causes
/// (`io::Error` kinds, rustls errors), with the text as a fallback.
pub(crate) fn transport_failure(error: &reqwest::Error) -> TransportFailure {
    if error.is_timeout() {
        return TransportFailure::Timeout;
    }
    let mut tls = false;
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = source {
        let rustls_error = cause.downcast_ref::<rustls::Error>().or_else(|| {
            cause
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(rustls_error) = rustls_error {
            return match rustls_error {
                rustls::Error::InvalidMessage(_) => TransportFailure::NotTls,
                _ => TransportFailure::Tls,
            };
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return TransportFailure::Refused,
                std::io::ErrorKind::TimedOut => return TransportFailure::Timeout,
                _ => {}
            }
        }
        source = cause.source();
    }
    let text = error_chain(error).to_ascii_lowercase();
    if text.contains("invalidcontenttype") || text.contains("corrupt message") {
        return TransportFailure::NotTls;
    }
    if text.contains("connection refused") {
        return TransportFailure::Refused;
    }
    if text.contains("certificate") || text.contains("tls") || text.contains("handshake") {
        tls = true;
    }
    if tls {
        TransportFailure::Tls
    } else if text.contains("dns error") || text.contains("failed to lookup") {
        TransportFailure::Dns
    } else if text.contains("timed out") {
        TransportFailure::Timeout
    } else {
        TransportFailure::Other
    }
}

/// What to tell the operator after a transport failure, in the words of the binary
/// that failed (its flags or configuration files).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hints {
    /// After a TLS failure: where a private CA is configured.
    pub tls: String,
    /// After non-TLS bytes to a TLS handshake: how to allow plain HTTP.
    pub plain_http: String,
}

/// The status for a request to `origin` (`scheme://host`) that got no HTTP answer.
pub(crate) fn classify_transport_error(
    error: &reqwest::Error,
    origin: &str,
    hints: &Hints,
) -> CheckOutcome {
    if error.is_builder() {
        return CheckOutcome::new(
            CheckStatus::UnknownError,
            format!("cannot build a request to {origin}: {}", error_chain(error)),
        );
    }
    let chain = error_chain(error);
    let outcome = |what: &str| {
        CheckOutcome::new(
            CheckStatus::RegistryUnavailable,
            format!("{origin} {what}: {chain}"),
        )
    };
    match transport_failure(error) {
        TransportFailure::Timeout => outcome("timed out"),
        TransportFailure::Refused => outcome("refused the connection"),
        TransportFailure::NotTls => {
            let mut o = outcome("does not speak TLS");
            if !hints.plain_http.is_empty() {
                o.reason.push_str(&format!(" ({})", hints.plain_http));
            }
            o
        }
        TransportFailure::Tls => {
            let mut o = outcome("TLS failed");
            if !hints.tls.is_empty() {
                o.reason.push_str(&format!(" ({})", hints.tls));
            }
            o
        }
        TransportFailure::Dns => outcome("name resolution failed"),
        TransportFailure::Other => outcome("unreachable"),
    }
}

/// `Retry-After` as seconds or an HTTP date.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// At most [`MAX_QUOTED_CHARS`] characters of a body, trimmed, on one line.
pub(crate) fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let mut out: String = text
        .chars()
        .take(MAX_QUOTED_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().count() > MAX_QUOTED_CHARS {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A distribution-spec error body holding one error.
    fn envelope(code: &str, message: &str) -> String {
        format!(r#"{{"errors":[{{"code":"{code}","message":"{message}"}}]}}"#)
    }

    #[test]
    fn status_table() {
        let cases = [
            (200, String::new(), CheckStatus::Available),
            (404, String::new(), CheckStatus::Absent),
            (
                400,
                envelope("MANIFEST_UNKNOWN", "manifest unknown"),
                CheckStatus::Absent,
            ),
            (
                404,
                envelope("MANIFEST_UNKNOWN", "manifest unknown"),
                CheckStatus::Absent,
            ),
            (
                404,
                envelope("NAME_UNKNOWN", "repository name not known"),
                CheckStatus::Absent,
            ),
            (401, String::new(), CheckStatus::AuthenticationFailure),
            (403, String::new(), CheckStatus::AuthorizationFailure),
            (
                400,
                envelope("DENIED", "no"),
                CheckStatus::AuthorizationFailure,
            ),
            (429, String::new(), CheckStatus::RateLimited),
            (500, String::new(), CheckStatus::RegistryUnavailable),
            (
                503,
                "<html>down</html>".into(),
                CheckStatus::RegistryUnavailable,
            ),
            (
                400,
                envelope("TAG_INVALID", "bad"),
                CheckStatus::BadImageFormat,
            ),
            (418, "teapot".into(), CheckStatus::UnknownError),
        ];
        for (code, body, expected) in cases {
            let outcome = classify_response(StatusCode::from_u16(code).unwrap(), body.as_bytes());
            assert_eq!(outcome.status, expected, "{code} {body}");
            if expected != CheckStatus::Available {
                assert!(
                    outcome.reason.contains(&code.to_string()),
                    "{}",
                    outcome.reason
                );
            }
            // An error envelope is quoted as `CODE: message`.
            let errors = serde_json::from_str::<Envelope>(&body).map_or(Vec::new(), |e| e.errors);
            for error in errors {
                let quoted = format!("{}: {}", error.code, error.message);
                assert!(outcome.reason.contains(&quoted), "{}", outcome.reason);
            }
        }
    }

    #[test]
    fn token_endpoint_table() {
        for (code, expected) in [
            (400, CheckStatus::AuthenticationFailure),
            (401, CheckStatus::AuthenticationFailure),
            (403, CheckStatus::AuthorizationFailure),
            (429, CheckStatus::RateLimited),
            (500, CheckStatus::RegistryUnavailable),
            (502, CheckStatus::RegistryUnavailable),
            (503, CheckStatus::RegistryUnavailable),
            (302, CheckStatus::UnknownError),
        ] {
            let outcome = classify_token_response(
                StatusCode::from_u16(code).unwrap(),
                b"",
                "token endpoint auth.example",
            );
            assert_eq!(outcome.status, expected, "{code}");
            assert!(
                outcome.reason.starts_with("token endpoint auth.example ")
                    && outcome.reason.contains(&code.to_string()),
                "{}",
                outcome.reason
            );
        }
    }

    #[test]
    fn bodies_are_quoted_briefly() {
        let long = "x".repeat(10_000);
        let outcome =
            classify_token_response(StatusCode::SERVICE_UNAVAILABLE, long.as_bytes(), "t");
        assert!(
            outcome.reason.len() < MAX_QUOTED_CHARS + 100,
            "{}",
            outcome.reason.len()
        );
        let outcome = classify_response(StatusCode::BAD_GATEWAY, long.as_bytes());
        assert!(outcome.reason.len() < MAX_QUOTED_CHARS + 100);
        assert_eq!(excerpt(b"  a\nb  "), "a b");
        assert_eq!(
            excerpt("é".repeat(400).as_bytes()).chars().count(),
            MAX_QUOTED_CHARS + 1
        );
    }

    #[test]
    fn retry_after_forms() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(http::header::RETRY_AFTER, "120".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(120)));
        let later = SystemTime::now() + Duration::from_secs(600);
        headers.insert(
            http::header::RETRY_AFTER,
            httpdate::fmt_http_date(later).parse().unwrap(),
        );
        let parsed = retry_after(&headers).unwrap();
        assert!(
            parsed > Duration::from_secs(590) && parsed <= Duration::from_secs(600),
            "{parsed:?}"
        );
        headers.insert(http::header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn only_refusals_and_plain_http_answers_allow_the_fallback() {
        use TransportFailure::*;
        assert!(Refused.plain_http_may_answer());
        assert!(NotTls.plain_http_may_answer());
        assert!(Dns.plain_http_may_answer());
        for f in [Timeout, Tls, Other] {
            assert!(!f.plain_http_may_answer(), "{f:?}");
        }
    }
}
