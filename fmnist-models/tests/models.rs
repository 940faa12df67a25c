//! Every model of the registry: output shape, exact parameter count, train/eval modes, seeding,
//! checkpoint round trip, and that a few Adam steps on a fixed batch lower the loss.
use candle::{DType, Device, Tensor};
use candle_nn::optim::{AdamW, Optimizer, ParamsAdamW};
use fmnist_models::{
    Checkpoint, CheckpointConfig, Classifier, Init, MaxPool2, Model, ModelConfig, ModelError,
    ModelKind, Size,
};

/// `kind` built from `seed` with the `init` scheme, on the CPU.
fn build(kind: ModelKind, seed: u64, init: Init) -> fmnist_models::Result<Model> {
    ModelConfig {
        init,
        ..ModelConfig::new(kind)
    }
    .build(seed, &Device::Cpu)
}

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
fn the_embedding_is_what_the_last_layer_reads() {
    let widths = [
        (ModelKind::Cnn, 100),
        (ModelKind::Lstm, 128),
        (ModelKind::Mlp, 128),
        (ModelKind::CnnWide, 128),
        (ModelKind::CnnDeep, 256),
        (ModelKind::CnnVgg, 128),
        (ModelKind::Resnet, 128),
        (ModelKind::Cnn3Conv, 256),
        (ModelKind::MlpBn, 128),
        (ModelKind::CnnBn, 128),
        (ModelKind::CnnBnPool, 128),
        (ModelKind::LstmDense, 128),
    ];
    assert_eq!(widths.len(), ModelKind::ALL.len());
    for (kind, width) in widths {
        let m = build(kind, 1, Init::Pytorch).unwrap();
        let x = batch(2);
        let e = m.embedding(&x).unwrap();
        assert_eq!(e.dims(), &[2, width], "{kind}");
        // The logits are the last layer of the embedding (by hand: e · Wᵀ + b).
        let vars: std::collections::HashMap<String, Tensor> = m
            .named_vars()
            .into_iter()
            .map(|(n, v)| (n, v.as_tensor().clone()))
            .collect();
        let last = ["fc2", "fc", "fc3", "fc4", "head"]
            .iter()
            .find(|l| {
                vars.get(&format!("{l}.weight"))
                    .is_some_and(|w| w.dims() == [10, width])
            })
            .unwrap();
        let w = &vars[&format!("{last}.weight")];
        let b = &vars[&format!("{last}.bias")];
        let by_hand = e
            .matmul(&w.t().unwrap())
            .unwrap()
            .broadcast_add(b)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let logits = outputs(&m, &x, false);
        for (a, b) in by_hand.iter().zip(&logits) {
            assert!((a - b).abs() < 1e-5, "{kind}: {a} vs {b}");
        }
    }
}

#[test]
fn shapes_and_exact_parameter_counts() {
    let expected = [
        (ModelKind::Cnn, 90_678),
        (ModelKind::Lstm, 82_186),
        (ModelKind::Mlp, 235_146),
        (ModelKind::CnnWide, 421_642),
        (ModelKind::CnnDeep, 538_346),
        (ModelKind::CnnVgg, 435_754),
        (ModelKind::Resnet, 308_074),
        (ModelKind::Cnn3Conv, 1_701_130),
        (ModelKind::MlpBn, 569_226),
        (ModelKind::CnnBn, 9_515_562),
        (ModelKind::CnnBnPool, 760_746),
        (ModelKind::LstmDense, 98_698),
    ];
    assert_eq!(
        expected.len(),
        ModelKind::ALL.len(),
        "every model has a count"
    );
    for (kind, params) in expected {
        let m = build(kind, 0, Init::Pytorch).unwrap();
        assert_eq!(m.param_count(), params, "{kind}");
        let y = m.forward_t(&batch(3), false).unwrap();
        assert_eq!(y.dims(), &[3, 10], "{kind}");
    }
}

/// `kind` at the widths `size` gives it.
fn sized(kind: ModelKind, size: Size) -> Model {
    ModelConfig {
        size,
        ..ModelConfig::new(kind)
    }
    .build(0, &Device::Cpu)
    .unwrap()
}

