//! What the tests of `serve` share: the workspace, and a copy of a committed run.
use std::path::{Path, PathBuf};

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A copy of the committed `cnn` run (its checkpoint), so the server's similarity index is
/// cached there and not in the repository.
pub fn run_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(
            workspace().join("results/cnn/seed-42").join(file),
            dir.path().join(file),
        )
        .unwrap();
    }
    dir
}
