//! `cargo xtask bench`: training and inference throughput of the models through
//! `fmnist-bench` (one process per measurement, so each peak-memory figure is its own),
//! optionally beside the PyTorch reference `bench/pytorch_ref.py` and the Keras 3 on JAX one
//! `bench/keras_ref.py`, repeated and interleaved, reported as medians with ratios in
//! `results/bench.json` and `results/BENCH.md` (`bench-cuda.json` and `BENCH-cuda.md` with
//! `--device cuda`, where the PyTorch peer runs on the same GPU).
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::{project_root, write_atomic, Build};

/// Measure training and inference speed (images/s), peak memory and data-load time.
#[derive(clap::Args, Debug)]
pub struct Bench {
    /// Models, comma-separated (the PyTorch reference has every model but cnn-3conv and mlp-bn;
    /// the Keras one cnn, lstm, mlp, cnn-deep and resnet).
    #[arg(long, value_delimiter = ',', default_value = "cnn,lstm")]
    models: Vec<String>,
    /// candle kernel choices to measure, comma-separated: fused, generic.
    #[arg(long, value_delimiter = ',', default_value = "fused")]
    kernels: Vec<String>,
    /// Also run these references in the same invocation and print the ratios, comma-separated:
    /// `pytorch` (eager, `bench/pytorch_ref.py`), `keras` (Keras 3 on JAX/XLA,
    /// `bench/keras_ref.py`).
    #[arg(long, value_enum, value_delimiter = ',')]
    peer: Vec<Peer>,
    /// Python interpreter with the peers' packages (torch and numpy; keras, jax and numpy), for
    /// `--peer` (default: $FMNIST_PYTHON, else python3).
    #[arg(long, value_name = "PATH")]
    python: Option<PathBuf>,
    /// Times each measurement is repeated (interleaved); the median is reported.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Timed training steps per measurement.
    #[arg(long, default_value_t = 40)]
    batches: usize,
    /// Untimed warm-up steps before them.
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// Images per step.
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    /// Threads of every implementation.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Device for candle and the PyTorch peer: cpu or cuda (metal: candle only). With cuda the
    /// report is BENCH-cuda.md and bench-cuda.json; the Keras peer runs on the CPU only.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Folder for the report (bench.json and BENCH.md, or their -cuda twins).
    #[arg(long, default_value = "results")]
    results: PathBuf,
    /// Run the fmnist-bench found in DIR instead of building it (on a machine without cargo,
    /// such as a GPU machine the binaries were carried to).
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    /// Stop a measurement that runs longer than this many seconds, say so and go on with the
    /// others (a hung process would otherwise hold the whole run, and a lent GPU with it). A
    /// measurement that fails is left out the same way; the command then ends with an error
    /// that lists what was left out.
    #[arg(long, value_name = "SECONDS", default_value_t = 900)]
    measure_timeout: u64,
    #[command(flatten)]
    build: Build,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Peer {
    Pytorch,
    Keras,
}

/// A peer's reference script, the packages it needs, its name (in `--peer`, and the start of
/// the implementation name the script reports) and how the table names it.
struct PeerInfo {
    script: &'static str,
    packages: &'static str,
    name: &'static str,
    label: &'static str,
}

impl Peer {
    fn info(self) -> PeerInfo {
        match self {
            Peer::Pytorch => PeerInfo {
                script: "bench/pytorch_ref.py",
                packages: "torch and numpy",
                name: "pytorch",
                label: "PyTorch",
            },
            Peer::Keras => PeerInfo {
                script: "bench/keras_ref.py",
                packages: "keras, jax and numpy",
                name: "keras",
                label: "Keras/JAX",
            },
        }
    }
}

/// One measurement, as printed by `fmnist-bench` and the peers' reference scripts.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Measurement {
    implementation: String,
    model: String,
    threads: usize,
    batch_size: usize,
    batches: usize,
    train_images_per_s: f64,
    epoch_seconds: f64,
    infer_images_per_s: f64,
    test_accuracy: f64,
    data_load_seconds: f64,
    peak_rss_mb: Option<f64>,
    /// The data folder read (fmnist-bench reports it; the peer is given it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data_dir: Option<String>,
    /// Where and from which commit (fmnist-bench reports them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    machine: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    commit: Option<String>,
    /// Tensor operations of one training step (fmnist-bench counts them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    step_ops: Option<StepOps>,
}

