//! Burn-rate inputs from the ledger, live (`asbb burn-rate`, `asbb status`) and in the timer job
//! (`asbb burn-rate compute`), which persists one snapshot per account and complete day.
//!
//! Both paths build the same [`BurnInputs`] through [`Context::inputs`]: the live path sums the
//! account's journal directly, the batch path sweeps the journal day by day from where the
//! account's snapshots end (a cursor per account), carrying rolling sums forward. So a
//! snapshot of day D holds exactly what a live analysis as of D+1 00:00 says. Entries booked
//! after a run with an earlier effective time (backfills) are found through each account's
//! entry sequence number as the run read it (see [`compute`]), and the days from theirs on are
//! recomputed.

use std::collections::{HashMap, VecDeque};

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use diesel::prelude::*;
use rust_decimal::Decimal;

use super::allocations::ScheduleRow;
use super::grants::{self, GrantRecord, LinkRecord, PeriodAccountRow, PeriodRow};
use super::ledger::LedgerError;
use super::schema::{
    accounts, allocation_periods, allocation_schedules, burn_cursors, burn_runs, burn_snapshots,
    grant_links, journal,
};
use super::{write_transaction, DbConn};
use crate::domain::burn::{analyse, BurnFigures, BurnInputs, BurnThresholds, Plan, Segment, Span};
use crate::domain::grant::share_of;
use crate::domain::time::{from_naive, to_naive};
use crate::domain::UsdMicros;

/// Snapshot rows per `COPY` on PostgreSQL: bounds the rows buffered for one statement.
const SNAPSHOT_ROWS_PER_COPY: usize = 5_000;

/// Days swept per pass of the batch: bounds the journal rows held in memory at once.
const DAYS_PER_PASS: i64 = 31;

/// The longest window the batch keeps rolling sums for (`burn.window`).
pub const BATCH_WINDOW_DAYS_MAX: i64 = 90;

/// The advisory lock key of `burn-rate compute` on PostgreSQL.
const BURN_LOCK: i64 = 0x6173_6262_0007;

/// Midnight UTC starting a day.
pub fn day_start(d: NaiveDate) -> DateTime<Utc> {
    Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0).expect("midnight exists"))
}

/// What an account's plan and periods are made of, loaded once.
#[derive(Debug, Clone)]
pub struct Context {
    /// Account id.
    pub account_id: i64,
    /// Account name.
    pub name: String,
    /// Active period.
    pub active: Span,
    /// Status.
    pub status: String,
    /// Overdraft limit.
    pub overdraft: UsdMicros,
    /// Credited allocations: (effective, span end, amount).
    pub alloc_credits: Vec<(DateTime<Utc>, DateTime<Utc>, UsdMicros)>,
    /// Allocations still to come from active schedules: (due, amount).
    pub alloc_planned: Vec<(DateTime<Utc>, UsdMicros)>,
    /// The grant the account is linked to.
    pub grant: Option<GrantLink>,
}

/// An account's grant, its link and its period rows.
#[derive(Debug, Clone)]
pub struct GrantLink {
    /// The grant.
    pub grant: GrantRecord,
    /// The link.
    pub link: LinkRecord,
    /// The grant's periods.
    pub periods: Vec<PeriodRow>,
    /// The account's rows of those periods.
    pub rows: Vec<PeriodAccountRow>,
}

/// The figures that change with time, as of one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dynamic {
    /// Credited.
    pub credited: i64,
    /// Net charged.
    pub charged: i64,
    /// Held.
    pub held: i64,
    /// Spend in the window.
    pub window_spent: i64,
    /// Spend in the last 7 days.
    pub spent_7d: i64,
    /// Spend in the last 30 days.
    pub spent_30d: i64,
    /// Spend since the budget period started.
    pub period_spent: i64,
    /// Spend since the horizon started.
    pub horizon_spent: i64,
}

/// Where the budget period and horizon start at `t`, for "spend since".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Budget period.
    pub period: Span,
    /// Horizon.
    pub horizon: Span,
    /// Spend counts from here (the period start, or a later link).
    pub period_from: DateTime<Utc>,
    /// Horizon spend counts from here.
    pub horizon_from: DateTime<Utc>,
}

impl Context {
    /// The budget period and horizon at `t`.
    pub fn bounds(&self, t: DateTime<Utc>) -> Bounds {
        if let Some(g) = &self.grant {
            if let Some(p) = current_period(&g.periods, t) {
                let horizon = Span {
                    start: g.grant.start,
                    end: g.grant.end,
                };
                return Bounds {
                    period: Span {
                        start: p.start(),
                        end: p.end(),
                    },
                    horizon,
                    period_from: p.start().max(g.link.linked_at),
                    horizon_from: horizon.start.max(g.link.linked_at),
                };
            }
        }
        Bounds {
            period: self.active,
            horizon: self.active,
            period_from: self.active.start,
            horizon_from: self.active.start,
        }
    }

