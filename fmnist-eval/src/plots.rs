//! Plots with plotters: training curves, the confusion heatmap, calibration, probability bars,
//! image grids (samples, mistakes), first-layer filters and feature maps, and the comparison.
//!
//! Charts are written as PNG and SVG; image grids as PNG. Text uses the DejaVu Sans font
//! embedded in the binary, so plots look the same on machines without fonts.
use std::path::Path;
use std::sync::Once;

use fmnist_train::EpochRecord;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::glyph_text::GlyphText;
use crate::metrics::{Calibration, ConfusionMatrix};

const FONT: &str = "sans-serif";
/// DejaVu Sans, the font of every plot.
pub(crate) const FONT_BYTES: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
static REGISTER: Once = Once::new();

/// Registers the embedded font (once per process): plotters measures text with it, and the
/// SVG files name it. Only its regular face: no plot sets text in bold.
pub(crate) fn register_font() {
    REGISTER.call_once(|| {
        // The font is compiled in and known to parse.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES);
    });
}

/// A PNG canvas whose text is placed glyph by glyph ([`GlyphText`]).
fn png_canvas(path: &Path, size: (u32, u32)) -> Area<GlyphText<BitMapBackend<'_>>> {
    GlyphText::new(BitMapBackend::new(path, size), FONT_BYTES).into_drawing_area()
}

type Area<DB> = DrawingArea<DB, Shift>;

/// Runs a generic drawing function on a PNG and an SVG backend: `stem.png`, `stem.svg`.
macro_rules! png_and_svg {
    ($stem:expr, $size:expr, $draw:expr) => {{
        register_font();
        let png = $stem.with_extension("png");
        let root = png_canvas(&png, $size);
        root.fill(&WHITE)?;
        $draw(&root)?;
        root.present()?;
        drop(root);
        let svg = $stem.with_extension("svg");
        let root = SVGBackend::new(&svg, $size).into_drawing_area();
        root.fill(&WHITE)?;
        $draw(&root)?;
        root.present()?;
        anyhow::Ok(())
    }};
}

/// Draws `draw` into `path` (PNG only: for image grids).
fn png_only<F>(path: &Path, size: (u32, u32), draw: F) -> anyhow::Result<()>
where
    F: FnOnce(&Area<GlyphText<BitMapBackend>>) -> anyhow::Result<()>,
{
    register_font();
    let root = png_canvas(path, size);
    root.fill(&WHITE)?;
    draw(&root)?;
    root.present()?;
    Ok(())
}

const TRAIN_COLOR: RGBColor = RGBColor(31, 119, 180);
const VAL_COLOR: RGBColor = RGBColor(255, 127, 14);

/// Loss and accuracy per epoch, train against validation.
/// Loss and accuracy per epoch, train against validation; a dashed line marks `best`, the
/// epoch kept (best on validation). With label smoothing `smoothing` > 0 the train loss is the
/// smoothed loss the run minimized and the validation loss plain cross-entropy, and the loss
/// panel says so.
pub fn curves(
    stem: &Path,
    title: &str,
    history: &[EpochRecord],
    best: Option<usize>,
    smoothing: f64,
) -> anyhow::Result<()> {
    png_and_svg!(stem, (1100, 440), |root: &Area<_>| draw_curves(
        root, title, history, best, smoothing
    ))
}

fn draw_curves<DB: DrawingBackend>(
    root: &Area<DB>,
    title: &str,
    h: &[EpochRecord],
    best: Option<usize>,
    smoothing: f64,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let root = root.titled(title, (FONT, 22))?;
    let (legend, root) = root.split_vertically(LEGEND_HEIGHT);
    let kept = best.map(|b| format!("kept: epoch {b} (best on validation)"));
    let mut entries = vec![
        ("train", TRAIN_COLOR.to_rgba(), Mark::Line),
        ("validation", VAL_COLOR.to_rgba(), Mark::Line),
    ];
    if let Some(kept) = &kept {
        entries.push((kept.as_str(), BLACK.mix(0.6), Mark::Dashed));
    }
    legend_strip(&legend, &entries)?;
    let (left, right) = root.split_horizontally(550);
    let epochs = h.len().max(1) as f64;
    let x_range = 0.5..epochs + 0.5;
    type Pick = fn(&EpochRecord) -> (f64, f64);
    let loss_label = if smoothing > 0.0 {
        format!("loss (train with label smoothing {smoothing}: not comparable)")
    } else {
        "loss".to_string()
    };
    let panels: [(&Area<DB>, &str, Pick); 2] = [
        (&left, &loss_label, |r| (r.train_loss, r.val_loss)),
        (&right, "accuracy (%)", |r| {
            (100.0 * r.train_acc, 100.0 * r.val_acc)
        }),
    ];
    for (i, (area, label, get)) in panels.into_iter().enumerate() {
        let values: Vec<f64> = h
            .iter()
            .flat_map(|r| {
                let (a, b) = get(r);
                [a, b]
            })
            .collect();
        let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let pad = ((hi - lo) * 0.08).max(1e-3);
        let (lo, hi) = if lo.is_finite() {
            (lo - pad, hi + pad)
        } else {
            (0.0, 1.0)
        };
        let mut chart = ChartBuilder::on(area)
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(x_range.clone(), lo..hi)?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_desc(label)
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 15))
            .x_labels(h.len().clamp(2, 12))
            .y_label_formatter(&|y| {
                // One number of decimals per axis: whole percents where the range allows.
                let decimals = match i {
                    0 => 2,
                    _ if hi - lo > 4.0 => 0,
                    _ => 1,
                };
                format!("{y:.decimals$}")
            })
            .light_line_style(WHITE.mix(0.0))
            .x_label_formatter(&|x| {
                if (x - x.round()).abs() < 1e-6 {
                    format!("{x:.0}")
                } else {
                    String::new()
                }
            })
            .draw()?;
        for (series, color) in [(0, TRAIN_COLOR), (1, VAL_COLOR)] {
            let points: Vec<(f64, f64)> = h
                .iter()
                .map(|r| {
                    let (a, b) = get(r);
                    (r.epoch as f64, if series == 0 { a } else { b })
                })
                .collect();
            chart.draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?;
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
        }
        if let Some(b) = best {
            let dashes = (0..20).map(|k| {
                let y0 = lo + (hi - lo) * k as f64 / 20.0;
                PathElement::new(
                    vec![(b as f64, y0), (b as f64, y0 + (hi - lo) / 40.0)],
                    BLACK.mix(0.6).stroke_width(1),
                )
            });
            chart.draw_series(dashes)?;
        }
    }
    Ok(())
}

