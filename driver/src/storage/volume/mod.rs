//! Node-side volume operations as library calls: stage, unstage, publish, unpublish,
//! stats. The node service validates requests, holds a per-volume lock, and maps
//! [`VolumeError`] to gRPC codes.
//!
//! All state lives in the kernel — which loop device backs which image (sysfs) and
//! what is mounted where (mountinfo) — so every call is idempotent and a restarted
//! driver continues where the previous one stopped. Calls for different volumes may run
//! concurrently.
//!
//! What stage leaves behind:
//! * mount access: the image on a loop device, formatted (only when blank) and mounted at
//!   the staging path;
//! * block access: the image on a loop device, whose node is bind-mounted onto the file
//!   `<staging path>/<volume id>` so the staging is visible in mountinfo.
//!
//! Publish bind-mounts the staging mount (mount access) or the loop device node (block
//! access, onto a file the driver creates) at the target path.

mod paths;
mod template;

use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::mount::MsFlags;

use crate::mount::mountinfo::find_mount_point;
use crate::mount::options::{ALWAYS, REPORTED_FLAGS};
use crate::mount::{
    self, Detected, Format, FsType, LoopDevice, MountEntry, MountError, MountOptions, loopdev,
    mountinfo, sys,
};
use crate::storage::crypt::{self, CryptError, Secrets};
use crate::storage::grow::{self, GrowError};
use crate::storage::pool::{Pool, PoolError, Volume, VolumeAccess, VolumeId};
use crate::storage::spec::{Access, Capability};

pub use paths::Beneath;
pub use template::MAX_TEMPLATES;

/// How the node exposes a volume (from the request's volume capability).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeAccess {
    /// A filesystem. `fs_type: None` uses the volume's filesystem (ext4 by default).
    Mount {
        fs_type: Option<FsType>,
        mount_flags: Vec<String>,
    },
    /// The raw block device.
    Block,
}

/// A NodeStageVolume request, validated: what [`NodeVolumes::node_stage`] takes.
#[derive(Debug)]
pub struct NodeStage<'a> {
    pub id: &'a VolumeId,
    pub staging: &'a Path,
    pub capability: &'a Capability,
    pub secrets: &'a Secrets,
}

/// A loop device [`NodeVolumes::attach`] returned.
struct Attached {
    dev: LoopDevice,
    /// Attached by this call (so undone if the call fails).
    now: bool,
    /// Filled from a template by this call.
    content: Option<Detected>,
}

/// Whether a call changed anything (for logs and tests; both are success).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Done,
    AlreadyDone,
}

/// Usage of a staged or published volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VolumeStats {
    Filesystem { bytes: Usage, inodes: Usage },
    Block { total_bytes: u64 },
}

/// Total / available / used, as CSI `VolumeUsage` reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    pub total: u64,
    pub available: u64,
    pub used: u64,
}

