//! The tools' one logger: the `log` facade's records to stderr (and, when a
//! tool asks, to a log file as well), with levels.
//!
//! Level: the tool's default ([`Logging::default_level`], info unless it
//! says otherwise), each `-v` one step more (info → debug → trace), or
//! `--log-level LEVEL` exactly (the two conflict). `RUST_LOG` directives
//! (`h2=debug,kube_proxy_rules=trace`) apply on top of the default; an
//! explicit `-v`/`--log-level` still sets the overall level.
//!
//! Line format: what the tools printed before they shared a logger, so
//! scripts and tests reading their stderr keep working:
//!
//! ```text
//! synced (full: first sync): ...                       info: the message alone
//! kube-proxy-rules: warning: IPv6 services present ... warn
//! kube-proxy-rules: error: sync failed, retrying ...   error (the runtime-error format too)
//! kube-proxy-rules: debug: kube_proxy_rules::syncer: ...  debug/trace: with the module
//! ```
//!
//! With [`Logging::timestamps`] (daemons) every line starts with the UTC time,
//! `2026-05-01T12:00:00.123Z `. Never stdout: that is the tools' output.

use std::fmt::Arguments;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{ArgAction, Args};
use log::{Level, LevelFilter};

/// `-v`/`--verbose` and `--log-level`: flatten into a tool's top-level
/// parser (`#[command(flatten)] log: LogArgs`). Both are global, so they
/// are accepted after a subcommand as well.
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub struct LogArgs {
    /// More diagnostics on stderr, one level per -v: -v debug, -vv trace
    #[arg(
        short = 'v',
        long = "verbose",
        action = ArgAction::Count,
        global = true,
        conflicts_with = "log_level",
        help_heading = "Logging"
    )]
    pub verbose: u8,
    /// Diagnostics at LEVEL and above on stderr: off, error, warn, info, debug, trace
    #[arg(long = "log-level", value_name = "LEVEL", global = true, value_parser = parse_level, help_heading = "Logging")]
    pub log_level: Option<LevelFilter>,
}

/// The levels from quietest to noisiest, the order `-v` steps through.
const STEPS: [LevelFilter; 6] = [
    LevelFilter::Off,
    LevelFilter::Error,
    LevelFilter::Warn,
    LevelFilter::Info,
    LevelFilter::Debug,
    LevelFilter::Trace,
];

impl LogArgs {
    /// The level these flags select for a tool whose default is `default`.
    pub fn level(&self, default: LevelFilter) -> LevelFilter {
        if let Some(l) = self.log_level {
            return l;
        }
        let at = STEPS.iter().position(|s| *s == default).unwrap_or(3);
        STEPS[(at + usize::from(self.verbose)).min(STEPS.len() - 1)]
    }

    /// Whether the user chose a level (then it overrides `RUST_LOG`'s).
    pub fn explicit(&self) -> bool {
        self.verbose > 0 || self.log_level.is_some()
    }
}

/// `--log-level`'s names, case-insensitive: the `log` crate's (`off`,
/// `error`, `warn`, `info`, `debug`, `trace`) and Calico's logrus names
/// (`warning`; `fatal`/`panic` as error; `none` as off), so a tool that
/// takes its level from a Calico setting (`CALICO_LOG_LEVEL`) reads it as is.
pub fn parse_level(s: &str) -> Result<LevelFilter, String> {
    Ok(match s.trim().to_ascii_lowercase().as_str() {
        "off" | "none" => LevelFilter::Off,
        "error" | "fatal" | "panic" => LevelFilter::Error,
        "warn" | "warning" => LevelFilter::Warn,
        "info" => LevelFilter::Info,
        "debug" => LevelFilter::Debug,
        "trace" => LevelFilter::Trace,
        _ => return Err(format!("unknown level {s:?} (off, error, warn, info, debug, trace)")),
    })
}

/// Why the logger could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum LogSetupError {
    #[error("opening the log file {}: {source}", path.display())]
    File { path: PathBuf, source: std::io::Error },
    #[error("a logger is already installed in this process")]
    AlreadyInstalled,
}

/// How one tool logs; [`Logging::init`] installs it.
#[derive(Debug, Clone)]
pub struct Logging {
    tool: String,
    default_level: LevelFilter,
    timestamps: bool,
    file: Option<PathBuf>,
}

impl Logging {
    /// `tool` names the warning and error lines (`<tool>: error: …`).
    /// Default level info, no timestamps, stderr only.
    pub fn new(tool: &str) -> Logging {
        Logging { tool: tool.to_string(), default_level: LevelFilter::Info, timestamps: false, file: None }
    }

    /// The level without `-v`/`--log-level`: what the tool prints normally.
    pub fn default_level(mut self, level: LevelFilter) -> Logging {
        self.default_level = level;
        self
    }

