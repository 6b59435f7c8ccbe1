//! Registry credentials and the kubelet's keyring: which credentials a pull of a given
//! image would try, and in what order.
//!
//! This mirrors `k8s.io/kubernetes/pkg/credentialprovider`: `DockerConfigEntry`
//! decoding (encoding/json rules; `auth` padded or not; `identitytoken` and
//! `registrytoken` are not credentials to the kubelet; a config without `auths` is
//! empty) and `BasicDockerKeyring`: keys are Go-parsed URLs (`host[:port][/path]`,
//! Go `filepath.Match` globs per host label), sorted in reverse lexical order so that
//! more specific paths come first; every matching key contributes its credentials;
//! names the kubelet takes for Docker Hub fall back to an `index.docker.io` key.
//! Secret values never appear in `Debug` output or in errors.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use base64::Engine;

use crate::go_json::{self, Decoded, GoDecode, GoJsonError, GoMap, MapOf, Reader};
use crate::reference::ImageReference;

/// One username/password (or token) pair for a registry.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct RegistryCredential {
    pub username: String,
    pub password: String,
    /// OAuth2 refresh token (`identitytoken` in docker config files).
    pub identity_token: Option<String>,
    /// A bearer token to send as is (`registrytoken`).
    pub registry_token: Option<String>,
}

impl RegistryCredential {
    /// A process-local fingerprint, for keying caches (tokens) without holding a second
    /// copy of the secret in the key.
    pub(crate) fn fingerprint(credential: Option<&RegistryCredential>) -> u64 {
        use std::hash::{DefaultHasher, Hash, Hasher};
        let mut hasher = DefaultHasher::new();
        credential.hash(&mut hasher);
        hasher.finish()
    }
}

impl fmt::Debug for RegistryCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only whether fields are set: a Debug of a credential may end up in a log.
        f.debug_struct("RegistryCredential")
            .field("username_set", &!self.username.is_empty())
            .field("password_set", &!self.password.is_empty())
            .field("identity_token_set", &self.identity_token.is_some())
            .field("registry_token_set", &self.registry_token.is_some())
            .finish()
    }
}

/// A credential and where it came from (`secret/<namespace>/<name>`, `config.json:<path>`...):
/// the source is safe to log and to put in a metric label, the credential is not.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourcedCredential {
    pub source: Arc<str>,
    pub credential: RegistryCredential,
}

/// Why a docker config could not be read: what the kubelet would refuse (a pull
/// secret it refuses makes every pull of the pod fail). Never quotes the document: a
/// JSON error says where, not what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("docker config is not valid JSON ({category} error at line {line}, column {column})")]
    Json {
        category: &'static str,
        line: usize,
        column: usize,
    },
    #[error("the \"auth\" field for {registry:?} is not base64 of user:password ({why})")]
    BadAuthField { registry: String, why: &'static str },
}

impl From<GoJsonError> for CredentialError {
    fn from(error: GoJsonError) -> Self {
        let (category, line, column) = match error {
            GoJsonError::Syntax { line, column } => ("syntax", line, column),
            GoJsonError::Form { line, column } => ("type", line, column),
        };
        CredentialError::Json {
            category,
            line,
            column,
        }
    }
}

/// The entries of a docker config file (`config.json`/`.dockerconfigjson`, or the
/// older `.dockercfg`), keyed as written.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct DockerConfig {
    pub entries: BTreeMap<String, RegistryCredential>,
}

/// One `DockerConfigEntry` as the kubelet decodes it: its `UnmarshalJSON` reads a
/// `dockerConfigEntryWithAuth` with encoding/json's rules (see [`crate::go_json`]);
/// `identitytoken` and `registrytoken` are unknown fields to it.
#[derive(Default)]
struct RawEntry {
    username: String,
    password: String,
    auth: String,
}

impl GoDecode for RawEntry {
    fn decode(&mut self, r: &mut Reader<'_>) -> Decoded {
        r.go_struct(
            self,
            &[
                ("username", |e, r| e.username.decode(r)),
                ("password", |e, r| e.password.decode(r)),
                // Type-checked as the kubelet does, not kept.
                ("email", |_, r| r.check::<String>()),
                ("auth", |e, r| e.auth.decode(r)),
            ],
        )
    }
}

/// `{"auths": {...}}` as encoding/json decodes it into the kubelet's
/// `DockerConfigJSON`: absent or `null` `auths` is no entries, repeated `auths`
/// objects are merged, and `HttpHeaders` must be a `map[string]string`.
#[derive(Default)]
struct RawConfigJson {
    auths: GoMap<RawEntry>,
}

impl GoDecode for RawConfigJson {
    fn decode(&mut self, r: &mut Reader<'_>) -> Decoded {
        r.go_struct(
            self,
            &[
                ("auths", |c, r| c.auths.decode(r)),
                ("HttpHeaders", |_, r| r.check::<MapOf<String>>()),
            ],
        )
    }
}

/// Whether a top-level object has an `auths` key (in any case, as encoding/json
/// matches it).
#[derive(Default)]
struct HasAuths(bool);

