//! conformance: run the suite on ptp+host-local and on our calico+calico-ipam
//! and print the behaviour × implementation table. Exits 1 when ours fails a
//! case (or, with --strict-reference, when the reference fails one), 2 on bad
//! usage.
//!
//! Columns: ours on the file store, ours on etcd (a private etcd per case;
//! `--no-etcd` skips it), Debian's ptp + host-local.
//!
//! usage: conformance [--only ours|reference] [--no-etcd] [--strict-reference]
//!        [--cni-dir /usr/lib/cni] [-v|--log-level LEVEL] [FILTER...]
//!
//! Owns its command line and exit codes; the table goes to stdout, the
//! verdict and diagnostics to stderr (`tool_cli`'s logger). May call the
//! suite (`conformance::suite`) and the plugin binaries beside this one.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use conformance::suite::{self, CalicoDatastore, CalicoImpl, Implementation, PtpHostLocal};
use tool_cli::LogArgs;

const TOOL: &str = "conformance";

#[derive(Debug, Parser)]
#[command(
    name = "conformance",
    version,
    about = "The CNI conformance table: our calico + calico-ipam against Debian's ptp + host-local",
    args_override_self = true
)]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
    /// Run one side only
    #[arg(long, value_enum, value_name = "SIDE")]
    only: Option<Side>,
    /// Skip the column of ours on etcd
    #[arg(long)]
    no_etcd: bool,
    /// Fail (exit 1) when the reference fails a case too
    #[arg(long)]
    strict_reference: bool,
    /// Where the reference plugins (ptp, host-local) are
    #[arg(long, value_name = "DIR", default_value = "/usr/lib/cni")]
    cni_dir: PathBuf,
    /// Run only the cases whose id contains one of these
    #[arg(value_name = "CASE-FILTER")]
    filter: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Side {
    Ours,
    Reference,
}

fn run(cli: &Cli) -> Result<ExitCode, String> {
    let bin_dir =
        std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf)).unwrap_or_default();
    let reference = PtpHostLocal { plugin_dir: cli.cni_dir.clone(), probe_dir: bin_dir.clone() };
    let ours = CalicoImpl { bin_dir: bin_dir.clone(), datastore: CalicoDatastore::File };
    let ours_etcd = CalicoImpl { bin_dir: bin_dir.clone(), datastore: CalicoDatastore::Etcd };
    let mut imps: Vec<(&dyn Implementation, bool)> = Vec::new();
    if cli.only != Some(Side::Reference) {
        imps.push((&ours, true));
        if !cli.no_etcd {
            imps.push((&ours_etcd, true));
        }
    }
    if cli.only != Some(Side::Ours) {
        imps.push((&reference, false));
    }
    if imps.iter().any(|(_, ours)| *ours) {
        for b in ["calico", "calico-ipam", "cni-probe"] {
            if !bin_dir.join(b).exists() {
                return Err(format!(
                    "{b} not found in {} (run `cargo build --workspace --bins`)",
                    bin_dir.display()
                ));
            }
        }
    }
    log::debug!("columns: {}", imps.iter().map(|(i, _)| i.name()).collect::<Vec<_>>().join(", "));
    let reports: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> =
            imps.iter().map(|(imp, _)| s.spawn(|| suite::run_suite(*imp, &cli.filter))).collect();
        hs.into_iter().map(|h| h.join().unwrap_or_default()).collect()
    });
    let cols: Vec<(&str, &[suite::CaseReport])> =
        imps.iter().zip(&reports).map(|((imp, _), r)| (imp.name(), r.as_slice())).collect();
    print!("{}", suite::render_table(&cols));
    let failed = |want_ours: bool| {
        imps.iter()
            .zip(&reports)
            .any(|((_, is_ours), r)| *is_ours == want_ours && r.iter().any(|c| c.outcome.is_fail()))
    };
    if failed(true) {
        return Err("our implementation fails at least one case".into());
    }
    if cli.strict_reference && failed(false) {
        return Err("the reference fails at least one case (--strict-reference)".into());
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = tool_cli::Logging::new(TOOL).init(&cli.log) {
        return tool_cli::finish::<ExitCode, _>(TOOL, Err(e));
    }
    tool_cli::finish(TOOL, run(&cli))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;

    fn parse(argv: &[&str]) -> Result<Cli, clap::Error> {
        tool_cli::try_parse_without_env(std::iter::once("conformance").chain(argv.iter().copied()))
    }

    #[test]
    fn flags_and_filters() {
        // `make conformance`: no arguments, everything.
        let c = parse(&[]).unwrap();
        assert_eq!((c.only, c.no_etcd, c.strict_reference), (None, false, false));
        assert_eq!(c.cni_dir, PathBuf::from("/usr/lib/cni"));
        let c = parse(&["--only", "ours", "--no-etcd", "add-", "--cni-dir=/opt/cni/bin", "del-"]).unwrap();
        assert_eq!(c.only, Some(Side::Ours));
        assert!(c.no_etcd);
        assert_eq!(c.cni_dir, PathBuf::from("/opt/cni/bin"));
        assert_eq!(c.filter, ["add-", "del-"]);
        assert_eq!(parse(&["--only=reference", "--strict-reference"]).unwrap().only, Some(Side::Reference));
        assert_eq!(parse(&["--only", "both"]).unwrap_err().kind(), ErrorKind::InvalidValue);
        // An unknown flag is no longer taken as a case filter.
        assert_eq!(parse(&["--bogus"]).unwrap_err().kind(), ErrorKind::UnknownArgument);
        assert_eq!(parse(&["--help"]).unwrap_err().kind(), ErrorKind::DisplayHelp);
        assert_eq!(parse(&["-vv"]).unwrap().log.verbose, 2);
    }
}
