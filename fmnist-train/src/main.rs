//! `fmnist-train`: trains one model (or one per seed) into a run directory.
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use clap::ValueEnum;
use fmnist_data::DataArgs;
use fmnist_models::{mean_std, ModelKind};
use fmnist_train::{
    select_device, DeviceChoice, Overrides, Preset, RunDir, RunOptions, RunSummary, TrainConfig,
};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Trains a Fashion-MNIST classifier. Starts from a preset, then applies --config FILE, then
/// the flags. Writes config.json, model.safetensors (best on validation), last.safetensors,
/// optimizer state, history.csv and summary.json (with the test score of the best epoch).
#[derive(Parser, Debug)]
#[command(name = "fmnist-train", version)]
struct Cli {
    /// Model to train.
    #[arg(long, value_enum, required_unless_present_any = ["resume", "list_models"])]
    model: Option<ModelKind>,
    /// Starting point for every knob: `study` (Adam 1e-3, batch 256, 8 epochs) or `best` (our recipe).
    #[arg(long, value_enum, default_value = "study")]
    preset: Preset,
    /// JSON file of overrides, with the flags' names as keys (e.g. {"epochs": 3, "lr": 0.002}).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    overrides: Overrides,
    /// Train one run per seed (e.g. 42,43,44), each in OUT/seed-N, and print mean ± std. One
    /// seed trains into OUT itself, or into OUT/seed-N where OUT already holds seed runs.
    #[arg(long, value_delimiter = ',', value_name = "SEEDS")]
    seeds: Option<Vec<u64>>,
    /// Run directory. Default: RESULTS/MODEL (study preset) or RESULTS/MODEL-best.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Folder of the default run directories.
    #[arg(long, value_name = "DIR", default_value = "results")]
    results: PathBuf,
    /// Replace a run directory that already holds a run.
    #[arg(long)]
    force: bool,
    /// Bring the planned runs to their end whatever their folders hold: a finished run is
    /// kept, an interrupted one resumed from its last completed epoch, a new one trained. A
    /// folder holding a run of another configuration is refused. Running the same command
    /// again (a requeued batch job, a repeated sweep) loses no finished epoch.
    #[arg(long = "continue", conflicts_with = "force")]
    continue_runs: bool,
    /// Continue the interrupted run in DIR from its last completed epoch (its config is used).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["model", "seeds", "config", "continue_runs"])]
    resume: Option<PathBuf>,
    /// Device to train on.
    #[arg(long, value_enum, default_value_t)]
    device: DeviceChoice,
    /// CPU threads, at least 1 (default: candle's choice, the physical cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Print each run folder this command would train, with its state (`new`, `resumable` or
    /// `finished`, tab-separated before the folder), and train nothing.
    #[arg(long)]
    status: bool,
    /// Print the names of the models, one per line, and exit.
    #[arg(long, exclusive = true)]
    list_models: bool,
    /// No progress bar (one line per epoch is still printed).
    #[arg(long)]
    no_progress: bool,
    #[command(flatten)]
    data: DataArgs,
}

fn main() -> ExitCode {
    fmnist_train::memory::keep_freed_memory();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if cli.list_models {
        for kind in ModelKind::value_variants() {
            println!("{kind}");
        }
        return Ok(());
    }
    // Before any thread starts: candle reads its thread count once.
    for (key, value) in fmnist_train::device::thread_environment(cli.threads)? {
        std::env::set_var(key, value);
    }
    if cli.status {
        return print_status(&cli);
    }
    let (device, why) = select_device(cli.device)?;
    let data = cli.data.load()?;
    println!(
        "data: {} ({}); device: {why}; threads: {}",
        data.source.dir.display(),
        data.source.origin,
        fmnist_train::device::cpu_threads()
    );
    let options = RunOptions {
        force: cli.force,
        progress: !cli.no_progress,
        verbose: true,
        interrupt_after: None,
    };
    if let Some(dir) = &cli.resume {
        let summary =
            fmnist_train::resume(dir, &data, &device, &options)?.context("interrupted")?;
        report(&summary, dir);
        return Ok(());
    }
    let runs = planned_runs(&cli)?;
    let mut accuracies = Vec::new();
    for (config, dir) in &runs {
        let summary = if cli.continue_runs {
            fmnist_train::continue_run(config, &data, dir, &device, &options)?
        } else {
            fmnist_train::train(config, &data, dir, &device, &options)?
        }
        .context("interrupted")?;
        report(&summary, dir);
        accuracies.push(summary.test.accuracy);
    }
    if accuracies.len() > 1 {
        let (mean, std) = mean_std(&accuracies);
        println!(
            "{}: test accuracy over {} seeds: {:.2}% ± {:.2}% (mean ± sample std)",
            runs[0].0.model.kind,
            accuracies.len(),
            100.0 * mean,
            100.0 * std
        );
    }
    Ok(())
}

/// The configuration and folder of each run the flags ask for: the preset, then --config,
/// then the flags; one folder per seed.
fn planned_runs(cli: &Cli) -> anyhow::Result<Vec<(TrainConfig, PathBuf)>> {
    let model = cli.model.context("--model is required")?;
    let mut config = TrainConfig::preset(model, cli.preset);
    if let Some(path) = &cli.config {
        Overrides::from_file(path)?.apply(&mut config);
    }
    cli.overrides.apply(&mut config);
    config.validate()?;
    let out = cli.out.clone().unwrap_or_else(|| {
        let name = match cli.preset {
            Preset::Study => model.name().to_string(),
            Preset::Best => format!("{}-best", model.name()),
        };
        cli.results.join(name)
    });
    let seeds = cli.seeds.clone().unwrap_or_else(|| vec![config.seed]);
    let holds_seed_runs = std::fs::read_dir(&out).is_ok_and(|entries| {
        entries
            .filter_map(Result::ok)
            .any(|e| RunDir::seed_of(&e.file_name().to_string_lossy()).is_some())
    });
    Ok(seeds
        .iter()
        .map(|&seed| {
            let dir = if seeds.len() > 1 || holds_seed_runs {
                RunDir::seed(&out, seed).root
            } else {
                out.clone()
            };
            (
                TrainConfig {
                    seed,
                    ..config.clone()
                },
                dir,
            )
        })
        .collect())
}

/// `--status`: each planned run folder and where it stands.
fn print_status(cli: &Cli) -> anyhow::Result<()> {
    let dirs = match &cli.resume {
        Some(dir) => vec![dir.clone()],
        None => planned_runs(cli)?.into_iter().map(|(_, dir)| dir).collect(),
    };
    for dir in dirs {
        println!("{}\t{}", RunDir::new(&dir).status(), dir.display());
    }
    Ok(())
}

fn report(s: &RunSummary, dir: &std::path::Path) {
    println!(
        "{}: best epoch {}/{}{} val acc {:.2}%  test acc {:.2}% (loss {:.4})  {} params  {:.0} s  -> {}",
        s.model,
        s.best_epoch,
        s.epochs_run,
        if s.stopped_early { " (early stop)" } else { "" },
        100.0 * s.val.accuracy,
        100.0 * s.test.accuracy,
        s.test.loss,
        s.param_count,
        s.train_seconds,
        dir.display()
    );
}
