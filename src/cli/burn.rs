//! `asbb burn-rate`, `asbb forecast`, `asbb status`, `asbb alerts`.

use std::io::{IsTerminal, Write};

use chrono::{DateTime, Duration, Months, Utc};
use clap::{Args, Subcommand};
use comfy_table::Cell;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rust_decimal::Decimal;
use serde_json::{json, Value};

use super::output::{m, print_json, print_table, table, ts};
use super::{positive_arg, CliError, Ctx};
use crate::burn::status;
use crate::db::alerts::{self, AlertFilter, AlertRow};
use crate::db::burn::{self as dburn, day_start};
use crate::db::{grants, queries};
use crate::domain::burn::{days, BurnFigures, BurnInputs};
use crate::domain::grant::split;
use crate::domain::time::from_naive;
use crate::domain::UsdMicros;
use crate::exit;

/// `asbb burn-rate`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BurnRateArgs {
    /// An account name or a grant number.
    pub target: Option<String>,
    /// The window: 7d, 30d, 90d, 6m or 1y.
    #[arg(long, default_value = "30d")]
    pub period: String,
    /// Include the projection: depletion date, spend at period and grant end, risk level.
    #[arg(long)]
    pub projection: bool,
    /// Show only the target's open alerts.
    #[arg(long)]
    pub alerts_only: bool,
    /// The timer job.
    #[command(subcommand)]
    pub command: Option<BurnRateCmd>,
}

/// `asbb burn-rate compute`.
#[derive(Debug, Subcommand)]
pub enum BurnRateCmd {
    /// Write the daily snapshots up to --as-of (catching up missed days), the budget status
    /// files, and raise or resolve alerts: the timer job.
    Compute,
}

/// `asbb forecast`.
#[derive(Debug, Args)]
pub struct ForecastArgs {
    /// SLURM account name.
    pub account: String,
    /// The window whose rate is projected: 7d, 30d, 90d, 6m or 1y.
    #[arg(long, default_value = "30d")]
    pub period: String,
}

/// `asbb status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// SLURM account name.
    pub account: String,
    /// A burst's cost in USD: is it affordable, and what would it do to the period?
    #[arg(long, value_name = "AMOUNT")]
    pub cost: Option<String>,
}

/// `asbb alerts`.
#[derive(Debug, Subcommand)]
pub enum AlertsCmd {
    /// Open alerts (newest first); --all includes resolved ones.
    List(AlertListArgs),
    /// Mark an alert as seen; it stays open while its condition holds.
    Acknowledge(AckArgs),
}

/// `alerts list`.
#[derive(Debug, Args)]
pub struct AlertListArgs {
    /// Only this grant's alerts (its own and its accounts').
    #[arg(long)]
    pub grant: Option<String>,
    /// Only this account's alerts.
    #[arg(long)]
    pub account: Option<String>,
    /// Only info, warning or critical.
    #[arg(long)]
    pub severity: Option<String>,
    /// Include resolved alerts.
    #[arg(long)]
    pub all: bool,
}

/// `alerts acknowledge`.
#[derive(Debug, Args)]
pub struct AckArgs {
    /// Alert id.
    pub id: i64,
    /// Who acknowledges.
    #[arg(long)]
    pub user: String,
    /// Notes.
    #[arg(long, default_value = "")]
    pub notes: String,
}

/// The window of `--period` ending at `t`: whole days (or calendar months) before `t`'s day,
/// plus that day so far.
pub(crate) fn window_for(t: DateTime<Utc>, spec: &str) -> Result<Duration, CliError> {
    let bad = || {
        CliError::usage(
            "--period",
            format!("'{spec}' is not a window (use 7d, 30d, 90d, 6m or 1y)"),
        )
    };
    let start = day_start(t.date_naive());
    let from = match spec.trim() {
        "7d" => start - Duration::days(7),
        "30d" => start - Duration::days(30),
        "90d" => start - Duration::days(90),
        "6m" => start.checked_sub_months(Months::new(6)).ok_or_else(bad)?,
        "1y" => start.checked_sub_months(Months::new(12)).ok_or_else(bad)?,
        _ => return Err(bad()),
    };
    Ok(t - from)
}

fn cents(v: UsdMicros) -> String {
    format!("${}", v.to_cents_string())
}

fn signed_pct(v: Decimal) -> String {
    let r = v.round_dp_with_strategy(1, rust_decimal::RoundingStrategy::MidpointAwayFromZero);
    if r.is_sign_negative() {
        format!("{r:.1}%")
    } else {
        format!("+{r:.1}%")
    }
}

