//! The training loop: epochs over the training part, validation after each, checkpoints,
//! early stopping, resume, and the one test-set score at the end.
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, ensure, Context};
use candle::{DType, Device, Tensor};
use fmnist_data::{
    stratified_split, stratified_subset, Batch, FashionMnist, ImageSet, Loader, Normalizer,
    ResidentSet,
};
use fmnist_models::scoring::{logits, score};
use fmnist_models::{Model, Score};

use crate::config::TrainConfig;
use crate::loss::smoothed_cross_entropy;
use crate::optim::{Optimizer, OptimizerConfig};
use crate::run::{write_json, EpochRecord, RunConfig, RunDir, RunState, RunStatus, RunSummary};
use crate::schedule::{Plateau, Schedule};

/// How a call to [`train`] or [`resume`] behaves (not part of the run's configuration).
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Replace a run directory that already holds a run.
    pub force: bool,
    /// Show a progress bar per epoch (when stderr is a terminal).
    pub progress: bool,
    /// Print one line per epoch.
    pub verbose: bool,
    /// Stop after this many epochs of this call, as an interrupt would (for tests of resume).
    pub interrupt_after: Option<usize>,
}

/// The train and validation parts of the 60,000 training images, and the normalizer fitted on train.
pub struct Prepared {
    pub train: ImageSet,
    pub val: ImageSet,
    pub normalizer: Normalizer,
}

/// The training part kept on `device` for the run ([`ResidentSet`]), off the CPU and where
/// no augmentation runs on the host; `None` elsewhere (the batches are built on the host).
pub(crate) fn resident_train_set(
    config: &TrainConfig,
    prepared: &Prepared,
    device: &Device,
) -> anyhow::Result<Option<ResidentSet>> {
    if device.is_cpu() || !config.augment.is_off() {
        return Ok(None);
    }
    Ok(Some(ResidentSet::upload(
        &prepared.train,
        prepared.normalizer,
        device,
    )?))
}

/// What one optimization step saw, as f32 scalars on the training device: the batch's mean
/// loss and how many images it classified right. Reading one waits for the step to finish;
/// the trainer reads an epoch's at once, so that a GPU never waits for the host inside an
/// epoch.
#[derive(Debug, Clone)]
pub struct Step {
    pub loss: Tensor,
    pub correct: Tensor,
}

/// One optimization step on `batch`. A non-finite loss still updates the parameters (to check
/// it would wait for the step); the trainer finds it when it reads the epoch's losses and
/// stops before anything is saved.
pub fn train_step(
    model: &Model,
    optimizer: &mut Optimizer,
    batch: &Batch,
    label_smoothing: f64,
) -> anyhow::Result<Step> {
    let out = model.forward_t(&batch.images, true)?;
    let loss = smoothed_cross_entropy(&out, &batch.labels, label_smoothing)?;
    optimizer.step(&loss.backward()?)?;
    let correct = out
        .argmax(1)?
        .eq(&batch.labels)?
        .to_dtype(DType::F32)?
        .sum_all()?;
    Ok(Step {
        loss: loss.detach().to_dtype(DType::F32)?,
        correct,
    })
}

/// The steps of an epoch so far, their figures still on the training device.
#[derive(Default)]
struct EpochSteps {
    losses: Vec<Tensor>,
    correct: Vec<Tensor>,
    sizes: Vec<usize>,
}

/// An epoch's step figures read to the host.
struct ReadSteps {
    losses: Vec<f32>,
    correct: Vec<f32>,
    sizes: Vec<usize>,
}

impl EpochSteps {
    fn push(&mut self, step: Step, images: usize) {
        self.losses.push(step.loss);
        self.correct.push(step.correct);
        self.sizes.push(images);
    }

    fn images(&self) -> usize {
        self.sizes.iter().sum()
    }

    /// All the steps' figures, in two reads (one per figure).
    fn read(&self) -> candle::Result<ReadSteps> {
        let read = |v: &[Tensor]| -> candle::Result<Vec<f32>> {
            if v.is_empty() {
                return Ok(Vec::new());
            }
            Tensor::stack(v, 0)?.to_vec1()
        };
        Ok(ReadSteps {
            losses: read(&self.losses)?,
            correct: read(&self.correct)?,
            sizes: self.sizes.clone(),
        })
    }
}

