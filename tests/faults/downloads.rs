//! `redstuff get` into a file: a download cut off midway goes on from
//! where it stopped; one that cannot be finished fails with a clear error
//! and leaves the file it was to replace as it was, with no half file
//! beside it.

use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::process::Command;

/// Reads a request's head from `socket`: its `Range` header, if any, and
/// the offset it asks from (0 without one).
fn read_range(socket: &mut std::net::TcpStream) -> (Option<String>, usize) {
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
    let start = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok())
        .unwrap_or(0);
    (range, start)
}

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
            let (range, start) = read_range(&mut socket);
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

/// A blob id (of no blob in particular: the servers here serve any).
const SOME_BLOB: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

fn get_into(out: &std::path::Path, gateway: &str, retries: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_redstuff"))
        .args(["get", SOME_BLOB, "-o", out.to_str().unwrap()])
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

/// A listener that takes connections and never answers (a stopped
/// gateway, a load balancer with nothing behind it); it counts them.
fn silent_gateway() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let taken = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = taken.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept() {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(socket);
        }
    });
    (address, taken)
}

#[test]
fn a_gateway_that_takes_the_connection_and_never_answers_fails_each_command_after_the_stall_time() {
    let (gateway, taken) = silent_gateway();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("upload.bin");
    std::fs::write(&file, vec![5u8; 100_000]).unwrap();
    let out = dir.path().join("download.bin");
    let commands: [Vec<&str>; 3] = [
        vec!["status"],
        vec!["get", SOME_BLOB, "-o", out.to_str().unwrap()],
        vec!["put", file.to_str().unwrap()],
    ];
    for args in commands {
        let output = Command::new(env!("CARGO_BIN_EXE_redstuff"))
            .args(&args)
            .args(["--gateway", &gateway, "--token", "t", "--retries", "1"])
            .args(["--stall-secs", "1"])
            .env("REDSTUFF_LOG", "warn")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}: {stderr}");
        assert!(
            stderr.contains("the gateway gave no answer for 1 s"),
            "{args:?}: {stderr}"
        );
        // A stall is a lost connection: tried again, then given up.
        assert!(
            stderr.contains("gave up after 2 attempts"),
            "{args:?}: {stderr}"
        );
    }
    assert!(!out.exists());
    assert_eq!(taken.load(std::sync::atomic::Ordering::SeqCst), 6);
}

#[test]
fn a_download_that_stops_bringing_bytes_goes_on_from_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model.bin");
    let len = 3 << 20;
    // The first answer sends 1 MiB and then nothing, its connection open;
    // the second sends the rest.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let gateway = format!("http://{}", listener.local_addr().unwrap());
    let server = std::thread::spawn(move || {
        let mut ranges = Vec::new();
        let mut held = Vec::new();
        for stop_at in [1 << 20, len] {
            let (mut socket, _) = listener.accept().unwrap();
            let (range, start) = read_range(&mut socket);
            let head = match &range {
                None => format!("HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {len}\r\n\r\n"),
                Some(_) => format!(
                    "HTTP/1.1 206 Partial Content\r\ncontent-type: application/octet-stream\r\ncontent-range: bytes {start}-{}/{len}\r\n\
                     content-length: {}\r\n\r\n",
                    len - 1,
                    len - start
                ),
            };
            ranges.push(range.unwrap_or_default());
            socket.write_all(head.as_bytes()).unwrap();
            let body: Vec<u8> = (start..stop_at).map(|i| (i % 251) as u8).collect();
            socket.write_all(&body).unwrap();
            held.push(socket);
        }
        ranges
    });
    let output = Command::new(env!("CARGO_BIN_EXE_redstuff"))
        .args(["get", SOME_BLOB, "-o", out.to_str().unwrap()])
        .args(["--gateway", &gateway, "--token", "t", "--stall-secs", "1"])
        .env("REDSTUFF_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("the download brought nothing for 1 s"),
        "{stderr}"
    );
    assert_eq!(server.join().unwrap(), ["", "bytes=1048576-"]);
    let expected: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    assert!(std::fs::read(&out).unwrap() == expected);
}

