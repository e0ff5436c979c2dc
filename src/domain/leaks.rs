//! Leak reports from GitHub's secret scanning partner program:
//! the public keys GitHub signs with, the signature check, and the report's
//! body. Pure parsing and checking; `services::keys` revokes what a report
//! names and `api::http::leaks` speaks HTTP.
//!
//! A report is trusted only if its raw body carries a valid ECDSA P-256/SHA-256
//! signature by one of the configured keys (GitHub publishes them; keygate
//! never fetches them itself, so a compromised network cannot swap them).

use std::{collections::HashMap, fmt, path::Path, str::FromStr};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use p256::ecdsa::{Signature, VerifyingKey, signature::Verifier};
use serde::Deserialize;

/// Largest report body accepted: GitHub batches a few hundred tokens at most.
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// Most tokens one report may name.
pub const MAX_TOKENS: usize = 10_000;
/// The actor of every change a leak report makes, in events and logs.
pub const ACTOR: &str = "secret-scanning";
/// The actor of a revocation by an anonymous report (`POST /v1/leaks/report`).
pub const PUBLIC_ACTOR: &str = "public-report";

/// A body that is not the expected JSON, said without serde's own message:
/// that repeats a string found in the wrong place ("invalid type: string
/// \"kg_live_…\""), and a report's strings may be live keys.
fn unreadable(e: &serde_json::Error, expected: &str) -> ReportError {
    let what = match e.classify() {
        serde_json::error::Category::Data => "JSON of another shape",
        _ => "not JSON",
    };
    ReportError::Format(format!(
        "{what} at line {}, column {}: expected {expected}",
        e.line(),
        e.column()
    ))
}

/// The most tokens an anonymous report may name.
pub const MAX_PUBLIC_TOKENS: usize = 100;

/// The body of an anonymous report: `{"tokens": ["…", …]}`, at most
/// [`MAX_PUBLIC_TOKENS`] tokens. Its error never repeats the input (it may
/// hold keys).
pub fn parse_public_report(body: &[u8]) -> Result<Vec<ReportedToken>, ReportError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        tokens: Vec<String>,
    }
    let body: Body =
        serde_json::from_slice(body).map_err(|e| unreadable(&e, r#"{"tokens": ["…"]}"#))?;
    if body.tokens.len() > MAX_PUBLIC_TOKENS {
        return Err(ReportError::Format(format!(
            "a report may name at most {MAX_PUBLIC_TOKENS} tokens, got {}",
            body.tokens.len()
        )));
    }
    Ok(body
        .tokens
        .into_iter()
        .map(|token| ReportedToken {
            token,
            kind: String::new(),
            url: String::new(),
            source: String::new(),
        })
        .collect())
}
/// The `token_type` keygate registers with GitHub and answers with.
pub const TOKEN_TYPE: &str = "keygate_api_key";

#[derive(Debug, thiserror::Error)]
pub enum KeysFileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not GitHub's public keys JSON ({detail})")]
    Format { path: String, detail: String },
    #[error("{path}: key {id:?} is not a PEM ECDSA P-256 public key")]
    Key { path: String, id: String },
    #[error("{path}: no public keys")]
    Empty { path: String },
}

/// Why a report's signature is refused. The HTTP answer is 401 whichever it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error(
        "the Github-Public-Key-Identifier and Github-Public-Key-Signature headers are required"
    )]
    Missing,
    #[error("the signing key is not one of the configured keys")]
    UnknownKey,
    #[error("the signature is not base64 DER ECDSA")]
    Malformed,
    #[error("the signature does not match the body")]
    Invalid,
}

impl SignatureError {
    /// The metric label of this refusal.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::UnknownKey => "unknown_key",
            Self::Malformed => "malformed",
            Self::Invalid => "invalid",
        }
    }
}

#[derive(Deserialize)]
struct KeysFile {
    public_keys: Vec<PublicKeyEntry>,
}

#[derive(Deserialize)]
struct PublicKeyEntry {
    key_identifier: String,
    key: String,
    // `is_current` is GitHub's hint for which key it signs with today; a
    // report signed by any listed key is accepted, so that rotation on
    // GitHub's side needs no change here until the old key is removed.
}

/// The keys of `--leak-report-keys`, by identifier.
#[derive(Clone)]
pub struct LeakKeys {
    keys: HashMap<String, VerifyingKey>,
}

