//! Running iptables the way kube-proxy's `utiliptables` does: every call
//! waits for the xtables lock (`-w 5 -W 100000`), restores go through
//! `iptables-restore --noflush --counters` on stdin, chains are created with
//! `-N` (an existing chain is fine) and jump rules are checked with `-C`
//! before being prepended with `-I`.
//!
//! Commands run in the caller's network namespace, or, when [`Iptables::in_netns`]
//! names one, inside it through `ip netns exec` (tests never touch the root
//! namespace's firewall).

use std::collections::BTreeSet;
use std::process::Output;

use crate::exec::Runner;
use crate::family::IpFamily;
use crate::names::*;

/// The xtables lock wait flags (iptables ≥ 1.6.2).
pub const WAIT_FLAGS: [&str; 4] = ["-w", "5", "-W", "100000"];

#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    #[error("cannot run {program}: {source}")]
    Spawn { program: String, source: std::io::Error },
    #[error("{command} failed ({status}): {stderr}")]
    Failed { command: String, status: String, stderr: String },
}

/// One jump from a built-in chain into ours (`iptablesJumpChains`).
pub struct JumpChain {
    pub table: &'static str,
    pub dst_chain: &'static str,
    pub src_chain: &'static str,
    pub comment: &'static str,
    pub extra_args: &'static [&'static str],
}

const CT_NEW: &[&str] = &["-m", "conntrack", "--ctstate", "NEW"];

/// In kube-proxy's order; each is prepended, so the last ends up first.
pub const JUMP_CHAINS: &[JumpChain] = &[
    JumpChain {
        table: "filter",
        dst_chain: KUBE_EXTERNAL_SERVICES,
        src_chain: "INPUT",
        comment: "kubernetes externally-visible service portals",
        extra_args: CT_NEW,
    },
    JumpChain {
        table: "filter",
        dst_chain: KUBE_EXTERNAL_SERVICES,
        src_chain: "FORWARD",
        comment: "kubernetes externally-visible service portals",
        extra_args: CT_NEW,
    },
    JumpChain {
        table: "filter",
        dst_chain: KUBE_NODEPORTS,
        src_chain: "INPUT",
        comment: "kubernetes health check service ports",
        extra_args: &[],
    },
    JumpChain {
        table: "filter",
        dst_chain: KUBE_SERVICES,
        src_chain: "FORWARD",
        comment: "kubernetes service portals",
        extra_args: CT_NEW,
    },
    JumpChain {
        table: "filter",
        dst_chain: KUBE_SERVICES,
        src_chain: "OUTPUT",
        comment: "kubernetes service portals",
        extra_args: CT_NEW,
    },
    JumpChain {
        table: "filter",
        dst_chain: KUBE_FORWARD,
        src_chain: "FORWARD",
        comment: "kubernetes forwarding rules",
        extra_args: &[],
    },
    JumpChain {
        table: "filter",
        dst_chain: KUBE_PROXY_FIREWALL,
        src_chain: "INPUT",
        comment: "kubernetes load balancer firewall",
        extra_args: CT_NEW,
    },
    JumpChain {
        table: "filter",
        dst_chain: KUBE_PROXY_FIREWALL,
        src_chain: "OUTPUT",
        comment: "kubernetes load balancer firewall",
        extra_args: CT_NEW,
    },
    JumpChain {
        table: "filter",
        dst_chain: KUBE_PROXY_FIREWALL,
        src_chain: "FORWARD",
        comment: "kubernetes load balancer firewall",
        extra_args: CT_NEW,
    },
    JumpChain {
        table: "nat",
        dst_chain: KUBE_SERVICES,
        src_chain: "OUTPUT",
        comment: "kubernetes service portals",
        extra_args: &[],
    },
    JumpChain {
        table: "nat",
        dst_chain: KUBE_SERVICES,
        src_chain: "PREROUTING",
        comment: "kubernetes service portals",
        extra_args: &[],
    },
    JumpChain {
        table: "nat",
        dst_chain: KUBE_POSTROUTING,
        src_chain: "POSTROUTING",
        comment: "kubernetes postrouting rules",
        extra_args: &[],
    },
    // kubelet's copy of the anti-martian chain, without a comment.
    JumpChain { table: "filter", dst_chain: KUBE_FIREWALL, src_chain: "INPUT", comment: "", extra_args: &[] },
    JumpChain {
        table: "filter",
        dst_chain: KUBE_FIREWALL,
        src_chain: "OUTPUT",
        comment: "",
        extra_args: &[],
    },
];

