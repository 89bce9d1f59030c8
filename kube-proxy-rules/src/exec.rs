//! Running the firewall tools (`iptables*`, `nft`) in the current network
//! namespace or, for tests and benchmarks, in a named one through
//! `ip netns exec` (never the root namespace's firewall by accident: the
//! namespace is explicit).

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, ExitStatus, Output, Stdio};

/// Where the tools run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Runner {
    netns: Option<String>,
}

impl Runner {
    /// The caller's network namespace.
    pub fn current() -> Self {
        Runner { netns: None }
    }

    /// The named namespace (`/run/netns/<name>`), through `ip netns exec`.
    pub fn in_netns(name: &str) -> Self {
        Runner { netns: Some(name.to_string()) }
    }

    pub fn netns(&self) -> Option<&str> {
        self.netns.as_deref()
    }

    fn command(&self, program: &str) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, program]);
                c
            }
            None => Command::new(program),
        }
    }

    /// Run `program args…` to completion, with `stdin` (if any) written from a
    /// second thread while this one drains stdout and stderr: a child that
    /// writes more than a pipe buffer of warnings before it has read the
    /// whole payload would otherwise deadlock.
    pub fn run(&self, program: &str, args: &[&str], stdin: Option<&[u8]>) -> std::io::Result<Output> {
        let mut cmd = self.command(program);
        cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
        let mut child = cmd.spawn()?;
        let pipe = child.stdin.take();
        std::thread::scope(|s| {
            if let (Some(data), Some(mut pipe)) = (stdin, pipe) {
                // A write error (the child exited early) shows up in its status and stderr.
                s.spawn(move || {
                    let _ = pipe.write_all(data);
                });
            }
            child.wait_with_output()
        })
    }

    /// Run `program args…` to completion, handing each line of its stdout
    /// to `line` as it arrives: a dump is never held whole (an
    /// `iptables-save -t nat` of 10,000 services × 10 endpoints is ~40 MB,
    /// of which a full sync needs only the chain names). Returns the exit
    /// status and stderr.
    pub fn run_lines(
        &self,
        program: &str,
        args: &[&str],
        mut line: impl FnMut(&str),
    ) -> std::io::Result<(ExitStatus, Vec<u8>)> {
        let mut cmd = self.command(program);
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn()?;
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        std::thread::scope(|s| {
            let errors = s.spawn(move || {
                let mut buf = Vec::new();
                if let Some(mut e) = stderr {
                    // A read error leaves what was read: stderr is for messages only.
                    let _ = e.read_to_end(&mut buf);
                }
                buf
            });
            let mut read = Ok(());
            if let Some(out) = stdout {
                let mut r = BufReader::new(out);
                let mut buf = Vec::new();
                loop {
                    buf.clear();
                    match r.read_until(b'\n', &mut buf) {
                        Ok(0) => break,
                        Ok(_) => line(String::from_utf8_lossy(&buf).trim_end_matches('\n')),
                        Err(e) => {
                            read = Err(e);
                            break;
                        }
                    }
                }
            }
            // Waited for even after a read error: no zombie is left.
            let status = child.wait()?;
            read?;
            Ok((status, errors.join().unwrap_or_default()))
        })
    }
}
