//! The remembered read-write loop device of an image (`loopdev::find_loop_for`) is only
//! a hint: when someone else detaches it behind the driver's back, and even re-binds the
//! same loop number to another file or read-only, the next lookup notices and never
//! hands out a device that no longer holds the image.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod storage_support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use plinth_driver::mount::loopdev;
use storage_support::*;

fn sparse_image(sb: &Sandbox, name: &str) -> PathBuf {
    let p = sb.join(name);
    fs::File::create(&p).unwrap().set_len(8 * MIB).unwrap();
    p
}

/// Another actor on the host, using util-linux rather than our ioctls. `false` when
/// losetup refused (a specific device taken by someone else meanwhile).
fn losetup(args: &[&str]) -> bool {
    let out = Command::new("losetup")
        .args(args)
        .output()
        .expect("losetup (util-linux) is needed to play a foreign actor");
    out.status.success()
}

/// Tests here (and other processes) attach loop devices concurrently; one at a time in
/// this binary keeps a freed number from being taken by the other test.
static SERIAL: Mutex<()> = Mutex::new(());

/// Attach `image` through the driver (remembered), then, as a foreign actor, detach that
/// device and bind the same number to `other` (read-only if asked). Retried when another
/// process takes the freed number first.
fn rebind_behind_our_back(image: &Path, other: &Path, read_only: bool) -> loopdev::LoopDevice {
    for _ in 0..ATTEMPTS {
        let dev = loopdev::attach(image).unwrap();
        assert_eq!(loopdev::find_loop_for(image).unwrap(), Some(dev.clone()));
        assert!(losetup(&["-d", dev_path(&dev)]), "foreign detach");
        let mut args = vec![dev_path(&dev), other.to_str().unwrap()];
        if read_only {
            args.insert(0, "-r");
        }
        if losetup(&args) {
            return dev;
        }
    }
    panic!("loop numbers kept being taken by others; {ATTEMPTS} attempts");
}

const ATTEMPTS: usize = 10;

fn backing_of(number: u32) -> Option<String> {
    fs::read_to_string(format!("/sys/block/loop{number}/loop/backing_file"))
        .ok()
        .map(|s| s.trim().to_owned())
}

fn dev_path(dev: &loopdev::LoopDevice) -> &str {
    dev.path.to_str().unwrap()
}

#[test]
fn a_foreign_detach_and_rebind_of_the_same_number_is_noticed() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let sb = Sandbox::new();
    let a = sparse_image(&sb, "a.img");
    let b = sparse_image(&sb, "b.img");

    let dev = loopdev::attach(&a).unwrap();
    // Served from memory, and right.
    assert_eq!(loopdev::find_loop_for(&a).unwrap(), Some(dev.clone()));

    // Detached behind our back: no device any more.
    assert!(losetup(&["-d", dev_path(&dev)]), "foreign detach");
    assert_eq!(loopdev::find_loop_for(&a).unwrap(), None);

    // The same number re-bound to another file.
    let dev = rebind_behind_our_back(&a, &b, false);
    assert_eq!(backing_of(dev.number).as_deref(), b.to_str());
    assert_eq!(
        loopdev::find_loop_for(&a).unwrap(),
        None,
        "loop{} now holds {}",
        dev.number,
        b.display()
    );
    // The other file's device is found by the scan, under its own image.
    assert_eq!(
        loopdev::find_loop_for(&b).unwrap().map(|d| d.number),
        Some(dev.number)
    );
    loopdev::detach(&dev).unwrap();

    // Re-bound to the same image but read-only: not the read-write device stage made.
    let dev = rebind_behind_our_back(&a, &a, true);
    assert_eq!(backing_of(dev.number).as_deref(), a.to_str());
    assert_eq!(loopdev::find_loop_for(&a).unwrap(), None);
    assert_eq!(
        loopdev::loops_for(&a).unwrap().len(),
        1,
        "the read-only one"
    );
    loopdev::detach(&dev).unwrap();
    assert!(loopdev::loops_for(&a).unwrap().is_empty());
}

#[test]
fn a_device_attached_before_this_process_is_found_by_the_scan_and_then_remembered() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let sb = Sandbox::new();
    let a = sparse_image(&sb, "a.img");
    // As after a driver restart: attached, but not by this process's attach().
    assert!(losetup(&["-f", a.to_str().unwrap()]), "losetup -f");
    let found = loopdev::find_loop_for(&a).unwrap().expect("scan finds it");
    assert_eq!(backing_of(found.number).as_deref(), a.to_str());
    // The second lookup (now from memory) agrees, and a detach is seen.
    assert_eq!(loopdev::find_loop_for(&a).unwrap(), Some(found.clone()));
    loopdev::detach(&found).unwrap();
    assert_eq!(loopdev::find_loop_for(&a).unwrap(), None);
}
