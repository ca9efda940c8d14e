//! Encrypted volumes over the driver's socket, on real loop devices and real ext4
//! encryption: what reaches the disk is ciphertext (a plain volume is the control that
//! shows the check can fail), the claim's Secret is needed and checked before anything
//! is touched, snapshots / restores / clones open with the new claim's Secret, a staged
//! volume survives kill -9 in a new mount namespace, CreateVolume refuses what cannot be
//! encrypted, and no secret ever reaches the driver's output.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod data_rpc;

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::*;
use data_rpc::*;
use plinth_csi_proto::v1;
use plinth_driver::storage::crypt::fscrypt::{KEY_INCOMPLETELY_REMOVED, KEY_PRESENT, key_status};
use tonic::Code;

const KEY_A: &str = "claim-A-material-0123456789abcdef0123456789";
const KEY_B: &str = "claim-B-material-fedcba9876543210fedcba9876";

fn require_kernel() {
    assert!(
        Path::new("/sys/fs/ext4/features/encryption").exists(),
        "these tests need a kernel with ext4 encryption (/sys/fs/ext4/features/encryption)"
    );
}

fn encrypted_params() -> HashMap<String, String> {
    HashMap::from([("encryption".to_owned(), "fscrypt".to_owned())])
}

fn secrets(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn key(material: &str) -> HashMap<String, String> {
    secrets(&[("encryptionKey", material)])
}

async fn create_encrypted(driver: &TestDriver, name: &str, size: i64) -> v1::Volume {
    encrypted_volume(driver, create_request(name, mount_cap("ext4"), size, 0)).await
}

async fn restore_encrypted(
    driver: &TestDriver,
    name: &str,
    source: v1::VolumeContentSource,
) -> v1::Volume {
    let req = create_from_request(name, mount_cap("ext4"), 64 * MIB, source);
    encrypted_volume(driver, req).await
}

async fn encrypted_volume(driver: &TestDriver, mut req: v1::CreateVolumeRequest) -> v1::Volume {
    let name = req.name.clone();
    req.parameters = encrypted_params();
    driver
        .controller()
        .await
        .create_volume(req)
        .await
        .unwrap_or_else(|e| panic!("CreateVolume {name} from a source: {e}"))
        .into_inner()
        .volume
        .unwrap()
}

async fn try_stage(
    driver: &TestDriver,
    id: &str,
    staging: &str,
    secrets: HashMap<String, String>,
) -> Result<tonic::Response<v1::NodeStageVolumeResponse>, tonic::Status> {
    let mut req = stage_request(id, staging, mount_cap("ext4"));
    req.secrets = secrets;
    driver.node().await.node_stage_volume(req).await
}

/// Stage with `secrets` and publish under fresh paths named `label`.
async fn open(
    driver: &TestDriver,
    id: &str,
    label: &str,
    secrets: HashMap<String, String>,
) -> Published {
    publish_with(driver, id, label, &mount_cap("ext4"), secrets).await
}

fn image(driver: &TestDriver, id: &str) -> PathBuf {
    driver.pool.join("volumes").join(format!("{id}.img"))
}

fn key_file(driver: &TestDriver, id: &str) -> PathBuf {
    driver.pool.join("volumes").join(format!("{id}.key"))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn status_of(data: &str) -> Option<u32> {
    key_status(Path::new(data)).unwrap()
}

#[tokio::test]
async fn what_reaches_the_disk_is_ciphertext_and_a_plain_volume_shows_the_check_works() {
    require_kernel();
    let driver = TestDriver::start().await;
    let marker = format!("PLINTH-PLAINTEXT-MARKER-{}", std::process::id());
    let file_name = format!("secret-file-name-{}", std::process::id());

    let enc = create_encrypted(&driver, &name("at-rest-enc"), 64 * MIB).await;
    let plain = create(&driver, &name("at-rest-plain"), mount_cap("ext4"), 64 * MIB).await;
    let e = open(&driver, &enc.volume_id, "at-rest-enc", key(KEY_A)).await;
    let p = publish(
        &driver,
        &plain.volume_id,
        "at-rest-plain",
        &mount_cap("ext4"),
    )
    .await;
    // Kernel holds the key while staged; the pod sees data/ (no lost+found of the root).
    assert_eq!(status_of(&format!("{}/data", e.staging)), Some(KEY_PRESENT));
    assert!(!Path::new(&e.target).join("lost+found").exists());
    for target in [&e.target, &p.target] {
        fs::write(Path::new(target).join(&file_name), marker.repeat(64)).unwrap();
    }
    unpublish(&driver, &e).await;
    unpublish(&driver, &p).await;
    driver.assert_nothing_left();

    let plain_bytes = fs::read(image(&driver, &plain.volume_id)).unwrap();
    assert!(
        contains(&plain_bytes, marker.as_bytes()) && contains(&plain_bytes, file_name.as_bytes()),
        "control: a plain volume's image holds its marker and file name, so the grep works"
    );
    let enc_bytes = fs::read(image(&driver, &enc.volume_id)).unwrap();
    assert!(
        !contains(&enc_bytes, marker.as_bytes()),
        "plaintext data on disk"
    );
    assert!(
        !contains(&enc_bytes, file_name.as_bytes()),
        "plaintext file name on disk"
    );

    // The wrapped key: private, bound to the volume, holding no secret.
    let path = key_file(&driver, &enc.volume_id);
    let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let record = fs::read_to_string(&path).unwrap();
    assert!(!record.contains(KEY_A));
    let json: serde_json::Value = serde_json::from_str(&record).unwrap();
    assert_eq!(json["boundTo"], enc.volume_id.as_str());
    assert!(
        !fs::read_to_string(
            driver
                .pool
                .join("volumes")
                .join(format!("{}.json", enc.volume_id))
        )
        .unwrap()
        .contains(KEY_A)
    );

    // Staged again with its Secret, the data is back.
    let again = open(&driver, &enc.volume_id, "at-rest-enc-2", key(KEY_A)).await;
    assert_eq!(read(&again.target, &file_name), marker.repeat(64));
    unpublish(&driver, &again).await;
    delete_volume(&driver, &enc.volume_id).await;
    delete_volume(&driver, &plain.volume_id).await;
    assert!(!path.exists(), "the wrapped key goes with its volume");
    driver.assert_nothing_left();
}

#[tokio::test]
async fn a_wrong_or_missing_secret_is_refused_and_touches_nothing() {
    require_kernel();
    let driver = TestDriver::start().await;
    let vol = create_encrypted(&driver, &name("wrong-key"), 64 * MIB).await;
    let id = vol.volume_id.as_str();

    // Missing before the first stage: refused, nothing made (no key file yet).
    let staging = driver.staging("wrong-key");
    let msg = assert_code(
        try_stage(&driver, id, &staging, HashMap::new()).await,
        Code::InvalidArgument,
    );
    assert!(msg.contains("node-stage-secret-name"), "{msg}");
    assert!(msg.contains("encryptionKey"), "{msg}");
    assert!(!key_file(&driver, id).exists());
    driver.assert_nothing_left();

    let p = open(&driver, id, "wrong-key-first", key(KEY_A)).await;
    write_unsynced(&p.target, "kept", "still here");
    unpublish(&driver, &p).await;
    let wrapped = fs::read(key_file(&driver, id)).unwrap();

    let msg = assert_code(
        try_stage(&driver, id, &staging, key(KEY_B)).await,
        Code::PermissionDenied,
    );
    assert!(msg.contains("does not open"), "{msg}");
    assert!(!msg.contains(KEY_B) && !msg.contains(KEY_A), "{msg}");
    driver.assert_nothing_left();
    assert_eq!(
        fs::read(key_file(&driver, id)).unwrap(),
        wrapped,
        "key file rewritten"
    );

    let msg = assert_code(
        try_stage(&driver, id, &staging, HashMap::new()).await,
        Code::InvalidArgument,
    );
    assert!(
        msg.contains("csi.storage.k8s.io/node-stage-secret-namespace"),
        "{msg}"
    );
    let msg = assert_code(
        try_stage(&driver, id, &staging, key("short")).await,
        Code::InvalidArgument,
    );
    assert!(msg.contains("head -c 32 /dev/urandom | base64"), "{msg}");
    driver.assert_nothing_left();

    let back = open(&driver, id, "wrong-key-back", key(KEY_A)).await;
    assert_eq!(read(&back.target, "kept"), "still here");
    unpublish(&driver, &back).await;
    delete_volume(&driver, id).await;
    driver.assert_nothing_left();
}

#[tokio::test]
async fn restores_and_clones_open_with_the_new_claims_secret() {
    require_kernel();
    let driver = TestDriver::start().await;
    let src = create_encrypted(&driver, &name("enc-src"), 64 * MIB).await;
    let s = open(&driver, &src.volume_id, "enc-src", key(KEY_A)).await;
    write_unsynced(&s.target, "origin", "from the source claim");
    let snap = snapshot(&driver, &name("enc-snap"), &src.volume_id).await;
    let snap_key = driver
        .pool
        .join("snapshots")
        .join(format!("{}.key", snap.snapshot_id));
    assert_eq!(
        fs::read(&snap_key).unwrap(),
        fs::read(key_file(&driver, &src.volume_id)).unwrap(),
        "the snapshot carries its source's wrapped key"
    );

    // A new claim with its own material, and the source's as sourceEncryptionKey.
    let r1 = restore_encrypted(&driver, &name("enc-r1"), from_snapshot(&snap.snapshot_id)).await;
    let staging = driver.staging("enc-r1-bad");
    let msg = assert_code(
        try_stage(&driver, &r1.volume_id, &staging, key(KEY_B)).await,
        Code::PermissionDenied,
    );
    assert!(msg.contains(&r1.volume_id), "{msg}");
    // Only the source's loop device and mounts: the restore was not attached.
    assert_eq!(driver.loops().len(), 1, "{:?}", driver.loops());
    assert_eq!(driver.mounts().len(), 2, "{:?}", driver.mounts());
    let both = secrets(&[("encryptionKey", KEY_B), ("sourceEncryptionKey", KEY_A)]);
    let p1 = open(&driver, &r1.volume_id, "enc-r1", both).await;
    assert_eq!(read(&p1.target, "origin"), "from the source claim");
    unpublish(&driver, &p1).await;
    let json: serde_json::Value =
        serde_json::from_slice(&fs::read(key_file(&driver, &r1.volume_id)).unwrap()).unwrap();
    assert_eq!(
        json["boundTo"],
        r1.volume_id.as_str(),
        "re-wrapped for the new claim"
    );
    // From now on the new claim's Secret alone opens it, and the source's no longer does.
    let p1 = open(&driver, &r1.volume_id, "enc-r1-again", key(KEY_B)).await;
    assert_eq!(read(&p1.target, "origin"), "from the source claim");
    unpublish(&driver, &p1).await;
    assert_code(
        try_stage(&driver, &r1.volume_id, &staging, key(KEY_A)).await,
        Code::PermissionDenied,
    );

    // A claim given the same material as its source needs nothing more.
    let r2 = restore_encrypted(&driver, &name("enc-r2"), from_snapshot(&snap.snapshot_id)).await;
    let p2 = open(&driver, &r2.volume_id, "enc-r2", key(KEY_A)).await;
    assert_eq!(read(&p2.target, "origin"), "from the source claim");
    unpublish(&driver, &p2).await;

    // A clone of the live, staged source.
    let c = restore_encrypted(&driver, &name("enc-clone"), from_volume(&src.volume_id)).await;
    let both = secrets(&[("encryptionKey", KEY_B), ("sourceEncryptionKey", KEY_A)]);
    let pc = open(&driver, &c.volume_id, "enc-clone", both).await;
    assert_eq!(read(&pc.target, "origin"), "from the source claim");
    unpublish(&driver, &pc).await;

    // An encrypted source never lands in a plain class, nor the reverse.
    let plain = driver
        .controller()
        .await
        .create_volume(create_from_request(
            &name("enc-into-plain"),
            mount_cap("ext4"),
            64 * MIB,
            from_snapshot(&snap.snapshot_id),
        ))
        .await;
    let msg = assert_code(plain, Code::InvalidArgument);
    assert!(msg.contains("encrypted StorageClass"), "{msg}");

    delete_snapshot(&driver, &snap.snapshot_id).await.unwrap();
    assert!(!snap_key.exists(), "the snapshot's key goes with it");
    unpublish(&driver, &s).await;
    for id in [&r1.volume_id, &r2.volume_id, &c.volume_id, &src.volume_id] {
        delete_volume(&driver, id).await;
    }
    driver.assert_nothing_left();
}

#[tokio::test]
async fn an_encrypted_volume_expands_reports_stats_and_keeps_its_data() {
    require_kernel();
    let driver = TestDriver::start().await;
    let vol = create_encrypted(&driver, &name("enc-grow"), 64 * MIB).await;
    let p = open(&driver, &vol.volume_id, "enc-grow", key(KEY_A)).await;
    write_unsynced(&p.target, "kept", "across the expansion");
    let before = fs_size(&p.target);
    let stats = driver
        .node()
        .await
        .node_get_volume_stats(v1::NodeGetVolumeStatsRequest {
            volume_id: vol.volume_id.clone(),
            volume_path: p.target.clone(),
            staging_target_path: p.staging.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.usage[0].total, before, "stats of the published data/");

    let grown = driver
        .controller()
        .await
        .controller_expand_volume(v1::ControllerExpandVolumeRequest {
            volume_id: vol.volume_id.clone(),
            capacity_range: Some(v1::CapacityRange {
                required_bytes: 128 * MIB,
                limit_bytes: 0,
            }),
            secrets: key(KEY_A),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(grown.capacity_bytes, 128 * MIB);
    let result = driver
        .node()
        .await
        .node_expand_volume(v1::NodeExpandVolumeRequest {
            volume_id: vol.volume_id.clone(),
            volume_path: p.target.clone(),
            capacity_range: Some(v1::CapacityRange {
                required_bytes: 128 * MIB,
                limit_bytes: 0,
            }),
            staging_target_path: p.staging.clone(),
            secrets: key(KEY_A),
            ..Default::default()
        })
        .await;
    // As for a plain ext4 volume: grown online where the node may (CAP_SYS_RESOURCE),
    // else refused saying why, with the filesystem untouched.
    match result {
        Ok(reply) => {
            assert_eq!(reply.into_inner().capacity_bytes, 128 * MIB);
            assert!(fs_size(&p.target) > before + 32 * MIB);
        }
        Err(status) => {
            assert_eq!(
                status.code(),
                Code::FailedPrecondition,
                "{}",
                status.message()
            );
            assert!(
                status.message().contains("CAP_SYS_RESOURCE"),
                "{}",
                status.message()
            );
            assert_eq!(fs_size(&p.target), before);
        }
    }
    assert_eq!(read(&p.target, "kept"), "across the expansion");
    unpublish(&driver, &p).await;
    let p = open(&driver, &vol.volume_id, "enc-grow-2", key(KEY_A)).await;
    assert_eq!(read(&p.target, "kept"), "across the expansion");
    assert_eq!(
        device_size_of_image(&driver, &vol.volume_id),
        128 * MIB,
        "the image grew"
    );
    unpublish(&driver, &p).await;
    delete_volume(&driver, &vol.volume_id).await;
    driver.assert_nothing_left();
}

fn device_size_of_image(driver: &TestDriver, id: &str) -> i64 {
    i64::try_from(fs::metadata(image(driver, id)).unwrap().len()).unwrap()
}

#[tokio::test]
async fn a_staged_encrypted_volume_survives_kill_9_and_no_stray_key_stays() {
    require_kernel();
    let mut driver = TestDriver::prepare(&[]).in_new_mount_namespace();
    driver.spawn().await;
    let a = create_encrypted(&driver, &name("enc-kill-a"), 64 * MIB).await;
    let b = create_encrypted(&driver, &name("enc-kill-b"), 64 * MIB).await;
    let pa = open(&driver, &a.volume_id, "enc-kill-a", key(KEY_A)).await;
    let pb = open(&driver, &b.volume_id, "enc-kill-b", key(KEY_B)).await;
    write_unsynced(&pa.target, "a", "staged through the crash");
    write_unsynced(&pb.target, "b", "in a pod whose staging went away");
    // B's staging is unmounted behind the driver's back: only the pod's bind of data/
    // keeps its filesystem (and the key in it) alive. Nothing staged needs that key.
    nix::mount::umount2(Path::new(&pb.staging), nix::mount::MntFlags::MNT_DETACH).unwrap();
    assert_eq!(status_of(&pb.target), Some(KEY_PRESENT));

    driver.kill9();
    driver.spawn().await;

    assert_eq!(read(&pa.target, "a"), "staged through the crash");
    assert_eq!(
        status_of(&format!("{}/data", pa.staging)),
        Some(KEY_PRESENT),
        "a staged volume keeps its key across the restart"
    );
    // Removed: only the inode the pod's bind mount pins (data/ itself) keeps its
    // per-file key until that mount goes; the file in it no longer opens.
    assert_eq!(
        status_of(&pb.target),
        Some(KEY_INCOMPLETELY_REMOVED),
        "the key of a filesystem no staging holds was removed at start"
    );
    let locked = fs::read_to_string(Path::new(&pb.target).join("b"));
    assert!(locked.is_err(), "readable without its key: {locked:?}");
    // Staging again (kubelet after a restart) is idempotent and needs the Secret.
    try_stage(&driver, &a.volume_id, &pa.staging, key(KEY_A))
        .await
        .unwrap();
    assert_code(
        try_stage(&driver, &a.volume_id, &pa.staging, key(KEY_B)).await,
        Code::PermissionDenied,
    );
    assert_eq!(read(&pa.target, "a"), "staged through the crash");

    unpublish(&driver, &pa).await;
    driver
        .node()
        .await
        .node_unpublish_volume(unpublish_request(&b.volume_id, &pb.target))
        .await
        .unwrap();
    driver
        .node()
        .await
        .node_unstage_volume(unstage_request(&b.volume_id, &pb.staging))
        .await
        .unwrap();
    let again = open(&driver, &b.volume_id, "enc-kill-b-2", key(KEY_B)).await;
    assert_eq!(read(&again.target, "b"), "in a pod whose staging went away");
    unpublish(&driver, &again).await;
    for id in [&a.volume_id, &b.volume_id] {
        delete_volume(&driver, id).await;
    }
    driver.assert_nothing_left();
}

#[tokio::test]
async fn create_volume_refuses_what_cannot_be_encrypted_before_allocating() {
    require_kernel();
    let driver = TestDriver::start().await;
    let mut c = driver.controller().await;
    for (label, cap, mode, names) in [
        ("enc-block", block_cap(), "fscrypt", "block"),
        ("enc-xfs", mount_cap("xfs"), "fscrypt", "xfs"),
        ("enc-luks", mount_cap("ext4"), "luks", "\"luks\""),
    ] {
        let mut req = create_request(&name(label), cap, 320 * MIB, 0);
        req.parameters = HashMap::from([("encryption".to_owned(), mode.to_owned())]);
        let msg = assert_code(c.create_volume(req).await, Code::InvalidArgument);
        assert!(msg.contains("encryption") && msg.contains(names), "{msg}");
    }
    // Inline volumes have no claim, so no per-claim Secret: refused.
    let target = driver.target("enc-inline");
    let mut inline = publish_request("csi-inline-enc", "", &target, mount_cap("ext4"), false);
    inline.volume_context = HashMap::from([
        ("csi.storage.k8s.io/ephemeral".to_owned(), "true".to_owned()),
        ("encryption".to_owned(), "fscrypt".to_owned()),
    ]);
    let msg = assert_code(
        driver.node().await.node_publish_volume(inline).await,
        Code::InvalidArgument,
    );
    assert!(msg.contains("inline") && msg.contains("Secret"), "{msg}");
    let listed = c
        .list_volumes(v1::ListVolumesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.entries.is_empty(), "nothing allocated");
    let files: Vec<_> = fs::read_dir(driver.pool.join("volumes")).unwrap().collect();
    assert!(files.is_empty(), "pool files left: {files:?}");
    driver.assert_nothing_left();
}

#[tokio::test]
async fn no_secret_reaches_the_drivers_output_even_at_trace() {
    require_kernel();
    let mut driver = TestDriver::prepare(&[]).env("RUST_LOG", "trace");
    driver.spawn().await;
    let material = format!(
        "LEAKCHECK-{}-0123456789abcdef0123456789abcdef",
        std::process::id()
    );
    let other = format!(
        "LEAKCHECK-{}-source-material-0123456789abcd",
        std::process::id()
    );
    let all = secrets(&[
        ("encryptionKey", &material),
        ("sourceEncryptionKey", &other),
    ]);
    let mut c = driver.controller().await;
    let mut n = driver.node().await;

    let mut req = create_request(&name("leak"), mount_cap("ext4"), 64 * MIB, 0);
    req.parameters = encrypted_params();
    req.secrets = all.clone();
    let vol = c
        .create_volume(req)
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let id = vol.volume_id.clone();
    c.validate_volume_capabilities(v1::ValidateVolumeCapabilitiesRequest {
        volume_id: id.clone(),
        volume_capabilities: vec![mount_cap("ext4")],
        secrets: all.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    // Refused stages log their errors: with a wrong and a short secret too.
    let staging = driver.staging("leak");
    let target = driver.target("leak");
    try_stage(&driver, &id, &staging, all.clone())
        .await
        .unwrap();
    let mut publish = publish_request(&id, &staging, &target, mount_cap("ext4"), false);
    publish.secrets = all.clone();
    n.node_publish_volume(publish).await.unwrap();
    let wrong = secrets(&[("encryptionKey", &other)]);
    assert_code(
        try_stage(&driver, &id, &driver.staging("leak-2"), wrong).await,
        Code::PermissionDenied,
    );
    let short = secrets(&[("encryptionKey", &material[..20])]);
    assert_code(
        try_stage(&driver, &id, &driver.staging("leak-3"), short).await,
        Code::InvalidArgument,
    );
    c.controller_expand_volume(v1::ControllerExpandVolumeRequest {
        volume_id: id.clone(),
        capacity_range: Some(v1::CapacityRange {
            required_bytes: 96 * MIB,
            limit_bytes: 0,
        }),
        secrets: all.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    // Grown or refused (CAP_SYS_RESOURCE): either way it is logged.
    let _ = n
        .node_expand_volume(v1::NodeExpandVolumeRequest {
            volume_id: id.clone(),
            volume_path: target.clone(),
            staging_target_path: staging.clone(),
            secrets: all.clone(),
            ..Default::default()
        })
        .await;
    let mut snap = snapshot_request(&name("leak-snap"), &id);
    snap.secrets = all.clone();
    let snap = c
        .create_snapshot(snap)
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    c.list_snapshots(v1::ListSnapshotsRequest {
        secrets: all.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    c.delete_snapshot(v1::DeleteSnapshotRequest {
        snapshot_id: snap.snapshot_id,
        secrets: all.clone(),
    })
    .await
    .unwrap();
    n.node_unpublish_volume(unpublish_request(&id, &target))
        .await
        .unwrap();
    n.node_unstage_volume(unstage_request(&id, &staging))
        .await
        .unwrap();
    c.delete_volume(v1::DeleteVolumeRequest {
        volume_id: id.clone(),
        secrets: all.clone(),
    })
    .await
    .unwrap();
    driver.terminate().await;

    let log = driver.log();
    assert!(
        log.contains("TRACE"),
        "the driver did not log at trace:\n{log}"
    );
    assert!(log.contains(&id), "the calls are in the log");
    for secret in [&material, &other] {
        let hex: String = secret.bytes().map(|b| format!("{b:02x}")).collect();
        for form in [secret.clone(), base64(secret.as_bytes()), hex] {
            assert!(!log.contains(&form), "a secret reached the log as {form:?}");
        }
        // Nor any recognisable part of it.
        assert!(
            !log.contains("LEAKCHECK"),
            "part of a secret reached the log"
        );
    }
    driver.assert_nothing_left();
}

fn base64(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