impl GoDecode for HasAuths {
    fn decode(&mut self, r: &mut Reader<'_>) -> Decoded {
        r.go_struct(
            self,
            &[("auths", |has, r| {
                has.0 = true;
                r.skip()
            })],
        )
    }
}

impl DockerConfig {
    /// Parses the `{"auths": {...}}` form (`kubernetes.io/dockerconfigjson`,
    /// `config.json`) as the kubelet does: a document without `auths` (or `null`) is a
    /// valid, empty config.
    pub fn from_config_json(bytes: &[u8]) -> Result<Self, CredentialError> {
        let parsed: RawConfigJson = go_json::unmarshal(bytes)?;
        Self::from_raw(parsed.auths.0)
    }

    /// Parses the legacy `{"host": {...}}` form (`kubernetes.io/dockercfg`).
    pub fn from_dockercfg(bytes: &[u8]) -> Result<Self, CredentialError> {
        let parsed: GoMap<RawEntry> = go_json::unmarshal(bytes)?;
        Self::from_raw(parsed.0)
    }

    /// A docker config file of either form: `config.json` when the top-level object has
    /// an `auths` key (in any case, as encoding/json matches it), else `.dockercfg`.
    pub fn from_either_form(bytes: &[u8]) -> Result<Self, CredentialError> {
        let has_auths = match go_json::unmarshal::<HasAuths>(bytes) {
            Ok(has) => has.0,
            // Not an object: the `.dockercfg` form says why.
            Err(GoJsonError::Form { .. }) => false,
            Err(syntax) => return Err(syntax.into()),
        };
        if has_auths {
            Self::from_config_json(bytes)
        } else {
            Self::from_dockercfg(bytes)
        }
    }

    fn from_raw(raw: BTreeMap<String, RawEntry>) -> Result<Self, CredentialError> {
        let mut entries = BTreeMap::new();
        for (registry, entry) in raw {
            let mut credential = RegistryCredential {
                username: entry.username,
                password: entry.password,
                identity_token: None,
                registry_token: None,
            };
            // As in the kubelet, a non-empty `auth` field wins over username/password.
            if !entry.auth.is_empty() {
                let (user, pass) = decode_auth_field(&entry.auth).map_err(|why| {
                    CredentialError::BadAuthField {
                        // The key as the keyring uses it: a `user:password@` written
                        // into the key must not reach the message.
                        registry: keyring_key(&registry)
                            .unwrap_or_else(|| "(a key Go cannot parse)".to_string()),
                        why,
                    }
                })?;
                credential.username = user;
                credential.password = pass;
            }
            entries.insert(registry, credential);
        }
        Ok(DockerConfig { entries })
    }
}

/// The kubelet's `decodeDockerConfigFieldAuth`: padded standard base64 when the
/// (space-trimmed) field ends in '=', else unpadded; Go's decoder skips '\r' and '\n'
/// and tolerates non-zero trailing bits; then `user:password`, split at the first ':'.
fn decode_auth_field(field: &str) -> Result<(String, String), &'static str> {
    use base64::alphabet::STANDARD;
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const PADDED: GeneralPurpose = GeneralPurpose::new(
        &STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(DecodePaddingMode::RequireCanonical),
    );
    const UNPADDED: GeneralPurpose = GeneralPurpose::new(
        &STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(DecodePaddingMode::RequireNone),
    );
    let engine = if field.trim().ends_with('=') {
        &PADDED
    } else {
        &UNPADDED
    };
    let cleaned: String = field.chars().filter(|c| *c != '\r' && *c != '\n').collect();
    let decoded = engine.decode(cleaned).map_err(|_| "not base64")?;
    // Intentional difference: Go keeps non-UTF-8 bytes as they are; a credential
    // here is text, so such a field is refused rather than altered.
    let decoded = String::from_utf8(decoded).map_err(|_| "not UTF-8 text")?;
    let (user, pass) = decoded
        .split_once(':')
        .ok_or("no ':' between user and password")?;
    Ok((user.to_string(), pass.to_string()))
}

const DEFAULT_REGISTRY_KEY: &str = "index.docker.io";

/// A set of credentials indexed the way the kubelet indexes them.
#[derive(Clone, Debug, Default)]
pub struct Keyring {
    /// Keys, reverse-sorted so more specific paths match first.
    index: Vec<String>,
    creds: BTreeMap<String, Vec<SourcedCredential>>,
}

impl Keyring {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Adds every entry of `config`, labelled with `source` (`BasicDockerKeyring.Add`).
    pub fn add(&mut self, source: &str, config: &DockerConfig) {
        let source: Arc<str> = Arc::from(source);
        for (location, credential) in &config.entries {
            let Some(key) = keyring_key(location) else {
                // The location itself is not logged: it may carry `user:password@`.
                tracing::debug!(%source, "skipping docker config entry with an unparsable registry key, as the kubelet does");
                continue;
            };
            self.creds
                .entry(key.clone())
                .or_default()
                .push(SourcedCredential {
                    source: source.clone(),
                    credential: credential.clone(),
                });
            if !self.index.contains(&key) {
                self.index.push(key);
            }
        }
        self.index.sort_unstable_by(|a, b| b.cmp(a));
    }

