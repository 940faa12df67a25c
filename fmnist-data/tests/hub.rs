//! The Hugging Face Hub source (feature `hub`) against a stand-in Hub on 127.0.0.1. The test
//! writes the parquet files the Hub serves (each image a PNG, as on the Hub), points hf-hub at
//! the server with `HF_ENDPOINT`, and runs `fmnist-data --from-hub`: Fashion-MNIST itself must
//! come back with its own SHA-256 sums; a Hub without the files and a file that holds no image
//! are refused with a message that names the Hub.
mod fixtures;

use std::io::{BufRead, BufReader, Cursor, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Output;
use std::sync::{Arc, Mutex};

use fmnist_data::hub::HUB_DATASET;
use fmnist_data::ImageSet;
use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

/// Where candle-datasets asks for the two files (the Hub's parquet conversion branch).
const FILES: [(&str, &str); 2] = [
    ("train", "fashion_mnist/train/0000.parquet"),
    ("test", "fashion_mnist/test/0000.parquet"),
];

/// The schema of the Hub's parquet conversion of an image classification data set.
const SCHEMA: &str = "message schema {
    optional group image { optional binary bytes; optional binary path (STRING); }
    optional int64 label;
}";

/// A parquet file with one row per image: `image.bytes` (the encoded image), a null
/// `image.path`, and `label`.
fn parquet_file(images: &[Vec<u8>], labels: &[u8]) -> Vec<u8> {
    let schema = Arc::new(parse_message_type(SCHEMA).unwrap());
    let mut out = Vec::new();
    let mut writer =
        SerializedFileWriter::new(&mut out, schema, Arc::new(WriterProperties::default())).unwrap();
    let mut group = writer.next_row_group().unwrap();
    let n = images.len();
    let bytes: Vec<ByteArray> = images.iter().map(|b| ByteArray::from(b.clone())).collect();
    let mut column = group.next_column().unwrap().unwrap();
    let defined_to_the_leaf = vec![2i16; n];
    (column.typed::<ByteArrayType>())
        .write_batch(&bytes, Some(&defined_to_the_leaf), None)
        .unwrap();
    column.close().unwrap();
    let mut column = group.next_column().unwrap().unwrap();
    let defined_to_the_group = vec![1i16; n];
    (column.typed::<ByteArrayType>())
        .write_batch(&[], Some(&defined_to_the_group), None)
        .unwrap();
    column.close().unwrap();
    let mut column = group.next_column().unwrap().unwrap();
    let labels: Vec<i64> = labels.iter().map(|&l| l as i64).collect();
    (column.typed::<Int64Type>())
        .write_batch(&labels, Some(&defined_to_the_group), None)
        .unwrap();
    column.close().unwrap();
    group.close().unwrap();
    writer.close().unwrap();
    out
}

fn png_images(set: &ImageSet) -> Vec<Vec<u8>> {
    (0..set.len())
        .map(|i| {
            let (pixels, _) = set.get(i).unwrap();
            let image =
                image::GrayImage::from_raw(set.cols as u32, set.rows as u32, pixels.to_vec())
                    .unwrap();
            let mut png = Vec::new();
            image
                .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
                .unwrap();
            png
        })
        .collect()
}

/// A stand-in Hub: answers HEAD and GET for `/datasets/<id>/resolve/<revision>/<file>` with the
/// headers hf-hub needs (ETag, X-Repo-Commit, Content-Length), 404 for anything else, and
/// records every request line.
struct StandInHub {
    endpoint: String,
    requests: Arc<Mutex<Vec<String>>>,
}

fn serve(files: Vec<(String, Vec<u8>)>) -> StandInHub {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(Mutex::new(Vec::new()));
    let (files, log) = (Arc::new(files), requests.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let (files, log) = (files.clone(), log.clone());
            std::thread::spawn(move || answer(stream, &files, &log));
        }
    });
    StandInHub { endpoint, requests }
}

fn answer(mut stream: TcpStream, files: &[(String, Vec<u8>)], log: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
            break;
        }
    }
    log.lock().unwrap().push(line.trim().to_string());
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    match files.iter().find(|(p, _)| p == path) {
        Some((_, body)) => {
            let etag = fmnist_data::source::sha256_hex(body);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nETag: \"{etag}\"\r\n\
                 X-Repo-Commit: {}\r\nConnection: close\r\n\r\n",
                body.len(),
                "0123456789abcdef0123456789abcdef01234567",
            );
            let _ = stream.write_all(head.as_bytes());
            if method == "GET" {
                let _ = stream.write_all(body);
            }
        }
        None => {
            let _ = stream.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    }
    let _ = stream.flush();
}

/// The Hub paths of the two files, as candle-datasets asks for them.
fn hub_path(file: &str) -> String {
    format!("/datasets/{HUB_DATASET}/resolve/refs%2Fconvert%2Fparquet/{file}")
}

