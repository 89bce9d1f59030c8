//! # testbed: what every test (and the namespace lab) needs to stay off the machine's own network
//!
//! Owns test fixtures, and the building blocks of `calico-lab` (a
//! dependency of the test and demo tools `calico-lab` and `cni-bench`, a
//! dev-dependency of the other crates; never shipped: `publish = false`):
//! * [`unique`]: names that are unique per process and call (parallel tests);
//! * [`Netns`]: the tree's one named-network-namespace guard: removed on drop
//!   with every process still inside it killed, so a failing test leaves
//!   nothing behind; [`Netns::forget`] + [`Netns::destroy`] for a namespace
//!   that outlives its creator (a detached lab); with [`Netns::add_uplink`],
//!   a node's uplink and default route;
//! * [`Daemon`]: a long-running process in its own process group, stopped
//!   (group and all, by the tree's one process-group killer,
//!   [`kill_process_group`]) on drop;
//! * [`run`], [`run_stdout`], [`run_stdout_with_input`], [`sh`]: commands run
//!   to completion, failing with their stderr ([`Error`]);
//! * [`Etcd`]: a real `etcd` on a free loopback port with a temporary data
//!   directory, stopped on drop, restartable for fault tests; or, with
//!   [`Etcd::start_in`], on the loopback of a [`Netns`] (where a node's
//!   plugins run);
//! * [`NetnsForward`]: a loopback port inside a netns forwarded to an address
//!   in the test's own netns (plugins in a node netns reaching [`Etcd`]);
//! * [`target_bin`]: the path of a workspace binary built by cargo;
//! * [`Rng`], [`finish`]: random kill points that can be replayed, and a
//!   plugin process's exit code and stdout (the crash tests);
//! * [`percentile`]: the one percentile every bench and lab measure reports.
//!
//! May call: `ip netns`, `nsenter`, `etcd`, `curl` (etcd's health), kill(2)
//! on the processes and groups it started or found inside its namespaces,
//! the filesystem. Never touches the root namespace's links, routes or
//! firewall, and holds no `unsafe` (signals go through `nix`).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

mod forward;
mod netns;
mod process;
mod tls_etcd;
pub use forward::NetnsForward;
pub use netns::Netns;
pub use nix::sys::signal::Signal;
pub use process::{kill_process_group, run_stdout, run_stdout_with_input, Daemon};
pub use tls_etcd::TlsEtcd;

use netns::nsenter;

/// A command or daemon that could not be started, or exited non-zero.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot start {what}: {source}")]
    Spawn {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{cmd} failed ({status}): {output}")]
    Failed { cmd: String, status: ExitStatus, output: String },
    #[error("I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io { path: path.to_path_buf(), source }
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process and call: `<prefix><pid hex><n>`.
/// Kept short so it can also name links (15 characters at most) when the
/// prefix is at most 4 characters.
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{:x}{n:x}", std::process::id() & 0xfffff)
}

/// Run a command, failing with its stderr when it exits non-zero (the
/// message of [`Error`]; [`run_stdout`] keeps it typed).
pub fn run(cmd: &mut Command) -> Result<Output, String> {
    process::complete(cmd, None).map_err(|e| e.to_string())
}

/// Run a shell snippet (`sh -c`), returning stdout; panics with context on failure.
/// For test setup only.
pub fn sh(script: &str) -> String {
    match run(Command::new("sh").arg("-c").arg(script)) {
        Ok(out) => String::from_utf8_lossy(&out.stdout).into_owned(),
        Err(e) => panic!("{e}"),
    }
}

/// A free TCP port on 127.0.0.1 (bound then released; the window is small
/// and ports are handed out by the kernel, so parallel tests do not collide).
pub fn free_port() -> u16 {
    match TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
        Ok(a) => a.port(),
        Err(e) => panic!("no free port: {e}"),
    }
}

/// A real etcd (Debian `etcd-server`) on free loopback ports with a
/// temporary data directory. Stopped (and the directory removed) on drop.
pub struct Etcd {
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    /// The namespace etcd runs in (and is health-checked from); `None` is the
    /// test's own.
    netns: Option<PathBuf>,
    child: Option<Child>,
}

