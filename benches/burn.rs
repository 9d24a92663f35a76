//! Allocation and burn-rate benchmark: the timer jobs `asbb allocations process` and `asbb
//! burn-rate compute` on a ledger of many accounts with three years of daily history, on SQLite
//! and (when `ASBB_TEST_POSTGRES_URL` is set) PostgreSQL, each against a baseline measured in
//! the same run.
//!
//! **The prepared ledger** (the defaults of the full run). 10,000 accounts, active 2023-01-01
//! to 2026-12-31, with three years of history, 2023-01-01 to 2025-12-31 (1,096 days). 9,000
//! accounts have a monthly allocation schedule of $300 on the 1st; 1,000 are linked, ten each,
//! to 100 grants of four 12-month budget periods ($36,000 a period, carry-over `all` and `25%`
//! alternately). Every day of the three years has charges: each account charges once every
//! `ASBB_BENCH_CHARGE_EVERY` days (2: 5,000 charges a day, 5.48 million in all; 1, the full
//! 11 million, takes longer to write than a bench run should and more disk than a shared build
//! machine has), staggered so that every day sees the same number of accounts, at its own rate of $5 to $15 a day (the plan is about $9.86 a day, so some
//! accounts overspend, some underspend, some are on track). The accounts, schedules, grants and
//! charges are written through the library (`ledger::create_account`,
//! `allocations::create_schedule`, `grants::create`/`link`, `ledger::charge_without_hold`),
//! thousands of operations per write transaction, each joining it as a savepoint. Then, as a
//! timer that never ran would, `allocations process` catches up three years (36 credits per
//! schedule; grant periods 1–3 activated, 1–2 closed) and `burn-rate compute` writes every daily
//! snapshot (one per account and day). Those two catch-ups are measured too (once, not the
//! targets). The ledger is written once, on SQLite; PostgreSQL gets the same rows (before the
//! catch-ups, which it runs itself) by a bulk copy of every table, so both backends start from
//! identical ledgers; `audit verify` checks each prepared ledger.
//!
//! **Measured**, `ASBB_BENCH_ROUNDS` rounds, each on a fresh copy of the prepared ledger (a file
//! copy on SQLite, `CREATE DATABASE … TEMPLATE` on PostgreSQL), each step in a child process of
//! its own (this binary re-executed with `ASBB_BENCH_BURN_CHILD` set) so its peak resident memory
//! (`VmHWM`) is its own:
//!
//! 1. `allocations process` as of 2026-01-01 00:05, the busiest day of the year: 9,000 monthly
//!    credits, and for the 100 grants period 3 closes (each account's unspent money carried or
//!    expired) and period 4 starts (1,000 credits). What the CLI runs: `allocations::process`
//!    then `grants::process`. Baseline: as many plain `ledger::credit` calls as the run booked
//!    journal entries, in write transactions of the same size (`SCHEDULES_PER_TRANSACTION`).
//! 2. `burn-rate compute` as of 2026-01-01 00:05, the daily timer: one snapshot per account for
//!    Dec 31, every account's and grant's figures, alerts raised, kept and resolved, and one
//!    budget status file per account (fsynced). What the CLI runs: `burn::run_compute`. Baseline:
//!    the input and output such a run cannot avoid — read every account's cached balances and
//!    the journal rows of the day, write one snapshot row per account (same rows per
//!    statement, one transaction) and one status file per account (same writer, fsynced).
//!
//! Figures: medians (min–max) over the rounds, ratio = median run ÷ median baseline, peak RSS.
//! Measured runs use the production defaults (SQLite `synchronous=full`); preparing does not.
//!
//! `cargo bench --bench burn` runs the full size. Without `--bench` (as `cargo test
//! --all-targets` runs this target) a smoke pass of a few accounts over the same three years
//! runs in seconds on SQLite; it never asserts on timings, but fails when an operation fails,
//! a run books other than the expected entries, or the audit is not clean.
//!
//! | variable | meaning | default (full / smoke) |
//! |---|---|---|
//! | `ASBB_BENCH_ACCOUNTS` | accounts | 10000 / 40 |
//! | `ASBB_BENCH_GRANT_ACCOUNTS` | of those, linked to grants (ten per grant) | 1000 / 10 |
//! | `ASBB_BENCH_DAYS` | days of history from 2023-01-01 | 1096 / 1096 |
//! | `ASBB_BENCH_CHARGE_EVERY` | days between two charges of an account | 2 / 7 |
//! | `ASBB_BENCH_ROUNDS` | measured rounds per backend | 3 / 1 |
//! | `ASBB_BENCH_BACKENDS` | `sqlite`, `postgres` or `sqlite,postgres` | both if a server is set / sqlite |
//! | `ASBB_BENCH_DIR` | where the SQLite files and status files live | the system temp dir |
//! | `ASBB_BENCH_REUSE` | `1`: keep the prepared ledgers (the SQLite file in `ASBB_BENCH_DIR`, the PostgreSQL database) and use them again on a later run of the same shape | 0 |
//! | `ASBB_BENCH_AUDIT` | `0` skips `audit verify` of the prepared ledgers | 1 |

// Rates, ratios and timings; no money is computed in floating point here.
#![allow(clippy::float_arithmetic)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use asbb::burn::status::StatusWriter;
use asbb::config::Config;
use asbb::db::allocations::{self, ProcessFilter, SCHEDULES_PER_TRANSACTION};
use asbb::db::burn::SnapshotRow;
use asbb::db::grants::{self, NewGrant};
use asbb::db::ledger::{self, ChargeUnmatched, MoneyOp, NewAccount, OpContext};
use asbb::db::schema::{accounts, burn_snapshots, journal};
use asbb::db::{
    audit, write_transaction, Backend, ConnectOptions, Create, DbConn, DbUrl, SqliteSync,
};
use asbb::domain::grant::CarryOver;
use asbb::domain::schedule::{Frequency, Schedule};
use asbb::domain::time::to_naive;
use asbb::domain::{AccountName, UsdMicros};
use chrono::{DateTime, Duration, TimeZone, Utc};
use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use diesel::sqlite::SqliteConnection;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

#[path = "support/mod.rs"]
mod support;
use support::{env_num, proc_status_kb};

