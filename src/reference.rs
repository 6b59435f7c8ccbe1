//! Image references: the grammar of `distribution/reference`, normalized the way the
//! kubelet and containerd normalize them, so that two spellings of one image are one
//! check.
//!
//! Written here rather than taken from `oci-spec` because its parser rejects IPv6
//! registry literals (`[::1]:5000/app`) and has no notion of a configurable default
//! registry, both of which pullwatch needs.
//!
//! ```text
//! reference        := name [ ":" tag ] [ "@" digest ]
//! name             := [domain '/'] path-component ['/' path-component]*
//! domain           := host [':' port-number]
//! host             := domain-name | IPv4address | '[' IPv6address ']'
//! path-component   := alpha-numeric [separator alpha-numeric]*
//! separator        := /[_.]|__|[-]+/
//! tag              := /[\w][\w.-]{0,127}/
//! digest           := algorithm ":" hex   (algorithm components /[A-Za-z][A-Za-z0-9]*/ joined by [+._-])
//! ```

use std::fmt;
use std::net::Ipv6Addr;

/// Docker Hub's canonical registry name.
pub const DOCKER_HUB: &str = "docker.io";
/// Legacy aliases that mean Docker Hub.
const DOCKER_HUB_ALIASES: [&str; 2] = ["index.docker.io", "registry-1.docker.io"];
/// The host that actually serves Docker Hub's distribution API.
pub const DOCKER_HUB_API_HOST: &str = "registry-1.docker.io";
const DEFAULT_TAG: &str = "latest";
const NAME_TOTAL_LENGTH_MAX: usize = 255;
const TAG_LENGTH_MAX: usize = 128;

