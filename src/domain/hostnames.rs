//! Allowed-hostname restrictions for API keys.
//!
//! A key may carry up to [`AllowedHostnames::MAX`] hostname patterns; a
//! request presenting the key is then only accepted when the host of its
//! `origin` header (or, when that is empty, its `referer` header) matches one
//! of them. An empty list allows any hostname.
//!
//! Patterns are normalised once, when written, so that matching on the verify
//! path is a plain string comparison:
//!
//! * ASCII letters are lower-cased, one trailing dot is removed and
//!   internationalised names are converted to their ASCII (punycode) form with
//!   UTS #46, the same mapping browsers and the `url` crate apply to hosts.
//! * `*.example.com` matches any host strictly below `example.com` (at any
//!   depth), never `example.com` itself. A `*` anywhere else is rejected, as is
//!   a wildcard over a public suffix (`*.co.uk`, `*.github.io`) or over a
//!   single label (`*.com`, `*.localhost`).
//! * IPv4 addresses are accepted as exact patterns when written as four
//!   decimal numbers (`192.0.2.1`), and never under a wildcard. IPv6 addresses
//!   are not supported.
//! * `_` is accepted in labels, and hyphens are allowed in any position,
//!   because browsers accept such hosts and send them in `origin`; rejecting
//!   them would make those sites impossible to allow.
//! * Duplicates (after normalisation) are dropped, keeping the order of first
//!   appearance. Overlapping patterns (`a.example.com` next to
//!   `*.example.com`) are kept as written.
//!
//! Size: under 500 lines of code; the rest are the unit tests of every rule above,
//! kept beside the rules they pin down.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use idna::uts46::{AsciiDenyList, DnsLength, Hyphens, Uts46};
use url::{Host, Url};

/// Longest name in DNS, in its ASCII form and without the trailing dot.
const MAX_NAME_LEN: usize = 253;

/// Longest single label in DNS.
const MAX_LABEL_LEN: usize = 63;

/// Far beyond anything that normalises to a 253-character name; refusing it
/// up front bounds the IDNA work spent on untrusted input.
const MAX_INPUT_LEN: usize = 1024;

/// Error messages quote the offending value; cutting it keeps a hostile
/// value from bloating a gRPC status (which travels in a header).
const MAX_QUOTED_LEN: usize = 100;

/// Every printable ASCII character except letters, digits, `-`, `.` and `_`,
/// plus space and control characters (`deny_glyphless`). Applied by IDNA so
/// that a non-ASCII character mapping onto one of these (e.g. a full-width
/// `＄`) is rejected too.
const DENIED_ASCII: AsciiDenyList = AsciiDenyList::new(true, "!\"#$%&'()*+,/:;<=>?@[\\]^`{|}~");

/// Why a single hostname pattern was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostnameError {
    /// Nothing left of the pattern (also `.`).
    #[error("must not be empty")]
    Empty,
    /// Whitespace anywhere, including leading or trailing.
    #[error("must not contain whitespace")]
    Whitespace,
    /// A control character anywhere.
    #[error("must not contain control characters")]
    ControlCharacter,
    /// Looks like a URL (`https://example.com`, `//example.com`).
    #[error("must be a hostname without a scheme")]
    Scheme,
    /// Has a `/`, `\`, `?` or `#`.
    #[error("must be a hostname without a path, query or fragment")]
    Path,
    /// Ends in `:` and digits (`example.com:443`).
    #[error("must be a hostname without a port")]
    Port,
    /// `*` (or `*.`) on its own.
    #[error("a bare \"*\" is not allowed; an empty list already allows any hostname")]
    BareWildcard,
    /// A `*` other than a single leading `*.`.
    #[error("\"*\" is only allowed as the whole first label, as in \"*.example.com\"")]
    MisplacedWildcard,
    /// A wildcard whose suffix is a public suffix or a single label, or has a
    /// public suffix below it.
    #[error(
        "a wildcard must not cover a public suffix, a single label or a domain with \
         public suffixes below it (such as \"*.co.uk\" or \"*.github.io\")"
    )]
    PublicSuffixWildcard,
    /// A wildcard whose suffix is an IPv4 address.
    #[error("a wildcard must not cover an IP address")]
    IpWildcard,
    /// Two dots in a row, or a leading dot.
    #[error("must not contain empty labels (as in \"a..b\" or \".example.com\")")]
    EmptyLabel,
    /// A label longer than 63 characters in ASCII form.
    #[error("each dot-separated label must be at most 63 characters long (in ASCII form)")]
    LabelTooLong,
    /// Longer than 253 characters in ASCII form, `*.` included.
    #[error("must be at most 253 characters long (in ASCII form)")]
    TooLong,
    /// Any other reason; the text says which.
    #[error("{0}")]
    Invalid(String),
}

/// One normalised hostname pattern.
///
/// Values produced by [`FromStr`] are normalised; [`HostnamePattern::matches`]
/// relies on that, so build variants by hand only from normalised strings.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostnamePattern {
    /// Matches this host only.
    Exact(String),
    /// `*.{suffix}`: matches hosts ending in `.{suffix}`, not `suffix` itself.
    Wildcard {
        /// The part after `*.`, e.g. `example.com`.
        suffix: String,
    },
}

impl HostnamePattern {
    /// Whether `host` (already normalised, as returned by [`origin_host`] or
    /// [`referer_host`]) is allowed by this pattern.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            Self::Exact(name) => host == name,
            Self::Wildcard { suffix } => host
                .strip_suffix(suffix.as_str())
                .and_then(|rest| rest.strip_suffix('.'))
                .is_some_and(|sub| !sub.is_empty()),
        }
    }
}

