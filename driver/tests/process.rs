//! The driver as a process: socket handling, signals, crash recovery, concurrency.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use plinth_csi_proto::v1;
use tonic::Code;

#[tokio::test]
async fn sigterm_exits_cleanly_and_removes_only_the_socket() {
    let mut driver = TestDriver::start().await;
    let mode = fs::metadata(&driver.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "socket permissions");
    let volume = create(&driver, &name("sigterm"), block_cap(), 4 * MIB).await;
    let status = driver.terminate().await;
    assert!(status.success(), "exit status {status}");
    assert!(!driver.socket.exists(), "socket left behind after SIGTERM");
    // The pool (and the volume in it) is untouched.
    assert!(
        driver
            .pool
            .join(format!("volumes/{}.json", volume.volume_id))
            .exists()
    );
    assert!(
        !driver.log().contains("hunter2-secret"),
        "a request secret reached the log"
    );
}

/// Runs the binary on `socket` and expects it to give up with a failure status.
fn expect_startup_failure(dir: &Path, socket: &Path) -> String {
    let output = Command::new(driver_binary())
        .arg(format!("--endpoint=unix://{}", socket.display()))
        .arg("--node-id=test-node")
        .arg(format!("--pool={}", dir.join("pool-2").display()))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success(), "driver started on a taken socket");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn never_removes_a_live_socket_or_a_non_socket_file() {
    let driver = TestDriver::start().await;
    let log = expect_startup_failure(driver.dir(), &driver.socket);
    assert!(log.contains("in use"), "{log}");
    // The first driver still answers.
    driver
        .identity()
        .await
        .probe(v1::ProbeRequest {})
        .await
        .unwrap();

    let file = driver.dir().join("not-a-socket");
    fs::write(&file, b"precious").unwrap();
    let log = expect_startup_failure(driver.dir(), &file);
    assert!(log.contains("not a socket"), "{log}");
    assert_eq!(fs::read(&file).unwrap(), b"precious");
}

#[tokio::test]
async fn invalid_configuration_is_refused_at_startup() {
    for args in [
        vec!["--endpoint=tcp://127.0.0.1:1", "--node-id=n"],
        vec!["--endpoint=unix:///tmp/x.sock", "--node-id=bad/node"],
        vec![
            "--endpoint=unix:///tmp/x.sock",
            "--node-id=n",
            "--pool=relative",
        ],
        vec![
            "--endpoint=unix:///tmp/x.sock",
            "--node-id=n",
            "--pool-reserve=12 parsecs",
        ],
    ] {
        let status = Command::new(driver_binary())
            .args(&args)
            .env_remove("NODE_ID")
            .env_remove("KUBE_NODE_NAME")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(!status.success(), "{args:?} accepted");
    }
}

/// Two drivers on one pool would each recover, reap and allocate as if alone: the second
/// refuses to start, says why, and the first goes on serving, its volumes untouched.
#[tokio::test]
async fn a_second_driver_refuses_a_pool_that_another_driver_serves() {
    let first = TestDriver::start().await;
    let vol = create(&first, &name("owned"), mount_cap("ext4"), 16 * MIB).await;
    let staging = first.staging("owned");
    first
        .node()
        .await
        .node_stage_volume(stage_request(&vol.volume_id, &staging, mount_cap("ext4")))
        .await
        .unwrap();

    let mut second = TestDriver::prepare(&[]).with_pool(&first.pool);
    second.spawn_unready();
    let status = second.wait_exit(Duration::from_secs(30)).await;
    assert!(!status.success(), "a second driver served the pool");
    let log = second.log();
    assert!(
        log.contains("is in use by another driver process") && log.contains("one owner"),
        "the refusal does not say why:\n{log}"
    );

    // The first driver still serves, and its staged volume is still attached.
    assert_eq!(first.loops().len(), 1);
    let listed = first
        .controller()
        .await
        .list_volumes(v1::ListVolumesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.entries.len(), 1);
    first
        .node()
        .await
        .node_unstage_volume(unstage_request(&vol.volume_id, &staging))
        .await
        .unwrap();
}

