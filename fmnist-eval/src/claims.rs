//! What the studies claimed, checked against the runs here: one row per claim, with the
//! study's figure, ours computed from the runs, and a verdict. The claims and their figures
//! are the studies' words (`../shared/seeds`, cited in the README); everything in the "ours"
//! column comes from the runs, so the table changes when the runs do.
use fmnist_train::Preset;

use crate::ensemble::EnsembleRecord;
use crate::findings::{self, RecipeRuns, Spread};
use crate::table::Table;

/// How a claim fares against the runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Holds,
    /// Ours and theirs differ by less than twice the standard error of the difference.
    WithinNoise,
    DoesNotHold,
    /// The runs that would check it are not in this results folder.
    NotRun,
}

impl Verdict {
    pub fn text(self) -> &'static str {
        match self {
            Verdict::Holds => "holds",
            Verdict::WithinNoise => "within noise",
            Verdict::DoesNotHold => "does not hold",
            Verdict::NotRun => "not run",
        }
    }
}

/// One claim of one study, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    pub study: &'static str,
    pub claim: &'static str,
    pub theirs: &'static str,
    pub ours: String,
    pub verdict: Verdict,
}

/// The studies, by the short names the table uses (the README cites each in full).
const KERAS: &str = "CNN vs RNN/LSTM (Keras)";
const R_STUDY: &str = "CNN and RNN (Mbakwe, R)";
const PYTORCH: &str = "NN classification (PyTorch)";
const DEPTH: &str = "CNN depth (PyTorch)";
const COURSEWORK: &str = "ANN vs CNN coursework";

/// The runs of `model` under its study recipe as the preset has it (no settings changed).
fn study<'g, 'a>(groups: &'g [RecipeRuns<'a>], model: &str) -> Option<&'g RecipeRuns<'a>> {
    findings::find(groups, model, Preset::Study)
}

/// The runs of `model` under the study recipe with exactly these `settings` changed.
fn study_with<'g, 'a>(
    groups: &'g [RecipeRuns<'a>],
    model: &str,
    settings: &str,
) -> Option<&'g RecipeRuns<'a>> {
    groups
        .iter()
        .filter(|g| g.model == model && g.preset == Preset::Study)
        .find(|g| g.settings_text() == settings)
}

/// Twice the standard error of a mean of `s`: from its own seeds where it has several,
/// else from the seed spread `pooled` of the recipe's models that have several.
fn two_se(s: Spread, pooled: f64) -> f64 {
    let std = if s.n > 1 { s.std } else { pooled };
    2.0 * std / (s.n as f64).sqrt()
}

/// A figure of theirs (a fraction) against our mean: within twice our standard error, ours
/// higher (the figure is reached), or ours lower.
fn figure(ours: Spread, theirs: f64, pooled: f64) -> Verdict {
    let diff = ours.mean - theirs;
    if diff.abs() <= two_se(ours, pooled) {
        Verdict::WithinNoise
    } else if diff > 0.0 {
        Verdict::Holds
    } else {
        Verdict::DoesNotHold
    }
}

/// The lead of `a` over `b` in points, and twice its standard error (a recipe of one run
/// takes the seed spread `pooled`).
fn lead(a: Spread, b: Spread, pooled: f64) -> (f64, f64) {
    let se2 = |s: Spread| {
        let std = if s.n > 1 { s.std } else { pooled };
        std * std / s.n as f64
    };
    (100.0 * (a.mean - b.mean), 200.0 * (se2(a) + se2(b)).sqrt())
}

/// A claimed lead of `lo..=hi` points: ours inside it, or its noise band reaching it.
fn lead_in(a: Spread, b: Spread, pooled: f64, lo: f64, hi: f64) -> (String, Verdict) {
    let (d, noise) = lead(a, b, pooled);
    let verdict = if (lo..=hi).contains(&d) {
        Verdict::Holds
    } else if d + noise >= lo && d - noise <= hi {
        Verdict::WithinNoise
    } else {
        Verdict::DoesNotHold
    };
    (format!("{d:+.2} ± {noise:.2} points"), verdict)
}