impl Etcd {
    /// The client port of an etcd started with [`Etcd::start_in`]: etcd's
    /// usual port, which cannot collide because the namespace's loopback is
    /// the test's alone.
    pub const NETNS_CLIENT_PORT: u16 = 2379;
    const NETNS_PEER_PORT: u16 = 2380;

    /// Start etcd and wait until it answers.
    ///
    /// The ports come from [`free_port`], which releases them before etcd
    /// binds them: a parallel test can take one in between. etcd then exits
    /// at once with "address already in use", and the start is retried on
    /// fresh ports with a fresh data directory.
    pub fn start() -> Etcd {
        let mut last = String::new();
        for _ in 0..5 {
            let client = free_port();
            let mut peer = free_port();
            while peer == client {
                peer = free_port();
            }
            match Etcd::try_launch(None, client, peer) {
                Ok(etcd) => return etcd,
                Err(log) if log.contains("address already in use") => last = log,
                Err(log) => panic!("etcd did not become healthy on 127.0.0.1:{client}: {log}"),
            }
        }
        panic!("etcd could not bind free loopback ports in 5 attempts: {last}");
    }

    /// Start etcd inside `ns`, listening on the namespace's own loopback
    /// (`127.0.0.1:2379`), for plugins running in that namespace (whose
    /// loopback is not the test's, so [`Etcd::start`]'s is out of their
    /// reach). The namespace must outlive it (dropping the namespace kills it).
    pub fn start_in(ns: &Netns) -> Etcd {
        Etcd::launch(Some(ns.path()), Etcd::NETNS_CLIENT_PORT, Etcd::NETNS_PEER_PORT)
    }

    fn launch(netns: Option<PathBuf>, client_port: u16, peer_port: u16) -> Etcd {
        match Etcd::try_launch(netns, client_port, peer_port) {
            Ok(etcd) => etcd,
            Err(log) => panic!("etcd did not become healthy on 127.0.0.1:{client_port}: {log}"),
        }
    }

    fn try_launch(netns: Option<PathBuf>, client_port: u16, peer_port: u16) -> Result<Etcd, String> {
        let dir = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("tempdir: {e}"),
        };
        let mut etcd = Etcd { dir, client_port, peer_port, netns, child: None };
        etcd.try_spawn()?;
        Ok(etcd)
    }

    /// `http://127.0.0.1:<port>` (in etcd's namespace).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// `program`, run in etcd's namespace.
    fn command(&self, program: &str) -> Command {
        match &self.netns {
            Some(ns) => nsenter(ns, program),
            None => Command::new(program),
        }
    }

    fn spawn(&mut self) {
        if let Err(log) = self.try_spawn() {
            let place = self.netns.as_ref().map(|ns| format!(" in {}", ns.display())).unwrap_or_default();
            panic!("etcd did not become healthy on {}{place}: {log}", self.endpoint());
        }
    }

    /// Start etcd and wait for it; on failure stop it and return its log.
    fn try_spawn(&mut self) -> Result<(), String> {
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::File::create(self.dir.path().join("etcd.log")).ok();
        let mut cmd = self.command("etcd");
        cmd.arg("--name=test")
            .arg(format!("--data-dir={}", self.dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            .arg("--log-level=error")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        match log {
            Some(f) => cmd.stderr(f),
            None => cmd.stderr(Stdio::null()),
        };
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => panic!("cannot start etcd (is etcd-server installed?): {e}"),
        };
        self.child = Some(child);
        let ready = self.wait_ready();
        if ready.is_err() {
            self.stop();
        }
        ready
    }

    /// Poll `/health` until it answers, etcd exits, or 20 s pass.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let url = format!("{}/health", self.endpoint());
        let log = |dir: &Path| std::fs::read_to_string(dir.join("etcd.log")).unwrap_or_default();
        while Instant::now() < deadline {
            if let Ok(out) = self.command("curl").args(["-sf", "-m", "1", &url]).output() {
                if out.status.success() && String::from_utf8_lossy(&out.stdout).contains("true") {
                    return Ok(());
                }
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                return Err(format!("etcd exited ({status}): {}", log(self.dir.path())));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("no answer within 20 s: {}", log(self.dir.path())))
    }

    /// Stop etcd (SIGKILL), keeping its data for [`Etcd::restart`].
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start etcd again on the same ports and data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The path of a binary built in this workspace's target directory
/// (`target/<profile>/<name>`), found from the running test executable
/// (`target/<profile>/deps/<test>`). Panics with a hint when it is missing.
pub fn target_bin(name: &str) -> PathBuf {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => panic!("current_exe: {e}"),
    };
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let p = dir.join(name);
    if !p.exists() {
        panic!("{} not built: run `cargo build --workspace --bins` first (make test does)", p.display());
    }
    p
}

