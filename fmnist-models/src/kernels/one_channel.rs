//! A network's first convolution (one input channel, 3x3, stride 1) followed by 2x2
//! max-pooling and ReLU, computed directly in evaluation.
//!
//! With one input channel the im2col path multiplies a kernel of depth 10 (nine taps and the
//! bias) against an unfolding nine times the size of the image, and then reads the full-size
//! output again to pool it: copies and memory traffic around the GEMM. Here each pooling
//! window is computed where it stands: the 4x4 input patches under a row's windows are
//! gathered once, and for each output channel 16 windows are computed at once, one per vector
//! lane: the four outputs under each as nine multiply-adds (the tap's weight broadcast against
//! the windows' patch values), their maximum, the bias and the ReLU. Nothing is unfolded and
//! no full-size output exists; the multiply-adds are as many as the GEMM's. The sums run in
//! tap order, so they differ from the GEMM's in the last bits (the tests hold the two to 1e-5
//! relative); training keeps the im2col path, whose backward pass needs the unfolding anyway.
use crate::kernels::winograd::{channels_last, PooledGeometry};
use crate::kernels::{first_max, simd, sized};

/// Pooling windows per vector step.
const LANES: usize = 16;

/// A one-channel 3x3 kernel for [`pool_relu_block`]: `taps [O, 9]` (output channel, then tap
/// `ki·3 + kj`) and the bias (zeros without one).
pub(crate) struct OneChannelKernel {
    taps: Vec<f32>,
    bias: Vec<f32>,
}

impl OneChannelKernel {
    /// The kernel matrix `[O, 9 (+1)]` of the im2col path, whose last column, with
    /// `has_bias`, is the bias.
    pub(crate) fn new(kernel: &[f32], has_bias: bool) -> Self {
        let row = 9 + usize::from(has_bias);
        let outputs = kernel.len() / row;
        let mut taps = vec![0f32; 9 * outputs];
        let mut bias = vec![0f32; outputs];
        for (o, k) in kernel.chunks_exact(row).enumerate() {
            for (t, &value) in k[..9].iter().enumerate() {
                taps[o * 9 + t] = value;
            }
            if has_bias {
                bias[o] = k[9];
            }
        }
        OneChannelKernel { taps, bias }
    }

    fn outputs(&self) -> usize {
        self.bias.len()
    }
}

/// A thread's scratch for [`pool_relu_block`], kept from call to call: an image's zero-padded
/// plane and its windows' patches, [`LANES`] windows of a row per group.
#[derive(Default)]
pub(crate) struct OneChannelScratch {
    padded: Vec<f32>,
    patches: Vec<Patches>,
}

/// `[r·4 + c][l]`: input `(2i + r, 2(j0 + l) + c)` of the 4x4 patch under window `(i, j0 + l)`.
type Patches = [[f32; LANES]; 16];

/// The convolution of the one-channel images `x [b, 1, H, W]` with `kernel`, 2x2 max-pooled,
/// plus the bias, through ReLU, into `out [b, O, ph, pw]`.
pub(crate) fn pool_relu_block(
    kernel: &OneChannelKernel,
    x: &[f32],
    g: PooledGeometry,
    scratch: &mut OneChannelScratch,
    out: &mut [f32],
) {
    let (side_h, side_w) = g.padded();
    let padded = sized(&mut scratch.padded, side_h * side_w);
    let groups = g.ph * g.pw.div_ceil(LANES);
    if scratch.patches.len() < groups {
        scratch.patches.resize(groups, [[0.0; LANES]; 16]);
    }
    let patches = &mut scratch.patches[..groups];
    let o = kernel.outputs();
    for (image, out) in x
        .chunks_exact(g.h * g.w)
        .zip(out.chunks_exact_mut(o * g.ph * g.pw))
    {
        channels_last(image, g, 1, padded);
        simd(
            #[inline(always)]
            || pool_relu_image(kernel, padded, g, patches, out),
        );
    }
}

