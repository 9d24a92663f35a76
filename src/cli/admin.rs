//! `asbb audit …`, `asbb database …`, `asbb config …`.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use super::output::print_json;
use super::{CliError, Ctx};
use crate::config::{self, DEFAULT_CONFIG_TOML};
use crate::db::{self, audit, Create};
use crate::exit;

/// `asbb audit`.
#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Replay the journal: hash chain, balances, partitions and holds must all agree.
    /// Exits 5 when anything does not.
    Verify(VerifyArgs),
}

/// `asbb audit verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Only this account.
    #[arg(long)]
    pub account: Option<String>,
}

/// `asbb database`.
#[derive(Debug, Subcommand)]
pub enum DatabaseCmd {
    /// Create the database if needed and apply every pending migration.
    Migrate,
    /// Show applied and pending migrations.
    Status,
}

/// `asbb config`.
#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Write a commented default configuration.
    Init(InitArgs),
    /// Check the configuration (file and ASBB_* overrides); names each bad key.
    Validate,
    /// Print the effective configuration.
    Show,
}

/// `asbb config init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Where to write it [default: standard output].
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Overwrite an existing file.
    #[arg(long)]
    pub force: bool,
}

fn progress_bar(label: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    if std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} {pos} entries ({per_sec})")
                .expect("valid template"),
        );
        bar.set_message(label.to_string());
    } else {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar
}

pub(crate) fn audit(ctx: &Ctx<'_>, cmd: &AuditCmd, out: &mut dyn Write) -> Result<i32, CliError> {
    let AuditCmd::Verify(a) = cmd;
    let mut conn = ctx.conn()?;
    let bar = progress_bar("replaying journal");
    let report = audit::verify(&mut conn, a.account.as_deref(), &mut |n| {
        bar.set_position(n)
    })?;
    bar.finish_and_clear();
    if ctx.cli.json {
        print_json(out, &json!({"clean": report.is_clean(), "report": report}))?;
    } else {
        writeln!(
            out,
            "checked {} account(s), {} journal entries, {} hold(s)",
            report.accounts, report.entries, report.holds
        )?;
        if report.is_clean() {
            writeln!(out, "ledger verified: hash chains intact, balances, partitions and holds agree with the journal")?;
            writeln!(
                out,
                "chain heads for safekeeping elsewhere: `asbb audit verify --json` (chain_heads)"
            )?;
        } else {
            writeln!(out, "{} discrepancy(ies):", report.discrepancies.len())?;
            for d in &report.discrepancies {
                let at = match (d.entry_id, d.hold_id) {
                    (Some(e), _) => format!(" entry {e}"),
                    (None, Some(h)) => format!(" hold-{h}"),
                    _ => String::new(),
                };
                writeln!(out, "  [{}] {}{at}: {}", d.kind, d.account, d.detail)?;
            }
        }
    }
    Ok(if report.is_clean() {
        exit::OK
    } else {
        exit::AUDIT_FAILED
    })
}

pub(crate) fn database(
    ctx: &Ctx<'_>,
    cmd: &DatabaseCmd,
    out: &mut dyn Write,
) -> Result<i32, CliError> {
    let url = ctx.db_url()?;
    let opts = ctx.config()?.connect_options();
    match cmd {
        DatabaseCmd::Migrate => {
            if let db::DbUrl::Sqlite(path) = &url {
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    if !parent.is_dir() {
                        return Err(CliError::usage(
                            "--database-url",
                            format!(
                                "directory {} does not exist; create it first",
                                parent.display()
                            ),
                        ));
                    }
                }
            }
            let mut conn = db::connect(&url, &opts, Create::Allow)?;
            let applied = db::migrate(&mut conn)?;
            if ctx.cli.json {
                print_json(
                    out,
                    &json!({"database": url.redacted(), "backend": url.backend().as_str(), "applied": applied}),
                )?;
            } else if applied.is_empty() {
                writeln!(
                    out,
                    "{} database {} is up to date",
                    url.backend().as_str(),
                    url.redacted()
                )?;
            } else {
                writeln!(
                    out,
                    "applied {} migration(s) to {} database {}",
                    applied.len(),
                    url.backend().as_str(),
                    url.redacted()
                )?;
            }
        }
        DatabaseCmd::Status => {
            let mut conn = db::connect(&url, &opts, Create::Refuse)?;
            let s = db::schema_status(&mut conn)?;
            if ctx.cli.json {
                print_json(
                    out,
                    &json!({"database": url.redacted(), "backend": url.backend().as_str(), "applied": s.applied, "pending": s.pending, "unknown": s.unknown}),
                )?;
            } else {
                writeln!(
                    out,
                    "{} database {}",
                    url.backend().as_str(),
                    url.redacted()
                )?;
                writeln!(
                    out,
                    "applied: {}",
                    if s.applied.is_empty() {
                        "none".into()
                    } else {
                        s.applied.join(", ")
                    }
                )?;
                writeln!(
                    out,
                    "pending: {}",
                    if s.pending.is_empty() {
                        "none".into()
                    } else {
                        s.pending.join(", ")
                    }
                )?;
                if !s.unknown.is_empty() {
                    writeln!(
                        out,
                        "unknown to this asbb (newer): {}",
                        s.unknown.join(", ")
                    )?;
                }
            }
            if !s.unknown.is_empty() || !s.pending.is_empty() {
                return Ok(exit::SCHEMA);
            }
        }
    }
    Ok(exit::OK)
}

pub(crate) fn config(ctx: &Ctx<'_>, cmd: &ConfigCmd, out: &mut dyn Write) -> Result<i32, CliError> {
    match cmd {
        ConfigCmd::Init(a) => match &a.output {
            None => {
                write!(out, "{DEFAULT_CONFIG_TOML}")?;
            }
            Some(path) => {
                if path.exists() && !a.force {
                    return Err(CliError::usage(
                        "--output",
                        format!("{} exists; pass --force to overwrite it", path.display()),
                    ));
                }
                std::fs::write(path, DEFAULT_CONFIG_TOML).map_err(|e| {
                    CliError::usage(
                        "--output",
                        format!("failed to write {}: {e}", path.display()),
                    )
                })?;
                writeln!(out, "wrote the default configuration to {}", path.display())?;
            }
        },
        ConfigCmd::Validate => {
            let loaded = ctx.config()?;
            let source = ctx
                .loaded
                .as_ref()
                .and_then(|l| l.path.as_ref())
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| {
                    format!(
                        "built-in defaults ({} not found)",
                        config::DEFAULT_CONFIG_PATH
                    )
                });
            let overrides = ctx
                .loaded
                .as_ref()
                .map(|l| l.overrides.clone())
                .unwrap_or_default();
            if ctx.cli.json {
                print_json(
                    out,
                    &json!({"valid": true, "source": source, "env_overrides": overrides}),
                )?;
            } else {
                writeln!(out, "configuration is valid (from {source})")?;
                if !overrides.is_empty() {
                    writeln!(
                        out,
                        "overridden from the environment: {}",
                        overrides.join(", ")
                    )?;
                }
            }
            let _ = loaded;
        }
        ConfigCmd::Show => {
            let mut c = ctx.config()?.clone();
            if let Ok(u) = db::DbUrl::parse(&c.database.url) {
                c.database.url = u.redacted();
            }
            if ctx.cli.json {
                print_json(out, &serde_json::to_value(&c).expect("config serialises"))?;
            } else {
                write!(
                    out,
                    "{}",
                    toml::to_string_pretty(&c).expect("config serialises")
                )?;
            }
        }
    }
    Ok(exit::OK)
}
