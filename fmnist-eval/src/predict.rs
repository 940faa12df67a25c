//! `predict`: classifying a person's own image files (directories expanded), each fitted to
//! the model's input by the model library ([`fmnist_models::photo`]), with the top classes
//! printed and, on request, the 28x28 inputs and Grad-CAM sheets written.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use fmnist_models::photo::{self, Invert};
use fmnist_models::prediction::{ranking, Prediction};
use fmnist_models::Classifier;

use crate::plots::Tile;

/// File endings taken from a directory.
pub const IMAGE_EXTENSIONS: [&str; 8] = ["png", "jpg", "jpeg", "bmp", "webp", "gif", "tif", "tiff"];

/// Decodes the file `path` as [`photo::decode_bytes`] does, naming the file in errors.
pub fn decode(path: &Path) -> anyhow::Result<image::DynamicImage> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    photo::decode_bytes(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// The image files named by `paths`: files as given, directories expanded (not recursively) to
/// their files with an image ending, sorted. A directory without images is an error of its own.
pub fn expand(paths: &[PathBuf]) -> Vec<Result<PathBuf, String>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut files: Vec<PathBuf> = match std::fs::read_dir(p) {
                Ok(entries) => entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|f| {
                        f.is_file()
                            && f.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                                IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str())
                            })
                    })
                    .collect(),
                Err(e) => {
                    out.push(Err(format!(
                        "{}: cannot read the directory: {e}",
                        p.display()
                    )));
                    continue;
                }
            };
            if files.is_empty() {
                out.push(Err(format!(
                    "{}: no images in this directory (looked for {})",
                    p.display(),
                    IMAGE_EXTENSIONS.join(", ")
                )));
            }
            files.sort();
            out.extend(files.into_iter().map(Ok));
        } else {
            out.push(Ok(p.clone()));
        }
    }
    out
}

/// How [`predict_files`] works.
#[derive(Debug, Clone)]
pub struct PredictOptions {
    pub top: usize,
    pub threshold: f32,
    pub invert: Invert,
    /// Write the 28x28 input of each image here (as `NAME.28x28.png`).
    pub save_preprocessed: Option<PathBuf>,
    /// Write each image's Grad-CAM of its two likeliest classes here (as `NAME.gradcam.png`).
    pub explain: Option<PathBuf>,
}

/// Classifies every file of `paths`; one failure does not stop the others.
pub fn predict_files(
    classifier: &Classifier,
    paths: &[PathBuf],
    options: &PredictOptions,
) -> anyhow::Result<Vec<Prediction>> {
    let names = classifier.class_names();
    for dir in [&options.save_preprocessed, &options.explain]
        .into_iter()
        .flatten()
    {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if options.explain.is_some() && !classifier.model().kind().is_convolutional() {
        bail!(
            "--explain shows where a convolutional model looked; this run's model ({}) has no convolutions",
            classifier.model().kind()
        );
    }
    let mut out = Vec::new();
    for item in expand(paths) {
        let path = match item {
            Ok(p) => p,
            Err(error) => {
                let file = error.split(':').next().unwrap_or_default().to_string();
                out.push(Prediction::failed(file, error));
                continue;
            }
        };
        let file = path.display().to_string();
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "image".into());
        let result = decode(&path).and_then(|img| {
            let (input, inverted) = photo::fit(&img, options.invert);
            if let Some(dir) = &options.save_preprocessed {
                let target = dir.join(format!("{stem}.28x28.png"));
                input
                    .save(&target)
                    .with_context(|| format!("writing {}", target.display()))?;
            }
            let probs = classifier.classify(input.as_raw())?;
            if let Some(dir) = &options.explain {
                let target = dir.join(format!("{stem}.gradcam.png"));
                explain(classifier, input.as_raw(), &probs, &target)?;
            }
            Ok((probs, inverted))
        });
        out.push(match result {
            Ok((probs, inverted)) => Prediction::new(
                file,
                &probs,
                names,
                options.top,
                options.threshold,
                inverted,
            ),
            Err(e) => Prediction::failed(file, format!("{e:#}")),
        });
    }
    Ok(out)
}

/// Writes `target`: the 28x28 input, then its Grad-CAM for the two likeliest classes.
fn explain(
    classifier: &Classifier,
    input: &[u8],
    probs: &[f32],
    target: &Path,
) -> anyhow::Result<()> {
    let names = classifier.class_names();
    let top: Vec<usize> = ranking(probs).into_iter().take(2).collect();
    let maps = classifier
        .grad_cam(&[input, input], &top)?
        .context("the model has no convolutions")?;
    let pixels: Vec<f32> = input.iter().map(|&p| p as f32 / 255.0).collect();
    let side = photo::SIDE as usize;
    let mut tiles = vec![Tile {
        pixels: &pixels,
        rows: side,
        cols: side,
        caption: "input (28x28)".into(),
        alert: false,
        heat: None,
    }];
    for (&class, map) in top.iter().zip(&maps) {
        tiles.push(Tile {
            pixels: &pixels,
            rows: side,
            cols: side,
            caption: format!("{} {:.1}%", names[class], 100.0 * probs[class]),
            alert: false,
            heat: Some(map),
        });
    }
    let title = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    crate::plots::image_grid(
        target,
        &format!("{title}: Grad-CAM (red: evidence)"),
        &tiles,
        3,
        140,
        1,
    )
}

/// The line printed for one prediction.
pub fn describe(p: &Prediction) -> String {
    match &p.error {
        Some(e) => format!("error: {e}"),
        None => {
            let ranked: Vec<String> = p
                .top
                .iter()
                .map(|r| format!("{} {:.1}%", r.class, 100.0 * r.probability))
                .collect();
            format!(
                "{}: {}{}{}{}",
                p.file,
                ranked.join(", "),
                p.second_suggestion
                    .as_ref()
                    .map_or(String::new(), |s| format!("  [could also be {}]", s.class)),
                if p.inverted { " (inverted)" } else { "" },
                if p.needs_review {
                    "  [needs review: below the threshold]"
                } else {
                    ""
                }
            )
        }
    }
}
