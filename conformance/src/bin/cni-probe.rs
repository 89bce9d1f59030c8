//! cni-probe: a chained test plugin. It appends what the runtime sent (the
//! command, the CNI_* environment, the parsed stdin) as one JSON line to
//! `<probeDir>/calls.jsonl` and, on ADD, prints `prevResult` unchanged (an
//! empty result when there is none). The conformance suite chains it after
//! the plugin under test to observe `prevResult`, DEL order and GC/STATUS
//! forwarding from the runtime's side.

use std::io::{Read, Write};
use std::process::ExitCode;

use serde_json::{json, Map, Value};

const SUPPORTED: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

fn fail(code: u32, msg: &str) -> ExitCode {
    println!("{}", json!({"cniVersion": "1.1.0", "code": code, "msg": msg}));
    ExitCode::from(1)
}

fn main() -> ExitCode {
    let command = std::env::var("CNI_COMMAND").unwrap_or_default();
    if command == "VERSION" {
        println!("{}", json!({"cniVersion": "1.1.0", "supportedVersions": SUPPORTED}));
        return ExitCode::SUCCESS;
    }
    let mut input = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut input) {
        return fail(5, &format!("reading stdin: {e}"));
    }
    let conf: Value = match serde_json::from_slice(&input) {
        Ok(v) => v,
        Err(e) => return fail(6, &format!("decoding config: {e}")),
    };
    let Some(dir) = conf.get("probeDir").and_then(Value::as_str) else {
        return fail(7, "probeDir missing");
    };
    let env: Map<String, Value> =
        std::env::vars().filter(|(k, _)| k.starts_with("CNI_")).map(|(k, v)| (k, json!(v))).collect();
    let line = json!({"command": command, "env": env, "stdin": conf}).to_string() + "\n";
    let path = std::path::Path::new(dir).join("calls.jsonl");
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        return fail(5, &format!("writing {}: {e}", path.display()));
    }
    if command == "ADD" {
        let version = conf.get("cniVersion").cloned().unwrap_or(json!("0.1.0"));
        let out = conf.get("prevResult").cloned().unwrap_or(json!({"cniVersion": version}));
        println!("{out}");
    }
    ExitCode::SUCCESS
}
