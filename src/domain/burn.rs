//! Burn-rate analytics: how fast money is spent against the plan, a health score, and a
//! projection. Pure: every input is a value (the database layer gathers them, from the journal
//! or from daily snapshots), and "now" is `as_of`.
//!
//! Money stays integer micro-dollars; ratios, percentages and fractional days are exact
//! decimals (`rust_decimal`), and a computed amount is rounded half away from zero to the
//! micro-dollar. The formulas, in words (README.md has a worked example):
//!
//! - **Spend** is net charges (charges minus refunds) by effective time. Credits are not spend.
//! - **Expected spend** comes from the plan: every amount of money the account was given is
//!   meant to be spent evenly over its own span — an allocation over its period (until the next
//!   allocation), a grant period's credit (plus what was carried into it) over the budget
//!   period, and any other budget (initial budget, deposits, adjustments) over the account's
//!   whole active period. Expected spend between two instants is the sum over the spans of
//!   `amount × overlap ÷ span length`.
//! - **Window**: the N whole days before `as_of`'s day plus that day so far (`--period`,
//!   default 30 days; exactly N days at midnight). Only the part of the window inside the
//!   horizon (when spending is planned) counts: `active days`.
//! - **Daily rate** = window spend ÷ active days; **expected daily rate** = window expected ÷
//!   active days; the **rolling 7- and 30-day rates** are the spend of the last 7 (30) days ÷ 7
//!   (30), with the same whole-day windows.
//! - **Variance %** = (window spend − window expected) ÷ window expected × 100, rounded to two
//!   decimals. Undefined (no verdict) while the window holds fewer than `min_active_days` of
//!   the horizon, or when nothing was expected and nothing spent.
//! - **Burn status**: OVERSPENDING above +`on_track_percent` (20), UNDERSPENDING below −20,
//!   else ON_TRACK. Spending with nothing expected is OVERSPENDING.
//! - **Health score** = 100 − overspend % − half the underspend % × the grace weight − 33⅓ ×
//!   the share of the rest of the budget period that the money is projected not to last (0
//!   when it lasts); clamped to 0…100 and rounded half away from zero. The grace weight is the
//!   days since the budget period started ÷ `underspend_grace_days` (90), at most 1: a fresh
//!   period's money is not alarming for being unspent yet. Bands: HEALTHY ≥ 80, CONCERN ≥ 60,
//!   WARNING ≥ 40, else CRITICAL.
//! - **Projection** at the daily rate: the **depletion date** is when the money left (credited −
//!   charged − held, plus money still to come: future allocations or grant periods, each on its
//!   date) reaches zero; **projected spend at period end** = period spend + rate × days left in
//!   the period; at the **horizon end** (grant or account end) likewise; **overrun** = projected
//!   − budget (negative: an underrun).
//! - **Risk level**: CRITICAL when the money is already gone with time left, runs out within
//!   `critical_days` (14) before the period ends, or the period is projected to overrun its
//!   budget by more than 50 %; HIGH when it runs out before the period ends or the period is
//!   projected to overrun; MEDIUM when the burn status is not ON_TRACK or the horizon is
//!   projected to overrun; else LOW.

use std::fmt;

use chrono::{DateTime, Duration, Utc};
use rust_decimal::{Decimal, RoundingStrategy};

use super::money::UsdMicros;

/// Seconds in a day, the unit of every rate.
const DAY_SECS: i64 = 86_400;

/// Money meant to be spent evenly over `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Start of the span.
    pub start: DateTime<Utc>,
    /// End of the span (exclusive).
    pub end: DateTime<Utc>,
    /// The money.
    pub amount: UsdMicros,
}

/// The plan an account (or grant) is measured against: the spans of the money it was given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Every span.
    pub segments: Vec<Segment>,
}

fn overlap_secs(a: DateTime<Utc>, b: DateTime<Utc>, s: DateTime<Utc>, e: DateTime<Utc>) -> i64 {
    let lo = a.max(s);
    let hi = b.min(e);
    (hi - lo).num_seconds().max(0)
}

