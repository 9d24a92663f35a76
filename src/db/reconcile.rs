//! Reconciliation and recovery: the batch jobs that turn stored spool records into ledger
//! entries.
//!
//! `reconcile` charges every run with a cost record against its hold (found from the record's
//! `budget_transaction_id`, from the job-end record, or from the job id the hold carries),
//! releases the remainder, charges runs without a hold to their account flagged `unmatched`,
//! applies the refund policy, and leaves costs it cannot book (anonymised or unknown account)
//! waiting in a visible queue. `recover` releases holds whose job will never report a cost and
//! expires holds past their lifetime.
//!
//! Every ledger entry made here has a key derived from the run or the hold, so running either
//! job twice, or two at once, or again after a crash, books nothing twice.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use rust_decimal::Decimal;
use serde::Serialize;

use super::fixed::{bind, fixed};
use super::ledger::{
    self, BatchCharge, BatchRefund, BatchResult, BatchTarget, ChargeHold, ChargeOutcome,
    ChargeUnmatched, LedgerError, MoneyOp, OpContext,
};
use super::models::parse_hold_reference;
use super::pg_batch;
use super::schema::{accounts, cost_records, holds, job_end_records, journal};
use super::{lock_batch, write_transaction, BatchLock, DbConn};
use crate::domain::time::{from_naive, to_naive};
use crate::domain::{EntryKind, HoldState, UsdMicros};
use crate::spool::cost::ANONYMIZED;

/// What `reconcile` does beyond charging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconcilePolicy {
    /// Final job states the user did not cause (upper case), e.g. `NODE_FAIL`.
    pub refund_states: Vec<String>,
    /// Share of the cost refunded for those runs, in percent (0–100).
    pub refund_percent: Decimal,
    /// Records per transaction.
    pub batch_size: usize,
    /// Book a transaction's charges with [`ledger::charge_batch`] (a handful of statements
    /// for the whole batch); off, every run is booked on its own. Both leave the same ledger;
    /// the batch path falls back to one at a time whenever a run needs it.
    pub batch_ledger: bool,
}

impl Default for ReconcilePolicy {
    fn default() -> Self {
        ReconcilePolicy {
            refund_states: vec!["NODE_FAIL".into(), "BOOT_FAIL".into()],
            refund_percent: Decimal::from(100),
            batch_size: 500,
            batch_ledger: true,
        }
    }
}

/// What one reconcile run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReconcileReport {
    /// Runs charged against a hold.
    pub charged: u64,
    /// Of those, runs that cost more than their hold (charged in full, flagged `overrun`).
    pub overruns: u64,
    /// Runs charged without a hold (flagged `unmatched`).
    pub unmatched: u64,
    /// Runs refunded by the refund policy.
    pub refunded: u64,
    /// Runs that cannot be booked yet (`asbb reconcile --pending`).
    pub waiting: u64,
    /// Total charged, in USD.
    pub charged_usd: String,
    /// Transactions committed.
    pub batches: u64,
    /// Of those, transactions whose runs were booked together with a handful of statements;
    /// the others booked their runs one at a time (a run there needed it).
    pub booked_together: u64,
}

/// Why a record waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitReason {
    /// The export hid the account and no hold names it.
    AnonymizedAccount,
    /// No budget account of that name (yet).
    UnknownAccount,
    /// The ledger refused the charge; the detail says why.
    LedgerError,
    /// The job already has a charge booked another way (by hand); charging the export too
    /// would bill it twice.
    AlreadyCharged,
}

impl WaitReason {
    fn as_str(self) -> &'static str {
        match self {
            WaitReason::AnonymizedAccount => "anonymized_account",
            WaitReason::UnknownAccount => "unknown_account",
            WaitReason::LedgerError => "ledger_error",
            WaitReason::AlreadyCharged => "already_charged",
        }
    }
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = cost_records)]
struct CostRow {
    id: i64,
    run_key: String,
    job_id: String,
    job_base: i64,
    run: i64,
    account: String,
    actual_micros: i64,
    producer_estimate_micros: Option<i64>,
    transaction_ref: Option<String>,
    job_state: Option<String>,
    user_name: Option<String>,
    partition: Option<String>,
}

