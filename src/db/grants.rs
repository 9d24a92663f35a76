//! Grants, their budget periods and linked accounts, and the period transitions that move
//! grant money in the ledger.
//!
//! **How a period's budget becomes money on the linked accounts.** When a period starts
//! (activation), each account linked to the grant is credited its share of the period's
//! budget: a `credit` journal entry, effective at the period's start (or the link, if later),
//! key `grant:<grant id>:p<N>:credit:<account>`. When the period ends (expiry), each account's
//! unspent period money (credit + carried in − net charges in the period) is either kept for
//! the next period (carry-over policy) or taken back with a negative `adjustment`, effective at
//! the period's end, key `grant:<grant id>:p<N>:expire:<account>`. Money held for jobs still
//! running is never taken back (it would leave the account below zero when they are charged):
//! it stays and counts as carried. Available money therefore follows the period, and every
//! movement is an ordinary ledger entry: `available = credited − charged − held + overdraft`
//! holds and `asbb audit verify` replays it like any other.
//!
//! Transitions run in `asbb allocations process` (the timer job, with catch-up: a missed run
//! books every transition since, each at its own effective time), and right away when a grant
//! is created or an account is linked. Each is idempotent by its key.

use std::collections::HashMap;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use rust_decimal::Decimal;

use super::ledger::{self, LedgerError, MoneyOp, OpContext};
use super::schema::{
    accounts, grant_changes, grant_links, grant_period_accounts, grant_periods, grants, journal,
};
use super::{write_transaction, DbConn};
use crate::domain::grant::{close_period, even_budgets, periods, share_of, CarryOver, GrantError};
use crate::domain::ledger::{AccountStatus, Balances};
use crate::domain::time::{from_naive, to_naive};
use crate::domain::UsdMicros;

/// Longest grant number.
pub const NUMBER_LEN_MAX: usize = 64;

/// Accounts per `IN (…)` list: both backends bound the parameters of one statement.
const ACCOUNTS_PER_QUERY: usize = 500;

/// The advisory lock key of grant transitions on PostgreSQL.
const GRANTS_LOCK: i64 = 0x6173_6262_0006;

impl From<GrantError> for LedgerError {
    fn from(e: GrantError) -> Self {
        match e {
            GrantError::Invalid { flag, message } => LedgerError::Invalid {
                field: flag,
                message,
            },
            GrantError::Money(m) => LedgerError::Money(m),
        }
    }
}

/// Checks a grant number: 1–64 of letters, digits, `-`, `_`, `.`, `/`.
pub fn check_number(n: &str) -> Result<(), LedgerError> {
    if n.is_empty()
        || n.len() > NUMBER_LEN_MAX
        || !n
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
    {
        return Err(LedgerError::invalid(
            "--number",
            format!("'{n}' is not a grant number (1 to {NUMBER_LEN_MAX} letters, digits, '-', '_', '.', '/')"),
        ));
    }
    Ok(())
}

/// A new grant.
#[derive(Debug, Clone)]
pub struct NewGrant {
    /// Grant number (e.g. NSF-2025-12345).
    pub number: String,
    /// Funding agency.
    pub agency: String,
    /// Program.
    pub program: String,
    /// Principal investigator.
    pub pi: String,
    /// Co-PIs.
    pub co_pis: Vec<String>,
    /// Institution.
    pub institution: String,
    /// Department.
    pub department: String,
    /// Award amount (direct + indirect).
    pub amount: UsdMicros,
    /// Start.
    pub start: DateTime<Utc>,
    /// End (exclusive).
    pub end: DateTime<Utc>,
    /// Months per budget period.
    pub period_months: u32,
    /// Indirect (F&A) rate as a fraction.
    pub indirect_rate: Decimal,
    /// Federal award id (CFDA/ALN, e.g. 47.070).
    pub federal_award_id: String,
    /// Institution's project code.
    pub project_code: String,
    /// Cost center.
    pub cost_center: String,
    /// Carry-over policy.
    pub carry_over: CarryOver,
    /// Budgets per period; `None` for the even split.
    pub period_budgets: Option<Vec<UsdMicros>>,
}

/// A grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRecord {
    /// Row id (in journal keys).
    pub id: i64,
    /// Grant number.
    pub number: String,
    /// Agency.
    pub agency: String,
    /// Program.
    pub program: String,
    /// PI.
    pub pi: String,
    /// Co-PIs.
    pub co_pis: Vec<String>,
    /// Institution.
    pub institution: String,
    /// Department.
    pub department: String,
    /// Award (the sum of the period budgets).
    pub amount: UsdMicros,
    /// Start.
    pub start: DateTime<Utc>,
    /// End (exclusive).
    pub end: DateTime<Utc>,
    /// Months per period.
    pub period_months: i64,
    /// Indirect rate.
    pub indirect_rate: Decimal,
    /// Federal award id.
    pub federal_award_id: String,
    /// Project code.
    pub project_code: String,
    /// Cost center.
    pub cost_center: String,
    /// Carry-over policy.
    pub carry_over: CarryOver,
    /// `active` or `closed`.
    pub status: String,
    /// Who created it.
    pub created_by: String,
    /// When.
    pub created_at: DateTime<Utc>,
    /// When closed.
    pub closed_at: Option<DateTime<Utc>>,
    /// Why closed.
    pub close_reason: String,
}

impl GrantRecord {
    /// Whether the grant runs at `t` (active status, between start and end).
    pub fn is_active_at(&self, t: DateTime<Utc>) -> bool {
        self.status == "active" && self.start <= t && t < self.end
    }
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = grants)]
struct GrantRow {
    id: i64,
    number: String,
    agency: String,
    program: String,
    pi: String,
    co_pis: String,
    institution: String,
    department: String,
    amount_micros: i64,
    starts_at: chrono::NaiveDateTime,
    ends_at: chrono::NaiveDateTime,
    period_months: i64,
    indirect_rate: String,
    federal_award_id: String,
    project_code: String,
    cost_center: String,
    carry_over: String,
    status: String,
    created_by: String,
    created_at: chrono::NaiveDateTime,
    closed_at: Option<chrono::NaiveDateTime>,
    close_reason: String,
}

impl GrantRow {
    fn record(self) -> GrantRecord {
        GrantRecord {
            id: self.id,
            number: self.number,
            agency: self.agency,
            program: self.program,
            pi: self.pi,
            co_pis: split_list(&self.co_pis),
            institution: self.institution,
            department: self.department,
            amount: UsdMicros::from_stored(self.amount_micros),
            start: from_naive(self.starts_at),
            end: from_naive(self.ends_at),
            period_months: self.period_months,
            indirect_rate: Decimal::from_str(&self.indirect_rate).unwrap_or(Decimal::ZERO),
            federal_award_id: self.federal_award_id,
            project_code: self.project_code,
            cost_center: self.cost_center,
            carry_over: self.carry_over.parse().unwrap_or(CarryOver::None),
            status: self.status,
            created_by: self.created_by,
            created_at: from_naive(self.created_at),
            closed_at: self.closed_at.map(from_naive),
            close_reason: self.close_reason,
        }
    }
}