    /// The analysis inputs at `t` from the figures at `t`.
    pub fn inputs(&self, t: DateTime<Utc>, window: Duration, d: &Dynamic) -> BurnInputs {
        let b = self.bounds(t);
        let mut segments = Vec::new();
        let mut future = Vec::new();
        let mut alloc_credited = 0i64;
        for (eff, end, amount) in &self.alloc_credits {
            if *eff <= t {
                alloc_credited += amount.micros();
                segments.push(Segment {
                    start: *eff,
                    end: *end,
                    amount: *amount,
                });
            } else {
                future.push((*eff, *amount));
            }
        }
        future.extend(self.alloc_planned.iter().copied().filter(|(at, _)| *at > t));
        let mut grant_net = 0i64;
        let mut grant_budget = None;
        let mut horizon_budget = None;
        if let Some(g) = &self.grant {
            for r in &g.rows {
                let p = g.periods.iter().find(|p| p.number == r.period);
                let activated = from_naive(r.activated_at);
                if activated <= t {
                    grant_net += r.credited_micros;
                    if let Some(p) = p {
                        segments.push(Segment {
                            start: activated.max(p.start()),
                            end: p.end(),
                            amount: UsdMicros::from_stored(r.credited_micros + r.carry_in_micros),
                        });
                    }
                } else {
                    future.push((activated, UsdMicros::from_stored(r.credited_micros)));
                }
                if r.closed_at.is_some_and(|c| from_naive(c) <= t) {
                    grant_net -= r.expired_micros.unwrap_or(0);
                }
            }
            for p in &g.periods {
                let booked = g.rows.iter().any(|r| r.period == p.number);
                if !booked && p.start() > t && p.status != "cancelled" {
                    if let Ok(a) = share_of(UsdMicros::from_stored(p.budget_micros), g.link.share) {
                        future.push((p.start(), a));
                    }
                }
            }
            if let Some(p) = current_period(&g.periods, t) {
                let row = g
                    .rows
                    .iter()
                    .find(|r| r.period == p.number && from_naive(r.activated_at) <= t);
                grant_budget = Some(match row {
                    Some(r) => r.credited_micros + r.carry_in_micros,
                    None => {
                        let prev = g
                            .rows
                            .iter()
                            .find(|r| r.period == p.number - 1)
                            .and_then(|r| r.carried_micros)
                            .unwrap_or(0);
                        share_of(UsdMicros::from_stored(p.budget_micros), g.link.share)
                            .map(|m| m.micros())
                            .unwrap_or(0)
                            + prev
                    }
                });
                horizon_budget = share_of(g.grant.amount, g.link.share).ok();
            }
        }
        let other = (d.credited - alloc_credited - grant_net).max(0);
        if other > 0 {
            segments.push(Segment {
                start: self.active.start,
                end: self.active.end,
                amount: UsdMicros::from_stored(other),
            });
        }
        let to_come: i64 = future
            .iter()
            .filter(|(at, _)| *at < b.horizon.end)
            .map(|(_, a)| a.micros())
            .sum();
        let own_budget = UsdMicros::from_stored(d.credited + to_come);
        BurnInputs {
            as_of: t,
            credited: UsdMicros::from_stored(d.credited),
            charged: UsdMicros::from_stored(d.charged),
            held: UsdMicros::from_stored(d.held),
            window,
            window_spent: UsdMicros::from_stored(d.window_spent),
            spent_7d: UsdMicros::from_stored(d.spent_7d),
            spent_30d: UsdMicros::from_stored(d.spent_30d),
            span_7d: window_len(t, 7),
            span_30d: window_len(t, 30),
            period: b.period,
            period_budget: grant_budget
                .map(UsdMicros::from_stored)
                .unwrap_or(own_budget),
            period_spent: UsdMicros::from_stored(d.period_spent),
            horizon: b.horizon,
            horizon_budget: horizon_budget.unwrap_or(own_budget),
            horizon_spent: UsdMicros::from_stored(d.horizon_spent),
            plan: Plan { segments },
            future_money: future,
        }
    }
}

/// The period containing `t`; before the first, the first; after the last, the last.
fn current_period(periods: &[PeriodRow], t: DateTime<Utc>) -> Option<&PeriodRow> {
    periods
        .iter()
        .find(|p| p.start() <= t && t < p.end())
        .or_else(|| periods.first().filter(|p| t < p.start()))
        .or_else(|| periods.last().filter(|p| t >= p.end()))
}

/// The row of an account as the batch and the live path read it.
#[derive(Debug, Clone, Queryable)]
struct AccountLite {
    id: i64,
    name: String,
    starts_at: chrono::NaiveDateTime,
    ends_at: chrono::NaiveDateTime,
    status: String,
    overdraft_micros: i64,
}

