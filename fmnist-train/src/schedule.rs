//! Learning-rate schedules: the rate of every batch from the epoch, the batch and the run's length.
use serde::{Deserialize, Serialize};

use fmnist_models::Score;

use crate::config::{ScheduleKind, TrainConfig};

/// The learning rate over a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    kind: ScheduleKind,
    base: f64,
    epochs: usize,
    steps_per_epoch: usize,
    warmup_epochs: usize,
    step_size: usize,
    gamma: f64,
}

/// The reduce-on-plateau schedule's memory (saved with the run state).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Plateau {
    pub factor: f64,
    /// The best monitored value so far, as a value to minimize: the validation loss, or minus
    /// the validation accuracy (none before the first epoch).
    #[serde(alias = "best_loss")]
    pub best: Option<f64>,
    pub bad_epochs: usize,
}

impl Default for Plateau {
    fn default() -> Self {
        Plateau {
            factor: 1.0,
            best: None,
            bad_epochs: 0,
        }
    }
}

impl Schedule {
    pub fn new(config: &TrainConfig, steps_per_epoch: usize) -> Self {
        Schedule {
            kind: config.schedule,
            base: config.lr,
            epochs: config.epochs,
            steps_per_epoch: steps_per_epoch.max(1),
            warmup_epochs: config.warmup_epochs,
            step_size: config.step_size.max(1),
            gamma: config.gamma,
        }
    }

    /// The rate of batch `batch` of epoch `epoch` (both from 0).
    pub fn lr(&self, epoch: usize, batch: usize, plateau: &Plateau) -> f64 {
        let total = (self.epochs * self.steps_per_epoch) as f64;
        let t = (epoch * self.steps_per_epoch + batch) as f64;
        let cosine = |from: f64, to: f64, frac: f64| {
            to + (from - to) * 0.5 * (1.0 + (std::f64::consts::PI * frac.clamp(0.0, 1.0)).cos())
        };
        match self.kind {
            ScheduleKind::None => self.base,
            ScheduleKind::Step => self.base * self.gamma.powi((epoch / self.step_size) as i32),
            ScheduleKind::Plateau | ScheduleKind::PlateauAcc => self.base * plateau.factor,
            ScheduleKind::Cosine => {
                let warm = (self.warmup_epochs * self.steps_per_epoch) as f64;
                if t < warm {
                    self.base * (t + 1.0) / warm
                } else {
                    cosine(self.base, 0.0, (t - warm) / (total - warm).max(1.0))
                }
            }
            ScheduleKind::OneCycle => {
                let up = 0.3 * total;
                if t < up {
                    cosine(self.base / 25.0, self.base, t / up)
                } else {
                    cosine(self.base, self.base / 1e4, (t - up) / (total - up).max(1.0))
                }
            }
        }
    }

    /// Feeds an epoch's validation score to reduce-on-plateau.
    pub fn observe(&self, plateau: &mut Plateau, val: &Score) {
        let value = match self.kind {
            ScheduleKind::Plateau => val.loss,
            ScheduleKind::PlateauAcc => -val.accuracy,
            _ => return,
        };
        if plateau.best.is_none_or(|best| value < best) {
            plateau.best = Some(value);
            plateau.bad_epochs = 0;
        } else {
            plateau.bad_epochs += 1;
            if plateau.bad_epochs >= self.step_size {
                plateau.factor *= self.gamma;
                plateau.bad_epochs = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Preset;
    use fmnist_models::ModelKind;

    fn schedule(kind: ScheduleKind) -> Schedule {
        let mut c = TrainConfig::preset(ModelKind::Cnn, Preset::Study);
        c.schedule = kind;
        c.epochs = 10;
        c.lr = 1.0;
        c.step_size = 3;
        c.gamma = 0.5;
        Schedule::new(&c, 100)
    }

    #[test]
    fn step_decays_every_step_size_epochs() {
        let s = schedule(ScheduleKind::Step);
        let p = Plateau::default();
        assert_eq!(
            [0, 2, 3, 6, 9].map(|e| s.lr(e, 0, &p)),
            [1.0, 1.0, 0.5, 0.25, 0.125]
        );
    }

    #[test]
    fn cosine_goes_from_base_to_zero() {
        let s = schedule(ScheduleKind::Cosine);
        let p = Plateau::default();
        assert_eq!(s.lr(0, 0, &p), 1.0);
        assert!((s.lr(5, 0, &p) - 0.5).abs() < 1e-12);
        assert!(s.lr(9, 99, &p) < 1e-3);
    }

    #[test]
    fn one_cycle_rises_to_base_then_falls_far_below() {
        let s = schedule(ScheduleKind::OneCycle);
        let p = Plateau::default();
        assert!((s.lr(0, 0, &p) - 0.04).abs() < 1e-12);
        assert!((s.lr(3, 0, &p) - 1.0).abs() < 1e-12);
        assert!(s.lr(9, 99, &p) < 1e-3);
    }

    #[test]
    fn plateau_decays_after_step_size_bad_epochs() {
        let s = schedule(ScheduleKind::Plateau);
        let mut p = Plateau::default();
        for loss in [1.0, 0.9, 0.95, 0.95, 0.95] {
            s.observe(&mut p, &val(loss, 0.5));
        }
        assert_eq!(s.lr(5, 0, &p), 0.5);
    }

    fn val(loss: f64, accuracy: f64) -> Score {
        Score { loss, accuracy }
    }

    #[test]
    fn plateau_acc_watches_accuracy_not_loss() {
        let s = schedule(ScheduleKind::PlateauAcc);
        let mut p = Plateau::default();
        // The loss rises all along, but the accuracy improves: no decay.
        for (i, acc) in [0.80, 0.81, 0.82, 0.83].into_iter().enumerate() {
            s.observe(&mut p, &val(1.0 + i as f64, acc));
        }
        assert_eq!(s.lr(4, 0, &p), 1.0);
        // Three epochs without a better accuracy (step size 3): halved once.
        for _ in 0..3 {
            s.observe(&mut p, &val(0.1, 0.83));
        }
        assert_eq!(s.lr(7, 0, &p), 0.5);
        assert_eq!(p.best, Some(-0.83));
    }

    #[test]
    fn a_saved_plateau_state_of_older_runs_still_reads() {
        let p: Plateau =
            serde_json::from_str(r#"{"factor": 0.5, "best_loss": 0.3, "bad_epochs": 1}"#).unwrap();
        assert_eq!((p.factor, p.best, p.bad_epochs), (0.5, Some(0.3), 1));
    }
}
