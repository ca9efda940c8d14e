//! One volume driven through its lifecycle the way kubelet and the sidecars drive it,
//! remembering how far it got so that whatever happens it can be undone.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use plinth_csi_proto::v1::{
    ControllerPublishVolumeRequest, ControllerUnpublishVolumeRequest, CreateVolumeRequest,
    DeleteVolumeRequest, NodePublishVolumeRequest, NodeStageVolumeRequest,
    NodeUnpublishVolumeRequest, NodeUnstageVolumeRequest, VolumeContentSource,
};

use crate::call::Call;
use crate::error::Error;
use crate::mounts;
use crate::stats::Recorder;
use crate::workload::{AccessKind, Workload};

/// Paths, as kubelet lays them out:
/// - `staging/`: kubelet creates the staging directory itself before NodeStageVolume
///   (the spec: "The CO SHALL be responsible for creating the directory").
/// - `pod/`: kubelet creates only the *parent* of the target path (`mkdir -p` of
///   `pods/<uid>/volumes/kubernetes.io~csi/<pv>` for mounts,
///   `plugins/kubernetes.io/csi/volumeDevices/publish/<pv>` for block), and the plugin
///   creates `target` itself: a directory for mounts, a device file for block
///   (the spec: "Creation of target_path is the responsibility of the SP").
/// - After NodeUnpublishVolume, kubelet removes whatever is left at the target path
///   if it is not a mount point; so do we, but a leftover mount is reported.
pub struct Volume {
    pub name: String,
    dir: PathBuf,
    pub id: Option<String>,
    /// Set while a CreateVolume timed out: replaying it with the same name is the only
    /// way to learn the ID of a volume that may exist.
    unanswered_create: Option<CreateVolumeRequest>,
    context: HashMap<String, String>,
    publish_context: HashMap<String, String>,
    // The flags below are set *before* each call: a call that fails or times out may
    // have done its work, and the undoing call is idempotent, so cleanup always issues it.
    controller_published: bool,
    staged: Option<PathBuf>,
    published: Option<PathBuf>,
}

impl Volume {
    pub fn new(work: &Workload, name: String) -> Self {
        let dir = work.run_dir.join(&name);
        Self {
            name,
            dir,
            id: None,
            unanswered_create: None,
            context: HashMap::new(),
            publish_context: HashMap::new(),
            controller_published: false,
            staged: None,
            published: None,
        }
    }

    fn id(&self) -> Result<&str, Error> {
        self.id
            .as_deref()
            .ok_or_else(|| Error::Unsupported(format!("volume {} was never created", self.name)))
    }

    /// Where the workload sees the volume, once published.
    pub fn target(&self) -> Result<&Path, Error> {
        self.published
            .as_deref()
            .ok_or_else(|| Error::Unsupported(format!("volume {} is not published", self.name)))
    }

    pub fn staging(&self) -> Option<&Path> {
        self.staged.as_deref()
    }

    pub async fn create(
        &mut self,
        work: &Workload,
        rec: &mut Recorder,
        source: Option<VolumeContentSource>,
        call: Call,
    ) -> Result<(), Error> {
        let request = CreateVolumeRequest {
            name: self.name.clone(),
            capacity_range: Some(work.capacity(work.size)),
            volume_capabilities: vec![work.capability()],
            parameters: work.parameters.clone(),
            volume_content_source: source,
            accessibility_requirements: work.discovery.accessibility(),
            ..Default::default()
        };
        self.unanswered_create = Some(request.clone());
        let response = match work
            .csi
            .timed(
                rec,
                call,
                work.csi.controller.clone().create_volume(request),
            )
            .await
        {
            Err(err @ Error::Timeout { .. }) => return Err(err),
            other => {
                self.unanswered_create = None;
                other?
            }
        };
        self.accept_created(call, response.volume, work.size)
    }

    fn accept_created(
        &mut self,
        call: Call,
        volume: Option<plinth_csi_proto::v1::Volume>,
        size: u64,
    ) -> Result<(), Error> {
        let protocol = |problem: String| Error::Protocol { call, problem };
        let volume = volume.ok_or_else(|| protocol("no volume in the response".into()))?;
        if volume.volume_id.is_empty() {
            return Err(protocol("empty volume_id".into()));
        }
        self.id = Some(volume.volume_id);
        self.context = volume.volume_context;
        let capacity = u64::try_from(volume.capacity_bytes)
            .map_err(|_| protocol("negative capacity_bytes".into()))?;
        if capacity != 0 && capacity < size {
            return Err(protocol(format!(
                "capacity_bytes {capacity} is below the required {size}"
            )));
        }
        Ok(())
    }

