//! Set-based writes for PostgreSQL: a whole batch of rows in one statement, each column bound
//! as one array and taken apart by `unnest`.
//!
//! SQLite runs in the process, and a prepared statement executed once per row costs a few
//! microseconds there. PostgreSQL answers every statement over a socket, and each one also
//! pays the server's start and end of an executor; a reconcile batch of 500 runs used to send
//! about 1,200 of them. The statements here have fixed text (the number of rows is in the
//! arrays, not in the SQL), so the server plans each one once per connection, however large
//! the batch.
//!
//! Each function writes what the SQLite path of its caller writes (row by row, or in multi-row
//! inserts), with the same values; the callers choose by backend.

use chrono::NaiveDateTime;
use diesel::pg::PgConnection;
use diesel::sql_types::{Array, BigInt, Nullable, Text, Timestamp};
use diesel::{QueryResult, RunQueryDsl};

use super::fixed::{bind, fixed, fixed_query};
use super::models::{AccountRow, HoldRow, JournalRow};
use super::spool::{NewCostRow, NewFileRow};

/// One column of a batch: `f` of every row, to bind as an array.
fn column<'a, R, T>(rows: &'a [R], f: impl Fn(&'a R) -> T) -> Vec<T> {
    rows.iter().map(f).collect()
}

const INSERT_JOURNAL: &[&str] = &[
    "INSERT INTO journal (account_id, seq, kind, amount_micros, credited_delta_micros, \
     charged_delta_micros, held_delta_micros, hold_id, cluster, job_id, partition, user_name, \
     actor, reason, flags, idempotency_key, request_digest, effective_at, recorded_at, \
     prev_hash, hash) SELECT * FROM unnest(",
    ", ",
    ", ",
    ", ",
    ", ",
    ", ",
    ", ",
    ", ",
    ", ",
    ", ",
    ", ",
    ", ",
    ", ",
    ", ",
    ", ",
    ", ",
    ", ",
    ", ",
    ", ",
    ", ",
    ", ",
    ") RETURNING id, idempotency_key",
];

/// Inserts journal entries in their order; returns each new entry's (id, idempotency key).
pub(crate) fn insert_journal(
    c: &mut PgConnection,
    rows: &[JournalRow],
) -> QueryResult<Vec<(i64, String)>> {
    fixed_query::<(BigInt, Text), _>(
        INSERT_JOURNAL,
        (
            bind::<Array<BigInt>, _>(column(rows, |r| r.account_id)),
            bind::<Array<BigInt>, _>(column(rows, |r| r.seq)),
            bind::<Array<Text>, _>(column(rows, |r| &r.kind)),
            bind::<Array<BigInt>, _>(column(rows, |r| r.amount_micros)),
            bind::<Array<BigInt>, _>(column(rows, |r| r.credited_delta_micros)),
            bind::<Array<BigInt>, _>(column(rows, |r| r.charged_delta_micros)),
            bind::<Array<BigInt>, _>(column(rows, |r| r.held_delta_micros)),
            bind::<Array<Nullable<BigInt>>, _>(column(rows, |r| r.hold_id)),
            bind::<Array<Nullable<Text>>, _>(column(rows, |r| r.cluster.as_deref())),
            bind::<Array<Nullable<Text>>, _>(column(rows, |r| r.job_id.as_deref())),
            bind::<Array<Nullable<Text>>, _>(column(rows, |r| r.partition.as_deref())),
            bind::<Array<Nullable<Text>>, _>(column(rows, |r| r.user_name.as_deref())),
            bind::<Array<Text>, _>(column(rows, |r| &r.actor)),
            bind::<Array<Text>, _>(column(rows, |r| &r.reason)),
            bind::<Array<Text>, _>(column(rows, |r| &r.flags)),
            bind::<Array<Text>, _>(column(rows, |r| &r.idempotency_key)),
            bind::<Array<Text>, _>(column(rows, |r| &r.request_digest)),
            bind::<Array<Timestamp>, _>(column(rows, |r| r.effective_at)),
            bind::<Array<Timestamp>, _>(column(rows, |r| r.recorded_at)),
            bind::<Array<Text>, _>(column(rows, |r| &r.prev_hash)),
            bind::<Array<Text>, _>(column(rows, |r| &r.hash)),
        ),
    )
    .load(c)
}