impl ReadSteps {
    /// The mean loss over the images (each batch's mean loss weighted by its size) and the
    /// share classified right.
    fn means(&self) -> (f64, f64) {
        let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0.0f64, 0usize);
        for ((loss, right), n) in self.losses.iter().zip(&self.correct).zip(&self.sizes) {
            loss_sum += *loss as f64 * *n as f64;
            correct += *right as f64;
            seen += n;
        }
        (loss_sum / seen.max(1) as f64, correct / seen.max(1) as f64)
    }

    /// The first step (from 0) whose loss is not finite, and that loss.
    fn first_non_finite(&self) -> Option<(usize, f32)> {
        self.losses
            .iter()
            .enumerate()
            .find(|(_, l)| !l.is_finite())
            .map(|(i, l)| (i, *l))
    }
}

/// SplitMix64: independent seeds for the different random streams of one run.
pub fn derive_seed(seed: u64, stream: u64) -> u64 {
    let mut z = seed ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Splits the training images as `config` says (optionally a class-balanced subset first).
pub fn prepare(config: &TrainConfig, data: &FashionMnist) -> anyhow::Result<Prepared> {
    let k = data.num_classes();
    let pool = match config.subset {
        Some(n) => data.train.select(&stratified_subset(
            &data.train.labels,
            k,
            n,
            config.split_seed(),
        )),
        None => data.train.clone(),
    };
    let split = stratified_split(&pool.labels, k, config.val_frac, config.split_seed())?;
    let train = pool.select(&split.train);
    let val = pool.select(&split.val);
    anyhow::ensure!(
        !train.is_empty() && !val.is_empty(),
        "the split left an empty train or validation set (subset too small?)"
    );
    let normalizer = Normalizer::fit(config.model.normalization, &train);
    Ok(Prepared {
        train,
        val,
        normalizer,
    })
}

/// The optimizer settings of a configuration.
pub fn optimizer_config(c: &TrainConfig) -> OptimizerConfig {
    OptimizerConfig {
        kind: c.optimizer,
        lr: c.lr,
        weight_decay: c.weight_decay,
        momentum: c.momentum,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
    }
}

/// A run directory (one holding `config.json`) directly inside `dir`, such as `--seeds`'
/// `dir/seed-42`.
fn nested_run(dir: &Path) -> Option<std::path::PathBuf> {
    let mut runs: Vec<_> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| RunDir::new(p).config().is_file())
        .collect();
    runs.sort();
    runs.into_iter().next()
}

