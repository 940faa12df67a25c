//! BatchNorm over the channels of `[B, C, H, W]`, optionally followed by ReLU, with a fused
//! CPU kernel beside candle-nn's generic layer (which holds the parameters and statistics).
//!
//! candle-nn's training forward transposes and copies the input, then runs about ten
//! broadcast operations, each a pass over the activation with a fresh allocation, and as many
//! again backward. The fused path makes two passes forward (statistics, then the affine map
//! and the ReLU) and two backward (the per-channel sums, then the input gradient), using the
//! closed form `dx = γ/σ · (dy - mean(dy) - x̂·mean(dy·x̂))`. In evaluation the fused path
//! records no graph: nothing is kept for a backward pass that will not come. Where a
//! convolution feeds the layer in training, `conv_norm` runs the two as one operation with
//! these kernels, and where a 2x2 max-pooling follows the ReLU, with that too: the pooled
//! output is computed from the input in one pass, and backward each plane's output and its
//! gradient are rebuilt where a kernel reads them ([`Unpool`]), so neither full-size tensor
//! is ever written.
use std::cell::RefCell;

use candle::{CpuStorage, CustomOp3, Layout, Module, ModuleT, Shape, Tensor, Var};
use candle_nn::BatchNorm;
use rayon::prelude::*;

use crate::kernels::conv::to_maxima;
use crate::kernels::{f32_slice, output_buffer, sized, windows, Kernels};

/// A BatchNorm layer (`candle_nn::BatchNorm` underneath, so checkpoints are unchanged).
#[derive(Debug, Clone)]
pub struct BatchNorm2d {
    inner: BatchNorm,
    kernels: Kernels,
}

impl BatchNorm2d {
    pub fn new(inner: BatchNorm, kernels: Kernels) -> Self {
        BatchNorm2d { inner, kernels }
    }

    /// The same layer (sharing its parameters and statistics) running on `kernels`.
    pub fn with_kernels(&self, kernels: Kernels) -> Self {
        BatchNorm2d {
            inner: self.inner.clone(),
            kernels,
        }
    }

    /// Normalized `x`: batch statistics in training (which also update the running ones),
    /// running statistics in evaluation.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> candle::Result<Tensor> {
        self.normalize(x, train, false)
    }

    /// `relu(forward_t(x, train))` in one pass on the fused path.
    pub fn forward_relu_t(&self, x: &Tensor, train: bool) -> candle::Result<Tensor> {
        self.normalize(x, train, true)
    }

    /// [`BatchNorm2d::forward_t`] followed by ReLU if `relu`.
    fn normalize(&self, x: &Tensor, train: bool, relu: bool) -> candle::Result<Tensor> {
        let Some((gamma, beta, eps)) = self.fused_parameters(x) else {
            let y = self.inner.forward_t(x, train)?;
            return if relu { y.relu() } else { Ok(y) };
        };
        let x = x.contiguous()?;
        let (b, _, h, w) = x.dims4()?;
        if !train {
            let op = Normalize::new(
                self.inner.running_mean().to_vec1::<f32>()?,
                &self.inner.running_var().to_vec1::<f32>()?,
                eps,
                relu,
            );
            return x.apply_op3_no_bwd(&gamma.detach(), &beta.detach(), &op);
        }
        let mut stats = x.apply_op1_no_bwd(&ChannelStats)?.to_vec2::<f32>()?;
        let (var, mean) = (
            stats.pop().unwrap_or_default(),
            stats.pop().unwrap_or_default(),
        );
        let n = b * h * w;
        check_count(n)?;
        self.update_running(&mean, &var, n)?;
        x.apply_op3(&gamma, &beta, Normalize::new(mean, &var, eps, relu))
    }

    /// γ, β and ε where the fused path runs on `x` (which has the layer's channels).
    pub(crate) fn fused_parameters(&self, x: &Tensor) -> Option<(Tensor, Tensor, f32)> {
        let (gamma, beta) = self
            .inner
            .weight_and_bias()
            .filter(|_| self.kernels.fuse(x))?;
        Some((gamma.clone(), beta.clone(), self.inner.eps() as f32))
    }

    /// Moves the running statistics towards a batch's mean and biased variance over `n`
    /// values per channel (the variance made unbiased first, as PyTorch does).
    pub(crate) fn update_running(&self, mean: &[f32], var: &[f32], n: usize) -> candle::Result<()> {
        let n = n as f32;
        let m = self.inner.momentum() as f32;
        let unbiased: Vec<f32> = var.iter().map(|v| v * n / (n - 1.0)).collect();
        for (running, batch) in [
            (self.inner.running_mean(), mean),
            (self.inner.running_var(), &unbiased[..]),
        ] {
            let old = running.to_vec1::<f32>()?;
            let new: Vec<f32> = old
                .iter()
                .zip(batch)
                .map(|(o, v)| (1.0 - m) * o + m * v)
                .collect();
            // The running statistics are Vars: from_tensor shares their storage.
            Var::from_tensor(running)?.set(&Tensor::new(new, running.device())?)?;
        }
        Ok(())
    }
}

/// Training statistics need more than one value per channel.
pub(crate) fn check_count(n: usize) -> candle::Result<()> {
    if n < 2 {
        candle::bail!("batch norm: needs more than one value per channel in training");
    }
    Ok(())
}

impl Module for BatchNorm2d {
    fn forward(&self, x: &Tensor) -> candle::Result<Tensor> {
        self.forward_t(x, false)
    }
}

