//! The views of evaluations: per-run tables for the terminal, the comparison across runs with
//! the winner of each row, multi-seed mean ± std, `summary.csv` and `REPORT.md`.
use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::ensemble::EnsembleRecord;
use crate::evaluate::{Evaluation, Scores};
use crate::table::{pct, thousands, Table};
use fmnist_models::mean_std;

use crate::files::{Plot, COMPARISON, CURVES, RUN_PLOTS_AFTER_TABLES, SAMPLES};

/// The gap table of one run: loss and accuracy per split, and the differences to train.
pub fn gap_table(s: &Scores) -> Table {
    let mut t = Table::new(["split", "loss", "accuracy", "gap to train (acc)"]);
    let g = s.gap;
    for (name, part) in [("train", g.train), ("validation", g.val), ("test", g.test)] {
        let gap = if name == "train" {
            "-".to_string()
        } else {
            format!("{:+.2} pts", 100.0 * (part.accuracy - g.train.accuracy))
        };
        t.push([
            name.to_string(),
            format!("{:.4}", part.loss),
            pct(part.accuracy),
            gap,
        ]);
    }
    t
}

/// Per-class accuracy, precision, recall, F1, support, then the macro and weighted averages.
pub fn per_class_table(s: &Scores) -> Table {
    let mut t = Table::new(["class", "accuracy", "precision", "recall", "F1", "support"]);
    for (m, name) in s.confusion.per_class().iter().zip(&s.class_names) {
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
        ("macro avg", s.confusion.macro_average()),
        ("weighted avg", s.confusion.weighted_average()),
    ] {
        t.push([
            label.to_string(),
            "".into(),
            pct(a.precision),
            pct(a.recall),
            pct(a.f1),
            s.confusion.total().to_string(),
        ]);
    }
    t
}

/// The confusion matrix folded into the garment groups, and how many mistakes stay in a group.
pub fn groups_table(s: &Scores) -> Table {
    let g = &s.groups;
    let mut header = vec!["actual \\ pred".to_string()];
    header.extend(g.groups.iter().cloned());
    header.push("accuracy".into());
    let mut t = Table::new(header);
    for (i, (name, row)) in g.groups.iter().zip(&g.confusion).enumerate() {
        let mut cells = vec![name.clone()];
        cells.extend(row.iter().map(|c| c.to_string()));
        let total: u64 = row.iter().sum();
        cells.push(pct(row[i] as f64 / total.max(1) as f64));
        t.push(cells);
    }
    t
}

/// One line on the garment groups: group accuracy and the share of mistakes inside a group.
pub fn groups_line(s: &Scores) -> String {
    format!(
        "garment groups (tops, bottoms, footwear, bags): accuracy {}; {} of the mistakes stay inside their group",
        pct(s.groups.accuracy),
        pct(s.groups.errors_within_group)
    )
}

/// `s` with its first letter in upper case.
fn capitalized(s: &str) -> String {
    let mut chars = s.chars();
    chars
        .next()
        .map_or(String::new(), |c| c.to_uppercase().chain(chars).collect())
}

/// The confusion matrix with short class names; counts, or row shares with `normalized`.
pub fn confusion_table(s: &Scores, normalized: bool) -> Table {
    let names = &s.class_names;
    let short = |s: &String| s.chars().take(8).collect::<String>();
    let mut header = vec!["actual \\ pred".to_string()];
    header.extend(names.iter().map(short));
    let mut t = Table::new(header);
    for (i, name) in names.iter().enumerate() {
        let mut row = vec![name.clone()];
        if normalized {
            row.extend(
                s.confusion
                    .normalized_row(i)
                    .iter()
                    .map(|v| format!("{:.3}", v)),
            );
        } else {
            row.extend((0..names.len()).map(|p| s.confusion.get(i, p).to_string()));
        }
        t.push(row);
    }
    t
}

/// The most-confused pairs, e.g. `Shirt -> T-shirt/top: 112`.
pub fn confused_pairs(s: &Scores, n: usize) -> Vec<String> {
    let names = &s.class_names;
    s.confusion
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
        pct(e.scores.gap.test.accuracy),
        e.scores.gap.test.loss,
        pct(e.scores.confusion.macro_average().f1),
        100.0 * e.scores.calibration.ece,
        thousands(e.inference_images_per_second)
    );
    out.push_str(&gap_table(&e.scores).render());
    out.push('\n');
    out.push_str(&per_class_table(&e.scores).render());
    out.push_str(&format!(
        "\nconfusion matrix ({}; rows: actual, columns: predicted)\n",
        if normalized { "row shares" } else { "counts" }
    ));
    out.push_str(&confusion_table(&e.scores, normalized).render());
    out.push_str("\nmost confused: ");
    out.push_str(&confused_pairs(&e.scores, 5).join("; "));
    out.push_str(&format!("\n\n{}\n", groups_line(&e.scores)));
    out.push_str(&groups_table(&e.scores).render());
    out
}

