//! Keeping secrets out of every output, in every form they take.
//!
//! [`Redactor`]: the one redaction of reasons (from a registry, a token endpoint, a
//! credential plugin, the container runtime) before they are stored, sent, logged or
//! printed. A peer that echoes what it received may quote a secret raw, as base64 of
//! `user:password` (an `Authorization: Basic` header, a docker config `auth` field,
//! at any alignment inside a longer base64 run), JSON-escaped, or URL/form-encoded (a
//! token request's body): every one of those forms is replaced by `<redacted>`.
//!
//! And a redacting `Debug` for the generated messages that carry registry secrets
//! (`pullwatch.v1.PullCredential`, CRI `AuthConfig`): build.rs tells prost to skip their
//! derived `Debug`, and these print which fields are set, never their values, so a
//! `{:?}` of a `CheckTask` or a `PullImageRequest` in a log line shows no secret.

use std::fmt::Write as _;

use base64::Engine;

use crate::credentials::RegistryCredential;

/// What replaces a secret.
pub(crate) const REDACTED: &str = "<redacted>";

/// Secrets shorter than this are not redacted: replacing every `a` of a reason would
/// say more about a one-letter password than leaving it.
const MIN_SECRET_LEN: usize = 3;
/// A run of a secret's plain characters (between the ones encodings change) shorter
/// than this is left alone.
const MIN_LITERAL_RUN: usize = 6;
/// A base64 fragment shorter than this could match ordinary text by chance.
const MIN_BASE64_FRAGMENT: usize = 4;

/// Every form of a set of secrets, to strip them from text.
#[derive(Clone, Debug, Default)]
pub struct Redactor {
    /// Longest first, so a form that contains another goes whole.
    needles: Vec<String>,
}

impl Redactor {
    pub fn new() -> Self {
        Redactor::default()
    }

    /// A redactor for `credentials` (see [`Redactor::credential`]).
    pub fn for_credentials<'a>(
        credentials: impl IntoIterator<Item = &'a RegistryCredential>,
    ) -> Self {
        let mut redactor = Redactor::new();
        for credential in credentials {
            redactor.credential(credential);
        }
        redactor
    }

    /// The password, the identity and registry tokens in every form, and base64 of
    /// `user:password` (what `Authorization: Basic` and a config's `auth` carry).
    pub fn credential(&mut self, credential: &RegistryCredential) -> &mut Self {
        self.secret(&credential.password);
        for token in [&credential.identity_token, &credential.registry_token]
            .into_iter()
            .flatten()
        {
            self.secret(token);
        }
        if !credential.password.is_empty() {
            self.base64_of(format!("{}:{}", credential.username, credential.password).as_bytes());
        }
        self
    }

    /// One secret (a password, a token, a bearer token obtained) in every form: raw,
    /// JSON-escaped, URL- and form-encoded, base64 at any alignment.
    pub fn secret(&mut self, secret: &str) -> &mut Self {
        if secret.chars().count() < MIN_SECRET_LEN {
            return self;
        }
        let forms = [
            secret.to_string(),
            json_escaped(secret, false),
            json_escaped(secret, true),
            json_escaped(secret, false).replace('/', "\\/"),
            percent_encoded(secret, true, false),
            percent_encoded(secret, false, false),
            percent_encoded(secret, true, true),
            percent_encoded(secret, false, true),
        ];
        for form in forms {
            self.add(form);
        }
        // Escaped twice, or in an encoding not listed here, the characters an
        // encoding leaves alone still spell the secret: each such run long enough to
        // mean something goes too.
        for run in secret.split(|c: char| !(c.is_ascii_alphanumeric() || "-._~".contains(c))) {
            if run.len() >= MIN_LITERAL_RUN && run.len() < secret.len() {
                self.add(run.to_string());
            }
        }
        self.base64_of(secret.as_bytes());
        self
    }

    /// `bytes` as base64 (standard and URL-safe alphabets) at each of the three
    /// alignments it can have inside a longer run: the characters that depend on
    /// `bytes` alone.
    fn base64_of(&mut self, bytes: &[u8]) {
        for offset in 0..3 {
            let mut shifted = vec![0u8; offset];
            shifted.extend_from_slice(bytes);
            let encoded = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&shifted);
            // Characters wholly inside the bits of `bytes`.
            let first = (offset * 8).div_ceil(6);
            let end = ((offset + bytes.len()) * 8) / 6;
            let Some(core) = encoded.get(first..end) else {
                continue;
            };
            if core.len() < MIN_BASE64_FRAGMENT {
                continue;
            }
            self.add(core.to_string());
            self.add(core.replace('+', "-").replace('/', "_"));
        }
    }

    fn add(&mut self, needle: String) {
        if needle.is_empty() || self.needles.contains(&needle) {
            return;
        }
        let at = self
            .needles
            .iter()
            .position(|n| n.len() < needle.len())
            .unwrap_or(self.needles.len());
        self.needles.insert(at, needle);
    }

    /// Whether there is nothing to redact.
    pub fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }

    /// `text` with every form of every secret replaced by [`REDACTED`], and the start
    /// of one where a quote was cut short (at the end of `text` or before `…`, as a
    /// registry's body is quoted): a peer that pads its echo cannot get half a secret
    /// out.
    pub fn redact(&self, text: &str) -> String {
        let mut text = text.to_string();
        for needle in &self.needles {
            if text.contains(needle.as_str()) {
                text = text.replace(needle.as_str(), REDACTED);
            }
        }
        let mut text = redact_credential_syntax(&text);
        let mut cuts: Vec<usize> = text.match_indices('…').map(|(at, _)| at).collect();
        cuts.push(text.len());
        for &cut in cuts.iter().rev() {
            let before = &text[..cut];
            let cut_secret = self
                .needles
                .iter()
                .filter_map(|needle| cut_prefix(before, needle))
                .max();
            if let Some(len) = cut_secret {
                text.replace_range(cut - len..cut, REDACTED);
            }
        }
        text
    }
}

