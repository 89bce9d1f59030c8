//! Command line: kube-proxy's flag names, spellings and defaults, parsed
//! with clap ([`Cli`]) and resolved into the settings the subcommands run
//! with ([`Args`]).
//!
//! ```text
//! kube-proxy-rules [-v|--log-level LEVEL] render|sync|run|bench [flags] [FILE|DIR]...
//! ```
//!
//! Spellings as kube-proxy's (pflag): `--flag=value` and `--flag value`;
//! booleans `--flag` or `--flag=true|false` (never `--flag false`); the last
//! of a repeated flag wins, except the comma lists `--node-ip`,
//! `--cluster-cidr` and `--nodeport-addresses`, which also add up when
//! repeated. The datastore flags take their Calico variables
//! (`DATASTORE_TYPE`, `ETCD_ENDPOINTS`, …: [`tool_cli::DatastoreArgs`]).

use std::net::{IpAddr, Ipv4Addr};

use crate::family::IpFamily;
use std::path::PathBuf;
use std::time::Duration;

use calico_store::{Datastore, DatastoreConfig};
use clap::{ArgAction, Parser, Subcommand};
use ipnetwork::IpNetwork;
use tool_cli::values::{comma_list, parse_bool, parse_duration, CommaList};
use tool_cli::{DatastoreArgs, LogArgs};

use crate::config::{masquerade_mark, NodeConfig};
use crate::inputs::{self, Loaded};
use crate::iptables::Iptables;
use crate::iptables::IptablesConfig;
use crate::model::service::DEFAULT_SERVICE_CIDR;
use crate::nftables::render::NftLayout;
use crate::nftables::NftablesConfig;

/// `kube-proxy-rules`' command line as clap parses it.
#[derive(Debug, Parser)]
#[command(
    name = "kube-proxy-rules",
    version,
    about = "kube-proxy's service rules (iptables or nftables mode) from manifests and Calico pod records",
    after_help = "Inputs: Service, EndpointSlice, Pod, Deployment, Node manifests (YAML or JSON, Lists too), \
                  files or directories (*.yaml, *.yml, *.json).\n\
                  IPv6 and dual-stack: one proxier per family, as kube-proxy's MetaProxier. A family \
                  is synced only when it has services or a --node-ip; IPv6 goes to ip6tables-restore \
                  or table ip6 kube-proxy.",
    subcommand_required = true,
    arg_required_else_help = true
)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: CliCommand,
}

/// The subcommands and the flags each takes.
#[derive(Debug, Subcommand)]
pub enum CliCommand {
    /// Print what kube-proxy would write: the iptables-restore payload (filter + nat), or with
    /// --proxy-mode nftables the `nft -f` transaction for table ip kube-proxy
    #[command(args_override_self = true)]
    Render {
        /// Manifest files or directories
        #[arg(value_name = "FILE|DIR")]
        inputs: Vec<PathBuf>,
        #[command(flatten)]
        node: NodeArgs,
        /// Print in kube-proxy's canonical test order
        #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
              default_missing_value = "true", default_value = "false", value_parser = parse_bool,
              value_name = "BOOL")]
        canonical: bool,
        #[command(flatten)]
        datastore: DatastoreArgs,
    },
    /// Apply the rules once (full sync: jump rules, canary, restore, stale chains; or the whole
    /// kube-proxy table in one nft transaction)
    #[command(args_override_self = true)]
    Sync {
        /// Manifest files or directories
        #[arg(value_name = "FILE|DIR")]
        inputs: Vec<PathBuf>,
        #[command(flatten)]
        node: NodeArgs,
        #[command(flatten)]
        sync: SyncArgs,
        #[command(flatten)]
        datastore: DatastoreArgs,
    },
    /// Keep syncing when the API objects, the inputs or the pod records change (partial syncs);
    /// serve /healthz, /livez, /metrics and the services' health check node ports
    #[command(args_override_self = true)]
    Run {
        /// Manifest files or directories (followed through inotify)
        #[arg(value_name = "FILE|DIR")]
        inputs: Vec<PathBuf>,
        #[command(flatten)]
        node: NodeArgs,
        #[command(flatten)]
        sync: SyncArgs,
        #[command(flatten)]
        api: ApiArgs,
        #[command(flatten)]
        datastore: DatastoreArgs,
    },
    /// Synthetic scale benchmark: N services x M endpoints, render and restore timings
    #[command(args_override_self = true)]
    Bench(BenchArgs),
}

