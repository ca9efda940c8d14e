//! Test harness: runs the real `plinth-driver` binary on a temporary socket and pool and
//! talks to it over the Unix socket with tonic clients.
//!
//! Every driver gets its own directory; on drop the harness unmounts only mounts under
//! that directory and detaches only loop devices backed by images in its pool, so tests
//! can run in parallel on a machine shared with other test suites.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use plinth_csi_proto::v1;
use tonic::transport::Channel;
use v1::controller_client::ControllerClient;
use v1::identity_client::IdentityClient;
use v1::node_client::NodeClient;
use v1::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};

pub use v1::volume_capability::access_mode::Mode;

pub const NODE_ID: &str = "test-node";
pub const TOPOLOGY_KEY: &str = "topology.local.csi.plinth.dev/node";
pub const MIB: i64 = 1 << 20;
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Fails loudly when the host cannot run these tests: they need root (mount, loop
/// ioctls) and loop device support. Passing silently would hide a broken driver.
pub fn require_host() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "driver integration tests must run as root (they mount filesystems and attach loop devices)"
    );
    assert!(
        Path::new("/dev/loop-control").exists(),
        "driver integration tests need /dev/loop-control (modprobe loop)"
    );
}

/// A stand-in for the Kubernetes API and a kubeconfig pointing at it: the driver's
/// cluster modes need an API server to start.
pub struct StandIn {
    pub api: plinth_apistub::Running,
    _dir: tempfile::TempDir,
    pub kubeconfig: String,
}

pub async fn stand_in() -> StandIn {
    let api = plinth_apistub::ApiStub::start()
        .await
        .expect("start the API stand-in");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    api.write_kubeconfig(&path).unwrap();
    StandIn {
        api,
        _dir: dir,
        kubeconfig: path.display().to_string(),
    }
}

impl StandIn {
    /// A driver on `node` in a cluster-mode (`--mode=...` in `extra`) talking to this API.
    pub async fn driver(&self, node: &str, extra: &[&str]) -> TestDriver {
        let mut driver = TestDriver::prepare_as(node, extra).env("KUBECONFIG", &self.kubeconfig);
        driver.spawn().await;
        driver
    }
}

/// The binary under test: this build's, or `PLINTH_DRIVER_BIN` (e.g. a release build
/// whose memory use is being measured).
pub fn driver_binary() -> PathBuf {
    std::env::var_os("PLINTH_DRIVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_plinth-driver")))
}

/// A running driver process with its own pool, socket and kubelet-like directory.
pub struct TestDriver {
    dir: tempfile::TempDir,
    child: Option<Child>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// Each start is a new process in a new mount namespace (see
    /// [`TestDriver::in_new_mount_namespace`]).
    new_mount_namespace: bool,
    pub socket: PathBuf,
    pub pool: PathBuf,
}

impl TestDriver {
    /// All-in-one driver with default features.
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// A driver with extra command line arguments (e.g. `--disable capacity`).
    pub async fn start_with(extra: &[&str]) -> Self {
        let mut driver = Self::prepare(extra);
        driver.spawn().await;
        driver
    }

    /// Directory and arguments, no process yet: set up the host, then `spawn`.
    pub fn prepare(extra: &[&str]) -> Self {
        Self::prepare_as(NODE_ID, extra)
    }

    /// [`TestDriver::prepare`] for a driver on node `node_id` (cluster-mode tests run
    /// several "nodes" on this machine).
    pub fn prepare_as(node_id: &str, extra: &[&str]) -> Self {
        require_host();
        let dir = tempfile::Builder::new()
            .prefix("plinth-driver-test-")
            .tempdir()
            .expect("create test directory");
        let socket = dir.path().join("plugin/csi.sock");
        let pool = dir.path().join("pool");
        let kubelet = dir.path().join("kubelet");
        fs::create_dir_all(&kubelet).unwrap();
        let mut args = vec![
            format!("--endpoint=unix://{}", socket.display()),
            format!("--node-id={node_id}"),
            format!("--pool={}", pool.display()),
            "--shutdown-grace-seconds=5".to_owned(),
        ];
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        Self {
            dir,
            child: None,
            args,
            // `--kubelet-dir` by its environment variable: staging and target paths of
            // the tests live there (`staging`, `target`).
            env: vec![(
                "PLINTH_KUBELET_DIR".to_owned(),
                kubelet.display().to_string(),
            )],
            new_mount_namespace: false,
            socket,
            pool,
        }
    }

