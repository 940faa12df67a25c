//! The fused CPU kernels against the generic candle paths, side by side in one run, forward +
//! backward: 2x2 max-pooling on the cnn's first activation (32x26x26), the cnn's second
//! convolution (32 -> 32, 3x3 on 13x13) and the LSTM-128 over the 28 rows at batch 256, and
//! BatchNorm + ReLU on a 32x28x28 activation at batch 128 (the resnet's stem).
use candle::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion};
use fmnist_models::conv::Conv2d;
use fmnist_models::kernels::{Kernels, MaxPool2};
use fmnist_models::norm::BatchNorm2d;
use fmnist_models::recurrent::Lstm;

/// Forward + backward of `forward` under the generic and then the fused kernels, side by side.
fn fused_and_generic(
    group: &mut BenchmarkGroup<WallTime>,
    [generic, fused]: [&str; 2],
    forward: impl Fn(Kernels) -> Tensor,
) {
    for (name, k) in [(generic, Kernels::Generic), (fused, Kernels::Fused)] {
        group.bench_function(name, |b| {
            b.iter(|| forward(k).sum_all().unwrap().backward().unwrap())
        });
    }
}

fn max_pool(c: &mut Criterion) {
    let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (256, 32, 26, 26), &Device::Cpu).unwrap())
        .unwrap();
    let mut group = c.benchmark_group("max_pool_2x2 fwd+bwd 256x32x26x26");
    group.sample_size(20);
    group.bench_function("candle max_pool2d (wrong gradient)", |b| {
        b.iter(|| {
            x.as_tensor()
                .max_pool2d(2)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap()
        })
    });
    fused_and_generic(&mut group, ["generic", "fused"], |k| {
        x.as_tensor().apply(&MaxPool2 { kernels: k }).unwrap()
    });
    group.finish();
}

fn conv(c: &mut Criterion) {
    let dev = Device::Cpu;
    let x = Var::randn(0f32, 1.0, (256, 32, 13, 13), &dev).unwrap();
    let map = VarMap::new();
    let vb = VarBuilder::from_varmap(&map, DType::F32, &dev);
    let conv = Conv2d::new(
        candle_nn::conv2d(32, 32, 3, Default::default(), vb).unwrap(),
        Kernels::Fused,
    );
    let mut group = c.benchmark_group("conv2d 3x3 32->32 fwd+bwd 256x32x13x13");
    group.sample_size(20);
    fused_and_generic(
        &mut group,
        ["generic (candle conv2d)", "fused (im2col + GEMM)"],
        |k| conv.with_kernels(k).forward_t(x.as_tensor(), true).unwrap(),
    );
    group.finish();
}

fn batch_norm(c: &mut Criterion) {
    let dev = Device::Cpu;
    let x = Var::randn(0f32, 1.0, (128, 32, 28, 28), &dev).unwrap();
    let map = VarMap::new();
    let vb = VarBuilder::from_varmap(&map, DType::F32, &dev);
    let bn = BatchNorm2d::new(candle_nn::batch_norm(32, 1e-5, vb).unwrap(), Kernels::Fused);
    let mut group = c.benchmark_group("batch norm + relu, training, fwd+bwd 128x32x28x28");
    group.sample_size(20);
    fused_and_generic(
        &mut group,
        [
            "generic (candle-nn BatchNorm, relu)",
            "fused (two passes each way)",
        ],
        |k| {
            bn.with_kernels(k)
                .forward_relu_t(x.as_tensor(), true)
                .unwrap()
        },
    );
    group.finish();
}

fn lstm(c: &mut Criterion) {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (256, 28, 28), &dev).unwrap();
    let map = VarMap::new();
    let vb = VarBuilder::from_varmap(&map, DType::F32, &dev);
    let init = candle_nn::Init::Uniform {
        lo: -1.0 / 128f64.sqrt(),
        up: 1.0 / 128f64.sqrt(),
    };
    let get = |name: &str, shape: &[usize]| vb.get_with_hints(shape, name, init).unwrap();
    let layer = Lstm::new(
        get("weight_ih_l0", &[512, 28]),
        get("weight_hh_l0", &[512, 128]),
        get("bias_ih_l0", &[512]),
        get("bias_hh_l0", &[512]),
        Kernels::Fused,
    );
    let mut group = c.benchmark_group("lstm-128 over 28 rows fwd+bwd batch 256");
    group.sample_size(10);
    // candle-nn's own layer on the same weights: the generic path it replaced.
    let candle_layer = {
        use candle_nn::rnn::RNN;
        let layer = candle_nn::lstm(28, 128, Default::default(), vb.clone()).unwrap();
        move |x: &Tensor| layer.seq(x).unwrap().last().unwrap().h.clone()
    };
    group.bench_function("candle-nn LSTM layer", |b| {
        b.iter(|| candle_layer(&x).sum_all().unwrap().backward().unwrap())
    });
    fused_and_generic(
        &mut group,
        ["generic (candle operations)", "fused (one recurrence op)"],
        |k| layer.with_kernels(k).last_hidden_t(&x, true).unwrap(),
    );
    group.finish();
}

criterion_group!(benches, max_pool, conv, batch_norm, lstm);
criterion_main!(benches);
