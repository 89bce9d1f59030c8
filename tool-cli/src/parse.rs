//! Parsing helpers for the tools' own tests.

use std::ffi::OsString;

use clap::{Command, Parser};

/// `cmd` with no argument reading its `env =` variable, in every
/// subcommand: a test of the flags gets the same answer whatever the
/// environment it runs in holds.
pub fn without_env(cmd: Command) -> Command {
    cmd.mut_args(|a| a.env(None::<&str>)).mut_subcommands(without_env)
}

/// `C::try_parse_from(argv)` with the environment ignored ([`without_env`]).
pub fn try_parse_without_env<C, I, T>(argv: I) -> Result<C, clap::Error>
where
    C: Parser,
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let matches = without_env(C::command()).try_get_matches_from(argv)?;
    C::from_arg_matches(&matches)
}
