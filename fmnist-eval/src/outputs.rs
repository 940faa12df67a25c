//! The files an evaluation writes for one run: metrics.json, CSVs and plots. Everything is
//! first written into a staging folder and moved into place only when all of it succeeded.
use std::path::Path;

use anyhow::Context;
use candle::{Device, Tensor};
use fmnist_data::{write_atomic, FashionMnist, Normalizer};
use fmnist_train::run::write_json;
use serde::Serialize;

use crate::ensemble::EnsembleRecord;
use crate::evaluate::{Evaluation, Gap, Scores};
use crate::files;
use crate::inputs::RunInputs;
use crate::metrics::{Averages, ClassMetrics, Confusion, GroupMetrics};
use crate::plots::{self, Tile};

/// `metrics.json`: everything measured, in one machine-readable file.
#[derive(Debug, Serialize)]
pub struct MetricsFile<'a> {
    pub run: &'a str,
    pub model: String,
    pub preset: fmnist_train::Preset,
    pub seed: u64,
    pub param_count: usize,
    pub epochs_run: usize,
    pub best_epoch: Option<usize>,
    pub train_seconds: Option<f64>,
    #[serde(flatten)]
    pub scores: ScoreMetrics<'a>,
}

/// The metrics of test predictions, whatever made them (the body of `metrics.json`).
#[derive(Debug, Serialize)]
pub struct ScoreMetrics<'a> {
    pub gap: Gap,
    pub per_class: Vec<NamedClass<'a>>,
    pub macro_average: Averages,
    pub weighted_average: Averages,
    pub confusion: Vec<Vec<u64>>,
    pub most_confused: Vec<NamedConfusion<'a>>,
    pub ece: f64,
    pub garment_groups: &'a GroupMetrics,
}

/// One class's metrics with its name (a row of `per_class.csv` too).
#[derive(Debug, Serialize)]
pub struct NamedClass<'a> {
    pub class: &'a str,
    pub accuracy: f64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: u64,
}

#[derive(Debug, Serialize)]
pub struct NamedConfusion<'a> {
    pub actual: &'a str,
    pub predicted: &'a str,
    pub count: u64,
}

impl<'a> ScoreMetrics<'a> {
    pub fn new(s: &'a Scores) -> Self {
        let names = &s.class_names;
        let k = names.len();
        let per_class = s
            .confusion
            .per_class()
            .iter()
            .zip(names)
            .map(|(m, name): (&ClassMetrics, &String)| NamedClass {
                class: name,
                accuracy: m.recall,
                precision: m.precision,
                recall: m.recall,
                f1: m.f1,
                support: m.support,
            })
            .collect();
        ScoreMetrics {
            gap: s.gap,
            per_class,
            macro_average: s.confusion.macro_average(),
            weighted_average: s.confusion.weighted_average(),
            confusion: (0..k)
                .map(|t| (0..k).map(|p| s.confusion.get(t, p)).collect())
                .collect(),
            most_confused: s
                .confusion
                .most_confused(5)
                .iter()
                .map(|c: &Confusion| NamedConfusion {
                    actual: &names[c.actual],
                    predicted: &names[c.predicted],
                    count: c.count,
                })
                .collect(),
            ece: s.calibration.ece,
            garment_groups: &s.groups,
        }
    }
}

impl<'a> MetricsFile<'a> {
    pub fn new(e: &'a Evaluation) -> Self {
        MetricsFile {
            run: &e.name,
            model: e.config.train.model.kind.to_string(),
            preset: e.config.train.preset,
            seed: e.config.train.seed,
            param_count: e.config.param_count,
            epochs_run: e.history.len(),
            best_epoch: e.summary.as_ref().map(|s| s.best_epoch),
            train_seconds: e.summary.as_ref().map(|s| s.train_seconds),
            scores: ScoreMetrics::new(&e.scores),
        }
    }
}

fn csv_bytes(
    write: impl FnOnce(&mut csv::Writer<Vec<u8>>) -> anyhow::Result<()>,
) -> anyhow::Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    write(&mut w)?;
    Ok(w.into_inner()?)
}

