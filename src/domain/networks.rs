//! Who may present a key, and from where: the networks a key may be used from
//! (`allowed_networks`) and the workload identities it is bound to
//! (`bound_principals`). Origin and Referer restrict nothing for
//! service-to-service traffic, where the caller writes them; a network or an
//! authenticated workload identity is something the caller cannot make up.
//!
//! Both are parsed once, when a key is created or changed, into forms whose
//! checks allocate nothing: networks as sorted, merged address ranges (a
//! binary search per check), principals as exact names or one-segment
//! prefixes. An IPv4-mapped IPv6 address (`::ffff:10.1.2.3`) is its IPv4
//! address, in a key's networks and in a presenter's address alike, so a
//! dual-stack listener cannot be used to step around an IPv4 network.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};

/// The most networks a key may carry.
pub const MAX_NETWORKS: usize = 64;
/// The most principals a key may be bound to.
pub const MAX_PRINCIPALS: usize = 16;
/// The longest principal accepted: SPIFFE IDs are at most 2048 bytes.
const MAX_PRINCIPAL_LEN: usize = 2048;

/// Why a list of networks or principals, or a presenter's address, was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetworksError {
    #[error("at most {max} distinct entries are allowed, got {got}")]
    TooMany { max: usize, got: usize },
    /// `index` is the entry's position in the list as given.
    #[error("[{index}]: {reason}")]
    Invalid { index: usize, reason: String },
    #[error("not an IPv4 or IPv6 address")]
    NotAnAddress,
}

/// At most the first 128 bytes of an entry, for an error message: enough to
/// recognise it, too little to bloat an answer with a caller's text.
fn echo(s: &str) -> &str {
    let mut end = s.len().min(crate::domain::scopes::MAX_ECHOED_LEN);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// An address as keygate compares it: an IPv4-mapped IPv6 address is IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The address a caller reports for a key's presenter (`client_ip`): a bare
/// IPv4 or IPv6 address, nothing else (no port, no brackets, no zone).
pub fn parse_client_ip(s: &str) -> Result<IpAddr, NetworksError> {
    s.parse::<IpAddr>()
        .map(canonical)
        .map_err(|_| NetworksError::NotAnAddress)
}

/// One entry: a CIDR, or a bare address (a /32 or /128). A network with bits
/// set past its prefix (`10.0.0.1/8`) is refused rather than guessed at.
fn parse_network(s: &str) -> Result<IpNet, String> {
    let net = match s.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => match s.parse::<IpAddr>() {
            Ok(ip) => IpNet::from(ip),
            Err(_) => {
                return Err(format!(
                    "{:?} is not a network such as 10.0.0.0/8, 2001:db8::/32 or a single address",
                    echo(s)
                ));
            }
        },
    };
    if net.trunc() != net {
        return Err(format!(
            "{net} has bits set past its prefix; did you mean {}?",
            net.trunc()
        ));
    }
    // An IPv4-mapped IPv6 network is the IPv4 network it maps.
    if let IpNet::V6(v6) = net
        && let Some(v4) = v6.network().to_ipv4_mapped()
        && v6.prefix_len() >= 96
    {
        let v4 = Ipv4Net::new(v4, v6.prefix_len() - 96).map_err(|e| e.to_string())?;
        return Ok(IpNet::V4(v4));
    }
    Ok(net)
}

/// A key's allowed networks; empty allows every address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedNetworks {
    /// As stored and shown: normalised, de-duplicated, in the order given.
    nets: Vec<IpNet>,
    /// The same, as sorted, merged, inclusive ranges for the checks.
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

impl AllowedNetworks {
    /// No networks: every address passes.
    pub const NONE: Self = Self {
        nets: Vec::new(),
        v4: Vec::new(),
        v6: Vec::new(),
    };

