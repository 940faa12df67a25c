//! `predict` on images written to disk: PNGs of test images classify as the tensors do, light
//! backgrounds are inverted, enlarged photos are fitted back to 28x28, and every bad input
//! gets its own message while the other files are still classified.
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle::Device;
use fmnist_data::{DataArgs, FashionMnist, Normalization, FASHION_MNIST_CLASSES};
use fmnist_eval::predict::{predict_files, PredictOptions};
use fmnist_models::photo::Invert;
use fmnist_models::prediction::Prediction;
use fmnist_models::{argmax, Classifier, ModelKind};
use fmnist_train::{Preset, RunDir, RunOptions, TrainConfig};
use image::GrayImage;

fn names() -> Vec<String> {
    FASHION_MNIST_CLASSES
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn options() -> PredictOptions {
    PredictOptions {
        top: 3,
        threshold: 0.5,
        invert: Invert::Auto,
        save_preprocessed: None,
        explain: None,
    }
}

/// The real data, or `None` (outside CI) when it is not installed.
fn real_data() -> Option<&'static FashionMnist> {
    static DATA: OnceLock<Option<FashionMnist>> = OnceLock::new();
    DATA.get_or_init(|| {
        match (DataArgs {
            no_download: true,
            ..DataArgs::default()
        })
        .load()
        {
            Ok(d) => Some(d),
            Err(e) if std::env::var_os("CI").is_none() => {
                eprintln!("skipped: Fashion-MNIST not installed ({e})");
                None
            }
            Err(e) => panic!("CI is set but Fashion-MNIST is missing: {e}"),
        }
    })
    .as_ref()
}

/// A cnn trained for one epoch on 4,000 real images (about 80% accurate), shared by the tests.
fn trained() -> Option<&'static (tempfile::TempDir, Classifier)> {
    static MODEL: OnceLock<Option<(tempfile::TempDir, Classifier)>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let data = real_data()?;
            let dir = tempfile::tempdir().unwrap();
            let mut c = TrainConfig::preset(ModelKind::Cnn, Preset::Study);
            c.epochs = 1;
            c.subset = Some(4000);
            c.batch_size = 32;
            fmnist_train::train(&c, data, dir.path(), &Device::Cpu, &RunOptions::default())
                .unwrap();
            let classifier = Classifier::load(dir.path(), &Device::Cpu).unwrap();
            Some((dir, classifier))
        })
        .as_ref()
}

fn test_image(data: &FashionMnist, i: usize) -> GrayImage {
    GrayImage::from_raw(28, 28, data.test.pixels[i * 784..(i + 1) * 784].to_vec()).unwrap()
}

/// Tensor-path predictions of the first `n` test images.
fn tensor_predictions(classifier: &Classifier, data: &FashionMnist, n: usize) -> Vec<usize> {
    let idx: Vec<u32> = (0..n as u32).collect();
    let subset = data.test.select(&idx);
    classifier
        .logits(&subset)
        .unwrap()
        .chunks_exact(10)
        .map(argmax)
        .collect()
}

fn predicted_indices(preds: &[Prediction]) -> Vec<usize> {
    let names = names();
    preds
        .iter()
        .map(|p| names.iter().position(|n| *n == p.top[0].class).unwrap())
        .collect()
}

fn write_all(dir: &Path, images: &[GrayImage]) -> Vec<PathBuf> {
    images
        .iter()
        .enumerate()
        .map(|(i, img)| {
            let path = dir.join(format!("item{i:03}.png"));
            img.save(&path).unwrap();
            path
        })
        .collect()
}

/// The first `n` test images written as PNG files (and the folder that holds them).
fn first_test_images_as_pngs(data: &FashionMnist, n: usize) -> (tempfile::TempDir, Vec<PathBuf>) {
    let dir = tempfile::tempdir().unwrap();
    let images: Vec<GrayImage> = (0..n).map(|i| test_image(data, i)).collect();
    let paths = write_all(dir.path(), &images);
    (dir, paths)
}

#[test]
fn test_images_saved_as_png_classify_as_their_tensors() {
    let (Some(data), Some((_, classifier))) = (real_data(), trained()) else {
        return;
    };
    let (_dir, paths) = first_test_images_as_pngs(data, 100);
    let preds = predict_files(classifier, &paths, &options()).unwrap();
    assert!(preds.iter().all(|p| p.error.is_none() && !p.inverted));
    assert_eq!(
        predicted_indices(&preds),
        tensor_predictions(classifier, data, 100)
    );
}

