//! From what a registry answered (or why it did not) to a check status. Pure
//! functions: the table of the issue, testable without a network.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode};
use pullwatch::{CheckOutcome, CheckStatus};
use serde::Deserialize;

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

/// The status for a final HTTP answer to a manifest request. `body` is empty for HEAD.
pub fn classify_response(status: StatusCode, body: &[u8]) -> CheckOutcome {
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
        .unwrap_or_else(|| excerpt(body));
    let reason = |what: &str| {
        if detail.is_empty() {
            format!("{what} (HTTP {status})")
        } else {
            format!("{what} (HTTP {status}: {detail})")
        }
    };
    let has = |code: &str| codes.contains(&code);

    if status.is_success() {
        return CheckOutcome::available();
    }
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

/// The status for a request that got no HTTP answer.
pub fn classify_transport_error(error: &reqwest::Error) -> CheckOutcome {
    let chain = error_chain(error);
    let lowered = chain.to_ascii_lowercase();
    let network = error.is_timeout()
        || error.is_connect()
        || error.is_request()
        || [
            "dns error",
            "connection refused",
            "connection reset",
            "certificate",
            "tls",
            "handshake",
            "timed out",
            "unreachable",
            "broken pipe",
            "incomplete message",
        ]
        .iter()
        .any(|needle| lowered.contains(needle));
    if network {
        let what = if error.is_timeout() {
            "timed out"
        } else {
            "unreachable"
        };
        CheckOutcome::new(
            CheckStatus::RegistryUnavailable,
            format!("registry {what}: {chain}"),
        )
    } else {
        CheckOutcome::new(CheckStatus::UnknownError, chain)
    }
}

pub use pullwatch::support::error_chain;

/// `Retry-After` as seconds or an HTTP date.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
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

/// The scheme of a `WWW-Authenticate` challenge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Challenge {
    None,
    Basic,
    Bearer,
}

pub fn challenge(headers: &HeaderMap) -> Challenge {
    let mut result = Challenge::None;
    for value in headers.get_all(http::header::WWW_AUTHENTICATE) {
        let Ok(text) = value.to_str() else { continue };
        let scheme = text.split_whitespace().next().unwrap_or_default();
        if scheme.eq_ignore_ascii_case("bearer") {
            return Challenge::Bearer;
        }
        if scheme.eq_ignore_ascii_case("basic") {
            result = Challenge::Basic;
        }
    }
    result
}

fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let mut end = text.len().min(200);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_table() {
        let cases = [
            (200, "", CheckStatus::Available),
            (404, "", CheckStatus::Absent),
            (
                400,
                r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
                CheckStatus::Absent,
            ),
            (
                404,
                r#"{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known"}]}"#,
                CheckStatus::Absent,
            ),
            (401, "", CheckStatus::AuthenticationFailure),
            (403, "", CheckStatus::AuthorizationFailure),
            (
                400,
                r#"{"errors":[{"code":"DENIED","message":"no"}]}"#,
                CheckStatus::AuthorizationFailure,
            ),
            (429, "", CheckStatus::RateLimited),
            (500, "", CheckStatus::RegistryUnavailable),
            (503, "<html>down</html>", CheckStatus::RegistryUnavailable),
            (
                400,
                r#"{"errors":[{"code":"TAG_INVALID","message":"bad"}]}"#,
                CheckStatus::BadImageFormat,
            ),
            (418, "teapot", CheckStatus::UnknownError),
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
        }
        let outcome = classify_response(
            StatusCode::NOT_FOUND,
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
        );
        assert!(
            outcome
                .reason
                .contains("MANIFEST_UNKNOWN: manifest unknown"),
            "{}",
            outcome.reason
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
    fn challenges() {
        let mut headers = HeaderMap::new();
        assert_eq!(challenge(&headers), Challenge::None);
        headers.insert(
            http::header::WWW_AUTHENTICATE,
            r#"Basic realm="Registry Realm""#.parse().unwrap(),
        );
        assert_eq!(challenge(&headers), Challenge::Basic);
        headers.append(
            http::header::WWW_AUTHENTICATE,
            r#"Bearer realm="https://auth/token",service="reg""#
                .parse()
                .unwrap(),
        );
        assert_eq!(challenge(&headers), Challenge::Bearer);
    }
}