    pub fn parse<I, S>(entries: I) -> Result<Self, NetworksError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut nets: Vec<IpNet> = Vec::new();
        for (index, entry) in entries.into_iter().enumerate() {
            let net = parse_network(entry.as_ref().trim())
                .map_err(|reason| NetworksError::Invalid { index, reason })?;
            if !nets.contains(&net) {
                nets.push(net);
            }
        }
        if nets.len() > MAX_NETWORKS {
            return Err(NetworksError::TooMany {
                max: MAX_NETWORKS,
                got: nets.len(),
            });
        }
        let mut v4: Vec<(u32, u32)> = Vec::new();
        let mut v6: Vec<(u128, u128)> = Vec::new();
        for net in &nets {
            match net {
                IpNet::V4(n) => v4.push((u32::from(n.network()), u32::from(n.broadcast()))),
                IpNet::V6(n) => v6.push((u128::from(n.network()), u128::from(n.broadcast()))),
            }
        }
        Ok(Self {
            nets,
            v4: merge(v4),
            v6: merge(v6),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// Whether `ip` is in one of the networks (every address, when there are
    /// none). O(log n), and no allocation.
    pub fn allows(&self, ip: IpAddr) -> bool {
        if self.nets.is_empty() {
            return true;
        }
        match canonical(ip) {
            IpAddr::V4(a) => within(&self.v4, u32::from(a)),
            IpAddr::V6(a) => within(&self.v6, u128::from(a)),
        }
    }

    pub fn len(&self) -> usize {
        self.nets.len()
    }

    /// About how many heap bytes the networks hold.
    pub fn heap_bytes(&self) -> usize {
        self.nets.len() * std::mem::size_of::<IpNet>()
            + self.v4.len() * std::mem::size_of::<(u32, u32)>()
            + self.v6.len() * std::mem::size_of::<(u128, u128)>()
    }

    /// The networks as stored and shown, e.g. `["10.0.0.0/8", "2001:db8::/32"]`.
    pub fn to_vec(&self) -> Vec<String> {
        self.nets.iter().map(ToString::to_string).collect()
    }
}

/// Sorts ranges and merges those that overlap or touch.
fn merge<T: Copy + Ord + num_like::Successor>(mut ranges: Vec<(T, T)>) -> Vec<(T, T)> {
    ranges.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match out.last_mut() {
            Some(last) if start <= last.1.successor_or_max() => {
                if end > last.1 {
                    last.1 = end;
                }
            }
            _ => out.push((start, end)),
        }
    }
    out
}

/// Whether `x` is in one of the sorted, disjoint `ranges`.
fn within<T: Copy + Ord>(ranges: &[(T, T)], x: T) -> bool {
    // The last range that starts at or before x is the only one that can hold it.
    let i = ranges.partition_point(|&(start, _)| start <= x);
    i > 0 && x <= ranges[i - 1].1
}

mod num_like {
    /// `self + 1`, or `self` at the type's maximum.
    pub trait Successor {
        fn successor_or_max(self) -> Self;
    }
    impl Successor for u32 {
        fn successor_or_max(self) -> Self {
            self.saturating_add(1)
        }
    }
    impl Successor for u128 {
        fn successor_or_max(self) -> Self {
            self.saturating_add(1)
        }
    }
}

/// One principal a key is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Principal {
    /// Matches this identity only.
    Exact(Box<str>),
    /// `prefix/*`: matches `prefix/` followed by exactly one non-empty segment.
    OneSegment(Box<str>),
}

/// The workload identities a key may be presented by; empty binds it to none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BoundPrincipals(Vec<Principal>);

impl BoundPrincipals {
    /// Bound to no principal: every presenter passes.
    pub const NONE: Self = Self(Vec::new());

    pub fn parse<I, S>(entries: I) -> Result<Self, NetworksError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut out: Vec<Principal> = Vec::new();
        for (index, entry) in entries.into_iter().enumerate() {
            let p = parse_principal(entry.as_ref())
                .map_err(|reason| NetworksError::Invalid { index, reason })?;
            if !out.contains(&p) {
                out.push(p);
            }
        }
        if out.len() > MAX_PRINCIPALS {
            return Err(NetworksError::TooMany {
                max: MAX_PRINCIPALS,
                got: out.len(),
            });
        }
        Ok(Self(out))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `principal` (the presenter's authenticated identity) is one the
    /// key is bound to; every principal passes a key bound to none.
    pub fn allows(&self, principal: &str) -> bool {
        if self.0.is_empty() {
            return true;
        }
        self.0.iter().any(|p| match p {
            Principal::Exact(e) => **e == *principal,
            Principal::OneSegment(prefix) => principal
                .strip_prefix(&**prefix)
                .is_some_and(|rest| !rest.is_empty() && !rest.contains('/')),
        })
    }

    /// About how many heap bytes the principals hold.
    pub fn heap_bytes(&self) -> usize {
        self.0
            .iter()
            .map(|p| match p {
                Principal::Exact(e) | Principal::OneSegment(e) => e.len() + 24,
            })
            .sum()
    }

    /// As stored and shown.
    pub fn to_vec(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|p| match p {
                Principal::Exact(e) => e.to_string(),
                Principal::OneSegment(prefix) => format!("{prefix}*"),
            })
            .collect()
    }
}

