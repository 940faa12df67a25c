//! `fmnist-serve`, against a server the test starts on 127.0.0.1 with the committed `cnn`
//! run: the answers equal the model library's (what `predict` and a Rust program get) for the
//! same files, bad input gets a 4xx with a JSON error and the next request is served, eight
//! clients at once get the same answers, visual search returns the nearest training images,
//! and a second start reads the search index from the run's cache.
//! Needs the installed Fashion-MNIST (its training images are the search index): fails, not
//! skips, when `CI` is set and the data is missing.
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fmnist_models::photo::{self, Invert};
use fmnist_models::prediction::Prediction;
use fmnist_models::Classifier;
use serde_json::Value;

mod common;
use common::{run_copy, workspace};

fn data_installed() -> bool {
    let dir = Path::new("/usr/share/datasets/fashion-mnist");
    let found = dir.join("train-images-idx3-ubyte.gz").is_file()
        || std::env::var_os("FMNIST_DATA_DIR").is_some()
        || workspace().join("data/fashion-mnist").is_dir();
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but Fashion-MNIST is missing (apt-get install dataset-fashion-mnist)"
        );
        eprintln!("serve not tested: Fashion-MNIST is not installed");
    }
    found
}

/// A server on a free port, killed when dropped.
struct Server {
    child: Child,
    url: String,
    stderr: std::thread::JoinHandle<String>,
}

impl Server {
    fn start(run: &Path, extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fmnist-serve"))
            .current_dir(workspace())
            .args(["--addr", "127.0.0.1:0", "--no-download", "--run"])
            .arg(run)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Server { child, url, stderr }
    }

    fn addr(&self) -> String {
        self.url.trim_start_matches("http://").to_string()
    }

    /// Stops the server and returns what it printed on stderr.
    fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stderr.join().unwrap()
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .new_agent()
}

/// POSTs `body` with `content_type` and returns the status and the JSON answer.
fn post(url: &str, content_type: &str, body: &[u8]) -> (u16, Value) {
    let mut r = agent()
        .post(url)
        .header("Content-Type", content_type)
        .send(body)
        .unwrap();
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}")),
    )
}

fn get(url: &str) -> (u16, Vec<u8>) {
    let mut r = agent().get(url).call().unwrap();
    let status = r.status().as_u16();
    (status, r.body_mut().read_to_vec().unwrap())
}

fn example(name: &str) -> Vec<u8> {
    std::fs::read(workspace().join("docs/examples").join(name)).unwrap()
}

