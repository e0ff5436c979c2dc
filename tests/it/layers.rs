//! The tree is the architecture: each top-level folder of `src/` depends only
//! on folders below it in this order, and on the shared modules beside them.
//! A `use crate::…` that points up (the domain reaching into the hot path, the
//! store into webhooks) fails here, naming the file.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

/// Highest first; a folder may use the ones after it.
const LAYERS: [&str; 7] = [
    "app", "api", "services", "webhooks", "hotpath", "store", "domain",
];
/// Used by any layer; each may use only what its own entry lists.
const SHARED: [(&str, &[&str]); 5] = [
    ("config", &["domain"]),
    ("clock", &["domain"]),
    ("logging", &["config"]),
    ("metrics", &["proto"]),
    ("proto", &[]),
];

/// The top-level modules `text` names through `crate::`, outside its tests.
fn uses(text: &str) -> BTreeSet<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `use crate::{a::X, b::{Y, Z}}`: the first name of each item.
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.extend(head(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            out.extend(head(&item));
        } else {
            out.extend(head(rest));
        }
    }
    out
}

fn head(item: &str) -> Option<String> {
    let name: String = item
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    (!name.is_empty()).then_some(name)
}

fn walk(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src").flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, files);
        } else if p.extension().is_some_and(|x| x == "rs") {
            files.push(p);
        }
    }
}

#[test]
fn every_folder_depends_only_on_those_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    let allowed = |from: &str, to: &str| -> bool {
        if let Some((_, may)) = SHARED.iter().find(|(m, _)| *m == from) {
            return may.contains(&to);
        }
        if SHARED.iter().any(|(m, _)| *m == to) {
            return true;
        }
        match (
            LAYERS.iter().position(|l| *l == from),
            LAYERS.iter().position(|l| *l == to),
        ) {
            (Some(a), Some(b)) => a < b,
            _ => false,
        }
    };
    let mut wrong = Vec::new();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let rel = file.strip_prefix(&src).expect("under src");
        let first = rel.components().next().expect("a component");
        let unit = first
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        if unit == "main" || unit == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(file).expect("read");
        for to in uses(&text) {
            if to == unit {
                continue;
            }
            edges.entry(unit.clone()).or_default().insert(to.clone());
            if !allowed(&unit, &to) {
                wrong.push(format!("{} uses crate::{to}", rel.display()));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "dependencies against the layering (highest first: {LAYERS:?}):\n{}",
        wrong.join("\n")
    );
    // Every folder and shared module is known to the table, so a new one
    // must be placed in it.
    for unit in edges.keys() {
        assert!(
            LAYERS.contains(&unit.as_str()) || SHARED.iter().any(|(m, _)| m == unit),
            "src/{unit} is in no layer: add it to LAYERS or SHARED"
        );
    }
}