    /// Start (and restart) the driver the way Kubernetes runs a container: every start
    /// is a new process in a new mount namespace, with its own bind mount of the pool at
    /// the same path (a hostPath volume), and the kubelet directory shared both ways
    /// (Bidirectional propagation), so mounts the driver makes there reach this process
    /// and the next driver. When the driver exits its namespace and its pool mount go
    /// with it, as they do with a container; loop devices it attached stay, bound to
    /// files it opened through a mount that no longer exists anywhere.
    ///
    /// Set up here: this test's directory becomes a private mount (so nothing a driver
    /// mounts beside the kubelet directory propagates back), and the kubelet directory
    /// a shared one.
    pub fn in_new_mount_namespace(mut self) -> Self {
        use nix::mount::{MsFlags, mount};
        let none: Option<&str> = None;
        let dir = self.dir.path().to_path_buf();
        let kubelet = dir.join("kubelet");
        fs::create_dir_all(&self.pool).unwrap();
        for (path, propagation) in [(&dir, MsFlags::MS_PRIVATE), (&kubelet, MsFlags::MS_SHARED)] {
            mount(Some(path), path, none, MsFlags::MS_BIND, none)
                .unwrap_or_else(|e| panic!("bind {}: {e}", path.display()));
            mount(none, path, none, propagation, none)
                .unwrap_or_else(|e| panic!("set propagation of {}: {e}", path.display()));
        }
        self.new_mount_namespace = true;
        self
    }

    /// Serve `pool` instead of this driver's own (a second driver on another's pool).
    pub fn with_pool(mut self, pool: &Path) -> Self {
        for arg in &mut self.args {
            if arg.starts_with("--pool=") {
                *arg = format!("--pool={}", pool.display());
            }
        }
        self.pool = pool.to_path_buf();
        self
    }

    /// Sets an environment variable of the driver process (e.g. KUBECONFIG).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The driver's `--kubelet-dir`.
    pub fn kubelet_dir(&self) -> PathBuf {
        self.dir.path().join("kubelet")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("driver.log")
    }

    /// The driver's log so far (stderr).
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Starts the binary (again) with the same arguments and waits for Probe ready.
    pub async fn spawn(&mut self) {
        self.spawn_unready();
        self.wait_ready().await;
    }

