//! The views of evaluations: per-run tables for the terminal, the comparison across runs with
//! the winner of each row, multi-seed mean ± std, `summary.csv` and `REPORT.md`.
use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::evaluate::Evaluation;
use crate::table::{pct, thousands, Table};
use fmnist_models::mean_std;

use crate::files::{Plot, COMPARISON, CURVES, RUN_PLOTS_AFTER_TABLES, SAMPLES};

/// The gap table of one run: loss and accuracy per split, and the differences to train.
pub fn gap_table(e: &Evaluation) -> Table {
    let mut t = Table::new(["split", "loss", "accuracy", "gap to train (acc)"]);
    let g = e.gap;
    for (name, s) in [("train", g.train), ("validation", g.val), ("test", g.test)] {
        let gap = if name == "train" {
            "-".to_string()
        } else {
            format!("{:+.2} pts", 100.0 * (s.accuracy - g.train.accuracy))
        };
        t.push([
            name.to_string(),
            format!("{:.4}", s.loss),
            pct(s.accuracy),
            gap,
        ]);
    }
    t
}

/// Per-class accuracy, precision, recall, F1, support, then the macro and weighted averages.
pub fn per_class_table(e: &Evaluation) -> Table {
    let mut t = Table::new(["class", "accuracy", "precision", "recall", "F1", "support"]);
    for (m, name) in e.confusion.per_class().iter().zip(&e.config.class_names) {
        t.push([
            name.clone(),
            pct(m.recall),
            pct(m.precision),
            pct(m.recall),
            pct(m.f1),
            m.support.to_string(),
        ]);
    }
    for (label, a) in [
        ("macro avg", e.confusion.macro_average()),
        ("weighted avg", e.confusion.weighted_average()),
    ] {
        t.push([
            label.to_string(),
            "".into(),
            pct(a.precision),
            pct(a.recall),
            pct(a.f1),
            e.confusion.total().to_string(),
        ]);
    }
    t
}

/// The confusion matrix with short class names; counts, or row shares with `normalized`.
pub fn confusion_table(e: &Evaluation, normalized: bool) -> Table {
    let names = &e.config.class_names;
    let short = |s: &String| s.chars().take(8).collect::<String>();
    let mut header = vec!["actual \\ pred".to_string()];
    header.extend(names.iter().map(short));
    let mut t = Table::new(header);
    for (i, name) in names.iter().enumerate() {
        let mut row = vec![name.clone()];
        if normalized {
            row.extend(
                e.confusion
                    .normalized_row(i)
                    .iter()
                    .map(|v| format!("{:.3}", v)),
            );
        } else {
            row.extend((0..names.len()).map(|p| e.confusion.get(i, p).to_string()));
        }
        t.push(row);
    }
    t
}

/// The most-confused pairs, e.g. `Shirt -> T-shirt/top: 112`.
pub fn confused_pairs(e: &Evaluation, n: usize) -> Vec<String> {
    let names = &e.config.class_names;
    e.confusion
        .most_confused(n)
        .iter()
        .map(|c| format!("{} -> {}: {}", names[c.actual], names[c.predicted], c.count))
        .collect()
}

/// Everything printed about one run.
pub fn run_text(e: &Evaluation, normalized: bool) -> String {
    let c = &e.config.train;
    let mut out = format!(
        "== {}: {} ({} preset, seed {}, {} params) ==\ntest accuracy {}  loss {:.4}  macro F1 {}  ECE {:.2}%  inference {} img/s\n\n",
        e.name,
        c.model.kind,
        c.preset,
        c.seed,
        thousands(e.config.param_count as f64),
        pct(e.gap.test.accuracy),
        e.gap.test.loss,
        pct(e.confusion.macro_average().f1),
        100.0 * e.calibration.ece,
        thousands(e.inference_images_per_second)
    );
    out.push_str(&gap_table(e).render());
    out.push('\n');
    out.push_str(&per_class_table(e).render());
    out.push_str(&format!(
        "\nconfusion matrix ({}; rows: actual, columns: predicted)\n",
        if normalized { "row shares" } else { "counts" }
    ));
    out.push_str(&confusion_table(e, normalized).render());
    out.push_str("\nmost confused: ");
    out.push_str(&confused_pairs(e, 5).join("; "));
    out.push('\n');
    out
}

/// One metric row of the comparison: its values per run and which way is better.
struct Metric {
    name: &'static str,
    /// Which way is better; `None` for a row without a winner.
    higher_is_better: Option<bool>,
    values: Vec<f64>,
    format: fn(f64) -> String,
}

/// The run with the best value of `m`, "tie" when several share it, "-" without a ranking.
fn winner(m: &Metric, evals: &[Evaluation]) -> String {
    let Some(higher) = m.higher_is_better else {
        return "-".into();
    };
    let finite = m.values.iter().copied().filter(|v| v.is_finite());
    let best = if higher {
        finite.fold(f64::NEG_INFINITY, f64::max)
    } else {
        finite.fold(f64::INFINITY, f64::min)
    };
    let at_best: Vec<usize> = (0..m.values.len())
        .filter(|&i| m.values[i] == best)
        .collect();
    match at_best.as_slice() {
        [] => "-".into(),
        [i] => evals[*i].name.clone(),
        _ => "tie".into(),
    }
}

