//! A `redstuff dev` fleet started as a real process for a test, with the
//! helpers the fleet tests share: waits on its status (bounded), puts and
//! gets with the user token, node processes killed, stopped, resumed and
//! wiped by PID. Dropping it resumes what it stopped and ends the fleet
//! (SIGTERM, then SIGKILL).

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redstuff::codec::EncodingConfig;

/// The longest any wait on the fleet may take.
pub const WAIT: Duration = Duration::from_secs(90);

/// A running `redstuff dev`.
pub struct DevFleet {
    pub child: Child,
    pub gateway: String,
    pub dir: tempfile::TempDir,
    /// Sends the fleet's user token.
    pub http: reqwest::Client,
    /// The S3 endpoint's URL (unless started with `--no-s3`).
    pub s3: Option<String>,
    /// Node processes stopped with SIGSTOP, resumed on drop.
    stopped: Mutex<Vec<i32>>,
}

impl DevFleet {
    /// Starts `redstuff dev` (1 MiB segments, a 200 ms loop) with `extra` arguments.
    pub fn start(extra: &[&str]) -> Self {
        Self::start_with_env(extra, &[])
    }

    /// The same, with environment variables for the fleet's processes.
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), extra, env)
    }

    /// Kills every process of the fleet at once (SIGKILL: the dev process
    /// and every node) and waits until they are gone.
    pub fn kill_all(&mut self) {
        let nodes: Vec<i32> = self.node_pids();
        kill9(self.child.id() as i32);
        let _ = self.child.wait();
        for pid in &nodes {
            // A stopped node dies on SIGKILL too.
            // SAFETY: a signal to a node process of the fleet under test.
            unsafe {
                libc::kill(*pid, libc::SIGKILL);
            }
        }
        for pid in &nodes {
            wait_gone(*pid);
        }
        self.stopped.lock().unwrap().clear();
    }

    /// Starts `redstuff dev` again on the same data (after `kill_all`).
    pub fn restart(mut self, extra: &[&str]) -> Self {
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        Self::start_in(dir, extra, &[])
    }

    /// `kill_all`, then `restart`.
    pub fn kill_all_and_restart(mut self, extra: &[&str]) -> Self {
        self.kill_all();
        self.restart(extra)
    }

    /// The pids of the node processes, as the fleet's files and /proc
    /// tell them (whether or not the status can be read).
    pub fn node_pids(&self) -> Vec<i32> {
        let data = self.data_dir();
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmd| {
                    let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                    cmd.contains(" node ") && cmd.contains(&*data.to_string_lossy())
                })
            })
            .collect()
    }

    fn start_in(dir: tempfile::TempDir, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_redstuff"))
            .args([
                "dev",
                "--gateway-addr",
                "127.0.0.1:0",
                "--period-ms",
                "200",
                "--segment-size",
                "1MiB",
                "--s3-addr",
                "127.0.0.1:0",
            ])
            .arg("--data-dir")
            .arg(dir.path().join("fleet"))
            .args(extra)
            .env("REDSTUFF_LOG", "warn")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let mut gateway = None;
        let mut s3 = None;
        for line in lines.by_ref() {
            let line = line.unwrap();
            let word = |rest: &str| rest.split_whitespace().next().unwrap().to_string();
            if let Some(rest) = line.trim().strip_prefix("gateway:") {
                gateway = Some(word(rest));
            } else if let Some(rest) = line.trim().strip_prefix("s3:") {
                s3 = Some(word(rest));
            } else if line.trim().starts_with("metrics:") {
                break;
            }
        }
        // Keep reading, so the fleet never writes into a closed pipe.
        std::thread::spawn(move || lines.for_each(drop));
        let gateway = gateway.expect("redstuff dev printed its gateway");
        let fleet_dir = dir.path().join("fleet");
        let ca = fleet_dir.join("tls").join("ca.crt");
        let http = redstuff::dev::authorized_client(
            &fleet_dir.join("token"),
            extra.contains(&"--tls").then_some(ca.as_path()),
        )
        .expect("the fleet wrote its user token");
        Self {
            child,
            gateway,
            dir,
            http,
            s3,
            stopped: Mutex::new(Vec::new()),
        }
    }

    /// The directory of node `name` (its data is in `data/`).
    pub fn node_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join("fleet").join(name)
    }

    /// The fleet's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("fleet")
    }

    /// The status the loop publishes.
    pub async fn status(&self) -> serde_json::Value {
        self.http
            .get(format!("{}/v1/status", self.gateway))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Waits (at most `WAIT`) until the status satisfies `done`, looking
    /// only at statuses whose inventories were read after the wait began
    /// (one published earlier may not show what the test just did).
    pub async fn wait_for(
        &self,
        what: &str,
        mut done: impl FnMut(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let start = Instant::now();
        let since_ms = redstuff::blob_state::now_nanos() / 1_000_000;
        loop {
            if let Ok(response) = self
                .http
                .get(format!("{}/v1/status", self.gateway))
                .send()
                .await
            {
                let status = response
                    .json::<serde_json::Value>()
                    .await
                    .unwrap_or_default();
                let fresh = status["observed_at_ms"]
                    .as_u64()
                    .is_some_and(|at| at >= since_ms);
                if fresh {
                    if done(&status) {
                        return status;
                    }
                    assert!(
                        start.elapsed() < WAIT,
                        "timed out waiting for {what}: {status:#}"
                    );
                }
            }
            assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// PUTs `data`; asserts 201 and returns the id.
    pub async fn put(&self, data: &[u8]) -> String {
        let response = self.try_put(data).await;
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["size"], data.len() as u64);
        body["id"].as_str().unwrap().to_string()
    }

    /// PUTs `data` and returns the answer, whatever it is.
    pub async fn try_put(&self, data: &[u8]) -> reqwest::Response {
        self.http
            .put(format!("{}/v1/blobs", self.gateway))
            .body(data.to_vec())
            .send()
            .await
            .unwrap()
    }

    /// GETs a blob; asserts 200.
    pub async fn get(&self, id: &str) -> Vec<u8> {
        let response = self
            .http
            .get(format!("{}/v1/blobs/{id}", self.gateway))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "GET {id}");
        response.bytes().await.unwrap().to_vec()
    }

    /// The status code of a GET, HEAD or DELETE of a blob.
    pub async fn code(&self, method: &str, id: &str) -> u16 {
        self.http
            .request(
                method.parse().unwrap(),
                format!("{}/v1/blobs/{id}", self.gateway),
            )
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// The gateway's metrics (with the loop's).
    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.gateway))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The pid of node `name` in `status`.
    pub fn pid_of(status: &serde_json::Value, name: &str) -> i32 {
        let node = status["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == name)
            .unwrap();
        node["pid"].as_u64().expect("running") as i32
    }

    /// The state the loop reports for node `name`.
    pub fn state_of(status: &serde_json::Value, name: &str) -> String {
        status["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == name)
            .and_then(|n| n["state"].as_str())
            .unwrap_or_default()
            .to_string()
    }

    /// Kills a node with SIGKILL and wipes its data; its data directory is
    /// replaced by a plain file, so every restart fails until `release`.
    pub fn kill_and_wipe(&self, status: &serde_json::Value, name: &str) {
        let data = self.node_dir(name).join("data");
        let old = self.node_dir(name).join("data.old");
        std::fs::rename(&data, &old).unwrap();
        std::fs::write(&data, b"not a directory").unwrap();
        kill9(Self::pid_of(status, name));
        std::fs::remove_dir_all(old).unwrap();
    }

    /// Lets a node wiped by `kill_and_wipe` start again.
    pub fn release(&self, name: &str) {
        std::fs::remove_file(self.node_dir(name).join("data")).unwrap();
    }

    /// Stops a process with SIGSTOP: it keeps its sockets, answers nothing.
    /// Returns once every thread of it is stopped: the kernel stops a
    /// process's threads only as each is next scheduled, so on a busy
    /// machine a worker thread could still answer a request sent right
    /// after `kill` returned.
    pub fn stop(&self, pid: i32) {
        signal(pid, libc::SIGSTOP);
        self.stopped.lock().unwrap().push(pid);
        let start = Instant::now();
        while !every_thread_stopped(pid) {
            assert!(start.elapsed() < WAIT, "process {pid} never stopped");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Resumes a process stopped by `stop`.
    pub fn resume(&self, pid: i32) {
        signal(pid, libc::SIGCONT);
        self.stopped.lock().unwrap().retain(|p| *p != pid);
    }
}

impl Drop for DevFleet {
    fn drop(&mut self) {
        for pid in self.stopped.lock().unwrap().drain(..) {
            // SAFETY: a signal to a node process of the fleet under test.
            unsafe {
                libc::kill(pid, libc::SIGCONT);
            }
        }
        if !matches!(self.child.try_wait(), Ok(None)) {
            return; // already ended (and reaped): its pid may be another's now
        }
        // SAFETY: a signal to the dev process this test started, still running.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (bounded) until process `pid` is gone: every one of its threads
/// ended, so its files and sockets are closed.
pub fn wait_gone(pid: i32) {
    let start = Instant::now();
    while !ended(pid) {
        assert!(start.elapsed() < WAIT, "process {pid} did not end");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether process `pid` is gone or a zombie with no thread left but its
/// leader. The leader of a killed multi-threaded process turns zombie while
/// its other threads still exit, and they hold the shared file table (its
/// listening socket, say) open until the last one is gone.
fn ended(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    if !stat.contains(") Z ") {
        return false;
    }
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(true, |threads| threads.count() <= 1)
}

/// Nodes holding any upload session (pairs shipped, not yet adopted).
pub fn session_holders(fleet: &DevFleet) -> Vec<String> {
    (0..64)
        .map(|i| format!("node-{i}"))
        .filter(|name| {
            std::fs::read_dir(fleet.node_dir(name).join("data").join("uploads"))
                .is_ok_and(|mut sessions| sessions.next().is_some())
        })
        .collect()
}

/// Nodes (by name) whose store holds anything of blob `id` besides a
/// tombstone.
pub fn holders_of(fleet: &DevFleet, id: &str) -> Vec<String> {
    (0..64)
        .map(|i| format!("node-{i}"))
        .filter(|name| {
            fleet
                .node_dir(name)
                .join("data")
                .join("blobs")
                .join(id)
                .exists()
        })
        .collect()
}

/// Whether every thread of process `pid` is in the stopped state (`T` in
/// /proc/PID/task/TID/stat; threads already ending count as stopped).
fn every_thread_stopped(pid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|task| {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // The state follows the command name, which is in parentheses.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        matches!(state, Some('T' | 't' | 'Z' | 'X') | None)
    })
}

fn signal(pid: i32, signal: i32) {
    // SAFETY: a signal to a process started by the fleet under test.
    assert_eq!(
        unsafe { libc::kill(pid, signal) },
        0,
        "kill -{signal} {pid}"
    );
}

/// Sends `PUT path` to `url` holding its 4-byte body back (`Expect:
/// 100-continue`), as curl and botocore do, and reads the answer until the
/// server closes the connection (it must, when it refuses the upload: the
/// body it counted on never comes). The answer, lower-cased.
pub fn put_holding_body_back(url: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let address = url.trim_start_matches("http://");
    let mut socket = std::net::TcpStream::connect(address).unwrap();
    socket.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        socket,
        "PUT {path} HTTP/1.1\r\nHost: {address}\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n"
    )
    .unwrap();
    let mut answer = Vec::new();
    socket
        .read_to_end(&mut answer)
        .expect("the server closes the connection after the refusal");
    String::from_utf8_lossy(&answer).to_ascii_lowercase()
}

/// SIGKILL to a node process.
pub fn kill9(pid: i32) {
    signal(pid, libc::SIGKILL);
}

/// The nodes a metrics text blames for answers that failed verification,
/// with how many (series at 0 are every known peer's, blaming nobody).
pub fn blamed(metrics: &str) -> std::collections::BTreeMap<String, u64> {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("redstuff_peer_invalid_responses_total{node=\""))
        .filter_map(|rest| {
            let (node, value) = rest.split_once("\"} ")?;
            Some((node.to_string(), value.trim().parse::<u64>().ok()?))
        })
        .filter(|(_, count)| *count > 0)
        .collect()
}

/// Deterministic bytes for a seed.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 32) as u8
        })
        .collect()
}

/// Whether `count` blobs are listed, all Healthy.
pub fn all_healthy(status: &serde_json::Value, count: usize) -> bool {
    let blobs = status["blobs"].as_array().unwrap();
    blobs.len() == count && blobs.iter().all(|b| b["health"] == "Healthy")
}

/// Whether every node is ready and `count` blobs are Healthy with no
/// repair running (a blob is Healthy once its rebuilt pairs are on the
/// nodes; its repair traffic is counted once the repair has ended).
pub fn healed(status: &serde_json::Value, count: usize) -> bool {
    all_ready(status)
        && all_healthy(status, count)
        && status["blobs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["repairing"] == false)
}

/// Whether every node is ready.
pub fn all_ready(status: &serde_json::Value) -> bool {
    status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|n| n["state"] == "ready")
}

/// (p + q) symbols of every segment of a blob of `len` bytes, in 1 MiB segments.
pub fn ideal_repair_bytes_per_shard(len: u64) -> u64 {
    let config = EncodingConfig::new(7).unwrap();
    let layout = redstuff::codec::BlobLayout::new(config, 1 << 20, len).unwrap();
    (0..layout.segment_count())
        .map(|i| layout.segment(i).unwrap().repair_symbol_bytes())
        .sum()
}
