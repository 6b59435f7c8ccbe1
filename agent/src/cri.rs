//! Stage `cri`, the runtime: the node's container runtime over CRI (`runtime.v1`), a
//! tonic client on the runtime's unix socket, and the mapping from CRI errors to check
//! statuses.
//!
//! Endpoints (`--cri-endpoint`):
//! - containerd: `unix:///run/containerd/containerd.sock` (the default)
//! - CRI-O: `unix:///var/run/crio/crio.sock`
//! - k3s / rke2 (embedded containerd): `unix:///run/k3s/containerd/containerd.sock`
//!
//! The channel connects lazily and reconnects on its own: when the runtime restarts, the
//! calls made while it is down fail with [`CriError::Unreachable`] and the next call after
//! it is back goes through, without rebuilding the client.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use pullwatch::cri::image_service_client::ImageServiceClient;
use pullwatch::cri::runtime_service_client::RuntimeServiceClient;
use pullwatch::cri::{
    AuthConfig, Image, ImageFilter, ImageSpec, ImageStatusRequest, ListImagesRequest,
    PullImageRequest, RemoveImageRequest, VersionRequest, VersionResponse,
};
use pullwatch::{CheckOutcome, CheckStatus, RegistryCredential};
use tonic::transport::{Channel, Endpoint};

/// The default CRI endpoint (containerd).
pub(crate) const DEFAULT_ENDPOINT: &str = "unix:///run/containerd/containerd.sock";
/// The CRI API version the agent speaks (sent in `VersionRequest`).
pub(crate) const CRI_API_VERSION: &str = "v1";
/// Images lists of busy nodes exceed tonic's 4 MiB default; the kubelet allows 16 MiB.
const MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

/// Why a CRI call did not return a result.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("invalid CRI endpoint {endpoint:?}: {reason}")]
    Endpoint {
        endpoint: String,
        reason: &'static str,
    },
    /// The runtime answered with an error status.
    #[error("CRI {rpc} failed ({code:?}): {message}")]
    Rpc {
        rpc: &'static str,
        code: tonic::Code,
        message: String,
    },
    /// No answer from the runtime: socket missing, connection refused or reset.
    #[error("container runtime unreachable at {endpoint} ({rpc}): {message}")]
    Unreachable {
        rpc: &'static str,
        endpoint: String,
        message: String,
    },
    #[error("CRI {rpc} did not answer within {after:?}")]
    Timeout { rpc: &'static str, after: Duration },
}

impl CriError {
    /// The label used for this failure in the per-RPC call metrics (a gRPC code name).
    pub(crate) fn code_label(&self) -> &'static str {
        match self {
            CriError::Endpoint { .. } => "InvalidArgument",
            CriError::Rpc { code, .. } => code_name(*code),
            CriError::Unreachable { .. } => "Unavailable",
            CriError::Timeout { .. } => "DeadlineExceeded",
        }
    }

    /// Whether the runtime itself (not the registry behind it) failed: such an error
    /// says nothing about the image.
    pub(crate) fn is_runtime_failure(&self) -> bool {
        matches!(
            self,
            CriError::Endpoint { .. } | CriError::Unreachable { .. }
        )
    }
}

/// Called once per CRI call with the RPC name, the outcome's gRPC code name and latency
/// (the agent's metrics implement it).
pub trait CallObserver: Send + Sync {
    fn observe(&self, rpc: &'static str, code: &'static str, elapsed: Duration);
}

/// Timeouts for CRI calls.
#[derive(Clone, Copy, Debug)]
pub struct CriTimeouts {
    /// Version, ImageStatus, ListImages, RemoveImage.
    pub call: Duration,
    /// PullImage (which, for an absent image, downloads it).
    pub pull: Duration,
}

impl Default for CriTimeouts {
    fn default() -> Self {
        CriTimeouts {
            call: Duration::from_secs(30),
            pull: Duration::from_secs(300),
        }
    }
}

/// A CRI client for one runtime socket. Cheap to clone (the channel is shared).
#[derive(Clone)]
pub struct CriClient {
    endpoint: String,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    timeouts: CriTimeouts,
    observer: Option<Arc<dyn CallObserver>>,
}

