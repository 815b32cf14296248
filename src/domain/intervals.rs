//! Half-open time intervals `[start, end)`, an open end meaning "still going", and their unions.

use chrono::{DateTime, Utc};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Interval {
    pub start: DateTime<Utc>,
    /// `None`: not ended.
    pub end: Option<DateTime<Utc>>,
}

impl Interval {
    pub fn new(start: DateTime<Utc>, end: Option<DateTime<Utc>>) -> Self {
        Self { start, end }
    }

    /// Holds no instant.
    pub fn is_empty(&self) -> bool {
        self.end.is_some_and(|end| end <= self.start)
    }

    pub fn contains(&self, at: DateTime<Utc>) -> bool {
        self.start <= at && self.end.is_none_or(|end| at < end)
    }

    /// Whether the interval holds the instants just before `at`, all the way up to it: the state
    /// "at the end" of a period that ends at `at`.
    pub fn holds_until(&self, at: DateTime<Utc>) -> bool {
        self.start < at && self.end.is_none_or(|end| end >= at)
    }

    /// The part that lies before `limit`, if any.
    #[must_use]
    pub fn cut_at(&self, limit: Option<DateTime<Utc>>) -> Self {
        let end = match (self.end, limit) {
            (Some(end), Some(limit)) => Some(end.min(limit)),
            (None, limit) => limit,
            (end, None) => end,
        };
        Self {
            start: self.start,
            end,
        }
    }

    /// The part within `[from, to)`.
    #[must_use]
    pub fn clip(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Self {
        Self {
            start: self.start.max(from),
            end: Some(self.end.map_or(to, |end| end.min(to))),
        }
    }
}

/// The union of intervals as the fewest disjoint, non-touching intervals, sorted by start.
pub fn union(intervals: impl IntoIterator<Item = Interval>) -> Vec<Interval> {
    let mut sorted: Vec<Interval> = intervals.into_iter().filter(|i| !i.is_empty()).collect();
    sorted.sort();
    let mut merged: Vec<Interval> = Vec::with_capacity(sorted.len());
    for next in sorted {
        match merged.last_mut() {
            Some(last) if last.end.is_none_or(|end| end >= next.start) => {
                last.end = match (last.end, next.end) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    _ => None,
                };
            }
            _ => merged.push(next),
        }
    }
    merged
}

/// Whether sorted, disjoint intervals hold the instants just before `at` (see
/// [`Interval::holds_until`]). Only the last interval starting before `at` can.
pub fn holds_until(merged: &[Interval], at: DateTime<Utc>) -> bool {
    let before = merged.partition_point(|i| i.start < at);
    before > 0 && merged[before - 1].holds_until(at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;
    use proptest::prelude::*;

    fn at(minutes: i64) -> DateTime<Utc> {
        DateTime::UNIX_EPOCH + Duration::minutes(minutes)
    }

    fn interval(start: i64, end: Option<i64>) -> Interval {
        Interval::new(at(start), end.map(at))
    }

    fn arb_interval() -> impl Strategy<Value = Interval> {
        (0_i64..200, proptest::option::weighted(0.8, 0_i64..60))
            .prop_map(|(s, len)| interval(s, len.map(|l| s + l)))
    }

    #[test]
    fn touching_intervals_merge_and_open_ends_absorb() {
        let merged = union([
            interval(0, Some(10)),
            interval(10, Some(20)),
            interval(30, None),
            interval(40, Some(50)),
        ]);
        assert_eq!(merged, [interval(0, Some(20)), interval(30, None)]);
    }

    #[test]
    fn holding_until_an_instant_includes_an_end_exactly_there() {
        let i = interval(0, Some(10));
        assert!(i.holds_until(at(10)));
        assert!(!i.holds_until(at(11)));
        assert!(!i.holds_until(at(0)));
        assert!(interval(5, None).holds_until(at(100)));
    }

    proptest! {
        #[test]
        fn the_union_holds_an_instant_exactly_when_some_input_does(
            inputs in proptest::collection::vec(arb_interval(), 0..12),
            probe in 0_i64..300,
        ) {
            let merged = union(inputs.clone());
            prop_assert_eq!(merged.iter().any(|i| i.contains(at(probe))), inputs.iter().any(|i| i.contains(at(probe))));
            prop_assert_eq!(holds_until(&merged, at(probe)), inputs.iter().any(|i| i.holds_until(at(probe))));
        }

        #[test]
        fn the_union_is_sorted_disjoint_and_order_independent(
            inputs in proptest::collection::vec(arb_interval(), 0..12),
        ) {
            let merged = union(inputs.clone());
            for pair in merged.windows(2) {
                prop_assert!(pair[0].end.is_some_and(|end| end < pair[1].start));
            }
            let mut reversed = inputs.clone();
            reversed.reverse();
            prop_assert_eq!(union(reversed), merged.clone());
            prop_assert_eq!(union(merged.clone()), merged.clone(), "idempotent");
            let doubled: Vec<Interval> = inputs.iter().chain(inputs.iter()).copied().collect();
            prop_assert_eq!(union(doubled), merged);
        }

        #[test]
        fn cutting_and_clipping_only_ever_shrink(i in arb_interval(), limit in 0_i64..300, probe in 0_i64..300) {
            let cut = i.cut_at(Some(at(limit)));
            prop_assert_eq!(cut.contains(at(probe)), i.contains(at(probe)) && probe < limit);
            let clipped = i.clip(at(50), at(150));
            prop_assert_eq!(clipped.contains(at(probe)), i.contains(at(probe)) && (50..150).contains(&probe));
        }
    }
}
