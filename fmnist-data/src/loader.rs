//! Normalization, augmentation, and the seeded batch iterator that yields candle tensors.
use candle::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::dataset::ImageSet;
use crate::error::Result;

/// How pixel bytes become model inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum Normalization {
    /// `p / 255`, in [0, 1].
    #[default]
    Unit,
    /// `p / 127.5 - 1`, in [-1, 1].
    Symmetric,
    /// `(p / 255 - mean) / std` with the mean and std of the training images.
    Standard,
}

/// The affine map `x = p * scale + shift` from a pixel byte to a model input.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Normalizer {
    pub scale: f32,
    pub shift: f32,
}

impl Normalizer {
    /// The normalizer of `kind`; `Standard` takes its statistics from `train`.
    pub fn fit(kind: Normalization, train: &ImageSet) -> Self {
        match kind {
            Normalization::Unit => Normalizer {
                scale: 1.0 / 255.0,
                shift: 0.0,
            },
            Normalization::Symmetric => Normalizer {
                scale: 1.0 / 127.5,
                shift: -1.0,
            },
            Normalization::Standard => {
                let n = train.pixels.len().max(1) as f64;
                let sum: f64 = train.pixels.iter().map(|&p| p as f64).sum();
                let sq: f64 = train.pixels.iter().map(|&p| (p as f64) * (p as f64)).sum();
                let mean = sum / n / 255.0;
                let var = (sq / n / (255.0 * 255.0) - mean * mean).max(1e-12);
                let std = var.sqrt();
                Normalizer {
                    scale: (1.0 / (255.0 * std)) as f32,
                    shift: (-mean / std) as f32,
                }
            }
        }
    }

    pub fn apply(&self, pixel: u8) -> f32 {
        pixel as f32 * self.scale + self.shift
    }
}

/// Training-time augmentations, each drawn from the loader's seeded generator. All off by default.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Augment {
    /// Random translation by up to this many pixels in each direction (zero padding, then crop).
    pub translate: usize,
    /// Mirror left-right with probability 1/2.
    pub hflip: bool,
    /// Probability of erasing one random rectangle (2-20% of the image, set to background).
    pub erase: f32,
    /// Random rotation by up to this many degrees either way, about the image centre.
    #[serde(default)]
    pub rotate: f32,
    /// Random zoom by a factor drawn from [1 - zoom, 1 + zoom], about the image centre.
    #[serde(default)]
    pub zoom: f32,
}

impl std::fmt::Display for Augment {
    /// E.g. `translate ±2 px, flip, erase p=0.5`, or `none`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if self.translate > 0 {
            parts.push(format!("translate ±{} px", self.translate));
        }
        if self.hflip {
            parts.push("flip".to_string());
        }
        if self.erase > 0.0 {
            parts.push(format!("erase p={}", self.erase));
        }
        if self.rotate > 0.0 {
            parts.push(format!("rotate ±{}°", self.rotate));
        }
        if self.zoom > 0.0 {
            parts.push(format!("zoom ±{}%", 100.0 * self.zoom));
        }
        if parts.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

impl Augment {
    pub fn is_off(&self) -> bool {
        self.translate == 0 && !self.hflip && self.erase <= 0.0 && !self.warps()
    }

    /// Whether rotation or zoom is on (images are then resampled, not only shifted).
    fn warps(&self) -> bool {
        self.rotate > 0.0 || self.zoom > 0.0
    }

