//! The GLIDE drafter on a GPU (feature `cuda`; its own suite in `scripts/gpu/check`,
//! never run by `scripts/test`): its logits against the CPU forward on the tiny models (own head
//! and the target's head rows, every verified length and feeding chunk) and on the golden
//! fixtures the training script made, a batch of sequences giving each its own rows, and rows of
//! both feature sources in one forward; and, in `gpu_glide/drafting.rs`, its drafting (picks on
//! the device, chained rounds, greedy identity alone and through the engine).
#![cfg(feature = "cuda")]

#[path = "gpu_glide/drafting.rs"]
mod drafting;
#[path = "common/glide_cache.rs"]
mod glide_cache;
#[path = "common/gpu_glide_tiny.rs"]
mod gpu_glide_tiny;

use std::path::{Path, PathBuf};

use glide_cache::{
    cache_keeping_last_hidden, chained_rows, glide_rows, target_cache, target_cache_and_hidden,
    Golden,
};
use gpu_glide_tiny::{cuda, gpu_target, prompts, relative_error, spec, target_caches, TOLERANCE};
use specd_engine::kv::{BlockTable, KvPool};
use specd_engine::model::tiny::{
    tiny_glide, tiny_guessing_glide, tiny_guessing_glide_with_chain_norm, tiny_model,
};
use specd_engine::model::{
    self, Device, FeatureRow, FeatureSource, GlideModel, LoadOptions, Logits, Model, SeqInput,
    TargetKv,
};

/// The test fixtures: where this crate was built, or (a test binary carried to a GPU machine
/// and run from the repository root) engine/tests/fixtures.
fn fixtures() -> PathBuf {
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    if built.exists() {
        built
    } else {
        PathBuf::from("engine/tests/fixtures")
    }
}

/// The drafter's rows of `tokens` fed from position 0, `chunk` tokens per forward, reading the
/// target's cache of the first `verified` tokens.
fn rows_reading(
    target: &Model,
    glide: &GlideModel,
    tokens: &[u32],
    verified: usize,
    chunk: usize,
) -> Vec<Vec<f32>> {
    let (tkv, ttable) = target_cache(target, &tokens[..verified]);
    glide_rows(glide, tokens, chunk, &tkv, &ttable)
}

#[test]
fn glide_logits_on_the_gpu_follow_the_cpu_forward() {
    let cpu = tiny_model(&spec()).unwrap().model;
    let gpu = gpu_target();
    type Make = fn(&Model) -> GlideModel;
    let drafters: [(&str, Make); 2] = [
        ("own head", |t| tiny_glide(t, 200, 5, 0.3).unwrap()),
        ("target's head rows", |t| {
            tiny_guessing_glide(t, 240, 9).unwrap()
        }),
    ];
    for (name, make) in drafters {
        let (gc, gg) = (make(&cpu), make(&gpu));
        assert_eq!(
            gg.device(),
            cuda(),
            "{name}: the drafter follows its target"
        );
        for (pi, prompt) in prompts(4).iter().enumerate() {
            let n = prompt.len();
            // Nothing verified (every row sees nothing: zeros), one, half, all.
            for verified in [0, 1, n / 2, n] {
                for chunk in [1, 3, n] {
                    let a = rows_reading(&cpu, &gc, prompt, verified, chunk);
                    let b = rows_reading(&gpu, &gg, prompt, verified, chunk);
                    let e = relative_error(&a, &b);
                    assert!(
                        e < TOLERANCE,
                        "{name}, prompt {pi}, {verified} verified, chunks of {chunk}: GPU rows \
                         differ from the CPU's by {e} (relative)"
                    );
                }
            }
        }
    }
}

/// Sequences of different lengths and verified lengths drafted in one forward give each the
/// rows it gets alone, bit for bit (the kernels' batch invariance).
#[test]
fn a_batch_of_sequences_gets_each_its_own_rows_on_the_gpu() {
    let target = gpu_target();
    let glide = tiny_glide(&target, 200, 5, 0.3).unwrap();
    let ps = prompts(5);
    let verified: Vec<usize> = ps
        .iter()
        .enumerate()
        .map(|(i, p)| p.len() * i / 4)
        .collect();
    let alone: Vec<Vec<Vec<f32>>> = ps
        .iter()
        .zip(&verified)
        .map(|(p, &v)| rows_reading(&target, &glide, p, v, p.len()))
        .collect();
    let (tkv, ttables) = target_caches(&target, &ps, &verified);
    let out = drafter_rows_in_one_forward(&glide, &ps, &tkv, &ttables, &[]);
    for (i, rows) in out.iter().enumerate() {
        assert_eq!(rows, &alone[i], "sequence {i}");
    }
}

