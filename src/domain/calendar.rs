//! Calendar days of a tenant: a day is the span between two local midnights in the tenant's time
//! zone, 23, 24 or 25 hours long around daylight-saving changes.

use chrono::{DateTime, Duration, NaiveDate, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;

/// The first instant of `day` in `tz`. Where midnight does not exist (a daylight-saving gap at
/// midnight), the day starts at the first local time that does.
pub fn start_of_day(tz: Tz, day: NaiveDate) -> DateTime<Utc> {
    let mut local = day.and_time(NaiveTime::MIN);
    // Gaps last at most a few hours; step forward minute by minute past one.
    for _ in 0..(24 * 60) {
        if let Some(instant) = tz.from_local_datetime(&local).earliest() {
            return instant.with_timezone(&Utc);
        }
        local += Duration::minutes(1);
    }
    // Unreachable for real zones: every day has local times.
    tz.from_utc_datetime(&day.and_time(NaiveTime::MIN))
        .with_timezone(&Utc)
}

/// The instant `day` ends: the start of the next day.
pub fn end_of_day(tz: Tz, day: NaiveDate) -> DateTime<Utc> {
    start_of_day(tz, day.succ_opt().unwrap_or(day))
}

/// The local calendar day of an instant.
pub fn day_of(tz: Tz, instant: DateTime<Utc>) -> NaiveDate {
    instant.with_timezone(&tz).date_naive()
}

/// Every day from `first` to `last`, inclusive.
pub fn days(first: NaiveDate, last: NaiveDate) -> impl Iterator<Item = NaiveDate> {
    first.iter_days().take_while(move |d| *d <= last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn day(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).expect("day")
    }

    #[test]
    fn days_around_daylight_saving_changes_have_23_and_25_hours() {
        let warsaw = chrono_tz::Europe::Warsaw;
        let hours = |d: NaiveDate| (end_of_day(warsaw, d) - start_of_day(warsaw, d)).num_hours();
        assert_eq!(hours(day(2026, 3, 29)), 23);
        assert_eq!(hours(day(2026, 10, 25)), 25);
        assert_eq!(hours(day(2026, 11, 22)), 24);
        assert_eq!(
            start_of_day(warsaw, day(2026, 11, 22)).to_rfc3339(),
            "2026-11-21T23:00:00+00:00"
        );
    }

    #[test]
    fn a_day_without_midnight_starts_at_its_first_local_time() {
        // Santiago moved clocks from 00:00 to 01:00 on 2022-09-11.
        let santiago = chrono_tz::America::Santiago;
        let start = start_of_day(santiago, day(2022, 9, 11));
        assert_eq!(day_of(santiago, start), day(2022, 9, 11));
        assert_eq!(
            start.with_timezone(&santiago).format("%H:%M").to_string(),
            "01:00"
        );
    }

    proptest! {
        #[test]
        fn every_day_starts_on_itself_and_ends_where_the_next_begins(offset in 0_i64..20_000, zone in 0_usize..4) {
            let tz = [chrono_tz::Europe::Warsaw, chrono_tz::America::New_York, chrono_tz::Australia::Lord_Howe, chrono_tz::America::Santiago][zone];
            let d = day(2000, 1, 1) + Duration::days(offset);
            let start = start_of_day(tz, d);
            let end = end_of_day(tz, d);
            prop_assert_eq!(day_of(tz, start), d);
            prop_assert_eq!(day_of(tz, end), d.succ_opt().expect("next"));
            prop_assert_eq!(day_of(tz, end - Duration::microseconds(1)), d);
            let hours = (end - start).num_minutes();
            prop_assert!((22 * 60..=26 * 60).contains(&hours), "{} minutes", hours);
        }
    }
}