/// What is printed about an ensemble: its members, then the tables of a run.
pub fn ensemble_text(r: &EnsembleRecord, s: &Scores) -> String {
    let mut out = format!(
        "== ensemble {}: {} members ({}) ==\n",
        r.name,
        r.members.len(),
        if r.chosen_by == "validation" {
            "chosen on validation accuracy"
        } else {
            "as given"
        }
    );
    out.push_str(&ensemble_members_table(r).render());
    out.push_str(&format!(
        "\ntest accuracy {}  loss {:.4}  macro F1 {}  ECE {:.2}%\n\n",
        pct(r.test_acc),
        r.test_loss,
        pct(r.macro_f1),
        100.0 * r.ece
    ));
    out.push_str(&gap_table(s).render());
    out.push('\n');
    out.push_str(&per_class_table(s).render());
    out.push_str(&format!("\n{}\n", groups_line(s)));
    out.push_str(&groups_table(s).render());
    out
}

/// The candidates of an ensemble, whether each is a member, and each one's scores alone.
fn ensemble_members_table(r: &EnsembleRecord) -> Table {
    let mut t = Table::new(["run", "model", "member", "val acc alone", "test acc alone"]);
    for c in &r.candidates {
        let member = r.members.iter().any(|m| m.run == c.run);
        t.push([
            c.run.clone(),
            c.model.clone(),
            if member { "yes" } else { "no" }.to_string(),
            pct(c.val_acc),
            pct(c.test_acc),
        ]);
    }
    t
}

/// The ensembles' rows of the report: members, validation and test accuracy.
pub fn ensembles_markdown(ensembles: &[EnsembleRecord]) -> String {
    let mut t = Table::new([
        "ensemble",
        "members",
        "chosen by",
        "val acc",
        "test acc",
        "macro F1",
        "ECE",
        "garment-group acc",
    ]);
    for r in ensembles {
        let members: Vec<&str> = r.members.iter().map(|m| m.run.as_str()).collect();
        t.push([
            format!("[{0}]({0}/)", r.name),
            members.join(", "),
            r.chosen_by.clone(),
            pct(r.val_acc),
            pct(r.test_acc),
            pct(r.macro_f1),
            format!("{:.2}%", 100.0 * r.ece),
            pct(r.group_acc),
        ]);
    }
    t.markdown()
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
            values: evals.iter().map(|e| e.scores.gap.test.accuracy).collect(),
            format: pct,
        },
        Metric {
            name: "test loss",
            higher_is_better: Some(false),
            values: evals.iter().map(|e| e.scores.gap.test.loss).collect(),
            format: |v| format!("{v:.4}"),
        },
        Metric {
            name: "macro F1",
            higher_is_better: Some(true),
            values: evals
                .iter()
                .map(|e| e.scores.confusion.macro_average().f1)
                .collect(),
            format: pct,
        },
        Metric {
            name: "validation accuracy",
            higher_is_better: Some(true),
            values: evals.iter().map(|e| e.scores.gap.val.accuracy).collect(),
            format: pct,
        },
        Metric {
            name: "train - test gap (pts)",
            higher_is_better: Some(false),
            values: evals
                .iter()
                .map(|e| 100.0 * (e.scores.gap.train.accuracy - e.scores.gap.test.accuracy))
                .collect(),
            format: |v| format!("{v:.2}"),
        },
        Metric {
            name: "calibration error (ECE)",
            higher_is_better: Some(false),
            values: evals.iter().map(|e| e.scores.calibration.ece).collect(),
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
            stat(&|e| e.scores.gap.test.accuracy, 100.0, 2) + "%",
            stat(&|e| e.scores.gap.test.loss, 1.0, 4),
            stat(&|e| e.scores.gap.val.accuracy, 100.0, 2) + "%",
            stat(&|e| e.scores.confusion.macro_average().f1, 100.0, 2) + "%",
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
    /// Accuracy over the garment groups (tops, bottoms, footwear, bags).
    pub group_acc: f64,
    /// The share of mistakes whose prediction stays in the true class's garment group.
    pub errors_within_group: f64,
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
            train_acc: e.scores.gap.train.accuracy,
            val_acc: e.scores.gap.val.accuracy,
            test_acc: e.scores.gap.test.accuracy,
            test_loss: e.scores.gap.test.loss,
            macro_f1: e.scores.confusion.macro_average().f1,
            ece: e.scores.calibration.ece,
            group_acc: e.scores.groups.accuracy,
            errors_within_group: e.scores.groups.errors_within_group,
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
pub fn markdown(
    evals: &[Evaluation],
    ensembles: &[EnsembleRecord],
    root: &Path,
    prov: &Provenance,
) -> String {
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
    if !ensembles.is_empty() {
        md.push_str("\n## Ensembles (mean of the members' probabilities)\n\n");
        md.push_str(&ensembles_markdown(ensembles));
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
            pct(e.scores.gap.test.accuracy),
            e.scores.gap.test.loss,
            pct(e.scores.confusion.macro_average().f1),
            100.0 * e.scores.calibration.ece,
            confused_pairs(&e.scores, 3).join("; ")
        ));
        let plot = |md: &mut String, p: Plot| {
            image(md, p.caption, &format!("{}/{}", e.name, p.png()), root)
        };
        plot(&mut md, CURVES);
        md.push('\n');
        md.push_str(&gap_table(&e.scores).markdown());
        md.push('\n');
        md.push_str(&per_class_table(&e.scores).markdown());
        md.push_str(&format!("\n{}.\n\n", capitalized(&groups_line(&e.scores))));
        md.push_str(&groups_table(&e.scores).markdown());
        md.push('\n');
        for p in RUN_PLOTS_AFTER_TABLES {
            plot(&mut md, p);
        }
    }
    md
}