/// A blue scale from white (0) to dark blue (1).
fn heat(v: f64) -> RGBColor {
    let v = v.clamp(0.0, 1.0);
    let lerp = |a: f64, b: f64| (a + (b - a) * v) as u8;
    RGBColor(lerp(247.0, 8.0), lerp(251.0, 48.0), lerp(255.0, 107.0))
}

/// The confusion matrix as a heatmap: colour by row share, counts in the cells.
pub fn confusion(
    stem: &Path,
    title: &str,
    m: &ConfusionMatrix,
    classes: &[String],
) -> anyhow::Result<()> {
    png_and_svg!(stem, (900, 820), |root: &Area<_>| draw_confusion(
        root, title, m, classes
    ))
}

fn centered(size: u32, color: &'static RGBColor) -> TextStyle<'static> {
    use plotters::style::text_anchor::{HPos, Pos, VPos};
    TextStyle::from((FONT, size).into_font())
        .color(color)
        .pos(Pos::new(HPos::Center, VPos::Center))
}

/// The name of the class at segment `v` of a class axis drawn top to bottom (`flip`) or left to right.
fn class_label(names: &[String], v: &SegmentValue<usize>, flip: bool) -> String {
    match v {
        SegmentValue::CenterOf(i) => {
            let i = if flip {
                names.len().saturating_sub(1 + i)
            } else {
                *i
            };
            names.get(i).cloned().unwrap_or_default()
        }
        _ => String::new(),
    }
}

fn draw_confusion<DB: DrawingBackend>(
    root: &Area<DB>,
    title: &str,
    m: &ConfusionMatrix,
    classes: &[String],
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let k = m.classes();
    let root = root.titled(title, (FONT, 22))?;
    let (width, _) = root.dim_in_pixel();
    let (root, bar) = root.split_horizontally(width.saturating_sub(120));
    share_colour_bar(&bar.margin(60, 80, 10, 5))?;
    let mut chart = ChartBuilder::on(&root)
        .margin(20)
        .x_label_area_size(60)
        .y_label_area_size(100)
        .build_cartesian_2d((0..k - 1).into_segmented(), (0..k - 1).into_segmented())?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(k)
        .y_labels(k)
        .x_desc("predicted")
        .y_desc("actual")
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 15))
        .x_label_style((FONT, 11))
        .x_label_formatter(&|v| class_label(classes, v, false))
        .y_label_formatter(&|v| class_label(classes, v, true))
        .draw()?;
    // Row `actual` is drawn at y = k-1-actual so that the first class is at the top.
    let cells: Vec<(usize, usize)> = (0..k).flat_map(|t| (0..k).map(move |p| (t, p))).collect();
    chart.draw_series(cells.iter().map(|&(t, p)| {
        let share = m.normalized_row(t)[p];
        let y = k - 1 - t;
        Rectangle::new(
            [
                (SegmentValue::Exact(p), SegmentValue::Exact(y)),
                (SegmentValue::Exact(p + 1), SegmentValue::Exact(y + 1)),
            ],
            heat(share.sqrt()).filled(),
        )
    }))?;
    chart.draw_series(
        cells
            .iter()
            .filter(|&&(t, p)| m.get(t, p) > 0)
            .map(|&(t, p)| {
                let color: &'static RGBColor = if m.normalized_row(t)[p].sqrt() > 0.55 {
                    &WHITE
                } else {
                    &BLACK
                };
                Text::new(
                    m.get(t, p).to_string(),
                    (SegmentValue::CenterOf(p), SegmentValue::CenterOf(k - 1 - t)),
                    centered(14, color),
                )
            }),
    )?;
    Ok(())
}

/// The confusion matrix's colour scale: a bar from a row share of 1 at the top (dark blue) down
/// to 0 (white), marked at shares placed on the square-root scale the cells use.
fn share_colour_bar<DB: DrawingBackend>(area: &Area<DB>) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let (w, h) = area.dim_in_pixel();
    let (bar_w, h) = (18i32, h.max(1) as i32);
    for y in 0..h {
        let share_root = 1.0 - f64::from(y) / f64::from(h - 1).max(1.0);
        area.draw(&Rectangle::new(
            [(0, y), (bar_w, y + 1)],
            heat(share_root).filled(),
        ))?;
    }
    area.draw(&Rectangle::new([(0, 0), (bar_w, h)], BLACK.stroke_width(1)))?;
    let label =
        TextStyle::from((FONT, 12).into_font()).pos(plotters::style::text_anchor::Pos::new(
            plotters::style::text_anchor::HPos::Left,
            plotters::style::text_anchor::VPos::Center,
        ));
    for share in [0.0, 0.01, 0.05, 0.2, 0.5, 1.0] {
        let y = ((1.0 - f64::sqrt(share)) * f64::from(h - 1)) as i32;
        area.draw(&PathElement::new([(bar_w, y), (bar_w + 4, y)], BLACK))?;
        area.draw(&Text::new(
            format!("{:.0}%", 100.0 * share),
            (bar_w + 7, y),
            label.clone(),
        ))?;
    }
    let title = TextStyle::from((FONT, 13).into_font())
        .transform(FontTransform::Rotate270)
        .pos(plotters::style::text_anchor::Pos::new(
            plotters::style::text_anchor::HPos::Center,
            plotters::style::text_anchor::VPos::Top,
        ));
    area.draw(&Text::new(
        "share of the actual class's images",
        (w as i32 - 16, h / 2),
        title,
    ))?;
    Ok(())
}

/// The reliability diagram: accuracy per confidence bin against the diagonal of perfect calibration.
pub fn reliability(stem: &Path, title: &str, c: &Calibration) -> anyhow::Result<()> {
    png_and_svg!(stem, (620, 586), |root: &Area<_>| draw_reliability(
        root, title, c
    ))
}

/// The calibration gap: opaque, so that it looks the same over a bar as in the legend.
const GAP_COLOR: RGBColor = RGBColor(240, 150, 150);