/// Co-PIs are stored one per line (names may contain commas, never newlines).
fn split_list(s: &str) -> Vec<String> {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// A budget period.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = grant_periods)]
pub struct PeriodRow {
    /// Grant.
    pub grant_id: i64,
    /// 1-based number.
    pub number: i64,
    /// Start.
    pub starts_at: chrono::NaiveDateTime,
    /// End (exclusive).
    pub ends_at: chrono::NaiveDateTime,
    /// Planned budget.
    pub budget_micros: i64,
    /// `pending`, `active`, `closed`, `cancelled`.
    pub status: String,
    /// Carried in from the previous period (set at activation).
    pub carry_in_micros: i64,
    /// Credited to linked accounts.
    pub credited_micros: i64,
    /// Spent (set at close).
    pub spent_micros: Option<i64>,
    /// Carried into the next period (set at close).
    pub carried_out_micros: Option<i64>,
    /// Expired (set at close).
    pub expired_micros: Option<i64>,
    /// Activated.
    pub activated_at: Option<chrono::NaiveDateTime>,
    /// Closed.
    pub closed_at: Option<chrono::NaiveDateTime>,
}

impl PeriodRow {
    /// Start as UTC.
    pub fn start(&self) -> DateTime<Utc> {
        from_naive(self.starts_at)
    }

    /// End as UTC.
    pub fn end(&self) -> DateTime<Utc> {
        from_naive(self.ends_at)
    }

    /// Budget plus what was carried in: the money of the period.
    pub fn available(&self) -> UsdMicros {
        UsdMicros::from_stored(self.budget_micros + self.carry_in_micros)
    }
}

/// A linked account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkRecord {
    /// Account id.
    pub account_id: i64,
    /// Account name.
    pub account: String,
    /// Share of every period's budget, percent.
    pub share: Decimal,
    /// Linked since.
    pub linked_at: DateTime<Utc>,
    /// Until.
    pub unlinked_at: Option<DateTime<Utc>>,
}

/// One linked account's money in one period.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = grant_period_accounts)]
pub struct PeriodAccountRow {
    /// Grant.
    pub grant_id: i64,
    /// Period.
    pub period: i64,
    /// Account.
    pub account_id: i64,
    /// Credited at activation.
    pub credited_micros: i64,
    /// Its journal entry.
    pub credit_entry_id: Option<i64>,
    /// Carried in from the previous period.
    pub carry_in_micros: i64,
    /// When the credit took effect.
    pub activated_at: chrono::NaiveDateTime,
    /// Net charges in the period (at close).
    pub spent_micros: Option<i64>,
    /// Kept for the next period (at close).
    pub carried_micros: Option<i64>,
    /// Taken back (at close).
    pub expired_micros: Option<i64>,
    /// Its journal entry.
    pub expiry_entry_id: Option<i64>,
    /// When closed.
    pub closed_at: Option<chrono::NaiveDateTime>,
    /// Why something was not booked.
    pub note: String,
}

fn unknown(number: &str) -> LedgerError {
    LedgerError::invalid(
        "GRANT",
        format!("no grant '{number}' (see `asbb grant list`)"),
    )
}

fn check_text(field: &'static str, text: &str) -> Result<(), LedgerError> {
    if text.len() > ledger::TEXT_LEN_MAX || text.chars().any(|c| c.is_control()) {
        return Err(LedgerError::invalid(
            field,
            format!(
                "must be at most {} bytes without control characters",
                ledger::TEXT_LEN_MAX
            ),
        ));
    }
    Ok(())
}

/// Creates a grant and its budget periods, then books what is due as of `ctx.effective_at`.
pub fn create(
    conn: &mut DbConn,
    ctx: &OpContext,
    g: &NewGrant,
) -> Result<GrantRecord, LedgerError> {
    check_number(&g.number)?;
    for (field, v) in [
        ("--agency", &g.agency),
        ("--program", &g.program),
        ("--pi", &g.pi),
        ("--institution", &g.institution),
        ("--department", &g.department),
        ("--federal-id", &g.federal_award_id),
        ("--project-code", &g.project_code),
        ("--cost-center", &g.cost_center),
    ] {
        check_text(field, v)?;
    }
    for c in &g.co_pis {
        check_text("--co-pi", c)?;
    }
    if g.agency.trim().is_empty() {
        return Err(LedgerError::invalid("--agency", "name the funding agency"));
    }
    if g.pi.trim().is_empty() {
        return Err(LedgerError::invalid(
            "--pi",
            "name the principal investigator",
        ));
    }
    g.amount
        .positive()
        .map_err(|e| LedgerError::invalid("--amount", e.to_string()))?;
    let dates = periods(g.start, g.end, g.period_months)?;
    let budgets = match &g.period_budgets {
        None => even_budgets(g.amount, &dates),
        Some(b) => {
            if b.len() != dates.len() {
                return Err(LedgerError::invalid(
                    "--period-budgets",
                    format!("{} budgets given for {} periods", b.len(), dates.len()),
                ));
            }
            let sum: i64 = b.iter().map(|m| m.micros()).sum();
            if sum != g.amount.micros() || b.iter().any(|m| m.is_negative()) {
                return Err(LedgerError::invalid(
                    "--period-budgets",
                    format!(
                        "the period budgets add up to ${}, the award is ${}",
                        UsdMicros::from_stored(sum),
                        g.amount
                    ),
                ));
            }
            b.clone()
        }
    };
    let number = g.number.clone();
    write_transaction(conn, |conn| {
        let exists: i64 = grants::table
            .filter(grants::number.eq(&number))
            .count()
            .get_result(conn)?;
        if exists > 0 {
            return Err(LedgerError::invalid(
                "--number",
                format!("grant '{number}' already exists (see `asbb grant show {number}`)"),
            ));
        }
        let now = to_naive(ctx.recorded_at);
        let id: i64 = diesel::insert_into(grants::table)
            .values((
                grants::number.eq(&number),
                grants::agency.eq(g.agency.trim()),
                grants::program.eq(g.program.trim()),
                grants::pi.eq(g.pi.trim()),
                grants::co_pis.eq(g.co_pis.join("\n")),
                grants::institution.eq(g.institution.trim()),
                grants::department.eq(g.department.trim()),
                grants::amount_micros.eq(g.amount.micros()),
                grants::starts_at.eq(to_naive(g.start)),
                grants::ends_at.eq(to_naive(g.end)),
                grants::period_months.eq(i64::from(g.period_months)),
                grants::indirect_rate.eq(g.indirect_rate.normalize().to_string()),
                grants::federal_award_id.eq(g.federal_award_id.trim()),
                grants::project_code.eq(g.project_code.trim()),
                grants::cost_center.eq(g.cost_center.trim()),
                grants::carry_over.eq(g.carry_over.to_string()),
                grants::status.eq("active"),
                grants::created_by.eq(&ctx.actor),
                grants::created_at.eq(now),
                grants::updated_at.eq(now),
            ))
            .returning(grants::id)
            .get_result(conn)?;
        let rows: Vec<_> = dates
            .iter()
            .zip(&budgets)
            .map(|(p, b)| {
                (
                    grant_periods::grant_id.eq(id),
                    grant_periods::number.eq(i64::from(p.number)),
                    grant_periods::starts_at.eq(to_naive(p.start)),
                    grant_periods::ends_at.eq(to_naive(p.end)),
                    grant_periods::budget_micros.eq(b.micros()),
                    grant_periods::status.eq("pending"),
                )
            })
            .collect();
        for chunk in rows.chunks(200) {
            match conn {
                DbConn::Sqlite(c) => diesel::insert_into(grant_periods::table)
                    .values(chunk)
                    .execute(c)?,
                DbConn::Postgres(c) => diesel::insert_into(grant_periods::table)
                    .values(chunk)
                    .execute(c)?,
            };
        }
        load_by_id(conn, id)
    })
}

