//! `asbb account …` and `asbb usage …`.

use std::io::Write;

use clap::{Args, Subcommand};
use comfy_table::Cell;
use serde_json::json;

use super::output::{
    self, account_json, m, money_cell, print_json, print_table, table, ts, ts_short,
};
use super::{amount_arg, CliError, Ctx};
use crate::db::ledger::{self, AccountUpdate, NewAccount};
use crate::db::queries;
use crate::domain::ledger::AccountStatus;
use crate::domain::time::DateInput;
use crate::domain::{AccountName, PartitionName, UsdMicros};
use crate::exit;

/// `asbb account`.
#[derive(Debug, Subcommand)]
pub enum AccountCmd {
    /// Create a budget account for a SLURM account.
    Create(CreateArgs),
    /// List budget accounts with their balances.
    List(ListArgs),
    /// Show one account: settings, balances, partitions, recent changes.
    Show(ShowArgs),
    /// Change an account's settings (not its money: use deposit or adjust for that).
    Update(UpdateArgs),
    /// Close an account for good (its history stays; nothing is ever deleted).
    Close(CloseArgs),
    /// Delete an account that never had any money (a mistaken creation).
    Delete(ShowArgs),
    /// Set or remove an account's spending limit for one partition.
    Limit(LimitArgs),
}

/// `asbb account create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// SLURM account name (lower case letters, digits, '_', '-', '.').
    #[arg(long, value_name = "ACCOUNT")]
    pub account: String,
    /// Display name.
    #[arg(long)]
    pub name: String,
    /// Free-text description.
    #[arg(long, default_value = "")]
    pub description: String,
    /// Initial budget in USD (credited as the first journal entry); not with --incremental.
    #[arg(
        long,
        value_name = "AMOUNT",
        allow_hyphen_values = true,
        required_unless_present = "incremental",
        conflicts_with = "incremental"
    )]
    pub budget: Option<String>,
    /// Feed the account by an allocation schedule instead of an initial budget (needs
    /// --total-budget, --allocation-amount, --allocation-frequency); what is due by --as-of is
    /// credited right away.
    #[arg(long)]
    pub incremental: bool,
    /// The schedule (with --incremental).
    #[command(flatten)]
    pub terms: super::allocations::TermsArgs,
    /// First day the account may hold money (YYYY-MM-DD or RFC 3339).
    #[arg(long, value_name = "DATE")]
    pub start: String,
    /// Last day (inclusive) the account may hold money (YYYY-MM-DD or RFC 3339).
    #[arg(long, value_name = "DATE")]
    pub end: String,
    /// How far below zero available money may go, in USD.
    #[arg(
        long,
        value_name = "AMOUNT",
        default_value = "0",
        allow_hyphen_values = true
    )]
    pub overdraft: String,
}

/// `asbb account list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only accounts in this status (active, suspended, closed).
    #[arg(long)]
    pub status: Option<String>,
}

/// An account argument.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// SLURM account name.
    pub account: String,
}

/// `asbb account update`.
#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// SLURM account name.
    pub account: String,
    /// New display name.
    #[arg(long)]
    pub name: Option<String>,
    /// New description.
    #[arg(long)]
    pub description: Option<String>,
    /// New start date.
    #[arg(long, value_name = "DATE")]
    pub start: Option<String>,
    /// New last day (inclusive).
    #[arg(long, value_name = "DATE")]
    pub end: Option<String>,
    /// New overdraft limit in USD.
    #[arg(long, value_name = "AMOUNT", allow_hyphen_values = true)]
    pub overdraft: Option<String>,
    /// active or suspended (a suspended account refuses new holds; charges still book).
    #[arg(long)]
    pub status: Option<String>,
    /// Why, recorded with the change.
    #[arg(long, default_value = "")]
    pub reason: String,
}

/// `asbb account close`.
#[derive(Debug, Args)]
pub struct CloseArgs {
    /// SLURM account name.
    pub account: String,
    /// Why, recorded with the change.
    #[arg(long, default_value = "")]
    pub reason: String,
}

/// `asbb account limit`.
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// SLURM account name.
    pub account: String,
    /// Partition name.
    #[arg(long)]
    pub partition: String,
    /// Most that charged + held may reach in this partition, in USD.
    #[arg(
        long,
        value_name = "AMOUNT",
        required_unless_present = "remove",
        allow_hyphen_values = true
    )]
    pub amount: Option<String>,
    /// Remove the limit instead.
    #[arg(long, conflicts_with = "amount")]
    pub remove: bool,
}

