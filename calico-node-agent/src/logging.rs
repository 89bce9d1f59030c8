//! A minimal `log` backend: every record to stderr and, when configured, to a
//! log file. Never stdout (it is reserved for command output such as
//! `render-bird`).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

struct Logger {
    file: Option<Mutex<File>>,
    level: log::LevelFilter,
}

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= self.level
    }

    fn log(&self, r: &log::Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let line = format!("{}.{:03} {:<5} {}\n", t.as_secs(), t.subsec_millis(), r.level(), r.args());
        let _ = std::io::stderr().write_all(line.as_bytes());
        if let Some(f) = &self.file {
            if let Ok(mut f) = f.lock() {
                let _ = f.write_all(line.as_bytes());
            }
        }
    }

    fn flush(&self) {}
}

/// Install the logger (once per process; later calls are ignored). The level
/// comes from `CALICO_LOG_LEVEL` (`debug`, `info`, ...; default info).
pub fn init(log_file: Option<&Path>) -> Result<(), String> {
    let file = match log_file {
        Some(p) => {
            if let Some(dir) = p.parent() {
                std::fs::create_dir_all(dir).map_err(|e| format!("create log dir {}: {e}", dir.display()))?;
            }
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| format!("open log file {}: {e}", p.display()))?;
            Some(Mutex::new(f))
        }
        None => None,
    };
    let level =
        std::env::var("CALICO_LOG_LEVEL").ok().and_then(|l| l.parse().ok()).unwrap_or(log::LevelFilter::Info);
    if log::set_boxed_logger(Box::new(Logger { file, level })).is_ok() {
        log::set_max_level(level);
    }
    Ok(())
}