/// The node flags (kube-proxy's names and defaults).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Node (kube-proxy's flags)")]
pub struct NodeArgs {
    /// Which proxier's rules: iptables or nftables
    #[arg(long, value_name = "MODE", default_value = "iptables", value_parser = ProxyMode::parse)]
    pub proxy_mode: ProxyMode,
    /// Node name: endpoints with this nodeName are local (default: the host name)
    #[arg(long, value_name = "NAME")]
    pub hostname_override: Option<String>,
    /// The node's zone (its Node's topology.kubernetes.io/zone label, which kube-proxy reads
    /// from the API): EndpointSlice hints for it keep traffic in it. Unset: zone hints are
    /// not used
    #[arg(long, value_name = "ZONE", value_parser = zone_name)]
    pub node_zone: Option<String>,
    /// Node IP(s), one per family; repeatable
    #[arg(long, value_name = "IP[,IP]", value_parser = node_ip_list)]
    pub node_ip: Vec<CommaList<IpAddr>>,
    /// Pod CIDR(s) for the local-traffic detector, one per family (the first of each)
    #[arg(long, value_name = "CIDR[,CIDR]", value_parser = comma_list::<IpNetwork>)]
    pub cluster_cidr: Vec<CommaList<IpNetwork>>,
    /// The bit of the masquerade mark
    #[arg(long, value_name = "N", default_value_t = 14, value_parser = clap::value_parser!(u32).range(0..=31))]
    pub iptables_masquerade_bit: u32,
    /// Masquerade all traffic to service IPs
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", value_parser = parse_bool,
          value_name = "BOOL")]
    pub masquerade_all: bool,
    /// Accept NodePorts on 127.0.0.1 (iptables mode)
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "true", value_parser = parse_bool,
          value_name = "BOOL")]
    pub iptables_localhost_nodeports: bool,
    /// CIDRs (or `primary`) to accept NodePorts on. Default: all local addresses (iptables), the
    /// --node-ip addresses (nftables, kube-proxy's `primary`); a family with no CIDR listed
    /// accepts on all its addresses
    #[arg(long, value_name = "CIDR[,CIDR]", value_parser = comma_list::<String>)]
    pub nodeport_addresses: Vec<CommaList<String>>,
    /// One range per family, primary first: ClusterIPs for manifests without one (no IPv6 default)
    #[arg(long, value_name = "CIDR[,CIDR]", default_value = DEFAULT_SERVICE_CIDR, value_parser = service_ranges)]
    pub service_cluster_ip_range: ServiceRanges,
    /// nftables mode: endpoint-maps (endpoints in one DNAT map: a one-service change costs a
    /// few map elements) or kube-proxy (one chain per endpoint, kube-proxy's table to the rule)
    #[arg(long, value_name = "LAYOUT", default_value = "endpoint-maps", value_parser = <NftLayout as std::str::FromStr>::from_str)]
    pub nftables_layout: NftLayout,
}

/// `sync` and `run`.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Sync")]
pub struct SyncArgs {
    /// Show which chains a sync would rewrite; apply nothing
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", value_parser = parse_bool,
          value_name = "BOOL")]
    pub dry_run: bool,
    /// Periodic sync and canary check (30s, 1m, 500ms, ...)
    #[arg(long, value_name = "DUR", default_value = "30s", value_parser = positive_duration)]
    pub sync_period: Duration,
    /// Never sync more often than this
    #[arg(long, value_name = "DUR", default_value = "1s", value_parser = parse_duration)]
    pub min_sync_period: Duration,
    /// Partial syncs rewrite KUBE-SERVICES etc. even when unchanged (kube-proxy's exact
    /// partial payloads)
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", value_parser = parse_bool,
          value_name = "BOOL")]
    pub rewrite_top_level_chains: bool,
    /// After each successful sync, delete the conntrack entries of UDP/SCTP services whose
    /// endpoint went away, or that were made while the service had no endpoint (as kube-proxy)
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "true", value_parser = parse_bool,
          value_name = "BOOL")]
    pub conntrack_cleanup: bool,
    /// Where the last synced UDP/SCTP services are remembered (conntrack-ipv4.json,
    /// conntrack-ipv6.json), so a restart cleans only what changed meanwhile. One directory
    /// per node
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
}

/// `--state-dir`'s default.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/kube-proxy-rules";

