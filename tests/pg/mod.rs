//! A real PostgreSQL server for a test: initdb into a temporary directory,
//! started on a free loopback port (and, for pods of the local cluster, on
//! its node address with a password), stopped (and its files removed)
//! when dropped. The binaries come from PATH or Debian's
//! /usr/lib/postgresql/*/bin (scripts/test installs the package); as root
//! they run as the `postgres` user, since PostgreSQL refuses root.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A running server.
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// `postgresql://redstuff@127.0.0.1:PORT/postgres`.
    pub url: String,
    /// The port it listens on.
    pub port: u16,
}

/// Clients from elsewhere than loopback: they connect to `address` from
/// `network` (CIDR) with the password.
pub struct Remote<'a> {
    pub address: std::net::IpAddr,
    pub network: &'a str,
    pub password: &'a str,
}

fn bin_dir() -> PathBuf {
    let debian = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .find(|bin| bin.join("initdb").exists());
    debian.unwrap_or_else(|| {
        let which = Command::new("sh")
            .args(["-c", "command -v initdb"])
            .output()
            .expect("sh");
        let path = String::from_utf8_lossy(&which.stdout).trim().to_string();
        assert!(
            !path.is_empty(),
            "PostgreSQL is not installed (scripts/test installs it)"
        );
        Path::new(&path).parent().unwrap().to_path_buf()
    })
}

fn as_postgres(bin: &Path, program: &str) -> Command {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let mut command = Command::new("runuser");
        command
            .args(["-u", "postgres", "--"])
            .arg(bin.join(program));
        command
    } else {
        Command::new(bin.join(program))
    }
}

/// Starts the server whose data is under `dir` on `port`, listening on
/// `listen`, and waits until it accepts connections.
fn pg_ctl_start(bin: &Path, dir: &Path, port: u16, listen: &str) {
    let options = format!(
        "-p {port} -c listen_addresses={listen} -k {} -c fsync=on",
        dir.display()
    );
    let output = as_postgres(bin, "pg_ctl")
        .args(["-w", "-t", "60", "-l"])
        .arg(dir.join("log"))
        .args(["-o", &options, "-D"])
        .arg(dir.join("data"))
        .arg("start")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "pg_ctl start: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

impl Postgres {
    /// Starts a fresh server on loopback.
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// Starts a fresh server on loopback and, with `remote`, on its
    /// address too.
    pub fn start_with(remote: Option<Remote<'_>>) -> Self {
        let bin = bin_dir();
        let dir = tempfile::tempdir().unwrap();
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let status = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(status.success());
        }
        let data = dir.path().join("data");
        let output = as_postgres(&bin, "initdb")
            .args(["-U", "redstuff", "--auth=trust", "-E", "UTF8", "-D"])
            .arg(&data)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let listen = remote.as_ref().map_or("127.0.0.1".to_string(), |r| {
            format!("127.0.0.1,{}", r.address)
        });
        // A port free on every address it listens on.
        let port = std::net::TcpListener::bind((
            remote
                .as_ref()
                .map_or(std::net::IpAddr::from([127, 0, 0, 1]), |r| r.address),
            0,
        ))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
        if let Some(remote) = &remote {
            use std::io::Write as _;
            let mut hba = std::fs::OpenOptions::new()
                .append(true)
                .open(data.join("pg_hba.conf"))
                .unwrap();
            writeln!(hba, "host all all {} scram-sha-256", remote.network).unwrap();
        }
        pg_ctl_start(&bin, dir.path(), port, &listen);
        let url = format!("postgresql://redstuff@127.0.0.1:{port}/postgres");
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "PostgreSQL did not listen"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Some(remote) = &remote {
            let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            client
                .batch_execute(&format!(
                    "ALTER USER redstuff PASSWORD '{}'",
                    remote.password.replace('\'', "''")
                ))
                .unwrap();
        }
        Self {
            dir,
            bin,
            url,
            port,
        }
    }

    /// How many rows the S3 index's table holds (none when it is absent).
    pub fn index_rows(&self) -> i64 {
        let mut client = postgres::Client::connect(&self.url, postgres::NoTls).unwrap();
        let exists: bool = client
            .query_one("SELECT to_regclass('redstuff_s3_kv') IS NOT NULL", &[])
            .unwrap()
            .get(0);
        if !exists {
            return 0;
        }
        client
            .query_one("SELECT count(*) FROM redstuff_s3_kv", &[])
            .unwrap()
            .get(0)
    }

    /// Stops the server (fast: clients are told and disconnected).
    pub fn stop(&self) {
        let output = as_postgres(&self.bin, "pg_ctl")
            .args(["-w", "-m", "fast", "-D"])
            .arg(self.dir.path().join("data"))
            .arg("stop")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Starts the stopped server again on loopback, on its data and port.
    pub fn start_again(&self) {
        pg_ctl_start(&self.bin, self.dir.path(), self.port, "127.0.0.1");
    }

    /// Empties the index's table (a fresh index for the next check).
    pub fn truncate(&self) {
        let mut client = postgres::Client::connect(&self.url, postgres::NoTls).unwrap();
        client
            .batch_execute("DROP TABLE IF EXISTS redstuff_s3_kv")
            .unwrap();
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bin, "pg_ctl")
            .args(["-m", "immediate", "-D"])
            .arg(self.dir.path().join("data"))
            .arg("stop")
            .output();
    }
}