/// `asbb usage`.
#[derive(Debug, Subcommand)]
pub enum UsageCmd {
    /// Current balances and activity of one account.
    Show(ShowArgs),
    /// Balances of every account, with totals.
    Summary,
}

fn account_name(text: &str) -> Result<AccountName, CliError> {
    AccountName::new(text).map_err(|e| CliError::usage("--account", e))
}

fn date_start(flag: &str, text: &str) -> Result<chrono::DateTime<chrono::Utc>, CliError> {
    Ok(DateInput::parse(text)
        .map_err(|e| CliError::usage(flag, e))?
        .start())
}

fn date_end(flag: &str, text: &str) -> Result<chrono::DateTime<chrono::Utc>, CliError> {
    Ok(DateInput::parse(text)
        .map_err(|e| CliError::usage(flag, e))?
        .end_exclusive())
}

fn status_arg(text: &str) -> Result<AccountStatus, CliError> {
    text.parse()
        .map_err(|e: String| CliError::usage("--status", e))
}

pub(crate) fn run(ctx: &Ctx<'_>, cmd: &AccountCmd, out: &mut dyn Write) -> Result<i32, CliError> {
    match cmd {
        AccountCmd::Create(a) => {
            let has_terms = a.terms.total_budget.is_some()
                || a.terms.allocation_amount.is_some()
                || a.terms.allocation_frequency.is_some();
            if has_terms && !a.incremental {
                return Err(CliError::usage(
                    "--incremental",
                    "--total-budget, --allocation-amount and --allocation-frequency describe an allocation schedule; add --incremental",
                ));
            }
            let new = NewAccount {
                name: account_name(&a.account)?,
                display_name: a.name.clone(),
                description: a.description.clone(),
                starts_at: date_start("--start", &a.start)?,
                ends_at: date_end("--end", &a.end)?,
                overdraft: amount_arg("--overdraft", &a.overdraft)?,
                budget: match &a.budget {
                    Some(b) => amount_arg("--budget", b)?,
                    None => UsdMicros::ZERO,
                },
            };
            let mut conn = ctx.conn()?;
            if a.incremental {
                let t = super::allocations::terms(&a.terms, new.starts_at, new.ends_at)?;
                let (acct, sched, report) = crate::db::allocations::create_incremental_account(
                    &mut conn,
                    &ctx.op()?,
                    &new,
                    &t,
                )?;
                if ctx.cli.json {
                    let mut v = account_json(&acct, None);
                    v["allocation_schedule"] = super::allocations::schedule_json(&sched);
                    print_json(out, &v)?;
                } else {
                    writeln!(
                        out,
                        "created budget account '{}' ({}), active {} to {}, fed by allocation schedule {}: ${} {} up to ${}",
                        acct.name,
                        acct.display_name,
                        acct.starts_at.format("%Y-%m-%d"),
                        last_day(acct.ends_at),
                        sched.id,
                        sched.terms.amount,
                        sched.terms.frequency,
                        sched.terms.total
                    )?;
                    writeln!(
                        out,
                        "credited {} allocation(s) due so far (${}); ${} available; next allocation {}",
                        report.periods.iter().filter(|p| p.outcome == "credited").count(),
                        report.credited(),
                        acct.available(),
                        sched
                            .next_due
                            .filter(|_| sched.status != "finished")
                            .map(|d| d.format("%Y-%m-%d").to_string())
                            .unwrap_or_else(|| "none (schedule finished)".into())
                    )?;
                }
                return Ok(exit::OK);
            }
            let acct = ledger::create_account(&mut conn, &ctx.op()?, &new)?;
            if ctx.cli.json {
                print_json(out, &account_json(&acct, None))?;
            } else {
                writeln!(
                    out,
                    "created budget account '{}' ({}) with ${} available, active {} to {}",
                    acct.name,
                    acct.display_name,
                    acct.available(),
                    acct.starts_at.format("%Y-%m-%d"),
                    last_day(acct.ends_at)
                )?;
            }
        }
        AccountCmd::List(a) => {
            let status = a.status.as_deref().map(status_arg).transpose()?;
            let mut conn = ctx.conn()?;
            let accounts = queries::accounts(&mut conn, status)?;
            if ctx.cli.json {
                print_json(
                    out,
                    &json!(accounts
                        .iter()
                        .map(|a| account_json(a, None))
                        .collect::<Vec<_>>()),
                )?;
            } else if accounts.is_empty() {
                writeln!(
                    out,
                    "no budget accounts yet; create one with `asbb account create`"
                )?;
            } else {
                print_table(out, &balances_table(&accounts))?;
            }
        }
        AccountCmd::Show(a) => {
            let mut conn = ctx.conn()?;
            let acct = queries::account(&mut conn, &a.account)?;
            let parts = queries::partitions(&mut conn, &a.account)?;
            let schedules = crate::db::allocations::list(&mut conn, Some(&a.account))?;
            if ctx.cli.json {
                let mut v = account_json(&acct, Some(&parts));
                v["allocation_schedules"] = schedules
                    .iter()
                    .map(super::allocations::schedule_json)
                    .collect();
                let act = queries::activity(&mut conn, &a.account)?;
                v["open_holds"] = json!(act.open_holds);
                v["changes"] = queries::account_changes(&mut conn, &a.account)?
                    .iter()
                    .map(|c| {
                        json!({
                            "field": c.field,
                            "old_value": c.old_value,
                            "new_value": c.new_value,
                            "actor": c.actor,
                            "reason": c.reason,
                            "changed_at": ts(crate::domain::time::from_naive(c.changed_at)),
                        })
                    })
                    .collect();
                print_json(out, &v)?;
            } else {
                show_account(&mut conn, out, &acct, &parts)?;
                if !schedules.is_empty() {
                    writeln!(out, "\nallocation schedules:")?;
                    print_table(out, &super::allocations::schedules_table(&schedules))?;
                }
                let ctx_burn = crate::db::burn::context(&mut conn, &a.account)?;
                if let Some(g) = &ctx_burn.grant {
                    writeln!(
                        out,
                        "\ngrant: {} ({}% of every budget period, linked {})",
                        g.grant.number,
                        g.link.share.normalize(),
                        g.link.linked_at.format("%Y-%m-%d")
                    )?;
                }
            }
        }
        AccountCmd::Update(a) => {
            let upd = AccountUpdate {
                display_name: a.name.clone(),
                description: a.description.clone(),
                starts_at: a
                    .start
                    .as_deref()
                    .map(|s| date_start("--start", s))
                    .transpose()?,
                ends_at: a.end.as_deref().map(|s| date_end("--end", s)).transpose()?,
                overdraft: a
                    .overdraft
                    .as_deref()
                    .map(|s| amount_arg("--overdraft", s))
                    .transpose()?,
                status: a.status.as_deref().map(status_arg).transpose()?,
                reason: a.reason.clone(),
            };
            let mut conn = ctx.conn()?;
            let acct = ledger::update_account(&mut conn, &ctx.op()?, &a.account, &upd)?;
            if ctx.cli.json {
                print_json(out, &account_json(&acct, None))?;
            } else {
                writeln!(
                    out,
                    "updated budget account '{}' (status {}, ${} available)",
                    acct.name,
                    acct.status,
                    acct.available()
                )?;
            }
        }
        AccountCmd::Close(a) => {
            let mut conn = ctx.conn()?;
            let acct = ledger::close_account(&mut conn, &ctx.op()?, &a.account, &a.reason)?;
            if ctx.cli.json {
                print_json(out, &account_json(&acct, None))?;
            } else {
                writeln!(
                    out,
                    "closed budget account '{}'; its journal and balances are kept",
                    acct.name
                )?;
            }
        }
        AccountCmd::Delete(a) => {
            let mut conn = ctx.conn()?;
            ledger::delete_account(&mut conn, &a.account)?;
            if ctx.cli.json {
                print_json(out, &json!({"account": a.account, "deleted": true}))?;
            } else {
                writeln!(
                    out,
                    "deleted budget account '{}' (it never had a journal entry)",
                    a.account
                )?;
            }
        }
        AccountCmd::Limit(a) => {
            let partition =
                PartitionName::new(&a.partition).map_err(|e| CliError::usage("--partition", e))?;
            let limit = match (&a.amount, a.remove) {
                (_, true) => None,
                (Some(x), false) => Some(amount_arg("--amount", x)?),
                (None, false) => {
                    return Err(CliError::usage("--amount", "give a limit, or --remove"))
                }
            };
            let mut conn = ctx.conn()?;
            ledger::set_partition_limit(&mut conn, &ctx.op()?, &a.account, &partition, limit)?;
            if ctx.cli.json {
                print_json(
                    out,
                    &json!({"account": a.account, "partition": a.partition, "limit": limit.map(m)}),
                )?;
            } else {
                match limit {
                    Some(l) => writeln!(
                        out,
                        "budget account '{}' may now spend ${l} in partition '{}'",
                        a.account, a.partition
                    )?,
                    None => writeln!(
                        out,
                        "removed the limit of budget account '{}' in partition '{}'",
                        a.account, a.partition
                    )?,
                }
            }
        }
    }
    Ok(exit::OK)
}

