//! The file store's previous layout, read once to migrate it: `store.json`,
//! one document `{"revision":N,"keys":{"<key>":{"rev":R,"json":<value>}}}`
//! where a value is embedded as `json`, `text` (UTF-8) or `bytes` (numbers).

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::path::Path;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::{Revision, StoreError};

#[derive(Debug, Deserialize)]
struct Entry {
    rev: Revision,
    #[serde(default)]
    json: Option<Box<RawValue>>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    bytes: Option<Vec<u8>>,
}

#[derive(Debug, Deserialize)]
struct Document {
    revision: Revision,
    keys: BTreeMap<String, Entry>,
}

/// What a `store.json` held: the store revision and every key with its
/// revision and value. `None` when there is no such file; a document that
/// does not parse, or an entry without exactly one value, is `Corrupt`.
#[allow(clippy::type_complexity)]
pub fn load(path: &Path) -> Result<Option<(Revision, Vec<(String, Revision, Vec<u8>)>)>, StoreError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io(path.display().to_string(), e)),
    };
    let doc: Document = serde_json::from_slice(&bytes)
        .map_err(|e| StoreError::Corrupt { key: path.display().to_string(), reason: e.to_string() })?;
    let mut keys = Vec::with_capacity(doc.keys.len());
    for (key, e) in doc.keys {
        let value = match (e.json, e.text, e.bytes) {
            (Some(j), None, None) => j.get().as_bytes().to_vec(),
            (None, Some(t), None) => t.into_bytes(),
            (None, None, Some(b)) => b,
            _ => {
                return Err(StoreError::Corrupt {
                    key,
                    reason: format!("entry in {} must have exactly one of json/text/bytes", path.display()),
                })
            }
        };
        keys.push((key, e.rev, value));
    }
    Ok(Some((doc.revision, keys)))
}