#[test]
fn a_get_into_a_directory_or_of_what_is_not_a_blob_id_is_refused_before_anything_is_asked() {
    let (gateway, taken) = silent_gateway();
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().to_str().unwrap().to_string();
    let missing = dir.path().join("no-such-dir").join("f.bin");
    let refusals = [
        (vec!["get", SOME_BLOB, "-o", &target], "is a directory"),
        (
            vec!["get", SOME_BLOB, "-o", missing.to_str().unwrap()],
            "does not exist",
        ),
        (vec!["get", "../status", "-o", "-"], "is not a blob id"),
    ];
    for (args, says) in refusals {
        let output = Command::new(env!("CARGO_BIN_EXE_redstuff"))
            .args(&args)
            .args(["--gateway", &gateway, "--token", "t", "--stall-secs", "1"])
            .env("REDSTUFF_LOG", "warn")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    assert_eq!(
        taken.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing asked"
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing written"
    );
}

#[test]
fn a_gateway_that_cannot_be_reached_is_said_with_why() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let output = Command::new(env!("CARGO_BIN_EXE_redstuff"))
        .args(["status", "--retries", "0", "--token", "t"])
        .args(["--gateway", &format!("http://127.0.0.1:{port}")])
        .env("REDSTUFF_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("cannot reach the gateway"), "{stderr}");
    assert!(stderr.contains("Connection refused"), "{stderr}");
}

/// Serves one GET of a `len`-byte blob whose byte `i` is `(i * seed) %
/// 251`: the first `hold_at` bytes at once, the rest once `release` is
/// sent (or dropped); all at once when `hold_at` is `len`.
fn holding_server(
    len: usize,
    seed: usize,
    hold_at: usize,
) -> (
    String,
    std::sync::mpsc::Sender<()>,
    std::thread::JoinHandle<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let (release, released) = std::sync::mpsc::channel::<()>();
    let server = std::thread::spawn(move || {
        let (mut socket, _) = listener.accept().unwrap();
        read_range(&mut socket);
        let head = format!("HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {len}\r\n\r\n");
        socket.write_all(head.as_bytes()).unwrap();
        let body = seeded(len, seed);
        // The client may hang up first (a reader that stopped).
        let _ = socket.write_all(&body[..hold_at]);
        if hold_at < len {
            let _ = released.recv();
        }
        // The client may be gone (interrupted).
        let _ = socket.write_all(&body[hold_at..]);
    });
    (address, release, server)
}

fn seeded(len: usize, seed: usize) -> Vec<u8> {
    (0..len).map(|i| (i * seed % 251) as u8).collect()
}

fn get_command(out: &std::path::Path, gateway: &str) -> Command {
    let mut get = Command::new(env!("CARGO_BIN_EXE_redstuff"));
    get.args(["get", SOME_BLOB, "-o", out.to_str().unwrap()])
        .args(["--gateway", gateway, "--token", "t", "--retries", "0"])
        .env("REDSTUFF_LOG", "warn");
    get
}

/// The files in `dir` other than `out`, once one holds at least `bytes`
/// (waits, bounded).
fn partials_holding(dir: &std::path::Path, out: &std::path::Path, bytes: u64) -> Vec<String> {
    let start = std::time::Instant::now();
    loop {
        let partials: Vec<(String, u64)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.path() != out)
            .map(|e| {
                let len = e.metadata().map_or(0, |m| m.len());
                (e.file_name().to_string_lossy().into_owned(), len)
            })
            .collect();
        if partials.iter().any(|(_, len)| *len >= bytes) {
            return partials.into_iter().map(|(name, _)| name).collect();
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "no partial file of {bytes} bytes: {partials:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn names_in(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn two_gets_into_one_file_at_once_never_mix_their_bytes_and_the_last_to_finish_is_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model.bin");
    let len = 4 << 20;
    // The first get holds half its blob while the second runs whole.
    let (first_gateway, release, first_server) = holding_server(len, 7, len / 2);
    let mut first = get_command(&out, &first_gateway).spawn().unwrap();
    // Written behind: what the file holds may lag what arrived.
    let partials = partials_holding(dir.path(), &out, (len / 4) as u64);
    assert!(
        partials[0].starts_with("model.bin.") && partials[0].ends_with(".partial"),
        "{partials:?}"
    );
    let (second_gateway, _release, second_server) = holding_server(len, 13, len);
    let second = get_command(&out, &second_gateway).output().unwrap();
    assert!(second.status.success(), "{second:?}");
    second_server.join().unwrap();
    assert!(std::fs::read(&out).unwrap() == seeded(len, 13));
    release.send(()).unwrap();
    let first = first.wait().unwrap();
    first_server.join().unwrap();
    assert!(first.success());
    assert!(
        std::fs::read(&out).unwrap() == seeded(len, 7),
        "the file is the first blob whole, not a mix"
    );
    assert_eq!(names_in(dir.path()), ["model.bin"]);
}

#[test]
fn a_get_interrupted_leaves_the_file_as_it_was_and_nothing_beside_it() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("model.bin");
        std::fs::write(&out, b"the previous version").unwrap();
        let len = 4 << 20;
        let (gateway, release, server) = holding_server(len, 3, 2 << 20);
        let mut get = get_command(&out, &gateway).spawn().unwrap();
        partials_holding(dir.path(), &out, 1 << 20);
        // SAFETY: a signal to the child this test started.
        unsafe {
            libc::kill(get.id() as i32, signal);
        }
        let status = get.wait().unwrap();
        drop(release);
        server.join().unwrap();
        assert_eq!(
            status.code(),
            Some(128 + signal),
            "as if the signal ended it"
        );
        assert_eq!(std::fs::read(&out).unwrap(), b"the previous version");
        assert_eq!(names_in(dir.path()), ["model.bin"], "signal {signal}");
    }
}