/// Trains a new run into `dir` and returns its summary (`None` if interrupted by `interrupt_after`).
pub fn train(
    config: &TrainConfig,
    data: &FashionMnist,
    dir: &Path,
    device: &Device,
    options: &RunOptions,
) -> anyhow::Result<Option<RunSummary>> {
    config.validate()?;
    let run = RunDir::new(dir);
    if let Some(nested) = nested_run(dir) {
        // Even --force: replacing `dir` would delete them.
        bail!(
            "{} holds other runs (e.g. {}): a run there would hide them from fmnist-eval and \
             --force would delete them; choose another --out",
            dir.display(),
            nested.display()
        );
    }
    if run.config().exists() || run.state().exists() {
        if !options.force {
            bail!(
                "{} already holds a run: pass --force to replace it, or --resume {} to continue it",
                dir.display(),
                dir.display()
            );
        }
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let prepared = prepare(config, data)?;
    let model = config.model.build(config.seed, device)?;
    let run_config = RunConfig {
        train: config.clone(),
        normalizer: prepared.normalizer,
        class_names: data.class_names.clone(),
        param_count: model.param_count(),
        device: format!("{device:?}"),
        threads: crate::device::cpu_threads(),
        fmnist_version: env!("CARGO_PKG_VERSION").to_string(),
        commit: Some(crate::device::git_commit()),
    };
    run.checkpoint().write_config(&run_config)?;
    let optimizer = Optimizer::new(optimizer_config(config), model.trainable_vars())?;
    let state = RunState {
        epochs_done: 0,
        steps: 0,
        best_epoch: 0,
        best_val: None,
        epochs_since_best: 0,
        plateau: Plateau::default(),
        train_seconds: 0.0,
    };
    let resident = resident_train_set(config, &prepared, device)?;
    Session {
        run,
        config: run_config,
        prepared,
        model,
        optimizer,
        state,
        history: Vec::new(),
        resident,
        data,
        device,
    }
    .run(options)
}

/// Brings the run of `config` in `dir` to its end, keeping what the folder already holds of
/// it: a finished run is returned as it is, an interrupted one resumed from its last completed
/// epoch, a new one trained (also over the `config.json` of a run stopped in its first epoch).
/// A folder holding a run of another configuration is refused.
pub fn continue_run(
    config: &TrainConfig,
    data: &FashionMnist,
    dir: &Path,
    device: &Device,
    options: &RunOptions,
) -> anyhow::Result<Option<RunSummary>> {
    let run = RunDir::new(dir);
    let status = run.status();
    if status != RunStatus::New {
        let held = run.read_config()?.train;
        let changes: Vec<String> = config
            .differences(&held)
            .iter()
            .map(ToString::to_string)
            .collect();
        ensure!(
            changes.is_empty(),
            "{} holds a run of another configuration ({}): choose another --out, or --force to \
             replace it",
            dir.display(),
            changes.join(", ")
        );
    }
    match status {
        RunStatus::Finished => {
            if options.verbose {
                println!("{}: finished already; kept", dir.display());
            }
            Ok(Some(run.read_summary()?))
        }
        RunStatus::Resumable => {
            if options.verbose {
                let state: RunState = crate::run::read_json(&run.state())?;
                println!(
                    "{}: resuming after epoch {} of {}",
                    dir.display(),
                    state.epochs_done,
                    config.epochs
                );
            }
            resume(dir, data, device, options)
        }
        RunStatus::New => train(
            config,
            data,
            dir,
            device,
            &RunOptions {
                force: run.config().exists(),
                ..options.clone()
            },
        ),
    }
}

/// Continues the run in `dir` from its last completed epoch, exactly as if it had not stopped.
pub fn resume(
    dir: &Path,
    data: &FashionMnist,
    device: &Device,
    options: &RunOptions,
) -> anyhow::Result<Option<RunSummary>> {
    let run = RunDir::new(dir);
    let run_config = run
        .read_config()
        .with_context(|| format!("{} is not a run directory to resume", dir.display()))?;
    let state: RunState = crate::run::read_json(&run.state())?;
    let config = &run_config.train;
    let prepared = prepare(config, data)?;
    let mut model = config.model.build(config.seed, device)?;
    model.load(&run.last_model())?;
    let mut optimizer = Optimizer::new(optimizer_config(config), model.trainable_vars())?;
    optimizer.load(&run.optimizer(), state.steps)?;
    let mut history = run.read_history()?;
    history.truncate(state.epochs_done);
    let resident = resident_train_set(config, &prepared, device)?;
    Session {
        run,
        config: run_config,
        prepared,
        model,
        optimizer,
        state,
        history,
        resident,
        data,
        device,
    }
    .run(options)
}

struct Session<'a> {
    run: RunDir,
    config: RunConfig,
    prepared: Prepared,
    model: Model,
    optimizer: Optimizer,
    state: RunState,
    history: Vec<EpochRecord>,
    /// The training part on the device, where batches are gathered there.
    resident: Option<ResidentSet>,
    data: &'a FashionMnist,
    device: &'a Device,
}

