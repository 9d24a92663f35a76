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
    let col = |f: fn(&JournalRow) -> i64| rows.iter().map(f).collect::<Vec<i64>>();
    let text = |f: for<'r> fn(&'r JournalRow) -> &'r str| rows.iter().map(f).collect::<Vec<_>>();
    let opt =
        |f: for<'r> fn(&'r JournalRow) -> Option<&'r str>| rows.iter().map(f).collect::<Vec<_>>();
    let time = |f: fn(&JournalRow) -> NaiveDateTime| rows.iter().map(f).collect::<Vec<_>>();
    fixed_query::<(BigInt, Text), _>(
        INSERT_JOURNAL,
        (
            bind::<Array<BigInt>, _>(col(|r| r.account_id)),
            bind::<Array<BigInt>, _>(col(|r| r.seq)),
            bind::<Array<Text>, _>(text(|r| &r.kind)),
            bind::<Array<BigInt>, _>(col(|r| r.amount_micros)),
            bind::<Array<BigInt>, _>(col(|r| r.credited_delta_micros)),
            bind::<Array<BigInt>, _>(col(|r| r.charged_delta_micros)),
            bind::<Array<BigInt>, _>(col(|r| r.held_delta_micros)),
            bind::<Array<Nullable<BigInt>>, _>(rows.iter().map(|r| r.hold_id).collect::<Vec<_>>()),
            bind::<Array<Nullable<Text>>, _>(opt(|r| r.cluster.as_deref())),
            bind::<Array<Nullable<Text>>, _>(opt(|r| r.job_id.as_deref())),
            bind::<Array<Nullable<Text>>, _>(opt(|r| r.partition.as_deref())),
            bind::<Array<Nullable<Text>>, _>(opt(|r| r.user_name.as_deref())),
            bind::<Array<Text>, _>(text(|r| &r.actor)),
            bind::<Array<Text>, _>(text(|r| &r.reason)),
            bind::<Array<Text>, _>(text(|r| &r.flags)),
            bind::<Array<Text>, _>(text(|r| &r.idempotency_key)),
            bind::<Array<Text>, _>(text(|r| &r.request_digest)),
            bind::<Array<Timestamp>, _>(time(|r| r.effective_at)),
            bind::<Array<Timestamp>, _>(time(|r| r.recorded_at)),
            bind::<Array<Text>, _>(text(|r| &r.prev_hash)),
            bind::<Array<Text>, _>(text(|r| &r.hash)),
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
    let ints = |f: fn(&HoldRow) -> i64| holds.iter().map(|h| f(h)).collect::<Vec<i64>>();
    fixed(
        UPDATE_HOLDS_CHARGED,
        (
            bind::<Array<BigInt>, _>(ints(|h| h.id)),
            bind::<Array<BigInt>, _>(ints(|h| h.remaining_micros)),
            bind::<Array<BigInt>, _>(ints(|h| h.charged_micros)),
            bind::<Array<Text>, _>(holds.iter().map(|h| h.state.as_str()).collect::<Vec<_>>()),
            bind::<Array<Text>, _>(holds.iter().map(|h| h.flags.as_str()).collect::<Vec<_>>()),
            bind::<Array<Nullable<Text>>, _>(
                holds
                    .iter()
                    .map(|h| h.job_id.as_deref())
                    .collect::<Vec<_>>(),
            ),
            bind::<Array<Nullable<Timestamp>>, _>(
                holds.iter().map(|h| h.resolved_at).collect::<Vec<_>>(),
            ),
            bind::<Array<BigInt>, _>(ints(|h| h.tasks_charged)),
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
     unmatched_count = v.unmatched_count FROM unnest(",
    ", ",
    ", ",
    ", ",
    ", ",
    ", ",
    ", ",
    ", ",
    ", ",
    ") AS v(id, credited_micros, charged_micros, held_micros, entry_count, chain_head, \
     charge_count, overrun_count, unmatched_count) WHERE a.id = v.id",
];

/// Writes accounts' balances, chain heads and charge counts (what `UPDATE_ACCOUNT_BALANCES`
/// writes per account).
pub(crate) fn update_accounts(
    c: &mut PgConnection,
    accounts: &[&AccountRow],
    now: NaiveDateTime,
) -> QueryResult<()> {
    if accounts.is_empty() {
        return Ok(());
    }
    let ints = |f: fn(&AccountRow) -> i64| accounts.iter().map(|a| f(a)).collect::<Vec<i64>>();
    fixed(
        UPDATE_ACCOUNTS,
        (
            bind::<Timestamp, _>(now),
            bind::<Array<BigInt>, _>(ints(|a| a.id)),
            bind::<Array<BigInt>, _>(ints(|a| a.credited_micros)),
            bind::<Array<BigInt>, _>(ints(|a| a.charged_micros)),
            bind::<Array<BigInt>, _>(ints(|a| a.held_micros)),
            bind::<Array<BigInt>, _>(ints(|a| a.entry_count)),
            bind::<Array<Text>, _>(
                accounts
                    .iter()
                    .map(|a| a.chain_head.as_str())
                    .collect::<Vec<_>>(),
            ),
            bind::<Array<BigInt>, _>(ints(|a| a.counts.charges)),
            bind::<Array<BigInt>, _>(ints(|a| a.counts.overruns)),
            bind::<Array<BigInt>, _>(ints(|a| a.counts.unmatched)),
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
            bind::<Array<BigInt>, _>(rows.iter().map(|r| r.0).collect::<Vec<_>>()),
            bind::<Array<Text>, _>(rows.iter().map(|r| r.1).collect::<Vec<_>>()),
            bind::<Array<BigInt>, _>(rows.iter().map(|r| r.2).collect::<Vec<_>>()),
            bind::<Array<BigInt>, _>(rows.iter().map(|r| r.3).collect::<Vec<_>>()),
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

/// One charged run: (cost record id, hold id, charge entry, refund entry, estimate, account,
/// partition).
pub(crate) type ChargedRun<'a> = (
    i64,
    Option<i64>,
    i64,
    Option<i64>,
    Option<i64>,
    &'a str,
    Option<&'a str>,
);

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
            bind::<Array<BigInt>, _>(runs.iter().map(|r| r.0).collect::<Vec<_>>()),
            bind::<Array<Nullable<BigInt>>, _>(runs.iter().map(|r| r.1).collect::<Vec<_>>()),
            bind::<Array<BigInt>, _>(runs.iter().map(|r| r.2).collect::<Vec<_>>()),
            bind::<Array<Nullable<BigInt>>, _>(runs.iter().map(|r| r.3).collect::<Vec<_>>()),
            bind::<Array<Nullable<BigInt>>, _>(runs.iter().map(|r| r.4).collect::<Vec<_>>()),
            bind::<Array<Text>, _>(runs.iter().map(|r| r.5).collect::<Vec<_>>()),
            bind::<Array<Nullable<Text>>, _>(runs.iter().map(|r| r.6).collect::<Vec<_>>()),
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
    let ints = |f: fn(&NewCostRow<'_>) -> i64| rows.iter().map(f).collect::<Vec<i64>>();
    let opt_int = |f: fn(&NewCostRow<'_>) -> Option<i64>| rows.iter().map(f).collect::<Vec<_>>();
    let opt_text = |f: for<'r> fn(&'r NewCostRow<'_>) -> Option<&'r str>| {
        rows.iter().map(f).collect::<Vec<_>>()
    };
    let text =
        |f: for<'r> fn(&'r NewCostRow<'_>) -> &'r str| rows.iter().map(f).collect::<Vec<_>>();
    let opt_time =
        |f: fn(&NewCostRow<'_>) -> Option<NaiveDateTime>| rows.iter().map(f).collect::<Vec<_>>();
    fixed_query::<(BigInt, Text), _>(
        INSERT_COST_RECORDS,
        (
            bind::<Array<Text>, _>(text(|r| &r.run_key)),
            bind::<Array<Text>, _>(text(|r| &r.job_id)),
            bind::<Array<BigInt>, _>(ints(|r| r.job_base)),
            bind::<Array<Nullable<BigInt>>, _>(opt_int(|r| r.array_task)),
            bind::<Array<Nullable<BigInt>>, _>(opt_int(|r| r.het_offset)),
            bind::<Array<BigInt>, _>(ints(|r| r.run)),
            bind::<Array<Text>, _>(text(|r| r.account)),
            bind::<Array<BigInt>, _>(ints(|r| r.actual_micros)),
            bind::<Array<Nullable<BigInt>>, _>(opt_int(|r| r.producer_estimate_micros)),
            bind::<Array<Nullable<Text>>, _>(opt_text(|r| r.transaction_ref)),
            bind::<Array<Nullable<Text>>, _>(opt_text(|r| r.job_state)),
            bind::<Array<Nullable<Text>>, _>(opt_text(|r| r.exit_code)),
            bind::<Array<Nullable<Text>>, _>(opt_text(|r| r.user_name)),
            bind::<Array<Nullable<Text>>, _>(opt_text(|r| r.partition)),
            bind::<Array<Nullable<Timestamp>>, _>(opt_time(|r| r.submitted_at)),
            bind::<Array<Nullable<Timestamp>>, _>(opt_time(|r| r.started_at)),
            bind::<Array<Nullable<Timestamp>>, _>(opt_time(|r| r.completed_at)),
            bind::<Array<Nullable<Timestamp>>, _>(opt_time(|r| r.export_time)),
            bind::<Array<Text>, _>(text(|r| &r.content_digest)),
            bind::<Array<Timestamp>, _>(rows.iter().map(|r| r.received_at).collect::<Vec<_>>()),
            bind::<Array<Text>, _>(text(|r| &r.instance_types)),
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
    let text =
        |f: for<'r> fn(&'r NewFileRow<'_>) -> &'r str| rows.iter().map(f).collect::<Vec<_>>();
    fixed(
        INSERT_SPOOL_FILES,
        (
            bind::<Array<Text>, _>(text(|r| r.kind)),
            bind::<Array<Text>, _>(text(|r| r.name)),
            bind::<Array<Text>, _>(text(|r| r.file_key)),
            bind::<Array<Text>, _>(text(|r| r.sha256)),
            bind::<Array<BigInt>, _>(rows.iter().map(|r| r.size_bytes).collect::<Vec<_>>()),
            bind::<Array<Text>, _>(text(|r| r.outcome)),
            bind::<Array<Nullable<BigInt>>, _>(
                rows.iter().map(|r| r.record_id).collect::<Vec<_>>(),
            ),
            bind::<Array<Text>, _>(text(|r| &r.reasons)),
            bind::<Array<Timestamp>, _>(rows.iter().map(|r| r.seen_at).collect::<Vec<_>>()),
        ),
    )
    .execute(c)
    .map(drop)
}