fn draw_reliability<DB: DrawingBackend>(
    root: &Area<DB>,
    title: &str,
    c: &Calibration,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let root = root.titled(&format!("{title} (ECE {:.2}%)", 100.0 * c.ece), (FONT, 20))?;
    let (legend, root) = root.split_vertically(LEGEND_HEIGHT);
    legend_strip(
        &legend,
        &[
            ("accuracy of the bin", TRAIN_COLOR.mix(0.75), Mark::Box),
            ("gap to mean confidence", GAP_COLOR.to_rgba(), Mark::Box),
            ("perfect calibration", BLACK.mix(0.6), Mark::Line),
        ],
    )?;
    let mut chart = ChartBuilder::on(&root)
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d(0.0..1.0f64, 0.0..1.0f64)?;
    chart
        .configure_mesh()
        .light_line_style(WHITE.mix(0.0))
        .x_desc("confidence (largest probability)")
        .y_desc("accuracy")
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 15))
        .draw()?;
    chart.draw_series(c.bins.iter().filter(|b| b.count > 0).map(|b| {
        Rectangle::new(
            [(b.lower, 0.0), (b.upper, b.accuracy)],
            TRAIN_COLOR.mix(0.75).filled(),
        )
    }))?;
    chart.draw_series(c.bins.iter().filter(|b| b.count > 0).map(|b| {
        Rectangle::new(
            [
                (b.lower, b.accuracy.min(b.mean_confidence)),
                (b.upper, b.accuracy.max(b.mean_confidence)),
            ],
            GAP_COLOR.filled(),
        )
    }))?;
    // How many test images each bin holds, upright at its foot, in white on the bar.
    let upright = (FONT, 12)
        .into_font()
        .transform(FontTransform::Rotate270)
        .color(&WHITE)
        .pos(plotters::style::text_anchor::Pos::new(
            plotters::style::text_anchor::HPos::Left,
            plotters::style::text_anchor::VPos::Center,
        ));
    chart.draw_series(c.bins.iter().filter(|b| b.count > 0).map(|b| {
        Text::new(
            format!("n = {}", crate::table::thousands(b.count as f64)),
            ((b.lower + b.upper) / 2.0, 0.02),
            upright.clone(),
        )
    }))?;
    chart.draw_series(LineSeries::new(
        vec![(0.0, 0.0), (1.0, 1.0)],
        BLACK.mix(0.6).stroke_width(1),
    ))?;
    Ok(())
}

/// One grayscale image to draw: `rows x cols` values in [0, 1], and a caption.
pub struct Tile<'a> {
    pub pixels: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub caption: String,
    /// Red caption (a mistake).
    pub alert: bool,
    /// A heat map over the image (`rows x cols` values in [0, 1]), drawn half-transparent.
    pub heat: Option<&'a [f32]>,
}

/// A Grad-CAM heat `t` in [0, 1] over the grey level `g` of the image: viridis (perceptually
/// uniform, readable in grey), laid over the image in proportion to the heat, so that the
/// garment shows where the model looked least.
fn heat_over(g: f32, t: f32) -> (f32, f32, f32) {
    let t = t.clamp(0.0, 1.0);
    let RGBColor(r, gr, b) = ViridisRGB::get_color(t);
    let a = 0.25 + 0.6 * t;
    let over = |c: u8| (1.0 - a) * g + a * f32::from(c) / 255.0;
    (over(r), over(gr), over(b))
}

/// The scale of [`heat_over`] on a mid-grey garment, low to high, as a bar `area` wide.
fn heat_colour_bar<DB: DrawingBackend>(area: &Area<DB>) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let (w, _) = area.dim_in_pixel();
    let (x0, bar_w, bar_h) = (150i32, (w as i32 - 300).max(10), 14);
    let byte = |v: f32| (v * 255.0) as u8;
    for x in 0..bar_w {
        let (r, g, b) = heat_over(0.5, x as f32 / (bar_w - 1).max(1) as f32);
        area.draw(&Rectangle::new(
            [(x0 + x, 4), (x0 + x + 1, 4 + bar_h)],
            RGBColor(byte(r), byte(g), byte(b)).filled(),
        ))?;
    }
    use plotters::style::text_anchor::{HPos, Pos, VPos};
    let at = |h| TextStyle::from((FONT, 12).into_font()).pos(Pos::new(h, VPos::Center));
    let y = 4 + bar_h / 2;
    area.draw(&Text::new("Grad-CAM: low", (x0 - 6, y), at(HPos::Right)))?;
    area.draw(&Text::new("high", (x0 + bar_w + 6, y), at(HPos::Left)))?;
    Ok(())
}

fn draw_tile<DB: DrawingBackend>(
    area: &Area<DB>,
    tile: &Tile,
    caption_height: u32,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let (w, h) = area.dim_in_pixel();
    let side = w.min(h.saturating_sub(caption_height)).max(1);
    let scale = side as f64 / tile.rows.max(tile.cols) as f64;
    let x0 = (w - side) as f64 / 2.0;
    for r in 0..tile.rows {
        for c in 0..tile.cols {
            let i = r * tile.cols + c;
            let g = tile.pixels[i].clamp(0.0, 1.0);
            let (red, green, blue) = match tile.heat {
                Some(heat) => heat_over(g, heat[i]),
                None => (g, g, g),
            };
            let byte = |v: f32| (v * 255.0) as u8;
            let (xa, ya) = ((x0 + c as f64 * scale) as i32, (r as f64 * scale) as i32);
            let (xb, yb) = (
                (x0 + (c + 1) as f64 * scale) as i32,
                ((r + 1) as f64 * scale) as i32,
            );
            area.draw(&Rectangle::new(
                [(xa, ya), (xb, yb)],
                RGBColor(byte(red), byte(green), byte(blue)).filled(),
            ))?;
        }
    }
    if caption_height > 0 {
        let color = if tile.alert {
            RGBColor(200, 0, 0)
        } else {
            BLACK
        };
        for (i, line) in tile.caption.lines().enumerate() {
            // 12 px where the line fits the tile, smaller where it would run into the next.
            let size = title_size(line, w).min(12);
            let style = TextStyle::from((FONT, size).into_font()).color(&color).pos(
                plotters::style::text_anchor::Pos::new(
                    plotters::style::text_anchor::HPos::Center,
                    plotters::style::text_anchor::VPos::Top,
                ),
            );
            area.draw(&Text::new(
                line.to_string(),
                ((w / 2) as i32, side as i32 + 2 + 14 * i as i32),
                style,
            ))?;
        }
    }
    Ok(())
}

/// A grid of images with captions (PNG), `columns` per row, each tile `tile_px` wide.
pub fn image_grid(
    path: &Path,
    title: &str,
    tiles: &[Tile],
    columns: usize,
    tile_px: u32,
    caption_lines: u32,
) -> anyhow::Result<()> {
    let rows = tiles.len().div_ceil(columns.max(1)).max(1);
    let caption_h = 15 * caption_lines + if caption_lines > 0 { 4 } else { 0 };
    // Heat maps get their scale under the tiles.
    let scale_h = if tiles.iter().any(|t| t.heat.is_some()) {
        26
    } else {
        0
    };
    let size = (
        columns as u32 * (tile_px + 8) + 10,
        rows as u32 * (tile_px + caption_h + 8) + 40 + scale_h,
    );
    png_only(path, size, |root| {
        let root = root.titled(title, (FONT, title_size(title, size.0)))?;
        let (_, height) = root.dim_in_pixel();
        let (root, scale) = root.split_vertically(height - scale_h);
        if scale_h > 0 {
            heat_colour_bar(&scale)?;
        }
        let root = root.margin(4, 4, 4, 4);
        let areas = root.split_evenly((rows, columns));
        for (area, tile) in areas.iter().zip(tiles) {
            draw_tile(&area.margin(2, 2, 2, 2), tile, caption_h)?;
        }
        Ok(())
    })
}

