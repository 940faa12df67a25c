//! The LSTM layer, whose CPU path runs the whole recurrence as one operation.
//!
//! candle's LSTM step is ~15 graph operations per time step (two matmuls, bias adds, four
//! gate chunks, five activations, products), each allocating its output and each adding a
//! node to the backward pass. Here the input projection of all time steps (one GEMM per
//! block of images) and the recurrence (one `h·W_hhᵀ` GEMM and the fused gate arithmetic per
//! step) are a single custom op that keeps its gate activations for a hand-written backward
//! through time (one GEMM per step, the weights' and the input's gradients one GEMM each per
//! block at the end).
//! Images never meet in the recurrence, so blocks of images run it in parallel from the first
//! step to the last, one thread per block and no barrier between the threads at any step.
//! In training everything is batch-major (`[B, T, ·]`), so a block's steps are one contiguous
//! run of each buffer; each step's GEMM accumulates straight into that step's rows of the
//! projections (rows `T` apart), with no copy in or out and no allocation per step.
//! Evaluation of the last state has a path of its own: each step one GEMM of the rows
//! `[x_t, 1, h]` against all the weights, nothing kept. Every step's state (for a layer above
//! or attention) comes from the training path in both, its saved activations dropped at once
//! in evaluation.
//!
//! The generic path (CUDA, Metal, `Kernels::Generic`) is built from candle operations in as
//! few of them as candle allows: per step one GEMM of the rows `[x_t, 1, h]` against the same
//! stacked weights as evaluation, one sigmoid over all four gates, one tanh and the products
//! and sums of the state update (candle's own `LSTM` spends about twice as many, transposing
//! the weights and adding the biases at every step).
use std::sync::Mutex;

