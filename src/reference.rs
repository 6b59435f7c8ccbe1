//! Image references exactly as the kubelet reads them: `github.com/distribution/reference`
//! v0.6.x (`ParseNormalizedNamed`, the grammar's own regular expressions) with the
//! digest check of `github.com/opencontainers/go-digest` v1.0.0 as linked into the
//! kubelet (sha256, sha384 and sha512 are the algorithms it can verify). A reference
//! the kubelet refuses (`InvalidImageName`) is refused here, with the kubelet's reason;
//! one it accepts is accepted here, with the same registry and repository.
//!
//! ```text
//! reference        := name [ ":" tag ] [ "@" digest ]
//! name             := [domain '/'] remote-name
//! domain           := host [':' port-number]
//! host             := domain-name | IPv4address | '[' IPv6address ']'   (no zone, no embedded IPv4)
//! domain-component := /([a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])/
//! port-number      := /[0-9]+/
//! path-component   := alpha-numeric [separator alpha-numeric]*
//! separator        := /[_.]|__|[-]+/
//! tag              := /[\w][\w.-]{0,127}/
//! digest           := algorithm ":" hex   (algorithm components /[A-Za-z][A-Za-z0-9]*/ joined by [+._-])
//! identifier       := /[a-f0-9]{64}/      (refused as a name)
//! ```
//!
//! Normalization is docker's `splitDockerDomain`: a first path component is a registry
//! when it contains '.' or ':', is `localhost`, or has uppercase letters; otherwise
//! the image is on Docker Hub (`docker.io`, with the implicit `library/` namespace for
//! one-component names). Only `index.docker.io` is an alias of `docker.io`;
//! `registry-1.docker.io` (the host that serves Docker Hub's API) is a registry of its
//! own to the kubelet, as it is here. The 255-character limit applies to the
//! repository path alone.
//!
//! Written here rather than taken from `oci-spec`, whose parser rejects IPv6 registry
//! literals and has no notion of a configurable default registry.

use std::fmt;
use std::sync::LazyLock;

use regex::Regex;

/// Docker Hub's canonical registry name.
pub const DOCKER_HUB: &str = "docker.io";
/// The legacy name of Docker Hub, an alias of `docker.io` in references.
const LEGACY_DOCKER_HUB: &str = "index.docker.io";
/// The host that actually serves Docker Hub's distribution API.
pub const DOCKER_HUB_API_HOST: &str = "registry-1.docker.io";
const OFFICIAL_REPO_PREFIX: &str = "library/";
const DEFAULT_TAG: &str = "latest";
/// `RepositoryNameTotalLengthMax`: the limit on the repository path (without registry).
const REPOSITORY_LENGTH_MAX: usize = 255;

// The grammar, as distribution/reference's regexp.go builds it. `\w` is spelled out:
// Go's is ASCII-only, the regex crate's is Unicode.
const ALPHANUMERIC: &str = "[a-z0-9]+";
const SEPARATOR: &str = "(?:[._]|__|[-]+)";
const DOMAIN_NAME_COMPONENT: &str = "(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])";
const OPTIONAL_PORT: &str = "(?::[0-9]+)?";
const TAG: &str = "[0-9A-Za-z_][0-9A-Za-z_.-]{0,127}";
const DIGEST: &str = "[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*[:][0-9A-Fa-f]{32,}";
const IPV6_ADDRESS: &str = r"\[(?:[a-fA-F0-9:]+)\]";

fn domain_and_port() -> String {
    let domain_name = format!(r"{DOMAIN_NAME_COMPONENT}(?:\.{DOMAIN_NAME_COMPONENT})*");
    format!("(?:{domain_name}|{IPV6_ADDRESS}){OPTIONAL_PORT}")
}

fn path_component() -> String {
    format!("{ALPHANUMERIC}(?:{SEPARATOR}{ALPHANUMERIC})*")
}

fn remote_name() -> String {
    let component = path_component();
    format!("{component}(?:/{component})*")
}

fn compile(pattern: &str) -> Regex {
    // The patterns are constants of this file; the unit tests compile every one.
    Regex::new(pattern).unwrap_or_else(|e| unreachable!("reference grammar: {e}"))
}

