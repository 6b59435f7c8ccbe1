//! The pull path, walked as containerd's CRI `PullImage` walks it, without downloading
//! a layer: the tag's manifest, the child an index offers for each platform (chosen
//! as containerd's `platforms` matcher and `images.LimitManifests` choose it: nested
//! indexes walked, entries without `platform` matched through the child's config), that
//! child by digest, its config (read and checked to be an image config) and the first
//! byte of every layer, each along the route a node would fetch it from (redirects
//! followed to the storage).
//!
//! Why a ranged `GET` and not a `HEAD` for blobs: Distribution answers a blob `HEAD`
//! itself without redirecting, so a `HEAD` says "present" while the storage behind the
//! redirect is down; and registries redirect to pre-signed storage URLs signed for
//! `GET` only, where a `HEAD` is refused although the download works. A 1-byte `GET`
//! meets what the node's download meets, and its `Content-Range` says the size served.
//!
//! Cost: manifests by digest and configs are immutable, so what was read of them is
//! kept by digest ([`DocumentCache`], bounded) and never fetched twice while kept.
//! Whether the blobs (child manifests, config, layers) still exist is verified again
//! when the tag's digest changes, else at most once per
//! [`WalkSettings::blob_check_interval`]; the manifest `HEAD` runs every check.
//!
//! Document types are small structs read by [`crate::go_json`] rather than `oci-spec`'s
//! serde ones: containerd reads these documents with Go's lenient `encoding/json` (a
//! missing `rootfs` is zero `diff_ids`, a missing `platform` is none, keys match in any
//! case), and a strict parser would refuse documents containerd pulls, or blur "not an
//! image" into "not JSON".

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use tracing::debug;

use super::{Answer, Final, MAX_MANIFEST_BYTES, Object, RegistryClient, Target, Want};
use crate::go_json::{self, Decoded, GoDecode, GoJsonError, GoSlice, MapOf, RawMessage, Reader};
use crate::locks::lock;
use crate::platform::{DescriptorPlatform, Platform};
use crate::status::PlatformVerdict;
use crate::{CheckOutcome, CheckStatus, RegistryCredential};

mod schema1;
pub use schema1::Schema1Pulls;
use schema1::{Plan, Schema1Manifest};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_SCHEMA1: [&str; 2] = [schema1::SIGNED, schema1::UNSIGNED];
const HELM_CONFIG: &str = "application/vnd.cncf.helm.config.v1+json";
/// Configs are read up to this size; a larger one is checked for existence and size
/// only (containerd reads it whole, so its content is not judged here).
pub(crate) const MAX_CONFIG_BYTES: usize = 8 << 20;
/// Indexes nested deeper than this are refused (containerd has no limit; this is a
/// bound on what a registry can make a check do).
const MAX_NESTING: usize = 8;
/// Layers verified at once within one check.
const LAYER_CONCURRENCY: usize = 3;
/// Verified pull paths remembered (one entry per tag digest, platform and credential).
const MAX_VERIFIED: usize = 65_536;

/// How deep a check goes (`--check-depth`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum CheckDepth {
    /// The tag's manifest only (one `HEAD`): what checks did before the walk.
    Manifest,
    /// Down to the platform's child manifest (no config, no layers).
    Platform,
    /// Down to the config and every layer blob (their first byte): a node could pull it.
    #[default]
    Blobs,
}

impl CheckDepth {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckDepth::Manifest => "manifest",
            CheckDepth::Platform => "platform",
            CheckDepth::Blobs => "blobs",
        }
    }

    /// What a check this deep does not look at, as an `available` outcome's reason
    /// says it (None: nothing a node fetches is skipped).
    pub fn skipped(self) -> Option<&'static str> {
        match self {
            CheckDepth::Manifest => Some(
                "checked to --check-depth manifest: the tag's manifest only; the platform's child manifest, the config and the layers were not checked",
            ),
            CheckDepth::Platform => Some(
                "checked to --check-depth platform: the config and the layers were not checked",
            ),
            CheckDepth::Blobs => None,
        }
    }

    /// Says in an `available` `outcome` what this depth skipped.
    pub fn note_skipped(self, outcome: &mut CheckOutcome) {
        if let Some(skipped) = self.skipped()
            && outcome.is_available()
            && outcome.reason.is_empty()
        {
            outcome.reason = skipped.to_string();
        }
    }
}

/// How the walk goes and what it keeps.
#[derive(Clone, Copy, Debug)]
pub struct WalkSettings {
    pub depth: CheckDepth,
    /// Blobs of an unchanged tag digest are verified again after this long.
    pub blob_check_interval: Duration,
    /// Documents (manifests, indexes, config summaries) kept by digest.
    pub cache_entries: usize,
    /// What the nodes' runtime does with a Docker schema 1 manifest (an agent's
    /// resolver sets its node's, [`RegistryClient::set_schema1_pulls`]).
    pub schema1: Schema1Pulls,
}

/// The default `--blob-check-interval`: 12 h. At the default 5 min check interval a
/// re-verification of an image with 10 layers (child, config, layers: 12 requests)
/// spread over 144 checks adds 0.08 requests per check, keeping the steady state under
/// 1.1 requests per check; registries' garbage collection runs nightly or weekly, so
/// a deleted blob is seen within half a day of it (and at once when the tag moves).
pub const DEFAULT_BLOB_CHECK_INTERVAL: Duration = Duration::from_secs(12 * 3600);

impl Default for WalkSettings {
    fn default() -> Self {
        WalkSettings {
            depth: CheckDepth::Blobs,
            blob_check_interval: DEFAULT_BLOB_CHECK_INTERVAL,
            cache_entries: 4096,
            schema1: Schema1Pulls::default(),
        }
    }
}

/// The tag's manifest as its request answered: where the walk starts.
#[derive(Clone, Debug)]
pub struct Top {
    pub digest: String,
    pub media_type: Option<String>,
    /// The size the answer declared (`Content-Length`), when it did.
    pub size: Option<u64>,
    /// The body, when the answer had one.
    pub body: Option<Bytes>,
}

impl Top {
    /// Whether the tag's manifest is an index: by the media type its answer named,
    /// else by its body.
    fn is_index(&self) -> bool {
        self.media_type
            .as_deref()
            .map(crate::platform::is_index)
            .unwrap_or_else(|| {
                self.body
                    .as_ref()
                    .and_then(|b| sniff_media_type(b))
                    .is_some_and(|m| crate::platform::is_index(&m))
            })
    }
}

/// What the walk found.
#[derive(Clone, Debug)]
pub struct PullPath {
    /// A single manifest: its verdict; an index: available where some walked platform
    /// pulls it, else the first platform's failure (see `verdicts` for each).
    pub status: CheckStatus,
    pub reason: String,
    /// An index: the platforms its entries offer.
    pub(crate) offered: Option<Vec<Platform>>,
    /// An index: the verdict for each platform walked.
    pub(crate) verdicts: Option<Vec<PlatformVerdict>>,
}

impl PullPath {
    /// A single manifest's walk.
    fn of_manifest(result: Result<(), Failed>) -> Self {
        let (status, reason) = status_of(result);
        PullPath {
            status,
            reason,
            offered: None,
            verdicts: None,
        }
    }

    /// An index's walk: each platform's verdict, and the check's own status (what a
    /// workload whose platforms are unknown gets; each other workload gets its own
    /// platforms' verdicts): available where some walked platform pulls it, else the
    /// first platform's failure.
    fn of_index(verdicts: Vec<PlatformVerdict>, offered: Option<Vec<Platform>>) -> Self {
        let failing = verdicts
            .iter()
            .find(|v| v.status != CheckStatus::Available)
            .map(|v| (v.status, v.reason.clone()));
        let any_pulls = verdicts.iter().any(|v| v.status == CheckStatus::Available);
        let (status, reason) = match failing {
            Some(failure) if !any_pulls => failure,
            _ => (CheckStatus::Available, String::new()),
        };
        PullPath {
            status,
            reason,
            offered,
            verdicts: Some(verdicts),
        }
    }

    /// Folds the walk into the outcome of the tag's manifest request.
    pub fn apply(self, outcome: &mut CheckOutcome) {
        outcome.status = self.status;
        outcome.reason = self.reason;
        if let Some(offered) = self.offered {
            outcome.platforms = Some(offered.into());
        }
        if let Some(verdicts) = self.verdicts {
            outcome.walked = Some(verdicts.into());
        }
    }
}

/// A walk's status and reason.
fn status_of(result: Result<(), Failed>) -> Failed {
    result
        .err()
        .unwrap_or((CheckStatus::Available, String::new()))
}

/// `platform`'s verdict from its walk.
fn verdict(platform: &Platform, result: Result<(), Failed>) -> PlatformVerdict {
    let (status, reason) = status_of(result);
    PlatformVerdict {
        platform: platform.clone(),
        status,
        reason,
    }
}

// ---- documents -------------------------------------------------------------------

/// image-spec's `Descriptor` as Go decodes it: the fields the walk reads kept, the
/// others type-checked (a wrong type fails containerd's `json.Unmarshal`).
#[derive(Clone, Debug, Default)]
struct Descriptor {
    media_type: String,
    digest: String,
    size: i64,
    urls: GoSlice<String>,
    platform: Option<DescriptorPlatform>,
}