/// An exact amount of micro-dollars rounded half away from zero.
pub fn round_micros(d: Decimal) -> UsdMicros {
    let r = d.round_dp_with_strategy(0, RoundingStrategy::MidpointAwayFromZero);
    UsdMicros::from_stored(i64::try_from(r).unwrap_or(if r.is_sign_negative() {
        i64::MIN
    } else {
        i64::MAX
    }))
}

/// Days as an exact decimal.
pub fn days(d: Duration) -> Decimal {
    Decimal::from(d.num_seconds()) / Decimal::from(DAY_SECS)
}

impl Plan {
    /// Expected spend in `[a, b)`, exact (micro-dollars as a decimal).
    pub fn expected_between(&self, a: DateTime<Utc>, b: DateTime<Utc>) -> Decimal {
        self.segments
            .iter()
            .filter(|s| s.end > s.start && !s.amount.is_zero())
            .map(|s| {
                let len = (s.end - s.start).num_seconds();
                Decimal::from(s.amount.micros()) * Decimal::from(overlap_secs(a, b, s.start, s.end))
                    / Decimal::from(len)
            })
            .sum()
    }
}

/// A span of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// Start (inclusive).
    pub start: DateTime<Utc>,
    /// End (exclusive).
    pub end: DateTime<Utc>,
}

/// Everything the analysis needs, as of one instant.
#[derive(Debug, Clone)]
pub struct BurnInputs {
    /// Now.
    pub as_of: DateTime<Utc>,
    /// Money credited by `as_of`.
    pub credited: UsdMicros,
    /// Net charged by `as_of`.
    pub charged: UsdMicros,
    /// Held at `as_of`.
    pub held: UsdMicros,
    /// The window's length (7d, 30d, 90d, 6m, 1y).
    pub window: Duration,
    /// Spend in `[as_of − window, as_of)`.
    pub window_spent: UsdMicros,
    /// Spend in the last 7 days.
    pub spent_7d: UsdMicros,
    /// Spend in the last 30 days.
    pub spent_30d: UsdMicros,
    /// The span of the 7-day figure (7 days, plus the part of `as_of`'s day that has passed).
    pub span_7d: Duration,
    /// The span of the 30-day figure.
    pub span_30d: Duration,
    /// The budget period: a grant's current period, else the account's active period.
    pub period: Span,
    /// Money for the period.
    pub period_budget: UsdMicros,
    /// Spend since the period started.
    pub period_spent: UsdMicros,
    /// The horizon: the grant's or the account's whole life.
    pub horizon: Span,
    /// Money for the whole horizon (given and still to come).
    pub horizon_budget: UsdMicros,
    /// Spend over the horizon so far.
    pub horizon_spent: UsdMicros,
    /// What the money given so far was meant for.
    pub plan: Plan,
    /// Money still to come, by date (future allocations, grant periods).
    pub future_money: Vec<(DateTime<Utc>, UsdMicros)>,
}

/// Thresholds of the analysis (the `[burn]` configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BurnThresholds {
    /// ± this variance (percent) is ON_TRACK.
    pub on_track_percent: Decimal,
    /// No verdict on variance with fewer active days than this in the window.
    pub min_active_days: Decimal,
    /// Depletion within this many days (before the period ends) is CRITICAL risk.
    pub critical_days: i64,
    /// For this many days from the start of the budget period, underspending lowers the
    /// health score only in proportion to the days passed (0: in full from the start).
    pub underspend_grace_days: i64,
}

impl Default for BurnThresholds {
    fn default() -> Self {
        BurnThresholds {
            on_track_percent: Decimal::from(20),
            min_active_days: Decimal::from(7),
            critical_days: 14,
            underspend_grace_days: 90,
        }
    }
}

/// Spending against the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BurnStatus {
    /// More than the tolerance above the plan.
    Overspending,
    /// Within the tolerance.
    OnTrack,
    /// More than the tolerance below the plan.
    Underspending,
}

impl BurnStatus {
    /// The printed and stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            BurnStatus::Overspending => "OVERSPENDING",
            BurnStatus::OnTrack => "ON_TRACK",
            BurnStatus::Underspending => "UNDERSPENDING",
        }
    }
}

impl fmt::Display for BurnStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A health score's band.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum HealthBand {
    /// Below 40.
    Critical,
    /// 40 to 59.
    Warning,
    /// 60 to 79.
    Concern,
    /// 80 and above.
    Healthy,
}

