//! Turning logits into tokens: repetition penalty, temperature, top-k, top-p and a seeded RNG
//! per request. Speculative acceptance applies [`transform`] identically to the target's and the
//! drafter's logits, so that both distributions are the ones sampling would use.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};

/// Largest accepted temperature; beyond it the distribution is uniform for all practical use.
pub const MAX_TEMPERATURE: f32 = 100.0;

/// How a request turns logits into tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 disables.
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `top_p`; 1 disables.
    pub top_p: f32,
    /// Divides positive (multiplies negative) logits of tokens already in the sequence; 1
    /// disables.
    pub repetition_penalty: f32,
    /// Seed of the request's random number generator.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            seed: 0,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding: every transform but the repetition penalty is irrelevant.
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0 || self.top_k == 1
    }

    /// Rejects out-of-range values, naming the field and its limits.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidRequest(m));
        if !(0.0..=MAX_TEMPERATURE).contains(&self.temperature) {
            return bad(format!(
                "`temperature` must be between 0 and {MAX_TEMPERATURE}, got {}",
                self.temperature
            ));
        }
        if self.top_p.is_nan() || self.top_p <= 0.0 || self.top_p > 1.0 {
            return bad(format!("`top_p` must be in (0, 1], got {}", self.top_p));
        }
        if self.repetition_penalty.is_nan()
            || self.repetition_penalty <= 0.0
            || self.repetition_penalty > 10.0
        {
            return bad(format!(
                "`repetition_penalty` must be in (0, 10], got {}",
                self.repetition_penalty
            ));
        }
        Ok(())
    }
}

/// Applies the repetition penalty in place to the logits of tokens in `history`.
pub fn apply_repetition_penalty(logits: &mut [f32], history: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut seen = vec![false; logits.len()];
    for &t in history {
        let t = t as usize;
        if t < logits.len() && !seen[t] {
            seen[t] = true;
            let l = &mut logits[t];
            *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
        }
    }
}

/// Index of the largest value (the first one on ties).
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best as u32
}

/// The probability distribution sampling draws from: penalty, temperature, softmax, then
/// top-k and top-p truncation with renormalization. Greedy params give a one-hot vector.
pub fn transform(logits: &[f32], history: &[u32], params: &SamplingParams) -> Vec<f32> {
    let mut l = logits.to_vec();
    apply_repetition_penalty(&mut l, history, params.repetition_penalty);
    let mut p = vec![0f32; l.len()];
    if params.is_greedy() {
        p[argmax(&l) as usize] = 1.0;
        return p;
    }
    let max = l.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let inv_t = 1.0 / params.temperature;
    let mut sum = 0f64;
    for (pi, &li) in p.iter_mut().zip(&l) {
        *pi = ((li - max) * inv_t).exp();
        sum += *pi as f64;
    }
    let inv = (1.0 / sum) as f32;
    p.iter_mut().for_each(|x| *x *= inv);

    let truncate_k = params.top_k > 0 && params.top_k < p.len();
    if !truncate_k && params.top_p >= 1.0 {
        return p;
    }
    // Candidates in decreasing probability (ties by lower id, so the result is deterministic).
    let mut idx: Vec<u32> = (0..p.len() as u32).collect();
    let by_prob = |a: &u32, b: &u32| {
        p[*b as usize]
            .total_cmp(&p[*a as usize])
            .then_with(|| a.cmp(b))
    };
    if truncate_k {
        idx.select_nth_unstable_by(params.top_k - 1, by_prob);
        idx.truncate(params.top_k);
    }
    idx.sort_unstable_by(by_prob);
    if params.top_p < 1.0 {
        let mut cum = 0f32;
        let mut keep = idx.len();
        for (i, &t) in idx.iter().enumerate() {
            cum += p[t as usize];
            if cum >= params.top_p {
                keep = i + 1;
                break;
            }
        }
        idx.truncate(keep);
    }
    let mut out = vec![0f32; p.len()];
    let total: f32 = idx.iter().map(|&t| p[t as usize]).sum();
    for &t in &idx {
        out[t as usize] = p[t as usize] / total;
    }
    out
}

/// Draws an index from a probability vector (which need not sum exactly to one).
pub fn sample_from(probs: &[f32], rng: &mut StdRng) -> u32 {
    let total: f32 = probs.iter().sum();
    let mut r = rng.random::<f32>() * total;
    let mut last = 0;
    for (i, &p) in probs.iter().enumerate() {
        if p > 0.0 {
            last = i;
            if r < p {
                return i as u32;
            }
            r -= p;
        }
    }
    last as u32
}