impl GoDecode for Descriptor {
    fn decode(&mut self, r: &mut Reader<'_>) -> Decoded {
        r.go_struct(
            self,
            &[
                ("mediaType", |d, r| d.media_type.decode(r)),
                ("digest", |d, r| d.digest.decode(r)),
                ("size", |d, r| d.size.decode(r)),
                ("urls", |d, r| d.urls.decode(r)),
                ("annotations", |_, r| r.check::<MapOf<String>>()),
                ("data", |_, r| r.check::<go_json::Bytes>()),
                ("platform", |d, r| d.platform.decode(r)),
                ("artifactType", |_, r| r.check::<String>()),
            ],
        )
    }
}

/// A manifest or index: image-spec's `Manifest` and `Index` in one (a document has
/// the other's fields only when containerd's `validateMediaType` refuses it), and
/// that function's `unknownDocument`, whose `json.RawMessage` fields count when given
/// at all (`null` and `[]` included).
#[derive(Default)]
struct RawDocument {
    media_type: String,
    artifact_type: String,
    /// A struct, not a pointer, in Go: None until given.
    config: Option<Descriptor>,
    layers: GoSlice<Descriptor>,
    manifests: GoSlice<Descriptor>,
    fs_layers: RawMessage,
    /// `unknownDocument`'s `config`, `layers` and `manifests`, as written.
    raw_config: RawMessage,
    raw_layers: RawMessage,
    raw_manifests: RawMessage,
}

impl GoDecode for RawDocument {
    fn decode(&mut self, r: &mut Reader<'_>) -> Decoded {
        r.go_struct(
            self,
            &[
                ("schemaVersion", |_, r| r.check::<i64>()),
                ("mediaType", |d, r| d.media_type.decode(r)),
                ("artifactType", |d, r| d.artifact_type.decode(r)),
                ("config", |d, r| {
                    r.keeping_raw(&mut d.raw_config, |r| {
                        go_json::decode_struct_value(&mut d.config, r)
                    })
                }),
                ("layers", |d, r| {
                    r.keeping_raw(&mut d.raw_layers, |r| d.layers.decode(r))
                }),
                ("manifests", |d, r| {
                    r.keeping_raw(&mut d.raw_manifests, |r| d.manifests.decode(r))
                }),
                ("subject", |_, r| r.check::<Option<Descriptor>>()),
                ("annotations", |_, r| r.check::<MapOf<String>>()),
                ("fsLayers", |d, r| d.fs_layers.decode(r)),
            ],
        )
    }
}

/// image-spec's `Image` (a config) as Go decodes it: the platform and `rootfs` kept,
/// the other fields type-checked (containerd's unpack decodes the whole config).
#[derive(Default)]
struct RawConfig {
    os: String,
    architecture: String,
    rootfs: RawRootFs,
}

impl GoDecode for RawConfig {
    fn decode(&mut self, r: &mut Reader<'_>) -> Decoded {
        r.go_struct(
            self,
            &[
                ("created", |_, r| r.check::<Option<go_json::Time>>()),
                ("author", |_, r| r.check::<String>()),
                // The embedded `Platform`'s fields.
                ("architecture", |c, r| c.architecture.decode(r)),
                ("os", |c, r| c.os.decode(r)),
                ("os.version", |_, r| r.check::<String>()),
                ("os.features", |_, r| r.check::<GoSlice<String>>()),
                ("variant", |_, r| r.check::<String>()),
                ("config", |_, r| r.check::<ImageConfig>()),
                ("rootfs", |c, r| c.rootfs.decode(r)),
                ("history", |_, r| r.check::<GoSlice<History>>()),
            ],
        )
    }
}

#[derive(Default)]
struct RawRootFs {
    diff_ids: GoSlice<String>,
}

impl GoDecode for RawRootFs {
    fn decode(&mut self, r: &mut Reader<'_>) -> Decoded {
        r.go_struct(
            self,
            &[
                ("type", |_, r| r.check::<String>()),
                ("diff_ids", |f, r| f.diff_ids.decode(r)),
            ],
        )
    }
}

/// image-spec's `ImageConfig`, type-checked only.
#[derive(Default)]
struct ImageConfig;

impl GoDecode for ImageConfig {
    fn decode(&mut self, r: &mut Reader<'_>) -> Decoded {
        type Set = MapOf<go_json::EmptyStruct>;
        r.go_struct(
            self,
            &[
                ("User", |_, r| r.check::<String>()),
                ("ExposedPorts", |_, r| r.check::<Set>()),
                ("Env", |_, r| r.check::<GoSlice<String>>()),
                ("Entrypoint", |_, r| r.check::<GoSlice<String>>()),
                ("Cmd", |_, r| r.check::<GoSlice<String>>()),
                ("Volumes", |_, r| r.check::<Set>()),
                ("WorkingDir", |_, r| r.check::<String>()),
                ("Labels", |_, r| r.check::<MapOf<String>>()),
                ("StopSignal", |_, r| r.check::<String>()),
                ("ArgsEscaped", |_, r| r.check::<bool>()),
            ],
        )
    }
}

/// image-spec's `History`, type-checked only.
#[derive(Default)]
struct History;

impl GoDecode for History {
    fn decode(&mut self, r: &mut Reader<'_>) -> Decoded {
        r.go_struct(
            self,
            &[
                ("created", |_, r| r.check::<Option<go_json::Time>>()),
                ("created_by", |_, r| r.check::<String>()),
                ("author", |_, r| r.check::<String>()),
                ("comment", |_, r| r.check::<String>()),
                ("empty_layer", |_, r| r.check::<bool>()),
            ],
        )
    }
}

/// What a walk needs of a document, kept by digest.
#[derive(Debug)]
enum Document {
    Index(Vec<Descriptor>),
    Image {
        config: Descriptor,
        layers: Vec<Descriptor>,
        artifact_type: String,
    },
    /// A Docker schema 1 manifest, as each runtime reads it.
    Schema1(Schema1Manifest),
    /// An image config: its platform and how many layers it describes; None when it
    /// was too large to read (then not judged).
    Config(Option<ConfigSummary>),
    /// Content containerd refuses: why.
    Refused(String),
}

#[derive(Debug)]
struct ConfigSummary {
    platform: Platform,
    diff_ids: usize,
}

fn is_manifest_type(media_type: &str) -> bool {
    media_type == OCI_MANIFEST || media_type == DOCKER_MANIFEST
}

/// containerd's `images.IsLayerType`.
pub(crate) fn is_layer_type(media_type: &str) -> bool {
    if media_type.starts_with("application/vnd.oci.image.layer.") {
        return true;
    }
    let base = media_type.split('+').next().unwrap_or(media_type);
    matches!(
        base,
        "application/vnd.docker.image.rootfs.diff.tar"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.zstd"
    )
}

/// Reads a manifest or index as containerd does (`images.Children` with
/// `validateMediaType`), for the media type it was asked by.
fn parse_manifest(body: &[u8], media_type: &str) -> Document {
    if DOCKER_SCHEMA1.contains(&media_type) {
        return Document::Schema1(Schema1Manifest::read(body, media_type));
    }
    let raw: RawDocument = match go_json::unmarshal(body) {
        Ok(raw) => raw,
        Err(GoJsonError::Syntax { line, column }) => {
            return Document::Refused(format!("is not valid JSON (line {line}, column {column})"));
        }
        Err(GoJsonError::Form { .. }) => {
            return Document::Refused(
                "is not a manifest: a field of the wrong type (containerd refuses it)".into(),
            );
        }
    };
    if !raw.fs_layers.is_empty() {
        return Document::Refused("is a schema 1 manifest under another media type".into());
    }
    // containerd's `validateMediaType`: the other kind's fields given at all, or the
    // other kind's `mediaType`, refuse the document.
    if crate::platform::is_index(media_type) {
        if !raw.raw_config.is_empty()
            || !raw.raw_layers.is_empty()
            || is_manifest_type(&raw.media_type)
        {
            return Document::Refused("media-type: expected index but found manifest".into());
        }
        return Document::Index(raw.manifests.into_vec());
    }
    if is_manifest_type(media_type) {
        if !raw.raw_manifests.is_empty()
            || crate::platform::INDEX_MEDIA_TYPES.contains(&raw.media_type.as_str())
        {
            return Document::Refused(format!(
                "media-type: expected manifest but found index ({})",
                shown(media_type)
            ));
        }
        let Some(config) = raw.config.filter(|c| !c.digest.is_empty()) else {
            return Document::Refused("has no config".into());
        };
        // containerd fetches the config and every layer into its content store, which
        // refuses an invalid digest; the walk never puts one in a URL.
        if let Err(why) = valid_digest(&config.digest) {
            return Document::Refused(format!("names a config with {why}"));
        }
        if let Some((i, why)) = raw
            .layers
            .iter()
            .enumerate()
            .find_map(|(i, l)| valid_digest(&l.digest).err().map(|why| (i, why)))
        {
            return Document::Refused(format!(
                "names layer {} of {} with {why}",
                i + 1,
                raw.layers.len()
            ));
        }
        return Document::Image {
            config,
            layers: raw.layers.into_vec(),
            artifact_type: raw.artifact_type,
        };
    }
    Document::Refused(format!(
        "is not an image: media type {} (containerd pulls OCI and Docker images and indexes)",
        shown(media_type)
    ))
}

