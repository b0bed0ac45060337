//! The GLIDE proposer: a [`GlideModel`] drafting with its own cache, kept like a draft model's
//! ([`super::draft_model`]'s rounds and bookkeeping), whose cross-attention reads the target's
//! cache of the sequence through the [`TargetView`]. Its rows over the reduced vocabulary are
//! spread onto the target's (minus infinity elsewhere), so greedy drafts are target ids and a
//! sampled draft's distribution is zero outside the subset: acceptance stays exact.
//!
//! A sequence drafts with GLIDE only once the target has prefilled its prompt
//! ([`Proposer::reads_target_cache`]); the drafter reads the prompt itself at its first
//! proposal (no separate prefill, which would run before the target's).
//!
//! Wherever GLIDE is served, so is its combination with prompt lookup
//! ([`GlideNgramProposer`], `glide+ngram`): the proposer carries it.

use std::sync::Arc;

use super::glide_ngram::{GlideNgramConfig, GlideNgramProposer};
use super::proposer::{Draft, ProposeInput, Proposer, ProposerState, TargetView};
use super::rounds::{draft_rounds, ChainRounds, Next};
use crate::error::Result;
use crate::generate::PREFILL_CHUNK;
use crate::kv::{BlockTable, KvPool};
use crate::model::{DraftRows, FeatureRow, FeatureSource, GlideModel, Logits, SeqInput, TargetKv};

/// A GLIDE proposer.
#[derive(Debug, Clone)]
pub struct GlideProposer {
    model: Arc<GlideModel>,
    /// The same drafter combined with prompt lookup (default settings).
    with_ngram: GlideNgramProposer,
}

impl GlideProposer {
    pub fn new(model: Arc<GlideModel>) -> Self {
        let with_ngram = GlideNgramProposer::new(model.clone(), GlideNgramConfig::default())
            .expect("the default glide+ngram settings are valid");
        Self { model, with_ngram }
    }

    pub fn model(&self) -> &GlideModel {
        &self.model
    }

    /// This drafter combined with prompt lookup (`glide+ngram`), sharing its pool.
    pub fn with_ngram(&self) -> &GlideNgramProposer {
        &self.with_ngram
    }
}

/// A sequence's state for a GLIDE drafter: it asks verification for the target's rows when
/// the drafter reads them.
pub(super) fn glide_state(model: &GlideModel) -> ProposerState {
    ProposerState {
        wants_feature: model.config().feature.has_weights(),
        ..ProposerState::default()
    }
}

