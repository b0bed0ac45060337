//! Shared by the engine tests: the tiny target with its drafters (a noisy copy as draft model,
//! a GLIDE drafter) as engine models.

pub mod streams;

use std::sync::Arc;

use specd_engine::actors::EngineModels;
use specd_engine::kv::KvDtype;
use specd_engine::model::tiny::{tiny_drafter, tiny_guessing_glide, tiny_model, TinySpec};
use specd_engine::speculative::{GlideProposer, NgramProposer};

/// The tiny target (seed 11) with, optionally, its drafters: its noisy copy as draft model and
/// a GLIDE drafter reading its cache.
pub fn engine_models(with_drafters: bool) -> EngineModels {
    engine_models_with(with_drafters, KvDtype::F32)
}

/// As [`engine_models`], the target's KV cache (which GLIDE reads too) stored as `kv_dtype`.
pub fn engine_models_with(with_drafters: bool, kv_dtype: KvDtype) -> EngineModels {
    let spec = TinySpec {
        seed: 11,
        weight_scale: 0.35,
        ..Default::default()
    };
    let mut target = tiny_model(&spec).unwrap();
    target.model = target.model.with_kv_dtype(kv_dtype).unwrap();
    let draft = with_drafters.then(|| Arc::new(tiny_drafter(&spec, 0.15, 5, &target).unwrap()));
    let glide = with_drafters.then(|| {
        let g = tiny_guessing_glide(&target.model, 240, 9).unwrap();
        Arc::new(GlideProposer::new(Arc::new(g)))
    });
    EngineModels {
        tokenizer: Arc::new(target.tokenizer.clone().unwrap()),
        target: Arc::new(target.model),
        draft,
        ngram: NgramProposer::default(),
        glide,
    }
}