/// Who the benchmark's operations are recorded as.
const ACTOR: &str = "asbb-bench";
/// The environment variable naming an admin URL of a PostgreSQL server.
const POSTGRES_ENV: &str = "ASBB_TEST_POSTGRES_URL";
/// Set (to a JSON [`ChildSpec`]) in a child process that does one measured step.
const CHILD_ENV: &str = "ASBB_BENCH_BURN_CHILD";
/// Bumped when the prepared ledger changes shape, so that a kept one is not reused.
const SHAPE_VERSION: u32 = 1;
/// Charges per write transaction while preparing (each operation in its own savepoint).
const PREP_CHARGES_PER_TRANSACTION: usize = 20_000;
/// Accounts (with their schedule or grant link) created per write transaction.
const PREP_ACCOUNTS_PER_TRANSACTION: usize = 500;
/// Accounts linked to each grant, 10 % of its budget each.
const ACCOUNTS_PER_GRANT: usize = 10;
/// The monthly allocation of a schedule account, and a grant account's share of a month.
const MONTHLY_USD: i64 = 300;
/// Rows per INSERT statement when copying the prepared ledger to PostgreSQL.
const COPY_ROWS_PER_STATEMENT: usize = 2_000;
/// Snapshot rows per INSERT in the burn baseline (as `db::burn` writes them).
const SNAPSHOT_ROWS_PER_INSERT: usize = 500;

/// The first day of the history.
fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2023, 1, 1, 0, 0, 0)
        .single()
        .expect("a valid date")
}

/// When the timers run: five minutes past midnight.
fn timer(day: DateTime<Utc>) -> DateTime<Utc> {
    day + Duration::minutes(5)
}

#[derive(Debug, Clone)]
struct Params {
    full: bool,
    accounts: usize,
    grant_accounts: usize,
    days: i64,
    every: i64,
    rounds: usize,
    backends: Vec<Backend>,
    dir: PathBuf,
    reuse: bool,
    audit: bool,
    pg_admin: Option<String>,
}

