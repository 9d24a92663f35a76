//! What the finance reports read: the journal in pages, entries attributed to grants and
//! budget periods, statements, usage, outstanding holds and refunds.
//!
//! Large reads stream: the journal is read in keyset pages of [`JOURNAL_PAGE`] entries in
//! (effective_at, id) order (`journal_effective_id`; one account's through
//! `journal_account_effective`; several accounts' by filtering the ordered journal in memory,
//! since an `IN` list makes both backends sort every match for each page), and callers write
//! each row as it comes,
//! so memory stays bounded by a page and by the small tables loaded whole (accounts, grants,
//! their periods and links). Every figure is summed exactly in micro-dollars.
//!
//! **Attribution.** An entry counts against a grant's budget period when it is that period's
//! credit or expiry entry (`grant_period_accounts`), or else when its account was linked to the
//! grant at the entry's effective time: then it counts against the period containing that time
//! (before the first period, the first; after the last, the last).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use diesel::prelude::*;
use rust_decimal::Decimal;

use super::grants::{self, GrantRecord, PeriodRow};
use super::ledger::LedgerError;
use super::models::{HoldRow, JournalRow};
use super::schema::{accounts, cost_records, grant_changes, grant_period_accounts, holds, journal};
use super::DbConn;
use crate::domain::burn::{round_micros, Plan, Segment};
use crate::domain::grant::split;
use crate::domain::time::{from_naive, to_naive};
use crate::domain::UsdMicros;

/// Journal entries read per page: large enough that the query overhead vanishes, small enough
/// that a page (a few MB) is all a report holds of the journal at once.
pub const JOURNAL_PAGE: i64 = 5_000;

/// Holds loaded per query (bound parameters per statement).
const IDS_PER_QUERY: usize = 500;

/// A time after every entry (SQLite compares timestamps as text: stay within four-digit years).
pub fn far_future() -> DateTime<Utc> {
    use chrono::TimeZone;
    Utc.with_ymd_and_hms(9999, 12, 31, 0, 0, 0)
        .single()
        .expect("a valid date")
}

/// How far the ledger goes: entries, the last entry id and its latest effective time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerMark {
    /// Entries in the journal (before the cut, if any).
    pub entries: i64,
    /// The highest entry id.
    pub last_id: i64,
    /// The latest effective time.
    pub last_effective: Option<DateTime<Utc>>,
}

/// The journal's extent, up to `cut` (entries effective before it).
pub fn ledger_mark(
    conn: &mut DbConn,
    cut: Option<DateTime<Utc>>,
) -> Result<LedgerMark, LedgerError> {
    let mut q = journal::table
        .select((
            diesel::dsl::count_star(),
            diesel::dsl::max(journal::id),
            diesel::dsl::max(journal::effective_at),
        ))
        .into_boxed();
    if let Some(c) = cut {
        q = q.filter(journal::effective_at.lt(to_naive(c)));
    }
    let (entries, last_id, last): (i64, Option<i64>, Option<NaiveDateTime>) = q.get_result(conn)?;
    Ok(LedgerMark {
        entries,
        last_id: last_id.unwrap_or(0),
        last_effective: last.map(from_naive),
    })
}

/// Which entries to read.
#[derive(Debug, Clone, Default)]
pub struct JournalFilter {
    /// Only these accounts (ids).
    pub accounts: Option<Vec<i64>>,
    /// Effective at or after.
    pub from: Option<DateTime<Utc>>,
    /// Effective before.
    pub to: Option<DateTime<Utc>>,
    /// Only entries that move charged money (charges and refunds).
    pub charged_only: bool,
    /// Only this kind.
    pub kind: Option<&'static str>,
}

