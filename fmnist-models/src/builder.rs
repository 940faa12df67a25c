//! Seeded construction of layers: parameters drawn from our own generator by one of two
//! initialization schemes (PyTorch's or Keras' defaults), then handed to candle-nn's
//! constructors through a VarMap, plus a dropout whose masks are seeded too.
//!
//! candle's CPU generator cannot be seeded, so every random tensor comes from here.
use std::sync::{Arc, Mutex};

use candle::{DType, Device, Tensor, Var};
use candle_nn::{Conv2dConfig, Linear, VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

use crate::kernels::conv::Conv2d;
use crate::kernels::norm::BatchNorm2d;
use crate::kernels::recurrent::Lstm;
use crate::kernels::{AddRelu, Kernels, MaxPool2};

/// How the initial weights are drawn: the defaults of the framework a study used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum Init {
    /// PyTorch's defaults: weights and biases U(±1/√fan_in); the LSTM's all U(±1/√hidden).
    #[default]
    Pytorch,
    /// Keras' defaults: Glorot-uniform weights U(±√(6/(fan_in+fan_out))), zero biases; the
    /// LSTM's recurrent weights orthogonal and its forget-gate bias 1.
    Keras,
}

impl std::fmt::Display for Init {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Init::Pytorch => "pytorch",
            Init::Keras => "keras",
        })
    }
}

/// Builds the layers of one model into one [`VarMap`], drawing their initial values in
/// construction order from a generator seeded with the model's seed, and hands each layer the
/// model's kernels.
pub struct Builder {
    init: Init,
    kernels: Kernels,
    varmap: VarMap,
    device: Device,
    rng: ChaCha8Rng,
    noise: Arc<Mutex<ChaCha8Rng>>,
}

impl Builder {
    pub fn new(seed: u64, init: Init, kernels: Kernels, device: &Device) -> Self {
        let rng = ChaCha8Rng::seed_from_u64(seed);
        let mut noise = ChaCha8Rng::seed_from_u64(seed);
        noise.set_stream(1);
        Builder {
            init,
            kernels,
            varmap: VarMap::new(),
            device: device.clone(),
            rng,
            noise: Arc::new(Mutex::new(noise)),
        }
    }

    /// The parameters built so far, and the generator the dropouts share.
    pub fn finish(self) -> (VarMap, Arc<Mutex<ChaCha8Rng>>) {
        (self.varmap, self.noise)
    }

