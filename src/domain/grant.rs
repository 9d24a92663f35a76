//! Grants: budget periods, their budgets, the indirect (F&A) split and the carry-over policy.
//! Pure: no clock, no database.
//!
//! - **Periods** are `--periods` months long, anchored to the grant's start (like allocation
//!   schedules, so a grant starting on Jan 31 has periods starting Jan 31, Jul 31, …); the last
//!   one ends at the grant's end and may be short.
//! - **Budgets** default to an even split per month: each period's share of the award is its
//!   length in months (a short last month counts by its days) over the grant's length in
//!   months, so equal periods get equal budgets and a six-month tail half of a twelve-month
//!   period. Shares are rounded so that they add up to the award exactly.
//! - **Indirect costs**: every figure is a total of direct and indirect cost; `direct = total ÷
//!   (1 + rate)` rounded half away from zero to the micro-dollar, `indirect = total − direct`.
//! - **Carry-over**: what a linked account did not spend of a period's money either expires at
//!   the period's end (`none`), stays for the next period (`all`), or stays up to a percentage
//!   of the account's credit for the period (`capped:25`).

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, Months, TimeZone, Utc};
use rust_decimal::{Decimal, RoundingStrategy};

use super::money::{MoneyError, UsdMicros};

/// The most budget periods a grant may have.
pub const PERIODS_MAX: usize = 1000;

/// The largest indirect cost rate accepted (300 %); beyond it is almost surely a typo of a
/// percentage for a fraction.
pub const INDIRECT_RATE_MAX: Decimal = Decimal::from_parts(3, 0, 0, false, 0);

/// Why grant terms are refused; each names the flag to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    /// A flag's value is wrong.
    #[error("{flag}: {message}")]
    Invalid {
        /// The flag.
        flag: &'static str,
        /// What is wrong.
        message: String,
    },
    /// Arithmetic overflowed.
    #[error("amount out of range: {0}")]
    Money(#[from] MoneyError),
}

fn invalid(flag: &'static str, message: impl Into<String>) -> GrantError {
    GrantError::Invalid {
        flag,
        message: message.into(),
    }
}

/// What happens to a linked account's unspent money at the end of a period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CarryOver {
    /// It expires.
    None,
    /// It stays for the next period.
    All,
    /// It stays up to this percentage of the account's credit for the period; the rest expires.
    Capped(Decimal),
}

impl CarryOver {
    /// How much of `left` (unspent) stays, for an account credited `credited` for the period.
    pub fn carried(self, left: UsdMicros, credited: UsdMicros) -> Result<UsdMicros, MoneyError> {
        let left = left.max(UsdMicros::ZERO);
        Ok(match self {
            CarryOver::None => UsdMicros::ZERO,
            CarryOver::All => left,
            CarryOver::Capped(pct) => {
                let cap = credited.mul_decimal(pct / Decimal::ONE_HUNDRED)?;
                left.min(cap.max(UsdMicros::ZERO))
            }
        })
    }
}

impl fmt::Display for CarryOver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CarryOver::None => f.write_str("none"),
            CarryOver::All => f.write_str("all"),
            CarryOver::Capped(p) => write!(f, "capped:{}", p.normalize()),
        }
    }
}

impl FromStr for CarryOver {
    type Err = String;

    /// `none`, `all`, `capped:25`, or `25%`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().to_ascii_lowercase();
        let bad = || {
            format!("'{s}' is not a carry-over policy (use none, all, or a capped percentage like 25% or capped:25)")
        };
        match t.as_str() {
            "none" => Ok(CarryOver::None),
            "all" => Ok(CarryOver::All),
            _ => {
                let num = t
                    .strip_prefix("capped:")
                    .or_else(|| t.strip_suffix('%'))
                    .ok_or_else(bad)?;
                let pct = Decimal::from_str_exact(num.trim()).map_err(|_| bad())?;
                if pct < Decimal::ZERO || pct > Decimal::ONE_HUNDRED {
                    return Err(format!("carry-over cap {pct}% must be between 0 and 100"));
                }
                Ok(CarryOver::Capped(pct))
            }
        }
    }
}