    /// Start every line with the UTC time (for long-running tools whose
    /// stderr is kept as a log).
    pub fn timestamps(mut self, on: bool) -> Logging {
        self.timestamps = on;
        self
    }

    /// Append every line to this file too (created with its directory).
    pub fn file(mut self, path: Option<&Path>) -> Logging {
        self.file = path.map(Path::to_path_buf);
        self
    }

    /// Install the process's logger from these settings and the tool's
    /// [`LogArgs`]; returns the overall level. `RUST_LOG` is read here.
    pub fn init(&self, args: &LogArgs) -> Result<LevelFilter, LogSetupError> {
        let rust_log = std::env::var("RUST_LOG").ok().filter(|v| !v.trim().is_empty());
        let mut builder = self.builder(args, rust_log.as_deref());
        if let Some(path) = &self.file {
            let file =
                open_append(path).map_err(|source| LogSetupError::File { path: path.clone(), source })?;
            builder.target(env_logger::Target::Pipe(Box::new(Tee { file })));
        }
        let logger = builder.build();
        let level = logger.filter();
        log::set_boxed_logger(Box::new(logger)).map_err(|_| LogSetupError::AlreadyInstalled)?;
        log::set_max_level(level);
        Ok(level)
    }

    /// The configured env_logger builder (without its target), separate
    /// from [`Logging::init`] so the filter can be checked without
    /// installing a process-wide logger.
    fn builder(&self, args: &LogArgs, rust_log: Option<&str>) -> env_logger::Builder {
        let mut b = env_logger::Builder::new();
        b.filter_level(self.default_level);
        if let Some(directives) = rust_log {
            b.parse_filters(directives);
        }
        if args.explicit() {
            b.filter_level(args.level(self.default_level));
        }
        let this = self.clone();
        b.format(move |buf, record| {
            let line = this.line(SystemTime::now(), record.level(), record.target(), record.args());
            buf.write_all(line.as_bytes())
        });
        b
    }

    /// One record as the tools print it, newline included (see the module doc).
    pub fn line(&self, now: SystemTime, level: Level, target: &str, msg: &Arguments<'_>) -> String {
        let mut out = String::new();
        if self.timestamps {
            out.push_str(&utc_timestamp(now));
            out.push(' ');
        }
        let tool = &self.tool;
        match level {
            Level::Info => out.push_str(&format!("{msg}\n")),
            Level::Warn => out.push_str(&format!("{tool}: warning: {msg}\n")),
            Level::Error => out.push_str(&format!("{tool}: error: {msg}\n")),
            Level::Debug => out.push_str(&format!("{tool}: debug: {target}: {msg}\n")),
            Level::Trace => out.push_str(&format!("{tool}: trace: {target}: {msg}\n")),
        }
        out
    }
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new().create(true).append(true).open(path)
}

