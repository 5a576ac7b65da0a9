//! Days since 1970-01-01 to a proleptic Gregorian date, for the times init (the clock's lines)
//! and the monitor (the `Date:` of its mail) print. No I/O, no time zones: both print UTC.

/// The `(year, month, day)` of `days` since 1970-01-01 (negative before it), by Howard
/// Hinnant's `civil_from_days`: exact for every day an `i128` of days can name whose year
/// fits as well.
pub fn civil_from_days(days: i128) -> (i128, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    // Both in range by construction: day 1..=31, month 1..=12.
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = (if mp < 10 { mp + 3 } else { mp - 9 }) as u32;
    let year = yoe + era * 400 + i128::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::civil_from_days;

    #[test]
    fn known_days_are_their_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(11_017), (2000, 3, 1));
        assert_eq!(civil_from_days(20_787), (2026, 11, 30));
        assert_eq!(civil_from_days(47_540), (2100, 2, 28));
        assert_eq!(civil_from_days(47_541), (2100, 3, 1));
    }

    #[test]
    fn consecutive_days_are_consecutive_dates() {
        let mut last = civil_from_days(-800_000);
        for days in -799_999..800_000 {
            let (year, month, day) = civil_from_days(days);
            let next = if (year, month) == (last.0, last.1) {
                day == last.2 + 1
            } else if year == last.0 {
                month == last.1 + 1 && day == 1
            } else {
                year == last.0 + 1 && (month, day) == (1, 1)
            };
            assert!(next, "{last:?} then {:?} at day {days}", (year, month, day));
            last = (year, month, day);
        }
    }
}
