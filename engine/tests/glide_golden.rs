//! Parity of specd's GLIDE drafter with the training script's PyTorch model
//! (models/glide/train/glide_model.py): a tiny random drafter made and saved by
//! models/glide/train/golden.py for the tiny Qwen2 of the transformers fixtures, with the logits
//! PyTorch computed for it. specd loads the same file, prefills the same target with the
//! verified tokens, runs the drafter over every token (at once, or row by row for a drafter
//! that chains its own hidden state), and must give the same logits.
//! A drafter trained by the script therefore drafts in specd as it did in training.

#[path = "common/glide_cache.rs"]
mod glide_cache;

use std::path::{Path, PathBuf};

use candle_core::Device;
use glide_cache::{chained_rows, target_cache_and_hidden, Golden};
use specd_engine::kv::{BlockTable, KvPool};
use specd_engine::model::{
    self, FeatureRow, FeatureSource, GlideModel, LoadOptions, Logits, SeqInput, TargetKv,
};

/// f32 against f32, through different orders of summation.
const TOLERANCE: f32 = 1e-4;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

#[test]
fn specd_gives_the_training_scripts_glide_logits() {
    check_fixture("glide_golden");
}

/// The same for a drafter that reads the target's last hidden state (a rank-16 projection):
/// specd's own hidden row of the target equals PyTorch's, and the drafter's first drafted row
/// taking it gives PyTorch's logits.
#[test]
fn specd_gives_the_training_scripts_logits_with_the_targets_hidden_state() {
    check_fixture("glide_golden_feature");
}

/// A drafter that chains its own hidden state (`last_hidden_chain`): specd drafts the block
/// one row at a time, the first drafted row reading the target's row, each later one the final
/// normed row specd's forward before it handed back, and every row's logits equal PyTorch's
/// (`forward_chain` with a pass per row: the rows as drafted one after another).
#[test]
fn specd_drafts_a_chained_block_as_the_training_script_does() {
    let f = Fixture::load("glide_golden_chain");
    let rows = chained_rows(
        &f.glide,
        &f.golden.tokens,
        f.golden.verified,
        &f.target_kv,
        &f.target_table,
        f.hidden.clone(),
    );
    f.assert_rows(&rows);
}

/// A fixture of golden.py, with specd's target prefilled with its verified tokens.
struct Fixture {
    golden: Golden,
    glide: GlideModel,
    target_kv: KvPool,
    target_table: BlockTable,
    /// specd's final normed target row before the first drafted one.
    hidden: Vec<f32>,
    /// Whether the drafter reads it (the fixture saved PyTorch's, which specd's matched).
    with_feature: bool,
}

impl Fixture {
    fn load(name: &str) -> Self {
        let dir = fixtures().join(name);
        let golden = Golden::read(&dir);
        let target = model::load(&fixtures().join("golden/qwen2"), &LoadOptions::default())
            .unwrap()
            .model;
        let glide = GlideModel::load(&dir.join("glide.safetensors"), &target).unwrap();
        assert_eq!(glide.vocab().len(), golden.expected[0].len());
        let verified = golden.verified;
        let (target_kv, target_table, hidden) =
            target_cache_and_hidden(&target, &golden.tokens[..verified]);
        let feature_file = dir.join("feature.safetensors");
        let with_feature = feature_file.exists();
        if with_feature {
            let theirs = candle_core::safetensors::load(&feature_file, &Device::Cpu)
                .unwrap()
                .remove("feature")
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let diff = hidden
                .iter()
                .zip(&theirs)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                diff <= TOLERANCE,
                "the target's hidden row {}: max |specd - pytorch| = {diff}",
                verified - 1
            );
        }
        Self {
            golden,
            glide,
            target_kv,
            target_table,
            hidden,
            with_feature,
        }
    }

    /// Every row of specd's logits against PyTorch's.
    fn assert_rows(&self, rows: &[Vec<f32>]) {
        assert_eq!(rows.len(), self.golden.expected.len());
        let scale = self
            .golden
            .expected
            .iter()
            .flatten()
            .fold(0f32, |m, x| m.max(x.abs()));
        assert!(
            scale > 0.1,
            "the fixture's logits are all near zero: a drafter that does nothing"
        );
        for (p, (ours, theirs)) in rows.iter().zip(&self.golden.expected).enumerate() {
            let diff = ours
                .iter()
                .zip(theirs)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                diff <= TOLERANCE * scale.max(1.0),
                "row {p} (sees target positions 0..{}): max |specd - pytorch| = {diff}",
                p.min(self.golden.verified)
            );
        }
    }
}

/// The drafter over every token in one forward (the verified ones as catch-up, then one block
/// drafted past them), the first drafted row reading the target's row if the drafter has a
/// feature.
fn check_fixture(name: &str) {
    let f = Fixture::load(name);
    let features = [f.with_feature.then_some(FeatureRow {
        position: f.golden.verified,
        hidden: &f.hidden,
        source: FeatureSource::Target,
    })];
    let mut kv = f.glide.new_pool(16);
    let mut table = BlockTable::new();
    let rows = f
        .glide
        .forward_with_features(
            &mut kv,
            &mut [SeqInput {
                table: &mut table,
                tokens: &f.golden.tokens,
                logits: Logits::All,
            }],
            TargetKv {
                kv: &f.target_kv,
                tables: &[&f.target_table],
            },
            &features,
        )
        .unwrap()[0]
        .to_vec2::<f32>()
        .unwrap();
    f.assert_rows(&rows);
}
