//! `asbb spool …`, `asbb reconcile`, `asbb recover`, `asbb analytics …`: the batch side.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::Command as Process;

use chrono::{DateTime, TimeZone, Utc};
use clap::{Args, Subcommand};
use comfy_table::Cell;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use super::output::{print_json, print_table, table, ts, ts_short};
use super::{CliError, Ctx};
use crate::db::reconcile::{self, SacctJob};
use crate::db::spool as dbspool;
use crate::domain::time::parse_span;
use crate::domain::{AccountName, JobId};
use crate::exit;
use crate::spool::intake::{Intake, ScanReport, SpoolDirs};

/// `asbb spool`.
#[derive(Debug, Subcommand)]
pub enum SpoolCmd {
    /// One pass over the spool directories: validate each file, store its record exactly once,
    /// move it to processed/ or rejected/. Exits 4 when something was rejected or conflicts.
    Scan(ScanArgs),
    /// Re-exports that disagree with what was stored for the same run.
    Conflicts(ConflictsArgs),
    /// Counts of files taken in, by kind and outcome, and of cost records by status.
    Status,
}

/// The spool directories, overriding `[spool]`.
#[derive(Debug, Args, Clone)]
pub struct DirArgs {
    /// ASBX cost exports [default: spool.asbx_dir].
    #[arg(long, value_name = "DIR")]
    pub asbx_dir: Option<PathBuf>,
    /// Job-end records [default: spool.jobs_dir].
    #[arg(long, value_name = "DIR")]
    pub jobs_dir: Option<PathBuf>,
    /// ASBA plans [default: spool.plans_dir].
    #[arg(long, value_name = "DIR")]
    pub plans_dir: Option<PathBuf>,
}

/// `asbb spool scan`.
#[derive(Debug, Args)]
pub struct ScanArgs {
    #[command(flatten)]
    pub dirs: DirArgs,
}

/// `asbb spool conflicts`.
#[derive(Debug, Args)]
pub struct ConflictsArgs {
    /// Include conflicts already resolved.
    #[arg(long)]
    pub all: bool,
    /// Mark conflict ID as looked at (correct the ledger itself with `asbb adjust` or
    /// `asbb refund` if needed).
    #[arg(long, value_name = "ID", requires = "note")]
    pub resolve: Option<i64>,
    /// What was decided, for the record.
    #[arg(long, value_name = "TEXT")]
    pub note: Option<String>,
}

/// `asbb reconcile`.
#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// A job to reconcile by hand, with --transaction and --actual-cost.
    #[arg(value_name = "JOB", requires_all = ["transaction", "actual_cost"])]
    pub manual_job: Option<String>,
    /// By hand: the job's hold (hold-42, the check's transaction_id).
    #[arg(long, value_name = "HOLD", requires = "manual_job")]
    pub transaction: Option<String>,
    /// By hand: the actual cost in USD.
    #[arg(
        long,
        value_name = "AMOUNT",
        allow_hyphen_values = true,
        requires = "manual_job"
    )]
    pub actual_cost: Option<String>,
    /// Only the runs of this job (all its array tasks and het components).
    #[arg(long = "job", value_name = "JOB", conflicts_with = "manual_job")]
    pub job: Option<String>,
    /// With --job: book the job's waiting runs to this account (for anonymised exports).
    #[arg(long, value_name = "ACCOUNT", requires = "job")]
    pub account: Option<String>,
    /// List runs that are not booked yet, and why, instead of reconciling.
    #[arg(long, conflicts_with_all = ["manual_job", "job"])]
    pub pending: bool,
}

/// `asbb recover`.
#[derive(Debug, Args)]
pub struct RecoverArgs {
    /// Ask SLURM (`sacct`) about jobs whose job-end record never came [default:
    /// recover.use_sacct].
    #[arg(long)]
    pub sacct: bool,
    /// How long after a job ended its cost may still arrive [default: recover.grace].
    #[arg(long, value_name = "SPAN")]
    pub grace: Option<String>,
}

