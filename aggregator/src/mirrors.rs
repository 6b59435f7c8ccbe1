//! `--image-mirror orig=mirror`: check an image at a mirror instead of its origin.
//! Prefixes match whole path components of the normalized name; the longest wins.

use pullwatch::ImageReference;

/// Why a `--image-mirror` value is not usable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MirrorError {
    #[error(
        "--image-mirror {0:?}: expected ORIGINAL=MIRROR, e.g. docker.io=mirror.example.com:5000"
    )]
    Syntax(String),
    #[error("--image-mirror {spec:?}: {side} {value:?} is not a registry[/path] prefix: {reason}")]
    Prefix {
        spec: String,
        side: &'static str,
        value: String,
        reason: String,
    },
    #[error("--image-mirror: {0:?} is given more than once")]
    Duplicate(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Prefix {
    registry: String,
    path: String,
}

/// The configured mirrors, longest origin prefix first.
#[derive(Clone, Debug, Default)]
pub struct Mirrors {
    rules: Vec<(Prefix, Prefix)>,
}

impl Mirrors {
    /// Parses every `--image-mirror` value.
    pub(crate) fn parse<S: AsRef<str>>(specs: &[S]) -> Result<Self, MirrorError> {
        let mut rules: Vec<(Prefix, Prefix)> = Vec::new();
        for spec in specs {
            let spec = spec.as_ref();
            let (origin, mirror) = spec
                .split_once('=')
                .filter(|(o, m)| !o.is_empty() && !m.is_empty())
                .ok_or_else(|| MirrorError::Syntax(spec.to_string()))?;
            let origin = parse_prefix(spec, "original", origin)?;
            let mirror = parse_prefix(spec, "mirror", mirror)?;
            if rules.iter().any(|(o, _)| *o == origin) {
                return Err(MirrorError::Duplicate(format_prefix(&origin)));
            }
            rules.push((origin, mirror));
        }
        // Longest (most components) first; ties are impossible after the duplicate check,
        // and equal lengths are ordered by name so the result never depends on flag order.
        rules.sort_by(|(a, _), (b, _)| {
            let len = |p: &Prefix| p.path.split('/').filter(|s| !s.is_empty()).count();
            len(b)
                .cmp(&len(a))
                .then_with(|| format_prefix(a).cmp(&format_prefix(b)))
        });
        Ok(Mirrors { rules })
    }

    /// The reference to check: `reference` rewritten by the longest matching rule.
    pub(crate) fn apply(&self, reference: &ImageReference) -> ImageReference {
        for (origin, mirror) in &self.rules {
            if reference.registry() != origin.registry {
                continue;
            }
            let repository = reference.repository();
            let rest = if origin.path.is_empty() {
                Some(repository)
            } else if repository == origin.path {
                Some("")
            } else {
                repository
                    .strip_prefix(origin.path.as_str())
                    .and_then(|r| r.strip_prefix('/'))
            };
            if let Some(rest) = rest {
                let repository = [mirror.path.as_str(), rest]
                    .into_iter()
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join("/");
                return reference.with_name(mirror.registry.clone(), repository);
            }
        }
        reference.clone()
    }
}

fn parse_prefix(spec: &str, side: &'static str, value: &str) -> Result<Prefix, MirrorError> {
    let error = |reason: String| MirrorError::Prefix {
        spec: spec.to_string(),
        side,
        value: value.to_string(),
        reason,
    };
    let trimmed = value.trim_end_matches('/');
    // Reuse the reference grammar: a prefix is a valid image name without tag or digest.
    // A bare registry is given a placeholder path to parse.
    let has_path = trimmed.contains('/');
    let probe = if has_path {
        trimmed.to_string()
    } else {
        format!("{trimmed}/probe")
    };
    if trimmed.contains('@')
        || probe
            .rsplit('/')
            .next()
            .is_some_and(|last| last.contains(':'))
    {
        return Err(error("tags and digests are not allowed in a prefix".into()));
    }
    let host = trimmed.split('/').next().unwrap_or_default();
    if !(host.contains(['.', ':']) || host == "localhost") {
        return Err(error(
            "the first component must be a registry host (with a '.' or ':', or localhost)".into(),
        ));
    }
    let parsed = ImageReference::parse(&probe).map_err(|e| error(e.to_string()))?;
    let path = if has_path {
        // Keep the path as written (no implicit library/ for a Docker Hub prefix).
        trimmed
            .split_once('/')
            .map(|(_, p)| p.to_string())
            .unwrap_or_default()
    } else {
        String::new()
    };
    Ok(Prefix {
        registry: parsed.registry().to_string(),
        path,
    })
}

fn format_prefix(prefix: &Prefix) -> String {
    if prefix.path.is_empty() {
        prefix.registry.clone()
    } else {
        format!("{}/{}", prefix.registry, prefix.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(mirrors: &Mirrors, image: &str) -> String {
        mirrors
            .apply(&ImageReference::parse(image).unwrap())
            .to_string()
    }

    #[test]
    fn longest_prefix_wins_regardless_of_order() {
        let specs = [
            "docker.io=mirror.local:5000",
            "docker.io/library=hub.local/official",
            "quay.io/team=q.local",
        ];
        for order in [specs.to_vec(), specs.iter().rev().copied().collect()] {
            let m = Mirrors::parse(&order).unwrap();
            assert_eq!(apply(&m, "nginx:1"), "hub.local/official/nginx:1");
            assert_eq!(
                apply(&m, "bitnami/redis"),
                "mirror.local:5000/bitnami/redis:latest"
            );
            assert_eq!(apply(&m, "quay.io/team/app"), "q.local/app:latest");
            assert_eq!(
                apply(&m, "quay.io/teammate/app"),
                "quay.io/teammate/app:latest"
            );
            assert_eq!(apply(&m, "ghcr.io/x/y"), "ghcr.io/x/y:latest");
        }
    }

    #[test]
    fn aliases_and_ipv6() {
        let m = Mirrors::parse(&["index.docker.io=[::1]:5000"]).unwrap();
        assert_eq!(apply(&m, "nginx"), "[::1]:5000/library/nginx:latest");
    }

    #[test]
    fn bad_specs() {
        assert!(matches!(
            Mirrors::parse(&["docker.io"]),
            Err(MirrorError::Syntax(_))
        ));
        assert!(matches!(
            Mirrors::parse(&["=x.io"]),
            Err(MirrorError::Syntax(_))
        ));
        assert!(matches!(
            Mirrors::parse(&["docker.io=x.io:tag/"]),
            Err(MirrorError::Prefix { .. })
        ));
        assert!(matches!(
            Mirrors::parse(&["nginx=x.io"]),
            Err(MirrorError::Prefix { .. })
        ));
        assert!(matches!(
            Mirrors::parse(&["a.io=x.io", "a.io/=y.io"]),
            Err(MirrorError::Duplicate(_))
        ));
        assert!(matches!(
            Mirrors::parse(&["a.io=x.io/Upper"]),
            Err(MirrorError::Prefix { .. })
        ));
    }
}