/// Whether `digest` is one containerd's content store takes (go-digest's `Validate`,
/// as [`crate::reference`] ports it). Else containerd refuses the blob ("cannot
/// calculate blob path from invalid digest"); Err says why, the digest quoted short.
pub(crate) fn valid_digest(digest: &str) -> Result<(), String> {
    use crate::reference::{ReferenceError, validate_digest};
    let why = match validate_digest(digest) {
        Ok(_) => return Ok(()),
        Err(ReferenceError::DigestUnsupported(_)) => "not sha256, sha384 or sha512",
        Err(_) => "not the 64, 96 or 128 lowercase hex digits sha256, sha384 and sha512 take",
    };
    Err(format!(
        "the invalid digest {} (containerd refuses it: {why})",
        shown(digest)
    ))
}

/// A registry's text (a media type, a digest) as a reason quotes it: at most 100
/// characters, quoted, so a hostile document cannot make a reason long.
fn shown(text: &str) -> String {
    const MAX: usize = 100;
    match text.char_indices().nth(MAX) {
        Some((end, _)) => format!("{:?}...", &text[..end]),
        None => format!("{text:?}"),
    }
}

fn parse_config(body: &[u8]) -> Document {
    match go_json::unmarshal::<RawConfig>(body) {
        Ok(config) => Document::Config(Some(ConfigSummary {
            platform: Platform::new(&config.os, &config.architecture, ""),
            diff_ids: config.rootfs.diff_ids.len(),
        })),
        Err(GoJsonError::Syntax { line, column }) => Document::Refused(format!(
            "is not an image config: not valid JSON (line {line}, column {column}); containerd refuses it"
        )),
        Err(GoJsonError::Form { .. }) => Document::Refused(
            "is not an image config: not a JSON object of that form; containerd refuses it".into(),
        ),
    }
}

/// The media type a manifest is read as: the one its descriptor (or answer) names,
/// else the one its body names.
fn read_as(declared: &str, body: &[u8]) -> String {
    if declared.is_empty() {
        sniff_media_type(body).unwrap_or_default()
    } else {
        declared.to_string()
    }
}

/// The media type a manifest body names, when its answer named none.
fn sniff_media_type(body: &[u8]) -> Option<String> {
    let raw: RawDocument = go_json::unmarshal(body).ok()?;
    if !raw.media_type.is_empty() {
        return Some(raw.media_type);
    }
    if !raw.manifests.is_empty() {
        Some("application/vnd.oci.image.index.v1+json".into())
    } else if raw.config.is_some() {
        Some(OCI_MANIFEST.into())
    } else {
        None
    }
}

/// The digest of `body` by `digest`'s algorithm (None: an algorithm not computed).
fn digest_like(digest: &str, body: &[u8]) -> Option<String> {
    use sha2::Digest as _;
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    match digest.split_once(':').map(|(a, _)| a) {
        Some("sha256") => Some(format!("sha256:{}", hex(&sha2::Sha256::digest(body)))),
        Some("sha384") => Some(format!("sha384:{}", hex(&sha2::Sha384::digest(body)))),
        Some("sha512") => Some(format!("sha512:{}", hex(&sha2::Sha512::digest(body)))),
        _ => None,
    }
}

/// Documents by digest, oldest out first.
pub(crate) struct DocumentCache {
    map: HashMap<String, Arc<Document>>,
    order: VecDeque<String>,
    capacity: usize,
}

impl DocumentCache {
    pub(crate) fn new(capacity: usize) -> Self {
        DocumentCache {
            map: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    fn get(&self, digest: &str) -> Option<Arc<Document>> {
        self.map.get(digest).cloned()
    }

    fn insert(&mut self, digest: &str, document: Arc<Document>) {
        if self.map.insert(digest.to_string(), document).is_none() {
            self.order.push_back(digest.to_string());
        }
        while self.map.len() > self.capacity {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            self.map.remove(&oldest);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.len()
    }
}

/// A pull path verified at a time: (host, repository, tag digest, platform, credential).
pub(crate) type VerifiedKey = (String, String, String, String, u64);

// ---- the walk --------------------------------------------------------------------

/// Why one platform's path fails.
type Failed = (CheckStatus, String);

/// The kind of object a document is read as.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Manifest,
    Config,
}

/// A document the walk needs: where its descriptor points, what it is read as, and
/// how a reason names it (`what`, for `platform`).
#[derive(Clone, Copy)]
struct Needed<'d> {
    desc: &'d Descriptor,
    kind: Kind,
    what: &'d str,
    platform: Option<&'d Platform>,
}

impl<'d> Needed<'d> {
    fn manifest(desc: &'d Descriptor, what: &'d str, platform: Option<&'d Platform>) -> Self {
        Needed {
            desc,
            kind: Kind::Manifest,
            what,
            platform,
        }
    }

    fn config(desc: &'d Descriptor, what: &'d str, platform: Option<&'d Platform>) -> Self {
        Needed {
            desc,
            kind: Kind::Config,
            what,
            platform,
        }
    }
}

fn for_platform(platform: Option<&Platform>) -> String {
    platform.map(|p| format!(" for {p}")).unwrap_or_default()
}

/// The failure a request's answer means for `what`.
fn failed(what: &str, platform: Option<&Platform>, answer: &Answer) -> Failed {
    let plat = for_platform(platform);
    match answer.outcome.status {
        CheckStatus::Absent => (
            CheckStatus::Absent,
            format!(
                "{what} not found{plat} ({}: HTTP {})",
                answer.origin,
                answer
                    .http_status
                    .map_or_else(|| "?".to_string(), |c| c.to_string())
            ),
        ),
        status => (status, format!("{what}{plat}: {}", answer.outcome.reason)),
    }
}

/// The size a 1-byte ranged answer says the whole object has.
fn served_size(final_: &Final) -> Option<u64> {
    if final_.status == StatusCode::PARTIAL_CONTENT {
        final_
            .headers
            .get(http::header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit_once('/'))
            .and_then(|(_, total)| total.trim().parse().ok())
    } else {
        super::content_length(&final_.headers)
    }
}

fn size_mismatch(what: &str, platform: Option<&Platform>, served: u64, declared: i64) -> Failed {
    (
        CheckStatus::UnknownError,
        format!(
            "{what}{}: the registry serves {served} bytes but the manifest declares {declared} (containerd refuses it: unexpected commit size)",
            for_platform(platform)
        ),
    )
}

struct Walk<'c, 'r, 'e, 'a> {
    client: &'c RegistryClient,
    route: &'r [Target<'e, 'a>],
    /// Whether existence is verified this time (else only what is not kept is read).
    verify: bool,
    depth: CheckDepth,
    /// What the nodes' runtimes do with schema 1 (one or more).
    schema1: Arc<[Schema1Pulls]>,
}

impl Walk<'_, '_, '_, '_> {
    /// Asks each host of the route in turn, as containerd's fetcher does: a 404 moves on,
    /// another failure is remembered and the next host tried; the first success wins.
    async fn along(&self, object: Object, digest: &str, want: Want) -> Result<Final, Answer> {
        let mut first_failure: Option<Answer> = None;
        let mut not_found: Option<Answer> = None;
        for target in self.route {
            match self.client.ask(*target, object, digest, want).await {
                Ok((answer, final_)) if answer.outcome.is_available() => return Ok(final_),
                Ok((answer, _)) if answer.outcome.status == CheckStatus::Absent => {
                    not_found.get_or_insert(answer);
                }
                Ok((answer, _)) | Err(answer) => {
                    first_failure.get_or_insert(answer);
                }
            }
        }
        Err(first_failure.or(not_found).unwrap_or_else(|| {
            Answer::local(
                CheckOutcome::new(CheckStatus::UnknownError, "no host to ask"),
                String::new(),
            )
        }))
    }

    /// The document `needed.desc` points at: kept, else fetched by digest along the route (its
    /// size and digest verified). When kept and due for verification, its existence
    /// (and size) is confirmed with one cheap request.
    async fn document(
        &self,
        needed: Needed<'_>,
        body: Option<&Bytes>,
    ) -> Result<Arc<Document>, Failed> {
        let desc = needed.desc;
        let kept = lock(&self.client.documents).get(&desc.digest);
        if let Some(document) = kept {
            if self.verify {
                self.exists(needed).await?;
            }
            return Ok(document);
        }
        // Checks that miss the same digest at once read it once: the others wait for
        // the first and find it kept.
        let gate = self.client.document_gate(&desc.digest);
        let _reading = gate.lock().await;
        let kept = lock(&self.client.documents).get(&desc.digest);
        if let Some(document) = kept {
            self.client.release_gate(&desc.digest);
            return Ok(document);
        }
        let result = self.read_document(needed, body).await;
        self.client.release_gate(&desc.digest);
        result
    }

