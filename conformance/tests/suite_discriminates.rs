//! The suite can fail: broken variants of the reference plugins must be
//! caught by the cases that target their defect (a suite that passes
//! everything proves nothing).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use conformance::suite::{self, Allocation, CaseCtx, ConfOpts, Implementation, Outcome, PtpHostLocal};
use serde_json::Value;

/// ptp behind a shell shim that changes one behaviour.
struct Shim {
    inner: PtpHostLocal,
    dir: tempfile::TempDir,
    calico: bool,
}

impl Shim {
    fn new(body: &str, calico: bool) -> Shim {
        let probe = testbed::target_bin("cni-probe");
        let inner = PtpHostLocal {
            plugin_dir: "/usr/lib/cni".into(),
            probe_dir: probe.parent().map(Path::to_path_buf).unwrap_or_default(),
        };
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ptp-shim");
        std::fs::write(&p, format!("#!/bin/sh\n{body}\nexec /usr/lib/cni/ptp\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        Shim { inner, dir, calico }
    }
}

impl Implementation for Shim {
    fn name(&self) -> &str {
        "shim"
    }
    fn cni_path(&self) -> Vec<PathBuf> {
        let mut v = vec![self.dir.path().to_path_buf()];
        v.extend(self.inner.cni_path());
        v
    }
    fn main_plugin(&self) -> &str {
        "ptp-shim"
    }
    fn ipam_plugin(&self) -> &str {
        "host-local"
    }
    fn plugin_conf(&self, ctx: &CaseCtx, opts: &ConfOpts) -> Value {
        let mut v = self.inner.plugin_conf(ctx, opts);
        v["type"] = "ptp-shim".into();
        v
    }
    fn allocations(&self, ctx: &CaseCtx, network: &str) -> Result<Vec<Allocation>, String> {
        self.inner.allocations(ctx, network)
    }
    fn forget_allocation(&self, ctx: &CaseCtx, network: &str, cid: &str) -> Result<bool, String> {
        self.inner.forget_allocation(ctx, network, cid)
    }
    fn is_calico(&self) -> bool {
        self.calico
    }
}

fn outcome(imp: &dyn Implementation, id: &str) -> Outcome {
    let case = suite::cases().into_iter().find(|c| c.id == id).unwrap();
    suite::run_case(imp, &case).outcome
}

#[test]
fn del_that_does_nothing_is_caught() {
    let shim = Shim::new(r#"[ "$CNI_COMMAND" = DEL ] && exit 0"#, false);
    for id in ["del", "del-no-netns", "del-netns-gone", "gc-runtime", "parallel-add"] {
        assert!(outcome(&shim, id).is_fail(), "{id} passed a plugin whose DEL does nothing");
    }
    assert!(!outcome(&shim, "add-iface").is_fail(), "ADD is untouched");
}

#[test]
fn check_that_prints_ok_is_caught() {
    // The reference Calico plugin's CHECK prints "OK" (not spec-clean).
    let shim = Shim::new(r#"[ "$CNI_COMMAND" = CHECK ] && { echo OK; exit 0; }"#, false);
    assert!(outcome(&shim, "check").is_fail());
    assert!(outcome(&shim, "check-missing-iface").is_fail());
}

#[test]
fn wrong_error_codes_are_caught() {
    let shim = Shim::new(
        r#"[ "$CNI_COMMAND" = ADD ] && [ -z "$CNI_CONTAINERID" ] && { echo '{"code":999,"msg":"x"}'; exit 1; }"#,
        false,
    );
    assert!(outcome(&shim, "env-missing").is_fail());
}

#[test]
fn calico_cases_reject_a_non_calico_data_plane() {
    let shim = Shim::new("", true);
    for id in ["calico-ip32", "calico-pod-routes", "calico-veth", "calico-host-route", "calico-handle"] {
        assert!(outcome(&shim, id).is_fail(), "{id} passed ptp");
    }
}