#[test]
fn widths_are_configuration_with_exact_parameter_counts() {
    let none = Size::default();
    // LSTM(H) over 28 inputs: 4H(28 + H) weights and 8H biases; dense 10 from the state.
    let lstm = |h: usize, dirs: usize| dirs * (4 * h * (28 + h) + 8 * h) + dirs * h * 10 + 10;
    for (size, params) in [
        (
            Size {
                hidden: Some(64),
                ..none
            },
            lstm(64, 1),
        ),
        (
            Size {
                hidden: Some(256),
                ..none
            },
            lstm(256, 1),
        ),
        (
            Size {
                bidirectional: Some(true),
                ..none
            },
            lstm(128, 2),
        ),
        (
            Size {
                dense: Some(32),
                ..none
            },
            // The head: 128 -> 32 -> 10.
            4 * 128 * (28 + 128) + 8 * 128 + 128 * 32 + 32 + 32 * 10 + 10,
        ),
    ] {
        let m = sized(ModelKind::Lstm, size);
        assert_eq!(m.param_count(), params, "{size:?}");
        assert_eq!(m.forward_t(&batch(3), true).unwrap().dims(), &[3, 10]);
    }
    assert_eq!(lstm(128, 1), 82_186, "the formula gives the preset's count");
    // A second layer reads the first's 128 states; attention adds W [128, 128], b and v [128].
    let second_layer = 4 * 128 * (128 + 128) + 8 * 128;
    let attention = 128 * 128 + 128 + 128;
    for (size, params) in [
        (
            Size {
                layers: Some(2),
                ..none
            },
            lstm(128, 1) + second_layer,
        ),
        (
            Size {
                attention: Some(true),
                ..none
            },
            lstm(128, 1) + attention,
        ),
        (
            // Both directions in both layers: the second reads 256 features per row.
            Size {
                layers: Some(2),
                bidirectional: Some(true),
                attention: Some(true),
                ..none
            },
            lstm(128, 2) + 2 * (4 * 128 * (256 + 128) + 8 * 128) + (256 * 256 + 256 + 256),
        ),
    ] {
        let m = sized(ModelKind::Lstm, size);
        assert_eq!(m.param_count(), params, "{size:?}");
        assert_eq!(m.forward_t(&batch(3), true).unwrap().dims(), &[3, 10]);
        assert_eq!(m.forward_t(&batch(3), false).unwrap().dims(), &[3, 10]);
    }
    // cnn at C channels: conv 1->C and C->C (3x3, biases), dense 25C -> 100 -> 10.
    let cnn = |c: usize| (9 * c + c) + (9 * c * c + c) + (25 * c * 100 + 100) + 1010;
    assert_eq!(cnn(32), 90_678);
    for c in [16, 64] {
        let m = sized(
            ModelKind::Cnn,
            Size {
                channels: Some(c),
                ..none
            },
        );
        assert_eq!(m.param_count(), cnn(c), "cnn channels {c}");
        assert_eq!(m.forward_t(&batch(2), false).unwrap().dims(), &[2, 10]);
    }
    // lstm-dense without its head is lstm.
    let headless = sized(
        ModelKind::LstmDense,
        Size {
            dense: Some(0),
            ..none
        },
    );
    assert_eq!(headless.param_count(), 82_186);
    // The presets' widths build the presets: the same parameters, drawn in the same order.
    let preset = build(ModelKind::Resnet, 0, Init::Pytorch).unwrap();
    let explicit = sized(
        ModelKind::Resnet,
        Size {
            channels: Some(32),
            ..none
        },
    );
    assert_eq!(
        outputs(&preset, &batch(2), false),
        outputs(&explicit, &batch(2), false)
    );
}

#[test]
fn a_width_out_of_range_is_refused_naming_its_key() {
    let err = |kind, size| {
        ModelConfig {
            size,
            ..ModelConfig::new(kind)
        }
        .build(0, &Device::Cpu)
        .err()
        .expect("refused")
        .to_string()
    };
    let hidden0 = Size {
        hidden: Some(0),
        ..Size::default()
    };
    assert_eq!(err(ModelKind::Lstm, hidden0), "hidden: must be at least 1");
    let head = Size {
        dense: Some(64),
        ..Size::default()
    };
    assert_eq!(
        err(ModelKind::Resnet, head),
        "dense: resnet has no dense hidden layer"
    );
}

