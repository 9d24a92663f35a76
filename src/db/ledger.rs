//! Ledger operations. Each is one transaction and idempotent: a retry with the same
//! idempotency key and the same request returns the first result; the same key with another
//! request is an error.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text, Timestamp};

use super::fixed::{bind, fixed};
use rust_decimal::Decimal;

use super::models::{
    Account, AccountRow, Entry, Hold, HoldRow, JournalRow, NewAccountChangeRow, NewAccountRow,
    NewHoldRow, PartitionRow,
};
use super::schema::{account_changes, account_partitions, accounts, holds, journal};
use super::{joined_write_transaction, write_transaction, DbConn};
use crate::domain::ledger::{
    decide_hold, entry_hash, genesis_hash, request_digest, setting_hash, settings_genesis_hash,
    settle, AccountStatus, ChainFields, Denial, DenyReason, Effect, EntryKind, HoldContext,
    HoldState, PartitionUse, SettingFields,
};
use crate::domain::money::MoneyError;
use crate::domain::time::{to_naive, truncate_micros};
use crate::domain::{AccountName, PartitionName, UsdMicros};

/// Longest free-text reason or description stored.
pub const TEXT_LEN_MAX: usize = 1000;

/// Longest idempotency key accepted.
pub const KEY_LEN_MAX: usize = 200;

/// Who acts, and when: every operation takes time as a parameter and never reads the clock.
#[derive(Debug, Clone)]
pub struct OpContext {
    /// Who makes the change (a user name, or a service like `asbb-checkd`).
    pub actor: String,
    /// When the change takes effect (`--as-of`).
    pub effective_at: DateTime<Utc>,
    /// When it is recorded (the caller's wall clock).
    pub recorded_at: DateTime<Utc>,
}

impl OpContext {
    /// A context whose effect and record times are the same instant.
    pub fn at(actor: &str, at: DateTime<Utc>) -> OpContext {
        let at = truncate_micros(at);
        OpContext {
            actor: actor.to_string(),
            effective_at: at,
            recorded_at: at,
        }
    }
}

/// What can go wrong in a ledger operation.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// No account of that name.
    #[error("no budget account named '{0}' (see `asbb account list`)")]
    UnknownAccount(String),
    /// The account name is taken.
    #[error("budget account '{0}' already exists (see `asbb account show {0}`)")]
    AccountExists(String),
    /// No hold of that id.
    #[error("no hold hold-{0} (see `asbb hold list`)")]
    UnknownHold(i64),
    /// The hold was resolved before.
    #[error("hold hold-{id} is already {state}; a hold resolves exactly once")]
    HoldResolved {
        /// Hold id.
        id: i64,
        /// Its state.
        state: HoldState,
    },
    /// An idempotency key was reused for a different request.
    #[error("idempotency key '{key}' was already used for a different request (entry {entry}); use a new key")]
    IdempotencyConflict {
        /// The key.
        key: String,
        /// The entry that used it first.
        entry: i64,
    },
    /// Another request with the same idempotency key was committed at the same moment (on
    /// another account); retrying returns that request's result or a conflict.
    #[error("idempotency key '{0}' is being used by another request at this moment; retry")]
    KeyInUse(String),
    /// A hold was refused.
    #[error("{0}")]
    Denied(Denial),
    /// The account's state forbids the operation.
    #[error("budget account '{account}' is {status}; {what}")]
    AccountState {
        /// Account name.
        account: String,
        /// Its status.
        status: AccountStatus,
        /// What was refused, and what to do.
        what: String,
    },
    /// An argument is invalid; names the field.
    #[error("{field}: {message}")]
    Invalid {
        /// The flag or field to fix.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The account has history and cannot be deleted.
    #[error("budget account '{account}' has {entries} journal entries; accounts that have held money are never deleted, close it instead with `asbb account close {account}`")]
    HasHistory {
        /// Account name.
        account: String,
        /// Number of entries.
        entries: i64,
    },
    /// Arithmetic on money overflowed.
    #[error("amount out of range: {0}")]
    Money(#[from] MoneyError),
    /// The database failed.
    #[error("database error: {0}")]
    Db(#[from] diesel::result::Error),
}

impl LedgerError {
    pub(crate) fn invalid(field: &'static str, message: impl Into<String>) -> LedgerError {
        LedgerError::Invalid {
            field,
            message: message.into(),
        }
    }
}

/// Maps a unique violation on an idempotency key to [`LedgerError::KeyInUse`].
fn key_race(key: &str) -> impl FnOnce(diesel::result::Error) -> LedgerError + '_ {
    move |e| match e {
        diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::UniqueViolation,
            ref info,
        ) if info.message().contains("idempotency_key")
            || info
                .constraint_name()
                .is_some_and(|c| c.contains("idempotency_key")) =>
        {
            LedgerError::KeyInUse(key.to_string())
        }
        other => other.into(),
    }
}

fn check_text(field: &'static str, text: &str) -> Result<(), LedgerError> {
    if text.len() > TEXT_LEN_MAX {
        return Err(LedgerError::invalid(
            field,
            format!("longer than {TEXT_LEN_MAX} bytes"),
        ));
    }
    if text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(LedgerError::invalid(field, "contains control characters"));
    }
    Ok(())
}

/// Suffix of the key of the release entry that follows a charge against a hold.
const RELEASE_KEY_SUFFIX: &str = ":release";

fn check_key(key: &str) -> Result<(), LedgerError> {
    if key.ends_with(RELEASE_KEY_SUFFIX) {
        return Err(LedgerError::invalid(
            "--idempotency-key",
            format!(
                "keys ending in '{RELEASE_KEY_SUFFIX}' are reserved for the release after a charge"
            ),
        ));
    }
    if key.is_empty()
        || key.len() > KEY_LEN_MAX
        || key.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(LedgerError::invalid(
            "--idempotency-key",
            format!("must be 1 to {KEY_LEN_MAX} printable characters without spaces"),
        ));
    }
    Ok(())
}

/// A new account.
#[derive(Debug, Clone)]
pub struct NewAccount {
    /// SLURM account name.
    pub name: AccountName,
    /// Display name.
    pub display_name: String,
    /// Free text.
    pub description: String,
    /// Start of the active period.
    pub starts_at: DateTime<Utc>,
    /// End (exclusive).
    pub ends_at: DateTime<Utc>,
    /// Overdraft limit.
    pub overdraft: UsdMicros,
    /// Initial budget, credited as the account's first entry when non-zero.
    pub budget: UsdMicros,
}

// ---------------------------------------------------------------------------------------------
// Locking and appending

/// Reads the account row and, on PostgreSQL, locks it for the rest of the transaction.
/// (On SQLite the whole database is already locked by `BEGIN IMMEDIATE`.)
fn lock_account(conn: &mut DbConn, name: &str) -> Result<AccountRow, LedgerError> {
    let row = match conn {
        DbConn::Postgres(c) => accounts::table
            .filter(accounts::name.eq(name))
            .select(AccountRow::as_select())
            .for_update()
            .get_result(c)
            .optional()?,
        DbConn::Sqlite(c) => accounts::table
            .filter(accounts::name.eq(name))
            .select(AccountRow::as_select())
            .get_result(c)
            .optional()?,
    };
    row.ok_or_else(|| LedgerError::UnknownAccount(name.to_string()))
}

fn lock_account_by_id(conn: &mut DbConn, id: i64) -> Result<AccountRow, LedgerError> {
    Ok(match conn {
        DbConn::Postgres(c) => accounts::table
            .find(id)
            .select(AccountRow::as_select())
            .for_update()
            .get_result(c)?,
        DbConn::Sqlite(c) => accounts::table
            .find(id)
            .select(AccountRow::as_select())
            .get_result(c)?,
    })
}

fn load_hold(conn: &mut DbConn, id: i64) -> Result<HoldRow, LedgerError> {
    on_backend!(conn, |c| holds::table
        .find(id)
        .select(HoldRow::as_select())
        .get_result(c)
        .optional())?
    .ok_or(LedgerError::UnknownHold(id))
}

/// Locks the account a hold belongs to and returns both, the hold read under the lock.
fn lock_hold_account(
    conn: &mut DbConn,
    hold_id: i64,
) -> Result<(AccountRow, HoldRow), LedgerError> {
    let (account_id, hold) = on_backend!(conn, |c| holds::table
        .find(hold_id)
        .select((holds::account_id, HoldRow::as_select()))
        .get_result::<(i64, HoldRow)>(c)
        .optional())?
    .ok_or(LedgerError::UnknownHold(hold_id))?;
    let acct = lock_account_by_id(conn, account_id)?;
    let hold = match conn {
        // `BEGIN IMMEDIATE` already excluded every other writer: the first read stands.
        DbConn::Sqlite(_) => hold,
        // Another transaction may have resolved the hold before this one got the account lock.
        DbConn::Postgres(_) => load_hold(conn, hold_id)?,
    };
    Ok((acct, hold))
}

fn find_entry_by_key(conn: &mut DbConn, key: &str) -> Result<Option<JournalRow>, LedgerError> {
    Ok(on_backend!(conn, |c| journal::table
        .filter(journal::idempotency_key.eq(key))
        .select(JournalRow::as_select())
        .get_result(c)
        .optional())?)
}

/// Looks for a previous use of `key`: `Some(entry)` for a replay of the same request, an error
/// for a different request, `None` when the key is new.
fn replay(conn: &mut DbConn, key: &str, digest: &str) -> Result<Option<JournalRow>, LedgerError> {
    match find_entry_by_key(conn, key)? {
        Some(e) if e.request_digest == digest => Ok(Some(e)),
        Some(e) => Err(LedgerError::IdempotencyConflict {
            key: key.to_string(),
            entry: e.id,
        }),
        None => Ok(None),
    }
}

struct Pending<'a> {
    kind: EntryKind,
    amount: UsdMicros,
    effect: Effect,
    hold_id: Option<i64>,
    cluster: Option<&'a str>,
    job_id: Option<&'a str>,
    partition: Option<&'a str>,
    user_name: Option<&'a str>,
    reason: &'a str,
    flags: &'a str,
    key: &'a str,
    digest: &'a str,
}

