//! What a classification answers: the classes ranked by probability, and the outcome for one
//! image as `predict` prints it and the HTTP service returns it (the top classes, whether a
//! person should look, a second suggestion where two classes are both likely).
use serde::Serialize;

/// One class and its probability.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ranked {
    pub class: String,
    pub probability: f32,
}

/// The class indices, most probable first (ties: the lower index first).
pub fn ranking(probs: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    order
}

/// The `k` most probable classes, most probable first.
pub fn top_k(probs: &[f32], names: &[String], k: usize) -> Vec<Ranked> {
    ranking(probs)
        .into_iter()
        .take(k)
        .map(|i| Ranked {
            class: names.get(i).cloned().unwrap_or_else(|| i.to_string()),
            probability: probs[i],
        })
        .collect()
}

/// The outcome for one file (a line of the report, an element of the JSON).
#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    pub file: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub top: Vec<Ranked>,
    /// The top probability is below the threshold: a person should look.
    pub needs_review: bool,
    /// The second class where it and the first are both at least [`BOTH_LIKELY`]: the image
    /// could be either (a tagging tool would offer both).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub second_suggestion: Option<Ranked>,
    pub inverted: bool,
}

/// Two classes both at least this probable are both suggested.
pub const BOTH_LIKELY: f32 = 0.4;

impl Prediction {
    /// The outcome for `file` of probabilities `probs`.
    pub fn new(
        file: String,
        probs: &[f32],
        names: &[String],
        top: usize,
        threshold: f32,
        inverted: bool,
    ) -> Self {
        let ranked = top_k(probs, names, top.max(2));
        let needs_review = ranked[0].probability < threshold;
        let second_suggestion = (ranked[1].probability >= BOTH_LIKELY).then(|| ranked[1].clone());
        Prediction {
            file,
            error: None,
            top: ranked.into_iter().take(top.max(1)).collect(),
            needs_review,
            second_suggestion,
            inverted,
        }
    }

    /// The outcome for `file` that could not be classified.
    pub fn failed(file: String, error: String) -> Self {
        Prediction {
            file,
            error: Some(error),
            top: Vec::new(),
            needs_review: false,
            second_suggestion: None,
            inverted: false,
        }
    }
}
