//! The installed logger: level filtering and the line format, seen through
//! the log file a tool can ask for (this test binary installs the process's
//! one logger, so it has one test).

use tool_cli::{LogArgs, Logging};

#[test]
fn installed_logger_filters_formats_and_tees_to_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/tool.log");
    let level =
        Logging::new("tool").file(Some(&path)).init(&LogArgs { verbose: 1, log_level: None }).unwrap();
    assert_eq!(level, log::LevelFilter::Debug);
    log::info!("plain progress");
    log::warn!("careful");
    log::error!("broken");
    log::debug!("detail");
    log::trace!("too much");
    log::logger().flush();
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        text,
        "plain progress\ntool: warning: careful\ntool: error: broken\ntool: debug: log_file: detail\n"
    );
    // One logger per process.
    assert!(matches!(
        Logging::new("again").init(&LogArgs::default()),
        Err(tool_cli::LogSetupError::AlreadyInstalled)
    ));
}