pub(crate) fn load_by_id(conn: &mut DbConn, id: i64) -> Result<GrantRecord, LedgerError> {
    Ok(grants::table
        .find(id)
        .select(GrantRow::as_select())
        .get_result(conn)?
        .record())
}

/// One grant by number.
pub fn load(conn: &mut DbConn, number: &str) -> Result<GrantRecord, LedgerError> {
    grants::table
        .filter(grants::number.eq(number))
        .select(GrantRow::as_select())
        .get_result(conn)
        .optional()?
        .map(GrantRow::record)
        .ok_or_else(|| unknown(number))
}

/// Whether a grant of that number exists.
pub fn exists(conn: &mut DbConn, number: &str) -> Result<bool, LedgerError> {
    Ok(grants::table
        .filter(grants::number.eq(number))
        .count()
        .get_result::<i64>(conn)?
        > 0)
}

/// Every grant, by number; with `active_at`, only those running then.
pub fn list(
    conn: &mut DbConn,
    active_at: Option<DateTime<Utc>>,
) -> Result<Vec<GrantRecord>, LedgerError> {
    let rows: Vec<GrantRow> = grants::table
        .order(grants::number)
        .select(GrantRow::as_select())
        .load(conn)?;
    Ok(rows
        .into_iter()
        .map(GrantRow::record)
        .filter(|g| active_at.is_none_or(|t| g.is_active_at(t)))
        .collect())
}

/// A grant's periods, in order.
pub fn period_rows(conn: &mut DbConn, grant_id: i64) -> Result<Vec<PeriodRow>, LedgerError> {
    Ok(grant_periods::table
        .filter(grant_periods::grant_id.eq(grant_id))
        .order(grant_periods::number)
        .select(PeriodRow::as_select())
        .load(conn)?)
}

/// A grant's per-account period rows.
pub fn period_accounts(
    conn: &mut DbConn,
    grant_id: i64,
) -> Result<Vec<PeriodAccountRow>, LedgerError> {
    Ok(grant_period_accounts::table
        .filter(grant_period_accounts::grant_id.eq(grant_id))
        .order((
            grant_period_accounts::period,
            grant_period_accounts::account_id,
        ))
        .select(PeriodAccountRow::as_select())
        .load(conn)?)
}

/// A grant's links (current and past).
pub fn links(conn: &mut DbConn, grant_id: i64) -> Result<Vec<LinkRecord>, LedgerError> {
    let rows: Vec<(
        i64,
        String,
        String,
        chrono::NaiveDateTime,
        Option<chrono::NaiveDateTime>,
    )> = grant_links::table
        .inner_join(accounts::table)
        .filter(grant_links::grant_id.eq(grant_id))
        .order(grant_links::id)
        .select((
            grant_links::account_id,
            accounts::name,
            grant_links::share_percent,
            grant_links::linked_at,
            grant_links::unlinked_at,
        ))
        .load(conn)?;
    Ok(rows
        .into_iter()
        .map(|(account_id, account, share, l, u)| LinkRecord {
            account_id,
            account,
            share: Decimal::from_str(&share).unwrap_or(Decimal::ZERO),
            linked_at: from_naive(l),
            unlinked_at: u.map(from_naive),
        })
        .collect())
}

/// The grant an account is linked to now, if any.
pub fn grant_of_account(conn: &mut DbConn, account_id: i64) -> Result<Option<i64>, LedgerError> {
    Ok(grant_links::table
        .filter(grant_links::account_id.eq(account_id))
        .filter(grant_links::unlinked_at.is_null())
        .select(grant_links::grant_id)
        .first(conn)
        .optional()?)
}

/// Links an account to a grant with a share of every period's budget, and credits its share of
/// the current period right away.
pub fn link(
    conn: &mut DbConn,
    ctx: &OpContext,
    number: &str,
    account: &str,
    share: Decimal,
) -> Result<(GrantRecord, ProcessReport), LedgerError> {
    write_transaction(conn, |conn| {
        let g = load(conn, number)?;
        if g.status != "active" {
            return Err(LedgerError::invalid(
                "GRANT",
                format!("grant '{number}' is closed"),
            ));
        }
        if ctx.effective_at >= g.end {
            return Err(LedgerError::invalid(
                "--as-of",
                format!("grant '{number}' has ended; accounts can no longer be linked"),
            ));
        }
        let (account_id, status): (i64, String) = accounts::table
            .filter(accounts::name.eq(account))
            .select((accounts::id, accounts::status))
            .get_result(conn)
            .optional()?
            .ok_or_else(|| LedgerError::UnknownAccount(account.to_string()))?;
        if status == AccountStatus::Closed.as_str() {
            return Err(LedgerError::AccountState {
                account: account.to_string(),
                status: AccountStatus::Closed,
                what: "a closed account cannot be linked to a grant".into(),
            });
        }
        if let Some(other) = grant_of_account(conn, account_id)? {
            let other = load_by_id(conn, other)?;
            return Err(LedgerError::invalid(
                "ACCOUNT",
                format!(
                    "budget account '{account}' is already linked to grant '{}'; unlink it first (`asbb grant unlink {} {account}`)",
                    other.number, other.number
                ),
            ));
        }
        let current: Decimal = links(conn, g.id)?
            .iter()
            .filter(|l| l.unlinked_at.is_none())
            .map(|l| l.share)
            .sum();
        if current + share > Decimal::ONE_HUNDRED {
            return Err(LedgerError::invalid(
                "--share",
                format!(
                    "the accounts of grant '{number}' already have {}% of it; {share}% more would exceed 100%",
                    current.normalize()
                ),
            ));
        }
        diesel::insert_into(grant_links::table)
            .values((
                grant_links::grant_id.eq(g.id),
                grant_links::account_id.eq(account_id),
                grant_links::share_percent.eq(share.normalize().to_string()),
                grant_links::linked_at.eq(to_naive(ctx.effective_at)),
                grant_links::linked_by.eq(&ctx.actor),
            ))
            .execute(conn)?;
        let mut report = ProcessReport::default();
        process_one(conn, ctx, &g, false, &mut report)?;
        Ok((g, report))
    })
}