impl Params {
    fn from_env(full: bool) -> Result<Params> {
        let pg_admin = std::env::var(POSTGRES_ENV)
            .ok()
            .map(|u| u.trim().to_string())
            .filter(|u| !u.is_empty());
        let backends = match std::env::var("ASBB_BENCH_BACKENDS") {
            Ok(v) if !v.trim().is_empty() => v
                .split(',')
                .map(|b| match b.trim() {
                    "sqlite" => Ok(Backend::Sqlite),
                    "postgres" => Ok(Backend::Postgres),
                    other => Err(anyhow!("ASBB_BENCH_BACKENDS: unknown backend {other}")),
                })
                .collect::<Result<Vec<_>>>()?,
            _ if full && pg_admin.is_some() => vec![Backend::Sqlite, Backend::Postgres],
            _ => vec![Backend::Sqlite],
        };
        let accounts = env_num("ASBB_BENCH_ACCOUNTS", if full { 10_000 } else { 40 })?.max(1);
        let grant_accounts = env_num(
            "ASBB_BENCH_GRANT_ACCOUNTS",
            if full { 1_000 } else { ACCOUNTS_PER_GRANT },
        )?
        .min(accounts);
        Ok(Params {
            full,
            accounts,
            grant_accounts: grant_accounts - grant_accounts % ACCOUNTS_PER_GRANT,
            days: env_num("ASBB_BENCH_DAYS", 1096)?.max(2) as i64,
            every: env_num("ASBB_BENCH_CHARGE_EVERY", if full { 2 } else { 7 })?.max(1) as i64,
            rounds: env_num("ASBB_BENCH_ROUNDS", if full { 3 } else { 1 })?.max(1),
            backends,
            dir: std::env::var_os("ASBB_BENCH_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(std::env::temp_dir),
            reuse: std::env::var("ASBB_BENCH_REUSE").is_ok_and(|v| v.trim() == "1"),
            audit: std::env::var("ASBB_BENCH_AUDIT").map_or(true, |v| v.trim() != "0"),
            pg_admin,
        })
    }

    /// Names the prepared ledger, so a kept one is reused only for the same shape.
    fn shape(&self) -> String {
        format!(
            "a{}-g{}-d{}-e{}-v{SHAPE_VERSION}",
            self.accounts, self.grant_accounts, self.days, self.every
        )
    }

    fn schedule_accounts(&self) -> usize {
        self.accounts - self.grant_accounts
    }

    fn grants(&self) -> usize {
        self.grant_accounts / ACCOUNTS_PER_GRANT
    }

    /// The day after the history: the measured timer runs.
    fn measured_day(&self) -> DateTime<Utc> {
        t0() + Duration::days(self.days)
    }

    fn charges(&self) -> u64 {
        (0..self.days)
            .map(|d| {
                (0..self.accounts as i64)
                    .filter(|i| (d + i) % self.every == 0)
                    .count() as u64
            })
            .sum()
    }

    fn json(&self) -> Value {
        json!({
            "accounts": self.accounts,
            "schedule_accounts": self.schedule_accounts(),
            "grant_accounts": self.grant_accounts,
            "grants": self.grants(),
            "history": format!("{} to {} ({} days)", t0().format("%Y-%m-%d"),
                (self.measured_day() - Duration::days(1)).format("%Y-%m-%d"), self.days),
            "charge_every_days": self.every,
            "charges": self.charges(),
            "charges_per_day": self.accounts as f64 / self.every as f64,
            "measured_as_of": timer(self.measured_day()).to_rfc3339(),
            "rounds": self.rounds,
        })
    }
}

fn account_name(i: usize) -> String {
    format!("acct-{i:05}")
}

fn grant_number(g: usize) -> String {
    format!("BENCH-{g:04}")
}

/// Account `i`'s charge on day `d`, if it charges that day: its rate ($5–$15 a day) times the
/// days since its last charge, plus some cents.
fn charge_of(p: &Params, i: usize, d: i64) -> Option<(DateTime<Utc>, i64)> {
    if (d + i as i64) % p.every != 0 {
        return None;
    }
    let rate_usd = 5 + (i as i64 * 7) % 11;
    let cents = (d * 37 + i as i64 * 11) % 100;
    let at = t0() + Duration::days(d) + Duration::hours(9) + Duration::minutes((i % 600) as i64);
    Some((at, rate_usd * p.every * 1_000_000 + cents * 10_000))
}

fn usd(n: i64) -> Result<UsdMicros> {
    Ok(UsdMicros::from_usd(n)?)
}

// ---------------------------------------------------------------------------------------------
// Preparing the ledger

/// Accounts, schedules, grants and links, then every charge of the history.
fn write_history(conn: &mut DbConn, p: &Params) -> Result<u64> {
    let start = t0();
    let end = Utc
        .with_ymd_and_hms(2027, 1, 1, 0, 0, 0)
        .single()
        .expect("a valid date");
    let ctx = OpContext::at(ACTOR, start);
    for g in 0..p.grants() {
        grants::create(
            conn,
            &ctx,
            &NewGrant {
                number: grant_number(g),
                agency: "National Science Foundation".into(),
                program: "Benchmark".into(),
                pi: format!("Dr. PI {g}"),
                co_pis: vec![],
                institution: "Research University".into(),
                department: String::new(),
                amount: usd(MONTHLY_USD * 48 * ACCOUNTS_PER_GRANT as i64)?,
                start,
                end,
                period_months: 12,
                indirect_rate: Decimal::new(30, 2),
                federal_award_id: "47.070".into(),
                project_code: String::new(),
                cost_center: String::new(),
                carry_over: if g % 2 == 0 {
                    CarryOver::All
                } else {
                    CarryOver::Capped(Decimal::from(25))
                },
                period_budgets: None,
            },
        )?;
    }
    let ids: Vec<usize> = (0..p.accounts).collect();
    for chunk in ids.chunks(PREP_ACCOUNTS_PER_TRANSACTION) {
        write_transaction(conn, |conn| -> Result<()> {
            for &i in chunk {
                let name = account_name(i);
                ledger::create_account(
                    conn,
                    &ctx,
                    &NewAccount {
                        name: AccountName::new(&name)?,
                        display_name: format!("Benchmark account {i}"),
                        description: String::new(),
                        starts_at: start,
                        ends_at: end,
                        overdraft: UsdMicros::ZERO,
                        budget: UsdMicros::ZERO,
                    },
                )?;
                if i < p.grant_accounts {
                    grants::link(
                        conn,
                        &ctx,
                        &grant_number(i / ACCOUNTS_PER_GRANT),
                        &name,
                        Decimal::from(100 / ACCOUNTS_PER_GRANT as i64),
                    )?;
                } else {
                    let terms = Schedule::new(
                        start,
                        end,
                        usd(MONTHLY_USD)?,
                        usd(MONTHLY_USD * 48)?,
                        Frequency::Monthly,
                    )?;
                    allocations::create_schedule(conn, &ctx, &name, &terms, "")?;
                }
            }
            Ok(())
        })?;
    }
    let total = p.charges();
    let t = Instant::now();
    let mut batch: Vec<(usize, i64, DateTime<Utc>, i64)> =
        Vec::with_capacity(PREP_CHARGES_PER_TRANSACTION);
    let mut written = 0u64;
    let mut next_report = total / 10;
    let flush = |conn: &mut DbConn, batch: &mut Vec<_>| -> Result<()> {
        write_transaction(conn, |conn| -> Result<()> {
            for (i, d, at, micros) in batch.iter() {
                let name = account_name(*i);
                let key = format!("bench:{i}:{d}");
                ledger::charge_without_hold(
                    conn,
                    &OpContext::at(ACTOR, *at),
                    &ChargeUnmatched {
                        account: &name,
                        amount: UsdMicros::from_micros(*micros)?,
                        partition: Some("aws"),
                        cluster: None,
                        job_id: None,
                        user_name: None,
                        reason: "",
                        key: &key,
                    },
                )?;
            }
            Ok(())
        })?;
        batch.clear();
        Ok(())
    };
    for d in 0..p.days {
        for i in 0..p.accounts {
            if let Some((at, micros)) = charge_of(p, i, d) {
                batch.push((i, d, at, micros));
                if batch.len() == PREP_CHARGES_PER_TRANSACTION {
                    written += batch.len() as u64;
                    flush(conn, &mut batch)?;
                    if p.full && written >= next_report {
                        let s = t.elapsed().as_secs_f64();
                        eprintln!(
                            "    {written}/{total} charges, {s:.0} s, {:.0}/s",
                            written as f64 / s
                        );
                        next_report += total / 10;
                    }
                }
            }
        }
    }
    written += batch.len() as u64;
    flush(conn, &mut batch)?;
    Ok(written)
}

#[derive(QueryableByName)]
struct NameRow {
    #[diesel(sql_type = Text)]
    name: String,
}

#[derive(QueryableByName)]
struct LineRow {
    #[diesel(sql_type = BigInt)]
    rid: i64,
    #[diesel(sql_type = Text)]
    line: String,
}

/// Copies every table of a SQLite ledger into an empty, migrated PostgreSQL database, row for
/// row (SQLite's `quote()` writes each row as SQL literals), then moves the identity sequences
/// past the copied ids. Returns the rows copied.
fn copy_to_postgres(src: &Path, dst: &str) -> Result<u64> {
    let mut s = SqliteConnection::establish(&src.display().to_string())?;
    let mut d = PgConnection::establish(dst)?;
    let tables: Vec<NameRow> = diesel::sql_query(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
         AND name <> '__diesel_schema_migrations' ORDER BY rowid",
    )
    .load(&mut s)?;
    let mut copied = 0u64;
    for t in tables.iter().map(|t| t.name.as_str()) {
        let cols: Vec<NameRow> = diesel::sql_query(format!(
            "SELECT name FROM pragma_table_info('{t}') ORDER BY cid"
        ))
        .load(&mut s)?;
        let bools: Vec<NameRow> = diesel::sql_query(format!(
            "SELECT column_name::text AS name FROM information_schema.columns \
             WHERE table_name = '{t}' AND data_type = 'boolean'"
        ))
        .load(&mut d)?;
        let expr = cols
            .iter()
            .map(|c| {
                let c = &c.name;
                if bools.iter().any(|b| &b.name == c) {
                    format!(
                        "(CASE WHEN \"{c}\" IS NULL THEN 'NULL' WHEN \"{c}\" THEN 'TRUE' ELSE 'FALSE' END)"
                    )
                } else {
                    format!("quote(\"{c}\")")
                }
            })
            .collect::<Vec<_>>()
            .join(" || ',' || ");
        let list = cols
            .iter()
            .map(|c| format!("\"{}\"", c.name))
            .collect::<Vec<_>>()
            .join(", ");
        let mut last = i64::MIN;
        d.batch_execute("BEGIN")?;
        loop {
            let rows: Vec<LineRow> = diesel::sql_query(format!(
                "SELECT rowid AS rid, '(' || {expr} || ')' AS line FROM \"{t}\" \
                 WHERE rowid > {last} ORDER BY rowid LIMIT {COPY_ROWS_PER_STATEMENT}"
            ))
            .load(&mut s)?;
            let Some(l) = rows.last() else { break };
            last = l.rid;
            let mut sql = format!("INSERT INTO \"{t}\" ({list}) VALUES ");
            for (k, r) in rows.iter().enumerate() {
                if k > 0 {
                    sql.push(',');
                }
                sql.push_str(&r.line);
            }
            d.batch_execute(&sql)
                .with_context(|| format!("copy rows of {t} to PostgreSQL"))?;
            copied += rows.len() as u64;
        }
        if cols.iter().any(|c| c.name == "id") {
            d.batch_execute(&format!(
                "SELECT setval(pg_get_serial_sequence('{t}', 'id'), \
                 (SELECT COALESCE(MAX(id), 0) + 1 FROM \"{t}\"), false)"
            ))?;
        }
        d.batch_execute("COMMIT")?;
    }
    Ok(copied)
}

/// A prepared ledger that each measured round copies.
struct Store {
    backend: Backend,
    /// SQLite: the prepared file and the round's copy.
    sqlite: Option<(PathBuf, PathBuf)>,
    /// PostgreSQL: admin URL, prepared database, the round's database.
    pg: Option<(String, String, String)>,
    keep: bool,
}

impl Store {
    fn new(p: &Params, backend: Backend) -> Result<Store> {
        let shape = p.shape();
        Ok(match backend {
            Backend::Sqlite => Store {
                backend,
                sqlite: Some((
                    p.dir.join(format!("asbb-bench-burn-{shape}.db")),
                    p.dir
                        .join(format!("asbb-bench-burn-run-{}.db", std::process::id())),
                )),
                pg: None,
                keep: p.reuse,
            },
            Backend::Postgres => Store {
                backend,
                sqlite: None,
                pg: Some((
                    p.pg_admin
                        .clone()
                        .ok_or_else(|| anyhow!("{POSTGRES_ENV} is not set"))?,
                    format!("asbb_bench_burn_{}", shape.replace('-', "_")),
                    format!("asbb_bench_burn_run_{}", std::process::id()),
                )),
                keep: p.reuse,
            },
        })
    }