impl FromStr for HostnamePattern {
    type Err = HostnameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        check_shape(s)?;
        if s == "*" || s == "*." {
            return Err(HostnameError::BareWildcard);
        }
        if let Some(rest) = s.strip_prefix("*.") {
            if rest.contains('*') {
                return Err(HostnameError::MisplacedWildcard);
            }
            let suffix = normalize_name(rest)?;
            if ends_in_number(&suffix) {
                check_ipv4(&suffix)?;
                return Err(HostnameError::IpWildcard);
            }
            if suffix.len() + 2 > MAX_NAME_LEN {
                return Err(HostnameError::TooLong);
            }
            if is_public_suffix(&suffix) {
                return Err(HostnameError::PublicSuffixWildcard);
            }
            return Ok(Self::Wildcard { suffix });
        }
        if s.contains('*') {
            return Err(HostnameError::MisplacedWildcard);
        }
        let name = normalize_name(s)?;
        if ends_in_number(&name) {
            check_ipv4(&name)?;
        }
        Ok(Self::Exact(name))
    }
}

impl fmt::Display for HostnamePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(name) => f.write_str(name),
            Self::Wildcard { suffix } => write!(f, "*.{suffix}"),
        }
    }
}

/// A key's normalised, duplicate-free list of allowed hostname patterns.
///
/// Empty means any hostname is allowed. `parse(list.to_vec())` gives back an
/// equal list, so the stored form can be re-parsed on load.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct AllowedHostnames(Vec<HostnamePattern>);

impl AllowedHostnames {
    /// No restriction: what a key without hostnames has.
    pub const NONE: Self = Self(Vec::new());
}

/// Why a list of hostname patterns was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostnamesError {
    /// More than [`AllowedHostnames::MAX`] distinct entries (counted after
    /// normalisation removed duplicates, as scopes are: the limit is on what is
    /// stored).
    #[error("at most 64 distinct hostnames are allowed, got {0}")]
    TooMany(usize),
    /// The first invalid entry; `value` is the input as given, cut to 100
    /// characters.
    #[error("allowed_hostnames[{index}] {value:?}: {source}")]
    Invalid {
        /// Position in the input list.
        index: usize,
        /// The rejected input.
        value: String,
        /// Why it was rejected.
        source: HostnameError,
    },
}

impl AllowedHostnames {
    /// Most patterns a key may carry.
    pub const MAX: usize = 64;

    /// Validates and normalises `patterns`, dropping duplicates while keeping
    /// the order of first appearance. Reports the first invalid entry, else
    /// [`HostnamesError::TooMany`] when more than [`AllowedHostnames::MAX`]
    /// distinct patterns remain.
    pub fn parse<I, S>(patterns: I) -> Result<Self, HostnamesError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        // A set beside the list: de-duplication stays linear however many
        // entries a request carries (the limit counts distinct ones).
        let mut out: Vec<HostnamePattern> = Vec::new();
        let mut seen: std::collections::HashSet<HostnamePattern> = std::collections::HashSet::new();
        for (index, raw) in patterns.into_iter().enumerate() {
            let raw = raw.as_ref();
            let pattern =
                raw.parse::<HostnamePattern>()
                    .map_err(|source| HostnamesError::Invalid {
                        index,
                        value: quote_prefix(raw),
                        source,
                    })?;
            if seen.insert(pattern.clone()) {
                out.push(pattern);
            }
        }
        if out.len() > Self::MAX {
            return Err(HostnamesError::TooMany(out.len()));
        }
        Ok(Self(out))
    }

    /// Whether the list is empty, i.e. any hostname is allowed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The normalised patterns as strings (`example.com`, `*.example.com`),
    /// for storage and for the API.
    pub fn to_vec(&self) -> Vec<String> {
        self.0.iter().map(ToString::to_string).collect()
    }

    /// The patterns in order.
    pub fn iter(&self) -> impl Iterator<Item = &HostnamePattern> {
        self.0.iter()
    }

    /// Whether a request with these `origin` and `referer` header values (pass
    /// `""` for an absent header) may use the key.
    ///
    /// An empty list allows everything. Otherwise a non-empty `origin` decides
    /// alone; when it is empty a non-empty `referer` decides; when both are
    /// empty the request is allowed. A deciding header that is `null`, does
    /// not parse as a URL or has no host denies the request. Header values are
    /// taken as given: one that is only whitespace is not empty, and denies.
    pub fn allows(&self, origin: &str, referer: &str) -> bool {
        if self.0.is_empty() {
            return true;
        }
        let matches = |host: &str| self.0.iter().any(|p| p.matches(host));
        if !origin.is_empty() {
            // Almost every origin a browser sends is a plain lower-case name:
            // read it in place, without building a URL or a String per call.
            match plain_origin_host(origin) {
                Some(host) => matches(host),
                None => origin_host(origin).is_some_and(|h| matches(&h)),
            }
        } else if !referer.is_empty() {
            referer_host(referer).is_some_and(|h| matches(&h))
        } else {
            true
        }
    }
}

