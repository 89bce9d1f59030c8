//! conformance: run the suite on ptp+host-local and on our calico+calico-ipam
//! and print the behaviour × implementation table. Exits non-zero when ours
//! fails a case (or, with --strict-reference, when the reference fails one).
//!
//! Columns: ours on the file store, ours on etcd (a private etcd per case;
//! `--no-etcd` skips it), Debian's ptp + host-local.
//!
//! usage: conformance [--only ours|reference] [--no-etcd] [--cni-dir /usr/lib/cni] [FILTER...]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use conformance::suite::{self, CalicoDatastore, CalicoImpl, Implementation, PtpHostLocal};

fn main() -> ExitCode {
    let bin_dir =
        std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf)).unwrap_or_default();
    let mut cni_dir = PathBuf::from("/usr/lib/cni");
    let mut only: Option<String> = None;
    let mut etcd = true;
    let mut filter = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--only" => only = args.next(),
            "--no-etcd" => etcd = false,
            "--cni-dir" => cni_dir = args.next().map(PathBuf::from).unwrap_or(cni_dir),
            "-h" | "--help" => {
                eprintln!(
                    "usage: conformance [--only ours|reference] [--no-etcd] [--cni-dir DIR] [CASE-FILTER...]"
                );
                return ExitCode::SUCCESS;
            }
            _ => filter.push(a),
        }
    }
    let reference = PtpHostLocal { plugin_dir: cni_dir, probe_dir: bin_dir.clone() };
    let ours = CalicoImpl { bin_dir: bin_dir.clone(), datastore: CalicoDatastore::File };
    let ours_etcd = CalicoImpl { bin_dir: bin_dir.clone(), datastore: CalicoDatastore::Etcd };
    let mut imps: Vec<(&dyn Implementation, bool)> = Vec::new();
    if only.as_deref() != Some("reference") {
        imps.push((&ours, true));
        if etcd {
            imps.push((&ours_etcd, true));
        }
    }
    if only.as_deref() != Some("ours") {
        imps.push((&reference, false));
    }
    if imps.iter().any(|(_, ours)| *ours) {
        for b in ["calico", "calico-ipam", "cni-probe"] {
            if !bin_dir.join(b).exists() {
                eprintln!(
                    "conformance: {b} not found in {} (run `cargo build --workspace --bins`)",
                    bin_dir.display()
                );
                return ExitCode::FAILURE;
            }
        }
    }
    let reports: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = imps.iter().map(|(imp, _)| s.spawn(|| suite::run_suite(*imp, &filter))).collect();
        hs.into_iter().map(|h| h.join().unwrap_or_default()).collect()
    });
    let cols: Vec<(&str, &[suite::CaseReport])> =
        imps.iter().zip(&reports).map(|((imp, _), r)| (imp.name(), r.as_slice())).collect();
    print!("{}", suite::render_table(&cols));
    let ours_failed =
        imps.iter().zip(&reports).any(|((_, is_ours), r)| *is_ours && r.iter().any(|c| c.outcome.is_fail()));
    if ours_failed {
        eprintln!("conformance: our implementation fails at least one case");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
