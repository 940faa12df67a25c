//! Every model of the registry: output shape, exact parameter count, train/eval modes, seeding,
//! checkpoint round trip, and that a few Adam steps on a fixed batch lower the loss.
use candle::{DType, Device, Tensor};
use candle_nn::optim::{AdamW, Optimizer, ParamsAdamW};
use fmnist_models::{Init, Model, ModelKind};

fn batch(b: usize) -> Tensor {
    let v: Vec<f32> = (0..b * 784)
        .map(|i| ((i * 7919) % 256) as f32 / 255.0)
        .collect();
    Tensor::from_vec(v, (b, 1, 28, 28), &Device::Cpu).unwrap()
}

/// The flattened output of `m` on `x`.
fn outputs(m: &Model, x: &Tensor, train: bool) -> Vec<f32> {
    m.forward_t(x, train)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

#[test]
fn shapes_and_exact_parameter_counts() {
    let expected = [
        (ModelKind::Cnn, 90_678),
        (ModelKind::Lstm, 82_186),
        (ModelKind::Mlp, 235_146),
        (ModelKind::CnnWide, 421_642),
        (ModelKind::CnnDeep, 538_346),
        (ModelKind::Resnet, 308_074),
    ];
    for (kind, params) in expected {
        let m = Model::new(kind, 0, Init::Pytorch, &Device::Cpu).unwrap();
        assert_eq!(m.param_count(), params, "{kind}");
        let y = m.forward_t(&batch(3), false).unwrap();
        assert_eq!(y.dims(), &[3, 10], "{kind}");
    }
}

#[test]
fn same_seed_same_parameters_other_seed_other_parameters() {
    let logits = |seed| {
        outputs(
            &Model::new(ModelKind::Cnn, seed, Init::Pytorch, &Device::Cpu).unwrap(),
            &batch(2),
            false,
        )
    };
    assert_eq!(logits(7), logits(7));
    assert_ne!(logits(7), logits(8));
}

/// The host values of a model's parameter `name`.
fn parameter(m: &Model, name: &str) -> Vec<f32> {
    let vars = m.named_vars();
    let (_, var) = vars
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no parameter {name}"));
    var.as_tensor().flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn keras_init_is_glorot_with_zero_biases_and_keeps_every_shape() {
    for kind in ModelKind::ALL {
        let keras = Model::new(kind, 0, Init::Keras, &Device::Cpu).unwrap();
        let pytorch = Model::new(kind, 0, Init::Pytorch, &Device::Cpu).unwrap();
        assert_eq!(keras.param_count(), pytorch.param_count(), "{kind}");
    }
    let m = Model::new(ModelKind::Cnn, 0, Init::Keras, &Device::Cpu).unwrap();
    // Glorot bounds: conv1 fan-in 1·9, fan-out 32·9; fc1 800 -> 100.
    for (name, bound) in [
        ("conv1.weight", (6.0f32 / (9.0 + 288.0)).sqrt()),
        ("fc1.weight", (6.0f32 / 900.0).sqrt()),
    ] {
        let w = parameter(&m, name);
        let max = w.iter().fold(0f32, |a, v| a.max(v.abs()));
        assert!(
            max <= bound && max > 0.95 * bound,
            "{name}: max {max}, bound {bound}"
        );
    }
    for name in ["conv1.bias", "conv2.bias", "fc1.bias", "fc2.bias"] {
        assert!(parameter(&m, name).iter().all(|&b| b == 0.0), "{name}");
    }
}

#[test]
fn keras_lstm_init_has_orthogonal_recurrent_weights_and_forget_bias_one() {
    let m = Model::new(ModelKind::Lstm, 3, Init::Keras, &Device::Cpu).unwrap();
    let (hidden, gates) = (128, 512);
    let w_hh = parameter(&m, "lstm.weight_hh_l0");
    assert_eq!(w_hh.len(), gates * hidden);
    // Columns of the [4H, H] matrix are orthonormal: W_hhᵀ·W_hh = I.
    for a in 0..hidden {
        for b in 0..hidden {
            let dot: f32 = (0..gates)
                .map(|r| w_hh[r * hidden + a] * w_hh[r * hidden + b])
                .sum();
            let want = if a == b { 1.0 } else { 0.0 };
            assert!((dot - want).abs() < 1e-5, "column {a}·{b} = {dot}");
        }
    }
    let b_ih = parameter(&m, "lstm.bias_ih_l0");
    for (i, &b) in b_ih.iter().enumerate() {
        // Gates in PyTorch order i, f, g, o: the second block is the forget gate.
        assert_eq!(b, if i / hidden == 1 { 1.0 } else { 0.0 }, "bias_ih[{i}]");
    }
    assert!(parameter(&m, "lstm.bias_hh_l0").iter().all(|&b| b == 0.0));
    let bound = (6.0f32 / (28.0 + 512.0)).sqrt();
    let w_ih = parameter(&m, "lstm.weight_ih_l0");
    assert!(w_ih.iter().all(|v| v.abs() <= bound));
    assert_ne!(
        w_hh,
        parameter(
            &Model::new(ModelKind::Lstm, 4, Init::Keras, &Device::Cpu).unwrap(),
            "lstm.weight_hh_l0"
        ),
        "another seed draws other weights"
    );
}

#[test]
fn eval_mode_is_deterministic_and_differs_from_train_mode() {
    for kind in [
        ModelKind::Mlp,
        ModelKind::CnnWide,
        ModelKind::CnnDeep,
        ModelKind::Resnet,
    ] {
        let m = Model::new(kind, 1, Init::Pytorch, &Device::Cpu).unwrap();
        let x = batch(4);
        let out = |train| outputs(&m, &x, train);
        let e1 = out(false);
        let t = out(true);
        let e2 = out(false);
        assert_ne!(e1, t, "{kind}: train mode equals eval mode");
        if matches!(kind, ModelKind::Mlp | ModelKind::CnnWide) {
            assert_eq!(e1, e2, "{kind}: eval output changed");
        } else {
            // BatchNorm: the train-mode pass moved the running statistics, eval sees them.
            assert_ne!(
                e1, e2,
                "{kind}: running statistics were not updated in train mode"
            );
            assert_eq!(e2, out(false), "{kind}: eval output changed");
        }
    }
}

#[test]
fn checkpoint_round_trip_gives_identical_logits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    let a = Model::new(ModelKind::CnnDeep, 3, Init::Pytorch, &Device::Cpu).unwrap();
    a.forward_t(&batch(4), true).unwrap(); // move BN statistics away from their init
    a.save(&path).unwrap();
    let mut b = Model::new(ModelKind::CnnDeep, 99, Init::Pytorch, &Device::Cpu).unwrap();
    b.load(&path).unwrap();
    let x = batch(5);
    let la = outputs(&a, &x, false);
    let lb = outputs(&b, &x, false);
    assert_eq!(la, lb);
}

#[test]
fn loading_another_models_checkpoint_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cnn.safetensors");
    Model::new(ModelKind::Cnn, 0, Init::Pytorch, &Device::Cpu)
        .unwrap()
        .save(&path)
        .unwrap();
    let mut wide = Model::new(ModelKind::CnnWide, 0, Init::Pytorch, &Device::Cpu).unwrap();
    let msg = wide.load(&path).unwrap_err().to_string();
    assert!(
        msg.contains("tensor 'conv2.bias' has shape [32], model 'cnn-wide' expects [64]"),
        "{msg}"
    );
    let mut lstm = Model::new(ModelKind::Lstm, 0, Init::Pytorch, &Device::Cpu).unwrap();
    let msg = lstm.load(&path).unwrap_err().to_string();
    assert!(
        msg.contains("is missing: the checkpoint is not a 'lstm' model"),
        "{msg}"
    );
    std::fs::write(&path, b"not a checkpoint").unwrap();
    let msg = lstm.load(&path).unwrap_err().to_string();
    assert!(
        msg.contains("not a readable safetensors checkpoint"),
        "{msg}"
    );
}

