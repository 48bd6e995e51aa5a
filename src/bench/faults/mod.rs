//! `redstuff bench faults`: a randomized fault run. A local fleet for real
//! takes concurrent puts, gets (half of them of a random byte range, which
//! reads only the rows of the segments it touches) and deletes for a set
//! time while a driver
//! kills (SIGKILL), stops (SIGSTOP), resumes and wipes up to f nodes at
//! random points; then every node is resumed, the fleet heals, and the
//! recorded history is checked (`check`): every acknowledged write reads
//! back exactly, every acknowledged delete stays deleted, nothing else is
//! visible, and nothing of a blob that is not visible stays on a node.
//!
//! Each client owns its blobs (so each blob's history is a sequence), and
//! every write has bytes of its own, but for rewrites of deleted blobs
//! (the same bytes stored again).

pub mod check;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use check::{Final, Op, OpKind, Outcome};

/// How a run goes.
#[derive(Debug, Clone)]
pub struct FaultRunOptions {
    /// The `redstuff` executable the fleet's nodes run.
    pub exe: PathBuf,
    /// How long clients and faults go on.
    pub duration: Duration,
    /// Concurrent clients.
    pub clients: usize,
    /// Seed of every random choice.
    pub seed: u64,
    /// Where to write the history (JSON lines), if anywhere.
    pub history: Option<PathBuf>,
}

/// Faults injected.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Faults {
    /// Nodes killed with SIGKILL (restarted by the loop).
    pub kills: u64,
    /// Nodes stopped with SIGSTOP (resumed later).
    pub stops: u64,
    /// Nodes killed and their data wiped.
    pub wipes: u64,
}

/// What a run did and found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FaultRunReport {
    /// Seconds of load and faults.
    pub seconds: f64,
    /// The seed.
    pub seed: u64,
    /// Operations by kind and outcome ("put ok", "get not_found", ...).
    pub operations: BTreeMap<String, u64>,
    /// Faults injected.
    pub faults: Faults,
    /// Blobs checked after healing.
    pub blobs_checked: usize,
    /// Seconds the fleet took to heal after the last fault.
    pub heal_seconds: f64,
    /// What broke a promise (must be empty).
    pub violations: Vec<String>,
}

/// A small deterministic generator (xorshift).
struct Random(u64);