/// The font size that fits `text` in `width` pixels: 20 where it fits, smaller (down to 10)
/// where it would be cut (DejaVu Sans averages about 0.52 em a character).
fn title_size(text: &str, width: u32) -> u32 {
    let fits = f64::from(width) / (0.52 * text.chars().count().max(1) as f64);
    fits.floor().clamp(10.0, 20.0) as u32
}

/// For each image, the image and a bar chart of its ten class probabilities (true class green,
/// a wrong prediction red).
pub fn probability_bars(
    path: &Path,
    title: &str,
    items: &[(Tile, Vec<f32>, usize)],
    classes: &[String],
) -> anyhow::Result<()> {
    let rows = items.len().max(1);
    png_only(path, (900, 190 * rows as u32 + 40), |root| {
        let root = root.titled(title, (FONT, title_size(title, 900)))?;
        for (area, (tile, probs, truth)) in root.split_evenly((rows, 1)).iter().zip(items) {
            let (img, bars) = area.split_horizontally(200);
            draw_tile(&img.margin(5, 5, 5, 5), tile, 18)?;
            let predicted = fmnist_models::argmax(probs);
            let k = classes.len();
            let mut chart = ChartBuilder::on(&bars)
                .margin(8)
                .x_label_area_size(34)
                .y_label_area_size(100)
                .build_cartesian_2d(0.0..1.0f64, (0..k - 1).into_segmented())?;
            chart
                .configure_mesh()
                .disable_y_mesh()
                .light_line_style(WHITE.mix(0.0))
                .y_labels(k)
                .x_desc("probability")
                .axis_desc_style((FONT, 12))
                .label_style((FONT, 12))
                .y_label_formatter(&|v| class_label(classes, v, true))
                .draw()?;
            chart.draw_series(probs.iter().enumerate().map(|(c, &p)| {
                let y = k - 1 - c;
                let color = if c == *truth {
                    RGBColor(44, 160, 44)
                } else if c == predicted {
                    RGBColor(214, 39, 40)
                } else {
                    RGBColor(150, 150, 150)
                };
                Rectangle::new(
                    [
                        (0.0, SegmentValue::Exact(y)),
                        (p as f64, SegmentValue::Exact(y + 1)),
                    ],
                    color.filled(),
                )
            }))?;
        }
        Ok(())
    })
}

/// Test accuracy per run as horizontal bars (the comparison at a glance).
/// One recipe's test accuracy on the comparison plot.
pub struct ComparisonRow {
    pub label: String,
    /// Mean over the seeds and sample std (0 for one seed), as fractions.
    pub mean: f64,
    pub std: f64,
    pub study: bool,
}

pub fn comparison(stem: &Path, rows: &[ComparisonRow]) -> anyhow::Result<()> {
    let height = 110 + 30 * rows.len().max(1) as u32;
    png_and_svg!(stem, (900, height), |root: &Area<_>| draw_comparison(
        root, rows
    ))
}

/// How a legend entry is marked: a dot (points), a box (bars), a line, or a dashed line.
#[derive(Clone, Copy)]
enum Mark {
    Dot,
    Box,
    Line,
    Dashed,
}

/// The height of a legend strip.
const LEGEND_HEIGHT: u32 = 26;

/// A legend in a strip of its own above the plot, never over its data: the entries side by
/// side, centred.
fn legend_strip<DB: DrawingBackend>(
    strip: &Area<DB>,
    entries: &[(&str, RGBAColor, Mark)],
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    use plotters::style::text_anchor::{HPos, Pos, VPos};
    let style = (FONT, 14)
        .into_text_style(strip)
        .pos(Pos::new(HPos::Left, VPos::Center));
    let mut widths = Vec::with_capacity(entries.len());
    for (text, _, _) in entries {
        let (w, _) = strip.estimate_text_size(text, &style)?;
        // Mark, gap, text, space before the next entry.
        widths.push(30 + w as i32 + 28);
    }
    let (w, h) = strip.dim_in_pixel();
    let mut x = (w as i32 - widths.iter().sum::<i32>()).max(0) / 2;
    let y = h as i32 / 2;
    for (&(text, color, mark), width) in entries.iter().zip(widths) {
        match mark {
            Mark::Dot => strip.draw(&Circle::new((x + 11, y), 6, color.filled()))?,
            Mark::Box => strip.draw(&Rectangle::new(
                [(x + 2, y - 6), (x + 20, y + 6)],
                color.filled(),
            ))?,
            Mark::Line => strip.draw(&PathElement::new(
                vec![(x, y), (x + 22, y)],
                color.stroke_width(3),
            ))?,
            Mark::Dashed => {
                for k in 0..3 {
                    strip.draw(&PathElement::new(
                        vec![(x + 8 * k, y), (x + 8 * k + 4, y)],
                        color.stroke_width(2),
                    ))?;
                }
            }
        }
        strip.draw(&Text::new(text.to_string(), (x + 30, y), style.clone()))?;
        x += width;
    }
    Ok(())
}

/// The colours of the two recipes, as on the accuracy-against-parameters plot.
const STUDY_COLOR: RGBColor = PALETTE[0];
const BEST_COLOR: RGBColor = PALETTE[1];