/// Poll `f` every 50 ms until it holds; panic naming `what` after
/// `timeout`. For state a test waits on that has no event to wait for
/// (a route the agent writes, a BGP session coming up).
pub fn wait_for(what: &str, timeout: std::time::Duration, mut f: impl FnMut() -> bool) {
    let end = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < end {
        if f() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// A xorshift64 for tests that pick random points (where to kill a plugin):
/// seeded from the clock, the seed printed so that a failing run can be
/// replayed with [`Rng::new`].
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    pub fn from_clock() -> Rng {
        let now = std::time::SystemTime::now().duration_since(std::time::SystemTime::UNIX_EPOCH);
        let seed = now.map(|d| d.as_nanos() as u64).unwrap_or(0x9e37_79b9_7f4a_7c15);
        eprintln!("seed {}", seed | 1);
        Rng::new(seed)
    }
    /// A number below `n` (> 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Wait for a plugin process: its exit code (None: killed by a signal) and stdout.
pub fn finish(c: Child) -> (Option<i32>, String) {
    match c.wait_with_output() {
        Ok(out) => (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned()),
        Err(e) => panic!("waiting for a plugin process: {e}"),
    }
}

/// The `p` percentile (0..=1) of `sorted` by nearest rank: the smallest
/// sample with at least a fraction `p` of the samples at or below it (p50 of
/// 1..=50 is 25, p99 is 50); zero for no samples.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (sorted.len() as f64 * p).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let ms = |v: u64| Duration::from_millis(v);
        let samples: Vec<_> = (1..=50).map(ms).collect();
        assert_eq!(percentile(&samples, 0.5), ms(25));
        assert_eq!(percentile(&samples, 0.99), ms(50));
        assert_eq!(percentile(&samples, 0.0), ms(1));
        assert_eq!(percentile(&samples, 1.0), ms(50));
        assert_eq!(percentile(&[ms(1), ms(2)], 0.5), ms(1));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn a_taken_port_fails_fast_as_address_in_use() {
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let taken = held.local_addr().unwrap().port();
        let started = Instant::now();
        let err =
            Etcd::try_launch(None, taken, free_port()).err().expect("etcd must not start on a taken port");
        assert!(err.contains("address already in use"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(15), "not detected before the health deadline");
    }

    #[test]
    fn unique_names_differ_and_fit_a_link_name() {
        let a = unique("cal");
        let b = unique("cal");
        assert_ne!(a, b);
        assert!(a.len() <= 15, "{a}");
    }

    #[test]
    fn etcd_in_a_netns_answers_there_and_keeps_its_data_across_restart() {
        let ns = Netns::new("tbe");
        let mut etcd = Etcd::start_in(&ns);
        let ep = etcd.endpoint();
        ns.exec(&["etcdctl", "--endpoints", &ep, "put", "k", "v"]);
        etcd.restart();
        assert_eq!(ns.exec(&["etcdctl", "--endpoints", &ep, "get", "--print-value-only", "k"]).trim(), "v");
        etcd.stop();
        assert!(ns.try_exec(&["curl", "-sf", "-m", "1", &format!("{ep}/health")]).is_err());
    }
}
