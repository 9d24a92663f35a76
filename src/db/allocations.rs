//! Allocation schedules: create, pause, resume, and the timer job that credits every period
//! that has come due (`asbb allocations process`).
//!
//! Every credit goes through [`ledger::credit`] with the key `alloc:<schedule>:<period>`, so a
//! period is credited exactly once however often (or concurrently) the job runs, and a run
//! killed at any point leaves either the whole period or nothing. The schedule's cursor
//! (`next_period`, `next_due_at`) and the period's row are written in the same savepoint as its
//! credit. Schedules are visited in (account, id) order, a bounded batch per transaction.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use diesel::prelude::*;

use super::ledger::{self, LedgerError, MoneyOp, NewAccount, OpContext};
use super::models::Account;
use super::schema::{accounts, allocation_pauses, allocation_periods, allocation_schedules};
use super::{write_transaction, DbConn};
use crate::domain::ledger::AccountStatus;
use crate::domain::schedule::{decide, Action, Frequency, Pause, Schedule};
use crate::domain::time::{from_naive, to_naive};
use crate::domain::UsdMicros;

/// Schedules decided per transaction by the timer job: bounds the time PostgreSQL keeps the
/// accounts of a batch locked, while still paying for one commit per batch, not per credit.
pub const SCHEDULES_PER_TRANSACTION: i64 = 200;

/// The advisory lock key of `allocations process` on PostgreSQL (several hosts may run the timer).
const ALLOCATIONS_LOCK: i64 = 0x6173_6262_0005;

/// A schedule as callers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleRecord {
    /// Id (`allocations show ID`).
    pub id: i64,
    /// Account name.
    pub account: String,
    /// Terms.
    pub terms: Schedule,
    /// `active`, `paused` or `finished`.
    pub status: String,
    /// Next period to decide (1-based).
    pub next_period: i64,
    /// When it is due.
    pub next_due: Option<DateTime<Utc>>,
    /// Credited so far.
    pub credited: UsdMicros,
    /// Periods credited.
    pub credited_count: i64,
    /// Periods skipped while paused.
    pub skipped_count: i64,
    /// Free text.
    pub description: String,
    /// Who created it.
    pub created_by: String,
    /// When.
    pub created_at: DateTime<Utc>,
    /// When it finished.
    pub finished_at: Option<DateTime<Utc>>,
}

impl ScheduleRecord {
    /// What is still to be credited of the total.
    pub fn remaining(&self) -> UsdMicros {
        self.terms
            .total
            .checked_sub(self.credited)
            .unwrap_or(UsdMicros::ZERO)
            .max(UsdMicros::ZERO)
    }
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = allocation_schedules)]
pub(crate) struct ScheduleRow {
    pub id: i64,
    pub account_id: i64,
    pub amount_micros: i64,
    pub total_micros: i64,
    pub frequency: String,
    pub starts_at: chrono::NaiveDateTime,
    pub ends_at: chrono::NaiveDateTime,
    pub status: String,
    pub next_period: i64,
    pub next_due_at: Option<chrono::NaiveDateTime>,
    pub credited_micros: i64,
    pub credited_count: i64,
    pub skipped_count: i64,
    pub description: String,
    pub created_by: String,
    pub created_at: chrono::NaiveDateTime,
    pub finished_at: Option<chrono::NaiveDateTime>,
}

impl ScheduleRow {
    pub(crate) fn terms(&self) -> Schedule {
        Schedule {
            start: from_naive(self.starts_at),
            end: from_naive(self.ends_at),
            amount: UsdMicros::from_stored(self.amount_micros),
            total: UsdMicros::from_stored(self.total_micros),
            frequency: self.frequency.parse().unwrap_or(Frequency::Monthly),
        }
    }

