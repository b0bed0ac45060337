//! Where a model runs: the CPU, or one CUDA GPU. One type from the command line (`--device
//! cpu|cuda|cuda:N`) and the config file (`device = "cuda:0"`) to the model loader.

use std::fmt;
use std::str::FromStr;

/// The device a model's weights, activations and KV pools live on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Device {
    /// Our own kernels on the CPU cores.
    #[default]
    Cpu,
    /// The CUDA GPU with this index (`cuda` is `cuda:0`).
    Cuda(usize),
}

impl Device {
    /// Whether this is a GPU.
    pub fn is_cuda(self) -> bool {
        matches!(self, Device::Cuda(_))
    }

    /// Whether this build can run models on a GPU (built with the `cuda` feature).
    pub const fn cuda_compiled() -> bool {
        cfg!(feature = "cuda")
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// Counters of the forwards a model ran on its GPU.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GpuStats {
    /// The GPU's name.
    pub device: String,
    /// The row-product kernel in use (`8x8`: tensor cores, 8 columns per block of 8 warps;
    /// `simple`: CUDA cores).
    pub matmul: String,
    /// Bytes of weights the model holds on it.
    pub weight_bytes: usize,
    /// Bytes of weights one decode step reads (the layers and the head).
    pub step_weight_bytes: usize,
    /// Forwards run.
    pub forwards: u64,
    /// Of which replayed from a captured CUDA graph.
    pub replays: u64,
    /// Graphs captured.
    pub captures: u64,
    /// Kernel launches issued outside graphs (a replay is one graph launch).
    pub launches: u64,
    /// Host time spent preparing and enqueuing forwards, in microseconds (not waiting for
    /// the GPU).
    pub host_us: u64,
    /// Unless `SPECD_GPU_TIMING=0`, the GPU's time from each forward's first launch to its
    /// last kernel's end, summed in microseconds (0 otherwise).
    pub gpu_us: u64,
}

/// A device name that is not `cpu`, `cuda` or `cuda:N`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown device `{0}`: use `cpu`, `cuda` or `cuda:N` (N the GPU index)")]
pub struct ParseDeviceError(String);

impl FromStr for Device {
    type Err = ParseDeviceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda(0)),
            _ => t
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| ParseDeviceError(s.to_string())),
        }
    }
}

impl serde::Serialize for Device {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Device {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_and_print_the_same_way() {
        for (s, d) in [
            ("cpu", Device::Cpu),
            ("cuda", Device::Cuda(0)),
            ("cuda:3", Device::Cuda(3)),
            ("CUDA:1", Device::Cuda(1)),
        ] {
            assert_eq!(s.parse::<Device>().unwrap(), d);
            assert_eq!(d.to_string().parse::<Device>().unwrap(), d);
        }
        for bad in ["tpu", "cuda:", "cuda:-1", "cuda:x", ""] {
            let e = bad.parse::<Device>().unwrap_err().to_string();
            assert!(e.contains("cpu") && e.contains("cuda:N"), "{e}");
        }
        let json: Device = serde_json::from_str("\"cuda:2\"").unwrap();
        assert_eq!(json, Device::Cuda(2));
        assert!(serde_json::from_str::<Device>("\"metal\"").is_err());
    }
}
