//! What the runs show, computed from them: the runs grouped by recipe (the seeds of one model
//! and recipe folded together), each comparison the studies make with its winner and whether
//! the lead is larger than the seed-to-seed spread, the hardest classes, the confusions every
//! model shares, and how label smoothing changes calibration.
use std::collections::BTreeMap;

use fmnist_models::mean_std;
use fmnist_train::{ConfigChange, Preset, TrainConfig};

use crate::evaluate::Evaluation;

/// The runs of one model trained with one recipe: the same configuration but for the seeds.
pub struct RecipeRuns<'a> {
    pub model: String,
    pub preset: Preset,
    pub runs: Vec<&'a Evaluation>,
}

/// Mean and sample standard deviation of a figure over a group's runs (std 0 for one run).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub mean: f64,
    pub std: f64,
    pub n: usize,
}

impl Spread {
    pub fn of(values: &[f64]) -> Self {
        let (mean, std) = mean_std(values);
        Spread {
            mean,
            std: if values.len() > 1 { std } else { 0.0 },
            n: values.len(),
        }
    }

    /// `88.64% ± 0.29` in percent (`88.64%` for one run).
    pub fn pct(&self) -> String {
        if self.n > 1 {
            format!("{:.2}% ± {:.2}", 100.0 * self.mean, 100.0 * self.std)
        } else {
            format!("{:.2}%", 100.0 * self.mean)
        }
    }

    /// The same in percentage points without the sign (`2.22 ± 0.10`).
    pub fn points(&self) -> String {
        if self.n > 1 {
            format!("{:.2} ± {:.2}", 100.0 * self.mean, 100.0 * self.std)
        } else {
            format!("{:.2}", 100.0 * self.mean)
        }
    }
}

impl<'a> RecipeRuns<'a> {
    pub fn spread(&self, f: impl Fn(&Evaluation) -> f64) -> Spread {
        Spread::of(&self.runs.iter().map(|e| f(e)).collect::<Vec<_>>())
    }

    pub fn test_accuracy(&self) -> Spread {
        self.spread(|e| e.scores.gap.test.accuracy)
    }

    /// The mean training time in seconds of the runs that recorded one (a run stopped before
    /// its end has no summary); `None` where none did.
    pub fn mean_train_seconds(&self) -> Option<f64> {
        let times: Vec<f64> = (self.runs.iter())
            .filter_map(|e| e.summary.as_ref().map(|s| s.train_seconds))
            .collect();
        (!times.is_empty()).then(|| times.iter().sum::<f64>() / times.len() as f64)
    }

    pub fn seeds(&self) -> Vec<u64> {
        self.runs.iter().map(|e| e.config.train.seed).collect()
    }

    /// [`settings_text`] of this recipe.
    pub fn settings_text(&self) -> String {
        settings_text(&self.runs[0].config.train)
    }

    /// The model, followed by what the recipe changes in its preset where it changes anything
    /// (`resnet erase=0.5`): what tells two recipes of one preset apart in a plot.
    pub fn label(&self) -> String {
        let settings = self.settings_text();
        if settings.is_empty() {
            self.model.clone()
        } else {
            format!("{} {settings}", self.model)
        }
    }

    /// Accuracy of class `c` over the runs.
    pub fn class_accuracy(&self, c: usize) -> Spread {
        self.spread(|e| e.scores.confusion.per_class()[c].recall)
    }
}

/// What a run's recipe changes in its preset, by flag (`lr 0.001 → 0.002`): empty for a preset
/// as it is. The seeds are not part of a recipe.
pub fn settings(c: &TrainConfig) -> Vec<ConfigChange> {
    c.differences(&TrainConfig::preset(c.model.kind, c.preset))
        .into_iter()
        .filter(|c| c.flag != "seed" && c.flag != "split-seed")
        .collect()
}

/// [`settings`] as flags (`epochs=40 erase=0.5`, sorted by name): empty for a preset as it is.
pub fn settings_text(c: &TrainConfig) -> String {
    let changes: Vec<String> = (settings(c).iter())
        .map(|c| format!("{}={}", c.flag, c.to))
        .collect();
    changes.join(" ")
}

/// The configuration that makes a recipe: everything but the seeds.
fn recipe_key(c: &TrainConfig) -> String {
    let recipe = TrainConfig {
        seed: 0,
        split_seed: None,
        ..c.clone()
    };
    serde_json::to_string(&recipe).unwrap_or_default()
}

