//! Embeds the commit the binaries are built from (`FMNIST_GIT_COMMIT`), so that a run and a
//! benchmark record where their code came from even when the binary was copied elsewhere.
//! A build from a tree whose Rust sources or manifests differ from that commit is marked
//! `-dirty`.
use std::process::Command;

/// The code and manifests the binaries are built from, as git pathspecs.
const SOURCES: [&str; 3] = ["*.rs", "*.toml", "Cargo.lock"];

/// `git ARGS` in `dir` (the build script runs in the package's folder).
fn git_in(dir: &str, args: &[&str]) -> Option<String> {
    Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

fn main() {
    // Every path below is relative to the top of the checkout, not to this package.
    let root = git_in(".", &["rev-parse", "--show-toplevel"]).unwrap_or_else(|| ".".into());
    let git = |args: &[&str]| git_in(&root, args);
    let commit = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let status = [
        &["status", "--porcelain", "--untracked-files=no", "--"][..],
        &SOURCES,
    ]
    .concat();
    let dirty = git(&status).is_some_and(|changes| !changes.is_empty());
    let suffix = if dirty { "-dirty" } else { "" };
    println!("cargo:rustc-env=FMNIST_GIT_COMMIT={commit}{suffix}");
    // A checkout or a commit moves HEAD or the branch it points to; an edit changes a source.
    let mut watched = vec![String::from("HEAD")];
    watched.extend(git(&["symbolic-ref", "-q", "HEAD"]));
    for name in watched {
        if let Some(path) = git(&["rev-parse", "--path-format=absolute", "--git-path", &name]) {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    let files = git(&[&["ls-files", "--"][..], &SOURCES].concat()).unwrap_or_default();
    for file in files.lines() {
        println!("cargo:rerun-if-changed={root}/{file}");
    }
}
