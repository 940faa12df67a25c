//! The `fmnist-eval` binary: an empty results folder is a clear error, the numbers it prints
//! agree with metrics.json, per_class.csv, confusion.csv and summary.csv, an ensemble's
//! probabilities are the mean of its members', an unchanged run is not evaluated again, and
//! `similar` finds a training image itself first and reads its index from the run's cache.
use std::path::Path;
use std::process::Command;

use candle::Device;
use fmnist_data::idx::{encode_images, encode_labels};
use fmnist_data::{DataSource, FashionMnist, ImageSet, Origin, FASHION_MNIST_CLASSES};
use fmnist_models::ModelKind;
use fmnist_train::{Preset, RunOptions, TrainConfig};

/// Images whose class is a bright band at row 2c, plus pseudo-random noise.
fn set(n: usize, salt: usize) -> ImageSet {
    let mut pixels = Vec::with_capacity(n * 784);
    for i in 0..n {
        let c = i % 10;
        for p in 0..784 {
            let row = p / 28;
            pixels.push(if row >= 2 * c && row < 2 * c + 4 {
                200
            } else {
                ((p * 7919 + i * 104_729 + salt) % 160) as u8
            });
        }
    }
    ImageSet {
        rows: 28,
        cols: 28,
        pixels,
        labels: (0..n).map(|i| (i % 10) as u8).collect(),
    }
}

