//! Winograd's F(2x2, 3x3) for a 3x3, stride-1 convolution followed by 2x2 max-pooling and
//! ReLU, in evaluation.
//!
//! Each pooling window is one 2x2 tile of the convolution's output, and F(2x2, 3x3) computes
//! such a tile from the 4x4 input patch under it with 16 products per input channel instead of
//! 36 (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", 2016):
//! `Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`. Summed over the channels, the 16 products of a tile are 16
//! GEMMs `M_e [T, O] = V_e [T, C] · U_e [C, O]` over the tiles `T` of a block of images, with
//! `U = G g Gᵀ` the transformed kernel and `V = Bᵀ d B` the transformed patches. Tiles stand
//! only where a pooling window does, so a row or column that the pooling drops (the last of an
//! odd output) is never computed: for the `cnn`'s second convolution the GEMMs do a third of
//! the direct convolution's work. Both transforms run on images laid out channels-last, 16
//! channels per vector. They add and subtract (the kernel's also halves, exactly), and the
//! results agree with the direct convolution to rounding (the tests hold them to 1e-5
//! relative). Training keeps the direct convolution, whose backward pass needs its outputs.
use crate::kernels::{first_max, gemm_into, simd, sized};

/// Fewest input channels for which the transformed GEMMs run: with one channel (a network's
/// first layer) each of the 16 GEMMs would be an outer product, all memory traffic.
pub(crate) const MIN_CHANNELS: usize = 8;

/// A 3x3 kernel in the Winograd domain: `u [16, C, O]`, `U_e = G g Gᵀ` entry `e` (row-major in
/// the 4x4 tile) for every input and output channel, and the bias (zeros without one).
pub(crate) struct TransformedKernel {
    u: Vec<f32>,
    bias: Vec<f32>,
    outputs: usize,
    channels: usize,
}

impl TransformedKernel {
    /// The transform of the kernel matrix `[O, C·9 (+1)]` of the im2col path, whose last
    /// column, with `has_bias`, is the bias.
    pub(crate) fn new(kernel: &[f32], channels: usize, has_bias: bool) -> Self {
        let row = channels * 9 + usize::from(has_bias);
        let outputs = kernel.len() / row;
        let mut u = vec![0f32; 16 * outputs * channels];
        let mut bias = vec![0f32; outputs];
        for (o, k) in kernel.chunks_exact(row).enumerate() {
            if has_bias {
                bias[o] = k[channels * 9];
            }
            for c in 0..channels {
                let g: [f32; 9] = k[c * 9..][..9].try_into().expect("3x3");
                for (e, value) in kernel_tile(&g).into_iter().enumerate() {
                    u[(e * channels + c) * outputs + o] = value;
                }
            }
        }
        TransformedKernel {
            u,
            bias,
            outputs,
            channels,
        }
    }
}

/// `G g Gᵀ` of a 3x3 kernel `g` (row-major), with `G = [1 0 0; ½ ½ ½; ½ -½ ½; 0 0 1]`.
fn kernel_tile(g: &[f32; 9]) -> [f32; 16] {
    let rows = |a: f32, b: f32, c: f32| [a, (a + b + c) * 0.5, (a - b + c) * 0.5, c];
    // `G g` column by column, then the same on each of its four rows.
    let cols: [[f32; 4]; 3] = std::array::from_fn(|j| rows(g[j], g[3 + j], g[6 + j]));
    let mut tile = [0f32; 16];
    for i in 0..4 {
        tile[4 * i..][..4].copy_from_slice(&rows(cols[0][i], cols[1][i], cols[2][i]));
    }
    tile
}

/// Sizes of the convolution and its pooling, per image.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PooledGeometry {
    pub h: usize,
    pub w: usize,
    pub pad: usize,
    /// Pooled output height and width: one 2x2 tile each.
    pub ph: usize,
    pub pw: usize,
}