/// The runs grouped by recipe, in the order of their first run; seeds sorted within a group.
pub fn recipe_groups(evals: &[Evaluation]) -> Vec<RecipeRuns<'_>> {
    let mut order: Vec<String> = Vec::new();
    let mut groups: BTreeMap<String, RecipeRuns> = BTreeMap::new();
    for e in evals {
        let key = recipe_key(&e.config.train);
        let group = groups.entry(key.clone()).or_insert_with(|| {
            order.push(key);
            RecipeRuns {
                model: e.config.train.model.kind.to_string(),
                preset: e.config.train.preset,
                runs: Vec::new(),
            }
        });
        group.runs.push(e);
    }
    order
        .iter()
        .filter_map(|k| groups.remove(k))
        .map(|mut g| {
            g.runs.sort_by_key(|e| e.config.train.seed);
            g
        })
        .collect()
}

/// The group of `model` and `preset`: the preset as it is where it was run (no settings
/// changed), and of several such groups (or, without one, of the others) the one with the
/// most runs.
pub fn find<'g, 'a>(
    groups: &'g [RecipeRuns<'a>],
    model: &str,
    preset: Preset,
) -> Option<&'g RecipeRuns<'a>> {
    let rank = |g: &RecipeRuns| (g.settings_text().is_empty(), g.runs.len());
    groups
        .iter()
        .filter(|g| g.model == model && g.preset == preset)
        .fold(None, |best: Option<&RecipeRuns>, g| match best {
            Some(b) if rank(b) >= rank(g) => Some(b),
            _ => Some(g),
        })
}

/// A comparison the studies make: the models it ranks.
pub struct Comparison {
    pub title: &'static str,
    pub models: &'static [&'static str],
}

pub const COMPARISONS: [Comparison; 5] = [
    Comparison {
        title: "CNN vs LSTM",
        models: &["cnn", "lstm"],
    },
    Comparison {
        title: "MLP vs CNN",
        models: &["mlp", "mlp-bn", "cnn", "cnn-wide", "cnn-vgg"],
    },
    Comparison {
        title: "Depth",
        models: &["cnn", "cnn-wide", "cnn-3conv", "cnn-deep", "resnet"],
    },
    Comparison {
        title: "BatchNorm in an MLP",
        models: &["mlp", "mlp-bn"],
    },
    Comparison {
        title: "BatchNorm in a deeper CNN",
        models: &["cnn-3conv", "cnn-deep"],
    },
];

/// The seed noise of a lead of `a` over `b`: twice the standard error of the difference of the
/// two means, from their own seeds where both have several, else from `pooled` (the standard
/// deviation of this recipe's seeded models). With the words that say where it comes from.
fn noise(a: Spread, b: Spread, pooled: Option<f64>) -> Option<(f64, String)> {
    let scale = (1.0 / a.n as f64 + 1.0 / b.n as f64).sqrt();
    if a.n > 1 && b.n > 1 {
        let se = (a.std * a.std / a.n as f64 + b.std * b.std / b.n as f64).sqrt();
        return Some((2.0 * se, "from their own seeds".into()));
    }
    pooled.map(|s| {
        (
            2.0 * s * scale,
            format!(
                "from the seed spread of this recipe's models with several seeds, {:.2} points",
                100.0 * s
            ),
        )
    })
}

/// The pooled standard deviation of test accuracy over the groups of `preset` with seeds.
pub fn pooled_std(groups: &[RecipeRuns], preset: Preset) -> Option<f64> {
    let (mut sum, mut dof) = (0.0, 0usize);
    for g in groups
        .iter()
        .filter(|g| g.preset == preset && g.runs.len() > 1)
    {
        let s = g.test_accuracy();
        sum += (s.n - 1) as f64 * s.std * s.std;
        dof += s.n - 1;
    }
    (dof > 0).then(|| (sum / dof as f64).sqrt())
}

