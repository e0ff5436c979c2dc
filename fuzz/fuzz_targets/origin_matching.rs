//! `origin_host`, `referer_host` and `AllowedHostnames::allows` on arbitrary header
//! values against a few fixed pattern lists: no panic, an empty list allows everything,
//! and `allows` follows the header rule of DESIGN.md §3 with a reference matcher.
//!
//! Input: lossy UTF-8; `origin` before the first NUL, `referer` after it.

#![no_main]

use std::sync::LazyLock;

use keygate::domain::hostnames::{AllowedHostnames, HostnamePattern, origin_host, referer_host};
use libfuzzer_sys::fuzz_target;

static LISTS: LazyLock<Vec<AllowedHostnames>> = LazyLock::new(|| {
    let lists: [&[&str]; 5] = [
        &[],
        &["example.com"],
        &["*.example.com", "api.example.org"],
        &[
            "127.0.0.1",
            "localhost",
            "bücher.example",
            "*.app.localhost",
        ],
        &["*.user.github.io", "a_b.example.net", "пример.com", "x-.y"],
    ];
    lists
        .iter()
        .map(|l| AllowedHostnames::parse(*l).expect("fixed lists are valid"))
        .collect()
});

/// `host == p`, or `host` ends in `.suffix` with something before the dot.
fn reference_matches(p: &HostnamePattern, host: &str) -> bool {
    match p {
        HostnamePattern::Exact(name) => host == name,
        HostnamePattern::Wildcard { suffix } => {
            host.len() > suffix.len() + 1 && host.ends_with(&format!(".{suffix}"))
        }
    }
}

fn check_host(host: &Option<String>, header: &str) {
    if let Some(h) = host {
        assert!(!h.is_empty(), "empty host from {header:?}");
        assert!(
            !h.bytes().any(|b| b.is_ascii_uppercase()),
            "host {h:?} from {header:?} is not lower-case"
        );
        assert!(h.is_ascii(), "host {h:?} from {header:?} is not ASCII");
    }
    // `null` names no host; nor does a header with controls or whitespace anywhere
    // (the URL parser would silently strip or skip them).
    if header == "null" || header.chars().any(|c| c.is_control() || c.is_whitespace()) {
        assert!(host.is_none(), "{header:?} gave {host:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (origin, referer) = text.split_once('\0').unwrap_or((&text, ""));

    let o = origin_host(origin);
    let r = referer_host(referer);
    check_host(&o, origin);
    check_host(&r, referer);

    // The header rule: origin decides when non-empty, else referer, else allowed.
    let deciding: Option<Option<&String>> = if !origin.is_empty() {
        Some(o.as_ref())
    } else if !referer.is_empty() {
        Some(r.as_ref())
    } else {
        None
    };

    for list in LISTS.iter() {
        let allowed = list.allows(origin, referer);
        if list.is_empty() {
            assert!(allowed, "an empty list refused {origin:?} / {referer:?}");
            continue;
        }
        let expected = match deciding {
            None => true,
            Some(None) => false,
            Some(Some(host)) => list.iter().any(|p| reference_matches(p, host)),
        };
        assert_eq!(
            allowed,
            expected,
            "allows({origin:?}, {referer:?}) over {:?}",
            list.to_vec()
        );
        // Each pattern agrees with the reference on the extracted hosts too.
        for host in [&o, &r].into_iter().flatten() {
            for p in list.iter() {
                assert_eq!(
                    p.matches(host),
                    reference_matches(p, host),
                    "{p} vs {host:?}"
                );
            }
        }
        // The referer is ignored once an origin is present.
        if !origin.is_empty() {
            assert_eq!(allowed, list.allows(origin, "https://example.com/"));
            assert_eq!(allowed, list.allows(origin, ""));
        }
    }
});
