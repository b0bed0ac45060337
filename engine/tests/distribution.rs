//! Stochastic speculative decoding preserves the target's distribution.
//!
//! Three levels: the acceptance formulas against the exact analytic distribution (enumerating
//! every draft and every outcome), `accept_stochastic` itself against that distribution by
//! Monte Carlo, and whole generations of the tiny model pair (20,000 samples with and without
//! speculation) against the target's exact distribution by a chi-square test. Each level is
//! paired with a deliberately wrong rule — on rejection, draw from `p` instead of the residual
//! `norm(max(0, p − q))` — and shown to catch it, so the bounds are not too loose to fail.

use std::collections::HashMap;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use specd_engine::generate::{generate, GenerateOutput, GenerateRequest};
use specd_engine::model::tiny::{tiny_drafter, tiny_guessing_glide, tiny_model, TinySpec};
use specd_engine::model::{DraftVocab, Logits, Model};
use specd_engine::sampling::{sample_from, transform, SamplingParams};
use specd_engine::speculative::accept::{acceptance_probability, residual, DraftDist};
use specd_engine::speculative::{
    accept_stochastic, verify, AcceptRule, Acceptance, Draft, DraftPolicyConfig, GlideNgramConfig,
    GlideNgramProposer, Proposer, Sequence, Speculator, Verdict, Verified,
};
use specd_kernels::cpu::sample as kernel_sample;

type ResidualFn = fn(&[f32], DraftDist<'_>, u32) -> Vec<f32>;

/// The deliberately wrong residual: the target's own distribution, ignoring what the rejected
/// draft already covered. Output is then biased towards tokens the drafter likes.
fn wrong_residual(p: &[f32], _q: DraftDist<'_>, _token: u32) -> Vec<f32> {
    p.to_vec()
}

/// `accept_stochastic` with the wrong residual, for the end-to-end companion test.
fn wrong_accept(
    drafts: &[u32],
    q: Option<&[Vec<f32>]>,
    p: &[Vec<f32>],
    rng: &mut StdRng,
) -> Verdict {
    for (i, &d) in drafts.iter().enumerate() {
        let qi = match q {
            Some(q) => DraftDist::Probs(&q[i]),
            None => DraftDist::OneHot,
        };
        if rng.random::<f32>() >= acceptance_probability(&p[i], qi, d) {
            return Verdict {
                accepted: i,
                next: sample_from(&p[i], rng),
            };
        }
    }
    Verdict {
        accepted: drafts.len(),
        next: sample_from(&p[drafts.len()], rng),
    }
}

/// A random distribution over `v` tokens for each context, with some exact zeros.
fn dist(seed: u64, ctx: &[u32], v: usize) -> Vec<f32> {
    let mut h = seed;
    for &t in ctx {
        h = h
            .wrapping_mul(6364136223846793005)
            .wrapping_add(t as u64 + 1);
    }
    let mut rng = StdRng::seed_from_u64(h);
    let mut d: Vec<f32> = (0..v)
        .map(|_| {
            if rng.random::<f32>() < 0.2 {
                0.0
            } else {
                rng.random::<f32>().powi(2)
            }
        })
        .collect();
    if d.iter().all(|&x| x == 0.0) {
        d[0] = 1.0;
    }
    let s: f32 = d.iter().sum();
    d.iter_mut().for_each(|x| *x /= s);
    d
}

/// A deterministic drafter's choice for a context.
fn one_hot_choice(seed: u64, ctx: &[u32], v: usize) -> u32 {
    let d = dist(seed ^ 0x5eed, ctx, v);
    sample_from(&d, &mut StdRng::seed_from_u64(ctx.len() as u64 + seed))
}

/// A target's distribution after a context.
type TargetFn<'a> = &'a dyn Fn(&[u32]) -> Vec<f32>;
/// A drafter's distribution after a context, and whether it is deterministic (one-hot).
type DraftFn<'a> = &'a dyn Fn(&[u32]) -> (Vec<f32>, bool);

/// Enumerates every draft and every acceptance outcome of one step.
struct Enumerator<'a> {
    v: usize,
    p: TargetFn<'a>,
    q: DraftFn<'a>,
    res: ResidualFn,
    out: HashMap<Vec<u32>, f64>,
}

