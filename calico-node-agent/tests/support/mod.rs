//! What the agent's integration tests that start `calico-node-agent` share
//! (each test file is a crate of its own and includes this with `mod support;`).

use std::path::Path;
use std::process::Command;

/// The agent's flags these tests give (`extra` first: node name, addresses,
/// peers): the file store at `store_dir`, BIRD's config and socket under
/// `run`, a quick retry and its log file.
pub fn agent_args(cmd: &mut Command, extra: &[&str], store_dir: &Path, run: &Path) {
    cmd.args(extra)
        .arg("--datastore-path")
        .arg(store_dir)
        .arg("--bird-config")
        .arg(run.join("bird.conf"))
        .arg("--bird-socket")
        .arg(run.join("bird.ctl"))
        .args(["--poll-interval-ms", "200"])
        .arg("--log-file")
        .arg(run.join("agent.log"));
}