/// Loads the contexts of the given accounts (all when `None`), in bulk.
#[allow(clippy::type_complexity)]
pub fn contexts(conn: &mut DbConn, only: Option<&[i64]>) -> Result<Vec<Context>, LedgerError> {
    let mut q = accounts::table
        .select((
            accounts::id,
            accounts::name,
            accounts::starts_at,
            accounts::ends_at,
            accounts::status,
            accounts::overdraft_micros,
        ))
        .order(accounts::id)
        .into_boxed();
    if let Some(ids) = only {
        q = q.filter(accounts::id.eq_any(ids.to_vec()));
    }
    let accts: Vec<AccountLite> = q.load(conn)?;
    let schedules: Vec<ScheduleRow> = allocation_schedules::table
        .select(ScheduleRow::as_select())
        .order(allocation_schedules::id)
        .load(conn)?;
    let mut by_account: HashMap<i64, Vec<ScheduleRow>> = HashMap::new();
    for s in schedules {
        by_account.entry(s.account_id).or_default().push(s);
    }
    let credited: Vec<(i64, i64, i64, chrono::NaiveDateTime)> = allocation_periods::table
        .filter(allocation_periods::outcome.eq("credited"))
        .select((
            allocation_periods::schedule_id,
            allocation_periods::period,
            allocation_periods::amount_micros,
            allocation_periods::effective_at,
        ))
        .load(conn)?;
    let mut credits_of: HashMap<i64, Vec<(i64, i64, chrono::NaiveDateTime)>> = HashMap::new();
    for (s, p, a, e) in credited {
        credits_of.entry(s).or_default().push((p, a, e));
    }
    let linked: Vec<(i64, i64)> = grant_links::table
        .filter(grant_links::unlinked_at.is_null())
        .select((grant_links::account_id, grant_links::grant_id))
        .load(conn)?;
    let mut grant_cache: HashMap<
        i64,
        (
            GrantRecord,
            Vec<PeriodRow>,
            Vec<LinkRecord>,
            Vec<PeriodAccountRow>,
        ),
    > = HashMap::new();
    let link_of: HashMap<i64, i64> = linked.into_iter().collect();
    let mut out = Vec::with_capacity(accts.len());
    for a in accts {
        let mut alloc_credits = Vec::new();
        let mut alloc_planned = Vec::new();
        for s in by_account.get(&a.id).map(Vec::as_slice).unwrap_or(&[]) {
            let terms = s.terms();
            let mut done = 0i64;
            for (period, amount, eff) in credits_of.get(&s.id).map(Vec::as_slice).unwrap_or(&[]) {
                let k = u32::try_from(period - 1).unwrap_or(0);
                let start = from_naive(*eff);
                alloc_credits.push((
                    start,
                    terms.span_end(k).max(start),
                    UsdMicros::from_stored(*amount),
                ));
                done += amount;
            }
            if s.status == "active" {
                let mut c = UsdMicros::from_stored(done);
                let mut k = u32::try_from(s.next_period).unwrap_or(u32::MAX);
                while let Some(due) = terms.due(k) {
                    let amount = terms.amount_after(c);
                    if amount.is_zero() {
                        break;
                    }
                    alloc_planned.push((due, amount));
                    c = c.checked_add(amount)?;
                    k += 1;
                }
            }
        }
        let grant = match link_of.get(&a.id) {
            Some(gid) => {
                if !grant_cache.contains_key(gid) {
                    let g = grants::load_by_id(conn, *gid)?;
                    let periods = grants::period_rows(conn, *gid)?;
                    let links = grants::links(conn, *gid)?;
                    let rows = grants::period_accounts(conn, *gid)?;
                    grant_cache.insert(*gid, (g, periods, links, rows));
                }
                let (g, periods, links, rows) = &grant_cache[gid];
                links
                    .iter()
                    .find(|l| l.account_id == a.id && l.unlinked_at.is_none())
                    .map(|l| GrantLink {
                        grant: g.clone(),
                        link: l.clone(),
                        periods: periods.clone(),
                        rows: rows
                            .iter()
                            .filter(|r| r.account_id == a.id)
                            .cloned()
                            .collect(),
                    })
            }
            None => None,
        };
        out.push(Context {
            account_id: a.id,
            name: a.name,
            active: Span {
                start: from_naive(a.starts_at),
                end: from_naive(a.ends_at),
            },
            status: a.status,
            overdraft: UsdMicros::from_stored(a.overdraft_micros),
            alloc_credits,
            alloc_planned,
            grant,
        });
    }
    Ok(out)
}

/// One account's context by name.
pub fn context(conn: &mut DbConn, name: &str) -> Result<Context, LedgerError> {
    let id: i64 = accounts::table
        .filter(accounts::name.eq(name))
        .select(accounts::id)
        .get_result(conn)
        .optional()?
        .ok_or_else(|| LedgerError::UnknownAccount(name.to_string()))?;
    Ok(contexts(conn, Some(&[id]))?.remove(0))
}

/// A journal row as the analysis reads it.
type Row = (i64, chrono::NaiveDateTime, i64, i64, i64);

/// The length of a window of `days` whole days before `t`'s day plus that day so far: the
/// windows the live path and the snapshots share (exactly `days` at midnight).
pub fn window_len(t: DateTime<Utc>, days: i64) -> Duration {
    t - (day_start(t.date_naive()) - Duration::days(days))
}

fn dynamic_from_rows(rows: &[Row], t: DateTime<Utc>, window: Duration, b: &Bounds) -> Dynamic {
    let mut d = Dynamic::default();
    let (w, s7, s30) = (t - window, t - window_len(t, 7), t - window_len(t, 30));
    for (_, at, c, ch, h) in rows {
        let at = from_naive(*at);
        if at >= t {
            continue;
        }
        d.credited += c;
        d.charged += ch;
        d.held += h;
        if *ch != 0 {
            if at >= w {
                d.window_spent += ch;
            }
            if at >= s7 {
                d.spent_7d += ch;
            }
            if at >= s30 {
                d.spent_30d += ch;
            }
            if at >= b.period_from {
                d.period_spent += ch;
            }
            if at >= b.horizon_from {
                d.horizon_spent += ch;
            }
        }
    }
    d
}

fn account_rows(
    conn: &mut DbConn,
    id: i64,
    before: DateTime<Utc>,
) -> Result<Vec<Row>, LedgerError> {
    Ok(journal::table
        .filter(journal::account_id.eq(id))
        .filter(journal::effective_at.lt(to_naive(before)))
        .select((
            journal::account_id,
            journal::effective_at,
            journal::credited_delta_micros,
            journal::charged_delta_micros,
            journal::held_delta_micros,
        ))
        .load(conn)?)
}

/// A live analysis of one account as of `t`.
#[derive(Debug, Clone)]
pub struct AccountBurn {
    /// Its context.
    pub context: Context,
    /// The inputs.
    pub inputs: BurnInputs,
    /// The figures.
    pub figures: BurnFigures,
}

/// Analyses one account live from its journal.
pub fn account_burn(
    conn: &mut DbConn,
    name: &str,
    t: DateTime<Utc>,
    window: Duration,
    th: &BurnThresholds,
) -> Result<AccountBurn, LedgerError> {
    let ctx = context(conn, name)?;
    let rows = account_rows(conn, ctx.account_id, t)?;
    let d = dynamic_from_rows(&rows, t, window, &ctx.bounds(t));
    let inputs = ctx.inputs(t, window, &d);
    let figures = analyse(&inputs, th);
    Ok(AccountBurn {
        context: ctx,
        inputs,
        figures,
    })
}

