//! Shared by the property tests of `cni-proto`, `cni-calico-rs` and
//! `ipam-block` (those include this file with `#[path]`): the bounded
//! runner configuration, the shape of a CNI error document, and a mutator
//! of JSON documents that turns a valid config into the broken forms an
//! outside fuzzer finds (sections given positionally as arrays, wrong
//! types, deleted keys, deep nesting).

#![allow(dead_code)]

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{TestCaseError, TestRunner};
use serde_json::{json, Value};

use cni_proto::codes;

// ---------------------------------------------------------------------------
// Runner configuration

/// `cases` unless PROPTEST_CASES says otherwise (proptest's own reading of
/// the variable is overridden by an explicit `cases`, so it is read here).
pub fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(cases);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

/// Run one property; a failure panics with proptest's minimal failing input.
pub fn check<S: Strategy>(cases: u32, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>) {
    let mut runner = TestRunner::new(config(cases));
    if let Err(e) = runner.run(&strategy, test) {
        panic!("{e}");
    }
}

/// The codes the crate's `codes` module defines: the spec's reserved ones,
/// plugin codes from 100 (999 is among them).
pub fn is_spec_code(code: u64) -> bool {
    let reserved = [
        codes::INCOMPATIBLE_VERSION,
        codes::UNSUPPORTED_FIELD,
        codes::UNKNOWN_CONTAINER,
        codes::INVALID_ENV,
        codes::IO,
        codes::DECODING,
        codes::INVALID_CONFIG,
        codes::INVALID_NETNS,
        codes::TRY_AGAIN_LATER,
        codes::UNAVAILABLE,
        codes::UNAVAILABLE_DEGRADED,
    ];
    reserved.iter().any(|c| u64::from(*c) == code) || code >= u64::from(codes::PLUGIN)
}

/// Every JSON document on stdout (a valid output has at most one).
pub fn documents(out: &[u8]) -> Result<Vec<Value>, String> {
    serde_json::Deserializer::from_slice(out)
        .into_iter::<Value>()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("stdout is not JSON ({e}): {:?}", String::from_utf8_lossy(out)))
}

/// The one error document of a failed run, checked for shape.
pub fn one_error(out: &[u8]) -> Result<Value, TestCaseError> {
    let docs = documents(out).map_err(TestCaseError::fail)?;
    prop_assert_eq!(docs.len(), 1, "want exactly one document: {:?}", String::from_utf8_lossy(out));
    let doc = docs.into_iter().next().unwrap_or(Value::Null);
    let code = doc["code"].as_u64();
    prop_assert!(code.is_some_and(is_spec_code), "no spec code: {}", doc);
    prop_assert!(doc["msg"].as_str().is_some_and(|m| !m.is_empty()), "empty msg: {}", doc);
    prop_assert!(doc["cniVersion"].is_string(), "no cniVersion: {}", doc);
    Ok(doc)
}

// ---------------------------------------------------------------------------
// Mutations of JSON documents

#[derive(Debug, Clone)]
pub enum Step {
    Key(String),
    Idx(usize),
}

/// One change to one node of a JSON document.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// An object becomes the array of its values: serde's positional form
    /// of a struct. Applied to object nodes only.
    Positional,
    Null,
    Int(i64),
    Float(f64),
    Bool(bool),
    Text(String),
    /// Remove the node from its parent (the root becomes null).
    Delete,
    EmptyArray,
    EmptyObject,
    /// Wrap the node in `depth` arrays (`[[[x]]]`) or objects (`{"a":{"a":x}}`).
    Nest {
        depth: usize,
        arrays: bool,
    },
}

