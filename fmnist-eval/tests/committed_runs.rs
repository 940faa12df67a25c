//! Every run committed in `results/` still loads as a classifier and scores the test images as
//! it did when it was evaluated: the predicted class and the ten probabilities of
//! `predictions.csv` (written with six decimals). Fails, not skips, when `CI` is set and the
//! data is missing.
use std::path::Path;

use candle::Device;
use fmnist_data::DataArgs;
use fmnist_models::{argmax, softmax_rows, Classifier};
use fmnist_train::{find_runs, RunDir};

/// Test images checked per run.
const IMAGES: usize = 200;

#[test]
fn committed_runs_load_and_give_their_recorded_predictions() {
    let results = Path::new(env!("CARGO_MANIFEST_DIR")).join("../results");
    let runs = find_runs(&results).unwrap();
    assert!(
        runs.len() >= 6,
        "only {} runs under {}",
        runs.len(),
        results.display()
    );
    let data = match (DataArgs {
        no_download: true,
        ..DataArgs::default()
    })
    .load()
    {
        Ok(d) => Some(d),
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("predictions not checked: Fashion-MNIST not installed ({e})");
            None
        }
        Err(e) => panic!("CI is set but Fashion-MNIST is missing: {e}"),
    };
    let first: Vec<u32> = (0..IMAGES as u32).collect();
    for (name, dir) in runs {
        let classifier = Classifier::load(&dir, &Device::Cpu).unwrap();
        let config = RunDir::new(&dir).read_config().unwrap();
        assert_eq!(
            classifier.model().param_count(),
            config.param_count,
            "{name}"
        );
        assert_eq!(classifier.model().config(), &config.train.model, "{name}");
        let Some(data) = &data else { continue };
        let logits = classifier.logits(&data.test.select(&first)).unwrap();
        let probs = softmax_rows(&logits, 10);
        let mut csv = csv::Reader::from_path(dir.join("predictions.csv")).unwrap();
        for (i, row) in csv.records().take(IMAGES).enumerate() {
            let row = row.unwrap();
            let recorded: Vec<f32> = (3..13).map(|c| row[c].parse().unwrap()).collect();
            let ours = &probs[i * 10..(i + 1) * 10];
            let predicted: usize = row[2].parse().unwrap();
            assert_eq!(argmax(ours), predicted, "{name}: test image {i}");
            for (a, b) in ours.iter().zip(&recorded) {
                assert!((a - b).abs() <= 1e-5, "{name}: test image {i}: {a} vs {b}");
            }
        }
    }
}
