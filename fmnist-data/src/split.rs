//! Seeded, stratified selection of indices: the train/validation split and class-balanced subsets.
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::error::{DataError, Result};

/// Indices into the 60,000 training images: the part trained on and the part validated on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainValSplit {
    pub train: Vec<u32>,
    pub val: Vec<u32>,
}

/// The indices of each class, each list shuffled with `seed`.
fn shuffled_by_class(labels: &[u8], num_classes: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut by_class = vec![Vec::new(); num_classes];
    for (i, &l) in labels.iter().enumerate() {
        by_class[l as usize].push(i as u32);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for class in &mut by_class {
        class.shuffle(&mut rng);
    }
    by_class
}

/// Splits `labels` into train and validation indices, `val_frac` of every class going to
/// validation (rounded per class), chosen by `seed`. Both lists come back sorted.
pub fn stratified_split(
    labels: &[u8],
    num_classes: usize,
    val_frac: f64,
    seed: u64,
) -> Result<TrainValSplit> {
    if !(0.0..1.0).contains(&val_frac) {
        return Err(DataError::Split(format!(
            "validation fraction {val_frac} must be in [0, 1)"
        )));
    }
    let mut split = TrainValSplit {
        train: Vec::new(),
        val: Vec::new(),
    };
    for class in shuffled_by_class(labels, num_classes, seed) {
        let n_val = (class.len() as f64 * val_frac).round() as usize;
        split.val.extend_from_slice(&class[..n_val]);
        split.train.extend_from_slice(&class[n_val..]);
    }
    split.train.sort_unstable();
    split.val.sort_unstable();
    Ok(split)
}

/// A class-balanced sample of `count` indices out of `labels` (all of them if `count` is larger),
/// chosen by `seed`, sorted. Quick runs and tests train on such subsets.
pub fn stratified_subset(labels: &[u8], num_classes: usize, count: usize, seed: u64) -> Vec<u32> {
    if count >= labels.len() {
        return (0..labels.len() as u32).collect();
    }
    let frac = count as f64 / labels.len() as f64;
    let mut picked: Vec<u32> = shuffled_by_class(labels, num_classes, seed)
        .into_iter()
        .flat_map(|class| {
            let n = (class.len() as f64 * frac).round() as usize;
            class.into_iter().take(n)
        })
        .collect();
    picked.sort_unstable();
    picked
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Vec<u8> {
        // 1,000 labels, unbalanced on purpose: class c has 50 + 10 c images.
        let mut v = Vec::new();
        for c in 0..10u8 {
            v.extend(std::iter::repeat_n(c, 50 + 10 * c as usize));
        }
        v.reverse();
        v
    }

    #[test]
    fn split_sizes_stratification_and_disjointness() {
        let labels = labels();
        let s = stratified_split(&labels, 10, 0.2, 42).unwrap();
        assert_eq!(s.train.len() + s.val.len(), labels.len());
        let mut all: Vec<u32> = s.train.iter().chain(&s.val).copied().collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), labels.len(), "train and val overlap");
        for c in 0..10u8 {
            let total = labels.iter().filter(|&&l| l == c).count() as f64;
            let in_val = s.val.iter().filter(|&&i| labels[i as usize] == c).count() as f64;
            assert!(
                (in_val - 0.2 * total).abs() <= 1.0,
                "class {c}: {in_val} of {total}"
            );
        }
    }

    #[test]
    fn split_is_deterministic_per_seed_and_differs_between_seeds() {
        let labels = labels();
        let a = stratified_split(&labels, 10, 0.2, 42).unwrap();
        let b = stratified_split(&labels, 10, 0.2, 42).unwrap();
        let c = stratified_split(&labels, 10, 0.2, 43).unwrap();
        assert_eq!(a, b);
        assert_ne!(a.val, c.val);
    }

    #[test]
    fn bad_fraction_is_an_error() {
        let err = stratified_split(&[0, 1], 2, 1.0, 0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid split: validation fraction 1 must be in [0, 1)"
        );
    }

    #[test]
    fn subset_is_balanced() {
        let labels = [0u8, 1].repeat(500);
        let s = stratified_subset(&labels, 2, 100, 1);
        assert_eq!(s.len(), 100);
        assert_eq!(s.iter().filter(|&&i| labels[i as usize] == 0).count(), 50);
    }
}