    fn pg_exec(&self, sql: &str) -> Result<()> {
        let (admin, _, _) = self.pg.as_ref().ok_or_else(|| anyhow!("not PostgreSQL"))?;
        let mut c =
            PgConnection::establish(admin).with_context(|| format!("connect to {POSTGRES_ENV}"))?;
        // One statement per call: CREATE and DROP DATABASE do not run inside a transaction.
        c.batch_execute(sql).with_context(|| sql.to_string())?;
        Ok(())
    }

    /// The prepared ledger's URL.
    fn url(&self) -> Result<DbUrl> {
        match (&self.sqlite, &self.pg) {
            (Some((prepared, _)), _) => Ok(DbUrl::Sqlite(prepared.clone())),
            (_, Some((admin, prepared, _))) => {
                Ok(DbUrl::Postgres(pg_url_with_database(admin, prepared)?))
            }
            _ => unreachable!("a store has a backend"),
        }
    }

    /// Whether a prepared ledger of this shape was kept by an earlier run.
    fn exists(&self) -> Result<bool> {
        match (&self.sqlite, &self.pg) {
            (Some((prepared, _)), _) => Ok(prepared.exists()),
            (_, Some((admin, prepared, _))) => {
                let mut c = PgConnection::establish(admin)?;
                let n: Vec<NameRow> = diesel::sql_query(format!(
                    "SELECT datname::text AS name FROM pg_database WHERE datname = '{prepared}'"
                ))
                .load(&mut c)?;
                Ok(!n.is_empty())
            }
            _ => unreachable!("a store has a backend"),
        }
    }

    /// An empty, migrated prepared ledger.
    fn create_empty(&self) -> Result<DbConn> {
        match (&self.sqlite, &self.pg) {
            (Some((prepared, _)), _) => remove_sqlite(prepared),
            (_, Some((_, prepared, _))) => {
                self.pg_exec(&format!(
                    "DROP DATABASE IF EXISTS \"{prepared}\" WITH (FORCE)"
                ))?;
                self.pg_exec(&format!("CREATE DATABASE \"{prepared}\""))?;
            }
            _ => unreachable!("a store has a backend"),
        }
        let mut conn = asbb::db::connect(
            &self.url()?,
            &ConnectOptions {
                sqlite_synchronous: SqliteSync::Normal,
                ..ConnectOptions::default()
            },
            Create::Allow,
        )?;
        asbb::db::migrate(&mut conn)?;
        Ok(conn)
    }

    /// The steady state a live database reaches on its own (WAL checkpointed; PostgreSQL
    /// vacuumed and analysed by autovacuum), so that it does not happen inside a measured run.
    fn settle(&self) -> Result<()> {
        let mut conn = self.connect()?;
        match &mut conn {
            DbConn::Sqlite(c) => c.batch_execute("PRAGMA wal_checkpoint(TRUNCATE)")?,
            DbConn::Postgres(c) => c.batch_execute("VACUUM ANALYZE")?,
        }
        Ok(())
    }

    fn connect(&self) -> Result<DbConn> {
        let mut conn = asbb::db::connect(&self.url()?, &ConnectOptions::default(), Create::Refuse)?;
        // A kept ledger from before a new migration: bring it up to date.
        asbb::db::migrate(&mut conn)?;
        Ok(conn)
    }

