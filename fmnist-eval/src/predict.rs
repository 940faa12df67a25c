//! Classifying a person's own images: decoding (bounded), turning a photo into a 28x28
//! Fashion-MNIST-like input (grayscale, light item on dark, fitted and centred by mass),
//! and the top-k classes with probabilities.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use fmnist_models::Classifier;

use crate::plots::Tile;
use image::{GrayImage, Luma};
use serde::Serialize;

/// Side of the images the models read.
pub const SIDE: u32 = 28;
/// Images wider or taller than this are refused before decoding.
pub const MAX_SIDE: u32 = 8192;
/// File endings taken from a directory.
pub const IMAGE_EXTENSIONS: [&str; 8] = ["png", "jpg", "jpeg", "bmp", "webp", "gif", "tif", "tiff"];

/// Whether a photo's colours are flipped so the item is light on a dark background.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Invert {
    /// Invert when the image's border is mostly light (a photo on a light background).
    #[default]
    Auto,
    Yes,
    No,
}

/// Why bytes are not an image the model can read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    Empty,
    /// Not one of the formats `image` decodes (the format comes from the content).
    UnknownFormat,
    /// Wider or taller than [`MAX_SIDE`], or over 256 MiB decoded.
    TooLarge,
    /// A known format whose content does not decode (truncated, corrupt).
    Corrupt(String),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Empty => f.write_str("empty file"),
            DecodeError::UnknownFormat => {
                f.write_str("not an image in a known format (PNG, JPEG, BMP, WebP, GIF, TIFF)")
            }
            DecodeError::TooLarge => write!(
                f,
                "image too large (the limit is {MAX_SIDE}x{MAX_SIDE} pixels)"
            ),
            DecodeError::Corrupt(why) => write!(f, "cannot decode: {why}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Decodes `bytes` with bounds on the image: at most [`MAX_SIDE`] pixels a side, 256 MiB
/// decoded, the format taken from the content, never from a name.
pub fn decode_bytes(bytes: &[u8]) -> Result<image::DynamicImage, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    let format = image::guess_format(bytes).map_err(|_| DecodeError::UnknownFormat)?;
    let mut reader = image::io::Reader::with_format(std::io::Cursor::new(bytes), format);
    let mut limits = image::io::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(256 * 1024 * 1024);
    reader.limits(limits);
    reader.decode().map_err(|e| match e {
        image::ImageError::Limits(_) => DecodeError::TooLarge,
        other => DecodeError::Corrupt(other.to_string()),
    })
}