/// `asbb analytics`.
#[derive(Debug, Subcommand)]
pub enum AnalyticsCmd {
    /// Estimate vs actual: share of runs within ±10 %, mean absolute error, by account and
    /// partition.
    Accuracy(AccuracyArgs),
}

/// `asbb analytics accuracy`.
#[derive(Debug, Args)]
pub struct AccuracyArgs {
    /// Runs reconciled in this span before --as-of.
    #[arg(long, value_name = "SPAN", default_value = "30d")]
    pub period: String,
}

fn dirs(ctx: &Ctx<'_>, a: &DirArgs) -> Result<SpoolDirs, CliError> {
    let mut d = ctx.config()?.spool_dirs();
    if let Some(p) = &a.asbx_dir {
        d.asbx = Some(p.clone());
    }
    if let Some(p) = &a.jobs_dir {
        d.jobs = Some(p.clone());
    }
    if let Some(p) = &a.plans_dir {
        d.plans = Some(p.clone());
    }
    if d.is_empty() {
        return Err(CliError::usage(
            "--asbx-dir",
            "no spool directory is configured; set [spool] in the config or pass --asbx-dir, --jobs-dir or --plans-dir",
        ));
    }
    Ok(d)
}

fn spinner(what: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    if std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} ({elapsed})").expect("valid template"),
        );
        bar.set_message(what.to_string());
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
    } else {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar
}

pub(crate) fn run(ctx: &Ctx<'_>, cmd: &SpoolCmd, out: &mut dyn Write) -> Result<i32, CliError> {
    match cmd {
        SpoolCmd::Scan(a) => scan(ctx, a, out),
        SpoolCmd::Conflicts(a) => conflicts(ctx, a, out),
        SpoolCmd::Status => status(ctx, out),
    }
}

fn scan(ctx: &Ctx<'_>, a: &ScanArgs, out: &mut dyn Write) -> Result<i32, CliError> {
    let dirs = dirs(ctx, &a.dirs)?;
    // Files age by the wall clock (their modification times are real), whatever --as-of says.
    let now = ctx.now;
    let mut conn = ctx.conn()?;
    let _checkpointer = ctx.checkpointer(&mut conn)?;
    let mut intake = Intake::new(ctx.config()?.intake_options());
    let bar = spinner("scanning");
    let report = intake
        .scan(&mut conn, &dirs, now, &|| false, &mut |r: &ScanReport| {
            bar.set_message(format!(
                "{} stored, {} duplicates, {} rejected",
                r.stored, r.duplicates, r.rejected
            ));
        })
        .map_err(|e| CliError {
            code: exit::ERROR,
            message: e.to_string(),
        })?;
    bar.finish_and_clear();
    print_scan(ctx, out, &report)?;
    Ok(scan_exit(&report))
}

/// Exit code of a scan: 4 when something needs an administrator.
pub(crate) fn scan_exit(r: &ScanReport) -> i32 {
    if r.has_problems() {
        exit::REJECTED
    } else {
        exit::OK
    }
}

fn print_scan(ctx: &Ctx<'_>, out: &mut dyn Write, r: &ScanReport) -> Result<(), CliError> {
    if ctx.cli.json {
        return print_json(out, &serde_json::to_value(r).expect("report serialises"));
    }
    writeln!(
        out,
        "spool scan: {} stored, {} duplicates, {} conflicts, {} rejected, {} not ready (retried later), {} temporary files left alone",
        r.stored, r.duplicates, r.conflicts, r.rejected, r.not_ready, r.temporary
    )?;
    if r.finished_moves > 0 {
        writeln!(
            out,
            "  {} files recorded by an interrupted scan were moved now",
            r.finished_moves
        )?;
    }
    for d in &r.directories {
        writeln!(out, "  left in place: {d} is a directory (not_a_file)")?;
    }
    for e in &r.move_errors {
        writeln!(out, "  could not move {e}; the next scan retries")?;
    }
    if r.rejected > 0 {
        writeln!(out, "  rejected files are in rejected/ beside each spool, with <name>.error.json saying why")?;
    }
    if r.conflicts > 0 {
        writeln!(out, "  see `asbb spool conflicts`")?;
    }
    Ok(())
}

