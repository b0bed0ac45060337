//! GLIDE files whose matrices are stored in Q8_0 blocks (`specd quantize-glide`): for a
//! quantized target they draft bit for bit as the original file (specd quantizes a drafter's
//! matrices to Q8_0 at load for such a target, with the same function), for a dense target
//! within Q8_0's rounding of it; the rewrite is idempotent, and a byte tensor of the wrong width
//! is refused by name.

#[path = "common/glide_cache.rs"]
mod glide_cache;

use std::collections::HashMap;
use std::path::Path;

use candle_core::Tensor;
use glide_cache::target_cache_and_hidden;
use specd_engine::kv::BlockTable;
use specd_engine::model::glide::{quantize_glide, save_glide};
use specd_engine::model::tiny::TinySpec;
use specd_engine::model::tiny::{tiny_config, tiny_glide_config, tiny_glide_weights, tiny_weights};
use specd_engine::model::{
    q8_0_bytes, DraftVocab, FeatureRow, FeatureSource, GlideConfig, GlideFeature, GlideModel,
    Logits, Model, SeqInput, TargetKv, Weights,
};

fn spec() -> TinySpec {
    TinySpec {
        seed: 7,
        weight_scale: 0.3,
        ..Default::default()
    }
}

/// The tiny target, with its matrices as written (f32) or stored as Q8_0 bytes (a quantized
/// target, as a GGUF one is).
fn target(quantized: bool) -> Model {
    let config = tiny_config(&spec());
    let mut tensors = tiny_weights(&config, spec().seed, spec().weight_scale);
    if quantized {
        for t in tensors.values_mut() {
            if let Some(q) = q8_0_bytes(t).unwrap() {
                *t = q;
            }
        }
    }
    Model::load(config, &mut Weights::from_tensors(tensors)).unwrap()
}

/// A GLIDE configuration with a rank-32 feature, and its file (f32 weights) in `dir`.
fn write_drafter(dir: &Path) -> (GlideConfig, std::path::PathBuf) {
    let target = tiny_config(&spec());
    let mut config = tiny_glide_config(&target, 200);
    config.feature = GlideFeature::LastHidden;
    config.feature_rank = 32;
    let tensors: HashMap<String, Tensor> = tiny_glide_weights(&target, &config, 3, 0.3);
    let vocab = DraftVocab::new((0..200).collect(), target.vocab_size).unwrap();
    let path = dir.join("glide.safetensors");
    save_glide(&path, &config, &vocab, &tensors).unwrap();
    (config, path)
}

/// The drafter's logits rows for a prompt: its first 9 tokens verified by the target, all 14
/// fed at once, the row at 9 taking the target's hidden row before it.
fn rows(target: &Model, glide: &GlideModel) -> Vec<Vec<f32>> {
    let tokens: Vec<u32> = (0..14).map(|i| (i * 29 + 3) % 250).collect();
    let verified = 9;
    let (tkv, ttable, hidden) = target_cache_and_hidden(target, &tokens[..verified]);
    let mut pool = glide.new_pool(16);
    let mut table = BlockTable::new();
    let out = glide
        .forward_with_features(
            &mut pool,
            &mut [SeqInput {
                table: &mut table,
                tokens: &tokens,
                logits: Logits::All,
            }],
            TargetKv {
                kv: &tkv,
                tables: &[&ttable],
            },
            &[Some(FeatureRow {
                position: verified,
                hidden: &hidden,
                source: FeatureSource::Target,
            })],
        )
        .unwrap();
    out[0].to_vec2::<f32>().unwrap()
}