/// The studies' "CNN vs RNN" table: a row per metric, a column per run, and the winner.
pub fn comparison_table(evals: &[Evaluation]) -> Table {
    let train_secs = |e: &Evaluation| e.summary.as_ref().map_or(f64::NAN, |s| s.train_seconds);
    let metrics = [
        Metric {
            name: "test accuracy",
            higher_is_better: Some(true),
            values: evals.iter().map(|e| e.gap.test.accuracy).collect(),
            format: pct,
        },
        Metric {
            name: "test loss",
            higher_is_better: Some(false),
            values: evals.iter().map(|e| e.gap.test.loss).collect(),
            format: |v| format!("{v:.4}"),
        },
        Metric {
            name: "macro F1",
            higher_is_better: Some(true),
            values: evals
                .iter()
                .map(|e| e.confusion.macro_average().f1)
                .collect(),
            format: pct,
        },
        Metric {
            name: "validation accuracy",
            higher_is_better: Some(true),
            values: evals.iter().map(|e| e.gap.val.accuracy).collect(),
            format: pct,
        },
        Metric {
            name: "train - test gap (pts)",
            higher_is_better: Some(false),
            values: evals
                .iter()
                .map(|e| 100.0 * (e.gap.train.accuracy - e.gap.test.accuracy))
                .collect(),
            format: |v| format!("{v:.2}"),
        },
        Metric {
            name: "calibration error (ECE)",
            higher_is_better: Some(false),
            values: evals.iter().map(|e| e.calibration.ece).collect(),
            format: pct,
        },
        Metric {
            name: "parameters",
            higher_is_better: Some(false),
            values: evals.iter().map(|e| e.config.param_count as f64).collect(),
            format: thousands,
        },
        Metric {
            name: "epochs",
            higher_is_better: None,
            values: evals.iter().map(|e| e.history.len() as f64).collect(),
            format: |v| format!("{v:.0}"),
        },
        Metric {
            name: "training time (s)",
            higher_is_better: Some(false),
            values: evals.iter().map(train_secs).collect(),
            format: thousands,
        },
        Metric {
            name: "inference (img/s)",
            higher_is_better: Some(true),
            values: evals
                .iter()
                .map(|e| e.inference_images_per_second)
                .collect(),
            format: thousands,
        },
    ];
    let mut header = vec!["metric".to_string()];
    header.extend(evals.iter().map(|e| e.name.clone()));
    header.push("winner".into());
    let mut t = Table::new(header);
    for m in metrics {
        let mut row = vec![m.name.to_string()];
        row.extend(m.values.iter().map(|&v| {
            if v.is_finite() {
                (m.format)(v)
            } else {
                "-".into()
            }
        }));
        row.push(winner(&m, evals));
        t.push(row);
    }
    t
}

/// Runs named `GROUP/seed-N` grouped by `GROUP`.
pub fn seed_groups(evals: &[Evaluation]) -> BTreeMap<String, Vec<&Evaluation>> {
    let mut groups: BTreeMap<String, Vec<&Evaluation>> = BTreeMap::new();
    for e in evals {
        if let Some((group, _)) = fmnist_train::seed_group(&e.name) {
            groups.entry(group.to_string()).or_default().push(e);
        }
    }
    groups
}

/// Mean ± sample std of each metric over the seeds of each group.
pub fn seeds_table(evals: &[Evaluation]) -> Option<Table> {
    let groups = seed_groups(evals);
    if groups.is_empty() {
        return None;
    }
    let mut t = Table::new([
        "runs",
        "seeds",
        "test accuracy",
        "test loss",
        "validation accuracy",
        "macro F1",
        "training time (s)",
    ]);
    for (group, runs) in groups {
        let stat = |f: &dyn Fn(&Evaluation) -> f64, scale: f64, digits: usize| {
            let (m, s) = mean_std(&runs.iter().map(|e| f(e) * scale).collect::<Vec<_>>());
            format!("{m:.digits$} ± {s:.digits$}")
        };
        let seeds: Vec<String> = runs
            .iter()
            .map(|e| e.config.train.seed.to_string())
            .collect();
        t.push([
            group,
            seeds.join(","),
            stat(&|e| e.gap.test.accuracy, 100.0, 2) + "%",
            stat(&|e| e.gap.test.loss, 1.0, 4),
            stat(&|e| e.gap.val.accuracy, 100.0, 2) + "%",
            stat(&|e| e.confusion.macro_average().f1, 100.0, 2) + "%",
            stat(
                &|e| e.summary.as_ref().map_or(f64::NAN, |s| s.train_seconds),
                1.0,
                0,
            ),
        ]);
    }
    Some(t)
}

