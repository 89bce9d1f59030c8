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
    #[error("rendered BIRD config does not parse (bird -p): {0}")]
    Invalid(String),
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
            if let Some(dir) = p.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(p, text)
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
            return Err(BirdError::Invalid(String::from_utf8_lossy(&check.stderr).trim().to_string()));
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
