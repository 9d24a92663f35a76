//! `asbb grant …`: multi-year grants, their budget periods and linked accounts.

use std::io::{IsTerminal, Write};

use clap::{Args, Subcommand};
use comfy_table::Cell;
use serde_json::{json, Value};

use super::output::{m, money_cell, print_json, print_table, table, ts};
use super::{positive_arg, CliError, Ctx};
use crate::db::grants::{self, GrantRecord, GrantUpdate, NewGrant, PeriodRow};
use crate::db::DbConn;
use crate::domain::grant::{parse_indirect_rate, parse_share, split, CarryOver};
use crate::domain::time::DateInput;
use crate::domain::UsdMicros;
use crate::exit;

/// `asbb grant`.
#[derive(Debug, Subcommand)]
pub enum GrantCmd {
    /// Create a grant; its budget periods are generated (the last may be short).
    Create(CreateArgs),
    /// List grants (on a terminal a table; piped, one grant number per line).
    List(ListArgs),
    /// Show a grant: terms, periods, linked accounts, spending and burn rate.
    Show(NumberArgs),
    /// List a grant's budget periods with budgets, spending, carry-over and expiry.
    Periods(NumberArgs),
    /// Change a grant's details, indirect rate, carry-over policy, a future period's budget, or
    /// extend its end (a no-cost extension).
    Update(UpdateArgs),
    /// Close a grant now: the running period ends, later periods are cancelled.
    Close(CloseArgs),
    /// Link an account: its spending counts against the grant's current period, and it is
    /// credited its share of every period's budget.
    Link(LinkArgs),
    /// Unlink an account: its unspent money of the current period is taken back.
    Unlink(UnlinkArgs),
    /// Write the grant's compliance report into a directory: its statement per budget period
    /// (CSV, and HTML with the burn-down chart); the same as `asbb report grant-statement`.
    Report(GrantReportArgs),
}

/// `grant report`.
#[derive(Debug, Args)]
pub struct GrantReportArgs {
    /// Grant number.
    pub number: String,
    /// Only this budget period.
    #[arg(long, value_name = "N")]
    pub period: Option<i64>,
    /// Formats, comma-separated: csv, html, json.
    #[arg(long, value_name = "LIST", default_value = "csv,html")]
    pub format: String,
    /// Directory to write into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: std::path::PathBuf,
    /// Site templates replacing the shipped ones [default: reports.templates_dir].
    #[arg(long, value_name = "DIR")]
    pub templates: Option<std::path::PathBuf>,
}

/// `grant create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Grant number, e.g. NSF-2025-12345.
    #[arg(long)]
    pub number: String,
    /// Funding agency.
    #[arg(long)]
    pub agency: String,
    /// Program.
    #[arg(long, default_value = "")]
    pub program: String,
    /// Principal investigator.
    #[arg(long)]
    pub pi: String,
    /// Co-PIs, comma-separated.
    #[arg(long, default_value = "")]
    pub co_pi: String,
    /// Institution.
    #[arg(long, default_value = "")]
    pub institution: String,
    /// Department.
    #[arg(long, default_value = "")]
    pub department: String,
    /// Award in USD (direct + indirect).
    #[arg(long, value_name = "AMOUNT")]
    pub amount: String,
    /// First day (YYYY-MM-DD).
    #[arg(long, value_name = "DATE")]
    pub start: String,
    /// Last day (inclusive).
    #[arg(long, value_name = "DATE")]
    pub end: String,
    /// Months per budget period.
    #[arg(long, value_name = "MONTHS", default_value_t = 12)]
    pub periods: u32,
    /// Indirect (F&A) cost rate: 0.30 or 30%.
    #[arg(long, value_name = "RATE", default_value = "0")]
    pub indirect: String,
    /// Federal award id (assistance listing), e.g. 47.070.
    #[arg(long, value_name = "ID", default_value = "")]
    pub federal_id: String,
    /// Institution's project code.
    #[arg(long, default_value = "")]
    pub project_code: String,
    /// Cost center.
    #[arg(long, default_value = "")]
    pub cost_center: String,
    /// What happens to unspent period money: none (expires), all (carried into the next
    /// period), or a capped percentage of the period's credit (25%).
    #[arg(long, value_name = "POLICY", default_value = "all")]
    pub carry_over: String,
    /// Budget of each period, comma-separated, adding up to --amount [default: even split per
    /// month].
    #[arg(long, value_name = "LIST")]
    pub period_budgets: Option<String>,
}