#[test]
fn same_seed_same_parameters_other_seed_other_parameters() {
    let logits = |seed| {
        outputs(
            &build(ModelKind::Cnn, seed, Init::Pytorch).unwrap(),
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
        let keras = build(kind, 0, Init::Keras).unwrap();
        let pytorch = build(kind, 0, Init::Pytorch).unwrap();
        assert_eq!(keras.param_count(), pytorch.param_count(), "{kind}");
    }
    let m = build(ModelKind::Cnn, 0, Init::Keras).unwrap();
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
    let m = build(ModelKind::Lstm, 3, Init::Keras).unwrap();
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
            &build(ModelKind::Lstm, 4, Init::Keras).unwrap(),
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
        let m = build(kind, 1, Init::Pytorch).unwrap();
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
    let a = build(ModelKind::CnnDeep, 3, Init::Pytorch).unwrap();
    a.forward_t(&batch(4), true).unwrap(); // move BN statistics away from their init
    a.save(&path).unwrap();
    let mut b = build(ModelKind::CnnDeep, 99, Init::Pytorch).unwrap();
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
    build(ModelKind::Cnn, 0, Init::Pytorch)
        .unwrap()
        .save(&path)
        .unwrap();
    let mut wide = build(ModelKind::CnnWide, 0, Init::Pytorch).unwrap();
    let msg = wide.load(&path).unwrap_err().to_string();
    assert!(
        msg.contains("tensor 'conv2.bias' has shape [32], model 'cnn-wide' expects [64]"),
        "{msg}"
    );
    let mut lstm = build(ModelKind::Lstm, 0, Init::Pytorch).unwrap();
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
        let m = build(kind, 5, Init::Pytorch).unwrap();
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
    let y = x.as_tensor().apply(&MaxPool2::default()).unwrap();
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
    // Sixteen images: with four, a BatchNorm of dense features moves so much with one
    // weight that the difference step crosses ReLU kinks (mlp-bn). Where a step still crosses
    // one it shrinks to 1e-3, then 2e-4 (below, f32 rounding dominates): a weight of cnn-vgg's
    // second convolution feeds 12,544 ReLUs (a 28x28 channel of 16 images), and its difference
    // at 5e-3 is 20% off the gradient, 9% at 1e-3, 0.1% at 2e-4 (candle's generic layers give
    // the same gradient to 1e-6).
    let x = batch(16);
    let y = Tensor::new(
        &[1u32, 3, 5, 7, 0, 2, 4, 6, 8, 9, 1, 3, 5, 7, 9, 0],
        &Device::Cpu,
    )
    .unwrap();
    for kind in ModelKind::ALL {
        let m = build(kind, 3, Init::Pytorch).unwrap();
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
            let mut tried = Vec::new();
            for eps in [5e-3, 1e-3, 2e-4] {
                let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
                tried.push(numeric);
                if (g[i] - numeric).abs() / g[i].abs().max(1e-4) < 0.15 {
                    break;
                }
            }
            at(0.0);
            let numeric = *tried.last().unwrap();
            let rel = (g[i] - numeric).abs() / g[i].abs().max(1e-4);
            assert!(
                rel < 0.15,
                "{kind} {name}[{i}]: analytic {} vs numeric {tried:?} (steps 5e-3, 1e-3, 2e-4)",
                g[i]
            );
        }
    }
}

/// A checkpoint of `config` written into `dir` (weights drawn from seed 7, BatchNorm
/// statistics moved by one training pass).
fn write_checkpoint(dir: &std::path::Path, config: ModelConfig) -> (CheckpointConfig, Model) {
    let model = config.build(7, &Device::Cpu).unwrap();
    model.forward_t(&batch(4), true).unwrap();
    let checkpoint = Checkpoint::new(dir);
    let written = checkpoint
        .write_config(&CheckpointConfig {
            model: config,
            normalizer: fmnist_data::Normalizer {
                scale: 1.0 / 255.0,
                shift: -0.5,
            },
            class_names: fmnist_data::FASHION_MNIST_CLASSES
                .iter()
                .map(|s| s.to_string())
                .collect(),
        })
        .unwrap();
    checkpoint.write_weights(&model).unwrap();
    (written, model)
}

#[test]
fn a_checkpoint_loads_as_the_model_it_was_written_from() {
    let dir = tempfile::tempdir().unwrap();
    let config = ModelConfig {
        init: Init::Keras,
        mirror_tta: true,
        ..ModelConfig::new(ModelKind::CnnDeep)
    };
    let (written, model) = write_checkpoint(dir.path(), config);
    let (read, loaded) = Checkpoint::new(dir.path()).load(&Device::Cpu).unwrap();
    assert_eq!(read, written);
    assert_eq!(*loaded.config(), config);
    let x = batch(3);
    let logits = |m: &Model| m.eval_logits(&x).unwrap().to_vec2::<f32>().unwrap();
    assert_eq!(logits(&loaded), logits(&model));
}

