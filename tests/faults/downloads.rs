//! `redstuff get` into a file: a download cut off midway fails with a
//! clear error and leaves the file it was to replace as it was, with no
//! half file beside it.

use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::process::Command;

/// Serves one GET: headers announcing `announced` bytes, then `sent` bytes,
/// then the connection closes.
fn cut_off_server(announced: usize, sent: usize) -> (String, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let server = std::thread::spawn(move || {
        let (mut socket, _) = listener.accept().unwrap();
        let mut request = Vec::new();
        let mut byte = [0u8; 1];
        while !request.ends_with(b"\r\n\r\n") {
            socket.read_exact(&mut byte).unwrap();
            request.push(byte[0]);
        }
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {announced}\r\n\r\n"
        );
        socket.write_all(head.as_bytes()).unwrap();
        let body: Vec<u8> = (0..sent).map(|i| (i % 251) as u8).collect();
        // The client may hang up first; what it received is what counts.
        let _ = socket.write_all(&body);
    });
    (address, server)
}

#[test]
fn a_download_cut_off_midway_fails_and_leaves_the_old_file_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model.bin");
    std::fs::write(&out, b"the previous version").unwrap();
    let (gateway, server) = cut_off_server(96 << 20, 80 << 20);
    let get = Command::new(env!("CARGO_BIN_EXE_redstuff"))
        .args(["get", "some-blob", "-o", out.to_str().unwrap()])
        .args(["--gateway", &gateway, "--token", "t"])
        .env("REDSTUFF_LOG", "warn")
        .output()
        .unwrap();
    server.join().unwrap();
    let stderr = String::from_utf8_lossy(&get.stderr);
    assert!(!get.status.success(), "{get:?}");
    assert!(
        stderr.contains("download interrupted after") || stderr.contains("download ended after"),
        "{stderr}"
    );
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