impl fmt::Debug for LeakKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeakKeys")
            .field("identifiers", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl LeakKeys {
    pub fn load(path: &Path) -> Result<Self, KeysFileError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| KeysFileError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text, &shown)
    }

    /// GitHub's `{"public_keys": [{key_identifier, key, is_current}]}`.
    pub fn parse(json: &str, path: &str) -> Result<Self, KeysFileError> {
        let file: KeysFile = serde_json::from_str(json).map_err(|e| KeysFileError::Format {
            path: path.into(),
            detail: e.to_string(),
        })?;
        let mut keys = HashMap::new();
        for entry in file.public_keys {
            let key =
                VerifyingKey::from_str(&rewrapped(&entry.key)).map_err(|_| KeysFileError::Key {
                    path: path.into(),
                    id: entry.key_identifier.clone(),
                })?;
            keys.insert(entry.key_identifier, key);
        }
        if keys.is_empty() {
            return Err(KeysFileError::Empty { path: path.into() });
        }
        Ok(Self { keys })
    }

    /// Checks the signature GitHub sends in its headers over the raw body.
    pub fn verify(
        &self,
        identifier: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
    ) -> Result<(), SignatureError> {
        let (Some(identifier), Some(signature)) = (identifier, signature) else {
            return Err(SignatureError::Missing);
        };
        let key = self
            .keys
            .get(identifier)
            .ok_or(SignatureError::UnknownKey)?;
        let der = STANDARD
            .decode(signature.trim())
            .map_err(|_| SignatureError::Malformed)?;
        let signature = Signature::from_der(&der).map_err(|_| SignatureError::Malformed)?;
        key.verify(body, &signature)
            .map_err(|_| SignatureError::Invalid)
    }
}

/// A PEM block with its base64 re-wrapped at 64 columns: the PEM parser is
/// strict (RFC 7468), and a key pasted by hand often is not.
fn rewrapped(pem: &str) -> String {
    const BEGIN: &str = "-----BEGIN PUBLIC KEY-----";
    const END: &str = "-----END PUBLIC KEY-----";
    let Some(inner) = pem
        .trim()
        .strip_prefix(BEGIN)
        .and_then(|rest| rest.strip_suffix(END))
    else {
        return pem.to_owned();
    };
    let b64: String = inner.chars().filter(|c| !c.is_whitespace()).collect();
    let mut out = String::from(BEGIN);
    for line in b64.as_bytes().chunks(64) {
        out.push('\n');
        out.push_str(&String::from_utf8_lossy(line));
    }
    out.push('\n');
    out.push_str(END);
    out.push('\n');
    out
}

/// One token of a report. `Debug` never shows the token: it may be a live key.
#[derive(Deserialize)]
pub struct ReportedToken {
    pub token: String,
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub url: String,
    #[serde(default)]
    pub source: String,
}

impl fmt::Debug for ReportedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReportedToken")
            .field("token", &"<redacted>")
            .field("type", &self.kind)
            .field("url", &self.url)
            .field("source", &self.source)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("the body is not a JSON array of {{token, type, url, source}}: {0}")]
    Format(String),
    #[error("a report may name at most {MAX_TOKENS} tokens")]
    TooMany,
}

