//! Docker schema 1 manifests, as each runtime pulls them: which layer blobs it
//! downloads, and what it refuses before or after downloading them.
//!
//! - containerd 1.x converts a signed (`+prettyjws`) manifest on the node
//!   (`remotes/docker/schema1/converter.go`): it strips the JWS, downloads each layer
//!   blob once except those the history marks empty (`throwaway`, or `Size` 0), then
//!   builds an image config from the history. It does not check the manifest's digest:
//!   a registry re-signs schema 1 manifests, so the bytes served are not the digest's.
//! - containerd 2.0 turned the conversion off by default and 2.1 removed it: every
//!   schema 1 manifest fails (`ErrNotImplemented`, "no longer supported").
//! - CRI-O (containers/image, `manifest/docker_schema1.go` and `copy`) reads signed and
//!   unsigned manifests, checks the v1 image IDs and their parent chain, and copies
//!   every layer blob, empty ones included.

use std::collections::HashSet;

use base64::Engine as _;

use super::{RawConfig, shown, valid_digest};
use crate::go_json::{
    self, Decoded, GoDecode, GoJsonError, GoSlice, Kind, RawMessage, Reader, Syntax,
};

/// `application/vnd.docker.distribution.manifest.v1+prettyjws`: the one schema 1 media
/// type containerd converts.
pub(super) const SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
/// `application/vnd.docker.distribution.manifest.v1+json`: unsigned schema 1.
pub(super) const UNSIGNED: &str = "application/vnd.docker.distribution.manifest.v1+json";

/// What the nodes' runtime does with a schema 1 manifest (`--schema1-images`; an agent
/// takes its node's from CRI `Version`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Schema1Pulls {
    /// Refused, as containerd 2.0 and later refuse it.
    #[default]
    Refused,
    /// Converted as containerd 1.x converts it (layers the history marks empty are not
    /// downloaded).
    Converted,
    /// Copied as CRI-O (containers/image) copies it: every layer blob.
    Copied,
}

impl Schema1Pulls {
    /// What the runtime `name` at `version` (CRI `Version`) does with schema 1; None
    /// for a runtime that is neither containerd nor CRI-O.
    pub fn of_runtime(name: &str, version: &str) -> Option<Schema1Pulls> {
        if name.eq_ignore_ascii_case("cri-o") || name.eq_ignore_ascii_case("crio") {
            return Some(Schema1Pulls::Copied);
        }
        if !name.eq_ignore_ascii_case("containerd") {
            return None;
        }
        // containerd reports "v1.7.27", "1.6.20~ds1", "v2.1.0" (k3s: "v1.7.23-k3s2").
        Some(match crate::release_numbers(version).first() {
            Some(0 | 1) => Schema1Pulls::Converted,
            _ => Schema1Pulls::Refused,
        })
    }

    /// What a node's runtime does with schema 1, from the Node's
    /// `status.nodeInfo.containerRuntimeVersion`: the kubelet writes CRI `Version`'s
    /// name and version there as `name://version` (`containerd://1.7.27`,
    /// `cri-o://1.31.3`).
    pub fn of_node_runtime(container_runtime_version: &str) -> Option<Schema1Pulls> {
        let (name, version) = container_runtime_version.split_once("://")?;
        Schema1Pulls::of_runtime(name, version)
    }

    /// The nodes that pull this way, as a reason names them.
    pub(crate) fn nodes(self) -> &'static str {
        match self {
            Schema1Pulls::Refused => "containerd 2.x",
            Schema1Pulls::Converted => "containerd 1.x",
            Schema1Pulls::Copied => "CRI-O",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Schema1Pulls::Refused => "refused",
            Schema1Pulls::Converted => "converted",
            Schema1Pulls::Copied => "copied",
        }
    }
}

/// A schema 1 manifest as read once (kept by digest), for any runtime to judge.
#[derive(Debug)]
pub(crate) struct Schema1Manifest {
    /// The media type it was asked by.
    signed_type: bool,
    /// containerd's reading (signature stripped): what it refuses before a download,
    /// the blobs it downloads, what its conversion refuses after them.
    containerd: Reading,
    /// containers/image's reading.
    containers_image: Reading,
}

