//! `HostnamePattern::from_str` and `AllowedHostnames::parse` on arbitrary input: no
//! panic, and whatever is accepted is in normal form (its `Display` re-parses to an
//! equal pattern) and matches what a pattern of that form should match.
//!
//! Input: lossy UTF-8; the whole input is one pattern, and its lines are a list.

#![no_main]

use std::str::FromStr;

use keygate::domain::hostnames::{AllowedHostnames, HostnamePattern, HostnamesError};
use libfuzzer_sys::fuzz_target;

fn is_normal_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| !l.is_empty() && l.len() <= 63)
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.' | '_'))
}

fn check_pattern(input: &str, p: &HostnamePattern) {
    let shown = p.to_string();
    let again = HostnamePattern::from_str(&shown);
    assert!(
        again.as_ref() == Ok(p),
        "{input:?} parsed to {p:?}, whose form {shown:?} re-parses to {again:?}"
    );
    // Normalisation is idempotent on the input's own case and trailing-dot variants.
    let upper = shown.to_ascii_uppercase();
    assert!(
        HostnamePattern::from_str(&upper).as_ref() == Ok(p),
        "{upper:?}"
    );
    let dotted = format!("{shown}.");
    assert!(
        HostnamePattern::from_str(&dotted).as_ref() == Ok(p),
        "{dotted:?}"
    );
    match p {
        HostnamePattern::Exact(name) => {
            assert!(is_normal_name(name), "{input:?} -> {name:?}");
            assert!(p.matches(name));
            assert!(!p.matches(&format!("a.{name}")));
            assert!(!p.matches(&format!("x{name}")));
        }
        HostnamePattern::Wildcard { suffix } => {
            assert!(is_normal_name(suffix), "{input:?} -> {suffix:?}");
            assert!(suffix.contains('.'), "wildcard over one label: {input:?}");
            assert!(shown.len() <= 253);
            assert!(p.matches(&format!("a.{suffix}")));
            assert!(p.matches(&format!("a.b.{suffix}")));
            assert!(!p.matches(suffix));
            assert!(!p.matches(&format!(".{suffix}")));
            assert!(!p.matches(&format!("a{suffix}")));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);

    if let Ok(p) = HostnamePattern::from_str(&text) {
        check_pattern(&text, &p);
    }

    let lines: Vec<&str> = text.split('\n').collect();
    match AllowedHostnames::parse(&lines) {
        Ok(list) => {
            // The limit counts distinct patterns, after normalisation.
            assert!(list.iter().count() <= AllowedHostnames::MAX);
            let patterns: Vec<&HostnamePattern> = list.iter().collect();
            for (i, p) in patterns.iter().enumerate() {
                assert!(!patterns[..i].contains(p), "duplicate {p:?}");
            }
            // Every entry parses alone to a pattern of the list, in first-seen order.
            let mut expected: Vec<HostnamePattern> = Vec::new();
            for line in &lines {
                let p = HostnamePattern::from_str(line).expect("accepted in the list");
                check_pattern(line, &p);
                if !expected.contains(&p) {
                    expected.push(p);
                }
            }
            assert!(patterns.iter().copied().eq(expected.iter()));
            let stored = list.to_vec();
            assert!(AllowedHostnames::parse(&stored).as_ref() == Ok(&list));
            assert_eq!(list.is_empty(), stored.is_empty());
        }
        Err(HostnamesError::TooMany(n)) => {
            // Every entry was valid; more than the limit remain once duplicates go.
            let mut distinct: Vec<HostnamePattern> = Vec::new();
            for line in &lines {
                let p = HostnamePattern::from_str(line).expect("a list refused as too long");
                if !distinct.contains(&p) {
                    distinct.push(p);
                }
            }
            assert_eq!(n, distinct.len());
            assert!(n > AllowedHostnames::MAX);
        }
        Err(HostnamesError::Invalid { index, value, .. }) => {
            assert!(HostnamePattern::from_str(lines[index]).is_err());
            for line in &lines[..index] {
                assert!(HostnamePattern::from_str(line).is_ok());
            }
            assert!(value.chars().count() <= 101);
        }
    }
});