/// Reads the journal page by page in (effective_at, id) order and hands every page to `f`.
pub(crate) fn journal_pages<E>(
    conn: &mut DbConn,
    filter: &JournalFilter,
    mut f: impl FnMut(&mut DbConn, &[JournalRow]) -> Result<(), E>,
) -> Result<(), E>
where
    E: From<LedgerError>,
{
    if filter.accounts.as_ref().is_some_and(Vec::is_empty) {
        return Ok(());
    }
    // One account: its index, (account_id, effective_at, id), gives its entries in order.
    // Several (a grant's linked accounts): the whole journal in order, filtered here. An IN
    // list in SQL would make both backends merge and sort every matching entry for each page.
    let several: Option<HashSet<i64>> = filter
        .accounts
        .as_ref()
        .filter(|ids| ids.len() > 1)
        .map(|ids| ids.iter().copied().collect());
    let mut last: Option<(NaiveDateTime, i64)> = None;
    loop {
        let mut q = journal::table
            .select(JournalRow::as_select())
            .order((journal::effective_at, journal::id))
            .limit(JOURNAL_PAGE)
            .into_boxed();
        if let Some((t, id)) = last {
            q = q.filter(
                journal::effective_at
                    .ge(t)
                    .and(journal::effective_at.gt(t).or(journal::id.gt(id))),
            );
        }
        if let Some(t) = filter.from {
            q = q.filter(journal::effective_at.ge(to_naive(t)));
        }
        if let Some(t) = filter.to {
            q = q.filter(journal::effective_at.lt(to_naive(t)));
        }
        if let Some([id]) = filter.accounts.as_deref() {
            q = q.filter(journal::account_id.eq(*id));
        }
        if filter.charged_only {
            q = q.filter(journal::charged_delta_micros.ne(0));
        }
        if let Some(k) = filter.kind {
            q = q.filter(journal::kind.eq(k));
        }
        let mut rows: Vec<JournalRow> = q.load(conn).map_err(LedgerError::from)?;
        let Some(tail) = rows.last() else {
            return Ok(());
        };
        last = Some((tail.effective_at, tail.id));
        let full = rows.len() as i64 == JOURNAL_PAGE;
        if let Some(keep) = &several {
            rows.retain(|r| keep.contains(&r.account_id));
        }
        f(conn, &rows)?;
        if !full {
            return Ok(());
        }
    }
}

/// Account names by id (the accounts table is small next to the journal).
pub fn account_names(conn: &mut DbConn) -> Result<HashMap<i64, String>, LedgerError> {
    let rows: Vec<(i64, String)> = accounts::table
        .select((accounts::id, accounts::name))
        .load(conn)?;
    Ok(rows.into_iter().collect())
}

/// An account's id.
pub fn account_id(conn: &mut DbConn, name: &str) -> Result<i64, LedgerError> {
    accounts::table
        .filter(accounts::name.eq(name))
        .select(accounts::id)
        .get_result(conn)
        .optional()?
        .ok_or_else(|| LedgerError::UnknownAccount(name.to_string()))
}

/// One grant with what attribution needs.
#[derive(Debug, Clone)]
pub struct GrantInfo {
    /// The grant.
    pub grant: GrantRecord,
    /// Its periods in order.
    pub periods: Vec<PeriodRow>,
    /// Its links, current and past.
    pub links: Vec<grants::LinkRecord>,
    /// Indirect rate changes: (recorded at, new rate), oldest first, after the rate it had
    /// when created.
    rates: Vec<(DateTime<Utc>, Decimal)>,
    first_rate: Decimal,
}

impl GrantInfo {
    /// The indirect rate in force at `t`.
    pub fn rate_at(&self, t: DateTime<Utc>) -> Decimal {
        let mut r = self.first_rate;
        for (at, rate) in &self.rates {
            if *at <= t {
                r = *rate;
            }
        }
        r
    }

    /// Index of the period containing `t`; before the first, the first; after the last, the
    /// last.
    pub fn period_index(&self, t: DateTime<Utc>) -> usize {
        let n = self.periods.len();
        self.periods
            .iter()
            .position(|p| p.start() <= t && t < p.end())
            .unwrap_or(
                if self.periods.first().is_some_and(|p| t < p.start()) || n == 0 {
                    0
                } else {
                    n - 1
                },
            )
    }
}

/// Every grant, its links and the period entries, for attributing journal entries.
#[derive(Debug, Clone, Default)]
pub struct GrantIndex {
    /// Grants by id.
    pub grants: BTreeMap<i64, GrantInfo>,
    links_of: HashMap<i64, Vec<LinkSpan>>,
    period_entries: HashMap<i64, (i64, i64)>,
    /// Period-end expiry entries (negative adjustments taking unspent period money back).
    pub expiry_entries: HashSet<i64>,
}

/// An account's link to a grant: (grant id, linked at, unlinked at).
type LinkSpan = (i64, DateTime<Utc>, Option<DateTime<Utc>>);

/// A span of time: (first, last).
pub type Extent = (DateTime<Utc>, DateTime<Utc>);