/// The image of test item `i` as values in [0, 1].
fn test_image(data: &FashionMnist, i: usize) -> Vec<f32> {
    let n = data.test.image_len();
    data.test.pixels[i * n..(i + 1) * n]
        .iter()
        .map(|&p| p as f32 / 255.0)
        .collect()
}

/// How a grid of test images is laid out: columns, tile width and caption lines.
pub(crate) struct GridLayout {
    pub(crate) columns: usize,
    pub(crate) tile_px: u32,
    pub(crate) caption_lines: u32,
}

/// Draws test images `picks` as a grid into `path`, each captioned by `caption` (its text, and
/// whether it is drawn in red).
pub(crate) fn test_image_grid(
    path: &Path,
    title: &str,
    data: &FashionMnist,
    picks: &[usize],
    caption: impl Fn(usize) -> (String, bool),
    layout: GridLayout,
) -> anyhow::Result<()> {
    let images: Vec<Vec<f32>> = picks.iter().map(|&i| test_image(data, i)).collect();
    let tiles: Vec<Tile> = picks
        .iter()
        .zip(&images)
        .map(|(&i, img)| {
            let (caption, alert) = caption(i);
            Tile {
                pixels: img,
                rows: data.test.rows,
                cols: data.test.cols,
                caption,
                alert,
                heat: None,
            }
        })
        .collect();
    plots::image_grid(
        path,
        title,
        &tiles,
        layout.columns,
        layout.tile_px,
        layout.caption_lines,
    )
}

/// Writes every per-run file of `e` into its run directory, with the record of what they
/// were computed from (`inputs`).
pub fn write_run_outputs(
    e: &Evaluation,
    data: &FashionMnist,
    device: &Device,
    plots_on: bool,
    inputs: &RunInputs,
) -> anyhow::Result<()> {
    // The record goes first and comes back last, once every file is in place: a run stopped
    // in between has none, and is evaluated again.
    let record = e.dir.join(crate::inputs::EVALUATED);
    if record.exists() {
        std::fs::remove_file(&record).with_context(|| format!("removing {}", record.display()))?;
    }
    staged(&e.dir, |dir| {
        write_json(&dir.join(files::METRICS), &MetricsFile::new(e))?;
        write_score_files(dir, &e.scores)?;
        if plots_on {
            if !e.history.is_empty() {
                plots::curves(
                    &dir.join(files::CURVES.stem),
                    &format!("{} — {}", e.name, files::CURVES.caption),
                    &e.history,
                    e.summary.as_ref().map(|s| s.best_epoch),
                    e.config.train.label_smoothing,
                )?;
            }
            write_score_plots(dir, &e.name, &e.scores, data)?;
            if e.config.train.model.kind.is_convolutional() {
                write_filters(dir, e, data, device)?;
                write_grad_cam(dir, e, data)?;
            }
        }
        // Without new plots, the page links those of an earlier evaluation.
        let plots_in = if plots_on { dir } else { e.dir.as_path() };
        write_atomic(
            &dir.join(files::REPORT),
            crate::report::run_markdown(e, plots_in).as_bytes(),
        )?;
        Ok(())
    })?;
    inputs.record(&e.dir)
}

/// The `metrics.json` of an ensemble.
#[derive(Debug, Serialize)]
struct EnsembleMetrics<'a> {
    run: &'a str,
    members: Vec<&'a str>,
    #[serde(flatten)]
    scores: ScoreMetrics<'a>,
}

/// Writes an ensemble's files into `dir`: ensemble.json, metrics.json, the CSVs and plots.
pub fn write_ensemble(
    dir: &Path,
    record: &EnsembleRecord,
    s: &Scores,
    data: &FashionMnist,
    plots_on: bool,
) -> anyhow::Result<()> {
    staged(dir, |staging| {
        write_json(&staging.join(files::ENSEMBLE), record)?;
        let metrics = EnsembleMetrics {
            run: &record.name,
            members: record.members.iter().map(|m| m.run.as_str()).collect(),
            scores: ScoreMetrics::new(s),
        };
        write_json(&staging.join(files::METRICS), &metrics)?;
        write_score_files(staging, s)?;
        if plots_on {
            write_score_plots(staging, &record.name, s, data)?;
        }
        Ok(())
    })
}

