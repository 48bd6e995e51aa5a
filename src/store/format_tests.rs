//! Store formats 2 and 3: plain and derived sliver checksums side by side.

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
fn a_new_store_is_of_the_newest_format_and_gives_sliver_files_derived_checksums() {
    let dir = tempfile::tempdir().unwrap();
    let store = SliverStore::open(dir.path(), None).unwrap();
    assert_eq!(format_of(dir.path()), NEWEST_FORMAT.to_string());
    let (file, leaves) = sliver_file(1);
    store.stage(&id(1), 1, b"meta").unwrap();
    let with_leaves = SliverFile::verified(&file, &leaves);
    store
        .put_pair(&id(1), 0, 2, with_leaves, (&file).into())
        .unwrap();
    let derived = sliver_checksum::of_content(&file).unwrap();
    for kind in [SliverKind::Primary, SliverKind::Secondary] {
        let path = store.sliver_path(&id(1), 0, 2, kind);
        assert_eq!(
            trailer(&path),
            derived,
            "{kind}: from the leaves or the bytes alike"
        );
        assert_eq!(
            store.sliver(&id(1), 0, 2, kind).unwrap(),
            Some(file.clone().into())
        );
    }
    // Files other than slivers keep the plain hash.
    let metadata = store.blob_dir(&id(1)).join("metadata");
    assert_eq!(trailer(&metadata), blake3::hash(b"meta").as_bytes());
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
fn either_checksum_reads_back_in_either_format_and_a_flipped_bit_fails_both() {
    for format in [MARKERS_FORMAT, NEWEST_FORMAT] {
        let dir = tempfile::tempdir().unwrap();
        // Written by a store of the other format.
        let other = if format == NEWEST_FORMAT {
            MARKERS_FORMAT
        } else {
            NEWEST_FORMAT
        };
        let writer = store_of_format(dir.path(), other);
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
        assert_eq!(
            reader.sliver(&id(3), 0, 0, SliverKind::Primary).unwrap(),
            Some(file.clone().into()),
            "format {format} reads what format {other} wrote"
        );
        let path = reader.sliver_path(&id(3), 0, 0, SliverKind::Secondary);
        let mut bytes = fs::read(&path).unwrap();
        bytes[SLIVER_OVERHEAD_FOR_TESTS + 1000] ^= 1;
        fs::write(&path, bytes).unwrap();
        let err = reader
            .sliver(&id(3), 0, 0, SliverKind::Secondary)
            .unwrap_err();
        assert!(
            matches!(err, StoreError::Corrupt { .. }),
            "format {format}: {err}"
        );
        assert!(!path.exists(), "format {format}: quarantined");
    }
}

const SLIVER_OVERHEAD_FOR_TESTS: usize = crate::codec::format::SLIVER_OVERHEAD;

#[test]
fn a_store_of_a_newer_format_is_refused_and_left_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    drop(SliverStore::open(dir.path(), None).unwrap());
    fs::write(dir.path().join("format"), "4").unwrap();
    let err = SliverStore::open(dir.path(), None).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::NewerFormat {
                found: 4,
                newest: NEWEST_FORMAT
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("newer redstuff"), "{err}");
    assert_eq!(format_of(dir.path()), "4");
}
