//! CNI error codes and the error JSON printed on stdout.

use serde_json::{json, Value};

/// Well-known CNI error codes (spec "Error" section). 0–99 are reserved by the
/// spec; plugins use 100 and above for their own errors.
pub mod codes {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODING: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const INVALID_NETNS: u32 = 8;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const UNAVAILABLE: u32 = 50;
    pub const UNAVAILABLE_DEGRADED: u32 = 51;
    /// First plugin-specific code (Calico uses 100 for its own errors).
    pub const PLUGIN: u32 = 100;
    /// The Go library's `ErrInternal`: anything that has no better code.
    pub const INTERNAL: u32 = 999;
}

/// A CNI error: printed as `{"cniVersion","code","msg","details"}` on stdout
/// with a non-zero exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    /// Extra context; omitted from the JSON when empty.
    pub details: String,
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.details.is_empty() {
            write!(f, "{} (code {})", self.msg, self.code)
        } else {
            write!(f, "{}: {} (code {})", self.msg, self.details, self.code)
        }
    }
}

impl std::error::Error for CniError {}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError { code, msg: msg.into(), details: details.into() }
    }

    /// Code 1: the config version is not supported (or below a command's floor).
    pub fn incompatible_version(msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self::new(codes::INCOMPATIBLE_VERSION, msg, details)
    }

    /// Code 2: a config field (`name`) has a value (`value`) this plugin does not support.
    pub fn unsupported_field(name: &str, value: impl std::fmt::Display) -> Self {
        Self::new(
            codes::UNSUPPORTED_FIELD,
            format!("unsupported value for field {name}"),
            format!("{name}={value}"),
        )
    }

    /// Code 3: the container is unknown or does not exist.
    pub fn unknown_container(msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self::new(codes::UNKNOWN_CONTAINER, msg, details)
    }

    /// Code 4: an environment variable is missing or invalid.
    pub fn invalid_env(msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self::new(codes::INVALID_ENV, msg, details)
    }

    /// Code 4 for missing variables: `required env variables [X,Y] missing`.
    pub fn missing_env(vars: &[&str]) -> Self {
        Self::invalid_env(format!("required env variables [{}] missing", vars.join(",")), "")
    }

    /// Code 5: an I/O failure (reading stdin, a file, running a delegate).
    pub fn io(msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self::new(codes::IO, msg, details)
    }

    /// Code 6: stdin (or a delegate's output) could not be decoded.
    pub fn decoding(msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self::new(codes::DECODING, msg, details)
    }

    /// Code 7: the network configuration is invalid.
    pub fn invalid_config(msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self::new(codes::INVALID_CONFIG, msg, details)
    }

    /// Code 8: CNI_NETNS is unusable (or is the plugin's own netns).
    pub fn invalid_netns(msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self::new(codes::INVALID_NETNS, msg, details)
    }

    /// Code 11: transient failure, the runtime should retry later.
    pub fn try_again_later(msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self::new(codes::TRY_AGAIN_LATER, msg, details)
    }

    /// Code 50 (STATUS): the plugin cannot serve ADD right now.
    pub fn unavailable(msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self::new(codes::UNAVAILABLE, msg, details)
    }

    /// Code 51 (STATUS): unavailable, and existing containers may be degraded.
    pub fn unavailable_degraded(msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self::new(codes::UNAVAILABLE_DEGRADED, msg, details)
    }

    /// A plugin-specific error; codes below 100 are clamped to 100 so a
    /// plugin cannot accidentally claim a spec-reserved meaning.
    pub fn plugin(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self::new(code.max(codes::PLUGIN), msg, details)
    }

    /// Code 999: an internal failure with no better code.
    pub fn internal(msg: impl Into<String>) -> Self {
        Self::new(codes::INTERNAL, msg, "")
    }

    /// Prefix the message with what was being done (`"IPAM ADD: ..."`), keeping code and details.
    pub fn context(mut self, what: &str) -> Self {
        self.msg = format!("{what}: {}", self.msg);
        self
    }

    /// The error JSON for stdout, tagged with the config's version.
    pub fn to_json(&self, cni_version: &str) -> Value {
        let mut v = json!({ "cniVersion": cni_version, "code": self.code, "msg": self.msg });
        if !self.details.is_empty() {
            v["details"] = Value::String(self.details.clone());
        }
        v
    }

    /// Parse an error printed by another plugin (a delegate): `{code, msg, details}`.
    /// `None` if `v` does not look like a CNI error.
    pub fn from_json(v: &Value) -> Option<CniError> {
        let code = v.get("code")?.as_u64()?;
        let code = u32::try_from(code).ok()?;
        let msg = v.get("msg").and_then(Value::as_str).unwrap_or("").to_string();
        let details = v.get("details").and_then(Value::as_str).unwrap_or("").to_string();
        Some(CniError { code, msg, details })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_use_spec_codes() {
        assert_eq!(CniError::incompatible_version("a", "").code, 1);
        assert_eq!(CniError::unsupported_field("mtu", 9).code, 2);
        assert_eq!(CniError::unsupported_field("mtu", 9).details, "mtu=9");
        assert_eq!(CniError::unknown_container("a", "").code, 3);
        assert_eq!(CniError::invalid_env("a", "").code, 4);
        assert_eq!(CniError::io("a", "").code, 5);
        assert_eq!(CniError::decoding("a", "").code, 6);
        assert_eq!(CniError::invalid_config("a", "").code, 7);
        assert_eq!(CniError::invalid_netns("a", "").code, 8);
        assert_eq!(CniError::try_again_later("a", "").code, 11);
        assert_eq!(CniError::unavailable("a", "").code, 50);
        assert_eq!(CniError::unavailable_degraded("a", "").code, 51);
        assert_eq!(CniError::plugin(100, "a", "").code, 100);
        assert_eq!(CniError::plugin(3, "a", "").code, 100, "reserved codes are not reachable");
        assert_eq!(CniError::internal("a").code, 999);
    }

    #[test]
    fn missing_env_message_matches_skel() {
        let e = CniError::missing_env(&["CNI_CONTAINERID", "CNI_IFNAME"]);
        assert_eq!(e.msg, "required env variables [CNI_CONTAINERID,CNI_IFNAME] missing");
        assert_eq!(e.code, 4);
    }

    #[test]
    fn json_shape_and_round_trip() {
        let e = CniError::invalid_config("bad", "");
        let v = e.to_json("1.0.0");
        assert_eq!(v, json!({"cniVersion":"1.0.0","code":7,"msg":"bad"}));
        let e = CniError::decoding("bad", "line 1");
        let v = e.to_json("0.4.0");
        assert_eq!(v["details"], "line 1");
        assert_eq!(CniError::from_json(&v), Some(e));
        assert_eq!(CniError::from_json(&json!({"msg":"x"})), None);
        assert_eq!(CniError::from_json(&json!({"code":-1})), None);
        assert_eq!(CniError::from_json(&json!("str")), None);
    }

    #[test]
    fn context_keeps_code() {
        let e = CniError::try_again_later("etcd down", "d").context("IPAM ADD");
        assert_eq!(e.msg, "IPAM ADD: etcd down");
        assert_eq!(e.code, 11);
        assert_eq!(e.to_string(), "IPAM ADD: etcd down: d (code 11)");
    }
}
