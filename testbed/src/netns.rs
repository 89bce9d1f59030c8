//! The tree's one named-network-namespace guard.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::{run, run_stdout, unique, Error};

/// A named network namespace (`/run/netns/<name>`), deleted on drop with
/// every process still inside it killed, so a failing test (or a lab torn
/// down on an error path) leaves nothing behind.
///
/// [`Netns::forget`] hands it to someone else (a detached lab's state file),
/// who removes it later by name with [`Netns::destroy`].
#[derive(Debug)]
pub struct Netns {
    name: String,
    owned: bool,
}

impl Netns {
    /// Create `/run/netns/<unique(prefix)>` with its loopback up; panics
    /// when it cannot (test setup).
    pub fn new(prefix: &str) -> Netns {
        match Netns::create(&unique(prefix)) {
            Ok(ns) => ns,
            Err(e) => panic!("cannot create netns: {e}"),
        }
    }

    /// Create `/run/netns/<name>` (exactly that name) with its loopback up.
    pub fn create(name: &str) -> Result<Netns, Error> {
        // Named namespaces need the /run/netns bind mount `ip netns` manages.
        run_stdout(Command::new("ip").args(["netns", "add", name]))?;
        // From here on, a failure deletes it again (drop).
        let ns = Netns { name: name.to_string(), owned: true };
        run_stdout(Command::new("ip").args(["-n", name, "link", "set", "lo", "up"]))?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`: what CNI_NETNS is set to.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// A command that runs inside this namespace (`ip netns exec`).
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// A command that runs inside this namespace through `nsenter --net`,
    /// which (unlike `ip netns exec`) keeps the host's /sys and cgroup mounts.
    pub fn nsenter(&self, program: impl AsRef<OsStr>) -> Command {
        nsenter(&self.path(), program)
    }

    /// Run `argv` inside the namespace; panic with stderr on failure.
    pub fn exec(&self, argv: &[&str]) -> String {
        let mut c = self.cmd(argv[0]);
        c.args(&argv[1..]);
        match run(&mut c) {
            Ok(out) => String::from_utf8_lossy(&out.stdout).into_owned(),
            Err(e) => panic!("in netns {}: {e}", self.name),
        }
    }

    /// Run `argv` inside the namespace and return whether it succeeded.
    pub fn try_exec(&self, argv: &[&str]) -> Result<String, String> {
        let mut c = self.cmd(argv[0]);
        c.args(&argv[1..]);
        run(&mut c).map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Run a shell snippet inside the namespace.
    pub fn sh(&self, script: &str) -> Result<String, String> {
        self.try_exec(&["sh", "-c", script])
    }

    /// Give this namespace an uplink (veth `up0`, 192.0.2.1/24, both ends
    /// inside the namespace) and a default route through it, as a node has.
    /// Proxy ARP only answers a pod's ARP for 169.254.1.1 when the node
    /// routes that address out of *another* interface; a bare namespace has
    /// no such route. This kernel has no `dummy` module, hence the veth.
    pub fn add_uplink(&self) {
        self.exec(&["ip", "link", "add", "up0", "type", "veth", "peer", "name", "up1"]);
        self.exec(&["ip", "link", "set", "up0", "up"]);
        self.exec(&["ip", "link", "set", "up1", "up"]);
        self.exec(&["ip", "addr", "add", "192.0.2.1/24", "dev", "up0"]);
        self.exec(&["ip", "route", "add", "default", "via", "192.0.2.254"]);
    }

    /// Kill every process still running in the namespace.
    pub fn kill_all(&self) {
        kill_processes_in(&self.name);
    }

    /// Keep the namespace (and what runs in it) when this handle is dropped.
    pub fn forget(&mut self) {
        self.owned = false;
    }

    /// Kill what runs inside the namespace `name` and delete it (also one
    /// this process never created: a detached lab's).
    pub fn destroy(name: &str) {
        kill_processes_in(name);
        let _ = Command::new("ip").args(["netns", "del", name]).status();
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if self.owned {
            Netns::destroy(&self.name);
        }
    }
}

/// `program` run in the network namespace at `netns` (`nsenter --net`).
pub(crate) fn nsenter(netns: &Path, program: impl AsRef<OsStr>) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", netns.display())).arg("--").arg(program);
    c
}

/// SIGKILL every process inside the namespace `name` (`ip netns pids`):
/// their pids were just listed, and a process that exited meanwhile only
/// makes kill(2) fail with ESRCH.
fn kill_processes_in(name: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() else { return };
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        if let Ok(pid) = pid.parse::<i32>() {
            if pid > 1 {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}