impl std::fmt::Debug for CriClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CriClient")
            .field("endpoint", &self.endpoint)
            .field("timeouts", &self.timeouts)
            .finish()
    }
}

/// The socket path of a `unix://` endpoint (a bare absolute path is accepted too).
pub(crate) fn socket_path(endpoint: &str) -> Result<PathBuf, CriError> {
    let path = match endpoint.strip_prefix("unix://") {
        Some(rest) => rest,
        None if endpoint.starts_with('/') => endpoint,
        None => {
            return Err(CriError::Endpoint {
                endpoint: endpoint.to_string(),
                reason: "only unix:// endpoints are supported (CRI listens on a unix socket)",
            });
        }
    };
    if !path.starts_with('/') {
        return Err(CriError::Endpoint {
            endpoint: endpoint.to_string(),
            reason: "the socket path must be absolute (unix:///path/to/socket)",
        });
    }
    Ok(PathBuf::from(path))
}

impl CriClient {
    /// A client for `endpoint`; connects on first use, so this succeeds even while the
    /// runtime is down.
    pub fn new(
        endpoint: &str,
        timeouts: CriTimeouts,
        observer: Option<Arc<dyn CallObserver>>,
    ) -> Result<CriClient, CriError> {
        let path = socket_path(endpoint)?;
        // The URI is required by tonic but never dialled: the connector opens the socket.
        let channel = Endpoint::from_static("http://cri.invalid")
            .connect_timeout(timeouts.call)
            .connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(stream))
                }
            }));
        Ok(CriClient {
            endpoint: endpoint.to_string(),
            runtime: RuntimeServiceClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE_SIZE),
            images: ImageServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE_SIZE),
            timeouts,
            observer,
        })
    }

    /// Runs one call with a deadline, records it, and sorts its failure.
    async fn call<T, F>(&self, rpc: &'static str, timeout: Duration, fut: F) -> Result<T, CriError>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let started = Instant::now();
        let result = match tokio::time::timeout(timeout, fut).await {
            Err(_) => Err(CriError::Timeout {
                rpc,
                after: timeout,
            }),
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(self.sort_status(rpc, status)),
        };
        if let Some(observer) = &self.observer {
            let code = match &result {
                Ok(_) => "OK",
                Err(e) => e.code_label(),
            };
            observer.observe(rpc, code, started.elapsed());
        }
        result
    }

    fn sort_status(&self, rpc: &'static str, status: tonic::Status) -> CriError {
        // A status the runtime sent has no source; one tonic made up from a failed
        // connection or stream carries the transport error as its source.
        let client_side = std::error::Error::source(&status).is_some();
        if client_side
            && matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal
            )
        {
            let mut message = status.message().to_string();
            let mut source = std::error::Error::source(&status);
            while let Some(cause) = source {
                let text = cause.to_string();
                if !message.contains(&text) {
                    message = format!("{message}: {text}");
                }
                source = cause.source();
            }
            return CriError::Unreachable {
                rpc,
                endpoint: self.endpoint.clone(),
                message,
            };
        }
        CriError::Rpc {
            rpc,
            code: status.code(),
            message: status.message().to_string(),
        }
    }

    /// `RuntimeService.Version`: runtime name and version.
    pub async fn version(&self) -> Result<VersionResponse, CriError> {
        let mut client = self.runtime.clone();
        let request = VersionRequest {
            version: CRI_API_VERSION.to_string(),
        };
        self.call("Version", self.timeouts.call, client.version(request))
            .await
    }

    /// `ImageService.ImageStatus`: the image if the node holds it.
    pub async fn image_status(&self, image: &str) -> Result<Option<Image>, CriError> {
        let mut client = self.images.clone();
        let request = ImageStatusRequest {
            image: Some(image_spec(image)),
            verbose: false,
        };
        let response = self
            .call(
                "ImageStatus",
                self.timeouts.call,
                client.image_status(request),
            )
            .await?;
        Ok(response.image)
    }

    /// `ImageService.ListImages`: every image on the node.
    pub async fn list_images(&self) -> Result<Vec<Image>, CriError> {
        let mut client = self.images.clone();
        let request = ListImagesRequest {
            filter: None::<ImageFilter>,
        };
        let response = self
            .call(
                "ListImages",
                self.timeouts.call,
                client.list_images(request),
            )
            .await?;
        Ok(response.images)
    }

    /// `ImageService.PullImage` with `auth` (None: the runtime's own registry config).
    /// Returns the image reference (id) the runtime reports.
    pub async fn pull_image(
        &self,
        image: &str,
        auth: Option<&RegistryCredential>,
    ) -> Result<String, CriError> {
        let mut client = self.images.clone();
        let request = PullImageRequest {
            image: Some(image_spec(image)),
            auth: auth.map(auth_config),
            sandbox_config: None,
        };
        let response = self
            .call("PullImage", self.timeouts.pull, client.pull_image(request))
            .await?;
        Ok(response.image_ref)
    }

    /// `ImageService.RemoveImage` (idempotent: removing an absent image succeeds).
    pub async fn remove_image(&self, image: &str) -> Result<(), CriError> {
        let mut client = self.images.clone();
        let request = RemoveImageRequest {
            image: Some(image_spec(image)),
        };
        self.call(
            "RemoveImage",
            self.timeouts.call,
            client.remove_image(request),
        )
        .await?;
        Ok(())
    }
}

