//! Unix time as a calendar date and time in UTC, for messages and tables
//! (a certificate's validity, a job's submission): worked out here, since
//! one fixed format does not call for a date library.

/// Unix seconds as `YYYY-MM-DD HH:MM:SS` (UTC, proleptic Gregorian).
pub fn date_time(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm);
    // u64::MAX seconds is some 2^47 days, far inside i64.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::date_time;

    #[test]
    fn dates_are_civil_dates_in_utc() {
        assert_eq!(date_time(0), "1970-01-01 00:00:00");
        assert_eq!(date_time(951_782_400 + 3_723), "2000-02-29 01:02:03");
        assert_eq!(date_time(1_796_083_200), "2026-12-01 00:00:00");
        assert_eq!(date_time(253_402_300_799), "9999-12-31 23:59:59");
        // The far end does not overflow.
        assert!(date_time(u64::MAX).ends_with(" 07:00:15"));
    }
}
