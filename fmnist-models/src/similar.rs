//! Visual search: the training images nearest to a given image in the model's embedding
//! (what its last dense layer reads), by cosine distance. The index of the 60,000 training
//! images is built once per model and cached beside the run, keyed by the SHA-256 of the
//! model's weights and of the images, so a retrained model or other data builds it again.
use std::collections::HashMap;
use std::path::Path;

use fmnist_data::{write_atomic, ImageSet};
use safetensors::tensor::{Dtype, TensorView};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::classifier::Classifier;
use crate::error::{ModelError, Result};

/// The cache file of a run's index.
pub const INDEX_FILE: &str = "similar-index.safetensors";
/// Images embedded per batch while building.
const CHUNK: usize = 1000;

/// The embeddings of a set of images, each scaled to unit length.
pub struct SimilarityIndex {
    dim: usize,
    vectors: Vec<f32>,
    labels: Vec<u8>,
}

/// One image of the index near a query.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Neighbour {
    /// Its position in the training set (0..60,000).
    pub index: usize,
    pub label: String,
    /// Cosine distance to the query: 0 for the same direction, up to 2.
    pub distance: f32,
}

fn unit(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

/// What the cache of an index depends on: the model's weights and the images.
fn cache_key(run: &Path, set: &ImageSet) -> Result<String> {
    let weights = crate::Checkpoint::new(run).weights_path();
    let bytes = std::fs::read(&weights).map_err(|source| ModelError::Read {
        path: weights.clone(),
        source,
    })?;
    let mut h = Sha256::new();
    h.update(Sha256::digest(&bytes));
    h.update(&set.pixels);
    h.update(&set.labels);
    Ok(format!("{:x}", h.finalize()))
}

impl SimilarityIndex {
    /// Embeds every image of `set` with `classifier`.
    pub fn build(classifier: &Classifier, set: &ImageSet) -> Result<Self> {
        let n = set.labels.len();
        let mut vectors = Vec::new();
        let mut dim = 0;
        for start in (0..n).step_by(CHUNK) {
            let images: Vec<&[u8]> = (start..(start + CHUNK).min(n))
                .filter_map(|i| set.get(i).map(|(px, _)| px))
                .collect();
            for e in classifier.embed_all(&images)? {
                dim = e.len();
                vectors.extend(unit(e));
            }
        }
        Ok(SimilarityIndex {
            dim,
            vectors,
            labels: set.labels.clone(),
        })
    }

    /// The index of `set` for the run in `run`: read from the run's cache where it was built
    /// from the same weights and images, else built and cached (atomically). With it, a line
    /// for a program to print: which it was and how long it took (building takes seconds to a
    /// minute), e.g. `60000 images, read from RUN/similar-index.safetensors (0.1 s)`.
    pub fn load_or_build(
        run: &Path,
        classifier: &Classifier,
        set: &ImageSet,
    ) -> Result<(Self, String)> {
        let start = std::time::Instant::now();
        let key = cache_key(run, set)?;
        let path = run.join(INDEX_FILE);
        let (index, how) = match Self::read(&path, &key) {
            Some(index) => (index, format!("read from {}", path.display())),
            None => {
                let index = Self::build(classifier, set)?;
                // A run folder that cannot be written to (read-only, shared) only costs the
                // cache.
                let how = match index.write(&path, &key) {
                    Ok(()) => format!("built and cached in {}", path.display()),
                    Err(e) => format!("built, not cached ({e})"),
                };
                (index, how)
            }
        };
        let line = format!(
            "{} images, {how} ({:.1} s)",
            index.len(),
            start.elapsed().as_secs_f64()
        );
        Ok((index, line))
    }

    fn read(path: &Path, key: &str) -> Option<Self> {
        let bytes = std::fs::read(path).ok()?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).ok()?;
        if meta.metadata().as_ref()?.get("key")? != key {
            return None;
        }
        let st = safetensors::SafeTensors::deserialize(&bytes).ok()?;
        let v = st.tensor("embeddings").ok()?;
        let [n, dim] = v.shape() else { return None };
        let vectors: Vec<f32> = v
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let labels = st.tensor("labels").ok()?.data().to_vec();
        (vectors.len() == n * dim && labels.len() == *n).then_some(SimilarityIndex {
            dim: *dim,
            vectors,
            labels,
        })
    }

    fn write(&self, path: &Path, key: &str) -> Result<()> {
        let failed = |source: Box<dyn std::error::Error + Send + Sync>| ModelError::Write {
            path: path.to_path_buf(),
            source,
        };
        let bytes: Vec<u8> = self.vectors.iter().flat_map(|x| x.to_le_bytes()).collect();
        let n = self.labels.len();
        let view = |dtype, shape, data| TensorView::new(dtype, shape, data);
        let tensors = [
            (
                "embeddings",
                view(Dtype::F32, vec![n, self.dim], &bytes).map_err(|e| failed(e.into()))?,
            ),
            (
                "labels",
                view(Dtype::U8, vec![n], &self.labels).map_err(|e| failed(e.into()))?,
            ),
        ];
        let meta = HashMap::from([("key".to_string(), key.to_string())]);
        let out = safetensors::serialize(tensors, Some(meta)).map_err(|e| failed(e.into()))?;
        Ok(write_atomic(path, &out)?)
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The `k` images nearest to `embedding`, nearest first (ties: the lower index first).
    pub fn nearest(&self, embedding: Vec<f32>, k: usize, names: &[String]) -> Vec<Neighbour> {
        let q = unit(embedding);
        let mut scored: Vec<(f32, usize)> = self
            .vectors
            .chunks_exact(self.dim.max(1))
            .enumerate()
            .map(|(i, v)| (1.0 - v.iter().zip(&q).map(|(a, b)| a * b).sum::<f32>(), i))
            .collect();
        let k = k.min(scored.len());
        if k == 0 {
            return Vec::new();
        }
        scored.select_nth_unstable_by(k - 1, |a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        scored.truncate(k);
        scored.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        scored
            .into_iter()
            .map(|(distance, index)| Neighbour {
                index,
                label: names[self.labels[index] as usize].clone(),
                distance: distance.max(0.0),
            })
            .collect()
    }
}

/// The neighbours of the 28x28 `input` in `index`.
pub fn similar_to(
    classifier: &Classifier,
    index: &SimilarityIndex,
    input: &[u8],
    k: usize,
) -> Result<Vec<Neighbour>> {
    let embedding = classifier.embed_all(&[input])?.remove(0);
    if embedding.len() != index.dim {
        return Err(ModelError::IndexOfAnotherModel {
            index: index.dim,
            model: embedding.len(),
        });
    }
    Ok(index.nearest(embedding, k, classifier.class_names()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_by_cosine_distance_by_hand() {
        let index = SimilarityIndex {
            dim: 2,
            vectors: [
                vec![1.0, 0.0],
                vec![0.0, 1.0],
                unit(vec![1.0, 1.0]),
                vec![-1.0, 0.0],
            ]
            .concat(),
            labels: vec![0, 1, 2, 3],
        };
        let names: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
        let got = index.nearest(vec![2.0, 0.2], 3, &names);
        let order: Vec<usize> = got.iter().map(|n| n.index).collect();
        assert_eq!(order, [0, 2, 1]);
        let q = unit(vec![2.0, 0.2]);
        assert!((got[0].distance - (1.0 - q[0])).abs() < 1e-6);
        assert!((got[1].distance - (1.0 - (q[0] + q[1]) / 2f32.sqrt())).abs() < 1e-6);
        assert_eq!(got[2].label, "b");
        assert_eq!(index.nearest(vec![1.0, 0.0], 10, &names).len(), 4);
    }
}
