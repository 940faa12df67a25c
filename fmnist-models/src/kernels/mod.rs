//! The kernels under the models: CPU operations fused by hand where plain candle loses time,
//! each with the generic candle path beside it (used on Metal, on CUDA where [`cuda`] has no
//! kernel of its own, and on the CPU with `Kernels::Generic`), and the CUDA kernels. The
//! models ([`crate::nets`]) call them through layer types ([`conv::Conv2d`],
//! [`norm::BatchNorm2d`], [`recurrent::Lstm`], [`MaxPool2`], [`AddRelu`]) and never see a
//! kernel.
//!
//! - [`conv`]: convolution as blocked im2col + GEMM, with pooling and ReLU fused after it;
//!   `winograd` and `one_channel` are its evaluation paths.
//! - [`norm`]: BatchNorm (+ ReLU); `conv_norm` fuses a convolution with the BatchNorm after it.
//! - [`recurrent`]: the LSTM's whole recurrence as one operation.
//! - this module: the choice of kernels ([`Kernels`]), the GEMM and SIMD helpers they share,
//!   2x2 max-pooling and the residual add + ReLU.
//! - `cuda` (feature `cuda`): the CUDA kernels (`cuda/kernels.cu`) and their launchers.
//!
//! 2x2 max-pooling: candle's backward of `max_pool2d` builds the mask from an upsample, a
//! comparison, an average pool, two more upsamples and two products over the largest
//! activation of the network. The fused kernel finds each window's maximum once forward and
//! routes the gradient to it in one pass backward.
pub mod conv;
pub(crate) mod conv_norm;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod norm;
pub(crate) mod one_channel;
pub mod recurrent;
pub(crate) mod winograd;

use candle::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

/// Which implementation of the hand-fused operations runs. A model carries its choice (in its
/// [`crate::ModelConfig`]) and hands it to each of its layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum Kernels {
    /// The fused kernels where the tensor is f32 on the CPU (and, built with `cuda`, the CUDA
    /// kernels of [`crate::kernels::cuda`] where it is f32 on a CUDA device), the generic path
    /// elsewhere.
    #[default]
    Fused,
    /// candle's generic operations everywhere.
    Generic,
}

impl Kernels {
    /// Whether the fused kernels run on `x`: chosen, and `x` an f32 tensor on the CPU.
    pub fn fuse(self, x: &Tensor) -> bool {
        self == Kernels::Fused && x.device().is_cpu() && x.dtype() == DType::F32
    }

    /// Whether the CUDA kernels ([`crate::kernels::cuda`]) run on `x`: chosen, and `x` an f32 tensor
    /// on a CUDA device.
    #[cfg(feature = "cuda")]
    pub fn fuse_cuda(self, x: &Tensor) -> bool {
        self == Kernels::Fused && x.device().is_cuda() && x.dtype() == DType::F32
    }
}

/// Runs `f` compiled for the widest vector instructions the CPU has (AVX-512, else AVX2 with
/// FMA, else the x86-64 baseline's SSE2), chosen at run time, so that the loops of the fused
/// kernels vectorize 8 or 16 floats wide. Everything `f` calls must be inlined into it for
/// that (`#[inline(always)]` on small helpers). Rust never contracts `a * b + c` into an FMA,
/// so the results are the same bits whichever instructions run.
#[inline(always)]
pub(crate) fn simd<R>(f: impl FnOnce() -> R) -> R {
    pulp::Arch::new().dispatch(f)
}

/// The vector instructions [`simd`] picks on this CPU, as a person names them ("AVX-512",
/// "AVX2+FMA", "SSE2", "NEON"): the fused kernels' speed depends on it, their results do not.
pub fn vector_instructions() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        match pulp::Arch::new() {
            pulp::Arch::V4(_) => "AVX-512",
            pulp::Arch::V3(_) => "AVX2+FMA",
            _ => "SSE2",
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        match pulp::Arch::new() {
            pulp::Arch::Neon(_) => "NEON",
            _ => "scalar",
        }
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        "scalar"
    }
}

/// The first `len` elements of `v`, grown to hold them: a scratch buffer kept from call to
/// call, whose elements the caller writes before it reads them.
pub(crate) fn sized(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if v.len() < len {
        v.resize(len, 0.0);
    }
    &mut v[..len]
}

