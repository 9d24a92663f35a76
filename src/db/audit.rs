//! `asbb audit verify`: replays the journal and compares it with everything derived from it.
//!
//! For each account, in one consistent snapshot: the hash chain is recomputed from the genesis
//! hash; sequence numbers must be gapless; each entry's effect must obey the rules of its kind;
//! the sums of effects must equal the cached balances of the account and of each partition,
//! its charge entries the cached charge counts, and its open holds the cached open-hold count;
//! and every hold must agree with its entries (one hold entry, at most one resolution, nothing
//! left held once resolved).

use std::collections::{BTreeMap, HashMap};

use diesel::prelude::*;
use serde::Serialize;

use super::ledger::{setting_limit, setting_time};
use super::models::{
    AccountChangeRow, AccountRow, ChargeCounts, HoldRow, JournalRow, PartitionRow,
};
use super::schema::{account_changes, account_partitions, accounts, holds, journal};
use super::DbConn;
use crate::db::ledger::LedgerError;
use crate::domain::ledger::{
    entry_hash, genesis_hash, setting_hash, settings_genesis_hash, Balances, ChainFields,
    EntryKind, HoldState, SettingFields,
};
use crate::domain::time::from_naive;
use crate::domain::UsdMicros;

/// Entries read per query: bounds memory while replaying millions of entries.
pub const AUDIT_PAGE_ROWS: i64 = 5_000;

/// One thing that does not add up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Discrepancy {
    /// Account name.
    pub account: String,
    /// Machine-readable kind: `chain_broken`, `hash_mismatch`, `seq_gap`, `bad_effect`,
    /// `balance_mismatch`, `count_mismatch`, `partition_mismatch`, `hold_mismatch`,
    /// `settings_mismatch`.
    pub kind: &'static str,
    /// Entry id, when the problem is one entry.
    pub entry_id: Option<i64>,
    /// Hold id, when the problem is one hold.
    pub hold_id: Option<i64>,
    /// What was expected and what was found.
    pub detail: String,
}

/// The result of a verification.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AuditReport {
    /// Accounts checked.
    pub accounts: u64,
    /// Entries replayed.
    pub entries: u64,
    /// Holds checked.
    pub holds: u64,
    /// Everything that did not add up.
    pub discrepancies: Vec<Discrepancy>,
    /// The verified chain head of each account. The chain proves that nothing inside it was
    /// altered, but anyone who can write to the database can also rebuild a chain from scratch;
    /// storing these heads elsewhere (a log host, a signed note) lets a later audit prove that
    /// history up to this point was not rewritten.
    pub chain_heads: Vec<ChainHead>,
}

/// An account's chain head after verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainHead {
    /// Account name.
    pub account: String,
    /// Number of entries.
    pub entries: i64,
    /// Hash of the last entry (the genesis hash for an empty account).
    pub head: String,
}

impl AuditReport {
    /// Whether the ledger is consistent.
    pub fn is_clean(&self) -> bool {
        self.discrepancies.is_empty()
    }
}

#[derive(Default)]
struct HoldTally {
    held: i64,
    hold_entries: u32,
    hold_amount: i64,
    charges: u32,
    releases: u32,
    expiries: u32,
    /// What the (hash-covered) hold entry says; the editable hold row must agree.
    partition: Option<String>,
    cluster: Option<String>,
    user_name: Option<String>,
    /// The job of the latest entry of the hold (a charge may name the job the hold lacked).
    job_id: Option<String>,
    charged: i64,
    charge_flags: String,
    /// Entries of this hold booked to another partition than the hold entry's.
    partition_strays: u32,
}

/// Verifies every account (or one). `progress` is called with the number of entries replayed
/// so far, for a progress bar.
pub fn verify(
    conn: &mut DbConn,
    only: Option<&str>,
    progress: &mut dyn FnMut(u64),
) -> Result<AuditReport, LedgerError> {
    let mut q = accounts::table
        .select(accounts::id)
        .order(accounts::id)
        .into_boxed();
    if let Some(name) = only {
        q = q.filter(accounts::name.eq(name));
    }
    let ids: Vec<i64> = q.load(conn)?;
    if let (Some(name), true) = (only, ids.is_empty()) {
        return Err(LedgerError::UnknownAccount(name.to_string()));
    }
    let mut report = AuditReport::default();
    for id in &ids {
        verify_account(conn, *id, &mut report, progress)?;
    }
    unlinked_holds(conn, only.map(|_| ids[0]), &mut report)?;
    Ok(report)
}

/// Holds looked up per query by id.
const HOLDS_PER_QUERY: usize = 500;

