//! The `asbb burn-rate compute` job: daily snapshots (in `db::burn`), the budget status files
//! for the advisor ([`status`]), the alerts and their notification hook ([`notify`]).
//!
//! Order, so that a kill at any moment is harmless: snapshots are committed in bounded batches
//! (a rerun continues from the cursors); status files are written whole, flushed to disk and renamed into place;
//! alerts are synchronised in one transaction; only then are new alerts handed to the hook, and
//! each is marked delivered after its hook succeeded (so a kill may deliver one twice, never
//! lose it).

pub mod notify;
pub mod status;

use std::collections::HashSet;
use std::path::Path;

use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;

use crate::config::{AlertThresholds, Config};
use crate::db::alerts::{self, NewAlert, SyncReport};
use crate::db::burn::{self, AccountBurn, ComputeOptions, GrantBurn};
use crate::db::grants;
use crate::db::ledger::LedgerError;
use crate::db::DbConn;
use crate::domain::burn::{BurnFigures, BurnStatus};

/// Every kind of alert `burn-rate compute` evaluates (allocations_finished is raised by
/// `allocations process`).
pub const EVALUATED_KINDS: [&str; 7] = [
    "spend_over_expected",
    "health_low",
    "utilisation",
    "period_utilisation",
    "projected_depletion",
    "grant_ending",
    "period_ending",
];

fn pct(d: Decimal) -> String {
    format!("{:.1}%", d.round_dp(1))
}

/// The alerts that hold for one analysed subject.
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    subject_kind: &'static str,
    subject: &str,
    account_id: Option<i64>,
    grant_id: Option<i64>,
    f: &BurnFigures,
    period_end: DateTime<Utc>,
    as_of: DateTime<Utc>,
    th: &AlertThresholds,
) -> Vec<NewAlert> {
    let mut out = Vec::new();
    let mut push = |kind: &'static str,
                    severity: &'static str,
                    message: String,
                    value: String,
                    threshold: String| {
        out.push(NewAlert {
            dedup_key: format!("{kind}:{subject_kind}:{subject}:{severity}"),
            kind,
            severity,
            subject_kind,
            subject: subject.to_string(),
            account_id,
            grant_id,
            message,
            value,
            threshold,
        });
    };
    if let Some(v) = f.variance_percent {
        let sev = if v > th.variance_critical {
            Some(("critical", th.variance_critical))
        } else if v > th.variance_warning {
            Some(("warning", th.variance_warning))
        } else {
            None
        };
        if let Some((sev, limit)) = sev {
            push(
                "spend_over_expected",
                sev,
                format!(
                    "{subject_kind} '{subject}' spends {} above plan (${}/day against ${}/day expected)",
                    pct(v),
                    f.daily_rate.to_cents_string(),
                    f.expected_daily_rate.to_cents_string()
                ),
                pct(v),
                format!("> {}", pct(limit)),
            );
        }
    } else if f.status == BurnStatus::Overspending {
        push(
            "spend_over_expected",
            "critical",
            format!("{subject_kind} '{subject}' spends with nothing planned"),
            "n/a".into(),
            format!("> {}", pct(th.variance_critical)),
        );
    }
    let health = f.health;
    if health < th.health_critical {
        push(
            "health_low",
            "critical",
            format!(
                "{subject_kind} '{subject}' health score {health} ({})",
                f.band
            ),
            health.to_string(),
            format!("< {}", th.health_critical),
        );
    } else if health < th.health_warning {
        push(
            "health_low",
            "warning",
            format!(
                "{subject_kind} '{subject}' health score {health} ({})",
                f.band
            ),
            health.to_string(),
            format!("< {}", th.health_warning),
        );
    }
    if let Some(u) = f.utilisation_percent {
        let kind = if subject_kind == "grant" {
            "period_utilisation"
        } else {
            "utilisation"
        };
        let what = if subject_kind == "grant" {
            "current budget period"
        } else {
            "budget"
        };
        if u >= th.utilisation_critical {
            push(
                kind,
                "critical",
                format!(
                    "{subject_kind} '{subject}' has used {} of its {what} (holds included)",
                    pct(u)
                ),
                pct(u),
                format!(">= {}", pct(th.utilisation_critical)),
            );
        } else if u >= th.utilisation_warning {
            push(
                kind,
                "warning",
                format!(
                    "{subject_kind} '{subject}' has used {} of its {what} (holds included)",
                    pct(u)
                ),
                pct(u),
                format!(">= {}", pct(th.utilisation_warning)),
            );
        }
    }
    if let Some(d) = f.projection.depletion {
        if as_of < period_end && d < period_end {
            let soon = f.projection.risk == crate::domain::burn::RiskLevel::Critical;
            push(
                "projected_depletion",
                if soon { "critical" } else { "warning" },
                format!(
                    "{subject_kind} '{subject}' is projected to run out of money on {}, before its period ends on {}",
                    d.format("%Y-%m-%d"),
                    (period_end - Duration::seconds(1)).format("%Y-%m-%d")
                ),
                d.format("%Y-%m-%d").to_string(),
                format!("< {}", period_end.format("%Y-%m-%d")),
            );
        }
    }
    out
}