/// The range of plane `(image, ch)` in a contiguous `[B, C, H, W]` slice.
fn plane_of(image: usize, ch: usize, c: usize, plane: usize) -> std::ops::Range<usize> {
    let start = (image * c + ch) * plane;
    start..start + plane
}

/// Channels whose serial sums run side by side on one thread.
const LANES: usize = 8;

/// `[2, C]` of a pair of values per channel, computed in parallel over groups of [`LANES`]
/// channels. `pairs` gets the group's channels (the last group repeats its last channel where
/// `C` runs out; those lanes' results are dropped).
fn per_channel_pairs(
    c: usize,
    pairs: impl Fn([usize; LANES]) -> [(f64, f64); LANES] + Sync + Send,
) -> (CpuStorage, Shape) {
    let groups: Vec<[(f64, f64); LANES]> = (0..c.div_ceil(LANES))
        .into_par_iter()
        .map(|group| pairs(std::array::from_fn(|j| (group * LANES + j).min(c - 1))))
        .collect();
    let pairs: Vec<(f64, f64)> = groups.into_iter().flatten().take(c).collect();
    let mut out: Vec<f32> = pairs.iter().map(|p| p.0 as f32).collect();
    out.extend(pairs.iter().map(|p| p.1 as f32));
    (CpuStorage::F32(out), Shape::from((2, c)))
}

/// `f(v)` summed over each of [`LANES`] equally long planes, in f64, each lane in its plane's
/// order from the starting value of the standard library's `Sum`: for each plane the bits of
/// `plane.iter().map(|&v| f(v)).sum::<f64>()`, with [`LANES`] independent chains of additions
/// in flight instead of one, so the adds' latency is hidden.
#[inline(always)]
fn plane_sums(planes: [&[f32]; LANES], f: impl Fn(f32, usize) -> f64) -> [f64; LANES] {
    let mut acc = [std::iter::empty::<f64>().sum::<f64>(); LANES];
    let len = planes[0].len();
    let planes = planes.map(|p| &p[..len]);
    for k in 0..len {
        for (j, (acc, plane)) in acc.iter_mut().zip(&planes).enumerate() {
            *acc += f(plane[k], j);
        }
    }
    acc
}

/// Per-channel mean and biased variance of `[B, C, H, W]`, as `[2, C]` (two passes, in f64).
struct ChannelStats;

impl candle::CustomOp1 for ChannelStats {
    fn name(&self) -> &'static str {
        "fmnist-channel-stats"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle::Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = l.shape().dims4()?;
        let x = f32_slice(s, l, "channel stats")?;
        Ok(channel_stats(x, b, c, h * w))
    }
}

/// Per lane, the sum over the `b` images of their planes' sums `image_sums(i)`, from `Sum`'s
/// starting value.
#[inline(always)]
fn channel_sums(b: usize, image_sums: impl Fn(usize) -> [f64; LANES]) -> [f64; LANES] {
    let mut total = [std::iter::empty::<f64>().sum::<f64>(); LANES];
    for i in 0..b {
        for (t, s) in total.iter_mut().zip(image_sums(i)) {
            *t += s;
        }
    }
    total
}

/// The first of a group's channels where the group runs on [`gathered`]: [`LANES`]
/// consecutive channels (not the last group's repeats), on a CPU with AVX2.
fn gathered_group(chs: [usize; LANES], plane: usize) -> Option<usize> {
    let consecutive = chs.iter().enumerate().all(|(j, &ch)| ch == chs[0] + j);
    (consecutive && gathered::fits(plane)).then_some(chs[0])
}

/// [`ChannelStats`] of a contiguous `[b, c, plane]` slice.
pub(crate) fn channel_stats(x: &[f32], b: usize, c: usize, plane: usize) -> (CpuStorage, Shape) {
    let n = (b * plane) as f64;
    per_channel_pairs(c, |chs| {
        let planes = |i: usize| chs.map(|ch| &x[plane_of(i, ch, c, plane)]);
        let start = std::iter::empty::<f64>().sum::<f64>();
        let (mean, sq) = match gathered_group(chs, plane) {
            Some(first) => {
                let block = |i: usize| &x[plane_of(i, first, c, plane).start..][..LANES * plane];
                let sums = |i| gathered::plane_sums(block(i), plane, None, start);
                let mean = channel_sums(b, sums).map(|sum| sum / n);
                let squares = |i| gathered::plane_sums(block(i), plane, Some(mean), start);
                (mean, channel_sums(b, squares))
            }
            None => {
                let sums = |i| plane_sums(planes(i), |v, _| v as f64);
                let mean = channel_sums(b, sums).map(|sum| sum / n);
                let squares = |i| plane_sums(planes(i), |v, j| (v as f64 - mean[j]).powi(2));
                (mean, channel_sums(b, squares))
            }
        };
        std::array::from_fn(|j| (mean[j], sq[j] / n))
    })
}

/// The serial sums of [`LANES`] channels' planes with AVX2 gathers: vector lane `j` reads
/// channel `j`'s plane, so one instruction takes the step of all the lanes' chains, each still
/// in its plane's order and through the same operations as the scalar code (a multiply and an
/// add, never fused), hence to the same bits. A block is the group's planes of one image,
/// `[LANES, plane]`.
#[allow(unsafe_code)]
mod gathered {
    use super::LANES;
    #[cfg(target_arch = "x86_64")]
    use std::arch::x86_64::*;