/// The grant and period an entry counts against, and its direct/indirect split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attribution {
    /// Grant id.
    pub grant_id: i64,
    /// Period number.
    pub period: i64,
    /// Index into the grant's periods.
    pub index: usize,
}

impl GrantIndex {
    /// Loads every grant (grants are few; their periods and links fewer than accounts).
    pub fn load(conn: &mut DbConn) -> Result<GrantIndex, LedgerError> {
        let mut idx = GrantIndex::default();
        for g in grants::list(conn, None)? {
            let periods = grants::period_rows(conn, g.id)?;
            let links = grants::links(conn, g.id)?;
            let changes: Vec<(String, String, NaiveDateTime)> = grant_changes::table
                .filter(grant_changes::grant_id.eq(g.id))
                .filter(grant_changes::field.eq("indirect_rate"))
                .order(grant_changes::id)
                .select((
                    grant_changes::old_value,
                    grant_changes::new_value,
                    grant_changes::changed_at,
                ))
                .load(conn)?;
            let parse = |s: &str| Decimal::from_str(s.trim()).unwrap_or(Decimal::ZERO);
            let first_rate = changes
                .first()
                .map(|(old, _, _)| parse(old))
                .unwrap_or(g.indirect_rate);
            let rates = changes
                .iter()
                .map(|(_, new, at)| (from_naive(*at), parse(new)))
                .collect();
            for l in &links {
                idx.links_of.entry(l.account_id).or_default().push((
                    g.id,
                    l.linked_at,
                    l.unlinked_at,
                ));
            }
            idx.grants.insert(
                g.id,
                GrantInfo {
                    grant: g,
                    periods,
                    links,
                    rates,
                    first_rate,
                },
            );
        }
        let rows: Vec<(i64, i64, Option<i64>, Option<i64>)> = grant_period_accounts::table
            .select((
                grant_period_accounts::grant_id,
                grant_period_accounts::period,
                grant_period_accounts::credit_entry_id,
                grant_period_accounts::expiry_entry_id,
            ))
            .load(conn)?;
        for (g, p, credit, expiry) in rows {
            if let Some(c) = credit {
                idx.period_entries.insert(c, (g, p));
            }
            if let Some(e) = expiry {
                idx.period_entries.insert(e, (g, p));
                idx.expiry_entries.insert(e);
            }
        }
        Ok(idx)
    }

    /// The grant id of a number.
    pub fn by_number(&self, number: &str) -> Option<&GrantInfo> {
        self.grants.values().find(|g| g.grant.number == number)
    }

    /// Where an entry counts (see the module comment).
    pub fn attribute(
        &self,
        account_id: i64,
        entry_id: i64,
        t: DateTime<Utc>,
    ) -> Option<Attribution> {
        let at = |grant_id: i64, period: i64| {
            let g = self.grants.get(&grant_id)?;
            let index = g.periods.iter().position(|p| p.number == period)?;
            Some(Attribution {
                grant_id,
                period,
                index,
            })
        };
        if let Some((g, p)) = self.period_entries.get(&entry_id) {
            return at(*g, *p);
        }
        let (grant_id, _, _) = self
            .links_of
            .get(&account_id)?
            .iter()
            .find(|(_, from, until)| *from <= t && until.is_none_or(|u| t < u))?;
        let g = self.grants.get(grant_id)?;
        if g.periods.is_empty() {
            return None;
        }
        let index = g.period_index(t);
        Some(Attribution {
            grant_id: *grant_id,
            period: g.periods[index].number,
            index,
        })
    }

    /// The direct and indirect parts of an entry's change of charged money: split at the rate
    /// of its grant at its effective time (`direct = total ÷ (1 + rate)`, rounded half away
    /// from zero to the micro-dollar), or all direct without a grant.
    pub fn split(&self, a: Option<Attribution>, charged: i64, t: DateTime<Utc>) -> (i64, i64) {
        match a.and_then(|a| self.grants.get(&a.grant_id)) {
            Some(g) => {
                let s = split(UsdMicros::from_stored(charged), g.rate_at(t));
                (s.direct.micros(), s.indirect.micros())
            }
            None => (charged, 0),
        }
    }

