//! Read-only queries for the CLI and reports.

use chrono::{DateTime, Utc};
use diesel::prelude::*;

use super::models::{
    Account, AccountChangeRow, AccountRow, Entry, Hold, HoldRow, JournalRow, PartitionRow,
    PartitionUsage,
};
use super::schema::{account_changes, account_partitions, accounts, holds, journal};
use super::DbConn;
use crate::db::ledger::LedgerError;
use crate::domain::ledger::{AccountStatus, EntryKind, HoldState};
use crate::domain::time::to_naive;
use crate::domain::UsdMicros;

/// One account by name.
pub fn account(conn: &mut DbConn, name: &str) -> Result<Account, LedgerError> {
    accounts::table
        .filter(accounts::name.eq(name))
        .select(AccountRow::as_select())
        .get_result(conn)
        .optional()?
        .map(|r| r.to_record())
        .ok_or_else(|| LedgerError::UnknownAccount(name.to_string()))
}

/// All accounts, by name, optionally of one status.
pub fn accounts(
    conn: &mut DbConn,
    status: Option<AccountStatus>,
) -> Result<Vec<Account>, LedgerError> {
    let mut q = accounts::table
        .select(AccountRow::as_select())
        .order(accounts::name)
        .into_boxed();
    if let Some(s) = status {
        q = q.filter(accounts::status.eq(s.as_str()));
    }
    Ok(q.load(conn)?.iter().map(AccountRow::to_record).collect())
}

fn account_id(conn: &mut DbConn, name: &str) -> Result<i64, LedgerError> {
    accounts::table
        .filter(accounts::name.eq(name))
        .select(accounts::id)
        .get_result(conn)
        .optional()?
        .ok_or_else(|| LedgerError::UnknownAccount(name.to_string()))
}

/// The partitions of an account that have a limit or any use.
pub fn partitions(conn: &mut DbConn, name: &str) -> Result<Vec<PartitionUsage>, LedgerError> {
    let id = account_id(conn, name)?;
    let rows: Vec<PartitionRow> = account_partitions::table
        .filter(account_partitions::account_id.eq(id))
        .order(account_partitions::partition)
        .select(PartitionRow::as_select())
        .load(conn)?;
    Ok(rows
        .into_iter()
        .map(|r| PartitionUsage {
            partition: r.partition,
            limit: r.limit_micros.map(UsdMicros::from_stored),
            charged: UsdMicros::from_stored(r.charged_micros),
            held: UsdMicros::from_stored(r.held_micros),
        })
        .collect())
}

/// Filters for listing journal entries; all optional, combined with AND.
#[derive(Debug, Clone, Default)]
pub struct EntryFilter {
    /// Only this account.
    pub account: Option<String>,
    /// Only this job.
    pub job_id: Option<String>,
    /// Only this kind.
    pub kind: Option<EntryKind>,
    /// Only entries whose linked hold is in this state.
    pub hold_state: Option<HoldState>,
    /// Only entries effective at or after this instant.
    pub since: Option<DateTime<Utc>>,
    /// Only entries effective before this instant.
    pub until: Option<DateTime<Utc>>,
    /// Only this hold.
    pub hold_id: Option<i64>,
    /// At most this many (the newest); `None` for all.
    pub limit: Option<i64>,
}

/// Lists journal entries, newest first.
pub fn entries(conn: &mut DbConn, f: &EntryFilter) -> Result<Vec<Entry>, LedgerError> {
    let mut q = journal::table
        .inner_join(accounts::table)
        .left_join(holds::table)
        .select((
            JournalRow::as_select(),
            accounts::name,
            holds::state.nullable(),
        ))
        .order(journal::id.desc())
        .into_boxed();
    if let Some(a) = &f.account {
        let id = account_id(conn, a)?;
        q = q.filter(journal::account_id.eq(id));
    }
    if let Some(j) = &f.job_id {
        q = q.filter(journal::job_id.eq(j.clone()));
    }
    if let Some(k) = f.kind {
        q = q.filter(journal::kind.eq(k.as_str()));
    }
    if let Some(s) = f.hold_state {
        q = q.filter(holds::state.eq(s.as_str()));
    }
    if let Some(h) = f.hold_id {
        q = q.filter(journal::hold_id.eq(h));
    }
    if let Some(t) = f.since {
        q = q.filter(journal::effective_at.ge(to_naive(t)));
    }
    if let Some(t) = f.until {
        q = q.filter(journal::effective_at.lt(to_naive(t)));
    }
    if let Some(n) = f.limit {
        q = q.limit(n);
    }
    let rows: Vec<(JournalRow, String, Option<String>)> = q.load(conn)?;
    Ok(rows
        .into_iter()
        .map(|(r, name, state)| r.to_record(&name, state.and_then(|s| s.parse().ok())))
        .collect())
}