impl Enumerator<'_> {
    fn emit(&mut self, ctx: &[u32], x: usize, mass: f64) {
        let mut e = ctx.to_vec();
        e.push(x as u32);
        *self.out.entry(e).or_default() += mass;
    }

    fn go(&mut self, ctx: Vec<u32>, mass: f64, left: usize) {
        let pd = (self.p)(&ctx);
        if left == 0 {
            for (x, &px) in pd.iter().enumerate() {
                self.emit(&ctx, x, mass * px as f64);
            }
            return;
        }
        let (qd, one_hot) = (self.q)(&ctx);
        for d in 0..self.v {
            if qd[d] == 0.0 {
                continue;
            }
            let qi = if one_hot {
                DraftDist::OneHot
            } else {
                DraftDist::Probs(&qd)
            };
            let a = acceptance_probability(&pd, qi, d as u32) as f64;
            let m = mass * qd[d] as f64;
            let mut next = ctx.clone();
            next.push(d as u32);
            self.go(next, m * a, left - 1);
            let r = (self.res)(&pd, qi, d as u32);
            for (x, &rx) in r.iter().enumerate() {
                self.emit(&ctx, x, m * (1.0 - a) * rx as f64);
            }
        }
    }
}

/// The exact distribution of one step's emitted tokens (accepted drafts + one target token),
/// enumerating every draft and every acceptance outcome, for drafts of length `k`.
fn step_outcomes(
    k: usize,
    v: usize,
    p: TargetFn<'_>,
    q: DraftFn<'_>,
    res: ResidualFn,
) -> HashMap<Vec<u32>, f64> {
    let mut e = Enumerator {
        v,
        p,
        q,
        res,
        out: HashMap::new(),
    };
    e.go(Vec::new(), 1.0, k);
    e.out
}

/// Largest gap between the target's law of token sequences up to length `k + 1` and the law
/// speculation produces: one step, continued by the target itself once the step ends.
fn max_gap(k: usize, v: usize, p: TargetFn<'_>, e: &HashMap<Vec<u32>, f64>) -> f64 {
    let mut worst = 0f64;
    let mut seqs: Vec<Vec<u32>> = vec![Vec::new()];
    for _ in 0..=k {
        let mut next = Vec::new();
        for s in &seqs {
            for x in 0..v as u32 {
                let mut t = s.clone();
                t.push(x);
                // Target: the product of p along the sequence.
                let mut target = 1f64;
                for i in 0..t.len() {
                    target *= p(&t[..i])[t[i] as usize] as f64;
                }
                // Speculation: a step emitting at least `t`, or a shorter prefix of it after
                // which the target samples the rest.
                let mut spec: f64 = e
                    .iter()
                    .filter(|(o, _)| o.len() >= t.len() && o[..t.len()] == t[..])
                    .map(|(_, m)| m)
                    .sum();
                for j in 1..t.len() {
                    if let Some(m) = e.get(&t[..j]) {
                        let mut tail = *m;
                        for i in j..t.len() {
                            tail *= p(&t[..i])[t[i] as usize] as f64;
                        }
                        spec += tail;
                    }
                }
                worst = worst.max((target - spec).abs());
                next.push(t);
            }
        }
        seqs = next;
    }
    worst
}

#[test]
fn one_acceptance_step_emits_exactly_the_target_distribution() {
    let v = 6;
    let mut rng = StdRng::seed_from_u64(3);
    let mut worst_wrong = 0f64;
    for case in 0..500u64 {
        let p = dist(case, &[], v);
        let q = dist(case + 10_000, &[], v);
        for (qd, one_hot) in [
            (q.clone(), false),
            (one_hot_dist(rng.random_range(0..v), v), true),
        ] {
            for (correct, res) in [(true, residual as ResidualFn), (false, wrong_residual)] {
                let mut got = vec![0f64; v];
                for d in 0..v {
                    if qd[d] == 0.0 {
                        continue;
                    }
                    let qi = if one_hot {
                        DraftDist::OneHot
                    } else {
                        DraftDist::Probs(&qd)
                    };
                    let a = acceptance_probability(&p, qi, d as u32) as f64;
                    got[d] += qd[d] as f64 * a;
                    let r = res(&p, qi, d as u32);
                    for x in 0..v {
                        got[x] += qd[d] as f64 * (1.0 - a) * r[x] as f64;
                    }
                }
                let gap = got
                    .iter()
                    .zip(&p)
                    .map(|(g, &w)| (g - w as f64).abs())
                    .fold(0.0, f64::max);
                if correct {
                    assert!(gap < 1e-5, "case {case}, one-hot {one_hot}: gap {gap}");
                } else {
                    worst_wrong = worst_wrong.max(gap);
                }
            }
        }
    }
    assert!(
        worst_wrong > 0.05,
        "the wrong rule went unnoticed: {worst_wrong}"
    );
}

