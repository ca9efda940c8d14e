//! Capacity is honest: what the pool says is available can really be written, even when
//! reflinked copies share extents that overwriting will allocate again; and copies book
//! their bytes before they start, outside the pool's lock, so concurrent creates neither
//! wait behind them nor promise the same bytes. Real files on a real xfs (reflink) pool.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod snapshot_support;
mod storage_support;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, mpsc};
use std::time::Duration;

use plinth_driver::storage::IoFailure;
use plinth_driver::storage::pool::{ContentSource, GRANULARITY, Pool, PoolError, VolumeAccess};
use plinth_driver::storage::snapshot::SnapshotStore;
use snapshot_support::*;
use storage_support::{Sandbox, request};

const MIB: u64 = 1 << 20;
/// Metadata files and directory blocks the records take.
const SLACK: u64 = 256 * 1024;

/// Write `len` bytes of `byte` over the start of `image`, then fsync: where ENOSPC (or
/// the EIO a full pool gives a loop device) would show.
fn overwrite(image: &Path, len: u64, byte: u8) -> std::io::Result<()> {
    let file = OpenOptions::new().write(true).open(image)?;
    let chunk = vec![byte; MIB as usize];
    let mut at = 0;
    while at < len {
        file.write_all_at(&chunk, at)?;
        at += MIB;
    }
    file.sync_all()
}

fn first_byte(image: &Path) -> u8 {
    let mut b = [0u8; 1];
    std::fs::File::open(image)
        .unwrap()
        .read_exact_at(&mut b, 0)
        .unwrap();
    b[0]
}

#[test]
fn a_snapshotted_volume_can_be_overwritten_with_the_pool_filled_to_available() {
    let sandbox = Sandbox::new();
    let fs = xfs_reflink_fs(&sandbox, "honest", 512 * MIB);
    let pool = Pool::open(fs.join("pool"), 0).unwrap();
    let store = SnapshotStore::open(&pool).unwrap();
    let size = 96 * MIB;
    let (source, _) = pool
        .create_volume(&request("source", size, 0, VolumeAccess::Block))
        .unwrap();
    overwrite(&pool.image_path(&source.id), size, 0xAA).unwrap();

    let before = pool.available().unwrap();
    let (snapshot, _) = store.create(&pool, "snap", &source.id).unwrap();
    assert_eq!(snapshot.copy_method, "reflink");
    let after = pool.available().unwrap();
    assert!(
        before - after >= size,
        "a reflinked snapshot of {size} bytes must owe them: available {before} -> {after}"
    );

    // A snapshot's share comes back when it is deleted.
    let (second, _) = store.create(&pool, "snap-2", &source.id).unwrap();
    let with_second = pool.available().unwrap();
    assert!(with_second + size <= after, "{after} -> {with_second}");
    store.delete(&second.id).unwrap();
    let without_second = pool.available().unwrap();
    assert!(
        without_second + SLACK >= after,
        "deleting a snapshot gives back its share: {with_second} -> {without_second}, was {after}"
    );

    // Fill the pool to exactly what it says is available...
    let fill = after - after % GRANULARITY;
    let (filler, _) = pool
        .create_volume(&request("filler", fill, 0, VolumeAccess::Block))
        .unwrap();
    overwrite(&pool.image_path(&filler.id), fill, 0x11).expect("writing what was available");
    // ...then overwrite the snapshotted volume: every shared extent is allocated again.
    overwrite(&pool.image_path(&source.id), size, 0x55)
        .expect("overwriting a snapshotted volume on a pool filled to `available`");
    assert_eq!(first_byte(&pool.image_path(&source.id)), 0x55);
    assert_eq!(
        first_byte(&store.image_path(&snapshot.id)),
        0xAA,
        "the snapshot kept its data"
    );
}

#[test]
fn a_copy_books_its_bytes_first_and_does_not_hold_the_pool_while_it_runs() {
    let sandbox = Sandbox::new();
    let fs = xfs_reflink_fs(&sandbox, "booking", 512 * MIB);
    let pool = Arc::new(Pool::open(fs.join("pool"), 0).unwrap());
    let available = pool.available().unwrap();
    let size = (available / 2 + GRANULARITY) / GRANULARITY * GRANULARITY;

    // A restore whose copy waits until the test lets it finish.
    let (started_tx, started) = mpsc::channel();
    let (finish, finish_rx) = mpsc::channel::<()>();
    let copying = {
        let pool = pool.clone();
        std::thread::spawn(move || {
            let mut req = request("restored", size, 0, VolumeAccess::Block);
            req.content_source = Some(ContentSource::Snapshot {
                snapshot_id: "snap-0123456789abcdef0123456789abcdef".to_owned(),
            });
            pool.create_volume_from(&req, &|dest: &Path| {
                std::fs::write(dest, b"restored content").map_err(|e| {
                    PoolError::from(IoFailure {
                        op: "write",
                        path: dest.to_path_buf(),
                        source: e,
                    })
                })?;
                started_tx.send(()).unwrap();
                finish_rx.recv().unwrap();
                Ok(0)
            })
        })
    };
    started.recv_timeout(Duration::from_secs(10)).unwrap();

    // While it copies: the pool answers (no lock held), its size is booked, the same
    // name is pending, and no other create can promise the booked bytes.
    let (tx, rx) = mpsc::channel();
    {
        let pool = pool.clone();
        std::thread::spawn(move || tx.send(pool.available()).unwrap());
    }
    let during = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("available() waited behind a copy")
        .unwrap();
    assert!(
        during + size <= available,
        "the copy's {size} bytes are booked: {available} -> {during}"
    );
    let mut same = request("restored", size, 0, VolumeAccess::Block);
    same.content_source = Some(ContentSource::Snapshot {
        snapshot_id: "snap-0123456789abcdef0123456789abcdef".to_owned(),
    });
    assert!(matches!(
        pool.create_volume_from(&same, &|_: &Path| Ok(0)),
        Err(PoolError::CreatePending(_))
    ));
    assert!(matches!(
        pool.create_volume(&request("rival", size, 0, VolumeAccess::Block)),
        Err(PoolError::ResourceExhausted { .. })
    ));
    let small = pool
        .create_volume(&request("small", GRANULARITY, 0, VolumeAccess::Block))
        .expect("a create that fits beside the booking goes ahead");

    finish.send(()).unwrap();
    let (restored, _) = copying.join().unwrap().unwrap();
    assert_eq!(restored.size_bytes, size);
    assert_eq!(
        std::fs::read(pool.image_path(&restored.id)).unwrap()[..16],
        *b"restored content"
    );
    // The booking is gone; the volume's own promise took its place.
    pool.delete_volume(&small.0.id).unwrap();
    pool.delete_volume(&restored.id).unwrap();
    let back = pool.available().unwrap();
    assert!(
        back + 2 * MIB >= available,
        "everything given back: {available} -> {back}"
    );
}
