//! The training loop end to end on small data: learning on real Fashion-MNIST, bit-for-bit
//! repeatability, resume equal to an uninterrupted run, a NaN stop that keeps the last good
//! checkpoint, a run directory that is never overwritten by accident, and the commit recorded.
mod common;

use std::path::Path;

use candle::Device;
use common::{history, installed_data};
use fmnist_data::{DataSource, FashionMnist, ImageSet, Origin, FASHION_MNIST_CLASSES};
use fmnist_models::ModelKind;
use fmnist_train::run::read_json;
use fmnist_train::{EpochRecord, Preset, RunConfig, RunDir, RunOptions, TrainConfig};

/// 500 images whose class is a bright band two pixels high at rows 2c+3 and 2c+4, plus
/// pseudo-random noise.
fn synthetic() -> FashionMnist {
    let set = |n: usize, salt: usize| {
        let mut pixels = Vec::with_capacity(n * 784);
        let mut labels = Vec::with_capacity(n);
        for i in 0..n {
            let c = i % 10;
            for p in 0..784 {
                let noise = ((p * 7919 + i * 104_729 + salt) % 97) as u8;
                let row = p / 28;
                pixels.push(if row == 2 * c + 3 || row == 2 * c + 4 {
                    200
                } else {
                    noise
                });
            }
            labels.push(c as u8);
        }
        ImageSet {
            rows: 28,
            cols: 28,
            pixels,
            labels,
        }
    };
    FashionMnist {
        source: DataSource {
            dir: "synthetic".into(),
            origin: Origin::Flag,
        },
        train: set(500, 0),
        test: set(100, 1),
        class_names: FASHION_MNIST_CLASSES
            .iter()
            .map(|s| s.to_string())
            .collect(),
        verified: false,
    }
}

fn small(model: ModelKind, epochs: usize) -> TrainConfig {
    let mut c = TrainConfig::preset(model, Preset::Best);
    c.epochs = epochs;
    c.batch_size = 50;
    c
}

fn quiet() -> RunOptions {
    RunOptions::default()
}

#[test]
fn short_real_data_run_beats_chance_by_far() {
    let Some(data) = installed_data() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut c = TrainConfig::preset(ModelKind::Cnn, Preset::Study);
    c.epochs = 1;
    c.subset = Some(4000);
    c.batch_size = 64;
    let s = fmnist_train::train(&c, &data, dir.path(), &Device::Cpu, &quiet())
        .unwrap()
        .unwrap();
    assert!(
        s.val.accuracy > 0.60,
        "validation accuracy {}",
        s.val.accuracy
    );
    assert!(s.test.accuracy > 0.60, "test accuracy {}", s.test.accuracy);
}

#[test]
fn same_seed_same_history_bit_for_bit() {
    let data = synthetic();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // The MLP exercises dropout masks and augmentation, both drawn from the run's seed.
    let c = small(ModelKind::Mlp, 2);
    fmnist_train::train(&c, &data, a.path(), &Device::Cpu, &quiet()).unwrap();
    fmnist_train::train(&c, &data, b.path(), &Device::Cpu, &quiet()).unwrap();
    assert_eq!(history(a.path()), history(b.path()));
    let weights = |d: &Path| std::fs::read(RunDir::new(d).last_model()).unwrap();
    assert_eq!(weights(a.path()), weights(b.path()));
    let other = tempfile::tempdir().unwrap();
    let c43 = TrainConfig { seed: 43, ..c };
    fmnist_train::train(&c43, &data, other.path(), &Device::Cpu, &quiet()).unwrap();
    assert_ne!(history(a.path()), history(other.path()));
}

#[test]
fn synthetic_bands_are_learned() {
    let data = synthetic();
    let dir = tempfile::tempdir().unwrap();
    let s = fmnist_train::train(
        &small(ModelKind::Cnn, 3),
        &data,
        dir.path(),
        &Device::Cpu,
        &quiet(),
    )
    .unwrap()
    .unwrap();
    assert!(s.test.accuracy > 0.9, "{}", s.test.accuracy);
    assert_eq!(history(dir.path()).len(), 3);
    // config.json names the commit the binary was built from: this checkout's HEAD, marked
    // `-dirty` where the sources were edited since.
    let config: RunConfig = read_json(&RunDir::new(dir.path()).config()).unwrap();
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .unwrap();
    let head = String::from_utf8(head.stdout).unwrap();
    let commit = config.commit.unwrap_or_default();
    let rest = commit.strip_prefix(head.trim());
    assert!(
        matches!(rest, Some("" | "-dirty")),
        "{commit} is not {head}"
    );
}