    /// Accounts ever linked to a grant.
    pub fn linked_accounts(&self, grant_id: i64) -> Vec<i64> {
        let mut v: Vec<i64> = self
            .grants
            .get(&grant_id)
            .map(|g| g.links.iter().map(|l| l.account_id).collect())
            .unwrap_or_default();
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// One row of a statement, exact in micro-dollars.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatementRow {
    /// Period number, month (YYYY-MM) or `Total`.
    pub label: String,
    /// Start (inclusive).
    pub start: Option<DateTime<Utc>>,
    /// End (exclusive).
    pub end: Option<DateTime<Utc>>,
    /// Period status.
    pub status: String,
    /// Period budget.
    pub budget: Option<i64>,
    /// Balance at the start.
    pub opening: i64,
    /// Money linked accounts brought (+) or took (−).
    pub transfers: i64,
    /// Credits.
    pub credits: i64,
    /// Charges (net of nothing), direct part.
    pub direct: i64,
    /// Charges, indirect part.
    pub indirect: i64,
    /// Refunds (positive).
    pub refunds: i64,
    /// Adjustments other than expiries (signed).
    pub adjustments: i64,
    /// Expired at period end (positive).
    pub expired: i64,
    /// Balance at the end.
    pub closing: i64,
    /// Held at the end.
    pub holds: i64,
}

impl StatementRow {
    /// What is left: closing − holds.
    pub fn remaining(&self) -> i64 {
        self.closing - self.holds
    }

    fn add_entry(&mut self, r: &JournalRow, expiry: bool, direct: i64, indirect: i64) {
        match r.kind.as_str() {
            "credit" => self.credits += r.amount_micros,
            "adjustment" if expiry => self.expired -= r.credited_delta_micros,
            "adjustment" => self.adjustments += r.credited_delta_micros,
            "charge" => {
                self.direct += direct;
                self.indirect += indirect;
            }
            "refund" => self.refunds -= r.charged_delta_micros,
            _ => {}
        }
    }

    /// The flows of this row: credits − charges + refunds + adjustments − expired + transfers.
    pub fn net(&self) -> i64 {
        self.transfers + self.credits - self.direct - self.indirect
            + self.refunds
            + self.adjustments
            - self.expired
    }
}

/// A statement: its rows and the total.
#[derive(Debug, Clone, Default)]
pub struct Statement {
    /// One per period (grant) or month (account).
    pub rows: Vec<StatementRow>,
    /// The total over the rows.
    pub total: StatementRow,
    /// Net charges per day (for the burn-down chart), in order.
    pub daily_spend: Vec<(NaiveDate, i64)>,
}

fn total_of(rows: &[StatementRow]) -> StatementRow {
    let mut t = StatementRow {
        label: "Total".into(),
        start: rows.first().and_then(|r| r.start),
        end: rows.last().and_then(|r| r.end),
        ..Default::default()
    };
    if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
        t.opening = first.opening;
        t.closing = last.closing;
        t.holds = last.holds;
    }
    let budgets: Vec<i64> = rows.iter().filter_map(|r| r.budget).collect();
    t.budget = (!budgets.is_empty()).then(|| budgets.iter().sum());
    for r in rows {
        t.transfers += r.transfers;
        t.credits += r.credits;
        t.direct += r.direct;
        t.indirect += r.indirect;
        t.refunds += r.refunds;
        t.adjustments += r.adjustments;
        t.expired += r.expired;
    }
    t
}

#[derive(Default)]
struct AccountState {
    balance: i64,
    held: i64,
    attributed: i64,
    next_event: usize,
}

