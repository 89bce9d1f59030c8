//! Text formatting shared with the binaries (calicoctl, and cni-bench's
//! ipam-bench); their durations are `tool_cli::values::parse_duration`'s.

/// Render rows as an aligned text table (header first).
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> =
        (0..cols).map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.len()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for (i, r) in rows.iter().enumerate() {
        let line: Vec<String> =
            r.iter().enumerate().map(|(c, s)| format!("{s:<w$}", w = widths[c])).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
        if i == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            out.push_str(&rule.join("  "));
            out.push('\n');
        }
    }
    out
}

/// `5 (8%)`.
pub fn with_percent(n: u128, total: u128) -> String {
    if total == 0 {
        return n.to_string();
    }
    format!("{n} ({}%)", n * 100 / total)
}