fn one_hot_dist(t: usize, v: usize) -> Vec<f32> {
    let mut d = vec![0.0; v];
    d[t] = 1.0;
    d
}

#[test]
fn every_position_of_a_draft_chain_follows_the_target() {
    let v = 4;
    for k in 1..=3 {
        let mut worst_wrong = [0f64; 2];
        for seed in 0..6u64 {
            let p = move |ctx: &[u32]| dist(seed, ctx, v);
            let q_model = move |ctx: &[u32]| (dist(seed + 100, ctx, v), false);
            let q_det =
                move |ctx: &[u32]| (one_hot_dist(one_hot_choice(seed, ctx, v) as usize, v), true);
            for (name, q) in [
                (
                    "draft model",
                    &q_model as &dyn Fn(&[u32]) -> (Vec<f32>, bool),
                ),
                ("deterministic", &q_det),
            ] {
                let e = step_outcomes(k, v, &p, q, residual);
                let total: f64 = e.values().sum();
                assert!((total - 1.0).abs() < 1e-6, "outcomes sum to {total}");
                let gap = max_gap(k, v, &p, &e);
                assert!(gap < 1e-5, "{name}, k={k}, seed {seed}: gap {gap}");
                let wrong = step_outcomes(k, v, &p, q, wrong_residual);
                worst_wrong[usize::from(name == "deterministic")] = worst_wrong
                    [usize::from(name == "deterministic")]
                .max(max_gap(k, v, &p, &wrong));
            }
        }
        // For some contexts the wrong rule happens to coincide (a one-hot draft the target gives
        // no mass), but over the seeds it must show.
        assert!(
            worst_wrong.iter().all(|&g| g > 1e-2),
            "k={k}: the wrong rule went unnoticed ({worst_wrong:?})"
        );
    }
}

/// `k` drafts drawn one after another from the drafter `q`, and the distribution of each.
fn draw_drafts(k: usize, q: DraftFn<'_>, rng: &mut StdRng) -> (Vec<u32>, Vec<Vec<f32>>) {
    let mut drafts = Vec::new();
    let mut qs = Vec::new();
    for _ in 0..k {
        let qd = q(&drafts).0;
        drafts.push(sample_from(&qd, rng));
        qs.push(qd);
    }
    (drafts, qs)
}

#[test]
fn accept_stochastic_draws_what_the_analysis_predicts() {
    // Monte Carlo of the real function against the enumerated outcome law.
    let (v, k, n) = (4, 2, 200_000);
    let p = |ctx: &[u32]| dist(7, ctx, v);
    let q = |ctx: &[u32]| (dist(8, ctx, v), false);
    let exact = step_outcomes(k, v, &p, &q, residual);
    let mut rng = StdRng::seed_from_u64(9);
    let mut counts: HashMap<Vec<u32>, f64> = HashMap::new();
    for _ in 0..n {
        let (drafts, qs) = draw_drafts(k, &q, &mut rng);
        let ps: Vec<Vec<f32>> = (0..=k).map(|i| p(&drafts[..i])).collect();
        let verdict = accept_stochastic(&drafts, Some(&qs), &ps, &mut rng);
        let mut e = drafts[..verdict.accepted].to_vec();
        e.push(verdict.next);
        *counts.entry(e).or_default() += 1.0;
    }
    let (stat, df) = chi_square(&counts, &exact, n as f64);
    assert!(stat < critical(df), "chi2 {stat:.1} with {df} df");
}