/// Parses an indirect cost rate: a fraction (`0.30`) or a percentage (`30%`).
pub fn parse_indirect_rate(text: &str) -> Result<Decimal, GrantError> {
    let t = text.trim();
    let (num, scale) = match t.strip_suffix('%') {
        Some(n) => (n.trim(), Decimal::ONE_HUNDRED),
        None => (t, Decimal::ONE),
    };
    let rate = Decimal::from_str_exact(num).map_err(|_| {
        invalid(
            "--indirect",
            format!("'{text}' is not a rate (write 0.30 or 30%)"),
        )
    })? / scale;
    if rate < Decimal::ZERO || rate > INDIRECT_RATE_MAX {
        return Err(invalid(
            "--indirect",
            format!("rate {rate} must be between 0 and {INDIRECT_RATE_MAX} (0.30 means 30 %)"),
        ));
    }
    Ok(rate.normalize())
}

/// A total split into direct and indirect cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CostSplit {
    /// `total ÷ (1 + rate)`, rounded half away from zero.
    pub direct: UsdMicros,
    /// `total − direct`.
    pub indirect: UsdMicros,
}

/// Splits a total at an indirect rate.
pub fn split(total: UsdMicros, rate: Decimal) -> CostSplit {
    let direct = (Decimal::from(total.micros()) / (Decimal::ONE + rate))
        .round_dp_with_strategy(0, RoundingStrategy::MidpointAwayFromZero);
    let direct = UsdMicros::from_stored(i64::try_from(direct).unwrap_or(total.micros()));
    CostSplit {
        direct,
        indirect: UsdMicros::from_stored(total.micros() - direct.micros()),
    }
}

/// One budget period's dates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeriodDates {
    /// 1-based number.
    pub number: u32,
    /// Start (inclusive).
    pub start: DateTime<Utc>,
    /// End (exclusive).
    pub end: DateTime<Utc>,
}

/// Generates the budget periods of a grant.
pub fn periods(
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    months: u32,
) -> Result<Vec<PeriodDates>, GrantError> {
    if end <= start {
        return Err(invalid("--end", "the grant must end after it starts"));
    }
    if !(1..=120).contains(&months) {
        return Err(invalid(
            "--periods",
            format!("{months} is not a period length in months (1 to 120)"),
        ));
    }
    let mut out = Vec::new();
    let mut k = 0u32;
    loop {
        let s = start
            .checked_add_months(Months::new(k * months))
            .ok_or_else(|| invalid("--end", "date out of range"))?;
        if s >= end {
            break;
        }
        let e = start
            .checked_add_months(Months::new((k + 1) * months))
            .unwrap_or(end)
            .min(end);
        out.push(PeriodDates {
            number: k + 1,
            start: s,
            end: e,
        });
        k += 1;
        if out.len() > PERIODS_MAX {
            return Err(invalid(
                "--periods",
                format!("the grant would have more than {PERIODS_MAX} periods"),
            ));
        }
    }
    Ok(out)
}

/// Length of `[start, end)` in months: whole months from `start`, plus the rest of the last
/// month as a fraction of that month's days.
pub fn months_between(start: DateTime<Utc>, end: DateTime<Utc>) -> Decimal {
    let mut whole = 0u32;
    while let Some(next) = start.checked_add_months(Months::new(whole + 1)) {
        if next > end {
            break;
        }
        whole += 1;
    }
    let base = start
        .checked_add_months(Months::new(whole))
        .unwrap_or(start);
    let rest = (end - base).num_seconds();
    if rest <= 0 {
        return Decimal::from(whole);
    }
    let next = base.checked_add_months(Months::new(1)).unwrap_or(base);
    let month_secs = (next - base).num_seconds().max(1);
    Decimal::from(whole) + Decimal::from(rest) / Decimal::from(month_secs)
}