    fn record(&self, account: &str) -> ScheduleRecord {
        ScheduleRecord {
            id: self.id,
            account: account.to_string(),
            terms: self.terms(),
            status: self.status.clone(),
            next_period: self.next_period + 1,
            next_due: self.next_due_at.map(from_naive),
            credited: UsdMicros::from_stored(self.credited_micros),
            credited_count: self.credited_count,
            skipped_count: self.skipped_count,
            description: self.description.clone(),
            created_by: self.created_by.clone(),
            created_at: from_naive(self.created_at),
            finished_at: self.finished_at.map(from_naive),
        }
    }
}

/// One decided period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeriodRecord {
    /// 1-based period number.
    pub period: i64,
    /// Due time.
    pub due_at: DateTime<Utc>,
    /// `credited` or `skipped`.
    pub outcome: String,
    /// Credited amount (zero when skipped).
    pub amount: UsdMicros,
    /// The credit's journal entry.
    pub entry_id: Option<i64>,
    /// When the credit took effect.
    pub effective_at: DateTime<Utc>,
    /// Why.
    pub reason: String,
}

/// A pause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PauseRecord {
    /// Start.
    pub paused_at: DateTime<Utc>,
    /// End.
    pub resumed_at: Option<DateTime<Utc>>,
    /// Whether the paused periods were caught up.
    pub catch_up: bool,
    /// Who paused.
    pub paused_by: String,
    /// Why.
    pub reason: String,
}

fn unknown(id: i64) -> LedgerError {
    LedgerError::invalid(
        "SCHEDULE",
        format!("no allocation schedule {id} (see `asbb allocations list`)"),
    )
}

fn account_row(conn: &mut DbConn, name: &str) -> Result<(i64, String), LedgerError> {
    accounts::table
        .filter(accounts::name.eq(name))
        .select((accounts::id, accounts::status))
        .get_result(conn)
        .optional()?
        .ok_or_else(|| LedgerError::UnknownAccount(name.to_string()))
}

/// Adds a schedule to an account. Nothing is credited here: the next `allocations process`
/// (or [`process_schedule`]) credits what is due.
pub fn create_schedule(
    conn: &mut DbConn,
    ctx: &OpContext,
    account: &str,
    terms: &Schedule,
    description: &str,
) -> Result<ScheduleRecord, LedgerError> {
    write_transaction(conn, |conn| {
        let (account_id, status) = account_row(conn, account)?;
        if status == AccountStatus::Closed.as_str() {
            return Err(LedgerError::AccountState {
                account: account.to_string(),
                status: AccountStatus::Closed,
                what: "a closed account gets no allocations".into(),
            });
        }
        let now = to_naive(ctx.recorded_at);
        let id: i64 = diesel::insert_into(allocation_schedules::table)
            .values((
                allocation_schedules::account_id.eq(account_id),
                allocation_schedules::amount_micros.eq(terms.amount.micros()),
                allocation_schedules::total_micros.eq(terms.total.micros()),
                allocation_schedules::frequency.eq(terms.frequency.as_str()),
                allocation_schedules::starts_at.eq(to_naive(terms.start)),
                allocation_schedules::ends_at.eq(to_naive(terms.end)),
                allocation_schedules::status.eq("active"),
                allocation_schedules::next_period.eq(0i64),
                allocation_schedules::next_due_at.eq(Some(to_naive(terms.start))),
                allocation_schedules::description.eq(description),
                allocation_schedules::created_by.eq(&ctx.actor),
                allocation_schedules::created_at.eq(now),
                allocation_schedules::updated_at.eq(now),
            ))
            .returning(allocation_schedules::id)
            .get_result(conn)?;
        load(conn, id)
    })
}

/// Creates an account fed by a schedule (`account create --incremental`), crediting what is
/// already due as of `ctx.effective_at`.
pub fn create_incremental_account(
    conn: &mut DbConn,
    ctx: &OpContext,
    new: &NewAccount,
    terms: &Schedule,
) -> Result<(Account, ScheduleRecord, ProcessReport), LedgerError> {
    let (sched, report) = write_transaction(conn, |conn| {
        ledger::create_account(conn, ctx, new)?;
        let s = create_schedule(
            conn,
            ctx,
            new.name.as_str(),
            terms,
            "created with the account",
        )?;
        let report = process_schedule(conn, ctx, s.id)?;
        Ok::<_, LedgerError>((s, report))
    })?;
    let acct = super::queries::account(conn, new.name.as_str())?;
    let sched = load(conn, sched.id)?;
    Ok((acct, sched, report))
}