/// The "ending within N days" alerts of a grant: the grant itself and its current period.
pub fn ending_alerts(g: &GrantBurn, as_of: DateTime<Utc>, th: &AlertThresholds) -> Vec<NewAlert> {
    let mut out = Vec::new();
    let within = Duration::days(th.ending_within_days);
    let number = &g.grant.number;
    if g.grant.status == "active" && as_of < g.grant.end && g.grant.end - as_of <= within {
        out.push(NewAlert {
            dedup_key: format!(
                "grant_ending:grant:{number}:{}",
                g.grant.end.format("%Y-%m-%d")
            ),
            kind: "grant_ending",
            severity: "warning",
            subject_kind: "grant",
            subject: number.clone(),
            account_id: None,
            grant_id: Some(g.grant.id),
            message: format!(
                "grant '{number}' ends on {} ({} days left)",
                (g.grant.end - Duration::seconds(1)).format("%Y-%m-%d"),
                (g.grant.end - as_of).num_days()
            ),
            value: (g.grant.end - as_of).num_days().to_string(),
            threshold: format!("<= {} days", th.ending_within_days),
        });
    }
    if let Some(p) = &g.period {
        let is_last = p.end() >= g.grant.end;
        if !is_last
            && g.grant.status == "active"
            && p.start() <= as_of
            && as_of < p.end()
            && p.end() - as_of <= within
        {
            out.push(NewAlert {
                dedup_key: format!("period_ending:grant:{number}:p{}", p.number),
                kind: "period_ending",
                severity: "info",
                subject_kind: "grant",
                subject: number.clone(),
                account_id: None,
                grant_id: Some(g.grant.id),
                message: format!(
                    "budget period {} of grant '{number}' ends on {}: unspent money is carried over by policy ({})",
                    p.number,
                    (p.end() - Duration::seconds(1)).format("%Y-%m-%d"),
                    g.grant.carry_over
                ),
                value: (p.end() - as_of).num_days().to_string(),
                threshold: format!("<= {} days", th.ending_within_days),
            });
        }
    }
    out
}

/// What a compute run did.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    /// Accounts analysed.
    pub accounts: u64,
    /// Grants analysed.
    pub grants: u64,
    /// Snapshot rows written.
    pub days_written: u64,
    /// Accounts recomputed after backfills.
    pub recomputed: u64,
    /// Status files written.
    pub status_files: u64,
    /// Alert changes.
    pub alerts: SyncReport,
    /// Notifications delivered.
    pub notified: u64,
    /// Notification failures (retried next run).
    pub notify_failures: Vec<String>,
    /// The account analyses.
    pub analyses: Vec<AccountBurn>,
    /// The grant analyses.
    pub grant_analyses: Vec<GrantBurn>,
}

/// Runs `asbb burn-rate compute` as of `as_of`.
pub fn run_compute(
    conn: &mut DbConn,
    cfg: &Config,
    as_of: DateTime<Utc>,
    now: DateTime<Utc>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<RunSummary, LedgerError> {
    let opts = ComputeOptions {
        window_days: cfg.burn_window_days(),
        thresholds: cfg.burn_thresholds(),
    };
    let report = burn::compute(conn, as_of, now, &opts, progress)?;
    let mut summary = RunSummary {
        accounts: report.accounts,
        days_written: report.days_written,
        recomputed: report.recomputed,
        ..Default::default()
    };
    let th = cfg.alert_thresholds();
    let window = burn::window_len(as_of, opts.window_days);
    let mut current = Vec::new();
    let mut subjects: HashSet<(String, String)> = HashSet::new();
    for a in &report.current {
        if a.context.status == "closed" {
            continue;
        }
        let grant_id = a.context.grant.as_ref().map(|g| g.grant.id);
        subjects.insert(("account".into(), a.context.name.clone()));
        current.extend(evaluate(
            "account",
            &a.context.name,
            Some(a.context.account_id),
            grant_id,
            &a.figures,
            a.inputs.period.end,
            as_of,
            &th,
        ));
    }
    for g in grants::list(conn, None)? {
        if g.status != "active" || as_of < g.start {
            continue;
        }
        let gb = burn::grant_burn(conn, &g.number, as_of, window, &opts.thresholds)?;
        subjects.insert(("grant".into(), g.number.clone()));
        if as_of < g.end {
            current.extend(evaluate(
                "grant",
                &g.number,
                None,
                Some(g.id),
                &gb.figures,
                gb.inputs.period.end,
                as_of,
                &th,
            ));
        }
        current.extend(ending_alerts(&gb, as_of, &th));
        summary.grant_analyses.push(gb);
    }
    summary.grants = summary.grant_analyses.len() as u64;
    if !cfg.burn.status_dir.trim().is_empty() {
        let dir = Path::new(cfg.burn.status_dir.trim());
        let failed = |e: std::io::Error| {
            LedgerError::invalid(
                "burn.status_dir",
                format!("failed to write a status file in {}: {e}", dir.display()),
            )
        };
        let mut w = status::StatusWriter::new(dir).map_err(failed)?;
        for a in &report.current {
            let v = status::status_json(a, as_of, now, None);
            w.write(&a.context.name, &v).map_err(failed)?;
        }
        summary.status_files = w.finish().map_err(failed)?;
    }
    summary.alerts = alerts::sync(
        conn,
        &EVALUATED_KINDS,
        Some(&subjects),
        &current,
        as_of,
        now,
    )?;
    let (ok, failed) = notify::deliver(conn, cfg, now)?;
    summary.notified = ok;
    summary.notify_failures = failed;
    summary.analyses = report.current;
    Ok(summary)
}
