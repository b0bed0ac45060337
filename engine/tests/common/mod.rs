//! Shared by the engine tests: the tiny target/draft pair as engine models.

use std::sync::Arc;

use specd_engine::actors::EngineModels;
use specd_engine::model::tiny::{tiny_draft_model, tiny_model, TinySpec};
use specd_engine::spec::{DraftModelProposer, NgramProposer};

/// The tiny target (seed 11) with, optionally, its noisy copy as drafter.
pub fn engine_models(with_draft: bool) -> EngineModels {
    let spec = TinySpec {
        seed: 11,
        weight_scale: 0.35,
        ..Default::default()
    };
    let target = tiny_model(&spec).unwrap();
    let draft = with_draft.then(|| {
        let d = tiny_draft_model(&spec, 0.15, 5).unwrap();
        Arc::new(
            DraftModelProposer::new(
                Arc::new(d.model),
                d.tokenizer.as_ref(),
                &d.path,
                &target.model,
                target.tokenizer.as_ref().unwrap(),
            )
            .unwrap(),
        )
    });
    EngineModels {
        tokenizer: Arc::new(target.tokenizer.clone().unwrap()),
        target: Arc::new(target.model),
        draft,
        ngram: NgramProposer::default(),
    }
}