/// GLIDE's drafts for `batch`: its own cache first reads the committed tokens it lacks, then
/// drafts one token per round, chosen on its reduced vocabulary (spread onto the target's
/// only when sampling needs the whole row). On a GPU, when every sequence drafts greedily
/// without a penalty, the device picks each draft and only its token and probability cross
/// to the host; the rounds after the first may run there in one go, each feeding the pick
/// of the one before ([`GlideModel::draft_chain`], with `SPECD_GLIDE_CHAIN=1`; not for a
/// drafter that feeds its own rows forward).
pub(super) fn glide_drafts(
    model: &GlideModel,
    target: TargetView<'_>,
    kv: &mut KvPool,
    batch: &mut [ProposeInput<'_>],
) -> Result<Vec<Draft>> {
    let target_tables: Vec<&BlockTable> = batch.iter().map(|s| s.target_table).collect();
    // The round's first row reads the target's row; with a chaining drafter, each later row
    // the drafter's own final row before it (what its head read there).
    let mut features = take_features(model, batch);
    let ctx = target.model.config().max_position_embeddings;
    let vocab = model.vocab();
    let greedy = batch
        .iter()
        .all(|s| s.sampling.is_greedy() && s.sampling.repetition_penalty == 1.0);
    // Greedy rounds after the first chain on the device where the drafter can.
    let mut chain =
        |kv: &mut KvPool, inputs: &mut [SeqInput<'_>], seqs: &[usize], counts: &[usize]| {
            let tables: Vec<&BlockTable> = seqs.iter().map(|&i| target_tables[i]).collect();
            let cross = TargetKv {
                kv: target.kv,
                tables: &tables,
            };
            model.draft_chain(kv, inputs, cross, counts)
        };
    let chain: Option<&mut ChainRounds<'_>> = if greedy && model.chains_on_device() {
        Some(&mut chain)
    } else {
        None
    };
    draft_rounds(
        batch,
        kv,
        ctx,
        |kv, inputs, seqs| {
            let tables: Vec<&BlockTable> = seqs.iter().map(|&i| target_tables[i]).collect();
            let wanted = inputs.iter().any(|s| s.logits != Logits::None);
            let rows: Vec<Option<FeatureRow<'_>>> = seqs
                .iter()
                .map(|&i| {
                    let (position, hidden, source) = features[i].as_ref()?;
                    Some(FeatureRow {
                        position: *position,
                        hidden,
                        source: *source,
                    })
                })
                .collect();
            let cross = TargetKv {
                kv: target.kv,
                tables: &tables,
            };
            let (out, own) = model.forward_drafting(kv, inputs, cross, &rows, greedy)?;
            for ((&i, s), own) in seqs
                .iter()
                .zip(inputs.iter())
                .zip(own.into_iter().flatten())
            {
                if let Some(last) = own.into_iter().last() {
                    features[i] = Some((s.table.len(), last, FeatureSource::Drafter));
                }
            }
            if !wanted {
                return Ok(Vec::new());
            }
            match out {
                DraftRows::Top(rows) => Ok(rows.into_iter().map(|r| Next::Top(r[0])).collect()),
                DraftRows::Logits(rows) => rows
                    .iter()
                    .map(|t| Ok(Next::Reduced(t.squeeze(0)?.to_vec1::<f32>()?, vocab)))
                    .collect(),
            }
        },
        chain,
    )
}