/// Charges every pending or waiting run (or those of one job). `stop` is polled between
/// batches.
pub fn reconcile(
    conn: &mut DbConn,
    ctx: &OpContext,
    policy: &ReconcilePolicy,
    job_base: Option<i64>,
    stop: &dyn Fn() -> bool,
) -> Result<ReconcileReport, LedgerError> {
    let mut report = ReconcileReport::default();
    let mut total = UsdMicros::ZERO;
    let mut after = (i64::MIN, 0i64);
    loop {
        let batch = next_batch(conn, after, job_base, policy.batch_size.max(1))?;
        let Some(last) = batch.last() else { break };
        after = (last.job_base, last.id);
        let (done, together) = write_transaction(conn, |conn| {
            lock_batch(conn, BatchLock::Reconcile)?;
            // Another reconciler may have booked some since we read the batch.
            let ids: Vec<i64> = batch.iter().map(|r| r.id).collect();
            // By primary key, the status compared here: a filter on the status would let the
            // planner walk the status index over every run ever charged.
            let booked: std::collections::HashSet<i64> = cost_records::table
                .filter(cost_records::id.eq_any(&ids))
                .select((cost_records::id, cost_records::status))
                .load::<(i64, String)>(conn)?
                .into_iter()
                .filter(|(_, status)| status == "charged")
                .map(|(id, _)| id)
                .collect();
            let todo: Vec<&CostRow> = batch.iter().filter(|r| !booked.contains(&r.id)).collect();
            if policy.batch_ledger {
                if let Some(out) = reconcile_batch(conn, ctx, policy, &todo)? {
                    return Ok((out, true));
                }
            }
            let mut holds = BatchHolds::load(conn, &todo)?;
            let mut out = Vec::with_capacity(todo.len());
            for &rec in &todo {
                let r = write_transaction(conn, |conn| {
                    reconcile_one(conn, ctx, policy, rec, &mut holds)
                });
                match r {
                    Ok(o) => out.push(o),
                    Err(e) if is_db_failure(&e) => return Err(e),
                    Err(e) => {
                        set_waiting(conn, rec.id, WaitReason::LedgerError, &e.to_string())?;
                        out.push(One::Waiting);
                    }
                }
            }
            Ok::<_, LedgerError>((out, false))
        })?;
        super::checkpoint::between_transactions(conn)?;
        report.batches += 1;
        report.booked_together += u64::from(together);
        for o in done {
            match o {
                One::Charged {
                    held,
                    overrun,
                    refunded,
                    amount,
                } => {
                    if held {
                        report.charged += 1;
                    } else {
                        report.unmatched += 1;
                    }
                    report.overruns += u64::from(overrun);
                    report.refunded += u64::from(refunded);
                    total = total.checked_add(amount)?;
                }
                One::Waiting => report.waiting += 1,
            }
        }
        if stop() {
            break;
        }
    }
    report.charged_usd = total.to_string();
    super::refresh_statistics(
        conn,
        &["cost_records", "holds"],
        report.charged + report.unmatched + report.waiting,
    );
    Ok(report)
}

/// The next `n` runs not yet charged, in job order (`job_base`, then arrival `id`), after the
/// run `after`. Pending and waiting runs are read apart, each an ordered range of the
/// `(status, job_base, id)` index, and merged: a filter on `status <> 'charged'` walks every
/// run ever charged, so an idle reconcile would grow with the history instead of the backlog.
///
/// Job order, not arrival order: jobs are submitted, and their holds placed, in job-id order,
/// while the intake stores files in the order the directory lists them. Charging in job order
/// writes the holds, the journal's keys and the job indexes at neighbouring places, so a batch
/// shares pages instead of dirtying one per run. The runs of one job keep their arrival order
/// (requeues, array tasks).
fn next_batch(
    conn: &mut DbConn,
    after: (i64, i64),
    job_base: Option<i64>,
    n: usize,
) -> Result<Vec<CostRow>, LedgerError> {
    let mut rows = Vec::new();
    for status in ["pending", "waiting"] {
        let mut q = cost_records::table
            .filter(cost_records::status.eq(status))
            // `job_base >= a` bounds the range of the index; the rest skips what was taken.
            .filter(cost_records::job_base.ge(after.0))
            .filter(
                cost_records::job_base
                    .gt(after.0)
                    .or(cost_records::id.gt(after.1)),
            )
            .into_boxed();
        if let Some(b) = job_base {
            q = q.filter(cost_records::job_base.eq(b));
        }
        rows.extend(
            q.select(CostRow::as_select())
                .order((cost_records::job_base, cost_records::id))
                .limit(n as i64)
                .load::<CostRow>(conn)?,
        );
    }
    // Each list holds every run of its status up to its last one, so the `n` first of both
    // are the next `n` of all.
    rows.sort_by_key(|r| (r.job_base, r.id));
    rows.truncate(n);
    Ok(rows)
}

fn is_db_failure(e: &LedgerError) -> bool {
    matches!(e, LedgerError::Db(_))
}

enum One {
    Charged {
        held: bool,
        overrun: bool,
        refunded: bool,
        amount: UsdMicros,
    },
    Waiting,
}

fn set_waiting(
    conn: &mut DbConn,
    id: i64,
    reason: WaitReason,
    detail: &str,
) -> Result<(), LedgerError> {
    diesel::update(cost_records::table.find(id))
        .set((
            cost_records::status.eq("waiting"),
            cost_records::status_reason.eq(reason.as_str()),
            cost_records::status_detail.eq(detail),
        ))
        .execute(conn)?;
    Ok(())
}

/// The open holds a batch of runs may belong to, read once per batch (three queries instead
/// of three per run), and kept up to date as the batch charges them.
struct BatchHolds {
    /// Open holds: id → (estimate, tasks).
    open: HashMap<i64, (i64, Option<i64>)>,
    /// Tasks charged so far, of the open holds.
    tasks_charged: HashMap<i64, i64>,
    /// Hold references from job-end records, newest first, by job base.
    job_end_refs: HashMap<i64, Vec<(String, Option<i64>, i64)>>,
    /// Open holds carrying a job id, oldest first.
    by_job: HashMap<String, Vec<i64>>,
}

