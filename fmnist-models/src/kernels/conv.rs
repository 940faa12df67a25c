//! 2-D convolution layer whose CPU path is im2col + GEMM, forward and backward, in blocks.
//!
//! candle 0.11 computes a convolution's input gradient with `conv_transpose2d`, a direct loop
//! that is the slowest op of a CNN training step on the CPU, and computes it even for the
//! network's input, which needs none; its kernel gradient is a convolution with the batch as
//! channels. Here the convolution is `W[O, C·k·k] × cols[C·k·k, L]` per image, with `cols`
//! the unfolded input (`L` output positions), and both gradients are GEMMs too; the fold back
//! to the input runs only when the input needs a gradient. The whole convolution is one
//! operation (`BlockedConv`) that runs in blocks of a few images, one thread per block from
//! unfolding to output (and back), in scratch buffers each thread keeps, so the working set
//! stays in cache and a step neither allocates nor zeroes anything the size of the batch's
//! unfolding. Where 2x2 max-pooling and ReLU follow ([`Conv2d::forward_pool_relu_t`]), they run
//! inside it, so that no full-size activation or gradient becomes a tensor.
use std::sync::Mutex;

use candle::{CpuStorage, CustomOp2, Layout, Module, Shape, Tensor};
use rayon::prelude::*;

use crate::kernels::one_channel::{self, OneChannelKernel, OneChannelScratch};
use crate::kernels::winograd::{self, PooledGeometry, TransformedKernel, WinogradScratch};
use crate::kernels::{
    blocks_of, f32_slice, first_max, gemm_into, gemm_strided, output_buffer, pool_relu, simd,
    sized, sum_blocks, transpose, Kernels, MaxPool2, Strided,
};

/// A convolution (groups 1, dilation 1) holding candle-nn's layer for its weights.
#[derive(Debug, Clone)]
pub struct Conv2d {
    inner: candle_nn::Conv2d,
    kernels: Kernels,
}

impl Conv2d {
    pub fn new(inner: candle_nn::Conv2d, kernels: Kernels) -> Self {
        Conv2d { inner, kernels }
    }

    /// The same layer (sharing its weights) running on `kernels`.
    pub fn with_kernels(&self, kernels: Kernels) -> Self {
        Conv2d {
            inner: self.inner.clone(),
            kernels,
        }
    }

    /// The convolution's output. In evaluation (`train` false) it records no graph, and the
    /// fused path keeps nothing for a backward pass.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> candle::Result<Tensor> {
        let layer = self.for_mode(train);
        match layer.blocked(x, Epilogue::None)? {
            Some(y) => Ok(y),
            None => layer.unfused(x),
        }
    }

    /// The convolution where the fused CPU path does not run: the CUDA kernels' convolution
    /// ([`crate::kernels::cuda::conv2d`]) and bias where they run, candle's layer elsewhere.
    fn unfused(&self, x: &Tensor) -> candle::Result<Tensor> {
        #[cfg(feature = "cuda")]
        if self.kernels.fuse_cuda(x) && self.inner.config().groups == 1 {
            let y = self.cuda_conv(x)?;
            return match self.inner.bias() {
                Some(b) => y.broadcast_add(&b.reshape((1, b.elem_count(), 1, 1))?),
                None => Ok(y),
            };
        }
        self.inner.forward(x)
    }

    /// The convolution without its bias on the CUDA kernels.
    #[cfg(feature = "cuda")]
    fn cuda_conv(&self, x: &Tensor) -> candle::Result<Tensor> {
        let c = self.inner.config();
        crate::kernels::cuda::conv2d(x, self.inner.weight(), c.padding, c.stride, c.dilation)
    }

    /// The convolution, 2x2 max-pooling ([`MaxPool2`]) and ReLU (which commute with each
    /// other). On the CPU the three are one operation: the GEMM's output is pooled as it is
    /// read, only the pooled quarter comes out, already batch-major, and the backward pass
    /// scatters the gradient to the maxima and runs the GEMMs without ever holding the
    /// full-size gradient as a tensor (candle's backward would zero and add each one). The
    /// kernel gradient does not depend on the thread count.
    pub fn forward_pool_relu_t(&self, x: &Tensor, train: bool) -> candle::Result<Tensor> {
        let layer = self.for_mode(train);
        #[cfg(feature = "cuda")]
        if let (true, Some(bias)) = (
            layer.kernels.fuse_cuda(x) && layer.inner.config().groups == 1,
            layer.inner.bias(),
        ) {
            return crate::kernels::cuda::bias_pool_relu(&layer.cuda_conv(x)?, bias);
        }
        match layer.blocked(x, Epilogue::PoolRelu)? {
            Some(y) => Ok(y),
            None => layer
                .unfused(x)?
                .apply(&MaxPool2 {
                    kernels: self.kernels,
                })?
                .relu(),
        }
    }

    /// This layer in training, or with its weights detached from the graph in evaluation.
    fn for_mode(&self, train: bool) -> Conv2d {
        if train {
            return self.clone();
        }
        let inner = candle_nn::Conv2d::new(
            self.inner.weight().detach(),
            self.inner.bias().map(Tensor::detach),
            *self.inner.config(),
        );
        Conv2d {
            inner,
            kernels: self.kernels,
        }
    }

    /// The convolution and `epilogue` as one [`BlockedConv`], `None` where candle's path runs.
    fn blocked(&self, x: &Tensor, epilogue: Epilogue) -> candle::Result<Option<Tensor>> {
        match self.blocked_op(x, epilogue)? {
            Some((kernel, op)) => x.contiguous()?.apply_op2(&kernel, op).map(Some),
            None => Ok(None),
        }
    }

    /// The kernel matrix and the [`BlockedConv`] that computes this convolution of `x` and
    /// `epilogue`, `None` where candle's path runs.
    pub(crate) fn blocked_op(
        &self,
        x: &Tensor,
        epilogue: Epilogue,
    ) -> candle::Result<Option<(Tensor, BlockedConv)>> {
        let operands = self
            .im2col_operands(x)?
            .filter(|(_, g)| epilogue == Epilogue::None || (g.out_h >= 2 && g.out_w >= 2));
        let Some((kernel, geometry)) = operands else {
            return Ok(None);
        };
        let op = BlockedConv {
            geometry,
            batch: x.dim(0)?,
            ones_row: self.inner.bias().is_some(),
            epilogue,
            save: x.track_op() || kernel.track_op(),
            saved: Mutex::new(None),
        };
        Ok(Some((kernel, op)))
    }

    /// On the im2col path, the kernel as the GEMM's left matrix `[O, C·k·k (+1)]` (the bias
    /// as its last column) and the unfolding's sizes; `None` where candle's path runs.
    fn im2col_operands(&self, x: &Tensor) -> candle::Result<Option<(Tensor, Geometry)>> {
        let cfg = self.inner.config();
        if !self.kernels.fuse(x) || cfg.groups != 1 || cfg.dilation != 1 {
            return Ok(None);
        }
        let (_, c, h, w) = x.dims4()?;
        let weight = self.inner.weight();
        let (o, c_w, k, k_w) = weight.dims4()?;
        if c != c_w || k != k_w {
            candle::bail!("conv2d: input has {c} channels, kernel {:?}", weight.dims());
        }
        let kernel = weight.reshape((o, c * k * k))?;
        let kernel = match self.inner.bias() {
            // The bias rides in the GEMM as one more kernel column against a row of ones in
            // the unfolding, so its gradient comes out of the same GEMM as the kernel's.
            Some(bias) => Tensor::cat(&[&kernel, &bias.reshape((o, 1))?], 1)?,
            None => kernel,
        };
        let geometry = Geometry::new(c, h, w, k, cfg.stride, cfg.padding)?;
        Ok(Some((kernel, geometry)))
    }
}

