//! The CUDA path (`--features cuda`): hand-written kernels (`src/kernels/cuda/kernels.cu`, compiled to
//! PTX by nvcc in build.rs) as candle custom operations, where candle's generic operations
//! cost a kernel launch and a full pass over memory each.
//!
//! - [`lstm_last_hidden`]: the LSTM's whole recurrence forward in one launch and back in one
//!   launch plus two cuBLAS GEMMs for the weight gradients, instead of ~13 operations per time
//!   step each way.
//! - [`adam_update`]: one Adam/AdamW update of a flat parameter buffer in one launch, instead
//!   of a dozen element-wise operations.
//! - [`bias_pool_relu`]: bias, 2x2 max-pooling and ReLU after a convolution as one launch
//!   forward and one backward, instead of candle's reductions, comparisons and products.
//! - [`conv2d`]: candle's convolution (im2col + cuBLAS) forward, with a backward pass whose
//!   input gradient is a convolution too (of the output gradient with the flipped kernel)
//!   where candle runs its direct `conv_transpose2d` loop.
//!
//! Each runs where [`crate::Kernels::Fused`] is chosen and the tensor is f32 on a CUDA device;
//! `Kernels::Generic` keeps candle's own operations (the agreement tests compare the two).
//!
//! Allocating device memory, launching a kernel and calling cuBLAS are `unsafe` in cudarc
//! (the compiler cannot check a kernel's arguments against its signature): each such block
//! says what makes it sound.
#![allow(unsafe_code)]
use std::sync::Mutex;

use candle::backend::BackendStorage;
use candle::cuda_backend::cudarc::cublas::{sys::cublasOperation_t, Gemm, GemmConfig};
use candle::cuda_backend::cudarc::driver::{CudaSlice, CudaView, LaunchConfig, PushKernelArg};
use candle::cuda_backend::WrapErr;
use candle::{CudaDevice, CudaStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};

/// The kernels' PTX, built by build.rs from `src/kernels/cuda/kernels.cu`.
const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/kernels.ptx"));
/// The name candle's device caches the loaded module under.
const MODULE: &str = "fmnist-models-kernels";
/// Images per block of threads in the LSTM kernels (`LSTM_IMAGES` in kernels.cu).
const LSTM_IMAGES: usize = 4;
/// Threads per block of the LSTM kernels: one per gate unit for H = 128.
const LSTM_THREADS: u32 = 512;

/// The `cpu_fwd` of an operation that runs on CUDA tensors only (`op2`: two operands, `op3`:
/// three): an error naming it.
macro_rules! cuda_only {
    (op2) => {
        fn cpu_fwd(
            &self,
            _: &candle::CpuStorage,
            _: &Layout,
            _: &candle::CpuStorage,
            _: &Layout,
        ) -> candle::Result<(candle::CpuStorage, Shape)> {
            candle::bail!("{} runs on CUDA tensors only", self.name())
        }
    };
    (op3) => {
        fn cpu_fwd(
            &self,
            _: &candle::CpuStorage,
            _: &Layout,
            _: &candle::CpuStorage,
            _: &Layout,
            _: &candle::CpuStorage,
            _: &Layout,
        ) -> candle::Result<(candle::CpuStorage, Shape)> {
            candle::bail!("{} runs on CUDA tensors only", self.name())
        }
    };
}

/// `storage` under `layout` as an f32 view, which must be contiguous.
fn view<'a>(
    storage: &'a CudaStorage,
    layout: &Layout,
    what: &str,
) -> candle::Result<CudaView<'a, f32>> {
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok(storage.as_cuda_slice::<f32>()?.slice(a..b)),
        None => candle::bail!("{what}: expects a contiguous tensor"),
    }
}

