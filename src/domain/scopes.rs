//! Scope grammar, a key's scope set, wildcard matching and the operator's scope catalog.
//!
//! A scope is `resource:action`, where `resource` and `action` each match
//! `[a-z][a-z0-9_]{0,62}` and `action` may instead be exactly `*`, meaning every action
//! of that resource.
//!
//! Matching: a required `r:a` is granted by `r:a` or `r:*`. A required `r:*` is granted
//! only by `r:*` itself: holding every individual action a caller happens to know of is
//! not the same as holding all of them, including ones added later.
//!
//! Size: about 300 lines of code; the rest are its unit tests.

use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Longest resource or action, in characters.
pub const MAX_PART_LEN: usize = 63;

/// Why a string is not a well-formed scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    /// No `:` separates resource from action.
    #[error("scope must have the form resource:action")]
    MissingColon,
    /// The part before the first `:` is not a valid resource.
    #[error("scope resource must match [a-z][a-z0-9_]{{0,62}}")]
    InvalidResource,
    /// The part after the first `:` is not a valid action.
    #[error("scope action must be * or match [a-z][a-z0-9_]{{0,62}}")]
    InvalidAction,
}

/// A borrowed, validated view of one scope. Parsing allocates nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScopeRef<'a> {
    // The whole slice is kept (not two halves) so `as_str` can hand back the original.
    scope: &'a str,
    colon: usize,
}

impl<'a> ScopeRef<'a> {
    /// The full scope, `resource:action`, as it was parsed.
    pub fn as_str(&self) -> &'a str {
        self.scope
    }

    /// The part before the `:`.
    pub fn resource(&self) -> &'a str {
        &self.scope[..self.colon]
    }

    /// The part after the `:`, possibly `*`.
    pub fn action(&self) -> &'a str {
        &self.scope[self.colon + 1..]
    }

    /// Whether the action is `*`.
    pub fn is_wildcard(&self) -> bool {
        self.action() == "*"
    }
}

/// Parses and validates one scope without allocating.
pub fn parse_scope(s: &str) -> Result<ScopeRef<'_>, ScopeError> {
    let bytes = s.as_bytes();
    let colon = bytes
        .iter()
        .position(|&b| b == b':')
        .ok_or(ScopeError::MissingColon)?;
    if !is_valid_part(&bytes[..colon]) {
        return Err(ScopeError::InvalidResource);
    }
    // A second ':' lands in the action and fails its grammar there.
    let action = &bytes[colon + 1..];
    if action != b"*" && !is_valid_part(action) {
        return Err(ScopeError::InvalidAction);
    }
    Ok(ScopeRef { scope: s, colon })
}

/// `[a-z][a-z0-9_]{0,62}`
fn is_valid_part(p: &[u8]) -> bool {
    match p.split_first() {
        Some((first, rest)) => {
            p.len() <= MAX_PART_LEN
                && first.is_ascii_lowercase()
                && rest
                    .iter()
                    .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        }
        None => false,
    }
}

/// A key's granted scopes: 1 to 128 well-formed scopes, sorted by byte order and
/// deduplicated.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ScopeSet(Vec<Box<str>>);

/// Why a list of scopes cannot form a [`ScopeSet`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeSetError {
    /// The list was empty.
    #[error("at least one scope is required")]
    Empty,
    /// More distinct scopes than [`ScopeSet::MAX`].
    #[error("at most 128 scopes are allowed, got {0}")]
    TooMany(usize),
    /// The entry at `index` (in input order) is not a well-formed scope.
    #[error("scopes[{index}] {value:?}: {source}")]
    Invalid {
        /// Position in the input, counting from 0.
        index: usize,
        /// The offending entry, cut to at most [`MAX_ECHOED_LEN`] bytes.
        value: String,
        /// What is wrong with it.
        source: ScopeError,
    },
}

/// Longest part of an invalid input echoed back in [`ScopeSetError::Invalid`]. The
/// longest valid scope is 127 bytes; more would only bloat a status message with
/// attacker-chosen text.
pub const MAX_ECHOED_LEN: usize = 128;

impl ScopeSet {
    /// Most scopes a key may hold.
    pub const MAX: usize = 128;

