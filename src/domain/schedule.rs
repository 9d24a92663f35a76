//! Allocation schedules: money credited to an account at regular periods, anchored to the
//! schedule's start so that months of different lengths never make the dates drift.
//!
//! A monthly schedule starting on Jan 31 is due on Jan 31, Feb 28 (Feb 29 in a leap year),
//! Mar 31, Apr 30, …: period `k` is always `start + k months`, computed from the start, never
//! from the previous due date. Each period credits `amount`, the last one only what is left of
//! `total`; nothing is due on or after the (exclusive) end. Pure: no clock, no database.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Duration, Months, Utc};

use super::money::UsdMicros;

/// The most periods one schedule may have (about 270 years of daily credits): a bound on the
/// work one schedule can ask of a timer run.
pub const PERIODS_MAX: u32 = 100_000;

/// How often a schedule credits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Frequency {
    /// Every day.
    Daily,
    /// Every 7 days.
    Weekly,
    /// Every calendar month, on the start's day (or the month's last day).
    Monthly,
    /// Every 3 calendar months.
    Quarterly,
    /// Every 12 calendar months.
    Yearly,
}

impl Frequency {
    /// Every frequency.
    pub const ALL: [Frequency; 5] = [
        Frequency::Daily,
        Frequency::Weekly,
        Frequency::Monthly,
        Frequency::Quarterly,
        Frequency::Yearly,
    ];

    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Frequency::Daily => "daily",
            Frequency::Weekly => "weekly",
            Frequency::Monthly => "monthly",
            Frequency::Quarterly => "quarterly",
            Frequency::Yearly => "yearly",
        }
    }

    /// The due time of period `k` of a schedule starting at `start`.
    pub fn nth(self, start: DateTime<Utc>, k: u32) -> Option<DateTime<Utc>> {
        let months = |n: u32| start.checked_add_months(Months::new(n));
        match self {
            Frequency::Daily => start.checked_add_signed(Duration::days(i64::from(k))),
            Frequency::Weekly => start.checked_add_signed(Duration::weeks(i64::from(k))),
            Frequency::Monthly => months(k),
            Frequency::Quarterly => months(k.checked_mul(3)?),
            Frequency::Yearly => months(k.checked_mul(12)?),
        }
    }
}

impl fmt::Display for Frequency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Frequency {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        Frequency::ALL
            .into_iter()
            .find(|f| f.as_str() == lower)
            .ok_or_else(|| {
                format!("unknown allocation frequency '{s}' (expected daily, weekly, monthly, quarterly or yearly)")
            })
    }
}

/// Why a schedule is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// The amount is zero or negative.
    #[error("--allocation-amount: the amount per period must be greater than zero")]
    Amount,
    /// The total is zero or negative.
    #[error("--total-budget: the total must be greater than zero")]
    Total,
    /// One period would credit more than the total.
    #[error("--allocation-amount: ${amount} per period is more than the total budget of ${total}")]
    AmountAboveTotal {
        /// Per period.
        amount: UsdMicros,
        /// Total.
        total: UsdMicros,
    },
    /// The end is not after the start.
    #[error("--end: the schedule must end after it starts")]
    Dates,
    /// Too many periods.
    #[error("--allocation-frequency: the schedule would have more than {PERIODS_MAX} periods")]
    TooLong,
}

/// A schedule's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// First due time (the anchor).
    pub start: DateTime<Utc>,
    /// Nothing is due at or after this instant.
    pub end: DateTime<Utc>,
    /// Credited per period.
    pub amount: UsdMicros,
    /// Never credited beyond this in total.
    pub total: UsdMicros,
    /// How often.
    pub frequency: Frequency,
}

impl Schedule {
    /// Validates terms.
    pub fn new(
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        amount: UsdMicros,
        total: UsdMicros,
        frequency: Frequency,
    ) -> Result<Schedule, ScheduleError> {
        if amount.micros() <= 0 {
            return Err(ScheduleError::Amount);
        }
        if total.micros() <= 0 {
            return Err(ScheduleError::Total);
        }
        if amount > total {
            return Err(ScheduleError::AmountAboveTotal { amount, total });
        }
        if end <= start {
            return Err(ScheduleError::Dates);
        }
        let s = Schedule {
            start,
            end,
            amount,
            total,
            frequency,
        };
        if s.due(PERIODS_MAX).is_some() {
            return Err(ScheduleError::TooLong);
        }
        Ok(s)
    }

    /// When period `k` is due, or `None` when it would fall on or after the end.
    pub fn due(&self, k: u32) -> Option<DateTime<Utc>> {
        self.frequency.nth(self.start, k).filter(|d| *d < self.end)
    }

