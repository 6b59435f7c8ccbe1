//! The agent server's TLS key pair, re-read when its files change: cert-manager (or the
//! chart's `agent.tls.mode=secret`) rotates the Secret, the kubelet swaps the mounted
//! files, and the next handshake uses the new pair without a restart.
//!
//! Every handshake asks [`ReloadingKeyPair`] for the pair; at most once per
//! [`RECHECK_INTERVAL`] it re-reads both files and, when their bytes changed, parses
//! them. A pair that does not parse or whose key does not match its certificate (a
//! rotation caught half-way) is ignored with a warning and the previous one kept, so a
//! rotation never takes the server down. Sessions already open keep their connection.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tracing::{info, warn};

/// How often the files are looked at (at most once per handshake).
pub(crate) const RECHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Why a key pair could not be loaded. Names files, never key material.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KeyPairError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: no PEM certificate found")]
    NoCertificate(PathBuf),
    #[error("{0}: no usable PEM private key found")]
    NoKey(PathBuf),
    #[error("the key in {key} does not match the certificate in {cert}")]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("building the TLS configuration: {0}")]
    Config(String),
}

struct Loaded {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    pair: Arc<CertifiedKey>,
    checked: Instant,
}

/// A certificate chain and key read from two PEM files, re-read when they change.
pub(crate) struct ReloadingKeyPair {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    loaded: Mutex<Loaded>,
}

impl std::fmt::Debug for ReloadingKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingKeyPair")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, KeyPairError> {
    std::fs::read(path).map_err(|source| KeyPairError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn parse(
    provider: &CryptoProvider,
    cert: &Path,
    cert_pem: &[u8],
    key: &Path,
    key_pem: &[u8],
) -> Result<Arc<CertifiedKey>, KeyPairError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(KeyPairError::NoCertificate(cert.to_path_buf()));
    }
    let private = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|_| KeyPairError::NoKey(key.to_path_buf()))?;
    let signing = provider
        .key_provider
        .load_private_key(private)
        .map_err(|_| KeyPairError::NoKey(key.to_path_buf()))?;
    let pair = CertifiedKey::new(chain, signing);
    pair.keys_match().map_err(|_| KeyPairError::Mismatch {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
    })?;
    Ok(Arc::new(pair))
}

impl ReloadingKeyPair {
    /// Loads the pair now: a server does not start with an unusable one.
    pub(crate) fn load(cert: PathBuf, key: PathBuf) -> Result<ReloadingKeyPair, KeyPairError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cert_pem = read(&cert)?;
        let key_pem = read(&key)?;
        let pair = parse(&provider, &cert, &cert_pem, &key, &key_pem)?;
        Ok(ReloadingKeyPair {
            cert,
            key,
            provider,
            loaded: Mutex::new(Loaded {
                cert_pem,
                key_pem,
                pair,
                checked: Instant::now(),
            }),
        })
    }

    /// The pair for a new handshake: the files' current one when they changed and
    /// parse, else the last good one.
    pub(crate) fn current(&self) -> Arc<CertifiedKey> {
        let mut loaded = pullwatch::locks::lock(&self.loaded);
        if loaded.checked.elapsed() < RECHECK_INTERVAL {
            return loaded.pair.clone();
        }
        loaded.checked = Instant::now();
        let (cert_pem, key_pem) = match (read(&self.cert), read(&self.key)) {
            (Ok(c), Ok(k)) => (c, k),
            (Err(error), _) | (_, Err(error)) => {
                warn!(%error, "cannot re-read the agent server's key pair; keeping the current one");
                return loaded.pair.clone();
            }
        };
        if cert_pem == loaded.cert_pem && key_pem == loaded.key_pem {
            return loaded.pair.clone();
        }
        match parse(&self.provider, &self.cert, &cert_pem, &self.key, &key_pem) {
            Ok(pair) => {
                info!(cert = %self.cert.display(), "agent server certificate reloaded");
                loaded.cert_pem = cert_pem;
                loaded.key_pem = key_pem;
                loaded.pair = pair;
            }
            Err(error) => {
                warn!(%error, "the changed agent server key pair is not usable (yet); keeping the current one");
            }
        }
        loaded.pair.clone()
    }

    /// A rustls server configuration (HTTP/2 only, as gRPC needs) using this pair.
    pub(crate) fn server_config(self: &Arc<Self>) -> Result<rustls::ServerConfig, KeyPairError> {
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| KeyPairError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec()];
        // Agents open a new TLS client for every session and never resume: session
        // tickets and a session cache would only cost each handshake bytes and the
        // aggregator memory, thousands of times over in a reconnect storm.
        config.send_tls13_tickets = 0;
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        Ok(config)
    }
}

impl ResolvesServerCert for ReloadingKeyPair {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}