/// Hold rows that no journal entry links (a hold is placed together with its hold entry, so
/// such a row was written past the ledger), of one account or of all.
fn unlinked_holds(
    conn: &mut DbConn,
    account: Option<i64>,
    report: &mut AuditReport,
) -> Result<(), LedgerError> {
    let linked = journal::table
        .filter(journal::hold_id.eq(holds::id.nullable()))
        .select(journal::id);
    let mut q = holds::table
        .inner_join(accounts::table)
        .filter(diesel::dsl::not(diesel::dsl::exists(linked)))
        .order(holds::id)
        .select((holds::id, holds::amount_micros, accounts::name))
        .into_boxed();
    if let Some(a) = account {
        q = q.filter(holds::account_id.eq(a));
    }
    let rows: Vec<(i64, i64, String)> = q.load(conn)?;
    for (hold_id, amount, name) in rows {
        report.holds += 1;
        report.discrepancies.push(Discrepancy {
            account: name,
            kind: "hold_mismatch",
            entry_id: None,
            hold_id: Some(hold_id),
            detail: format!(
                "hold-{hold_id}: expected one hold entry of ${}, found none",
                UsdMicros::from_stored(amount)
            ),
        });
    }
    Ok(())
}

fn verify_account(
    conn: &mut DbConn,
    id: i64,
    report: &mut AuditReport,
    progress: &mut dyn FnMut(u64),
) -> Result<(), LedgerError> {
    // One snapshot per account, so a concurrent writer cannot make the sums disagree.
    let snapshot_begin = match conn {
        DbConn::Postgres(_) => "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
        DbConn::Sqlite(_) => "BEGIN DEFERRED",
    };
    use diesel::connection::{AnsiTransactionManager, TransactionManager};
    match conn {
        DbConn::Sqlite(c) => AnsiTransactionManager::begin_transaction_sql(c, snapshot_begin)?,
        DbConn::Postgres(c) => AnsiTransactionManager::begin_transaction_sql(c, snapshot_begin)?,
    }
    let result = verify_account_in_snapshot(conn, id, report, progress);
    // Read-only: nothing to commit; ending the transaction either way is enough.
    let _ = <DbConn as Connection>::TransactionManager::rollback_transaction(conn);
    result
}

