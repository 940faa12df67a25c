//! Adam, AdamW and momentum SGD with state that can be saved and restored (candle-nn's
//! optimizers keep their moments private, so an interrupted run could not resume exactly).
use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context};
use candle::backprop::GradStore;
use candle::{Tensor, Var};

use crate::config::OptimizerKind;

/// One parameter and its optimizer state.
struct Slot {
    name: String,
    var: Var,
    /// Weight decay applies to weights (rank >= 2), not to biases or BatchNorm scales.
    decay: bool,
    /// First moment (Adam) or velocity (SGD).
    m: Tensor,
    /// Second moment (Adam only).
    v: Tensor,
}

/// Hyper-parameters of the optimizer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OptimizerConfig {
    pub kind: OptimizerKind,
    pub lr: f64,
    pub weight_decay: f64,
    pub momentum: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

/// The optimizer of a run: updates the parameters from their gradients.
pub struct Optimizer {
    config: OptimizerConfig,
    slots: Vec<Slot>,
    step: u64,
}

impl Optimizer {
    /// An optimizer over `params` (name, variable), with zeroed state.
    pub fn new(config: OptimizerConfig, params: Vec<(String, Var)>) -> candle::Result<Self> {
        let slots = params
            .into_iter()
            .map(|(name, var)| {
                Ok(Slot {
                    decay: var.rank() >= 2,
                    m: var.zeros_like()?,
                    v: var.zeros_like()?,
                    name,
                    var,
                })
            })
            .collect::<candle::Result<_>>()?;
        Ok(Optimizer {
            config,
            slots,
            step: 0,
        })
    }

    pub fn lr(&self) -> f64 {
        self.config.lr
    }

    pub fn set_lr(&mut self, lr: f64) {
        self.config.lr = lr;
    }

