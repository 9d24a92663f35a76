//! `asbb check`: the budget check of `asbb-checkd` as a command, for sites that prefer a
//! command to HTTP (and for admins asking "would this job be allowed?").

use std::io::Write;

use clap::{Args, Subcommand};

use super::output::print_json;
use super::{CliError, Ctx};
use crate::check::request::RawCheck;
use crate::check::Failure;
use crate::db::check::{self, CheckError};
use crate::exit;

/// `asbb check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// SLURM account.
    #[arg(long)]
    pub account: String,
    /// Partition.
    #[arg(long)]
    pub partition: String,
    /// Nodes.
    #[arg(long, value_name = "N")]
    pub nodes: u64,
    /// CPUs of the whole job.
    #[arg(long, value_name = "C")]
    pub cpus: u64,
    /// GPUs of the whole job: a count or a gres string (4, gpu:a100:4).
    #[arg(long, value_name = "G")]
    pub gpus: Option<String>,
    /// GPUs per node as a gres string (gpu:2, gres/gpu:a100:4).
    #[arg(long, value_name = "GRES")]
    pub gres: Option<String>,
    /// Memory per node (64G, 512M; a bare number is MiB).
    #[arg(long, value_name = "M", conflicts_with = "memory_per_cpu")]
    pub memory: Option<String>,
    /// Memory per CPU, instead of --memory.
    #[arg(long, value_name = "M")]
    pub memory_per_cpu: Option<String>,
    /// Time limit in any SLURM spelling (90, 2:00:00, 1-12, UNLIMITED).
    #[arg(long, value_name = "T")]
    pub wall_time: String,
    /// SLURM user.
    #[arg(long)]
    pub user: Option<String>,
    /// Tasks of a job array.
    #[arg(long, value_name = "K", conflicts_with = "array")]
    pub array_size: Option<u64>,
    /// A job array spec instead of --array-size (0-9, 1-100%10).
    #[arg(long, value_name = "SPEC")]
    pub array: Option<String>,
    /// An ASBA plan id or plan file: its cost ceiling is held instead of the rate estimate.
    #[arg(long, value_name = "ID|PATH")]
    pub plan: Option<String>,
    /// Client request id: running again with the same id prints the first answer and places
    /// no second hold.
    #[arg(long, value_name = "ID")]
    pub request_id: Option<String>,
    /// Cluster name [default: check.cluster].
    #[arg(long)]
    pub cluster: Option<String>,
    /// Job id, when the job exists already (re-pricing a modified job).
    #[arg(long)]
    pub job: Option<String>,
    /// The hold this check replaces (a modified job); it is released if the new one is placed.
    #[arg(long, value_name = "HOLD")]
    pub replace_hold: Option<String>,
}

/// `asbb checks`.
#[derive(Debug, Subcommand)]
pub enum ChecksCmd {
    /// Delete the request log of checks older than check.retention whose hold is no longer
    /// open (holds and the journal stay). Safe to run twice and to kill.
    Prune(PruneArgs),
}

/// `asbb checks prune`.
#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Delete checks older than this span before --as-of [default: check.retention].
    #[arg(long, value_name = "SPAN")]
    pub older_than: Option<String>,
    /// Count what would be deleted, delete nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub(crate) fn checks(ctx: &Ctx<'_>, cmd: &ChecksCmd, out: &mut dyn Write) -> Result<i32, CliError> {
    match cmd {
        ChecksCmd::Prune(a) => prune(ctx, a, out),
    }
}