/// Reads one schedule.
pub fn load(conn: &mut DbConn, id: i64) -> Result<ScheduleRecord, LedgerError> {
    let (row, name): (ScheduleRow, String) = allocation_schedules::table
        .inner_join(accounts::table)
        .filter(allocation_schedules::id.eq(id))
        .select((ScheduleRow::as_select(), accounts::name))
        .get_result(conn)
        .optional()?
        .ok_or_else(|| unknown(id))?;
    Ok(row.record(&name))
}

/// Schedules, by account and id, optionally of one account.
pub fn list(conn: &mut DbConn, account: Option<&str>) -> Result<Vec<ScheduleRecord>, LedgerError> {
    let mut q = allocation_schedules::table
        .inner_join(accounts::table)
        .select((ScheduleRow::as_select(), accounts::name))
        .order((accounts::name, allocation_schedules::id))
        .into_boxed();
    if let Some(a) = account {
        let (id, _) = account_row(conn, a)?;
        q = q.filter(allocation_schedules::account_id.eq(id));
    }
    let rows: Vec<(ScheduleRow, String)> = q.load(conn)?;
    Ok(rows.iter().map(|(r, n)| r.record(n)).collect())
}

/// The decided periods of a schedule, oldest first.
#[allow(clippy::type_complexity)]
pub fn periods(conn: &mut DbConn, id: i64) -> Result<Vec<PeriodRecord>, LedgerError> {
    let rows: Vec<(
        i64,
        chrono::NaiveDateTime,
        String,
        i64,
        Option<i64>,
        chrono::NaiveDateTime,
        String,
    )> = allocation_periods::table
        .filter(allocation_periods::schedule_id.eq(id))
        .order(allocation_periods::period)
        .select((
            allocation_periods::period,
            allocation_periods::due_at,
            allocation_periods::outcome,
            allocation_periods::amount_micros,
            allocation_periods::entry_id,
            allocation_periods::effective_at,
            allocation_periods::reason,
        ))
        .load(conn)?;
    Ok(rows
        .into_iter()
        .map(
            |(period, due, outcome, amount, entry_id, eff, reason)| PeriodRecord {
                period,
                due_at: from_naive(due),
                outcome,
                amount: UsdMicros::from_stored(amount),
                entry_id,
                effective_at: from_naive(eff),
                reason,
            },
        )
        .collect())
}

/// The pauses of a schedule, oldest first.
pub fn pauses(conn: &mut DbConn, id: i64) -> Result<Vec<PauseRecord>, LedgerError> {
    let rows: Vec<(
        chrono::NaiveDateTime,
        Option<chrono::NaiveDateTime>,
        bool,
        String,
        String,
    )> = allocation_pauses::table
        .filter(allocation_pauses::schedule_id.eq(id))
        .order(allocation_pauses::id)
        .select((
            allocation_pauses::paused_at,
            allocation_pauses::resumed_at,
            allocation_pauses::catch_up,
            allocation_pauses::paused_by,
            allocation_pauses::reason,
        ))
        .load(conn)?;
    Ok(rows
        .into_iter()
        .map(|(p, r, c, by, reason)| PauseRecord {
            paused_at: from_naive(p),
            resumed_at: r.map(from_naive),
            catch_up: c,
            paused_by: by,
            reason,
        })
        .collect())
}

/// What `book` needs besides the schedule row, read for a whole page of schedules at once:
/// each account's name and status, each schedule's pauses.
#[derive(Debug, Default)]
struct PageFacts {
    /// Whether this was loaded for the page (else `book` reads what it needs itself).
    loaded: bool,
    accounts: HashMap<i64, (String, String)>,
    pauses: HashMap<i64, Vec<Pause>>,
}

