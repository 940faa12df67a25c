//! Adam, AdamW and momentum SGD with state that can be saved and restored (candle-nn's
//! optimizers keep their moments private, so an interrupted run could not resume exactly).
//!
//! The update runs over flat buffers: the parameters are gathered into one vector per group
//! (weights, which take weight decay, and the rest), the moments live as one vector per group,
//! and each update is about a dozen element-wise operations per group, whatever the number of
//! parameter tensors, then one copy back into each parameter. Per tensor it would be a dozen
//! operations per tensor (hundreds for the ResNet), each a kernel launch on a GPU. The
//! arithmetic per element is the same either way, and so are the results, bit for bit.
use std::collections::{HashMap, HashSet};
use std::path::Path;

use anyhow::{bail, Context};
use candle::backprop::GradStore;
use candle::{Tensor, Var};

use crate::config::OptimizerKind;

/// One parameter and where it sits in its group's flat buffers.
struct Param {
    name: String,
    var: Var,
    offset: usize,
    len: usize,
}

/// Parameters updated together, with their optimizer state as flat vectors.
struct Group {
    params: Vec<Param>,
    /// Weight decay applies to weights (rank >= 2), not to biases or BatchNorm scales.
    decay: bool,
    /// First moment (Adam) or velocity (SGD), `[len]`.
    m: Tensor,
    /// Second moment (Adam only), `[len]`.
    v: Tensor,
    /// On the CUDA kernel, `m` and `v` as the one `[2, len]` buffer they are views of.
    #[cfg(feature = "cuda")]
    moments: Option<Tensor>,
}

impl Group {
    fn new(decay: bool, params: Vec<(String, Var)>) -> candle::Result<Option<Self>> {
        let Some((_, first)) = params.first() else {
            return Ok(None);
        };
        let (dtype, device) = (first.dtype(), first.device().clone());
        let mut offset = 0;
        let params: Vec<Param> = params
            .into_iter()
            .map(|(name, var)| {
                let len = var.elem_count();
                offset += len;
                Param {
                    name,
                    var,
                    offset: offset - len,
                    len,
                }
            })
            .collect();
        let m = Tensor::zeros(offset, dtype, &device)?;
        Ok(Some(Group {
            params,
            decay,
            v: m.clone(),
            m,
            #[cfg(feature = "cuda")]
            moments: None,
        }))
    }

    /// One Adam or AdamW update by the CUDA kernel ([`fmnist_models::cuda::adam_update`]), if
    /// the group is f32 on a CUDA device: one concatenation of the parameters and gradients,
    /// one launch, one copy into each parameter. `false` (nothing done) elsewhere.
    #[cfg(feature = "cuda")]
    fn step_on_cuda(
        &mut self,
        c: &OptimizerConfig,
        t: i32,
        grads: &GradStore,
    ) -> candle::Result<bool> {
        if !self.on_cuda_kernel(c.kind) {
            return Ok(false);
        }
        let len = self.m.elem_count();
        let mut parts = self.param_parts()?;
        parts.extend(self.grad_parts(grads)?);
        let params_grads = Tensor::cat(&parts, 0)?.reshape((2, len))?;
        let moments = match &self.moments {
            Some(moments) => moments.clone(),
            None => Tensor::stack(&[&self.m, &self.v], 0)?,
        };
        let step = fmnist_models::cuda::AdamStep {
            lr: c.lr,
            beta1: c.beta1,
            beta2: c.beta2,
            eps: c.eps,
            weight_decay: if self.decay { c.weight_decay } else { 0.0 },
            decoupled: c.kind == OptimizerKind::Adamw,
            t,
        };
        let out = fmnist_models::cuda::adam_update(&params_grads, &moments, step)?;
        self.scatter_params(&out.get(0)?)?;
        let moments = out.narrow(0, 1, 2)?;
        self.m = moments.get(0)?;
        self.v = moments.get(1)?;
        self.moments = Some(moments);
        Ok(true)
    }

    /// Whether `kind`'s update of this group runs on the CUDA kernel: Adam or AdamW, f32 on a
    /// CUDA device.
    #[cfg(feature = "cuda")]
    fn on_cuda_kernel(&self, kind: OptimizerKind) -> bool {
        self.m.device().is_cuda()
            && self.m.dtype() == candle::DType::F32
            && kind != OptimizerKind::Sgd
    }

