//! Small parsers and text formatting shared with the binaries (calicoctl,
//! ipam-bench, cni-bench).

use std::time::Duration;

use super::OpsError;

/// `15m`, `90s`, `1h`, `0s`, `250ms`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, OpsError> {
    let s = s.trim();
    let bad = || OpsError::Usage(format!("invalid duration {s:?} (examples: 0s, 90s, 15m, 1h)"));
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(bad()),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(bad());
    }
    // Too big for a Duration (e.g. `1e30h`) is a usage error, not a panic.
    Duration::try_from_secs_f64(secs).map_err(|_| bad())
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("-1s").is_err() && parse_duration("5x").is_err());
        assert!(parse_duration("99999999999999999999999999h").is_err(), "too big for a Duration");
    }
}
