//! Which wildcard hostname patterns would span unrelated owners, decided by the
//! Public Suffix List itself (`data/public_suffix_list.dat`, vendored so that
//! the rule and its tests read the same bytes; MPL-2.0, see that file's header).
//!
//! `*.<base>` matches every host below `<base>`. It spans owners when `<base>`
//! is a public suffix (`*.co.uk`), but also when anything *below* `<base>` is
//! one: the list's wildcard rule `*.aivencloud.com` makes every
//! `<x>.aivencloud.com` a public suffix, and its normal rule `s3.amazonaws.com`
//! makes `s3.amazonaws.com` one, so `*.aivencloud.com` and `*.amazonaws.com`
//! would both match hosts of other customers. Exception rules (`!city.kobe.jp`)
//! only say that a name is *not* a public suffix, so they matter for the first
//! question and never for the second.
//!
//! The `psl` crate answers only "what is the suffix of this name", which cannot
//! tell whether a normal rule sits below a name; hence a small reading of the
//! list here, done once, in punycode so it compares with normalised patterns.

use std::{collections::HashSet, sync::LazyLock};

static LIST: &str = include_str!("../../data/public_suffix_list.dat");

/// The list's rules, in ASCII (punycode) form, without their `*.`/`!` marks.
#[derive(Debug, Default)]
pub struct PublicSuffixList {
    /// `a.b` for a rule `a.b`.
    normal: HashSet<String>,
    /// `b` for a rule `*.b`.
    wildcard: HashSet<String>,
    /// `a.b` for a rule `!a.b`.
    exception: HashSet<String>,
    /// Every proper parent of a rule (`b` and `c` for `a.b.c`, `b`'s parents for
    /// `*.b` and `b` itself): the names with a public suffix strictly below them.
    has_suffix_below: HashSet<String>,
}

static PARSED: LazyLock<PublicSuffixList> = LazyLock::new(|| PublicSuffixList::parse(LIST));

impl PublicSuffixList {
    /// The vendored list, parsed on first use.
    pub fn get() -> &'static Self {
        &PARSED
    }

    /// Reads the list's text format: one rule per line, `//` comments, blank lines.
    pub fn parse(text: &str) -> Self {
        let mut list = Self::default();
        for line in text.lines() {
            // A rule ends at the first whitespace; the rest of the line is ignored.
            let rule = line.split_whitespace().next().unwrap_or("");
            if rule.is_empty() || rule.starts_with("//") {
                continue;
            }
            let (kind, name) = if let Some(n) = rule.strip_prefix("*.") {
                (Kind::Wildcard, n)
            } else if let Some(n) = rule.strip_prefix('!') {
                (Kind::Exception, n)
            } else {
                (Kind::Normal, rule)
            };
            // The list writes internationalised rules in Unicode; patterns are
            // compared in their ASCII form.
            let Ok(name) = idna::domain_to_ascii(name) else {
                continue;
            };
            match kind {
                Kind::Normal => {
                    list.add_parents_of(&name);
                    list.normal.insert(name);
                }
                Kind::Wildcard => {
                    list.add_parents_of(&name);
                    list.has_suffix_below.insert(name.clone());
                    list.wildcard.insert(name);
                }
                Kind::Exception => {
                    list.exception.insert(name);
                }
            }
        }
        list
    }

    fn add_parents_of(&mut self, name: &str) {
        let mut rest = name;
        while let Some((_, parent)) = rest.split_once('.') {
            self.has_suffix_below.insert(parent.to_owned());
            rest = parent;
        }
    }

    /// Whether `name` (normalised: lower-case ASCII, no trailing dot) is itself a
    /// public suffix; every single label is one (the list's implicit `*` rule).
    pub fn is_public_suffix(&self, name: &str) -> bool {
        if !name.contains('.') || self.normal.contains(name) {
            return true;
        }
        if self.exception.contains(name) {
            return false;
        }
        name.split_once('.')
            .is_some_and(|(_, parent)| self.wildcard.contains(parent))
    }

    /// Whether `*.{base}` would match hosts of more than one owner.
    pub fn wildcard_spans_owners(&self, base: &str) -> bool {
        self.is_public_suffix(base) || self.has_suffix_below.contains(base)
    }

    /// Every rule's name with its kind, for tests that walk the whole list.
    pub fn rules(&self) -> impl Iterator<Item = (RuleKind, &str)> {
        let normal = self.normal.iter().map(|n| (RuleKind::Normal, n.as_str()));
        let wildcard = self
            .wildcard
            .iter()
            .map(|n| (RuleKind::Wildcard, n.as_str()));
        let exception = self
            .exception
            .iter()
            .map(|n| (RuleKind::Exception, n.as_str()));
        normal.chain(wildcard).chain(exception)
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Normal,
    Wildcard,
    Exception,
}

/// The three kinds of rule in the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleKind {
    /// `a.b`: `a.b` is a public suffix.
    Normal,
    /// `*.b`: every `<label>.b` is a public suffix.
    Wildcard,
    /// `!a.b`: `a.b` is not a public suffix, despite a wildcard over `b`.
    Exception,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vendored_list_is_read_whole() {
        let list = PublicSuffixList::get();
        // Sizes of the vendored snapshot: a parse that silently dropped a
        // section (the private domains come after the ICANN ones) fails here.
        assert!(list.normal.len() > 9_000, "{}", list.normal.len());
        assert!(list.wildcard.len() > 300, "{}", list.wildcard.len());
        assert!(!list.exception.is_empty());
        assert!(list.wildcard.contains("aivencloud.com"));
    }

    #[test]
    fn exceptions_are_not_public_suffixes() {
        let list = PublicSuffixList::parse("*.kobe.jp\n!city.kobe.jp\njp\n");
        assert!(list.is_public_suffix("other.kobe.jp"));
        assert!(!list.is_public_suffix("city.kobe.jp"));
        assert!(list.wildcard_spans_owners("kobe.jp"));
        assert!(!list.wildcard_spans_owners("city.kobe.jp"));
        assert!(!list.wildcard_spans_owners("shop.city.kobe.jp"));
    }

    #[test]
    fn rules_below_a_name_make_its_wildcard_span_owners() {
        let list = PublicSuffixList::parse("com\ns3.amazonaws.com\n*.aivencloud.com\n");
        assert!(list.wildcard_spans_owners("amazonaws.com"));
        assert!(list.wildcard_spans_owners("aivencloud.com"));
        assert!(list.wildcard_spans_owners("x.aivencloud.com"));
        assert!(!list.wildcard_spans_owners("example.com"));
        assert!(!list.wildcard_spans_owners("bucket.s3.amazonaws.com"));
    }

    #[test]
    fn internationalised_rules_compare_in_punycode() {
        let list = PublicSuffixList::parse("公司.cn\n");
        assert!(list.is_public_suffix("xn--55qx5d.cn"));
    }
}