/// The rejection sampling the verification forward runs (on a GPU the kernel, which
/// gpu_kernels shows equal to this CPU reference; on the CPU the reference itself) against the
/// enumerated law, for a drafter with its own distribution and a deterministic one: the
/// algorithm behind `Model::verify_sampled` is exact too. And with the wrong residual (a
/// rejection redraws from `p`), the same harness fails.
#[test]
fn the_forwards_rejection_sampling_draws_what_the_analysis_predicts() {
    let (v, k, n) = (4, 2, 200_000);
    let p = |ctx: &[u32]| dist(7, ctx, v);
    let q_model = |ctx: &[u32]| (dist(8, ctx, v), false);
    let q_det = |ctx: &[u32]| (one_hot_dist(one_hot_choice(8, ctx, v) as usize, v), true);
    let mut rng = StdRng::seed_from_u64(10);
    for (name, q) in [
        (
            "draft model",
            &q_model as &dyn Fn(&[u32]) -> (Vec<f32>, bool),
        ),
        ("deterministic", &q_det),
    ] {
        let exact = step_outcomes(k, v, &p, q, residual);
        let mut counts: HashMap<Vec<u32>, f64> = HashMap::new();
        let mut wrong: HashMap<Vec<u32>, f64> = HashMap::new();
        for _ in 0..n {
            // ids: the last committed token (any), then the drafts.
            let mut ids = vec![0u32];
            let mut qs = Vec::new();
            for _ in 0..k {
                let (qd, one_hot) = q(&ids[1..]);
                ids.push(sample_from(&qd, &mut rng));
                if !one_hot {
                    qs.push(qd);
                }
            }
            let ps: Vec<Vec<f32>> = (0..=k).map(|i| p(&ids[1..1 + i])).collect();
            let p_refs: Vec<&[f32]> = ps.iter().map(Vec::as_slice).collect();
            let q_refs: Vec<&[f32]> = qs.iter().map(Vec::as_slice).collect();
            let q_arg = (!qs.is_empty()).then_some(&q_refs[..]);
            let u: Vec<f32> = (0..=k).map(|_| rng.random()).collect();
            let (kept, next) = kernel_sample::rejection_sample(&p_refs, q_arg, &ids, &u);
            let mut e = ids[1..1 + kept].to_vec();
            e.push(next);
            *counts.entry(e).or_default() += 1.0;
            // The wrong rule: the same draws, but a rejection redraws from p.
            let mut e = ids[1..1 + kept].to_vec();
            e.push(if kept < k {
                kernel_sample::draw(v, |j| ps[kept][j], u[k]).unwrap_or(0)
            } else {
                next
            });
            *wrong.entry(e).or_default() += 1.0;
        }
        let (stat, df) = chi_square(&counts, &exact, n as f64);
        assert!(stat < critical(df), "{name}: chi2 {stat:.1} with {df} df");
        let (stat, df) = chi_square(&wrong, &exact, n as f64);
        assert!(
            stat > critical(df),
            "{name}: the wrong rule passed (chi2 {stat:.1} with {df} df)"
        );
    }
}

/// A drafter over a reduced vocabulary (GLIDE's head scores a subset of the target's tokens):
/// its distribution is zero outside the subset, drafts are target ids from the subset, and
/// acceptance stays exact, on the host (`accept_stochastic`) and in the forward (the kernel's
/// reference) alike, though the target puts mass outside the subset.
#[test]
fn a_reduced_draft_vocabulary_keeps_sampling_exact() {
    let (v, k, n) = (6, 2, 200_000);
    let vocab = DraftVocab::new(vec![4, 1, 3], v).unwrap();
    let p = |ctx: &[u32]| dist(11, ctx, v);
    let q = |ctx: &[u32]| (vocab.expand_probs(&dist(12, ctx, vocab.len())), false);
    let outside: f32 = [0, 2, 5].iter().map(|&t| p(&[])[t]).sum();
    assert!(
        outside > 0.1,
        "the target's mass outside the subset: {outside}"
    );
    let exact = step_outcomes(k, v, &p, &q, residual);
    let mut rng = StdRng::seed_from_u64(13);
    let (mut host, mut forward): (HashMap<Vec<u32>, f64>, HashMap<Vec<u32>, f64>) =
        Default::default();
    for _ in 0..n {
        let (drafts, qs) = draw_drafts(k, &q, &mut rng);
        assert!(drafts.iter().all(|&d| vocab.from_target(d).is_some()));
        let ps: Vec<Vec<f32>> = (0..=k).map(|i| p(&drafts[..i])).collect();
        let verdict = accept_stochastic(&drafts, Some(&qs), &ps, &mut rng);
        let mut e = drafts[..verdict.accepted].to_vec();
        e.push(verdict.next);
        *host.entry(e).or_default() += 1.0;
        let ids: Vec<u32> = std::iter::once(0).chain(drafts.iter().copied()).collect();
        let p_refs: Vec<&[f32]> = ps.iter().map(Vec::as_slice).collect();
        let q_refs: Vec<&[f32]> = qs.iter().map(Vec::as_slice).collect();
        let u: Vec<f32> = (0..=k).map(|_| rng.random()).collect();
        let (kept, next) = kernel_sample::rejection_sample(&p_refs, Some(&q_refs), &ids, &u);
        let mut e = drafts[..kept].to_vec();
        e.push(next);
        *forward.entry(e).or_default() += 1.0;
    }
    for (name, counts) in [("host", &host), ("forward", &forward)] {
        let (stat, df) = chi_square(counts, &exact, n as f64);
        assert!(stat < critical(df), "{name}: chi2 {stat:.1} with {df} df");
    }
}

