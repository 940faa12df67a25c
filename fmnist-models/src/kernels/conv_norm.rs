//! A convolution followed by BatchNorm (and ReLU), as one operation of candle's graph in
//! training on the fused path.
//!
//! Apart, the two layers hand the convolution's output to each other as a tensor of the graph,
//! and candle's backward pass zero-fills a buffer for that tensor's gradient and adds the
//! gradient into it: two passes over some of the largest activations of `resnet` and
//! `cnn-deep`, for a tensor with a single consumer. As one operation, the convolution's output
//! stays inside it (kept for the backward pass, as the graph kept it), and its gradient goes
//! from the BatchNorm's backward kernels straight into the convolution's. Where ReLU and 2x2
//! max-pooling follow, they are part of the operation too: forward the pooled output comes
//! from the convolution's in one pass, and backward the BatchNorm's kernels rebuild each plane
//! of the ReLU's output and of its gradient where they read it, so the two largest tensors of
//! the layers apart (the normalized output and its gradient) are never written. The kernels
//! are the same ones in the same order, so the results are the same bits as the layers apart.
use std::sync::{Arc, Mutex};

use candle::{CpuStorage, CustomOp2, CustomOp3, Device, Layout, Shape, Storage, Tensor};

use crate::kernels::conv::{BlockedConv, Conv2d, Epilogue};
use crate::kernels::norm::{channel_stats, check_count, BatchNorm2d, Normalize};
use crate::kernels::{f32_slice, MaxPool2};

/// What follows the normalization inside [`conv_norm_t`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum After {
    Nothing,
    Relu,
    /// ReLU, then 2x2 max-pooling.
    ReluPool(MaxPool2),
}

/// `bn(conv(x))`, then what `after` says: one operation in training where the layers run on
/// the fused path, the layers one after the other otherwise.
pub(crate) fn conv_norm_t(
    conv: &Conv2d,
    bn: &BatchNorm2d,
    x: &Tensor,
    train: bool,
    after: After,
) -> candle::Result<Tensor> {
    if train {
        if let Some(y) = fused(conv, bn, x, after)? {
            return Ok(y);
        }
    }
    let y = conv.forward_t(x, train)?;
    match after {
        After::Nothing => bn.forward_t(&y, train),
        After::Relu => bn.forward_relu_t(&y, train),
        After::ReluPool(pool) => bn.forward_relu_t(&y, train)?.apply(&pool),
    }
}

/// The batch mean and biased variance per channel, handed from the operation to its caller.
type Statistics = Arc<Mutex<Option<(Vec<f32>, Vec<f32>)>>>;

/// [`conv_norm_t`] in training as one [`ConvNorm`], `None` where either layer runs candle's
/// path.
fn fused(
    conv: &Conv2d,
    bn: &BatchNorm2d,
    x: &Tensor,
    after: After,
) -> candle::Result<Option<Tensor>> {
    let Some((gamma, beta, eps)) = bn.fused_parameters(x) else {
        return Ok(None);
    };
    let Some((kernel, conv)) = conv.blocked_op(x, Epilogue::None)? else {
        return Ok(None);
    };
    let pool = match after {
        // The pooling's backward pass rides in the convolution's plane by plane.
        After::ReluPool(pool) if pool.kernels.fuse(x) => true,
        After::ReluPool(_) => return Ok(None),
        _ => false,
    };
    let (b, _, _, _) = x.dims4()?;
    let (oh, ow) = conv.output_size();
    check_count(b * oh * ow)?;
    let statistics = Statistics::default();
    let op = ConvNorm {
        conv,
        eps,
        relu: !matches!(after, After::Nothing),
        pool,
        statistics: statistics.clone(),
        saved: Mutex::new(None),
    };
    let gamma_beta = Tensor::stack(&[&gamma, &beta], 0)?;
    let y = x.contiguous()?.apply_op3(&kernel, &gamma_beta, op)?;
    let taken = statistics.lock().ok().and_then(|mut s| s.take());
    let Some((mean, var)) = taken else {
        candle::bail!("conv + batch norm: the statistics were not computed");
    };
    bn.update_running(&mean, &var, b * oh * ow)?;
    Ok(Some(y))
}

