//! The fused CPU kernels against the generic candle paths, side by side in one run:
//! forward + backward of 2x2 max-pooling on the cnn's first activation (batch 256, 32x26x26).
use candle::{Device, Tensor, Var};
use criterion::{criterion_group, criterion_main, Criterion};
use fmnist_models::kernels::{max_pool2_with, Kernels};

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
    for (name, k) in [("generic", Kernels::Generic), ("fused", Kernels::Fused)] {
        group.bench_function(name, |b| {
            b.iter(|| {
                max_pool2_with(x.as_tensor(), k)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, max_pool);
criterion_main!(benches);
