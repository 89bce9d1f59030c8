//! `kube-proxy-rules run` as a child of a test, inside a network namespace
//! the test made: its stderr in a log file the test reads, killed on drop
//! (also when the test fails). Shared by the tests that drive `run`
//! (`run_netns.rs`, `api_netns.rs`); each uses part of it.
#![allow(dead_code)]

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_kube-proxy-rules");

pub struct RunProcess {
    child: Child,
    log: PathBuf,
}

impl RunProcess {
    /// `ip netns exec <ns> kube-proxy-rules run <args>`, stderr to `log`.
    pub fn spawn<S: AsRef<std::ffi::OsStr>>(ns: &str, args: &[S], log: PathBuf) -> RunProcess {
        let child = Command::new("ip")
            .args(["netns", "exec", ns, BIN, "run"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .unwrap();
        RunProcess { child, log }
    }

    /// What `run` logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait (up to 15 s) until the log has `n` occurrences of `needle`.
    pub fn wait_for(&self, needle: &str, n: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let log = self.log();
            if log.matches(needle).count() >= n {
                return log;
            }
            assert!(Instant::now() < deadline, "no {n}x {needle:?} in the run log:\n{log}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// How many full syncs `run` logged.
    pub fn full_syncs(&self) -> usize {
        self.log().matches("synced (full").count()
    }
}

impl Drop for RunProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