/// Credentials recognisable by their syntax whoever issued them: an
/// `Authorization` value (`Bearer`/`Basic` and a token), a form field and a JSON member
/// named like a secret. What the container runtime obtained itself (a registry's
/// bearer token) is known to pullwatch only this way.
fn redact_credential_syntax(text: &str) -> String {
    use std::sync::LazyLock;

    use regex::Regex;

    static PATTERNS: LazyLock<Vec<Regex>> = LazyLock::new(|| {
        [
            r"(?i)(\b(?:bearer|basic)\s+)[A-Za-z0-9._~+/-]{8,}=*",
            r"(?i)(\b(?:password|passwd|refresh_token|access_token|id_token|token|identitytoken|registrytoken|auth|secret)=)[^&\s]+",
            r#"(?i)("(?:password|refresh_token|access_token|id_token|token|identitytoken|registrytoken|auth|secret)"\s*:\s*")(?:[^"\\]|\\.)*"#,
        ]
        .iter()
        .filter_map(|pattern| Regex::new(pattern).ok())
        .collect()
    });
    let mut text = std::borrow::Cow::Borrowed(text);
    for pattern in PATTERNS.iter() {
        if pattern.is_match(&text) {
            text = std::borrow::Cow::Owned(
                pattern
                    .replace_all(&text, format!("${{1}}{REDACTED}").as_str())
                    .into_owned(),
            );
        }
    }
    text.into_owned()
}

/// A quote cut this short says little about a secret.
const MIN_CUT_PREFIX: usize = 4;

/// The length of the longest start of `needle` (shorter than all of it) that `text`
/// ends with.
fn cut_prefix(text: &str, needle: &str) -> Option<usize> {
    let longest = needle.len().saturating_sub(1).min(text.len());
    (MIN_CUT_PREFIX..=longest)
        .rev()
        .find(|&len| needle.is_char_boundary(len) && text.ends_with(&needle[..len]))
}

