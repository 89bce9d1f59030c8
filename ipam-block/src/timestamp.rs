//! Allocation timestamps in the format Calico writes (Go's `time.Time.String()`
//! of a UTC time): `2006-01-02 15:04:05.999999999 +0000 UTC`, and their
//! parser (which also takes RFC 3339 and Unix seconds). The calendar math is
//! `cni_proto::time`'s.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Now, formatted like Go's `time.Now().UTC().String()`.
pub fn go_utc_now() -> String {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    format_go_utc(d.as_secs() as i64, d.subsec_nanos())
}

/// `secs` since the epoch + `nanos`, formatted like Go (trailing zeros of
/// the fraction trimmed, no fraction when it is zero).
pub fn format_go_utc(secs: i64, nanos: u32) -> String {
    let mut frac = if nanos == 0 { String::new() } else { format!(".{nanos:09}") };
    while frac.ends_with('0') {
        frac.pop();
    }
    format!("{}{frac} +0000 UTC", cni_proto::time::format_utc_seconds(secs))
}

/// Parse an allocation `timestamp`: RFC 3339 (`2026-11-21T19:45:53.1Z`,
/// `…+01:00`), Go's `time.String()` form Calico writes (`2026-11-21
/// 19:45:53.123 +0000 UTC`), or Unix seconds.
pub fn parse_timestamp(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return UNIX_EPOCH.checked_add(Duration::from_secs(secs));
    }
    let b = s.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !(b[10] == b'T' || b[10] == b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d, h, mi, sec) =
        (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut nanos = 0u32;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits: String = frac.chars().take_while(char::is_ascii_digit).collect();
        rest = &frac[digits.len()..];
        let padded: String = digits.chars().chain(std::iter::repeat('0')).take(9).collect();
        nanos = padded.parse().ok()?;
    }
    let rest = rest.trim_start();
    let offset_secs: i64 = if rest.is_empty() || rest == "Z" || rest.starts_with("UTC") {
        0
    } else {
        // `+01:00`, `+0100`, optionally followed by a zone name.
        let sign = match rest.as_bytes()[0] {
            b'+' => 1,
            b'-' => -1,
            _ => return None,
        };
        let digits: String = rest[1..].chars().filter(char::is_ascii_digit).take(4).collect();
        if digits.len() != 4 {
            return None;
        }
        let oh: i64 = digits[..2].parse().ok()?;
        let om: i64 = digits[2..].parse().ok()?;
        sign * (oh * 3600 + om * 60)
    };
    let days = cni_proto::time::days_from_civil(y, mo as u32, d as u32);
    let unix = days * 86400 + h * 3600 + mi * 60 + sec - offset_secs;
    let unix = u64::try_from(unix).ok()?;
    UNIX_EPOCH.checked_add(Duration::new(unix, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_go() {
        assert_eq!(format_go_utc(0, 0), "1970-01-01 00:00:00 +0000 UTC");
        // 2021-12-08 15:31:43.39255339 UTC
        assert_eq!(format_go_utc(1_638_977_503, 392_553_390), "2021-12-08 15:31:43.39255339 +0000 UTC");
        assert_eq!(format_go_utc(951_782_400, 5_000), "2000-02-29 00:00:00.000005 +0000 UTC");
    }

    #[test]
    fn timestamps_parse() {
        let t = parse_timestamp("1970-01-02T00:00:01Z").unwrap();
        assert_eq!(t, UNIX_EPOCH + Duration::from_secs(86401));
        assert_eq!(
            parse_timestamp("1970-01-02 01:00:01.5 +0100 CET").unwrap(),
            t + Duration::from_millis(500)
        );
        assert_eq!(parse_timestamp("2026-11-21 19:45:53.123456789 +0000 UTC").unwrap(), {
            parse_timestamp("2026-11-21T19:45:53.123456789+00:00").unwrap()
        });
        assert_eq!(parse_timestamp("86401").unwrap(), t);
        assert_eq!(parse_timestamp("yesterday"), None);
        assert_eq!(parse_timestamp("2026-13-01T00:00:00Z"), None);
        // The parser reads back what the formatter writes.
        let (secs, nanos) = (1_638_977_503, 392_553_390);
        assert_eq!(
            parse_timestamp(&format_go_utc(secs, nanos)).unwrap(),
            UNIX_EPOCH + Duration::new(secs as u64, nanos)
        );
    }
}