fn image_spec(image: &str) -> ImageSpec {
    ImageSpec {
        image: image.to_string(),
        user_specified_image: image.to_string(),
        ..Default::default()
    }
}

/// The `AuthConfig` the kubelet builds from a keyring entry.
fn auth_config(credential: &RegistryCredential) -> AuthConfig {
    AuthConfig {
        username: credential.username.clone(),
        password: credential.password.clone(),
        auth: String::new(),
        server_address: String::new(),
        identity_token: credential.identity_token.clone().unwrap_or_default(),
        registry_token: credential.registry_token.clone().unwrap_or_default(),
    }
}

/// The gRPC code's canonical name, for metric labels.
pub(crate) fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "Cancelled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

/// The status of a failed `PullImage`, from the runtime's gRPC code and message.
///
/// containerd wraps registry answers into the message (`... 401 Unauthorized`,
/// `... 403 Forbidden`, `... 429 Too Many Requests`, `dial tcp ...: connect: connection
/// refused`, `... not found`); CRI-O does the same with its own wording. The order
/// matters: a message naming a status code wins over the generic "not found".
pub fn classify_pull_error(error: &CriError) -> CheckOutcome {
    let (code, message) = match error {
        CriError::Rpc { code, message, .. } => (*code, message.as_str()),
        CriError::Timeout { rpc, after } => {
            return CheckOutcome::new(
                CheckStatus::RegistryUnavailable,
                format!("{rpc} timed out after {}s", after.as_secs()),
            );
        }
        CriError::Unreachable { .. } | CriError::Endpoint { .. } => {
            return CheckOutcome::new(CheckStatus::UnknownError, error.to_string());
        }
    };
    let lower = message.to_ascii_lowercase();
    let has = |needle: &str| lower.contains(needle);
    let status = if code == tonic::Code::InvalidArgument
        || has("invalid reference format")
        || has("failed to parse image reference")
        || has("invalid image name")
    {
        CheckStatus::BadImageFormat
    } else if has("401 unauthorized")
        || has("pull access denied")
        || has("failed to authorize")
        || has("unauthorized: authentication required")
    {
        CheckStatus::AuthenticationFailure
    } else if has("403 forbidden") || has("denied: requested access to the resource is denied") {
        CheckStatus::AuthorizationFailure
    } else if has_status(&lower, |code| code == b"429")
        || has("too many requests")
        || has("toomanyrequests")
    {
        CheckStatus::RateLimited
    } else if has("connection refused")
        || has("no such host")
        || has("i/o timeout")
        || has("timeout")
        || has("deadline exceeded")
        || has("connection reset")
        || has("network is unreachable")
        || has("no route to host")
        || has("tls: ")
        || has("x509: ")
        || has("server gave http response to https client")
        || has_5xx(&lower)
    {
        CheckStatus::RegistryUnavailable
    } else if code == tonic::Code::NotFound || has("not found") || has("manifest unknown") {
        CheckStatus::Absent
    } else {
        CheckStatus::UnknownError
    };
    CheckOutcome::new(status, message.to_string())
}

