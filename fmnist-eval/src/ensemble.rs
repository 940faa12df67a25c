//! Ensembles of trained runs: the weighted mean of the members' class probabilities (each
//! member with its own normalization and test-time augmentation), optionally with the members
//! and their weights chosen by ensemble selection (Caruana et al., 2004) on the shared
//! validation images, never on the test set.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle::Device;
use fmnist_data::FashionMnist;
use fmnist_models::scoring::{score, softmax_rows};
use fmnist_models::{Classifier, Score};
use fmnist_train::{RunConfig, RunDir};
use serde::{Deserialize, Serialize};

use crate::evaluate::{check_classes, Scores};

/// One candidate run: its probabilities on each part of the shared split.
pub struct Member {
    pub name: String,
    pub config: RunConfig,
    pub train_probs: Vec<f32>,
    pub val_probs: Vec<f32>,
    pub test_probs: Vec<f32>,
}

/// A member as `ensemble.json` records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberRecord {
    pub run: String,
    pub model: String,
    /// How many times selection picked the run (its weight is `picks` over the ensemble's
    /// total; 0: not a member). Each run given without selection counts once.
    #[serde(default)]
    pub picks: usize,
    pub val_acc: f64,
    pub test_acc: f64,
}

/// `ensemble.json`: what the ensemble is made of, how it was chosen, and how it scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnsembleRecord {
    pub name: String,
    /// The members averaged, in the order they were first chosen.
    pub members: Vec<MemberRecord>,
    /// Every run offered (the members are among them).
    pub candidates: Vec<MemberRecord>,
    /// `validation` (ensemble selection on validation accuracy) or `given`.
    pub chosen_by: String,
    pub val_acc: f64,
    pub test_acc: f64,
    pub test_loss: f64,
    pub macro_f1: f64,
    pub ece: f64,
    pub group_acc: f64,
    pub errors_within_group: f64,
}

/// The split that fixes a run's validation images: split seed, validation fraction and subset.
fn split_key(c: &RunConfig) -> (u64, u64, Option<usize>) {
    (
        c.train.split_seed(),
        c.train.val_frac.to_bits(),
        c.train.subset,
    )
}

/// The runs an ensemble is drawn from, scored on their shared split and the test set.
pub struct Candidates {
    pub members: Vec<Member>,
    class_names: Vec<String>,
    train_labels: Vec<u8>,
    val_labels: Vec<u8>,
    test_labels: Vec<u8>,
}

impl Candidates {
    /// Loads each run and its probabilities on the train, validation and test images. The
    /// runs must hold out the same validation images (same split seed, fraction and subset): only
    /// then is a choice on validation free of images some member trained on.
    pub fn load(
        runs: &[(String, PathBuf)],
        data: &FashionMnist,
        device: &Device,
    ) -> anyhow::Result<Self> {
        let mut members: Vec<Member> = Vec::new();
        let mut split = None;
        for (name, dir) in runs {
            eprintln!("scoring {name} ...");
            let config = RunDir::new(dir).read_config()?;
            check_classes(dir, config.class_names.len(), data)?;
            if let Some(first) = members.first() {
                if split_key(&first.config) != split_key(&config) {
                    bail!(
                        "{} and {} hold out different validation images (split seed {} vs {}, or another validation fraction or subset): an ensemble needs one validation set none of its members trained on; train them with one --split-seed",
                        first.name,
                        name,
                        first.config.train.split_seed(),
                        config.train.split_seed()
                    );
                }
            }
            let classifier = Classifier::load(dir, device)?;
            let prepared = fmnist_train::prepare(&config.train, data)
                .with_context(|| format!("{}: rebuilding the split", dir.display()))?;
            let k = config.class_names.len();
            let probs =
                |set| -> anyhow::Result<Vec<f32>> { Ok(softmax_rows(&classifier.logits(set)?, k)) };
            members.push(Member {
                name: name.clone(),
                train_probs: probs(&prepared.train)?,
                val_probs: probs(&prepared.val)?,
                test_probs: probs(&data.test)?,
                config,
            });
            split.get_or_insert(prepared);
        }
        let (Some(split), true) = (split, members.len() >= 2) else {
            bail!("an ensemble needs at least two runs");
        };
        Ok(Candidates {
            class_names: members[0].config.class_names.clone(),
            members,
            train_labels: split.train.labels,
            val_labels: split.val.labels,
            test_labels: data.test.labels.clone(),
        })
    }

    /// The picks of ensemble selection on validation accuracy ([`choose_on_validation`]).
    pub fn choose_on_validation(&self) -> Vec<usize> {
        let val: Vec<&[f32]> = self
            .members
            .iter()
            .map(|m| m.val_probs.as_slice())
            .collect();
        let steps = selection_steps(val.len());
        choose_on_validation(&val, &self.val_labels, steps)
    }