/// Each sequence's feature for its round of drafts (GLIDE with a feature: the target's row
/// before the last committed token, which the round's first row reads), taken from its state:
/// it serves that one row. A feature kept for another position (none was verified since) is
/// dropped.
fn take_features(
    model: &GlideModel,
    batch: &mut [ProposeInput<'_>],
) -> Vec<Option<(usize, Vec<f32>, FeatureSource)>> {
    batch
        .iter_mut()
        .map(|s| {
            let (position, hidden) = s.state.feature.take()?;
            let fresh = model.config().feature.has_weights() && position + 1 == s.tokens.len();
            fresh.then_some((position, hidden, FeatureSource::Target))
        })
        .collect()
}

/// Feeds GLIDE's own cache the committed tokens (all but the last) it lacks, drafting nothing
/// and computing no head rows: for sequences that took another proposal this step, so that
/// the cache holds what it would have held had GLIDE drafted (a row's keys depend only on the
/// tokens and the target positions before it). All sequences go together, at most
/// [`PREFILL_CHUNK`] tokens each per forward.
pub(super) fn glide_read_committed(
    model: &GlideModel,
    target: TargetView<'_>,
    kv: &mut KvPool,
    batch: &mut [ProposeInput<'_>],
) -> Result<()> {
    loop {
        let mut inputs: Vec<SeqInput<'_>> = Vec::new();
        let mut tables: Vec<&BlockTable> = Vec::new();
        for s in batch.iter_mut() {
            let head = s.tokens.len() - 1;
            let table = s.state.table.get_or_insert_with(BlockTable::new);
            if table.len() > head {
                kv.truncate(table, head);
            }
            let from = table.len();
            if from == head {
                continue;
            }
            inputs.push(SeqInput {
                table,
                tokens: &s.tokens[from..head.min(from + PREFILL_CHUNK)],
                logits: Logits::None,
            });
            tables.push(s.target_table);
        }
        if inputs.is_empty() {
            return Ok(());
        }
        let cross = TargetKv {
            kv: target.kv,
            tables: &tables,
        };
        model.forward(kv, &mut inputs, cross)?;
    }
}

impl Proposer for GlideProposer {
    fn name(&self) -> &'static str {
        "glide"
    }

    fn new_state(&self) -> ProposerState {
        glide_state(&self.model)
    }

    fn new_pool(&self, max_blocks: usize) -> KvPool {
        self.model.new_pool(max_blocks)
    }

    fn has_own_cache(&self) -> bool {
        true
    }

    fn reads_target_cache(&self) -> bool {
        true
    }

    fn propose(
        &self,
        target: TargetView<'_>,
        kv: &mut KvPool,
        batch: &mut [ProposeInput<'_>],
    ) -> Result<Vec<Draft>> {
        glide_drafts(&self.model, target, kv, batch)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::Tensor;
    use rand::SeedableRng;

    use super::*;
    use crate::model::glide::CHAIN_NORM_TENSOR;
    use crate::model::tiny::{
        tiny_config, tiny_glide_config, tiny_glide_weights, tiny_weights, TinySpec,
    };
    use crate::model::{DraftVocab, GlideFeature, Model, Weights};
    use crate::sampling::SamplingParams;

    /// A tiny target and a drafter for it that reads the target's last hidden state through a
    /// strong projection.
    fn pair() -> (Model, GlideModel) {
        pair_with(GlideFeature::LastHidden)
    }

    fn pair_with(feature: GlideFeature) -> (Model, GlideModel) {
        pair_edited(feature, false, |_| {})
    }

    /// [`pair_with`], with the chained rows' own norm if `chain_norm`, and `edit` applied to the
    /// drafter's tensors (the same seed: every other tensor is the same whatever these say).
    fn pair_edited(
        feature: GlideFeature,
        chain_norm: bool,
        edit: impl FnOnce(&mut HashMap<String, Tensor>),
    ) -> (Model, GlideModel) {
        let config = tiny_config(&TinySpec::default());
        let target = Model::load(
            config.clone(),
            &mut Weights::from_tensors(tiny_weights(&config, 3, 0.3)),
        )
        .unwrap();
        let mut glide = tiny_glide_config(&config, 200);
        glide.feature = feature;
        glide.chain_norm = chain_norm;
        let mut tensors = tiny_glide_weights(&config, &glide, 7, 0.3);
        edit(&mut tensors);
        let vocab = DraftVocab::new((0..200).collect(), config.vocab_size).unwrap();
        let model = GlideModel::from_weights(
            glide,
            &mut Weights::from_tensors(tensors),
            vocab,
            &target,
            std::path::Path::new("<test>"),
        )
        .unwrap();
        (target, model)
    }

    /// The target's cache of all of `tokens` but the last, and its final normed row there.
    fn target_before_last(target: &Model, tokens: &[u32]) -> (KvPool, BlockTable, Vec<f32>) {
        let mut target_kv = target.new_pool(16);
        let mut target_table = BlockTable::new();
        let hidden = cache_before_last(target, &mut target_kv, &mut target_table, tokens);
        (target_kv, target_table, hidden)
    }

    /// Caches all of `tokens` but the last in `kv` under `table`; the target's final normed
    /// row at the last cached one.
    fn cache_before_last(
        target: &Model,
        kv: &mut KvPool,
        table: &mut BlockTable,
        tokens: &[u32],
    ) -> Vec<f32> {
        let (_, mut hidden) = target
            .forward_keeping_hidden(
                kv,
                &mut [SeqInput {
                    table,
                    tokens: &tokens[..tokens.len() - 1],
                    logits: Logits::Last,
                }],
            )
            .unwrap();
        hidden.remove(0).remove(0)
    }

    /// One round of greedy drafts for `tokens`, the target having cached all but the last, with
    /// `feature` (if any) in the sequence's state; also whether the round took it.
    fn drafts(
        target: &Model,
        glide: &GlideModel,
        tokens: &[u32],
        feature: bool,
    ) -> (Vec<u32>, bool) {
        let (target_kv, target_table, hidden) = target_before_last(target, tokens);
        let mut state = glide_state(glide);
        if feature {
            state.feature = Some((tokens.len() - 1, hidden));
        }
        let mut kv = glide.new_pool(16);
        let sampling = SamplingParams::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut batch = [ProposeInput {
            tokens,
            target_table: &target_table,
            state: &mut state,
            max: 4,
            sampling: &sampling,
            rng: &mut rng,
            confidence: None,
        }];
        let view = TargetView {
            model: target,
            kv: &target_kv,
        };
        let d = glide_drafts(glide, view, &mut kv, &mut batch).unwrap();
        (d[0].tokens.clone(), state.feature.is_some())
    }

    #[test]
    fn a_round_of_drafts_reads_the_feature_its_sequence_holds_once() {
        let (target, glide) = pair();
        assert!(glide_state(&glide).wants_feature);
        let mut differ = 0;
        for s in 0..6u32 {
            let tokens: Vec<u32> = (0..(6 + s)).map(|i| (i * 31 + s * 7 + 3) % 200).collect();
            let (with, left) = drafts(&target, &glide, &tokens, true);
            let (without, _) = drafts(&target, &glide, &tokens, false);
            assert!(!left, "the round took the feature: it serves one row");
            differ += usize::from(with != without);
        }
        assert!(
            differ > 0,
            "the feature changed no draft: the round never read it"
        );
    }

    /// A chaining drafter's round, drafted the long way: one forward per row, the first
    /// reading the target's row, each later one the final row the forward before handed back.
    fn chained_by_hand(target: &Model, glide: &GlideModel, tokens: &[u32], n: usize) -> Vec<u32> {
        let (target_kv, target_table, hidden) = target_before_last(target, tokens);
        let mut kv = glide.new_pool(16);
        let mut table = BlockTable::new();
        let mut feature = (tokens.len() - 1, hidden, FeatureSource::Target);
        let mut all = tokens.to_vec();
        for _ in 0..n {
            let from = table.len();
            let (logits, own) = glide
                .forward_drafting(
                    &mut kv,
                    &mut [SeqInput {
                        table: &mut table,
                        tokens: &all[from..],
                        logits: Logits::Last,
                    }],
                    TargetKv {
                        kv: &target_kv,
                        tables: &[&target_table],
                    },
                    &[Some(FeatureRow {
                        position: feature.0,
                        hidden: &feature.1,
                        source: feature.2,
                    })],
                    false,
                )
                .unwrap();
            let DraftRows::Logits(logits) = logits else {
                panic!("logits asked for")
            };
            let row = logits[0].squeeze(0).unwrap().to_vec1::<f32>().unwrap();
            let best = (0..row.len())
                .max_by(|&a, &b| row[a].total_cmp(&row[b]).then(b.cmp(&a)))
                .unwrap();
            all.push(glide.vocab().to_target(best as u32));
            feature = (
                table.len(),
                own.unwrap().remove(0).remove(0),
                FeatureSource::Drafter,
            );
        }
        all[tokens.len()..].to_vec()
    }

    /// Greedy rounds for several sequences in one batch, sharing the target's pool and the
    /// drafter's: `(tokens, max drafts)` each, every sequence holding its target row.
    fn batch_drafts(
        target: &Model,
        glide: &GlideModel,
        seqs: &[(Vec<u32>, usize)],
    ) -> Vec<Vec<u32>> {
        let mut target_kv = target.new_pool(64);
        let mut tables = Vec::new();
        let mut states = Vec::new();
        for (tokens, _) in seqs {
            let mut table = BlockTable::new();
            let hidden = cache_before_last(target, &mut target_kv, &mut table, tokens);
            let mut state = glide_state(glide);
            state.feature = Some((tokens.len() - 1, hidden));
            tables.push(table);
            states.push(state);
        }
        let mut kv = glide.new_pool(64);
        let sampling = SamplingParams::default();
        let mut rngs: Vec<_> = seqs
            .iter()
            .map(|_| rand::rngs::StdRng::seed_from_u64(1))
            .collect();
        let mut batch: Vec<ProposeInput<'_>> = seqs
            .iter()
            .zip(&tables)
            .zip(states.iter_mut())
            .zip(rngs.iter_mut())
            .map(|((((tokens, max), table), state), rng)| ProposeInput {
                tokens,
                target_table: table,
                state,
                max: *max,
                sampling: &sampling,
                rng,
                confidence: None,
            })
            .collect();
        let view = TargetView {
            model: target,
            kv: &target_kv,
        };
        glide_drafts(glide, view, &mut kv, &mut batch)
            .unwrap()
            .into_iter()
            .map(|d| d.tokens)
            .collect()
    }

    /// Sequences of different lengths that stop after 1, 2 and 4 drafts, drafted together,
    /// each draft what they draft alone: every row reads its own sequence's chained row.
    #[test]
    fn a_chaining_drafter_drafts_a_batch_as_each_sequence_alone() {
        let (target, chain) = pair_with(GlideFeature::LastHiddenChain);
        let seqs: Vec<(Vec<u32>, usize)> = [(7u32, 4usize), (9, 1), (6, 2), (11, 4)]
            .iter()
            .map(|&(n, max)| ((0..n).map(|i| (i * 37 + n * 5 + 1) % 200).collect(), max))
            .collect();
        let together = batch_drafts(&target, &chain, &seqs);
        for (i, (tokens, max)) in seqs.iter().enumerate() {
            let alone = batch_drafts(&target, &chain, &[(tokens.clone(), *max)]);
            assert_eq!(together[i].len(), *max, "sequence {i}");
            assert_eq!(together[i], alone[0], "sequence {i} drafted in the batch");
        }
    }

    #[test]
    fn a_chaining_drafter_feeds_each_drafted_row_the_final_row_before_it() {
        let (target, chain) = pair_with(GlideFeature::LastHiddenChain);
        let (_, first_only) = pair_with(GlideFeature::LastHidden);
        let mut differ = 0;
        for s in 0..6u32 {
            let tokens: Vec<u32> = (0..(6 + s)).map(|i| (i * 31 + s * 7 + 3) % 200).collect();
            let (got, left) = drafts(&target, &chain, &tokens, true);
            assert!(!left, "the round took the target's row");
            assert_eq!(got.len(), 4);
            assert_eq!(
                got,
                chained_by_hand(&target, &chain, &tokens, 4),
                "prompt {s}"
            );
            let (plain, _) = drafts(&target, &first_only, &tokens, true);
            assert_eq!(got[0], plain[0], "the first draft reads no own row");
            differ += usize::from(got != plain);
        }
        assert!(differ > 0, "chaining changed no draft: no row read its own");
    }

    /// With `chain_norm`, the chained rows normalize the drafter's own row with their own
    /// weights: at zero they add nothing (the drafts of the same drafter without chaining, as
    /// training starts it), otherwise they change drafts against sharing the feature's norm,
    /// and a round still equals drafting it by hand.
    #[test]
    fn chained_rows_are_normalized_with_their_own_weights() {
        let (target, first_only) = pair_with(GlideFeature::LastHidden);
        let (_, shared) = pair_with(GlideFeature::LastHiddenChain);
        let (_, own) = pair_edited(GlideFeature::LastHiddenChain, true, |_| {});
        let (_, closed) = pair_edited(GlideFeature::LastHiddenChain, true, |t| {
            let zeros = t[CHAIN_NORM_TENSOR].zeros_like().unwrap();
            t.insert(CHAIN_NORM_TENSOR.into(), zeros);
        });
        let mut differ = 0;
        for s in 0..6u32 {
            let tokens: Vec<u32> = (0..(6 + s)).map(|i| (i * 31 + s * 7 + 3) % 200).collect();
            let plain = drafts(&target, &first_only, &tokens, true).0;
            assert_eq!(
                drafts(&target, &closed, &tokens, true).0,
                plain,
                "prompt {s}"
            );
            let got = drafts(&target, &own, &tokens, true).0;
            assert_eq!(
                got,
                chained_by_hand(&target, &own, &tokens, 4),
                "prompt {s}"
            );
            differ += usize::from(got != drafts(&target, &shared, &tokens, true).0);
        }
        assert!(differ > 0, "the chained rows' own norm changed no draft");
    }
}
