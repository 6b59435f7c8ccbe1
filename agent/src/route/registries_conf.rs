//! `containers-registries.conf` v2 (and v1), as CRI-O's containers/image reads it
//! (`pkg/sysregistriesv2`): the main file plus the `*.conf` drop-ins of
//! `registries.conf.d/` in name order, a later entry for a prefix replacing the whole
//! earlier one; the longest matching prefix wins (host, namespace, repository,
//! `*.domain` wildcards); `location` rewrites the reference; mirrors come before the
//! primary, filtered by `mirror-by-digest-only` and per-mirror `pull-from-mirror`.
//!
//! A port of `system_registries_v2.go` (containers/container-libs `image/`, 2025); its
//! test tables are ported case for case in the tests below. Only what a pull route
//! needs: short-name aliases are not read, credential helpers other than the auth
//! file are not run (see [`super::crio`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Why a registries.conf (or a drop-in) is refused, in containers/image's words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RegistriesConfError {
    #[error("loading registries configuration {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("loading drop-in registries configuration {path}: {reason}")]
    DropIn { path: PathBuf, reason: String },
    /// containers/image's `InvalidRegistries` (and the few plain errors beside it).
    #[error("{0}")]
    Invalid(String),
}

/// `pull-from-mirror` values.
pub(crate) const MIRROR_ALL: &str = "all";
pub(crate) const MIRROR_BY_DIGEST_ONLY: &str = "digest-only";
pub(crate) const MIRROR_BY_TAG_ONLY: &str = "tag-only";

/// A remote location of a registry (the primary or a mirror).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub(crate) struct Endpoint {
    pub(crate) location: String,
    pub(crate) insecure: bool,
    #[serde(rename = "pull-from-mirror")]
    pub(crate) pull_from_mirror: String,
}

/// One `[[registry]]` entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub(crate) struct Registry {
    pub(crate) prefix: String,
    #[serde(flatten)]
    pub(crate) endpoint: Endpoint,
    #[serde(rename = "mirror")]
    pub(crate) mirrors: Vec<Endpoint>,
    pub(crate) blocked: bool,
    #[serde(rename = "mirror-by-digest-only")]
    pub(crate) mirror_by_digest_only: bool,
}

/// One place to pull from: the endpoint and the reference rewritten for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PullSource {
    pub(crate) endpoint: Endpoint,
    /// The rewritten reference (`host/path[:tag][@digest]`), canonical.
    pub(crate) reference: String,
}

impl Registry {
    /// `PullSourcesFromReference`: mirrors (as allowed for this kind of reference),
    /// then the primary, each with the reference rewritten. `reference` is the
    /// canonical reference string; `digested` whether it carries a digest.
    pub(crate) fn pull_sources(
        &self,
        reference: &str,
        digested: bool,
    ) -> Result<Vec<PullSource>, RegistriesConfError> {
        let mut endpoints: Vec<&Endpoint> = Vec::new();
        if self.mirror_by_digest_only {
            if digested {
                endpoints.extend(&self.mirrors);
            }
        } else {
            for mirror in &self.mirrors {
                match mirror.pull_from_mirror.as_str() {
                    MIRROR_BY_DIGEST_ONLY if !digested => continue,
                    MIRROR_BY_TAG_ONLY if digested => continue,
                    _ => endpoints.push(mirror),
                }
            }
        }
        endpoints.push(&self.endpoint);
        endpoints
            .into_iter()
            .map(|endpoint| {
                Ok(PullSource {
                    endpoint: endpoint.clone(),
                    reference: rewrite_reference(&endpoint.location, reference, &self.prefix)?,
                })
            })
            .collect()
    }
}

/// `Endpoint.rewriteReference`: the reference with `prefix` replaced by `location`;
/// the result must be a canonical reference (`reference.ParseNamed`).
pub(crate) fn rewrite_reference(
    location: &str,
    reference: &str,
    prefix: &str,
) -> Result<String, RegistriesConfError> {
    let Some(prefix_len) = ref_matching_prefix(reference, prefix) else {
        return Err(RegistriesConfError::Invalid(format!(
            "invalid prefix '{prefix}' for reference '{reference}'"
        )));
    };
    if location.is_empty() {
        if !prefix.starts_with("*.") {
            return Err(RegistriesConfError::Invalid(format!(
                "invalid prefix '{prefix}' for empty location, should be in the format: *.example.com"
            )));
        }
        return Ok(reference.to_string());
    }
    let rewritten = format!("{location}{}", &reference[prefix_len..]);
    parse_named(&rewritten)
        .map_err(|reason| RegistriesConfError::Invalid(format!("rewriting reference: {reason}")))?;
    Ok(rewritten)
}

/// distribution's `ParseNamed`: a reference that is already canonical (explicit
/// registry, Docker Hub's `library/` written out).
pub(crate) fn parse_named(text: &str) -> Result<pullwatch::ImageReference, String> {
    let parsed = pullwatch::ImageReference::parse(text).map_err(|e| e.to_string())?;
    let name = parsed.name();
    let canonical = text
        .strip_prefix(name.as_str())
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(':') || rest.starts_with('@'));
    if !canonical {
        return Err(format!(
            "repository name must be canonical: {text:?} is {name:?} written otherwise"
        ));
    }
    Ok(parsed)
}

/// `refMatchingSubdomainPrefix`: for `*.example.com`, the length of the host part of
/// `reference` when its host is a subdomain.
fn ref_matching_subdomain_prefix(reference: &str, prefix: &str) -> Option<usize> {
    let suffix = &prefix[1..];
    let index = reference.find(suffix)?;
    if reference[..index].contains('/') {
        return None;
    }
    let end = index + suffix.len();
    if end == reference.len() {
        return Some(end);
    }
    match reference.as_bytes()[end] {
        b':' | b'/' | b'@' => Some(end),
        _ => None,
    }
}

/// `refMatchingPrefix`: the length of the matched prefix when `reference` (a
/// registry, namespace, repository or full reference) falls under `prefix`.
pub(crate) fn ref_matching_prefix(reference: &str, prefix: &str) -> Option<usize> {
    if prefix.starts_with("*.") {
        return ref_matching_subdomain_prefix(reference, prefix);
    }
    if reference.len() < prefix.len() || !reference.starts_with(prefix) {
        return None;
    }
    if reference.len() == prefix.len() {
        return Some(prefix.len());
    }
    // Also lets "example.com:5000" match "example.com", as upstream (unintended there).
    match reference.as_bytes()[prefix.len()] {
        b':' | b'/' | b'@' => Some(prefix.len()),
        _ => None,
    }
}