/// Pearson's statistic of observed counts against exact probabilities; cells expecting fewer
/// than 5 observations are pooled. Returns the statistic and its degrees of freedom.
fn chi_square<K: std::hash::Hash + Eq + Clone>(
    observed: &HashMap<K, f64>,
    exact: &HashMap<K, f64>,
    n: f64,
) -> (f64, usize) {
    let (mut stat, mut cells) = (0.0, 0usize);
    let (mut pool_o, mut pool_e) = (0.0, 0.0);
    for (key, &p) in exact {
        let e = p * n;
        let o = observed.get(key).copied().unwrap_or(0.0);
        if e >= 5.0 {
            stat += (o - e).powi(2) / e;
            cells += 1;
        } else {
            pool_o += o;
            pool_e += e;
        }
    }
    // Outcomes the exact law gives no mass at all belong in the pool too.
    pool_o += observed
        .iter()
        .filter(|(k, _)| !exact.contains_key(*k))
        .map(|(_, o)| o)
        .sum::<f64>();
    if pool_e > 0.0 {
        stat += (pool_o - pool_e).powi(2) / pool_e.max(1.0);
        cells += 1;
    }
    (stat, cells.saturating_sub(1).max(1))
}

/// The chi-square value exceeded with probability 1e-6 (Wilson–Hilferty): a correct sampler
/// fails this test about once in a million runs, and a biased one fails it reliably (below).
fn critical(df: usize) -> f64 {
    let d = df as f64;
    let z = 4.753;
    d * (1.0 - 2.0 / (9.0 * d) + z * (2.0 / (9.0 * d)).sqrt()).powi(3)
}

fn spec() -> TinySpec {
    TinySpec {
        seed: 21,
        weight_scale: 0.2,
        ..Default::default()
    }
}

fn sampling(seed: u64) -> SamplingParams {
    SamplingParams {
        temperature: 4.0,
        top_k: 4,
        top_p: 0.98,
        repetition_penalty: 1.0,
        seed,
    }
}

/// Sampling at a temperature alone: acceptance runs inside the verification forward.
fn temperature_only(seed: u64) -> SamplingParams {
    SamplingParams {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        repetition_penalty: 1.0,
        seed,
    }
}

/// How samples are drawn: the parameters by seed, and the tokens generated per sample.
#[derive(Clone, Copy)]
struct Setup {
    params: fn(u64) -> SamplingParams,
    gen: usize,
}

/// Three tokens per sample: the first step drafts two tokens, so the chain's second position
/// is exercised too.
const TRUNCATED: Setup = Setup {
    params: sampling,
    gen: 3,
};

/// Two tokens per sample: without truncation every token has mass, and the exact law's
/// enumeration grows with the vocabulary per generated token.
const TEMPERATURE_ONLY: Setup = Setup {
    params: temperature_only,
    gen: 2,
};

/// Outcome of a generation: the tokens, with `u32::MAX` standing for an EOS.
fn outcome(out: &GenerateOutput, gen: usize) -> Vec<u32> {
    let mut t = out.tokens.clone();
    if t.len() < gen {
        t.push(u32::MAX);
    }
    t
}