pub fn mutation() -> BoxedStrategy<Mutation> {
    let text = prop_oneof![
        3 => "\\PC{0,12}",
        2 => prop::sample::select(
            &["true", "false", "calico", "1.1.0", "0.2.0", "0.0.0.0/0", "a b", "", "-x", "{}", "[]"][..]
        )
        .prop_map(str::to_string),
    ];
    prop_oneof![
        4 => Just(Mutation::Positional),
        1 => Just(Mutation::Null),
        1 => any::<i64>().prop_map(Mutation::Int),
        1 => (-1e12f64..1e12).prop_map(Mutation::Float),
        1 => any::<bool>().prop_map(Mutation::Bool),
        2 => text.prop_map(Mutation::Text),
        2 => Just(Mutation::Delete),
        1 => Just(Mutation::EmptyArray),
        1 => Just(Mutation::EmptyObject),
        1 => (1usize..40, any::<bool>()).prop_map(|(depth, arrays)| Mutation::Nest { depth, arrays }),
        // Past serde_json's recursion limit (128): a decoding error, never a stack overflow.
        1 => (200usize..300, any::<bool>()).prop_map(|(depth, arrays)| Mutation::Nest { depth, arrays }),
    ]
    .boxed()
}

/// Every node's path, root first; `objects_only` keeps object nodes.
pub fn node_paths(v: &Value, objects_only: bool) -> Vec<Vec<Step>> {
    fn walk(v: &Value, path: &mut Vec<Step>, out: &mut Vec<Vec<Step>>, objects_only: bool) {
        if !objects_only || v.is_object() {
            out.push(path.clone());
        }
        match v {
            Value::Object(m) => {
                for (k, child) in m {
                    path.push(Step::Key(k.clone()));
                    walk(child, path, out, objects_only);
                    path.pop();
                }
            }
            Value::Array(a) => {
                for (i, child) in a.iter().enumerate() {
                    path.push(Step::Idx(i));
                    walk(child, path, out, objects_only);
                    path.pop();
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(v, &mut Vec::new(), &mut out, objects_only);
    out
}

pub fn node_mut<'a>(v: &'a mut Value, path: &[Step]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |v, s| match s {
        Step::Key(k) => v.get_mut(k.as_str()),
        Step::Idx(i) => v.get_mut(*i),
    })
}

/// Apply `m` to the node `at` picks (among object nodes for Positional);
/// returns the path changed, or None when there was no such node.
pub fn apply(doc: &mut Value, at: &Index, m: &Mutation) -> Option<Vec<Step>> {
    let paths = node_paths(doc, matches!(m, Mutation::Positional));
    if paths.is_empty() {
        return None;
    }
    let path = paths[at.index(paths.len())].clone();
    apply_at(doc, &path, m).then_some(path)
}

/// Apply `m` to the node at `path`; false when there is no such node.
pub fn apply_at(doc: &mut Value, path: &[Step], m: &Mutation) -> bool {
    if let Mutation::Delete = m {
        match path.split_last() {
            None => *doc = Value::Null,
            Some((last, parent)) => match (node_mut(doc, parent), last) {
                (Some(Value::Object(o)), Step::Key(k)) => {
                    o.remove(k);
                }
                (Some(Value::Array(a)), Step::Idx(i)) if *i < a.len() => {
                    a.remove(*i);
                }
                _ => return false,
            },
        }
        return true;
    }
    let Some(node) = node_mut(doc, path) else { return false };
    let old = node.take();
    *node = match m {
        Mutation::Positional => match old {
            Value::Object(o) => Value::Array(o.into_iter().map(|(_, v)| v).collect()),
            other => other,
        },
        Mutation::Null => Value::Null,
        Mutation::Int(i) => json!(i),
        Mutation::Float(f) => json!(f),
        Mutation::Bool(b) => json!(b),
        Mutation::Text(s) => json!(s),
        Mutation::EmptyArray => json!([]),
        Mutation::EmptyObject => json!({}),
        Mutation::Nest { depth, arrays } => {
            (0..*depth).fold(old, |inner, _| if *arrays { json!([inner]) } else { json!({ "a": inner }) })
        }
        Mutation::Delete => unreachable!("handled above"),
    };
    true
}

/// Nesting depth as serde_json counts it (each array or object is a level).
pub fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}
