//! Rotary position embeddings applied in place at arbitrary positions.

/// `cos`/`sin` of `position * inv_freq[i]`, one row of `half` values per token.
#[derive(Debug, Clone)]
pub struct RopeTables {
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    pub half: usize,
}

/// Builds the tables for the given token positions. Angles are computed in f64 and rounded
/// once, so large positions keep their precision.
pub fn rope_tables(positions: &[usize], inv_freq: &[f64]) -> RopeTables {
    let half = inv_freq.len();
    let mut cos = Vec::with_capacity(positions.len() * half);
    let mut sin = Vec::with_capacity(positions.len() * half);
    for &p in positions {
        for &f in inv_freq {
            let a = p as f64 * f;
            cos.push(a.cos() as f32);
            sin.push(a.sin() as f32);
        }
    }
    RopeTables { cos, sin, half }
}

/// Rotates every head of every token row in place.
///
/// `rows` holds one row per token, each of `row_stride` floats; the heads to rotate start at
/// `offset` in the row and are `n_heads` consecutive blocks of `2 * tables.half` floats. With
/// `interleaved` the pairs are (2i, 2i+1) (GGUF llama), otherwise (i, i + d/2) (Hugging Face).
pub fn apply_rope(
    rows: &mut [f32],
    row_stride: usize,
    offset: usize,
    n_heads: usize,
    tables: &RopeTables,
    interleaved: bool,
) {
    let half = tables.half;
    let head_dim = 2 * half;
    for (t, row) in rows.chunks_exact_mut(row_stride).enumerate() {
        let cos = &tables.cos[t * half..(t + 1) * half];
        let sin = &tables.sin[t * half..(t + 1) * half];
        for h in 0..n_heads {
            let x = &mut row[offset + h * head_dim..offset + (h + 1) * head_dim];
            if interleaved {
                for i in 0..half {
                    let (a, b) = (x[2 * i], x[2 * i + 1]);
                    x[2 * i] = a * cos[i] - b * sin[i];
                    x[2 * i + 1] = a * sin[i] + b * cos[i];
                }
            } else {
                let (lo, hi) = x.split_at_mut(half);
                for i in 0..half {
                    let (a, b) = (lo[i], hi[i]);
                    lo[i] = a * cos[i] - b * sin[i];
                    hi[i] = a * sin[i] + b * cos[i];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_preserves_norm_and_position_zero_is_identity() {
        let inv = [1.0, 0.1];
        let t = rope_tables(&[0, 7], &inv);
        let orig = vec![1.0f32, 2.0, 3.0, 4.0, 1.0, 2.0, 3.0, 4.0];
        for interleaved in [false, true] {
            let mut rows = orig.clone();
            apply_rope(&mut rows, 4, 0, 1, &t, interleaved);
            assert_eq!(&rows[..4], &orig[..4]);
            let n0: f32 = orig[4..].iter().map(|v| v * v).sum();
            let n1: f32 = rows[4..].iter().map(|v| v * v).sum();
            assert!((n0 - n1).abs() < 1e-4);
            assert_ne!(&rows[4..], &orig[4..]);
        }
    }
}