    /// Reads a document that is not kept: fetched by digest along the route (or from
    /// the body the tag's answer carried), its size and digest verified, kept.
    async fn read_document(
        &self,
        needed: Needed<'_>,
        body: Option<&Bytes>,
    ) -> Result<Arc<Document>, Failed> {
        let Needed {
            desc,
            kind,
            what,
            platform,
        } = needed;
        let (object, cap) = match kind {
            Kind::Manifest => (Object::Manifest, MAX_MANIFEST_BYTES),
            Kind::Config => (Object::Blob, MAX_CONFIG_BYTES),
        };
        let fetched;
        let body = match body {
            Some(body) => body,
            None => {
                let final_ = self
                    .along(object, &desc.digest, Want::Body(cap))
                    .await
                    .map_err(|answer| failed(what, platform, &answer))?;
                if final_.truncated {
                    if kind == Kind::Manifest {
                        return Err((
                            CheckStatus::UnknownError,
                            format!(
                                "{what}{}: larger than {} MiB (containerd refuses it too)",
                                for_platform(platform),
                                MAX_MANIFEST_BYTES >> 20
                            ),
                        ));
                    }
                    // Too large to judge its content: its existence is all that is known.
                    return Ok(Arc::new(Document::Config(None)));
                }
                fetched = final_.body;
                &fetched
            }
        };
        let media_type = (kind == Kind::Manifest).then(|| read_as(&desc.media_type, body));
        // A registry signs a schema 1 manifest anew when it serves it, so its bytes are
        // not its digest's; containerd reads it without verifying either.
        let verified = !media_type
            .as_deref()
            .is_some_and(|m| DOCKER_SCHEMA1.contains(&m));
        if verified && desc.size > 0 && body.len() as u64 != desc.size as u64 {
            return Err(size_mismatch(what, platform, body.len() as u64, desc.size));
        }
        if verified
            && let Some(actual) = digest_like(&desc.digest, body)
            && actual != desc.digest
        {
            return Err((
                CheckStatus::UnknownError,
                format!(
                    "{what}{}: the registry serves content with digest {actual} (containerd refuses it: unexpected commit digest)",
                    for_platform(platform)
                ),
            ));
        }
        let document = Arc::new(match kind {
            Kind::Manifest => parse_manifest(body, media_type.as_deref().unwrap_or_default()),
            Kind::Config => parse_config(body),
        });
        lock(&self.client.documents).insert(&desc.digest, document.clone());
        Ok(document)
    }

    /// That a kept document is still served (and at its size).
    async fn exists(&self, needed: Needed<'_>) -> Result<(), Failed> {
        let (object, want) = match needed.kind {
            Kind::Manifest => (Object::Manifest, Want::Head),
            Kind::Config => (Object::Blob, Want::FirstByte),
        };
        let final_ = self
            .along(object, &needed.desc.digest, want)
            .await
            .map_err(|answer| failed(needed.what, needed.platform, &answer))?;
        let served = match needed.kind {
            Kind::Config => served_size(&final_),
            Kind::Manifest => super::content_length(&final_.headers),
        };
        let declared = needed.desc.size;
        match served {
            Some(served) if declared > 0 && served != declared as u64 => Err(size_mismatch(
                needed.what,
                needed.platform,
                served,
                declared,
            )),
            _ => Ok(()),
        }
    }

    /// That a layer can be downloaded: its first byte, from its `urls` first (as
    /// containerd's fetcher: a URL that answers 404 moves on, another failure fails the
    /// pull), else from the registry.
    async fn layer(
        &self,
        layer: &Descriptor,
        what: &str,
        platform: Option<&Platform>,
    ) -> Result<(), Failed> {
        for url in &layer.urls {
            let Ok(parsed) = reqwest::Url::parse(url) else {
                continue;
            };
            if !matches!(parsed.scheme(), "http" | "https") {
                continue;
            }
            match self.foreign_first_byte(parsed).await {
                Ok(served) => {
                    return match served {
                        Some(served) if layer.size > 0 && served != layer.size as u64 => {
                            Err(size_mismatch(what, platform, served, layer.size))
                        }
                        _ => Ok(()),
                    };
                }
                Err(None) => continue,
                Err(Some((status, reason))) => {
                    return Err((
                        status,
                        format!("{what}{}: its URL {url}: {reason}", for_platform(platform)),
                    ));
                }
            }
        }
        let final_ = self
            .along(Object::Blob, &layer.digest, Want::FirstByte)
            .await
            .map_err(|answer| failed(what, platform, &answer))?;
        match served_size(&final_) {
            Some(served) if layer.size > 0 && served != layer.size as u64 => {
                Err(size_mismatch(what, platform, served, layer.size))
            }
            _ => Ok(()),
        }
    }

    /// The first byte of a foreign layer's URL, asked as containerd asks it (no
    /// credentials). Ok: the size served; Err(None): 404; Err(Some): another failure.
    async fn foreign_first_byte(&self, url: reqwest::Url) -> Result<Option<u64>, Option<Failed>> {
        let Some(first) = self.route.first() else {
            return Err(None);
        };
        let request = first
            .endpoint
            .http
            .get(url)
            .header(http::header::RANGE, "bytes=0-0");
        let sent = tokio::time::timeout_at(first.deadline.at().into(), request.send()).await;
        let response = match sent {
            Err(_) => {
                return Err(Some((
                    CheckStatus::RegistryUnavailable,
                    "timed out (the check's deadline passed)".into(),
                )));
            }
            Ok(Err(error)) => {
                return Err(Some((
                    CheckStatus::RegistryUnavailable,
                    crate::error_chain(&error),
                )));
            }
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            return Err(None);
        }
        if !status.is_success() {
            let outcome = super::classify::classify_response(status, b"");
            return Err(Some((outcome.status, format!("HTTP {status}"))));
        }
        let final_ = Final {
            status,
            headers: response.headers().clone(),
            body: Bytes::new(),
            truncated: false,
            bearer: None,
        };
        Ok(served_size(&final_))
    }

    /// One platform's path (None: a single manifest) from the tag's manifest down.
    async fn platform_path(&self, top: &Top, platform: Option<&Platform>) -> Result<(), Failed> {
        let mut desc = Descriptor {
            media_type: top.media_type.clone().unwrap_or_default(),
            digest: top.digest.clone(),
            size: top.size.map_or(0, |s| s as i64),
            ..Descriptor::default()
        };
        if desc.media_type.is_empty()
            && let Some(body) = &top.body
        {
            desc.media_type = sniff_media_type(body).unwrap_or_default();
        }
        let mut what = format!("manifest {}", top.digest);
        let mut top_body = top.body.as_ref();
        // Whether the child was chosen without a `platform` field: its config decides.
        let mut unlabelled = false;
        let mut offered = Vec::new();
        let mut via_index = false;
        for _ in 0..MAX_NESTING {
            // The tag's own manifest was just answered: no need to confirm it exists.
            let document = if desc.digest == top.digest {
                let walk = Walk {
                    verify: false,
                    schema1: self.schema1.clone(),
                    ..*self
                };
                walk.document(Needed::manifest(&desc, &what, platform), top_body.take())
                    .await?
            } else {
                self.document(Needed::manifest(&desc, &what, platform), None)
                    .await?
            };
            match &*document {
                Document::Refused(why) => {
                    return Err((
                        CheckStatus::UnknownError,
                        format!("{what}{} {why}", for_platform(platform)),
                    ));
                }
                Document::Config(_) => return Ok(()),
                Document::Schema1(manifest) => {
                    return self.schema1(manifest, &what, platform, via_index).await;
                }
                Document::Index(entries) => {
                    via_index = true;
                    let node = platform.cloned().unwrap_or_else(Platform::host);
                    offered.extend(
                        entries
                            .iter()
                            .filter_map(|e| e.platform.as_ref().map(|p| p.normalized())),
                    );
                    let chosen = match child(entries, &node) {
                        None => return Err(no_match(&node, &offered)),
                        Some(Err(why)) => {
                            return Err((
                                CheckStatus::UnknownError,
                                format!(
                                    "{what}{} names its child with {why}",
                                    for_platform(platform)
                                ),
                            ));
                        }
                        Some(Ok(chosen)) => chosen,
                    };
                    unlabelled = chosen.platform.is_none();
                    what = if crate::platform::is_index(&chosen.media_type) {
                        format!("nested index {}", chosen.digest)
                    } else {
                        format!("platform manifest {}", chosen.digest)
                    };
                    desc = chosen.clone();
                }
                Document::Image {
                    config,
                    layers,
                    artifact_type,
                } => {
                    return self
                        .image(config, layers, artifact_type, platform, unlabelled)
                        .await;
                }
            }
        }
        Err((
            CheckStatus::UnknownError,
            format!("indexes nested deeper than {MAX_NESTING}"),
        ))
    }

