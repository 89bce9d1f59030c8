//! The conformance suite: behaviours a runtime can observe, run against an
//! [`Implementation`] (a plugin + IPAM pair with hooks to inspect its state).
//!
//! Every case gets fresh namespaces: a "node" netns in which the plugins are
//! executed (`nsenter --net=/run/netns/<node> --`) and pod netns as needed,
//! plus a private state directory (IPAM data, datastore, result cache). No
//! case touches the root namespace. Cases return [`Outcome`]s; a panic in a
//! fixture is caught and reported as a failure of that case only.

pub mod calico;
pub mod env;
pub mod generic;
pub mod impls;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

pub use env::Env;
pub use impls::{CalicoImpl, Datastore as CalicoDatastore, PtpHostLocal};

/// The result of one case on one implementation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Pass(String),
    Fail(String),
    /// The implementation legitimately lacks the feature (reason given).
    NotApplicable(String),
}

impl Outcome {
    pub fn is_fail(&self) -> bool {
        matches!(self, Outcome::Fail(_))
    }
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Pass(_) => "pass",
            Outcome::Fail(_) => "FAIL",
            Outcome::NotApplicable(_) => "n/a",
        }
    }
    pub fn note(&self) -> &str {
        match self {
            Outcome::Pass(s) | Outcome::Fail(s) | Outcome::NotApplicable(s) => s,
        }
    }
}

/// What a case body returns: `Err` is a failure with its reason.
pub type CaseResult = Result<Outcome, String>;

/// `ensure!(cond, "fmt", args)`: fail the case with a message unless `cond`.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err(format!($($arg)+));
        }
    };
}

pub fn pass() -> CaseResult {
    Ok(Outcome::Pass(String::new()))
}

pub fn na(why: impl Into<String>) -> CaseResult {
    Ok(Outcome::NotApplicable(why.into()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// Spec MUSTs every plugin must meet.
    Generic,
    /// Calico behaviours (the Calico half of the table; conformance/README.md).
    Calico,
}

/// One behaviour.
pub struct Case {
    pub id: &'static str,
    pub title: &'static str,
    pub group: Group,
    pub run: fn(&Env) -> CaseResult,
}

/// One IP held by the IPAM, as its state says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub ip: IpAddr,
    /// The container ID it belongs to (host-local's file, Calico's handle).
    pub container_id: String,
    pub ifname: Option<String>,
}

/// Options of a case's network config.
#[derive(Debug, Clone, Default)]
pub struct ConfOpts {
    pub ipv4: bool,
    pub ipv6: bool,
}

impl ConfOpts {
    pub fn v4() -> Self {
        ConfOpts { ipv4: true, ipv6: false }
    }
}

/// What a case gives an implementation's hooks: where its state lives.
#[derive(Debug, Clone, Copy)]
pub struct CaseCtx<'a> {
    /// The case's private directory (IPAM data, file datastore, logs).
    pub state: &'a Path,
    /// The node name (= the node netns name).
    pub node: &'a str,
    /// The case's own etcd as the plugins (in the node netns) reach it,
    /// when the implementation asked for one.
    pub etcd: Option<&'a str>,
    /// The same etcd as the suite itself (in the test's netns) reaches it.
    pub etcd_local: Option<&'a str>,
}

/// An implementation under test.
pub trait Implementation: Send + Sync {
    /// Column name in the table.
    fn name(&self) -> &str;
    /// Directories of CNI_PATH (must also contain `cni-probe` for chaining cases).
    fn cni_path(&self) -> Vec<PathBuf>;
    /// The interface plugin (`type` of the first plugin).
    fn main_plugin(&self) -> &str;
    /// The IPAM delegate.
    fn ipam_plugin(&self) -> &str;
    /// The plugin object (with its `ipam`), keeping all state in the case's
    /// directory (or its etcd).
    fn plugin_conf(&self, ctx: &CaseCtx, opts: &ConfOpts) -> Value;
    /// Every address the IPAM holds for `network`.
    fn allocations(&self, ctx: &CaseCtx, network: &str) -> Result<Vec<Allocation>, String>;
    /// Remove the IPAM's record of a container's addresses behind the
    /// plugin's back (to see whether CHECK consults the IPAM). `Ok(false)`:
    /// not supported by this implementation's hooks.
    fn forget_allocation(&self, ctx: &CaseCtx, network: &str, container_id: &str) -> Result<bool, String>;
    /// Whether the Calico-specific cases apply.
    fn is_calico(&self) -> bool;
    /// Start a private etcd for every case (its endpoint is in [`CaseCtx::etcd`]).
    fn needs_etcd(&self) -> bool {
        false
    }
}