/// A dot per recipe at its mean, a bar of ± one std where it has several seeds, its value
/// beside it; study and best recipes in the colours of the legend.
fn draw_comparison<DB: DrawingBackend>(
    root: &Area<DB>,
    rows: &[ComparisonRow],
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let root = root.titled(
        "Test accuracy (mean ± std over seeds where several)",
        (FONT, 20),
    )?;
    let (legend, root) = root.split_vertically(LEGEND_HEIGHT);
    legend_strip(
        &legend,
        &[
            ("study recipe", STUDY_COLOR.to_rgba(), Mark::Dot),
            ("best recipe", BEST_COLOR.to_rgba(), Mark::Dot),
        ],
    )?;
    use plotters::style::text_anchor::{HPos, Pos, VPos};
    let left =
        |size| TextStyle::from((FONT, size).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    let n = rows.len().max(1);
    let lo = rows.iter().map(|r| r.mean - r.std).fold(1.0f64, f64::min);
    let lo = (100.0 * lo - 0.5).floor().max(0.0);
    let hi = rows.iter().map(|r| r.mean + r.std).fold(0.0f64, f64::max);
    // Room on the right for the value beside the highest dot.
    let hi = (100.0 * hi + 1.6).ceil().min(101.0);
    let names: Vec<String> = rows.iter().map(|r| r.label.clone()).collect();
    let label_style = (FONT, 13).into_text_style(&root);
    // Room for the widest label, as the font measures it.
    let mut widest = 0;
    for name in &names {
        let (w, _) = root.estimate_text_size(name, &label_style)?;
        widest = widest.max(w);
    }
    let mut chart = ChartBuilder::on(&root)
        .margin(12)
        .x_label_area_size(35)
        .y_label_area_size(150.max(widest + 16))
        .build_cartesian_2d(lo..hi, (0..n - 1).into_segmented())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n)
        .light_line_style(WHITE.mix(0.0))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .x_desc("test accuracy (%)")
        .label_style(label_style.clone())
        .axis_desc_style((FONT, 14))
        .y_label_formatter(&|v| class_label(&names, v, true))
        .draw()?;
    for (i, r) in rows.iter().enumerate() {
        let y = SegmentValue::CenterOf(n - 1 - i);
        let color = if r.study { STUDY_COLOR } else { BEST_COLOR };
        let (mean, std) = (100.0 * r.mean, 100.0 * r.std);
        if std > 0.0 {
            let bar = vec![(mean - std, y.clone()), (mean + std, y.clone())];
            chart.draw_series(std::iter::once(PathElement::new(
                bar,
                color.stroke_width(2),
            )))?;
        }
        chart.draw_series(std::iter::once(Circle::new(
            (mean, y.clone()),
            5,
            color.filled(),
        )))?;
        let value = if std > 0.0 {
            format!("{mean:.2} ± {std:.2}")
        } else {
            format!("{mean:.2}")
        };
        chart.draw_series(std::iter::once(Text::new(
            value,
            (mean + std + 0.15, y),
            left(12),
        )))?;
    }
    Ok(())
}

/// Colours of the lines and points of several models (matplotlib's tab10).
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// One line of an overlay: its label and the (epoch, value) points.
pub struct Line {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// The most lines one chart holds; more become small multiples.
const MAX_OVERLAID: usize = 8;

/// Several models' validation accuracy per epoch: up to [`MAX_OVERLAID`] lines on one chart
/// with the legend beside it, more as small multiples (one panel per line, the others grey
/// behind it). The accuracy axis starts where the last 60% of each line lies, and the title
/// says when earlier epochs fall below it.
pub fn overlaid_curves(stem: &Path, title: &str, lines: &[Line]) -> anyhow::Result<()> {
    let size = if lines.len() > MAX_OVERLAID {
        let rows = lines.len().div_ceil(4) as u32;
        (1200, 70 + 230 * rows)
    } else {
        (1100, 560)
    };
    png_and_svg!(stem, size, |root: &Area<_>| draw_overlaid(
        root, title, lines
    ))
}

/// The accuracy range of the overlay and how many points fall below it.
fn overlay_range(lines: &[Line]) -> (f64, f64, usize) {
    let all = lines.iter().flat_map(|l| l.points.iter());
    // The last 60% of each line decides the range, so the first epochs do not flatten the rest.
    let tail: Vec<f64> = lines
        .iter()
        .flat_map(|l| l.points.iter().skip(l.points.len() * 2 / 5).map(|p| p.1))
        .collect();
    let lo = tail.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = all.clone().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    let (lo, hi) = if lo.is_finite() && hi > lo {
        ((lo - 1.0).floor(), (hi + 0.5).ceil())
    } else {
        (0.0, 100.0)
    };
    (lo, hi, all.filter(|p| p.1 < lo).count())
}

fn draw_overlaid<DB: DrawingBackend>(
    root: &Area<DB>,
    title: &str,
    lines: &[Line],
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let (lo, hi, below) = overlay_range(lines);
    let title = if below > 0 {
        format!("{title}; {below} early points below {lo:.0}% not shown")
    } else {
        title.to_string()
    };
    let title = if lines.len() > MAX_OVERLAID {
        format!("{title}; grey: the other recipes")
    } else {
        title
    };
    let width = root.dim_in_pixel().0;
    let root = root.titled(&title, (FONT, title_size(&title, width).min(18)))?;
    let epochs = (lines.iter().flat_map(|l| l.points.iter()))
        .map(|p| p.0)
        .fold(1.0f64, f64::max);
    if lines.len() > MAX_OVERLAID {
        let rows = lines.len().div_ceil(4);
        for (panel, area) in root.split_evenly((rows, 4)).iter().enumerate() {
            let Some(line) = lines.get(panel) else {
                break;
            };
            let area = area.titled(&line.label, (FONT, 14))?;
            let mut chart = ChartBuilder::on(&area)
                .margin(6)
                .x_label_area_size(34)
                .y_label_area_size(46)
                .build_cartesian_2d(0.5..epochs + 0.5, lo..hi)?;
            chart
                .configure_mesh()
                .x_desc("epoch")
                .y_desc("val. accuracy (%)")
                .axis_desc_style((FONT, 11))
                .label_style((FONT, 11))
                .light_line_style(WHITE.mix(0.0))
                .x_labels(6)
                .y_labels(whole_ticks(lo, hi).min(6))
                .x_label_formatter(&|x| format!("{x:.0}"))
                .y_label_formatter(&|y| format!("{y:.0}"))
                .draw()?;
            for other in lines {
                let points: Vec<(f64, f64)> =
                    other.points.iter().copied().filter(|p| p.1 >= lo).collect();
                chart.draw_series(LineSeries::new(points, BLACK.mix(0.12).stroke_width(1)))?;
            }
            let points: Vec<(f64, f64)> =
                line.points.iter().copied().filter(|p| p.1 >= lo).collect();
            chart.draw_series(LineSeries::new(points, PALETTE[0].stroke_width(2)))?;
        }
        return Ok(());
    }
    let (plot, legend) = root.split_horizontally(root.dim_in_pixel().0 - 230);
    let mut chart = ChartBuilder::on(&plot)
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.5..epochs + 0.5, lo..hi)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc("validation accuracy (%)")
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .light_line_style(WHITE.mix(0.0))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_labels(whole_ticks(lo, hi))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()?;
    for (i, line) in lines.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let points: Vec<(f64, f64)> = line.points.iter().copied().filter(|p| p.1 >= lo).collect();
        chart.draw_series(LineSeries::new(points, color.stroke_width(2)))?;
        // The legend, outside the data: a swatch and the label per line.
        let y = 30 + 24 * i as i32;
        legend.draw(&PathElement::new(
            vec![(8, y), (34, y)],
            color.stroke_width(3),
        ))?;
        legend.draw(&Text::new(
            line.label.clone(),
            (42, y - 8),
            (FONT, 14).into_font(),
        ))?;
    }
    Ok(())
}

