//! Scoring: logits of a whole image set in evaluation, loss and accuracy from logits, the
//! class of a row, probabilities, and the mean ± std over seeds.
use candle::{DType, Device};
use fmnist_data::{ImageSet, Loader, Normalizer};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::model::Model;

/// Images per evaluation chunk: bounds memory whatever the set's size.
pub const EVAL_CHUNK: usize = 1000;

/// Logits `[N x classes]` of every image of `set`, row-major, as the model scores in
/// evaluation ([`Model::eval_logits`]: no dropout, running statistics, TTA as configured).
pub fn logits(
    model: &Model,
    set: &ImageSet,
    normalizer: Normalizer,
    device: &Device,
) -> Result<Vec<f32>> {
    let loader = Loader::new(set, normalizer, EVAL_CHUNK, device);
    let mut out = Vec::with_capacity(set.len() * crate::NUM_CLASSES);
    for batch in loader.in_order() {
        let batch = batch?;
        let y = model.eval_logits(&batch.images)?.to_dtype(DType::F32)?;
        out.extend(y.flatten_all()?.to_vec1::<f32>()?);
    }
    Ok(out)
}

/// Mean cross-entropy and accuracy of a set.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Score {
    pub loss: f64,
    pub accuracy: f64,
}

/// Mean cross-entropy and accuracy of row-major `logits` against `labels`.
pub fn score(logits: &[f32], labels: &[u8]) -> Score {
    let k = logits.len() / labels.len().max(1);
    let (mut loss, mut correct) = (0.0f64, 0usize);
    for (row, &label) in logits.chunks_exact(k).zip(labels) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = max
            + row
                .iter()
                .map(|&z| (z as f64 - max).exp())
                .sum::<f64>()
                .ln();
        loss += lse - row[label as usize] as f64;
        if argmax(row) == label as usize {
            correct += 1;
        }
    }
    let n = labels.len().max(1) as f64;
    Score {
        loss: loss / n,
        accuracy: correct as f64 / n,
    }
}

/// Index of the largest value (the first on ties).
pub fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 {
                (i, v)
            } else {
                best
            }
        })
        .0
}

/// Softmax of each row of `classes` logits.
pub fn softmax_rows(logits: &[f32], classes: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(logits.len());
    for row in logits.chunks_exact(classes) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exps: Vec<f32> = row.iter().map(|&z| (z - max).exp()).collect();
        let sum: f32 = exps.iter().sum();
        out.extend(exps.iter().map(|e| e / sum));
    }
    out
}

/// Mean and sample standard deviation (n - 1); the deviation of one value is 0.
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = if values.is_empty() {
        0.0
    } else {
        values.iter().sum::<f64>() / n
    };
    if values.len() < 2 {
        return (mean, 0.0);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_by_hand() {
        // Two rows: one right with logits (ln 3, 0) -> p = 0.75; one wrong with (0, 0) -> p = 0.5, argmax 0.
        let logits = [3f32.ln(), 0.0, 0.0, 0.0];
        let s = score(&logits, &[0, 1]);
        assert_eq!(s.accuracy, 0.5);
        let expect = (-(0.75f64.ln()) - 0.5f64.ln()) / 2.0;
        assert!((s.loss - expect).abs() < 1e-6, "{} vs {expect}", s.loss);
    }

    #[test]
    fn argmax_takes_the_first_of_ties() {
        assert_eq!(argmax(&[0.1, 0.7, 0.7, 0.2]), 1);
        assert_eq!(argmax(&[-3.0]), 0);
    }

    #[test]
    fn softmax_is_stable_for_huge_logits() {
        let p = softmax_rows(&[0.0, 0.0, 1000.0, 0.0], 2);
        assert_eq!(p, vec![0.5, 0.5, 1.0, 0.0]);
    }

    #[test]
    fn mean_and_sample_std() {
        let (m, s) = mean_std(&[0.88, 0.89, 0.90]);
        assert!(
            (m - 0.89).abs() < 1e-12 && (s - 0.01).abs() < 1e-12,
            "{m} {s}"
        );
        assert_eq!(mean_std(&[0.5]), (0.5, 0.0));
    }
}