/// The host of `http(s)://host[:port]` when the host is a plain lower-case
/// ASCII name, exactly as [`origin_host`] would give it; `None` for anything
/// else (upper case, IDN or punycode, an IP address or what could be read as
/// one, any other character), which takes the full URL parser.
fn plain_origin_host(origin: &str) -> Option<&str> {
    let authority = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))?;
    let (host, port) = match authority.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    };
    if let Some(port) = port {
        // The URL parser refuses a port over 65535 and takes an empty one.
        let ok = port.len() <= 5
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u32>().map_or(port.is_empty(), |p| p <= 65_535);
        if !ok {
            return None;
        }
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return None;
    }
    let mut last = "";
    for label in name.split('.') {
        let plain = !label.is_empty()
            && label.len() <= MAX_LABEL_LEN
            && !label.starts_with("xn--")
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !plain {
            return None;
        }
        last = label;
    }
    // A last label that is numeric (or hex, `0x…`) makes the URL parser read
    // the host as an IPv4 address: leave those to it.
    last.as_bytes()
        .first()
        .is_some_and(u8::is_ascii_lowercase)
        .then_some(name)
}

/// The normalised host of an `origin` header value.
///
/// An origin is `http(s)://host[:port]` and nothing else (RFC 6454): `None` for
/// `null`, another scheme, a path (even `/`), a query, a fragment, user
/// information, a missing `//`, an empty label or a name over 253 characters.
/// The port is ignored. See [`referer_host`] for the form of the result.
pub fn origin_host(origin: &str) -> Option<String> {
    // Browsers send the literal `null` for opaque origins (sandboxed frames,
    // `file:`, `data:`); it names no host.
    if origin == "null" {
        return None;
    }
    let (_, authority) = origin.split_once("://")?;
    if authority.contains(['/', '\\', '?', '#', '@']) {
        return None;
    }
    http_url_host(origin)
}

/// The normalised host of a `referer` header value: an absolute `http(s)://` URL
/// without user information.
///
/// `None` when it is anything else. Domains come back lower-case, in ASCII
/// (punycode) form and without a trailing dot, as the WHATWG URL standard
/// normalises them; IPv4 addresses in dotted-decimal form; IPv6 addresses in
/// brackets (`[::1]`), which no pattern matches.
pub fn referer_host(referer: &str) -> Option<String> {
    http_url_host(referer)
}

fn http_url_host(value: &str) -> Option<String> {
    // The URL parser silently strips surrounding controls and drops TAB/LF/CR
    // anywhere; a header carrying them is not a well-formed origin, so it is not
    // one we trust to name a host.
    if value.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return None;
    }
    // `https:example.com` parses (WHATWG is lenient with special schemes) but is
    // no absolute URL a browser sends: the authority must follow `//`.
    let (scheme, rest) = value.split_once(':')?;
    if !rest.starts_with("//") {
        return None;
    }
    if !(scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")) {
        return None;
    }
    let url = Url::parse(value).ok()?;
    if !url.username().is_empty() || url.password().is_some() {
        return None;
    }
    match url.host()? {
        Host::Domain(domain) => {
            let domain = domain.strip_suffix('.').unwrap_or(domain);
            let well_formed = !domain.is_empty()
                && domain.len() <= MAX_NAME_LEN
                && domain
                    .split('.')
                    .all(|l| !l.is_empty() && l.len() <= MAX_LABEL_LEN);
            well_formed.then(|| domain.to_owned())
        }
        Host::Ipv4(addr) => Some(addr.to_string()),
        Host::Ipv6(addr) => Some(format!("[{addr}]")),
    }
}

/// Rejects inputs that are not a bare name at all (URLs, ports, whitespace),
/// each with its own reason, before any label is looked at.
fn check_shape(s: &str) -> Result<(), HostnameError> {
    if s.is_empty() {
        return Err(HostnameError::Empty);
    }
    if s.len() > MAX_INPUT_LEN {
        return Err(HostnameError::TooLong);
    }
    if s.chars().any(char::is_whitespace) {
        return Err(HostnameError::Whitespace);
    }
    if s.chars().any(char::is_control) {
        return Err(HostnameError::ControlCharacter);
    }
    if s.contains("://") || s.starts_with("//") {
        return Err(HostnameError::Scheme);
    }
    if s.contains(['/', '\\', '?', '#']) {
        return Err(HostnameError::Path);
    }
    if s.contains('@') {
        return Err(HostnameError::Invalid(
            "must be a hostname without user information (\"user@\")".to_owned(),
        ));
    }
    if s.starts_with('[') || s.parse::<Ipv6Addr>().is_ok() {
        return Err(HostnameError::Invalid(
            "IPv6 addresses are not supported".to_owned(),
        ));
    }
    if let Some((_, after)) = s.rsplit_once(':') {
        if after.bytes().all(|b| b.is_ascii_digit()) {
            return Err(HostnameError::Port);
        }
        return Err(HostnameError::Invalid(
            "character ':' is not allowed in a hostname".to_owned(),
        ));
    }
    Ok(())
}

/// Normalises a name (no `*`) to lower-case ASCII without a trailing dot and
/// checks its labels and length.
fn normalize_name(s: &str) -> Result<String, HostnameError> {
    // IDNA errors say nothing about the cause; naming the offending ASCII
    // character first gives the common mistakes a useful message.
    if let Some(c) = s.chars().find(|c| c.is_ascii() && !is_host_char(*c)) {
        return Err(HostnameError::Invalid(format!(
            "character {c:?} is not allowed in a hostname"
        )));
    }
    let ascii = Uts46::new()
        .to_ascii(
            s.as_bytes(),
            DENIED_ASCII,
            Hyphens::Allow,
            DnsLength::Ignore,
        )
        .map_err(|_| {
            HostnameError::Invalid(
                "not a valid hostname or internationalised domain name".to_owned(),
            )
        })?;
    // Stripped after IDNA so that an ideographic full stop (`。`), which maps
    // to `.`, is treated like an ASCII trailing dot.
    let name = ascii.strip_suffix('.').unwrap_or(&ascii);
    if name.is_empty() {
        return Err(HostnameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(HostnameError::TooLong);
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(HostnameError::EmptyLabel);
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(HostnameError::LabelTooLong);
        }
    }
    // Matching relies on this alphabet; checked here rather than trusted
    // from the IDNA crate's internals.
    if !name.chars().all(is_host_char) {
        return Err(HostnameError::Invalid(
            "not a valid hostname or internationalised domain name".to_owned(),
        ));
    }
    Ok(name.to_owned())
}

