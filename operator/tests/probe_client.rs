//! The probe client against real driver processes over real Unix sockets: this
//! workspace's `plinth-driver` binary (all-in-one mode, different `--disable` sets, so
//! different capability sets), and a minimal tonic server for a driver that claims a
//! Controller service it does not serve. The rendered controller sidecars follow what
//! each driver advertised.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use plinth_api::Feature;
use plinth_api::capabilities::{DriverFeatures, PluginCapability};
use plinth_csi_proto::v1;
use plinth_operator::crd::CsiDeployment;
use plinth_operator::probe::{Endpoints, Limits, ProbeError, probe};
use plinth_operator::render::{self, RenderEnv};
use serde_json::json;

const DRIVER_NAME: &str = "probe.test.plinth.dev";

/// `plinth-driver` next to this test's executable (`target/<profile>/`): `cargo test
/// --workspace` builds it; a lone `cargo test -p plinth-operator` may not.
fn driver_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let bin = profile_dir.join("plinth-driver");
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build -p plinth-driver` (same CARGO_TARGET_DIR and profile), or run `cargo test --workspace`",
        bin.display()
    );
    bin
}

/// A real `plinth-driver --mode all-in-one` on its own socket and pool.
struct Driver {
    dir: tempfile::TempDir,
    child: Option<Child>,
    socket: PathBuf,
}

impl Driver {
    fn spawn(disable: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("csi.sock");
        let mut args = vec![
            format!("--endpoint=unix://{}", socket.display()),
            "--node-id=probe-node".to_owned(),
            format!("--pool={}", dir.path().join("pool").display()),
            format!("--kubelet-dir={}", dir.path().join("kubelet").display()),
            format!("--driver-name={DRIVER_NAME}"),
            "--mode=all-in-one".to_owned(),
        ];
        if !disable.is_empty() {
            args.push(format!("--disable={}", disable.join(",")));
        }
        let log = std::fs::File::create(dir.path().join("driver.log")).unwrap();
        let child = Command::new(driver_binary())
            .args(&args)
            .env_remove("CSI_ENDPOINT")
            .env_remove("NODE_ID")
            .env_remove("PLINTH_DISABLE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn plinth-driver");
        Self {
            dir,
            child: Some(child),
            socket,
        }
    }

    fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(i32::try_from(self.child.as_ref().unwrap().id()).unwrap())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("driver.log")).unwrap_or_default()
    }

    /// SIGKILL: the socket file stays behind, nothing listens on it.
    fn kill(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(self.pid_of(&child), nix::sys::signal::SIGCONT);
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Driver {
    fn pid_of(&self, child: &Child) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap())
    }
}

fn only(path: &Path) -> Endpoints {
    Endpoints {
        controller: None,
        node: Some(path.to_path_buf()),
    }
}

fn limits(socket_wait: u64, call: u64) -> Limits {
    Limits {
        socket_wait: Duration::from_secs(socket_wait),
        call_timeout: Duration::from_secs(call),
    }
}

/// A third-party CR rendered with `caps` as its probe's answer.
fn controller_containers(caps: &plinth_api::capabilities::Capabilities) -> Vec<String> {
    let cr: CsiDeployment = serde_json::from_value(json!({
        "apiVersion": "plinth.dev/v1alpha1", "kind": "CsiDeployment",
        "metadata": {"name": "probed"},
        "spec": {"namespace": "storage",
                 "driver": {"name": DRIVER_NAME, "image": "example.com/driver:v1",
                            "thirdParty": {}}}
    }))
    .unwrap();
    let env = RenderEnv {
        snapshot_crds_present: true,
        driver_capabilities: Some(caps.clone()),
        ..RenderEnv::default()
    };
    let rendered = render::render(&cr, &env).unwrap();
    rendered
        .sidecars
        .iter()
        .map(|n| n.sidecar.container_name().to_owned())
        .collect()
}

#[tokio::test]
async fn each_disable_set_is_probed_exactly_and_decides_the_sidecars() {
    let cases: [(&[&str], &[&str]); 3] = [
        (
            &[],
            &[
                "csi-provisioner",
                "csi-resizer",
                "csi-snapshotter",
                "liveness-probe",
            ],
        ),
        (
            &["snapshots", "group-snapshots"],
            &["csi-provisioner", "csi-resizer", "liveness-probe"],
        ),
        (
            &["expansion", "snapshots", "group-snapshots"],
            &["csi-provisioner", "liveness-probe"],
        ),
    ];
    for (disable, sidecars) in cases {
        let driver = Driver::spawn(disable);
        let result = probe(&only(&driver.socket), limits(60, 10))
            .await
            .unwrap_or_else(|e| panic!("probe with --disable {disable:?}: {e}\n{}", driver.log()));
        // What the driver's own capability model says it advertises with these switches.
        let mut features = plinth_api::served_features_all_in_one();
        for d in disable {
            let feature = Feature::from_switch(d).unwrap_or_else(|| panic!("case uses {d}"));
            features.set(feature, false);
        }
        let mut want = features.capabilities();
        want.lifecycle_modes.clear();
        assert_eq!(result.capabilities, want, "--disable {disable:?}");
        assert_eq!(result.driver_name, DRIVER_NAME);
        assert_eq!(result.vendor_version, env!("CARGO_PKG_VERSION"));
        assert!(result.node_asked);
        assert_eq!(
            controller_containers(&result.capabilities),
            sidecars,
            "--disable {disable:?}"
        );
    }
}

#[tokio::test]
async fn two_instances_controller_capabilities_from_one_node_capabilities_from_the_other() {
    let full = Driver::spawn(&[]);
    let small = Driver::spawn(&["expansion", "snapshots", "group-snapshots"]);
    let result = probe(
        &Endpoints {
            controller: Some(full.socket.clone()),
            node: Some(small.socket.clone()),
        },
        limits(60, 10),
    )
    .await
    .unwrap();
    let all = DriverFeatures::default().capabilities();
    assert_eq!(result.capabilities.controller, all.controller);
    let small_caps = DriverFeatures {
        expansion: false,
        ..DriverFeatures::default()
    }
    .capabilities();
    assert_eq!(result.capabilities.node, small_caps.node);
    // Plugin capabilities merge: the controller's (with expansion) and the node's.
    assert!(
        result
            .capabilities
            .plugin
            .contains(&PluginCapability::OnlineExpansion)
    );
}

#[tokio::test]
async fn nothing_listening_is_socket_never_appeared_naming_the_path_and_the_wait() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("csi.sock");
    let err = probe(&only(&socket), limits(1, 5)).await.unwrap_err();
    assert_eq!(
        err,
        ProbeError::SocketNeverAppeared {
            path: socket.display().to_string(),
            waited_seconds: 1,
        }
    );
    assert_eq!(
        err.to_string(),
        format!(
            "the driver's socket {0} did not appear within 1 s: the driver did not start serving CSI there; check the driver container's log, and that its endpoint argument or variable names {0}",
            socket.display()
        )
    );
}

#[tokio::test]
async fn a_crashed_driver_leaves_a_socket_nothing_accepts_on() {
    let mut driver = Driver::spawn(&[]);
    // Up and serving first, then killed: its socket file stays.
    probe(&only(&driver.socket), limits(60, 10)).await.unwrap();
    driver.kill();
    assert!(driver.socket.exists());
    let err = probe(&only(&driver.socket), limits(1, 5))
        .await
        .unwrap_err();
    let ProbeError::ConnectFailed { path, reason } = &err else {
        panic!("expected ConnectFailed, got {err:?}");
    };
    assert_eq!(path, &driver.socket.display().to_string());
    assert!(reason.contains("Connection refused"), "{reason}");
    assert_eq!(err.reason(), "DriverNotListening");
}

#[tokio::test]
async fn a_driver_exiting_at_start_never_creates_its_socket() {
    // An invalid flag value: the driver exits at once (exit code 2), no socket.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("csi.sock");
    let status = Command::new(driver_binary())
        .arg(format!("--endpoint=unix://{}", socket.display()))
        .arg("--pool=relative/pool")
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(2));
    let err = probe(&only(&socket), limits(1, 5)).await.unwrap_err();
    assert!(
        matches!(err, ProbeError::SocketNeverAppeared { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_stopped_driver_times_out_naming_the_rpc() {
    let driver = Driver::spawn(&[]);
    probe(&only(&driver.socket), limits(60, 10)).await.unwrap();
    // SIGSTOP: the kernel still accepts connections on the socket, nobody answers.
    nix::sys::signal::kill(driver.pid(), nix::sys::signal::SIGSTOP).unwrap();
    let err = probe(&only(&driver.socket), limits(5, 1))
        .await
        .unwrap_err();
    nix::sys::signal::kill(driver.pid(), nix::sys::signal::SIGCONT).unwrap();
    let ProbeError::TimedOut {
        rpc,
        path,
        timeout_seconds,
    } = &err
    else {
        panic!("expected TimedOut, got {err:?}");
    };
    assert_eq!(rpc, "GetPluginInfo");
    assert_eq!(path, &driver.socket.display().to_string());
    assert_eq!(*timeout_seconds, 1);
    assert_eq!(
        err.to_string(),
        format!(
            "the driver did not answer GetPluginInfo within 1 s on {}: it accepts connections but does not serve them (hung or overloaded); check the driver container's log",
            driver.socket.display()
        )
    );
}

/// Identity only: claims CONTROLLER_SERVICE, serves no Controller service (tonic answers
/// UNIMPLEMENTED for a service it does not route).
struct ClaimsController;

#[tonic::async_trait]
impl v1::identity_server::Identity for ClaimsController {
    async fn get_plugin_info(
        &self,
        _: tonic::Request<v1::GetPluginInfoRequest>,
    ) -> Result<tonic::Response<v1::GetPluginInfoResponse>, tonic::Status> {
        Ok(tonic::Response::new(v1::GetPluginInfoResponse {
            name: "liar.example.com".to_owned(),
            vendor_version: "0.0.1".to_owned(),
            manifest: Default::default(),
        }))
    }
    async fn get_plugin_capabilities(
        &self,
        _: tonic::Request<v1::GetPluginCapabilitiesRequest>,
    ) -> Result<tonic::Response<v1::GetPluginCapabilitiesResponse>, tonic::Status> {
        use v1::plugin_capability::{Service, Type, service};
        Ok(tonic::Response::new(v1::GetPluginCapabilitiesResponse {
            capabilities: vec![v1::PluginCapability {
                r#type: Some(Type::Service(Service {
                    r#type: service::Type::ControllerService as i32,
                })),
            }],
        }))
    }
    async fn probe(
        &self,
        _: tonic::Request<v1::ProbeRequest>,
    ) -> Result<tonic::Response<v1::ProbeResponse>, tonic::Status> {
        Ok(tonic::Response::new(v1::ProbeResponse {
            ready: Some(true),
        }))
    }
}

#[tokio::test]
async fn controller_service_claimed_but_unimplemented_is_its_own_error() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("csi.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(v1::identity_server::IdentityServer::new(ClaimsController))
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
    );
    let err = probe(&only(&socket), limits(5, 5)).await.unwrap_err();
    server.abort();
    assert_eq!(
        err,
        ProbeError::ControllerUnimplemented {
            path: socket.display().to_string()
        }
    );
    assert_eq!(err.reason(), "ControllerUnimplemented");
}

/// Not an assertion on time (tests never are): prints the client's cost against a real
/// driver, from a ready socket to the answer, over 20 probes. `--nocapture` shows it.
#[tokio::test]
async fn measure_probe_latency() {
    let driver = Driver::spawn(&[]);
    probe(&only(&driver.socket), limits(60, 10)).await.unwrap();
    let mut samples = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        probe(&only(&driver.socket), limits(60, 10)).await.unwrap();
        samples.push(started.elapsed());
    }
    samples.sort();
    println!(
        "probe against a running plinth-driver (connect + 5 RPCs): p50 {:?}, max {:?} (n=20)",
        samples[10], samples[19]
    );
    // From process start: the socket wait included, as in the probe Job.
    let mut cold = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let driver = Driver::spawn(&[]);
        probe(&only(&driver.socket), limits(60, 10)).await.unwrap();
        cold.push(started.elapsed());
    }
    cold.sort();
    println!(
        "probe from driver process start: p50 {:?}, max {:?} (n=5)",
        cold[2], cold[4]
    );
}