    /// The credentials a kubelet would try for `image`, in the order it would try them.
    /// Empty means: pull anonymously.
    pub fn lookup(&self, image: &ImageReference) -> Vec<SourcedCredential> {
        self.lookup_name(&image.name())
    }

    /// `BasicDockerKeyring.Lookup` for the kubelet's repository name
    /// (`registry/repository`, as `ParseNormalizedNamed(...).Name()`).
    pub(crate) fn lookup_name(&self, name: &str) -> Vec<SourcedCredential> {
        let matched: Vec<SourcedCredential> = self
            .index
            .iter()
            .filter(|key| urls_match(key, name))
            .flat_map(|key| self.creds.get(key.as_str()).into_iter().flatten().cloned())
            .collect();
        if matched.is_empty() && is_default_registry_match(name) {
            return self
                .creds
                .get(DEFAULT_REGISTRY_KEY)
                .cloned()
                .unwrap_or_default();
        }
        matched
    }
}

/// The kubelet's `isDefaultRegistryMatch`: a name whose first component has no '.'
/// or ':' (which includes `localhost`), or is `docker.io`/`index.docker.io`.
fn is_default_registry_match(name: &str) -> bool {
    let (first, rest) = match name.split_once('/') {
        Some((first, rest)) => (first, Some(rest)),
        None => (name, None),
    };
    if first.is_empty() {
        return false;
    }
    if rest.is_none() || first == "docker.io" || first == "index.docker.io" {
        return true;
    }
    !first.contains(['.', ':'])
}

/// The keyring key of a docker config location, as `BasicDockerKeyring.Add`:
/// `https://` is assumed unless the location starts with `https://` or `http://`;
/// the key is the URL's host plus its path, `/v1/` and `/v2/` meaning the bare host.
/// None when Go's `url.Parse` refuses the location (the kubelet skips the entry).
fn keyring_key(location: &str) -> Option<String> {
    let url = if location.starts_with("https://") || location.starts_with("http://") {
        GoUrl::parse(location)?
    } else {
        GoUrl::parse(&format!("https://{location}"))?
    };
    let path = if url.path.starts_with("/v2/") || url.path.starts_with("/v1/") {
        &url.path[3..]
    } else {
        url.path.as_str()
    };
    if !path.is_empty() && path != "/" {
        Some(format!("{}{path}", url.host))
    } else {
        Some(url.host)
    }
}

/// The kubelet's `URLsMatchStr(glob, target)` on schemeless `host[:port][/path]`
/// strings: same port, same number of host labels, each label a Go `filepath.Match`
/// of the glob's, and the glob's path a string prefix of the target's. Anything Go
/// fails to parse, or a malformed glob, does not match.
pub fn urls_match(glob: &str, target: &str) -> bool {
    let (Some(glob), Some(target)) = (
        GoUrl::parse(&format!("https://{glob}")),
        GoUrl::parse(&format!("https://{target}")),
    ) else {
        return false;
    };
    let (glob_labels, glob_port) = split_url_host(&glob.host);
    let (target_labels, target_port) = split_url_host(&target.host);
    if glob_port != target_port
        || glob_labels.len() != target_labels.len()
        || !target.path.starts_with(&glob.path)
    {
        return false;
    }
    glob_labels
        .iter()
        .zip(&target_labels)
        .all(|(pattern, label)| crate::glob::matches(pattern, label) == Ok(true))
}

/// Whether Go's `url.Parse` accepts `https://<text>` (`ParseSchemelessURL`), as the
/// kubelet validates credential-provider `matchImages`.
pub fn is_schemeless_url(text: &str) -> bool {
    GoUrl::parse(&format!("https://{text}")).is_some()
}

/// The kubelet's `SplitURL`: host labels and port, by `net.SplitHostPort`; a host it
/// refuses (no port, `[::1]` without one) is kept whole with an empty port.
fn split_url_host(host: &str) -> (Vec<&str>, &str) {
    let (name, port) = go_split_host_port(host).unwrap_or((host, ""));
    (name.split('.').collect(), port)
}

/// Go's `net.SplitHostPort`.
fn go_split_host_port(hostport: &str) -> Option<(&str, &str)> {
    let i = hostport.rfind(':')?;
    let (host, j, k) = if hostport.starts_with('[') {
        let end = hostport.find(']')?;
        if end + 1 != i {
            return None;
        }
        (&hostport[1..end], 1, end + 1)
    } else {
        let host = &hostport[..i];
        if host.contains(':') {
            return None;
        }
        (host, 0, 0)
    };
    if hostport[j..].contains('[') || hostport[k..].contains(']') {
        return None;
    }
    Some((host, &hostport[i + 1..]))
}

/// The parts of Go's `url.Parse` result the keyring uses: host (unescaped) and path
/// (unescaped). Only absolute `scheme://authority...` URLs are parsed here.
struct GoUrl {
    host: String,
    path: String,
}

