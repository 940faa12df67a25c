//! The LSTM layer, whose CPU path runs the whole recurrence as one operation.
//!
//! candle's LSTM step is ~15 graph operations per time step (two matmuls, bias adds, four
//! gate chunks, five activations, products), each allocating its output and each adding a
//! node to the backward pass. Here the input projection of all time steps is one GEMM
//! (candle ops, so its gradients are candle's), and the recurrence — one `h·W_hhᵀ` GEMM and
//! the fused gate arithmetic per step — is a single custom op that keeps its gate activations
//! for a hand-written backward through time (two GEMMs per step, one for `W_hh` at the end).
//! In training everything is time-major (`[T, B, ·]`), so each step's GEMM accumulates
//! straight into that step's block of the projections, with no copy in or out and no
//! allocation per step. Evaluation has a path of its own: blocks of images run in parallel,
//! each step one GEMM of the rows `[x_t, 1, h]` against all the weights, nothing kept.
use std::sync::Mutex;

use candle::{CpuStorage, CustomOp2, DType, Device, Layout, Shape, Tensor};
use candle_nn::rnn::RNN;
use rayon::prelude::*;

use crate::kernels::{f32_slice, gemm_into, kernels, simd, Kernels};

/// A single-layer LSTM (PyTorch's gate order i, f, g, o) read for its last hidden state.
#[derive(Debug, Clone)]
pub struct Lstm {
    inner: candle_nn::LSTM,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor,
    b_hh: Tensor,
}

impl Lstm {
    /// `w_ih [4H, I]`, `w_hh [4H, H]` and the two biases `[4H]`, shared with candle's layer.
    pub fn new(
        inner: candle_nn::LSTM,
        w_ih: Tensor,
        w_hh: Tensor,
        b_ih: Tensor,
        b_hh: Tensor,
    ) -> Self {
        Lstm {
            inner,
            w_ih,
            w_hh,
            b_ih,
            b_hh,
        }
    }

    /// The hidden state `[B, H]` after the last step of `x [B, T, I]`, from a zero state.
    /// In evaluation (`train` false) the fused path records no graph and keeps no activations.
    pub fn last_hidden_t(&self, x: &Tensor, train: bool) -> candle::Result<Tensor> {
        let k = kernels();
        if train || !fused(x, k) {
            return self.last_hidden_with(x, k);
        }
        let bias = (&self.b_ih + &self.b_hh)?.unsqueeze(1)?;
        let weights = Tensor::cat(&[&self.w_ih, &bias, &self.w_hh], 1)?.detach();
        x.contiguous()?.detach().apply_op2(&weights, Evaluation)
    }

    /// [`Lstm::last_hidden_t`] in training, with the kernels given.
    pub fn last_hidden_with(&self, x: &Tensor, k: Kernels) -> candle::Result<Tensor> {
        if fused(x, k) {
            return recurrence(x, [&self.w_ih, &self.w_hh, &self.b_ih, &self.b_hh]);
        }
        let states = self.inner.seq(x)?;
        let last = states
            .last()
            .ok_or_else(|| candle::Error::Msg("empty sequence".into()))?;
        Ok(last.h.clone())
    }
}

fn fused(x: &Tensor, k: Kernels) -> bool {
    k == Kernels::Fused && x.device().is_cpu() && x.dtype() == DType::F32
}

/// The fused path: one GEMM for the input projection of every step, then [`Recurrence`],
/// which saves its activations only if a gradient can flow.
fn recurrence(x: &Tensor, [w_ih, w_hh, b_ih, b_hh]: [&Tensor; 4]) -> candle::Result<Tensor> {
    let (b, t, i) = x.dims3()?;
    // Time-major rows (step, image), so that each step's gates are one contiguous block.
    let x = x.transpose(0, 1)?.contiguous()?.reshape((t * b, i))?;
    // The biases ride in the GEMM as one more input column against a column of ones, so no
    // broadcast add runs over the `[T·B, 4H]` projections and their gradient comes out of the
    // same GEMM as `W_ih`'s instead of a reduction over them.
    let ones = Tensor::ones((t * b, 1), x.dtype(), x.device())?;
    let inputs = Tensor::cat(&[&x, &ones], 1)?;
    let bias = (b_ih + b_hh)?.unsqueeze(1)?;
    let weights = Tensor::cat(&[w_ih, &bias], 1)?; // [4H, I + 1]
    let gates = inputs.matmul(&weights.t()?)?.reshape((t, b, ()))?;
    let op = Recurrence {
        save: gates.track_op() || w_hh.track_op(),
        saved: Mutex::new(None),
    };
    gates.apply_op2(w_hh, op)
}