impl PageFacts {
    fn load(conn: &mut DbConn, rows: &[ScheduleRow]) -> Result<PageFacts, LedgerError> {
        let mut account_ids: Vec<i64> = rows.iter().map(|r| r.account_id).collect();
        account_ids.sort_unstable();
        account_ids.dedup();
        let accounts = accounts::table
            .filter(accounts::id.eq_any(&account_ids))
            .select((accounts::id, accounts::name, accounts::status))
            .load::<(i64, String, String)>(conn)?
            .into_iter()
            .map(|(id, n, s)| (id, (n, s)))
            .collect();
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        let mut pauses: HashMap<i64, Vec<Pause>> = HashMap::new();
        let rows: Vec<(
            i64,
            chrono::NaiveDateTime,
            Option<chrono::NaiveDateTime>,
            bool,
        )> = allocation_pauses::table
            .filter(allocation_pauses::schedule_id.eq_any(&ids))
            .order(allocation_pauses::id)
            .select((
                allocation_pauses::schedule_id,
                allocation_pauses::paused_at,
                allocation_pauses::resumed_at,
                allocation_pauses::catch_up,
            ))
            .load(conn)?;
        for (id, p, r, c) in rows {
            pauses.entry(id).or_default().push(Pause {
                paused_at: from_naive(p),
                resumed_at: r.map(from_naive),
                catch_up: c,
            });
        }
        Ok(PageFacts {
            loaded: true,
            accounts,
            pauses,
        })
    }
}

fn domain_pauses(conn: &mut DbConn, id: i64) -> Result<Vec<Pause>, LedgerError> {
    Ok(pauses(conn, id)?
        .into_iter()
        .map(|p| Pause {
            paused_at: p.paused_at,
            resumed_at: p.resumed_at,
            catch_up: p.catch_up,
        })
        .collect())
}

/// Pauses a schedule as of `ctx.effective_at`: periods due from then on are not credited.
pub fn pause(
    conn: &mut DbConn,
    ctx: &OpContext,
    id: i64,
    reason: &str,
) -> Result<ScheduleRecord, LedgerError> {
    write_transaction(conn, |conn| {
        let s = load(conn, id)?;
        match s.status.as_str() {
            "paused" => return Ok(s),
            "finished" => {
                return Err(LedgerError::invalid(
                    "SCHEDULE",
                    format!("allocation schedule {id} has finished; there is nothing to pause"),
                ))
            }
            _ => {}
        }
        // Periods due before the pause are credited first, so that the pause only withholds
        // what falls inside it.
        process_schedule(conn, ctx, id)?;
        diesel::insert_into(allocation_pauses::table)
            .values((
                allocation_pauses::schedule_id.eq(id),
                allocation_pauses::paused_at.eq(to_naive(ctx.effective_at)),
                allocation_pauses::paused_by.eq(&ctx.actor),
                allocation_pauses::reason.eq(reason),
            ))
            .execute(conn)?;
        diesel::update(allocation_schedules::table.find(id))
            .set((
                allocation_schedules::status.eq("paused"),
                allocation_schedules::updated_at.eq(to_naive(ctx.recorded_at)),
            ))
            .execute(conn)?;
        load(conn, id)
    })
}

