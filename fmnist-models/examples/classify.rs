//! Classifies image files with a trained run: the ten probabilities, the most likely class.
//!
//! `cargo run --release -p fmnist-models --example classify -- [--run DIR] IMAGE...`
//! (default run: `results/resnet-best`). Each image is decoded with bounds and fitted to the
//! model's input as `fmnist-eval predict` does: a photo of a dark garment on a light
//! background is inverted, cropped to the item and centred, a 28x28 Fashion-MNIST image is
//! read as it is.
use anyhow::Context;
use fmnist_models::photo::{self, Invert};
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
        let bytes = std::fs::read(path).with_context(|| format!("reading {path}"))?;
        let image = photo::decode_bytes(&bytes).with_context(|| path.clone())?;
        let (probabilities, inverted) = classifier.classify_photo(&image, Invert::Auto)?;
        let best = argmax(&probabilities);
        let name = &classifier.class_names()[best];
        let note = if inverted { " (inverted)" } else { "" };
        println!("{path}: {name} ({:.1}%){note}", 100.0 * probabilities[best]);
    }
    Ok(())
}
