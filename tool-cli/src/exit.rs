//! The one runtime-error format and exit code of the tools.
//!
//! Usage errors (a flag clap rejects, `--help`) are clap's: `error: …` with
//! the usage line, exit 2 (`--help`: exit 0). A tool's failure at run time
//! is one line, `<tool>: error: <message>`, the same as an error log line
//! ([`crate::logging`]), and exit 1 unless the tool maps its errors to other
//! codes ([`finish_with`]).

use std::fmt::Display;
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::CommandFactory;

/// The exit code of `result`; an error is printed as `<tool>: error: <e>` and
/// gives exit code 1. `main` returns it, so destructors run (unlike
/// `process::exit`).
pub fn finish<T: Into<ExitCode>, E: Display>(tool: &str, result: Result<T, E>) -> ExitCode {
    finish_with(tool, result, |_| 1)
}

/// [`finish`] with the exit code chosen per error (e.g. calicoctl: 2 for bad
/// usage or configuration, 3 for a datastore failure).
pub fn finish_with<T: Into<ExitCode>, E: Display>(
    tool: &str,
    result: Result<T, E>,
    code: impl FnOnce(&E) -> u8,
) -> ExitCode {
    log::logger().flush();
    match result {
        Ok(c) => c.into(),
        Err(e) => {
            eprintln!("{}", error_line(tool, &e));
            ExitCode::from(code(&e))
        }
    }
}

/// `<tool>: error: <message>`.
pub fn error_line(tool: &str, msg: &dyn Display) -> String {
    format!("{tool}: error: {msg}")
}

/// An error and its sources as one message, `outer: inner: …`, leaving out
/// a source whose text the message before it already ends with (errors
/// that print their source themselves).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// A check made after parsing (flags that are valid alone but not
/// together, a datastore setting that does not validate) reported the way
/// clap reports its own: `error: <msg>`, the usage line, exit 2 via
/// [`clap::Error::exit`].
pub fn usage_error<C: CommandFactory>(msg: impl Display) -> clap::Error {
    C::command().error(ErrorKind::ValueValidation, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("opening the datastore")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("etcd: connection refused")]
    struct Inner;

    #[derive(Debug, thiserror::Error)]
    #[error("writing x: {0}")]
    struct SaysItsSource(#[source] Inner);

    #[test]
    fn error_lines_and_chains() {
        assert_eq!(
            error_line("cnitool", &"no net configuration with name \"x\""),
            "cnitool: error: no net configuration with name \"x\""
        );
        assert_eq!(error_chain(&Outer(Inner)), "opening the datastore: etcd: connection refused");
        assert_eq!(error_chain(&SaysItsSource(Inner)), "writing x: etcd: connection refused");
    }

    #[test]
    fn exit_codes() {
        assert_eq!(finish::<u8, String>("t", Ok(0)), ExitCode::SUCCESS);
        assert_eq!(finish::<ExitCode, _>("t", Err("boom")), ExitCode::from(1));
        assert_eq!(finish_with::<ExitCode, _>("t", Err(3u8), |e| *e), ExitCode::from(3));
    }

    #[derive(clap::Parser, Debug)]
    struct Cli {
        #[arg(long)]
        x: Option<String>,
    }

    #[test]
    fn usage_errors_look_like_claps() {
        let e = usage_error::<Cli>("--x and --y together");
        assert_eq!(e.kind(), ErrorKind::ValueValidation);
        assert_eq!(e.exit_code(), 2);
        let text = e.to_string();
        assert!(text.starts_with("error: --x and --y together") && text.contains("Usage:"), "{text}");
    }
}
