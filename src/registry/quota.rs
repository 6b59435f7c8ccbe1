//! Pull quotas registries announce in the headers of their manifest answers, read so
//! operators see a quota running out before the 429s start.
//!
//! Two forms are understood:
//! - Docker Hub's, which is the early IETF draft's (`draft-ietf-httpapi-ratelimit-headers`
//!   up to -06): `ratelimit-limit: 100;w=21600`, `ratelimit-remaining: 76;w=21600`,
//!   optionally `ratelimit-reset: 3600` (seconds), and Docker's
//!   `docker-ratelimit-source` (whose quota: the client's IP or account). A limit may
//!   list several policies (`10, 10;w=1, 50;w=60`): the first number is the limit in
//!   force.
//! - The current draft's (-08 on) structured fields (RFC 8941):
//!   `RateLimit-Policy: "default";q=100;w=21600` and `RateLimit: "default";r=76;t=3600`.
//!   The first policy of `RateLimit` is taken, with its `q` and `w` from
//!   `RateLimit-Policy` when listed there.
//!
//! A `HEAD` answer carries them too and, on Docker Hub, does not count against the quota.

use std::time::Duration;

use http::HeaderMap;
use prometheus::GaugeVec;

/// The longest `docker-ratelimit-source` kept (an IPv6 address or an account id fits).
const MAX_SOURCE_LEN: usize = 64;

/// What one answer said about the quota.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Quota {
    /// Requests allowed per window (None: the registry only said what remains).
    pub limit: Option<u64>,
    /// Requests left in the current window.
    pub remaining: u64,
    /// The window the limit applies to (`w=`).
    pub window: Option<Duration>,
    /// Until the quota is restored (`ratelimit-reset`, `t=`).
    pub reset: Option<Duration>,
    /// Whose quota this is (`docker-ratelimit-source`: the client's IP, or an account).
    pub source: Option<String>,
}

impl Quota {
    /// The quota `headers` announce, if they announce one.
    pub fn from_headers(headers: &HeaderMap) -> Option<Quota> {
        let mut quota = structured(headers).or_else(|| legacy(headers))?;
        quota.source = header(headers, "docker-ratelimit-source")
            .map(str::trim)
            .filter(|s| {
                !s.is_empty()
                    && s.len() <= MAX_SOURCE_LEN
                    && s.bytes().all(|b| b.is_ascii_graphic())
            })
            .map(str::to_string);
        Some(quota)
    }
}

/// A quota as three gauges, one series per registry host (`registry` label): the
/// aggregator's `pullwatch_registry_ratelimit_*` and the agent's
/// `pullwatch_agent_registry_ratelimit_*` are both this.
#[derive(Clone, Debug)]
pub struct QuotaGauges {
    /// Requests allowed per window.
    pub limit: GaugeVec,
    /// Requests left in the current window.
    pub remaining: GaugeVec,
    /// The window, in seconds.
    pub window: GaugeVec,
}

impl QuotaGauges {
    /// `host`'s series say `quota`. A part the latest answer did not carry is not kept
    /// from an older one: its series goes.
    pub fn set(&self, host: &str, quota: &Quota) {
        self.remaining
            .with_label_values(&[host])
            .set(quota.remaining as f64);
        set_or_remove(&self.limit, host, quota.limit.map(|limit| limit as f64));
        set_or_remove(&self.window, host, quota.window.map(|w| w.as_secs_f64()));
    }

    /// `host`'s series go.
    pub fn remove(&self, host: &str) {
        for gauge in [&self.limit, &self.remaining, &self.window] {
            let _ = gauge.remove_label_values(&[host]);
        }
    }
}