/// A multipart/form-data body of `files`.
fn form(files: &[(&str, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "fmnist-test-boundary-7f3a";
    let mut body = Vec::new();
    for (name, bytes) in files {
        body.extend(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n\
                 Content-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend(b"\r\n");
    }
    body.extend(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// A connection that announces an image of `length` bytes and sends only `part` of it.
fn partial_upload(addr: &str, length: usize, part: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: {length}\r\n\r\n"
    )
    .unwrap();
    stream.write_all(part).unwrap();
    stream
}

/// What the server answers on `stream` before it closes it (10 s at most).
fn answer_to(mut stream: TcpStream) -> String {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// The model library's answers for the example images, as `predict` and the service give
/// them (three classes, review below 0.5, photos inverted where their border is light).
fn predicted(run: &Path) -> Vec<Value> {
    let classifier = Classifier::load(run, &candle::Device::Cpu).unwrap();
    ["ankle-boot.png", "bag.png", "shirt.png"]
        .iter()
        .map(|name| {
            let image = photo::decode_bytes(&example(name)).unwrap();
            let (probs, inverted) = classifier.classify_photo(&image, Invert::Auto).unwrap();
            let names = classifier.class_names();
            let p = Prediction::new(name.to_string(), &probs, names, 3, 0.5, inverted);
            // Through JSON text, as the wire carries it (an f32 written shortest).
            serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap()
        })
        .collect()
}

/// The answer without the file name, which differs between the two paths.
fn without_file(mut v: Value) -> Value {
    v.as_object_mut().unwrap().remove("file");
    v
}

#[test]
fn serve_answers_as_the_library_does_and_survives_bad_input() {
    if !data_installed() {
        return;
    }
    let run = run_copy();
    let server = Server::start(run.path(), &["--max-body", "200000", "--read-timeout", "1"]);
    let url = server.url.clone();

    let (status, health) = get(&format!("{url}/health"));
    assert_eq!(status, 200);
    let health: Value = serde_json::from_slice(&health).unwrap();
    assert_eq!(health["model"], "cnn");
    assert_eq!(health["index_images"], 60000);
    let machine = health["machine"].as_str().unwrap();
    assert!(machine.contains(" cores, "), "{machine}");

    // The library's answers, from an image body and from a form of several files.
    let expected = predicted(run.path());
    let names = ["ankle-boot.png", "bag.png", "shirt.png"];
    for (name, want) in names.iter().zip(&expected) {
        let (status, got) = post(&format!("{url}/classify"), "image/png", &example(name));
        assert_eq!(status, 200, "{got}");
        assert_eq!(without_file(got), without_file(want.clone()), "{name}");
    }
    let bag = example("bag.png");
    let readme = std::fs::read(workspace().join("README.md")).unwrap();
    let (content_type, body) = form(&[("bag.png", &bag), ("README.md", &readme)]);
    let (status, got) = post(&format!("{url}/classify"), &content_type, &body);
    assert_eq!(status, 200, "{got}");
    let results = got["results"].as_array().unwrap();
    assert_eq!(results[0]["file"], "bag.png");
    assert_eq!(
        without_file(results[0].clone()),
        without_file(expected[1].clone())
    );
    assert_eq!(results[1]["file"], "README.md");
    assert_eq!(results[1]["status"], 415);

    // Bad input: a 4xx with a JSON error each, and the server goes on.
    let mut wide = Vec::new();
    image::GrayImage::new(9000, 1)
        .write_to(
            &mut std::io::Cursor::new(&mut wide),
            image::ImageFormat::Png,
        )
        .unwrap();
    let truncated = &bag[..bag.len() / 3];
    let cases: [(&str, &[u8], u16, &str); 5] = [
        ("text/plain", b"hello", 415, "send an image"),
        ("image/png", b"", 400, "empty file"),
        (
            "image/png",
            b"\x89PNG\r\n\x1a\n not really",
            422,
            "cannot decode",
        ),
        ("image/png", truncated, 422, "cannot decode"),
        ("image/png", &wide, 413, "image too large"),
    ];
    for (content_type, body, want, says) in cases {
        let (status, got) = post(&format!("{url}/classify"), content_type, body);
        assert_eq!(status, want, "{content_type} {} bytes: {got}", body.len());
        let error = got["error"].as_str().unwrap();
        assert!(error.contains(says), "{error}");
    }
    let (status, got) = post(
        &format!("{url}/classify"),
        "application/octet-stream",
        b"\x00\x01",
    );
    assert_eq!((status, got["error"].is_string()), (415, true), "{got}");

    // A body announced over the limit is refused before it is sent (a client still sending
    // would meet a closed connection); one that stops arriving gets 408 after the read
    // timeout; one cut off is dropped.
    let answer = answer_to(partial_upload(&server.addr(), 300_000, &[]));
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.contains("over the limit of 200000 bytes"),
        "{answer}"
    );
    let answer = answer_to(partial_upload(&server.addr(), 5000, &bag[..100]));
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive within 1 s"), "{answer}");
    drop(partial_upload(&server.addr(), 5000, &bag[..100]));

    // Still serving: eight clients at once, the same answers.
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let url = url.clone();
            let expected = expected.clone();
            std::thread::spawn(move || {
                for i in 0..12 {
                    let k = (t + i) % 3;
                    let (status, got) =
                        post(&format!("{url}/classify"), "image/png", &example(names[k]));
                    assert_eq!(status, 200);
                    assert_eq!(without_file(got), without_file(expected[k].clone()));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }

    // Visual search: nearest first, each neighbour's image served.
    let (status, near) = post(
        &format!("{url}/similar?k=8"),
        "image/png",
        &example("shirt.png"),
    );
    assert_eq!(status, 200, "{near}");
    assert_eq!(near["class"], expected[2]["top"][0]["class"]);
    let neighbours = near["neighbours"].as_array().unwrap();
    assert_eq!(neighbours.len(), 8);
    let distances: Vec<f64> = neighbours
        .iter()
        .map(|n| n["distance"].as_f64().unwrap())
        .collect();
    assert!(distances.windows(2).all(|w| w[0] <= w[1]), "{distances:?}");
    let (status, png) = get(&format!(
        "{url}{}",
        neighbours[0]["image"].as_str().unwrap()
    ));
    assert_eq!(status, 200);
    assert_eq!(&png[1..4], b"PNG");
    let (status, got) = post(&format!("{url}/similar?k=0"), "image/png", &bag);
    assert_eq!(
        (status, got["error"].as_str().unwrap()),
        (400, "k must be from 1 to 100")
    );
    let (status, _) = get(&format!("{url}/train-image/60000"));
    assert_eq!(status, 404);

    // The page, and the counters of what happened.
    let (status, page) = get(&format!("{url}/"));
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&page).contains("id=\"file\""));
    let (_, metrics) = get(&format!("{url}/metrics"));
    let metrics = String::from_utf8(metrics).unwrap();
    let count = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("{name} not in {metrics}"))
            .trim()
            .parse()
            .unwrap()
    };
    assert!(
        // health, 4 classify, 6 bad, the 413 and the 408, 96 from the clients, 2 searches,
        // 2 images, the page (and the cut body where it was answered).
        count("fmnist_requests_total ") >= 114,
        "{metrics}"
    );
    assert!(
        count("fmnist_request_errors_total{class=\"4xx\"} ") >= 10,
        "{metrics}"
    );
    assert_eq!(
        count("fmnist_request_errors_total{class=\"5xx\"} "),
        0,
        "{metrics}"
    );
    let first_log = server.stop();
    assert!(first_log.contains("built and cached in"), "{first_log}");

    // A second start reads the index from the run's cache and finds the same neighbours.
    let again = Server::start(run.path(), &[]);
    let (status, near_again) = post(
        &format!("{}/similar?k=8", again.url),
        "image/png",
        &example("shirt.png"),
    );
    assert_eq!(status, 200, "{near_again}");
    assert_eq!(near_again, near);
    let second_log = again.stop();
    assert!(second_log.contains("read from"), "{second_log}");
}
