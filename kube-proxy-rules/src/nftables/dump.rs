//! Comparing nftables state the way kube-proxy's tests do.
//!
//! * [`Table`] applies transactions to an in-memory model of table
//!   `ip kube-proxy` (like knftables' `Fake`): objects must exist before they
//!   are used, a chain still referenced cannot be deleted, a failing
//!   transaction changes nothing. [`Table::dump`] prints the state as `add`
//!   lines, the form kube-proxy's expectations are written in.
//! * [`sort_dump`] is kube-proxy's `sortNFTablesTransaction`: tables, chains,
//!   rules, sets, maps, elements; by object name; rules in their order.
//! * [`normalize_listing`] turns `nft list table` output into a canonical form
//!   (objects sorted by kind and name, elements sorted, dynamic set contents
//!   dropped) so the kernel state of two namespaces can be compared.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};

use crate::family::IpFamily;
use crate::nftables::render::{ENDPOINT_DNAT_MAPS, FAMILY_TABLE};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Chain {
    spec: String,
    rules: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Container {
    is_map: bool,
    spec: String,
    /// key → the element's text between the braces.
    elements: BTreeMap<String, String>,
}

/// An in-memory table `ip kube-proxy` (or `ip6 kube-proxy`: the table the
/// first operation names; every later one must name the same).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    /// `ip kube-proxy` or `ip6 kube-proxy`, once an operation named it.
    name: Option<&'static str>,
    spec: Option<String>,
    chains: BTreeMap<String, Chain>,
    containers: BTreeMap<String, Container>,
}

/// The key of an element's text: up to ` comment "` or ` : `.
fn element_key(inner: &str) -> &str {
    let end = [inner.find(" comment \""), inner.find(" : ")].into_iter().flatten().min();
    end.map(|e| &inner[..e]).unwrap_or(inner).trim()
}

/// The names a rule or element value jumps to and the sets it looks up.
fn references(text: &str) -> (Vec<&str>, Vec<&str>) {
    let words: Vec<&str> = text.split_whitespace().collect();
    let mut chains = Vec::new();
    let mut sets = Vec::new();
    for (i, w) in words.iter().enumerate() {
        if (*w == "jump" || *w == "goto") && i + 1 < words.len() {
            chains.push(words[i + 1].trim_end_matches(','));
        }
        if let Some(s) = w.strip_prefix('@') {
            sets.push(s);
        }
    }
    (chains, sets)
}

impl Table {
    pub fn new() -> Self {
        Self::default()
    }

