//! The views of evaluations: per-run tables for the terminal, the table of every recipe (seeds
//! folded into mean ± std), `summary.csv`, `REPORT.md` and each run's own `REPORT.md`.
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::claims;
use crate::ensemble::EnsembleRecord;
use crate::evaluate::{Evaluation, Scores};
use crate::table::{pct, thousands, Table};
use fmnist_train::Preset;

use crate::files::{
    self, ACCURACY_VS_PARAMETERS, CNN_VS_LSTM, COMPARISON, CURVES, FAMILIES,
    RUN_PLOTS_AFTER_TABLES, SAMPLES, VALIDATION_BEST, VALIDATION_STUDY,
};
use crate::findings::{self, RecipeRuns, Spread};

/// The gap table of one run: loss and accuracy per split, and train accuracy minus each
/// split's in points (positive: the model does better on the images it trained on).
pub fn gap_table(s: &Scores) -> Table {
    let mut t = Table::new(["split", "loss", "accuracy", "train − split (pts)"]);
    let g = s.gap;
    for (name, part) in [("train", g.train), ("validation", g.val), ("test", g.test)] {
        let gap = if name == "train" {
            "-".to_string()
        } else {
            format!("{:.2}", 100.0 * (g.train.accuracy - part.accuracy))
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
        "== {}: {} ({} preset, seed {}, {} params) ==\ntest accuracy {}  loss {:.4}  macro F1 {}  ECE {:.2}%\n\n",
        e.name,
        c.model.kind,
        c.preset,
        c.seed,
        thousands(e.config.param_count as f64),
        pct(e.scores.gap.test.accuracy),
        e.scores.gap.test.loss,
        pct(e.scores.confusion.macro_average().f1),
        100.0 * e.scores.calibration.ece,
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
            "chosen and weighted on validation accuracy"
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

/// The candidates of an ensemble, each one's weight in it (its picks over all picks; "-":
/// not a member) and its scores alone.
fn ensemble_members_table(r: &EnsembleRecord) -> Table {
    let mut t = Table::new(["run", "model", "weight", "val acc alone", "test acc alone"]);
    let total: usize = r.members.iter().map(|m| m.picks).sum();
    for c in &r.candidates {
        t.push([
            c.run.clone(),
            c.model.clone(),
            if c.picks == 0 {
                "-".to_string()
            } else {
                format!("{}/{total}", c.picks)
            },
            pct(c.val_acc),
            pct(c.test_acc),
        ]);
    }
    t
}

/// A member as the report lists it: its run, with `×N` where selection picked it N > 1 times.
fn member_text(m: &crate::ensemble::MemberRecord) -> String {
    match m.picks {
        0 | 1 => m.run.clone(),
        n => format!("{} ×{n}", m.run),
    }
}

/// An ensemble's own page (`NAME/REPORT.md`): its scores, its members with their weights and
/// scores alone, and the figures in its folder `dir`.
pub fn ensemble_markdown(r: &EnsembleRecord, dir: &Path) -> String {
    let mut md = format!("# {}\n\n", r.name);
    md.push_str(&format!(
        "**{} test accuracy** (loss {:.4}), macro F1 {}, ECE {:.2}%, validation accuracy {}: the mean of {} runs' class probabilities, {}.\n\n",
        pct(r.test_acc),
        r.test_loss,
        pct(r.macro_f1),
        100.0 * r.ece,
        pct(r.val_acc),
        r.members.len(),
        if r.chosen_by == "validation" {
            "members and weights chosen on validation accuracy alone (ensemble selection with replacement: a run's weight is how many times it was picked)"
        } else {
            "as given, one share each"
        }
    ));
    md.push_str(&ensemble_members_table(r).markdown());
    md.push('\n');
    for p in RUN_PLOTS_AFTER_TABLES {
        image(&mut md, p, dir);
    }
    md
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
        let members: Vec<String> = r.members.iter().map(member_text).collect();
        t.push([
            format!("[{0}]({0}/REPORT.md)", r.name),
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

/// The runs as rows, grouped by recipe (study first, then best) with their seeds folded into
/// mean ± std, then the ensembles' rows; in Markdown, each seed links to its run's page and
/// each ensemble to its own.
pub fn results_table(groups: &[RecipeRuns], ensembles: &[SummaryRow], links: bool) -> Table {
    // A column of what each recipe changes in its preset, where any does (a sweep's runs).
    let settings: Vec<String> = groups.iter().map(RecipeRuns::settings_text).collect();
    let with_settings = settings
        .iter()
        .chain(ensembles.iter().map(|r| &r.settings))
        .any(|s| !s.is_empty());
    let mut header = vec!["recipe", "model"];
    if with_settings {
        header.push("settings");
    }
    header.extend([
        "seeds",
        "parameters",
        "test accuracy",
        "macro F1",
        "validation accuracy",
        "train − test (pts)",
        "ECE",
        "epochs",
        "training time (s)",
    ]);
    let mut t = Table::new(header);
    let mut order: Vec<(&RecipeRuns, &String)> = groups.iter().zip(&settings).collect();
    order.sort_by(|(a, _), (b, _)| {
        (a.preset != Preset::Study, a.preset.to_string())
            .cmp(&(b.preset != Preset::Study, b.preset.to_string()))
            .then(b.test_accuracy().mean.total_cmp(&a.test_accuracy().mean))
    });
    for (g, setting) in order {
        let seeds: Vec<String> = g
            .runs
            .iter()
            .map(|e| {
                let seed = e.config.train.seed;
                if links {
                    format!("[{seed}]({}/{})", e.name, files::REPORT)
                } else {
                    seed.to_string()
                }
            })
            .collect();
        let first = g.runs[0];
        let epochs = g.spread(|e| e.history.len() as f64);
        let mut row = vec![g.preset.to_string(), g.model.clone()];
        if with_settings {
            row.push(setting.clone());
        }
        row.extend([
            seeds.join(", "),
            thousands(first.config.param_count as f64),
            g.test_accuracy().pct(),
            g.spread(|e| e.scores.confusion.macro_average().f1).pct(),
            g.spread(|e| e.scores.gap.val.accuracy).pct(),
            g.spread(|e| e.scores.gap.train.accuracy - e.scores.gap.test.accuracy)
                .points(),
            format!(
                "{:.1}%",
                100.0 * g.spread(|e| e.scores.calibration.ece).mean
            ),
            format!("{:.0}", epochs.mean),
            mean_training_time(g),
        ]);
        t.push(row);
    }
    for r in ensembles {
        let mut row = vec![preset_text(r.preset), r.model.clone()];
        if with_settings {
            row.push(r.settings.clone());
        }
        let page = match links {
            true => format!("[its page]({}/{})", r.run, files::REPORT),
            false => r.run.clone(),
        };
        row.extend([
            page,
            thousands(r.params as f64),
            pct(r.test_acc),
            pct(r.macro_f1),
            pct(r.val_acc),
            "-".to_string(),
            format!("{:.1}%", 100.0 * r.ece),
            "-".to_string(),
            r.train_seconds.map_or_else(|| "-".to_string(), thousands),
        ]);
        t.push(row);
    }
    t
}

/// The mean training time of a recipe's runs that recorded one, or "-" where none did.
fn mean_training_time(g: &RecipeRuns) -> String {
    g.mean_train_seconds()
        .map_or_else(|| "-".to_string(), thousands)
}

/// Per-class test accuracy, mean ± std over the seeds of each recipe that has several.
pub fn class_accuracy_over_seeds(groups: &[RecipeRuns]) -> Option<Table> {
    let seeded: Vec<&RecipeRuns> = groups.iter().filter(|g| g.runs.len() > 1).collect();
    let names = &seeded.first()?.runs[0].scores.class_names;
    let mut header = vec!["class".to_string()];
    header.extend(
        seeded
            .iter()
            .map(|g| format!("{} ({})", g.label(), g.preset)),
    );
    let mut t = Table::new(header);
    for (c, name) in names.iter().enumerate() {
        let mut row = vec![name.clone()];
        row.extend(seeded.iter().map(|g| g.class_accuracy(c).points()));
        t.push(row);
    }
    Some(t)
}

/// A row of `summary.csv`: one run's figures, or an ensemble's (which has no seed, epochs or
/// train accuracy of its own).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SummaryRow {
    pub run: String,
    /// The model, or `ensemble`.
    pub model: String,
    /// The preset; an ensemble's is its members' where they share one (else none).
    pub preset: Option<Preset>,
    /// What the run's recipe changes in its preset (`epochs=60 erase=0.5`; empty for none); an
    /// ensemble's members by model (`resnet x6`, `cnn + lstm`).
    pub settings: String,
    pub seed: Option<u64>,
    /// The parameters of the model; an ensemble's, the sum of its distinct members'.
    pub params: usize,
    pub epochs: Option<usize>,
    pub best_epoch: Option<usize>,
    /// The training time; an ensemble's, the sum of its distinct members'.
    pub train_seconds: Option<f64>,
    pub train_acc: Option<f64>,
    pub val_acc: f64,
    pub test_acc: f64,
    pub test_loss: f64,
    pub macro_f1: f64,
    pub ece: f64,
    /// Accuracy over the garment groups (tops, bottoms, footwear, bags).
    pub group_acc: f64,
    /// The share of mistakes whose prediction stays in the true class's garment group.
    pub errors_within_group: f64,
}

impl SummaryRow {
    pub fn new(e: &Evaluation) -> Self {
        SummaryRow {
            run: e.name.clone(),
            model: e.config.train.model.kind.to_string(),
            preset: Some(e.config.train.preset),
            settings: findings::settings_text(&e.config.train),
            seed: Some(e.config.train.seed),
            params: e.config.param_count,
            epochs: Some(e.history.len()),
            best_epoch: e.summary.as_ref().map(|s| s.best_epoch),
            train_seconds: e.summary.as_ref().map(|s| s.train_seconds),
            train_acc: Some(e.scores.gap.train.accuracy),
            val_acc: e.scores.gap.val.accuracy,
            test_acc: e.scores.gap.test.accuracy,
            test_loss: e.scores.gap.test.loss,
            macro_f1: e.scores.confusion.macro_average().f1,
            ece: e.scores.calibration.ece,
            group_acc: e.scores.groups.accuracy,
            errors_within_group: e.scores.groups.errors_within_group,
        }
    }

    /// The row of ensemble `r`, whose members are among `evals`; `None` where one is missing
    /// (its size and cost are then unknown).
    pub fn ensemble(r: &EnsembleRecord, evals: &[Evaluation]) -> Option<Self> {
        let members = r
            .members
            .iter()
            .map(|m| evals.iter().find(|e| e.name == m.run))
            .collect::<Option<Vec<&Evaluation>>>()?;
        let preset = members[0].config.train.preset;
        let shared = members.iter().all(|e| e.config.train.preset == preset);
        let mut models: Vec<(String, usize)> = Vec::new();
        for e in &members {
            let kind = e.config.train.model.kind.to_string();
            match models.iter_mut().find(|(m, _)| *m == kind) {
                Some((_, n)) => *n += 1,
                None => models.push((kind, 1)),
            }
        }
        let settings: Vec<String> = models
            .iter()
            .map(|(m, n)| match n {
                1 => m.clone(),
                _ => format!("{m} x{n}"),
            })
            .collect();
        let train_seconds: Option<Vec<f64>> = members
            .iter()
            .map(|e| e.summary.as_ref().map(|s| s.train_seconds))
            .collect();
        Some(SummaryRow {
            run: r.name.clone(),
            model: "ensemble".into(),
            preset: shared.then_some(preset),
            settings: settings.join(" + "),
            seed: None,
            params: members.iter().map(|e| e.config.param_count).sum(),
            epochs: None,
            best_epoch: None,
            train_seconds: train_seconds.map(|t| t.iter().sum()),
            train_acc: None,
            val_acc: r.val_acc,
            test_acc: r.test_acc,
            test_loss: r.test_loss,
            macro_f1: r.macro_f1,
            ece: r.ece,
            group_acc: r.group_acc,
            errors_within_group: r.errors_within_group,
        })
    }

    /// What makes its recipe: model, preset and settings (the seed does not).
    fn recipe(&self) -> (&str, Option<Preset>, &str) {
        (&self.model, self.preset, &self.settings)
    }
}

/// A preset's name, or `mixed` for an ensemble of several.
fn preset_text(p: Option<Preset>) -> String {
    p.map_or_else(|| "mixed".to_string(), |p| p.to_string())
}

/// `summary.csv` of `rows`.
pub fn summary_csv(rows: &[SummaryRow]) -> anyhow::Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for row in rows {
        w.serialize(row)?;
    }
    Ok(w.into_inner()?)
}

/// The rows of the `summary.csv` at `path`.
pub fn read_summary_csv(path: &Path) -> anyhow::Result<Vec<SummaryRow>> {
    let mut r =
        csv::Reader::from_path(path).with_context(|| format!("reading {}", path.display()))?;
    r.deserialize()
        .collect::<Result<_, _>>()
        .with_context(|| format!("{}: unexpected content", path.display()))
}

/// The answer in a screen's width: the test accuracy of every recipe (its seeds' mean ±
/// sample std), study recipes first, each preset from the best down.
pub fn answer_table(rows: &[SummaryRow]) -> Table {
    let mut recipes: Vec<Vec<&SummaryRow>> = Vec::new();
    for row in rows {
        match recipes
            .iter_mut()
            .find(|runs| runs[0].recipe() == row.recipe())
        {
            Some(runs) => runs.push(row),
            None => recipes.push(vec![row]),
        }
    }
    let accuracy = |runs: &[&SummaryRow]| {
        let values: Vec<f64> = runs.iter().map(|r| r.test_acc).collect();
        Spread::of(&values)
    };
    recipes.sort_by(|a, b| {
        (a[0].preset != Some(Preset::Study))
            .cmp(&(b[0].preset != Some(Preset::Study)))
            .then(accuracy(b).mean.total_cmp(&accuracy(a).mean))
    });
    let with_settings = rows.iter().any(|r| !r.settings.is_empty());
    let mut header = vec!["recipe", "model"];
    if with_settings {
        header.push("settings");
    }
    header.extend(["seeds", "parameters", "test accuracy"]);
    let mut t = Table::new(header);
    for runs in &mut recipes {
        runs.sort_by_key(|r| r.seed);
        let seeds: Vec<String> = runs
            .iter()
            .filter_map(|r| r.seed)
            .map(|s| s.to_string())
            .collect();
        let mut row = vec![preset_text(runs[0].preset), runs[0].model.clone()];
        if with_settings {
            row.push(runs[0].settings.clone());
        }
        row.extend([
            if seeds.is_empty() {
                "-".to_string()
            } else {
                seeds.join(", ")
            },
            thousands(runs[0].params as f64),
            accuracy(runs).pct(),
        ]);
        t.push(row);
    }
    t
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

/// The figure `plot` (where its file exists under `root`) with its one-line note under it.
fn image(md: &mut String, plot: files::Plot, root: &Path) {
    let path = plot.png();
    if root.join(&path).exists() {
        md.push_str(&format!("![{}]({path})\n*{}*\n\n", plot.caption, plot.note));
    }
}

/// The runs' page, `REPORT.md`: what the runs show, one table of every recipe, the analyses
/// across runs, and a link to each run's own page.
pub fn markdown(
    evals: &[Evaluation],
    groups: &[RecipeRuns],
    ensembles: &[EnsembleRecord],
    ensemble_rows: &[SummaryRow],
    root: &Path,
    prov: &Provenance,
) -> String {
    let mut md = String::from("# fmnist evaluation report\n\n");
    md.push_str(
        "What the runs in this folder show, computed from them. A **study** run trains with the recipe of the study its model comes from; a **best** run with fmnist's own (docs/training.md). Test accuracy is that of the epoch best on validation; where a recipe was trained with several seeds, figures are mean ± sample standard deviation over them.\n\n",
    );
    md.push_str("## Findings\n\n");
    let mut found = findings::comparisons(groups);
    found.extend(findings::hardest_classes(groups));
    found.extend(findings::shared_confusions(evals));
    found.extend(findings::calibration(evals));
    for f in found {
        md.push_str(&format!("- {f}\n"));
    }
    md.push_str("\n## Results\n\n");
    md.push_str("Each row is a model and recipe; the seeds link to each run's page (per-class scores, confusion matrix, calibration, curves, mistakes, Grad-CAM, filters). \"train − test\" is train accuracy minus test accuracy in points: positive means the model does better on the images it trained on. Training times are those of the runs themselves, on the machines their `config.json` names; speed is measured by `cargo xtask bench` (BENCH.md), not by this evaluation.\n\n");
    md.push_str(&results_table(groups, ensemble_rows, true).markdown());
    md.push('\n');
    image(&mut md, ACCURACY_VS_PARAMETERS, root);
    image(&mut md, COMPARISON, root);
    image(&mut md, FAMILIES, root);
    md.push_str("\n## What the studies claimed, checked\n\n");
    md.push_str("Each claim of the five studies that these runs can test, the study's own figure beside ours (computed from the runs in this folder, mean ± std over seeds). A figure is *within noise* when ours differs from it by less than twice our standard error; a claimed lead *holds* when ours lies in the claimed range, is *within noise* when twice its standard error reaches the range. Claims marked *expected* are the studies' forecasts, not their measurements. The studies are cited in the README.\n\n");
    md.push_str(&claims::claims_table(&claims::claims(groups, ensembles)).markdown());
    if !ensembles.is_empty() {
        md.push_str("\n## Ensembles (mean of the members' probabilities)\n\n");
        md.push_str(&ensembles_markdown(ensembles));
    }
    md.push_str("\n## Validation accuracy per epoch\n\n");
    for p in [VALIDATION_STUDY, VALIDATION_BEST] {
        image(&mut md, p, root);
    }
    if let Some(t) = class_accuracy_over_seeds(groups) {
        md.push_str("\n## Per-class test accuracy over seeds (%, mean ± std)\n\n");
        md.push_str(&t.markdown());
    }
    if root.join(CNN_VS_LSTM.png()).exists() {
        md.push_str("\n## The CNN and the LSTM on the same test images\n\n");
        md.push_str("The first seed of each model's study runs on the same test images: the first row where both are wrong (the most confident such mistakes), the second where only the LSTM is, the third where only the CNN is; each image with its true class, then each model's answer and confidence. The probability bars of every run (`probabilities.png` on its page) show the same six test images too.\n\n");
        image(&mut md, CNN_VS_LSTM, root);
    }
    md.push_str("\n## Test images\n\n");
    image(&mut md, SAMPLES, root);
    md.push_str(&format!(
        "\n---\nMade by `{}` at commit `{}` on {}.\n",
        prov.command, prov.commit, prov.machine
    ));
    md
}

/// A run's own page (`RUN/REPORT.md`): its recipe, scores, tables and plots; `root` is the
/// folder its plots are in.
pub fn run_markdown(e: &Evaluation, root: &Path) -> String {
    let c = &e.config.train;
    let mut md = format!("# {}\n\n", e.name);
    md.push_str(&format!(
        "**{} test accuracy** (loss {:.4}), macro F1 {}, ECE {:.2}%. Most confused: {}.\n\n",
        pct(e.scores.gap.test.accuracy),
        e.scores.gap.test.loss,
        pct(e.scores.confusion.macro_average().f1),
        100.0 * e.scores.calibration.ece,
        confused_pairs(&e.scores, 3).join("; ")
    ));
    md.push_str(&format!(
        "Model `{}` ({} parameters, {} init), preset `{}`, seed {}{}: {} epochs (best on validation: {}), {} lr {:.0e}, batch {}, schedule {}, weight decay {}, label smoothing {}, augmentation: {}{}{}.\n\n",
        c.model.kind,
        thousands(e.config.param_count as f64),
        c.model.init,
        c.preset,
        c.seed,
        c.split_seed.map_or(String::new(), |s| format!(" (split seed {s})")),
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
    image(&mut md, CURVES, root);
    md.push('\n');
    md.push_str(&gap_table(&e.scores).markdown());
    md.push('\n');
    md.push_str(&per_class_table(&e.scores).markdown());
    md.push_str(&format!("\n{}.\n\n", capitalized(&groups_line(&e.scores))));
    md.push_str(&groups_table(&e.scores).markdown());
    md.push('\n');
    for p in RUN_PLOTS_AFTER_TABLES {
        image(&mut md, p, root);
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(run: &str, preset: Preset, test_acc: f64) -> SummaryRow {
        SummaryRow {
            run: run.to_string(),
            model: run.split(['/', '-']).next().unwrap_or_default().to_string(),
            preset: Some(preset),
            settings: String::new(),
            seed: Some(42),
            params: 90_678,
            epochs: Some(8),
            best_epoch: Some(8),
            train_seconds: None,
            train_acc: Some(0.9),
            val_acc: 0.9,
            test_acc,
            test_loss: 0.3,
            macro_f1: 0.9,
            ece: 0.01,
            group_acc: 0.99,
            errors_within_group: 0.9,
        }
    }

    #[test]
    fn the_answer_folds_seeds_into_their_recipe_study_first() {
        let mut sweep = row("sweep/lr=2e-3/seed-1", Preset::Study, 0.87);
        sweep.settings = "lr=0.002".into();
        let mut cnn43 = row("cnn/seed-43", Preset::Study, 0.90);
        cnn43.seed = Some(43);
        let mut both = row("both", Preset::Best, 0.95);
        (both.model, both.seed, both.settings) = ("ensemble".into(), None, "cnn x2".into());
        let rows = [
            row("cnn-best", Preset::Best, 0.93),
            cnn43,
            row("cnn/seed-42", Preset::Study, 0.88),
            row("lstm/seed-42", Preset::Study, 0.86),
            sweep,
            both,
        ];
        let t = answer_table(&rows).render();
        let lines: Vec<&str> = t.lines().skip(2).collect();
        let cells = |l: &str| l.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
        let first: Vec<String> = lines.iter().map(|l| cells(l)).collect();
        assert_eq!(
            first,
            [
                "study cnn 42,",
                "study sweep lr=0.002",
                "study lstm 42",
                "best ensemble cnn",
                "best cnn 42"
            ]
        );
        // The ensemble has no seed of its own.
        assert_eq!(
            lines[3].split_whitespace().nth(4),
            Some("-"),
            "{}",
            lines[3]
        );
        // cnn: mean 89.00%, sample std of 0.88 and 0.90 is 1.41 points, seeds in order.
        assert!(lines[0].ends_with("89.00% ± 1.41"), "{}", lines[0]);
        assert!(lines[0].contains("42, 43"), "{}", lines[0]);
    }

    #[test]
    fn summary_csv_reads_back_as_written() {
        let mut both = row("both", Preset::Best, 0.95);
        (both.preset, both.seed, both.epochs, both.train_acc) = (None, None, None, None);
        let rows = vec![row("cnn/seed-42", Preset::Study, 0.8865), both];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(files::SUMMARY_CSV);
        std::fs::write(&path, summary_csv(&rows).unwrap()).unwrap();
        assert_eq!(read_summary_csv(&path).unwrap(), rows);
        std::fs::write(&path, "run,model\ncnn,cnn\n").unwrap();
        let err = read_summary_csv(&path).unwrap_err();
        assert!(format!("{err:#}").contains("unexpected content"), "{err:#}");
    }
}