fn is_host_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')
}

/// The WHATWG URL standard parses a host whose last label is a number
/// (decimal, or `0x` hex) as an IPv4 address, so such a name can never reach
/// us from a browser as a domain.
fn ends_in_number(name: &str) -> bool {
    let last = name.rsplit('.').next().unwrap_or(name);
    if let Some(hex) = last.strip_prefix("0x") {
        return hex.bytes().all(|b| b.is_ascii_hexdigit());
    }
    !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit())
}

/// Only the canonical dotted-decimal form is accepted: the URL parser
/// rewrites hosts like `127.1` or `0x7f.0.0.1` before we see them, so such a
/// pattern would never match, and rewriting it silently would store something
/// other than what the user wrote.
fn check_ipv4(name: &str) -> Result<(), HostnameError> {
    match name.parse::<Ipv4Addr>() {
        Ok(_) => Ok(()),
        Err(_) => Err(HostnameError::Invalid(
            "ends in a number but is not an IPv4 address; write IPv4 addresses \
             as four decimal numbers, like 192.0.2.1"
                .to_owned(),
        )),
    }
}

/// Whether a wildcard over `suffix` would span unrelated owners: `suffix` is a
/// public suffix, or one lies below it (see [`crate::domain::public_suffix`]).
fn is_public_suffix(suffix: &str) -> bool {
    crate::domain::public_suffix::PublicSuffixList::get().wildcard_spans_owners(suffix)
}

fn quote_prefix(raw: &str) -> String {
    match raw.char_indices().nth(MAX_QUOTED_LEN) {
        Some((cut, _)) => format!("{}…", &raw[..cut]),
        None => raw.to_owned(),
    }
}

#[cfg(test)]
mod header_tests {
    use super::*;

    #[test]
    fn headers_with_controls_or_spaces_do_not_parse() {
        for bad in [
            "https://example.com\n",
            "\0https://example.com",
            "https://exa\tmple.com",
            " https://example.com",
            "https://example.com/ x",
        ] {
            assert_eq!(origin_host(bad), None, "{bad:?}");
            assert_eq!(referer_host(bad), None, "{bad:?}");
        }
        assert_eq!(
            origin_host("https://example.com").as_deref(),
            Some("example.com")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]
        /// The in-place reading of an origin agrees with the URL parser's
        /// wherever it answers at all.
        #[test]
        fn the_plain_origin_fast_path_agrees_with_the_url_parser(
            origin in "(https?|HTTP|ftp)://[a-zA-Z0-9.\\-_]{0,24}(:[0-9]{0,6})?[/.]?",
        ) {
            if let Some(host) = plain_origin_host(&origin) {
                prop_assert_eq!(Some(host.to_owned()), origin_host(&origin), "{}", origin);
            }
        }
    }

    #[test]
    fn the_plain_origin_fast_path_takes_the_common_cases_only() {
        for (origin, host) in [
            ("https://app.example.com", Some("app.example.com")),
            ("http://app.example.com:8080", Some("app.example.com")),
            ("https://app.example.com.", Some("app.example.com")),
            ("https://App.example.com", None),
            ("https://127.0.0.1", None),
            ("https://a.0x10", None),
            ("https://xn--bcher-kva.example", None),
            ("https://app.example.com:99999", None),
            ("https://app.example.com/", None),
        ] {
            assert_eq!(plain_origin_host(origin), host, "{origin}");
        }
    }

    fn pattern(s: &str) -> HostnamePattern {
        s.parse().expect("valid pattern")
    }

    fn err(s: &str) -> HostnameError {
        s.parse::<HostnamePattern>().expect_err("invalid pattern")
    }

    fn normalised(s: &str) -> String {
        pattern(s).to_string()
    }

    fn list(patterns: &[&str]) -> AllowedHostnames {
        AllowedHostnames::parse(patterns).expect("valid list")
    }

    fn is_invalid(e: &HostnameError) -> bool {
        matches!(e, HostnameError::Invalid(_))
    }

    // --- normalisation -------------------------------------------------

    #[test]
    fn plain_names_are_kept() {
        assert_eq!(
            pattern("example.com"),
            HostnamePattern::Exact("example.com".into())
        );
        assert_eq!(normalised("api.example.com"), "api.example.com");
        assert_eq!(
            pattern("*.example.com"),
            HostnamePattern::Wildcard {
                suffix: "example.com".into()
            }
        );
        assert_eq!(normalised("*.example.com"), "*.example.com");
    }

    #[test]
    fn case_is_folded() {
        assert_eq!(normalised("API.Example.COM"), "api.example.com");
        assert_eq!(normalised("*.EXAMPLE.com"), "*.example.com");
    }

    #[test]
    fn one_trailing_dot_is_removed() {
        assert_eq!(normalised("example.com."), "example.com");
        assert_eq!(normalised("*.example.com."), "*.example.com");
        assert_eq!(normalised("localhost."), "localhost");
        assert_eq!(normalised("example.com\u{3002}"), "example.com");
        assert_eq!(err("example.com.."), HostnameError::EmptyLabel);
    }