/// The classes where `a` leads `b` most (up to three), and where `b` leads by a point or more.
fn class_leads(a: &RecipeRuns, b: &RecipeRuns, names: &[String]) -> String {
    let mut diffs: Vec<(f64, &str)> = (0..names.len())
        .map(|c| {
            let d = a.class_accuracy(c).mean - b.class_accuracy(c).mean;
            (100.0 * d, names[c].as_str())
        })
        .collect();
    diffs.sort_by(|x, y| y.0.total_cmp(&x.0));
    // Each lead as a gain of the model that has it.
    let list = |items: &[&(f64, &str)]| {
        items
            .iter()
            .map(|(d, n)| format!("{n} (+{:.1})", d.abs()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let gains: Vec<&(f64, &str)> = diffs.iter().filter(|d| d.0 >= 1.0).take(3).collect();
    let losses: Vec<&(f64, &str)> = diffs.iter().rev().filter(|d| d.0 <= -1.0).collect();
    let mut out = String::new();
    if !gains.is_empty() {
        out.push_str(&format!(
            " Per class, `{}` gains most on {}",
            a.model,
            list(&gains)
        ));
        if !losses.is_empty() {
            out.push_str(&format!("; `{}` leads on {}", b.model, list(&losses)));
        }
        out.push('.');
    }
    out
}

fn seeds_note(g: &RecipeRuns) -> String {
    if g.runs.len() > 1 {
        let seeds: Vec<String> = g.seeds().iter().map(u64::to_string).collect();
        format!(" (seeds {})", seeds.join(", "))
    } else {
        String::new()
    }
}

/// One finding per comparison and recipe that has at least two of its models.
pub fn comparisons(groups: &[RecipeRuns]) -> Vec<String> {
    let Some(names) = groups
        .first()
        .and_then(|g| g.runs.first())
        .map(|e| e.scores.class_names.clone())
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for cmp in &COMPARISONS {
        for preset in [Preset::Study, Preset::Best] {
            let mut present: Vec<&RecipeRuns> = cmp
                .models
                .iter()
                .filter_map(|m| find(groups, m, preset))
                .collect();
            if present.len() < 2 {
                continue;
            }
            present.sort_by(|a, b| b.test_accuracy().mean.total_cmp(&a.test_accuracy().mean));
            let ranking: Vec<String> = present
                .iter()
                .map(|g| format!("`{}` {}{}", g.model, g.test_accuracy().pct(), seeds_note(g)))
                .collect();
            let (a, b) = (present[0], present[1]);
            let (sa, sb) = (a.test_accuracy(), b.test_accuracy());
            let lead = sa.mean - sb.mean;
            let verdict = match noise(sa, sb, pooled_std(groups, preset)) {
                Some((n, basis)) if lead > n => format!(
                    "more than seed noise (two standard errors of the difference: {:.2} points, {basis})",
                    100.0 * n
                ),
                Some((n, basis)) => format!(
                    "within seed noise (two standard errors of the difference: {:.2} points, {basis})",
                    100.0 * n
                ),
                None => "one seed each: not tested against seed noise".into(),
            };
            out.push(format!(
                "**{}**, {} recipe: {}. `{}` leads `{}` by {:.2} points, {verdict}.{}",
                cmp.title,
                preset,
                ranking.join(" > "),
                a.model,
                b.model,
                100.0 * lead,
                class_leads(a, b, &names)
            ));
        }
    }
    out
}

/// The three classes with the lowest accuracy averaged over the recipes, each with its range.
pub fn hardest_classes(groups: &[RecipeRuns]) -> Option<String> {
    let names = &groups.first()?.runs.first()?.scores.class_names;
    let mut classes: Vec<(f64, f64, f64, usize)> = (0..names.len())
        .map(|c| {
            let accs: Vec<f64> = groups.iter().map(|g| g.class_accuracy(c).mean).collect();
            let (mean, _) = mean_std(&accs);
            let lo = accs.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = accs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            (mean, lo, hi, c)
        })
        .collect();
    classes.sort_by(|a, b| a.0.total_cmp(&b.0));
    let list: Vec<String> = classes
        .iter()
        .take(3)
        .map(|(mean, lo, hi, c)| {
            format!(
                "{} ({:.1}%, from {:.1}% to {:.1}%)",
                names[*c],
                100.0 * mean,
                100.0 * lo,
                100.0 * hi
            )
        })
        .collect();
    Some(format!(
        "**Hardest classes**, accuracy averaged over the {} recipes (lowest to highest recipe): {}.",
        groups.len(),
        list.join(", ")
    ))
}

/// The confusions among the five most frequent of every run (or of the most runs).
pub fn shared_confusions(evals: &[Evaluation]) -> Option<String> {
    let names = &evals.first()?.scores.class_names;
    let mut seen: BTreeMap<(usize, usize), (usize, usize)> = BTreeMap::new();
    for e in evals {
        for c in e.scores.confusion.most_confused(5) {
            let entry = seen.entry((c.actual, c.predicted)).or_default();
            entry.0 += 1;
            entry.1 += c.count as usize;
        }
    }
    let mut pairs: Vec<((usize, usize), (usize, usize))> = seen.into_iter().collect();
    pairs.sort_by_key(|p| std::cmp::Reverse(p.1));
    let most = pairs.first()?.1 .0;
    let shared: Vec<String> = pairs
        .iter()
        .filter(|p| p.1 .0 == most)
        .map(|((t, p), (_, count))| {
            format!(
                "{} → {} ({:.0} images per run)",
                names[*t],
                names[*p],
                *count as f64 / most as f64
            )
        })
        .collect();
    let whose = if most == evals.len() {
        format!("every one of the {} runs", evals.len())
    } else {
        format!("{most} of the {} runs", evals.len())
    };
    Some(format!(
        "**Confusions every model makes**: among the five most frequent of {whose}: {}.",
        shared.join("; ")
    ))
}

/// Mean top-class probability over the test images.
pub fn mean_confidence(e: &Evaluation) -> f64 {
    let bins = &e.scores.calibration.bins;
    let n: usize = bins.iter().map(|b| b.count).sum();
    let sum: f64 = bins
        .iter()
        .map(|b| b.count as f64 * b.mean_confidence)
        .sum();
    if n == 0 {
        f64::NAN
    } else {
        sum / n as f64
    }
}

/// Calibration with and without label smoothing: mean confidence against accuracy, and ECE.
pub fn calibration(evals: &[Evaluation]) -> Option<String> {
    let describe = |runs: &[&Evaluation]| -> Option<(String, f64)> {
        if runs.is_empty() {
            return None;
        }
        let conf = Spread::of(&runs.iter().map(|e| mean_confidence(e)).collect::<Vec<_>>());
        let acc = Spread::of(
            &runs
                .iter()
                .map(|e| e.scores.gap.test.accuracy)
                .collect::<Vec<_>>(),
        );
        let ece: Vec<f64> = runs.iter().map(|e| e.scores.calibration.ece).collect();
        let lo = ece.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = ece.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Some((
            format!(
                "mean confidence {:.1}% against accuracy {:.1}%, ECE {:.1}% to {:.1}%",
                100.0 * conf.mean,
                100.0 * acc.mean,
                100.0 * lo,
                100.0 * hi
            ),
            conf.mean - acc.mean,
        ))
    };
    let (smoothed, plain): (Vec<&Evaluation>, Vec<&Evaluation>) = evals
        .iter()
        .partition(|e| e.config.train.label_smoothing > 0.0);
    let (s, s_gap) = describe(&smoothed)?;
    let direction = if s_gap < 0.0 {
        "under-confident"
    } else {
        "over-confident"
    };
    let mut out = format!(
        "**Calibration**: the {} runs trained with label smoothing are {direction}: {s}.",
        smoothed.len()
    );
    if let Some((p, _)) = describe(&plain) {
        out.push_str(&format!(" The {} runs without it: {p}.", plain.len()));
    }
    let (eps, k) = (
        smoothed[0].config.train.label_smoothing,
        smoothed[0].scores.class_names.len() as f64,
    );
    out.push_str(&format!(
        " Label smoothing {eps} trains the true class towards {:.0}%, not 100%, so these models' probabilities read low: use them to rank, or rescale them, rather than as chances.",
        100.0 * (1.0 - eps + eps / k)
    ));
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_formats_and_one_run_has_no_std() {
        let s = Spread::of(&[0.8865, 0.8892, 0.8835]);
        assert_eq!(s.pct(), "88.64% ± 0.29");
        assert_eq!(Spread::of(&[0.9434]).pct(), "94.34%");
        assert_eq!(Spread::of(&[0.0222, 0.0242]).points(), "2.32 ± 0.14");
    }

    #[test]
    fn seed_noise_by_hand() {
        // cnn and lstm, study recipe: twice the standard error of the difference.
        let cnn = Spread::of(&[0.8865, 0.8892, 0.8835]);
        let lstm = Spread::of(&[0.8599, 0.8632, 0.8658]);
        let (n, basis) = noise(cnn, lstm, None).unwrap();
        let se = (cnn.std.powi(2) / 3.0 + lstm.std.powi(2) / 3.0).sqrt();
        assert!((n - 2.0 * se).abs() < 1e-15);
        assert!((100.0 * n - 0.474).abs() < 0.001, "{n}");
        assert_eq!(basis, "from their own seeds");
        // One seed: the recipe's pooled spread, scaled by sqrt(1/1 + 1/3).
        let one = Spread::of(&[0.9143]);
        let (n, basis) = noise(one, cnn, Some(0.003)).unwrap();
        assert!((n - 2.0 * 0.003 * (4.0f64 / 3.0).sqrt()).abs() < 1e-15);
        assert!(basis.contains("0.30 points"), "{basis}");
        assert_eq!(noise(one, one, None), None);
    }
}