impl BatchHolds {
    fn load(conn: &mut DbConn, batch: &[&CostRow]) -> Result<BatchHolds, LedgerError> {
        let bases: Vec<i64> = batch.iter().map(|r| r.job_base).collect();
        let mut job_end_refs: HashMap<i64, Vec<(String, Option<i64>, i64)>> = HashMap::new();
        let rows: Vec<(String, Option<i64>, i64, Option<String>)> = job_end_records::table
            .filter(job_end_records::job_base.eq_any(&bases))
            .filter(job_end_records::hold_ref.is_not_null())
            .select((
                job_end_records::job_id,
                job_end_records::array_task,
                job_end_records::job_base,
                job_end_records::hold_ref,
            ))
            .order(job_end_records::id.desc())
            .load(conn)?;
        let mut candidates: Vec<i64> = batch
            .iter()
            .filter_map(|r| r.transaction_ref.as_deref().and_then(parse_hold_reference))
            .collect();
        for (job, task, base, r) in rows {
            if let Some(id) = r.as_deref().and_then(parse_hold_reference) {
                candidates.push(id);
                job_end_refs.entry(base).or_default().push((job, task, id));
            }
        }
        let mut names: Vec<String> = batch.iter().map(|r| r.job_id.clone()).collect();
        names.extend(bases.iter().map(|b| b.to_string()));
        let mut by_job: HashMap<String, Vec<i64>> = HashMap::new();
        // (job, id, estimate, tasks, tasks charged)
        type OpenHold = (Option<String>, i64, i64, Option<i64>, i64);
        let found: Vec<OpenHold> = holds::table
            .filter(holds::job_id.eq_any(&names))
            .filter(holds::state.eq(HoldState::Open.as_str()))
            .select((
                holds::job_id,
                holds::id,
                holds::estimate_micros,
                holds::tasks,
                holds::tasks_charged,
            ))
            .order(holds::id)
            .load(conn)?;
        let mut open = HashMap::new();
        let mut tasks_charged = HashMap::new();
        for (job, id, estimate, tasks, charged) in found {
            open.insert(id, (estimate, tasks));
            tasks_charged.insert(id, charged);
            if let Some(job) = job {
                by_job.entry(job).or_default().push(id);
            }
        }
        candidates.retain(|id| !open.contains_key(id));
        if !candidates.is_empty() {
            // By id alone, the state checked here: with `state = 'open'` beside `id IN (…)`,
            // SQLite's planner (no statistics on a fresh database) walked the state index,
            // every open hold, for each batch.
            let more: Vec<(i64, String, i64, Option<i64>, i64)> = holds::table
                .filter(holds::id.eq_any(&candidates))
                .select((
                    holds::id,
                    holds::state,
                    holds::estimate_micros,
                    holds::tasks,
                    holds::tasks_charged,
                ))
                .load(conn)?;
            for (id, state, estimate, tasks, charged) in more {
                if state == HoldState::Open.as_str() {
                    open.insert(id, (estimate, tasks));
                    tasks_charged.insert(id, charged);
                }
            }
        }
        Ok(BatchHolds {
            open,
            tasks_charged,
            job_end_refs,
            by_job,
        })
    }

    /// The open hold this run belongs to: the one the export names, else the one its job-end
    /// record carries (job_submit.lua attached it), else one that carries the job id (for an
    /// array task or het component, the job's).
    fn find(&self, rec: &CostRow) -> Option<(i64, i64, Option<i64>)> {
        let open = |id: i64| self.open.get(&id).map(|&(e, t)| (id, e, t));
        if let Some(h) = rec
            .transaction_ref
            .as_deref()
            .and_then(parse_hold_reference)
            .and_then(open)
        {
            return Some(h);
        }
        if let Some(refs) = self.job_end_refs.get(&rec.job_base) {
            for (job, task, id) in refs {
                if (*job == rec.job_id || task.is_some()) && self.open.contains_key(id) {
                    return open(*id);
                }
            }
        }
        let base = rec.job_base.to_string();
        for name in [&rec.job_id, &base] {
            if let Some(h) = self
                .by_job
                .get(name)
                .and_then(|ids| ids.iter().find_map(|&id| open(id)))
            {
                return Some(h);
            }
        }
        None
    }

    /// After a charge: a hold that resolved is no longer a candidate.
    fn charged(&mut self, id: i64, still_open: bool) {
        if let Some(n) = self.tasks_charged.get_mut(&id) {
            *n += 1;
        }
        if !still_open {
            self.open.remove(&id);
        }
    }

    /// Whether a hold stays open after one more charge, as the ledger decides it: a plain hold
    /// resolves with its charge, an array hold with the charge of its last task.
    fn open_after_charge(&self, id: i64) -> bool {
        let tasks = self.open.get(&id).and_then(|&(_, t)| t);
        let charged = self.tasks_charged.get(&id).copied().unwrap_or(0) + 1;
        tasks.is_some_and(|n| charged < n)
    }
}

