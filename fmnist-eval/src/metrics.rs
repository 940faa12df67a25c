//! Classification metrics as plain functions of labels and predictions: the confusion matrix,
//! per-class precision/recall/F1, their averages, the most-confused pairs, the garment
//! groups, and calibration.
//!
//! Conventions follow scikit-learn: a precision or recall with nothing to divide is 0 (never
//! NaN), and averages run over the classes present in the labels or the predictions.
use serde::{Deserialize, Serialize};

/// Counts of (true class, predicted class); rows are true classes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfusionMatrix {
    classes: usize,
    counts: Vec<u64>,
}

/// Precision, recall (the class's accuracy), F1 and support of one class.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: u64,
}

/// Averages of the per-class metrics.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Averages {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

/// A pair of classes the model mixes up: `count` images of `actual` predicted as `predicted`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confusion {
    pub actual: usize,
    pub predicted: usize,
    pub count: u64,
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

impl ConfusionMatrix {
    /// The matrix of `labels` against `predictions` (same length) over `classes` classes.
    pub fn new(classes: usize, labels: &[usize], predictions: &[usize]) -> Self {
        assert_eq!(labels.len(), predictions.len(), "one prediction per label");
        let mut counts = vec![0; classes * classes];
        for (&t, &p) in labels.iter().zip(predictions) {
            counts[t * classes + p] += 1;
        }
        ConfusionMatrix { classes, counts }
    }

    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Images of class `actual` predicted as `predicted`.
    pub fn get(&self, actual: usize, predicted: usize) -> u64 {
        self.counts[actual * self.classes + predicted]
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn accuracy(&self) -> f64 {
        let correct: u64 = (0..self.classes).map(|c| self.get(c, c)).sum();
        ratio(correct as f64, self.total() as f64)
    }

    /// Images of class `actual` (the row sum).
    pub fn support(&self, actual: usize) -> u64 {
        (0..self.classes).map(|p| self.get(actual, p)).sum()
    }

    /// Images predicted as `predicted` (the column sum).
    pub fn predicted(&self, predicted: usize) -> u64 {
        (0..self.classes).map(|t| self.get(t, predicted)).sum()
    }

    /// Row `actual` divided by its sum (zeros for an empty row).
    pub fn normalized_row(&self, actual: usize) -> Vec<f64> {
        let s = self.support(actual) as f64;
        (0..self.classes)
            .map(|p| ratio(self.get(actual, p) as f64, s))
            .collect()
    }

    /// Precision, recall, F1 and support of every class.
    pub fn per_class(&self) -> Vec<ClassMetrics> {
        (0..self.classes)
            .map(|c| {
                let tp = self.get(c, c) as f64;
                let precision = ratio(tp, self.predicted(c) as f64);
                let recall = ratio(tp, self.support(c) as f64);
                ClassMetrics {
                    precision,
                    recall,
                    f1: ratio(2.0 * precision * recall, precision + recall),
                    support: self.support(c),
                }
            })
            .collect()
    }

    /// Classes that occur in the labels or the predictions.
    fn present(&self) -> Vec<usize> {
        (0..self.classes)
            .filter(|&c| self.support(c) > 0 || self.predicted(c) > 0)
            .collect()
    }

    /// Unweighted mean over the present classes.
    pub fn macro_average(&self) -> Averages {
        let per = self.per_class();
        let present = self.present();
        let n = present.len() as f64;
        let mean =
            |f: fn(&ClassMetrics) -> f64| ratio(present.iter().map(|&c| f(&per[c])).sum(), n);
        Averages {
            precision: mean(|m| m.precision),
            recall: mean(|m| m.recall),
            f1: mean(|m| m.f1),
        }
    }

    /// Mean weighted by support.
    pub fn weighted_average(&self) -> Averages {
        let per = self.per_class();
        let total = self.total() as f64;
        let mean = |f: fn(&ClassMetrics) -> f64| {
            ratio(per.iter().map(|m| f(m) * m.support as f64).sum(), total)
        };
        Averages {
            precision: mean(|m| m.precision),
            recall: mean(|m| m.recall),
            f1: mean(|m| m.f1),
        }
    }

    /// The `n` largest off-diagonal cells, largest first (ties: lower actual, then predicted, first).
    pub fn most_confused(&self, n: usize) -> Vec<Confusion> {
        let mut cells: Vec<Confusion> = (0..self.classes)
            .flat_map(|t| (0..self.classes).map(move |p| (t, p)))
            .filter(|&(t, p)| t != p && self.get(t, p) > 0)
            .map(|(actual, predicted)| Confusion {
                actual,
                predicted,
                count: self.get(actual, predicted),
            })
            .collect();
        cells.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then((a.actual, a.predicted).cmp(&(b.actual, b.predicted)))
        });
        cells.truncate(n);
        cells
    }
}

