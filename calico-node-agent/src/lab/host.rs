//! The lab's building blocks: named network namespaces that delete
//! themselves (killing what runs inside), processes started inside them, and
//! small helpers that run Rust code inside a namespace on its own thread.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::LabError;

/// A named netns (`/run/netns/<name>`) created by the lab. Dropping it kills
/// every process inside and deletes it; [`LabNetns::forget`] hands ownership
/// to the state file (detached `calico-lab up`).
#[derive(Debug)]
pub struct LabNetns {
    name: String,
    owned: bool,
}

impl LabNetns {
    pub fn create(name: &str) -> Result<LabNetns, LabError> {
        // Named namespaces need the /run/netns bind mount `ip netns` manages;
        // this is the one thing the lab leaves to iproute2.
        run_cmd(Command::new("ip").args(["netns", "add", name]))?;
        let ns = LabNetns { name: name.to_string(), owned: true };
        ns.with_netlink(|nl| {
            let lo = nl.link_by_name("lo")?;
            nl.set_link_up(lo.index)
        })?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    pub fn forget(&mut self) {
        self.owned = false;
    }

    /// Run `f` with a netlink socket inside this namespace.
    pub fn with_netlink<T: Send>(
        &self,
        f: impl FnOnce(&mut netlink_util::Netlink) -> netlink_util::Result<T> + Send,
    ) -> Result<T, LabError> {
        let ns = netlink_util::Netns::open(self.path())?;
        Ok(ns.run(f)?)
    }

    /// Run `f` on a thread inside this namespace (its sockets live there).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> Result<T, LabError> + Send) -> Result<T, LabError> {
        let ns = netlink_util::Netns::open(self.path())?;
        ns.run_thread(|| Ok(f()))?
    }

    /// A command that runs inside this namespace (`nsenter --net`, which keeps
    /// the host's /sys and cgroup mounts, unlike `ip netns exec`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path().display())).arg("--").arg(program);
        c
    }

    /// Run a command inside the namespace and return its stdout.
    pub fn output(&self, argv: &[&str]) -> Result<String, LabError> {
        let mut c = self.command(argv[0]);
        c.args(&argv[1..]);
        run_cmd(&mut c)
    }

    /// Start a long-running process inside the namespace, stdout/stderr to `log`.
    pub fn spawn(&self, name: &str, mut cmd: Command, log: &Path) -> Result<LabProc, LabError> {
        let out = File::create(log).map_err(|e| LabError::io(log, e))?;
        let err = out.try_clone().map_err(|e| LabError::io(log, e))?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        // SAFETY: setsid() is async-signal-safe; a new session keeps a
        // terminal's Ctrl-C away from lab daemons (the lab stops them itself).
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| LabError::Spawn { what: name.to_string(), source: e })?;
        Ok(LabProc { name: name.to_string(), child: Some(child), log: log.to_path_buf() })
    }

    /// Kill every process inside (pids from `ip netns pids`).
    pub fn kill_all(name: &str) {
        if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    // SAFETY: plain kill(2) of a process inside our namespace.
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                    }
                }
            }
        }
    }

    /// Kill what runs inside and delete the namespace (by name).
    pub fn destroy(name: &str) {
        LabNetns::kill_all(name);
        let _ = Command::new("ip").args(["netns", "del", name]).status();
    }
}

impl Drop for LabNetns {
    fn drop(&mut self) {
        if self.owned {
            LabNetns::destroy(&self.name);
        }
    }
}

/// A lab daemon (etcd, BIRD, agent, nginx). Stopped on drop: SIGTERM, then
/// SIGKILL if it has not exited within a second.
#[derive(Debug)]
pub struct LabProc {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl LabProc {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Still running?
    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Forget the child without stopping it (detached lab).
    pub fn forget(&mut self) {
        self.child = None;
    }

    pub fn kill_now(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let end = Instant::now() + Duration::from_secs(1);
            while Instant::now() < end {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

impl Drop for LabProc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Run a command to completion; its stdout, or an error with stderr.
pub fn run_cmd(cmd: &mut Command) -> Result<String, LabError> {
    let out = cmd.output().map_err(|e| LabError::Spawn { what: format!("{cmd:?}"), source: e })?;
    if !out.status.success() {
        return Err(LabError::Command {
            cmd: format!("{cmd:?}"),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            )
            .trim()
            .to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A minimal HTTP/1.0 GET (run it inside a namespace with [`LabNetns::run`]).
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<String, LabError> {
    let fail = |e: std::io::Error| LabError::Http { addr, reason: e.to_string() };
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(fail)?;
    s.set_read_timeout(Some(timeout)).map_err(fail)?;
    s.set_write_timeout(Some(timeout)).map_err(fail)?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n").map_err(fail)?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).map_err(fail)?;
    let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((buf.as_str(), ""));
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(LabError::Http {
            addr,
            reason: format!("unexpected reply: {}", head.lines().next().unwrap_or("")),
        });
    }
    Ok(body.to_string())
}

/// Poll `f` until it returns `Some`, or fail with `what` after `timeout`.
pub fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Result<T, LabError> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() >= end {
            return Err(LabError::Timeout(what.to_string()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
