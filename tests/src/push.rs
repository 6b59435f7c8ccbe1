//! Building tiny images as OCI layouts and pushing them to a [`Registry`].

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::http_client::Endpoint;
use crate::registry::Registry;
use crate::util::require_tool;

/// Upper bound for one `skopeo copy`.
const SKOPEO_TIMEOUT: Duration = Duration::from_secs(60);
/// Parallel connections used by [`push_tags`].
const TAG_WORKERS: usize = 8;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// The manifest flavour [`push_image`] produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageFormat {
    /// A single OCI image manifest (linux/amd64).
    Oci,
    /// A single Docker image manifest, schema 2 (linux/amd64).
    DockerV2S2,
    /// An OCI image index with linux/amd64 and linux/arm64/v8 OCI manifests.
    OciIndex,
    /// A Docker manifest list with linux/amd64 and linux/arm64/v8 Docker schema 2 manifests.
    DockerManifestList,
    /// An OCI image index with one OCI manifest per `ARCH[/VARIANT]` given (all linux).
    OciIndexOf(&'static [&'static str]),
}

impl ImageFormat {
    /// Every format, for table-driven tests.
    pub const ALL: [ImageFormat; 4] = [
        ImageFormat::Oci,
        ImageFormat::DockerV2S2,
        ImageFormat::OciIndex,
        ImageFormat::DockerManifestList,
    ];

    /// Media type of the top-level manifest (what `Content-Type` a registry returns).
    pub fn media_type(self) -> &'static str {
        match self {
            ImageFormat::Oci => OCI_MANIFEST,
            ImageFormat::DockerV2S2 => DOCKER_MANIFEST,
            ImageFormat::OciIndex | ImageFormat::OciIndexOf(_) => OCI_INDEX,
            ImageFormat::DockerManifestList => DOCKER_LIST,
        }
    }

    /// Whether the top-level manifest is an index / manifest list.
    pub fn is_list(self) -> bool {
        matches!(
            self,
            ImageFormat::OciIndex | ImageFormat::DockerManifestList | ImageFormat::OciIndexOf(_)
        )
    }

    fn is_docker(self) -> bool {
        matches!(
            self,
            ImageFormat::DockerV2S2 | ImageFormat::DockerManifestList
        )
    }
}

/// One platform-specific manifest inside an index / manifest list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformManifest {
    /// `linux`.
    pub os: String,
    /// `amd64` or `arm64`.
    pub architecture: String,
    /// Digest of that platform's manifest.
    pub digest: String,
}

/// What [`push_image`] pushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedImage {
    /// `host/repo:tag`, with the registry's [`Registry::host`].
    pub reference: String,
    /// Digest of the manifest (or index / manifest list), `sha256:...`.
    pub digest: String,
    /// Media type of that manifest.
    pub media_type: String,
    /// The per-platform manifests of an index / list (empty for single manifests).
    pub platforms: Vec<PlatformManifest>,
}

/// A content-addressed blob.
#[derive(Clone)]
struct Blob {
    media_type: &'static str,
    digest: String,
    bytes: Vec<u8>,
}

impl Blob {
    fn new(media_type: &'static str, bytes: Vec<u8>) -> Blob {
        Blob {
            media_type,
            digest: sha256_digest(&bytes),
            bytes,
        }
    }

    fn descriptor(&self) -> serde_json::Value {
        json!({
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.bytes.len(),
        })
    }
}

/// A built image: its blobs, platform manifests and the top-level manifest.
struct BuiltImage {
    /// Configs and layers.
    blobs: Vec<Blob>,
    /// Platform manifests of a list (pushed by digest before the list).
    children: Vec<(PlatformManifest, Blob)>,
    /// The manifest the tag points at.
    top: Blob,
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let mut s = String::with_capacity(71);
    s.push_str("sha256:");
    for b in hash.iter() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn gzip_tar_layer(file_content: &[u8]) -> Result<(Vec<u8>, String)> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_ustar();
    header.set_size(file_content.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    builder.append_data(&mut header, "pullwatch-image.txt", file_content)?;
    let tar = builder.into_inner()?;
    let diff_id = sha256_digest(&tar);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar)?;
    Ok((gz.finish()?, diff_id))
}