    /// Apply a transaction: every line or none (the error names the line).
    pub fn apply(&mut self, transaction: &str) -> Result<(), String> {
        let mut next = self.clone();
        for (n, line) in transaction.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            next.apply_line(line).map_err(|e| format!("line {}: {e}: `{line}`", n + 1))?;
        }
        *self = next;
        Ok(())
    }

    fn chain_referenced(&self, name: &str) -> bool {
        let refers = |t: &str| references(t).0.contains(&name);
        self.chains.values().any(|c| c.rules.iter().any(|r| refers(r)))
            || self.containers.values().any(|c| c.elements.values().any(|e| refers(e)))
    }

    fn check_references(&self, text: &str) -> Result<(), String> {
        let (chains, sets) = references(text);
        if let Some(c) = chains.iter().find(|c| !self.chains.contains_key(**c)) {
            return Err(format!("no chain {c}"));
        }
        if let Some(s) = sets.iter().find(|s| !self.containers.contains_key(**s)) {
            return Err(format!("no set or map {s}"));
        }
        Ok(())
    }

    fn apply_line(&mut self, line: &str) -> Result<(), String> {
        let mut it = line.splitn(3, ' ');
        let (verb, object) = (it.next().unwrap_or(""), it.next().unwrap_or(""));
        let rest = it.next().unwrap_or("");
        let tables = [IpFamily::V4.nft_table(), IpFamily::V6.nft_table()];
        let named = tables
            .into_iter()
            .find(|t| rest.strip_prefix(t).is_some_and(|r| r.is_empty() || r.starts_with(' ')));
        let table = match (self.name, named) {
            (_, None) => return Err(format!("not about table {FAMILY_TABLE} or {}", tables[1])),
            (Some(mine), Some(t)) if mine != t => return Err(format!("not about table {mine}")),
            (_, Some(t)) => t,
        };
        self.name = Some(table);
        let rest = rest[table.len()..].trim();
        if object == "table" {
            match verb {
                "add" => {
                    self.spec.get_or_insert_with(|| rest.to_string());
                }
                "delete" if self.spec.is_some() => *self = Table::default(),
                "flush" if self.spec.is_some() => {
                    for c in self.chains.values_mut() {
                        c.rules.clear();
                    }
                }
                _ => return Err("no such table".into()),
            }
            return Ok(());
        }
        if self.spec.is_none() {
            return Err("no such table".into());
        }
        let (name, body) = rest.split_once(' ').unwrap_or((rest, ""));
        match (verb, object) {
            ("add", "chain") => {
                self.chains
                    .entry(name.to_string())
                    .or_insert_with(|| Chain { spec: body.into(), rules: vec![] });
            }
            ("flush", "chain") => self.chains.get_mut(name).ok_or("no such chain")?.rules.clear(),
            ("delete", "chain") => {
                if !self.chains.contains_key(name) {
                    return Err("no such chain".into());
                }
                if self.chain_referenced(name) {
                    return Err("chain is in use".into());
                }
                self.chains.remove(name);
            }
            ("add", "rule") => {
                self.check_references(body)?;
                self.chains.get_mut(name).ok_or("no such chain")?.rules.push(body.to_string());
            }
            ("add", "set" | "map") => {
                self.containers.entry(name.to_string()).or_insert_with(|| Container {
                    is_map: object == "map",
                    spec: body.into(),
                    elements: BTreeMap::new(),
                });
            }
            ("flush", "set" | "map") => self.containers.get_mut(name).ok_or("no such set")?.elements.clear(),
            ("delete", "set" | "map") => {
                let refers = |t: &str| references(t).1.contains(&name);
                if self.chains.values().any(|c| c.rules.iter().any(|r| refers(r))) {
                    return Err("set is in use".into());
                }
                self.containers.remove(name).ok_or("no such set")?;
            }
            ("add" | "delete", "element") => {
                let inner = body
                    .strip_prefix("{ ")
                    .and_then(|b| b.strip_suffix(" }"))
                    .ok_or("element not in { … }")?
                    .to_string();
                let key = element_key(&inner).to_string();
                if verb == "add" {
                    self.check_references(&inner)?;
                }
                let c = self.containers.get_mut(name).ok_or("no such set or map")?;
                if verb == "add" {
                    match c.elements.get(&key) {
                        Some(old) if old != &inner => return Err("element exists".into()),
                        _ => {
                            c.elements.insert(key, inner);
                        }
                    }
                } else {
                    c.elements.remove(&key).ok_or("no such element")?;
                }
            }
            _ => return Err(format!("unsupported operation {verb} {object}")),
        }
        Ok(())
    }

    /// The chains of the table.
    pub fn chain_names(&self) -> impl Iterator<Item = &str> {
        self.chains.keys().map(String::as_str)
    }

    /// The rules of one chain.
    pub fn rules(&self, chain: &str) -> Option<&[String]> {
        self.chains.get(chain).map(|c| c.rules.as_slice())
    }

    /// The state as `add` lines (knftables' `Fake.Dump`).
    pub fn dump(&self) -> String {
        let Some(spec) = &self.spec else { return String::new() };
        let t = self.name.unwrap_or(FAMILY_TABLE);
        let mut out = format!("add table {t} {spec}\n");
        let with = |s: &str| if s.is_empty() { String::new() } else { format!(" {s}") };
        for (name, c) in &self.chains {
            out.push_str(&format!("add chain {t} {name}{}\n", with(&c.spec)));
        }
        for (name, c) in &self.containers {
            let kind = if c.is_map { "map" } else { "set" };
            out.push_str(&format!("add {kind} {t} {name}{}\n", with(&c.spec)));
        }
        for (name, c) in &self.chains {
            for r in &c.rules {
                out.push_str(&format!("add rule {t} {name} {r}\n"));
            }
        }
        for (name, c) in &self.containers {
            for e in c.elements.values() {
                out.push_str(&format!("add element {t} {name} {{ {e} }}\n"));
            }
        }
        out
    }
}

fn object_rank(kind: &str) -> i32 {
    match kind {
        "table" => 10,
        "chain" => 9,
        "rule" => 8,
        "set" => 7,
        "map" => 6,
        "element" => 5,
        _ => 0,
    }
}