fn reconcile_one(
    conn: &mut DbConn,
    ctx: &OpContext,
    policy: &ReconcilePolicy,
    rec: &CostRow,
    holds: &mut BatchHolds,
) -> Result<One, LedgerError> {
    let actual = UsdMicros::from_stored(rec.actual_micros);
    let key = format!("charge:run:{}", rec.run_key);
    let run_note = run_note(rec);
    let hold = holds.find(rec);
    let (outcome, estimate): (ChargeOutcome, Option<i64>) = match hold {
        Some((hold_id, estimate, tasks)) => {
            let reason = format!("actual cost of job {}{run_note}", rec.job_id);
            let o = ledger::charge_hold(
                conn,
                ctx,
                &ChargeHold {
                    hold_id,
                    actual,
                    job_id: Some(&rec.job_id),
                    reason: &reason,
                    key: &key,
                },
            )?;
            holds.charged(
                hold_id,
                o.hold.as_ref().is_some_and(|h| h.state == HoldState::Open),
            );
            // An array hold's estimate covers all its tasks; each task expected its share.
            let per_run = match tasks {
                Some(n) if n > 0 => estimate / n,
                _ => estimate,
            };
            (o, Some(per_run))
        }
        None => {
            if let Some((why, detail)) = waiting_reason(rec) {
                set_waiting(conn, rec.id, why, &detail)?;
                return Ok(One::Waiting);
            }
            let known: Option<i64> = accounts::table
                .filter(accounts::name.eq(&rec.account))
                .select(accounts::id)
                .get_result(conn)
                .optional()?;
            if known.is_none() {
                set_waiting(
                    conn,
                    rec.id,
                    WaitReason::UnknownAccount,
                    &unknown_account_detail(rec),
                )?;
                return Ok(One::Waiting);
            }
            // A charge for this job booked by hand (`asbb reconcile JOB --transaction`,
            // `asbb charge`) means the export would bill it twice: an admin decides.
            let by_hand: Option<(i64, String)> = journal::table
                .filter(journal::job_id.eq(&rec.job_id))
                .filter(journal::kind.eq(EntryKind::Charge.as_str()))
                .filter(journal::idempotency_key.not_like(format!("charge:run:{}#%", rec.job_id)))
                .select((journal::id, journal::idempotency_key))
                .first(conn)
                .optional()?;
            if let Some((entry, _)) = by_hand {
                set_waiting(
                    conn,
                    rec.id,
                    WaitReason::AlreadyCharged,
                    &already_charged_detail(rec, entry),
                )?;
                return Ok(One::Waiting);
            }
            let reason = format!("actual cost of job {}{run_note}; no hold found", rec.job_id);
            let o = ledger::charge_without_hold(
                conn,
                ctx,
                &ChargeUnmatched {
                    account: &rec.account,
                    amount: actual,
                    partition: rec.partition.as_deref(),
                    cluster: None,
                    job_id: Some(&rec.job_id),
                    user_name: rec.user_name.as_deref(),
                    reason: &reason,
                    key: &key,
                },
            )?;
            (o, rec.producer_estimate_micros)
        }
    };
    let account = outcome.account.name.clone();
    let partition = outcome.charge.partition.clone();
    let refund = match policy_refund(policy, rec)? {
        Some((amount, reason)) => {
            let posted = ledger::refund(
                conn,
                ctx,
                &MoneyOp {
                    account: &account,
                    amount,
                    reason: &reason,
                    key: &format!("refund:run:{}", rec.run_key),
                    job_id: Some(&rec.job_id),
                    partition: partition.as_deref(),
                },
            )?;
            Some(posted.entry.id)
        }
        None => None,
    };
    mark_charged(
        conn,
        &charged_run(
            rec,
            outcome.hold.as_ref().map(|h| h.id),
            outcome.charge.id,
            refund,
            estimate,
            &account,
            partition.as_deref(),
        ),
        to_naive(ctx.effective_at),
    )?;
    Ok(One::Charged {
        held: outcome.hold.is_some(),
        overrun: !outcome.overrun.is_zero(),
        refunded: refund.is_some(),
        amount: actual,
    })
}

const MARK_CHARGED: &[&str] = &[
    "UPDATE cost_records SET status = 'charged', status_reason = '', status_detail = '', \
     hold_id = ",
    ", charge_entry_id = ",
    ", refund_entry_id = ",
    ", estimate_micros = ",
    ", charged_account = ",
    ", charged_partition = ",
    ", reconciled_at = ",
    " WHERE id = ",
    "",
];

/// What a run was booked as. The partition it ran in is the booking's (its hold's), else what
/// the export says.
fn charged_run<'a>(
    rec: &'a CostRow,
    hold_id: Option<i64>,
    charge_entry: i64,
    refund_entry: Option<i64>,
    estimate: Option<i64>,
    account: &'a str,
    partition: Option<&'a str>,
) -> pg_batch::ChargedRun<'a> {
    pg_batch::ChargedRun {
        id: rec.id,
        hold_id,
        charge_entry,
        refund_entry,
        estimate,
        account,
        partition: partition.or(rec.partition.as_deref()),
    }
}

/// Marks a run charged, with links to what booked it (the row-by-row form of
/// [`pg_batch::mark_charged`]).
fn mark_charged(
    conn: &mut DbConn,
    run: &pg_batch::ChargedRun<'_>,
    reconciled_at: chrono::NaiveDateTime,
) -> Result<(), LedgerError> {
    use diesel::sql_types::{BigInt, Nullable, Text, Timestamp};
    on_backend!(conn, |c| fixed(
        MARK_CHARGED,
        (
            bind::<Nullable<BigInt>, _>(run.hold_id),
            bind::<Nullable<BigInt>, _>(Some(run.charge_entry)),
            bind::<Nullable<BigInt>, _>(run.refund_entry),
            bind::<Nullable<BigInt>, _>(run.estimate),
            bind::<Nullable<Text>, _>(Some(run.account)),
            bind::<Nullable<Text>, _>(run.partition),
            bind::<Nullable<Timestamp>, _>(Some(reconciled_at)),
            bind::<BigInt, _>(run.id),
        )
    )
    .execute(c))?;
    Ok(())
}

/// Why a run cannot be booked yet, if it cannot: shared by both paths so that they agree.
fn waiting_reason(rec: &CostRow) -> Option<(WaitReason, String)> {
    (rec.account == ANONYMIZED).then(|| {
        (
            WaitReason::AnonymizedAccount,
            "the export hides the account and no hold names this job; assign it with `asbb reconcile --job J --account A`".to_string(),
        )
    })
}

fn unknown_account_detail(rec: &CostRow) -> String {
    format!(
        "no budget account '{}'; create it (`asbb account create`) or assign the run with `asbb reconcile --job J --account A`",
        rec.account
    )
}

fn already_charged_detail(rec: &CostRow, entry: i64) -> String {
    format!(
        "job {} already has a charge booked by hand (entry {entry}); if this cost is extra, book it with `asbb charge --account`",
        rec.job_id
    )
}

fn run_note(rec: &CostRow) -> String {
    if rec.run > 0 {
        format!(" (run {} after requeue)", rec.run)
    } else {
        String::new()
    }
}