/// `parseLocation`: trailing slashes dropped, URI schemes refused.
pub(crate) fn parse_location(input: &str) -> Result<String, RegistriesConfError> {
    let trimmed = input.trim_end_matches('/');
    if trimmed.starts_with("http://") || trimmed.starts_with("https://") {
        return Err(RegistriesConfError::Invalid(format!(
            "invalid location '{input}': URI schemes are not supported"
        )));
    }
    Ok(trimmed.to_string())
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct V1List {
    registries: Option<Vec<String>>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct V1Tables {
    search: V1List,
    insecure: V1List,
    block: V1List,
}

/// One file as TOML gives it: v2 fields and the v1 `[registries.*]` tables.
#[derive(Default, Deserialize)]
#[serde(default)]
struct ConfFile {
    #[serde(rename = "registry")]
    registries: Option<Vec<Registry>>,
    #[serde(rename = "unqualified-search-registries")]
    unqualified_search_registries: Option<Vec<String>>,
    #[serde(rename = "credential-helpers")]
    credential_helpers: Option<Vec<String>>,
    #[serde(rename = "short-name-mode")]
    short_name_mode: Option<String>,
    aliases: Option<toml::Table>,
    #[serde(rename = "registries")]
    v1: Option<V1Tables>,
}

impl V1Tables {
    fn is_set(&self) -> bool {
        self.search.registries.is_some()
            || self.insecure.registries.is_some()
            || self.block.registries.is_some()
    }

    /// `ConvertToV2`: one entry per location, in the order first named.
    fn convert(self) -> Result<(Vec<Registry>, Option<Vec<String>>), RegistriesConfError> {
        let mut order: Vec<String> = Vec::new();
        let mut by_location: BTreeMap<String, Registry> = BTreeMap::new();
        let mut entry = |location: &str| -> Result<String, RegistriesConfError> {
            let location = parse_location(location)?;
            if !by_location.contains_key(&location) {
                order.push(location.clone());
                by_location.insert(
                    location.clone(),
                    Registry {
                        prefix: location.clone(),
                        endpoint: Endpoint {
                            location: location.clone(),
                            ..Default::default()
                        },
                        ..Default::default()
                    },
                );
            }
            Ok(location)
        };
        let mut blocked = Vec::new();
        for location in self.block.registries.iter().flatten() {
            blocked.push(entry(location)?);
        }
        let mut insecure = Vec::new();
        for location in self.insecure.registries.iter().flatten() {
            insecure.push(entry(location)?);
        }
        for location in blocked {
            if let Some(registry) = by_location.get_mut(&location) {
                registry.blocked = true;
            }
        }
        for location in insecure {
            if let Some(registry) = by_location.get_mut(&location) {
                registry.endpoint.insecure = true;
            }
        }
        let registries = order
            .iter()
            .filter_map(|location| by_location.remove(location))
            .collect();
        Ok((registries, self.search.registries))
    }
}

/// The merged configuration: what `getConfig` caches.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct RegistriesConf {
    /// Unique by prefix, sorted by prefix.
    pub(crate) registries: Vec<Registry>,
    pub(crate) unqualified_search_registries: Vec<String>,
    /// Default `["containers-auth.json"]`.
    pub(crate) credential_helpers: Vec<String>,
    /// Whether any file configured short-name aliases (not interpreted here).
    pub(crate) has_aliases: bool,
}

/// The reserved credential helper that means "the auth files".
pub(crate) const AUTHENTICATION_FILE_HELPER: &str = "containers-auth.json";

/// One parsed file before merging (`parsedConfig`).
#[derive(Default)]
struct Parsed {
    registries: Vec<Registry>,
    unqualified_search_registries: Option<Vec<String>>,
    credential_helpers: Option<Vec<String>>,
    has_aliases: bool,
}

impl From<Parsed> for RegistriesConf {
    /// The merged files as checks read them: no credential helper listed means the
    /// auth file alone.
    fn from(parsed: Parsed) -> RegistriesConf {
        RegistriesConf {
            registries: parsed.registries,
            unqualified_search_registries: parsed.unqualified_search_registries.unwrap_or_default(),
            credential_helpers: parsed
                .credential_helpers
                .filter(|helpers| !helpers.is_empty())
                .unwrap_or_else(|| vec![AUTHENTICATION_FILE_HELPER.to_string()]),
            has_aliases: parsed.has_aliases,
        }
    }
}

impl RegistriesConf {
    /// `tryUpdatingCache`: `path` (a missing file is an empty configuration unless
    /// `path_required`), then each `*.conf` of `dir` in name order (a missing
    /// directory is none).
    pub(crate) fn load(
        path: &Path,
        path_required: bool,
        dir: Option<&Path>,
    ) -> Result<RegistriesConf, RegistriesConfError> {
        let mut config = match std::fs::read_to_string(path) {
            Ok(text) => parse_file(&text, false).map_err(|e| RegistriesConfError::Read {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !path_required => {
                Parsed::default()
            }
            Err(e) => {
                return Err(RegistriesConfError::Read {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                });
            }
        };
        for drop_in in drop_in_files(dir)? {
            let text = match std::fs::read_to_string(&drop_in) {
                Ok(text) => text,
                // Removed between listing and reading: upstream ignores it too.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(RegistriesConfError::DropIn {
                        path: drop_in,
                        reason: e.to_string(),
                    });
                }
            };
            let update = parse_file(&text, true).map_err(|e| RegistriesConfError::DropIn {
                path: drop_in.clone(),
                reason: e.to_string(),
            })?;
            config.update_with(update);
        }
        Ok(RegistriesConf::from(config))
    }

    /// Parses one file's text alone (no drop-ins), as the main file (the ported
    /// upstream tests' entry).
    #[cfg(test)]
    pub(crate) fn parse(text: &str) -> Result<RegistriesConf, RegistriesConfError> {
        Ok(RegistriesConf::from(parse_file(text, false)?))
    }

    /// `FindRegistry`: the entry with the longest prefix matching `reference` (a
    /// registry, namespace, repository or reference with an explicit host).
    pub(crate) fn find_registry(&self, reference: &str) -> Option<&Registry> {
        let mut found: Option<&Registry> = None;
        let mut longest = 0;
        for registry in &self.registries {
            if ref_matching_prefix(reference, &registry.prefix).is_some()
                && registry.prefix.len() > longest
            {
                found = Some(registry);
                longest = registry.prefix.len();
            }
        }
        found
    }
}

