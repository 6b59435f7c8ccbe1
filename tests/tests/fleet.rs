//! Dispatch cost does not grow with the fleet: a few hundred simulated agents
//! ([`pullwatch_testbench::fleet`], each over its own TLS connection, speaking the
//! real protocol) in session with the aggregator's agent server, checks placed on
//! them one node per group and dispatched, and the agents placement looked at per
//! placement counted (`pullwatch_agent_placement_visits_total`): no more at 300
//! agents than at 50. A counted measure, not a timing (the timing is the fleet
//! bench's, `cargo bench -p pullwatch-testbench --bench fleet`).

use std::collections::BTreeSet;
use std::time::Duration;

use futures::future::join_all;
use pullwatch::proto::{CheckTask, PullCredential, Status};
use pullwatch_aggregator::agents::server::{self as agent_server, AgentServerConfig};
use pullwatch_aggregator::agents::{AgentHub, HubConfig};
use pullwatch_testbench::fleet::{Fleet, FleetOptions, FleetTarget, fleet_image, raise_fd_limit};
use pullwatch_testbench::{LOOPBACK_SANS, TestCa};

const TOKEN: &str = "fleet-test-token";
/// Images, each held by more nodes than placement looks at (25 at 50 agents).
const CATALOG: usize = 20;
const HELD: usize = 10;
const CHECKS: usize = 200;

/// An agent hub serving `agents` simulated agents, all registered.
struct InSession {
    hub: AgentHub,
    server: agent_server::AgentServer,
    fleet: Fleet,
    _dir: tempfile::TempDir,
}

async fn in_session(agents: usize, echo_credentials: bool) -> InSession {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new().unwrap();
    let (cert, key) = ca.issue_server_cert(LOOPBACK_SANS).unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let hub = AgentHub::new(HubConfig {
        heartbeat_interval: Duration::from_secs(5),
        max_concurrent_checks: 2,
        task_timeout: Duration::from_secs(30),
        node_group_label: None,
        tls: true,
    });
    let server = agent_server::start(
        hub.clone(),
        AgentServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            tls: Some((cert, key)),
            shared_token_file: Some(token_file),
            insecure_plaintext_tokens: false,
        },
    )
    .await
    .unwrap();
    let fleet = Fleet::start(
        FleetTarget {
            url: format!("https://{}", server.local_addr()),
            ca_pem: ca.ca_pem(),
            token: TOKEN.into(),
        },
        &FleetOptions {
            agents,
            images_per_agent: HELD,
            catalog: CATALOG,
            reconnect_base: Duration::from_millis(200),
            reconnect_max: Duration::from_secs(2),
            echo_credentials,
        },
    );
    fleet
        .wait_registrations(agents as u64, Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(hub.len(), agents);
    InSession {
        hub,
        server,
        fleet,
        _dir: dir,
    }
}

/// Agents visited per placement, and tasks answered, with `agents` agents connected.
async fn dispatch_work(agents: usize) -> (f64, usize) {
    let InSession {
        hub, server, fleet, ..
    } = in_session(agents, false).await;
    let (placements, visits) = hub.placement_work();
    // All at once: nodes get busy, so placement has to look past busy ones.
    let checks = (0..CHECKS).map(|i| {
        let hub = hub.clone();
        async move {
            let image = fleet_image(i % CATALOG);
            let plan = hub.plan(&image, &BTreeSet::new());
            assert_eq!(plan.len(), 1, "one group");
            let (_, node) = &plan[0];
            assert!(hub.holders(&image).contains(node), "{node} holds {image}");
            let task = CheckTask {
                image: image.clone(),
                ..Default::default()
            };
            let done = hub.dispatch(node, task).await.unwrap();
            assert_eq!(done.result.status, Status::Available as i32);
            assert!(done.result.image_present);
        }
    });
    join_all(checks).await;
    let (p, v) = hub.placement_work();
    let answered = fleet.answered() as usize;
    fleet.stop().await;
    server.stop().await;
    ((v - visits) as f64 / (p - placements) as f64, answered)
}

#[tokio::test(flavor = "multi_thread")]
async fn dispatch_cost_does_not_grow_with_the_fleet() {
    raise_fd_limit().unwrap();
    tokio::time::timeout(Duration::from_secs(300), async {
        let (small, answered) = dispatch_work(50).await;
        assert_eq!(answered, CHECKS);
        let (large, answered) = dispatch_work(300).await;
        assert_eq!(answered, CHECKS);
        eprintln!("agents visited per placement: {small:.2} at 50 agents, {large:.2} at 300");
        // Six times the agents, no more agents looked at per placement (the old hub
        // looked at, and copied, every agent: 50 and 300), and never more than the
        // scan limit of the one group.
        assert!(small >= 1.0, "{small}");
        assert!(
            large <= small * 1.25 + 1.0,
            "{small} at 50 agents, {large} at 300"
        );
        assert!(
            large <= pullwatch_aggregator::agents::placement::SCAN_LIMIT as f64,
            "{large}"
        );
    })
    .await
    .expect("the test took too long");
}

/// An agent that quotes the task's credentials in its reason (an older or careless
/// one): the aggregator redacts what comes back with the credentials it sent, raw and
/// in base64 alike.
#[tokio::test(flavor = "multi_thread")]
async fn reasons_from_agents_are_redacted_with_the_credentials_sent() {
    use base64::Engine;
    tokio::time::timeout(Duration::from_secs(120), async {
        let InSession {
            hub, server, fleet, ..
        } = in_session(1, true).await;
        let password = "s3cret-pa55word-for-the-echo";
        let node = hub.plan(&fleet_image(0), &BTreeSet::new())[0].1.clone();
        let task = CheckTask {
            image: fleet_image(0),
            credentials: vec![PullCredential {
                source: "secret/shop/regcred".into(),
                username: "bob".into(),
                password: password.into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let done = hub.dispatch(&node, task).await.unwrap();
        let reason = done.result.reason;
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("bob:{password}"));
        assert!(
            reason.starts_with("pulled as bob:"),
            "the agent's reason: {reason}"
        );
        assert!(!reason.contains(password), "{reason}");
        assert!(!reason.contains(&basic), "{reason}");
        assert!(
            !reason.contains(&basic[4..16]),
            "no base64 fragment: {reason}"
        );
        fleet.stop().await;
        server.stop().await;
    })
    .await
    .expect("the test took too long");
}