fn set_or_remove(gauge: &GaugeVec, host: &str, value: Option<f64>) {
    match value {
        Some(value) => gauge.with_label_values(&[host]).set(value),
        None => {
            let _ = gauge.remove_label_values(&[host]);
        }
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `ratelimit-limit` / `ratelimit-remaining` / `ratelimit-reset` (Docker Hub, early drafts).
fn legacy(headers: &HeaderMap) -> Option<Quota> {
    let (remaining, remaining_window) = first_policy(header(headers, "ratelimit-remaining")?)?;
    let limit = header(headers, "ratelimit-limit").and_then(first_policy);
    let reset = header(headers, "ratelimit-reset")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    Some(Quota {
        limit: limit.map(|(n, _)| n),
        remaining,
        window: limit
            .and_then(|(_, w)| w)
            .or(remaining_window)
            .map(Duration::from_secs),
        reset,
        source: None,
    })
}

/// The number and `w=` of the first policy of `100;w=21600` or `10, 10;w=1, 50;w=60`
/// (a bare first number takes the window of the next policy with the same number).
fn first_policy(value: &str) -> Option<(u64, Option<u64>)> {
    let mut policies = value.split(',').map(|p| {
        let mut parts = p.split(';').map(str::trim);
        let number = parts.next().and_then(|n| n.parse::<u64>().ok());
        let window = parts
            .filter_map(|param| param.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("w"))
            .and_then(|(_, v)| v.trim().parse::<u64>().ok());
        (number, window)
    });
    let (number, window) = policies.next()?;
    let number = number?;
    let window = window.or_else(|| policies.find_map(|(n, w)| w.filter(|_| n == Some(number))));
    Some((number, window))
}

/// `RateLimit` with `RateLimit-Policy` (the current draft's structured fields).
fn structured(headers: &HeaderMap) -> Option<Quota> {
    use sfv::{BareItem, List, ListEntry, Parser};

    let current: List = Parser::new(header(headers, "ratelimit")?).parse().ok()?;
    let ListEntry::Item(item) = current.first()? else {
        return None;
    };
    let param = |params: &sfv::Parameters, key: &str| -> Option<u64> {
        params
            .iter()
            .find(|(k, _)| k.as_str() == key)
            .and_then(|(_, v)| match v {
                BareItem::Integer(i) => u64::try_from(i64::from(*i)).ok(),
                _ => None,
            })
    };
    let remaining = param(&item.params, "r")?;
    let reset = param(&item.params, "t").map(Duration::from_secs);
    let policy = header(headers, "ratelimit-policy")
        .and_then(|v| Parser::new(v).parse::<List>().ok())
        .and_then(|policies| {
            policies.into_iter().find_map(|entry| match entry {
                ListEntry::Item(p) if p.bare_item == item.bare_item => Some(p.params),
                _ => None,
            })
        });
    Some(Quota {
        limit: policy.as_ref().and_then(|p| param(p, "q")),
        remaining,
        window: policy
            .as_ref()
            .and_then(|p| param(p, "w"))
            .map(Duration::from_secs),
        reset,
        source: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    #[test]
    fn docker_hub_anonymous_answer() {
        // As Docker Hub answers an anonymous HEAD of a manifest.
        let quota = Quota::from_headers(&headers(&[
            ("content-type", "application/vnd.oci.image.index.v1+json"),
            ("docker-content-digest", "sha256:0123"),
            ("ratelimit-limit", "100;w=21600"),
            ("ratelimit-remaining", "76;w=21600"),
            ("docker-ratelimit-source", "203.0.113.7"),
        ]))
        .unwrap();
        assert_eq!(
            quota,
            Quota {
                limit: Some(100),
                remaining: 76,
                window: Some(Duration::from_secs(21600)),
                reset: None,
                source: Some("203.0.113.7".into()),
            }
        );
    }

    #[test]
    fn early_ietf_draft_with_several_policies_and_reset() {
        let quota = Quota::from_headers(&headers(&[
            ("RateLimit-Limit", "10, 10;w=1, 50;w=60"),
            ("RateLimit-Remaining", "3"),
            ("RateLimit-Reset", "7"),
        ]))
        .unwrap();
        assert_eq!(quota.limit, Some(10));
        assert_eq!(quota.remaining, 3);
        assert_eq!(quota.window, Some(Duration::from_secs(1)));
        assert_eq!(quota.reset, Some(Duration::from_secs(7)));
        assert_eq!(quota.source, None);
        // Only what remains: still a quota, without a limit.
        let bare = Quota::from_headers(&headers(&[("ratelimit-remaining", "0")])).unwrap();
        assert_eq!((bare.limit, bare.remaining), (None, 0));
    }

    #[test]
    fn current_ietf_draft_structured_fields() {
        let quota = Quota::from_headers(&headers(&[
            (
                "RateLimit-Policy",
                r#""burst";q=100;w=60, "daily";q=1000;w=86400"#,
            ),
            ("RateLimit", r#""daily";r=12;t=3600"#),
        ]))
        .unwrap();
        assert_eq!(quota.limit, Some(1000));
        assert_eq!(quota.remaining, 12);
        assert_eq!(quota.window, Some(Duration::from_secs(86400)));
        assert_eq!(quota.reset, Some(Duration::from_secs(3600)));
        // Without its policy listed: what remains and the reset only.
        let alone =
            Quota::from_headers(&headers(&[("RateLimit", r#""default";r=50;t=30"#)])).unwrap();
        assert_eq!((alone.limit, alone.remaining), (None, 50));
    }

    #[test]
    fn no_or_broken_headers_say_nothing() {
        for pairs in [
            vec![],
            vec![("ratelimit-limit", "100;w=21600")],
            vec![("ratelimit-remaining", "lots")],
            vec![("ratelimit-remaining", "-1;w=60")],
            vec![("ratelimit-remaining", "")],
        ] {
            assert_eq!(Quota::from_headers(&headers(&pairs)), None, "{pairs:?}");
        }
        // A broken structured field falls back to the early form.
        let quota = Quota::from_headers(&headers(&[
            ("RateLimit", "\"unterminated;r=1"),
            ("ratelimit-remaining", "5"),
        ]))
        .unwrap();
        assert_eq!(quota.remaining, 5);
        // A negative structured remainder is no quota.
        assert_eq!(
            Quota::from_headers(&headers(&[("RateLimit", r#""d";r=-3"#)])),
            None
        );
        // A source that is not a short printable token is dropped, the quota kept.
        let quota = Quota::from_headers(&headers(&[
            ("ratelimit-remaining", "5"),
            ("docker-ratelimit-source", &"x".repeat(200)),
        ]))
        .unwrap();
        assert_eq!(quota.source, None);
    }
}
