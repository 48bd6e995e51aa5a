use std::time::{Duration, SystemTime};

use super::*;

fn id(seed: u8) -> BlobId {
    BlobId(*blake3::hash(&[seed]).as_bytes())
}

fn open(dir: &Path) -> SliverStore {
    SliverStore::open(dir, None).unwrap()
}

/// A store with blob `seed` staged at generation 10.
fn staged(dir: &Path, seed: u8) -> SliverStore {
    let store = open(dir);
    store.stage(&id(seed), 10, b"meta").unwrap();
    store
}

#[test]
fn what_is_written_reads_back_and_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let store = staged(dir.path(), 1);
    store
        .put_sliver(&id(1), 0, 3, SliverKind::Primary, b"primary")
        .unwrap();
    store
        .put_sliver(&id(1), 0, 3, SliverKind::Secondary, b"secondary")
        .unwrap();
    store
        .put_sliver(&id(1), 1, 3, SliverKind::Primary, b"p1")
        .unwrap();
    store.commit(&id(1), 10, None).unwrap();
    let used = store.used_bytes();
    // metadata, staged and commit markers, three slivers
    assert_eq!(used, (4 + 8 + 8 + 7 + 9 + 2 + 6 * 32) as u64);
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.used_bytes(), used);
    assert_eq!(store.sliver_count(SliverKind::Primary), 2);
    assert_eq!(store.sliver_count(SliverKind::Secondary), 1);
    assert_eq!(store.metadata(&id(1)).unwrap().unwrap(), &b"meta"[..]);
    assert_eq!(
        store
            .sliver(&id(1), 0, 3, SliverKind::Secondary)
            .unwrap()
            .unwrap(),
        &b"secondary"[..]
    );
    assert_eq!(
        store.sliver(&id(1), 2, 3, SliverKind::Primary).unwrap(),
        None
    );
    let holdings = store.holdings(&id(1)).unwrap();
    assert!(holdings.metadata);
    assert_eq!(holdings.shards, BTreeMap::from([(3, 1)]));
    assert_eq!(store.list_blobs(None, 10).unwrap(), vec![id(1)]);
    assert_eq!(
        store.state(&id(1)).unwrap(),
        BlobState {
            commit: Some(10),
            staged: Some(10),
            tombstone: None
        }
    );
}

#[test]
fn a_sliver_is_refused_unless_a_write_of_its_blob_is_staged_or_committed() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let err = store
        .put_sliver(&id(1), 0, 0, SliverKind::Primary, b"x")
        .unwrap_err();
    assert!(matches!(err, StoreError::NotStaged), "{err}");
    store.stage(&id(1), 10, b"meta").unwrap();
    store
        .put_sliver(&id(1), 0, 0, SliverKind::Primary, b"x")
        .unwrap();
    store.tombstone(&id(1), 11).unwrap();
    let err = store
        .put_sliver(&id(1), 0, 0, SliverKind::Secondary, b"y")
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Deleted { tombstone: 11 }),
        "{err}"
    );
    assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    assert_eq!(store.sliver_count(SliverKind::Primary), 0);
}

#[test]
fn a_tombstone_removes_the_blob_refuses_older_writes_and_yields_to_newer_ones() {
    let dir = tempfile::tempdir().unwrap();
    let store = staged(dir.path(), 2);
    store
        .put_sliver(&id(2), 0, 0, SliverKind::Primary, &[1; 50])
        .unwrap();
    store.commit(&id(2), 10, None).unwrap();
    let outcome = store.tombstone(&id(2), 20).unwrap();
    assert!(outcome.removed_data);
    assert_eq!(outcome.state.tombstone, Some(20));
    assert!(!dir.path().join("blobs").join(id(2).to_string()).exists());
    assert_eq!(store.used_bytes(), 8 + 32, "only the tombstone is left");
    assert_eq!(store.list_blobs(None, 10).unwrap(), vec![id(2)]);
    for generation in [10, 20] {
        let err = store.stage(&id(2), generation, b"meta").unwrap_err();
        assert!(
            matches!(err, StoreError::Deleted { tombstone: 20 }),
            "{err}"
        );
        assert!(store.commit(&id(2), generation, None).is_err());
    }
    // The same bytes stored again later.
    store.stage(&id(2), 30, b"meta").unwrap();
    store
        .put_sliver(&id(2), 0, 0, SliverKind::Primary, &[1; 50])
        .unwrap();
    let state = store.commit(&id(2), 30, None).unwrap();
    assert_eq!(
        crate::blob_state::resolve([&state]),
        crate::blob_state::Verdict::Visible(30)
    );
    // A late tombstone older than the new write keeps its data.
    let outcome = store.tombstone(&id(2), 25).unwrap();
    assert!(!outcome.removed_data);
    assert!(store.has_sliver(&id(2), 0, 0, SliverKind::Primary));
}

#[test]
fn a_delete_during_a_newer_staged_write_keeps_the_staged_slivers() {
    let dir = tempfile::tempdir().unwrap();
    let store = staged(dir.path(), 3);
    store.commit(&id(3), 10, None).unwrap();
    store.stage(&id(3), 40, b"meta").unwrap();
    store
        .put_sliver(&id(3), 0, 1, SliverKind::Primary, b"s")
        .unwrap();
    let outcome = store.tombstone(&id(3), 20).unwrap();
    assert!(!outcome.removed_data);
    assert_eq!(
        store.state(&id(3)).unwrap(),
        BlobState {
            commit: None,
            staged: Some(40),
            tombstone: Some(20)
        }
    );
}