    /// Validates, sorts and deduplicates `scopes`.
    ///
    /// Also the way to rebuild a set from values read back from the database: they were
    /// validated once, but are parsed again so a corrupted row is an error, never a panic.
    ///
    /// Entries are validated first, in input order, so the first invalid entry is
    /// reported even when the list is also too long. The limit of [`ScopeSet::MAX`]
    /// applies to distinct scopes, after deduplication.
    pub fn parse<I, S>(scopes: I) -> Result<ScopeSet, ScopeSetError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut set = Vec::new();
        for (index, scope) in scopes.into_iter().enumerate() {
            let scope = scope.as_ref();
            match parse_scope(scope) {
                Ok(valid) => set.push(Box::from(valid.as_str())),
                Err(source) => {
                    return Err(ScopeSetError::Invalid {
                        index,
                        value: truncate(scope, MAX_ECHOED_LEN).to_owned(),
                        source,
                    });
                }
            }
        }
        set.sort_unstable();
        set.dedup();
        match set.len() {
            0 => Err(ScopeSetError::Empty),
            n if n > Self::MAX => Err(ScopeSetError::TooMany(n)),
            _ => Ok(ScopeSet(set)),
        }
    }

    /// The scopes, in sorted order.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|s| &**s)
    }

    /// The scopes, in sorted order, as owned strings.
    pub fn to_vec(&self) -> Vec<String> {
        self.iter().map(str::to_owned).collect()
    }

    /// Whether `required` is granted: held exactly, or through `resource:*`.
    ///
    /// A required `resource:*` is granted only by `resource:*`.
    pub fn grants(&self, required: ScopeRef<'_>) -> bool {
        if self.contains(required.as_str()) {
            return true;
        }
        if required.is_wildcard() {
            return false;
        }
        // Searching for "<resource>:*" without building it keeps this allocation-free.
        let resource = required.resource().as_bytes();
        self.0
            .binary_search_by(|held| cmp_joined(held.as_bytes(), resource, b":*"))
            .is_ok()
    }

    /// Whether exactly `scope` is in the set.
    pub fn contains(&self, scope: &str) -> bool {
        self.0.binary_search_by(|held| (**held).cmp(scope)).is_ok()
    }

    /// Number of distinct scopes, 1 to 128.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always `false`: a set holds at least one scope. Present for API symmetry with `len`.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Compares `s` with the concatenation `head ++ tail` in byte order.
fn cmp_joined(s: &[u8], head: &[u8], tail: &[u8]) -> Ordering {
    let n = s.len().min(head.len());
    match s[..n].cmp(&head[..n]) {
        Ordering::Equal if s.len() < head.len() => Ordering::Less,
        Ordering::Equal => s[head.len()..].cmp(tail),
        other => other,
    }
}

/// `s` cut to at most `max` bytes, on a char boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The operator-configured allow-list of scopes that keys may be given.
///
/// A key's `resource:action` is allowed if the catalog lists it or lists `resource:*`.
/// A key's `resource:*` is allowed only if the catalog lists `resource:*` itself: the
/// wildcard grants every action of the resource, including actions the catalog does
/// not name (and ones added later), so the operator must have chosen to offer it.
#[derive(Debug, Clone)]
pub struct ScopeCatalog {
    scopes: BTreeSet<Box<str>>,
    wildcard_resources: BTreeSet<Box<str>>,
}

/// Why a scope catalog could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The file could not be read (or is not UTF-8).
    #[error("cannot read scope catalog {path}: {err}", path = .0.display(), err = .1)]
    Io(PathBuf, std::io::Error),
    /// A line, numbered from 1, is neither blank, a `#` comment, nor a well-formed scope.
    #[error("scope catalog line {line}: {value:?} is not a well-formed resource:action scope")]
    BadLine {
        /// Line number, counting from 1.
        line: usize,
        /// The line's content, trimmed and cut to at most [`MAX_ECHOED_LEN`] bytes.
        value: String,
    },
    /// The catalog lists no scope at all, which would make every key be refused.
    #[error("scope catalog lists no scopes")]
    Empty,
}