/// Unlinks an account from its grant as of `ctx.effective_at`: its unspent money of the
/// current period is taken back (it leaves the grant), and it gets no further periods.
pub fn unlink(
    conn: &mut DbConn,
    ctx: &OpContext,
    number: &str,
    account: &str,
) -> Result<ProcessReport, LedgerError> {
    write_transaction(conn, |conn| {
        let g = load(conn, number)?;
        let account_id: i64 = accounts::table
            .filter(accounts::name.eq(account))
            .select(accounts::id)
            .get_result(conn)
            .optional()?
            .ok_or_else(|| LedgerError::UnknownAccount(account.to_string()))?;
        let link = links(conn, g.id)?
            .into_iter()
            .find(|l| l.account_id == account_id && l.unlinked_at.is_none())
            .ok_or_else(|| {
                LedgerError::invalid(
                    "ACCOUNT",
                    format!("budget account '{account}' is not linked to grant '{number}'"),
                )
            })?;
        // First book what was due up to now, then close the account's open period at now.
        let mut report = ProcessReport::default();
        process_one(conn, ctx, &g, false, &mut report)?;
        let open: Vec<PeriodRow> = period_rows(conn, g.id)?
            .into_iter()
            .filter(|p| p.status == "active")
            .collect();
        for p in open {
            let rows: Vec<PeriodAccountRow> = period_accounts(conn, g.id)?
                .into_iter()
                .filter(|r| {
                    r.period == p.number && r.account_id == account_id && r.closed_at.is_none()
                })
                .collect();
            let closing: Vec<Closing<'_>> = rows
                .iter()
                .map(|r| Closing {
                    row: r,
                    link: &link,
                })
                .collect();
            close_account_periods(
                conn,
                ctx,
                &g,
                &p,
                &closing,
                ctx.effective_at,
                true,
                &mut report,
            )?;
        }
        diesel::update(
            grant_links::table
                .filter(grant_links::account_id.eq(account_id))
                .filter(grant_links::unlinked_at.is_null()),
        )
        .set((
            grant_links::unlinked_at.eq(Some(to_naive(ctx.effective_at))),
            grant_links::unlinked_by.eq(Some(&ctx.actor)),
        ))
        .execute(conn)?;
        Ok(report)
    })
}

/// One transition booked (or, in a dry run, to be booked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// Grant number.
    pub grant: String,
    /// Period number.
    pub period: i64,
    /// Account.
    pub account: String,
    /// `credit` (activation), `expire` (end of period), `carry` (kept for the next period), or
    /// `failed`.
    pub action: &'static str,
    /// Amount.
    pub amount: UsdMicros,
    /// Effective time.
    pub effective_at: DateTime<Utc>,
    /// Journal entry.
    pub entry_id: Option<i64>,
    /// Note (why nothing was booked, or an error).
    pub note: String,
}

/// What a run of the grant transitions did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessReport {
    /// Every transition.
    pub transitions: Vec<Transition>,
    /// Periods activated (grant, period).
    pub activated: Vec<(String, i64)>,
    /// Periods closed.
    pub closed: Vec<(String, i64)>,
    /// Grants looked at.
    pub grants: u64,
}

/// `SUM` of a `BIGINT` column as a `BIGINT` on both backends (PostgreSQL sums `BIGINT` into
/// `NUMERIC`), zero over no rows. Exact: integers all the way.
macro_rules! sum_bigint {
    ($col:literal) => {
        diesel::dsl::sql::<diesel::sql_types::BigInt>(concat!(
            "CAST(COALESCE(SUM(",
            $col,
            "), 0) AS BIGINT)"
        ))
    };
}

/// Net charges of an account with effective time in `[a, b)`.
pub fn spent_between(
    conn: &mut DbConn,
    account_id: i64,
    a: DateTime<Utc>,
    b: DateTime<Utc>,
) -> Result<UsdMicros, LedgerError> {
    Ok(spent_by_account(conn, &[account_id], a, b)?
        .get(&account_id)
        .copied()
        .unwrap_or(UsdMicros::ZERO))
}

/// Net charges of each account with effective time in `[a, b)`, summed by the database.
pub fn spent_by_account(
    conn: &mut DbConn,
    account_ids: &[i64],
    a: DateTime<Utc>,
    b: DateTime<Utc>,
) -> Result<HashMap<i64, UsdMicros>, LedgerError> {
    let mut out = HashMap::new();
    if b <= a {
        return Ok(out);
    }
    for chunk in account_ids.chunks(ACCOUNTS_PER_QUERY) {
        let rows: Vec<(i64, i64)> = journal::table
            .filter(journal::account_id.eq_any(chunk))
            .filter(journal::effective_at.ge(to_naive(a)))
            .filter(journal::effective_at.lt(to_naive(b)))
            .group_by(journal::account_id)
            .select((journal::account_id, sum_bigint!("charged_delta_micros")))
            .load(conn)?;
        out.extend(
            rows.into_iter()
                .map(|(id, s)| (id, UsdMicros::from_stored(s))),
        );
    }
    Ok(out)
}

/// An account's balances from the entries effective before `t`.
pub fn balances_before(
    conn: &mut DbConn,
    account_id: i64,
    t: DateTime<Utc>,
) -> Result<Balances, LedgerError> {
    Ok(balances_by_account(conn, &[account_id], t)?
        .remove(&account_id)
        .unwrap_or(Balances {
            credited: UsdMicros::ZERO,
            charged: UsdMicros::ZERO,
            held: UsdMicros::ZERO,
        }))
}

/// Each account's balances from the entries effective before `t`, summed by the database.
pub fn balances_by_account(
    conn: &mut DbConn,
    account_ids: &[i64],
    t: DateTime<Utc>,
) -> Result<HashMap<i64, Balances>, LedgerError> {
    let mut out = HashMap::new();
    for chunk in account_ids.chunks(ACCOUNTS_PER_QUERY) {
        let rows: Vec<(i64, i64, i64, i64)> = journal::table
            .filter(journal::account_id.eq_any(chunk))
            .filter(journal::effective_at.lt(to_naive(t)))
            .group_by(journal::account_id)
            .select((
                journal::account_id,
                sum_bigint!("credited_delta_micros"),
                sum_bigint!("charged_delta_micros"),
                sum_bigint!("held_delta_micros"),
            ))
            .load(conn)?;
        out.extend(rows.into_iter().map(|(id, c, ch, h)| {
            (
                id,
                Balances {
                    credited: UsdMicros::from_stored(c),
                    charged: UsdMicros::from_stored(ch),
                    held: UsdMicros::from_stored(h),
                },
            )
        }));
    }
    Ok(out)
}

