//! The architectures of the registry, each built at the widths it is given ([`Widths`]: the
//! entry's own unless a configuration changes them). Each maps `[B, 1, 28, 28]` to logits
//! `[B, 10]`.
//!
//! Max-pooling comes before ReLU where both follow a layer: the two commute (ReLU is
//! monotone), and ReLU then touches a quarter of the elements.
use candle::{Module, Tensor};
use candle_nn::{Conv2dConfig, Linear};

use crate::builder::{Builder, Dropout};
use crate::kernels::conv::Conv2d;
use crate::kernels::conv_norm::{conv_norm_t, After};
use crate::kernels::norm::BatchNorm2d;
use crate::kernels::recurrent::Lstm as LstmLayer;
use crate::kernels::{AddRelu, Kernels, MaxPool2};
use crate::size::Widths;

/// A network of the registry.
pub trait Net: Send + Sync {
    /// What the last dense layer reads (`[B, D]`, after any dropout): the network's
    /// embedding of each image; `train` switches dropout and BatchNorm.
    fn features_t(&self, x: &Tensor, train: bool) -> candle::Result<Tensor>;

    /// The last dense layer: logits from [`Net::features_t`].
    fn output_layer(&self) -> &Linear;

    /// Logits `[B, 10]` of images `[B, 1, 28, 28]`; `train` switches dropout and BatchNorm.
    fn forward_t(&self, x: &Tensor, train: bool) -> candle::Result<Tensor> {
        self.output_layer().forward(&self.features_t(x, train)?)
    }

    /// The activations of the first convolution (`[B, C, H, W]`, before pooling), for CNNs.
    fn first_feature_maps(&self, _x: &Tensor) -> candle::Result<Option<Tensor>> {
        Ok(None)
    }

    /// The activations of the last convolution (`[B, C, H, W]`, after its ReLU, before any
    /// pooling) in evaluation, for CNNs: what Grad-CAM weighs.
    fn last_conv_maps(&self, _x: &Tensor) -> candle::Result<Option<Tensor>> {
        Ok(None)
    }

    /// The evaluation logits from [`Net::last_conv_maps`]' output, through operations that
    /// record their gradient: `head(last_conv_maps(x)) == forward_t(x, false)`.
    fn head(&self, _maps: &Tensor) -> candle::Result<Tensor> {
        candle::bail!("this network has no convolutions")
    }
}

const PAD1: Conv2dConfig = Conv2dConfig {
    padding: 1,
    stride: 1,
    dilation: 1,
    groups: 1,
    cudnn_fwd_algo: None,
};

const STRIDE2: Conv2dConfig = Conv2dConfig {
    padding: 1,
    stride: 2,
    dilation: 1,
    groups: 1,
    cudnn_fwd_algo: None,
};

/// conv3x3(C) - pool - relu - conv3x3(C) - pool - relu - dense D - relu - dense 10
/// (C = 32, D = 100).
pub struct Cnn {
    conv1: Conv2d,
    conv2: Conv2d,
    fc1: Linear,
    fc2: Linear,
}

impl Cnn {
    pub fn new(b: &mut Builder, w: &Widths) -> candle::Result<Self> {
        let valid = Conv2dConfig::default();
        let c = w.channels;
        Ok(Cnn {
            conv1: b.conv2d("conv1", 1, c, 3, valid, true)?,
            conv2: b.conv2d("conv2", c, c, 3, valid, true)?,
            fc1: b.linear("fc1", c * 5 * 5, w.dense)?,
            fc2: b.linear("fc2", w.dense, 10)?,
        })
    }
}

impl Net for Cnn {
    fn output_layer(&self) -> &Linear {
        &self.fc2
    }

    fn features_t(&self, x: &Tensor, train: bool) -> candle::Result<Tensor> {
        let x = self.conv1.forward_pool_relu_t(x, train)?; // Cx13x13
        let x = self.conv2.forward_pool_relu_t(&x, train)?; // Cx5x5
        self.fc1.forward(&x.flatten_from(1)?)?.relu()
    }

    fn first_feature_maps(&self, x: &Tensor) -> candle::Result<Option<Tensor>> {
        Ok(Some(self.conv1.forward_t(x, false)?.relu()?))
    }

    fn last_conv_maps(&self, x: &Tensor) -> candle::Result<Option<Tensor>> {
        let x = self.conv1.forward_pool_relu_t(x, false)?;
        Ok(Some(self.conv2.forward_t(&x, false)?.relu()?)) // Cx11x11
    }

