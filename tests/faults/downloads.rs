//! `redstuff get` into a file: a download cut off midway goes on from
//! where it stopped; one that cannot be finished fails with a clear error
//! and leaves the file it was to replace as it was, with no half file
//! beside it.

use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::process::Command;

/// Serves `cuts.len()` GETs of a blob of `len` bytes (honouring `Range:
/// bytes=S-` with 206), each announcing what it serves and sending bytes
/// only up to the absolute offset `cuts[i]` before closing the connection;
/// returns the URL and the server, which ends with the requests' `Range`
/// headers.
fn cutting_server(len: usize, cuts: Vec<usize>) -> (String, std::thread::JoinHandle<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let server = std::thread::spawn(move || {
        let mut ranges = Vec::new();
        for cut in cuts {
            let (mut socket, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut byte = [0u8; 1];
            while !request.ends_with(b"\r\n\r\n") {
                socket.read_exact(&mut byte).unwrap();
                request.push(byte[0]);
            }
            let request = String::from_utf8(request).unwrap().to_ascii_lowercase();
            let range = request
                .lines()
                .find_map(|l| l.strip_prefix("range: "))
                .map(str::to_string);
            let start: usize = range
                .as_deref()
                .and_then(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok())
                .unwrap_or(0);
            ranges.push(range.clone().unwrap_or_default());
            let head = match range {
                None => format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {len}\r\n\r\n"
                ),
                Some(_) => format!(
                    "HTTP/1.1 206 Partial Content\r\ncontent-type: application/octet-stream\r\n\
                     content-range: bytes {start}-{}/{len}\r\ncontent-length: {}\r\n\r\n",
                    len - 1,
                    len - start
                ),
            };
            socket.write_all(head.as_bytes()).unwrap();
            let body: Vec<u8> = (start..cut.max(start)).map(|i| (i % 251) as u8).collect();
            // The client may hang up first; what it received is what counts.
            let _ = socket.write_all(&body);
        }
        ranges
    });
    (address, server)
}

fn get_into(out: &std::path::Path, gateway: &str, retries: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_redstuff"))
        .args(["get", "some-blob", "-o", out.to_str().unwrap()])
        .args(["--gateway", gateway, "--token", "t", "--retries", retries])
        .env("REDSTUFF_LOG", "warn")
        .output()
        .unwrap()
}

#[test]
fn a_download_cut_off_midway_fails_and_leaves_the_old_file_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model.bin");
    std::fs::write(&out, b"the previous version").unwrap();
    // Cut at 80 MiB, and the retry gets nothing further.
    let (gateway, server) = cutting_server(96 << 20, vec![80 << 20, 80 << 20]);
    let get = get_into(&out, &gateway, "1");
    let ranges = server.join().unwrap();
    assert_eq!(
        ranges,
        ["", "bytes=83886080-"],
        "the retry asks for the rest"
    );
    let stderr = String::from_utf8_lossy(&get.stderr);
    assert!(!get.status.success(), "{get:?}");
    assert!(
        stderr.contains("download interrupted after 83886080")
            || stderr.contains("download ended after 83886080"),
        "{stderr}"
    );
    assert!(stderr.contains("gave up after 2 attempts"), "{stderr}");
    assert!(
        stderr.contains(&format!("of {} bytes", 96 << 20)),
        "names the size: {stderr}"
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"the previous version");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        left,
        vec![std::ffi::OsString::from("model.bin")],
        "no half file"
    );
}

#[test]
fn a_download_cut_off_midway_goes_on_from_where_it_stopped_and_the_file_is_whole() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model.bin");
    let len = 40 << 20;
    // Cut twice, at 8 MiB and again at 20, then served to the end.
    let (gateway, server) = cutting_server(len, vec![8 << 20, 20 << 20, len]);
    let get = get_into(&out, &gateway, "2");
    let ranges = server.join().unwrap();
    assert!(get.status.success(), "{get:?}");
    assert_eq!(ranges, ["", "bytes=8388608-", "bytes=20971520-"]);
    let stderr = String::from_utf8_lossy(&get.stderr);
    assert_eq!(stderr.matches("trying again").count(), 2, "{stderr}");
    let expected: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    assert!(
        std::fs::read(&out).unwrap() == expected,
        "the file is the blob"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("model.bin")]);
}
