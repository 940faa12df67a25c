//! `cargo xtask cuda-check`: builds the binaries with `--features cuda` on a machine without
//! a GPU or a CUDA toolkit, so the CUDA build cannot rot unseen.
//!
//! 1. A CUDA 13.0 toolchain from PyPI wheels, pinned to one minor version (mixing them breaks
//!    nvcc), pip-installed once into a cache folder.
//! 2. A link folder: unversioned symlinks to the wheels' shared libraries, and a stub
//!    `libcuda.so` (soname `libcuda.so.1`) exporting the driver functions the build references,
//!    as NVIDIA's own toolkit ships under `lib/stubs`: the driver library comes with a GPU's
//!    driver, never in a wheel, and on a GPU machine the real one is loaded instead.
//! 3. `cargo build --release --features cuda` of the binaries, in a target folder of its own
//!    (its RUSTFLAGS differ, and nvcc compiling candle's kernels is most of the ~15 minutes).
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use crate::{project_root, run};

/// The wheels, all CUDA 13.0: cudarc 0.19 accepts toolkits up to 13.4, and the lent GPU
/// machines' driver (580) runs CUDA 13.0 PTX.
const WHEELS: [&str; 8] = [
    "nvidia-cuda-nvcc==13.0.*",
    "nvidia-cuda-crt==13.0.*",
    "nvidia-nvvm==13.0.*",
    "nvidia-cuda-cccl==13.0.*",
    "nvidia-cuda-runtime==13.0.*",
    "nvidia-cuda-nvrtc==13.0.*",
    "nvidia-cublas==13.0.*",
    "nvidia-curand==10.4.0.*",
];

/// Build the CUDA binaries here, with a toolchain fetched from PyPI (no GPU needed).
#[derive(clap::Args, Debug)]
pub struct CudaCheck {
    /// Where the toolchain wheels are installed (reused when present).
    #[arg(long, value_name = "DIR", default_value = "target/cuda-toolkit")]
    toolkit: PathBuf,
    /// Compute capability compiled for (90: H100/H200).
    #[arg(long, default_value = "90")]
    compute_cap: String,
    /// Only type-check (`cargo check --features cuda`, no stub, no link).
    #[arg(long)]
    check_only: bool,
    /// Python with pip, for installing the wheels.
    #[arg(long, default_value = "python3")]
    python: PathBuf,
}

impl CudaCheck {
    pub fn run(&self) -> anyhow::Result<()> {
        let root = project_root();
        let toolkit = root.join(&self.toolkit);
        let cuda = toolkit.join("nvidia/cu13");
        if !cuda.join("bin/nvcc").is_file() {
            println!(
                "xtask: installing the CUDA 13.0 wheels into {} (~1.2 GB, once)",
                toolkit.display()
            );
            run(Command::new(&self.python)
                .args(["-m", "pip", "install", "--quiet", "--upgrade", "--target"])
                .arg(&toolkit)
                .args(WHEELS))
            .context("installing the CUDA wheels")?;
        }
        let nvcc = cuda.join("bin/nvcc");
        if !nvcc.is_file() {
            bail!("{} missing after installing the wheels", nvcc.display());
        }
        let target = root.join("target/cuda");
        let link_dir = target.join("link");
        std::fs::create_dir_all(&link_dir)?;
        link_unversioned(&cuda.join("lib"), &link_dir)?;

        let env = |cmd: &mut Command| {
            let path = std::env::var_os("PATH").unwrap_or_default();
            let mut paths = vec![cuda.join("bin")];
            paths.extend(std::env::split_paths(&path));
            cmd.current_dir(&root)
                .env("PATH", std::env::join_paths(paths).unwrap_or(path))
                .env("CUDA_HOME", &cuda)
                .env("CUDA_PATH", &cuda)
                .env("CUDA_ROOT", &cuda)
                .env("NVCC", &nvcc)
                .env("CUDA_COMPUTE_CAP", &self.compute_cap)
                .env("CARGO_TARGET_DIR", &target)
                .env("RUSTFLAGS", format!("-L native={}", link_dir.display()));
        };
        let packages = [
            "-p",
            "fmnist-train",
            "-p",
            "fmnist-eval",
            "-p",
            "fmnist-serve",
        ];
        if self.check_only {
            let mut cmd = crate::cargo();
            env(&mut cmd);
            cmd.args(["check", "--release", "--features", "cuda", "--all-targets"])
                .args(packages);
            run(&mut cmd)?;
            println!("xtask: cuda-check passed (cargo check --features cuda)");
            return Ok(());
        }
        // The libraries and their kernels first (nvcc: most of the time).
        let mut libs = crate::cargo();
        env(&mut libs);
        libs.args(["build", "--release", "--features", "cuda", "--lib"])
            .args(packages);
        run(&mut libs)?;
        // Which driver functions the link needs: link once against an empty stub with no cap
        // on the linker's error count (a flag of the final crate only, so nothing else is
        // rebuilt; the libraries are LLVM bitcode under LTO, so nm cannot read them).
        // fmnist-eval and fmnist-serve depend on fmnist-train, so their features unify as the
        // three packages do.
        // Each binary that calls the driver is probed: they do not all call the same functions.
        write_stub(&[], &link_dir)?;
        let mut symbols = Vec::new();
        for (package, bin) in [
            ("fmnist-eval", "fmnist-eval"),
            ("fmnist-serve", "fmnist-serve"),
            ("fmnist-train", "fmnist-bench"),
        ] {
            let mut probe = crate::cargo();
            env(&mut probe);
            probe
                .args(["rustc", "--release", "--features", "cuda"])
                .args(["-p", package, "--bin", bin, "--"])
                .args(["-C", "link-arg=-Wl,--error-limit=0"]);
            let out = probe
                .output()
                .with_context(|| format!("starting {probe:?}"))?;
            let log = String::from_utf8_lossy(&out.stderr);
            let found = undefined_driver_symbols(&log);
            if found.is_empty() && !out.status.success() {
                bail!("the CUDA build of {bin} failed before linking:\n{log}");
            }
            symbols.extend(found);
        }
        symbols.sort();
        symbols.dedup();
        write_stub(&symbols, &link_dir)?;
        let mut bins = crate::cargo();
        env(&mut bins);
        bins.args(["build", "--release", "--features", "cuda", "--bins"])
            .args(packages);
        run(&mut bins)?;
        let out = target.join("release");
        println!(
            "xtask: cuda-check passed: {}, {} and {} built with --features cuda (stub libcuda with {} driver functions). On a GPU machine put the CUDA 13 libraries on LD_LIBRARY_PATH next to the driver's and run them with --device cuda.",
            out.join("fmnist-train").display(),
            out.join("fmnist-eval").display(),
            out.join("fmnist-serve").display(),
            symbols.len()
        );
        Ok(())
    }
}