impl<'a> Pending<'a> {
    fn simple(
        kind: EntryKind,
        amount: UsdMicros,
        reason: &'a str,
        key: &'a str,
        digest: &'a str,
    ) -> Result<Self, LedgerError> {
        Ok(Pending {
            kind,
            amount,
            effect: Effect::simple(kind, amount)?,
            hold_id: None,
            cluster: None,
            job_id: None,
            partition: None,
            user_name: None,
            reason,
            flags: "",
            key,
            digest,
        })
    }
}

/// The partition balance changes of one operation, written once when the account is saved
/// (a charge and the release of its remainder touch the same partition row once, not twice).
#[derive(Default)]
struct PartitionDeltas {
    changes: Vec<(String, Effect)>,
    /// A partition row the operation has read already: (partition, charged, held).
    known: Option<(String, i64, i64)>,
}

impl PartitionDeltas {
    fn add(&mut self, part: &str, e: Effect) -> Result<(), LedgerError> {
        match self.changes.iter_mut().find(|(p, _)| p == part) {
            Some((_, sum)) => {
                sum.charged = sum.charged.checked_add(e.charged)?;
                sum.held = sum.held.checked_add(e.held)?;
            }
            None => self.changes.push((part.to_string(), e)),
        }
        Ok(())
    }
}

/// Appends one entry to the account's chain and applies it to the in-memory row; the caller
/// saves the row with [`save_account`] before committing.
fn append(
    conn: &mut DbConn,
    ctx: &OpContext,
    acct: &mut AccountRow,
    parts: &mut PartitionDeltas,
    p: &Pending<'_>,
) -> Result<JournalRow, LedgerError> {
    let row = stage(ctx, acct, parts, p)?;
    insert_entry(conn, row)
}

/// Chains one entry to the account in memory: the next `seq`, the hash over every field and
/// the previous head, the effect on the balances (and on `parts`). Writes nothing; the row's
/// `id` is 0 until it is inserted.
fn stage(
    ctx: &OpContext,
    acct: &mut AccountRow,
    parts: &mut PartitionDeltas,
    p: &Pending<'_>,
) -> Result<JournalRow, LedgerError> {
    // A violated kind rule is a programming error in this module, never bad input.
    assert!(
        p.effect.check(p.kind, p.amount).is_ok(),
        "entry effect breaks the rules of {}",
        p.kind
    );
    let balances = acct.balances().apply(p.effect)?;
    let seq = acct.entry_count + 1;
    let hash = entry_hash(&ChainFields {
        account: &acct.name,
        seq,
        kind: p.kind,
        amount: p.amount,
        effect: p.effect,
        hold_id: p.hold_id,
        job_id: p.job_id,
        cluster: p.cluster,
        partition: p.partition,
        user_name: p.user_name,
        actor: &ctx.actor,
        reason: p.reason,
        flags: p.flags,
        idempotency_key: p.key,
        effective_at: ctx.effective_at,
        recorded_at: ctx.recorded_at,
        prev_hash: &acct.chain_head,
    });
    let row = JournalRow {
        id: 0,
        account_id: acct.id,
        seq,
        kind: p.kind.as_str().to_string(),
        amount_micros: p.amount.micros(),
        credited_delta_micros: p.effect.credited.micros(),
        charged_delta_micros: p.effect.charged.micros(),
        held_delta_micros: p.effect.held.micros(),
        hold_id: p.hold_id,
        cluster: p.cluster.map(str::to_string),
        job_id: p.job_id.map(str::to_string),
        partition: p.partition.map(str::to_string),
        user_name: p.user_name.map(str::to_string),
        actor: ctx.actor.clone(),
        reason: p.reason.to_string(),
        flags: p.flags.to_string(),
        idempotency_key: p.key.to_string(),
        request_digest: p.digest.to_string(),
        effective_at: to_naive(ctx.effective_at),
        recorded_at: to_naive(ctx.recorded_at),
        prev_hash: acct.chain_head.clone(),
        hash: hash.clone(),
    };
    if let Some(part) = p.partition {
        if !p.effect.charged.is_zero() || !p.effect.held.is_zero() {
            parts.add(part, p.effect)?;
        }
    }
    acct.counts.add(p.kind, p.flags);
    acct.entry_count = seq;
    acct.chain_head = hash;
    acct.credited_micros = balances.credited.micros();
    acct.charged_micros = balances.charged.micros();
    acct.held_micros = balances.held.micros();
    acct.updated_at = to_naive(ctx.recorded_at);
    Ok(row)
}

// The hot updates are fixed statements (`super::fixed`): diesel keeps their prepared
// statements, which it never does for `update(…).set(…)`.

const UPDATE_PARTITION: &[&str] = &[
    "UPDATE account_partitions SET charged_micros = ",
    ", held_micros = ",
    ", updated_at = ",
    " WHERE account_id = ",
    " AND partition = ",
    "",
];

const UPDATE_ACCOUNT_BALANCES: &[&str] = &[
    "UPDATE accounts SET credited_micros = ",
    ", charged_micros = ",
    ", held_micros = ",
    ", entry_count = ",
    ", chain_head = ",
    ", updated_at = ",
    ", charge_count = ",
    ", overrun_count = ",
    ", unmatched_count = ",
    ", open_hold_count = ",
    " WHERE id = ",
    "",
];

const UPDATE_HOLD_CHARGED: &[&str] = &[
    "UPDATE holds SET remaining_micros = ",
    ", charged_micros = ",
    ", state = ",
    ", flags = ",
    ", job_id = ",
    ", resolved_at = ",
    ", tasks_charged = ",
    " WHERE id = ",
    "",
];

const UPDATE_HOLD_ENDED: &[&str] = &[
    "UPDATE holds SET remaining_micros = 0, state = ",
    ", resolved_at = ",
    " WHERE id = ",
    "",
];

fn bump_partition(
    conn: &mut DbConn,
    ctx: &OpContext,
    account_id: i64,
    part: &str,
    e: Effect,
    known: Option<&(String, i64, i64)>,
) -> Result<(), LedgerError> {
    let existing = match known {
        Some((p, charged, held)) if p == part => Some(PartitionRow {
            partition: p.clone(),
            limit_micros: None,
            charged_micros: *charged,
            held_micros: *held,
        }),
        _ => on_backend!(conn, |c| account_partitions::table
            .find((account_id, part))
            .select(PartitionRow::as_select())
            .get_result(c)
            .optional())?,
    };
    let now = to_naive(ctx.recorded_at);
    match existing {
        Some(r) => {
            let charged = UsdMicros::from_stored(r.charged_micros)
                .checked_add(e.charged)?
                .micros();
            let held = UsdMicros::from_stored(r.held_micros)
                .checked_add(e.held)?
                .micros();
            on_backend!(conn, |c| fixed(
                UPDATE_PARTITION,
                (
                    bind::<BigInt, _>(charged),
                    bind::<BigInt, _>(held),
                    bind::<Timestamp, _>(now),
                    bind::<BigInt, _>(account_id),
                    bind::<Text, _>(part),
                )
            )
            .execute(c))?;
        }
        None => {
            on_backend!(conn, |c| diesel::insert_into(account_partitions::table)
                .values((
                    account_partitions::account_id.eq(account_id),
                    account_partitions::partition.eq(part),
                    account_partitions::limit_micros.eq(None::<i64>),
                    account_partitions::charged_micros.eq(e.charged.micros()),
                    account_partitions::held_micros.eq(e.held.micros()),
                    account_partitions::updated_at.eq(now),
                ))
                .execute(c))?;
        }
    }
    Ok(())
}

fn save_account(
    conn: &mut DbConn,
    ctx: &OpContext,
    acct: &AccountRow,
    parts: PartitionDeltas,
) -> Result<(), LedgerError> {
    for (part, e) in &parts.changes {
        bump_partition(conn, ctx, acct.id, part, *e, parts.known.as_ref())?;
    }
    on_backend!(conn, |c| fixed(
        UPDATE_ACCOUNT_BALANCES,
        (
            bind::<BigInt, _>(acct.credited_micros),
            bind::<BigInt, _>(acct.charged_micros),
            bind::<BigInt, _>(acct.held_micros),
            bind::<BigInt, _>(acct.entry_count),
            bind::<Text, _>(&acct.chain_head),
            bind::<Timestamp, _>(to_naive(ctx.recorded_at)),
            bind::<BigInt, _>(acct.counts.charges),
            bind::<BigInt, _>(acct.counts.overruns),
            bind::<BigInt, _>(acct.counts.unmatched),
            bind::<BigInt, _>(acct.open_holds),
            bind::<BigInt, _>(acct.id),
        )
    )
    .execute(c))?;
    Ok(())
}

fn account_name_of(conn: &mut DbConn, id: i64) -> Result<String, LedgerError> {
    Ok(on_backend!(conn, |c| accounts::table
        .find(id)
        .select(accounts::name)
        .get_result(c))?)
}

fn entry_record(conn: &mut DbConn, row: &JournalRow) -> Result<Entry, LedgerError> {
    let name = account_name_of(conn, row.account_id)?;
    Ok(row.to_record(&name, None))
}

// ---------------------------------------------------------------------------------------------
// Accounts