/// A grid of 256-thread blocks covering `n` elements (the kernels loop over the rest).
fn elementwise(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(256).clamp(1, 65_535) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// `src [rows, cols]` transposed into a new buffer `[cols, rows]`.
fn transposed(
    dev: &CudaDevice,
    src: &CudaView<'_, f32>,
    rows: usize,
    cols: usize,
) -> candle::Result<CudaSlice<f32>> {
    let func = dev.get_or_load_custom_func("fmnist_transpose", MODULE, PTX)?;
    // SAFETY: every element is written by the kernel.
    let dst = unsafe { dev.alloc::<f32>(rows * cols)? };
    let (r, c) = (rows as i32, cols as i32);
    let mut b = func.builder();
    b.arg(src).arg(&dst).arg(&r).arg(&c);
    // SAFETY: the arguments match the kernel's signature.
    unsafe { b.launch(elementwise(rows * cols)) }.w()?;
    Ok(dst)
}

/// The LSTM's last hidden state `[B, H]` over `x [B, T, I]` with `[W_ih | b] [4H, I + 1]` and
/// `W_hh [4H, H]`, all on one CUDA device. In training (`train`) the activations are kept for
/// the backward pass; in evaluation nothing is kept and no graph is recorded.
pub(crate) fn lstm_last_hidden(
    x: &Tensor,
    w_in: &Tensor,
    w_hh: &Tensor,
    train: bool,
) -> candle::Result<Tensor> {
    let x = x.contiguous()?;
    let (w_in, w_hh) = (w_in.contiguous()?, w_hh.contiguous()?);
    if !train {
        let op = LstmForward {
            save: false,
            saved: Mutex::new(None),
        };
        return x
            .detach()
            .apply_op3_no_bwd(&w_in.detach(), &w_hh.detach(), &op);
    }
    let op = LstmForward {
        save: x.track_op() || w_in.track_op() || w_hh.track_op(),
        saved: Mutex::new(None),
    };
    x.apply_op3(&w_in, &w_hh, op)
}

/// What the LSTM's forward pass keeps, batch-major as in kernels.cu: the inputs with their 1
/// `[B, T, I + 1]`, the activated gates `[B, T, 4H]`, the cell and hidden state before each
/// step and the cell's tanh after it (`[B, T, H]` each).
struct LstmSaved {
    /// Batch, steps, inputs, hidden units.
    dims: (usize, usize, usize, usize),
    inputs: CudaSlice<f32>,
    gates: CudaSlice<f32>,
    cells: CudaSlice<f32>,
    hiddens: CudaSlice<f32>,
    tanh_cells: CudaSlice<f32>,
}

/// The recurrence forward: `(x, [W_ih | b], W_hh)` to the last hidden state.
struct LstmForward {
    save: bool,
    saved: Mutex<Option<LstmSaved>>,
}

/// The sizes of one recurrence: batch, steps, inputs, hidden units.
fn lstm_dims(
    x: &Shape,
    w_in: &Shape,
    w_hh: &Shape,
) -> candle::Result<(usize, usize, usize, usize)> {
    let (b, t, i) = x.dims3()?;
    let (g4, k) = w_in.dims2()?;
    let (rows, hidden) = w_hh.dims2()?;
    if rows != g4 || g4 != 4 * hidden || k != i + 1 {
        candle::bail!(
            "lstm: inputs of {i} features do not fit [W_ih | b] [{g4}, {k}] and W_hh [{rows}, {hidden}]"
        );
    }
    Ok((b, t, i, hidden))
}

/// Launch geometry of the LSTM kernels for `batch` images, with `shared` floats per block.
fn lstm_launch(batch: usize, shared: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (batch.div_ceil(LSTM_IMAGES).max(1) as u32, 1, 1),
        block_dim: (LSTM_THREADS, 1, 1),
        shared_mem_bytes: (shared * std::mem::size_of::<f32>()) as u32,
    }
}