impl Module for Conv2d {
    /// The convolution with its graph ([`Conv2d::forward_t`] in training).
    fn forward(&self, x: &Tensor) -> candle::Result<Tensor> {
        self.forward_t(x, true)
    }
}

/// Sizes of one unfolding.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    pad: usize,
    out_h: usize,
    out_w: usize,
    /// The unfolding runs over whole input lines ([`Self::spans_lines`]).
    spans: bool,
}

impl Geometry {
    fn new(
        c: usize,
        h: usize,
        w: usize,
        k: usize,
        stride: usize,
        pad: usize,
    ) -> candle::Result<Self> {
        if h + 2 * pad < k || w + 2 * pad < k || stride == 0 {
            candle::bail!("conv2d: kernel {k} does not fit a {h}x{w} input padded by {pad}");
        }
        let (out_h, out_w) = (
            (h + 2 * pad - k) / stride + 1,
            (w + 2 * pad - k) / stride + 1,
        );
        Ok(Geometry {
            c,
            h,
            w,
            k,
            stride,
            pad,
            out_h,
            out_w,
            spans: stride == 1 && pad == 0 && out_w < w,
        })
    }

    /// The output indices along an axis of input size `n` whose source `o·stride + kk - pad`
    /// for kernel offset `kk` lies inside the input (the others read the zero padding).
    #[inline]
    fn valid(&self, kk: usize, n: usize, out: usize) -> std::ops::Range<usize> {
        let lo = (self.pad.saturating_sub(kk)).div_ceil(self.stride);
        let hi = match (n + self.pad).checked_sub(kk + 1) {
            Some(last) => (last / self.stride + 1).min(out),
            None => 0,
        };
        lo..hi.max(lo)
    }

    /// The input index of output index `o` for kernel offset `kk` (inside [`Self::valid`]).
    #[inline]
    fn source(&self, o: usize, kk: usize) -> usize {
        o * self.stride + kk - self.pad
    }

    /// Rows of the unfolding, one per `(c, ki, kj)`.
    fn rows(&self) -> usize {
        self.c * self.k * self.k
    }

    /// Whether the unfolding runs over whole input lines: a stride-1 convolution without
    /// padding and narrower than its input. Column `j` of an image then stands for output
    /// `(j / w, j % w)` and reads input `j + ki·w + kj`, so each unfolding row of an image is
    /// one contiguous copy of its input plane. The `k - 1` columns at the end of each line
    /// (`j % w >= out_w`) are computed and never read: that costs `w / out_w` more GEMM work
    /// and saves an unfolding made of one short copy per output line.
    fn spans_lines(&self) -> bool {
        self.spans
    }

    /// The same convolution unfolded with one column per output position, never over whole
    /// lines. The backward pass runs on it: its kernel gradient `d_y · colsᵀ` sums over the
    /// columns, and the `gemm` crate cuts that sum into blocks whose bounds depend on its
    /// length, so the unread columns of [`Self::spans_lines`] (zeros in `d_y`) would move
    /// the bounds, group the products differently and change the rounding of the trained
    /// weights. The forward GEMM sums over the kernel rows, which do not change.
    fn compact(self) -> Geometry {
        Geometry {
            spans: false,
            ..self
        }
    }

    /// Distance between two output lines in the GEMM's output columns of an image.
    fn line(&self) -> usize {
        if self.spans_lines() {
            self.w
        } else {
            self.out_w
        }
    }

    /// GEMM columns per image: its output positions, or with [`Self::spans_lines`] every
    /// column up to its last output.
    fn columns(&self) -> usize {
        if self.spans_lines() {
            (self.out_h - 1) * self.w + self.out_w
        } else {
            self.out_h * self.out_w
        }
    }
}

/// The unfolding `cols [C·k·k (+1), b·L]` of `x [b, C, H, W]`, row by row ([`unfold_row`]).
fn unfold_block(g: Geometry, x: &[f32], b: usize, cols: &mut [f32]) {
    let n = b * g.columns();
    for (row, dst) in cols.chunks_exact_mut(n).enumerate() {
        unfold_row(g, x, b, row, dst);
    }
}

/// Row `row` (`(c, ki, kj)`) of the unfolding of `x [b, C, H, W]`, its `b` images' columns
/// ([`Geometry::columns`]) one after the other: every element is written, the padding as
/// zeros, and the row after the `C·k·k` rows is the row of ones.
fn unfold_row(g: Geometry, x: &[f32], b: usize, row: usize, dst: &mut [f32]) {
    if row == g.rows() {
        dst.fill(1.0);
        return;
    }
    let plane = g.h * g.w;
    let l_out = g.columns();
    let (ch, ki, kj) = (row / (g.k * g.k), (row / g.k) % g.k, row % g.k);
    if g.spans_lines() {
        for (img, dst) in dst.chunks_exact_mut(l_out).take(b).enumerate() {
            dst.copy_from_slice(&x[(img * g.c + ch) * plane + ki * g.w + kj..][..l_out]);
        }
        return;
    }
    if g.stride == 1 && g.pad == 0 {
        // Every output reads inside the image: one short copy per output line.
        for (img, dst) in dst.chunks_exact_mut(l_out).take(b).enumerate() {
            let src = &x[(img * g.c + ch) * plane + ki * g.w + kj..];
            for (oy, dst) in dst.chunks_exact_mut(g.out_w).enumerate() {
                copy_short(dst, &src[oy * g.w..][..g.out_w]);
            }
        }
        return;
    }
    let (ys, xs) = (g.valid(ki, g.h, g.out_h), g.valid(kj, g.w, g.out_w));
    if g.stride == 1 && g.out_w == g.w {
        for img in 0..b {
            let src = &x[(img * g.c + ch) * plane..][..plane];
            unfold_same_width(
                g,
                src,
                (ki, kj),
                (&ys, &xs),
                &mut dst[img * l_out..][..l_out],
            );
        }
        return;
    }
    for img in 0..b {
        let src = &x[(img * g.c + ch) * plane..][..plane];
        for (oy, dst) in dst[img * l_out..][..l_out]
            .chunks_exact_mut(g.out_w)
            .enumerate()
        {
            if !ys.contains(&oy) || xs.is_empty() {
                dst.fill(0.0);
                continue;
            }
            let line = &src[g.source(oy, ki) * g.w..][..g.w];
            dst[..xs.start].fill(0.0);
            dst[xs.end..].fill(0.0);
            if g.stride == 1 {
                let from = g.source(xs.start, kj);
                dst[xs.clone()].copy_from_slice(&line[from..from + xs.len()]);
            } else {
                for ox in xs.clone() {
                    dst[ox] = line[g.source(ox, kj)];
                }
            }
        }
    }
}

/// `dst.copy_from_slice(src)` for a slice of a few dozen elements, in vector moves of eight
/// inlined here: a `memcpy` call per output line would cost more than the copy.
#[inline(always)]
fn copy_short(dst: &mut [f32], src: &[f32]) {
    let (mut d, mut s) = (dst.chunks_exact_mut(8), src.chunks_exact(8));
    for (d, s) in (&mut d).zip(&mut s) {
        d.copy_from_slice(s);
    }
    for (d, s) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *d = *s;
    }
}

