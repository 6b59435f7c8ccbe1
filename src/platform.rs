//! Platforms (`os/architecture[/variant]`) as containerd's `platforms` package treats
//! them: the same normalization (`aarch64` is `arm64`, `armhf` is `arm/v7`...), and the
//! same matcher a node's runtime pulls with (`platforms.Only` of the host): an amd64
//! node also runs `386`, an arm64 node also runs `arm/v8` down to `arm/v5`.
//!
//! A tag that resolves to an index (OCI image index, Docker manifest list) without an
//! entry a node can run fails on that node with "no match for platform in manifest":
//! [`missing_platforms`] says which of the platforms a workload can land on that is.

use std::fmt;
use std::str::FromStr;

use crate::go_json::{self, Decoded, GoDecode, GoJsonError, GoSlice, Reader};

/// Index and manifest-list media types: the manifests that carry per-platform entries.
pub(crate) const INDEX_MEDIA_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// Whether `media_type` (a `Content-Type`, parameters allowed) is an index.
pub(crate) fn is_index(media_type: &str) -> bool {
    let essence = media_type.split(';').next().unwrap_or_default().trim();
    INDEX_MEDIA_TYPES
        .iter()
        .any(|t| t.eq_ignore_ascii_case(essence))
}

/// One platform, normalized.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    /// Empty when there is none (or it is the architecture's default).
    pub variant: String,
}

/// Why a platform specifier is not one.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid platform {0:?}: expected OS/ARCH or OS/ARCH/VARIANT, e.g. linux/amd64 or linux/arm64/v8"
)]
pub struct PlatformError(pub String);

impl Platform {
    /// `os`, `architecture`, `variant` as containerd's `platforms.Normalize` leaves them.
    pub fn new(os: &str, architecture: &str, variant: &str) -> Platform {
        let os = os.to_ascii_lowercase();
        let os = if os == "macos" {
            "darwin".to_string()
        } else {
            os
        };
        let (architecture, variant) = normalize_arch(architecture, variant);
        Platform {
            os,
            architecture,
            variant,
        }
    }

    /// What a node of this platform runs, in containerd's order of preference
    /// (`platformVector`): itself, then what its architecture also executes.
    pub(crate) fn runnable(&self) -> Vec<Platform> {
        let mut vector = vec![self.clone()];
        let version = |variant: &str| variant.trim_start_matches('v').parse::<u32>().ok();
        match self.architecture.as_str() {
            "amd64" => {
                if let Some(v) = version(&self.variant).filter(|v| *v > 1) {
                    for lower in (1..v).rev() {
                        vector.push(Platform::new(&self.os, "amd64", &format!("v{lower}")));
                    }
                }
                vector.push(Platform::new(&self.os, "386", ""));
            }
            "arm" => {
                if let Some(v) = version(&self.variant).filter(|v| *v > 5) {
                    for lower in (5..v).rev() {
                        vector.push(Platform::new(&self.os, "arm", &format!("v{lower}")));
                    }
                }
            }
            "arm64" => {
                let variant = if self.variant.is_empty() {
                    "v8"
                } else {
                    self.variant.as_str()
                };
                vector.extend(Platform::new(&self.os, "arm", variant).runnable());
            }
            _ => {}
        }
        vector
    }

    /// Whether a node of this platform pulls `candidate` (containerd's `Only` matcher).
    pub(crate) fn runs(&self, candidate: &Platform) -> bool {
        self.runnable().iter().any(|p| p == candidate)
    }

    /// The platform this process runs on (an agent's node), in Go's names.
    pub fn host() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "x86" => "386",
            "aarch64" => "arm64",
            "powerpc64" => "ppc64le",
            "s390x" => "s390x",
            "riscv64" => "riscv64",
            "arm" => "arm",
            other => other,
        };
        Platform::new(std::env::consts::OS, architecture, "")
    }
}

fn normalize_arch(architecture: &str, variant: &str) -> (String, String) {
    let (arch, variant) = (
        architecture.to_ascii_lowercase(),
        variant.to_ascii_lowercase(),
    );
    let (arch, variant): (&str, String) = match arch.as_str() {
        "i386" => ("386", String::new()),
        "x86_64" | "x86-64" | "amd64" => (
            "amd64",
            if variant == "v1" {
                String::new()
            } else {
                variant
            },
        ),
        "aarch64" | "arm64" => (
            "arm64",
            if variant == "8" || variant == "v8" {
                String::new()
            } else {
                variant
            },
        ),
        "armhf" => ("arm", "v7".into()),
        "armel" => ("arm", "v6".into()),
        "arm" => (
            "arm",
            match variant.as_str() {
                "" | "7" => "v7".into(),
                "5" | "6" | "8" => format!("v{variant}"),
                _ => variant,
            },
        ),
        other => return (other.to_string(), variant),
    };
    (arch.to_string(), variant)
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if !self.variant.is_empty() {
            write!(f, "/{}", self.variant)?;
        }
        Ok(())
    }
}

