//! `asbb report`: finance reports into a directory, and `--scheduled`, the timer job that
//! writes the daily and month-end sets.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::output::{print_json, print_table, table};
use super::{CliError, Ctx};
use crate::domain::time::DateInput;
use crate::exit;
use crate::report::templates::Templates;
use crate::report::{self, Format, Kind, Manifest, Options, ReportError, Request, Session};

/// `asbb report`.
#[derive(Debug, Args)]
#[command(
    after_help = "Kinds: journal, grant-statement (grant), account-statement (account), usage, \
holds (outstanding-holds), refunds (refunds-register), accuracy (estimate-vs-actual), alerts.\n\
Without --as-of a report covers every entry in the ledger; with it, the ledger as it stood then.\n\
Examples:\n  asbb report grant-statement --grant NSF-2025-12345 --format csv,html --out reports/\n  \
asbb report journal --from 2026-03-01 --to 2026-03-31 --out reports/\n  asbb report --scheduled"
)]
pub struct ReportArgs {
    /// What to report (see below); not with --scheduled.
    #[arg(value_name = "KIND", required_unless_present = "scheduled", value_parser = parse_kind)]
    pub kind: Option<Kind>,
    /// Only this grant's money (its linked accounts while they were linked).
    #[arg(long, value_name = "GRANT", conflicts_with = "account")]
    pub grant: Option<String>,
    /// Only this account.
    #[arg(long, value_name = "ACCOUNT")]
    pub account: Option<String>,
    /// Only this budget period of the grant (or of the account's grant).
    #[arg(long, value_name = "N", conflicts_with_all = ["from", "to"])]
    pub period: Option<i64>,
    /// Entries effective on or after this day (YYYY-MM-DD, UTC) or instant.
    #[arg(long, value_name = "DATE")]
    pub from: Option<String>,
    /// Entries effective up to this day, inclusive (YYYY-MM-DD, UTC), or before this instant.
    #[arg(long, value_name = "DATE")]
    pub to: Option<String>,
    /// Formats, comma-separated: csv, html, json [default: csv; --scheduled: reports.formats].
    #[arg(long, value_name = "LIST")]
    pub format: Option<String>,
    /// Directory to write into (created if missing) [--scheduled: reports.dir].
    #[arg(long, value_name = "DIR", required_unless_present = "scheduled")]
    pub out: Option<PathBuf>,
    /// Site templates replacing the shipped ones [default: reports.templates_dir].
    #[arg(long, value_name = "DIR")]
    pub templates: Option<PathBuf>,
    /// The timer job: write every daily and month-end set that is due and missing.
    #[arg(long, conflicts_with_all = ["kind", "grant", "account", "period", "from", "to"])]
    pub scheduled: bool,
}

fn parse_kind(s: &str) -> Result<Kind, String> {
    Kind::parse(s).ok_or_else(|| {
        format!(
            "'{s}' is not a report kind (one of: {})",
            Kind::ALL.map(|k| k.as_str()).join(", ")
        )
    })
}

impl From<ReportError> for CliError {
    fn from(e: ReportError) -> Self {
        match e {
            ReportError::Ledger(l) => l.into(),
            other => CliError {
                code: exit::ERROR,
                message: other.to_string(),
            },
        }
    }
}

fn progress() -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    if std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} {pos} journal entries read ({elapsed})")
                .expect("valid template"),
        );
        bar.set_message("writing reports:");
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
    } else {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar
}

