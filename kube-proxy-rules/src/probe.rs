//! Whether a family's backend can work on this node, probed once before its
//! proxier first runs. kube-proxy runs a family only when its backend works
//! (`ip6tables` present, or `nft` able to make an `ip6` table) and falls back
//! to single-stack otherwise; a proxier for a family the node cannot use
//! would fail or write rules nothing ever matches on every sync.

use crate::cli::ProxyMode;
use crate::exec::Runner;
use crate::family::IpFamily;
use crate::iptables::ipt::WAIT_FLAGS;

/// Why `family` cannot be proxied here, or `None` if it can. Runs in the
/// current network namespace (as the syncers do). IPv4 is not probed: it is
/// the primary family whenever it has anything, and its failures are errors.
pub fn unavailable(runner: &Runner, mode: ProxyMode, family: IpFamily) -> Option<String> {
    if family == IpFamily::V4 {
        return None;
    }
    // `/proc/sys/net` shows the reading thread's namespace: the target's.
    let sysctl = "/proc/sys/net/ipv6/conf/all/disable_ipv6";
    match std::fs::read_to_string(sysctl) {
        Ok(v) if v.trim() == "1" => return Some(format!("{sysctl} is 1")),
        Ok(_) => {}
        Err(e) => return Some(format!("{sysctl}: {e} (IPv6 disabled in the kernel)")),
    }
    let check = format!("add table {}\n", family.nft_table());
    // (program, arguments, stdin)
    type Probe<'a> = (&'a str, Vec<&'a str>, Option<&'a [u8]>);
    let probes: Vec<Probe> = match mode {
        ProxyMode::Iptables => {
            let mut list = WAIT_FLAGS.to_vec();
            list.extend(["-t", "nat", "-n", "-L", "POSTROUTING"]);
            vec![(family.iptables_restore(), vec!["--version"], None), (family.iptables(), list, None)]
        }
        // A check-only transaction: nothing is created.
        ProxyMode::Nftables => {
            vec![("nft", vec!["-c", "-f", "-"], Some(check.as_bytes()))]
        }
    };
    for (program, args, stdin) in probes {
        let shown = format!("{program} {}", args.join(" "));
        match runner.run(program, &args, stdin) {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                let stderr = String::from_utf8_lossy(&out.stderr);
                return Some(format!("`{shown}` failed ({}): {}", out.status, stderr.trim()));
            }
            Err(e) => return Some(format!("`{shown}`: {e}")),
        }
    }
    None
}

/// The warning for a family skipped because of [`unavailable`].
pub fn skipped_warning(family: IpFamily, reason: &str) -> String {
    format!(
        "{family} services present but {family} is unavailable on this node: running \
         single-stack ({reason})"
    )
}