/// kube-proxy's `sortNFTablesTransaction`: drop blank and `#` lines, then a
/// stable sort by object kind, then object name; rules keep their order,
/// other lines of the same object sort as text.
pub fn sort_dump(text: &str) -> String {
    let mut lines: Vec<&str> = text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    lines.sort_by(|a, b| {
        let (wa, wb): (Vec<&str>, Vec<&str>) = (a.split(' ').collect(), b.split(' ').collect());
        if wa.len() < 5 || wb.len() < 5 {
            return Ordering::Equal;
        }
        if wa[1] != wb[1] {
            return object_rank(wb[1]).cmp(&object_rank(wa[1]));
        }
        if wa[4] != wb[4] {
            return wa[4].cmp(wb[4]);
        }
        if wa[1] == "rule" {
            return Ordering::Equal;
        }
        a.cmp(b)
    });
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

/// The state a transaction (or several) leaves in an empty table, sorted.
pub fn simulate(transactions: &[&str]) -> Result<String, String> {
    let mut t = Table::new();
    for tx in transactions {
        t.apply(tx)?;
    }
    Ok(sort_dump(&t.dump()))
}

/// `nft list table` output in a canonical form: one block per set, map and
/// chain, sorted by kind and name; set/map elements sorted (and left out for
/// dynamic sets, whose contents are traffic, not configuration); handles and
/// counters are not printed by `nft list` without `-a`/stateful objects.
pub fn normalize_listing(listing: &str) -> String {
    let mut header: Vec<String> = Vec::new();
    let mut blocks: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    let mut lines: Vec<String> = Vec::new();
    // An `elements = { … }` list being read (it may span several lines).
    let mut elements: Option<String> = None;
    let mut dynamic = false;
    for raw in listing.lines() {
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        if elements.is_none() && current.is_some() && line.starts_with("elements = {") {
            elements = Some(String::new());
        }
        if let Some(acc) = elements.as_mut() {
            acc.push(' ');
            acc.push_str(line);
            if line.ends_with('}') {
                let all = elements.take().unwrap_or_default();
                if !dynamic {
                    let inner = all.trim().trim_start_matches("elements = {").trim_end_matches('}');
                    let mut items: Vec<String> = inner
                        .split(',')
                        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
                        .collect();
                    items.retain(|s| !s.is_empty());
                    items.sort();
                    lines.extend(items.into_iter().map(|i| format!("element {i}")));
                }
            }
            continue;
        }
        match &current {
            None => {
                let kind = line.split(' ').next().unwrap_or("");
                if matches!(kind, "set" | "map" | "chain") && line.ends_with('{') {
                    let name = line.split(' ').nth(1).unwrap_or("").to_string();
                    current = Some((kind.to_string(), name));
                    dynamic = false;
                } else if line != "}" {
                    header.push(line.to_string());
                }
            }
            Some(key) => {
                if line == "}" {
                    blocks.insert(key.clone(), std::mem::take(&mut lines));
                    current = None;
                } else {
                    if line.starts_with("flags ") && line.contains("dynamic") {
                        dynamic = true;
                    }
                    lines.push(line.to_string());
                }
            }
        }
    }
    let mut out = header.join("\n");
    out.push('\n');
    for ((kind, name), body) in &blocks {
        out.push_str(&format!("{kind} {name}\n"));
        for l in body {
            out.push_str(&format!("  {l}\n"));
        }
    }
    out
}

/// A [`normalize_listing`] of the endpoint-maps layout with its slots
/// resolved: `numgen random mod N offset K map @endpoint-dnat` becomes the
/// endpoints of slots K … K+N-1, and the map's elements are left out. Which
/// slots a chain got depends on the order of the syncs (an incremental one
/// reuses or allocates ranges), what they DNAT to does not: two tables that
/// resolve alike dispatch alike.
pub fn resolve_endpoint_slots(normalized: &str) -> String {
    let map_of = |line: &str| {
        line.strip_prefix("map ").and_then(|name| ENDPOINT_DNAT_MAPS.iter().find(|m| **m == name)).copied()
    };
    let mut slots: HashMap<(&str, u64), String> = HashMap::new();
    let mut in_map = None;
    for line in normalized.lines() {
        if !line.starts_with(' ') {
            in_map = map_of(line);
        } else if let Some(map) = in_map {
            if let Some((k, v)) = line.trim().strip_prefix("element ").and_then(|e| e.split_once(" : ")) {
                if let Ok(k) = k.parse() {
                    slots.insert((map, k), v.to_string());
                }
            }
        }
    }
    let mut out = String::with_capacity(normalized.len());
    let mut in_map = None;
    for line in normalized.lines() {
        if !line.starts_with(' ') {
            in_map = map_of(line);
        } else if in_map.is_some() && line.trim().starts_with("element ") {
            continue;
        }
        let resolved = (|| {
            let (head, map) = ENDPOINT_DNAT_MAPS
                .iter()
                .find_map(|m| line.strip_suffix(&format!(" map @{m}")).map(|h| (h, *m)))?;
            let (before, spec) = head.split_once("numgen random mod ")?;
            let mut words = spec.split(' ');
            let n: u64 = words.next()?.parse().ok()?;
            let base: u64 = match (words.next(), words.next()) {
                (Some("offset"), Some(k)) => k.parse().ok()?,
                (None, None) => 0,
                _ => return None,
            };
            let eps: Vec<&str> =
                (base..base + n).map(|k| slots.get(&(map, k)).map(String::as_str).unwrap_or("?")).collect();
            Some(format!("{before}numgen random mod {n} endpoints [{}]", eps.join(", ")))
        })();
        out.push_str(resolved.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_checks_what_the_kernel_checks() {
        let mut t = Table::new();
        assert!(t.apply("add chain ip kube-proxy a").unwrap_err().contains("no such table"));
        t.apply("add table ip kube-proxy { comment \"x\" ; }\nadd chain ip kube-proxy a\nadd chain ip kube-proxy b\n")
            .unwrap();
        // A rule jumping to a missing chain fails the whole transaction.
        let err = t.apply("add rule ip kube-proxy a jump b\nadd rule ip kube-proxy a jump c\n").unwrap_err();
        assert!(err.starts_with("line 2: no chain c"), "{err}");
        assert!(t.rules("a").unwrap().is_empty());
        t.apply("add rule ip kube-proxy a jump b\n").unwrap();
        assert!(t.apply("delete chain ip kube-proxy b").unwrap_err().contains("in use"));
        t.apply("flush chain ip kube-proxy a\ndelete chain ip kube-proxy b\n").unwrap();
        // Elements: keyed by their key, comments and values kept.
        t.apply(
            "add map ip kube-proxy m { type ipv4_addr : verdict ; }\n\
             add element ip kube-proxy m { 10.0.0.1 comment \"x/y\" : goto a }\n",
        )
        .unwrap();
        assert!(t.apply("add element ip kube-proxy m { 10.0.0.1 : drop }").unwrap_err().contains("exists"));
        assert!(t.apply("delete chain ip kube-proxy a").unwrap_err().contains("in use"));
        t.apply(
            "delete element ip kube-proxy m { 10.0.0.1 }\nadd element ip kube-proxy m { 10.0.0.1 : drop }\n",
        )
        .unwrap();
        assert_eq!(
            sort_dump(&t.dump()),
            "add table ip kube-proxy { comment \"x\" ; }\nadd chain ip kube-proxy a\n\
             add map ip kube-proxy m { type ipv4_addr : verdict ; }\nadd element ip kube-proxy m { 10.0.0.1 : drop }\n"
        );
    }

    #[test]
    fn listings_are_compared_without_order_or_dynamic_contents() {
        let a = "table ip kube-proxy {\n\tcomment \"c\"\n\tset s {\n\t\ttype ipv4_addr\n\t\telements = { 10.0.0.2, 10.0.0.1,\n\t\t\t     10.0.0.3 }\n\t}\n\
                 \tset affinity-x {\n\t\ttype ipv4_addr\n\t\tflags dynamic,timeout\n\t\telements = { 10.9.9.9 timeout 3h expires 2h }\n\t}\n\
                 \tchain b {\n\t\tjump a\n\t}\n\tchain a {\n\t}\n}\n";
        let b = "table ip kube-proxy {\n\tcomment \"c\"\n\tchain a {\n\t}\n\tset affinity-x {\n\t\ttype ipv4_addr\n\t\tflags dynamic,timeout\n\t}\n\
                 \tchain b {\n\t\tjump a\n\t}\n\tset s {\n\t\ttype ipv4_addr\n\t\telements = { 10.0.0.1, 10.0.0.2, 10.0.0.3 }\n\t}\n}\n";
        assert_eq!(normalize_listing(a), normalize_listing(b));
        assert!(normalize_listing(a).contains("set s\n  type ipv4_addr\n  element 10.0.0.1\n"));
        let c = b.replace("jump a", "goto a");
        assert_ne!(normalize_listing(a), normalize_listing(&c));
    }
}