/// `secret` as it appears inside a JSON string: serde_json's escapes, or also Go's
/// `encoding/json` HTML escapes (`<`, `>`, `&`, U+2028, U+2029 as `\u00XX`).
fn json_escaped(secret: &str, go_html: bool) -> String {
    let quoted = serde_json::to_string(secret).unwrap_or_default();
    let inner = quoted
        .strip_prefix('"')
        .and_then(|q| q.strip_suffix('"'))
        .unwrap_or(secret);
    if !go_html {
        return inner.to_string();
    }
    let mut out = String::with_capacity(inner.len());
    for c in inner.chars() {
        match c {
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// `secret` percent-encoded (unreserved characters as they are), spaces as `+` (a
/// form body) or `%20`, hex digits upper or lower case.
fn percent_encoded(secret: &str, form: bool, lower: bool) -> String {
    let mut out = String::with_capacity(secret.len());
    for byte in secret.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(byte as char)
            }
            b' ' if form => out.push('+'),
            other if lower => {
                let _ = write!(out, "%{other:02x}");
            }
            other => {
                let _ = write!(out, "%{other:02X}");
            }
        }
    }
    out
}

use std::fmt;

/// Shows whether a secret field is set, never its value.
struct Secret<'a>(&'a str);

impl fmt::Debug for Secret<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("\"\"")
        } else {
            f.write_str("<redacted>")
        }
    }
}

impl fmt::Debug for crate::proto::PullCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PullCredential")
            .field("source", &self.source)
            .field("username", &Secret(&self.username))
            .field("password", &Secret(&self.password))
            .field("identity_token", &Secret(&self.identity_token))
            .field("registry_token", &Secret(&self.registry_token))
            .finish()
    }
}

