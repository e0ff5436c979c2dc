//! API-key secrets: generation, the offline-checkable token format, and hashing.
//!
//! A secret is `<prefix>_<body><checksum>`:
//! - `prefix` matches `[a-z][a-z0-9]*(_[a-z0-9]+)*` and is at most 16 characters;
//! - `body` is 43 uniformly random base62 characters (about 256 bits) from the OS CSPRNG;
//! - `checksum` is the CRC-32 (IEEE, as zlib computes it) of the body's ASCII bytes, written
//!   in base62, most significant digit first, left-padded with `0` to 6 characters.
//!
//! The base62 alphabet in digit order is `0-9`, `A-Z`, `a-z`.
//!
//! This format is a published contract: secret scanners validate keys offline with it, so
//! none of these constants may change without a new prefix scheme.
//!
//! Size: about 300 lines of code; the rest are its unit tests, with test vectors
//! computed independently.

use std::fmt;
use std::str::FromStr;

use rand::TryRngCore;
use rand::rngs::OsRng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Prefix used when the deployment configures none.
pub const DEFAULT_KEY_PREFIX: &str = "kg_live";
/// Longest accepted prefix, in characters.
pub const MAX_PREFIX_LEN: usize = 16;
/// Number of random base62 characters in a secret's body.
pub const BODY_LEN: usize = 43;
/// Number of base62 characters in a secret's checksum.
pub const CHECKSUM_LEN: usize = 6;
/// Longest presented token that is even looked at; longer ones are malformed outright.
pub const MAX_TOKEN_LEN: usize = 256;
/// Number of leading characters of a secret kept in clear as its display prefix.
pub const KEY_PREFIX_DISPLAY_LEN: usize = 12;
/// Number of trailing characters of a secret kept in clear to help users recognise it.
pub const LAST_FOUR_LEN: usize = 4;

/// The base62 digits, in digit order.
pub const BASE62_ALPHABET: &[u8; 62] =
    b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Length of everything after the prefix's separating `_`.
const TAIL_LEN: usize = BODY_LEN + CHECKSUM_LEN;

/// Largest multiple of 62 that fits in a byte: bytes at or above it are rejected so that
/// `byte % 62` is exactly uniform.
const REJECT_FROM: u8 = 62 * 4;

/// A validated deployment-wide key prefix, such as `kg_live`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPrefix(String);

/// Returned when a configured key prefix does not fit the grammar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("key prefix must match [a-z][a-z0-9]*(_[a-z0-9]+)* and be at most 16 characters")]
pub struct KeyPrefixError;

impl KeyPrefix {
    /// The prefix as configured, without the trailing `_` separator.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for KeyPrefix {
    type Err = KeyPrefixError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if is_valid_prefix(s.as_bytes()) {
            Ok(KeyPrefix(s.to_owned()))
        } else {
            Err(KeyPrefixError)
        }
    }
}

impl Default for KeyPrefix {
    fn default() -> Self {
        KeyPrefix(DEFAULT_KEY_PREFIX.to_owned())
    }
}

impl fmt::Display for KeyPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A plaintext secret. It exists only to be returned once by `CreateKey`.
///
/// Deliberately not `Clone` and without `Display`, so it cannot be copied around or
/// formatted into a log by accident; [`Secret::expose`] is the one way to read it.
pub struct Secret(String);

impl Secret {
    /// Generates a fresh secret under `prefix`, reading the OS CSPRNG.
    ///
    /// # Panics
    ///
    /// If the operating system's random number generator fails: there is no safe
    /// fallback for key material, and on supported platforms it cannot fail once the
    /// system has booted.
    pub fn generate(prefix: &KeyPrefix) -> Secret {
        // UnwrapErr's error type is Infallible: it panics inside rand instead, as documented.
        match Self::generate_with(prefix, &mut OsRng.unwrap_err()) {
            Ok(secret) => secret,
            Err(never) => match never {},
        }
    }