/// Resumes a paused schedule as of `ctx.effective_at`. Periods that fell due during the pause
/// are skipped for good, or with `catch_up` credited now. Then credits what is due.
pub fn resume(
    conn: &mut DbConn,
    ctx: &OpContext,
    id: i64,
    catch_up: bool,
) -> Result<(ScheduleRecord, ProcessReport), LedgerError> {
    write_transaction(conn, |conn| {
        let s = load(conn, id)?;
        if s.status != "paused" {
            return Err(LedgerError::invalid(
                "SCHEDULE",
                format!("allocation schedule {id} is {}, not paused", s.status),
            ));
        }
        let open: i64 = allocation_pauses::table
            .filter(allocation_pauses::schedule_id.eq(id))
            .filter(allocation_pauses::resumed_at.is_null())
            .select(allocation_pauses::id)
            .first(conn)?;
        let paused_at: chrono::NaiveDateTime = allocation_pauses::table
            .find(open)
            .select(allocation_pauses::paused_at)
            .first(conn)?;
        if to_naive(ctx.effective_at) < paused_at {
            return Err(LedgerError::invalid(
                "--as-of",
                format!(
                    "the schedule was paused at {} UTC; it cannot resume before that",
                    paused_at
                ),
            ));
        }
        diesel::update(allocation_pauses::table.find(open))
            .set((
                allocation_pauses::resumed_at.eq(Some(to_naive(ctx.effective_at))),
                allocation_pauses::catch_up.eq(catch_up),
                allocation_pauses::resumed_by.eq(Some(&ctx.actor)),
            ))
            .execute(conn)?;
        diesel::update(allocation_schedules::table.find(id))
            .set((
                allocation_schedules::status.eq("active"),
                allocation_schedules::updated_at.eq(to_naive(ctx.recorded_at)),
            ))
            .execute(conn)?;
        let report = process_schedule(conn, ctx, id)?;
        Ok((load(conn, id)?, report))
    })
}

/// One period decided (or, in a dry run, to be decided) by the timer job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeriodOutcome {
    /// Schedule.
    pub schedule_id: i64,
    /// Account.
    pub account: String,
    /// 1-based period.
    pub period: i64,
    /// Due time.
    pub due_at: DateTime<Utc>,
    /// When the credit takes effect.
    pub effective_at: DateTime<Utc>,
    /// `credited`, `skipped`, or `failed`.
    pub outcome: &'static str,
    /// Amount credited (or to be).
    pub amount: UsdMicros,
    /// The journal entry.
    pub entry_id: Option<i64>,
    /// Why a period failed.
    pub error: Option<String>,
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessReport {
    /// Every period decided.
    pub periods: Vec<PeriodOutcome>,
    /// Schedules that finished in this run.
    pub finished: Vec<i64>,
    /// Schedules looked at.
    pub schedules: u64,
}

impl ProcessReport {
    /// Total credited.
    pub fn credited(&self) -> UsdMicros {
        UsdMicros::from_stored(
            self.periods
                .iter()
                .filter(|p| p.outcome == "credited")
                .map(|p| p.amount.micros())
                .sum(),
        )
    }

    /// Periods that failed.
    pub fn failures(&self) -> usize {
        self.periods
            .iter()
            .filter(|p| p.outcome == "failed")
            .count()
    }
}

/// Decides and books one schedule as of `ctx.effective_at` (inside the caller's transaction
/// when there is one).
pub fn process_schedule(
    conn: &mut DbConn,
    ctx: &OpContext,
    id: i64,
) -> Result<ProcessReport, LedgerError> {
    let mut report = ProcessReport::default();
    write_transaction(conn, |conn| {
        let row: ScheduleRow = allocation_schedules::table
            .find(id)
            .select(ScheduleRow::as_select())
            .get_result(conn)
            .optional()?
            .ok_or_else(|| unknown(id))?;
        book(conn, ctx, &row, &PageFacts::default(), false, &mut report)
    })?;
    Ok(report)
}