impl FromStr for Platform {
    type Err = PlatformError;

    /// `OS/ARCH` or `OS/ARCH/VARIANT`, normalized.
    fn from_str(spec: &str) -> Result<Platform, PlatformError> {
        let parts: Vec<&str> = spec.trim().split('/').collect();
        let valid = |s: &&str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
        };
        match parts.as_slice() {
            [os, arch] if valid(os) && valid(arch) => Ok(Platform::new(os, arch, "")),
            [os, arch, variant] if valid(os) && valid(arch) && valid(variant) => {
                Ok(Platform::new(os, arch, variant))
            }
            _ => Err(PlatformError(spec.to_string())),
        }
    }
}

/// An index as containerd decodes it (image-spec's `Index`), for its entries' platforms.
#[derive(Default)]
struct IndexDocument {
    manifests: GoSlice<IndexEntry>,
}

impl GoDecode for IndexDocument {
    fn decode(&mut self, r: &mut Reader<'_>) -> Decoded {
        r.go_struct(self, &[("manifests", |d, r| d.manifests.decode(r))])
    }
}

#[derive(Default)]
struct IndexEntry {
    platform: Option<DescriptorPlatform>,
}

impl GoDecode for IndexEntry {
    fn decode(&mut self, r: &mut Reader<'_>) -> Decoded {
        r.go_struct(self, &[("platform", |e, r| e.platform.decode(r))])
    }
}

/// The `platform` of an index entry (an OCI descriptor), as written; read as Go's
/// `encoding/json` reads it (a missing field is empty).
#[derive(Clone, Debug, Default)]
pub(crate) struct DescriptorPlatform {
    pub(crate) os: String,
    pub(crate) architecture: String,
    pub(crate) variant: String,
}

impl GoDecode for DescriptorPlatform {
    /// image-spec's `Platform`, as containerd's `encoding/json` decodes it.
    fn decode(&mut self, r: &mut Reader<'_>) -> Decoded {
        r.go_struct(
            self,
            &[
                ("architecture", |p, r| p.architecture.decode(r)),
                ("os", |p, r| p.os.decode(r)),
                ("os.version", |_, r| r.check::<String>()),
                ("os.features", |_, r| r.check::<GoSlice<String>>()),
                ("variant", |p, r| p.variant.decode(r)),
            ],
        )
    }
}

impl DescriptorPlatform {
    /// The platform, normalized as containerd normalizes it.
    pub(crate) fn normalized(&self) -> Platform {
        Platform::new(&self.os, &self.architecture, &self.variant)
    }
}

/// Why an index body says nothing: where it is not JSON, or where the first value of
/// the wrong type for containerd's `Index` is.
#[derive(Debug, thiserror::Error)]
#[error("the manifest index {what} at line {line}, column {column}")]
pub struct IndexError {
    pub what: &'static str,
    pub line: usize,
    pub column: usize,
}

/// The platforms an index (or manifest list) offers, in its order, normalized. Entries
/// without a platform, or with `unknown` ones (build attestations), offer none.
pub fn index_platforms(body: &[u8]) -> Result<Vec<Platform>, IndexError> {
    // The position only: the body is the registry's, never quoted.
    let document: IndexDocument = go_json::unmarshal(body).map_err(|e| match e {
        GoJsonError::Syntax { line, column } => IndexError {
            what: "is not valid JSON",
            line,
            column,
        },
        GoJsonError::Form { line, column } => IndexError {
            what: "has a value of the wrong type",
            line,
            column,
        },
    })?;
    let mut platforms: Vec<Platform> = Vec::new();
    for entry in document.manifests.iter() {
        let Some(p) = &entry.platform else { continue };
        if p.os.is_empty() || p.architecture.is_empty() || p.os == "unknown" {
            continue;
        }
        let platform = p.normalized();
        if !platforms.contains(&platform) {
            platforms.push(platform);
        }
    }
    Ok(platforms)
}

/// Of the platforms a workload can land on (`wanted`), those no entry of an index
/// offering `offered` runs on.
pub(crate) fn missing_platforms<'a>(
    wanted: &'a [Platform],
    offered: &[Platform],
) -> Vec<&'a Platform> {
    wanted
        .iter()
        .filter(|node| !offered.iter().any(|entry| node.runs(entry)))
        .collect()
}