/// 2x2 max-pooling with stride 2, flooring odd sizes as PyTorch and Keras do.
///
/// The generic path is built from reductions over a reshaped view rather than candle's `max_pool2d`,
/// whose backward (candle 0.11) is wrong twice: it multiplies the gradient by the share of
/// maxima in the window (1/4 for a unique maximum) instead of dividing by their count, and for
/// an odd input size its nearest-neighbour upsampling is misaligned with the windows.
#[derive(Debug, Clone, Copy, Default)]
pub struct MaxPool2 {
    /// The implementation that runs.
    pub kernels: Kernels,
}

impl candle::Module for MaxPool2 {
    fn forward(&self, x: &Tensor) -> candle::Result<Tensor> {
        if self.kernels.fuse(x) {
            return x.contiguous()?.apply_op1(FusedMaxPool2);
        }
        let (n, c, h, w) = x.dims4()?;
        let (ph, pw) = (h / 2, w / 2);
        let x = if h % 2 == 1 || w % 2 == 1 {
            x.narrow(2, 0, 2 * ph)?.narrow(3, 0, 2 * pw)?.contiguous()?
        } else {
            x.contiguous()?
        };
        // max = sum over the window of x * (mask / count), with mask and count constants: the
        // gradient is shared evenly between tied maxima (a background of equal values ties all
        // four) instead of being given in full to each of them.
        let x = x.reshape((n, c, ph, 2, pw, 2))?;
        let max = x.max_keepdim(5)?.max_keepdim(3)?;
        let mask = x.broadcast_eq(&max)?.to_dtype(x.dtype())?;
        let count = mask.sum_keepdim(5)?.sum_keepdim(3)?;
        let share = mask.broadcast_div(&count)?.detach();
        (x * share)?.sum(5)?.sum(3)
    }
}

/// `relu(a + b)`, the end of a residual block. On the fused path it is one operation: one
/// pass forward, and backward one pass that hands both inputs `grad · [a + b ≥ 0]`, the mask
/// candle's own ReLU backward uses, so both paths give the same bits. candle's add and ReLU
/// cost two passes forward and, backward, a zero-filled buffer, a comparison, a conversion,
/// a product and an add for the ReLU alone.
#[derive(Debug, Clone, Copy, Default)]
pub struct AddRelu {
    /// The implementation that runs.
    pub kernels: Kernels,
}

impl AddRelu {
    pub fn forward(&self, a: &Tensor, b: &Tensor) -> candle::Result<Tensor> {
        if !self.kernels.fuse(a) || !self.kernels.fuse(b) || a.shape() != b.shape() {
            return (a + b)?.relu();
        }
        a.contiguous()?.apply_op2(&b.contiguous()?, FusedAddRelu)
    }
}

/// The fused CPU kernel of [`AddRelu`].
struct FusedAddRelu;

impl CustomOp2 for FusedAddRelu {
    fn name(&self) -> &'static str {
        "fmnist-add-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle::Result<(CpuStorage, Shape)> {
        let a = f32_slice(s1, l1, "add_relu")?;
        let b = f32_slice(s2, l2, "add_relu")?;
        let out: Vec<f32> = a.par_iter().zip(b).map(|(x, y)| (x + y).max(0.0)).collect();
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = a.apply_op3_no_bwd(b, &grad_res.contiguous()?, &AddReluBackward)?;
        Ok((Some(grad.clone()), Some(grad)))
    }
}

/// The gradient of [`FusedAddRelu`] with respect to either input: `grad · [a + b ≥ 0]`.
struct AddReluBackward;

impl CustomOp3 for AddReluBackward {
    fn name(&self) -> &'static str {
        "fmnist-add-relu-backward"
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
        let a = f32_slice(s1, l1, "add_relu backward")?;
        let b = f32_slice(s2, l2, "add_relu backward")?;
        let grad = f32_slice(s3, l3, "add_relu backward")?;
        if grad.len() != a.len() {
            candle::bail!("add_relu backward: gradient {:?}", l3.dims());
        }
        let out: Vec<f32> = a
            .par_iter()
            .zip(b)
            .zip(grad)
            .map(|((x, y), g)| g * if x + y >= 0.0 { 1.0 } else { 0.0 })
            .collect();
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `dst [m, n] = a [m, k] · b`, or `dst += a · b` (`accumulate`), where `b` is `[k, n]`, or
/// `[n, k]` read transposed (`b_transposed`), all row-major: the `gemm` crate's GEMM (the one
/// candle's matmul runs) on slices, so that a loop of small products neither copies into
/// tensors nor allocates.
pub(crate) fn gemm_into(
    dst: &mut [f32],
    a: &[f32],
    b: &[f32],
    (m, k, n): (usize, usize, usize),
    b_transposed: bool,
    accumulate: bool,
) {
    assert!(dst.len() == m * n && a.len() == m * k && b.len() == k * n);
    let b = if b_transposed {
        Strided::transposed(b, k)
    } else {
        Strided::dense(b, n)
    };
    gemm_strided(dst, n, Strided::dense(a, k), b, (m, k, n), accumulate)
}

/// The transpose of the row-major matrix `m` of `cols` columns, row-major. A GEMM operand
/// read transposed is packed by the `gemm` crate an element at a time, at every call: an
/// operand used by many calls (a recurrence's weights at every step) is transposed once.
pub(crate) fn transpose(m: &[f32], cols: usize) -> Vec<f32> {
    let rows = m.len() / cols.max(1);
    let mut t = vec![0f32; m.len()];
    for (r, row) in m.chunks_exact(cols).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            t[c * rows + r] = v;
        }
    }
    t
}