#[test]
fn an_aborted_write_leaves_nothing_unless_the_blob_was_committed() {
    let dir = tempfile::tempdir().unwrap();
    let store = staged(dir.path(), 4);
    store
        .put_sliver(&id(4), 0, 0, SliverKind::Primary, &[0; 10])
        .unwrap();
    assert!(store.abort(&id(4), 10).unwrap());
    assert_eq!(store.used_bytes(), 0);
    assert!(store.list_blobs(None, 10).unwrap().is_empty());
    let store = staged(dir.path(), 5);
    store.commit(&id(5), 10, None).unwrap();
    store.stage(&id(5), 12, b"meta").unwrap();
    assert!(
        !store.abort(&id(5), 12).unwrap(),
        "the committed copy stays"
    );
    assert!(store.metadata(&id(5)).unwrap().is_some());
}

#[test]
fn an_abort_leaves_the_data_another_write_staged_and_may_still_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    // An older write staged, a newer one of the same bytes too, and the
    // newer one gives up: the older one's commit must find its data.
    store.stage(&id(8), 5, b"meta").unwrap();
    store
        .put_sliver(&id(8), 0, 0, SliverKind::Primary, &[7; 10])
        .unwrap();
    store.stage(&id(8), 6, b"meta").unwrap();
    assert!(!store.abort(&id(8), 6).unwrap(), "write 5 still stages it");
    store.commit(&id(8), 5, None).unwrap();
    assert!(store.metadata(&id(8)).unwrap().is_some());
    assert_eq!(
        store
            .sliver(&id(8), 0, 0, SliverKind::Primary)
            .unwrap()
            .as_deref(),
        Some(&[7u8; 10][..])
    );
    // Staged the other way round (the older write's stage comes last):
    // the newer one's abort leaves the data too.
    store.stage(&id(9), 6, b"meta").unwrap();
    store.stage(&id(9), 5, b"meta").unwrap();
    assert!(!store.abort(&id(9), 6).unwrap());
    assert!(store.metadata(&id(9)).unwrap().is_some());
    // Two writes that chose the same generation: one's abort leaves the
    // other's data.
    store.stage(&id(11), 7, b"meta").unwrap();
    store.stage(&id(11), 7, b"meta").unwrap();
    assert!(!store.abort(&id(11), 7).unwrap());
    assert!(store.metadata(&id(11)).unwrap().is_some());
    // An abort of a write that never staged here takes nothing.
    store.stage(&id(10), 5, b"meta").unwrap();
    assert!(!store.abort(&id(10), 6).unwrap());
    assert!(store.metadata(&id(10)).unwrap().is_some());
    // Data one write alone staged goes with its abort.
    assert!(store.abort(&id(10), 5).unwrap());
    assert!(store.metadata(&id(10)).unwrap().is_none());
}

#[test]
fn abandoned_staged_writes_are_collected_after_their_ttl_and_committed_ones_never() {
    let dir = tempfile::tempdir().unwrap();
    let store = staged(dir.path(), 6);
    store.stage(&id(7), 10, b"meta").unwrap();
    store.commit(&id(7), 10, None).unwrap();
    let ttl = Duration::from_secs(60);
    let now = SystemTime::now();
    assert!(store.collect_abandoned(ttl, now).unwrap().is_empty());
    let later = now + Duration::from_secs(61);
    assert_eq!(store.collect_abandoned(ttl, later).unwrap(), vec![id(6)]);
    assert_eq!(store.list_blobs(None, 10).unwrap(), vec![id(7)]);
}

#[test]
fn data_a_delete_left_behind_when_its_node_stopped_midway_is_collected_and_newer_writes_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let store = staged(dir.path(), 8);
    store
        .put_sliver(&id(8), 0, 1, SliverKind::Primary, b"sliver")
        .unwrap();
    store.commit(&id(8), 10, None).unwrap();
    // The node stops after the tombstone is recorded, before the data goes.
    store
        .write_file(
            &store.tombstone_path(&id(8)),
            &markers::generation_bytes(11),
        )
        .unwrap();
    // Deleted, then written again: the newer write keeps its data.
    store.stage(&id(9), 10, b"meta").unwrap();
    store.tombstone(&id(9), 11).unwrap();
    store.stage(&id(9), 12, b"meta").unwrap();
    drop(store);
    let store = open(dir.path());
    let blob_dir = |seed| dir.path().join("blobs").join(id(seed).to_string());
    assert!(blob_dir(8).exists());
    assert_eq!(
        store
            .collect_delete_leftovers(std::time::SystemTime::now())
            .unwrap(),
        vec![id(8)]
    );
    assert!(!blob_dir(8).exists(), "the leftover is gone");
    assert_eq!(store.state(&id(8)).unwrap().tombstone, Some(11));
    assert!(blob_dir(9).exists(), "a newer write is kept");
    assert_eq!(store.state(&id(9)).unwrap().staged, Some(12));
}