/// The reason a check gives when `missing` is not empty: what containerd answers, with
/// what the index has.
pub(crate) fn missing_reason(missing: &[&Platform], offered: &[Platform]) -> String {
    let list = |items: &mut dyn Iterator<Item = String>| items.collect::<Vec<_>>().join(", ");
    format!(
        "no match for platform {} in the manifest index (it has {})",
        list(&mut missing.iter().map(|p| p.to_string())),
        if offered.is_empty() {
            "no platform entries".to_string()
        } else {
            list(&mut offered.iter().map(|p| p.to_string()))
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(spec: &str) -> Platform {
        spec.parse().unwrap()
    }

    #[test]
    fn normalization_as_containerd() {
        for (input, normalized) in [
            ("linux/x86_64", "linux/amd64"),
            ("linux/amd64/v1", "linux/amd64"),
            ("linux/amd64/v3", "linux/amd64/v3"),
            ("Linux/AARCH64", "linux/arm64"),
            ("linux/arm64/v8", "linux/arm64"),
            ("linux/arm64/8", "linux/arm64"),
            ("linux/armhf", "linux/arm/v7"),
            ("linux/armel", "linux/arm/v6"),
            ("linux/arm", "linux/arm/v7"),
            ("linux/arm/6", "linux/arm/v6"),
            ("linux/i386", "linux/386"),
            ("windows/amd64", "windows/amd64"),
            ("linux/s390x", "linux/s390x"),
        ] {
            assert_eq!(p(input).to_string(), normalized, "{input}");
        }
        for bad in ["linux", "", "linux/", "/amd64", "a/b/c/d", "linux/amd 64"] {
            assert!(bad.parse::<Platform>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn what_a_node_runs_as_containerd_only() {
        assert!(p("linux/amd64").runs(&p("linux/amd64")));
        assert!(p("linux/amd64").runs(&p("linux/386")));
        assert!(!p("linux/amd64").runs(&p("linux/arm64")));
        assert!(p("linux/amd64/v3").runs(&p("linux/amd64/v2")));
        assert!(p("linux/amd64/v3").runs(&p("linux/amd64")));
        assert!(p("linux/arm64").runs(&p("linux/arm64/v8")));
        assert!(p("linux/arm64").runs(&p("linux/arm/v7")));
        assert!(p("linux/arm64").runs(&p("linux/arm/v5")));
        assert!(!p("linux/arm/v6").runs(&p("linux/arm/v7")));
        assert!(!p("linux/arm64").runs(&p("windows/arm64")));
        assert!(!p("linux/s390x").runs(&p("linux/amd64")));
    }

    #[test]
    fn index_bodies() {
        let body = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:a","size":1,"platform":{"architecture":"amd64","os":"linux"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:b","size":1,"platform":{"architecture":"arm64","os":"linux","variant":"v8"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:c","size":1,"platform":{"architecture":"unknown","os":"unknown"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:d","size":1}
        ]}"#;
        let offered = index_platforms(body).unwrap();
        assert_eq!(offered, [p("linux/amd64"), p("linux/arm64")]);
        let wanted = [p("linux/s390x"), p("linux/arm64"), p("linux/amd64")];
        let missing = missing_platforms(&wanted, &offered);
        assert_eq!(missing, [&p("linux/s390x")]);
        assert_eq!(
            missing_reason(&missing, &offered),
            "no match for platform linux/s390x in the manifest index (it has linux/amd64, linux/arm64)"
        );
        let error = index_platforms(b"{\"manifests\": [password").unwrap_err();
        assert!(!error.to_string().contains("password"), "{error}");
        // Read as containerd's encoding/json reads it: keys in any case, a platform
        // given twice merged, null entries empty.
        let body = br#"{"Manifests":[null,{"PLATFORM":{"os":"linux"},"platform":{"Architecture":"arm64"}}]}"#;
        assert_eq!(index_platforms(body).unwrap(), [p("linux/arm64")]);
        let error = index_platforms(br#"{"manifests":[{"platform":{"os":5}}]}"#).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the manifest index has a value of the wrong type at line 1, column 33"
        );
        assert!(is_index(
            "application/vnd.docker.distribution.manifest.list.v2+json"
        ));
        assert!(is_index(
            "application/vnd.oci.image.index.v1+json; charset=utf-8"
        ));
        assert!(!is_index("application/vnd.oci.image.manifest.v1+json"));
    }
}