    fn generate_with<R: TryRngCore>(prefix: &KeyPrefix, rng: &mut R) -> Result<Secret, R::Error> {
        let mut body = [0u8; BODY_LEN];
        fill_base62(rng, &mut body)?;
        let check = checksum(&body);
        let mut s = String::with_capacity(prefix.0.len() + 1 + TAIL_LEN);
        s.push_str(&prefix.0);
        s.push('_');
        // Both arrays hold base62 digits only, so every byte is an ASCII char.
        s.extend(body.iter().chain(check.iter()).map(|&b| char::from(b)));
        Ok(Secret(s))
    }

    /// The plaintext secret.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Consumes the secret, yielding the plaintext.
    pub fn into_exposed(self) -> String {
        self.0
    }

    /// The SHA-256 of the whole secret, as stored.
    pub fn hash(&self) -> SecretHash {
        hash_str(&self.0)
    }

    /// The first 12 characters, safe to store and show to identify the key.
    pub fn key_prefix(&self) -> String {
        // Secrets are ASCII and at least 51 characters long, so this never splits a char.
        self.0[..KEY_PREFIX_DISPLAY_LEN.min(self.0.len())].to_owned()
    }

    /// The last 4 characters, safe to store and show to identify the key.
    pub fn last_four(&self) -> String {
        self.0[self.0.len().saturating_sub(LAST_FOUR_LEN)..].to_owned()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A presented key (or anything that may be one) in `Debug`: whether there
/// is one, never what it is.
pub struct Redacted<'a>(pub &'a str);

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "<redacted>"
        })
    }
}

/// SHA-256 of a whole secret: what the database stores and the cache is keyed by.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SecretHash(pub [u8; 32]);

impl SecretHash {
    /// The raw 32 digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Rebuilds a hash from stored bytes; `None` unless `b` is exactly 32 bytes long.
    pub fn from_slice(b: &[u8]) -> Option<SecretHash> {
        <[u8; 32]>::try_from(b).ok().map(SecretHash)
    }

    /// The SHA-256 of any string, key-shaped or not (leak reports answer with
    /// the hash of every token they name).
    pub fn of(s: &str) -> SecretHash {
        hash_str(s)
    }

    /// Lower-case hex, as `sha256sum` prints it.
    pub fn to_hex(&self) -> String {
        use fmt::Write as _;
        self.0.iter().fold(String::with_capacity(64), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
    }
}

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A full hash in a log would let anyone holding the log match it against a leaked
        // database row; four bytes are enough to correlate log lines.
        let [a, b, c, d, ..] = self.0;
        write!(f, "SecretHash({a:02x}{b:02x}{c:02x}{d:02x}…)")
    }
}

impl ConstantTimeEq for SecretHash {
    fn ct_eq(&self, other: &Self) -> subtle::Choice {
        self.0.ct_eq(&other.0)
    }
}

/// A presented token that is not a well-formed key. The reason is never shown to callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed key")]
pub struct Malformed;

/// Whether `value` has the shape of an API key, checksum included. The one
/// test behind "a secret must never be stored, logged or used as a credential
/// here": ids, tokens and names of that shape are refused wherever they arrive.
pub fn is_secret_shaped(value: &str) -> bool {
    parse_token(value).is_ok()
}

/// Whether any word of `value` has the shape of an API key: a caller who pasted a
/// secret into a name or a hostname would otherwise have it stored.
pub fn contains_secret(value: &str) -> bool {
    value
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .any(is_secret_shaped)
}