#[tokio::test]
async fn restart_after_kill_9_with_volumes_staged_and_published() {
    let mut driver = TestDriver::start().await;
    let fs_cap = mount_cap("ext4");
    let fs_volume = create(&driver, &name("crash-fs"), fs_cap.clone(), 32 * MIB).await;
    let block_volume = create(&driver, &name("crash-block"), block_cap(), 8 * MIB).await;
    let volumes = [
        (fs_volume.volume_id.clone(), fs_cap.clone()),
        (block_volume.volume_id.clone(), block_cap()),
    ];
    let mut paths = Vec::new();
    {
        let mut node = driver.node().await;
        for (id, cap) in &volumes {
            let staging = driver.staging(id);
            let target = driver.target(id);
            node.node_stage_volume(stage_request(id, &staging, cap.clone()))
                .await
                .unwrap();
            node.node_publish_volume(publish_request(id, &staging, &target, cap.clone(), false))
                .await
                .unwrap();
            paths.push((staging, target));
        }
    }
    let fs_target = paths[0].1.clone();
    fs::write(Path::new(&fs_target).join("before-crash"), b"durable").unwrap();
    nix::unistd::sync();
    let mounts_before = driver.mounts().len();
    let loops_before = driver.loops().len();

    driver.kill9();
    assert!(driver.socket.exists(), "kill -9 leaves the socket behind");
    driver.spawn().await;

    // Recovery kept what is in use: no loop device detached or duplicated.
    assert_eq!(driver.loops().len(), loops_before);
    assert_eq!(driver.mounts().len(), mounts_before);
    let listed = driver
        .controller()
        .await
        .list_volumes(v1::ListVolumesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.entries.len(), 2);

    let mut node = driver.node().await;
    for ((id, cap), (staging, target)) in volumes.iter().zip(&paths) {
        // Repeats of the calls kubelet may retry after a restart are idempotent.
        node.node_stage_volume(stage_request(id, staging, cap.clone()))
            .await
            .unwrap();
        node.node_publish_volume(publish_request(id, staging, target, cap.clone(), false))
            .await
            .unwrap();
        let usage = node
            .node_get_volume_stats(v1::NodeGetVolumeStatsRequest {
                volume_id: id.clone(),
                volume_path: target.clone(),
                staging_target_path: staging.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .usage;
        assert!(!usage.is_empty());
    }
    assert_eq!(
        fs::read(Path::new(&fs_target).join("before-crash")).unwrap(),
        b"durable"
    );
    for ((id, _), (staging, target)) in volumes.iter().zip(&paths) {
        node.node_unpublish_volume(unpublish_request(id, target))
            .await
            .unwrap();
        node.node_unstage_volume(unstage_request(id, staging))
            .await
            .unwrap();
        driver
            .controller()
            .await
            .delete_volume(v1::DeleteVolumeRequest {
                volume_id: id.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    driver.assert_nothing_left();
}

/// Runs `n` copies of a call at once on separate connections.
async fn race<F, Fut, T>(n: usize, call: F) -> Vec<Result<T, tonic::Status>>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = (0..n).map(|_| tokio::spawn(call())).collect();
    let mut results = Vec::new();
    for handle in handles {
        results.push(handle.await.unwrap());
    }
    results
}

fn assert_ok_or_aborted<T: std::fmt::Debug>(results: &[Result<T, tonic::Status>]) -> usize {
    let mut ok = 0;
    for result in results {
        match result {
            Ok(_) => ok += 1,
            Err(status) => assert_eq!(
                status.code(),
                Code::Aborted,
                "concurrent call failed otherwise: {status:?}"
            ),
        }
    }
    assert!(ok >= 1, "every concurrent call was aborted");
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_calls_on_one_volume_never_interleave() {
    let driver = TestDriver::start().await;
    let volume_name = name("race");
    let results = race(6, || {
        let socket = driver.socket.clone();
        let request = create_request(&volume_name, mount_cap("ext4"), 32 * MIB, 0);
        async move {
            let channel = plinth_csi_proto::connect_unix(socket).await.unwrap();
            v1::controller_client::ControllerClient::new(channel)
                .create_volume(request)
                .await
                .map(|r| r.into_inner().volume.unwrap().volume_id)
        }
    })
    .await;
    assert_ok_or_aborted(&results);
    let ids: std::collections::BTreeSet<_> = results.into_iter().filter_map(Result::ok).collect();
    assert_eq!(ids.len(), 1, "one name, one volume: {ids:?}");
    let id = ids.into_iter().next().unwrap();

    let staging = driver.staging(&id);
    let results = race(6, || {
        let socket = driver.socket.clone();
        let request = stage_request(&id, &staging, mount_cap("ext4"));
        async move {
            let channel = plinth_csi_proto::connect_unix(socket).await.unwrap();
            v1::node_client::NodeClient::new(channel)
                .node_stage_volume(request)
                .await
                .map(|_| ())
        }
    })
    .await;
    assert_ok_or_aborted(&results);
    assert_eq!(driver.loops().len(), 1, "one staging, one loop device");
    assert_eq!(driver.mounts().len(), 1, "one staging, one mount");

    let results = race(6, || {
        let socket = driver.socket.clone();
        let request = unstage_request(&id, &staging);
        async move {
            let channel = plinth_csi_proto::connect_unix(socket).await.unwrap();
            v1::node_client::NodeClient::new(channel)
                .node_unstage_volume(request)
                .await
                .map(|_| ())
        }
    })
    .await;
    assert_ok_or_aborted(&results);
    // Whatever won, a final unstage settles it, and nothing is left.
    driver
        .node()
        .await
        .node_unstage_volume(unstage_request(&id, &staging))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !driver.loops().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(driver.loops().is_empty() && driver.mounts().is_empty());
}

#[tokio::test]
async fn probe_is_not_ready_until_the_pool_can_be_opened() {
    let mut driver = TestDriver::prepare(&[]);
    // A regular file where the pool directory should be: the pool cannot open.
    fs::write(&driver.pool, b"in the way").unwrap();
    driver.spawn_unready();
    let deadline = Instant::now() + Duration::from_secs(30);
    let probe = loop {
        if driver.socket.exists()
            && let Ok(channel) = plinth_csi_proto::connect_unix(&driver.socket).await
        {
            break v1::identity_client::IdentityClient::new(channel)
                .probe(v1::ProbeRequest {})
                .await
                .unwrap()
                .into_inner();
        }
        assert!(
            Instant::now() < deadline,
            "socket never appeared:\n{}",
            driver.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(probe.ready, Some(false));
    // Volume calls wait for the pool: UNAVAILABLE, which the sidecars retry.
    assert_code(
        driver
            .controller()
            .await
            .create_volume(create_request(&name("early"), block_cap(), MIB, 0))
            .await,
        Code::Unavailable,
    );
    // Once the obstacle is gone the driver opens the pool by itself.
    fs::remove_file(&driver.pool).unwrap();
    driver.wait_ready().await;
    create(&driver, &name("late"), block_cap(), MIB).await;
}

#[tokio::test]
async fn sigterm_with_an_idle_client_connection_still_exits() {
    let mut driver = TestDriver::start().await;
    // Sidecars and kubelet keep their connection open between calls.
    let mut identity = driver.identity().await;
    identity.probe(v1::ProbeRequest {}).await.unwrap();
    let started = Instant::now();
    let status = driver.terminate().await;
    eprintln!(
        "exit after SIGTERM with an open connection took {:?}",
        started.elapsed()
    );
    assert!(status.success(), "exit status {status}");
    assert!(!driver.socket.exists());
    drop(identity);
}
