//! When objects were first seen and when they first reached a state, as one watch saw
//! them: latencies measured from the cluster's own events rather than from polling.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// What the watch saw of one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Marks {
    /// The first event about the object after the initial listing (for an object created
    /// after [`Timeline::start`], its creation).
    pub first_seen: Instant,
    /// The first event in which the predicate held.
    pub reached: Option<Instant>,
}

impl Marks {
    /// First sighting to the state, when both were seen.
    pub fn latency(&self) -> Option<Duration> {
        self.reached.map(|r| r.duration_since(self.first_seen))
    }
}

type Shared = Arc<Mutex<BTreeMap<String, Marks>>>;

/// A background watch recording [`Marks`] per object name; stops when dropped.
pub struct Timeline {
    marks: Shared,
    task: JoinHandle<()>,
}

impl Timeline {
    /// Starts watching and returns once the initial listing is done, so every object
    /// created afterwards is seen from its first event. Objects that already existed are
    /// not recorded: their first sighting says nothing about when they were created.
    pub async fn start<K>(
        api: Api<K>,
        config: watcher::Config,
        reached: impl Fn(&K) -> bool + Send + 'static,
    ) -> anyhow::Result<Self>
    where
        K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    {
        let marks = Shared::default();
        let (listed_tx, listed_rx) = oneshot::channel();
        let task = tokio::spawn(record(api, config, reached, marks.clone(), listed_tx));
        tokio::time::timeout(Duration::from_secs(30), listed_rx)
            .await
            .context("the watch did not finish its initial listing within 30 s")?
            .context("the watch ended before its initial listing")?;
        Ok(Self { marks, task })
    }

    pub fn marks(&self, name: &str) -> Option<Marks> {
        self.lock().get(name).copied()
    }

    /// Every recorded object, by name.
    pub fn all(&self) -> BTreeMap<String, Marks> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Marks>> {
        self.marks.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Timeline {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn record<K>(
    api: Api<K>,
    config: watcher::Config,
    reached: impl Fn(&K) -> bool,
    marks: Shared,
    listed: oneshot::Sender<()>,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let mut listed = Some(listed);
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    while let Some(event) = events.next().await {
        let now = Instant::now();
        match event {
            Ok(Event::InitDone) => {
                if let Some(tx) = listed.take() {
                    let _ = tx.send(());
                }
            }
            // A re-list after the first one (watch expired) may show objects created
            // meanwhile: recording them late only makes a latency look shorter, never
            // invents one, and the object's later events still count.
            Ok(Event::Apply(obj) | Event::InitApply(obj)) if listed.is_none() => {
                let done = reached(&obj);
                let mut marks = marks.lock().unwrap_or_else(PoisonError::into_inner);
                let entry = marks.entry(obj.name_any()).or_insert(Marks {
                    first_seen: now,
                    reached: None,
                });
                if done && entry.reached.is_none() {
                    entry.reached = Some(now);
                }
            }
            // Objects present before the start, deletions, and watch errors (the backoff
            // retries them).
            Ok(_) | Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use kube::api::{Patch, PatchParams, PostParams};
    use plinth_api::cluster::crd::{
        self, AccessSpec, Phase, PoolVolume, PoolVolumeSpec, VolumeMode,
    };
    use serde_json::json;

    use super::*;
    use crate::wait_for;

    const DRIVER: &str = "timeline.csi.plinth.dev";

    fn volume(name: &str, driver: &str) -> PoolVolume {
        let mut volume = PoolVolume::new(
            name,
            PoolVolumeSpec {
                driver: driver.to_owned(),
                node: "n1".to_owned(),
                name: format!("pvc-{name}"),
                size_bytes: 1 << 20,
                access: AccessSpec {
                    volume_mode: VolumeMode::Block,
                    fs_type: None,
                },
                parameters: BTreeMap::new(),
                content_source: None,
            },
        );
        volume.metadata.labels = Some(crd::labels(driver, "n1"));
        volume
    }

    /// Against the API stand-in: a real watch, real events.
    #[tokio::test]
    async fn records_what_appears_after_the_start_and_when_it_reaches_the_state() {
        let stub = plinth_apistub::ApiStub::start().await.unwrap();
        let api: Api<PoolVolume> = Api::all(stub.client().unwrap());
        let post = PostParams::default();
        api.create(&post, &volume("old", DRIVER)).await.unwrap();
        let timeline = Timeline::start(
            api.clone(),
            watcher::Config::default().labels(&crd::driver_selector(DRIVER)),
            |v: &PoolVolume| v.status.as_ref().is_some_and(|s| s.phase == Phase::Ready),
        )
        .await
        .unwrap();

        api.create(&post, &volume("new", DRIVER)).await.unwrap();
        api.create(&post, &volume("other", "other.csi.plinth.dev"))
            .await
            .unwrap();
        let seen = wait_for(
            "the new volume in the timeline",
            Duration::from_secs(10),
            || async { Ok(timeline.marks("new")) },
        )
        .await
        .unwrap();
        assert_eq!(seen.reached, None, "created Pending");

        api.patch_status(
            "new",
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": { "phase": "Ready", "observedGeneration": 1 } })),
        )
        .await
        .unwrap();
        let done = wait_for(
            "the new volume to be Ready",
            Duration::from_secs(10),
            || async { Ok(timeline.marks("new").filter(|m| m.reached.is_some())) },
        )
        .await
        .unwrap();
        assert_eq!(done.first_seen, seen.first_seen, "first sighting is kept");
        assert!(done.latency().is_some());
        // A later event does not move the mark.
        api.patch_status(
            "new",
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": { "sizeBytes": 1048576 } })),
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(timeline.marks("new"), Some(done));
        assert_eq!(timeline.marks("old"), None, "existed before the start");
        assert_eq!(timeline.marks("other"), None, "outside the selector");
        assert_eq!(timeline.all().len(), 1);
    }
}