/// One image's part of [`unfold_row`] for stride 1 and an output as wide as the input (the
/// padding of a "same" convolution): output `(oy, ox)` reads input `(oy + ki - pad, ox + kj -
/// pad)`, so in row-major order the valid outputs read one contiguous stretch of the input,
/// shifted. That stretch is copied at once, then the few outputs whose source wrapped to the
/// next or previous input line (columns outside `xs`) are zeroed, as are the rows outside `ys`.
fn unfold_same_width(
    g: Geometry,
    src: &[f32],
    (ki, kj): (usize, usize),
    (ys, xs): (&std::ops::Range<usize>, &std::ops::Range<usize>),
    dst: &mut [f32],
) {
    let w = g.w;
    if ys.is_empty() || xs.is_empty() {
        dst.fill(0.0);
        return;
    }
    let first = ys.start * w + xs.start;
    let end = (ys.end - 1) * w + xs.end;
    let from = g.source(ys.start, ki) * w + g.source(xs.start, kj);
    dst[first..end].copy_from_slice(&src[from..from + (end - first)]);
    dst[..first].fill(0.0);
    dst[end..].fill(0.0);
    zero_wrapped_columns(w, (ys, xs), dst);
}

/// Zeroes, on the lines `ys` of a plane `w` wide, the columns outside `xs` (where a shifted
/// stretch wrapped to the next or previous line). Column by column, as strided stores: with
/// the padding of a 3x3 kernel there are at most one or two such columns, and a `fill` per
/// line would be a `memset` call for one element or none.
#[inline(always)]
fn zero_wrapped_columns(
    w: usize,
    (ys, xs): (&std::ops::Range<usize>, &std::ops::Range<usize>),
    plane: &mut [f32],
) {
    for x in (0..xs.start).chain(xs.end..w) {
        for oy in ys.clone() {
            plane[oy * w + x] = 0.0;
        }
    }
}

/// Adds the unfolding of `b` images back into `dst [b, C, H, W]` (the adjoint of
/// [`unfold_row`], a col2im): row `(c, ki, kj)` starts at `cols[row · stride]` and holds the
/// images' columns one after the other, one per output position ([`Geometry::compact`]);
/// rows after the `C·k·k` are not read. Where the output is as wide as the input, the columns
/// whose source is padding are zeroed in `cols` first ([`fold_same_width`]). Inlined into the
/// caller's [`simd`].
#[inline(always)]
fn fold_into(g: Geometry, cols: &mut [f32], stride: usize, b: usize, dst: &mut [f32]) {
    debug_assert!(!g.spans_lines());
    let l_out = g.columns();
    let plane = g.h * g.w;
    for (img, dst) in dst.chunks_exact_mut(g.c * plane).take(b).enumerate() {
        for row in 0..g.rows() {
            let (ch, ki, kj) = (row / (g.k * g.k), (row / g.k) % g.k, row % g.k);
            let src = &mut cols[row * stride + img * l_out..][..l_out];
            let dst = &mut dst[ch * plane..][..plane];
            if g.stride == 1 && g.pad == 0 {
                // Every output reads inside the image: one short stretch per output line.
                let dst = &mut dst[ki * g.w + kj..];
                for (oy, src) in src.chunks_exact(g.out_w).enumerate() {
                    let line = &mut dst[oy * g.w..][..g.out_w];
                    for (d, v) in line.iter_mut().zip(src) {
                        *d += v;
                    }
                }
                continue;
            }
            let xs = g.valid(kj, g.w, g.out_w);
            if xs.is_empty() {
                continue;
            }
            if g.stride == 1 && g.out_w == g.w {
                let ys = g.valid(ki, g.h, g.out_h);
                fold_same_width(g, src, (ki, kj), (&ys, &xs), dst);
                continue;
            }
            for oy in g.valid(ki, g.h, g.out_h) {
                let line = &mut dst[g.source(oy, ki) * g.w..][..g.w];
                let src = &src[oy * g.out_w..][..g.out_w];
                if g.stride == 1 {
                    let from = g.source(xs.start, kj);
                    let line = &mut line[from..from + xs.len()];
                    for (d, v) in line.iter_mut().zip(&src[xs.clone()]) {
                        *d += v;
                    }
                } else {
                    for ox in xs.clone() {
                        line[g.source(ox, kj)] += src[ox];
                    }
                }
            }
        }
    }
}

/// One image's part of [`fold_into`] for stride 1 and an output as wide as the input, the
/// adjoint of [`unfold_same_width`]: the valid outputs of row `(ki, kj)` add into one
/// contiguous, shifted stretch of the input plane, so their columns whose source wrapped to
/// the next or previous input line (outside `xs`) are zeroed in `src` and the stretch is added
/// at once. Every input element receives the same sum, in the same order, as line by line:
/// adding the zeros leaves each partial sum as it was.
#[inline(always)]
fn fold_same_width(
    g: Geometry,
    src: &mut [f32],
    (ki, kj): (usize, usize),
    (ys, xs): (&std::ops::Range<usize>, &std::ops::Range<usize>),
    dst: &mut [f32],
) {
    let w = g.w;
    if ys.is_empty() || xs.is_empty() {
        return;
    }
    zero_wrapped_columns(w, (ys, xs), src);
    let first = ys.start * w + xs.start;
    let end = (ys.end - 1) * w + xs.end;
    let from = g.source(ys.start, ki) * w + g.source(xs.start, kj);
    let dst = &mut dst[from..from + (end - first)];
    for (d, v) in dst.iter_mut().zip(&src[first..end]) {
        *d += v;
    }
}

/// Images per block of [`BlockedConv`]: one thread unfolds, multiplies and writes out a whole
/// block, so the unfolding and the GEMM's output stay cache-sized whatever the batch, and
/// nothing the size of the batch's unfolding is ever allocated.
const BLOCK: usize = 8;

/// The offset recorded for a pooling window whose maximum the ReLU stopped (no gradient).
const STOPPED: u8 = u8::MAX;

/// A thread's scratch buffers for [`BlockedConv`], kept from call to call so that a training
/// step neither allocates nor zeroes them: every element a block reads is written first.
#[derive(Default)]
struct Scratch {
    cols: Vec<f32>,
    y: Vec<f32>,
    d_cols: Vec<f32>,
    winograd: WinogradScratch,
    one_channel: OneChannelScratch,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
    /// The blocks' shares of a kernel gradient ([`BlockedConvBackward`]), kept by the thread
    /// that runs the backward pass: each block's GEMM overwrites its share, so the buffer is
    /// neither zeroed nor allocated again from step to step.
    static PARTIALS: std::cell::RefCell<Vec<f32>> = std::cell::RefCell::default();
}