use candle::{CpuStorage, CustomOp2, CustomOp3, Device, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::kernels::{
    blocks_of, f32_slice, gemm_into, gemm_strided, output_buffer, simd, sum_blocks, transpose,
    Kernels, Strided,
};

/// A single-layer LSTM (PyTorch's gate order i, f, g, o) read for its last hidden state or
/// for every step's.
#[derive(Debug, Clone)]
pub struct Lstm {
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor,
    b_hh: Tensor,
    kernels: Kernels,
}

impl Lstm {
    /// `w_ih [4H, I]`, `w_hh [4H, H]` and the two biases `[4H]`.
    pub fn new(w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor, kernels: Kernels) -> Self {
        Lstm {
            w_ih,
            w_hh,
            b_ih,
            b_hh,
            kernels,
        }
    }

    /// The same layer (sharing its weights) running on `kernels`.
    pub fn with_kernels(&self, kernels: Kernels) -> Self {
        Lstm {
            kernels,
            ..self.clone()
        }
    }

    /// The hidden state `[B, H]` after the last step of `x [B, T, I]`, from a zero state.
    /// In evaluation (`train` false) the fused path records no graph and keeps no activations.
    pub fn last_hidden_t(&self, x: &Tensor, train: bool) -> candle::Result<Tensor> {
        #[cfg(feature = "cuda")]
        if self.kernels.fuse_cuda(x) {
            let w_in = self.input_weights()?;
            return crate::kernels::cuda::lstm_last_hidden(x, &w_in, &self.w_hh, train);
        }
        if !self.kernels.fuse(x) {
            return generic_steps(x, &self.stacked_weights()?, false);
        }
        if train {
            return recurrence(x, &self.input_weights()?, &self.w_hh, false);
        }
        x.contiguous()?
            .detach()
            .apply_op2(&self.stacked_weights()?.detach(), Evaluation)
    }

    /// The hidden state after every step of `x [B, T, I]`, `[B, T, H]`, from a zero state:
    /// what a second layer or an attention over the steps reads. The fused path is
    /// [`Recurrence`] keeping every step's state (on CUDA, the generic path).
    pub fn hidden_states_t(&self, x: &Tensor, train: bool) -> candle::Result<Tensor> {
        if !self.kernels.fuse(x) {
            return generic_steps(x, &self.stacked_weights()?, true);
        }
        let w_in = self.input_weights()?;
        if train {
            return recurrence(x, &w_in, &self.w_hh, true);
        }
        recurrence(&x.detach(), &w_in.detach(), &self.w_hh.detach(), true)
    }

    /// `[W_ih | b_ih + b_hh]`, `[4H, I + 1]`: the input weights against the rows `[x_t, 1]`, the
    /// biases riding in the input projection's GEMM as one more weight column against an input
    /// of 1 (so their gradient comes out of the same GEMM as `W_ih`'s).
    fn input_weights(&self) -> candle::Result<Tensor> {
        let bias = (&self.b_ih + &self.b_hh)?.unsqueeze(1)?;
        Tensor::cat(&[&self.w_ih, &bias], 1)
    }

    /// `[W_ih | b_ih + b_hh | W_hh]`, `[4H, I + 1 + H]`: all the weights against the rows
    /// `[x_t, 1, h]` of a step, the biases against the input of 1.
    fn stacked_weights(&self) -> candle::Result<Tensor> {
        let bias = (&self.b_ih + &self.b_hh)?.unsqueeze(1)?;
        Tensor::cat(&[&self.w_ih, &bias, &self.w_hh], 1)
    }
}

/// The generic path from candle operations, each step one GEMM of the rows `[x_t, 1, h]`
/// against the stacked weights `[W_ih | b_ih + b_hh | W_hh]` (`[4H, I + 1 + H]`), then one sigmoid over all four gates (the cell gate's sigmoid is computed and not used:
/// cheaper than a fifth operation in the graph) and the cell gate's tanh. A first layer's
/// input rows are data, so splitting them per step adds nothing to the backward pass;
/// splitting a tracked tensor would (the backward of each step's narrow is a concatenation the
/// size of the whole tensor), which is what a layer above the first pays here, reading the
/// tracked states of the one below. The last hidden state `[B, H]`, or with `every_step` the
/// hidden state after each step `[B, T, H]`.
fn generic_steps(x: &Tensor, stacked_weights: &Tensor, every_step: bool) -> candle::Result<Tensor> {
    let (batch, steps, inputs) = x.dims3()?;
    let hidden = stacked_weights.dim(0)? / 4;
    // The inputs with their 1, step-major `[T, B, I + 1]`: each step's rows are then one
    // contiguous block, the only layout candle's CUDA matmul takes for a left operand.
    let ones = Tensor::ones((batch, steps, 1), x.dtype(), x.device())?;
    let rows = Tensor::cat(&[x, &ones], 2)?.transpose(0, 1)?.contiguous()?;
    let weights = stacked_weights.t()?;
    // The first step starts from a zero state: its GEMM leaves out the recurrent rows. A
    // copy, so that the operand is a whole transposed matrix (candle's CUDA matmul takes no
    // other strides).
    let input_weights = stacked_weights
        .narrow(1, 0, inputs + 1)?
        .contiguous()?
        .t()?;
    // The state (h, c) after the last step; none before the first.
    let mut state: Option<(Tensor, Tensor)> = None;
    let mut states = Vec::with_capacity(if every_step { steps } else { 0 });
    for step in 0..steps {
        let rows_t = rows.get(step)?;
        let z = match &state {
            None => rows_t.matmul(&input_weights)?,
            Some((h, _)) => Tensor::cat(&[&rows_t, h], 1)?.matmul(&weights)?,
        };
        let gates = candle_nn::ops::sigmoid(&z)?;
        let cell_gate = z.narrow(1, 2 * hidden, hidden)?.tanh()?;
        let input_gate = gates.narrow(1, 0, hidden)?;
        let output_gate = gates.narrow(1, 3 * hidden, hidden)?;
        let c = match &state {
            None => (input_gate * cell_gate)?,
            Some((_, c)) => {
                let forget_gate = gates.narrow(1, hidden, hidden)?;
                ((forget_gate * c)? + (input_gate * cell_gate)?)?
            }
        };
        let h = (output_gate * c.tanh()?)?;
        if every_step {
            states.push(h.clone());
        }
        state = Some((h, c));
    }
    if every_step {
        return Tensor::stack(&states, 1);
    }
    state
        .map(|(h, _)| h)
        .ok_or_else(|| candle::Error::Msg("empty sequence".into()))
}

/// The fused path: [`Recurrence`] on the input, `[W_ih | b_ih + b_hh]` and `W_hh`. The only
/// tensors of the graph are the weights and the output (the last hidden state, or with
/// `every_step` every step's): candle's backward, which zeroes a buffer for each tensor's
/// gradient and adds into it, never touches the gates or the cells.
fn recurrence(
    x: &Tensor,
    w_in: &Tensor,
    w_hh: &Tensor,
    every_step: bool,
) -> candle::Result<Tensor> {
    let op = Recurrence {
        every_step,
        save: x.track_op() || w_in.track_op() || w_hh.track_op(),
        saved: Mutex::new(None),
    };
    x.contiguous()?.apply_op3(w_in, w_hh, op)
}

/// What the forward pass keeps for the backward pass, each batch-major (rows image, step):
/// the inputs with their 1 `[B, T, I + 1]`, the activated gates (i, f, g, o) `[B, T, 4H]`, the
/// cell and hidden state before each step `[B, T, H]` (zero at the first), and the cell's tanh
/// after each step `[B, T, H]`.
struct Saved {
    inputs: Vec<f32>,
    gates: Vec<f32>,
    cells: Vec<f32>,
    hiddens: Vec<f32>,
    tanh_cells: Vec<f32>,
}

/// The LSTM over `x [B, T, I]` with `[W_ih | b] [4H, I + 1]` and `W_hh [4H, H]`, to the last
/// hidden state `[B, H]` (or every step's, `[B, T, H]`). Images never meet in the recurrence,
/// so blocks of images run it in parallel, each from its input projection to its last step
/// (and back) on one thread.
struct Recurrence {
    /// Output the hidden state after every step, not only the last.
    every_step: bool,
    /// Keep the activations (a backward pass may follow).
    save: bool,
    saved: Mutex<Option<Saved>>,
}

/// Images per block of the training path, whatever the thread count: the weight gradients
/// are sums of per-block shares added in block order, so a fixed block gives the same bits on
/// any number of threads.
const TRAIN_BLOCK: usize = 64;

/// The sizes of one recurrence.
#[derive(Debug, Clone, Copy)]
struct Dims {
    steps: usize,
    inputs: usize,
    hidden: usize,
}

impl Dims {
    /// Values per image of the inputs (with their 1), the gates and one state.
    fn per_image(&self) -> (usize, usize, usize) {
        let t = self.steps;
        (t * (self.inputs + 1), t * 4 * self.hidden, t * self.hidden)
    }
}

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// `eˣ` without libm: Cephes' `expf` (range reduction by ln 2 in two parts, a degree-6
/// polynomial, the power of two put in the exponent bits), branch-free so that the gate loops
/// vectorize; libm's `expf` is a scalar call per element. Relative error below 3e-7;
/// arguments are clamped to [-87, 88], where the result stays a normal float.
#[inline(always)]
fn exp(x: f32) -> f32 {
    // Adding 1.5·2²³ rounds to the nearest integer n, which then sits in the low mantissa
    // bits: no rounding call, and no float-to-int cast (Rust's saturates, which is scalar).
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = (x - n * 0.693_359_4) - n * -2.121_944_4e-4;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    let biased = shifted
        .to_bits()
        .wrapping_sub(ROUND.to_bits())
        .wrapping_add(127);
    y * f32::from_bits(biased << 23)
}

/// tanh through `exp` (libm's `tanhf` goes through the much slower `expm1f`); absolute
/// error ~1e-7, which is all the gate arithmetic needs.
#[inline(always)]
fn tanh(x: f32) -> f32 {
    2.0 * sigmoid(2.0 * x) - 1.0
}

/// One row of gates `[4H]` as its four gates (i, f, g, o) of `hidden` values each.
#[inline(always)]
fn gate_rows(row: &mut [f32], hidden: usize) -> [&mut [f32]; 4] {
    let (i, rest) = row.split_at_mut(hidden);
    let (f, rest) = rest.split_at_mut(hidden);
    let (g, o) = rest.split_at_mut(hidden);
    [i, f, g, &mut o[..hidden]]
}

/// One image's step: activates its gate row `[4H]` (pre-activations in, i, f, g, o out) and
/// computes its cell, the cell's tanh and its hidden state from the previous cell. A function
/// of its own so that the compiler knows the slices apart and vectorizes without alias checks.
#[inline(always)]
fn activate_row(g: &mut [f32], c_prev: &[f32], c: &mut [f32], tc: &mut [f32], h: &mut [f32]) {
    let hidden = h.len();
    let [gi, gf, gg, go] = gate_rows(g, hidden);
    // Equal lengths, stated once, let the loop run without bounds checks.
    let (c, c_prev, tc) = (&mut c[..hidden], &c_prev[..hidden], &mut tc[..hidden]);
    for j in 0..hidden {
        let i = sigmoid(gi[j]);
        let f = sigmoid(gf[j]);
        let cell = tanh(gg[j]);
        let o = sigmoid(go[j]);
        c[j] = f * c_prev[j] + i * cell;
        tc[j] = tanh(c[j]);
        h[j] = o * tc[j];
        (gi[j], gf[j], gg[j], go[j]) = (i, f, cell, o);
    }
}

/// One image's step backward, in place: `g [4H]` holds its activated gates and becomes their
/// pre-activation gradients, from the previous cell, the cell's tanh and the gradient reaching
/// its hidden state; `dc` carries the cell gradient from this step to the previous one.
#[inline(always)]
fn differentiate_row(g: &mut [f32], c_prev: &[f32], tanh_c: &[f32], dh: &[f32], dc: &mut [f32]) {
    let hidden = dc.len();
    let [gi, gf, gg, go] = gate_rows(g, hidden);
    let (c_prev, tanh_c, dh) = (&c_prev[..hidden], &tanh_c[..hidden], &dh[..hidden]);
    for j in 0..hidden {
        let (i, f, cell, o) = (gi[j], gf[j], gg[j], go[j]);
        let tc = tanh_c[j];
        let dcell_total = dc[j] + dh[j] * o * (1.0 - tc * tc);
        gi[j] = dcell_total * cell * i * (1.0 - i);
        gf[j] = dcell_total * c_prev[j] * f * (1.0 - f);
        gg[j] = dcell_total * i * (1.0 - cell * cell);
        go[j] = dh[j] * tc * o * (1.0 - o);
        dc[j] = dcell_total * f;
    }
}

/// The recurrence over `x [B, T, I]`: the last hidden states `[B, H]` and what the backward
/// pass needs.
fn forward(x: &[f32], w_in: &[f32], w_hh: &[f32], dims: Dims) -> (Vec<f32>, Saved) {
    let (per_input, per_gates, per_state) = dims.per_image();
    let (hidden, i) = (dims.hidden, dims.inputs);
    let b = x.len() / (dims.steps * i).max(1);
    let block = TRAIN_BLOCK;
    // Every buffer is written in full before it is read: the inputs here, the gates by the
    // projection's GEMM, the states before the first step by `forward_block` and every later
    // one (and the last hidden states) by the step before.
    let mut inputs = output_buffer(b * per_input);
    for (row, x) in inputs.chunks_exact_mut(i + 1).zip(x.chunks_exact(i)) {
        row[..i].copy_from_slice(x);
        row[i] = 1.0;
    }
    let mut saved = Saved {
        inputs,
        gates: output_buffer(b * per_gates),
        cells: output_buffer(b * per_state),
        hiddens: output_buffer(b * per_state),
        tanh_cells: output_buffer(b * per_state),
    };
    let mut last = output_buffer(b * hidden);
    // The weights as the GEMMs' right operands `[I + 1, 4H]` and `[H, 4H]`, row-major.
    let (w_in, w_hh) = (transpose(w_in, i + 1), transpose(w_hh, hidden));
    saved
        .gates
        .par_chunks_mut(block * per_gates)
        .zip(saved.inputs.par_chunks(block * per_input))
        .zip(saved.cells.par_chunks_mut(block * per_state))
        .zip(saved.hiddens.par_chunks_mut(block * per_state))
        .zip(saved.tanh_cells.par_chunks_mut(block * per_state))
        .zip(last.par_chunks_mut(block * hidden))
        .for_each(
            |(((((gates, inputs), cells), hiddens), tanh_cells), last)| {
                let n = last.len() / hidden;
                let (rows, g4) = (n * dims.steps, 4 * hidden);
                let w_in = Strided::dense(&w_in, g4);
                let inputs = Strided::dense(inputs, i + 1);
                gemm_strided(gates, g4, inputs, w_in, (rows, i + 1, g4), false);
                forward_block([gates, cells, hiddens, tanh_cells], last, &w_hh, dims);
            },
        );
    (last, saved)
}

/// One block of `n` images through every step: `gates [n, T, 4H]` (projections in, activated
/// gates out); the cells and hidden states before each step and the cells' tanh after it
/// (`[n, T, H]`; the states before the first step are zero); the last hidden states `[n, H]`.
/// `w_hh_t` is `W_hhᵀ`, `[H, 4H]`.
fn forward_block(
    [gates, cells, hiddens, tanh_cells]: [&mut [f32]; 4],
    last: &mut [f32],
    w_hh_t: &[f32],
    dims: Dims,
) {
    let (t, hidden) = (dims.steps, dims.hidden);
    let g4 = 4 * hidden;
    let n = last.len() / hidden;
    let mut last_cell = vec![0f32; hidden];
    for state in cells
        .chunks_exact_mut(t * hidden)
        .chain(hiddens.chunks_exact_mut(t * hidden))
    {
        state[..hidden].fill(0.0);
    }
    for step in 0..t {
        if step > 0 {
            // This step's gate rows (T apart) += its hidden rows · W_hhᵀ.
            let h = Strided {
                data: &hiddens[step * hidden..],
                row: t * hidden,
                col: 1,
            };
            let w = Strided::dense(w_hh_t, g4);
            gemm_strided(&mut gates[step * g4..], t * g4, h, w, (n, hidden, g4), true);
        }
        for ((((g, c), h), tc), h_last) in gates
            .chunks_exact_mut(t * g4)
            .zip(cells.chunks_exact_mut(t * hidden))
            .zip(hiddens.chunks_exact_mut(t * hidden))
            .zip(tanh_cells.chunks_exact_mut(t * hidden))
            .zip(last.chunks_exact_mut(hidden))
        {
            let g = &mut g[step * g4..][..g4];
            let tc = &mut tc[step * hidden..][..hidden];
            // The new state goes to the next step's slot, or out after the last step.
            let (c_prev, c_next) = c.split_at_mut((step + 1) * hidden);
            let c_prev = &c_prev[step * hidden..];
            let c_next = c_next.get_mut(..hidden).unwrap_or(&mut last_cell);
            let h_next = match h.get_mut((step + 1) * hidden..) {
                Some(next) if !next.is_empty() => &mut next[..hidden],
                _ => &mut *h_last,
            };
            simd(
                #[inline(always)]
                || activate_row(g, c_prev, c_next, tc, h_next),
            );
        }
    }
}

impl CustomOp3 for Recurrence {
    fn name(&self) -> &'static str {
        "fmnist-lstm-recurrence"
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
        let (b, t, i) = l1.shape().dims3()?;
        let (g4, k) = l2.shape().dims2()?;
        let (rows, hidden) = l3.shape().dims2()?;
        if rows != g4 || g4 != 4 * hidden || k != i + 1 {
            candle::bail!(
                "lstm: inputs of {i} features do not fit [W_ih | b] [{g4}, {k}] and W_hh [{rows}, {hidden}]"
            );
        }
        let x = f32_slice(s1, l1, "lstm")?;
        let w_in = f32_slice(s2, l2, "lstm")?;
        let w_hh = f32_slice(s3, l3, "lstm")?;
        let dims = Dims {
            steps: t,
            inputs: i,
            hidden,
        };
        let (h, saved) = forward(x, w_in, w_hh, dims);
        let out = if self.every_step {
            // The state after step s is the one kept before step s + 1; after the last, `h`.
            let mut all = output_buffer(b * t * hidden);
            for ((out, before), last) in all
                .chunks_exact_mut(t * hidden)
                .zip(saved.hiddens.chunks_exact(t * hidden))
                .zip(h.chunks_exact(hidden))
            {
                let (steps, end) = out.split_at_mut((t - 1) * hidden);
                steps.copy_from_slice(&before[hidden..]);
                end.copy_from_slice(last);
            }
            (CpuStorage::F32(all), Shape::from((b, t, hidden)))
        } else {
            (CpuStorage::F32(h), Shape::from((b, hidden)))
        };
        if let Ok(mut slot) = self.saved.lock() {
            *slot = self.save.then_some(saved);
        }
        Ok(out)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w_in: &Tensor,
        w_hh: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, t, i) = x.dims3()?;
        let (g4, hidden) = w_hh.dims2()?;
        let dims = Dims {
            steps: t,
            inputs: i,
            hidden,
        };
        let host = |w: &Tensor| w.detach().flatten_all()?.to_vec1::<f32>();
        let (w_in, w_hh) = (host(w_in)?, host(w_hh)?);
        let mut saved = match self.saved.lock().ok().and_then(|mut k| k.take()) {
            Some(s) => s,
            None => forward(&host(x)?, &w_in, &w_hh, dims).1,
        };
        let (per_input, per_gates, per_state) = dims.per_image();
        let block = TRAIN_BLOCK;
        // The gradient reaching the last hidden state starts the recursion; with every step's
        // state out, each earlier step's joins it on the way back.
        let grad = host(grad_res)?;
        let (mut dh, step_grads) = if self.every_step {
            let last = grad
                .chunks_exact(t * hidden)
                .flat_map(|g| &g[(t - 1) * hidden..])
                .copied()
                .collect();
            let blocks = grad.chunks(block * t * hidden).map(Some).collect();
            (last, blocks)
        } else {
            (grad, vec![None; b.div_ceil(block)])
        };
        // Per block, its share of the gradients of [W_ih | b] and W_hh, summed in block order
        // after (so the sum does not depend on the thread count); and the input gradient.
        let (dw_in, dw_hh) = (g4 * (i + 1), g4 * hidden);
        // Both written in full by the GEMMs below before anything reads them.
        let mut partials = output_buffer(b.div_ceil(block) * (dw_in + dw_hh));
        let mut dx = output_buffer(if x.track_op() { b * t * i } else { 0 });
        let mut dx_blocks = blocks_of(&mut dx, block * t * i, b * t * i);
        saved
            .gates
            .par_chunks_mut(block * per_gates)
            .zip(dh.par_chunks_mut(block * hidden))
            .zip(partials.par_chunks_mut(dw_in + dw_hh))
            .zip(dx_blocks.par_iter_mut())
            .zip(step_grads.par_iter())
            .enumerate()
            .for_each(|(blk, ((((d, dh), partial), dx), step_grads))| {
                let at = |per: usize| blk * block * per;
                let n = dh.len() / hidden;
                let cells = &saved.cells[at(per_state)..][..n * per_state];
                let tanh_cells = &saved.tanh_cells[at(per_state)..][..n * per_state];
                backward_block(d, dh, *step_grads, [cells, tanh_cells], &w_hh, dims);
                // d [n·T, 4H] now holds the gate gradients; the weights' gradients are dᵀ times
                // the GEMMs' inputs, the input gradient d times W_ih.
                let rows = n * t;
                let d_t = Strided::transposed(d, g4);
                let inputs = &saved.inputs[at(per_input)..][..n * per_input];
                let hiddens = &saved.hiddens[at(per_state)..][..n * per_state];
                let (p_in, p_hh) = partial.split_at_mut(dw_in);
                let inputs = Strided::dense(inputs, i + 1);
                gemm_strided(p_in, i + 1, d_t, inputs, (g4, rows, i + 1), false);
                let hiddens = Strided::dense(hiddens, hidden);
                gemm_strided(p_hh, hidden, d_t, hiddens, (g4, rows, hidden), false);
                if let Some(dx) = dx {
                    let w_ih = Strided::dense(&w_in, i + 1);
                    gemm_strided(dx, i, Strided::dense(d, g4), w_ih, (rows, g4, i), false);
                }
            });
        let mut sums = output_buffer(dw_in + dw_hh);
        sum_blocks(&mut sums, &partials);
        let d_w_hh = Tensor::from_vec(sums.split_off(dw_in), (g4, hidden), &Device::Cpu)?;
        let d_w_in = Tensor::from_vec(sums, (g4, i + 1), &Device::Cpu)?;
        let d_x = if dx.is_empty() {
            None
        } else {
            Some(Tensor::from_vec(dx, (b, t, i), &Device::Cpu)?)
        };
        Ok((d_x, Some(d_w_in), Some(d_w_hh)))
    }
}