fn day_arg(
    flag: &str,
    text: Option<&str>,
    end: bool,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, CliError> {
    text.map(|t| {
        DateInput::parse(t)
            .map(|d| if end { d.end_exclusive() } else { d.start() })
            .map_err(|e| CliError::usage(flag, e))
    })
    .transpose()
}

pub(crate) fn run(ctx: &Ctx<'_>, a: &ReportArgs, out: &mut dyn Write) -> Result<i32, CliError> {
    let cfg = ctx.config()?;
    let site = a.templates.clone().or_else(|| cfg.report_templates_dir());
    let templates = Templates::load(site.as_deref()).map_err(ReportError::from)?;
    let opts = Options {
        csv_bom: cfg.reports.csv_bom,
    };
    let formats = match &a.format {
        Some(f) => Some(Format::parse_list(f).map_err(|e| CliError::usage("--format", e))?),
        None => None,
    };
    let mut conn = ctx.conn()?;
    let bar = progress();
    let mut tick = |n: u64| bar.inc(n);
    if a.scheduled {
        let mut plan = cfg.report_plan(a.out.clone());
        if let Some(f) = formats {
            plan.formats = f;
        }
        let now = ctx.as_of()?;
        let sets = report::scheduled::run(&mut conn, &templates, opts, &plan, now, &mut tick)?;
        bar.finish_and_clear();
        if ctx.cli.json {
            return print_json(out, &serde_json::json!({ "dir": plan.dir, "sets": sets }))
                .map(|_| exit::OK);
        }
        if sets.is_empty() {
            writeln!(
                out,
                "no complete day or month to report yet (the ledger has no entries before {})",
                super::output::ts(now)
            )?;
            return Ok(exit::OK);
        }
        let mut t = table(&["set", "period", "status", "files", "directory"]);
        for s in &sets {
            t.add_row(vec![
                s.set.to_string(),
                s.label.clone(),
                s.status.to_string(),
                if s.status == "written" {
                    s.files.to_string()
                } else {
                    String::new()
                },
                s.path.display().to_string(),
            ]);
        }
        print_table(out, &t)?;
        return Ok(exit::OK);
    }
    let kind = a
        .kind
        .ok_or_else(|| CliError::usage("KIND", "name a report kind"))?;
    let dir = a
        .out
        .clone()
        .ok_or_else(|| CliError::usage("--out", "name the directory to write into"))?;
    if a.period.is_some_and(|p| p < 1) {
        return Err(CliError::usage(
            "--period",
            "budget periods are numbered from 1",
        ));
    }
    let as_of = match &ctx.cli.as_of {
        Some(_) => Some(ctx.as_of()?),
        None => None,
    };
    let req = Request {
        kind,
        grant: a.grant.clone(),
        account: a.account.clone(),
        period: a.period,
        from: day_arg("--from", a.from.as_deref(), false)?,
        to: day_arg("--to", a.to.as_deref(), true)?,
        as_of,
        formats: formats.unwrap_or_else(|| vec![Format::Csv]),
    };
    report::ensure_dir(&dir)?;
    let mut session = Session::new(&mut conn, &templates, opts)?;
    let written = session.write(&req, &dir, None, &mut tick)?;
    let mark = session.mark(as_of)?;
    let readme = report::write_readme(&dir, &templates)?;
    let manifest_name = format!("{}.manifest.json", written.base);
    let manifest = Manifest::new(
        ctx.now,
        as_of,
        &mark,
        &templates,
        vec![written],
        vec![readme],
    );
    let info = manifest.write(&dir, &manifest_name)?;
    bar.finish_and_clear();
    if ctx.cli.json {
        let mut v = serde_json::to_value(&manifest).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.insert("dir".into(), serde_json::json!(dir));
            o.insert("manifest".into(), serde_json::json!(info.name));
        }
        return print_json(out, &v).map(|_| exit::OK);
    }
    let mut t = table(&["file", "rows", "bytes", "sha256"]);
    for f in &manifest.files {
        t.add_row(vec![
            f.name.clone(),
            f.rows.map(|r| r.to_string()).unwrap_or_default(),
            f.bytes.to_string(),
            f.sha256.clone(),
        ]);
    }
    print_table(out, &t)?;
    writeln!(
        out,
        "written to {} (checksums in {})",
        dir.display(),
        info.name
    )?;
    Ok(exit::OK)
}
