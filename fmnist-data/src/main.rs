//! `fmnist-data`: find (or download) the data, verify it and print what it holds.
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use fmnist_data::{stratified_split, DataArgs, FashionMnist};

/// Finds Fashion-MNIST (or downloads it), verifies the checksums and prints a summary:
/// where the files are, whether they check out, and the images per class per split.
#[derive(Parser, Debug)]
#[command(name = "fmnist-data", version)]
struct Cli {
    #[command(flatten)]
    data: DataArgs,
    /// Fraction of the training images held out for validation (stratified by class).
    #[arg(long, default_value_t = 0.2)]
    val_frac: f64,
    /// Seed of the train/validation split.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let start = Instant::now();
    let data = cli.data.load()?;
    let elapsed = start.elapsed();
    print_summary(&data, cli.val_frac, cli.seed)?;
    println!("loaded and checked in {:.2} s", elapsed.as_secs_f64());
    Ok(())
}

fn print_summary(data: &FashionMnist, val_frac: f64, seed: u64) -> anyhow::Result<()> {
    let k = data.num_classes();
    let split = stratified_split(&data.train.labels, k, val_frac, seed)?;
    let count = |idx: &[u32]| {
        let mut c = vec![0usize; k];
        for &i in idx {
            c[data.train.labels[i as usize] as usize] += 1;
        }
        c
    };
    let (train, val) = (count(&split.train), count(&split.val));
    let test = data.test.class_counts(k);
    let all = data.train.class_counts(k);
    println!(
        "source     {} ({})",
        data.source.dir.display(),
        data.source.origin
    );
    println!(
        "checksums  {}",
        if data.verified {
            "SHA-256 of all four files verified"
        } else {
            "not verified (--verify none)"
        }
    );
    println!(
        "images     {}x{}, {} classes",
        data.train.rows, data.train.cols, k
    );
    println!("split      val_frac {val_frac}, seed {seed} (stratified)");
    println!();
    println!(
        "{:<14} {:>9} {:>9} {:>9} {:>9}",
        "class", "train+val", "train", "val", "test"
    );
    for c in 0..k {
        println!(
            "{:<14} {:>9} {:>9} {:>9} {:>9}",
            data.class_names[c], all[c], train[c], val[c], test[c]
        );
    }
    let sum = |v: &[usize]| v.iter().sum::<usize>();
    println!(
        "{:<14} {:>9} {:>9} {:>9} {:>9}",
        "total",
        sum(&all),
        sum(&train),
        sum(&val),
        sum(&test)
    );
    Ok(())
}