/// Errors of node-side volume operations. Suggested gRPC codes in brackets.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// [InvalidArgument]
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath { path: PathBuf, reason: &'static str },
    /// Bad mount flags or filesystem type. [InvalidArgument]
    #[error("invalid request: {0}")]
    InvalidRequest(#[source] MountError),
    /// Publish before stage. [FailedPrecondition]
    #[error("volume {id} is not staged at {staging:?}")]
    NotStaged { id: VolumeId, staging: PathBuf },
    /// Unstage while a publish is still mounted. [FailedPrecondition]
    #[error("volume {id} is still in use at {mount_point:?}")]
    StillPublished { id: VolumeId, mount_point: PathBuf },
    /// The path already holds this volume with other options, or something else.
    /// [AlreadyExists]
    #[error("{path:?} is already in use: {reason}")]
    AlreadyExists { path: PathBuf, reason: String },
    /// Unpublish of a mount point that is not this volume's. [NotFound]
    #[error("{path:?} is mounted, but not from volume {id}")]
    NotOurs { id: VolumeId, path: PathBuf },
    /// Stats for a path where the volume is not staged or published. [NotFound]
    #[error("volume {id} is not staged or published at {path:?}")]
    NotAtPath { id: VolumeId, path: PathBuf },
    /// The volume holds another filesystem than requested. [FailedPrecondition]
    #[error("volume {id} holds {found}, {requested} was requested; it is never reformatted")]
    FsMismatch {
        id: VolumeId,
        found: FsType,
        requested: FsType,
    },
    /// The mount flags carry an SELinux context, and the kernel refused it because
    /// SELinux is not enabled on this node. [FailedPrecondition]
    #[error(
        "the mount flags carry an SELinux context, but SELinux is not enabled on this node: {0}"
    )]
    SelinuxUnavailable(#[source] MountError),
    /// The volume holds data that is not a known filesystem. [FailedPrecondition]
    #[error("volume {id} holds unrecognised data; refusing to format it")]
    UnknownData { id: VolumeId },
    /// Spec (NodeStage/NodePublish "exceeds capabilities"): a block volume cannot be
    /// mounted, nor a filesystem volume handed out raw or as another filesystem.
    /// [FailedPrecondition]
    #[error("volume {id} was created as {access:?}; the requested capability does not fit it")]
    DoesNotFit { id: VolumeId, access: VolumeAccess },
    /// Growing a restored volume while staging it. [by variant: see `GrowError`]
    #[error(transparent)]
    Grow(#[from] GrowError),
    /// [by variant: see `PoolError`]
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// A host operation failed. [Internal]
    #[error(transparent)]
    Host(#[from] MountError),
    /// [by variant: see `CryptError::code`]
    #[error(transparent)]
    Crypt(#[from] CryptError),
}

/// The node's volume operations over one pool.
pub struct NodeVolumes {
    pool: Arc<Pool>,
    templates: Option<template::Templates>,
    /// Where staging and target paths must lie; see [`paths`].
    paths: Beneath,
}

impl std::fmt::Debug for NodeVolumes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeVolumes")
            .field("pool", &self.pool)
            .field("templates", &self.templates.is_some())
            .finish_non_exhaustive()
    }
}

/// Whether blank volumes are formatted by copying a cached template image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Formatting {
    /// Spawn mkfs for every blank volume.
    Mkfs,
    /// Copy a per-(fs, size) template formatted once (see [`template`]).
    Templates,
}

impl NodeVolumes {
    /// Template formatting.
    pub fn new(pool: Arc<Pool>) -> Self {
        Self::with_formatting(pool, Formatting::Templates)
    }

    pub fn with_formatting(pool: Arc<Pool>, formatting: Formatting) -> Self {
        let templates = (formatting == Formatting::Templates)
            .then(|| template::Templates::new(pool.templates_dir()));
        Self {
            pool,
            templates,
            paths: Beneath::filesystem_root(),
        }
    }