/// Creates an account and credits its initial budget.
pub fn create_account(
    conn: &mut DbConn,
    ctx: &OpContext,
    new: &NewAccount,
) -> Result<Account, LedgerError> {
    if new.display_name.trim().is_empty() {
        return Err(LedgerError::invalid("--name", "the display name is empty"));
    }
    check_text("--name", &new.display_name)?;
    check_text("--description", &new.description)?;
    if new.ends_at <= new.starts_at {
        return Err(LedgerError::invalid(
            "--end",
            format!(
                "the end ({}) must be after the start ({})",
                new.ends_at.to_rfc3339(),
                new.starts_at.to_rfc3339()
            ),
        ));
    }
    new.budget
        .non_negative()
        .map_err(|e| LedgerError::invalid("--budget", e.to_string()))?;
    new.overdraft
        .non_negative()
        .map_err(|e| LedgerError::invalid("--overdraft", e.to_string()))?;
    let name = new.name.as_str();
    write_transaction(conn, |conn| {
        let exists = accounts::table
            .filter(accounts::name.eq(name))
            .count()
            .get_result::<i64>(conn)?;
        if exists > 0 {
            return Err(LedgerError::AccountExists(name.to_string()));
        }
        let now = to_naive(ctx.recorded_at);
        let genesis = genesis_hash(name);
        let id: i64 = diesel::insert_into(accounts::table)
            .values(NewAccountRow {
                name,
                display_name: new.display_name.trim(),
                description: &new.description,
                starts_at: to_naive(new.starts_at),
                ends_at: to_naive(new.ends_at),
                status: AccountStatus::Active.as_str(),
                overdraft_micros: new.overdraft.micros(),
                chain_head: &genesis,
                settings_head: &settings_genesis_hash(name),
                created_at: now,
                updated_at: now,
            })
            .returning(accounts::id)
            .get_result(conn)
            .map_err(|e| match e {
                // A concurrent create of the same name won the race (PostgreSQL).
                diesel::result::Error::DatabaseError(
                    diesel::result::DatabaseErrorKind::UniqueViolation,
                    _,
                ) => LedgerError::AccountExists(name.to_string()),
                other => other.into(),
            })?;
        let mut acct = lock_account_by_id(conn, id)?;
        // The settings the account starts with open its settings chain.
        let created = [
            ("display_name", String::new(), acct.display_name.clone()),
            ("description", String::new(), acct.description.clone()),
            ("starts_at", String::new(), setting_time(acct.starts_at)),
            ("ends_at", String::new(), setting_time(acct.ends_at)),
            ("status", String::new(), acct.status.clone()),
            (
                "overdraft",
                String::new(),
                UsdMicros::from_stored(acct.overdraft_micros).to_string(),
            ),
        ];
        record_changes(conn, ctx, &mut acct, &created, "account created")?;
        if !new.budget.is_zero() {
            let key = format!("account-create:{name}:budget");
            let amount = new.budget.micros().to_string();
            let digest = request_digest(&["credit", name, &amount, "initial budget"]);
            let mut parts = PartitionDeltas::default();
            append(
                conn,
                ctx,
                &mut acct,
                &mut parts,
                &Pending::simple(
                    EntryKind::Credit,
                    new.budget,
                    "initial budget",
                    &key,
                    &digest,
                )?,
            )?;
            save_account(conn, ctx, &acct, parts)?;
        }
        Ok(acct.to_record())
    })
}

/// Changes to account settings; `None` leaves a setting as it is.
#[derive(Debug, Clone, Default)]
pub struct AccountUpdate {
    /// New display name.
    pub display_name: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// New start.
    pub starts_at: Option<DateTime<Utc>>,
    /// New end.
    pub ends_at: Option<DateTime<Utc>>,
    /// New overdraft limit.
    pub overdraft: Option<UsdMicros>,
    /// New status (active or suspended; closing has its own operation).
    pub status: Option<AccountStatus>,
    /// Why (recorded with each change).
    pub reason: String,
}

/// Updates account settings, recording each change in `account_changes`.
pub fn update_account(
    conn: &mut DbConn,
    ctx: &OpContext,
    name: &str,
    upd: &AccountUpdate,
) -> Result<Account, LedgerError> {
    if let Some(n) = &upd.display_name {
        if n.trim().is_empty() {
            return Err(LedgerError::invalid("--name", "the display name is empty"));
        }
        check_text("--name", n)?;
    }
    if let Some(d) = &upd.description {
        check_text("--description", d)?;
    }
    check_text("--reason", &upd.reason)?;
    if let Some(o) = upd.overdraft {
        o.non_negative()
            .map_err(|e| LedgerError::invalid("--overdraft", e.to_string()))?;
    }
    if upd.status == Some(AccountStatus::Closed) {
        return Err(LedgerError::invalid(
            "--status",
            format!("close an account with `asbb account close {name}`"),
        ));
    }
    write_transaction(conn, |conn| {
        let mut acct = lock_account(conn, name)?;
        if acct.status() == AccountStatus::Closed {
            return Err(LedgerError::AccountState {
                account: name.to_string(),
                status: AccountStatus::Closed,
                what: "closed accounts cannot be changed".into(),
            });
        }
        let starts = upd.starts_at.map(to_naive).unwrap_or(acct.starts_at);
        let ends = upd.ends_at.map(to_naive).unwrap_or(acct.ends_at);
        if ends <= starts {
            return Err(LedgerError::invalid(
                "--end",
                format!("the end ({ends}) must be after the start ({starts})"),
            ));
        }
        let mut changes: Vec<(&str, String, String)> = Vec::new();
        let mut note = |field, old: String, new: String| {
            if old != new {
                changes.push((field, old, new));
            }
        };
        if let Some(v) = &upd.display_name {
            note(
                "display_name",
                acct.display_name.clone(),
                v.trim().to_string(),
            );
        }
        if let Some(v) = &upd.description {
            note("description", acct.description.clone(), v.clone());
        }
        note(
            "starts_at",
            setting_time(acct.starts_at),
            setting_time(starts),
        );
        note("ends_at", setting_time(acct.ends_at), setting_time(ends));
        if let Some(v) = upd.overdraft {
            note(
                "overdraft",
                UsdMicros::from_stored(acct.overdraft_micros).to_string(),
                v.to_string(),
            );
        }
        if let Some(v) = upd.status {
            note("status", acct.status.clone(), v.as_str().to_string());
        }
        let now = to_naive(ctx.recorded_at);
        diesel::update(accounts::table.find(acct.id))
            .set((
                accounts::display_name.eq(upd
                    .display_name
                    .as_deref()
                    .map(str::trim)
                    .unwrap_or(&acct.display_name)),
                accounts::description.eq(upd.description.as_deref().unwrap_or(&acct.description)),
                accounts::starts_at.eq(starts),
                accounts::ends_at.eq(ends),
                accounts::overdraft_micros.eq(upd
                    .overdraft
                    .map(|o| o.micros())
                    .unwrap_or(acct.overdraft_micros)),
                accounts::status.eq(upd.status.map(|s| s.as_str()).unwrap_or(&acct.status)),
                accounts::updated_at.eq(now),
            ))
            .execute(conn)?;
        record_changes(conn, ctx, &mut acct, &changes, &upd.reason)?;
        Ok(lock_account_by_id(conn, acct.id)?.to_record())
    })
}

