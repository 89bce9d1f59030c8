//! The conformance suite on both implementations: Debian's ptp + host-local
//! must pass every generic case (proving the suite right; n/a only where the
//! 1.0.0-only reference plugins lack GC/STATUS), and ours must fail none.
//! Needs root and the workspace binaries (`cargo build --workspace --bins`).

use std::path::PathBuf;

use conformance::suite::{self, CalicoDatastore, CalicoImpl, Group, Implementation, Outcome, PtpHostLocal};

fn bin_dir() -> PathBuf {
    let p = testbed::target_bin("cni-probe");
    p.parent().map(|d| d.to_path_buf()).unwrap_or_default()
}

#[test]
fn reference_plugins_pass_every_generic_case() {
    let imp = PtpHostLocal { plugin_dir: "/usr/lib/cni".into(), probe_dir: bin_dir() };
    let reports = suite::run_suite(&imp, &[]);
    eprintln!("{}", suite::render_table(&[("ptp+host-local", &reports)]));
    for r in &reports {
        match (&r.group, &r.outcome) {
            (_, Outcome::Fail(why)) => panic!("reference fails {}: {why}", r.id),
            (Group::Generic, Outcome::NotApplicable(why)) => {
                assert!(["gc", "status"].contains(&r.id), "unexpected n/a for {}: {why}", r.id)
            }
            _ => {}
        }
    }
    assert!(reports.iter().filter(|r| matches!(r.outcome, Outcome::Pass(_))).count() >= 20);
}

#[test]
fn ours_passes_every_case_on_the_file_store() {
    ours_passes_every_case(CalicoDatastore::File);
}

#[test]
fn ours_passes_every_case_on_etcd() {
    ours_passes_every_case(CalicoDatastore::Etcd);
}

fn ours_passes_every_case(datastore: CalicoDatastore) {
    let dir = bin_dir();
    for b in ["calico", "calico-ipam"] {
        assert!(
            dir.join(b).exists(),
            "{b} not built in {}: run `cargo build --workspace --bins`",
            dir.display()
        );
    }
    let imp = CalicoImpl { bin_dir: dir, datastore };
    let reports = suite::run_suite(&imp, &[]);
    eprintln!("{}", suite::render_table(&[(imp.name(), &reports)]));
    let failed: Vec<String> = reports
        .iter()
        .filter_map(|r| match &r.outcome {
            Outcome::Fail(why) => Some(format!("{}: {why}", r.id)),
            _ => None,
        })
        .collect();
    assert!(failed.is_empty(), "ours fails:\n{}", failed.join("\n"));
}