fn eval(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_fmnist-eval"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn an_empty_results_folder_says_what_to_run() {
    let dir = tempfile::tempdir().unwrap();
    let out = eval(&["--results", dir.path().to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no runs under") && err.contains("cargo xtask train-all"),
        "{err}"
    );
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "wrote into an empty results folder"
    );
    let out = eval(&["--results", dir.path().to_str().unwrap(), "--threads", "0"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--threads must be at least 1"), "{err}");
}

fn write_data(dir: &Path, data: &FashionMnist) {
    let files = [
        (
            "train-images-idx3-ubyte",
            encode_images(data.train.len(), 28, 28, &data.train.pixels),
        ),
        ("train-labels-idx1-ubyte", encode_labels(&data.train.labels)),
        (
            "t10k-images-idx3-ubyte",
            encode_images(data.test.len(), 28, 28, &data.test.pixels),
        ),
        ("t10k-labels-idx1-ubyte", encode_labels(&data.test.labels)),
    ];
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

fn class_names() -> Vec<String> {
    FASHION_MNIST_CLASSES
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// The synthetic data set, and a folder holding it as IDX files.
fn synthetic_data() -> (FashionMnist, tempfile::TempDir) {
    let data = FashionMnist {
        source: DataSource {
            dir: "synthetic".into(),
            origin: Origin::Flag,
        },
        train: set(300, 0),
        test: set(200, 1),
        class_names: class_names(),
        verified: false,
    };
    let dir = tempfile::tempdir().unwrap();
    write_data(dir.path(), &data);
    (data, dir)
}

/// The flags that point fmnist-eval at the synthetic data in `dir`.
fn data_flags(dir: &Path) -> Vec<String> {
    [
        "--data-dir",
        dir.to_str().unwrap(),
        "--verify",
        "none",
        "--class-names",
        &class_names().join(","),
    ]
    .map(String::from)
    .to_vec()
}

/// The probability columns of a predictions.csv, one row per image.
fn probabilities(file: &Path) -> Vec<Vec<f64>> {
    csv::Reader::from_path(file)
        .unwrap()
        .records()
        .map(|r| {
            r.unwrap()
                .iter()
                .skip(3)
                .map(|v| v.parse().unwrap())
                .collect()
        })
        .collect()
}

#[test]
fn an_ensemble_averages_its_members_and_joins_the_report() {
    let (data, data_dir) = synthetic_data();
    let results = tempfile::tempdir().unwrap();
    for (kind, name) in [(ModelKind::Mlp, "mlp"), (ModelKind::MlpBn, "mlp-bn")] {
        let mut c = TrainConfig::preset(kind, Preset::Study);
        c.epochs = 1;
        c.batch_size = 32;
        let run = results.path().join(name);
        fmnist_train::train(&c, &data, &run, &Device::Cpu, &RunOptions::default()).unwrap();
    }
    let root = results.path().to_str().unwrap().to_string();
    let mut args: Vec<String> = ["--results", &root].map(String::from).to_vec();
    args.extend(data_flags(data_dir.path()));
    args.push("--no-plots".into());
    // Evaluating the runs writes their predictions.csv.
    let runs = eval(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        runs.status.success(),
        "{}",
        String::from_utf8_lossy(&runs.stderr)
    );
    let mut ens: Vec<String> = ["--results", &root, "ensemble"].map(String::from).to_vec();
    ens.extend([format!("{root}/mlp"), format!("{root}/mlp-bn")]);
    ens.extend(["--name", "both", "--no-plots", "--threads", "1"].map(String::from));
    ens.extend(data_flags(data_dir.path()));
    let out = eval(&ens.iter().map(String::as_str).collect::<Vec<_>>());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = results.path().join("both");
    let a = probabilities(&results.path().join("mlp/predictions.csv"));
    let b = probabilities(&results.path().join("mlp-bn/predictions.csv"));
    let mean = probabilities(&dir.join("predictions.csv"));
    assert_eq!(mean.len(), 200);
    for ((a, b), m) in a.iter().zip(&b).zip(&mean) {
        for ((x, y), z) in a.iter().zip(b).zip(m) {
            assert!(((x + y) / 2.0 - z).abs() < 2e-6, "{x} {y} -> {z}");
        }
    }
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("ensemble.json")).unwrap()).unwrap();
    assert_eq!(record["members"].as_array().unwrap().len(), 2);
    assert_eq!(record["chosen_by"], "given");
    for member in record["members"].as_array().unwrap() {
        assert_eq!(member["picks"], 1, "{member}");
    }
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(record["test_acc"], metrics["gap"]["test"]["accuracy"]);
    let groups: Vec<Vec<u64>> =
        serde_json::from_value(metrics["garment_groups"]["confusion"].clone()).unwrap();
    assert_eq!(groups.iter().flatten().sum::<u64>(), 200);
    assert!(stdout.contains("== ensemble both: 2 members"), "{stdout}");
    // Each run given counts once: weight 1/2.
    let weighted = stdout.lines().filter(|l| l.contains(" 1/2 ")).count();
    assert_eq!(weighted, 2, "{stdout}");

    // The next evaluation lists the ensemble in the report.
    let again = eval(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(again.status.success());
    let report = std::fs::read_to_string(results.path().join("REPORT.md")).unwrap();
    assert!(
        report.contains("## Ensembles") && report.contains("[both](both/REPORT.md)"),
        "{report}"
    );
    // It is a row of the results table, of summary.csv and of the answer printed: the two
    // members' parameters summed, no seed of its own.
    assert!(
        report
            .contains("| study | ensemble | mlp + mlp-bn | [its page](both/REPORT.md) | 804,372 |"),
        "{report}"
    );
    let mut summary = csv::Reader::from_path(results.path().join("summary.csv")).unwrap();
    let rows: Vec<std::collections::HashMap<String, String>> =
        summary.deserialize().map(Result::unwrap).collect();
    let row = rows.iter().find(|r| r["run"] == "both").unwrap();
    assert_eq!(row["model"], "ensemble");
    assert_eq!(row["params"], "804372");
    assert_eq!((row["seed"].as_str(), row["epochs"].as_str()), ("", ""));
    assert_eq!(
        row["test_acc"].parse::<f64>().unwrap(),
        record["test_acc"].as_f64().unwrap()
    );
    let answer = String::from_utf8_lossy(&again.stdout);
    assert!(
        answer.lines().any(|l| l.starts_with("study   ensemble")),
        "{answer}"
    );
}

#[test]
fn ensembles_need_one_validation_set_which_a_split_seed_shares() {
    let (data, data_dir) = synthetic_data();
    let results = tempfile::tempdir().unwrap();
    // Seed 3 holds out seed 1's validation images (--split-seed 1); seed 2 its own.
    for (seed, split_seed) in [(1, None), (2, None), (3, Some(1))] {
        let mut c = TrainConfig::preset(ModelKind::Mlp, Preset::Study);
        c.epochs = 1;
        c.seed = seed;
        c.split_seed = split_seed;
        let run = results.path().join(format!("seed-{seed}"));
        fmnist_train::train(&c, &data, &run, &Device::Cpu, &RunOptions::default()).unwrap();
    }
    let root = results.path().to_str().unwrap().to_string();
    let mut ens: Vec<String> = ["--results", &root, "ensemble"].map(String::from).to_vec();
    ens.extend([format!("{root}/seed-1"), format!("{root}/seed-2")]);
    ens.extend(["--name", "mixed", "--choose-on-val"].map(String::from));
    ens.extend(data_flags(data_dir.path()));
    let out = eval(&ens.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("hold out different validation images"),
        "{err}"
    );
    assert!(!results.path().join("mixed").exists());

    let mut shared: Vec<String> = ["--results", &root, "ensemble"].map(String::from).to_vec();
    shared.extend([format!("{root}/seed-1"), format!("{root}/seed-3")]);
    shared.extend(["--name", "shared", "--choose-on-val", "--no-plots"].map(String::from));
    shared.extend(data_flags(data_dir.path()));
    let out = eval(&shared.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(results.path().join("shared/ensemble.json").is_file());
}

/// The MLP's study recipe cut to one epoch of batch 32.
fn one_epoch_mlp() -> TrainConfig {
    let mut c = TrainConfig::preset(ModelKind::Mlp, Preset::Study);
    c.epochs = 1;
    c.batch_size = 32;
    c
}

#[test]
fn printed_numbers_json_and_csv_agree() {
    let names = class_names();
    let (data, data_dir) = synthetic_data();
    let results = tempfile::tempdir().unwrap();
    let (c, run) = (one_epoch_mlp(), results.path().join("mlp"));
    fmnist_train::train(&c, &data, &run, &Device::Cpu, &RunOptions::default()).unwrap();
    let mut args: Vec<String> = ["--results", results.path().to_str().unwrap()]
        .map(String::from)
        .to_vec();
    args.extend(data_flags(data_dir.path()));
    args.push("--no-plots".into());
    let out = eval(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("metrics.json")).unwrap()).unwrap();
    let acc = metrics["gap"]["test"]["accuracy"].as_f64().unwrap();
    let confusion: Vec<Vec<u64>> = serde_json::from_value(metrics["confusion"].clone()).unwrap();
    let total: u64 = confusion.iter().flatten().sum();
    let diagonal: u64 = (0..10).map(|i| confusion[i][i]).sum();
    assert_eq!(total, 200);
    assert!((diagonal as f64 / total as f64 - acc).abs() < 1e-12);
    assert!(
        stdout.contains(&format!("test accuracy {:.2}%", 100.0 * acc)),
        "{stdout}"
    );

    let mut csv = csv::Reader::from_path(run.join("confusion.csv")).unwrap();
    let rows: Vec<Vec<u64>> = csv
        .records()
        .map(|r| {
            r.unwrap()
                .iter()
                .skip(1)
                .map(|v| v.parse().unwrap())
                .collect()
        })
        .collect();
    assert_eq!(rows, confusion);

    let mut per_class = csv::Reader::from_path(run.join("per_class.csv")).unwrap();
    for (i, record) in per_class.records().enumerate() {
        let record = record.unwrap();
        assert_eq!(&record[0], names[i]);
        let recall: f64 = record[3].parse().unwrap();
        assert_eq!(recall, metrics["per_class"][i]["recall"].as_f64().unwrap());
        let support: u64 = record[5].parse().unwrap();
        assert_eq!(support, confusion[i].iter().sum::<u64>());
    }

    let mut summary = csv::Reader::from_path(results.path().join("summary.csv")).unwrap();
    let headers = summary.headers().unwrap().clone();
    let row = summary.records().next().unwrap().unwrap();
    let col = |name: &str| row[headers.iter().position(|h| h == name).unwrap()].to_string();
    assert_eq!(col("run"), "mlp");
    assert_eq!(col("test_acc").parse::<f64>().unwrap(), acc);
    let page = std::fs::read_to_string(run.join("REPORT.md")).unwrap();
    assert!(
        page.contains(&format!("**{:.2}% test accuracy**", 100.0 * acc)),
        "{page}"
    );
    let report = std::fs::read_to_string(results.path().join("REPORT.md")).unwrap();
    assert!(report.contains("[42](mlp/REPORT.md)"), "{report}");
}

/// Test accuracy of a run, from its metrics.json.
fn test_accuracy(run: &Path) -> f64 {
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("metrics.json")).unwrap()).unwrap();
    metrics["gap"]["test"]["accuracy"].as_f64().unwrap()
}

#[test]
fn the_report_leads_with_findings_computed_from_the_runs() {
    let (data, data_dir) = synthetic_data();
    let results = tempfile::tempdir().unwrap();
    // Two recipes of the cnn's study preset: 2 epochs (two seeds) and 3 epochs (one).
    let runs = [
        (ModelKind::Cnn, 1, "cnn/seed-1", 2),
        (ModelKind::Cnn, 2, "cnn/seed-2", 2),
        (ModelKind::Cnn, 1, "cnn-3-epochs/seed-1", 3),
        (ModelKind::Lstm, 1, "lstm/seed-1", 2),
        (ModelKind::Lstm, 2, "lstm/seed-2", 2),
    ];
    for (model, seed, name, epochs) in runs {
        let mut c = TrainConfig::preset(model, Preset::Study);
        c.epochs = epochs;
        c.batch_size = 32;
        c.seed = seed;
        let run = results.path().join(name);
        fmnist_train::train(&c, &data, &run, &Device::Cpu, &RunOptions::default()).unwrap();
    }
    // Runs copied without their summary (as a stopped run has none) have no training time.
    for name in ["cnn-3-epochs/seed-1", "lstm/seed-2"] {
        std::fs::remove_file(results.path().join(name).join("summary.json")).unwrap();
    }
    let mut args: Vec<String> = ["--results", results.path().to_str().unwrap()]
        .map(String::from)
        .to_vec();
    args.extend(data_flags(data_dir.path()));
    let out = eval(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = std::fs::read_to_string(results.path().join("REPORT.md")).unwrap();
    let findings = &report[report.find("## Findings").expect("a findings section")..];
    let stat = |model: &str| {
        let accs: Vec<f64> = [1, 2]
            .map(|seed| test_accuracy(&results.path().join(format!("{model}/seed-{seed}"))))
            .to_vec();
        let (m, s) = fmnist_models::mean_std(&accs);
        (
            m,
            format!(
                "`{model}` {:.2}% ± {:.2} (seeds 1, 2)",
                100.0 * m,
                100.0 * s
            ),
        )
    };
    let (cnn, lstm) = (stat("cnn"), stat("lstm"));
    let (first, second) = if cnn.0 >= lstm.0 {
        (&cnn, &lstm)
    } else {
        (&lstm, &cnn)
    };
    let ranking = format!("**CNN vs LSTM**, study recipe: {} > {}.", first.1, second.1);
    assert!(findings.contains(&ranking), "{ranking}\n{report}");
    assert!(findings.contains("**Hardest classes**"), "{report}");
    assert!(
        findings.contains("**Confusions every model makes**"),
        "{report}"
    );
    // One row per recipe, the seeds linking each run's own page.
    assert!(
        report.contains("[1](cnn/seed-1/REPORT.md), [2](cnn/seed-2/REPORT.md)"),
        "{report}"
    );
    for name in runs.map(|r| r.2) {
        assert!(results.path().join(name).join("REPORT.md").is_file());
    }
    for plot in [
        "accuracy_vs_parameters.png",
        "validation_study.png",
        "cnn_vs_lstm.png",
    ] {
        assert!(results.path().join(plot).is_file(), "{plot}");
        assert!(
            report.contains(&format!("]({plot})")),
            "{plot} not in the report"
        );
    }
    assert!(!report.contains("winner"), "{report}");
    // A recipe's training time is the mean over the runs that recorded one, "-" for none.
    assert!(!report.contains("NaN"), "{report}");
    let row = |run: &str| {
        report
            .lines()
            .find(|l| l.contains(run))
            .unwrap()
            .to_string()
    };
    let no_time = row("[1](cnn-3-epochs/seed-1/REPORT.md)");
    assert!(no_time.contains("| 3 | - |"), "{no_time}");
    let lstm_time = row("[1](lstm/seed-1/REPORT.md)");
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(results.path().join("lstm/seed-1/summary.json")).unwrap(),
    )
    .unwrap();
    let seconds = summary["train_seconds"].as_f64().unwrap();
    assert!(
        lstm_time.contains(&format!("| 2 | {seconds:.0} |")),
        "{seconds} {lstm_time}"
    );
    // The plots tell the two cnn recipes apart by what each changes in the preset.
    let svg = |name: &str| std::fs::read_to_string(results.path().join(name)).unwrap();
    let bars = svg("comparison.svg");
    for label in [
        "cnn batch-size=32 epochs=2 (study, 2 seeds)",
        "cnn batch-size=32 epochs=3 (study)",
    ] {
        assert!(bars.lines().any(|l| l == label), "{label}\n{bars}");
    }
    // One point per model and preset: the recipe with the most runs where none is the
    // preset as it is.
    let points = svg("accuracy_vs_parameters.svg");
    assert!(
        points.lines().any(|l| l == "cnn batch-size=32 epochs=2")
            && !points.lines().any(|l| l == "cnn batch-size=32 epochs=3"),
        "{points}"
    );
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> std::collections::BTreeMap<std::path::PathBuf, Vec<u8>> {
    let mut files = std::collections::BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

#[test]
fn an_unchanged_run_is_not_evaluated_again_and_changed_weights_are() {
    let (data, data_dir) = synthetic_data();
    let results = tempfile::tempdir().unwrap();
    let (c, run) = (one_epoch_mlp(), results.path().join("mlp"));
    fmnist_train::train(&c, &data, &run, &Device::Cpu, &RunOptions::default()).unwrap();
    let root = results.path().to_str().unwrap().to_string();
    let run_dir = run.to_str().unwrap().to_string();
    let eval_with = |extra: &[&str]| {
        let mut args: Vec<String> = vec!["--results".into(), root.clone()];
        args.extend(data_flags(data_dir.path()));
        args.extend(extra.iter().map(|s| s.to_string()));
        let out = eval(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };

    let first = eval_with(&[]);
    assert!(first.contains("evaluated mlp: test accuracy"), "{first}");
    assert!(run.join("evaluated.json").is_file());
    assert!(results.path().join("evaluated.json").is_file());
    let written = snapshot(results.path());

    // Again, over the folder and over the run: nothing is evaluated or written.
    let again = eval_with(&[]);
    assert!(
        again.contains("1 run, each unchanged since its evaluation"),
        "{again}"
    );
    assert!(!again.contains("evaluated mlp"), "{again}");
    let acc = test_accuracy(&run);
    assert!(again.contains(&format!("{:.2}%", 100.0 * acc)), "{again}");
    let one = eval_with(&["--run", &run_dir]);
    assert!(one.contains("1 run unchanged since evaluation"), "{one}");
    assert!(one.contains("confusion matrix"), "{one}");
    assert!(snapshot(results.path()) == written, "a file changed");

    // New weights (another seed's): the run and the folder are evaluated again.
    let other = tempfile::tempdir().unwrap();
    let c43 = TrainConfig { seed: 43, ..c };
    fmnist_train::train(
        &c43,
        &data,
        other.path(),
        &Device::Cpu,
        &RunOptions::default(),
    )
    .unwrap();
    std::fs::copy(
        other.path().join("model.safetensors"),
        run.join("model.safetensors"),
    )
    .unwrap();
    let changed = eval_with(&[]);
    assert!(
        changed.contains("evaluated mlp: test accuracy"),
        "{changed}"
    );
    let metrics =
        |files: &std::collections::BTreeMap<_, Vec<u8>>| files[&run.join("metrics.json")].clone();
    assert!(metrics(&snapshot(results.path())) != metrics(&written));
}

#[test]
fn similar_prints_the_nearest_training_images_and_draws_them() {
    let (data, data_dir) = synthetic_data();
    let results = tempfile::tempdir().unwrap();
    let run = results.path().join("mlp");
    fmnist_train::train(
        &one_epoch_mlp(),
        &data,
        &run,
        &Device::Cpu,
        &RunOptions::default(),
    )
    .unwrap();
    // Training image 7 itself, as a PNG: its nearest neighbour is itself, at distance 0.
    let query = results.path().join("seven.png");
    let (pixels, label) = data.train.get(7).unwrap();
    image::GrayImage::from_raw(28, 28, pixels.to_vec())
        .unwrap()
        .save(&query)
        .unwrap();
    let strip = results.path().join("strip.png");
    let mut args: Vec<String> = ["similar", query.to_str().unwrap(), "--top", "5", "--run"]
        .map(String::from)
        .to_vec();
    args.push(run.to_str().unwrap().into());
    args.extend(["--out".into(), strip.to_str().unwrap().into()]);
    args.extend(data_flags(data_dir.path()));
    let similar = |args: &[String]| {
        let out = eval(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        (String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
    };
    let (stdout, stderr) = similar(&args);
    assert!(stderr.contains("built and cached in"), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 5, "{stdout}");
    let name = &class_names()[label as usize];
    assert!(
        lines[0].starts_with(&format!(
            " 1. training image     7: {name:<12} distance 0.0000"
        )),
        "{stdout}"
    );
    assert!(image::open(&strip).unwrap().width() > 5 * 120);
    // The index is read from the run's cache the second time, with the same answer.
    let (again, stderr) = similar(&args);
    assert!(stderr.contains("read from"), "{stderr}");
    assert_eq!(again, stdout);
}