impl PooledGeometry {
    fn tiles(&self) -> usize {
        self.ph * self.pw
    }

    /// Side of the zero-padded input square a plane's tiles read: rows and columns
    /// `-pad .. 2·ph + 2 - pad` (and the same across).
    pub(crate) fn padded(&self) -> (usize, usize) {
        (2 * self.ph + 2, 2 * self.pw + 2)
    }
}

/// A thread's scratch for [`pool_relu_block`], kept from call to call: the channels-last
/// image, the transformed patches `V` and the GEMMs' products `M`.
#[derive(Default)]
pub(crate) struct WinogradScratch {
    image: Vec<f32>,
    v: Vec<f32>,
    m: Vec<f32>,
}

/// The convolution of `x [b, C, H, W]` with `kernel`, 2x2 max-pooled, plus the bias, through
/// ReLU, into `out [b, O, ph, pw]`.
pub(crate) fn pool_relu_block(
    kernel: &TransformedKernel,
    x: &[f32],
    g: PooledGeometry,
    scratch: &mut WinogradScratch,
    out: &mut [f32],
) {
    let (o, c) = (kernel.outputs, kernel.channels);
    let images = x.len() / (c * g.h * g.w);
    let per_image = g.tiles();
    let t = images * per_image;
    let WinogradScratch { image, v, m } = scratch;
    let v = sized(v, 16 * t * c);
    let (side_h, side_w) = g.padded();
    let image = sized(image, side_h * side_w * c);
    simd(
        #[inline(always)]
        || transform_input(x, g, c, t, image, v),
    );
    let m = sized(m, 16 * t * o);
    for ((m, v), u) in m
        .chunks_exact_mut(t * o)
        .zip(v.chunks_exact(t * c))
        .zip(kernel.u.chunks_exact(c * o))
    {
        gemm_into(m, v, u, (t, c, o), false, false);
    }
    simd(
        #[inline(always)]
        || transform_output(m, kernel, per_image, out),
    );
}

/// `V [16, T, C]`: `Bᵀ d B` of every tile's 4x4 input patch `d` of the images `x`, each
/// image first laid out channels-last so that every step runs over 16 channels at once.
#[inline(always)]
fn transform_input(
    x: &[f32],
    g: PooledGeometry,
    c: usize,
    t: usize,
    image: &mut [f32],
    v: &mut [f32],
) {
    const LANES: usize = 16;
    let (_, side_w) = g.padded();
    for (img, planes) in x.chunks_exact(c * g.h * g.w).enumerate() {
        channels_last(planes, g, c, image);
        for (ti, tj) in (0..g.ph).flat_map(|i| (0..g.pw).map(move |j| (i, j))) {
            let tile = img * g.tiles() + ti * g.pw + tj;
            let d: [&[f32]; 16] = std::array::from_fn(|i| {
                &image[((2 * ti + i / 4) * side_w + 2 * tj + i % 4) * c..][..c]
            });
            let mut store = |ch: usize, e: usize, values: &[f32]| {
                v[(e * t + tile) * c + ch..][..values.len()].copy_from_slice(values);
            };
            let full = c - c % LANES;
            for ch in (0..full).step_by(LANES) {
                for (e, values) in tile_transform::<LANES>(&d, ch).iter().enumerate() {
                    store(ch, e, values);
                }
            }
            for ch in full..c {
                for (e, values) in tile_transform::<1>(&d, ch).iter().enumerate() {
                    store(ch, e, values);
                }
            }
        }
    }
}