/// A report's body: a JSON array of `{token, type, url, source}`.
pub fn parse_report(body: &[u8]) -> Result<Vec<ReportedToken>, ReportError> {
    let tokens: Vec<ReportedToken> = serde_json::from_slice(body)
        .map_err(|e| unreadable(&e, r#"[{"token": "…", "type": "…", "url": "…"}]"#))?;
    if tokens.len() > MAX_TOKENS {
        return Err(ReportError::TooMany);
    }
    Ok(tokens)
}

/// The answer for one reported token.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Verdict {
    /// Hex SHA-256 of the token, so GitHub can match the answer without us
    /// repeating the secret.
    pub token_hash: String,
    pub token_type: &'static str,
    pub label: Label,
}

/// How many of a report's verdicts revoked a key, for its log line.
pub fn revoked(verdicts: &[Verdict]) -> usize {
    verdicts
        .iter()
        .filter(|v| v.label == Label::TruePositive)
        .count()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Label {
    /// A keygate key that was not revoked; it is revoked now.
    TruePositive,
    /// Not a keygate key, no such key, or a key already revoked.
    FalsePositive,
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::{
        ecdsa::{SigningKey, signature::Signer},
        pkcs8::{EncodePublicKey, LineEnding},
    };

    fn signing_key(seed: u8) -> SigningKey {
        SigningKey::from_slice(&[seed; 32]).expect("a valid scalar")
    }

    fn keys_file(entries: &[(&str, &SigningKey)]) -> String {
        let keys: Vec<serde_json::Value> = entries
            .iter()
            .map(|(id, k)| {
                serde_json::json!({
                    "key_identifier": id,
                    "key": k.verifying_key().to_public_key_pem(LineEnding::LF).expect("pem"),
                    "is_current": true,
                })
            })
            .collect();
        serde_json::json!({ "public_keys": keys }).to_string()
    }

    fn sign(key: &SigningKey, body: &[u8]) -> String {
        let signature: Signature = key.sign(body);
        STANDARD.encode(signature.to_der().as_bytes())
    }

    #[test]
    fn only_a_configured_key_signing_this_very_body_is_accepted() {
        let (github, other) = (signing_key(7), signing_key(9));
        let keys = LeakKeys::parse(&keys_file(&[("k1", &github)]), "keys.json").expect("keys");
        let body = br#"[{"token":"x","type":"keygate_api_key","url":"u","source":"content"}]"#;
        let good = sign(&github, body);
        assert_eq!(keys.verify(Some("k1"), Some(&good), body), Ok(()));
        assert_eq!(
            keys.verify(Some("k1"), Some(&good), b"[]"),
            Err(SignatureError::Invalid),
            "a tampered body"
        );
        assert_eq!(
            keys.verify(Some("k1"), Some(&sign(&other, body)), body),
            Err(SignatureError::Invalid),
            "another key's signature"
        );
        assert_eq!(
            keys.verify(Some("k2"), Some(&good), body),
            Err(SignatureError::UnknownKey)
        );
        assert_eq!(
            keys.verify(None, Some(&good), body),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            keys.verify(Some("k1"), None, body),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            keys.verify(Some("k1"), Some("not base64!"), body),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            keys.verify(Some("k1"), Some("AAAA"), body),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn bad_key_files_are_refused_naming_the_problem() {
        let k = signing_key(3);
        assert!(matches!(
            LeakKeys::parse("{}", "f"),
            Err(KeysFileError::Format { .. })
        ));
        assert!(matches!(
            LeakKeys::parse(r#"{"public_keys": []}"#, "f"),
            Err(KeysFileError::Empty { .. })
        ));
        let bad = r#"{"public_keys": [{"key_identifier": "x", "key": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----", "is_current": true}]}"#;
        assert!(
            matches!(LeakKeys::parse(bad, "f"), Err(KeysFileError::Key { id, .. }) if id == "x")
        );
        assert!(LeakKeys::parse(&keys_file(&[("a", &k), ("b", &signing_key(4))]), "f").is_ok());
        // A key pasted on one line, with spaces, still parses.
        let pem = k
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .expect("pem");
        let flat = pem.replace('\n', " ");
        let json = serde_json::json!({"public_keys": [{"key_identifier": "x", "key": flat}]});
        assert!(LeakKeys::parse(&json.to_string(), "f").is_ok());
    }

    #[test]
    fn reports_parse_and_never_show_their_tokens() {
        let tokens = parse_report(
            br#"[{"token":"kg_live_secret","type":"keygate_api_key","url":"https://x","source":"content"}]"#,
        )
        .expect("report");
        assert_eq!(tokens.len(), 1);
        assert!(!format!("{tokens:?}").contains("secret"));
        // A string in the wrong place is where serde's own message would
        // repeat it.
        for bad in [
            &b"{}"[..],
            b"[{\"type\":\"x\"}]",
            b"not json",
            b"[1]",
            b"[\"kg_live_secret\"]",
            b"[{\"token\": 5, \"type\": \"kg_live_secret\"}]",
        ] {
            let e = parse_report(bad).expect_err("refused");
            assert!(!e.to_string().contains("kg_live"), "{e}");
        }
        for bad in [
            &b"[\"kg_live_secret\"]"[..],
            b"{\"tokens\": \"kg_live_secret\"}",
            b"{\"tokens\": [1, \"kg_live_secret\"]}",
            b"{\"kg_live_secret\": []}",
        ] {
            let e = parse_public_report(bad).expect_err("refused");
            assert!(!e.to_string().contains("kg_live"), "{e}");
        }
        let many = format!("[{}]", vec![r#"{"token":"t"}"#; MAX_TOKENS + 1].join(","));
        assert_eq!(
            parse_report(many.as_bytes()).err(),
            Some(ReportError::TooMany)
        );
        let v = Verdict {
            token_hash: "ab".into(),
            token_type: TOKEN_TYPE,
            label: Label::TruePositive,
        };
        assert_eq!(
            serde_json::to_string(&v).expect("json"),
            r#"{"token_hash":"ab","token_type":"keygate_api_key","label":"true_positive"}"#
        );
    }
}
