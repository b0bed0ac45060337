//! Incremental = full: a sequence fed in chunks (and rolled back and re-fed) gives the logits of
//! one forward over the whole sequence; a ragged batch gives what each sequence gives alone.

use specd_engine::kv::BlockTable;
use specd_engine::model::tiny::{tiny_model, TinySpec};
use specd_engine::model::{Architecture, Logits, Model, SeqInput};

const TOL: f32 = 1e-4;

fn models() -> Vec<Model> {
    [
        Architecture::Qwen2,
        Architecture::Llama,
        Architecture::Mistral,
    ]
    .into_iter()
    .enumerate()
    .map(|(i, architecture)| {
        tiny_model(&TinySpec {
            architecture,
            seed: 11 + i as u64,
            ..Default::default()
        })
        .unwrap()
        .model
    })
    .collect()
}

fn tokens(n: usize, seed: u32, vocab: usize) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed) >> 5) % vocab as u32)
        .collect()
}

fn full(m: &Model, toks: &[u32]) -> Vec<Vec<f32>> {
    let mut cache = m.new_cache();
    let out = m.forward_cache(&mut cache, toks, Logits::All).unwrap();
    out.to_vec2().unwrap()
}

fn assert_close(a: &[f32], b: &[f32], what: &str) {
    let d = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    assert!(d <= TOL, "{what}: max difference {d}");
}

#[test]
fn chunks_of_every_size_match_one_full_forward() {
    for m in models() {
        let seq = tokens(40, 3, m.config().vocab_size);
        let want = full(&m, &seq);
        for n in 1..=8 {
            let mut cache = m.new_cache();
            let prefix = 5;
            let mut got = full(&m, &seq[..prefix]);
            // the prefix again, through the cache this time
            m.forward_cache(&mut cache, &seq[..prefix], Logits::Last)
                .unwrap();
            for chunk in seq[prefix..].chunks(n) {
                let out = m.forward_cache(&mut cache, chunk, Logits::All).unwrap();
                got.extend(out.to_vec2::<f32>().unwrap());
            }
            assert_eq!(cache.len(), seq.len());
            for (pos, (a, b)) in got.iter().zip(&want).enumerate() {
                assert_close(
                    a,
                    b,
                    &format!("{:?} chunk {n} position {pos}", m.config().architecture),
                );
            }
        }
    }
}

#[test]
fn truncate_then_reappend_matches_and_leaves_no_trace() {
    for m in models() {
        let vocab = m.config().vocab_size;
        let seq = tokens(24, 9, vocab);
        let want = full(&m, &seq);
        for n in 1..=8 {
            let mut cache = m.new_cache();
            m.forward_cache(&mut cache, &seq[..12], Logits::Last)
                .unwrap();
            let clean = cache.clone();
            // speculate n wrong tokens, then roll back
            let wrong = tokens(n, 1000 + n as u32, vocab);
            m.forward_cache(&mut cache, &wrong, Logits::All).unwrap();
            cache.truncate(12);
            for layer in 0..m.config().num_layers {
                assert_eq!(cache.layer_snapshot(layer), clean.layer_snapshot(layer));
            }
            let out = m
                .forward_cache(&mut cache, &seq[12..], Logits::All)
                .unwrap();
            for (i, row) in out.to_vec2::<f32>().unwrap().iter().enumerate() {
                assert_close(
                    row,
                    &want[12 + i],
                    &format!("after rollback of {n}, position {}", 12 + i),
                );
            }
        }
    }
}

#[test]
fn ragged_batch_matches_each_sequence_alone() {
    for m in models() {
        let vocab = m.config().vocab_size;
        let prefixes = [3usize, 10, 1, 7];
        let news = [1usize, 5, 8, 2];
        let seqs: Vec<Vec<u32>> = (0..4)
            .map(|i| tokens(prefixes[i] + news[i], 50 + i as u32, vocab))
            .collect();
        // One shared pool: the sequences' blocks interleave in it.
        let mut pool = m.new_pool(64);
        let mut tables: Vec<BlockTable> = (0..4).map(|_| BlockTable::new()).collect();
        for (i, t) in tables.iter_mut().enumerate() {
            m.forward(
                &mut pool,
                &mut [SeqInput {
                    table: t,
                    tokens: &seqs[i][..prefixes[i]],
                    logits: Logits::Last,
                }],
            )
            .unwrap();
        }
        let modes = [Logits::All, Logits::Last, Logits::None, Logits::Last];
        let mut batch: Vec<SeqInput> = tables
            .iter_mut()
            .enumerate()
            .map(|(i, t)| SeqInput {
                table: t,
                tokens: &seqs[i][prefixes[i]..],
                logits: modes[i],
            })
            .collect();
        let out = m.forward(&mut pool, &mut batch).unwrap();
        drop(batch);
        for t in &mut tables {
            pool.free(t);
        }
        assert_eq!(pool.usage().blocks_used, 0);
        pool.check_consistency().unwrap();
        for i in 0..4 {
            let want = full(&m, &seqs[i]);
            let got = out[i].to_vec2::<f32>().unwrap();
            let want: Vec<_> = match modes[i] {
                Logits::All => want[prefixes[i]..].to_vec(),
                Logits::Last => vec![want.last().unwrap().clone()],
                Logits::None => Vec::new(),
            };
            assert_eq!(got.len(), want.len());
            for (a, b) in got.iter().zip(&want) {
                assert_close(a, b, &format!("sequence {i} of the batch"));
            }
        }
    }
}

#[test]
fn failed_forward_changes_no_cache() {
    let m = tiny_model(&TinySpec {
        max_position_embeddings: 16,
        ..Default::default()
    })
    .unwrap()
    .model;
    let mut cache = m.new_cache();
    m.forward_cache(&mut cache, &[1, 2, 3], Logits::Last)
        .unwrap();
    let before = cache.clone();
    let too_long = vec![1u32; 14];
    let e = m
        .forward_cache(&mut cache, &too_long, Logits::Last)
        .unwrap_err();
    assert!(e.to_string().contains("context length of 16"), "{e}");
    let e = m
        .forward_cache(&mut cache, &[100_000], Logits::Last)
        .unwrap_err();
    assert!(e.to_string().contains("token id 100000"), "{e}");
    assert_eq!(cache.len(), 3);
    assert_eq!(cache.layer_snapshot(0), before.layer_snapshot(0));
}
