//! `fmnist-eval`: evaluates trained runs (tables, CSV, plots, REPORT.md).
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use fmnist_data::DataArgs;
use fmnist_eval::pipeline::{self, Evaluated};
use fmnist_eval::predict::{self, predict_files, PredictOptions};
use fmnist_eval::report::{self, SummaryRow};
use fmnist_eval::{ensemble, files, outputs, similar};
use fmnist_models::photo::{self, Invert};
use fmnist_models::similar::SimilarityIndex;
use fmnist_models::{Checkpoint, Classifier};
use fmnist_train::{best_run, select_device, DeviceChoice};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Evaluates every run under the results folder (or the runs given) on the test set: writes
/// metrics.json, per_class.csv, confusion.csv, predictions.csv, gap.csv and plots into each
/// run, and summary.csv, the plots across runs and REPORT.md into the results folder, then
/// prints each recipe's test accuracy (with --run: each run's per-class accuracy, confusion
/// matrix and train/val/test gap). A run unchanged since its evaluation (the same weights,
/// configuration, history, data and evaluation, recorded in its evaluated.json) is not
/// evaluated again, and a results folder of unchanged runs is not written again.
#[derive(Parser, Debug)]
#[command(name = "fmnist-eval", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Folder holding the runs (any folder with config.json + model.safetensors, at any depth).
    #[arg(long, value_name = "DIR", default_value = "results", global = true)]
    results: PathBuf,
    /// Evaluate only this run directory (repeatable).
    #[arg(long, value_name = "DIR")]
    run: Vec<PathBuf>,
    /// Evaluate this checkpoint (its run's config.json must sit beside it).
    #[arg(long, value_name = "FILE", conflicts_with = "run")]
    checkpoint: Option<PathBuf>,
    /// Print the confusion matrix of each run given with --run as row shares instead of counts.
    #[arg(long)]
    normalize: bool,
    /// Skip the plots (faster; tables, CSV and JSON are still written).
    #[arg(long)]
    no_plots: bool,
    /// Device to evaluate on.
    #[arg(long, value_enum, default_value_t, global = true)]
    device: DeviceChoice,
    /// CPU threads, at least 1 (default: candle's choice, the physical cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(flatten)]
    data: DataArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Classify your own images (files or directories): the top classes with probabilities.
    Predict(PredictArgs),
    /// Average the class probabilities of several runs and score the ensemble: writes a folder
    /// RESULTS/NAME with ensemble.json, metrics.json, the CSVs and plots of a run, and the
    /// ensemble joins REPORT.md at the next evaluation.
    Ensemble(EnsembleArgs),
    /// The training images nearest to IMAGE in the model's embedding: printed, and drawn as a
    /// strip of images (PNG).
    Similar(SimilarArgs),
}

#[derive(clap::Args, Debug)]
struct SimilarArgs {
    /// The image to search with (PNG, JPEG, BMP, WebP, GIF, TIFF).
    #[arg(value_name = "IMAGE")]
    image: PathBuf,
    /// How many neighbours.
    #[arg(long, default_value_t = 8)]
    top: usize,
    /// Run whose model embeds the images. Default: the run under --results with the best
    /// validation accuracy.
    #[arg(long, value_name = "DIR")]
    run: Option<PathBuf>,
    /// Where to write the strip. Default: IMAGE's name with `.similar.png`, in this folder.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Flip a photo so the item is light on dark, like the training data.
    #[arg(long, value_enum, default_value_t)]
    invert: Invert,
}

#[derive(clap::Args, Debug)]
struct EnsembleArgs {
    /// Run folders to average (at least two). They must hold out the same validation images
    /// (same split seed, validation fraction and subset: train them with one --split-seed).
    #[arg(required = true, num_args = 2.., value_name = "RUN")]
    runs: Vec<PathBuf>,
    /// Name of the ensemble: its folder under --results.
    #[arg(long)]
    name: String,
    /// Choose the members and their weights by ensemble selection on validation accuracy
    /// (Caruana et al., 2004): from the best run alone, add one run at a time, a member again
    /// or a new one, whichever scores best on validation, for twice as many picks as runs (at
    /// least 10), and keep the best ensemble on that path; a run picked twice counts twice.
    /// The test set plays no part in the choice. Without it every run is a member, weighted
    /// equally.
    #[arg(long)]
    choose_on_val: bool,
    /// Skip the plots.
    #[arg(long)]
    no_plots: bool,
}