/// The figures as JSON.
pub(crate) fn figures_json(i: &BurnInputs, f: &BurnFigures) -> Value {
    let p = &f.projection;
    json!({
        "as_of": ts(i.as_of),
        "window_days": days(i.window).round_dp(4).normalize().to_string(),
        "active_days": f.active_days.round_dp(4).normalize().to_string(),
        "window_spent": m(f.window_spent),
        "window_expected": m(f.window_expected),
        "daily_rate": m(f.daily_rate),
        "expected_daily_rate": m(f.expected_daily_rate),
        "rate_7d": m(f.rate_7d),
        "rate_30d": m(f.rate_30d),
        "variance_percent": f.variance_percent.map(|v| v.to_string()),
        "burn_status": f.status.as_str(),
        "health_score": f.health,
        "health_band": f.band.as_str(),
        "utilization_percent": f.utilisation_percent.map(|v| v.to_string()),
        "credited": m(i.credited),
        "charged": m(i.charged),
        "held": m(i.held),
        "period": {
            "start": ts(i.period.start), "end": ts(i.period.end),
            "budget": m(i.period_budget), "spent": m(i.period_spent), "expected_to_date": m(f.period_expected),
        },
        "horizon": {
            "start": ts(i.horizon.start), "end": ts(i.horizon.end),
            "budget": m(i.horizon_budget), "spent": m(i.horizon_spent),
        },
        "projection": {
            "remaining": m(p.remaining),
            "depletion_date": p.depletion.map(|d| d.format("%Y-%m-%d").to_string()),
            "days_left_in_period": p.days_left_in_period.round_dp(2).normalize().to_string(),
            "projected_period_spend": m(p.period_end_spend),
            "period_overrun": m(p.period_overrun),
            "projected_horizon_spend": m(p.horizon_end_spend),
            "horizon_overrun": m(p.horizon_overrun),
            "risk_level": p.risk.as_str(),
        },
    })
}

/// The figures for people, in the seed's words.
pub(crate) fn print_figures(
    out: &mut dyn Write,
    i: &BurnInputs,
    f: &BurnFigures,
    indirect: Option<Decimal>,
    projection: bool,
) -> Result<(), CliError> {
    writeln!(
        out,
        "Daily Rate: {} (Expected: {})",
        cents(f.daily_rate),
        cents(f.expected_daily_rate)
    )?;
    match f.variance_percent {
        Some(v) => writeln!(out, "Variance: {} ({})", signed_pct(v), f.status)?,
        None => writeln!(
            out,
            "Variance: n/a ({}; fewer than the minimum days of history in the window)",
            f.status
        )?,
    }
    writeln!(out, "Health Score: {}% ({})", f.health, f.band)?;
    writeln!(
        out,
        "Rolling rates: 7 days {}/day, 30 days {}/day",
        cents(f.rate_7d),
        cents(f.rate_30d)
    )?;
    writeln!(
        out,
        "Period {} to {}: spent {} of {} (expected by now {}){}",
        i.period.start.format("%Y-%m-%d"),
        (i.period.end - Duration::seconds(1)).format("%Y-%m-%d"),
        cents(i.period_spent),
        cents(i.period_budget),
        cents(f.period_expected),
        f.utilisation_percent
            .map(|u| format!(", {u}% used with holds"))
            .unwrap_or_default()
    )?;
    if let Some(rate) = indirect {
        let s = split(i.period_spent, rate);
        writeln!(
            out,
            "  spent direct {} + indirect {} (rate {})",
            cents(s.direct),
            cents(s.indirect),
            rate.normalize()
        )?;
    }
    if projection {
        let p = &f.projection;
        writeln!(out, "Projection at {}/day:", cents(f.daily_rate))?;
        writeln!(
            out,
            "  Money left {} runs out: {}",
            cents(p.remaining),
            match p.depletion {
                Some(d) if d < i.period.end =>
                    format!("{} (before the period ends)", d.format("%Y-%m-%d")),
                Some(d) => d.format("%Y-%m-%d").to_string(),
                None => "not at this rate".into(),
            }
        )?;
        let over = |x: UsdMicros| {
            if x.is_negative() {
                format!("underrun {}", cents(UsdMicros::from_stored(-x.micros())))
            } else {
                format!("overrun {}", cents(x))
            }
        };
        writeln!(
            out,
            "  At period end ({}): {} of {} ({})",
            (i.period.end - Duration::seconds(1)).format("%Y-%m-%d"),
            cents(p.period_end_spend),
            cents(i.period_budget),
            over(p.period_overrun)
        )?;
        writeln!(
            out,
            "  At {} end ({}): {} of {} ({})",
            if i.horizon == i.period {
                "account"
            } else {
                "grant"
            },
            (i.horizon.end - Duration::seconds(1)).format("%Y-%m-%d"),
            cents(p.horizon_end_spend),
            cents(i.horizon_budget),
            over(p.horizon_overrun)
        )?;
        writeln!(out, "  Risk level: {}", p.risk)?;
    }
    Ok(())
}