/// The text form of a date setting in `account_changes`.
pub(crate) fn setting_time(t: chrono::NaiveDateTime) -> String {
    crate::domain::time::from_naive(t).to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// The text form of a partition limit setting.
pub(crate) fn setting_limit(limit: Option<i64>) -> String {
    limit
        .map(|m| UsdMicros::from_stored(m).to_string())
        .unwrap_or_else(|| "none".into())
}

/// Appends setting changes to the account's settings chain.
fn record_changes(
    conn: &mut DbConn,
    ctx: &OpContext,
    acct: &mut AccountRow,
    changes: &[(&str, String, String)],
    reason: &str,
) -> Result<(), LedgerError> {
    if changes.is_empty() {
        return Ok(());
    }
    for (field, old, new) in changes {
        let seq = acct.settings_count + 1;
        let hash = setting_hash(&SettingFields {
            account: &acct.name,
            seq,
            field,
            old_value: old,
            new_value: new,
            actor: &ctx.actor,
            reason,
            changed_at: ctx.recorded_at,
            prev_hash: &acct.settings_head,
        });
        diesel::insert_into(account_changes::table)
            .values(NewAccountChangeRow {
                account_id: acct.id,
                field,
                old_value: old,
                new_value: new,
                actor: &ctx.actor,
                reason,
                changed_at: to_naive(ctx.recorded_at),
                seq,
                prev_hash: &acct.settings_head,
                hash: &hash,
            })
            .execute(conn)?;
        acct.settings_count = seq;
        acct.settings_head = hash;
    }
    diesel::update(accounts::table.find(acct.id))
        .set((
            accounts::settings_count.eq(acct.settings_count),
            accounts::settings_head.eq(&acct.settings_head),
        ))
        .execute(conn)?;
    Ok(())
}

/// Closes an account for good. Refuses while holds are open: release or charge them first.
pub fn close_account(
    conn: &mut DbConn,
    ctx: &OpContext,
    name: &str,
    reason: &str,
) -> Result<Account, LedgerError> {
    check_text("--reason", reason)?;
    write_transaction(conn, |conn| {
        let mut acct = lock_account(conn, name)?;
        if acct.status() == AccountStatus::Closed {
            return Ok(acct.to_record());
        }
        // The holds themselves decide, not the cached count: read through the open entries of
        // `holds_state_expires`, which are the holds outstanding (a rare command can afford it).
        let open: Vec<i64> = holds::table
            .filter(holds::state.eq(HoldState::Open.as_str()))
            .filter(holds::account_id.eq(acct.id))
            .select(holds::id)
            .order(holds::id)
            .limit(10)
            .load(conn)?;
        if !open.is_empty() {
            let list: Vec<String> = open.iter().map(|id| format!("hold-{id}")).collect();
            return Err(LedgerError::AccountState {
                account: name.to_string(),
                status: acct.status(),
                what: format!(
                    "it still has open holds ({}); charge or release them (`asbb hold release ID`) before closing",
                    list.join(", ")
                ),
            });
        }
        diesel::update(accounts::table.find(acct.id))
            .set((
                accounts::status.eq(AccountStatus::Closed.as_str()),
                accounts::updated_at.eq(to_naive(ctx.recorded_at)),
            ))
            .execute(conn)?;
        let old_status = acct.status.clone();
        record_changes(
            conn,
            ctx,
            &mut acct,
            &[("status", old_status, "closed".into())],
            reason,
        )?;
        Ok(lock_account_by_id(conn, acct.id)?.to_record())
    })
}

/// Deletes an account that never had a journal entry (a mistyped creation). Anything that has
/// held money is never deleted.
pub fn delete_account(conn: &mut DbConn, name: &str) -> Result<(), LedgerError> {
    write_transaction(conn, |conn| {
        let acct = lock_account(conn, name)?;
        if acct.entry_count > 0 {
            return Err(LedgerError::HasHistory {
                account: name.to_string(),
                entries: acct.entry_count,
            });
        }
        diesel::delete(account_changes::table.filter(account_changes::account_id.eq(acct.id)))
            .execute(conn)?;
        diesel::delete(
            account_partitions::table.filter(account_partitions::account_id.eq(acct.id)),
        )
        .execute(conn)?;
        diesel::delete(accounts::table.find(acct.id)).execute(conn)?;
        Ok(())
    })
}

/// Sets (or with `None` removes) the account's limit for a partition.
pub fn set_partition_limit(
    conn: &mut DbConn,
    ctx: &OpContext,
    name: &str,
    partition: &PartitionName,
    limit: Option<UsdMicros>,
) -> Result<(), LedgerError> {
    if let Some(l) = limit {
        l.non_negative()
            .map_err(|e| LedgerError::invalid("--amount", e.to_string()))?;
    }
    write_transaction(conn, |conn| {
        let mut acct = lock_account(conn, name)?;
        let part = partition.as_str();
        let existing = account_partitions::table
            .find((acct.id, part))
            .select(PartitionRow::as_select())
            .get_result(conn)
            .optional()?;
        let now = to_naive(ctx.recorded_at);
        let old = existing.as_ref().and_then(|r| r.limit_micros);
        match existing {
            Some(_) => {
                diesel::update(account_partitions::table.find((acct.id, part)))
                    .set((
                        account_partitions::limit_micros.eq(limit.map(|l| l.micros())),
                        account_partitions::updated_at.eq(now),
                    ))
                    .execute(conn)?;
            }
            None => {
                diesel::insert_into(account_partitions::table)
                    .values((
                        account_partitions::account_id.eq(acct.id),
                        account_partitions::partition.eq(part),
                        account_partitions::limit_micros.eq(limit.map(|l| l.micros())),
                        account_partitions::charged_micros.eq(0i64),
                        account_partitions::held_micros.eq(0i64),
                        account_partitions::updated_at.eq(now),
                    ))
                    .execute(conn)?;
            }
        }
        record_changes(
            conn,
            ctx,
            &mut acct,
            &[(
                &format!("partition_limit:{part}"),
                setting_limit(old),
                setting_limit(limit.map(|l| l.micros())),
            )],
            "",
        )?;
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// Money in and out

/// The result of a money operation.
#[derive(Debug, Clone)]
pub struct Posted {
    /// The entry (the first one, for a replay).
    pub entry: Entry,
    /// Whether this call was a replay of an earlier one with the same key.
    pub replayed: bool,
    /// The account after the operation.
    pub account: Account,
}

/// A simple money operation on an account.
#[derive(Debug, Clone)]
pub struct MoneyOp<'a> {
    /// Account name.
    pub account: &'a str,
    /// Amount (positive; signed for adjustments).
    pub amount: UsdMicros,
    /// Why.
    pub reason: &'a str,
    /// Idempotency key.
    pub key: &'a str,
    /// Linked job, for refunds.
    pub job_id: Option<&'a str>,
    /// Partition a refunded cost was charged in (refunds only): its partition use shrinks too.
    pub partition: Option<&'a str>,
}

/// Credits money to an account (a deposit; allocations use it too).
pub fn credit(conn: &mut DbConn, ctx: &OpContext, op: &MoneyOp<'_>) -> Result<Posted, LedgerError> {
    op.amount
        .positive()
        .map_err(|e| LedgerError::invalid("AMOUNT", e.to_string()))?;
    simple_op(conn, ctx, EntryKind::Credit, op)
}

/// Adjusts the budget by a signed amount, with a mandatory reason.
pub fn adjust(conn: &mut DbConn, ctx: &OpContext, op: &MoneyOp<'_>) -> Result<Posted, LedgerError> {
    if op.amount.is_zero() {
        return Err(LedgerError::invalid(
            "AMOUNT",
            "an adjustment of zero changes nothing",
        ));
    }
    simple_op(conn, ctx, EntryKind::Adjustment, op)
}

/// Gives used money back to an account, with a mandatory reason.
pub fn refund(conn: &mut DbConn, ctx: &OpContext, op: &MoneyOp<'_>) -> Result<Posted, LedgerError> {
    op.amount
        .positive()
        .map_err(|e| LedgerError::invalid("AMOUNT", e.to_string()))?;
    simple_op(conn, ctx, EntryKind::Refund, op)
}

fn simple_op(
    conn: &mut DbConn,
    ctx: &OpContext,
    kind: EntryKind,
    op: &MoneyOp<'_>,
) -> Result<Posted, LedgerError> {
    let digest = money_op_digest(kind, op)?;
    write_transaction(conn, |conn| {
        let mut acct = lock_account(conn, op.account)?;
        if let Some(first) = replay(conn, op.key, &digest)? {
            return Ok(Posted {
                entry: first.to_record(&acct.name, None),
                replayed: true,
                account: acct.to_record(),
            });
        }
        if kind != EntryKind::Refund && acct.status() == AccountStatus::Closed {
            return Err(LedgerError::AccountState {
                account: acct.name.clone(),
                status: AccountStatus::Closed,
                what: format!("a {kind} cannot be booked to a closed account"),
            });
        }
        if kind == EntryKind::Refund {
            let partition_charged = match op.partition {
                Some(part) => on_backend!(conn, |c| account_partitions::table
                    .find((acct.id, part))
                    .select(account_partitions::charged_micros)
                    .get_result::<i64>(c)
                    .optional())?
                .unwrap_or(0),
                None => 0,
            };
            check_refund(&acct, op, partition_charged)?;
        }
        let mut parts = PartitionDeltas::default();
        let row = append(
            conn,
            ctx,
            &mut acct,
            &mut parts,
            &money_op_entry(kind, op, &digest)?,
        )?;
        save_account(conn, ctx, &acct, parts)?;
        Ok(Posted {
            entry: row.to_record(&acct.name, None),
            replayed: false,
            account: acct.to_record(),
        })
    })
}

/// Checks a deposit's, adjustment's or refund's input and returns its request digest.
fn money_op_digest(kind: EntryKind, op: &MoneyOp<'_>) -> Result<String, LedgerError> {
    if matches!(kind, EntryKind::Adjustment | EntryKind::Refund) && op.reason.trim().is_empty() {
        return Err(LedgerError::invalid(
            "--reason",
            format!("a {kind} needs a reason"),
        ));
    }
    check_text("--reason", op.reason)?;
    check_key(op.key)?;
    if kind != EntryKind::Refund && op.partition.is_some() {
        return Err(LedgerError::invalid(
            "--partition",
            format!("a {kind} is not booked to a partition"),
        ));
    }
    let amount = op.amount.micros().to_string();
    Ok(request_digest(&[
        kind.as_str(),
        op.account,
        &amount,
        op.reason,
        op.job_id.unwrap_or(""),
        op.partition.unwrap_or(""),
    ]))
}

/// A refund gives back at most what was charged, to the account and to the partition named.
fn check_refund(
    acct: &AccountRow,
    op: &MoneyOp<'_>,
    partition_charged: i64,
) -> Result<(), LedgerError> {
    if op.amount > UsdMicros::from_stored(acct.charged_micros) {
        return Err(LedgerError::invalid(
            "AMOUNT",
            format!(
                "a refund of ${} is more than the ${} charged to '{}'",
                op.amount,
                UsdMicros::from_stored(acct.charged_micros),
                acct.name
            ),
        ));
    }
    if let Some(part) = op.partition {
        if op.amount.micros() > partition_charged {
            return Err(LedgerError::invalid(
                "--partition",
                format!(
                    "a refund of ${} is more than the ${} charged in partition '{part}'",
                    op.amount,
                    UsdMicros::from_stored(partition_charged)
                ),
            ));
        }
    }
    Ok(())
}

/// The entry of a deposit, adjustment or refund.
fn money_op_entry<'a>(
    kind: EntryKind,
    op: &MoneyOp<'a>,
    digest: &'a str,
) -> Result<Pending<'a>, LedgerError> {
    let mut p = Pending::simple(kind, op.amount, op.reason, op.key, digest)?;
    p.job_id = op.job_id;
    p.partition = op.partition;
    Ok(p)
}

// ---------------------------------------------------------------------------------------------
// Holds

/// A request to hold money for a job.
#[derive(Debug, Clone)]
pub struct HoldRequest<'a> {
    /// Account name.
    pub account: &'a str,
    /// Partition, for partition limits.
    pub partition: Option<&'a str>,
    /// Cost estimate before the buffer.
    pub estimate: UsdMicros,
    /// Buffer factor (e.g. 1.2); the amount held is `estimate × buffer`.
    pub buffer: Decimal,
    /// Cluster.
    pub cluster: Option<&'a str>,
    /// Job id, when known.
    pub job_id: Option<&'a str>,
    /// SLURM user.
    pub user_name: Option<&'a str>,
    /// When the hold expires if nothing resolves it.
    pub expires_at: Option<DateTime<Utc>>,
    /// For a job array: the number of tasks the hold covers (each task is charged on its own).
    pub tasks: Option<u32>,
    /// Idempotency key.
    pub key: &'a str,
}

/// The outcome of a hold request.
#[derive(Debug, Clone)]
pub enum HoldOutcome {
    /// The hold was placed (or had been placed by an earlier call with the same key).
    Placed {
        /// The hold.
        hold: Box<Hold>,
        /// Whether this call was a replay.
        replayed: bool,
        /// The account after the hold.
        account: Box<Account>,
    },
    /// The hold was refused; nothing was written.
    Denied(Denial),
}

