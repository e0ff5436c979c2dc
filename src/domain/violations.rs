//! A request's bad fields, all collected before failing, so one round trip tells
//! the caller everything it must fix. What the transport makes of them (a gRPC
//! `google.rpc.BadRequest`, an HTTP body) is the transport's business.

use std::fmt;

/// At most this many violations are reported: a gRPC status travels in HTTP/2
/// trailers, which clients cap at a few KiB, so an answer must stay small however
/// much is wrong with a request.
pub const MAX_VIOLATIONS: usize = 10;
/// Longest field name or description echoed back, in characters: the one
/// truncation rule for anything a caller sent that keygate repeats.
pub const MAX_ECHO: usize = 160;

/// `s` cut to [`MAX_ECHO`] characters, with `…` when something was cut.
pub fn bounded(s: impl Into<String>) -> String {
    let s = s.into();
    match s.char_indices().nth(MAX_ECHO) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s,
    }
}

/// One bad field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub field: String,
    pub description: String,
}

/// The bad fields of one request: the first [`MAX_VIOLATIONS`], and how many more.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Violations {
    found: Vec<Violation>,
    more: usize,
}

impl Violations {
    /// Violations naming one field.
    pub fn one(field: impl Into<String>, description: impl Into<String>) -> Self {
        let mut v = Self::default();
        v.add(field, description);
        v
    }

    /// The same violations with `prefix` before each field's name, for a
    /// list parsed on its own and then placed in a larger message
    /// (`scopes[2]` becomes `policy.allowed_bot_scopes[2]`).
    pub fn prefixed(mut self, prefix: &str) -> Self {
        for v in &mut self.found {
            v.field = format!("{prefix}{}", v.field);
        }
        self
    }

    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        if self.found.len() < MAX_VIOLATIONS {
            self.found.push(Violation {
                field: bounded(field),
                description: bounded(description),
            });
        } else {
            self.more += 1;
        }
    }

    /// Adds every violation of `other` (within the cap).
    pub fn extend(&mut self, other: Violations) {
        for v in other.found {
            self.add(v.field, v.description);
        }
        self.more += other.more;
    }

    pub fn is_empty(&self) -> bool {
        self.found.is_empty()
    }

    /// `Err(self)` when anything was recorded.
    pub fn into_result(self) -> Result<(), Self> {
        if self.is_empty() { Ok(()) } else { Err(self) }
    }

    /// What to report: the recorded violations, plus one that says how many more
    /// there were beyond the cap.
    pub fn to_vec(&self) -> Vec<Violation> {
        let mut out = self.found.clone();
        if self.more > 0 {
            out.push(Violation {
                field: "…".into(),
                description: format!("and {} more invalid fields", self.more),
            });
        }
        out
    }
}

impl fmt::Display for Violations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, v) in self.to_vec().iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", v.field, v.description)?;
        }
        Ok(())
    }
}

/// A field's parse, naming the field when it fails.
pub fn field<T, E: fmt::Display>(
    name: impl Into<String>,
    parsed: Result<T, E>,
) -> Result<T, Violations> {
    parsed.map_err(|e| Violations::one(name, e.to_string()))
}

/// Combines the parses of a request's fields: all values when every field
/// parsed, otherwise every field's violations together. Implemented for tuples
/// of `Result<_, Violations>`, so a command's parser reads as one line per field
/// and one `.all()?`, with no `Option` per field.
pub trait All {
    type Output;
    fn all(self) -> Result<Self::Output, Violations>;
}

macro_rules! all_tuple {
    ($($t:ident $r:ident),+) => {
        impl<$($t),+> All for ($(Result<$t, Violations>,)+) {
            type Output = ($($t,)+);
            fn all(self) -> Result<Self::Output, Violations> {
                match self {
                    ($(Ok($r),)+) => Ok(($($r,)+)),
                    ($($r,)+) => {
                        let mut v = Violations::default();
                        $(if let Err(e) = $r { v.extend(e); })+
                        Err(v)
                    }
                }
            }
        }
    };
}

all_tuple!(A a);
all_tuple!(A a, B b);
all_tuple!(A a, B b, C c);
all_tuple!(A a, B b, C c, D d);
all_tuple!(A a, B b, C c, D d, E e);
all_tuple!(A a, B b, C c, D d, E e, F f);
all_tuple!(A a, B b, C c, D d, E e, F f, G g);
all_tuple!(A a, B b, C c, D d, E e, F f, G g, H h);
all_tuple!(A a, B b, C c, D d, E e, F f, G g, H h, I i);
all_tuple!(A a, B b, C c, D d, E e, F f, G g, H h, I i, J j);
all_tuple!(A a, B b, C c, D d, E e, F f, G g, H h, I i, J j, K k);
all_tuple!(A a, B b, C c, D d, E e, F f, G g, H h, I i, J j, K k, L l);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_values_are_kept_whole() {
        assert_eq!(bounded("name"), "name");
        assert_eq!(bounded("é".repeat(300)).chars().count(), MAX_ECHO + 1);
    }

    #[test]
    fn all_collects_every_failure_in_order() {
        let ok: Result<u8, Violations> = Ok(1);
        let bad = |f: &str| -> Result<u8, Violations> { Err(Violations::one(f, "bad")) };
        assert_eq!((ok.clone(), ok.clone()).all(), Ok((1, 1)));
        let err = (bad("a"), ok, bad("c")).all().expect_err("two bad");
        let fields: Vec<_> = err.to_vec().into_iter().map(|v| v.field).collect();
        assert_eq!(fields, ["a", "c"]);
    }
}