fn build_platform(
    repo: &str,
    tag: &str,
    arch: &str,
    docker: bool,
    blobs: &mut Vec<Blob>,
) -> Result<Blob> {
    let content = format!("pullwatch test image {repo}:{tag} linux/{arch}\n");
    let (layer_bytes, diff_id) = gzip_tar_layer(content.as_bytes())?;
    let layer = Blob::new(if docker { DOCKER_LAYER } else { OCI_LAYER }, layer_bytes);
    let config_json = json!({
        "architecture": arch,
        "os": "linux",
        "created": "2024-01-01T00:00:00Z",
        "config": {
            "Labels": { "dev.pullwatch.test.ref": format!("{repo}:{tag}") },
            "Cmd": ["/bin/true"],
        },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        "history": [ { "created": "2024-01-01T00:00:00Z", "created_by": "pullwatch-testbench" } ],
    });
    let config = Blob::new(
        if docker { DOCKER_CONFIG } else { OCI_CONFIG },
        serde_json::to_vec(&config_json)?,
    );
    let manifest_type = if docker {
        DOCKER_MANIFEST
    } else {
        OCI_MANIFEST
    };
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": config.descriptor(),
        "layers": [layer.descriptor()],
    });
    blobs.push(config);
    blobs.push(layer);
    Ok(Blob::new(manifest_type, serde_json::to_vec(&manifest)?))
}

fn build_image(repo: &str, tag: &str, format: ImageFormat) -> Result<BuiltImage> {
    let docker = format.is_docker();
    let mut blobs = Vec::new();
    if !format.is_list() {
        let top = build_platform(repo, tag, "amd64", docker, &mut blobs)?;
        return Ok(BuiltImage {
            blobs,
            children: Vec::new(),
            top,
        });
    }
    let mut children = Vec::new();
    let mut descriptors = Vec::new();
    let platforms: &[&str] = match format {
        ImageFormat::OciIndexOf(platforms) => platforms,
        _ => &["amd64", "arm64/v8"],
    };
    for platform in platforms {
        let (arch, variant) = platform.split_once('/').unwrap_or((platform, ""));
        let m = build_platform(repo, tag, arch, docker, &mut blobs)?;
        let mut d = m.descriptor();
        d["platform"] = json!({ "architecture": arch, "os": "linux" });
        if !variant.is_empty() {
            d["platform"]["variant"] = json!(variant);
        }
        descriptors.push(d);
        children.push((
            PlatformManifest {
                os: "linux".into(),
                architecture: arch.into(),
                digest: m.digest.clone(),
            },
            m,
        ));
    }
    let list_type = format.media_type();
    let list = json!({
        "schemaVersion": 2,
        "mediaType": list_type,
        "manifests": descriptors,
    });
    Ok(BuiltImage {
        blobs,
        children,
        top: Blob::new(list_type, serde_json::to_vec(&list)?),
    })
}

/// Writes `image` as an OCI image layout in `dir`, tagged `layout_tag` in `index.json`.
fn write_layout(dir: &Path, image: &BuiltImage, layout_tag: &str) -> Result<()> {
    let blob_dir = dir.join("blobs").join("sha256");
    std::fs::create_dir_all(&blob_dir)?;
    let all = image
        .blobs
        .iter()
        .chain(image.children.iter().map(|(_, b)| b))
        .chain(std::iter::once(&image.top));
    for blob in all {
        let hex = blob.digest.trim_start_matches("sha256:");
        std::fs::write(blob_dir.join(hex), &blob.bytes)?;
    }
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let mut top = image.top.descriptor();
    top["annotations"] = json!({ "org.opencontainers.image.ref.name": layout_tag });
    let index = json!({ "schemaVersion": 2, "manifests": [top] });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index)?)?;
    Ok(())
}