/// Places a hold, checking pessimistically that the account can cover it.
///
/// Everything is decided before anything is written, so inside a caller's transaction it
/// joins that one without a savepoint ([`joined_write_transaction`]): only a database error
/// (or a race for the key) can stop it half-way, and the caller must then roll back.
pub fn place_hold(
    conn: &mut DbConn,
    ctx: &OpContext,
    req: &HoldRequest<'_>,
) -> Result<HoldOutcome, LedgerError> {
    check_key(req.key)?;
    req.estimate
        .non_negative()
        .map_err(|e| LedgerError::invalid("--amount", e.to_string()))?;
    if req.buffer < Decimal::ONE || req.buffer > Decimal::from(100) {
        return Err(LedgerError::invalid(
            "--buffer",
            format!("buffer {} must be between 1 and 100", req.buffer),
        ));
    }
    let amount = req.estimate.mul_decimal(req.buffer)?;
    if amount.is_zero() {
        return Err(LedgerError::invalid(
            "--amount",
            "a hold must be greater than zero",
        ));
    }
    let buffer = req.buffer.normalize().to_string();
    let estimate_s = req.estimate.micros().to_string();
    let digest = request_digest(&[
        "hold",
        req.account,
        req.partition.unwrap_or(""),
        &estimate_s,
        &buffer,
        req.cluster.unwrap_or(""),
        req.job_id.unwrap_or(""),
        req.user_name.unwrap_or(""),
        &req.tasks.map(|t| format!("tasks={t}")).unwrap_or_default(),
    ]);
    if req.tasks == Some(0) {
        return Err(LedgerError::invalid(
            "--tasks",
            "an array hold covers at least one task",
        ));
    }
    joined_write_transaction(conn, |conn| {
        let mut acct = match lock_account(conn, req.account) {
            Ok(a) => a,
            Err(LedgerError::UnknownAccount(a)) => {
                return Ok(HoldOutcome::Denied(Denial {
                    reason: DenyReason::UnknownAccount,
                    message: format!("no budget account named '{a}'"),
                }))
            }
            Err(e) => return Err(e),
        };
        if let Some(first) = replay(conn, req.key, &digest)? {
            let hold = load_hold(conn, first.hold_id.expect("hold entries link their hold"))?;
            return Ok(HoldOutcome::Placed {
                hold: Box::new(hold.to_record(&acct.name)),
                replayed: true,
                account: Box::new(acct.to_record()),
            });
        }
        let part_row = match req.partition {
            Some(p) => on_backend!(conn, |c| account_partitions::table
                .find((acct.id, p))
                .select(PartitionRow::as_select())
                .get_result(c)
                .optional())?,
            None => None,
        };
        let partition = match (&part_row, req.partition) {
            (Some(r), Some(name)) => match r.limit_micros {
                Some(limit) => Some(PartitionUse {
                    name,
                    limit: UsdMicros::from_stored(limit),
                    used: UsdMicros::from_stored(r.charged_micros)
                        .checked_add(UsdMicros::from_stored(r.held_micros))?,
                }),
                None => None,
            },
            _ => None,
        };
        let hctx = HoldContext {
            account: &acct.name,
            status: acct.status(),
            starts_at: crate::domain::time::from_naive(acct.starts_at),
            ends_at: crate::domain::time::from_naive(acct.ends_at),
            balances: acct.balances(),
            overdraft: UsdMicros::from_stored(acct.overdraft_micros),
            partition,
        };
        if let Err(denial) = decide_hold(&hctx, amount, ctx.effective_at) {
            return Ok(HoldOutcome::Denied(denial));
        }
        let new_hold = NewHoldRow {
            account_id: acct.id,
            partition: req.partition,
            cluster: req.cluster,
            job_id: req.job_id,
            user_name: req.user_name,
            estimate_micros: req.estimate.micros(),
            buffer: &buffer,
            amount_micros: amount.micros(),
            remaining_micros: amount.micros(),
            charged_micros: 0,
            state: HoldState::Open.as_str(),
            flags: "",
            expires_at: req.expires_at.map(to_naive),
            created_at: to_naive(ctx.effective_at),
            idempotency_key: req.key,
            tasks: req.tasks.map(i64::from),
        };
        let hold_id: i64 = on_backend!(conn, |c| diesel::insert_into(holds::table)
            .values(&new_hold)
            .returning(holds::id)
            .get_result(c))
        .map_err(key_race(req.key))?;
        acct.open_holds += 1;
        let reason = format!("hold of ${amount} (estimate ${} x {buffer})", req.estimate);
        let mut p = Pending::simple(EntryKind::Hold, amount, &reason, req.key, &digest)?;
        p.hold_id = Some(hold_id);
        p.cluster = req.cluster;
        p.job_id = req.job_id;
        p.partition = req.partition;
        p.user_name = req.user_name;
        let mut parts = PartitionDeltas {
            known: part_row
                .as_ref()
                .map(|r| (r.partition.clone(), r.charged_micros, r.held_micros)),
            ..Default::default()
        };
        append(conn, ctx, &mut acct, &mut parts, &p)?;
        save_account(conn, ctx, &acct, parts)?;
        let hold = HoldRow {
            id: hold_id,
            partition: req.partition.map(str::to_string),
            cluster: req.cluster.map(str::to_string),
            job_id: req.job_id.map(str::to_string),
            user_name: req.user_name.map(str::to_string),
            estimate_micros: req.estimate.micros(),
            buffer: buffer.clone(),
            amount_micros: amount.micros(),
            remaining_micros: amount.micros(),
            charged_micros: 0,
            state: HoldState::Open.as_str().to_string(),
            flags: String::new(),
            expires_at: req.expires_at.map(to_naive),
            created_at: to_naive(ctx.effective_at),
            resolved_at: None,
            tasks: req.tasks.map(i64::from),
            tasks_charged: 0,
        };
        Ok(HoldOutcome::Placed {
            hold: Box::new(hold.to_record(&acct.name)),
            replayed: false,
            account: Box::new(acct.to_record()),
        })
    })
}

/// The result of charging a hold.
#[derive(Debug, Clone)]
pub struct ChargeOutcome {
    /// The hold after the charge (`None` for a charge without a hold).
    pub hold: Option<Hold>,
    /// The charge entry.
    pub charge: Entry,
    /// The release of the remainder, if any was left.
    pub release: Option<Entry>,
    /// Cost beyond the hold, still charged in full.
    pub overrun: UsdMicros,
    /// Whether this call was a replay.
    pub replayed: bool,
    /// The account after the charge.
    pub account: Account,
}

/// A request to charge actual cost against a hold.
#[derive(Debug, Clone)]
pub struct ChargeHold<'a> {
    /// The hold.
    pub hold_id: i64,
    /// The actual cost.
    pub actual: UsdMicros,
    /// The job, if the hold did not know it yet.
    pub job_id: Option<&'a str>,
    /// Why (free text).
    pub reason: &'a str,
    /// Idempotency key.
    pub key: &'a str,
}

/// Charges the actual cost against a hold and releases the remainder. A cost above the hold is
/// still charged in full and flagged `overrun`.
pub fn charge_hold(
    conn: &mut DbConn,
    ctx: &OpContext,
    req: &ChargeHold<'_>,
) -> Result<ChargeOutcome, LedgerError> {
    let digest = hold_charge_digest(req)?;
    write_transaction(conn, |conn| {
        let (mut acct, hold) = lock_hold_account(conn, req.hold_id)?;
        if let Some(first) = replay(conn, req.key, &digest)? {
            return replayed_charge(conn, &acct, first);
        }
        let mut parts = PartitionDeltas::default();
        let settled = settle_hold_charge(ctx, &mut acct, &mut parts, hold, req, &digest)?;
        let charge_row = insert_entry(conn, settled.charge)?;
        let release_row = settled.release.map(|r| insert_entry(conn, r)).transpose()?;
        save_account(conn, ctx, &acct, parts)?;
        update_charged_hold(conn, &settled.hold)?;
        Ok(ChargeOutcome {
            hold: Some(settled.hold.to_record(&acct.name)),
            charge: charge_row.to_record(&acct.name, None),
            release: release_row.map(|r| r.to_record(&acct.name, None)),
            overrun: settled.overrun,
            replayed: false,
            account: acct.to_record(),
        })
    })
}

/// Checks a hold charge's input and returns its request digest.
fn hold_charge_digest(req: &ChargeHold<'_>) -> Result<String, LedgerError> {
    check_key(req.key)?;
    check_text("--reason", req.reason)?;
    req.actual
        .non_negative()
        .map_err(|e| LedgerError::invalid("--actual-cost", e.to_string()))?;
    let actual_s = req.actual.micros().to_string();
    let hold_s = req.hold_id.to_string();
    // The hold and the cost identify the request; the job is checked against the hold's.
    Ok(request_digest(&["charge-hold", &hold_s, &actual_s]))
}

/// A hold charge worked out in memory: its entries (not yet inserted) and the hold after it.
struct SettledCharge {
    charge: JournalRow,
    release: Option<JournalRow>,
    hold: HoldRow,
    overrun: UsdMicros,
}