    /// The record of candidate `i`, scored alone, picked `picks` times.
    fn record(&self, i: usize, picks: usize) -> MemberRecord {
        let m = &self.members[i];
        MemberRecord {
            run: m.name.clone(),
            model: m.config.train.model.kind.to_string(),
            picks,
            val_acc: score(&log_probs(&m.val_probs), &self.val_labels).accuracy,
            test_acc: score(&log_probs(&m.test_probs), &self.test_labels).accuracy,
        }
    }

    /// The ensemble `name` of the candidates `chosen` (indices, a candidate once per pick:
    /// its weight; `chosen_by` says how they were picked): its record and its scores.
    pub fn ensemble(
        &self,
        name: &str,
        chosen: &[usize],
        chosen_by: &str,
    ) -> (EnsembleRecord, Scores) {
        let part = |pick: fn(&Member) -> &[f32]| {
            let probs: Vec<&[f32]> = chosen.iter().map(|&i| pick(&self.members[i])).collect();
            log_probs(&mean(&probs))
        };
        let scores = Scores::new(
            self.class_names.clone(),
            score(&part(|m| &m.train_probs), &self.train_labels),
            score(&part(|m| &m.val_probs), &self.val_labels),
            &part(|m| &m.test_probs),
            &self.test_labels,
        );
        let picks = |i: usize| chosen.iter().filter(|&&c| c == i).count();
        let mut members: Vec<usize> = Vec::new();
        for &i in chosen {
            if !members.contains(&i) {
                members.push(i);
            }
        }
        let record = EnsembleRecord {
            name: name.to_string(),
            members: members.iter().map(|&i| self.record(i, picks(i))).collect(),
            candidates: (0..self.members.len())
                .map(|i| self.record(i, picks(i)))
                .collect(),
            chosen_by: chosen_by.to_string(),
            val_acc: scores.gap.val.accuracy,
            test_acc: scores.gap.test.accuracy,
            test_loss: scores.gap.test.loss,
            macro_f1: scores.confusion.macro_average().f1,
            ece: scores.calibration.ece,
            group_acc: scores.groups.accuracy,
            errors_within_group: scores.groups.errors_within_group,
        };
        (record, scores)
    }
}

/// The element-wise mean of `probs`.
fn mean(probs: &[&[f32]]) -> Vec<f32> {
    let n = probs.len() as f32;
    (0..probs[0].len())
        .map(|i| probs.iter().map(|p| p[i]).sum::<f32>() / n)
        .collect()
}

/// Log-probabilities: scored as logits, they give back the probabilities and the loss.
fn log_probs(probs: &[f32]) -> Vec<f32> {
    probs.iter().map(|p| p.max(1e-12).ln()).collect()
}

/// Ensemble selection with replacement (Caruana et al., 2004, "Ensemble selection from
/// libraries of models"): start from the candidate best on validation, then add, one pick at
/// a time, the candidate (a member again, or a new one) whose addition scores best on
/// validation, for `steps` picks, even through picks that do not raise the score; the
/// ensemble is the best prefix of that path (the shortest among equals). Picking a member
/// again raises its weight, so the path can reach mixtures an equal-weight average cannot.
/// Scores compare by accuracy, then by a loss lower by more than [`LOSS_TOLERANCE`] (the same
/// mixture reached in two ways differs only in rounding), then the earlier candidate wins.
/// Returns the picks, a candidate once per pick, in the order picked.
pub fn choose_on_validation(val_probs: &[&[f32]], val_labels: &[u8], steps: usize) -> Vec<usize> {
    let better = |a: &Score, b: &Score| {
        a.accuracy > b.accuracy || (a.accuracy == b.accuracy && a.loss < b.loss - LOSS_TOLERANCE)
    };
    let mut sum = vec![0f32; val_probs[0].len()];
    let mut picks: Vec<usize> = Vec::new();
    let mut best: Option<(usize, Score)> = None;
    for _ in 0..steps {
        let n = (picks.len() + 1) as f32;
        let mut step: Option<(usize, Score)> = None;
        for (i, probs) in val_probs.iter().enumerate() {
            let trial: Vec<f32> = sum.iter().zip(*probs).map(|(s, p)| (s + p) / n).collect();
            let s = score(&log_probs(&trial), val_labels);
            if step.as_ref().is_none_or(|(_, b)| better(&s, b)) {
                step = Some((i, s));
            }
        }
        let Some((i, s)) = step else { break };
        sum.iter_mut().zip(val_probs[i]).for_each(|(s, p)| *s += p);
        picks.push(i);
        if best.as_ref().is_none_or(|(_, b)| better(&s, b)) {
            best = Some((picks.len(), s));
        }
    }
    picks.truncate(best.map_or(0, |(len, _)| len));
    picks
}