/// `grant list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only grants running as of --as-of.
    #[arg(long)]
    pub active: bool,
}

/// A grant number.
#[derive(Debug, Args)]
pub struct NumberArgs {
    /// Grant number.
    pub number: String,
}

/// `grant update`.
#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// Grant number.
    pub number: String,
    /// Agency.
    #[arg(long)]
    pub agency: Option<String>,
    /// Program.
    #[arg(long)]
    pub program: Option<String>,
    /// PI.
    #[arg(long)]
    pub pi: Option<String>,
    /// Co-PIs, comma-separated.
    #[arg(long)]
    pub co_pi: Option<String>,
    /// Institution.
    #[arg(long)]
    pub institution: Option<String>,
    /// Department.
    #[arg(long)]
    pub department: Option<String>,
    /// Federal award id.
    #[arg(long)]
    pub federal_id: Option<String>,
    /// Project code.
    #[arg(long)]
    pub project_code: Option<String>,
    /// Cost center.
    #[arg(long)]
    pub cost_center: Option<String>,
    /// Indirect rate.
    #[arg(long)]
    pub indirect: Option<String>,
    /// Carry-over policy (for periods ending from now on).
    #[arg(long)]
    pub carry_over: Option<String>,
    /// With --budget: the period (not started yet) whose budget changes.
    #[arg(long, requires = "budget")]
    pub period: Option<i64>,
    /// The period's new budget; the award becomes the sum of the budgets.
    #[arg(long, requires = "period", value_name = "AMOUNT")]
    pub budget: Option<String>,
    /// A later last day (a no-cost extension): the last budget period is lengthened to it,
    /// with the same budget.
    #[arg(long, value_name = "DATE")]
    pub end: Option<String>,
    /// Why, recorded with the change.
    #[arg(long, default_value = "")]
    pub reason: String,
}

/// `grant close`.
#[derive(Debug, Args)]
pub struct CloseArgs {
    /// Grant number.
    pub number: String,
    /// Why.
    #[arg(long, default_value = "")]
    pub reason: String,
}

/// `grant link`.
#[derive(Debug, Args)]
pub struct LinkArgs {
    /// Grant number.
    pub number: String,
    /// SLURM account name.
    pub account: String,
    /// The account's share of every period's budget, percent.
    #[arg(long, default_value = "100")]
    pub share: String,
}

/// `grant unlink`.
#[derive(Debug, Args)]
pub struct UnlinkArgs {
    /// Grant number.
    pub number: String,
    /// SLURM account name.
    pub account: String,
}

fn list_arg(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect()
}

fn last_day(end: chrono::DateTime<chrono::Utc>) -> String {
    (end - chrono::Duration::seconds(1))
        .format("%Y-%m-%d")
        .to_string()
}

fn split_json(total: UsdMicros, g: &GrantRecord) -> Value {
    let s = split(total, g.indirect_rate);
    json!({"total": m(total), "direct": m(s.direct), "indirect": m(s.indirect)})
}

pub(crate) fn grant_json(g: &GrantRecord) -> Value {
    json!({
        "number": g.number,
        "agency": g.agency,
        "program": g.program,
        "pi": g.pi,
        "co_pis": g.co_pis,
        "institution": g.institution,
        "department": g.department,
        "amount": split_json(g.amount, g),
        "start": ts(g.start),
        "end": ts(g.end),
        "period_months": g.period_months,
        "indirect_rate": g.indirect_rate.normalize().to_string(),
        "federal_award_id": g.federal_award_id,
        "project_code": g.project_code,
        "cost_center": g.cost_center,
        "carry_over": g.carry_over.to_string(),
        "status": g.status,
        "created_by": g.created_by,
        "created_at": ts(g.created_at),
        "closed_at": g.closed_at.map(ts),
        "close_reason": g.close_reason,
    })
}