#[derive(Debug)]
struct Reading {
    before: Result<Vec<String>, String>,
    after: Result<(), String>,
}

impl Reading {
    fn refused(why: String) -> Reading {
        Reading {
            before: Err(why),
            after: Ok(()),
        }
    }
}

/// What a runtime does with one schema 1 manifest.
pub(crate) enum Plan<'m> {
    /// It fails at once: why.
    Refused(String),
    /// It downloads these layer blobs, then fails or not as `after` says.
    Download {
        blobs: &'m [String],
        after: &'m Result<(), String>,
    },
}

impl Schema1Manifest {
    pub(crate) fn read(body: &[u8], media_type: &str) -> Schema1Manifest {
        Schema1Manifest {
            signed_type: media_type == SIGNED,
            containerd: containerd_reading(body),
            containers_image: containers_image_reading(body),
        }
    }

    /// What `pulls` does with it.
    pub(crate) fn plan(&self, pulls: Schema1Pulls) -> Plan<'_> {
        let reading = match pulls {
            Schema1Pulls::Refused => {
                return Plan::Refused(
                    "is a Docker schema 1 manifest, which containerd 2.0 and later refuse (\"no longer supported since containerd v2.1\"); containerd 1.x and CRI-O convert it (--schema1-images)".into(),
                );
            }
            Schema1Pulls::Converted if !self.signed_type => {
                return Plan::Refused(format!(
                    "is an unsigned schema 1 manifest ({UNSIGNED}): containerd converts only signed ones and cannot unpack it"
                ));
            }
            Schema1Pulls::Converted => &self.containerd,
            Schema1Pulls::Copied => &self.containers_image,
        };
        match &reading.before {
            Err(why) => Plan::Refused(why.clone()),
            Ok(blobs) => Plan::Download {
                blobs,
                after: &reading.after,
            },
        }
    }
}

/// A schema 1 manifest as both runtimes decode it: containerd's converter `manifest`
/// (`fsLayers`, `history`, and `layers` and `manifests` as `json.RawMessage`: given at
/// all, `null` included) and containers/image's `Schema1` (`schemaVersion`, `name`,
/// `tag`, `architecture`), with what containers/image's ambiguity check counts (a
/// `config`, `layers` or `manifests` that is not `null`).
#[derive(Default)]
struct RawSchema1 {
    schema_version: i64,
    fs_layers: GoSlice<RawFsLayer>,
    history: GoSlice<RawHistory>,
    raw_layers: RawMessage,
    raw_manifests: RawMessage,
    /// containers/image's fields typed wrong (containerd does not read them).
    image_fields_mistyped: bool,
    /// `config`, `layers`, `manifests` given and not `null`.
    ambiguous: [bool; 3],
}

impl GoDecode for RawSchema1 {
    fn decode(&mut self, r: &mut Reader<'_>) -> Decoded {
        /// A string field of containers/image's that containerd does not read: a
        /// wrong type fails containers/image only.
        fn image_string(m: &mut RawSchema1, r: &mut Reader<'_>) -> Decoded {
            let kind = r.peek()?;
            m.image_fields_mistyped |= kind != Kind::String && kind != Kind::Null;
            r.skip()
        }
        /// Another kind's field, into containerd's `json.RawMessage` (given at all)
        /// and containers/image's `any` (given, not `null`): the latter returned.
        fn other_kind(raw: &mut RawMessage, r: &mut Reader<'_>) -> Result<bool, Syntax> {
            let mut given = false;
            r.keeping_raw(raw, |r| {
                given = r.peek()? != Kind::Null;
                r.skip()
            })?;
            Ok(given)
        }
        r.go_struct(
            self,
            &[
                // containerd does not read it: a wrong type fails containers/image only.
                ("schemaVersion", |m, r| match r.peek()? {
                    Kind::Number => {
                        match r.number()?.parse::<i64>() {
                            Ok(version) => m.schema_version = version,
                            Err(_) => m.image_fields_mistyped = true,
                        }
                        Ok(())
                    }
                    Kind::Null => r.skip(),
                    _ => {
                        m.image_fields_mistyped = true;
                        r.skip()
                    }
                }),
                ("fsLayers", |m, r| m.fs_layers.decode(r)),
                ("history", |m, r| m.history.decode(r)),
                ("name", image_string),
                ("tag", image_string),
                ("architecture", image_string),
                // Not a field of containerd's: its text is not kept.
                ("config", |m, r| {
                    m.ambiguous[0] = other_kind(&mut RawMessage::default(), r)?;
                    Ok(())
                }),
                ("layers", |m, r| {
                    m.ambiguous[1] = other_kind(&mut m.raw_layers, r)?;
                    Ok(())
                }),
                ("manifests", |m, r| {
                    m.ambiguous[2] = other_kind(&mut m.raw_manifests, r)?;
                    Ok(())
                }),
            ],
        )
    }
}