/// The tensor operations of one training step, as fmnist-bench counts them: the step's launch
/// budget on a GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct StepOps {
    forward: usize,
    backward: usize,
    optimizer: usize,
}

/// The medians of one (implementation, model) over the repeats.
#[derive(Debug, Clone, Serialize)]
struct Row {
    implementation: String,
    model: String,
    repeats: usize,
    train_images_per_s: f64,
    epoch_seconds: f64,
    infer_images_per_s: f64,
    peak_rss_mb: Option<f64>,
    data_load_seconds: f64,
    /// Each repeat's training images/s, to show the spread.
    train_images_per_s_all: Vec<f64>,
    /// Each repeat's inference images/s, likewise.
    infer_images_per_s_all: Vec<f64>,
    /// Tensor operations per training step (the same in every repeat).
    #[serde(skip_serializing_if = "Option::is_none")]
    step_ops: Option<StepOps>,
}

#[derive(Debug, Serialize)]
struct Report {
    machine: String,
    commit: String,
    command: String,
    /// The repeats asked for; the rows hold fewer when the run was stopped early.
    repeats_planned: usize,
    rows: Vec<Row>,
    measurements: Vec<Measurement>,
}

impl Bench {
    pub fn run(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.repeats > 0, "--repeats must be at least 1");
        if self.device != "cpu" && self.peer.contains(&Peer::Keras) {
            bail!(
                "the Keras peer runs on the CPU only: leave it out with --device {}",
                self.device
            );
        }
        let bin = match &self.bin_dir {
            Some(dir) => dir.join("fmnist-bench"),
            None => self.build.build(&["fmnist-train"])?.join("fmnist-bench"),
        };
        if !bin.is_file() {
            bail!("{} not found", bin.display());
        }
        let root = project_root();
        let python = self
            .python
            .clone()
            .or_else(|| std::env::var_os("FMNIST_PYTHON").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("python3"));
        let (mut measurements, mut left_out) = (Vec::new(), Vec::new());
        for repeat in 1..=self.repeats {
            for model in &self.models {
                for kernels in &self.kernels {
                    let mut cmd = Command::new(&bin);
                    cmd.args([
                        "--model",
                        model,
                        "--kernels",
                        kernels,
                        "--device",
                        &self.device,
                    ]);
                    match self.measure(cmd, repeat, model, kernels)? {
                        Outcome::Measured(m) => measurements.push(*m),
                        Outcome::LeftOut(why) => left_out.push(why),
                    }
                }
                for peer in &self.peer {
                    let PeerInfo {
                        script,
                        packages,
                        name,
                        ..
                    } = peer.info();
                    // The same files fmnist-bench found.
                    let data_dir = measurements
                        .iter()
                        .rev()
                        .find_map(|m| m.data_dir.clone())
                        .context("no candle measurement to take the data folder from")?;
                    let mut cmd = Command::new(&python);
                    cmd.arg(root.join(script))
                        .args(["--model", model])
                        .arg("--data-dir")
                        .arg(&data_dir);
                    if self.device != "cpu" {
                        cmd.args(["--device", &self.device]);
                    }
                    match self.measure(cmd, repeat, model, name)? {
                        Outcome::Measured(m) => measurements.push(*m),
                        Outcome::LeftOut(why) => left_out.push(format!(
                            "{why} (are {packages} installed for {}? docs/speed.md)",
                            python.display()
                        )),
                    }
                }
            }
            // Written after every repeat, so that a run stopped early keeps what it measured.
            let table = self.write_report(&measurements)?;
            if repeat == self.repeats {
                println!("\n{table}");
            }
        }
        println!(
            "xtask: wrote {}",
            root.join(&self.results)
                .join(self.file("BENCH", "md"))
                .display()
        );
        if !left_out.is_empty() {
            bail!(
                "{} measurement(s) left out of the report:\n  {}",
                left_out.len(),
                left_out.join("\n  ")
            );
        }
        Ok(())
    }

    /// `stem.ext`, or `stem-cuda.ext` (or the device's name) off the CPU.
    fn file(&self, stem: &str, ext: &str) -> String {
        if self.device == "cpu" {
            format!("{stem}.{ext}")
        } else {
            format!("{stem}-{}.{ext}", self.device)
        }
    }

    /// Writes bench.json and BENCH.md from the measurements so far, and returns the Markdown.
    fn write_report(&self, measurements: &[Measurement]) -> anyhow::Result<String> {
        let told = |f: fn(&Measurement) -> Option<String>| {
            measurements
                .iter()
                .find_map(f)
                .unwrap_or_else(|| "unknown".into())
        };
        let report = Report {
            machine: told(|m| m.machine.clone()),
            commit: told(|m| m.commit.clone()),
            command: self.command_line(),
            repeats_planned: self.repeats,
            rows: medians(measurements),
            measurements: measurements.to_vec(),
        };
        let table = markdown(&report);
        let root = project_root();
        let results = root.join(&self.results);
        std::fs::create_dir_all(&results)?;
        write_atomic(
            &results.join(self.file("bench", "json")),
            serde_json::to_string_pretty(&report)?.as_bytes(),
        )?;
        // The serving benchmark (`cargo xtask bench-serve`) has a file of its own.
        let bench_md = results.join(self.file("BENCH", "md"));
        let text = table.clone();
        write_atomic(&bench_md, text.as_bytes())?;
        Ok(table)
    }

    /// One measurement: `cmd`'s JSON line; or, if it failed or ran past `--measure-timeout`
    /// (and was stopped), why, said at once too: the run goes on without it.
    fn measure(
        &self,
        mut cmd: Command,
        repeat: usize,
        model: &str,
        what: &str,
    ) -> anyhow::Result<Outcome> {
        eprintln!(
            "xtask: bench {model} {what} (repeat {repeat}/{})",
            self.repeats
        );
        cmd.current_dir(project_root())
            .args(["--threads", &self.threads.to_string()])
            .args(["--batches", &self.batches.to_string()])
            .args(["--warmup", &self.warmup.to_string()])
            .args(["--batch-size", &self.batch_size.to_string()])
            .env("RAYON_NUM_THREADS", self.threads.to_string())
            .env("OMP_NUM_THREADS", self.threads.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let outcome = run_measurement(&mut cmd, self.measure_timeout)?;
        if let Outcome::LeftOut(why) = &outcome {
            eprintln!("xtask: warning: {model} {what} (repeat {repeat}) left out: {why}");
        }
        Ok(outcome)
    }

    fn command_line(&self) -> String {
        let mut s = format!(
            "cargo xtask bench --models {} --kernels {} --repeats {} --batches {} --threads {}",
            self.models.join(","),
            self.kernels.join(","),
            self.repeats,
            self.batches,
            self.threads
        );
        if self.device != "cpu" {
            let _ = write!(s, " --device {}", self.device);
        }
        if !self.peer.is_empty() {
            let names: Vec<&str> = self.peer.iter().map(|p| p.info().name).collect();
            let _ = write!(s, " --peer {}", names.join(","));
        }
        s
    }
}