/// Runs `write` into a staging folder inside `dir`, then moves what it wrote into `dir`: all
/// of it, or nothing when `write` fails.
pub fn staged(dir: &Path, write: impl FnOnce(&Path) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let staging = dir.join(".eval-staging");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).with_context(|| format!("creating {}", staging.display()))?;
    let result = write(&staging);
    if result.is_ok() {
        for entry in std::fs::read_dir(&staging)? {
            let path = entry?.path();
            if let Some(name) = path.file_name() {
                std::fs::rename(&path, dir.join(name))
                    .with_context(|| format!("moving {}", path.display()))?;
            }
        }
    }
    let _ = std::fs::remove_dir_all(&staging);
    result
}

/// per_class.csv, confusion.csv, confusion_normalized.csv, predictions.csv and gap.csv.
pub fn write_score_files(dir: &Path, s: &Scores) -> anyhow::Result<()> {
    let names = &s.class_names;
    let k = names.len();
    write_atomic(
        &dir.join(files::PER_CLASS_CSV),
        &csv_bytes(|w| {
            for row in &ScoreMetrics::new(s).per_class {
                w.serialize(row)?;
            }
            Ok(())
        })?,
    )?;
    for (file, normalized) in [
        (files::CONFUSION_CSV, false),
        (files::CONFUSION_NORMALIZED_CSV, true),
    ] {
        write_atomic(
            &dir.join(file),
            &csv_bytes(|w| {
                let mut header = vec!["actual \\ predicted".to_string()];
                header.extend(names.iter().cloned());
                w.write_record(&header)?;
                for (t, name) in names.iter().enumerate() {
                    let mut row = vec![name.clone()];
                    if normalized {
                        row.extend(
                            s.confusion
                                .normalized_row(t)
                                .iter()
                                .map(|v| format!("{v:.4}")),
                        );
                    } else {
                        row.extend((0..k).map(|p| s.confusion.get(t, p).to_string()));
                    }
                    w.write_record(&row)?;
                }
                Ok(())
            })?,
        )?;
    }
    write_atomic(
        &dir.join(files::PREDICTIONS_CSV),
        &csv_bytes(|w| {
            let mut header = vec!["index".to_string(), "label".into(), "predicted".into()];
            header.extend(names.iter().map(|n| format!("p({n})")));
            w.write_record(&header)?;
            for (i, probs) in s.test_probs.chunks_exact(k).enumerate() {
                let mut row = vec![
                    i.to_string(),
                    s.test_labels[i].to_string(),
                    s.test_predictions[i].to_string(),
                ];
                row.extend(probs.iter().map(|p| format!("{p:.6}")));
                w.write_record(&row)?;
            }
            Ok(())
        })?,
    )?;
    write_atomic(
        &dir.join(files::GAP_CSV),
        &csv_bytes(|w| {
            w.write_record(["split", "loss", "accuracy"])?;
            for (split, part) in [
                ("train", s.gap.train),
                ("val", s.gap.val),
                ("test", s.gap.test),
            ] {
                w.write_record([
                    split.to_string(),
                    format!("{:.6}", part.loss),
                    format!("{:.6}", part.accuracy),
                ])?;
            }
            Ok(())
        })?,
    )?;
    Ok(())
}