/// Whether `message` names an HTTP status code for which `wanted` holds, as a number
/// of its own: not part of a longer number, a digest, a port (`127.0.0.1:42917`) or an
/// address. containerd's messages carry registry addresses, so a bare substring test
/// for "429" would call a registry on port 42917 rate-limited.
fn has_status(message: &str, wanted: impl Fn(&[u8]) -> bool) -> bool {
    let bytes = message.as_bytes();
    let joins_before = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b':' | b'.' | b'/' | b'@');
    let joins_after = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b':' | b'.');
    (0..bytes.len().saturating_sub(2)).any(|i| {
        let code = &bytes[i..i + 3];
        code.iter().all(u8::is_ascii_digit)
            && wanted(code)
            && (i == 0 || !joins_before(bytes[i - 1]))
            && bytes.get(i + 3).is_none_or(|&b| !joins_after(b))
    })
}

/// Whether `message` names an HTTP 5xx answer (`500 Internal Server Error`, `status
/// code 503`, `: 502 Bad Gateway`).
fn has_5xx(message: &str) -> bool {
    has_status(message, |code| code[0] == b'5')
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn rpc(code: tonic::Code, message: &str) -> CriError {
        CriError::Rpc {
            rpc: "PullImage",
            code,
            message: message.to_string(),
        }
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            socket_path("unix:///run/containerd/containerd.sock").unwrap(),
            PathBuf::from("/run/containerd/containerd.sock")
        );
        assert_eq!(
            socket_path("/var/run/crio/crio.sock").unwrap(),
            PathBuf::from("/var/run/crio/crio.sock")
        );
        assert!(matches!(
            socket_path("tcp://127.0.0.1:1234"),
            Err(CriError::Endpoint { .. })
        ));
        assert!(matches!(
            socket_path("unix://relative.sock"),
            Err(CriError::Endpoint { .. })
        ));
    }

    #[test]
    fn pull_errors_map_to_statuses() {
        use tonic::Code;
        let cases = [
            (
                Code::NotFound,
                r#"failed to pull and unpack image "127.0.0.1:5000/app:gone": failed to resolve reference "127.0.0.1:5000/app:gone": 127.0.0.1:5000/app:gone: not found"#,
                CheckStatus::Absent,
            ),
            // A registry port with 429 (or 5xx) in it is not a status code (seen in CI).
            (
                Code::NotFound,
                r#"failed to pull and unpack image "127.0.0.1:42917/team/app:gone": failed to resolve reference "127.0.0.1:42917/team/app:gone": 127.0.0.1:42917/team/app:gone: not found"#,
                CheckStatus::Absent,
            ),
            (
                Code::NotFound,
                r#"failed to resolve reference "127.0.0.1:50312/app:gone": 127.0.0.1:50312/app:gone: not found"#,
                CheckStatus::Absent,
            ),
            (
                Code::Unknown,
                r#"failed to pull and unpack image "127.0.0.1:5000/private/app:v1": failed to resolve reference "127.0.0.1:5000/private/app:v1": unexpected status from HEAD request to http://127.0.0.1:5000/v2/private/app/manifests/v1: 401 Unauthorized"#,
                CheckStatus::AuthenticationFailure,
            ),
            (
                Code::Unknown,
                "failed to resolve reference \"r/app:v1\": pull access denied, repository does not exist or may require authorization: server message: insufficient_scope: authorization failed",
                CheckStatus::AuthenticationFailure,
            ),
            (
                Code::Unknown,
                "unexpected status from HEAD request to https://r/v2/app/manifests/v1: 403 Forbidden",
                CheckStatus::AuthorizationFailure,
            ),
            (
                Code::Unknown,
                "unexpected status from HEAD request to https://r/v2/app/manifests/v1: 429 Too Many Requests",
                CheckStatus::RateLimited,
            ),
            (
                Code::Unknown,
                "failed to do request: Head \"http://127.0.0.1:5000/v2/app/manifests/v1\": dial tcp 127.0.0.1:5000: connect: connection refused",
                CheckStatus::RegistryUnavailable,
            ),
            (
                Code::Unknown,
                "dial tcp: lookup registry.invalid on 10.0.0.10:53: no such host",
                CheckStatus::RegistryUnavailable,
            ),
            (
                Code::Unknown,
                "unexpected status from HEAD request to https://r/v2/app/manifests/v1: 503 Service Unavailable",
                CheckStatus::RegistryUnavailable,
            ),
            (
                Code::Unknown,
                "failed to do request: Head \"https://r/v2/\": x509: certificate signed by unknown authority",
                CheckStatus::RegistryUnavailable,
            ),
            (
                Code::Unknown,
                "failed to pull and unpack image \"Bad:Ref\": failed to resolve reference \"Bad:Ref\": invalid reference format",
                CheckStatus::BadImageFormat,
            ),
            (
                Code::InvalidArgument,
                "image reference must not be empty",
                CheckStatus::BadImageFormat,
            ),
            (
                Code::Unknown,
                "failed to unpack image: no space left on device",
                CheckStatus::UnknownError,
            ),
        ];
        for (code, message, expected) in cases {
            let outcome = classify_pull_error(&rpc(code, message));
            assert_eq!(outcome.status, expected, "{message}");
            assert_eq!(outcome.reason, message);
        }
        // A sha256 digest's digits are not a 5xx answer.
        assert!(!has_5xx("sha256:a500b"));
        assert!(has_5xx("status 500"));
        assert!(!has_5xx(
            "dial tcp 127.0.0.1:500: connect: connection refused"
        ));
        assert!(!has_5xx("registry 10.0.0.503"));
        assert!(has_status("unexpected status code 429", |c| c == b"429"));
        assert!(!has_status("127.0.0.1:42917/v2/app", |c| c == b"429"));
        assert!(!has_status("port 34291", |c| c == b"429"));
        let timeout = classify_pull_error(&CriError::Timeout {
            rpc: "PullImage",
            after: Duration::from_secs(300),
        });
        assert_eq!(timeout.status, CheckStatus::RegistryUnavailable);
        let down = classify_pull_error(&CriError::Unreachable {
            rpc: "PullImage",
            endpoint: "unix:///x.sock".into(),
            message: "connection refused".into(),
        });
        assert_eq!(down.status, CheckStatus::UnknownError, "{}", down.reason);
        assert!(
            down.reason.contains("runtime unreachable"),
            "{}",
            down.reason
        );
    }

    #[test]
    fn auth_config_carries_every_token_and_no_server_address() {
        let credential = RegistryCredential {
            username: "u".into(),
            password: "p".into(),
            identity_token: Some("id".into()),
            registry_token: Some("rt".into()),
        };
        let auth = auth_config(&credential);
        assert_eq!(
            (
                auth.username.as_str(),
                auth.password.as_str(),
                auth.identity_token.as_str(),
                auth.registry_token.as_str()
            ),
            ("u", "p", "id", "rt")
        );
        // An empty server_address makes containerd use the credential for every host
        // it contacts (mirrors included), as it does for the kubelet.
        assert!(auth.server_address.is_empty());
    }

    /// The generated messages use upstream's field numbers: spot-check the wire tags of
    /// fields added late to runtime.v1 (ImageSpec.user_specified_image = 18) and of the
    /// auth in PullImageRequest (= 2).
    #[test]
    fn wire_format_matches_upstream_field_numbers() {
        let spec = ImageSpec {
            user_specified_image: "x".into(),
            ..Default::default()
        };
        // Field 18, wire type 2 (length-delimited): varint key 18 << 3 | 2 = 146 = 0x92 0x01.
        assert_eq!(spec.encode_to_vec(), vec![0x92, 0x01, 0x01, b'x']);
        let request = PullImageRequest {
            image: None,
            auth: Some(AuthConfig {
                username: "u".into(),
                ..Default::default()
            }),
            sandbox_config: None,
        };
        assert_eq!(request.encode_to_vec(), vec![0x12, 0x03, 0x0a, 0x01, b'u']);
    }

    #[tokio::test]
    async fn missing_socket_is_unreachable_not_a_registry_status() {
        let dir = tempfile::tempdir().unwrap();
        let endpoint = format!("unix://{}/none.sock", dir.path().display());
        let client = CriClient::new(&endpoint, CriTimeouts::default(), None).unwrap();
        let error = client.version().await.unwrap_err();
        assert!(matches!(error, CriError::Unreachable { .. }), "{error:?}");
        assert!(error.is_runtime_failure());
        assert_eq!(error.code_label(), "Unavailable");
    }
}