    /// Whether this CPU runs the gathers on planes of `plane` values (their offsets in i32).
    pub(super) fn fits(plane: usize) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx2") && LANES * plane <= i32::MAX as usize
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = plane;
            false
        }
    }

    /// Per plane of `block [LANES, plane]`, from `start` in f64: the sum of its values, or
    /// with `mean`, of their squared distances to the lane's mean.
    pub(super) fn plane_sums(
        block: &[f32],
        plane: usize,
        mean: Option<[f64; LANES]>,
        start: f64,
    ) -> [f64; LANES] {
        assert!(block.len() == LANES * plane && fits(plane));
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2 (`fits`), and every gathered element lies in `block`.
        unsafe {
            plane_sums_avx2(block, plane, mean, start)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (mean, start);
            unreachable!("no gathers on this architecture")
        }
    }

    /// `Σ dy` and `Σ dy·x̂` in f32 from zero per plane of the blocks `[LANES, plane]` of x,
    /// dy and y, `dy` zeroed where the ReLU clipped (`relu` and `y <= 0`): the scalar
    /// `Backward::plane_sums`.
    pub(super) fn grad_sums(
        [x, dy, y]: [&[f32]; 3],
        plane: usize,
        (mean, inv_std): ([f32; LANES], [f32; LANES]),
        relu: bool,
    ) -> ([f32; LANES], [f32; LANES]) {
        assert!([x, dy, y].iter().all(|b| b.len() == LANES * plane) && fits(plane));
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2 (`fits`), and every gathered element lies in its block.
        unsafe {
            grad_sums_avx2([x, dy, y], plane, (mean, inv_std), relu)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (mean, inv_std, relu);
            unreachable!("no gathers on this architecture")
        }
    }

    /// The lanes' offsets into a block: `j · plane`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn offsets(plane: usize) -> __m256i {
        let p = plane as i32;
        _mm256_setr_epi32(0, p, 2 * p, 3 * p, 4 * p, 5 * p, 6 * p, 7 * p)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn plane_sums_avx2(
        block: &[f32],
        plane: usize,
        mean: Option<[f64; LANES]>,
        start: f64,
    ) -> [f64; LANES] {
        let at = offsets(plane);
        let (mut lo, mut hi) = (_mm256_set1_pd(start), _mm256_set1_pd(start));
        let base = block.as_ptr();
        // The eight f32 lanes as two vectors of four f64 (exact conversions).
        let wide = |k: usize| {
            let v = _mm256_i32gather_ps::<4>(base.add(k), at);
            (
                _mm256_cvtps_pd(_mm256_castps256_ps128(v)),
                _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(v)),
            )
        };
        match mean {
            None => {
                for k in 0..plane {
                    let (a, b) = wide(k);
                    lo = _mm256_add_pd(lo, a);
                    hi = _mm256_add_pd(hi, b);
                }
            }
            Some(mean) => {
                let m_lo = _mm256_loadu_pd(mean.as_ptr());
                let m_hi = _mm256_loadu_pd(mean[4..].as_ptr());
                for k in 0..plane {
                    let (a, b) = wide(k);
                    let (a, b) = (_mm256_sub_pd(a, m_lo), _mm256_sub_pd(b, m_hi));
                    lo = _mm256_add_pd(lo, _mm256_mul_pd(a, a));
                    hi = _mm256_add_pd(hi, _mm256_mul_pd(b, b));
                }
            }
        }
        let mut out = [0f64; LANES];
        _mm256_storeu_pd(out.as_mut_ptr(), lo);
        _mm256_storeu_pd(out[4..].as_mut_ptr(), hi);
        out
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn grad_sums_avx2(
        [x, dy, y]: [&[f32]; 3],
        plane: usize,
        (mean, inv_std): ([f32; LANES], [f32; LANES]),
        relu: bool,
    ) -> ([f32; LANES], [f32; LANES]) {
        let at = offsets(plane);
        let (mean, inv_std) = (
            _mm256_loadu_ps(mean.as_ptr()),
            _mm256_loadu_ps(inv_std.as_ptr()),
        );
        let zero = _mm256_setzero_ps();
        let (mut s, mut sx) = (zero, zero);
        for k in 0..plane {
            let mut g = _mm256_i32gather_ps::<4>(dy.as_ptr().add(k), at);
            if relu {
                // All ones where not `y <= 0` (NaN included), as the scalar bit mask.
                let y = _mm256_i32gather_ps::<4>(y.as_ptr().add(k), at);
                g = _mm256_and_ps(g, _mm256_cmp_ps::<_CMP_NLE_UQ>(y, zero));
            }
            let x = _mm256_i32gather_ps::<4>(x.as_ptr().add(k), at);
            let xhat = _mm256_mul_ps(_mm256_sub_ps(x, mean), inv_std);
            s = _mm256_add_ps(s, g);
            sx = _mm256_add_ps(sx, _mm256_mul_ps(g, xhat));
        }
        let (mut s_out, mut sx_out) = ([0f32; LANES], [0f32; LANES]);
        _mm256_storeu_ps(s_out.as_mut_ptr(), s);
        _mm256_storeu_ps(sx_out.as_mut_ptr(), sx);
        (s_out, sx_out)
    }
}