/// A claim that `a` beats `b`: a lead beyond the noise holds, one inside it is noise.
fn beats(a: Spread, b: Spread, pooled: f64) -> Verdict {
    let (d, noise) = lead(a, b, pooled);
    if d.abs() <= noise {
        Verdict::WithinNoise
    } else if d > 0.0 {
        Verdict::Holds
    } else {
        Verdict::DoesNotHold
    }
}

/// A parameter count stated to `precision` (half a unit of its last digit): ours within it.
fn count(ours: usize, theirs: f64, precision: f64) -> (String, Verdict) {
    let off = 100.0 * (ours as f64 - theirs) / theirs;
    let verdict = if (ours as f64 - theirs).abs() <= precision {
        Verdict::Holds
    } else {
        Verdict::DoesNotHold
    };
    (format!("{} ({off:+.1}%)", thousands(ours)), verdict)
}

fn thousands(n: usize) -> String {
    crate::table::thousands(n as f64)
}

fn params(g: &RecipeRuns) -> usize {
    g.runs[0].config.param_count
}

/// The class each run of `g` reads worst, by name, with its accuracy over the seeds.
fn hardest_class(g: &RecipeRuns) -> (String, Spread) {
    let names = &g.runs[0].scores.class_names;
    (0..names.len())
        .map(|c| (names[c].clone(), g.class_accuracy(c)))
        .min_by(|a, b| a.1.mean.total_cmp(&b.1.mean))
        .expect("ten classes")
}

/// The first epoch whose validation accuracy is within half a point of the run's best:
/// where its curve has flattened.
fn plateau_epoch(e: &crate::evaluate::Evaluation) -> Option<usize> {
    let best = e.history.iter().map(|r| r.val_acc).fold(f64::NAN, f64::max);
    e.history
        .iter()
        .find(|r| r.val_acc >= best - 0.005)
        .map(|r| r.epoch)
}

/// A claim whose runs are missing.
fn not_run(study: &'static str, claim: &'static str, theirs: &'static str, why: &str) -> Claim {
    Claim {
        study,
        claim,
        theirs,
        ours: why.to_string(),
        verdict: Verdict::NotRun,
    }
}

/// A figure claim on `model`'s study runs (`settings`: the recipe's changes, "" for none).
/// A recipe of one run takes the seed spread of the study recipe's seeded models.
#[allow(clippy::too_many_arguments)]
fn figure_claim(
    groups: &[RecipeRuns],
    pooled: f64,
    study: &'static str,
    claim: &'static str,
    theirs: &'static str,
    model: &str,
    settings: &str,
    value: f64,
) -> Claim {
    match study_with(groups, model, settings) {
        Some(g) => Claim {
            study,
            claim,
            theirs,
            ours: format!("{} (`{model}`)", g.test_accuracy().pct()),
            verdict: figure(g.test_accuracy(), value, pooled),
        },
        None => not_run(study, claim, theirs, &format!("no `{model}` runs")),
    }
}

/// A claimed lead of `a` over `b` of `lo..=hi` points.
#[allow(clippy::too_many_arguments)]
fn lead_claim(
    study: &'static str,
    claim: &'static str,
    theirs: &'static str,
    a: Option<&RecipeRuns>,
    b: Option<&RecipeRuns>,
    names: (&str, &str),
    pooled: f64,
    (lo, hi): (f64, f64),
) -> Claim {
    match (a, b) {
        (Some(a), Some(b)) => {
            let (ours, verdict) = lead_in(a.test_accuracy(), b.test_accuracy(), pooled, lo, hi);
            Claim {
                study,
                claim,
                theirs,
                ours: format!(
                    "{ours}: {} against {}",
                    a.test_accuracy().pct(),
                    b.test_accuracy().pct()
                ),
                verdict,
            }
        }
        _ => not_run(
            study,
            claim,
            theirs,
            &format!("needs `{}` and `{}` runs", names.0, names.1),
        ),
    }
}