fn alert_json(a: &AlertRow) -> Value {
    let t = |n: chrono::NaiveDateTime| ts(from_naive(n));
    json!({
        "id": a.id, "kind": a.kind, "severity": a.severity, "subject_kind": a.subject_kind,
        "subject": a.subject, "message": a.message, "value": a.value, "threshold": a.threshold,
        "state": a.state(), "raised_at": t(a.raised_at), "last_seen_at": t(a.last_seen_at),
        "resolved_at": a.resolved_at.map(t), "acknowledged_at": a.acknowledged_at.map(t),
        "acknowledged_by": a.acknowledged_by, "notes": a.ack_notes,
        "notified_at": a.notified_at.map(t),
    })
}

fn alerts_table(list: &[AlertRow]) -> comfy_table::Table {
    let mut t = table(&[
        "ID", "RAISED", "SEVERITY", "KIND", "SUBJECT", "STATE", "MESSAGE",
    ]);
    for a in list {
        t.add_row(vec![
            Cell::new(a.id),
            Cell::new(from_naive(a.raised_at).format("%Y-%m-%d").to_string()),
            Cell::new(&a.severity),
            Cell::new(&a.kind),
            Cell::new(format!("{} {}", a.subject_kind, a.subject)),
            Cell::new(a.state()),
            Cell::new(&a.message),
        ]);
    }
    t
}

fn progress(label: &str) -> ProgressBar {
    let bar = ProgressBar::new(0);
    if std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} accounts")
                .expect("valid template"),
        );
        bar.set_message(label.to_string());
    } else {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar
}

