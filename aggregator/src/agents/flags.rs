//! The aggregator's agent flags, for `#[command(flatten)]` into the serve command.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use super::HubConfig;
use super::auth::ServiceAccountName;
use super::server::{AgentServerConfig, AgentServerError};

/// Flags of the agent server (each also from `PULLWATCH_<FLAG>`).
#[derive(Clone, Debug, Default, Args)]
pub(crate) struct AgentServerArgs {
    /// Listen for node agents (gRPC) on this address, e.g. `:9443`. Unset: no agents.
    #[arg(long, env = "PULLWATCH_AGENT_LISTEN")]
    pub(crate) agent_listen: Option<String>,
    /// PEM certificate (chain) for the agent server.
    #[arg(long, env = "PULLWATCH_AGENT_TLS_CERT", requires = "agent_tls_key")]
    pub(crate) agent_tls_cert: Option<PathBuf>,
    /// PEM private key for the agent server.
    #[arg(long, env = "PULLWATCH_AGENT_TLS_KEY", requires = "agent_tls_cert")]
    pub(crate) agent_tls_key: Option<PathBuf>,
    /// A file with the token agents must present (outside Kubernetes, or instead of
    /// TokenReview); re-read for every session.
    #[arg(long, env = "PULLWATCH_AGENT_SHARED_TOKEN_FILE")]
    pub(crate) agent_shared_token_file: Option<PathBuf>,
    /// Audience of the agents' bound service account tokens: each is verified with a
    /// TokenReview and must be a service account's, issued on the node the agent
    /// claims. Uses the cluster's API (with --manifests: in-cluster config or KUBECONFIG).
    #[arg(long, env = "PULLWATCH_AGENT_TOKEN_AUDIENCE")]
    pub(crate) agent_token_audience: Option<String>,
    /// The agents' own service account, NAMESPACE:NAME: the only one whose tokens are
    /// accepted (required with --agent-token-audience).
    #[arg(long, env = "PULLWATCH_AGENT_SERVICE_ACCOUNT")]
    pub(crate) agent_service_account: Option<String>,
    /// TESTS ONLY: accept agent tokens over plain HTTP/2 when no TLS key pair is set.
    /// Anyone on the network path can then read the tokens.
    #[arg(
        long,
        env = "PULLWATCH_AGENT_INSECURE_PLAINTEXT_TOKENS_FOR_TESTING_ONLY",
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        value_parser = crate::flags::go_bool(),
        default_value = "false",
        default_missing_value = "true"
    )]
    pub(crate) agent_insecure_plaintext_tokens_for_testing_only: bool,
    /// Node label whose value groups nodes for placement (unset: one group).
    #[arg(long, env = "PULLWATCH_NODE_GROUP_LABEL")]
    pub(crate) node_group_label: Option<String>,
}

/// `:9443` -> `0.0.0.0:9443`; `HOST:PORT` and `[v6]:PORT` as given.
pub(crate) fn parse_listen(text: &str) -> Result<SocketAddr, AgentServerError> {
    let with_host = if text.starts_with(':') {
        format!("0.0.0.0{text}")
    } else {
        text.to_string()
    };
    with_host
        .parse()
        .map_err(|_| AgentServerError::Listen(text.to_string()))
}

impl AgentServerArgs {
    /// The hub settings these flags describe.
    pub(crate) fn hub_config(&self) -> HubConfig {
        HubConfig {
            node_group_label: self.node_group_label.clone(),
            tls: self.agent_tls_cert.is_some(),
            ..HubConfig::default()
        }
    }

    /// `--agent-token-audience`, when set and not empty.
    pub(crate) fn token_audience(&self) -> Option<&str> {
        self.agent_token_audience
            .as_deref()
            .map(str::trim)
            .filter(|a| !a.is_empty())
    }