/// What the forward pass keeps for the backward pass, each time-major: the activated gates
/// (i, f, g, o) `[T, B, 4H]`, the cells `[T + 1, B, H]` and hidden states `[T + 1, B, H]`
/// (zero first), and the cells' tanh `[T, B, H]`.
struct Saved {
    gates: Vec<f32>,
    cells: Vec<f32>,
    hiddens: Vec<f32>,
    tanh_cells: Vec<f32>,
}

/// The recurrence over precomputed input projections `[T, B, 4H]` with `W_hh [4H, H]`,
/// returning the last hidden state `[B, H]`.
struct Recurrence {
    /// Keep the activations (a backward pass may follow).
    save: bool,
    saved: Mutex<Option<Saved>>,
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

/// [`gate_rows`] for reading.
#[inline(always)]
fn gate_parts(row: &[f32], hidden: usize) -> [&[f32]; 4] {
    let (i, rest) = row.split_at(hidden);
    let (f, rest) = rest.split_at(hidden);
    let (g, o) = rest.split_at(hidden);
    [i, f, g, &o[..hidden]]
}

/// Step buffers of `len` values: one per step when they are kept for the backward pass, else
/// `slots` of them reused in turn.
struct Steps {
    data: Vec<f32>,
    len: usize,
    slots: Option<usize>,
}

impl Steps {
    fn new(steps: usize, len: usize, keep: bool, slots: usize) -> Self {
        let slots = (!keep).then_some(slots);
        Steps {
            data: vec![0f32; slots.unwrap_or(steps) * len],
            len,
            slots,
        }
    }

    fn range(&self, step: usize) -> std::ops::Range<usize> {
        let at = self.slots.map_or(step, |n| step % n) * self.len;
        at..at + self.len
    }

    fn get(&self, step: usize) -> &[f32] {
        &self.data[self.range(step)]
    }

    fn get_mut(&mut self, step: usize) -> &mut [f32] {
        let r = self.range(step);
        &mut self.data[r]
    }