/// Books the due periods of one schedule (or only reports them in a dry run).
fn book(
    conn: &mut DbConn,
    ctx: &OpContext,
    row: &ScheduleRow,
    facts: &PageFacts,
    dry_run: bool,
    report: &mut ProcessReport,
) -> Result<(), LedgerError> {
    report.schedules += 1;
    if row.status != "active" {
        return Ok(());
    }
    let (name, status) = match facts.accounts.get(&row.account_id) {
        Some((n, s)) => (n.clone(), s.clone()),
        None => accounts::table
            .find(row.account_id)
            .select((accounts::name, accounts::status))
            .get_result::<(String, String)>(conn)?,
    };
    let terms = row.terms();
    let pauses = if facts.loaded {
        facts.pauses.get(&row.id).cloned().unwrap_or_default()
    } else {
        domain_pauses(conn, row.id)?
    };
    let due = decide(
        &terms,
        u32::try_from(row.next_period).unwrap_or(u32::MAX),
        UsdMicros::from_stored(row.credited_micros),
        &pauses,
        ctx.effective_at,
    );
    let closed = status == AccountStatus::Closed.as_str();
    let mut credited = row.credited_micros;
    let (mut n_credited, mut n_skipped) = (row.credited_count, row.skipped_count);
    let mut last_effective = None;
    for a in &due.actions {
        let (k, due_at, effective_at, amount, outcome) = match *a {
            Action::Credit {
                period,
                due,
                effective_at,
                amount,
            } => (period, due, effective_at, amount, "credited"),
            Action::Skip { period, due } => (period, due, due, UsdMicros::ZERO, "skipped"),
        };
        let period = i64::from(k) + 1;
        let mut out = PeriodOutcome {
            schedule_id: row.id,
            account: name.clone(),
            period,
            due_at,
            effective_at,
            outcome,
            amount,
            entry_id: None,
            error: None,
        };
        if dry_run {
            report.periods.push(out);
            continue;
        }
        if closed && outcome == "credited" {
            out.outcome = "failed";
            out.error = Some(format!("budget account '{name}' is closed"));
            report.periods.push(out);
            break;
        }
        let reason = match outcome {
            "credited" => format!(
                "allocation {period} of schedule {} ({} ${} of ${})",
                row.id, terms.frequency, terms.amount, terms.total
            ),
            _ => format!(
                "allocation {period} of schedule {} skipped: schedule paused",
                row.id
            ),
        };
        if outcome == "credited" {
            let key = format!("alloc:{}:{period}", row.id);
            let op_ctx = OpContext {
                actor: ctx.actor.clone(),
                effective_at,
                recorded_at: ctx.recorded_at,
            };
            let posted = ledger::credit(
                conn,
                &op_ctx,
                &MoneyOp {
                    account: &name,
                    amount,
                    reason: &reason,
                    key: &key,
                    job_id: None,
                    partition: None,
                },
            )?;
            out.entry_id = Some(posted.entry.id);
            credited += amount.micros();
            n_credited += 1;
        } else {
            n_skipped += 1;
        }
        diesel::insert_into(allocation_periods::table)
            .values((
                allocation_periods::schedule_id.eq(row.id),
                allocation_periods::period.eq(period),
                allocation_periods::due_at.eq(to_naive(due_at)),
                allocation_periods::outcome.eq(outcome),
                allocation_periods::amount_micros.eq(amount.micros()),
                allocation_periods::entry_id.eq(out.entry_id),
                allocation_periods::effective_at.eq(to_naive(effective_at)),
                allocation_periods::reason.eq(&reason),
                allocation_periods::recorded_at.eq(to_naive(ctx.recorded_at)),
            ))
            .execute(conn)?;
        last_effective = Some(effective_at);
        report.periods.push(out);
    }
    if dry_run
        || (due.actions.is_empty() && !due.finished)
        || report.periods.last().is_some_and(|p| p.outcome == "failed")
    {
        if due.finished && dry_run {
            report.finished.push(row.id);
        }
        return Ok(());
    }
    let finished_at = due
        .finished
        .then(|| last_effective.unwrap_or(ctx.effective_at).min(terms.end));
    diesel::update(allocation_schedules::table.find(row.id))
        .set((
            allocation_schedules::next_period.eq(i64::from(due.next_period)),
            allocation_schedules::next_due_at.eq(due.next_due.map(to_naive)),
            allocation_schedules::credited_micros.eq(credited),
            allocation_schedules::credited_count.eq(n_credited),
            allocation_schedules::skipped_count.eq(n_skipped),
            allocation_schedules::status.eq(if due.finished { "finished" } else { "active" }),
            allocation_schedules::finished_at.eq(finished_at.map(to_naive)),
            allocation_schedules::updated_at.eq(to_naive(ctx.recorded_at)),
        ))
        .execute(conn)?;
    if let Some(at) = finished_at {
        report.finished.push(row.id);
        super::alerts::raise_schedule_finished(
            conn,
            row.id,
            row.account_id,
            &name,
            UsdMicros::from_stored(credited),
            at,
            ctx.recorded_at,
        )?;
    }
    Ok(())
}

