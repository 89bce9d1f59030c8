//! Delegation: run another CNI plugin (an IPAM plugin, usually) found in
//! CNI_PATH with the same environment and the full stdin, the way the Go
//! `invoke` package does.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};

use serde_json::Value;

use crate::env::Command;
use crate::error::CniError;

/// Longest excerpt of a delegate's unparseable output quoted in an error.
const MAX_QUOTED_OUTPUT: usize = 512;

/// How many delegations deep this invocation is, set by [`exec_plugin`] in
/// every delegate's environment. Not a CNI spec variable: it is ours, and it
/// survives plugins of other projects in the chain because delegates pass
/// their environment on unchanged (Go's `invoke` does too).
pub const DELEGATION_DEPTH_VAR: &str = "CNI_DELEGATION_DEPTH";

/// The longest chain of delegations allowed (runtime → plugin is depth 0, its
/// IPAM delegate depth 1, …). Real chains are one deep (a main plugin and its
/// IPAM); a config whose delegate is, directly or through other plugins, the
/// plugin itself would otherwise start processes until something outside
/// kills them.
pub const MAX_DELEGATION_DEPTH: u32 = 4;

/// The depth recorded in `env` (0 when absent). A value that is not a small
/// number is code 4: it can only come from a broken or hostile runtime.
pub fn delegation_depth(env: &BTreeMap<OsString, OsString>) -> Result<u32, CniError> {
    match env.get(std::ffi::OsStr::new(DELEGATION_DEPTH_VAR)) {
        None => Ok(0),
        Some(v) => v.to_str().and_then(|s| s.parse::<u32>().ok()).ok_or_else(|| {
            CniError::invalid_env(
                format!("{DELEGATION_DEPTH_VAR} is not a number"),
                v.to_string_lossy().into_owned(),
            )
        }),
    }
}

/// Refuse a delegate that is the running executable itself (same file: device
/// and inode, so a symlink or a second name of the binary is caught too).
pub fn refuse_self(path: &Path) -> Result<(), CniError> {
    use std::os::unix::fs::MetadataExt;
    let (Ok(own), Ok(target)) = (std::fs::metadata("/proc/self/exe"), std::fs::metadata(path)) else {
        // Nothing to compare with: the depth bound still stops a loop.
        return Ok(());
    };
    if own.dev() == target.dev() && own.ino() == target.ino() {
        return Err(CniError::invalid_config(
            "a plugin cannot delegate to itself",
            format!("{} is this plugin's own executable", path.display()),
        ));
    }
    Ok(())
}

/// The first `<dir>/<plugin_type>` in `cni_path` that is a file. The name must
/// be a plain file name (no `/`, not `.`/`..`), so a config cannot point
/// outside CNI_PATH.
pub fn find_in_path(plugin_type: &str, cni_path: &[PathBuf]) -> Result<PathBuf, CniError> {
    if plugin_type.is_empty() || plugin_type.contains('/') || plugin_type == "." || plugin_type == ".." {
        return Err(CniError::invalid_config("invalid plugin type", plugin_type));
    }
    if cni_path.is_empty() {
        return Err(CniError::invalid_env(
            format!("cannot find plugin {plugin_type:?}: CNI_PATH is empty"),
            "",
        ));
    }
    for dir in cni_path {
        let p = dir.join(plugin_type);
        if p.is_file() {
            return Ok(p);
        }
    }
    let dirs: Vec<String> = cni_path.iter().map(|d| d.display().to_string()).collect();
    Err(CniError::internal(format!("failed to find plugin {plugin_type:?} in path [{}]", dirs.join(" "))))
}

