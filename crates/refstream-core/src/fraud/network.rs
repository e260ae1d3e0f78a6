//! Network prefixes: the /24 of an IPv4 address and the /64 of an IPv6 address, the unit the
//! scorer compares when two registrations come from "the same network". An IPv4 address written
//! as IPv4-mapped IPv6 (`::ffff:a.b.c.d`) is the IPv4 address it maps.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The network of `ip` in CIDR notation: `"203.0.113.0/24"` for IPv4 (and IPv4-mapped IPv6),
/// `"2001:db8:1:2::/64"` for IPv6.
pub fn ip_prefix(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4_prefix(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4_prefix(v4),
            None => v6_prefix(v6),
        },
    }
}

fn v4_prefix(ip: Ipv4Addr) -> String {
    let network = Ipv4Addr::from(u32::from(ip) & 0xFFFF_FF00);
    format!("{network}/24")
}

fn v6_prefix(ip: Ipv6Addr) -> String {
    let network = Ipv6Addr::from(u128::from(ip) & (u128::MAX << 64));
    format!("{network}/64")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(s: &str) -> String {
        ip_prefix(s.parse().unwrap())
    }

    #[test]
    fn ipv4_is_cut_to_its_24() {
        assert_eq!(prefix("203.0.113.77"), "203.0.113.0/24");
        assert_eq!(prefix("203.0.113.0"), "203.0.113.0/24");
        assert_eq!(prefix("203.0.113.255"), prefix("203.0.113.1"));
        assert_ne!(prefix("203.0.114.1"), prefix("203.0.113.1"));
    }

    #[test]
    fn ipv6_is_cut_to_its_64() {
        assert_eq!(prefix("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), "2001:db8:1:2::/64");
        assert_eq!(prefix("2001:db8:1:2::1"), prefix("2001:db8:1:2:ffff::9"));
        assert_ne!(prefix("2001:db8:1:3::1"), prefix("2001:db8:1:2::1"));
        assert_eq!(prefix("::1"), "::/64");
    }

    #[test]
    fn ipv4_mapped_ipv6_is_treated_as_ipv4() {
        assert_eq!(prefix("::ffff:203.0.113.77"), "203.0.113.0/24");
        assert_eq!(prefix("::ffff:203.0.113.77"), prefix("203.0.113.5"));
    }
}