    fn head(&self, maps: &Tensor) -> candle::Result<Tensor> {
        let x = maps.max_pool2d(2)?.flatten_from(1)?;
        self.fc2.forward(&self.fc1.forward(&x)?.relu()?)
    }
}

/// LSTM(H) over the 28 rows (28 time steps of 28 features) in `L` stacked layers, each above
/// the first reading the states of the one below at every step (with bidirectional, each layer
/// is two LSTMs, one reading bottom to top, their states side by side). The top layer is read
/// at its last step (the reverse LSTM's after its last step, the first row) or, with attention,
/// as the sum of its 28 states `s_t` weighted by a softmax over the steps of
/// `vᵀ tanh(W s_t + b)`. Then either dense 10 (`lstm`: H = 128, L = 1) or dropout - dense D -
/// relu - dropout - dense 10 (`lstm-dense`: H = D = 128, dropout 0.2).
pub struct Lstm {
    /// Each layer's LSTM reading down the rows, and the one reading up them when bidirectional.
    layers: Vec<(LstmLayer, Option<LstmLayer>)>,
    attention: Option<Attention>,
    head: Option<(Linear, Dropout)>,
    fc: Linear,
}

/// Attention pooling over the steps: `W` and `b` (`attention`, `[S, S]`) and `v` (`[1, S]`).
struct Attention {
    project: Linear,
    score: Linear,
}

impl Attention {
    /// The weights `[B, T, 1]` of the states `[B, T, S]`, summing to 1 over the steps.
    fn weights(&self, states: &Tensor) -> candle::Result<Tensor> {
        let scores = self.score.forward(&self.project.forward(states)?.tanh()?)?;
        candle_nn::ops::softmax(&scores, 1)
    }

    /// The weighted sum `[B, S]` of the states `[B, T, S]`.
    fn pool(&self, states: &Tensor) -> candle::Result<Tensor> {
        states.broadcast_mul(&self.weights(states)?)?.sum(1)
    }
}

impl Lstm {
    pub fn new(b: &mut Builder, w: &Widths) -> candle::Result<Self> {
        let state = w.hidden * if w.bidirectional { 2 } else { 1 };
        let mut layers = Vec::with_capacity(w.layers);
        for layer in 0..w.layers {
            // The first layer keeps the single-layer names, so its checkpoints load as before.
            let name = match layer {
                0 => "lstm".to_string(),
                _ => format!("lstm_{}", layer + 1),
            };
            let input = if layer == 0 { 28 } else { state };
            let forward = b.lstm(&name, input, w.hidden)?;
            let reverse = if w.bidirectional {
                Some(b.lstm(&format!("{name}_reverse"), input, w.hidden)?)
            } else {
                None
            };
            layers.push((forward, reverse));
        }
        let attention = if w.attention {
            Some(Attention {
                project: b.linear("attention", state, state)?,
                score: b.linear_no_bias("attention_score", state, 1)?,
            })
        } else {
            None
        };
        let (head, features) = if w.dense > 0 {
            let dense = b.linear("head", state, w.dense)?;
            (Some((dense, b.dropout(0.2))), w.dense)
        } else {
            (None, state)
        };
        Ok(Lstm {
            layers,
            attention,
            head,
            fc: b.linear("fc", features, 10)?,
        })
    }

    /// The states `[B, S]` the head reads from the rows `[B, T, 28]`.
    fn read(&self, rows: &Tensor, train: bool) -> candle::Result<Tensor> {
        let mut input = rows.clone();
        for (layer, (down, up)) in self.layers.iter().enumerate() {
            let top = layer + 1 == self.layers.len();
            if top && self.attention.is_none() {
                let mut state = down.last_hidden_t(&input, train)?;
                if let Some(up) = up {
                    let upward = up.last_hidden_t(&input.flip(&[1])?, train)?;
                    state = Tensor::cat(&[&state, &upward], 1)?;
                }
                return Ok(state);
            }
            let mut states = down.hidden_states_t(&input, train)?;
            if let Some(up) = up {
                // Reading up the rows, step t saw row T - 1 - t: flipped back, row by row.
                let upward = up.hidden_states_t(&input.flip(&[1])?, train)?.flip(&[1])?;
                states = Tensor::cat(&[&states, &upward], 2)?;
            }
            input = states;
        }
        match &self.attention {
            Some(attention) => attention.pool(&input),
            None => candle::bail!("an LSTM of no layers"),
        }
    }
}

impl Net for Lstm {
    fn output_layer(&self) -> &Linear {
        &self.fc
    }

