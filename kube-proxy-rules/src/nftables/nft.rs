//! Running `nft` the way kube-proxy's knftables does: one `nft -f -`
//! transaction per sync with the text on stdin (atomic: all or nothing),
//! listings as JSON. In the current network namespace or in a named one
//! (tests and benchmarks never touch the root namespace's ruleset).

use std::collections::BTreeSet;
use std::process::Output;

use crate::exec::Runner;
use crate::family::IpFamily;
use crate::nftables::render::SERVICES;

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot run nft: {0}")]
    Spawn(std::io::Error),
    /// `line`: the transaction line nft blamed, when it said which.
    #[error("nft {command} failed ({status}){}: {stderr}", line.as_ref().map(|(n, l)| format!(" at line {n}: `{l}`")).unwrap_or_default())]
    Failed { command: String, status: String, stderr: String, line: Option<(usize, String)> },
    #[error("nft {command}: unreadable output: {reason}")]
    Output { command: String, reason: String },
    /// An element-only transaction sent over netlink failed (nothing applied).
    #[error("element batch over netlink: {0}")]
    Batch(#[from] crate::nftables::netlink::BatchError),
}

/// nft of one network namespace, for table `ip kube-proxy` (or `ip6
/// kube-proxy`, [`Nft::with_family`]).
#[derive(Debug, Clone, Default)]
pub struct Nft {
    runner: Runner,
    family: IpFamily,
    /// The nfnetlink socket of [`Nft::apply_fast`], opened on first use in
    /// the namespace and kept (clones share it).
    socket: Arc<Mutex<Option<BatchSocket>>>,
}

/// The first `<file>:<line>:<columns>: Error: …` of nft's stderr: the line
/// number and the message.
fn blamed_line(stderr: &str) -> Option<(usize, &str)> {
    stderr.lines().find_map(|l| {
        let (head, msg) = l.split_once(": Error: ")?;
        let mut parts = head.rsplitn(3, ':');
        let _columns = parts.next()?;
        let line: usize = parts.next()?.parse().ok()?;
        Some((line, msg))
    })
}

use std::sync::{Arc, Mutex};

use crate::nftables::netlink::{BatchError, BatchSocket, ElementBatch};

impl Nft {
    pub fn current() -> Self {
        Nft { runner: Runner::current(), family: IpFamily::V4, socket: Arc::default() }
    }

    /// The named namespace (`/run/netns/<name>`), through `ip netns exec`.
    pub fn in_netns(name: &str) -> Self {
        Nft { runner: Runner::in_netns(name), family: IpFamily::V4, socket: Arc::default() }
    }

    /// The same namespace, the table of `family`.
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

    fn run(&self, args: &[&str], stdin: Option<&[u8]>) -> Result<Output, NftError> {
        self.runner.run("nft", args, stdin).map_err(NftError::Spawn)
    }

    fn check(&self, args: &[&str], stdin: Option<&str>) -> Result<Output, NftError> {
        let out = self.run(args, stdin.map(str::as_bytes))?;
        if out.status.success() {
            return Ok(out);
        }
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        let line = stdin.and_then(|text| {
            let (n, _) = blamed_line(&stderr)?;
            let l = text.lines().nth(n.checked_sub(1)?)?;
            Some((n, l.to_string()))
        });
        // The blamed line is quoted already: keep only nft's message lines.
        let stderr = match (&line, blamed_line(&stderr)) {
            (Some(_), Some((_, msg))) => msg.to_string(),
            _ => stderr,
        };
        Err(NftError::Failed { command: args.join(" "), status: out.status.to_string(), stderr, line })
    }

    /// Apply one transaction (`nft -f -`): every operation or none.
    pub fn apply(&self, transaction: &str) -> Result<(), NftError> {
        self.check(&["-f", "-"], Some(transaction)).map(|_| ())
    }

    /// Apply one transaction: element-only ones of the endpoint-maps layout
    /// as one netlink batch (see [`crate::nftables::netlink`]), the rest
    /// through [`Nft::apply`]. Every operation or none, either way.
    pub fn apply_fast(&self, transaction: &str) -> Result<(), NftError> {
        let Some(batch) = ElementBatch::parse(transaction, self.family) else {
            return self.apply(transaction);
        };
        let mut cached = self.socket.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let socket = match cached.take() {
            Some(s) => s,
            None => match self.netns() {
                None => BatchSocket::open()?,
                Some(name) => {
                    let path = format!("/run/netns/{name}");
                    let ns =
                        netlink_util::Netns::open(&path).map_err(|e| BatchError::Netns(e.to_string()))?;
                    ns.run_thread(|| Ok(BatchSocket::open()))
                        .map_err(|e| BatchError::Netns(e.to_string()))??
                }
            },
        };
        batch.send(&socket)?;
        // Kept only after a clean exchange (nothing left to read in it).
        *cached = Some(socket);
        Ok(())
    }

    /// The names of one kind of object (`chains`, `sets`, `maps`) in table
    /// `ip kube-proxy` (`nft -t -j list <kind>s ip`); empty if there is no
    /// table. Terse: `list sets` also prints every element otherwise (at
    /// 10,000 services × 10 endpoints a full sync onto an existing table
    /// parsed the 110,000 elements of the hairpin and cluster-ip sets as JSON).
    fn list(&self, kind: &str) -> Result<BTreeSet<String>, NftError> {
        let args = ["-t", "-j", "list", kind, self.family.nft()];
        let out = self.check(&args, None)?;
        let command = args.join(" ");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| NftError::Output { command: command.clone(), reason: e.to_string() })?;
        let items = v.get("nftables").and_then(|n| n.as_array()).ok_or_else(|| NftError::Output {
            command: command.clone(),
            reason: "no \"nftables\" array".into(),
        })?;
        let object = kind.trim_end_matches('s');
        let table = "kube-proxy";
        Ok(items
            .iter()
            .filter_map(|i| i.get(object))
            .filter(|o| o.get("table").and_then(|t| t.as_str()) == Some(table))
            .filter_map(|o| o.get("name").and_then(|n| n.as_str()).map(str::to_string))
            .collect())
    }

    /// The chains of table `ip kube-proxy`.
    pub fn chains(&self) -> Result<BTreeSet<String>, NftError> {
        self.list("chains")
    }

    /// The sets of table `ip kube-proxy` (not the maps).
    pub fn sets(&self) -> Result<BTreeSet<String>, NftError> {
        self.list("sets")
    }

    /// kube-proxy's canary in nftables mode is the table itself: true if the
    /// `services` chain still dispatches through `@service-ips` (false when
    /// the table was deleted or flushed by someone else).
    pub fn table_intact(&self) -> Result<bool, NftError> {
        let chain = format!("{} {SERVICES}", self.family.nft_table());
        let mut args = vec!["list", "chain"];
        args.extend(chain.split(' '));
        let out = self.run(&args, None)?;
        Ok(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("@service-ips"))
    }

    /// `nft list table ip kube-proxy`.
    pub fn list_table(&self) -> Result<String, NftError> {
        let mut args = vec!["list", "table"];
        args.extend(self.family.nft_table().split(' '));
        let out = self.check(&args, None)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_blamed_line_is_found_in_nft_errors() {
        let stderr = "/dev/stdin:2:15-21: Error: Could not process rule: No such file or directory\n\
                      add rule ip t nochain accept\n              ^^^^^^^";
        assert_eq!(blamed_line(stderr), Some((2, "Could not process rule: No such file or directory")));
        assert_eq!(blamed_line("Error: syntax error"), None);
    }
}