impl Parsed {
    /// `updateWithConfigurationFrom`: entries merged by prefix (a later one replaces
    /// the earlier one whole), sorted by prefix; lists replace when set.
    fn update_with(&mut self, update: Parsed) {
        let mut by_prefix: BTreeMap<String, Registry> = BTreeMap::new();
        for registry in self.registries.drain(..).chain(update.registries) {
            by_prefix.insert(registry.prefix.clone(), registry);
        }
        self.registries = by_prefix.into_values().collect();
        if update.unqualified_search_registries.is_some() {
            self.unqualified_search_registries = update.unqualified_search_registries;
        }
        if update.credential_helpers.is_some() {
            self.credential_helpers = update.credential_helpers;
        }
        self.has_aliases |= update.has_aliases;
    }
}

/// `dropInConfigs`: the `*.conf` files directly in `dir`, in name order.
fn drop_in_files(dir: Option<&Path>) -> Result<Vec<PathBuf>, RegistriesConfError> {
    let Some(dir) = dir else {
        return Ok(Vec::new());
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(RegistriesConfError::Invalid(format!(
                "reading registries.conf.d: {e}"
            )));
        }
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry
            .map_err(|e| RegistriesConfError::Invalid(format!("reading registries.conf.d: {e}")))?;
        let path = entry.path();
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if !is_dir && path.to_string_lossy().ends_with(".conf") {
            files.push(path);
        }
    }
    // filepath.WalkDir visits in lexical order of the names.
    files.sort();
    Ok(files)
}

/// `loadConfigFile` on text: v1 converted (refused in drop-ins and when mixed with
/// v2), then `postProcessRegistries` and the wildcard format check.
fn parse_file(text: &str, force_v2: bool) -> Result<Parsed, RegistriesConfError> {
    let file: ConfFile =
        toml::from_str(text).map_err(|e| RegistriesConfError::Invalid(e.message().to_string()))?;
    let v2_set = file.registries.is_some()
        || file.unqualified_search_registries.is_some()
        || file.credential_helpers.is_some()
        || file.short_name_mode.is_some()
        || file.aliases.is_some();
    let has_aliases = file.aliases.as_ref().is_some_and(|a| !a.is_empty());
    let (registries, unqualified) = match file.v1 {
        Some(v1) if v1.is_set() => {
            if force_v2 {
                return Err(RegistriesConfError::Invalid(
                    "registry must be in v2 format but is in v1".to_string(),
                ));
            }
            if v2_set {
                return Err(RegistriesConfError::Invalid(
                    "mixing sysregistry v1/v2 is not supported".to_string(),
                ));
            }
            let (registries, search) = v1.convert()?;
            (registries, search)
        }
        _ => (
            file.registries.unwrap_or_default(),
            file.unqualified_search_registries,
        ),
    };
    if let Some(mode) = &file.short_name_mode
        && !matches!(mode.as_str(), "disabled" | "enforcing" | "permissive")
    {
        return Err(RegistriesConfError::Invalid(format!(
            "invalid short-name mode: {mode:?}"
        )));
    }
    let (registries, unqualified) = post_process(registries, unqualified)?;
    for registry in &registries {
        if registry.prefix.starts_with("*.") && registry.prefix.contains(['/', '@', ':']) {
            return Err(RegistriesConfError::Invalid(format!(
                "Wildcarded prefix should be in the format: *.example.com. Current prefix {:?} is incorrectly formatted",
                registry.prefix
            )));
        }
    }
    Ok(Parsed {
        registries,
        unqualified_search_registries: unqualified,
        credential_helpers: file.credential_helpers,
        has_aliases,
    })
}

/// `postProcessRegistries`: locations and prefixes normalized and validated, the
/// mirror settings checked, conflicting `insecure`/`blocked` for one location refused,
/// then one entry per prefix (the first) sorted by prefix.
fn post_process(
    mut registries: Vec<Registry>,
    unqualified: Option<Vec<String>>,
) -> Result<(Vec<Registry>, Option<Vec<String>>), RegistriesConfError> {
    for registry in &mut registries {
        normalize_registry(registry)?;
    }
    refuse_conflicting_security(&registries)?;
    let unqualified = match unqualified {
        None => None,
        Some(list) => {
            let mut out = Vec::with_capacity(list.len());
            for entry in list {
                let registry = parse_location(&entry)?;
                if !is_domain(&registry) {
                    return Err(RegistriesConfError::Invalid(format!(
                        "Invalid unqualified-search-registries entry {registry:?}"
                    )));
                }
                out.push(registry);
            }
            Some(out)
        }
    };
    // The first entry for a prefix wins; later ones are ignored, as upstream.
    let mut by_prefix: BTreeMap<String, Registry> = BTreeMap::new();
    for registry in registries {
        by_prefix.entry(registry.prefix.clone()).or_insert(registry);
    }
    Ok((by_prefix.into_values().collect(), unqualified))
}

/// One entry's location, prefix and mirrors normalized and validated.
fn normalize_registry(registry: &mut Registry) -> Result<(), RegistriesConfError> {
    let invalid = |s: String| RegistriesConfError::Invalid(s);
    registry.endpoint.location = parse_location(&registry.endpoint.location)?;
    if registry.prefix.is_empty() {
        if registry.endpoint.location.is_empty() {
            return Err(invalid(
                "invalid condition: both location and prefix are unset".into(),
            ));
        }
        registry.prefix = registry.endpoint.location.clone();
    } else {
        registry.prefix = parse_location(&registry.prefix)?;
        if !registry.prefix.starts_with("*.") && registry.endpoint.location.is_empty() {
            return Err(invalid("invalid condition: location is unset and prefix is not in the format: *.example.com".into()));
        }
    }
    if !registry.endpoint.pull_from_mirror.is_empty() {
        return Err(invalid(format!(
            "pull-from-mirror must not be set for a non-mirror registry {:?}",
            registry.prefix
        )));
    }
    for mirror in &mut registry.mirrors {
        mirror.location = parse_location(&mirror.location)?;
        if mirror.location.is_empty() {
            return Err(invalid(
                "invalid condition: mirror location is unset".into(),
            ));
        }
        if registry.mirror_by_digest_only && !mirror.pull_from_mirror.is_empty() {
            return Err(invalid(format!(
                "cannot set mirror usage mirror-by-digest-only for the registry ({:?}) and pull-from-mirror for per-mirror ({:?}) at the same time",
                registry.prefix, mirror.location
            )));
        }
        if !matches!(
            mirror.pull_from_mirror.as_str(),
            "" | MIRROR_ALL | MIRROR_BY_DIGEST_ONLY | MIRROR_BY_TAG_ONLY
        ) {
            return Err(invalid(format!(
                "unsupported pull-from-mirror value {:?} for mirror {:?}",
                mirror.pull_from_mirror, mirror.location
            )));
        }
    }
    Ok(())
}