/// A grant's statement: every budget period (or those `select` keeps), as the ledger stands
/// for entries effective before `cut`.
pub fn grant_statement(
    conn: &mut DbConn,
    idx: &GrantIndex,
    grant_id: i64,
    cut: Option<DateTime<Utc>>,
    select: &dyn Fn(&PeriodRow) -> bool,
    mut progress: impl FnMut(u64),
) -> Result<Statement, LedgerError> {
    let g = idx
        .grants
        .get(&grant_id)
        .ok_or_else(|| LedgerError::invalid("--grant", "no such grant"))?;
    let n = g.periods.len();
    let mut rows: Vec<StatementRow> = g
        .periods
        .iter()
        .map(|p| StatementRow {
            label: p.number.to_string(),
            start: Some(p.start()),
            end: Some(p.end()),
            status: p.status.clone(),
            budget: Some(p.budget_micros),
            ..Default::default()
        })
        .collect();
    // Link events per account in time order: (time, join?).
    let mut events: HashMap<i64, Vec<(DateTime<Utc>, bool)>> = HashMap::new();
    for l in &g.links {
        let e = events.entry(l.account_id).or_default();
        e.push((l.linked_at, true));
        if let Some(u) = l.unlinked_at {
            e.push((u, false));
        }
    }
    for e in events.values_mut() {
        e.sort();
    }
    // Period ends at which outstanding holds are read, each clipped to the cut.
    let boundaries: Vec<DateTime<Utc>> = g
        .periods
        .iter()
        .map(|p| cut.map_or(p.end(), |c| p.end().min(c)))
        .collect();
    let mut next_boundary = 0usize;
    let mut state: HashMap<i64, AccountState> = HashMap::new();
    let mut daily: BTreeMap<NaiveDate, i64> = BTreeMap::new();
    let linked_at = |account: i64, t: DateTime<Utc>| {
        g.links.iter().any(|l| {
            l.account_id == account && l.linked_at <= t && l.unlinked_at.is_none_or(|u| u > t)
        })
    };
    // Fires the link events of an account up to `t` (joins at or before `t`, leaves before).
    fn fire(
        g: &GrantInfo,
        rows: &mut [StatementRow],
        ev: &[(DateTime<Utc>, bool)],
        s: &mut AccountState,
        t: Option<DateTime<Utc>>,
        cut: Option<DateTime<Utc>>,
    ) {
        while let Some((at, join)) = ev.get(s.next_event) {
            let due = match t {
                Some(t) => {
                    if *join {
                        *at <= t
                    } else {
                        *at < t
                    }
                }
                None => cut.is_none_or(|c| *at < c),
            };
            if !due {
                break;
            }
            let i = g.period_index(*at);
            if *join {
                rows[i].transfers += s.balance;
                s.attributed = s.balance;
            } else {
                rows[i].transfers -= s.attributed;
                s.attributed = 0;
            }
            s.next_event += 1;
        }
    }
    let read_holds = |rows: &mut [StatementRow], i: usize, state: &HashMap<i64, AccountState>| {
        let at = boundaries[i];
        rows[i].holds = state
            .iter()
            .filter(|(a, _)| {
                linked_at(**a, at - chrono::Duration::microseconds(1)) || linked_at(**a, at)
            })
            .map(|(_, s)| s.held)
            .sum();
    };
    let filter = JournalFilter {
        accounts: Some(idx.linked_accounts(grant_id)),
        to: cut,
        ..Default::default()
    };
    for a in filter.accounts.iter().flatten() {
        state.entry(*a).or_default();
    }
    let empty: Vec<(DateTime<Utc>, bool)> = Vec::new();
    journal_pages(conn, &filter, |_, page| -> Result<(), LedgerError> {
        for r in page {
            let t = from_naive(r.effective_at);
            while next_boundary < n && boundaries[next_boundary] <= t {
                read_holds(&mut rows, next_boundary, &state);
                next_boundary += 1;
            }
            let s = state.entry(r.account_id).or_default();
            fire(
                g,
                &mut rows,
                events.get(&r.account_id).unwrap_or(&empty),
                s,
                Some(t),
                cut,
            );
            let a = idx
                .attribute(r.account_id, r.id, t)
                .filter(|a| a.grant_id == grant_id);
            s.balance += r.credited_delta_micros - r.charged_delta_micros;
            s.held += r.held_delta_micros;
            if let Some(a) = a {
                let (direct, indirect) = idx.split(Some(a), r.charged_delta_micros, t);
                rows[a.index].add_entry(r, idx.expiry_entries.contains(&r.id), direct, indirect);
                s.attributed += r.credited_delta_micros - r.charged_delta_micros;
                if r.charged_delta_micros != 0 {
                    *daily.entry(t.date_naive()).or_default() += r.charged_delta_micros;
                }
            }
        }
        progress(page.len() as u64);
        Ok(())
    })?;
    for (a, s) in state.iter_mut() {
        fire(g, &mut rows, events.get(a).unwrap_or(&empty), s, None, cut);
    }
    while next_boundary < n {
        read_holds(&mut rows, next_boundary, &state);
        next_boundary += 1;
    }
    let mut opening = 0i64;
    for r in rows.iter_mut() {
        r.opening = opening;
        r.closing = opening + r.net();
        opening = r.closing;
    }
    let kept: Vec<StatementRow> = rows
        .into_iter()
        .zip(&g.periods)
        .filter(|(_, p)| select(p))
        .map(|(r, _)| r)
        .collect();
    Ok(Statement {
        total: total_of(&kept),
        rows: kept,
        daily_spend: daily.into_iter().collect(),
    })
}

