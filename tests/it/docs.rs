//! The docs cannot drift from the tree: every repository path they name in
//! backticks (`src/…`, `tests/…`, `deploy/…`, …) exists, and every relative
//! link resolves to a file of the repository.

use std::path::{Path, PathBuf};

/// The Markdown files a reader is pointed at.
fn docs(root: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = [
        "README.md",
        "RELIABILITY.md",
        "SECURITY.md",
        "BENCHMARKS.md",
    ]
    .iter()
    .map(|f| root.join(f))
    .collect();
    for dir in ["docs", "clients", "deploy", "bench", "proto", "fuzz"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        for e in entries.flatten() {
            if e.path().extension().is_some_and(|x| x == "md") {
                files.push(e.path());
            }
        }
    }
    files
}

/// Candidate repository paths inside backticks: `src/app/mod.rs`,
/// `tests/it/overload.rs` (a `::item` or `:line` after the path is dropped).
fn named_paths(text: &str) -> Vec<String> {
    const ROOTS: [&str; 8] = [
        "src/",
        "tests/",
        "deploy/",
        "bench/",
        "scripts/",
        "migrations/",
        "proto/",
        "clients/",
    ];
    let mut out = Vec::new();
    for quoted in text.split('`').skip(1).step_by(2) {
        let word = quoted.split_whitespace().next().unwrap_or_default();
        let path = word
            .split("::")
            .next()
            .unwrap_or_default()
            .split(':')
            .next()
            .unwrap_or_default()
            .trim_end_matches([',', '.', ')']);
        let looks_like_file = path
            .rsplit('/')
            .next()
            .is_some_and(|last| last.contains('.'));
        if ROOTS.iter().any(|r| path.starts_with(r))
            && looks_like_file
            && !path.contains(['*', '{', '<', '…'])
        {
            out.push(path.to_owned());
        }
    }
    out
}

/// Relative link targets: `[text](docs/API.md#anchor)`.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for part in text.split("](").skip(1) {
        let target = part.split(')').next().unwrap_or_default();
        let target = target.split('#').next().unwrap_or_default();
        if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
            continue;
        }
        out.push(target.to_owned());
    }
    out
}

#[test]
fn every_path_and_link_in_the_docs_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut missing = Vec::new();
    for file in docs(root) {
        let text = std::fs::read_to_string(&file).expect("read doc");
        let dir = file.parent().expect("in a folder");
        for path in named_paths(&text) {
            if !root.join(&path).exists() {
                missing.push(format!("{}: `{path}`", file.display()));
            }
        }
        for link in links(&text) {
            if !dir.join(&link).exists() {
                missing.push(format!("{}: link ({link})", file.display()));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "named but not in the repository:\n{}",
        missing.join("\n")
    );
}
