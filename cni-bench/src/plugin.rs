//! One CNI plugin execution as a runtime performs it: environment, stdin,
//! wall time and the peak RSS of the plugin's process tree.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What one call needs besides the network configuration.
pub struct Call<'a> {
    /// The plugin binary (`<cni_path>/<type>`).
    pub plugin: &'a Path,
    /// `CNI_PATH`: where the plugin finds its IPAM delegate.
    pub cni_path: &'a Path,
    /// `ADD`, `DEL`, ...
    pub command: &'a str,
    pub container_id: &'a str,
    pub netns: &'a Path,
    /// `K8S_POD_NAME` (the namespace is always `bench`).
    pub pod_name: &'a str,
}

/// A successful call.
pub struct Outcome {
    pub elapsed: Duration,
    /// Peak RSS (KiB) of the plugin and its waited-for children (the IPAM delegate).
    pub peak_rss_kib: i64,
    pub stdout: Vec<u8>,
}

/// Execute the plugin with `conf` on stdin. The child inherits the calling
/// thread's network namespace, so callers spawn from a thread that has
/// entered the node netns.
pub fn exec(call: &Call, conf: &[u8]) -> Result<Outcome, String> {
    let Call { plugin, cni_path, command, container_id: id, netns, pod_name } = call;
    let start = Instant::now();
    let mut child = Command::new(plugin)
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", cni_path)
        .env("CNI_ARGS", format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={pod_name}"))
        .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| OsStr::new("/usr/bin:/bin").into()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", plugin.display()))?;
    if let Some(mut w) = child.stdin.take() {
        w.write_all(conf).map_err(|e| format!("write stdin of {}: {e}", plugin.display()))?;
    }
    // Read the pipes before reaping so a chatty plugin cannot block on them
    // (stderr on its own thread: a plugin may fill it before closing stdout).
    let stderr = child.stderr.take();
    let err_reader = std::thread::spawn(move || {
        let mut err = Vec::new();
        if let Some(mut e) = stderr {
            let _ = e.read_to_end(&mut err);
        }
        err
    });
    let mut out = Vec::new();
    if let Some(mut o) = child.stdout.take() {
        o.read_to_end(&mut out).map_err(|e| format!("read stdout of {}: {e}", plugin.display()))?;
    }
    let err = err_reader.join().unwrap_or_default();
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero rusage is a valid value to be overwritten by wait4.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child's pid with valid out-pointers.
    let r = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    let elapsed = start.elapsed();
    if r < 0 {
        return Err(format!("wait4 {}: {}", plugin.display(), std::io::Error::last_os_error()));
    }
    let exit = std::process::ExitStatus::from_raw(status);
    if !exit.success() {
        return Err(format!(
            "{} {command} {id} failed ({exit}): {}{}",
            plugin.display(),
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&err)
        ));
    }
    Ok(Outcome { elapsed, peak_rss_kib: usage.ru_maxrss, stdout: out })
}

/// The first address of an ADD result (`ips[0].address`, prefix dropped).
pub fn first_ip(stdout: &[u8]) -> Result<std::net::IpAddr, String> {
    let v: serde_json::Value =
        serde_json::from_slice(stdout).map_err(|e| format!("ADD result is not JSON: {e}"))?;
    v["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("ADD result without an address: {v}"))
}

pub use testbed::percentile;

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