/// Every claim, checked against `groups` (and the ensembles for the claim about them).
pub fn claims(groups: &[RecipeRuns], ensembles: &[EnsembleRecord]) -> Vec<Claim> {
    let mut out = Vec::new();
    let pooled = findings::pooled_std(groups, Preset::Study).unwrap_or(0.0);
    let cnn = study(groups, "cnn");
    let lstm = study(groups, "lstm");

    // The Keras CNN-vs-LSTM study: its measured results.
    if let Some(g) = cnn {
        let (ours, verdict) = count(params(g), 140_000.0, 5_000.0);
        out.push(Claim {
            study: KERAS,
            claim: "the CNN (32-32-100-10) has ~140,000 parameters",
            theirs: "~140,000",
            ours,
            verdict,
        });
    }
    if let Some(g) = lstm {
        let (ours, verdict) = count(params(g), 84_000.0, 500.0);
        out.push(Claim {
            study: KERAS,
            claim: "the LSTM (128 units) has ~84,000 parameters",
            theirs: "~84,000",
            ours,
            verdict,
        });
    }
    if let (Some(c), Some(l)) = (cnn, lstm) {
        let fewer = 100.0 * (1.0 - params(l) as f64 / params(c) as f64);
        out.push(Claim {
            study: KERAS,
            claim: "the LSTM has 40% fewer parameters than the CNN",
            theirs: "40% fewer",
            ours: format!("{fewer:.1}% fewer"),
            verdict: if (fewer - 40.0).abs() <= 5.0 {
                Verdict::Holds
            } else {
                Verdict::DoesNotHold
            },
        });
        out.push(Claim {
            study: KERAS,
            claim: "the CNN beats the LSTM",
            theirs: "88.0% vs 86.2%",
            ours: format!("{} vs {}", c.test_accuracy().pct(), l.test_accuracy().pct()),
            verdict: beats(c.test_accuracy(), l.test_accuracy(), pooled),
        });
        if let (Some(tc), Some(tl)) = (c.mean_train_seconds(), l.mean_train_seconds()) {
            out.push(Claim {
                study: KERAS,
                claim: "the CNN trains faster than the LSTM",
                theirs: "\"faster\" (no times)",
                ours: format!("{tc:.0} s vs {tl:.0} s a run (same recipe, 2 CPU cores)"),
                verdict: if tc < tl {
                    Verdict::Holds
                } else {
                    Verdict::DoesNotHold
                },
            });
        }
        let plateaus: Vec<usize> = (c.runs.iter().chain(&l.runs))
            .filter_map(|e| plateau_epoch(e))
            .collect();
        if !plateaus.is_empty() {
            let (lo, hi) = (
                plateaus.iter().min().copied().unwrap_or(0),
                plateaus.iter().max().copied().unwrap_or(0),
            );
            let epochs = c.runs[0].config.train.epochs;
            out.push(Claim {
                study: KERAS,
                claim: "validation accuracy plateaus by epoch 6-7",
                theirs: "epoch 6-7 of 8",
                ours: format!(
                    "epoch {lo}-{hi} of {epochs} (first within 0.5 points of the best; cnn and lstm, every seed)"
                ),
                verdict: if lo >= 5 && hi <= 7 {
                    Verdict::Holds
                } else {
                    Verdict::DoesNotHold
                },
            });
        }
    }
    for (g, claim, theirs) in [
        (cnn, "Shirt is the CNN's hardest class", "Shirt, 65.9%"),
        (
            lstm,
            "Shirt is the LSTM's hardest class",
            "Shirt (~155 taken for T-shirt, estimated)",
        ),
    ] {
        if let Some(g) = g {
            let (name, acc) = hardest_class(g);
            out.push(Claim {
                study: KERAS,
                claim,
                theirs,
                ours: format!("{name}, {}", acc.pct()),
                verdict: if name == "Shirt" {
                    Verdict::Holds
                } else {
                    Verdict::DoesNotHold
                },
            });
        }
    }
    // Its expectations ("expected impact"), each tried here.
    let wide_own = study_with(groups, "cnn-wide", "batch-size=64 epochs=20 val-frac=0.1")
        .or_else(|| study(groups, "cnn-wide"));
    out.push(lead_claim(
        KERAS,
        "a deeper CNN: +1-2 points (expected)",
        "+1-2 points",
        study(groups, "cnn-3conv"),
        wide_own,
        ("cnn-3conv", "cnn-wide"),
        pooled,
        (1.0, 2.0),
    ));
    out.push(lead_claim(
        KERAS,
        "rotation (±15°) and zoom: +2-3 points (expected)",
        "+2-3 points",
        study_with(groups, "cnn", "rotate=15 zoom=0.1"),
        cnn,
        ("cnn --rotate 15 --zoom 0.1", "cnn"),
        pooled,
        (2.0, 3.0),
    ));
    out.push(lead_claim(
        KERAS,
        "ReduceLROnPlateau: +0.5-1 point (expected)",
        "+0.5-1 point",
        study_with(groups, "cnn", "gamma=0.5 schedule=plateau step-size=2"),
        cnn,
        ("cnn --schedule plateau", "cnn"),
        pooled,
        (0.5, 1.0),
    ));
    out.push(lead_claim(
        KERAS,
        "attention: +1 point (expected; tried on the LSTM, over its 28 row states)",
        "\"potential +1%\"",
        study_with(groups, "lstm", "attention=true"),
        lstm,
        ("lstm --attention true", "lstm"),
        pooled,
        (1.0, f64::INFINITY),
    ));
    match ensembles.first() {
        Some(e) => {
            let best = (e.members.iter())
                .map(|m| m.test_acc)
                .fold(f64::NAN, f64::max);
            let gain = 100.0 * (e.test_acc - best);
            out.push(Claim {
                study: KERAS,
                claim: "an ensemble: +2-3 points (expected)",
                theirs: "+2-3 points",
                ours: format!(
                    "{gain:+.2} points: {:.2}% against its best member's {:.2}%",
                    100.0 * e.test_acc,
                    100.0 * best
                ),
                verdict: if (2.0..=3.0).contains(&gain) {
                    Verdict::Holds
                } else {
                    Verdict::DoesNotHold
                },
            });
        }
        None => out.push(not_run(
            KERAS,
            "an ensemble: +2-3 points (expected)",
            "+2-3 points",
            "no ensemble",
        )),
    }
    out.push(not_run(
        KERAS,
        "a class hierarchy reduces Shirt confusion (expected)",
        "fewer Shirt mistakes",
        "no hierarchical classifier here",
    ));

    // The R study.
    out.push(figure_claim(
        groups,
        pooled,
        R_STUDY,
        "CNN 1 (two BatchNorm convolutions, dense 512-128)",
        "92.51% (text: 92.35%)",
        "cnn-bn",
        "",
        0.9251,
    ));
    out.push(figure_claim(
        groups,
        pooled,
        R_STUDY,
        "CNN 2 (four BatchNorm convolutions, pooling)",
        "94.37% (printout: 91.83%)",
        "cnn-bn-pool",
        "",
        0.9437,
    ));
    if let (Some(a), Some(b)) = (study(groups, "cnn-bn-pool"), study(groups, "cnn-bn")) {
        out.push(Claim {
            study: R_STUDY,
            claim: "CNN 2 beats CNN 1",
            theirs: "94.37% vs 92.51% (printout: 91.83%)",
            ours: format!("{} vs {}", a.test_accuracy().pct(), b.test_accuracy().pct()),
            verdict: beats(a.test_accuracy(), b.test_accuracy(), pooled),
        });
    }
    out.push(figure_claim(
        groups,
        pooled,
        R_STUDY,
        "LSTM(128) with a dense head",
        "92.21% (printout: CNN 2's 91.83%)",
        "lstm-dense",
        "",
        0.9221,
    ));

    // The PyTorch MLP-vs-CNN study.
    out.push(figure_claim(
        groups,
        pooled,
        PYTORCH,
        "the MLP (784-256-128-10)",
        "87.46%",
        "mlp",
        "",
        0.8746,
    ));
    out.push(lead_claim(
        PYTORCH,
        "the 2-conv CNN beats the MLP by 3.7 points",
        "91.14% vs 87.46%",
        study(groups, "cnn-wide"),
        study(groups, "mlp"),
        ("cnn-wide", "mlp"),
        pooled,
        (3.0, 4.4),
    ));

    // The depth study.
    for (model, claim, theirs, n) in [
        (
            "cnn-wide",
            "the 2-conv baseline has 421,642 parameters",
            "421,642",
            421_642.0,
        ),
        (
            "cnn-3conv",
            "the 3-conv CNN has 1,701,130 parameters",
            "1,701,130",
            1_701_130.0,
        ),
    ] {
        if let Some(g) = study(groups, model) {
            let (ours, verdict) = count(params(g), n, 0.0);
            out.push(Claim {
                study: DEPTH,
                claim,
                theirs,
                ours,
                verdict,
            });
        }
    }
    out.push(figure_claim(
        groups,
        pooled,
        DEPTH,
        "the 2-conv baseline, its own recipe (batch 64, 20 epochs, 54,000/6,000)",
        "92.23%",
        "cnn-wide",
        "batch-size=64 epochs=20 val-frac=0.1",
        0.9223,
    ));
    out.push(figure_claim(
        groups,
        pooled,
        DEPTH,
        "the 3-conv CNN, the same recipe",
        "92.23%",
        "cnn-3conv",
        "",
        0.9223,
    ));
    if let (Some(a), Some(b)) = (study(groups, "cnn-3conv"), wide_own) {
        let (d, noise) = lead(a.test_accuracy(), b.test_accuracy(), pooled);
        out.push(Claim {
            study: DEPTH,
            claim: "depth gives no test gain",
            theirs: "92.23% both",
            ours: format!("{d:+.2} ± {noise:.2} points"),
            verdict: if d.abs() <= noise {
                Verdict::Holds
            } else {
                Verdict::DoesNotHold
            },
        });
    }

    // The coursework.
    if let Some(g) = study(groups, "mlp-bn") {
        let (ours, verdict) = count(params(g), 592_000.0, 500.0);
        out.push(Claim {
            study: COURSEWORK,
            claim: "the ANN (784-512-256-128-10, BatchNorm) has 592,000 parameters",
            theirs: "592,000",
            ours,
            verdict,
        });
    }
    let cnn_vgg = study(groups, "cnn-vgg");
    if let (Some(c), Some(a)) = (cnn_vgg, study(groups, "mlp-bn")) {
        let (c, a) = (params(c), params(a));
        out.push(Claim {
            study: COURSEWORK,
            claim: "the CNN has fewer parameters than the ANN (`cnn-vgg`: a reading of its words)",
            theirs: "438,000 vs 592,000",
            ours: format!("{} vs {}", thousands(c), thousands(a)),
            verdict: if c < a {
                Verdict::Holds
            } else {
                Verdict::DoesNotHold
            },
        });
    }
    out.push(figure_claim(
        groups,
        pooled,
        COURSEWORK,
        "the BatchNorm CNN, its own recipe (mean/std inputs, 54,000/6,000, batch 128, 18 epochs, reduce-on-plateau)",
        "92%",
        "cnn-vgg",
        "",
        0.92,
    ));
    out.push(lead_claim(
        COURSEWORK,
        "the BatchNorm CNN beats the ANN by 3-4 points",
        "92% vs 88-89%",
        cnn_vgg,
        study(groups, "mlp-bn"),
        ("cnn-vgg", "mlp-bn"),
        pooled,
        (3.0, 4.0),
    ));
    out
}

