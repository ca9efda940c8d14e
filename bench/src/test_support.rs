//! Test plugins on a real Unix socket, and the harness that points the benchmark at
//! them. Test-only.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use plinth_csi_proto::v1::{controller_server, identity_server, node_server};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

use crate::csi::Csi;
use crate::error::Error;
use crate::jobs::Job;
use crate::runner;
use crate::workload::{AccessKind, Workload};

/// Implements a CSI service trait with the given methods and UNIMPLEMENTED for the
/// rest. The whole impl lives in the macro because `async_trait` must see the
/// expanded methods.
macro_rules! service {
    ($plugin:ty, $service:path { $($methods:tt)* } unimplemented { $($name:ident: $req:ident => $resp:ident),* $(,)? }) => {
        #[tonic::async_trait]
        impl $service for $plugin {
            $($methods)*
            $(
                async fn $name(
                    &self,
                    _: tonic::Request<plinth_csi_proto::v1::$req>,
                ) -> Result<tonic::Response<plinth_csi_proto::v1::$resp>, tonic::Status> {
                    Err(tonic::Status::unimplemented(stringify!($name)))
                }
            )*
        }
    };
}
pub(crate) use service;

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub run_dir: PathBuf,
    pub work: Arc<Workload>,
    server: tokio::task::JoinHandle<()>,
}

/// Serves `plugin` on a socket in a fresh temporary directory and discovers it.
pub async fn start<P>(plugin: P, timeout: Duration, size: u64) -> Harness
where
    P: identity_server::Identity + controller_server::Controller + node_server::Node + Clone,
{
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("csi.sock");
    let run_dir = dir.path().join("run");
    std::fs::create_dir(&run_dir).unwrap();
    let listener = UnixListener::bind(&socket).unwrap();
    let server = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(identity_server::IdentityServer::new(plugin.clone()))
            .add_service(controller_server::ControllerServer::new(plugin.clone()))
            .add_service(node_server::NodeServer::new(plugin))
            .serve_with_incoming(UnixListenerStream::new(listener))
            .await
            .unwrap();
    });
    let endpoint = format!("unix://{}", socket.display());
    let csi = Csi::connect(&endpoint, None, timeout).await.unwrap();
    let discovery = csi.discover().await.unwrap();
    let work = Arc::new(Workload::new(
        csi,
        discovery,
        AccessKind::Mount,
        "ext4".into(),
        size,
        Default::default(),
        run_dir.clone(),
        "t".into(),
    ));
    Harness {
        dir,
        run_dir,
        work,
        server,
    }
}

impl Harness {
    pub fn run_dir_is_empty(&self) -> bool {
        std::fs::read_dir(&self.run_dir).unwrap().next().is_none()
    }

    pub async fn run(
        &self,
        job: Job,
        count: u64,
        concurrency: usize,
    ) -> Result<runner::Batch, Error> {
        let stop = Arc::new(AtomicBool::new(false));
        runner::run(Arc::clone(&self.work), job, count, concurrency, stop).await
    }

    /// Mount points below the test's directory, deepest first.
    pub fn mounts_below(&self) -> Vec<PathBuf> {
        mounts_below(self.dir.path())
    }
}

/// How many successful calls of each kind a batch recorded, in lifecycle order.
pub fn call_counts(batch: &runner::Batch) -> Vec<(crate::call::Call, usize)> {
    let summaries = batch.recorder.call_summaries();
    summaries
        .into_iter()
        .map(|(call, summary)| (call, summary.count))
        .collect()
}

fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.server.abort();
        // A failed test must not leave its mounts behind on a shared machine; only
        // paths inside this test's own temporary directory are touched.
        for path in mounts_below(self.dir.path()) {
            let _ = nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}