    /// `--agent-service-account`, required with `--agent-token-audience`.
    pub(crate) fn service_account(&self) -> Result<Option<ServiceAccountName>, AgentServerError> {
        match self
            .agent_service_account
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            Some(text) => ServiceAccountName::parse(text)
                .map(Some)
                .ok_or_else(|| AgentServerError::ServiceAccount(text.to_string())),
            None if self.token_audience().is_some() => Err(AgentServerError::NoServiceAccount),
            None => Ok(None),
        }
    }

    /// The server settings, or None when `--agent-listen` is unset.
    pub(crate) fn server_config(&self) -> Result<Option<AgentServerConfig>, AgentServerError> {
        let Some(listen) = &self.agent_listen else {
            return Ok(None);
        };
        let tls = match (&self.agent_tls_cert, &self.agent_tls_key) {
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            (None, None) => None,
            _ => return Err(AgentServerError::HalfTls),
        };
        if self.agent_shared_token_file.is_none() && self.token_audience().is_none() {
            return Err(AgentServerError::NoAuthentication);
        }
        self.service_account()?;
        let insecure = self.agent_insecure_plaintext_tokens_for_testing_only;
        if tls.is_none() && !insecure {
            return Err(AgentServerError::PlaintextTokens);
        }
        Ok(Some(AgentServerConfig {
            listen: parse_listen(listen)?,
            tls,
            shared_token_file: self.agent_shared_token_file.clone(),
            insecure_plaintext_tokens: insecure,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        agents: AgentServerArgs,
    }

    #[test]
    fn flags() {
        let cli = Cli::try_parse_from([
            "x",
            "--agent-listen",
            ":9443",
            "--agent-tls-cert",
            "/c.pem",
            "--agent-tls-key",
            "/k.pem",
            "--agent-shared-token-file",
            "/t",
            "--node-group-label",
            "topology.kubernetes.io/zone",
        ])
        .unwrap();
        let server = cli.agents.server_config().unwrap().unwrap();
        assert_eq!(server.listen, "0.0.0.0:9443".parse().unwrap());
        assert!(server.tls.is_some());
        let hub = cli.agents.hub_config();
        assert!(hub.tls);
        assert_eq!(
            hub.node_group_label.as_deref(),
            Some("topology.kubernetes.io/zone")
        );
        assert!(Cli::try_parse_from(["x", "--agent-tls-cert", "/c.pem"]).is_err());
        let none = Cli::try_parse_from(["x"]).unwrap();
        assert!(none.agents.server_config().unwrap().is_none());
        let no_auth = Cli::try_parse_from(["x", "--agent-listen", "127.0.0.1:1"]).unwrap();
        assert!(matches!(
            no_auth.agents.server_config(),
            Err(AgentServerError::NoAuthentication)
        ));
        let review = Cli::try_parse_from([
            "x",
            "--agent-listen",
            "127.0.0.1:1",
            "--agent-token-audience",
            "pullwatch",
        ])
        .unwrap();
        assert!(matches!(
            review.agents.server_config(),
            Err(AgentServerError::NoServiceAccount)
        ));
        let review = Cli::try_parse_from([
            "x",
            "--agent-listen",
            "127.0.0.1:1",
            "--agent-tls-cert",
            "/c.pem",
            "--agent-tls-key",
            "/k.pem",
            "--agent-token-audience",
            "pullwatch",
            "--agent-service-account",
            "pullwatch:pullwatch-agent",
        ])
        .unwrap();
        assert!(review.agents.server_config().unwrap().is_some());
        assert_eq!(review.agents.token_audience(), Some("pullwatch"));
        assert_eq!(
            review
                .agents
                .service_account()
                .unwrap()
                .unwrap()
                .to_string(),
            "pullwatch:pullwatch-agent"
        );
        let bad_account = Cli::try_parse_from([
            "x",
            "--agent-listen",
            "127.0.0.1:1",
            "--agent-token-audience",
            "pullwatch",
            "--agent-service-account",
            "pullwatch",
        ])
        .unwrap();
        assert!(matches!(
            bad_account.agents.server_config(),
            Err(AgentServerError::ServiceAccount(_))
        ));
        // Tokens over plain HTTP/2: only with the loudly named test flag.
        let plaintext = Cli::try_parse_from([
            "x",
            "--agent-listen",
            "127.0.0.1:1",
            "--agent-shared-token-file",
            "/t",
        ])
        .unwrap();
        assert!(matches!(
            plaintext.agents.server_config(),
            Err(AgentServerError::PlaintextTokens)
        ));
        let testing = Cli::try_parse_from([
            "x",
            "--agent-listen",
            "127.0.0.1:1",
            "--agent-shared-token-file",
            "/t",
            "--agent-insecure-plaintext-tokens-for-testing-only",
        ])
        .unwrap();
        assert!(
            testing
                .agents
                .server_config()
                .unwrap()
                .unwrap()
                .insecure_plaintext_tokens
        );
        assert!(parse_listen("[::1]:9443").is_ok());
        assert!(parse_listen("nope").is_err());
    }
}