    /// A fresh copy of the prepared ledger for one round.
    fn fresh_run(&self) -> Result<DbUrl> {
        match (&self.sqlite, &self.pg) {
            (Some((prepared, run)), _) => {
                remove_sqlite(run);
                std::fs::copy(prepared, run)
                    .with_context(|| format!("copy {} to {}", prepared.display(), run.display()))?;
                Ok(DbUrl::Sqlite(run.clone()))
            }
            (_, Some((admin, prepared, run))) => {
                self.pg_exec(&format!("DROP DATABASE IF EXISTS \"{run}\" WITH (FORCE)"))?;
                self.pg_exec(&format!(
                    "CREATE DATABASE \"{run}\" TEMPLATE \"{prepared}\""
                ))?;
                Ok(DbUrl::Postgres(pg_url_with_database(admin, run)?))
            }
            _ => unreachable!("a store has a backend"),
        }
    }

    fn drop_run(&self) {
        match (&self.sqlite, &self.pg) {
            (Some((_, run)), _) => remove_sqlite(run),
            (_, Some((_, _, run))) => {
                if let Err(e) =
                    self.pg_exec(&format!("DROP DATABASE IF EXISTS \"{run}\" WITH (FORCE)"))
                {
                    eprintln!("warning: could not drop benchmark database {run}: {e:#}");
                }
            }
            _ => {}
        }
    }

