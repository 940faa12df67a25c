//! Seeded construction of layers: parameters drawn from our own generator, then handed to
//! candle-nn's constructors through a VarMap, plus a dropout whose masks are seeded too.
//!
//! candle's CPU generator cannot be seeded, so every random tensor comes from here.
use std::sync::{Arc, Mutex};

use candle::{DType, Device, Module, Tensor, Var};
use candle_nn::{Conv2dConfig, Linear, VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::conv::Conv2d;
use crate::norm::BatchNorm2d;
use crate::recurrent::Lstm;

/// Builds the layers of one model into one [`VarMap`], drawing their initial values in
/// construction order from a generator seeded with the model's seed.
pub struct Builder {
    varmap: VarMap,
    device: Device,
    rng: ChaCha8Rng,
    noise: Arc<Mutex<ChaCha8Rng>>,
}

impl Builder {
    pub fn new(seed: u64, device: &Device) -> Self {
        let rng = ChaCha8Rng::seed_from_u64(seed);
        let mut noise = ChaCha8Rng::seed_from_u64(seed);
        noise.set_stream(1);
        Builder {
            varmap: VarMap::new(),
            device: device.clone(),
            rng,
            noise: Arc::new(Mutex::new(noise)),
        }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The parameters built so far, and the generator the dropouts share.
    pub fn finish(self) -> (VarMap, Arc<Mutex<ChaCha8Rng>>) {
        (self.varmap, self.noise)
    }

    fn vb(&self, name: &str) -> VarBuilder<'static> {
        VarBuilder::from_varmap(&self.varmap, DType::F32, &self.device).pp(name)
    }

    /// Inserts a parameter `name` of `shape` drawn from U(-bound, bound).
    fn uniform(&mut self, name: &str, shape: &[usize], bound: f64) -> candle::Result<()> {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n)
            .map(|_| self.rng.random_range(-bound..bound) as f32)
            .collect();
        let var = Var::from_tensor(&Tensor::from_vec(values, shape, &self.device)?)?;
        self.varmap
            .data()
            .lock()
            .expect("VarMap lock poisoned")
            .insert(name.to_string(), var);
        Ok(())
    }

    /// A dense layer, PyTorch's default init: weight and bias U(±1/√in).
    pub fn linear(&mut self, name: &str, input: usize, output: usize) -> candle::Result<Linear> {
        let bound = 1.0 / (input as f64).sqrt();
        self.uniform(&format!("{name}.weight"), &[output, input], bound)?;
        self.uniform(&format!("{name}.bias"), &[output], bound)?;
        candle_nn::linear(input, output, self.vb(name))
    }

    /// A square convolution, PyTorch's default init: U(±1/√(in·k²)); no bias when BatchNorm follows.
    pub fn conv2d(
        &mut self,
        name: &str,
        input: usize,
        output: usize,
        kernel: usize,
        config: Conv2dConfig,
        bias: bool,
    ) -> candle::Result<Conv2d> {
        let bound = 1.0 / ((input * kernel * kernel) as f64).sqrt();
        self.uniform(
            &format!("{name}.weight"),
            &[output, input, kernel, kernel],
            bound,
        )?;
        if bias {
            self.uniform(&format!("{name}.bias"), &[output], bound)?;
            candle_nn::conv2d(input, output, kernel, config, self.vb(name)).map(Conv2d::new)
        } else {
            candle_nn::conv2d_no_bias(input, output, kernel, config, self.vb(name)).map(Conv2d::new)
        }
    }

    /// BatchNorm over `features` channels: weight 1, bias 0, running statistics 0 and 1, momentum 0.1.
    pub fn batch_norm(&mut self, name: &str, features: usize) -> candle::Result<BatchNorm2d> {
        candle_nn::batch_norm(
            features,
            candle_nn::BatchNormConfig::default(),
            self.vb(name),
        )
        .map(BatchNorm2d::new)
    }

    /// A single-layer LSTM, PyTorch's default init: every weight and both biases U(±1/√hidden).
    pub fn lstm(&mut self, name: &str, input: usize, hidden: usize) -> candle::Result<Lstm> {
        let bound = 1.0 / (hidden as f64).sqrt();
        let shapes = [
            ("weight_ih_l0", vec![4 * hidden, input]),
            ("weight_hh_l0", vec![4 * hidden, hidden]),
            ("bias_ih_l0", vec![4 * hidden]),
            ("bias_hh_l0", vec![4 * hidden]),
        ];
        for (tensor, shape) in &shapes {
            self.uniform(&format!("{name}.{tensor}"), shape, bound)?;
        }
        let vb = self.vb(name);
        let [w_ih, w_hh, b_ih, b_hh] =
            shapes.map(|(tensor, shape)| vb.get(shape.as_slice(), tensor));
        let inner = candle_nn::lstm(input, hidden, candle_nn::LSTMConfig::default(), vb)?;
        Ok(Lstm::new(inner, w_ih?, w_hh?, b_ih?, b_hh?))
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
    pub fn forward_t(&self, x: &Tensor, train: bool) -> candle::Result<Tensor> {
        if !train || self.p <= 0.0 {
            return Ok(x.clone());
        }
        let keep = 1.0 / (1.0 - self.p);
        let mut rng = self.rng.lock().expect("dropout generator lock poisoned");
        let mask: Vec<f32> = (0..x.elem_count())
            .map(|_| {
                if rng.random::<f32>() < self.p {
                    0.0
                } else {
                    keep
                }
            })
            .collect();
        x.mul(&Tensor::from_vec(mask, x.shape(), x.device())?)
    }
}

/// Applies a module and then ReLU.
pub fn relu_after<M: Module>(m: &M, x: &Tensor) -> candle::Result<Tensor> {
    m.forward(x)?.relu()
}