    /// Writes an augmented copy of `src` (`rows x cols` bytes) into `dst`.
    pub fn apply(&self, src: &[u8], dst: &mut [u8], rows: usize, cols: usize, rng: &mut impl Rng) {
        let t = self.translate as i64;
        let (dy, dx) = if t > 0 {
            (
                rng.random_range(-t..=t) as isize,
                rng.random_range(-t..=t) as isize,
            )
        } else {
            (0, 0)
        };
        let flip = self.hflip && rng.random_bool(0.5);
        // Drawn only when on, so runs without them see the same random stream as before.
        if self.warps() {
            let degrees = if self.rotate > 0.0 {
                rng.random_range(-self.rotate..=self.rotate)
            } else {
                0.0
            };
            let scale = if self.zoom > 0.0 {
                rng.random_range(1.0 - self.zoom..=1.0 + self.zoom)
            } else {
                1.0
            };
            let shift = (dy as f32, dx as f32);
            warp(
                src,
                dst,
                rows,
                cols,
                degrees.to_radians(),
                scale,
                shift,
                flip,
            );
            self.erase_into(dst, rows, cols, rng);
            return;
        }
        for r in 0..rows {
            for c in 0..cols {
                let sr = r as isize + dy;
                let mut sc = c as isize + dx;
                if flip {
                    sc = cols as isize - 1 - sc;
                }
                dst[r * cols + c] =
                    if sr >= 0 && sr < rows as isize && sc >= 0 && sc < cols as isize {
                        src[sr as usize * cols + sc as usize]
                    } else {
                        0
                    };
            }
        }
        self.erase_into(dst, rows, cols, rng);
    }

    /// Random erasing, with probability `erase`, of one rectangle of `dst`.
    fn erase_into(&self, dst: &mut [u8], rows: usize, cols: usize, rng: &mut impl Rng) {
        if self.erase > 0.0 && rng.random_bool(self.erase.min(1.0) as f64) {
            let area = (rows * cols) as f64 * rng.random_range(0.02..0.2);
            let aspect: f64 = rng.random_range(0.3f64.ln()..3.3f64.ln()).exp();
            let h = ((area * aspect).sqrt().round() as usize).clamp(1, rows);
            let w = ((area / aspect).sqrt().round() as usize).clamp(1, cols);
            let top = rng.random_range(0..=(rows - h) as u64) as usize;
            let left = rng.random_range(0..=(cols - w) as u64) as usize;
            for r in top..top + h {
                dst[r * cols + left..r * cols + left + w].fill(0);
            }
        }
    }
}

/// Writes into `dst` the image `src` (`rows x cols`) rotated by `angle` radians (counter-
/// clockwise as displayed) and scaled by `scale` about its centre, then shifted by `shift`
/// (rows, columns) and mirrored left-right if `flip`: each output pixel samples the input
/// bilinearly at the inverse-mapped point, with zero outside.
#[allow(clippy::too_many_arguments)]
pub fn warp(
    src: &[u8],
    dst: &mut [u8],
    rows: usize,
    cols: usize,
    angle: f32,
    scale: f32,
    shift: (f32, f32),
    flip: bool,
) {
    let (cy, cx) = ((rows as f32 - 1.0) / 2.0, (cols as f32 - 1.0) / 2.0);
    let (sin, cos) = angle.sin_cos();
    let pixel = |r: isize, c: isize| -> f32 {
        if r >= 0 && c >= 0 && (r as usize) < rows && (c as usize) < cols {
            src[r as usize * cols + c as usize] as f32
        } else {
            0.0
        }
    };
    for r in 0..rows {
        for c in 0..cols {
            // The point of the (unflipped, unshifted) output this pixel shows.
            let oc = if flip { cols - 1 - c } else { c } as f32;
            let (y, x) = (r as f32 + shift.0 - cy, oc + shift.1 - cx);
            // Inverse rotation and scaling (y grows downwards, so the signs of sin flip).
            let sy = (cos * y + sin * x) / scale + cy;
            let sx = (-sin * y + cos * x) / scale + cx;
            let (y0, x0) = (sy.floor(), sx.floor());
            let (fy, fx) = (sy - y0, sx - x0);
            let (y0, x0) = (y0 as isize, x0 as isize);
            let v = pixel(y0, x0) * (1.0 - fy) * (1.0 - fx)
                + pixel(y0, x0 + 1) * (1.0 - fy) * fx
                + pixel(y0 + 1, x0) * fy * (1.0 - fx)
                + pixel(y0 + 1, x0 + 1) * fy * fx;
            dst[r * cols + c] = v.round().clamp(0.0, 255.0) as u8;
        }
    }
}