#[test]
fn resume_after_an_interrupt_equals_the_uninterrupted_run() {
    let data = synthetic();
    let (whole, split) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // BatchNorm statistics, dropout, augmentation (rotation and zoom too), AdamW, one-cycle.
    let mut c = small(ModelKind::CnnDeep, 3);
    c.augment.rotate = 10.0;
    c.augment.zoom = 0.1;
    let full = fmnist_train::train(&c, &data, whole.path(), &Device::Cpu, &quiet())
        .unwrap()
        .unwrap();
    let interrupted = RunOptions {
        interrupt_after: Some(1),
        ..quiet()
    };
    assert!(
        fmnist_train::train(&c, &data, split.path(), &Device::Cpu, &interrupted)
            .unwrap()
            .is_none()
    );
    assert_eq!(history(split.path()).len(), 1);
    let resumed = fmnist_train::resume(split.path(), &data, &Device::Cpu, &quiet())
        .unwrap()
        .unwrap();
    assert_eq!(history(whole.path()), history(split.path()));
    for file in [
        "model.safetensors",
        "last.safetensors",
        "optimizer.safetensors",
    ] {
        assert_eq!(
            std::fs::read(whole.path().join(file)).unwrap(),
            std::fs::read(split.path().join(file)).unwrap(),
            "{file}"
        );
    }
    assert_eq!(full.test, resumed.test);
}