/// stderr and the log file: env_logger writes each formatted record with
/// one `write_all`, so a record is one write to each.
struct Tee {
    file: std::fs::File,
}

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        // A full disk must not silence stderr: write both, report the first error.
        let stderr = std::io::stderr().write_all(buf);
        let file = self.file.write_all(buf);
        stderr.and(file)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`, computed from the Unix time (no time zone
/// database: the log is in UTC).
pub fn utc_timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian
/// calendar: count in 400-year eras (146,097 days each) of years starting
/// on March 1st, so the leap day is the last day of its year.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468; // days from 0000-03-01 to 1970-01-01
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of the era, 0..146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // year of the era, 0..399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of the March-based year, 0..365
    let mp = (5 * doy + 2) / 153; // March-based month, 0..11
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::time::Duration;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        log: LogArgs,
        #[command(subcommand)]
        cmd: Option<Sub>,
    }

    #[derive(clap::Subcommand, Debug)]
    enum Sub {
        Go,
    }

    fn parse(argv: &[&str]) -> Result<LogArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("tool").chain(argv.iter().copied())).map(|c| c.log)
    }

    #[test]
    fn verbose_steps_up_from_the_default_and_log_level_sets_it() {
        let info = LevelFilter::Info;
        assert_eq!(parse(&[]).unwrap().level(info), LevelFilter::Info);
        assert_eq!(parse(&["-v"]).unwrap().level(info), LevelFilter::Debug);
        assert_eq!(parse(&["-vv"]).unwrap().level(info), LevelFilter::Trace);
        assert_eq!(parse(&["-v", "-v", "-v"]).unwrap().level(info), LevelFilter::Trace);
        assert_eq!(parse(&["--verbose"]).unwrap().level(LevelFilter::Warn), LevelFilter::Info);
        assert_eq!(parse(&["--log-level", "warning"]).unwrap().level(info), LevelFilter::Warn);
        assert_eq!(parse(&["--log-level=ERROR"]).unwrap().level(info), LevelFilter::Error);
        assert_eq!(parse(&["--log-level=none"]).unwrap().level(info), LevelFilter::Off);
        // Global: accepted after a subcommand.
        assert_eq!(parse(&["go", "-v"]).unwrap().level(info), LevelFilter::Debug);
        assert_eq!(parse(&["go", "--log-level", "trace"]).unwrap().level(info), LevelFilter::Trace);
        assert!(!parse(&[]).unwrap().explicit() && parse(&["-v"]).unwrap().explicit());
        let e = parse(&["--log-level", "loud"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation);
        assert!(e.to_string().contains("unknown level \"loud\""), "{e}");
        assert_eq!(
            parse(&["-v", "--log-level", "info"]).unwrap_err().kind(),
            clap::error::ErrorKind::ArgumentConflict
        );
    }

    /// A tool that honours a variable for its level (calico-node-agent:
    /// `CALICO_LOG_LEVEL`) adds it to the shared flag from its own parser.
    #[derive(Parser, Debug)]
    #[command(mut_arg("log_level", |a| a.env("TOOL_CLI_TEST_LOG_LEVEL")))]
    struct WithEnv {
        #[command(flatten)]
        log: LogArgs,
    }

    #[test]
    fn a_tool_can_give_log_level_its_variable() {
        use clap::CommandFactory;
        let cmd = WithEnv::command();
        let arg = cmd.get_arguments().find(|a| a.get_id() == "log_level").unwrap();
        assert_eq!(arg.get_env(), Some(std::ffi::OsStr::new("TOOL_CLI_TEST_LOG_LEVEL")));
        let c = WithEnv::try_parse_from(["t", "--log-level", "debug"]).unwrap();
        assert_eq!(c.log.level(LevelFilter::Info), LevelFilter::Debug);
    }

    fn enabled(logger: &env_logger::Logger, level: Level, target: &str) -> bool {
        log::Log::enabled(logger, &log::Metadata::builder().level(level).target(target).build())
    }

    #[test]
    fn rust_log_directives_apply_and_explicit_flags_set_the_overall_level() {
        let l = Logging::new("t");
        let quiet = l.builder(&LogArgs::default(), None).build();
        assert!(enabled(&quiet, Level::Info, "x") && !enabled(&quiet, Level::Debug, "x"));
        let rust_log = l.builder(&LogArgs::default(), Some("warn,h2=trace")).build();
        assert!(!enabled(&rust_log, Level::Info, "x") && enabled(&rust_log, Level::Trace, "h2::codec"));
        let v = LogArgs { verbose: 1, log_level: None };
        let both = l.builder(&v, Some("warn,h2=trace")).build();
        assert!(enabled(&both, Level::Debug, "x") && !enabled(&both, Level::Trace, "x"));
        assert!(enabled(&both, Level::Trace, "h2"));
        let off = l.builder(&LogArgs { verbose: 0, log_level: Some(LevelFilter::Off) }, None).build();
        assert!(!enabled(&off, Level::Error, "x"));
    }

    #[test]
    fn lines_keep_the_tools_formats() {
        let l = Logging::new("kube-proxy-rules");
        let t = UNIX_EPOCH;
        assert_eq!(l.line(t, Level::Info, "m", &format_args!("synced")), "synced\n");
        assert_eq!(l.line(t, Level::Warn, "m", &format_args!("x")), "kube-proxy-rules: warning: x\n");
        assert_eq!(l.line(t, Level::Error, "m", &format_args!("x")), "kube-proxy-rules: error: x\n");
        assert_eq!(l.line(t, Level::Debug, "a::b", &format_args!("x")), "kube-proxy-rules: debug: a::b: x\n");
        assert_eq!(l.line(t, Level::Trace, "a", &format_args!("x")), "kube-proxy-rules: trace: a: x\n");
        let l = l.timestamps(true);
        let t = UNIX_EPOCH + Duration::from_millis(1_714_564_800_123);
        assert_eq!(l.line(t, Level::Info, "m", &format_args!("up")), "2024-05-01T12:00:00.123Z up\n");
    }

    #[test]
    fn utc_timestamps_across_leap_days_and_centuries() {
        let at = |secs: u64| utc_timestamp(UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00.000Z");
        assert_eq!(at(951_868_799), "2000-02-29T23:59:59.000Z");
        assert_eq!(at(4_107_542_400), "2100-03-01T00:00:00.000Z");
        assert_eq!(at(1_709_251_199), "2024-02-29T23:59:59.000Z");
        assert_eq!(at(1_735_689_600), "2025-01-01T00:00:00.000Z");
    }
}