/// One block of `n` images back through every step: from the gradient `dh [n, H]` of the last
/// hidden states (and `step_grads [n, T, H]`, the gradient of every step's state, where the
/// recurrence output them all) and what [`forward_block`] kept, `gates [n, T, 4H]` turns from
/// the activated gates into their pre-activation gradients; `dh` carries the hidden-state
/// gradient from step to step.
fn backward_block(
    gates: &mut [f32],
    dh: &mut [f32],
    step_grads: Option<&[f32]>,
    [cells, tanh_cells]: [&[f32]; 2],
    w_hh: &[f32],
    dims: Dims,
) {
    let (t, hidden) = (dims.steps, dims.hidden);
    let g4 = 4 * hidden;
    let n = dh.len() / hidden;
    let mut dc = vec![0f32; n * hidden];
    for step in (0..t).rev() {
        for (img, (dh, dc)) in dh
            .chunks_exact(hidden)
            .zip(dc.chunks_exact_mut(hidden))
            .enumerate()
        {
            let (row, state) = ((img * t + step) * g4, (img * t + step) * hidden);
            let g = &mut gates[row..][..g4];
            let (c_prev, tc) = (&cells[state..][..hidden], &tanh_cells[state..][..hidden]);
            simd(
                #[inline(always)]
                || differentiate_row(g, c_prev, tc, dh, dc),
            );
        }
        if step > 0 {
            // dh = this step's gate gradients (rows T apart) · W_hh.
            let d = Strided {
                data: &gates[step * g4..],
                row: t * g4,
                col: 1,
            };
            let w = Strided::dense(w_hh, hidden);
            gemm_strided(dh, hidden, d, w, (n, g4, hidden), false);
            if let Some(grads) = step_grads {
                // The state before this step was the previous step's output.
                for (dh, g) in dh
                    .chunks_exact_mut(hidden)
                    .zip(grads.chunks_exact(t * hidden))
                {
                    let g = &g[(step - 1) * hidden..][..hidden];
                    dh.iter_mut().zip(g).for_each(|(d, g)| *d += g);
                }
            }
        }
    }
}