/// Which schedules a run looks at.
#[derive(Debug, Clone, Default)]
pub struct ProcessFilter {
    /// Only this account's.
    pub account: Option<String>,
    /// Only this schedule.
    pub schedule: Option<i64>,
}

/// The timer job: credits every period due at or before `ctx.effective_at`, on every active
/// schedule, in bounded batches. With `dry_run` nothing is written.
pub fn process(
    conn: &mut DbConn,
    ctx: &OpContext,
    filter: &ProcessFilter,
    dry_run: bool,
) -> Result<ProcessReport, LedgerError> {
    let account_id = match &filter.account {
        Some(a) => Some(account_row(conn, a)?.0),
        None => None,
    };
    let mut report = ProcessReport::default();
    let mut after: (i64, i64) = (i64::MIN, i64::MIN);
    loop {
        let page = write_transaction(conn, |conn| -> Result<Option<(i64, i64)>, LedgerError> {
            if let DbConn::Postgres(c) = conn {
                diesel::sql_query(format!("SELECT pg_advisory_xact_lock({ALLOCATIONS_LOCK})"))
                    .execute(c)?;
            }
            let mut q = allocation_schedules::table
                .filter(allocation_schedules::status.eq("active"))
                .filter(allocation_schedules::next_due_at.le(to_naive(ctx.effective_at)))
                .filter(
                    allocation_schedules::account_id.gt(after.0).or(
                        allocation_schedules::account_id
                            .eq(after.0)
                            .and(allocation_schedules::id.gt(after.1)),
                    ),
                )
                .order((allocation_schedules::account_id, allocation_schedules::id))
                .limit(SCHEDULES_PER_TRANSACTION)
                .select(ScheduleRow::as_select())
                .into_boxed();
            if let Some(a) = account_id {
                q = q.filter(allocation_schedules::account_id.eq(a));
            }
            if let Some(s) = filter.schedule {
                q = q.filter(allocation_schedules::id.eq(s));
            }
            let rows: Vec<ScheduleRow> = q.load(conn)?;
            let facts = PageFacts::load(conn, &rows)?;
            let mut last = None;
            for row in &rows {
                last = Some((row.account_id, row.id));
                // Each schedule in its own savepoint: one that fails (a closed account, a key
                // conflict) is reported and the others are still booked.
                let mut one = ProcessReport::default();
                let r =
                    write_transaction(conn, |conn| book(conn, ctx, row, &facts, dry_run, &mut one));
                match r {
                    Ok(()) => {
                        report.periods.extend(one.periods);
                        report.finished.extend(one.finished);
                        report.schedules += one.schedules;
                    }
                    Err(e) => {
                        report.schedules += 1;
                        report.periods.push(PeriodOutcome {
                            schedule_id: row.id,
                            account: String::new(),
                            period: row.next_period + 1,
                            due_at: row.next_due_at.map(from_naive).unwrap_or(ctx.effective_at),
                            effective_at: ctx.effective_at,
                            outcome: "failed",
                            amount: UsdMicros::ZERO,
                            entry_id: None,
                            error: Some(e.to_string()),
                        });
                    }
                }
            }
            Ok(if rows.len() < SCHEDULES_PER_TRANSACTION as usize {
                None
            } else {
                last
            })
        })?;
        match page {
            Some(p) => after = p,
            None => break,
        }
    }
    Ok(report)
}
