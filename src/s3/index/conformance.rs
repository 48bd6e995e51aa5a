//! What every index store must do, as checks run against a fresh, empty
//! index: the embedded one in unit tests, PostgreSQL in
//! tests/s3_index_postgres.rs.

#![allow(missing_docs)]

use super::*;
use crate::s3::assemble::MIN_PART_SIZE;
use crate::s3::records::BlobPart;

pub(super) fn record(blobs: &[&str], etag: &str) -> ObjectRecord {
    ObjectRecord {
        parts: blobs
            .iter()
            .map(|b| BlobPart {
                blob: b.to_string(),
                size: 10,
            })
            .collect(),
        size: 10 * blobs.len() as u64,
        etag: etag.into(),
        checksums: BTreeMap::new(),
        content_type: None,
        metadata: BTreeMap::new(),
        headers: Default::default(),
        tags: BTreeMap::new(),
        modified_ms: 5,
    }
}

fn part(blob: &str, size: u64, etag: &str) -> PartRecord {
    PartRecord {
        blob: blob.into(),
        size,
        etag: etag.into(),
        checksums: BTreeMap::new(),
        modified_ms: 5,
    }
}

/// The blobs claimed.
fn blobs(claims: Vec<Claim>) -> Vec<String> {
    claims.into_iter().map(|c| c.blob).collect()
}

/// The token of a claim for a delete (panics when refused).
fn claimed(claim: DeleteClaim) -> u64 {
    match claim {
        DeleteClaim::Claimed { token } => token,
        DeleteClaim::Referenced(n) => panic!("refused: {n} references"),
    }
}

pub(super) const ANY: WriteCondition = WriteCondition {
    if_absent: false,
    if_etag: None,
};

/// every key and part referring to a blob counts once and replacing a key moves its references.
pub fn every_key_and_part_referring_to_a_blob_counts_once_and_replacing_a_key_moves_its_references(
    index: &Index,
) {
    index.create_bucket("media", 1).unwrap();
    index
        .put_object("media", "a", &record(&["x"], "e1"), &ANY, 10)
        .unwrap();
    index
        .copy_object(("media", "a"), ("media", "b"), |r| r, 11)
        .unwrap()
        .unwrap();
    assert_eq!(index.refs("x").unwrap().count, 2);
    index
        .put_object("media", "a", &record(&["y"], "e2"), &ANY, 12)
        .unwrap();
    assert_eq!(index.refs("x").unwrap().count, 1);
    assert_eq!(index.refs("y").unwrap().count, 1);
    assert!(index.delete_object("media", "b", 13).unwrap());
    let x = index.refs("x").unwrap();
    assert_eq!((x.count, x.unreferenced_since_ms), (0, Some(13)));
    assert!(
        !index.delete_object("media", "b", 14).unwrap(),
        "already gone"
    );
}

/// conditional writes hold only when the key is as the client expects.
pub fn conditional_writes_hold_only_when_the_key_is_as_the_client_expects(index: &Index) {
    index.create_bucket("media", 1).unwrap();
    let absent = WriteCondition {
        if_absent: true,
        if_etag: None,
    };
    index
        .put_object("media", "k", &record(&["x"], "e1"), &absent, 1)
        .unwrap();
    assert!(matches!(
        index.put_object("media", "k", &record(&["y"], "e2"), &absent, 2),
        Err(IndexError::PreconditionFailed(_))
    ));
    let matching = |etag: &str| WriteCondition {
        if_absent: false,
        if_etag: Some(etag.into()),
    };
    assert!(matches!(
        index.put_object("media", "k", &record(&["y"], "e2"), &matching("zz"), 3),
        Err(IndexError::PreconditionFailed(_))
    ));
    index
        .put_object("media", "k", &record(&["y"], "e2"), &matching("e1"), 4)
        .unwrap();
    assert_eq!(index.object("media", "k").unwrap().unwrap().etag, "e2");
    // A refused write changed nothing: x lost its reference only once.
    assert_eq!(index.refs("x").unwrap().count, 0);
    assert_eq!(index.refs("y").unwrap().count, 1);
}

