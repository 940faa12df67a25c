//! The workspace's layering and file conventions, checked on every `cargo test`: each fmnist
//! crate depends only on the crates below it (runs, data <- models <- train <- eval, serve
//! beside eval; xtask on the run layout alone), and every Rust file of the workspace opens
//! with a `//!` line saying what it is.
use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root.
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_path_buf()
}

/// Each crate of the workspace and the fmnist crates it may depend on (normal, dev or build).
const LAYERS: [(&str, &[&str]); 7] = [
    ("fmnist-runs", &[]),
    ("fmnist-data", &[]),
    ("fmnist-models", &["fmnist-runs", "fmnist-data"]),
    (
        "fmnist-train",
        &["fmnist-runs", "fmnist-data", "fmnist-models"],
    ),
    (
        "fmnist-eval",
        &[
            "fmnist-runs",
            "fmnist-data",
            "fmnist-models",
            "fmnist-train",
        ],
    ),
    // The service sits beside evaluation: it never links it (nor its plots).
    (
        "fmnist-serve",
        &[
            "fmnist-runs",
            "fmnist-data",
            "fmnist-models",
            "fmnist-train",
        ],
    ),
    // Only the run layout: xtask builds without candle.
    ("xtask", &["fmnist-runs"]),
];

/// The fmnist crates each crate of the workspace depends on, from `cargo metadata`.
fn fmnist_dependencies() -> Vec<(String, Vec<String>)> {
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(workspace())
        .output()
        .expect("running cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let packages = meta["packages"].as_array().expect("packages");
    packages
        .iter()
        .map(|p| {
            let deps = p["dependencies"].as_array().expect("dependencies");
            let fmnist = deps
                .iter()
                .filter_map(|d| d["name"].as_str())
                .filter(|d| d.starts_with("fmnist-"))
                .map(str::to_string)
                .collect();
            (p["name"].as_str().unwrap().to_string(), fmnist)
        })
        .collect()
}

#[test]
fn every_crate_depends_only_on_the_layers_below_it() {
    let crates = fmnist_dependencies();
    for (name, deps) in &crates {
        let Some((_, allowed)) = LAYERS.iter().find(|(n, _)| n == name) else {
            panic!("{name}: a crate the layering does not place (add it to LAYERS in this test)");
        };
        for dep in deps {
            assert!(
                allowed.contains(&dep.as_str()),
                "{name} depends on {dep}, against the layering runs, data <- models <- train <- eval (serve beside eval; xtask on runs)"
            );
        }
    }
    let mut names: Vec<&str> = crates.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    let mut expected: Vec<&str> = LAYERS.iter().map(|(n, _)| *n).collect();
    expected.sort_unstable();
    assert_eq!(names, expected, "the workspace's crates");
}

/// The Rust files under `dir`, recursively.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_rust_file_opens_with_a_line_saying_what_it_is() {
    let root = workspace();
    let mut files = Vec::new();
    for (name, _) in LAYERS {
        let dir = root.join(name);
        for part in ["src", "tests", "benches", "examples"] {
            rust_files(&dir.join(part), &mut files);
        }
        let build = dir.join("build.rs");
        if build.exists() {
            files.push(build);
        }
    }
    assert!(files.len() > 50, "found only {} files", files.len());
    let bare: Vec<String> = files
        .iter()
        .filter(|f| {
            let text = std::fs::read_to_string(f).unwrap_or_default();
            !text.starts_with("//!")
        })
        .map(|f| f.strip_prefix(&root).unwrap_or(f).display().to_string())
        .collect();
    assert!(bare.is_empty(), "files without a //! line first: {bare:?}");
}
