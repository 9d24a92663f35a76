//! Row types (what diesel reads and writes) and the records handed to callers.

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;

use super::schema::{account_changes, account_partitions, accounts, holds, journal};
use crate::domain::ledger::{AccountStatus, Balances, Effect, EntryKind, HoldState};
use crate::domain::time::from_naive;
use crate::domain::UsdMicros;

/// An `accounts` row.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = accounts)]
pub struct AccountRow {
    pub(crate) id: i64,
    pub(crate) name: String,
    pub(crate) display_name: String,
    pub(crate) description: String,
    pub(crate) starts_at: NaiveDateTime,
    pub(crate) ends_at: NaiveDateTime,
    pub(crate) status: String,
    pub(crate) overdraft_micros: i64,
    pub(crate) credited_micros: i64,
    pub(crate) charged_micros: i64,
    pub(crate) held_micros: i64,
    pub(crate) entry_count: i64,
    pub(crate) chain_head: String,
    pub(crate) settings_count: i64,
    pub(crate) settings_head: String,
    pub(crate) created_at: NaiveDateTime,
    pub(crate) updated_at: NaiveDateTime,
    /// The cached counts of the account's charge entries; `asbb audit verify` recounts them.
    #[diesel(embed)]
    pub(crate) counts: ChargeCounts,
    /// The cached number of the account's open holds, kept by every change of a hold's state;
    /// `asbb audit verify` recounts it from the holds.
    #[diesel(column_name = open_hold_count)]
    pub(crate) open_holds: i64,
}

/// How many charge entries an account has: all of them, and those flagged `overrun` or
/// `unmatched` (cached on the account row, recounted by `asbb audit verify`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = accounts)]
pub struct ChargeCounts {
    #[diesel(column_name = charge_count)]
    pub(crate) charges: i64,
    #[diesel(column_name = overrun_count)]
    pub(crate) overruns: i64,
    #[diesel(column_name = unmatched_count)]
    pub(crate) unmatched: i64,
}

impl ChargeCounts {
    /// Counts one entry (entries other than charges count nothing).
    pub(crate) fn add(&mut self, kind: EntryKind, flags: &str) {
        if kind != EntryKind::Charge {
            return;
        }
        self.charges += 1;
        match flags {
            "overrun" => self.overruns += 1,
            "unmatched" => self.unmatched += 1,
            _ => {}
        }
    }
}

impl AccountRow {
    pub(crate) fn balances(&self) -> Balances {
        Balances {
            credited: UsdMicros::from_stored(self.credited_micros),
            charged: UsdMicros::from_stored(self.charged_micros),
            held: UsdMicros::from_stored(self.held_micros),
        }
    }

    pub(crate) fn status(&self) -> AccountStatus {
        self.status.parse().unwrap_or(AccountStatus::Suspended)
    }

    pub(crate) fn to_record(&self) -> Account {
        Account {
            name: self.name.clone(),
            display_name: self.display_name.clone(),
            description: self.description.clone(),
            starts_at: from_naive(self.starts_at),
            ends_at: from_naive(self.ends_at),
            status: self.status(),
            overdraft: UsdMicros::from_stored(self.overdraft_micros),
            balances: self.balances(),
            entry_count: self.entry_count,
            created_at: from_naive(self.created_at),
            updated_at: from_naive(self.updated_at),
        }
    }
}

#[derive(Insertable)]
#[diesel(table_name = accounts)]
// `None` is NULL, never DEFAULT: then diesel inserts many rows with one statement on SQLite
// too (with a possible DEFAULT it sends one statement per row).
#[diesel(treat_none_as_default_value = false)]
pub(crate) struct NewAccountRow<'a> {
    pub name: &'a str,
    pub display_name: &'a str,
    pub description: &'a str,
    pub starts_at: NaiveDateTime,
    pub ends_at: NaiveDateTime,
    pub status: &'a str,
    pub overdraft_micros: i64,
    pub chain_head: &'a str,
    pub settings_head: &'a str,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

/// An `account_partitions` row.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = account_partitions)]
pub(crate) struct PartitionRow {
    pub partition: String,
    pub limit_micros: Option<i64>,
    pub charged_micros: i64,
    pub held_micros: i64,
}

/// A `holds` row.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = holds)]
pub(crate) struct HoldRow {
    pub id: i64,
    pub partition: Option<String>,
    pub cluster: Option<String>,
    pub job_id: Option<String>,
    pub user_name: Option<String>,
    pub estimate_micros: i64,
    pub buffer: String,
    pub amount_micros: i64,
    pub remaining_micros: i64,
    pub charged_micros: i64,
    pub state: String,
    pub flags: String,
    pub expires_at: Option<NaiveDateTime>,
    pub created_at: NaiveDateTime,
    pub resolved_at: Option<NaiveDateTime>,
    pub tasks: Option<i64>,
    pub tasks_charged: i64,
}

impl HoldRow {
    pub(crate) fn state(&self) -> HoldState {
        self.state.parse().unwrap_or(HoldState::Open)
    }