/// `ReferenceRegexp`: captures name, tag, digest.
static REFERENCE: LazyLock<Regex> = LazyLock::new(|| {
    let name = format!("(?:{}/)?{}", domain_and_port(), remote_name());
    compile(&format!("^({name})(?::({TAG}))?(?:@({DIGEST}))?$"))
});
/// `anchoredNameRegexp`: captures domain, path.
static ANCHORED_NAME: LazyLock<Regex> = LazyLock::new(|| {
    compile(&format!(
        "^(?:({})/)?({})$",
        domain_and_port(),
        remote_name()
    ))
});
/// `anchoredIdentifierRegexp`.
static IDENTIFIER: LazyLock<Regex> = LazyLock::new(|| compile("^([a-f0-9]{64})$"));
// Pieces, only to say which part of a refused reference is wrong.
static ANCHORED_DOMAIN: LazyLock<Regex> =
    LazyLock::new(|| compile(&format!("^{}$", domain_and_port())));
static ANCHORED_PATH_COMPONENT: LazyLock<Regex> =
    LazyLock::new(|| compile(&format!("^{}$", path_component())));
static ANCHORED_TAG: LazyLock<Regex> = LazyLock::new(|| compile(&format!("^{TAG}$")));
static ANCHORED_DIGEST: LazyLock<Regex> = LazyLock::new(|| compile(&format!("^{DIGEST}$")));

/// Why the kubelet would refuse a reference (`InvalidImageName`). The wording follows
/// distribution/reference and go-digest; `InvalidFormat` adds which part is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("image reference is empty")]
    Empty,
    #[error("invalid reference format: {why}")]
    InvalidFormat { why: String },
    #[error("invalid reference format: repository name ({0}) must be lowercase")]
    NameNotLowercase(String),
    #[error("repository name must not be more than {REPOSITORY_LENGTH_MAX} characters")]
    NameTooLong,
    #[error("invalid repository name ({0}), cannot specify 64-byte hexadecimal strings")]
    HexIdentifier(String),
    #[error(
        "unsupported digest algorithm in {0:?} (the kubelet verifies sha256, sha384 and sha512)"
    )]
    DigestUnsupported(String),
    #[error("invalid checksum digest length in {0:?}")]
    DigestInvalidLength(String),
    #[error("invalid checksum digest format in {0:?} (the hex digits must be lowercase)")]
    DigestInvalidFormat(String),
}

/// A parsed, normalized image reference.
///
/// Always has a registry and a repository; has a tag (`latest` when neither tag nor
/// digest was given), a digest, or both.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageReference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
}

/// distribution/reference's `Parse` result (no normalization): domain (may be empty),
/// path, tag, digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RawReference {
    pub(crate) domain: String,
    pub(crate) path: String,
    pub(crate) tag: Option<String>,
    pub(crate) digest: Option<String>,
}

/// distribution/reference's `Parse`.
pub(crate) fn parse_raw(input: &str) -> Result<RawReference, ReferenceError> {
    if input.is_empty() {
        return Err(ReferenceError::Empty);
    }
    let Some(captures) = REFERENCE.captures(input) else {
        let lower = input.to_lowercase();
        if lower != input && REFERENCE.is_match(&lower) {
            return Err(ReferenceError::NameNotLowercase(input.to_string()));
        }
        return Err(ReferenceError::InvalidFormat {
            why: diagnose(input),
        });
    };
    let group = |i: usize| captures.get(i).map_or("", |m| m.as_str());
    let name = group(1);
    let (domain, path) = match ANCHORED_NAME.captures(name) {
        Some(parts) => (
            parts.get(1).map_or("", |m| m.as_str()),
            parts.get(2).map_or("", |m| m.as_str()),
        ),
        None => ("", name),
    };
    if path.len() > REPOSITORY_LENGTH_MAX {
        return Err(ReferenceError::NameTooLong);
    }
    let digest = match group(3) {
        "" => None,
        digest => Some(validate_digest(digest)?),
    };
    Ok(RawReference {
        domain: domain.to_string(),
        path: path.to_string(),
        tag: Some(group(2)).filter(|t| !t.is_empty()).map(str::to_string),
        digest,
    })
}

