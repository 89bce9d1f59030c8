//! Allocation timestamps in the format Calico writes (Go's `time.Time.String()`
//! of a UTC time): `2006-01-02 15:04:05.999999999 +0000 UTC`.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, formatted like Go's `time.Now().UTC().String()`.
pub fn go_utc_now() -> String {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    format_go_utc(d.as_secs() as i64, d.subsec_nanos())
}

/// `secs` since the epoch + `nanos`, formatted like Go (trailing zeros of
/// the fraction trimmed, no fraction when it is zero).
pub fn format_go_utc(secs: i64, nanos: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let mut frac = if nanos == 0 { String::new() } else { format!(".{nanos:09}") };
    while frac.ends_with('0') {
        frac.pop();
    }
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}{frac} +0000 UTC", rem / 3600, (rem % 3600) / 60, rem % 60)
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian
/// calendar (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
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
}
