//! Shared by the engine tests: the tiny target/draft pair as engine models.

use std::sync::Arc;

use specd_engine::actors::EngineModels;
use specd_engine::model::tiny::{tiny_drafter, tiny_model, TinySpec};
use specd_engine::spec::NgramProposer;

/// The tiny target (seed 11) with, optionally, its noisy copy as drafter.
pub fn engine_models(with_draft: bool) -> EngineModels {
    let spec = TinySpec {
        seed: 11,
        weight_scale: 0.35,
        ..Default::default()
    };
    let target = tiny_model(&spec).unwrap();
    let draft = with_draft.then(|| Arc::new(tiny_drafter(&spec, 0.15, 5, &target).unwrap()));
    EngineModels {
        tokenizer: Arc::new(target.tokenizer.clone().unwrap()),
        target: Arc::new(target.model),
        draft,
        ngram: NgramProposer::default(),
    }
}