/// `y = γ·(x - mean)/σ + β`, then ReLU if `relu`; statistics fixed by the caller. Arguments:
/// x `[B, C, H, W]`, γ `[C]`, β `[C]`.
#[derive(Clone)]
pub(crate) struct Normalize {
    mean: Vec<f32>,
    inv_std: Vec<f32>,
    relu: bool,
}

impl Normalize {
    pub(crate) fn new(mean: Vec<f32>, var: &[f32], eps: f32, relu: bool) -> Self {
        let inv_std = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
        Normalize {
            mean,
            inv_std,
            relu,
        }
    }

    /// Per channel `(scale, shift)` with `y = scale·x + shift`.
    fn affine(&self, gamma: &[f32], beta: &[f32]) -> Vec<(f32, f32)> {
        (0..gamma.len())
            .map(|ch| {
                let scale = gamma[ch] * self.inv_std[ch];
                (scale, beta[ch] - self.mean[ch] * scale)
            })
            .collect()
    }

    /// The normalized (and rectified) contiguous `x [B, c, plane]`.
    pub(crate) fn apply(
        &self,
        x: &[f32],
        c: usize,
        plane: usize,
        gamma: &[f32],
        beta: &[f32],
    ) -> Vec<f32> {
        let affine = self.affine(gamma, beta);
        let mut out = output_buffer(x.len());
        out.par_chunks_mut(plane)
            .zip(x.par_chunks(plane))
            .enumerate()
            .for_each(|(i, (dst, src))| {
                let (scale, shift) = affine[i % c];
                if self.relu {
                    rectified((scale, shift), src, dst);
                } else {
                    for (d, &v) in dst.iter_mut().zip(src) {
                        *d = scale * v + shift;
                    }
                }
            });
        out
    }

    /// [`Self::apply`] (with its ReLU) followed by 2x2 max-pooling, in one pass: the pooled
    /// `[B, c, h/2, w/2]` of the contiguous `x [B, c, h, w]`, the bits of [`MaxPool2`]'s fused
    /// kernel run on the output of [`Self::apply`], and where in its window each maximum lies
    /// (the offset of [`first_max`]), for the backward pass.
    ///
    /// [`MaxPool2`]: crate::kernels::MaxPool2
    pub(crate) fn apply_pooled(
        &self,
        x: &[f32],
        c: usize,
        (h, w): (usize, usize),
        gamma: &[f32],
        beta: &[f32],
    ) -> (Vec<f32>, Vec<u8>) {
        assert!(self.relu, "the fused pooling follows the ReLU");
        let affine = self.affine(gamma, beta);
        let (plane, ph, pw) = (h * w, h / 2, w / 2);
        let pooled = x.len() / plane * ph * pw;
        let (mut out, mut argmax) = (output_buffer(pooled), vec![0u8; pooled]);
        if ph * pw == 0 {
            return (out, argmax);
        }
        out.par_chunks_mut(ph * pw)
            .zip(argmax.par_chunks_mut(ph * pw))
            .zip(x.par_chunks(plane))
            .enumerate()
            .for_each_init(
                || vec![0f32; plane],
                |y, (i, ((dst, argmax), src))| {
                    rectified(affine[i % c], src, y);
                    windows(y, w, ph, pw, |i, j, at, max| {
                        dst[i * pw + j] = max;
                        argmax[i * pw + j] = at as u8;
                    });
                },
            );
        (out, argmax)
    }