/// The period rows of the accounts closing together, and what each ended with.
struct Closing<'a> {
    row: &'a PeriodAccountRow,
    link: &'a LinkRecord,
}

/// Closes one period for the given accounts at `at`: each account's unspent money (credit +
/// carried in − net charges since the period, or its link, started) is carried by the policy
/// and the rest taken back. The figures of all the accounts are read in two grouped queries.
/// Returns (account, spent, carried, expired) per account.
#[allow(clippy::too_many_arguments)]
fn close_account_periods(
    conn: &mut DbConn,
    ctx: &OpContext,
    g: &GrantRecord,
    p: &PeriodRow,
    closing: &[Closing<'_>],
    at: DateTime<Utc>,
    last: bool,
    report: &mut ProcessReport,
) -> Result<Vec<(i64, UsdMicros, UsdMicros, UsdMicros)>, LedgerError> {
    let ids: Vec<i64> = closing.iter().map(|c| c.row.account_id).collect();
    let balances = balances_by_account(conn, &ids, at)?;
    // Spending counts from the period's start, or from a later link.
    let mut by_from: HashMap<DateTime<Utc>, Vec<i64>> = HashMap::new();
    for c in closing {
        by_from
            .entry(p.start().max(c.link.linked_at))
            .or_default()
            .push(c.row.account_id);
    }
    let mut spent_of: HashMap<i64, UsdMicros> = HashMap::new();
    for (from, ids) in by_from {
        spent_of.extend(spent_by_account(conn, &ids, from, at)?);
    }
    let mut out = Vec::with_capacity(closing.len());
    for c in closing {
        let r = c.row;
        let name = &c.link.account;
        let spent = spent_of
            .get(&r.account_id)
            .copied()
            .unwrap_or(UsdMicros::ZERO);
        let available = match balances.get(&r.account_id) {
            Some(b) => b.available(UsdMicros::ZERO)?,
            None => UsdMicros::ZERO,
        };
        let cl = close_period(
            UsdMicros::from_stored(r.credited_micros),
            UsdMicros::from_stored(r.carry_in_micros),
            spent,
            available,
            g.carry_over,
            last,
        )?;
        let mut entry_id = None;
        let mut note = String::new();
        if !cl.expired.is_zero() {
            let key = format!("grant:{}:p{}:expire:{name}", g.id, p.number);
            let reason = format!(
                "grant {} period {} ended: ${} unspent, ${} carried over, ${} expires",
                g.number, p.number, cl.left, cl.carried, cl.expired
            );
            let op_ctx = OpContext {
                actor: ctx.actor.clone(),
                effective_at: at,
                recorded_at: ctx.recorded_at,
            };
            match ledger::adjust(
                conn,
                &op_ctx,
                &MoneyOp {
                    account: name,
                    amount: cl.expired.checked_neg()?,
                    reason: &reason,
                    key: &key,
                    job_id: None,
                    partition: None,
                },
            ) {
                Ok(posted) => entry_id = Some(posted.entry.id),
                Err(LedgerError::AccountState { .. }) => {
                    note = "account closed: nothing taken back".into();
                }
                Err(e) => return Err(e),
            }
        }
        let expired = if entry_id.is_some() {
            cl.expired
        } else {
            UsdMicros::ZERO
        };
        let carried = cl.left.checked_sub(expired)?;
        diesel::update(grant_period_accounts::table.find((r.grant_id, r.period, r.account_id)))
            .set((
                grant_period_accounts::spent_micros.eq(Some(spent.micros())),
                grant_period_accounts::carried_micros.eq(Some(carried.micros())),
                grant_period_accounts::expired_micros.eq(Some(expired.micros())),
                grant_period_accounts::expiry_entry_id.eq(entry_id),
                grant_period_accounts::closed_at.eq(Some(to_naive(at))),
                grant_period_accounts::note.eq(if note.is_empty() {
                    r.note.clone()
                } else {
                    note.clone()
                }),
            ))
            .execute(conn)?;
        report.transitions.push(Transition {
            grant: g.number.clone(),
            period: p.number,
            account: name.clone(),
            action: "expire",
            amount: expired,
            effective_at: at,
            entry_id,
            note: note.clone(),
        });
        if !carried.is_zero() {
            report.transitions.push(Transition {
                grant: g.number.clone(),
                period: p.number,
                account: name.clone(),
                action: "carry",
                amount: carried,
                effective_at: at,
                entry_id: None,
                note: String::new(),
            });
        }
        out.push((r.account_id, spent, carried, expired));
    }
    Ok(out)
}

/// Marks the closed rows in `rows` (the in-memory copy of the grant's period rows).
fn record_closed(
    rows: &mut [PeriodAccountRow],
    period: i64,
    at: DateTime<Utc>,
    closed: &[(i64, UsdMicros, UsdMicros, UsdMicros)],
) {
    for (a, spent, carried, expired) in closed {
        if let Some(r) = rows
            .iter_mut()
            .find(|r| r.period == period && r.account_id == *a)
        {
            r.spent_micros = Some(spent.micros());
            r.carried_micros = Some(carried.micros());
            r.expired_micros = Some(expired.micros());
            r.closed_at = Some(to_naive(at));
        }
    }
}

/// Books one grant's transitions up to `ctx.effective_at`.
fn process_one(
    conn: &mut DbConn,
    ctx: &OpContext,
    g: &GrantRecord,
    dry_run: bool,
    report: &mut ProcessReport,
) -> Result<(), LedgerError> {
    report.grants += 1;
    if g.status != "active" {
        return Ok(());
    }
    let t = ctx.effective_at;
    let all_links = links(conn, g.id)?;
    let periods = period_rows(conn, g.id)?;
    // Read once and kept in step with what is written below.
    let mut accts = period_accounts(conn, g.id)?;
    let n = periods.len();
    let mut carried_by_account: HashMap<i64, i64> = HashMap::new();
    for (idx, p) in periods.iter().enumerate() {
        if p.status == "closed" || p.status == "cancelled" {
            for r in accts.iter().filter(|r| r.period == p.number) {
                carried_by_account.insert(r.account_id, r.carried_micros.unwrap_or(0));
            }
            continue;
        }
        if p.start() > t {
            break;
        }
        // Activation: every link that overlaps the period and exists by now gets its share.
        let mut credited_sum = p.credited_micros;
        let mut carry_sum = p.carry_in_micros;
        let mut activated_now = false;
        for l in &all_links {
            let overlaps = l.linked_at < p.end() && l.unlinked_at.is_none_or(|u| u > p.start());
            let booked = accts
                .iter()
                .any(|r| r.period == p.number && r.account_id == l.account_id);
            if !overlaps || l.linked_at > t || booked {
                continue;
            }
            let at = p.start().max(l.linked_at);
            let amount = share_of(UsdMicros::from_stored(p.budget_micros), l.share)?;
            let carry_in = carried_by_account.get(&l.account_id).copied().unwrap_or(0);
            let mut entry_id = None;
            let mut note = String::new();
            let mut action = "credit";
            if dry_run {
                report.transitions.push(Transition {
                    grant: g.number.clone(),
                    period: p.number,
                    account: l.account.clone(),
                    action,
                    amount,
                    effective_at: at,
                    entry_id: None,
                    note: String::new(),
                });
                continue;
            }
            if !amount.is_zero() {
                let key = format!("grant:{}:p{}:credit:{}", g.id, p.number, l.account);
                let reason = format!(
                    "grant {} period {}: {}% of ${}",
                    g.number,
                    p.number,
                    l.share.normalize(),
                    UsdMicros::from_stored(p.budget_micros)
                );
                let op_ctx = OpContext {
                    actor: ctx.actor.clone(),
                    effective_at: at,
                    recorded_at: ctx.recorded_at,
                };
                match ledger::credit(
                    conn,
                    &op_ctx,
                    &MoneyOp {
                        account: &l.account,
                        amount,
                        reason: &reason,
                        key: &key,
                        job_id: None,
                        partition: None,
                    },
                ) {
                    Ok(posted) => entry_id = Some(posted.entry.id),
                    Err(LedgerError::AccountState { .. }) => {
                        note = "account closed: nothing credited".into();
                        action = "failed";
                    }
                    Err(e) => return Err(e),
                }
            }
            let credited = if entry_id.is_some() {
                amount
            } else {
                UsdMicros::ZERO
            };
            let row = PeriodAccountRow {
                grant_id: g.id,
                period: p.number,
                account_id: l.account_id,
                credited_micros: credited.micros(),
                credit_entry_id: entry_id,
                carry_in_micros: carry_in,
                activated_at: to_naive(at),
                spent_micros: None,
                carried_micros: None,
                expired_micros: None,
                expiry_entry_id: None,
                closed_at: None,
                note: note.clone(),
            };
            diesel::insert_into(grant_period_accounts::table)
                .values((
                    grant_period_accounts::grant_id.eq(row.grant_id),
                    grant_period_accounts::period.eq(row.period),
                    grant_period_accounts::account_id.eq(row.account_id),
                    grant_period_accounts::credited_micros.eq(row.credited_micros),
                    grant_period_accounts::credit_entry_id.eq(row.credit_entry_id),
                    grant_period_accounts::carry_in_micros.eq(row.carry_in_micros),
                    grant_period_accounts::activated_at.eq(row.activated_at),
                    grant_period_accounts::note.eq(&row.note),
                ))
                .execute(conn)?;
            accts.push(row);
            credited_sum += credited.micros();
            carry_sum += carry_in;
            activated_now = true;
            report.transitions.push(Transition {
                grant: g.number.clone(),
                period: p.number,
                account: l.account.clone(),
                action,
                amount: credited,
                effective_at: at,
                entry_id,
                note,
            });
        }
        if !dry_run && (p.status == "pending" || activated_now) {
            diesel::update(grant_periods::table.find((g.id, p.number)))
                .set((
                    grant_periods::status.eq("active"),
                    grant_periods::credited_micros.eq(credited_sum),
                    grant_periods::carry_in_micros.eq(carry_sum),
                    grant_periods::activated_at
                        .eq(Some(p.activated_at.unwrap_or(to_naive(p.start())))),
                ))
                .execute(conn)?;
            if p.status == "pending" {
                report.activated.push((g.number.clone(), p.number));
            }
        }
        // Expiry: the period is over.
        if p.end() > t {
            break;
        }
        let last = idx + 1 == n;
        let (mut spent_sum, mut carried_sum, mut expired_sum) = (0i64, 0i64, 0i64);
        for r in accts
            .iter()
            .filter(|r| r.period == p.number && r.closed_at.is_some())
        {
            spent_sum += r.spent_micros.unwrap_or(0);
            carried_sum += r.carried_micros.unwrap_or(0);
            expired_sum += r.expired_micros.unwrap_or(0);
            carried_by_account.insert(r.account_id, r.carried_micros.unwrap_or(0));
        }
        if dry_run {
            report.transitions.push(Transition {
                grant: g.number.clone(),
                period: p.number,
                account: String::new(),
                action: "expire",
                amount: UsdMicros::ZERO,
                effective_at: p.end(),
                entry_id: None,
                note: "the period ends: unspent money is carried or expires by policy".into(),
            });
            break;
        }
        let open: Vec<PeriodAccountRow> = accts
            .iter()
            .filter(|r| r.period == p.number && r.closed_at.is_none())
            .cloned()
            .collect();
        let closing: Vec<Closing<'_>> = open
            .iter()
            .filter_map(|r| {
                all_links
                    .iter()
                    .find(|l| l.account_id == r.account_id)
                    .map(|link| Closing { row: r, link })
            })
            .collect();
        let closed = close_account_periods(conn, ctx, g, p, &closing, p.end(), last, report)?;
        for (a, spent, carried, expired) in &closed {
            spent_sum += spent.micros();
            carried_sum += carried.micros();
            expired_sum += expired.micros();
            carried_by_account.insert(*a, carried.micros());
        }
        record_closed(&mut accts, p.number, p.end(), &closed);
        diesel::update(grant_periods::table.find((g.id, p.number)))
            .set((
                grant_periods::status.eq("closed"),
                grant_periods::spent_micros.eq(Some(spent_sum)),
                grant_periods::carried_out_micros.eq(Some(carried_sum)),
                grant_periods::expired_micros.eq(Some(expired_sum)),
                grant_periods::closed_at.eq(Some(to_naive(p.end()))),
            ))
            .execute(conn)?;
        report.closed.push((g.number.clone(), p.number));
    }
    Ok(())
}

/// Books the transitions of every active grant (or one) up to `ctx.effective_at`: activations
/// and expiries that came due, in order, each at its own effective time.
pub fn process(
    conn: &mut DbConn,
    ctx: &OpContext,
    only: Option<&str>,
    dry_run: bool,
) -> Result<ProcessReport, LedgerError> {
    let ids: Vec<i64> = {
        let mut q = grants::table
            .filter(grants::status.eq("active"))
            .filter(grants::starts_at.le(to_naive(ctx.effective_at)))
            .select(grants::id)
            .order(grants::id)
            .into_boxed();
        if let Some(n) = only {
            let g = load(conn, n)?;
            q = q.filter(grants::id.eq(g.id));
        }
        q.load(conn)?
    };
    let mut report = ProcessReport::default();
    for id in ids {
        // One transaction per grant: its periods and accounts move together or not at all.
        write_transaction(conn, |conn| -> Result<(), LedgerError> {
            if let DbConn::Postgres(c) = conn {
                diesel::sql_query(format!("SELECT pg_advisory_xact_lock({GRANTS_LOCK})"))
                    .execute(c)?;
            }
            let g = load_by_id(conn, id)?;
            process_one(conn, ctx, &g, dry_run, &mut report)
        })?;
    }
    Ok(report)
}

/// Changes to a grant; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct GrantUpdate {
    /// Agency.
    pub agency: Option<String>,
    /// Program.
    pub program: Option<String>,
    /// PI.
    pub pi: Option<String>,
    /// Co-PIs.
    pub co_pis: Option<Vec<String>>,
    /// Institution.
    pub institution: Option<String>,
    /// Department.
    pub department: Option<String>,
    /// Federal award id.
    pub federal_award_id: Option<String>,
    /// Project code.
    pub project_code: Option<String>,
    /// Cost center.
    pub cost_center: Option<String>,
    /// Indirect rate.
    pub indirect_rate: Option<Decimal>,
    /// Carry-over policy (applies to periods that end from now on).
    pub carry_over: Option<CarryOver>,
    /// A pending period's budget (`--period N --budget X`); the award becomes the sum.
    pub period_budget: Option<(i64, UsdMicros)>,
    /// A later end (exclusive): a no-cost extension. The last budget period is lengthened to
    /// it, with the same budget; earlier periods are not touched.
    pub end: Option<DateTime<Utc>>,
    /// Why.
    pub reason: String,
}

