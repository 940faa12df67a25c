//! Throughput measurement of one model: a fixed number of training steps after a warm-up,
//! then inference over the test set, with the process's peak memory and the number of tensor
//! operations one training step runs (its launch budget on a GPU).
use std::collections::HashSet;
use std::time::Instant;

use candle::Device;
use fmnist_data::{Batch, FashionMnist, Loader};
use fmnist_models::scoring::{logits, score};
use fmnist_models::{Kernels, Model, ModelKind};
use serde::{Deserialize, Serialize};

use crate::config::{Preset, TrainConfig};
use crate::loss::smoothed_cross_entropy;
use crate::optim::Optimizer;
use crate::trainer::{optimizer_config, prepare, resident_train_set, train_step};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub model: ModelKind,
    pub batch_size: usize,
    /// Steps run before the clock starts.
    pub warmup: usize,
    /// Steps timed.
    pub batches: usize,
    /// The CPU kernels measured.
    pub kernels: Kernels,
    /// Count the tensor operations of a training step ([`count_step_ops`]).
    pub count_ops: bool,
}

/// One measurement, as `cargo xtask bench` collects them (the PyTorch reference script
/// prints the same fields).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchResult {
    pub implementation: String,
    pub model: String,
    pub threads: usize,
    pub batch_size: usize,
    pub batches: usize,
    pub train_images_per_s: f64,
    /// 48,000 images at the measured training rate.
    pub epoch_seconds: f64,
    pub infer_images_per_s: f64,
    /// Test accuracy after the steps: a check that the steps trained the model.
    pub test_accuracy: f64,
    pub data_load_seconds: f64,
    /// The process's peak resident memory (VmHWM), if the platform reports it.
    pub peak_rss_mb: Option<f64>,
    /// The folder the data was read from.
    pub data_dir: String,
    /// Where and from which commit it was measured.
    pub machine: String,
    pub commit: String,
    /// Tensor operations of one training step, where they were counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_ops: Option<StepOps>,
}

/// The tensor operations of one training step. On a GPU each is at least one kernel launch
/// (views such as a reshape or a narrow are counted too, and launch nothing), so this is the
/// step's launch budget, a figure that moves without a GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepOps {
    /// The forward graph up to the loss: the nodes of candle's `sorted_nodes` on the loss
    /// that are not parameters.
    pub forward: usize,
    /// What candle's backward pass runs: the nodes of the gradients' graphs that are not in
    /// the forward graph (counted with the gradients kept attached to their graph). The
    /// patched candle-core starts no zero-filled buffer for a tensor's gradient.
    pub backward: usize,
    /// The optimizer's update ([`Optimizer::ops_per_step`]).
    pub optimizer: usize,
}

/// Counts the tensor operations of one training step of `model` on `batch` (see [`StepOps`]).
/// The backward pass runs on a thread of its own that keeps each gradient attached to the
/// graph that computed it, so that the gradients' graphs can be walked; no other thread's
/// backward is affected. The parameters are not updated, but the forward pass is a training
/// one: it draws dropout masks and moves BatchNorm's running statistics, as a step would.
pub fn count_step_ops(
    model: &Model,
    optimizer: &Optimizer,
    batch: &Batch,
    label_smoothing: f64,
) -> anyhow::Result<StepOps> {
    let vars = model.trainable_vars();
    let (images, labels) = (batch.images.clone(), batch.labels.clone());
    let counted = std::thread::scope(|scope| {
        scope
            .spawn(|| -> anyhow::Result<(usize, usize)> {
                candle::backprop::keep_gradient_graphs_on_this_thread(true);
                let out = model.forward_t(&images, true)?;
                let loss = smoothed_cross_entropy(&out, &labels, label_smoothing)?;
                let nodes = loss.sorted_nodes();
                let forward: HashSet<_> = nodes
                    .iter()
                    .filter(|n| !n.is_variable())
                    .map(|n| n.id())
                    .collect();
                let grads = loss.backward()?;
                let mut backward = HashSet::new();
                for (_, var) in &vars {
                    let Some(g) = grads.get(var.as_tensor()) else {
                        continue;
                    };
                    for node in g.sorted_nodes() {
                        if !node.is_variable() && !forward.contains(&node.id()) {
                            backward.insert(node.id());
                        }
                    }
                }
                Ok((forward.len(), backward.len()))
            })
            .join()
    });
    let (forward, backward) =
        counted.map_err(|_| anyhow::anyhow!("the operation count panicked"))??;
    Ok(StepOps {
        forward,
        backward,
        optimizer: optimizer.ops_per_step()?,
    })
}