    /// The end of period `k`'s span: the next due time, or the schedule's end.
    pub fn span_end(&self, k: u32) -> DateTime<Utc> {
        k.checked_add(1)
            .and_then(|n| self.due(n))
            .unwrap_or(self.end)
    }

    /// What period `k` credits when `credited` has been credited before it: the amount, or what
    /// is left of the total (zero once it is reached).
    pub fn amount_after(&self, credited: UsdMicros) -> UsdMicros {
        let left = self
            .total
            .checked_sub(credited)
            .unwrap_or(UsdMicros::ZERO)
            .max(UsdMicros::ZERO);
        self.amount.min(left)
    }

    /// Every period with its due time and amount, if none were skipped: what the schedule
    /// promises. Ends at the end date or when the total is reached.
    pub fn planned(&self) -> Vec<(u32, DateTime<Utc>, UsdMicros)> {
        let mut out = Vec::new();
        let mut credited = UsdMicros::ZERO;
        let mut k = 0;
        while let Some(d) = self.due(k) {
            let a = self.amount_after(credited);
            if a.is_zero() {
                break;
            }
            credited = credited.checked_add(a).unwrap_or(self.total);
            out.push((k, d, a));
            k += 1;
        }
        out
    }
}

/// A pause of a schedule: periods due in `[paused_at, resumed_at)` are skipped, unless the
/// resume asked to catch up (then they are credited at the resume).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pause {
    /// Start of the pause.
    pub paused_at: DateTime<Utc>,
    /// End of the pause, `None` while it lasts.
    pub resumed_at: Option<DateTime<Utc>>,
    /// Whether the periods due during the pause are credited after all.
    pub catch_up: bool,
}

/// What to do with one period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Credit `amount`, effective at `effective_at` (the due time, or the resume of a pause
    /// that is caught up).
    Credit {
        /// Period index.
        period: u32,
        /// Due time.
        due: DateTime<Utc>,
        /// When the credit takes effect.
        effective_at: DateTime<Utc>,
        /// Amount.
        amount: UsdMicros,
    },
    /// The period fell into a pause that was not caught up: nothing is credited, ever.
    Skip {
        /// Period index.
        period: u32,
        /// Due time.
        due: DateTime<Utc>,
    },
}

/// The decisions of one run for one schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// Periods decided, in order.
    pub actions: Vec<Action>,
    /// The first period not decided yet.
    pub next_period: u32,
    /// When that period is due (`None`: nothing more is ever due).
    pub next_due: Option<DateTime<Utc>>,
    /// The schedule has nothing more to credit (total reached or end passed).
    pub finished: bool,
    /// Waiting on a pause that has not been resumed.
    pub paused: bool,
}

