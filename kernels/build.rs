//! With the `cuda` feature: compiles every `cuda/*.cu` with nvcc (found through `NVCC`,
//! `CUDA_HOME/bin` or `PATH`) into a fat binary in `OUT_DIR` holding sm_90 machine code and
//! compute_90 PTX (which drivers of newer GPUs compile at load), for `src/cuda/ops.rs` to include.
//! Without the feature it does nothing, so that a plain build needs no CUDA toolkit.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=cuda");
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    println!("cargo:rerun-if-env-changed=SPECD_CUDA_ARCH");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let nvcc = find_nvcc();
    // e.g. SPECD_CUDA_ARCH=100 for Blackwell machine code (PTX for 90 is always included).
    let arch = std::env::var("SPECD_CUDA_ARCH").unwrap_or_else(|_| "90".into());
    let mut sources: Vec<PathBuf> = std::fs::read_dir("cuda")
        .expect("kernels/cuda exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .collect();
    sources.sort();
    for src in &sources {
        let stem = src.file_stem().unwrap().to_string_lossy().into_owned();
        let fatbin = out.join(format!("{stem}.fatbin"));
        let status = Command::new(&nvcc)
            .args(["--fatbin", "-O3", "-std=c++17", "-lineinfo"])
            .arg(format!("-gencode=arch=compute_{arch},code=sm_{arch}"))
            .arg("-gencode=arch=compute_90,code=compute_90")
            .arg("-o")
            .arg(&fatbin)
            .arg(src)
            .status()
            .unwrap_or_else(|e| panic!("could not run {}: {e}", nvcc.display()));
        assert!(status.success(), "nvcc failed on {}", src.display());
    }
}

fn find_nvcc() -> PathBuf {
    if let Some(p) = std::env::var_os("NVCC") {
        return PathBuf::from(p);
    }
    if let Some(home) = std::env::var_os("CUDA_HOME") {
        let p = Path::new(&home).join("bin/nvcc");
        if p.exists() {
            return p;
        }
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("nvcc"))
            .find(|p| p.exists())
    });
    on_path.unwrap_or_else(|| {
        panic!(
            "the `cuda` feature compiles kernels/cuda/*.cu with nvcc, which was not found \
             (NVCC, CUDA_HOME/bin, PATH): run `scripts/gpu/build`, which installs it, or \
             `eval \"$(scripts/gpu/toolchain)\"` first"
        )
    })
}
