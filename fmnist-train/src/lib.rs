//! Training of the fmnist models: configuration and presets, optimizers with saveable state,
//! learning-rate schedules, the loop with checkpoints and resume, and run directories.
pub mod bench;
pub mod config;
pub mod device;
pub mod loss;
pub mod memory;
pub mod optim;
pub mod run;
pub mod schedule;
pub mod trainer;

pub use config::{ConfigChange, OptimizerKind, Overrides, Preset, ScheduleKind, TrainConfig};
pub use device::{select_device, DeviceChoice};
pub use run::{
    best_run, find_runs, EpochRecord, RunConfig, RunDir, RunState, RunStatus, RunSummary,
};
pub use trainer::{continue_run, prepare, resume, train, train_step, RunOptions, Step};