#[test]
fn mirror_tta_predictions_match_the_two_view_tensor_path() {
    let (Some(data), Some((dir, one_view_classifier))) = (real_data(), trained()) else {
        return;
    };
    // The same run with mirror TTA switched on in its config.json.
    let tta = tempfile::tempdir().unwrap();
    let run = RunDir::new(dir.path());
    std::fs::copy(run.best_model(), RunDir::new(tta.path()).best_model()).unwrap();
    let mut config = run.read_config().unwrap();
    config.train.model.mirror_tta = true;
    fmnist_train::run::write_json(&RunDir::new(tta.path()).config(), &config).unwrap();
    let two_view_classifier = Classifier::load(tta.path(), &Device::Cpu).unwrap();
    let (_dir, paths) = first_test_images_as_pngs(data, 100);
    let one_view = predict_files(one_view_classifier, &paths, &options()).unwrap();
    let two_views = predict_files(&two_view_classifier, &paths, &options()).unwrap();
    assert_eq!(
        predicted_indices(&two_views),
        tensor_predictions(&two_view_classifier, data, 100)
    );
    // The mirror view changes the scores: a model trained without mirroring is not symmetric.
    assert!(one_view
        .iter()
        .zip(&two_views)
        .any(|(a, b)| (a.top[0].probability - b.top[0].probability).abs() > 1e-3));
}

