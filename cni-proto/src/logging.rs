//! A tiny `log` backend for CNI plugins: every record goes to stderr (the
//! runtime captures it) and, when configured, is appended to a log file.
//! Never to stdout: stdout is the CNI protocol.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use log::{LevelFilter, Log, Metadata, Record};

/// Level when the config gives none.
pub const DEFAULT_LEVEL: LevelFilter = LevelFilter::Info;

/// Parse Calico/logrus level names (`debug`, `info`, `warning`, `error`,
/// `fatal`, `panic`, `trace`, `none`), case-insensitively.
pub fn parse_level(s: &str) -> Option<LevelFilter> {
    Some(match s.trim().to_ascii_lowercase().as_str() {
        "trace" => LevelFilter::Trace,
        "debug" => LevelFilter::Debug,
        "info" => LevelFilter::Info,
        "warn" | "warning" => LevelFilter::Warn,
        "error" | "fatal" | "panic" => LevelFilter::Error,
        "none" | "off" => LevelFilter::Off,
        _ => return None,
    })
}

struct Logger {
    level: LevelFilter,
    file: Option<Mutex<File>>,
    /// Prefix identifying the invocation (`ADD ContainerID=… IfName=…`).
    context: String,
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = format!(
            "{} [{}][{}] {} {}: {}\n",
            timestamp(SystemTime::now()),
            record.level(),
            std::process::id(),
            self.context,
            record.target(),
            record.args()
        );
        let _ = std::io::stderr().write_all(line.as_bytes());
        if let Some(f) = &self.file {
            if let Ok(mut f) = f.lock() {
                let _ = f.write_all(line.as_bytes());
            }
        }
    }

    fn flush(&self) {
        if let Some(f) = &self.file {
            if let Ok(mut f) = f.lock() {
                let _ = f.flush();
            }
        }
    }
}

/// Install the logger once per process: `level` from the config's
/// `log_level` (default info; an unknown name is reported and ignored),
/// `file` from `log_file_path` (created with its parent directory, appended).
/// Later calls are ignored (the first configuration wins).
pub fn init(level: Option<&str>, file: Option<&Path>, context: &str) {
    let mut warnings = Vec::new();
    let lvl = match level {
        None | Some("") => DEFAULT_LEVEL,
        Some(l) => parse_level(l).unwrap_or_else(|| {
            warnings.push(format!("unknown log_level {l:?}, using {DEFAULT_LEVEL}"));
            DEFAULT_LEVEL
        }),
    };
    let file = file.and_then(|p| match open_log_file(p) {
        Ok(f) => Some(Mutex::new(f)),
        Err(e) => {
            warnings.push(format!("cannot open log_file_path {}: {e}; logging to stderr only", p.display()));
            None
        }
    });
    let context = context.to_string();
    // Leaked once per process: the logger lives as long as the plugin does.
    let logger: &'static Logger = Box::leak(Box::new(Logger { level: lvl, file, context }));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(lvl);
    }
    for w in warnings {
        log::warn!("{w}");
    }
}

fn open_log_file(p: &Path) -> std::io::Result<File> {
    if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    OpenOptions::new().create(true).append(true).open(p)
}

/// `YYYY-MM-DD HH:MM:SS.mmm` in UTC (no timezone database needed).
fn timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    format!("{}.{:03}", crate::time::format_utc_seconds(secs), d.subsec_millis())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn levels() {
        assert_eq!(parse_level("debug"), Some(LevelFilter::Debug));
        assert_eq!(parse_level("Warning"), Some(LevelFilter::Warn));
        assert_eq!(parse_level("INFO"), Some(LevelFilter::Info));
        assert_eq!(parse_level("panic"), Some(LevelFilter::Error));
        assert_eq!(parse_level("none"), Some(LevelFilter::Off));
        assert_eq!(parse_level("loud"), None);
    }

    #[test]
    fn timestamps() {
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01 00:00:00.000");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_290_076_123);
        assert_eq!(timestamp(t), "2026-11-21 19:41:16.123");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(timestamp(leap), "2000-02-29 00:00:00.000");
    }

    #[test]
    fn logs_to_file_never_stdout() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("sub/cni.log");
        init(Some("debug"), Some(&path), "TEST");
        log::debug!("hello from the test");
        log::logger().flush();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("[DEBUG]") && text.contains("hello from the test"), "{text}");
        assert!(text.contains(" TEST "), "{text}");
    }
}
