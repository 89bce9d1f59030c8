//! kube-proxy's canonical order for comparing payloads (`sortIPTablesRules` in
//! proxier_test.go): tables by name; chains KUBE-NODEPORTS, KUBE-SERVICES,
//! then other KUBE-* alphabetically, then the rest; rules grouped by chain in
//! their original order, except that KUBE-NODEPORTS and KUBE-SERVICES rules are
//! stably sorted by the service name in their comment (the nat KUBE-SERVICES
//! "must be the last rule" rule stays last). `-X CHAIN` lines (stale chains
//! being deleted) follow the rules, in their original order.

use std::cmp::Ordering;

struct Chain {
    name: String,
    rules: Vec<String>,
}

struct Table {
    name: String,
    chains: Vec<Chain>,
    deleted: Vec<String>,
}

fn chain_rank(a: &str, b: &str) -> Ordering {
    let key = |n: &str| match n {
        "KUBE-NODEPORTS" => 0,
        "KUBE-SERVICES" => 1,
        n if n.starts_with("KUBE-") => 2,
        _ => 3,
    };
    key(a).cmp(&key(b)).then_with(|| a.cmp(b))
}

/// The value of a rule's `--comment` (quoted or not), if any.
fn comment_of(rule: &str) -> Option<&str> {
    let rest = rule.split_once("--comment ")?.1;
    if let Some(q) = rest.strip_prefix('"') {
        q.split_once('"').map(|(c, _)| c)
    } else {
        Some(rest.split(' ').next().unwrap_or(""))
    }
}

/// The service name of a comment: up to the first space or colon.
fn service_of(rule: &str) -> Option<&str> {
    let c = comment_of(rule)?;
    Some(c.split([' ', ':']).next().unwrap_or(c))
}

fn by_service(a: &str, b: &str) -> Ordering {
    match (service_of(a), service_of(b)) {
        (Some(x), Some(y)) => x.cmp(y),
        _ => Ordering::Equal,
    }
}

/// Sort a payload into kube-proxy's canonical order. Lines that are neither
/// table, chain, rule nor COMMIT are errors.
pub fn sort_payload(payload: &str) -> Result<String, String> {
    let mut tables: Vec<Table> = Vec::new();
    for (n, line) in payload.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line == "COMMIT" {
            continue;
        }
        if let Some(t) = line.strip_prefix('*') {
            tables.push(Table { name: t.to_string(), chains: Vec::new(), deleted: Vec::new() });
            continue;
        }
        let table = tables.last_mut().ok_or_else(|| format!("line {}: {line:?} outside a table", n + 1))?;
        if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split(' ').next().unwrap_or("").to_string();
            if !table.chains.iter().any(|c| c.name == name) {
                table.chains.push(Chain { name, rules: Vec::new() });
            }
        } else if let Some(rest) = line.strip_prefix("-A ") {
            let chain = rest.split(' ').next().unwrap_or("");
            let c = table
                .chains
                .iter_mut()
                .find(|c| c.name == chain)
                .ok_or_else(|| format!("line {}: rule for undeclared chain {chain}", n + 1))?;
            c.rules.push(line.to_string());
        } else if let Some(chain) = line.strip_prefix("-X ") {
            table.deleted.push(chain.trim().to_string());
        } else {
            return Err(format!("line {}: cannot parse {line:?}", n + 1));
        }
    }
    tables.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = String::new();
    for t in &mut tables {
        t.chains.sort_by(|a, b| chain_rank(&a.name, &b.name));
        for c in &mut t.chains {
            if c.name == "KUBE-NODEPORTS" || (c.name == "KUBE-SERVICES" && t.name == "filter") {
                c.rules.sort_by(|a, b| by_service(a, b));
            } else if c.name == "KUBE-SERVICES" {
                let last = |r: &str| comment_of(r).is_some_and(|c| c.contains("must be the last rule"));
                c.rules.sort_by(|a, b| match (last(a), last(b)) {
                    (true, false) => Ordering::Greater,
                    (false, true) => Ordering::Less,
                    (true, true) => Ordering::Equal,
                    _ => by_service(a, b),
                });
            }
        }
        out.push_str(&format!("*{}\n", t.name));
        for c in &t.chains {
            out.push_str(&format!(":{} - [0:0]\n", c.name));
        }
        for c in &t.chains {
            for r in &c.rules {
                out.push_str(r);
                out.push('\n');
            }
        }
        t.deleted.sort();
        for d in &t.deleted {
            out.push_str(&format!("-X {d}\n"));
        }
        out.push_str("COMMIT\n");
    }
    Ok(out)
}