/// One location (or wildcard prefix) named several times must agree on security.
fn refuse_conflicting_security(registries: &[Registry]) -> Result<(), RegistriesConfError> {
    let key = |r: &Registry| {
        if r.endpoint.location.is_empty() {
            r.prefix.clone()
        } else {
            r.endpoint.location.clone()
        }
    };
    for registry in registries {
        for other in registries.iter().filter(|o| key(o) == key(registry)) {
            let conflict = if registry.endpoint.insecure != other.endpoint.insecure {
                "insecure"
            } else if registry.blocked != other.blocked {
                "blocked"
            } else {
                continue;
            };
            return Err(RegistriesConfError::Invalid(format!(
                "registry '{}' is defined multiple times with conflicting '{conflict}' setting",
                registry.endpoint.location
            )));
        }
    }
    Ok(())
}

/// distribution's anchored `DomainRegexp`: host (labels of alphanumerics and inner
/// hyphens, dot-separated) or `[IPv6]`, with an optional numeric port.
fn is_domain(text: &str) -> bool {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        match rest.split_once(']') {
            Some((v6, tail)) => {
                if v6.parse::<std::net::Ipv6Addr>().is_err() {
                    return false;
                }
                (None, tail.strip_prefix(':').map(Some).unwrap_or(Some("")))
            }
            None => return false,
        }
    } else {
        match text.rsplit_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(text), Some("")),
        }
    };
    let port_ok = match port {
        Some("") | None => !text.ends_with(':'),
        Some(p) => p.chars().all(|c| c.is_ascii_digit()),
    };
    let host_ok = host.is_none_or(|h| {
        !h.is_empty()
            && h.split('.').all(|label| {
                !label.is_empty()
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            })
    });
    port_ok && host_ok
}

#[cfg(test)]
mod tests {
    //! containers/image's `system_registries_v2_test.go`, case for case, on its own
    //! testdata (copied to agent/tests/data/sysregistriesv2).
    use super::*;

    const DIGEST: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    fn testdata(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/sysregistriesv2")
            .join(name)
    }

    fn load(path: &str, dir: &str) -> Result<RegistriesConf, RegistriesConfError> {
        RegistriesConf::load(&testdata(path), true, Some(&testdata(dir)))
    }

    fn locations(registries: &[Registry]) -> Vec<&str> {
        registries
            .iter()
            .map(|r| r.endpoint.location.as_str())
            .collect()
    }

    #[test]
    fn test_parse_location() {
        assert_eq!(
            parse_location("https://example.com")
                .unwrap_err()
                .to_string(),
            "invalid location 'https://example.com': URI schemes are not supported"
        );
        assert!(parse_location("john.doe@example.com").is_ok());
        assert_eq!(parse_location("example.com").unwrap(), "example.com");
        assert_eq!(parse_location("example.com/").unwrap(), "example.com");
        assert_eq!(parse_location("example.com//////").unwrap(), "example.com");
        assert_eq!(
            parse_location("example.com:5000/with/path").unwrap(),
            "example.com:5000/with/path"
        );
    }

    #[test]
    fn test_empty_config() {
        let conf = load("empty.conf", "this-does-not-exist").unwrap();
        assert!(conf.registries.is_empty());
        // A missing file that was not asked for explicitly is an empty configuration.
        let conf =
            RegistriesConf::load(&testdata("this-does-not-exist.conf"), false, None).unwrap();
        assert!(conf.registries.is_empty());
    }

    #[test]
    fn test_mirrors() {
        let conf = load("mirrors.conf", "this-does-not-exist").unwrap();
        assert_eq!(conf.registries.len(), 2);
        let reg = conf.find_registry("registry.com/image:tag").unwrap();
        assert_eq!(reg.mirrors.len(), 2);
        assert_eq!(reg.mirrors[0].location, "mirror-1.registry.com");
        assert!(!reg.mirrors[0].insecure);
        assert_eq!(reg.mirrors[1].location, "mirror-2.registry.com");
        assert!(reg.mirrors[1].insecure);
    }

    #[test]
    fn test_ref_matching_subdomain_prefix() {
        let a = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        let cases: Vec<(String, &str, Option<usize>)> = vec![
            ("docker.io".into(), "*.io", Some("docker.io".len())),
            ("docker.io/foo".into(), "*.com", None),
            ("example.com/foo".into(), "*.co", None),
            ("example.com/foo".into(), "*.example.com", None),
            ("example.com/foo".into(), "*.com", Some("example.com".len())),
            (
                "example.com/foo:bar".into(),
                "*.com",
                Some("example.com".len()),
            ),
            (
                "example.com/foo/bar:baz".into(),
                "*.com",
                Some("example.com".len()),
            ),
            ("yet.another.example.com/foo".into(), "**.example.com", None),
            (
                "yet.another.example.com/foo".into(),
                "***.another.example.com",
                None,
            ),
            (
                "yet.another.example.com/foo".into(),
                "**********.another.example.com",
                None,
            ),
            (
                "yet.another.example.com/foo/bar".into(),
                "**********.another.example.com",
                None,
            ),
            (
                "yet.another.example.com/foo/bar".into(),
                "*.another.example.com",
                Some("yet.another.example.com".len()),
            ),
            (
                "another.example.com/namespace.com/foo/bar/bbq:baz".into(),
                "*.example.com",
                Some("another.example.com".len()),
            ),
            (
                "example.net/namespace-ends-in.com/foo/bar/bbq:baz".into(),
                "*.com",
                None,
            ),
            (
                "another.example.com/namespace.com/foo/bar/bbq:baz".into(),
                "*.namespace.com",
                None,
            ),
            (
                "sub.example.com/foo/bar".into(),
                "*.com",
                Some("sub.example.com".len()),
            ),
            (
                "sub.example.com/foo/bar".into(),
                "*.example.com",
                Some("sub.example.com".len()),
            ),
            (
                "another.sub.example.com/foo/bar/bbq:baz".into(),
                "*.example.com",
                Some("another.sub.example.com".len()),
            ),
            (
                "another.sub.example.com/foo/bar/bbq:baz".into(),
                "*.sub.example.com",
                Some("another.sub.example.com".len()),
            ),
            (
                format!("yet.another.example.com/foo/bar@{a}"),
                "*.example.com",
                Some("yet.another.example.com".len()),
            ),
            (
                format!("yet.another.sub.example.com/foo/bar@{a}"),
                "*.sub.example.com",
                Some("yet.another.sub.example.com".len()),
            ),
        ];
        for (reference, prefix, expected) in cases {
            assert_eq!(
                ref_matching_subdomain_prefix(&reference, prefix),
                expected,
                "{reference} vs. {prefix}"
            );
        }
    }

