//! `cargo xtask sweep`: a grid of models × settings × seeds laid out as one run folder each,
//! then trained here a few runs at a time or handed to Slurm as a job array, and evaluated
//! as one results folder (the per-setting mean ± std table is fmnist-eval's).
//!
//! Every run is one `fmnist-train --continue` command, so running a task again (a requeued
//! or preempted Slurm task, a sweep started again here) resumes its run instead of restarting
//! it, and keeps the runs that have finished.
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use indicatif::{ProgressBar, ProgressStyle};

use crate::{project_root, run, write_atomic, Build};

/// Plan a sweep of models × settings × seeds, run it here (`--local J`) or as a Slurm job
/// array (`--slurm`), and evaluate it. Without `--local` or `--slurm` it prints the plan.
#[derive(clap::Args, Debug)]
pub struct Sweep {
    /// Models, comma-separated, or `all` for every model of the registry.
    #[arg(long, value_delimiter = ',', required = true)]
    models: Vec<String>,
    /// Preset every run starts from: `study` or `best`.
    #[arg(long, default_value = "study")]
    preset: String,
    /// Seeds per setting: N trains seeds 42..42+N.
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    /// A flag of fmnist-train and its values, `KEY=V1,V2,...` (repeatable; e.g. `lr=1e-3,2e-3`,
    /// `batch-size=64`): the sweep trains every combination of the values. A key with one
    /// value is set for every run; keys with several name the run folders.
    #[arg(long = "set", value_name = "KEY=V1,V2")]
    set: Vec<String>,
    /// Folder of the sweep: a folder per run (`MODEL[-KEY-VALUE...]/seed-S`), sweep.json (the
    /// plan), logs/, slurm/ (the scripts) and, once evaluated, REPORT.md.
    #[arg(long, default_value = "results/sweep")]
    out: PathBuf,
    /// Train the runs on this machine, J at a time, the CPU threads split between them.
    #[arg(long, value_name = "J", conflicts_with = "slurm")]
    local: Option<usize>,
    /// Write a Slurm job array (one task per run, requeueable) and an evaluation job that
    /// starts when the array has ended, and submit both with sbatch where it is on the PATH.
    #[arg(long)]
    slurm: bool,
    /// With --slurm: write the scripts and submit nothing (submit later with slurm/submit.sh).
    #[arg(long, requires = "slurm")]
    dry_run: bool,
    /// With --slurm: after submitting, wait for the evaluation job to end and print its table.
    #[arg(long, requires = "slurm", conflicts_with = "dry_run")]
    wait: bool,
    /// Slurm: the time limit of each task (sbatch --time), e.g. 04:00:00.
    #[arg(long, default_value = "04:00:00", value_name = "TIME")]
    time: String,
    /// Slurm: CPUs of each task (sbatch --cpus-per-task); its run trains on as many threads.
    #[arg(long, default_value_t = 2, value_name = "N")]
    cpus_per_task: usize,
    /// Slurm: the partition (sbatch --partition; default: the cluster's).
    #[arg(long)]
    partition: Option<String>,
    /// Slurm: at most this many tasks of the array at once (sbatch --array=...%N).
    #[arg(long, value_name = "N")]
    max_running: Option<usize>,
    /// Device of every run and of the evaluation: auto, cpu, cuda, metal.
    #[arg(long, default_value = "auto")]
    device: String,
    #[command(flatten)]
    build: Build,
}

/// Flags the sweep sets itself, with what to use instead.
const RESERVED: [(&str, &str); 11] = [
    ("model", "--models"),
    ("preset", "--preset"),
    ("seed", "--seeds"),
    ("seeds", "--seeds"),
    ("out", "--out"),
    ("results", "--out"),
    ("threads", "--local J or --cpus-per-task"),
    ("device", "--device"),
    ("resume", "a sweep started again, which resumes its runs"),
    ("force", "a new --out"),
    ("continue", "nothing: every run continues"),
];

/// One axis of the grid: a flag of fmnist-train and its values.
#[derive(Debug, Clone, PartialEq)]
struct Axis {
    key: String,
    values: Vec<String>,
}