/// [`pool_relu`] that also records, per window, the offset (0..4, row-major) of its first
/// maximum ([`first_max`], branch-free), or [`STOPPED`] where the ReLU stops it.
fn pool_relu_offsets(
    plane: &[f32],
    line: usize,
    (ph, pw): (usize, usize),
    dst: &mut [f32],
    offsets: &mut [u8],
) {
    let rows = dst.chunks_exact_mut(pw).zip(offsets.chunks_exact_mut(pw));
    for (i, (out, offsets)) in rows.take(ph).enumerate() {
        let top = &plane[2 * i * line..][..2 * pw];
        let bottom = &plane[(2 * i + 1) * line..][..2 * pw];
        let windows = top.chunks_exact(2).zip(bottom.chunks_exact(2));
        for ((o, offset), (t, b)) in out.iter_mut().zip(offsets.iter_mut()).zip(windows) {
            let (at, max) = first_max(t[0], t[1], b[0], b[1]);
            *o = max.max(0.0);
            *offset = if max > 0.0 { at as u8 } else { STOPPED };
        }
    }
}

/// The adjoint of [`pool_relu_offsets`]: writes each window's gradient `grad [ph, pw]` at its
/// recorded maximum and zero at its three other places (all four where it was [`STOPPED`]),
/// in a plane whose lines lie `line` apart. Places outside every window are left alone.
pub(crate) fn to_maxima(
    grad: &[f32],
    offsets: &[u8],
    line: usize,
    (ph, pw): (usize, usize),
    plane: &mut [f32],
) {
    let rows = grad.chunks_exact(pw).zip(offsets.chunks_exact(pw));
    for (i, (grad, offsets)) in rows.take(ph).enumerate() {
        let (top, bottom) = plane[2 * i * line..].split_at_mut(line);
        let (top, bottom) = (&mut top[..2 * pw], &mut bottom[..2 * pw]);
        let windows = top.chunks_exact_mut(2).zip(bottom.chunks_exact_mut(2));
        for ((&g, &at), (t, b)) in grad.iter().zip(offsets).zip(windows) {
            let pick = |place: u8| if at == place { g } else { 0.0 };
            (t[0], t[1], b[0], b[1]) = (pick(0), pick(1), pick(2), pick(3));
        }
    }
}

/// What [`BlockedConv`] does to the convolution's output before writing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Epilogue {
    /// Nothing: the output is the convolution's, `[B, O, H_out, W_out]`.
    None,
    /// 2x2 max-pooling and ReLU: `[B, O, H_out/2, W_out/2]`.
    PoolRelu,
}

/// The convolution of `x [B, C, H, W]` with the kernel matrix `[O, C·k·k (+1)]`, then its
/// [`Epilogue`], batch-major. Blocks of [`BLOCK`] images run in parallel. With pooling, the
/// backward pass keeps only the offset of each window's maximum, and every backward pass
/// unfolds the input again, which costs less than keeping the batch's unfolding (`C·k·k`
/// times the input) in memory.
pub(crate) struct BlockedConv {
    geometry: Geometry,
    batch: usize,
    ones_row: bool,
    epilogue: Epilogue,
    /// Record the pooling's maxima (a backward pass may follow).
    save: bool,
    saved: Mutex<Option<Vec<u8>>>,
}

impl BlockedConv {
    /// Height and width of an output plane.
    pub(crate) fn output_size(&self) -> (usize, usize) {
        let g = self.geometry;
        match self.epilogue {
            Epilogue::None => (g.out_h, g.out_w),
            Epilogue::PoolRelu => (g.out_h / 2, g.out_w / 2),
        }
    }

    fn kernel_rows(&self) -> usize {
        self.geometry.rows() + usize::from(self.ones_row)
    }

    /// Whether the forward pass runs through Winograd's F(2x2, 3x3) ([`crate::kernels::winograd`]): a 3x3,
    /// stride-1 convolution (padded by at most 1) of enough channels into pooling and ReLU,
    /// with no maxima to keep for a backward pass.
    fn winograd(&self, keep: bool) -> bool {
        let g = self.geometry;
        !keep
            && self.epilogue == Epilogue::PoolRelu
            && (g.k, g.stride) == (3, 1)
            && g.pad <= 1
            && g.c >= winograd::MIN_CHANNELS
    }

    /// Whether the forward pass runs through [`crate::kernels::one_channel`]: a network's first
    /// convolution (one input channel, 3x3, stride 1, padded by at most 1) into pooling and
    /// ReLU, with no maxima to keep for a backward pass.
    fn one_channel(&self, keep: bool) -> bool {
        let g = self.geometry;
        !keep
            && self.epilogue == Epilogue::PoolRelu
            && (g.c, g.k, g.stride) == (1, 3, 1)
            && g.pad <= 1
    }

    /// The pooled output `[B, O, H', W']` of an evaluation path without unfolding, in blocks
    /// of [`BLOCK`] images: [`winograd::pool_relu_block`], or [`one_channel::pool_relu_block`]
    /// for one input channel.
    fn forward_pooled(&self, x: &[f32], kernel: &[f32]) -> Vec<f32> {
        let g = self.geometry;
        enum Path {
            Winograd(TransformedKernel),
            OneChannel(OneChannelKernel),
        }
        let path = if g.c == 1 {
            Path::OneChannel(OneChannelKernel::new(kernel, self.ones_row))
        } else {
            Path::Winograd(TransformedKernel::new(kernel, g.c, self.ones_row))
        };
        let (ph, pw) = self.output_size();
        let pooled = PooledGeometry {
            h: g.h,
            w: g.w,
            pad: g.pad,
            ph,
            pw,
        };
        let o = kernel.len() / self.kernel_rows();
        let (image, outputs) = (g.c * g.h * g.w, o * ph * pw);
        let mut out = output_buffer(self.batch * outputs);
        out.par_chunks_mut(BLOCK * outputs)
            .enumerate()
            .for_each(|(blk, out)| {
                let x = &x[blk * BLOCK * image..][..out.len() / outputs * image];
                SCRATCH.with_borrow_mut(|s| match &path {
                    Path::Winograd(k) => {
                        winograd::pool_relu_block(k, x, pooled, &mut s.winograd, out)
                    }
                    Path::OneChannel(k) => {
                        one_channel::pool_relu_block(k, x, pooled, &mut s.one_channel, out)
                    }
                })
            });
        out
    }

    /// The output `[B, O, H', W']` and, if `keep` (pooling only), per output the offset
    /// (0..4, row-major in its window) of its window's maximum, or [`STOPPED`].
    fn forward(&self, x: &[f32], kernel: &[f32], keep: bool) -> (Vec<f32>, Option<Vec<u8>>) {
        if self.winograd(keep) || self.one_channel(keep) {
            return (self.forward_pooled(x, kernel), None);
        }
        let g = self.geometry;
        let r = self.kernel_rows();
        let o = kernel.len() / r;
        let (oh, ow) = self.output_size();
        let (l, image, outputs) = (g.columns(), g.c * g.h * g.w, o * oh * ow);
        let keep = keep && self.epilogue == Epilogue::PoolRelu;
        let mut out = output_buffer(self.batch * outputs);
        let mut argmax = vec![STOPPED; if keep { out.len() } else { 0 }];
        let mut argmax_blocks = blocks_of(&mut argmax, BLOCK * outputs, out.len());
        out.par_chunks_mut(BLOCK * outputs)
            .zip(argmax_blocks.par_iter_mut())
            .enumerate()
            .for_each(|(blk, (out, argmax))| {
                let images = out.len() / outputs;
                let x = &x[blk * BLOCK * image..][..images * image];
                let n = images * l;
                SCRATCH.with_borrow_mut(|s| {
                    let (cols, y) = (sized(&mut s.cols, r * n), sized(&mut s.y, o * n));
                    unfold_block(g, x, images, cols);
                    gemm_into(y, kernel, cols, (o, r, n), false, false);
                    // Output plane `img·O + ch` comes from the GEMM's row `ch`, columns of `img`.
                    for (p, dst) in out.chunks_exact_mut(oh * ow).enumerate() {
                        let (img, ch) = (p / o, p % o);
                        let plane = &y[ch * n + img * l..][..l];
                        if self.epilogue == Epilogue::None {
                            if g.spans_lines() {
                                for (oy, dst) in dst.chunks_exact_mut(ow).enumerate() {
                                    dst.copy_from_slice(&plane[oy * g.line()..][..ow]);
                                }
                            } else {
                                dst.copy_from_slice(plane);
                            }
                            continue;
                        }
                        let Some(argmax) = argmax.as_deref_mut() else {
                            simd(
                                #[inline(always)]
                                || pool_relu(plane, g.line(), oh, ow, dst),
                            );
                            continue;
                        };
                        let argmax = &mut argmax[p * oh * ow..][..oh * ow];
                        pool_relu_offsets(plane, g.line(), (oh, ow), dst, argmax);
                    }
                })
            });
        (out, keep.then_some(argmax))
    }
}

