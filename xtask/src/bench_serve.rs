//! `cargo xtask bench-serve`: a bounded load test of `fmnist-serve`. It starts the server
//! on 127.0.0.1, sends the example images from several clients at once, checks every answer
//! against `fmnist-eval predict` on the same files, and writes requests/s and latency
//! percentiles into `results/BENCH-serve.md`.
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use serde_json::Value;

use crate::{project_root, write_atomic, Build};

/// The file the load test owns, in the results folder: `cargo xtask bench` writes BENCH.md and
/// never this one.
pub const REPORT_FILE: &str = "BENCH-serve.md";

/// The images sent, from docs/examples.
const EXAMPLES: [&str; 3] = ["ankle-boot.png", "bag.png", "shirt.png"];

/// Load test of `fmnist-serve`: concurrent clients, requests/s and latency into
/// BENCH-serve.md.
#[derive(clap::Args, Debug)]
pub struct BenchServe {
    /// Run whose model the server loads.
    #[arg(long, default_value = "results/cnn/seed-42", value_name = "DIR")]
    run: PathBuf,
    /// Clients sending at once (one connection each, kept alive).
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Requests in all (POST /classify with one of the example images each).
    #[arg(long, default_value_t = 4000)]
    requests: usize,
    /// Folder of BENCH-serve.md.
    #[arg(long, default_value = "results")]
    results: PathBuf,
    #[command(flatten)]
    build: Build,
}

/// The answer without the file name (the server calls an image body `image`).
fn without_file(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("file");
    }
    v
}

impl BenchServe {
    pub fn run(&self) -> anyhow::Result<()> {
        ensure!(
            self.clients >= 1 && self.requests >= self.clients,
            "--clients must be at least 1 and --requests at least --clients"
        );
        let bins = self.build.build(&["fmnist-eval", "fmnist-serve"])?;
        let (bin, server_bin) = (bins.join("fmnist-eval"), bins.join("fmnist-serve"));
        let root = project_root();
        let examples: Vec<PathBuf> = EXAMPLES
            .iter()
            .map(|e| root.join("docs/examples").join(e))
            .collect();

        // What predict answers for the same files.
        let out = Command::new(&bin)
            .current_dir(&root)
            .args(["predict", "--json", "--run"])
            .arg(&self.run)
            .args(&examples)
            .output()
            .context("running fmnist-eval predict")?;
        ensure!(
            out.status.success(),
            "fmnist-eval predict failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let expected: Vec<Value> = serde_json::from_slice::<Vec<Value>>(&out.stdout)?
            .into_iter()
            .map(without_file)
            .collect();
        let bodies: Vec<Vec<u8>> = examples
            .iter()
            .map(std::fs::read)
            .collect::<Result<_, _>>()?;

        let mut server = Stopped(
            Command::new(&server_bin)
                .current_dir(&root)
                .args(["--addr", "127.0.0.1:0", "--run"])
                .arg(&self.run)
                .stdout(Stdio::piped())
                .spawn()
                .context("starting fmnist-serve")?,
        );
        let mut line = String::new();
        BufReader::new(server.0.stdout.take().context("the server's output")?)
            .read_line(&mut line)?;
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .with_context(|| format!("the server printed {line:?}"))?
            .to_string();
        // The server describes its machine as every fmnist measurement does.
        let health = ureq::get(format!("{url}/health"))
            .call()
            .context("GET /health")?
            .body_mut()
            .read_to_string()?;
        let machine = serde_json::from_str::<Value>(&health)?["machine"]
            .as_str()
            .context("/health names no machine")?
            .to_string();
        let measured = self.load(&url, &bodies, &expected);
        drop(server);
        let (mut latencies, failures, seconds) = measured?;

        latencies.sort_by(f64::total_cmp);
        let pct = |p: f64| 1000.0 * latencies[((latencies.len() - 1) as f64 * p).round() as usize];
        let report = format!(
            "# Serving benchmark\n\n\
             - Machine: {}\n\
             - Command: `cargo xtask bench-serve --run {} --clients {} --requests {}`\n\
             - `fmnist-serve` (release build) on 127.0.0.1; each client keeps one connection \
             and sends POST /classify with the example images in turn; every answer is checked \
             against `fmnist-eval predict` on the same file.\n\n\
             | model run | clients | requests | failed | requests/s | p50 ms | p90 ms | p99 ms |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|\n\
             | {} | {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} |\n",
            machine,
            self.run.display(),
            self.clients,
            self.requests,
            self.run.display(),
            self.clients,
            self.requests,
            failures,
            self.requests as f64 / seconds,
            pct(0.5),
            pct(0.9),
            pct(0.99),
        );
        println!("\n{report}");
        let results = root.join(&self.results);
        std::fs::create_dir_all(&results)?;
        let bench_md = results.join(REPORT_FILE);
        write_atomic(&bench_md, report.as_bytes())?;
        println!("xtask: wrote {}", bench_md.display());
        ensure!(
            failures == 0,
            "{failures} requests failed or answered otherwise than predict"
        );
        Ok(())
    }

    /// Sends the requests; returns every latency in seconds, the failures and the wall time.
    fn load(
        &self,
        url: &str,
        bodies: &[Vec<u8>],
        expected: &[Value],
    ) -> anyhow::Result<(Vec<f64>, usize, f64)> {
        let agent = || {
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(30)))
                .build()
                .new_agent()
        };
        let send = |agent: &ureq::Agent, i: usize| -> bool {
            let k = i % bodies.len();
            agent
                .post(format!("{url}/classify"))
                .header("Content-Type", "image/png")
                .send(&bodies[k][..])
                .ok()
                .filter(|r| r.status() == 200)
                .and_then(|mut r| r.body_mut().read_to_string().ok())
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .is_some_and(|v| without_file(v) == expected[k])
        };
        let warm = agent();
        for i in 0..3 * bodies.len() {
            ensure!(send(&warm, i), "the server's answers differ from predict's");
        }
        let start = Instant::now();
        let per_client: Vec<(Vec<f64>, usize)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..self.clients)
                .map(|c| {
                    let send = &send;
                    scope.spawn(move || {
                        let client = agent();
                        let mut latencies = Vec::new();
                        let mut failures = 0;
                        for i in (c..self.requests).step_by(self.clients) {
                            let t = Instant::now();
                            if !send(&client, i) {
                                failures += 1;
                            }
                            latencies.push(t.elapsed().as_secs_f64());
                        }
                        (latencies, failures)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_default())
                .collect()
        });
        let seconds = start.elapsed().as_secs_f64();
        let failures = per_client.iter().map(|(_, f)| f).sum();
        let latencies = per_client.into_iter().flat_map(|(l, _)| l).collect();
        Ok((latencies, failures, seconds))
    }
}

/// The server's process, stopped when dropped: on every path out, errors included.
struct Stopped(std::process::Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
