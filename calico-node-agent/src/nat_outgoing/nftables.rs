//! natOutgoing in nftables: one table per family, `ip calico-nat-outgoing`
//! and `ip6 calico-nat-outgoing` (kube-proxy's style: a table of our own,
//! never a chain in someone else's), holding Calico's two sets and one
//! postrouting nat chain with Felix's rule. Written as one `nft -f`
//! transaction that replaces the whole table (add, delete, define), so a
//! reader never sees it half-written.

use calico_store::model::IpFamily;

use super::{run, Backend, FamilyPools, NatError};

/// The table's name (in family `ip` and `ip6`).
pub const TABLE: &str = "calico-nat-outgoing";

pub struct Nftables;

fn family_words(f: IpFamily) -> (&'static str, &'static str) {
    match f {
        IpFamily::V4 => ("ip", "ipv4_addr"),
        IpFamily::V6 => ("ip6", "ipv6_addr"),
    }
}

fn set(name: &str, addr_type: &str, nets: &[&ipnetwork::IpNetwork]) -> String {
    let elements = if nets.is_empty() {
        String::new()
    } else {
        let list = nets.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", ");
        format!(" elements = {{ {list} }};")
    };
    // auto-merge: overlapping pools (two documents, one range) are one interval.
    format!("\tset {name} {{ type {addr_type}; flags interval; auto-merge;{elements} }}\n")
}

/// The `nft -f` transaction that makes the family's table exactly this.
pub fn render_table(p: &FamilyPools<'_>, random_fully: bool) -> String {
    let (fam, addr_type) = family_words(p.family);
    let rf = if random_fully { " fully-random" } else { "" };
    let mut out = format!("add table {fam} {TABLE}\ndelete table {fam} {TABLE}\ntable {fam} {TABLE} {{\n");
    out.push_str("\tcomment \"natOutgoing of Calico IP pools (calico-node-agent)\"\n");
    out.push_str(&set("masq-ipam-pools", addr_type, &p.masq));
    out.push_str(&set("all-ipam-pools", addr_type, &p.all));
    out.push_str("\tchain nat-outgoing {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n");
    out.push_str(&format!(
        "\t\t{fam} saddr @masq-ipam-pools {fam} daddr != @all-ipam-pools masquerade{rf} comment \"cali:natOutgoing\"\n"
    ));
    out.push_str("\t}\n}\n");
    out
}

impl Backend for Nftables {
    fn write(&self, p: &FamilyPools<'_>, random_fully: bool) -> Result<(), NatError> {
        run("nft", &["-f", "-"], Some(render_table(p, random_fully).as_bytes())).map(drop)
    }

    /// Our table as `nft list table` prints it (an error when it is gone).
    fn list(&self, family: IpFamily) -> Result<String, NatError> {
        let (fam, _) = family_words(family);
        let out = run("nft", &["list", "table", fam, TABLE], None)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn remove(&self, family: IpFamily) -> Result<(), NatError> {
        let (fam, _) = family_words(family);
        // add + delete: removes the table if it exists, succeeds if not.
        let text = format!("add table {fam} {TABLE}\ndelete table {fam} {TABLE}\n");
        run("nft", &["-f", "-"], Some(text.as_bytes())).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nat_outgoing::NatPools;

    #[test]
    fn the_table_holds_calicos_sets_and_rule() {
        let mut p = NatPools::default();
        p.add("fd00:10::/64".parse().unwrap(), true);
        p.add("fd00:20::/64".parse().unwrap(), false);
        let text = render_table(&p.family(IpFamily::V6).unwrap(), true);
        assert!(text.starts_with("add table ip6 calico-nat-outgoing\ndelete table ip6 calico-nat-outgoing\n"));
        assert!(text.contains("set masq-ipam-pools { type ipv6_addr; flags interval; auto-merge; elements = { fd00:10::/64 }; }"), "{text}");
        assert!(text.contains("elements = { fd00:10::/64, fd00:20::/64 }"), "{text}");
        assert!(
            text.contains("ip6 saddr @masq-ipam-pools ip6 daddr != @all-ipam-pools masquerade fully-random"),
            "{text}"
        );
        assert!(!render_table(&p.family(IpFamily::V6).unwrap(), false).contains("fully-random"));
    }
}