/// go-digest v1.0.0 `Digest.Validate` with the algorithms the kubelet links.
pub(crate) fn validate_digest(digest: &str) -> Result<String, ReferenceError> {
    let (algorithm, encoded) = digest.split_once(':').unwrap_or((digest, ""));
    let hex_len = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err(ReferenceError::DigestUnsupported(digest.to_string())),
    };
    if encoded.len() != hex_len {
        return Err(ReferenceError::DigestInvalidLength(digest.to_string()));
    }
    if !is_lower_hex(encoded) {
        return Err(ReferenceError::DigestInvalidFormat(digest.to_string()));
    }
    Ok(digest.to_string())
}

/// Whether `text` is lowercase hex digits only (`[a-f0-9]*`), as go-digest's and
/// containers/image's patterns take them.
pub(crate) fn is_lower_hex(text: &str) -> bool {
    text.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Which part of a reference the grammar refuses, for the reason (the verdict is the
/// grammar's alone).
fn diagnose(input: &str) -> String {
    if input.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return "contains whitespace or control characters".to_string();
    }
    let (name_and_tag, digest) = match input.split_once('@') {
        Some((left, digest)) => (left, Some(digest)),
        None => (input, None),
    };
    if let Some(digest) = digest
        && !ANCHORED_DIGEST.is_match(digest)
    {
        return format!("digest {digest:?} is not <algorithm>:<at least 32 hex digits>");
    }
    let last_slash = name_and_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_and_tag[last_slash..].rfind(':') {
        Some(i) => (
            &name_and_tag[..last_slash + i],
            Some(&name_and_tag[last_slash + i + 1..]),
        ),
        None => (name_and_tag, None),
    };
    if let Some(tag) = tag
        && !ANCHORED_TAG.is_match(tag)
    {
        return format!("tag {tag:?} must match [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}");
    }
    let (domain, path) = match name.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':', '[']) => (Some(first), rest),
        _ => (None, name),
    };
    if let Some(domain) = domain
        && !ANCHORED_DOMAIN.is_match(domain)
    {
        return format!(
            "registry {domain:?} is not a host name, IPv4 address or [IPv6] literal (no zone, no embedded IPv4) with an optional numeric port"
        );
    }
    if path.is_empty() {
        return "no repository path".to_string();
    }
    if let Some(component) = path
        .split('/')
        .find(|c| !ANCHORED_PATH_COMPONENT.is_match(c))
    {
        return format!(
            "path component {component:?} must be runs of [a-z0-9] separated by '.', '_', '__' or '-'"
        );
    }
    "does not match the reference grammar".to_string()
}

/// docker's `splitDockerDomain`: (domain, remainder, whether the domain was written).
fn split_docker_domain(name: &str) -> (&str, String, bool) {
    let Some((maybe_domain, maybe_remote)) = name.split_once('/') else {
        return (DOCKER_HUB, format!("{OFFICIAL_REPO_PREFIX}{name}"), false);
    };
    let (domain, remote, explicit) = if maybe_domain == "localhost" {
        (maybe_domain, maybe_remote, true)
    } else if maybe_domain == LEGACY_DOCKER_HUB {
        (DOCKER_HUB, maybe_remote, true)
    } else if maybe_domain.contains(['.', ':']) || maybe_domain.to_lowercase() != maybe_domain {
        (maybe_domain, maybe_remote, true)
    } else {
        (DOCKER_HUB, name, false)
    };
    if domain == DOCKER_HUB && !remote.contains('/') {
        return (domain, format!("{OFFICIAL_REPO_PREFIX}{remote}"), explicit);
    }
    (domain, remote.to_string(), explicit)
}

impl ImageReference {
    /// Parses as the kubelet does (`ParseNormalizedNamed`): Docker Hub for names that
    /// carry no registry.
    pub fn parse(input: &str) -> Result<Self, ReferenceError> {
        Self::parse_normalized(input).map(|(reference, _)| reference)
    }