#[derive(Clone, Default)]
struct RawFsLayer {
    blob_sum: String,
}

impl GoDecode for RawFsLayer {
    fn decode(&mut self, r: &mut Reader<'_>) -> Decoded {
        r.go_struct(self, &[("blobSum", |l, r| l.blob_sum.decode(r))])
    }
}

#[derive(Clone, Default)]
struct RawHistory {
    v1_compatibility: String,
}

impl GoDecode for RawHistory {
    fn decode(&mut self, r: &mut Reader<'_>) -> Decoded {
        r.go_struct(
            self,
            &[("v1Compatibility", |h, r| h.v1_compatibility.decode(r))],
        )
    }
}

/// A history entry's `v1Compatibility` as containerd's `v1History` and
/// containers/image's `Schema1V1Compatibility` decode it (a field either types is
/// type-checked for both: a `created` that is not RFC 3339 fails both).
#[derive(Default)]
struct V1History {
    id: String,
    parent: String,
    throwaway: Option<bool>,
    size: Option<i64>,
}

impl GoDecode for V1History {
    fn decode(&mut self, r: &mut Reader<'_>) -> Decoded {
        r.go_struct(
            self,
            &[
                ("id", |h, r| h.id.decode(r)),
                ("parent", |h, r| h.parent.decode(r)),
                ("comment", |_, r| r.check::<String>()),
                ("created", |_, r| r.check::<go_json::Time>()),
                ("container_config", |_, r| r.check::<CommandOnly>()),
                ("author", |_, r| r.check::<String>()),
                ("throwaway", |h, r| h.throwaway.decode(r)),
                ("Size", |h, r| h.size.decode(r)),
            ],
        )
    }
}

/// `container_config` as both read it: its `Cmd`.
#[derive(Default)]
struct CommandOnly;

impl GoDecode for CommandOnly {
    fn decode(&mut self, r: &mut Reader<'_>) -> Decoded {
        r.go_struct(self, &[("Cmd", |_, r| r.check::<GoSlice<String>>())])
    }
}

/// A history entry read as both runtimes read it.
fn history_entry(text: &str) -> Result<V1History, String> {
    go_json::unmarshal::<V1History>(text.as_bytes())
        .map_err(|why| format!("is not a v1 image description of that form: {why}"))
}

/// containerd's `stripSignature`: the signed payload of a pretty JWS.
fn strip_signature(body: &[u8]) -> Result<Vec<u8>, String> {
    #[derive(Default)]
    struct Signed {
        protected: GoSlice<Protected64>,
    }
    #[derive(Clone, Default)]
    struct Protected64(String);
    impl GoDecode for Signed {
        fn decode(&mut self, r: &mut Reader<'_>) -> Decoded {
            r.go_struct(self, &[("signatures", |s, r| s.protected.decode(r))])
        }
    }
    impl GoDecode for Protected64 {
        fn decode(&mut self, r: &mut Reader<'_>) -> Decoded {
            r.go_struct(self, &[("protected", |p, r| p.0.decode(r))])
        }
    }
    #[derive(Default)]
    struct Protected {
        length: i64,
        tail: String,
    }
    impl GoDecode for Protected {
        fn decode(&mut self, r: &mut Reader<'_>) -> Decoded {
            r.go_struct(
                self,
                &[
                    ("formatLength", |p, r| p.length.decode(r)),
                    ("formatTail", |p, r| p.tail.decode(r)),
                ],
            )
        }
    }
    let signed: Signed = go_json::unmarshal(body)
        .map_err(|why| format!("has signatures that are not readable ({why})"))?;
    let Some(first) = signed.protected.first() else {
        return Err("has no signatures".into());
    };
    let protected = jose_base64(&first.0)
        .ok_or_else(|| "has a signature whose protected header is not base64url".to_string())?;
    let protected: Protected = go_json::unmarshal(&protected).map_err(|why| {
        format!("has a signature whose protected header is not of that form ({why})")
    })?;
    let length = usize::try_from(protected.length)
        .ok()
        .filter(|l| *l <= body.len())
        .ok_or_else(|| "has an invalid protected length block".to_string())?;
    let tail = jose_base64(&protected.tail)
        .ok_or_else(|| "has a signature whose format tail is not base64url".to_string())?;
    let mut payload = body[..length].to_vec();
    payload.extend_from_slice(&tail);
    Ok(payload)
}