impl CustomOp2 for BlockedConv {
    fn name(&self) -> &'static str {
        "fmnist-blocked-conv"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle::Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = l1.shape().dims4()?;
        let g = self.geometry;
        let (o, r) = l2.shape().dims2()?;
        if (b, c, h, w) != (self.batch, g.c, g.h, g.w) || r != self.kernel_rows() {
            candle::bail!("conv2d: input {:?} does not fit its geometry", l1.dims());
        }
        let x = f32_slice(s1, l1, "conv2d")?;
        let kernel = f32_slice(s2, l2, "conv2d")?;
        let (out, argmax) = self.forward(x, kernel, self.save);
        if let Ok(mut slot) = self.saved.lock() {
            *slot = argmax;
        }
        let (oh, ow) = self.output_size();
        Ok((CpuStorage::F32(out), Shape::from((b, o, oh, ow))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        kernel: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle::Result<(Option<Tensor>, Option<Tensor>)> {
        self.backward(x, kernel, grad_res, None)
    }
}

/// Writes plane `i` of a convolution's output gradient (`[B, O, H', W']` counted plane by
/// plane) into `dst`, given that plane of the tensor handed to the backward pass.
pub(crate) type PlaneGradient<'a> = &'a (dyn Fn(usize, &[f32], &mut [f32]) + Sync);

impl BlockedConv {
    /// The gradients of the input (if it is tracked) and the kernel matrix from `grad_res`,
    /// the gradient of the output, or with `planes` from what it computes out of each plane of
    /// `grad_res` (written straight into the GEMM's layout, never as a tensor of its own).
    pub(crate) fn backward(
        &self,
        x: &Tensor,
        kernel: &Tensor,
        grad_res: &Tensor,
        planes: Option<PlaneGradient>,
    ) -> candle::Result<(Option<Tensor>, Option<Tensor>)> {
        if planes.is_some() && self.epilogue != Epilogue::None {
            candle::bail!("conv2d backward: a plane gradient needs the convolution's own output");
        }
        let input_grad = x.track_op();
        let x = x.detach().contiguous()?;
        let kernel = kernel.detach().contiguous()?;
        let argmax = match self.epilogue {
            Epilogue::None => Vec::new(),
            Epilogue::PoolRelu => match self.saved.lock().ok().and_then(|mut s| s.take()) {
                Some(argmax) => argmax,
                None => self
                    .forward(
                        &x.flatten_all()?.to_vec1::<f32>()?,
                        &kernel.flatten_all()?.to_vec1::<f32>()?,
                        true,
                    )
                    .1
                    .ok_or_else(|| candle::Error::Msg("conv2d: no maxima saved".into()))?,
            },
        };
        let (o, r) = kernel.dims2()?;
        let backward = BlockedConvBackward {
            forward: self,
            argmax,
            kernel_t: kernel.t()?.contiguous()?.flatten_all()?.to_vec1()?,
            input_grad,
            planes,
        };
        let grads = x.apply_op2_no_bwd(&grad_res.contiguous()?, &backward)?;
        let d_kernel = grads.narrow(0, 0, o * r)?.reshape((o, r))?;
        let d_x = if input_grad {
            let d_x = grads.narrow(0, o * r, x.elem_count())?;
            Some(d_x.reshape(x.shape())?)
        } else {
            None
        };
        Ok((d_x, Some(d_kernel)))
    }
}

/// The backward pass of a [`BlockedConv`], applied to its input `x` and the gradient of its
/// output; gives the kernel's gradient `[O·R]` followed, if `input_grad`, by the input's
/// `[B·C·H·W]`, as one vector. Per block: the GEMM output's gradient (with pooling, each
/// pooled gradient at its window's maximum), the block's share of the kernel gradient (summed
/// over the blocks in order, so the result does not depend on the thread count) and the input
/// gradient.
struct BlockedConvBackward<'a> {
    forward: &'a BlockedConv,
    /// The pooling's maxima (empty without pooling).
    argmax: Vec<u8>,
    /// The kernel matrix transposed, `[R, O]`.
    kernel_t: Vec<f32>,
    input_grad: bool,
    /// Computes the output gradient's planes from the tensor handed over (else it is that).
    planes: Option<PlaneGradient<'a>>,
}

impl BlockedConvBackward<'_> {
    /// The gradient of the GEMM's output `d_y [O, n]` for `images` images from the gradient
    /// of theirs `grad`, whose first plane is the batch's plane `first` (and, with pooling,
    /// their maxima `argmax`).
    fn output_gradient(
        &self,
        d_y: &mut [f32],
        (grad, first): (&[f32], usize),
        argmax: &[u8],
        images: usize,
    ) {
        let f = self.forward;
        let g = f.geometry.compact();
        let (l, n) = (g.columns(), images * g.columns());
        let o = d_y.len() / n;
        let (oh, ow) = f.output_size();
        // Without pooling, each output plane is one stretch of the GEMM's columns
        // ([`Geometry::compact`]).
        if f.epilogue == Epilogue::None {
            for (p, grad) in grad.chunks_exact(l).take(images * o).enumerate() {
                let (img, ch) = (p / o, p % o);
                let dst = &mut d_y[ch * n + img * l..][..l];
                match self.planes {
                    Some(planes) => planes(first + p, grad, dst),
                    None => dst.copy_from_slice(grad),
                }
            }
            return;
        }
        // Places outside every pooling window's maximum stay zero.
        d_y.fill(0.0);
        for p in 0..images * o {
            let (img, ch) = (p / o, p % o);
            let plane = &mut d_y[ch * n + img * l..][..l];
            let at = p * oh * ow..(p + 1) * oh * ow;
            to_maxima(&grad[at.clone()], &argmax[at], g.line(), (oh, ow), plane);
        }
    }
}