    fn vb(&self, name: &str) -> VarBuilder<'static> {
        VarBuilder::from_varmap(&self.varmap, DType::F32, &self.device).pp(name)
    }

    /// Inserts a parameter `name` of `shape` with `values` (row-major).
    fn insert(&mut self, name: &str, shape: &[usize], values: Vec<f32>) -> candle::Result<()> {
        let var = Var::from_tensor(&Tensor::from_vec(values, shape, &self.device)?)?;
        self.varmap
            .data()
            .lock()
            .expect("VarMap lock poisoned")
            .insert(name.to_string(), var);
        Ok(())
    }

    /// Inserts a parameter `name` of `shape` drawn from U(-bound, bound).
    fn uniform(&mut self, name: &str, shape: &[usize], bound: f64) -> candle::Result<()> {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n)
            .map(|_| self.rng.random_range(-bound..bound) as f32)
            .collect();
        self.insert(name, shape, values)
    }

    /// Inserts a `[rows, cols]` parameter (`rows >= cols`) whose columns are orthonormal: a
    /// Gaussian matrix orthonormalized by Gram-Schmidt, which is the Q of its QR decomposition
    /// with a positive diagonal R, as Keras' `Orthogonal` draws it.
    fn orthogonal(&mut self, name: &str, rows: usize, cols: usize) -> candle::Result<()> {
        assert!(rows >= cols, "orthogonal columns need rows >= cols");
        // Column-major while orthonormalizing: column j is q[j * rows..(j + 1) * rows].
        let mut q: Vec<f64> = (0..rows * cols)
            .map(|_| self.rng.sample::<f64, _>(StandardNormal))
            .collect();
        for j in 0..cols {
            let (done, rest) = q.split_at_mut(j * rows);
            let column = &mut rest[..rows];
            for previous in done.chunks_exact(rows) {
                let dot: f64 = previous.iter().zip(column.iter()).map(|(a, b)| a * b).sum();
                column
                    .iter_mut()
                    .zip(previous)
                    .for_each(|(c, p)| *c -= dot * p);
            }
            let norm = column.iter().map(|c| c * c).sum::<f64>().sqrt();
            column.iter_mut().for_each(|c| *c /= norm);
        }
        let values = (0..rows * cols)
            .map(|i| q[(i % cols) * rows + i / cols] as f32)
            .collect();
        self.insert(name, &[rows, cols], values)
    }

    /// A weight's bound: PyTorch's U(±1/√fan_in) or Keras' Glorot U(±√(6/(fan_in+fan_out))).
    fn weight_bound(&self, fan_in: usize, fan_out: usize) -> f64 {
        match self.init {
            Init::Pytorch => 1.0 / (fan_in as f64).sqrt(),
            Init::Keras => (6.0 / (fan_in + fan_out) as f64).sqrt(),
        }
    }

    /// A bias: PyTorch's U(±1/√fan_in), or Keras' zeros.
    fn bias(&mut self, name: &str, len: usize, fan_in: usize) -> candle::Result<()> {
        match self.init {
            Init::Pytorch => self.uniform(name, &[len], 1.0 / (fan_in as f64).sqrt()),
            Init::Keras => self.insert(name, &[len], vec![0.0; len]),
        }
    }

    /// A dense layer `input -> output` (weight and bias as [`Init`] says).
    pub fn linear(&mut self, name: &str, input: usize, output: usize) -> candle::Result<Linear> {
        let bound = self.weight_bound(input, output);
        self.uniform(&format!("{name}.weight"), &[output, input], bound)?;
        self.bias(&format!("{name}.bias"), output, input)?;
        candle_nn::linear(input, output, self.vb(name))
    }

    /// A dense layer `input -> output` without a bias (a score that a softmax follows, where
    /// a bias would cancel).
    pub fn linear_no_bias(
        &mut self,
        name: &str,
        input: usize,
        output: usize,
    ) -> candle::Result<Linear> {
        let bound = self.weight_bound(input, output);
        self.uniform(&format!("{name}.weight"), &[output, input], bound)?;
        candle_nn::linear_no_bias(input, output, self.vb(name))
    }

    /// A square convolution (fan-in `in·k²`, fan-out `out·k²`); no bias when BatchNorm follows.
    pub fn conv2d(
        &mut self,
        name: &str,
        input: usize,
        output: usize,
        kernel: usize,
        config: Conv2dConfig,
        bias: bool,
    ) -> candle::Result<Conv2d> {
        let (fan_in, fan_out) = (input * kernel * kernel, output * kernel * kernel);
        let bound = self.weight_bound(fan_in, fan_out);
        self.uniform(
            &format!("{name}.weight"),
            &[output, input, kernel, kernel],
            bound,
        )?;
        if bias {
            self.bias(&format!("{name}.bias"), output, fan_in)?;
            candle_nn::conv2d(input, output, kernel, config, self.vb(name))
        } else {
            candle_nn::conv2d_no_bias(input, output, kernel, config, self.vb(name))
        }
        .map(|inner| Conv2d::new(inner, self.kernels))
    }

    /// BatchNorm over `features` channels: weight 1, bias 0, running statistics 0 and 1, momentum 0.1.
    pub fn batch_norm(&mut self, name: &str, features: usize) -> candle::Result<BatchNorm2d> {
        candle_nn::batch_norm(
            features,
            candle_nn::BatchNormConfig::default(),
            self.vb(name),
        )
        .map(|inner| BatchNorm2d::new(inner, self.kernels))
    }

    /// `relu(a + b)` (a residual block's end) on the model's kernels.
    pub fn add_relu(&self) -> AddRelu {
        AddRelu {
            kernels: self.kernels,
        }
    }

    /// 2x2 max-pooling on the model's kernels.
    pub fn max_pool2(&self) -> MaxPool2 {
        MaxPool2 {
            kernels: self.kernels,
        }
    }

    /// A single-layer LSTM in PyTorch's layout (gates i, f, g, o; two bias vectors). PyTorch's
    /// init draws everything from U(±1/√hidden); Keras' draws the input weights Glorot-uniform,
    /// the recurrent weights orthogonal, and its one bias (here `bias_ih`) 1 on the forget gate.
    pub fn lstm(&mut self, name: &str, input: usize, hidden: usize) -> candle::Result<Lstm> {
        let shapes = [
            ("weight_ih_l0", vec![4 * hidden, input]),
            ("weight_hh_l0", vec![4 * hidden, hidden]),
            ("bias_ih_l0", vec![4 * hidden]),
            ("bias_hh_l0", vec![4 * hidden]),
        ];
        match self.init {
            Init::Pytorch => {
                let bound = 1.0 / (hidden as f64).sqrt();
                for (tensor, shape) in &shapes {
                    self.uniform(&format!("{name}.{tensor}"), shape, bound)?;
                }
            }
            Init::Keras => {
                let bound = self.weight_bound(input, 4 * hidden);
                self.uniform(&format!("{name}.weight_ih_l0"), &shapes[0].1, bound)?;
                self.orthogonal(&format!("{name}.weight_hh_l0"), 4 * hidden, hidden)?;
                let forget_one = (0..4 * hidden)
                    .map(|i| if i / hidden == 1 { 1.0 } else { 0.0 })
                    .collect();
                self.insert(&format!("{name}.bias_ih_l0"), &shapes[2].1, forget_one)?;
                self.insert(
                    &format!("{name}.bias_hh_l0"),
                    &shapes[3].1,
                    vec![0.0; 4 * hidden],
                )?;
            }
        }
        let vb = self.vb(name);
        let [w_ih, w_hh, b_ih, b_hh] =
            shapes.map(|(tensor, shape)| vb.get(shape.as_slice(), tensor));
        Ok(Lstm::new(w_ih?, w_hh?, b_ih?, b_hh?, self.kernels))
    }

    /// Inverted dropout with probability `p`, its masks drawn from the model's noise generator.
    pub fn dropout(&self, p: f32) -> Dropout {
        Dropout {
            p,
            rng: self.noise.clone(),
        }
    }
}

