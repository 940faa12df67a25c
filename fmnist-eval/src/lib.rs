//! Evaluation of fmnist runs: metrics on the test set, the train/val/test gap, tables, plots,
//! a Markdown report across runs, and classification of a person's own images.
pub mod claims;
pub mod ensemble;
pub mod evaluate;
pub mod files;
pub mod findings;
mod glyph_text;
pub mod inputs;
pub mod metrics;
pub mod outputs;
pub mod pipeline;
pub mod plots;
pub mod predict;
pub mod report;
pub mod results_outputs;
pub mod similar;
pub mod table;

pub use evaluate::{evaluate_run, reload_run, Evaluation, Gap, Scores};
pub use metrics::{calibration, Calibration, ConfusionMatrix};
pub use table::Table;