impl GoUrl {
    fn parse(raw: &str) -> Option<GoUrl> {
        let (rest, fragment) = match raw.split_once('#') {
            Some((rest, fragment)) => (rest, Some(fragment)),
            None => (raw, None),
        };
        if let Some(fragment) = fragment {
            go_unescape(fragment, Mode::Other)?;
        }
        if rest.bytes().any(|b| b < 0x20 || b == 0x7f) {
            return None;
        }
        let (_, after_scheme) = rest.split_once("://")?;
        let without_query = match after_scheme.split_once('?') {
            Some((before, _)) => before,
            None => after_scheme,
        };
        let (authority, path) = match without_query.find('/') {
            Some(i) => (&without_query[..i], &without_query[i..]),
            None => (without_query, ""),
        };
        let host = match authority.rfind('@') {
            Some(i) => {
                let userinfo = &authority[..i];
                // Go's validUserinfo: ASCII outside this set is refused.
                if userinfo.bytes().any(|b| {
                    b < 0x80 && !(b.is_ascii_alphanumeric() || b"-._:~!$&'()*+,;=%@".contains(&b))
                }) {
                    return None;
                }
                go_unescape(userinfo, Mode::Other)?;
                &authority[i + 1..]
            }
            None => authority,
        };
        Some(GoUrl {
            host: go_parse_host(host)?,
            path: go_unescape(path, Mode::Other)?,
        })
    }
}

/// Go's `parseHost` (without IPv6 zone support: a zone is no registry host).
fn go_parse_host(host: &str) -> Option<String> {
    let valid_optional_port = |p: &str| {
        p.is_empty() || (p.starts_with(':') && p[1..].bytes().all(|b| b.is_ascii_digit()))
    };
    if host.starts_with('[') {
        let i = host.rfind(']')?;
        if !valid_optional_port(&host[i + 1..]) || host[..i].contains("%25") {
            return None;
        }
    } else if let Some(i) = host.rfind(':')
        && !valid_optional_port(&host[i..])
    {
        return None;
    }
    go_unescape(host, Mode::Host)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Host,
    Other,
}