const UPDATE_HOLDS_CHARGED: &[&str] = &[
    "UPDATE holds AS h SET remaining_micros = v.remaining_micros, \
     charged_micros = v.charged_micros, state = v.state, flags = v.flags, job_id = v.job_id, \
     resolved_at = v.resolved_at, tasks_charged = v.tasks_charged FROM unnest(",
    ", ",
    ", ",
    ", ",
    ", ",
    ", ",
    ", ",
    ", ",
    ") AS v(id, remaining_micros, charged_micros, state, flags, job_id, resolved_at, \
     tasks_charged) WHERE h.id = v.id",
];

/// Writes the state of holds after their charges (what `UPDATE_HOLD_CHARGED` writes per hold).
pub(crate) fn update_holds_charged(c: &mut PgConnection, holds: &[&HoldRow]) -> QueryResult<()> {
    if holds.is_empty() {
        return Ok(());
    }
    fixed(
        UPDATE_HOLDS_CHARGED,
        (
            bind::<Array<BigInt>, _>(column(holds, |h| h.id)),
            bind::<Array<BigInt>, _>(column(holds, |h| h.remaining_micros)),
            bind::<Array<BigInt>, _>(column(holds, |h| h.charged_micros)),
            bind::<Array<Text>, _>(column(holds, |h| h.state.as_str())),
            bind::<Array<Text>, _>(column(holds, |h| h.flags.as_str())),
            bind::<Array<Nullable<Text>>, _>(column(holds, |h| h.job_id.as_deref())),
            bind::<Array<Nullable<Timestamp>>, _>(column(holds, |h| h.resolved_at)),
            bind::<Array<BigInt>, _>(column(holds, |h| h.tasks_charged)),
        ),
    )
    .execute(c)
    .map(drop)
}

const UPDATE_ACCOUNTS: &[&str] = &[
    "UPDATE accounts AS a SET credited_micros = v.credited_micros, \
     charged_micros = v.charged_micros, held_micros = v.held_micros, \
     entry_count = v.entry_count, chain_head = v.chain_head, updated_at = ",
    ", charge_count = v.charge_count, overrun_count = v.overrun_count, \
     unmatched_count = v.unmatched_count, open_hold_count = v.open_hold_count FROM unnest(",
    ", ",
    ", ",
    ", ",
    ", ",
    ", ",
    ", ",
    ", ",
    ", ",
    ", ",
    ") AS v(id, credited_micros, charged_micros, held_micros, entry_count, chain_head, \
     charge_count, overrun_count, unmatched_count, open_hold_count) WHERE a.id = v.id",
];

/// Writes accounts' balances, chain heads, charge counts and open-hold counts (what `UPDATE_ACCOUNT_BALANCES`
/// writes per account).
pub(crate) fn update_accounts(
    c: &mut PgConnection,
    accounts: &[&AccountRow],
    now: NaiveDateTime,
) -> QueryResult<()> {
    if accounts.is_empty() {
        return Ok(());
    }
    fixed(
        UPDATE_ACCOUNTS,
        (
            bind::<Timestamp, _>(now),
            bind::<Array<BigInt>, _>(column(accounts, |a| a.id)),
            bind::<Array<BigInt>, _>(column(accounts, |a| a.credited_micros)),
            bind::<Array<BigInt>, _>(column(accounts, |a| a.charged_micros)),
            bind::<Array<BigInt>, _>(column(accounts, |a| a.held_micros)),
            bind::<Array<BigInt>, _>(column(accounts, |a| a.entry_count)),
            bind::<Array<Text>, _>(column(accounts, |a| a.chain_head.as_str())),
            bind::<Array<BigInt>, _>(column(accounts, |a| a.counts.charges)),
            bind::<Array<BigInt>, _>(column(accounts, |a| a.counts.overruns)),
            bind::<Array<BigInt>, _>(column(accounts, |a| a.counts.unmatched)),
            bind::<Array<BigInt>, _>(column(accounts, |a| a.open_holds)),
        ),
    )
    .execute(c)
    .map(drop)
}