fn verify_account_in_snapshot(
    conn: &mut DbConn,
    id: i64,
    report: &mut AuditReport,
    progress: &mut dyn FnMut(u64),
) -> Result<(), LedgerError> {
    let acct: AccountRow = accounts::table
        .find(id)
        .select(AccountRow::as_select())
        .get_result(conn)?;
    report.accounts += 1;
    let name = acct.name.clone();
    let mut found =
        |kind: &'static str, entry_id: Option<i64>, hold_id: Option<i64>, detail: String| {
            report.discrepancies.push(Discrepancy {
                account: name.clone(),
                kind,
                entry_id,
                hold_id,
                detail,
            });
        };
    let mut head = genesis_hash(&acct.name);
    let mut expect_seq = 1i64;
    let mut sums = Balances::default();
    let mut parts: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    let mut tallies: HashMap<i64, HoldTally> = HashMap::new();
    let mut counts = ChargeCounts::default();
    let mut after = 0i64;
    loop {
        let page: Vec<JournalRow> = journal::table
            .filter(journal::account_id.eq(id))
            .filter(journal::seq.gt(after))
            .order(journal::seq)
            .limit(AUDIT_PAGE_ROWS)
            .select(JournalRow::as_select())
            .load(conn)?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for e in &page {
            if e.seq != expect_seq {
                found(
                    "seq_gap",
                    Some(e.id),
                    None,
                    format!("expected entry #{expect_seq}, found #{}", e.seq),
                );
                expect_seq = e.seq;
            }
            expect_seq += 1;
            if e.prev_hash != head {
                found(
                    "chain_broken",
                    Some(e.id),
                    None,
                    format!(
                        "entry #{} links to {} but the previous hash is {head}",
                        e.seq,
                        short(&e.prev_hash)
                    ),
                );
            }
            let kind: Option<EntryKind> = e.kind.parse().ok();
            let amount = UsdMicros::from_stored(e.amount_micros);
            match kind {
                Some(kind) => {
                    let recomputed = entry_hash(&ChainFields {
                        account: &acct.name,
                        seq: e.seq,
                        kind,
                        amount,
                        effect: e.effect(),
                        hold_id: e.hold_id,
                        job_id: e.job_id.as_deref(),
                        cluster: e.cluster.as_deref(),
                        partition: e.partition.as_deref(),
                        user_name: e.user_name.as_deref(),
                        actor: &e.actor,
                        reason: &e.reason,
                        flags: &e.flags,
                        idempotency_key: &e.idempotency_key,
                        effective_at: from_naive(e.effective_at),
                        recorded_at: from_naive(e.recorded_at),
                        prev_hash: &e.prev_hash,
                    });
                    if recomputed != e.hash {
                        found(
                            "hash_mismatch",
                            Some(e.id),
                            None,
                            format!(
                                "entry #{} hashes to {} but stores {}; it was altered",
                                e.seq,
                                short(&recomputed),
                                short(&e.hash)
                            ),
                        );
                    }
                    counts.add(kind, &e.flags);
                    if let Err(err) = e.effect().check(kind, amount) {
                        found("bad_effect", Some(e.id), None, err.to_string());
                    }
                    if let Some(h) = e.hold_id {
                        let t = tallies.entry(h).or_default();
                        t.held += e.held_delta_micros;
                        if kind != EntryKind::Hold && e.partition != t.partition {
                            t.partition_strays += 1;
                        }
                        if e.job_id.is_some() {
                            t.job_id = e.job_id.clone();
                        }
                        match kind {
                            EntryKind::Hold => {
                                t.hold_entries += 1;
                                t.hold_amount = e.amount_micros;
                                t.partition = e.partition.clone();
                                t.cluster = e.cluster.clone();
                                t.user_name = e.user_name.clone();
                            }
                            EntryKind::Charge => {
                                t.charges += 1;
                                t.charged += e.amount_micros;
                                if e.flags == "overrun" {
                                    t.charge_flags = e.flags.clone();
                                }
                            }
                            EntryKind::Release => t.releases += 1,
                            EntryKind::Expiry => t.expiries += 1,
                            _ => {}
                        }
                    }
                }
                None => found(
                    "bad_effect",
                    Some(e.id),
                    None,
                    format!("unknown entry kind '{}'", e.kind),
                ),
            }
            match sums.apply(e.effect()) {
                Ok(s) => sums = s,
                Err(err) => found(
                    "balance_mismatch",
                    Some(e.id),
                    None,
                    format!("sum overflows: {err}"),
                ),
            }
            if let Some(p) = &e.partition {
                let slot = parts.entry(p.clone()).or_default();
                slot.0 += e.charged_delta_micros;
                slot.1 += e.held_delta_micros;
            }
            head = e.hash.clone();
        }
        report.entries += page.len() as u64;
        progress(report.entries);
    }
    if expect_seq - 1 != acct.entry_count {
        found(
            "seq_gap",
            None,
            None,
            format!(
                "account records {} entries, journal has {}",
                acct.entry_count,
                expect_seq - 1
            ),
        );
    }
    if head != acct.chain_head {
        found(
            "chain_broken",
            None,
            None,
            format!(
                "account's chain head is {} but the last entry hashes to {}",
                short(&acct.chain_head),
                short(&head)
            ),
        );
    }
    if sums.held.is_negative() {
        found(
            "balance_mismatch",
            None,
            None,
            format!("the journal holds a negative ${}", sums.held),
        );
    }
    for (p, (_, h)) in &parts {
        if *h < 0 {
            found(
                "partition_mismatch",
                None,
                None,
                format!(
                    "partition '{p}' holds a negative ${}",
                    UsdMicros::from_stored(*h)
                ),
            );
        }
    }
    report.chain_heads.push(ChainHead {
        account: acct.name.clone(),
        entries: expect_seq - 1,
        head: head.clone(),
    });
    let cached = acct.balances();
    for (what, journal_sum, cache) in [
        ("credited", sums.credited, cached.credited),
        ("charged", sums.charged, cached.charged),
        ("held", sums.held, cached.held),
    ] {
        if journal_sum != cache {
            found(
                "balance_mismatch",
                None,
                None,
                format!("{what}: journal sums to ${journal_sum}, account says ${cache}"),
            );
        }
    }
    let cached_counts = acct.counts;
    for (what, journal_count, cache) in [
        ("charges", counts.charges, cached_counts.charges),
        ("overrun charges", counts.overruns, cached_counts.overruns),
        (
            "unmatched charges",
            counts.unmatched,
            cached_counts.unmatched,
        ),
    ] {
        if journal_count != cache {
            found(
                "count_mismatch",
                None,
                None,
                format!("{what}: the journal has {journal_count}, the account says {cache}"),
            );
        }
    }
    verify_settings(conn, &acct, &mut found)?;
    let part_rows: Vec<PartitionRow> = account_partitions::table
        .filter(account_partitions::account_id.eq(id))
        .select(PartitionRow::as_select())
        .load(conn)?;
    let mut seen = std::collections::BTreeSet::new();
    for r in &part_rows {
        seen.insert(r.partition.clone());
        let (c, h) = parts.get(&r.partition).copied().unwrap_or_default();
        if (c, h) != (r.charged_micros, r.held_micros) {
            found(
                "partition_mismatch",
                None,
                None,
                format!(
                    "partition '{}': journal has charged ${} held ${}, cache says charged ${} held ${}",
                    r.partition,
                    UsdMicros::from_stored(c),
                    UsdMicros::from_stored(h),
                    UsdMicros::from_stored(r.charged_micros),
                    UsdMicros::from_stored(r.held_micros)
                ),
            );
        }
    }
    for (p, (c, h)) in &parts {
        if !seen.contains(p) && (*c != 0 || *h != 0) {
            found(
                "partition_mismatch",
                None,
                None,
                format!("partition '{p}' has journal entries but no cached balance"),
            );
        }
    }
    // The account's holds are those its entries link (every hold has its hold entry; a hold
    // row that no entry links is found by `unlinked_holds`).
    let mut linked: Vec<i64> = tallies.keys().copied().collect();
    linked.sort_unstable();
    let mut hold_rows: Vec<HoldRow> = Vec::with_capacity(linked.len());
    for chunk in linked.chunks(HOLDS_PER_QUERY) {
        let rows: Vec<(i64, HoldRow)> = holds::table
            .filter(holds::id.eq_any(chunk))
            .order(holds::id)
            .select((holds::account_id, HoldRow::as_select()))
            .load(conn)?;
        for (owner, h) in rows {
            if owner == id {
                hold_rows.push(h);
            } else {
                tallies.remove(&h.id);
                found(
                    "hold_mismatch",
                    None,
                    Some(h.id),
                    format!(
                        "entries of this account link hold-{}, which belongs to account id {owner}",
                        h.id
                    ),
                );
            }
        }
    }
    for h in &hold_rows {
        report.holds += 1;
        let t = tallies.remove(&h.id).unwrap_or_default();
        let mut bad = |detail: String| {
            found(
                "hold_mismatch",
                None,
                Some(h.id),
                format!("hold-{}: {detail}", h.id),
            )
        };
        if t.hold_entries != 1 || t.hold_amount != h.amount_micros {
            bad(format!(
                "expected one hold entry of ${}, found {} entries",
                UsdMicros::from_stored(h.amount_micros),
                t.hold_entries
            ));
        }
        if t.held != h.remaining_micros {
            bad(format!(
                "journal still holds ${}, hold says ${}",
                UsdMicros::from_stored(t.held),
                UsdMicros::from_stored(h.remaining_micros)
            ));
        }
        for (what, row, journal) in [
            ("partition", &h.partition, &t.partition),
            ("cluster", &h.cluster, &t.cluster),
            ("user", &h.user_name, &t.user_name),
            ("job", &h.job_id, &t.job_id),
        ] {
            // An array hold names the array; its charges name the tasks.
            if what == "job" && h.tasks.is_some() {
                continue;
            }
            if row != journal {
                bad(format!(
                    "{what} is {row:?} but its journal entries say {journal:?}"
                ));
            }
        }
        if h.charged_micros != t.charged || h.flags != t.charge_flags {
            bad(format!(
                "says ${} charged (flags '{}') but its charges total ${} (flags '{}')",
                UsdMicros::from_stored(h.charged_micros),
                h.flags,
                UsdMicros::from_stored(t.charged),
                t.charge_flags
            ));
        }
        if t.partition_strays > 0 {
            bad(format!(
                "{} of its entries are booked to another partition than the hold",
                t.partition_strays
            ));
        }
        // Every charge is counted on the hold; only an array hold takes more than one.
        let charges_ok = i64::from(t.charges) == h.tasks_charged
            && (h.tasks.is_some() || t.charges <= 1)
            && h.tasks.is_none_or(|n| h.tasks_charged <= n);
        let ok = charges_ok
            && match h.state() {
                HoldState::Open => t.releases == 0 && t.expiries == 0,
                HoldState::Charged => {
                    t.charges >= 1 && t.releases <= 1 && t.expiries == 0 && h.remaining_micros == 0
                }
                HoldState::Released => {
                    t.releases == 1 && t.expiries == 0 && h.remaining_micros == 0
                }
                HoldState::Expired => t.releases == 0 && t.expiries == 1 && h.remaining_micros == 0,
            };
        if !ok {
            bad(format!(
                "state {} does not match its entries ({} charge, {} release, {} expiry)",
                h.state, t.charges, t.releases, t.expiries
            ));
        }
    }
    let open = hold_rows
        .iter()
        .filter(|h| h.state() == HoldState::Open)
        .count() as i64;
    if open != acct.open_holds {
        found(
            "count_mismatch",
            None,
            None,
            format!(
                "open holds: the holds have {open}, the account says {}",
                acct.open_holds
            ),
        );
    }
    for (hold_id, _) in tallies {
        found(
            "hold_mismatch",
            None,
            Some(hold_id),
            format!("entries link hold-{hold_id}, which does not exist"),
        );
    }
    Ok(())
}