/// A matrix operand of [`gemm_strided`]: element `(r, c)` is `data[r·row + c·col]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Strided<'a> {
    pub data: &'a [f32],
    pub row: usize,
    pub col: usize,
}

impl<'a> Strided<'a> {
    /// A row-major matrix of `cols` columns.
    pub fn dense(data: &'a [f32], cols: usize) -> Self {
        Strided {
            data,
            row: cols,
            col: 1,
        }
    }

    /// The transpose of a row-major matrix of `cols` columns.
    pub fn transposed(data: &'a [f32], cols: usize) -> Self {
        Strided {
            data,
            row: 1,
            col: cols,
        }
    }

    /// Whether the `rows x cols` elements addressed lie in `data`.
    fn holds(&self, rows: usize, cols: usize) -> bool {
        rows == 0 || cols == 0 || (rows - 1) * self.row + (cols - 1) * self.col < self.data.len()
    }
}

/// `dst = a · b` (or `+=`, `accumulate`) with `a [m, k]` and `b [k, n]` read through their
/// strides and row `r` of `dst` at `dst[r·dst_rs..][..n]`: rows of a batch-major buffer at
/// one time step, or a transposed operand, without a copy. A product inside a parallel loop
/// (a block of images per task) stays on its thread; elsewhere it uses all of them.
pub(crate) fn gemm_strided(
    dst: &mut [f32],
    dst_rs: usize,
    a: Strided,
    b: Strided,
    (m, k, n): (usize, usize, usize),
    accumulate: bool,
) {
    assert!(dst_rs >= n && a.holds(m, k) && b.holds(k, n));
    assert!(m == 0 || dst.len() >= (m - 1) * dst_rs + n);
    let threads = match rayon::current_thread_index() {
        Some(_) => 1,
        None => rayon::current_num_threads(),
    };
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the elements addressed through the strides lie in the three slices (asserted
    // above; rows of `dst` do not overlap as `dst_rs >= n`), and `dst` is borrowed mutably,
    // so it aliases neither input.
    #[allow(unsafe_code)]
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            a.data.as_ptr(),
            a.col as isize,
            a.row as isize,
            b.data.as_ptr(),
            b.col as isize,
            b.row as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// `v` cut in chunks of `chunk` (`None` for each chunk of a `len` long sequence when `v` is
/// empty), to zip with another sequence's chunks.
pub(crate) fn blocks_of<T>(v: &mut [T], chunk: usize, len: usize) -> Vec<Option<&mut [T]>> {
    if v.is_empty() {
        (0..len.div_ceil(chunk)).map(|_| None).collect()
    } else {
        v.chunks_mut(chunk).map(Some).collect()
    }
}

/// Writes into `sum` the sum of the blocks' partial sums `partials` (one `sum.len()` chunk
/// per block), each element `0 + p₀ + p₁ + …` in block order, so that the result does not
/// depend on which thread ran which block; what `sum` held before is not read. Stretches of
/// `sum` run in parallel.
pub(crate) fn sum_blocks(sum: &mut [f32], partials: &[f32]) {
    /// Elements per parallel stretch: 16 KiB of `sum`.
    const STRETCH: usize = 4096;
    let len = sum.len();
    sum.par_chunks_mut(STRETCH)
        .enumerate()
        .for_each(|(i, sum)| {
            sum.fill(0.0);
            for partial in partials.chunks_exact(len) {
                let partial = &partial[i * STRETCH..][..sum.len()];
                for (s, v) in sum.iter_mut().zip(partial) {
                    *s += v;
                }
            }
        });
}

/// A vector of `len` elements for an operation's output whose every element the operation
/// writes before anything reads it, allocated by candle's `alloc_uninit` (as candle allocates
/// the outputs of its own CPU operations), so not zeroed first: a zeroed output cost a serial
/// pass over it on the thread that launches the operation, while the others waited.
pub(crate) fn output_buffer(len: usize) -> Vec<f32> {
    use candle::backend::BackendDevice;
    // SAFETY: alloc_uninit's contract is that no element is read before it is written; every
    // caller writes the whole buffer before it reads any of it or hands it to candle.
    #[allow(unsafe_code)]
    let storage =
        unsafe { candle::cpu_backend::CpuDevice.alloc_uninit(&Shape::from(len), DType::F32) };
    match storage {
        Ok(CpuStorage::F32(v)) => v,
        _ => vec![0.0; len],
    }
}

pub(crate) fn f32_slice<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    what: &str,
) -> candle::Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle::bail!("{what}: expects f32");
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle::bail!("{what}: expects a contiguous tensor"),
    }
}