/// The refund the policy gives a run: its amount and reason.
fn policy_refund(
    policy: &ReconcilePolicy,
    rec: &CostRow,
) -> Result<Option<(UsdMicros, String)>, LedgerError> {
    let actual = UsdMicros::from_stored(rec.actual_micros);
    let Some(state) = rec.job_state.as_deref() else {
        return Ok(None);
    };
    if policy.refund_percent <= Decimal::ZERO
        || !policy.refund_states.iter().any(|s| s == state)
        || actual.is_zero()
    {
        return Ok(None);
    }
    let amount = actual.mul_decimal(policy.refund_percent / Decimal::from(100))?;
    if amount.is_zero() {
        return Ok(None);
    }
    let reason = format!(
        "refund policy: job {} ended {state}, which the user did not cause; {}% of ${actual}",
        rec.job_id,
        policy.refund_percent.normalize()
    );
    Ok(Some((amount, reason)))
}

/// Books a transaction's runs with [`ledger::charge_batch`]. `None` when some run needs the
/// one-at-a-time path (nothing was written then, and the caller books the batch that way).
fn reconcile_batch(
    conn: &mut DbConn,
    ctx: &OpContext,
    policy: &ReconcilePolicy,
    todo: &[&CostRow],
) -> Result<Option<Vec<One>>, LedgerError> {
    let mut holds = BatchHolds::load(conn, todo)?;
    // Which accounts exist, and which jobs have charges booked by hand, for the runs that
    // may have no hold: one query each.
    let names: Vec<&str> = todo
        .iter()
        .map(|r| r.account.as_str())
        .filter(|a| *a != ANONYMIZED)
        .collect();
    let mut known = std::collections::HashSet::new();
    for chunk in names.chunks(500) {
        let found: Vec<String> = on_backend!(conn, |c| accounts::table
            .filter(accounts::name.eq_any(chunk))
            .select(accounts::name)
            .load(c))?;
        known.extend(found);
    }
    let jobs: Vec<&str> = todo.iter().map(|r| r.job_id.as_str()).collect();
    let mut by_hand: HashMap<String, i64> = HashMap::new();
    for chunk in jobs.chunks(500) {
        let found: Vec<(i64, Option<String>, String)> = on_backend!(conn, |c| journal::table
            .filter(journal::job_id.eq_any(chunk))
            .filter(journal::kind.eq(EntryKind::Charge.as_str()))
            .select((journal::id, journal::job_id, journal::idempotency_key))
            .order(journal::id)
            .load(c))?;
        for (id, job, key) in found {
            let Some(job) = job else { continue };
            if !key.starts_with(&format!("charge:run:{job}#")) {
                by_hand.entry(job).or_insert(id);
            }
        }
    }
    enum Plan {
        Wait(WaitReason, String),
        Charge {
            hold: Option<(i64, bool)>,
            estimate: Option<i64>,
        },
    }
    struct Texts {
        key: String,
        reason: String,
        refund: Option<(UsdMicros, String, String)>,
    }
    let mut plans = Vec::with_capacity(todo.len());
    let mut texts = Vec::with_capacity(todo.len());
    for rec in todo {
        let key = format!("charge:run:{}", rec.run_key);
        let hold = holds.find(rec);
        let plan = match hold {
            Some((hold_id, estimate, tasks)) => {
                let open = holds.open_after_charge(hold_id);
                holds.charged(hold_id, open);
                let per_run = match tasks {
                    Some(n) if n > 0 => estimate / n,
                    _ => estimate,
                };
                Plan::Charge {
                    hold: Some((hold_id, open)),
                    estimate: Some(per_run),
                }
            }
            None => match waiting_reason(rec) {
                Some((why, detail)) => Plan::Wait(why, detail),
                None if !known.contains(&rec.account) => {
                    Plan::Wait(WaitReason::UnknownAccount, unknown_account_detail(rec))
                }
                None => match by_hand.get(&rec.job_id) {
                    Some(&entry) => Plan::Wait(
                        WaitReason::AlreadyCharged,
                        already_charged_detail(rec, entry),
                    ),
                    None => Plan::Charge {
                        hold: None,
                        estimate: rec.producer_estimate_micros,
                    },
                },
            },
        };
        let reason = match &plan {
            Plan::Charge { hold: Some(_), .. } => {
                format!("actual cost of job {}{}", rec.job_id, run_note(rec))
            }
            _ => format!(
                "actual cost of job {}{}; no hold found",
                rec.job_id,
                run_note(rec)
            ),
        };
        let refund = policy_refund(policy, rec)?
            .map(|(amount, why)| (amount, why, format!("refund:run:{}", rec.run_key)));
        texts.push(Texts {
            key,
            reason,
            refund,
        });
        plans.push(plan);
    }
    let mut items = Vec::with_capacity(todo.len());
    for ((rec, plan), t) in todo.iter().zip(&plans).zip(&texts) {
        let Plan::Charge { hold, .. } = plan else {
            continue;
        };
        let actual = UsdMicros::from_stored(rec.actual_micros);
        let target = match hold {
            Some((hold_id, _)) => BatchTarget::Hold(ChargeHold {
                hold_id: *hold_id,
                actual,
                job_id: Some(&rec.job_id),
                reason: &t.reason,
                key: &t.key,
            }),
            None => BatchTarget::Unmatched(ChargeUnmatched {
                account: &rec.account,
                amount: actual,
                partition: rec.partition.as_deref(),
                cluster: None,
                job_id: Some(&rec.job_id),
                user_name: rec.user_name.as_deref(),
                reason: &t.reason,
                key: &t.key,
            }),
        };
        items.push(BatchCharge {
            target,
            refund: t.refund.as_ref().map(|(amount, reason, key)| BatchRefund {
                amount: *amount,
                reason,
                job_id: Some(&rec.job_id),
                key,
            }),
        });
    }
    let booked = match ledger::charge_batch(conn, ctx, &items)? {
        BatchResult::Booked(b) => b,
        BatchResult::OneByOne { index, why } => {
            tracing::debug!(index, why, "reconcile books this batch one run at a time");
            return Ok(None);
        }
    };
    let mut booked = booked.iter();
    let mut out = Vec::with_capacity(todo.len());
    let mut charged: Vec<pg_batch::ChargedRun<'_>> = Vec::with_capacity(todo.len());
    for (rec, plan) in todo.iter().zip(plans) {
        match plan {
            Plan::Wait(why, detail) => {
                set_waiting(conn, rec.id, why, &detail)?;
                out.push(One::Waiting);
            }
            Plan::Charge { hold, estimate } => {
                let b = booked.next().expect("one booking per charge");
                // The plan foresaw how the ledger resolves each hold; later runs relied on it.
                assert_eq!(
                    b.hold_id.map(|id| (id, b.hold_open)),
                    hold,
                    "reconcile planned a hold differently than the ledger booked it"
                );
                charged.push(charged_run(
                    rec,
                    b.hold_id,
                    b.charge_entry,
                    b.refund_entry,
                    estimate,
                    &b.account,
                    b.partition.as_deref(),
                ));
                out.push(One::Charged {
                    held: b.hold_id.is_some(),
                    overrun: !b.overrun.is_zero(),
                    refunded: b.refund_entry.is_some(),
                    amount: UsdMicros::from_stored(rec.actual_micros),
                });
            }
        }
    }
    let at = to_naive(ctx.effective_at);
    match conn {
        DbConn::Postgres(c) => pg_batch::mark_charged(c, &charged, at)?,
        DbConn::Sqlite(_) => {
            for run in &charged {
                mark_charged(conn, run, at)?;
            }
        }
    }
    Ok(Some(out))
}