/// Trains `config.model` (study recipe: Adam 1e-3) for `warmup + batches` steps, timing the last
/// `batches`, then scores the test set.
pub fn bench(
    config: &BenchConfig,
    data: &FashionMnist,
    data_load_seconds: f64,
    device: &Device,
) -> anyhow::Result<BenchResult> {
    let mut train_config = TrainConfig::preset(config.model, Preset::Study);
    train_config.batch_size = config.batch_size;
    train_config.model.kernels = config.kernels;
    let prepared = prepare(&train_config, data)?;
    let model = train_config.model.build(train_config.seed, device)?;
    let mut optimizer = Optimizer::new(optimizer_config(&train_config), model.trainable_vars())?;
    let loader = Loader::new(
        &prepared.train,
        prepared.normalizer,
        config.batch_size,
        device,
    );
    let loader = match resident_train_set(&train_config, &prepared, device)? {
        Some(r) => loader.with_resident(r)?,
        None => loader,
    };
    let needed = config.warmup + config.batches;
    let mut batches = (0u64..).flat_map(|epoch| loader.epoch(epoch)).take(needed);
    if config.count_ops && config.warmup == 0 {
        anyhow::bail!("--warmup must be at least 1 (the operations are counted on a warm-up step)");
    }
    let mut step_ops = None;
    for batch in batches.by_ref().take(config.warmup) {
        let batch = batch?;
        if config.count_ops && step_ops.is_none() {
            step_ops = Some(count_step_ops(&model, &optimizer, &batch, 0.0)?);
        }
        train_step(&model, &mut optimizer, &batch, 0.0)?;
    }
    // Batch assembly is the loader's work and is timed too, as in a real epoch; reading the
    // last step's loss waits for the device to finish the steps.
    let (mut images, mut last) = (0usize, None);
    let start = Instant::now();
    for batch in batches {
        let batch = batch?;
        last = Some(train_step(&model, &mut optimizer, &batch, 0.0)?);
        images += batch.len();
    }
    if let Some(step) = last {
        step.loss.to_scalar::<f32>()?;
    }
    let timed = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let test_logits = logits(&model, &data.test, prepared.normalizer, device)?;
    let infer = start.elapsed().as_secs_f64();
    let test = score(&test_logits, &data.test.labels);
    let rate = images as f64 / timed.max(f64::MIN_POSITIVE);
    Ok(BenchResult {
        implementation: implementation_name(device, config.kernels),
        model: config.model.name().to_string(),
        threads: crate::device::cpu_threads(),
        batch_size: config.batch_size,
        batches: config.batches,
        train_images_per_s: rate,
        epoch_seconds: 48_000.0 / rate,
        infer_images_per_s: data.test.len() as f64 / infer,
        test_accuracy: test.accuracy,
        data_load_seconds,
        peak_rss_mb: peak_rss_mb(),
        data_dir: data.source.dir.display().to_string(),
        machine: machine_of(device),
        commit: crate::device::git_commit(),
        step_ops,
    })
}

/// The machine measured: the CPU's description, after the GPU's name on a CUDA device.
fn machine_of(device: &Device) -> String {
    let cpu = crate::device::machine_description();
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = device {
        if let Ok(gpu) = d.cuda_stream().context().name() {
            return format!("{gpu} (CUDA); host: {cpu}");
        }
    }
    let _ = device;
    cpu
}

/// `candle-fused` or `candle-generic` on the CPU; `candle-cuda-fused` (this crate's CUDA
/// kernels) or `candle-cuda-generic` on CUDA; `candle-metal` (the generic path) on Metal.
fn implementation_name(device: &Device, kernels: Kernels) -> String {
    match device {
        Device::Cpu => format!("candle-{}", kernels_name(kernels)),
        Device::Cuda(_) => format!("candle-cuda-{}", kernels_name(kernels)),
        Device::Metal(_) => "candle-metal".into(),
    }
}

fn kernels_name(k: Kernels) -> &'static str {
    match k {
        Kernels::Fused => "fused",
        Kernels::Generic => "generic",
    }
}

/// The peak resident set size of this process in MiB (Linux: VmHWM of /proc/self/status).
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OptimizerKind;
    use crate::optim::OptimizerConfig;
    use fmnist_models::ModelConfig;

    fn lstm(kernels: Kernels) -> (Model, Optimizer) {
        let mut config = ModelConfig::new(ModelKind::Lstm);
        config.kernels = kernels;
        let model = config.build(7, &Device::Cpu).unwrap();
        let optimizer = Optimizer::new(
            OptimizerConfig {
                kind: OptimizerKind::Adam,
                lr: 1e-3,
                weight_decay: 0.0,
                momentum: 0.9,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
            },
            model.trainable_vars(),
        )
        .unwrap();
        (model, optimizer)
    }

    fn batch() -> Batch {
        let dev = Device::Cpu;
        Batch {
            images: candle::Tensor::rand(0f32, 1.0, (4, 1, 28, 28), &dev).unwrap(),
            labels: candle::Tensor::new(&[0u32, 3, 9, 3], &dev).unwrap(),
            indices: vec![0, 1, 2, 3],
        }
    }

    fn weights(model: &Model) -> Vec<Vec<f32>> {
        model
            .trainable_vars()
            .iter()
            .map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
            .collect()
    }

    #[test]
    fn the_lstm_steps_launch_budget_is_counted_without_training_the_model() {
        let (model, optimizer) = lstm(Kernels::Generic);
        let before = weights(&model);
        let ops = count_step_ops(&model, &optimizer, &batch(), 0.0).unwrap();
        // The launch budget of the generic LSTM step: the recurrence over 28 steps is 7 + 9 +
        // 27 x 13 operations (`recurrent`'s tests), the dense head and the loss 18 more. The
        // backward pass neither zero-fills a buffer per tensor nor adds gradients but where a
        // tensor has several consumers (the patched candle-core,
        // `vendor/candle-core/FMNIST-PATCH.md`; 1,594 operations before it).
        // Change these figures only with a change of the graph that is meant.
        assert_eq!(
            ops,
            StepOps {
                forward: 7 + 9 + 27 * 13 + 18,
                backward: 894,
                optimizer: 36,
            }
        );
        assert_eq!(
            ops,
            count_step_ops(&model, &optimizer, &batch(), 0.0).unwrap()
        );
        assert_eq!(weights(&model), before);
        // The fused recurrence is one operation in the graph whatever the sequence length.
        let (fused, optimizer) = lstm(Kernels::Fused);
        let ops = count_step_ops(&fused, &optimizer, &batch(), 0.0).unwrap();
        assert!(ops.forward < 30 && ops.backward < 60, "{ops:?}");
    }
}
