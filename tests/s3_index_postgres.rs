//! The S3 index in a real PostgreSQL server: the same checks as the
//! embedded index (`s3::index::conformance`), and two gateways' indexes on
//! one database changing the same blob's references at once without
//! losing a count (serializable transactions, run again on conflict); a
//! database restart or outage costs only the requests made while it is down.

mod pg;

use std::collections::BTreeMap;
use std::sync::Arc;

use redstuff::s3::index::{conformance, Index, WriteCondition};
use redstuff::s3::records::{BlobPart, ObjectRecord};

#[test]
fn the_postgres_index_keeps_every_promise_of_the_embedded_one() {
    let server = pg::Postgres::start();
    conformance::run_all(&mut || {
        server.truncate();
        Index::postgres(&server.url).unwrap()
    });
}

fn bucket_names(index: &Index) -> Vec<String> {
    index
        .buckets()
        .unwrap()
        .into_iter()
        .map(|(name, _)| name)
        .collect()
}

#[test]
fn the_postgres_index_fails_fast_while_its_database_is_down_and_connects_again_after() {
    let server = pg::Postgres::start();
    let index = Index::postgres(&server.url).unwrap();
    index.create_bucket("before", 1).unwrap();
    // A restart between requests costs no request.
    server.stop();
    server.start_again();
    index.create_bucket("after-restart", 2).unwrap();
    // While the database is down, requests fail (they do not hang) and
    // change nothing.
    server.stop();
    let down = index.create_bucket("while-down", 3);
    assert!(down.is_err(), "{down:?}");
    assert!(index.buckets().is_err());
    server.start_again();
    index.create_bucket("after-outage", 4).unwrap();
    assert_eq!(
        bucket_names(&index),
        vec!["after-outage", "after-restart", "before"]
    );
}

#[test]
fn two_gateways_on_one_postgres_index_never_lose_a_reference() {
    let server = pg::Postgres::start();
    let first = Arc::new(Index::postgres(&server.url).unwrap());
    let second = Arc::new(Index::postgres(&server.url).unwrap());
    first.create_bucket("shared", 1).unwrap();
    let record = ObjectRecord {
        parts: vec![BlobPart {
            blob: "one-blob".into(),
            size: 1,
        }],
        size: 1,
        etag: "e".into(),
        checksums: BTreeMap::new(),
        content_type: None,
        metadata: BTreeMap::new(),
        headers: Default::default(),
        tags: BTreeMap::new(),
        modified_ms: 1,
    };
    let workers: Vec<_> = [first.clone(), second.clone(), first.clone(), second.clone()]
        .into_iter()
        .enumerate()
        .map(|(w, index)| {
            let record = record.clone();
            std::thread::spawn(move || {
                for i in 0..40 {
                    let key = format!("w{w}/k{i}");
                    index
                        .put_object("shared", &key, &record, &WriteCondition::default(), 2)
                        .unwrap();
                    if i % 3 == 0 {
                        index.delete_object("shared", &key, 3).unwrap();
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    let query = redstuff::s3::listing::ListQuery {
        max_keys: 1000,
        ..Default::default()
    };
    let live = second.list("shared", &query).unwrap().entries.len() as u64;
    assert_eq!(live, 4 * (40 - 14));
    assert_eq!(first.refs("one-blob").unwrap().count, live);
}
