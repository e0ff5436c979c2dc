//! `parse_scope`, `ScopeSet::parse` and `ScopeSet::grants` on arbitrary input, each
//! compared with a straightforward reference model.
//!
//! Input: lossy UTF-8; before the first NUL, the held scopes (one a line), after it the
//! required scopes (one a line).

#![no_main]

use std::collections::BTreeSet;

use keygate::domain::scopes::{ScopeSet, ScopeSetError, parse_scope};
use libfuzzer_sys::fuzz_target;

/// `[a-z][a-z0-9_]{0,62}`
fn part_ok(p: &str) -> bool {
    let mut chars = p.chars();
    matches!(chars.next(), Some('a'..='z'))
        && p.len() <= 63
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
}

/// `resource:action` split at the first `:`; action may be exactly `*`.
fn reference_scope_ok(s: &str) -> bool {
    match s.split_once(':') {
        Some((resource, action)) => part_ok(resource) && (action == "*" || part_ok(action)),
        None => false,
    }
}

/// `required` is held, or `resource:*` is held and `required` is not itself a wildcard.
fn reference_grants(held: &BTreeSet<&str>, required: &str) -> bool {
    if held.contains(required) {
        return true;
    }
    let (resource, action) = required.split_once(':').expect("validated scope");
    action != "*" && held.contains(format!("{resource}:*").as_str())
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (held_text, required_text) = text.split_once('\0').unwrap_or((&text, ""));
    let held: Vec<&str> = held_text.split('\n').collect();
    let mut required: Vec<String> = required_text.split('\n').map(str::to_owned).collect();

    for s in held
        .iter()
        .copied()
        .chain(required.iter().map(String::as_str))
    {
        let parsed = parse_scope(s);
        assert_eq!(parsed.is_ok(), reference_scope_ok(s), "{s:?}: {parsed:?}");
        if let Ok(r) = parsed {
            assert_eq!(r.as_str(), s);
            assert_eq!(format!("{}:{}", r.resource(), r.action()), s);
            assert_eq!(r.is_wildcard(), r.action() == "*");
        }
    }

    let set = ScopeSet::parse(&held);
    let first_bad = held.iter().position(|s| !reference_scope_ok(s));
    let distinct: BTreeSet<&str> = held.iter().copied().collect();
    match (&set, first_bad) {
        (Ok(set), None) => {
            assert!((1..=ScopeSet::MAX).contains(&distinct.len()));
            // Sorted by byte order, de-duplicated, nothing lost or added.
            assert!(set.iter().eq(distinct.iter().copied()));
            assert_eq!(set.len(), distinct.len());
            assert!(!set.is_empty());
            assert!(ScopeSet::parse(set.to_vec()).as_ref() == Ok(set));
        }
        (Err(ScopeSetError::Invalid { index, value, .. }), Some(bad)) => {
            assert_eq!(*index, bad);
            assert!(held[bad].starts_with(value.as_str()));
            assert!(value.len() <= keygate::domain::scopes::MAX_ECHOED_LEN);
        }
        (Err(ScopeSetError::TooMany(n)), None) => {
            assert_eq!(*n, distinct.len());
            assert!(*n > ScopeSet::MAX);
        }
        (Err(ScopeSetError::Empty), None) => unreachable!("split always yields an entry"),
        (other, bad) => panic!("ScopeSet::parse gave {other:?}, first invalid entry {bad:?}"),
    }

    let Ok(set) = set else { return };
    // Also ask about every held scope's wildcard and a sibling action of it.
    for h in &held {
        if let Some((resource, action)) = h.split_once(':') {
            required.push(format!("{resource}:*"));
            required.push(format!("{resource}:{action}x"));
        }
    }
    for r in &required {
        let Ok(scope) = parse_scope(r) else { continue };
        assert_eq!(
            set.grants(scope),
            reference_grants(&distinct, r),
            "grants({r:?}) over {distinct:?}"
        );
        assert_eq!(set.contains(r), distinct.contains(r.as_str()));
    }
});