/// Validates shape and checksum of a presented token without allocating, then hashes it.
///
/// Any prefix fitting the grammar is accepted, not only the configured one, so keys stay
/// valid across a prefix change; the lookup by hash decides whether the key exists.
pub fn parse_token(token: &str) -> Result<SecretHash, Malformed> {
    let bytes = token.as_bytes();
    let len = bytes.len();
    if !(TAIL_LEN + 2..=MAX_TOKEN_LEN).contains(&len) {
        return Err(Malformed);
    }
    // The tail contains no '_' (not a base62 digit), so the last '_' must sit exactly here.
    let sep = len - TAIL_LEN - 1;
    if bytes[sep] != b'_' || !is_valid_prefix(&bytes[..sep]) {
        return Err(Malformed);
    }
    let (body, check) = bytes[sep + 1..].split_at(BODY_LEN);
    // The base62 alphabet is exactly ASCII's alphanumerics. Folded without an
    // early exit, the 43 checks compile to a few vector instructions instead
    // of a branch per byte: this runs on every verification.
    if !body
        .iter()
        .fold(true, |ok, b| ok & b.is_ascii_alphanumeric())
    {
        return Err(Malformed);
    }
    let mut presented: u64 = 0;
    for &b in check {
        let digit = base62_value(b).ok_or(Malformed)?;
        presented = presented * 62 + u64::from(digit);
    }
    // Six base62 digits hold less than 62^6 < 2^36, so the u64 cannot overflow, and the
    // padded encoding is unique: comparing values is comparing encodings.
    if presented != u64::from(crc32fast::hash(body)) {
        return Err(Malformed);
    }
    Ok(hash_str(token))
}

/// CRC-32 (IEEE) of `body`, in base62, left-padded with `0` to 6 characters.
pub fn checksum(body: &[u8]) -> [u8; CHECKSUM_LEN] {
    encode_base62_padded(crc32fast::hash(body))
}

/// `n` in base62, most significant digit first, left-padded with `0` to 6 characters.
///
/// Six digits always suffice: `u32::MAX` is `4gfFC3`.
pub fn encode_base62_padded(mut n: u32) -> [u8; CHECKSUM_LEN] {
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62_ALPHABET[(n % 62) as usize];
        n /= 62;
    }
    out
}

fn hash_str(s: &str) -> SecretHash {
    SecretHash(Sha256::digest(s.as_bytes()).into())
}

fn base62_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'Z' => Some(b - b'A' + 10),
        b'a'..=b'z' => Some(b - b'a' + 36),
        _ => None,
    }
}

/// `[a-z][a-z0-9]*(_[a-z0-9]+)*`, at most 16 bytes.
fn is_valid_prefix(p: &[u8]) -> bool {
    let Some((&first, rest)) = p.split_first() else {
        return false;
    };
    if p.len() > MAX_PREFIX_LEN || !first.is_ascii_lowercase() {
        return false;
    }
    let mut prev = first;
    for &b in rest {
        let ok = match b {
            b'a'..=b'z' | b'0'..=b'9' => true,
            b'_' => prev != b'_',
            _ => false,
        };
        if !ok {
            return false;
        }
        prev = b;
    }
    prev != b'_'
}

/// Fills `out` with uniformly random base62 digits by rejection sampling random bytes.
fn fill_base62<R: TryRngCore>(rng: &mut R, out: &mut [u8]) -> Result<(), R::Error> {
    // One batch usually suffices: 64 bytes yield on average 62 accepted digits (248/256).
    let mut buf = [0u8; 64];
    let mut filled = 0;
    while filled < out.len() {
        rng.try_fill_bytes(&mut buf)?;
        for &b in &buf {
            if b < REJECT_FROM {
                out[filled] = BASE62_ALPHABET[usize::from(b % 62)];
                filled += 1;
                if filled == out.len() {
                    break;
                }
            }
        }
    }
    Ok(())
}

/// A flag's value that is or may hold a secret: a token, the webhook secret,
/// a URL with a password or a token in its query. Its `Debug` shows none of
/// it (a URL as scheme, host and path; anything else not at all), so the
/// parsed flags, or anything holding them, print no secret. [`Sensitive::expose`]
/// is the one way to the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Sensitive(String);

