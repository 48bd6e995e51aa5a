//! A marker whose file is corrupt or unreadable is lost, not absent: no
//! clean-up takes its blob for one never committed until the marker is
//! written again or the grace has passed.

use std::time::{Duration, SystemTime};

use super::housekeeping::LOST_MARKER_GRACE;
use super::*;

fn id(seed: u8) -> BlobId {
    BlobId(*blake3::hash(&[seed]).as_bytes())
}

/// Blob `seed` staged and committed at generation 10 with one sliver.
fn committed(store: &SliverStore, seed: u8) {
    store.stage(&id(seed), 10, b"meta").unwrap();
    store
        .put_sliver(&id(seed), 0, 1, SliverKind::Primary, b"sliver")
        .unwrap();
    store.commit(&id(seed), 10, None).unwrap();
}

/// Flips a bit of a stored file, as a failing disk would.
fn flip_a_bit(path: &Path) {
    let mut bytes = fs::read(path).unwrap();
    bytes[0] ^= 1;
    fs::write(path, bytes).unwrap();
}

#[test]
fn a_committed_blob_whose_commit_marker_rots_is_kept_not_collected_as_abandoned() {
    let dir = tempfile::tempdir().unwrap();
    let store = SliverStore::open(dir.path(), None).unwrap();
    committed(&store, 1);
    let marker = store.blob_dir(&id(1)).join("commit");
    flip_a_bit(&marker);

    // The scrub reports it and leaves it where it is.
    let mut found = Vec::new();
    let report = store
        .scrub(None, |finding, path| {
            found.push((finding, path.to_path_buf()))
        })
        .unwrap();
    assert_eq!(report.corrupt, 1);
    assert_eq!(found, vec![(ScrubFinding::Corrupt, marker.clone())]);
    assert!(marker.exists(), "a marker is not quarantined");
    // It reads as absent (the loop spreads the commit again), but lost.
    let markers = store.lock(&id(1)).markers().unwrap();
    assert_eq!(markers.state.commit, None);
    assert!(markers.lost);

    let ttl = Duration::from_secs(60);
    let later = SystemTime::now() + 10 * ttl;
    assert!(store.collect_abandoned(ttl, later).unwrap().is_empty());
    assert!(
        !store.abort(&id(1), 10).unwrap(),
        "a writer's abort keeps it too"
    );
    assert!(store
        .sliver(&id(1), 0, 1, SliverKind::Primary)
        .unwrap()
        .is_some());

    // The loop's commit writes the marker again: nothing is lost any more.
    store.commit(&id(1), 10, None).unwrap();
    let markers = store.lock(&id(1)).markers().unwrap();
    assert_eq!((markers.state.commit, markers.lost), (Some(10), false));
    assert!(store.collect_abandoned(ttl, later).unwrap().is_empty());
    assert_eq!(store.scrub(None, |_, _| {}).unwrap().corrupt, 0);
}

#[test]
fn a_write_in_doubt_is_collected_once_the_grace_for_lost_markers_has_passed() {
    let dir = tempfile::tempdir().unwrap();
    let store = SliverStore::open(dir.path(), None).unwrap();
    store.stage(&id(2), 10, b"meta").unwrap();
    flip_a_bit(&store.blob_dir(&id(2)).join("staged"));
    let ttl = Duration::from_secs(60);
    let now = SystemTime::now();
    assert!(store
        .collect_abandoned(ttl, now + 10 * ttl)
        .unwrap()
        .is_empty());
    let past_grace = now + LOST_MARKER_GRACE + ttl;
    assert_eq!(
        store.collect_abandoned(ttl, past_grace).unwrap(),
        vec![id(2)]
    );
    assert!(!store.blob_dir(&id(2)).exists());
}

#[test]
fn a_delete_keeps_the_data_under_a_lost_marker_and_its_leftovers_go_after_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let store = SliverStore::open(dir.path(), None).unwrap();
    committed(&store, 3);
    // A marker of the size of no generation is lost as well.
    fs::write(store.blob_dir(&id(3)).join("staged"), b"short").unwrap();
    let outcome = store.tombstone(&id(3), 11).unwrap();
    assert!(
        !outcome.removed_data,
        "the lost marker may be a newer write's"
    );
    assert_eq!(store.state(&id(3)).unwrap().tombstone, Some(11));
    let now = SystemTime::now();
    assert!(store.collect_delete_leftovers(now).unwrap().is_empty());
    let past_grace = now + LOST_MARKER_GRACE + Duration::from_secs(1);
    assert_eq!(
        store.collect_delete_leftovers(past_grace).unwrap(),
        vec![id(3)]
    );
    assert!(!store.blob_dir(&id(3)).exists());
}
