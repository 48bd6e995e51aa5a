//! What every scenario needs: the real clients (kubectl, helm) on the
//! cluster the run was started for, bounded waits, port-forwards, and the
//! cluster's gateway with its user token.

use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The contexts the e2e suite may run against: the local cluster's and
/// kind's (tests/e2e/kind.sh). Any other needs REDSTUFF_E2E_CONTEXT.
const KNOWN_CONTEXTS: [&str; 2] = ["redstuff-local", "kind-redstuff-e2e"];

/// Namespace of the Helm release (the operator).
pub const RELEASE_NS: &str = "redstuff-e2e-system";
/// The operator's leader Lease (the chart names it after the release).
pub const LEASE: &str = "redstuff";
/// Namespace of the StorageClusters and Blobs.
pub const NS: &str = "redstuff-e2e";

/// Whether a pod is Ready and not being deleted.
pub fn pod_ready(pod: &Value) -> bool {
    pod["metadata"]["deletionTimestamp"].is_null()
        && pod["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// The run's settings and clients.
pub struct E2e {
    pub kubectl: String,
    pub helm: String,
    pub image: String,
    pub probe_image: String,
    pub root: PathBuf,
}

impl E2e {
    /// From the environment the scripts set; refuses to run against a
    /// cluster it was not started for.
    pub fn from_env() -> anyhow::Result<Self> {
        anyhow::ensure!(
            std::env::var("REDSTUFF_E2E").as_deref() == Ok("1"),
            "the end-to-end suite runs only when asked: REDSTUFF_E2E=1 (scripts/test sets it for \
             the local cluster, tests/e2e/kind.sh for kind)"
        );
        let e2e = Self {
            kubectl: std::env::var("REDSTUFF_E2E_KUBECTL").unwrap_or_else(|_| "kubectl".into()),
            helm: std::env::var("REDSTUFF_E2E_HELM").unwrap_or_else(|_| "helm".into()),
            image: std::env::var("REDSTUFF_E2E_IMAGE").unwrap_or_else(|_| "redstuff:e2e".into()),
            probe_image: std::env::var("REDSTUFF_E2E_PROBE_IMAGE")
                .map_err(|_| anyhow::anyhow!("REDSTUFF_E2E_PROBE_IMAGE names no probe image"))?,
            root: PathBuf::from(env!("CARGO_MANIFEST_DIR")),
        };
        let context = e2e
            .kubectl(&["config", "current-context"])?
            .trim()
            .to_string();
        let allowed = std::env::var("REDSTUFF_E2E_CONTEXT").ok();
        anyhow::ensure!(
            KNOWN_CONTEXTS.contains(&context.as_str()) || allowed.as_deref() == Some(&context),
            "KUBECONFIG's current context is {context:?}, not a cluster made for this suite \
             ({KNOWN_CONTEXTS:?}); set REDSTUFF_E2E_CONTEXT={context} to run against it anyway"
        );
        Ok(e2e)
    }

    fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut command = Command::new(program);
        command.args(args).current_dir(&self.root);
        command
    }

    /// Runs kubectl; its stdout, or an error with its stderr.
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        run(
            self.command(&self.kubectl, args),
            &format!("kubectl {}", args.join(" ")),
        )
    }

    /// Runs kubectl with `input` on stdin.
    pub fn kubectl_stdin(&self, args: &[&str], input: &str) -> anyhow::Result<String> {
        let mut child = self
            .command(&self.kubectl, args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(input.as_bytes())?;
        let out = child.wait_with_output()?;
        anyhow::ensure!(
            out.status.success(),
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Applies a manifest (server-side).
    pub fn apply(&self, manifest: &str) -> anyhow::Result<String> {
        self.kubectl_stdin(
            &["apply", "--server-side", "--force-conflicts", "-f", "-"],
            manifest,
        )
    }

    /// An object as JSON; `None` when it does not exist.
    pub fn get(&self, kind: &str, name: &str, namespace: &str) -> anyhow::Result<Option<Value>> {
        let out = self
            .command(
                &self.kubectl,
                &["-n", namespace, "get", kind, name, "-o", "json"],
            )
            .output()?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            if stderr.contains("NotFound") || stderr.contains("not found") {
                return Ok(None);
            }
            anyhow::bail!("kubectl get {kind} {name}: {stderr}");
        }
        Ok(Some(serde_json::from_slice(&out.stdout)?))
    }

    /// Every object of a kind (with a label selector) as JSON items.
    pub fn list(&self, kind: &str, namespace: &str, selector: &str) -> anyhow::Result<Vec<Value>> {
        let mut args = vec!["-n", namespace, "get", kind, "-o", "json"];
        if !selector.is_empty() {
            args.extend(["-l", selector]);
        }
        let list: Value = serde_json::from_str(&self.kubectl(&args)?)?;
        Ok(list["items"].as_array().cloned().unwrap_or_default())
    }

    /// `kubectl get KIND` as people see it (printed), checked to start
    /// with the columns `leading` and to have the columns `also`.
    pub fn table(
        &self,
        namespace: &str,
        kind: &str,
        leading: &[&str],
        also: &[&str],
    ) -> anyhow::Result<String> {
        let table = self.kubectl(&["-n", namespace, "get", kind])?;
        eprintln!("{table}");
        let header: Vec<&str> = table
            .lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        anyhow::ensure!(
            header.starts_with(leading) && also.iter().all(|c| header.contains(c)),
            "kubectl get {kind} columns: {header:?}"
        );
        Ok(table)
    }

    /// Runs helm.
    pub fn helm(&self, args: &[&str]) -> anyhow::Result<String> {
        run(
            self.command(&self.helm, args),
            &format!("helm {}", args.join(" ")),
        )
    }

    /// Merge-patches object `kind`/`name` of the test namespace with
    /// `patch` (JSON); kubectl's output, or its refusal as the error.
    pub fn merge_patch(&self, kind: &str, name: &str, patch: &str) -> anyhow::Result<String> {
        self.kubectl(&["-n", NS, "patch", kind, name, "--type=merge", "-p", patch])
    }

    /// A port-forward to a Service.
    pub fn port_forward(
        &self,
        namespace: &str,
        service: &str,
        port: u16,
    ) -> anyhow::Result<PortForward> {
        PortForward::start(&self.kubectl, namespace, service, port)
    }

    /// A port-forward to one pod.
    pub fn port_forward_pod(
        &self,
        namespace: &str,
        pod: &str,
        port: u16,
    ) -> anyhow::Result<PortForward> {
        PortForward::start_pod(&self.kubectl, namespace, pod, port)
    }

    /// The gateway of cluster `name`, and a client sending its user token.
    pub fn gateway(&self, name: &str) -> anyhow::Result<(PortForward, reqwest::Client)> {
        let secret = self
            .get("secret", &format!("{name}-gateway-token"), NS)?
            .ok_or_else(|| anyhow::anyhow!("no user-token Secret for {name}"))?;
        let encoded = secret["data"]["token"].as_str().unwrap_or_default();
        use base64::Engine as _;
        let text = base64::engine::general_purpose::STANDARD.decode(encoded)?;
        let token = redstuff::auth::parse_tokens(&String::from_utf8_lossy(&text))
            .into_iter()
            .next()
            .ok_or_else(|| anyhow::anyhow!("the user-token Secret holds no token"))?;
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {token}").parse()?,
        );
        let http = self
            .gateway_client_builder(name)?
            .default_headers(headers)
            .timeout(Duration::from_secs(60))
            .build()?;
        let mut forward = self.port_forward(NS, &format!("{name}-gateway"), 7700)?;
        // A gateway serving TLS is called by https (its certificate covers
        // 127.0.0.1 for a port-forward).
        if self.gateway_ca(name)?.is_some() {
            forward.url = forward.url.replacen("http://", "https://", 1);
        }
        Ok((forward, http))
    }

    /// A client builder for the gateway of cluster `name`: trusting the CA
    /// of its Secret when it serves TLS, sending no token.
    pub fn gateway_client_builder(&self, name: &str) -> anyhow::Result<reqwest::ClientBuilder> {
        let ca = match self.gateway_ca(name)? {
            Some(pem) => Some(redstuff::tls::TrustedCa::from_pem(
                std::path::Path::new("the gateway's Secret"),
                &pem,
            )?),
            None => None,
        };
        Ok(redstuff::http::client_builder_trusting(ca.as_ref()))
    }

    /// The CA (PEM) clients check the gateway of cluster `name` against,
    /// when it serves TLS: `ca.crt` of its Secret `NAME-gateway-tls`.
    pub fn gateway_ca(&self, name: &str) -> anyhow::Result<Option<Vec<u8>>> {
        let Some(secret) = self.get("secret", &format!("{name}-gateway-tls"), NS)? else {
            return Ok(None);
        };
        use base64::Engine as _;
        let pem = base64::engine::general_purpose::STANDARD
            .decode(secret["data"]["ca.crt"].as_str().unwrap_or_default())?;
        Ok(Some(pem))
    }

    /// Deletes the StorageCluster `name` if it exists, waiting (at most
    /// 120 s) until it is gone.
    pub fn delete_storagecluster(&self, name: &str) -> anyhow::Result<String> {
        self.kubectl(&[
            "-n",
            NS,
            "delete",
            "storagecluster",
            name,
            "--ignore-not-found",
            "--wait=true",
            "--timeout=120s",
        ])
    }

    /// The StorageCluster `name`'s status.
    pub fn cluster_status(&self, name: &str) -> anyhow::Result<Value> {
        Ok(self
            .get("storagecluster", name, NS)?
            .map(|c| c["status"].clone())
            .unwrap_or(Value::Null))
    }

    /// The operator's metrics, from the pod holding the Lease.
    pub fn operator_metrics(&self) -> anyhow::Result<String> {
        self.pod_metrics(RELEASE_NS, &self.leader()?, 8080)
    }

    /// The metrics pod `pod` serves on `port`, through a port-forward.
    pub fn pod_metrics(&self, namespace: &str, pod: &str, port: u16) -> anyhow::Result<String> {
        let forward = PortForward::start_pod(&self.kubectl, namespace, pod, port)?;
        let out = Command::new("curl")
            .args([
                "-fsS",
                "--max-time",
                "10",
                &format!("{}/metrics", forward.url),
            ])
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "metrics of {pod}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The pod holding the operator's Lease.
    pub fn leader(&self) -> anyhow::Result<String> {
        let lease = self
            .get("lease", LEASE, RELEASE_NS)?
            .ok_or_else(|| anyhow::anyhow!("no leader Lease yet"))?;
        lease["spec"]["holderIdentity"]
            .as_str()
            .filter(|h| !h.is_empty())
            .map(str::to_string)
            .ok_or_else(|| anyhow::anyhow!("the Lease has no holder"))
    }

    /// The last Events of the test namespace and the leading operator's
    /// last log lines, or why they could not be read.
    pub fn what_the_cluster_said(&self) -> String {
        let events = self
            .kubectl(&[
                "-n",
                NS,
                "get",
                "events",
                // The operator's Events have an eventTime, no lastTimestamp.
                "--sort-by=.metadata.creationTimestamp",
                "-o",
                "custom-columns=MADE:.metadata.creationTimestamp,TYPE:.type,REASON:.reason,OBJECT:.involvedObject.name,MESSAGE:.message",
            ])
            .unwrap_or_else(|e| format!("{e:#}"));
        let log = self
            .leader()
            .and_then(|leader| self.kubectl(&["-n", RELEASE_NS, "logs", &leader, "--tail=40"]))
            .unwrap_or_else(|e| format!("{e:#}"));
        format!(
            "--- the last Events in {NS}:\n{}\n--- the leading operator's last log lines:\n{log}",
            last_lines(&events, 25)
        )
    }

    /// Sends `signal` to the processes of `pod`'s first container, from
    /// this host (the local cluster's and kind's containers are processes
    /// of this machine, found by the container id in their cgroup); how
    /// many got it.
    pub fn signal_container(
        &self,
        namespace: &str,
        pod: &str,
        signal: &str,
    ) -> anyhow::Result<usize> {
        let object = self
            .get("pod", pod, namespace)?
            .ok_or_else(|| anyhow::anyhow!("no pod {pod}"))?;
        let id = object["status"]["containerStatuses"][0]["containerID"]
            .as_str()
            .and_then(|id| id.split("://").nth(1))
            .filter(|id| id.len() >= 12)
            .ok_or_else(|| anyhow::anyhow!("pod {pod} has no running container"))?
            .to_string();
        let mut signalled = 0;
        for entry in std::fs::read_dir("/proc")?.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let in_container = std::fs::read_to_string(entry.path().join("cgroup"))
                .is_ok_and(|cgroup| cgroup.contains(&id));
            if in_container {
                let status = Command::new("kill")
                    .args(["-s", signal, &pid.to_string()])
                    .status()?;
                signalled += usize::from(status.success());
            }
        }
        anyhow::ensure!(
            signalled > 0,
            "no process of container {id} (pod {pod}) found on this host: run the suite as root on the cluster's host"
        );
        Ok(signalled)
    }

    /// A path of the repository.
    pub fn path(&self, relative: &str) -> PathBuf {
        self.root.join(relative)
    }
}

fn run(mut command: Command, what: &str) -> anyhow::Result<String> {
    let out = command.output()?;
    anyhow::ensure!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Waits (at most `timeout`, checking every second) until `check` gives
/// a value; its last error says why not. A wait of more than 5 s is
/// printed with its length (where a scenario's time goes).
pub async fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let start = Instant::now();
    let mut last = String::new();
    loop {
        match check() {
            Ok(Some(value)) => {
                let waited = start.elapsed();
                if waited > Duration::from_secs(5) {
                    eprintln!("    waited {:.1} s for {what}", waited.as_secs_f64());
                }
                return Ok(value);
            }
            Ok(None) => {}
            Err(e) => last = e.to_string(),
        }
        anyhow::ensure!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}{}",
            if last.is_empty() {
                String::new()
            } else {
                format!(" (last: {last})")
            }
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// `kubectl port-forward` to a Service or pod; ended on drop.
pub struct PortForward {
    child: Child,
    pub url: String,
}

impl PortForward {
    fn start(kubectl: &str, namespace: &str, service: &str, port: u16) -> anyhow::Result<Self> {
        Self::spawn(kubectl, namespace, &format!("svc/{service}"), port)
    }

    fn start_pod(kubectl: &str, namespace: &str, pod: &str, port: u16) -> anyhow::Result<Self> {
        Self::spawn(kubectl, namespace, &format!("pod/{pod}"), port)
    }

    fn spawn(kubectl: &str, namespace: &str, target: &str, port: u16) -> anyhow::Result<Self> {
        let mut child = Command::new(kubectl)
            .args([
                "-n",
                namespace,
                "port-forward",
                "--address",
                "127.0.0.1",
                target,
                &format!(":{port}"),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let mut line = String::new();
        let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
        stdout.read_line(&mut line)?;
        // kubectl writes a line per connection: its stdout must stay open
        // (a Go program writing to a closed stdout dies of SIGPIPE).
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        // "Forwarding from 127.0.0.1:43121 -> 7700"
        let Some(local) = line
            .split_whitespace()
            .find(|w| w.starts_with("127.0.0.1:"))
            .map(str::to_string)
        else {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("kubectl port-forward {target}: {line:?}");
        };
        Ok(Self {
            child,
            url: format!("http://{local}"),
        })
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Deterministic bytes: byte i = (7i + i/251) mod 256 (the probe's /bytes).
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(7) + i / 251) as u8)
        .collect()
}

/// The last `count` lines of `text`.
fn last_lines(text: &str, count: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(count)..].join("\n")
}

/// The manifests of a directory, with their text.
pub fn manifests(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut found: Vec<(PathBuf, String)> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p, text)
        })
        .collect();
    found.sort();
    found
}

