//! The eight architectures. Each maps `[B, 1, 28, 28]` to logits `[B, 10]`.
//!
//! Max-pooling comes before ReLU where both follow a layer: the two commute (ReLU is
//! monotone), and ReLU then touches a quarter of the elements.
use candle::{Module, Tensor};
use candle_nn::{Conv2dConfig, Linear};

use crate::builder::{Builder, Dropout};
use crate::conv::Conv2d;
use crate::conv_norm::{conv_norm_t, After};
use crate::kernels::{AddRelu, MaxPool2};
use crate::norm::BatchNorm2d;
use crate::recurrent::Lstm as LstmLayer;

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

/// conv3x3(32) - pool - relu - conv3x3(32) - pool - relu - dense 100 - relu - dense 10.
pub struct Cnn {
    conv1: Conv2d,
    conv2: Conv2d,
    fc1: Linear,
    fc2: Linear,
}

impl Cnn {
    pub fn new(b: &mut Builder) -> candle::Result<Self> {
        let valid = Conv2dConfig::default();
        Ok(Cnn {
            conv1: b.conv2d("conv1", 1, 32, 3, valid, true)?,
            conv2: b.conv2d("conv2", 32, 32, 3, valid, true)?,
            fc1: b.linear("fc1", 32 * 5 * 5, 100)?,
            fc2: b.linear("fc2", 100, 10)?,
        })
    }
}

impl Net for Cnn {
    fn output_layer(&self) -> &Linear {
        &self.fc2
    }

    fn features_t(&self, x: &Tensor, train: bool) -> candle::Result<Tensor> {
        let x = self.conv1.forward_pool_relu_t(x, train)?; // 32x13x13
        let x = self.conv2.forward_pool_relu_t(&x, train)?; // 32x5x5
        self.fc1.forward(&x.flatten_from(1)?)?.relu()
    }

    fn first_feature_maps(&self, x: &Tensor) -> candle::Result<Option<Tensor>> {
        Ok(Some(self.conv1.forward_t(x, false)?.relu()?))
    }

    fn last_conv_maps(&self, x: &Tensor) -> candle::Result<Option<Tensor>> {
        let x = self.conv1.forward_pool_relu_t(x, false)?;
        Ok(Some(self.conv2.forward_t(&x, false)?.relu()?)) // 32x11x11
    }

    fn head(&self, maps: &Tensor) -> candle::Result<Tensor> {
        let x = maps.max_pool2d(2)?.flatten_from(1)?;
        self.fc2.forward(&self.fc1.forward(&x)?.relu()?)
    }
}

/// LSTM(128) over the 28 rows (28 time steps of 28 features), last hidden state - dense 10.
pub struct Lstm {
    lstm: LstmLayer,
    fc: Linear,
}

impl Lstm {
    pub fn new(b: &mut Builder) -> candle::Result<Self> {
        Ok(Lstm {
            lstm: b.lstm("lstm", 28, 128)?,
            fc: b.linear("fc", 128, 10)?,
        })
    }
}

impl Net for Lstm {
    fn output_layer(&self) -> &Linear {
        &self.fc
    }

    fn features_t(&self, x: &Tensor, train: bool) -> candle::Result<Tensor> {
        let rows = x.squeeze(1)?; // [B, 28 steps, 28 features]
        self.lstm.last_hidden_t(&rows, train)
    }
}

/// 784 - 256 - 128 - 10 with ReLU and dropout 0.2 after each hidden layer.
pub struct Mlp {
    fc1: Linear,
    fc2: Linear,
    fc3: Linear,
    dropout: Dropout,
}