    /// Step `read` for reading beside step `write` for writing (two different slots).
    fn read_write(&mut self, read: usize, write: usize) -> (&[f32], &mut [f32]) {
        let (r, w) = (self.range(read), self.range(write));
        if r.start < w.start {
            let (lo, hi) = self.data.split_at_mut(w.start);
            (&lo[r], &mut hi[..self.len])
        } else {
            let (lo, hi) = self.data.split_at_mut(r.start);
            (&hi[..self.len], &mut lo[w])
        }
    }
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

/// One image's step backward: from its activated gates, previous cell, the cell's tanh and the
/// gradient reaching its hidden state, the pre-activation gate gradients `d [4H]`; `dc` carries
/// the cell gradient from this step to the previous one.
#[inline(always)]
fn differentiate_row(
    g: &[f32],
    c_prev: &[f32],
    tanh_c: &[f32],
    dh: &[f32],
    d: &mut [f32],
    dc: &mut [f32],
) {
    let hidden = dc.len();
    let [gi, gf, gg, go] = gate_parts(g, hidden);
    let [di, df, dg, d_o] = gate_rows(d, hidden);
    let (c_prev, tanh_c, dh) = (&c_prev[..hidden], &tanh_c[..hidden], &dh[..hidden]);
    for j in 0..hidden {
        let (i, f, cell, o) = (gi[j], gf[j], gg[j], go[j]);
        let tc = tanh_c[j];
        let dcell_total = dc[j] + dh[j] * o * (1.0 - tc * tc);
        di[j] = dcell_total * cell * i * (1.0 - i);
        df[j] = dcell_total * c_prev[j] * f * (1.0 - f);
        dg[j] = dcell_total * i * (1.0 - cell * cell);
        d_o[j] = dh[j] * tc * o * (1.0 - o);
        dc[j] = dcell_total * f;
    }
}

fn forward(
    proj: &[f32],
    w_hh: &[f32],
    (t, b, hidden): (usize, usize, usize),
    keep: bool,
) -> (Vec<f32>, Option<Saved>) {
    let (g4, n) = (4 * hidden, b * 4 * hidden);
    // Kept, the gates start as all the projections at once (one copy, no zero fill);
    // otherwise each step copies its own into a single slot.
    let mut gates = if keep {
        Steps {
            data: proj.to_vec(),
            len: n,
            slots: None,
        }
    } else {
        Steps::new(t, n, false, 1)
    };
    let mut hiddens = Steps::new(t + 1, b * hidden, keep, 2);
    let mut cells = Steps::new(t + 1, b * hidden, keep, 2);
    let mut tanh_cells = Steps::new(t, b * hidden, keep, 1);
    for step in 0..t {
        // gates = projection + h·W_hhᵀ, accumulated in place.
        let g = gates.get_mut(step);
        if !keep {
            g.copy_from_slice(&proj[step * n..][..n]);
        }
        let (h_prev, h) = hiddens.read_write(step, step + 1);
        gemm_into(g, h_prev, w_hh, (b, hidden, g4), true, true);
        let (c_prev, c) = cells.read_write(step, step + 1);
        g.par_chunks_mut(g4)
            .zip(h.par_chunks_mut(hidden))
            .zip(c.par_chunks_mut(hidden).zip(c_prev.par_chunks(hidden)))
            .zip(tanh_cells.get_mut(step).par_chunks_mut(hidden))
            .for_each(|(((g, h), (c, c_prev)), tc)| {
                simd(
                    #[inline(always)]
                    || activate_row(g, c_prev, c, tc, h),
                )
            });
    }
    let last = hiddens.get(t).to_vec();
    let saved = keep.then_some(Saved {
        gates: gates.data,
        cells: cells.data,
        hiddens: hiddens.data,
        tanh_cells: tanh_cells.data,
    });
    (last, saved)
}

impl CustomOp2 for Recurrence {
    fn name(&self) -> &'static str {
        "fmnist-lstm-recurrence"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle::Result<(CpuStorage, Shape)> {
        let (t, b, g4) = l1.shape().dims3()?;
        let (rows, hidden) = l2.shape().dims2()?;
        if rows != g4 || g4 != 4 * hidden {
            candle::bail!("lstm: gates [{t}, {b}, {g4}] do not fit W_hh [{rows}, {hidden}]");
        }
        let proj = f32_slice(s1, l1, "lstm")?;
        let w_hh = f32_slice(s2, l2, "lstm")?;
        let (h, saved) = forward(proj, w_hh, (t, b, hidden), self.save);
        if let Ok(mut slot) = self.saved.lock() {
            *slot = saved;
        }
        Ok((CpuStorage::F32(h), Shape::from((b, hidden))))
    }