#[test]
fn the_same_pair_filed_twice_at_once_is_counted_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (pair, leaves) = super::uploads::tests::pair();
    let session = crate::wire::UploadId::random();
    // A writer's retry after a timeout races its first attempt.
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                for _ in 0..150 {
                    store
                        .put_upload_pair_checked(
                            &session,
                            (0, &[7u8; 32]),
                            2,
                            [&pair[0], &pair[1]],
                            || Ok::<_, ()>(leaves.clone()),
                        )
                        .unwrap();
                }
            });
        }
    });
    let (used, primaries) = (store.used_bytes(), store.sliver_count(SliverKind::Primary));
    drop(store);
    let reopened = open(dir.path());
    assert_eq!(used, reopened.used_bytes(), "the bytes on disk");
    assert_eq!(
        (primaries, reopened.sliver_count(SliverKind::Primary)),
        (1, 1)
    );
}

#[test]
fn a_touched_session_counts_its_ttl_from_the_touch() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (session, never) = (
        crate::wire::UploadId::random(),
        crate::wire::UploadId::random(),
    );
    let (pair, leaves) = super::uploads::tests::pair();
    store
        .put_upload_pair_checked(&session, (0, &[7u8; 32]), 2, [&pair[0], &pair[1]], || {
            Ok::<_, ()>(leaves.clone())
        })
        .unwrap();
    let ttl = Duration::from_secs(60);
    let later = SystemTime::now() + Duration::from_secs(61);
    // Its writer is still receiving the next segment, a minute on.
    let session_dir = dir.path().join("uploads").join(session.to_string());
    for path in [session_dir.clone(), session_dir.join("0")] {
        if path.exists() {
            let past = SystemTime::now() - Duration::from_secs(61);
            fs::File::open(&path).unwrap().set_modified(past).unwrap();
        }
    }
    assert!(store.touch_upload(&session).unwrap());
    assert!(!store.touch_upload(&never).unwrap(), "no such session");
    assert!(!dir.path().join("uploads").join(never.to_string()).exists());
    assert_eq!(
        store
            .collect_abandoned_uploads(ttl, later - Duration::from_secs(2))
            .unwrap(),
        0
    );
    assert_eq!(
        store.collect_abandoned_uploads(ttl, later + ttl).unwrap(),
        1
    );
}

#[test]
fn session_pairs_count_as_held_bytes_and_go_when_adopted_collected_or_removed() {
    let dir = tempfile::tempdir().unwrap();
    let store = staged(dir.path(), 30);
    let base = store.used_bytes();
    let (a, b, c) = (
        crate::wire::UploadId::random(),
        crate::wire::UploadId::random(),
        crate::wire::UploadId::random(),
    );
    let root = [7u8; 32];
    let (pair, leaves) = super::uploads::tests::pair();
    for upload in [&a, &b, &c] {
        store
            .put_upload_pair_checked(upload, (0, &root), 2, [&pair[0], &pair[1]], || {
                Ok::<_, ()>(leaves.clone())
            })
            .unwrap();
    }
    let pair_bytes = (pair[0].len() + pair[1].len() + 2 * 32) as u64;
    assert_eq!(store.used_bytes(), base + 3 * pair_bytes);
    assert_eq!(store.sliver_count(SliverKind::Primary), 3);
    // Reopening counts them again.
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.used_bytes(), base + 3 * pair_bytes);

    // Adopted under another root: nothing moves, the session goes.
    let lock = store.lock(&id(30));
    lock.adopt_upload(&a, &[(0, [8u8; 32])]).unwrap();
    assert_eq!(lock.pairs_by_segment(1).unwrap(), vec![Vec::<u16>::new()]);
    assert_eq!(store.used_bytes(), base + 2 * pair_bytes);
    // Adopted under its root: the pair is the blob's.
    lock.adopt_upload(&b, &[(0, root)]).unwrap();
    assert_eq!(lock.pairs_by_segment(1).unwrap(), vec![vec![2]]);
    drop(lock);
    assert_eq!(
        store.sliver(&id(30), 0, 2, SliverKind::Secondary).unwrap(),
        Some(pair[1].clone())
    );
    assert_eq!(store.used_bytes(), base + 2 * pair_bytes);
    // A blob no write claims adopts nothing.
    assert!(matches!(
        store.lock(&id(31)).adopt_upload(&c, &[(0, root)]),
        Err(StoreError::NotStaged)
    ));
    // An idle session is collected after the TTL, a fresh one is not.
    let ttl = Duration::from_secs(60);
    let now = SystemTime::now();
    assert_eq!(store.collect_abandoned_uploads(ttl, now).unwrap(), 0);
    let later = now + Duration::from_secs(61);
    assert_eq!(store.collect_abandoned_uploads(ttl, later).unwrap(), 1);
    assert_eq!(store.used_bytes(), base + pair_bytes);
    assert!(!store.remove_upload(&c).unwrap());
    assert_eq!(fs::read_dir(dir.path().join("uploads")).unwrap().count(), 0);
}