    /// Serve only paths below `kubelet_dir` (the driver's `--kubelet-dir`). Without it,
    /// any absolute path is taken, still without following symlinks (library use).
    pub fn beneath(mut self, kubelet_dir: &Path) -> Self {
        self.paths = Beneath::new(kubelet_dir);
        self
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Check a staging or target path and return it as mountinfo shows it: below the
    /// kubelet directory, no symlink in it, apart from the pool ([`Beneath::resolve`]).
    pub fn resolve(&self, path: &Path) -> Result<PathBuf, VolumeError> {
        self.paths.resolve(path, self.pool.dir())
    }

    fn path(&self, path: &Path) -> Result<PathBuf, VolumeError> {
        self.resolve(path)
    }

    /// Remove an empty directory or empty file the driver created at `path` (resolved),
    /// through its parent's handle; anything else stays. See [`Beneath::remove_leftover`].
    pub fn remove_leftover(&self, path: &Path) {
        self.paths.remove_leftover(path);
    }

    /// mount(2) onto what `target` holds (through `/proc/self/fd`), errors naming `path`.
    fn mount_at(
        &self,
        source: &Path,
        target: &OwnedFd,
        path: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), MountError> {
        sys::mount(source, &paths::fd_path(target), fstype, flags, data).map_err(|e| e.at(path))
    }

    /// Bind `source` onto what `target` holds, then remount the bind with `flags` (a
    /// first bind ignores most flags). The remount must reach the new mount, which the
    /// handle (the directory underneath) does not: the path is opened again, beneath the
    /// kubelet directory as before. A failed remount undoes the bind.
    fn bind_at(
        &self,
        source: &Path,
        target: OwnedFd,
        path: &Path,
        flags: MsFlags,
    ) -> Result<(), VolumeError> {
        self.mount_at(source, &target, path, None, MsFlags::MS_BIND, None)?;
        drop(target);
        if flags.is_empty() {
            return Ok(());
        }
        let remount = self.paths.open_dir(path).and_then(|mounted| {
            let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags;
            Ok(self.mount_at(source, &mounted, path, None, flags, None)?)
        });
        if let Err(e) = remount {
            if let Err(undo) = sys::unmount(path) {
                tracing::warn!(target = %path.display(), error = %undo, "undoing bind after failed remount");
            }
            return Err(e);
        }
        Ok(())
    }

    fn attached(&self, id: &VolumeId) -> Result<Option<LoopDevice>, VolumeError> {
        Ok(loopdev::find_loop_for(&self.pool.image_path(id))?)
    }

    /// Stage a volume that needs no secrets (not encrypted) at `staging`.
    pub fn stage(
        &self,
        id: &VolumeId,
        staging: &Path,
        access: &NodeAccess,
        readonly: bool,
    ) -> Result<Outcome, VolumeError> {
        self.stage_with(id, staging, access, readonly, &Secrets::default())
    }

    /// NodeStageVolume: the fit check, then [`NodeVolumes::stage_with`], then the growth
    /// of a restored filesystem. The record is read once here and handed down, so every
    /// step judges the same record (and the pool index is locked once, not four times).
    #[tracing::instrument(skip_all, fields(volume_id = %req.id))]
    pub fn node_stage(&self, req: &NodeStage<'_>) -> Result<Outcome, VolumeError> {
        let volume = self.pool.get(req.id)?;
        fits(&volume, req.capability)?;
        let staging = self.path(req.staging)?;
        let readonly = req.capability.mode.read_only();
        let access = req.capability.access.node_access();
        let outcome = self.stage_record(&volume, &staging, &access, readonly, req.secrets)?;
        // A read-only mount cannot be grown, and a block volume has no filesystem to grow.
        if matches!(req.capability.access, Access::Mount { .. }) && !readonly {
            grow::grow_restored(&self.pool, &volume, &staging)?;
        }
        Ok(outcome)
    }

    /// The fit check of NodePublishVolume (see [`VolumeError::DoesNotFit`]).
    pub fn check_fits(&self, id: &VolumeId, capability: &Capability) -> Result<(), VolumeError> {
        fits(&self.pool.get(id)?, capability)
    }

    /// Stage a volume at `staging`. Idempotent; staged with other options ->
    /// [`VolumeError::AlreadyExists`]. An encrypted volume's key is opened with
    /// `secrets` first, before anything is attached (see [`crate::storage::crypt`]); staged, its
    /// filesystem holds the key and its `data/` directory is encrypted under it.
    #[tracing::instrument(skip(self, access, secrets), fields(volume_id = %id))]
    pub fn stage_with(
        &self,
        id: &VolumeId,
        staging: &Path,
        access: &NodeAccess,
        readonly: bool,
        secrets: &Secrets,
    ) -> Result<Outcome, VolumeError> {
        let staging = self.path(staging)?;
        let volume = self.pool.get(id)?;
        self.stage_record(&volume, &staging, access, readonly, secrets)
    }

    /// [`NodeVolumes::stage_with`] for a record already read and a staging path already
    /// resolved.
    fn stage_record(
        &self,
        volume: &Volume,
        staging: &Path,
        access: &NodeAccess,
        readonly: bool,
        secrets: &Secrets,
    ) -> Result<Outcome, VolumeError> {
        let id = &volume.id;
        let opened = if crypt::is_encrypted(&volume.parameters) {
            Some(crypt::open(&self.pool.key_path(id), id.as_str(), secrets)?)
        } else {
            None
        };
        let mounts = mountinfo::read_self()?;
        let existing = self.attached(id)?;
        let device_file = staging.join(id.as_str());

        match access {
            NodeAccess::Mount {
                fs_type,
                mount_flags,
            } => {
                let fs = fs_type.unwrap_or(match volume.access {
                    VolumeAccess::Mount { fs_type } => fs_type,
                    VolumeAccess::Block => FsType::DEFAULT,
                });
                let options =
                    MountOptions::parse(mount_flags).map_err(VolumeError::InvalidRequest)?;
                let mut flags = options.flags;
                flags.set(
                    MsFlags::MS_RDONLY,
                    readonly || flags.contains(MsFlags::MS_RDONLY),
                );
                if let Some(entry) = find_mount_point(&mounts, staging) {
                    let same = existing.as_ref().is_some_and(|d| d.dev == entry.dev)
                        && entry.fs_type == fs.as_str()
                        && flags_match(entry, flags);
                    return if same {
                        // A crash or a failed call may have stopped before the key was
                        // added: make sure, cheaply (both steps are idempotent).
                        if let Some(opened) = &opened {
                            self.unlock(id, staging, opened)?;
                        }
                        Ok(Outcome::AlreadyDone)
                    } else {
                        Err(already(
                            staging,
                            "staged with another filesystem, flags or volume",
                        ))
                    };
                }
                if find_mount_point(&mounts, &device_file).is_some() {
                    return Err(already(staging, "staged as a block volume"));
                }
                let dir = self.paths.create_dir_all(staging)?;
                let format = Format {
                    fs,
                    encrypt: opened.is_some(),
                };
                let attached = self.attach(id, existing, Some((format, volume.size_bytes)))?;
                let result = self
                    .format_and_mount(id, &attached, (&dir, staging), format, flags, &options)
                    .and_then(|()| match &opened {
                        Some(opened) => self.unlock(id, staging, opened).inspect_err(|_| {
                            if let Err(e) = sys::unmount(staging) {
                                tracing::warn!(error = %e, "unmounting after a failed unlock");
                            }
                        }),
                        None => Ok(()),
                    });
                let Attached { dev, now, .. } = attached;
                self.undo_attach_on_error(result, &dev, now)?;
                tracing::info!(dev = %dev.path.display(), staging = %staging.display(), %fs, "staged");
            }
            NodeAccess::Block => {
                if find_mount_point(&mounts, &device_file).is_some() {
                    return match (&existing, device_rdev(&device_file)) {
                        (Some(d), Some(r)) if d.dev == r => Ok(Outcome::AlreadyDone),
                        _ => Err(already(&device_file, "holds another device")),
                    };
                }
                if find_mount_point(&mounts, staging).is_some() {
                    return Err(already(staging, "staged as a filesystem or mounted"));
                }
                self.paths.create_dir_all(staging)?;
                let file = self.paths.create_file(&device_file)?;
                let Attached { dev, now, .. } = self.attach(id, existing, None)?;
                // No nosuid/nodev here: this bind *is* a device node, and nodev would
                // make it unusable; the staging directory is kubelet's, not the pod's.
                let result = self.bind_at(&dev.path, file, &device_file, MsFlags::empty());
                if result.is_err() {
                    self.paths.remove_leftover(&device_file);
                }
                self.undo_attach_on_error(result, &dev, now)?;
                tracing::info!(dev = %dev.path.display(), staging = %staging.display(), "staged block");
            }
        }
        Ok(Outcome::Done)
    }

    /// Store the key file `opened` asks for (before the key protects anything), then add
    /// the key to the filesystem mounted at `staging` and see that `data/` is encrypted.
    fn unlock(
        &self,
        id: &VolumeId,
        staging: &Path,
        opened: &crypt::Opened,
    ) -> Result<(), VolumeError> {
        if let Some(store) = &opened.store {
            crypt::wrap::write(&self.pool.key_path(id), store)?;
        }
        crypt::fscrypt::unlock(staging, &opened.key, id)?;
        Ok(())
    }

    /// Attach the image unless already attached. A blank image about to be formatted
    /// is first filled from a template (before attaching, so no loop device caches the
    /// old contents).
    fn attach(
        &self,
        id: &VolumeId,
        existing: Option<LoopDevice>,
        format: Option<(Format, u64)>,
    ) -> Result<Attached, VolumeError> {
        if let Some(dev) = existing {
            return Ok(Attached {
                dev,
                now: false,
                content: None,
            });
        }
        let image = self.pool.image_path(id);
        let mut content = None;
        if let (Some(templates), Some((format, size))) = (&self.templates, format)
            && mount::fs::detect(&image)? == Detected::Blank
            && let Some(method) = templates.fill(format, size, &image)?
        {
            tracing::debug!(?method, "formatted from template");
            content = Some(Detected::Fs(format.fs));
        }
        Ok(Attached {
            dev: loopdev::attach(&image)?,
            now: true,
            content,
        })
    }

    fn undo_attach_on_error(
        &self,
        result: Result<(), VolumeError>,
        dev: &LoopDevice,
        attached_now: bool,
    ) -> Result<(), VolumeError> {
        if result.is_err()
            && attached_now
            && let Err(e) = loopdev::detach(dev)
        {
            tracing::warn!(dev = %dev.path.display(), error = %e, "detaching after failed stage");
        }
        result
    }

    /// Format the attached device when blank (unless `attached.content` says a template
    /// was just copied in, sparing a second read) and mount it at `staging`.
    fn format_and_mount(
        &self,
        id: &VolumeId,
        attached: &Attached,
        (dir, staging): (&OwnedFd, &Path),
        format: Format,
        flags: MsFlags,
        options: &MountOptions,
    ) -> Result<(), VolumeError> {
        let fs = format.fs;
        let dev = &attached.dev;
        let content = match attached.content {
            Some(known) => known,
            None => mount::fs::detect(&dev.path)?,
        };
        match content {
            Detected::Blank => mount::fs::mkfs(format, &dev.path)?,
            Detected::Fs(found) if found == fs => {}
            Detected::Fs(found) => {
                return Err(VolumeError::FsMismatch {
                    id: id.clone(),
                    found,
                    requested: fs,
                });
            }
            Detected::Unknown => return Err(VolumeError::UnknownData { id: id.clone() }),
        }
        let data = options.data_string(fs.implied_mount_data());
        self.mount_at(
            &dev.path,
            dir,
            staging,
            Some(fs.as_str()),
            flags,
            data.as_deref(),
        )
        .map_err(selinux_unavailable)?;
        Ok(())
    }

    /// Undo [`NodeVolumes::stage`]: unmount, detach. Idempotent. Refused with
    /// [`VolumeError::StillPublished`] while a publish of the volume is mounted.
    #[tracing::instrument(skip(self), fields(volume_id = %id))]
    pub fn unstage(&self, id: &VolumeId, staging: &Path) -> Result<Outcome, VolumeError> {
        let staging = self.path(staging)?;
        self.pool.get(id)?;
        let device_file = staging.join(id.as_str());
        // One scan answers both questions below: the staged (read-write) device, and any
        // read-only devices of read-only block publishes.
        let loops = loopdev::loops_for(&self.pool.image_path(id))?;
        let Some(dev) = loops.iter().find(|d| !d.is_read_only()).cloned() else {
            // Nothing attached: at most an empty leftover file from a crashed stage.
            self.paths.remove_leftover(&device_file);
            return Ok(Outcome::AlreadyDone);
        };
        let mounts = mountinfo::read_self()?;
        let users = dev.users();
        let ours = |m: &&MountEntry| users.contains(m);
        if let Some(other) = mounts
            .iter()
            .filter(ours)
            .find(|m| m.mount_point != staging && m.mount_point != device_file)
        {
            return Err(VolumeError::StillPublished {
                id: id.clone(),
                mount_point: other.mount_point.clone(),
            });
        }
        // Read-only devices of read-only block publishes: in use means still published;
        // unused ones are leftovers of a crash between unmount and detach.
        for ro in loops {
            if ro == dev {
                continue;
            }
            let ro_users = ro.users();
            if let Some(m) = mounts.iter().find(|m| ro_users.contains(m)) {
                return Err(VolumeError::StillPublished {
                    id: id.clone(),
                    mount_point: m.mount_point.clone(),
                });
            }
            loopdev::detach(&ro)?;
        }
        let staged = find_mount_point(&mounts, &staging).filter(ours);
        if let Some(entry) = staged
            && crypt::is_encrypted(&self.pool.get(id)?.parameters)
        {
            // The kernel holds the key only while staged: out before the unmount, so a
            // failed unmount never leaves it behind.
            crypt::fscrypt::lock(&staging, &entry.root)?;
        }
        for point in [&staging, &device_file] {
            if find_mount_point(&mounts, point).filter(ours).is_some() {
                sys::unmount(point)?;
            }
        }
        self.paths.remove_leftover(&device_file);
        loopdev::detach(&dev)?;
        tracing::info!(dev = %dev.path.display(), "unstaged");
        Ok(Outcome::Done)
    }

    /// Publish a staged volume at `target`. Idempotent; published with other options ->
    /// [`VolumeError::AlreadyExists`].
    #[tracing::instrument(skip(self, access), fields(volume_id = %id))]
    pub fn publish(
        &self,
        id: &VolumeId,
        staging: &Path,
        target: &Path,
        access: &NodeAccess,
        readonly: bool,
    ) -> Result<Outcome, VolumeError> {
        let staging = self.path(staging)?;
        let target = self.path(target)?;
        let encrypted = crypt::is_encrypted(&self.pool.get(id)?.parameters);
        let not_staged = || VolumeError::NotStaged {
            id: id.clone(),
            staging: staging.clone(),
        };
        let dev = self.attached(id)?.ok_or_else(not_staged)?;
        let mounts = mountinfo::read_self()?;
        match access {
            NodeAccess::Mount { mount_flags, .. } => {
                let options =
                    MountOptions::parse(mount_flags).map_err(VolumeError::InvalidRequest)?;
                let mut flags = options.per_mount_flags();
                flags.set(
                    MsFlags::MS_RDONLY,
                    readonly || flags.contains(MsFlags::MS_RDONLY),
                );
                find_mount_point(&mounts, &staging)
                    .filter(|m| m.dev == dev.dev)
                    .ok_or_else(not_staged)?;
                // An encrypted volume's data is its `data/` directory: that is what a
                // pod gets, never the filesystem root.
                let root = if encrypted {
                    Path::new("/").join(crypt::DATA_DIR)
                } else {
                    PathBuf::from("/")
                };
                if let Some(entry) = find_mount_point(&mounts, &target) {
                    return if entry.dev == dev.dev
                        && entry.root == root
                        && bind_flags_match(entry, flags)
                    {
                        Ok(Outcome::AlreadyDone)
                    } else {
                        Err(already(
                            &target,
                            "published with other options or another volume",
                        ))
                    };
                }
                let source = if encrypted {
                    self.paths.open_dir(&staging.join(crypt::DATA_DIR))?
                } else {
                    self.paths.open_dir(&staging)?
                };
                let dir = self.paths.create_dir_all(&target)?;
                self.bind_at(&paths::fd_path(&source), dir, &target, flags)?;
            }
            NodeAccess::Block => {
                let device_file = staging.join(id.as_str());
                if device_rdev(&device_file) != Some(dev.dev)
                    || find_mount_point(&mounts, &device_file).is_none()
                {
                    return Err(not_staged());
                }
                if find_mount_point(&mounts, &target).is_some() {
                    // Read-write publishes bind the staged device; read-only ones a
                    // read-only device of their own.
                    let published = device_rdev(&target);
                    let same = if readonly {
                        let ro = loopdev::loops_for(&self.pool.image_path(id))?;
                        ro.iter()
                            .any(|d| Some(d.dev) == published && d.is_read_only())
                    } else {
                        published == Some(dev.dev)
                    };
                    return if same {
                        Ok(Outcome::AlreadyDone)
                    } else {
                        Err(already(
                            &target,
                            "published with other options or another volume",
                        ))
                    };
                }
                if let Some(parent) = target.parent() {
                    self.paths.create_dir_all(parent)?;
                }
                let file = self.paths.create_file(&target)?;
                // A read-only bind of a device node still lets the pod write the device:
                // read-only access gets its own LO_FLAGS_READ_ONLY loop device.
                let (source, own) = if readonly {
                    let image = self.pool.image_path(id);
                    (loopdev::attach_read_only(&image)?, true)
                } else {
                    (dev.clone(), false)
                };
                // A device node: nodev would make it unusable (see stage).
                if let Err(e) = self.bind_at(&source.path, file, &target, MsFlags::empty()) {
                    self.paths.remove_leftover(&target);
                    self.undo_attach_on_error(Err(e), &source, own)?;
                }
            }
        }
        tracing::info!(target = %target.display(), "published");
        Ok(Outcome::Done)
    }

    /// Undo [`NodeVolumes::publish`]: unmount `target` and remove it. Idempotent (a
    /// target that is not mounted is removed if empty, then success); a target mounted
    /// from anything but this volume -> [`VolumeError::NotOurs`].
    #[tracing::instrument(skip(self), fields(volume_id = %id))]
    pub fn unpublish(&self, id: &VolumeId, target: &Path) -> Result<Outcome, VolumeError> {
        let target = self.path(target)?;
        self.pool.get(id)?;
        let mounts = mountinfo::read_self()?;
        let Some(entry) = find_mount_point(&mounts, &target) else {
            self.paths.remove_leftover(&target);
            return Ok(Outcome::AlreadyDone);
        };
        let bound = device_rdev(&target);
        let ours = |d: &LoopDevice| entry.dev == d.dev || bound == Some(d.dev);
        // The staged device (remembered, so no scan) serves every publish but read-only
        // block ones, which have a device of their own: only those need the scan.
        let loops = match self.attached(id)?.filter(|d| ours(d)) {
            Some(rw) => vec![rw],
            None => loopdev::loops_for(&self.pool.image_path(id))?,
        };
        let Some(dev) = loops.iter().find(|d| ours(d)) else {
            return Err(VolumeError::NotOurs {
                id: id.clone(),
                path: target,
            });
        };
        sys::unmount(&target)?;
        self.paths.remove_leftover(&target);
        if bound == Some(dev.dev) && dev.is_read_only() {
            // The read-only device of a read-only block publish is this target's alone.
            loopdev::detach(dev)?;
        }
        tracing::info!(target = %target.display(), "unpublished");
        Ok(Outcome::Done)
    }

    /// Where the volume is published: mount points of any of its loop devices other
    /// than its staging (for the access modes that allow a single publication).
    pub fn publications(&self, id: &VolumeId, staging: &Path) -> Result<Vec<PathBuf>, VolumeError> {
        let staging = self.path(staging)?;
        let device_file = staging.join(id.as_str());
        let loops = loopdev::loops_for(&self.pool.image_path(id))?;
        if loops.is_empty() {
            return Ok(Vec::new());
        }
        let users: Vec<_> = loops.iter().map(LoopDevice::users).collect();
        Ok(mountinfo::read_self()?
            .into_iter()
            .filter(|m| users.iter().any(|u| u.contains(m)))
            .map(|m| m.mount_point)
            .filter(|p| *p != staging && *p != device_file)
            .collect())
    }

    /// Usage of the volume at `path` (its staging or a target path).
    #[tracing::instrument(skip(self), fields(volume_id = %id))]
    pub fn stats(&self, id: &VolumeId, path: &Path) -> Result<VolumeStats, VolumeError> {
        let path = self.path(path)?;
        self.pool.get(id)?;
        let not_here = || VolumeError::NotAtPath {
            id: id.clone(),
            path: path.clone(),
        };
        let dev = self.attached(id)?.ok_or_else(not_here)?;
        let mounts = mountinfo::read_self()?;
        let entry = find_mount_point(&mounts, &path).ok_or_else(not_here)?;
        if entry.dev == dev.dev {
            let st = nix::sys::statvfs::statvfs(&path)
                .map_err(|e| VolumeError::Host(MountError::sys("statvfs", &path)(e)))?;
            let frsize = st.fragment_size();
            let total = st.blocks() * frsize;
            let available = st.blocks_available() * frsize;
            let free = st.blocks_free() * frsize;
            let inodes_total = st.files();
            let inodes_free = st.files_free();
            return Ok(VolumeStats::Filesystem {
                bytes: Usage {
                    total,
                    available,
                    used: total.saturating_sub(free),
                },
                inodes: Usage {
                    total: inodes_total,
                    available: st.files_available(),
                    used: inodes_total.saturating_sub(inodes_free),
                },
            });
        }
        let bound = device_rdev(&path);
        if bound.is_some() {
            let loops = loopdev::loops_for(&self.pool.image_path(id))?;
            if let Some(d) = loops.iter().find(|d| Some(d.dev) == bound) {
                return Ok(VolumeStats::Block {
                    total_bytes: d.size_bytes()?,
                });
            }
        }
        Err(not_here())
    }
}

fn fits(volume: &Volume, capability: &Capability) -> Result<(), VolumeError> {
    if capability.access.fits(volume.access) {
        Ok(())
    } else {
        Err(VolumeError::DoesNotFit {
            id: volume.id.clone(),
            access: volume.access,
        })
    }
}

fn already(path: &Path, reason: &str) -> VolumeError {
    VolumeError::AlreadyExists {
        path: path.to_path_buf(),
        reason: reason.to_owned(),
    }
}

/// Whether an existing mount carries the reported subset of `flags` exactly.
///
/// The flags every mount gets ([`ALWAYS`]) are not compared: a volume staged or
/// published by a driver version that did not set them is still this request's mount,
/// and refusing it would keep new pods off a volume until every old one is gone.
fn flags_match(entry: &MountEntry, flags: MsFlags) -> bool {
    REPORTED_FLAGS
        .iter()
        .filter(|(_, flag)| !ALWAYS.contains(*flag))
        .all(|(name, flag)| entry.has_option(name) == flags.contains(*flag))
}

/// Whether a bind carries every requested flag and the requested read-only state. A bind
/// inherits the flags of the mount it copies, so extra flags do not make it different.
fn bind_flags_match(entry: &MountEntry, flags: MsFlags) -> bool {
    entry.is_read_only() == flags.contains(MsFlags::MS_RDONLY)
        && REPORTED_FLAGS
            .iter()
            .filter(|(_, flag)| !ALWAYS.contains(*flag))
            .all(|(name, flag)| !flags.contains(*flag) || entry.has_option(name))
}

/// `(major, minor)` of the block device at `path`, if it is one.
fn device_rdev(path: &Path) -> Option<(u32, u32)> {
    let meta = fs::metadata(path).ok()?;
    if !meta.file_type().is_block_device() {
        return None;
    }
    let rdev = meta.rdev();
    Some((
        nix::sys::stat::major(rdev) as u32,
        nix::sys::stat::minor(rdev) as u32,
    ))
}

/// A mount with kubelet's SELinux `context=` refused by a kernel without SELinux: say
/// so, instead of a bare EINVAL (kubelet only sends it to nodes where SELinux is on, so
/// this is a node set up unlike its kubelet believes).
fn selinux_unavailable(e: MountError) -> VolumeError {
    match &e {
        MountError::MountData {
            data,
            source: nix::errno::Errno::EINVAL,
            ..
        } if data.contains("context=\"") && !Path::new("/sys/fs/selinux/enforce").exists() => {
            VolumeError::SelinuxUnavailable(e)
        }
        _ => VolumeError::Host(e),
    }
}