/// `Bᵀ d B` of one tile for the `N` channels from `ch`, `d[i]` the channels of the patch's
/// pixel `i` (row-major), with `Bᵀ = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]`: entry `e` of
/// the 4x4 result, row-major, for each channel.
#[inline(always)]
fn tile_transform<const N: usize>(d: &[&[f32]; 16], ch: usize) -> [[f32; N]; 16] {
    let d: [&[f32; N]; 16] =
        std::array::from_fn(|i| d[i][ch..][..N].try_into().expect("N channels"));
    let mut out = [[0f32; N]; 16];
    // One loop over the channels, each step a whole tile: the loop vectorizes across them.
    for l in 0..N {
        let p = |i: usize| d[i][l];
        // `Bᵀ d`, row r of the tile in rows[4r..4r + 4].
        let mut rows = [0f32; 16];
        for s in 0..4 {
            rows[s] = p(s) - p(8 + s);
            rows[4 + s] = p(4 + s) + p(8 + s);
            rows[8 + s] = p(8 + s) - p(4 + s);
            rows[12 + s] = p(4 + s) - p(12 + s);
        }
        // The same combination across each row's columns.
        for r in (0..16).step_by(4) {
            out[r][l] = rows[r] - rows[r + 2];
            out[r + 1][l] = rows[r + 1] + rows[r + 2];
            out[r + 2][l] = rows[r + 2] - rows[r + 1];
            out[r + 3][l] = rows[r + 1] - rows[r + 3];
        }
    }
    out
}

/// Image `x [C, H, W]` as `dst [side_h, side_w, C]` over the padded square its tiles read
/// (rows and columns `-pad .. 2·ph + 2 - pad`), zeros outside the image.
#[inline(always)]
pub(crate) fn channels_last(x: &[f32], g: PooledGeometry, c: usize, dst: &mut [f32]) {
    let (side_h, side_w) = g.padded();
    let (rows, cols) = (g.h.min(side_h - g.pad), g.w.min(side_w - g.pad));
    // Zeros where no input lands: lines above and below the image, columns left and right.
    for (y, line) in dst.chunks_exact_mut(side_w * c).enumerate() {
        if y < g.pad || y >= g.pad + rows {
            line.fill(0.0);
        } else {
            line[..g.pad * c].fill(0.0);
            line[(g.pad + cols) * c..].fill(0.0);
        }
    }
    for (ch, plane) in x.chunks_exact(g.h * g.w).enumerate() {
        for y in 0..rows {
            let src = &plane[y * g.w..][..cols];
            let line = (y + g.pad) * side_w + g.pad;
            for (xx, &value) in src.iter().enumerate() {
                dst[(line + xx) * c + ch] = value;
            }
        }
    }
}

/// The pooled output `[b, O, ph, pw]` from `M [16, T, O]`: each tile's `Aᵀ m A` with
/// `Aᵀ = [1 1 1 0; 0 1 -1 -1]`, its maximum, the bias and ReLU, 16 output channels at once.
#[inline(always)]
fn transform_output(m: &[f32], kernel: &TransformedKernel, per_image: usize, out: &mut [f32]) {
    const LANES: usize = 16;
    let o = kernel.outputs;
    let t = m.len() / (16 * o);
    for (img, out) in out.chunks_exact_mut(o * per_image).enumerate() {
        for p in 0..per_image {
            let tile = img * per_image + p;
            let e: [&[f32]; 16] = std::array::from_fn(|e| &m[(e * t + tile) * o..][..o]);
            let mut store = |oc: usize, values: &[f32]| {
                for (l, &value) in values.iter().enumerate() {
                    out[(oc + l) * per_image + p] = value;
                }
            };
            let full = o - o % LANES;
            for oc in (0..full).step_by(LANES) {
                store(oc, &tile_output::<LANES>(&e, &kernel.bias, oc));
            }
            for oc in full..o {
                store(oc, &tile_output::<1>(&e, &kernel.bias, oc));
            }
        }
    }
}

