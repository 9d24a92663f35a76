//! `asbb check`: the budget check of `asbb-checkd` as a command, for sites that prefer a
//! command to HTTP (and for admins asking "would this job be allowed?").

use std::io::Write;

use clap::Args;

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