/// One mini-batch: images `[B, 1, rows, cols]` f32 and labels `[B]` u32, on the loader's device.
#[derive(Debug, Clone)]
pub struct Batch {
    pub images: Tensor,
    pub labels: Tensor,
    /// The dataset indices of the batch's images, in order.
    pub indices: Vec<u32>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }
}

/// A whole [`ImageSet`] normalized once and kept on a device, so that each batch is gathered
/// there (the batch's indices uploaded, one `index_select` of the images and one of the labels)
/// instead of normalized on the host and uploaded image by image: what a GPU wants from a set
/// this small (48,000 training images are 150 MB as f32). The batches are the same values
/// either way. Augmentations run on the host, so a loader uses it only for batches without
/// them.
#[derive(Debug, Clone)]
pub struct ResidentSet {
    /// `[N, 1, rows, cols]`, normalized.
    images: Tensor,
    /// `[N]`, u32.
    labels: Tensor,
    normalizer: Normalizer,
}

impl ResidentSet {
    /// `set` normalized by `normalizer`, uploaded to `device` once.
    pub fn upload(set: &ImageSet, normalizer: Normalizer, device: &Device) -> Result<Self> {
        let images: Vec<f32> = set.pixels.iter().map(|&p| normalizer.apply(p)).collect();
        let labels: Vec<u32> = set.labels.iter().map(|&l| u32::from(l)).collect();
        Ok(ResidentSet {
            images: Tensor::from_vec(images, (set.len(), 1, set.rows, set.cols), device)?,
            labels: Tensor::from_vec(labels, set.len(), device)?,
            normalizer,
        })
    }
}

/// Yields batches of one [`ImageSet`]: indices shuffled per epoch by a seed, bytes normalized
/// and (optionally) augmented on the host into one buffer per batch, then uploaded; or, with a
/// [`ResidentSet`], gathered on the device where no augmentation applies.
#[derive(Debug, Clone)]
pub struct Loader<'a> {
    set: &'a ImageSet,
    normalizer: Normalizer,
    batch_size: usize,
    device: Device,
    augment: Augment,
    seed: u64,
    resident: Option<ResidentSet>,
}

impl<'a> Loader<'a> {
    pub fn new(
        set: &'a ImageSet,
        normalizer: Normalizer,
        batch_size: usize,
        device: &Device,
    ) -> Self {
        Loader {
            set,
            normalizer,
            batch_size: batch_size.max(1),
            device: device.clone(),
            augment: Augment::default(),
            seed: 0,
            resident: None,
        }
    }

    /// Gathers the batches without augmentation from `resident`, this loader's set already on
    /// its device with its normalizer.
    pub fn with_resident(mut self, resident: ResidentSet) -> Result<Self> {
        let matches = resident.normalizer == self.normalizer
            && resident.images.dims() == [self.set.len(), 1, self.set.rows, self.set.cols]
            && resident.images.device().same_device(&self.device);
        if !matches {
            return Err(candle::Error::Msg(
                "the resident set is not this loader's set, normalizer and device".into(),
            )
            .into());
        }
        self.resident = Some(resident);
        Ok(self)
    }

    /// Augmentations applied to every batch of [`Loader::epoch`] (not to [`Loader::in_order`]).
    pub fn with_augment(mut self, augment: Augment) -> Self {
        self.augment = augment;
        self
    }

