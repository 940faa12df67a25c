//! The files an evaluation writes across the runs of a results folder: the sample sheet, the
//! accuracy and validation-curve plots, the family chart, the contact sheet, and the CNN
//! against the LSTM on the same test images. One run's own files are in [`crate::outputs`].
use std::path::{Path, PathBuf};

use anyhow::Context;
use fmnist_data::{write_atomic, FashionMnist};
use fmnist_models::ModelKind;
use fmnist_train::Preset;

use crate::evaluate::{Evaluation, Scores};
use crate::files;
use crate::findings::{self, RecipeRuns};
use crate::outputs::{test_image_grid, GridLayout};
use crate::plots;

/// `samples.png` in `dir`: eight test images of every class, a row per class.
pub fn write_samples(dir: &Path, data: &FashionMnist) -> anyhow::Result<PathBuf> {
    let k = data.num_classes();
    let mut picks = Vec::new();
    for c in 0..k {
        picks.extend(
            data.test
                .labels
                .iter()
                .enumerate()
                .filter(|(_, &l)| l as usize == c)
                .map(|(i, _)| i)
                .take(8),
        );
    }
    let path = dir.join(files::SAMPLES.png());
    test_image_grid(
        &path,
        "Fashion-MNIST test images, eight per class",
        data,
        &picks,
        |i| {
            (
                data.class_names[data.test.labels[i] as usize].clone(),
                false,
            )
        },
        GridLayout {
            columns: 8,
            tile_px: 80,
            caption_lines: 1,
        },
    )?;
    Ok(path)
}

/// The plots across runs in the results folder: accuracy against parameters, validation
/// accuracy per epoch overlaid per recipe, and the CNN and the LSTM on the same test images.
pub fn write_cross_run_plots(
    root: &Path,
    groups: &[RecipeRuns],
    data: &FashionMnist,
) -> anyhow::Result<()> {
    let presets = [Preset::Study, Preset::Best];
    // One point per model and preset, the recipe `find` takes for it (the preset as it is
    // where it was run); sizes are on the family chart, other variants in the report's table.
    let points: Vec<plots::ModelPoint> = groups
        .iter()
        .filter(|g| findings::find(groups, &g.model, g.preset).is_some_and(|f| std::ptr::eq(f, *g)))
        .filter_map(|g| {
            let series = presets.iter().position(|&p| p == g.preset)?;
            Some(plots::ModelPoint {
                label: g.label(),
                params: g.runs[0].config.param_count as f64,
                accuracy: 100.0 * g.test_accuracy().mean,
                std: 100.0 * g.test_accuracy().std,
                series,
            })
        })
        .collect();
    if !points.is_empty() {
        plots::accuracy_vs_parameters(
            &root.join(files::ACCURACY_VS_PARAMETERS.stem),
            &["study recipe", "best recipe"],
            &points,
        )?;
    }
    write_family_chart(root, groups)?;
    for (preset, plot) in presets
        .into_iter()
        .zip([files::VALIDATION_STUDY, files::VALIDATION_BEST])
    {
        // The first seed of each recipe: one line per model and recipe.
        let lines: Vec<plots::Line> = groups
            .iter()
            .filter(|g| g.preset == preset && !g.runs[0].history.is_empty())
            .map(|g| plots::Line {
                label: g.label(),
                points: (g.runs[0].history.iter())
                    .map(|r| (r.epoch as f64, 100.0 * r.val_acc))
                    .collect(),
            })
            .collect();
        if !lines.is_empty() {
            plots::overlaid_curves(
                &root.join(plot.stem),
                &format!("Validation accuracy per epoch, {preset} recipe (first seed of each)"),
                &lines,
            )?;
        }
    }
    let first = |model: &str| findings::find(groups, model, Preset::Study).map(|g| g.runs[0]);
    if let (Some(cnn), Some(lstm)) = (first("cnn"), first("lstm")) {
        write_side_by_side(&root.join(files::CNN_VS_LSTM.png()), cnn, lstm, data)?;
    }
    if let Some(cnn) = first("cnn") {
        write_contact_sheet(root, &cnn.dir)?;
    }
    Ok(())
}