/// Assigns the waiting runs of a job to an account (for anonymised exports), so the next
/// reconcile charges them there. Returns how many runs were assigned.
pub fn assign_account(
    conn: &mut DbConn,
    job_base: i64,
    account: &str,
) -> Result<usize, LedgerError> {
    let known: Option<i64> = accounts::table
        .filter(accounts::name.eq(account))
        .select(accounts::id)
        .get_result(conn)
        .optional()?;
    if known.is_none() {
        return Err(LedgerError::UnknownAccount(account.to_string()));
    }
    Ok(diesel::update(
        cost_records::table
            .filter(cost_records::job_base.eq(job_base))
            .filter(cost_records::status.ne("charged")),
    )
    .set(cost_records::account.eq(account))
    .execute(conn)?)
}

/// A run that is not booked yet.
#[derive(Debug, Clone, Serialize)]
pub struct PendingRun {
    /// Record id.
    pub id: i64,
    /// Job.
    pub job: String,
    /// Run number.
    pub run: i64,
    /// Account as exported.
    pub account: String,
    /// Actual cost (USD).
    pub actual: String,
    /// `pending` (not reconciled yet) or `waiting`.
    pub status: String,
    /// Why it waits.
    pub reason: String,
    /// What to do.
    pub detail: String,
    /// When it arrived.
    pub received_at: DateTime<Utc>,
}

/// Runs that are not booked yet, oldest first.
pub fn pending(conn: &mut DbConn) -> Result<Vec<PendingRun>, LedgerError> {
    type Row = (
        i64,
        String,
        i64,
        String,
        i64,
        String,
        String,
        String,
        NaiveDateTime,
    );
    let rows: Vec<Row> = cost_records::table
        .filter(cost_records::status.ne("charged"))
        .select((
            cost_records::id,
            cost_records::job_id,
            cost_records::run,
            cost_records::account,
            cost_records::actual_micros,
            cost_records::status,
            cost_records::status_reason,
            cost_records::status_detail,
            cost_records::received_at,
        ))
        .order(cost_records::id)
        .load(conn)?;
    Ok(rows
        .into_iter()
        .map(
            |(id, job, run, account, actual, status, reason, detail, at)| PendingRun {
                id,
                job,
                run,
                account,
                actual: UsdMicros::from_stored(actual).to_string(),
                status,
                reason,
                detail,
                received_at: from_naive(at),
            },
        )
        .collect())
}

// ---------------------------------------------------------------------------------------------
// Recovery

/// What `recover` releases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoverPolicy {
    /// How long after a job ended its cost may still arrive.
    pub grace: Duration,
}

/// What one recover run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RecoverReport {
    /// Holds of jobs cancelled before they started.
    pub released_cancelled: u64,
    /// Holds of jobs that ended without a cost record within the grace period.
    pub released_no_cost: u64,
    /// Holds released because `sacct` reported their job finished long ago.
    pub released_by_sacct: u64,
    /// Holds past their lifetime.
    pub expired: u64,
    /// Problems that did not stop the run.
    pub errors: Vec<String>,
}

/// What SLURM says about a job that has no job-end record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SacctJob {
    /// Job id.
    pub job_id: String,
    /// Final state, upper case.
    pub state: String,
    /// End time, if it ended.
    pub ended_at: Option<DateTime<Utc>>,
}

/// Open holds with a job id and no job-end record, older than `before`: the jobs to ask SLURM
/// about.
pub fn unresolved_jobs(
    conn: &mut DbConn,
    before: DateTime<Utc>,
) -> Result<Vec<String>, LedgerError> {
    let ids: Vec<Option<String>> = holds::table
        .filter(holds::state.eq(HoldState::Open.as_str()))
        .filter(holds::job_id.is_not_null())
        .filter(holds::created_at.le(to_naive(before)))
        .select(holds::job_id)
        .order(holds::id)
        .load(conn)?;
    let mut out = Vec::new();
    for id in ids.into_iter().flatten() {
        let seen: i64 = job_end_records::table
            .filter(job_end_records::job_id.eq(&id))
            .count()
            .get_result(conn)?;
        if seen == 0 {
            out.push(id);
        }
    }
    Ok(out)
}

