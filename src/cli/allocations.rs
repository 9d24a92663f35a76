//! `asbb allocations …`: schedules and the timer job that credits them (and books grant period
//! transitions).

use std::io::Write;

use clap::{Args, Subcommand};
use comfy_table::Cell;
use serde_json::{json, Value};

use super::output::{m, money_cell, print_json, print_table, table, ts};
use super::{positive_arg, CliError, Ctx};
use crate::db::allocations::{self, PeriodOutcome, ProcessFilter, ProcessReport, ScheduleRecord};
use crate::db::grants;
use crate::domain::schedule::{Frequency, Schedule};
use crate::domain::time::DateInput;
use crate::exit;

/// `asbb allocations`.
#[derive(Debug, Subcommand)]
pub enum AllocationsCmd {
    /// List allocation schedules (with what they credited and what comes next).
    List(ListArgs),
    /// Show one schedule and every period it decided.
    Show(IdArgs),
    /// Add a schedule to an existing account (an account may have several).
    Create(CreateArgs),
    /// Credit every allocation that has come due (all missed periods, each exactly once) and
    /// book grant period activations and expiries: the timer job.
    Process(ProcessArgs),
    /// Pause a schedule: periods due while paused are not credited.
    Pause(PauseArgs),
    /// Resume a paused schedule; --catch-up also credits the periods it missed.
    Resume(ResumeArgs),
}

/// `allocations list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this account's schedules.
    #[arg(long)]
    pub account: Option<String>,
}

/// A schedule id.
#[derive(Debug, Args)]
pub struct IdArgs {
    /// Schedule id (see `asbb allocations list`).
    pub id: i64,
}

/// The terms of a schedule, shared with `account create --incremental`.
#[derive(Debug, Args, Clone)]
pub struct TermsArgs {
    /// The most the schedule ever credits, in USD.
    #[arg(long, value_name = "AMOUNT")]
    pub total_budget: Option<String>,
    /// Credited each period, in USD (the last period credits what is left of the total).
    #[arg(long, value_name = "AMOUNT")]
    pub allocation_amount: Option<String>,
    /// daily, weekly, monthly, quarterly or yearly; periods are anchored to --start.
    #[arg(long, value_name = "FREQUENCY")]
    pub allocation_frequency: Option<String>,
}

/// `allocations create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// SLURM account name.
    #[arg(long)]
    pub account: String,
    /// Schedule terms.
    #[command(flatten)]
    pub terms: TermsArgs,
    /// First allocation (YYYY-MM-DD or RFC 3339).
    #[arg(long, value_name = "DATE")]
    pub start: String,
    /// Last day (inclusive) an allocation may fall on.
    #[arg(long, value_name = "DATE")]
    pub end: String,
    /// Free text.
    #[arg(long, default_value = "")]
    pub description: String,
}

/// `allocations process`.
#[derive(Debug, Args)]
pub struct ProcessArgs {
    /// Show what would be credited; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Only this account's schedules.
    #[arg(long)]
    pub account: Option<String>,
    /// Only this schedule.
    #[arg(long)]
    pub schedule: Option<i64>,
    /// Leave grant periods alone (schedules only).
    #[arg(long)]
    pub no_grants: bool,
}

/// `allocations pause`.
#[derive(Debug, Args)]
pub struct PauseArgs {
    /// Schedule id.
    pub id: i64,
    /// Why.
    #[arg(long, default_value = "")]
    pub reason: String,
}

/// `allocations resume`.
#[derive(Debug, Args)]
pub struct ResumeArgs {
    /// Schedule id.
    pub id: i64,
    /// Credit the periods that fell due while paused (effective now) instead of skipping them.
    #[arg(long)]
    pub catch_up: bool,
}

/// Parses schedule terms; `flag_prefix` names the flags in errors.
pub(crate) fn terms(
    t: &TermsArgs,
    start: chrono::DateTime<chrono::Utc>,
    end: chrono::DateTime<chrono::Utc>,
) -> Result<Schedule, CliError> {
    let total = t
        .total_budget
        .as_deref()
        .ok_or_else(|| CliError::usage("--total-budget", "required with an allocation schedule"))?;
    let amount = t.allocation_amount.as_deref().ok_or_else(|| {
        CliError::usage(
            "--allocation-amount",
            "required with an allocation schedule",
        )
    })?;
    let freq = t.allocation_frequency.as_deref().ok_or_else(|| {
        CliError::usage(
            "--allocation-frequency",
            "required with an allocation schedule",
        )
    })?;
    let freq: Frequency = freq
        .parse()
        .map_err(|e: String| CliError::usage("--allocation-frequency", e))?;
    Schedule::new(
        start,
        end,
        positive_arg("--allocation-amount", amount)?,
        positive_arg("--total-budget", total)?,
        freq,
    )
    .map_err(|e| CliError {
        code: exit::ERROR,
        message: e.to_string(),
    })
}