    /// The gradients of the input, γ and β from the output `y` and its gradient `dy`.
    pub(crate) fn gradients(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> candle::Result<(Tensor, Tensor, Tensor)> {
        let (input, d_gamma, d_beta) = self.gradient_parts(x, gamma, y, dy)?;
        let dx = x.apply_op3_no_bwd(&dy.contiguous()?, &y.contiguous()?, &input)?;
        Ok((dx, d_gamma, d_beta))
    }

    /// The gradients of γ and β, and the [`InputGradient`] that gives the input's plane by
    /// plane, from the output `y` and its gradient `dy`.
    pub(crate) fn gradient_parts(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> candle::Result<(InputGradient, Tensor, Tensor)> {
        let dy = dy.contiguous()?;
        let y = y.contiguous()?;
        let backward = Backward {
            mean: self.mean.clone(),
            inv_std: self.inv_std.clone(),
            relu: self.relu,
        };
        // [2, C]: Σ dy and Σ dy·x̂ per channel (dy after the ReLU's mask).
        let sums = x.apply_op3_no_bwd(&dy, &y, &GradSums(&backward))?;
        let host = sums.to_vec2::<f32>()?;
        let input = InputGradient {
            backward,
            gamma: gamma.to_vec1::<f32>()?,
            sum_dy: host[0].clone(),
            sum_dy_xhat: host[1].clone(),
        };
        Ok((input, sums.get(1)?, sums.get(0)?))
    }

    /// [`Self::gradient_parts`] of [`Self::apply_pooled`]: from its input `x [B, C, H, W]`
    /// (contiguous), γ, β, the pooled output's gradient `d_pooled [B, C, H/2, W/2]` and the
    /// maxima's offsets, with each plane's output and its gradient rebuilt where the sums
    /// read them ([`Unpool`]). Also gives the [`Unpool`] that
    /// [`InputGradient::unpooled_plane`] needs.
    pub(crate) fn pooled_gradient_parts(
        &self,
        x: &[f32],
        (c, h, w): (usize, usize, usize),
        [gamma, beta]: [&[f32]; 2],
        (d_pooled, argmax): (&[f32], &[u8]),
    ) -> candle::Result<(InputGradient, Unpool, Tensor, Tensor)> {
        let plane = h * w;
        let unpool = Unpool {
            affine: self.affine(gamma, beta),
            w,
        };
        let pooled = unpool.pooled(plane);
        let b = x.len() / (c * plane);
        if x.len() != b * c * plane || [d_pooled.len(), argmax.len()] != [b * c * pooled; 2] {
            candle::bail!(
                "batch norm + pooling backward: gradient of {} values",
                d_pooled.len()
            );
        }
        let backward = Backward {
            mean: self.mean.clone(),
            inv_std: self.inv_std.clone(),
            relu: true,
        };
        let (sums, _) = backward.channel_sums(c, b, |i, chs| {
            UNPOOLED.with_borrow_mut(|scratch| {
                let (ys, dys) = sized(scratch, 2 * LANES * plane).split_at_mut(LANES * plane);
                for (j, &ch) in chs.iter().enumerate() {
                    let at = (i * c + ch) * pooled..(i * c + ch + 1) * pooled;
                    let lane = j * plane..(j + 1) * plane;
                    let x = &x[plane_of(i, ch, c, plane)];
                    let pooled = (&d_pooled[at.clone()], &argmax[at]);
                    unpool.plane(ch, x, pooled, &mut ys[lane.clone()], &mut dys[lane]);
                }
                let (ys, dys) = (&*ys, &*dys);
                let lanes = [
                    chs.map(|ch| &x[plane_of(i, ch, c, plane)]),
                    std::array::from_fn(|j| &dys[j * plane..(j + 1) * plane]),
                    std::array::from_fn(|j| &ys[j * plane..(j + 1) * plane]),
                ];
                let blocks = gathered_group(chs, plane).map(|first| {
                    let x = &x[plane_of(i, first, c, plane).start..][..LANES * plane];
                    [x, dys, ys]
                });
                backward.image_sums(chs, lanes, blocks)
            })
        });
        let CpuStorage::F32(sums) = sums else {
            candle::bail!("batch norm + pooling backward: sums are not f32");
        };
        let (sum_dy, sum_dy_xhat) = sums.split_at(c);
        let d_gamma = Tensor::new(sum_dy_xhat, &candle::Device::Cpu)?;
        let d_beta = Tensor::new(sum_dy, &candle::Device::Cpu)?;
        let input = InputGradient {
            backward,
            gamma: gamma.to_vec(),
            sum_dy: sum_dy.to_vec(),
            sum_dy_xhat: sum_dy_xhat.to_vec(),
        };
        Ok((input, unpool, d_gamma, d_beta))
    }
}

/// `relu(scale·x + shift)` of `src` into `dst`: the normalization's output with its ReLU.
#[inline]
fn rectified((scale, shift): (f32, f32), src: &[f32], dst: &mut [f32]) {
    for (d, &v) in dst.iter_mut().zip(src) {
        *d = (scale * v + shift).max(0.0);
    }
}

thread_local! {
    /// A thread's rebuilt planes of output and gradient ([`Unpool`]), kept from call to call.
    static UNPOOLED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Rebuilds, in the backward pass of [`Normalize::apply_pooled`], a plane's output `y` and
/// its gradient `dy` from the plane's input and the pooled gradient: the operations of
/// [`Normalize::apply`] and of the fused max-pooling's backward pass, so the same bits as the
/// tensors the layers apart would have kept and handed over.
pub(crate) struct Unpool {
    /// Per channel `(scale, shift)` of the affine map.
    affine: Vec<(f32, f32)>,
    /// Width of a plane.
    w: usize,
}

impl Unpool {
    /// Pooled values per plane of `plane` values.
    fn pooled(&self, plane: usize) -> usize {
        (plane / self.w / 2) * (self.w / 2)
    }

    /// `y` and `dy` of a plane of channel `ch` from its input `x`, pooled gradient and
    /// maxima's offsets: each window's gradient at its (first) maximum, zero elsewhere (an
    /// odd size's last line too).
    #[inline]
    fn plane(
        &self,
        ch: usize,
        x: &[f32],
        (d_pooled, argmax): (&[f32], &[u8]),
        y: &mut [f32],
        dy: &mut [f32],
    ) {
        let w = self.w;
        rectified(self.affine[ch], x, y);
        // Zero first for the places outside every window (an odd size's last line).
        dy.fill(0.0);
        to_maxima(d_pooled, argmax, w, (x.len() / w / 2, w / 2), dy);
    }
}

impl CustomOp3 for Normalize {
    fn name(&self) -> &'static str {
        "fmnist-batch-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle::Result<(CpuStorage, Shape)> {
        let (_, c, h, w) = l1.shape().dims4()?;
        let x = f32_slice(s1, l1, "batch norm")?;
        let gamma = f32_slice(s2, l2, "batch norm weight")?;
        let beta = f32_slice(s3, l3, "batch norm bias")?;
        if gamma.len() != c || beta.len() != c || self.mean.len() != c {
            candle::bail!("batch norm: {c} channels, {} parameters", gamma.len());
        }
        let out = self.apply(x, c, h * w, gamma, beta);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> candle::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, d_gamma, d_beta) = self.gradients(x, gamma, y, dy)?;
        Ok((Some(dx), Some(d_gamma), Some(d_beta)))
    }
}

/// What the two backward kernels share.
struct Backward {
    mean: Vec<f32>,
    inv_std: Vec<f32>,
    relu: bool,
}

impl Backward {
    /// `(x̂, dy)` of a plane of channel `ch`, `dy` zeroed where the ReLU clipped.
    #[inline]
    fn terms<'a>(
        &'a self,
        ch: usize,
        x: &'a [f32],
        dy: &'a [f32],
        y: &'a [f32],
    ) -> impl Iterator<Item = (f32, f32)> + 'a {
        let (mean, inv_std) = (self.mean[ch], self.inv_std[ch]);
        x.iter().zip(dy).zip(y).map(move |((&x, &g), &y)| {
            let g = if self.relu && y <= 0.0 { 0.0 } else { g };
            ((x - mean) * inv_std, g)
        })
    }

    /// `Σ dy` and `Σ dy·x̂` over one plane of each of the channels `chs` ([`Self::terms`]),
    /// in f32 from zero, each lane in its plane's order: the bits of one fold per plane, with
    /// the lanes' chains of additions in flight together.
    #[inline]
    fn plane_sums(
        &self,
        chs: [usize; LANES],
        x: [&[f32]; LANES],
        dy: [&[f32]; LANES],
        y: [&[f32]; LANES],
    ) -> ([f32; LANES], [f32; LANES]) {
        let (mean, inv_std) = (chs.map(|ch| self.mean[ch]), chs.map(|ch| self.inv_std[ch]));
        let len = x[0].len();
        let (x, dy, y) = (
            x.map(|p| &p[..len]),
            dy.map(|p| &p[..len]),
            y.map(|p| &p[..len]),
        );
        let (mut s, mut sx) = ([0f32; LANES], [0f32; LANES]);
        for k in 0..len {
            for j in 0..LANES {
                // `dy`, or +0.0 where the ReLU clipped, as a mask: a branch here would guess
                // wrong on about half the elements.
                let keep = u32::from(self.relu && y[j][k] <= 0.0).wrapping_sub(1);
                let g = f32::from_bits(dy[j][k].to_bits() & keep);
                let xhat = (x[j][k] - mean[j]) * inv_std[j];
                s[j] += g;
                sx[j] += g * xhat;
            }
        }
        (s, sx)
    }

    /// [`Self::plane_sums`] of one image's planes of the channels `chs`: `lanes` holds lane
    /// `j`'s planes of x, dy and y; `blocks`, where [`gathered_group`] allows, the same
    /// planes as `[LANES, plane]` blocks for the gathers.
    #[inline]
    fn image_sums(
        &self,
        chs: [usize; LANES],
        [x, dy, y]: [[&[f32]; LANES]; 3],
        blocks: Option<[&[f32]; 3]>,
    ) -> ([f32; LANES], [f32; LANES]) {
        match blocks {
            Some(blocks) => {
                let mean = chs.map(|ch| self.mean[ch]);
                let inv_std = chs.map(|ch| self.inv_std[ch]);
                gathered::grad_sums(blocks, x[0].len(), (mean, inv_std), self.relu)
            }
            None => self.plane_sums(chs, x, dy, y),
        }
    }

    /// `[2, C]`: `Σ dy` and `Σ dy·x̂` per channel over `b` images, each image's
    /// `image_sums(i, chs)` added in f64 in image order.
    fn channel_sums(
        &self,
        c: usize,
        b: usize,
        image_sums: impl Fn(usize, [usize; LANES]) -> ([f32; LANES], [f32; LANES]) + Sync + Send,
    ) -> (CpuStorage, Shape) {
        per_channel_pairs(c, |chs| {
            let (mut sum, mut sum_xhat) = ([0f64; LANES], [0f64; LANES]);
            for i in 0..b {
                let (s, sx) = image_sums(i, chs);
                for j in 0..LANES {
                    sum[j] += s[j] as f64;
                    sum_xhat[j] += sx[j] as f64;
                }
            }
            std::array::from_fn(|j| (sum[j], sum_xhat[j]))
        })
    }
}