/// `run`'s Kubernetes API and its health and metrics servers (kube-proxy's flags).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Kubernetes API, health and metrics (kube-proxy's flags)")]
pub struct ApiArgs {
    /// Path to a kubeconfig file: follow Services, EndpointSlices and this node's Node through
    /// the API server it names
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The API server's address (overrides the kubeconfig's server), e.g. https://10.0.0.1:6443
    #[arg(long, value_name = "URL")]
    pub master: Option<String>,
    /// Follow the API server with the in-cluster service account even with FILE|DIR inputs
    /// (without inputs, --kubeconfig or --master, in a pod, it is the default)
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", value_parser = parse_bool,
          value_name = "BOOL")]
    pub in_cluster: bool,
    /// /healthz and /livez (empty: off)
    #[arg(long, value_name = "IP:PORT", default_value = "0.0.0.0:10256", value_parser = bind_address)]
    pub healthz_bind_address: BindAddress,
    /// /metrics in the Prometheus text format (empty: off)
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:10249", value_parser = bind_address)]
    pub metrics_bind_address: BindAddress,
}

/// `--healthz-bind-address`, `--metrics-bind-address`: `IP:PORT`, `IP`
/// (kube-proxy's default port of the flag is added by the user), or empty
/// for off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindAddress(pub Option<std::net::SocketAddr>);

fn bind_address(v: &str) -> Result<BindAddress, String> {
    if v.is_empty() {
        return Ok(BindAddress(None));
    }
    v.parse::<std::net::SocketAddr>()
        .map(|a| BindAddress(Some(a)))
        .map_err(|e| format!("expected IP:PORT: {e}"))
}

/// `bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// iptables: time iptables-restore; nftables: time `nft -f` (the iptables renders of the
    /// same state are printed alongside, without a restore)
    #[arg(long, value_name = "MODE", default_value = "iptables", value_parser = ProxyMode::parse)]
    pub proxy_mode: ProxyMode,
    /// Number of services
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub services: usize,
    /// Endpoints per service
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub endpoints: usize,
    /// Render only; do not time a restore
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", value_parser = parse_bool,
          value_name = "BOOL")]
    pub no_restore: bool,
    /// The restore program (e.g. iptables-legacy-restore)
    #[arg(long, value_name = "PROG", default_value = "iptables-restore")]
    pub restore_command: String,
    /// nftables mode: endpoint-maps (endpoints in one DNAT map: a one-service change costs a
    /// few map elements) or kube-proxy (one chain per endpoint, kube-proxy's table to the rule)
    #[arg(long, value_name = "LAYOUT", default_value = "endpoint-maps", value_parser = <NftLayout as std::str::FromStr>::from_str)]
    pub nftables_layout: NftLayout,
    /// Instead of the rules: the conntrack cleanup on N UDP entries in a scratch namespace,
    /// against one `conntrack -D` per filter
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub conntrack_entries: usize,
}

/// `--node-ip`: as kube-proxy (ParseIPSloppy), `::ffff:a.b.c.d` is the
/// IPv4 address and leading zeros are allowed.
fn node_ip_list(v: &str) -> Result<CommaList<IpAddr>, String> {
    CommaList::parse_with(v, |ip| crate::model::service::parse_ip_sloppy(ip).ok_or("invalid IP"))
}

/// `--node-zone`: a label value, as the API server admits it (at most 63
/// characters, alphanumerics, `-`, `_`, `.`, alphanumeric at both ends).
fn zone_name(v: &str) -> Result<String, String> {
    let ok_end = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    let valid = v.len() <= 63
        && ok_end(v.chars().next())
        && ok_end(v.chars().last())
        && v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(v.to_string())
    } else {
        Err(format!("{v:?} is not a label value (alphanumerics, '-', '_', '.', at most 63)"))
    }
}

/// `--service-cluster-ip-range`: at most one range per family, primary first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRanges(pub Vec<IpNetwork>);

fn service_ranges(v: &str) -> Result<ServiceRanges, String> {
    let CommaList(ranges) = comma_list::<IpNetwork>(v)?;
    for (i, n) in ranges.iter().enumerate() {
        if ranges[..i].iter().any(|o| o.is_ipv4() == n.is_ipv4()) {
            return Err(format!("two {} ranges", IpFamily::of(n.ip())));
        }
    }
    Ok(ServiceRanges(ranges))
}

/// `--sync-period`: a duration, not zero (the loop waits on it).
fn positive_duration(v: &str) -> Result<Duration, String> {
    match parse_duration(v)? {
        d if d.is_zero() => Err("must be > 0".into()),
        d => Ok(d),
    }
}

/// `--proxy-mode`: which kube-proxy proxier's rules are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProxyMode {
    #[default]
    Iptables,
    Nftables,
}