/// Expected spend of a grant from its period budgets, each spent evenly over its period:
/// cumulative at `t`, rounded to the micro-dollar.
pub fn grant_expected(g: &GrantInfo, t: DateTime<Utc>) -> i64 {
    let plan = Plan {
        segments: g
            .periods
            .iter()
            .filter(|p| p.status != "cancelled")
            .map(|p| Segment {
                start: p.start(),
                end: p.end(),
                amount: UsdMicros::from_stored(p.budget_micros),
            })
            .collect(),
    };
    round_micros(plan.expected_between(g.grant.start, t)).micros()
}

/// An account's statement over consecutive windows `[start, end)` (months, usually), as the
/// ledger stands for entries effective before the last window's end.
pub fn account_statement(
    conn: &mut DbConn,
    idx: &GrantIndex,
    account_id: i64,
    windows: &[(String, DateTime<Utc>, DateTime<Utc>)],
    mut progress: impl FnMut(u64),
) -> Result<Statement, LedgerError> {
    let mut rows: Vec<StatementRow> = windows
        .iter()
        .map(|(label, a, b)| StatementRow {
            label: label.clone(),
            start: Some(*a),
            end: Some(*b),
            ..Default::default()
        })
        .collect();
    let Some(last_end) = windows.last().map(|w| w.2) else {
        return Ok(Statement::default());
    };
    let first_start = windows[0].1;
    let mut before = 0i64;
    let mut held_before = 0i64;
    let mut held_in: Vec<i64> = vec![0; rows.len()];
    let mut daily: BTreeMap<NaiveDate, i64> = BTreeMap::new();
    let filter = JournalFilter {
        accounts: Some(vec![account_id]),
        to: Some(last_end),
        ..Default::default()
    };
    let mut w = 0usize;
    journal_pages(conn, &filter, |_, page| -> Result<(), LedgerError> {
        for r in page {
            let t = from_naive(r.effective_at);
            if t < first_start {
                before += r.credited_delta_micros - r.charged_delta_micros;
                held_before += r.held_delta_micros;
                continue;
            }
            while w < windows.len() && windows[w].2 <= t {
                w += 1;
            }
            if w == windows.len() {
                break;
            }
            let a = idx.attribute(r.account_id, r.id, t);
            let (direct, indirect) = idx.split(a, r.charged_delta_micros, t);
            rows[w].add_entry(r, idx.expiry_entries.contains(&r.id), direct, indirect);
            held_in[w] += r.held_delta_micros;
            if r.charged_delta_micros != 0 {
                *daily.entry(t.date_naive()).or_default() += r.charged_delta_micros;
            }
        }
        progress(page.len() as u64);
        Ok(())
    })?;
    let (mut opening, mut held) = (before, held_before);
    for (r, h) in rows.iter_mut().zip(held_in) {
        r.opening = opening;
        r.closing = opening + r.net();
        held += h;
        r.holds = held;
        opening = r.closing;
    }
    Ok(Statement {
        total: total_of(&rows),
        rows,
        daily_spend: daily.into_iter().collect(),
    })
}

/// The first and last effective time of an account's entries (before `cut`).
pub fn account_extent(
    conn: &mut DbConn,
    account_id: i64,
    cut: Option<DateTime<Utc>>,
) -> Result<Option<Extent>, LedgerError> {
    let mut q = journal::table
        .filter(journal::account_id.eq(account_id))
        .select((
            diesel::dsl::min(journal::effective_at),
            diesel::dsl::max(journal::effective_at),
        ))
        .into_boxed();
    if let Some(c) = cut {
        q = q.filter(journal::effective_at.lt(to_naive(c)));
    }
    let (a, b): (Option<NaiveDateTime>, Option<NaiveDateTime>) = q.get_result(conn)?;
    Ok(a.zip(b).map(|(a, b)| (from_naive(a), from_naive(b))))
}

/// What the reports take from a run's cost record.
#[derive(Debug, Clone, Default)]
pub struct RunInfo {
    /// Instance types, comma-separated.
    pub instance_types: String,
    /// Final SLURM state.
    pub job_state: Option<String>,
    /// The charge entry.
    pub charge_entry: Option<i64>,
    /// User.
    pub user: Option<String>,
    /// Partition.
    pub partition: Option<String>,
}