/// What the forward pass keeps for the backward passes (as many as are run on the graph).
#[derive(Clone)]
struct Saved {
    /// The convolution's output, `[B, O, H', W']`.
    conv_out: Tensor,
    normalize: Normalize,
    /// With the pooling, where in its window each maximum lies (else empty).
    argmax: Arc<Vec<u8>>,
}

/// Arguments: x `[B, C, H, W]`, the convolution's kernel matrix and `[γ; β]` (`[2, O]`).
struct ConvNorm {
    conv: BlockedConv,
    eps: f32,
    relu: bool,
    /// 2x2 max-pooling after the ReLU.
    pool: bool,
    statistics: Statistics,
    saved: Mutex<Option<Saved>>,
}

impl CustomOp3 for ConvNorm {
    fn name(&self) -> &'static str {
        "fmnist-conv-batch-norm"
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
        let (conv_out, shape) = self.conv.cpu_fwd(s1, l1, s2, l2)?;
        let (b, c, h, w) = shape.dims4()?;
        let x = f32_slice(&conv_out, &Layout::contiguous(&shape), "conv + batch norm")?;
        let gamma_beta = f32_slice(s3, l3, "conv + batch norm parameters")?;
        if gamma_beta.len() != 2 * c {
            candle::bail!(
                "conv + batch norm: {c} channels, parameters {:?}",
                l3.dims()
            );
        }
        let (gamma, beta) = gamma_beta.split_at(c);
        let (stats, _) = channel_stats(x, b, c, h * w);
        let CpuStorage::F32(stats) = stats else {
            candle::bail!("conv + batch norm: statistics are not f32");
        };
        let (mean, var) = stats.split_at(c);
        let normalize = Normalize::new(mean.to_vec(), var, self.eps, self.relu);
        let (out, argmax, out_shape) = if self.pool {
            let (out, argmax) = normalize.apply_pooled(x, c, (h, w), gamma, beta);
            (out, Arc::new(argmax), Shape::from((b, c, h / 2, w / 2)))
        } else {
            let out = normalize.apply(x, c, h * w, gamma, beta);
            (out, Arc::default(), shape.clone())
        };
        if let Ok(mut slot) = self.statistics.lock() {
            *slot = Some((mean.to_vec(), var.to_vec()));
        }
        let conv_out = match conv_out {
            CpuStorage::F32(v) => Tensor::from_vec(v, shape.clone(), &Device::Cpu)?,
            _ => candle::bail!("conv + batch norm: the convolution's output is not f32"),
        };
        if let Ok(mut slot) = self.saved.lock() {
            *slot = Some(Saved {
                conv_out,
                normalize,
                argmax,
            });
        }
        Ok((CpuStorage::F32(out), out_shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        kernel: &Tensor,
        gamma_beta: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> candle::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Some(saved) = self.saved.lock().ok().and_then(|s| s.clone()) else {
            candle::bail!("conv + batch norm: no forward pass kept for the backward pass");
        };
        if self.pool {
            return self.pooled_backward(x, kernel, gamma_beta, &saved, dy);
        }
        let gamma = gamma_beta.detach().get(0)?;
        let (y, dy) = (y.detach().contiguous()?, dy.contiguous()?);
        let conv_out = &saved.conv_out;
        let (input, d_gamma, d_beta) = saved.normalize.gradient_parts(conv_out, &gamma, &y, &dy)?;
        // The BatchNorm's input gradient, the convolution's output gradient, is computed plane
        // by plane straight into the convolution's backward GEMM layout.
        let (b, _, h, w) = conv_out.dims4()?;
        let plane = h * w;
        let (d_x, d_kernel) = with_cpu_slices([conv_out, &y], "conv + batch norm", |out, y| {
            let planes = |i: usize, dy: &[f32], dst: &mut [f32]| {
                let at = i * plane..(i + 1) * plane;
                input.plane(i, b * plane, [&out[at.clone()], dy, &y[at]], dst)
            };
            self.conv.backward(x, kernel, &dy, Some(&planes))
        })?;
        let d_gamma_beta = Tensor::stack(&[&d_gamma, &d_beta], 0)?;
        Ok((d_x, d_kernel, Some(d_gamma_beta)))
    }
}

/// Gradients of [`ConvNorm::bwd`].
type Gradients = (Option<Tensor>, Option<Tensor>, Option<Tensor>);

impl ConvNorm {
    /// The backward pass with the pooling: `d_pooled` is the pooled output's gradient. The
    /// convolution's backward pass is handed its own output, from whose planes the BatchNorm
    /// rebuilds each plane of its output and that output's gradient.
    fn pooled_backward(
        &self,
        x: &Tensor,
        kernel: &Tensor,
        gamma_beta: &Tensor,
        saved: &Saved,
        d_pooled: &Tensor,
    ) -> candle::Result<Gradients> {
        let conv_out = &saved.conv_out;
        let (b, c, h, w) = conv_out.dims4()?;
        let (plane, pooled) = (h * w, (h / 2) * (w / 2));
        let d_pooled = d_pooled.contiguous()?;
        let params = gamma_beta.detach().flatten_all()?.to_vec1::<f32>()?;
        let (gamma, beta) = params.split_at(c);
        let argmax = &saved.argmax[..];
        let what = "conv + batch norm + pooling";
        with_cpu_slices([conv_out, &d_pooled], what, |out, d_pooled| {
            let (input, unpool, d_gamma, d_beta) = saved.normalize.pooled_gradient_parts(
                out,
                (c, h, w),
                [gamma, beta],
                (d_pooled, argmax),
            )?;
            let planes = |i: usize, out: &[f32], dst: &mut [f32]| {
                let at = i * pooled..(i + 1) * pooled;
                let pooled = (&d_pooled[at.clone()], &argmax[at]);
                input.unpooled_plane(i, b * plane, &unpool, out, pooled, dst)
            };
            let (d_x, d_kernel) = self.conv.backward(x, kernel, conv_out, Some(&planes))?;
            let d_gamma_beta = Tensor::stack(&[&d_gamma, &d_beta], 0)?;
            Ok((d_x, d_kernel, Some(d_gamma_beta)))
        })
    }
}

/// `f` of the data of two contiguous f32 tensors on the CPU, read in place.
fn with_cpu_slices<R>(
    [a, b]: [&Tensor; 2],
    what: &str,
    f: impl FnOnce(&[f32], &[f32]) -> candle::Result<R>,
) -> candle::Result<R> {
    let (a_storage, a_layout) = a.storage_and_layout();
    let (b_storage, b_layout) = b.storage_and_layout();
    let (Storage::Cpu(a_storage), Storage::Cpu(b_storage)) = (&*a_storage, &*b_storage) else {
        candle::bail!("{what}: the backward pass runs on the CPU");
    };
    f(
        f32_slice(a_storage, a_layout, what)?,
        f32_slice(b_storage, b_layout, what)?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::Kernels;
    use candle::Var;
    use candle_nn::{BatchNorm, Conv2dConfig};

    fn flat(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn one_operation_gives_the_bits_of_the_layers_apart() {
        // "Same" and strided convolutions, with and without ReLU, and one without padding (its
        // forward GEMM's columns span whole input lines, its backward's do not); with the
        // pooling, odd sizes (a line no window covers) and 6 or 16 channels (the BatchNorm's
        // sums on lanes of their own or gathered); 19 images (two blocks and a partial one):
        // output, every gradient and the running statistics, bit for bit.
        let dev = Device::Cpu;
        let pool = After::ReluPool(MaxPool2 {
            kernels: Kernels::Fused,
        });
        let cases = [
            (1, 1, After::Relu, 6),
            (1, 1, After::Nothing, 6),
            (2, 1, After::Relu, 6),
            (1, 0, After::Relu, 6),
            (1, 1, pool, 6),
            (1, 1, pool, 16),
            (2, 1, pool, 16),
            (1, 0, pool, 6),
        ];
        for (stride, padding, after, o) in cases {
            let x = Var::randn(0f32, 1.0, (19, 3, 9, 9), &dev).unwrap();
            let w = Var::randn(0f32, 0.3, (o, 3, 3, 3), &dev).unwrap();
            let gamma = Var::randn(1f32, 0.3, o, &dev).unwrap();
            let beta = Var::randn(0f32, 0.3, o, &dev).unwrap();
            let cfg = Conv2dConfig {
                padding,
                stride,
                ..Default::default()
            };
            let run = |together: bool| {
                let conv = Conv2d::new(
                    candle_nn::Conv2d::new(w.as_tensor().clone(), None, cfg),
                    Kernels::Fused,
                );
                // Variables, as the builder makes them, so that the update lands in them.
                let (mean, var) = (
                    Var::zeros(o, candle::DType::F32, &dev).unwrap(),
                    Var::ones(o, candle::DType::F32, &dev).unwrap(),
                );
                let (mean, var) = (mean.as_tensor(), var.as_tensor());
                let bn = BatchNorm::new(
                    o,
                    mean.clone(),
                    var.clone(),
                    gamma.as_tensor().clone(),
                    beta.as_tensor().clone(),
                    1e-5,
                )
                .unwrap();
                let bn = BatchNorm2d::new(bn, Kernels::Fused);
                let y = if together {
                    conv_norm_t(&conv, &bn, x.as_tensor(), true, after).unwrap()
                } else {
                    let c = conv.forward_t(x.as_tensor(), true).unwrap();
                    match after {
                        After::Nothing => bn.forward_t(&c, true).unwrap(),
                        After::Relu => bn.forward_relu_t(&c, true).unwrap(),
                        After::ReluPool(pool) => {
                            bn.forward_relu_t(&c, true).unwrap().apply(&pool).unwrap()
                        }
                    }
                };
                let up = Tensor::arange(0f32, y.elem_count() as f32, &dev)
                    .unwrap()
                    .affine(0.01, -1.0)
                    .unwrap()
                    .reshape(y.shape())
                    .unwrap();
                let loss = (&y * &up).unwrap().sum_all().unwrap();
                let grads = loss.backward().unwrap();
                // The graph can be differentiated again, as candle's own operations allow.
                let again = loss.backward().unwrap();
                for v in [&x, &w] {
                    let grad =
                        |g: &candle::backprop::GradStore| flat(g.get(v.as_tensor()).unwrap());
                    assert_eq!(grad(&again), grad(&grads));
                }
                let mut all = vec![flat(&y), flat(mean), flat(var)];
                for v in [&x, &w, &gamma, &beta] {
                    all.push(flat(grads.get(v.as_tensor()).expect("a gradient")));
                }
                // The graph's tensors of the convolution's output size.
                let side = (9 + 2 * padding - 3) / stride + 1;
                let full_size = |t: &&&Tensor| t.elem_count() == 19 * o * side * side;
                (all, y.sorted_nodes().iter().filter(full_size).count())
            };
            let ((together, nodes_together), (apart, nodes_apart)) = (run(true), run(false));
            let case = format!("stride {stride}, padding {padding}, {after:?}, {o} channels");
            let names = ["output", "mean", "var", "dx", "dw", "dγ", "dβ"];
            for ((name, a), b) in names.iter().zip(&together).zip(&apart) {
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(a), bits(b), "{case}: {name}");
            }
            // The running statistics moved.
            assert!(together[1].iter().any(|&m| m != 0.0));
            // One operation ran: the convolution's output is no tensor of the graph, nor with
            // the pooling the normalized one.
            let expected = match after {
                After::ReluPool(_) => (0, 2),
                _ => (1, 2),
            };
            assert_eq!((nodes_together, nodes_apart), expected, "{case}");
        }
    }

    #[test]
    fn evaluation_and_the_generic_path_run_the_layers_apart() {
        // Nothing to keep in evaluation: the same output as the two layers apart, no graph.
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (4, 2, 6, 6), &dev).unwrap();
        let w = Var::randn(0f32, 0.3, (3, 2, 3, 3), &dev).unwrap();
        let cfg = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let conv = Conv2d::new(
            candle_nn::Conv2d::new(w.as_tensor().clone(), None, cfg),
            Kernels::Fused,
        );
        let bn = BatchNorm::new(
            3,
            Tensor::zeros(3, candle::DType::F32, &dev).unwrap(),
            Tensor::ones(3, candle::DType::F32, &dev).unwrap(),
            Var::ones(3, candle::DType::F32, &dev)
                .unwrap()
                .as_tensor()
                .clone(),
            Tensor::zeros(3, candle::DType::F32, &dev).unwrap(),
            1e-5,
        )
        .unwrap();
        let bn = BatchNorm2d::new(bn, Kernels::Fused);
        let y = conv_norm_t(&conv, &bn, &x, false, After::Relu).unwrap();
        let apart = bn
            .forward_relu_t(&conv.forward_t(&x, false).unwrap(), false)
            .unwrap();
        assert_eq!(flat(&y), flat(&apart));
        assert!(!y.track_op());
    }
}
