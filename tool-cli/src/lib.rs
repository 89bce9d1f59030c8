//! # tool-cli: what the calico-rs command-line tools share
//!
//! The operator tools (`kube-proxy-rules`, `cnitool`, `conformance`,
//! `cni-bench`, and next `calicoctl`, `calico-node-agent`, `calico-lab`,
//! `ipam-bench`) parse their command lines with clap (derive) and report
//! through the `log` facade. What would otherwise be written once per tool
//! is here, so that every tool has the same spellings, levels and error
//! format:
//!
//! * [`LogArgs`]: the `-v`/`--verbose` (repeatable) and `--log-level LEVEL`
//!   clap group, flattened into each tool's top-level parser (global: it
//!   works after a subcommand too), and [`Logging`]: the one stderr logger
//!   (the `env_logger` backend, `RUST_LOG` directives honoured) with the
//!   tools' line format ([`logging`] says which).
//! * [`finish`] / [`finish_with`]: the one runtime-error format,
//!   `<tool>: error: <message>`, and the exit code (1 unless the tool maps
//!   its errors to others). Usage errors are clap's own (`error: …`, exit 2);
//!   [`usage_error`] makes a check done after parsing look the same.
//! * [`values`]: value parsers the tools' flags share (Go-style booleans for
//!   kube-proxy's `--flag[=BOOL]`, durations such as `30s`/`1m`/`500ms`,
//!   comma-separated lists that may also be repeated).
//! * [`try_parse_without_env`]: a tool's flag tests parse without the
//!   variables of the environment they run in.
//! * [`DatastoreArgs`] (feature `datastore`): the datastore flags and their
//!   environment variables (`--datastore-type`/`DATASTORE_TYPE`, …, the etcd
//!   TLS files), overlaid on a [`calico_store::DatastoreConfig`].
//!
//! Owns: the tools' stderr log format and level selection, the runtime-error
//! line and its exit code, and the shared flag spellings above.
//!
//! May call: clap (parsing, its error output), `log`/`env_logger` (installing
//! the process's one logger), the process environment (`RUST_LOG`, and the
//! variables named by `env =` on the shared flags, read by clap), a log file
//! a tool asks for ([`Logging::file`]), and, with feature `datastore`,
//! `calico-store`'s config type (no I/O).
//!
//! Never: writes to stdout (it is each tool's output: payloads, tables,
//! results); touches the CNI plugins' logging (`cni-proto::logging`, with its
//! Calico-format log file, is theirs and stays separate); exits the process
//! itself except through clap's own `--help`/usage handling in the caller's
//! `parse()` (the `finish` helpers return an [`std::process::ExitCode`] so
//! destructors run).

mod exit;
pub mod logging;
mod parse;
pub mod values;

#[cfg(feature = "datastore")]
mod datastore;

#[cfg(feature = "datastore")]
pub use datastore::DatastoreArgs;
pub use exit::{error_chain, finish, finish_with, usage_error};
pub use logging::{LogArgs, LogSetupError, Logging};
pub use parse::{try_parse_without_env, without_env};