    #[test]
    fn test_ref_matching_prefix() {
        let a = format!("@{DIGEST}");
        let b = "@sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
        let cases: Vec<(String, String, Option<usize>)> = vec![
            // Prefix is a reference.Domain() value
            (
                "docker.io".into(),
                "docker.io".into(),
                Some("docker.io".len()),
            ),
            ("docker.io".into(), "example.com".into(), None),
            (
                "example.com:5000".into(),
                "example.com:5000".into(),
                Some("example.com:5000".len()),
            ),
            ("example.com:50000".into(), "example.com:5000".into(), None),
            // Unintended upstream; kept so the agent matches what CRI-O does.
            (
                "example.com:5000".into(),
                "example.com".into(),
                Some("example.com".len()),
            ),
            (
                "example.com/foo".into(),
                "example.com".into(),
                Some("example.com".len()),
            ),
            (
                "example.com/foo/bar".into(),
                "example.com".into(),
                Some("example.com".len()),
            ),
            (
                "example.com/foo/bar:baz".into(),
                "example.com".into(),
                Some("example.com".len()),
            ),
            (
                format!("example.com/foo/bar{a}"),
                "example.com".into(),
                Some("example.com".len()),
            ),
            // Prefix is a reference.Named.Name() value or a repo namespace
            ("docker.io".into(), "docker.io/library".into(), None),
            (
                "docker.io/library".into(),
                "docker.io/library".into(),
                Some("docker.io/library".len()),
            ),
            (
                "example.com/library".into(),
                "docker.io/library".into(),
                None,
            ),
            (
                "docker.io/libraryy".into(),
                "docker.io/library".into(),
                None,
            ),
            (
                "docker.io/library/busybox".into(),
                "docker.io/library".into(),
                Some("docker.io/library".len()),
            ),
            ("docker.io".into(), "docker.io/library/busybox".into(), None),
            (
                "docker.io/library/busybox".into(),
                "docker.io/library/busybox".into(),
                Some("docker.io/library/busybox".len()),
            ),
            (
                "example.com/library/busybox".into(),
                "docker.io/library/busybox".into(),
                None,
            ),
            (
                "docker.io/library/busybox2".into(),
                "docker.io/library/busybox".into(),
                None,
            ),
            // Prefix is a single image
            ("example.com".into(), "example.com/foo:bar".into(), None),
            ("example.com/foo".into(), "example.com/foo:bar".into(), None),
            (
                "example.com/foo:bar".into(),
                "example.com/foo:bar".into(),
                Some("example.com/foo:bar".len()),
            ),
            (
                "example.com/foo:bar2".into(),
                "example.com/foo:bar".into(),
                None,
            ),
            ("example.com".into(), format!("example.com/foo{a}"), None),
            (
                "example.com/foo".into(),
                format!("example.com/foo{a}"),
                None,
            ),
            (
                format!("example.com/foo{a}"),
                format!("example.com/foo{a}"),
                Some(format!("example.com/foo{a}").len()),
            ),
            (
                format!("example.com/foo{b}"),
                format!("example.com/foo{a}"),
                None,
            ),
            // Prefix is invalid, but we shouldn't crash.
            ("example.com/foo".into(), "*".into(), None),
        ];
        for (reference, prefix, expected) in cases {
            assert_eq!(
                ref_matching_prefix(&reference, &prefix),
                expected,
                "{reference} vs. {prefix}"
            );
        }
    }

    #[test]
    fn test_find_registry() {
        let conf = load("find-registry.conf", "registries.conf.d").unwrap();
        assert_eq!(conf.registries.len(), 19);

        let reg = conf
            .find_registry("simple-prefix.com/foo/bar:latest")
            .unwrap();
        assert_eq!(reg.prefix, "simple-prefix.com");
        assert_eq!(reg.endpoint.location, "registry.com:5000");
        // path match
        assert!(conf.find_registry("simple-prefix.com/").is_some());
        // hostname match
        assert!(conf.find_registry("simple-prefix.com").is_some());
        // subdomain prefix match
        let location = |r: &str| {
            conf.find_registry(r)
                .map(|reg| reg.endpoint.location.clone())
        };
        assert_eq!(
            location("not.so.simple-prefix.com/").as_deref(),
            Some("subdomain-prefix.com")
        );
        assert_eq!(
            location("not.quite.simple-prefix.com/").as_deref(),
            Some("subdomain-prefix-2.com")
        );
        assert_eq!(
            location("not.quite.simple-prefix.com:5000/with/path/and/beyond:tag").as_deref(),
            Some("subdomain-prefix-2.com")
        );
        // *.not.quite.simple-prefix.com, location overridden by subdomain-override-1.conf
        assert_eq!(
            location("really.not.quite.simple-prefix.com:5000/with/path/and/beyond:tag").as_deref(),
            Some("subdomain-prefix-1-overridden-by-dropin-location.com")
        );
        // No override: the drop-in's prefix "*.docker.com" does not match.
        assert_eq!(
            location("foo.docker.io:5000/omg/wtf/bbq:foo").as_deref(),
            Some("subdomain-prefix-2.com")
        );
        // *.bar.example.com, location overridden by subdomain-override-3.conf
        assert_eq!(
            location(&format!("foo.bar.example.com:6000/omg/wtf/bbq@{DIGEST}")).as_deref(),
            Some("subdomain-prefix-3-overridden-by-dropin-location.com")
        );
        // *.docker.io matches, but *.bar.docker.io is longer.
        assert_eq!(
            location("foo.bar.docker.io:5000/omg/wtf/bbq:foo").as_deref(),
            Some("subdomain-prefix-4.com")
        );
        // *.example.com matches, but foo.bar.example.com:5000 is longer.
        assert_eq!(
            location("foo.bar.example.com:5000/omg/wtf/bbq:foo").as_deref(),
            Some("subdomain-prefix-5.com")
        );
        // invalid match
        assert!(conf.find_registry("simple-prefix.comx").is_none());

        let reg = conf
            .find_registry("complex-prefix.com:4000/with/path/and/beyond:tag")
            .unwrap();
        assert_eq!(reg.prefix, "complex-prefix.com:4000/with/path");
        assert_eq!(reg.endpoint.location, "another-registry.com:5000");
        let reg = conf.find_registry("no-prefix.com/foo:tag").unwrap();
        assert_eq!(
            (reg.prefix.as_str(), reg.endpoint.location.as_str()),
            ("no-prefix.com", "no-prefix.com")
        );
        let reg = conf.find_registry("empty-prefix.com/foo:tag").unwrap();
        assert_eq!(
            (reg.prefix.as_str(), reg.endpoint.location.as_str()),
            ("empty-prefix.com", "empty-prefix.com")
        );
        assert!(RegistriesConf::load(&testdata("this-does-not-exist.conf"), true, None).is_err());
    }