#[test]
fn a_store_of_the_earlier_layout_keeps_its_blobs_visible() {
    let dir = tempfile::tempdir().unwrap();
    let store = staged(dir.path(), 8);
    fs::remove_file(
        dir.path()
            .join("blobs")
            .join(id(8).to_string())
            .join("staged"),
    )
    .unwrap();
    fs::remove_file(dir.path().join("format")).unwrap();
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.state(&id(8)).unwrap().commit, Some(1));
    assert_eq!(
        fs::read_to_string(dir.path().join("format")).unwrap(),
        MARKERS_FORMAT.to_string(),
        "a store with blobs of the earlier layout keeps plain checksums"
    );
}

#[test]
fn an_upgrade_of_the_earlier_layout_cut_short_by_a_crash_is_taken_up_on_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for seed in [30, 31] {
        store.stage(&id(seed), 1, b"meta").unwrap();
    }
    drop(store);
    let blob_dir = |seed: u8| dir.path().join("blobs").join(id(seed).to_string());
    for seed in [30, 31] {
        fs::remove_file(blob_dir(seed).join("staged")).unwrap();
    }
    fs::remove_file(dir.path().join("format")).unwrap();
    // An upgrade completes and leaves no record of itself.
    drop(open(dir.path()));
    assert!(!dir.path().join(UPGRADING_FILE).exists());
    assert!(blob_dir(31).join("commit").exists());

    // As a crash leaves one: recorded, blob 30 marked, 31 not, no format.
    fs::remove_file(blob_dir(31).join("commit")).unwrap();
    fs::remove_file(dir.path().join("format")).unwrap();
    fs::write(dir.path().join(UPGRADING_FILE), b"").unwrap();
    let store = open(dir.path());
    for seed in [30, 31] {
        assert_eq!(
            store.state(&id(seed)).unwrap().commit,
            Some(1),
            "blob {seed}"
        );
    }
    assert_eq!(
        fs::read_to_string(dir.path().join("format")).unwrap(),
        MARKERS_FORMAT.to_string()
    );
    assert!(!dir.path().join(UPGRADING_FILE).exists());
    drop(store);

    // A crash after the format was written: the record is removed.
    fs::write(dir.path().join(UPGRADING_FILE), b"").unwrap();
    drop(open(dir.path()));
    assert!(!dir.path().join(UPGRADING_FILE).exists());
}

#[test]
fn a_file_replaced_after_its_read_failed_is_not_quarantined_in_place_of_the_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = staged(dir.path(), 32);
    let path = store.sliver_path(&id(32), 0, 0, SliverKind::Primary);
    store
        .put_sliver(&id(32), 0, 0, SliverKind::Primary, b"rotten sliver")
        .unwrap();
    let mut bytes = fs::read(&path).unwrap();
    bytes[2] ^= 0x01;
    fs::write(&path, bytes).unwrap();
    assert!(matches!(store.read_checked(&path), Checked::Corrupt));
    // A repair writes a fresh sliver between the failed read and the
    // quarantine: the fresh one stays, and is what the read gets.
    store
        .put_sliver(&id(32), 0, 0, SliverKind::Primary, b"repaired sliver")
        .unwrap();
    assert_eq!(
        store.quarantine_unless_replaced(&path),
        Some(Some(bytes::Bytes::from_static(b"repaired sliver")))
    );
    assert!(path.exists());
    assert_eq!(store.sliver_count(SliverKind::Primary), 1);
    assert_eq!(
        fs::read_dir(dir.path().join("quarantine")).unwrap().count(),
        0
    );

    // Still bad under the lock: moved.
    let mut bytes = fs::read(&path).unwrap();
    bytes[2] ^= 0x01;
    fs::write(&path, bytes).unwrap();
    assert_eq!(store.quarantine_unless_replaced(&path), None);
    assert!(!path.exists());
    assert_eq!(store.sliver_count(SliverKind::Primary), 0);
    assert_eq!(
        fs::read_dir(dir.path().join("quarantine")).unwrap().count(),
        1
    );
}

#[test]
fn a_flipped_bit_on_disk_is_caught_and_the_file_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let store = staged(dir.path(), 9);
    let base = store.used_bytes();
    store
        .put_sliver(&id(9), 0, 0, SliverKind::Primary, b"some sliver bytes")
        .unwrap();
    let path = store.sliver_path(&id(9), 0, 0, SliverKind::Primary);
    let mut bytes = fs::read(&path).unwrap();
    bytes[3] ^= 0x10;
    fs::write(&path, bytes).unwrap();
    let err = store.sliver(&id(9), 0, 0, SliverKind::Primary).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(!path.exists(), "the corrupt file is moved aside");
    assert_eq!(store.sliver_count(SliverKind::Primary), 0);
    assert_eq!(
        store.used_bytes(),
        base + 17 + 32,
        "a quarantined file counts until it is purged"
    );
    assert_eq!(
        store.sliver(&id(9), 0, 0, SliverKind::Primary).unwrap(),
        None
    );
    // A truncated file is corrupt too.
    store
        .put_sliver(&id(9), 0, 0, SliverKind::Primary, b"x")
        .unwrap();
    fs::write(&path, b"short").unwrap();
    assert!(store.sliver(&id(9), 0, 0, SliverKind::Primary).is_err());
}

