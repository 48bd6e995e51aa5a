//! G8: only holders of the cluster's credentials write, delete or trigger
//! repairs. Every node route but the probes and metrics answers 401 with
//! a JSON error to a call without the cluster token, with a wrong one, or
//! with a user token, and does nothing; the gateway requires a user token
//! for writes, deletes and (by default) reads; the CLI sends the token of
//! `--token`, else of REDSTUFF_TOKEN, and without one is refused with a
//! hint.

use std::path::Path;
use std::process::{Command, Output};

use crate::dev_fleet::{all_healthy, pseudo_random, DevFleet};

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
    // reads the body; whether the CLI reads that answer or meets the
    // closed connection, it says a token is needed.
    let large = dir.path().join("large");
    std::fs::write(&large, pseudo_random(24 << 20, 64)).unwrap();
    let large_put = cli(
        dir.path(),
        &["put", large.to_str().unwrap(), "--gateway", &gateway],
        None,
    );
    let stderr = String::from_utf8_lossy(&large_put.stderr);
    assert!(
        !large_put.status.success() && stderr.contains("REDSTUFF_TOKEN"),
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
    let status = cli(dir.path(), &["status", "--gateway", &gateway], None);
    assert!(refused(&status), "{status:?}");
    let status = cli(
        dir.path(),
        &["status", "--gateway", &gateway, "--token", &user],
        None,
    );
    assert!(status.status.success(), "{status:?}");
}