impl HealthBand {
    /// The band of a score.
    pub fn of(score: u8) -> HealthBand {
        match score {
            80.. => HealthBand::Healthy,
            60..=79 => HealthBand::Concern,
            40..=59 => HealthBand::Warning,
            _ => HealthBand::Critical,
        }
    }

    /// The printed and stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthBand::Healthy => "HEALTHY",
            HealthBand::Concern => "CONCERN",
            HealthBand::Warning => "WARNING",
            HealthBand::Critical => "CRITICAL",
        }
    }
}

impl fmt::Display for HealthBand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How likely the budget is to fail its period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RiskLevel {
    /// Nothing to watch.
    Low,
    /// Off plan.
    Medium,
    /// Projected to run out or overrun within the period.
    High,
    /// Out of money, about to be, or far over.
    Critical,
}

impl RiskLevel {
    /// The printed and stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RiskLevel::Low => "LOW",
            RiskLevel::Medium => "MEDIUM",
            RiskLevel::High => "HIGH",
            RiskLevel::Critical => "CRITICAL",
        }
    }
}

impl fmt::Display for RiskLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The projection at the current daily rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Projection {
    /// When the money runs out (`None`: not at this rate, e.g. nothing is spent).
    pub depletion: Option<DateTime<Utc>>,
    /// Money left now: credited − charged − held.
    pub remaining: UsdMicros,
    /// Days left in the budget period.
    pub days_left_in_period: Decimal,
    /// Projected spend of the period when it ends.
    pub period_end_spend: UsdMicros,
    /// `period_end_spend − period_budget`: positive overrun, negative underrun.
    pub period_overrun: UsdMicros,
    /// Projected spend over the horizon when it ends.
    pub horizon_end_spend: UsdMicros,
    /// `horizon_end_spend − horizon_budget`.
    pub horizon_overrun: UsdMicros,
    /// Risk level.
    pub risk: RiskLevel,
}

/// The analysis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BurnFigures {
    /// Days of the window inside the horizon.
    pub active_days: Decimal,
    /// Spend in the window.
    pub window_spent: UsdMicros,
    /// Expected spend in the window.
    pub window_expected: UsdMicros,
    /// Window spend per active day.
    pub daily_rate: UsdMicros,
    /// Expected spend per active day.
    pub expected_daily_rate: UsdMicros,
    /// Spend of the last 7 days ÷ 7.
    pub rate_7d: UsdMicros,
    /// Spend of the last 30 days ÷ 30.
    pub rate_30d: UsdMicros,
    /// Variance in percent, two decimals; `None` without a verdict.
    pub variance_percent: Option<Decimal>,
    /// Burn status.
    pub status: BurnStatus,
    /// Health score, 0–100.
    pub health: u8,
    /// Its band.
    pub band: HealthBand,
    /// Expected spend from the period's start to `as_of`.
    pub period_expected: UsdMicros,
    /// (charged + held) ÷ credited × 100, two decimals; `None` with nothing credited.
    pub utilisation_percent: Option<Decimal>,
    /// The projection.
    pub projection: Projection,
}

/// `part ÷ whole × 100`, two decimals, half away from zero.
pub fn percent(part: Decimal, whole: Decimal) -> Option<Decimal> {
    if whole.is_zero() {
        return None;
    }
    Some(
        (part * Decimal::ONE_HUNDRED / whole)
            .round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero),
    )
}

fn per_day(amount: Decimal, d: Decimal) -> UsdMicros {
    if d <= Decimal::ZERO {
        return UsdMicros::ZERO;
    }
    round_micros(amount / d)
}