#[test]
fn a_file_whose_read_fails_is_quarantined_and_reported_missing() {
    let dir = tempfile::tempdir().unwrap();
    let store = staged(dir.path(), 10);
    store
        .put_sliver(&id(10), 0, 0, SliverKind::Primary, b"abc")
        .unwrap();
    let path = store.sliver_path(&id(10), 0, 0, SliverKind::Primary);
    // A directory where the file was: read(2) fails (EISDIR), as on EIO.
    fs::remove_file(&path).unwrap();
    fs::create_dir(&path).unwrap();
    let err = store
        .sliver(&id(10), 0, 0, SliverKind::Primary)
        .unwrap_err();
    assert!(matches!(err, StoreError::Unreadable { .. }), "{err}");
    assert!(!store.has_sliver(&id(10), 0, 0, SliverKind::Primary));
}

#[test]
fn a_scrub_goes_past_unreadable_files_and_quarantines_every_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = staged(dir.path(), 11);
    for segment in 0..3 {
        store
            .put_sliver(
                &id(11),
                segment,
                2,
                SliverKind::Primary,
                &[segment as u8; 50],
            )
            .unwrap();
    }
    let report = store.scrub(None, |_, _| {}).unwrap();
    assert_eq!(
        (report.checked, report.corrupt, report.unreadable),
        (5, 0, 0)
    );
    let corrupt = store.sliver_path(&id(11), 1, 2, SliverKind::Primary);
    let mut bytes = fs::read(&corrupt).unwrap();
    bytes[10] ^= 1;
    fs::write(&corrupt, bytes).unwrap();
    let unreadable = store.sliver_path(&id(11), 0, 2, SliverKind::Primary);
    fs::remove_file(&unreadable).unwrap();
    fs::create_dir(&unreadable).unwrap();
    fs::write(unreadable.join("x"), b"").unwrap();
    let mut findings = Vec::new();
    let report = store
        .scrub(None, |finding, path| {
            findings.push((finding, path.to_owned()))
        })
        .unwrap();
    assert_eq!((report.corrupt, report.unreadable), (1, 1));
    findings.sort_by_key(|(_, path)| path.clone());
    assert_eq!(
        findings,
        vec![
            (ScrubFinding::Unreadable, unreadable.clone()),
            (ScrubFinding::Corrupt, corrupt.clone())
        ],
        "each quarantined file is told of with why"
    );
    assert!(!unreadable.exists());
    assert!(!store.has_sliver(&id(11), 1, 2, SliverKind::Primary));
    assert_eq!(store.scrub(None, |_, _| {}).unwrap().corrupt, 0);
}

#[test]
fn quarantined_files_are_purged_after_their_retention() {
    let dir = tempfile::tempdir().unwrap();
    let store = staged(dir.path(), 12);
    let base = store.used_bytes();
    store
        .put_sliver(&id(12), 0, 0, SliverKind::Primary, b"abc")
        .unwrap();
    let path = store.sliver_path(&id(12), 0, 0, SliverKind::Primary);
    let mut bytes = fs::read(&path).unwrap();
    bytes[0] ^= 1;
    fs::write(&path, bytes).unwrap();
    assert!(store.sliver(&id(12), 0, 0, SliverKind::Primary).is_err());
    assert_eq!(store.quarantined_bytes(), 3 + 32);
    let retention = Duration::from_secs(3600);
    let now = SystemTime::now();
    assert_eq!(store.purge_quarantine(retention, now).unwrap(), 0);
    let later = now + Duration::from_secs(3601);
    assert_eq!(store.purge_quarantine(retention, later).unwrap(), 1);
    assert_eq!(store.quarantined_bytes(), 0);
    assert_eq!(store.used_bytes(), base);
}

#[test]
fn leftovers_of_interrupted_writes_and_deletes_are_removed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    fs::write(dir.path().join("tmp").join("123-0"), b"half a sliver").unwrap();
    fs::create_dir(dir.path().join("trash").join("123-1")).unwrap();
    fs::write(
        dir.path().join("trash").join("123-1").join("0.primary"),
        b"x",
    )
    .unwrap();
    drop(store);
    open(dir.path());
    assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    assert_eq!(fs::read_dir(dir.path().join("trash")).unwrap().count(), 0);
}

#[test]
fn a_write_past_capacity_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = SliverStore::open(dir.path(), Some(300)).unwrap();
    store.stage(&id(3), 1, b"m").unwrap(); // 33 + 40 bytes
    store
        .put_sliver(&id(3), 0, 1, SliverKind::Primary, &[1; 100])
        .unwrap();
    let err = store
        .put_sliver(&id(3), 0, 1, SliverKind::Secondary, &[2; 100])
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Full {
                needed: 132,
                available: 95
            }
        ),
        "{err}"
    );
    assert!(!store.has_sliver(&id(3), 0, 1, SliverKind::Secondary));
    assert_eq!(store.used_bytes(), 205);
    assert_eq!(
        store
            .sliver(&id(3), 0, 1, SliverKind::Primary)
            .unwrap()
            .unwrap(),
        vec![1; 100]
    );
    // Replacing a file counts only the difference.
    store
        .put_sliver(&id(3), 0, 1, SliverKind::Primary, &[3; 150])
        .unwrap();
    assert_eq!(store.used_bytes(), 255);
}