/// Releases holds whose jobs will never report a cost, and expires holds past their lifetime.
/// `sacct` carries what SLURM said about jobs without a job-end record (empty when not asked).
pub fn recover(
    conn: &mut DbConn,
    ctx: &OpContext,
    policy: &RecoverPolicy,
    sacct: &[SacctJob],
) -> Result<RecoverReport, LedgerError> {
    let mut report = RecoverReport::default();
    let now = ctx.effective_at;
    let grace = chrono::Duration::from_std(policy.grace).unwrap_or(chrono::Duration::days(1));
    let cutoff = to_naive(now - grace);

    // Job-end records whose hold is still open.
    type JobEnd = (
        String,
        i64,
        Option<i64>,
        Option<NaiveDateTime>,
        NaiveDateTime,
        Option<String>,
        String,
    );
    let ends: Vec<JobEnd> = job_end_records::table
        .select((
            job_end_records::job_id,
            job_end_records::job_base,
            job_end_records::array_task,
            job_end_records::started_at,
            job_end_records::ended_at,
            job_end_records::hold_ref,
            job_end_records::state,
        ))
        .order(job_end_records::id)
        .load(conn)?;
    let mut handled: Vec<i64> = Vec::new();
    for (job_id, base, task, started, ended, hold_ref, state) in ends {
        let hold = match hold_ref.as_deref().and_then(parse_hold_reference) {
            Some(id) => Some(id),
            None => holds::table
                .filter(holds::job_id.eq_any([job_id.clone(), base.to_string()]))
                .filter(holds::state.eq(HoldState::Open.as_str()))
                .select(holds::id)
                .order(holds::id)
                .first::<i64>(conn)
                .optional()?,
        };
        let Some(hold_id) = hold else { continue };
        if handled.contains(&hold_id) {
            continue;
        }
        let open: Option<(Option<i64>, i64)> = holds::table
            .find(hold_id)
            .filter(holds::state.eq(HoldState::Open.as_str()))
            .select((holds::tasks, holds::tasks_charged))
            .get_result(conn)
            .optional()?;
        let Some((tasks, _)) = open else { continue };
        let costs: i64 = cost_records::table
            .filter(cost_records::job_base.eq(base))
            .count()
            .get_result(conn)?;
        let (key, reason, cancelled) = if started.is_none() && task.is_none() && costs == 0 {
            (
                format!("recover:cancelled:hold-{hold_id}"),
                format!("job {job_id} ended {state} before it started"),
                true,
            )
        } else if ended <= cutoff && costs == 0 && tasks.is_none() {
            (
                format!("recover:no-cost:hold-{hold_id}"),
                format!(
                    "job {job_id} ended {state} at {} UTC and no cost arrived within {}",
                    ended,
                    humantime(policy.grace)
                ),
                false,
            )
        } else if let Some(n) = tasks {
            // An array: release what is left once every task has ended, the last of them
            // longer ago than the grace period.
            let (count, last): (i64, Option<NaiveDateTime>) = job_end_records::table
                .filter(job_end_records::job_base.eq(base))
                .select((
                    diesel::dsl::count_star(),
                    diesel::dsl::max(job_end_records::ended_at),
                ))
                .get_result(conn)?;
            match last {
                Some(last) if count >= n && last <= cutoff => (
                    format!("recover:array-ended:hold-{hold_id}"),
                    format!(
                        "all {n} tasks of array {base} ended, the last at {last} UTC; no further cost within {}",
                        humantime(policy.grace)
                    ),
                    false,
                ),
                _ => continue,
            }
        } else {
            continue;
        };
        handled.push(hold_id);
        match ledger::release_hold(conn, ctx, hold_id, &reason, &key) {
            Ok(r) if !r.replayed => {
                if cancelled {
                    report.released_cancelled += 1;
                } else {
                    report.released_no_cost += 1;
                }
            }
            Ok(_) => {}
            Err(LedgerError::HoldResolved { .. }) => {}
            Err(e) if is_db_failure(&e) => return Err(e),
            Err(e) => report.errors.push(format!("hold-{hold_id}: {e}")),
        }
    }

    // What SLURM said about jobs without a job-end record.
    for j in sacct {
        let Some(end) = j.ended_at else { continue };
        if to_naive(end) > cutoff || !is_terminal(&j.state) {
            continue;
        }
        let base = j
            .job_id
            .split(['_', '+'])
            .next()
            .unwrap_or(&j.job_id)
            .to_string();
        let costs: i64 = cost_records::table
            .filter(cost_records::job_id.eq(&j.job_id))
            .count()
            .get_result(conn)?;
        if costs > 0 {
            continue;
        }
        let ids: Vec<i64> = holds::table
            .filter(holds::job_id.eq_any([j.job_id.clone(), base]))
            .filter(holds::state.eq(HoldState::Open.as_str()))
            .filter(holds::tasks.is_null())
            .select(holds::id)
            .load(conn)?;
        for hold_id in ids {
            let reason = format!(
                "sacct: job {} ended {} at {} UTC and no cost arrived within {}",
                j.job_id,
                j.state,
                to_naive(end),
                humantime(policy.grace)
            );
            match ledger::release_hold(
                conn,
                ctx,
                hold_id,
                &reason,
                &format!("recover:sacct:hold-{hold_id}"),
            ) {
                Ok(r) if !r.replayed => report.released_by_sacct += 1,
                Ok(_) | Err(LedgerError::HoldResolved { .. }) => {}
                Err(e) if is_db_failure(&e) => return Err(e),
                Err(e) => report.errors.push(format!("hold-{hold_id}: {e}")),
            }
        }
    }

    // Holds past their lifetime.
    let expired: Vec<i64> = holds::table
        .filter(holds::state.eq(HoldState::Open.as_str()))
        .filter(holds::expires_at.le(to_naive(now)))
        .select(holds::id)
        .order(holds::id)
        .load(conn)?;
    for hold_id in expired {
        match ledger::expire_hold(conn, ctx, hold_id, &format!("expiry:hold-{hold_id}")) {
            Ok(r) if !r.replayed => report.expired += 1,
            Ok(_) | Err(LedgerError::HoldResolved { .. }) => {}
            Err(e) if is_db_failure(&e) => return Err(e),
            Err(e) => report.errors.push(format!("hold-{hold_id}: {e}")),
        }
    }
    Ok(report)
}

