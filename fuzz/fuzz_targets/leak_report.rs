//! Leak-report bodies (`POST /v1/leaks/github`) and their signature check:
//! arbitrary bytes never panic, a parsed report never shows a token in its
//! Debug form or its error, and no signature made of the input verifies.
#![no_main]

use keygate::domain::leaks::{LeakKeys, MAX_TOKENS, SignatureError, parse_report};
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

/// One fixed public key (the P-256 generator point, whose private key is 1);
/// no input can carry a signature by it, since the fuzzer does not know how
/// to sign.
static KEYS: LazyLock<LeakKeys> = LazyLock::new(|| {
    let pem = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEaxfR8uEsQkf4vOblY6RA8ncDfYEt6zOg9KE5RdiYwpZP40Li/hp/m47n60p8D54WK84zV2sxXs7LtkBoN79R9Q==\n-----END PUBLIC KEY-----";
    let json = serde_json::json!({"public_keys": [{"key_identifier": "k", "key": pem, "is_current": true}]});
    LeakKeys::parse(&json.to_string(), "fuzz").expect("a valid key file")
});

fuzz_target!(|data: &[u8]| {
    if let Ok(tokens) = parse_report(data) {
        assert!(tokens.len() <= MAX_TOKENS);
        for t in &tokens {
            let shown = format!("{t:?}");
            // The other fields are shown as sent; only the token is withheld.
            let elsewhere = [&t.kind, &t.url, &t.source].iter().any(|f| f.contains(&t.token));
            if t.token.len() > 12 && !elsewhere {
                assert!(!shown.contains(&t.token), "a token in Debug output");
            }
        }
    } else if let Err(e) = parse_report(data) {
        let _ = e.to_string();
    }
    // Split the input into a signature header and a body.
    let cut = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let (signature, body) = data.split_at(cut);
    let signature = String::from_utf8_lossy(signature);
    let result = KEYS.verify(Some("k"), Some(&signature), body);
    assert!(
        matches!(result, Err(SignatureError::Malformed | SignatureError::Invalid)),
        "{result:?}"
    );
    assert_eq!(KEYS.verify(Some("other"), Some(&signature), body), Err(SignatureError::UnknownKey));
});