#[test]
fn a_full_store_still_takes_deletes_and_their_data_goes() {
    let dir = tempfile::tempdir().unwrap();
    let store = SliverStore::open(dir.path(), Some(300)).unwrap();
    store.stage(&id(3), 1, b"m").unwrap(); // 33 + 40 bytes
    store.commit(&id(3), 1, None).unwrap(); // 40 bytes
    store
        .put_sliver(&id(3), 0, 1, SliverKind::Primary, &[1; 150])
        .unwrap();
    assert!(matches!(
        store.stage(&id(4), 1, b"m"),
        Err(StoreError::Full { .. })
    ));
    let outcome = store.tombstone(&id(3), 2).unwrap();
    assert!(outcome.removed_data);
    assert_eq!(store.state(&id(3)).unwrap().tombstone, Some(2));
    assert_eq!(store.used_bytes(), 40, "the tombstone alone");
    store.stage(&id(4), 1, b"m").unwrap();
}

#[test]
fn blobs_and_tombstones_are_listed_in_pages() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut ids: Vec<BlobId> = (0..7).map(id).collect();
    for (i, blob) in ids.iter().enumerate() {
        if i % 2 == 0 {
            store.stage(blob, 1, b"m").unwrap();
        } else {
            store.tombstone(blob, 1).unwrap();
        }
    }
    ids.sort();
    let first = store.list_blobs(None, 3).unwrap();
    assert_eq!(first, ids[..3]);
    let second = store.list_blobs(Some(&first[2]), 3).unwrap();
    assert_eq!(second, ids[3..6]);
    assert_eq!(store.list_blobs(Some(&ids[6]), 3).unwrap(), vec![]);
}

#[test]
fn a_blob_is_listed_from_its_first_file_until_nothing_of_it_is_left() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (kept, aborted, deleted) = (id(1), id(2), id(3));
    for blob in [kept, aborted, deleted] {
        store.stage(&blob, 1, b"m").unwrap();
    }
    store
        .put_sliver(&kept, 0, 4, SliverKind::Primary, b"p")
        .unwrap();
    let mut all = vec![kept, aborted, deleted];
    all.sort();
    assert_eq!(store.list_blobs(None, 10).unwrap(), all);

    // An aborted write leaves nothing: the blob drops out. A deleted one
    // keeps its tombstone: it stays.
    assert!(store.abort(&aborted, 1).unwrap());
    store.tombstone(&deleted, 1).unwrap();
    let mut left = vec![kept, deleted];
    left.sort();
    assert_eq!(store.list_blobs(None, 10).unwrap(), left);
    // A page of one that skips a dropped blob still fills.
    assert_eq!(store.list_blobs(None, 1).unwrap(), left[..1]);

    // Written again, it is listed again; a store opened anew lists the same.
    store.stage(&aborted, 2, b"m").unwrap();
    assert_eq!(store.list_blobs(None, 10).unwrap(), all);
    drop(store);
    let reopened = open(dir.path());
    assert_eq!(reopened.list_blobs(None, 10).unwrap(), all);

    // A directory removed behind the store's back is dropped too.
    std::fs::remove_dir_all(dir.path().join("blobs").join(kept.to_string())).unwrap();
    let mut rest = vec![aborted, deleted];
    rest.sort();
    assert_eq!(reopened.list_blobs(None, 10).unwrap(), rest);
}

#[test]
fn deletes_racing_sliver_writes_never_leave_an_orphan() {
    // Many rounds of a writer and a deleter on one blob: afterwards the
    // blob either has data claimed by a write, or no data at all.
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(open(dir.path()));
    for round in 0..50u64 {
        let generation = 10 * round + 10;
        store.stage(&id(13), generation, b"meta").unwrap();
        let writer = {
            let store = store.clone();
            std::thread::spawn(move || {
                for segment in 0..20 {
                    let _ = store.put_sliver(&id(13), segment, 0, SliverKind::Primary, b"s");
                }
            })
        };
        store.tombstone(&id(13), generation + 1).unwrap();
        writer.join().unwrap();
        let state = store.state(&id(13)).unwrap();
        assert!(!state.claims_data());
        assert_eq!(store.holdings(&id(13)).unwrap(), BlobHoldings::default());
    }
    assert_eq!(store.sliver_count(SliverKind::Primary), 0);
}

/// What the kernel reports (inotify) about some directories and their
/// entries, in the order it happened: tells a directory renamed away from
/// one removed file by file where it stands.
struct DirEvents {
    fd: std::os::fd::OwnedFd,
    watches: Vec<(i32, &'static str)>,
}

/// One event: the watch's label, what happened, the entry's name.
type DirEvent = (&'static str, &'static str, String);

impl DirEvents {
    /// Watches `dirs`, each with a label for the events.
    fn watch(dirs: &[(&'static str, &Path)]) -> Self {
        use std::os::fd::FromRawFd;
        use std::os::unix::ffi::OsStrExt;
        // SAFETY: plain syscalls; the descriptor is owned from here on.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(fd >= 0, "inotify_init1: {}", io::Error::last_os_error());
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let watches = dirs
            .iter()
            .map(|(label, dir)| {
                use std::os::fd::AsRawFd;
                let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
                let mask = libc::IN_MOVED_FROM
                    | libc::IN_MOVED_TO
                    | libc::IN_DELETE
                    | libc::IN_MOVE_SELF
                    | libc::IN_DELETE_SELF;
                // SAFETY: a valid descriptor and a NUL-terminated path.
                let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), mask) };
                assert!(wd >= 0, "inotify_add_watch: {}", io::Error::last_os_error());
                (wd, *label)
            })
            .collect();
        Self { fd, watches }
    }