/// Arguments x, dy, y, all `[B, C, H, W]`.
fn three<'a>(s: [(&'a CpuStorage, &Layout); 3]) -> candle::Result<([&'a [f32]; 3], usize, usize)> {
    let (_, c, h, w) = s[0].1.shape().dims4()?;
    let mut out = [&[][..]; 3];
    for (o, (s, l)) in out.iter_mut().zip(s) {
        *o = f32_slice(s, l, "batch norm backward")?;
    }
    if out.iter().any(|v| v.len() != out[0].len()) {
        candle::bail!("batch norm backward: x, dy and y differ in size");
    }
    Ok((out, c, h * w))
}

struct GradSums<'a>(&'a Backward);

impl CustomOp3 for GradSums<'_> {
    fn name(&self) -> &'static str {
        "fmnist-batch-norm-grad-sums"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle::Result<(CpuStorage, Shape)> {
        let ([x, dy, y], c, plane) = three([(s1, l1), (s2, l2), (s3, l3)])?;
        let b = x.len() / (c * plane);
        Ok(self.0.channel_sums(c, b, |i, chs| {
            let blocks = gathered_group(chs, plane).map(|first| {
                let at = plane_of(i, first, c, plane).start..;
                [x, dy, y].map(|v| &v[at.clone()][..LANES * plane])
            });
            let lanes = [x, dy, y].map(|v| chs.map(|ch| &v[plane_of(i, ch, c, plane)]));
            self.0.image_sums(chs, lanes, blocks)
        }))
    }
}