/// A live analysis of a grant: its linked accounts together, against the grant's periods.
#[derive(Debug, Clone)]
pub struct GrantBurn {
    /// The grant.
    pub grant: GrantRecord,
    /// The current period, if the grant has started.
    pub period: Option<PeriodRow>,
    /// The inputs.
    pub inputs: BurnInputs,
    /// The figures.
    pub figures: BurnFigures,
    /// Linked accounts (now).
    pub accounts: Vec<String>,
}

/// Analyses a grant live.
pub fn grant_burn(
    conn: &mut DbConn,
    number: &str,
    t: DateTime<Utc>,
    window: Duration,
    th: &BurnThresholds,
) -> Result<GrantBurn, LedgerError> {
    let g = grants::load(conn, number)?;
    let periods = grants::period_rows(conn, g.id)?;
    let links = grants::links(conn, g.id)?;
    let p = current_period(&periods, t).cloned();
    let (w, s7, s30) = (t - window, t - window_len(t, 7), t - window_len(t, 30));
    let mut d = Dynamic::default();
    for l in &links {
        let rows = account_rows(conn, l.account_id, t)?;
        let lo = l.linked_at;
        let hi = l.unlinked_at.unwrap_or(t);
        for (_, at, _, ch, _) in &rows {
            let at = from_naive(*at);
            if at < lo || at >= hi || *ch == 0 {
                continue;
            }
            if at >= w {
                d.window_spent += ch;
            }
            if at >= s7 {
                d.spent_7d += ch;
            }
            if at >= s30 {
                d.spent_30d += ch;
            }
            if at >= g.start {
                d.horizon_spent += ch;
            }
            if p.as_ref().is_some_and(|p| at >= p.start() && at < p.end()) {
                d.period_spent += ch;
            }
        }
        if l.unlinked_at.is_none() {
            d.held += rows.iter().map(|r| r.4).sum::<i64>();
        }
    }
    let mut segments = Vec::new();
    let mut future = Vec::new();
    for q in &periods {
        if q.status == "cancelled" {
            continue;
        }
        if q.start() <= t {
            segments.push(Segment {
                start: q.start(),
                end: q.end(),
                amount: q.available(),
            });
        } else {
            future.push((q.start(), UsdMicros::from_stored(q.budget_micros)));
        }
    }
    let (period, budget) = match &p {
        Some(p) => (
            Span {
                start: p.start(),
                end: p.end(),
            },
            p.available(),
        ),
        None => (
            Span {
                start: g.start,
                end: g.end,
            },
            g.amount,
        ),
    };
    d.credited = budget.micros();
    d.charged = d.period_spent;
    let inputs = BurnInputs {
        as_of: t,
        credited: budget,
        charged: UsdMicros::from_stored(d.period_spent),
        held: UsdMicros::from_stored(d.held),
        window,
        window_spent: UsdMicros::from_stored(d.window_spent),
        spent_7d: UsdMicros::from_stored(d.spent_7d),
        spent_30d: UsdMicros::from_stored(d.spent_30d),
        span_7d: window_len(t, 7),
        span_30d: window_len(t, 30),
        period,
        period_budget: budget,
        period_spent: UsdMicros::from_stored(d.period_spent),
        horizon: Span {
            start: g.start,
            end: g.end,
        },
        horizon_budget: g.amount,
        horizon_spent: UsdMicros::from_stored(d.horizon_spent),
        plan: Plan { segments },
        future_money: future,
    };
    let figures = analyse(&inputs, th);
    Ok(GrantBurn {
        accounts: links
            .iter()
            .filter(|l| l.unlinked_at.is_none())
            .map(|l| l.account.clone())
            .collect(),
        grant: g,
        period: p,
        inputs,
        figures,
    })
}

// ---------------------------------------------------------------------------------------------
// The batch: daily snapshots

/// One stored snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = burn_snapshots, treat_none_as_default_value = false)]
pub struct SnapshotRow {
    /// Account.
    pub account_id: i64,
    /// The day.
    pub day: NaiveDate,
    /// Credited at the end of the day.
    pub credited_micros: i64,
    /// Charged at the end of the day.
    pub charged_micros: i64,
    /// Held at the end of the day.
    pub held_micros: i64,
    /// Net charges during the day.
    pub spent_micros: i64,
    /// Budget period start.
    pub period_start: chrono::NaiveDateTime,
    /// Budget period end.
    pub period_end: chrono::NaiveDateTime,
    /// Budget of the period.
    pub period_budget_micros: i64,
    /// Spent in the period so far.
    pub period_spent_micros: i64,
    /// Expected in the period so far.
    pub period_expected_micros: i64,
    /// Window length, days.
    pub window_days: i64,
    /// Spend in the window.
    pub window_spent_micros: i64,
    /// Expected in the window.
    pub window_expected_micros: i64,
    /// Rolling 7-day rate.
    pub rate_7d_micros: i64,
    /// Rolling 30-day rate.
    pub rate_30d_micros: i64,
    /// Variance, percent.
    pub variance_percent: Option<String>,
    /// Burn status.
    pub burn_status: String,
    /// Health score.
    pub health_score: i64,
    /// Health band.
    pub health_band: String,
    /// Risk level.
    pub risk_level: String,
    /// Projected depletion day.
    pub depletion_date: Option<NaiveDate>,
    /// Projected spend at period end.
    pub projected_period_micros: i64,
    /// Projected spend at horizon end.
    pub projected_horizon_micros: i64,
    /// Spend over the horizon so far.
    pub horizon_spent_micros: i64,
    /// When computed (wall clock).
    pub computed_at: chrono::NaiveDateTime,
}