    fn size_mb(&self) -> Result<f64> {
        match (&self.sqlite, &self.pg) {
            (Some((prepared, _)), _) => Ok(std::fs::metadata(prepared)?.len() as f64 / 1e6),
            (_, Some((admin, prepared, _))) => {
                #[derive(QueryableByName)]
                struct Size {
                    #[diesel(sql_type = BigInt)]
                    bytes: i64,
                }
                let mut c = PgConnection::establish(admin)?;
                let s: Size =
                    diesel::sql_query(format!("SELECT pg_database_size('{prepared}') AS bytes"))
                        .get_result(&mut c)?;
                Ok(s.bytes as f64 / 1e6)
            }
            _ => unreachable!("a store has a backend"),
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.drop_run();
        if self.keep {
            return;
        }
        match (&self.sqlite, &self.pg) {
            (Some((prepared, _)), _) => remove_sqlite(prepared),
            (_, Some((_, prepared, _))) => {
                if let Err(e) = self.pg_exec(&format!(
                    "DROP DATABASE IF EXISTS \"{prepared}\" WITH (FORCE)"
                )) {
                    eprintln!("warning: could not drop benchmark database {prepared}: {e:#}");
                }
            }
            _ => {}
        }
    }
}

fn remove_sqlite(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

/// Replaces the database of a PostgreSQL URL, keeping any `?query`.
fn pg_url_with_database(url: &str, database: &str) -> Result<String> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let (scheme, rest) = base
        .split_once("://")
        .ok_or_else(|| anyhow!("{POSTGRES_ENV} is not a postgres:// URL"))?;
    let authority = rest.split_once('/').map_or(rest, |(a, _)| a);
    Ok(match query {
        Some(q) => format!("{scheme}://{authority}/{database}?{q}"),
        None => format!("{scheme}://{authority}/{database}"),
    })
}

fn url_string(url: &DbUrl) -> String {
    match url {
        DbUrl::Sqlite(p) => p.display().to_string(),
        DbUrl::Postgres(u) => u.clone(),
    }
}

// ---------------------------------------------------------------------------------------------
// The measured steps, each in a child process

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ChildSpec {
    /// `alloc`, `burn` or `baseline`.
    step: String,
    url: String,
    as_of: DateTime<Utc>,
    status_dir: PathBuf,
    /// Baseline: the credits to book (entries the allocation run booked).
    credits: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ChildOut {
    secs: f64,
    /// Allocation run: journal entries booked, schedule credits, grant transitions, failures.
    entries: u64,
    schedule_credits: u64,
    grant_transitions: u64,
    failures: u64,
    /// Allocation run: the schedules' part of `secs` (the rest is the grants').
    schedules_secs: f64,
    /// Burn run: accounts analysed, snapshots written, status files, alerts.
    accounts: u64,
    snapshots: u64,
    status_files: u64,
    alerts_raised: u64,
    alerts_kept: u64,
    alerts_resolved: u64,
    grants: u64,
    /// Baseline: the two parts.
    alloc_baseline_secs: f64,
    burn_baseline_secs: f64,
    hwm_kb: u64,
}

fn journal_count(conn: &mut DbConn) -> Result<u64> {
    Ok(journal::table.count().get_result::<i64>(conn)? as u64)
}

fn child(spec: &ChildSpec) -> Result<ChildOut> {
    let url = DbUrl::parse(&spec.url)?;
    let mut conn = asbb::db::connect_checked(&url, &ConnectOptions::default())?;
    let ctx = OpContext::at(ACTOR, spec.as_of);
    let mut out = ChildOut::default();
    match spec.step.as_str() {
        "alloc" => {
            let before = journal_count(&mut conn)?;
            let t = Instant::now();
            let r = allocations::process(&mut conn, &ctx, &ProcessFilter::default(), false)?;
            out.schedules_secs = t.elapsed().as_secs_f64();
            let g = grants::process(&mut conn, &ctx, None, false)?;
            out.secs = t.elapsed().as_secs_f64();
            out.entries = journal_count(&mut conn)? - before;
            out.schedule_credits =
                r.periods.iter().filter(|p| p.outcome == "credited").count() as u64;
            out.grant_transitions = g.transitions.len() as u64;
            out.failures = r.failures() as u64
                + g.transitions
                    .iter()
                    .filter(|t| t.action == "failed")
                    .count() as u64;
        }
        "burn" => {
            let mut cfg = Config::default();
            cfg.burn.status_dir = spec.status_dir.display().to_string();
            let t = Instant::now();
            let s =
                asbb::burn::run_compute(&mut conn, &cfg, spec.as_of, spec.as_of, &mut |_, _| {})?;
            out.secs = t.elapsed().as_secs_f64();
            out.accounts = s.accounts;
            out.snapshots = s.days_written;
            out.status_files = s.status_files;
            out.alerts_raised = s.alerts.raised.len() as u64;
            out.alerts_kept = s.alerts.kept as u64;
            out.alerts_resolved = s.alerts.resolved as u64;
            out.grants = s.grants;
        }
        "baseline" => {
            out.alloc_baseline_secs = alloc_baseline(&mut conn, spec)?;
            out.burn_baseline_secs = burn_baseline(&mut conn, spec)?;
        }
        other => bail!("unknown step {other}"),
    }
    out.hwm_kb = proc_status_kb("VmHWM")?;
    Ok(out)
}

/// As many plain credits as the allocation run booked entries, in transactions of the size the
/// run uses, on the same accounts.
fn alloc_baseline(conn: &mut DbConn, spec: &ChildSpec) -> Result<f64> {
    let names: Vec<String> = accounts::table
        .select(accounts::name)
        .order(accounts::id)
        .load(conn)?;
    let ctx = OpContext::at(ACTOR, spec.as_of);
    let ids: Vec<u64> = (0..spec.credits).collect();
    let t = Instant::now();
    for chunk in ids.chunks(SCHEDULES_PER_TRANSACTION as usize) {
        write_transaction(conn, |conn| -> Result<()> {
            for &k in chunk {
                let key = format!("bench-baseline:{k}");
                ledger::credit(
                    conn,
                    &ctx,
                    &MoneyOp {
                        account: &names[k as usize % names.len()],
                        amount: UsdMicros::from_usd(1)?,
                        reason: "baseline",
                        key: &key,
                        job_id: None,
                        partition: None,
                    },
                )?;
            }
            Ok(())
        })?;
    }
    Ok(t.elapsed().as_secs_f64())
}

/// What a daily burn run cannot avoid: read every account's cached balances and the journal of
/// the day, write a snapshot row and a status file per account.
fn burn_baseline(conn: &mut DbConn, spec: &ChildSpec) -> Result<f64> {
    let day = spec.as_of.date_naive();
    let t = Instant::now();
    let accts: Vec<(i64, String, i64, i64, i64)> = accounts::table
        .select((
            accounts::id,
            accounts::name,
            accounts::credited_micros,
            accounts::charged_micros,
            accounts::held_micros,
        ))
        .order(accounts::id)
        .load(conn)?;
    let from = to_naive(spec.as_of - Duration::days(1));
    let rows: Vec<(i64, i64)> = journal::table
        .filter(journal::effective_at.ge(from))
        .filter(journal::effective_at.lt(to_naive(spec.as_of)))
        .select((journal::account_id, journal::charged_delta_micros))
        .load(conn)?;
    let mut spent = std::collections::HashMap::new();
    for (a, c) in rows {
        *spent.entry(a).or_insert(0i64) += c;
    }
    let naive = to_naive(spec.as_of);
    let snapshots: Vec<SnapshotRow> = accts
        .iter()
        .map(|(id, _, credited, charged, held)| SnapshotRow {
            account_id: *id,
            day,
            credited_micros: *credited,
            charged_micros: *charged,
            held_micros: *held,
            spent_micros: spent.get(id).copied().unwrap_or(0),
            period_start: naive,
            period_end: naive,
            period_budget_micros: *credited,
            period_spent_micros: *charged,
            period_expected_micros: 0,
            window_days: 30,
            window_spent_micros: 0,
            window_expected_micros: 0,
            rate_7d_micros: 0,
            rate_30d_micros: 0,
            variance_percent: None,
            burn_status: "ON_TRACK".into(),
            health_score: 100,
            health_band: "HEALTHY".into(),
            risk_level: "LOW".into(),
            depletion_date: None,
            projected_period_micros: 0,
            projected_horizon_micros: 0,
            horizon_spent_micros: *charged,
            computed_at: naive,
        })
        .collect();
    write_transaction(conn, |conn| -> Result<()> {
        for chunk in snapshots.chunks(SNAPSHOT_ROWS_PER_INSERT) {
            match conn {
                DbConn::Sqlite(c) => diesel::insert_into(burn_snapshots::table)
                    .values(chunk)
                    .execute(c)?,
                DbConn::Postgres(c) => diesel::insert_into(burn_snapshots::table)
                    .values(chunk)
                    .execute(c)?,
            };
        }
        Ok(())
    })?;
    let mut w = StatusWriter::new(&spec.status_dir)?;
    for (_, name, credited, charged, held) in &accts {
        w.write(
            name,
            &json!({
                "schema_version": 1,
                "account": name,
                "budget_limit": UsdMicros::from_stored(*credited).to_string(),
                "budget_used": UsdMicros::from_stored(*charged).to_string(),
                "budget_held": UsdMicros::from_stored(*held).to_string(),
            }),
        )?;
    }
    w.finish()?;
    Ok(t.elapsed().as_secs_f64())
}

/// Runs one measured step in a child process of its own.
fn run_child(spec: &ChildSpec) -> Result<ChildOut> {
    support::run_child(CHILD_ENV, spec, &format!("step '{}'", spec.step))
}

// ---------------------------------------------------------------------------------------------
// Statistics

#[derive(Debug, Clone, Copy)]
struct Stats {
    median: f64,
    min: f64,
    max: f64,
}

impl Stats {
    fn of(samples: &[f64]) -> Stats {
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median = if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        Stats {
            median,
            min: s[0],
            max: s[n - 1],
        }
    }

    fn show(&self) -> String {
        format!("{:.2} s ({:.2}–{:.2})", self.median, self.min, self.max)
    }

    fn json(&self) -> Value {
        json!({"median_s": round3(self.median), "min_s": round3(self.min), "max_s": round3(self.max)})
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn mb(kb: u64) -> f64 {
    (kb as f64 / 1024.0 * 10.0).round() / 10.0
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// One backend

fn backend_name(b: Backend) -> &'static str {
    match b {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    }
}

/// Builds the history on SQLite once (or reuses a kept one); returns its path and facts.
fn sqlite_history(p: &Params, facts: &mut Value) -> Result<PathBuf> {
    let path = p
        .dir
        .join(format!("asbb-bench-burn-history-{}.db", p.shape()));
    if p.reuse && path.exists() {
        eprintln!("  reusing the history in {}", path.display());
        return Ok(path);
    }
    remove_sqlite(&path);
    let mut conn = asbb::db::connect(
        &DbUrl::Sqlite(path.clone()),
        &ConnectOptions {
            sqlite_synchronous: SqliteSync::Normal,
            ..ConnectOptions::default()
        },
        Create::Allow,
    )?;
    asbb::db::migrate(&mut conn)?;
    eprintln!(
        "  writing the history: {} accounts, {} charges ...",
        p.accounts,
        p.charges()
    );
    let t = Instant::now();
    let n = write_history(&mut conn, p)?;
    let s = t.elapsed().as_secs_f64();
    if let DbConn::Sqlite(c) = &mut conn {
        c.batch_execute("PRAGMA wal_checkpoint(TRUNCATE)")?;
    }
    eprintln!("  {n} charges in {s:.0} s ({:.0}/s)", n as f64 / s);
    facts["history_written_s"] = json!(round3(s));
    facts["history_charges_per_s"] = json!((n as f64 / s).round());
    Ok(path)
}

/// Prepares (or reuses) the ledger of one backend: the history, then the catch-ups.
fn prepare(
    p: &Params,
    store: &Store,
    status_dir: &Path,
    history: &dyn Fn() -> Result<PathBuf>,
) -> Result<Value> {
    let mut facts = json!({});
    if p.reuse && store.exists()? {
        eprintln!("  reusing the prepared ledger");
        facts["reused"] = json!(true);
        let mut conn = store.connect()?;
        facts["journal_entries"] = json!(journal_count(&mut conn)?);
        facts["database_mb"] = json!(store.size_mb()?.round());
        return Ok(facts);
    }
    let src = history()?;
    let t = Instant::now();
    match store.backend {
        Backend::Sqlite => {
            let (prepared, _) = store.sqlite.as_ref().expect("sqlite store");
            remove_sqlite(prepared);
            std::fs::copy(&src, prepared)?;
            // A kept history from before a new migration: bring the copy up to date.
            drop(store.connect()?);
        }
        Backend::Postgres => {
            drop(store.create_empty()?);
            let (admin, prepared, _) = store.pg.as_ref().expect("postgres store");
            let rows = copy_to_postgres(&src, &pg_url_with_database(admin, prepared)?)?;
            eprintln!(
                "  copied {rows} rows from SQLite in {:.0} s",
                t.elapsed().as_secs_f64()
            );
            facts["copied_rows"] = json!(rows);
            facts["copy_s"] = json!(round3(t.elapsed().as_secs_f64()));
            store.settle()?;
        }
    }
    let url = url_string(&store.url()?);
    let catch_up_day = p.measured_day() - Duration::days(1);
    eprintln!(
        "  catching up: allocations process, then burn-rate compute, as of {} ...",
        timer(catch_up_day).format("%Y-%m-%d %H:%M")
    );
    let a = run_child(&ChildSpec {
        step: "alloc".into(),
        url: url.clone(),
        as_of: timer(catch_up_day),
        status_dir: status_dir.to_path_buf(),
        credits: 0,
    })?;
    if a.failures > 0 {
        bail!(
            "the allocation catch-up failed for {} schedules",
            a.failures
        );
    }
    let b = run_child(&ChildSpec {
        step: "burn".into(),
        url,
        as_of: timer(catch_up_day),
        status_dir: status_dir.to_path_buf(),
        credits: 0,
    })?;
    eprintln!(
        "  catch-up: {} entries in {:.1} s; {} snapshots in {:.1} s",
        a.entries, a.secs, b.snapshots, b.secs
    );
    facts["catch_up"] = json!({
        "as_of": timer(catch_up_day).to_rfc3339(),
        "allocations_process_s": round3(a.secs),
        "allocations_entries": a.entries,
        "allocations_peak_rss_mb": mb(a.hwm_kb),
        "burn_compute_s": round3(b.secs),
        "burn_snapshots": b.snapshots,
        "burn_peak_rss_mb": mb(b.hwm_kb),
    });
    store.settle()?;
    let mut conn = store.connect()?;
    let entries = journal_count(&mut conn)?;
    facts["journal_entries"] = json!(entries);
    facts["snapshots"] = json!(burn_snapshots::table.count().get_result::<i64>(&mut conn)?);
    if p.audit {
        let t = Instant::now();
        let r = audit::verify(&mut conn, None, &mut |_| {})?;
        if !r.is_clean() {
            bail!(
                "audit verify found {} discrepancies in the prepared ledger: {:?}",
                r.discrepancies.len(),
                r.discrepancies.iter().take(5).collect::<Vec<_>>()
            );
        }
        eprintln!(
            "  audit verify: {} entries clean in {:.0} s",
            r.entries,
            t.elapsed().as_secs_f64()
        );
        facts["audit_s"] = json!(round3(t.elapsed().as_secs_f64()));
    }
    facts["database_mb"] = json!(store.size_mb()?.round());
    facts["prepare_s"] = json!(round3(t.elapsed().as_secs_f64()));
    Ok(facts)
}

/// A backend's prepared ledger and the status directory its timer has written.
struct Prepared {
    store: Store,
    status_dir: PathBuf,
    facts: Value,
}

fn prepare_backend(
    p: &Params,
    backend: Backend,
    history: &dyn Fn() -> Result<PathBuf>,
) -> Result<Prepared> {
    let name = backend_name(backend);
    eprintln!("{name}: preparing (load {})", loadavg());
    let store = Store::new(p, backend)?;
    // The status directory of a timer that has run before: every round rewrites existing files
    // (replacing a file costs more than creating one).
    let status_dir = p.dir.join(format!(
        "asbb-bench-burn-status-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&status_dir);
    let facts = prepare(p, &store, &status_dir, history)?;
    if std::fs::read_dir(&status_dir).map_or(0, |d| d.count()) < p.accounts {
        let mut w = StatusWriter::new(&status_dir)?;
        for i in 0..p.accounts {
            w.write(&account_name(i), &json!({"schema_version": 1}))?;
        }
        w.finish()?;
    }
    Ok(Prepared {
        store,
        status_dir,
        facts,
    })
}

fn bench_backend(p: &Params, prepared: Prepared) -> Result<Value> {
    let Prepared {
        store,
        status_dir,
        facts,
    } = prepared;
    let name = backend_name(store.backend);
    eprintln!("{name}: measuring (load {})", loadavg());
    let as_of = timer(p.measured_day());
    let mut rounds: Vec<(ChildOut, ChildOut, ChildOut)> = Vec::new();
    for round in 0..p.rounds {
        let url = url_string(&store.fresh_run()?);
        let spec = |step: &str, credits: u64| ChildSpec {
            step: step.into(),
            url: url.clone(),
            as_of,
            status_dir: status_dir.clone(),
            credits,
        };
        let a = run_child(&spec("alloc", 0))?;
        let b = run_child(&spec("burn", 0))?;
        let base = run_child(&spec("baseline", a.entries))?;
        eprintln!(
            "  round {}: allocations process {:.2} s ({:.2} s schedules; {} entries; baseline {:.2} s), burn-rate compute {:.2} s ({} snapshots, {} status files, alerts +{} ={} -{}; baseline {:.2} s); load {}",
            round + 1, a.secs, a.schedules_secs, a.entries, base.alloc_baseline_secs, b.secs, b.snapshots, b.status_files,
            b.alerts_raised, b.alerts_kept, b.alerts_resolved, base.burn_baseline_secs, loadavg()
        );
        check_round(p, &a, &b)?;
        if !p.full {
            let mut conn =
                asbb::db::connect_checked(&DbUrl::parse(&url)?, &ConnectOptions::default())?;
            let r = audit::verify(&mut conn, None, &mut |_| {})?;
            if !r.is_clean() {
                bail!("audit verify after the round: {:?}", r.discrepancies);
            }
        }
        store.drop_run();
        rounds.push((a, b, base));
    }
    let _ = std::fs::remove_dir_all(&status_dir);
    let stats = |f: &dyn Fn(&(ChildOut, ChildOut, ChildOut)) -> f64| {
        Stats::of(&rounds.iter().map(f).collect::<Vec<_>>())
    };
    let alloc = stats(&|r| r.0.secs);
    let alloc_base = stats(&|r| r.2.alloc_baseline_secs);
    let burn = stats(&|r| r.1.secs);
    let burn_base = stats(&|r| r.2.burn_baseline_secs);
    let peak = |f: &dyn Fn(&(ChildOut, ChildOut, ChildOut)) -> u64| {
        rounds.iter().map(f).max().unwrap_or(0)
    };
    let last = rounds.last().expect("at least one round");
    println!(
        "{name}: allocations process {} vs baseline {} = {:.2}x, peak RSS {} MB; burn-rate compute {} vs baseline {} = {:.2}x, peak RSS {} MB",
        alloc.show(), alloc_base.show(), alloc.median / alloc_base.median.max(1e-9), mb(peak(&|r| r.0.hwm_kb)),
        burn.show(), burn_base.show(), burn.median / burn_base.median.max(1e-9), mb(peak(&|r| r.1.hwm_kb)),
    );
    Ok(json!({
        "backend": name,
        "prepared": facts,
        "allocations_process": {
            "run": alloc.json(), "baseline": alloc_base.json(),
            "ratio": round3(alloc.median / alloc_base.median.max(1e-9)),
            "entries": last.0.entries, "schedule_credits": last.0.schedule_credits,
            "grant_transitions": last.0.grant_transitions,
            "peak_rss_mb": mb(peak(&|r| r.0.hwm_kb)),
        },
        "burn_rate_compute": {
            "run": burn.json(), "baseline": burn_base.json(),
            "ratio": round3(burn.median / burn_base.median.max(1e-9)),
            "accounts": last.1.accounts, "grants": last.1.grants, "snapshots": last.1.snapshots,
            "status_files": last.1.status_files,
            "alerts": {"raised": last.1.alerts_raised, "kept": last.1.alerts_kept, "resolved": last.1.alerts_resolved},
            "peak_rss_mb": mb(peak(&|r| r.1.hwm_kb)),
        },
        "baseline_peak_rss_mb": mb(peak(&|r| r.2.hwm_kb)),
    }))
}

/// What every round must have done, whatever it cost.
fn check_round(p: &Params, a: &ChildOut, b: &ChildOut) -> Result<()> {
    if a.failures > 0 {
        bail!("allocations process failed for {} schedules", a.failures);
    }
    // On the day after three years every schedule credits its month; on the grants' period
    // boundary every grant account gets its new period's credit.
    if p.days == 1096 {
        if a.schedule_credits != p.schedule_accounts() as u64 {
            bail!(
                "allocations process credited {} schedules, expected {}",
                a.schedule_credits,
                p.schedule_accounts()
            );
        }
        let credits = a.entries - a.schedule_credits;
        if credits < p.grant_accounts as u64 {
            bail!(
                "the grants booked {credits} entries, expected at least {} period credits",
                p.grant_accounts
            );
        }
    }
    if b.accounts != p.accounts as u64 || b.status_files != p.accounts as u64 {
        bail!(
            "burn-rate compute analysed {} accounts and wrote {} status files, expected {}",
            b.accounts,
            b.status_files,
            p.accounts
        );
    }
    if b.snapshots != p.accounts as u64 {
        bail!(
            "burn-rate compute wrote {} snapshots, expected one per account ({})",
            b.snapshots,
            p.accounts
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        return match serde_json::from_str::<ChildSpec>(&spec)
            .map_err(anyhow::Error::from)
            .and_then(|s| child(&s))
        {
            Ok(out) => {
                println!("RESULT {}", serde_json::to_string(&out).expect("json"));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e:#}");
                ExitCode::FAILURE
            }
        };
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("burn benchmark failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let full = std::env::args().any(|a| a == "--bench");
    let p = Params::from_env(full)?;
    std::fs::create_dir_all(&p.dir)?;
    eprintln!("shape: {}", serde_json::to_string(&p.json())?);
    let built = std::cell::RefCell::new(None::<PathBuf>);
    let facts = std::cell::RefCell::new(json!({}));
    let history = || -> Result<PathBuf> {
        if let Some(h) = built.borrow().as_ref() {
            return Ok(h.clone());
        }
        let h = sqlite_history(&p, &mut facts.borrow_mut())?;
        *built.borrow_mut() = Some(h.clone());
        Ok(h)
    };
    // One backend at a time, so that the disk holds the history, one prepared ledger and one
    // round's copy of it at most (the prepared ledger is removed after its rounds unless
    // ASBB_BENCH_REUSE=1); the SQLite history goes once the last backend is prepared.
    let mut results = Vec::new();
    for (k, &b) in p.backends.iter().enumerate() {
        let prepared = prepare_backend(&p, b, &history)?;
        if k + 1 == p.backends.len() {
            if let Some(h) = built.borrow_mut().take() {
                remove_sqlite(&h);
            }
        }
        results.push(bench_backend(&p, prepared)?);
    }
    let out = json!({
        "shape": p.json(),
        "history": facts.into_inner(),
        "machine": {"cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0), "load_at_end": loadavg()},
        "results": results,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