/// One entry by id.
pub fn entry(conn: &mut DbConn, id: i64) -> Result<Option<Entry>, LedgerError> {
    let row: Option<(JournalRow, String, Option<String>)> = journal::table
        .inner_join(accounts::table)
        .left_join(holds::table)
        .filter(journal::id.eq(id))
        .select((
            JournalRow::as_select(),
            accounts::name,
            holds::state.nullable(),
        ))
        .get_result(conn)
        .optional()?;
    Ok(row.map(|(r, name, state)| r.to_record(&name, state.and_then(|s| s.parse().ok()))))
}

/// One hold by id.
pub fn hold(conn: &mut DbConn, id: i64) -> Result<Hold, LedgerError> {
    let row: Option<(HoldRow, String)> = holds::table
        .inner_join(accounts::table)
        .filter(holds::id.eq(id))
        .select((HoldRow::as_select(), accounts::name))
        .get_result(conn)
        .optional()?;
    row.map(|(h, name)| h.to_record(&name))
        .ok_or(LedgerError::UnknownHold(id))
}

/// Holds, newest first, optionally of one account and state.
pub fn holds(
    conn: &mut DbConn,
    account: Option<&str>,
    state: Option<HoldState>,
    limit: Option<i64>,
) -> Result<Vec<Hold>, LedgerError> {
    let mut q = holds::table
        .inner_join(accounts::table)
        .select((HoldRow::as_select(), accounts::name))
        .order(holds::id.desc())
        .into_boxed();
    if let Some(a) = account {
        let id = account_id(conn, a)?;
        q = q.filter(holds::account_id.eq(id));
    }
    if let Some(s) = state {
        // One account's open holds come from the open entries of `holds_state_expires`.
        q = q.filter(holds::state.eq(s.as_str()));
    }
    if let Some(n) = limit {
        q = q.limit(n);
    }
    let rows: Vec<(HoldRow, String)> = q.load(conn)?;
    Ok(rows
        .into_iter()
        .map(|(h, name)| h.to_record(&name))
        .collect())
}

/// Counts of an account's holds by state and of its charges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActivityCounts {
    /// Open holds.
    pub open_holds: i64,
    /// Charge entries.
    pub charges: i64,
    /// Charges flagged `overrun`.
    pub overruns: i64,
    /// Charges flagged `unmatched`.
    pub unmatched: i64,
}

/// Activity counts of an account, as cached on its row (see [`crate::db::audit`]).
pub fn activity(conn: &mut DbConn, name: &str) -> Result<ActivityCounts, LedgerError> {
    let row = accounts::table
        .filter(accounts::name.eq(name))
        .select(AccountRow::as_select())
        .get_result(conn)
        .optional()?
        .ok_or_else(|| LedgerError::UnknownAccount(name.to_string()))?;
    let counts = row.counts;
    Ok(ActivityCounts {
        open_holds: row.open_holds,
        charges: counts.charges,
        overruns: counts.overruns,
        unmatched: counts.unmatched,
    })
}

/// Changes of an account's settings, oldest first.
pub fn account_changes(
    conn: &mut DbConn,
    name: &str,
) -> Result<Vec<AccountChangeRow>, LedgerError> {
    let id = account_id(conn, name)?;
    Ok(account_changes::table
        .filter(account_changes::account_id.eq(id))
        .order(account_changes::id)
        .select(AccountChangeRow::as_select())
        .load(conn)?)
}