impl CustomOp2 for BlockedConvBackward<'_> {
    fn name(&self) -> &'static str {
        "fmnist-blocked-conv-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle::Result<(CpuStorage, Shape)> {
        let f = self.forward;
        let g = f.geometry.compact();
        let x = f32_slice(s1, l1, "conv2d backward")?;
        let grad = f32_slice(s2, l2, "conv2d backward")?;
        let r = f.kernel_rows();
        let o = self.kernel_t.len() / r;
        let (oh, ow) = f.output_size();
        let (l, image, outputs) = (g.columns(), g.c * g.h * g.w, o * oh * ow);
        if grad.len() != f.batch * outputs || x.len() != f.batch * image {
            candle::bail!("conv2d backward: gradient {:?}", l2.dims());
        }
        let blocks = f.batch.div_ceil(BLOCK);
        let mut grads = output_buffer(o * r + if self.input_grad { x.len() } else { 0 });
        let (d_kernel, d_x) = grads.split_at_mut(o * r);
        let mut d_x_blocks = blocks_of(d_x, BLOCK * image, f.batch * image);
        // Both operands of the kernel gradient `d_y [O, n] · colsᵀ` run along the positions
        // `n`, so the GEMM packs one of them transposed, an element at a time: the smaller,
        // `d_y`, when there are fewer output channels than kernel rows (then the blocks' sums
        // are `[R, O]`, transposed at the end). Every element is the same sum of the same
        // products in the same order either way, so the bits do not change.
        let kernel_gradient_transposed = o < r;
        let mut run = |partials: &mut [f32]| {
            partials
                .par_chunks_mut(o * r)
                .zip(d_x_blocks.par_iter_mut())
                .enumerate()
                .for_each(|(blk, (d_kernel, d_x))| {
                    let images = BLOCK.min(f.batch - blk * BLOCK);
                    let n = images * l;
                    let first = blk * BLOCK * outputs;
                    let argmax = self.argmax.get(first..).unwrap_or_default();
                    let x = &x[blk * BLOCK * image..][..images * image];
                    SCRATCH.with_borrow_mut(|s| {
                        let d_y = sized(&mut s.y, o * n);
                        let planes = (&grad[first..], first / (oh * ow));
                        self.output_gradient(d_y, planes, argmax, images);
                        let cols = sized(&mut s.cols, r * n);
                        unfold_block(g, x, images, cols);
                        if kernel_gradient_transposed {
                            let (cols, d_y) =
                                (Strided::dense(cols, n), Strided::transposed(d_y, n));
                            gemm_strided(d_kernel, o, cols, d_y, (r, n, o), false);
                        } else {
                            gemm_into(d_kernel, d_y, cols, (o, n, r), true, false);
                        }
                        if let Some(d_x) = d_x {
                            d_x.fill(0.0);
                            let rows = g.rows();
                            let d_cols = sized(&mut s.d_cols, rows * n);
                            let kernel_t = &self.kernel_t[..rows * o];
                            gemm_into(d_cols, kernel_t, d_y, (rows, o, n), false, false);
                            simd(
                                #[inline(always)]
                                || fold_into(g, d_cols, n, images, d_x),
                            );
                        }
                    })
                });
            if kernel_gradient_transposed {
                let mut d_kernel_t = vec![0f32; o * r];
                sum_blocks(&mut d_kernel_t, partials);
                d_kernel.copy_from_slice(&transpose(&d_kernel_t, o));
            } else {
                sum_blocks(d_kernel, partials);
            }
        };
        PARTIALS.with(|kept| match kept.try_borrow_mut() {
            Ok(mut kept) => run(sized(&mut kept, blocks * o * r)),
            // A backward pass nested in another on this thread gets a buffer of its own.
            Err(_) => run(&mut vec![0f32; blocks * o * r]),
        });
        let len = grads.len();
        Ok((CpuStorage::F32(grads), Shape::from(len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle::{Device, Var};
    use candle_nn::Conv2dConfig;

    /// Output and the gradients of input, kernel and bias agree between the two paths.
    fn agree(
        cfg: Conv2dConfig,
        shape: (usize, usize, usize, usize),
        out: usize,
        k: usize,
        with_bias: bool,
    ) {
        let dev = Device::Cpu;
        let x = Var::randn(0f32, 1.0, shape, &dev).unwrap();
        let w = Var::randn(0f32, 0.3, (out, shape.1, k, k), &dev).unwrap();
        let bias = Var::randn(0f32, 0.3, out, &dev).unwrap();
        let conv = Conv2d::new(
            candle_nn::Conv2d::new(
                w.as_tensor().clone(),
                with_bias.then(|| bias.as_tensor().clone()),
                cfg,
            ),
            Kernels::Generic,
        );
        let reference = conv.forward_t(x.as_tensor(), true).unwrap();
        let pooled = reference.dims4().unwrap();
        let outputs =
            reference.elem_count() + pooled.0 * pooled.1 * (pooled.2 / 2) * (pooled.3 / 2);
        let up = Tensor::randn(0f32, 1.0, outputs, &dev).unwrap();
        let grads_of = |k: Kernels| {
            let conv = conv.with_kernels(k);
            let y = conv.forward_t(x.as_tensor(), true).unwrap();
            let pooled = conv.forward_pool_relu_t(x.as_tensor(), true).unwrap();
            let y = Tensor::cat(
                &[y.flatten_all().unwrap(), pooled.flatten_all().unwrap()],
                0,
            )
            .unwrap();
            let g = (&y * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let mut all = vec![flat(&y)];
            for v in [&x, &w, &bias] {
                if let Some(grad) = g.get(v.as_tensor()) {
                    all.push(flat(grad));
                }
            }
            all
        };
        let (fused, generic) = (grads_of(Kernels::Fused), grads_of(Kernels::Generic));
        assert_eq!(fused.len(), 3 + usize::from(with_bias));
        assert_eq!(fused.len(), generic.len());
        for (what, (a, b)) in ["output", "dx", "dw", "db"]
            .iter()
            .zip(fused.iter().zip(&generic))
        {
            assert_eq!(a.len(), b.len(), "{what}");
            // Relative error of the whole tensor: the two paths sum in different orders.
            let diff: f32 = a.iter().zip(b).map(|(p, q)| (p - q).powi(2)).sum();
            let norm: f32 = b.iter().map(|q| q * q).sum();
            let rel = (diff / norm.max(f32::MIN_POSITIVE)).sqrt();
            assert!(
                rel <= 1e-5,
                "{cfg:?} {shape:?} {what}: relative error {rel}"
            );
        }
    }

    fn flat(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn untracked_forward_in_blocks_agrees_with_candle() {
        // 70 images: eight full blocks and a partial one; no gradient is tracked, so no maxima
        // are recorded. "Same" padding (9x9 out) and none (7x7 out, the GEMM over whole lines).
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (70, 3, 9, 9), &dev).unwrap();
        let w = Tensor::randn(0f32, 0.3, (5, 3, 3, 3), &dev).unwrap();
        let bias = Tensor::randn(0f32, 0.3, 5, &dev).unwrap();
        for (padding, side) in [(1, 9), (0, 7)] {
            let cfg = Conv2dConfig {
                padding,
                ..Default::default()
            };
            let inner = candle_nn::Conv2d::new(w.clone(), Some(bias.clone()), cfg);
            let conv = Conv2d::new(inner, Kernels::Fused);
            let pooled = |k| flat(&conv.with_kernels(k).forward_pool_relu_t(&x, true).unwrap());
            let plain = |k| flat(&conv.with_kernels(k).forward_t(&x, true).unwrap());
            let half = side / 2;
            for (fused, generic, len) in [
                (
                    pooled(Kernels::Fused),
                    pooled(Kernels::Generic),
                    70 * 5 * half * half,
                ),
                (
                    plain(Kernels::Fused),
                    plain(Kernels::Generic),
                    70 * 5 * side * side,
                ),
            ] {
                assert_eq!(fused.len(), len);
                assert_eq!(generic.len(), len);
                for (a, b) in fused.iter().zip(&generic) {
                    assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{a} vs {b}");
                }
            }
        }
    }

    /// The pooled evaluation path `takes_path` picks (recording no maxima) against the
    /// im2col path that records them, for a `c`-channel 3x3 convolution of `side`x`side`
    /// images padded by `pad` into `o` channels: the same values to 1e-5 relative. 19 images
    /// are two full blocks and a partial one.
    fn evaluation_path_agrees(
        (c, side, pad, o, bias): (usize, usize, usize, usize, bool),
        takes_path: fn(&BlockedConv, bool) -> bool,
    ) {
        let dev = Device::Cpu;
        let g = Geometry::new(c, side, side, 3, 1, pad).unwrap();
        let op = BlockedConv {
            geometry: g,
            batch: 2 * BLOCK + 3,
            ones_row: bias,
            epilogue: Epilogue::PoolRelu,
            save: false,
            saved: Mutex::new(None),
        };
        assert!(takes_path(&op, false) && !takes_path(&op, true));
        assert!(
            op.winograd(false) != op.one_channel(false),
            "{g:?}: one path"
        );
        let x = flat(&Tensor::randn(0f32, 1.0, (op.batch, c, side, side), &dev).unwrap());
        let kernel = flat(&Tensor::randn(0f32, 0.3, o * op.kernel_rows(), &dev).unwrap());
        let (im2col, maxima) = op.forward(&x, &kernel, true);
        let (pooled, none) = op.forward(&x, &kernel, false);
        assert!(maxima.is_some() && none.is_none());
        let (ph, pw) = op.output_size();
        assert_eq!(pooled.len(), op.batch * o * ph * pw);
        assert_eq!(pooled.len(), im2col.len());
        for (a, b) in pooled.iter().zip(&im2col) {
            assert!(
                (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                "{g:?}: {a} vs {b}"
            );
        }
        assert!(pooled.iter().any(|&v| v > 0.0) && pooled.contains(&0.0));
    }

    #[test]
    fn winograd_pooling_agrees_with_the_im2col_path() {
        // Unpadded odd (13x13: the pooling drops the last output line) and even (12x12)
        // planes, padded odd and even ones, with and without bias; channels below, at and
        // past a vector's 16 on both sides of the GEMMs.
        for case in [
            (8, 13, 0, 6, true),
            (9, 12, 0, 16, false),
            (20, 7, 1, 5, true),
            (16, 14, 1, 33, true),
        ] {
            evaluation_path_agrees(case, BlockedConv::winograd);
        }
    }

    #[test]
    fn one_channel_pooling_agrees_with_the_im2col_path() {
        // The first convolutions of `cnn` (28x28, unpadded) and `cnn-wide` (padded), an odd
        // plane whose last output line the pooling drops, a plane whose rows of windows span
        // two vectors (20 windows), output channels below, at and past a vector's 16, with and
        // without bias.
        for case in [
            (1, 28, 0, 32, true),
            (1, 28, 1, 32, true),
            (1, 13, 0, 6, false),
            (1, 40, 1, 17, true),
        ] {
            evaluation_path_agrees(case, BlockedConv::one_channel);
        }
    }

    #[test]
    fn evaluation_records_no_graph_on_either_path() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (3, 2, 8, 8), &dev).unwrap();
        let w = Var::randn(0f32, 0.3, (4, 2, 3, 3), &dev).unwrap();
        let bias = Var::randn(0f32, 0.3, 4, &dev).unwrap();
        let cfg = Conv2dConfig::default();
        let inner =
            candle_nn::Conv2d::new(w.as_tensor().clone(), Some(bias.as_tensor().clone()), cfg);
        for k in [Kernels::Fused, Kernels::Generic] {
            let conv = Conv2d::new(inner.clone(), k);
            assert!(conv.forward_t(&x, true).unwrap().track_op(), "{k:?}");
            assert!(!conv.forward_t(&x, false).unwrap().track_op(), "{k:?}");
            assert!(
                conv.forward_pool_relu_t(&x, true).unwrap().track_op(),
                "{k:?}"
            );
            let pooled = conv.forward_pool_relu_t(&x, false).unwrap();
            assert!(!pooled.track_op(), "{k:?}");
            assert_eq!(pooled.dims(), [3, 4, 3, 3], "{k:?}");
        }
    }

    #[test]
    fn im2col_path_agrees_with_candle_forward_and_all_gradients() {
        let valid = Conv2dConfig::default();
        let pad1 = Conv2dConfig {
            padding: 1,
            ..valid
        };
        let stride2 = Conv2dConfig {
            padding: 1,
            stride: 2,
            ..valid
        };
        agree(valid, (3, 1, 28, 28), 8, 3, true);
        agree(valid, (2, 5, 13, 13), 6, 3, true);
        agree(pad1, (2, 4, 7, 7), 5, 3, false);
        // Two full blocks and a partial one, each with its share of the kernel gradient.
        agree(pad1, (2 * BLOCK + 3, 3, 9, 9), 5, 3, true);
        agree(stride2, (2, 3, 14, 14), 4, 3, false);
        agree(stride2, (1, 2, 7, 7), 3, 3, true);
        let one_by_one = Conv2dConfig { stride: 2, ..valid };
        agree(one_by_one, (2, 4, 14, 14), 6, 1, false);
    }

    #[test]
    fn pooling_records_the_first_maximum_and_sends_its_gradient_there() {
        // 2x3 windows of a 5x7 plane whose lines lie 8 apart: maxima at every offset, a tie
        // (the first wins), one window stopped by the ReLU; line 4 and column 6 are in none.
        #[rustfmt::skip]
        let plane = [
            1.0, 0.0, -3.0, -1.0, 0.0, 2.0, 9.0, 9.0,
            0.5, 1.0, -2.0, -4.0, 7.0, 3.0, 9.0, 9.0,
            3.0, 4.0, 4.0, 1.0, 2.0, 2.0, 9.0, 9.0,
            -1.0, 3.0, 3.0, 5.0, 2.0, 1.0, 9.0, 9.0,
            9.0, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0,
        ];
        let (mut pooled, mut offsets) = ([f32::NAN; 6], [0u8; 6]);
        pool_relu_offsets(&plane, 8, (2, 3), &mut pooled, &mut offsets);
        assert_eq!(pooled, [1.0, 0.0, 7.0, 4.0, 5.0, 2.0]);
        assert_eq!(offsets, [0, STOPPED, 2, 1, 3, 0]);
        let grad = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let mut d_plane = [f32::NAN; 40];
        to_maxima(&grad, &offsets, 8, (2, 3), &mut d_plane);
        #[rustfmt::skip]
        let expect = [
            1.0, 0.0, 0.0, 0.0, 0.0, 0.0,
            0.0, 0.0, 0.0, 0.0, 3.0, 0.0,
            0.0, 4.0, 0.0, 0.0, 6.0, 0.0,
            0.0, 0.0, 0.0, 5.0, 0.0, 0.0,
        ];
        for (row, expect) in expect.chunks(6).enumerate() {
            assert_eq!(&d_plane[row * 8..][..6], expect, "line {row}");
            assert!(d_plane[row * 8 + 6..][..2].iter().all(|v| v.is_nan()));
        }
        assert!(d_plane[32..].iter().all(|v| v.is_nan()));
    }

    #[test]
    fn unfolding_a_known_image() {
        // A 3x3 image under a 2x2 kernel: rows (ki, kj), columns (oy, ox) over whole input
        // lines, (0, 0) (0, 1) (0, 2) (1, 0) (1, 1), where output (0, 2) is never read.
        let x: Vec<f32> = (0..9).map(|v| v as f32).collect();
        let g = Geometry::new(1, 3, 3, 2, 1, 0).unwrap();
        assert!(g.spans_lines());
        let mut cols = vec![f32::NAN; 5 * 5];
        unfold_block(g, &x, 1, &mut cols);
        assert_eq!(
            cols,
            vec![
                0., 1., 2., 3., 4., // (0, 0)
                1., 2., 3., 4., 5., // (0, 1)
                3., 4., 5., 6., 7., // (1, 0)
                4., 5., 6., 7., 8., // (1, 1)
                1., 1., 1., 1., 1., // the row of ones
            ]
        );
        // The backward pass unfolds one column per output position, and folding ones back
        // counts how many windows cover each pixel.
        let g = g.compact();
        let mut cols = vec![f32::NAN; 5 * 4];
        unfold_block(g, &x, 1, &mut cols);
        assert_eq!(
            cols,
            vec![
                0., 1., 3., 4., // (0, 0)
                1., 2., 4., 5., // (0, 1)
                3., 4., 6., 7., // (1, 0)
                4., 5., 7., 8., // (1, 1)
                1., 1., 1., 1., // the row of ones
            ]
        );
        let mut counts = vec![0f32; 9];
        fold_into(g, &mut [1f32; 4 * 4], 4, 1, &mut counts);
        assert_eq!(counts, vec![1., 2., 1., 2., 4., 2., 1., 2., 1.]);
    }

    /// (c, h, w, k, stride, pad): "same" widths (the contiguous paths), valid and strided
    /// convolutions, kernels wider than the image, non-square images.
    const GEOMETRIES: [(usize, usize, usize, usize, usize, usize); 10] = [
        (2, 5, 5, 3, 1, 1),
        (1, 4, 6, 5, 1, 2),
        (3, 3, 3, 1, 1, 0),
        (1, 2, 2, 5, 1, 2),
        (2, 6, 5, 3, 1, 0),
        (2, 7, 7, 3, 2, 1),
        (1, 5, 4, 3, 1, 1),
        (2, 1, 1, 3, 1, 1),
        (2, 7, 7, 1, 2, 0),
        (1, 8, 7, 3, 3, 1),
    ];

    #[test]
    fn unfolding_matches_its_definition_for_every_geometry() {
        let geometries = GEOMETRIES
            .into_iter()
            .flat_map(|(c, h, w, k, stride, pad)| {
                let g = Geometry::new(c, h, w, k, stride, pad).unwrap();
                [g, g.compact()]
            });
        for g in geometries {
            let (c, h, w, k, stride, pad) = (g.c, g.h, g.w, g.k, g.stride, g.pad);
            let b = 2;
            let x: Vec<f32> = (0..b * c * h * w).map(|v| v as f32 + 1.0).collect();
            let l = g.columns();
            let mut cols = vec![f32::NAN; (g.rows() + 1) * b * l];
            unfold_block(g, &x, b, &mut cols);
            for row in 0..g.rows() {
                let (ch, ki, kj) = (row / (k * k), (row / k) % k, row % k);
                for img in 0..b {
                    for oy in 0..g.out_h {
                        for ox in 0..g.out_w {
                            let (iy, ix) = (
                                (oy * stride + ki) as isize - pad as isize,
                                (ox * stride + kj) as isize - pad as isize,
                            );
                            let inside =
                                (0..h as isize).contains(&iy) && (0..w as isize).contains(&ix);
                            let expect = if inside {
                                x[((img * c + ch) * h + iy as usize) * w + ix as usize]
                            } else {
                                0.0
                            };
                            let got = cols[row * b * l + img * l + oy * g.line() + ox];
                            assert_eq!(
                                got,
                                expect,
                                "{:?} row {row} image {img} ({oy}, {ox})",
                                (c, h, w, k, stride, pad)
                            );
                        }
                    }
                }
            }
            assert!(cols[g.rows() * b * l..].iter().all(|&v| v == 1.0));
            // Columns no output reads (over whole lines) hold input values too: the forward
            // GEMM computes them, and the scratch it reuses must not carry a NaN across.
            assert!(cols.iter().all(|v| v.is_finite()), "{:?}", (c, h, w, k));
        }
    }

    #[test]
    fn folding_matches_its_definition_for_every_geometry() {
        // The adjoint of the unfolding: every column adds into the input element it was read
        // from, and columns that read padding add nothing. Small integers keep the sums exact.
        for (c, h, w, k, stride, pad) in GEOMETRIES {
            let g = Geometry::new(c, h, w, k, stride, pad).unwrap().compact();
            let b = 2;
            let l = g.columns();
            let mut cols: Vec<f32> = (0..g.rows() * b * l)
                .map(|v| ((v * 7) % 11) as f32 - 5.0)
                .collect();
            let mut expect = vec![0f32; b * c * h * w];
            for row in 0..g.rows() {
                let (ch, ki, kj) = (row / (k * k), (row / k) % k, row % k);
                for img in 0..b {
                    for col in 0..l {
                        let (oy, ox) = (col / g.line(), col % g.line());
                        let (iy, ix) = (
                            (oy * stride + ki) as isize - pad as isize,
                            (ox * stride + kj) as isize - pad as isize,
                        );
                        let at = row * b * l + img * l + col;
                        let inside = (0..h as isize).contains(&iy) && (0..w as isize).contains(&ix);
                        if !inside {
                            cols[at] = f32::NAN;
                            continue;
                        }
                        expect[((img * c + ch) * h + iy as usize) * w + ix as usize] += cols[at];
                    }
                }
            }
            let mut folded = vec![0f32; b * c * h * w];
            fold_into(g, &mut cols, b * l, b, &mut folded);
            assert_eq!(folded, expect, "{:?}", (c, h, w, k, stride, pad));
        }
    }

    #[test]
    fn padding_is_written_over_stale_scratch() {
        // One padded row of a 2x2 image under a 3x3 kernel: the scratch holds NaNs before.
        let g = Geometry::new(1, 2, 2, 3, 1, 1).unwrap();
        let mut row = vec![f32::NAN; 4];
        unfold_row(g, &[1., 2., 3., 4.], 1, 0, &mut row); // (ki, kj) = (0, 0)
        assert_eq!(row, vec![0., 0., 0., 1.]);
    }

    #[test]
    fn a_kernel_wider_than_the_image_reads_only_padding_outside_it() {
        // A 1x1 image padded by 2 under a 5x5 kernel: one output, only the centre tap sees it.
        let g = Geometry::new(1, 1, 1, 5, 1, 2).unwrap();
        let mut cols = [f32::NAN; 25];
        unfold_block(g, &[7.], 1, &mut cols);
        let centre = 2 * 5 + 2;
        for (row, v) in cols.iter().enumerate() {
            assert_eq!(*v, if row == centre { 7. } else { 0. }, "row {row}");
        }
        let mut back = [0f32; 1];
        fold_into(g, &mut [1f32; 25], 1, 1, &mut back);
        assert_eq!(back, [1.]);
    }
}
