//! A throw-away certificate authority made with the `openssl` CLI.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

use crate::util::{require_tool, run_checked};

/// The subject alternative names every loopback server of the bench needs.
pub const LOOPBACK_SANS: &[&str] = &["127.0.0.1", "::1", "localhost"];

const OPENSSL_TIMEOUT: Duration = Duration::from_secs(30);

/// A self-signed CA (EC P-256) living in its own temp dir.
///
/// Cloning is cheap and shares the directory; it is removed when the last clone drops.
#[derive(Clone, Debug)]
pub struct TestCa {
    inner: Arc<CaInner>,
}

#[derive(Debug)]
struct CaInner {
    dir: TempDir,
    cert: PathBuf,
    key: PathBuf,
    serial: AtomicU64,
}

impl TestCa {
    /// Creates a new CA certificate and key with `openssl req -x509`.
    pub fn new() -> Result<TestCa> {
        let openssl = require_tool("openssl")?;
        let dir = tempfile::Builder::new()
            .prefix("pullwatch-ca-")
            .tempdir()
            .context("creating CA temp dir")?;
        let cert = dir.path().join("ca.crt");
        let key = dir.path().join("ca.key");
        let cnf = dir.path().join("ca.cnf");
        std::fs::write(
            &cnf,
            "[req]\n\
             distinguished_name = dn\n\
             prompt = no\n\
             x509_extensions = v3_ca\n\
             [dn]\n\
             CN = pullwatch test CA\n\
             [v3_ca]\n\
             basicConstraints = critical, CA:TRUE\n\
             keyUsage = critical, keyCertSign, cRLSign\n\
             subjectKeyIdentifier = hash\n",
        )?;
        run_checked(
            Command::new(&openssl)
                .args(["req", "-x509", "-new", "-nodes", "-newkey", "ec"])
                .args(["-pkeyopt", "ec_paramgen_curve:prime256v1"])
                .args(["-sha256", "-days", "3650", "-config"])
                .arg(&cnf)
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&cert),
            OPENSSL_TIMEOUT,
        )
        .context("creating the test CA")?;
        Ok(TestCa {
            inner: Arc::new(CaInner {
                dir,
                cert,
                key,
                serial: AtomicU64::new(1000),
            }),
        })
    }

    /// Path of the CA certificate (PEM).
    pub fn ca_cert_path(&self) -> &Path {
        &self.inner.cert
    }

    /// The CA certificate as PEM bytes (empty if the file vanished).
    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(&self.inner.cert).unwrap_or_default()
    }

    /// Issues a server certificate signed by this CA and returns `(cert, key)` PEM paths.
    ///
    /// Each SAN that parses as an IP address becomes an `IP:` SAN, anything else a `DNS:`
    /// SAN. An empty slice means [`LOOPBACK_SANS`]. The first SAN is also the subject CN.
    pub fn issue_server_cert(&self, sans: &[&str]) -> Result<(PathBuf, PathBuf)> {
        let openssl = require_tool("openssl")?;
        let sans = if sans.is_empty() { LOOPBACK_SANS } else { sans };
        let mut san_list = Vec::new();
        for san in sans {
            if san.is_empty() || san.contains([',', '\n', '/']) {
                bail!("invalid SAN {san:?}");
            }
            match san.parse::<IpAddr>() {
                Ok(ip) => san_list.push(format!("IP:{ip}")),
                Err(_) => san_list.push(format!("DNS:{san}")),
            }
        }
        let serial = self.inner.serial.fetch_add(1, Ordering::SeqCst);
        let dir = self.inner.dir.path();
        let cert = dir.join(format!("server-{serial}.crt"));
        let key = dir.join(format!("server-{serial}.key"));
        let csr = dir.join(format!("server-{serial}.csr"));
        let ext = dir.join(format!("server-{serial}.ext"));
        std::fs::write(
            &ext,
            format!(
                "[srv]\n\
                 basicConstraints = critical, CA:FALSE\n\
                 keyUsage = critical, digitalSignature, keyEncipherment\n\
                 extendedKeyUsage = serverAuth\n\
                 subjectKeyIdentifier = hash\n\
                 authorityKeyIdentifier = keyid\n\
                 subjectAltName = {}\n",
                san_list.join(",")
            ),
        )?;
        run_checked(
            Command::new(&openssl)
                .args(["req", "-new", "-nodes", "-newkey", "ec"])
                .args(["-pkeyopt", "ec_paramgen_curve:prime256v1"])
                .arg("-subj")
                .arg(format!("/CN={}", sans[0]))
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&csr),
            OPENSSL_TIMEOUT,
        )
        .context("creating a server key and CSR")?;
        run_checked(
            Command::new(&openssl)
                .args(["x509", "-req", "-sha256", "-days", "365", "-in"])
                .arg(&csr)
                .arg("-CA")
                .arg(&self.inner.cert)
                .arg("-CAkey")
                .arg(&self.inner.key)
                .arg("-set_serial")
                .arg(serial.to_string())
                .arg("-extfile")
                .arg(&ext)
                .args(["-extensions", "srv", "-out"])
                .arg(&cert),
            OPENSSL_TIMEOUT,
        )
        .context("signing a server certificate")?;
        Ok((cert, key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_certs_with_sans() {
        let ca = TestCa::new().unwrap();
        assert!(
            String::from_utf8(ca.ca_pem())
                .unwrap()
                .contains("BEGIN CERTIFICATE")
        );
        let (cert, key) = ca.issue_server_cert(&[]).unwrap();
        assert!(key.exists());
        let text = run_checked(
            Command::new("openssl")
                .args(["x509", "-noout", "-text", "-in"])
                .arg(&cert),
            OPENSSL_TIMEOUT,
        )
        .unwrap()
        .stdout;
        assert!(text.contains("IP Address:127.0.0.1"), "{text}");
        assert!(text.contains("IP Address:0:0:0:0:0:0:0:1"), "{text}");
        assert!(text.contains("DNS:localhost"), "{text}");
        let verify = run_checked(
            Command::new("openssl")
                .arg("verify")
                .arg("-CAfile")
                .arg(ca.ca_cert_path())
                .arg(&cert),
            OPENSSL_TIMEOUT,
        )
        .unwrap()
        .stdout;
        assert!(verify.contains("OK"), "{verify}");
    }
}