/// ReLU of the bias plus the maximum of `Aᵀ m A` for the `N` output channels from `oc`, `m[e]`
/// the output channels of entry `e` of the tile.
#[inline(always)]
fn tile_output<const N: usize>(m: &[&[f32]; 16], bias: &[f32], oc: usize) -> [f32; N] {
    let m: [&[f32; N]; 16] =
        std::array::from_fn(|e| m[e][oc..][..N].try_into().expect("N channels"));
    let bias: &[f32; N] = bias[oc..][..N].try_into().expect("N channels");
    let mut out = [0f32; N];
    // One loop over the channels, each step a whole tile: the loop vectorizes across them.
    for l in 0..N {
        let e = |i: usize| m[i][l];
        // `Aᵀ m`: its two rows, then the same combination across their columns.
        let s0: [f32; 4] = [0, 1, 2, 3].map(|j| e(j) + e(4 + j) + e(8 + j));
        let s1: [f32; 4] = [0, 1, 2, 3].map(|j| e(4 + j) - e(8 + j) - e(12 + j));
        let (_, max) = first_max(
            s0[0] + s0[1] + s0[2],
            s0[1] - s0[2] - s0[3],
            s1[0] + s1[1] + s1[2],
            s1[1] - s1[2] - s1[3],
        );
        out[l] = (max + bias[l]).max(0.0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 3x3 convolution of a padded plane at output (y, x), by definition.
    fn direct(plane: &[f32], w: usize, g: &[f32; 9], y: usize, x: usize) -> f32 {
        (0..3)
            .flat_map(|i| (0..3).map(move |j| (i, j)))
            .map(|(i, j)| g[3 * i + j] * plane[(y + i) * w + x + j])
            .sum()
    }

    #[test]
    fn a_tile_of_small_integers_comes_out_exact() {
        // Integers and halves are exact in f32, so the transform must give the direct sums
        // bit for bit: output (y, x) of a 4x4 patch is the 3x3 window at (y, x).
        let g = [1.0, -2.0, 0.0, 3.0, 1.0, -1.0, 2.0, 0.0, 1.0];
        let patch: Vec<f32> = (0..16).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
        let u = kernel_tile(&g);
        let d: [&[f32]; 16] = std::array::from_fn(|i| &patch[i..=i]);
        let v = tile_transform::<1>(&d, 0);
        let m: Vec<f32> = u.iter().zip(&v).map(|(a, b)| a * b[0]).collect();
        let s0: Vec<f32> = (0..4).map(|j| m[j] + m[4 + j] + m[8 + j]).collect();
        let s1: Vec<f32> = (0..4).map(|j| m[4 + j] - m[8 + j] - m[12 + j]).collect();
        let y = [
            s0[0] + s0[1] + s0[2],
            s0[1] - s0[2] - s0[3],
            s1[0] + s1[1] + s1[2],
            s1[1] - s1[2] - s1[3],
        ];
        for (k, (yy, xx)) in [(0, 0), (0, 1), (1, 0), (1, 1)].into_iter().enumerate() {
            assert_eq!(y[k], direct(&patch, 4, &g, yy, xx), "output ({yy}, {xx})");
        }
    }

    #[test]
    fn a_padded_image_is_laid_out_channels_last() {
        // Two 3x3 channels padded by 1: tiles cover rows and columns -1..3.
        let g = PooledGeometry {
            h: 3,
            w: 3,
            pad: 1,
            ph: 1,
            pw: 1,
        };
        let x: Vec<f32> = (1..=18).map(|v| v as f32).collect();
        let mut dst = vec![f32::NAN; 32];
        channels_last(&x, g, 2, &mut dst);
        #[rustfmt::skip]
        let expected = [
            0.0, 0.0,  0.0, 0.0,  0.0, 0.0,  0.0, 0.0,
            0.0, 0.0,  1.0, 10.0, 2.0, 11.0, 3.0, 12.0,
            0.0, 0.0,  4.0, 13.0, 5.0, 14.0, 6.0, 15.0,
            0.0, 0.0,  7.0, 16.0, 8.0, 17.0, 9.0, 18.0,
        ];
        assert_eq!(dst, expected);
    }
}
