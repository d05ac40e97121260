//! The repository is self-contained: no tracked file of src/, tests/, tools/, examples/, csrc/,
//! build.rs, .ci/, README.md or docs/ refers to a folder beside the checkout or to an absolute
//! path of a developer's machine. A fresh clone has nothing beside it (tools/fresh_clone_check.sh).
use crate::common;

use std::path::{Path, PathBuf};

const SCOPE: [&str; 10] = [
    "src",
    "tests",
    "tools",
    "examples",
    "csrc",
    "build.rs",
    ".ci",
    ".cargo",
    "README.md",
    "docs",
];

/// The tracked files under SCOPE (`git ls-files`), or every file there when this is not a git
/// checkout (a source tarball).
fn files() -> Vec<PathBuf> {
    let root = common::root();
    let git = std::process::Command::new("git")
        .arg("ls-files")
        .arg("-z")
        .arg("--")
        .args(SCOPE)
        .current_dir(&root)
        .output();
    if let Ok(out) = git {
        if out.status.success() && !out.stdout.is_empty() {
            return out
                .stdout
                .split(|&b| b == 0)
                .filter(|p| !p.is_empty())
                .map(|p| root.join(String::from_utf8_lossy(p).as_ref()))
                .collect();
        }
    }
    let mut all = Vec::new();
    fn walk(p: &Path, all: &mut Vec<PathBuf>) {
        if p.is_dir() {
            for e in std::fs::read_dir(p).unwrap().flatten() {
                walk(&e.path(), all);
            }
        } else if p.is_file() {
            all.push(p.to_path_buf());
        }
    }
    for s in SCOPE {
        walk(&root.join(s), &mut all);
    }
    all
}

#[test]
fn no_tracked_file_reaches_outside_the_checkout() {
    // spelled in pieces so that this file does not match itself
    let forbidden = [
        ["..", "/shared"].concat(),
        ["/work", "/"].concat(),
        ["/root", "/"].concat(),
        ["/home", "/"].concat(),
        ["/Users", "/"].concat(),
        // a folder beside the checkout joined piece by piece, as os.path.join(HERE, "..", NAME)
        ["\"sha", "red\""].concat(),
        ["'sha", "red'"].concat(),
    ];
    let files = files();
    assert!(
        files.len() > 50,
        "only {} files found: is this the repository?",
        files.len()
    );
    let mut hits = Vec::new();
    for f in &files {
        let Ok(text) = std::fs::read_to_string(f) else {
            continue; // binary (PNG, .pth)
        };
        for (i, line) in text.lines().enumerate() {
            for pat in &forbidden {
                if line.contains(pat.as_str()) {
                    let rel = f.strip_prefix(common::root()).unwrap_or(f);
                    hits.push(format!(
                        "{}:{}: {:?} in: {}",
                        rel.display(),
                        i + 1,
                        pat,
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(
        hits.is_empty(),
        "tracked files refer to paths outside the repository (copy what they need into it):\n{}",
        hits.join("\n")
    );
}

#[test]
fn what_the_tests_read_is_in_the_repository() {
    let root = common::root();
    for f in [
        "tests/data/images/SOURCES.md",
        "tests/data/images/chelsea.png",
        "tests/data/images/coffee_q75_progressive.jpg",
        "tests/data/reference/official_args.json",
        "tests/data/reference/official_state_dicts.json",
        "weights/mae_pretrain_fmnist_mini_patch4.pth",
    ] {
        assert!(root.join(f).is_file(), "{f} is missing from the checkout");
    }
}
