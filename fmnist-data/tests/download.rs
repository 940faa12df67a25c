//! The download path against a local HTTP server on 127.0.0.1: a good file, a wrong checksum,
//! a connection cut mid-file (and the rerun that recovers), and the offline message.
mod fixtures;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;

use fmnist_data::source::download_all;
use fmnist_data::{Checksums, DataError, FashionMnist, LoadOptions, Locator, Origin};

/// How the test server answers.
#[derive(Clone, Copy)]
enum Mode {
    /// Sends every file whole.
    Good,
    /// Promises the whole file, sends half, closes.
    Cut,
}

/// Serves the gzipped fixture on 127.0.0.1 for `max_requests` requests, then stops.
fn serve(mode: Mode, max_requests: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let files: Vec<(String, Vec<u8>)> = fixtures::raw_files()
        .into_iter()
        .map(|(f, b)| (format!("/{}.gz", f.stem()), fixtures::gzip(&b)))
        .collect();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(max_requests) {
            let Ok(stream) = stream else { continue };
            answer(stream, &files, mode);
        }
    });
    format!("http://{addr}/")
}

fn answer(mut stream: TcpStream, files: &[(String, Vec<u8>)], mode: Mode) {
    let mut line = String::new();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    reader.read_line(&mut line).unwrap();
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
    }
    match files.iter().find(|(p, _)| *p == path) {
        Some((_, body)) => {
            let sent = match mode {
                Mode::Good => &body[..],
                Mode::Cut => &body[..body.len() / 2],
            };
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(sent);
        }
        None => {
            let _ = stream.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    }
    let _ = stream.flush();
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn good_download_is_verified_and_loadable() {
    let dir = tempfile::tempdir().unwrap();
    let url = serve(Mode::Good, 4);
    download_all(&url, dir.path(), &fixtures::checksums()).unwrap();
    assert_eq!(
        files_in(dir.path()),
        [
            "t10k-images-idx3-ubyte.gz",
            "t10k-labels-idx1-ubyte.gz",
            "train-images-idx3-ubyte.gz",
            "train-labels-idx1-ubyte.gz"
        ]
    );
    let locator = Locator {
        flag_dir: None,
        env_dir: None,
        workspace_dir: dir.path().to_path_buf(),
        system_dir: dir.path().join("nowhere"),
        mirror: url,
        checksums: fixtures::checksums(),
        download: false,
    };
    let source = locator.locate().unwrap();
    assert_eq!(source.origin, Origin::Workspace);
    let options = LoadOptions {
        checksums: fixtures::checksums(),
        ..LoadOptions::default()
    };
    assert_eq!(
        FashionMnist::load(source, &options).unwrap().train.len(),
        fixtures::TRAIN
    );
}

#[test]
fn locator_downloads_when_nothing_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("data").join("fashion-mnist");
    let locator = Locator {
        flag_dir: None,
        env_dir: None,
        workspace_dir: target.clone(),
        system_dir: dir.path().join("nowhere"),
        mirror: serve(Mode::Good, 4),
        checksums: fixtures::checksums(),
        download: true,
    };
    let source = locator.locate().unwrap();
    assert_eq!((source.dir, source.origin), (target, Origin::Downloaded));
}

#[test]
fn wrong_checksum_keeps_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let url = serve(Mode::Good, 1);
    let err = download_all(&url, dir.path(), &Checksums::fashion_mnist()).unwrap_err();
    assert!(matches!(err, DataError::Checksum { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("train-images-idx3-ubyte.gz: SHA-256 mismatch"),
        "{err}"
    );
    assert!(
        files_in(dir.path()).is_empty(),
        "{:?}",
        files_in(dir.path())
    );
}

#[test]
fn cut_connection_leaves_only_a_part_file_and_a_rerun_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let err = download_all(&serve(Mode::Cut, 1), dir.path(), &fixtures::checksums()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with("downloading http://127.0.0.1:"), "{msg}");
    assert!(msg.contains("train-images-idx3-ubyte.gz"), "{msg}");
    assert_eq!(files_in(dir.path()), ["train-images-idx3-ubyte.gz.part"]);
    // The .part is never taken for data:
    let locator = Locator {
        flag_dir: Some(dir.path().to_path_buf()),
        env_dir: None,
        workspace_dir: dir.path().join("ws"),
        system_dir: dir.path().join("nowhere"),
        mirror: String::new(),
        checksums: fixtures::checksums(),
        download: false,
    };
    assert!(matches!(locator.locate(), Err(DataError::Missing { .. })));
    download_all(&serve(Mode::Good, 4), dir.path(), &fixtures::checksums()).unwrap();
    assert_eq!(files_in(dir.path()).len(), 4);
    assert!(files_in(dir.path()).iter().all(|f| f.ends_with(".gz")));
}

#[test]
fn offline_without_data_names_every_way_to_provide_it() {
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on: bind, note the port, close.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let locator = Locator {
        flag_dir: None,
        env_dir: None,
        workspace_dir: dir.path().join("ws"),
        system_dir: dir.path().join("nowhere"),
        mirror: format!("http://127.0.0.1:{port}/"),
        checksums: fixtures::checksums(),
        download: true,
    };
    let msg = locator.locate().unwrap_err().to_string();
    assert!(msg.starts_with("Fashion-MNIST was not found"), "{msg}");
    assert!(
        msg.contains("--data-dir DIR or FMNIST_DATA_DIR=DIR"),
        "{msg}"
    );
    assert!(
        msg.contains("apt-get install dataset-fashion-mnist"),
        "{msg}"
    );
    assert!(msg.contains("download it into"), "{msg}");
}
