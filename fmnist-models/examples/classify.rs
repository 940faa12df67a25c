//! Classifies image files with a trained run: the ten probabilities, the most likely class.
//!
//! `cargo run --release -p fmnist-models --example classify -- [--run DIR] IMAGE...`
//! (default run: `results/resnet-best`). Images are read as 28x28 grey levels with the item
//! light on black, as in Fashion-MNIST; `fmnist-eval predict` also fits and inverts photos.
use anyhow::Context;
use fmnist_models::{argmax, Classifier};

fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let run = match args.iter().position(|a| a == "--run") {
        Some(i) => {
            args.remove(i);
            anyhow::ensure!(i < args.len(), "--run needs a folder");
            args.remove(i)
        }
        None => "results/resnet-best".into(),
    };
    let classifier = Classifier::load(&run, &candle::Device::Cpu)?;
    for path in &args {
        let image = image::open(path).with_context(|| format!("reading {path}"))?;
        let gray = image.to_luma8();
        let gray = image::imageops::resize(&gray, 28, 28, image::imageops::FilterType::Triangle);
        let probabilities = classifier.classify(gray.as_raw())?;
        let best = argmax(&probabilities);
        let name = &classifier.class_names()[best];
        println!("{path}: {name} ({:.1}%)", 100.0 * probabilities[best]);
    }
    Ok(())
}