#[test]
fn a_few_adam_steps_lower_the_loss_of_every_model() {
    let x = batch(16);
    let y = Tensor::from_vec(
        (0..16u32).map(|i| i % 10).collect::<Vec<_>>(),
        16,
        &Device::Cpu,
    )
    .unwrap();
    for kind in ModelKind::ALL {
        let m = Model::new(kind, 5, Init::Pytorch, &Device::Cpu).unwrap();
        let vars = m.trainable_vars().into_iter().map(|(_, v)| v).collect();
        let mut opt = AdamW::new(
            vars,
            ParamsAdamW {
                lr: 1e-3,
                weight_decay: 0.0,
                ..Default::default()
            },
        )
        .unwrap();
        let loss =
            |train| candle_nn::loss::cross_entropy(&m.forward_t(&x, train).unwrap(), &y).unwrap();
        // Train mode with the same dropout masks before and after: BatchNorm uses the batch's
        // statistics, so the two losses differ only by the parameters.
        let measure = || {
            m.reseed_dropout(0);
            loss(true)
                .to_dtype(DType::F32)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        let before = measure();
        for _ in 0..8 {
            opt.backward_step(&loss(true)).unwrap();
        }
        let after = measure();
        assert!(after < before, "{kind}: loss {before} -> {after}");
    }
}

#[test]
fn max_pool_gradient_is_right_on_odd_sizes() {
    // 3x3 input: floor pooling reads only the top-left 2x2 window, whose maximum is 5 at (1, 0).
    let x = candle::Var::from_tensor(
        &Tensor::new(
            &[[[[1f32, 2.0, 9.0], [5.0, 3.0, 8.0], [7.0, 6.0, 4.0]]]],
            &Device::Cpu,
        )
        .unwrap(),
    )
    .unwrap();
    let y = fmnist_models::nets::max_pool2(x.as_tensor()).unwrap();
    assert_eq!(
        y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        vec![5.0]
    );
    let grads = y.sum_all().unwrap().backward().unwrap();
    let g = grads
        .get(x.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(g, vec![0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
}

#[test]
fn analytic_gradients_match_finite_differences() {
    // For every parameter tensor of every model, the coordinate with the largest gradient is
    // checked against a central difference (train mode; dropout masks replayed by reseeding).
    let x = batch(4);
    let y = Tensor::new(&[1u32, 3, 5, 7], &Device::Cpu).unwrap();
    for kind in ModelKind::ALL {
        let m = Model::new(kind, 3, Init::Pytorch, &Device::Cpu).unwrap();
        let loss = || {
            m.reseed_dropout(0);
            candle_nn::loss::cross_entropy(&m.forward_t(&x, true).unwrap(), &y).unwrap()
        };
        let grads = loss().backward().unwrap();
        for (name, var) in m.trainable_vars() {
            let g = grads
                .get(var.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let w = var
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let i = (0..g.len())
                .max_by(|&a, &b| g[a].abs().total_cmp(&g[b].abs()))
                .unwrap();
            let at = |delta: f32| {
                let mut v = w.clone();
                v[i] += delta;
                var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                loss().to_scalar::<f32>().unwrap()
            };
            let eps = 5e-3;
            let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
            at(0.0);
            let rel = (g[i] - numeric).abs() / g[i].abs().max(1e-4);
            assert!(
                rel < 0.15,
                "{kind} {name}[{i}]: analytic {} vs numeric {numeric}",
                g[i]
            );
        }
    }
}