    #[test]
    fn test_invalid_v2_configs() {
        for (path, substring) in [
            (
                "insecure-conflicts.conf",
                "registry 'registry.com' is defined multiple times with conflicting 'insecure' setting",
            ),
            (
                "blocked-conflicts.conf",
                "registry 'registry.com' is defined multiple times with conflicting 'blocked' setting",
            ),
            (
                "missing-mirror-location.conf",
                "invalid condition: mirror location is unset",
            ),
            ("invalid-prefix.conf", "invalid location"),
            ("this-does-not-exist.conf", "No such file or directory"),
        ] {
            let err = RegistriesConf::load(&testdata(path), true, None)
                .unwrap_err()
                .to_string();
            assert!(err.contains(substring), "{path}: {err}");
        }
    }

    #[test]
    fn test_unmarshal_config() {
        let conf = load("unmarshal.conf", "this-does-not-exist").unwrap();
        assert_eq!(conf.registries.len(), 4);
    }

    #[test]
    fn test_v1_backwards_compatibility() {
        let conf = load("v1-compatibility.conf", "this-does-not-exist").unwrap();
        assert_eq!(conf.registries.len(), 4);
        assert_eq!(
            conf.unqualified_search_registries,
            ["registry-a.com", "registry-c.com", "registry-d.com"]
        );
        let reg = conf
            .find_registry("registry-b.com/bar/foo/barfoo:latest")
            .unwrap();
        assert!(reg.endpoint.insecure);
        assert!(reg.blocked);
    }

    #[test]
    fn test_mixing_v1_and_v2() {
        for path in ["mixing-v1-v2.conf", "mixing-v1-v2-empty.conf"] {
            let err = load(path, "this-does-not-exist").unwrap_err().to_string();
            assert!(
                err.contains("mixing sysregistry v1/v2 is not supported"),
                "{path}: {err}"
            );
        }
    }

    #[test]
    fn test_invalidate_cache_order() {
        // TestInvalidateCache's assertion on order: entries sorted by prefix.
        let conf = RegistriesConf::load(&testdata("invalidate-cache.conf"), true, None).unwrap();
        assert_eq!(
            locations(&conf.registries),
            [
                "blocked.registry.com",
                "insecure.registry.com",
                "registry.com",
                "untrusted.registry.com"
            ]
        );
    }