    fn features_t(&self, x: &Tensor, train: bool) -> candle::Result<Tensor> {
        // The rows as 28 steps of 28 features, `[B, 28, 28]`, read to the state `[B, S]`.
        let state = self.read(&x.squeeze(1)?, train)?;
        let Some((dense, dropout)) = &self.head else {
            return Ok(state);
        };
        let x = dropout.forward_t(&state, train)?;
        let x = dense.forward(&x)?.relu()?;
        dropout.forward_t(&x, train)
    }
}

/// 784 - D - D/2 - 10 with ReLU and dropout 0.2 after each hidden layer (D = 256).
pub struct Mlp {
    fc1: Linear,
    fc2: Linear,
    fc3: Linear,
    dropout: Dropout,
}

impl Mlp {
    pub fn new(b: &mut Builder, w: &Widths) -> candle::Result<Self> {
        let (d1, d2) = (w.dense, w.dense / 2);
        Ok(Mlp {
            fc1: b.linear("fc1", 784, d1)?,
            fc2: b.linear("fc2", d1, d2)?,
            fc3: b.linear("fc3", d2, 10)?,
            dropout: b.dropout(0.2),
        })
    }
}

impl Net for Mlp {
    fn output_layer(&self) -> &Linear {
        &self.fc3
    }

    fn features_t(&self, x: &Tensor, train: bool) -> candle::Result<Tensor> {
        let x = self.fc1.forward(&x.flatten_from(1)?)?.relu()?;
        let x = self.dropout.forward_t(&x, train)?;
        let x = self.fc2.forward(&x)?.relu()?;
        self.dropout.forward_t(&x, train)
    }
}

/// conv3x3(C, pad 1) - pool - conv3x3(2C, pad 1) - pool - dense D - dropout 0.5 - dense 10
/// (C = 32, D = 128).
pub struct CnnWide {
    conv1: Conv2d,
    conv2: Conv2d,
    fc1: Linear,
    fc2: Linear,
    dropout: Dropout,
}

impl CnnWide {
    pub fn new(b: &mut Builder, w: &Widths) -> candle::Result<Self> {
        let c = w.channels;
        Ok(CnnWide {
            conv1: b.conv2d("conv1", 1, c, 3, PAD1, true)?,
            conv2: b.conv2d("conv2", c, 2 * c, 3, PAD1, true)?,
            fc1: b.linear("fc1", 2 * c * 7 * 7, w.dense)?,
            fc2: b.linear("fc2", w.dense, 10)?,
            dropout: b.dropout(0.5),
        })
    }
}

impl Net for CnnWide {
    fn output_layer(&self) -> &Linear {
        &self.fc2
    }

    fn features_t(&self, x: &Tensor, train: bool) -> candle::Result<Tensor> {
        let x = self.conv1.forward_pool_relu_t(x, train)?; // Cx14x14
        let x = self.conv2.forward_pool_relu_t(&x, train)?; // 2Cx7x7
        let x = self.fc1.forward(&x.flatten_from(1)?)?.relu()?;
        self.dropout.forward_t(&x, train)
    }

    fn first_feature_maps(&self, x: &Tensor) -> candle::Result<Option<Tensor>> {
        Ok(Some(self.conv1.forward_t(x, false)?.relu()?))
    }

    fn last_conv_maps(&self, x: &Tensor) -> candle::Result<Option<Tensor>> {
        let x = self.conv1.forward_pool_relu_t(x, false)?;
        Ok(Some(self.conv2.forward_t(&x, false)?.relu()?)) // 2Cx14x14
    }

    fn head(&self, maps: &Tensor) -> candle::Result<Tensor> {
        let x = maps.max_pool2d(2)?.flatten_from(1)?;
        self.fc2.forward(&self.fc1.forward(&x)?.relu()?)
    }
}

/// The depth study's deeper CNN: conv3x3(C, pad 1) - pool - conv3x3(2C, pad 1) - pool -
/// conv3x3(4C, pad 1) - ReLU - dense D - ReLU - dropout 0.5 - dense 10 (C = 32, D = 256:
/// 1,701,130 params).
pub struct Cnn3Conv {
    conv1: Conv2d,
    conv2: Conv2d,
    conv3: Conv2d,
    fc1: Linear,
    fc2: Linear,
    dropout: Dropout,
}

impl Cnn3Conv {
    pub fn new(b: &mut Builder, w: &Widths) -> candle::Result<Self> {
        let c = w.channels;
        Ok(Cnn3Conv {
            conv1: b.conv2d("conv1", 1, c, 3, PAD1, true)?,
            conv2: b.conv2d("conv2", c, 2 * c, 3, PAD1, true)?,
            conv3: b.conv2d("conv3", 2 * c, 4 * c, 3, PAD1, true)?,
            fc1: b.linear("fc1", 4 * c * 7 * 7, w.dense)?,
            fc2: b.linear("fc2", w.dense, 10)?,
            dropout: b.dropout(0.5),
        })
    }
}