    #[test]
    fn idn_is_converted_to_punycode() {
        assert_eq!(normalised("Bücher.example"), "xn--bcher-kva.example");
        assert_eq!(normalised("*.bücher.example"), "*.xn--bcher-kva.example");
        assert_eq!(normalised("BÜCHER.example"), "xn--bcher-kva.example");
        // Already-encoded input is validated and kept.
        assert_eq!(normalised("xn--bcher-kva.example"), "xn--bcher-kva.example");
        // Full-width forms map to ASCII as in browsers.
        assert_eq!(normalised("ＥＸＡＭＰＬＥ.com"), "example.com");
    }

    #[test]
    fn normalisation_is_idempotent() {
        for raw in [
            "Bücher.example",
            "*.BÜCHER.example.",
            "Example.COM.",
            "192.0.2.1",
        ] {
            let once = normalised(raw);
            assert_eq!(normalised(&once), once);
        }
    }

    #[test]
    fn single_label_exact_names_are_allowed() {
        assert_eq!(normalised("localhost"), "localhost");
        assert_eq!(normalised("LOCALHOST"), "localhost");
    }

    #[test]
    fn underscores_and_hyphens_are_allowed() {
        assert_eq!(normalised("my_app.example.com"), "my_app.example.com");
        assert_eq!(normalised("a-b--c.example.com"), "a-b--c.example.com");
    }

    #[test]
    fn ipv4_exact_is_allowed_only_in_canonical_form() {
        assert_eq!(
            pattern("192.0.2.1"),
            HostnamePattern::Exact("192.0.2.1".into())
        );
        assert_eq!(normalised("127.0.0.1."), "127.0.0.1");
        for bad in [
            "127.1",
            "010.0.0.1",
            "1.2.3.256",
            "0x7f.0.0.1",
            "example.123",
            "a.0x1f",
        ] {
            assert!(is_invalid(&err(bad)), "{bad}");
        }
    }

    #[test]
    fn ipv4_under_wildcard_is_rejected() {
        assert_eq!(err("*.0.2.1.1"), HostnameError::IpWildcard);
        assert_eq!(err("*.192.0.2.1"), HostnameError::IpWildcard);
        assert!(is_invalid(&err("*.2.1")));
    }

    // --- rejections ----------------------------------------------------

    #[test]
    fn rejects_scheme() {
        assert_eq!(err("https://example.com"), HostnameError::Scheme);
        assert_eq!(err("http://example.com/"), HostnameError::Scheme);
        assert_eq!(err("https://example.com:443/x"), HostnameError::Scheme);
        assert_eq!(err("//example.com"), HostnameError::Scheme);
    }

    #[test]
    fn rejects_path_query_fragment() {
        assert_eq!(err("example.com/x"), HostnameError::Path);
        assert_eq!(err("example.com/"), HostnameError::Path);
        assert_eq!(err("example.com?a=b"), HostnameError::Path);
        assert_eq!(err("example.com#top"), HostnameError::Path);
        assert_eq!(err("example.com\\x"), HostnameError::Path);
    }

    #[test]
    fn rejects_port() {
        assert_eq!(err("example.com:443"), HostnameError::Port);
        assert_eq!(err("example.com:"), HostnameError::Port);
        assert_eq!(err("*.example.com:8080"), HostnameError::Port);
        assert!(is_invalid(&err("example.com:abc")));
    }

    #[test]
    fn rejects_bare_wildcard() {
        assert_eq!(err("*"), HostnameError::BareWildcard);
        assert_eq!(err("*."), HostnameError::BareWildcard);
    }

    #[test]
    fn rejects_misplaced_wildcard() {
        for bad in [
            "a.*.example.com",
            "*example.com",
            "ex*.com",
            "*.*.example.com",
            "example.*",
            "**.example.com",
            "a*.example.com",
        ] {
            assert_eq!(err(bad), HostnameError::MisplacedWildcard, "{bad}");
        }
    }

    #[test]
    fn rejects_wildcard_over_public_suffix_or_single_label() {
        for bad in [
            "*.com",
            "*.co.uk",
            "*.github.io",
            "*.localhost",
            "*.COM",
            "*.xn--p1ai",
            "*.рф",
            "*.example",
        ] {
            assert_eq!(err(bad), HostnameError::PublicSuffixWildcard, "{bad}");
        }
        // One level below a public suffix is a registrable domain.
        assert_eq!(normalised("*.user.github.io"), "*.user.github.io");
        assert_eq!(normalised("*.example.co.uk"), "*.example.co.uk");
        assert_eq!(normalised("*.app.localhost"), "*.app.localhost");
    }