/// When `remaining` plus `future` arrivals run out at `rate` micro-dollars a day from `from`.
fn depletion(
    from: DateTime<Utc>,
    remaining: UsdMicros,
    future: &[(DateTime<Utc>, UsdMicros)],
    rate: Decimal,
) -> Option<DateTime<Utc>> {
    if remaining.micros() <= 0 {
        return Some(from);
    }
    if rate <= Decimal::ZERO {
        return None;
    }
    let day = Decimal::from(DAY_SECS);
    // Seconds until `money` runs out, exact (money x 86400 / rate divides evenly far more often
    // than money / rate does).
    let lasts = |money: Decimal| money * day / rate;
    let mut money = Decimal::from(remaining.micros());
    let mut t = from;
    let mut arrivals: Vec<_> = future.iter().filter(|(at, _)| *at > from).collect();
    arrivals.sort_by_key(|(at, _)| *at);
    for (at, amount) in arrivals {
        let until = Decimal::from((*at - t).num_seconds());
        if lasts(money) < until {
            return Some(t + secs(lasts(money)));
        }
        money = money - rate * until / day + Decimal::from(amount.micros());
        t = *at;
    }
    Some(t + secs(lasts(money)))
}

/// Whole seconds of a decimal number of seconds, bounded to ~1000 years.
fn secs(s: Decimal) -> Duration {
    let s = i64::try_from(s.floor())
        .unwrap_or(i64::MAX)
        .min(1000 * 366 * DAY_SECS);
    Duration::seconds(s)
}

/// How much underspending counts towards the health score: a new budget period's money takes
/// time to start being spent, so during the first `underspend_grace_days` of the period the
/// weight grows from 0 to 1 with the days passed; after that (and with no grace) it is 1.
pub fn underspend_weight(i: &BurnInputs, th: &BurnThresholds) -> Decimal {
    if th.underspend_grace_days <= 0 {
        return Decimal::ONE;
    }
    let passed = days((i.as_of - i.period.start).max(Duration::zero()));
    (passed / Decimal::from(th.underspend_grace_days)).min(Decimal::ONE)
}

/// Analyses spending as of `inputs.as_of`.
pub fn analyse(i: &BurnInputs, th: &BurnThresholds) -> BurnFigures {
    let t = i.as_of;
    let w_start = t - i.window;
    let active_secs = overlap_secs(w_start, t, i.horizon.start, i.horizon.end);
    let active_days = Decimal::from(active_secs) / Decimal::from(DAY_SECS);
    let window_expected_exact = i.plan.expected_between(w_start, t);
    let spent = Decimal::from(i.window_spent.micros());
    let verdict = active_days >= th.min_active_days;
    let variance_percent = if !verdict {
        None
    } else {
        percent(spent - window_expected_exact, window_expected_exact)
    };
    let status = match variance_percent {
        Some(v) if v > th.on_track_percent => BurnStatus::Overspending,
        Some(v) if v < -th.on_track_percent => BurnStatus::Underspending,
        None if verdict && window_expected_exact.is_zero() && spent > Decimal::ZERO => {
            BurnStatus::Overspending
        }
        _ => BurnStatus::OnTrack,
    };
    let daily_rate_exact = if active_days > Decimal::ZERO {
        spent / active_days
    } else {
        Decimal::ZERO
    };
    let remaining = i
        .credited
        .checked_sub(i.charged)
        .and_then(|x| x.checked_sub(i.held))
        .unwrap_or(UsdMicros::ZERO);
    let future: Vec<_> = i
        .future_money
        .iter()
        .copied()
        .filter(|(at, _)| *at < i.horizon.end)
        .collect();
    let depletion = depletion(t, remaining, &future, daily_rate_exact);
    let left_in_period = days((i.period.end - t).max(Duration::zero()));
    let left_in_horizon = days((i.horizon.end - t).max(Duration::zero()));
    let period_end_spend = i
        .period_spent
        .checked_add(round_micros(daily_rate_exact * left_in_period))
        .unwrap_or(i.period_spent);
    let horizon_end_spend = i
        .horizon_spent
        .checked_add(round_micros(daily_rate_exact * left_in_horizon))
        .unwrap_or(i.horizon_spent);
    let period_overrun =
        UsdMicros::from_stored(period_end_spend.micros() - i.period_budget.micros());
    let horizon_overrun =
        UsdMicros::from_stored(horizon_end_spend.micros() - i.horizon_budget.micros());
    let period_live = t < i.period.end;
    let runs_out_in_period = period_live && depletion.is_some_and(|d| d < i.period.end);
    let over_half = i.period_budget.micros() > 0
        && Decimal::from(period_overrun.micros()) * Decimal::TWO
            > Decimal::from(i.period_budget.micros());
    let risk = if period_live
        && (remaining.micros() <= 0
            || depletion
                .is_some_and(|d| d < i.period.end && d - t <= Duration::days(th.critical_days))
            || over_half)
    {
        RiskLevel::Critical
    } else if runs_out_in_period || (period_live && period_overrun.micros() > 0) {
        RiskLevel::High
    } else if status != BurnStatus::OnTrack || horizon_overrun.micros() > 0 {
        RiskLevel::Medium
    } else {
        RiskLevel::Low
    };
    let v = match (variance_percent, status) {
        (Some(v), _) => v,
        (None, BurnStatus::Overspending) => Decimal::ONE_HUNDRED,
        _ => Decimal::ZERO,
    };
    let over = v.max(Decimal::ZERO);
    let under = (-v).max(Decimal::ZERO) * underspend_weight(i, th);
    let mut h = Decimal::ONE_HUNDRED - over - under / Decimal::TWO;
    if let (true, Some(d)) = (runs_out_in_period, depletion) {
        // Up to a third of the score: the share of the rest of the period without money.
        let short = Decimal::from((i.period.end - d).num_seconds());
        let rest = Decimal::from((i.period.end - t).num_seconds().max(1));
        h -= Decimal::ONE_HUNDRED / Decimal::from(3) * short / rest;
    }
    let h = h
        .max(Decimal::ZERO)
        .min(Decimal::ONE_HUNDRED)
        .round_dp_with_strategy(0, RoundingStrategy::MidpointAwayFromZero);
    let health = u8::try_from(h).unwrap_or(0);
    let committed = Decimal::from(i.charged.micros()) + Decimal::from(i.held.micros());
    BurnFigures {
        active_days,
        window_spent: i.window_spent,
        window_expected: round_micros(window_expected_exact),
        daily_rate: per_day(spent, active_days),
        expected_daily_rate: per_day(window_expected_exact, active_days),
        rate_7d: per_day(Decimal::from(i.spent_7d.micros()), days(i.span_7d)),
        rate_30d: per_day(Decimal::from(i.spent_30d.micros()), days(i.span_30d)),
        variance_percent,
        status,
        health,
        band: HealthBand::of(health),
        period_expected: round_micros(i.plan.expected_between(i.period.start, t.min(i.period.end))),
        utilisation_percent: percent(committed, Decimal::from(i.credited.micros())),
        projection: Projection {
            depletion,
            remaining,
            days_left_in_period: left_in_period,
            period_end_spend,
            period_overrun,
            horizon_end_spend,
            horizon_overrun,
            risk,
        },
    }
}