impl CustomOp3 for LstmForward {
    fn name(&self) -> &'static str {
        "fmnist-lstm-cuda"
    }

    cuda_only!(op3);

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> candle::Result<(CudaStorage, Shape)> {
        let (b, t, i, hidden) = lstm_dims(l1.shape(), l2.shape(), l3.shape())?;
        let g4 = 4 * hidden;
        let dev = s1.device().clone();
        let x = view(s1, l1, "lstm")?;
        let w_in_t = transposed(&dev, &view(s2, l2, "lstm")?, g4, i + 1)?;
        let w_hh_t = transposed(&dev, &view(s3, l3, "lstm")?, g4, hidden)?;
        // SAFETY: the forward kernel writes every element of each buffer it is given.
        let h_last = unsafe { dev.alloc::<f32>(b * hidden)? };
        let alloc = |len: usize| -> candle::Result<CudaSlice<f32>> {
            // SAFETY: as above; a buffer not saved is one element and never touched.
            unsafe { dev.alloc::<f32>(if self.save { len } else { 1 }) }
        };
        let saved = LstmSaved {
            dims: (b, t, i, hidden),
            inputs: alloc(b * t * (i + 1))?,
            gates: alloc(b * t * g4)?,
            cells: alloc(b * t * hidden)?,
            hiddens: alloc(b * t * hidden)?,
            tanh_cells: alloc(b * t * hidden)?,
        };
        let func = dev.get_or_load_custom_func("fmnist_lstm_forward", MODULE, PTX)?;
        let dims = [b, t, i, hidden].map(|d| d as i32);
        let save = i32::from(self.save);
        let mut builder = func.builder();
        builder.arg(&x).arg(&w_in_t).arg(&w_hh_t);
        for d in &dims {
            builder.arg(d);
        }
        builder.arg(&h_last).arg(&save);
        builder
            .arg(&saved.inputs)
            .arg(&saved.gates)
            .arg(&saved.cells)
            .arg(&saved.hiddens)
            .arg(&saved.tanh_cells);
        let shared = LSTM_IMAGES * (2 * hidden + g4 + i);
        // SAFETY: the arguments match the kernel's signature and sizes.
        unsafe { builder.launch(lstm_launch(b, shared)) }.w()?;
        if self.save {
            if let Ok(mut slot) = self.saved.lock() {
                *slot = Some(saved);
            }
        }
        Ok((
            CudaStorage::wrap_cuda_slice(h_last, dev),
            Shape::from((b, hidden)),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w_in: &Tensor,
        w_hh: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, t, i, hidden) = lstm_dims(x.shape(), w_in.shape(), w_hh.shape())?;
        let saved = match self.saved.lock().ok().and_then(|mut s| s.take()) {
            Some(saved) => saved,
            None => {
                // A second backward through the same step: run the forward pass again.
                let again = LstmForward {
                    save: true,
                    saved: Mutex::new(None),
                };
                x.detach()
                    .apply_op3_no_bwd(&w_in.detach(), &w_hh.detach(), &again)?;
                let saved = again.saved.lock().ok().and_then(|mut s| s.take());
                saved.ok_or_else(|| candle::Error::Msg("lstm: forward kept nothing".into()))?
            }
        };
        let op = LstmBackward {
            saved: Mutex::new(Some(saved)),
        };
        let grads = grad_res
            .contiguous()?
            .apply_op2_no_bwd(&w_hh.detach().contiguous()?, &op)?;
        let (g4, k) = (4 * hidden, i + 1 + hidden);
        let dz_len = b * t * g4;
        let weights = grads.narrow(0, dz_len, g4 * k)?.reshape((g4, k))?;
        let d_w_in = weights.narrow(1, 0, i + 1)?;
        let d_w_hh = weights.narrow(1, i + 1, hidden)?;
        let d_x = if x.track_op() {
            let dz = grads.narrow(0, 0, dz_len)?.reshape((b * t, g4))?;
            let w_ih = w_in.detach().narrow(1, 0, i)?.contiguous()?;
            Some(dz.matmul(&w_ih)?.reshape((b, t, i))?)
        } else {
            None
        };
        Ok((d_x, Some(d_w_in), Some(d_w_hh)))
    }
}

/// The recurrence backward: from `(dh_last [B, H], W_hh)` and what the forward pass kept, one
/// flat buffer holding the gates' pre-activation gradients `[B, T, 4H]` and then the weight
/// gradients `[4H, I + 1 + H]` (`[d(W_ih | b) | dW_hh]`, rows of both side by side).
struct LstmBackward {
    saved: Mutex<Option<LstmSaved>>,
}