/// Why a string is not an image reference. Every variant names the offending part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("image reference is empty")]
    Empty,
    #[error("image reference contains whitespace or control characters")]
    Whitespace,
    #[error("invalid registry host {0:?}")]
    InvalidDomain(String),
    #[error("invalid registry port {0:?}")]
    InvalidPort(String),
    #[error("repository name {0:?} must be lowercase")]
    NameNotLowercase(String),
    #[error("invalid repository name {name:?}: {why}")]
    InvalidName { name: String, why: &'static str },
    #[error("repository name is longer than {NAME_TOTAL_LENGTH_MAX} characters")]
    NameTooLong,
    #[error("invalid tag {0:?}: must match [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}")]
    InvalidTag(String),
    #[error("invalid digest {digest:?}: {why}")]
    InvalidDigest { digest: String, why: &'static str },
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

impl ImageReference {
    /// Parses with Docker Hub as the registry for names that carry none.
    pub fn parse(input: &str) -> Result<Self, ReferenceError> {
        Self::parse_with_default_registry(input, DOCKER_HUB)
    }

    /// Parses with `default_registry` as the registry for names that carry none
    /// (`nginx` -> `<default_registry>/nginx:latest`). The implicit `library/`
    /// namespace applies only when the registry is Docker Hub.
    pub fn parse_with_default_registry(
        input: &str,
        default_registry: &str,
    ) -> Result<Self, ReferenceError> {
        if input.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if input.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ReferenceError::Whitespace);
        }

        // The digest is everything after the first '@'.
        let (name_and_tag, digest) = match input.split_once('@') {
            Some((left, digest)) => (left, Some(validate_digest(digest)?)),
            None => (input, None),
        };

        // A tag is after the last ':' that comes after the last '/', so a registry port
        // (`host:5000/app`) or an IPv6 literal is never mistaken for one.
        let last_slash = name_and_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_and_tag[last_slash..].rfind(':') {
            Some(i) => {
                let split = last_slash + i;
                (
                    &name_and_tag[..split],
                    Some(validate_tag(&name_and_tag[split + 1..])?),
                )
            }
            None => (name_and_tag, None),
        };

        let (registry, remainder) = split_domain(name);
        let registry = match registry {
            Some(domain) => normalize_domain(validate_domain(domain)?),
            None => normalize_domain(default_registry.to_string()),
        };
        if remainder.is_empty() {
            return Err(ReferenceError::InvalidName {
                name: name.to_string(),
                why: "no repository path",
            });
        }
        if remainder.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(ReferenceError::NameNotLowercase(remainder.to_string()));
        }
        validate_path(remainder)?;

        let repository = if registry == DOCKER_HUB && !remainder.contains('/') {
            format!("library/{remainder}")
        } else {
            remainder.to_string()
        };
        if registry.len() + 1 + repository.len() > NAME_TOTAL_LENGTH_MAX {
            return Err(ReferenceError::NameTooLong);
        }

        let tag = match (tag, &digest) {
            (None, None) => Some(DEFAULT_TAG.to_string()),
            (tag, _) => tag,
        };
        Ok(ImageReference {
            registry,
            repository,
            tag,
            digest,
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

/// Splits off the registry the way docker's `splitDockerDomain` does: the first path
/// component is a registry when it contains '.' or ':', is `localhost`, or has
/// uppercase letters (repository paths never do).
fn split_domain(name: &str) -> (Option<&str>, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.chars().any(|c| c.is_ascii_uppercase()) =>
        {
            (Some(first), rest)
        }
        _ => (None, name),
    }
}

fn normalize_domain(domain: String) -> String {
    if DOCKER_HUB_ALIASES.contains(&domain.as_str()) {
        DOCKER_HUB.to_string()
    } else {
        domain
    }
}

fn validate_domain(domain: &str) -> Result<String, ReferenceError> {
    let invalid = || ReferenceError::InvalidDomain(domain.to_string());
    let (host, port) = if let Some(rest) = domain.strip_prefix('[') {
        let (literal, after) = rest.split_once(']').ok_or_else(invalid)?;
        literal.parse::<Ipv6Addr>().map_err(|_| invalid())?;
        match after {
            "" => (domain, None),
            _ => {
                let port = after.strip_prefix(':').ok_or_else(invalid)?;
                (&domain[..domain.len() - after.len()], Some(port))
            }
        }
    } else {
        match domain.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (domain, None),
        }
    };
    if let Some(port) = port
        && (port.is_empty()
            || !port.bytes().all(|b| b.is_ascii_digit())
            || port.parse::<u16>().is_err())
    {
        return Err(ReferenceError::InvalidPort(port.to_string()));
    }
    if !host.starts_with('[') {
        let components_ok = host.split('.').all(|component| {
            !component.is_empty()
                && component
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !component.starts_with('-')
                && !component.ends_with('-')
        });
        if !components_ok {
            return Err(invalid());
        }
    }
    Ok(domain.to_string())
}

fn validate_path(path: &str) -> Result<(), ReferenceError> {
    let invalid = |why| ReferenceError::InvalidName {
        name: path.to_string(),
        why,
    };
    for component in path.split('/') {
        if component.is_empty() {
            return Err(invalid("empty path component"));
        }
        let bytes = component.as_bytes();
        if !is_alnum(bytes[0]) || !is_alnum(bytes[bytes.len() - 1]) {
            return Err(invalid(
                "path components must start and end with a lowercase letter or digit",
            ));
        }
        // Separators between alphanumeric runs: '.', '_', '__', or any run of '-'.
        let mut i = 0;
        while i < bytes.len() {
            if is_alnum(bytes[i]) {
                i += 1;
                continue;
            }
            let start = i;
            while i < bytes.len() && !is_alnum(bytes[i]) {
                i += 1;
            }
            let separator = &component[start..i];
            let ok = matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
            if !ok {
                return Err(invalid(
                    "path components may only contain [a-z0-9] separated by '.', '_', '__' or '-'",
                ));
            }
        }
    }
    Ok(())
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

fn validate_tag(tag: &str) -> Result<String, ReferenceError> {
    let bytes = tag.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let ok = !bytes.is_empty()
        && bytes.len() <= TAG_LENGTH_MAX
        && word(bytes[0])
        && bytes.iter().all(|&b| word(b) || b == b'.' || b == b'-');
    if ok {
        Ok(tag.to_string())
    } else {
        Err(ReferenceError::InvalidTag(tag.to_string()))
    }
}

fn validate_digest(digest: &str) -> Result<String, ReferenceError> {
    let invalid = |why| ReferenceError::InvalidDigest {
        digest: digest.to_string(),
        why,
    };
    let (algorithm, hex) = digest
        .split_once(':')
        .ok_or_else(|| invalid("expected <algorithm>:<hex>"))?;
    let algorithm_ok = !algorithm.is_empty()
        && algorithm.split(['+', '.', '_', '-']).all(|c| {
            c.starts_with(|ch: char| ch.is_ascii_alphabetic())
                && c.chars().all(|ch| ch.is_ascii_alphanumeric())
        });
    if !algorithm_ok {
        return Err(invalid("malformed algorithm"));
    }
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid("digest value must be hexadecimal"));
    }
    match algorithm {
        "sha256" if hex.len() != 64 => return Err(invalid("sha256 digests have 64 hex digits")),
        "sha512" if hex.len() != 128 => return Err(invalid("sha512 digests have 128 hex digits")),
        "sha256" | "sha512" if hex.bytes().any(|b| b.is_ascii_uppercase()) => {
            return Err(invalid("sha256/sha512 digests are lowercase hex"));
        }
        _ if hex.len() < 32 => return Err(invalid("digest value shorter than 32 hex digits")),
        _ => {}
    }
    Ok(digest.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn canonical(s: &str) -> String {
        ImageReference::parse(s).unwrap().to_string()
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
            canonical("registry-1.docker.io/org/app:v1"),
            "docker.io/org/app:v1"
        );
        assert_eq!(
            ImageReference::parse("nginx").unwrap().api_host(),
            DOCKER_HUB_API_HOST
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
    }

    #[test]
    fn default_registry() {
        let r =
            ImageReference::parse_with_default_registry("nginx:1", "mirror.local:5000").unwrap();
        assert_eq!(r.to_string(), "mirror.local:5000/nginx:1");
        let r = ImageReference::parse_with_default_registry("ghcr.io/x/y", "mirror.local").unwrap();
        assert_eq!(r.to_string(), "ghcr.io/x/y:latest");
        let r = ImageReference::parse_with_default_registry("nginx", "index.docker.io").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/nginx:latest");
    }

    #[test]
    fn rejects_with_reasons() {
        use ReferenceError::*;
        let err = |s: &str| ImageReference::parse(s).unwrap_err();
        assert_eq!(err(""), Empty);
        assert_eq!(err("nginx latest"), Whitespace);
        assert!(matches!(err("NGINX"), NameNotLowercase(_)));
        assert!(matches!(err("docker.io/Org/app"), NameNotLowercase(_)));
        assert!(matches!(err("nginx:"), InvalidTag(_)));
        assert!(matches!(err("nginx:-x"), InvalidTag(_)));
        assert!(matches!(
            err(&format!("nginx:{}", "a".repeat(129))),
            InvalidTag(_)
        ));
        assert!(matches!(err("nginx@sha256:abc"), InvalidDigest { .. }));
        assert!(matches!(err("nginx@md5"), InvalidDigest { .. }));
        assert!(matches!(err("host:99999/app"), InvalidPort(_)));
        assert!(matches!(err("host:/app"), InvalidPort(_)));
        assert!(matches!(err("[::zz]:5000/app"), InvalidDomain(_)));
        assert!(matches!(err("-bad.host/app"), InvalidDomain(_)));
        assert!(matches!(err("a//b"), InvalidName { .. }));
        assert!(matches!(err("a/b-"), InvalidName { .. }));
        assert!(matches!(err("a/b...c"), InvalidName { .. }));
        assert!(matches!(err("host.io/"), InvalidName { .. }));
        assert!(matches!(
            err(&format!("host.io/{}", "a".repeat(250))),
            NameTooLong
        ));
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
