//! Page sizes, opaque page tokens, and the one rule for cutting a page: the
//! store is asked for one row more than the page, and that row says whether a
//! next page exists.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

pub const DEFAULT_PAGE_SIZE: u32 = 50;
pub const MAX_PAGE_SIZE: u32 = 1000;

/// 0 means the default; larger than the maximum is served as the maximum, as
/// API guidelines expect, rather than refused.
pub fn page_size(requested: i32) -> Result<u32, &'static str> {
    match u32::try_from(requested) {
        Ok(0) => Ok(DEFAULT_PAGE_SIZE),
        Ok(n) => Ok(n.min(MAX_PAGE_SIZE)),
        Err(_) => Err("must not be negative"),
    }
}

pub const BAD_TOKEN: &str = "is not a page token returned by this list";

/// One page of a list and the token of the next (empty on the last page).
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_page_token: String,
}

impl<T> Page<T> {
    /// Cuts `rows`, read with a limit of `page_size + 1`, to a page; the extra
    /// row, when there is one, means another page follows, which starts after
    /// the page's last item (its position given by `position`).
    pub fn cut(
        mut rows: Vec<T>,
        page_size: u32,
        kind: TokenKind,
        position: impl Fn(&T) -> String,
    ) -> Self {
        let size = page_size as usize;
        let next_page_token = if rows.len() > size {
            rows.truncate(size);
            rows.last()
                .map(|last| encode(kind, &position(last)))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Self {
            items: rows,
            next_page_token,
        }
    }
}

/// A token names the list it belongs to, so one list's token is refused by the other.
#[derive(Debug, Clone, Copy)]
pub enum TokenKind {
    Keys,
    Events,
    Identities,
}

impl TokenKind {
    fn tag(self) -> &'static str {
        match self {
            Self::Keys => "keys/v1:",
            // v2: since event ids count per organization, a v1 token (a global
            // id) would start the page at the wrong place; it is refused instead.
            Self::Events => "events/v2:",
            Self::Identities => "identities/v1:",
        }
    }
}

pub fn encode(kind: TokenKind, position: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}{position}", kind.tag()))
}

/// The position a token carries; `None` for the first page; an error for
/// anything keygate did not write.
pub fn decode(kind: TokenKind, token: &str) -> Result<Option<String>, &'static str> {
    const BAD: &str = BAD_TOKEN;
    if token.is_empty() {
        return Ok(None);
    }
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| BAD)?;
    let text = String::from_utf8(bytes).map_err(|_| BAD)?;
    text.strip_prefix(kind.tag())
        .map(|p| Some(p.to_owned()))
        .ok_or(BAD)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_sizes() {
        assert_eq!(page_size(0), Ok(50));
        assert_eq!(page_size(7), Ok(7));
        assert_eq!(page_size(1000), Ok(1000));
        assert_eq!(page_size(5000), Ok(1000));
        assert!(page_size(-1).is_err());
    }

    #[test]
    fn tokens_round_trip_and_are_bound_to_their_list() {
        let t = encode(TokenKind::Keys, "abc");
        assert_eq!(decode(TokenKind::Keys, &t), Ok(Some("abc".into())));
        assert!(decode(TokenKind::Events, &t).is_err());
        assert_eq!(decode(TokenKind::Keys, ""), Ok(None));
        for bad in ["!!!", "a", "Zm9v"] {
            assert!(decode(TokenKind::Keys, bad).is_err(), "{bad}");
        }
    }
}