#[allow(clippy::too_many_arguments)]
fn snapshot_row(
    account_id: i64,
    day: NaiveDate,
    d: &Dynamic,
    spent_day: i64,
    i: &BurnInputs,
    f: &BurnFigures,
    window_days: i64,
    now: DateTime<Utc>,
) -> SnapshotRow {
    SnapshotRow {
        account_id,
        day,
        credited_micros: d.credited,
        charged_micros: d.charged,
        held_micros: d.held,
        spent_micros: spent_day,
        period_start: to_naive(i.period.start),
        period_end: to_naive(i.period.end),
        period_budget_micros: i.period_budget.micros(),
        period_spent_micros: d.period_spent,
        period_expected_micros: f.period_expected.micros(),
        window_days,
        window_spent_micros: d.window_spent,
        window_expected_micros: f.window_expected.micros(),
        rate_7d_micros: f.rate_7d.micros(),
        rate_30d_micros: f.rate_30d.micros(),
        variance_percent: f.variance_percent.map(|v| format!("{v:.2}")),
        burn_status: f.status.as_str().into(),
        health_score: i64::from(f.health),
        health_band: f.band.as_str().into(),
        risk_level: f.projection.risk.as_str().into(),
        depletion_date: f.projection.depletion.map(|t| t.date_naive()),
        projected_period_micros: f.projection.period_end_spend.micros(),
        projected_horizon_micros: f.projection.horizon_end_spend.micros(),
        horizon_spent_micros: d.horizon_spent,
        computed_at: to_naive(now),
    }
}

/// The rolling state of one account during the sweep.
struct Sweep {
    ctx: Context,
    d: Dynamic,
    /// Net charges of the last days, oldest first, up to the end of `day - 1`.
    spends: VecDeque<i64>,
    /// The next day to compute.
    day: NaiveDate,
    bounds: Option<Bounds>,
    /// Stored snapshots from this day on are replaced (a recompute after a backfill).
    rewrite_from: Option<NaiveDate>,
    /// The account's entry count read at the start of the run: every entry up to this `seq`
    /// is committed and seen by this run (the account's next backfill watermark).
    seq_seen: i64,
}

impl Sweep {
    /// Sums over the last `n` days of the buffer plus `today`.
    fn last(&self, n: usize, today: i64) -> i64 {
        self.spends
            .iter()
            .rev()
            .take(n.saturating_sub(1))
            .sum::<i64>()
            + today
    }
}

/// What `burn-rate compute` did.
#[derive(Debug, Clone, Default)]
pub struct ComputeReport {
    /// Accounts analysed.
    pub accounts: u64,
    /// Snapshot rows written.
    pub days_written: u64,
    /// Accounts whose snapshots were recomputed from an earlier day (backfilled entries).
    pub recomputed: u64,
    /// The analysis of each account as of `as_of` (for status files and alerts).
    pub current: Vec<AccountBurn>,
}

/// Options of the batch.
#[derive(Debug, Clone, Copy)]
pub struct ComputeOptions {
    /// The window of the stored figures (≤ 90 days).
    pub window_days: i64,
    /// Thresholds.
    pub thresholds: BurnThresholds,
}

/// Ids per `IN (…)` list: both backends bound the parameters of one statement.
const IDS_PER_QUERY: usize = 500;

/// The state a resumed account starts from: the end of the day before its first day.
#[derive(Debug, Clone, Copy, Queryable)]
struct ResumeRow {
    account_id: i64,
    day: NaiveDate,
    spent: i64,
    credited: i64,
    charged: i64,
    held: i64,
    period_spent: i64,
    horizon_spent: i64,
}

/// Holds `burn-rate compute`'s lock for one run on PostgreSQL: a session-level advisory lock,
/// so that two timers (on two hosts sharing one ledger) never sweep at once; it goes with the
/// connection if the process dies. On SQLite each write transaction serialises on its own and
/// the sweep is idempotent, so nothing is needed.
fn with_run_lock<T>(
    conn: &mut DbConn,
    f: impl FnOnce(&mut DbConn) -> Result<T, LedgerError>,
) -> Result<T, LedgerError> {
    if let DbConn::Postgres(c) = conn {
        diesel::sql_query(format!("SELECT pg_advisory_lock({BURN_LOCK})")).execute(c)?;
    }
    let r = f(conn);
    if let DbConn::Postgres(c) = conn {
        let unlocked =
            diesel::sql_query(format!("SELECT pg_advisory_unlock({BURN_LOCK})")).execute(c);
        if r.is_ok() {
            unlocked?;
        }
    }
    r
}

/// Writes snapshot rows: one prepared single-row statement per row on SQLite (in process, so
/// a cached statement beats building a statement of thousands of parameters), a binary `COPY`
/// on PostgreSQL (one round trip).
fn insert_snapshots(conn: &mut DbConn, rows: &[SnapshotRow]) -> Result<(), LedgerError> {
    match conn {
        DbConn::Sqlite(c) => {
            for r in rows {
                diesel::insert_into(burn_snapshots::table)
                    .values(r)
                    .execute(c)?;
            }
        }
        DbConn::Postgres(c) => {
            for chunk in rows.chunks(SNAPSHOT_ROWS_PER_COPY) {
                diesel::copy_from(burn_snapshots::table)
                    .from_insertable(chunk)
                    .execute(c)?;
            }
        }
    }
    Ok(())
}

/// Moves the cursors (last day, entries seen) of the given accounts.
fn upsert_cursors(conn: &mut DbConn, rows: &[(i64, NaiveDate, i64)]) -> Result<(), LedgerError> {
    use diesel::upsert::excluded;
    for chunk in rows.chunks(IDS_PER_QUERY) {
        let values: Vec<_> = chunk
            .iter()
            .map(|(a, d, seq)| {
                (
                    burn_cursors::account_id.eq(*a),
                    burn_cursors::last_day.eq(*d),
                    burn_cursors::seq_seen.eq(*seq),
                )
            })
            .collect();
        let q = diesel::insert_into(burn_cursors::table)
            .values(&values)
            .on_conflict(burn_cursors::account_id)
            .do_update()
            .set((
                burn_cursors::last_day.eq(excluded(burn_cursors::last_day)),
                burn_cursors::seq_seen.eq(excluded(burn_cursors::seq_seen)),
            ));
        match conn {
            DbConn::Sqlite(c) => q.execute(c)?,
            DbConn::Postgres(c) => q.execute(c)?,
        };
    }
    Ok(())
}

