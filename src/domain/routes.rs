//! The route policy (`--route-policy`): which scopes a request needs, from its
//! method and path, when keygate stands in front of a service (Envoy ext_authz,
//! forward auth). Fail closed throughout: a path that cannot be normalised
//! matches nothing, a request no route matches is denied, and a policy file
//! with any mistake stops the start, naming the line.
//!
//! Paths are compared after normalisation ([`NormalPath`]), never as sent: the
//! upstream resolves `..`, percent escapes and doubled slashes before routing,
//! so a policy matched on the raw text could be borrowed by
//! `/api/links/../admin` or `/api/links/%2e%2e/admin`.

use std::{fmt, path::Path};

use serde::Deserialize;
use toml::Spanned;

use crate::domain::scopes::parse_scope;

/// Why a path cannot be normalised; such a request is denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path does not start with /")]
    NotAbsolute,
    #[error("the path has a malformed percent escape")]
    BadEscape,
    #[error("the path is not UTF-8 once decoded")]
    NotUtf8,
    #[error(
        "the path could be read two ways: an encoded / or dot segment, a \\, a ;, a #, // before .., a control character or a second level of encoding"
    )]
    Ambiguous,
    #[error("the path climbs above the root with ..")]
    AboveRoot,
}

/// A request path as the upstream will understand it: query and fragment
/// dropped, each segment percent-decoded, `.` and `..` resolved, empty segments
/// (doubled slashes) merged. Whatever could be read two ways is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalPath {
    segments: Vec<String>,
}

impl NormalPath {
    pub fn parse(raw: &str) -> Result<Self, PathError> {
        // A client never sends a fragment: a `#` here is a trick, not a URI part.
        if raw.contains('#') {
            return Err(PathError::Ambiguous);
        }
        let raw = raw.split('?').next().unwrap_or_default();
        let rest = raw.strip_prefix('/').ok_or(PathError::NotAbsolute)?;
        let parts: Vec<&str> = rest.split('/').collect();
        // Servers disagree on `//` before `..`: nginx merges the slashes
        // first (`/a/x//../b` is `/a/b`), RFC 3986 and most URL libraries keep
        // the empty segment (`/a/x/b`). Either reading could be the upstream's.
        let has_empty = parts[..parts.len() - 1].iter().any(|p| p.is_empty());
        let mut segments: Vec<String> = Vec::new();
        for part in parts {
            // `;` starts path parameters, which some servers (Tomcat, Spring)
            // drop before routing (`/admin;x/users` is `/admin/users` there,
            // `..;` is `..`): a segment holding one has two readings.
            if part.contains(';') {
                return Err(PathError::Ambiguous);
            }
            let segment = decode(part)?;
            // An encoded dot segment (`%2e%2e`) is `..` to servers that decode
            // before resolving and a plain name to those that do not.
            let dots = segment == "." || segment == "..";
            if dots && part != segment {
                return Err(PathError::Ambiguous);
            }
            match segment.as_str() {
                "" | "." => {}
                ".." if has_empty => return Err(PathError::Ambiguous),
                ".." => {
                    segments.pop().ok_or(PathError::AboveRoot)?;
                }
                _ => segments.push(segment),
            }
        }
        Ok(Self { segments })
    }

    pub fn segments(&self) -> &[String] {
        &self.segments
    }
}

impl fmt::Display for NormalPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.segments.is_empty() {
            return f.write_str("/");
        }
        for s in &self.segments {
            write!(f, "/{s}")?;
        }
        Ok(())
    }
}

/// One segment, percent-decoded. A decoded `/` or `\` would be a separator to
/// some upstream and a name to us, a decoded `?`, `#` or `;` the end of the
/// path or the start of its parameters, and a `%` left after decoding a second
/// level of encoding some upstream may decode again: all are refused.
fn decode(part: &str) -> Result<String, PathError> {
    let bytes = part.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or(PathError::BadEscape)?;
                let hex = std::str::from_utf8(hex).map_err(|_| PathError::BadEscape)?;
                if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(PathError::BadEscape);
                }
                let b = u8::from_str_radix(hex, 16).map_err(|_| PathError::BadEscape)?;
                out.push(b);
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    if out
        .iter()
        .any(|&b| matches!(b, b'/' | b'\\' | b'%' | b'?' | b'#' | b';') || b.is_ascii_control())
    {
        return Err(PathError::Ambiguous);
    }
    String::from_utf8(out).map_err(|_| PathError::NotUtf8)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Literal(String),
    /// `*`: exactly one segment.
    Any,
}