/// Inverted dropout with seeded masks (candle's own draws from an unseedable generator).
#[derive(Clone)]
pub struct Dropout {
    p: f32,
    rng: Arc<Mutex<ChaCha8Rng>>,
}

impl Dropout {
    /// `x` with a fresh mask in training, unchanged in evaluation.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> candle::Result<Tensor> {
        if !train || self.p <= 0.0 {
            return Ok(x.clone());
        }
        let mut rng = self.rng.lock().expect("dropout generator lock poisoned");
        let mask = dropout_mask(&mut rng, self.p, x.elem_count());
        drop(rng);
        x.mul(&Tensor::from_vec(mask, x.shape(), x.device())?)
    }
}

/// `len` elements of an inverted-dropout mask: 0 where the element's uniform draw in [0, 1)
/// falls below `p`, `1 / (1 - p)` elsewhere. The draws are the generator's next `len` words,
/// taken in one fill and turned into floats as `rng.random::<f32>()` turns each (its top 24
/// bits times 2⁻²⁴), so the mask and the generator's state after it are those of `len`
/// successive `random::<f32>()` calls, at a fraction of their cost.
fn dropout_mask(rng: &mut ChaCha8Rng, p: f32, len: usize) -> Vec<f32> {
    let keep = 1.0 / (1.0 - p);
    let scale = 1.0 / (1u32 << 24) as f32;
    let mut words = vec![0u32; len];
    rng.fill(&mut words[..]);
    words
        .into_iter()
        .map(|word| {
            if scale * ((word >> 8) as f32) < p {
                0.0
            } else {
                keep
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropout_mask_is_that_of_one_draw_per_element() {
        for (seed, len, p) in [(0u64, 1, 0.5f32), (7, 1000, 0.25), (42, 4099, 0.5)] {
            let mut bulk = ChaCha8Rng::seed_from_u64(seed);
            let mut one_by_one = bulk.clone();
            // Three words drawn first, so that the fill starts inside a block of the generator.
            for _ in 0..3 {
                assert_eq!(bulk.random::<u32>(), one_by_one.random::<u32>());
            }
            let mask = dropout_mask(&mut bulk, p, len);
            let keep = 1.0 / (1.0 - p);
            let expected: Vec<f32> = (0..len)
                .map(|_| {
                    if one_by_one.random::<f32>() < p {
                        0.0
                    } else {
                        keep
                    }
                })
                .collect();
            assert_eq!(mask, expected, "seed {seed}");
            assert_eq!(bulk.random::<u64>(), one_by_one.random::<u64>());
            let dropped = mask.iter().filter(|&&m| m == 0.0).count() as f32 / len as f32;
            assert!(
                len < 1000 || (dropped - p).abs() < 0.05,
                "dropped {dropped}"
            );
        }
    }
}