/// All cases, generic first.
pub fn cases() -> Vec<Case> {
    let mut v = generic::cases();
    v.extend(calico::cases());
    v
}

const CALICO_ONLY: &str = "Calico-specific behaviour";

/// One row of a report.
#[derive(Debug, Clone)]
pub struct CaseReport {
    pub id: &'static str,
    pub title: &'static str,
    pub group: Group,
    pub outcome: Outcome,
    pub elapsed: Duration,
}

/// Run one case on one implementation in fresh namespaces; fixture panics
/// become failures.
pub fn run_case(imp: &dyn Implementation, case: &Case) -> CaseReport {
    let start = Instant::now();
    let outcome = if case.group == Group::Calico && !imp.is_calico() {
        Outcome::NotApplicable(CALICO_ONLY.into())
    } else {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let env = Env::new(imp)?;
            (case.run)(&env)
        }));
        match r {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => Outcome::Fail(e),
            Err(p) => Outcome::Fail(format!(
                "panicked: {}",
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            )),
        }
    };
    CaseReport { id: case.id, title: case.title, group: case.group, outcome, elapsed: start.elapsed() }
}

/// Run the selected cases (all when `filter` is empty; otherwise ids
/// containing one of the filters) on one implementation.
pub fn run_suite(imp: &dyn Implementation, filter: &[String]) -> Vec<CaseReport> {
    cases()
        .iter()
        .filter(|c| filter.is_empty() || filter.iter().any(|f| c.id.contains(f.as_str())))
        .map(|c| run_case(imp, c))
        .collect()
}

/// The table: behaviour × implementation, then the notes of every non-pass cell.
pub fn render_table(columns: &[(&str, &[CaseReport])]) -> String {
    let mut out = String::new();
    let Some((_, first)) = columns.first() else { return out };
    let w_id = first.iter().map(|r| r.id.len()).max().unwrap_or(2).max(4);
    let w_title = first.iter().map(|r| r.title.len()).max().unwrap_or(5).max(9);
    let w_col: Vec<usize> = columns.iter().map(|(n, _)| n.len().max(4)).collect();
    out.push_str(&format!("{:<w_id$}  {:<w_title$}", "case", "behaviour"));
    for ((name, _), w) in columns.iter().zip(&w_col) {
        out.push_str(&format!("  {name:<w$}"));
    }
    out.push('\n');
    out.push_str(&"-".repeat(w_id + 2 + w_title + w_col.iter().map(|w| w + 2).sum::<usize>()));
    out.push('\n');
    for (i, row) in first.iter().enumerate() {
        out.push_str(&format!("{:<w_id$}  {:<w_title$}", row.id, row.title));
        for ((_, reports), w) in columns.iter().zip(&w_col) {
            let label = reports.get(i).map(|r| r.outcome.label()).unwrap_or("-");
            out.push_str(&format!("  {label:<w$}"));
        }
        out.push('\n');
    }
    out.push_str("\nnotes:\n");
    for (name, reports) in columns {
        for r in reports.iter() {
            let note = r.outcome.note();
            let calico_na = r.group == Group::Calico && note == CALICO_ONLY;
            if !note.is_empty() && !calico_na {
                out.push_str(&format!("  [{name}] {} {}: {note}\n", r.id, r.outcome.label()));
            }
        }
    }
    out
}
