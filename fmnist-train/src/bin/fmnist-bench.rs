//! `fmnist-bench`: training and inference throughput of one model, as one JSON line on
//! stdout. `cargo xtask bench` runs it once per model and repeat (peak memory is per process).
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use fmnist_data::DataArgs;
use fmnist_models::{Kernels, ModelKind};
use fmnist_train::bench::{bench, BenchConfig};
use fmnist_train::{select_device, DeviceChoice};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Trains MODEL for --batches steps after --warmup steps (study recipe: Adam 1e-3), then runs
/// inference over the 10,000 test images; prints images/s, peak memory and data-load time.
#[derive(Parser, Debug)]
#[command(name = "fmnist-bench", version)]
struct Cli {
    /// Model to measure.
    #[arg(long, value_enum)]
    model: ModelKind,
    /// Images per training step.
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    /// Untimed steps first (allocator and caches warm up).
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// Timed training steps.
    #[arg(long, default_value_t = 40)]
    batches: usize,
    /// CPU threads (default: candle's choice, the physical cores).
    #[arg(long)]
    threads: Option<usize>,
    /// CPU kernels: `fused` (hand-fused where candle is slow) or `generic` (candle's operations).
    #[arg(long, value_enum, default_value_t)]
    kernels: Kernels,
    /// Device to run on.
    #[arg(long, value_enum, default_value_t)]
    device: DeviceChoice,
    /// Count the tensor operations of a training step (the launch budget) on the first
    /// warm-up step: `auto` counts on the CPU only. The count runs that step on a thread of
    /// its own that keeps every gradient's graph; on CUDA it hung in its one run on a GPU
    /// (docs/gpu.md), so there it runs only with `always`.
    #[arg(long, value_enum, default_value_t = OpCount::Auto)]
    count_ops: OpCount,
    #[command(flatten)]
    data: DataArgs,
}

/// When to count a training step's tensor operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OpCount {
    Auto,
    Always,
    Never,
}

fn main() -> ExitCode {
    fmnist_train::memory::keep_freed_memory();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    anyhow::ensure!(cli.batches > 0, "--batches must be at least 1");
    // Before any thread starts: candle reads its thread count once.
    for (key, value) in fmnist_train::device::thread_environment(cli.threads)? {
        std::env::set_var(key, value);
    }
    let (device, why) = select_device(cli.device)?;
    let start = Instant::now();
    let data = cli.data.load()?;
    let load = start.elapsed().as_secs_f64();
    eprintln!("{}: device {why}", cli.model);
    let config = BenchConfig {
        model: cli.model,
        batch_size: cli.batch_size,
        warmup: cli.warmup,
        batches: cli.batches,
        kernels: cli.kernels,
        count_ops: match cli.count_ops {
            OpCount::Auto => device.is_cpu(),
            OpCount::Always => true,
            OpCount::Never => false,
        },
    };
    let result = bench(&config, &data, load, &device)?;
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}