#[derive(clap::Args, Debug)]
struct PredictArgs {
    /// Image files (PNG, JPEG, BMP, WebP, GIF, TIFF) or directories of them.
    #[arg(required = true, value_name = "IMAGE")]
    paths: Vec<PathBuf>,
    /// Run whose best checkpoint classifies. Default: the run under --results with the best
    /// validation accuracy.
    #[arg(long, value_name = "DIR")]
    run: Option<PathBuf>,
    /// How many classes to show per image.
    #[arg(long, default_value_t = 3)]
    top: usize,
    /// Mark predictions whose top probability is below this as needing review.
    #[arg(long, default_value_t = 0.5)]
    threshold: f32,
    /// Flip a photo so the item is light on dark, like the training data.
    #[arg(long, value_enum, default_value_t)]
    invert: Invert,
    /// Print JSON (one array of results) instead of text.
    #[arg(long)]
    json: bool,
    /// Write the 28x28 image the model saw for each input into DIR.
    #[arg(long, value_name = "DIR")]
    save_preprocessed: Option<PathBuf>,
    /// Write into DIR, for each input, where the model found the evidence for its two likeliest
    /// classes (Grad-CAM over the 28x28 input, as NAME.gradcam.png; convolutional models only).
    #[arg(long, value_name = "DIR")]
    explain: Option<PathBuf>,
}