/// Tick positions 1, 2 and 5 times the powers of ten between `lo` and `hi`: a log axis whose
/// range spans less than a decade or two still gets several labelled ticks.
pub fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let mut ticks = Vec::new();
    let mut decade = 10f64.powf(lo.max(f64::MIN_POSITIVE).log10().floor());
    while decade <= hi {
        for m in [1.0, 2.0, 5.0] {
            let t = m * decade;
            if (lo..=hi).contains(&t) {
                ticks.push(t);
            }
        }
        decade *= 10.0;
    }
    ticks
}

/// How many labels an axis from `lo` to `hi` (whole numbers) takes to label each whole
/// number and no fraction: an axis of a few points otherwise repeats rounded labels.
fn whole_ticks(lo: f64, hi: f64) -> usize {
    (hi - lo).round().max(1.0) as usize + 1
}

/// A count or a time as a tick label: `1.5M`, `50k`, `200`.
fn short_number(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// A point of the accuracy-against-parameters chart.
pub struct ModelPoint {
    pub label: String,
    pub params: f64,
    /// Mean test accuracy over the recipe's seeds, and their sample std (0 for one), in %.
    pub accuracy: f64,
    pub std: f64,
    /// Index of its series (one per recipe) in `series`.
    pub series: usize,
}

/// Where a point's label goes: its box in pixels (top-left corner, width, height), and
/// whether it left its place beside the point (a leader line then joins them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LabelBox {
    pub x0: i32,
    pub y0: i32,
    pub w: i32,
    pub h: i32,
    pub moved: bool,
}

impl LabelBox {
    fn overlaps(&self, o: &LabelBox) -> bool {
        self.x0 < o.x0 + o.w
            && o.x0 < self.x0 + self.w
            && self.y0 < o.y0 + o.h
            && o.y0 < self.y0 + self.h
    }
}

/// The box of a vertical error bar from `top` to `bottom` (backend pixels), its caps included.
fn error_bar_box(top: (i32, i32), bottom: (i32, i32)) -> LabelBox {
    LabelBox {
        x0: top.0 - 6,
        y0: top.1,
        w: 12,
        h: bottom.1 - top.1 + 1,
        moved: false,
    }
}

/// Small boxes (backend pixels) every few pixels along the line through `points`, so that
/// labels keep off it.
fn line_boxes(points: &[(i32, i32)]) -> Vec<LabelBox> {
    let mut boxes = Vec::new();
    for pair in points.windows(2) {
        let ((x0, y0), (x1, y1)) = (pair[0], pair[1]);
        let steps = ((x1 - x0).abs().max((y1 - y0).abs()) / 3).max(1);
        for k in 0..=steps {
            let (x, y) = (x0 + (x1 - x0) * k / steps, y0 + (y1 - y0) * k / steps);
            boxes.push(LabelBox {
                x0: x - 2,
                y0: y - 2,
                w: 4,
                h: 4,
                moved: false,
            });
        }
    }
    boxes
}

/// Radius in pixels of a point on the accuracy-against-parameters plot.
const POINT_RADIUS: i32 = 6;

/// Places the labels of points at `centres` (pixels), of `sizes` (width, height), inside an
/// area of `bounds` pixels: topmost point first, each label where it overlaps neither a
/// label placed before it, nor any point, nor any of `obstacles` (error bars, lines). Its
/// first choice is beside its point on the right,
/// centred on it; then one, two, ... four line heights below or above (alternating), then
/// the same on the left. A label with no free place stays beside its point.
pub fn place_labels(
    centres: &[(i32, i32)],
    sizes: &[(i32, i32)],
    obstacles: &[LabelBox],
    bounds: (i32, i32),
) -> Vec<LabelBox> {
    let gap = POINT_RADIUS + 4;
    let dots: Vec<LabelBox> = centres
        .iter()
        .map(|&(x, y)| LabelBox {
            x0: x - POINT_RADIUS,
            y0: y - POINT_RADIUS,
            w: 2 * POINT_RADIUS,
            h: 2 * POINT_RADIUS,
            moved: false,
        })
        .collect();
    let mut order: Vec<usize> = (0..centres.len()).collect();
    order.sort_by_key(|&i| (centres[i].1, centres[i].0));
    let mut placed: Vec<(usize, LabelBox)> = Vec::with_capacity(centres.len());
    for i in order {
        let ((x, y), (w, h)) = (centres[i], sizes[i]);
        let home = LabelBox {
            x0: x + gap,
            y0: y - h / 2,
            w,
            h,
            moved: false,
        };
        let free = |b: &LabelBox| {
            b.x0 >= 0
                && b.y0 >= 0
                && b.x0 + b.w <= bounds.0
                && b.y0 + b.h <= bounds.1
                && !dots.iter().chain(obstacles).any(|d| d.overlaps(b))
                && !placed.iter().any(|(_, p)| p.overlaps(b))
        };
        let shifts = [0, 1, -1, 2, -2, 3, -3, 4, -4];
        let chosen = [x + gap, x - gap - w]
            .into_iter()
            .flat_map(|x0| shifts.map(|k| (x0, k)))
            .map(|(x0, k)| LabelBox {
                x0,
                y0: home.y0 + k * (h + 1),
                w,
                h,
                moved: k != 0,
            })
            .find(|b| free(b))
            .unwrap_or(home);
        placed.push((i, chosen));
    }
    placed.sort_by_key(|&(i, _)| i);
    placed.into_iter().map(|(_, b)| b).collect()
}

/// Test accuracy against parameter count (log scale), one series per recipe.
pub fn accuracy_vs_parameters(
    stem: &Path,
    series: &[&str],
    points: &[ModelPoint],
) -> anyhow::Result<()> {
    png_and_svg!(stem, (1000, 560), |root: &Area<_>| {
        draw_accuracy_vs_parameters(root, series, points)
    })
}

