//! IP networks written as CIDR ("10.0.0.0/8", "2001:db8::/32") or single addresses, for
//! `http.trusted_proxies`.

use std::fmt;
use std::net::IpAddr;

/// An IPv4 or IPv6 network: an address and how many leading bits must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses "ADDR/PREFIX" or a bare address (a network of one). Host bits set below the
    /// prefix are refused ("10.0.0.1/8"): they usually mean a typo.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let text = text.trim();
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = address
            .parse()
            .map_err(|_| format!("{text:?}: not an IP address or ADDR/PREFIX network"))?;
        let max = max_prefix(&network);
        let prefix = match prefix {
            None => max,
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?}: the prefix must be 0 to {max}"))?,
        };
        let cidr = Cidr { network, prefix };
        if masked(&network, prefix) != bits(&network) {
            return Err(format!(
                "{text:?}: host bits are set below /{prefix}; write the network address"
            ));
        }
        Ok(cidr)
    }

    /// True when `address` is in this network. An IPv4-mapped IPv6 address (::ffff:a.b.c.d)
    /// counts as its IPv4 address.
    pub fn contains(&self, address: &IpAddr) -> bool {
        let address = canonical(address);
        if address.is_ipv4() != self.network.is_ipv4() {
            return false;
        }
        masked(&address, self.prefix) == bits(&self.network)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

fn max_prefix(address: &IpAddr) -> u8 {
    if address.is_ipv4() {
        32
    } else {
        128
    }
}

fn canonical(address: &IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(*v6), IpAddr::V4),
        v4 => *v4,
    }
}

/// The address as a 128-bit number, IPv4 in the low 32 bits.
fn bits(address: &IpAddr) -> u128 {
    match address {
        IpAddr::V4(v4) => u128::from(u32::from(*v4)),
        IpAddr::V6(v6) => u128::from(*v6),
    }
}

/// The address with everything below the first `prefix` bits cleared.
fn masked(address: &IpAddr, prefix: u8) -> u128 {
    let width = u32::from(max_prefix(address));
    let host_bits = width.saturating_sub(u32::from(prefix));
    let mask = if host_bits >= 128 {
        0
    } else {
        !((1u128 << host_bits) - 1)
    };
    bits(address) & mask
}

/// True when `address` is in any of `networks`.
pub fn any_contains(networks: &[Cidr], address: &IpAddr) -> bool {
    networks.iter().any(|network| network.contains(address))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn ipv4_networks() {
        let net = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(net.contains(&ip("10.1.255.7")));
        assert!(!net.contains(&ip("10.2.0.1")));
        assert!(!net.contains(&ip("::1")));
        assert!(net.contains(&ip("::ffff:10.1.2.3")), "IPv4-mapped IPv6");
        let one = Cidr::parse("127.0.0.1").unwrap();
        assert_eq!(one.to_string(), "127.0.0.1/32");
        assert!(one.contains(&ip("127.0.0.1")));
        assert!(!one.contains(&ip("127.0.0.2")));
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.contains(&ip("203.0.113.9")));
        assert!(!all.contains(&ip("2001:db8::1")));
    }

    #[test]
    fn ipv6_networks() {
        let net = Cidr::parse("2001:db8::/32").unwrap();
        assert!(net.contains(&ip("2001:db8:ffff::1")));
        assert!(!net.contains(&ip("2001:db9::1")));
        assert!(!net.contains(&ip("10.0.0.1")));
        assert!(Cidr::parse("::1/128").unwrap().contains(&ip("::1")));
        assert!(Cidr::parse("::/0").unwrap().contains(&ip("fe80::1")));
    }

    #[test]
    fn bad_networks_are_refused() {
        for bad in [
            "10.0.0.1/8",
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "",
            "localhost",
            "10.0.0.0/-1",
            "10.0.0.0/",
            "2001:db8::1/32",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad:?}");
        }
    }
}