    /// The seed of the per-epoch shuffles and augmentations.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    pub fn num_batches(&self) -> usize {
        self.set.len().div_ceil(self.batch_size)
    }

    /// The batches of training epoch `epoch`: shuffled and augmented, the same for the same seed and epoch.
    pub fn epoch(&self, epoch: u64) -> Batches<'_> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(epoch);
        let mut order: Vec<u32> = (0..self.set.len() as u32).collect();
        order.shuffle(&mut rng);
        Batches {
            loader: self,
            order,
            next: 0,
            rng,
            augment: self.augment,
        }
    }

    /// The batches in dataset order, without augmentation (for evaluation).
    pub fn in_order(&self) -> Batches<'_> {
        Batches {
            loader: self,
            order: (0..self.set.len() as u32).collect(),
            next: 0,
            rng: ChaCha8Rng::seed_from_u64(self.seed),
            augment: Augment::default(),
        }
    }

    /// Builds the batch of the given dataset indices.
    pub fn batch_of(
        &self,
        indices: &[u32],
        augment: &Augment,
        rng: &mut ChaCha8Rng,
    ) -> Result<Batch> {
        if let (Some(r), true) = (&self.resident, augment.is_off()) {
            let at = Tensor::from_slice(indices, indices.len(), &self.device)?;
            return Ok(Batch {
                images: r.images.index_select(&at, 0)?,
                labels: r.labels.index_select(&at, 0)?,
                indices: indices.to_vec(),
            });
        }
        let (rows, cols) = (self.set.rows, self.set.cols);
        let n = rows * cols;
        let mut images = Vec::with_capacity(indices.len() * n);
        let mut labels = Vec::with_capacity(indices.len());
        let mut scratch = vec![0u8; n];
        for &i in indices {
            let i = i as usize;
            let src = &self.set.pixels[i * n..(i + 1) * n];
            let pixels = if augment.is_off() {
                src
            } else {
                augment.apply(src, &mut scratch, rows, cols, rng);
                &scratch
            };
            images.extend(pixels.iter().map(|&p| self.normalizer.apply(p)));
            labels.push(self.set.labels[i] as u32);
        }
        let b = indices.len();
        Ok(Batch {
            images: Tensor::from_vec(images, (b, 1, rows, cols), &self.device)?,
            labels: Tensor::from_vec(labels, b, &self.device)?,
            indices: indices.to_vec(),
        })
    }
}

/// Iterator over the batches of one pass; the last batch may be smaller.
pub struct Batches<'a> {
    loader: &'a Loader<'a>,
    order: Vec<u32>,
    next: usize,
    rng: ChaCha8Rng,
    augment: Augment,
}