/// The plots of test predictions: confusion matrix, calibration, probability bars, mistakes.
pub fn write_score_plots(
    dir: &Path,
    name: &str,
    s: &Scores,
    data: &FashionMnist,
) -> anyhow::Result<()> {
    let names = &s.class_names;
    let k = names.len();
    let title = |what: &str| format!("{name} — {what}");
    plots::confusion(
        &dir.join(files::CONFUSION.stem),
        &title(&format!(
            "test confusion matrix (accuracy {:.2}%)",
            100.0 * s.gap.test.accuracy
        )),
        &s.confusion,
        names,
    )?;
    plots::reliability(
        &dir.join(files::RELIABILITY.stem),
        &title("calibration"),
        &s.calibration,
    )?;
    // Probability bars: the first test image of six classes, the same images for every run
    // (so that two models can be set side by side), the hard tops among them; then the run's
    // own most confident mistake.
    let mut picks: Vec<usize> = [0, 2, 4, 6, 7, 9]
        .into_iter()
        .filter(|&c| c < k)
        .filter_map(|c| s.test_labels.iter().position(|&l| l == c))
        .collect();
    if let Some(&worst) = most_confident_mistakes(s, 1).first() {
        if !picks.contains(&worst) {
            picks.push(worst);
        }
    }
    let images: Vec<Vec<f32>> = picks.iter().map(|&i| test_image(data, i)).collect();
    let items: Vec<(Tile, Vec<f32>, usize)> = picks
        .iter()
        .zip(&images)
        .map(|(&i, img)| {
            let pred = s.test_predictions[i];
            (
                Tile {
                    pixels: img,
                    rows: data.test.rows,
                    cols: data.test.cols,
                    caption: format!("#{i}: {}", names[s.test_labels[i]]),
                    alert: pred != s.test_labels[i],
                    heat: None,
                },
                s.test_probs[i * k..(i + 1) * k].to_vec(),
                s.test_labels[i],
            )
        })
        .collect();
    plots::probability_bars(
        &dir.join(files::PROBABILITIES.png()),
        &title("class probabilities (green: true class, red: wrong prediction; last row: the most confident mistake)"),
        &items,
        names,
    )?;
    test_image_grid(
        &dir.join(files::MISCLASSIFIED.png()),
        &title("most confident mistakes (true → predicted, confidence)"),
        data,
        &most_confident_mistakes(s, 40),
        |i| {
            let text = format!(
                "{}\n→ {} {:.0}%",
                names[s.test_labels[i]],
                names[s.test_predictions[i]],
                100.0 * s.test_probs[i * k + s.test_predictions[i]]
            );
            (text, true)
        },
        GridLayout {
            columns: 8,
            tile_px: 90,
            caption_lines: 2,
        },
    )?;
    Ok(())
}

/// The test images the model got wrong with the highest confidence, most confident first.
fn most_confident_mistakes(s: &Scores, n: usize) -> Vec<usize> {
    let k = s.class_names.len();
    let mut wrong: Vec<usize> = (0..s.test_labels.len())
        .filter(|&i| s.test_predictions[i] != s.test_labels[i])
        .collect();
    wrong.sort_by(|&a, &b| {
        let conf = |i: usize| s.test_probs[i * k + s.test_predictions[i]];
        conf(b).total_cmp(&conf(a))
    });
    wrong.truncate(n);
    wrong
}

/// Grad-CAM of the 16 most confident mistakes: for each, where the model saw its (wrong)
/// prediction, and where it saw the true class.
fn write_grad_cam(dir: &Path, e: &Evaluation, data: &FashionMnist) -> anyhow::Result<()> {
    let s = &e.scores;
    let names = &s.class_names;
    let k = names.len();
    let wrong = most_confident_mistakes(s, 16);
    let images: Vec<&[u8]> = wrong
        .iter()
        .map(|&i| {
            data.test
                .get(i)
                .map(|(pixels, _)| pixels)
                .with_context(|| format!("test image {i} is out of range"))
        })
        .collect::<anyhow::Result<_>>()?;
    let predicted: Vec<usize> = wrong.iter().map(|&i| s.test_predictions[i]).collect();
    let truth: Vec<usize> = wrong.iter().map(|&i| s.test_labels[i]).collect();
    let classifier = &e.classifier;
    let (Some(for_predicted), Some(for_truth)) = (
        classifier.grad_cam(&images, &predicted)?,
        classifier.grad_cam(&images, &truth)?,
    ) else {
        return Ok(());
    };
    let pixels: Vec<Vec<f32>> = wrong.iter().map(|&i| test_image(data, i)).collect();
    let mut tiles = Vec::new();
    for (j, &i) in wrong.iter().enumerate() {
        let p = s.test_predictions[i];
        tiles.push(Tile {
            pixels: &pixels[j],
            rows: data.test.rows,
            cols: data.test.cols,
            caption: format!(
                "#{i} → {}\n{}",
                names[p],
                confidence(s.test_probs[i * k + p])
            ),
            alert: true,
            heat: Some(&for_predicted[j]),
        });
        tiles.push(Tile {
            pixels: &pixels[j],
            rows: data.test.rows,
            cols: data.test.cols,
            caption: format!(
                "true: {}\n{}",
                names[s.test_labels[i]],
                confidence(s.test_probs[i * k + s.test_labels[i]])
            ),
            alert: false,
            heat: Some(&for_truth[j]),
        });
    }
    plots::image_grid(
        &dir.join(files::GRAD_CAM.png()),
        &format!(
            "{} — Grad-CAM of mistakes: predicted, then true class",
            e.name
        ),
        &tiles,
        8,
        90,
        2,
    )
}