#[test]
fn a_training_runs_config_reads_as_a_checkpoint_and_older_files_get_defaults() {
    // A run's config.json as training wrote it before `kernels` existed (the model's fields
    // beside the training knobs, and more around them).
    let dir = tempfile::tempdir().unwrap();
    let json = r#"{
      "train": {"model": "lstm", "preset": "study", "epochs": 8, "seed": 42,
                "init": "keras", "normalization": "standard",
                "augment": {"translate": 0, "hflip": false, "erase": 0.0}},
      "normalizer": {"scale": 0.01, "shift": -1.5},
      "class_names": ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"],
      "param_count": 82186, "kernels": "fused", "commit": "abc1234"
    }"#;
    std::fs::write(dir.path().join("config.json"), json).unwrap();
    let c = Checkpoint::new(dir.path()).read_config().unwrap();
    assert_eq!(c.model.kind, ModelKind::Lstm);
    assert_eq!(c.model.init, Init::Keras);
    assert_eq!(c.model.normalization, fmnist_data::Normalization::Standard);
    assert!(
        !c.model.mirror_tta,
        "runs before mirror TTA scored one view"
    );
    assert_eq!(c.model.kernels, fmnist_models::Kernels::Fused);
    assert_eq!((c.normalizer.scale, c.normalizer.shift), (0.01, -1.5));
    assert_eq!(c.class_names[9], "j");
}

#[test]
fn checkpoint_errors_name_the_file_at_fault() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = Checkpoint::new(dir.path());
    let e = checkpoint.load(&Device::Cpu).err().unwrap();
    assert!(matches!(e, ModelError::NotARun { .. }), "{e:?}");
    assert!(
        e.to_string().starts_with(&format!(
            "{}: not a run folder (no config.json)",
            dir.path().display()
        )),
        "{e}"
    );

    std::fs::write(
        checkpoint.config_path(),
        "{\"train\": {\"model\": \"cnn-huge\"}}",
    )
    .unwrap();
    let e = checkpoint.read_config().unwrap_err().to_string();
    let config = checkpoint.config_path();
    assert!(
        e.starts_with(&format!(
            "{}: not a run configuration: unknown variant `cnn-huge`",
            config.display()
        )),
        "{e}"
    );

    write_checkpoint(dir.path(), ModelConfig::new(ModelKind::Mlp));
    std::fs::remove_file(checkpoint.weights_path()).unwrap();
    let e = checkpoint.load(&Device::Cpu).err().unwrap().to_string();
    assert_eq!(
        e,
        format!(
            "{}: no checkpoint (the run never finished an epoch?)",
            checkpoint.weights_path().display()
        )
    );
}

#[test]
fn the_classifier_scores_as_the_run_did_normalization_and_mirror_tta() {
    let dir = tempfile::tempdir().unwrap();
    let config = ModelConfig {
        mirror_tta: true,
        ..ModelConfig::new(ModelKind::CnnWide)
    };
    let (written, model) = write_checkpoint(dir.path(), config);
    let classifier = Classifier::load(dir.path(), &Device::Cpu).unwrap();
    assert_eq!(classifier.class_names()[0], "T-shirt/top");
    let images: Vec<Vec<u8>> = (0..3u32)
        .map(|k| {
            (0..784u32)
                .map(|i| ((i * 31 + k * 97) % 256) as u8)
                .collect()
        })
        .collect();
    let refs: Vec<&[u8]> = images.iter().map(Vec::as_slice).collect();
    let probs = classifier.classify_all(&refs).unwrap();
    assert_eq!(probs.len(), 3);
    // The same images scaled by the run's normalizer, through the model by hand.
    let n = written.normalizer;
    let pixels: Vec<f32> = images
        .iter()
        .flatten()
        .map(|&p| p as f32 * n.scale + n.shift)
        .collect();
    let x = Tensor::from_vec(pixels, (3, 1, 28, 28), &Device::Cpu).unwrap();
    let plain = model.forward_t(&x, false).unwrap();
    let mirrored = model.forward_t(&x.flip(&[3]).unwrap(), false).unwrap();
    let mean = ((plain + mirrored).unwrap() * 0.5).unwrap();
    let expected = candle_nn::ops::softmax(&mean, 1)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    for (got, want) in probs.iter().zip(&expected) {
        assert!((got.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{g} vs {w}");
        }
    }
    let alone = classifier.classify(&images[1]).unwrap();
    for (a, b) in alone.iter().zip(&probs[1]) {
        assert!(
            (a - b).abs() < 1e-6,
            "one image alone {a} vs in a batch {b}"
        );
    }
    let e = classifier
        .classify_all(&[&images[0], &[0u8; 10]])
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "image 1: 10 pixels, the model reads 784 (28x28)"
    );
}

