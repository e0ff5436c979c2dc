//! A key's metadata: a small map the service behind keygate reads back on every
//! verification (the customer id, the plan), so that it needs no second lookup.
//! Metadata nobody can read back is worse than none, so it travels in the
//! `VerifyKey` answer, events and webhooks alike.
//!
//! Bounded so that one key cannot make every answer large: at most
//! [`MAX_ENTRIES`] entries, names of `[a-z0-9_.-]{1,64}`, [`MAX_BYTES`] of names
//! and values together. A value shaped like an API key is refused: keygate
//! stores no secret, and a caller pasting one here is a mistake to stop.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{keys::contains_secret, violations::Violations};

pub const MAX_ENTRIES: usize = 32;
/// Names and values together, in bytes.
pub const MAX_BYTES: usize = 4096;
const MAX_NAME_LEN: usize = 64;

/// Entries sorted by name (so answers and events show them in one order).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata(Box<[(Box<str>, Box<str>)]>);

fn name_ok(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
}

impl Metadata {
    /// The request's map (`field` is its name in errors: `metadata`), every bad
    /// entry named as `metadata[name]`.
    pub fn parse(field: &str, map: &BTreeMap<String, String>) -> Result<Self, Violations> {
        let mut v = Violations::default();
        if map.len() > MAX_ENTRIES {
            v.add(
                field,
                format!("at most {MAX_ENTRIES} entries, got {}", map.len()),
            );
        }
        let bytes: usize = map.iter().map(|(k, val)| k.len() + val.len()).sum();
        if bytes > MAX_BYTES {
            v.add(
                field,
                format!("at most {MAX_BYTES} bytes of names and values together, got {bytes}"),
            );
        }
        for (name, value) in map {
            // Shown only when it is safe to echo: a name that fails the grammar
            // might be a pasted secret.
            let shown = if name_ok(name) { name.as_str() } else { "…" };
            if !name_ok(name) {
                v.add(
                    format!("{field}[{shown}]"),
                    format!("entry names are 1 to {MAX_NAME_LEN} of a-z 0-9 _ . -"),
                );
            } else if contains_secret(value) {
                v.add(
                    format!("{field}[{shown}]"),
                    "looks like an API key; a secret must never be stored here",
                );
            }
        }
        v.into_result()?;
        Ok(Self(
            map.iter()
                .map(|(k, val)| (k.as_str().into(), val.as_str().into()))
                .collect(),
        ))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }

    /// About how many heap bytes the entries hold.
    pub fn heap_bytes(&self) -> usize {
        self.iter()
            .map(|(k, v)| k.len() + v.len() + 2 * std::mem::size_of::<Box<str>>())
            .sum()
    }

    /// As the proto's map.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    /// A JSON object, as stored and as events and webhooks show it.
    pub fn to_json(&self) -> Value {
        Value::Object(
            self.iter()
                .map(|(k, v)| (k.to_owned(), Value::String(v.to_owned())))
                .collect(),
        )
    }

    /// What [`Metadata::to_json`] wrote; `None` for anything else.
    pub fn from_json(s: &str) -> Option<Self> {
        let Value::Object(map) = serde_json::from_str::<Value>(s).ok()? else {
            return None;
        };
        let map: BTreeMap<String, String> = map
            .into_iter()
            .map(|(k, v)| match v {
                Value::String(v) => Some((k, v)),
                _ => None,
            })
            .collect::<Option<_>>()?;
        Self::parse("metadata", &map).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
        entries
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn fields(e: Violations) -> Vec<String> {
        e.to_vec().into_iter().map(|v| v.field).collect()
    }

    #[test]
    fn good_metadata_round_trips_through_json_in_name_order() {
        let m = Metadata::parse(
            "metadata",
            &map(&[("plan", "pro"), ("customer_id", "cus_9"), ("a.b-c", "")]),
        )
        .expect("valid");
        let names: Vec<&str> = m.iter().map(|(k, _)| k).collect();
        assert_eq!(names, ["a.b-c", "customer_id", "plan"]);
        let json = m.to_json().to_string();
        assert_eq!(json, r#"{"a.b-c":"","customer_id":"cus_9","plan":"pro"}"#);
        assert_eq!(Metadata::from_json(&json), Some(m));
        assert_eq!(Metadata::from_json(r#"{"plan": 1}"#), None);
        assert_eq!(Metadata::from_json("[]"), None);
    }

    #[test]
    fn each_bound_is_named() {
        let bad =
            |m: &[(&str, &str)]| fields(Metadata::parse("metadata", &map(m)).expect_err("bad"));
        assert_eq!(bad(&[("Plan", "x")]), ["metadata[…]"]);
        assert_eq!(bad(&[("", "x")]), ["metadata[…]"]);
        assert_eq!(bad(&[(&"n".repeat(65), "x")]), ["metadata[…]"]);
        let secret = crate::domain::keys::Secret::generate(&Default::default());
        assert_eq!(
            bad(&[("token", &format!("see {}", secret.expose()))]),
            ["metadata[token]"]
        );
        let many: Vec<(String, String)> = (0..33).map(|i| (format!("k{i}"), "v".into())).collect();
        let many: BTreeMap<String, String> = many.into_iter().collect();
        assert_eq!(
            fields(Metadata::parse("metadata", &many).expect_err("many")),
            ["metadata"]
        );
        let big = map(&[("a", &"x".repeat(MAX_BYTES))]);
        assert_eq!(
            fields(Metadata::parse("metadata", &big).expect_err("big")),
            ["metadata"]
        );
        let fits = map(&[("a", &"x".repeat(MAX_BYTES - 1))]);
        assert!(Metadata::parse("metadata", &fits).is_ok());
        let names_ok: Vec<(String, String)> =
            (0..32).map(|i| (format!("k{i}"), "v".into())).collect();
        assert!(Metadata::parse("metadata", &names_ok.into_iter().collect()).is_ok());
    }
}
