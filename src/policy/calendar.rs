//! Dates for decisions: the civil date in China Standard Time (ages are
//! computed on it) and deadlines in working days (Monday–Friday).
//! Public holidays are not modelled: a deadline may fall one holiday early.

const MS_PER_DAY: i64 = 86_400_000;
const CST_OFFSET_MS: i64 = 8 * 3_600_000;

/// (year, month, day) of `unix_ms` in UTC+8.
pub fn civil_date_cst(unix_ms: i64) -> (u16, u8, u8) {
    civil_from_days(unix_ms.saturating_add(CST_OFFSET_MS).div_euclid(MS_PER_DAY))
}

pub fn format_date((y, m, d): (u16, u8, u8)) -> String {
    format!("{y:04}-{m:02}-{d:02}")
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(days: i64) -> (u16, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    (y.clamp(0, 9999) as u16, m as u8, d as u8)
}

/// The end (24:00 CST) of the `working_days`-th working day after `unix_ms`.
pub fn working_days_after(unix_ms: i64, working_days: u32) -> i64 {
    let mut day = unix_ms.saturating_add(CST_OFFSET_MS).div_euclid(MS_PER_DAY);
    let mut left = working_days;
    while left > 0 {
        day += 1;
        // 1970-01-01 was a Thursday: day 0 → weekday 3 (Mon = 0).
        let weekday = (day + 3).rem_euclid(7);
        if weekday < 5 {
            left -= 1;
        }
    }
    (day + 1)
        .saturating_mul(MS_PER_DAY)
        .saturating_sub(CST_OFFSET_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Times come from log files too (replay, rebuild): any value is safe.
        #[test]
        fn dates_and_deadlines_never_panic(unix_ms in proptest::num::i64::ANY, days in 0u32..400) {
            let _ = civil_date_cst(unix_ms);
            let due = working_days_after(unix_ms, days);
            // Away from the saturating edge a deadline never precedes its start.
            if unix_ms < i64::MAX - 1_000 * MS_PER_DAY {
                proptest::prop_assert!(due >= unix_ms, "{unix_ms} + {days} working days = {due}");
            }
        }
    }

    #[test]
    fn civil_dates_in_china_standard_time() {
        assert_eq!(civil_date_cst(0), (1970, 1, 1));
        // 2026-11-25 16:00 UTC is already 2026-11-26 in Beijing.
        assert_eq!(civil_date_cst(1_795_622_400_000), (2026, 11, 26));
        assert_eq!(civil_date_cst(951_782_400_000), (2000, 2, 29));
        assert_eq!(format_date((2024, 5, 1)), "2024-05-01");
    }

    #[test]
    fn working_days_skip_weekends() {
        // Friday 2026-11-27 10:00 CST + 1 working day = end of Monday 11-30.
        let friday = 1_795_744_800_000;
        let due = working_days_after(friday, 1);
        assert_eq!(civil_date_cst(due - 1), (2026, 11, 30));
        assert_eq!(civil_date_cst(due), (2026, 12, 1));
        assert_eq!(
            working_days_after(friday, 0) % MS_PER_DAY,
            (MS_PER_DAY - CST_OFFSET_MS) % MS_PER_DAY
        );
    }
}