/// The target's exact law of `setup.gen`-token outcomes, from its own distributions.
fn exact_law(model: &Model, prompt: &[u32], eos: &[u32], setup: Setup) -> HashMap<Vec<u32>, f64> {
    struct Walk<'a> {
        model: &'a Model,
        prompt_len: usize,
        eos: &'a [u32],
        setup: Setup,
        law: HashMap<Vec<u32>, f64>,
    }
    fn go(w: &mut Walk<'_>, ctx: &mut Vec<u32>, mass: f64) {
        let mut cache = w.model.new_cache();
        let l = w
            .model
            .forward_cache(&mut cache, ctx, Logits::Last)
            .unwrap();
        let p = transform(
            &l.squeeze(0).unwrap().to_vec1::<f32>().unwrap(),
            ctx,
            &(w.setup.params)(0),
        );
        for (x, &px) in p.iter().enumerate() {
            if px == 0.0 {
                continue;
            }
            let m = mass * px as f64;
            let generated = &ctx[w.prompt_len..];
            if w.eos.contains(&(x as u32)) {
                let mut key = generated.to_vec();
                key.push(u32::MAX);
                *w.law.entry(key).or_default() += m;
            } else if generated.len() + 1 == w.setup.gen {
                let mut key = generated.to_vec();
                key.push(x as u32);
                *w.law.entry(key).or_default() += m;
            } else {
                ctx.push(x as u32);
                go(w, ctx, m);
                ctx.pop();
            }
        }
    }
    let mut walk = Walk {
        model,
        prompt_len: prompt.len(),
        eos,
        setup,
        law: HashMap::new(),
    };
    go(&mut walk, &mut prompt.to_vec(), 1.0);
    walk.law
}

/// Whether `counts` of `N` samples pass the chi-square test against `exact` (printed).
fn fits(name: &str, counts: &HashMap<Vec<u32>, f64>, exact: &HashMap<Vec<u32>, f64>) -> bool {
    let n = counts.values().sum::<f64>();
    let (stat, df) = chi_square(counts, exact, n);
    eprintln!(
        "{name}: chi2 {stat:.1}, {df} df, critical {:.1}",
        critical(df)
    );
    stat < critical(df)
}

/// `n` speculative samples drafted by `draft`; `rule: None` leaves acceptance where the
/// engine puts it (in the verification forward when the sampling allows it).
fn sample_speculative(
    target: &Model,
    draft: &dyn Proposer,
    rule: Option<AcceptRule>,
    prompt: &[u32],
    n: u64,
    setup: Setup,
) -> HashMap<Vec<u32>, f64> {
    let loaded = tiny_model(&spec()).unwrap();
    let tok = loaded.tokenizer.unwrap();
    let mut spec = Speculator::new(target, Some(draft));
    if let Some(rule) = rule {
        spec = spec.with_rule(rule);
    }
    let policy = DraftPolicyConfig {
        max_draft: 3,
        adaptive: false,
        confidence: None,
    };
    let mut counts = HashMap::new();
    let (mut drafted, mut accepted) = (0, 0);
    for i in 0..n {
        let req = GenerateRequest {
            prompt: prompt.to_vec(),
            max_tokens: setup.gen,
            sampling: (setup.params)(i),
            stop: Vec::new(),
            ignore_eos: false,
        };
        let mut seq = Sequence::new(target, &tok, Some(draft), req, policy).unwrap();
        spec.prefill(&mut seq).unwrap();
        while !seq.is_finished() {
            spec.step(&mut [&mut seq]).unwrap();
        }
        spec.release(&mut seq);
        let out = seq.output();
        drafted += out.speculation.drafted_tokens;
        accepted += out.speculation.accepted_tokens;
        *counts.entry(outcome(&out, setup.gen)).or_default() += 1.0;
    }
    eprintln!("{accepted} of {drafted} drafts accepted");
    // Both outcomes must be common, or the rejection path went untested.
    assert!(
        accepted > n / 10 && drafted - accepted > n / 10,
        "{accepted} of {drafted}"
    );
    counts
}

#[test]
fn sampled_generations_follow_the_target_with_and_without_speculation() {
    const N: u64 = 20_000;
    let target = tiny_model(&spec()).unwrap();
    let tok = target.tokenizer.clone().unwrap();
    let draft = tiny_drafter(&spec(), 0.25, 3, &target).unwrap();
    let prompt = [40u32, 71, 33];
    let exact = exact_law(&target.model, &prompt, tok.eos_token_ids(), TRUNCATED);

    let mut plain = HashMap::new();
    for i in 0..N {
        let req = GenerateRequest {
            prompt: prompt.to_vec(),
            max_tokens: TRUNCATED.gen,
            sampling: sampling(1_000_000 + i),
            stop: Vec::new(),
            ignore_eos: false,
        };
        let out = generate(&target.model, &tok, &req, |_| {}).unwrap();
        *plain.entry(outcome(&out, TRUNCATED.gen)).or_default() += 1.0;
    }
    assert!(
        fits("target only", &plain, &exact),
        "target-only sampling is off"
    );

    let spec_counts = sample_speculative(
        &target.model,
        &draft,
        Some(accept_stochastic),
        &prompt,
        N,
        TRUNCATED,
    );
    assert!(
        fits("speculative", &spec_counts, &exact),
        "speculative sampling is off"
    );

    // The same harness with the wrong rule must fail, or the bound proves nothing.
    let wrong = sample_speculative(
        &target.model,
        &draft,
        Some(wrong_accept),
        &prompt,
        N,
        TRUNCATED,
    );
    assert!(
        !fits("wrong rule", &wrong, &exact),
        "the wrong rule passed — the test cannot tell"
    );
}