/// The cost records of charge (or refund) entries, by entry id.
pub fn cost_records_of(
    conn: &mut DbConn,
    entry_ids: &[i64],
    refunds: bool,
) -> Result<HashMap<i64, RunInfo>, LedgerError> {
    let mut out = HashMap::new();
    for chunk in entry_ids.chunks(IDS_PER_QUERY) {
        let ids: Vec<Option<i64>> = chunk.iter().map(|i| Some(*i)).collect();
        type R = (
            Option<i64>,
            Option<i64>,
            String,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let q = cost_records::table.select((
            cost_records::charge_entry_id,
            cost_records::refund_entry_id,
            cost_records::instance_types,
            cost_records::job_state,
            cost_records::user_name,
            cost_records::charged_partition,
        ));
        let rows: Vec<R> = if refunds {
            q.filter(cost_records::refund_entry_id.eq_any(ids))
                .load(conn)?
        } else {
            q.filter(cost_records::charge_entry_id.eq_any(ids))
                .load(conn)?
        };
        for (charge, refund, types, state, user, partition) in rows {
            let key = if refunds { refund } else { charge };
            if let Some(k) = key {
                out.insert(
                    k,
                    RunInfo {
                        instance_types: types,
                        job_state: state,
                        charge_entry: charge,
                        user,
                        partition,
                    },
                );
            }
        }
    }
    Ok(out)
}

/// A hold with money still held at the cut.
#[derive(Debug, Clone)]
pub struct OutstandingHold {
    /// The hold.
    pub hold: crate::db::models::Hold,
    /// Still held (from the journal, before the cut).
    pub outstanding: i64,
}

#[derive(QueryableByName)]
struct HeldSum {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    hold_id: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    held: i64,
}

/// Holds with money held at `cut` (all entries when `None`), of the given accounts (all when
/// `None`), by hold id. Read from the journal, so a past cut shows the holds open then.
pub fn outstanding_holds(
    conn: &mut DbConn,
    accounts: Option<&[i64]>,
    cut: Option<DateTime<Utc>>,
) -> Result<Vec<OutstandingHold>, LedgerError> {
    if accounts.is_some_and(|a| a.is_empty()) {
        return Ok(Vec::new());
    }
    let account_sql = accounts
        .map(|ids| {
            let list: Vec<String> = ids.iter().map(i64::to_string).collect();
            format!(" AND account_id IN ({})", list.join(","))
        })
        .unwrap_or_default();
    // Integer ids only are formatted into the text; the cut is bound. SUM is cast because its
    // type differs by backend (NUMERIC on PostgreSQL).
    let cut = to_naive(cut.unwrap_or_else(far_future));
    let sql = |placeholder: &str| {
        format!(
            "SELECT hold_id, CAST(SUM(held_delta_micros) AS BIGINT) AS held FROM journal \
             WHERE hold_id IS NOT NULL AND effective_at < {placeholder}{account_sql} \
             GROUP BY hold_id HAVING SUM(held_delta_micros) <> 0 ORDER BY hold_id"
        )
    };
    let sums: Vec<HeldSum> = match conn {
        DbConn::Sqlite(c) => diesel::sql_query(sql("?"))
            .bind::<diesel::sql_types::Timestamp, _>(cut)
            .load(c)?,
        DbConn::Postgres(c) => diesel::sql_query(sql("$1"))
            .bind::<diesel::sql_types::Timestamp, _>(cut)
            .load(c)?,
    };
    let names = account_names(conn)?;
    let mut out = Vec::with_capacity(sums.len());
    for chunk in sums.chunks(IDS_PER_QUERY) {
        let ids: Vec<i64> = chunk.iter().map(|s| s.hold_id).collect();
        let rows: Vec<(i64, HoldRow)> = holds::table
            .filter(holds::id.eq_any(ids))
            .order(holds::id)
            .select((holds::account_id, HoldRow::as_select()))
            .load(conn)?;
        let by_id: HashMap<i64, (i64, HoldRow)> =
            rows.into_iter().map(|(a, h)| (h.id, (a, h))).collect();
        for s in chunk {
            if let Some((a, h)) = by_id.get(&s.hold_id) {
                let name = names.get(a).cloned().unwrap_or_default();
                out.push(OutstandingHold {
                    hold: h.to_record(&name),
                    outstanding: s.held,
                });
            }
        }
    }
    Ok(out)
}