/// Records scenarios: each runs, is timed and reported; the run fails at
/// the end if any did, with what the cluster said when each failed.
pub struct Report<'a> {
    e2e: &'a E2e,
    failures: Vec<String>,
    /// Per failed scenario: its namespace's last Events and the leading
    /// operator's last log lines, taken when it failed.
    said: Vec<String>,
}

impl<'a> Report<'a> {
    /// A report of scenarios run on `e2e`.
    pub fn new(e2e: &'a E2e) -> Self {
        Report {
            e2e,
            failures: Vec::new(),
            said: Vec::new(),
        }
    }

    /// Runs one scenario; `required` ones stop the run when they fail.
    pub async fn scenario(
        &mut self,
        name: &str,
        required: bool,
        run: impl std::future::Future<Output = anyhow::Result<()>>,
    ) -> bool {
        eprintln!("\n=== {name}");
        let start = Instant::now();
        let result = run.await;
        let took = start.elapsed().as_secs_f64();
        match result {
            Ok(()) => {
                eprintln!("--- PASS {name} ({took:.1} s)");
                true
            }
            Err(e) => {
                eprintln!("--- FAIL {name} ({took:.1} s): {e:#}");
                self.failures.push(format!("{name}: {e:#}"));
                self.said
                    .push(format!("=== {name}\n{}", self.e2e.what_the_cluster_said()));
                !required
            }
        }
    }

    /// Fails the test if any scenario failed.
    pub fn finish(self) {
        for said in &self.said {
            eprintln!("\n{said}");
        }
        assert!(
            self.failures.is_empty(),
            "{} scenarios failed:\n{}",
            self.failures.len(),
            self.failures.join("\n")
        );
    }
}