#[test]
fn mirror_tta_averages_each_image_with_its_mirror_image() {
    let dev = Device::Cpu;
    let one_view = ModelConfig::new(ModelKind::CnnWide).build(7, &dev).unwrap();
    let two_views = ModelConfig {
        mirror_tta: true,
        ..ModelConfig::new(ModelKind::CnnWide)
    }
    .build(7, &dev)
    .unwrap();
    let rows = |t: Tensor| t.to_vec2::<f32>().unwrap();
    let x = Tensor::rand(0f32, 1.0, (3, 1, 28, 28), &dev).unwrap();
    let plain = rows(one_view.eval_logits(&x).unwrap());
    let mirrored = rows(one_view.eval_logits(&x.flip(&[3]).unwrap()).unwrap());
    let averaged = rows(two_views.eval_logits(&x).unwrap());
    for ((p, m), a) in plain.iter().zip(&mirrored).zip(&averaged) {
        for ((p, m), a) in p.iter().zip(m).zip(a) {
            assert!(((p + m) / 2.0 - a).abs() < 1e-6, "{p} {m} {a}");
        }
    }
    assert_ne!(plain, averaged, "random images are not symmetric");
}

#[test]
fn the_kernels_are_a_value_of_the_model_and_both_give_the_same_logits() {
    let x = batch(3);
    // Every entry, and an LSTM with every option: two layers both ways, read by attention.
    let stacked = ModelConfig {
        size: Size {
            layers: Some(2),
            bidirectional: Some(true),
            attention: Some(true),
            ..Size::default()
        },
        ..ModelConfig::new(ModelKind::Lstm)
    };
    let configs = ModelKind::ALL
        .map(ModelConfig::new)
        .into_iter()
        .chain([stacked]);
    for config in configs {
        let kind = config.kind;
        let on = |kernels| {
            ModelConfig { kernels, ..config }
                .build(5, &Device::Cpu)
                .unwrap()
                .eval_logits(&x)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        let (fused, generic) = (
            on(fmnist_models::Kernels::Fused),
            on(fmnist_models::Kernels::Generic),
        );
        for (a, b) in fused.iter().zip(&generic) {
            assert!(
                (a - b).abs() <= 1e-4 * b.abs().max(1.0),
                "{kind}: {a} vs {b}"
            );
        }
    }
}

#[test]
fn grad_cam_heads_give_the_models_own_logits_and_maps_in_unit_range() {
    let x = batch(3);
    for kind in ModelKind::ALL {
        let m = build(kind, 5, Init::Pytorch).unwrap();
        let Some(maps) = m.last_conv_maps(&x).unwrap() else {
            assert!(!kind.is_convolutional(), "{kind} is a CNN without maps");
            assert!(m.grad_cam(&x, &[0, 1, 2]).unwrap().is_none());
            continue;
        };
        assert!(kind.is_convolutional(), "{kind}");
        let cams = m.grad_cam(&x, &[0, 4, 9]).unwrap().unwrap();
        assert_eq!(cams.len(), 3, "{kind}");
        for cam in &cams {
            assert_eq!(cam.len(), 784, "{kind}");
            assert!(cam.iter().all(|v| (0.0..=1.0 + 1e-6).contains(v)), "{kind}");
        }
        // The head from the maps is the rest of the evaluation forward pass.
        let via_maps: Vec<f32> = m
            .logits_from_last_conv_maps(&maps)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let full = outputs(&m, &x, false);
        for (a, b) in via_maps.iter().zip(&full) {
            assert!((a - b).abs() < 1e-4, "{kind}: {a} vs {b}");
        }
    }
}
