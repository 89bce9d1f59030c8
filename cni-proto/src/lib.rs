//! # cni-proto: the CNI 1.1.0 protocol, shared by the `calico` and `calico-ipam` binaries
//!
//! Owns the protocol only: environment and config parsing, validation,
//! version negotiation, result/error JSON in every supported version, the
//! skel-like dispatcher, exec of delegate plugins, and the log backend (with
//! the small UTC calendar in [`time`] its timestamps need, shared with
//! `ipam-block`'s allocation timestamps so the calendar math exists once).
//! May call: the filesystem (log file, CNI_PATH lookup) and delegate plugin
//! processes. Knows nothing about Calico, IPAM policy or netlink.
//!
//! ## API note (for plugin authors)
//!
//! ```text
//! use cni_proto::{CniError, CniResult, Command, Plugin, Request};
//!
//! struct MyPlugin;
//! impl Plugin for MyPlugin {
//!     fn add(&self, req: &Request) -> Result<CniResult, CniError> { ... }
//!     fn del(&self, req: &Request) -> Result<(), CniError> { ... }
//!     fn check(&self, req: &Request) -> Result<(), CniError> { ... }
//!     fn status(&self, req: &Request) -> Result<(), CniError> { ... }
//!     fn gc(&self, req: &Request) -> Result<(), CniError> { ... }
//! }
//! fn main() { cni_proto::main(&MyPlugin) }          // never returns
//! ```
//!
//! What the runner ([`run`] / [`main`]; [`run_with`] for tests with an explicit
//! env map, stdin and stdout) does before calling the plugin, in this order:
//! 1. `CNI_COMMAND` missing/unknown → code 4. `VERSION` → prints
//!    `{"cniVersion":"1.1.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]}`
//!    without reading stdin.
//! 2. Required variables per the spec table (ADD/CHECK: CONTAINERID, NETNS,
//!    IFNAME; DEL: CONTAINERID, IFNAME (NETNS optional); GC: CNI_PATH;
//!    STATUS: none) → code 4 `required env variables [X,Y] missing`; container
//!    ID / ifname / CNI_ARGS syntax → code 4.
//! 3. stdin → [`NetConf`]: bad JSON → 6; missing/bad `name` → 7; missing
//!    `cniVersion` = "0.1.0".
//! 4. Logger from the config's `log_level` / `log_file_path` (stderr + file, never stdout).
//! 5. Floors (CHECK ≥ 0.4.0, STATUS/GC ≥ 1.1.0) then exact version membership → code 1.
//! 6. ADD only: CNI_NETNS must open and not be our own netns (code 8;
//!    `CNI_NETNS_OVERRIDE=1` skips).
//! 7. Dispatch. ADD's [`CniResult`] is printed converted to the config's
//!    version (0.3.x/0.4.0 add `ips[].version`; 1.1-only fields dropped
//!    below 1.1.0). DEL/CHECK/STATUS/GC print nothing on success. Any
//!    [`CniError`] is printed as `{"cniVersion","code","msg","details"}` on
//!    stdout, exit status 1.
//!
//! In the plugin:
//! * `req.container_id()? : &ContainerId`, `req.ifname()? : &IfName`,
//!   `req.netns() : Option<&Path>`, `req.args().get("K8S_POD_NAME")`,
//!   `req.version()`, `req.conf` ([`NetConf`]: `name`, `plugin_type`, `ipam:
//!   Option<IpamConf{ipam_type, raw}>`, `prev_result: Option<CniResult>`,
//!   `runtime_config`, `args`, `dns`, `raw`), `req.stdin` (raw bytes).
//! * Own keys: `let c: MyConf = req.conf.extra()?;` / `req.conf.ipam_extra()?`
//!   (serde, unknown keys ignored, code 7 on mismatch).
//! * GC: `req.conf.valid_attachments()? : Option<Vec<ValidAttachment{container_id, ifname}>>`.
//! * Delegation: `req.delegate("calico-ipam", Command::Add)? : Option<CniResult>`
//!   (Some for ADD) runs the binary from CNI_PATH with the same env and full
//!   stdin, CNI_COMMAND overridden (e.g. `Command::Del` for rollback); its
//!   error JSON is propagated as a [`CniError`] with its code. Use
//!   `req.delegate_with(type, cmd, &env_map, &stdin)` to alter env/stdin.
//! * Errors: [`CniError`] constructors `incompatible_version` (1),
//!   `unsupported_field` (2), `unknown_container` (3), `invalid_env` /
//!   `missing_env` (4), `io` (5), `decoding` (6), `invalid_config` (7),
//!   `invalid_netns` (8), `try_again_later` (11), `unavailable` (50),
//!   `unavailable_degraded` (51), `plugin(code≥100, ..)`, `internal` (999);
//!   `.context("IPAM ADD")` prefixes the message.

pub mod conf;
pub mod env;
pub mod error;
pub mod exec;
pub mod logging;
pub mod result;
pub mod skel;
pub mod strict;
pub mod time;
pub mod version;

pub use conf::{IpamConf, NetConf, ValidAttachment};
pub use env::{validate_network_name, CniArgs, CniEnv, Command, ContainerId, IfName};
pub use error::{codes, CniError};
pub use exec::{exec_plugin, find_in_path};
pub use result::{CniResult, Dns, Interface, IpConfig, Route};
pub use skel::{main, run, run_with, Plugin, Request};
pub use version::{Version, CURRENT as CURRENT_VERSION, SUPPORTED as SUPPORTED_VERSIONS};