/// The offset (0..4, row-major) of the first maximum of a 2x2 window `[a, b; c, d]`.
/// Selects, not branches: which of the four is largest is a coin toss to a branch predictor.
#[inline(always)]
pub(crate) fn first_max(a: f32, b: f32, c: f32, d: f32) -> (usize, f32) {
    let (mut at, mut best) = (0, a);
    for (i, v) in [(1, b), (2, c), (3, d)] {
        at = if v > best { i } else { at };
        best = later_if_larger(best, v);
    }
    (at, best)
}

/// The larger of `best` and `v`, `best` on ties: one step of [`first_max`].
#[inline(always)]
fn later_if_larger(best: f32, v: f32) -> f32 {
    if v > best {
        v
    } else {
        best
    }
}

/// `dst[i·pw + j]` = ReLU of the maximum of window (i, j) of a plane whose lines lie `line`
/// apart, the value [`first_max`] finds. Without offsets and bounds checks in its inner loop,
/// this is the evaluation path of the pooling fused into a convolution.
#[inline(always)]
pub(crate) fn pool_relu(plane: &[f32], line: usize, ph: usize, pw: usize, dst: &mut [f32]) {
    for (i, out) in dst.chunks_exact_mut(pw).take(ph).enumerate() {
        let top = &plane[2 * i * line..][..2 * pw];
        let bottom = &plane[(2 * i + 1) * line..][..2 * pw];
        for ((o, t), b) in out
            .iter_mut()
            .zip(top.chunks_exact(2))
            .zip(bottom.chunks_exact(2))
        {
            let (_, max) = first_max(t[0], t[1], b[0], b[1]);
            *o = max.max(0.0);
        }
    }
}

/// Calls `f(i, j, offset, max)` for window (i, j) of an `h x w` plane, `offset` as in [`first_max`].
#[inline]
pub(crate) fn windows(
    plane: &[f32],
    w: usize,
    ph: usize,
    pw: usize,
    mut f: impl FnMut(usize, usize, usize, f32),
) {
    for i in 0..ph {
        let top = &plane[2 * i * w..][..2 * pw];
        let bottom = &plane[(2 * i + 1) * w..][..2 * pw];
        for (j, (t, b)) in top.chunks_exact(2).zip(bottom.chunks_exact(2)).enumerate() {
            let (at, max) = first_max(t[0], t[1], b[0], b[1]);
            f(i, j, at, max);
        }
    }
}

/// The fused CPU kernel of [`MaxPool2`].
struct FusedMaxPool2;

impl CustomOp1 for FusedMaxPool2 {
    fn name(&self) -> &'static str {
        "fmnist-max-pool-2x2"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle::Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l.shape().dims4()?;
        let (ph, pw) = (h / 2, w / 2);
        let x = f32_slice(s, l, "max_pool2")?;
        let mut out = output_buffer(n * c * ph * pw);
        if ph * pw > 0 {
            out.par_chunks_mut(ph * pw)
                .zip(x.par_chunks_exact(h * w))
                .for_each(|(dst, plane)| {
                    windows(plane, w, ph, pw, |i, j, _, max| dst[i * pw + j] = max)
                });
        }
        Ok((CpuStorage::F32(out), Shape::from((n, c, ph, pw))))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle::Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2_no_bwd(
            &grad_res.contiguous()?,
            &MaxPool2Backward,
        )?))
    }
}

/// The gradient of [`FusedMaxPool2`]: each window's gradient goes to its (first) maximum.
struct MaxPool2Backward;