impl CustomOp2 for LstmBackward {
    fn name(&self) -> &'static str {
        "fmnist-lstm-cuda-backward"
    }

    cuda_only!(op2);

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> candle::Result<(CudaStorage, Shape)> {
        let saved = self
            .saved
            .lock()
            .ok()
            .and_then(|mut s| s.take())
            .ok_or_else(|| candle::Error::Msg("lstm backward: nothing saved".into()))?;
        let (b, t, i, hidden) = saved.dims;
        if l1.shape().dims2()? != (b, hidden) || l2.shape().dims2()? != (4 * hidden, hidden) {
            candle::bail!("lstm backward: gradient or W_hh does not fit the forward pass");
        }
        let g4 = 4 * hidden;
        let (rows, k) = (b * t, i + 1 + hidden);
        let dev = s1.device().clone();
        let dh = view(s1, l1, "lstm backward")?;
        let w_hh = view(s2, l2, "lstm backward")?;
        let dz_len = rows * g4;
        // SAFETY: the kernel writes every gate gradient, the GEMMs every weight gradient.
        let mut out = unsafe { dev.alloc::<f32>(dz_len + g4 * k)? };
        let func = dev.get_or_load_custom_func("fmnist_lstm_backward", MODULE, PTX)?;
        let dims = [b, t, hidden].map(|d| d as i32);
        let mut builder = func.builder();
        builder.arg(&dh).arg(&w_hh);
        for d in &dims {
            builder.arg(d);
        }
        builder
            .arg(&saved.gates)
            .arg(&saved.cells)
            .arg(&saved.tanh_cells)
            .arg(&out);
        let shared = LSTM_IMAGES * (2 * hidden + g4);
        // SAFETY: the arguments match the kernel's signature and sizes.
        unsafe { builder.launch(lstm_launch(b, shared)) }.w()?;
        // Weight gradients dzᵀ·[x, 1] and dzᵀ·h_prev over all B·T rows. cuBLAS is column-major:
        // a row-major [R, n] matrix is its column-major transpose, so each row-major
        // C [4H, n] = dzᵀ·A is computed as Cᵀ = Aᵀ·dz, written with leading dimension k into
        // its columns of the [4H, k] block.
        let blas = dev.cublas_handle();
        let (dz, mut weights) = out.split_at_mut(dz_len);
        for (operand, n, at) in [(&saved.inputs, i + 1, 0), (&saved.hiddens, hidden, i + 1)] {
            let cfg = GemmConfig {
                transa: cublasOperation_t::CUBLAS_OP_N,
                transb: cublasOperation_t::CUBLAS_OP_T,
                m: n as i32,
                n: g4 as i32,
                k: rows as i32,
                alpha: 1.0f32,
                lda: n as i32,
                ldb: g4 as i32,
                beta: 0.0f32,
                ldc: k as i32,
            };
            let mut c = weights.slice_mut(at..);
            // SAFETY: the operands hold rows·n and rows·4H floats; C's last column ends inside
            // the [4H, k] block.
            unsafe { blas.gemm(cfg, operand, &dz, &mut c) }.w()?;
        }
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev),
            Shape::from(dz_len + g4 * k),
        ))
    }
}

/// The hyper-parameters of one Adam or AdamW update at step `t` (from 1).
#[derive(Debug, Clone, Copy)]
pub struct AdamStep {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Weight decay: added to the gradient (Adam) or decoupled (AdamW).
    pub weight_decay: f64,
    pub decoupled: bool,
    pub t: i32,
}

/// One Adam or AdamW update of flat buffers on one CUDA device, in one launch: from the
/// parameters and their gradient `[2, len]` and the first and second moments `[2, len]`, the
/// new parameters and moments `[3, len]`. The arithmetic is fmnist-train's generic update's,
/// in the same order.
pub fn adam_update(params_grads: &Tensor, moments: &Tensor, s: AdamStep) -> candle::Result<Tensor> {
    let op = Adam {
        lr: s.lr as f32,
        beta1: s.beta1 as f32,
        beta2: s.beta2 as f32,
        eps: s.eps as f32,
        weight_decay: s.weight_decay as f32,
        decoupled: s.decoupled,
        bc1: (1.0 - s.beta1.powi(s.t)) as f32,
        sqrt_bc2: (1.0 - s.beta2.powi(s.t)).sqrt() as f32,
    };
    params_grads
        .detach()
        .contiguous()?
        .apply_op2_no_bwd(&moments.detach().contiguous()?, &op)
}

/// The constants of one Adam update (see kernels.cu, `fmnist_adam`).
struct Adam {
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    decoupled: bool,
    bc1: f32,
    sqrt_bc2: f32,
}

impl CustomOp2 for Adam {
    fn name(&self) -> &'static str {
        "fmnist-adam-cuda"
    }

    cuda_only!(op2);

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> candle::Result<(CudaStorage, Shape)> {
        let (_, len) = l1.shape().dims2()?;
        if l1.shape().dims2()? != (2, len) || l2.shape().dims2()? != (2, len) {
            candle::bail!("adam: expects [2, len] parameters with gradients and moments");
        }
        let dev = s1.device().clone();
        let pair = view(s1, l1, "adam")?;
        let moments = view(s2, l2, "adam")?;
        let (theta, grad) = (pair.slice(..len), pair.slice(len..));
        let (m, v) = (moments.slice(..len), moments.slice(len..));
        // SAFETY: the kernel writes all 3·len elements.
        let out = unsafe { dev.alloc::<f32>(3 * len)? };
        let func = dev.get_or_load_custom_func("fmnist_adam", MODULE, PTX)?;
        let (n, decoupled) = (len as i32, i32::from(self.decoupled));
        let mut b = func.builder();
        b.arg(&theta).arg(&grad).arg(&m).arg(&v).arg(&out).arg(&n);
        b.arg(&self.lr)
            .arg(&self.beta1)
            .arg(&self.beta2)
            .arg(&self.eps)
            .arg(&self.weight_decay)
            .arg(&decoupled)
            .arg(&self.bc1)
            .arg(&self.sqrt_bc2);
        // SAFETY: the arguments match the kernel's signature and sizes.
        unsafe { b.launch(elementwise(len)) }.w()?;
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev),
            Shape::from((3, len)),
        ))
    }
}