    #[test]
    fn test_rewrite_reference_success() {
        let a = format!("@{DIGEST}");
        let cases: Vec<(String, &str, &str, String)> = vec![
            // Standard use cases
            (
                "example.com/image".into(),
                "example.com",
                "example.com",
                "example.com/image".into(),
            ),
            (
                "example.com/image:latest".into(),
                "example.com",
                "example.com",
                "example.com/image:latest".into(),
            ),
            (
                "example.com:5000/image".into(),
                "example.com:5000",
                "example.com:5000",
                "example.com:5000/image".into(),
            ),
            (
                "example.com:5000/image:latest".into(),
                "example.com:5000",
                "example.com:5000",
                "example.com:5000/image:latest".into(),
            ),
            // Separator test ('/', '@', ':')
            (
                format!("example.com/foo{a}"),
                "example.com",
                "example.com",
                format!("example.com/foo{a}"),
            ),
            (
                "example.com/foo/image:latest".into(),
                "example.com/foo",
                "example.com",
                "example.com/image:latest".into(),
            ),
            (
                "example.com/foo/image:latest".into(),
                "example.com/foo",
                "example.com/path",
                "example.com/path/image:latest".into(),
            ),
            // Docker examples
            (
                "docker.io/library/image:latest".into(),
                "docker.io",
                "docker.io",
                "docker.io/library/image:latest".into(),
            ),
            (
                "docker.io/library/image".into(),
                "docker.io/library",
                "example.com",
                "example.com/image".into(),
            ),
            (
                "docker.io/library/image".into(),
                "docker.io",
                "example.com",
                "example.com/library/image".into(),
            ),
            (
                "docker.io/library/prefix/image".into(),
                "docker.io/library/prefix",
                "example.com",
                "example.com/image".into(),
            ),
            // Wildcard prefix examples
            (
                "docker.io/namespace/image".into(),
                "*.io",
                "example.com",
                "example.com/namespace/image".into(),
            ),
            (
                "docker.io/library/prefix/image".into(),
                "*.io",
                "example.com",
                "example.com/library/prefix/image".into(),
            ),
            (
                "sub.example.io/library/prefix/image".into(),
                "*.example.io",
                "example.com",
                "example.com/library/prefix/image".into(),
            ),
            (
                "another.sub.example.io:5000/library/prefix/image:latest".into(),
                "*.sub.example.io",
                "example.com",
                "example.com:5000/library/prefix/image:latest".into(),
            ),
            (
                "foo.bar.io/ns1/ns2/ns3/ns4".into(),
                "*.bar.io",
                "omg.bbq.com/roflmao",
                "omg.bbq.com/roflmao/ns1/ns2/ns3/ns4".into(),
            ),
            // Empty location with wildcard prefix: no rewrite.
            (
                "abc.internal.registry.com/foo:bar".into(),
                "*.internal.registry.com",
                "",
                "abc.internal.registry.com/foo:bar".into(),
            ),
            (
                "blah.foo.bar.com/omg:bbq".into(),
                "*.com",
                "",
                "blah.foo.bar.com/omg:bbq".into(),
            ),
            (
                "alien.vs.predator.foobar.io:5000/omg".into(),
                "*.foobar.io",
                "",
                "alien.vs.predator.foobar.io:5000/omg".into(),
            ),
            (
                format!("alien.vs.predator.foobar.io:5000/foo{a}"),
                "*.foobar.io",
                "",
                format!("alien.vs.predator.foobar.io:5000/foo{a}"),
            ),
            (
                "alien.vs.predator.foobar.io:5000/omg:bbq".into(),
                "*.foobar.io",
                "",
                "alien.vs.predator.foobar.io:5000/omg:bbq".into(),
            ),
        ];
        for (input, prefix, location, expected) in cases {
            parse_named(&input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(
                rewrite_reference(location, &input, prefix).unwrap(),
                expected,
                "{input} {prefix} {location}"
            );
        }
    }

    #[test]
    fn test_rewrite_reference_failed_during_parse_named() {
        let a = format!("@{DIGEST}");
        let cases: Vec<(String, &str, &str)> = vec![
            // Invalid reference format
            (
                "example.com/foo/image:latest".into(),
                "example.com/foo",
                "example.com/path/",
            ),
            (
                format!("example.com/foo{a}"),
                "example.com/foo",
                "example.com",
            ),
            ("example.com:5000/image:latest".into(), "example.com", ""),
            (
                "example.com:5000/image:latest".into(),
                "example.com",
                "example.com:5000",
            ),
            // Malformed prefix
            (
                "example.com/foo/image:latest".into(),
                "example.com//foo",
                "example.com/path",
            ),
            ("example.com/image:latest".into(), "image", "anotherimage"),
            (
                "example.com/foo/image:latest".into(),
                "example.com/foo/",
                "example.com",
            ),
            (
                "example.com/foo/image".into(),
                "example.com/f",
                "example.com/foo",
            ),
            (
                "example.com/foo:latest".into(),
                "example.com/f",
                "example.com/foo",
            ),
            (
                format!("example.com/foo{a}"),
                "example.com/f",
                "example.com/foo",
            ),
            (
                "docker.io/library/image".into(),
                "example.com",
                "example.com",
            ),
            ("docker.io/library/image".into(), "*.com", "example.com"),
            (
                "foo.docker.io/library/image".into(),
                "*.example.com",
                "example.com/image",
            ),
            (
                "foo.docker.io/library/image".into(),
                "*.docker.com",
                "example.com/image",
            ),
        ];
        for (input, prefix, location) in cases {
            parse_named(&input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert!(
                rewrite_reference(location, &input, prefix).is_err(),
                "{input} {prefix} {location}"
            );
        }
    }

    #[test]
    fn test_pull_sources_from_reference() {
        let conf = load("pull-sources-from-reference.conf", "this-does-not-exist").unwrap();
        assert_eq!(conf.registries.len(), 9);
        struct Case {
            matched_prefix: &'static str,
            digest_prefixes: &'static [&'static str],
            digest_insecure: &'static [bool],
            tag_prefixes: &'static [&'static str],
            tag_insecure: &'static [bool],
        }
        let cases = [
            // Registry A allowing any kind of pull from mirrors
            Case {
                matched_prefix: "registry-a.com/foo",
                digest_prefixes: &[
                    "mirror-1.registry-a.com",
                    "mirror-2.registry-a.com",
                    "registry-a.com/bar",
                ],
                digest_insecure: &[false, true, false],
                tag_prefixes: &[
                    "mirror-1.registry-a.com",
                    "mirror-2.registry-a.com",
                    "registry-a.com/bar",
                ],
                tag_insecure: &[false, true, false],
            },
            // Registry B allowing digests pull only from mirrors
            Case {
                matched_prefix: "registry-b.com/foo",
                digest_prefixes: &[
                    "mirror-1.registry-b.com",
                    "mirror-2.registry-b.com",
                    "registry-b.com/bar",
                ],
                digest_insecure: &[false, false, false],
                tag_prefixes: &["registry-b.com/bar"],
                tag_insecure: &[false],
            },
            // Registry A has mirrors allow any kind of pull
            Case {
                matched_prefix: "registry-a.com/baz",
                digest_prefixes: &[
                    "mirror-1.registry-a.com",
                    "mirror-2.registry-a.com",
                    "registry-a.com/bar",
                ],
                digest_insecure: &[false, true, false],
                tag_prefixes: &[
                    "mirror-1.registry-a.com",
                    "mirror-2.registry-a.com",
                    "registry-a.com/bar",
                ],
                tag_insecure: &[false, true, false],
            },
            // Registry B has mirrors allow digests pull only
            Case {
                matched_prefix: "registry-b.com/baz",
                digest_prefixes: &[
                    "mirror-1.registry-b.com",
                    "mirror-2.registry-b.com",
                    "registry-b.com/bar",
                ],
                digest_insecure: &[false, false, false],
                tag_prefixes: &["registry-b.com/bar"],
                tag_insecure: &[false],
            },
            // Registry C has a mirror allows digest pull only and a mirror allows any kind of pull
            Case {
                matched_prefix: "registry-c.com/baz",
                digest_prefixes: &[
                    "mirror-1.registry-c.com",
                    "mirror-2.registry-c.com",
                    "registry-c.com/bar",
                ],
                digest_insecure: &[false, false, false],
                tag_prefixes: &["mirror-1.registry-c.com", "registry-c.com/bar"],
                tag_insecure: &[false, false],
            },
            // Registry D set digest-only for registry level, allows only digest pulls
            Case {
                matched_prefix: "registry-d.com/baz",
                digest_prefixes: &[
                    "mirror-1.registry-d.com",
                    "mirror-2.registry-d.com",
                    "registry-d.com/bar",
                ],
                digest_insecure: &[false, false, false],
                tag_prefixes: &["registry-d.com/bar"],
                tag_insecure: &[false],
            },
            // Registry E has mirrors only allows tag pull
            Case {
                matched_prefix: "registry-e.com/baz",
                digest_prefixes: &["registry-e.com/bar"],
                digest_insecure: &[false],
                tag_prefixes: &[
                    "mirror-1.registry-e.com",
                    "mirror-2.registry-e.com",
                    "registry-e.com/bar",
                ],
                tag_insecure: &[false, false, false],
            },
            // Registry F has one tag only mirror does not allow digest pull
            Case {
                matched_prefix: "registry-f.com/baz",
                digest_prefixes: &["mirror-1.registry-f.com", "registry-f.com/bar"],
                digest_insecure: &[false, false],
                tag_prefixes: &[
                    "mirror-1.registry-f.com",
                    "mirror-2.registry-f.com",
                    "registry-f.com/bar",
                ],
                tag_insecure: &[false, false, false],
            },
            // Registry G has one digest-only pull and one tag only pull
            Case {
                matched_prefix: "registry-g.com/baz",
                digest_prefixes: &[
                    "mirror-1.registry-g.com",
                    "mirror-3.registry-g.com",
                    "mirror-4.registry-g.com",
                    "registry-g.com/bar",
                ],
                digest_insecure: &[false, false, false, false],
                tag_prefixes: &[
                    "mirror-2.registry-g.com",
                    "mirror-3.registry-g.com",
                    "mirror-4.registry-g.com",
                    "registry-g.com/bar",
                ],
                tag_insecure: &[false, false, false, false],
            },
        ];
        for case in cases {
            for (suffix, digested, prefixes, insecure) in [
                (
                    format!("@{DIGEST}"),
                    true,
                    case.digest_prefixes,
                    case.digest_insecure,
                ),
                (
                    ":aaa".to_string(),
                    false,
                    case.tag_prefixes,
                    case.tag_insecure,
                ),
            ] {
                let reference = format!("{}/image{suffix}", case.matched_prefix);
                let name = parse_named(&reference).unwrap().name();
                let registry = conf.find_registry(&name).unwrap();
                let sources = registry.pull_sources(&reference, digested).unwrap();
                // Upstream compares the expected prefix of the list; the lists are whole here.
                assert_eq!(sources.len(), prefixes.len(), "{reference}");
                for (i, prefix) in prefixes.iter().enumerate() {
                    assert_eq!(sources[i].endpoint.location, *prefix, "{reference}");
                    assert_eq!(sources[i].reference, format!("{prefix}/image{suffix}"));
                    assert_eq!(sources[i].endpoint.insecure, insecure[i], "{reference}");
                }
            }
        }
    }