/// The garment groups of Fashion-MNIST's classes, by label: tops (T-shirt/top, Pullover,
/// Dress, Coat, Shirt), bottoms (Trouser), footwear (Sandal, Sneaker, Ankle boot), bags (Bag).
pub const GARMENT_GROUPS: [(&str, &[usize]); 4] = [
    ("tops", &[0, 2, 3, 4, 6]),
    ("bottoms", &[1]),
    ("footwear", &[5, 7, 9]),
    ("bags", &[8]),
];

/// The confusion matrix folded into the garment groups.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupMetrics {
    pub groups: Vec<String>,
    /// Counts of (true group, predicted group); rows are true groups.
    pub confusion: Vec<Vec<u64>>,
    /// The share of images whose predicted class is in their true class's group.
    pub accuracy: f64,
    /// The share of the class-level mistakes that stay inside their group (0 without mistakes).
    pub errors_within_group: f64,
}

impl GroupMetrics {
    /// Folds `m` (over Fashion-MNIST's ten classes) into [`GARMENT_GROUPS`].
    pub fn garments(m: &ConfusionMatrix) -> Self {
        let group_of = |class: usize| {
            GARMENT_GROUPS
                .iter()
                .position(|(_, members)| members.contains(&class))
                .expect("every Fashion-MNIST class has a group")
        };
        let n = GARMENT_GROUPS.len();
        let mut confusion = vec![vec![0u64; n]; n];
        let mut within = 0u64;
        for t in 0..m.classes() {
            for p in 0..m.classes() {
                let (gt, gp) = (group_of(t), group_of(p));
                confusion[gt][gp] += m.get(t, p);
                if t != p && gt == gp {
                    within += m.get(t, p);
                }
            }
        }
        let total = m.total() as f64;
        let right_group: u64 = (0..n).map(|g| confusion[g][g]).sum();
        let correct: u64 = (0..m.classes()).map(|c| m.get(c, c)).sum();
        let mistakes = m.total() - correct;
        GroupMetrics {
            groups: GARMENT_GROUPS.iter().map(|(g, _)| g.to_string()).collect(),
            confusion,
            accuracy: ratio(right_group as f64, total),
            errors_within_group: ratio(within as f64, mistakes as f64),
        }
    }
}

/// One bin of a reliability diagram: images whose confidence fell in `[lower, upper)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ReliabilityBin {
    pub lower: f64,
    pub upper: f64,
    pub count: usize,
    pub mean_confidence: f64,
    pub accuracy: f64,
}

/// Expected calibration error and its bins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    pub ece: f64,
    pub bins: Vec<ReliabilityBin>,
}