    /// Every event queued so far (they are queued by the syscall itself,
    /// so none is missing once the operation returned).
    fn take(&self) -> Vec<DirEvent> {
        use std::os::fd::AsRawFd;
        let mut events = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            // SAFETY: reads into a buffer of the length given.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                let e = io::Error::last_os_error();
                assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "inotify read: {e}");
                return events;
            }
            let mut at = 0;
            while at < n as usize {
                let word =
                    |i: usize| u32::from_ne_bytes(buf[at + i..at + i + 4].try_into().unwrap());
                let (wd, mask, len) = (word(0) as i32, word(4), word(12) as usize);
                let name = &buf[at + 16..at + 16 + len];
                let name = String::from_utf8_lossy(name)
                    .trim_end_matches('\0')
                    .to_string();
                at += 16 + len;
                let what = match mask & !libc::IN_ISDIR {
                    libc::IN_MOVED_FROM => "moved from",
                    libc::IN_MOVED_TO => "moved to",
                    libc::IN_DELETE => "deleted",
                    libc::IN_MOVE_SELF => "moved itself",
                    libc::IN_DELETE_SELF => "deleted itself",
                    _ => continue, // IN_IGNORED: a watch ended
                };
                let label = self.watches.iter().find(|(w, _)| *w == wd).unwrap().1;
                events.push((label, what, name));
            }
        }
    }
}

/// The index of the first event `matches` picks, failing with `events`.
fn position(events: &[DirEvent], what: &str, matches: impl Fn(&DirEvent) -> bool) -> usize {
    events
        .iter()
        .position(matches)
        .unwrap_or_else(|| panic!("no event: {what}; the events: {events:#?}"))
}

#[test]
fn deletes_move_the_directory_into_trash_before_removing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let store = staged(dir.path(), 21);
    let blob = id(21);
    for shard in [2, 3] {
        store
            .put_sliver(&blob, 0, shard, SliverKind::Primary, b"primary")
            .unwrap();
        store
            .put_sliver(&blob, 0, shard, SliverKind::Secondary, b"secondary")
            .unwrap();
    }
    store.commit(&blob, 10, None).unwrap();
    let blobs = dir.path().join("blobs");
    let blob_dir = blobs.join(blob.to_string());
    let trash = dir.path().join("trash");
    let events = DirEvents::watch(&[
        ("blobs/", &blobs),
        ("the blob's directory", &blob_dir),
        ("shard 2's directory", &blob_dir.join("2")),
        ("trash/", &trash),
    ]);
    let is_delete = |e: &DirEvent| e.1.starts_with("deleted");

    // A shard moving away: its directory leaves the blob's whole, by one
    // rename into trash/, and only there is it emptied and removed.
    store.delete_shard(&blob, 3).unwrap();
    let seen = events.take();
    let moved = position(&seen, "shard 3's directory moved out", |e| {
        *e == ("the blob's directory", "moved from", "3".into())
    });
    let arrived = position(&seen, "a directory moved into trash/", |e| {
        e.0 == "trash/" && e.1 == "moved to"
    });
    let first_delete = position(&seen, "something removed", is_delete);
    assert!(moved < first_delete && arrived < first_delete, "{seen:#?}");
    assert!(
        !seen
            .iter()
            .any(|e| e.0 == "the blob's directory" && is_delete(e)),
        "removed in place: {seen:#?}"
    );
    let in_trash = seen[arrived].2.clone();
    assert!(
        seen.contains(&("trash/", "deleted", in_trash)),
        "trash/ was not emptied: {seen:#?}"
    );

    // The delete: the blob's directory is renamed into trash/ before a
    // single file of it (markers, metadata, slivers) is removed.
    store.tombstone(&blob, 11).unwrap();
    let seen = events.take();
    let moved = position(&seen, "the blob's directory moved out of blobs/", |e| {
        *e == ("blobs/", "moved from", blob.to_string())
    });
    let arrived = position(&seen, "a directory moved into trash/", |e| {
        e.0 == "trash/" && e.1 == "moved to"
    });
    let first_delete = position(&seen, "something removed", is_delete);
    assert!(moved < first_delete && arrived < first_delete, "{seen:#?}");
    // Its files did go, after the move: the sliver of shard 2 and the
    // markers, then the directory itself (as trash/ saw it).
    assert!(
        seen.contains(&("shard 2's directory", "deleted", "0.primary".into())),
        "{seen:#?}"
    );
    assert!(
        seen.contains(&("the blob's directory", "deleted", "commit".into())),
        "{seen:#?}"
    );
    let in_trash = seen[arrived].2.clone();
    assert!(
        seen.contains(&("trash/", "deleted", in_trash)),
        "trash/ was not emptied: {seen:#?}"
    );
    assert!(
        !seen.iter().any(|e| e.0 == "blobs/" && is_delete(e)),
        "removed in place: {seen:#?}"
    );
    assert!(!blob_dir.exists());
    assert_eq!(fs::read_dir(&trash).unwrap().count(), 0);
}

/// A named change a test makes to a store.
type Step<'a> = (&'a str, Box<dyn Fn(&SliverStore) + 'a>);

