//! The page of `fmnist-serve` in a real browser: Debian's headless Chromium, driven
//! through ChromeDriver's WebDriver API, uploads an example image and reads the class the page
//! shows and its similar items, then draws on the canvas with the pointer and has the drawing
//! classified. Needs `chromium` and `chromium-driver` and the installed Fashion-MNIST, so it is
//! ignored by a plain `cargo test` and run with `--ignored` (`.ci/run` installs them and does);
//! run so without them, it stops with a message, and fails where `CI` is set.
//!
//! `FMNIST_SCREENSHOT=FILE` also saves a screenshot of the page (how docs/serve.png is made).
use std::io::{BufRead, BufReader};

use base64::Engine;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;
use common::{run_copy, workspace};

/// Kills the child when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Calls the WebDriver endpoint `path` of `session` and returns its `value`.
fn webdriver(method: &str, url: &str, body: Option<Value>) -> Value {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .new_agent();
    let mut response = match (method, body) {
        ("GET", _) => agent.get(url).call().unwrap(),
        ("DELETE", _) => agent.delete(url).call().unwrap(),
        (_, body) => agent
            .post(url)
            .header("Content-Type", "application/json")
            .send(serde_json::to_vec(&body.unwrap_or(json!({}))).unwrap())
            .unwrap(),
    };
    let status = response.status().as_u16();
    let answer: Value =
        serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(status, 200, "{method} {url}: {answer}");
    answer["value"].clone()
}

#[test]
#[ignore = "needs Chromium and ChromeDriver: .ci/run installs them and runs it (cargo test -- --ignored)"]
fn the_page_classifies_an_uploaded_image_in_headless_chromium() {
    let chromium = Path::new("/usr/bin/chromium");
    let driver = Path::new("/usr/bin/chromedriver");
    let data = Path::new("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz");
    if !(chromium.exists() && driver.exists() && data.exists()) {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but Chromium, ChromeDriver or Fashion-MNIST is missing \
             (apt-get install chromium chromium-driver dataset-fashion-mnist)"
        );
        eprintln!("the page is not tested: Chromium, ChromeDriver or Fashion-MNIST is missing");
        return;
    }
    let run = run_copy();
    let mut server = Command::new(env!("CARGO_BIN_EXE_fmnist-serve"))
        .current_dir(workspace())
        .args(["--addr", "127.0.0.1:0", "--no-download", "--run"])
        .arg(run.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _server = Killed(server);
    let page = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_string();

    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let chromedriver = Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _driver = Killed(chromedriver);
    let base = format!("http://127.0.0.1:{port}");
    let start = Instant::now();
    while ureq::get(&format!("{base}/status")).call().is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "ChromeDriver did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let profile = tempfile::tempdir().unwrap();
    // The flags keep Chromium off the network it cannot reach here (see the machine notes).
    let session = webdriver(
        "POST",
        &format!("{base}/session"),
        Some(json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--window-size=1000,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ]
            }
        }}})),
    );
    let id = session["sessionId"].as_str().unwrap().to_string();
    let s = format!("{base}/session/{id}");
    webdriver("POST", &format!("{s}/url"), Some(json!({ "url": page })));
    let find = |css: &str| -> String {
        let element = webdriver(
            "POST",
            &format!("{s}/element"),
            Some(json!({"using": "css selector", "value": css})),
        );
        element
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap()
            .to_string()
    };
    let text = |css: &str| -> String {
        webdriver("GET", &format!("{s}/element/{}/text", find(css)), None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let wait_for = |css: &str, ready: &dyn Fn(&str) -> bool| -> String {
        let start = Instant::now();
        loop {
            let t = text(css);
            if ready(&t) {
                return t;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{css} never became ready (last text {t:?})"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_for("#model", &|t| t.starts_with("model cnn"));

    // Upload the example bag photo through the file input, as a person would.
    let bag = workspace().join("docs/examples/bag.png");
    let input = find("#file");
    webdriver(
        "POST",
        &format!("{s}/element/{input}/value"),
        Some(json!({ "text": bag.display().to_string() })),
    );
    let shown = wait_for("#top-class", &|t| !t.is_empty());
    assert!(shown.starts_with("Bag ("), "{shown}");
    let similar = wait_for("#similar", &|t| t.lines().count() >= 8);
    assert!(similar.contains("Bag"), "{similar}");
    assert_eq!(text("#error"), "");

    if let Some(path) = std::env::var_os("FMNIST_SCREENSHOT") {
        let png = webdriver("GET", &format!("{s}/screenshot"), None);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    // Draw a stroke on the canvas with the pointer and classify the drawing.
    let pad = find("#pad");
    let rect = webdriver("GET", &format!("{s}/element/{pad}/rect"), None);
    let at = |dx: f64, dy: f64| {
        let x = rect["x"].as_f64().unwrap() + rect["width"].as_f64().unwrap() / 2.0 + dx;
        let y = rect["y"].as_f64().unwrap() + rect["height"].as_f64().unwrap() / 2.0 + dy;
        json!({"type": "pointerMove", "origin": "viewport", "x": x as i64, "y": y as i64, "duration": 100})
    };
    let mut strokes = vec![
        at(-60.0, -90.0),
        json!({"type": "pointerDown", "button": 0}),
    ];
    for (x, y) in [(-60.0, 90.0), (60.0, 90.0), (60.0, -90.0)] {
        strokes.push(at(x, y));
    }
    strokes.push(json!({"type": "pointerUp", "button": 0}));
    webdriver(
        "POST",
        &format!("{s}/actions"),
        Some(json!({"actions": [{
            "type": "pointer", "id": "mouse", "parameters": {"pointerType": "mouse"},
            "actions": strokes,
        }]})),
    );
    webdriver(
        "POST",
        &format!("{s}/execute/sync"),
        Some(
            json!({"script": "document.getElementById('top-class').textContent = '';", "args": []}),
        ),
    );
    let send_drawing = find("#send-drawing");
    webdriver(
        "POST",
        &format!("{s}/element/{send_drawing}/click"),
        Some(json!({})),
    );
    let drawn = wait_for("#top-class", &|t| !t.is_empty());
    let class = drawn.split(" (").next().unwrap_or_default();
    assert!(
        fmnist_data::FASHION_MNIST_CLASSES.contains(&class),
        "the drawing was answered {drawn:?}"
    );
    assert_eq!(text("#error"), "");

    webdriver("DELETE", &s, None);
}