    /// Walks every rule of the vendored Public Suffix List, so no rule the list
    /// adds can be missed by a hand-picked set.
    #[test]
    fn no_wildcard_spans_a_public_suffix_of_the_list() {
        use crate::domain::public_suffix::{PublicSuffixList, RuleKind};
        let list = PublicSuffixList::get();
        let parses = |name: &str| name.parse::<HostnamePattern>().is_ok();
        let (mut checked, mut allowed_exceptions) = (0, 0);
        for (kind, name) in list.rules() {
            if !parses(name) {
                continue;
            }
            let parent = name.split_once('.').map(|(_, p)| p);
            match kind {
                RuleKind::Normal => {
                    // The suffix itself, and the name above it whose wildcard covers it.
                    assert_eq!(
                        err(&format!("*.{name}")),
                        HostnameError::PublicSuffixWildcard,
                        "*.{name}"
                    );
                    if let Some(parent) = parent {
                        assert_eq!(
                            err(&format!("*.{parent}")),
                            HostnameError::PublicSuffixWildcard,
                            "*.{parent}"
                        );
                    }
                }
                RuleKind::Wildcard => {
                    // `*.b`: `b` has public suffixes below it, and so is every `x.b`.
                    assert_eq!(
                        err(&format!("*.{name}")),
                        HostnameError::PublicSuffixWildcard,
                        "*.{name}"
                    );
                    let below = format!("*.anyone.{name}");
                    assert_eq!(err(&below), HostnameError::PublicSuffixWildcard, "{below}");
                }
                RuleKind::Exception => {
                    // `!a.b` makes `a.b` registrable: its wildcard is one owner's,
                    // unless the list names a suffix below it too.
                    if !list.wildcard_spans_owners(name) {
                        assert!(
                            pattern(&format!("*.{name}"))
                                == HostnamePattern::Wildcard {
                                    suffix: name.to_owned()
                                }
                        );
                        allowed_exceptions += 1;
                    }
                }
            }
            checked += 1;
        }
        assert!(checked > 9_000, "only {checked} rules checked");
        assert!(allowed_exceptions > 0);
        // The finding that started this: every `<x>.aivencloud.com` is a suffix.
        assert_eq!(err("*.aivencloud.com"), HostnameError::PublicSuffixWildcard);
        assert_eq!(
            err("*.other.aivencloud.com"),
            HostnameError::PublicSuffixWildcard
        );
        assert_eq!(
            normalised("*.svc.project.aivencloud.com"),
            "*.svc.project.aivencloud.com"
        );
    }

    #[test]
    fn rejects_empty() {
        assert_eq!(err(""), HostnameError::Empty);
        assert_eq!(err("."), HostnameError::Empty);
    }

    #[test]
    fn rejects_whitespace_and_control_characters() {
        assert_eq!(err(" example.com"), HostnameError::Whitespace);
        assert_eq!(err("example.com "), HostnameError::Whitespace);
        assert_eq!(err("exa mple.com"), HostnameError::Whitespace);
        assert_eq!(err("example.com\n"), HostnameError::Whitespace);
        assert_eq!(err("example\u{3000}.com"), HostnameError::Whitespace);
        assert_eq!(err(" "), HostnameError::Whitespace);
        assert_eq!(err("exa\u{0}mple.com"), HostnameError::ControlCharacter);
        assert_eq!(err("exa\u{7f}mple.com"), HostnameError::ControlCharacter);
    }

    #[test]
    fn rejects_empty_labels() {
        assert_eq!(err("a..b"), HostnameError::EmptyLabel);
        assert_eq!(err(".example.com"), HostnameError::EmptyLabel);
        assert_eq!(err("*..example.com"), HostnameError::EmptyLabel);
    }

    #[test]
    fn rejects_long_labels_and_names() {
        let label63 = "a".repeat(63);
        assert_eq!(
            normalised(&format!("{label63}.com")),
            format!("{label63}.com")
        );
        assert_eq!(
            err(&format!("{}.com", "a".repeat(64))),
            HostnameError::LabelTooLong
        );

        // 4 * 63 + 3 dots = 255; trim to exactly 253.
        let name253 = format!("{l}.{l}.{l}.{}", "a".repeat(61), l = label63);
        assert_eq!(name253.len(), 253);
        assert_eq!(normalised(&name253), name253);
        assert_eq!(normalised(&format!("{name253}.")), name253);
        assert_eq!(err(&format!("a{name253}")), HostnameError::TooLong);

        // The `*.` counts: the pattern as stored must fit in 253.
        let suffix251 = &name253[2..];
        assert_eq!(normalised(&format!("*.{suffix251}")).len(), 253);
        assert_eq!(err(&format!("*.a{suffix251}")), HostnameError::TooLong);

        // Length is measured on the punycode form.
        // 60 characters, but longer than 63 in `xn--` form.
        let idn_label = format!("ü{}", "a".repeat(59));
        assert_eq!(
            err(&format!("{idn_label}.com")),
            HostnameError::LabelTooLong
        );

        assert_eq!(err(&"a".repeat(5000)), HostnameError::TooLong);
    }

    #[test]
    fn rejects_invalid_characters() {
        for bad in [
            "exa!mple.com",
            "exa%41mple.com",
            "example.com,",
            "\"example.com\"",
            "exa$mple.com",
            "ａ＄b.com",
            "xn--zz.com",
            "user@example.com",
            "[::1]",
            "::1",
        ] {
            assert!(is_invalid(&err(bad)), "{bad}: {:?}", err(bad));
        }
    }

    #[test]
    fn error_messages_are_specific() {
        assert_eq!(
            err("https://x.com").to_string(),
            "must be a hostname without a scheme"
        );
        assert_eq!(
            err("x.com:1").to_string(),
            "must be a hostname without a port"
        );
        assert_eq!(
            err("exa!mple.com").to_string(),
            "character '!' is not allowed in a hostname"
        );
        assert!(err("*.co.uk").to_string().contains("public suffix"));
    }

    // --- lists ---------------------------------------------------------

    #[test]
    fn empty_list_is_empty() {
        let none: [&str; 0] = [];
        let l = AllowedHostnames::parse(none).expect("valid list");
        assert!(l.is_empty());
        assert_eq!(l, AllowedHostnames::default());
        assert!(l.to_vec().is_empty());
    }