    /// `ParseNormalizedNamed`, plus whether the input named its registry.
    fn parse_normalized(input: &str) -> Result<(Self, bool), ReferenceError> {
        if input.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if IDENTIFIER.is_match(input) {
            return Err(ReferenceError::HexIdentifier(input.to_string()));
        }
        // Never part of the grammar: say so before the kubelet's other checks would
        // give a less telling reason ("BAD IMAGE" is refused for its case first).
        if input.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ReferenceError::InvalidFormat {
                why: diagnose(input),
            });
        }
        let (domain, remainder, explicit) = split_docker_domain(input);
        let remote = remainder.split(':').next().unwrap_or_default();
        if remote.to_lowercase() != remote {
            return Err(ReferenceError::NameNotLowercase(remote.to_string()));
        }
        let raw = parse_raw(&format!("{domain}/{remainder}"))?;
        let (registry, repository) = if raw.domain.is_empty() {
            // The grammar read the written registry as a path component (`a_b.io/x`:
            // underscores are not allowed in hosts). The kubelet accepts the name and
            // the runtime pulls from the first component, so that is the registry.
            match raw.path.split_once('/') {
                Some((first, rest)) => (first.to_string(), rest.to_string()),
                None => (String::new(), raw.path),
            }
        } else {
            (raw.domain, raw.path)
        };
        let tag = match (raw.tag, &raw.digest) {
            (None, None) => Some(DEFAULT_TAG.to_string()),
            (tag, _) => tag,
        };
        Ok((
            ImageReference {
                registry,
                repository,
                tag,
                digest: raw.digest,
            },
            explicit,
        ))
    }

    /// Parses with `default_registry` in place of Docker Hub for names that carry no
    /// registry (`nginx` -> `<default_registry>/nginx:latest`; the implicit `library/`
    /// namespace belongs to Docker Hub). This is the old exporter's `--default-registry`,
    /// for central checks only: the kubelet always pulls such names from Docker Hub,
    /// so what nodes check comes from [`ImageReference::parse`]. A reference the
    /// kubelet refuses is refused here too, whatever the default registry.
    pub fn parse_with_default_registry(
        input: &str,
        default_registry: &str,
    ) -> Result<Self, ReferenceError> {
        let (reference, explicit) = Self::parse_normalized(input)?;
        if !ANCHORED_DOMAIN.is_match(default_registry) {
            return Err(ReferenceError::InvalidFormat {
                why: format!(
                    "default registry {default_registry:?} is not a host name, IPv4 address or [IPv6] literal with an optional numeric port"
                ),
            });
        }
        let default_registry = normalize_domain(default_registry.to_string());
        if explicit || default_registry == DOCKER_HUB {
            return Ok(reference);
        }
        // Written without a registry: the remainder as written, without `library/`
        // unless it was written.
        let repository = match reference.repository.strip_prefix(OFFICIAL_REPO_PREFIX) {
            Some(rest) if !input.starts_with(OFFICIAL_REPO_PREFIX) => rest.to_string(),
            _ => reference.repository.clone(),
        };
        Ok(ImageReference {
            registry: default_registry,
            repository,
            ..reference
        })
    }

    /// The registry as normalized (`docker.io` for Docker Hub), with port if any.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The host that serves this registry's distribution API.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API_HOST
        } else {
            &self.registry
        }
    }

    pub fn repository(&self) -> &str {
        &self.repository
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// What goes after `/manifests/` in a distribution API request: the digest when
    /// there is one (a runtime pulls by digest and ignores the tag), else the tag.
    pub fn manifest_reference(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or(DEFAULT_TAG)
    }

    /// `registry/repository`, the form the kubelet's keyring matches credentials on.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The same image under another registry and repository prefix (mirrors).
    pub fn with_name(&self, registry: String, repository: String) -> Self {
        ImageReference {
            registry: normalize_domain(registry),
            repository,
            tag: self.tag.clone(),
            digest: self.digest.clone(),
        }
    }
}

impl fmt::Display for ImageReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for ImageReference {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ImageReference::parse(s)
    }
}

/// `index.docker.io` is `docker.io`; every other registry name is kept as written.
fn normalize_domain(domain: String) -> String {
    if domain == LEGACY_DOCKER_HUB {
        DOCKER_HUB.to_string()
    } else {
        domain
    }
}

