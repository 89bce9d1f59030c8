//! Small value types shared by the link, address and route modules. They keep
//! the pre-1.0 `netlink-packet-route` types out of this crate's public API.

use std::fmt;
use std::str::FromStr;

use crate::error::Error;

/// An Ethernet MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// `ee:ee:ee:ee:ee:ee`: the MAC Calico gives every host-side veth, so
    /// that pods see one gateway MAC whatever node they are on.
    pub const CALICO_HOST: MacAddr = MacAddr([0xee; 6]);

    pub fn octets(&self) -> [u8; 6] {
        self.0
    }

    pub(crate) fn from_slice(b: &[u8]) -> Option<MacAddr> {
        <[u8; 6]>::try_from(b).ok().map(MacAddr)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3], b[4], b[5])
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for MacAddr {
    type Err = Error;
    fn from_str(s: &str) -> Result<MacAddr, Error> {
        let bad =
            || Error::invalid(format!("MAC address {s:?}"), "expected six hex octets like ee:ee:ee:ee:ee:ee");
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in out.iter_mut() {
            let p = parts.next().ok_or_else(bad)?;
            if p.is_empty() || p.len() > 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(out))
    }
}

/// Route / address scope (`RT_SCOPE_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    Universe,
    Site,
    Link,
    Host,
    Nowhere,
    Other(u8),
}

impl From<u8> for Scope {
    fn from(v: u8) -> Scope {
        match v {
            0 => Scope::Universe,
            200 => Scope::Site,
            253 => Scope::Link,
            254 => Scope::Host,
            255 => Scope::Nowhere,
            n => Scope::Other(n),
        }
    }
}

impl From<Scope> for u8 {
    fn from(s: Scope) -> u8 {
        match s {
            Scope::Universe => 0,
            Scope::Site => 200,
            Scope::Link => 253,
            Scope::Host => 254,
            Scope::Nowhere => 255,
            Scope::Other(n) => n,
        }
    }
}

/// `ip route` names: `universe`, `link`, `host`, ... or the number.
impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Universe => f.write_str("universe"),
            Scope::Site => f.write_str("site"),
            Scope::Link => f.write_str("link"),
            Scope::Host => f.write_str("host"),
            Scope::Nowhere => f.write_str("nowhere"),
            Scope::Other(n) => write!(f, "{n}"),
        }
    }
}

/// IPv4 or IPv6, for listing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IpFamily {
    V4,
    V6,
}

/// Check a Linux interface name: 1..=15 bytes, no `/`, whitespace or `:`
/// (the kernel's `dev_valid_name`), and not `.` or `..` (it is also a path
/// component under /proc/sys).
pub fn check_ifname(name: &str) -> Result<(), Error> {
    let bad = |reason: &str| Err(Error::invalid(format!("interface name {name:?}"), reason));
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > 15 {
        return bad("longer than 15 bytes");
    }
    if name == "." || name == ".." {
        return bad("reserved");
    }
    if name.bytes().any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0) {
        return bad("contains '/', ':', NUL or whitespace");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trips_and_rejects_garbage() {
        let m: MacAddr = "ee:ee:ee:ee:ee:ee".parse().unwrap();
        assert_eq!(m, MacAddr::CALICO_HOST);
        let m: MacAddr = "0a:1B:2c:3d:4e:5f".parse().unwrap();
        assert_eq!(m.to_string(), "0a:1b:2c:3d:4e:5f");
        for bad in ["", "ee:ee:ee:ee:ee", "ee:ee:ee:ee:ee:ee:ee", "gg:ee:ee:ee:ee:ee", "eee:e:ee:ee:ee:ee"] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
        assert_eq!(MacAddr::from_slice(&[1, 2, 3]), None);
    }

    #[test]
    fn scope_round_trips() {
        for s in [Scope::Universe, Scope::Site, Scope::Link, Scope::Host, Scope::Nowhere, Scope::Other(7)] {
            assert_eq!(Scope::from(u8::from(s)), s);
        }
    }

    #[test]
    fn interface_names_are_checked() {
        assert!(check_ifname("cali0123456789a").is_ok());
        assert!(check_ifname("eth0.100").is_ok());
        for bad in ["", "cali0123456789ab", ".", "..", "a/b", "a b", "eth0:1"] {
            assert!(check_ifname(bad).is_err(), "{bad}");
        }
    }
}