/// The blobs the journal says changed after `at`.
fn changed_after(store: &SliverStore, at: JournalPosition) -> Vec<BlobId> {
    store.changes_since(at, 100).unwrap().blobs
}

#[test]
fn every_change_of_a_blobs_files_is_in_the_journal_and_reads_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let blob = id(40);
    // Each step changes blob 40's files; the journal names it after it.
    let steps: Vec<Step> = vec![
        ("stage", Box::new(|s| s.stage(&blob, 10, b"meta").unwrap())),
        (
            "put a sliver",
            Box::new(|s| {
                s.put_sliver(&blob, 0, 1, SliverKind::Primary, b"sliver")
                    .unwrap()
            }),
        ),
        (
            "put a pair",
            Box::new(|s| {
                s.put_sliver(&blob, 0, 2, SliverKind::Primary, b"p")
                    .unwrap();
                s.put_sliver(&blob, 0, 2, SliverKind::Secondary, b"s")
                    .unwrap();
            }),
        ),
        (
            "commit",
            Box::new(|s| {
                s.commit(&blob, 10, None).unwrap();
            }),
        ),
        (
            "a corrupt sliver read and quarantined",
            Box::new(|s| {
                let path = s.sliver_path(&blob, 0, 1, SliverKind::Primary);
                fs::write(&path, b"garbage that fails its checksum").unwrap();
                assert!(s.sliver(&blob, 0, 1, SliverKind::Primary).is_err());
            }),
        ),
        (
            "a shard released",
            Box::new(|s| assert!(s.delete_shard(&blob, 2).unwrap() > 0)),
        ),
        (
            "a session's pair adopted",
            Box::new(|s| {
                let upload = crate::wire::UploadId::random();
                let root = [7u8; 32];
                let (pair, leaves) = super::uploads::tests::pair();
                s.put_upload_pair_checked(&upload, (0, &root), 3, [&pair[0], &pair[1]], || {
                    Ok::<_, ()>(leaves.clone())
                })
                .unwrap();
                s.lock(&blob).adopt_upload(&upload, &[(0, root)]).unwrap();
                assert!(s.has_sliver(&blob, 0, 3, SliverKind::Secondary));
            }),
        ),
        (
            "a tombstone",
            Box::new(|s| {
                s.tombstone(&blob, 11).unwrap();
            }),
        ),
    ];
    for (what, step) in steps {
        let before = store.journal_head();
        step(&store);
        assert_eq!(changed_after(&store, before), vec![blob], "after: {what}");
        // Reading it changes nothing.
        let after = store.journal_head();
        store.state(&blob).unwrap();
        store.holdings(&blob).unwrap();
        let _ = store.sliver(&blob, 0, 3, SliverKind::Primary);
        store.list_blobs(None, 10).unwrap();
        assert_eq!(changed_after(&store, after), vec![], "reads after: {what}");
    }

    // Housekeeping: an aborted write and an abandoned one.
    let (aborted, abandoned) = (id(41), id(42));
    store.stage(&aborted, 1, b"m").unwrap();
    store.stage(&abandoned, 1, b"m").unwrap();
    let before = store.journal_head();
    assert!(store.abort(&aborted, 1).unwrap());
    let later = SystemTime::now() + Duration::from_secs(3600);
    assert_eq!(
        store
            .collect_abandoned(Duration::from_secs(60), later)
            .unwrap(),
        vec![abandoned]
    );
    assert_eq!(changed_after(&store, before), vec![aborted, abandoned]);

    // A store opened anew starts another epoch: old positions are refused.
    let old = store.journal_head();
    drop(store);
    let store = open(dir.path());
    assert!(matches!(
        store.changes_since(old, 10),
        Err(Forgotten::OtherEpoch { .. })
    ));
    assert_eq!(changed_after(&store, store.journal_head()), vec![]);
}

#[test]
fn a_scrub_reads_no_faster_than_its_limit() {
    let rate = Some(1000);
    assert_eq!(
        scrub_wait(500, Duration::from_millis(100), rate),
        Duration::from_millis(400)
    );
    assert_eq!(
        scrub_wait(500, Duration::from_secs(1), rate),
        Duration::ZERO
    );
    assert_eq!(
        scrub_wait(u64::MAX / 2, Duration::ZERO, None),
        Duration::ZERO
    );
    assert_eq!(
        scrub_wait(10, Duration::ZERO, Some(0)),
        Duration::ZERO,
        "0: no limit"
    );
}

#[test]
fn a_scrub_is_overdue_after_its_rest_twice_its_read_time_and_an_hour() {
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let day = Duration::from_secs(86_400);
    // 64 MiB/s over 640 MiB: 10 s of reading, allowed 20.
    assert_eq!(
        scrub_deadline(start, day, 640 << 20, Some(64 << 20)),
        start + day + Duration::from_secs(20 + 3600)
    );
    // Without a limit a slow disk's 16 MiB/s is assumed.
    assert_eq!(
        scrub_deadline(start, day, 160 << 20, None),
        start + day + Duration::from_secs(20 + 3600)
    );
    assert_eq!(
        scrub_deadline(start, day, 160 << 20, Some(0)),
        scrub_deadline(start, day, 160 << 20, None)
    );
}
