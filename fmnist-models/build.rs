//! With `--features cuda`, compiles the CUDA kernels (`src/kernels/cuda/kernels.cu`) to PTX with nvcc
//! (`$NVCC`, else `$CUDA_HOME/bin/nvcc`, else `nvcc` on the PATH) for the compute capability in
//! `$CUDA_COMPUTE_CAP` (default 90: H100/H200), as candle's own kernels are built. Without the
//! feature it does nothing.
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    println!("cargo:rerun-if-changed=src/kernels/cuda/kernels.cu");
    for var in ["NVCC", "CUDA_HOME", "CUDA_COMPUTE_CAP"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let nvcc = std::env::var_os("NVCC")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("CUDA_HOME").map(|h| PathBuf::from(h).join("bin/nvcc")))
        .unwrap_or_else(|| PathBuf::from("nvcc"));
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let status = Command::new(&nvcc)
        .args(["--ptx", "-O3", "-std=c++17"])
        .arg(format!("--gpu-architecture=sm_{cap}"))
        .arg("src/kernels/cuda/kernels.cu")
        .arg("-o")
        .arg(out.join("kernels.ptx"))
        .status()
        .unwrap_or_else(|e| panic!("running {} (the CUDA compiler): {e}", nvcc.display()));
    assert!(
        status.success(),
        "nvcc failed to compile src/kernels/cuda/kernels.cu"
    );
}