pub(crate) fn schedule_json(s: &ScheduleRecord) -> Value {
    json!({
        "id": s.id,
        "account": s.account,
        "amount": m(s.terms.amount),
        "total_budget": m(s.terms.total),
        "frequency": s.terms.frequency.as_str(),
        "start": ts(s.terms.start),
        "end": ts(s.terms.end),
        "status": s.status,
        "credited": m(s.credited),
        "remaining": m(s.remaining()),
        "credited_periods": s.credited_count,
        "skipped_periods": s.skipped_count,
        "next_period": s.next_period,
        "next_due": s.next_due.map(ts),
        "description": s.description,
        "created_by": s.created_by,
        "created_at": ts(s.created_at),
        "finished_at": s.finished_at.map(ts),
    })
}

fn outcome_json(p: &PeriodOutcome) -> Value {
    json!({
        "schedule": p.schedule_id,
        "account": p.account,
        "period": p.period,
        "due": ts(p.due_at),
        "effective_at": ts(p.effective_at),
        "outcome": p.outcome,
        "amount": m(p.amount),
        "entry_id": p.entry_id,
        "error": p.error,
    })
}

pub(crate) fn schedules_table(list: &[ScheduleRecord]) -> comfy_table::Table {
    let mut t = table(&[
        "ID", "ACCOUNT", "EVERY", "AMOUNT", "TOTAL", "CREDITED", "PERIODS", "NEXT DUE", "STATUS",
    ]);
    for s in list {
        t.add_row(vec![
            Cell::new(s.id),
            Cell::new(&s.account),
            Cell::new(s.terms.frequency.as_str()),
            money_cell(s.terms.amount),
            money_cell(s.terms.total),
            money_cell(s.credited),
            Cell::new(format!(
                "{} credited{}",
                s.credited_count,
                if s.skipped_count > 0 {
                    format!(", {} skipped", s.skipped_count)
                } else {
                    String::new()
                }
            )),
            Cell::new(
                s.next_due
                    .filter(|_| s.status != "finished")
                    .map(|d| d.format("%Y-%m-%d").to_string())
                    .unwrap_or_else(|| "-".into()),
            ),
            Cell::new(&s.status),
        ]);
    }
    t
}

fn print_report(
    out: &mut dyn Write,
    r: &ProcessReport,
    g: Option<&grants::ProcessReport>,
    dry_run: bool,
) -> Result<(), CliError> {
    let verb = if dry_run { "would credit" } else { "credited" };
    let mut t = table(&["SCHEDULE", "ACCOUNT", "PERIOD", "DUE", "OUTCOME", "AMOUNT"]);
    for p in &r.periods {
        t.add_row(vec![
            Cell::new(p.schedule_id),
            Cell::new(&p.account),
            Cell::new(p.period),
            Cell::new(p.due_at.format("%Y-%m-%d").to_string()),
            Cell::new(match (&p.error, dry_run) {
                (Some(e), _) => format!("failed: {e}"),
                (None, true) if p.outcome == "credited" => "would credit".into(),
                (None, true) => "would skip (paused)".into(),
                (None, false) => p.outcome.to_string(),
            }),
            money_cell(p.amount),
        ]);
    }
    if !r.periods.is_empty() {
        print_table(out, &t)?;
    }
    let n = r.periods.iter().filter(|p| p.outcome == "credited").count();
    writeln!(
        out,
        "{verb} {n} allocation(s), ${} in total, from {} schedule(s) due{}",
        r.credited(),
        r.schedules,
        if r.finished.is_empty() {
            String::new()
        } else {
            format!("; {} schedule(s) finished", r.finished.len())
        }
    )?;
    if let Some(g) = g {
        if !g.transitions.is_empty() {
            let mut t = table(&[
                "GRANT",
                "PERIOD",
                "ACCOUNT",
                "ACTION",
                "AMOUNT",
                "EFFECTIVE",
                "NOTE",
            ]);
            for x in &g.transitions {
                t.add_row(vec![
                    Cell::new(&x.grant),
                    Cell::new(x.period),
                    Cell::new(&x.account),
                    Cell::new(x.action),
                    money_cell(x.amount),
                    Cell::new(x.effective_at.format("%Y-%m-%d").to_string()),
                    Cell::new(&x.note),
                ]);
            }
            print_table(out, &t)?;
        }
        writeln!(
            out,
            "grant periods: {} activated, {} closed{}",
            g.activated.len(),
            g.closed.len(),
            if dry_run {
                " (dry run: nothing booked)"
            } else {
                ""
            }
        )?;
    }
    Ok(())
}