/// A row of `summary.csv`.
#[derive(Debug, Serialize)]
pub struct SummaryRow<'a> {
    pub run: &'a str,
    pub model: String,
    pub preset: fmnist_train::Preset,
    pub seed: u64,
    pub params: usize,
    pub epochs: usize,
    pub best_epoch: Option<usize>,
    pub train_seconds: Option<f64>,
    pub train_acc: f64,
    pub val_acc: f64,
    pub test_acc: f64,
    pub test_loss: f64,
    pub macro_f1: f64,
    pub ece: f64,
    pub inference_images_per_second: f64,
}

pub fn summary_csv(evals: &[Evaluation]) -> anyhow::Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for e in evals {
        w.serialize(SummaryRow {
            run: &e.name,
            model: e.config.train.model.kind.to_string(),
            preset: e.config.train.preset,
            seed: e.config.train.seed,
            params: e.config.param_count,
            epochs: e.history.len(),
            best_epoch: e.summary.as_ref().map(|s| s.best_epoch),
            train_seconds: e.summary.as_ref().map(|s| s.train_seconds),
            train_acc: e.gap.train.accuracy,
            val_acc: e.gap.val.accuracy,
            test_acc: e.gap.test.accuracy,
            test_loss: e.gap.test.loss,
            macro_f1: e.confusion.macro_average().f1,
            ece: e.calibration.ece,
            inference_images_per_second: e.inference_images_per_second,
        })?;
    }
    Ok(w.into_inner()?)
}

/// Facts about where the report was made.
pub struct Provenance {
    pub commit: String,
    pub machine: String,
    pub command: String,
}

impl Provenance {
    pub fn detect(command: String) -> Self {
        Provenance {
            commit: fmnist_train::device::git_commit(),
            machine: fmnist_train::device::machine_description(),
            command,
        }
    }
}

fn image(md: &mut String, alt: &str, path: &str, root: &Path) {
    if root.join(path).exists() {
        md.push_str(&format!("![{alt}]({path})\n"));
    }
}

/// `REPORT.md`: provenance, comparison, seeds, then a section per run with its images.
pub fn markdown(evals: &[Evaluation], root: &Path, prov: &Provenance) -> String {
    let mut md = String::from("# fmnist evaluation report\n\n");
    md.push_str(&format!(
        "Made by `{}` at commit `{}` on {}. Training times are those of the runs themselves (see each run's `config.json` for its device and threads); inference is measured here on the test set.\n\n",
        prov.command, prov.commit, prov.machine
    ));
    md.push_str("## Comparison\n\n");
    image(&mut md, COMPARISON.caption, &COMPARISON.png(), root);
    md.push('\n');
    md.push_str(&comparison_table(evals).markdown());
    if let Some(t) = seeds_table(evals) {
        md.push_str("\n## Over seeds (mean ± sample std)\n\n");
        md.push_str(&t.markdown());
    }
    md.push('\n');
    image(&mut md, SAMPLES.caption, &SAMPLES.png(), root);
    for e in evals {
        let c = &e.config.train;
        md.push_str(&format!("\n## {}\n\n", e.name));
        md.push_str(&format!(
            "Model `{}` ({} parameters, {} init), preset `{}`, seed {}: {} epochs (best on validation: {}), {} lr {:.0e}, batch {}, schedule {}, weight decay {}, label smoothing {}, augmentation: {}{}{}.\n\n",
            c.model.kind,
            thousands(e.config.param_count as f64),
            c.model.init,
            c.preset,
            c.seed,
            e.history.len(),
            e.summary.as_ref().map_or("?".into(), |s| s.best_epoch.to_string()),
            c.optimizer,
            c.lr,
            c.batch_size,
            c.schedule,
            c.weight_decay,
            c.label_smoothing,
            c.augment,
            if c.model.mirror_tta {
                ", scored as the mean of each image and its mirror image"
            } else {
                ""
            },
            c.subset.map_or(String::new(), |n| format!(", on a subset of {n} images")),
        ));
        md.push_str(&format!(
            "Test accuracy **{}** (loss {:.4}), macro F1 {}, ECE {:.2}%. Most confused: {}.\n\n",
            pct(e.gap.test.accuracy),
            e.gap.test.loss,
            pct(e.confusion.macro_average().f1),
            100.0 * e.calibration.ece,
            confused_pairs(e, 3).join("; ")
        ));
        let plot = |md: &mut String, p: Plot| {
            image(md, p.caption, &format!("{}/{}", e.name, p.png()), root)
        };
        plot(&mut md, CURVES);
        md.push('\n');
        md.push_str(&gap_table(e).markdown());
        md.push('\n');
        md.push_str(&per_class_table(e).markdown());
        md.push('\n');
        for p in RUN_PLOTS_AFTER_TABLES {
            plot(&mut md, p);
        }
    }
    md
}