/// The claims as a table: study, claim, their figure, ours, verdict.
pub fn claims_table(claims: &[Claim]) -> Table {
    let mut t = Table::new(["study", "claim", "theirs", "ours", "verdict"]);
    for c in claims {
        t.push([
            c.study.to_string(),
            c.claim.to_string(),
            c.theirs.to_string(),
            c.ours.clone(),
            c.verdict.text().to_string(),
        ]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spread(mean: f64, std: f64, n: usize) -> Spread {
        Spread { mean, std, n }
    }

    #[test]
    fn figures_are_judged_against_twice_the_standard_error() {
        // 0.9201 ± 0.0033 over 3 seeds: 2 SE = 0.0038.
        let ours = spread(0.9201, 0.0033, 3);
        assert_eq!(figure(ours, 0.9223, 0.0), Verdict::WithinNoise);
        assert_eq!(figure(ours, 0.9437, 0.0), Verdict::DoesNotHold);
        assert_eq!(figure(ours, 0.9100, 0.0), Verdict::Holds);
        // One run: the pooled spread of the seeded models, 0.3 points: 2 SE = 0.6.
        let one = spread(0.8741, 0.0, 1);
        assert_eq!(figure(one, 0.8746, 0.003), Verdict::WithinNoise);
        assert_eq!(figure(one, 0.8846, 0.003), Verdict::DoesNotHold);
    }

    #[test]
    fn leads_are_checked_against_the_claimed_range_and_its_noise() {
        let a = spread(0.9201, 0.0033, 3);
        let b = spread(0.9119, 0.0006, 3);
        let (d, noise) = lead(a, b, 0.0);
        assert!((d - 0.82).abs() < 1e-9, "{d}");
        // sqrt(0.0033² / 3 + 0.0006² / 3) = 0.001936..., twice in points: 0.387.
        assert!((noise - 0.3873).abs() < 1e-3, "{noise}");
        assert_eq!(lead_in(a, b, 0.0, 1.0, 2.0).1, Verdict::WithinNoise);
        assert_eq!(lead_in(a, b, 0.0, 0.5, 1.0).1, Verdict::Holds);
        assert_eq!(lead_in(a, b, 0.0, 2.0, 3.0).1, Verdict::DoesNotHold);
        // "At least a point": open above.
        assert_eq!(lead_in(a, b, 0.0, 0.5, f64::INFINITY).1, Verdict::Holds);
        assert_eq!(
            lead_in(a, b, 0.0, 1.0, f64::INFINITY).1,
            Verdict::WithinNoise
        );
        assert_eq!(
            lead_in(a, b, 0.0, 1.5, f64::INFINITY).1,
            Verdict::DoesNotHold
        );
        assert_eq!(beats(a, b, 0.0), Verdict::Holds);
        assert_eq!(beats(b, a, 0.0), Verdict::DoesNotHold);
        // A one-run recipe takes the pooled spread: 0.9141 (one run) against 0.9121 (one
        // run) with 0.3 points of seed spread is noise.
        let (one, other) = (spread(0.9141, 0.0, 1), spread(0.9121, 0.0, 1));
        assert_eq!(beats(one, other, 0.003), Verdict::WithinNoise);
    }

    #[test]
    fn counts_hold_within_the_precision_they_are_stated_to() {
        assert_eq!(count(90_678, 140_000.0, 5_000.0).1, Verdict::DoesNotHold);
        assert_eq!(count(421_642, 421_642.0, 0.0).1, Verdict::Holds);
        assert_eq!(count(83_700, 84_000.0, 500.0).1, Verdict::Holds);
        assert_eq!(count(90_678, 140_000.0, 5_000.0).0, "90,678 (-35.2%)");
    }
}
