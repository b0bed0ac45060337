//! Shared by the GLIDE tests on a GPU (`gpu_glide.rs` and its `drafting` module): the GPU they
//! run on, the tolerance of its logits against the CPU's, the tiny target's spec and the target
//! on that GPU, the prompts they feed, and the target's cache of a batch of them.
// Each test crate uses a part.
#![allow(dead_code)]

use specd_engine::kv::{BlockTable, KvPool};
use specd_engine::model::tiny::{tiny_model_on, TinySpec};
use specd_engine::model::{Device, Logits, Model, SeqInput};

/// bf16 weights, activations and KV on the GPU against f32 on the CPU (as gpu_engine.rs).
pub const TOLERANCE: f64 = 5e-2;

pub fn cuda() -> Device {
    Device::Cuda(
        std::env::var("SPECD_CHECK_GPU")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
    )
}

pub fn spec() -> TinySpec {
    TinySpec {
        seed: 11,
        weight_scale: 0.35,
        ..Default::default()
    }
}

pub fn gpu_target() -> Model {
    tiny_model_on(&spec(), cuda())
        .unwrap_or_else(|e| panic!("these tests need a GPU: {e}"))
        .model
}

pub fn prompts(n: u32) -> Vec<Vec<u32>> {
    (0..n)
        .map(|s| {
            (0..(5 + 7 * s))
                .map(|i| (i * 37 + s * 11 + 5) % 250)
                .collect()
        })
        .collect()
}

/// A prompt after which the tiny target repeats tokens in long runs, which the guessing GLIDE
/// (it proposes the current token) drafts well: on the CPU it accepts 54 of 69 drafts in the
/// engine test (`gpu_glide/drafting.rs`), where other prompts accept about 1 in 150.
pub fn run_prompt() -> Vec<u32> {
    vec![130; 6]
}

/// ‖a − b‖ / ‖a‖ over all rows, every value of `b` finite.
pub fn relative_error(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    assert_eq!(a.len(), b.len(), "rows");
    let (mut num, mut den) = (0f64, 0f64);
    for (ra, rb) in a.iter().zip(b) {
        assert_eq!(ra.len(), rb.len(), "columns");
        for (x, y) in ra.iter().zip(rb) {
            assert!(y.is_finite(), "a GPU logit is not finite");
            num += f64::from(x - y).powi(2);
            den += f64::from(*x).powi(2);
        }
    }
    (num / den).sqrt()
}

/// The target's cache of the first `verified[i]` tokens of each prompt, in one pool: its table
/// for each (empty where nothing is verified).
pub fn target_caches(
    target: &Model,
    prompts: &[Vec<u32>],
    verified: &[usize],
) -> (KvPool, Vec<BlockTable>) {
    let mut kv = target.new_pool(256);
    let mut tables: Vec<BlockTable> = prompts.iter().map(|_| BlockTable::new()).collect();
    for ((p, &v), table) in prompts.iter().zip(verified).zip(tables.iter_mut()) {
        if v > 0 {
            let mut one = [SeqInput {
                table,
                tokens: &p[..v],
                logits: Logits::None,
            }];
            target.forward(&mut kv, &mut one).unwrap();
        }
    }
    (kv, tables)
}
