//! Resumable uploads (`/v1/uploads`): an append whose connection breaks
//! keeps what arrived (an offset answered is never taken back), and the
//! client sends only the rest; an append at
//! the wrong offset, past the declared length or after the finish is
//! refused and changes nothing; nothing is visible before the finish, and
//! a finish asked again answers the same; an upload left idle is given up
//! and leaves nothing on the nodes. `redstuff put` resumes a file upload
//! cut off midway (through a proxy that cuts the connection) and sends
//! the file's bytes about once. A body that brings nothing for the stall
//! time ends its PUT or append and frees its slot.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::dev_fleet::{all_ready, pseudo_random, session_holders, DevFleet, WAIT};
use crate::limits::wait_for_metric;
use crate::writes::wait_for_session_pairs;
use crate::{blob_id, within};

/// Opens an upload (declaring `len` when given): its id.
async fn open(fleet: &DevFleet, len: Option<usize>) -> String {
    let mut request = fleet.http.post(format!("{}/v1/uploads", fleet.gateway));
    if let Some(len) = len {
        request = request.header("upload-length", len);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 201);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let opened: serde_json::Value = response.json().await.unwrap();
    assert_eq!(opened["offset"], 0);
    let id = opened["upload"].as_str().unwrap().to_string();
    assert_eq!(location, format!("/v1/uploads/{id}"));
    id
}

/// `PATCH` of `bytes` at `offset`: the status, the `Upload-Offset` the
/// gateway answers with, and the error text.
async fn append(
    fleet: &DevFleet,
    id: &str,
    offset: usize,
    bytes: &[u8],
) -> (u16, Option<u64>, String) {
    let response = fleet
        .http
        .patch(format!("{}/v1/uploads/{id}", fleet.gateway))
        .header("upload-offset", offset)
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let offset = response
        .headers()
        .get("upload-offset")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    (status, offset, response.text().await.unwrap())
}

/// The upload's offset as `GET /v1/uploads/{id}` tells it, or the status
/// when it is not 200.
async fn offset_of(fleet: &DevFleet, id: &str) -> Result<u64, u16> {
    let response = fleet
        .http
        .get(format!("{}/v1/uploads/{id}", fleet.gateway))
        .send()
        .await
        .unwrap();
    if response.status() != 200 {
        return Err(response.status().as_u16());
    }
    let progress: serde_json::Value = response.json().await.unwrap();
    Ok(progress["offset"].as_u64().unwrap())
}

/// `DELETE /v1/uploads/{id}`: the status.
async fn delete_upload(fleet: &DevFleet, id: &str) -> u16 {
    let response = fleet
        .http
        .delete(format!("{}/v1/uploads/{id}", fleet.gateway))
        .send()
        .await
        .unwrap();
    response.status().as_u16()
}

