//! Errors of the CUDA side, each saying what failed and what to do about it.

use cudarc::driver::DriverError;

/// Why a GPU could not be opened or a device call failed.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// No NVIDIA driver library could be loaded.
    #[error(
        "no NVIDIA driver found (libcuda.so could not be loaded): install the NVIDIA driver, or \
         run with --device cpu"
    )]
    NoDriver,

    /// The driver is older than the kernels need.
    #[error(
        "the NVIDIA driver supports CUDA {found_major}.{found_minor}, but specd's kernels need \
         CUDA {need_major}.{need_minor} or newer: update the driver (R580 or later), or run with \
         --device cpu"
    )]
    DriverTooOld {
        found_major: i32,
        found_minor: i32,
        need_major: i32,
        need_minor: i32,
    },

    /// The requested GPU index does not exist.
    #[error(
        "there is no GPU cuda:{ordinal}: this machine has {count} CUDA device(s){}",
        if *count == 0 { String::new() } else { format!(" (cuda:0..cuda:{})", count - 1) }
    )]
    NoSuchDevice { ordinal: usize, count: usize },

    /// The GPU is older than the kernels' target architecture.
    #[error(
        "GPU cuda:{ordinal} ({name}) has compute capability {major}.{minor}; specd's kernels are \
         built for 9.0 (Hopper) and newer"
    )]
    UnsupportedDevice {
        ordinal: usize,
        name: String,
        major: i32,
        minor: i32,
    },

    /// An allocation did not fit in the GPU's memory.
    #[error(
        "{what} needs {bytes} bytes of GPU memory but cuda:{ordinal} has {free} of {total} bytes \
         free: {advice}"
    )]
    OutOfMemory {
        what: String,
        bytes: usize,
        free: usize,
        total: usize,
        ordinal: usize,
        advice: &'static str,
    },

    /// A kernel file named by `SPECD_KERNELS_DIR` could not be read.
    #[error("could not read the kernel file {path} (SPECD_KERNELS_DIR): {source}")]
    KernelFile {
        path: String,
        source: std::io::Error,
    },

    /// A launch was not given a buffer it needs (a caller's bug, named).
    #[error("a GPU launch is missing {what}")]
    MissingBuffer { what: &'static str },

    /// A driver call failed.
    #[error("CUDA error in {context}: {error}")]
    Driver {
        context: &'static str,
        error: DriverError,
    },
}

impl GpuError {
    pub(crate) fn driver(context: &'static str) -> impl FnOnce(DriverError) -> GpuError {
        move |error| GpuError::Driver { context, error }
    }
}

/// The result type of the CUDA side.
pub type GpuResult<T> = std::result::Result<T, GpuError>;