fn draw_accuracy_vs_parameters<DB: DrawingBackend>(
    root: &Area<DB>,
    series: &[&str],
    points: &[ModelPoint],
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let root = root.titled(
        "Test accuracy against parameters (mean ± std over seeds where several)",
        (FONT, 20),
    )?;
    let (legend, root) = root.split_vertically(LEGEND_HEIGHT);
    let entries: Vec<(&str, RGBAColor, Mark)> = (series.iter().enumerate())
        .map(|(s, name)| (*name, PALETTE[s % PALETTE.len()].to_rgba(), Mark::Dot))
        .collect();
    legend_strip(&legend, &entries)?;
    let pmin = points
        .iter()
        .map(|p| p.params)
        .fold(f64::INFINITY, f64::min);
    let pmax = points.iter().map(|p| p.params).fold(1.0f64, f64::max);
    let amin = points.iter().map(|p| p.accuracy).fold(100.0f64, f64::min);
    let amax = points.iter().map(|p| p.accuracy).fold(0.0f64, f64::max);
    let (pmin, pmax) = if pmin.is_finite() {
        (pmin / 1.6, pmax * 1.6)
    } else {
        (1e4, 1e7)
    };
    let (lo, hi) = ((amin - 0.8).floor(), (amax + 0.8).ceil());
    let mut chart = ChartBuilder::on(&root)
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(
            (pmin..pmax)
                .log_scale()
                .with_key_points(log_ticks(pmin, pmax)),
            lo..hi,
        )?;
    chart
        .configure_mesh()
        .x_desc("parameters (log scale)")
        .y_desc("test accuracy (%)")
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .light_line_style(WHITE.mix(0.0))
        .y_labels(whole_ticks(lo, hi))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .x_label_formatter(&|v| short_number(*v))
        .draw()?;
    for s in 0..series.len() {
        let color = PALETTE[s % PALETTE.len()];
        let mine: Vec<&ModelPoint> = points.iter().filter(|p| p.series == s).collect();
        // ± one std over the seeds, where there are several.
        chart.draw_series(mine.iter().filter(|p| p.std > 0.0).map(|p| {
            let (lo, hi) = (p.accuracy - p.std, p.accuracy + p.std);
            ErrorBar::new_vertical(p.params, lo, p.accuracy, hi, color.stroke_width(2), 10)
        }))?;
        chart.draw_series(
            mine.iter()
                .map(|p| Circle::new((p.params, p.accuracy), POINT_RADIUS, color.filled())),
        )?;
    }
    let centres: Vec<(i32, i32)> = points
        .iter()
        .map(|p| chart.backend_coord(&(p.params, p.accuracy)))
        .collect();
    let bars: Vec<LabelBox> = (points.iter().filter(|p| p.std > 0.0))
        .map(|p| {
            error_bar_box(
                chart.backend_coord(&(p.params, p.accuracy + p.std)),
                chart.backend_coord(&(p.params, p.accuracy - p.std)),
            )
        })
        .collect();
    let labelled: Vec<(&str, RGBAColor)> = points
        .iter()
        .map(|p| (p.label.as_str(), PALETTE[p.series % PALETTE.len()].mix(0.9)))
        .collect();
    draw_point_labels(chart.plotting_area(), &centres, &bars, &labelled)?;
    Ok(())
}

/// Draws the `labels` (text and colour) of points at `centres` (backend pixels) inside the
/// plotting area `plot`, each where it overlaps no other label, no point and none of
/// `obstacles` (backend pixels; [`place_labels`]), joined to its point by a line where it had
/// to move.
fn draw_point_labels<DB: DrawingBackend, X: Ranged, Y: Ranged>(
    plot: &DrawingArea<DB, Cartesian2d<X, Y>>,
    centres: &[(i32, i32)],
    obstacles: &[LabelBox],
    labels: &[(&str, RGBAColor)],
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let area = plot.strip_coord_spec();
    let (xs, ys) = plot.get_pixel_range();
    let local: Vec<(i32, i32)> = centres
        .iter()
        .map(|&(x, y)| (x - xs.start, y - ys.start))
        .collect();
    let style = (FONT, 13).into_text_style(&area);
    let mut sizes = Vec::with_capacity(labels.len());
    for (text, _) in labels {
        let (w, h) = area.estimate_text_size(text, &style)?;
        sizes.push((w as i32, h as i32));
    }
    let obstacles: Vec<LabelBox> = obstacles
        .iter()
        .map(|o| LabelBox {
            x0: o.x0 - xs.start,
            y0: o.y0 - ys.start,
            ..*o
        })
        .collect();
    let bounds = (xs.end - xs.start, ys.end - ys.start);
    let placed = place_labels(&local, &sizes, &obstacles, bounds);
    for ((&(text, color), &(px, py)), label) in labels.iter().zip(&local).zip(placed) {
        if label.moved {
            let x = if label.x0 > px {
                label.x0 - 2
            } else {
                label.x0 + label.w + 2
            };
            let end = (x, label.y0 + label.h / 2);
            area.draw(&PathElement::new(
                vec![(px, py), end],
                color.stroke_width(1),
            ))?;
        }
        area.draw(&Text::new(
            text.to_string(),
            (label.x0, label.y0),
            (FONT, 13).into_font().color(&color),
        ))?;
    }
    Ok(())
}

/// A recipe on the family chart: its family (the index of its series), its size, its
/// training time and its test accuracy.
pub struct FamilyPoint {
    pub label: String,
    pub family: usize,
    pub params: f64,
    /// Mean training time of its runs, in seconds.
    pub seconds: f64,
    /// Mean test accuracy over its seeds and their sample std (0 for one), in %.
    pub accuracy: f64,
    pub std: f64,
}

/// The points of `points` on the front: none of the others is both cheaper (`cost`) and at
/// least as accurate. In order of cost.
pub fn front<'p>(
    points: &[&'p FamilyPoint],
    cost: impl Fn(&FamilyPoint) -> f64,
) -> Vec<&'p FamilyPoint> {
    let mut sorted: Vec<&FamilyPoint> = points.to_vec();
    sorted.sort_by(|a, b| cost(a).total_cmp(&cost(b)));
    let mut best = f64::NEG_INFINITY;
    sorted
        .into_iter()
        .filter(|p| {
            let ahead = p.accuracy > best;
            best = best.max(p.accuracy);
            ahead
        })
        .collect()
}

/// Two panels side by side: test accuracy against parameters and against training time (both
/// log scale), one colour per family, ± one std where a recipe has several seeds, and each
/// family's front joined by a line.
pub fn families(stem: &Path, families: &[&str], points: &[FamilyPoint]) -> anyhow::Result<()> {
    png_and_svg!(stem, (1400, 620), |root: &Area<_>| {
        let root = root.titled(
            "Test accuracy by family (study recipe; mean ± std over seeds; line: each family's front)",
            (FONT, 20),
        )?;
        let (legend, root) = root.split_vertically(LEGEND_HEIGHT);
        let entries: Vec<(&str, RGBAColor, Mark)> = (families.iter().enumerate())
            .map(|(f, name)| (*name, PALETTE[f % PALETTE.len()].to_rgba(), Mark::Dot))
            .collect();
        legend_strip(&legend, &entries)?;
        let (left, right) = root.split_horizontally(700);
        draw_family_panel(&left, families, points, "parameters (log scale)", |p| {
            p.params
        })?;
        draw_family_panel(
            &right,
            families,
            points,
            "training time of a run, seconds (log scale; 2 CPU cores)",
            |p| p.seconds,
        )
    })
}

