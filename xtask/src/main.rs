//! `cargo xtask`: orchestration of the fmnist workspace (the cargo-xtask convention).
//!
//! It links none of the fmnist crates: it builds the binaries through cargo (forwarding
//! `--features cuda` and the like) and runs them, so every step is also a command a person
//! could type.
mod bench;
mod cuda_check;
mod train_all;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "fmnist workspace tasks"
)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand, Debug)]
enum Task {
    /// Train the default models (cnn and lstm), evaluate them, write results/ and REPORT.md.
    TrainAll(train_all::TrainAll),
    /// Evaluate the runs under results/ (arguments after `--` go to fmnist-eval).
    Eval(Passthrough),
    /// Find, verify and summarize the data (arguments after `--` go to fmnist-data).
    Data(Passthrough),
    /// Training and inference images/s, peak memory, data-load time; `--peer pytorch` beside.
    Bench(bench::Bench),
    /// Build the binaries with `--features cuda` here, with a CUDA 13.0 toolchain from PyPI.
    CudaCheck(cuda_check::CudaCheck),
}

/// Build options shared by the tasks, and arguments forwarded to the binary.
#[derive(clap::Args, Debug, Clone)]
struct Passthrough {
    #[command(flatten)]
    build: Build,
    /// Arguments for the binary.
    #[arg(last = true)]
    args: Vec<String>,
}

/// How the binaries are built.
#[derive(clap::Args, Debug, Clone)]
pub struct Build {
    /// Cargo profile of the binaries: `release` for real runs, `dev` to reuse the test build.
    #[arg(long, value_enum, default_value = "release")]
    pub profile: Profile,
    /// Cargo features to build with, e.g. `cuda` or `metal` (forwarded to every crate).
    #[arg(long, value_delimiter = ',')]
    pub features: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Profile {
    Release,
    Dev,
}

impl Build {
    /// Builds `packages` and returns the folder holding their binaries.
    pub fn build(&self, packages: &[&str]) -> anyhow::Result<PathBuf> {
        let mut cmd = Command::new(cargo());
        cmd.current_dir(project_root()).arg("build").arg("--quiet");
        if self.profile == Profile::Release {
            cmd.arg("--release");
        }
        for p in packages {
            cmd.args(["-p", p]);
        }
        if !self.features.is_empty() {
            cmd.args(["--features", &self.features.join(",")]);
        }
        run(&mut cmd)?;
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| project_root().join("target"));
        Ok(target.join(match self.profile {
            Profile::Release => "release",
            Profile::Dev => "debug",
        }))
    }
}

/// The workspace root (the parent of this crate's folder).
pub fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Runs `cmd`, failing with the command line when it fails.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Task::TrainAll(t) => t.run(),
        Task::Eval(p) => passthrough(&p, "fmnist-eval"),
        Task::Data(p) => passthrough(&p, "fmnist-data"),
        Task::Bench(b) => b.run(),
        Task::CudaCheck(c) => c.run(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn passthrough(p: &Passthrough, binary: &str) -> anyhow::Result<()> {
    let bin = p.build.build(&[binary])?;
    run(Command::new(bin.join(binary))
        .current_dir(project_root())
        .args(&p.args))
}