#[test]
fn a_q8_0_file_drafts_bit_for_bit_as_the_original_for_a_quantized_target() {
    let dir = tempfile::tempdir().unwrap();
    let (_, original) = write_drafter(dir.path());
    let packed = dir.path().join("glide-q8.safetensors");
    let n = quantize_glide(&original, &packed).unwrap();
    // q, k, v, o, gate, up, down, cross q and o, the feature's down and projection (its rows of
    // 32 values are one block), the head: every matrix.
    assert_eq!(n, 12, "matrices quantized");
    let (a, b) = (
        std::fs::metadata(&original).unwrap().len(),
        std::fs::metadata(&packed).unwrap().len(),
    );
    assert!(b * 3 < a, "{b} bytes in Q8_0 against {a} in f32");

    let t = target(true);
    let from_original = GlideModel::load(&original, &t).unwrap();
    let from_packed = GlideModel::load(&packed, &t).unwrap();
    assert!(from_original.is_quantized() && from_packed.is_quantized());
    assert_eq!(from_packed.config(), from_original.config());
    assert_eq!(from_packed.vocab().ids(), from_original.vocab().ids());
    let (want, got) = (rows(&t, &from_original), rows(&t, &from_packed));
    assert_eq!(got, want, "the Q8_0 file's logits on a quantized target");
    assert!(
        want.iter().flatten().any(|&x| x.abs() > 0.1),
        "logits near zero"
    );
}

#[test]
fn a_q8_0_file_serves_a_dense_target_within_q8_0s_rounding() {
    let dir = tempfile::tempdir().unwrap();
    let (_, original) = write_drafter(dir.path());
    let packed = dir.path().join("glide-q8.safetensors");
    quantize_glide(&original, &packed).unwrap();
    let t = target(false);
    let from_original = GlideModel::load(&original, &t).unwrap();
    let from_packed = GlideModel::load(&packed, &t).unwrap();
    assert!(!from_original.is_quantized() && from_packed.is_quantized());
    let (want, got) = (rows(&t, &from_original), rows(&t, &from_packed));
    let (mut num, mut den) = (0f64, 0f64);
    for (a, b) in want.iter().flatten().zip(got.iter().flatten()) {
        num += f64::from(a - b).powi(2);
        den += f64::from(*a).powi(2);
    }
    let e = (num / den).sqrt();
    assert!(e > 0.0 && e < 6e-2, "relative error {e} from Q8_0 storage");
}

#[test]
fn quantizing_a_q8_0_file_again_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_, original) = write_drafter(dir.path());
    let once = dir.path().join("once.safetensors");
    let twice = dir.path().join("twice.safetensors");
    quantize_glide(&original, &once).unwrap();
    assert_eq!(quantize_glide(&once, &twice).unwrap(), 0);
    let load = |p: &Path| candle_core::safetensors::load(p, &candle_core::Device::Cpu).unwrap();
    let (a, b) = (load(&once), load(&twice));
    assert_eq!(a.len(), b.len());
    for (name, t) in &a {
        let u = &b[name];
        assert_eq!(t.dtype(), u.dtype(), "{name}");
        assert_eq!(
            t.flatten_all()
                .unwrap()
                .to_dtype(candle_core::DType::F64)
                .unwrap()
                .to_vec1::<f64>()
                .unwrap(),
            u.flatten_all()
                .unwrap()
                .to_dtype(candle_core::DType::F64)
                .unwrap()
                .to_vec1::<f64>()
                .unwrap(),
            "{name}"
        );
    }
}

#[test]
fn q8_0_bytes_of_the_wrong_width_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let (config, original) = write_drafter(dir.path());
    let mut tensors = candle_core::safetensors::load(&original, &candle_core::Device::Cpu).unwrap();
    let name = "model.layers.0.mlp.gate_proj.weight";
    let good = q8_0_bytes(&tensors[name]).unwrap().unwrap();
    let (rows, width) = good.dims2().unwrap();
    let bad = good.narrow(1, 0, width - 2).unwrap();
    tensors.insert(name.to_string(), bad);
    let ids = tensors.remove("draft_vocab.ids").unwrap();
    let ids: Vec<u32> = ids
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|i| i as u32)
        .collect();
    let vocab = DraftVocab::new(ids, tiny_config(&spec()).vocab_size).unwrap();
    let path = dir.path().join("bad.safetensors");
    save_glide(&path, &config, &vocab, &tensors).unwrap();
    let err = GlideModel::load(&path, &target(true))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(name) && err.contains(&format!("{}", width - 2)),
        "{rows} rows: {err}"
    );
}
