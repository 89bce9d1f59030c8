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
/// `command`) and `stdin`; its stderr goes to ours. Success → its stdout.
/// Failure → the error it printed (code/msg/details propagated), or code 999
/// quoting its output when it printed no CNI error.
pub fn exec_plugin(
    path: &Path,
    env: &BTreeMap<OsString, OsString>,
    command: Command,
    stdin: &[u8],
) -> Result<Vec<u8>, CniError> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut child = Process::new(path)
        .env_clear()
        .envs(env)
        .env("CNI_COMMAND", command.as_str())
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