/// The least drop in validation loss that makes one ensemble better than another of the same
/// accuracy.
const LOSS_TOLERANCE: f64 = 1e-6;

/// How many picks ensemble selection makes among `candidates` runs: twice their number, so
/// that each could be picked twice, and at least 10.
pub fn selection_steps(candidates: usize) -> usize {
    (2 * candidates).max(10)
}

/// Reads every `ensemble.json` in the folders directly under `results`, sorted by name.
pub fn find_ensembles(results: &Path) -> anyhow::Result<Vec<EnsembleRecord>> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(results) else {
        return Ok(found);
    };
    for entry in entries {
        let file = entry?.path().join(crate::files::ENSEMBLE);
        if file.is_file() {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            found.push(serde_json::from_str(&text).with_context(|| format!("{}", file.display()))?);
        }
    }
    found.sort_by(|a: &EnsembleRecord, b| a.name.cmp(&b.name));
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_by_hand() {
        // Three images of classes 0, 1, 0; two classes. Member a is right on images 0 and 1,
        // b on images 0 and 2, c only on image 1.
        let a = [0.9f32, 0.1, 0.4, 0.6, 0.4, 0.6];
        let b = [0.6f32, 0.4, 0.65, 0.35, 0.8, 0.2];
        let c = [0.1f32, 0.9, 0.05, 0.95, 0.1, 0.9];
        let labels = [0u8, 1, 0];
        // Alone: a 2/3 (loss 0.511), b 2/3 (loss 0.595), c 1/3: a first. a+b: image 1 at
        // (0.525, 0.475) is wrong, 2/3 with loss 0.514; a+c: image 2 wrong, 2/3 with loss
        // 0.778; a again: a's score. So a again, then, after a+a, 2a+b gets image 0 at 0.8,
        // image 1 at (0.483, 0.517) and image 2 at 0.533: all three right.
        assert_eq!(choose_on_validation(&[&a, &b, &c], &labels, 1), vec![0]);
        assert_eq!(choose_on_validation(&[&a, &b, &c], &labels, 2), vec![0]);
        assert_eq!(
            choose_on_validation(&[&a, &b, &c], &labels, 3),
            vec![0, 0, 1]
        );
        // d is right on all three: chosen first; b+d is right on all three too but with a
        // higher loss (0.372 against 0.228), so every later pick is d again and the best
        // prefix is d alone.
        let d = [0.8f32, 0.2, 0.1, 0.9, 0.7, 0.3];
        assert_eq!(choose_on_validation(&[&b, &d], &labels, 10), vec![1]);
        let e = [0.7f32, 0.3, 0.45, 0.55, 0.45, 0.55];
        // b alone 2/3 (loss 0.595), e alone 2/3 (loss 0.585): e first. e+b: 2/3 again, but
        // with loss 0.567: an equal accuracy at a lower loss counts, so b joins.
        assert_eq!(choose_on_validation(&[&b, &e], &labels, 2), vec![1, 0]);
    }

    #[test]
    fn weights_follow_the_picks() {
        // Two classes, every image of class 0. a is right on images 0 and 1 (0.9) and wrong on
        // 2 (0.3); b only on image 2 (1.0). Equal weights get images 0 and 1 wrong (0.45);
        // a at 2/3 and b at 1/3 get all three: 0.6, 0.6 and 0.533.
        let a = [0.9f32, 0.1, 0.9, 0.1, 0.3, 0.7];
        let b = [0.0f32, 1.0, 0.0, 1.0, 1.0, 0.0];
        let labels = [0u8, 0, 0];
        let picks = choose_on_validation(&[&a, &b], &labels, 3);
        assert_eq!(picks, vec![0, 0, 1]);
        let chosen: Vec<&[f32]> = picks.iter().map(|&i| [&a[..], &b[..]][i]).collect();
        let m = mean(&chosen);
        for (got, want) in m.iter().step_by(2).zip([0.6f32, 0.6, 1.6 / 3.0]) {
            assert!((got - want).abs() < 1e-6, "{m:?}");
        }
        assert_eq!(score(&log_probs(&m), &labels).accuracy, 1.0);
        assert_eq!(selection_steps(3), 10);
        assert_eq!(selection_steps(12), 24);
    }

    #[test]
    fn averaging_is_the_mean_of_the_probabilities() {
        let m = mean(&[&[0.2, 0.8], &[0.6, 0.4]]);
        assert!((m[0] - 0.4).abs() < 1e-6 && (m[1] - 0.6).abs() < 1e-6);
        let back = softmax_rows(&log_probs(&m), 2);
        assert!((back[0] - 0.4).abs() < 1e-6);
    }
}
