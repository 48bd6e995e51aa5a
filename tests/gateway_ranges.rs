//! Byte ranges on the native API: `GET /v1/blobs/{id}` with `Range`
//! answers 206 with exactly those bytes and reads only the segments the
//! range touches (each decoded once, then kept for later ranges); a range
//! outside the blob answers 416.

mod dev_fleet;

use dev_fleet::{pseudo_random, DevFleet};

const MIB: usize = 1 << 20;

/// Segments the gateway decoded so far (its decode histogram's count).
async fn decodes(fleet: &DevFleet) -> u64 {
    let metrics = fleet.metrics().await;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("redstuff_decode_duration_seconds_count "))
        .map_or(0, |v| v.trim().parse().unwrap())
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ranged_get_returns_exactly_those_bytes_and_decodes_only_the_segments_it_touches_once() {
    let fleet = DevFleet::start(&[]);
    let data = pseudo_random(3 * MIB + MIB / 2, 91); // four 1 MiB segments
    let id = fleet.put(&data).await;
    let len = data.len();

    // Segments decoded per range: those it touches that no earlier range
    // decoded (the gateway keeps decoded segments for later ranges).
    let cases: [(&str, std::ops::Range<usize>, u64); 6] = [
        ("bytes=2000000-2000099", 2_000_000..2_000_100, 1),
        // Across the boundary of the first two segments: only 0 is new.
        ("bytes=1048570-1048580", MIB - 6..MIB + 5, 1),
        ("bytes=-10", len - 10..len, 1),
        ("bytes=3145728-", 3 * MIB..len, 0),
        ("bytes=0-0", 0..1, 0),
        ("bytes=2097152-2097160", 2 * MIB..2 * MIB + 9, 1),
    ];
    for (header, bytes, segments) in cases {
        let before = decodes(&fleet).await;
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
        assert_eq!(
            decodes(&fleet).await - before,
            segments,
            "{header}: segments read"
        );
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