impl CustomOp2 for MaxPool2Backward {
    fn name(&self) -> &'static str {
        "fmnist-max-pool-2x2-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle::Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l1.shape().dims4()?;
        let (ph, pw) = (h / 2, w / 2);
        let x = f32_slice(s1, l1, "max_pool2 backward")?;
        let g = f32_slice(s2, l2, "max_pool2 backward")?;
        if ph * pw == 0 {
            return Ok((CpuStorage::F32(vec![0f32; x.len()]), l1.shape().clone()));
        }
        let mut out = output_buffer(n * c * h * w);
        out.par_chunks_mut(h * w)
            .zip(x.par_chunks_exact(h * w).zip(g.par_chunks_exact(ph * pw)))
            .for_each(|(dst, (plane, grads))| {
                // Places outside every window (an odd size's last line) and off the maxima.
                dst.fill(0.0);
                windows(plane, w, ph, pw, |i, j, at, _| {
                    dst[(2 * i + at / 2) * w + 2 * j + at % 2] = grads[i * pw + j];
                })
            });
        Ok((CpuStorage::F32(out), Shape::from((n, c, h, w))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle::{Device, Var};

    /// Forward and input gradient of `max_pool2` under `k`, for a fixed upstream gradient.
    fn run(k: Kernels, x: &Tensor, upstream: &Tensor) -> (Vec<f32>, Vec<f32>) {
        let v = Var::from_tensor(x).unwrap();
        let y = v.as_tensor().apply(&MaxPool2 { kernels: k }).unwrap();
        let loss = (&y * upstream).unwrap().sum_all().unwrap();
        let g = loss
            .backward()
            .unwrap()
            .get(v.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        (y.flatten_all().unwrap().to_vec1().unwrap(), g)
    }

    #[test]
    fn pool_relu_gives_the_bits_of_the_windows_it_stands_for() {
        // A 5x7 plane whose lines lie 9 apart (two columns no window reads), 2x3 windows:
        // ties, an all-negative window (ReLU gives 0), maxima in three positions, and
        // -0.0 against 0.0, where the first of equal values wins.
        #[rustfmt::skip]
        let plane = [
            1.0, 1.0, -3.0, -1.0, 0.0, 2.0, 9.0, 50.0, 50.0,
            0.5, 1.0, -2.0, -4.0, 7.0, 3.0, 9.0, 50.0, 50.0,
            -0.0, 0.0, 4.0, 1.0, 2.0, 2.0, 9.0, 50.0, 50.0,
            -1.0, -0.0, 3.0, 5.0, 2.0, 1.0, 9.0, 50.0, 50.0,
            9.0, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0, 50.0, 50.0,
        ];
        let mut fast = vec![f32::NAN; 6];
        pool_relu(&plane, 9, 2, 3, &mut fast);
        let mut reference = vec![f32::NAN; 6];
        windows(&plane, 9, 2, 3, |i, j, _, max| {
            reference[i * 3 + j] = max.max(0.0)
        });
        assert_eq!(fast, [1.0, 0.0, 7.0, 0.0, 5.0, 2.0]);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&fast), bits(&reference));
    }

    #[test]
    fn transposing_a_known_matrix() {
        let m = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        assert_eq!(transpose(&m, 3), [1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
        assert_eq!(transpose(&m, 2), [1.0, 3.0, 5.0, 2.0, 4.0, 6.0]);
        assert_eq!(transpose(&transpose(&m, 3), 2), m);
    }

    #[test]
    fn a_product_of_two_row_major_operands_has_the_bits_of_its_transpose() {
        // A convolution's kernel gradient `d_y [m, k] · colsᵀ` runs either way round (see
        // `BlockedConvBackward`): `cols · d_yᵀ` must give the transpose, bit for bit. Shapes
        // of `resnet`'s layers (depth 8 images of 14x14 and 7x7 positions, so the depth is cut
        // into several blocks), one of each size class of the `gemm` crate, and an odd one.
        let values = |len: usize, seed: u32| -> Vec<f32> {
            let mut state = seed;
            (0..len)
                .map(|_| {
                    state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (state >> 8) as f32 / (1u32 << 24) as f32 - 0.5
                })
                .collect()
        };
        for (m, k, n) in [
            (32, 1568, 288),
            (64, 392, 576),
            (128, 128, 1152),
            (16, 700, 40),
            (9, 35, 70),
        ] {
            let a = values(m * k, 1);
            let b = values(n * k, 2);
            let mut product = vec![0f32; m * n];
            gemm_into(&mut product, &a, &b, (m, k, n), true, false);
            let mut transposed = vec![0f32; n * m];
            let (b, a_t) = (Strided::dense(&b, k), Strided::transposed(&a, k));
            gemm_strided(&mut transposed, m, b, a_t, (n, k, m), false);
            for i in 0..m {
                for j in 0..n {
                    let (x, y) = (product[i * n + j], transposed[j * m + i]);
                    assert_eq!(x.to_bits(), y.to_bits(), "{m}x{k}x{n} at ({i}, {j})");
                }
            }
        }
    }

    #[test]
    fn add_relu_gives_the_same_bits_on_both_paths() {
        let dev = Device::Cpu;
        let a = Tensor::randn(0f32, 1.0, (2, 3, 5, 5), &dev).unwrap();
        // Some sums exactly zero (a + (-a)), where the ReLU's gradient mask is decided by `≥`.
        let b = Tensor::randn(0f32, 1.0, (2, 3, 5, 5), &dev).unwrap();
        let b = b
            .slice_assign(
                &[0..1, 0..3, 0..5, 0..5],
                &a.narrow(0, 0, 1).unwrap().neg().unwrap(),
            )
            .unwrap();
        let up = Tensor::randn(0f32, 1.0, (2, 3, 5, 5), &dev).unwrap();
        let run = |k: Kernels| {
            let (va, vb) = (Var::from_tensor(&a).unwrap(), Var::from_tensor(&b).unwrap());
            let y = AddRelu { kernels: k }
                .forward(va.as_tensor(), vb.as_tensor())
                .unwrap();
            let grads = (&y * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let ga = flat(grads.get(va.as_tensor()).unwrap());
            let gb = flat(grads.get(vb.as_tensor()).unwrap());
            (flat(&y), ga, gb)
        };
        let (fused, generic) = (run(Kernels::Fused), run(Kernels::Generic));
        assert_eq!(fused, generic);
        let (y, ga, gb) = fused;
        let up = up.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // The first image sums to zero everywhere: output 0, gradient passed through.
        assert!(y[..75].iter().all(|&v| v == 0.0));
        assert_eq!(&ga[..75], &up[..75]);
        assert_eq!(ga, gb);
        // Elsewhere the gradient is the upstream one where the sum is not negative, else zero.
        let (a, b) = (
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        for i in 75..150 {
            let expect = if a[i] + b[i] >= 0.0 { up[i] } else { 0.0 };
            assert_eq!(ga[i], expect, "element {i}");
        }
    }

    #[test]
    fn fused_and_generic_agree_on_random_inputs_even_and_odd() {
        for (h, w) in [(26, 26), (11, 11), (7, 6)] {
            let x = Tensor::randn(0f32, 1.0, (3, 4, h, w), &Device::Cpu).unwrap();
            let up = Tensor::randn(0f32, 1.0, (3, 4, h / 2, w / 2), &Device::Cpu).unwrap();
            let (yf, gf) = run(Kernels::Fused, &x, &up);
            let (yg, gg) = run(Kernels::Generic, &x, &up);
            assert_eq!(yf, yg, "{h}x{w} forward");
            for (a, b) in gf.iter().zip(&gg) {
                assert!(
                    (a - b).abs() <= 1e-5 * a.abs().max(b.abs()).max(1.0),
                    "{h}x{w} gradient {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn tied_maxima_share_the_gradient_in_the_generic_path_and_the_first_takes_it_when_fused() {
        let x = Tensor::zeros((1, 1, 2, 2), DType::F32, &Device::Cpu).unwrap();
        let up = Tensor::new(&[[[[1f32]]]], &Device::Cpu).unwrap();
        assert_eq!(run(Kernels::Generic, &x, &up).1, vec![0.25; 4]);
        assert_eq!(run(Kernels::Fused, &x, &up).1, vec![1.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn gradient_goes_to_the_maximum_of_each_window() {
        let x = Tensor::new(
            &[[[[1f32, 2.0, 9.0], [5.0, 3.0, 8.0], [7.0, 6.0, 4.0]]]],
            &Device::Cpu,
        )
        .unwrap();
        let up = Tensor::new(&[[[[2f32]]]], &Device::Cpu).unwrap();
        for k in [Kernels::Fused, Kernels::Generic] {
            let (y, g) = run(k, &x, &up);
            assert_eq!(y, vec![5.0], "{k:?}");
            assert_eq!(
                g,
                vec![0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0],
                "{k:?}"
            );
        }
    }
}
