//! A person's image as the models read it: decoded with bounds (the format from the content,
//! a limit on pixels and memory), then turned into a 28x28 Fashion-MNIST-like input (grayscale,
//! light item on dark, cropped to the item, its longer side fitted to 28, centred by mass).
//! `predict`, the HTTP service and [`Classifier::classify_photo`](crate::Classifier::classify_photo)
//! all go through [`fit`], so each gives the same answer for the same file.
use image::{GrayImage, Luma};

/// Side of the images the models read.
pub const SIDE: u32 = 28;
/// Images wider or taller than this are refused before decoding.
pub const MAX_SIDE: u32 = 8192;

/// Whether a photo's colours are flipped so the item is light on a dark background.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Invert {
    /// Invert when the image's border is mostly light (a photo on a light background).
    #[default]
    Auto,
    Yes,
    No,
}

/// Why bytes are not an image the model can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty file")]
    Empty,
    /// Not one of the formats `image` decodes (the format comes from the content).
    #[error("not an image in a known format (PNG, JPEG, BMP, WebP, GIF, TIFF)")]
    UnknownFormat,
    /// Wider or taller than [`MAX_SIDE`], or over 256 MiB decoded.
    #[error("image too large (the limit is {MAX_SIDE}x{MAX_SIDE} pixels)")]
    TooLarge,
    /// A known format whose content does not decode (truncated, corrupt).
    #[error("cannot decode: {0}")]
    Corrupt(String),
}

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
/// Grayscale, inverted if needed (with [`Invert::Auto`]: where the border is mostly light); an
/// image then 28x28 is taken as it is (it is in the dataset's format). Any other is cropped to
/// the item, its longer side resized to 28, and placed on black with its centre of mass at the
/// centre (kept in frame).
pub fn fit(img: &image::DynamicImage, invert: Invert) -> (GrayImage, bool) {
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