/// `relu(maxpool2x2(y + bias))` of a convolution's output `y [N, C, H, W]` (odd sizes floored),
/// one launch forward and one backward (which routes each window's gradient to its first
/// maximum, where the output is positive; the bias gradient is that gradient's channel sums).
pub(crate) fn bias_pool_relu(y: &Tensor, bias: &Tensor) -> candle::Result<Tensor> {
    let op = BiasPoolRelu {
        argmax: Mutex::new(None),
    };
    y.contiguous()?.apply_op2(&bias.contiguous()?, op)
}

/// Bias + 2x2 max-pooling + ReLU; keeps each window's place of its maximum.
struct BiasPoolRelu {
    argmax: Mutex<Option<CudaSlice<u8>>>,
}

impl CustomOp2 for BiasPoolRelu {
    fn name(&self) -> &'static str {
        "fmnist-bias-pool-relu-cuda"
    }

    cuda_only!(op2);

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> candle::Result<(CudaStorage, Shape)> {
        let (n, c, h, w) = l1.shape().dims4()?;
        if l2.shape().elem_count() != c {
            candle::bail!(
                "bias-pool-relu: {} biases for {c} channels",
                l2.shape().elem_count()
            );
        }
        let (ph, pw) = (h / 2, w / 2);
        let dev = s1.device().clone();
        let y = view(s1, l1, "bias-pool-relu")?;
        let bias = view(s2, l2, "bias-pool-relu")?;
        let len = n * c * ph * pw;
        // SAFETY: the kernel writes every window's output and place.
        let out = unsafe { dev.alloc::<f32>(len)? };
        // SAFETY: as `out`: the kernel writes every window's place.
        let argmax = unsafe { dev.alloc::<u8>(len.max(1))? };
        let func = dev.get_or_load_custom_func("fmnist_bias_pool_relu", MODULE, PTX)?;
        let dims = [n * c, c, h, w].map(|d| d as i32);
        let mut b = func.builder();
        b.arg(&y).arg(&bias).arg(&out).arg(&argmax);
        for d in &dims {
            b.arg(d);
        }
        // SAFETY: the arguments match the kernel's signature and sizes.
        unsafe { b.launch(elementwise(len)) }.w()?;
        if let Ok(mut slot) = self.argmax.lock() {
            *slot = Some(argmax);
        }
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev),
            Shape::from((n, c, ph, pw)),
        ))
    }

    fn bwd(
        &self,
        y: &Tensor,
        _bias: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> candle::Result<(Option<Tensor>, Option<Tensor>)> {
        let argmax = self
            .argmax
            .lock()
            .ok()
            .and_then(|mut a| a.take())
            .ok_or_else(|| candle::Error::Msg("bias-pool-relu: backward ran twice".into()))?;
        let op = PoolBackward {
            argmax,
            dims: y.dims4()?,
        };
        let d_y = grad_res.contiguous()?.apply_op2_no_bwd(res, &op)?;
        let d_bias = d_y.sum((0, 2, 3))?;
        Ok((Some(d_y), Some(d_bias)))
    }
}

/// The backward pass of [`BiasPoolRelu`]: `(d_out, out)` to `d_y [N, C, H, W]`.
struct PoolBackward {
    argmax: CudaSlice<u8>,
    dims: (usize, usize, usize, usize),
}

