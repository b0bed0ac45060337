//! Times attention over a KV cache at the 1.5B's head layout (12 query heads over 2 key/value
//! heads of 128), one thread, 28 layers' caches cycled so that they stream from memory as in a
//! forward pass (or `LAYERS` of them, 1 to time the arithmetic alone from cache).
//!
//! `cargo run --release -p specd-kernels --example attention_bench -- DEPTH ROWS [LAYERS]`:
//! `ROWS` new rows (1: a decode step, k + 1: a verification) after `DEPTH` cached positions,
//! paged in blocks of 16 positions. Prints the best of several passes, ms per pass.

use std::time::Instant;

use specd_kernels::cpu::{attention, AttentionShape, KvChunks, Serial};

fn values(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 31 + seed * 7) % 97) as f32 / 40.0 - 1.2)
        .collect()
}

fn main() {
    let arg = |i: usize, default: usize| {
        std::env::args()
            .nth(i)
            .map_or(default, |a| a.parse().expect("a whole number"))
    };
    let (depth, rows, layers) = (arg(1, 1024), arg(2, 1), arg(3, 28));
    let shape = AttentionShape {
        n_heads: 12,
        n_kv_heads: 2,
        head_dim: 128,
        sliding_window: None,
    };
    let kv_row = shape.n_kv_heads * shape.head_dim;
    let caches: Vec<(Vec<f32>, Vec<f32>)> = (0..layers)
        .map(|l| {
            let n = (depth + rows) * kv_row;
            (values(n, 2 * l), values(n, 2 * l + 1))
        })
        .collect();
    let q = values(rows * shape.n_heads * shape.head_dim, 999);
    let mut out = vec![0f32; q.len()];
    let passes = if layers < 4 { 200 } else { 7 };
    let mut best = f64::MAX;
    for _ in 0..passes {
        let t = Instant::now();
        for (k, v) in &caches {
            let keys: Vec<&[f32]> = k.chunks(16 * kv_row).collect();
            let values: Vec<&[f32]> = v.chunks(16 * kv_row).collect();
            let kv = KvChunks {
                keys: &keys,
                values: &values,
            };
            attention(&q, depth, kv, shape, &mut out, &Serial);
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!(
        "depth {depth}, {rows} row(s), {layers} layer(s): {:.3} ms (one thread; checksum {})",
        best * 1e3,
        out.iter().sum::<f32>()
    );
}