fn conflicts(ctx: &Ctx<'_>, a: &ConflictsArgs, out: &mut dyn Write) -> Result<i32, CliError> {
    let mut conn = ctx.conn()?;
    if let Some(id) = a.resolve {
        let note = a.note.as_deref().unwrap_or_default();
        if note.trim().is_empty() {
            return Err(CliError::usage("--note", "say what was decided"));
        }
        let op = ctx.op()?;
        dbspool::resolve_conflict(&mut conn, id, &op.actor, note, op.recorded_at)?;
        if ctx.cli.json {
            print_json(out, &json!({ "resolved": id, "note": note }))?;
        } else {
            writeln!(out, "conflict {id} marked resolved")?;
        }
        return Ok(exit::OK);
    }
    let list = dbspool::conflicts(&mut conn, a.all)?;
    if ctx.cli.json {
        print_json(
            out,
            &serde_json::to_value(&list).expect("conflicts serialise"),
        )?;
        return Ok(exit::OK);
    }
    if list.is_empty() {
        writeln!(out, "no conflicts")?;
        return Ok(exit::OK);
    }
    let mut t = table(&[
        "ID",
        "KIND",
        "RUN",
        "FILE (in processed/)",
        "ARRIVED",
        "STORED RECORD",
        "RESOLUTION",
    ]);
    for c in &list {
        t.add_row(vec![
            Cell::new(c.id),
            Cell::new(c.kind),
            Cell::new(&c.run),
            Cell::new(&c.file),
            Cell::new(ts_short(c.seen_at)),
            Cell::new(&c.stored),
            Cell::new(c.resolution.as_deref().unwrap_or("-")),
        ]);
    }
    print_table(out, &t)?;
    writeln!(
        out,
        "The stored record was booked; the conflicting file was not. Compare the files, correct \
         the ledger with `asbb adjust`/`asbb refund` if the re-export is right, then \
         `asbb spool conflicts --resolve ID --note TEXT`."
    )?;
    Ok(exit::OK)
}

fn status(ctx: &Ctx<'_>, out: &mut dyn Write) -> Result<i32, CliError> {
    let mut conn = ctx.conn()?;
    let c = dbspool::counts(&mut conn)?;
    if ctx.cli.json {
        let files: Vec<_> = c
            .files
            .iter()
            .map(|(k, o, n)| json!({ "kind": k, "outcome": o, "files": n }))
            .collect();
        let recs: Vec<_> = c
            .cost_records
            .iter()
            .map(|(s, n)| json!({ "status": s, "records": n }))
            .collect();
        return print_json(out, &json!({ "files": files, "cost_records": recs })).map(|_| exit::OK);
    }
    let mut t = table(&["KIND", "OUTCOME", "FILES"]);
    for (k, o, n) in &c.files {
        t.add_row(vec![Cell::new(k), Cell::new(o), Cell::new(n)]);
    }
    print_table(out, &t)?;
    let mut t = table(&["COST RECORDS", "COUNT"]);
    for (s, n) in &c.cost_records {
        t.add_row(vec![Cell::new(s), Cell::new(n)]);
    }
    print_table(out, &t)?;
    Ok(exit::OK)
}