    /// Number of updates done.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// One update from `grads`; parameters without a gradient are left alone.
    pub fn step(&mut self, grads: &GradStore) -> candle::Result<()> {
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        for slot in &mut self.slots {
            let Some(g) = grads.get(slot.var.as_tensor()) else {
                continue;
            };
            // A variable's gradient still references the step's forward graph: detach it, and
            // the new state below, so no step's graph outlives the step.
            let g = g.detach();
            let theta = slot.var.as_tensor();
            let wd = if slot.decay { c.weight_decay } else { 0.0 };
            match c.kind {
                OptimizerKind::Adam | OptimizerKind::Adamw => {
                    let g = if c.kind == OptimizerKind::Adam && wd > 0.0 {
                        (g + theta.affine(wd, 0.0)?)?
                    } else {
                        g
                    };
                    let m = ((&slot.m * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
                    let v = ((&slot.v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
                    let bc1 = 1.0 - c.beta1.powi(t);
                    let bc2 = 1.0 - c.beta2.powi(t);
                    let denom = ((v.sqrt()? / bc2.sqrt())? + c.eps)?;
                    let update = ((&m / denom)? * (c.lr / bc1))?;
                    let base = if c.kind == OptimizerKind::Adamw && wd > 0.0 {
                        theta.affine(1.0 - c.lr * wd, 0.0)?
                    } else {
                        theta.clone()
                    };
                    slot.var.set(&(base - update)?)?;
                    slot.m = m.detach();
                    slot.v = v.detach();
                }
                OptimizerKind::Sgd => {
                    let g = if wd > 0.0 {
                        (g + theta.affine(wd, 0.0)?)?
                    } else {
                        g
                    };
                    let velocity = ((&slot.m * c.momentum)? + g)?.detach();
                    slot.var.set(&(theta - (&velocity * c.lr)?)?)?;
                    slot.m = velocity;
                }
            }
        }
        Ok(())
    }

    /// Writes the moments to `path` (safetensors); the step count travels in the run state.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let mut tensors = HashMap::new();
        for s in &self.slots {
            tensors.insert(format!("m/{}", s.name), s.m.clone());
            tensors.insert(format!("v/{}", s.name), s.v.clone());
        }
        let tmp = path.with_extension("safetensors.tmp");
        candle::safetensors::save(&tensors, &tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
    }

    /// Restores moments saved by [`Optimizer::save`] and the step count.
    pub fn load(&mut self, path: &Path, step: u64) -> anyhow::Result<()> {
        let tensors = candle::safetensors::load(path, &candle::Device::Cpu)
            .with_context(|| format!("{}: not a readable optimizer state", path.display()))?;
        for s in &mut self.slots {
            for (key, dst) in [("m", &mut s.m), ("v", &mut s.v)] {
                let Some(t) = tensors.get(&format!("{key}/{}", s.name)) else {
                    bail!("{}: no state for parameter '{}'", path.display(), s.name);
                };
                if t.dims() != dst.dims() {
                    bail!(
                        "{}: state of '{}' has the wrong shape",
                        path.display(),
                        s.name
                    );
                }
                *dst = t.to_device(dst.device())?;
            }
        }
        self.step = step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle::Device;

    fn config(kind: OptimizerKind, weight_decay: f64) -> OptimizerConfig {
        OptimizerConfig {
            kind,
            lr: 0.1,
            weight_decay,
            momentum: 0.9,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }

    /// Runs `steps` updates of loss = sum(θ²) (gradient 2θ) from θ = [1, -2] (as a 1x2 weight).
    fn run(kind: OptimizerKind, wd: f64, steps: usize) -> Vec<f32> {
        let var = Var::from_tensor(&Tensor::new(&[[1f32, -2.0]], &Device::Cpu).unwrap()).unwrap();
        let mut opt = Optimizer::new(config(kind, wd), vec![("w".into(), var.clone())]).unwrap();
        for _ in 0..steps {
            let loss = var.as_tensor().sqr().unwrap().sum_all().unwrap();
            opt.step(&loss.backward().unwrap()).unwrap();
        }
        var.as_tensor().flatten_all().unwrap().to_vec1().unwrap()
    }

    /// Adam in closed form on the same problem, in f64.
    fn adam_reference(theta0: [f64; 2], steps: usize, wd: f64, decoupled: bool) -> Vec<f64> {
        let (lr, b1, b2, eps) = (0.1, 0.9, 0.999, 1e-8);
        let mut th = theta0;
        let (mut m, mut v) = ([0.0; 2], [0.0; 2]);
        for t in 1..=steps as i32 {
            for i in 0..2 {
                let mut g = 2.0 * th[i];
                if !decoupled {
                    g += wd * th[i];
                }
                m[i] = b1 * m[i] + (1.0 - b1) * g;
                v[i] = b2 * v[i] + (1.0 - b2) * g * g;
                let mhat = m[i] / (1.0 - b1.powi(t));
                let vhat = v[i] / (1.0 - b2.powi(t));
                if decoupled {
                    th[i] *= 1.0 - lr * wd;
                }
                th[i] -= lr * mhat / (vhat.sqrt() + eps);
            }
        }
        th.to_vec()
    }

    fn close(a: &[f32], b: &[f64]) -> bool {
        a.iter().zip(b).all(|(x, y)| (*x as f64 - y).abs() < 1e-5)
    }

    #[test]
    fn adam_first_step_moves_each_weight_by_lr() {
        // With zeroed moments, step one is -lr * g / |g| whatever the gradient's size.
        assert!(close(&run(OptimizerKind::Adam, 0.0, 1), &[0.9, -1.9]));
    }

    #[test]
    fn adam_and_adamw_match_the_closed_form() {
        for steps in [2, 3, 10] {
            assert!(close(
                &run(OptimizerKind::Adam, 0.0, steps),
                &adam_reference([1.0, -2.0], steps, 0.0, false)
            ));
            assert!(close(
                &run(OptimizerKind::Adam, 0.1, steps),
                &adam_reference([1.0, -2.0], steps, 0.1, false)
            ));
            assert!(close(
                &run(OptimizerKind::Adamw, 0.1, steps),
                &adam_reference([1.0, -2.0], steps, 0.1, true)
            ));
        }
    }

    #[test]
    fn sgd_momentum_matches_the_closed_form() {
        // v1 = 2θ0, θ1 = θ0 - 0.1 v1 = 0.8 θ0; v2 = 0.9 v1 + 2θ1 = 3.4 θ0; θ2 = 0.8θ0 - 0.34θ0 = 0.46 θ0.
        assert!(close(&run(OptimizerKind::Sgd, 0.0, 2), &[0.46, -0.92]));
    }

    #[test]
    fn state_keeps_no_graph_between_steps() {
        // The gradient of a weight used after an op references the forward graph; state built
        // from it must not, or every step's graph stays alive (memory grows all epoch).
        for kind in [
            OptimizerKind::Adam,
            OptimizerKind::Adamw,
            OptimizerKind::Sgd,
        ] {
            let var =
                Var::from_tensor(&Tensor::new(&[[1f32, -2.0]], &Device::Cpu).unwrap()).unwrap();
            let x = Tensor::new(&[[3f32], [4.0]], &Device::Cpu).unwrap();
            let mut opt =
                Optimizer::new(config(kind, 0.1), vec![("w".into(), var.clone())]).unwrap();
            let loss = var
                .as_tensor()
                .matmul(&x)
                .unwrap()
                .relu()
                .unwrap()
                .sum_all()
                .unwrap();
            opt.step(&loss.backward().unwrap()).unwrap();
            for s in &opt.slots {
                assert!(!s.m.track_op() && !s.v.track_op(), "{kind:?} keeps a graph");
            }
        }
    }

    #[test]
    fn state_round_trips_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("opt.safetensors");
        let var = Var::from_tensor(&Tensor::new(&[[1f32, -2.0]], &Device::Cpu).unwrap()).unwrap();
        let mut opt = Optimizer::new(
            config(OptimizerKind::Adam, 0.0),
            vec![("w".into(), var.clone())],
        )
        .unwrap();
        let loss = var.as_tensor().sqr().unwrap().sum_all().unwrap();
        opt.step(&loss.backward().unwrap()).unwrap();
        opt.save(&path).unwrap();
        let mut other = Optimizer::new(
            config(OptimizerKind::Adam, 0.0),
            vec![("w".into(), var.clone())],
        )
        .unwrap();
        other.load(&path, opt.steps()).unwrap();
        for (a, b) in opt.slots.iter().zip(&other.slots) {
            assert_eq!(
                a.m.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                b.m.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            );
            assert_eq!(
                a.v.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                b.v.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            );
        }
        assert_eq!(other.steps(), 1);
    }
}
