//! G8: only holders of the cluster's credentials write, delete or trigger
//! repairs. Every node route but the probes and metrics answers 401 with
//! a JSON error to a call without the cluster token, with a wrong one, or
//! with a user token, and does nothing; the gateway requires a user token
//! for writes, deletes and (by default) reads, and with
//! `--anonymous-reads` still for writes and deletes; the CLI sends the
//! token of `--token`, else of REDSTUFF_TOKEN, and without one is refused
//! with a hint. Token files are re-read by the running processes: a token
//! added is accepted, a token removed refused, without a restart.

use std::future::Future;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::dev_fleet::{all_healthy, pseudo_random, DevFleet};
use crate::procs::{user_http, Cluster, CLUSTER_TOKEN, USER_TOKEN};
use crate::NO_HANG;

/// A node route and the body a caller would send.
fn node_routes(id: &str) -> Vec<(&'static str, String, Vec<u8>)> {
    vec![
        ("GET", "/v1/inventory".into(), vec![]),
        ("GET", format!("/v1/blobs/{id}/state"), vec![]),
        ("GET", format!("/v1/blobs/{id}/metadata"), vec![]),
        (
            "PUT",
            format!("/v1/blobs/{id}/metadata?generation=9"),
            vec![0; 64],
        ),
        ("GET", format!("/v1/blobs/{id}/slivers/0/0/primary"), vec![]),
        (
            "PUT",
            format!("/v1/blobs/{id}/slivers/0/0/primary"),
            vec![0; 64],
        ),
        // The route writers use: both slivers of a pair at once.
        ("PUT", format!("/v1/blobs/{id}/pairs/0/0"), vec![0; 64]),
        (
            "GET",
            format!("/v1/blobs/{id}/symbols/0/0/primary?target_shard=1"),
            vec![],
        ),
        (
            "POST",
            format!("/v1/blobs/{id}/commit"),
            br#"{"generation": 9}"#.to_vec(),
        ),
        (
            "POST",
            format!("/v1/blobs/{id}/abort"),
            br#"{"generation": 9}"#.to_vec(),
        ),
        (
            "DELETE",
            format!("/v1/blobs/{id}?generation=18446744073709551615"),
            vec![],
        ),
        (
            "POST",
            "/v1/repair".into(),
            serde_json::to_vec(&serde_json::json!({
                "blob": id, "shards": [0], "generation": 9, "size": 1, "segments": 1
            }))
            .unwrap(),
        ),
    ]
}