/// Writes `image` for skopeo's `dir:` transport: `manifest.json` (the tag's manifest),
/// `<hex>.manifest.json` per platform manifest and one file per blob named by its hex.
///
/// Used for the Docker formats: skopeo 1.9's `oci:` transport only looks at `index.json`
/// entries with OCI media types, and converting with `--format v2s2` would change digests.
fn write_dir_layout(dir: &Path, image: &BuiltImage) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("version"), "Directory Transport Version: 1.1\n")?;
    for blob in &image.blobs {
        let hex = blob.digest.trim_start_matches("sha256:");
        std::fs::write(dir.join(hex), &blob.bytes)?;
    }
    for (_, manifest) in &image.children {
        let hex = manifest.digest.trim_start_matches("sha256:");
        std::fs::write(dir.join(format!("{hex}.manifest.json")), &manifest.bytes)?;
    }
    std::fs::write(dir.join("manifest.json"), &image.top.bytes)?;
    Ok(())
}

fn check_repo_and_tag(repo: &str, tag: &str) -> Result<()> {
    let repo_ok = !repo.is_empty()
        && repo
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/".contains(c));
    let tag_ok = !tag.is_empty()
        && tag.len() <= 128
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if !repo_ok {
        bail!("invalid repository name {repo:?}");
    }
    if !tag_ok {
        bail!("invalid tag {tag:?}");
    }
    Ok(())
}

/// Builds a tiny image (one gzip'd tar layer whose file names `repo:tag` and the platform)
/// and pushes it to `registry` as `repo:tag` in the given format.
///
/// IPv4 registries get the image through `skopeo copy --preserve-digests` from an OCI
/// layout (`oci:DIR:TAG`, OCI formats) or a `dir:` layout (Docker formats) to
/// `docker://HOST/repo:tag`; skopeo 1.9 cannot parse IPv6 literals in references, so IPv6
/// registries get the same bytes through the registry API directly. The digests are
/// identical either way, and pushing the same `repo:tag` and format again yields the same
/// digest.
pub async fn push_image(
    registry: &Registry,
    repo: &str,
    tag: &str,
    format: ImageFormat,
) -> Result<PushedImage> {
    check_repo_and_tag(repo, tag)?;
    let image = build_image(repo, tag, format)?;
    let digest = if registry.addr().is_ipv6() {
        push_native(registry.endpoint(), &image, repo, tag).await?
    } else {
        push_skopeo(registry, &image, repo, tag, format).await?
    };
    if digest != image.top.digest {
        bail!(
            "pushed {repo}:{tag} but the registry has digest {digest}, expected {}",
            image.top.digest
        );
    }
    Ok(PushedImage {
        reference: format!("{}/{repo}:{tag}", registry.host()),
        digest,
        media_type: format.media_type().to_owned(),
        platforms: image.children.iter().map(|(p, _)| p.clone()).collect(),
    })
}