    #[test]
    fn duplicates_are_removed_after_normalisation_keeping_first_order() {
        let l = list(&[
            "b.example.com",
            "Example.com",
            "*.example.com",
            "example.com.",
            "B.EXAMPLE.COM",
            "*.Example.Com.",
            "bücher.example",
            "xn--bcher-kva.example",
        ]);
        assert_eq!(
            l.to_vec(),
            [
                "b.example.com",
                "example.com",
                "*.example.com",
                "xn--bcher-kva.example"
            ]
        );
        assert_eq!(l.iter().count(), 4);
        assert_eq!(l.iter().nth(2), Some(&pattern("*.example.com")));
    }

    #[test]
    fn stored_form_round_trips() {
        let l = list(&["*.Bücher.example", "LOCALHOST", "192.0.2.1"]);
        assert_eq!(AllowedHostnames::parse(l.to_vec()).expect("valid list"), l);
    }

    #[test]
    fn sixty_four_accepted_sixty_five_rejected() {
        let names: Vec<String> = (0..65).map(|i| format!("h{i}.example.com")).collect();
        let l = AllowedHostnames::parse(&names[..64]).expect("valid list");
        assert_eq!(l.iter().count(), 64);
        assert_eq!(
            AllowedHostnames::parse(&names).expect_err("invalid list"),
            HostnamesError::TooMany(65)
        );
        // The limit is on what is stored, as for scopes: duplicates (also those
        // that only normalisation reveals) count once.
        let mut dups = names[..63].to_vec();
        dups.extend(
            [
                "EXAMPLE.com",
                "example.com.",
                "example.com",
                "H0.example.com",
            ]
            .map(String::from),
        );
        assert_eq!(
            AllowedHostnames::parse(&dups)
                .expect("valid list")
                .iter()
                .count(),
            64
        );
        dups.push("one-more.example.com".into());
        assert_eq!(
            AllowedHostnames::parse(&dups).expect_err("65 distinct"),
            HostnamesError::TooMany(65)
        );
        assert_eq!(
            AllowedHostnames::parse(vec!["example.com"; 65])
                .expect("valid list")
                .iter()
                .count(),
            1
        );
        assert_eq!(
            HostnamesError::TooMany(65).to_string(),
            "at most 64 distinct hostnames are allowed, got 65"
        );
    }

    #[test]
    fn list_reports_first_invalid_entry() {
        let e = AllowedHostnames::parse(["example.com", "https://x.com", "*"])
            .expect_err("invalid list");
        assert_eq!(
            e,
            HostnamesError::Invalid {
                index: 1,
                value: "https://x.com".into(),
                source: HostnameError::Scheme,
            }
        );
        assert_eq!(
            e.to_string(),
            "allowed_hostnames[1] \"https://x.com\": must be a hostname without a scheme"
        );
    }

    #[test]
    fn list_error_quotes_at_most_100_characters() {
        let long = format!("{}/", "ü".repeat(500));
        let e = AllowedHostnames::parse([long]).expect_err("invalid list");
        let HostnamesError::Invalid { value, source, .. } = e else {
            panic!("unexpected {e:?}");
        };
        assert_eq!(source, HostnameError::Path);
        assert_eq!(value, format!("{}…", "ü".repeat(100)));
    }

    // --- matching ------------------------------------------------------

    #[test]
    fn wildcard_matches_subdomains_at_any_depth_only() {
        let p = pattern("*.example.com");
        assert!(p.matches("a.example.com"));
        assert!(p.matches("a.b.example.com"));
        assert!(!p.matches("example.com"));
        assert!(!p.matches("badexample.com"));
        assert!(!p.matches(".example.com"));
        assert!(!p.matches("example.com.evil.com"));
        assert!(!p.matches("a.example.co"));
    }

    #[test]
    fn exact_matches_only_that_host() {
        let p = pattern("api.example.com");
        assert!(p.matches("api.example.com"));
        assert!(!p.matches("example.com"));
        assert!(!p.matches("x.api.example.com"));
        assert!(!p.matches("api.example.com.evil.com"));
        assert!(!p.matches("xapi.example.com"));
    }

    // --- header extraction ---------------------------------------------

    #[test]
    fn origin_host_extraction() {
        assert_eq!(
            origin_host("https://api.example.com:8443").as_deref(),
            Some("api.example.com")
        );
        assert_eq!(
            origin_host("https://EXAMPLE.com").as_deref(),
            Some("example.com")
        );
        assert_eq!(
            origin_host("https://Bücher.example").as_deref(),
            Some("xn--bcher-kva.example")
        );
        assert_eq!(
            origin_host("https://example.com.").as_deref(),
            Some("example.com")
        );
        assert_eq!(
            origin_host("http://192.0.2.1:3000").as_deref(),
            Some("192.0.2.1")
        );
        assert_eq!(origin_host("http://[::1]:3000").as_deref(), Some("[::1]"));
        assert_eq!(origin_host("null"), None);
        assert_eq!(origin_host("not a url"), None);
        assert_eq!(origin_host("https://"), None);
        assert_eq!(origin_host("example.com"), None);
        assert_eq!(origin_host("file:///etc/passwd"), None);
        assert_eq!(origin_host("data:text/plain,x"), None);
    }

    #[test]
    fn referer_host_extraction() {
        assert_eq!(
            referer_host("https://www.example.com/a/b?c=d#e").as_deref(),
            Some("www.example.com")
        );
        assert_eq!(
            referer_host("HTTP://WWW.Example.com:444/").as_deref(),
            Some("www.example.com")
        );
        assert_eq!(referer_host("/relative/path"), None);
        assert_eq!(referer_host("null"), None);
    }