impl Sensitive {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for Sensitive {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl From<&str> for Sensitive {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl std::fmt::Debug for Sensitive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match url::Url::parse(&self.0) {
            Ok(u) if u.has_host() || u.scheme() == "sqlite" => {
                let credentials = if u.username().is_empty() && u.password().is_none() {
                    ""
                } else {
                    "***@"
                };
                write!(
                    f,
                    "{}://{credentials}{}{}{}",
                    u.scheme(),
                    u.host_str().unwrap_or_default(),
                    u.port().map(|p| format!(":{p}")).unwrap_or_default(),
                    u.path()
                )
            }
            _ => f.write_str("<redacted>"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Vectors computed independently in Python 3:
    //   A = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    //   def b62(n, w=6):
    //       s = ""
    //       while n: n, r = divmod(n, 62); s = A[r] + s
    //       return s.rjust(w, "0")
    //   b62(zlib.crc32(body.encode())); hashlib.sha256(s.encode()).hexdigest()
    const ALPHA_BODY: &str = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefg";
    const VALID_LIVE: &str = "kg_live_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA0DofJ8";
    const VALID_LIVE_SHA256: &str =
        "31e1500886845c96d8daf924cda3823c06797d7f1236c4f099e69a11c272cea0";
    const VALID_TEST: &str = "kg_test_0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefg37cCQ0";
    const VALID_TEST_SHA256: &str =
        "3b6b013a433a589acdbb1c10e3fc989d7c4839bbed1a4cacc8d495d411757945";

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn tail(body: &str) -> String {
        let check = checksum(body.as_bytes());
        format!(
            "{body}{}",
            std::str::from_utf8(&check).expect("base62 is ASCII")
        )
    }

    /// Replays fixed bytes, to drive the rejection sampler deterministically.
    struct Replay(Vec<u8>, usize);

    impl rand::RngCore for Replay {
        fn next_u32(&mut self) -> u32 {
            unimplemented!("the sampler only fills bytes")
        }
        fn next_u64(&mut self) -> u64 {
            unimplemented!("the sampler only fills bytes")
        }
        fn fill_bytes(&mut self, dst: &mut [u8]) {
            for d in dst {
                *d = self.0[self.1 % self.0.len()];
                self.1 += 1;
            }
        }
    }

    #[test]
    fn base62_vectors() {
        assert_eq!(&encode_base62_padded(0), b"000000");
        assert_eq!(&encode_base62_padded(61), b"00000z");
        assert_eq!(&encode_base62_padded(62), b"000010");
        assert_eq!(&encode_base62_padded(3843), b"0000zz");
        assert_eq!(&encode_base62_padded(3844), b"000100");
        assert_eq!(&encode_base62_padded(916_132_831), b"0zzzzz");
        assert_eq!(&encode_base62_padded(916_132_832), b"100000");
        assert_eq!(&encode_base62_padded(u32::MAX), b"4gfFC3");
    }

    #[test]
    fn alphabet_is_in_digit_order() {
        for (i, &c) in BASE62_ALPHABET.iter().enumerate() {
            assert_eq!(base62_value(c), Some(i as u8));
        }
        assert_eq!(BASE62_ALPHABET[10], b'A');
        assert_eq!(BASE62_ALPHABET[36], b'a');
        assert_eq!(BASE62_ALPHABET[61], b'z');
    }

    #[test]
    fn checksum_vectors() {
        // zlib.crc32(b"123456789") == 0xcbf43926, the CRC-32/ISO-HDLC check value.
        assert_eq!(crc32fast::hash(b"123456789"), 0xcbf4_3926);
        assert_eq!(&checksum(b"123456789"), b"3jZRME");
        // crc 0x0c2b5986
        assert_eq!(&checksum("A".repeat(43).as_bytes()), b"0DofJ8");
        // crc 0xaa866f5c
        assert_eq!(&checksum(ALPHA_BODY.as_bytes()), b"37cCQ0");
        // crc 0x1b329c2e
        assert_eq!(&checksum("z".repeat(43).as_bytes()), b"0UsatS");
        // crc 0x7849568f
        assert_eq!(&checksum("0".repeat(43).as_bytes()), b"2CZclj");
    }

    #[test]
    fn sha256_vectors() {
        assert_eq!(
            hex(hash_str("").as_bytes()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex(hash_str("abc").as_bytes()),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn fixed_tokens_parse_to_known_hashes() {
        let live = parse_token(VALID_LIVE).expect("fixed live vector is valid");
        assert_eq!(hex(live.as_bytes()), VALID_LIVE_SHA256);
        // A prefix other than the default is accepted as long as it fits the grammar.
        let test = parse_token(VALID_TEST).expect("fixed test vector is valid");
        assert_eq!(hex(test.as_bytes()), VALID_TEST_SHA256);
    }

    #[test]
    fn generated_secret_has_the_contract_shape() {
        let prefix = KeyPrefix::default();
        let secret = Secret::generate(&prefix);
        let s = secret.expose();
        assert_eq!(s.len(), prefix.as_str().len() + 1 + 49);
        let tail = s.strip_prefix("kg_live_").expect("starts with the prefix");
        assert!(tail.bytes().all(|b| BASE62_ALPHABET.contains(&b)));
        let (body, check) = tail.split_at(BODY_LEN);
        assert_eq!(check.as_bytes(), &checksum(body.as_bytes()));
        assert_eq!(parse_token(s), Ok(secret.hash()));

        let prefix: KeyPrefix = "acme_2".parse().expect("valid prefix");
        let secret = Secret::generate(&prefix);
        assert!(secret.expose().starts_with("acme_2_"));
        assert_eq!(secret.expose().len(), "acme_2_".len() + 49);
        assert_eq!(parse_token(secret.expose()), Ok(secret.hash()));
    }

    #[test]
    fn generated_secrets_differ() {
        let prefix = KeyPrefix::default();
        let a = Secret::generate(&prefix);
        let b = Secret::generate(&prefix);
        assert_ne!(a.expose(), b.expose());
        assert_ne!(a.hash(), b.hash());
    }

    #[test]
    fn generated_bodies_use_the_whole_alphabet_evenly() {
        // 2000 bodies give 86_000 digits, about 1387 per symbol with a standard deviation
        // near 37; a ±25% band is over 9 deviations wide, so this never flakes.
        let prefix = KeyPrefix::default();
        let mut counts = [0u32; 62];
        for _ in 0..2000 {
            let secret = Secret::generate(&prefix);
            let body = &secret.expose()["kg_live_".len()..][..BODY_LEN];
            for b in body.bytes() {
                let digit = base62_value(b).expect("body is base62");
                counts[usize::from(digit)] += 1;
            }
        }
        let expected = 2000.0 * 43.0 / 62.0;
        for (digit, &n) in counts.iter().enumerate() {
            let ratio = f64::from(n) / expected;
            assert!((0.75..1.25).contains(&ratio), "digit {digit}: {n}");
        }
    }

    #[test]
    fn sampler_rejects_biased_bytes() {
        // 248..=255 would favour digits 0..=7 if taken modulo 62, so they must be skipped.
        let mut rng = Replay(vec![248, 255, 0, 61, 62, 247, 250], 0);
        let mut out = [0u8; 5];
        fill_base62(&mut rng, &mut out).expect("replay is infallible");
        assert_eq!(&out, b"0z0z0");
        // A batch with nothing acceptable must lead to another read, not a short body.
        let bytes = std::iter::repeat_n(255u8, 64).chain([5]).collect();
        let mut rng = Replay(bytes, 0);
        let mut out = [0u8; 1];
        fill_base62(&mut rng, &mut out).expect("replay is infallible");
        assert_eq!(&out, b"5");
    }

    #[test]
    fn flipping_any_character_never_yields_the_same_hash() {
        let original = parse_token(VALID_LIVE).expect("valid");
        let bytes = VALID_LIVE.as_bytes();
        let sep = VALID_LIVE.len() - 50;
        for i in 0..bytes.len() {
            for replacement in BASE62_ALPHABET.iter().chain(b"_-.") {
                if *replacement == bytes[i] {
                    continue;
                }
                let mut mutated = bytes.to_vec();
                mutated[i] = *replacement;
                let mutated = String::from_utf8(mutated).expect("ASCII");
                // Only a change inside the prefix can keep the token well-formed.
                if let Ok(hash) = parse_token(&mutated) {
                    assert!(i < sep, "{mutated} accepted");
                    assert_ne!(hash, original);
                }
                // CRC-32 catches every single-byte change in the body, and a changed
                // checksum digit changes the value, so nothing after the prefix may pass.
                if i >= sep {
                    assert_eq!(parse_token(&mutated), Err(Malformed), "{mutated}");
                }
            }
        }
    }

    #[test]
    fn malformed_tokens() {
        let good_tail = tail(ALPHA_BODY);
        let cases: Vec<String> = vec![
            String::new(),
            "kg_live_".to_owned(),
            "kg_live".to_owned(),
            good_tail.clone(),
            format!("_{good_tail}"),
            format!("Kg_live_{good_tail}"),
            format!("kg__live_{good_tail}"),
            format!("kg_live__{good_tail}"),
            format!("1kg_{good_tail}"),
            format!("kg-live_{good_tail}"),
            format!("{}_{good_tail}", "a".repeat(17)),
            // One character short and one too long.
            format!("kg_live_{}", &good_tail[1..]),
            format!("kg_live_A{good_tail}"),
            // A body character outside base62.
            format!("kg_live_-{}", &good_tail[1..]),
            // Right shape, wrong checksum.
            format!("kg_live_{}000000", ALPHA_BODY),
            // Checksum digits that decode above u32::MAX.
            format!("kg_live_{}zzzzzz", ALPHA_BODY),
            // Lowercase variant of a valid checksum: base62 is case-sensitive.
            format!("kg_live_{}37ccQ0", ALPHA_BODY),
            format!("kg_live_{good_tail} "),
            format!(" kg_live_{good_tail}"),
            format!("kg_live_{good_tail}\n"),
            format!("kg_livé_{good_tail}"),
            "x".repeat(MAX_TOKEN_LEN + 1),
            format!("{}_{good_tail}", "a".repeat(300)),
        ];
        for case in &cases {
            assert_eq!(parse_token(case), Err(Malformed), "{case:?}");
        }
    }

    #[test]
    fn longest_prefix_is_accepted() {
        let token = format!("{}_{}", "a".repeat(16), tail(ALPHA_BODY));
        assert!(parse_token(&token).is_ok());
        let token = format!("a1_2_b_{}", tail(ALPHA_BODY));
        assert!(parse_token(&token).is_ok());
    }

    #[test]
    fn prefix_grammar() {
        for ok in [
            "kg_live",
            "kg_test",
            "a",
            "a1",
            "a_1",
            "kg_live_2",
            "abcdefghijklmnop",
        ] {
            let p: KeyPrefix = ok.parse().expect(ok);
            assert_eq!(p.as_str(), ok);
        }
        for bad in [
            "",
            "Kg_live",
            "kg__live",
            "kg_live_",
            "_x",
            "1kg",
            "kg-live",
            "kg live",
            "abcdefghijklmnopq",
            "kg_é",
        ] {
            assert_eq!(bad.parse::<KeyPrefix>(), Err(KeyPrefixError), "{bad:?}");
        }
        assert_eq!(KeyPrefix::default().as_str(), DEFAULT_KEY_PREFIX);
        assert!(KeyPrefixError.to_string().contains("at most 16 characters"));
    }

    #[test]
    fn secret_debug_is_redacted() {
        let secret = Secret::generate(&KeyPrefix::default());
        let debug = format!("{secret:?}");
        assert_eq!(debug, "Secret(<redacted>)");
        assert!(!debug.contains(&secret.expose()[8..]));
    }

    #[test]
    fn secret_display_fragments() {
        let secret = Secret(VALID_LIVE.to_owned());
        assert_eq!(secret.key_prefix(), "kg_live_AAAA");
        assert_eq!(secret.last_four(), "ofJ8");
        assert_eq!(hex(secret.hash().as_bytes()), VALID_LIVE_SHA256);
        assert_eq!(secret.into_exposed(), VALID_LIVE);
    }

    #[test]
    fn secret_hash_helpers() {
        let hash = parse_token(VALID_LIVE).expect("valid");
        assert_eq!(format!("{hash:?}"), "SecretHash(31e15008…)");
        assert_eq!(SecretHash::from_slice(hash.as_bytes()), Some(hash));
        assert_eq!(SecretHash::from_slice(&[0u8; 31]), None);
        assert_eq!(SecretHash::from_slice(&[0u8; 33]), None);
        assert!(bool::from(hash.ct_eq(&hash)));
        assert!(!bool::from(hash.ct_eq(&SecretHash([0; 32]))));
    }
}