    #[test]
    fn test_invalid_mirror_config() {
        for (path, expected) in [
            (
                "invalid-config-level-mirror.conf",
                format!(
                    "pull-from-mirror must not be set for a non-mirror registry {:?}",
                    "registry-a.com/foo"
                ),
            ),
            (
                "invalid-conflict-mirror.conf",
                format!(
                    "cannot set mirror usage mirror-by-digest-only for the registry ({:?}) and pull-from-mirror for per-mirror ({:?}) at the same time",
                    "registry-a.com/foo", "mirror-1.registry-a.com"
                ),
            ),
            (
                "invalid-value-mirror.conf",
                format!(
                    "unsupported pull-from-mirror value {:?} for mirror {:?}",
                    "notvalid", "mirror-1.registry-a.com"
                ),
            ),
        ] {
            let err = load(path, "this-does-not-exist").unwrap_err().to_string();
            assert!(err.contains(&expected), "{path}: {err}");
        }
    }

    #[test]
    fn test_try_updating_cache() {
        let conf = load("try-update-cache-valid.conf", "this-does-not-exist").unwrap();
        assert_eq!(conf.registries.len(), 1);
        assert!(load("try-update-cache-invalid.conf", "this-does-not-exist").is_err());
    }

    #[test]
    fn test_registries_conf_directory() {
        let conf = load("base-for-registries.d.conf", "registries.conf.d").unwrap();
        assert_eq!(
            conf.unqualified_search_registries,
            ["example-overwrite.com"]
        );
        assert_eq!(
            locations(&conf.registries),
            [
                "subdomain-prefix-3-overridden-by-dropin-location.com",
                "subdomain-prefix-2-overridden-by-dropin-location.com",
                "subdomain-prefix-1-overridden-by-dropin-location.com",
                "1.com",
                "2.com",
                "base.com"
            ]
        );
        // base.com is insecure in the main file; config-2.conf's entry for the same
        // prefix replaces the whole entry: blocked, and no longer insecure.
        let base = conf.find_registry("base.com/test:latest").unwrap();
        assert!(base.blocked);
        assert!(!base.endpoint.insecure);
        // config-3.ignore is not a *.conf drop-in.
        assert!(
            conf.find_registry("ignore-me-because-i-have-a-wrong-suffix.com/x")
                .is_none()
        );
        assert_eq!(conf.credential_helpers, ["dropin-1", "dropin-2"]);
    }

    #[test]
    fn test_credential_helpers() {
        for (path, dir, helpers) in [
            (
                "cred-helper.conf",
                "this-does-not-exist",
                &["helper-1", "helper-2"][..],
            ),
            (
                "empty.conf",
                "this-does-not-exist",
                &["containers-auth.json"],
            ),
            (
                "cred-helper.conf",
                "registries.conf.d-empty-helpers",
                &["containers-auth.json"],
            ),
            (
                "cred-helper.conf",
                "registries.conf.d",
                &["dropin-1", "dropin-2"],
            ),
        ] {
            let conf = load(path, dir).unwrap();
            assert_eq!(conf.credential_helpers, helpers, "{path} {dir}");
        }
    }

    #[test]
    fn drop_ins_must_be_v2_and_a_broken_drop_in_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("registries.conf");
        std::fs::write(&main, "[[registry]]\nlocation = \"a.com\"\n").unwrap();
        let drop_ins = dir.path().join("registries.conf.d");
        std::fs::create_dir(&drop_ins).unwrap();
        std::fs::write(
            drop_ins.join("10-v1.conf"),
            "[registries.block]\nregistries = [\"b.com\"]\n",
        )
        .unwrap();
        let err = RegistriesConf::load(&main, true, Some(&drop_ins))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("registry must be in v2 format but is in v1"),
            "{err}"
        );
        std::fs::write(drop_ins.join("10-v1.conf"), "[[registry]\n").unwrap();
        assert!(RegistriesConf::load(&main, true, Some(&drop_ins)).is_err());
        // Sub-directories are not read, nor files without the .conf suffix.
        std::fs::remove_file(drop_ins.join("10-v1.conf")).unwrap();
        std::fs::create_dir(drop_ins.join("sub.conf")).unwrap();
        std::fs::write(drop_ins.join("sub.conf/x.conf"), "[[registry]\nbroken").unwrap();
        std::fs::write(drop_ins.join("notes.txt"), "broken [[").unwrap();
        let conf = RegistriesConf::load(&main, true, Some(&drop_ins)).unwrap();
        assert_eq!(locations(&conf.registries), ["a.com"]);
    }

    #[test]
    fn first_entry_for_a_prefix_wins_within_one_file() {
        let conf = RegistriesConf::parse(
            "[[registry]]\nprefix = \"a.com\"\nlocation = \"first.com\"\n[[registry]]\nprefix = \"a.com\"\nlocation = \"second.com\"\n",
        )
        .unwrap();
        assert_eq!(locations(&conf.registries), ["first.com"]);
    }

    #[test]
    fn wildcard_prefix_format() {
        let err =
            RegistriesConf::parse("[[registry]]\nprefix = \"*.a.com/ns\"\nlocation = \"b.com\"\n")
                .unwrap_err()
                .to_string();
        assert!(
            err.contains("Wildcarded prefix should be in the format"),
            "{err}"
        );
    }

    #[test]
    fn unqualified_search_entries_are_domains() {
        assert!(RegistriesConf::parse("unqualified-search-registries = [\"a.com/ns\"]").is_err());
        for ok in ["a.com", "localhost:5000", "[::1]:5000", "registry"] {
            assert!(
                RegistriesConf::parse(&format!("unqualified-search-registries = [{ok:?}]")).is_ok(),
                "{ok}"
            );
        }
    }
}