/// The tables that hold a canary chain.
pub const CANARY_TABLES: [&str; 3] = ["mangle", "nat", "filter"];

/// iptables of one network namespace and one family (`iptables*` for IPv4,
/// `ip6tables*` for IPv6: the same chains in the other family's tables).
#[derive(Debug, Clone, Default)]
pub struct Iptables {
    runner: Runner,
    family: IpFamily,
}

impl Iptables {
    /// The current network namespace.
    pub fn current() -> Self {
        Iptables { runner: Runner::current(), family: IpFamily::V4 }
    }
    /// A named namespace (`/run/netns/<name>`), through `ip netns exec`.
    pub fn in_netns(name: &str) -> Self {
        Iptables { runner: Runner::in_netns(name), family: IpFamily::V4 }
    }
    /// The same namespace, the tools of `family` (`ip6tables*` for IPv6).
    pub fn with_family(mut self, family: IpFamily) -> Self {
        self.family = family;
        self
    }
    pub fn family(&self) -> IpFamily {
        self.family
    }

    pub fn netns(&self) -> Option<&str> {
        self.runner.netns()
    }

    fn run(&self, program: &str, args: &[&str], stdin: Option<&[u8]>) -> Result<Output, IptablesError> {
        self.runner
            .run(program, args, stdin)
            .map_err(|source| IptablesError::Spawn { program: program.to_string(), source })
    }