/// Works out a charge against an open hold on the locked account, in memory: the charge
/// entry, the release of the remainder (for a plain hold, or the last task of an array), and
/// the hold's new state. Shared by [`charge_hold`] and [`charge_batch`].
fn settle_hold_charge(
    ctx: &OpContext,
    acct: &mut AccountRow,
    parts: &mut PartitionDeltas,
    hold: HoldRow,
    req: &ChargeHold<'_>,
    digest: &str,
) -> Result<SettledCharge, LedgerError> {
    if hold.state() != HoldState::Open {
        return Err(LedgerError::HoldResolved {
            id: hold.id,
            state: hold.state(),
        });
    }
    if let (Some(a), Some(b)) = (hold.job_id.as_deref(), req.job_id) {
        // The tasks of an array (and components of a het job) draw from the job's hold.
        let base_of_b = b.split(['_', '+']).next().unwrap_or(b);
        if a != b && a != base_of_b {
            return Err(LedgerError::invalid(
                "--job",
                format!("hold-{} belongs to job {a}, not {b}", hold.id),
            ));
        }
    }
    let job = req.job_id.or(hold.job_id.as_deref());
    let remaining = UsdMicros::from_stored(hold.remaining_micros);
    let mut s = settle(remaining, req.actual)?;
    // A plain hold resolves with its one charge; an array hold stays open until its last
    // task is charged, and only then releases what is left.
    let tasks_charged = hold.tasks_charged + 1;
    let last = hold.tasks.is_none_or(|n| tasks_charged >= n);
    if !last {
        s.released = UsdMicros::ZERO;
    }
    let overrun_now = !s.overrun.is_zero();
    let flags = if overrun_now || hold.flags == "overrun" {
        "overrun"
    } else {
        ""
    };
    let entry_flags = if overrun_now { "overrun" } else { "" };
    let reason = if req.reason.is_empty() {
        if s.overrun.is_zero() {
            format!("actual cost ${} against hold-{}", req.actual, hold.id)
        } else {
            format!(
                "actual cost ${} exceeds hold-{} by ${}",
                req.actual, hold.id, s.overrun
            )
        }
    } else {
        req.reason.to_string()
    };
    let charge = Pending {
        kind: EntryKind::Charge,
        amount: req.actual,
        effect: Effect {
            credited: UsdMicros::ZERO,
            charged: req.actual,
            held: s.consumed.checked_neg()?,
        },
        hold_id: Some(hold.id),
        cluster: hold.cluster.as_deref(),
        job_id: job,
        partition: hold.partition.as_deref(),
        user_name: hold.user_name.as_deref(),
        reason: &reason,
        flags: entry_flags,
        key: req.key,
        digest,
    };
    let charge_row = stage(ctx, acct, parts, &charge)?;
    let release_row = if s.released.is_zero() {
        None
    } else {
        let release_key = format!("{}{RELEASE_KEY_SUFFIX}", req.key);
        let release_reason = format!("remainder of hold-{} after charge", hold.id);
        let p = Pending {
            kind: EntryKind::Release,
            amount: s.released,
            effect: Effect::simple(EntryKind::Release, s.released)?,
            reason: &release_reason,
            flags: "",
            key: &release_key,
            ..charge
        };
        Some(stage(ctx, acct, parts, &p)?)
    };
    let charged = UsdMicros::from_stored(hold.charged_micros).checked_add(req.actual)?;
    let (left, state, resolved_at) = if last {
        acct.open_holds -= 1;
        (0, HoldState::Charged, Some(to_naive(ctx.effective_at)))
    } else {
        (
            remaining.checked_sub(s.consumed)?.micros(),
            HoldState::Open,
            None,
        )
    };
    // An array hold keeps the array's job id; its tasks' charges name the task.
    let array_job = job.and_then(|j| j.split_once('_').map(|(base, _)| base));
    let hold_job = if hold.tasks.is_some() {
        hold.job_id.as_deref().or(array_job).or(job)
    } else {
        job
    }
    .map(str::to_string);
    let hold = HoldRow {
        remaining_micros: left,
        charged_micros: charged.micros(),
        state: state.as_str().to_string(),
        flags: flags.to_string(),
        job_id: hold_job,
        resolved_at,
        tasks_charged,
        ..hold
    };
    Ok(SettledCharge {
        charge: charge_row,
        release: release_row,
        hold,
        overrun: s.overrun,
    })
}

/// Inserts a staged entry and returns it with its id.
fn insert_entry(conn: &mut DbConn, mut row: JournalRow) -> Result<JournalRow, LedgerError> {
    row.id = on_backend!(conn, |c| diesel::insert_into(journal::table)
        .values(&row)
        .returning(journal::id)
        .get_result(c))
    .map_err(key_race(&row.idempotency_key))?;
    Ok(row)
}

/// Writes a hold's state after a charge.
fn update_charged_hold(conn: &mut DbConn, hold: &HoldRow) -> Result<(), LedgerError> {
    on_backend!(conn, |c| fixed(
        UPDATE_HOLD_CHARGED,
        (
            bind::<BigInt, _>(hold.remaining_micros),
            bind::<BigInt, _>(hold.charged_micros),
            bind::<Text, _>(&hold.state),
            bind::<Text, _>(&hold.flags),
            bind::<Nullable<Text>, _>(hold.job_id.as_deref()),
            bind::<Nullable<Timestamp>, _>(hold.resolved_at),
            bind::<BigInt, _>(hold.tasks_charged),
            bind::<BigInt, _>(hold.id),
        )
    )
    .execute(c))?;
    Ok(())
}

fn replayed_charge(
    conn: &mut DbConn,
    acct: &AccountRow,
    first: JournalRow,
) -> Result<ChargeOutcome, LedgerError> {
    let release = find_entry_by_key(
        conn,
        &format!("{}{RELEASE_KEY_SUFFIX}", first.idempotency_key),
    )?;
    let hold = match first.hold_id {
        Some(id) => Some(load_hold(conn, id)?.to_record(&acct.name)),
        None => None,
    };
    let consumed = if first.hold_id.is_some() {
        -first.held_delta_micros
    } else {
        first.amount_micros
    };
    Ok(ChargeOutcome {
        hold,
        overrun: UsdMicros::from_stored(first.amount_micros - consumed).max(UsdMicros::ZERO),
        charge: first.to_record(&acct.name, None),
        release: release.map(|r| r.to_record(&acct.name, None)),
        replayed: true,
        account: acct.to_record(),
    })
}

/// A cost that arrived for no known hold: charged to the account anyway and flagged
/// `unmatched`, because the money really was spent.
#[derive(Debug, Clone)]
pub struct ChargeUnmatched<'a> {
    /// Account name.
    pub account: &'a str,
    /// Actual cost.
    pub amount: UsdMicros,
    /// Partition.
    pub partition: Option<&'a str>,
    /// Cluster.
    pub cluster: Option<&'a str>,
    /// Job id.
    pub job_id: Option<&'a str>,
    /// SLURM user.
    pub user_name: Option<&'a str>,
    /// Why.
    pub reason: &'a str,
    /// Idempotency key.
    pub key: &'a str,
}

/// Charges cost that has no hold. Books on any account status: money spent is never dropped.
pub fn charge_without_hold(
    conn: &mut DbConn,
    ctx: &OpContext,
    req: &ChargeUnmatched<'_>,
) -> Result<ChargeOutcome, LedgerError> {
    let digest = unmatched_digest(req)?;
    write_transaction(conn, |conn| {
        let mut acct = lock_account(conn, req.account)?;
        if let Some(first) = replay(conn, req.key, &digest)? {
            return replayed_charge(conn, &acct, first);
        }
        let reason = unmatched_reason(req);
        let mut parts = PartitionDeltas::default();
        let row = append(
            conn,
            ctx,
            &mut acct,
            &mut parts,
            &unmatched_entry(req, &reason, &digest)?,
        )?;
        save_account(conn, ctx, &acct, parts)?;
        Ok(ChargeOutcome {
            hold: None,
            charge: row.to_record(&acct.name, None),
            release: None,
            overrun: UsdMicros::ZERO,
            replayed: false,
            account: acct.to_record(),
        })
    })
}

/// Checks an unmatched charge's input and returns its request digest.
fn unmatched_digest(req: &ChargeUnmatched<'_>) -> Result<String, LedgerError> {
    check_key(req.key)?;
    check_text("--reason", req.reason)?;
    req.amount
        .non_negative()
        .map_err(|e| LedgerError::invalid("--amount", e.to_string()))?;
    let amount_s = req.amount.micros().to_string();
    Ok(request_digest(&[
        "charge",
        req.account,
        &amount_s,
        req.partition.unwrap_or(""),
        req.cluster.unwrap_or(""),
        req.job_id.unwrap_or(""),
        req.user_name.unwrap_or(""),
    ]))
}

fn unmatched_reason(req: &ChargeUnmatched<'_>) -> String {
    if req.reason.is_empty() {
        "actual cost without a hold".to_string()
    } else {
        req.reason.to_string()
    }
}

/// The entry of a charge without a hold, flagged `unmatched`.
fn unmatched_entry<'a>(
    req: &ChargeUnmatched<'a>,
    reason: &'a str,
    digest: &'a str,
) -> Result<Pending<'a>, LedgerError> {
    Ok(Pending {
        kind: EntryKind::Charge,
        amount: req.amount,
        effect: Effect::simple(EntryKind::Charge, req.amount)?,
        hold_id: None,
        cluster: req.cluster,
        job_id: req.job_id,
        partition: req.partition,
        user_name: req.user_name,
        reason,
        flags: "unmatched",
        key: req.key,
        digest,
    })
}

// ---------------------------------------------------------------------------------------------
// Batches of charges

/// What a charge in a batch books against.
#[derive(Debug, Clone)]
pub enum BatchTarget<'a> {
    /// Actual cost against a hold, as [`charge_hold`] books it.
    Hold(ChargeHold<'a>),
    /// Cost without a hold, as [`charge_without_hold`] books it.
    Unmatched(ChargeUnmatched<'a>),
}

/// A refund booked right after its charge, to the charge's account and partition, as
/// [`refund`] books it.
#[derive(Debug, Clone)]
pub struct BatchRefund<'a> {
    /// Amount refunded.
    pub amount: UsdMicros,
    /// Why.
    pub reason: &'a str,
    /// The job.
    pub job_id: Option<&'a str>,
    /// Idempotency key.
    pub key: &'a str,
}

/// One charge of a batch, with its refund.
#[derive(Debug, Clone)]
pub struct BatchCharge<'a> {
    /// The charge.
    pub target: BatchTarget<'a>,
    /// A refund of part of it.
    pub refund: Option<BatchRefund<'a>>,
}

/// What one charge of a batch booked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchBooked {
    /// The hold charged, if any.
    pub hold_id: Option<i64>,
    /// Whether that hold is still open (an array hold before its last task).
    pub hold_open: bool,
    /// The charge entry.
    pub charge_entry: i64,
    /// The refund entry.
    pub refund_entry: Option<i64>,
    /// The account charged.
    pub account: String,
    /// The partition charged.
    pub partition: Option<String>,
    /// Cost beyond the hold, charged in full.
    pub overrun: UsdMicros,
}