/// Decides every period from `next_period` that is due at or before `as_of`: all missed
/// periods at once, each exactly once, never past the total or the end.
pub fn decide(
    s: &Schedule,
    next_period: u32,
    credited: UsdMicros,
    pauses: &[Pause],
    as_of: DateTime<Utc>,
) -> Due {
    let mut actions = Vec::new();
    let mut credited = credited;
    let mut k = next_period;
    let mut paused = false;
    loop {
        if s.amount_after(credited).is_zero() {
            return Due {
                actions,
                next_period: k,
                next_due: None,
                finished: true,
                paused: false,
            };
        }
        let Some(due) = s.due(k) else {
            return Due {
                actions,
                next_period: k,
                next_due: None,
                finished: true,
                paused: false,
            };
        };
        if due > as_of {
            break;
        }
        let pause = pauses
            .iter()
            .find(|p| p.paused_at <= due && p.resumed_at.is_none_or(|r| due < r));
        match pause {
            Some(p) if p.resumed_at.is_none() => {
                paused = true;
                break;
            }
            Some(p) if !p.catch_up => actions.push(Action::Skip { period: k, due }),
            Some(p) => {
                let resumed = p.resumed_at.unwrap_or(due);
                let amount = s.amount_after(credited);
                credited = credited.checked_add(amount).unwrap_or(s.total);
                actions.push(Action::Credit {
                    period: k,
                    due,
                    effective_at: resumed.max(due),
                    amount,
                });
            }
            None => {
                let amount = s.amount_after(credited);
                credited = credited.checked_add(amount).unwrap_or(s.total);
                actions.push(Action::Credit {
                    period: k,
                    due,
                    effective_at: due,
                    amount,
                });
            }
        }
        k += 1;
    }
    Due {
        actions,
        next_period: k,
        next_due: s.due(k),
        finished: false,
        paused,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn day(y: i32, m: u32, d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, 0, 0, 0).unwrap()
    }

    fn usd(n: i64) -> UsdMicros {
        UsdMicros::from_usd(n).unwrap()
    }

    fn sched(
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        amount: i64,
        total: i64,
        f: Frequency,
    ) -> Schedule {
        Schedule::new(start, end, usd(amount), usd(total), f).unwrap()
    }

    #[test]
    fn month_ends_do_not_drift() {
        let s = sched(
            day(2024, 1, 31),
            day(2025, 1, 1),
            100,
            1200,
            Frequency::Monthly,
        );
        let dates: Vec<String> = (0..5)
            .map(|k| s.due(k).unwrap().format("%Y-%m-%d").to_string())
            .collect();
        assert_eq!(
            dates,
            [
                "2024-01-31",
                "2024-02-29",
                "2024-03-31",
                "2024-04-30",
                "2024-05-31"
            ]
        );
        let s = sched(
            day(2025, 1, 31),
            day(2026, 1, 1),
            100,
            1200,
            Frequency::Monthly,
        );
        assert_eq!(s.due(1).unwrap(), day(2025, 2, 28));
        assert_eq!(s.due(2).unwrap(), day(2025, 3, 31));
    }

    #[test]
    fn the_seed_examples_credit_what_an_administrator_expects() {
        // $1200 a year at $100 a month: 12 credits, Jan 1 to Dec 1.
        let s = sched(
            day(2025, 1, 1),
            day(2026, 1, 1),
            100,
            1200,
            Frequency::Monthly,
        );
        let p = s.planned();
        assert_eq!(p.len(), 12);
        assert_eq!(p[11].1, day(2025, 12, 1));
        // $600 at $100 a month over a year: the total is reached after six credits.
        let s = sched(
            day(2025, 1, 1),
            day(2026, 1, 1),
            100,
            600,
            Frequency::Monthly,
        );
        assert_eq!(s.planned().len(), 6);
        // $520 at $10 a week: Dec 31 would be a 53rd credit, but the total stops at 52.
        let s = sched(day(2025, 1, 1), day(2026, 1, 1), 10, 520, Frequency::Weekly);
        let p = s.planned();
        assert_eq!(p.len(), 52);
        assert_eq!(p[51].1, day(2025, 12, 24));
        assert!(s.due(52).is_some(), "Dec 31 is inside the end date");
        // $4000 at $1000 a quarter: Jan, Apr, Jul, Oct.
        let s = sched(
            day(2025, 1, 1),
            day(2026, 1, 1),
            1000,
            4000,
            Frequency::Quarterly,
        );
        let dates: Vec<_> = s.planned().iter().map(|p| p.1).collect();
        assert_eq!(
            dates,
            [
                day(2025, 1, 1),
                day(2025, 4, 1),
                day(2025, 7, 1),
                day(2025, 10, 1)
            ]
        );
    }

    #[test]
    fn the_last_credit_is_what_is_left_of_the_total() {
        let s = sched(
            day(2025, 1, 1),
            day(2026, 1, 1),
            100,
            250,
            Frequency::Monthly,
        );
        let amounts: Vec<i64> = s.planned().iter().map(|p| p.2.micros()).collect();
        assert_eq!(amounts, [100_000_000, 100_000_000, 50_000_000]);
    }

    #[test]
    fn catch_up_decides_every_missed_period_once() {
        let s = sched(
            day(2025, 1, 1),
            day(2026, 1, 1),
            100,
            1200,
            Frequency::Monthly,
        );
        let d = decide(&s, 0, UsdMicros::ZERO, &[], day(2025, 3, 15));
        assert_eq!(d.actions.len(), 3);
        assert_eq!(d.next_period, 3);
        assert_eq!(d.next_due, Some(day(2025, 4, 1)));
        // A second run at the same time decides nothing more.
        let again = decide(&s, d.next_period, usd(300), &[], day(2025, 3, 15));
        assert!(again.actions.is_empty());
        let all = decide(&s, 0, UsdMicros::ZERO, &[], day(2030, 1, 1));
        assert_eq!(all.actions.len(), 12);
        assert!(all.finished);
    }

    #[test]
    fn pauses_skip_unless_caught_up() {
        let s = sched(
            day(2025, 1, 1),
            day(2026, 1, 1),
            100,
            1200,
            Frequency::Monthly,
        );
        let open = [Pause {
            paused_at: day(2025, 1, 15),
            resumed_at: None,
            catch_up: false,
        }];
        let d = decide(&s, 0, UsdMicros::ZERO, &open, day(2025, 4, 15));
        assert_eq!(d.actions.len(), 1, "only January was due before the pause");
        assert!(d.paused);
        assert_eq!(d.next_period, 1);
        let skipped = [Pause {
            resumed_at: Some(day(2025, 3, 10)),
            ..open[0]
        }];
        let d = decide(&s, 1, usd(100), &skipped, day(2025, 4, 15));
        assert_eq!(
            d.actions,
            [
                Action::Skip {
                    period: 1,
                    due: day(2025, 2, 1)
                },
                Action::Skip {
                    period: 2,
                    due: day(2025, 3, 1)
                },
                Action::Credit {
                    period: 3,
                    due: day(2025, 4, 1),
                    effective_at: day(2025, 4, 1),
                    amount: usd(100)
                },
            ]
        );
        let caught = [Pause {
            catch_up: true,
            ..skipped[0]
        }];
        let d = decide(&s, 1, usd(100), &caught, day(2025, 3, 10));
        assert_eq!(
            d.actions,
            [
                Action::Credit {
                    period: 1,
                    due: day(2025, 2, 1),
                    effective_at: day(2025, 3, 10),
                    amount: usd(100)
                },
                Action::Credit {
                    period: 2,
                    due: day(2025, 3, 1),
                    effective_at: day(2025, 3, 10),
                    amount: usd(100)
                },
            ]
        );
    }

    #[test]
    fn bad_terms_name_the_flag() {
        let e = Schedule::new(
            day(2025, 1, 1),
            day(2026, 1, 1),
            usd(700),
            usd(600),
            Frequency::Monthly,
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("--allocation-amount"), "{e}");
        assert_eq!(
            Schedule::new(
                day(2025, 1, 1),
                day(2025, 1, 1),
                usd(1),
                usd(6),
                Frequency::Daily
            ),
            Err(ScheduleError::Dates)
        );
        assert!("fortnightly".parse::<Frequency>().is_err());
        assert_eq!("Monthly".parse::<Frequency>(), Ok(Frequency::Monthly));
    }

    fn frequency() -> impl Strategy<Value = Frequency> {
        prop::sample::select(Frequency::ALL.to_vec())
    }

    proptest! {
        #[test]
        fn periods_are_anchored_increasing_and_bounded(
            y in 2000i32..2100, m in 1u32..=12, d in 1u32..=31,
            f in frequency(), years in 1i64..6, amount in 1i64..500, total in 1i64..20_000,
        ) {
            let Some(start) = Utc.with_ymd_and_hms(y, m, d.min(28), 0, 0, 0).single() else { return Ok(()) };
            let start = if d > 28 {
                // Month-end starts: the last valid day of the month at or before `d`.
                (0..4).find_map(|back| Utc.with_ymd_and_hms(y, m, d - back, 0, 0, 0).single()).unwrap()
            } else { start };
            let end = start + Duration::days(365 * years);
            let amount = usd(amount);
            let total = usd(total).max(amount);
            let s = Schedule::new(start, end, amount, total, f).unwrap();
            let planned = s.planned();
            let mut sum = UsdMicros::ZERO;
            let mut prev: Option<DateTime<Utc>> = None;
            for (k, due, a) in &planned {
                prop_assert!(*due >= start && *due < end);
                prop_assert_eq!(Some(*due), f.nth(start, *k), "period k is start + k steps");
                if let Some(p) = prev { prop_assert!(*due > p); }
                if matches!(f, Frequency::Monthly | Frequency::Quarterly | Frequency::Yearly) {
                    use chrono::Datelike;
                    let last = (28..=31).rev().find(|dd| due.with_day(*dd).is_some()).unwrap();
                    prop_assert_eq!(due.day(), start.day().min(last), "anchored to the start day");
                }
                prop_assert!(a.micros() > 0 && *a <= amount);
                sum = sum.checked_add(*a).unwrap();
                prev = Some(*due);
            }
            prop_assert!(sum <= total);
            // Either the total was reached or no further period fits before the end.
            let next = planned.len() as u32;
            prop_assert!(sum == total || s.due(next).is_none());
            // Deciding in several runs gives the same credits as in one.
            let once = decide(&s, 0, UsdMicros::ZERO, &[], end);
            let mut k = 0; let mut credited = UsdMicros::ZERO; let mut pieces = Vec::new();
            let mut t = start;
            while t < end + Duration::days(40) {
                let d = decide(&s, k, credited, &[], t);
                for a in &d.actions {
                    if let Action::Credit { amount, .. } = a { credited = credited.checked_add(*amount).unwrap(); }
                }
                pieces.extend(d.actions);
                k = d.next_period;
                t += Duration::days(37);
            }
            prop_assert_eq!(once.actions, pieces);
        }
    }
}