    pub async fn controller_publish(
        &mut self,
        work: &Workload,
        rec: &mut Recorder,
    ) -> Result<(), Error> {
        if !work.controller_publishes() {
            return Ok(());
        }
        let request = ControllerPublishVolumeRequest {
            volume_id: self.id()?.to_owned(),
            node_id: work.discovery.node_id.clone(),
            volume_capability: Some(work.capability()),
            readonly: false,
            secrets: work.secrets.clone(),
            volume_context: self.context.clone(),
        };
        self.controller_published = true;
        let response = work
            .csi
            .timed(
                rec,
                Call::ControllerPublishVolume,
                work.csi
                    .controller
                    .clone()
                    .controller_publish_volume(request),
            )
            .await?;
        self.publish_context = response.publish_context;
        Ok(())
    }

    pub async fn stage(&mut self, work: &Workload, rec: &mut Recorder) -> Result<(), Error> {
        if !work.stages() {
            return Ok(());
        }
        let staging = self.dir.join("staging");
        create_dir_all(&staging)?;
        self.staged = Some(staging.clone());
        let request = NodeStageVolumeRequest {
            volume_id: self.id()?.to_owned(),
            publish_context: self.publish_context.clone(),
            staging_target_path: path_string(&staging)?,
            volume_capability: Some(work.capability()),
            secrets: work.secrets.clone(),
            volume_context: self.context.clone(),
        };
        work.csi
            .timed(
                rec,
                Call::NodeStageVolume,
                work.csi.node.clone().node_stage_volume(request),
            )
            .await?;
        Ok(())
    }

    pub async fn publish(&mut self, work: &Workload, rec: &mut Recorder) -> Result<(), Error> {
        let parent = self.dir.join("pod");
        create_dir_all(&parent)?;
        let target = parent.join("volume");
        let request = NodePublishVolumeRequest {
            volume_id: self.id()?.to_owned(),
            publish_context: self.publish_context.clone(),
            staging_target_path: self
                .staged
                .as_deref()
                .map(path_string)
                .transpose()?
                .unwrap_or_default(),
            target_path: path_string(&target)?,
            volume_capability: Some(work.capability()),
            readonly: false,
            secrets: work.secrets.clone(),
            volume_context: self.context.clone(),
        };
        self.published = Some(target.clone());
        work.csi
            .timed(
                rec,
                Call::NodePublishVolume,
                work.csi.node.clone().node_publish_volume(request),
            )
            .await?;
        check_published(work.access, &target)
    }

    /// Everything after CreateVolume, up to a volume a workload could use.
    pub async fn attach(&mut self, work: &Workload, rec: &mut Recorder) -> Result<(), Error> {
        self.controller_publish(work, rec).await?;
        self.stage(work, rec).await?;
        self.publish(work, rec).await
    }

    /// Undoes [`Volume::attach`] as far as it got, leaving the volume created.
    pub async fn detach(&mut self, work: &Workload, rec: &mut Recorder) -> Result<(), Error> {
        if let Some(target) = self.published.clone() {
            let request = NodeUnpublishVolumeRequest {
                volume_id: self.id()?.to_owned(),
                target_path: path_string(&target)?,
            };
            work.csi
                .timed(
                    rec,
                    Call::NodeUnpublishVolume,
                    work.csi.node.clone().node_unpublish_volume(request),
                )
                .await?;
            self.published = None;
            remove_unmounted(&target, Call::NodeUnpublishVolume)?;
        }
        if let Some(staging) = self.staged.clone() {
            let request = NodeUnstageVolumeRequest {
                volume_id: self.id()?.to_owned(),
                staging_target_path: path_string(&staging)?,
            };
            work.csi
                .timed(
                    rec,
                    Call::NodeUnstageVolume,
                    work.csi.node.clone().node_unstage_volume(request),
                )
                .await?;
            self.staged = None;
            remove_unmounted(&staging, Call::NodeUnstageVolume)?;
        }
        if self.controller_published {
            let request = ControllerUnpublishVolumeRequest {
                volume_id: self.id()?.to_owned(),
                node_id: work.discovery.node_id.clone(),
                secrets: work.secrets.clone(),
            };
            work.csi
                .timed(
                    rec,
                    Call::ControllerUnpublishVolume,
                    work.csi
                        .controller
                        .clone()
                        .controller_unpublish_volume(request),
                )
                .await?;
            self.controller_published = false;
            self.publish_context.clear();
        }
        Ok(())
    }

