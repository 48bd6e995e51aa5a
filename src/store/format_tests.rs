//! Store formats 2, 3 and 4: plain, derived and fast checksums side by side.

use super::*;
use crate::codec::merkle::{self, Hash};
use crate::codec::{encode_segment, EncodingConfig};

fn id(seed: u8) -> BlobId {
    BlobId(*blake3::hash(&[seed, 3]).as_bytes())
}

/// A real serialized primary sliver and the leaf hashes of its symbols.
fn sliver_file(seed: u8) -> (Vec<u8>, Vec<Hash>) {
    let data: Vec<u8> = (0..300_000u32).map(|i| (i as u8) ^ seed).collect();
    let segment = encode_segment(EncodingConfig::new(7).unwrap(), 0, &data);
    let sliver = &segment.primary[2];
    let mut leaves = vec![[0u8; 32]; sliver.data().len() / sliver.symbol_size()];
    merkle::leaf_hashes(sliver.data(), sliver.symbol_size(), &mut leaves);
    (sliver.to_bytes(), leaves)
}

fn trailer(path: &Path) -> Vec<u8> {
    let bytes = fs::read(path).unwrap();
    bytes[bytes.len() - 32..].to_vec()
}

fn format_of(dir: &Path) -> String {
    fs::read_to_string(dir.join("format")).unwrap()
}

/// Opens a store whose format marker says `format` (an empty store).
fn store_of_format(dir: &Path, format: u32) -> SliverStore {
    drop(SliverStore::open(dir, None).unwrap());
    fs::write(dir.join("format"), format.to_string()).unwrap();
    SliverStore::open(dir, None).unwrap()
}

#[test]
fn a_new_store_is_of_the_newest_format_and_gives_every_file_a_fast_checksum() {
    let dir = tempfile::tempdir().unwrap();
    let store = SliverStore::open(dir.path(), None).unwrap();
    assert_eq!(format_of(dir.path()), NEWEST_FORMAT.to_string());
    let (file, leaves) = sliver_file(1);
    store.stage(&id(1), 1, b"meta").unwrap();
    let with_leaves = SliverFile::verified(&file, &leaves);
    store
        .put_pair(&id(1), 0, 2, with_leaves, (&file).into())
        .unwrap();
    for kind in [SliverKind::Primary, SliverKind::Secondary] {
        let path = store.sliver_path(&id(1), 0, 2, kind);
        assert_eq!(trailer(&path), fast_checksum::of(&file), "{kind}");
        assert_eq!(
            store.sliver(&id(1), 0, 2, kind).unwrap(),
            Some(file.clone().into())
        );
    }
    let metadata = store.blob_dir(&id(1)).join("metadata");
    assert_eq!(trailer(&metadata), fast_checksum::of(b"meta"));
    drop(store);
    SliverStore::open(dir.path(), None).unwrap();
    assert_eq!(format_of(dir.path()), "4", "reopened, it stays");
}

#[test]
fn a_store_of_format_3_stays_there_and_gives_sliver_files_derived_checksums() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_of_format(dir.path(), DERIVED_FORMAT);
    let (file, leaves) = sliver_file(4);
    store.stage(&id(4), 1, b"meta").unwrap();
    let with_leaves = SliverFile::verified(&file, &leaves);
    store
        .put_pair(&id(4), 0, 2, with_leaves, (&file).into())
        .unwrap();
    let derived = sliver_checksum::of_content(&file).unwrap();
    for kind in [SliverKind::Primary, SliverKind::Secondary] {
        let path = store.sliver_path(&id(4), 0, 2, kind);
        assert_eq!(
            trailer(&path),
            derived,
            "{kind}: from the leaves or the bytes alike"
        );
    }
    // Files other than slivers keep the plain hash.
    let metadata = store.blob_dir(&id(4)).join("metadata");
    assert_eq!(trailer(&metadata), blake3::hash(b"meta").as_bytes());
    drop(store);
    SliverStore::open(dir.path(), None).unwrap();
    assert_eq!(format_of(dir.path()), "3");
}

#[test]
fn a_store_of_format_2_stays_there_and_writes_plain_checksums_an_earlier_node_can_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_of_format(dir.path(), MARKERS_FORMAT);
    let (file, leaves) = sliver_file(2);
    store.stage(&id(2), 1, b"meta").unwrap();
    let with_leaves = SliverFile::verified(&file, &leaves);
    store
        .put_sliver(&id(2), 0, 1, SliverKind::Primary, with_leaves)
        .unwrap();
    let path = store.sliver_path(&id(2), 0, 1, SliverKind::Primary);
    assert_eq!(trailer(&path), blake3::hash(&file).as_bytes());
    drop(store);
    SliverStore::open(dir.path(), None).unwrap();
    assert_eq!(format_of(dir.path()), "2");
}