fn grant_report_json(g: &grants::ProcessReport) -> Value {
    json!({
        "activated": g.activated.iter().map(|(n, p)| json!({"grant": n, "period": p})).collect::<Vec<_>>(),
        "closed": g.closed.iter().map(|(n, p)| json!({"grant": n, "period": p})).collect::<Vec<_>>(),
        "transitions": g.transitions.iter().map(|x| json!({
            "grant": x.grant, "period": x.period, "account": x.account, "action": x.action,
            "amount": m(x.amount), "effective_at": ts(x.effective_at), "entry_id": x.entry_id, "note": x.note,
        })).collect::<Vec<_>>(),
    })
}

pub(crate) fn run(
    ctx: &Ctx<'_>,
    cmd: &AllocationsCmd,
    out: &mut dyn Write,
) -> Result<i32, CliError> {
    let mut conn = ctx.conn()?;
    match cmd {
        AllocationsCmd::List(a) => {
            let list = allocations::list(&mut conn, a.account.as_deref())?;
            if ctx.cli.json {
                print_json(
                    out,
                    &json!(list.iter().map(schedule_json).collect::<Vec<_>>()),
                )?;
            } else if list.is_empty() {
                writeln!(out, "no allocation schedules; add one with `asbb account create --incremental …` or `asbb allocations create`")?;
            } else {
                print_table(out, &schedules_table(&list))?;
            }
        }
        AllocationsCmd::Show(a) => {
            let s = allocations::load(&mut conn, a.id)?;
            let periods = allocations::periods(&mut conn, a.id)?;
            let pauses = allocations::pauses(&mut conn, a.id)?;
            if ctx.cli.json {
                let mut v = schedule_json(&s);
                v["periods"] = periods
                    .iter()
                    .map(|p| json!({"period": p.period, "due": ts(p.due_at), "outcome": p.outcome, "amount": m(p.amount), "entry_id": p.entry_id, "effective_at": ts(p.effective_at), "reason": p.reason}))
                    .collect();
                v["pauses"] = pauses
                    .iter()
                    .map(|p| json!({"paused_at": ts(p.paused_at), "resumed_at": p.resumed_at.map(ts), "catch_up": p.catch_up, "paused_by": p.paused_by, "reason": p.reason}))
                    .collect();
                print_json(out, &v)?;
            } else {
                super::output::kv(
                    out,
                    &[
                        ("schedule", s.id.to_string()),
                        ("account", s.account.clone()),
                        (
                            "terms",
                            format!(
                                "${} {}, at most ${} in total",
                                s.terms.amount, s.terms.frequency, s.terms.total
                            ),
                        ),
                        (
                            "from",
                            format!(
                                "{} to {} (last day)",
                                s.terms.start.format("%Y-%m-%d"),
                                (s.terms.end - chrono::Duration::seconds(1)).format("%Y-%m-%d")
                            ),
                        ),
                        ("status", s.status.clone()),
                        (
                            "credited",
                            format!(
                                "${} in {} period(s); ${} still to come",
                                s.credited,
                                s.credited_count,
                                s.remaining()
                            ),
                        ),
                        ("skipped", format!("{} period(s) (paused)", s.skipped_count)),
                        (
                            "next due",
                            s.next_due
                                .filter(|_| s.status != "finished")
                                .map(|d| {
                                    format!("period {} on {}", s.next_period, d.format("%Y-%m-%d"))
                                })
                                .unwrap_or_else(|| "-".into()),
                        ),
                    ],
                )?;
                if !periods.is_empty() {
                    writeln!(out)?;
                    let mut t =
                        table(&["PERIOD", "DUE", "OUTCOME", "AMOUNT", "EFFECTIVE", "ENTRY"]);
                    for p in &periods {
                        t.add_row(vec![
                            Cell::new(p.period),
                            Cell::new(p.due_at.format("%Y-%m-%d").to_string()),
                            Cell::new(&p.outcome),
                            money_cell(p.amount),
                            Cell::new(p.effective_at.format("%Y-%m-%d %H:%M").to_string()),
                            Cell::new(p.entry_id.map(|e| e.to_string()).unwrap_or_default()),
                        ]);
                    }
                    print_table(out, &t)?;
                }
                for p in &pauses {
                    writeln!(
                        out,
                        "paused {} by {}{}{}",
                        p.paused_at.format("%Y-%m-%d %H:%M"),
                        p.paused_by,
                        p.resumed_at
                            .map(|r| format!(
                                ", resumed {}{}",
                                r.format("%Y-%m-%d %H:%M"),
                                if p.catch_up { " with catch-up" } else { "" }
                            ))
                            .unwrap_or_else(|| ", still paused".into()),
                        if p.reason.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", p.reason)
                        }
                    )?;
                }
            }
        }
        AllocationsCmd::Create(a) => {
            let start = DateInput::parse(&a.start)
                .map_err(|e| CliError::usage("--start", e))?
                .start();
            let end = DateInput::parse(&a.end)
                .map_err(|e| CliError::usage("--end", e))?
                .end_exclusive();
            let t = terms(&a.terms, start, end)?;
            let op = ctx.op()?;
            let s = allocations::create_schedule(&mut conn, &op, &a.account, &t, &a.description)?;
            let report = allocations::process_schedule(&mut conn, &op, s.id)?;
            let s = allocations::load(&mut conn, s.id)?;
            if ctx.cli.json {
                let mut v = schedule_json(&s);
                v["credited_now"] = report.periods.iter().map(outcome_json).collect();
                print_json(out, &v)?;
            } else {
                writeln!(
                    out,
                    "created allocation schedule {} for '{}': ${} {} from {}, at most ${}; credited ${} now",
                    s.id, s.account, s.terms.amount, s.terms.frequency, s.terms.start.format("%Y-%m-%d"), s.terms.total, report.credited()
                )?;
            }
        }
        AllocationsCmd::Process(a) => {
            let op = ctx.op()?;
            let filter = ProcessFilter {
                account: a.account.clone(),
                schedule: a.schedule,
            };
            let report = allocations::process(&mut conn, &op, &filter, a.dry_run)?;
            let g = if a.no_grants || a.account.is_some() || a.schedule.is_some() {
                None
            } else {
                Some(grants::process(&mut conn, &op, None, a.dry_run)?)
            };
            if ctx.cli.json {
                print_json(
                    out,
                    &json!({
                        "as_of": ts(op.effective_at),
                        "dry_run": a.dry_run,
                        "schedules": report.schedules,
                        "credited": m(report.credited()),
                        "periods": report.periods.iter().map(outcome_json).collect::<Vec<_>>(),
                        "finished": report.finished,
                        "grants": g.as_ref().map(grant_report_json),
                    }),
                )?;
            } else {
                print_report(out, &report, g.as_ref(), a.dry_run)?;
            }
            if report.failures() > 0 {
                return Ok(exit::ERROR);
            }
        }
        AllocationsCmd::Pause(a) => {
            let s = allocations::pause(&mut conn, &ctx.op()?, a.id, &a.reason)?;
            if ctx.cli.json {
                print_json(out, &schedule_json(&s))?;
            } else {
                writeln!(out, "paused allocation schedule {} of '{}'; periods due while paused are skipped (resume with --catch-up to credit them)", s.id, s.account)?;
            }
        }
        AllocationsCmd::Resume(a) => {
            let (s, report) = allocations::resume(&mut conn, &ctx.op()?, a.id, a.catch_up)?;
            if ctx.cli.json {
                let mut v = schedule_json(&s);
                v["periods"] = report.periods.iter().map(outcome_json).collect();
                print_json(out, &v)?;
            } else {
                let skipped = report
                    .periods
                    .iter()
                    .filter(|p| p.outcome == "skipped")
                    .count();
                writeln!(
                    out,
                    "resumed allocation schedule {} of '{}': credited ${} now, {} paused period(s) skipped",
                    s.id,
                    s.account,
                    report.credited(),
                    skipped
                )?;
            }
        }
    }
    Ok(exit::OK)
}
