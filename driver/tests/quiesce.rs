//! What keeps a node usable while storage work runs and when the driver stops: a
//! filesystem frozen for a copy is thawed at shutdown even if the copy is still running,
//! and the readiness Probe answers while every blocking thread is busy with storage work.
//! Its own test binary: `thaw_all` acts on every filesystem this process holds frozen.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod storage_support;

use std::sync::mpsc;
use std::time::Duration;

use clap::Parser;
use plinth_driver::config::{Cli, Config};
use plinth_driver::state::Driver;
use plinth_driver::storage::freeze::{self, Quiesced};
use plinth_driver::storage::pool::Pool;
use storage_support::{Sandbox, private_fs};

const MIB: u64 = 1 << 20;

#[test]
fn shutdown_thaws_a_filesystem_a_running_copy_holds_frozen() {
    let sb = Sandbox::new();
    let mnt = private_fs(&sb, "frozen", 64 * MIB);
    let frozen = Quiesced::Frozen(freeze::freeze(&mnt).unwrap());
    assert!(frozen.is_intact());

    // A pod's writer blocks on the frozen filesystem...
    let (done, wrote) = mpsc::channel();
    let file = mnt.join("written-by-the-pod");
    std::thread::spawn(move || done.send(std::fs::write(&file, b"pod data").is_ok()));
    assert!(
        wrote.recv_timeout(Duration::from_millis(300)).is_err(),
        "a write went through a frozen filesystem"
    );
    // ...until shutdown thaws what the copy still holds.
    assert_eq!(freeze::thaw_all(), 1);
    assert!(wrote.recv_timeout(Duration::from_secs(10)).unwrap());
    // The copy finishing afterwards learns its source was thawed under it.
    assert!(!frozen.is_intact());
    drop(frozen);
    assert_eq!(freeze::thaw_all(), 0, "nothing else is held frozen");
    assert_eq!(
        std::fs::read(mnt.join("written-by-the-pod")).unwrap(),
        b"pod data"
    );
}

#[test]
fn probe_answers_while_every_blocking_thread_is_busy() {
    let sb = Sandbox::new();
    let pool_dir = sb.join("pool");
    let cli = Cli::try_parse_from([
        "plinth-driver",
        "--node-id",
        "n1",
        "--pool",
        pool_dir.to_str().unwrap(),
    ])
    .unwrap();
    let driver = Driver::new(Config::from_cli(cli, None).unwrap());
    driver.set_pool(Pool::open(&pool_dir, 0).unwrap());
    // One blocking thread, held by storage work that outlasts the check.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (release, held) = std::sync::mpsc::channel::<()>();
        let busy = tokio::task::spawn_blocking(move || held.recv_timeout(Duration::from_secs(30)));
        tokio::task::yield_now().await;
        let ready = tokio::time::timeout(Duration::from_secs(5), driver.ready()).await;
        release.send(()).unwrap();
        busy.await.unwrap().unwrap();
        assert_eq!(ready, Ok(true), "Probe waited behind storage work");
    });
}