/// Updates a grant, recording every change in `grant_changes`.
pub fn update(
    conn: &mut DbConn,
    ctx: &OpContext,
    number: &str,
    u: &GrantUpdate,
) -> Result<GrantRecord, LedgerError> {
    write_transaction(conn, |conn| {
        let g = load(conn, number)?;
        if g.status == "closed" {
            return Err(LedgerError::invalid(
                "GRANT",
                format!("grant '{number}' is closed"),
            ));
        }
        let mut changes: Vec<(&str, String, String)> = Vec::new();
        macro_rules! text {
            ($field:ident, $flag:literal) => {
                if let Some(v) = &u.$field {
                    check_text($flag, v)?;
                    if v.trim() != g.$field {
                        changes.push((stringify!($field), g.$field.clone(), v.trim().to_string()));
                        diesel::update(grants::table.find(g.id))
                            .set(grants::$field.eq(v.trim()))
                            .execute(conn)?;
                    }
                }
            };
        }
        text!(agency, "--agency");
        text!(program, "--program");
        text!(pi, "--pi");
        text!(institution, "--institution");
        text!(department, "--department");
        text!(federal_award_id, "--federal-id");
        text!(project_code, "--project-code");
        text!(cost_center, "--cost-center");
        if let Some(c) = &u.co_pis {
            let new = c.join("\n");
            let old = g.co_pis.join("\n");
            if new != old {
                changes.push(("co_pis", old, new.clone()));
                diesel::update(grants::table.find(g.id))
                    .set(grants::co_pis.eq(new))
                    .execute(conn)?;
            }
        }
        if let Some(r) = u.indirect_rate {
            if r != g.indirect_rate {
                changes.push((
                    "indirect_rate",
                    g.indirect_rate.to_string(),
                    r.normalize().to_string(),
                ));
                diesel::update(grants::table.find(g.id))
                    .set(grants::indirect_rate.eq(r.normalize().to_string()))
                    .execute(conn)?;
            }
        }
        if let Some(c) = u.carry_over {
            if c != g.carry_over {
                changes.push(("carry_over", g.carry_over.to_string(), c.to_string()));
                diesel::update(grants::table.find(g.id))
                    .set(grants::carry_over.eq(c.to_string()))
                    .execute(conn)?;
            }
        }
        if let Some((n, budget)) = u.period_budget {
            let p = period_rows(conn, g.id)?
                .into_iter()
                .find(|p| p.number == n)
                .ok_or_else(|| {
                    LedgerError::invalid("--period", format!("grant '{number}' has no period {n}"))
                })?;
            if p.status != "pending" {
                return Err(LedgerError::invalid(
                    "--period",
                    format!("period {n} is {}; only a period that has not started can change its budget", p.status),
                ));
            }
            budget
                .non_negative()
                .map_err(|e| LedgerError::invalid("--budget", e.to_string()))?;
            changes.push((
                "period_budget",
                format!("{n}:{}", UsdMicros::from_stored(p.budget_micros)),
                format!("{n}:{budget}"),
            ));
            diesel::update(grant_periods::table.find((g.id, n)))
                .set(grant_periods::budget_micros.eq(budget.micros()))
                .execute(conn)?;
            let amount = g.amount.micros() - p.budget_micros + budget.micros();
            if amount <= 0 {
                return Err(LedgerError::invalid("--budget", "the award would be zero"));
            }
            changes.push((
                "amount",
                g.amount.to_string(),
                UsdMicros::from_stored(amount).to_string(),
            ));
            diesel::update(grants::table.find(g.id))
                .set(grants::amount_micros.eq(amount))
                .execute(conn)?;
        }
        if let Some(end) = u.end {
            if end != g.end {
                let last = extend(conn, &g, end)?;
                changes.push(("end", end_day(g.end), end_day(end)));
                changes.push((
                    "period_end",
                    format!("{}:{}", last.number, end_day(last.end())),
                    format!("{}:{}", last.number, end_day(end)),
                ));
            }
        }
        for (field, old, new) in &changes {
            diesel::insert_into(grant_changes::table)
                .values((
                    grant_changes::grant_id.eq(g.id),
                    grant_changes::field.eq(*field),
                    grant_changes::old_value.eq(old),
                    grant_changes::new_value.eq(new),
                    grant_changes::actor.eq(&ctx.actor),
                    grant_changes::reason.eq(&u.reason),
                    grant_changes::changed_at.eq(to_naive(ctx.recorded_at)),
                ))
                .execute(conn)?;
        }
        if !changes.is_empty() {
            diesel::update(grants::table.find(g.id))
                .set(grants::updated_at.eq(to_naive(ctx.recorded_at)))
                .execute(conn)?;
        }
        load_by_id(conn, g.id)
    })
}