/// A probability as a percentage with one decimal, e.g. `99.9%`.
fn confidence(p: f32) -> String {
    format!("{:.1}%", 100.0 * p)
}

/// Normalizes `values` to [0, 1] by their own range.
fn stretch(values: &[f32]) -> Vec<f32> {
    let lo = values.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let span = (hi - lo).max(1e-12);
    values.iter().map(|v| (v - lo) / span).collect()
}

fn write_filters(
    dir: &Path,
    e: &Evaluation,
    data: &FashionMnist,
    device: &Device,
) -> anyhow::Result<()> {
    if let Some(w) = e.classifier.model().first_conv_weight() {
        let (c, _, kh, kw) = w.dims4()?;
        let values = w.flatten_all()?.to_vec1::<f32>()?;
        // One grey scale for every filter, symmetric about zero, so that filters compare by
        // eye; it spans the 98th percentile of |w| (the few weights beyond it are clipped) so
        // that one large weight does not grey out the rest.
        let mut magnitudes: Vec<f32> = values.iter().map(|v| v.abs()).collect();
        magnitudes.sort_by(f32::total_cmp);
        let m = magnitudes[(magnitudes.len() - 1) * 98 / 100].max(1e-12);
        let kernels: Vec<Vec<f32>> = values
            .chunks_exact(kh * kw)
            .map(|k| {
                k.iter()
                    .map(|v| (0.5 + v / (2.0 * m)).clamp(0.0, 1.0))
                    .collect()
            })
            .collect();
        let tiles: Vec<Tile> = kernels
            .iter()
            .enumerate()
            .map(|(i, px)| Tile {
                pixels: px,
                rows: kh,
                cols: kw,
                caption: format!("{i}"),
                alert: false,
                heat: None,
            })
            .collect();
        plots::image_grid(
            &dir.join(files::FILTERS.png()),
            &format!(
                "{}: the {c} first-layer filters ({kh}x{kw}); black ≤ −{m:.2}, grey 0, white ≥ +{m:.2}",
                e.name
            ),
            &tiles,
            8,
            60,
            1,
        )?;
    }
    let i = 0;
    let norm: Normalizer = e.config.normalizer;
    let n = data.test.image_len();
    let img: Vec<f32> = data.test.pixels[i * n..(i + 1) * n]
        .iter()
        .map(|&p| norm.apply(p))
        .collect();
    let x = Tensor::from_vec(img, (1, 1, data.test.rows, data.test.cols), device)?;
    if let Some(maps) = e.classifier.model().first_feature_maps(&x)? {
        let (_, c, h, w) = maps.dims4()?;
        let values = maps.flatten_all()?.to_vec1::<f32>()?;
        let stretched: Vec<Vec<f32>> = values.chunks_exact(h * w).map(stretch).collect();
        let original = test_image(data, i);
        let mut tiles = vec![Tile {
            pixels: &original,
            rows: data.test.rows,
            cols: data.test.cols,
            caption: "input".into(),
            alert: false,
            heat: None,
        }];
        tiles.extend(stretched.iter().enumerate().map(|(j, px)| Tile {
            pixels: px,
            rows: h,
            cols: w,
            caption: format!("{j}"),
            alert: false,
            heat: None,
        }));
        let label = &e.scores.class_names[data.test.labels[i] as usize];
        plots::image_grid(
            &dir.join(files::FEATURE_MAPS.png()),
            &format!(
                "{} — first-layer feature maps ({c}) of test image #{i} ({label})",
                e.name
            ),
            &tiles,
            8,
            80,
            1,
        )?;
    }
    Ok(())
}