impl Net for Cnn3Conv {
    fn output_layer(&self) -> &Linear {
        &self.fc2
    }

    fn features_t(&self, x: &Tensor, train: bool) -> candle::Result<Tensor> {
        let x = self.conv1.forward_pool_relu_t(x, train)?; // Cx14x14
        let x = self.conv2.forward_pool_relu_t(&x, train)?; // 2Cx7x7
        let x = self.conv3.forward_t(&x, train)?.relu()?; // 4Cx7x7
        let x = self.fc1.forward(&x.flatten_from(1)?)?.relu()?;
        self.dropout.forward_t(&x, train)
    }

    fn first_feature_maps(&self, x: &Tensor) -> candle::Result<Option<Tensor>> {
        Ok(Some(self.conv1.forward_t(x, false)?.relu()?))
    }

    fn last_conv_maps(&self, x: &Tensor) -> candle::Result<Option<Tensor>> {
        let x = self.conv1.forward_pool_relu_t(x, false)?;
        let x = self.conv2.forward_pool_relu_t(&x, false)?;
        Ok(Some(self.conv3.forward_t(&x, false)?.relu()?)) // 4Cx7x7
    }

    fn head(&self, maps: &Tensor) -> candle::Result<Tensor> {
        self.fc2
            .forward(&self.fc1.forward(&maps.flatten_from(1)?)?.relu()?)
    }
}

/// The ANN-vs-CNN study's BatchNorm MLP: 784 - D - D/2 - D/4 - 10, each hidden layer dense,
/// BatchNorm, ReLU, dropout 0.3 (D = 512: 569,226 params).
pub struct MlpBn {
    hidden: Vec<(Linear, BatchNorm2d)>,
    out: Linear,
    dropout: Dropout,
}

impl MlpBn {
    pub fn new(b: &mut Builder, w: &Widths) -> candle::Result<Self> {
        let widths = [784, w.dense, w.dense / 2, w.dense / 4];
        let hidden = widths
            .windows(2)
            .enumerate()
            .map(|(i, w)| {
                let fc = b.linear(&format!("fc{}", i + 1), w[0], w[1])?;
                Ok((fc, b.batch_norm(&format!("bn{}", i + 1), w[1])?))
            })
            .collect::<candle::Result<_>>()?;
        Ok(MlpBn {
            hidden,
            out: b.linear("fc4", w.dense / 4, 10)?,
            dropout: b.dropout(0.3),
        })
    }
}

impl Net for MlpBn {
    fn output_layer(&self) -> &Linear {
        &self.out
    }

    fn features_t(&self, x: &Tensor, train: bool) -> candle::Result<Tensor> {
        let mut x = x.flatten_from(1)?;
        for (fc, bn) in &self.hidden {
            // [B, F] as [B, F, 1, 1]: BatchNorm over features, as PyTorch's BatchNorm1d.
            let h = fc.forward(&x)?.unsqueeze(2)?.unsqueeze(3)?;
            let h = bn.forward_relu_t(&h, train)?.flatten_from(1)?;
            x = self.dropout.forward_t(&h, train)?;
        }
        Ok(x)
    }
}

/// A convolution without bias followed by BatchNorm.
struct ConvBn {
    conv: Conv2d,
    bn: BatchNorm2d,
}

