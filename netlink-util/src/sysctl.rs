//! Network sysctls (`/proc/sys/net/...`) of the calling thread's namespace.
//!
//! `/proc/sys/net` is resolved against the network namespace of the *thread*
//! that opens the file (the kernel looks up `current->nsproxy->net_ns`), not
//! of the process or of whoever mounted /proc. So a thread that has `setns`'d
//! — e.g. inside [`crate::Netns::run`] — reads and writes its namespace's
//! values through the ordinary path; no `/proc/<pid>` indirection is needed.
//! (`tests/sysctl.rs` checks this against `ip netns exec sysctl`.)
//!
//! Calico writes these files rather than using IFLA_AF_SPEC/IFLA_INET_CONF
//! because several of them (`proxy_delay`, `route_localnet` on older kernels,
//! all IPv6 `conf` keys but a few) have no netlink equivalent.

use std::io::Write;
use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::types::check_ifname;

/// One key under `/proc/sys`, such as `net/ipv4/conf/cali1/proxy_arp`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Sysctl(String);

impl Sysctl {
    /// Any key under `/proc/sys/net/`, given as `net/ipv4/ip_forward` (dots
    /// are not accepted as separators: interface names may contain them).
    pub fn new(key: &str) -> Result<Sysctl> {
        let bad = |reason: &str| Err(Error::invalid(format!("sysctl key {key:?}"), reason));
        if !key.starts_with("net/") {
            return bad("must start with net/");
        }
        if key.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
            return bad("empty, '.' or '..' path component");
        }
        Ok(Sysctl(key.to_string()))
    }

    /// `net/ipv4/conf/<ifname>/<leaf>` (`ifname` may be `all` or `default`).
    pub fn ipv4_conf(ifname: &str, leaf: &str) -> Result<Sysctl> {
        check_ifname(ifname)?;
        Sysctl::new(&format!("net/ipv4/conf/{ifname}/{leaf}"))
    }
    /// `net/ipv6/conf/<ifname>/<leaf>`.
    pub fn ipv6_conf(ifname: &str, leaf: &str) -> Result<Sysctl> {
        check_ifname(ifname)?;
        Sysctl::new(&format!("net/ipv6/conf/{ifname}/{leaf}"))
    }
    /// `net/ipv4/neigh/<ifname>/<leaf>`.
    pub fn ipv4_neigh(ifname: &str, leaf: &str) -> Result<Sysctl> {
        check_ifname(ifname)?;
        Sysctl::new(&format!("net/ipv4/neigh/{ifname}/{leaf}"))
    }

    /// `net/ipv4/conf/<if>/proxy_arp`: the host veth answers the pod's ARP for
    /// 169.254.1.1 (an address nobody has) with its own MAC.
    pub fn proxy_arp(ifname: &str) -> Result<Sysctl> {
        Sysctl::ipv4_conf(ifname, "proxy_arp")
    }
    /// `net/ipv4/neigh/<if>/proxy_delay`: answer proxy ARP at once instead of
    /// after a random delay of up to 0.8 s.
    pub fn proxy_delay(ifname: &str) -> Result<Sysctl> {
        Sysctl::ipv4_neigh(ifname, "proxy_delay")
    }
    /// `net/ipv4/conf/<if>/forwarding`.
    pub fn ipv4_forwarding(ifname: &str) -> Result<Sysctl> {
        Sysctl::ipv4_conf(ifname, "forwarding")
    }
    /// `net/ipv4/conf/<if>/route_localnet`: allow 127/8 to be routed (DNAT to
    /// localhost from a pod).
    pub fn route_localnet(ifname: &str) -> Result<Sysctl> {
        Sysctl::ipv4_conf(ifname, "route_localnet")
    }
    /// `net/ipv4/ip_forward`.
    pub fn ip_forward() -> Sysctl {
        Sysctl("net/ipv4/ip_forward".to_string())
    }
    /// `net/ipv6/conf/<if>/proxy_ndp`.
    pub fn ipv6_proxy_ndp(ifname: &str) -> Result<Sysctl> {
        Sysctl::ipv6_conf(ifname, "proxy_ndp")
    }
    /// `net/ipv6/conf/<if>/forwarding`.
    pub fn ipv6_forwarding(ifname: &str) -> Result<Sysctl> {
        Sysctl::ipv6_conf(ifname, "forwarding")
    }
    /// `net/ipv6/conf/<if>/accept_ra`.
    pub fn ipv6_accept_ra(ifname: &str) -> Result<Sysctl> {
        Sysctl::ipv6_conf(ifname, "accept_ra")
    }
    /// `net/ipv6/conf/<if>/accept_dad`: set to 0 before link-up so that the
    /// link-local and pod addresses are usable at once.
    pub fn ipv6_accept_dad(ifname: &str) -> Result<Sysctl> {
        Sysctl::ipv6_conf(ifname, "accept_dad")
    }
    /// `net/ipv6/conf/<if>/disable_ipv6`.
    pub fn ipv6_disable(ifname: &str) -> Result<Sysctl> {
        Sysctl::ipv6_conf(ifname, "disable_ipv6")
    }

    /// The key, e.g. `net/ipv4/ip_forward`.
    pub fn key(&self) -> &str {
        &self.0
    }

    /// The file: `/proc/sys/<key>`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/proc/sys").join(&self.0)
    }

    /// The current value, without the trailing newline.
    pub fn read(&self) -> Result<String> {
        let path = self.path();
        let s = std::fs::read_to_string(&path).map_err(|e| self.error("read", e))?;
        Ok(s.trim_end_matches('\n').to_string())
    }

    /// Write `value` (one write(2), as `echo value >` does).
    pub fn write(&self, value: &str) -> Result<()> {
        let mut f =
            std::fs::OpenOptions::new().write(true).open(self.path()).map_err(|e| self.error("write", e))?;
        f.write_all(value.as_bytes()).map_err(|e| self.error("write", e))
    }

    /// Write `value` unless it is already there (saves a write that would
    /// otherwise trigger kernel notifications, e.g. on `forwarding`).
    pub fn ensure(&self, value: &str) -> Result<()> {
        if self.read()? == value {
            return Ok(());
        }
        self.write(value)
    }

    fn error(&self, op: &'static str, e: std::io::Error) -> Error {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::NotFound {
                op: if op == "read" { "read sysctl" } else { "write sysctl" },
                what: self.0.clone(),
            }
        } else {
            Error::io(format!("{op} sysctl {} (/proc/sys)", self.0), e)
        }
    }
}