#[test]
fn continue_resumes_an_interrupted_run_keeps_a_finished_one_and_refuses_another_config() {
    let data = synthetic();
    let (whole, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let c = small(ModelKind::Mlp, 2);
    let full = fmnist_train::train(&c, &data, whole.path(), &Device::Cpu, &quiet())
        .unwrap()
        .unwrap();
    // A run stopped in its first epoch left only its config.json: it starts over.
    fmnist_train::train(&c, &data, dir.path(), &Device::Cpu, &quiet()).unwrap();
    for file in [
        "state.json",
        "summary.json",
        "history.csv",
        "last.safetensors",
    ] {
        std::fs::remove_file(dir.path().join(file)).unwrap();
    }
    let interrupted = RunOptions {
        interrupt_after: Some(1),
        ..quiet()
    };
    assert!(
        fmnist_train::continue_run(&c, &data, dir.path(), &Device::Cpu, &interrupted)
            .unwrap()
            .is_none()
    );
    let first_epoch = std::fs::read_to_string(dir.path().join("history.csv")).unwrap();
    assert_eq!(history(dir.path()).len(), 1);
    // The second call resumes after epoch 1: the same history as the uninterrupted run,
    // and epoch 1's record (its wall time too) as the first call wrote it.
    let resumed = fmnist_train::continue_run(&c, &data, dir.path(), &Device::Cpu, &quiet())
        .unwrap()
        .unwrap();
    assert_eq!(resumed.test, full.test);
    let strip_seconds = |h: Vec<EpochRecord>| {
        h.into_iter()
            .map(|r| EpochRecord { seconds: 0.0, ..r })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        strip_seconds(history(dir.path())),
        strip_seconds(history(whole.path()))
    );
    let after = std::fs::read_to_string(dir.path().join("history.csv")).unwrap();
    assert_eq!(after.lines().nth(1), first_epoch.lines().nth(1));
    let model = std::fs::read(dir.path().join("model.safetensors")).unwrap();
    // A third call keeps the finished run as it is.
    let kept = fmnist_train::continue_run(&c, &data, dir.path(), &Device::Cpu, &quiet())
        .unwrap()
        .unwrap();
    assert_eq!(kept, resumed);
    assert_eq!(
        std::fs::read(dir.path().join("model.safetensors")).unwrap(),
        model
    );
    // Another configuration is refused, naming what differs.
    let other = TrainConfig {
        lr: 0.5,
        ..c.clone()
    };
    let msg = fmnist_train::continue_run(&other, &data, dir.path(), &Device::Cpu, &quiet())
        .unwrap_err()
        .to_string();
    assert!(
        msg.ends_with(&format!(
            "holds a run of another configuration (lr {} → 0.5): choose another --out, or \
             --force to replace it",
            c.lr
        )),
        "{msg}"
    );
}

#[test]
fn a_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint() {
    let data = synthetic();
    let dir = tempfile::tempdir().unwrap();
    let mut c = small(ModelKind::Mlp, 3);
    c.optimizer = fmnist_train::OptimizerKind::Sgd;
    c.schedule = fmnist_train::ScheduleKind::None;
    let one = RunOptions {
        interrupt_after: Some(1),
        ..quiet()
    };
    fmnist_train::train(&c, &data, dir.path(), &Device::Cpu, &one).unwrap();
    let good = std::fs::read(RunDir::new(dir.path()).last_model()).unwrap();
    // Make the rest of the run diverge: an absurd learning rate.
    let run = RunDir::new(dir.path());
    let mut config = run.read_config().unwrap();
    config.train.lr = 1e30;
    fmnist_train::run::write_json(&run.config(), &config).unwrap();
    let msg = fmnist_train::resume(dir.path(), &data, &Device::Cpu, &quiet())
        .unwrap_err()
        .to_string();
    assert!(msg.starts_with("the loss became"), "{msg}");
    assert!(msg.contains("at epoch 2"), "{msg}");
    assert!(msg.contains("(1 epochs done); try a lower --lr"), "{msg}");
    assert_eq!(std::fs::read(run.last_model()).unwrap(), good);
    assert!(!run.summary().exists());
}

#[test]
fn an_existing_run_is_not_overwritten_without_force() {
    let data = synthetic();
    let dir = tempfile::tempdir().unwrap();
    let c = small(ModelKind::Lstm, 1);
    fmnist_train::train(&c, &data, dir.path(), &Device::Cpu, &quiet()).unwrap();
    let msg = fmnist_train::train(&c, &data, dir.path(), &Device::Cpu, &quiet())
        .unwrap_err()
        .to_string();
    let expected = format!(
        "already holds a run: pass --force to replace it, or --resume {} to continue it",
        dir.path().display()
    );
    assert!(msg.ends_with(&expected), "{msg}");
    let forced = RunOptions {
        force: true,
        ..quiet()
    };
    assert!(
        fmnist_train::train(&c, &data, dir.path(), &Device::Cpu, &forced)
            .unwrap()
            .is_some()
    );
}

#[test]
fn a_folder_of_seed_runs_is_refused_even_with_force() {
    let data = synthetic();
    let dir = tempfile::tempdir().unwrap();
    let c = small(ModelKind::Lstm, 1);
    let seed_run = dir.path().join("seed-42");
    fmnist_train::train(&c, &data, &seed_run, &Device::Cpu, &quiet()).unwrap();
    let forced = RunOptions {
        force: true,
        ..quiet()
    };
    let msg = fmnist_train::train(&c, &data, dir.path(), &Device::Cpu, &forced)
        .unwrap_err()
        .to_string();
    let expected = format!(
        "{} holds other runs (e.g. {}): a run there would hide them from fmnist-eval and \
         --force would delete them; choose another --out",
        dir.path().display(),
        seed_run.display()
    );
    assert_eq!(msg, expected);
    assert!(seed_run.join("model.safetensors").is_file());
}

#[test]
fn bench_times_the_steps_and_scores_the_test_set_repeatably() {
    use fmnist_train::bench::{bench, BenchConfig};
    let data = synthetic();
    let config = BenchConfig {
        model: ModelKind::Lstm,
        batch_size: 50,
        warmup: 1,
        batches: 6,
        kernels: fmnist_models::Kernels::Fused,
        count_ops: true,
    };
    let a = bench(&config, &data, 0.25, &Device::Cpu).unwrap();
    let b = bench(&config, &data, 0.25, &Device::Cpu).unwrap();
    // The fused LSTM step: a constant number of operations, counted on the first warm-up step.
    let ops = a.step_ops.expect("counted when asked");
    assert_eq!(Some(ops), b.step_ops);
    assert!(ops.forward > 0 && ops.backward > 0 && ops.optimizer > 0);
    let uncounted = BenchConfig {
        count_ops: false,
        ..config.clone()
    };
    assert_eq!(
        bench(&uncounted, &data, 0.25, &Device::Cpu)
            .unwrap()
            .step_ops,
        None
    );
    assert_eq!((a.model.as_str(), a.batches, a.batch_size), ("lstm", 6, 50));
    assert!(a.train_images_per_s > 0.0 && a.infer_images_per_s > 0.0);
    assert!((a.epoch_seconds - 48_000.0 / a.train_images_per_s).abs() < 1e-6);
    assert_eq!(a.data_load_seconds, 0.25);
    assert_eq!(a.data_dir, "synthetic");
    if cfg!(target_os = "linux") {
        assert!(a.peak_rss_mb.unwrap() > 1.0);
    }
    // Same seed, same steps: the same model, whatever the timings.
    assert_eq!(a.test_accuracy, b.test_accuracy);
}

#[test]
fn the_same_seed_gives_the_same_bits_on_one_or_two_threads() {
    // Batches of 100: two LSTM blocks whose weight-gradient shares are summed, of 64 and 36
    // images whatever the thread count (split by the threads, they would be 50 and 50 on two).
    let data = synthetic();
    let mut c = small(ModelKind::Lstm, 2);
    c.batch_size = 100;
    let weights_on = |threads: usize| {
        let dir = tempfile::tempdir().unwrap();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| fmnist_train::train(&c, &data, dir.path(), &Device::Cpu, &quiet()))
            .unwrap();
        std::fs::read(RunDir::new(dir.path()).last_model()).unwrap()
    };
    assert!(
        weights_on(1) == weights_on(2),
        "the weights differ between 1 and 2 threads"
    );
}
