//! Dispatch: a task sent to one node's agent over its session and its answer awaited,
//! within the node's slots and the task timeout; re-placed on another agent when the
//! node goes away, never with credentials off the nodes running the workload. What
//! comes back is redacted with the task's credentials.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use pullwatch::credentials::SourcedCredential;
use pullwatch::locks::lock;
use pullwatch::proto::{AggregatorMessage, CheckResult, CheckTask, aggregator_message};
use pullwatch::redact::Redactor;
use tokio::sync::oneshot;
use tracing::{debug, warn};

use super::{AgentHub, HubError, Session};

/// Options of one dispatch.
#[derive(Clone, Debug, Default)]
pub(crate) struct DispatchOptions {
    /// Nodes that run the workload: the only ones a task with credentials may be
    /// re-placed on (and preferred for any re-placement). Tasks without credentials
    /// may go to any agent.
    pub(crate) credential_nodes: Vec<String>,
    /// When a task with credentials cannot be re-placed on a node running the
    /// workload, re-place it without them (the node checks with its own keyring)
    /// rather than fail.
    pub(crate) move_without_credentials: bool,
}

/// A result and the node that produced it.
#[derive(Clone, Debug, PartialEq)]
pub struct Dispatched {
    pub node: String,
    pub result: CheckResult,
    /// Nodes that went away while holding this task, in order.
    pub replaced_from: Vec<String>,
    /// The task's credentials were dropped to re-place it on a node not running the
    /// workload ([`DispatchOptions::move_without_credentials`]).
    pub(crate) credentials_dropped: bool,
}

/// A task sent and not yet answered, and who waits for its answer.
pub(super) struct Pending {
    pub(super) task: CheckTask,
    pub(super) reply: oneshot::Sender<Result<CheckResult, HubError>>,
}

impl AgentHub {
    /// Runs `task` on `node`'s agent and waits for its result.
    pub async fn dispatch(&self, node: &str, task: CheckTask) -> Result<Dispatched, HubError> {
        self.dispatch_with(node, task, DispatchOptions::default())
            .await
    }

    /// [`Self::dispatch`] with options. If the agent goes away before answering, the
    /// task moves to another agent (same group first), as often as agents go away.
    pub(crate) async fn dispatch_with(
        &self,
        node: &str,
        task: CheckTask,
        options: DispatchOptions,
    ) -> Result<Dispatched, HubError> {
        if !task.credentials.is_empty() && !self.inner.config.tls {
            return Err(HubError::CredentialsNeedTls);
        }
        let group = match lock(&self.inner.state).agents.get(node) {
            Some(entry) => entry.group.to_string(),
            None => return Err(HubError::NoAgent(node.to_string())),
        };
        // Agents redact their reasons, but an older or careless one might not: what
        // comes back is redacted here too, with every credential the task carried.
        let sent: Vec<SourcedCredential> = task
            .credentials
            .iter()
            .map(SourcedCredential::from)
            .collect();
        let redactor = Redactor::for_credentials(sent.iter().map(|sent| &sent.credential));
        let mut target = node.to_string();
        let mut gone: Vec<String> = Vec::new();
        let mut task = task;
        let mut credentials_dropped = false;
        loop {
            match self.send_and_wait(&target, &task).await {
                Ok(mut result) => {
                    if !redactor.is_empty() {
                        result.reason = redactor.redact(&result.reason);
                    }
                    return Ok(Dispatched {
                        node: target,
                        result,
                        replaced_from: gone,
                        credentials_dropped,
                    });
                }
                Err(HubError::AgentGone { .. }) | Err(HubError::NoAgent(_)) => {
                    gone.push(target.clone());
                    let preferred = options.credential_nodes.as_slice();
                    let place = |allowed: Option<&[String]>| {
                        self.place_preferring(&task.image, Some(&group), &gone, allowed, preferred)
                            .or_else(|| {
                                self.place_preferring(&task.image, None, &gone, allowed, preferred)
                            })
                    };
                    let allowed = (!task.credentials.is_empty()).then_some(preferred);
                    let mut next = place(allowed);
                    if next.is_none() && allowed.is_some() && options.move_without_credentials {
                        next = place(None);
                        if next.is_some() {
                            // The next node does not run the workload: its own keyring only.
                            task.credentials.clear();
                            credentials_dropped = true;
                        }
                    }
                    match next {
                        Some(next) => {
                            warn!(image = %task.image, from = %target, to = %next, "re-placing the task of an agent that went away");
                            target = next;
                        }
                        None => return Err(HubError::AgentGone { node: target }),
                    }
                }
                Err(other) => return Err(other),
            }
        }
    }

    async fn send_and_wait(&self, node: &str, task: &CheckTask) -> Result<CheckResult, HubError> {
        let timeout = self.inner.config.task_timeout;
        let gone = || HubError::AgentGone {
            node: node.to_string(),
        };
        // The session's own state; the hub's lock only for this lookup.
        let Some(session) = lock(&self.inner.state)
            .agents
            .get(node)
            .map(|entry| entry.session.clone())
        else {
            return Err(HubError::NoAgent(node.to_string()));
        };
        // Counted in the node's load from now until answered or abandoned.
        let _load = Load::new(&session);
        // Wait for one of the node's slots: per-node concurrency is bounded here, not
        // only by the agent.
        let permit = tokio::time::timeout(timeout, session.slots.acquire()).await;
        let _permit = match permit {
            Ok(Ok(permit)) => permit,
            Ok(Err(_closed)) => return Err(gone()),
            Err(_) => {
                return Err(HubError::Timeout {
                    node: node.to_string(),
                    after: timeout,
                });
            }
        };
        let task_id = self.inner.next_task.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        let mut task = task.clone();
        task.task_id = task_id;
        {
            let mut pending = lock(&session.pending);
            if pending.closed {
                return Err(gone());
            }
            pending.tasks.insert(
                task_id,
                Pending {
                    task: task.clone(),
                    reply,
                },
            );
        }
        let forget = || {
            lock(&session.pending).tasks.remove(&task_id);
        };
        let message = AggregatorMessage {
            message: Some(aggregator_message::Message::Task(task)),
        };
        // A session whose agent stops reading fills its outbound buffer: the send is
        // bounded like the answer, so a stuck peer costs one timeout, not a hung check.
        match tokio::time::timeout(timeout, session.tx.send(Box::new(message))).await {
            Ok(Ok(())) => {}
            Ok(Err(_closed)) => {
                forget();
                return Err(gone());
            }
            Err(_) => {
                forget();
                return Err(HubError::Timeout {
                    node: node.to_string(),
                    after: timeout,
                });
            }
        }
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(gone()),
            Err(_) => {
                forget();
                Err(HubError::Timeout {
                    node: node.to_string(),
                    after: timeout,
                })
            }
        }
    }
}

/// One task in a session's load, from its dispatch until it is answered or abandoned.
struct Load<'a>(&'a Session);

impl<'a> Load<'a> {
    fn new(session: &'a Session) -> Self {
        session.load.fetch_add(1, Ordering::Relaxed);
        Load(session)
    }
}

impl Drop for Load<'_> {
    fn drop(&mut self) {
        self.0.load.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Answers every task a departed agent held with [`HubError::AgentGone`].
pub(super) fn fail_pending(node: &str, pending: HashMap<u64, Pending>) {
    for (_, p) in pending {
        debug!(node, image = %p.task.image, "task left by a departed agent");
        let _ = p.reply.send(Err(HubError::AgentGone {
            node: node.to_string(),
        }));
    }
}