/// The result of [`charge_batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchResult {
    /// Every charge was booked, in order.
    Booked(Vec<BatchBooked>),
    /// Nothing was written: charge `index` must go through the one-at-a-time operations, which
    /// book it or say why not (`why` is for logs).
    OneByOne {
        /// The first charge that needs it.
        index: usize,
        /// Why.
        why: String,
    },
}

/// Rows per multi-row journal insert on SQLite, a fixed number so that its prepared statement
/// is kept: 21 values each keeps well within SQLite's limit on bind parameters (32,766).
const BATCH_INSERT_ROWS: usize = 64;
/// Values per `IN (…)` list.
const BATCH_LOOKUP_KEYS: usize = 500;

/// Books many charges (each with an optional refund) with a handful of statements instead of
/// a dozen per charge: the holds, accounts, partitions and idempotency keys of the whole batch
/// are read in one query each, every entry is chained in memory exactly as [`charge_hold`],
/// [`charge_without_hold`] and [`refund`] would chain it, and then written with multi-row
/// inserts and one update per hold, account and partition. The ledger afterwards is the one
/// those operations, called in order, would have left.
///
/// All or nothing: when any charge is one those operations would refuse or replay (a resolved
/// hold, a key already used, an unknown account, a refund larger than the charge…), nothing
/// is written and [`BatchResult::OneByOne`] says which; the caller books the batch one charge
/// at a time, where every refusal has its own error. Call it inside the caller's write
/// transaction (batch jobs), or on its own.
pub fn charge_batch(
    conn: &mut DbConn,
    ctx: &OpContext,
    items: &[BatchCharge<'_>],
) -> Result<BatchResult, LedgerError> {
    let one_by_one = |index: usize, why: String| Ok(BatchResult::OneByOne { index, why });
    // The same checks and digests as the single operations.
    let mut digests = Vec::with_capacity(items.len());
    let mut keys: Vec<String> = Vec::with_capacity(items.len() * 2);
    for (i, item) in items.iter().enumerate() {
        let digest = match &item.target {
            BatchTarget::Hold(req) => hold_charge_digest(req).inspect(|_| {
                keys.push(format!("{}{RELEASE_KEY_SUFFIX}", req.key));
                keys.push(req.key.to_string());
            }),
            BatchTarget::Unmatched(req) => unmatched_digest(req).inspect(|_| {
                keys.push(req.key.to_string());
            }),
        };
        match digest {
            Ok(d) => digests.push(d),
            Err(e) => return one_by_one(i, e.to_string()),
        }
        if let Some(r) = &item.refund {
            if r.reason.trim().is_empty() {
                return one_by_one(i, "a refund needs a reason".into());
            }
            if let Err(e) = check_text("--reason", r.reason).and_then(|_| check_key(r.key)) {
                return one_by_one(i, e.to_string());
            }
            keys.push(r.key.to_string());
        }
    }
    {
        let mut seen = std::collections::HashSet::with_capacity(keys.len());
        if let Some(k) = keys.iter().find(|k| !seen.insert(k.as_str())) {
            return one_by_one(0, format!("key {k} twice in one batch"));
        }
    }
    // Everything below is decided before anything is written: no savepoint is needed, and a
    // savepoint around a whole batch would make SQLite slow (see the function).
    joined_write_transaction(conn, |conn| {
        // A key already used means a replay or a conflict: the single operations decide.
        for chunk in keys.chunks(BATCH_LOOKUP_KEYS) {
            let used: Vec<String> = on_backend!(conn, |c| journal::table
                .filter(journal::idempotency_key.eq_any(chunk))
                .select(journal::idempotency_key)
                .load(c))?;
            if let Some(k) = used.first() {
                return one_by_one(0, format!("key {k} is already in the journal"));
            }
        }
        let hold_ids: Vec<i64> = items
            .iter()
            .filter_map(|it| match &it.target {
                BatchTarget::Hold(r) => Some(r.hold_id),
                BatchTarget::Unmatched(_) => None,
            })
            .collect();
        let names: Vec<&str> = items
            .iter()
            .filter_map(|it| match &it.target {
                BatchTarget::Unmatched(r) => Some(r.account),
                BatchTarget::Hold(_) => None,
            })
            .collect();
        let mut holds = load_holds(conn, &hold_ids)?;
        let mut account_ids: Vec<i64> = holds.values().map(|(a, _)| *a).collect();
        let mut accts = lock_accounts(conn, &account_ids, &names)?;
        if matches!(conn, DbConn::Postgres(_)) {
            // Another transaction may have charged a hold before this one got the locks.
            holds = load_holds(conn, &hold_ids)?;
        }
        account_ids = accts.keys().copied().collect();
        let by_name: HashMap<String, i64> =
            accts.values().map(|a| (a.name.clone(), a.id)).collect();
        let mut parts = load_partitions(conn, &account_ids)?;
        let mut rows: Vec<JournalRow> = Vec::with_capacity(keys.len());
        let mut booked = Vec::with_capacity(items.len());
        let mut touched_holds: Vec<i64> = Vec::new();
        for (i, (item, digest)) in items.iter().zip(&digests).enumerate() {
            let mut deltas = PartitionDeltas::default();
            let charge_row = rows.len();
            let (acct_id, hold_id, hold_open, partition, overrun) = match &item.target {
                BatchTarget::Hold(req) => {
                    let Some((acct_id, hold)) = holds.get(&req.hold_id).cloned() else {
                        return one_by_one(i, format!("no hold-{}", req.hold_id));
                    };
                    let acct = accts.get_mut(&acct_id).expect("hold accounts are loaded");
                    let settled =
                        match settle_hold_charge(ctx, acct, &mut deltas, hold, req, digest) {
                            Ok(s) => s,
                            Err(e) => return one_by_one(i, e.to_string()),
                        };
                    rows.push(settled.charge);
                    rows.extend(settled.release);
                    let open = settled.hold.state() == HoldState::Open;
                    let partition = settled.hold.partition.clone();
                    holds.insert(req.hold_id, (acct_id, settled.hold));
                    touched_holds.push(req.hold_id);
                    (acct_id, Some(req.hold_id), open, partition, settled.overrun)
                }
                BatchTarget::Unmatched(req) => {
                    let Some(&acct_id) = by_name.get(req.account) else {
                        return one_by_one(i, format!("no account '{}'", req.account));
                    };
                    let acct = accts.get_mut(&acct_id).expect("named accounts are loaded");
                    let reason = unmatched_reason(req);
                    let p = unmatched_entry(req, &reason, digest)?;
                    rows.push(stage(ctx, acct, &mut deltas, &p)?);
                    let partition = req.partition.map(str::to_string);
                    (acct_id, None, false, partition, UsdMicros::ZERO)
                }
            };
            apply_deltas(&mut parts, acct_id, &deltas)?;
            let mut refund_row = None;
            if let Some(r) = &item.refund {
                let acct = accts.get_mut(&acct_id).expect("loaded above");
                let op = MoneyOp {
                    account: &acct.name.clone(),
                    amount: r.amount,
                    reason: r.reason,
                    key: r.key,
                    job_id: r.job_id,
                    partition: partition.as_deref(),
                };
                let digest = money_op_digest(EntryKind::Refund, &op)?;
                let partition_charged = partition
                    .as_ref()
                    .and_then(|p| parts.get(&(acct_id, p.clone())))
                    .map_or(0, |p| p.charged);
                if let Err(e) = check_refund(acct, &op, partition_charged) {
                    return one_by_one(i, e.to_string());
                }
                let mut deltas = PartitionDeltas::default();
                let p = money_op_entry(EntryKind::Refund, &op, &digest)?;
                refund_row = Some(rows.len());
                rows.push(stage(ctx, acct, &mut deltas, &p)?);
                apply_deltas(&mut parts, acct_id, &deltas)?;
            }
            booked.push((
                BatchBooked {
                    hold_id,
                    hold_open,
                    charge_entry: 0,
                    refund_entry: None,
                    account: accts[&acct_id].name.clone(),
                    partition,
                    overrun,
                },
                charge_row,
                refund_row,
            ));
        }
        // Everything is decided; write it.
        let mut ids: HashMap<String, i64> = HashMap::with_capacity(rows.len());
        touched_holds.sort_unstable();
        touched_holds.dedup();
        if let DbConn::Postgres(c) = conn {
            // One statement per table, whatever the batch's size (see `pg_batch`).
            let got = super::pg_batch::insert_journal(c, &rows).map_err(key_race(
                rows.first().map_or("", |r| r.idempotency_key.as_str()),
            ))?;
            ids.extend(got.into_iter().map(|(id, k)| (k, id)));
            let touched: Vec<&HoldRow> = touched_holds.iter().map(|id| &holds[id].1).collect();
            super::pg_batch::update_holds_charged(c, &touched)?;
            let accounts: Vec<&AccountRow> = accts.values().collect();
            super::pg_batch::update_accounts(c, &accounts, to_naive(ctx.recorded_at))?;
            let existing: Vec<super::pg_batch::PartitionTotals<'_>> = parts
                .iter()
                .filter(|(_, p)| p.changed && p.exists)
                .map(|((account_id, partition), p)| {
                    (*account_id, partition.as_str(), p.charged, p.held)
                })
                .collect();
            super::pg_batch::update_partitions(c, &existing, to_naive(ctx.recorded_at))?;
            for ((account_id, partition), p) in &parts {
                if p.changed && !p.exists {
                    write_partition(conn, ctx, *account_id, partition, p)?;
                }
            }
        } else {
            // Chunks of a fixed size are inserted by a statement diesel keeps prepared (its
            // text never varies); only the rest is one statement SQLite parses afresh.
            let mut chunks = rows.chunks_exact(BATCH_INSERT_ROWS);
            for chunk in chunks.by_ref() {
                let new: &[JournalRow; BATCH_INSERT_ROWS] =
                    chunk.try_into().expect("chunks_exact gives full chunks");
                let got: Vec<(i64, String)> =
                    on_backend!(conn, |c| diesel::insert_into(journal::table)
                        .values(new)
                        .returning((journal::id, journal::idempotency_key))
                        .get_results(c))
                    .map_err(key_race(&chunk[0].idempotency_key))?;
                ids.extend(got.into_iter().map(|(id, k)| (k, id)));
            }
            let rest = chunks.remainder();
            if !rest.is_empty() {
                let got: Vec<(i64, String)> =
                    on_backend!(conn, |c| diesel::insert_into(journal::table)
                        .values(rest)
                        .returning((journal::id, journal::idempotency_key))
                        .get_results(c))
                    .map_err(key_race(&rest[0].idempotency_key))?;
                ids.extend(got.into_iter().map(|(id, k)| (k, id)));
            }
            for id in touched_holds {
                update_charged_hold(conn, &holds[&id].1)?;
            }
            for acct in accts.values() {
                save_account(conn, ctx, acct, PartitionDeltas::default())?;
            }
            for ((account_id, partition), p) in &parts {
                if p.changed {
                    write_partition(conn, ctx, *account_id, partition, p)?;
                }
            }
        }
        let key_id = |row: &JournalRow| ids[&row.idempotency_key];
        Ok(BatchResult::Booked(
            booked
                .into_iter()
                .map(|(mut b, charge, refund)| {
                    b.charge_entry = key_id(&rows[charge]);
                    b.refund_entry = refund.map(|r| key_id(&rows[r]));
                    b
                })
                .collect(),
        ))
    })
}

/// Holds by id, with their account ids.
fn load_holds(conn: &mut DbConn, ids: &[i64]) -> Result<HashMap<i64, (i64, HoldRow)>, LedgerError> {
    let mut out = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(BATCH_LOOKUP_KEYS) {
        let rows: Vec<(i64, HoldRow)> = on_backend!(conn, |c| holds::table
            .filter(holds::id.eq_any(chunk))
            .select((holds::account_id, HoldRow::as_select()))
            .load(c))?;
        out.extend(rows.into_iter().map(|(a, h)| (h.id, (a, h))));
    }
    Ok(out)
}

/// Reads (and on PostgreSQL locks, in id order, so that batches never deadlock each other) the
/// accounts with these ids or names.
fn lock_accounts(
    conn: &mut DbConn,
    ids: &[i64],
    names: &[&str],
) -> Result<std::collections::BTreeMap<i64, AccountRow>, LedgerError> {
    let mut out = std::collections::BTreeMap::new();
    let mut ids: Vec<i64> = ids.to_vec();
    for chunk in names.chunks(BATCH_LOOKUP_KEYS) {
        let found: Vec<i64> = on_backend!(conn, |c| accounts::table
            .filter(accounts::name.eq_any(chunk))
            .select(accounts::id)
            .load(c))?;
        ids.extend(found);
    }
    ids.sort_unstable();
    ids.dedup();
    for chunk in ids.chunks(BATCH_LOOKUP_KEYS) {
        let rows: Vec<AccountRow> = match conn {
            DbConn::Postgres(c) => accounts::table
                .filter(accounts::id.eq_any(chunk))
                .order(accounts::id)
                .select(AccountRow::as_select())
                .for_update()
                .load(c)?,
            DbConn::Sqlite(c) => accounts::table
                .filter(accounts::id.eq_any(chunk))
                .select(AccountRow::as_select())
                .load(c)?,
        };
        out.extend(rows.into_iter().map(|a| (a.id, a)));
    }
    Ok(out)
}

/// A partition's cached balances while a batch runs.
struct PartitionState {
    charged: i64,
    held: i64,
    exists: bool,
    changed: bool,
}

fn load_partitions(
    conn: &mut DbConn,
    account_ids: &[i64],
) -> Result<HashMap<(i64, String), PartitionState>, LedgerError> {
    let mut out = HashMap::new();
    for chunk in account_ids.chunks(BATCH_LOOKUP_KEYS) {
        let rows: Vec<(i64, PartitionRow)> = on_backend!(conn, |c| account_partitions::table
            .filter(account_partitions::account_id.eq_any(chunk))
            .select((account_partitions::account_id, PartitionRow::as_select()))
            .load(c))?;
        for (a, r) in rows {
            out.insert(
                (a, r.partition),
                PartitionState {
                    charged: r.charged_micros,
                    held: r.held_micros,
                    exists: true,
                    changed: false,
                },
            );
        }
    }
    Ok(out)
}

fn apply_deltas(
    parts: &mut HashMap<(i64, String), PartitionState>,
    account_id: i64,
    deltas: &PartitionDeltas,
) -> Result<(), LedgerError> {
    for (part, e) in &deltas.changes {
        let p = parts
            .entry((account_id, part.clone()))
            .or_insert(PartitionState {
                charged: 0,
                held: 0,
                exists: false,
                changed: false,
            });
        p.charged = UsdMicros::from_stored(p.charged)
            .checked_add(e.charged)?
            .micros();
        p.held = UsdMicros::from_stored(p.held).checked_add(e.held)?.micros();
        p.changed = true;
    }
    Ok(())
}

fn write_partition(
    conn: &mut DbConn,
    ctx: &OpContext,
    account_id: i64,
    part: &str,
    p: &PartitionState,
) -> Result<(), LedgerError> {
    let now = to_naive(ctx.recorded_at);
    if p.exists {
        on_backend!(conn, |c| fixed(
            UPDATE_PARTITION,
            (
                bind::<BigInt, _>(p.charged),
                bind::<BigInt, _>(p.held),
                bind::<Timestamp, _>(now),
                bind::<BigInt, _>(account_id),
                bind::<Text, _>(part),
            )
        )
        .execute(c))?;
    } else {
        on_backend!(conn, |c| diesel::insert_into(account_partitions::table)
            .values((
                account_partitions::account_id.eq(account_id),
                account_partitions::partition.eq(part),
                account_partitions::limit_micros.eq(None::<i64>),
                account_partitions::charged_micros.eq(p.charged),
                account_partitions::held_micros.eq(p.held),
                account_partitions::updated_at.eq(now),
            ))
            .execute(c))?;
    }
    Ok(())
}

/// The result of releasing or expiring a hold.
#[derive(Debug, Clone)]
pub struct Released {
    /// The hold afterwards.
    pub hold: Hold,
    /// The release or expiry entry.
    pub entry: Entry,
    /// Whether this call was a replay.
    pub replayed: bool,
}

/// Releases a hold without charging it.
pub fn release_hold(
    conn: &mut DbConn,
    ctx: &OpContext,
    hold_id: i64,
    reason: &str,
    key: &str,
) -> Result<Released, LedgerError> {
    end_hold(conn, ctx, hold_id, reason, key, EntryKind::Release)
}

/// Expires a hold that outlived its lifetime. Refuses a hold that has not expired yet as of
/// the context's effective time.
pub fn expire_hold(
    conn: &mut DbConn,
    ctx: &OpContext,
    hold_id: i64,
    key: &str,
) -> Result<Released, LedgerError> {
    end_hold(
        conn,
        ctx,
        hold_id,
        "hold lifetime passed",
        key,
        EntryKind::Expiry,
    )
}

fn end_hold(
    conn: &mut DbConn,
    ctx: &OpContext,
    hold_id: i64,
    reason: &str,
    key: &str,
    kind: EntryKind,
) -> Result<Released, LedgerError> {
    check_key(key)?;
    check_text("--reason", reason)?;
    let hold_s = hold_id.to_string();
    let digest = request_digest(&[kind.as_str(), &hold_s]);
    write_transaction(conn, |conn| {
        let (mut acct, hold) = lock_hold_account(conn, hold_id)?;
        if let Some(first) = replay(conn, key, &digest)? {
            return Ok(Released {
                hold: hold.to_record(&acct.name),
                entry: first.to_record(&acct.name, None),
                replayed: true,
            });
        }
        if hold.state() != HoldState::Open {
            return Err(LedgerError::HoldResolved {
                id: hold.id,
                state: hold.state(),
            });
        }
        if kind == EntryKind::Expiry {
            match hold.expires_at {
                Some(at) if at <= to_naive(ctx.effective_at) => {}
                Some(at) => {
                    return Err(LedgerError::invalid(
                        "--as-of",
                        format!("hold-{hold_id} expires at {at} UTC, not yet"),
                    ))
                }
                None => {
                    return Err(LedgerError::invalid(
                        "HOLD",
                        format!("hold-{hold_id} has no expiry; release it instead"),
                    ))
                }
            }
        }
        let remaining = UsdMicros::from_stored(hold.remaining_micros);
        let reason = if reason.is_empty() {
            "released by an administrator"
        } else {
            reason
        };
        let p = Pending {
            kind,
            amount: remaining,
            effect: Effect::simple(kind, remaining)?,
            hold_id: Some(hold.id),
            cluster: hold.cluster.as_deref(),
            job_id: hold.job_id.as_deref(),
            partition: hold.partition.as_deref(),
            user_name: hold.user_name.as_deref(),
            reason,
            flags: "",
            key,
            digest: &digest,
        };
        let mut parts = PartitionDeltas::default();
        let row = append(conn, ctx, &mut acct, &mut parts, &p)?;
        acct.open_holds -= 1;
        save_account(conn, ctx, &acct, parts)?;
        let state = if kind == EntryKind::Expiry {
            HoldState::Expired
        } else {
            HoldState::Released
        };
        on_backend!(conn, |c| fixed(
            UPDATE_HOLD_ENDED,
            (
                bind::<Text, _>(state.as_str()),
                bind::<Timestamp, _>(to_naive(ctx.effective_at)),
                bind::<BigInt, _>(hold.id),
            )
        )
        .execute(c))?;
        let hold = HoldRow {
            remaining_micros: 0,
            state: state.as_str().to_string(),
            resolved_at: Some(to_naive(ctx.effective_at)),
            ..hold
        };
        Ok(Released {
            hold: hold.to_record(&acct.name),
            entry: row.to_record(&acct.name, None),
            replayed: false,
        })
    })
}

/// Reads an entry by id (used by callers that need a fresh copy).
pub fn entry(conn: &mut DbConn, id: i64) -> Result<Option<Entry>, LedgerError> {
    let row = journal::table
        .find(id)
        .select(JournalRow::as_select())
        .get_result(conn)
        .optional()?;
    row.map(|r| entry_record(conn, &r)).transpose()
}