/// The input gradient `dx = γ/σ · (dy - mean(dy) - x̂·mean(dy·x̂))` once the per-channel sums
/// are known: as an operation on x, dy and y, or plane by plane ([`InputGradient::plane`]) for
/// a caller that writes each plane where it needs it.
pub(crate) struct InputGradient {
    backward: Backward,
    gamma: Vec<f32>,
    sum_dy: Vec<f32>,
    sum_dy_xhat: Vec<f32>,
}

impl InputGradient {
    /// Plane `i` (image `i / C`, channel `i % C`) of the input gradient into `dst`, from that
    /// plane of x, dy and y; `per_channel` values per channel in the batch.
    #[inline]
    pub(crate) fn plane(
        &self,
        i: usize,
        per_channel: usize,
        [x, dy, y]: [&[f32]; 3],
        dst: &mut [f32],
    ) {
        let ch = i % self.gamma.len();
        let n = per_channel as f32;
        let k = self.gamma[ch] * self.backward.inv_std[ch];
        let (mean_dy, mean_dy_xhat) = (self.sum_dy[ch] / n, self.sum_dy_xhat[ch] / n);
        for (d, (xhat, g)) in dst.iter_mut().zip(self.backward.terms(ch, x, dy, y)) {
            *d = k * (g - mean_dy - xhat * mean_dy_xhat);
        }
    }

    /// [`Self::plane`] of a [`Normalize::apply_pooled`], from plane `i` of its input and of
    /// the pooled output's gradient and maxima's offsets, the output and its gradient rebuilt
    /// by `unpool`.
    #[inline]
    pub(crate) fn unpooled_plane(
        &self,
        i: usize,
        per_channel: usize,
        unpool: &Unpool,
        x: &[f32],
        pooled: (&[f32], &[u8]),
        dst: &mut [f32],
    ) {
        UNPOOLED.with_borrow_mut(|scratch| {
            let (y, dy) = sized(scratch, 2 * x.len()).split_at_mut(x.len());
            unpool.plane(i % self.gamma.len(), x, pooled, y, dy);
            self.plane(i, per_channel, [x, dy, y], dst);
        })
    }
}