impl Axis {
    fn parse(spec: &str) -> anyhow::Result<Axis> {
        let (key, values) = spec
            .split_once('=')
            .with_context(|| format!("--set {spec}: expected KEY=V1,V2,... (e.g. lr=1e-3,2e-3)"))?;
        let key = key.trim().trim_start_matches("--").to_string();
        ensure!(!key.is_empty(), "--set {spec}: the key is empty");
        if let Some((_, instead)) = RESERVED.iter().find(|(k, _)| *k == key) {
            bail!("--set {key}: the sweep sets --{key} itself; use {instead}");
        }
        let values: Vec<String> = values.split(',').map(|v| v.trim().to_string()).collect();
        ensure!(
            values.iter().all(|v| !v.is_empty()),
            "--set {spec}: an empty value"
        );
        let mut unique = values.clone();
        unique.sort();
        unique.dedup();
        ensure!(
            unique.len() == values.len(),
            "--set {spec}: a value is given twice"
        );
        Ok(Axis { key, values })
    }
}

/// One run of the sweep: its folder (relative to the sweep's) and its fmnist-train flags.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
struct PlannedRun {
    name: String,
    args: Vec<String>,
}

/// The runs of the grid: models × every combination of the values × seeds, in that order.
fn plan(models: &[String], preset: &str, axes: &[Axis], seeds: &[u64]) -> Vec<PlannedRun> {
    let mut settings: Vec<Vec<(&str, &str)>> = vec![Vec::new()];
    for axis in axes {
        settings = settings
            .into_iter()
            .flat_map(|s| {
                axis.values.iter().map(move |v| {
                    let mut s = s.clone();
                    s.push((axis.key.as_str(), v.as_str()));
                    s
                })
            })
            .collect();
    }
    let mut runs = Vec::new();
    for model in models {
        for setting in &settings {
            let mut name = model.clone();
            for ((key, value), axis) in setting.iter().zip(axes) {
                if axis.values.len() > 1 {
                    name.push_str(&format!("-{key}-{}", folder_safe(value)));
                }
            }
            for seed in seeds {
                let mut args = vec![
                    "--model".to_string(),
                    model.clone(),
                    "--preset".into(),
                    preset.into(),
                    "--seed".into(),
                    seed.to_string(),
                ];
                for (key, value) in setting {
                    args.push(format!("--{key}"));
                    args.push(value.to_string());
                }
                runs.push(PlannedRun {
                    name: format!("{name}/{}", fmnist_runs::seed_name(*seed)),
                    args,
                });
            }
        }
    }
    runs
}