impl Session<'_> {
    fn run(mut self, options: &RunOptions) -> anyhow::Result<Option<RunSummary>> {
        let c = self.config.train.clone();
        let batches_per_epoch = self.prepared.train.len().div_ceil(c.batch_size);
        let schedule = Schedule::new(&c, batches_per_epoch);
        let mut stopped_early = false;
        let mut epochs_this_call = 0;
        while self.state.epochs_done < c.epochs {
            let epoch = self.state.epochs_done;
            let start = Instant::now();
            let (train_loss, train_acc, lr) = self.train_epoch(epoch, &schedule, options)?;
            let val_logits = logits(
                &self.model,
                &self.prepared.val,
                self.prepared.normalizer,
                self.device,
            )?;
            let val = score(&val_logits, &self.prepared.val.labels);
            let seconds = start.elapsed().as_secs_f64();
            let improved = self
                .state
                .best_val
                .is_none_or(|b| val.accuracy > b.accuracy);
            if improved {
                self.run.checkpoint().write_weights(&self.model)?;
                self.state.best_val = Some(val);
                self.state.best_epoch = epoch + 1;
                self.state.epochs_since_best = 0;
            } else {
                self.state.epochs_since_best += 1;
            }
            schedule.observe(&mut self.state.plateau, &val);
            self.history.push(EpochRecord {
                epoch: epoch + 1,
                train_loss,
                train_acc,
                val_loss: val.loss,
                val_acc: val.accuracy,
                lr,
                seconds,
            });
            self.state.epochs_done = epoch + 1;
            self.state.steps = self.optimizer.steps();
            self.state.train_seconds += seconds;
            // The state file is written last: it is what makes the epoch count as done.
            self.model.save(&self.run.last_model())?;
            self.optimizer.save(&self.run.optimizer())?;
            self.run.write_history(&self.history)?;
            write_json(&self.run.state(), &self.state)?;
            if options.verbose {
                println!(
                    "{} epoch {:>3}/{}  train loss {:.4} acc {:6.2}%  val loss {:.4} acc {:6.2}%  lr {:.2e}  {:6.1} s  {:>6.0} img/s{}",
                    c.model.kind,
                    epoch + 1,
                    c.epochs,
                    train_loss,
                    100.0 * train_acc,
                    val.loss,
                    100.0 * val.accuracy,
                    lr,
                    seconds,
                    self.prepared.train.len() as f64 / seconds,
                    if improved { "  *" } else { "" }
                );
            }
            epochs_this_call += 1;
            if c.patience
                .is_some_and(|p| self.state.epochs_since_best >= p)
            {
                stopped_early = true;
                break;
            }
            if options
                .interrupt_after
                .is_some_and(|n| epochs_this_call >= n)
            {
                return Ok(None);
            }
        }
        self.finish(stopped_early).map(Some)
    }

    fn train_epoch(
        &mut self,
        epoch: usize,
        schedule: &Schedule,
        options: &RunOptions,
    ) -> anyhow::Result<(f64, f64, f64)> {
        let c = &self.config.train;
        self.model
            .reseed_dropout(derive_seed(c.seed, 1000 + epoch as u64));
        let loader = Loader::new(
            &self.prepared.train,
            self.prepared.normalizer,
            c.batch_size,
            self.device,
        )
        .with_augment(c.augment)
        .with_seed(derive_seed(c.seed, 1));
        let loader = match &self.resident {
            Some(r) => loader.with_resident(r.clone())?,
            None => loader,
        };
        let bar = if options.progress {
            indicatif::ProgressBar::new(loader.num_batches() as u64)
        } else {
            indicatif::ProgressBar::hidden()
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix} [{bar:25}] {pos}/{len} {msg} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(format!("{} epoch {}/{}", c.model.kind, epoch + 1, c.epochs));
        let start = Instant::now();
        let mut steps = EpochSteps::default();
        let mut lr = self.optimizer.lr();
        let mut shown = Instant::now();
        for (i, batch) in loader.epoch(epoch as u64).enumerate() {
            let batch = batch?;
            lr = schedule.lr(epoch, i, &self.state.plateau);
            self.optimizer.set_lr(lr);
            let step = train_step(&self.model, &mut self.optimizer, &batch, c.label_smoothing)?;
            steps.push(step, batch.len());
            bar.inc(1);
            // The running loss and accuracy are read for a visible bar only, once a second.
            if !bar.is_hidden() && shown.elapsed().as_secs_f64() >= 1.0 {
                shown = Instant::now();
                let (loss, acc) = steps.read()?.means();
                bar.set_message(format!(
                    "loss {loss:.4} acc {:.2}% {:.0} img/s",
                    100.0 * acc,
                    steps.images() as f64 / start.elapsed().as_secs_f64()
                ));
            }
        }
        bar.finish_and_clear();
        let read = steps.read()?;
        if let Some((i, loss)) = read.first_non_finite() {
            bail!(
                "the loss became {loss} at epoch {} batch {}: training stopped. The last good checkpoint is {} ({} epochs done); try a lower --lr (now {lr:.2e})",
                epoch + 1,
                i + 1,
                self.run.last_model().display(),
                self.state.epochs_done
            );
        }
        let (loss, acc) = read.means();
        Ok((loss, acc, lr))
    }

    fn finish(mut self, stopped_early: bool) -> anyhow::Result<RunSummary> {
        let c = &self.config.train;
        self.model.load(&self.run.best_model())?;
        let test_logits = logits(
            &self.model,
            &self.data.test,
            self.prepared.normalizer,
            self.device,
        )?;
        let test = score(&test_logits, &self.data.test.labels);
        let images = (self.prepared.train.len() * self.state.epochs_done) as f64;
        let summary = RunSummary {
            model: c.model.kind,
            seed: c.seed,
            param_count: self.config.param_count,
            epochs_run: self.state.epochs_done,
            best_epoch: self.state.best_epoch,
            stopped_early,
            val: self.state.best_val.unwrap_or(Score {
                loss: f64::NAN,
                accuracy: 0.0,
            }),
            test,
            train_seconds: self.state.train_seconds,
            train_images_per_second: images / self.state.train_seconds.max(1e-9),
        };
        write_json(&self.run.summary(), &summary)?;
        Ok(summary)
    }
}