/// SLURM states after which a job never runs again.
pub fn is_terminal(state: &str) -> bool {
    matches!(
        state,
        "COMPLETED"
            | "FAILED"
            | "CANCELLED"
            | "TIMEOUT"
            | "NODE_FAIL"
            | "OUT_OF_MEMORY"
            | "BOOT_FAIL"
            | "DEADLINE"
            | "PREEMPTED"
            | "REVOKED"
    )
}

fn humantime(d: Duration) -> String {
    let s = d.as_secs();
    if s % 86_400 == 0 && s > 0 {
        format!("{}d", s / 86_400)
    } else if s % 3_600 == 0 && s > 0 {
        format!("{}h", s / 3_600)
    } else if s % 60 == 0 && s > 0 {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

// ---------------------------------------------------------------------------------------------
// Estimate vs actual

/// Accuracy of estimates for one account and partition (or the total).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Accuracy {
    /// Account (`*` for the total).
    pub account: String,
    /// Partition (`*` for all, empty when unknown).
    pub partition: String,
    /// Runs with both an estimate and an actual cost.
    pub runs: u64,
    /// Runs whose estimate was within ±10 % of the actual cost.
    pub within_10pct: u64,
    /// `within_10pct / runs` in percent, two decimals.
    pub within_10pct_share: String,
    /// Mean absolute error, USD.
    pub mean_abs_error: String,
    /// Mean estimate, USD.
    pub mean_estimate: String,
    /// Mean actual, USD.
    pub mean_actual: String,
    /// Sum of estimates ÷ sum of actuals, four decimals (above 1 means overestimated).
    pub bias: String,
}

#[derive(Default)]
struct Acc {
    runs: i64,
    within: i64,
    abs_err: i128,
    est: i128,
    act: i128,
}

impl Acc {
    fn add(&mut self, est: i64, act: i64) {
        self.runs += 1;
        let diff = (i128::from(est) - i128::from(act)).abs();
        // Within ±10 % of the actual cost (exact integer comparison).
        if diff * 10 <= i128::from(act) {
            self.within += 1;
        }
        self.abs_err += diff;
        self.est += i128::from(est);
        self.act += i128::from(act);
    }

    fn finish(&self, account: &str, partition: &str) -> Accuracy {
        let mean = |total: i128| -> String {
            if self.runs == 0 {
                return "0.00".into();
            }
            let m = Decimal::from_i128_with_scale(total, 6) / Decimal::from(self.runs);
            UsdMicros::from_decimal(m.round_dp(6))
                .map(|u| u.to_string())
                .unwrap_or_default()
        };
        let share = if self.runs == 0 {
            Decimal::ZERO
        } else {
            (Decimal::from(self.within) * Decimal::from(100) / Decimal::from(self.runs)).round_dp(2)
        };
        let bias = if self.act == 0 {
            "-".to_string()
        } else {
            (Decimal::from_i128_with_scale(self.est, 0)
                / Decimal::from_i128_with_scale(self.act, 0))
            .round_dp(4)
            .to_string()
        };
        Accuracy {
            account: account.to_string(),
            partition: partition.to_string(),
            runs: self.runs as u64,
            within_10pct: self.within as u64,
            within_10pct_share: format!("{share:.2}"),
            mean_abs_error: mean(self.abs_err),
            mean_estimate: mean(self.est),
            mean_actual: mean(self.act),
            bias,
        }
    }
}

/// Estimate-vs-actual accuracy of runs reconciled in `[from, to)`, by account and partition,
/// with a total row last.
pub fn accuracy(
    conn: &mut DbConn,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<Accuracy>, LedgerError> {
    type Row = (Option<String>, Option<String>, Option<i64>, i64);
    let rows: Vec<Row> = cost_records::table
        .filter(cost_records::status.eq("charged"))
        .filter(cost_records::estimate_micros.is_not_null())
        .filter(cost_records::reconciled_at.ge(to_naive(from)))
        .filter(cost_records::reconciled_at.lt(to_naive(to)))
        .select((
            cost_records::charged_account,
            cost_records::charged_partition,
            cost_records::estimate_micros,
            cost_records::actual_micros,
        ))
        .load(conn)?;
    let mut groups: std::collections::BTreeMap<(String, String), Acc> = Default::default();
    let mut total = Acc::default();
    for (acct, part, est, act) in rows {
        let Some(est) = est else { continue };
        groups
            .entry((acct.unwrap_or_default(), part.unwrap_or_default()))
            .or_default()
            .add(est, act);
        total.add(est, act);
    }
    let mut out: Vec<Accuracy> = groups
        .iter()
        .map(|((a, p), acc)| acc.finish(a, p))
        .collect();
    out.push(total.finish("*", "*"));
    Ok(out)
}
