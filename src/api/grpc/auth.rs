//! Who may call KeyAdmin: a service token, then the actor it vouches for.

use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};
use tonic::metadata::MetadataMap;

use crate::domain::Error as ApiError;
use crate::{
    domain::keys,
    domain::model::{Actor, Role, UserId},
};

/// The operator's service tokens, kept as SHA-256 digests: comparing fixed-length
/// digests in constant time, against every token without stopping at a match,
/// tells an attacker nothing about any token's length or content.
#[derive(Clone)]
pub struct AdminTokens(Vec<[u8; 32]>);

impl std::fmt::Debug for AdminTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AdminTokens({} configured)", self.0.len())
    }
}

/// A configured token that keygate refuses to use.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("admin token #{0} is empty")]
    Empty(usize),
    #[error("admin token #{0} has the shape of an API key; use a different token")]
    LooksLikeApiKey(usize),
}

impl AdminTokens {
    pub fn new<S: AsRef<str>>(tokens: &[S]) -> Result<Self, TokenError> {
        let mut digests = Vec::with_capacity(tokens.len());
        for (i, t) in tokens.iter().enumerate() {
            let t = t.as_ref().trim();
            if t.is_empty() {
                return Err(TokenError::Empty(i + 1));
            }
            if keys::is_secret_shaped(t) {
                return Err(TokenError::LooksLikeApiKey(i + 1));
            }
            digests.push(Sha256::digest(t.as_bytes()).into());
        }
        Ok(Self(digests))
    }

    /// A fresh random token for a first run without configuration: 64 hex
    /// characters, which never has the shape of an API key.
    pub fn generate() -> String {
        let mut bytes = [0u8; 32];
        rand::fill(&mut bytes);
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn accepts(&self, token: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut matched = Choice::from(0);
        for d in &self.0 {
            matched |= d.ct_eq(&digest);
        }
        matched.into()
    }

    /// Checks the caller's credentials and returns the actor it acts for.
    pub fn authenticate(&self, md: &MetadataMap) -> Result<Actor, ApiError> {
        let header = single(md, "authorization")
            .map_err(|()| {
                ApiError::Unauthenticated(
                    "authorization metadata sent more than once: send one `Bearer <service token>`",
                )
            })?
            .ok_or(ApiError::Unauthenticated(
                "missing authorization metadata: expected `Bearer <service token>`",
            ))?
            .to_str()
            .map_err(|_| ApiError::Unauthenticated("authorization metadata is not valid ASCII"))?;
        let token = bearer_token(header).ok_or(ApiError::Unauthenticated(
            "authorization must be `Bearer <service token>`",
        ))?;
        if keys::is_secret_shaped(token) {
            return Err(ApiError::Unauthenticated(
                "API keys are not accepted as KeyAdmin credentials: use a service token",
            ));
        }
        if !self.accepts(token) {
            return Err(ApiError::Unauthenticated("invalid service token"));
        }

        let duplicated = |field: &'static str| {
            move |()| ApiError::invalid(field, "sent more than once: send exactly one value")
        };
        let id = single(md, "x-actor-id")
            .map_err(duplicated("x-actor-id"))?
            .ok_or(ApiError::Unauthenticated("missing x-actor-id metadata"))?
            .to_str()
            .map_err(|_| ApiError::invalid("x-actor-id", "must be printable ASCII"))?;
        let id = UserId::parse(id).map_err(|e| ApiError::invalid("x-actor-id", e.to_string()))?;
        let role = match single(md, "x-actor-role")
            .map_err(duplicated("x-actor-role"))?
            .ok_or(ApiError::Unauthenticated("missing x-actor-role metadata"))?
            .to_str()
        {
            Ok("admin") => Role::Admin,
            Ok("member") => Role::Member,
            _ => {
                return Err(ApiError::invalid(
                    "x-actor-role",
                    "must be `admin` or `member`",
                ));
            }
        };
        Ok(Actor { id, role })
    }
}

/// The one value of a security-relevant header; `Err` when it was sent more than
/// once, because resolving duplicates by order would let whoever adds the second
/// value choose the outcome.
fn single<'a>(
    md: &'a MetadataMap,
    name: &str,
) -> Result<Option<&'a tonic::metadata::MetadataValue<tonic::metadata::Ascii>>, ()> {
    let mut values = md.get_all(name).iter();
    let first = values.next();
    match values.next() {
        Some(_) => Err(()),
        None => Ok(first),
    }
}

/// The credential of an `Authorization: Bearer <token>` value. The scheme name is
/// case-insensitive (RFC 7235 §2.1); one or more spaces separate it from the token.
pub fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, rest) = header.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim_matches(' ');
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_configured_tokens() {
        let tokens = AdminTokens::new(&["alpha", "beta-token"]).expect("valid tokens");
        assert!(tokens.accepts("alpha"));
        assert!(tokens.accepts("beta-token"));
        assert!(!tokens.accepts("alph"));
        assert!(!tokens.accepts("alphaa"));
        assert!(!tokens.accepts(""));
    }

    #[test]
    fn refuses_api_key_shaped_and_empty_tokens() {
        let secret = keys::Secret::generate(&keys::KeyPrefix::default());
        assert!(matches!(
            AdminTokens::new(&[secret.expose()]),
            Err(TokenError::LooksLikeApiKey(1))
        ));
        assert!(matches!(
            AdminTokens::new(&["ok", " "]),
            Err(TokenError::Empty(2))
        ));
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for header in ["Bearer t0k", "bearer t0k", "BEARER t0k", "bEaReR  t0k "] {
            assert_eq!(bearer_token(header), Some("t0k"), "{header}");
        }
        for header in ["Basic t0k", "Bearer", "Bearer ", "Bearert0k", "t0k"] {
            assert_eq!(bearer_token(header), None, "{header}");
        }
    }

    #[test]
    fn generated_tokens_are_usable() {
        let t = AdminTokens::generate();
        assert_eq!(t.len(), 64);
        assert!(AdminTokens::new(&[&t]).expect("valid").accepts(&t));
        assert_ne!(t, AdminTokens::generate());
    }
}