/// Run the plugin at `path` with exactly `env` (CNI_COMMAND replaced by
/// `command`, [`DELEGATION_DEPTH_VAR`] one deeper) and `stdin`; its stderr
/// goes to ours. Success → its stdout. Failure → the error it printed
/// (code/msg/details propagated), or code 999 quoting its output when it
/// printed no CNI error. A chain deeper than [`MAX_DELEGATION_DEPTH`] is code
/// 7 and starts nothing.
pub fn exec_plugin(
    path: &Path,
    env: &BTreeMap<OsString, OsString>,
    command: Command,
    stdin: &[u8],
) -> Result<Vec<u8>, CniError> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let depth = delegation_depth(env)?;
    if depth >= MAX_DELEGATION_DEPTH {
        return Err(CniError::invalid_config(
            format!("delegation to plugin {name} refused: the chain of delegations is {depth} deep"),
            format!("at most {MAX_DELEGATION_DEPTH}: the configuration makes plugins delegate in a loop"),
        ));
    }
    let mut child = Process::new(path)
        .env_clear()
        .envs(env)
        .env("CNI_COMMAND", command.as_str())
        .env(DELEGATION_DEPTH_VAR, (depth + 1).to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| CniError::io(format!("cannot execute plugin {}", path.display()), e.to_string()))?;
    // Feed stdin from another thread so a delegate that writes a lot before
    // reading everything cannot deadlock us.
    let out = std::thread::scope(|s| {
        if let Some(mut pipe) = child.stdin.take() {
            s.spawn(move || {
                // A delegate that exits without reading stdin gives EPIPE: its
                // exit status tells the story, not this write.
                let _ = pipe.write_all(stdin);
            });
        }
        child.wait_with_output()
    })
    .map_err(|e| CniError::io(format!("waiting for plugin {name}"), e.to_string()))?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    if let Ok(v) = serde_json::from_slice::<Value>(&out.stdout) {
        if let Some(e) = CniError::from_json(&v) {
            return Err(e);
        }
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut excerpt: String = text.trim().chars().take(MAX_QUOTED_OUTPUT).collect();
    if excerpt.is_empty() {
        excerpt = "(no output)".into();
    }
    Err(CniError::new(
        crate::error::codes::INTERNAL,
        format!("plugin {name} {command} failed ({})", out.status),
        excerpt,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    fn env() -> BTreeMap<OsString, OsString> {
        [("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c1"), ("PATH", "/usr/bin:/bin")]
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect()
    }

    #[test]
    fn finds_first_match_and_rejects_paths() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        script(b.path(), "ipam", "true");
        let path = vec![a.path().to_path_buf(), b.path().to_path_buf()];
        assert_eq!(find_in_path("ipam", &path).unwrap(), b.path().join("ipam"));
        let e = find_in_path("nope", &path).unwrap_err();
        assert_eq!(e.code, 999);
        assert!(e.msg.contains("\"nope\""), "{}", e.msg);
        assert_eq!(find_in_path("../ipam", &path).unwrap_err().code, 7);
        assert_eq!(find_in_path("", &path).unwrap_err().code, 7);
        assert_eq!(find_in_path("ipam", &[]).unwrap_err().code, 4);
    }

    #[test]
    fn passes_env_stdin_and_overrides_command() {
        let d = tempfile::tempdir().unwrap();
        let p = script(
            d.path(),
            "echoer",
            r#"read -r line; printf '{"cmd":"%s","cid":"%s","in":%s}' "$CNI_COMMAND" "$CNI_CONTAINERID" "$line""#,
        );
        let out = exec_plugin(&p, &env(), Command::Del, b"{\"a\":1}\n").unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v, serde_json::json!({"cmd":"DEL","cid":"c1","in":{"a":1}}));
    }

    #[test]
    fn delegation_depth_grows_and_is_bounded() {
        let d = tempfile::tempdir().unwrap();
        let ran = d.path().join("ran");
        let p = script(
            d.path(),
            "depth",
            &format!(r#"touch {}; printf '{{"depth":"%s"}}' "${DELEGATION_DEPTH_VAR}""#, ran.display()),
        );
        let out = exec_plugin(&p, &env(), Command::Add, b"{}").unwrap();
        assert_eq!(serde_json::from_slice::<Value>(&out).unwrap(), serde_json::json!({"depth":"1"}));
        let mut deep = env();
        deep.insert(DELEGATION_DEPTH_VAR.into(), (MAX_DELEGATION_DEPTH - 1).to_string().into());
        let out = exec_plugin(&p, &deep, Command::Add, b"{}").unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&out).unwrap(),
            serde_json::json!({"depth": MAX_DELEGATION_DEPTH.to_string()})
        );
        std::fs::remove_file(&ran).unwrap();
        deep.insert(DELEGATION_DEPTH_VAR.into(), MAX_DELEGATION_DEPTH.to_string().into());
        let e = exec_plugin(&p, &deep, Command::Del, b"{}").unwrap_err();
        assert_eq!(e.code, 7, "{e}");
        assert!(!ran.exists(), "the refused delegate was started");
        deep.insert(DELEGATION_DEPTH_VAR.into(), "many".into());
        assert_eq!(exec_plugin(&p, &deep, Command::Del, b"{}").unwrap_err().code, 4);
        assert!(!ran.exists());
    }

    #[test]
    fn a_plugin_cannot_delegate_to_its_own_executable() {
        let own = std::fs::read_link("/proc/self/exe").unwrap();
        assert_eq!(refuse_self(&own).unwrap_err().code, 7);
        // A second name of the same file is the same plugin.
        let d = tempfile::tempdir().unwrap();
        let link = d.path().join("alias");
        std::os::unix::fs::symlink(&own, &link).unwrap();
        assert_eq!(refuse_self(&link).unwrap_err().code, 7);
        let other = script(d.path(), "other", "true");
        refuse_self(&other).unwrap();
    }

    #[test]
    fn propagates_delegate_errors() {
        let d = tempfile::tempdir().unwrap();
        let p = script(
            d.path(),
            "failer",
            r#"echo '{"cniVersion":"1.0.0","code":11,"msg":"etcd down","details":"x"}'; exit 1"#,
        );
        let e = exec_plugin(&p, &env(), Command::Add, b"{}").unwrap_err();
        assert_eq!((e.code, e.msg.as_str(), e.details.as_str()), (11, "etcd down", "x"));
        let p = script(d.path(), "crasher", "echo boom; exit 3");
        let e = exec_plugin(&p, &env(), Command::Add, b"{}").unwrap_err();
        assert_eq!(e.code, 999);
        assert_eq!(e.details, "boom");
        let p = script(d.path(), "silent", "exit 2");
        let e = exec_plugin(&p, &env(), Command::Add, b"{}").unwrap_err();
        assert_eq!(e.details, "(no output)");
    }

    #[test]
    fn unreadable_stdin_and_missing_binary() {
        let d = tempfile::tempdir().unwrap();
        // Exits without reading 1 MiB of stdin: no hang, no panic.
        let p = script(d.path(), "noread", "echo '{}'");
        let big = vec![b' '; 1 << 20];
        assert_eq!(exec_plugin(&p, &env(), Command::Add, &big).unwrap(), b"{}\n");
        let e = exec_plugin(&d.path().join("absent"), &env(), Command::Add, b"").unwrap_err();
        assert_eq!(e.code, 5);
    }
}
