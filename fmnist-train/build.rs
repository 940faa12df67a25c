//! Embeds the commit the binaries are built from (`FMNIST_GIT_COMMIT`), so that a run and a
//! benchmark record where their code came from even when the binary was copied elsewhere.
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    Command::new("git")
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

fn main() {
    let commit = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=FMNIST_GIT_COMMIT={commit}");
    // A checkout or a commit moves HEAD or the branch it points to.
    let mut watched = vec![String::from("HEAD")];
    watched.extend(git(&["symbolic-ref", "-q", "HEAD"]));
    for name in watched {
        if let Some(path) = git(&["rev-parse", "--path-format=absolute", "--git-path", &name]) {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}