    /// An origin is `http(s)://host[:port]` and nothing more; a referer an
    /// absolute http(s) URL. Each of these once named a host and was let through.
    #[test]
    fn loose_origins_and_referers_name_no_host() {
        let long = format!("https://{}.example.com", "a.".repeat(125));
        for bad in [
            "https://example.com/path",
            "https://example.com/",
            "https://example.com?q",
            "https://example.com#f",
            "https://user:pw@example.com",
            "https://user@example.com",
            "file://example.com",
            "javascript://example.com",
            "chrome-extension://abcdef",
            "ftp://example.com",
            "https:example.com",
            "https:/example.com",
            "https://..a.com",
            "https://a..com",
            "https://.a.com",
            long.as_str(),
        ] {
            assert_eq!(origin_host(bad), None, "origin {bad:?}");
            // A list that holds the host the value tries to name still refuses it.
            let l = list(&["example.com", "*.example.com", "a.com", "*.a.com"]);
            assert!(!l.allows(bad, ""), "origin {bad:?}");
        }
        for bad in [
            "https://user:pw@example.com/",
            "file:///etc/passwd",
            "javascript://example.com/%0aalert(1)",
            "https:example.com/x",
            "https://..a.com/x",
            "ws://example.com/x",
        ] {
            assert_eq!(referer_host(bad), None, "referer {bad:?}");
        }
        // What stays valid keeps the WHATWG normalisation.
        assert_eq!(
            origin_host("HTTPS://Example.COM:8443").as_deref(),
            Some("example.com")
        );
        assert_eq!(
            referer_host("https://example.com/a?b#c").as_deref(),
            Some("example.com")
        );
    }

    // --- the header rule -------------------------------------------------

    #[test]
    fn empty_list_allows_anything() {
        let l = AllowedHostnames::default();
        assert!(l.allows("", ""));
        assert!(l.allows("null", ""));
        assert!(l.allows("not a url", "also not"));
        assert!(l.allows("https://evil.com", "https://evil.com/x"));
    }

    #[test]
    fn no_header_is_allowed() {
        assert!(list(&["example.com"]).allows("", ""));
    }

    #[test]
    fn origin_with_port_matches() {
        let l = list(&["api.example.com"]);
        assert!(l.allows("https://api.example.com:8443", ""));
        assert!(l.allows("https://api.example.com", ""));
        assert!(!l.allows("https://other.example.com", ""));
    }

    #[test]
    fn origin_null_is_blocked() {
        let l = list(&["example.com"]);
        assert!(!l.allows("null", ""));
        // The referer is not consulted once origin is set.
        assert!(!l.allows("null", "https://example.com/page"));
    }

    #[test]
    fn unparseable_origin_is_blocked() {
        let l = list(&["example.com"]);
        assert!(!l.allows("not a url", ""));
        assert!(!l.allows("https://", ""));
        assert!(!l.allows("example.com", ""));
        assert!(!l.allows(" ", ""));
    }

    #[test]
    fn origin_is_preferred_over_referer() {
        let l = list(&["example.com"]);
        assert!(!l.allows("https://evil.com", "https://example.com/"));
        assert!(!l.allows("not a url", "https://example.com/"));
        assert!(l.allows("", "https://example.com/"));
        assert!(l.allows("https://example.com", "https://evil.com/"));
    }

    #[test]
    fn referer_with_path_and_query() {
        let l = list(&["*.example.com"]);
        assert!(l.allows("", "https://app.example.com/dashboard/keys?tab=1#x"));
        assert!(!l.allows("", "https://example.com/dashboard?from=app.example.com"));
        assert!(!l.allows("", "https://evil.com/?next=https://app.example.com/"));
    }

    #[test]
    fn unparseable_referer_is_blocked() {
        let l = list(&["example.com"]);
        assert!(!l.allows("", "not a url"));
        assert!(!l.allows("", "/just/a/path"));
        assert!(!l.allows("", "https://"));
    }

    #[test]
    fn origin_host_is_normalised_before_matching() {
        let l = list(&["example.com", "bücher.example"]);
        assert!(l.allows("HTTPS://EXAMPLE.COM", ""));
        assert!(l.allows("https://BÜCHER.example", ""));
        assert!(l.allows("https://xn--bcher-kva.example", ""));
        assert!(l.allows("", "https://Bücher.Example/x"));
    }

    #[test]
    fn trailing_dot_origin_matches() {
        let l = list(&["example.com", "*.example.org"]);
        assert!(l.allows("https://example.com.", ""));
        assert!(l.allows("https://example.com.:8443", ""));
        assert!(l.allows("https://a.example.org.", ""));
        assert!(!l.allows("https://example.com..", ""));
    }

    #[test]
    fn ipv4_origin_matches_exact_pattern() {
        let l = list(&["127.0.0.1"]);
        assert!(l.allows("http://127.0.0.1:3000", ""));
        // The URL parser canonicalises shorthand addresses before matching.
        assert!(l.allows("http://127.1:3000", ""));
        assert!(!l.allows("http://127.0.0.2", ""));
        assert!(!l.allows("http://[::1]:3000", ""));
    }

    #[test]
    fn localhost_exact() {
        let l = list(&["localhost"]);
        assert!(l.allows("http://localhost:5173", ""));
        assert!(!l.allows("http://app.localhost:5173", ""));
    }

    #[test]
    fn wildcard_list_via_headers() {
        let l = list(&["*.example.com"]);
        assert!(l.allows("https://a.example.com", ""));
        assert!(l.allows("https://a.b.example.com", ""));
        assert!(!l.allows("https://example.com", ""));
        assert!(!l.allows("https://badexample.com", ""));
    }
}