impl ProxyMode {
    /// kube-proxy's names; empty is the default, as kube-proxy's flag.
    pub fn parse(v: &str) -> Result<Self, String> {
        match v {
            "iptables" | "" => Ok(ProxyMode::Iptables),
            "nftables" => Ok(ProxyMode::Nftables),
            other => Err(format!("expected iptables or nftables, got {other:?}")),
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

/// The settings a subcommand runs with: the command line resolved (the
/// comma lists flattened, one cluster CIDR per family, the datastore
/// chosen). What a subcommand has no flag for keeps kube-proxy's default.
#[derive(Debug, Clone)]
pub struct Args {
    pub command: Command,
    pub proxy_mode: ProxyMode,
    pub inputs: Vec<PathBuf>,
    pub hostname: Option<String>,
    /// `--node-zone`.
    pub zone: Option<String>,
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
    /// `--conntrack-cleanup`.
    pub conntrack_cleanup: bool,
    /// `--state-dir`.
    pub state_dir: PathBuf,
    pub canonical: bool,
    pub sync_period: Duration,
    pub min_sync_period: Duration,
    pub bench_services: usize,
    pub bench_endpoints: usize,
    pub bench_restore: bool,
    pub bench_restore_command: String,
    /// `--nftables-layout`.
    pub nft_layout: NftLayout,
    /// `bench --conntrack-entries` (0: the rules bench).
    pub bench_conntrack_entries: usize,
    /// `run`: the API server (kubeconfig, master, or in-cluster); none of
    /// the three: no API source.
    pub kubeconfig: Option<PathBuf>,
    pub master: Option<String>,
    pub in_cluster: bool,
    pub healthz_bind_address: Option<std::net::SocketAddr>,
    pub metrics_bind_address: Option<std::net::SocketAddr>,
}

/// The pod-records datastore: the datastore flags (or their variables)
/// when any picks one, else Calico's default file store when it exists on
/// this node, else none; resolved by calico-store's one resolver.
fn datastore(ds: &DatastoreArgs) -> Result<Option<DatastoreConfig>, String> {
    let default_store = std::path::Path::new(calico_store::config::DEFAULT_DATASTORE_PATH).is_dir();
    if !ds.given() && !default_store {
        return Ok(None);
    }
    ds.resolve(calico_store::resolve::Base::Defaults).map(Some).map_err(|e| format!("datastore: {e}"))
}

impl Args {
    /// Parse a whole argv (the program name first). Usage and
    /// configuration errors are clap errors (`error.exit()` prints them and
    /// exits 2; `--help` exits 0).
    pub fn try_parse_from<I, T>(argv: I) -> Result<Args, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Args::from_cli(Cli::try_parse_from(argv)?)
    }

    /// Resolve a parsed command line.
    pub fn from_cli(cli: Cli) -> Result<Args, clap::Error> {
        let mut a = Args::defaults(Command::Bench);
        let (node, ds, inputs) = match cli.command {
            CliCommand::Render { node, canonical, datastore, inputs } => {
                a.command = Command::Render;
                a.canonical = canonical;
                (node, datastore, inputs)
            }
            CliCommand::Sync { node, sync, datastore, inputs } => {
                a.command = Command::Sync;
                a.set_sync(&sync);
                (node, datastore, inputs)
            }
            CliCommand::Run { node, sync, api, datastore, inputs } => {
                a.command = Command::Run;
                a.set_sync(&sync);
                a.kubeconfig = api.kubeconfig;
                a.master = api.master;
                a.in_cluster = api.in_cluster
                    || (inputs.is_empty() && std::env::var_os("KUBERNETES_SERVICE_HOST").is_some());
                a.healthz_bind_address = api.healthz_bind_address.0;
                a.metrics_bind_address = api.metrics_bind_address.0;
                (node, datastore, inputs)
            }
            CliCommand::Bench(b) => {
                a.proxy_mode = b.proxy_mode;
                a.bench_services = b.services;
                a.bench_endpoints = b.endpoints;
                a.bench_restore = !b.no_restore;
                a.bench_restore_command = b.restore_command;
                a.nft_layout = b.nftables_layout;
                a.bench_conntrack_entries = b.conntrack_entries;
                return Ok(a);
            }
        };
        a.proxy_mode = node.proxy_mode;
        a.inputs = inputs;
        a.hostname = node.hostname_override;
        a.zone = node.node_zone;
        a.node_ips = CommaList::concat(&node.node_ip);
        for n in CommaList::concat(&node.cluster_cidr) {
            if !a.cluster_cidrs.iter().any(|c| c.is_ipv4() == n.is_ipv4()) {
                a.cluster_cidrs.push(n);
            }
        }
        a.masquerade_bit = node.iptables_masquerade_bit;
        a.masquerade_all = node.masquerade_all;
        a.localhost_nodeports = node.iptables_localhost_nodeports;
        a.nodeport_addresses = CommaList::concat(&node.nodeport_addresses);
        a.service_cidrs = node.service_cluster_ip_range.0;
        a.nft_layout = node.nftables_layout;
        a.datastore = datastore(&ds).map_err(tool_cli::usage_error::<Cli>)?;
        Ok(a)
    }

    fn set_sync(&mut self, s: &SyncArgs) {
        self.dry_run = s.dry_run;
        self.sync_period = s.sync_period;
        self.min_sync_period = s.min_sync_period;
        self.rewrite_top_level = s.rewrite_top_level_chains;
        self.conntrack_cleanup = s.conntrack_cleanup;
        self.state_dir = s.state_dir.clone();
    }

    /// kube-proxy's defaults (and the bench's), for `command`.
    fn defaults(command: Command) -> Args {
        Args {
            command,
            proxy_mode: ProxyMode::default(),
            inputs: Vec::new(),
            hostname: None,
            zone: None,
            node_ips: Vec::new(),
            cluster_cidrs: Vec::new(),
            masquerade_bit: 14,
            masquerade_all: false,
            localhost_nodeports: true,
            nodeport_addresses: Vec::new(),
            service_cidrs: service_ranges(DEFAULT_SERVICE_CIDR).map(|r| r.0).unwrap_or_default(),
            datastore: None,
            dry_run: false,
            rewrite_top_level: false,
            conntrack_cleanup: true,
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            canonical: false,
            sync_period: Duration::from_secs(30),
            min_sync_period: Duration::from_secs(1),
            bench_services: 10_000,
            bench_endpoints: 10,
            bench_restore: true,
            bench_restore_command: "iptables-restore".into(),
            nft_layout: NftLayout::default(),
            bench_conntrack_entries: 0,
            kubeconfig: None,
            master: None,
            in_cluster: false,
            healthz_bind_address: None,
            metrics_bind_address: None,
        }
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
        Ok(NftablesConfig { node, service_cidrs, layout: self.nft_layout })
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

    /// The node's name: `--hostname-override`, else the host name
    /// (lowercased, as kube-proxy).
    pub fn node_name(&self) -> Result<String, String> {
        match &self.hostname {
            Some(h) => Ok(h.clone()),
            None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_lowercase())
                .map_err(|e| format!("no --hostname-override and cannot read the host name: {e}")),
        }
    }

    /// The API server to follow, if any: `--kubeconfig`, `--master`, or the
    /// in-cluster service account.
    pub fn api_settings(&self) -> Option<crate::source::api::ApiSettings> {
        (self.kubeconfig.is_some() || self.master.is_some() || self.in_cluster).then(|| {
            crate::source::api::ApiSettings {
                kubeconfig: self.kubeconfig.clone(),
                master: self.master.clone(),
            }
        })
    }

    /// The settings both proxiers share, for one family: the node IPs,
    /// cluster CIDR and node-port ranges of that family.
    fn node_config(&self, family: IpFamily, in_other_netns: bool) -> Result<NodeConfig, String> {
        let hostname = self.node_name()?;
        let mut cfg = NodeConfig {
            family,
            hostname,
            node_ips: self.node_ips.clone(),
            cluster_cidr: self.cluster_cidrs.iter().copied().find(|c| IpFamily::of_net(c) == family),
            masquerade_mark: masquerade_mark(self.masquerade_bit),
            masquerade_all: self.masquerade_all,
            nodeport_addresses: Vec::new(),
            local_addresses: self.local_addresses(family, in_other_netns),
            zone: self.zone.clone(),
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
            Some(c) => {
                match c.kind() {
                    Ok(calico_store::config::DatastoreType::Etcd) => {
                        log::debug!("pod records from etcd at {}", c.etcd_endpoints.as_deref().unwrap_or(""))
                    }
                    _ => log::debug!("pod records from the file store at {}", c.path().display()),
                }
                Some(calico_store::open(c).map_err(|e| format!("opening the datastore: {e}"))?)
            }
            None => {
                log::debug!("no datastore: pod records are not read");
                None
            }
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

    /// The store, for a watcher of its own (None without a store).
    pub fn store(&self) -> Option<std::sync::Arc<dyn Datastore>> {
        self.store.clone()
    }

    /// Read the pod records alone (none without a store).
    pub fn read(
        &self,
    ) -> Result<(Vec<calico_store::model::WorkloadEndpoint>, Vec<crate::k8s::ObjectError>), String> {
        match &self.store {
            Some(s) => inputs::load_pod_records(s.as_ref()),
            None => Ok((Vec::new(), Vec::new())),
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
        log::debug!(
            "loaded {} service ports with {} endpoints from {} input(s) and {} pod record(s)",
            loaded.state.services.len(),
            loaded.state.total_endpoints(),
            args.inputs.len(),
            weps.len()
        );
        Ok(loaded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parse `kube-proxy-rules <v>...`, ignoring the environment the test runs in.
    fn args(v: &[&str]) -> Result<Args, String> {
        let argv = std::iter::once("kube-proxy-rules").chain(v.iter().copied());
        let cli: Cli = tool_cli::try_parse_without_env(argv).map_err(|e| e.to_string())?;
        Args::from_cli(cli).map_err(|e| e.to_string())
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
        // clap's wording since the parser is clap's.
        assert!(args(&["render", "--bogus"]).unwrap_err().contains("unexpected argument '--bogus'"));
        assert!(args(&["render", "--datastore-type", "etcdv3"]).unwrap_err().contains("etcd_endpoints"));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
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

    fn clap_err(v: &[&str]) -> clap::Error {
        let argv = std::iter::once("kube-proxy-rules").chain(v.iter().copied());
        match tool_cli::try_parse_without_env::<Cli, _, _>(argv).map(Args::from_cli) {
            Err(e) | Ok(Err(e)) => e,
            Ok(Ok(a)) => panic!("parsed: {a:?}"),
        }
    }

    #[test]
    fn values_as_kube_proxy_spells_them() {
        // --flag=value and --flag value.
        let a = args(&["sync", "--hostname-override=n1", "--sync-period", "1m", "--min-sync-period=250ms"])
            .unwrap();
        assert_eq!(a.hostname.as_deref(), Some("n1"));
        assert_eq!((a.sync_period, a.min_sync_period), (Duration::from_secs(60), Duration::from_millis(250)));
        assert_eq!(args(&["render", "--iptables-masquerade-bit=3"]).unwrap().masquerade_bit, 3);
        assert_eq!(args(&["render", "--iptables-masquerade-bit", "31"]).unwrap().masquerade_bit, 31);
        // The last of a repeated single-valued flag wins, as pflag.
        let a = args(&["render", "--proxy-mode", "nftables", "--proxy-mode=iptables"]).unwrap();
        assert_eq!(a.proxy_mode, ProxyMode::Iptables);
        let a = args(&[
            "render",
            "--service-cluster-ip-range",
            "10.0.0.0/16",
            "--service-cluster-ip-range=10.1.0.0/16",
        ])
        .unwrap();
        assert_eq!(a.service_cidrs, vec!["10.1.0.0/16".parse::<IpNetwork>().unwrap()]);
        // Comma lists that also add up when repeated; empty items skipped.
        let a = args(&[
            "render",
            "--cluster-cidr=10.244.0.0/16,",
            "--cluster-cidr",
            "10.245.0.0/16,fd00:244::/64",
            "--nodeport-addresses",
            "primary,,10.0.0.0/8",
            "--nodeport-addresses=127.0.0.0/8",
        ])
        .unwrap();
        // One per family, the first of each.
        let want: Vec<IpNetwork> = vec!["10.244.0.0/16".parse().unwrap(), "fd00:244::/64".parse().unwrap()];
        assert_eq!(a.cluster_cidrs, want);
        assert_eq!(a.nodeport_addresses, ["primary", "10.0.0.0/8", "127.0.0.0/8"]);
        // Bad values name the flag (clap's message).
        for bad in [
            &["render", "--node-ip", "10.0.0.1,bogus"][..],
            &["render", "--cluster-cidr=10.0.0.0/40"],
            &["sync", "--sync-period", "0s"],
            &["sync", "--min-sync-period", "soon"],
            &["render", "--iptables-masquerade-bit", "32"],
        ] {
            let e = clap_err(bad);
            assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation, "{bad:?}: {e}");
            assert!(e.to_string().contains(bad[1].split('=').next().unwrap()), "{e}");
        }
        // A value flag at the end without its value.
        assert_eq!(clap_err(&["render", "--hostname-override"]).kind(), clap::error::ErrorKind::InvalidValue);
    }

    #[test]
    fn node_zone_is_a_label_value_and_reaches_both_modes() {
        let a = args(&["sync", "--hostname-override", "n", "--node-zone", "eu-west-1a"]).unwrap();
        assert_eq!(a.zone.as_deref(), Some("eu-west-1a"));
        assert_eq!(a.nft_config(IpFamily::V4, true).unwrap().node.zone.as_deref(), Some("eu-west-1a"));
        assert_eq!(args(&["sync", "--hostname-override", "n"]).unwrap().zone, None);
        for bad in [
            "--node-zone=-a",
            "--node-zone=a b",
            "--node-zone=zone/a",
            &format!("--node-zone={}", "z".repeat(64)),
        ] {
            let e = clap_err(&["sync", bad]);
            assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation, "{bad}");
        }
    }

    #[test]
    fn booleans_as_kube_proxy_spells_them() {
        let a = args(&["sync", "--masquerade-all", "--dry-run", "--rewrite-top-level-chains"]).unwrap();
        assert!(a.masquerade_all && a.dry_run && a.rewrite_top_level);
        let a = args(&["sync", "--masquerade-all=true", "--dry-run=false", "--rewrite-top-level-chains=1"])
            .unwrap();
        assert!(a.masquerade_all && !a.dry_run && a.rewrite_top_level);
        let a = args(&["render", "--iptables-localhost-nodeports=false", "--canonical=true"]).unwrap();
        assert!(!a.localhost_nodeports && a.canonical && !a.masquerade_all);
        assert!(args(&["render"]).unwrap().localhost_nodeports, "default true");
        assert!(args(&["render", "--iptables-localhost-nodeports"]).unwrap().localhost_nodeports);
        // Repeated: the last wins.
        assert!(!args(&["render", "--masquerade-all", "--masquerade-all=false"]).unwrap().masquerade_all);
        // As pflag, a bool's value needs `=`: `--masquerade-all false` is the flag and an input.
        let a = args(&["render", "--masquerade-all", "false"]).unwrap();
        assert!(a.masquerade_all && a.inputs == [PathBuf::from("false")]);
        assert_eq!(
            clap_err(&["render", "--masquerade-all=yes"]).kind(),
            clap::error::ErrorKind::ValueValidation
        );
    }

    #[test]
    fn positional_inputs_and_per_command_flags() {
        let a = args(&["run", "a.yaml", "--dry-run", "dir", "--sync-period=2s", "b.json"]).unwrap();
        assert_eq!(a.command, Command::Run);
        assert_eq!(a.inputs, ["a.yaml", "dir", "b.json"].map(PathBuf::from));
        // A flag of another command is a usage error, not ignored.
        assert_eq!(clap_err(&["render", "--dry-run"]).kind(), clap::error::ErrorKind::UnknownArgument);
        assert_eq!(
            clap_err(&["bench", "--node-ip", "10.0.0.1"]).kind(),
            clap::error::ErrorKind::UnknownArgument
        );
        assert_eq!(clap_err(&["bench", "x.yaml"]).kind(), clap::error::ErrorKind::UnknownArgument);
        assert_eq!(clap_err(&["frob"]).kind(), clap::error::ErrorKind::InvalidSubcommand);
        assert_eq!(
            clap_err(&[]).kind(),
            clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand,
            "no command: the help, exit 2"
        );
        for cmd in ["render", "sync", "run", "bench"] {
            let e = clap_err(&[cmd, "--help"]);
            assert_eq!(e.kind(), clap::error::ErrorKind::DisplayHelp);
            assert_eq!(e.exit_code(), 0);
        }
        use clap::CommandFactory;
        let mut cmd = Cli::command();
        cmd.build(); // propagates the global flags (-v) into the subcommands
        let help = cmd.find_subcommand_mut("sync").unwrap().render_long_help().to_string();
        assert!(
            help.contains("--masquerade-all[=<BOOL>]") && help.contains("[env: DATASTORE_TYPE=]"),
            "{help}"
        );
        assert!(help.contains("--etcd-ca-cert-file <FILE>") && help.contains("-v, --verbose"), "{help}");
        // -v / --log-level before or after the command.
        let cli: Cli = tool_cli::try_parse_without_env(["k", "-v", "render"]).unwrap();
        assert_eq!(cli.log.verbose, 1);
        let cli: Cli = tool_cli::try_parse_without_env(["k", "sync", "--log-level", "debug"]).unwrap();
        assert_eq!(cli.log.log_level, Some(log::LevelFilter::Debug));
    }

    #[test]
    fn run_takes_kube_proxys_api_health_and_metrics_flags() {
        let a = args(&["run", "--kubeconfig", "/etc/kubernetes/kp.conf", "--master=https://10.0.0.1:6443"])
            .unwrap();
        let api = a.api_settings().unwrap();
        assert_eq!(api.kubeconfig, Some(PathBuf::from("/etc/kubernetes/kp.conf")));
        assert_eq!(api.master.as_deref(), Some("https://10.0.0.1:6443"));
        // kube-proxy's defaults.
        assert_eq!(a.healthz_bind_address, Some("0.0.0.0:10256".parse().unwrap()));
        assert_eq!(a.metrics_bind_address, Some("127.0.0.1:10249".parse().unwrap()));
        let a = args(&["run", "--healthz-bind-address=", "--metrics-bind-address", "[::1]:9100", "x.yaml"])
            .unwrap();
        assert_eq!(
            (a.healthz_bind_address, a.metrics_bind_address),
            (None, Some("[::1]:9100".parse().unwrap()))
        );
        // Files only: no API source (unless asked for).
        assert!(a.api_settings().is_none());
        assert!(args(&["run", "--in-cluster", "x.yaml"]).unwrap().api_settings().is_some());
        assert_eq!(
            clap_err(&["run", "--healthz-bind-address", "10256"]).kind(),
            clap::error::ErrorKind::ValueValidation
        );
        // Only run has them.
        assert_eq!(
            clap_err(&["sync", "--master", "http://x"]).kind(),
            clap::error::ErrorKind::UnknownArgument
        );
    }

    #[test]
    fn bench_takes_the_makefile_invocations() {
        let a = args(&["bench", "--restore-command", "iptables-legacy-restore"]).unwrap();
        assert_eq!(
            (a.command, a.bench_restore_command.as_str()),
            (Command::Bench, "iptables-legacy-restore")
        );
        assert_eq!((a.bench_services, a.bench_endpoints, a.bench_restore), (10_000, 10, true));
        assert_eq!(args(&["bench", "--services", "1000"]).unwrap().bench_services, 1000);
        let a = args(&["bench", "--proxy-mode", "nftables", "--endpoints=3", "--no-restore"]).unwrap();
        assert_eq!((a.proxy_mode, a.bench_endpoints, a.bench_restore), (ProxyMode::Nftables, 3, false));
        assert_eq!(
            clap_err(&["bench", "--services", "many"]).kind(),
            clap::error::ErrorKind::ValueValidation
        );
    }

    #[test]
    fn datastore_flags_carry_calicos_variables_and_the_tls_files() {
        use clap::CommandFactory;
        let cmd = Cli::command();
        for sub in ["render", "sync", "run"] {
            let sub = cmd.find_subcommand(sub).unwrap();
            let env = |id: &str| sub.get_arguments().find(|a| a.get_id() == id).and_then(|a| a.get_env());
            for (id, var) in [
                ("datastore_type", "DATASTORE_TYPE"),
                ("datastore_path", "DATASTORE_PATH"),
                ("etcd_endpoints", "ETCD_ENDPOINTS"),
                ("etcd_key_file", "ETCD_KEY_FILE"),
                ("etcd_cert_file", "ETCD_CERT_FILE"),
                ("etcd_ca_cert_file", "ETCD_CA_CERT_FILE"),
            ] {
                assert_eq!(env(id), Some(std::ffi::OsStr::new(var)), "{id}");
            }
        }
        let a = args(&[
            "render",
            "--etcd-endpoints=https://127.0.0.1:2379",
            "--etcd-ca-cert-file",
            "/pki/ca.pem",
            "--etcd-cert-file=/pki/client.pem",
            "--etcd-key-file",
            "/pki/client.key",
        ])
        .unwrap();
        let ds = a.datastore.unwrap();
        assert_eq!(ds.etcd_endpoints.as_deref(), Some("https://127.0.0.1:2379"));
        assert_eq!(ds.etcd_ca_cert_file, Some(PathBuf::from("/pki/ca.pem")));
        assert_eq!(ds.etcd_cert_file, Some(PathBuf::from("/pki/client.pem")));
        assert_eq!(ds.etcd_key_file, Some(PathBuf::from("/pki/client.key")));
        // An invalid combination is a usage error (exit 2), in clap's format.
        let e = clap_err(&["render", "--datastore-type", "etcdv3"]);
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().starts_with("error: datastore: "), "{e}");
    }
}