/// The last day of a span ending (exclusive) at `end`, as written in the change log.
fn end_day(end: DateTime<Utc>) -> String {
    (end - chrono::Duration::seconds(1))
        .format("%Y-%m-%d")
        .to_string()
}

/// Moves a grant's end later (a no-cost extension: more time, no more money). The last budget
/// period is lengthened to the new end with its budget unchanged, so the money it gives (and
/// what is carried into it) stays spendable until then; splitting the added time into new
/// periods would instead make unspent money expire early under a `none` or capped carry-over
/// policy. Earlier periods are not touched. Refused when the end would move earlier (that is
/// `grant close`) or when the last period has already closed (its money was carried or expired
/// by journal entries that an extension cannot undo). Returns the last period as it was.
fn extend(
    conn: &mut DbConn,
    g: &GrantRecord,
    end: DateTime<Utc>,
) -> Result<PeriodRow, LedgerError> {
    if end < g.end {
        return Err(LedgerError::invalid(
            "--end",
            format!(
                "{} is before the grant's end ({}); --end only extends a grant (to end it early, use `asbb grant close {}`)",
                end_day(end),
                end_day(g.end),
                g.number
            ),
        ));
    }
    let last = period_rows(conn, g.id)?.pop().ok_or_else(|| {
        LedgerError::invalid("GRANT", format!("grant '{}' has no periods", g.number))
    })?;
    if last.status == "closed" || last.status == "cancelled" {
        return Err(LedgerError::invalid(
            "--end",
            format!(
                "the last budget period ({}) of grant '{}' is {}: its unspent money was already carried or taken back; extend a grant before its last period ends",
                last.number, g.number, last.status
            ),
        ));
    }
    diesel::update(grant_periods::table.find((g.id, last.number)))
        .set(grant_periods::ends_at.eq(to_naive(end)))
        .execute(conn)?;
    diesel::update(grants::table.find(g.id))
        .set(grants::ends_at.eq(to_naive(end)))
        .execute(conn)?;
    Ok(last)
}