#[derive(Debug, Clone)]
struct Route {
    segments: Vec<Pattern>,
    /// A trailing `/**`: any number of further segments, none included.
    rest: bool,
    /// `None`: any method.
    methods: Option<Vec<String>>,
    scopes: Vec<String>,
}

impl Route {
    fn matches(&self, method: &str, path: &NormalPath) -> bool {
        if let Some(methods) = &self.methods
            && !methods.iter().any(|m| m == method)
        {
            return false;
        }
        let p = path.segments();
        let len_ok = if self.rest {
            p.len() >= self.segments.len()
        } else {
            p.len() == self.segments.len()
        };
        len_ok
            && self.segments.iter().zip(p).all(|(pat, seg)| match pat {
                Pattern::Any => true,
                Pattern::Literal(l) => l == seg,
            })
    }
}

/// A policy file's mistake, with the line it is on.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{file}line {line}: {message}")]
    Invalid {
        file: String,
        line: usize,
        message: String,
    },
}

/// The parsed `--route-policy` file: routes in file order, first match wins.
#[derive(Debug, Clone)]
pub struct RoutePolicy {
    routes: Vec<Route>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    route: Vec<Spanned<RouteEntry>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteEntry {
    path: Spanned<String>,
    methods: Option<Spanned<Vec<Spanned<String>>>>,
    scopes: Spanned<Vec<Spanned<String>>>,
}

impl RoutePolicy {
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            PolicyError::Invalid { line, message, .. } => PolicyError::Invalid {
                file: format!("{}: ", path.display()),
                line,
                message,
            },
            other => other,
        })
    }

    /// Parses a policy; every mistake names its line.
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let at = |offset: usize, message: String| PolicyError::Invalid {
            file: String::new(),
            line: line_of(text, offset),
            message,
        };
        let file: PolicyFile = toml::from_str(text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            at(offset, e.message().trim_end().to_owned())
        })?;
        if file.route.is_empty() {
            return Err(at(
                0,
                "the policy has no [[route]]: every request would be denied".into(),
            ));
        }
        let mut routes = Vec::with_capacity(file.route.len());
        for entry in file.route {
            let entry = entry.into_inner();
            let (segments, rest) = parse_pattern(entry.path.get_ref())
                .map_err(|m| at(entry.path.span().start, format!("path: {m}")))?;
            let methods = match entry.methods {
                None => None,
                Some(methods) => {
                    let span = methods.span().start;
                    let methods = methods.into_inner();
                    if methods.is_empty() {
                        return Err(at(
                            span,
                            "methods: empty; leave it out to allow any method".into(),
                        ));
                    }
                    let mut out = Vec::with_capacity(methods.len());
                    for m in methods {
                        if m.get_ref().is_empty()
                            || !m.get_ref().bytes().all(|b| b.is_ascii_uppercase())
                        {
                            return Err(at(
                                m.span().start,
                                format!(
                                    "methods: {:?} is not an HTTP method in upper case (GET, POST, …)",
                                    m.get_ref()
                                ),
                            ));
                        }
                        out.push(m.into_inner());
                    }
                    Some(out)
                }
            };
            let mut scopes = Vec::new();
            for s in entry.scopes.into_inner() {
                parse_scope(s.get_ref())
                    .map_err(|e| at(s.span().start, format!("scopes: {:?}: {e}", s.get_ref())))?;
                if !scopes.contains(s.get_ref()) {
                    scopes.push(s.into_inner());
                }
            }
            routes.push(Route {
                segments,
                rest,
                methods,
                scopes,
            });
        }
        Ok(Self { routes })
    }

    /// The scopes the first matching route requires; `None` when no route matches.
    pub fn required_scopes(&self, method: &str, path: &NormalPath) -> Option<&[String]> {
        self.routes
            .iter()
            .find(|r| r.matches(method, path))
            .map(|r| r.scopes.as_slice())
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    let offset = offset.min(text.len());
    text.as_bytes()[..offset]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// A route's `path`: written the way it will be compared, so a pattern that
/// normalisation would change (or could never match) is a mistake to report.
fn parse_pattern(path: &str) -> Result<(Vec<Pattern>, bool), String> {
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| format!("{path:?} does not start with /"))?;
    if rest.is_empty() {
        return Ok((Vec::new(), false));
    }
    let parts: Vec<&str> = rest.split('/').collect();
    let mut segments = Vec::with_capacity(parts.len());
    let mut any_rest = false;
    for (i, part) in parts.iter().enumerate() {
        match *part {
            "**" if i + 1 == parts.len() => any_rest = true,
            "**" => return Err(format!("{path:?}: ** may only end a path, as /**")),
            "*" => segments.push(Pattern::Any),
            "" => {
                return Err(format!(
                    "{path:?} has an empty segment (// or a trailing /)"
                ));
            }
            "." | ".." => return Err(format!("{path:?} has a {part} segment")),
            p if p.contains('*') => {
                return Err(format!(
                    "{path:?}: * must be a whole segment (partial wildcards are not supported)"
                ));
            }
            p if p.bytes().any(|b| {
                matches!(b, b'%' | b'?' | b'#' | b';' | b'\\') || b.is_ascii_control()
            }) =>
            {
                return Err(format!(
                    "{path:?}: write segments decoded, without %, ?, #, ; or \\"
                ));
            }
            p => segments.push(Pattern::Literal(p.to_owned())),
        }
    }
    Ok((segments, any_rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<String, PathError> {
        NormalPath::parse(p).map(|p| p.to_string())
    }

    #[test]
    fn normalises_what_the_upstream_would_resolve() {
        assert_eq!(norm("/api/links"), Ok("/api/links".into()));
        assert_eq!(norm("/api/links?x=/admin"), Ok("/api/links".into()));
        assert_eq!(norm("/api/links/../admin"), Ok("/api/admin".into()));
        assert_eq!(norm("/api//links/./"), Ok("/api/links".into()));
        assert_eq!(norm("/api/links/x/.."), Ok("/api/links".into()));
        assert_eq!(norm("/api/l%69nks"), Ok("/api/links".into()));
        assert_eq!(norm("/"), Ok("/".into()));
        assert_eq!(norm("/caf%C3%A9"), Ok("/café".into()));
    }

    #[test]
    fn refuses_what_could_be_read_two_ways() {
        assert_eq!(norm("api/links"), Err(PathError::NotAbsolute));
        assert_eq!(norm("http://h/api"), Err(PathError::NotAbsolute));
        assert_eq!(norm("/api/links%2Fadmin"), Err(PathError::Ambiguous));
        assert_eq!(norm("/api/links%5cadmin"), Err(PathError::Ambiguous));
        assert_eq!(norm("/api\\links"), Err(PathError::Ambiguous));
        assert_eq!(norm("/api/%252e%252e/admin"), Err(PathError::Ambiguous));
        assert_eq!(norm("/api/%00"), Err(PathError::Ambiguous));
        assert_eq!(norm("/api/links/..;/admin"), Err(PathError::Ambiguous));
        assert_eq!(norm("/api/admin;x/users"), Err(PathError::Ambiguous));
        assert_eq!(norm("/api/links/%2e%2e/admin"), Err(PathError::Ambiguous));
        assert_eq!(norm("/api/links/%2E/admin"), Err(PathError::Ambiguous));
        assert_eq!(norm("/api/links/x//../../me"), Err(PathError::Ambiguous));
        assert_eq!(norm("/api/links#/../admin"), Err(PathError::Ambiguous));
        // Found by the fuzzer: a decoded `?` printed back would end the path.
        assert_eq!(norm("/api/links%3Fx?y"), Err(PathError::Ambiguous));
        assert_eq!(norm("/api/links%3bx"), Err(PathError::Ambiguous));
        assert_eq!(norm("/api/%zz"), Err(PathError::BadEscape));
        assert_eq!(norm("/api/%4"), Err(PathError::BadEscape));
        assert_eq!(norm("/api/%+1"), Err(PathError::BadEscape));
        assert_eq!(norm("/%ff"), Err(PathError::NotUtf8));
        assert_eq!(norm("/api/../../etc"), Err(PathError::AboveRoot));
    }

    const HOKO: &str = r#"
[[route]]
path = "/api/links"
methods = ["GET"]
scopes = ["links:read"]

[[route]]
path = "/api/links/*"
methods = ["GET"]
scopes = ["links:read"]

[[route]]
path = "/api/links/**"
methods = ["POST", "PUT", "DELETE"]
scopes = ["links:write"]

[[route]]
path = "/api/me"
scopes = []

[[route]]
path = "/api/analytics/**"
methods = ["GET"]
scopes = ["analytics:read", "links:read"]
"#;

    fn required(policy: &RoutePolicy, method: &str, path: &str) -> Option<Vec<String>> {
        let path = NormalPath::parse(path).ok()?;
        policy
            .required_scopes(method, &path)
            .map(<[String]>::to_vec)
    }

    #[test]
    fn first_match_wins_and_no_match_is_none() {
        let p = RoutePolicy::parse(HOKO).expect("policy");
        let read = Some(vec!["links:read".to_owned()]);
        let write = Some(vec!["links:write".to_owned()]);
        assert_eq!(required(&p, "GET", "/api/links"), read);
        assert_eq!(required(&p, "GET", "/api/links?all=1"), read);
        assert_eq!(required(&p, "GET", "/api/links/abc"), read);
        assert_eq!(required(&p, "GET", "/api/links/abc/clicks"), None);
        assert_eq!(required(&p, "POST", "/api/links"), write);
        assert_eq!(required(&p, "DELETE", "/api/links/abc/x"), write);
        assert_eq!(required(&p, "PATCH", "/api/links"), None);
        assert_eq!(required(&p, "get", "/api/links"), None);
        assert_eq!(required(&p, "PATCH", "/api/me"), Some(vec![]));
        assert_eq!(required(&p, "GET", "/api/me/x"), None);
        assert_eq!(
            required(&p, "GET", "/api/analytics"),
            Some(vec!["analytics:read".to_owned(), "links:read".to_owned()])
        );
        assert_eq!(required(&p, "GET", "/api/admin"), None);
        assert_eq!(required(&p, "GET", "/api/links/../admin"), None);
        assert_eq!(required(&p, "GET", "/api/links/x/../../me"), Some(vec![]));
        assert_eq!(required(&p, "GET", "/api/links/%2e%2e/me"), None);
    }

    fn error(text: &str) -> String {
        RoutePolicy::parse(text)
            .expect_err("should be refused")
            .to_string()
    }

    #[test]
    fn mistakes_name_their_line() {
        let bad_scope = "[[route]]\npath = \"/a\"\nscopes = [\"links:read\",\n  \"Links\"]\n";
        let e = error(bad_scope);
        assert!(e.starts_with("line 4: scopes: \"Links\""), "{e}");
        let e = error("[[route]]\npath = \"/a/**/b\"\nscopes = []\n");
        assert!(e.starts_with("line 2: path:") && e.contains("/**"), "{e}");
        let e = error("[[route]]\npath = \"/a\"\nmethods = [\"get\"]\nscopes = []\n");
        assert!(e.starts_with("line 3: methods: \"get\""), "{e}");
        let e = error("[[route]]\npath = \"/a\"\n");
        assert!(e.contains("scopes"), "{e}");
        let e = error("[[route]]\npath = \"/a\"\nscope = []\nscopes = []\n");
        assert!(e.starts_with("line 3:") && e.contains("scope"), "{e}");
        let e = error("\n\n[[route]\n");
        assert!(e.starts_with("line 3:"), "{e}");
        assert!(error("").contains("no [[route]]"));
        for (path, why) in [
            ("a", "does not start with /"),
            ("/a//b", "empty segment"),
            ("/a/", "empty segment"),
            ("/a/../b", ".. segment"),
            ("/a*", "whole segment"),
            ("/a%2Fb", "without %"),
            ("/a?b", "without %"),
        ] {
            let e = error(&format!("[[route]]\npath = {path:?}\nscopes = []\n"));
            assert!(
                e.starts_with("line 2: path:") && e.contains(why),
                "{path}: {e}"
            );
        }
    }

    #[test]
    fn root_and_catch_all() {
        let p = RoutePolicy::parse(
            "[[route]]\npath = \"/\"\nscopes = []\n[[route]]\npath = \"/**\"\nscopes = [\"all:read\"]\n",
        )
        .expect("policy");
        assert_eq!(required(&p, "GET", "/"), Some(vec![]));
        assert_eq!(required(&p, "GET", "/?x"), Some(vec![]));
        assert_eq!(
            required(&p, "GET", "/x/y"),
            Some(vec!["all:read".to_owned()])
        );
    }
}