impl fmt::Debug for crate::cri::AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("username", &Secret(&self.username))
            .field("password", &Secret(&self.password))
            .field("auth", &Secret(&self.auth))
            .field("server_address", &self.server_address)
            .field("identity_token", &Secret(&self.identity_token))
            .field("registry_token", &Secret(&self.registry_token))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use crate::cri::{AuthConfig, ImageSpec, PullImageRequest};
    use crate::proto::{CheckTask, PullCredential};

    const SECRET: &str = "pw-CANARY-redact-7f3";

    use super::{REDACTED, Redactor};
    use crate::credentials::RegistryCredential;
    use base64::Engine;

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    #[test]
    fn every_form_of_a_credential_is_redacted() {
        let password = "p@ss wörd/<&>\"+'\\~CANARY";
        let credential = RegistryCredential {
            username: "robot$ci".into(),
            password: password.into(),
            identity_token: Some("idtok-CANARY-1234".into()),
            registry_token: Some("regtok-CANARY-5678".into()),
        };
        let redactor = Redactor::for_credentials([&credential]);
        let user_pass = format!("robot$ci:{password}");
        let mut texts = vec![
            format!("bad password {password}!"),
            format!("Authorization: Basic {}", b64(user_pass.as_bytes())),
            serde_json::to_string(&serde_json::json!({"password": password})).unwrap(),
            format!(
                "body: grant_type=password&password={}&x=1",
                crate::registry::form_encode(password)
            ),
            format!("refresh_token=idtok-CANARY-1234 token regtok-CANARY-5678"),
            format!("{{\"auth\":\"{}\"}}", b64(user_pass.as_bytes())),
            // Go's encoding/json escapes <, > and & too.
            format!(
                "{{\"password\":\"{}\"}}",
                password
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('<', "\\u003c")
                    .replace('>', "\\u003e")
                    .replace('&', "\\u0026")
            ),
        ];
        // JSON-escaped twice (an echo of a JSON body inside a JSON string).
        let once = serde_json::to_string(password).unwrap();
        texts.push(serde_json::to_string(&format!("{{\"password\":{once}}}")).unwrap());
        // base64 of user:password at every alignment inside a longer run.
        for prefix in ["", "x", "xy", "xyz", "{\"user\":\""] {
            let mut run = prefix.as_bytes().to_vec();
            run.extend_from_slice(user_pass.as_bytes());
            run.extend_from_slice(b"\"} trailing");
            texts.push(format!("echo {}", b64(&run)));
            let url_safe = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&run);
            texts.push(format!("echo {url_safe}"));
        }
        for text in &texts {
            let redacted = redactor.redact(text);
            assert!(redacted.contains(REDACTED), "{text} -> {redacted}");
            for leak in [
                password.to_string(),
                "CANARY".to_string(),
                b64(user_pass.as_bytes()).trim_end_matches('=').to_string(),
            ] {
                assert!(!redacted.contains(&leak), "{text} -> {redacted}");
            }
        }
        // Text without a secret is left alone.
        assert_eq!(redactor.redact("401 Unauthorized"), "401 Unauthorized");
    }

    #[test]
    fn a_secret_cut_short_by_a_quote_goes_too() {
        let credential = RegistryCredential {
            username: "u".into(),
            password: "pw-CANARY-cut-here".into(),
            ..Default::default()
        };
        let redactor = Redactor::for_credentials([&credential]);
        assert_eq!(
            redactor.redact("denied: body pw-CANARY-c…"),
            format!("denied: body {REDACTED}…")
        );
        assert_eq!(
            redactor.redact("ends with pw-CANA"),
            format!("ends with {REDACTED}")
        );
        assert_eq!(
            redactor.redact("ends with pw"),
            "ends with pw",
            "too short to tell"
        );
    }

    #[test]
    fn credentials_are_recognised_by_their_syntax() {
        let redactor = Redactor::new();
        for (text, kept) in [
            (
                "403 Forbidden Authorization: Bearer tok-issued-by-someone-else",
                "403 Forbidden Authorization: Bearer ",
            ),
            ("got Basic dXNlcjpwYXNzd29yZA==", "got Basic "),
            (
                "body grant_type=password&password=hunter2hunter2&x=1",
                "grant_type=password&password=",
            ),
            (
                r#"{"access_token":"eyJhbGciOi.x.y","expires_in":60}"#,
                r#"{"access_token":""#,
            ),
        ] {
            let redacted = redactor.redact(text);
            assert!(
                redacted.starts_with(kept) || redacted.contains(kept),
                "{redacted}"
            );
            assert!(redacted.contains(REDACTED), "{text} -> {redacted}");
        }
        assert!(
            !redactor
                .redact("got Basic dXNlcjpwYXNzd29yZA==")
                .contains("dXNlcj")
        );
        // A challenge's parameters are not credentials.
        let challenge = r#"Bearer realm="https://auth.io/token",service="reg""#;
        assert_eq!(redactor.redact(challenge), challenge);
        assert_eq!(
            redactor.redact("grant_type=password"),
            "grant_type=password"
        );
    }

    #[test]
    fn short_secrets_are_left_alone() {
        let credential = RegistryCredential {
            username: "u".into(),
            password: "ab".into(),
            ..Default::default()
        };
        let redactor = Redactor::for_credentials([&credential]);
        assert_eq!(redactor.redact("about a cab"), "about a cab");
    }

    #[test]
    fn debug_of_credential_messages_shows_no_secret() {
        let task = CheckTask {
            image: "reg.io/app:v1".into(),
            credentials: vec![PullCredential {
                source: "secret/ns/regcred".into(),
                username: SECRET.into(),
                password: SECRET.into(),
                identity_token: SECRET.into(),
                registry_token: String::new(),
            }],
            ..Default::default()
        };
        let printed = format!("{task:?} {task:#?}");
        assert!(!printed.contains(SECRET), "{printed}");
        assert!(printed.contains("secret/ns/regcred"), "{printed}");
        assert!(printed.contains("<redacted>"), "{printed}");
        assert!(printed.contains("registry_token: \"\""), "{printed}");

        let pull = PullImageRequest {
            image: Some(ImageSpec {
                image: "reg.io/app:v1".into(),
                ..Default::default()
            }),
            auth: Some(AuthConfig {
                username: SECRET.into(),
                password: SECRET.into(),
                auth: SECRET.into(),
                server_address: "reg.io".into(),
                identity_token: SECRET.into(),
                registry_token: SECRET.into(),
            }),
            ..Default::default()
        };
        let printed = format!("{pull:?} {pull:#?}");
        assert!(!printed.contains(SECRET), "{printed}");
        assert!(printed.contains("reg.io"), "{printed}");
    }
}