    fn check(&self, program: &str, args: &[&str], stdin: Option<&[u8]>) -> Result<Output, IptablesError> {
        let out = self.run(program, args, stdin)?;
        if out.status.success() {
            return Ok(out);
        }
        Err(IptablesError::Failed {
            command: format!("{program} {}", args.join(" ")),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }

    /// `iptables-restore -w 5 -W 100000 --noflush --counters` with `payload`
    /// on stdin: one transaction for every table in it.
    pub fn restore(&self, payload: &str) -> Result<(), IptablesError> {
        self.restore_with(self.family.iptables_restore(), payload)
    }

    /// [`Iptables::restore`] with another restore binary (e.g. `iptables-legacy-restore`).
    pub fn restore_with(&self, program: &str, payload: &str) -> Result<(), IptablesError> {
        let mut args = WAIT_FLAGS.to_vec();
        args.extend(["--noflush", "--counters"]);
        self.check(program, &args, Some(payload.as_bytes())).map(|_| ())
    }

    /// `iptables-save -t <table>` (`ip6tables-save` for IPv6).
    pub fn save(&self, table: &str) -> Result<String, IptablesError> {
        let out = self.check(self.family.iptables_save(), &["-t", table], None)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The chains of a table (`:CHAIN` lines of iptables-save), read as
    /// the dump streams by (see [`crate::exec::Runner::run_lines`]).
    pub fn chains(&self, table: &str) -> Result<BTreeSet<String>, IptablesError> {
        self.chains_where(table, |_| true)
    }

    /// The chains of a table that `keep` keeps (the others are never held).
    pub fn chains_where(
        &self,
        table: &str,
        keep: impl Fn(&str) -> bool,
    ) -> Result<BTreeSet<String>, IptablesError> {
        let program = self.family.iptables_save();
        let args = ["-t", table];
        let mut chains = BTreeSet::new();
        let (status, stderr) = self
            .runner
            .run_lines(program, &args, |l| {
                if let Some(c) = chain_of_save_line(l).filter(|c| keep(c)) {
                    chains.insert(c.to_string());
                }
            })
            .map_err(|source| IptablesError::Spawn { program: program.to_string(), source })?;
        if !status.success() {
            return Err(IptablesError::Failed {
                command: format!("{program} {}", args.join(" ")),
                status: status.to_string(),
                stderr: String::from_utf8_lossy(&stderr).trim().to_string(),
            });
        }
        Ok(chains)
    }

    /// Create a chain unless it exists (`EnsureChain`). Returns true if created.
    pub fn ensure_chain(&self, table: &str, chain: &str) -> Result<bool, IptablesError> {
        let mut args = WAIT_FLAGS.to_vec();
        args.extend(["-t", table, "-N", chain]);
        let out = self.run(self.family.iptables(), &args, None)?;
        if out.status.success() {
            return Ok(true);
        }
        // `-N` exits 1 (iptables' OTHER_PROBLEM) when the chain exists, as
        // kube-proxy's EnsureChain relies on; whether it does is asked of
        // the kernel, not read from iptables' message.
        if out.status.code() == Some(1) && self.chain_exists(table, chain)? {
            return Ok(false);
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        Err(IptablesError::Failed {
            command: format!("{} {}", self.family.iptables(), args.join(" ")),
            status: out.status.to_string(),
            stderr: stderr.trim().to_string(),
        })
    }

    /// Whether a chain exists.
    pub fn chain_exists(&self, table: &str, chain: &str) -> Result<bool, IptablesError> {
        let mut args = WAIT_FLAGS.to_vec();
        args.extend(["-t", table, "-S", chain, "1"]);
        let out = self.run(self.family.iptables(), &args, None)?;
        Ok(out.status.success())
    }

    /// Prepend a rule unless `-C` finds it (`EnsureRule(Prepend)`). Returns true if added.
    pub fn ensure_rule_prepend(
        &self,
        table: &str,
        chain: &str,
        rule: &[&str],
    ) -> Result<bool, IptablesError> {
        let mut args = WAIT_FLAGS.to_vec();
        args.extend(["-t", table, "-C", chain]);
        args.extend_from_slice(rule);
        if self.run(self.family.iptables(), &args, None)?.status.success() {
            return Ok(false);
        }
        let mut args = WAIT_FLAGS.to_vec();
        args.extend(["-t", table, "-I", chain]);
        args.extend_from_slice(rule);
        self.check(self.family.iptables(), &args, None).map(|_| true)
    }

    /// The jump rules from the built-in chains, and the chains they jump to.
    pub fn ensure_jump_rules(&self) -> Result<usize, IptablesError> {
        let mut added = 0;
        for j in JUMP_CHAINS {
            self.ensure_chain(j.table, j.dst_chain)?;
            let mut rule: Vec<&str> = j.extra_args.to_vec();
            if !j.comment.is_empty() {
                rule.extend(["-m", "comment", "--comment", j.comment]);
            }
            rule.extend(["-j", j.dst_chain]);
            added += self.ensure_rule_prepend(j.table, j.src_chain, &rule)? as usize;
        }
        Ok(added)
    }

    /// Create the (empty) canary chains.
    pub fn ensure_canary(&self) -> Result<(), IptablesError> {
        for t in CANARY_TABLES {
            self.ensure_chain(t, KUBE_PROXY_CANARY)?;
        }
        Ok(())
    }

    /// True if any canary chain is gone (someone flushed the firewall).
    pub fn canary_missing(&self) -> Result<bool, IptablesError> {
        for t in CANARY_TABLES {
            if !self.chain_exists(t, KUBE_PROXY_CANARY)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// `net.ipv4.conf.all.route_localnet=1` in this namespace (localhost NodePorts).
    pub fn enable_route_localnet(&self) -> Result<(), IptablesError> {
        self.check("sh", &["-c", "echo 1 > /proc/sys/net/ipv4/conf/all/route_localnet"], None).map(|_| ())
    }

    /// `net.netfilter.nf_conntrack_tcp_be_liberal` ≠ 0 in this namespace.
    pub fn conntrack_tcp_liberal(&self) -> bool {
        self.run("cat", &["/proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal"], None)
            .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() != "0")
            .unwrap_or(false)
    }

    /// MASQUERADE `--random-fully` needs iptables ≥ 1.6.2.
    pub fn has_random_fully(&self) -> bool {
        let Ok(out) = self.run(self.family.iptables(), &["--version"], None) else { return false };
        let text = String::from_utf8_lossy(&out.stdout);
        let version = text.split_whitespace().find(|w| w.starts_with('v')).unwrap_or("v0");
        let nums: Vec<u32> =
            version.trim_start_matches('v').split('.').map(|n| n.parse().unwrap_or(0)).collect();
        let v = (
            nums.first().copied().unwrap_or(0),
            nums.get(1).copied().unwrap_or(0),
            nums.get(2).copied().unwrap_or(0),
        );
        v >= (1, 6, 2)
    }
}

/// The chain an iptables-save line declares (`:KUBE-SERVICES - [0:0]`).
fn chain_of_save_line(line: &str) -> Option<&str> {
    line.strip_prefix(':')?.split_whitespace().next()
}