fn prune(ctx: &Ctx<'_>, a: &PruneArgs, out: &mut dyn Write) -> Result<i32, CliError> {
    let config = ctx.config()?;
    let keep = match &a.older_than {
        Some(s) => {
            let d =
                crate::config::span_or_zero(s).map_err(|e| CliError::usage("--older-than", e))?;
            let d = chrono::Duration::from_std(d)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| CliError::usage("--older-than", "give a span such as 400d"))?;
            let min = config.min_check_retention();
            if d < min {
                return Err(CliError::usage(
                    "--older-than",
                    format!(
                        "{s} is shorter than estimate.correction_window ({}): learned corrections read the checks of that window",
                        config.estimate.correction_window
                    ),
                ));
            }
            Some(d)
        }
        None => config.check_retention(),
    };
    let Some(keep) = keep else {
        if ctx.cli.json {
            print_json(
                out,
                &serde_json::json!({"pruned": false, "reason": "check.retention is 0: every check is kept"}),
            )?;
        } else {
            writeln!(
                out,
                "checks prune: check.retention is 0, every check is kept"
            )?;
        }
        return Ok(exit::OK);
    };
    let before = ctx.as_of()? - keep;
    let mut conn = ctx.conn()?;
    let r = check::prune(&mut conn, before, a.dry_run)?;
    let before = r.before.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    if ctx.cli.json {
        print_json(
            out,
            &serde_json::json!({
                "pruned": !r.dry_run,
                "dry_run": r.dry_run,
                "before": before,
                "removed": r.removed,
                "kept_open": r.kept_open,
            }),
        )?;
    } else {
        writeln!(
            out,
            "checks prune: {} checks created before {} {}; {} older ones kept (their holds are open)",
            r.removed,
            before,
            if r.dry_run { "would be removed (dry run)" } else { "removed" },
            r.kept_open
        )?;
    }
    Ok(exit::OK)
}

/// The flag for a field of the request.
fn flag(field: &str) -> String {
    match field {
        "user_id" => "--user".into(),
        "job_id" => "--job".into(),
        "body" | "job" => "JOB".into(),
        f => format!("--{}", f.replace('_', "-")),
    }
}

pub(crate) fn run(ctx: &Ctx<'_>, a: &CheckArgs, out: &mut dyn Write) -> Result<i32, CliError> {
    let raw = RawCheck {
        account: Some(a.account.clone()),
        partition: Some(a.partition.clone()),
        nodes: Some(a.nodes),
        cpus: Some(a.cpus),
        gpus: a.gpus.clone(),
        gres: a.gres.clone(),
        tres: None,
        memory: a.memory.clone(),
        memory_per_cpu: a.memory_per_cpu.clone(),
        wall_time: Some(a.wall_time.clone()),
        user: a.user.clone(),
        array: a.array.clone(),
        array_size: a.array_size,
        plan: a.plan.clone(),
        request_id: a.request_id.clone(),
        cluster: a.cluster.clone(),
        job_id: a.job.clone(),
        replace_hold: a.replace_hold.clone(),
    };
    let pricing = ctx.config()?.pricing();
    let result = match raw.validate() {
        Ok(req) => {
            let mut conn = ctx.conn()?;
            let mut op = ctx.op()?;
            op.actor = format!("asbb check ({})", op.actor);
            check::check(&mut conn, &op, &pricing, &req)
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(answer) => {
            let denied = !answer.available;
            if ctx.cli.json {
                print_json(
                    out,
                    &serde_json::to_value(&answer).expect("answers serialise"),
                )?;
            } else if denied {
                writeln!(out, "denied ({}): {}", answer.reason, answer.message)?;
            } else {
                match &answer.transaction_id {
                    Some(h) => writeln!(out, "allowed: {h}; {}", answer.message)?,
                    None => writeln!(out, "allowed: {}", answer.message)?,
                }
                let e = &answer.estimate;
                writeln!(
                    out,
                    "estimate: {} x ${} per task (at the {}{}), time {} ({})",
                    e.tasks,
                    e.per_task,
                    if e.source == "plan" {
                        "ASBA plan"
                    } else {
                        "partition's rates"
                    },
                    e.correction
                        .as_ref()
                        .map(|c| format!(", corrected x{} from {} runs", c.factor, c.runs))
                        .unwrap_or_default(),
                    e.time_limit,
                    e.time_source
                )?;
                for n in &e.notes {
                    writeln!(out, "note: {n}")?;
                }
            }
            Ok(if denied { exit::DENIED } else { exit::OK })
        }
        Err(e) => {
            let f = Failure::from(&e);
            let code = exit::ERROR;
            if ctx.cli.json {
                print_json(out, &f.body(a.request_id.as_deref()))?;
                return Ok(code);
            }
            let message = match &e {
                CheckError::Invalid { field, message } => format!("{}: {message}", flag(field)),
                other => other.to_string(),
            };
            Err(CliError { code, message })
        }
    }
}