impl CustomOp3 for InputGradient {
    fn name(&self) -> &'static str {
        "fmnist-batch-norm-grad-input"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle::Result<(CpuStorage, Shape)> {
        let ([x, dy, y], c, plane) = three([(s1, l1), (s2, l2), (s3, l3)])?;
        if c != self.gamma.len() {
            candle::bail!(
                "batch norm backward: {c} channels, {} parameters",
                self.gamma.len()
            );
        }
        let mut out = output_buffer(x.len());
        out.par_chunks_mut(plane).enumerate().for_each(|(i, dst)| {
            let at = i * plane..(i + 1) * plane;
            let planes = [&x[at.clone()], &dy[at.clone()], &y[at]];
            self.plane(i, x.len() / c, planes, dst);
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle::Device;

    fn layer(c: usize, dev: &Device) -> (BatchNorm2d, Var, Var) {
        let gamma = Var::randn(1f32, 0.3, c, dev).unwrap();
        let beta = Var::randn(0f32, 0.3, c, dev).unwrap();
        let bn = BatchNorm::new(
            c,
            Tensor::randn(0f32, 0.1, c, dev).unwrap(),
            Tensor::rand(0.5f32, 1.5, c, dev).unwrap(),
            gamma.as_tensor().clone(),
            beta.as_tensor().clone(),
            1e-5,
        )
        .unwrap();
        (BatchNorm2d::new(bn, Kernels::Fused), gamma, beta)
    }

    fn rel_error(a: &Tensor, b: &Tensor) -> f32 {
        let diff = (a - b).unwrap().sqr().unwrap().sum_all().unwrap();
        let norm = b.sqr().unwrap().sum_all().unwrap();
        let (d, n) = (
            diff.to_scalar::<f32>().unwrap(),
            norm.to_scalar::<f32>().unwrap(),
        );
        (d / n.max(f32::MIN_POSITIVE)).sqrt()
    }

    /// Outputs, running statistics and the gradients of x, γ and β agree with candle-nn's layer.
    #[test]
    fn fused_path_agrees_with_candle_in_both_modes() {
        let dev = Device::Cpu;
        let (b, c, h, w) = (3, 4, 5, 6);
        for relu in [false, true] {
            let x = Var::randn(0.5f32, 2.0, (b, c, h, w), &dev).unwrap();
            let up = Tensor::randn(0f32, 1.0, (b, c, h, w), &dev).unwrap();
            let run = |k: Kernels| {
                let (bn, gamma, beta) = layer(c, &dev);
                // Same parameters for both paths: the layers are drawn afresh, so copy them.
                gamma
                    .set(&Tensor::new(&[1.2f32, 0.7, -0.4, 1.0], &dev).unwrap())
                    .unwrap();
                beta.set(&Tensor::new(&[0.1f32, -0.3, 0.2, 0.0], &dev).unwrap())
                    .unwrap();
                Var::from_tensor(bn.inner.running_mean())
                    .unwrap()
                    .set(&Tensor::new(&[0.0f32, 0.1, -0.1, 0.2], &dev).unwrap())
                    .unwrap();
                Var::from_tensor(bn.inner.running_var())
                    .unwrap()
                    .set(&Tensor::new(&[1.0f32, 0.5, 2.0, 1.5], &dev).unwrap())
                    .unwrap();
                let bn = bn.with_kernels(k);
                let y = bn.normalize(x.as_tensor(), true, relu).unwrap();
                let grads = (&y * &up).unwrap().sum_all().unwrap().backward().unwrap();
                let eval = bn.normalize(x.as_tensor(), false, relu).unwrap();
                let grad = |v: &Var| grads.get(v.as_tensor()).unwrap().clone();
                vec![
                    ("train output", y),
                    ("dx", grad(&x)),
                    ("dgamma", grad(&gamma)),
                    ("dbeta", grad(&beta)),
                    ("running mean", bn.inner.running_mean().clone()),
                    ("running var", bn.inner.running_var().clone()),
                    ("eval output", eval),
                ]
            };
            let (fused, generic) = (run(Kernels::Fused), run(Kernels::Generic));
            for ((what, a), (_, b)) in fused.iter().zip(&generic) {
                assert_eq!(a.dims(), b.dims(), "{what}");
                let rel = rel_error(a, b);
                assert!(rel <= 1e-5, "relu {relu}, {what}: relative error {rel}");
            }
        }
    }

    /// In training each channel comes out with mean β and standard deviation |γ|.
    #[test]
    fn channel_sums_in_lanes_are_the_bits_of_one_sum_per_channel() {
        // Eleven channels: a full group of eight (on the gathers where the CPU has AVX2) and
        // one that repeats its last channel (on the scalar lanes).
        let (b, c, plane) = (3, 11, 10);
        let dev = Device::Cpu;
        let v = |seed: f32| {
            Tensor::randn(seed, 1.0, b * c * plane, &dev)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        // y as a ReLU leaves it: many exact zeros, which the mask must count as clipped.
        let y: Vec<f32> = v(0.2).iter().map(|v| v.max(0.0)).collect();
        let (x, dy) = (v(0.0), v(0.0));
        let channel = |data: &[f32], ch: usize| {
            (0..b)
                .map(|i| data[plane_of(i, ch, c, plane)].to_vec())
                .collect::<Vec<_>>()
        };
        let (CpuStorage::F32(stats), _) = channel_stats(&x, b, c, plane) else {
            panic!("f32 statistics")
        };
        let n = (b * plane) as f64;
        for ch in 0..c {
            let planes = channel(&x, ch);
            let sum: f64 = planes
                .iter()
                .map(|p| p.iter().map(|&v| v as f64).sum::<f64>())
                .sum();
            let mean = sum / n;
            let sq: f64 = planes
                .iter()
                .map(|p| p.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>())
                .sum();
            assert_eq!(stats[ch], mean as f32, "mean of channel {ch}");
            assert_eq!(stats[c + ch], (sq / n) as f32, "variance of channel {ch}");
        }
        for relu in [true, false] {
            let backward = Backward {
                mean: (0..c).map(|ch| ch as f32 * 0.1).collect(),
                inv_std: (0..c).map(|ch| 1.0 + ch as f32 * 0.2).collect(),
                relu,
            };
            let layout = Layout::contiguous((b, c, 2, 5));
            let storage = |v: &Vec<f32>| CpuStorage::F32(v.clone());
            let (CpuStorage::F32(grad_sums), _) = GradSums(&backward)
                .cpu_fwd(
                    &storage(&x),
                    &layout,
                    &storage(&dy),
                    &layout,
                    &storage(&y),
                    &layout,
                )
                .unwrap()
            else {
                panic!("f32 sums")
            };
            for ch in 0..c {
                let (mut s, mut sx) = (0f64, 0f64);
                let planes = channel(&x, ch).into_iter().zip(channel(&dy, ch));
                for ((px, pdy), py) in planes.zip(channel(&y, ch)) {
                    let (a, b) = backward
                        .terms(ch, &px, &pdy, &py)
                        .fold((0f32, 0f32), |(s, sx), (xhat, g)| (s + g, sx + g * xhat));
                    s += a as f64;
                    sx += b as f64;
                }
                assert_eq!(grad_sums[ch], s as f32, "relu {relu}: Σ dy of channel {ch}");
                let what = format!("relu {relu}: Σ dy·x̂ of channel {ch}");
                assert_eq!(grad_sums[c + ch], sx as f32, "{what}");
            }
        }
    }

    #[test]
    fn training_output_has_the_affine_statistics() {
        let dev = Device::Cpu;
        let (bn, gamma, beta) = layer(2, &dev);
        gamma
            .set(&Tensor::new(&[2.0f32, 0.5], &dev).unwrap())
            .unwrap();
        beta.set(&Tensor::new(&[1.0f32, -3.0], &dev).unwrap())
            .unwrap();
        let x = Tensor::randn(5f32, 3.0, (8, 2, 4, 4), &dev).unwrap();
        let y = bn.forward_t(&x, true).unwrap();
        let per_channel = y.transpose(0, 1).unwrap().flatten_from(1).unwrap();
        let mean = per_channel.mean(1).unwrap().to_vec1::<f32>().unwrap();
        let std = per_channel
            .broadcast_sub(&per_channel.mean_keepdim(1).unwrap())
            .unwrap()
            .sqr()
            .unwrap()
            .mean(1)
            .unwrap()
            .sqrt()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for (got, want) in mean
            .iter()
            .zip([1.0, -3.0])
            .chain(std.iter().zip([2.0, 0.5]))
        {
            assert!((got - want).abs() < 1e-3, "{got} vs {want}");
        }
    }
}