/// `asbb burn-rate compute`: writes the snapshots of every complete day up to `as_of` that is
/// missing (catch-up), recomputes days that later entries changed, and returns each account's
/// analysis as of `as_of`. `progress` is told the number of accounts done.
///
/// **Backfills.** Entries booked after a run with an effective time on a day the run already
/// covered are found by their per-account sequence number: each cursor keeps the account's
/// entry count as the run read it before reading any journal row. An account's entries commit
/// in sequence order (each ledger operation holds the account's row lock, or on SQLite the
/// database's write lock, until it commits), so every entry up to that count was visible to the
/// run, and every entry after it is looked at by the next run — whatever order journal ids
/// commit in on PostgreSQL.
pub fn compute(
    conn: &mut DbConn,
    as_of: DateTime<Utc>,
    now: DateTime<Utc>,
    opts: &ComputeOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<ComputeReport, LedgerError> {
    with_run_lock(conn, |conn| {
        compute_locked(conn, as_of, now, opts, progress)
    })
}

fn compute_locked(
    conn: &mut DbConn,
    as_of: DateTime<Utc>,
    now: DateTime<Utc>,
    opts: &ComputeOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<ComputeReport, LedgerError> {
    let window_days = opts.window_days.clamp(1, BATCH_WINDOW_DAYS_MAX);
    let keep = window_days.max(30) as usize;
    let end_day = as_of.date_naive(); // days before this one are complete
    let mut report = ComputeReport::default();
    // First, before any journal row is read: how many entries each account has.
    let seen: HashMap<i64, i64> = accounts::table
        .select((accounts::id, accounts::entry_count))
        .load::<(i64, i64)>(conn)?
        .into_iter()
        .collect();
    let max_id: i64 = journal::table
        .select(journal::id)
        .order(journal::id.desc())
        .first(conn)
        .optional()?
        .unwrap_or(0);
    // Backfills: entries the last run did not see whose effective day it already covered.
    let late: Vec<(i64, Option<chrono::NaiveDateTime>)> = journal::table
        .inner_join(
            burn_cursors::table.on(burn_cursors::account_id
                .eq(journal::account_id)
                .and(journal::seq.gt(burn_cursors::seq_seen))),
        )
        .group_by(journal::account_id)
        .select((journal::account_id, diesel::dsl::min(journal::effective_at)))
        .load(conn)?;
    let earliest_new: HashMap<i64, NaiveDate> = late
        .into_iter()
        .filter_map(|(a, t)| t.map(|t| (a, t.date())))
        .collect();
    let cursors: HashMap<i64, NaiveDate> = burn_cursors::table
        .select((burn_cursors::account_id, burn_cursors::last_day))
        .load::<(i64, NaiveDate)>(conn)?
        .into_iter()
        .collect();
    let contexts = contexts(conn, None)?;
    let total = contexts.len() as u64;
    // First day with an entry, for accounts without snapshots.
    let mut sweeps: Vec<Sweep> = Vec::with_capacity(contexts.len());
    let firsts: HashMap<i64, chrono::NaiveDateTime> = {
        let missing: Vec<i64> = contexts
            .iter()
            .filter(|c| !cursors.contains_key(&c.account_id))
            .map(|c| c.account_id)
            .collect();
        let mut m = HashMap::new();
        for chunk in missing.chunks(IDS_PER_QUERY) {
            let rows: Vec<(i64, Option<chrono::NaiveDateTime>)> = journal::table
                .filter(journal::account_id.eq_any(chunk))
                .group_by(journal::account_id)
                .select((journal::account_id, diesel::dsl::min(journal::effective_at)))
                .load(conn)?;
            m.extend(rows.into_iter().filter_map(|(a, t)| t.map(|t| (a, t))));
        }
        m
    };
    let mut recomputed = 0u64;
    for ctx in contexts {
        let mut rewrite_from = None;
        let first = match cursors.get(&ctx.account_id) {
            Some(last) => {
                let mut next = last.succ_opt().unwrap_or(*last);
                if let Some(e) = earliest_new.get(&ctx.account_id) {
                    if *e < next {
                        next = *e;
                        rewrite_from = Some(*e);
                        recomputed += 1;
                    }
                }
                next
            }
            None => {
                let first = match firsts.get(&ctx.account_id) {
                    Some(t) => t.date().min(ctx.active.start.date_naive()),
                    None => ctx.active.start.date_naive(),
                };
                // Snapshots without a cursor (the cursors were cleared by hand) are replaced.
                rewrite_from = Some(first);
                first
            }
        };
        sweeps.push(Sweep {
            seq_seen: seen.get(&ctx.account_id).copied().unwrap_or(0),
            ctx,
            d: Dynamic::default(),
            spends: VecDeque::with_capacity(keep),
            day: first,
            bounds: None,
            rewrite_from,
        });
    }
    report.recomputed = recomputed;
    resume(conn, &mut sweeps, &cursors, &firsts, keep)?;
    let start_day = sweeps.iter().map(|s| s.day).min().unwrap_or(end_day);
    let mut pass_start = start_day;
    while pass_start < end_day {
        let pass_end = (pass_start + Duration::days(DAYS_PER_PASS)).min(end_day);
        // The journal rows of this pass for every account, in one read.
        let rows: Vec<Row> = journal::table
            .filter(journal::effective_at.ge(to_naive(day_start(pass_start))))
            .filter(journal::effective_at.lt(to_naive(day_start(pass_end))))
            .select((
                journal::account_id,
                journal::effective_at,
                journal::credited_delta_micros,
                journal::charged_delta_micros,
                journal::held_delta_micros,
            ))
            .load(conn)?;
        let mut rows_of: HashMap<i64, Vec<Row>> = HashMap::new();
        for r in rows {
            rows_of.entry(r.0).or_default().push(r);
        }
        let mut out: Vec<SnapshotRow> = Vec::new();
        let mut cursor_updates: Vec<(i64, NaiveDate, i64)> = Vec::new();
        let mut rewrites: Vec<(i64, NaiveDate)> = Vec::new();
        for s in &mut sweeps {
            if s.day >= pass_end {
                continue;
            }
            let mut mine = rows_of.remove(&s.ctx.account_id).unwrap_or_default();
            mine.sort_by_key(|r| r.1);
            let mut next_row = 0;
            let mut day = s.day.max(pass_start);
            let first_written = day;
            while day < pass_end {
                let lo = day_start(day);
                let hi = lo + Duration::days(1);
                let b = s.ctx.bounds(hi - Duration::seconds(1));
                let prev = s.bounds.unwrap_or(b);
                let mut spent_day = 0i64;
                let mut period_spent = if prev.period_from == b.period_from {
                    s.d.period_spent
                } else {
                    0
                };
                let mut horizon_spent = if prev.horizon_from == b.horizon_from {
                    s.d.horizon_spent
                } else {
                    0
                };
                // Rows before the account's first day of this pass were counted by the
                // snapshots it resumed from.
                while next_row < mine.len() && from_naive(mine[next_row].1) < lo {
                    next_row += 1;
                }
                while next_row < mine.len() && from_naive(mine[next_row].1) < hi {
                    let (_, at, c, ch, h) = mine[next_row];
                    next_row += 1;
                    let at = from_naive(at);
                    s.d.credited += c;
                    s.d.charged += ch;
                    s.d.held += h;
                    spent_day += ch;
                    if at >= b.period_from {
                        period_spent += ch;
                    }
                    if at >= b.horizon_from {
                        horizon_spent += ch;
                    }
                }
                s.d.period_spent = period_spent;
                s.d.horizon_spent = horizon_spent;
                s.d.window_spent = s.last(window_days as usize, spent_day);
                s.d.spent_7d = s.last(7, spent_day);
                s.d.spent_30d = s.last(30, spent_day);
                // The figures as of the following midnight, as a live analysis then sees
                // them: when a budget period starts at that midnight, nothing is spent in it
                // yet (the day's spend counted towards the period that ended).
                let at_midnight = s.ctx.bounds(hi);
                let mut d = s.d;
                if at_midnight.period_from != b.period_from {
                    d.period_spent = 0;
                }
                if at_midnight.horizon_from != b.horizon_from {
                    d.horizon_spent = 0;
                }
                let inputs = s.ctx.inputs(hi, window_len(hi, window_days), &d);
                let figures = analyse(&inputs, &opts.thresholds);
                out.push(snapshot_row(
                    s.ctx.account_id,
                    day,
                    &d,
                    spent_day,
                    &inputs,
                    &figures,
                    window_days,
                    now,
                ));
                s.spends.push_back(spent_day);
                if s.spends.len() > keep {
                    s.spends.pop_front();
                }
                s.bounds = Some(b);
                day = day.succ_opt().unwrap_or(day);
            }
            if day > first_written {
                cursor_updates.push((s.ctx.account_id, day - Duration::days(1), s.seq_seen));
                if let Some(f) = s.rewrite_from.take() {
                    rewrites.push((s.ctx.account_id, f));
                }
            }
            s.day = day;
        }
        let written = out.len() as u64;
        write_transaction(conn, |conn| -> Result<(), LedgerError> {
            // Rewritten days (a recompute after a backfill) replace what was there.
            for (a, from) in &rewrites {
                diesel::delete(
                    burn_snapshots::table
                        .filter(burn_snapshots::account_id.eq(a))
                        .filter(burn_snapshots::day.ge(from)),
                )
                .execute(conn)?;
            }
            insert_snapshots(conn, &out)?;
            upsert_cursors(conn, &cursor_updates)
        })?;
        report.days_written += written;
        pass_start = pass_end;
    }
    // The figures as of `as_of`: the state at the end of yesterday plus today's entries so far.
    let today: Vec<Row> = journal::table
        .filter(journal::effective_at.ge(to_naive(day_start(end_day))))
        .filter(journal::effective_at.lt(to_naive(as_of)))
        .select((
            journal::account_id,
            journal::effective_at,
            journal::credited_delta_micros,
            journal::charged_delta_micros,
            journal::held_delta_micros,
        ))
        .load(conn)?;
    let mut today_of: HashMap<i64, Vec<Row>> = HashMap::new();
    for r in today {
        today_of.entry(r.0).or_default().push(r);
    }
    let mut done = 0u64;
    for s in sweeps {
        let b = s.ctx.bounds(as_of);
        let prev = s.bounds.unwrap_or(b);
        let mut d = s.d;
        let mut spent_today = 0i64;
        if prev.period_from != b.period_from {
            d.period_spent = 0;
        }
        if prev.horizon_from != b.horizon_from {
            d.horizon_spent = 0;
        }
        for (_, at, c, ch, h) in today_of
            .get(&s.ctx.account_id)
            .map(Vec::as_slice)
            .unwrap_or(&[])
        {
            let at = from_naive(*at);
            d.credited += c;
            d.charged += ch;
            d.held += h;
            spent_today += ch;
            if at >= b.period_from {
                d.period_spent += ch;
            }
            if at >= b.horizon_from {
                d.horizon_spent += ch;
            }
        }
        // Windows are whole days before `as_of`'s day plus that day so far.
        d.window_spent = s.last(window_days as usize + 1, spent_today);
        d.spent_7d = s.last(8, spent_today);
        d.spent_30d = s.last(31, spent_today);
        let inputs = s.ctx.inputs(as_of, window_len(as_of, window_days), &d);
        let figures = analyse(&inputs, &opts.thresholds);
        report.current.push(AccountBurn {
            context: s.ctx,
            inputs,
            figures,
        });
        done += 1;
        progress(done, total);
    }
    report.accounts = done;
    write_transaction(conn, |conn| -> Result<(), LedgerError> {
        diesel::insert_into(burn_runs::table)
            .values((
                burn_runs::as_of.eq(to_naive(as_of)),
                // The highest journal id at the start, for the record only: backfills are
                // found by per-account sequence numbers (ids commit out of order).
                burn_runs::journal_watermark.eq(max_id),
                burn_runs::days_written.eq(report.days_written as i64),
                burn_runs::accounts.eq(report.accounts as i64),
                burn_runs::started_at.eq(to_naive(now)),
                burn_runs::finished_at.eq(to_naive(now)),
            ))
            .execute(conn)?;
        Ok(())
    })?;
    Ok(report)
}

/// Loads, for every account with snapshots, the state at the end of the day before its first
/// day: the cumulative figures of that day's snapshot and the daily spends of the days before
/// (the rolling windows). An account whose previous day has no snapshot (the recompute reaches
/// before its first snapshot, or snapshots were removed) starts over from its beginning.
fn resume(
    conn: &mut DbConn,
    sweeps: &mut [Sweep],
    cursors: &HashMap<i64, NaiveDate>,
    firsts: &HashMap<i64, chrono::NaiveDateTime>,
    keep: usize,
) -> Result<(), LedgerError> {
    // Accounts resuming on the same day are loaded together (in a daily run: all of them).
    let mut by_first: HashMap<NaiveDate, Vec<usize>> = HashMap::new();
    for (i, s) in sweeps.iter().enumerate() {
        if cursors.contains_key(&s.ctx.account_id) {
            by_first.entry(s.day).or_default().push(i);
        }
    }
    for (first, idx) in by_first {
        let from = first - Duration::days(keep as i64);
        for chunk in idx.chunks(IDS_PER_QUERY) {
            let ids: Vec<i64> = chunk.iter().map(|&i| sweeps[i].ctx.account_id).collect();
            let rows: Vec<ResumeRow> = burn_snapshots::table
                .filter(burn_snapshots::account_id.eq_any(&ids))
                .filter(burn_snapshots::day.ge(from))
                .filter(burn_snapshots::day.lt(first))
                .order((burn_snapshots::account_id, burn_snapshots::day))
                .select((
                    burn_snapshots::account_id,
                    burn_snapshots::day,
                    burn_snapshots::spent_micros,
                    burn_snapshots::credited_micros,
                    burn_snapshots::charged_micros,
                    burn_snapshots::held_micros,
                    burn_snapshots::period_spent_micros,
                    burn_snapshots::horizon_spent_micros,
                ))
                .load(conn)?;
            let pos: HashMap<i64, usize> = chunk
                .iter()
                .map(|&i| (sweeps[i].ctx.account_id, i))
                .collect();
            let mut last_loaded: HashMap<i64, NaiveDate> = HashMap::new();
            for r in rows {
                let s = &mut sweeps[pos[&r.account_id]];
                s.spends.push_back(r.spent);
                if s.spends.len() > keep {
                    s.spends.pop_front();
                }
                s.d.credited = r.credited;
                s.d.charged = r.charged;
                s.d.held = r.held;
                s.d.period_spent = r.period_spent;
                s.d.horizon_spent = r.horizon_spent;
                last_loaded.insert(r.account_id, r.day);
            }
            let prev = first - Duration::days(1);
            for &i in chunk {
                let s = &mut sweeps[i];
                let a = s.ctx.account_id;
                if last_loaded.get(&a) == Some(&prev) {
                    // The state at the end of `prev`, with the bounds the sweep used that day.
                    s.bounds = Some(s.ctx.bounds(day_start(first) - Duration::seconds(1)));
                } else {
                    s.d = Dynamic::default();
                    s.spends.clear();
                    s.bounds = None;
                    let first_entry: Option<chrono::NaiveDateTime> = match firsts.get(&a) {
                        Some(t) => Some(*t),
                        None => journal::table
                            .filter(journal::account_id.eq(a))
                            .select(diesel::dsl::min(journal::effective_at))
                            .first(conn)?,
                    };
                    s.day = first_entry
                        .map(|t| t.date())
                        .unwrap_or(first)
                        .min(s.ctx.active.start.date_naive())
                        .min(first);
                    // Everything from the new first day is written again.
                    s.rewrite_from = Some(s.day);
                }
            }
        }
    }
    Ok(())
}

/// Snapshots of one account in `[from, to]`, oldest first.
pub fn snapshots(
    conn: &mut DbConn,
    account: &str,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Vec<SnapshotRow>, LedgerError> {
    let id: i64 = accounts::table
        .filter(accounts::name.eq(account))
        .select(accounts::id)
        .get_result(conn)
        .optional()?
        .ok_or_else(|| LedgerError::UnknownAccount(account.to_string()))?;
    Ok(burn_snapshots::table
        .filter(burn_snapshots::account_id.eq(id))
        .filter(burn_snapshots::day.ge(from))
        .filter(burn_snapshots::day.le(to))
        .order(burn_snapshots::day)
        .select(SnapshotRow::as_select())
        .load(conn)?)
}

/// A decimal from a stored variance.
pub fn stored_variance(s: &Option<String>) -> Option<Decimal> {
    s.as_deref().and_then(|v| v.parse().ok())
}