/// Splits the award over periods, evenly per month; the shares add up to `amount` exactly.
pub fn even_budgets(amount: UsdMicros, periods: &[PeriodDates]) -> Vec<UsdMicros> {
    let weights: Vec<Decimal> = periods
        .iter()
        .map(|p| months_between(p.start, p.end))
        .collect();
    let total: Decimal = weights.iter().copied().sum();
    let mut out = Vec::with_capacity(periods.len());
    let mut cum_w = Decimal::ZERO;
    let mut given = 0i64;
    for (i, w) in weights.iter().enumerate() {
        cum_w += *w;
        let upto = if i + 1 == weights.len() || total.is_zero() {
            amount.micros()
        } else {
            i64::try_from(
                (Decimal::from(amount.micros()) * cum_w / total)
                    .round_dp_with_strategy(0, RoundingStrategy::MidpointAwayFromZero),
            )
            .unwrap_or(amount.micros())
        };
        out.push(UsdMicros::from_stored(upto - given));
        given = upto;
    }
    out
}

/// A share of an amount: `amount × percent ÷ 100`, rounded half away from zero.
pub fn share_of(amount: UsdMicros, percent: Decimal) -> Result<UsdMicros, MoneyError> {
    amount.mul_decimal(percent / Decimal::ONE_HUNDRED)
}

/// Parses an account's share of a grant, a percentage in (0, 100].
pub fn parse_share(text: &str) -> Result<Decimal, GrantError> {
    let t = text.trim();
    let num = t.strip_suffix('%').unwrap_or(t).trim();
    let p = Decimal::from_str_exact(num).map_err(|_| {
        invalid(
            "--share",
            format!("'{text}' is not a percentage like 60 or 60%"),
        )
    })?;
    if p <= Decimal::ZERO || p > Decimal::ONE_HUNDRED {
        return Err(invalid(
            "--share",
            format!("{p}% must be more than 0 and at most 100"),
        ));
    }
    Ok(p.normalize())
}

/// What one linked account's period money came to at the period's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeriodClose {
    /// Credited + carried in − spent, when positive: the account's unspent money of the period.
    pub left: UsdMicros,
    /// Stays on the account for the next period: the policy's carry-over, plus money held for
    /// jobs still running (it will be charged when they end, so it is never taken away).
    pub carried: UsdMicros,
    /// Taken back (a negative adjustment): unspent, not carried, not held.
    pub expired: UsdMicros,
}

/// Closes one account's period. `available` is the account's money not spent or held
/// (credited − charged − held, overdraft not counted), so nothing is expired that is held for a
/// running job or that the account does not have.
pub fn close_period(
    credited: UsdMicros,
    carry_in: UsdMicros,
    spent: UsdMicros,
    available: UsdMicros,
    policy: CarryOver,
    last_period: bool,
) -> Result<PeriodClose, MoneyError> {
    let left = credited
        .checked_add(carry_in)?
        .checked_sub(spent)?
        .max(UsdMicros::ZERO);
    let keep = if last_period {
        UsdMicros::ZERO
    } else {
        policy.carried(left, credited)?
    };
    let expired = left
        .checked_sub(keep)?
        .min(available.max(UsdMicros::ZERO))
        .max(UsdMicros::ZERO);
    Ok(PeriodClose {
        left,
        carried: left.checked_sub(expired)?,
        expired,
    })
}

