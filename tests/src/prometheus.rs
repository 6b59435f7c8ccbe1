//! A real Prometheus server (the `prometheus` package) scraping loopback targets: what
//! only the real scraper shows, such as the encoding it negotiates (gzip) and the
//! exposition as it parses it.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use tempfile::TempDir;

use crate::http_client::http_request;
use crate::util::{Daemon, free_port, require_tool, write_file};

/// A Prometheus server on a free loopback port, stopped on drop.
pub struct PrometheusServer {
    addr: SocketAddr,
    daemon: Daemon,
    dir: TempDir,
}

impl PrometheusServer {
    /// Starts one scraping `targets`' `/metrics` every `interval`, once it is ready.
    pub async fn start(targets: &[SocketAddr], interval: Duration) -> Result<Self> {
        let binary = require_tool("prometheus")?;
        let dir = tempfile::tempdir()?;
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let seconds = interval.as_secs().max(1);
        let config = write_file(
            dir.path(),
            "prometheus.yml",
            format!(
                "global: {{scrape_interval: {seconds}s, scrape_timeout: {seconds}s}}\n\
                 scrape_configs:\n- job_name: pullwatch\n  static_configs:\n  - targets: [{}]\n",
                targets.join(", ")
            ),
        );
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let log = std::fs::File::create(dir.path().join("prometheus.log"))?;
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting prometheus")?;
        let mut daemon = Daemon::default();
        daemon.start(child);
        let mut server = PrometheusServer { addr, daemon, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(response) =
                http_request(addr, http::Method::GET, "/-/ready", &[], Vec::new()).await
                && response.status == 200
            {
                return Ok(server);
            }
            if Instant::now() > deadline || !server.daemon.is_running() {
                bail!("prometheus did not get ready:\n{}", server.log());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The result vector of the instant query `expr` (`data.result`).
    pub async fn query(&self, expr: &str) -> Result<Vec<Value>> {
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("query", expr)
            .finish();
        let response = http_request(
            self.addr,
            http::Method::GET,
            &format!("/api/v1/query?{query}"),
            &[],
            Vec::new(),
        )
        .await?;
        let body: Value = serde_json::from_slice(&response.body)
            .with_context(|| format!("query {expr}: {}", response.text()))?;
        if body["status"] != "success" {
            bail!("query {expr}: {body}");
        }
        Ok(body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }
}
