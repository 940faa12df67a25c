//! `cargo xtask train-all`: train each model through `fmnist-train`, then evaluate them all
//! through `fmnist-eval`, and end with the comparison table and the path of the report.
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};

use crate::{project_root, run, Build};

/// Train the default models (the study's cnn and lstm), evaluate them, write the report.
#[derive(clap::Args, Debug)]
pub struct TrainAll {
    /// Models to train, comma-separated, or `all` for every model of the registry.
    #[arg(long, value_delimiter = ',', default_value = "cnn,lstm")]
    models: Vec<String>,
    /// Preset of every run: `study` (the studies' setup) or `best` (our recipes).
    #[arg(long, default_value = "study")]
    preset: String,
    /// Seeds per model: N trains seeds 42..42+N, each in MODEL/seed-S; 1 trains seed 42 in MODEL/
    /// (in MODEL/seed-42 where MODEL/ already holds seed runs, as the committed reference does).
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    /// Smoke run: a class-balanced subset of 5,000 images, two epochs of batch 64 per model.
    #[arg(long)]
    quick: bool,
    /// Results folder.
    #[arg(long, default_value = "results")]
    results: PathBuf,
    /// Train again runs that already exist in the results folder (finished runs are reused and
    /// interrupted ones resumed otherwise).
    #[arg(long)]
    force: bool,
    /// CPU threads per training (default: candle's choice).
    #[arg(long)]
    threads: Option<usize>,
    /// Device for training and evaluation: auto, cpu, cuda, metal.
    #[arg(long, default_value = "auto")]
    device: String,
    #[command(flatten)]
    build: Build,
}

impl TrainAll {
    pub fn run(&self) -> anyhow::Result<()> {
        let bin = self.build.build(&["fmnist-train", "fmnist-eval"])?;
        let train_bin = bin.join("fmnist-train");
        let models: Vec<String> = if self.models.iter().any(|m| m == "all") {
            output_lines(Command::new(&train_bin).arg("--list-models"))?
        } else {
            self.models.clone()
        };
        let results = if self.results.is_absolute() {
            self.results.clone()
        } else {
            project_root().join(&self.results)
        };
        let mut failed: Vec<(String, String)> = Vec::new();
        let start = Instant::now();
        for model in &models {
            let dir_name = if self.preset == "best" {
                format!("{model}-best")
            } else {
                model.clone()
            };
            let mut cmd = Command::new(&train_bin);
            cmd.current_dir(project_root())
                .args(["--model", model, "--preset", &self.preset])
                .arg("--results")
                .arg(&results)
                .args(["--device", &self.device]);
            let seeds: Vec<String> = (42..42 + self.seeds).map(|s| s.to_string()).collect();
            cmd.args(["--seeds", &seeds.join(",")]);
            if self.quick {
                cmd.args(["--subset", "5000", "--epochs", "2", "--batch-size", "64"]);
            }
            if let Some(t) = self.threads {
                cmd.args(["--threads", &t.to_string()]);
            }
            // Finished runs are kept and interrupted ones resumed unless --force.
            cmd.arg(if self.force { "--force" } else { "--continue" });
            println!("xtask: training {dir_name}");
            if let Err(e) = run(&mut cmd) {
                eprintln!("xtask: {dir_name} failed: {e:#}");
                failed.push((dir_name, format!("{e:#}")));
            }
        }
        println!(
            "xtask: training took {:.0} s; evaluating",
            start.elapsed().as_secs_f64()
        );
        let mut eval = Command::new(bin.join("fmnist-eval"));
        eval.current_dir(project_root())
            .arg("--results")
            .arg(&results)
            .args(["--device", &self.device])
            .env("FMNIST_REPORT_COMMAND", self.command_line());
        let evaluated = run(&mut eval);
        if !failed.is_empty() {
            eprintln!("xtask: {} of {} models failed:", failed.len(), models.len());
            for (m, why) in &failed {
                eprintln!("  {m}: {why}");
            }
        }
        evaluated?;
        println!("xtask: report: {}", results.join("REPORT.md").display());
        if !failed.is_empty() {
            bail!(
                "some models failed (the others' results are in {})",
                results.display()
            );
        }
        Ok(())
    }

    /// The command as a person would type it (recorded in the report).
    fn command_line(&self) -> String {
        let mut s = format!(
            "cargo xtask train-all --models {} --preset {}",
            self.models.join(","),
            self.preset
        );
        if self.seeds > 1 {
            s.push_str(&format!(" --seeds {}", self.seeds));
        }
        if self.quick {
            s.push_str(" --quick");
        }
        s
    }
}

/// The lines `cmd` prints on stdout, failing with its stderr when it fails.
pub fn output_lines(cmd: &mut Command) -> anyhow::Result<Vec<String>> {
    let out = cmd
        .current_dir(project_root())
        .output()
        .with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect())
}