/// `joseBase64UrlDecode`: base64url with its padding left out (Go's decoder also
/// skips line breaks).
fn jose_base64(text: &str) -> Option<Vec<u8>> {
    let padding = match text.len() % 4 {
        0 => "",
        2 => "==",
        3 => "=",
        _ => return None,
    };
    let joined: String = text
        .chars()
        .filter(|c| *c != '\r' && *c != '\n')
        .chain(padding.chars())
        .collect();
    base64::engine::general_purpose::URL_SAFE
        .decode(joined)
        .ok()
}

fn not_json(what: &str, why: GoJsonError) -> String {
    format!("{what} is not a schema 1 manifest of that form: {why} (the runtime refuses it)")
}

/// A layer blob's digest as the content store takes it.
fn blob_digest(digest: &str, i: usize, total: usize) -> Result<String, String> {
    valid_digest(digest)
        .map(|()| digest.to_string())
        .map_err(|why| format!("names layer {} of {total} with {why}", i + 1))
}

/// What both runtimes check of a manifest's shape, with what each says of it: no
/// other kind's fields beside `fsLayers` (`given`: by that runtime's reading), as
/// many history entries as layers. Ok: how many layers.
fn shape(
    manifest: &RawSchema1,
    given: bool,
    extra_keys: &str,
    mismatch: &str,
) -> Result<usize, String> {
    if given {
        return Err(format!(
            "has another kind's fields beside its fsLayers ({extra_keys})"
        ));
    }
    let total = manifest.fs_layers.len();
    if total != manifest.history.len() {
        return Err(format!(
            "has {total} fsLayers and {} history entries ({mismatch})",
            manifest.history.len()
        ));
    }
    Ok(total)
}

/// containerd 1.x: `Converter.Handle`, then `Convert`.
fn containerd_reading(body: &[u8]) -> Reading {
    let payload = match strip_signature(body) {
        Ok(payload) => payload,
        Err(why) => {
            return Reading::refused(format!("{why} (containerd strips the schema 1 signature)"));
        }
    };
    let manifest: RawSchema1 = match go_json::unmarshal(&payload) {
        Ok(manifest) => manifest,
        Err(why) => return Reading::refused(not_json("its signed payload", why)),
    };
    let given = !manifest.raw_layers.is_empty() || !manifest.raw_manifests.is_empty();
    let total = match shape(
        &manifest,
        given,
        "containerd: expected schema1 document but found extra keys",
        "containerd: invalid schema 1 manifest, history and layer mismatch",
    ) {
        Ok(total) => total,
        Err(why) => return Reading::refused(why),
    };
    // Each blob once, at its first entry, whose history says whether it is empty.
    let mut seen = HashSet::new();
    let mut blobs = Vec::new();
    for (i, (layer, history)) in manifest.fs_layers.iter().zip(&manifest.history).enumerate() {
        if !seen.insert(layer.blob_sum.as_str()) {
            continue;
        }
        let entry = match history_entry(&history.v1_compatibility) {
            Ok(entry) => entry,
            Err(why) => {
                return Reading::refused(format!("history entry {} of {total} {why}", i + 1));
            }
        };
        let empty = match (entry.throwaway, entry.size) {
            (Some(throwaway), _) => throwaway,
            (None, Some(size)) => size == 0,
            (None, None) => false,
        };
        if !empty {
            match blob_digest(&layer.blob_sum, i, total) {
                Ok(digest) => blobs.push(digest),
                Err(why) => return Reading::refused(why),
            }
        }
    }
    // The conversion, once every blob is in: every history entry read again, the first
    // as the image config.
    let after = if manifest.history.is_empty() {
        Err("has no history (containerd: schema 1 conversion failed)".into())
    } else {
        manifest
            .history
            .iter()
            .enumerate()
            .try_for_each(|(i, h)| {
                history_entry(&h.v1_compatibility)
                    .map(drop)
                    .map_err(|why| format!("history entry {} of {total} {why}", i + 1))
            })
            .and_then(|()| {
                let first = &manifest.history[0].v1_compatibility;
                go_json::unmarshal::<RawConfig>(first.as_bytes())
                    .map(drop)
                    .map_err(|why| {
                        format!("has a first history entry that is not an image config: {why} (containerd: failed to unmarshal image from schema 1 history)")
                    })
            })
    };
    Reading {
        before: Ok(blobs),
        after,
    }
}