const UPDATE_PARTITIONS: &[&str] = &[
    "UPDATE account_partitions AS p SET charged_micros = v.charged_micros, \
     held_micros = v.held_micros, updated_at = ",
    " FROM unnest(",
    ", ",
    ", ",
    ", ",
    ") AS v(account_id, partition, charged_micros, held_micros) \
     WHERE p.account_id = v.account_id AND p.partition = v.partition",
];

/// One partition's totals to write: (account id, partition, charged, held).
pub(crate) type PartitionTotals<'a> = (i64, &'a str, i64, i64);

/// Writes the totals of existing account partitions (what `UPDATE_PARTITION` writes per row).
pub(crate) fn update_partitions(
    c: &mut PgConnection,
    rows: &[PartitionTotals<'_>],
    now: NaiveDateTime,
) -> QueryResult<()> {
    if rows.is_empty() {
        return Ok(());
    }
    fixed(
        UPDATE_PARTITIONS,
        (
            bind::<Timestamp, _>(now),
            bind::<Array<BigInt>, _>(column(rows, |r| r.0)),
            bind::<Array<Text>, _>(column(rows, |r| r.1)),
            bind::<Array<BigInt>, _>(column(rows, |r| r.2)),
            bind::<Array<BigInt>, _>(column(rows, |r| r.3)),
        ),
    )
    .execute(c)
    .map(drop)
}

const MARK_CHARGED: &[&str] = &[
    "UPDATE cost_records AS r SET status = 'charged', status_reason = '', status_detail = '', \
     hold_id = v.hold_id, charge_entry_id = v.charge_entry_id, \
     refund_entry_id = v.refund_entry_id, estimate_micros = v.estimate_micros, \
     charged_account = v.charged_account, charged_partition = v.charged_partition, \
     reconciled_at = ",
    " FROM unnest(",
    ", ",
    ", ",
    ", ",
    ", ",
    ", ",
    ", ",
    ") AS v(id, hold_id, charge_entry_id, refund_entry_id, estimate_micros, charged_account, \
     charged_partition) WHERE r.id = v.id",
];

/// What a run was booked as, to mark it charged.
pub(crate) struct ChargedRun<'a> {
    /// The cost record.
    pub id: i64,
    pub hold_id: Option<i64>,
    pub charge_entry: i64,
    pub refund_entry: Option<i64>,
    /// The estimate the run had (for accuracy).
    pub estimate: Option<i64>,
    pub account: &'a str,
    /// The partition the run ran in.
    pub partition: Option<&'a str>,
}