#[cfg(test)]
#[path = "reference_upstream_tests.rs"]
mod upstream_tests;

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn canonical(s: &str) -> String {
        ImageReference::parse(s).unwrap().to_string()
    }

    #[test]
    fn every_pattern_compiles() {
        for regex in [
            &REFERENCE,
            &ANCHORED_NAME,
            &IDENTIFIER,
            &ANCHORED_DOMAIN,
            &ANCHORED_PATH_COMPONENT,
            &ANCHORED_TAG,
            &ANCHORED_DIGEST,
        ] {
            assert!(!regex.as_str().is_empty());
        }
    }

    #[test]
    fn docker_hub_normalization() {
        assert_eq!(canonical("nginx"), "docker.io/library/nginx:latest");
        assert_eq!(canonical("nginx:1.25"), "docker.io/library/nginx:1.25");
        assert_eq!(canonical("library/nginx"), "docker.io/library/nginx:latest");
        assert_eq!(canonical("bitnami/redis:7"), "docker.io/bitnami/redis:7");
        assert_eq!(
            canonical("docker.io/nginx"),
            "docker.io/library/nginx:latest"
        );
        assert_eq!(
            canonical("index.docker.io/nginx"),
            "docker.io/library/nginx:latest"
        );
        assert_eq!(
            ImageReference::parse("nginx").unwrap().api_host(),
            DOCKER_HUB_API_HOST
        );
    }

    #[test]
    fn registry_1_docker_io_is_not_docker_hub_to_the_kubelet() {
        // splitDockerDomain aliases only index.docker.io; registry-1.docker.io is an
        // ordinary registry name (no `library/`, no Docker Hub keyring fallback).
        let r = ImageReference::parse("registry-1.docker.io/org/app:v1").unwrap();
        assert_eq!(r.registry(), "registry-1.docker.io");
        assert_eq!(r.to_string(), "registry-1.docker.io/org/app:v1");
        assert_eq!(
            canonical("registry-1.docker.io/nginx"),
            "registry-1.docker.io/nginx:latest"
        );
        assert_ne!(
            ImageReference::parse("registry-1.docker.io/library/nginx").unwrap(),
            ImageReference::parse("nginx").unwrap()
        );
    }

    #[test]
    fn registries_ports_and_literals() {
        assert_eq!(canonical("localhost/app"), "localhost/app:latest");
        assert_eq!(canonical("localhost:5000/app:v1"), "localhost:5000/app:v1");
        assert_eq!(
            canonical("127.0.0.1:5000/a/b/c:v1"),
            "127.0.0.1:5000/a/b/c:v1"
        );
        assert_eq!(canonical("[::1]:5000/app:v2"), "[::1]:5000/app:v2");
        assert_eq!(canonical("[fe80::1]/app"), "[fe80::1]/app:latest");
        assert_eq!(canonical("ghcr.io/org/app"), "ghcr.io/org/app:latest");
        let r = ImageReference::parse("[::1]:5000/team/app:v2").unwrap();
        assert_eq!(r.registry(), "[::1]:5000");
        assert_eq!(r.repository(), "team/app");
        assert_eq!(r.tag(), Some("v2"));
        // Uppercase first component is a registry, per docker's rules.
        assert_eq!(canonical("Registry/app"), "Registry/app:latest");
        // A single component is always a Docker Hub name, even with a dot or a port.
        assert_eq!(
            canonical("localhost:5000"),
            "docker.io/library/localhost:5000"
        );
        assert_eq!(
            canonical("example.com"),
            "docker.io/library/example.com:latest"
        );
        // The grammar takes any digits as a port, as the kubelet does (the pull then
        // fails at the runtime, not as InvalidImageName).
        assert_eq!(canonical("host:99999/app"), "host:99999/app:latest");
    }

    #[test]
    fn a_host_the_grammar_reads_as_a_path_is_still_the_registry_pulled_from() {
        // `a_b.io` is no host to the grammar, so distribution/reference reads
        // `a_b.io/app` as a domain-less path and the kubelet accepts it; the runtime
        // then pulls from the first component. That is the registry here.
        let r = ImageReference::parse("a_b.io/app:v1").unwrap();
        assert_eq!(r.registry(), "a_b.io");
        assert_eq!(r.repository(), "app");
        assert_eq!(r.name(), "a_b.io/app");
    }

    #[test]
    fn tags_and_digests() {
        let r = ImageReference::parse(&format!("quay.io/a/b@{SHA}")).unwrap();
        assert_eq!(r.tag(), None);
        assert_eq!(r.digest(), Some(SHA));
        assert_eq!(r.manifest_reference(), SHA);
        let r = ImageReference::parse(&format!("quay.io/a/b:v1@{SHA}")).unwrap();
        assert_eq!(r.tag(), Some("v1"));
        assert_eq!(r.manifest_reference(), SHA);
        assert_eq!(r.to_string(), format!("quay.io/a/b:v1@{SHA}"));
        let r = ImageReference::parse("host:443/a:v1.2_3-x").unwrap();
        assert_eq!(r.manifest_reference(), "v1.2_3-x");
        let sha384 = format!("sha384:{}", "ab".repeat(48));
        let sha512 = format!("sha512:{}", "cd".repeat(64));
        assert!(ImageReference::parse(&format!("a.io/b@{sha384}")).is_ok());
        assert!(ImageReference::parse(&format!("a.io/b@{sha512}")).is_ok());
    }

    #[test]
    fn what_the_kubelet_refuses_is_bad_image_format() {
        use ReferenceError::*;
        let err = |s: &str| ImageReference::parse(s).unwrap_err();
        // Digest algorithms the kubelet cannot verify.
        assert!(matches!(
            err(&format!("a.io/b@md5:{}", "0".repeat(32))),
            DigestUnsupported(_)
        ));
        assert!(matches!(
            err(&format!("a.io/b@sha1:{}", "0".repeat(40))),
            DigestUnsupported(_)
        ));
        assert!(matches!(
            err(&format!("a.io/b@sha256:{}", "0".repeat(40))),
            DigestInvalidLength(_)
        ));
        assert!(matches!(
            err(&format!("a.io/b@sha256:{}", "A".repeat(64))),
            DigestInvalidFormat(_)
        ));
        // A bare 64-hex name.
        assert!(matches!(err(&"0123abcd".repeat(8)), HexIdentifier(_)));
        assert!(ImageReference::parse(&format!("docker.io/{}", "0123abcd".repeat(8))).is_ok());
        // IPv4-embedded IPv6 and zones.
        assert!(matches!(
            err("[::ffff:1.2.3.4]:5000/app"),
            InvalidFormat { .. }
        ));
        assert!(matches!(
            err("[fe80::1%eth0]:5000/app"),
            InvalidFormat { .. }
        ));
        // The 255-character limit is on the repository path alone.
        assert!(ImageReference::parse(&format!("host.io/{}", "a".repeat(255))).is_ok());
        assert_eq!(err(&format!("host.io/{}", "a".repeat(256))), NameTooLong);
        // ... which, for a Docker Hub name, includes the implicit `library/`.
        assert!(ImageReference::parse(&"a".repeat(247)).is_ok());
        assert_eq!(err(&"a".repeat(248)), NameTooLong);
    }

    #[test]
    fn default_registry() {
        let r =
            ImageReference::parse_with_default_registry("nginx:1", "mirror.local:5000").unwrap();
        assert_eq!(r.to_string(), "mirror.local:5000/nginx:1");
        let r =
            ImageReference::parse_with_default_registry("library/nginx", "mirror.local").unwrap();
        assert_eq!(r.to_string(), "mirror.local/library/nginx:latest");
        let r = ImageReference::parse_with_default_registry("org/app", "mirror.local").unwrap();
        assert_eq!(r.to_string(), "mirror.local/org/app:latest");
        let r = ImageReference::parse_with_default_registry("ghcr.io/x/y", "mirror.local").unwrap();
        assert_eq!(r.to_string(), "ghcr.io/x/y:latest");
        // A registry written in the reference is kept, Docker Hub's too.
        let r =
            ImageReference::parse_with_default_registry("docker.io/nginx", "mirror.local").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/nginx:latest");
        let r = ImageReference::parse_with_default_registry("nginx", "index.docker.io").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/nginx:latest");
        // The default registry must itself be a registry host.
        for bad in ["not a host", "bad host.io", "a.io/path", "", "a_b.io"] {
            assert!(
                ImageReference::parse_with_default_registry("nginx", bad).is_err(),
                "{bad:?}"
            );
        }
        // What the kubelet refuses stays refused, whatever the default registry.
        assert_eq!(
            ImageReference::parse_with_default_registry(&"a".repeat(248), "mirror.local"),
            Err(ReferenceError::NameTooLong)
        );
    }

    #[test]
    fn rejects_with_reasons() {
        use ReferenceError::*;
        let err = |s: &str| ImageReference::parse(s).unwrap_err();
        let why = |s: &str| match err(s) {
            InvalidFormat { why } => why,
            other => panic!("{s:?}: {other:?}"),
        };
        assert_eq!(err(""), Empty);
        assert!(why("nginx latest").contains("whitespace"));
        assert!(matches!(err("NGINX"), NameNotLowercase(_)));
        assert!(matches!(err("docker.io/Org/app"), NameNotLowercase(_)));
        assert!(why("nginx:").contains("tag"));
        assert!(why("nginx:-x").contains("tag"));
        assert!(why(&format!("nginx:{}", "a".repeat(129))).contains("tag"));
        assert!(why("nginx@sha256:abc").contains("digest"));
        assert!(why("nginx@md5").contains("digest"));
        assert!(why("host:/app").contains("registry"));
        assert!(why("[::zz]:5000/app").contains("registry"));
        assert!(why("-bad.host/app").contains("registry"));
        assert!(why("a//b").contains("path component"));
        assert!(why("a/b-").contains("path component"));
        assert!(why("a/b...c").contains("path component"));
        assert!(why("host.io/").contains("no repository path"));
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        fn component() -> impl Strategy<Value = String> {
            "[a-z0-9]{1,6}((\\.|_|__|-{1,3})[a-z0-9]{1,6}){0,2}"
        }
        fn registry() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("docker.io".to_string()),
                Just("localhost".to_string()),
                "[a-z][a-z0-9-]{0,8}[a-z0-9](\\.[a-z]{2,5}){1,2}(:[1-9][0-9]{0,3})?",
                "127\\.0\\.0\\.[1-9]:[1-9][0-9]{2,3}",
                Just("[::1]:5000".to_string()),
            ]
        }
        fn tag() -> impl Strategy<Value = String> {
            "[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}"
        }

        proptest! {
            // Any string: the parser returns, never panics.
            #[test]
            fn never_panics(s in "\\PC{0,80}") {
                let _ = ImageReference::parse(&s);
            }

            // Canonical output is a fixed point: parse(display(parse(x))) == parse(x).
            #[test]
            fn canonical_form_is_stable(
                reg in registry(), path in prop::collection::vec(component(), 1..4), tag in prop::option::of(tag())
            ) {
                let mut s = format!("{reg}/{}", path.join("/"));
                if let Some(tag) = &tag { s = format!("{s}:{tag}"); }
                let parsed = ImageReference::parse(&s).unwrap();
                let reparsed = ImageReference::parse(&parsed.to_string()).unwrap();
                prop_assert_eq!(&parsed, &reparsed);
                prop_assert_eq!(parsed.tag(), Some(tag.as_deref().unwrap_or("latest")));
                prop_assert!(parsed.repository().ends_with(path.last().unwrap().as_str()));
            }

            // The short and the fully qualified Docker Hub spellings are one image.
            #[test]
            fn docker_hub_spellings_agree(name in component(), tag in tag()) {
                let short = ImageReference::parse(&format!("{name}:{tag}")).unwrap();
                for prefix in ["docker.io/library/", "index.docker.io/library/", "library/", "docker.io/"] {
                    prop_assert_eq!(&short, &ImageReference::parse(&format!("{prefix}{name}:{tag}")).unwrap());
                }
            }
        }
    }
}