impl std::fmt::Display for Sysctl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_built_and_checked() {
        assert_eq!(Sysctl::proxy_arp("cali1").unwrap().key(), "net/ipv4/conf/cali1/proxy_arp");
        assert_eq!(Sysctl::proxy_delay("cali1").unwrap().key(), "net/ipv4/neigh/cali1/proxy_delay");
        assert_eq!(Sysctl::ipv6_accept_dad("eth0.100").unwrap().key(), "net/ipv6/conf/eth0.100/accept_dad");
        assert_eq!(Sysctl::ip_forward().path(), PathBuf::from("/proc/sys/net/ipv4/ip_forward"));
        assert!(Sysctl::proxy_arp("../../kernel").is_err());
        assert!(Sysctl::new("kernel/hostname").is_err());
        assert!(Sysctl::new("net/ipv4/../../kernel/x").is_err());
        assert!(Sysctl::new("net//x").is_err());
    }

    #[test]
    fn a_missing_interface_key_is_not_found_and_named() {
        let e = Sysctl::proxy_arp("nlu-nonexist0").unwrap().read().unwrap_err();
        assert!(e.is_not_found(), "{e}");
        assert!(e.to_string().contains("net/ipv4/conf/nlu-nonexist0/proxy_arp"), "{e}");
    }
}