/// GLIDE with prompt lookup (`glide+ngram`): the prompt's last two tokens occurred before, so
/// the first draft is the n-gram proposal (deterministic: one-hot `q`) and later ones mostly
/// GLIDE's sampled drafts (its reduced vocabulary's `q`; with two tokens to generate, only the
/// n-gram drafts). Generations follow the target's exact
/// law, with acceptance on the host (top-k, top-p) and in the verification forward
/// (temperature alone).
#[test]
fn sampled_generations_with_glide_and_ngram_follow_the_target() {
    const N: u64 = 20_000;
    let target = tiny_model(&spec()).unwrap();
    let tok = target.tokenizer.clone().unwrap();
    let glide = tiny_guessing_glide(&target.model, 240, 9).unwrap();
    let combined = GlideNgramProposer::new(
        Arc::new(glide),
        GlideNgramConfig {
            min_match: 2,
            max_match: 8,
        },
    )
    .unwrap();
    // The n-gram proposal continues `40 71` with `12 40`; the target gives `12` a probability of
    // 0.39 at temperature 1 (0.31 at top-k 4), so it is both accepted and rejected often.
    let prompt = [40u32, 71, 12, 40, 71];
    for setup in [TRUNCATED, TEMPERATURE_ONLY] {
        let exact = exact_law(&target.model, &prompt, tok.eos_token_ids(), setup);
        let counts = sample_speculative(&target.model, &combined, None, &prompt, N, setup);
        assert!(
            fits(
                &format!("glide+ngram, {} tokens", setup.gen),
                &counts,
                &exact
            ),
            "sampling with glide+ngram is off ({} tokens)",
            setup.gen
        );
    }
}

/// At a temperature alone the verification forward decides acceptance
/// (`Model::verify_sampled`: on the CPU the kernels' references, on a GPU the kernels), and
/// speculative generations still follow the target's exact law. (The algorithm's power to
/// fail is shown by `the_forwards_rejection_sampling_draws_what_the_analysis_predicts`.)
#[test]
fn sampling_at_a_temperature_alone_decides_in_the_forward_and_follows_the_target() {
    const N: u64 = 20_000;
    let target = tiny_model(&spec()).unwrap();
    let tok = target.tokenizer.clone().unwrap();
    let draft = tiny_drafter(&spec(), 0.25, 3, &target).unwrap();
    let prompt = [40u32, 71, 33];

    // The routing: acceptance comes back decided for a temperature alone, as rows otherwise.
    for (params, decided) in [(temperature_only(1), true), (sampling(1), false)] {
        let mut pool = target.model.new_pool(64);
        let req = GenerateRequest {
            prompt: prompt.to_vec(),
            max_tokens: 4,
            sampling: params,
            stop: Vec::new(),
            ignore_eos: false,
        };
        let mut seq =
            Sequence::new(&target.model, &tok, None, req, DraftPolicyConfig::default()).unwrap();
        seq.prefill(&target.model, &mut pool, None).unwrap();
        let drafts = [Draft {
            tokens: vec![7, 9],
            probs: None,
            lookup: false,
        }];
        let v = verify(
            &target.model,
            &mut pool,
            &mut [&mut seq],
            &drafts,
            Vec::new(),
            Acceptance::InForward,
        )
        .unwrap();
        assert_eq!(
            matches!(v[0], Verified::Decided(_)),
            decided,
            "temperature alone: {decided}"
        );
    }

    let exact = exact_law(
        &target.model,
        &prompt,
        tok.eos_token_ids(),
        TEMPERATURE_ONLY,
    );
    let counts = sample_speculative(&target.model, &draft, None, &prompt, N, TEMPERATURE_ONLY);
    assert!(
        fits("speculative, decided in the forward", &counts, &exact),
        "sampling decided in the forward is off"
    );
}