/// completing an upload writes the object and releases the parts it did not choose.
pub fn completing_an_upload_writes_the_object_and_releases_the_parts_it_did_not_choose(
    index: &Index,
) {
    index.create_bucket("media", 1).unwrap();
    let upload = UploadRecord {
        bucket: "media".into(),
        key: "big".into(),
        created_ms: 1,
        content_type: Some("video/mp4".into()),
        metadata: BTreeMap::new(),
        headers: crate::s3::records::ObjectHeaders {
            cache_control: Some("max-age=60".into()),
            ..Default::default()
        },
        tags: BTreeMap::from([("team".to_string(), "storage".to_string())]),
        last_part_ms: None,
    };
    let id = index.create_upload(&upload).unwrap();
    let at = ("media", "big", id.as_str());
    let md5 = "00112233445566778899aabbccddeeff";
    index
        .put_part(at, 1, &part("p1", MIN_PART_SIZE, md5), 2)
        .unwrap();
    index.put_part(at, 2, &part("p2", 3, md5), 2).unwrap();
    // Part 2 again: the first upload of it is released.
    index.put_part(at, 2, &part("p2b", 4, md5), 3).unwrap();
    index.put_part(at, 3, &part("p3", 4, md5), 3).unwrap();
    assert_eq!(index.refs("p2").unwrap().count, 0);
    assert_eq!(
        index
            .parts(&id, 0, 10)
            .unwrap()
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>(),
        [1, 2, 3]
    );
    let chosen = [
        ChosenPart {
            number: 1,
            etag: format!("\"{md5}\""),
        },
        ChosenPart {
            number: 2,
            etag: md5.into(),
        },
    ];
    let object = index.complete_upload(at, &chosen, &ANY, 4).unwrap();
    assert_eq!(object.size, MIN_PART_SIZE + 4);
    assert_eq!(object.content_type.as_deref(), Some("video/mp4"));
    assert_eq!(object.headers.cache_control.as_deref(), Some("max-age=60"));
    assert_eq!(object.tags["team"], "storage");
    assert!(object.etag.ends_with("-2"));
    assert_eq!(index.refs("p1").unwrap().count, 1);
    assert_eq!(index.refs("p2b").unwrap().count, 1);
    assert_eq!(index.refs("p3").unwrap().count, 0, "part 3 was not chosen");
    assert!(matches!(
        index.upload("media", "big", &id),
        Err(IndexError::NoSuchUpload(_))
    ));
    assert!(index.parts(&id, 0, 10).unwrap().is_empty());
}

/// an aborted upload releases every part.
pub fn an_aborted_upload_releases_every_part(index: &Index) {
    index.create_bucket("media", 1).unwrap();
    let upload = UploadRecord {
        bucket: "media".into(),
        key: "k".into(),
        created_ms: 1,
        content_type: None,
        metadata: BTreeMap::new(),
        headers: Default::default(),
        tags: BTreeMap::new(),
        last_part_ms: None,
    };
    let id = index.create_upload(&upload).unwrap();
    index
        .put_part(("media", "k", &id), 1, &part("p", 3, "aa"), 2)
        .unwrap();
    assert!(matches!(
        index.abort_upload(("media", "other", &id), 3),
        Err(IndexError::NoSuchUpload(_))
    ));
    index.abort_upload(("media", "k", &id), 3).unwrap();
    assert_eq!(index.refs("p").unwrap().count, 0);
    assert!(index.uploads("media").unwrap().is_empty());
}

