//! What the lab does inside its namespaces beyond `testbed`'s commands:
//! netlink and Rust code on a thread that entered the namespace, commands
//! whose failure is a [`LabError`], a minimal HTTP client and a poll loop.
//! The namespaces themselves are `testbed`'s [`Netns`] guards and the
//! daemons `testbed`'s [`testbed::Daemon`]s.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use testbed::Netns;

use super::LabError;

/// The lab's work inside one of its namespaces.
pub trait InNetns {
    /// Run `f` with a netlink socket inside this namespace.
    fn with_netlink<T: Send>(
        &self,
        f: impl FnOnce(&mut netlink_util::Netlink) -> netlink_util::Result<T> + Send,
    ) -> Result<T, LabError>;

    /// Run `f` on a thread inside this namespace (its sockets live there).
    fn run<T: Send>(&self, f: impl FnOnce() -> Result<T, LabError> + Send) -> Result<T, LabError>;

    /// Run a command inside the namespace (`nsenter --net`) and return its stdout.
    fn output(&self, argv: &[&str]) -> Result<String, LabError>;
}

impl InNetns for Netns {
    fn with_netlink<T: Send>(
        &self,
        f: impl FnOnce(&mut netlink_util::Netlink) -> netlink_util::Result<T> + Send,
    ) -> Result<T, LabError> {
        let ns = netlink_util::Netns::open(self.path())?;
        Ok(ns.run(f)?)
    }

    fn run<T: Send>(&self, f: impl FnOnce() -> Result<T, LabError> + Send) -> Result<T, LabError> {
        let ns = netlink_util::Netns::open(self.path())?;
        ns.run_thread(|| Ok(f()))?
    }

    fn output(&self, argv: &[&str]) -> Result<String, LabError> {
        let mut c = self.nsenter(argv[0]);
        c.args(&argv[1..]);
        run_cmd(&mut c)
    }
}

/// Run a command to completion; its stdout, or an error with stderr.
pub fn run_cmd(cmd: &mut Command) -> Result<String, LabError> {
    Ok(testbed::run_stdout(cmd)?)
}
/// A minimal HTTP/1.0 GET (run it inside a namespace with [`InNetns::run`]).
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
