//! `keygate::domain::keys::parse_token` on arbitrary input, checked against an independent
//! reference implementation of the secret format (DESIGN.md §1), plus the
//! generate → parse round trip under prefixes derived from the input.

#![no_main]

use keygate::domain::keys::{
    BODY_LEN, CHECKSUM_LEN, KEY_PREFIX_DISPLAY_LEN, KeyPrefix, LAST_FOUR_LEN, MAX_TOKEN_LEN,
    Secret, parse_token,
};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Bitwise CRC-32/ISO-HDLC (reflected polynomial 0xEDB88320), written out here so the
/// target does not trust the crc32fast table the service uses.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn base62_6(mut n: u32) -> Vec<u8> {
    let mut out = vec![b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(n % 62) as usize];
        n /= 62;
    }
    out
}

/// `[a-z][a-z0-9]*(_[a-z0-9]+)*`, at most 16 characters: written as a split on `_`.
fn reference_prefix_ok(p: &str) -> bool {
    if p.is_empty() || p.len() > 16 || !p.as_bytes()[0].is_ascii_lowercase() {
        return false;
    }
    p.split('_').all(|seg| {
        !seg.is_empty()
            && seg
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    })
}

/// The whole contract, independently: `<prefix>_<43 base62><6 base62 CRC-32>`, ≤ 256.
fn reference_token_ok(s: &str) -> bool {
    if s.len() > MAX_TOKEN_LEN {
        return false;
    }
    let Some((prefix, tail)) = s.rsplit_once('_') else {
        return false;
    };
    if !reference_prefix_ok(prefix) || tail.len() != BODY_LEN + CHECKSUM_LEN {
        return false;
    }
    if !tail.bytes().all(|b| ALPHABET.contains(&b)) {
        return false;
    }
    let (body, check) = tail.as_bytes().split_at(BODY_LEN);
    check == base62_6(crc32(body)).as_slice()
}

/// Maps arbitrary bytes onto a valid prefix, so the generate path runs on every input.
fn prefix_from(data: &[u8]) -> String {
    const REST: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789_";
    let mut p = String::new();
    p.push(char::from(b'a' + data.first().copied().unwrap_or(0) % 26));
    for &b in data.iter().skip(1).take(15) {
        let c = REST[usize::from(b) % REST.len()];
        if c == b'_' && p.ends_with('_') {
            continue;
        }
        p.push(char::from(c));
    }
    while p.ends_with('_') {
        p.pop();
    }
    p
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let s: &str = &text;

    let parsed = parse_token(s);
    assert_eq!(
        parsed.is_ok(),
        reference_token_ok(s),
        "parse_token and the reference disagree on {s:?}"
    );
    if let Ok(hash) = parsed {
        // The checksum verifies, the hash is the SHA-256 of the whole token, and parsing
        // is deterministic.
        let (prefix, tail) = s.rsplit_once('_').expect("a valid token has a separator");
        let (body, check) = tail.as_bytes().split_at(BODY_LEN);
        assert_eq!(check, base62_6(crc32(body)).as_slice());
        let digest: [u8; 32] = Sha256::digest(s.as_bytes()).into();
        assert_eq!(hash.as_bytes(), &digest);
        assert!(parse_token(s) == Ok(hash), "re-parse differs for {s:?}");
        // Any prefix fitting the grammar verifies: swapping it keeps the token valid.
        assert!(prefix.parse::<KeyPrefix>().is_ok());
        let other = format!("kg_test_{tail}");
        assert!(parse_token(&other).is_ok(), "{other:?}");
        // And trailing garbage never does.
        assert!(parse_token(&format!("{s}0")).is_err());
    }

    // The prefix grammar, on the input as given and on its first 1..=20 characters.
    for end in (1..=20).chain([s.len()]) {
        if let Some(p) = s.get(..end) {
            assert_eq!(
                p.parse::<KeyPrefix>().is_ok(),
                reference_prefix_ok(p),
                "KeyPrefix and the reference disagree on {p:?}"
            );
        }
    }

    // generate → parse round trip under an input-derived prefix.
    let raw = prefix_from(data);
    assert!(reference_prefix_ok(&raw), "{raw:?}");
    let prefix: KeyPrefix = raw.parse().expect("a valid prefix is accepted");
    let secret = Secret::generate(&prefix);
    let exposed = secret.expose();
    assert_eq!(exposed.len(), raw.len() + 1 + BODY_LEN + CHECKSUM_LEN);
    assert!(exposed.starts_with(&format!("{raw}_")));
    assert!(reference_token_ok(exposed), "generated {exposed:?}");
    assert!(parse_token(exposed) == Ok(secret.hash()));
    assert_eq!(secret.key_prefix(), exposed[..KEY_PREFIX_DISPLAY_LEN]);
    assert_eq!(secret.last_four(), exposed[exposed.len() - LAST_FOUR_LEN..]);
});