/// `figures.png` in the results folder: each per-run figure of `run` (a CNN's, which has them
/// all) and each figure across runs, scaled into cells of one sheet, four a row.
fn write_contact_sheet(root: &Path, run: &Path) -> anyhow::Result<()> {
    const CELL: (u32, u32) = (480, 330);
    const PAD: u32 = 10;
    let paths: Vec<PathBuf> = (std::iter::once(files::CURVES).chain(files::RUN_PLOTS_AFTER_TABLES))
        .map(|p| run.join(p.png()))
        .chain(
            [
                files::COMPARISON,
                files::ACCURACY_VS_PARAMETERS,
                files::FAMILIES,
                files::VALIDATION_STUDY,
                files::CNN_VS_LSTM,
                files::SAMPLES,
            ]
            .iter()
            .map(|p| root.join(p.png())),
        )
        .filter(|p| p.exists())
        .collect();
    let columns = 4u32;
    let rows = (paths.len() as u32).div_ceil(columns);
    let mut sheet = image::RgbaImage::from_pixel(
        columns * (CELL.0 + PAD) + PAD,
        rows * (CELL.1 + PAD) + PAD,
        image::Rgba([255, 255, 255, 255]),
    );
    for (i, path) in paths.iter().enumerate() {
        let figure = image::open(path).with_context(|| format!("reading {}", path.display()))?;
        let thumb = figure.resize(CELL.0, CELL.1, image::imageops::FilterType::Triangle);
        let (col, row) = (i as u32 % columns, i as u32 / columns);
        // Centred in its cell.
        let x = PAD + col * (CELL.0 + PAD) + (CELL.0 - thumb.width()) / 2;
        let y = PAD + row * (CELL.1 + PAD) + (CELL.1 - thumb.height()) / 2;
        image::imageops::overlay(&mut sheet, &thumb.to_rgba8(), i64::from(x), i64::from(y));
    }
    let mut png = Vec::new();
    image::DynamicImage::ImageRgba8(sheet).write_to(
        &mut std::io::Cursor::new(&mut png),
        image::ImageOutputFormat::Png,
    )?;
    write_atomic(&root.join(files::CONTACT_SHEET.png()), &png)?;
    Ok(())
}

/// The family of a model on the family chart: 0 CNN, 1 LSTM, 2 MLP.
fn family(kind: ModelKind) -> usize {
    if kind.is_convolutional() {
        0
    } else if kind.is_recurrent() {
        1
    } else {
        2
    }
}

/// The settings that change a network's size, not its recipe.
const SIZE_SETTINGS: [&str; 6] = [
    "channels",
    "dense",
    "hidden",
    "bidirectional",
    "layers",
    "attention",
];

/// Test accuracy against parameters and against training time for every study-recipe
/// group whose settings change at most its size: the families compared at one recipe each.
fn write_family_chart(root: &Path, groups: &[RecipeRuns]) -> anyhow::Result<()> {
    let points: Vec<plots::FamilyPoint> = groups
        .iter()
        .filter(|g| g.preset == Preset::Study)
        .filter(|g| {
            findings::settings(&g.runs[0].config.train)
                .iter()
                .all(|c| SIZE_SETTINGS.contains(&c.flag.as_str()))
        })
        .filter_map(|g| {
            Some(plots::FamilyPoint {
                label: g.label(),
                family: family(g.runs[0].config.train.model.kind),
                params: g.runs[0].config.param_count as f64,
                seconds: g.mean_train_seconds()?,
                accuracy: 100.0 * g.test_accuracy().mean,
                std: 100.0 * g.test_accuracy().std,
            })
        })
        .collect();
    if points.is_empty() {
        return Ok(());
    }
    plots::families(
        &root.join(files::FAMILIES.stem),
        &["CNN", "LSTM", "MLP"],
        &points,
    )
}

/// Two runs on the same test images: eight that both get wrong (the most confidently), eight
/// that only `b` gets wrong and eight that only `a` does, each captioned with both answers.
fn write_side_by_side(
    path: &Path,
    a: &Evaluation,
    b: &Evaluation,
    data: &FashionMnist,
) -> anyhow::Result<()> {
    let (sa, sb) = (&a.scores, &b.scores);
    let k = sa.class_names.len();
    let wrong = |s: &Scores, i: usize| s.test_predictions[i] != s.test_labels[i];
    let confidence = |s: &Scores, i: usize| s.test_probs[i * k + s.test_predictions[i]];
    let pick = |keep: &dyn Fn(usize) -> bool| -> Vec<usize> {
        let mut picks: Vec<usize> = (0..sa.test_labels.len()).filter(|&i| keep(i)).collect();
        picks.sort_by(|&x, &y| {
            let c = |i| confidence(sa, i) + confidence(sb, i);
            c(y).total_cmp(&c(x))
        });
        picks.truncate(8);
        picks
    };
    let mut picks = pick(&|i| wrong(sa, i) && wrong(sb, i));
    picks.extend(pick(&|i| !wrong(sa, i) && wrong(sb, i)));
    picks.extend(pick(&|i| wrong(sa, i) && !wrong(sb, i)));
    let (ma, mb) = (
        a.config.train.model.kind.to_string(),
        b.config.train.model.kind.to_string(),
    );
    let answer = |s: &Scores, model: &str, i: usize| {
        format!(
            "{model}: {} {:.0}%",
            s.class_names[s.test_predictions[i]],
            100.0 * confidence(s, i)
        )
    };
    test_image_grid(
        path,
        &format!(
            "{} and {}: both wrong (red), only {mb} wrong, only {ma} wrong",
            a.name, b.name
        ),
        data,
        &picks,
        |i| {
            let text = format!(
                "#{i} {}\n{}\n{}",
                sa.class_names[sa.test_labels[i]],
                answer(sa, &ma, i),
                answer(sb, &mb, i)
            );
            (text, wrong(sa, i) && wrong(sb, i))
        },
        GridLayout {
            columns: 8,
            tile_px: 120,
            caption_lines: 3,
        },
    )
}
