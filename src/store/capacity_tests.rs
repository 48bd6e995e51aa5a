//! The capacity and the bytes held, with writes running at once.

use std::sync::Barrier;

use super::*;

fn id(seed: u8) -> BlobId {
    BlobId(*blake3::hash(&[seed]).as_bytes())
}

#[test]
fn writes_running_at_once_never_pass_the_capacity_together() {
    const WRITERS: u16 = 8;
    const SLIVER: usize = 4000;
    let dir = tempfile::tempdir().unwrap();
    let store = SliverStore::open(dir.path(), None).unwrap();
    store.stage(&id(1), 1, b"m").unwrap();
    let held = store.used_bytes();
    drop(store);
    // Room for three of the eight slivers.
    let capacity = held + 3 * (SLIVER + files::CHECKSUM_LEN) as u64 + 10;
    let store = SliverStore::open(dir.path(), Some(capacity)).unwrap();
    let start = Barrier::new(usize::from(WRITERS));
    let stored = std::thread::scope(|scope| {
        let writers: Vec<_> = (0..WRITERS)
            .map(|shard| {
                let (store, start) = (&store, &start);
                scope.spawn(move || {
                    start.wait();
                    store.put_sliver(&id(1), 0, shard, SliverKind::Primary, &[7; SLIVER])
                })
            })
            .collect();
        writers
            .into_iter()
            .map(|w| w.join().unwrap())
            .filter(|written| match written {
                Ok(()) => true,
                Err(StoreError::Full { .. }) => false,
                Err(e) => panic!("{e}"),
            })
            .count()
    });
    assert_eq!(stored, 3);
    assert!(
        store.used_bytes() <= capacity,
        "{} > {capacity}",
        store.used_bytes()
    );
    let used = store.used_bytes();
    drop(store);
    assert_eq!(
        SliverStore::open(dir.path(), None).unwrap().used_bytes(),
        used
    );
}

#[test]
fn the_holdings_of_a_blob_whose_directory_cannot_be_read_are_an_error_not_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = SliverStore::open(dir.path(), None).unwrap();
    assert!(store.holdings(&id(2)).unwrap().shards.is_empty());
    // In place of the blob's directory, something that cannot be listed.
    fs::write(dir.path().join("blobs").join(id(2).to_string()), b"x").unwrap();
    let err = store.holdings(&id(2)).unwrap_err();
    assert!(matches!(err, StoreError::Io { .. }), "{err}");
}
