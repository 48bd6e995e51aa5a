//! Byte ranges on the native API: `GET /v1/blobs/{id}` with `Range`
//! answers 206 with exactly those bytes and reads only the rows of the
//! segments the range touches (each fetched alone from its systematic
//! shard and verified on its own, once, then kept for later ranges); a
//! row whose holder is stopped or lies is read with its whole segment,
//! with the same bytes; a range outside the blob answers 416.

mod dev_fleet;

use dev_fleet::{pseudo_random, DevFleet};

const MIB: usize = 1 << 20;

/// Rows the gateway served so far: from its cache, fetched alone, decoded
/// with their whole segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Rows {
    cache: u64,
    shared: u64,
    alone: u64,
    segment: u64,
}

impl std::ops::Sub for Rows {
    type Output = Rows;
    fn sub(self, before: Rows) -> Rows {
        Rows {
            cache: self.cache - before.cache,
            shared: self.shared - before.shared,
            alone: self.alone - before.alone,
            segment: self.segment - before.segment,
        }
    }
}

async fn rows(fleet: &DevFleet) -> Rows {
    let metrics = fleet.metrics().await;
    let count = |source: &str| {
        metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix(&format!(
                    "redstuff_gateway_read_rows_total{{source=\"{source}\"}} "
                ))
            })
            .map_or(0, |v| v.trim().parse().unwrap())
    };
    Rows {
        cache: count("cache"),
        shared: count("shared"),
        alone: count("alone"),
        segment: count("segment"),
    }
}

async fn get_range(fleet: &DevFleet, id: &str, range: &str) -> reqwest::Response {
    fleet
        .http
        .get(format!("{}/v1/blobs/{id}", fleet.gateway))
        .header("Range", range)
        .send()
        .await
        .unwrap()
}

/// A 206 answer's body, checked against `data`'s bytes `range`.
async fn read_back(fleet: &DevFleet, id: &str, data: &[u8], range: std::ops::Range<usize>) {
    let header = format!("bytes={}-{}", range.start, range.end - 1);
    let response = get_range(fleet, id, &header).await;
    assert_eq!(response.status(), 206, "{header}");
    let body = response.bytes().await.unwrap();
    assert!(body[..] == data[range], "{header}: other bytes");
}