    /// The parameters as one vector, with no graph behind it.
    fn gather_params(&self) -> candle::Result<Tensor> {
        Tensor::cat(&self.param_parts()?, 0)
    }

    /// Each parameter as a vector, detached.
    fn param_parts(&self) -> candle::Result<Vec<Tensor>> {
        self.params
            .iter()
            .map(|p| p.var.as_detached_tensor().flatten_all())
            .collect()
    }

    /// The gradients as one vector (zero for a parameter the loss does not reach), detached:
    /// a variable's gradient still references the step's forward graph, which must not
    /// outlive the step.
    fn gather_grads(&self, grads: &GradStore) -> candle::Result<Tensor> {
        Tensor::cat(&self.grad_parts(grads)?, 0)
    }

    /// Each parameter's gradient as a vector, detached (zeros where the loss does not reach).
    fn grad_parts(&self, grads: &GradStore) -> candle::Result<Vec<Tensor>> {
        self.params
            .iter()
            .map(|p| match grads.get(p.var.as_tensor()) {
                Some(g) => g.detach().flatten_all(),
                None => Tensor::zeros(p.len, p.var.dtype(), p.var.device()),
            })
            .collect()
    }

    /// Writes each parameter's part of `flat` into it.
    fn scatter_params(&self, flat: &Tensor) -> candle::Result<()> {
        for p in &self.params {
            p.var
                .set(&flat.narrow(0, p.offset, p.len)?.reshape(p.var.shape())?)?;
        }
        Ok(())
    }
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

/// One update of a flat group at step `t` (from 1): the new parameters, first and second
/// moments from the old ones and the gradient `g`.
fn update(
    c: &OptimizerConfig,
    t: i32,
    decay: bool,
    [theta, g, m, v]: [&Tensor; 4],
) -> candle::Result<[Tensor; 3]> {
    let wd = if decay { c.weight_decay } else { 0.0 };
    match c.kind {
        OptimizerKind::Adam | OptimizerKind::Adamw => {
            let g = if c.kind == OptimizerKind::Adam && wd > 0.0 {
                (g + theta.affine(wd, 0.0)?)?
            } else {
                g.clone()
            };
            let m = ((m * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
            let v = ((v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let bc1 = 1.0 - c.beta1.powi(t);
            let bc2 = 1.0 - c.beta2.powi(t);
            let denom = ((v.sqrt()? / bc2.sqrt())? + c.eps)?;
            let step = ((&m / denom)? * (c.lr / bc1))?;
            let base = if c.kind == OptimizerKind::Adamw && wd > 0.0 {
                theta.affine(1.0 - c.lr * wd, 0.0)?
            } else {
                theta.clone()
            };
            Ok([(base - step)?, m, v])
        }
        OptimizerKind::Sgd => {
            let g = if wd > 0.0 {
                (g + theta.affine(wd, 0.0)?)?
            } else {
                g.clone()
            };
            let velocity = ((m * c.momentum)? + g)?;
            Ok([(theta - (&velocity * c.lr)?)?, velocity, v.clone()])
        }
    }
}

/// The optimizer of a run: updates the parameters from their gradients.
pub struct Optimizer {
    config: OptimizerConfig,
    groups: Vec<Group>,
    step: u64,
}

impl Optimizer {
    /// An optimizer over `params` (name, variable), with zeroed state.
    pub fn new(config: OptimizerConfig, params: Vec<(String, Var)>) -> candle::Result<Self> {
        let (weights, others): (Vec<_>, Vec<_>) =
            params.into_iter().partition(|(_, var)| var.rank() >= 2);
        let groups = [(true, weights), (false, others)]
            .into_iter()
            .filter_map(|(decay, params)| Group::new(decay, params).transpose())
            .collect::<candle::Result<_>>()?;
        Ok(Optimizer {
            config,
            groups,
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

    /// One update from `grads`. A parameter the loss does not reach counts as having a zero
    /// gradient: its moments (SGD: its velocity) decay and keep moving it, and with AdamW its
    /// weight decay still applies.
    pub fn step(&mut self, grads: &GradStore) -> candle::Result<()> {
        self.step += 1;
        let t = self.step as i32;
        for group in &mut self.groups {
            #[cfg(feature = "cuda")]
            if group.step_on_cuda(&self.config, t, grads)? {
                continue;
            }
            let theta = group.gather_params()?;
            let g = group.gather_grads(grads)?;
            let [theta, m, v] = update(
                &self.config,
                t,
                group.decay,
                [&theta, &g, &group.m, &group.v],
            )?;
            group.scatter_params(&theta)?;
            group.m = m;
            group.v = v;
        }
        Ok(())
    }

    /// The tensor operations of one update: those of the update's arithmetic, counted on
    /// candle's graph of one update run on stand-ins of the flat buffers, plus by construction
    /// the two gathers (one concatenation each) and one copy into each parameter per group.
    pub fn ops_per_step(&self) -> candle::Result<usize> {
        let mut ops = 0;
        for group in &self.groups {
            // The CUDA kernel: one concatenation of parameters and gradients, one launch, one
            // copy into each parameter.
            #[cfg(feature = "cuda")]
            if group.on_cuda_kernel(self.config.kind) {
                ops += 2 + group.params.len();
                continue;
            }
            // Variables stand in for the parameters, gradient and moments, so that every
            // operation of the update is a node of its graph.
            let stand_in = || Var::zeros(group.m.dims(), group.m.dtype(), group.m.device());
            let (theta, g, m, v) = (stand_in()?, stand_in()?, stand_in()?, stand_in()?);
            let inputs = [&theta, &g, &m, &v].map(|var| var.as_tensor());
            let outputs = update(&self.config, 1, group.decay, inputs)?;
            let mut seen = HashSet::new();
            for out in &outputs {
                for node in out.sorted_nodes() {
                    if !node.is_variable() {
                        seen.insert(node.id());
                    }
                }
            }
            ops += seen.len() + 2 + group.params.len();
        }
        Ok(ops)
    }

    /// Writes the moments to `path` (safetensors), one pair per parameter; the step count
    /// travels in the run state.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let mut tensors = HashMap::new();
        for group in &self.groups {
            for p in &group.params {
                for (key, state) in [("m", &group.m), ("v", &group.v)] {
                    let part = state.narrow(0, p.offset, p.len)?.reshape(p.var.shape())?;
                    tensors.insert(format!("{key}/{}", p.name), part);
                }
            }
        }
        let bytes = safetensors::serialize(&tensors, None)
            .with_context(|| format!("serializing {}", path.display()))?;
        Ok(fmnist_data::write_atomic(path, &bytes)?)
    }

    /// Restores moments saved by [`Optimizer::save`] and the step count.
    pub fn load(&mut self, path: &Path, step: u64) -> anyhow::Result<()> {
        let tensors = candle::safetensors::load(path, &candle::Device::Cpu)
            .with_context(|| format!("{}: not a readable optimizer state", path.display()))?;
        for group in &mut self.groups {
            for (key, dst) in [("m", &mut group.m), ("v", &mut group.v)] {
                let mut parts = Vec::with_capacity(group.params.len());
                for p in &group.params {
                    let Some(t) = tensors.get(&format!("{key}/{}", p.name)) else {
                        bail!("{}: no state for parameter '{}'", path.display(), p.name);
                    };
                    if t.dims() != p.var.dims() {
                        bail!(
                            "{}: state of '{}' has the wrong shape",
                            path.display(),
                            p.name
                        );
                    }
                    parts.push(t.flatten_all()?);
                }
                *dst = Tensor::cat(&parts, 0)?.to_device(dst.device())?;
            }
            #[cfg(feature = "cuda")]
            {
                group.moments = None;
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
            for g in &opt.groups {
                assert!(!g.m.track_op() && !g.v.track_op(), "{kind:?} keeps a graph");
            }
        }
    }

    /// Weights and biases of several shapes, a loss that reaches them all unevenly.
    fn params() -> Vec<(String, Var)> {
        let dev = Device::Cpu;
        [vec![3, 4], vec![4], vec![2, 3, 2], vec![5], vec![1]]
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let var = Var::randn(0f32, 1.0, s.as_slice(), &dev).unwrap();
                (format!("p{i}"), var)
            })
            .collect()
    }

    fn loss_of(params: &[(String, Var)]) -> Tensor {
        let parts: Vec<Tensor> = params
            .iter()
            .enumerate()
            .map(|(i, (_, v))| {
                let t = v.as_tensor();
                (t.sqr().unwrap() * (i + 1) as f64 + t.sin().unwrap())
                    .unwrap()
                    .sum_all()
                    .unwrap()
            })
            .collect();
        Tensor::stack(&parts, 0).unwrap().sum_all().unwrap()
    }

    fn bits(t: &Tensor) -> Vec<u32> {
        let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        v.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn flat_update_gives_the_same_bits_as_one_update_per_tensor() {
        for kind in [
            OptimizerKind::Adam,
            OptimizerKind::Adamw,
            OptimizerKind::Sgd,
        ] {
            let c = config(kind, 0.05);
            let flat_params = params();
            let mut opt = Optimizer::new(c, flat_params.clone()).unwrap();
            // The reference: the same arithmetic run on each tensor on its own.
            let copies: Vec<(String, Var)> = flat_params
                .iter()
                .map(|(n, v)| {
                    (
                        n.clone(),
                        Var::from_tensor(&v.as_tensor().copy().unwrap()).unwrap(),
                    )
                })
                .collect();
            let mut state: Vec<[Tensor; 2]> = copies
                .iter()
                .map(|(_, v)| [v.zeros_like().unwrap(), v.zeros_like().unwrap()])
                .collect();
            for t in 1..=4 {
                opt.step(&loss_of(&flat_params).backward().unwrap())
                    .unwrap();
                let grads = loss_of(&copies).backward().unwrap();
                for ((_, var), [m, v]) in copies.iter().zip(state.iter_mut()) {
                    let g = grads.get(var.as_tensor()).unwrap().detach();
                    let theta = var.as_detached_tensor();
                    let decay = var.rank() >= 2;
                    let [theta, m2, v2] = update(&c, t, decay, [&theta, &g, m, v]).unwrap();
                    var.set(&theta).unwrap();
                    (*m, *v) = (m2, v2);
                }
            }
            for ((name, a), (_, b)) in flat_params.iter().zip(&copies) {
                assert_eq!(bits(a.as_tensor()), bits(b.as_tensor()), "{kind:?} {name}");
            }
        }
    }

    /// On a GPU machine (`--features cuda`): the CUDA kernel's Adam and AdamW agree with the
    /// generic update on the CPU over several steps, parameters and moments.
    #[cfg(feature = "cuda")]
    #[test]
    fn the_cuda_update_agrees_with_the_generic_one() {
        let gpu = Device::new_cuda(0).expect("this test needs a CUDA device");
        for kind in [OptimizerKind::Adam, OptimizerKind::Adamw] {
            let c = config(kind, 0.05);
            let on_cpu = params();
            let on_gpu: Vec<(String, Var)> = on_cpu
                .iter()
                .map(|(n, v)| {
                    let t = v.as_tensor().to_device(&gpu).unwrap();
                    (n.clone(), Var::from_tensor(&t).unwrap())
                })
                .collect();
            let mut cpu_opt = Optimizer::new(c, on_cpu.clone()).unwrap();
            let mut gpu_opt = Optimizer::new(c, on_gpu.clone()).unwrap();
            for _ in 0..4 {
                cpu_opt.step(&loss_of(&on_cpu).backward().unwrap()).unwrap();
                gpu_opt.step(&loss_of(&on_gpu).backward().unwrap()).unwrap();
            }
            let close = |a: &Tensor, b: &Tensor, what: &str| {
                let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
                let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
                for (x, y) in a.iter().zip(&b) {
                    assert!(
                        (x - y).abs() <= 1e-5 * (1.0 + y.abs()),
                        "{kind:?} {what}: {a:?} vs {b:?}"
                    );
                }
            };
            for ((name, a), (_, b)) in on_gpu.iter().zip(&on_cpu) {
                close(a.as_tensor(), b.as_tensor(), name);
            }
            for (g, h) in gpu_opt.groups.iter().zip(&cpu_opt.groups) {
                close(&g.m, &h.m, "first moment");
                close(&g.v, &h.v, "second moment");
            }
        }
    }

    #[test]
    fn an_update_is_a_fixed_number_of_operations_whatever_the_tensor_count() {
        let opt = Optimizer::new(config(OptimizerKind::Adamw, 0.1), params()).unwrap();
        // Per group: the update's arithmetic (AdamW: two moments of three operations each,
        // square, sqrt, bias correction, eps, quotient, step size, the step; the weights'
        // decay one more), two gathers and one copy into each parameter (two weights, three
        // biases).
        let weights = 14 + 2 + 2;
        let others = 13 + 2 + 3;
        assert_eq!(opt.ops_per_step().unwrap(), weights + others);
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
        for (a, b) in opt.groups.iter().zip(&other.groups) {
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
