//! A real PostgreSQL server for a test: initdb into a temporary directory,
//! started on a free loopback port, stopped (and its files removed) when
//! dropped. The binaries come from PATH or Debian's
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

impl Postgres {
    /// Starts a fresh server.
    pub fn start() -> Self {
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
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -k {} -c fsync=on",
            dir.path().display()
        );
        let output = as_postgres(&bin, "pg_ctl")
            .args(["-w", "-t", "60", "-l"])
            .arg(dir.path().join("log"))
            .args(["-o", &options, "-D"])
            .arg(&data)
            .arg("start")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "pg_ctl start: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let url = format!("postgresql://redstuff@127.0.0.1:{port}/postgres");
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "PostgreSQL did not listen"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { dir, bin, url }
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