async fn push_skopeo(
    registry: &Registry,
    image: &BuiltImage,
    repo: &str,
    tag: &str,
    format: ImageFormat,
) -> Result<String> {
    let skopeo = require_tool("skopeo")?;
    let dir = tempfile::Builder::new()
        .prefix("pullwatch-layout-")
        .tempdir()
        .context("creating layout temp dir")?;
    let layout = dir.path().join("layout");
    let source = if format.is_docker() {
        write_dir_layout(&layout, image)?;
        format!("dir:{}", layout.display())
    } else {
        write_layout(&layout, image, "img")?;
        format!("oci:{}:img", layout.display())
    };
    let digest_file = dir.path().join("digest");
    let mut cmd = tokio::process::Command::new(skopeo);
    cmd.arg("--insecure-policy")
        .arg("copy")
        .arg("--quiet")
        .arg("--preserve-digests")
        .arg("--digestfile")
        .arg(&digest_file);
    if format.is_list() {
        cmd.arg("--all");
    }
    match registry.cert_dir() {
        Some(cert_dir) => {
            cmd.arg("--dest-cert-dir").arg(cert_dir);
        }
        None => {
            cmd.arg("--dest-tls-verify=false");
        }
    }
    if let Some((user, pass)) = registry.credentials() {
        cmd.arg("--dest-creds").arg(format!("{user}:{pass}"));
    }
    cmd.arg(source)
        .arg(format!("docker://{}/{repo}:{tag}", registry.host()))
        .env("TMPDIR", dir.path())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    run_async(&mut cmd, SKOPEO_TIMEOUT)
        .await
        .with_context(|| format!("skopeo copy to {}/{repo}:{tag}", registry.host()))?;
    let digest = std::fs::read_to_string(&digest_file)
        .context("reading skopeo --digestfile")?
        .trim()
        .to_owned();
    drop(dir);
    Ok(digest)
}