impl Iterator for Batches<'_> {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.order.len() {
            return None;
        }
        let end = (self.next + self.loader.batch_size).min(self.order.len());
        let indices = &self.order[self.next..end];
        self.next = end;
        Some(self.loader.batch_of(indices, &self.augment, &mut self.rng))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = (self.order.len() - self.next).div_ceil(self.loader.batch_size);
        (left, Some(left))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(n: usize) -> ImageSet {
        ImageSet {
            rows: 4,
            cols: 4,
            pixels: (0..n * 16).map(|i| (i % 256) as u8).collect(),
            labels: (0..n).map(|i| (i % 10) as u8).collect(),
        }
    }

    #[test]
    fn a_resident_set_gives_the_same_batches_and_augmentation_still_runs_on_the_host() {
        let s = set(10);
        let norm = Normalizer::fit(Normalization::Standard, &s);
        let host = Loader::new(&s, norm, 4, &Device::Cpu).with_seed(3);
        let resident = ResidentSet::upload(&s, norm, &Device::Cpu).unwrap();
        let gathered = host.clone().with_resident(resident.clone()).unwrap();
        let flat = |b: &Batch| {
            let x = b.images.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            (x, b.labels.to_vec1::<u32>().unwrap(), b.indices.clone())
        };
        for (a, b) in host.epoch(2).zip(gathered.epoch(2)) {
            let (a, b) = (a.unwrap(), b.unwrap());
            assert_eq!(a.images.dims(), b.images.dims());
            assert_eq!(flat(&a), flat(&b));
        }
        // With augmentation the host path runs: the same batches as a loader without the set.
        let shift = Augment {
            translate: 1,
            ..Augment::default()
        };
        let (a, b) = (
            host.clone().with_augment(shift),
            gathered.with_augment(shift),
        );
        for (a, b) in a.epoch(0).zip(b.epoch(0)) {
            assert_eq!(flat(&a.unwrap()), flat(&b.unwrap()));
        }
        // The batches do come from the resident tensors: a stand-in of the same shape with
        // other pixels shows through.
        let mut other = set(10);
        other.pixels.iter_mut().for_each(|p| *p = 255 - *p);
        let stand_in = ResidentSet::upload(&other, norm, &Device::Cpu).unwrap();
        let from_stand_in = host.clone().with_resident(stand_in).unwrap();
        let (a, b) = (host.epoch(1).next(), from_stand_in.epoch(1).next());
        let (a, b) = (flat(&a.unwrap().unwrap()), flat(&b.unwrap().unwrap()));
        assert_eq!((&a.1, &a.2), (&b.1, &b.2));
        assert_ne!(a.0, b.0);
        // Another normalizer's set is refused.
        let unit = Normalizer::fit(Normalization::Unit, &s);
        let err = Loader::new(&s, unit, 4, &Device::Cpu)
            .with_resident(resident)
            .unwrap_err();
        assert!(err.to_string().contains("not this loader's set"), "{err}");
    }

    #[test]
    fn batches_have_the_right_shapes_and_cover_every_image_once() {
        let s = set(10);
        let norm = Normalizer::fit(Normalization::Unit, &s);
        let loader = Loader::new(&s, norm, 4, &Device::Cpu).with_seed(7);
        let batches: Vec<Batch> = loader.epoch(0).collect::<Result<_>>().unwrap();
        assert_eq!(batches.len(), 3);
        assert_eq!(batches[0].images.dims(), &[4, 1, 4, 4]);
        assert_eq!(batches[2].labels.dims(), &[2]);
        let mut seen: Vec<u32> = batches.iter().flat_map(|b| b.indices.clone()).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        let labels = batches[0].labels.to_vec1::<u32>().unwrap();
        let expect: Vec<u32> = batches[0].indices.iter().map(|i| i % 10).collect();
        assert_eq!(labels, expect);
    }

    #[test]
    fn shuffle_is_seeded_per_epoch() {
        let s = set(50);
        let norm = Normalizer::fit(Normalization::Unit, &s);
        let a = Loader::new(&s, norm, 50, &Device::Cpu).with_seed(1);
        let order = |l: &Loader, e| l.epoch(e).next().unwrap().unwrap().indices;
        assert_eq!(order(&a, 0), order(&a, 0));
        assert_ne!(order(&a, 0), order(&a, 1));
        let b = Loader::new(&s, norm, 50, &Device::Cpu).with_seed(2);
        assert_ne!(order(&a, 0), order(&b, 0));
    }

    #[test]
    fn normalizations_map_the_pixel_range() {
        let s = ImageSet {
            rows: 1,
            cols: 2,
            pixels: vec![0, 255],
            labels: vec![0],
        };
        let unit = Normalizer::fit(Normalization::Unit, &s);
        assert_eq!((unit.apply(0), unit.apply(255)), (0.0, 1.0));
        let sym = Normalizer::fit(Normalization::Symmetric, &s);
        assert_eq!((sym.apply(0), sym.apply(255)), (-1.0, 1.0));
        // mean 0.5, std 0.5: 0 -> -1, 255 -> 1.
        let std = Normalizer::fit(Normalization::Standard, &s);
        assert!((std.apply(0) + 1.0).abs() < 1e-6 && (std.apply(255) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn translation_shifts_and_pads_with_zero() {
        let src: Vec<u8> = (1..=9).collect();
        let mut dst = vec![0; 9];
        let aug = Augment {
            translate: 1,
            ..Default::default()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        // Over many draws every output is a shifted window of the input with zero fill.
        for _ in 0..20 {
            aug.apply(&src, &mut dst, 3, 3, &mut rng);
            let kept: Vec<u8> = dst.iter().copied().filter(|&p| p != 0).collect();
            assert!(kept.windows(2).all(|w| w[0] < w[1]));
            assert!(dst[4] != 0, "the centre pixel always comes from the image");
        }
    }

    #[test]
    fn flip_mirrors_rows() {
        let src: Vec<u8> = vec![1, 2, 3, 4, 5, 6];
        let aug = Augment {
            hflip: true,
            ..Default::default()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let mut seen_flip = false;
        for _ in 0..20 {
            let mut dst = vec![0; 6];
            aug.apply(&src, &mut dst, 2, 3, &mut rng);
            assert!(dst == src || dst == vec![3, 2, 1, 6, 5, 4]);
            seen_flip |= dst != src;
        }
        assert!(seen_flip);
    }

    #[test]
    fn warp_rotates_and_zooms_by_hand() {
        // 3x3 with a bright top-middle pixel; 90° counter-clockwise moves it to the left-middle.
        let src = [0, 9, 0, 0, 5, 0, 0, 0, 0];
        let mut dst = [0u8; 9];
        warp(
            &src,
            &mut dst,
            3,
            3,
            std::f32::consts::FRAC_PI_2,
            1.0,
            (0.0, 0.0),
            false,
        );
        assert_eq!(dst, [0, 0, 0, 9, 5, 0, 0, 0, 0]);
        // No rotation, no zoom, no shift: the image itself; flipped: mirrored.
        warp(&src, &mut dst, 3, 3, 0.0, 1.0, (0.0, 0.0), false);
        assert_eq!(dst, src);
        let row = [10, 20, 30, 40];
        let mut out = [0u8; 4];
        warp(&row, &mut out, 1, 4, 0.0, 1.0, (0.0, 0.0), true);
        assert_eq!(out, [40, 30, 20, 10]);
        // Zoom 2 about the centre of 1x4 (centre 1.5): output column c samples 1.5 + (c - 1.5)/2.
        warp(&row, &mut out, 1, 4, 0.0, 2.0, (0.0, 0.0), false);
        assert_eq!(out, [18, 23, 28, 33]); // 0.75, 1.25, 1.75, 2.25 -> 17.5, 22.5, 27.5, 32.5
    }

    #[test]
    fn rotation_and_zoom_are_seeded_and_leave_other_streams_alone() {
        let src: Vec<u8> = (0..784).map(|i| ((i * 37) % 256) as u8).collect();
        let on = Augment {
            rotate: 15.0,
            zoom: 0.1,
            ..Default::default()
        };
        let draw = |aug: &Augment, seed| {
            let mut dst = vec![0; 784];
            aug.apply(&src, &mut dst, 28, 28, &mut ChaCha8Rng::seed_from_u64(seed));
            dst
        };
        assert_eq!(draw(&on, 4), draw(&on, 4));
        assert_ne!(draw(&on, 4), draw(&on, 5));
        assert_ne!(draw(&on, 4), src);
        // Off, the image passes unchanged and nothing is drawn from the generator.
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let mut dst = vec![0; 784];
        Augment::default().apply(&src, &mut dst, 28, 28, &mut rng);
        assert_eq!(dst, src);
        assert_eq!(
            rng.random::<u64>(),
            ChaCha8Rng::seed_from_u64(9).random::<u64>()
        );
        // Configurations saved before these knobs existed read with both off.
        let old: Augment =
            serde_json::from_str(r#"{"translate": 2, "hflip": true, "erase": 0.0}"#).unwrap();
        assert!(!old.warps());
    }

    #[test]
    fn erasing_blanks_a_rectangle() {
        let src = vec![200u8; 28 * 28];
        let mut dst = vec![0; 28 * 28];
        let aug = Augment {
            erase: 1.0,
            ..Default::default()
        };
        aug.apply(&src, &mut dst, 28, 28, &mut ChaCha8Rng::seed_from_u64(5));
        let zeros = dst.iter().filter(|&&p| p == 0).count();
        assert!((10..=200).contains(&zeros), "{zeros} erased pixels");
    }
}