    /// A schema 1 manifest (`in_index`: an index's child), as each of the nodes'
    /// runtimes pulls it: refused, or its layer blobs downloaded and converted. With
    /// several runtimes, the first that fails it answers, named.
    async fn schema1(
        &self,
        manifest: &Schema1Manifest,
        what: &str,
        platform: Option<&Platform>,
        in_index: bool,
    ) -> Result<(), Failed> {
        let several = self.schema1.len() > 1;
        // Blobs an earlier runtime's download already found: not asked again.
        let mut confirmed: HashSet<String> = HashSet::new();
        for &pulls in self.schema1.iter() {
            let on_nodes = if several {
                format!(" (on {} nodes)", pulls.nodes())
            } else {
                String::new()
            };
            let refused = |why: &str| {
                (
                    CheckStatus::UnknownError,
                    format!("{what}{}{on_nodes} {why}", for_platform(platform)),
                )
            };
            if in_index && pulls == Schema1Pulls::Converted {
                // containerd converts a tag's own schema 1 manifest only; as an index's
                // child its handlers refuse it.
                return Err(refused(&format!(
                    "is a schema 1 manifest in an index (containerd: {} not supported)",
                    schema1::SIGNED
                )));
            }
            match manifest.plan(pulls) {
                Plan::Refused(why) => return Err(refused(&why)),
                Plan::Download { blobs, after } => {
                    if self.depth == CheckDepth::Blobs {
                        let layers: Vec<Descriptor> = blobs
                            .iter()
                            .map(|digest| Descriptor {
                                media_type: "application/vnd.docker.image.rootfs.diff.tar.gzip"
                                    .into(),
                                digest: digest.clone(),
                                // Unknown until downloaded (containerd: size -1).
                                size: 0,
                                ..Descriptor::default()
                            })
                            .collect();
                        self.layers_but(&layers, platform, &confirmed)
                            .await
                            .map_err(|(status, why)| (status, format!("{why}{on_nodes}")))?;
                        confirmed.extend(blobs.iter().cloned());
                    }
                    after.clone().map_err(|why| refused(&why))?;
                }
            }
        }
        Ok(())
    }

    /// An image manifest's config and layers.
    async fn image(
        &self,
        config: &Descriptor,
        layers: &[Descriptor],
        artifact_type: &str,
        platform: Option<&Platform>,
        unlabelled: bool,
    ) -> Result<(), Failed> {
        let config_what = format!("config {}", config.digest);
        let mut summary = None;
        if unlabelled || self.depth == CheckDepth::Blobs {
            let document = self
                .document(Needed::config(config, &config_what, platform), None)
                .await?;
            match &*document {
                Document::Config(found) => {
                    summary = found.as_ref().map(|s| (s.platform.clone(), s.diff_ids))
                }
                Document::Refused(why) => {
                    // Existence first, as containerd fetches everything before unpacking.
                    if self.depth == CheckDepth::Blobs {
                        self.layers(layers, platform).await?;
                    }
                    return Err((
                        CheckStatus::UnknownError,
                        format!("{config_what}{} {why}", for_platform(platform)),
                    ));
                }
                _ => {}
            }
        }
        if unlabelled
            && let (Some(node), Some((config_platform, _))) = (platform, &summary)
            && !node.runs(config_platform)
        {
            return Err((
                CheckStatus::Absent,
                format!(
                    "no match for platform {node} in the manifest index (its entry without a platform is {config_platform}, by its config)"
                ),
            ));
        }
        if self.depth != CheckDepth::Blobs {
            return Ok(());
        }
        self.layers(layers, platform).await?;
        unpackable(
            config,
            layers,
            artifact_type,
            platform,
            summary.map(|(_, diff_ids)| diff_ids),
        )
    }

    async fn layers(
        &self,
        layers: &[Descriptor],
        platform: Option<&Platform>,
    ) -> Result<(), Failed> {
        self.layers_but(layers, platform, &HashSet::new()).await
    }

    /// [`Self::layers`], but for those whose digest is in `confirmed` (found already in
    /// this walk); each keeps its number in `layers`.
    async fn layers_but(
        &self,
        layers: &[Descriptor],
        platform: Option<&Platform>,
        confirmed: &HashSet<String>,
    ) -> Result<(), Failed> {
        if !self.verify {
            return Ok(());
        }
        // A few at once, as containerd fetches layers (its CRI's max_concurrent_downloads
        // is 3), so many layers fit the deadline; the per-registry limits still apply.
        // The first failure in layer order is the answer.
        let total = layers.len();
        let indexed: Vec<(usize, &Descriptor)> = layers
            .iter()
            .enumerate()
            .filter(|(_, layer)| !confirmed.contains(&layer.digest))
            .collect();
        for chunk in indexed.chunks(LAYER_CONCURRENCY) {
            let mut pending = Vec::with_capacity(chunk.len());
            for &(i, layer) in chunk {
                pending.push(self.numbered_layer(layer, i, total, platform));
            }
            for result in futures::future::join_all(pending).await {
                result?;
            }
        }
        Ok(())
    }

    async fn numbered_layer(
        &self,
        layer: &Descriptor,
        i: usize,
        total: usize,
        platform: Option<&Platform>,
    ) -> Result<(), Failed> {
        let what = format!("layer {} of {total} ({})", i + 1, layer.digest);
        self.layer(layer, &what, platform).await
    }
}

/// What containerd's unpack refuses once every blob is there: a config whose
/// `rootfs.diff_ids` (`diff_ids`, None when not read) do not count the layers (not an
/// image: an artifact, a Helm chart), a layer of a type it cannot unpack.
fn unpackable(
    config: &Descriptor,
    layers: &[Descriptor],
    artifact_type: &str,
    platform: Option<&Platform>,
    diff_ids: Option<usize>,
) -> Result<(), Failed> {
    if let Some(diff_ids) = diff_ids
        && diff_ids != layers.len()
    {
        let artifact = if !artifact_type.is_empty() {
            format!(", artifactType {}", shown(artifact_type))
        } else if config.media_type == HELM_CONFIG {
            ", a Helm chart".to_string()
        } else {
            String::new()
        };
        return Err((
            CheckStatus::UnknownError,
            format!(
                "not an image{}: config media type {} with {diff_ids} rootfs.diff_ids for {} layers{artifact} (containerd: mismatched image rootfs and manifest layers)",
                for_platform(platform),
                if config.media_type.is_empty() {
                    "(none)".to_string()
                } else {
                    shown(&config.media_type)
                },
                layers.len()
            ),
        ));
    }
    if let Some((i, layer)) = layers
        .iter()
        .enumerate()
        .find(|(_, l)| !is_layer_type(&l.media_type))
    {
        return Err((
            CheckStatus::UnknownError,
            format!(
                "layer {} of {} ({}){} has media type {}, which containerd cannot unpack",
                i + 1,
                layers.len(),
                layer.digest,
                for_platform(platform),
                shown(&layer.media_type)
            ),
        ));
    }
    Ok(())
}

/// What containerd answers when no entry of an index runs on `node`, with the
/// platforms the indexes walked so far offer (each once, `unknown` ones left out).
fn no_match(node: &Platform, offered: &[Platform]) -> Failed {
    let mut listed: Vec<Platform> = Vec::new();
    for p in offered
        .iter()
        .filter(|p| p.os != "unknown" && !p.os.is_empty())
    {
        if !listed.contains(p) {
            listed.push(p.clone());
        }
    }
    (
        CheckStatus::Absent,
        crate::platform::missing_reason(&[node], &listed),
    )
}

/// The child containerd pulls for a node of `node`'s platform: entries it runs, in its
/// order of preference (`platforms.Only`), then entries without a platform, in index
/// order (`images.FilterPlatforms` + `images.LimitManifests(…, 1)`).
fn choose<'d>(entries: &'d [Descriptor], node: &Platform) -> Option<&'d Descriptor> {
    let vector = node.runnable();
    entries
        .iter()
        .filter_map(|e| {
            let rank = match &e.platform {
                None => usize::MAX,
                Some(p) => vector.iter().position(|v| *v == p.normalized())?,
            };
            Some((rank, e))
        })
        .min_by_key(|(rank, _)| *rank)
        .map(|(_, e)| e)
}

/// The walk's parsers without a registry, for the hostile-input targets
/// (`tests/hostile/targets.rs`, `pull_path_documents`): the same functions the walk
/// calls on a registry's bytes, their results in public types. Not an API.
#[doc(hidden)]
pub mod hostile {
    use super::{Descriptor, Document, child, parse_config, parse_manifest, unpackable};
    use crate::platform::Platform;

    /// A descriptor as the walk read it, its platform normalized.
    #[derive(Debug)]
    pub struct Entry {
        pub media_type: String,
        pub digest: String,
        pub size: i64,
        pub platform: Option<Platform>,
    }

    impl Entry {
        fn of(desc: &Descriptor) -> Entry {
            Entry {
                media_type: desc.media_type.clone(),
                digest: desc.digest.clone(),
                size: desc.size,
                platform: desc.platform.as_ref().map(|p| p.normalized()),
            }
        }
    }

    /// What the walk makes of one manifest body.
    #[derive(Debug)]
    pub enum Read {
        /// An index: its entries, and the one a node pulls (None: none matches; its
        /// position, or why the walk refuses it).
        Index {
            entries: Vec<Entry>,
            chosen: Option<Result<usize, String>>,
        },
        /// An image manifest, and what unpack says once its blobs are there.
        Image {
            config: Entry,
            layers: Vec<Entry>,
            unpack: Result<(), String>,
        },
        Schema1,
        Refused(String),
    }