/// The last day covered by an exclusive end at midnight, or the instant itself.
fn last_day(end: chrono::DateTime<chrono::Utc>) -> String {
    if end.time() == chrono::NaiveTime::MIN {
        (end - chrono::Duration::days(1))
            .format("%Y-%m-%d")
            .to_string()
    } else {
        ts(end)
    }
}

fn balances_table(accounts: &[crate::db::models::Account]) -> comfy_table::Table {
    let mut t = table(&[
        "ACCOUNT",
        "NAME",
        "STATUS",
        "LIMIT",
        "USED",
        "HELD",
        "AVAILABLE",
        "ENDS",
    ]);
    for a in accounts {
        t.add_row(vec![
            Cell::new(&a.name),
            Cell::new(&a.display_name),
            Cell::new(a.status.as_str()),
            money_cell(a.balances.credited),
            money_cell(a.balances.charged),
            money_cell(a.balances.held),
            money_cell(a.available()),
            Cell::new(last_day(a.ends_at)),
        ]);
    }
    t
}

fn show_account(
    conn: &mut crate::db::DbConn,
    out: &mut dyn Write,
    acct: &crate::db::models::Account,
    parts: &[crate::db::models::PartitionUsage],
) -> Result<(), CliError> {
    let act = queries::activity(conn, &acct.name)?;
    output::kv(
        out,
        &[
            ("account", acct.name.clone()),
            ("name", acct.display_name.clone()),
            ("description", acct.description.clone()),
            ("status", acct.status.to_string()),
            (
                "active",
                format!(
                    "{} to {} (inclusive)",
                    acct.starts_at.format("%Y-%m-%d"),
                    last_day(acct.ends_at)
                ),
            ),
            ("budget limit", format!("${}", acct.balances.credited)),
            ("used", format!("${}", acct.balances.charged)),
            (
                "held",
                format!("${} in {} open hold(s)", acct.balances.held, act.open_holds),
            ),
            ("overdraft", format!("${}", acct.overdraft)),
            ("available", format!("${}", acct.available())),
            ("entries", acct.entry_count.to_string()),
        ],
    )?;
    if !parts.is_empty() {
        writeln!(out)?;
        let mut t = table(&["PARTITION", "LIMIT", "USED", "HELD", "LEFT"]);
        for p in parts {
            let left = p
                .limit
                .map(|l| {
                    l.checked_sub(p.charged)
                        .and_then(|x| x.checked_sub(p.held))
                        .map(|x| x.to_string())
                        .unwrap_or_default()
                })
                .unwrap_or_else(|| "no limit".into());
            t.add_row(vec![
                Cell::new(&p.partition),
                Cell::new(p.limit.map(|l| l.to_string()).unwrap_or_else(|| "-".into())),
                money_cell(p.charged),
                money_cell(p.held),
                Cell::new(left),
            ]);
        }
        print_table(out, &t)?;
    }
    let all = queries::account_changes(conn, &acct.name)?;
    // The first changes record the settings the account was created with; show what came after.
    let changes: Vec<_> = all
        .iter()
        .filter(|c| !c.old_value.is_empty() || c.field.starts_with("partition_limit:"))
        .collect();
    if !changes.is_empty() {
        writeln!(out, "\nsetting changes (newest first):")?;
        for c in changes.iter().rev().take(10) {
            writeln!(
                out,
                "  {} {} {}: {} -> {} {}",
                c.changed_at.format("%Y-%m-%d %H:%M"),
                c.actor,
                c.field,
                c.old_value,
                c.new_value,
                c.reason
            )?;
        }
    }
    Ok(())
}

