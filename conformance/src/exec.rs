//! Executing a plugin binary: CNI_* environment, config on stdin, stdout and
//! stderr captured, a per-call deadline.
//!
//! The plugin runs in its own process group so that on timeout the whole tree
//! (the plugin and the IPAM delegate it spawned) is killed, not just the
//! direct child (otherwise a delegate could keep the pipes open forever).
//! An optional launcher prefix (e.g. `nsenter --net=/run/netns/node --`) runs
//! the plugin inside a "node" namespace.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::error::Error;

/// What one plugin process produced.
#[derive(Debug, Clone)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// `exit status N` / `signal N`, for messages.
    pub fn status_text(&self) -> String {
        match (self.status.code(), self.status.signal()) {
            (Some(c), _) => format!("exit status {c}"),
            (None, Some(s)) => format!("killed by signal {s}"),
            _ => "unknown exit".into(),
        }
    }
}

/// How plugins are started.
#[derive(Debug, Clone)]
pub struct Exec {
    /// argv prefix placed before the plugin path (empty = run directly).
    pub launcher: Vec<OsString>,
    /// Kill the plugin (and its process group) after this long.
    pub timeout: Duration,
    /// Copy the plugin's stderr to ours as well as capturing it (cnitool does,
    /// like libcni; the suite keeps it for failure messages only).
    pub forward_stderr: bool,
}

impl Default for Exec {
    fn default() -> Self {
        Exec { launcher: Vec::new(), timeout: Duration::from_secs(60), forward_stderr: false }
    }
}

/// Names of every CNI protocol variable a runtime sets (removed from the
/// inherited environment so a call sees exactly what the caller passed).
pub const CNI_VARS: &[&str] = &[
    "CNI_COMMAND",
    "CNI_CONTAINERID",
    "CNI_NETNS",
    "CNI_IFNAME",
    "CNI_ARGS",
    "CNI_PATH",
    "CNI_NETNS_OVERRIDE",
];

impl Exec {
    /// Run the plugin on `path` inside the launcher with the inherited
    /// environment minus [`CNI_VARS`], plus `env`.
    pub fn run(&self, path: &Path, stdin: &[u8], env: &[(String, String)]) -> Result<Output, Error> {
        // A freshly written plugin binary may still be open for writing by
        // another process for a moment (ETXTBSY); libcni retries the same way.
        let mut attempt = 0;
        loop {
            match self.run_once(path, stdin, env) {
                Err(Error::Exec { reason, .. }) if reason.contains("Text file busy") && attempt < 5 => {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(50 * attempt));
                }
                other => return other,
            }
        }
    }

    fn run_once(&self, path: &Path, stdin: &[u8], env: &[(String, String)]) -> Result<Output, Error> {
        let exec_err = |reason: String| Error::Exec { path: path.to_path_buf(), reason };
        let mut cmd = match self.launcher.split_first() {
            Some((prog, rest)) => {
                let mut c = Command::new(prog);
                c.args(rest).arg(path);
                c
            }
            None => Command::new(path),
        };
        for v in CNI_VARS {
            cmd.env_remove(v);
        }
        cmd.envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd.spawn().map_err(|e| exec_err(e.to_string()))?;
        let pgid = child.id() as i32;
        let (Some(mut child_in), Some(mut child_out), Some(mut child_err)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(exec_err("child pipes missing".into()));
        };
        let input = stdin.to_vec();
        // A plugin that never reads stdin must not block us: write from a thread.
        let writer = std::thread::spawn(move || {
            let _ = child_in.write_all(&input);
        });
        let out_reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = child_out.read_to_end(&mut buf);
            buf
        });
        let forward = self.forward_stderr;
        let err_reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                match child_err.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if forward {
                            let _ = std::io::stderr().write_all(&chunk[..n]);
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                }
            }
            buf
        });
        let deadline = Instant::now() + self.timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(st)) => break st,
                Ok(None) if Instant::now() >= deadline => {
                    // SAFETY: kill(2) on the process group we created for this child.
                    unsafe {
                        libc::kill(-pgid, libc::SIGKILL);
                    }
                    let _ = child.wait();
                    let _ = writer.join();
                    let _ = out_reader.join();
                    let _ = err_reader.join();
                    return Err(Error::Timeout {
                        path: path.to_path_buf(),
                        command: env
                            .iter()
                            .find(|(k, _)| k == "CNI_COMMAND")
                            .map(|(_, v)| v.clone())
                            .unwrap_or_default(),
                        after: self.timeout,
                    });
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(2)),
                Err(e) => return Err(exec_err(format!("wait: {e}"))),
            }
        };
        let _ = writer.join();
        let stdout = out_reader.join().unwrap_or_default();
        let stderr = err_reader.join().unwrap_or_default();
        Ok(Output { status, stdout, stderr })
    }
}

/// Find plugin `name` in the CNI_PATH directories (first match wins).
pub fn find_in_path(name: &str, paths: &[PathBuf]) -> Result<PathBuf, Error> {
    let not_found = || Error::PluginNotFound { plugin: name.to_string(), paths: paths.to_vec() };
    if name.is_empty() || name.contains('/') {
        return Err(not_found());
    }
    paths.iter().map(|d| d.join(name)).find(|p| p.is_file()).ok_or_else(not_found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(dir: &Path, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join("plug");
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn passes_env_and_stdin_and_strips_inherited_cni_vars() {
        let d = tempfile::tempdir().unwrap();
        let p = script(d.path(), "echo \"$CNI_COMMAND|${CNI_IFNAME-unset}\"; cat; echo err >&2; exit 3");
        let out = Exec::default().run(&p, b"IN", &[("CNI_COMMAND".into(), "ADD".into())]).unwrap();
        assert_eq!(out.stdout_str(), "ADD|unset\nIN");
        assert_eq!(out.stderr_str(), "err\n");
        assert_eq!(out.status.code(), Some(3));
    }

    #[test]
    fn timeout_kills_the_process_group() {
        let d = tempfile::tempdir().unwrap();
        // The grandchild holds stdout open; only a group kill ends the call.
        let p = script(d.path(), "sleep 30 & sleep 30");
        let ex = Exec { timeout: Duration::from_millis(300), ..Exec::default() };
        let t = Instant::now();
        let r = ex.run(&p, b"", &[]);
        assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
        assert!(t.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn find_in_path_first_match() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        std::fs::write(b.path().join("x"), "").unwrap();
        let paths = vec![a.path().to_path_buf(), b.path().to_path_buf()];
        assert_eq!(find_in_path("x", &paths).unwrap(), b.path().join("x"));
        assert!(find_in_path("y", &paths).is_err());
        assert!(find_in_path("../x", &paths).is_err());
    }
}