struct PeriodFigures {
    row: PeriodRow,
    spent: UsdMicros,
    held: UsdMicros,
}

fn period_figures(
    conn: &mut DbConn,
    g: &GrantRecord,
    as_of: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<PeriodFigures>, CliError> {
    let links = grants::links(conn, g.id)?;
    let mut held = UsdMicros::ZERO;
    for l in links.iter().filter(|l| l.unlinked_at.is_none()) {
        let b = grants::balances_before(conn, l.account_id, as_of)?;
        held = held.checked_add(b.held).unwrap_or(held);
    }
    let mut out = Vec::new();
    for p in grants::period_rows(conn, g.id)? {
        let spent = if p.start() <= as_of {
            grants::period_spent(conn, g, &p, as_of)?
        } else {
            UsdMicros::ZERO
        };
        let current = p.start() <= as_of && as_of < p.end();
        out.push(PeriodFigures {
            spent,
            held: if current { held } else { UsdMicros::ZERO },
            row: p,
        });
    }
    Ok(out)
}

fn period_json(g: &GrantRecord, f: &PeriodFigures) -> Value {
    let p = &f.row;
    let available = p.available();
    let remaining = UsdMicros::from_stored(available.micros() - f.spent.micros());
    json!({
        "period": p.number,
        "start": ts(p.start()),
        "end": ts(p.end()),
        "status": p.status,
        "budget": split_json(UsdMicros::from_stored(p.budget_micros), g),
        "carry_in": m(UsdMicros::from_stored(p.carry_in_micros)),
        "available": split_json(available, g),
        "credited_to_accounts": m(UsdMicros::from_stored(p.credited_micros)),
        "spent": split_json(f.spent, g),
        "held": m(f.held),
        "remaining": split_json(remaining, g),
        "utilization_percent": crate::domain::burn::percent(
            rust_decimal::Decimal::from(f.spent.micros() + f.held.micros()),
            rust_decimal::Decimal::from(available.micros()),
        ).map(|d| d.to_string()),
        "carried_out": p.carried_out_micros.map(|x| m(UsdMicros::from_stored(x))),
        "expired": p.expired_micros.map(|x| m(UsdMicros::from_stored(x))),
        "activated_at": p.activated_at.map(|t| ts(crate::domain::time::from_naive(t))),
        "closed_at": p.closed_at.map(|t| ts(crate::domain::time::from_naive(t))),
    })
}

fn periods_table(g: &GrantRecord, figs: &[PeriodFigures]) -> comfy_table::Table {
    let mut t = table(&[
        "PERIOD",
        "START",
        "END",
        "STATUS",
        "BUDGET",
        "DIRECT",
        "INDIRECT",
        "CARRY IN",
        "SPENT",
        "SPENT DIRECT",
        "REMAINING",
        "CARRIED OUT",
        "EXPIRED",
    ]);
    for f in figs {
        let p = &f.row;
        let budget = UsdMicros::from_stored(p.budget_micros);
        let s = split(budget, g.indirect_rate);
        let remaining = UsdMicros::from_stored(p.available().micros() - f.spent.micros());
        let opt = |x: Option<i64>| {
            x.map(|v| UsdMicros::from_stored(v).to_string())
                .unwrap_or_else(|| "-".into())
        };
        t.add_row(vec![
            Cell::new(p.number),
            Cell::new(p.start().format("%Y-%m-%d").to_string()),
            Cell::new(last_day(p.end())),
            Cell::new(&p.status),
            money_cell(budget),
            money_cell(s.direct),
            money_cell(s.indirect),
            money_cell(UsdMicros::from_stored(p.carry_in_micros)),
            money_cell(f.spent),
            money_cell(split(f.spent, g.indirect_rate).direct),
            money_cell(remaining),
            Cell::new(opt(p.carried_out_micros)),
            Cell::new(opt(p.expired_micros)),
        ]);
    }
    t
}

fn transitions_line(out: &mut dyn Write, r: &grants::ProcessReport) -> Result<(), CliError> {
    for x in &r.transitions {
        writeln!(
            out,
            "  period {} {}: {} ${} effective {}{}",
            x.period,
            x.account,
            x.action,
            x.amount,
            x.effective_at.format("%Y-%m-%d"),
            if x.note.is_empty() {
                String::new()
            } else {
                format!(" ({})", x.note)
            }
        )?;
    }
    Ok(())
}

pub(crate) fn run(ctx: &Ctx<'_>, cmd: &GrantCmd, out: &mut dyn Write) -> Result<i32, CliError> {
    if let GrantCmd::Report(a) = cmd {
        let args = super::report::ReportArgs {
            kind: Some(crate::report::Kind::GrantStatement),
            grant: Some(a.number.clone()),
            account: None,
            period: a.period,
            from: None,
            to: None,
            format: Some(a.format.clone()),
            out: Some(a.out.clone()),
            templates: a.templates.clone(),
            scheduled: false,
        };
        return super::report::run(ctx, &args, out);
    }
    let mut conn = ctx.conn()?;
    match cmd {
        GrantCmd::Create(a) => {
            let day =
                |flag: &str, s: &str| DateInput::parse(s).map_err(|e| CliError::usage(flag, e));
            let period_budgets = a
                .period_budgets
                .as_deref()
                .map(|l| {
                    l.split(',')
                        .map(|x| super::non_negative_arg("--period-budgets", x))
                        .collect::<Result<Vec<_>, _>>()
                })
                .transpose()?;
            let g = NewGrant {
                number: a.number.trim().to_string(),
                agency: a.agency.clone(),
                program: a.program.clone(),
                pi: a.pi.clone(),
                co_pis: list_arg(&a.co_pi),
                institution: a.institution.clone(),
                department: a.department.clone(),
                amount: positive_arg("--amount", &a.amount)?,
                start: day("--start", &a.start)?.start(),
                end: day("--end", &a.end)?.end_exclusive(),
                period_months: a.periods,
                indirect_rate: parse_indirect_rate(&a.indirect).map_err(|e| {
                    CliError::usage(
                        "--indirect",
                        e.to_string().trim_start_matches("--indirect: "),
                    )
                })?,
                federal_award_id: a.federal_id.clone(),
                project_code: a.project_code.clone(),
                cost_center: a.cost_center.clone(),
                carry_over: a
                    .carry_over
                    .parse::<CarryOver>()
                    .map_err(|e| CliError::usage("--carry-over", e))?,
                period_budgets,
            };
            let op = ctx.op()?;
            let rec = grants::create(&mut conn, &op, &g)?;
            let periods = grants::period_rows(&mut conn, rec.id)?;
            if ctx.cli.json {
                let mut v = grant_json(&rec);
                let figs = period_figures(&mut conn, &rec, op.effective_at)?;
                v["periods"] = figs.iter().map(|f| period_json(&rec, f)).collect();
                print_json(out, &v)?;
            } else {
                let s = split(rec.amount, rec.indirect_rate);
                writeln!(
                    out,
                    "created grant {} ({}): ${} from {} to {} (direct ${}, indirect ${} at {}), {} budget period(s) of {} months",
                    rec.number,
                    rec.agency,
                    rec.amount,
                    rec.start.format("%Y-%m-%d"),
                    last_day(rec.end),
                    s.direct,
                    s.indirect,
                    rec.indirect_rate.normalize(),
                    periods.len(),
                    rec.period_months
                )?;
                writeln!(
                    out,
                    "link accounts to it with `asbb grant link {} ACCOUNT [--share PCT]`",
                    rec.number
                )?;
            }
        }
        GrantCmd::List(a) => {
            let as_of = ctx.as_of()?;
            let list = grants::list(&mut conn, a.active.then_some(as_of))?;
            if ctx.cli.json {
                print_json(out, &json!(list.iter().map(grant_json).collect::<Vec<_>>()))?;
            } else if !std::io::stdout().is_terminal() {
                // Piped (`asbb grant list --active | xargs -I {} asbb burn-rate {}`): numbers only.
                for g in &list {
                    writeln!(out, "{}", g.number)?;
                }
            } else if list.is_empty() {
                writeln!(out, "no grants{}", if a.active { " running" } else { "" })?;
            } else {
                let mut t = table(&[
                    "NUMBER", "AGENCY", "PI", "AMOUNT", "START", "END", "PERIODS", "STATUS",
                ]);
                for g in &list {
                    t.add_row(vec![
                        Cell::new(&g.number),
                        Cell::new(&g.agency),
                        Cell::new(&g.pi),
                        money_cell(g.amount),
                        Cell::new(g.start.format("%Y-%m-%d").to_string()),
                        Cell::new(last_day(g.end)),
                        Cell::new(format!("{} months", g.period_months)),
                        Cell::new(if g.is_active_at(as_of) {
                            "active".to_string()
                        } else if g.status == "active" && as_of >= g.end {
                            "ended".into()
                        } else if g.status == "active" {
                            "not started".into()
                        } else {
                            g.status.clone()
                        }),
                    ]);
                }
                print_table(out, &t)?;
            }
        }
        GrantCmd::Show(a) => {
            let as_of = ctx.as_of()?;
            let g = grants::load(&mut conn, &a.number)?;
            let figs = period_figures(&mut conn, &g, as_of)?;
            let links = grants::links(&mut conn, g.id)?;
            let cfg = ctx.config()?;
            let burn = if as_of >= g.start {
                Some(crate::db::burn::grant_burn(
                    &mut conn,
                    &g.number,
                    as_of,
                    crate::db::burn::window_len(as_of, cfg.burn_window_days()),
                    &cfg.burn_thresholds(),
                )?)
            } else {
                None
            };
            let spent_total = UsdMicros::from_stored(figs.iter().map(|f| f.spent.micros()).sum());
            if ctx.cli.json {
                let mut v = grant_json(&g);
                v["spent"] = split_json(spent_total, &g);
                v["remaining"] = split_json(
                    UsdMicros::from_stored(g.amount.micros() - spent_total.micros()),
                    &g,
                );
                v["periods"] = figs.iter().map(|f| period_json(&g, f)).collect();
                v["accounts"] = links
                    .iter()
                    .map(|l| json!({"account": l.account, "share_percent": l.share.normalize().to_string(), "linked_at": ts(l.linked_at), "unlinked_at": l.unlinked_at.map(ts)}))
                    .collect();
                v["burn_rate"] = burn
                    .as_ref()
                    .map(|b| super::burn::figures_json(&b.inputs, &b.figures))
                    .unwrap_or(Value::Null);
                v["changes"] = grants::changes(&mut conn, g.id)?
                    .iter()
                    .map(|(f, o, n, actor, reason, at)| json!({"field": f, "old_value": o, "new_value": n, "actor": actor, "reason": reason, "changed_at": ts(*at)}))
                    .collect();
                print_json(out, &v)?;
            } else {
                let s = split(g.amount, g.indirect_rate);
                let sp = split(spent_total, g.indirect_rate);
                super::output::kv(
                    out,
                    &[
                        ("grant", g.number.clone()),
                        ("agency", g.agency.clone()),
                        ("program", g.program.clone()),
                        ("PI", g.pi.clone()),
                        ("co-PIs", g.co_pis.join(", ")),
                        (
                            "institution",
                            format!(
                                "{}{}",
                                g.institution,
                                if g.department.is_empty() {
                                    String::new()
                                } else {
                                    format!(", {}", g.department)
                                }
                            ),
                        ),
                        ("federal award id", g.federal_award_id.clone()),
                        (
                            "project code / cost center",
                            format!("{} / {}", g.project_code, g.cost_center),
                        ),
                        (
                            "dates",
                            format!(
                                "{} to {} ({} budget periods of {} months)",
                                g.start.format("%Y-%m-%d"),
                                last_day(g.end),
                                figs.len(),
                                g.period_months
                            ),
                        ),
                        (
                            "award",
                            format!(
                                "${} = direct ${} + indirect ${} (rate {})",
                                g.amount,
                                s.direct,
                                s.indirect,
                                g.indirect_rate.normalize()
                            ),
                        ),
                        (
                            "spent",
                            format!(
                                "${} = direct ${} + indirect ${}",
                                spent_total, sp.direct, sp.indirect
                            ),
                        ),
                        (
                            "remaining",
                            format!(
                                "${}",
                                UsdMicros::from_stored(g.amount.micros() - spent_total.micros())
                            ),
                        ),
                        ("carry-over", g.carry_over.to_string()),
                        ("status", g.status.clone()),
                    ],
                )?;
                writeln!(out)?;
                print_table(out, &periods_table(&g, &figs))?;
                if !links.is_empty() {
                    writeln!(out, "\nlinked accounts:")?;
                    for l in &links {
                        writeln!(
                            out,
                            "  {} {}% since {}{}",
                            l.account,
                            l.share.normalize(),
                            l.linked_at.format("%Y-%m-%d"),
                            l.unlinked_at
                                .map(|u| format!(", unlinked {}", u.format("%Y-%m-%d")))
                                .unwrap_or_default()
                        )?;
                    }
                }
                let changes = grants::changes(&mut conn, g.id)?;
                if !changes.is_empty() {
                    writeln!(out, "\nchanges:")?;
                    for (field, old, new, actor, reason, at) in &changes {
                        writeln!(
                            out,
                            "  {} {field}: {old} -> {new} (by {actor}{})",
                            at.format("%Y-%m-%d"),
                            if reason.is_empty() {
                                String::new()
                            } else {
                                format!(": {reason}")
                            }
                        )?;
                    }
                }
                if let Some(b) = &burn {
                    writeln!(out)?;
                    super::burn::print_figures(
                        out,
                        &b.inputs,
                        &b.figures,
                        Some(g.indirect_rate),
                        false,
                    )?;
                }
            }
        }
        GrantCmd::Periods(a) => {
            let as_of = ctx.as_of()?;
            let g = grants::load(&mut conn, &a.number)?;
            let figs = period_figures(&mut conn, &g, as_of)?;
            if ctx.cli.json {
                print_json(
                    out,
                    &json!(figs.iter().map(|f| period_json(&g, f)).collect::<Vec<_>>()),
                )?;
            } else {
                print_table(out, &periods_table(&g, &figs))?;
                writeln!(
                    out,
                    "amounts are totals; direct = total / (1 + {}), indirect = total - direct",
                    g.indirect_rate.normalize()
                )?;
            }
        }
        GrantCmd::Update(a) => {
            let u = GrantUpdate {
                agency: a.agency.clone(),
                program: a.program.clone(),
                pi: a.pi.clone(),
                co_pis: a.co_pi.as_deref().map(list_arg),
                institution: a.institution.clone(),
                department: a.department.clone(),
                federal_award_id: a.federal_id.clone(),
                project_code: a.project_code.clone(),
                cost_center: a.cost_center.clone(),
                indirect_rate: a
                    .indirect
                    .as_deref()
                    .map(parse_indirect_rate)
                    .transpose()
                    .map_err(|e| CliError {
                        code: exit::ERROR,
                        message: e.to_string(),
                    })?,
                carry_over: a
                    .carry_over
                    .as_deref()
                    .map(|c| c.parse::<CarryOver>())
                    .transpose()
                    .map_err(|e| CliError::usage("--carry-over", e))?,
                period_budget: match (a.period, &a.budget) {
                    (Some(p), Some(b)) => Some((p, super::non_negative_arg("--budget", b)?)),
                    _ => None,
                },
                end: a
                    .end
                    .as_deref()
                    .map(|e| {
                        DateInput::parse(e)
                            .map(|d| d.end_exclusive())
                            .map_err(|e| CliError::usage("--end", e))
                    })
                    .transpose()?,
                reason: a.reason.clone(),
            };
            let before = grants::load(&mut conn, &a.number)?;
            let g = grants::update(&mut conn, &ctx.op()?, &a.number, &u)?;
            // Accounts whose own active period ends before the extended grant.
            let short: Vec<(String, chrono::DateTime<chrono::Utc>)> = if g.end != before.end {
                let mut v = Vec::new();
                for l in grants::links(&mut conn, g.id)?
                    .into_iter()
                    .filter(|l| l.unlinked_at.is_none())
                {
                    let acct = crate::db::queries::account(&mut conn, &l.account)?;
                    if acct.ends_at < g.end {
                        v.push((l.account, acct.ends_at));
                    }
                }
                v
            } else {
                Vec::new()
            };
            if ctx.cli.json {
                let mut v = grant_json(&g);
                v["accounts_ending_before_grant"] = json!(short
                    .iter()
                    .map(|(a, e)| json!({"account": a, "ends": last_day(*e)}))
                    .collect::<Vec<_>>());
                print_json(out, &v)?;
            } else if g.end != before.end {
                let last = grants::period_rows(&mut conn, g.id)?
                    .pop()
                    .map(|p| p.number)
                    .unwrap_or(0);
                writeln!(
                    out,
                    "extended grant {} to {} (was {}): budget period {last} now ends then, with the same budget; no money added",
                    g.number,
                    last_day(g.end),
                    last_day(before.end)
                )?;
                for (a, e) in &short {
                    writeln!(
                        out,
                        "note: budget account '{a}' ends on {}, before the grant; extend it with `asbb account update {a} --end {}`",
                        last_day(*e),
                        last_day(g.end)
                    )?;
                }
            } else {
                writeln!(out, "updated grant {} (award ${})", g.number, g.amount)?;
            }
        }
        GrantCmd::Close(a) => {
            let (g, r) = grants::close(&mut conn, &ctx.op()?, &a.number, &a.reason)?;
            if ctx.cli.json {
                let mut v = grant_json(&g);
                v["closed_periods"] = json!(r.closed.iter().map(|(_, p)| p).collect::<Vec<_>>());
                print_json(out, &v)?;
            } else {
                writeln!(
                    out,
                    "closed grant {} as of {}; its journal entries and periods are kept",
                    g.number,
                    g.closed_at
                        .map(|t| t.format("%Y-%m-%d").to_string())
                        .unwrap_or_default()
                )?;
                transitions_line(out, &r)?;
            }
        }
        GrantCmd::Link(a) => {
            let share = parse_share(&a.share).map_err(|e| CliError {
                code: exit::ERROR,
                message: e.to_string(),
            })?;
            let (g, r) = grants::link(&mut conn, &ctx.op()?, &a.number, &a.account, share)?;
            let acct = crate::db::queries::account(&mut conn, &a.account)?;
            if ctx.cli.json {
                print_json(
                    out,
                    &json!({"grant": g.number, "account": a.account, "share_percent": share.normalize().to_string(), "budget_available": m(acct.available())}),
                )?;
            } else {
                writeln!(
                    out,
                    "linked budget account '{}' to grant {} with {}% of every budget period",
                    a.account,
                    g.number,
                    share.normalize()
                )?;
                transitions_line(out, &r)?;
                if acct.ends_at < g.end {
                    writeln!(out, "note: the account ends on {}, before the grant ({}); extend it with `asbb account update {} --end {}`", last_day(acct.ends_at), last_day(g.end), a.account, last_day(g.end))?;
                }
            }
        }
        GrantCmd::Report(_) => unreachable!("handled above"),
        GrantCmd::Unlink(a) => {
            let r = grants::unlink(&mut conn, &ctx.op()?, &a.number, &a.account)?;
            if ctx.cli.json {
                print_json(
                    out,
                    &json!({"grant": a.number, "account": a.account, "unlinked": true}),
                )?;
            } else {
                writeln!(
                    out,
                    "unlinked budget account '{}' from grant {}",
                    a.account, a.number
                )?;
                transitions_line(out, &r)?;
            }
        }
    }
    Ok(exit::OK)
}