#[test]
fn light_background_renditions_are_inverted_and_classify_the_same() {
    let (Some(data), Some((_, classifier))) = (real_data(), trained()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let light: Vec<GrayImage> = (0..100)
        .map(|i| {
            let mut g = test_image(data, i);
            image::imageops::invert(&mut g);
            g
        })
        .collect();
    let preds = predict_files(classifier, &write_all(dir.path(), &light), &options()).unwrap();
    assert!(
        preds.iter().all(|p| p.inverted),
        "auto-inversion missed a light background"
    );
    assert_eq!(
        predicted_indices(&preds),
        tensor_predictions(classifier, data, 100)
    );
}

#[test]
fn enlarged_photos_on_white_are_fitted_back_and_mostly_agree() {
    let (Some(data), Some((_, classifier))) = (real_data(), trained()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let photos: Vec<GrayImage> = (0..100)
        .map(|i| {
            let mut g = image::imageops::resize(
                &test_image(data, i),
                150,
                150,
                image::imageops::FilterType::Nearest,
            );
            image::imageops::invert(&mut g);
            let mut canvas = GrayImage::from_pixel(200, 180, image::Luma([255]));
            image::imageops::overlay(&mut canvas, &g, 30, 10);
            canvas
        })
        .collect();
    let saved = tempfile::tempdir().unwrap();
    let opts = PredictOptions {
        save_preprocessed: Some(saved.path().to_path_buf()),
        explain: None,
        ..options()
    };
    let preds = predict_files(classifier, &write_all(dir.path(), &photos), &opts).unwrap();
    let agree = predicted_indices(&preds)
        .iter()
        .zip(tensor_predictions(classifier, data, 100))
        .filter(|(a, b)| **a == *b)
        .count();
    assert!(agree >= 85, "only {agree} of 100 agree");
    let first = image::open(saved.path().join("item000.28x28.png")).unwrap();
    assert_eq!((first.width(), first.height()), (28, 28));
}

/// A run folder of an untrained cnn (one epoch on 200 blank images).
fn untrained_run() -> tempfile::TempDir {
    untrained(ModelKind::Cnn)
}

/// A run folder of an untrained `kind` (one epoch on 200 blank images).
fn untrained(kind: ModelKind) -> tempfile::TempDir {
    let data = FashionMnist {
        source: fmnist_data::DataSource {
            dir: "x".into(),
            origin: fmnist_data::Origin::Flag,
        },
        train: fmnist_data::ImageSet {
            rows: 28,
            cols: 28,
            pixels: vec![0; 200 * 784],
            labels: (0..200).map(|i| (i % 10) as u8).collect(),
        },
        test: fmnist_data::ImageSet {
            rows: 28,
            cols: 28,
            pixels: vec![0; 784],
            labels: vec![0],
        },
        class_names: names(),
        verified: false,
    };
    let dir = tempfile::tempdir().unwrap();
    let mut c = TrainConfig::preset(kind, Preset::Study);
    c.epochs = 1;
    c.model.normalization = Normalization::Unit;
    fmnist_train::train(&c, &data, dir.path(), &Device::Cpu, &RunOptions::default()).unwrap();
    dir
}

#[test]
fn every_bad_input_has_its_own_message_and_the_rest_are_classified() {
    let run = untrained_run();
    let classifier = Classifier::load(run.path(), &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    std::fs::write(p("notes.png"), b"this is text, not a picture").unwrap();
    std::fs::write(p("empty.png"), b"").unwrap();
    let good = GrayImage::from_fn(40, 30, |x, _| image::Luma([(x * 6) as u8]));
    good.save(p("good.png")).unwrap();
    let bytes = std::fs::read(p("good.png")).unwrap();
    std::fs::write(p("truncated.png"), &bytes[..bytes.len() / 2]).unwrap();
    GrayImage::new(8193, 1).save(p("huge.png")).unwrap();
    let empty_dir = p("no-images");
    std::fs::create_dir(&empty_dir).unwrap();
    std::fs::write(empty_dir.join("readme.txt"), b"hi").unwrap();
    let inputs = [
        "notes.png",
        "empty.png",
        "truncated.png",
        "huge.png",
        "missing.png",
        "good.png",
    ]
    .map(p)
    .to_vec();
    let mut inputs = inputs;
    inputs.push(empty_dir.clone());
    let preds = predict_files(&classifier, &inputs, &options()).unwrap();
    let error = |i: usize| preds[i].error.clone().unwrap_or_default();
    assert!(
        error(0).ends_with(
            "notes.png: not an image in a known format (PNG, JPEG, BMP, WebP, GIF, TIFF)"
        ),
        "{}",
        error(0)
    );
    assert!(error(1).ends_with("empty.png: empty file"), "{}", error(1));
    assert!(
        error(2).contains("truncated.png: cannot decode"),
        "{}",
        error(2)
    );
    assert!(
        error(3).ends_with("huge.png: image too large (the limit is 8192x8192 pixels)"),
        "{}",
        error(3)
    );
    assert!(
        error(4).contains("missing.png: cannot read"),
        "{}",
        error(4)
    );
    assert!(
        preds[5].error.is_none() && preds[5].top.len() == 3,
        "{:?}",
        preds[5]
    );
    assert!(
        error(6).contains("no-images: no images in this directory"),
        "{}",
        error(6)
    );
}

#[test]
fn a_checkpoint_that_does_not_fit_its_config_is_a_clear_error() {
    let dir = untrained_run();
    let run = RunDir::new(dir.path());
    let mut config = run.read_config().unwrap();
    config.train.model.kind = ModelKind::Lstm;
    fmnist_train::run::write_json(&run.config(), &config).unwrap();
    let load = |path: &Path| {
        Classifier::load(path, &Device::Cpu)
            .err()
            .unwrap()
            .to_string()
    };
    let msg = load(dir.path());
    assert!(
        msg.starts_with(&format!("{}: tensor ", run.best_model().display()))
            && msg.ends_with("is missing: the checkpoint is not a 'lstm' model"),
        "{msg}"
    );
    std::fs::remove_file(run.best_model()).unwrap();
    assert_eq!(
        load(dir.path()),
        format!(
            "{}: no checkpoint (the run never finished an epoch?)",
            run.best_model().display()
        )
    );
    let msg = load(&dir.path().join("nope"));
    assert!(
        msg.contains("nope: not a run folder (no config.json)"),
        "{msg}"
    );
}

#[test]
fn explain_writes_a_grad_cam_per_image_for_a_cnn_and_refuses_other_models() {
    let Some(data) = real_data() else { return };
    let Some((_, classifier)) = trained() else {
        return;
    };
    let (_dir, paths) = first_test_images_as_pngs(data, 2);
    let out = tempfile::tempdir().unwrap();
    let options = PredictOptions {
        explain: Some(out.path().join("why")),
        ..options()
    };
    let preds = predict_files(classifier, &paths, &options).unwrap();
    assert!(preds.iter().all(|p| p.error.is_none()));
    for path in &paths {
        let stem = path.file_stem().unwrap().to_string_lossy();
        let png = out.path().join("why").join(format!("{stem}.gradcam.png"));
        let img = image::open(&png).unwrap_or_else(|e| panic!("{}: {e}", png.display()));
        assert!(img.width() > 3 * 100, "three tiles side by side");
    }
    let mlp = untrained(ModelKind::Mlp);
    let mlp = Classifier::load(mlp.path(), &Device::Cpu).unwrap();
    let err = predict_files(&mlp, &paths, &options)
        .unwrap_err()
        .to_string();
    assert!(err.contains("has no convolutions"), "{err}");
}
