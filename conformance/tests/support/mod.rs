//! What the runtime integration tests (podman, containerd) share: our
//! plugin's config as a runtime's conflist carries it, and the checks of its
//! file datastore in the test's temporary directory.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

use calico_store::model;
use conformance::suite::CalicoImpl;
use serde_json::{json, Value};

/// The `calico` plugin object (`ipam.type: calico-ipam`, run in process, one IPv4
/// pool) of a runtime's conflist: the file datastore in `<dir>/store`, a
/// debug log in `<dir>/calico.log`.
pub fn calico_plugin(node: &str, dir: &Path, pool: &str) -> Value {
    json!({
        "type": "calico",
        "nodename": node,
        "nodename_file_optional": true,
        "datastore_type": "file",
        "datastore_path": dir.join("store"),
        "mtu": 1500,
        "log_level": "debug",
        "log_file_path": dir.join("calico.log"),
        "ipam": {"type": "calico-ipam", "ipv4_pools": [pool]}
    })
}

/// The last `n` lines of a log file (empty if there is none), for failure messages.
pub fn log_tail(path: &Path, n: usize) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A command's stdout and stderr, for failure messages.
pub fn text(o: &Output) -> String {
    format!("{}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Allocated IPs and their handles, from the file datastore in `<dir>/store`.
pub fn allocations(dir: &Path) -> Vec<(IpAddr, Option<String>)> {
    let store = CalicoImpl::open_file_store(dir).unwrap();
    CalicoImpl::block_allocations(store.as_ref()).unwrap().into_iter().map(|(ip, h, _)| (ip, h)).collect()
}

/// Whether the IPAM handle `handle` exists in the file datastore in `<dir>/store`.
pub fn handle_exists(dir: &Path, handle: &str) -> bool {
    let store = CalicoImpl::open_file_store(dir).unwrap();
    store.get(&model::handle_key(handle)).unwrap().is_some()
}

/// The directories at fixed paths the runtimes create (libcni's result cache
/// in /var/lib/cni, containerd's shim sockets in /run/containerd/s) that did
/// not exist before the first fixture of this process, deepest first.
/// Call once when a fixture starts, before the runtime runs.
pub fn created_dirs() -> &'static [PathBuf] {
    static DIRS: OnceLock<Vec<PathBuf>> = OnceLock::new();
    DIRS.get_or_init(|| {
        ["/run/containerd/s", "/run/containerd", "/var/lib/cni/results", "/var/lib/cni"]
            .iter()
            .map(PathBuf::from)
            .filter(|p| !p.exists())
            .collect()
    })
}

/// Remove [`created_dirs`] that are empty (`rmdir`: a directory a parallel
/// fixture still uses stays; the last one out removes it).
pub fn remove_created_dirs() {
    for dir in created_dirs() {
        let _ = std::fs::remove_dir(dir);
    }
}
