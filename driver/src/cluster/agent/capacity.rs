//! The capacity publisher: this node's PoolNode, the numbers the controller places new
//! volumes by and answers GetCapacity with.
//!
//! The pool is re-read every `--capacity-interval-seconds` and at once after work that
//! changed it; the PoolNode is written only when the numbers moved, so an idle node costs
//! the API server nothing.

use std::sync::Arc;

use kube::Resource;
use kube::api::{Api, Patch, PatchParams};

use super::{Agent, AgentError};
use crate::error::{Error, chain};
use crate::storage::node::{NodeStorage, blocking};
use plinth_api::cluster::crd::{self, PoolNode, PoolNodeSpec, PoolNodeStatus};

/// Publishes until aborted.
pub async fn run(agent: Arc<Agent>) {
    let mut publisher = Publisher::default();
    loop {
        if let Err(error) = publisher.publish(&agent).await {
            tracing::warn!(error = %chain(&error), "cannot publish the pool's capacity; retrying");
        }
        tokio::select! {
            () = agent.pool_changed.notified() => {}
            () = tokio::time::sleep(agent.capacity_interval) => {}
        }
    }
}

/// What was last published.
#[derive(Debug, Default)]
pub struct Publisher {
    /// The PoolNode object (name, labels, spec) has been applied by this process.
    applied: bool,
    published: Option<PoolNodeStatus>,
}

impl Publisher {
    /// Reads the pool and writes the PoolNode when its numbers changed since the last
    /// successful publish. Returns whether it wrote.
    pub async fn publish(&mut self, agent: &Agent) -> Result<bool, AgentError> {
        let storage = agent.storage.clone();
        let status = blocking(move || measure(&storage))
            .await
            .map_err(AgentError::Measure)?;
        if self.published.as_ref() == Some(&status) {
            return Ok(false);
        }
        let result = self.write(agent, &status).await;
        if result.is_err() {
            // Someone may have deleted the object: the next attempt applies it whole.
            self.applied = false;
            self.published = None;
        } else {
            tracing::debug!(
                available_bytes = status.available_bytes,
                volumes = status.volumes,
                snapshots = status.snapshots,
                "capacity published"
            );
            self.published = Some(status);
        }
        result.map(|()| true)
    }

    async fn write(&mut self, agent: &Agent, status: &PoolNodeStatus) -> Result<(), AgentError> {
        let api = Api::<PoolNode>::all(agent.client.clone());
        let name = crd::pool_node_name(&agent.node, &agent.driver_name);
        let params = PatchParams::apply(crd::FIELD_MANAGER).force();
        if !self.applied {
            let mut object = PoolNode::new(
                &name,
                PoolNodeSpec {
                    driver: agent.driver_name.clone(),
                    node: agent.node.clone(),
                },
            );
            object.metadata.labels = Some(crd::labels(&agent.driver_name, &agent.node));
            api.patch(&name, &params, &Patch::Apply(&object)).await?;
            self.applied = true;
        }
        let body = serde_json::json!({
            "apiVersion": PoolNode::api_version(&()),
            "kind": PoolNode::kind(&()),
            "metadata": { "name": name },
            "status": status,
        });
        api.patch_status(&name, &params, &Patch::Apply(&body))
            .await?;
        Ok(())
    }
}

/// The pool's numbers now: blocking (statvfs, a stat per image).
fn measure(storage: &NodeStorage) -> Result<PoolNodeStatus, Error> {
    let pool = storage.pool()?;
    let snapshots = storage.snapshots()?;
    Ok(PoolNodeStatus {
        available_bytes: pool.available()?,
        total_bytes: pool.total_bytes()?,
        volumes: count(pool.list().len()),
        snapshots: count(snapshots.list().len()),
        pool_filesystem: snapshots.filesystem().to_string(),
    })
}

fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}
