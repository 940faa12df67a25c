//! The evaluate-all pipeline behind `fmnist-eval` (and `cargo xtask train-all`): the runs to
//! evaluate, each evaluated where it changed since its last evaluation (its files written), then
//! the files across runs (summary.csv, the plots across runs, each ensemble's page, REPORT.md)
//! where anything changed. The binary parses its flags, calls [`evaluate_all`] and prints.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle::Device;
use fmnist_data::{write_atomic, FashionMnist};
use fmnist_models::Checkpoint;
use fmnist_train::find_runs;

use crate::inputs::{ResultsInputs, RunInputs};
use crate::report::{self, Provenance, SummaryRow};
use crate::{
    ensemble, evaluate_run, files, findings, outputs, plots, reload_run, results_outputs,
    Evaluation,
};

/// Which runs to evaluate: a checkpoint's run, the runs given, or every run under `results`
/// (by their paths under it).
pub fn runs_to_evaluate(
    results: &Path,
    runs: &[PathBuf],
    checkpoint: Option<&Path>,
) -> anyhow::Result<Vec<(String, PathBuf)>> {
    if let Some(file) = checkpoint {
        let dir = file.parent().context("the checkpoint has no folder")?;
        if !file.is_file() {
            bail!("{}: no such checkpoint", file.display());
        }
        if file.file_name().is_some_and(|n| n != Checkpoint::WEIGHTS) {
            bail!("{}: evaluation reads a run's model.safetensors (its best checkpoint); point --run at the run folder instead", file.display());
        }
        return Ok(vec![(dir.display().to_string(), dir.to_path_buf())]);
    }
    if !runs.is_empty() {
        return Ok(runs
            .iter()
            .map(|d| (d.display().to_string(), d.clone()))
            .collect());
    }
    if !results.is_dir() {
        bail!("{} does not exist: train first with `cargo xtask train-all` (or `cargo run --release -p fmnist-train -- --model cnn`)", results.display());
    }
    let runs = find_runs(results)?;
    if runs.is_empty() {
        bail!("no runs under {}: train first with `cargo xtask train-all` (or `cargo run --release -p fmnist-train -- --model cnn`)", results.display());
    }
    Ok(runs)
}

/// What [`evaluate_all`] did.
pub enum Evaluated {
    /// The whole folder: nothing had changed since its last evaluation, and these are the rows
    /// of its summary.csv.
    Unchanged { runs: usize, rows: Vec<SummaryRow> },
    /// The whole folder, evaluated where it changed and its files across runs written: the
    /// rows of its new summary.csv.
    Folder { rows: Vec<SummaryRow> },
    /// The runs given, evaluated where they changed (no files across runs).
    Runs(Vec<Evaluation>),
}

/// Evaluates `runs` (see [`runs_to_evaluate`]) and, with `whole_folder`, writes the files
/// across the runs of `results`; `plots` false leaves every plot out. Says on stdout and
/// stderr what it evaluates and keeps.
pub fn evaluate_all(
    results: &Path,
    runs: &[(String, PathBuf)],
    whole_folder: bool,
    plots: bool,
    data: &FashionMnist,
    device: &Device,
) -> anyhow::Result<Evaluated> {
    let data_sha256 = data.sha256();
    let inputs = (runs.iter())
        .map(|(name, dir)| Ok((name.clone(), RunInputs::of(dir, &data_sha256, plots)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let root = results;
    let folder_inputs = match whole_folder {
        true => Some(ResultsInputs::of(root, &inputs)?),
        false => None,
    };
    if let Some(folder) = &folder_inputs {
        let every_run_kept =
            (runs.iter().zip(&inputs)).all(|((_, dir), (_, i))| i.evaluated_in(dir));
        if folder.written_in(root) && every_run_kept {
            let rows = report::read_summary_csv(&root.join(files::SUMMARY_CSV))?;
            return Ok(Evaluated::Unchanged {
                runs: runs.len(),
                rows,
            });
        }
    }
    let mut evals: Vec<Evaluation> = Vec::new();
    let mut reused = 0;
    for ((name, dir), (_, run_inputs)) in runs.iter().zip(&inputs) {
        let context = || format!("evaluating {}", dir.display());
        if run_inputs.evaluated_in(dir) {
            // Its files stand; the report across runs needs its scores again.
            evals.push(reload_run(dir, name, data, device).with_context(context)?);
            reused += 1;
            continue;
        }
        eprintln!("evaluating {name} ...");
        let e = evaluate_run(dir, name, data, device).with_context(context)?;
        outputs::write_run_outputs(&e, data, device, plots, run_inputs)?;
        println!(
            "evaluated {name}: test accuracy {}",
            crate::table::pct(e.scores.gap.test.accuracy)
        );
        evals.push(e);
    }
    if reused > 0 {
        println!(
            "{} unchanged since evaluation: files kept",
            count(reused, "run")
        );
    }
    let Some(folder) = folder_inputs else {
        return Ok(Evaluated::Runs(evals));
    };
    let groups = findings::recipe_groups(&evals);
    let ensembles = ensemble::find_ensembles(root)?;
    let ensemble_rows: Vec<SummaryRow> = ensembles
        .iter()
        .filter_map(|r| SummaryRow::ensemble(r, &evals))
        .collect();
    let mut rows: Vec<SummaryRow> = evals.iter().map(SummaryRow::new).collect();
    rows.extend(ensemble_rows.iter().cloned());
    write_atomic(&root.join(files::SUMMARY_CSV), &report::summary_csv(&rows)?)?;
    if plots {
        plots::comparison(
            &root.join(files::COMPARISON.stem),
            &comparison_rows(&groups),
        )?;
        results_outputs::write_cross_run_plots(root, &groups, data)?;
        results_outputs::write_samples(root, data)?;
    }
    let command = std::env::var("FMNIST_REPORT_COMMAND")
        .unwrap_or_else(|_| "cargo run -p fmnist-eval".into());
    for r in &ensembles {
        let dir = root.join(&r.name);
        write_atomic(
            &dir.join(files::REPORT),
            report::ensemble_markdown(r, &dir).as_bytes(),
        )?;
    }
    let md = report::markdown(
        &evals,
        &groups,
        &ensembles,
        &ensemble_rows,
        root,
        &Provenance::detect(command),
    );
    write_atomic(&root.join(files::REPORT), md.as_bytes())?;
    folder.record(root)?;
    Ok(Evaluated::Folder { rows })
}

/// `1 run`, `2 runs`.
pub fn count(n: usize, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

/// One row per recipe (mean ± std over its seeds), for the comparison plot.
fn comparison_rows(groups: &[findings::RecipeRuns]) -> Vec<plots::ComparisonRow> {
    // By model, then study before best, then settings: a model's recipes side by side.
    let mut order: Vec<&findings::RecipeRuns> = groups.iter().collect();
    order.sort_by_cached_key(|g| {
        let study = g.preset == fmnist_train::Preset::Study;
        (g.model.clone(), !study, g.settings_text())
    });
    order
        .into_iter()
        .map(|g| {
            let acc = g.test_accuracy();
            let seeds = if acc.n > 1 {
                format!(", {} seeds", acc.n)
            } else {
                String::new()
            };
            plots::ComparisonRow {
                label: format!("{} ({}{seeds})", g.label(), g.preset),
                mean: acc.mean,
                std: acc.std,
                study: g.preset == fmnist_train::Preset::Study,
            }
        })
        .collect()
}
