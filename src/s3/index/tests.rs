use super::*;

fn fresh() -> (tempfile::TempDir, Index) {
    let dir = tempfile::tempdir().unwrap();
    let index = Index::open(&dir.path().join("index.redb")).unwrap();
    (dir, index)
}

#[test]
fn every_key_and_part_referring_to_a_blob_counts_once_and_replacing_a_key_moves_its_references() {
    let (_dir, index) = fresh();
    conformance::every_key_and_part_referring_to_a_blob_counts_once_and_replacing_a_key_moves_its_references(&index);
}

#[test]
fn conditional_writes_hold_only_when_the_key_is_as_the_client_expects() {
    let (_dir, index) = fresh();
    conformance::conditional_writes_hold_only_when_the_key_is_as_the_client_expects(&index);
}

#[test]
fn completing_an_upload_writes_the_object_and_releases_the_parts_it_did_not_choose() {
    let (_dir, index) = fresh();
    conformance::completing_an_upload_writes_the_object_and_releases_the_parts_it_did_not_choose(
        &index,
    );
}

#[test]
fn an_aborted_upload_releases_every_part() {
    let (_dir, index) = fresh();
    conformance::an_aborted_upload_releases_every_part(&index);
}

#[test]
fn a_blob_claimed_for_collection_cannot_be_referred_to_until_collected() {
    let (_dir, index) = fresh();
    conformance::a_blob_claimed_for_collection_cannot_be_referred_to_until_collected(&index);
}

#[test]
fn a_bucket_with_objects_cannot_be_deleted_and_unknown_buckets_are_named() {
    let (_dir, index) = fresh();
    conformance::a_bucket_with_objects_cannot_be_deleted_and_unknown_buckets_are_named(&index);
}

#[test]
fn listing_reads_keys_of_one_bucket_only_in_byte_order() {
    let (_dir, index) = fresh();
    conformance::listing_reads_keys_of_one_bucket_only_in_byte_order(&index);
}

#[test]
fn a_blob_noted_before_its_write_is_collected_unless_a_record_comes_to_refer_to_it() {
    let (_dir, index) = fresh();
    conformance::a_blob_noted_before_its_write_is_collected_unless_a_record_comes_to_refer_to_it(
        &index,
    );
}

#[test]
fn the_keys_holding_asked_blobs_are_found_in_every_bucket_and_no_others() {
    let (_dir, index) = fresh();
    conformance::the_keys_holding_asked_blobs_are_found_in_every_bucket_and_no_others(&index);
}

#[test]
fn bytes_stored_outside_s3_too_are_never_collected_by_it() {
    let (_dir, index) = fresh();
    conformance::bytes_stored_outside_s3_too_are_never_collected_by_it(&index);
}

#[test]
fn a_write_noted_before_a_collection_cannot_refer_to_its_blob() {
    let (_dir, index) = fresh();
    conformance::a_write_noted_before_a_collection_cannot_refer_to_its_blob(&index);
}

#[test]
fn a_claim_given_back_is_claimed_again_and_earlier_writes_stay_refused() {
    let (_dir, index) = fresh();
    conformance::a_claim_given_back_is_claimed_again_and_earlier_writes_stay_refused(&index);
}

#[test]
fn two_collectors_never_hold_one_claim_at_once() {
    let (_dir, index) = fresh();
    conformance::two_collectors_never_hold_one_claim_at_once(&index);
}

#[test]
fn an_upload_is_idle_from_its_last_part_not_from_its_creation() {
    let (_dir, index) = fresh();
    conformance::an_upload_is_idle_from_its_last_part_not_from_its_creation(&index);
}

#[test]
fn a_round_claims_at_most_its_bound_and_the_next_round_the_rest() {
    let (_dir, index) = fresh();
    let blobs: Vec<String> = (0..CLAIMS_PER_ROUND + 3)
        .map(|i| format!("blob-{i:05}"))
        .collect();
    for blob in &blobs {
        index.note_unreferenced(blob, 1).unwrap();
    }
    let first = index.claim_unreferenced(2, 2).unwrap();
    assert_eq!(first.len(), CLAIMS_PER_ROUND);
    let second = index.claim_unreferenced(2, 2).unwrap();
    let mut all: Vec<String> = first.into_iter().chain(second).map(|c| c.blob).collect();
    all.sort();
    assert_eq!(all, blobs, "each claimed once");
    assert!(index.claim_unreferenced(2, 2).unwrap().is_empty());
}

#[test]
fn records_survive_closing_and_reopening_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index.redb");
    {
        let index = Index::open(&path).unwrap();
        index.create_bucket("media", 1).unwrap();
        index
            .put_object(
                "media",
                "a",
                &conformance::record(&["x"], "e"),
                &conformance::ANY,
                1,
            )
            .unwrap();
    }
    let index = Index::open(&path).unwrap();
    assert_eq!(index.object("media", "a").unwrap().unwrap().etag, "e");
    assert_eq!(index.refs("x").unwrap().count, 1);
}