/// The advisor's recommendation for bursting to AWS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Run locally where possible.
    PreferLocal,
    /// Either is fine.
    Either,
    /// Spend on AWS: money is at risk of lapsing unspent.
    PreferAws,
    /// Burst only for emergencies.
    EmergencyOnly,
}

impl Decision {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::PreferLocal => "prefer_local",
            Decision::Either => "either",
            Decision::PreferAws => "prefer_aws",
            Decision::EmergencyOnly => "emergency_only",
        }
    }
}

/// A recommendation and why, as reason codes with a sentence each.
pub fn recommend(f: &BurnFigures) -> (Decision, Vec<(&'static str, String)>) {
    let mut reasons = Vec::new();
    let p = &f.projection;
    if p.remaining.micros() <= 0 {
        reasons.push(("no_money_left", "nothing is left to spend".to_string()));
    }
    if f.band == HealthBand::Critical {
        reasons.push((
            "health_critical",
            format!("health score {} is CRITICAL", f.health),
        ));
    }
    if p.risk == RiskLevel::Critical {
        reasons.push(("risk_critical", "risk level is CRITICAL".to_string()));
    }
    if !reasons.is_empty() {
        return (Decision::EmergencyOnly, reasons);
    }
    if f.status == BurnStatus::Overspending {
        reasons.push((
            "overspending",
            format!("spending is {}% above plan", fmt_pct(f.variance_percent)),
        ));
    }
    if p.risk == RiskLevel::High {
        reasons.push((
            "projected_shortfall",
            "money is projected to run out or overrun before the period ends".to_string(),
        ));
    }
    if f.band <= HealthBand::Warning {
        reasons.push((
            "health_low",
            format!("health score {} is {}", f.health, f.band),
        ));
    }
    if !reasons.is_empty() {
        return (Decision::PreferLocal, reasons);
    }
    if f.status == BurnStatus::Underspending {
        reasons.push((
            "underspending",
            format!(
                "spending is {}% below plan; money may lapse unspent",
                fmt_pct(f.variance_percent.map(|v| -v))
            ),
        ));
        return (Decision::PreferAws, reasons);
    }
    reasons.push(("on_track", "spending follows the plan".to_string()));
    (Decision::Either, reasons)
}

fn fmt_pct(v: Option<Decimal>) -> String {
    v.map(|v| {
        format!(
            "{:.1}",
            v.round_dp_with_strategy(1, RoundingStrategy::MidpointAwayFromZero)
        )
    })
    .unwrap_or_else(|| "n/a".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn day(y: i32, m: u32, d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, 0, 0, 0).unwrap()
    }

    fn usd(s: &str) -> UsdMicros {
        UsdMicros::parse(s).unwrap()
    }

    /// The worked example of README.md: $45,625 for 2026, linear; $4,692.90 spent in the 30
    /// days before June 1; $20,000 spent in the year so far; nothing held.
    fn example() -> BurnInputs {
        let year = Span {
            start: day(2026, 1, 1),
            end: day(2027, 1, 1),
        };
        BurnInputs {
            as_of: day(2026, 6, 1),
            credited: usd("45625"),
            charged: usd("20000"),
            held: UsdMicros::ZERO,
            window: Duration::days(30),
            window_spent: usd("4692.90"),
            spent_7d: usd("1100"),
            spent_30d: usd("4692.90"),
            span_7d: Duration::days(7),
            span_30d: Duration::days(30),
            period: year,
            period_budget: usd("45625"),
            period_spent: usd("20000"),
            horizon: year,
            horizon_budget: usd("45625"),
            horizon_spent: usd("20000"),
            plan: Plan {
                segments: vec![Segment {
                    start: year.start,
                    end: year.end,
                    amount: usd("45625"),
                }],
            },
            future_money: vec![],
        }
    }

    #[test]
    fn the_worked_example() {
        let f = analyse(&example(), &BurnThresholds::default());
        assert_eq!(f.expected_daily_rate, usd("125"));
        assert_eq!(f.daily_rate, usd("156.43"));
        assert_eq!(f.window_expected, usd("3750"));
        assert_eq!(f.variance_percent, Some(Decimal::new(2514, 2)));
        assert_eq!(f.status, BurnStatus::Overspending);
        // The money (25,625) lasts 25,625 / 156.43 = 163.81 days: to Nov 11, 50.19 of the 214
        // days left in the year short; 100 - 25.14 - 33.33 x 50.19 / 214 = 67.04 -> 67.
        assert_eq!(f.health, 67);
        assert_eq!(f.band, HealthBand::Concern);
        assert_eq!(
            f.projection
                .depletion
                .unwrap()
                .format("%Y-%m-%d")
                .to_string(),
            "2026-11-11"
        );
        // 214 days left: 20,000 + 156.43 x 214 = 53,476.02 -> overrun 7,851.02.
        assert_eq!(f.projection.period_end_spend, usd("53476.02"));
        assert_eq!(f.projection.period_overrun, usd("7851.02"));
        assert_eq!(f.projection.risk, RiskLevel::High);
        assert_eq!(f.rate_7d, usd("157.142857"));
        assert_eq!(f.period_expected, usd("18875"));
        assert_eq!(f.utilisation_percent, Some(Decimal::new(4384, 2)));
        let (d, why) = recommend(&f);
        assert_eq!(d, Decision::PreferLocal);
        assert_eq!(why[0].0, "overspending");
    }

    #[test]
    fn runs_out_before_the_period_ends_costs_health() {
        let mut i = example();
        i.window_spent = usd("6000");
        let f = analyse(&i, &BurnThresholds::default());
        // +60 % and the money (25,625 at 200/day = 128.1 days) runs out on Oct 7, 85.9 of 214
        // days short: 100 - 60 - 13.38 = 26.62 -> 27.
        assert_eq!(f.variance_percent, Some(Decimal::from(60)));
        assert_eq!(f.health, 27);
        assert_eq!(f.band, HealthBand::Critical);
        assert_eq!(recommend(&f).0, Decision::EmergencyOnly);
    }

    #[test]
    fn underspending_and_no_verdict() {
        let mut i = example();
        i.window_spent = usd("1500");
        let f = analyse(&i, &BurnThresholds::default());
        assert_eq!(f.status, BurnStatus::Underspending);
        assert_eq!(f.health, 70); // 100 - 60/2
        assert_eq!(recommend(&f).0, Decision::PreferAws);
        // Five days into the year: too little history for a verdict.
        i.as_of = day(2026, 1, 6);
        let f = analyse(&i, &BurnThresholds::default());
        assert_eq!(f.variance_percent, None);
        assert_eq!(f.status, BurnStatus::OnTrack);
    }

    #[test]
    fn early_underspending_is_not_alarming() {
        // Nothing spent in the first 30 days of the year: -100 %, UNDERSPENDING, but only a
        // third of the period's grace has passed: 100 - 100/2 x 30/90 = 83.33 -> 83, HEALTHY.
        let mut i = example();
        i.as_of = day(2026, 1, 31);
        i.charged = UsdMicros::ZERO;
        i.window_spent = UsdMicros::ZERO;
        i.spent_7d = UsdMicros::ZERO;
        i.spent_30d = UsdMicros::ZERO;
        i.period_spent = UsdMicros::ZERO;
        i.horizon_spent = UsdMicros::ZERO;
        let th = BurnThresholds::default();
        let f = analyse(&i, &th);
        assert_eq!(f.variance_percent, Some(Decimal::from(-100)));
        assert_eq!(f.status, BurnStatus::Underspending);
        assert_eq!((f.health, f.band), (83, HealthBand::Healthy));
        // 60 days: 100 - 50 x 60/90 = 66.67 -> 67 (CONCERN, above the alert's 60).
        i.as_of = day(2026, 3, 2);
        assert_eq!(analyse(&i, &th).health, 67);
        // From 90 days on, in full: 50, WARNING.
        i.as_of = day(2026, 4, 1);
        assert_eq!(analyse(&i, &th).health, 50);
        // Without a grace, in full at once.
        i.as_of = day(2026, 1, 31);
        let none = BurnThresholds {
            underspend_grace_days: 0,
            ..th
        };
        assert_eq!(analyse(&i, &none).health, 50);
        // Overspending is never graced.
        i.window_spent = usd("7500");
        assert_eq!(analyse(&i, &th).variance_percent, Some(Decimal::from(100)));
        assert_eq!(analyse(&i, &th).health, 0);
    }

    #[test]
    fn future_money_postpones_depletion() {
        let span = Span {
            start: day(2026, 1, 1),
            end: day(2027, 1, 1),
        };
        let i = BurnInputs {
            as_of: day(2026, 3, 1),
            credited: usd("200"),
            charged: usd("190"),
            held: UsdMicros::ZERO,
            window: Duration::days(30),
            window_spent: usd("90"),
            spent_7d: usd("21"),
            spent_30d: usd("90"),
            span_7d: Duration::days(7),
            span_30d: Duration::days(30),
            period: span,
            period_budget: usd("1200"),
            period_spent: usd("190"),
            horizon: span,
            horizon_budget: usd("1200"),
            horizon_spent: usd("190"),
            plan: Plan::default(),
            future_money: vec![(day(2026, 3, 1), usd("100")), (day(2026, 4, 1), usd("100"))],
        };
        let f = analyse(&i, &BurnThresholds::default());
        // $10 left at $3/day lasts 3.33 days: the Mar 1 credit is already in `credited`, Apr 1
        // arrives too late.
        assert_eq!(
            f.projection.depletion.unwrap(),
            day(2026, 3, 4) + Duration::hours(8)
        );
        let mut j = i.clone();
        j.credited = usd("290");
        let f = analyse(&j, &BurnThresholds::default());
        // $100 lasts 33.3 days: past Apr 1 (31 days, $7 left), then $107 for 35.67 days more.
        assert_eq!(
            f.projection
                .depletion
                .unwrap()
                .format("%Y-%m-%d")
                .to_string(),
            "2026-05-06"
        );
    }
}