/// What one measurement gave.
#[derive(Debug)]
enum Outcome {
    Measured(Box<Measurement>),
    /// Failed, printed no measurement or ran too long: why.
    LeftOut(String),
}

/// Runs one measuring command (stdout piped) for at most `seconds` and reads the JSON line it
/// prints last. Only a command that cannot be started is an error.
fn run_measurement(cmd: &mut Command, seconds: u64) -> anyhow::Result<Outcome> {
    let Some((status, stdout)) = run_with_timeout(cmd, seconds)? else {
        return Ok(Outcome::LeftOut(format!(
            "ran past {seconds} s (--measure-timeout) and was stopped"
        )));
    };
    if !status.success() {
        return Ok(Outcome::LeftOut(format!("{cmd:?} failed ({status})")));
    }
    let Some(line) = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
    else {
        return Ok(Outcome::LeftOut(format!("{cmd:?} printed no JSON line")));
    };
    Ok(match serde_json::from_str(line) {
        Ok(m) => Outcome::Measured(Box::new(m)),
        Err(e) => Outcome::LeftOut(format!("{cmd:?} printed {line}, not a measurement: {e}")),
    })
}

/// Runs `cmd` (stdout piped) to its end and returns its status and stdout, or `None` after
/// killing it once it has run `seconds`.
fn run_with_timeout(
    cmd: &mut Command,
    seconds: u64,
) -> anyhow::Result<Option<(std::process::ExitStatus, String)>> {
    use std::io::Read;
    let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    // Read stdout on a thread of its own, so that a full pipe never blocks the child.
    let mut pipe = child.stdout.take().context("stdout is piped")?;
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        pipe.read_to_string(&mut text).map(|_| text)
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if std::time::Instant::now() >= deadline {
            child.kill()?;
            child.wait()?;
            // Not waiting for the reader: a process the child started may hold the pipe open.
            return Ok(None);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let stdout = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the stdout reader panicked"))??;
    Ok(Some((status, stdout)))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn medians(ms: &[Measurement]) -> Vec<Row> {
    let mut keys: Vec<(String, String)> = Vec::new();
    for m in ms {
        let key = (m.model.clone(), m.implementation.clone());
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    keys.into_iter()
        .map(|(model, implementation)| {
            let of: Vec<&Measurement> = ms
                .iter()
                .filter(|m| m.model == model && m.implementation == implementation)
                .collect();
            let pick = |f: fn(&Measurement) -> f64| median(of.iter().map(|m| f(m)).collect());
            let rss: Vec<f64> = of.iter().filter_map(|m| m.peak_rss_mb).collect();
            Row {
                repeats: of.len(),
                train_images_per_s: pick(|m| m.train_images_per_s),
                epoch_seconds: pick(|m| m.epoch_seconds),
                infer_images_per_s: pick(|m| m.infer_images_per_s),
                peak_rss_mb: (!rss.is_empty()).then(|| median(rss)),
                data_load_seconds: pick(|m| m.data_load_seconds),
                train_images_per_s_all: of.iter().map(|m| m.train_images_per_s).collect(),
                infer_images_per_s_all: of.iter().map(|m| m.infer_images_per_s).collect(),
                step_ops: of.iter().find_map(|m| m.step_ops),
                implementation,
                model,
            }
        })
        .collect()
}

/// The tables: each candle row with its ratios to each peer's row of the same model, then the
/// tensor operations per training step.
fn markdown(r: &Report) -> String {
    let repeats_done = r.rows.first().map_or(0, |row| row.repeats);
    let mut s = String::from("# Benchmarks\n\n");
    let _ = writeln!(s, "- Machine: {}", r.machine);
    let _ = writeln!(s, "- Commit: {}", r.commit);
    let _ = writeln!(s, "- Command: `{}`", r.command);
    let _ = writeln!(
        s,
        "- Medians of {repeats_done} interleaved repeats; training images/s over the timed steps (batch assembly included); inference over the 10,000 test images in chunks of 1,000; peak RSS of the whole process.\n"
    );
    if repeats_done < r.repeats_planned {
        let _ = writeln!(
            s,
            "- **Incomplete**: {repeats_done} of the {} repeats asked for; the run stopped before the rest.\n",
            r.repeats_planned
        );
    }
    // Ratios to each peer that has rows: training, inference and peak memory.
    let peers: Vec<(&str, &str)> = [Peer::Pytorch, Peer::Keras]
        .map(|p| (p.info().name, p.info().label))
        .into_iter()
        .filter(|(prefix, _)| {
            r.rows
                .iter()
                .any(|row| row.implementation.starts_with(prefix))
        })
        .collect();
    s.push_str("| model | implementation | train img/s | epoch (48k) s | test inference img/s | peak RSS MB | data load s |");
    for (_, name) in &peers {
        let _ = write!(
            s,
            " train vs {name} | inference vs {name} | RSS vs {name} |"
        );
    }
    s.push_str("\n|---|---|---:|---:|---:|---:|---:|");
    s.push_str(&"---:|---:|---:|".repeat(peers.len()));
    s.push('\n');
    for row in &r.rows {
        let _ = write!(
            s,
            "| {} | {} | {:.0} | {:.1} | {:.0} | {} | {:.2} |",
            row.model,
            row.implementation,
            row.train_images_per_s,
            row.epoch_seconds,
            row.infer_images_per_s,
            row.peak_rss_mb.map_or("-".into(), |v| format!("{v:.0}")),
            row.data_load_seconds,
        );
        let is_peer = peers.iter().any(|(p, _)| row.implementation.starts_with(p));
        for (prefix, _) in &peers {
            let peer = r
                .rows
                .iter()
                .find(|p| p.model == row.model && p.implementation.starts_with(prefix));
            let ratio = |a: f64, b: f64| format!("{:.2}x", a / b);
            let cells = match peer {
                Some(p) if !is_peer => [
                    ratio(row.train_images_per_s, p.train_images_per_s),
                    ratio(row.infer_images_per_s, p.infer_images_per_s),
                    match (row.peak_rss_mb, p.peak_rss_mb) {
                        (Some(a), Some(b)) => ratio(a, b),
                        _ => "-".into(),
                    },
                ],
                _ => ["-".into(), "-".into(), "-".into()],
            };
            let _ = write!(s, " {} |", cells.join(" | "));
        }
        s.push('\n');
    }
    let counted: Vec<(&Row, StepOps)> = r
        .rows
        .iter()
        .filter_map(|row| row.step_ops.map(|ops| (row, ops)))
        .collect();
    if !counted.is_empty() {
        s.push_str("\n## Tensor operations per training step\n\n");
        s.push_str("Counted on candle's graph of one step (`fmnist-bench`, field `step_ops`): on a GPU each operation is at least one kernel launch, so this is a step's launch budget. Backward counts the gradient operations (with the patched candle-core a tensor's first gradient is stored as it is, with no zero-filled buffer or add); the optimizer counts its update's operations, one gather per group and one copy into each parameter.\n\n");
        s.push_str("| model | implementation | forward | backward | optimizer | total |\n");
        s.push_str("|---|---|---:|---:|---:|---:|\n");
        for (row, ops) in counted {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} |",
                row.model,
                row.implementation,
                ops.forward,
                ops.backward,
                ops.optimizer,
                ops.forward + ops.backward + ops.optimizer
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_measurement_past_its_time_is_stopped_and_a_finished_one_read() {
        let mut done = Command::new("sh");
        done.args(["-c", "echo '{\"a\": 1}'; exit 3"])
            .stdout(Stdio::piped());
        let (status, out) = run_with_timeout(&mut done, 30).unwrap().unwrap();
        assert_eq!((status.code(), out.as_str()), (Some(3), "{\"a\": 1}\n"));
        let mut hung = Command::new("sleep");
        hung.arg("30").stdout(Stdio::piped());
        let start = std::time::Instant::now();
        assert!(run_with_timeout(&mut hung, 1).unwrap().is_none());
        assert!(start.elapsed() < std::time::Duration::from_secs(10));
    }

    #[test]
    fn a_failed_or_silent_measurement_is_left_out_with_its_reason() {
        let outcome = |script: &str, seconds| {
            let mut cmd = Command::new("sh");
            cmd.args(["-c", script]).stdout(Stdio::piped());
            run_measurement(&mut cmd, seconds).unwrap()
        };
        let line = serde_json::to_string(&m("candle-fused", "cnn", 1000.0, 4000.0, 500.0)).unwrap();
        match outcome(&format!("echo starting; echo '{line}'"), 30) {
            Outcome::Measured(got) => assert_eq!(got.train_images_per_s, 1000.0),
            other => panic!("{other:?}"),
        }
        let why = |o: Outcome| match o {
            Outcome::LeftOut(why) => why,
            other => panic!("{other:?}"),
        };
        assert!(why(outcome(&format!("echo '{line}'; exit 3"), 30))
            .ends_with("failed (exit status: 3)"));
        assert!(why(outcome("echo no measurement", 30)).ends_with("printed no JSON line"));
        assert!(why(outcome("echo '{\"model\": 1}'", 30)).contains("not a measurement"));
        // The shell's own child keeps the output pipe open after the shell is stopped.
        let start = std::time::Instant::now();
        assert_eq!(
            why(outcome("sleep 30; echo late", 1)),
            "ran past 1 s (--measure-timeout) and was stopped"
        );
        assert!(start.elapsed() < std::time::Duration::from_secs(10));
    }

    fn m(implementation: &str, model: &str, train: f64, infer: f64, rss: f64) -> Measurement {
        Measurement {
            implementation: implementation.into(),
            model: model.into(),
            threads: 2,
            batch_size: 256,
            batches: 40,
            train_images_per_s: train,
            epoch_seconds: 48_000.0 / train,
            infer_images_per_s: infer,
            test_accuracy: 0.5,
            data_load_seconds: 0.3,
            peak_rss_mb: Some(rss),
            data_dir: None,
            machine: None,
            commit: None,
            step_ops: implementation.starts_with("candle").then_some(StepOps {
                forward: 10,
                backward: 25,
                optimizer: 5,
            }),
        }
    }

    #[test]
    fn medians_per_implementation_and_ratios_to_the_peer() {
        let ms = vec![
            m("candle-fused", "cnn", 1000.0, 4000.0, 500.0),
            m("pytorch-2", "cnn", 2000.0, 2000.0, 1000.0),
            m("candle-fused", "cnn", 3000.0, 5000.0, 400.0),
            m("pytorch-2", "cnn", 2000.0, 2000.0, 1000.0),
            m("candle-fused", "cnn", 2000.0, 6000.0, 450.0),
            m("pytorch-2", "cnn", 1000.0, 2000.0, 1000.0),
        ];
        let rows = medians(&ms);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].implementation, "candle-fused");
        assert_eq!(rows[0].train_images_per_s, 2000.0);
        assert_eq!(rows[0].infer_images_per_s, 5000.0);
        assert_eq!(rows[0].peak_rss_mb, Some(450.0));
        assert_eq!(rows[0].train_images_per_s_all, vec![1000.0, 3000.0, 2000.0]);
        assert_eq!(rows[0].infer_images_per_s_all, vec![4000.0, 5000.0, 6000.0]);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        let table = markdown(&Report {
            machine: "test".into(),
            commit: "abc".into(),
            command: "cargo xtask bench".into(),
            repeats_planned: 3,
            rows,
            measurements: ms.clone(),
        });
        assert!(
            table.contains(
                "| cnn | candle-fused | 2000 | 24.0 | 5000 | 450 | 0.30 | 1.00x | 2.50x | 0.45x |"
            ),
            "{table}"
        );
        assert!(
            table.contains("| cnn | pytorch-2 | 2000 | 24.0 | 2000 | 1000 | 0.30 | - | - | - |")
        );
        assert!(!table.contains("Incomplete"), "{table}");
        // A run stopped early says how far it got.
        let partial = markdown(&Report {
            machine: "test".into(),
            commit: "abc".into(),
            command: "cargo xtask bench".into(),
            repeats_planned: 5,
            rows: medians(&ms),
            measurements: ms.clone(),
        });
        assert!(
            partial.contains("- **Incomplete**: 3 of the 5 repeats asked for;"),
            "{partial}"
        );
        // A second peer adds its three columns to every row.
        let mut two = ms.clone();
        two.push(m("keras-3.12.0-jax-0.8.1", "cnn", 4000.0, 10000.0, 900.0));
        let table = markdown(&Report {
            machine: "test".into(),
            commit: "abc".into(),
            command: "cargo xtask bench".into(),
            repeats_planned: 3,
            rows: medians(&two),
            measurements: two,
        });
        assert!(
            table.contains("| train vs PyTorch | inference vs PyTorch | RSS vs PyTorch | train vs Keras/JAX | inference vs Keras/JAX | RSS vs Keras/JAX |"),
            "{table}"
        );
        assert!(
            table.contains(
                "| cnn | candle-fused | 2000 | 24.0 | 5000 | 450 | 0.30 | 1.00x | 2.50x | 0.45x | 0.50x | 0.50x | 0.50x |"
            ),
            "{table}"
        );
        assert!(table.contains("| cnn | keras-3.12.0-jax-0.8.1 | 4000 | 12.0 | 10000 | 900 | 0.30 | - | - | - | - | - | - |"));
        // The peers count no operations and have no row in the second table.
        assert!(
            table.contains("| cnn | candle-fused | 10 | 25 | 5 | 40 |"),
            "{table}"
        );
        assert!(!table.contains("| cnn | pytorch-2 | 10 |"));
    }
}
