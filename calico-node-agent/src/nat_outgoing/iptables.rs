//! natOutgoing in iptables: chain `cali-nat-outgoing` of the nat table
//! (Felix's name), one `RETURN` per pool for destinations inside the pools,
//! then one `MASQUERADE` per natOutgoing pool for its sources; the same as
//! Felix's one rule over its two ipsets, without needing ipset. Jumped to
//! from the top of `POSTROUTING` by one rule carrying a comment.

use calico_store::model::IpFamily;

use super::{run, Backend, FamilyPools, NatError};

/// The chain's name (Felix's).
pub const CHAIN: &str = "cali-nat-outgoing";
/// The comment of the `POSTROUTING` jump, which identifies it.
pub const JUMP_COMMENT: &str = "cali:nat-outgoing";

pub struct Iptables;

fn tools(family: IpFamily) -> (&'static str, &'static str) {
    match family {
        IpFamily::V4 => ("iptables", "iptables-restore"),
        IpFamily::V6 => ("ip6tables", "ip6tables-restore"),
    }
}

/// The `iptables-restore --noflush` input for `cali_nat_outgoing`: the chain
/// declared (so replaced) and filled; nothing else in the table is touched.
pub fn render_cali_nat_outgoing(p: &FamilyPools<'_>, random_fully: bool) -> String {
    let mut out = format!("*nat\n:{CHAIN} - [0:0]\n");
    for net in &p.all {
        out.push_str(&format!("-A {CHAIN} -d {net} -m comment --comment \"cali:to-pool\" -j RETURN\n"));
    }
    let rf = if random_fully { " --random-fully" } else { "" };
    for net in &p.masq {
        out.push_str(&format!(
            "-A {CHAIN} -s {net} -m comment --comment \"cali:natOutgoing pool\" -j MASQUERADE{rf}\n"
        ));
    }
    out.push_str("COMMIT\n");
    out
}

/// The `POSTROUTING` jump's rule spec.
fn jump() -> [&'static str; 6] {
    ["-m", "comment", "--comment", JUMP_COMMENT, "-j", CHAIN]
}

impl Backend for Iptables {
    fn write(&self, p: &FamilyPools<'_>, random_fully: bool) -> Result<(), NatError> {
        let (iptables, restore) = tools(p.family);
        let rules = render_cali_nat_outgoing(p, random_fully);
        run(restore, &["-w", "--noflush"], Some(rules.as_bytes()))?;
        let mut check = vec!["-w", "-t", "nat", "-C", "POSTROUTING"];
        check.extend(jump());
        if run(iptables, &check, None).is_err() {
            let mut insert = vec!["-w", "-t", "nat", "-I", "POSTROUTING", "1"];
            insert.extend(jump());
            run(iptables, &insert, None)?;
        }
        Ok(())
    }

    /// Our chain's rules and our jump(s) from `POSTROUTING`, as `-S` prints
    /// them (an error when the chain is gone).
    fn list(&self, family: IpFamily) -> Result<String, NatError> {
        let (iptables, _) = tools(family);
        let chain = run(iptables, &["-w", "-t", "nat", "-S", CHAIN], None)?;
        let post = run(iptables, &["-w", "-t", "nat", "-S", "POSTROUTING"], None)?;
        let mut out = String::from_utf8_lossy(&chain.stdout).into_owned();
        for jump in String::from_utf8_lossy(&post.stdout).lines().filter(|l| l.contains(JUMP_COMMENT)) {
            out.push_str(jump);
            out.push('\n');
        }
        Ok(out)
    }

    fn remove(&self, family: IpFamily) -> Result<(), NatError> {
        let (iptables, restore) = tools(family);
        let mut delete = vec!["-w", "-t", "nat", "-D", "POSTROUTING"];
        delete.extend(jump());
        // Every copy of the jump (one left would keep the chain in use).
        // Fails once none is left, or when there is no chain to jump to.
        while run(iptables, &delete, None).is_ok() {}
        // Declare (creating or flushing) then delete: removes the chain
        // whether or not it exists. (Asking first does not work: the
        // nf_tables iptables 1.8.9 calls a missing chain "incompatible".)
        let text = format!("*nat\n:{CHAIN} - [0:0]\n-X {CHAIN}\nCOMMIT\n");
        run(restore, &["-w", "--noflush"], Some(text.as_bytes())).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nat_outgoing::NatPools;

    #[test]
    fn the_chain_returns_for_pools_then_masquerades_natoutgoing_sources() {
        let mut p = NatPools::default();
        p.add("10.244.0.0/16".parse().unwrap(), true);
        p.add("10.96.0.0/16".parse().unwrap(), false);
        let text = render_cali_nat_outgoing(&p.family(IpFamily::V4).unwrap(), true);
        assert_eq!(
            text,
            "*nat\n:cali-nat-outgoing - [0:0]\n\
             -A cali-nat-outgoing -d 10.96.0.0/16 -m comment --comment \"cali:to-pool\" -j RETURN\n\
             -A cali-nat-outgoing -d 10.244.0.0/16 -m comment --comment \"cali:to-pool\" -j RETURN\n\
             -A cali-nat-outgoing -s 10.244.0.0/16 -m comment --comment \"cali:natOutgoing pool\" -j MASQUERADE --random-fully\n\
             COMMIT\n"
        );
        assert!(!render_cali_nat_outgoing(&p.family(IpFamily::V4).unwrap(), false).contains("random"));
    }
}