/// Most images per block of the evaluation path. A block runs all its steps on one thread;
/// the images are split evenly over the threads, in blocks of at most this many (measured
/// on 1,000-image chunks: 64 per block ran at 20,000 images/s, 128 at 23,500, 500 at 25,800;
/// larger blocks amortize the GEMM's packing of the weights at every step).
const EVAL_BLOCK: usize = 512;

/// Evaluation: the last hidden state `[B, H]` of `x [B, T, I]` under the weights
/// `[W_ih | b_ih + b_hh | W_hh]` (`[4H, I + 1 + H]`), with no graph and nothing kept. Blocks of
/// images run in parallel, each step one GEMM of the rows `[x_t, 1, h_{t-1}]` against the
/// weights: no `[T·B, 4H]` projections, and no barrier between threads at every step.
struct Evaluation;

impl CustomOp2 for Evaluation {
    fn name(&self) -> &'static str {
        "fmnist-lstm-evaluation"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle::Result<(CpuStorage, Shape)> {
        let (b, t, i) = l1.shape().dims3()?;
        let (g4, k) = l2.shape().dims2()?;
        let hidden = g4 / 4;
        if g4 != 4 * hidden || k != i + 1 + hidden {
            candle::bail!("lstm: weights [{g4}, {k}] do not fit inputs of {i} features");
        }
        let x = f32_slice(s1, l1, "lstm")?;
        // The weights as each step's GEMM's right operand, `[I + 1 + H, 4H]`.
        let w = transpose(f32_slice(s2, l2, "lstm")?, k);
        let block = b
            .div_ceil(rayon::current_num_threads())
            .clamp(1, EVAL_BLOCK);
        let mut out = vec![0f32; b * hidden];
        out.par_chunks_mut(block * hidden)
            .zip(x.par_chunks(block * t * i))
            .for_each(|(out, x)| last_hidden_block(x, &w, (t, i, hidden), out));
        Ok((CpuStorage::F32(out), Shape::from((b, hidden))))
    }
}