/// `libX.so` -> `libX.so.N` for every versioned library of `lib` (the linker asks for `-lX`).
fn link_unversioned(lib: &Path, link_dir: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(lib).with_context(|| format!("reading {}", lib.display()))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let Some((stem, _version)) = name.split_once(".so.") else {
            continue;
        };
        let link = link_dir.join(format!("{stem}.so"));
        if link.symlink_metadata().is_ok() {
            std::fs::remove_file(&link)?;
        }
        std::os::unix::fs::symlink(&path, &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    Ok(())
}

/// The CUDA driver functions (`cu` + capital letter) a linker log reports undefined.
fn undefined_driver_symbols(log: &str) -> Vec<String> {
    let mut symbols: Vec<String> = log
        .lines()
        .filter_map(|l| l.split("undefined symbol: ").nth(1))
        .map(|s| s.trim().trim_matches(|c| c == '`' || c == '\''))
        .filter(|s| {
            s.strip_prefix("cu")
                .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_uppercase()))
        })
        .map(String::from)
        .collect();
    symbols.sort();
    symbols.dedup();
    symbols
}

/// Compiles `libcuda.so` exporting `symbols` as functions that are never called.
fn write_stub(symbols: &[String], link_dir: &Path) -> anyhow::Result<()> {
    let mut c =
        String::from("/* Link-time stub of the CUDA driver library (cargo xtask cuda-check). */\n");
    for s in symbols {
        let _ = writeln!(c, "int {s}(void) {{ return 999; }}");
    }
    let source = link_dir.join("cuda_stub.c");
    std::fs::write(&source, c)?;
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    run(Command::new(cc)
        .args(["-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o"])
        .arg(link_dir.join("libcuda.so"))
        .arg(&source))
    .context("compiling the libcuda stub")?;
    // So the binaries also start here, where `--device auto` then falls back to the CPU.
    let soname = link_dir.join("libcuda.so.1");
    if soname.symlink_metadata().is_ok() {
        std::fs::remove_file(&soname)?;
    }
    std::os::unix::fs::symlink("libcuda.so", &soname)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_functions_are_read_from_the_linker_log() {
        let log = "  = note: rust-lld: error: undefined symbol: cuInit\n\
                   >>> referenced by driver.rs\n\
                   rust-lld: error: undefined symbol: cuMemAlloc_v2\n\
                   rust-lld: error: undefined symbol: cuInit\n\
                   rust-lld: error: undefined symbol: cublasCreate_v2\n\
                   rust-lld: error: undefined symbol: cudaMalloc\n";
        assert_eq!(
            undefined_driver_symbols(log),
            vec!["cuInit", "cuMemAlloc_v2"]
        );
    }
}
