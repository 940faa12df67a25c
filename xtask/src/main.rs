//! `cargo xtask`: orchestration of the fmnist workspace (the cargo-xtask convention).
//!
//! Of the fmnist crates it links only fmnist-runs (the run layout, without candle): it builds
//! the binaries through cargo (forwarding `--features cuda` and the like) and runs them, so
//! every step is also a command a person could type.
mod bench;
mod bench_serve;
mod cuda_check;
mod sweep;
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
    /// Train models × settings × seeds here or as a Slurm job array, then evaluate the sweep.
    Sweep(sweep::Sweep),
    /// Load test of `fmnist-serve`: concurrent clients, requests/s and latency into
    /// BENCH-serve.md.
    BenchServe(bench_serve::BenchServe),
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
    /// Builds the binaries and returns the folder holding them. Without extra features this
    /// is `cargo build --workspace`, the README's build command: cargo resolves features over
    /// the packages it builds, so building a subset would compile some crates again with
    /// other features. With features (`cuda`), the packages that carry them.
    pub fn build(&self, packages: &[&str]) -> anyhow::Result<PathBuf> {
        let mut cmd = cargo();
        cmd.current_dir(project_root()).arg("build").arg("--quiet");
        if self.profile == Profile::Release {
            cmd.arg("--release");
        }
        if self.features.is_empty() {
            cmd.arg("--workspace");
        } else {
            for p in packages {
                cmd.args(["-p", p]);
            }
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

/// The workspace root: the parent of this crate's folder, or the current folder where that
/// folder is not on this machine.
pub fn project_root() -> PathBuf {
    let built_in = Path::new(env!("CARGO_MANIFEST_DIR")).parent();
    match built_in {
        Some(root) if root.join("xtask").is_dir() => root.to_path_buf(),
        // A binary carried to another machine: the checkout it runs in.
        _ => PathBuf::from("."),
    }
}

/// A cargo command, without the variables `cargo run` set for this process (its package's
/// name, version and folder): a build script that watches one of them (ring's does) would
/// see it change, and the build would compile that crate and every crate above it again.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let set_by_run = name.starts_with("CARGO_PKG_")
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
            ]
            .contains(&name.as_ref());
        if set_by_run {
            cmd.env_remove(name.as_ref());
        }
    }
    cmd
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so a
/// reader never sees half a file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a file in {}", dir.display()))?;
    tmp.write_all(bytes)?;
    tmp.persist(path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
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
        Task::Sweep(s) => s.run(),
        Task::BenchServe(b) => b.run(),
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