    pub async fn delete(&mut self, work: &Workload, rec: &mut Recorder) -> Result<(), Error> {
        self.detach(work, rec).await?;
        if let Some(id) = self.id.clone() {
            let request = DeleteVolumeRequest {
                volume_id: id,
                secrets: work.secrets.clone(),
            };
            work.csi
                .timed(
                    rec,
                    Call::DeleteVolume,
                    work.csi.controller.clone().delete_volume(request),
                )
                .await?;
            self.id = None;
        }
        for dir in [self.dir.join("pod"), self.dir.clone()] {
            match std::fs::remove_dir(&dir) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(Error::io("remove", dir)(e));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Best-effort undo after a failure. Stops at the first step that fails (deleting
    /// a volume that may still be mounted is worse than leaking it) and says what is
    /// left behind, so a human can finish the job.
    pub async fn cleanup(&mut self, work: &Workload) {
        let mut scratch = Recorder::default();
        let replay = if self.id.is_none() {
            self.unanswered_create.take()
        } else {
            None
        };
        if let Some(request) = replay {
            let answer = work
                .csi
                .call(
                    Call::CreateVolume,
                    work.csi.controller.clone().create_volume(request),
                )
                .await;
            if let Ok(response) = answer {
                // Only the ID matters here; a bad response has nothing to clean up.
                let _ = self.accept_created(Call::CreateVolume, response.volume, 0);
            }
        }
        if let Err(err) = self.delete(work, &mut scratch).await {
            eprintln!(
                "plinth-bench: cleanup of volume {} stopped: {}; left behind: {}",
                self.name,
                crate::report::chain(&err),
                self.leftovers()
            );
        }
    }

    fn leftovers(&self) -> String {
        let mut parts = Vec::new();
        if let Some(path) = &self.published {
            parts.push(format!("published at {}", path.display()));
        }
        if let Some(path) = &self.staged {
            parts.push(format!("staged at {}", path.display()));
        }
        if self.controller_published {
            parts.push("controller-published".into());
        }
        match &self.id {
            Some(id) => parts.push(format!("volume_id {id}")),
            None => parts.push(format!("directory {}", self.dir.display())),
        }
        parts.join(", ")
    }
}

fn path_string(path: &Path) -> Result<String, Error> {
    path.to_str()
        .map(str::to_owned)
        .ok_or_else(|| Error::Unsupported(format!("{} is not valid UTF-8", path.display())))
}

fn create_dir_all(path: &Path) -> Result<(), Error> {
    use std::os::unix::fs::DirBuilderExt;
    // kubelet creates these 0750.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(path)
        .map_err(Error::io("create", path))
}

/// A successful NodePublishVolume must leave a mounted directory or a block device at
/// the target path; a plugin that answers OK without doing so fails the run.
fn check_published(access: AccessKind, target: &Path) -> Result<(), Error> {
    let problem = |what: &str| Error::Protocol {
        call: Call::NodePublishVolume,
        problem: format!("{} {what}", target.display()),
    };
    match access {
        AccessKind::Mount => match mounts::is_mount_point(target) {
            Ok(true) => Ok(()),
            Ok(false) => Err(problem("is not a mount point")),
            Err(e) => Err(Error::io("inspect", target)(e)),
        },
        AccessKind::Block => match mounts::is_block_device(target) {
            Ok(true) => Ok(()),
            Ok(false) => Err(problem("is not a block device")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(problem("was not created")),
            Err(e) => Err(Error::io("inspect", target)(e)),
        },
    }
}

/// Removes a path the plugin should have unmounted, like kubelet does after the
/// unpublish/unstage call; a path that is still a mount point is the plugin's fault.
fn remove_unmounted(path: &Path, call: Call) -> Result<(), Error> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("inspect", path)(e)),
    };
    if mounts::is_mount_point(path).map_err(Error::io("inspect", path))? {
        return Err(Error::Protocol {
            call,
            problem: format!("{} is still a mount point", path.display()),
        });
    }
    let removed = if meta.is_dir() {
        std::fs::remove_dir(path)
    } else {
        std::fs::remove_file(path)
    };
    removed.map_err(Error::io("remove", path))
}