fn draw_family_panel<DB: DrawingBackend>(
    area: &Area<DB>,
    families: &[&str],
    points: &[FamilyPoint],
    x_desc: &str,
    x: impl Fn(&FamilyPoint) -> f64,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let xmin = points.iter().map(&x).fold(f64::INFINITY, f64::min);
    let xmax = points.iter().map(&x).fold(1.0f64, f64::max);
    let (xmin, xmax) = if xmin.is_finite() {
        (xmin / 1.5, xmax * 2.5)
    } else {
        (1.0, 10.0)
    };
    let amin = points
        .iter()
        .map(|p| p.accuracy - p.std)
        .fold(100.0f64, f64::min);
    let amax = points
        .iter()
        .map(|p| p.accuracy + p.std)
        .fold(0.0f64, f64::max);
    let (lo, hi) = ((amin - 0.5).floor(), (amax + 0.5).ceil());
    let mut chart = ChartBuilder::on(area)
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d(
            (xmin..xmax)
                .log_scale()
                .with_key_points(log_ticks(xmin, xmax)),
            lo..hi,
        )?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc("test accuracy (%)")
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .light_line_style(WHITE.mix(0.0))
        .y_labels(whole_ticks(lo, hi))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .x_label_formatter(&|v| short_number(*v))
        .draw()?;
    // The fronts' lines, kept off by the labels drawn below.
    let mut front_boxes: Vec<LabelBox> = Vec::new();
    for f in 0..families.len() {
        let color = PALETTE[f % PALETTE.len()];
        let mine: Vec<&FamilyPoint> = points.iter().filter(|p| p.family == f).collect();
        let line: Vec<(f64, f64)> = front(&mine, &x)
            .iter()
            .map(|p| (x(p), p.accuracy))
            .collect();
        let pixels: Vec<(i32, i32)> = line.iter().map(|v| chart.backend_coord(v)).collect();
        front_boxes.extend(line_boxes(&pixels));
        chart.draw_series(LineSeries::new(line, color.mix(0.6).stroke_width(2)))?;
        chart.draw_series(mine.iter().filter(|p| p.std > 0.0).map(|p| {
            let (lo, hi) = (p.accuracy - p.std, p.accuracy + p.std);
            ErrorBar::new_vertical(x(p), lo, p.accuracy, hi, color.stroke_width(2), 10)
        }))?;
        chart.draw_series(
            mine.iter()
                .map(|p| Circle::new((x(p), p.accuracy), POINT_RADIUS, color.filled())),
        )?;
    }
    let centres: Vec<(i32, i32)> = points
        .iter()
        .map(|p| chart.backend_coord(&(x(p), p.accuracy)))
        .collect();
    let mut obstacles: Vec<LabelBox> = (points.iter().filter(|p| p.std > 0.0))
        .map(|p| {
            error_bar_box(
                chart.backend_coord(&(x(p), p.accuracy + p.std)),
                chart.backend_coord(&(x(p), p.accuracy - p.std)),
            )
        })
        .collect();
    obstacles.extend(front_boxes);
    let labelled: Vec<(&str, RGBAColor)> = points
        .iter()
        .map(|p| (p.label.as_str(), PALETTE[p.family % PALETTE.len()].mix(0.9)))
        .collect();
    draw_point_labels(chart.plotting_area(), &centres, &obstacles, &labelled)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_front_keeps_each_point_that_no_cheaper_one_matches() {
        let point = |label: &str, params: f64, accuracy: f64| FamilyPoint {
            label: label.into(),
            family: 0,
            params,
            seconds: 1.0,
            accuracy,
            std: 0.0,
        };
        let points = [
            point("big and worse", 300.0, 86.0),
            point("small", 25.0, 85.3),
            point("mid", 82.0, 86.3),
            point("bigger", 295.0, 86.8),
        ];
        let refs: Vec<&FamilyPoint> = points.iter().collect();
        let labels: Vec<&str> = front(&refs, |p| p.params)
            .iter()
            .map(|p| p.label.as_str())
            .collect();
        assert_eq!(labels, ["small", "mid", "bigger"]);
    }

    #[test]
    fn log_ticks_are_one_two_five_per_decade_inside_the_range() {
        assert_eq!(log_ticks(15_000.0, 1.2e6), [2e4, 5e4, 1e5, 2e5, 5e5, 1e6]);
        assert_eq!(log_ticks(11.0, 90.0), [20.0, 50.0]);
        assert_eq!(short_number(2e4), "20k");
        assert_eq!(short_number(1.5e6), "1.5M");
        assert_eq!(short_number(500.0), "500");
    }

    #[test]
    fn labels_of_stacked_points_move_apart() {
        // Three points 5 px apart, labels 80x12: the top one keeps its place to the right
        // (centred on it), the next ones step down a line height (13 px) at a time, past
        // the labels placed before them, and get leader lines.
        let centres = [(100, 50), (100, 55), (100, 60)];
        let sizes = [(80, 12); 3];
        let boxes = place_labels(&centres, &sizes, &[], (400, 300));
        let right = 100 + POINT_RADIUS + 4;
        let at = |y0, moved| LabelBox {
            x0: right,
            y0,
            w: 80,
            h: 12,
            moved,
        };
        assert_eq!(boxes[0], at(44, false));
        // Beside the second point (y0 49) it would overlap the first label; one line down
        // (62) is free.
        assert_eq!(boxes[1], at(62, true));
        // Beside the third (54) and one line down (67) overlap; one line up (41) overlaps
        // the first; two lines down (80) is free.
        assert_eq!(boxes[2], at(80, true));
        for (i, a) in boxes.iter().enumerate() {
            for b in &boxes[i + 1..] {
                assert!(!a.overlaps(b), "{a:?} {b:?}");
            }
        }
    }

    #[test]
    fn a_label_keeps_off_an_error_bar_and_a_line() {
        // An error bar where the label would go, beside its point: one line below is still on
        // the bar (it ends at y 120), two lines below is free.
        let bar = LabelBox {
            x0: 115,
            y0: 80,
            w: 12,
            h: 40,
            moved: false,
        };
        let boxes = place_labels(&[(100, 100)], &[(60, 12)], &[bar], (400, 300));
        let below = LabelBox {
            x0: 100 + POINT_RADIUS + 4,
            y0: 120,
            w: 60,
            h: 12,
            moved: true,
        };
        assert_eq!(boxes[0], below);
        // A line 30 px long is kept off by a box every 3 px, its ends included.
        let line = line_boxes(&[(0, 50), (30, 50)]);
        assert_eq!(line.len(), 11);
        assert_eq!((line[0].x0, line[10].x0, line[5].y0), (-2, 28, 48));
    }

    #[test]
    fn a_label_at_the_right_edge_goes_left() {
        // No room on the right of a point 20 px from the edge: the label goes to its left.
        let boxes = place_labels(&[(380, 100)], &[(60, 12)], &[], (400, 300));
        let gap = POINT_RADIUS + 4;
        assert_eq!(
            boxes[0],
            LabelBox {
                x0: 380 - gap - 60,
                y0: 94,
                w: 60,
                h: 12,
                moved: false
            }
        );
    }
}