fn read_token(fleet: &DevFleet, name: &str) -> String {
    std::fs::read_to_string(fleet.data_dir().join(name))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_routes_answer_401_json_without_the_cluster_token_and_do_nothing() {
    let fleet = DevFleet::start(&[]);
    let data = pseudo_random(300_000, 61);
    let id = fleet.put(&data).await;
    let status = fleet.wait_for("healthy", |s| all_healthy(s, 1)).await;
    let cluster = read_token(&fleet, "cluster-token");
    let user = read_token(&fleet, "token");
    let http = redstuff::http::client();
    for node in status["nodes"].as_array().unwrap() {
        let url = node["address"].as_str().unwrap();
        for (method, path, body) in node_routes(&id) {
            // None, a wrong one, and the user token (a separate credential).
            for presented in [None, Some("not-the-token"), Some(user.as_str())] {
                let mut request = http
                    .request(method.parse().unwrap(), format!("{url}{path}"))
                    .body(body.clone());
                if let Some(token) = presented {
                    request = request.bearer_auth(token);
                }
                let response = request.send().await.unwrap();
                let what = format!("{method} {path} with {presented:?} on {}", node["name"]);
                assert_eq!(response.status(), 401, "{what}");
                assert_eq!(
                    response.headers()["www-authenticate"],
                    "Bearer realm=\"redstuff\"",
                    "{what}"
                );
                let error: serde_json::Value = response.json().await.unwrap();
                let message = error["error"].as_str().unwrap_or_default();
                assert!(message.contains("cluster token"), "{what}: {error}");
            }
        }
        // Probes and metrics need nothing; the cluster token opens the rest.
        for open in ["/healthz", "/readyz", "/metrics"] {
            let response = http.get(format!("{url}{open}")).send().await.unwrap();
            assert_eq!(response.status(), 200, "{open}");
        }
        let inventory = http
            .get(format!("{url}/v1/inventory"))
            .bearer_auth(&cluster)
            .send()
            .await
            .unwrap();
        assert_eq!(inventory.status(), 200);
    }
    // Nothing those calls asked for happened: the blob is whole on every node.
    assert_eq!(crate::dev_fleet::holders_of(&fleet, &id).len(), 7);
    assert!(fleet.get(&id).await == data);
    let status = fleet.status().await;
    assert_eq!(status["blobs"][0]["shards_complete"], 7, "{status:#}");
}

/// Runs `redstuff ARGS` in `dir` (no `redstuff-dev/token` there), with
/// REDSTUFF_TOKEN set to `env` or unset.
fn cli(dir: &Path, args: &[&str], env: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_redstuff"));
    command
        .args(args)
        .current_dir(dir)
        .env_remove("REDSTUFF_TOKEN")
        .env_remove("REDSTUFF_GATEWAY")
        .env("REDSTUFF_LOG", "warn");
    if let Some(token) = env {
        command.env("REDSTUFF_TOKEN", token);
    }
    command.output().unwrap()
}

fn refused(output: &Output) -> bool {
    let stderr = String::from_utf8_lossy(&output.stderr);
    !output.status.success()
        && stderr.contains("401")
        && stderr.contains("pass --token or set REDSTUFF_TOKEN")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_requires_the_user_token_and_the_cli_sends_it_from_the_flag_or_redstuff_token()
{
    let fleet = DevFleet::start(&[]);
    let gateway = fleet.gateway.clone();
    let user = read_token(&fleet, "token");
    let cluster = read_token(&fleet, "cluster-token");
    let data = pseudo_random(200_000, 62);
    let id = fleet.put(&data).await;
    let http = redstuff::http::client();
    // Without a user token, with a wrong one, or with the cluster token:
    // writes, deletes, reads and the status are refused (reads need a
    // token unless the gateway runs with --anonymous-reads).
    for presented in [None, Some("not-the-token"), Some(cluster.as_str())] {
        for (method, path) in [
            ("PUT", "/v1/blobs".to_string()),
            ("DELETE", format!("/v1/blobs/{id}")),
            ("GET", format!("/v1/blobs/{id}")),
            ("HEAD", format!("/v1/blobs/{id}")),
            ("GET", "/v1/status".to_string()),
        ] {
            let mut request = http
                .request(method.parse().unwrap(), format!("{gateway}{path}"))
                .body(if method == "PUT" {
                    vec![7u8; 1000]
                } else {
                    vec![]
                });
            if let Some(token) = presented {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 401, "{method} {path} with {presented:?}");
            if method != "HEAD" {
                let error: serde_json::Value = response.json().await.unwrap();
                assert!(
                    error["error"].as_str().unwrap().contains("user token"),
                    "{error}"
                );
            }
        }
    }
    // The blob is untouched, and the refused PUTs stored nothing.
    assert!(fleet.get(&id).await == data);
    fleet
        .wait_for("only the first blob, healthy", |s| all_healthy(s, 1))
        .await;
    let refused_id = crate::blob_id(&[7u8; 1000]);
    assert!(crate::dev_fleet::holders_of(&fleet, &refused_id).is_empty());
    assert_eq!(fleet.code("GET", &refused_id).await, 404);

    // The CLI: REDSTUFF_TOKEN, --token (which wins over a wrong
    // REDSTUFF_TOKEN), and neither.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("blob");
    // Small enough that a refused upload was sent whole before the gateway
    // answers 401 (it refuses before reading the body; a large body would
    // meet a closed connection instead of the answer).
    let second = pseudo_random(2_000, 63);
    std::fs::write(&file, &second).unwrap();
    let file = file.to_str().unwrap();
    let put = |env: Option<&str>, flag: Option<&str>| {
        let mut args = vec!["put", file, "--gateway", &gateway];
        if let Some(token) = flag {
            args.extend(["--token", token]);
        }
        cli(dir.path(), &args, env)
    };
    let none = put(None, None);
    assert!(refused(&none), "{none:?}");
    let wrong_env = put(Some("not-the-token"), None);
    assert!(refused(&wrong_env), "{wrong_env:?}");
    assert!(crate::dev_fleet::holders_of(&fleet, &crate::blob_id(&second)).is_empty());
    let by_env = put(Some(&user), None);
    assert!(by_env.status.success(), "{by_env:?}");
    let second_id = String::from_utf8(by_env.stdout).unwrap().trim().to_string();
    let by_flag = put(None, Some(&user));
    assert!(by_flag.status.success(), "{by_flag:?}");
    assert_eq!(String::from_utf8(by_flag.stdout).unwrap().trim(), second_id);
    let flag_wins = put(Some("not-the-token"), Some(&user));
    assert!(flag_wins.status.success(), "{flag_wins:?}");
    // A large upload without a token: the gateway answers 401 before it
    // reads the body, and reads the rest after the answer, so the CLI gets
    // the 401 (not a reset connection) and says a token is needed.
    let large = dir.path().join("large");
    std::fs::write(&large, pseudo_random(24 << 20, 64)).unwrap();
    let large_put = cli(
        dir.path(),
        &["put", large.to_str().unwrap(), "--gateway", &gateway],
        None,
    );
    let stderr = String::from_utf8_lossy(&large_put.stderr);
    assert!(
        !large_put.status.success() && stderr.contains("401") && stderr.contains("REDSTUFF_TOKEN"),
        "{large_put:?}"
    );

    let out = dir.path().join("out");
    let out = out.to_str().unwrap();
    let get = |env: Option<&str>, flag: Option<&str>| {
        let mut args = vec!["get", &second_id, "-o", out, "--gateway", &gateway];
        if let Some(token) = flag {
            args.extend(["--token", token]);
        }
        cli(dir.path(), &args, env)
    };
    let none = get(None, None);
    assert!(refused(&none), "{none:?}");
    let by_env = get(Some(&user), None);
    assert!(by_env.status.success(), "{by_env:?}");
    assert!(std::fs::read(out).unwrap() == second);
    std::fs::remove_file(out).unwrap();
    let by_flag = get(None, Some(&user));
    assert!(by_flag.status.success(), "{by_flag:?}");
    assert!(std::fs::read(out).unwrap() == second);
    // Into a pipe (as into /dev/null): written in place, still a pipe
    // after, never renamed over.
    let pipe = dir.path().join("pipe");
    let c_pipe = std::ffi::CString::new(pipe.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c_pipe.as_ptr(), 0o600) }, 0);
    let (read_tx, read_rx) = std::sync::mpsc::channel();
    std::thread::spawn({
        let pipe = pipe.clone();
        move || read_tx.send(std::fs::read(pipe).unwrap())
    });
    let into_pipe = cli(
        dir.path(),
        &[
            "get",
            &second_id,
            "-o",
            pipe.to_str().unwrap(),
            "--gateway",
            &gateway,
        ],
        Some(&user),
    );
    assert!(into_pipe.status.success(), "{into_pipe:?}");
    use std::os::unix::fs::FileTypeExt;
    assert!(
        std::fs::metadata(&pipe).unwrap().file_type().is_fifo(),
        "the pipe was replaced by a regular file"
    );
    let got = read_rx
        .recv_timeout(crate::NO_HANG)
        .expect("the pipe got nothing");
    assert!(got == second, "the pipe got the blob");
    let status = cli(dir.path(), &["status", "--gateway", &gateway], None);
    assert!(refused(&status), "{status:?}");
    let status = cli(
        dir.path(),
        &["status", "--gateway", &gateway, "--token", &user],
        None,
    );
    assert!(status.status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_anonymous_reads_get_and_head_need_no_token_and_put_and_delete_still_do() {
    let cluster = Cluster::start(4, "2");
    let (_gateway, gateway) = cluster.gateway(&cluster.map, &["--anonymous-reads"]);
    let data = pseudo_random(300_000, 66);
    let (status, stored) = crate::put_within("a PUT", NO_HANG, &user_http(), &gateway, &data).await;
    assert_eq!(status, 201);
    let id = stored["id"].as_str().unwrap().to_string();
    let anonymous = redstuff::http::client();
    // Reads and the status without any token.
    let get = anonymous
        .get(format!("{gateway}/v1/blobs/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 200);
    assert!(get.bytes().await.unwrap() == data);
    let head = anonymous
        .head(format!("{gateway}/v1/blobs/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    // The status too (a standalone gateway publishes none: 404, past the
    // token check).
    let status = anonymous
        .get(format!("{gateway}/v1/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), 404);
    let error: serde_json::Value = status.json().await.unwrap();
    assert!(
        error["error"].as_str().unwrap().contains("no fleet status"),
        "{error}"
    );
    // Writes and deletes: refused without a user token, with a wrong one,
    // and with the cluster token, and nothing happens.
    let other = pseudo_random(2_000, 67);
    for presented in [None, Some("not-the-token"), Some(CLUSTER_TOKEN)] {
        for (method, path, body) in [
            ("PUT", "/v1/blobs".to_string(), other.clone()),
            ("DELETE", format!("/v1/blobs/{id}"), vec![]),
        ] {
            let mut request = anonymous
                .request(method.parse().unwrap(), format!("{gateway}{path}"))
                .body(body);
            if let Some(token) = presented {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 401, "{method} {path} with {presented:?}");
            let error: serde_json::Value = response.json().await.unwrap();
            assert!(
                error["error"].as_str().unwrap().contains("user token"),
                "{error}"
            );
        }
    }
    // (The refused bytes are stored nowhere: only the first blob is.)
    for node in &cluster.nodes {
        let blobs: Vec<_> = std::fs::read_dir(node.data.join("blobs"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(blobs, std::slice::from_ref(&id), "{}", node.name);
    }
    let again = anonymous
        .get(format!("{gateway}/v1/blobs/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    assert!(again.bytes().await.unwrap() == data);
}

/// Replaces the token file `name` of `cluster` as Kubernetes updates a
/// mounted Secret: the new content whole, renamed over the old.
fn rewrite(cluster: &Cluster, name: &str, content: &str) {
    let path = cluster.dir.path().join(name);
    let tmp = cluster.dir.path().join(format!("{name}.new"));
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
}

/// Whether `url` + `path` lets `token` in (anything but 401).
async fn lets_in(url: &str, path: &str, token: &str) -> bool {
    let response = redstuff::http::client()
        .get(format!("{url}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    response.status() != 401
}

/// Waits, polling, until `condition` holds; fails past `NO_HANG`.
async fn until<F: Future<Output = bool>>(what: &str, mut condition: impl FnMut() -> F) {
    let start = Instant::now();
    while !condition().await {
        assert!(start.elapsed() < NO_HANG, "{what}: not within {NO_HANG:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_nodes_and_gateways_take_a_rotated_token_in_and_the_old_one_out() {
    const NEW_CLUSTER: &str = "rotated-cluster-token";
    const NEW_USER: &str = "rotated-user-token";
    // The nodes and the gateway read the cluster token from one file; the
    // gateway reads the user tokens from another. None is restarted.
    let cluster = Cluster::start(4, "2");
    let (_gateway, gateway) = cluster.gateway(&cluster.map, &[]);
    let nodes: Vec<String> = cluster.nodes.iter().map(|n| n.url.clone()).collect();
    let everywhere = |token: &'static str| {
        let nodes = nodes.clone();
        async move {
            for url in &nodes {
                if !lets_in(url, "/v1/inventory", token).await {
                    return false;
                }
            }
            true
        }
    };
    let nowhere = |token: &'static str| {
        let nodes = nodes.clone();
        async move {
            for url in &nodes {
                if lets_in(url, "/v1/inventory", token).await {
                    return false;
                }
            }
            true
        }
    };
    assert!(everywhere(CLUSTER_TOKEN).await && nowhere(NEW_CLUSTER).await);
    assert!(lets_in(&gateway, "/v1/status", USER_TOKEN).await);
    assert!(!lets_in(&gateway, "/v1/status", NEW_USER).await);
    let first = pseudo_random(200_000, 68);
    let (status, stored) =
        crate::put_within("a PUT", NO_HANG, &user_http(), &gateway, &first).await;
    assert_eq!(status, 201);
    let first_id = stored["id"].as_str().unwrap().to_string();

    // Step 1: the new tokens added as second lines. Taken in without a
    // restart; the old ones still work.
    rewrite(
        &cluster,
        "cluster-token",
        &format!("{CLUSTER_TOKEN}\n{NEW_CLUSTER}\n"),
    );
    rewrite(
        &cluster,
        "user-tokens",
        &format!("{USER_TOKEN}\n{NEW_USER}\n"),
    );
    until("every node takes the added cluster token", || {
        everywhere(NEW_CLUSTER)
    })
    .await;
    until("the gateway takes the added user token", || {
        lets_in(&gateway, "/v1/status", NEW_USER)
    })
    .await;
    assert!(everywhere(CLUSTER_TOKEN).await);
    assert!(lets_in(&gateway, "/v1/status", USER_TOKEN).await);

    // Then only the new tokens (the swap the documented procedure makes
    // in between, so no pod ever sends a token already removed, is left
    // out: here the gateway may be refused until it re-read its file). The
    // old ones are refused everywhere, and the gateway, sending the new
    // cluster token, reads and writes again.
    rewrite(&cluster, "cluster-token", NEW_CLUSTER);
    rewrite(&cluster, "user-tokens", NEW_USER);
    until("every node refuses the removed cluster token", || {
        nowhere(CLUSTER_TOKEN)
    })
    .await;
    until("the gateway refuses the removed user token", || async {
        !lets_in(&gateway, "/v1/status", USER_TOKEN).await
    })
    .await;
    assert!(everywhere(NEW_CLUSTER).await);
    let rotated = {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {NEW_USER}").parse().unwrap(),
        );
        redstuff::http::client_builder()
            .default_headers(headers)
            .build()
            .unwrap()
    };
    // The gateway re-reads its copy of the cluster token on its own tick.
    until("the gateway reads with the new cluster token", || async {
        let response = rotated
            .get(format!("{gateway}/v1/blobs/{first_id}"))
            .send()
            .await
            .unwrap();
        response.status() == 200 && response.bytes().await.unwrap() == first
    })
    .await;
    let second = pseudo_random(200_000, 69);
    let (status, stored) = crate::put_within(
        "a PUT with the rotated tokens",
        NO_HANG,
        &rotated,
        &gateway,
        &second,
    )
    .await;
    assert_eq!(status, 201);
    let response = rotated
        .get(format!(
            "{gateway}/v1/blobs/{}",
            stored["id"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.bytes().await.unwrap() == second);
}