/// One block of [`Evaluation`]: `x [n, T, I]` in, the last hidden states `[n, H]` out; `w` is
/// the weights transposed, `[I + 1 + H, 4H]`.
fn last_hidden_block(x: &[f32], w: &[f32], (t, i, hidden): (usize, usize, usize), out: &mut [f32]) {
    let (n, k, g4) = (out.len() / hidden, i + 1 + hidden, 4 * hidden);
    // Each image's GEMM row: its step's input, a 1 for the bias, its previous hidden state,
    // which the activation writes in place for the next step.
    let mut rows = vec![0f32; n * k];
    rows.chunks_exact_mut(k).for_each(|r| r[i] = 1.0);
    let mut gates = vec![0f32; n * g4];
    let mut cells = vec![0f32; 2 * n * hidden];
    let mut tanh_cell = vec![0f32; hidden];
    for step in 0..t {
        for (image, row) in rows.chunks_exact_mut(k).enumerate() {
            row[..i].copy_from_slice(&x[(image * t + step) * i..][..i]);
        }
        gemm_into(&mut gates, &rows, w, (n, k, g4), false, false);
        let (even, odd) = cells.split_at_mut(n * hidden);
        let (c_prev, c) = if step % 2 == 0 {
            (even, odd)
        } else {
            (odd, even)
        };
        for (((g, row), c_prev), c) in gates
            .chunks_exact_mut(g4)
            .zip(rows.chunks_exact_mut(k))
            .zip(c_prev.chunks_exact(hidden))
            .zip(c.chunks_exact_mut(hidden))
        {
            let h = &mut row[i + 1..];
            simd(
                #[inline(always)]
                || activate_row(g, c_prev, c, &mut tanh_cell, h),
            );
        }
    }
    for (o, row) in out.chunks_exact_mut(hidden).zip(rows.chunks_exact(k)) {
        o.copy_from_slice(&row[i + 1..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle::{DType, Var};

    #[test]
    fn both_paths_agree_with_candles_lstm_forward_and_all_gradients() {
        let dev = Device::Cpu;
        let (b, t, i, h) = (3, 5, 4, 6);
        let vars: Vec<Var> = [(4 * h, i), (4 * h, h)]
            .iter()
            .map(|&s| Var::randn(0f32, 0.5, s, &dev).unwrap())
            .chain(
                [4 * h, 4 * h]
                    .iter()
                    .map(|&s| Var::randn(0f32, 0.5, s, &dev).unwrap()),
            )
            .collect();
        let lstm = lstm_of([0, 1, 2, 3].map(|k| vars[k].as_tensor().clone()));
        let x = Var::randn(0f32, 1.0, (b, t, i), &dev).unwrap();
        let up = Tensor::randn(0f32, 1.0, (b, h), &dev).unwrap();
        let weights = [0, 1, 2, 3].map(|k| vars[k].as_tensor());
        let run = |k: Option<Kernels>| {
            let y = match k {
                Some(k) => lstm
                    .with_kernels(k)
                    .last_hidden_t(x.as_tensor(), true)
                    .unwrap(),
                None => candle_last_hidden(weights, x.as_tensor()),
            };
            let grads = (&y * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let mut all = vec![flat(&y)];
            for v in vars.iter().chain([&x]) {
                all.push(flat(grads.get(v.as_tensor()).unwrap()));
            }
            all
        };
        // Evaluation of data (not a Var) gives the same state, with no graph behind it.
        let data = x.as_detached_tensor();
        let eval = lstm.last_hidden_t(&data, false).unwrap();
        assert!(!eval.track_op());
        let train = lstm.last_hidden_t(&data, true).unwrap();
        assert!(train.track_op());
        assert_close(&flat(&eval), &flat(&train), "evaluation h");
        let reference = run(None);
        for kernels in [Kernels::Fused, Kernels::Generic] {
            let ours = run(Some(kernels));
            for (what, (a, b)) in ["h", "dW_ih", "dW_hh", "db_ih", "db_hh", "dx"]
                .iter()
                .zip(ours.iter().zip(&reference))
            {
                assert_close(a, b, &format!("{kernels:?} {what}"));
            }
        }
    }

    #[test]
    fn every_steps_states_and_their_gradients_agree_with_candles_lstm() {
        let dev = Device::Cpu;
        // More images than a training block, so that a block boundary is crossed.
        let (b, t, i, h) = (TRAIN_BLOCK + 3, 5, 4, 6);
        let vars: Vec<Var> = [vec![4 * h, i], vec![4 * h, h], vec![4 * h], vec![4 * h]]
            .iter()
            .map(|s| Var::randn(0f32, 0.5, s.as_slice(), &dev).unwrap())
            .collect();
        let lstm = lstm_of([0, 1, 2, 3].map(|k| vars[k].as_tensor().clone()));
        let x = Var::randn(0f32, 1.0, (b, t, i), &dev).unwrap();
        let up = Tensor::randn(0f32, 1.0, (b, t, h), &dev).unwrap();
        let weights = [0, 1, 2, 3].map(|k| vars[k].as_tensor());
        let run = |k: Option<Kernels>| {
            let y = match k {
                Some(k) => lstm
                    .with_kernels(k)
                    .hidden_states_t(x.as_tensor(), true)
                    .unwrap(),
                None => candle_hidden_states(weights, x.as_tensor()),
            };
            assert_eq!(y.dims(), &[b, t, h]);
            let grads = (&y * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let mut all = vec![flat(&y)];
            for v in vars.iter().chain([&x]) {
                all.push(flat(grads.get(v.as_tensor()).unwrap()));
            }
            all
        };
        let reference = run(None);
        for kernels in [Kernels::Fused, Kernels::Generic] {
            let ours = run(Some(kernels));
            for (what, (a, b)) in ["states", "dW_ih", "dW_hh", "db_ih", "db_hh", "dx"]
                .iter()
                .zip(ours.iter().zip(&reference))
            {
                assert_close(a, b, &format!("{kernels:?} {what}"));
            }
        }
        // The last step's state is the last hidden state; evaluation records no graph.
        let data = x.as_detached_tensor();
        let eval = lstm.hidden_states_t(&data, false).unwrap();
        assert!(!eval.track_op());
        assert_close(
            &flat(&eval.narrow(1, t - 1, 1).unwrap()),
            &flat(&lstm.last_hidden_t(&data, false).unwrap()),
            "last step",
        );
    }

    /// An [`Lstm`] of `[W_ih [4H, I], W_hh [4H, H], b_ih, b_hh]`.
    fn lstm_of(weights: [Tensor; 4]) -> Lstm {
        let [w_ih, w_hh, b_ih, b_hh] = weights;
        Lstm::new(w_ih, w_hh, b_ih, b_hh, Kernels::Fused)
    }

    /// candle's own LSTM layer on the same weights: the reference both paths are held to.
    fn candle_lstm(weights: [&Tensor; 4]) -> candle_nn::LSTM {
        let (g4, i) = weights[0].dims2().unwrap();
        let names = ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"];
        let tensors = names
            .iter()
            .zip(weights)
            .map(|(n, w)| (n.to_string(), w.clone()))
            .collect();
        candle_nn::LSTM::new(
            i,
            g4 / 4,
            candle_nn::LSTMConfig::default(),
            candle_nn::VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu),
        )
        .unwrap()
    }

    /// candle's LSTM read for its last hidden state `[B, H]`.
    fn candle_last_hidden(weights: [&Tensor; 4], x: &Tensor) -> Tensor {
        use candle_nn::rnn::RNN;
        candle_lstm(weights)
            .seq(x)
            .unwrap()
            .last()
            .unwrap()
            .h
            .clone()
    }

    /// candle's LSTM read for every step's hidden state `[B, T, H]`.
    fn candle_hidden_states(weights: [&Tensor; 4], x: &Tensor) -> Tensor {
        use candle_nn::rnn::RNN;
        let layer = candle_lstm(weights);
        let states = layer.seq(x).unwrap();
        layer.states_to_tensor(&states).unwrap()
    }

    /// `a` within 1e-5 of `b`, relative to `b`'s norm.
    fn assert_close(a: &[f32], b: &[f32], what: &str) {
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        let diff: f32 = a.iter().zip(b).map(|(p, q)| (p - q).powi(2)).sum();
        let norm: f32 = b.iter().map(|q| q * q).sum();
        let rel = (diff / norm).sqrt();
        assert!(rel <= 1e-5, "{what}: relative error {rel}");
    }

    #[test]
    fn evaluation_in_blocks_agrees_with_the_training_path() {
        let dev = Device::Cpu;
        // More than two blocks of the largest size (on two threads: 512, 512 and a partial 5),
        // with 28 steps of 28 features as the model reads.
        let (b, t, i, h) = (2 * EVAL_BLOCK + 5, 28, 28, 16);
        let randn = |s: &[usize]| Tensor::randn(0f32, 0.5, s, &dev).unwrap();
        let (w_ih, w_hh, b_ih, b_hh) = (
            randn(&[4 * h, i]),
            randn(&[4 * h, h]),
            randn(&[4 * h]),
            randn(&[4 * h]),
        );
        let lstm = lstm_of([w_ih, w_hh, b_ih, b_hh]);
        let x = randn(&[b, t, i]);
        let eval = flat(&lstm.last_hidden_t(&x, false).unwrap());
        assert_close(
            &eval,
            &flat(&lstm.last_hidden_t(&x, true).unwrap()),
            "fused",
        );
        assert_close(
            &eval,
            &flat(
                &lstm
                    .with_kernels(Kernels::Generic)
                    .last_hidden_t(&x, true)
                    .unwrap(),
            ),
            "generic",
        );
    }

    #[test]
    fn training_gradients_are_the_same_bits_on_one_or_two_threads() {
        let dev = Device::Cpu;
        // A block and a partial one, whose shares are summed; split by the threads, they would
        // be two equal halves on two threads and one block on one.
        let (b, t, i, h) = (TRAIN_BLOCK + 36, 6, 5, 8);
        let vars: Vec<Var> = [vec![4 * h, i], vec![4 * h, h], vec![4 * h], vec![4 * h]]
            .iter()
            .map(|s| Var::randn(0f32, 0.5, s.as_slice(), &dev).unwrap())
            .collect();
        let lstm = lstm_of([0, 1, 2, 3].map(|k| vars[k].as_tensor().clone()));
        let x = Tensor::randn(0f32, 1.0, (b, t, i), &dev).unwrap();
        let up = Tensor::randn(0f32, 1.0, (b, h), &dev).unwrap();
        let grads_on = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let y = lstm.last_hidden_t(&x, true).unwrap();
                let grads = (&y * &up).unwrap().sum_all().unwrap().backward().unwrap();
                vars.iter()
                    .map(|v| flat(grads.get(v.as_tensor()).unwrap()))
                    .collect::<Vec<_>>()
            })
        };
        let (one, two) = (grads_on(1), grads_on(2));
        for (a, b) in one.iter().zip(&two) {
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(a), bits(b));
        }
    }

    /// The operations of the graph behind an LSTM's last hidden state over `steps` steps.
    fn graph_ops(kernels: Kernels, steps: usize) -> usize {
        let dev = Device::Cpu;
        let (i, h) = (3, 4);
        let vars = [vec![4 * h, i], vec![4 * h, h], vec![4 * h], vec![4 * h]]
            .map(|s| Var::randn(0f32, 0.5, s.as_slice(), &dev).unwrap());
        let lstm = Lstm::new(
            vars[0].as_tensor().clone(),
            vars[1].as_tensor().clone(),
            vars[2].as_tensor().clone(),
            vars[3].as_tensor().clone(),
            kernels,
        );
        let x = Tensor::randn(0f32, 1.0, (2, steps, i), &dev).unwrap();
        let y = lstm.last_hidden_t(&x, true).unwrap();
        y.sorted_nodes().iter().filter(|n| !n.is_variable()).count()
    }

    #[test]
    fn the_generic_path_is_thirteen_operations_a_step_and_the_fused_one_a_constant() {
        // Per step: the rows [x_t, 1, h] (a concatenation), the GEMM, one sigmoid, the cell
        // gate's narrow and tanh, three gate narrows, two products and a sum for c, tanh(c)
        // and h. The first step starts from a zero state: no concatenation, no forget gate
        // (9). Before the loop (7): the bias sum and its column, the weights' concatenation
        // and its transpose, and the first step's input columns of it, copied out (candle's
        // CUDA matmul takes a transposed operand only whole) and transposed.
        assert_eq!(graph_ops(Kernels::Generic, 2), 7 + 9 + 13);
        assert_eq!(graph_ops(Kernels::Generic, 5), 7 + 9 + 4 * 13);
        assert_eq!(graph_ops(Kernels::Generic, 6), 7 + 9 + 5 * 13);
        assert_eq!(graph_ops(Kernels::Fused, 5), graph_ops(Kernels::Fused, 28));
    }

    #[test]
    fn polynomial_exp_is_within_3e_7_of_libm() {
        let mut worst = 0f64;
        for k in -87_000..88_000 {
            let x = k as f32 * 1e-3 + 3.7e-4;
            let exact = (x as f64).exp();
            worst = worst.max(((exp(x) as f64 - exact) / exact).abs());
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(sigmoid(-200.0), 1.0 / (1.0 + 88f32.exp()));
        assert_eq!(sigmoid(200.0), 1.0);
    }

    fn flat(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }
}