impl Mlp {
    pub fn new(b: &mut Builder) -> candle::Result<Self> {
        Ok(Mlp {
            fc1: b.linear("fc1", 784, 256)?,
            fc2: b.linear("fc2", 256, 128)?,
            fc3: b.linear("fc3", 128, 10)?,
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

/// conv3x3(32, pad 1) - pool - conv3x3(64, pad 1) - pool - dense 128 - dropout 0.5 - dense 10.
pub struct CnnWide {
    conv1: Conv2d,
    conv2: Conv2d,
    fc1: Linear,
    fc2: Linear,
    dropout: Dropout,
}

impl CnnWide {
    pub fn new(b: &mut Builder) -> candle::Result<Self> {
        Ok(CnnWide {
            conv1: b.conv2d("conv1", 1, 32, 3, PAD1, true)?,
            conv2: b.conv2d("conv2", 32, 64, 3, PAD1, true)?,
            fc1: b.linear("fc1", 64 * 7 * 7, 128)?,
            fc2: b.linear("fc2", 128, 10)?,
            dropout: b.dropout(0.5),
        })
    }
}

impl Net for CnnWide {
    fn output_layer(&self) -> &Linear {
        &self.fc2
    }

    fn features_t(&self, x: &Tensor, train: bool) -> candle::Result<Tensor> {
        let x = self.conv1.forward_pool_relu_t(x, train)?; // 32x14x14
        let x = self.conv2.forward_pool_relu_t(&x, train)?; // 64x7x7
        let x = self.fc1.forward(&x.flatten_from(1)?)?.relu()?;
        self.dropout.forward_t(&x, train)
    }

    fn first_feature_maps(&self, x: &Tensor) -> candle::Result<Option<Tensor>> {
        Ok(Some(self.conv1.forward_t(x, false)?.relu()?))
    }

    fn last_conv_maps(&self, x: &Tensor) -> candle::Result<Option<Tensor>> {
        let x = self.conv1.forward_pool_relu_t(x, false)?;
        Ok(Some(self.conv2.forward_t(&x, false)?.relu()?)) // 64x14x14
    }

    fn head(&self, maps: &Tensor) -> candle::Result<Tensor> {
        let x = maps.max_pool2d(2)?.flatten_from(1)?;
        self.fc2.forward(&self.fc1.forward(&x)?.relu()?)
    }
}

/// The depth study's deeper CNN: conv3x3(32, pad 1) - pool - conv3x3(64, pad 1) - pool -
/// conv3x3(128, pad 1) - ReLU - dense 256 - ReLU - dropout 0.5 - dense 10 (1,701,130 params).
pub struct Cnn3Conv {
    conv1: Conv2d,
    conv2: Conv2d,
    conv3: Conv2d,
    fc1: Linear,
    fc2: Linear,
    dropout: Dropout,
}

impl Cnn3Conv {
    pub fn new(b: &mut Builder) -> candle::Result<Self> {
        Ok(Cnn3Conv {
            conv1: b.conv2d("conv1", 1, 32, 3, PAD1, true)?,
            conv2: b.conv2d("conv2", 32, 64, 3, PAD1, true)?,
            conv3: b.conv2d("conv3", 64, 128, 3, PAD1, true)?,
            fc1: b.linear("fc1", 128 * 7 * 7, 256)?,
            fc2: b.linear("fc2", 256, 10)?,
            dropout: b.dropout(0.5),
        })
    }
}

impl Net for Cnn3Conv {
    fn output_layer(&self) -> &Linear {
        &self.fc2
    }

    fn features_t(&self, x: &Tensor, train: bool) -> candle::Result<Tensor> {
        let x = self.conv1.forward_pool_relu_t(x, train)?; // 32x14x14
        let x = self.conv2.forward_pool_relu_t(&x, train)?; // 64x7x7
        let x = self.conv3.forward_t(&x, train)?.relu()?; // 128x7x7
        let x = self.fc1.forward(&x.flatten_from(1)?)?.relu()?;
        self.dropout.forward_t(&x, train)
    }

    fn first_feature_maps(&self, x: &Tensor) -> candle::Result<Option<Tensor>> {
        Ok(Some(self.conv1.forward_t(x, false)?.relu()?))
    }

    fn last_conv_maps(&self, x: &Tensor) -> candle::Result<Option<Tensor>> {
        let x = self.conv1.forward_pool_relu_t(x, false)?;
        let x = self.conv2.forward_pool_relu_t(&x, false)?;
        Ok(Some(self.conv3.forward_t(&x, false)?.relu()?)) // 128x7x7
    }

    fn head(&self, maps: &Tensor) -> candle::Result<Tensor> {
        self.fc2
            .forward(&self.fc1.forward(&maps.flatten_from(1)?)?.relu()?)
    }
}

/// The ANN-vs-CNN study's BatchNorm MLP: 784 - 512 - 256 - 128 - 10, each hidden layer dense,
/// BatchNorm, ReLU, dropout 0.3 (569,226 params).
pub struct MlpBn {
    hidden: Vec<(Linear, BatchNorm2d)>,
    out: Linear,
    dropout: Dropout,
}

impl MlpBn {
    pub fn new(b: &mut Builder) -> candle::Result<Self> {
        let widths = [784, 512, 256, 128];
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
            out: b.linear("fc4", 128, 10)?,
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

/// Three stages 32-64-128 (conv-BN, pool, ReLU; stage 3 has two convolutions),
/// dropout 0.25 after each stage, dense 256 - dropout 0.5 - dense 10.
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
    pub fn new(b: &mut Builder) -> candle::Result<Self> {
        Ok(CnnDeep {
            stage1: ConvBn::new(b, "stage1", 1, 32, PAD1)?,
            stage2: ConvBn::new(b, "stage2", 32, 64, PAD1)?,
            stage3a: ConvBn::new(b, "stage3a", 64, 128, PAD1)?,
            stage3b: ConvBn::new(b, "stage3b", 128, 128, PAD1)?,
            fc1: b.linear("fc1", 128 * 3 * 3, 256)?,
            fc2: b.linear("fc2", 256, 10)?,
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
        let x = self.stage1.forward_relu_pool_t(x, self.pool, train)?; // 32x14x14
        let x = self.drop_conv.forward_t(&x, train)?;
        let x = self.stage2.forward_relu_pool_t(&x, self.pool, train)?; // 64x7x7
        let x = self.drop_conv.forward_t(&x, train)?;
        let x = self.stage3a.forward_relu_t(&x, train)?;
        let x = self.stage3b.forward_relu_pool_t(&x, self.pool, train)?; // 128x3x3
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
        Ok(Some(self.stage3b.forward_relu_t(&x, false)?)) // 128x7x7
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

/// Stem conv-BN-ReLU(32) at 28x28 and 2x2 max-pooling, residual blocks 32 (14x14) /
/// 64 (7x7) / 128 (4x4), global average pooling, dense 10. Sized for the CPU budget: one
/// convolution runs at full resolution, and a training step costs ~60 MFLOP per image.
pub struct Resnet {
    stem: ConvBn,
    pool: MaxPool2,
    blocks: Vec<Block>,
    fc: Linear,
}

impl Resnet {
    pub fn new(b: &mut Builder) -> candle::Result<Self> {
        Ok(Resnet {
            stem: ConvBn::new(b, "stem", 1, 32, PAD1)?,
            pool: b.max_pool2(),
            blocks: vec![
                Block::new(b, "block1", 32, 32)?,
                Block::new(b, "block2", 32, 64)?,
                Block::new(b, "block3", 64, 128)?,
            ],
            fc: b.linear("fc", 128, 10)?,
        })
    }
}

impl Net for Resnet {
    fn output_layer(&self) -> &Linear {
        &self.fc
    }

    fn features_t(&self, x: &Tensor, train: bool) -> candle::Result<Tensor> {
        let mut x = self.stem.forward_relu_pool_t(x, self.pool, train)?; // 32x14x14
        for block in &self.blocks {
            x = block.forward_t(&x, train)?;
        }
        x.mean((2, 3)) // [B, 128]
    }

    fn first_feature_maps(&self, x: &Tensor) -> candle::Result<Option<Tensor>> {
        Ok(Some(self.stem.forward_relu_t(x, false)?))
    }

    fn last_conv_maps(&self, x: &Tensor) -> candle::Result<Option<Tensor>> {
        let mut x = self.stem.forward_relu_t(x, false)?.apply(&self.pool)?;
        for block in &self.blocks {
            x = block.forward_t(&x, false)?;
        }
        Ok(Some(x)) // 128x4x4
    }

    fn head(&self, maps: &Tensor) -> candle::Result<Tensor> {
        self.fc.forward(&maps.mean((2, 3))?)
    }
}