/// Midnight UTC of a date's day.
pub fn day_start(t: DateTime<Utc>) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(t.year(), t.month(), t.day(), 0, 0, 0)
        .single()
        .unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(y: i32, m: u32, d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, 0, 0, 0).unwrap()
    }

    fn usd(s: &str) -> UsdMicros {
        UsdMicros::parse(s).unwrap()
    }

    #[test]
    fn the_seed_grants_get_the_periods_an_administrator_expects() {
        // NSF: 3 years of 12-month periods, $250,000 each.
        let p = periods(day(2025, 1, 1), day(2028, 1, 1), 12).unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!((p[2].start, p[2].end), (day(2027, 1, 1), day(2028, 1, 1)));
        assert_eq!(even_budgets(usd("750000"), &p), vec![usd("250000"); 3]);
        // NIH: 5 years from July.
        let p = periods(day(2025, 7, 1), day(2030, 7, 1), 12).unwrap();
        assert_eq!(p.len(), 5);
        assert_eq!(even_budgets(usd("1250000"), &p), vec![usd("250000"); 5]);
        // DOE: 2 years of 6-month periods.
        let p = periods(day(2025, 10, 1), day(2027, 10, 1), 6).unwrap();
        assert_eq!(p.len(), 4);
        assert_eq!(p[1].start, day(2026, 4, 1));
        assert_eq!(even_budgets(usd("500000"), &p), vec![usd("125000"); 4]);
    }

    #[test]
    fn a_short_last_period_gets_its_share_per_month() {
        let p = periods(day(2025, 1, 1), day(2027, 7, 1), 12).unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p[2].end, day(2027, 7, 1));
        let b = even_budgets(usd("300000"), &p);
        assert_eq!(b, [usd("120000"), usd("120000"), usd("60000")]);
        // Uneven amounts still add up to the award exactly.
        let b = even_budgets(
            usd("100000.01"),
            &periods(day(2025, 1, 1), day(2028, 1, 1), 12).unwrap(),
        );
        assert_eq!(
            b.iter().map(|m| m.micros()).sum::<i64>(),
            usd("100000.01").micros()
        );
        assert_eq!(b[0], usd("33333.336667"));
    }

    #[test]
    fn month_end_grants_are_anchored() {
        let p = periods(day(2024, 1, 31), day(2024, 5, 1), 1).unwrap();
        let starts: Vec<_> = p.iter().map(|x| x.start).collect();
        assert_eq!(
            starts,
            [
                day(2024, 1, 31),
                day(2024, 2, 29),
                day(2024, 3, 31),
                day(2024, 4, 30)
            ]
        );
        assert_eq!(p[0].end, day(2024, 2, 29));
    }

    #[test]
    fn indirect_split_follows_the_seed() {
        let rate = parse_indirect_rate("0.30").unwrap();
        let s = split(usd("250000"), rate);
        assert_eq!(s.direct, usd("192307.692308"));
        assert_eq!(s.indirect, usd("57692.307692"));
        assert_eq!(parse_indirect_rate("30%").unwrap(), rate);
        assert_eq!(split(usd("100"), Decimal::ZERO).indirect, UsdMicros::ZERO);
        assert!(
            parse_indirect_rate("30").is_err(),
            "30 is a percentage typed as a fraction"
        );
        assert!(parse_indirect_rate("-0.1").is_err());
    }

    #[test]
    fn carry_over_policies() {
        let none: CarryOver = "none".parse().unwrap();
        let all: CarryOver = "all".parse().unwrap();
        let capped: CarryOver = "25%".parse().unwrap();
        assert_eq!("capped:25".parse::<CarryOver>().unwrap(), capped);
        assert_eq!(capped.to_string(), "capped:25");
        assert!("some".parse::<CarryOver>().is_err());
        assert!("150%".parse::<CarryOver>().is_err());
        let c = |p, spent, avail| {
            close_period(
                usd("1000"),
                UsdMicros::ZERO,
                usd(spent),
                usd(avail),
                p,
                false,
            )
            .unwrap()
        };
        assert_eq!(
            c(none, "600", "400"),
            PeriodClose {
                left: usd("400"),
                carried: UsdMicros::ZERO,
                expired: usd("400")
            }
        );
        assert_eq!(c(all, "600", "400").expired, UsdMicros::ZERO);
        assert_eq!(
            c(capped, "600", "400"),
            PeriodClose {
                left: usd("400"),
                carried: usd("250"),
                expired: usd("150")
            }
        );
        // Money held for running jobs is never expired.
        assert_eq!(
            c(none, "600", "100"),
            PeriodClose {
                left: usd("400"),
                carried: usd("300"),
                expired: usd("100")
            }
        );
        // Overspent: nothing left, nothing expired.
        assert_eq!(c(none, "1200", "0").left, UsdMicros::ZERO);
        // The last period carries nothing, whatever the policy.
        let last = close_period(
            usd("1000"),
            UsdMicros::ZERO,
            usd("600"),
            usd("400"),
            all,
            true,
        )
        .unwrap();
        assert_eq!(last.expired, usd("400"));
    }

    #[test]
    fn shares() {
        assert_eq!(parse_share("60%").unwrap(), Decimal::from(60));
        assert!(parse_share("0").is_err());
        assert!(parse_share("101").is_err());
        assert_eq!(
            share_of(usd("250000"), Decimal::from(60)).unwrap(),
            usd("150000")
        );
    }
}
