//! Benchmark: a Q4_K [8960, 1536] matrix product (the 1.5B's gate/up shape) through candle's
//! repacked tiles vs the compact file layout that `Linear` uses for one or two rows.
//! Thirty copies of the matrix are cycled so that the weights stream from memory, as in a
//! decode step. Run: `cargo run --release --example qmatmul_layouts -p specd-engine`.

use std::time::Instant;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use specd_engine::model::linear::Linear;

fn main() -> anyhow::Result<()> {
    let (n, k, copies) = (8960, 1536, 30);
    let mats: Vec<Linear> = (0..copies)
        .map(|_| {
            let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu)?;
            Ok(Linear::new(QMatMul::from_qtensor(QTensor::quantize(
                &w,
                GgmlDType::Q4K,
            )?)?))
        })
        .collect::<anyhow::Result<_>>()?;
    for rows in [1, 2, 4, 8] {
        let x = Tensor::randn(0f32, 1.0, (rows, k), &Device::Cpu)?;
        let time = |f: &dyn Fn(&Linear) -> anyhow::Result<()>| -> anyhow::Result<f64> {
            mats.iter().try_for_each(f)?; // packs candle's tiles on first use
            let mut best = f64::MAX;
            for _ in 0..3 {
                let t = Instant::now();
                mats.iter().try_for_each(f)?;
                best = best.min(t.elapsed().as_secs_f64() / copies as f64);
            }
            Ok(best * 1e3)
        };
        let tiles = time(&|m| Ok(m.inner().forward(&x).map(drop)?))?;
        let ours = time(&|m| Ok(m.forward(&x).map(drop)?))?;
        println!("{rows:>2} rows: candle default {tiles:.3} ms, Linear {ours:.3} ms");
    }
    Ok(())
}
