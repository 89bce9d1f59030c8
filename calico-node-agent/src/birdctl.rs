//! Write BIRD's configuration and reconfigure the running daemon, only when
//! the rendered text changed (a reconfigure restarts nothing, but it is not
//! free and it shows up in BIRD's log on every node).

use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum BirdError {
    #[error("cannot write BIRD config {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `bird -p` refused the text; `section` is the block of the rendered
    /// text the error points at (e.g. `protocol bgp Node_10_0_0_1 ...
    /// description "BGPPeer tor"`), which names the document behind it.
    #[error("rendered BIRD config does not parse (bird -p): {reason}{}", section.as_deref().map(|s| format!(" [in: {s}]")).unwrap_or_default())]
    Invalid { reason: String, section: Option<String> },
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("birdc -s {socket} configure failed: {output}")]
    Reconfigure { socket: PathBuf, output: String },
}

/// Owns one BIRD instance's config file and control socket.
#[derive(Debug)]
pub struct Bird {
    config: PathBuf,
    socket: PathBuf,
    /// What BIRD runs now, as far as we know (`None` until first applied).
    applied: Option<String>,
}

/// What [`Bird::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Unchanged,
    Reconfigured,
    /// The file is written but BIRD was not reachable; retried on next apply.
    WrittenNotRunning,
}

impl Bird {
    pub fn new(config: &Path, socket: &Path) -> Bird {
        // A file already holding the same text was written by us (or by
        // `render-bird` before BIRD started): BIRD runs it, nothing to do.
        let applied = std::fs::read_to_string(config).ok();
        Bird { config: config.to_path_buf(), socket: socket.to_path_buf(), applied }
    }

    /// Check `text` with `bird -p`, write it atomically and run
    /// `birdc configure`, unless it equals what BIRD already runs.
    pub fn apply(&mut self, text: &str) -> Result<Applied, BirdError> {
        if self.applied.as_deref() == Some(text) {
            return Ok(Applied::Unchanged);
        }
        let tmp = self.config.with_extension("tmp");
        let write = |p: &Path| {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            if let Some(dir) = p.parent() {
                std::fs::create_dir_all(dir)?;
            }
            // Owner-only: the text may hold BGP passwords.
            let _ = std::fs::remove_file(p);
            let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(p)?;
            f.write_all(text.as_bytes())
        };
        write(&tmp).map_err(|source| BirdError::Write { path: tmp.clone(), source })?;
        let check = Command::new("bird")
            .arg("-p")
            .arg("-c")
            .arg(&tmp)
            .output()
            .map_err(|source| BirdError::Spawn { program: "bird", source })?;
        if !check.status.success() {
            let _ = std::fs::remove_file(&tmp);
            // BIRD keeps running the old file; the caller retries with the
            // next datastore change.
            let reason = String::from_utf8_lossy(&check.stderr).trim().to_string();
            let section = faulty_section(text, &reason);
            return Err(BirdError::Invalid { reason, section });
        }
        std::fs::rename(&tmp, &self.config)
            .map_err(|source| BirdError::Write { path: self.config.clone(), source })?;
        if !self.socket.exists() {
            log::warn!("BIRD socket {} absent: config written, reconfigure deferred", self.socket.display());
            return Ok(Applied::WrittenNotRunning);
        }
        let out = Command::new("birdc")
            .arg("-s")
            .arg(&self.socket)
            .arg("configure")
            .output()
            .map_err(|source| BirdError::Spawn { program: "birdc", source })?;
        let text_out =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        // birdc exits 0 even when BIRD rejects the config; read the reply.
        if !out.status.success() || !text_out.contains("Reconfigur") {
            return Err(BirdError::Reconfigure {
                socket: self.socket.clone(),
                output: text_out.trim().into(),
            });
        }
        self.applied = Some(text.to_string());
        Ok(Applied::Reconfigured)
    }
}

/// The top-level block of `text` holding the line a `bird -p` error points
/// at (`bird: <file>:<line>:<col> <message>`): its header line, plus its
/// `description` (the datastore document a peer comes from) when it has one.
pub fn faulty_section(text: &str, bird_error: &str) -> Option<String> {
    // `<file>:<line>:<col> ...`: the first two numeric fields in a row.
    let fields: Vec<&str> = bird_error.split(':').collect();
    let line_no = fields.windows(2).find_map(|w| {
        let line = w[0].parse::<usize>().ok()?;
        w[1].split_whitespace().next()?.parse::<usize>().ok()?;
        Some(line)
    })?;
    let lines: Vec<&str> = text.lines().collect();
    let at = line_no.checked_sub(1).filter(|&i| i < lines.len())?;
    // Blocks start unindented; comments and closing braces do not start one.
    let start = (0..=at).rev().find(|&i| {
        let l = lines[i];
        !l.is_empty() && !l.starts_with([' ', '#', '}'])
    })?;
    let mut out = lines[start].trim_end_matches('{').trim().to_string();
    let description = lines[start + 1..]
        .iter()
        .take_while(|l| l.starts_with(' '))
        .find_map(|l| l.trim().strip_prefix("description "));
    if let Some(d) = description {
        out.push_str(&format!(" (description {})", d.trim_end_matches(';')));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bird_errors_point_at_the_document_section() {
        let text = "router id 10.0.0.1;\n\nprotocol bgp Node_10_0_0_9 from bgp_template {\n  description \"BGPPeer tor\";\n  neighbor 10.0.0.9 as 0;\n}\n";
        let err = "bird: /run/x/bird.tmp:5:26 Remote AS number (or peer type) must be set";
        assert_eq!(
            faulty_section(text, err).as_deref(),
            Some("protocol bgp Node_10_0_0_9 from bgp_template (description \"BGPPeer tor\")")
        );
        assert_eq!(faulty_section(text, "bird: /x:1:0 something").as_deref(), Some("router id 10.0.0.1;"));
        assert_eq!(faulty_section(text, "no line number"), None);
        assert_eq!(faulty_section(text, "bird: /x:99:1 past the end"), None);
    }

    #[test]
    fn a_rejected_config_is_not_applied_and_says_where() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("bird.conf");
        let mut bird = Bird::new(&conf, &dir.path().join("absent.ctl"));
        let bad = "router id 10.0.0.1;\nprotocol device {}\nprotocol bgp Global_10_0_0_9 {\n  description \"BGPPeer x\";\n  local as 64512;\n  neighbor 10.0.0.9 port 0 as 65000;\n  ipv4 { import all; export none; };\n}\n";
        match bird.apply(bad) {
            Err(e @ BirdError::Invalid { .. }) => {
                let m = e.to_string();
                assert!(
                    m.contains("port") && m.contains("Global_10_0_0_9") && m.contains("BGPPeer x"),
                    "{m}"
                );
            }
            other => panic!("expected Invalid, got {other:?}"),
        }
        assert!(!conf.exists(), "nothing written");
    }
}