/// Go's `url.unescape`: %XX decoding with its validation; in a host, only bytes
/// >= 0x80 may be escaped (and `%25`), and ASCII outside the host alphabet is refused.
fn go_unescape(text: &str, mode: Mode) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = |b: u8| (b as char).to_digit(16);
                let hi = bytes.get(i + 1).copied().and_then(hex)?;
                let lo = bytes.get(i + 2).copied().and_then(hex)?;
                if mode == Mode::Host && hi < 8 && &text[i..i + 3] != "%25" {
                    return None;
                }
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            b if mode == Mode::Host
                && b < 0x80
                && !(b.is_ascii_alphanumeric() || b"-_.~!$&'()*+,;=:[]<>\"".contains(&b)) =>
            {
                return None;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cred(user: &str) -> RegistryCredential {
        RegistryCredential {
            username: user.into(),
            password: format!("{user}-pw"),
            ..Default::default()
        }
    }

    fn config(entries: &[(&str, &str)]) -> DockerConfig {
        DockerConfig {
            entries: entries
                .iter()
                .map(|(k, user)| (k.to_string(), cred(user)))
                .collect(),
        }
    }

    fn users(keyring: &Keyring, image: &str) -> Vec<String> {
        keyring
            .lookup(&ImageReference::parse(image).unwrap())
            .into_iter()
            .map(|c| c.credential.username)
            .collect()
    }

    #[test]
    fn parses_both_formats_and_auth_field() {
        let json = br#"{"auths":{"reg.io":{"auth":"dXNlcjpwYTpzcw=="},"other.io":{"username":"u","password":"p"}}}"#;
        let cfg = DockerConfig::from_config_json(json).unwrap();
        assert_eq!(cfg.entries["reg.io"].username, "user");
        assert_eq!(cfg.entries["reg.io"].password, "pa:ss");
        assert_eq!(cfg.entries["other.io"].password, "p");
        let legacy =
            DockerConfig::from_dockercfg(br#"{"reg.io":{"auth":"dXNlcjpwYTpzcw=="}}"#).unwrap();
        assert_eq!(legacy.entries["reg.io"].username, "user");
        assert!(matches!(
            DockerConfig::from_config_json(br#"{"auths":{"r":{"auth":"!!"}}}"#),
            Err(CredentialError::BadAuthField { .. })
        ));
        assert!(matches!(
            DockerConfig::from_config_json(b"{"),
            Err(CredentialError::Json { .. })
        ));
    }

    #[test]
    fn a_config_without_auths_is_empty_as_to_the_kubelet() {
        for doc in [
            &b"{}"[..],
            b"null",
            br#"{"auths":null}"#,
            br#"{"credsStore":"x"}"#,
        ] {
            assert_eq!(
                DockerConfig::from_config_json(doc),
                Ok(DockerConfig::default()),
                "{}",
                String::from_utf8_lossy(doc)
            );
        }
        assert_eq!(
            DockerConfig::from_dockercfg(b"null"),
            Ok(DockerConfig::default())
        );
        // But `auths` of the wrong type, or a document that is not an object, fail.
        assert!(DockerConfig::from_config_json(br#"{"auths":[]}"#).is_err());
        assert!(DockerConfig::from_config_json(b"[]").is_err());
    }

    #[test]
    fn either_form_by_its_auths_key() {
        let json = DockerConfig::from_either_form(br#"{"Auths":{"reg.io":{"username":"a"}}}"#);
        assert_eq!(json.unwrap().entries["reg.io"].username, "a");
        let legacy = DockerConfig::from_either_form(br#"{"reg.io":{"username":"b"}}"#);
        assert_eq!(legacy.unwrap().entries["reg.io"].username, "b");
        assert!(matches!(
            DockerConfig::from_either_form(b"{"),
            Err(CredentialError::Json { .. })
        ));
    }

    #[test]
    fn identity_and_registry_tokens_are_not_credentials_to_the_kubelet() {
        let cfg = DockerConfig::from_config_json(
            br#"{"auths":{"reg.io":{"identitytoken":"refresh","registrytoken":"bearer"}}}"#,
        )
        .unwrap();
        assert_eq!(cfg.entries["reg.io"], RegistryCredential::default());
    }

    #[test]
    fn go_json_rules_for_entries() {
        // Field names match case-insensitively (Go's EqualFold, so U+017F is an s),
        // the last key wins, null leaves a field alone, unknown fields are ignored.
        let cfg = DockerConfig::from_config_json(
            "{\"AUTHS\":{\"reg.io\":{\"UserName\":\"a\",\"u\u{17F}ername\":\"b\",\"PASSWORD\":\"p\",\"password\":null,\"other\":[1,{}]}}}"
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(cfg.entries["reg.io"].username, "b");
        assert_eq!(cfg.entries["reg.io"].password, "p");
        // A null entry is an empty credential; a non-string field is an error.
        let cfg = DockerConfig::from_dockercfg(br#"{"reg.io":null}"#).unwrap();
        assert_eq!(cfg.entries["reg.io"], RegistryCredential::default());
        assert!(DockerConfig::from_dockercfg(br#"{"reg.io":{"username":5}}"#).is_err());
        assert!(DockerConfig::from_dockercfg(br#"{"reg.io":"x"}"#).is_err());
        // Invalid UTF-8 inside a string is replaced, not an error.
        let cfg = DockerConfig::from_dockercfg(b"{\"reg.io\":{\"username\":\"a\xffb\"}}").unwrap();
        assert_eq!(cfg.entries["reg.io"].username, "a\u{FFFD}b");
    }

    #[test]
    fn go_json_rules_serde_did_not_follow() {
        // A lone surrogate escape is U+FFFD, HttpHeaders (matched in any case) must be a
        // map of strings, and unknown values nest as deep as Go allows.
        let cfg = DockerConfig::from_config_json(br#"{"auths":{"reg.io":{"username":"a\ud800"}}}"#)
            .unwrap();
        assert_eq!(cfg.entries["reg.io"].username, "a\u{FFFD}");
        assert!(DockerConfig::from_config_json(br#"{"auths":{},"HttpHeaders":{"X":1}}"#).is_err());
        assert!(DockerConfig::from_config_json(br#"{"auths":{},"httpheaders":{"X":"y"}}"#).is_ok());
        let deep = format!(
            r#"{{"auths":{{}},"x":{}{}}}"#,
            "[".repeat(500),
            "]".repeat(500)
        );
        assert!(DockerConfig::from_config_json(deep.as_bytes()).is_ok());
        // A type error says where, as a syntax error does.
        let err = DockerConfig::from_dockercfg(b"{\n\"reg.io\": 5}").unwrap_err();
        assert!(
            err.to_string().contains("type error at line 2, column 11"),
            "{err}"
        );
    }

    #[test]
    fn parse_errors_say_where_never_what() {
        let secret = "hunter2-very-secret";
        for doc in [
            format!(r#"{{"auths":{{"reg.io":{{"password":{secret}}}}}}}"#),
            format!(r#"{{"auths":{{"reg.io":{{"password":["{secret}"]}}}}}}"#),
            format!(r#"{{"auths":{{"reg.io":{{"password":"{secret}"}},}}}}"#),
        ] {
            let err = DockerConfig::from_config_json(doc.as_bytes()).unwrap_err();
            let shown = format!("{err} {err:?}");
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(shown.contains("line 1, column"), "{shown}");
        }
        // A bad auth field names the registry key (never userinfo written into it),
        // not the value.
        let err = DockerConfig::from_config_json(
            br#"{"auths":{"bob:hunter2@reg.io/x":{"auth":"aHVudGVyMg=="}}}"#,
        )
        .unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(err.to_string().contains("reg.io/x"), "{err}");
        // A bad auth field names the registry key, not the value.
        let err =
            DockerConfig::from_config_json(br#"{"auths":{"reg.io":{"auth":"aHVudGVyMg=="}}}"#)
                .unwrap_err();
        assert!(!err.to_string().contains("aHVudGVy"), "{err}");
        assert!(err.to_string().contains("reg.io"), "{err}");
    }

    /// config_test.go `TestDecodeDockerConfigFieldAuth` (current kubelet, which
    /// decodes unpadded fields with RawStdEncoding).
    #[test]
    fn kubelet_decode_auth_field_table() {
        let table: &[(&str, Option<(&str, &str)>)] = &[
            ("Zm9vOmJhcg==", Some(("foo", "bar"))),
            ("Zm9vOmJhcg", Some(("foo", "bar"))),
            ("Zm9vOm\nJhcg==\n", Some(("foo", "bar"))),
            ("cGFudHM=", None),
            ("Zm9vOmJhcg== ", None),
            ("pants", None),
        ];
        for (input, want) in table {
            let got = decode_auth_field(input).ok();
            assert_eq!(
                got.as_ref().map(|(u, p)| (u.as_str(), p.as_str())),
                *want,
                "{input:?}"
            );
        }
    }

    #[test]
    fn intentional_differences_from_the_kubelet() {
        // 1. An `auth` that decodes to bytes that are not UTF-8: the kubelet keeps the
        //    bytes and tries them; a credential here is text, so the config is refused
        //    (its pods are reported authentication_failure for an unparsable secret).
        let auth = base64::engine::general_purpose::STANDARD.encode(b"\xff:pw");
        let err =
            DockerConfig::from_dockercfg(format!(r#"{{"r.io":{{"auth":"{auth}"}}}}"#).as_bytes())
                .unwrap_err();
        assert!(err.to_string().contains("not UTF-8"), "{err}");
        // 2. Two locations with one keyring key: Go adds them in map order (random);
        //    here in the locations' sorted order, so the order of tries is stable.
        let mut k = Keyring::new();
        k.add("s", &config(&[("https://reg.io", "b"), ("reg.io", "a")]));
        assert_eq!(users(&k, "reg.io/x"), ["b", "a"]);
    }

    /// config_test.go `TestDockerConfigEntryJSONDecode`, `TestDockerConfigJSONDecode`
    /// and `TestDockerConfigJsonJSONDecode`.
    #[test]
    fn kubelet_entry_decode_table() {
        let table: &[(&str, Option<(&str, &str)>)] = &[
            (
                r#"{"username": "foo", "password": "bar", "email": "foo@example.com"}"#,
                Some(("foo", "bar")),
            ),
            (
                r#"{"auth": "Zm9vOmJhcg==", "email": "foo@example.com"}"#,
                Some(("foo", "bar")),
            ),
            (
                r#"{"username": "foo", "password": "bar", "auth": "cGluZzpwb25n", "email": "foo@example.com"}"#,
                Some(("ping", "pong")),
            ),
            (r#"{"auth": "pants", "email": "foo@example.com"}"#, None),
            (r#"{"email": false}"#, None),
        ];
        for (entry, want) in table {
            let got = DockerConfig::from_dockercfg(format!(r#"{{"r":{entry}}}"#).as_bytes());
            match want {
                Some((user, pass)) => {
                    let cfg = got.unwrap_or_else(|e| panic!("{entry}: {e}"));
                    assert_eq!(cfg.entries["r"].username, *user, "{entry}");
                    assert_eq!(cfg.entries["r"].password, *pass, "{entry}");
                }
                None => assert!(got.is_err(), "{entry} should fail"),
            }
        }
        let two = r#"{"http://foo.example.com":{"username": "foo", "password": "bar", "email": "foo@example.com"}, "http://bar.example.com":{"username": "bar", "password": "baz", "email": "bar@example.com"}}"#;
        for cfg in [
            DockerConfig::from_dockercfg(two.as_bytes()).unwrap(),
            DockerConfig::from_config_json(format!(r#"{{"auths": {two}}}"#).as_bytes()).unwrap(),
        ] {
            assert_eq!(cfg.entries.len(), 2);
            assert_eq!(cfg.entries["http://foo.example.com"].password, "bar");
            assert_eq!(cfg.entries["http://bar.example.com"].username, "bar");
        }
    }

    /// keyring_test.go `TestUrlsMatch`.
    #[test]
    fn kubelet_urls_match_table() {
        let table = [
            ("*.kubernetes.io", "prefix.kubernetes.io", true),
            ("prefix.*.io", "prefix.kubernetes.io", true),
            ("prefix.kubernetes.*", "prefix.kubernetes.io", true),
            ("*-good.kubernetes.io", "prefix-good.kubernetes.io", true),
            ("*.kubernetes.io/blah", "prefix.kubernetes.io/blah", true),
            ("prefix.*.io/foo", "prefix.kubernetes.io/foo/bar", true),
            (
                "*.kubernetes.io:1111/blah",
                "prefix.kubernetes.io:1111/blah",
                true,
            ),
            (
                "prefix.*.io:1111/foo",
                "prefix.kubernetes.io:1111/foo/bar",
                true,
            ),
            ("*.kubernetes.io", "kubernetes.io", false),
            ("*.*.kubernetes.io", "prefix.kubernetes.io", false),
            ("*.*.kubernetes.io", "kubernetes.io", false),
            ("kubernetes.io", "kubernetes.com", false),
            ("k*.io", "quay.io", false),
            (
                "*.kubernetes.io:1234/blah",
                "prefix.kubernetes.io:1111/blah",
                false,
            ),
            (
                "prefix.*.io/foo",
                "prefix.kubernetes.io:1111/foo/bar",
                false,
            ),
        ];
        for (glob, target, want) in table {
            assert_eq!(urls_match(glob, target), want, "{glob} vs {target}");
        }
    }

    fn keyring_of(location: &str) -> Keyring {
        let mut k = Keyring::new();
        k.add(
            "s",
            &DockerConfig::from_dockercfg(
                format!(r#"{{"{location}":{{"email":"foo@bar.baz","auth":"Zm9vOmJhcg=="}}}}"#)
                    .as_bytes(),
            )
            .unwrap(),
        );
        k
    }

    fn names(keyring: &Keyring, name: &str) -> Vec<String> {
        keyring
            .lookup_name(name)
            .into_iter()
            .map(|c| c.credential.username)
            .collect()
    }

    /// keyring_test.go `TestDockerKeyringForGlob` and `TestKeyringMiss`.
    #[test]
    fn kubelet_keyring_glob_hit_and_miss_tables() {
        let hits = [
            ("https://hello.kubernetes.io", "hello.kubernetes.io"),
            ("https://*.docker.io", "prefix.docker.io"),
            ("https://prefix.*.io", "prefix.docker.io"),
            ("https://prefix.docker.*", "prefix.docker.io"),
            ("https://*.docker.io/path", "prefix.docker.io/path"),
            ("https://prefix.*.io/path", "prefix.docker.io/path/subpath"),
            ("https://prefix.docker.*/path", "prefix.docker.io/path"),
            ("https://*.docker.io:8888", "prefix.docker.io:8888"),
            ("https://prefix.*.io:8888", "prefix.docker.io:8888"),
            ("https://prefix.docker.*:8888", "prefix.docker.io:8888"),
            (
                "https://*.docker.io/path:1111",
                "prefix.docker.io/path:1111",
            ),
            ("https://*.docker.io/v1/", "prefix.docker.io/path:1111"),
            ("https://*.docker.io/v2/", "prefix.docker.io/path:1111"),
            (
                "https://prefix.docker.*/path:1111",
                "prefix.docker.io/path:1111",
            ),
            ("prefix.docker.io:1111", "prefix.docker.io:1111/path"),
            ("*.docker.io:1111", "prefix.docker.io:1111/path"),
        ];
        for (location, target) in hits {
            let k = keyring_of(location);
            assert_eq!(
                names(&k, &format!("{target}/foo/bar")),
                ["foo"],
                "{location} / {target}"
            );
        }
        let misses = [
            ("https://hello.kubernetes.io", "world.mesos.org/foo/bar"),
            ("https://*.docker.com", "prefix.docker.io"),
            ("https://suffix.*.io", "prefix.docker.io"),
            ("https://prefix.docker.c*", "prefix.docker.io"),
            (
                "https://prefix.*.io/path:1111",
                "prefix.docker.io/path/subpath:1111",
            ),
            ("suffix.*.io", "prefix.docker.io"),
        ];
        for (location, target) in misses {
            let k = keyring_of(location);
            assert!(
                names(&k, &format!("{target}/foo/bar")).is_empty(),
                "{location} / {target}"
            );
        }
    }

    /// keyring_test.go `TestKeyringMissWithDockerHubCredentials`,
    /// `TestKeyringHitWith{Unqualified,UnqualifiedLibrary,Qualified}DockerHub` and
    /// `TestIsDefaultRegistryMatch`.
    #[test]
    fn kubelet_docker_hub_fallback_tables() {
        let k = keyring_of("https://index.docker.io/v1/");
        assert!(names(&k, "world.mesos.org/foo/bar").is_empty());
        assert_eq!(names(&k, "google/docker-registry"), ["foo"]);
        assert_eq!(names(&k, "jenkins"), ["foo"]);
        assert_eq!(
            names(&k, "index.docker.io/v1//google/docker-registry"),
            ["foo"]
        );
        for (name, want) in [
            ("foo/bar", true),
            ("docker.io/foo/bar", true),
            ("index.docker.io/foo/bar", true),
            ("foo", true),
            ("", false),
            ("registry.tld/foo/bar", false),
            ("registry:5000/foo/bar", false),
            ("myhostdocker.io/foo/bar", false),
        ] {
            assert_eq!(is_default_registry_match(name), want, "{name:?}");
        }
    }

    /// keyring_test.go `TestDockerKeyringLookup` and `TestIssue3797`.
    #[test]
    fn kubelet_keyring_lookup_tables() {
        let mut k = Keyring::new();
        k.add(
            "s",
            &config(&[
                ("bar.example.com/pong", "grace"),
                ("bar.example.com", "ada"),
            ]),
        );
        for (name, want) in [
            ("bar.example.com", &["ada"][..]),
            ("bar.example.com/pong", &["grace", "ada"]),
            ("bar.example.com/ping", &["ada"]),
            ("bar.example.com/pongz", &["grace", "ada"]),
            ("bar.example.com/pong/pang", &["grace", "ada"]),
            ("example.com", &[]),
            ("foo.example.com", &[]),
        ] {
            assert_eq!(names(&k, name), want, "{name}");
        }
        let mut k = Keyring::new();
        k.add("s", &config(&[("https://quay.io/v1/", "rex")]));
        for name in ["quay.io", "quay.io/foo", "quay.io/foo/bar"] {
            assert_eq!(names(&k, name), ["rex"], "{name}");
        }
    }

    #[test]
    fn keys_as_go_parses_them() {
        assert_eq!(keyring_key("reg.io").as_deref(), Some("reg.io"));
        assert_eq!(keyring_key("https://reg.io/v2/").as_deref(), Some("reg.io"));
        assert_eq!(
            keyring_key("http://reg.io/team").as_deref(),
            Some("reg.io/team")
        );
        assert_eq!(
            keyring_key("user@reg.io/x?q#f").as_deref(),
            Some("reg.io/x")
        );
        assert_eq!(keyring_key("reg.io:5000").as_deref(), Some("reg.io:5000"));
        // Go's url.Parse refuses these, so the kubelet skips the entry.
        for bad in [
            "reg io",
            "reg.io:port",
            "%zz",
            "[::1",
            "reg.io/%zz",
            "a{b}.io",
        ] {
            assert_eq!(keyring_key(bad), None, "{bad:?}");
        }
        // `[::1]` without a port: SplitHostPort fails, the label `[::1]` is a glob
        // character class, so the kubelet never matches such a key. Neither do we.
        let mut k = Keyring::new();
        k.add(
            "s",
            &config(&[("[::1]", "no-port"), ("[::1]:5000", "port")]),
        );
        assert!(names(&k, "[::1]/app").is_empty());
        assert_eq!(names(&k, "[::1]:5000/app"), ["port"]);
        // A malformed glob matches nothing rather than failing the lookup.
        assert!(!urls_match("reg[.io", "reg[.io/x"));
        assert!(is_schemeless_url("*.example.com/team"));
        assert!(is_schemeless_url("a://b"));
        assert!(!is_schemeless_url("%invalid%"));
        assert!(!is_schemeless_url("[::1"));
    }

    #[test]
    fn debug_never_shows_secrets() {
        let c = cred("alice");
        let shown = format!("{c:?}");
        assert!(!shown.contains("alice"), "{shown}");
        assert!(!shown.contains("alice-pw"), "{shown}");
    }

    #[test]
    fn most_specific_first_and_all_matches() {
        let mut k = Keyring::new();
        k.add(
            "secret/ns/a",
            &config(&[
                ("quay.io", "host"),
                ("quay.io/team", "team"),
                ("quay.io/team/app", "app"),
            ]),
        );
        assert_eq!(users(&k, "quay.io/team/app:v1"), ["app", "team", "host"]);
        assert_eq!(users(&k, "quay.io/other/x"), ["host"]);
        assert!(users(&k, "ghcr.io/team/app").is_empty());
    }

    #[test]
    fn globs_ports_schemes_and_versions() {
        let mut k = Keyring::new();
        k.add(
            "s",
            &config(&[
                ("*.example.com", "glob"),
                ("https://reg.local:5000/v2/", "port"),
                ("http://plain.local/v1/", "plain"),
            ]),
        );
        assert_eq!(users(&k, "a.example.com/x"), ["glob"]);
        // A glob stands for exactly one label.
        assert!(users(&k, "a.b.example.com/x").is_empty());
        assert!(users(&k, "example.com/x").is_empty());
        assert_eq!(users(&k, "reg.local:5000/x"), ["port"]);
        assert!(users(&k, "reg.local/x").is_empty());
        assert!(users(&k, "reg.local:5001/x").is_empty());
        assert_eq!(users(&k, "plain.local/x"), ["plain"]);
    }

    #[test]
    fn docker_hub_keys() {
        let mut k = Keyring::new();
        k.add("s", &config(&[("https://index.docker.io/v1/", "hub")]));
        assert_eq!(users(&k, "nginx"), ["hub"]);
        assert_eq!(users(&k, "docker.io/org/app"), ["hub"]);
        assert!(users(&k, "ghcr.io/org/app").is_empty());
        // The kubelet's fallback applies to any name whose first component has no '.'
        // or ':' (so localhost too), not to registry-1.docker.io.
        assert_eq!(users(&k, "localhost/app"), ["hub"]);
        assert!(users(&k, "registry-1.docker.io/org/app").is_empty());
        let mut k = Keyring::new();
        k.add("s", &config(&[("docker.io", "plain-key")]));
        assert_eq!(users(&k, "nginx"), ["plain-key"]);
    }

    #[test]
    fn ipv6_and_merged_sources_keep_order() {
        let mut k = Keyring::new();
        k.add("first", &config(&[("[::1]:5000", "one")]));
        k.add("second", &config(&[("[::1]:5000", "two")]));
        let found = k.lookup(&ImageReference::parse("[::1]:5000/app").unwrap());
        let sources: Vec<&str> = found.iter().map(|c| &*c.source).collect();
        assert_eq!(sources, ["first", "second"]);
        assert!(users(&k, "[::1]:5001/app").is_empty());
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn url_matching_never_panics(glob in "\\PC{0,24}", target in "[a-z0-9.:/\\[\\]@%*?-]{0,24}") {
                let _ = urls_match(&glob, &target);
                let _ = keyring_key(&glob);
            }

            #[test]
            fn decoding_never_panics(doc in "\\PC{0,64}") {
                let _ = DockerConfig::from_config_json(doc.as_bytes());
                let _ = DockerConfig::from_either_form(doc.as_bytes());
            }
        }
    }
}