pub(crate) fn reconcile(
    ctx: &Ctx<'_>,
    a: &ReconcileArgs,
    out: &mut dyn Write,
) -> Result<i32, CliError> {
    if let (Some(job), Some(t), Some(x)) = (&a.manual_job, &a.transaction, &a.actual_cost) {
        return super::holds::reconcile_manual(ctx, job, t, x, out);
    }
    if a.pending {
        return pending(ctx, out);
    }
    let job_base = match &a.job {
        Some(j) => Some(
            JobId::parse(j)
                .map_err(|e| CliError::usage("--job", e))?
                .base() as i64,
        ),
        None => None,
    };
    let op = ctx.op()?;
    let mut conn = ctx.conn()?;
    if let (Some(acct), Some(base)) = (&a.account, job_base) {
        AccountName::new(acct).map_err(|e| CliError::usage("--account", e))?;
        let n = reconcile::assign_account(&mut conn, base, acct)?;
        if n == 0 {
            return Err(CliError::usage(
                "--job",
                format!("job {base} has no waiting runs (see `asbb reconcile --pending`)"),
            ));
        }
    }
    let policy = ctx.config()?.reconcile_policy();
    let _checkpointer = ctx.checkpointer(&mut conn)?;
    let bar = spinner("reconciling");
    let r = reconcile::reconcile(&mut conn, &op, &policy, job_base, &|| false)?;
    bar.finish_and_clear();
    if ctx.cli.json {
        print_json(out, &serde_json::to_value(&r).expect("report serialises"))?;
    } else {
        writeln!(
            out,
            "reconcile: {} runs charged against holds ({} over their hold), {} charged without a hold (unmatched), {} refunded by policy, {} waiting; ${} charged",
            r.charged, r.overruns, r.unmatched, r.refunded, r.waiting, r.charged_usd
        )?;
        if r.waiting > 0 {
            writeln!(
                out,
                "  see `asbb reconcile --pending` for what waits and why"
            )?;
        }
    }
    Ok(exit::OK)
}

fn pending(ctx: &Ctx<'_>, out: &mut dyn Write) -> Result<i32, CliError> {
    let mut conn = ctx.conn()?;
    let list = reconcile::pending(&mut conn)?;
    if ctx.cli.json {
        print_json(
            out,
            &serde_json::to_value(&list).expect("pending serialises"),
        )?;
        return Ok(exit::OK);
    }
    if list.is_empty() {
        writeln!(out, "nothing waits: every cost record is booked")?;
        return Ok(exit::OK);
    }
    let mut t = table(&[
        "ID",
        "JOB",
        "RUN",
        "ACCOUNT",
        "ACTUAL",
        "STATUS",
        "REASON",
        "WHAT TO DO",
    ]);
    for p in &list {
        t.add_row(vec![
            Cell::new(p.id),
            Cell::new(&p.job),
            Cell::new(p.run),
            Cell::new(&p.account),
            Cell::new(&p.actual),
            Cell::new(&p.status),
            Cell::new(&p.reason),
            Cell::new(if p.status == "pending" {
                "run `asbb reconcile`"
            } else {
                p.detail.as_str()
            }),
        ]);
    }
    print_table(out, &t)?;
    Ok(exit::OK)
}

pub(crate) fn recover(
    ctx: &Ctx<'_>,
    a: &RecoverArgs,
    out: &mut dyn Write,
) -> Result<i32, CliError> {
    let config = ctx.config()?;
    let mut policy = config.recover_policy();
    if let Some(g) = &a.grace {
        policy.grace = crate::config::span_or_zero(g).map_err(|e| CliError::usage("--grace", e))?;
    }
    let op = ctx.op()?;
    let mut conn = ctx.conn()?;
    let mut sacct_jobs = Vec::new();
    let mut sacct_note = None;
    if a.sacct || config.recover.use_sacct {
        let before = op.effective_at
            - chrono::Duration::from_std(policy.grace).unwrap_or(chrono::Duration::zero());
        let ids = reconcile::unresolved_jobs(&mut conn, before)?;
        if !ids.is_empty() {
            match ask_sacct(&config.recover.sacct_command, &ids) {
                Ok(j) => sacct_jobs = j,
                // SLURM being unreachable must not stop the rest of the recovery.
                Err(e) => sacct_note = Some(e),
            }
        }
    }
    let r = reconcile::recover(&mut conn, &op, &policy, &sacct_jobs)?;
    if ctx.cli.json {
        let mut v = serde_json::to_value(&r).expect("report serialises");
        v["sacct_error"] = json!(sacct_note);
        print_json(out, &v)?;
    } else {
        writeln!(
            out,
            "recover: {} holds released (cancelled before start), {} released (ended without a cost), {} released (sacct), {} expired",
            r.released_cancelled, r.released_no_cost, r.released_by_sacct, r.expired
        )?;
        for e in &r.errors {
            writeln!(out, "  {e}")?;
        }
        if let Some(n) = &sacct_note {
            writeln!(out, "  sacct: {n}")?;
        }
    }
    Ok(if r.errors.is_empty() && sacct_note.is_none() {
        exit::OK
    } else {
        exit::ERROR
    })
}