pub(crate) fn burn_rate(
    ctx: &Ctx<'_>,
    a: &BurnRateArgs,
    out: &mut dyn Write,
) -> Result<i32, CliError> {
    let cfg = ctx.config()?;
    let mut conn = ctx.conn()?;
    if let Some(BurnRateCmd::Compute) = a.command {
        let op = ctx.op()?;
        let bar = progress("analysing");
        let s =
            crate::burn::run_compute(&mut conn, cfg, op.effective_at, ctx.now, &mut |n, total| {
                bar.set_length(total);
                bar.set_position(n);
            })?;
        bar.finish_and_clear();
        if ctx.cli.json {
            print_json(
                out,
                &json!({
                    "as_of": ts(op.effective_at),
                    "accounts": s.accounts,
                    "grants": s.grants,
                    "snapshot_days_written": s.days_written,
                    "accounts_recomputed": s.recomputed,
                    "status_files": s.status_files,
                    "alerts_raised": s.alerts.raised,
                    "alerts_kept": s.alerts.kept,
                    "alerts_resolved": s.alerts.resolved,
                    "notified": s.notified,
                    "notify_failures": s.notify_failures,
                }),
            )?;
        } else {
            writeln!(
                out,
                "analysed {} account(s) and {} grant(s) as of {}: {} daily snapshot(s) written{}",
                s.accounts,
                s.grants,
                op.effective_at.format("%Y-%m-%d %H:%M"),
                s.days_written,
                if s.recomputed > 0 {
                    format!(
                        " ({} account(s) recomputed after backfilled entries)",
                        s.recomputed
                    )
                } else {
                    String::new()
                }
            )?;
            if s.status_files > 0 {
                writeln!(
                    out,
                    "wrote {} budget status file(s) to {}",
                    s.status_files, cfg.burn.status_dir
                )?;
            }
            writeln!(
                out,
                "alerts: {} raised, {} still open, {} resolved; {} notification(s) sent",
                s.alerts.raised.len(),
                s.alerts.kept,
                s.alerts.resolved,
                s.notified
            )?;
            for e in &s.notify_failures {
                writeln!(out, "notification failed (retried next run): {e}")?;
            }
        }
        return Ok(exit::OK);
    }
    let Some(target) = a.target.as_deref() else {
        return Err(CliError {
            code: exit::USAGE,
            message:
                "give an account or a grant (`asbb burn-rate ACCOUNT`), or `asbb burn-rate compute`"
                    .into(),
        });
    };
    let as_of = ctx.as_of()?;
    let window = window_for(as_of, &a.period)?;
    let th = cfg.burn_thresholds();
    let is_account = queries::account(&mut conn, target).is_ok();
    let is_grant = !is_account && grants::exists(&mut conn, target)?;
    if !is_account && !is_grant {
        return Err(CliError {
            code: exit::ERROR,
            message: format!("no budget account or grant named '{target}' (see `asbb account list`, `asbb grant list`)"),
        });
    }
    if a.alerts_only {
        let f = if is_account {
            AlertFilter {
                account: Some(target.into()),
                ..Default::default()
            }
        } else {
            AlertFilter {
                grant: Some(target.into()),
                ..Default::default()
            }
        };
        let list = alerts::list(&mut conn, &f)?;
        if ctx.cli.json {
            print_json(out, &json!(list.iter().map(alert_json).collect::<Vec<_>>()))?;
        } else if list.is_empty() {
            writeln!(out, "no open alerts for {target}")?;
        } else {
            print_table(out, &alerts_table(&list))?;
        }
        return Ok(exit::OK);
    }
    let (inputs, figures, indirect, what) = if is_account {
        let b = dburn::account_burn(&mut conn, target, as_of, window, &th)?;
        let rate = b.context.grant.as_ref().map(|g| g.grant.indirect_rate);
        (b.inputs, b.figures, rate, format!("account '{target}'"))
    } else {
        let b = dburn::grant_burn(&mut conn, target, as_of, window, &th)?;
        let what = format!(
            "grant {} ({} account(s): {})",
            target,
            b.accounts.len(),
            b.accounts.join(", ")
        );
        (b.inputs, b.figures, Some(b.grant.indirect_rate), what)
    };
    if ctx.cli.json {
        let mut v = figures_json(&inputs, &figures);
        v["target"] = json!(target);
        v["target_kind"] = json!(if is_account { "account" } else { "grant" });
        print_json(out, &v)?;
    } else {
        writeln!(
            out,
            "Burn rate of {what} as of {}, window {}",
            as_of.format("%Y-%m-%d %H:%M"),
            a.period
        )?;
        print_figures(out, &inputs, &figures, indirect, a.projection)?;
    }
    Ok(exit::OK)
}

#[allow(clippy::while_let_loop)]
pub(crate) fn forecast(
    ctx: &Ctx<'_>,
    a: &ForecastArgs,
    out: &mut dyn Write,
) -> Result<i32, CliError> {
    let cfg = ctx.config()?;
    let mut conn = ctx.conn()?;
    let as_of = ctx.as_of()?;
    let window = window_for(as_of, &a.period)?;
    let b = dburn::account_burn(&mut conn, &a.account, as_of, window, &cfg.burn_thresholds())?;
    let (i, f) = (&b.inputs, &b.figures);
    // Month by month to the horizon's end at the window's daily rate.
    let rate = if f.active_days > Decimal::ZERO {
        Decimal::from(f.window_spent.micros()) / f.active_days
    } else {
        Decimal::ZERO
    };
    let mut rows = Vec::new();
    let mut k = 1;
    loop {
        let Some(next) = day_start(as_of.date_naive()).checked_add_months(Months::new(k)) else {
            break;
        };
        let at = next.min(i.horizon.end);
        if at <= as_of {
            break;
        }
        let spend = crate::domain::burn::round_micros(rate * days(at - as_of));
        let arriving: i64 = i
            .future_money
            .iter()
            .filter(|(t, _)| *t <= at && *t > as_of)
            .map(|(_, m)| m.micros())
            .sum();
        let planned = crate::domain::burn::round_micros(i.plan.expected_between(as_of, at));
        let left =
            UsdMicros::from_stored(f.projection.remaining.micros() + arriving - spend.micros());
        rows.push((at, planned, spend, UsdMicros::from_stored(arriving), left));
        if at >= i.horizon.end || k > 600 {
            break;
        }
        k += 1;
    }
    if ctx.cli.json {
        let mut v = figures_json(i, f);
        v["account"] = json!(a.account);
        v["months"] = rows
            .iter()
            .map(|(at, planned, spend, arriving, left)| json!({"until": ts(*at), "planned_spend": m(*planned), "projected_spend": m(*spend), "money_arriving": m(*arriving), "projected_money_left": m(*left)}))
            .collect();
        print_json(out, &v)?;
    } else {
        writeln!(
            out,
            "Forecast of account '{}' as of {} at the last {} rate",
            a.account,
            as_of.format("%Y-%m-%d"),
            a.period
        )?;
        print_figures(
            out,
            i,
            f,
            b.context.grant.as_ref().map(|g| g.grant.indirect_rate),
            true,
        )?;
        if !rows.is_empty() {
            writeln!(out)?;
            let mut t = table(&[
                "UNTIL",
                "PLANNED SPEND",
                "PROJECTED SPEND",
                "MONEY ARRIVING",
                "MONEY LEFT",
            ]);
            for (at, planned, spend, arriving, left) in &rows {
                t.add_row(vec![
                    Cell::new(at.format("%Y-%m-%d").to_string()),
                    super::output::money_cell(*planned),
                    super::output::money_cell(*spend),
                    super::output::money_cell(*arriving),
                    super::output::money_cell(*left),
                ]);
            }
            print_table(out, &t)?;
            writeln!(out, "cumulative from {}; planned = the plan's expected spend, projected = at the current daily rate", as_of.format("%Y-%m-%d"))?;
        }
    }
    Ok(exit::OK)
}