/// Calibration of `probs` (row-major, `classes` columns) against `labels`, with `bins`
/// equal-width confidence bins (confidence = the largest probability; 1.0 falls in the last bin).
pub fn calibration(probs: &[f32], classes: usize, labels: &[usize], bins: usize) -> Calibration {
    let mut count = vec![0usize; bins];
    let mut conf = vec![0f64; bins];
    let mut hits = vec![0usize; bins];
    for (row, &label) in probs.chunks_exact(classes).zip(labels) {
        let (pred, &p) =
            row.iter().enumerate().fold(
                (0, &f32::NEG_INFINITY),
                |b, (i, v)| if v > b.1 { (i, v) } else { b },
            );
        let b = ((p as f64 * bins as f64) as usize).min(bins - 1);
        count[b] += 1;
        conf[b] += p as f64;
        hits[b] += usize::from(pred == label);
    }
    let n = labels.len().max(1) as f64;
    let bins: Vec<ReliabilityBin> = (0..bins)
        .map(|b| ReliabilityBin {
            lower: b as f64 / bins as f64,
            upper: (b + 1) as f64 / bins as f64,
            count: count[b],
            mean_confidence: ratio(conf[b], count[b] as f64),
            accuracy: ratio(hits[b] as f64, count[b] as f64),
        })
        .collect();
    let ece = bins
        .iter()
        .map(|b| b.count as f64 / n * (b.accuracy - b.mean_confidence).abs())
        .sum();
    Calibration { ece, bins }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    /// Three classes; class 2 is never predicted.
    ///   labels:      0 0 0 1 1 2 2
    ///   predictions: 0 0 1 1 1 0 1
    fn example() -> ConfusionMatrix {
        ConfusionMatrix::new(3, &[0, 0, 0, 1, 1, 2, 2], &[0, 0, 1, 1, 1, 0, 1])
    }

    #[test]
    fn counts_and_accuracy() {
        let m = example();
        assert_eq!(
            (
                m.get(0, 0),
                m.get(0, 1),
                m.get(2, 0),
                m.get(2, 1),
                m.get(2, 2)
            ),
            (2, 1, 1, 1, 0)
        );
        assert_eq!(m.total(), 7);
        assert!(close(m.accuracy(), 4.0 / 7.0));
        assert_eq!(m.normalized_row(0), vec![2.0 / 3.0, 1.0 / 3.0, 0.0]);
    }

    #[test]
    fn per_class_by_hand_with_a_class_never_predicted() {
        let per = example().per_class();
        // class 0: tp 2, predicted 3, support 3 -> p 2/3, r 2/3, f1 2/3
        assert!(
            close(per[0].precision, 2.0 / 3.0)
                && close(per[0].recall, 2.0 / 3.0)
                && close(per[0].f1, 2.0 / 3.0)
        );
        // class 1: tp 2, predicted 4, support 2 -> p 1/2, r 1, f1 2/3
        assert!(
            close(per[1].precision, 0.5)
                && close(per[1].recall, 1.0)
                && close(per[1].f1, 2.0 / 3.0)
        );
        // class 2: never predicted -> precision 0 (defined), recall 0, f1 0
        assert_eq!(
            (per[2].precision, per[2].recall, per[2].f1, per[2].support),
            (0.0, 0.0, 0.0, 2)
        );
    }

    #[test]
    fn averages_by_hand() {
        let m = example();
        let macro_ = m.macro_average();
        assert!(close(macro_.precision, (2.0 / 3.0 + 0.5 + 0.0) / 3.0));
        assert!(close(macro_.recall, (2.0 / 3.0 + 1.0) / 3.0));
        let w = m.weighted_average();
        assert!(close(w.recall, (3.0 * 2.0 / 3.0 + 2.0 * 1.0) / 7.0)); // = accuracy
        assert!(close(w.f1, (3.0 * 2.0 / 3.0 + 2.0 * 2.0 / 3.0) / 7.0));
    }

    #[test]
    fn a_class_absent_from_labels_and_predictions_is_left_out_of_macro_averages() {
        let m = ConfusionMatrix::new(4, &[0, 1, 1], &[0, 1, 0]);
        let per = m.per_class();
        assert_eq!(
            (per[3].precision, per[3].recall, per[3].f1, per[3].support),
            (0.0, 0.0, 0.0, 0)
        );
        let a = m.macro_average();
        assert!(close(a.recall, (1.0 + 0.5) / 2.0), "{}", a.recall);
        assert!(!a.precision.is_nan() && !a.f1.is_nan());
    }

    #[test]
    fn most_confused_pairs_sorted() {
        let m = ConfusionMatrix::new(3, &[0, 0, 0, 2, 2, 1], &[1, 1, 2, 0, 0, 1]);
        let top = m.most_confused(2);
        assert_eq!(
            top,
            vec![
                Confusion {
                    actual: 0,
                    predicted: 1,
                    count: 2
                },
                Confusion {
                    actual: 2,
                    predicted: 0,
                    count: 2
                },
            ]
        );
    }

    #[test]
    fn garment_groups_by_hand() {
        // Shirt (6) as T-shirt (0): inside tops. Sneaker (7) as Sandal (5): inside footwear.
        // Coat (4) as Bag (8): across groups. Trouser (1) right, Bag (8) right.
        let labels = [6, 6, 7, 4, 1, 8];
        let predicted = [0, 6, 5, 8, 1, 8];
        let g = GroupMetrics::garments(&ConfusionMatrix::new(10, &labels, &predicted));
        assert_eq!(g.groups, ["tops", "bottoms", "footwear", "bags"]);
        assert_eq!(
            g.confusion,
            vec![
                vec![2, 0, 0, 1],
                vec![0, 1, 0, 0],
                vec![0, 0, 1, 0],
                vec![0, 0, 0, 1]
            ]
        );
        assert!(close(g.accuracy, 5.0 / 6.0));
        assert!(close(g.errors_within_group, 2.0 / 3.0));
        let perfect = GroupMetrics::garments(&ConfusionMatrix::new(10, &[3, 9], &[3, 9]));
        assert_eq!((perfect.accuracy, perfect.errors_within_group), (1.0, 0.0));
    }

    #[test]
    fn every_class_is_in_exactly_one_garment_group() {
        let mut all: Vec<usize> = GARMENT_GROUPS
            .iter()
            .flat_map(|(_, m)| m.to_vec())
            .collect();
        all.sort();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn calibration_by_hand() {
        // Two classes, four images, 2 bins [0, .5), [.5, 1].
        // confidences .6 (right), .8 (wrong), .9 (right), 1.0 (right) -> all in bin 1:
        // mean confidence .825, accuracy .75 -> ECE .075
        let probs = [0.6f32, 0.4, 0.2, 0.8, 0.9, 0.1, 0.0, 1.0];
        let c = calibration(&probs, 2, &[0, 0, 0, 1], 2);
        assert_eq!(c.bins[0].count, 0);
        assert_eq!(c.bins[1].count, 4);
        assert!((c.bins[1].mean_confidence - 0.825).abs() < 1e-6);
        assert!((c.ece - 0.075).abs() < 1e-6, "{}", c.ece);
    }
}