/// Runs `sacct` for these jobs and parses its parsable output. Job ids were validated when
/// stored, so they are safe as arguments (no shell is involved anyway).
fn ask_sacct(command: &str, ids: &[String]) -> Result<Vec<SacctJob>, String> {
    let output = Process::new(command)
        .env("TZ", "UTC")
        .args([
            "--noheader",
            "--parsable2",
            "--allocations",
            "--format=JobID,State,End",
            "--jobs",
        ])
        .arg(ids.join(","))
        .output()
        .map_err(|e| format!("cannot run '{command}': {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "'{command}' failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(parse_sacct(&String::from_utf8_lossy(&output.stdout)))
}

/// Parses `JobID|State|End` lines; skips what it cannot read.
pub(crate) fn parse_sacct(text: &str) -> Vec<SacctJob> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split('|');
            let id = f.next()?.trim();
            let state = f.next()?.split_whitespace().next()?.to_ascii_uppercase();
            let end = f.next().unwrap_or("").trim();
            let job = JobId::parse(id).ok()?;
            let ended_at = chrono::NaiveDateTime::parse_from_str(end, "%Y-%m-%dT%H:%M:%S")
                .ok()
                .map(|n| Utc.from_utc_datetime(&n));
            Some(SacctJob {
                job_id: job.to_string(),
                state,
                ended_at,
            })
        })
        .collect()
}

pub(crate) fn analytics(
    ctx: &Ctx<'_>,
    cmd: &AnalyticsCmd,
    out: &mut dyn Write,
) -> Result<i32, CliError> {
    let AnalyticsCmd::Accuracy(a) = cmd;
    let span = parse_span(&a.period).map_err(|e| CliError::usage("--period", e))?;
    let to: DateTime<Utc> = ctx.as_of()?;
    let from = to - span;
    let mut conn = ctx.conn()?;
    let rows = reconcile::accuracy(&mut conn, from, to)?;
    if ctx.cli.json {
        print_json(
            out,
            &json!({ "from": ts(from), "to": ts(to), "groups": rows }),
        )?;
        return Ok(exit::OK);
    }
    let total = rows.last().cloned().unwrap_or_default();
    if total.runs == 0 {
        writeln!(
            out,
            "no runs with both an estimate and an actual cost between {} and {}",
            ts_short(from),
            ts_short(to)
        )?;
        return Ok(exit::OK);
    }
    let mut t = table(&[
        "ACCOUNT",
        "PARTITION",
        "RUNS",
        "WITHIN ±10 %",
        "MEAN ABS ERROR",
        "MEAN ESTIMATE",
        "MEAN ACTUAL",
        "EST/ACTUAL",
    ]);
    for r in &rows {
        t.add_row(vec![
            Cell::new(if r.account == "*" {
                "(all)"
            } else {
                &r.account
            }),
            Cell::new(match r.partition.as_str() {
                "*" => "(all)",
                "" => "-",
                p => p,
            }),
            Cell::new(r.runs),
            Cell::new(format!(
                "{}/{} ({} %)",
                r.within_10pct, r.runs, r.within_10pct_share
            )),
            Cell::new(&r.mean_abs_error),
            Cell::new(&r.mean_estimate),
            Cell::new(&r.mean_actual),
            Cell::new(&r.bias),
        ]);
    }
    print_table(out, &t)?;
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sacct_lines_parse() {
        let j = parse_sacct("101|COMPLETED|2025-01-02T03:04:05\n102_3|CANCELLED by 0|Unknown\nbad line\n103.batch|COMPLETED|x\n");
        assert_eq!(j.len(), 2);
        assert_eq!(j[0].job_id, "101");
        assert_eq!(
            j[0].ended_at.unwrap().to_rfc3339(),
            "2025-01-02T03:04:05+00:00"
        );
        assert_eq!(j[1].state, "CANCELLED");
        assert_eq!(j[1].ended_at, None);
    }
}