/// The drafter's rows of every token of `prompts` in one forward from an empty cache, reading
/// the target's cache `tkv` under `ttables` (one per prompt), with `features` (see
/// [`GlideModel::forward_with_features`]).
fn drafter_rows_in_one_forward(
    glide: &GlideModel,
    prompts: &[Vec<u32>],
    tkv: &KvPool,
    ttables: &[BlockTable],
    features: &[Option<FeatureRow<'_>>],
) -> Vec<Vec<Vec<f32>>> {
    let mut pool = glide.new_pool(256);
    let mut tables: Vec<BlockTable> = prompts.iter().map(|_| BlockTable::new()).collect();
    let mut batch: Vec<SeqInput<'_>> = tables
        .iter_mut()
        .zip(prompts)
        .map(|(table, p)| SeqInput {
            table,
            tokens: p,
            logits: Logits::All,
        })
        .collect();
    let refs: Vec<&BlockTable> = ttables.iter().collect();
    let target = TargetKv {
        kv: tkv,
        tables: &refs,
    };
    let out = glide
        .forward_with_features(&mut pool, &mut batch, target, features)
        .unwrap();
    out.iter().map(|t| t.to_vec2::<f32>().unwrap()).collect()
}

/// The drafter's rows of `prompts` in one forward, each sequence's last row taking a feature
/// row of the source given (the target's final row before it stands in for either source).
fn feature_rows_batched(
    target: &Model,
    glide: &GlideModel,
    prompts: &[Vec<u32>],
    sources: &[FeatureSource],
) -> Vec<Vec<Vec<f32>>> {
    let mut tkv = target.new_pool(256);
    let mut ttables: Vec<BlockTable> = prompts.iter().map(|_| BlockTable::new()).collect();
    let hidden: Vec<Vec<f32>> = prompts
        .iter()
        .zip(ttables.iter_mut())
        .map(|(p, table)| cache_keeping_last_hidden(target, &mut tkv, table, &p[..p.len() - 1]))
        .collect();
    let features: Vec<Option<FeatureRow<'_>>> = hidden
        .iter()
        .zip(prompts)
        .zip(sources)
        .map(|((hidden, p), &source)| {
            Some(FeatureRow {
                position: p.len() - 1,
                hidden,
                source,
            })
        })
        .collect();
    drafter_rows_in_one_forward(glide, prompts, &tkv, &ttables, &features)
}

/// A drafter whose chained rows have their own norm (`chain_norm`), in one forward where one
/// sequence's row takes the target's row and another's its own (both feature inputs, each with
/// its norm): each sequence gets the rows it gets alone, bit for bit, and the CPU's rows.
#[test]
fn rows_of_both_feature_sources_in_one_forward_on_the_gpu() {
    let cpu = tiny_model(&spec()).unwrap().model;
    let gpu = gpu_target();
    let (gc, gg) = (
        tiny_guessing_glide_with_chain_norm(&cpu, 240, 9).unwrap(),
        tiny_guessing_glide_with_chain_norm(&gpu, 240, 9).unwrap(),
    );
    let ps = prompts(4);
    let sources = [
        FeatureSource::Target,
        FeatureSource::Drafter,
        FeatureSource::Drafter,
        FeatureSource::Target,
    ];
    let together = feature_rows_batched(&gpu, &gg, &ps, &sources);
    let on_cpu = feature_rows_batched(&cpu, &gc, &ps, &sources);
    for (i, (p, &source)) in ps.iter().zip(&sources).enumerate() {
        let alone = feature_rows_batched(&gpu, &gg, std::slice::from_ref(p), &[source]);
        assert_eq!(
            together[i], alone[0],
            "sequence {i} ({source:?}) in the batch"
        );
        let e = relative_error(&on_cpu[i], &together[i]);
        assert!(
            e < TOLERANCE,
            "sequence {i} ({source:?}): GPU rows differ from the CPU's by {e}"
        );
    }
    // The two sources differ: the chained rows' norm is not the feature's.
    let other = [FeatureSource::Drafter];
    let swapped = feature_rows_batched(&gpu, &gg, &ps[..1], &other);
    assert_ne!(
        swapped[0].last(),
        together[0].last(),
        "the chained rows' own norm changed nothing"
    );
}

/// The drafters the training script made for the tiny Qwen2 fixture (heads of 8, an MLP of 48:
/// padded to the kernels' shapes on the GPU), without and with the target's last hidden state
/// as input (rank 16: composed into one matrix on the GPU), give PyTorch's logits on the GPU,
/// and the CPU's; the GPU target's hidden row that the feature reads is PyTorch's too.
#[test]
fn the_golden_glide_fixtures_give_the_training_scripts_logits_on_the_gpu() {
    for name in ["glide_golden", "glide_golden_feature"] {
        check_golden(name);
    }
}

/// The chaining drafter's fixture, drafted one row at a time past the verified tokens (each
/// later row reading the final row the forward before handed back, bf16 on the GPU), gives
/// PyTorch's logits on the GPU within bf16 tolerance, and the CPU's.
#[test]
fn the_chained_golden_fixture_drafted_row_by_row_gives_the_scripts_logits_on_the_gpu() {
    let dir = fixtures().join("glide_golden_chain");
    let Golden {
        tokens,
        verified,
        expected,
    } = Golden::read(&dir);
    let rows_on = |device| {
        let options = LoadOptions {
            device,
            ..Default::default()
        };
        let target = model::load(&fixtures().join("golden/qwen2"), &options)
            .unwrap()
            .model;
        let glide = GlideModel::load(&dir.join("glide.safetensors"), &target).unwrap();
        let (tkv, ttable, hidden) = target_cache_and_hidden(&target, &tokens[..verified]);
        chained_rows(&glide, &tokens, verified, &tkv, &ttable, hidden)
    };
    let cpu = rows_on(Device::Cpu);
    let gpu = rows_on(cuda());
    // The drafted rows one at a time (the chained ones past the first), then all of them.
    for p in verified..tokens.len() {
        let vs_torch = relative_error(&expected[p..=p], &gpu[p..=p]);
        assert!(
            vs_torch < TOLERANCE,
            "drafted row {p} on the GPU differs from PyTorch's by {vs_torch} (relative)"
        );
    }
    let vs_torch = relative_error(&expected, &gpu);
    let vs_cpu = relative_error(&cpu, &gpu);
    assert!(
        vs_torch < TOLERANCE && vs_cpu < TOLERANCE,
        "chained rows on the GPU differ from PyTorch's by {vs_torch} and from the CPU's by \
         {vs_cpu} (relative)"
    );
}

fn check_golden(name: &str) {
    let dir = fixtures().join(name);
    let Golden {
        tokens,
        verified,
        expected,
    } = Golden::read(&dir);
    let load_cpu = |file: &str, key: &str| {
        candle_core::safetensors::load(dir.join(file), &candle_core::Device::Cpu)
            .unwrap()
            .remove(key)
            .unwrap()
    };
    let torch_feature = dir.join("feature.safetensors").exists().then(|| {
        load_cpu("feature.safetensors", "feature")
            .to_vec1::<f32>()
            .unwrap()
    });
    let load = |device| {
        let options = LoadOptions {
            device,
            ..Default::default()
        };
        let target = model::load(&fixtures().join("golden/qwen2"), &options)
            .unwrap_or_else(|e| panic!("loading the fixture on {device}: {e}"))
            .model;
        let glide = GlideModel::load(&dir.join("glide.safetensors"), &target)
            .unwrap_or_else(|e| panic!("{name}: loading the GLIDE fixture on {device}: {e}"));
        (target, glide)
    };
    let (ct, cg) = load(Device::Cpu);
    let (gt, gg) = load(cuda());
    let n = tokens.len();
    let with_feature = torch_feature.is_some();
    let (cpu, cpu_hidden) = golden_rows(&ct, &cg, &tokens, verified, n, with_feature);
    if let Some(theirs) = &torch_feature {
        let (_, gpu_hidden) = golden_rows(&gt, &gg, &tokens, verified, n, true);
        let vs_torch = relative_error(
            std::slice::from_ref(theirs),
            std::slice::from_ref(&gpu_hidden),
        );
        let vs_cpu = relative_error(&[cpu_hidden], &[gpu_hidden]);
        assert!(
            vs_torch < TOLERANCE && vs_cpu < TOLERANCE,
            "{name}: the GPU target's hidden row {} differs from PyTorch's by {vs_torch} and \
             from the CPU's by {vs_cpu} (relative)",
            verified - 1
        );
    }
    for chunk in [1, 4, n] {
        let (gpu, _) = golden_rows(&gt, &gg, &tokens, verified, chunk, with_feature);
        let vs_torch = relative_error(&expected, &gpu);
        let vs_cpu = relative_error(&cpu, &gpu);
        assert!(
            vs_torch < TOLERANCE && vs_cpu < TOLERANCE,
            "{name}, chunks of {chunk}: GPU rows differ from PyTorch's by {vs_torch} and from \
             the CPU's by {vs_cpu} (relative)"
        );
    }
}

/// The drafter's rows of `tokens` fed `chunk` at a time against the target's cache of the
/// first `verified` (as `rows_reading`), the row at `verified` taking the target's hidden row
/// before it when `with_feature`; and that hidden row.
fn golden_rows(
    target: &Model,
    glide: &GlideModel,
    tokens: &[u32],
    verified: usize,
    chunk: usize,
    with_feature: bool,
) -> (Vec<Vec<f32>>, Vec<f32>) {
    let (tkv, ttable, hidden) = target_cache_and_hidden(target, &tokens[..verified]);
    let features = [with_feature.then_some(FeatureRow {
        position: verified,
        hidden: &hidden,
        source: FeatureSource::Target,
    })];
    let mut pool = glide.new_pool(64);
    let mut table = BlockTable::new();
    let mut rows = Vec::new();
    for part in tokens.chunks(chunk) {
        let out = glide
            .forward_with_features(
                &mut pool,
                &mut [SeqInput {
                    table: &mut table,
                    tokens: part,
                    logits: Logits::All,
                }],
                TargetKv {
                    kv: &tkv,
                    tables: &[&ttable],
                },
                &features,
            )
            .unwrap();
        rows.extend(out[0].to_vec2::<f32>().unwrap());
    }
    (rows, hidden)
}
