//! The client's address: the socket peer, or the `X-Forwarded-For` entry just before
//! the nearest trusted proxy when the peer is one.

use std::net::IpAddr;

/// An IP network (`10.0.0.0/8`, `::1/128`, or a bare address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Cidr {
    fn parse(text: &str) -> Option<Self> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, p.parse::<u8>().ok()?),
            None => {
                let a = text.parse::<IpAddr>().ok()?;
                (a, if a.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Self { addr, prefix })
    }

    /// Whether the range reaches past this site: it holds addresses outside private,
    /// loopback, link-local and shared (CGNAT) space, and is wider than a /24 (IPv4) or
    /// a /48 (IPv6), so it is no list of one's own load balancers (`0.0.0.0/0`, `::/0`).
    pub fn covers_public_networks(&self) -> bool {
        // `::ffff:a.b.c.d/n` is the IPv4 range a.b.c.d/(n - 96).
        if let IpAddr::V6(v6) = self.addr
            && self.prefix >= 96
            && let Some(v4) = v6.to_ipv4_mapped()
        {
            return Cidr {
                addr: IpAddr::V4(v4),
                prefix: self.prefix - 96,
            }
            .covers_public_networks();
        }
        const INTERNAL: [&str; 9] = [
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "127.0.0.0/8",
            "169.254.0.0/16",
            "100.64.0.0/10",
            "::1/128",
            "fc00::/7",
            "fe80::/10",
        ];
        let wide = match self.addr {
            IpAddr::V4(_) => self.prefix < 24,
            IpAddr::V6(_) => self.prefix < 48,
        };
        wide && !INTERNAL
            .iter()
            .filter_map(|r| Cidr::parse(r))
            .any(|r| r.prefix <= self.prefix && r.contains(self.addr))
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let (net, ip, bits) = match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) => (
                u128::from(u32::from(n)) << 96,
                u128::from(u32::from(i)) << 96,
                self.prefix,
            ),
            (IpAddr::V6(n), IpAddr::V6(i)) => (u128::from(n), u128::from(i), self.prefix),
            _ => return false,
        };
        let mask = if bits == 0 {
            0
        } else {
            u128::MAX << (128 - u32::from(bits))
        };
        net & mask == ip & mask
    }
}

/// Parses a comma-separated list; the error names the first bad entry.
pub fn parse_proxies(text: &str) -> Result<Vec<Cidr>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| Cidr::parse(t).ok_or_else(|| t.to_owned()))
        .collect()
}

/// The client address: walk `X-Forwarded-For` from the right while the hop is a
/// trusted proxy; the first untrusted hop is the client. Without a trusted peer the
/// header is ignored (anyone can send it).
pub fn resolve(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[Cidr]) -> IpAddr {
    // `::ffff:10.0.0.2` (an IPv4 peer on an IPv6 socket) is 10.0.0.2.
    let peer = peer.to_canonical();
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip.to_canonical()));
    if !is_trusted(peer) {
        return peer;
    }
    let mut client = peer;
    if let Some(header) = forwarded_for {
        for hop in header.rsplit(',').map(str::trim) {
            let Ok(ip) = hop.parse::<IpAddr>() else { break };
            client = ip.to_canonical();
            if !is_trusted(ip) {
                break;
            }
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))
    }

    #[test]
    fn cidrs_match_their_networks() {
        let net = parse_proxies("10.0.0.0/8, 192.168.1.7, ::1").unwrap_or_default();
        assert!(net[0].contains(ip("10.2.3.4")) && !net[0].contains(ip("11.0.0.1")));
        assert!(net[1].contains(ip("192.168.1.7")) && !net[1].contains(ip("192.168.1.8")));
        assert!(net[2].contains(ip("::1")) && !net[2].contains(ip("127.0.0.1")));
        assert_eq!(parse_proxies("10.0.0.0/33"), Err("10.0.0.0/33".to_owned()));
        assert_eq!(parse_proxies("proxy.local"), Err("proxy.local".to_owned()));
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted = parse_proxies("10.0.0.0/8").unwrap_or_default();
        assert_eq!(
            resolve(ip("203.0.113.9"), Some("1.2.3.4"), &trusted),
            ip("203.0.113.9"),
            "spoofed header ignored"
        );
        assert_eq!(
            resolve(ip("10.0.0.2"), Some("1.2.3.4"), &trusted),
            ip("1.2.3.4")
        );
        assert_eq!(
            resolve(ip("10.0.0.2"), Some("6.6.6.6, 1.2.3.4, 10.0.0.5"), &trusted),
            ip("1.2.3.4"),
            "the client prepends what it likes"
        );
        assert_eq!(resolve(ip("10.0.0.2"), None, &trusted), ip("10.0.0.2"));
        assert_eq!(
            resolve(ip("10.0.0.2"), Some("garbage"), &trusted),
            ip("10.0.0.2")
        );
    }
}