    /// Starts the binary without waiting for readiness.
    pub fn spawn_unready(&mut self) {
        assert!(self.child.is_none(), "driver already running");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let mut command = if self.new_mount_namespace {
            // unshare(1) execs sh, sh execs the driver: one process, whose PID we hold.
            // "unchanged" keeps the kubelet directory a peer of ours (see
            // `in_new_mount_namespace`); the pool bind is made under a private mount.
            let mut c = Command::new("unshare");
            c.args(["--mount", "--propagation", "unchanged", "--", "sh", "-c"])
                .arg(r#"mount --bind "$0" "$0" && exec "$@""#)
                .arg(&self.pool)
                .arg(driver_binary());
            c
        } else {
            Command::new(driver_binary())
        };
        let child = command
            .args(&self.args)
            .env("RUST_LOG", "info,plinth_driver=debug")
            .env_remove("NODE_ID")
            .env_remove("CSI_ENDPOINT")
            .env_remove("KUBECONFIG")
            .env_remove("PLINTH_KUBELET_DIR")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            // Both streams into the log: tests that check what the driver prints (never a
            // secret) read everything it printed.
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn plinth-driver");
        self.child = Some(child);
    }

    /// Waits until Probe answers ready; panics with the driver's log on exit or timeout.
    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("driver exited during start ({status}):\n{}", self.log());
            }
            if self.socket.exists()
                && let Ok(channel) = plinth_csi_proto::connect_unix(&self.socket).await
                && let Ok(reply) = IdentityClient::new(channel)
                    .probe(v1::ProbeRequest {})
                    .await
                && reply.into_inner().ready == Some(true)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "driver not ready after {START_TIMEOUT:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        let child = self.child.as_ref().expect("driver not running");
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap())
    }

    /// SIGKILL, as a crash or an OOM kill would: nothing is cleaned up.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("driver not running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Waits for the process to exit by itself (a start that must fail).
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("driver not running");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("driver still running after {limit:?}:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM and wait for the exit status. Async so that the test's own client
    /// connections keep being served (a graceful HTTP/2 shutdown needs their answers).
    pub async fn terminate(&mut self) -> ExitStatus {
        nix::sys::signal::kill(self.pid(), nix::sys::signal::Signal::SIGTERM).unwrap();
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("driver ignored SIGTERM:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn channel(&self) -> Channel {
        plinth_csi_proto::connect_unix(&self.socket)
            .await
            .expect("connect to the driver socket")
    }

    pub async fn identity(&self) -> IdentityClient<Channel> {
        IdentityClient::new(self.channel().await)
    }

    pub async fn controller(&self) -> ControllerClient<Channel> {
        ControllerClient::new(self.channel().await)
    }

    pub async fn node(&self) -> NodeClient<Channel> {
        NodeClient::new(self.channel().await)
    }

    /// GetPluginInfo.
    pub async fn plugin_info(&self) -> v1::GetPluginInfoResponse {
        self.identity()
            .await
            .get_plugin_info(v1::GetPluginInfoRequest {})
            .await
            .unwrap()
            .into_inner()
    }

    /// GetPluginCapabilities.
    pub async fn plugin_capabilities(&self) -> Vec<v1::PluginCapability> {
        self.identity()
            .await
            .get_plugin_capabilities(v1::GetPluginCapabilitiesRequest {})
            .await
            .unwrap()
            .into_inner()
            .capabilities
    }

    /// A fresh staging directory (the CO creates it, per the spec).
    pub fn staging(&self, name: &str) -> String {
        let path = self.dir.path().join("kubelet/staging").join(name);
        fs::create_dir_all(&path).unwrap();
        path.display().to_string()
    }

    /// A target path whose parent exists (the SP creates the target itself).
    pub fn target(&self, name: &str) -> String {
        let parent = self.dir.path().join("kubelet/pods").join(name);
        fs::create_dir_all(&parent).unwrap();
        parent.join("volume").display().to_string()
    }

    /// Mount points under this test's directory, from this process's mountinfo (the
    /// harness's own binds of [`TestDriver::in_new_mount_namespace`] left out).
    pub fn mounts(&self) -> Vec<PathBuf> {
        let dir = self.dir.path();
        let kubelet = dir.join("kubelet");
        mounts_under(dir)
            .into_iter()
            .filter(|p| !(self.new_mount_namespace && (p == dir || *p == kubelet)))
            .collect()
    }

    /// Fails unless no loop device of this test's pool and no mount under its directory
    /// is left (the harness's own binds aside).
    #[track_caller]
    pub fn assert_nothing_left(&self) {
        assert!(
            self.loops().is_empty(),
            "leaked loop devices: {:?}",
            self.loops()
        );
        assert!(
            self.mounts().is_empty(),
            "leaked mounts: {:?}",
            self.mounts()
        );
    }

    /// Loop devices backed by images of this test's pool.
    pub fn loops(&self) -> Vec<String> {
        loops_backed_under(&self.pool)
    }
}

impl Drop for TestDriver {
    fn drop(&mut self) {
        if std::env::var_os("PLINTH_REPORT_RSS").is_some()
            && let Some(child) = &self.child
        {
            // Peak resident set of the driver over the test: reported, never asserted.
            let status =
                fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
            let peak = status.lines().find(|l| l.starts_with("VmHWM"));
            eprintln!("driver memory: {}", peak.unwrap_or("VmHWM unavailable"));
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- driver log ----\n{}", self.log());
        }
        // Deepest first, so publishes go before the stagings under the same tree.
        let mut mounts = mounts_under(self.dir.path());
        mounts.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for point in mounts {
            let _ = nix::mount::umount2(&point, nix::mount::MntFlags::MNT_DETACH);
        }
        for dev in loops_backed_under(&self.pool) {
            let _ = Command::new("losetup").args(["-d", &dev]).status();
        }
    }
}

fn unescape_mountinfo(field: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as octal.
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// Loop devices backed by files under `dir`, by what `losetup` reports (independent of
/// the driver's own code): the backing file's device and inode, matched against the
/// files under `dir`, or, for files already deleted, the backing path as this process
/// sees it. Paths alone are not enough: a device attached by a driver in another mount
/// namespace reports its file relative to that driver's mount of the pool.
pub fn loops_backed_under(dir: &Path) -> Vec<String> {
    let mut files = std::collections::HashSet::new();
    collect_file_ids(dir, &mut files);
    let Ok(out) = Command::new("losetup")
        .args([
            "--json",
            "--list",
            "-O",
            "NAME,BACK-MAJ:MIN,BACK-INO,BACK-FILE",
        ])
        .output()
    else {
        return Vec::new();
    };
    // No loop device at all: losetup prints nothing.
    let listing: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let Some(devices) = listing["loopdevices"].as_array() else {
        return Vec::new();
    };
    devices
        .iter()
        .filter_map(|d| {
            let name = d["name"].as_str()?;
            let dev = d["back-maj:min"].as_str()?.trim().to_owned();
            let ino = d["back-ino"].as_u64()?;
            let backing = d["back-file"].as_str().unwrap_or("");
            let by_id = files.contains(&(dev, ino));
            let by_path = Path::new(backing).starts_with(dir);
            (by_id || by_path).then(|| name.to_owned())
        })
        .collect()
}

fn collect_file_ids(dir: &Path, out: &mut std::collections::HashSet<(String, u64)>) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            collect_file_ids(&entry.path(), out);
        } else if meta.is_file() {
            let dev = meta.dev();
            let dev = format!(
                "{}:{}",
                nix::sys::stat::major(dev),
                nix::sys::stat::minor(dev)
            );
            out.insert((dev, meta.ino()));
        }
    }
}

