//! The names of the files evaluation writes, shared by the code that writes them and the
//! report that links them.

/// A plot: the stem of its file (`STEM.png`, and `STEM.svg` for the vector ones), its
/// caption in the report and the line under it.
#[derive(Debug, Clone, Copy)]
pub struct Plot {
    pub stem: &'static str,
    pub caption: &'static str,
    /// One line under the figure: what it shows and how to read it.
    pub note: &'static str,
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
    note: "Loss and accuracy after each epoch, train against validation; the dashed line marks the epoch kept (best on validation).",
};
pub const CONFUSION: Plot = Plot {
    stem: "confusion",
    caption: "confusion matrix",
    note: "Rows are the true classes, columns the answers; the diagonal holds the test images read right.",
};
pub const RELIABILITY: Plot = Plot {
    stem: "reliability",
    caption: "reliability diagram",
    note: "Each bar is the accuracy of the test images whose top probability falls in its bin (n of them); red is the gap to their mean confidence.",
};
pub const PROBABILITIES: Plot = Plot {
    stem: "probabilities",
    caption: "class probabilities",
    note: "The ten class probabilities for six test images that are the same on every run's page, then this run's most confident mistake.",
};
pub const MISCLASSIFIED: Plot = Plot {
    stem: "misclassified",
    caption: "misclassified",
    note: "The test images this run gets wrong most confidently: true class, answer and its confidence.",
};
pub const GRAD_CAM: Plot = Plot {
    stem: "gradcam",
    caption: "Grad-CAM of the most confident mistakes",
    note: "Where the evidence for the answer lies (Grad-CAM on the last convolution) in the most confident mistakes.",
};
pub const FILTERS: Plot = Plot {
    stem: "filters",
    caption: "first-layer filters",
    note: "The first convolution's kernels on one grey scale: black negative, mid-grey zero, white positive.",
};
pub const FEATURE_MAPS: Plot = Plot {
    stem: "feature_maps",
    caption: "feature maps",
    note: "The first convolution's activations for the first test image.",
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
    note: "Test accuracy of every model and recipe, mean ± std over seeds where several.",
};
pub const ACCURACY_VS_PARAMETERS: Plot = Plot {
    stem: "accuracy_vs_parameters",
    caption: "test accuracy against parameters",
    note: "Each model under each preset as it is; the sizes varied are on the family chart.",
};
pub const FAMILIES: Plot = Plot {
    stem: "families",
    caption: "test accuracy against parameters and against training time, by family (study recipe)",
    note: "The CNN, LSTM and MLP networks under their study recipe, by size and by training time; each line joins its family's front (nothing cheaper is as accurate).",
};
pub const VALIDATION_STUDY: Plot = Plot {
    stem: "validation_study",
    caption: "validation accuracy per epoch, study recipe",
    note: "Validation accuracy after each epoch, the first seed of each study recipe.",
};
pub const VALIDATION_BEST: Plot = Plot {
    stem: "validation_best",
    caption: "validation accuracy per epoch, best recipe",
    note: "Validation accuracy after each epoch, the first seed of each best recipe.",
};
pub const CNN_VS_LSTM: Plot = Plot {
    stem: "cnn_vs_lstm",
    caption: "the CNN and the LSTM on the same test images",
    note: "Test images both models get wrong, then those only the LSTM gets wrong, then those only the CNN does.",
};
pub const SAMPLES: Plot = Plot {
    stem: "samples",
    caption: "test images per class",
    note: "Eight test images of each class, the data every model reads.",
};
/// One figure of each kind on one sheet, for a first look.
pub const CONTACT_SHEET: Plot = Plot {
    stem: "figures",
    caption: "one figure of each kind",
    note: "One figure of each kind the evaluation draws, from the first seed of the study's CNN and from the results folder; each is in full on its page.",
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