#[test]
fn a_file_replaced_by_get_keeps_its_mode_and_a_new_one_follows_the_umask() {
    use std::os::unix::fs::PermissionsExt as _;
    use std::os::unix::process::CommandExt as _;
    let dir = tempfile::tempdir().unwrap();
    let kept = dir.path().join("kept.bin");
    std::fs::write(&kept, b"old").unwrap();
    std::fs::set_permissions(&kept, std::fs::Permissions::from_mode(0o640)).unwrap();
    let new = dir.path().join("new.bin");
    for out in [&kept, &new] {
        let (gateway, _release, server) = holding_server(1000, 5, 1000);
        let mut get = get_command(out, &gateway);
        // SAFETY: umask is async-signal-safe.
        unsafe {
            get.pre_exec(|| {
                libc::umask(0o027);
                Ok(())
            });
        }
        let output = get.output().unwrap();
        server.join().unwrap();
        assert!(output.status.success(), "{output:?}");
        assert!(std::fs::read(out).unwrap() == seeded(1000, 5));
    }
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&kept), 0o640, "the replaced file's mode");
    assert_eq!(mode(&new), 0o640, "0666 less the umask 027");
}

#[test]
fn a_get_to_stdout_whose_reader_stops_ends_by_sigpipe_without_an_error() {
    use std::os::unix::process::ExitStatusExt as _;
    let len = 8 << 20;
    let (gateway, _release, server) = holding_server(len, 11, len);
    let mut get = Command::new(env!("CARGO_BIN_EXE_redstuff"))
        .args([
            "get",
            SOME_BLOB,
            "-o",
            "-",
            "--gateway",
            &gateway,
            "--token",
            "t",
        ])
        .env("REDSTUFF_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // `| head -c 1000`: read a little, then go away.
    let mut stdout = get.stdout.take().unwrap();
    let mut first = [0u8; 1000];
    stdout.read_exact(&mut first).unwrap();
    assert!(first[..] == seeded(len, 11)[..1000]);
    drop(stdout);
    let output = get.wait_with_output().unwrap();
    server.join().unwrap();
    assert_eq!(output.status.signal(), Some(libc::SIGPIPE), "{output:?}");
    assert!(output.stderr.is_empty(), "{output:?}");
}

#[test]
fn a_get_into_a_symbolic_link_replaces_the_file_it_points_to_and_keeps_the_link() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("weights-v2.bin");
    std::fs::write(&target, b"old").unwrap();
    let link = dir.path().join("current.bin");
    std::os::unix::fs::symlink("weights-v2.bin", &link).unwrap();
    let (gateway, _release, server) = holding_server(5000, 17, 5000);
    let output = get_command(&link, &gateway).output().unwrap();
    server.join().unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(std::fs::read(&target).unwrap() == seeded(5000, 17));
    assert_eq!(names_in(dir.path()), ["current.bin", "weights-v2.bin"]);
}

#[test]
fn a_get_into_dev_stdout_writes_where_standard_output_goes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("redirected.bin");
    std::fs::write(&file, b"kept|").unwrap();
    let appended = std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .unwrap();
    let (gateway, _release, server) = holding_server(5000, 19, 5000);
    // `redstuff get ID -o /dev/stdout >> redirected.bin`
    let output = get_command(std::path::Path::new("/dev/stdout"), &gateway)
        .stdout(appended)
        .output()
        .unwrap();
    server.join().unwrap();
    assert!(output.status.success(), "{output:?}");
    let mut expected = b"kept|".to_vec();
    expected.extend(seeded(5000, 19));
    assert!(std::fs::read(&file).unwrap() == expected);
    assert_eq!(names_in(dir.path()), ["redirected.bin"]);
}

#[test]
fn a_regular_file_under_dev_such_as_dev_shm_is_replaced_whole_not_written_over() {
    let dir = tempfile::tempdir_in("/dev/shm").expect("/dev/shm on this machine");
    let kept = dir.path().join("longer.bin");
    std::fs::write(&kept, vec![1u8; 9000]).unwrap();
    let new = dir.path().join("new.bin");
    for out in [&kept, &new] {
        let (gateway, _release, server) = holding_server(5000, 23, 5000);
        let output = get_command(out, &gateway).output().unwrap();
        server.join().unwrap();
        assert!(output.status.success(), "{output:?}");
        assert!(
            std::fs::read(out).unwrap() == seeded(5000, 23),
            "{} is the blob, no byte of the old file after it",
            out.display()
        );
    }
    assert_eq!(names_in(dir.path()), ["longer.bin", "new.bin"]);
}

#[test]
fn a_page_answered_200_in_place_of_a_blob_is_not_written_as_the_blob() {
    // An ingress's default backend answers every path with its page.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let gateway = format!("http://{}", listener.local_addr().unwrap());
    let server = std::thread::spawn(move || {
        let (mut socket, _) = listener.accept().unwrap();
        read_range(&mut socket);
        let page = "<html><body>default backend</body></html>";
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\n\r\n{page}",
            page.len()
        );
        socket.write_all(answer.as_bytes()).unwrap();
    });
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model.bin");
    std::fs::write(&out, b"the previous version").unwrap();
    let get = get_into(&out, &gateway, "3");
    server.join().unwrap();
    let stderr = String::from_utf8_lossy(&get.stderr);
    assert_eq!(get.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("text/html"), "{stderr}");
    assert_eq!(std::fs::read(&out).unwrap(), b"the previous version");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "nothing beside it"
    );
}
