//! Processes started by tests and by the lab: run to completion with a
//! typed error, or kept running as a [`Daemon`] that never outlives its
//! owner by accident.
//!
//! The tree's one process-group killer is [`kill_process_group`]: a
//! [`Daemon`] leads its own group, so stopping the group also stops what the
//! daemon started (an agent's `birdc` and `bird -p`, for instance).

use std::fs::File;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::Error;

/// How long [`Daemon::stop`] waits after SIGTERM before it sends SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(1);

/// Run `cmd` to completion (with `input` on its stdin when given); its
/// output when it exits 0, else [`Error::Failed`] with stderr and stdout.
pub(crate) fn complete(cmd: &mut Command, input: Option<&[u8]>) -> Result<Output, Error> {
    let spawn_err = |cmd: &Command, source| Error::Spawn { what: format!("{cmd:?}"), source };
    let out = match input {
        None => cmd.output().map_err(|e| spawn_err(cmd, e))?,
        Some(input) => {
            let mut child = cmd
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| spawn_err(cmd, e))?;
            if let Some(mut stdin) = child.stdin.take() {
                // A program that exits without reading its input fails on
                // its own terms (exit status), not on our broken pipe.
                let _ = stdin.write_all(input);
            }
            child.wait_with_output().map_err(|e| spawn_err(cmd, e))?
        }
    };
    if !out.status.success() {
        return Err(Error::Failed {
            cmd: format!("{cmd:?}"),
            status: out.status,
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            )
            .trim()
            .to_string(),
        });
    }
    Ok(out)
}

/// Run a command to completion; its stdout, or a typed error with its stderr.
pub fn run_stdout(cmd: &mut Command) -> Result<String, Error> {
    complete(cmd, None).map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// [`run_stdout`] with `input` written to the command's stdin (a CNI plugin
/// reads its network configuration there).
pub fn run_stdout_with_input(cmd: &mut Command, input: &[u8]) -> Result<String, Error> {
    complete(cmd, Some(input)).map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Send `signal` to every process in the process group `pgid`.
///
/// Group ids 0 and 1 are refused (`EINVAL`): 0 would signal the caller's own
/// group and 1 is init's. Callers pass the id of a group leader they have
/// not reaped yet (a [`Daemon`]'s), which therefore cannot name anyone
/// else's group.
pub fn kill_process_group(pgid: u32, signal: Signal) -> nix::Result<()> {
    let pgid = i32::try_from(pgid).map_err(|_| nix::Error::EINVAL)?;
    if pgid <= 1 {
        return Err(nix::Error::EINVAL);
    }
    killpg(Pid::from_raw(pgid), signal)
}

/// A long-running process (etcd, BIRD, an agent, nginx) leading its own
/// process group, stdin from /dev/null, stdout and stderr to a log file.
/// Stopped on drop ([`Daemon::stop`]).
///
/// Its own group also keeps a terminal's Ctrl-C (sent to the foreground
/// group) away from it: its owner stops it, in the order the owner needs
/// (a lab stops its daemons before it deletes their namespaces), and a
/// detached lab's daemons outlive the command that started them.
#[derive(Debug)]
pub struct Daemon {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    /// Start `cmd` as daemon `name`, its output (stdout and stderr) to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Daemon, Error> {
        let out = File::create(log).map_err(|e| Error::io(log, e))?;
        let err = out.try_clone().map_err(|e| Error::io(log, e))?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err).process_group(0);
        let child = cmd.spawn().map_err(|e| Error::Spawn { what: name.to_string(), source: e })?;
        Ok(Daemon { name: name.to_string(), child: Some(child), log: log.to_path_buf() })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The file its stdout and stderr go to.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Its pid (and process group id), while it is owned.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// `Ok(None)` while it runs, its exit status once it has exited; an
    /// error once it is no longer owned (stopped or forgotten).
    pub fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => c.try_wait(),
            None => Err(std::io::Error::other(format!("{} is no longer owned", self.name))),
        }
    }

    /// Still running?
    pub fn alive(&mut self) -> bool {
        matches!(self.try_wait(), Ok(None))
    }

    /// Let it run on without this handle (a detached lab: its namespaces'
    /// removal stops it later).
    pub fn forget(&mut self) {
        self.child = None;
    }

    /// SIGKILL its group now (a crash: a BIRD killed so sends no BGP
    /// notification), then reap it.
    pub fn kill_now(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = kill_process_group(c.id(), Signal::SIGKILL);
            let _ = c.wait();
        }
    }

    /// SIGTERM to its group; SIGKILL to the group if the daemon has not
    /// exited within a second; then reap it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = kill_process_group(c.id(), Signal::SIGTERM);
            let end = Instant::now() + STOP_GRACE;
            while Instant::now() < end {
                // Reaped: its id may be reused from now on, so it is not
                // signalled again (its group got the SIGTERM too).
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = kill_process_group(c.id(), Signal::SIGKILL);
            let _ = c.wait();
        }
    }

    /// The last `lines` lines of its log (for error messages).
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gone_or_zombie(pid: &str) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')),
        }
    }

    #[test]
    fn a_stopped_daemon_takes_its_process_group_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("child.pid");
        // SIGTERM ignored (by the shell and, inherited, by its child): only
        // the SIGKILL to the group after the grace period ends both.
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(format!("trap '' TERM; sleep 60 & echo $! > {}; wait", pidfile.display()));
        let mut d = Daemon::spawn("sh", cmd, &dir.path().join("sh.out")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !std::fs::read_to_string(&pidfile).is_ok_and(|s| s.ends_with('\n')) {
            assert!(Instant::now() < deadline, "the daemon never started its child");
            std::thread::sleep(Duration::from_millis(10));
        }
        let child = std::fs::read_to_string(&pidfile).unwrap().trim().to_string();
        assert!(d.alive());
        d.stop();
        assert!(!d.alive());
        let deadline = Instant::now() + Duration::from_secs(2);
        while !gone_or_zombie(&child) {
            assert!(Instant::now() < deadline, "the daemon's child {child} survived the stop");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
