//! `redstuff put` meets a gateway too busy to take its upload: it says so,
//! waits as told, tries again and stores the blob once a slot frees;
//! told not to retry, it fails at once with the gateway's reason (which
//! reaches it though the body was still being sent). From standard input
//! it streams, and is never sent twice. `redstuff status` waits for a
//! busy or absent gateway the same way, and never retries a refusal. An
//! answer that stops arriving ends put after the stall time, not never.

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::dev_fleet::{all_ready, holders_of, pseudo_random, DevFleet};
use crate::limits::{gateway_process, held_uploads, wait_for_metric};
use crate::procs::Process;
use crate::{blob_id, within};

/// A fleet and a gateway process of its own that runs one upload at a
/// time and lets none wait.
struct OneSlotGateway {
    fleet: DevFleet,
    _gateway: Process,
    _spool: tempfile::TempDir,
    url: String,
    token: String,
}

/// What holds the gateway's only slot until `release`.
struct HeldSlot {
    release: tokio::sync::watch::Sender<bool>,
    uploads: Vec<tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>>,
}

impl OneSlotGateway {
    async fn start() -> Self {
        let fleet = DevFleet::start(&[]);
        fleet.wait_for("nodes ready", all_ready).await;
        let spool = tempfile::tempdir().unwrap();
        let (gateway, url) = gateway_process(
            &fleet,
            spool.path(),
            &["--max-uploads", "1", "--upload-wait-secs", "0"],
        );
        let token = std::fs::read_to_string(fleet.data_dir().join("token")).unwrap();
        Self {
            fleet,
            _gateway: gateway,
            _spool: spool,
            url,
            token: token.trim().to_string(),
        }
    }

    /// `redstuff put ARGS... --gateway URL` with the user token.
    fn put(&self, args: &[&str], stdin: Stdio) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_redstuff"));
        command
            .arg("put")
            .args(args)
            .args(["--gateway", &self.url])
            .env("REDSTUFF_TOKEN", &self.token)
            .env("REDSTUFF_LOG", "warn")
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }

    /// An upload that sends a little and then waits takes the only slot.
    async fn hold_the_slot(&self) -> HeldSlot {
        let (release, held) = tokio::sync::watch::channel(false);
        let uploads = held_uploads(&self.fleet.http, &self.url, 1, &held);
        wait_for_metric(
            &self.fleet.http,
            &self.url,
            "redstuff_gateway_uploads_in_flight 1",
        )
        .await;
        HeldSlot { release, uploads }
    }

    /// The blob `id` read back through the gateway.
    async fn read(&self, id: &str) -> Vec<u8> {
        let response = self
            .fleet
            .http
            .get(format!("{}/v1/blobs/{id}", self.url))
            .send()
            .await
            .unwrap();
        response.bytes().await.unwrap().to_vec()
    }
}

