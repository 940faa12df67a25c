//! The names of the files evaluation writes, shared by the code that writes them and the
//! report that links them.

/// A plot: the stem of its file (`STEM.png`, and `STEM.svg` for the vector ones) and its
/// caption in the report.
#[derive(Debug, Clone, Copy)]
pub struct Plot {
    pub stem: &'static str,
    pub caption: &'static str,
}

impl Plot {
    /// The PNG's file name.
    pub fn png(&self) -> String {
        format!("{}.png", self.stem)
    }
}

/// Per run.
pub const CURVES: Plot = Plot {
    stem: "curves",
    caption: "training curves",
};
pub const CONFUSION: Plot = Plot {
    stem: "confusion",
    caption: "confusion matrix",
};
pub const RELIABILITY: Plot = Plot {
    stem: "reliability",
    caption: "reliability diagram",
};
pub const PROBABILITIES: Plot = Plot {
    stem: "probabilities",
    caption: "class probabilities",
};
pub const MISCLASSIFIED: Plot = Plot {
    stem: "misclassified",
    caption: "misclassified",
};
pub const GRAD_CAM: Plot = Plot {
    stem: "gradcam",
    caption: "Grad-CAM of the most confident mistakes",
};
pub const FILTERS: Plot = Plot {
    stem: "filters",
    caption: "first-layer filters",
};
pub const FEATURE_MAPS: Plot = Plot {
    stem: "feature_maps",
    caption: "feature maps",
};
/// The plots of a run, in the order the report shows them after its tables.
pub const RUN_PLOTS_AFTER_TABLES: [Plot; 7] = [
    CONFUSION,
    RELIABILITY,
    PROBABILITIES,
    MISCLASSIFIED,
    GRAD_CAM,
    FILTERS,
    FEATURE_MAPS,
];

/// Across runs, in the results folder.
pub const COMPARISON: Plot = Plot {
    stem: "comparison",
    caption: "test accuracy per run",
};
pub const ACCURACY_VS_PARAMETERS: Plot = Plot {
    stem: "accuracy_vs_parameters",
    caption: "test accuracy against parameters",
};
pub const FAMILIES: Plot = Plot {
    stem: "families",
    caption: "test accuracy against parameters and against training time, by family (study recipe)",
};
pub const VALIDATION_STUDY: Plot = Plot {
    stem: "validation_study",
    caption: "validation accuracy per epoch, study recipe",
};
pub const VALIDATION_BEST: Plot = Plot {
    stem: "validation_best",
    caption: "validation accuracy per epoch, best recipe",
};
pub const CNN_VS_LSTM: Plot = Plot {
    stem: "cnn_vs_lstm",
    caption: "the CNN and the LSTM on the same test images",
};
pub const SAMPLES: Plot = Plot {
    stem: "samples",
    caption: "test images per class",
};
pub const SUMMARY_CSV: &str = "summary.csv";
/// The report of all runs in the results folder, and each run's own page in its folder.
pub const REPORT: &str = "REPORT.md";
/// What an ensemble folder is made of and how it scores.
pub const ENSEMBLE: &str = "ensemble.json";

/// Per run: tables and predictions.
pub const METRICS: &str = "metrics.json";
pub const PER_CLASS_CSV: &str = "per_class.csv";
pub const CONFUSION_CSV: &str = "confusion.csv";
pub const CONFUSION_NORMALIZED_CSV: &str = "confusion_normalized.csv";
pub const PREDICTIONS_CSV: &str = "predictions.csv";
pub const GAP_CSV: &str = "gap.csv";