/// Runs an async command with a timeout; Err with stdout/stderr unless it exits 0.
async fn run_async(cmd: &mut tokio::process::Command, timeout: Duration) -> Result<()> {
    let desc = format!("{:?}", cmd.as_std());
    let output = tokio::time::timeout(timeout, cmd.output())
        .await
        .map_err(|_| anyhow!("{desc} did not finish within {timeout:?}; killed"))?
        .with_context(|| format!("spawning {desc}"))?;
    if !output.status.success() {
        bail!(
            "{desc} failed with {}\nstdout:\n{}\nstderr:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// Uploads every blob and manifest over the registry API; returns the tag's digest.
async fn push_native(
    endpoint: &Endpoint,
    image: &BuiltImage,
    repo: &str,
    tag: &str,
) -> Result<String> {
    let mut conn = endpoint.connect().await?;
    for blob in &image.blobs {
        let head = conn
            .send(
                http::Method::HEAD,
                &format!("/v2/{repo}/blobs/{}", blob.digest),
                &[],
                Vec::new(),
                true,
            )
            .await?;
        if head.status == 200 {
            continue;
        }
        // distribution 2.8 ignores a digest on POST, so: POST for a session, then one PUT.
        let start = conn
            .send(
                http::Method::POST,
                &format!("/v2/{repo}/blobs/uploads/"),
                &[],
                Vec::new(),
                true,
            )
            .await?;
        let location = match (start.status, start.header("location")) {
            (202, Some(l)) => upload_path(l),
            _ => bail!(
                "starting blob upload to {repo}: status {} body {}",
                start.status,
                start.text()
            ),
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let resp = conn
            .send(
                http::Method::PUT,
                &format!("{location}{sep}digest={}", blob.digest),
                &[("content-type", "application/octet-stream")],
                blob.bytes.clone(),
                true,
            )
            .await?;
        if resp.status != 201 {
            bail!(
                "uploading blob {} to {repo}: status {} body {}",
                blob.digest,
                resp.status,
                resp.text()
            );
        }
    }
    for (_, manifest) in &image.children {
        put_manifest(&mut conn, repo, &manifest.digest, manifest).await?;
    }
    put_manifest(&mut conn, repo, tag, &image.top).await
}

/// The path-and-query of an upload `Location` (absolute URL or absolute path).
fn upload_path(location: &str) -> String {
    match location.split_once("://") {
        Some((_, rest)) => match rest.find('/') {
            Some(i) => rest[i..].to_owned(),
            None => "/".to_owned(),
        },
        None => location.to_owned(),
    }
}

async fn put_manifest(
    conn: &mut crate::http_client::Conn,
    repo: &str,
    reference: &str,
    manifest: &Blob,
) -> Result<String> {
    let resp = conn
        .send(
            http::Method::PUT,
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("content-type", manifest.media_type)],
            manifest.bytes.clone(),
            true,
        )
        .await?;
    if resp.status != 201 {
        bail!(
            "PUT manifest {repo}:{reference}: status {} body {}",
            resp.status,
            resp.text()
        );
    }
    resp.header("docker-content-digest")
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("PUT manifest {repo}:{reference}: no Docker-Content-Digest"))
}

/// Pushes one OCI image as `repo:tags[0]` (like [`push_image`]) and then points every
/// other tag at the same manifest with plain `PUT /v2/<repo>/manifests/<tag>` requests
/// over a few keep-alive connections (basic auth when the registry has credentials).
///
/// Returns the digest all the tags share. Practical for thousands of tags.
pub async fn push_tags(registry: &Registry, repo: &str, tags: &[String]) -> Result<String> {
    let Some(first) = tags.first() else {
        bail!("push_tags needs at least one tag");
    };
    for tag in tags {
        check_repo_and_tag(repo, tag)?;
    }
    let pushed = push_image(registry, repo, first, ImageFormat::Oci).await?;
    let manifest = Blob::new(
        OCI_MANIFEST,
        build_image(repo, first, ImageFormat::Oci)?.top.bytes,
    );
    if manifest.digest != pushed.digest {
        bail!("rebuilt manifest differs from the pushed one");
    }
    let rest: Arc<Vec<String>> = Arc::new(tags[1..].to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..TAG_WORKERS.min(rest.len()) {
        let endpoint = registry.endpoint().clone();
        let rest = rest.clone();
        let next = next.clone();
        let manifest = manifest.clone();
        let repo = repo.to_owned();
        workers.spawn(async move {
            let mut conn = endpoint.connect().await?;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(tag) = rest.get(i) else {
                    return anyhow::Ok(());
                };
                let first_try = put_manifest(&mut conn, &repo, tag, &manifest).await;
                if first_try.is_err() {
                    // The server may have closed the keep-alive connection; retry once.
                    conn = endpoint.connect().await?;
                    put_manifest(&mut conn, &repo, tag, &manifest).await?;
                }
            }
        });
    }
    while let Some(res) = workers.join_next().await {
        res.context("tag worker panicked")??;
    }
    Ok(pushed.digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_differ_per_tag_and_are_deterministic() {
        let a = build_image("r", "a", ImageFormat::Oci).unwrap();
        let a2 = build_image("r", "a", ImageFormat::Oci).unwrap();
        let b = build_image("r", "b", ImageFormat::Oci).unwrap();
        assert_eq!(a.top.digest, a2.top.digest);
        assert_ne!(a.top.digest, b.top.digest);
        let list = build_image("r", "a", ImageFormat::DockerManifestList).unwrap();
        assert_eq!(list.children.len(), 2);
        let v: serde_json::Value = serde_json::from_slice(&list.top.bytes).unwrap();
        assert_eq!(v["mediaType"], DOCKER_LIST);
        assert_eq!(v["manifests"][1]["platform"]["architecture"], "arm64");
    }

    #[test]
    fn rejects_bad_names() {
        assert!(check_repo_and_tag("Upper", "t").is_err());
        assert!(check_repo_and_tag("ok/repo", "bad:tag").is_err());
        assert!(check_repo_and_tag("ok/repo", "v1.2-x_y").is_ok());
    }
}

/// Raw pushes for states no image builder makes (artifacts, unlabelled or nested index
/// entries, foreign layers, wrong sizes), and deletes through the registry API.
pub mod raw {
    use anyhow::{Result, bail};
    use serde_json::json;

    use super::{gzip_tar_layer, sha256_digest, upload_path};
    use crate::registry::Registry;

    pub const OCI_MANIFEST: &str = super::OCI_MANIFEST;
    pub const OCI_INDEX: &str = super::OCI_INDEX;
    pub const OCI_CONFIG: &str = super::OCI_CONFIG;
    pub const OCI_LAYER: &str = super::OCI_LAYER;
    pub const DOCKER_MANIFEST: &str = super::DOCKER_MANIFEST;
    pub const DOCKER_CONFIG: &str = super::DOCKER_CONFIG;
    pub const DOCKER_LAYER: &str = super::DOCKER_LAYER;
    pub const DOCKER_FOREIGN_LAYER: &str =
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";

    /// A gzipped tar layer with one file holding `content`: (bytes, diff_id).
    pub fn layer(content: &str) -> Result<(Vec<u8>, String)> {
        gzip_tar_layer(content.as_bytes())
    }

    /// An image config for `os/arch` with these `diff_ids`.
    pub fn config(arch: &str, diff_ids: &[&str], label: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "architecture": arch,
            "os": "linux",
            "config": { "Labels": { "dev.pullwatch.test": label }, "Cmd": ["/bin/true"] },
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
        }))
        .unwrap_or_default()
    }

    /// A descriptor of `bytes` as `media_type`.
    pub fn descriptor(media_type: &str, bytes: &[u8]) -> serde_json::Value {
        json!({ "mediaType": media_type, "digest": sha256_digest(bytes), "size": bytes.len() })
    }

    /// An image manifest document of `media_type` (OCI or Docker schema 2) from its
    /// config and layer descriptors.
    pub fn manifest(
        media_type: &str,
        config: serde_json::Value,
        layers: Vec<serde_json::Value>,
    ) -> serde_json::Value {
        json!({ "schemaVersion": 2, "mediaType": media_type, "config": config, "layers": layers })
    }

    /// An OCI image index document of these entries.
    pub fn index(entries: Vec<serde_json::Value>) -> serde_json::Value {
        json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries })
    }

    /// An index entry for the manifest `body`, with its platform when given.
    pub fn entry(body: &[u8], platform: Option<(&str, &str)>) -> serde_json::Value {
        let mut entry = descriptor(OCI_MANIFEST, body);
        if let Some((os, arch)) = platform {
            entry["platform"] = json!({ "os": os, "architecture": arch });
        }
        entry
    }

    /// The layer distribution's schema 1 conversion writes for a history entry marked
    /// `empty_layer` (a gzipped empty tar).
    pub const EMPTY_TAR_GZ: &str =
        "sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4";

    /// Pushes, as `repo:v1`, a signed Docker schema 1 manifest with one layer and,
    /// above it, one empty (`throwaway`) layer: a Docker schema 2 image converted by the
    /// registry itself (as it serves clients that accept neither schema 2 nor OCI; the
    /// registry needs [`crate::RegistryOptions::schema1`]), then put back as schema 1.
    /// Returns the layer's digest.
    pub async fn schema1_image(registry: &Registry, repo: &str) -> Result<String> {
        let (layer, diff_id) = layer(&format!("{repo} schema 1"))?;
        let config = serde_json::to_vec(&json!({
            "architecture": "amd64",
            "os": "linux",
            "config": { "Cmd": ["/bin/true"] },
            "rootfs": { "type": "layers", "diff_ids": [diff_id] },
            "history": [
                { "created": "2016-06-01T12:00:00Z", "created_by": "ADD file /" },
                { "created": "2016-06-01T12:00:01Z", "created_by": "CMD /bin/true", "empty_layer": true },
            ],
        }))?;
        push_blobs(registry, repo, &[&config, &layer]).await?;
        let schema2 = manifest(
            DOCKER_MANIFEST,
            descriptor(DOCKER_CONFIG, &config),
            vec![descriptor(DOCKER_LAYER, &layer)],
        );
        put_document(registry, repo, "schema2", &schema2).await?;
        let converted = registry
            .request(
                http::Method::GET,
                &format!("/v2/{repo}/manifests/schema2"),
                &[],
                Vec::new(),
            )
            .await?;
        let signed = "application/vnd.docker.distribution.manifest.v1+prettyjws";
        if converted.header("content-type") != Some(signed) {
            bail!(
                "the registry served {repo}:schema2 as {:?}, not schema 1 (is schema 1 enabled?)",
                converted.header("content-type")
            );
        }
        let body = converted.text();
        if !(body.contains(r#"\"throwaway\":true"#) && body.contains(EMPTY_TAR_GZ)) {
            bail!("the registry's schema 1 conversion has no throwaway layer: {body}");
        }
        put_manifest(registry, repo, "v1", signed, converted.body.as_ref()).await?;
        Ok(sha256_digest(&layer))
    }

    /// Uploads each blob to `repo`; their digests.
    pub async fn push_blobs(
        registry: &Registry,
        repo: &str,
        blobs: &[&[u8]],
    ) -> Result<Vec<String>> {
        let mut digests = Vec::with_capacity(blobs.len());
        for blob in blobs {
            digests.push(push_blob(registry, repo, blob).await?);
        }
        Ok(digests)
    }

    /// `PUT`s a manifest or index `document` under `reference`, as its own `mediaType`;
    /// returns the digest the registry answered.
    pub async fn put_document(
        registry: &Registry,
        repo: &str,
        reference: &str,
        document: &serde_json::Value,
    ) -> Result<String> {
        let media_type = document["mediaType"].as_str().unwrap_or(OCI_MANIFEST);
        put_manifest(
            registry,
            repo,
            reference,
            media_type,
            &serde_json::to_vec(document)?,
        )
        .await
    }

    /// Uploads a blob to `repo` (skipped when it is there); returns its digest.
    pub async fn push_blob(registry: &Registry, repo: &str, bytes: &[u8]) -> Result<String> {
        let digest = sha256_digest(bytes);
        let start = registry
            .request(
                http::Method::POST,
                &format!("/v2/{repo}/blobs/uploads/"),
                &[],
                Vec::new(),
            )
            .await?;
        let location = match (start.status, start.header("location")) {
            (202, Some(l)) => upload_path(l),
            _ => bail!("starting an upload to {repo}: status {}", start.status),
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let put = registry
            .request(
                http::Method::PUT,
                &format!("{location}{sep}digest={digest}"),
                &[("content-type", "application/octet-stream")],
                bytes.to_vec(),
            )
            .await?;
        if put.status != 201 {
            bail!(
                "uploading {digest} to {repo}: status {} {}",
                put.status,
                put.text()
            );
        }
        Ok(digest)
    }

    /// `PUT`s a manifest document under `reference` (a tag or its digest); returns the
    /// digest the registry answered.
    pub async fn put_manifest(
        registry: &Registry,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Result<String> {
        let resp = registry
            .request(
                http::Method::PUT,
                &format!("/v2/{repo}/manifests/{reference}"),
                &[("content-type", media_type)],
                body.to_vec(),
            )
            .await?;
        if resp.status != 201 {
            bail!(
                "PUT manifest {repo}:{reference}: status {} {}",
                resp.status,
                resp.text()
            );
        }
        Ok(resp
            .header("docker-content-digest")
            .map(str::to_string)
            .unwrap_or_else(|| sha256_digest(body)))
    }

    /// Deletes blob `digest` from `repo` (`storage.delete.enabled`), as garbage
    /// collection or a lifecycle rule would.
    pub async fn delete_blob(registry: &Registry, repo: &str, digest: &str) -> Result<()> {
        let resp = registry
            .request(
                http::Method::DELETE,
                &format!("/v2/{repo}/blobs/{digest}"),
                &[],
                Vec::new(),
            )
            .await?;
        if resp.status != 202 {
            bail!(
                "DELETE blob {repo}@{digest}: status {} {}",
                resp.status,
                resp.text()
            );
        }
        Ok(())
    }
}