fn main() -> ExitCode {
    fmnist_train::memory::keep_freed_memory();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // Before any thread starts: candle reads its thread count once.
    for (key, value) in fmnist_train::device::thread_environment(cli.threads)? {
        std::env::set_var(key, value);
    }
    let (device, _) = select_device(cli.device)?;
    match &cli.command {
        Some(Command::Predict(args)) => return predict(args, &cli.results, &device),
        Some(Command::Ensemble(args)) => {
            let data = cli.data.load()?;
            return ensemble(args, &cli.results, &data, &device);
        }
        Some(Command::Similar(args)) => {
            let data = cli.data.load()?;
            return similar(args, &cli.results, &data, &device);
        }
        None => {}
    }
    let runs = pipeline::runs_to_evaluate(&cli.results, &cli.run, cli.checkpoint.as_deref())?;
    let data = cli.data.load()?;
    let whole_folder = cli.run.is_empty() && cli.checkpoint.is_none();
    let plots_on = !cli.no_plots;
    match pipeline::evaluate_all(&cli.results, &runs, whole_folder, plots_on, &data, &device)? {
        Evaluated::Unchanged { runs, rows } => {
            println!(
                "{}, each unchanged since its evaluation: nothing to evaluate",
                pipeline::count(runs, "run")
            );
            print_answer(&rows, &cli.results);
        }
        Evaluated::Folder { rows } => print_answer(&rows, &cli.results),
        Evaluated::Runs(evals) => {
            for e in &evals {
                println!("{}", report::run_text(e, cli.normalize));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The test accuracy of every recipe folder, and where the report is.
fn print_answer(rows: &[SummaryRow], root: &std::path::Path) {
    println!("\n== every recipe (mean ± sample std over seeds) ==");
    println!("{}", report::answer_table(rows).render());
    println!(
        "per-run tables: fmnist-eval --run DIR; the full report: {}",
        root.join(files::REPORT).display()
    );
}

fn predict(
    args: &PredictArgs,
    results: &std::path::Path,
    device: &candle::Device,
) -> anyhow::Result<ExitCode> {
    let dir = match &args.run {
        Some(d) => d.clone(),
        None => best_run(results)?,
    };
    let classifier = Classifier::load(&dir, device)?;
    let options = PredictOptions {
        top: args.top,
        threshold: args.threshold,
        invert: args.invert,
        save_preprocessed: args.save_preprocessed.clone(),
        explain: args.explain.clone(),
    };
    let predictions = predict_files(&classifier, &args.paths, &options)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&predictions)?);
    } else {
        eprintln!("model: {} ({})", dir.display(), classifier.model().kind());
        for p in &predictions {
            if p.error.is_some() {
                eprintln!("{}", predict::describe(p));
            } else {
                println!("{}", predict::describe(p));
            }
        }
    }
    let failed = predictions.iter().filter(|p| p.error.is_some()).count();
    if failed > 0 {
        eprintln!("{failed} of {} inputs failed", predictions.len());
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn ensemble(
    args: &EnsembleArgs,
    results: &std::path::Path,
    data: &fmnist_data::FashionMnist,
    device: &candle::Device,
) -> anyhow::Result<ExitCode> {
    if args.name.is_empty() || args.name.contains(['/', '\\']) || args.name.starts_with('.') {
        bail!("--name {:?}: give a plain folder name", args.name);
    }
    let dir = results.join(&args.name);
    if Checkpoint::new(&dir).read_config().is_ok() {
        bail!(
            "{} holds a trained run; choose another --name",
            dir.display()
        );
    }
    let runs: Vec<(String, PathBuf)> = args
        .runs
        .iter()
        .map(|d| {
            let name = d.strip_prefix(results).unwrap_or(d).display().to_string();
            (name, d.clone())
        })
        .collect();
    let candidates = ensemble::Candidates::load(&runs, data, device)?;
    let (chosen, chosen_by) = if args.choose_on_val {
        (candidates.choose_on_validation(), "validation")
    } else {
        ((0..candidates.members.len()).collect(), "given")
    };
    let (record, scores) = candidates.ensemble(&args.name, &chosen, chosen_by);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    outputs::write_ensemble(&dir, &record, &scores, data, !args.no_plots)?;
    println!("{}", report::ensemble_text(&record, &scores));
    println!("wrote {}", dir.display());
    Ok(ExitCode::SUCCESS)
}

/// The classifier of `run` (or the best run under `results`) and its similarity index of the
/// training images, saying where they came from.
fn classifier_and_index(
    run: &Option<PathBuf>,
    results: &std::path::Path,
    data: &fmnist_data::FashionMnist,
    device: &candle::Device,
) -> anyhow::Result<(PathBuf, Classifier, SimilarityIndex)> {
    let dir = match run {
        Some(d) => d.clone(),
        None => best_run(results)?,
    };
    let classifier = Classifier::load(&dir, device)?;
    eprintln!("model: {} ({})", dir.display(), classifier.model().kind());
    let (index, how) = SimilarityIndex::load_or_build(&dir, &classifier, &data.train)?;
    eprintln!("similarity index: {how}");
    Ok((dir, classifier, index))
}

fn similar(
    args: &SimilarArgs,
    results: &std::path::Path,
    data: &fmnist_data::FashionMnist,
    device: &candle::Device,
) -> anyhow::Result<ExitCode> {
    let img = predict::decode(&args.image)?;
    let (input, _) = photo::fit(&img, args.invert);
    let (_, classifier, index) = classifier_and_index(&args.run, results, data, device)?;
    let neighbours =
        fmnist_models::similar::similar_to(&classifier, &index, input.as_raw(), args.top)?;
    for (i, n) in neighbours.iter().enumerate() {
        println!(
            "{:>2}. training image {:>5}: {:<12} distance {:.4}",
            i + 1,
            n.index,
            n.label,
            n.distance
        );
    }
    let out = args.out.clone().unwrap_or_else(|| {
        let stem = args
            .image
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "image".into());
        PathBuf::from(format!("{stem}.similar.png"))
    });
    similar::write_strip(&out, input.as_raw(), &neighbours, &data.train)?;
    eprintln!("wrote {}", out.display());
    Ok(ExitCode::SUCCESS)
}
