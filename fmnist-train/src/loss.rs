//! The training loss: cross-entropy with label smoothing.
use candle::Tensor;

/// Cross-entropy with label smoothing `eps` (0 gives the plain loss), mean over the batch.
pub fn smoothed_cross_entropy(
    logits: &Tensor,
    labels: &Tensor,
    eps: f64,
) -> candle::Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(logits, candle::D::Minus1)?;
    let nll = logp.gather(&labels.unsqueeze(1)?, 1)?.squeeze(1)?.neg()?;
    if eps == 0.0 {
        return nll.mean_all();
    }
    let uniform = logp.mean(1)?.neg()?;
    ((nll * (1.0 - eps))? + (uniform * eps)?)?.mean_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle::Device;

    #[test]
    fn smoothing_zero_is_plain_cross_entropy_and_smoothing_adds_the_uniform_term() {
        let logits = Tensor::new(&[[2f32, 0.0, -1.0]], &Device::Cpu).unwrap();
        let labels = Tensor::new(&[0u32], &Device::Cpu).unwrap();
        let plain = smoothed_cross_entropy(&logits, &labels, 0.0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let reference = candle_nn::loss::cross_entropy(&logits, &labels)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((plain - reference).abs() < 1e-6);
        let lse = (2f64.exp() + 1.0 + (-1f64).exp()).ln();
        let logp = [2.0 - lse, -lse, -1.0 - lse];
        let expect = 0.9 * -logp[0] + 0.1 * -(logp.iter().sum::<f64>() / 3.0);
        let smooth = smoothed_cross_entropy(&logits, &labels, 0.1)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            (smooth as f64 - expect).abs() < 1e-5,
            "{smooth} vs {expect}"
        );
    }
}
