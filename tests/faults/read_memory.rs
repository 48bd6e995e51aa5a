//! G7 for reads: what the reads of a gateway hold in memory is bounded by
//! `--read-memory`, never by how many readers come or how slowly they
//! read. A reader that stops reading holds its share until it is cut off;
//! a read that finds the budget spent waits, then gets 503 with
//! Retry-After before anything is sent; readers under way share the
//! budget and all finish. Rows held by one reader are shared by the
//! others and counted once.

use crate::dev_fleet::{all_ready, pseudo_random, DevFleet};
use crate::limits::{gateway_metrics, gateway_process, wait_for_metric};
use crate::procs::Process;
use crate::within;

/// A whole segment of these fleets (1 MiB at n = 7) is three rows of a
/// little over a third of a MiB (1056 KiB reserved, in 4 KiB pages): a
/// budget of 2 MiB holds one segment at a time.
const ONE_SEGMENT: &str = "2MiB";

/// The gateway's counter of blob bytes sent to readers.
async fn bytes_sent(http: &reqwest::Client, url: &str) -> u64 {
    gateway_metrics(http, url)
        .await
        .lines()
        .find_map(|line| line.strip_prefix("redstuff_gateway_get_bytes_total "))
        .map_or(0, |value| value.trim().parse().unwrap())
}

/// Waits until the gateway has sent something and then nothing more for
/// two seconds: the reader's sockets are full.
async fn wait_until_sending_stops(http: &reqwest::Client, url: &str) {
    let start = std::time::Instant::now();
    let (mut last, mut unchanged) = (0, 0);
    while unchanged < 10 {
        assert!(
            start.elapsed() < crate::NO_HANG,
            "the gateway never stopped sending"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let now = bytes_sent(http, url).await;
        unchanged = if now == last && now > 0 {
            unchanged + 1
        } else {
            0
        };
        last = now;
    }
}

/// A fleet, and a gateway process in front of it started with `args`
/// (its spool directory, and the process, live as long as what is
/// returned).
async fn fleet_and_gateway(args: &[&str]) -> (DevFleet, tempfile::TempDir, Process, String) {
    let fleet = DevFleet::start(&[]);
    fleet.wait_for("nodes ready", all_ready).await;
    let spool = tempfile::tempdir().unwrap();
    let (gateway, url) = gateway_process(&fleet, spool.path(), args);
    (fleet, spool, gateway, url)
}

/// Puts a blob far larger than the sockets between the gateway and a
/// reader buffer (so a reader that stops reading stops the gateway's
/// sending): its bytes and URL.
async fn put_large_blob(http: &reqwest::Client, url: &str, seed: u64) -> (Vec<u8>, String) {
    let data = pseudo_random(40 << 20, seed);
    let stored = http
        .put(format!("{url}/v1/blobs"))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), 201);
    let id = stored.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    (data, format!("{url}/v1/blobs/{id}"))
}