/// A request's sampler: its parameters and its own seeded random number generator.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

impl Sampler {
    /// A sampler whose random stream depends only on `params.seed`.
    pub fn new(params: SamplingParams) -> Self {
        let rng = StdRng::seed_from_u64(params.seed);
        Self { params, rng }
    }

    /// The sampler's parameters.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// The request's random number generator (speculative acceptance draws from it too).
    pub fn rng(&mut self) -> &mut StdRng {
        &mut self.rng
    }

    /// The parameters and the RNG at once (a drafter reads one and draws from the other).
    pub fn parts(&mut self) -> (&SamplingParams, &mut StdRng) {
        (&self.params, &mut self.rng)
    }

    /// Picks the next token from one row of logits.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        if self.params.is_greedy() {
            if self.params.repetition_penalty == 1.0 {
                return argmax(logits);
            }
            let mut l = logits.to_vec();
            apply_repetition_penalty(&mut l, history, self.params.repetition_penalty);
            return argmax(&l);
        }
        let p = transform(logits, history, &self.params);
        sample_from(&p, &mut self.rng)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(t: f32, k: usize, p: f32) -> SamplingParams {
        SamplingParams {
            temperature: t,
            top_k: k,
            top_p: p,
            ..Default::default()
        }
    }

    #[test]
    fn greedy_is_argmax_and_penalty_can_change_it() {
        let logits = [1.0, 3.0, 2.9];
        let mut s = Sampler::new(params(0.0, 0, 1.0));
        assert_eq!(s.sample(&logits, &[]), 1);
        let mut s = Sampler::new(SamplingParams {
            repetition_penalty: 1.5,
            ..params(0.0, 0, 1.0)
        });
        assert_eq!(s.sample(&logits, &[1]), 2);
    }

    #[test]
    fn top_k_and_top_p_truncate_and_renormalize() {
        let logits = [0.0f32, 1.0, 2.0, 3.0];
        let p = transform(&logits, &[], &params(1.0, 2, 1.0));
        assert_eq!(p[0], 0.0);
        assert_eq!(p[1], 0.0);
        assert!((p[2] + p[3] - 1.0).abs() < 1e-6);
        assert!((p[3] / p[2] - 1f32.exp()).abs() < 1e-4);
        // softmax = [.032, .087, .237, .644]: top_p .7 keeps the two largest
        let p = transform(&logits, &[], &params(1.0, 0, 0.7));
        assert_eq!(p.iter().filter(|&&x| x > 0.0).count(), 2);
        let p = transform(&logits, &[], &params(1.0, 0, 0.6));
        assert_eq!(p.iter().filter(|&&x| x > 0.0).count(), 1);
    }

    #[test]
    fn temperature_sharpens_and_flattens() {
        let logits = [0.0f32, 1.0];
        let cold = transform(&logits, &[], &params(0.5, 0, 1.0));
        let hot = transform(&logits, &[], &params(2.0, 0, 1.0));
        assert!(cold[1] > hot[1]);
        assert!((cold[1] - 1.0 / (1.0 + (-2.0f32).exp())).abs() < 1e-6);
    }

    #[test]
    fn same_seed_same_draws_and_frequencies_match() {
        let logits = [0.0f32, 1.0, 2.0];
        let draw = |seed| {
            let mut s = Sampler::new(SamplingParams {
                seed,
                ..params(1.0, 0, 1.0)
            });
            (0..3000)
                .map(|_| s.sample(&logits, &[]))
                .collect::<Vec<_>>()
        };
        let a = draw(7);
        assert_eq!(a, draw(7));
        assert_ne!(a, draw(8));
        let want = transform(&logits, &[], &params(1.0, 0, 1.0));
        for (tok, &w) in want.iter().enumerate() {
            let f = a.iter().filter(|&&t| t as usize == tok).count() as f32 / a.len() as f32;
            // 3000 draws: the standard error is below 0.01
            assert!((f - w).abs() < 0.04, "token {tok}: {f} vs {w}");
        }
    }

    #[test]
    fn validation_names_the_field() {
        let e = params(-1.0, 0, 1.0).validate().unwrap_err().to_string();
        assert!(e.contains("temperature"), "{e}");
        let e = params(1.0, 0, 0.0).validate().unwrap_err().to_string();
        assert!(e.contains("top_p"), "{e}");
    }
}