pub(crate) fn usage(ctx: &Ctx<'_>, cmd: &UsageCmd, out: &mut dyn Write) -> Result<i32, CliError> {
    let mut conn = ctx.conn()?;
    match cmd {
        UsageCmd::Show(a) => {
            let acct = queries::account(&mut conn, &a.account)?;
            let parts = queries::partitions(&mut conn, &a.account)?;
            let act = queries::activity(&mut conn, &a.account)?;
            let used_pct = percent(acct.balances.charged, acct.balances.credited);
            if ctx.cli.json {
                let mut v = account_json(&acct, Some(&parts));
                v["utilization_percent"] = json!(used_pct);
                v["open_holds"] = json!(act.open_holds);
                v["charges"] = json!(act.charges);
                v["overruns"] = json!(act.overruns);
                v["unmatched_charges"] = json!(act.unmatched);
                print_json(out, &v)?;
            } else {
                output::kv(
                    out,
                    &[
                        ("account", acct.name.clone()),
                        ("budget limit", format!("${}", acct.balances.credited)),
                        ("used", format!("${} ({})", acct.balances.charged, used_pct)),
                        (
                            "held",
                            format!("${} in {} open hold(s)", acct.balances.held, act.open_holds),
                        ),
                        ("available", format!("${}", acct.available())),
                        (
                            "charges",
                            format!(
                                "{} ({} over their hold, {} without a hold)",
                                act.charges, act.overruns, act.unmatched
                            ),
                        ),
                    ],
                )?;
                if !parts.is_empty() {
                    writeln!(out)?;
                    let mut t = table(&["PARTITION", "LIMIT", "USED", "HELD"]);
                    for p in &parts {
                        t.add_row(vec![
                            Cell::new(&p.partition),
                            Cell::new(p.limit.map(|l| l.to_string()).unwrap_or_else(|| "-".into())),
                            money_cell(p.charged),
                            money_cell(p.held),
                        ]);
                    }
                    print_table(out, &t)?;
                }
            }
        }
        UsageCmd::Summary => {
            let accounts = queries::accounts(&mut conn, None)?;
            let mut total = crate::domain::Balances::default();
            let mut available = UsdMicros::ZERO;
            for a in &accounts {
                total = total
                    .apply(crate::domain::Effect {
                        credited: a.balances.credited,
                        charged: a.balances.charged,
                        held: a.balances.held,
                    })
                    .map_err(|e| CliError {
                        code: exit::ERROR,
                        message: e.to_string(),
                    })?;
                available = available.checked_add(a.available()).map_err(|e| CliError {
                    code: exit::ERROR,
                    message: e.to_string(),
                })?;
            }
            if ctx.cli.json {
                print_json(
                    out,
                    &json!({
                        "accounts": accounts.iter().map(|a| account_json(a, None)).collect::<Vec<_>>(),
                        "totals": {
                            "accounts": accounts.len(),
                            "budget_limit": m(total.credited),
                            "budget_used": m(total.charged),
                            "budget_held": m(total.held),
                            "budget_available": m(available),
                        },
                        "as_of": ts(ctx.now),
                    }),
                )?;
            } else {
                let mut t = balances_table(&accounts);
                t.add_row(vec![
                    Cell::new("TOTAL"),
                    Cell::new(format!("{} account(s)", accounts.len())),
                    Cell::new(""),
                    money_cell(total.credited),
                    money_cell(total.charged),
                    money_cell(total.held),
                    money_cell(available),
                    Cell::new(""),
                ]);
                print_table(out, &t)?;
                writeln!(out, "as of {}", ts_short(ctx.now))?;
            }
        }
    }
    Ok(exit::OK)
}

/// `part / whole` as a percentage with one decimal, computed in integers.
fn percent(part: UsdMicros, whole: UsdMicros) -> String {
    if whole.micros() <= 0 {
        return "n/a".into();
    }
    let tenths = (i128::from(part.micros()) * 1000 + i128::from(whole.micros()) / 2)
        / i128::from(whole.micros());
    format!("{}.{}%", tenths / 10, (tenths % 10).abs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_are_integer_math() {
        let u = |n| UsdMicros::from_usd(n).unwrap();
        assert_eq!(percent(u(1), u(3)), "33.3%");
        assert_eq!(percent(u(2), u(3)), "66.7%");
        assert_eq!(percent(u(5), u(0)), "n/a");
    }
}
