//! What a tenant on the node cannot do through the driver: mount options that weaken
//! the node, paths outside the kubelet directory, symlinks planted where the driver
//! mounts or removes. And kubelet's SELinux mount option, which must get through.
//!
//! All on real loop devices and mounts, against the real binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use common::*;
use plinth_csi_proto::v1;
use tonic::Code;
use v1::volume_capability::{AccessType, MountVolume};

/// Exactly what kubelet passes with `seLinuxMount: true` (`context=%q` of the label).
const KUBELET_SELINUX: &str = r#"context="system_u:object_r:container_file_t:s0:c1,c2""#;

fn mount_cap_with(flags: &[&str]) -> v1::VolumeCapability {
    mode_cap(
        Mode::SingleNodeWriter,
        AccessType::Mount(MountVolume {
            fs_type: "ext4".into(),
            mount_flags: flags.iter().map(|f| (*f).to_owned()).collect(),
            ..Default::default()
        }),
    )
}

/// The per-mount options mountinfo shows for `point`.
fn mount_options(point: &Path) -> Option<Vec<String>> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let point = fs::canonicalize(point).unwrap_or_else(|_| point.to_path_buf());
    info.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        (Path::new(fields[4]) == point).then(|| fields[5].split(',').map(str::to_owned).collect())
    })
}

fn is_mount_point(point: &Path) -> bool {
    mount_options(point).is_some()
}

#[tokio::test]
async fn staged_and_published_mounts_are_nosuid_and_nodev() {
    let driver = TestDriver::start().await;
    let mut node = driver.node().await;
    let cap = mount_cap("ext4");
    let volume = create(&driver, &name("nosuid"), cap.clone(), 32 * MIB).await;
    let id = volume.volume_id.as_str();
    let staging = driver.staging(id);
    let target = driver.target("nosuid");
    node.node_stage_volume(stage_request(id, &staging, cap.clone()))
        .await
        .unwrap();
    node.node_publish_volume(publish_request(id, &staging, &target, cap.clone(), false))
        .await
        .unwrap();
    for point in [&staging, &target] {
        let options = mount_options(Path::new(point)).expect("mounted");
        for flag in ["nosuid", "nodev"] {
            assert!(
                options.iter().any(|o| o == flag),
                "{point} lacks {flag}: {options:?}"
            );
        }
    }
    node.node_unpublish_volume(unpublish_request(id, &target))
        .await
        .unwrap();
    node.node_unstage_volume(unstage_request(id, &staging))
        .await
        .unwrap();
}

#[tokio::test]
async fn mount_options_that_weaken_the_node_are_refused_naming_the_option() {
    let driver = TestDriver::start().await;
    let mut controller = driver.controller().await;
    let mut node = driver.node().await;
    let volume = create(&driver, &name("options"), mount_cap("ext4"), 32 * MIB).await;
    let id = volume.volume_id.as_str();
    let staging = driver.staging(id);
    let target = driver.target("options");
    for option in [
        "suid",
        "dev",
        "errors=panic",
        "nobarrier",
        "barrier=0",
        "logdev=/dev/sda1",
        "journal_path=/dev/sda1",
        "journal_dev=0x0801",
    ] {
        let cap = mount_cap_with(&["noatime", option]);
        let refused = [
            assert_code(
                controller
                    .create_volume(create_request(&name("bad"), cap.clone(), 32 * MIB, 0))
                    .await,
                Code::InvalidArgument,
            ),
            assert_code(
                node.node_stage_volume(stage_request(id, &staging, cap.clone()))
                    .await,
                Code::InvalidArgument,
            ),
            assert_code(
                node.node_publish_volume(publish_request(id, &staging, &target, cap, false))
                    .await,
                Code::InvalidArgument,
            ),
        ];
        for message in refused {
            assert!(message.contains(option), "{option}: {message}");
        }
    }
    assert!(driver.mounts().is_empty(), "{:?}", driver.mounts());
    assert!(driver.loops().is_empty());
}