/// `fmnist-data --from-hub` with hf-hub pointed at `hub` and caching under `home`.
fn fetch(hub: &StandInHub, home: &Path, data_dir: &Path, verify: &str) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_fmnist-data"))
        .args([
            "--from-hub",
            "--no-download",
            "--verify",
            verify,
            "--data-dir",
        ])
        .arg(data_dir)
        .env("HF_ENDPOINT", &hub.endpoint)
        .env("HF_HOME", home)
        .env("NO_PROXY", "127.0.0.1")
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_TOKEN")
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .output()
        .unwrap()
}

#[test]
fn fashion_mnist_from_the_hub_has_its_own_checksums() {
    let Some(data) = fixtures::installed_fashion_mnist() else {
        return;
    };
    let files = [(FILES[0].1, &data.train), (FILES[1].1, &data.test)]
        .into_iter()
        .map(|(file, set)| (hub_path(file), parquet_file(&png_images(set), &set.labels)))
        .collect();
    let hub = serve(files);
    let (home, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let data_dir = out.path().join("fashion-mnist");
    let run = fetch(&hub, home.path(), &data_dir, "sha256");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        stdout.contains("SHA-256 of all four files verified"),
        "{stdout}"
    );
    // total: train+val, train, val, test.
    let total: Vec<&str> = (stdout.lines().find(|l| l.starts_with("total")))
        .map_or(Vec::new(), |l| l.split_whitespace().collect());
    assert_eq!(
        (total.get(1), total.get(4)),
        (Some(&"60000"), Some(&"10000")),
        "{stdout}"
    );
    let requests = hub.requests.lock().unwrap().clone();
    for (_, file) in FILES {
        let get = format!("GET {} HTTP/1.1", hub_path(file));
        assert!(requests.contains(&get), "{get} not in {requests:?}");
    }
    // A second fetch comes from hf-hub's cache under HF_HOME: no file is downloaded again.
    let before = requests.len();
    let again = fetch(&hub, home.path(), &data_dir, "sha256");
    assert!(again.status.success());
    let requests = hub.requests.lock().unwrap().clone();
    assert!(
        requests[before..].iter().all(|r| !r.starts_with("GET ")),
        "downloaded again: {:?}",
        &requests[before..]
    );
}

#[test]
fn a_hub_without_the_files_is_refused_by_name_and_nothing_is_written() {
    let hub = serve(Vec::new());
    let (home, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let data_dir = out.path().join("fashion-mnist");
    let run = fetch(&hub, home.path(), &data_dir, "sha256");
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    let expected = format!(
        "fetching {HUB_DATASET} from the Hugging Face Hub at {} (candle-datasets)",
        hub.endpoint
    );
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(!data_dir.exists(), "nothing is written on failure");
}

#[test]
fn a_parquet_file_without_images_is_refused() {
    let not_images: Vec<Vec<u8>> = (0..3).map(|i| vec![i; 10]).collect();
    let file = parquet_file(&not_images, &[0, 1, 2]);
    let hub = serve(
        FILES
            .iter()
            .map(|(_, f)| (hub_path(f), file.clone()))
            .collect(),
    );
    let (home, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let data_dir = out.path().join("fashion-mnist");
    let run = fetch(&hub, home.path(), &data_dir, "none");
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("a parquet file holds an image that does not decode"),
        "{stderr}"
    );
    assert!(!data_dir.exists(), "nothing is written on failure");
}

#[test]
fn small_hub_data_set_round_trips_exactly() {
    // Three images per split with every pixel value 0..=255 somewhere, read back with
    // --verify none: the IDX files hold exactly the pixels and labels served.
    let side = 28usize;
    let make = |offset: usize, labels: &[u8]| -> ImageSet {
        let pixels = (0..labels.len() * side * side)
            .map(|i| ((i * 7 + offset) % 256) as u8)
            .collect();
        ImageSet {
            pixels,
            labels: labels.to_vec(),
            rows: side,
            cols: side,
        }
    };
    let (train, test) = (make(0, &[3, 9, 0]), make(5, &[1, 1, 7]));
    let hub = serve(
        [(FILES[0].1, &train), (FILES[1].1, &test)]
            .into_iter()
            .map(|(file, set)| (hub_path(file), parquet_file(&png_images(set), &set.labels)))
            .collect(),
    );
    let (home, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let data_dir = out.path().join("fashion-mnist");
    let run = fetch(&hub, home.path(), &data_dir, "none");
    // Three images per split are too few for the summary's 80/20 split of ten classes; the
    // files are what this test checks.
    let written = |stem: &str| std::fs::read(data_dir.join(stem)).unwrap();
    let idx =
        fmnist_data::idx::parse_images(&written("train-images-idx3-ubyte"), Path::new("train"))
            .unwrap();
    assert_eq!(idx.pixels, train.pixels, "{run:?}");
    let labels =
        fmnist_data::idx::parse_labels(&written("t10k-labels-idx1-ubyte"), Path::new("t10k"))
            .unwrap();
    assert_eq!(labels, vec![1, 1, 7]);
}