pub fn mode_cap(mode: Mode, access: AccessType) -> v1::VolumeCapability {
    v1::VolumeCapability {
        access_mode: Some(AccessMode { mode: mode as i32 }),
        access_type: Some(access),
    }
}

pub fn mount_cap(fs_type: &str) -> v1::VolumeCapability {
    mode_cap(
        Mode::SingleNodeWriter,
        AccessType::Mount(MountVolume {
            fs_type: fs_type.to_owned(),
            ..Default::default()
        }),
    )
}

pub fn block_cap() -> v1::VolumeCapability {
    mode_cap(Mode::SingleNodeWriter, AccessType::Block(BlockVolume {}))
}

pub fn create_request(
    name: &str,
    cap: v1::VolumeCapability,
    required_bytes: i64,
    limit_bytes: i64,
) -> v1::CreateVolumeRequest {
    v1::CreateVolumeRequest {
        name: name.to_owned(),
        capacity_range: Some(v1::CapacityRange {
            required_bytes,
            limit_bytes,
        }),
        volume_capabilities: vec![cap],
        // Secrets travel with real requests; the driver must accept and never log them.
        secrets: HashMap::from([("password".to_owned(), "hunter2-secret".to_owned())]),
        ..Default::default()
    }
}

/// CreateVolume and return the volume.
pub async fn create(
    driver: &TestDriver,
    name: &str,
    cap: v1::VolumeCapability,
    required_bytes: i64,
) -> v1::Volume {
    driver
        .controller()
        .await
        .create_volume(create_request(name, cap, required_bytes, 0))
        .await
        .unwrap_or_else(|e| panic!("CreateVolume {name}: {e}"))
        .into_inner()
        .volume
        .expect("CreateVolume returned no volume")
}

pub fn stage_request(
    volume_id: &str,
    staging: &str,
    cap: v1::VolumeCapability,
) -> v1::NodeStageVolumeRequest {
    v1::NodeStageVolumeRequest {
        volume_id: volume_id.to_owned(),
        staging_target_path: staging.to_owned(),
        volume_capability: Some(cap),
        ..Default::default()
    }
}

pub fn publish_request(
    volume_id: &str,
    staging: &str,
    target: &str,
    cap: v1::VolumeCapability,
    readonly: bool,
) -> v1::NodePublishVolumeRequest {
    v1::NodePublishVolumeRequest {
        volume_id: volume_id.to_owned(),
        staging_target_path: staging.to_owned(),
        target_path: target.to_owned(),
        volume_capability: Some(cap),
        readonly,
        ..Default::default()
    }
}

pub fn unpublish_request(volume_id: &str, target: &str) -> v1::NodeUnpublishVolumeRequest {
    v1::NodeUnpublishVolumeRequest {
        volume_id: volume_id.to_owned(),
        target_path: target.to_owned(),
    }
}

pub fn unstage_request(volume_id: &str, staging: &str) -> v1::NodeUnstageVolumeRequest {
    v1::NodeUnstageVolumeRequest {
        volume_id: volume_id.to_owned(),
        staging_target_path: staging.to_owned(),
    }
}

/// Asserts a gRPC error code, printing the message on mismatch.
#[track_caller]
pub fn assert_code<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: tonic::Code,
) -> String {
    match result {
        Ok(value) => panic!("expected {code:?}, got success: {value:?}"),
        Err(status) => {
            assert_eq!(
                status.code(),
                code,
                "expected {code:?}, got {:?}: {}",
                status.code(),
                status.message()
            );
            status.message().to_owned()
        }
    }
}

/// Asserts INVALID_ARGUMENT with a message naming `field`.
#[track_caller]
pub fn assert_invalid_field<T: std::fmt::Debug>(result: Result<T, tonic::Status>, field: &str) {
    let message = assert_code(result, tonic::Code::InvalidArgument);
    assert!(
        message.contains(field),
        "message does not name {field}: {message}"
    );
}

/// A unique-enough volume name for a test.
pub fn name(test: &str) -> String {
    format!("pvc-{test}-{}", std::process::id())
}