    fn bwd(
        &self,
        proj: &Tensor,
        w_hh: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle::Result<(Option<Tensor>, Option<Tensor>)> {
        let (t, b, g4) = proj.dims3()?;
        let hidden = g4 / 4;
        let w_hh = w_hh.detach().flatten_all()?.to_vec1::<f32>()?;
        let saved = match self.saved.lock().ok().and_then(|mut k| k.take()) {
            Some(s) => s,
            None => {
                let proj = proj.detach().flatten_all()?.to_vec1::<f32>()?;
                forward(&proj, &w_hh, (t, b, hidden), true)
                    .1
                    .ok_or_else(|| candle::Error::Msg("lstm: nothing saved".into()))?
            }
        };
        let (n, nh) = (b * g4, b * hidden);
        let mut dh = grad_res.detach().flatten_all()?.to_vec1::<f32>()?;
        let mut dc = vec![0f32; nh];
        // Gate gradients (pre-activation), time-major like the projections.
        let mut d_proj = vec![0f32; t * n];
        for step in (0..t).rev() {
            let gates = &saved.gates[step * n..][..n];
            let c_prev = &saved.cells[step * nh..][..nh];
            let tanh_now = &saved.tanh_cells[step * nh..][..nh];
            let d_step = &mut d_proj[step * n..][..n];
            d_step
                .par_chunks_mut(g4)
                .zip(dc.par_chunks_mut(hidden))
                .enumerate()
                .for_each(|(row, (d, dc))| {
                    let rows = row * hidden..(row + 1) * hidden;
                    let (cp, tc, dh) = (&c_prev[rows.clone()], &tanh_now[rows.clone()], &dh[rows]);
                    let g = &gates[row * g4..][..g4];
                    simd(
                        #[inline(always)]
                        || differentiate_row(g, cp, tc, dh, d, dc),
                    )
                });
            gemm_into(&mut dh, d_step, &w_hh, (b, g4, hidden), false, false); // [B, 4H] · [4H, H]
        }
        // dW_hh = Σ_t dGᵀ_t · h_{t-1}: one GEMM over all steps, rows (step, image) on both sides.
        let d_proj = Tensor::from_vec(d_proj, (t, b, g4), &Device::Cpu)?;
        let mut h_in = saved.hiddens;
        h_in.truncate(t * nh);
        let h_in = Tensor::from_vec(h_in, (t * b, hidden), &Device::Cpu)?;
        let d_w_hh = d_proj.reshape((t * b, g4))?.t()?.matmul(&h_in)?;
        Ok((Some(d_proj), Some(d_w_hh)))
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
        let w = f32_slice(s2, l2, "lstm")?;
        let block = b
            .div_ceil(rayon::current_num_threads())
            .clamp(1, EVAL_BLOCK);
        let mut out = vec![0f32; b * hidden];
        out.par_chunks_mut(block * hidden)
            .zip(x.par_chunks(block * t * i))
            .for_each(|(out, x)| last_hidden_block(x, w, (t, i, hidden), out));
        Ok((CpuStorage::F32(out), Shape::from((b, hidden))))
    }
}

/// One block of [`Evaluation`]: `x [n, T, I]` in, the last hidden states `[n, H]` out.
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
        gemm_into(&mut gates, &rows, w, (n, k, g4), true, false);
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
    use candle::Var;

    #[test]
    fn fused_recurrence_agrees_with_candle_forward_and_all_gradients() {
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
        let run = |k: Kernels| {
            let y = lstm.last_hidden_with(x.as_tensor(), k).unwrap();
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
        let (fused, generic) = (run(Kernels::Fused), run(Kernels::Generic));
        for (what, (a, b)) in ["h", "dW_ih", "dW_hh", "db_ih", "db_hh", "dx"]
            .iter()
            .zip(fused.iter().zip(&generic))
        {
            assert_close(a, b, what);
        }
    }

    /// An [`Lstm`] of `[W_ih [4H, I], W_hh [4H, H], b_ih, b_hh]`, shared with candle's layer.
    fn lstm_of(weights: [Tensor; 4]) -> Lstm {
        let (g4, i) = weights[0].dims2().unwrap();
        let names = ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"];
        let tensors = names
            .iter()
            .zip(&weights)
            .map(|(n, w)| (n.to_string(), w.clone()))
            .collect();
        let inner = candle_nn::LSTM::new(
            i,
            g4 / 4,
            candle_nn::LSTMConfig::default(),
            candle_nn::VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu),
        )
        .unwrap();
        let [w_ih, w_hh, b_ih, b_hh] = weights;
        Lstm::new(inner, w_ih, w_hh, b_ih, b_hh)
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
            &flat(&lstm.last_hidden_with(&x, Kernels::Fused).unwrap()),
            "fused",
        );
        assert_close(
            &eval,
            &flat(&lstm.last_hidden_with(&x, Kernels::Generic).unwrap()),
            "candle",
        );
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