/// Replays the account's settings chain: every change must hash correctly and follow from the
/// value before it, and the settings it arrives at must be the account's current ones.
fn verify_settings(
    conn: &mut DbConn,
    acct: &AccountRow,
    found: &mut dyn FnMut(&'static str, Option<i64>, Option<i64>, String),
) -> Result<(), LedgerError> {
    let changes: Vec<AccountChangeRow> = account_changes::table
        .filter(account_changes::account_id.eq(acct.id))
        .order(account_changes::seq)
        .select(AccountChangeRow::as_select())
        .load(conn)?;
    let mut head = settings_genesis_hash(&acct.name);
    let mut values: BTreeMap<String, String> = BTreeMap::new();
    for (i, c) in changes.iter().enumerate() {
        let expect = i as i64 + 1;
        if c.seq != expect {
            found(
                "settings_mismatch",
                None,
                None,
                format!("expected setting change #{expect}, found #{}", c.seq),
            );
        }
        let recomputed = setting_hash(&SettingFields {
            account: &acct.name,
            seq: c.seq,
            field: &c.field,
            old_value: &c.old_value,
            new_value: &c.new_value,
            actor: &c.actor,
            reason: &c.reason,
            changed_at: from_naive(c.changed_at),
            prev_hash: &c.prev_hash,
        });
        if c.prev_hash != head || recomputed != c.hash {
            found(
                "settings_mismatch",
                None,
                None,
                format!(
                    "setting change #{} ({}) was altered or is out of its chain",
                    c.seq, c.field
                ),
            );
        }
        let before = values
            .get(&c.field)
            .cloned()
            .unwrap_or_else(|| default_setting(&c.field));
        if before != c.old_value {
            found(
                "settings_mismatch",
                None,
                None,
                format!(
                    "setting change #{} says {} was '{}', but it was '{before}'",
                    c.seq, c.field, c.old_value
                ),
            );
        }
        values.insert(c.field.clone(), c.new_value.clone());
        head = c.hash.clone();
    }
    if changes.len() as i64 != acct.settings_count || head != acct.settings_head {
        found(
            "settings_mismatch",
            None,
            None,
            "the account's settings chain head does not match its changes".into(),
        );
    }
    let current = [
        ("display_name", acct.display_name.clone()),
        ("description", acct.description.clone()),
        ("starts_at", setting_time(acct.starts_at)),
        ("ends_at", setting_time(acct.ends_at)),
        ("status", acct.status.clone()),
        (
            "overdraft",
            UsdMicros::from_stored(acct.overdraft_micros).to_string(),
        ),
    ];
    for (field, now) in current {
        let recorded = values
            .get(field)
            .cloned()
            .unwrap_or_else(|| default_setting(field));
        if recorded != now {
            found(
                "settings_mismatch",
                None,
                None,
                format!("{field} is '{now}' but its recorded changes end at '{recorded}'"),
            );
        }
    }
    let limits: Vec<(String, Option<i64>)> = account_partitions::table
        .filter(account_partitions::account_id.eq(acct.id))
        .select((
            account_partitions::partition,
            account_partitions::limit_micros,
        ))
        .load(conn)?;
    let mut seen = std::collections::BTreeSet::new();
    for (p, limit) in limits {
        let field = format!("partition_limit:{p}");
        let recorded = values
            .get(&field)
            .cloned()
            .unwrap_or_else(|| default_setting(&field));
        let now = setting_limit(limit);
        if recorded != now {
            found(
                "settings_mismatch",
                None,
                None,
                format!(
                    "partition '{p}' limit is {now} but its recorded changes end at {recorded}"
                ),
            );
        }
        seen.insert(field);
    }
    for (field, v) in &values {
        if field.starts_with("partition_limit:") && !seen.contains(field) && v != "none" {
            found(
                "settings_mismatch",
                None,
                None,
                format!("{field} was set to {v} but the partition row is gone"),
            );
        }
    }
    Ok(())
}

/// The value a setting has before its first recorded change.
fn default_setting(field: &str) -> String {
    if field.starts_with("partition_limit:") {
        "none".into()
    } else {
        String::new()
    }
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}
