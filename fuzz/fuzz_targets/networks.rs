//! `AllowedNetworks::parse`, `allows` and `parse_client_ip` on arbitrary input,
//! compared with ipnet's own `contains` over the networks as stored.
//!
//! Input: lossy UTF-8; before the first NUL, the networks (one a line), after
//! it addresses to check (one a line).

#![no_main]

use std::net::IpAddr;

use ipnet::IpNet;
use keygate::domain::networks::{AllowedNetworks, BoundPrincipals, MAX_NETWORKS, parse_client_ip};
use libfuzzer_sys::fuzz_target;

/// An IPv4-mapped IPv6 address compares as its IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (nets, addrs) = text.split_once('\0').unwrap_or((&text, ""));
    let entries: Vec<&str> = nets.lines().collect();
    // Principals never panic, whatever the input.
    let _ = BoundPrincipals::parse(&entries).map(|p| p.allows(addrs));
    let Ok(parsed) = AllowedNetworks::parse(&entries) else {
        return;
    };
    let stored = parsed.to_vec();
    assert!(stored.len() <= MAX_NETWORKS);
    // What is stored parses again to the same networks.
    assert_eq!(AllowedNetworks::parse(&stored).expect("stored form parses"), parsed);
    let reference: Vec<IpNet> = stored
        .iter()
        .map(|s| s.parse().expect("stored networks are CIDRs"))
        .collect();
    for addr in addrs.lines() {
        let Ok(ip) = parse_client_ip(addr) else {
            assert!(addr.parse::<IpAddr>().is_err(), "{addr:?} is an address");
            continue;
        };
        let expected = reference.is_empty() || reference.iter().any(|n| n.contains(&canonical(ip)));
        assert_eq!(parsed.allows(ip), expected, "{addr} in {stored:?}");
    }
});