impl CustomOp2 for PoolBackward {
    fn name(&self) -> &'static str {
        "fmnist-bias-pool-relu-cuda-backward"
    }

    cuda_only!(op2);

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> candle::Result<(CudaStorage, Shape)> {
        let (n, c, h, w) = self.dims;
        let dev = s1.device().clone();
        let d_out = view(s1, l1, "bias-pool-relu backward")?;
        let out = view(s2, l2, "bias-pool-relu backward")?;
        let len = n * c * h * w;
        // SAFETY: the kernel writes every element.
        let d_y = unsafe { dev.alloc::<f32>(len)? };
        let func = dev.get_or_load_custom_func("fmnist_bias_pool_relu_backward", MODULE, PTX)?;
        let dims = [n * c, h, w].map(|d| d as i32);
        let mut b = func.builder();
        b.arg(&d_out).arg(&out).arg(&self.argmax).arg(&d_y);
        for d in &dims {
            b.arg(d);
        }
        // SAFETY: the arguments match the kernel's signature and sizes.
        unsafe { b.launch(elementwise(len)) }.w()?;
        Ok((
            CudaStorage::wrap_cuda_slice(d_y, dev),
            Shape::from((n, c, h, w)),
        ))
    }
}

/// A convolution (groups 1) of `x [N, C, H, W]` with `kernel [O, C, k, k]`, no bias: candle's
/// own forward (im2col + cuBLAS), and a backward pass whose input gradient, for stride 1, is
/// the convolution of the output gradient with the kernel flipped and its channels swapped
/// (im2col + cuBLAS again) instead of candle's direct `conv_transpose2d` loop. The kernel
/// gradient is candle's (a convolution with the batch as channels).
pub(crate) fn conv2d(
    x: &Tensor,
    kernel: &Tensor,
    padding: usize,
    stride: usize,
    dilation: usize,
) -> candle::Result<Tensor> {
    let y = x
        .detach()
        .conv2d(&kernel.detach(), padding, stride, dilation, 1)?;
    if !(x.track_op() || kernel.track_op()) {
        return Ok(y);
    }
    let op = ConvBackward {
        padding,
        stride,
        dilation,
    };
    x.apply_op3(kernel, &y, op)
}

/// Hands the precomputed output through (one copy) and differentiates the convolution.
struct ConvBackward {
    padding: usize,
    stride: usize,
    dilation: usize,
}