/// Decodes the file `path` as [`decode_bytes`] does, naming the file in errors.
pub fn decode(path: &Path) -> anyhow::Result<image::DynamicImage> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    decode_bytes(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Grayscale with transparency composited onto white (the usual background of product shots).
fn to_gray(img: &image::DynamicImage) -> GrayImage {
    let la = img.to_luma_alpha8();
    GrayImage::from_fn(la.width(), la.height(), |x, y| {
        let [l, a] = la.get_pixel(x, y).0;
        let a = a as f32 / 255.0;
        Luma([(l as f32 * a + 255.0 * (1.0 - a)).round() as u8])
    })
}

/// Mean of the outermost pixels.
fn border_mean(g: &GrayImage) -> f64 {
    let (w, h) = g.dimensions();
    let mut sum = 0u64;
    let mut n = 0u64;
    for (x, y, p) in g.enumerate_pixels() {
        if x == 0 || y == 0 || x + 1 == w || y + 1 == h {
            sum += p.0[0] as u64;
            n += 1;
        }
    }
    sum as f64 / n.max(1) as f64
}

/// The 28x28 input the model sees for `img`, and whether it was inverted.
///
/// An image already 28x28 with a dark background is taken as it is (it is in the dataset's
/// format). Otherwise: grayscale, inverted if needed, cropped to the item, its longer side
/// resized to 28, placed on black with its centre of mass at the centre (kept in frame).
pub fn preprocess(img: &image::DynamicImage, invert: Invert) -> (GrayImage, bool) {
    let mut g = to_gray(img);
    let flip = match invert {
        Invert::Yes => true,
        Invert::No => false,
        Invert::Auto => border_mean(&g) > 127.0,
    };
    if flip {
        image::imageops::invert(&mut g);
    }
    if g.dimensions() == (SIDE, SIDE) {
        return (g, flip);
    }
    // Crop to the pixels that are clearly item (above a fifth of the brightest).
    let max = g.pixels().map(|p| p.0[0]).max().unwrap_or(0);
    let cut = (max as u32 / 5) as u8;
    let (mut x0, mut y0, mut x1, mut y1) = (u32::MAX, u32::MAX, 0, 0);
    for (x, y, p) in g.enumerate_pixels() {
        if p.0[0] > cut {
            x0 = x0.min(x);
            y0 = y0.min(y);
            x1 = x1.max(x);
            y1 = y1.max(y);
        }
    }
    if x0 > x1 {
        return (GrayImage::new(SIDE, SIDE), flip);
    }
    let crop = image::imageops::crop_imm(&g, x0, y0, x1 - x0 + 1, y1 - y0 + 1).to_image();
    let (cw, ch) = crop.dimensions();
    let scale = SIDE as f64 / cw.max(ch) as f64;
    let (w, h) = (
        ((cw as f64 * scale).round() as u32).clamp(1, SIDE),
        ((ch as f64 * scale).round() as u32).clamp(1, SIDE),
    );
    let small = image::imageops::resize(&crop, w, h, image::imageops::FilterType::Triangle);
    // Centre of mass of the resized item.
    let (mut mx, mut my, mut m) = (0.0, 0.0, 0.0);
    for (x, y, p) in small.enumerate_pixels() {
        let v = p.0[0] as f64;
        mx += v * x as f64;
        my += v * y as f64;
        m += v;
    }
    let (cx, cy) = if m > 0.0 {
        (mx / m, my / m)
    } else {
        (w as f64 / 2.0, h as f64 / 2.0)
    };
    let left = ((SIDE as f64 / 2.0 - cx).round() as i64).clamp(0, (SIDE - w) as i64);
    let top = ((SIDE as f64 / 2.0 - cy).round() as i64).clamp(0, (SIDE - h) as i64);
    let mut out = GrayImage::new(SIDE, SIDE);
    image::imageops::overlay(&mut out, &small, left, top);
    (out, flip)
}

/// One class and its probability.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ranked {
    pub class: String,
    pub probability: f32,
}

/// The class indices, most probable first (ties: the lower index first).
fn ranking(probs: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    order
}

/// The `k` most probable classes, most probable first.
pub fn top_k(probs: &[f32], names: &[String], k: usize) -> Vec<Ranked> {
    ranking(probs)
        .into_iter()
        .take(k)
        .map(|i| Ranked {
            class: names.get(i).cloned().unwrap_or_else(|| i.to_string()),
            probability: probs[i],
        })
        .collect()
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

/// The outcome for one file (a line of the report, an element of the JSON).
#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    pub file: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub top: Vec<Ranked>,
    /// The top probability is below the threshold: a person should look.
    pub needs_review: bool,
    /// The second class where it and the first are both at least [`BOTH_LIKELY`]: the image
    /// could be either (a tagging tool would offer both).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub second_suggestion: Option<Ranked>,
    pub inverted: bool,
}

/// Two classes both at least this probable are both suggested.
pub const BOTH_LIKELY: f32 = 0.4;

impl Prediction {
    /// The outcome for `file` of probabilities `probs`.
    pub fn new(
        file: String,
        probs: &[f32],
        names: &[String],
        top: usize,
        threshold: f32,
        inverted: bool,
    ) -> Self {
        let ranked = top_k(probs, names, top.max(2));
        let needs_review = ranked[0].probability < threshold;
        let second_suggestion = (ranked[1].probability >= BOTH_LIKELY).then(|| ranked[1].clone());
        Prediction {
            file,
            error: None,
            top: ranked.into_iter().take(top.max(1)).collect(),
            needs_review,
            second_suggestion,
            inverted,
        }
    }

    /// The outcome for `file` that could not be classified.
    pub fn failed(file: String, error: String) -> Self {
        Prediction {
            file,
            error: Some(error),
            top: Vec::new(),
            needs_review: false,
            second_suggestion: None,
            inverted: false,
        }
    }
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
            let (input, inverted) = preprocess(&img, options.invert);
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
    let side = SIDE as usize;
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