    /// What the walk plans for a schema 1 `body` asked as `media_type`, on a runtime
    /// that `pulls` it: Err, refused before a download; else the layer blobs
    /// downloaded, and what the runtime says once they are in.
    pub fn schema1_plan(
        body: &[u8],
        media_type: &str,
        pulls: super::Schema1Pulls,
    ) -> Result<(Vec<String>, Result<(), String>), String> {
        match super::Schema1Manifest::read(body, media_type).plan(pulls) {
            super::Plan::Refused(why) => Err(why),
            super::Plan::Download { blobs, after } => Ok((blobs.to_vec(), after.clone())),
        }
    }

    /// The media type the walk reads a body as when its descriptor names none.
    pub fn sniffed_media_type(body: &[u8]) -> Option<String> {
        super::sniff_media_type(body)
    }

    /// `body` read as the walk reads a manifest of `media_type` (empty: sniffed), the
    /// child chosen for `node`, unpack judged with a config of `diff_ids` entries.
    pub fn read_manifest(
        body: &[u8],
        media_type: &str,
        node: &Platform,
        diff_ids: Option<usize>,
    ) -> Read {
        match parse_manifest(body, &super::read_as(media_type, body)) {
            Document::Index(entries) => {
                // Which entry it is (usize::MAX: not one of them).
                let chosen = child(&entries, node).map(|chosen| {
                    chosen.map(|chosen| {
                        entries
                            .iter()
                            .position(|e| std::ptr::eq(e, chosen))
                            .unwrap_or(usize::MAX)
                    })
                });
                Read::Index {
                    entries: entries.iter().map(Entry::of).collect(),
                    chosen,
                }
            }
            Document::Image {
                config,
                layers,
                artifact_type,
            } => Read::Image {
                unpack: unpackable(&config, &layers, &artifact_type, None, diff_ids)
                    .map_err(|(_, why)| why),
                config: Entry::of(&config),
                layers: layers.iter().map(Entry::of).collect(),
            },
            Document::Schema1(_) => Read::Schema1,
            Document::Refused(why) => Read::Refused(why),
            Document::Config(_) => Read::Refused("read as a config".into()),
        }
    }

    /// `body` read as the walk reads an image config: its platform and how many
    /// `rootfs.diff_ids` it has, or why containerd refuses it.
    pub fn read_config(body: &[u8]) -> Result<(Platform, usize), String> {
        match parse_config(body) {
            Document::Config(Some(summary)) => Ok((summary.platform, summary.diff_ids)),
            Document::Refused(why) => Err(why),
            other => Err(format!("read as {other:?}")),
        }
    }

    /// What a node of `node`'s platform runs, in containerd's order of preference.
    pub fn runnable(node: &Platform) -> Vec<Platform> {
        node.runnable()
    }
}

/// The child the walk fetches for `node` (None: no entry matches), or why containerd
/// refuses it: only the chosen child is fetched, so only its digest matters.
fn child<'d>(entries: &'d [Descriptor], node: &Platform) -> Option<Result<&'d Descriptor, String>> {
    choose(entries, node).map(|chosen| valid_digest(&chosen.digest).map(|()| chosen))
}