/// n = 7 (p = 3 rows) and 1 MiB segments: the rows of a full segment are
/// 349,530 bytes (5 symbols of 69,906), those of the last half segment of
/// the blob below 174,770 (5 of 34,954).
const ROW: usize = 349_530;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ranged_get_returns_exactly_those_bytes_and_fetches_only_the_rows_it_touches_once() {
    let fleet = DevFleet::start(&[]);
    let data = pseudo_random(3 * MIB + MIB / 2, 91); // four segments
    let id = fleet.put(&data).await;
    let len = data.len();

    // Rows per range: fetched alone when new, from the cache when an
    // earlier range fetched them.
    let row = |cache, alone| Rows {
        cache,
        shared: 0,
        alone,
        segment: 0,
    };
    let cases: [(&str, std::ops::Range<usize>, Rows); 7] = [
        // Segment 1, row 2.
        ("bytes=2000000-2000099", 2_000_000..2_000_100, row(0, 1)),
        // Across segments 0 and 1: row 2 of 0 and row 0 of 1.
        ("bytes=1048570-1048580", MIB - 6..MIB + 5, row(0, 2)),
        // The last bytes: row 2 of segment 3.
        ("bytes=-10", len - 10..len, row(0, 1)),
        // All of segment 3: rows 0 and 1 new, row 2 kept.
        ("bytes=3145728-", 3 * MIB..len, row(1, 2)),
        ("bytes=0-0", 0..1, row(0, 1)),
        ("bytes=2097152-2097160", 2 * MIB..2 * MIB + 9, row(0, 1)),
        // Within row 0 of segment 0 again, and the first byte of row 1.
        ("bytes=10-349530", 10..ROW + 1, row(1, 1)),
    ];
    for (header, bytes, expected) in cases {
        let before = rows(&fleet).await;
        let response = get_range(&fleet, &id, header).await;
        assert_eq!(response.status(), 206, "{header}");
        assert_eq!(
            response.headers()["content-range"],
            format!("bytes {}-{}/{len}", bytes.start, bytes.end - 1).as_str(),
            "{header}"
        );
        assert_eq!(
            response.headers()["content-length"],
            bytes.len().to_string().as_str()
        );
        let body = response.bytes().await.unwrap();
        assert!(body[..] == data[bytes.clone()], "{header}: other bytes");
        assert_eq!(rows(&fleet).await - before, expected, "{header}: rows read");
    }

    // No range, or one that cannot be used: the whole blob, 200.
    for header in [None, Some("bytes=5-1"), Some("bytes=0-1,4-5")] {
        let mut request = fleet.http.get(format!("{}/v1/blobs/{id}", fleet.gateway));
        if let Some(h) = header {
            request = request.header("Range", h);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200, "{header:?}");
        assert_eq!(response.headers()["accept-ranges"], "bytes");
        assert!(response.bytes().await.unwrap()[..] == data[..]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_segment_not_kept_is_decoded_whole_as_before() {
    let fleet = DevFleet::start(&[]);
    let data = pseudo_random(2 * MIB, 93);
    let id = fleet.put(&data).await;
    let before = rows(&fleet).await;
    assert!(fleet.get(&id).await == data);
    assert_eq!(
        rows(&fleet).await - before,
        Rows {
            cache: 0,
            shared: 0,
            alone: 0,
            segment: 6
        },
        "both segments read whole"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_ranges_of_one_segment_fetch_each_row_once() {
    let fleet = DevFleet::start(&[]);
    let data = pseudo_random(MIB, 94);
    let id = fleet.put(&data).await;
    let before = rows(&fleet).await;
    // Eight ranges of 128 KiB at once, as the aws cli reads an object.
    let reads = (0..8).map(|i| {
        let (fleet, id, data) = (&fleet, &id, &data);
        async move { read_back(fleet, id, data, i * MIB / 8..(i + 1) * MIB / 8).await }
    });
    futures::future::join_all(reads).await;
    let read = rows(&fleet).await - before;
    assert_eq!(
        read.alone + read.segment,
        3,
        "each of the segment's 3 rows fetched once: {read:?}"
    );
    // The ranges need 10 rows in all (two of them span two rows each): the
    // rest came from the reads fetching them or, once fetched, the cache.
    assert_eq!(
        read.alone + read.segment + read.shared + read.cache,
        10,
        "{read:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_whose_row_holder_lies_is_read_with_its_whole_segment_and_the_same_bytes() {
    // n = 7, f = 2: node 3 replays the valid answers of the next shard's
    // holder, node 5 flips bits.
    let fleet = DevFleet::start(&["--test-replaying-node", "3", "--test-corrupt-node", "5"]);
    let data = pseudo_random(6 * MIB, 95);
    let id = fleet.put(&data).await;
    // Each row of each segment on its own: those the liars hold fall back.
    let before = rows(&fleet).await;
    for segment in 0..6 {
        for row in 0..3 {
            let start = segment * MIB + row * ROW + 7;
            read_back(&fleet, &id, &data, start..start + 1000).await;
        }
    }
    let read = rows(&fleet).await - before;
    assert!(read.segment > 0 && read.alone > 0, "{read:?}");
    let metrics = fleet.metrics().await;
    let blamed = dev_fleet::blamed(&metrics);
    assert_eq!(
        blamed.keys().collect::<Vec<_>>(),
        ["node-3", "node-5"],
        "only the liars are blamed, both: {blamed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_whose_row_holder_is_stopped_is_read_with_its_whole_segment_after_the_hedge_delay()
{
    let fleet = DevFleet::start(&[]);
    let other = pseudo_random(6 * MIB, 96);
    let other_id = fleet.put(&other).await;
    let status = fleet.status().await;
    let pid = DevFleet::pid_of(&status, "node-0");
    // SIGSTOP: the node's connections stay open and nothing answers.
    fleet.stop(pid);
    let before = rows(&fleet).await;
    for segment in 0..6 {
        for row in 0..3 {
            let start = segment * MIB + row * ROW + 11;
            read_back(&fleet, &other_id, &other, start..start + 1000).await;
        }
    }
    fleet.resume(pid);
    let read = rows(&fleet).await - before;
    assert!(read.segment > 0 && read.alone > 0, "{read:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_outside_the_blob_answers_416_with_its_length() {
    let fleet = DevFleet::start(&[]);
    let data = pseudo_random(1000, 92);
    let id = fleet.put(&data).await;
    for header in ["bytes=1000-", "bytes=5000-6000", "bytes=-0"] {
        let response = get_range(&fleet, &id, header).await;
        assert_eq!(response.status(), 416, "{header}");
        assert_eq!(response.headers()["content-range"], "bytes */1000");
        let body: serde_json::Value = response.json().await.unwrap();
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("outside the blob's 1000 bytes"),
            "{body}"
        );
    }
    // An empty blob has no byte to range over.
    let empty = fleet.put(&[]).await;
    assert_eq!(get_range(&fleet, &empty, "bytes=0-").await.status(), 416);
    let whole = fleet
        .http
        .get(format!("{}/v1/blobs/{empty}", fleet.gateway))
        .send()
        .await
        .unwrap();
    assert_eq!(whole.status(), 200);
    assert!(whole.bytes().await.unwrap().is_empty());
}