impl ConvBn {
    fn new(
        b: &mut Builder,
        name: &str,
        input: usize,
        output: usize,
        config: Conv2dConfig,
    ) -> candle::Result<Self> {
        Ok(ConvBn {
            conv: b.conv2d(&format!("{name}.conv"), input, output, 3, config, false)?,
            bn: b.batch_norm(&format!("{name}.bn"), output)?,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> candle::Result<Tensor> {
        conv_norm_t(&self.conv, &self.bn, x, train, After::Nothing)
    }

    /// `relu(forward_t(x, train))`, fused into the normalization.
    fn forward_relu_t(&self, x: &Tensor, train: bool) -> candle::Result<Tensor> {
        conv_norm_t(&self.conv, &self.bn, x, train, After::Relu)
    }

    /// `pool(forward_relu_t(x, train))`, in training one operation with the convolution.
    fn forward_relu_pool_t(
        &self,
        x: &Tensor,
        pool: MaxPool2,
        train: bool,
    ) -> candle::Result<Tensor> {
        conv_norm_t(&self.conv, &self.bn, x, train, After::ReluPool(pool))
    }
}

/// Three stages C-2C-4C (conv-BN, pool, ReLU; stage 3 has two convolutions), dropout 0.25
/// after each stage, dense D - dropout 0.5 - dense 10 (C = 32, D = 256).
pub struct CnnDeep {
    stage1: ConvBn,
    stage2: ConvBn,
    stage3a: ConvBn,
    stage3b: ConvBn,
    fc1: Linear,
    fc2: Linear,
    drop_conv: Dropout,
    drop_fc: Dropout,
    pool: MaxPool2,
}

impl CnnDeep {
    pub fn new(b: &mut Builder, w: &Widths) -> candle::Result<Self> {
        let c = w.channels;
        Ok(CnnDeep {
            stage1: ConvBn::new(b, "stage1", 1, c, PAD1)?,
            stage2: ConvBn::new(b, "stage2", c, 2 * c, PAD1)?,
            stage3a: ConvBn::new(b, "stage3a", 2 * c, 4 * c, PAD1)?,
            stage3b: ConvBn::new(b, "stage3b", 4 * c, 4 * c, PAD1)?,
            fc1: b.linear("fc1", 4 * c * 3 * 3, w.dense)?,
            fc2: b.linear("fc2", w.dense, 10)?,
            drop_conv: b.dropout(0.25),
            drop_fc: b.dropout(0.5),
            pool: b.max_pool2(),
        })
    }
}

impl Net for CnnDeep {
    fn output_layer(&self) -> &Linear {
        &self.fc2
    }

    fn features_t(&self, x: &Tensor, train: bool) -> candle::Result<Tensor> {
        // ReLU rides in the normalization's pass, so it comes before the pooling here.
        let x = self.stage1.forward_relu_pool_t(x, self.pool, train)?; // Cx14x14
        let x = self.drop_conv.forward_t(&x, train)?;
        let x = self.stage2.forward_relu_pool_t(&x, self.pool, train)?; // 2Cx7x7
        let x = self.drop_conv.forward_t(&x, train)?;
        let x = self.stage3a.forward_relu_t(&x, train)?;
        let x = self.stage3b.forward_relu_pool_t(&x, self.pool, train)?; // 4Cx3x3
        let x = self.drop_conv.forward_t(&x, train)?;
        let x = self.fc1.forward(&x.flatten_from(1)?)?.relu()?;
        self.drop_fc.forward_t(&x, train)
    }

    fn first_feature_maps(&self, x: &Tensor) -> candle::Result<Option<Tensor>> {
        Ok(Some(self.stage1.forward_relu_t(x, false)?))
    }

    fn last_conv_maps(&self, x: &Tensor) -> candle::Result<Option<Tensor>> {
        let x = self.stage1.forward_relu_t(x, false)?.apply(&self.pool)?;
        let x = self.stage2.forward_relu_t(&x, false)?.apply(&self.pool)?;
        let x = self.stage3a.forward_relu_t(&x, false)?;
        Ok(Some(self.stage3b.forward_relu_t(&x, false)?)) // 4Cx7x7
    }

    fn head(&self, maps: &Tensor) -> candle::Result<Tensor> {
        let x = maps.max_pool2d(2)?.flatten_from(1)?;
        self.fc2.forward(&self.fc1.forward(&x)?.relu()?)
    }
}

/// Three stages C-2C-4C, each two padded conv-BN-ReLU and a max-pool, dropout 0.1 after each
/// stage, dense D - ReLU - dropout 0.3 - dense 10 (C = 32, D = 128: 435,754 params). The
/// coursework gives the stages, BatchNorm, pooling, "light dropout", a small dense head and
/// 438,000 parameters; two convolutions per stage and a head of 128 are the reading of those
/// words that comes within 1% of that count.
pub struct CnnVgg {
    stages: Vec<(ConvBn, ConvBn)>,
    fc1: Linear,
    fc2: Linear,
    drop_conv: Dropout,
    drop_fc: Dropout,
    pool: MaxPool2,
}

impl CnnVgg {
    pub fn new(b: &mut Builder, w: &Widths) -> candle::Result<Self> {
        let c = w.channels;
        let widths = [1, c, 2 * c, 4 * c];
        let stages = widths
            .windows(2)
            .enumerate()
            .map(|(i, io)| {
                let name = format!("stage{}", i + 1);
                Ok((
                    ConvBn::new(b, &format!("{name}a"), io[0], io[1], PAD1)?,
                    ConvBn::new(b, &format!("{name}b"), io[1], io[1], PAD1)?,
                ))
            })
            .collect::<candle::Result<_>>()?;
        Ok(CnnVgg {
            stages,
            fc1: b.linear("fc1", 4 * c * 3 * 3, w.dense)?,
            fc2: b.linear("fc2", w.dense, 10)?,
            drop_conv: b.dropout(0.1),
            drop_fc: b.dropout(0.3),
            pool: b.max_pool2(),
        })
    }
}

impl Net for CnnVgg {
    fn output_layer(&self) -> &Linear {
        &self.fc2
    }

    fn features_t(&self, x: &Tensor, train: bool) -> candle::Result<Tensor> {
        // 28x28 -> 14x14 -> 7x7 -> 3x3; ReLU rides in the normalization's pass, before the pool.
        let mut x = x.clone();
        for (a, b) in &self.stages {
            let y = a.forward_relu_t(&x, train)?;
            let y = b.forward_relu_pool_t(&y, self.pool, train)?;
            x = self.drop_conv.forward_t(&y, train)?;
        }
        let x = self.fc1.forward(&x.flatten_from(1)?)?.relu()?;
        self.drop_fc.forward_t(&x, train)
    }

    fn first_feature_maps(&self, x: &Tensor) -> candle::Result<Option<Tensor>> {
        Ok(Some(self.stages[0].0.forward_relu_t(x, false)?))
    }

    fn last_conv_maps(&self, x: &Tensor) -> candle::Result<Option<Tensor>> {
        let mut x = x.clone();
        for (i, (a, b)) in self.stages.iter().enumerate() {
            x = b.forward_relu_t(&a.forward_relu_t(&x, false)?, false)?;
            if i + 1 < self.stages.len() {
                x = x.apply(&self.pool)?;
            }
        }
        Ok(Some(x)) // 4Cx7x7
    }

    fn head(&self, maps: &Tensor) -> candle::Result<Tensor> {
        let x = maps.max_pool2d(2)?.flatten_from(1)?;
        self.fc2.forward(&self.fc1.forward(&x)?.relu()?)
    }
}

/// A basic residual block: two conv-BN, identity or strided 1x1-conv-BN shortcut.
struct Block {
    a: ConvBn,
    b: ConvBn,
    shortcut: Option<(Conv2d, BatchNorm2d)>,
    add_relu: AddRelu,
}

impl Block {
    fn new(b: &mut Builder, name: &str, input: usize, output: usize) -> candle::Result<Self> {
        let downsample = input != output;
        let first = if downsample { STRIDE2 } else { PAD1 };
        let shortcut = if downsample {
            let cfg = Conv2dConfig {
                stride: 2,
                ..Default::default()
            };
            Some((
                b.conv2d(&format!("{name}.down.conv"), input, output, 1, cfg, false)?,
                b.batch_norm(&format!("{name}.down.bn"), output)?,
            ))
        } else {
            None
        };
        Ok(Block {
            a: ConvBn::new(b, &format!("{name}.a"), input, output, first)?,
            b: ConvBn::new(b, &format!("{name}.b"), output, output, PAD1)?,
            shortcut,
            add_relu: b.add_relu(),
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> candle::Result<Tensor> {
        let y = self.a.forward_relu_t(x, train)?;
        let y = self.b.forward_t(&y, train)?;
        let skip = match &self.shortcut {
            Some((conv, bn)) => bn.forward_t(&conv.forward_t(x, train)?, train)?,
            None => x.clone(),
        };
        self.add_relu.forward(&y, &skip)
    }
}

/// Stem conv-BN-ReLU(C) at 28x28 and 2x2 max-pooling, residual blocks C (14x14) /
/// 2C (7x7) / 4C (4x4), global average pooling, dense 10 (C = 32). Sized for the CPU budget: one
/// convolution runs at full resolution, and a training step costs ~60 MFLOP per image.
pub struct Resnet {
    stem: ConvBn,
    pool: MaxPool2,
    blocks: Vec<Block>,
    fc: Linear,
}

impl Resnet {
    pub fn new(b: &mut Builder, w: &Widths) -> candle::Result<Self> {
        let c = w.channels;
        Ok(Resnet {
            stem: ConvBn::new(b, "stem", 1, c, PAD1)?,
            pool: b.max_pool2(),
            blocks: vec![
                Block::new(b, "block1", c, c)?,
                Block::new(b, "block2", c, 2 * c)?,
                Block::new(b, "block3", 2 * c, 4 * c)?,
            ],
            fc: b.linear("fc", 4 * c, 10)?,
        })
    }
}

impl Net for Resnet {
    fn output_layer(&self) -> &Linear {
        &self.fc
    }

    fn features_t(&self, x: &Tensor, train: bool) -> candle::Result<Tensor> {
        let mut x = self.stem.forward_relu_pool_t(x, self.pool, train)?; // Cx14x14
        for block in &self.blocks {
            x = block.forward_t(&x, train)?;
        }
        x.mean((2, 3)) // [B, 4C]
    }

    fn first_feature_maps(&self, x: &Tensor) -> candle::Result<Option<Tensor>> {
        Ok(Some(self.stem.forward_relu_t(x, false)?))
    }

    fn last_conv_maps(&self, x: &Tensor) -> candle::Result<Option<Tensor>> {
        let mut x = self.stem.forward_relu_t(x, false)?.apply(&self.pool)?;
        for block in &self.blocks {
            x = block.forward_t(&x, false)?;
        }
        Ok(Some(x)) // 4Cx4x4
    }

    fn head(&self, maps: &Tensor) -> candle::Result<Tensor> {
        self.fc.forward(&maps.mean((2, 3))?)
    }
}

/// A dense layer followed by BatchNorm over its features, ReLU and dropout.
struct DenseBn {
    fc: Linear,
    bn: BatchNorm2d,
}

impl DenseBn {
    fn new(b: &mut Builder, name: &str, input: usize, output: usize) -> candle::Result<Self> {
        Ok(DenseBn {
            fc: b.linear(name, input, output)?,
            bn: b.batch_norm(&format!("{name}_bn"), output)?,
        })
    }

    /// `relu(bn(fc(x)))` of `x [B, F]`.
    fn forward_relu_t(&self, x: &Tensor, train: bool) -> candle::Result<Tensor> {
        // [B, F] as [B, F, 1, 1]: BatchNorm over features, as PyTorch's BatchNorm1d.
        let h = self.fc.forward(x)?.unsqueeze(2)?.unsqueeze(3)?;
        self.bn.forward_relu_t(&h, train)?.flatten_from(1)
    }

    /// The same in evaluation through candle's operations, which record their gradient.
    fn tracked_relu(&self, x: &Tensor) -> candle::Result<Tensor> {
        let h = self.fc.forward(x)?.unsqueeze(2)?.unsqueeze(3)?;
        let generic = self.bn.with_kernels(Kernels::Generic);
        generic.forward_relu_t(&h, false)?.flatten_from(1)
    }
}

/// The R study's first CNN: conv3x3(C) - BN - ReLU twice (unpadded, no pooling: C x 24 x 24),
/// dropout 0.25, dense D - BN - ReLU - dropout 0.25, dense D/4 - BN - ReLU - dropout 0.25,
/// dense 10 (C = 32, D = 512). The study names the layers but not the dropout rates.
pub struct CnnBn {
    stage1: ConvBn,
    stage2: ConvBn,
    dense1: DenseBn,
    dense2: DenseBn,
    fc: Linear,
    dropout: Dropout,
}

impl CnnBn {
    pub fn new(b: &mut Builder, w: &Widths) -> candle::Result<Self> {
        let (c, valid) = (w.channels, Conv2dConfig::default());
        Ok(CnnBn {
            stage1: ConvBn::new(b, "stage1", 1, c, valid)?,
            stage2: ConvBn::new(b, "stage2", c, c, valid)?,
            dense1: DenseBn::new(b, "fc1", c * 24 * 24, w.dense)?,
            dense2: DenseBn::new(b, "fc2", w.dense, w.dense / 4)?,
            fc: b.linear("fc3", w.dense / 4, 10)?,
            dropout: b.dropout(0.25),
        })
    }

    /// The dense layers from the last convolution's activations.
    fn dense_t(&self, maps: &Tensor, train: bool) -> candle::Result<Tensor> {
        let x = self.dropout.forward_t(maps, train)?.flatten_from(1)?;
        let x = self.dense1.forward_relu_t(&x, train)?;
        let x = self.dropout.forward_t(&x, train)?;
        let x = self.dense2.forward_relu_t(&x, train)?;
        self.dropout.forward_t(&x, train)
    }
}

impl Net for CnnBn {
    fn output_layer(&self) -> &Linear {
        &self.fc
    }

    fn features_t(&self, x: &Tensor, train: bool) -> candle::Result<Tensor> {
        let x = self.stage1.forward_relu_t(x, train)?; // Cx26x26
        let x = self.stage2.forward_relu_t(&x, train)?; // Cx24x24
        self.dense_t(&x, train)
    }

    fn first_feature_maps(&self, x: &Tensor) -> candle::Result<Option<Tensor>> {
        Ok(Some(self.stage1.forward_relu_t(x, false)?))
    }

    fn last_conv_maps(&self, x: &Tensor) -> candle::Result<Option<Tensor>> {
        let x = self.stage1.forward_relu_t(x, false)?;
        Ok(Some(self.stage2.forward_relu_t(&x, false)?))
    }

    fn head(&self, maps: &Tensor) -> candle::Result<Tensor> {
        let x = self.dense1.tracked_relu(&maps.flatten_from(1)?)?;
        self.fc.forward(&self.dense2.tracked_relu(&x)?)
    }
}

/// The R study's second CNN: conv3x3(C) - BN - ReLU twice, pool, dropout 0.25, conv3x3(2C) -
/// BN - ReLU, pool, dropout 0.25, conv3x3(4C) - BN - ReLU, pool, dropout 0.25 (all padded:
/// 4C x 3 x 3), then the first CNN's dense layers with dropout 0.5 (C = 32, D = 512). The study
/// names the layers, not the padding or the rates.
pub struct CnnBnPool {
    stage1a: ConvBn,
    stage1b: ConvBn,
    stage2: ConvBn,
    stage3: ConvBn,
    dense1: DenseBn,
    dense2: DenseBn,
    fc: Linear,
    drop_conv: Dropout,
    drop_fc: Dropout,
    pool: MaxPool2,
}

impl CnnBnPool {
    pub fn new(b: &mut Builder, w: &Widths) -> candle::Result<Self> {
        let c = w.channels;
        Ok(CnnBnPool {
            stage1a: ConvBn::new(b, "stage1", 1, c, PAD1)?,
            stage1b: ConvBn::new(b, "stage1b", c, c, PAD1)?,
            stage2: ConvBn::new(b, "stage2", c, 2 * c, PAD1)?,
            stage3: ConvBn::new(b, "stage3", 2 * c, 4 * c, PAD1)?,
            dense1: DenseBn::new(b, "fc1", 4 * c * 3 * 3, w.dense)?,
            dense2: DenseBn::new(b, "fc2", w.dense, w.dense / 4)?,
            fc: b.linear("fc3", w.dense / 4, 10)?,
            drop_conv: b.dropout(0.25),
            drop_fc: b.dropout(0.5),
            pool: b.max_pool2(),
        })
    }

    /// The dense layers from the pooled last convolution `[B, 4C, 3, 3]`.
    fn dense_t(&self, pooled: &Tensor, train: bool) -> candle::Result<Tensor> {
        let x = self.drop_conv.forward_t(pooled, train)?.flatten_from(1)?;
        let x = self.dense1.forward_relu_t(&x, train)?;
        let x = self.drop_fc.forward_t(&x, train)?;
        let x = self.dense2.forward_relu_t(&x, train)?;
        self.drop_fc.forward_t(&x, train)
    }
}

impl Net for CnnBnPool {
    fn output_layer(&self) -> &Linear {
        &self.fc
    }

    fn features_t(&self, x: &Tensor, train: bool) -> candle::Result<Tensor> {
        let x = self.stage1a.forward_relu_t(x, train)?;
        let x = self.stage1b.forward_relu_pool_t(&x, self.pool, train)?; // Cx14x14
        let x = self.drop_conv.forward_t(&x, train)?;
        let x = self.stage2.forward_relu_pool_t(&x, self.pool, train)?; // 2Cx7x7
        let x = self.drop_conv.forward_t(&x, train)?;
        let x = self.stage3.forward_relu_pool_t(&x, self.pool, train)?; // 4Cx3x3
        self.dense_t(&x, train)
    }

    fn first_feature_maps(&self, x: &Tensor) -> candle::Result<Option<Tensor>> {
        Ok(Some(self.stage1a.forward_relu_t(x, false)?))
    }

    fn last_conv_maps(&self, x: &Tensor) -> candle::Result<Option<Tensor>> {
        let x = self.stage1a.forward_relu_t(x, false)?;
        let x = self.stage1b.forward_relu_t(&x, false)?.apply(&self.pool)?;
        let x = self.stage2.forward_relu_t(&x, false)?.apply(&self.pool)?;
        Ok(Some(self.stage3.forward_relu_t(&x, false)?)) // 4Cx7x7
    }

    fn head(&self, maps: &Tensor) -> candle::Result<Tensor> {
        let x = self
            .dense1
            .tracked_relu(&maps.max_pool2d(2)?.flatten_from(1)?)?;
        self.fc.forward(&self.dense2.tracked_relu(&x)?)
    }
}