/// An identity URI (`spiffe://acme.com/ns/billing/sa/api`), or one ending in
/// `/*` for exactly one trailing segment. Visible ASCII only; `*` nowhere else.
fn parse_principal(s: &str) -> Result<Principal, String> {
    let shown = || echo(s);
    if s.is_empty() {
        return Err("is empty".into());
    }
    if s.len() > MAX_PRINCIPAL_LEN {
        return Err(format!("is longer than {MAX_PRINCIPAL_LEN} bytes"));
    }
    if !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("{:?} may hold visible ASCII only", shown()));
    }
    let Some((scheme, rest)) = s.split_once("://") else {
        return Err(format!(
            "{:?} is not an identity URI such as spiffe://acme.com/ns/billing/sa/api",
            shown()
        ));
    };
    let scheme_ok = scheme
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b));
    if !scheme_ok || rest.is_empty() || rest.starts_with('/') {
        return Err(format!(
            "{:?} is not an identity URI such as spiffe://acme.com/ns/billing/sa/api",
            shown()
        ));
    }
    match s.strip_suffix('*') {
        Some(prefix) if prefix.ends_with('/') && !prefix.contains('*') => {
            Ok(Principal::OneSegment(prefix.into()))
        }
        Some(_) => Err(format!(
            "{:?}: a wildcard is only allowed as a last segment of its own, `/*`",
            shown()
        )),
        None if s.contains('*') => Err(format!(
            "{:?}: a wildcard is only allowed as a last segment of its own, `/*`",
            shown()
        )),
        None => Ok(Principal::Exact(s.into())),
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    fn nets(list: &[&str]) -> AllowedNetworks {
        AllowedNetworks::parse(list).expect("valid networks")
    }

    #[test]
    fn a_network_holds_its_addresses_and_no_others_at_both_edges() {
        let n = nets(&["10.1.0.0/16", "192.168.7.7", "2001:db8::/32"]);
        for inside in [
            "10.1.0.0",
            "10.1.255.255",
            "192.168.7.7",
            "2001:db8::",
            "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff",
        ] {
            assert!(n.allows(ip(inside)), "{inside}");
        }
        for outside in [
            "10.0.255.255",
            "10.2.0.0",
            "192.168.7.6",
            "192.168.7.8",
            "2001:db7:ffff:ffff:ffff:ffff:ffff:ffff",
            "2001:db9::",
        ] {
            assert!(!n.allows(ip(outside)), "{outside}");
        }
        assert_eq!(
            n.to_vec(),
            ["10.1.0.0/16", "192.168.7.7/32", "2001:db8::/32"]
        );
    }

    #[test]
    fn an_ipv4_mapped_address_is_its_ipv4_address_on_both_sides() {
        let v4 = nets(&["10.0.0.0/8"]);
        assert!(v4.allows(ip("::ffff:10.9.9.9")));
        assert!(!v4.allows(ip("::ffff:11.0.0.1")));
        let mapped = nets(&["::ffff:10.0.0.0/104"]);
        assert_eq!(mapped.to_vec(), ["10.0.0.0/8"]);
        assert!(mapped.allows(ip("10.200.0.1")));
        assert_eq!(parse_client_ip("::ffff:10.1.2.3"), Ok(ip("10.1.2.3")));
    }

    #[test]
    fn no_networks_allow_everything_and_the_whole_space_too() {
        assert!(AllowedNetworks::default().allows(ip("203.0.113.9")));
        let all = nets(&["0.0.0.0/0", "::/0"]);
        for a in [
            "0.0.0.0",
            "255.255.255.255",
            "::",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ] {
            assert!(all.allows(ip(a)), "{a}");
        }
    }

    #[test]
    fn overlapping_and_touching_networks_merge_without_changing_the_answer() {
        let n = nets(&["10.0.0.0/24", "10.0.1.0/24", "10.0.0.128/25", "10.0.3.0/24"]);
        assert_eq!(n.v4.len(), 2, "{:?}", n.v4);
        assert!(n.allows(ip("10.0.1.255")));
        assert!(!n.allows(ip("10.0.2.0")));
        assert!(n.allows(ip("10.0.3.0")));
    }

    #[test]
    fn bad_entries_are_named_by_position_and_host_bits_are_not_guessed_at() {
        for (list, index, says) in [
            (
                &["10.0.0.0/8", "10.0.0.1/8"][..],
                1,
                "did you mean 10.0.0.0/8",
            ),
            (&["10.0.0.0/33"][..], 0, "not a network"),
            (&["example.com"][..], 0, "not a network"),
            (&["", "10.0.0.0/8"][..], 0, "not a network"),
            (&["10.0.0.0/8", "fe80::1%eth0"][..], 1, "not a network"),
        ] {
            match AllowedNetworks::parse(list) {
                Err(NetworksError::Invalid { index: i, reason }) => {
                    assert_eq!(i, index, "{list:?}");
                    assert!(reason.contains(says), "{list:?}: {reason}");
                }
                other => panic!("{list:?}: {other:?}"),
            }
        }
        let many: Vec<String> = (0..65).map(|i| format!("10.0.{i}.0/24")).collect();
        assert_eq!(
            AllowedNetworks::parse(&many),
            Err(NetworksError::TooMany { max: 64, got: 65 })
        );
        let repeated: Vec<String> = (0..100).map(|_| "10.0.0.0/8".to_owned()).collect();
        assert_eq!(
            AllowedNetworks::parse(&repeated)
                .expect("one network")
                .to_vec()
                .len(),
            1
        );
        for bad in ["10.0.0.1:80", "[::1]", "10.0.0.0/8", " 10.0.0.1", ""] {
            assert_eq!(
                parse_client_ip(bad),
                Err(NetworksError::NotAnAddress),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn principals_match_exactly_or_one_trailing_segment() {
        let p = BoundPrincipals::parse([
            "spiffe://acme.com/ns/billing/sa/api",
            "spiffe://acme.com/ns/ci/sa/*",
        ])
        .expect("valid");
        assert!(p.allows("spiffe://acme.com/ns/billing/sa/api"));
        assert!(!p.allows("spiffe://acme.com/ns/billing/sa/api2"));
        assert!(!p.allows("spiffe://acme.com/ns/billing/sa"));
        assert!(p.allows("spiffe://acme.com/ns/ci/sa/runner"));
        assert!(!p.allows("spiffe://acme.com/ns/ci/sa/"), "an empty segment");
        assert!(
            !p.allows("spiffe://acme.com/ns/ci/sa/runner/x"),
            "two segments"
        );
        assert!(!p.allows(""));
        assert!(BoundPrincipals::default().allows("anything"));
        assert_eq!(
            p.to_vec(),
            [
                "spiffe://acme.com/ns/billing/sa/api",
                "spiffe://acme.com/ns/ci/sa/*"
            ]
        );
    }

    #[test]
    fn bad_principals_are_named_by_position() {
        for (entry, says) in [
            ("", "is empty"),
            ("api", "not an identity URI"),
            ("spiffe:///ns/x", "not an identity URI"),
            ("spiffe://acme.com/ns/*/sa/api", "wildcard"),
            ("spiffe://acme.com/ns/x*", "wildcard"),
            ("spiffe://acme.com/ns x", "visible ASCII"),
        ] {
            match BoundPrincipals::parse(["spiffe://acme.com/ok", entry]) {
                Err(NetworksError::Invalid { index: 1, reason }) => {
                    assert!(reason.contains(says), "{entry:?}: {reason}");
                }
                other => panic!("{entry:?}: {other:?}"),
            }
        }
        let many: Vec<String> = (0..17)
            .map(|i| format!("spiffe://acme.com/sa/{i}"))
            .collect();
        assert_eq!(
            BoundPrincipals::parse(&many),
            Err(NetworksError::TooMany { max: 16, got: 17 })
        );
    }

    /// The ranges agree with ipnet's own `contains` on every network of a
    /// list and addresses around each edge.
    #[test]
    fn ranges_agree_with_ipnet() {
        let list = [
            "10.0.0.0/8",
            "10.0.0.0/9",
            "172.16.0.0/12",
            "192.168.1.0/24",
            "192.168.1.128/25",
            "8.8.8.8",
            "2001:db8::/32",
            "2001:db8:1::/48",
            "fd00::/8",
            "::1",
        ];
        let n = nets(&list);
        let parsed: Vec<IpNet> = list
            .iter()
            .map(|s| parse_network(s).expect("net"))
            .collect();
        for net in &parsed {
            let probes: Vec<IpAddr> = match net {
                IpNet::V4(v) => {
                    let lo = u32::from(v.network());
                    let hi = u32::from(v.broadcast());
                    [lo.wrapping_sub(1), lo, hi, hi.wrapping_add(1)]
                        .into_iter()
                        .map(|x| IpAddr::V4(Ipv4Addr::from(x)))
                        .collect()
                }
                IpNet::V6(v) => {
                    let lo = u128::from(v.network());
                    let hi = u128::from(v.broadcast());
                    [lo.wrapping_sub(1), lo, hi, hi.wrapping_add(1)]
                        .into_iter()
                        .map(|x| IpAddr::V6(Ipv6Addr::from(x)))
                        .collect()
                }
            };
            for a in probes {
                let expected = parsed.iter().any(|p| p.contains(&a));
                assert_eq!(n.allows(a), expected, "{a}");
            }
        }
    }
}