/// `value` as part of a folder name: letters, digits, `.`, `-` and `+` kept, the rest `_`.
fn folder_safe(value: &str) -> String {
    value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-.+".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `arg` quoted for bash where it needs it.
fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

fn shell_line(args: impl IntoIterator<Item = impl AsRef<str>>) -> String {
    args.into_iter()
        .map(|a| shell_quote(a.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(unix)]
fn make_executable(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", path.display()))
}

#[cfg(not(unix))]
fn make_executable(_: &Path) -> anyhow::Result<()> {
    Ok(())
}

impl Sweep {
    pub fn run(&self) -> anyhow::Result<()> {
        ensure!(self.seeds >= 1, "--seeds must be at least 1");
        ensure!(
            self.local != Some(0),
            "--local must be at least 1 (runs at a time)"
        );
        ensure!(
            self.cpus_per_task >= 1,
            "--cpus-per-task must be at least 1"
        );
        let axes: Vec<Axis> = self
            .set
            .iter()
            .map(|s| Axis::parse(s))
            .collect::<anyhow::Result<_>>()?;
        for (i, a) in axes.iter().enumerate() {
            ensure!(
                !axes[..i].iter().any(|b| b.key == a.key),
                "--set {}: the key is given twice; list its values in one --set {}=V1,V2",
                a.key,
                a.key
            );
        }
        let bin = self.build.build(&["fmnist-train", "fmnist-eval"])?;
        let train_bin = bin.join("fmnist-train");
        let models: Vec<String> = if self.models.iter().any(|m| m == "all") {
            crate::train_all::output_lines(Command::new(&train_bin).arg("--list-models"))?
        } else {
            self.models.clone()
        };
        let seeds: Vec<u64> = (42..42 + self.seeds).collect();
        let runs = plan(&models, &self.preset, &axes, &seeds);
        let out = if self.out.is_absolute() {
            self.out.clone()
        } else {
            project_root().join(&self.out)
        };

        // fmnist-train checks each run's flags and says where its folder stands.
        let mut states = Vec::with_capacity(runs.len());
        for r in &runs {
            let status = crate::train_all::output_lines(
                Command::new(&train_bin)
                    .args(&r.args)
                    .arg("--out")
                    .arg(out.join(&r.name))
                    .arg("--status"),
            )
            .with_context(|| format!("run {}: fmnist-train refuses its flags", r.name))?;
            let state = status
                .first()
                .and_then(|l| l.split_once('\t'))
                .map_or("?", |(s, _)| s)
                .to_string();
            states.push(state);
        }
        self.print_plan(&runs, &states, &models, &axes, &out);
        if self.local.is_none() && !self.slurm {
            println!(
                "xtask: nothing run: pass --local J to train here, or --slurm to submit to Slurm"
            );
            return Ok(());
        }
        std::fs::create_dir_all(out.join("logs"))
            .with_context(|| format!("creating {}", out.display()))?;
        self.write_plan_file(&runs, &out)?;

        if let Some(jobs) = self.local {
            let failed = self.run_local(&runs, &states, jobs, &bin, &out)?;
            let evaluated = self.evaluate_here(&bin, &out);
            if !failed.is_empty() {
                eprintln!("xtask: {} of {} runs failed:", failed.len(), runs.len());
                for (name, why) in &failed {
                    eprintln!("  {name}: {why}");
                }
            }
            evaluated?;
            println!("xtask: report: {}", out.join("REPORT.md").display());
            ensure!(
                failed.is_empty(),
                "some runs failed (their logs are in {}; the sweep started again resumes them)",
                out.join("logs").display()
            );
        } else {
            let submit = self.write_slurm(&runs, &bin, &out)?;
            self.submit(&submit, &runs, &out)?;
        }
        Ok(())
    }

    fn print_plan(
        &self,
        runs: &[PlannedRun],
        states: &[String],
        models: &[String],
        axes: &[Axis],
        out: &Path,
    ) {
        let mut shape = vec![format!("{} models", models.len())];
        for a in axes.iter().filter(|a| a.values.len() > 1) {
            shape.push(format!("{} {}", a.values.len(), a.key));
        }
        shape.push(format!("{} seeds", self.seeds));
        println!(
            "sweep: {} runs ({}), preset {}, in {}",
            runs.len(),
            shape.join(" × "),
            self.preset,
            out.display()
        );
        let width = runs.iter().map(|r| r.name.len()).max().unwrap_or(0);
        for (i, (r, state)) in runs.iter().zip(states).enumerate() {
            println!(
                "  {i:>3}  {:<width$}  {state:<9}  fmnist-train {}",
                r.name,
                shell_line(&r.args)
            );
        }
    }

    /// `sweep.json`: the command, the grid and each run's folder and flags.
    fn write_plan_file(&self, runs: &[PlannedRun], out: &Path) -> anyhow::Result<()> {
        let plan = serde_json::json!({
            "command": self.command_line(),
            "preset": self.preset,
            "seeds": self.seeds,
            "set": self.set,
            "runs": runs,
        });
        let mut text = serde_json::to_string_pretty(&plan)?;
        text.push('\n');
        write_atomic(&out.join("sweep.json"), text.as_bytes())
    }

    /// The flags every run gets beside its own.
    fn common_args(&self, out: &Path, run: &PlannedRun) -> Vec<String> {
        let mut args = vec!["--continue".to_string(), "--no-progress".into()];
        args.extend(run.args.iter().cloned());
        args.push("--out".into());
        args.push(out.join(&run.name).to_string_lossy().into_owned());
        args.push("--device".into());
        args.push(self.device.clone());
        args
    }

    /// Trains the runs here, `jobs` at a time; returns the failed ones with why.
    fn run_local(
        &self,
        runs: &[PlannedRun],
        states: &[String],
        jobs: usize,
        bin: &Path,
        out: &Path,
    ) -> anyhow::Result<Vec<(String, String)>> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = (cores / jobs).max(1);
        let todo: VecDeque<usize> = (0..runs.len())
            .filter(|&i| states[i] != "finished")
            .collect();
        println!(
            "xtask: training {} runs here, {} at a time, {threads} threads each ({} finished already)",
            todo.len(),
            jobs.min(todo.len().max(1)),
            runs.len() - todo.len()
        );
        let bar = ProgressBar::new(runs.len() as u64).with_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} runs  {elapsed_precise}  {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_position((runs.len() - todo.len()) as u64);
        let queue = Mutex::new(todo);
        let failed = Mutex::new(Vec::new());
        let train_bin = bin.join("fmnist-train");
        std::thread::scope(|scope| {
            for _ in 0..jobs {
                scope.spawn(|| loop {
                    let Some(i) = queue.lock().map(|mut q| q.pop_front()).ok().flatten() else {
                        return;
                    };
                    let r = &runs[i];
                    let log = out.join("logs").join(format!("run-{i}.out"));
                    let start = Instant::now();
                    let outcome = (|| -> anyhow::Result<()> {
                        let file = std::fs::OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(&log)
                            .with_context(|| format!("opening {}", log.display()))?;
                        let status = Command::new(&train_bin)
                            .current_dir(project_root())
                            .args(self.common_args(out, r))
                            .args(["--threads", &threads.to_string()])
                            .stdin(Stdio::null())
                            .stdout(file.try_clone()?)
                            .stderr(file)
                            .status()
                            .with_context(|| format!("starting {}", train_bin.display()))?;
                        ensure!(
                            status.success(),
                            "fmnist-train failed ({status}); see {}",
                            log.display()
                        );
                        Ok(())
                    })();
                    match outcome {
                        Ok(()) => bar.suspend(|| {
                            println!(
                                "  {}: test accuracy {} ({:.0} s)",
                                r.name,
                                test_accuracy(&out.join(&r.name)),
                                start.elapsed().as_secs_f64()
                            )
                        }),
                        Err(e) => {
                            bar.suspend(|| println!("  {}: FAILED: {e:#}", r.name));
                            if let Ok(mut f) = failed.lock() {
                                f.push((r.name.clone(), format!("{e:#}")));
                            }
                        }
                    }
                    bar.inc(1);
                    bar.set_message(r.name.clone());
                });
            }
        });
        bar.finish_and_clear();
        Ok(failed.into_inner().unwrap_or_default())
    }

    fn evaluate_here(&self, bin: &Path, out: &Path) -> anyhow::Result<()> {
        println!("xtask: evaluating the sweep");
        run(Command::new(bin.join("fmnist-eval"))
            .current_dir(project_root())
            .arg("--results")
            .arg(out)
            .args(["--device", &self.device])
            .env("FMNIST_REPORT_COMMAND", self.command_line()))
    }

    /// Writes slurm/train.sbatch (the array), slurm/evaluate.sbatch and slurm/submit.sh, which
    /// submits the two; returns the path of submit.sh.
    fn write_slurm(&self, runs: &[PlannedRun], bin: &Path, out: &Path) -> anyhow::Result<PathBuf> {
        let dir = out.join("slurm");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let logs = out.join("logs");
        let root = project_root();
        let header = |name: &str, output: &str| {
            let mut h = format!(
                "#!/bin/bash\n# Written by `{}`.\n#SBATCH --job-name={name}\n",
                self.command_line()
            );
            if let Some(p) = &self.partition {
                h.push_str(&format!("#SBATCH --partition={p}\n"));
            }
            h.push_str(&format!(
                "#SBATCH --cpus-per-task={}\n#SBATCH --output={}\n",
                self.cpus_per_task,
                logs.join(output).display()
            ));
            h
        };
        let mut array = header("fmnist-sweep", "run-%a.out");
        let limit = self.max_running.map_or(String::new(), |n| format!("%{n}"));
        array.push_str(&format!(
            "#SBATCH --array=0-{}{limit}\n#SBATCH --time={}\n\
             # A requeued or preempted task starts again and fmnist-train --continue resumes its\n\
             # run after its last completed epoch; the log of each attempt is appended.\n\
             #SBATCH --requeue\n#SBATCH --open-mode=append\n\
             set -euo pipefail\ncd {}\ncase \"$SLURM_ARRAY_TASK_ID\" in\n",
            runs.len() - 1,
            self.time,
            shell_quote(&root.to_string_lossy())
        ));
        for (i, r) in runs.iter().enumerate() {
            array.push_str(&format!(
                "  {i}) args=({}) ;;\n",
                shell_line(self.common_args(out, r))
            ));
        }
        array.push_str(&format!(
            "  *) echo \"no run for task $SLURM_ARRAY_TASK_ID\" >&2; exit 2 ;;\nesac\n\
             echo \"== task $SLURM_ARRAY_TASK_ID (job $SLURM_JOB_ID, restart ${{SLURM_RESTART_COUNT:-0}}) on $(hostname) at $(date -Is)\"\n\
             exec {} \"${{args[@]}}\" --threads \"${{SLURM_CPUS_PER_TASK:-1}}\"\n",
            shell_quote(&bin.join("fmnist-train").to_string_lossy())
        ));
        let mut evaluate = header("fmnist-sweep-eval", "evaluate.out");
        evaluate.push_str(&format!(
            "#SBATCH --time={}\nset -euo pipefail\ncd {}\nexport FMNIST_REPORT_COMMAND={}\n\
             exec {} --results {} --device {}\n",
            self.time,
            shell_quote(&root.to_string_lossy()),
            shell_quote(&self.command_line()),
            shell_quote(&bin.join("fmnist-eval").to_string_lossy()),
            shell_quote(&out.to_string_lossy()),
            shell_quote(&self.device)
        ));
        let train_script = dir.join("train.sbatch");
        let eval_script = dir.join("evaluate.sbatch");
        let submit = format!(
            "#!/bin/bash\n# Submits the sweep's array and its evaluation, which starts when every task\n\
             # of the array has ended (afterany), whatever their outcome.\n\
             set -euo pipefail\n\
             train=$(sbatch --parsable {})\n\
             train=${{train%%;*}}\n\
             evaluate=$(sbatch --parsable --dependency=afterany:\"$train\" {})\n\
             evaluate=${{evaluate%%;*}}\n\
             echo \"train-job $train\"\necho \"evaluate-job $evaluate\"\n",
            shell_quote(&train_script.to_string_lossy()),
            shell_quote(&eval_script.to_string_lossy())
        );
        let submit_script = dir.join("submit.sh");
        write_atomic(&train_script, array.as_bytes())?;
        write_atomic(&eval_script, evaluate.as_bytes())?;
        write_atomic(&submit_script, submit.as_bytes())?;
        make_executable(&submit_script)?;
        println!(
            "xtask: wrote {} ({} tasks), {} and {}",
            train_script.display(),
            runs.len(),
            eval_script.display(),
            submit_script.display()
        );
        Ok(submit_script)
    }

    fn submit(&self, submit: &Path, runs: &[PlannedRun], out: &Path) -> anyhow::Result<()> {
        let has_sbatch = Command::new("sbatch")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if self.dry_run || !has_sbatch {
            println!(
                "xtask: nothing submitted ({}); submit on the cluster with {}",
                if self.dry_run {
                    "--dry-run"
                } else {
                    "sbatch is not on the PATH"
                },
                submit.display()
            );
            return Ok(());
        }
        let lines = crate::train_all::output_lines(&mut Command::new(submit))?;
        let job = |what: &str| {
            lines
                .iter()
                .find_map(|l| l.strip_prefix(what))
                .map(|id| id.trim().to_string())
                .with_context(|| format!("{} printed no {what}: {lines:?}", submit.display()))
        };
        let (train, evaluate) = (job("train-job ")?, job("evaluate-job ")?);
        println!(
            "xtask: submitted array job {train} ({} tasks) and evaluation job {evaluate}, which \
             starts when the array has ended; logs in {}; watch with `squeue -j {train},{evaluate}`",
            runs.len(),
            out.join("logs").display()
        );
        if self.wait {
            self.wait_for(&train, &evaluate, runs, out)?;
        }
        Ok(())
    }

    /// Waits until the evaluation job has left the queue, showing the runs that have finished,
    /// then prints the evaluation's results table and fails if the job did not complete.
    fn wait_for(
        &self,
        train: &str,
        evaluate: &str,
        runs: &[PlannedRun],
        out: &Path,
    ) -> anyhow::Result<()> {
        let bar = ProgressBar::new(runs.len() as u64).with_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} runs finished  {elapsed_precise}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        loop {
            let finished = runs
                .iter()
                .filter(|r| fmnist_runs::is_finished(&out.join(&r.name)))
                .count();
            bar.set_position(finished as u64);
            // Empty: both jobs have ended. "Invalid job id": they have ended and been purged.
            // Any other failure (slurmctld busy) is asked again.
            let squeue = Command::new("squeue")
                .args(["-h", "-o", "%i", "-j", &format!("{train},{evaluate}")])
                .output()
                .context("running squeue")?;
            let ended = if squeue.status.success() {
                squeue.stdout.trim_ascii().is_empty()
            } else {
                String::from_utf8_lossy(&squeue.stderr).contains("Invalid job id")
            };
            if ended {
                break;
            }
            std::thread::sleep(Duration::from_secs(2));
        }
        bar.finish_and_clear();
        let log = out.join("logs").join("evaluate.out");
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let state = crate::train_all::output_lines(
            Command::new("scontrol").args(["show", "job", evaluate]),
        )
        .unwrap_or_default()
        .iter()
        .find_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("JobState="))
                .map(str::to_string)
        })
        .unwrap_or_else(|| "unknown".into());
        if let Some(start) = text.find("== every recipe") {
            print!("{}", &text[start..]);
        }
        ensure!(
            state == "COMPLETED",
            "the evaluation job {evaluate} ended {state}; see {}",
            log.display()
        );
        println!("xtask: report: {}", out.join("REPORT.md").display());
        let unfinished: Vec<String> = runs
            .iter()
            .enumerate()
            .filter(|(_, r)| !fmnist_runs::is_finished(&out.join(&r.name)))
            .map(|(i, r)| {
                format!(
                    "  {} (log: {})",
                    r.name,
                    out.join("logs").join(format!("run-{i}.out")).display()
                )
            })
            .collect();
        ensure!(
            unfinished.is_empty(),
            "{} of {} runs did not finish; the report covers the others. Submitting the sweep \
             again resumes them and keeps the finished ones:\n{}",
            unfinished.len(),
            runs.len(),
            unfinished.join("\n")
        );
        Ok(())
    }

    /// The command as a person would type it (in sweep.json, the scripts and the report).
    fn command_line(&self) -> String {
        let mut s = format!(
            "cargo xtask sweep --models {} --preset {} --seeds {}",
            self.models.join(","),
            self.preset,
            self.seeds
        );
        for set in &self.set {
            s.push_str(&format!(" --set {}", shell_quote(set)));
        }
        if let Some(j) = self.local {
            s.push_str(&format!(" --local {j}"));
        }
        if self.slurm {
            s.push_str(" --slurm");
        }
        s
    }
}