/// Marks runs charged, with links to what booked them (what reconcile's per-run statement
/// writes).
pub(crate) fn mark_charged(
    c: &mut PgConnection,
    runs: &[ChargedRun<'_>],
    reconciled_at: NaiveDateTime,
) -> QueryResult<()> {
    if runs.is_empty() {
        return Ok(());
    }
    fixed(
        MARK_CHARGED,
        (
            bind::<Timestamp, _>(reconciled_at),
            bind::<Array<BigInt>, _>(column(runs, |r| r.id)),
            bind::<Array<Nullable<BigInt>>, _>(column(runs, |r| r.hold_id)),
            bind::<Array<BigInt>, _>(column(runs, |r| r.charge_entry)),
            bind::<Array<Nullable<BigInt>>, _>(column(runs, |r| r.refund_entry)),
            bind::<Array<Nullable<BigInt>>, _>(column(runs, |r| r.estimate)),
            bind::<Array<Text>, _>(column(runs, |r| r.account)),
            bind::<Array<Nullable<Text>>, _>(column(runs, |r| r.partition)),
        ),
    )
    .execute(c)
    .map(drop)
}

const INSERT_COST_RECORDS: &[&str] = &[
    "INSERT INTO cost_records (run_key, job_id, job_base, array_task, het_offset, run, account, \
     actual_micros, producer_estimate_micros, transaction_ref, job_state, exit_code, user_name, \
     partition, submitted_at, started_at, completed_at, export_time, content_digest, \
     received_at, instance_types, status) SELECT *, 'pending' FROM unnest(",
    ", ",
    ", ",
    ", ",
    ", ",
    ", ",
    ", ",
    ", ",
    ", ",
    ", ",
    ", ",
    ", ",
    ", ",
    ", ",
    ", ",
    ", ",
    ", ",
    ", ",
    ", ",
    ", ",
    ", ",
    ") RETURNING id, run_key",
];

/// Inserts new cost records (status `pending`) in their order; returns each one's (id, run
/// key).
pub(crate) fn insert_cost_records(
    c: &mut PgConnection,
    rows: &[NewCostRow<'_>],
) -> QueryResult<Vec<(i64, String)>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    debug_assert!(rows.iter().all(|r| r.status == "pending"));
    fixed_query::<(BigInt, Text), _>(
        INSERT_COST_RECORDS,
        (
            bind::<Array<Text>, _>(column(rows, |r| &r.run_key)),
            bind::<Array<Text>, _>(column(rows, |r| &r.job_id)),
            bind::<Array<BigInt>, _>(column(rows, |r| r.job_base)),
            bind::<Array<Nullable<BigInt>>, _>(column(rows, |r| r.array_task)),
            bind::<Array<Nullable<BigInt>>, _>(column(rows, |r| r.het_offset)),
            bind::<Array<BigInt>, _>(column(rows, |r| r.run)),
            bind::<Array<Text>, _>(column(rows, |r| r.account)),
            bind::<Array<BigInt>, _>(column(rows, |r| r.actual_micros)),
            bind::<Array<Nullable<BigInt>>, _>(column(rows, |r| r.producer_estimate_micros)),
            bind::<Array<Nullable<Text>>, _>(column(rows, |r| r.transaction_ref)),
            bind::<Array<Nullable<Text>>, _>(column(rows, |r| r.job_state)),
            bind::<Array<Nullable<Text>>, _>(column(rows, |r| r.exit_code)),
            bind::<Array<Nullable<Text>>, _>(column(rows, |r| r.user_name)),
            bind::<Array<Nullable<Text>>, _>(column(rows, |r| r.partition)),
            bind::<Array<Nullable<Timestamp>>, _>(column(rows, |r| r.submitted_at)),
            bind::<Array<Nullable<Timestamp>>, _>(column(rows, |r| r.started_at)),
            bind::<Array<Nullable<Timestamp>>, _>(column(rows, |r| r.completed_at)),
            bind::<Array<Nullable<Timestamp>>, _>(column(rows, |r| r.export_time)),
            bind::<Array<Text>, _>(column(rows, |r| &r.content_digest)),
            bind::<Array<Timestamp>, _>(column(rows, |r| r.received_at)),
            bind::<Array<Text>, _>(column(rows, |r| &r.instance_types)),
        ),
    )
    .load(c)
}

const INSERT_SPOOL_FILES: &[&str] = &[
    "INSERT INTO spool_files (kind, name, file_key, sha256, size_bytes, outcome, record_id, \
     reasons, seen_at) SELECT * FROM unnest(",
    ", ",
    ", ",
    ", ",
    ", ",
    ", ",
    ", ",
    ", ",
    ", ",
    ")",
];

/// Inserts the rows of files seen, in their order.
pub(crate) fn insert_spool_files(c: &mut PgConnection, rows: &[NewFileRow<'_>]) -> QueryResult<()> {
    if rows.is_empty() {
        return Ok(());
    }
    fixed(
        INSERT_SPOOL_FILES,
        (
            bind::<Array<Text>, _>(column(rows, |r| r.kind)),
            bind::<Array<Text>, _>(column(rows, |r| r.name)),
            bind::<Array<Text>, _>(column(rows, |r| r.file_key)),
            bind::<Array<Text>, _>(column(rows, |r| r.sha256)),
            bind::<Array<BigInt>, _>(column(rows, |r| r.size_bytes)),
            bind::<Array<Text>, _>(column(rows, |r| r.outcome)),
            bind::<Array<Nullable<BigInt>>, _>(column(rows, |r| r.record_id)),
            bind::<Array<Text>, _>(column(rows, |r| &r.reasons)),
            bind::<Array<Timestamp>, _>(column(rows, |r| r.seen_at)),
        ),
    )
    .execute(c)
    .map(drop)
}