/// containers/image: `Schema1FromManifest` (`initialize`, `fixManifestLayers`), then
/// `copy`, which copies every remaining layer blob.
fn containers_image_reading(body: &[u8]) -> Reading {
    let manifest = match go_json::unmarshal::<RawSchema1>(body) {
        Ok(manifest) if !manifest.image_fields_mistyped => manifest,
        Ok(_) => {
            return Reading::refused(
                "has a schemaVersion, name, tag or architecture of the wrong type (containers/image refuses it)".into(),
            );
        }
        Err(why) => return Reading::refused(not_json("it", why)),
    };
    if manifest.schema_version != 1 {
        return Reading::refused(format!(
            "has schemaVersion {} (containers/image: unsupported schema version)",
            manifest.schema_version
        ));
    }
    let total = match shape(
        &manifest,
        manifest.ambiguous.iter().any(|given| *given),
        "containers/image refuses an ambiguous manifest",
        "containers/image: length of history not equal to number of layers",
    ) {
        Ok(total) => total,
        Err(why) => return Reading::refused(why),
    };
    if total == 0 {
        return Reading::refused(
            "has no fsLayers (containers/image: no FSLayers in manifest)".into(),
        );
    }
    let mut entries = Vec::with_capacity(total);
    for (i, history) in manifest.history.iter().enumerate() {
        match history_entry(&history.v1_compatibility) {
            Ok(entry) => entries.push(entry),
            Err(why) => {
                return Reading::refused(format!("history entry {} of {total} {why}", i + 1));
            }
        }
    }
    // containers/image's `validHex`: `^([a-f0-9]{64})$`.
    let valid_id = |id: &str| id.len() == 64 && crate::reference::is_lower_hex(id);
    if let Some(bad) = entries.iter().find(|e| !valid_id(&e.id)) {
        return Reading::refused(format!(
            "has the v1 image ID {} (containers/image: image ID is invalid)",
            shown(&bad.id)
        ));
    }
    if entries.last().is_some_and(|base| !base.parent.is_empty()) {
        return Reading::refused(
            "names a parent for its base layer (containers/image: Invalid parent ID in the base layer of the image)".into(),
        );
    }
    let mut ids = HashSet::new();
    let mut last = "";
    for entry in &entries {
        if entry.id != last && ids.contains(entry.id.as_str()) {
            return Reading::refused(format!(
                "names the v1 image ID {} more than once (containers/image refuses it)",
                shown(&entry.id)
            ));
        }
        last = &entry.id;
        ids.insert(entry.id.as_str());
    }
    // Entries repeating the next one's ID are dropped; the others chain by parent.
    let mut kept: Vec<usize> = vec![total - 1];
    for i in (0..total - 1).rev() {
        if entries[i].id == entries[i + 1].id {
            continue;
        }
        if entries[i].parent != entries[i + 1].id {
            return Reading::refused(format!(
                "breaks its chain of v1 image IDs at history entry {} (containers/image: Invalid parent ID)",
                i + 1
            ));
        }
        kept.push(i);
    }
    let mut blobs = Vec::new();
    let mut seen = HashSet::new();
    // Base first, as containers/image lists them.
    for &i in &kept {
        let digest = &manifest.fs_layers[i].blob_sum;
        if seen.insert(digest.as_str()) {
            match blob_digest(digest, i, total) {
                Ok(digest) => blobs.push(digest),
                Err(why) => return Reading::refused(why),
            }
        }
    }
    Reading {
        before: Ok(blobs),
        after: Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> String {
        format!("sha256:{}", format!("{n:02x}").repeat(32))
    }

    fn id(n: u8) -> String {
        format!("{n:02x}").repeat(32)
    }

    /// A history entry: v1 image `n`, its parent `n + 1` (none for the base), and `extra`
    /// JSON members.
    fn entry(n: u8, base: bool, extra: &str) -> serde_json::Value {
        let mut v1 = serde_json::json!({
            "id": id(n),
            "created": "2016-06-01T12:00:00.123456789Z",
            "architecture": "amd64",
            "os": "linux",
            "container_config": {"Cmd": ["/bin/sh", "-c", "true"]},
        });
        if !base {
            v1["parent"] = id(n + 1).into();
        }
        let extra: serde_json::Value = serde_json::from_str(&format!("{{{extra}}}")).unwrap();
        for (k, v) in extra.as_object().unwrap() {
            v1[k] = v.clone();
        }
        serde_json::json!({ "v1Compatibility": v1.to_string() })
    }

    /// A schema 1 payload with these layers (top first) and history entries.
    fn payload(blobs: &[String], history: Vec<serde_json::Value>) -> String {
        let fs_layers: Vec<_> = blobs
            .iter()
            .map(|b| serde_json::json!({ "blobSum": b }))
            .collect();
        serde_json::to_string_pretty(&serde_json::json!({
            "schemaVersion": 1,
            "name": "library/app",
            "tag": "v1",
            "architecture": "amd64",
            "fsLayers": fs_layers,
            "history": history,
        }))
        .unwrap()
    }

    /// `payload` signed as libtrust's pretty JWS lays it out: the payload up to its
    /// closing brace, the signatures, and the cut-off tail in the protected header.
    fn sign(payload: &str) -> Vec<u8> {
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let length = payload.rfind('}').unwrap();
        let tail = &payload[length..];
        let protected = serde_json::json!({ "formatLength": length, "formatTail": b64(tail.as_bytes()), "time": "2016-06-01T12:00:00Z" });
        format!(
            "{},\n   \"signatures\": [{{\"header\": {{\"alg\": \"ES256\"}}, \"signature\": \"c2ln\", \"protected\": \"{}\"}}]\n}}",
            &payload[..length],
            b64(protected.to_string().as_bytes())
        )
        .into_bytes()
    }

    fn downloads(manifest: &Schema1Manifest, pulls: Schema1Pulls) -> Result<Vec<String>, String> {
        match manifest.plan(pulls) {
            Plan::Refused(why) => Err(why),
            Plan::Download { blobs, after } => after.clone().map(|()| blobs.to_vec()),
        }
    }

    #[test]
    fn runtimes_and_what_they_do_with_schema_1() {
        for (name, version, pulls) in [
            ("containerd", "1.6.20~ds1", Some(Schema1Pulls::Converted)),
            ("containerd", "v1.7.27", Some(Schema1Pulls::Converted)),
            ("containerd", "v1.7.23-k3s2", Some(Schema1Pulls::Converted)),
            ("containerd", "v2.0.0", Some(Schema1Pulls::Refused)),
            ("containerd", "v2.1.4", Some(Schema1Pulls::Refused)),
            ("containerd", "", Some(Schema1Pulls::Refused)),
            ("cri-o", "1.31.3", Some(Schema1Pulls::Copied)),
            ("docker", "24.0.7", None),
            ("", "1.7.27", None),
        ] {
            assert_eq!(
                Schema1Pulls::of_runtime(name, version),
                pulls,
                "{name} {version}"
            );
        }
    }

    #[test]
    fn a_nodes_runtime_as_the_kubelet_reports_it() {
        for (reported, pulls) in [
            ("containerd://1.7.27", Some(Schema1Pulls::Converted)),
            ("containerd://2.0.5", Some(Schema1Pulls::Refused)),
            ("containerd://v1.7.23-k3s2", Some(Schema1Pulls::Converted)),
            ("cri-o://1.31.3", Some(Schema1Pulls::Copied)),
            ("docker://28.0.1", None),
            ("containerd", None),
            ("", None),
        ] {
            assert_eq!(Schema1Pulls::of_node_runtime(reported), pulls, "{reported}");
        }
    }

    #[test]
    fn containerd_downloads_each_blob_once_except_those_the_history_marks_empty() {
        // Top first: a throwaway entry, a Size 0 entry, a real layer, the same real
        // layer again (downloaded once), the base layer.
        let blobs = [digest(1), digest(2), digest(3), digest(3), digest(4)];
        let history = vec![
            entry(1, false, r#""throwaway": true"#),
            entry(2, false, r#""Size": 0"#),
            entry(3, false, r#""Size": 120"#),
            entry(4, false, ""),
            entry(5, true, r#""throwaway": false"#),
        ];
        let body = sign(&payload(&blobs, history));
        let manifest = Schema1Manifest::read(&body, SIGNED);
        assert_eq!(
            downloads(&manifest, Schema1Pulls::Converted),
            Ok(vec![digest(3), digest(4)])
        );
        // CRI-O copies every blob, empty ones too (each once).
        let ids_chain = vec![
            entry(1, false, r#""throwaway": true"#),
            entry(2, false, ""),
            entry(3, false, ""),
            entry(4, false, ""),
            entry(5, true, ""),
        ];
        let body = sign(&payload(&blobs, ids_chain));
        let manifest = Schema1Manifest::read(&body, SIGNED);
        assert_eq!(
            downloads(&manifest, Schema1Pulls::Copied),
            Ok(vec![digest(4), digest(3), digest(2), digest(1)])
        );
        // containerd 2 refuses it whatever it holds.
        let why = downloads(&manifest, Schema1Pulls::Refused).unwrap_err();
        assert!(why.contains("containerd 2.0 and later refuse"), "{why}");
    }

    #[test]
    fn what_containerd_refuses_before_a_download() {
        let one = |extra: &str| vec![entry(1, true, extra)];
        let cases: Vec<(Vec<u8>, &str, &str)> = vec![
            // Unsigned under the signed type: nothing to strip.
            (
                payload(&[digest(1)], one("")).into_bytes(),
                SIGNED,
                "has no signatures",
            ),
            (
                sign(&payload(&[digest(1), digest(2)], one(""))),
                SIGNED,
                "history and layer mismatch",
            ),
            (
                sign(&payload(&[digest(1)], one(r#""throwaway": "yes""#))),
                SIGNED,
                "history entry 1 of 1",
            ),
            (
                sign(&payload(&[digest(1)], one(r#""created": "yesterday""#))),
                SIGNED,
                "history entry 1 of 1 is not a v1 image description of that form: a value of the wrong type",
            ),
            (
                sign(&payload(&["sha256:../../etc".into()], one(""))),
                SIGNED,
                "invalid digest",
            ),
            // The unsigned media type: containerd does not convert it.
            (
                payload(&[digest(1)], one("")).into_bytes(),
                UNSIGNED,
                "unsigned schema 1",
            ),
        ];
        for (body, media_type, want) in cases {
            let manifest = Schema1Manifest::read(&body, media_type);
            match manifest.plan(Schema1Pulls::Converted) {
                Plan::Refused(why) => assert!(why.contains(want), "{want}: {why}"),
                Plan::Download { blobs, .. } => panic!("{want}: downloads {blobs:?}"),
            }
        }
        // Extra keys beside fsLayers.
        let mut doc: serde_json::Value =
            serde_json::from_str(&payload(&[digest(1)], one(""))).unwrap();
        doc["layers"] = serde_json::json!([]);
        let body = sign(&serde_json::to_string_pretty(&doc).unwrap());
        match Schema1Manifest::read(&body, SIGNED).plan(Schema1Pulls::Converted) {
            Plan::Refused(why) => assert!(why.contains("extra keys"), "{why}"),
            Plan::Download { .. } => panic!("extra keys downloaded"),
        }
        // A throwaway layer's invalid digest is never asked for, so never refused.
        let body = sign(&payload(
            &["sha256:bad".into()],
            one(r#""throwaway": true"#),
        ));
        assert_eq!(
            downloads(
                &Schema1Manifest::read(&body, SIGNED),
                Schema1Pulls::Converted
            ),
            Ok(vec![])
        );
    }

    #[test]
    fn what_containerd_refuses_once_the_blobs_are_in() {
        // A repeated blob's second history entry is read only by the conversion.
        let history = vec![entry(1, false, ""), entry(2, true, r#""created": 5"#)];
        let body = sign(&payload(&[digest(1), digest(1)], history));
        match Schema1Manifest::read(&body, SIGNED).plan(Schema1Pulls::Converted) {
            Plan::Download { blobs, after } => {
                assert_eq!(blobs, [digest(1)]);
                let why = after.clone().unwrap_err();
                assert!(why.contains("history entry 2 of 2"), "{why}");
            }
            Plan::Refused(why) => panic!("refused before downloading: {why}"),
        }
        // The first entry becomes the image config: a wrong-typed field fails it.
        let history = vec![entry(1, true, r#""config": {"Env": "PATH=/bin"}"#)];
        let body = sign(&payload(&[digest(1)], history));
        let why = downloads(
            &Schema1Manifest::read(&body, SIGNED),
            Schema1Pulls::Converted,
        )
        .unwrap_err();
        assert!(why.contains("failed to unmarshal image"), "{why}");
        // No history at all.
        let body = sign(&payload(&[], vec![]));
        let why = downloads(
            &Schema1Manifest::read(&body, SIGNED),
            Schema1Pulls::Converted,
        )
        .unwrap_err();
        assert!(why.contains("no history"), "{why}");
    }

    #[test]
    fn what_containers_image_refuses() {
        let chain = |n: usize| {
            (0..n)
                .map(|i| entry(i as u8 + 1, i + 1 == n, ""))
                .collect::<Vec<_>>()
        };
        let blobs: Vec<String> = (1..=3).map(digest).collect();
        // Unsigned documents are read too.
        let body = payload(&blobs, chain(3));
        assert_eq!(
            downloads(
                &Schema1Manifest::read(body.as_bytes(), UNSIGNED),
                Schema1Pulls::Copied
            )
            .map(|b| b.len()),
            Ok(3)
        );
        let mut broken = chain(3);
        broken[0] = entry(9, false, "");
        let mut bad_id = chain(3);
        bad_id[1] = serde_json::json!({"v1Compatibility": r#"{"id":"short","parent":""}"#});
        let mut based = chain(3);
        based[2] = entry(3, false, "");
        let cases: Vec<(String, &str)> = vec![
            (payload(&blobs, broken), "Invalid parent ID"),
            (payload(&blobs, bad_id), "image ID is invalid"),
            (payload(&blobs, based), "base layer"),
            (payload(&blobs[..2], chain(3)), "length of history"),
            (payload(&[], vec![]), "no FSLayers"),
            (
                payload(&blobs, chain(3)).replace("\"schemaVersion\": 1", "\"schemaVersion\": 2"),
                "unsupported schema version",
            ),
        ];
        for (body, want) in cases {
            match Schema1Manifest::read(body.as_bytes(), UNSIGNED).plan(Schema1Pulls::Copied) {
                Plan::Refused(why) => assert!(why.contains(want), "{want}: {why}"),
                Plan::Download { blobs, .. } => panic!("{want}: downloads {blobs:?}"),
            }
        }
        // An entry repeating the next one's ID is dropped with its layer.
        let mut repeated = chain(3);
        repeated.insert(1, entry(2, false, ""));
        let blobs4 = [digest(1), digest(7), digest(2), digest(3)];
        let body = payload(&blobs4, repeated);
        assert_eq!(
            downloads(
                &Schema1Manifest::read(body.as_bytes(), UNSIGNED),
                Schema1Pulls::Copied
            ),
            Ok(vec![digest(3), digest(2), digest(1)])
        );
    }
}
