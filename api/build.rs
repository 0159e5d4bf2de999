//! Record the git commit the API is built from (`/status`): `GIT_COMMIT` from the build
//! environment (CI without a checkout), else `git rev-parse HEAD`, else nothing ("unknown").
//!
//! Cargo counts a watched path that does not exist as changed, so a build with nothing
//! changed would rebuild the API every time. Only paths that exist are watched: `HEAD`
//! (branch switches), the `refs/heads` folder (a new loose ref as a commit lands; cargo scans
//! a folder for any newer file) and `packed-refs` where there is one (`git pack-refs`, `gc`).

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=GIT_COMMIT");
    let commit = std::env::var("GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "HEAD"]));
    if let Some(commit) = commit {
        println!("cargo:rustc-env=QUAYSIDE_GIT_COMMIT={commit}");
    }
    for path in ["HEAD", "refs/heads", "packed-refs"] {
        if let Some(p) = git(&["rev-parse", "--git-path", path])
            && Path::new(&p).exists()
        {
            println!("cargo:rerun-if-changed={p}");
        }
    }
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!s.is_empty()).then_some(s)
}