/// One image of [`pool_relu_block`], from its zero-padded plane `padded [2·ph + 2, 2·pw + 2]`:
/// every window's patch gathered once ([`Patches`]), then each output channel's rows of
/// windows, [`LANES`] at a time. Each group's values are stored as one whole vector where the
/// image's output has room for it; the lanes past a row's end land on the windows that come
/// next in the output (the next row of the channel, or the next channel's first), which are
/// written after them.
#[inline(always)]
fn pool_relu_image(
    kernel: &OneChannelKernel,
    padded: &[f32],
    g: PooledGeometry,
    patches: &mut [Patches],
    out: &mut [f32],
) {
    let (_, side_w) = g.padded();
    let starts = (0..g.ph).flat_map(|i| (0..g.pw).step_by(LANES).map(move |j0| (i, j0)));
    for (patch, (i, j0)) in patches.iter_mut().zip(starts.clone()) {
        let n = LANES.min(g.pw - j0);
        for (rc, lanes) in patch.iter_mut().enumerate() {
            let line = &padded[(2 * i + rc / 4) * side_w + 2 * j0 + rc % 4..];
            for (l, value) in lanes.iter_mut().take(n).enumerate() {
                *value = line[2 * l];
            }
        }
    }
    let windows = g.ph * g.pw;
    for o in 0..kernel.outputs() {
        for (patch, (i, j0)) in patches.iter().zip(starts.clone()) {
            let values = windows_of_channel(patch, kernel, o);
            let at = o * windows + i * g.pw + j0;
            match out.get_mut(at..at + LANES) {
                Some(dst) => dst.copy_from_slice(&values),
                None => {
                    let n = LANES.min(g.pw - j0);
                    out[at..at + n].copy_from_slice(&values[..n]);
                }
            }
        }
    }
}

/// For output channel `o`, [`LANES`] adjacent pooling windows of one row at once: ReLU of the
/// bias plus the maximum of the four outputs under each, from their 4x4 patches `patch[r·4 +
/// c][l]` (window `l`).
#[inline(always)]
fn windows_of_channel(
    patch: &[[f32; LANES]; 16],
    kernel: &OneChannelKernel,
    o: usize,
) -> [f32; LANES] {
    let taps: &[f32; 9] = kernel.taps[o * 9..][..9].try_into().expect("3x3");
    let bias = kernel.bias[o];
    let mut out = [0f32; LANES];
    // One loop over the windows, each step a whole window: the loop vectorizes across them.
    for l in 0..LANES {
        // Output (dy, dx) of the window, tap (ki, kj), reads patch[(dy + ki)·4 + dx + kj].
        let output = |corner: usize| {
            (0..9).fold(0f32, |sum, t| {
                taps[t].mul_add(patch[corner + (t / 3) * 4 + t % 3][l], sum)
            })
        };
        let (_, max) = first_max(output(0), output(1), output(4), output(5));
        out[l] = (max + bias).max(0.0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_of_small_integers_comes_out_exact() {
        // A 4x4 image, no padding: one 2x2 window over outputs (0,0), (0,1), (1,0), (1,1).
        // Integers are exact in f32, so the window's value is its largest 3x3 sum exactly.
        let image: Vec<f32> = (0..16).map(|i| ((i * 5) % 7) as f32 - 3.0).collect();
        let g = [1.0, -1.0, 2.0, 0.0, 1.0, -2.0, 1.0, 1.0, 0.0];
        // Two output channels: the kernel and its negation, bias 0.5 and -30 (ReLU stops it).
        let mut kernel: Vec<f32> = g.to_vec();
        kernel.push(0.5);
        kernel.extend(g.iter().map(|v| -v));
        kernel.push(-30.0);
        let kernel = OneChannelKernel::new(&kernel, true);
        let geometry = PooledGeometry {
            h: 4,
            w: 4,
            pad: 0,
            ph: 1,
            pw: 1,
        };
        let mut out = vec![f32::NAN; 2];
        pool_relu_block(
            &kernel,
            &image,
            geometry,
            &mut OneChannelScratch::default(),
            &mut out,
        );
        let sum = |y: usize, x: usize| -> f32 {
            (0..9)
                .map(|t| g[t] * image[(y + t / 3) * 4 + x + t % 3])
                .sum()
        };
        let outputs = [sum(0, 0), sum(0, 1), sum(1, 0), sum(1, 1)];
        let max = outputs.iter().copied().fold(f32::MIN, f32::max);
        assert_eq!(out[0], (max + 0.5).max(0.0));
        assert_eq!(out[1], 0.0);
        assert!(out[0] > 0.0, "the test should exercise a positive output");
    }
}