#[test]
fn every_checksum_reads_back_in_every_format_and_a_flipped_bit_fails_each() {
    let formats = [MARKERS_FORMAT, DERIVED_FORMAT, NEWEST_FORMAT];
    for writer_format in formats {
        for format in formats {
            let dir = tempfile::tempdir().unwrap();
            let writer = store_of_format(dir.path(), writer_format);
            let (file, _) = sliver_file(3);
            writer.stage(&id(3), 1, b"meta").unwrap();
            writer
                .put_sliver(&id(3), 0, 0, SliverKind::Primary, &file)
                .unwrap();
            writer
                .put_sliver(&id(3), 0, 0, SliverKind::Secondary, &file)
                .unwrap();
            drop(writer);
            fs::write(dir.path().join("format"), format.to_string()).unwrap();
            let reader = SliverStore::open(dir.path(), None).unwrap();
            let what = format!("format {format} reading what format {writer_format} wrote");
            assert_eq!(
                reader.sliver(&id(3), 0, 0, SliverKind::Primary).unwrap(),
                Some(file.clone().into()),
                "{what}"
            );
            assert_eq!(
                reader.metadata(&id(3)).unwrap().as_deref(),
                Some(&b"meta"[..]),
                "{what}"
            );
            let path = reader.sliver_path(&id(3), 0, 0, SliverKind::Secondary);
            let mut bytes = fs::read(&path).unwrap();
            bytes[SLIVER_OVERHEAD_FOR_TESTS + 1000] ^= 1;
            fs::write(&path, bytes).unwrap();
            let err = reader
                .sliver(&id(3), 0, 0, SliverKind::Secondary)
                .unwrap_err();
            assert!(matches!(err, StoreError::Corrupt { .. }), "{what}: {err}");
            assert!(!path.exists(), "{what}: quarantined");
        }
    }
}

#[test]
fn a_fast_checksum_whose_tag_was_hit_by_bitrot_fails_every_check() {
    let dir = tempfile::tempdir().unwrap();
    let store = SliverStore::open(dir.path(), None).unwrap();
    let (file, _) = sliver_file(5);
    store.stage(&id(5), 1, b"meta").unwrap();
    store
        .put_sliver(&id(5), 0, 1, SliverKind::Primary, &file)
        .unwrap();
    let path = store.sliver_path(&id(5), 0, 1, SliverKind::Primary);
    let mut bytes = fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(&path, bytes).unwrap();
    let err = store.sliver(&id(5), 0, 1, SliverKind::Primary).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
}

const SLIVER_OVERHEAD_FOR_TESTS: usize = crate::codec::format::SLIVER_OVERHEAD;

#[test]
fn a_store_of_a_newer_format_is_refused_and_left_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    drop(SliverStore::open(dir.path(), None).unwrap());
    let newer = NEWEST_FORMAT + 1;
    fs::write(dir.path().join("format"), newer.to_string()).unwrap();
    let err = SliverStore::open(dir.path(), None).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::NewerFormat {
                found,
                newest: NEWEST_FORMAT
            } if found == newer
        ),
        "{err}"
    );
    assert!(err.to_string().contains("newer redstuff"), "{err}");
    assert_eq!(format_of(dir.path()), newer.to_string());
}

#[test]
fn a_format_file_that_says_nothing_is_refused_while_blobs_are_stored_and_nothing_is_marked() {
    let dir = tempfile::tempdir().unwrap();
    let store = SliverStore::open(dir.path(), None).unwrap();
    // Staged, never committed: a guess of the old layout would commit it.
    store.stage(&id(1), 10, b"meta").unwrap();
    drop(store);
    // As a crash right after the file was created might leave it.
    fs::write(dir.path().join("format"), "").unwrap();
    let err = SliverStore::open(dir.path(), None).unwrap_err();
    assert!(matches!(err, StoreError::UnknownFormat { .. }), "{err}");
    assert!(err.to_string().contains("no store format"), "{err}");
    let staged = dir.path().join("blobs").join(id(1).to_string());
    assert!(!staged.join("commit").exists(), "nothing committed");

    // Missing while blobs carry markers: a store of format 2 or later.
    fs::remove_file(dir.path().join("format")).unwrap();
    let err = SliverStore::open(dir.path(), None).unwrap_err();
    assert!(err.to_string().contains("commit markers"), "{err}");
    assert!(!staged.join("commit").exists(), "nothing committed");
    assert!(!dir.path().join("format").exists(), "and nothing written");
}

#[test]
fn a_format_file_that_says_nothing_in_a_store_without_blobs_is_written_anew() {
    let dir = tempfile::tempdir().unwrap();
    drop(SliverStore::open(dir.path(), None).unwrap());
    fs::write(dir.path().join("format"), "\0\0").unwrap();
    drop(SliverStore::open(dir.path(), None).unwrap());
    assert_eq!(format_of(dir.path()), NEWEST_FORMAT.to_string());
}