impl HeldSlot {
    /// Lets the held upload finish; it is stored.
    async fn release(self) {
        self.release.send(true).unwrap();
        for upload in self.uploads {
            let response = within("the held upload", upload).await.unwrap().unwrap();
            assert_eq!(response.status(), 201);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_refused_by_a_busy_gateway_is_tried_again_and_stored_once_a_slot_frees() {
    let gateway = OneSlotGateway::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("blob");
    // Larger than the socket buffers: the refusal goes out while the body
    // is still being sent, and the gateway reads the rest after it, so the
    // CLI reads the answer, not a reset connection.
    let data = pseudo_random(24 << 20, 41);
    std::fs::write(&file, &data).unwrap();
    let file = file.to_str().unwrap();
    let slot = gateway.hold_the_slot().await;

    // Told not to retry: the gateway's reason, at once, nothing stored.
    let once = gateway
        .put(&[file, "--retries", "0"], Stdio::null())
        .output();
    let once = within("a put without retries", once).await.unwrap();
    let stderr = String::from_utf8_lossy(&once.stderr);
    assert!(!once.status.success(), "{once:?}");
    assert!(
        stderr.contains("503") && stderr.contains("limit of 1 uploads"),
        "{stderr}"
    );
    assert!(!stderr.contains("trying again"), "{stderr}");
    assert!(holders_of(&gateway.fleet, &blob_id(&data)).is_empty());

    // With retries: it says it waits, and is stored once the slot frees.
    let mut put = gateway
        .put(&[file, "--retries", "10"], Stdio::null())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(put.stderr.take().unwrap()).lines();
    let retry_line = within("the CLI saying it tries again", async {
        loop {
            let line = stderr
                .next_line()
                .await
                .unwrap()
                .expect("a line before the end");
            if line.contains("trying again") {
                return line;
            }
        }
    })
    .await;
    assert!(
        retry_line.contains("limit of 1 uploads") && retry_line.contains("attempt 2 of 11"),
        "{retry_line}"
    );
    slot.release().await;
    let done = within("the retried put", put.wait_with_output())
        .await
        .unwrap();
    assert!(done.status.success(), "{done:?}");
    let id = String::from_utf8(done.stdout).unwrap().trim().to_string();
    assert_eq!(id, blob_id(&data));
    assert!(gateway.read(&id).await == data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_interrupted_while_it_waits_ends_with_128_plus_the_signal_and_drops_its_open_upload()
{
    let gateway = OneSlotGateway::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("blob");
    std::fs::write(&file, pseudo_random(4 << 20, 43)).unwrap();
    let slot = gateway.hold_the_slot().await;
    let mut put = gateway
        .put(&[file.to_str().unwrap(), "--retries", "10"], Stdio::null())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(put.stderr.take().unwrap()).lines();
    within("the CLI saying it tries again", async {
        while let Some(line) = stderr.next_line().await.unwrap() {
            if line.contains("trying again") {
                return;
            }
        }
        panic!("put ended without waiting");
    })
    .await;
    wait_for_metric(
        &gateway.fleet.http,
        &gateway.url,
        "redstuff_gateway_uploads_resumable 1",
    )
    .await;
    let pid = put.id().unwrap() as i32;
    // SAFETY: a signal to the child this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let status = within("the interrupted put", put.wait()).await.unwrap();
    assert_eq!(status.code(), Some(130));
    wait_for_metric(
        &gateway.fleet.http,
        &gateway.url,
        "redstuff_gateway_uploads_resumable 0",
    )
    .await;
    slot.release().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_from_standard_input_is_stored_as_it_streams_and_a_refusal_is_not_retried() {
    let gateway = OneSlotGateway::start().await;
    let put_piped = |data: Vec<u8>| {
        let mut child = gateway.put(&["-"], Stdio::piped()).spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            // A refused upload may stop reading: a broken pipe is fine here.
            let _ = stdin.write_all(&data).await;
        });
        child.wait_with_output()
    };
    // Three segments and a bit, through a pipe: no length announced.
    let data = pseudo_random((3 << 20) + 12_345, 42);
    let stored = within("a put from a pipe", put_piped(data.clone()))
        .await
        .unwrap();
    assert!(stored.status.success(), "{stored:?}");
    let id = String::from_utf8(stored.stdout).unwrap().trim().to_string();
    assert_eq!(id, blob_id(&data));
    assert!(gateway.read(&id).await == data);

    // Refused by a busy gateway: said so, not tried again, nothing stored.
    let slot = gateway.hold_the_slot().await;
    let other = pseudo_random(5_000, 43);
    let refused = within("a refused put from a pipe", put_piped(other.clone()))
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{refused:?}");
    assert!(
        stderr.contains("503") && stderr.contains("standard input is read once"),
        "{stderr}"
    );
    assert!(!stderr.contains("trying again"), "{stderr}");
    assert!(holders_of(&gateway.fleet, &blob_id(&other)).is_empty());
    slot.release().await;
}

/// A gateway stand-in whose `/v1/status` answers 503 (Retry-After: 1) to
/// its first `busy` requests, then the status; 401 without the token.
async fn status_server(busy: usize) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let asked = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = asked.clone();
    let app = axum::Router::new().route(
        "/v1/status",
        axum::routing::get(move |headers: axum::http::HeaderMap| {
            let counter = counter.clone();
            async move {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                let authorized = headers
                    .get("authorization")
                    .is_some_and(|v| v == "Bearer status-token");
                let (status, retry_after, body) = if !authorized {
                    (401, "0", r#"{"error": "no token"}"#)
                } else if n < busy {
                    (503, "1", r#"{"error": "the loop has not looked yet"}"#)
                } else {
                    (
                        200,
                        "0",
                        r#"{"shards": 7, "fault_tolerance": 2, "nodes": [], "blobs": []}"#,
                    )
                };
                (
                    axum::http::StatusCode::from_u16(status).unwrap(),
                    [("retry-after", retry_after)],
                    body,
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, asked)
}

/// `redstuff status --json --gateway URL ARGS...` with `token`.
async fn run_status(url: &str, token: &str, args: &[&str]) -> std::process::Output {
    let command = tokio::process::Command::new(env!("CARGO_BIN_EXE_redstuff"))
        .args(["status", "--json", "--gateway", url])
        .args(args)
        .env("REDSTUFF_TOKEN", token)
        .env("REDSTUFF_LOG", "warn")
        .kill_on_drop(true)
        .output();
    within("redstuff status", command).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_token_variable_counts_as_none_and_a_token_with_a_line_break_or_a_gateway_without_a_scheme_is_refused_at_once(
) {
    let (url, asked) = status_server(0).await;
    // REDSTUFF_TOKEN= (a command substitution that failed): the token
    // file of `redstuff dev` in the directory is used, not an empty token.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("redstuff-dev")).unwrap();
    std::fs::write(dir.path().join("redstuff-dev/token"), "status-token\n").unwrap();
    let command = tokio::process::Command::new(env!("CARGO_BIN_EXE_redstuff"))
        .args(["status", "--json", "--gateway", &url])
        .env("REDSTUFF_TOKEN", "")
        .env("REDSTUFF_LOG", "warn")
        .current_dir(dir.path())
        .kill_on_drop(true)
        .output();
    let output = within("redstuff status", command).await.unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let before = asked.load(std::sync::atomic::Ordering::SeqCst);
    let two_tokens = run_status(&url, "status-token\nnext-token", &[]).await;
    let stderr = String::from_utf8_lossy(&two_tokens.stderr);
    assert_eq!(two_tokens.status.code(), Some(2), "a usage error: {stderr}");
    assert!(stderr.contains("line break"), "{stderr}");
    let no_scheme = run_status(url.trim_start_matches("http://"), "status-token", &[]).await;
    let stderr = String::from_utf8_lossy(&no_scheme.stderr);
    assert_eq!(no_scheme.status.code(), Some(2), "a usage error: {stderr}");
    assert!(
        stderr.contains("http:// or https://") || stderr.contains("not a URL"),
        "{stderr}"
    );
    assert_eq!(
        asked.load(std::sync::atomic::Ordering::SeqCst),
        before,
        "nothing was sent, nothing retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_from_a_pipe_that_sends_nothing_ends_with_the_gateways_refusal_without_waiting_for_the_pipe(
) {
    // A stand-in that refuses every upload at once, reading nothing.
    let app = axum::Router::new().fallback(|| async {
        (
            axum::http::StatusCode::UNAUTHORIZED,
            r#"{"error": "unknown token"}"#,
        )
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let mut put = tokio::process::Command::new(env!("CARGO_BIN_EXE_redstuff"))
        .args(["put", "-", "--gateway", &url])
        .env("REDSTUFF_TOKEN", "wrong")
        .env("REDSTUFF_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Held open, never written.
    let _stdin = put.stdin.take().unwrap();
    let output = crate::within_bound(
        "put with its source silent",
        std::time::Duration::from_secs(30),
        put.wait_with_output(),
    )
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("401"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_says_it_is_empty_but_has_bytes_is_stored_whole() {
    // procfs files say 0 bytes and have some.
    let gateway = OneSlotGateway::start().await;
    let mut put = gateway.put(&["/proc/self/status"], Stdio::null());
    let output = within("redstuff put", put.output()).await.unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let id = String::from_utf8(output.stdout).unwrap().trim().to_string();
    let stored = gateway.read(&id).await;
    assert!(
        stored.starts_with(b"Name:"),
        "{:?}",
        String::from_utf8_lossy(&stored)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_waits_for_a_busy_gateway_and_never_retries_a_refusal() {
    use std::sync::atomic::Ordering;
    // Busy twice: with retries it says so, waits and prints the status.
    let (url, asked) = status_server(2).await;
    let out = run_status(&url, "status-token", &["--retries", "3"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stderr.matches("trying again").count(), 2, "{stderr}");
    assert!(stderr.contains("the loop has not looked yet"), "{stderr}");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["shards"], 7);
    assert_eq!(asked.load(Ordering::SeqCst), 3);

    // Without retries: the first 503 and its reason, at once.
    let (url, asked) = status_server(2).await;
    let out = run_status(&url, "status-token", &["--retries", "0"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("503") && stderr.contains("the loop has not looked yet"),
        "{stderr}"
    );
    assert_eq!(asked.load(Ordering::SeqCst), 1);

    // A refusal (401) is never tried again, whatever the retries.
    let (url, asked) = status_server(0).await;
    let out = run_status(&url, "wrong-token", &["--retries", "3"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("401") && stderr.contains("--token"),
        "{stderr}"
    );
    assert_eq!(asked.load(Ordering::SeqCst), 1);

    // Nothing listening: tried again, then given up, saying how often.
    let gone = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let out = run_status(&gone, "status-token", &["--retries", "1"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("cannot reach the gateway") && stderr.contains("gave up after 2 attempts"),
        "{stderr}"
    );
}

#[test]
fn status_read_by_a_reader_that_stopped_ends_quietly_by_sigpipe_not_a_panic() {
    use std::io::{Read as _, Write as _};
    use std::os::unix::process::ExitStatusExt as _;
    // A gateway stand-in that answers once told to: by then the reader of
    // the command's output is gone.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (answer, told) = std::sync::mpsc::channel::<()>();
    let server = std::thread::spawn(move || {
        let (mut socket, _) = listener.accept().unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            socket.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        told.recv().unwrap();
        let body = r#"{"shards": 7, "fault_tolerance": 2, "nodes": [], "blobs": []}"#;
        let reply = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        socket.write_all(reply.as_bytes()).unwrap();
    });
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_redstuff"))
        .args([
            "status",
            "--gateway",
            &url,
            "--token",
            "t",
            "--retries",
            "0",
        ])
        .env("REDSTUFF_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    answer.send(()).unwrap();
    let output = child.wait_with_output().unwrap();
    server.join().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        output.status.signal(),
        Some(libc::SIGPIPE),
        "{:?}: {stderr}",
        output.status
    );
}

/// A gateway stand-in that takes a PUT of a blob whole, answers 201 and
/// sends the first bytes of its JSON, then nothing more.
async fn answer_stalling_server() -> String {
    use futures::StreamExt as _;
    let app = axum::Router::new().route(
        "/v1/blobs",
        axum::routing::put(|_body: axum::body::Bytes| async {
            let first = futures::stream::once(async {
                Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"{\"id\": \""))
            });
            let body = axum::body::Body::from_stream(first.chain(futures::stream::pending()));
            (axum::http::StatusCode::CREATED, body)
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_whose_answer_stops_arriving_ends_as_a_stall_not_a_hang() {
    let url = answer_stalling_server().await;
    let mut put = tokio::process::Command::new(env!("CARGO_BIN_EXE_redstuff"));
    put.args([
        "put",
        "-",
        "--gateway",
        &url,
        "--retries",
        "0",
        "--stall-secs",
        "2",
    ])
    .env("REDSTUFF_TOKEN", "any")
    .env("REDSTUFF_LOG", "warn")
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let mut child = put.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stdin, b"a small blob")
        .await
        .unwrap();
    drop(stdin);
    let out = within("a put whose answer stalls", child.wait_with_output())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("gave no answer for 2 s"), "{stderr}");
    assert!(out.stdout.is_empty(), "no id printed");
}

/// A gateway stand-in that opens an upload, refuses its bytes for good
/// (422), and never answers the upload's deletion; it tells `asked` when
/// the deletion comes.
async fn deletion_hanging_server(asked: tokio::sync::mpsc::Sender<()>) -> String {
    let app = axum::Router::new()
        .route(
            "/v1/uploads",
            axum::routing::post(|| async {
                (
                    axum::http::StatusCode::CREATED,
                    axum::Json(serde_json::json!({"upload": "u1", "offset": 0})),
                )
            }),
        )
        .route(
            "/v1/uploads/u1",
            axum::routing::patch(|_body: axum::body::Bytes| async {
                (
                    axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                    "refused for good",
                )
            })
            .delete(move || {
                let asked = asked.clone();
                async move {
                    let _ = asked.send(()).await;
                    std::future::pending::<()>().await
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_put_ends_at_a_signal_while_it_drops_its_open_upload() {
    let (asked, mut deletion) = tokio::sync::mpsc::channel(1);
    let url = deletion_hanging_server(asked).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("blob");
    std::fs::write(&file, b"a small blob").unwrap();
    let mut put = tokio::process::Command::new(env!("CARGO_BIN_EXE_redstuff"));
    put.args(["put", file.to_str().unwrap(), "--gateway", &url])
        .args(["--retries", "0", "--stall-secs", "600"])
        .env("REDSTUFF_TOKEN", "any")
        .env("REDSTUFF_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = put.spawn().unwrap();
    within("the upload's deletion", deletion.recv())
        .await
        .expect("asked");
    let pid = child.id().unwrap() as i32;
    // SAFETY: a signal to the child this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let out = within(
        "a put told to stop while it drops its upload",
        child.wait_with_output(),
    )
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(143), "{stderr}");
    assert!(stderr.contains("refused for good"), "{stderr}");
}