    pub(crate) fn to_record(&self, account: &str) -> Hold {
        Hold {
            id: self.id,
            account: account.to_string(),
            partition: self.partition.clone(),
            cluster: self.cluster.clone(),
            job_id: self.job_id.clone(),
            user_name: self.user_name.clone(),
            estimate: UsdMicros::from_stored(self.estimate_micros),
            buffer: self.buffer.clone(),
            amount: UsdMicros::from_stored(self.amount_micros),
            remaining: UsdMicros::from_stored(self.remaining_micros),
            charged: UsdMicros::from_stored(self.charged_micros),
            state: self.state(),
            flags: self.flags.clone(),
            expires_at: self.expires_at.map(from_naive),
            created_at: from_naive(self.created_at),
            resolved_at: self.resolved_at.map(from_naive),
            tasks: self.tasks,
            tasks_charged: self.tasks_charged,
        }
    }
}

#[derive(Insertable)]
#[diesel(table_name = holds)]
// `None` is NULL, never DEFAULT: then diesel inserts many rows with one statement on SQLite
// too (with a possible DEFAULT it sends one statement per row).
#[diesel(treat_none_as_default_value = false)]
pub(crate) struct NewHoldRow<'a> {
    pub account_id: i64,
    pub partition: Option<&'a str>,
    pub cluster: Option<&'a str>,
    pub job_id: Option<&'a str>,
    pub user_name: Option<&'a str>,
    pub estimate_micros: i64,
    pub buffer: &'a str,
    pub amount_micros: i64,
    pub remaining_micros: i64,
    pub charged_micros: i64,
    pub state: &'a str,
    pub flags: &'a str,
    pub expires_at: Option<NaiveDateTime>,
    pub created_at: NaiveDateTime,
    pub idempotency_key: &'a str,
    pub tasks: Option<i64>,
}

/// A `journal` row. Inserted without its id, which the database assigns.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = journal)]
// `None` is NULL, never DEFAULT: then diesel inserts many rows with one statement on SQLite
// too (with a possible DEFAULT it sends one statement per row).
#[diesel(treat_none_as_default_value = false)]
pub(crate) struct JournalRow {
    #[diesel(skip_insertion)]
    pub id: i64,
    pub account_id: i64,
    pub seq: i64,
    pub kind: String,
    pub amount_micros: i64,
    pub credited_delta_micros: i64,
    pub charged_delta_micros: i64,
    pub held_delta_micros: i64,
    pub hold_id: Option<i64>,
    pub cluster: Option<String>,
    pub job_id: Option<String>,
    pub partition: Option<String>,
    pub user_name: Option<String>,
    pub actor: String,
    pub reason: String,
    pub flags: String,
    pub idempotency_key: String,
    pub request_digest: String,
    pub effective_at: NaiveDateTime,
    pub recorded_at: NaiveDateTime,
    pub prev_hash: String,
    pub hash: String,
}

impl JournalRow {
    pub(crate) fn effect(&self) -> Effect {
        Effect {
            credited: UsdMicros::from_stored(self.credited_delta_micros),
            charged: UsdMicros::from_stored(self.charged_delta_micros),
            held: UsdMicros::from_stored(self.held_delta_micros),
        }
    }

    pub(crate) fn to_record(&self, account: &str, hold_state: Option<HoldState>) -> Entry {
        Entry {
            id: self.id,
            account: account.to_string(),
            seq: self.seq,
            kind: self.kind.parse().unwrap_or(EntryKind::Adjustment),
            amount: UsdMicros::from_stored(self.amount_micros),
            effect: self.effect(),
            hold_id: self.hold_id,
            hold_state,
            cluster: self.cluster.clone(),
            job_id: self.job_id.clone(),
            partition: self.partition.clone(),
            user_name: self.user_name.clone(),
            actor: self.actor.clone(),
            reason: self.reason.clone(),
            flags: self.flags.clone(),
            idempotency_key: self.idempotency_key.clone(),
            effective_at: from_naive(self.effective_at),
            recorded_at: from_naive(self.recorded_at),
            prev_hash: self.prev_hash.clone(),
            hash: self.hash.clone(),
        }
    }
}

/// An `account_changes` row.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = account_changes)]
pub struct AccountChangeRow {
    /// Row id.
    pub id: i64,
    /// Account id.
    pub account_id: i64,
    /// Which setting changed.
    pub field: String,
    /// Value before.
    pub old_value: String,
    /// Value after.
    pub new_value: String,
    /// Who changed it.
    pub actor: String,
    /// Why.
    pub reason: String,
    /// When.
    pub changed_at: NaiveDateTime,
    /// Position in the account's settings chain.
    pub seq: i64,
    /// Hash of the previous change.
    pub prev_hash: String,
    /// This change's hash.
    pub hash: String,
}

#[derive(Insertable)]
#[diesel(table_name = account_changes)]
// `None` is NULL, never DEFAULT: then diesel inserts many rows with one statement on SQLite
// too (with a possible DEFAULT it sends one statement per row).
#[diesel(treat_none_as_default_value = false)]
pub(crate) struct NewAccountChangeRow<'a> {
    pub account_id: i64,
    pub field: &'a str,
    pub old_value: &'a str,
    pub new_value: &'a str,
    pub actor: &'a str,
    pub reason: &'a str,
    pub changed_at: NaiveDateTime,
    pub seq: i64,
    pub prev_hash: &'a str,
    pub hash: &'a str,
}

