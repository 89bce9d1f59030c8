//! Command line: kube-proxy's flag names and defaults, hand-parsed.
//!
//! ```text
//! kube-proxy-rules render|sync|run|bench [flags] [FILE|DIR]...
//! ```

use std::net::{IpAddr, Ipv4Addr};

use crate::family::IpFamily;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use calico_store::{Datastore, DatastoreConfig};
use ipnetwork::IpNetwork;

use crate::config::{masquerade_mark, NodeConfig};
use crate::inputs::{self, Loaded};
use crate::iptables::Iptables;
use crate::iptables::IptablesConfig;
use crate::model::service::DEFAULT_SERVICE_CIDR;
use crate::nftables::NftablesConfig;

pub const USAGE: &str = "\
usage: kube-proxy-rules <command> [flags] [FILE|DIR]...

commands:
  render   print what kube-proxy would write: the iptables-restore payload (filter + nat),
           or with --proxy-mode nftables the `nft -f` transaction for table ip kube-proxy
  sync     apply it once (full sync: jump rules, canary, restore, stale chains; or the
           whole kube-proxy table in one nft transaction)
  run      keep syncing when the inputs or the pod records change (partial syncs)
  bench    synthetic scale benchmark (see --services/--endpoints)

inputs: Service, EndpointSlice, Pod, Deployment manifests (YAML or JSON, Lists too),
        files or directories (*.yaml, *.yml, *.json)