/// `POST /v1/uploads/{id}/finish`: the status and the JSON answer.
async fn finish(fleet: &DevFleet, id: &str) -> (u16, serde_json::Value) {
    let response = fleet
        .http
        .post(format!("{}/v1/uploads/{id}/finish", fleet.gateway))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// A gateway metric's value (0 when it is not shown yet).
async fn metric(fleet: &DevFleet, name: &str) -> u64 {
    let metrics = fleet.metrics().await;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

/// Starts a raw `method path` with `headers` and the user token, declaring
/// `content_length` bytes, and sends the first `sent` of `body`.
fn raw_request(
    fleet: &DevFleet,
    request_line: &str,
    headers: &str,
    content_length: usize,
    sent: &[u8],
) -> std::net::TcpStream {
    let token = std::fs::read_to_string(fleet.data_dir().join("token")).unwrap();
    let address = fleet.gateway.trim_start_matches("http://").to_string();
    let mut socket = std::net::TcpStream::connect(&address).unwrap();
    write!(
        socket,
        "{request_line} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\n{headers}Content-Length: {content_length}\r\n\r\n",
        token.trim()
    )
    .unwrap();
    socket.write_all(sent).unwrap();
    socket
}

/// An append of `data` to upload `id` from its start, whose connection is
/// lost once two whole 1 MiB segments and part of a third arrived: the
/// offset the gateway then gives.
async fn cut_append(fleet: &DevFleet, id: &str, data: &[u8]) -> usize {
    let socket = raw_request(
        fleet,
        &format!("PATCH /v1/uploads/{id}"),
        "Upload-Offset: 0\r\n",
        data.len(),
        &data[..2_500_000],
    );
    wait_for_session_pairs(fleet, 2 * 7).await;
    drop(socket);
    within("the offset", offset_of(fleet, id)).await.unwrap() as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_cut_off_mid_body_keeps_what_arrived_and_the_rest_makes_the_same_blob() {
    let fleet = DevFleet::start(&[]);
    fleet.wait_for("nodes ready", all_ready).await;
    let data = pseudo_random(4_000_000, 41);
    let id = open(&fleet, Some(data.len())).await;
    // The gateway kept the segments that arrived whole (the one still
    // arriving gives its memory back), and says how much.
    let kept = cut_append(&fleet, &id, &data).await;
    assert_eq!(kept, 2 << 20, "kept of the 2500000 bytes sent");
    assert_eq!(fleet.code("HEAD", &blob_id(&data)).await, 404, "invisible");

    // The client sends the rest from there, and finishes.
    let (status, offset, text) = append(&fleet, &id, kept, &data[kept..]).await;
    assert_eq!((status, offset), (200, Some(data.len() as u64)), "{text}");
    let (status, stored) = finish(&fleet, &id).await;
    assert_eq!(status, 201, "{stored}");
    assert_eq!(stored["id"], blob_id(&data));
    assert_eq!(stored["size"], data.len());
    assert!(fleet.get(&blob_id(&data)).await == data, "reads back whole");
    assert_eq!(
        metric(&fleet, "redstuff_gateway_uploads_resumed_total").await,
        1
    );

    // Without a declared length, a finish after the cut stores the whole
    // segments kept, and nothing more.
    let id = open(&fleet, None).await;
    assert_eq!(cut_append(&fleet, &id, &data).await, 2 << 20);
    let (status, stored) = finish(&fleet, &id).await;
    assert_eq!(status, 201, "{stored}");
    assert_eq!(stored["id"], blob_id(&data[..2 << 20]));
    assert!(fleet.get(&blob_id(&data[..2 << 20])).await == data[..2 << 20]);

    // An offset answered is never taken back: an append cut off within
    // the segment arriving keeps what the appends before it brought.
    let id = open(&fleet, Some(data.len())).await;
    let (status, offset, _) = append(&fleet, &id, 0, &data[..500_000]).await;
    assert_eq!((status, offset), (200, Some(500_000)));
    let mut socket = raw_request(
        &fleet,
        &format!("PATCH /v1/uploads/{id}"),
        "Upload-Offset: 500000\r\n",
        1_000_000,
        &data[500_000..800_000],
    );
    // The body ends early; the gateway's answer says what it kept.
    let answer = tokio::task::spawn_blocking(move || {
        socket.shutdown(std::net::Shutdown::Write).unwrap();
        socket.set_read_timeout(Some(WAIT)).unwrap();
        let mut answer = String::new();
        let _ = socket.read_to_string(&mut answer);
        answer.to_lowercase()
    })
    .await
    .unwrap();
    assert!(answer.starts_with("http/1.1 400"), "{answer}");
    assert!(answer.contains("upload-offset: 500000\r\n"), "{answer}");
    assert_eq!(offset_of(&fleet, &id).await, Ok(500_000));
    let (status, offset, text) = append(&fleet, &id, 500_000, &data[500_000..]).await;
    assert_eq!((status, offset), (200, Some(data.len() as u64)), "{text}");
    let (status, stored) = finish(&fleet, &id).await;
    assert_eq!(
        (status, &stored["id"]),
        (201, &blob_id(&data).into()),
        "{stored}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_at_another_offset_past_the_declared_length_or_after_the_finish_are_refused_and_change_nothing(
) {
    let fleet = DevFleet::start(&[]);
    fleet.wait_for("nodes ready", all_ready).await;
    let data = pseudo_random(3_000_000, 42);
    let id = open(&fleet, Some(data.len())).await;

    // An append must name its offset, and it must be the upload's.
    let response = fleet
        .http
        .patch(format!("{}/v1/uploads/{id}", fleet.gateway))
        .body(vec![1u8; 10])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert!(response.text().await.unwrap().contains("upload-offset"));
    let (status, offset, text) = append(&fleet, &id, 5, &data[5..100]).await;
    assert_eq!((status, offset), (409, Some(0)), "{text}");
    assert_eq!(offset_of(&fleet, &id).await, Ok(0));

    let (status, offset, _) = append(&fleet, &id, 0, &data[..1_000_000]).await;
    assert_eq!((status, offset), (200, Some(1_000_000)));
    // The same append again (a client unsure it arrived) is refused.
    let (status, offset, _) = append(&fleet, &id, 0, &data[..1_000_000]).await;
    assert_eq!((status, offset), (409, Some(1_000_000)));
    // Past the declared length: refused before it is read.
    let (status, _, text) = append(&fleet, &id, 1_000_000, &pseudo_random(2_500_000, 43)).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("3000000 bytes it declared"), "{text}");
    assert_eq!(offset_of(&fleet, &id).await, Ok(1_000_000));
    // A finish before every declared byte arrived: refused, the upload
    // goes on.
    let (status, answer) = finish(&fleet, &id).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer["error"]
        .as_str()
        .unwrap()
        .contains("1000000 of the 3000000"));

    let (status, offset, _) = append(&fleet, &id, 1_000_000, &data[1_000_000..]).await;
    assert_eq!((status, offset), (200, Some(3_000_000)));
    assert_eq!(
        fleet.code("HEAD", &blob_id(&data)).await,
        404,
        "invisible before the finish"
    );
    let (status, stored) = finish(&fleet, &id).await;
    assert_eq!(status, 201, "{stored}");
    assert_eq!(stored["id"], blob_id(&data));
    // A client that missed the answer asks again and gets the same one.
    assert_eq!(finish(&fleet, &id).await, (201, stored.clone()));
    let (status, _, text) = append(&fleet, &id, 3_000_000, b"more").await;
    assert_eq!(status, 409, "{text}");
    assert!(text.contains("finished already"), "{text}");
    assert_eq!(offset_of(&fleet, &id).await, Ok(3_000_000));
    assert_eq!(
        delete_upload(&fleet, &id).await,
        409,
        "a finished upload is not deleted"
    );
    assert!(fleet.get(&blob_id(&data)).await == data);

    // Ids that are not an upload's.
    let response = fleet
        .http
        .get(format!("{}/v1/uploads/not-an-id", fleet.gateway))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(offset_of(&fleet, &"0".repeat(32)).await, Err(404));

    // An upload deleted before its finish is gone, and nothing of it is
    // visible.
    let other = pseudo_random(2_500_000, 44);
    let id = open(&fleet, None).await;
    let (status, _, _) = append(&fleet, &id, 0, &other).await;
    assert_eq!(status, 200);
    assert_eq!(delete_upload(&fleet, &id).await, 204);
    assert_eq!(offset_of(&fleet, &id).await, Err(404));
    assert_eq!(finish(&fleet, &id).await.0, 404);
    assert_eq!(fleet.code("HEAD", &blob_id(&other)).await, 404);
    let start = Instant::now();
    while !session_holders(&fleet).is_empty() {
        assert!(start.elapsed() < WAIT, "the deleted upload's session stays");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_that_takes_no_more_bytes_is_given_up_though_asked_about_and_leaves_nothing_visible_or_on_the_nodes(
) {
    let fleet = DevFleet::start(&["--cut-upload-kept-secs", "1"]);
    fleet.wait_for("nodes ready", all_ready).await;
    let data = pseudo_random(2_500_000, 45);
    let id = open(&fleet, None).await;
    let (status, offset, _) = append(&fleet, &id, 0, &data).await;
    assert_eq!((status, offset), (200, Some(data.len() as u64)));
    // Two segments shipped (the third waits as the upload's last).
    wait_for_session_pairs(&fleet, 2 * 7).await;
    // Its client only asks how far it got, again and again, and sends
    // nothing more: the gateway gives it up all the same (a poll must not
    // keep its memory and session for ever), and its session goes from
    // the nodes once the pairs' retry window passed too.
    let start = Instant::now();
    while metric(&fleet, "redstuff_gateway_uploads_expired_total").await == 0
        || !session_holders(&fleet).is_empty()
    {
        let _ = offset_of(&fleet, &id).await;
        assert!(
            start.elapsed() < WAIT,
            "the idle upload stays (sessions on {:?})",
            session_holders(&fleet)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(offset_of(&fleet, &id).await, Err(404));
    assert_eq!(
        metric(&fleet, "redstuff_gateway_uploads_expired_total").await,
        1
    );
    assert_eq!(
        metric(&fleet, "redstuff_gateway_uploads_resumable").await,
        0
    );
    let status = fleet.status().await;
    assert!(status["blobs"].as_array().unwrap().is_empty(), "{status:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redstuff_put_resumes_a_file_upload_cut_off_midway_and_sends_its_bytes_about_once() {
    let data = pseudo_random(6_500_000, 46);
    let cut = CutPut::start(&data).await;
    let output = within("redstuff put", cut.put().output()).await.unwrap();
    let (fleet, proxy) = (&cut.fleet, &cut.proxy);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        blob_id(&data)
    );
    assert!(proxy.cut.load(Ordering::SeqCst), "the proxy cut the upload");
    assert!(stderr.contains("trying again"), "{stderr}");
    // The second attempt sent what the gateway lacked, not the whole file
    // again (which would have made 9.5 MB).
    let sent = proxy.sent.load(Ordering::SeqCst);
    assert!(
        sent < data.len() as u64 * 6 / 5,
        "{sent} bytes sent for a file of {}",
        data.len()
    );
    assert_eq!(
        metric(fleet, "redstuff_gateway_uploads_resumed_total").await,
        1
    );
    assert!(fleet.get(&blob_id(&data)).await == data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_brings_nothing_for_the_stall_time_ends_its_put_or_append_and_frees_its_slot() {
    let fleet = DevFleet::start(&["--client-stall-secs", "2", "--max-uploads", "1"]);
    fleet.wait_for("nodes ready", all_ready).await;
    let data = pseudo_random(1_500_000, 47);
    // A PUT that sends a little and then nothing, its connection open.
    let socket = raw_request(&fleet, "PUT /v1/blobs", "", data.len(), &data[..100_000]);
    let answer = ended_for_stalling(&fleet, socket).await;
    assert!(answer.contains("brought nothing for 2 s"), "{answer}");

    // An append that does the same keeps the segment that arrived whole;
    // the upload goes on from there.
    let id = open(&fleet, Some(data.len())).await;
    let socket = raw_request(
        &fleet,
        &format!("PATCH /v1/uploads/{id}"),
        "Upload-Offset: 0\r\n",
        data.len(),
        &data[..1_100_000],
    );
    let answer = ended_for_stalling(&fleet, socket).await;
    assert!(answer.contains("upload-offset: 1048576"), "{answer}");
    assert_eq!(offset_of(&fleet, &id).await, Ok(1 << 20));
    let (status, _, text) = append(&fleet, &id, 1 << 20, &data[1 << 20..]).await;
    assert_eq!(status, 200, "{text}");
    let (status, stored) = finish(&fleet, &id).await;
    assert_eq!(status, 201, "{stored}");
    assert!(fleet.get(&blob_id(&data)).await == data);
    // The only slot is free: a PUT goes through.
    assert_eq!(
        fleet.put(&pseudo_random(10_000, 48)).await,
        blob_id(&pseudo_random(10_000, 48))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_uploads_are_bounded_per_slot_and_ended_ones_do_not_count() {
    // One slot: 16 uploads may be open.
    let fleet = DevFleet::start(&["--max-uploads", "1"]);
    fleet.wait_for("nodes ready", all_ready).await;
    let mut open_ids = Vec::new();
    for _ in 0..16 {
        open_ids.push(open(&fleet, None).await);
    }
    let refused = fleet
        .http
        .post(format!("{}/v1/uploads", fleet.gateway))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(
        metric(&fleet, "redstuff_gateway_uploads_resumable").await,
        16
    );
    // Finished and deleted uploads leave room, though a finished one's
    // answer is still given.
    let data = pseudo_random(10_000, 49);
    let finished = open_ids.pop().unwrap();
    assert_eq!(append(&fleet, &finished, 0, &data).await.0, 200);
    assert_eq!(finish(&fleet, &finished).await.0, 201);
    let deleted = open_ids.pop().unwrap();
    assert_eq!(delete_upload(&fleet, &deleted).await, 204);
    open(&fleet, None).await;
    open(&fleet, None).await;
    assert_eq!(finish(&fleet, &finished).await.1["id"], blob_id(&data));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redstuff_put_sends_a_file_whole_to_a_gateway_without_resumable_uploads() {
    let data = pseudo_random(3_000_000, 50);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("old-gateway.bin");
    std::fs::write(&file, &data).unwrap();
    let (url, requests) = older_gateway().await;
    let output = within(
        "redstuff put",
        tokio::process::Command::new(env!("CARGO_BIN_EXE_redstuff"))
            .arg("put")
            .arg(&file)
            .args(["--gateway", &url, "--token", "t"])
            .env("REDSTUFF_LOG", "warn")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "stored-3000000"
    );
    assert_eq!(
        *requests.lock().unwrap(),
        ["POST /v1/uploads", "PUT /v1/blobs"],
        "asked for an upload once, then sent the file in one PUT"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redstuff_put_does_not_resume_a_file_that_changed_since_its_upload_began() {
    let data = pseudo_random(6_500_000, 51);
    let cut = CutPut::start(&data).await;
    let (fleet, proxy, file) = (&cut.fleet, &cut.proxy, &cut.file);
    let put = tokio::spawn(cut.put().output());
    // Once the first attempt is cut off, the file is rewritten before the
    // next attempt (which waits at least half a second).
    proxy.wait_for_cut().await;
    let changed = pseudo_random(6_400_000, 52);
    std::fs::write(file, &changed).unwrap();
    let output = within("redstuff put", put).await.unwrap().unwrap();
    refused_as_changed(&output, fleet, [&data, &changed]).await;
}

/// Asserts `output` is of a put refused because its file changed, and
/// that none of `versions` of the file was stored.
async fn refused_as_changed(output: &std::process::Output, fleet: &DevFleet, versions: [&[u8]; 2]) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("changed while it was being uploaded"),
        "{stderr}"
    );
    for version in versions {
        assert_eq!(fleet.code("HEAD", &blob_id(version)).await, 404);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redstuff_put_of_a_file_rewritten_while_its_bytes_are_sent_stores_nothing_and_deletes_its_upload(
) {
    let data = pseudo_random(6_500_000, 53);
    let cut = CutPut::holding(&data, 2_000_000).await;
    let (fleet, proxy) = (&cut.fleet, &cut.proxy);
    let put = tokio::spawn(cut.put().output());
    // 2 MB of the file went; the rest waits while the file is rewritten
    // in place (the same length), then goes.
    proxy.wait_for_cut().await;
    let changed = pseudo_random(6_500_000, 54);
    std::fs::write(&cut.file, &changed).unwrap();
    proxy.release();
    let output = within("redstuff put", put).await.unwrap().unwrap();
    refused_as_changed(&output, fleet, [&data, &changed]).await;
    // The upload is deleted, not left open against the gateway's limit.
    assert_eq!(metric(fleet, "redstuff_gateway_uploads_resumable").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redstuff_put_streams_a_pipe_it_is_named_and_refuses_a_directory() {
    let fleet = DevFleet::start(&[]);
    fleet.wait_for("nodes ready", all_ready).await;
    let token = std::fs::read_to_string(fleet.data_dir().join("token")).unwrap();
    let put = |path: &str| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_redstuff"));
        command
            .args(["put", path, "--json", "--gateway", &fleet.gateway])
            .env("REDSTUFF_TOKEN", token.trim())
            .env("REDSTUFF_LOG", "warn")
            .kill_on_drop(true);
        command
    };
    // /dev/stdin of a pipe: its length reads 0, its bytes are all there.
    let data = pseudo_random(1_500_000, 55);
    let mut piped = put("/dev/stdin")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = piped.stdin.take().unwrap();
    stdin.write_all(&data).await.unwrap();
    drop(stdin);
    let output = within("redstuff put /dev/stdin", piped.wait_with_output())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let stored: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(stored["size"], data.len() as u64, "{stored}");
    assert!(fleet.get(stored["id"].as_str().unwrap()).await == data);

    let dir = tempfile::tempdir().unwrap();
    let output = within(
        "redstuff put DIR",
        put(dir.path().to_str().unwrap()).output(),
    )
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("is a directory"), "{stderr}");
    assert_eq!(
        metric(&fleet, "redstuff_gateway_uploads_resumable").await,
        0
    );
}

/// A fleet, a file of `data` and a proxy in front of the gateway that
/// cuts the first connection to carry more than 3 MB of a client's bytes.
struct CutPut {
    fleet: DevFleet,
    proxy: CuttingProxy,
    file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl CutPut {
    async fn start(data: &[u8]) -> Self {
        Self::start_with(data, 3_000_000, false).await
    }

    /// With a proxy that holds the first connection past `hold_after`
    /// bytes until released.
    async fn holding(data: &[u8], hold_after: u64) -> Self {
        Self::start_with(data, hold_after, true).await
    }

    async fn start_with(data: &[u8], after: u64, hold: bool) -> Self {
        let fleet = DevFleet::start(&[]);
        fleet.wait_for("nodes ready", all_ready).await;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("weights.bin");
        std::fs::write(&file, data).unwrap();
        let proxy = CuttingProxy::start_with(&fleet.gateway, after, hold).await;
        Self {
            fleet,
            proxy,
            file,
            _dir: dir,
        }
    }

    /// `redstuff put FILE` through the proxy, with the user token.
    fn put(&self) -> tokio::process::Command {
        let token = std::fs::read_to_string(self.fleet.data_dir().join("token")).unwrap();
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_redstuff"));
        command
            .arg("put")
            .arg(&self.file)
            .args(["--gateway", &self.proxy.url])
            .env("REDSTUFF_TOKEN", token.trim())
            .env("REDSTUFF_LOG", "warn")
            .kill_on_drop(true);
        command
    }
}

/// A gateway of an earlier version, without `/v1/uploads`: 404 for the
/// route, 201 for a PUT of a blob (its id names the bytes received). Its
/// URL, and the requests it got.
async fn older_gateway() -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = requests.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut socket = tokio::io::BufReader::new(socket);
                loop {
                    let mut head = Vec::new();
                    while !head.ends_with(b"\r\n\r\n") {
                        let mut byte = [0u8; 1];
                        if socket.read_exact(&mut byte).await.is_err() {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                    let line: Vec<&str> = head.lines().next().unwrap().split(' ').collect();
                    let request = format!("{} {}", line[0].to_uppercase(), line[1]);
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    let mut body = vec![0u8; len];
                    socket.read_exact(&mut body).await.unwrap();
                    let (status, answer) = if request == "PUT /v1/blobs" {
                        (
                            "201 Created",
                            format!(
                                r#"{{"id":"stored-{len}","size":{len},"shards_acknowledged":7,"shards_missing":[],"shards_committed":5}}"#
                            ),
                        )
                    } else {
                        (
                            "404 Not Found",
                            r#"{"error":"no such route; the API lives under /v1"}"#.to_string(),
                        )
                    };
                    seen.lock().unwrap().push(request);
                    let reply = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
                        answer.len()
                    );
                    if socket.get_mut().write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, requests)
}

/// The answer to a request whose body stalled on `socket`: a 400, once
/// its upload slot is free again.
async fn ended_for_stalling(fleet: &DevFleet, mut socket: std::net::TcpStream) -> String {
    let answer = read_answer(&mut socket);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    wait_for_metric(
        &fleet.http,
        &fleet.gateway,
        "redstuff_gateway_uploads_in_flight 0",
    )
    .await;
    answer
}

/// The gateway's answer on `socket`, lower-case headers kept as sent,
/// read until the gateway closes or a bounded wait ends.
fn read_answer(socket: &mut std::net::TcpStream) -> String {
    socket.set_read_timeout(Some(WAIT)).unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    while let Ok(read) = socket.read(&mut buffer) {
        if read == 0 {
            break;
        }
        answer.extend_from_slice(&buffer[..read]);
        let text = String::from_utf8_lossy(&answer);
        if text.contains("\r\n\r\n") && text.trim_end().ends_with('}') {
            break;
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// A TCP proxy in front of a gateway that cuts, once, the first
/// connection whose client sent more than `cut_after` bytes (or, holding,
/// stops forwarding its bytes until `release`); it counts every byte
/// clients sent through it.
struct CuttingProxy {
    url: String,
    /// The connection was cut (or is held).
    cut: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    released: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl CuttingProxy {
    /// A proxy that cuts (or, with `hold`, holds until `release`) the
    /// first connection past `after` bytes.
    async fn start_with(gateway: &str, after: u64, hold: bool) -> Self {
        let upstream = gateway.trim_start_matches("http://").to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (cut, sent, released) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let task = {
            let (cut, sent, released) = (cut.clone(), sent.clone(), released.clone());
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let server = tokio::net::TcpStream::connect(&upstream).await.unwrap();
                    let (cut, sent) = (cut.clone(), sent.clone());
                    let released = hold.then(|| released.clone());
                    tokio::spawn(forward(client, server, after, cut, sent, released));
                }
            })
        };
        Self {
            url,
            cut,
            sent,
            released,
            task,
        }
    }

    /// A held connection goes on.
    fn release(&self) {
        self.released.store(true, Ordering::SeqCst);
    }

    /// Waits until a connection was cut (or is held).
    async fn wait_for_cut(&self) {
        let start = Instant::now();
        while !self.cut.load(Ordering::SeqCst) {
            assert!(start.elapsed() < WAIT, "the proxy never cut the upload");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Forwards one connection both ways until either side closes, or until
/// its client sent more than `after` bytes while no connection was cut
/// yet: then it is cut, or, given `released`, held until that is set.
async fn forward(
    client: tokio::net::TcpStream,
    server: tokio::net::TcpStream,
    after: u64,
    cut: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    released: Option<Arc<AtomicBool>>,
) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let back = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
    });
    let mut buffer = vec![0u8; 64 << 10];
    let mut forwarded = 0u64;
    while let Ok(read) = client_read.read(&mut buffer).await {
        if read == 0 {
            break;
        }
        if forwarded + read as u64 > after && !cut.swap(true, Ordering::SeqCst) {
            let Some(released) = &released else { break };
            while !released.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        if server_write.write_all(&buffer[..read]).await.is_err() {
            break;
        }
        forwarded += read as u64;
        sent.fetch_add(read as u64, Ordering::SeqCst);
    }
    // Both directions end: the client sees its connection lost.
    back.abort();
}