/// A reader of `blob_url` that takes the headers and then reads nothing
/// more: once the sockets are full, its read holds the whole budget of
/// `ONE_SEGMENT` (and no more), the segment being sent and the next one
/// waiting for what is left.
async fn stall_a_reader(http: &reqwest::Client, url: &str, blob_url: &str) -> reqwest::Response {
    let stalled = within("a GET's headers", http.get(blob_url).send())
        .await
        .unwrap();
    assert_eq!(stalled.status(), 200);
    wait_until_sending_stops(http, url).await;
    wait_for_metric(
        http,
        url,
        "redstuff_gateway_read_memory_reserved_bytes 2097152",
    )
    .await;
    stalled
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_holds_at_most_the_read_budget_others_get_503_and_it_is_given_back_when_the_reader_is_cut_off(
) {
    let (fleet, _spool, _gateway, url) =
        fleet_and_gateway(&["--read-memory", ONE_SEGMENT, "--read-wait-secs", "3"]).await;
    let http = fleet.http.clone();
    wait_for_metric(
        &http,
        &url,
        "redstuff_gateway_read_memory_budget_bytes 2097152",
    )
    .await;
    let (data, blob_url) = put_large_blob(&http, &url, 500).await;
    let (_, other_url) = put_large_blob(&http, &url, 501).await;
    let stalled = stall_a_reader(&http, &url, &blob_url).await;

    // A read of rows nobody holds waits for the budget, then is told to
    // come back, before any of the blob is sent.
    let refused = within("a GET past the read budget", http.get(&other_url).send())
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    let message = refused.text().await.unwrap();
    assert!(message.contains("read memory"), "{message}");
    // A range read waits the same way: it too needs a row in memory.
    let ranged = within(
        "a range GET past the read budget",
        http.get(&other_url).header("range", "bytes=0-9").send(),
    )
    .await
    .unwrap();
    assert_eq!(ranged.status(), 503);

    // Cut off, the stalled reader gives back all it held.
    drop(stalled);
    wait_for_metric(&http, &url, "redstuff_gateway_read_memory_reserved_bytes 0").await;

    // Readers under way share the budget one segment at a time, and every
    // one of them gets the whole blob.
    let reads = (0..3).map(|_| {
        let request = http.get(&blob_url).send();
        async move {
            let response = request.await.unwrap();
            assert_eq!(response.status(), 200);
            response.bytes().await.unwrap()
        }
    });
    let bodies = within(
        "three reads sharing the budget",
        futures_util::future::join_all(reads),
    )
    .await;
    for body in bodies {
        assert!(body == data[..], "a read sharing the budget got the blob");
    }
    wait_for_metric(&http, &url, "redstuff_gateway_read_memory_reserved_bytes 0").await;
    // Nothing was left waiting: a read goes through at once.
    let again = within("a GET after the others", http.get(&blob_url).send())
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    assert!(again.bytes().await.unwrap() == data[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_of_rows_another_reader_holds_shares_them_and_is_served_while_the_budget_is_spent() {
    let (fleet, _spool, _gateway, url) =
        fleet_and_gateway(&["--read-memory", ONE_SEGMENT, "--read-wait-secs", "3"]).await;
    let http = fleet.http.clone();
    let (data, blob_url) = put_large_blob(&http, &url, 700).await;
    let (_, other_url) = put_large_blob(&http, &url, 701).await;
    let stalled = stall_a_reader(&http, &url, &blob_url).await;

    // The last bytes handed out are still on their way to the stalled
    // reader (the gateway writes in order), so their row is held: a read
    // of them shares it, reserving nothing, and is served at once.
    let sent = bytes_sent(&http, &url).await as usize;
    let ranged = within(
        "a range GET of rows another reader holds",
        http.get(&blob_url)
            .header("range", format!("bytes={}-{}", sent - 1000, sent - 1))
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(ranged.status(), 206);
    assert!(ranged.bytes().await.unwrap() == data[sent - 1000..sent]);

    // The budget is still spent: a read of rows nobody holds is refused.
    let refused = within("a GET of another blob", http.get(&other_url).send())
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    drop(stalled);
    wait_for_metric(&http, &url, "redstuff_gateway_read_memory_reserved_bytes 0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_cuts_off_a_reader_that_takes_nothing_for_the_stall_time_and_its_share_comes_back(
) {
    let (fleet, _spool, _gateway, url) = fleet_and_gateway(&[
        "--read-memory",
        ONE_SEGMENT,
        "--read-wait-secs",
        "20",
        "--client-stall-secs",
        "3",
    ])
    .await;
    let http = fleet.http.clone();
    let (data, blob_url) = put_large_blob(&http, &url, 600).await;
    // The reader keeps its connection open and reads nothing.
    let stalled = within("a GET's headers", http.get(&blob_url).send())
        .await
        .unwrap();
    assert_eq!(stalled.status(), 200);
    // The gateway ends the connection once its writes stall, and gives
    // back the reader's share though the reader never hung up.
    wait_until_sending_stops(&http, &url).await;
    wait_for_metric(&http, &url, "redstuff_gateway_read_memory_reserved_bytes 0").await;
    // A reader that reads gets the whole blob meanwhile (it waited for
    // the share the stalled one held, within --read-wait-secs).
    let read = within("a GET beside the stalled one", async {
        let response = http.get(&blob_url).send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.bytes().await.unwrap()
    })
    .await;
    assert!(read == data[..], "the reading client got the blob");
    // The stalled reader's body ends short: its connection was cut.
    let cut = within("the stalled reader's body", stalled.bytes()).await;
    assert!(
        cut.is_err(),
        "a body cut off midway is an error, not the blob"
    );
}