node flags (kube-proxy's names and defaults):
  --proxy-mode iptables|nftables      default iptables
  --hostname-override NAME            node name (default: the host name)
  --node-ip IP[,IP]                   node IP(s), one per family, repeatable
  --cluster-cidr CIDR[,CIDR]          pod CIDR(s) for the local-traffic detector (one per family)
  --iptables-masquerade-bit N         default 14
  --masquerade-all[=BOOL]             default false
  --iptables-localhost-nodeports[=BOOL]  default true
  --nodeport-addresses CIDR[,CIDR]    default: all local addresses (iptables), the
                                      --node-ip addresses (nftables, kube-proxy's 'primary');
                                      a family with no CIDR listed accepts on all its addresses
  --service-cluster-ip-range CIDR[,CIDR]  one per family, primary first: ClusterIPs for
                                      manifests without one (default 10.96.0.0/12; no IPv6)

IPv6 and dual-stack: one proxier per family, as kube-proxy's MetaProxier. A family is
synced only when it has services or a --node-ip; IPv6 goes to ip6tables-restore or
table ip6 kube-proxy.
datastore (pod records for selector-based services without EndpointSlices):
  --datastore-type file|etcdv3        env DATASTORE_TYPE
  --datastore-path DIR                file store directory
  --etcd-endpoints URL[,URL]          env ETCD_ENDPOINTS
sync/run:
  --dry-run                           show which chains a sync would rewrite; apply nothing
  --sync-period DUR                   default 30s (periodic sync, canary check)
  --min-sync-period DUR               default 1s
  --rewrite-top-level-chains          partial syncs rewrite KUBE-SERVICES etc. even when
                                      unchanged (kube-proxy's exact partial payloads)
render:
  --canonical                         print in kube-proxy's canonical test order
bench:
  --services N (10000) --endpoints N (10) --no-restore
  --restore-command PROG              default iptables-restore (e.g. iptables-legacy-restore)
  --proxy-mode nftables               time `nft -f` instead (the iptables renders of the
                                      same state are printed alongside, without a restore)
";

/// `--proxy-mode`: which kube-proxy proxier's rules are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProxyMode {
    #[default]
    Iptables,
    Nftables,
}

impl ProxyMode {
    pub fn parse(v: &str) -> Result<Self, String> {
        match v {
            "iptables" | "" => Ok(ProxyMode::Iptables),
            "nftables" => Ok(ProxyMode::Nftables),
            other => Err(format!("--proxy-mode: expected iptables or nftables, got {other:?}")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Render,
    Sync,
    Run,
    Bench,
}

/// Parsed command line.
#[derive(Debug, Clone)]
pub struct Args {
    pub command: Command,
    pub proxy_mode: ProxyMode,
    pub inputs: Vec<PathBuf>,
    pub hostname: Option<String>,
    pub node_ips: Vec<IpAddr>,
    /// `--cluster-cidr`: at most one per family (the first of each).
    pub cluster_cidrs: Vec<IpNetwork>,
    pub masquerade_bit: u32,
    pub masquerade_all: bool,
    pub localhost_nodeports: bool,
    pub nodeport_addresses: Vec<String>,
    /// `--service-cluster-ip-range`: at most one per family, primary first.
    pub service_cidrs: Vec<IpNetwork>,
    pub datastore: Option<DatastoreConfig>,
    pub dry_run: bool,
    pub rewrite_top_level: bool,
    pub canonical: bool,
    pub sync_period: Duration,
    pub min_sync_period: Duration,
    pub bench_services: usize,
    pub bench_endpoints: usize,
    pub bench_restore: bool,
    pub bench_restore_command: String,
}

fn parse_bool(flag: &str, v: &str) -> Result<bool, String> {
    match v {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(format!("{flag}: expected true or false, got {v:?}")),
    }
}

/// `30s`, `1m`, `500ms`, `1h`, or plain seconds.
pub fn parse_duration(flag: &str, v: &str) -> Result<Duration, String> {
    let err = || format!("{flag}: invalid duration {v:?} (e.g. 30s, 1m, 500ms)");
    let (num, mult_ms) = if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = v.strip_suffix('m') {
        (n, 60_000.0)
    } else if let Some(n) = v.strip_suffix('h') {
        (n, 3_600_000.0)
    } else {
        (v, 1000.0)
    };
    let n: f64 = num.parse().map_err(|_| err())?;
    if !n.is_finite() || n < 0.0 {
        return Err(err());
    }
    Ok(Duration::from_millis((n * mult_ms) as u64))
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Args {
    pub fn parse(argv: &[String]) -> Result<Args, String> {
        let mut it = argv.iter();
        let command = match it.next().map(String::as_str) {
            Some("render") => Command::Render,
            Some("sync") => Command::Sync,
            Some("run") => Command::Run,
            Some("bench") => Command::Bench,
            Some("-h" | "--help" | "help") | None => return Err(USAGE.to_string()),
            Some(other) => return Err(format!("unknown command {other:?}\n\n{USAGE}")),
        };
        let mut a = Args {
            command,
            proxy_mode: ProxyMode::default(),
            inputs: Vec::new(),
            hostname: None,
            node_ips: Vec::new(),
            cluster_cidrs: Vec::new(),
            masquerade_bit: 14,
            masquerade_all: false,
            localhost_nodeports: true,
            nodeport_addresses: Vec::new(),
            service_cidrs: vec![DEFAULT_SERVICE_CIDR.parse().map_err(|e| format!("{e}"))?],
            datastore: None,
            dry_run: false,
            rewrite_top_level: false,
            canonical: false,
            sync_period: Duration::from_secs(30),
            min_sync_period: Duration::from_secs(1),
            bench_services: 10_000,
            bench_endpoints: 10,
            bench_restore: true,
            bench_restore_command: "iptables-restore".into(),
        };
        let mut ds = DatastoreConfig {
            datastore_type: env("DATASTORE_TYPE"),
            etcd_endpoints: env("ETCD_ENDPOINTS"),
            ..Default::default()
        };
        let mut ds_configured = ds.datastore_type.is_some() || ds.etcd_endpoints.is_some();
        while let Some(arg) = it.next() {
            if !arg.starts_with("--") {
                a.inputs.push(PathBuf::from(arg));
                continue;
            }
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) => (f, Some(v.to_string())),
                None => (arg.as_str(), None),
            };
            // Boolean flags take an optional `=value`; the others a value.
            let boolean =
                |inline: &Option<String>| inline.as_deref().map(|v| parse_bool(flag, v)).unwrap_or(Ok(true));
            let mut value = || -> Result<String, String> {
                match &inline {
                    Some(v) => Ok(v.clone()),
                    None => it.next().cloned().ok_or_else(|| format!("{flag} needs a value")),
                }
            };
            match flag {
                "--proxy-mode" => a.proxy_mode = ProxyMode::parse(&value()?)?,
                "--hostname-override" => a.hostname = Some(value()?),
                "--node-ip" => {
                    for v in value()?.split(',').filter(|s| !s.is_empty()) {
                        // As kube-proxy (ParseIPSloppy): `::ffff:a.b.c.d` is the IPv4 address.
                        a.node_ips.push(
                            crate::model::service::parse_ip_sloppy(v.trim())
                                .ok_or_else(|| format!("--node-ip: invalid IP {v:?}"))?,
                        );
                    }
                }
                "--cluster-cidr" => {
                    for v in value()?.split(',').filter(|s| !s.is_empty()) {
                        match v.trim().parse::<IpNetwork>() {
                            Ok(n) if !a.cluster_cidrs.iter().any(|c| c.is_ipv4() == n.is_ipv4()) => {
                                a.cluster_cidrs.push(n)
                            }
                            Ok(_) => {}
                            Err(_) => return Err(format!("--cluster-cidr: invalid CIDR {v:?}")),
                        }
                    }
                }
                "--iptables-masquerade-bit" => {
                    let v = value()?;
                    a.masquerade_bit = v
                        .parse()
                        .ok()
                        .filter(|b| *b <= 31)
                        .ok_or_else(|| format!("--iptables-masquerade-bit: expected 0..31, got {v:?}"))?;
                }
                "--masquerade-all" => a.masquerade_all = boolean(&inline)?,
                "--iptables-localhost-nodeports" => a.localhost_nodeports = boolean(&inline)?,
                "--nodeport-addresses" => a
                    .nodeport_addresses
                    .extend(value()?.split(',').filter(|s| !s.is_empty()).map(|s| s.trim().to_string())),
                "--service-cluster-ip-range" => {
                    let v = value()?;
                    a.service_cidrs.clear();
                    for c in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                        let n: IpNetwork = c
                            .parse()
                            .map_err(|_| format!("--service-cluster-ip-range: invalid CIDR {c:?}"))?;
                        if a.service_cidrs.iter().any(|o| o.is_ipv4() == n.is_ipv4()) {
                            return Err(format!(
                                "--service-cluster-ip-range: two {} ranges",
                                IpFamily::of(n.ip())
                            ));
                        }
                        a.service_cidrs.push(n);
                    }
                }
                "--datastore-type" => {
                    ds.datastore_type = Some(value()?);
                    ds_configured = true;
                }
                "--datastore-path" => {
                    ds.datastore_path = Some(PathBuf::from(value()?));
                    ds_configured = true;
                }
                "--etcd-endpoints" => {
                    ds.etcd_endpoints = Some(value()?);
                    ds_configured = true;
                }
                "--dry-run" => a.dry_run = boolean(&inline)?,
                "--rewrite-top-level-chains" => a.rewrite_top_level = boolean(&inline)?,
                "--canonical" => a.canonical = boolean(&inline)?,
                "--sync-period" => a.sync_period = parse_duration(flag, &value()?)?,
                "--min-sync-period" => a.min_sync_period = parse_duration(flag, &value()?)?,
                "--services" => {
                    a.bench_services = value()?.parse().map_err(|_| "--services: expected a number")?
                }
                "--endpoints" => {
                    a.bench_endpoints = value()?.parse().map_err(|_| "--endpoints: expected a number")?
                }
                "--no-restore" => a.bench_restore = !boolean(&inline)?,
                "--restore-command" => a.bench_restore_command = value()?,
                "--help" => return Err(USAGE.to_string()),
                other => return Err(format!("unknown flag {other}\n\n{USAGE}")),
            }
        }
        if !ds_configured && std::path::Path::new(calico_store::config::DEFAULT_DATASTORE_PATH).is_dir() {
            ds_configured = true; // Calico's default file store exists on this node
        }
        if ds_configured {
            ds.validate().map_err(|e| format!("datastore: {e}"))?;
            a.datastore = Some(ds);
        }
        if a.sync_period.is_zero() {
            return Err("--sync-period must be > 0".into());
        }
        Ok(a)
    }

    /// The iptables proxier's settings for `ipt`'s family; `ipt` answers the
    /// runtime questions (random-fully, tcp_be_liberal) for the namespace
    /// the rules go to.
    pub fn proxier_config(&self, ipt: &Iptables) -> Result<IptablesConfig, String> {
        let node = self.node_config(ipt.family(), ipt.netns().is_some())?;
        // kube-proxy turns localhost NodePorts off unless the addresses include 127.0.0.1.
        let localhost_nodeports = self.localhost_nodeports
            && (node.nodeport_addresses.is_empty()
                || node.nodeport_addresses.iter().any(|n| n.contains(IpAddr::V4(Ipv4Addr::LOCALHOST))));
        Ok(IptablesConfig {
            node,
            localhost_nodeports,
            random_fully: ipt.has_random_fully(),
            conntrack_tcp_liberal: ipt.conntrack_tcp_liberal(),
            nfacct: false,
        })
    }

    /// The nftables proxier's settings for one family. kube-proxy's
    /// nftables mode accepts NodePorts on the node's primary IPs by default
    /// (not on every local address), has no localhost NodePorts, and always
    /// masquerades `fully-random` (neither is a setting: see
    /// [`NftablesConfig`]). `in_other_netns`: the rules go to a namespace
    /// other than this process's (its interface addresses are not ours to
    /// read).
    pub fn nft_config(&self, family: IpFamily, in_other_netns: bool) -> Result<NftablesConfig, String> {
        let mut node = self.node_config(family, in_other_netns)?;
        if self.nodeport_addresses.is_empty() {
            self.add_primary(&mut node)?;
        }
        let service_cidrs =
            self.service_cidrs.iter().copied().filter(|c| IpFamily::of_net(c) == family).collect();
        Ok(NftablesConfig { node, service_cidrs })
    }

    /// The `--node-ip` addresses of the family as /32s or /128s (kube-proxy's
    /// `--nodeport-addresses primary`). In nftables mode they are also taken
    /// as local addresses (kube-proxy uses the node IPs as they are; the
    /// iptables proxier matches the ranges against the interfaces).
    fn add_primary(&self, cfg: &mut NodeConfig) -> Result<(), String> {
        for ip in self.node_ips.iter().filter(|ip| cfg.family.has(**ip)) {
            let prefix = if ip.is_ipv4() { 32 } else { 128 };
            cfg.nodeport_addresses.push(IpNetwork::new(*ip, prefix).map_err(|e| e.to_string())?);
        }
        Ok(())
    }

    /// The node's addresses of one family as the proxier matches them
    /// against `--nodeport-addresses`: this namespace's interface addresses
    /// (none when the rules go to another namespace), plus, in nftables mode
    /// with the `primary` default, the `--node-ip` addresses. Cheap (one
    /// `getifaddrs`): `run` re-reads them before every sync, as kube-proxy
    /// re-reads the node IPs.
    pub fn local_addresses(&self, family: IpFamily, in_other_netns: bool) -> Vec<IpAddr> {
        let mut out = if in_other_netns { Vec::new() } else { local_ip_addresses(family) };
        let primary =
            self.nodeport_addresses.is_empty() || self.nodeport_addresses.iter().any(|a| a == "primary");
        if self.proxy_mode == ProxyMode::Nftables && primary {
            out.extend(self.node_ips.iter().copied().filter(|ip| family.has(*ip)));
        }
        out.sort();
        out.dedup();
        out
    }

    /// The settings both proxiers share, for one family: the node IPs,
    /// cluster CIDR and node-port ranges of that family.
    fn node_config(&self, family: IpFamily, in_other_netns: bool) -> Result<NodeConfig, String> {
        let hostname = match &self.hostname {
            Some(h) => h.clone(),
            None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_lowercase())
                .map_err(|e| format!("no --hostname-override and cannot read the host name: {e}"))?,
        };
        let mut cfg = NodeConfig {
            family,
            hostname,
            node_ips: self.node_ips.clone(),
            cluster_cidr: self.cluster_cidrs.iter().copied().find(|c| IpFamily::of_net(c) == family),
            masquerade_mark: masquerade_mark(self.masquerade_bit),
            masquerade_all: self.masquerade_all,
            nodeport_addresses: Vec::new(),
            local_addresses: self.local_addresses(family, in_other_netns),
        };
        for a in &self.nodeport_addresses {
            if a == "primary" {
                self.add_primary(&mut cfg)?;
                continue;
            }
            match a.parse::<IpNetwork>() {
                // Each family's proxier takes the ranges of its family
                // (none: every address of the family, as kube-proxy).
                Ok(n) if IpFamily::of_net(&n) == family => cfg.nodeport_addresses.push(n),
                Ok(_) => {}
                Err(_) => return Err(format!("--nodeport-addresses: invalid CIDR {a:?}")),
            }
        }
        Ok(cfg)
    }
}

/// The addresses of one family of this namespace's interfaces (for --nodeport-addresses).
fn local_ip_addresses(family: IpFamily) -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else { return Vec::new() };
    let mut out: Vec<IpAddr> = addrs
        .filter_map(|a| {
            let s = a.address?;
            match (s.as_sockaddr_in(), s.as_sockaddr_in6()) {
                (Some(sin), _) => Some(IpAddr::V4(sin.ip())),
                (_, Some(sin6)) => Some(IpAddr::V6(sin6.ip())),
                _ => None,
            }
        })
        .filter(|ip| family.has(*ip))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The pod records source, opened once.
pub struct PodRecords {
    store: Option<std::sync::Arc<dyn Datastore>>,
}

impl PodRecords {
    pub fn open(cfg: Option<&DatastoreConfig>) -> Result<Self, String> {
        let store = match cfg {
            Some(c) => Some(calico_store::open(c).map_err(|e| format!("opening the datastore: {e}"))?),
            None => None,
        };
        Ok(PodRecords { store })
    }

    /// The store's revision (0 without a store).
    pub fn revision(&self) -> Result<i64, String> {
        match &self.store {
            Some(s) => inputs::store_revision(s.as_ref()),
            None => Ok(0),
        }
    }

    /// Read the inputs and the records into a state; bad objects are in `errors`.
    pub fn load(&self, args: &Args) -> Result<Loaded, String> {
        let (weps, mut record_errors) = match &self.store {
            Some(s) => inputs::load_pod_records(s.as_ref())?,
            None => (Vec::new(), Vec::new()),
        };
        let mut loaded = inputs::load(&args.inputs, &weps, &args.service_cidrs);
        loaded.errors.append(&mut record_errors);
        Ok(loaded)
    }
}

/// The modification times of every input file (and the directories), to poll.
pub fn input_stamp(paths: &[PathBuf]) -> Vec<(PathBuf, Option<SystemTime>)> {
    let mut out = Vec::new();
    for p in paths {
        out.push((p.clone(), std::fs::metadata(p).and_then(|m| m.modified()).ok()));
        if let Ok(files) = crate::k8s::input_files(p) {
            for f in files {
                let t = std::fs::metadata(&f).and_then(|m| m.modified()).ok();
                out.push((f, t));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Result<Args, String> {
        Args::parse(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn kube_proxy_flag_names_and_defaults() {
        let a = args(&[
            "render",
            "--hostname-override",
            "n1",
            "--node-ip=10.0.0.1",
            "--node-ip",
            "10.0.0.2",
            "--cluster-cidr",
            "10.244.0.0/16",
            "--masquerade-all",
            "--iptables-localhost-nodeports=false",
            "--datastore-type",
            "file",
            "--datastore-path",
            "/tmp/x",
            "a.yaml",
            "dir",
        ])
        .unwrap();
        assert_eq!(a.command, Command::Render);
        assert_eq!(a.node_ips.len(), 2);
        assert!(a.masquerade_all && !a.localhost_nodeports);
        assert_eq!(a.masquerade_bit, 14);
        assert_eq!(a.inputs, vec![PathBuf::from("a.yaml"), PathBuf::from("dir")]);
        assert!(a.datastore.is_some());
        assert_eq!(a.sync_period, Duration::from_secs(30));
        assert!(args(&["render", "--iptables-masquerade-bit", "40"]).is_err());
        assert!(args(&["render", "--bogus"]).unwrap_err().contains("unknown flag --bogus"));
        assert!(args(&["render", "--datastore-type", "etcdv3"]).unwrap_err().contains("etcd_endpoints"));
        assert_eq!(parse_duration("x", "250ms").unwrap(), Duration::from_millis(250));
        // kube-proxy's ParseIPSloppy: an IPv4-mapped node IP is the IPv4 node IP.
        let a = args(&["render", "--node-ip", "::ffff:10.0.0.1,010.0.0.2"]).unwrap();
        assert_eq!(a.node_ips, ["10.0.0.1".parse::<IpAddr>().unwrap(), "10.0.0.2".parse().unwrap()]);
    }

    #[test]
    fn nodeport_addresses_without_loopback_disable_localhost_nodeports() {
        let a =
            args(&["render", "--hostname-override", "n", "--nodeport-addresses", "192.168.0.0/16"]).unwrap();
        let cfg = a.proxier_config(&Iptables::in_netns("unused")).unwrap();
        assert!(!cfg.localhost_nodeports);
        let a =
            args(&["render", "--hostname-override", "n", "--nodeport-addresses", "127.0.0.0/8,10.0.0.0/8"])
                .unwrap();
        assert!(a.proxier_config(&Iptables::in_netns("unused")).unwrap().localhost_nodeports);
    }

    #[test]
    fn nftables_mode_defaults_nodeports_to_the_primary_node_ips() {
        let a =
            args(&["sync", "--proxy-mode", "nftables", "--hostname-override", "n", "--node-ip", "10.0.0.1"])
                .unwrap();
        assert_eq!(a.proxy_mode, ProxyMode::Nftables);
        let cfg = a.nft_config(IpFamily::V4, true).unwrap();
        assert_eq!(cfg.node.nodeport_addresses, vec!["10.0.0.1/32".parse::<IpNetwork>().unwrap()]);
        assert_eq!(cfg.node.local_addresses, vec![Ipv4Addr::new(10, 0, 0, 1)]);
        // Always fully-random, never localhost NodePorts: no setting has them
        // in this mode, the transaction says so.
        let tx = crate::nftables::render(&Default::default(), &cfg, &crate::nftables::NftPlan::full())
            .unwrap()
            .transaction;
        assert!(tx.contains("masquerade fully-random\n"), "{tx}");
        assert!(
            tx.contains("add element ip kube-proxy nodeport-ips { 10.0.0.1 }") && !tx.contains("127.0.0.1")
        );
        assert_eq!(cfg.service_cidrs, vec!["10.96.0.0/12".parse::<IpNetwork>().unwrap()]);
        // An explicit range wins; iptables mode keeps "all local addresses".
        let a = args(&[
            "sync",
            "--proxy-mode=nftables",
            "--hostname-override",
            "n",
            "--nodeport-addresses",
            "0.0.0.0/0",
        ])
        .unwrap();
        assert_eq!(a.nft_config(IpFamily::V4, true).unwrap().node.nodeport_addresses.len(), 1);
        let a = args(&["sync", "--hostname-override", "n", "--node-ip", "10.0.0.1"]).unwrap();
        assert_eq!(a.proxy_mode, ProxyMode::Iptables);
        assert!(a.proxier_config(&Iptables::in_netns("unused")).unwrap().node.nodeport_addresses.is_empty());
        assert!(args(&["sync", "--proxy-mode", "ipvs"]).unwrap_err().contains("--proxy-mode"));
    }

    #[test]
    fn dual_stack_flags_give_each_family_its_own_settings() {
        let a = args(&[
            "sync",
            "--proxy-mode=nftables",
            "--hostname-override",
            "n",
            "--node-ip",
            "10.0.0.1,fd00::1",
            "--cluster-cidr",
            "10.244.0.0/16,fd00:244::/64",
            "--service-cluster-ip-range",
            "10.96.0.0/12,fd00:96::/108",
            "--nodeport-addresses",
            "10.0.0.0/8",
        ])
        .unwrap();
        assert_eq!(a.service_cidrs.len(), 2);
        let v4 = a.nft_config(IpFamily::V4, true).unwrap();
        let v6 = a.nft_config(IpFamily::V6, true).unwrap();
        assert_eq!(v4.node.cluster_cidr, Some("10.244.0.0/16".parse().unwrap()));
        assert_eq!(v6.node.cluster_cidr, Some("fd00:244::/64".parse().unwrap()));
        assert_eq!(v6.service_cidrs, vec!["fd00:96::/108".parse::<IpNetwork>().unwrap()]);
        assert_eq!(v6.node.node_ip(), Some("fd00::1".parse().unwrap()));
        // No IPv6 range listed: the IPv6 proxier accepts NodePorts on every address.
        assert!(v6.node.nodeport_addresses.is_empty());
        assert_eq!(v4.node.nodeport_addresses.len(), 1);
        assert_eq!(v6.node.family, IpFamily::V6);
        // Default: the primary IPs of each family.
        let a = args(&["sync", "--proxy-mode=nftables", "--hostname-override", "n", "--node-ip", "fd00::1"])
            .unwrap();
        let v6 = a.nft_config(IpFamily::V6, true).unwrap();
        assert_eq!(v6.node.nodeport_addresses, vec!["fd00::1/128".parse::<IpNetwork>().unwrap()]);
        assert_eq!(v6.node.local_addresses, vec!["fd00::1".parse::<IpAddr>().unwrap()]);
        assert!(a.nft_config(IpFamily::V6, true).unwrap().service_cidrs.is_empty());
        assert!(args(&["render", "--service-cluster-ip-range", "10.0.0.0/16,10.1.0.0/16"])
            .unwrap_err()
            .contains("two IPv4"));
    }
}