/// an upload is abandoned only once it received no part for the time
/// asked, however long ago it was created.
pub fn an_upload_is_idle_from_its_last_part_not_from_its_creation(index: &Index) {
    index.create_bucket("media", 1).unwrap();
    let upload = |key: &str| UploadRecord {
        bucket: "media".into(),
        key: key.into(),
        created_ms: 1,
        content_type: None,
        metadata: BTreeMap::new(),
        headers: Default::default(),
        tags: BTreeMap::new(),
        last_part_ms: None,
    };
    let quiet = index.create_upload(&upload("quiet")).unwrap();
    let busy = index.create_upload(&upload("busy")).unwrap();
    index
        .put_part(("media", "busy", &busy), 1, &part("p", 3, "aa"), 50)
        .unwrap();
    let idle = |before| -> Vec<String> {
        let mut ids: Vec<String> = index
            .uploads_idle_since(before)
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(idle(40), std::slice::from_ref(&quiet));
    let mut both = vec![quiet, busy];
    both.sort();
    assert_eq!(idle(51), both);
}

/// a blob claimed for collection cannot be referred to until collected.
pub fn a_blob_claimed_for_collection_cannot_be_referred_to_until_collected(index: &Index) {
    index.create_bucket("media", 1).unwrap();
    index
        .put_object("media", "a", &record(&["x"], "e"), &ANY, 10)
        .unwrap();
    index.delete_object("media", "a", 20).unwrap();
    assert!(
        index.claim_unreferenced(20, 20).unwrap().is_empty(),
        "within its grace"
    );
    let claims = index.claim_unreferenced(21, 21).unwrap();
    let token = claims[0].token;
    assert_eq!(blobs(claims), ["x"]);
    assert!(matches!(
        index.put_object("media", "b", &record(&["x"], "e"), &ANY, 22),
        Err(IndexError::Collecting(_))
    ));
    assert!(
        index.object("media", "b").unwrap().is_none(),
        "nothing written"
    );
    // Only the claim's holder forgets the blob.
    assert!(!index.collected("x", token.wrapping_add(1)).unwrap());
    assert!(index.refs("x").unwrap().collecting);
    assert!(index.collected("x", token).unwrap());
    index
        .put_object("media", "b", &record(&["x"], "e"), &ANY, 23)
        .unwrap();
    assert_eq!(index.refs("x").unwrap().count, 1);
}

/// a blob S3 refers to cannot be claimed for a delete from outside S3;
/// one it does not refer to (or never knew) can, and is then referred to
/// only once collected.
pub fn a_blob_s3_refers_to_cannot_be_claimed_for_a_delete_from_outside(index: &Index) {
    index.create_bucket("media", 1).unwrap();
    index
        .put_object("media", "a", &record(&["x"], "e"), &ANY, 10)
        .unwrap();
    assert_eq!(
        index.claim_for_delete("x", 15).unwrap(),
        DeleteClaim::Referenced(1)
    );
    assert!(!index.refs("x").unwrap().collecting, "left as it was");
    index.delete_object("media", "a", 20).unwrap();
    let token = claimed(index.claim_for_delete("x", 21).unwrap());
    assert!(matches!(
        index.put_object("media", "b", &record(&["x"], "e"), &ANY, 22),
        Err(IndexError::Collecting(_))
    ));
    assert!(index.collected("x", token).unwrap());
    index
        .put_object("media", "b", &record(&["x"], "e"), &ANY, 23)
        .unwrap();
    // A blob S3 never knew: claimed; a delete that then fails leaves it to
    // the collector once the claim's lease ran out.
    claimed(index.claim_for_delete("y", 30).unwrap());
    assert!(index.claim_unreferenced(0, 30).unwrap().is_empty());
    assert_eq!(
        blobs(index.claim_unreferenced(0, 30 + CLAIM_LEASE_MS).unwrap()),
        ["y"]
    );
}

/// a bucket with objects cannot be deleted and unknown buckets are named.
pub fn a_bucket_with_objects_cannot_be_deleted_and_unknown_buckets_are_named(index: &Index) {
    index.create_bucket("media", 1).unwrap();
    index
        .put_object("media", "a", &record(&["x"], "e"), &ANY, 1)
        .unwrap();
    assert!(matches!(
        index.delete_bucket("media", 2),
        Err(IndexError::BucketNotEmpty(_))
    ));
    assert!(matches!(
        index.put_object("nope", "a", &record(&["x"], "e"), &ANY, 1),
        Err(IndexError::NoSuchBucket(_))
    ));
    assert!(matches!(
        index.create_bucket("media", 3),
        Err(IndexError::BucketExists(_))
    ));
    index.delete_object("media", "a", 4).unwrap();
    index.delete_bucket("media", 5).unwrap();
    assert!(!index.bucket_exists("media").unwrap());
}

/// listing reads keys of one bucket only in byte order.
pub fn listing_reads_keys_of_one_bucket_only_in_byte_order(index: &Index) {
    index.create_bucket("media", 1).unwrap();
    index.create_bucket("medib", 1).unwrap();
    for key in ["b", "a/1", "a/2", "z ü +&="] {
        index
            .put_object("media", key, &record(&["x"], "e"), &ANY, 1)
            .unwrap();
    }
    index
        .put_object("medib", "c", &record(&["x"], "e"), &ANY, 1)
        .unwrap();
    let query = ListQuery {
        max_keys: 100,
        ..ListQuery::default()
    };
    assert_eq!(
        names(&index.list("media", &query).unwrap()),
        ["a/1", "a/2", "b", "z ü +&="]
    );
    let rolled = ListQuery {
        delimiter: Some("/".into()),
        max_keys: 100,
        ..ListQuery::default()
    };
    assert_eq!(
        names(&index.list("media", &rolled).unwrap()),
        ["a/", "b", "z ü +&="]
    );
    let after = ListQuery {
        after: Some("a/1".into()),
        max_keys: 2,
        ..ListQuery::default()
    };
    let page = index.list("media", &after).unwrap();
    assert_eq!(names(&page), ["a/2", "b"]);
    assert!(page.truncated);
}

/// a blob noted before its write is collected unless a record comes to refer to it.
pub fn a_blob_noted_before_its_write_is_collected_unless_a_record_comes_to_refer_to_it(
    index: &Index,
) {
    index.create_bucket("media", 1).unwrap();
    index.note_unreferenced("orphan", 10).unwrap();
    index.note_unreferenced("kept", 10).unwrap();
    index
        .put_object("media", "k", &record(&["kept"], "e"), &ANY, 11)
        .unwrap();
    // Noting again changes nothing for a referenced blob.
    index.note_unreferenced("kept", 12).unwrap();
    assert_eq!(index.refs("kept").unwrap().count, 1);
    assert_eq!(
        blobs(index.claim_unreferenced(100, 100).unwrap()),
        ["orphan"]
    );
}

/// the blobs S3 knows are those it noted before writing, refers to, or
/// claimed; a blob it never knew, or forgot once collected, is not.
pub fn the_blobs_s3_knows_are_those_it_wrote_refers_to_or_claimed(index: &Index) {
    index.create_bucket("media", 1).unwrap();
    index.note_unreferenced("writing", 10).unwrap();
    index
        .put_object("media", "a", &record(&["stored"], "e"), &ANY, 11)
        .unwrap();
    claimed(index.claim_for_delete("claimed", 12).unwrap());
    let token = claimed(index.claim_for_delete("gone", 12).unwrap());
    assert!(index.collected("gone", token).unwrap());
    let asked: Vec<String> = ["claimed", "gone", "native", "stored", "writing"]
        .map(String::from)
        .into();
    assert_eq!(
        index.known_blobs(&asked).unwrap(),
        ["claimed", "stored", "writing"]
    );
    assert!(index.known_blobs(&[]).unwrap().is_empty());
}

/// tags change nothing else of an object, and a conditional delete
/// deletes only the object it names.
pub fn tags_change_nothing_else_and_a_conditional_delete_needs_its_etag(index: &Index) {
    index.create_bucket("media", 1).unwrap();
    index
        .put_object("media", "k", &record(&["x"], "e1"), &ANY, 10)
        .unwrap();
    let tags = BTreeMap::from([("team".to_string(), "storage".to_string())]);
    assert!(index.set_tags("media", "k", &tags).unwrap());
    assert!(!index.set_tags("media", "absent", &tags).unwrap());
    let tagged = index.object("media", "k").unwrap().unwrap();
    assert_eq!(tagged.tags, tags);
    assert_eq!(
        (tagged.etag.as_str(), tagged.modified_ms),
        ("e1", 5),
        "tagging is no write of the object"
    );
    assert_eq!(index.refs("x").unwrap().count, 1);
    let other = WriteCondition {
        if_etag: Some("e2".into()),
        ..WriteCondition::default()
    };
    assert!(matches!(
        index.delete_object_if("media", "k", &other, 11),
        Err(IndexError::PreconditionFailed(_))
    ));
    assert!(index.object("media", "k").unwrap().is_some());
    let same = WriteCondition {
        if_etag: Some("e1".into()),
        ..WriteCondition::default()
    };
    assert!(index.delete_object_if("media", "k", &same, 12).unwrap());
    assert_eq!(index.refs("x").unwrap().count, 0);
}

/// The keys holding asked blobs are found in every bucket, in order, and
/// no others; a listing goes on after the last key it returned.
pub fn the_keys_holding_asked_blobs_are_found_in_every_bucket_and_no_others(index: &Index) {
    let asked = |blobs: &[&str]| blobs.iter().map(|b| b.to_string()).collect();
    assert_eq!(
        index
            .objects_of_blobs(&asked(&["x"]), None, 10, ScanBound::default())
            .unwrap(),
        ObjectsOfBlobs::default(),
        "an empty index holds no key"
    );
    index.create_bucket("media", 1).unwrap();
    index.create_bucket("logs", 1).unwrap();
    index
        .put_object("media", "film", &record(&["a", "x", "b"], "e1"), &ANY, 10)
        .unwrap();
    index
        .put_object("media", "poster", &record(&["c"], "e2"), &ANY, 10)
        .unwrap();
    index
        .put_object("logs", "dir/day one", &record(&["y"], "e3"), &ANY, 10)
        .unwrap();
    index
        .put_object("logs", "dir/day two", &record(&["x"], "e4"), &ANY, 10)
        .unwrap();
    // Many keys holding nothing asked: the scan goes past its pages.
    index
        .put_many(
            "media",
            (0..2500).map(|i| format!("other/{i:05}")),
            &record(&["c"], "e"),
        )
        .unwrap();
    index
        .put_object("media", "zz last", &record(&["y", "x"], "e5"), &ANY, 10)
        .unwrap();
    let found = index
        .objects_of_blobs(&asked(&["x", "y"]), None, 10, ScanBound::default())
        .unwrap();
    let named: Vec<(&str, &str, &str)> = found
        .objects
        .iter()
        .map(|o| (o.bucket.as_str(), o.key.as_str(), o.blob.as_str()))
        .collect();
    assert_eq!(
        named,
        [
            ("logs", "dir/day one", "y"),
            ("logs", "dir/day two", "x"),
            ("media", "film", "x"),
            ("media", "zz last", "y"),
        ]
    );
    assert!(!found.truncated);
    let first = index
        .objects_of_blobs(&asked(&["x", "y"]), None, 3, ScanBound::default())
        .unwrap();
    assert_eq!(first.objects, found.objects[..3]);
    assert!(first.truncated, "a fourth key was left out");
    let exact = index
        .objects_of_blobs(&asked(&["x", "y"]), None, 4, ScanBound::default())
        .unwrap();
    assert!(!exact.truncated, "nothing was left out");
    // The rest, after the last key returned.
    let last = &first.objects[2];
    let rest = index
        .objects_of_blobs(
            &asked(&["x", "y"]),
            Some((&last.bucket, &last.key)),
            3,
            ScanBound::default(),
        )
        .unwrap();
    assert_eq!(rest.objects, found.objects[3..]);
    assert!(!rest.truncated);
    assert!(index
        .objects_of_blobs(&asked(&["unknown"]), None, 10, ScanBound::default())
        .unwrap()
        .objects
        .is_empty());
    // A bounded scan stops where it says, and scans resumed there find
    // every key once, in order.
    let bound = ScanBound {
        most_records: Some(700),
        until: None,
    };
    let mut resumed = Vec::new();
    let mut after: Option<String> = None;
    let mut calls = 0;
    loop {
        calls += 1;
        let from = after.as_deref().map(|a| a.split_once('/').unwrap());
        let part = index
            .objects_of_blobs(&asked(&["x", "y"]), from, 10, bound)
            .unwrap();
        assert!(!part.truncated);
        resumed.extend(part.objects);
        match part.resume_after {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(resumed, found.objects);
    assert_eq!(calls, 2505 / 700 + 1, "700 records per call");
    let past = ScanBound {
        most_records: None,
        until: Some(std::time::Instant::now()),
    };
    let first_record = index
        .objects_of_blobs(&asked(&["y"]), None, 10, past)
        .unwrap();
    assert_eq!(
        first_record.resume_after.as_deref(),
        Some("logs/dir/day one"),
        "a scan out of time still reads one record"
    );
    assert_eq!(first_record.objects.len(), 1);
}

/// Bytes stored outside S3 too (before S3 stored them, while it referred
/// to them, or at once) are never collected by it and are not S3's own;
/// a delete from outside claims them once no key refers to them, and one
/// refused while keys do gives them up to S3.
pub fn bytes_stored_outside_s3_too_are_never_collected_by_it(index: &Index) {
    index.create_bucket("media", 1).unwrap();
    // Stored natively first: S3's write finds them in the fleet.
    index.note_write("before", 1, true).unwrap();
    // S3's first; then stored natively while a key refers to them.
    index.note_write("during", 1, false).unwrap();
    // Stored natively while S3's first write of them runs: the native
    // write's mark comes first, S3's note finds it.
    index.note_stored_outside("racing").unwrap();
    index.note_write("racing", 1, false).unwrap();
    // S3's alone.
    index.note_write("s3s", 1, false).unwrap();
    for (key, blob) in [
        ("a", "before"),
        ("b", "during"),
        ("c", "s3s"),
        ("d", "racing"),
    ] {
        index
            .put_object("media", key, &record(&[blob], "e"), &ANY, 2)
            .unwrap();
    }
    index.note_stored_outside("during").unwrap();
    let asked: Vec<String> = ["before", "during", "s3s", "racing"]
        .map(String::from)
        .to_vec();
    assert_eq!(index.known_blobs(&asked).unwrap(), ["s3s"]);
    for key in ["a", "b", "c", "d"] {
        assert!(index.delete_object("media", key, 3).unwrap());
    }
    assert_eq!(
        blobs(index.claim_unreferenced(u64::MAX, 0).unwrap()),
        ["s3s"]
    );
    // While being collected, the bytes cannot be stored natively.
    assert!(matches!(
        index.note_stored_outside("s3s"),
        Err(IndexError::Collecting(_))
    ));
    // The native side deletes its own; a claim whose delete failed is
    // taken again by the collector once its lease ran out.
    claimed(index.claim_for_delete("before", 0).unwrap());
    assert_eq!(
        blobs(index.claim_unreferenced(u64::MAX, CLAIM_LEASE_MS).unwrap()),
        ["before", "s3s"]
    );
    // A delete from outside refused while a key refers to the bytes gives
    // them up: S3 collects them after its last key.
    index.note_write("given", 4, false).unwrap();
    index.note_stored_outside("given").unwrap();
    index
        .put_object("media", "e", &record(&["given"], "e"), &ANY, 5)
        .unwrap();
    assert_eq!(
        index.claim_for_delete("given", 5).unwrap(),
        DeleteClaim::Referenced(1)
    );
    assert_eq!(
        index.known_blobs(&["given".to_string()]).unwrap(),
        ["given"]
    );
    assert!(index.delete_object("media", "e", 6).unwrap());
    assert!(blobs(
        index
            .claim_unreferenced(u64::MAX, 3 * CLAIM_LEASE_MS)
            .unwrap()
    )
    .contains(&"given".to_string()));
}

/// a write noted before its blob was claimed and collected cannot refer
/// to the bytes it wrote (the collection may have deleted them): its
/// ticket is refused, and so is any write's while the blob is claimed;
/// a write noted after the collection refers to its own bytes.
pub fn a_write_noted_before_a_collection_cannot_refer_to_its_blob(index: &Index) {
    index.create_bucket("media", 1).unwrap();
    index
        .put_object("media", "a", &record(&["x"], "e"), &ANY, 10)
        .unwrap();
    index.delete_object("media", "a", 20).unwrap();
    // Noting a write starts the grace anew.
    let early = index.note_write("x", 30, false).unwrap();
    assert_eq!(early.blob(), "x");
    assert!(index.claim_unreferenced(21, 31).unwrap().is_empty());
    let claims = index.claim_unreferenced(31, 31).unwrap();
    assert!(matches!(
        index.note_write("x", 32, false),
        Err(IndexError::Collecting(_))
    ));
    assert!(index.collected("x", claims[0].token).unwrap());
    let b = ("media", "b");
    let refused = |ticket: &WriteTicket| {
        matches!(
            index.put_object_stored(b, &record(&["x"], "e"), &ANY, ticket, 33),
            Err(IndexError::Collecting(_))
        )
    };
    assert!(refused(&early), "forgotten since");
    let late = index.note_write("x", 34, false).unwrap();
    assert!(refused(&early), "noted anew since");
    let upload = index
        .create_upload(&UploadRecord {
            bucket: "media".into(),
            key: "m".into(),
            created_ms: 34,
            content_type: None,
            metadata: BTreeMap::new(),
            headers: Default::default(),
            tags: BTreeMap::new(),
            last_part_ms: None,
        })
        .unwrap();
    assert!(matches!(
        index.put_part_stored(("media", "m", &upload), 1, &part("x", 10, "p"), &early, 35),
        Err(IndexError::Collecting(_))
    ));
    index
        .put_object_stored(b, &record(&["x"], "e"), &ANY, &late, 35)
        .unwrap();
    index
        .put_part_stored(("media", "m", &upload), 1, &part("x", 10, "p"), &late, 35)
        .unwrap();
    assert_eq!(index.refs("x").unwrap().count, 2);
    assert!(index.object("media", "b").unwrap().is_some());
}

/// a claim whose delete failed is given back and claimed again by the
/// next round, and a write noted before it stays refused.
pub fn a_claim_given_back_is_claimed_again_and_earlier_writes_stay_refused(index: &Index) {
    index.create_bucket("media", 1).unwrap();
    let ticket = index.note_write("y", 1, false).unwrap();
    let claims = index.claim_unreferenced(2, 2).unwrap();
    index.release("y", claims[0].token).unwrap();
    assert!(!index.refs("y").unwrap().collecting);
    assert!(matches!(
        index.put_object_stored(("media", "k"), &record(&["y"], "e"), &ANY, &ticket, 3),
        Err(IndexError::Collecting(_))
    ));
    assert_eq!(blobs(index.claim_unreferenced(2, 3).unwrap()), ["y"]);
}

/// two collectors (gateways sharing an index) never hold one claim at
/// once: a claim is taken over only once its lease ran out, and the
/// late holder then neither deletes nor forgets the blob.
pub fn two_collectors_never_hold_one_claim_at_once(index: &Index) {
    index.note_unreferenced("z", 10).unwrap();
    let first = index.claim_unreferenced(11, 100).unwrap();
    assert_eq!(first.len(), 1);
    let lease_end = 100 + CLAIM_LEASE_MS;
    assert!(index
        .claim_unreferenced(11, lease_end - 1)
        .unwrap()
        .is_empty());
    assert!(index
        .holds_claim("z", first[0].token, lease_end - 1)
        .unwrap());
    let second = index.claim_unreferenced(11, lease_end).unwrap();
    assert_eq!(second.len(), 1);
    assert_ne!(first[0].token, second[0].token);
    assert!(!index.holds_claim("z", first[0].token, lease_end).unwrap());
    assert!(!index.collected("z", first[0].token).unwrap());
    assert!(
        index.refs("z").unwrap().collecting,
        "the late holder forgot nothing"
    );
    assert!(index.collected("z", second[0].token).unwrap());
    assert!(!index.knows("z").unwrap());
}

/// Every check, each on a fresh index from `fresh`.
pub fn run_all(fresh: &mut dyn FnMut() -> Index) {
    every_key_and_part_referring_to_a_blob_counts_once_and_replacing_a_key_moves_its_references(
        &fresh(),
    );
    conditional_writes_hold_only_when_the_key_is_as_the_client_expects(&fresh());
    completing_an_upload_writes_the_object_and_releases_the_parts_it_did_not_choose(&fresh());
    an_aborted_upload_releases_every_part(&fresh());
    an_upload_is_idle_from_its_last_part_not_from_its_creation(&fresh());
    a_blob_claimed_for_collection_cannot_be_referred_to_until_collected(&fresh());
    a_blob_s3_refers_to_cannot_be_claimed_for_a_delete_from_outside(&fresh());
    a_bucket_with_objects_cannot_be_deleted_and_unknown_buckets_are_named(&fresh());
    listing_reads_keys_of_one_bucket_only_in_byte_order(&fresh());
    a_blob_noted_before_its_write_is_collected_unless_a_record_comes_to_refer_to_it(&fresh());
    the_blobs_s3_knows_are_those_it_wrote_refers_to_or_claimed(&fresh());
    tags_change_nothing_else_and_a_conditional_delete_needs_its_etag(&fresh());
    the_keys_holding_asked_blobs_are_found_in_every_bucket_and_no_others(&fresh());
    bytes_stored_outside_s3_too_are_never_collected_by_it(&fresh());
    a_write_noted_before_a_collection_cannot_refer_to_its_blob(&fresh());
    a_claim_given_back_is_claimed_again_and_earlier_writes_stay_refused(&fresh());
    two_collectors_never_hold_one_claim_at_once(&fresh());
}