impl CustomOp3 for ConvBackward {
    fn name(&self) -> &'static str {
        "fmnist-conv2d-cuda"
    }

    cuda_only!(op3);

    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> candle::Result<(CudaStorage, Shape)> {
        Ok((s3.try_clone(l3)?, l3.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        kernel: &Tensor,
        _y: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (p, s, d) = (self.padding, self.stride, self.dilation);
        let (_, _, k_h, k_w) = kernel.dims4()?;
        let d_x = if !x.track_op() {
            None
        } else if s == 1 && k_h == k_w && d * (k_h - 1) >= p {
            let dev = kernel.device();
            let reversed: Vec<u32> = (0..k_h as u32).rev().collect();
            let reversed = Tensor::new(reversed.as_slice(), dev)?;
            let flipped = kernel
                .detach()
                .index_select(&reversed, 2)?
                .index_select(&reversed, 3)?
                .transpose(0, 1)?
                .contiguous()?;
            Some(grad.conv2d(&flipped, d * (k_h - 1) - p, 1, d, 1)?)
        } else {
            let out_size = (grad.dim(2)? - 1) * s + d * (k_h - 1) + 1 - 2 * p;
            let out_padding = x.dim(2)? - out_size;
            Some(grad.conv_transpose2d(&kernel.detach(), p, out_padding, s, d)?)
        };
        let d_kernel = x
            .detach()
            .transpose(0, 1)?
            .conv2d(&grad.transpose(0, 1)?, p, d, s, 1)?
            .transpose(0, 1)?;
        let (_, _, g_h, g_w) = d_kernel.dims4()?;
        let d_kernel = if g_h != k_h || g_w != k_w {
            d_kernel.narrow(2, 0, k_h)?.narrow(3, 0, k_w)?
        } else {
            d_kernel
        };
        Ok((d_x, Some(d_kernel), None))
    }
}

/// Agreement tests: they need a CUDA device, and run with `--features cuda` on a GPU machine
/// (`bench/cuda-device-check.sh`). Each compares the CUDA kernels with candle's generic
/// operations on the same device, and with the CPU, forward and every gradient.
#[cfg(test)]
mod tests {
    use candle::{DType, Device, Tensor, Var};
    use rand::{Rng, SeedableRng};

    use crate::{Kernels, ModelConfig, ModelKind};

    fn gpu() -> Device {
        Device::new_cuda(0).expect("these tests need a CUDA device")
    }

    /// `len` values uniform in [-1, 1) from `seed`.
    fn noise(seed: u64, len: usize) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    /// ‖a − b‖ / ‖b‖ over two tensors of one shape, on any devices.
    fn relative_error(a: &Tensor, b: &Tensor) -> f64 {
        assert_eq!(a.dims(), b.dims());
        let host = |t: &Tensor| {
            t.to_dtype(DType::F64)
                .unwrap()
                .to_device(&Device::Cpu)
                .unwrap()
        };
        let (a, b) = (host(a), host(b));
        let (diff, size) = (norm(&(&a - &b).unwrap()), norm(&b));
        assert!(diff.is_finite() && size.is_finite(), "non-finite values");
        diff / size.max(1e-15)
    }

    /// ‖t‖, summed in f64.
    fn norm(t: &Tensor) -> f64 {
        let t = t.to_dtype(DType::F64).unwrap();
        t.sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
            .sqrt()
    }

    /// Logits and every trainable parameter's gradient (by name) of one training step's
    /// forward and backward pass of `kind` on `kernels` and `device`, from the same seed, the
    /// same dropout masks and a fixed loss `sum(logits · r)`.
    fn step(kind: ModelKind, kernels: Kernels, device: &Device) -> (Tensor, Vec<(String, Tensor)>) {
        let mut config = ModelConfig::new(kind);
        config.kernels = kernels;
        let model = config.build(7, device).unwrap();
        model.reseed_dropout(11);
        let batch = 37;
        let x: Vec<f32> = noise(1, batch * 784).iter().map(|v| v.abs()).collect();
        let x = Tensor::from_vec(x, (batch, 1, 28, 28), device).unwrap();
        let r = Tensor::from_vec(noise(2, batch * 10), (batch, 10), device).unwrap();
        let logits = model.forward_t(&x, true).unwrap();
        let loss = (&logits * &r).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let grads = model
            .trainable_vars()
            .into_iter()
            .map(|(name, var)| {
                let g = grads
                    .get(var.as_tensor())
                    .expect("every parameter gets a gradient");
                (name, g.clone())
            })
            .collect();
        (logits, grads)
    }

    #[test]
    fn every_model_agrees_with_the_generic_path_and_the_cpu() {
        let gpu = gpu();
        for kind in ModelKind::ALL {
            let (fused, fused_grads) = step(kind, Kernels::Fused, &gpu);
            for (what, (logits, grads)) in [
                (
                    "candle's generic CUDA path",
                    step(kind, Kernels::Generic, &gpu),
                ),
                ("the CPU", step(kind, Kernels::Fused, &Device::Cpu)),
            ] {
                let e = relative_error(&fused, &logits);
                assert!(e < 1e-4, "{kind:?}: logits differ from {what} by {e:e}");
                // A bias just before a BatchNorm has a gradient of zero in exact arithmetic
                // (the normalization removes any shift), so both sides hold rounding noise: such
                // a gradient must be a vanishing share of the whole model's on both.
                let whole = grads.iter().map(|(_, g)| norm(g)).fold(0.0, f64::hypot);
                for ((name, a), (_, b)) in fused_grads.iter().zip(&grads) {
                    if norm(b) < 1e-5 * whole {
                        let here = norm(a);
                        assert!(
                            here < 1e-5 * whole,
                            "{kind:?}: gradient of {name} is zero on {what}, here {here:e}"
                        );
                        continue;
                    }
                    let e = relative_error(a, b);
                    assert!(
                        e < 1e-3,
                        "{kind:?}: gradient of {name} differs from {what} by {e:e}"
                    );
                }
            }
            println!("{kind:?}: the CUDA kernels agree with the generic path and the CPU");
        }
    }

    #[test]
    fn the_lstm_agrees_at_odd_sizes_including_the_input_gradient() {
        let gpu = gpu();
        // 3 images (not a multiple of the 4 per block), 5 steps, 3 inputs, 8 units.
        let (b, t, i, h) = (3, 5, 3, 8);
        let run = |device: &Device, fused: bool| {
            let var = |seed, shape: &[usize]| {
                let len = shape.iter().product();
                let t = Tensor::from_vec(noise(seed, len), shape, device).unwrap();
                Var::from_tensor(&t).unwrap()
            };
            let (x, w_in, w_hh) = (
                var(3, &[b, t, i]),
                var(4, &[4 * h, i + 1]),
                var(5, &[4 * h, h]),
            );
            let last = if fused {
                super::lstm_last_hidden(x.as_tensor(), w_in.as_tensor(), w_hh.as_tensor(), true)
                    .unwrap()
            } else {
                let lstm = crate::kernels::recurrent::Lstm::new(
                    w_in.as_tensor().narrow(1, 0, i).unwrap(),
                    w_hh.as_tensor().clone(),
                    w_in.as_tensor()
                        .narrow(1, i, 1)
                        .unwrap()
                        .squeeze(1)
                        .unwrap(),
                    Tensor::zeros(4 * h, DType::F32, device).unwrap(),
                    Kernels::Generic,
                );
                lstm.last_hidden_t(x.as_tensor(), true).unwrap()
            };
            let r = Tensor::from_vec(noise(6, b * h), (b, h), device).unwrap();
            let grads = (&last * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let g = |v: &Var| grads.get(v.as_tensor()).unwrap().clone();
            (last, [g(&x), g(&w_in), g(&w_hh)])
        };
        let (fused, fused_grads) = run(&gpu, true);
        let (generic, generic_grads) = run(&Device::Cpu, false);
        let e = relative_error(&fused, &generic);
        assert!(e < 1e-5, "last hidden state differs by {e:e}");
        for (what, (a, b)) in ["x", "[W_ih | b]", "W_hh"]
            .iter()
            .zip(fused_grads.iter().zip(&generic_grads))
        {
            let e = relative_error(a, b);
            assert!(e < 1e-5, "gradient of {what} differs by {e:e}");
        }
    }

    #[test]
    fn convolutions_agree_with_candles_at_every_padding_and_stride() {
        let gpu = gpu();
        for (padding, stride) in [(0, 1), (1, 1), (1, 2), (0, 2)] {
            let run = |device: &Device, fused: bool| {
                let x = Var::from_tensor(
                    &Tensor::from_vec(noise(7, 2 * 3 * 9 * 9), (2, 3, 9, 9), device).unwrap(),
                )
                .unwrap();
                let w = Var::from_tensor(
                    &Tensor::from_vec(noise(8, 5 * 3 * 9), (5, 3, 3, 3), device).unwrap(),
                )
                .unwrap();
                let y = if fused {
                    super::conv2d(x.as_tensor(), w.as_tensor(), padding, stride, 1).unwrap()
                } else {
                    x.as_tensor()
                        .conv2d(w.as_tensor(), padding, stride, 1, 1)
                        .unwrap()
                };
                let r = Tensor::from_vec(noise(9, y.elem_count()), y.dims(), device).unwrap();
                let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
                let g = |v: &Var| grads.get(v.as_tensor()).unwrap().clone();
                (y, g(&x), g(&w))
            };
            let (y, dx, dw) = run(&gpu, true);
            let (y0, dx0, dw0) = run(&Device::Cpu, false);
            for (what, a, b) in [
                ("output", &y, &y0),
                ("input gradient", &dx, &dx0),
                ("kernel gradient", &dw, &dw0),
            ] {
                let e = relative_error(a, b);
                assert!(
                    e < 1e-5,
                    "padding {padding} stride {stride}: {what} differs by {e:e}"
                );
            }
        }
    }

    #[test]
    fn bias_pool_relu_routes_each_gradient_to_its_maximum() {
        let gpu = gpu();
        // One plane of 5x5 holding (7k mod 25)/10 at k = 5·row + column: its windows (the
        // last row and column floored away) have maxima 1.7 at (1,1), 2.4 at (1,2), 2.0 at
        // (2,0) and 1.9 at (3,2). With a bias of -1.8 the first window is cut by the ReLU.
        let y: Vec<f32> = (0..25).map(|k| ((k * 7) % 25) as f32 / 10.0).collect();
        let y = Var::from_tensor(&Tensor::from_vec(y, (1, 1, 5, 5), &gpu).unwrap()).unwrap();
        let bias = Var::from_tensor(&Tensor::new(&[-1.8f32], &gpu).unwrap()).unwrap();
        let out = super::bias_pool_relu(y.as_tensor(), bias.as_tensor()).unwrap();
        let got = out.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (g, e) in got.iter().zip([0.0f32, 0.6, 0.2, 0.1]) {
            assert!((g - e).abs() < 1e-6, "pooled {got:?}");
        }
        let d_out = Tensor::new(&[[[[1f32, 2.0], [3.0, 4.0]]]], &gpu).unwrap();
        let grads = (&out * &d_out)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let dy = grads.get(y.as_tensor()).unwrap();
        let dy = dy.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mut expected = [0f32; 25];
        (expected[7], expected[10], expected[17]) = (2.0, 3.0, 4.0);
        assert_eq!(dy, expected.to_vec());
        let d_bias = grads
            .get(bias.as_tensor())
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(d_bias, vec![9.0]);
    }
}