impl ScopeCatalog {
    /// Reads and parses the catalog file at `path`.
    pub fn load(path: &Path) -> Result<ScopeCatalog, CatalogError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| CatalogError::Io(path.to_owned(), e))?;
        Self::parse_str(&text)
    }

    /// Parses catalog text: one scope per line, surrounding whitespace trimmed; blank
    /// lines and lines starting with `#` are ignored. Trailing comments are not supported.
    pub fn parse_str(text: &str) -> Result<ScopeCatalog, CatalogError> {
        // Editors on some platforms start UTF-8 files with a byte-order mark.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut catalog = ScopeCatalog {
            scopes: BTreeSet::new(),
            wildcard_resources: BTreeSet::new(),
        };
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let scope = parse_scope(line).map_err(|_| CatalogError::BadLine {
                line: i + 1,
                value: truncate(line, MAX_ECHOED_LEN).to_owned(),
            })?;
            catalog.scopes.insert(Box::from(scope.as_str()));
            if scope.is_wildcard() {
                catalog
                    .wildcard_resources
                    .insert(Box::from(scope.resource()));
            }
        }
        if catalog.scopes.is_empty() {
            return Err(CatalogError::Empty);
        }
        Ok(catalog)
    }

    /// Whether a key may be given `scope`.
    pub fn allows(&self, scope: ScopeRef<'_>) -> bool {
        self.scopes.contains(scope.as_str()) || self.wildcard_resources.contains(scope.resource())
    }

    /// The first scope of `set`, in its (sorted) iteration order, that the catalog does not
    /// allow, if any.
    pub fn first_unknown<'s>(&self, set: &'s ScopeSet) -> Option<&'s str> {
        // A set's members were validated when it was built, so a parse failure here would
        // mean a broken invariant; treating such a member as unknown fails closed.
        set.iter()
            .find(|s| !parse_scope(s).is_ok_and(|scope| self.allows(scope)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(s: &str) -> ScopeRef<'_> {
        parse_scope(s).expect(s)
    }

    fn set(scopes: &[&str]) -> ScopeSet {
        ScopeSet::parse(scopes).expect("valid scope set")
    }

    #[test]
    fn valid_scopes() {
        let long_resource = format!("{}:read", "r".repeat(63));
        let long_action = format!("r:{}", "a".repeat(63));
        for s in [
            "links:read",
            "short_links:create",
            "api_keys:*",
            "a:b",
            "a1_:b2_",
            "links2:read_all",
            long_resource.as_str(),
            long_action.as_str(),
        ] {
            let parsed = parse_scope(s).expect(s);
            assert_eq!(parsed.as_str(), s);
        }
        let parsed = scope("api_keys:*");
        assert_eq!(parsed.resource(), "api_keys");
        assert_eq!(parsed.action(), "*");
        assert!(parsed.is_wildcard());
        let parsed = scope("short_links:create");
        assert_eq!(parsed.resource(), "short_links");
        assert_eq!(parsed.action(), "create");
        assert!(!parsed.is_wildcard());
    }

    #[test]
    fn invalid_scopes() {
        use ScopeError::*;
        let long_resource = format!("{}:read", "r".repeat(64));
        let long_action = format!("r:{}", "a".repeat(64));
        let cases: &[(&str, ScopeError)] = &[
            ("", MissingColon),
            ("links", MissingColon),
            ("links:", InvalidAction),
            (":read", InvalidResource),
            (":", InvalidResource),
            ("Links:read", InvalidResource),
            ("links:Read", InvalidAction),
            ("links:read:x", InvalidAction),
            ("links: read", InvalidAction),
            (" links:read", InvalidResource),
            ("links:read ", InvalidAction),
            ("links :read", InvalidResource),
            ("1links:read", InvalidResource),
            ("_links:read", InvalidResource),
            ("links:1read", InvalidAction),
            ("links:*x", InvalidAction),
            ("links:**", InvalidAction),
            ("*:read", InvalidResource),
            ("*:*", InvalidResource),
            ("links-x:read", InvalidResource),
            ("links:read\n", InvalidAction),
            (long_resource.as_str(), InvalidResource),
            (long_action.as_str(), InvalidAction),
            ("lïnks:read", InvalidResource),
            ("links:réad", InvalidAction),
        ];
        for (s, err) in cases {
            assert_eq!(parse_scope(s), Err(*err), "{s:?}");
        }
    }

    #[test]
    fn set_is_sorted_and_deduplicated() {
        let s = set(&[
            "links:write",
            "api_keys:*",
            "links:read",
            "links:write",
            "links:*",
        ]);
        assert_eq!(
            s.to_vec(),
            ["api_keys:*", "links:*", "links:read", "links:write"]
        );
        assert_eq!(s.len(), 4);
        assert!(!s.is_empty());
        assert_eq!(s.iter().collect::<Vec<_>>(), s.to_vec());
        // Byte order of the whole string, so ':' (0x3a) sorts before '_' and letters.
        let s = set(&["links_x:read", "links:read", "linksx:read"]);
        assert_eq!(s.to_vec(), ["links:read", "links_x:read", "linksx:read"]);
        assert_eq!(set(&["b:a", "a:b"]), set(&["a:b", "b:a", "a:b"]));
    }

    #[test]
    fn set_size_limits() {
        assert_eq!(
            ScopeSet::parse(Vec::<String>::new()),
            Err(ScopeSetError::Empty)
        );
        let many: Vec<String> = (0..129).map(|i| format!("r{i}:read")).collect();
        assert_eq!(ScopeSet::parse(&many), Err(ScopeSetError::TooMany(129)));
        let max = ScopeSet::parse(&many[..128]).expect("128 scopes are allowed");
        assert_eq!(max.len(), ScopeSet::MAX);
        // The limit counts distinct scopes.
        let repeated = many[..128].iter().chain(many[..10].iter());
        assert_eq!(ScopeSet::parse(repeated).map(|s| s.len()), Ok(128));
        assert_eq!(
            ScopeSetError::TooMany(129).to_string(),
            "at most 128 scopes are allowed, got 129"
        );
    }

    #[test]
    fn set_reports_first_invalid_entry() {
        let err = ScopeSet::parse(["links:read", "Links:write", "bad"]).expect_err("invalid");
        assert_eq!(
            err,
            ScopeSetError::Invalid {
                index: 1,
                value: "Links:write".to_owned(),
                source: ScopeError::InvalidResource,
            }
        );
        assert_eq!(
            err.to_string(),
            "scopes[1] \"Links:write\": scope resource must match [a-z][a-z0-9_]{0,62}"
        );
        // An invalid entry wins over the count, and long values are not echoed whole.
        let mut many: Vec<String> = (0..200).map(|i| format!("r{i}:read")).collect();
        many[150] = "é".repeat(1000);
        match ScopeSet::parse(&many) {
            Err(ScopeSetError::Invalid { index, value, .. }) => {
                assert_eq!(index, 150);
                assert!(value.len() <= MAX_ECHOED_LEN);
                assert!(value.starts_with('é'));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn wildcard_grants() {
        let s = set(&["links:*"]);
        assert!(s.grants(scope("links:read")));
        assert!(s.grants(scope("links:write")));
        assert!(s.grants(scope("links:*")));
        assert!(!s.grants(scope("linksx:read")));
        assert!(!s.grants(scope("link:read")));
        assert!(!s.grants(scope("links_x:read")));
        assert!(!s.grants(scope("api_keys:read")));
    }

    #[test]
    fn exact_grants() {
        let s = set(&["links:read"]);
        assert!(s.grants(scope("links:read")));
        assert!(!s.grants(scope("links:*")));
        assert!(!s.grants(scope("links:write")));
        assert!(!s.grants(scope("links:read_all")));
        assert!(!s.grants(scope("links:rea")));
    }

    #[test]
    fn grants_in_a_crowded_set() {
        // Neighbours on both sides of where "links:*" would sort, to exercise the search.
        let s = set(&[
            "a:b",
            "link:*",
            "links:read",
            "links_x:*",
            "linksx:*",
            "links:write",
            "z:z",
        ]);
        assert!(s.grants(scope("links:read")));
        assert!(!s.grants(scope("links:delete")));
        assert!(!s.grants(scope("links:*")));
        assert!(s.grants(scope("link:anything")));
        assert!(s.grants(scope("links_x:delete")));
        assert!(s.grants(scope("linksx:delete")));
        assert!(!s.grants(scope("lin:read")));
        let s = set(&["a:b", "links:*", "links:read", "z:z"]);
        assert!(s.grants(scope("links:delete")));
        assert!(s.grants(scope("links:*")));
        assert!(!s.grants(scope("z:*")));
        assert!(s.grants(scope("z:z")));
    }

    #[test]
    fn cmp_joined_matches_concatenation() {
        let words: [&[u8]; 9] = [
            b"", b"a", b"ab", b"a:", b"a:*", b"a:*x", b"a:a", b"b", b"a:)",
        ];
        for s in words {
            for head in [&b""[..], b"a", b"ab", b"a:"] {
                for tail in [&b""[..], b":*", b"*"] {
                    let joined = [head, tail].concat();
                    assert_eq!(cmp_joined(s, head, tail), s.cmp(&joined[..]));
                }
            }
        }
    }

    const CATALOG: &str = "\
# keygate scopes

links:read
  links:write\t
short_links:*
   # indented comment
api_keys:create
links:read
";

    #[test]
    fn catalog_parses_comments_blanks_and_whitespace() {
        let catalog = ScopeCatalog::parse_str(CATALOG).expect("valid catalog");
        assert_eq!(catalog.scopes.len(), 4);
        assert!(catalog.allows(scope("links:read")));
        assert!(catalog.allows(scope("links:write")));
        assert!(catalog.allows(scope("api_keys:create")));
        assert!(!catalog.allows(scope("links:delete")));
        assert!(!catalog.allows(scope("accounts:read")));
        let crlf = CATALOG.replace('\n', "\r\n");
        let with_bom = format!("\u{feff}{crlf}");
        let again = ScopeCatalog::parse_str(&with_bom).expect("CRLF and BOM are fine");
        assert_eq!(again.scopes.len(), 4);
    }

    #[test]
    fn catalog_wildcard_rules() {
        let catalog = ScopeCatalog::parse_str(CATALOG).expect("valid catalog");
        // Key wildcard: allowed only when the catalog offers that very wildcard,
        // not merely some actions of the resource.
        assert!(!catalog.allows(scope("links:*")));
        assert!(!catalog.allows(scope("api_keys:*")));
        assert!(catalog.allows(scope("short_links:*")));
        assert!(!catalog.allows(scope("accounts:*")));
        assert!(!catalog.allows(scope("link:*")));
        // Catalog wildcard: every action of that resource is allowed.
        assert!(catalog.allows(scope("short_links:create")));
        assert!(!catalog.allows(scope("short_link:create")));
    }

    #[test]
    fn catalog_first_unknown() {
        let catalog = ScopeCatalog::parse_str(CATALOG).expect("valid catalog");
        assert_eq!(
            catalog.first_unknown(&set(&["links:read", "short_links:*", "short_links:x"])),
            None
        );
        assert_eq!(
            catalog.first_unknown(&set(&["links:read", "links:*"])),
            Some("links:*")
        );
        let s = set(&["zebra:run", "links:read", "accounts:read"]);
        assert_eq!(catalog.first_unknown(&s), Some("accounts:read"));
        let s = set(&["links:read", "links:delete"]);
        assert_eq!(catalog.first_unknown(&s), Some("links:delete"));
    }

    #[test]
    fn catalog_bad_lines_name_the_line() {
        let text = "# header\nlinks:read\n\nLinks:write\n";
        match ScopeCatalog::parse_str(text) {
            Err(CatalogError::BadLine { line, value }) => {
                assert_eq!(line, 4);
                assert_eq!(value, "Links:write");
            }
            other => panic!("unexpected {other:?}"),
        }
        for (text, bad_line) in [
            ("links:read # trailing comment", 1),
            ("links:read\nlinks read\n", 2),
            ("links:read\nlinks:read:x\n", 2),
            ("a:b\n\n\n*:read", 4),
        ] {
            match ScopeCatalog::parse_str(text) {
                Err(CatalogError::BadLine { line, .. }) => assert_eq!(line, bad_line, "{text:?}"),
                other => panic!("{text:?}: unexpected {other:?}"),
            }
        }
        let err = ScopeCatalog::parse_str("a:b\nnope\n").expect_err("bad line");
        assert_eq!(
            err.to_string(),
            "scope catalog line 2: \"nope\" is not a well-formed resource:action scope"
        );
    }

    #[test]
    fn catalog_without_scopes_is_rejected() {
        for text in ["", "\n\n", "# only comments\n  # and more\n"] {
            assert!(matches!(
                ScopeCatalog::parse_str(text),
                Err(CatalogError::Empty)
            ));
        }
    }

    #[test]
    fn catalog_load_from_file() {
        let dir = std::env::temp_dir().join(format!("kg-scopes-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let good = dir.join("good.txt");
        std::fs::write(&good, CATALOG).expect("write catalog");
        let catalog = ScopeCatalog::load(&good).expect("loads");
        assert_eq!(catalog.scopes.len(), 4);

        let bad = dir.join("bad.txt");
        std::fs::write(&bad, "links:read\nLINKS:READ\n").expect("write catalog");
        assert!(matches!(
            ScopeCatalog::load(&bad),
            Err(CatalogError::BadLine { line: 2, .. })
        ));

        let binary = dir.join("binary.txt");
        std::fs::write(&binary, [0xff, 0xfe, b'\n']).expect("write catalog");
        assert!(matches!(
            ScopeCatalog::load(&binary),
            Err(CatalogError::Io(..))
        ));

        let missing = dir.join("missing.txt");
        let err = ScopeCatalog::load(&missing).expect_err("missing file");
        assert!(matches!(&err, CatalogError::Io(p, _) if *p == missing));
        assert!(err.to_string().contains("missing.txt"), "{err}");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