/// A recorded change of a grant: field, old, new, actor, reason, when.
#[allow(clippy::type_complexity)]
pub fn changes(
    conn: &mut DbConn,
    grant_id: i64,
) -> Result<Vec<(String, String, String, String, String, DateTime<Utc>)>, LedgerError> {
    let rows: Vec<(
        String,
        String,
        String,
        String,
        String,
        chrono::NaiveDateTime,
    )> = grant_changes::table
        .filter(grant_changes::grant_id.eq(grant_id))
        .order(grant_changes::id)
        .select((
            grant_changes::field,
            grant_changes::old_value,
            grant_changes::new_value,
            grant_changes::actor,
            grant_changes::reason,
            grant_changes::changed_at,
        ))
        .load(conn)?;
    Ok(rows
        .into_iter()
        .map(|(a, b, c, d, e, f)| (a, b, c, d, e, from_naive(f)))
        .collect())
}

/// Closes a grant as of `ctx.effective_at`: transitions due until then are booked, the running
/// period ends now (unspent money is taken back, whatever the carry-over policy), periods not
/// started are cancelled, and every account is unlinked.
pub fn close(
    conn: &mut DbConn,
    ctx: &OpContext,
    number: &str,
    reason: &str,
) -> Result<(GrantRecord, ProcessReport), LedgerError> {
    check_text("--reason", reason)?;
    write_transaction(conn, |conn| {
        let g = load(conn, number)?;
        if g.status == "closed" {
            return Ok((g, ProcessReport::default()));
        }
        let mut report = ProcessReport::default();
        process_one(conn, ctx, &g, false, &mut report)?;
        let all_links = links(conn, g.id)?;
        let at = ctx.effective_at.min(g.end);
        for p in period_rows(conn, g.id)? {
            match p.status.as_str() {
                "active" => {
                    let open: Vec<PeriodAccountRow> = period_accounts(conn, g.id)?
                        .into_iter()
                        .filter(|r| r.period == p.number && r.closed_at.is_none())
                        .collect();
                    let (mut s, mut c, mut e) = (0i64, 0i64, 0i64);
                    for r in period_accounts(conn, g.id)?
                        .iter()
                        .filter(|r| r.period == p.number && r.closed_at.is_some())
                    {
                        s += r.spent_micros.unwrap_or(0);
                        c += r.carried_micros.unwrap_or(0);
                        e += r.expired_micros.unwrap_or(0);
                    }
                    let closing: Vec<Closing<'_>> = open
                        .iter()
                        .filter_map(|r| {
                            all_links
                                .iter()
                                .find(|l| l.account_id == r.account_id)
                                .map(|link| Closing { row: r, link })
                        })
                        .collect();
                    for (_, sp, ca, ex) in
                        close_account_periods(conn, ctx, &g, &p, &closing, at, true, &mut report)?
                    {
                        s += sp.micros();
                        c += ca.micros();
                        e += ex.micros();
                    }
                    diesel::update(grant_periods::table.find((g.id, p.number)))
                        .set((
                            grant_periods::status.eq("closed"),
                            grant_periods::spent_micros.eq(Some(s)),
                            grant_periods::carried_out_micros.eq(Some(c)),
                            grant_periods::expired_micros.eq(Some(e)),
                            grant_periods::closed_at.eq(Some(to_naive(at))),
                        ))
                        .execute(conn)?;
                    report.closed.push((g.number.clone(), p.number));
                }
                "pending" => {
                    diesel::update(grant_periods::table.find((g.id, p.number)))
                        .set(grant_periods::status.eq("cancelled"))
                        .execute(conn)?;
                }
                _ => {}
            }
        }
        diesel::update(
            grant_links::table
                .filter(grant_links::grant_id.eq(g.id))
                .filter(grant_links::unlinked_at.is_null()),
        )
        .set((
            grant_links::unlinked_at.eq(Some(to_naive(at))),
            grant_links::unlinked_by.eq(Some(&ctx.actor)),
        ))
        .execute(conn)?;
        diesel::update(grants::table.find(g.id))
            .set((
                grants::status.eq("closed"),
                grants::closed_at.eq(Some(to_naive(at))),
                grants::close_reason.eq(reason),
                grants::updated_at.eq(to_naive(ctx.recorded_at)),
            ))
            .execute(conn)?;
        Ok((load_by_id(conn, g.id)?, report))
    })
}

/// Live figures of one period: net charges of the linked accounts within the period (and
/// their links) up to `as_of`, and what they hold now.
pub fn period_spent(
    conn: &mut DbConn,
    g: &GrantRecord,
    p: &PeriodRow,
    as_of: DateTime<Utc>,
) -> Result<UsdMicros, LedgerError> {
    if let (Some(s), "closed") = (p.spent_micros, p.status.as_str()) {
        return Ok(UsdMicros::from_stored(s));
    }
    let mut total = UsdMicros::ZERO;
    for l in links(conn, g.id)? {
        let a = p.start().max(l.linked_at);
        let b = p.end().min(as_of).min(l.unlinked_at.unwrap_or(p.end()));
        total = total.checked_add(spent_between(conn, l.account_id, a, b)?)?;
    }
    Ok(total)
}