impl RegistryClient {
    /// The gate of reads of `digest` (one read per digest at a time).
    fn document_gate(&self, digest: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.reading)
            .entry(digest.to_string())
            .or_default()
            .clone()
    }

    /// Forgets the gate of `digest` once nobody else holds it.
    fn release_gate(&self, digest: &str) {
        let mut reading = lock(&self.reading);
        if reading
            .get(digest)
            .is_some_and(|gate| Arc::strong_count(gate) <= 2)
        {
            reading.remove(digest);
        }
    }

    /// Walks the pull path from `top` (the tag's manifest, as its request answered)
    /// along `route` (the hosts a node fetches from, in order; every request under the
    /// first target's deadline, with each target's credential), for each of
    /// `platforms` when `top` is an index (none given: the platform this process runs
    /// on, as a runtime here would pull).
    pub async fn walk_pull_path(
        &self,
        route: &[Target<'_, '_>],
        top: &Top,
        platforms: &[Platform],
    ) -> PullPath {
        let mut path = self.walk_unredacted(route, top, platforms).await;
        // What storage or a registry said reaches a reason only without any form of the
        // credentials the walk carried.
        let redactor =
            crate::redact::Redactor::for_credentials(route.iter().filter_map(|t| t.credential));
        path.reason = redactor.redact(&path.reason);
        for verdict in path.verdicts.iter_mut().flatten() {
            verdict.reason = redactor.redact(&verdict.reason);
        }
        path
    }

    /// The walk, its reasons as registries and storage said them.
    async fn walk_unredacted(
        &self,
        route: &[Target<'_, '_>],
        top: &Top,
        platforms: &[Platform],
    ) -> PullPath {
        let Some(first) = route.first() else {
            return PullPath::of_manifest(Err((
                CheckStatus::UnknownError,
                "no host to walk the pull path on".into(),
            )));
        };
        if !top.is_index() {
            return PullPath::of_manifest(self.walk_platform(route, first, top, None).await);
        }
        let host_platform;
        let platforms: &[Platform] = if platforms.is_empty() {
            host_platform = [Platform::host()];
            &host_platform
        } else {
            platforms
        };
        let mut verdicts = Vec::with_capacity(platforms.len());
        for platform in platforms {
            let result = self.walk_platform(route, first, top, Some(platform)).await;
            verdicts.push(verdict(platform, result));
        }
        PullPath::of_index(verdicts, self.offered_platforms(&top.digest))
    }

    /// One platform's path (None: a single manifest's), its blobs verified when due
    /// for `first`'s host, repository and credential, and noted when they were.
    async fn walk_platform(
        &self,
        route: &[Target<'_, '_>],
        first: &Target<'_, '_>,
        top: &Top,
        platform: Option<&Platform>,
    ) -> Result<(), Failed> {
        let key: VerifiedKey = (
            first.endpoint.host.to_string(),
            first.repository.to_string(),
            top.digest.clone(),
            platform.map(|p| p.to_string()).unwrap_or_default(),
            RegistryCredential::fingerprint(first.credential),
        );
        let verify = self.blobs_due(&key);
        let walk = Walk {
            client: self,
            route,
            verify,
            depth: self.config.walk.depth,
            schema1: lock(&self.schema1).clone(),
        };
        let result = walk.platform_path(top, platform).await;
        if result.is_ok() && verify {
            self.note_verified(key);
        }
        debug!(digest = %top.digest, platform = ?platform, verified = verify, ok = result.is_ok(), "pull path walked");
        result
    }

    /// Whether the blobs of `key`'s pull path are to be verified again: never
    /// verified, or not within [`WalkSettings::blob_check_interval`].
    fn blobs_due(&self, key: &VerifiedKey) -> bool {
        let interval = self.config.walk.blob_check_interval;
        lock(&self.verified)
            .get(key)
            .is_none_or(|at| at.elapsed() >= interval)
    }

    /// Notes that `key`'s blobs were verified now; at [`MAX_VERIFIED`] entries the
    /// stale ones go first, all of them if none is.
    fn note_verified(&self, key: VerifiedKey) {
        let interval = self.config.walk.blob_check_interval;
        let mut verified = lock(&self.verified);
        if verified.len() >= MAX_VERIFIED {
            verified.retain(|_, at| at.elapsed() < interval);
            if verified.len() >= MAX_VERIFIED {
                verified.clear();
            }
        }
        verified.insert(key, Instant::now());
    }

    /// The platforms the kept index `digest` offers, each once (None: not kept, or not
    /// an index).
    fn offered_platforms(&self, digest: &str) -> Option<Vec<Platform>> {
        let kept = lock(&self.documents).get(digest);
        let Some(Document::Index(entries)) = kept.as_deref() else {
            return None;
        };
        let mut offered: Vec<Platform> = Vec::new();
        for p in entries.iter().filter_map(|e| e.platform.as_ref()) {
            let p = p.normalized();
            if p.os != "unknown" && !p.os.is_empty() && !offered.contains(&p) {
                offered.push(p);
            }
        }
        Some(offered)
    }

    /// Checks that `reference` of `target`'s repository can be pulled, as deep as
    /// [`WalkSettings::depth`]: the manifest request of
    /// [`RegistryClient::check_manifest`], then the walk for `platforms`.
    pub async fn check_pull_path(
        &self,
        target: Target<'_, '_>,
        reference: &str,
        platforms: &[Platform],
    ) -> Answer {
        let depth = self.config.walk.depth;
        if depth == CheckDepth::Manifest {
            let mut answer = self.check(target, Object::Manifest, reference).await;
            depth.note_skipped(&mut answer.outcome);
            return answer;
        }
        let (mut answer, body, size) = self.manifest_answer(target, reference).await;
        if !answer.outcome.is_available() {
            return answer;
        }
        if reference.contains(':') {
            answer.outcome.digest = Some(reference.to_string());
        }
        let Some(digest) = answer.outcome.digest.clone() else {
            return answer;
        };
        let top = Top {
            digest,
            media_type: answer.outcome.media_type.clone(),
            size,
            body,
        };
        self.walk_pull_path(&[target], &top, platforms)
            .await
            .apply(&mut answer.outcome);
        depth.note_skipped(&mut answer.outcome);
        answer
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_an_available_shallower_check_says_what_it_skipped() {
        let note = |depth: CheckDepth, outcome: CheckOutcome| {
            let mut outcome = outcome;
            depth.note_skipped(&mut outcome);
            outcome.reason
        };
        let manifest = note(CheckDepth::Manifest, CheckOutcome::available());
        assert!(manifest.contains("the tag's manifest only"), "{manifest}");
        let platform = note(CheckDepth::Platform, CheckOutcome::available());
        assert!(
            platform.contains("the config and the layers were not checked"),
            "{platform}"
        );
        assert_eq!(note(CheckDepth::Blobs, CheckOutcome::available()), "");
        let absent = CheckOutcome::new(CheckStatus::Absent, "manifest unknown");
        assert_eq!(note(CheckDepth::Manifest, absent), "manifest unknown");
    }

    use super::*;

    fn entry(digest: &str, platform: Option<(&str, &str, &str)>) -> Descriptor {
        Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: digest.into(),
            size: 1,
            urls: GoSlice::default(),
            platform: platform.map(|(os, architecture, variant)| DescriptorPlatform {
                os: os.into(),
                architecture: architecture.into(),
                variant: variant.into(),
            }),
        }
    }

    #[test]
    fn the_child_containerd_chooses() {
        let amd64: Platform = "linux/amd64".parse().unwrap();
        let arm64: Platform = "linux/arm64".parse().unwrap();
        let entries = [
            entry("sha256:unlabelled", None),
            entry("sha256:386", Some(("linux", "386", ""))),
            entry("sha256:arm64", Some(("linux", "arm64", "v8"))),
            entry("sha256:amd64", Some(("linux", "amd64", ""))),
            entry("sha256:att", Some(("unknown", "unknown", ""))),
        ];
        // The node's own platform first, then what it also runs, then no platform.
        assert_eq!(choose(&entries, &amd64).unwrap().digest, "sha256:amd64");
        assert_eq!(choose(&entries[..2], &amd64).unwrap().digest, "sha256:386");
        assert_eq!(choose(&entries, &arm64).unwrap().digest, "sha256:arm64");
        assert_eq!(
            choose(&entries[..1], &arm64).unwrap().digest,
            "sha256:unlabelled"
        );
        let s390x: Platform = "linux/s390x".parse().unwrap();
        assert_eq!(
            choose(&entries, &s390x).unwrap().digest,
            "sha256:unlabelled"
        );
        assert!(choose(&entries[1..], &s390x).is_none());
        // The walk fetches the chosen child only if containerd's content store takes its
        // digest; an invalid one elsewhere in the index does not matter.
        assert!(matches!(child(&entries, &amd64), Some(Err(why)) if why.contains("sha256:amd64")));
        let good = format!("sha256:{}", "0".repeat(64));
        let valid = [
            entry(&good, Some(("linux", "amd64", ""))),
            entries[1].clone(),
        ];
        assert_eq!(child(&valid, &amd64).unwrap().unwrap().digest, good);
        assert!(child(&valid[1..], &s390x).is_none());
    }

    #[test]
    fn documents_as_containerd_reads_them() {
        let index = br#"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:a","size":3}]}"#;
        assert!(matches!(
            parse_manifest(index, "application/vnd.oci.image.index.v1+json"),
            Document::Index(e) if e.len() == 1
        ));
        // An index served as a manifest, and the reverse.
        assert!(matches!(
            parse_manifest(index, OCI_MANIFEST),
            Document::Refused(_)
        ));
        let (c, l) = (
            format!("sha256:{}", "c".repeat(64)),
            format!("sha256:{}", "1".repeat(64)),
        );
        let manifest = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"application/vnd.cncf.helm.config.v1+json","digest":"{c}","size":2}},"layers":[{{"mediaType":"application/vnd.cncf.helm.chart.content.v1.tar+gzip","digest":"{l}","size":9}}]}}"#
        );
        let manifest = manifest.as_bytes();
        assert!(matches!(
            parse_manifest(manifest, "application/vnd.oci.image.index.v1+json"),
            Document::Refused(_)
        ));
        let Document::Image { config, layers, .. } = parse_manifest(manifest, OCI_MANIFEST) else {
            panic!("an image manifest");
        };
        assert_eq!(config.media_type, HELM_CONFIG);
        assert_eq!(layers.len(), 1);
        match parse_manifest(manifest, "application/vnd.oci.artifact.manifest.v1+json") {
            Document::Refused(why) => {
                assert!(
                    why.contains("application/vnd.oci.artifact.manifest.v1+json"),
                    "{why}"
                )
            }
            other => panic!("{other:?}"),
        }
        // Configs: Go's lenient reading (no rootfs: zero diff_ids), but JSON it must be.
        match parse_config(br#"{"name":"chart","version":"1.0.0"}"#) {
            Document::Config(Some(summary)) => assert_eq!(summary.diff_ids, 0),
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse_config(b"not json"), Document::Refused(_)));
        // As Go reads them: a repeated key decodes again (null empties a slice), null
        // leaves a string or number alone.
        let digest = format!("sha256:{}", "e".repeat(64));
        let lenient = format!(
            r#"{{"layers":[{{}}],"layers":null,"config":{{"digest":"{digest}","size":null,"urls":null}},"artifactType":null}}"#
        );
        assert!(matches!(
            parse_manifest(lenient.as_bytes(), OCI_MANIFEST),
            Document::Image { config, layers, .. } if config.digest == digest && layers.is_empty()
        ));
        // ... but a wrong-typed value stays an error though a later key replaces it
        // (Go's Unmarshal returns the earliest such error).
        assert!(matches!(
            parse_manifest(lenient.replace("[{}]", "[1]").as_bytes(), OCI_MANIFEST),
            Document::Refused(why) if why.contains("wrong type")
        ));
        match parse_config(br#"{"os":"linux","os":"windows","rootfs":{"diff_ids":null}}"#) {
            Document::Config(Some(summary)) => {
                assert_eq!(
                    (summary.platform.os.as_str(), summary.diff_ids),
                    ("windows", 0)
                )
            }
            other => panic!("{other:?}"),
        }
        // A field of the wrong type is refused, without quoting the body.
        match parse_manifest(
            br#"{"config":{"digest":"secret-ish","size":"9"}}"#,
            OCI_MANIFEST,
        ) {
            Document::Refused(why) => assert!(
                why.contains("wrong type") && !why.contains("secret-ish"),
                "{why}"
            ),
            other => panic!("{other:?}"),
        }
        assert!(is_layer_type("application/vnd.oci.image.layer.v1.tar+gzip"));
        assert!(is_layer_type(
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
        ));
        assert!(!is_layer_type(
            "application/vnd.cncf.helm.chart.content.v1.tar+gzip"
        ));
    }

    /// What Go's `encoding/json` does that serde does not (decode_test.go's
    /// case-insensitive, repeated-key and null cases), on the walk's documents.
    #[test]
    fn documents_as_go_encoding_json_reads_them() {
        let (c, l, m) = (
            format!("sha256:{}", "c".repeat(64)),
            format!("sha256:{}", "1".repeat(64)),
            format!("sha256:{}", "a".repeat(64)),
        );
        let image = |body: &str| match parse_manifest(body.as_bytes(), OCI_MANIFEST) {
            Document::Image { config, layers, .. } => (config, layers),
            other => panic!("{body}: {other:?}"),
        };
        let refused = |body: &[u8], media_type: &str| match parse_manifest(body, media_type) {
            Document::Refused(why) => why,
            other => panic!("{}: {other:?}", String::from_utf8_lossy(body)),
        };
        // Keys match case-insensitively (ſ is an s, K a k).
        let (config, layers) = image(&format!(
            r#"{{"SchemaVersion":2,"CONFIG":{{"Digest":"{c}","SIZE":7}},"Layerſ":[{{"mediatype":"application/vnd.oci.image.layer.v1.tar","DIGEST":"{l}"}}]}}"#
        ));
        assert_eq!((config.digest.as_str(), config.size), (c.as_str(), 7));
        assert_eq!(layers.len(), 1);
        assert_eq!(layers[0].digest, l);
        assert_eq!(
            layers[0].media_type,
            "application/vnd.oci.image.layer.v1.tar"
        );
        // A repeated key decodes into the value there: a struct is merged, a slice
        // reuses its elements (the second array's {"size":1} keeps the first's
        // digest) and is cut to the new length.
        let (config, layers) = image(&format!(
            r#"{{"config":{{"digest":"{c}","size":1}},"config":{{"size":5}},"layers":[{{"digest":"{l}","size":9}},{{"digest":"{m}"}}],"layers":[{{"size":1}}]}}"#
        ));
        assert_eq!((config.digest.as_str(), config.size), (c.as_str(), 5));
        assert_eq!(layers.len(), 1);
        assert_eq!((layers[0].digest.as_str(), layers[0].size), (l.as_str(), 1));
        // null in an array leaves its element: the zero value for a new one (an
        // empty digest, refused as containerd refuses it), the old one when reused.
        let why = refused(
            format!(r#"{{"config":{{"digest":"{c}"}},"layers":[null,{{"digest":"{l}"}}]}}"#)
                .as_bytes(),
            OCI_MANIFEST,
        );
        assert!(why.contains("layer 1 of 2"), "{why}");
        let (_, layers) = image(&format!(
            r#"{{"config":{{"digest":"{c}"}},"layers":[{{"digest":"{l}"}}],"layers":[null]}}"#
        ));
        assert_eq!(layers[0].digest, l);
        // An index entry's platform (a pointer): merged when repeated, nil on null.
        let index = |entry: &str| {
            let body = format!(r#"{{"manifests":[{{"digest":"{m}",{entry}}}]}}"#);
            match parse_manifest(body.as_bytes(), "application/vnd.oci.image.index.v1+json") {
                Document::Index(entries) => entries[0].platform.as_ref().map(|p| p.normalized()),
                other => panic!("{body}: {other:?}"),
            }
        };
        assert_eq!(
            index(
                r#""platform":{"os":"linux","architecture":"amd64"},"Platform":{"architecture":"arm64"}"#
            ),
            Some("linux/arm64".parse().unwrap())
        );
        assert_eq!(index(r#""platform":{"os":"linux"},"platform":null"#), None);
        assert_eq!(
            index(
                r#""platform":{"os":"linux","architecture":"arm","os.features":null,"variant":"v7"}"#
            ),
            Some("linux/arm/v7".parse().unwrap())
        );
        // Invalid UTF-8 and lone surrogates in strings are U+FFFD, not an error.
        let mut body =
            format!(r#"{{"config":{{"digest":"{c}"}},"annotations":{{"a":"x"#).into_bytes();
        body.extend_from_slice(b"\xff\\ud800\"}}");
        assert!(matches!(
            parse_manifest(&body, OCI_MANIFEST),
            Document::Image { .. }
        ));
        // json.RawMessage: fsLayers given at all (null included) is schema 1 to
        // containerd's validateMediaType.
        let why = refused(
            format!(r#"{{"config":{{"digest":"{c}"}},"fsLayers":null}}"#).as_bytes(),
            OCI_MANIFEST,
        );
        assert!(why.contains("schema 1"), "{why}");
        // validateMediaType reads config, layers and manifests as json.RawMessage:
        // given at all, empty or null, they say which kind the document is; so does
        // its mediaType.
        let index_type = "application/vnd.oci.image.index.v1+json";
        for other in [
            r#""layers":[]"#,
            r#""layers":null"#,
            r#""config":null"#,
            r#""config":{}"#,
            r#""mediaType":"application/vnd.oci.image.manifest.v1+json""#,
        ] {
            let body = format!(r#"{{"manifests":[],{other}}}"#);
            let why = refused(body.as_bytes(), index_type);
            assert!(
                why.contains("expected index but found manifest"),
                "{other}: {why}"
            );
        }
        for other in [
            r#""manifests":[]"#,
            r#""MANIFESTS":null"#,
            r#""mediaType":"application/vnd.docker.distribution.manifest.list.v2+json""#,
        ] {
            let body = format!(r#"{{"config":{{"digest":"{c}"}},{other}}}"#);
            let why = refused(body.as_bytes(), OCI_MANIFEST);
            assert!(
                why.contains("expected manifest but found index"),
                "{other}: {why}"
            );
        }
        // ... while a media type it does not name exactly is no kind to it.
        assert!(matches!(
            parse_manifest(
                br#"{"manifests":[],"mediaType":"application/vnd.oci.image.manifest.v1+json; x=y"}"#,
                index_type
            ),
            Document::Index(_)
        ));
        // A value of the wrong type for any field Go decodes, read by the walk or
        // not, fails json.Unmarshal (and so the pull).
        for bad in [
            r#""schemaVersion":"2""#,
            r#""schemaVersion":2.0"#,
            r#""annotations":{"a":1}"#,
            r#""subject":5"#,
            r#""subject":{"size":"1"}"#,
            r#""layers":{}"#,
            r#""layers":[{"urls":"http://x"}]"#,
            r#""layers":[{"platform":"linux"}]"#,
            r#""layers":[{"platform":{"os.features":"x"}}]"#,
            r#""layers":[{"data":"not base64"}]"#,
            r#""layers":[{"artifactType":1}]"#,
            r#""mediaType":null,"mediaType":1"#,
        ] {
            let body = format!(r#"{{"config":{{"digest":"{c}"}},{bad}}}"#);
            let why = refused(body.as_bytes(), OCI_MANIFEST);
            assert!(why.contains("wrong type"), "{bad}: {why}");
        }
        // Configs: image-spec's whole Image is decoded by containerd's unpack.
        for good in [
            r#"{"created":"2024-01-02T03:04:05.5Z","config":{"Env":["A=1",null],"ExposedPorts":{"80/tcp":{}},"Labels":null},"history":[{"created":null,"empty_layer":true}]}"#,
            r#"{"Rootfs":{"Diff_IDs":["sha256:x"]},"OS":"linux","Architecture":"arm64"}"#,
        ] {
            assert!(
                matches!(parse_config(good.as_bytes()), Document::Config(Some(_))),
                "{good}"
            );
        }
        match parse_config(br#"{"ROOTFS":{"diff_ids":["a","b"]},"rootfs":{"diff_ids":[null]}}"#) {
            Document::Config(Some(summary)) => assert_eq!(summary.diff_ids, 1),
            other => panic!("{other:?}"),
        }
        for bad in [
            r#"{"created":"yesterday"}"#,
            r#"{"created":1700000000}"#,
            r#"{"config":{"Env":"A=1"}}"#,
            r#"{"config":{"ExposedPorts":{"80/tcp":true}}}"#,
            r#"{"config":{"ArgsEscaped":"true"}}"#,
            r#"{"history":[{"empty_layer":"yes"}]}"#,
            r#"{"os.features":"x"}"#,
            r#"{"rootfs":{"diff_ids":"sha256:x"}}"#,
            r#"{"rootfs":[]}"#,
            "[]",
        ] {
            assert!(
                matches!(parse_config(bad.as_bytes()), Document::Refused(ref why) if why.contains("not a JSON object of that form")),
                "{bad}"
            );
        }
    }

    #[test]
    fn descriptors_with_invalid_digests_are_refused_as_containerd_refuses_them() {
        let good = format!("sha256:{}", "a".repeat(64));
        assert!(valid_digest(&good).is_ok());
        assert!(valid_digest(&format!("sha512:{}", "0".repeat(128))).is_ok());
        for bad in [
            String::new(),
            "sha256:".into(),
            "sha256:abc".into(),
            format!("sha256:{}", "A".repeat(64)),
            format!("sha256:{}", "a".repeat(65)),
            format!("md5:{}", "a".repeat(32)),
            format!("sha256:../../{}", "a".repeat(58)),
        ] {
            assert!(valid_digest(&bad).is_err(), "{bad:?}");
        }
        let manifest = |config: &str, layer: &str| {
            format!(
                r#"{{"config":{{"digest":"{config}"}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer}"}}]}}"#
            )
        };
        assert!(matches!(
            parse_manifest(manifest(&good, &good).as_bytes(), OCI_MANIFEST),
            Document::Image { .. }
        ));
        // A long hostile digest is quoted short.
        let long = format!("sha256:{}", "z".repeat(10_000));
        for body in [manifest(&long, &good), manifest(&good, &long)] {
            match parse_manifest(body.as_bytes(), OCI_MANIFEST) {
                Document::Refused(why) => {
                    assert!(why.contains("invalid digest") && why.len() < 300, "{why}")
                }
                other => panic!("{other:?}"),
            }
        }
        // Media types too.
        match parse_manifest(b"{}", &"x".repeat(10_000)) {
            Document::Refused(why) => assert!(why.len() < 300, "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_document_cache_is_bounded_oldest_out() {
        let mut cache = DocumentCache::new(2);
        for digest in ["a", "b", "c"] {
            cache.insert(
                digest,
                Arc::new(Document::Schema1(Schema1Manifest::read(
                    b"{}",
                    schema1::SIGNED,
                ))),
            );
        }
        assert_eq!(cache.len(), 2);
        assert!(cache.get("a").is_none());
        assert!(cache.get("c").is_some());
    }

    #[test]
    fn sizes_served_by_ranged_answers() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::CONTENT_RANGE,
            "bytes 0-0/1234".parse().unwrap(),
        );
        let partial = Final {
            status: StatusCode::PARTIAL_CONTENT,
            headers,
            body: Bytes::new(),
            truncated: false,
            bearer: None,
        };
        assert_eq!(served_size(&partial), Some(1234));
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::CONTENT_LENGTH, "99".parse().unwrap());
        let whole = Final {
            status: StatusCode::OK,
            headers,
            body: Bytes::new(),
            truncated: false,
            bearer: None,
        };
        assert_eq!(served_size(&whole), Some(99));
    }
}