/// kubelet's form of the SELinux option is accepted and handed to mount(2) unchanged.
/// This node's kernel decides what happens then: with SELinux on, the volume mounts;
/// without it the kernel refuses `context=` (ext4: "Unknown parameter 'context'"), and
/// the driver says exactly that, with the option as it went to mount(2), leaving
/// nothing attached.
#[tokio::test]
async fn kubelets_selinux_context_option_reaches_mount() {
    let driver = TestDriver::start().await;
    let mut controller = driver.controller().await;
    let mut node = driver.node().await;
    let cap = mount_cap_with(&[KUBELET_SELINUX]);
    let volume = controller
        .create_volume(create_request(&name("selinux"), cap.clone(), 32 * MIB, 0))
        .await
        .expect("CreateVolume accepts kubelet's SELinux option")
        .into_inner()
        .volume
        .unwrap();
    let id = volume.volume_id.as_str();
    let staging = driver.staging(id);
    let staged = node
        .node_stage_volume(stage_request(id, &staging, cap.clone()))
        .await;
    if Path::new("/sys/fs/selinux/enforce").exists() {
        staged.expect("staging with an SELinux context on an SELinux node");
        node.node_unstage_volume(unstage_request(id, &staging))
            .await
            .unwrap();
    } else {
        let message = assert_code(staged, Code::FailedPrecondition);
        assert!(message.contains(KUBELET_SELINUX), "{message}");
        assert!(message.contains("SELinux is not enabled"), "{message}");
        assert!(!is_mount_point(Path::new(&staging)));
        assert!(driver.loops().is_empty(), "{:?}", driver.loops());
    }
}