pub(crate) fn status(ctx: &Ctx<'_>, a: &StatusArgs, out: &mut dyn Write) -> Result<i32, CliError> {
    let cfg = ctx.config()?;
    let mut conn = ctx.conn()?;
    let as_of = ctx.as_of()?;
    let th = cfg.burn_thresholds();
    let window = dburn::window_len(as_of, cfg.burn_window_days());
    let b = dburn::account_burn(&mut conn, &a.account, as_of, window, &th)?;
    let afford = a
        .cost
        .as_deref()
        .map(|c| positive_arg("--cost", c))
        .transpose()?
        .map(|cost| status::affordability(&b, cost, cfg.hold_buffer(), b.context.overdraft, &th));
    let v = status::status_json(&b, as_of, ctx.now, afford.as_ref());
    if ctx.cli.json {
        print_json(out, &v)?;
    } else {
        writeln!(
            out,
            "Budget status of '{}' as of {}",
            a.account,
            as_of.format("%Y-%m-%d %H:%M")
        )?;
        print_figures(out, &b.inputs, &b.figures, None, true)?;
        writeln!(
            out,
            "Recommendation: {}",
            v["recommendation"]["decision"].as_str().unwrap_or("")
        )?;
        if let Some(reasons) = v["recommendation"]["reasons"].as_array() {
            for r in reasons {
                writeln!(
                    out,
                    "  {}: {}",
                    r["code"].as_str().unwrap_or(""),
                    r["message"].as_str().unwrap_or("")
                )?;
            }
        }
        if let Some(af) = &afford {
            writeln!(
                out,
                "A burst of {}: {} ({}); health after {} ({}), risk {}",
                cents(af.cost),
                if af.affordable {
                    "affordable"
                } else {
                    "not affordable"
                },
                af.message,
                af.after.figures.health,
                af.after.figures.band,
                af.after.figures.projection.risk
            )?;
        }
    }
    Ok(match &afford {
        Some(af) if !af.affordable => exit::DENIED,
        _ => exit::OK,
    })
}

pub(crate) fn alerts_cmd(
    ctx: &Ctx<'_>,
    cmd: &AlertsCmd,
    out: &mut dyn Write,
) -> Result<i32, CliError> {
    let mut conn = ctx.conn()?;
    match cmd {
        AlertsCmd::List(a) => {
            let list = alerts::list(
                &mut conn,
                &AlertFilter {
                    grant: a.grant.clone(),
                    account: a.account.clone(),
                    severity: a.severity.clone(),
                    all: a.all,
                    limit: None,
                },
            )?;
            if ctx.cli.json {
                print_json(out, &json!(list.iter().map(alert_json).collect::<Vec<_>>()))?;
            } else if list.is_empty() {
                writeln!(out, "no {}alerts", if a.all { "" } else { "open " })?;
            } else {
                print_table(out, &alerts_table(&list))?;
            }
        }
        AlertsCmd::Acknowledge(a) => {
            let r = alerts::acknowledge(&mut conn, a.id, &a.user, &a.notes, ctx.now)?;
            if ctx.cli.json {
                print_json(out, &alert_json(&r))?;
            } else {
                writeln!(
                    out,
                    "acknowledged alert {} ({} {}): {}",
                    r.id, r.severity, r.kind, r.message
                )?;
            }
        }
    }
    Ok(exit::OK)
}