/// A budget account with its cached balances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// SLURM account name.
    pub name: String,
    /// Display name.
    pub display_name: String,
    /// Free text.
    pub description: String,
    /// Start of the active period.
    pub starts_at: DateTime<Utc>,
    /// End of the active period (exclusive).
    pub ends_at: DateTime<Utc>,
    /// Lifecycle state.
    pub status: AccountStatus,
    /// Overdraft limit.
    pub overdraft: UsdMicros,
    /// Cached balances.
    pub balances: Balances,
    /// Number of journal entries.
    pub entry_count: i64,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
}

impl Account {
    /// `credited − charged − held + overdraft`.
    pub fn available(&self) -> UsdMicros {
        self.balances
            .available(self.overdraft)
            .unwrap_or(UsdMicros::from_stored(i64::MIN))
    }
}

/// A partition of an account: its optional limit and its use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionUsage {
    /// Partition name.
    pub partition: String,
    /// Limit on charged + held, if one is set.
    pub limit: Option<UsdMicros>,
    /// Charged in this partition.
    pub charged: UsdMicros,
    /// Held in this partition.
    pub held: UsdMicros,
}

/// A hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// Hold id.
    pub id: i64,
    /// Account name.
    pub account: String,
    /// Partition.
    pub partition: Option<String>,
    /// Cluster.
    pub cluster: Option<String>,
    /// Job id.
    pub job_id: Option<String>,
    /// SLURM user.
    pub user_name: Option<String>,
    /// The cost estimate before the buffer.
    pub estimate: UsdMicros,
    /// The buffer factor applied (a decimal such as `1.2`).
    pub buffer: String,
    /// The amount held.
    pub amount: UsdMicros,
    /// What is still held.
    pub remaining: UsdMicros,
    /// What was charged against it.
    pub charged: UsdMicros,
    /// State.
    pub state: HoldState,
    /// Flags such as `overrun`.
    pub flags: String,
    /// When it expires if unresolved.
    pub expires_at: Option<DateTime<Utc>>,
    /// Placed.
    pub created_at: DateTime<Utc>,
    /// Resolved.
    pub resolved_at: Option<DateTime<Utc>>,
    /// For a job array: how many tasks the hold covers. Tasks are charged one by one and the
    /// last one releases what is left.
    pub tasks: Option<i64>,
    /// How many charges were booked against the hold.
    pub tasks_charged: i64,
}

impl Hold {
    /// The public reference, as SLURM and the cost exports carry it.
    pub fn reference(&self) -> String {
        hold_reference(self.id)
    }
}

/// The public reference of a hold id: `hold-42`.
pub fn hold_reference(id: i64) -> String {
    format!("hold-{id}")
}

/// Parses `hold-42`, `txn_42`, `txn-42` or `42`.
pub fn parse_hold_reference(text: &str) -> Option<i64> {
    let t = text.trim();
    let digits = t
        .strip_prefix("hold-")
        .or_else(|| t.strip_prefix("txn_"))
        .or_else(|| t.strip_prefix("txn-"))
        .unwrap_or(t);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|id| *id > 0)
}

/// A journal entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Entry id.
    pub id: i64,
    /// Account name.
    pub account: String,
    /// Position in the account's chain.
    pub seq: i64,
    /// Kind.
    pub kind: EntryKind,
    /// Headline amount.
    pub amount: UsdMicros,
    /// Effect on balances.
    pub effect: Effect,
    /// Linked hold.
    pub hold_id: Option<i64>,
    /// State of the linked hold, when listed with it.
    pub hold_state: Option<HoldState>,
    /// Cluster.
    pub cluster: Option<String>,
    /// Job id.
    pub job_id: Option<String>,
    /// Partition.
    pub partition: Option<String>,
    /// SLURM user.
    pub user_name: Option<String>,
    /// Who made it.
    pub actor: String,
    /// Why.
    pub reason: String,
    /// Flags.
    pub flags: String,
    /// Idempotency key.
    pub idempotency_key: String,
    /// When it takes effect.
    pub effective_at: DateTime<Utc>,
    /// When it was recorded.
    pub recorded_at: DateTime<Utc>,
    /// Previous hash in the chain.
    pub prev_hash: String,
    /// This entry's hash.
    pub hash: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hold_references() {
        assert_eq!(parse_hold_reference("hold-42"), Some(42));
        assert_eq!(parse_hold_reference("txn_42"), Some(42));
        assert_eq!(parse_hold_reference("42"), Some(42));
        assert_eq!(parse_hold_reference("hold-"), None);
        assert_eq!(parse_hold_reference("hold-0"), None);
        assert_eq!(parse_hold_reference("txn_abc123"), None);
        assert_eq!(hold_reference(7), "hold-7");
    }
}