/// The test accuracy of a finished run, as `88.64%`.
fn test_accuracy(run: &Path) -> String {
    fmnist_runs::test_accuracy(run).map_or("?".into(), |a| format!("{:.2}%", 100.0 * a))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grid_is_models_by_settings_by_seeds_named_by_the_varying_keys() {
        let axes = [
            Axis::parse("lr=1e-3,2e-3").unwrap(),
            Axis::parse("subset=2000").unwrap(),
            Axis::parse("--hflip=true,false").unwrap(),
        ];
        let runs = plan(&["cnn".into(), "lstm".into()], "best", &axes, &[42, 43]);
        assert_eq!(runs.len(), 2 * 2 * 2 * 2);
        assert_eq!(runs[0].name, "cnn-lr-1e-3-hflip-true/seed-42");
        assert_eq!(runs[1].name, "cnn-lr-1e-3-hflip-true/seed-43");
        assert_eq!(runs[2].name, "cnn-lr-1e-3-hflip-false/seed-42");
        assert_eq!(runs[15].name, "lstm-lr-2e-3-hflip-false/seed-43");
        assert_eq!(
            runs[2].args.join(" "),
            "--model cnn --preset best --seed 42 --lr 1e-3 --subset 2000 --hflip false"
        );
        let mut names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), runs.len(), "two runs share a folder");
    }

    #[test]
    fn bad_settings_are_refused_with_what_to_use() {
        let err = |s: &str| Axis::parse(s).unwrap_err().to_string();
        assert_eq!(
            err("lr"),
            "--set lr: expected KEY=V1,V2,... (e.g. lr=1e-3,2e-3)"
        );
        assert_eq!(
            err("seed=1,2"),
            "--set seed: the sweep sets --seed itself; use --seeds"
        );
        assert_eq!(err("lr=1e-3,"), "--set lr=1e-3,: an empty value");
        assert_eq!(err("lr=1,1"), "--set lr=1,1: a value is given twice");
        assert_eq!(err("=1"), "--set =1: the key is empty");
    }

    #[test]
    fn values_become_folder_names_and_arguments_are_quoted_for_bash() {
        assert_eq!(folder_safe("a/b c"), "a_b_c");
        assert_eq!(folder_safe("1e-3"), "1e-3");
        assert_eq!(shell_quote("--lr"), "--lr");
        assert_eq!(shell_quote("it's here"), r"'it'\''s here'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_line(["a b", "c"]), "'a b' c".to_string());
    }
}