#[tokio::test]
async fn paths_outside_the_kubelet_directory_are_refused() {
    let driver = TestDriver::start().await;
    let mut node = driver.node().await;
    let cap = mount_cap("ext4");
    let volume = create(&driver, &name("outside"), cap.clone(), 32 * MIB).await;
    let id = volume.volume_id.as_str();
    let elsewhere = driver.dir().join("elsewhere");
    fs::create_dir_all(&elsewhere).unwrap();
    let outside_staging = elsewhere.join("staging").display().to_string();
    let outside_target = elsewhere.join("target").display().to_string();
    let message = assert_code(
        node.node_stage_volume(stage_request(id, &outside_staging, cap.clone()))
            .await,
        Code::InvalidArgument,
    );
    assert!(message.contains("kubelet directory"), "{message}");
    let staging = driver.staging(id);
    node.node_stage_volume(stage_request(id, &staging, cap.clone()))
        .await
        .unwrap();
    assert_code(
        node.node_publish_volume(publish_request(
            id,
            &staging,
            &outside_target,
            cap.clone(),
            false,
        ))
        .await,
        Code::InvalidArgument,
    );
    assert_code(
        node.node_unpublish_volume(unpublish_request(id, &outside_target))
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(driver.mounts(), vec![PathBuf::from(&staging)]);
    assert!(fs::read_dir(&elsewhere).unwrap().next().is_none());
    node.node_unstage_volume(unstage_request(id, &staging))
        .await
        .unwrap();
}

/// A directory outside the kubelet directory that planted symlinks point to; it must
/// come through every call unchanged.
struct Canary {
    dir: PathBuf,
    /// Empty: what a removal through the link would delete.
    empty: PathBuf,
    /// Holds a file: what a mount through the link would hide.
    full: PathBuf,
    /// A file: what a block volume's device bind through the link would cover.
    file: PathBuf,
}

impl Canary {
    fn new(driver: &TestDriver) -> Self {
        let dir = driver.dir().join("canary");
        let empty = dir.join("empty");
        let full = dir.join("full");
        let file = dir.join("file");
        fs::create_dir_all(&empty).unwrap();
        fs::create_dir_all(&full).unwrap();
        fs::write(full.join("keep"), b"canary").unwrap();
        fs::write(&file, b"canary file").unwrap();
        Self {
            dir,
            empty,
            full,
            file,
        }
    }

    #[track_caller]
    fn check(&self) {
        assert!(self.empty.is_dir(), "the empty canary was removed");
        assert_eq!(
            fs::read_dir(&self.full).unwrap().count(),
            1,
            "something was created in the canary"
        );
        assert_eq!(fs::read(self.full.join("keep")).unwrap(), b"canary");
        assert_eq!(fs::read(&self.file).unwrap(), b"canary file");
        let mounted: Vec<_> = mounts_under(&self.dir);
        assert!(mounted.is_empty(), "mounted over the canary: {mounted:?}");
    }
}

#[track_caller]
fn assert_symlink_refused<T: std::fmt::Debug>(result: Result<T, tonic::Status>) {
    let message = assert_code(result, Code::InvalidArgument);
    assert!(message.contains("symlink"), "{message}");
}

#[tokio::test]
async fn a_symlink_at_the_staging_path_is_never_followed() {
    let driver = TestDriver::start().await;
    let mut node = driver.node().await;
    let canary = Canary::new(&driver);
    let cap = mount_cap("ext4");
    let volume = create(&driver, &name("staging-link"), cap.clone(), 32 * MIB).await;
    let id = volume.volume_id.as_str();
    // The staging path: a symlink to the empty canary (stage would mount over it).
    let linked = driver.kubelet_dir().join("staging/linked");
    fs::create_dir_all(linked.parent().unwrap()).unwrap();
    symlink(&canary.empty, &linked).unwrap();
    let linked = linked.display().to_string();
    assert_symlink_refused(
        node.node_stage_volume(stage_request(id, &linked, cap.clone()))
            .await,
    );
    assert_symlink_refused(node.node_unstage_volume(unstage_request(id, &linked)).await);
    canary.check();
    assert!(driver.mounts().is_empty(), "{:?}", driver.mounts());
    assert!(driver.loops().is_empty(), "{:?}", driver.loops());
}

/// Stage for real, then publish, unpublish and measure at `target`, which the test
/// has made a symlink or put under one: every call is refused and the canary is intact.
async fn refuse_publishing_through(driver: &TestDriver, canary: &Canary, target: &Path) {
    let mut node = driver.node().await;
    let cap = mount_cap("ext4");
    let volume = create(driver, &name("target-link"), cap.clone(), 32 * MIB).await;
    let id = volume.volume_id.as_str();
    let staging = driver.staging(id);
    node.node_stage_volume(stage_request(id, &staging, cap.clone()))
        .await
        .unwrap();
    let target = target.display().to_string();
    // Unpublish first, as after a crash: it must not remove what the link points to
    // (the old driver removed the empty canary here).
    assert_symlink_refused(
        node.node_unpublish_volume(unpublish_request(id, &target))
            .await,
    );
    canary.check();
    assert_symlink_refused(
        node.node_publish_volume(publish_request(id, &staging, &target, cap.clone(), false))
            .await,
    );
    canary.check();
    assert_symlink_refused(
        node.node_get_volume_stats(v1::NodeGetVolumeStatsRequest {
            volume_id: id.to_owned(),
            volume_path: target.clone(),
            staging_target_path: String::new(),
        })
        .await,
    );
    canary.check();
    assert_eq!(driver.mounts(), vec![PathBuf::from(&staging)]);
    node.node_unstage_volume(unstage_request(id, &staging))
        .await
        .unwrap();
    canary.check();
}

#[tokio::test]
async fn a_symlink_at_the_target_path_is_never_followed() {
    let driver = TestDriver::start().await;
    let canary = Canary::new(&driver);
    let pod = driver.kubelet_dir().join("pods/pod-a/volumes");
    fs::create_dir_all(&pod).unwrap();
    let target = pod.join("mount");
    symlink(&canary.empty, &target).unwrap();
    refuse_publishing_through(&driver, &canary, &target).await;
    assert!(fs::symlink_metadata(&target).unwrap().is_symlink());
}

#[tokio::test]
async fn a_symlink_at_a_parent_of_the_target_path_is_never_followed() {
    let driver = TestDriver::start().await;
    let canary = Canary::new(&driver);
    let pods = driver.kubelet_dir().join("pods");
    fs::create_dir_all(&pods).unwrap();
    symlink(&canary.full, pods.join("pod-b")).unwrap();
    refuse_publishing_through(&driver, &canary, &pods.join("pod-b/volumes/mount")).await;
}

#[tokio::test]
async fn a_symlink_at_the_block_device_file_is_never_followed() {
    let driver = TestDriver::start().await;
    let mut node = driver.node().await;
    let canary = Canary::new(&driver);
    let volume = create(&driver, &name("block-link"), block_cap(), 16 * MIB).await;
    let id = volume.volume_id.as_str();
    let staging = driver.staging(id);
    // The device file the driver creates under the staging path, planted first.
    symlink(&canary.file, Path::new(&staging).join(id)).unwrap();
    assert_symlink_refused(
        node.node_stage_volume(stage_request(id, &staging, block_cap()))
            .await,
    );
    canary.check();
    assert!(driver.mounts().is_empty(), "{:?}", driver.mounts());
    assert!(driver.loops().is_empty(), "{:?}", driver.loops());

    // The same for a block publish target.
    fs::remove_file(Path::new(&staging).join(id)).unwrap();
    node.node_stage_volume(stage_request(id, &staging, block_cap()))
        .await
        .unwrap();
    let target = driver.target("block-link");
    symlink(&canary.file, &target).unwrap();
    assert_symlink_refused(
        node.node_publish_volume(publish_request(id, &staging, &target, block_cap(), false))
            .await,
    );
    assert_symlink_refused(
        node.node_unpublish_volume(unpublish_request(id, &target))
            .await,
    );
    canary.check();
    node.node_unstage_volume(unstage_request(id, &staging))
        .await
        .unwrap();
    canary.check();
}
