//! Grad-CAM (Selvaraju et al., 2017): where a CNN looked for a class. The gradient of the
//! class's logit with respect to the last convolution's activations `A` (through candle's
//! autograd), averaged over each channel's positions, weighs the channels:
//! `map = relu(Σ_k mean_ij(∂y/∂A_kij) · A_k)`, scaled so its largest value is 1.
use candle::{DType, Tensor, Var, D};

/// Grad-CAM maps `[B, H, W]` (values in [0, 1]) of `classes[b]` for each image `b`, from the
/// last convolution's activations `maps` `[B, C, H, W]` and `head`, the rest of the network
/// from those activations to the logits `[B, K]`.
pub fn grad_cam(
    maps: &Tensor,
    head: impl Fn(&Tensor) -> candle::Result<Tensor>,
    classes: &[u32],
) -> candle::Result<Tensor> {
    let (b, _, _, _) = maps.dims4()?;
    if classes.len() != b {
        candle::bail!("grad-cam: {} classes for {b} images", classes.len());
    }
    let a = Var::from_tensor(&maps.detach())?;
    let logits = head(a.as_tensor())?;
    let picks = Tensor::from_slice(classes, (b, 1), maps.device())?;
    let score = logits.gather(&picks, 1)?.sum_all()?;
    let grads = score.backward()?;
    let g = grads
        .get(a.as_tensor())
        .ok_or_else(|| candle::Error::Msg("grad-cam: no gradient reached the maps".into()))?;
    let weights = g.mean_keepdim((2, 3))?; // [B, C, 1, 1]
    let cam = a.as_tensor().broadcast_mul(&weights)?.sum(1)?.relu()?; // [B, H, W]
    let max = cam.flatten_from(1)?.max_keepdim(D::Minus1)?; // [B, 1]
    let max = (max.unsqueeze(2)? + 1e-12)?;
    cam.broadcast_div(&max)?.to_dtype(DType::F32)
}

/// Bilinear resampling of a row-major `h x w` map to `rows x cols`, pixel centres aligned.
pub fn upsample_bilinear(map: &[f32], h: usize, w: usize, rows: usize, cols: usize) -> Vec<f32> {
    let coord = |out: usize, n_out: usize, n_in: usize| {
        let x =
            ((out as f32 + 0.5) * n_in as f32 / n_out as f32 - 0.5).clamp(0.0, (n_in - 1) as f32);
        let lo = x.floor() as usize;
        (lo, (lo + 1).min(n_in - 1), x - lo as f32)
    };
    let mut out = Vec::with_capacity(rows * cols);
    for r in 0..rows {
        let (r0, r1, fr) = coord(r, rows, h);
        for c in 0..cols {
            let (c0, c1, fc) = coord(c, cols, w);
            let top = map[r0 * w + c0] * (1.0 - fc) + map[r0 * w + c1] * fc;
            let bottom = map[r1 * w + c0] * (1.0 - fc) + map[r1 * w + c1] * fc;
            out.push(top * (1.0 - fr) + bottom * fr);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle::Device;

    /// A tiny network by hand: two 2x2 channels, and a head that is one linear map of them.
    /// The gradient of class c's logit is then its weights, so the map follows by hand.
    #[test]
    fn grad_cam_of_a_linear_head_by_hand() {
        let dev = Device::Cpu;
        // A_0 = [[1, 0], [0, 1]], A_1 = [[0, 2], [2, 0]].
        let maps = Tensor::new(&[[[[1f32, 0.], [0., 1.]], [[0., 2.], [2., 0.]]]], &dev).unwrap();
        // Class 0: weight 1 on every position of A_0, -0.5 on A_1 -> weights (1, -0.5),
        // map relu([[1, -1], [-1, 1]]) = [[1, 0], [0, 1]].
        // Class 1: weights 0 on A_0, [[0.5, 0], [0, 0.5]] on A_1 (mean 0.25) -> map 0.25·A_1
        // = [[0, 0.5], [0.5, 0]], scaled to [[0, 1], [1, 0]].
        let w = Tensor::new(
            &[
                [1f32, 1., 1., 1., -0.5, -0.5, -0.5, -0.5],
                [0., 0., 0., 0., 0.5, 0., 0., 0.5],
            ],
            &dev,
        )
        .unwrap();
        let head = |a: &Tensor| a.flatten_from(1)?.matmul(&w.t()?);
        let cam = |class| {
            grad_cam(&maps, head, &[class])
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        assert_eq!(cam(0), vec![1.0, 0.0, 0.0, 1.0]);
        assert_eq!(cam(1), vec![0.0, 1.0, 1.0, 0.0]);
    }

    #[test]
    fn a_class_with_only_negative_evidence_has_an_empty_map() {
        let dev = Device::Cpu;
        let maps = Tensor::new(&[[[[1f32, 2.], [3., 4.]]]], &dev).unwrap();
        let head = |a: &Tensor| a.flatten_from(1)?.sum_keepdim(1)?.neg();
        let map = grad_cam(&maps, head, &[0]).unwrap();
        assert_eq!(
            map.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vec![0.0; 4]
        );
    }

    #[test]
    fn bilinear_upsampling_by_hand() {
        // 1x2 -> 1x4: pixel centres at 0.25, 0.75, 1.25, 1.75 of the input's 2 columns map
        // to input coordinates -0.25, 0.25, 0.75, 1.25, clamped: 0, 0.25, 0.75, 1.
        let up = upsample_bilinear(&[0.0, 1.0], 1, 2, 1, 4);
        assert_eq!(up, vec![0.0, 0.25, 0.75, 1.0]);
        let same = upsample_bilinear(&[1.0, 2.0, 3.0, 4.0], 2, 2, 2, 2);
        assert_eq!(same, vec![1.0, 2.0, 3.0, 4.0]);
    }
}
