//! Scoring a model on a set: logits in evaluation mode, in chunks, and loss/accuracy from them.
use candle::{DType, Device, Tensor};
use fmnist_data::{ImageSet, Loader, Normalizer};
use fmnist_models::Model;

/// Images per evaluation chunk: bounds memory whatever the set's size.
pub const EVAL_CHUNK: usize = 1000;

/// Logits of a batch `[N x 1 x rows x cols]` in evaluation mode. With `mirror_tta`
/// (test-time augmentation), the mean of the logits of each image and of its mirror image.
pub fn eval_logits(model: &Model, images: &Tensor, mirror_tta: bool) -> candle::Result<Tensor> {
    let logits = model.forward_t(images, false)?;
    if !mirror_tta {
        return Ok(logits);
    }
    let mirrored = model.forward_t(&images.flip(&[3])?, false)?;
    (logits + mirrored)? * 0.5
}

/// Logits `[N x classes]` of every image of `set`, row-major, in evaluation mode
/// ([`eval_logits`]).
pub fn logits(
    model: &Model,
    set: &ImageSet,
    normalizer: Normalizer,
    mirror_tta: bool,
    device: &Device,
) -> anyhow::Result<Vec<f32>> {
    let loader = Loader::new(set, normalizer, EVAL_CHUNK, device);
    let mut out = Vec::with_capacity(set.len() * 10);
    for batch in loader.in_order() {
        let batch = batch?;
        let y = eval_logits(model, &batch.images, mirror_tta)?.to_dtype(DType::F32)?;
        out.extend(y.flatten_all()?.to_vec1::<f32>()?);
    }
    Ok(out)
}

/// Mean cross-entropy and accuracy of a set.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Score {
    pub loss: f64,
    pub accuracy: f64,
}

/// Mean cross-entropy and accuracy of row-major `logits` against `labels`.
pub fn score(logits: &[f32], labels: &[u8]) -> Score {
    let k = logits.len() / labels.len().max(1);
    let (mut loss, mut correct) = (0.0f64, 0usize);
    for (row, &label) in logits.chunks_exact(k).zip(labels) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = max
            + row
                .iter()
                .map(|&z| (z as f64 - max).exp())
                .sum::<f64>()
                .ln();
        loss += lse - row[label as usize] as f64;
        if argmax(row) == label as usize {
            correct += 1;
        }
    }
    let n = labels.len().max(1) as f64;
    Score {
        loss: loss / n,
        accuracy: correct as f64 / n,
    }
}

/// Index of the largest value (the first on ties).
pub fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 {
                (i, v)
            } else {
                best
            }
        })
        .0
}

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
    use fmnist_models::{Init, ModelKind};

    #[test]
    fn score_by_hand() {
        // Two rows: one right with logits (ln 3, 0) -> p = 0.75; one wrong with (0, 0) -> p = 0.5, argmax 0.
        let logits = [3f32.ln(), 0.0, 0.0, 0.0];
        let s = score(&logits, &[0, 1]);
        assert_eq!(s.accuracy, 0.5);
        let expect = (-(0.75f64.ln()) - 0.5f64.ln()) / 2.0;
        assert!((s.loss - expect).abs() < 1e-6, "{} vs {expect}", s.loss);
    }

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

    #[test]
    fn mirror_tta_averages_each_image_with_its_mirror_image() {
        let dev = Device::Cpu;
        let model = Model::new(ModelKind::CnnWide, 7, Init::Pytorch, &dev).unwrap();
        let rows = |t: Tensor| t.to_vec2::<f32>().unwrap();
        let x = Tensor::rand(0f32, 1.0, (3, 1, 28, 28), &dev).unwrap();
        let plain = rows(eval_logits(&model, &x, false).unwrap());
        let mirrored = rows(eval_logits(&model, &x.flip(&[3]).unwrap(), false).unwrap());
        let averaged = rows(eval_logits(&model, &x, true).unwrap());
        for ((p, m), a) in plain.iter().zip(&mirrored).zip(&averaged) {
            for ((p, m), a) in p.iter().zip(m).zip(a) {
                assert!(((p + m) / 2.0 - a).abs() < 1e-6, "{p} {m} {a}");
            }
        }
        assert_ne!(plain, averaged, "random images are not symmetric");
        // An image that is its own mirror image scores the same either way.
        let symmetric = (&x + &x.flip(&[3]).unwrap()).unwrap();
        let one = rows(eval_logits(&model, &symmetric, false).unwrap());
        let both = rows(eval_logits(&model, &symmetric, true).unwrap());
        for (o, b) in one.iter().flatten().zip(both.iter().flatten()) {
            assert!((o - b).abs() < 1e-5, "{o} vs {b}");
        }
    }
}