impl Random {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The bytes of the blob with `seed`: its length and content follow it.
fn blob_bytes(seed: u64) -> Vec<u8> {
    let mut random = Random::new(seed);
    let len = match random.below(10) {
        0 => random.below(10) as usize,
        1..=6 => 1000 + random.below(300_000) as usize,
        _ => 300_000 + random.below(1_200_000) as usize,
    };
    let mut data = vec![0u8; len];
    for chunk in data.chunks_mut(8) {
        let word = random.next().to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
    data
}

/// The run's shared record.
struct Run {
    http: reqwest::Client,
    gateway: String,
    start: Instant,
    ops: Mutex<Vec<Op>>,
}

impl Run {
    fn ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn record(
        &self,
        client: usize,
        blob: (&str, u64),
        kind: OpKind,
        outcome: Outcome,
        started_ms: u64,
    ) {
        self.ops.lock().expect("not poisoned").push(Op {
            client,
            blob: blob.0.to_string(),
            seed: blob.1,
            kind,
            outcome,
            started_ms,
            ended_ms: self.ms(),
        });
    }

    async fn put(&self, client: usize, seed: u64) -> Option<String> {
        let data = blob_bytes(seed);
        let id = blob_id(&data);
        let started = self.ms();
        let answer = self
            .http
            .put(format!("{}/v1/blobs", self.gateway))
            .timeout(Duration::from_secs(60))
            .body(data)
            .send()
            .await;
        let outcome = match answer {
            Ok(r) if r.status().is_success() => Outcome::Ok,
            // The gateway says the outcome is unknown: as good as no answer.
            Ok(r) if r.status() == 504 => Outcome::NoAnswer,
            Ok(r) => Outcome::Failed(r.status().as_u16()),
            Err(_) => Outcome::NoAnswer,
        };
        self.record(client, (&id, seed), OpKind::Put, outcome, started);
        Some(id)
    }

    /// A GET of the whole blob, or of bytes `range` of it (206 with
    /// exactly those bytes).
    async fn get(
        &self,
        client: usize,
        id: &str,
        seed: u64,
        range: Option<std::ops::Range<usize>>,
    ) -> Outcome {
        let started = self.ms();
        let mut request = self
            .http
            .get(format!("{}/v1/blobs/{id}", self.gateway))
            .timeout(Duration::from_secs(60));
        if let Some(range) = &range {
            request = request.header("Range", format!("bytes={}-{}", range.start, range.end - 1));
        }
        let answer = request.send().await;
        let data = blob_bytes(seed);
        let (expected, status) = match &range {
            Some(range) => (&data[range.clone()], 206),
            None => (&data[..], 200),
        };
        let outcome = match answer {
            Ok(r) if r.status().is_success() => {
                let answered = r.status().as_u16();
                match r.bytes().await {
                    Ok(bytes) if answered == status && bytes[..] == *expected => Outcome::Ok,
                    Ok(_) => Outcome::WrongBytes,
                    Err(_) => Outcome::NoAnswer,
                }
            }
            Ok(r) if r.status() == 404 => Outcome::NotFound,
            Ok(r) => Outcome::Failed(r.status().as_u16()),
            Err(_) => Outcome::NoAnswer,
        };
        self.record(client, (id, seed), OpKind::Get, outcome, started);
        outcome
    }

    async fn delete(&self, client: usize, id: &str, seed: u64) -> Outcome {
        let started = self.ms();
        let answer = self
            .http
            .delete(format!("{}/v1/blobs/{id}", self.gateway))
            .timeout(Duration::from_secs(60))
            .send()
            .await;
        let outcome = match answer {
            Ok(r) if r.status().is_success() => Outcome::Ok,
            Ok(r) if r.status() == 404 => Outcome::NotFound,
            Ok(r) => Outcome::Failed(r.status().as_u16()),
            Err(_) => Outcome::NoAnswer,
        };
        self.record(client, (id, seed), OpKind::Delete, outcome, started);
        outcome
    }
}

/// The id the fleet (7 shards, the run's segment size) gives these bytes.
fn blob_id(data: &[u8]) -> String {
    let config = crate::codec::EncodingConfig::new(SHARDS).expect("valid");
    crate::codec::BlobEncoder::new(config, SEGMENT_SIZE)
        .expect("valid")
        .encode(data)
        .expect("encodes")
        .0
        .blob_id()
        .to_string()
}

const SHARDS: u16 = 7;
const F: usize = 2;
const SEGMENT_SIZE: u64 = 256 << 10;

/// The seed of the `k`-th new blob of client `client` in the run of
/// `run_seed`: no two clients' blobs share a seed (nor, but by chance of
/// the bytes, an id), however long the run, so every blob's history is
/// one client's and its promises are checked in full (a blob two clients
/// write is only checked for wrong bytes).
fn fresh_blob_seed(run_seed: u64, client: usize, k: u64) -> u64 {
    let run = run_seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    run ^ ((client as u64 + 1) << 48) ^ (k & ((1 << 48) - 1))
}

/// One client: puts its own blobs, reads and deletes them, sometimes
/// stores a deleted one's bytes again.
async fn client(run: Arc<Run>, index: usize, run_seed: u64, until: Instant) {
    let mut random = Random::new(run_seed.wrapping_add(index as u64 + 1));
    let mut blobs: Vec<(String, u64)> = Vec::new();
    let mut deleted: Vec<(String, u64)> = Vec::new();
    let mut fresh = 0u64;
    while Instant::now() < until {
        match random.below(20) {
            0..=8 => {
                fresh += 1;
                let blob_seed = fresh_blob_seed(run_seed, index, fresh);
                if let Some(id) = run.put(index, blob_seed).await {
                    blobs.push((id, blob_seed));
                }
            }
            9..=15 if !blobs.is_empty() => {
                let (id, blob_seed) = blobs[random.below(blobs.len() as u64) as usize].clone();
                let len = blob_bytes(blob_seed).len() as u64;
                let range = (len > 0 && random.below(2) == 0).then(|| {
                    let start = random.below(len);
                    let end = start + 1 + random.below((len - start).min(300_000));
                    start as usize..end as usize
                });
                run.get(index, &id, blob_seed, range).await;
            }
            16..=18 if !blobs.is_empty() => {
                let at = random.below(blobs.len() as u64) as usize;
                let (id, blob_seed) = blobs[at].clone();
                if run.delete(index, &id, blob_seed).await == Outcome::Ok {
                    deleted.push(blobs.remove(at));
                }
            }
            19 if !deleted.is_empty() => {
                let (_, blob_seed) = deleted.remove(random.below(deleted.len() as u64) as usize);
                if let Some(id) = run.put(index, blob_seed).await {
                    blobs.push((id, blob_seed));
                }
            }
            _ => {}
        }
    }
}

/// The fleet's nodes as its status shows them: name -> pid.
async fn node_pids(run: &Run) -> BTreeMap<String, i32> {
    let Ok(response) = run
        .http
        .get(format!("{}/v1/status", run.gateway))
        .timeout(Duration::from_secs(10))
        .send()
        .await
    else {
        return BTreeMap::new();
    };
    let status: serde_json::Value = response.json().await.unwrap_or_default();
    super::nodes::node_pids(&status)
}

async fn status(run: &Run) -> serde_json::Value {
    match run
        .http
        .get(format!("{}/v1/status", run.gateway))
        .timeout(Duration::from_secs(10))
        .send()
        .await
    {
        Ok(response) => response.json().await.unwrap_or_default(),
        Err(_) => serde_json::Value::Null,
    }
}

/// Whether the status shows every node ready and every blob Healthy, from
/// inventories read at or after `since_ms` (Unix milliseconds): a status
/// observed earlier may miss the last writes.
fn healed_since(status: &serde_json::Value, since_ms: u64) -> bool {
    status["observed_at_ms"]
        .as_u64()
        .is_some_and(|at| at >= since_ms)
        && healed(status)
}

/// How long healing may go without a blob or node getting better.
const HEAL_STALL: Duration = Duration::from_secs(60);
/// How long healing may take at most, however it progresses.
const HEAL_MAX: Duration = Duration::from_secs(900);

/// Whether healing keeps going: it may take as long as the repairs keep
/// lowering what is not healed yet (which grows with the blobs a wiped
/// node held), up to `HEAL_MAX`; it has stopped when that count has not
/// fallen for `HEAL_STALL`. A count that rises (a node killed in the last
/// instant of the run comes back wiped, and what it held shows missing
/// only then) starts a new `HEAL_STALL` from there.
struct HealProgress {
    start: Instant,
    /// The count last observed.
    last: usize,
    /// The lowest count since it last rose, and when it was first seen.
    lowest: usize,
    lowest_at: Instant,
}

impl HealProgress {
    fn new(start: Instant) -> Self {
        Self {
            start,
            last: usize::MAX,
            lowest: usize::MAX,
            lowest_at: start,
        }
    }

    /// Takes the count of what is not healed at `now`; why healing is
    /// over without being done, if it is.
    fn observe(&mut self, unhealed: usize, now: Instant) -> Option<String> {
        if unhealed > self.last || unhealed < self.lowest {
            self.lowest = unhealed;
            self.lowest_at = now;
        }
        self.last = unhealed;
        if now.duration_since(self.start) > HEAL_MAX {
            return Some(format!(
                "the fleet did not heal within {} s",
                HEAL_MAX.as_secs()
            ));
        }
        (now.duration_since(self.lowest_at) > HEAL_STALL).then(|| {
            format!(
                "the fleet stopped healing: {} blobs or nodes not healed, none more for {} s",
                self.lowest,
                HEAL_STALL.as_secs()
            )
        })
    }
}

/// Blobs not Healthy plus nodes not ready in `status`.
fn unhealed(status: &serde_json::Value) -> usize {
    let count = |key: &str, field: &str, good: &str| {
        status[key]
            .as_array()
            .map_or(0, |items| items.iter().filter(|i| i[field] != good).count())
    };
    count("blobs", "health", "Healthy") + count("nodes", "state", "ready")
}

/// The nodes and the first blobs not healed, for a violation's text.
fn unhealed_summary(status: &serde_json::Value) -> String {
    let nodes: Vec<String> = status["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["state"] != "ready")
        .map(|n| format!("{} {}", n["name"], n["state"]))
        .collect();
    let blobs: Vec<&serde_json::Value> = status["blobs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| b["health"] != "Healthy")
        .collect();
    let first: Vec<String> = blobs.iter().take(5).map(|b| b.to_string()).collect();
    format!(
        "nodes not ready: [{}]; {} blobs not Healthy, the first: {}",
        nodes.join(", "),
        blobs.len(),
        first.join(" ")
    )
}

fn now_ms() -> u64 {
    crate::blob_state::now_nanos() / 1_000_000
}

fn healed(status: &serde_json::Value) -> bool {
    let ready = status["nodes"]
        .as_array()
        .is_some_and(|nodes| nodes.iter().all(|n| n["state"] == "ready"));
    let healthy = status["blobs"]
        .as_array()
        .is_some_and(|blobs| blobs.iter().all(|b| b["health"] == "Healthy"));
    ready && healthy
}

/// Whether `status`, observed after `killed_at_ms`, shows node `name`
/// running again (a pid other than `killed_pid`) and ready.
fn back_after_kill(
    status: &serde_json::Value,
    name: &str,
    killed_pid: i32,
    killed_at_ms: u64,
) -> bool {
    let fresh = status["observed_at_ms"]
        .as_u64()
        .is_some_and(|at| at > killed_at_ms);
    fresh
        && status["nodes"].as_array().into_iter().flatten().any(|n| {
            n["name"] == name
                && n["state"] == "ready"
                && n["pid"]
                    .as_u64()
                    .is_some_and(|pid| pid as i32 != killed_pid)
        })
}

fn signal(pid: i32, signal: i32) {
    // SAFETY: a signal to a node process of the fleet this run started.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// The fault driver: at random moments, with at most f nodes faulty at
/// once (stopped, killed moments ago, or wiped and not yet healed), kills,
/// stops or wipes a node; resumes stopped ones after a while.
async fn faults(run: Arc<Run>, data_dir: PathBuf, seed: u64, until: Instant) -> Faults {
    let mut random = Random::new(seed ^ 0xfa17);
    let mut done = Faults::default();
    let mut stopped: BTreeMap<String, (i32, Instant)> = BTreeMap::new();
    // Killed nodes, with their pid and when: faulty until a status seen
    // after the kill shows them restarted and ready.
    let mut killed: BTreeMap<String, (i32, u64)> = BTreeMap::new();
    let mut wiped: BTreeSet<String> = BTreeSet::new();
    let mut wiped_at_ms = 0;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(300 + random.below(1200))).await;
        let now = Instant::now();
        for (name, (pid, resume_at)) in stopped.clone() {
            if now >= resume_at {
                signal(pid, libc::SIGCONT);
                stopped.remove(&name);
            }
        }
        let seen = status(&run).await;
        killed.retain(|name, (pid, at_ms)| !back_after_kill(&seen, name, *pid, *at_ms));
        if !wiped.is_empty() && healed_since(&seen, wiped_at_ms) {
            wiped.clear();
        }
        let faulty: BTreeSet<String> = stopped
            .keys()
            .chain(killed.keys())
            .chain(wiped.iter())
            .cloned()
            .collect();
        if faulty.len() >= F {
            continue;
        }
        let pids = node_pids(&run).await;
        let candidates: Vec<(&String, &i32)> = pids
            .iter()
            .filter(|(name, _)| !faulty.contains(*name))
            .collect();
        if candidates.is_empty() {
            continue;
        }
        let (name, pid) = candidates[random.below(candidates.len() as u64) as usize];
        let (name, pid) = (name.clone(), *pid);
        match random.below(10) {
            0..=3 => {
                signal(pid, libc::SIGSTOP);
                let resume = now + Duration::from_millis(500 + random.below(3000));
                stopped.insert(name, (pid, resume));
                done.stops += 1;
            }
            4..=7 => {
                signal(pid, libc::SIGKILL);
                killed.insert(name, (pid, now_ms()));
                done.kills += 1;
            }
            _ => {
                wiped_at_ms = now_ms();
                wipe(&data_dir.join(&name), pid).await;
                wiped.insert(name);
                done.wipes += 1;
            }
        }
    }
    for (pid, _) in stopped.values() {
        signal(*pid, libc::SIGCONT);
    }
    done
}

/// Kills a node and empties its data directory; the loop restarts it on
/// the empty one.
async fn wipe(node_dir: &Path, pid: i32) {
    let data = node_dir.join("data");
    let aside = node_dir.join("data.wiped");
    // A file where the directory was keeps restarts failing meanwhile.
    if std::fs::rename(&data, &aside).is_ok() {
        let _ = std::fs::write(&data, b"wiped");
    }
    signal(pid, libc::SIGKILL);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = std::fs::remove_dir_all(&aside);
    let _ = std::fs::remove_file(&data);
}

/// Whether some node holds data of `id` (beyond a tombstone).
fn held(data_dir: &Path, id: &str) -> bool {
    (0..SHARDS).any(|i| {
        data_dir
            .join(format!("node-{i}"))
            .join("data")
            .join("blobs")
            .join(id)
            .exists()
    })
}

/// What each node holds of blob `id`: its files below the blob's
/// directory, and whether the node has its tombstone.
fn holdings(data_dir: &Path, id: &str) -> String {
    let mut nodes = Vec::new();
    for i in 0..SHARDS {
        let data = data_dir.join(format!("node-{i}")).join("data");
        let dir = data.join("blobs").join(id);
        if !dir.exists() {
            continue;
        }
        let mut files: Vec<String> = walk_files(&dir)
            .iter()
            .filter_map(|f| f.strip_prefix(&dir).ok().map(|p| p.display().to_string()))
            .collect();
        files.sort();
        let tombstone = data.join("tombstones").join(id).exists();
        nodes.push(format!(
            "node-{i} [{}]{}",
            files.join(" "),
            if tombstone { " with its tombstone" } else { "" }
        ));
    }
    nodes.join("; ")
}

/// Every file below `dir` (none when it does not exist).
fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk_files(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// A spawned task aborted when dropped: the clients and the fault driver
/// end with the run, also when it is interrupted.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs the fleet, the clients and the faults; then heals and checks.
/// Once `stop` is requested it resumes every node, stops the fleet,
/// removes its files and returns [`super::Interrupted`] (no history
/// written).
pub async fn run(
    options: &FaultRunOptions,
    mut stop: super::StopRequest,
    log: impl Fn(&str),
) -> anyhow::Result<FaultRunReport> {
    let work = tempfile::tempdir()?;
    let data_dir = work.path().join("fleet");
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<(String, PathBuf)>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let config = crate::dev::DevConfig {
        shards: SHARDS,
        nodes: SHARDS as usize,
        segment_size: SEGMENT_SIZE,
        period: Duration::from_millis(200),
        scrub_interval_secs: 0,
        node_timeout_secs: 2.0,
        staged_ttl_secs: 5,
        max_uploads: options.clients.max(1) * 2,
        ..crate::dev::DevConfig::new(data_dir.clone(), options.exe.clone())
    };
    let fleet = tokio::spawn(crate::dev::run(
        config,
        async move {
            let _ = stop_rx.await;
        },
        move |endpoints| {
            let _ = ready_tx.send((endpoints.gateway.clone(), endpoints.token.clone()));
        },
    ));
    let started = super::until_stopped(&mut stop, async {
        ready_rx
            .await
            .map_err(|_| anyhow::anyhow!("the fleet did not start"))
    })
    .await;
    let connected = started
        .and_then(|(gateway, token)| Ok((crate::dev::authorized_client(&token, None)?, gateway)));
    let (http, gateway) = match connected {
        Ok(connected) => connected,
        Err(e) => {
            let _ = stop_tx.send(());
            let _ = fleet.await;
            return Err(e);
        }
    };
    let run = Arc::new(Run {
        http,
        gateway,
        start: Instant::now(),
        ops: Mutex::new(Vec::new()),
    });
    let result = super::until_stopped(&mut stop, drive(&run, options, &data_dir, &log)).await;
    if result.is_err() {
        // Nodes the driver left stopped: resumed, so they stop at once.
        super::nodes::resume_all(&run.http, &run.gateway).await;
    }
    let _ = stop_tx.send(());
    let _ = fleet.await;
    let mut report = result?;
    if let Some(path) = &options.history {
        let ops = run.ops.lock().expect("not poisoned");
        let lines: Vec<String> = ops
            .iter()
            .map(|op| serde_json::to_string(op).expect("serializable"))
            .collect();
        std::fs::write(path, lines.join("\n") + "\n")?;
    }
    report.seed = options.seed;
    Ok(report)
}

async fn drive(
    run: &Arc<Run>,
    options: &FaultRunOptions,
    data_dir: &Path,
    log: &impl Fn(&str),
) -> anyhow::Result<FaultRunReport> {
    // Wait for every node before the first operation.
    let start = Instant::now();
    while !healed(&status(run).await) {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(60),
            "the fleet never became ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let until = Instant::now()
        .checked_add(options.duration)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "a run of {} s is longer than this clock counts",
                options.duration.as_secs()
            )
        })?;
    log(&format!(
        "{} clients and a fault driver for {:.0} s (seed {})",
        options.clients,
        options.duration.as_secs_f64(),
        options.seed
    ));
    let clients: Vec<_> = (0..options.clients)
        .map(|i| AbortOnDrop(tokio::spawn(client(run.clone(), i, options.seed, until))))
        .collect();
    let mut driver = AbortOnDrop(tokio::spawn(faults(
        run.clone(),
        data_dir.to_path_buf(),
        options.seed,
        until,
    )));
    for mut c in clients {
        (&mut c.0).await?;
    }
    let faults = (&mut driver.0).await?;
    let seconds = run.start.elapsed().as_secs_f64();
    log(&format!(
        "faults: {} kills, {} stops, {} wipes; healing",
        faults.kills, faults.stops, faults.wipes
    ));

    let mut violations = Vec::new();
    let heal_start = Instant::now();
    let clients_ended_ms = now_ms();
    let mut progress = HealProgress::new(heal_start);
    loop {
        let s = status(run).await;
        if healed_since(&s, clients_ended_ms) {
            break;
        }
        let now = Instant::now();
        if let Some(stop) = progress.observe(unhealed(&s), now) {
            violations.push(format!("{stop}: {}", unhealed_summary(&s)));
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let heal_seconds = heal_start.elapsed().as_secs_f64();

    let ops = run.ops.lock().expect("not poisoned").clone();
    let histories = check::histories(&ops);
    let mut expected = BTreeMap::new();
    for (blob, history) in &histories {
        let (expect, during) = check::walk(history);
        violations.extend(during);
        expected.insert(blob.to_string(), expect);
    }
    let seeds = seeds_of(&ops);
    // Pieces of blobs that are not visible go within the staging TTL.
    let settle = Instant::now();
    loop {
        let listed = listed_ids(&status(run).await);
        let lingering = expected
            .iter()
            .filter(|(id, e)| check::must_go(**e, listed.contains(*id)) && held(data_dir, id))
            .count();
        if lingering == 0 || settle.elapsed() > Duration::from_secs(30) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The listing must come from inventories read after the settling.
    let settled_ms = now_ms();
    let mut s = status(run).await;
    while s["observed_at_ms"]
        .as_u64()
        .is_none_or(|at| at < settled_ms)
        && settle.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
        s = status(run).await;
    }
    let listed = listed_ids(&s);
    for id in listed.iter().filter(|id| !expected.contains_key(*id)) {
        violations.push(format!("{id} is listed though no client ever wrote it"));
    }
    for (id, expect) in &expected {
        let read = run.get(usize::MAX, id, seeds[id], None).await;
        let seen = Final {
            read,
            listed: listed.contains(id),
            held: held(data_dir, id),
        };
        let found = check::check_final(id, *expect, seen);
        if !found.is_empty() && seen.held {
            // Where the pieces are says which path left them.
            violations.push(format!("{id} is held: {}", holdings(data_dir, id)));
        }
        violations.extend(found);
    }
    let mut operations = BTreeMap::new();
    for op in ops.iter().filter(|op| op.client != usize::MAX) {
        let outcome = match op.outcome {
            Outcome::Failed(code) => format!("failed {code}"),
            other => format!("{other:?}").to_lowercase(),
        };
        *operations
            .entry(format!("{:?} {outcome}", op.kind).to_lowercase())
            .or_insert(0) += 1;
    }
    Ok(FaultRunReport {
        seconds,
        seed: options.seed,
        operations,
        faults,
        blobs_checked: expected.len(),
        heal_seconds,
        violations,
    })
}

/// The ids of the blobs `status` lists.
fn listed_ids(status: &serde_json::Value) -> BTreeSet<String> {
    status["blobs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| b["id"].as_str().map(str::to_string))
        .collect()
}

/// The seed of every blob in the history (its bytes follow from it).
fn seeds_of(ops: &[Op]) -> BTreeMap<String, u64> {
    ops.iter().map(|op| (op.blob.clone(), op.seed)).collect()
}

/// The report as text.
pub fn render(report: &FaultRunReport) -> String {
    let mut out = format!(
        "fault run: {:.0} s, seed {}\n  operations: {}\n  faults: {} kills, {} stops, {} wipes\n  blobs checked after healing: {} (healed in {:.1} s)\n  violations: {}\n",
        report.seconds,
        report.seed,
        report
            .operations
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", "),
        report.faults.kills,
        report.faults.stops,
        report.faults.wipes,
        report.blobs_checked,
        report.heal_seconds,
        report.violations.len()
    );
    for v in &report.violations {
        out.push_str(&format!("    {v}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_two_clients_ever_write_a_blob_of_the_same_seed() {
        for run_seed in [0, 1, 1_796_648_118, u64::MAX] {
            let mut seen = std::collections::HashSet::new();
            for client in 0..8 {
                for k in (1..=20_000).chain([1 << 20, 1 << 40]) {
                    assert!(
                        seen.insert(fresh_blob_seed(run_seed, client, k)),
                        "run {run_seed}: client {client}'s blob {k} repeats a seed"
                    );
                }
            }
        }
    }

    #[test]
    fn healing_may_go_on_while_it_progresses_and_stops_when_it_stalls() {
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        let mut progress = HealProgress::new(start);
        // Slow but steady: 4000 blobs healed 30 at a time every 5 s, 670 s
        // in all.
        for (step, left) in (0..).zip((1..=4000).rev().step_by(30)) {
            assert_eq!(progress.observe(left, at(step * 5)), None);
        }
        // Then nothing moves for a minute.
        let mut stalled = HealProgress::new(start);
        assert_eq!(stalled.observe(100, at(10)), None);
        assert_eq!(stalled.observe(100, at(70)), None);
        assert!(stalled
            .observe(100, at(71))
            .is_some_and(|why| why.contains("stopped healing: 100")));
        // A node killed at the last instant comes back wiped: the count
        // rises, and falling from there is progress again, for a minute.
        let mut revealed = HealProgress::new(start);
        assert_eq!(revealed.observe(7, at(0)), None);
        assert_eq!(revealed.observe(2272, at(5)), None);
        assert_eq!(
            revealed.observe(900, at(64)),
            None,
            "fell within a minute of the rise"
        );
        assert_eq!(revealed.observe(900, at(124)), None);
        assert!(revealed
            .observe(900, at(125))
            .is_some_and(|why| why.contains("stopped healing: 900")));
        // Progress that never ends is bounded too.
        let mut endless = HealProgress::new(start);
        for secs in 0..=900 {
            assert_eq!(endless.observe(10_000 - secs as usize, at(secs)), None);
        }
        assert!(endless
            .observe(1, at(901))
            .is_some_and(|why| why.contains("within 900 s")));
    }

    #[test]
    fn what_is_not_healed_counts_unhealthy_blobs_and_nodes_not_ready() {
        let status = serde_json::json!({
            "nodes": [{"name": "node-0", "state": "ready"}, {"name": "node-1", "state": "not answering"}],
            "blobs": [{"id": "a", "health": "Healthy"}, {"id": "b", "health": "Degraded"}, {"id": "c", "health": "AtRisk"}],
        });
        assert_eq!(unhealed(&status), 3);
        let summary = unhealed_summary(&status);
        assert!(summary.contains("node-1") && summary.contains("2 blobs not Healthy"));
        assert!(!summary.contains("\"a\""), "{summary}");
    }

    #[test]
    fn a_killed_node_is_back_only_once_a_later_status_shows_it_restarted_and_ready() {
        let status = |at: u64, pid: u64, state: &str| {
            serde_json::json!({
                "observed_at_ms": at,
                "nodes": [{"name": "node-1", "pid": pid, "state": state}],
            })
        };
        assert!(back_after_kill(
            &status(2000, 42, "ready"),
            "node-1",
            41,
            1000
        ));
        assert!(
            !back_after_kill(&status(900, 42, "ready"), "node-1", 41, 1000),
            "observed before the kill"
        );
        assert!(
            !back_after_kill(&status(2000, 41, "ready"), "node-1", 41, 1000),
            "the killed process"
        );
        assert!(
            !back_after_kill(&status(2000, 42, "not answering"), "node-1", 41, 1000),
            "not ready yet"
        );
        assert!(
            !back_after_kill(&status(2000, 42, "ready"), "node-2", 41, 1000),
            "another node"
        );
        assert!(
            !back_after_kill(&serde_json::Value::Null, "node-1", 41, 1000),
            "no status"
        );
    }
}
