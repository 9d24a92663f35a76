//! Spool benchmark: intake + reconcile of a generated spool of cost files with their holds, end
//! to end, on SQLite and (when `ASBB_TEST_POSTGRES_URL` is set) PostgreSQL, against a baseline
//! in the same run that only reads, hashes, classifies, parses and renames the same files.
//!
//! Printed, per backend (and per SQLite `synchronous` level) and backlog size:
//!
//! 1. the baseline, files/s with no database: list the directory as the intake does, then per
//!    file `files::classify`, `files::read` (read + SHA-256 + metadata), `cost::read`, and
//!    `files::move_into` `processed/` (the rename the intake does);
//! 2. intake only: `Intake::scan` with the production defaults (1,000 files per transaction),
//!    files/s;
//! 3. reconcile only: `reconcile::reconcile` with the default policy (500 records per
//!    transaction), records/s;
//! 4. end to end: scan, then reconcile, wall time for the whole backlog, files/s, and its ratio
//!    to the baseline at the same backlog;
//! 5. peak resident memory (`VmHWM`) of the process doing 2–4, at two backlog sizes (by default
//!    100,000 and 10,000 files), so that growth with the backlog shows. Also the client's CPU
//!    time over the wall time: what is not CPU of ours is fsync (SQLite) or the server and its
//!    round trips (PostgreSQL);
//! 6. a second reconcile right after each run, with nothing left to do: what every later
//!    reconcile pays for the runs already charged.
//!
//! Each measured run is a child process (this binary re-executed with `ASBB_BENCH_SPOOL_CHILD`
//! set), so its peak memory is its own, and every run starts from the same state: a copy of a
//! ledger prepared once per backend and backlog (accounts and one hold per matched job, placed
//! with `ledger::place_hold`, not timed) — a file copy on SQLite, `CREATE DATABASE … TEMPLATE`
//! on PostgreSQL — and a freshly written spool of the same files. After each run the parent
//! checks that every file was stored and moved to `processed/`, every record charged (against
//! the hold of its own job, or unmatched), no hold left open, and (smoke) that `audit verify` is
//! clean.
//!
//! The spool: one `job_<ID>_cost.json` per job with a Go-like flat body; 96 % of the jobs have
//! a hold, a fifth of those name it (`"budget_transaction_id":"hold-<n>"`), the others are found
//! by job id; 4 % have none and are charged unmatched; 1 % ended `NODE_FAIL` and are refunded;
//! some cost more than their hold.
//!
//! `cargo bench --bench spool` runs the full sizes. Without `--bench` (as `cargo test
//! --all-targets` runs this target) it runs a small smoke pass on SQLite in a few seconds; it
//! never asserts on timings, but exits non-zero when a file is not taken in, a run is not
//! charged as expected, or the audit is not clean.
//!
//! Environment overrides:
//!
//! | variable | meaning | default (full / smoke) |
//! |---|---|---|
//! | `ASBB_BENCH_FILES` | the large backlog: cost files, one per job | 100000 / 400 |
//! | `ASBB_BENCH_SMALL_FILES` | the small backlog (`0` skips it) | 10000 / 100 |
//! | `ASBB_BENCH_ROUNDS` | database runs per configuration at the large backlog | 1 / 1 |
//! | `ASBB_BENCH_SMALL_ROUNDS` | database runs per configuration at the small backlog | 3 / 1 |
//! | `ASBB_BENCH_BASELINE_ROUNDS` | baseline runs per backlog | 3 / 3 |
//! | `ASBB_BENCH_ACCOUNTS` | budget accounts the jobs are spread over | 100 / 10 |
//! | `ASBB_BENCH_BACKENDS` | `sqlite`, `postgres` or `sqlite,postgres` | both if a server is set / sqlite |
//! | `ASBB_BENCH_SYNC` | SQLite `synchronous` levels measured (`full`, `normal`, `full,normal`) | full,normal |
//! | `ASBB_BENCH_AUDIT` | `1` runs `audit verify` after every run, `0` never | 0 / 1 |
//! | `ASBB_BENCH_DIR` | where the spool and the SQLite files live | the system temp dir |
//! | `ASBB_BENCH_KEEP` | `1` keeps the work directory and databases afterwards | 0 |
//! | `ASBB_BENCH_CHECKPOINTER` | `0`: no checkpointer thread beside the SQLite writer (`asbb spool scan`, `asbb reconcile` and `asbb-spoold` run one; see `db::checkpoint`), for comparison | 1 |
//!
//! One round at 100,000 files per configuration keeps the full run (both backends, both SQLite
//! levels, both backlogs) at about twelve minutes on two cores (five on SQLite alone; most of the
//! rest is PostgreSQL's reconcile and placing its 96,000 holds); the medians with min–max come
//! from the rounds at the small backlog and from the baseline.

// Rates, ratios and percentages of timings; no money is computed in floating point here.
#![allow(clippy::float_arithmetic)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use asbb::db::ledger::{self, HoldOutcome, HoldRequest, NewAccount, OpContext};
use asbb::db::reconcile::{self, ReconcilePolicy};
use asbb::db::schema::{cost_records, holds, spool_files};
use asbb::db::{audit, Backend, ConnectOptions, Create, DbConn, DbUrl, SqliteSync};
use asbb::domain::{AccountName, UsdMicros};
use asbb::spool::files::{self, Name, NameFacts};
use asbb::spool::intake::{Intake, IntakeOptions, SpoolDirs};
use asbb::spool::{cost, Kind, Limits, Parsed};
use chrono::{DateTime, TimeZone, Utc};
use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::prelude::*;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

#[path = "support/mod.rs"]
mod support;
use support::{cpu_us, env_num, proc_status_kb};

/// Who the benchmark's operations are recorded as.
const ACTOR: &str = "asbb-bench";
/// The environment variable naming an admin URL of a PostgreSQL server.
const POSTGRES_ENV: &str = "ASBB_TEST_POSTGRES_URL";
/// Set (to a JSON [`ChildSpec`]) in the child process that does one measured run.
const CHILD_ENV: &str = "ASBB_BENCH_SPOOL_CHILD";
/// Holds placed per transaction while preparing a ledger (each in its own savepoint).
const PREP_BATCH: usize = 2000;
/// The first job number.
const FIRST_JOB: u64 = 1_000_000;

fn at(day: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, day, 0, 0, 0)
        .single()
        .expect("valid date")
}

/// Holds are placed on 2 January, costs reconciled on the 3rd.
fn prep_ctx() -> OpContext {
    OpContext::at(ACTOR, at(2))
}

fn reconcile_ctx() -> OpContext {
    OpContext::at(ACTOR, at(3))
}

// ---------------------------------------------------------------------------------------------
// Parameters

struct Params {
    full: bool,
    files: usize,
    small_files: usize,
    rounds: usize,
    small_rounds: usize,
    baseline_rounds: usize,
    accounts: usize,
    backends: Vec<Backend>,
    syncs: Vec<SqliteSync>,
    audit: bool,
    keep: bool,
    dir: PathBuf,
    pg_admin: Option<String>,
}

fn env_list(name: &str) -> Option<Vec<String>> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .map(|v| v.split(',').map(|s| s.trim().to_lowercase()).collect())
}

impl Params {
    fn from_env(full: bool) -> Result<Params> {
        let pg_admin = std::env::var(POSTGRES_ENV)
            .ok()
            .map(|u| u.trim().to_string())
            .filter(|u| !u.is_empty());
        let backends = match env_list("ASBB_BENCH_BACKENDS") {
            Some(list) => list
                .iter()
                .map(|b| match b.as_str() {
                    "sqlite" => Ok(Backend::Sqlite),
                    "postgres" | "postgresql" => Ok(Backend::Postgres),
                    other => Err(anyhow!(
                        "ASBB_BENCH_BACKENDS: unknown backend '{other}' (sqlite, postgres)"
                    )),
                })
                .collect::<Result<Vec<_>>>()?,
            None if full && pg_admin.is_some() => vec![Backend::Sqlite, Backend::Postgres],
            None => vec![Backend::Sqlite],
        };
        if backends.contains(&Backend::Postgres) && pg_admin.is_none() {
            bail!("ASBB_BENCH_BACKENDS names postgres but {POSTGRES_ENV} is not set");
        }
        let syncs = match env_list("ASBB_BENCH_SYNC") {
            Some(list) => list
                .iter()
                .map(|s| {
                    parse_sync(s)
                        .ok_or_else(|| anyhow!("ASBB_BENCH_SYNC: '{s}': use full or normal"))
                })
                .collect::<Result<Vec<_>>>()?,
            None => vec![SqliteSync::Full, SqliteSync::Normal],
        };
        let flag = |name: &str, default: bool| {
            std::env::var(name)
                .map(|v| v.trim() == "1")
                .unwrap_or(default)
        };
        let p = Params {
            full,
            files: env_num("ASBB_BENCH_FILES", if full { 100_000 } else { 400 })?,
            small_files: env_num("ASBB_BENCH_SMALL_FILES", if full { 10_000 } else { 100 })?,
            rounds: env_num("ASBB_BENCH_ROUNDS", 1)?,
            small_rounds: env_num("ASBB_BENCH_SMALL_ROUNDS", if full { 3 } else { 1 })?,
            baseline_rounds: env_num("ASBB_BENCH_BASELINE_ROUNDS", 3)?,
            accounts: env_num("ASBB_BENCH_ACCOUNTS", if full { 100 } else { 10 })?,
            backends,
            syncs,
            audit: flag("ASBB_BENCH_AUDIT", !full),
            keep: flag("ASBB_BENCH_KEEP", false),
            dir: std::env::var_os("ASBB_BENCH_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(std::env::temp_dir),
            pg_admin,
        };
        if p.files == 0
            || p.rounds == 0
            || p.baseline_rounds == 0
            || p.accounts == 0
            || p.syncs.is_empty()
        {
            bail!("files, rounds, baseline rounds, accounts and SQLite levels must be at least 1");
        }
        if p.small_files > 0 && p.small_rounds == 0 {
            bail!("ASBB_BENCH_SMALL_ROUNDS must be at least 1 (or ASBB_BENCH_SMALL_FILES=0)");
        }
        Ok(p)
    }

    /// The backlog sizes, small first, with their rounds.
    fn sizes(&self) -> Vec<(usize, usize)> {
        let mut v = Vec::new();
        if self.small_files > 0 && self.small_files != self.files {
            v.push((self.small_files, self.small_rounds));
        }
        v.push((self.files, self.rounds));
        v
    }
}

fn parse_sync(s: &str) -> Option<SqliteSync> {
    match s.trim() {
        "full" => Some(SqliteSync::Full),
        "normal" => Some(SqliteSync::Normal),
        _ => None,
    }
}

fn sync_name(s: SqliteSync) -> &'static str {
    match s {
        SqliteSync::Full => "full",
        SqliteSync::Normal => "normal",
    }
}

// ---------------------------------------------------------------------------------------------
// The workload

/// One job of the spool.
#[derive(Debug, Clone)]
struct Job {
    id: u64,
    account: usize,
    /// Whether a hold was placed for it.
    held: bool,
    /// Whether its cost file names the hold (else it is found by job id).
    by_ref: bool,
    state: &'static str,
    estimate_usd: i64,
    /// The cost, e.g. `12.345678`.
    cost: String,
}

fn account_name(i: usize) -> String {
    format!("acct{i}")
}

fn plan(files: usize, accounts: usize) -> Vec<Job> {
    (0..files)
        .map(|j| {
            let held = j % 25 != 7;
            let state = match j % 100 {
                3 => "NODE_FAIL",
                11 | 47 | 83 => "FAILED",
                29 | 61 => "TIMEOUT",
                71 => "CANCELLED",
                _ => "COMPLETED",
            };
            Job {
                id: FIRST_JOB + j as u64,
                account: j % accounts,
                held,
                by_ref: held && j % 5 == 0,
                state,
                // Held: 1.2 x 10..29 USD; costs 0..24.99: about one in eight overruns.
                estimate_usd: 10 + (j % 20) as i64,
                cost: format!("{}.{:06}", (j * 37) % 25, (j * 7919) % 1_000_000),
            }
        })
        .collect()
}

/// What the benchmark expects a run to have done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Expect {
    files: u64,
    held: u64,
    unmatched: u64,
    refunded: u64,
}

fn expect(jobs: &[Job]) -> Expect {
    let held = jobs.iter().filter(|j| j.held).count() as u64;
    Expect {
        files: jobs.len() as u64,
        held,
        unmatched: jobs.len() as u64 - held,
        refunded: jobs.iter().filter(|j| j.state == "NODE_FAIL").count() as u64,
    }
}

/// The hold ids a fresh ledger assigns: 1, 2, … in job order (the baseline's files use them).
fn sequential_hold_ids(jobs: &[Job]) -> Vec<Option<i64>> {
    let mut next = 0;
    jobs.iter()
        .map(|j| {
            j.held.then(|| {
                next += 1;
                next
            })
        })
        .collect()
}

fn cost_body(j: &Job, hold: Option<i64>) -> String {
    let reference = match (j.by_ref, hold) {
        (true, Some(id)) => format!(r#","budget_transaction_id":"hold-{id}""#),
        _ => String::new(),
    };
    let start_min = j.id % 60;
    let hours = 1 + j.id % 5;
    format!(
        r#"{{"job_id":"{}","account":"{}","actual_cost":{},"job_state":"{}","user_id":"u{}","partition":"aws","started_at":"2026-01-02T00:{start_min:02}:00Z","completed_at":"2026-01-02T{hours:02}:{start_min:02}:00Z","instance_types":["c5.xlarge"]{reference}}}"#,
        j.id,
        account_name(j.account),
        j.cost,
        j.state,
        j.id % 50,
    )
}

/// (Re)writes the spool directory: nothing but one file per job.
fn write_spool(dir: &Path, jobs: &[Job], hold_ids: &[Option<i64>]) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("remove {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    for (j, hold) in jobs.iter().zip(hold_ids) {
        let path = dir.join(format!("job_{}_cost.json", j.id));
        std::fs::write(&path, cost_body(j, *hold))
            .with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}

/// Checks that the spool holds nothing but `processed/` with `n` files in it.
fn check_spool_moved(dir: &Path, n: u64) -> Result<()> {
    let mut left = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let name = e?.file_name().to_string_lossy().into_owned();
        if name != files::PROCESSED_DIR {
            left.push(name);
        }
    }
    if !left.is_empty() {
        bail!(
            "{} entries left in the spool, e.g. {:?}",
            left.len(),
            left.first()
        );
    }
    let moved = std::fs::read_dir(dir.join(files::PROCESSED_DIR))?.count() as u64;
    if moved != n {
        bail!("{moved} of {n} files in processed/");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The baseline

/// List, classify, read (with SHA-256 and metadata), parse and move every file — what the
/// intake does per file, without a database.
fn baseline(dir: &Path) -> Result<(u64, Duration)> {
    let start = Instant::now();
    let lim = Limits::default();
    let max_size = IntakeOptions::default().max_file_size;
    let mut n = 0;
    for entry in walkdir::WalkDir::new(dir)
        .min_depth(1)
        .max_depth(1)
        .follow_links(false)
    {
        let entry = entry?;
        let Some(name) = entry.path().file_name() else {
            continue;
        };
        let name = name.to_string_lossy().into_owned();
        let job = match files::classify(Kind::Cost, &name) {
            Name::Expected(NameFacts::Cost(job)) => job,
            Name::Ours => continue,
            other => bail!("{name}: unexpected name ({other:?})"),
        };
        let a = files::read(Kind::Cost, entry.path(), max_size)
            .map_err(|e| anyhow!("{name}: {e:?}"))?;
        match cost::read(Some(&job), a.text.as_deref().unwrap_or(""), &lim) {
            Parsed::Record(r) => {
                std::hint::black_box(r);
            }
            other => bail!("{name} does not parse: {other:?}"),
        }
        files::move_into(&a.path, files::PROCESSED_DIR, &a.file_key)?;
        n += 1;
    }
    Ok((n, start.elapsed()))
}

// ---------------------------------------------------------------------------------------------
// Databases

/// A prepared ledger (accounts and holds) that each run copies.
struct Store {
    label: String,
    /// SQLite: the prepared file and the run's copy.
    sqlite: Option<(PathBuf, PathBuf)>,
    /// PostgreSQL: admin URL, template database, run database.
    pg: Option<(String, String, String)>,
    keep: bool,
}

impl Store {
    /// Creates and prepares the ledger for `jobs`; returns it with the hold id of each job.
    fn prepare(
        p: &Params,
        backend: Backend,
        work: &Path,
        jobs: &[Job],
    ) -> Result<(Store, Vec<Option<i64>>)> {
        let n = jobs.len();
        let store = match backend {
            Backend::Sqlite => Store {
                label: format!("sqlite {n}"),
                sqlite: Some((
                    work.join(format!("ledger-{n}.db")),
                    work.join(format!("run-{n}.db")),
                )),
                pg: None,
                keep: p.keep,
            },
            Backend::Postgres => {
                let admin = p
                    .pg_admin
                    .clone()
                    .ok_or_else(|| anyhow!("{POSTGRES_ENV} is not set"))?;
                let base = format!("asbb_bench_spool_{}_{n}", std::process::id());
                let store = Store {
                    label: format!("postgres {n}"),
                    sqlite: None,
                    pg: Some((admin, base.clone(), format!("{base}_run"))),
                    keep: p.keep,
                };
                store.pg_exec(&format!("DROP DATABASE IF EXISTS \"{base}\" WITH (FORCE)"))?;
                store.pg_exec(&format!("CREATE DATABASE \"{base}\""))?;
                store
            }
        };
        let url = match (&store.sqlite, &store.pg) {
            (Some((template, _)), _) => {
                remove_sqlite(template);
                DbUrl::Sqlite(template.clone())
            }
            (_, Some((admin, template, _))) => {
                DbUrl::Postgres(pg_url_with_database(admin, template)?)
            }
            _ => unreachable!("a store has a backend"),
        };
        // Preparing is not measured: SQLite without an fsync per commit.
        let mut conn = asbb::db::connect(
            &url,
            &ConnectOptions {
                sqlite_synchronous: SqliteSync::Normal,
                ..ConnectOptions::default()
            },
            Create::Allow,
        )?;
        asbb::db::migrate(&mut conn)?;
        let ids = prepare_ledger(&mut conn, jobs, p.accounts)?;
        // The steady state a live database reaches on its own, so it does not happen mid-run.
        match &mut conn {
            DbConn::Sqlite(c) => c.batch_execute("PRAGMA wal_checkpoint(TRUNCATE)")?,
            DbConn::Postgres(c) => c.batch_execute("VACUUM ANALYZE")?,
        }
        drop(conn);
        Ok((store, ids))
    }

    fn pg_exec(&self, sql: &str) -> Result<()> {
        let (admin, _, _) = self.pg.as_ref().ok_or_else(|| anyhow!("not PostgreSQL"))?;
        let mut c =
            PgConnection::establish(admin).with_context(|| format!("connect to {POSTGRES_ENV}"))?;
        // One statement per call: neither CREATE nor DROP DATABASE runs inside a transaction,
        // and PostgreSQL runs a multi-statement string as one.
        c.batch_execute(sql).with_context(|| sql.to_string())?;
        Ok(())
    }

    /// A fresh copy of the prepared ledger for one run.
    fn fresh_run(&self) -> Result<DbUrl> {
        match (&self.sqlite, &self.pg) {
            (Some((template, run)), _) => {
                remove_sqlite(run);
                std::fs::copy(template, run)
                    .with_context(|| format!("copy {} to {}", template.display(), run.display()))?;
                Ok(DbUrl::Sqlite(run.clone()))
            }
            (_, Some((admin, template, run))) => {
                self.pg_exec(&format!("DROP DATABASE IF EXISTS \"{run}\" WITH (FORCE)"))?;
                self.pg_exec(&format!(
                    "CREATE DATABASE \"{run}\" TEMPLATE \"{template}\""
                ))?;
                Ok(DbUrl::Postgres(pg_url_with_database(admin, run)?))
            }
            _ => unreachable!("a store has a backend"),
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if self.keep {
            if self.pg.is_some() {
                eprintln!("kept the {} databases", self.label);
            }
            return;
        }
        if let Some((_, template, run)) = &self.pg {
            for name in [run, template] {
                if let Err(e) =
                    self.pg_exec(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                {
                    eprintln!("warning: could not drop benchmark database {name}: {e:#}");
                }
            }
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

/// Accounts, and a hold for every job that has one; returns each job's hold id.
fn prepare_ledger(conn: &mut DbConn, jobs: &[Job], accounts: usize) -> Result<Vec<Option<i64>>> {
    asbb::db::write_transaction(conn, |conn| -> Result<()> {
        for i in 0..accounts {
            ledger::create_account(
                conn,
                &prep_ctx(),
                &NewAccount {
                    name: AccountName::new(&account_name(i))?,
                    display_name: format!("Benchmark project {i}"),
                    description: "created by benches/spool.rs".into(),
                    starts_at: at(1),
                    ends_at: Utc
                        .with_ymd_and_hms(2100, 1, 1, 0, 0, 0)
                        .single()
                        .expect("valid date"),
                    overdraft: UsdMicros::ZERO,
                    // Far more than the jobs spend: no hold is denied.
                    budget: UsdMicros::from_usd(1_000_000_000)?,
                },
            )
            .with_context(|| format!("create account {}", account_name(i)))?;
        }
        Ok(())
    })?;
    let mut ids = Vec::with_capacity(jobs.len());
    for chunk in jobs.chunks(PREP_BATCH) {
        asbb::db::write_transaction(conn, |conn| -> Result<()> {
            for j in chunk {
                if !j.held {
                    ids.push(None);
                    continue;
                }
                let job = j.id.to_string();
                let key = format!("bench-hold-{job}");
                let account = account_name(j.account);
                let out = ledger::place_hold(
                    conn,
                    &prep_ctx(),
                    &HoldRequest {
                        account: &account,
                        partition: None,
                        estimate: UsdMicros::from_usd(j.estimate_usd)?,
                        buffer: Decimal::new(12, 1),
                        cluster: None,
                        job_id: Some(&job),
                        user_name: None,
                        expires_at: None,
                        tasks: None,
                        key: &key,
                    },
                )
                .with_context(|| format!("place the hold of job {job}"))?;
                match out {
                    HoldOutcome::Placed { hold, .. } => ids.push(Some(hold.id)),
                    HoldOutcome::Denied(d) => bail!("hold of job {job} denied: {}", d.message),
                }
            }
            Ok(())
        })?;
    }
    Ok(ids)
}

/// Checks the ledger after a run: every record charged, the held ones against the hold of their
/// own job, no hold left open, every file recorded; with `audit`, `audit verify` is clean.
fn check_ledger(url: &DbUrl, e: Expect, audit: bool) -> Result<()> {
    let mut conn = asbb::db::connect_checked(url, &ConnectOptions::default())?;
    let files: i64 = spool_files::table
        .filter(spool_files::outcome.eq("stored"))
        .count()
        .get_result(&mut conn)?;
    let charged: i64 = cost_records::table
        .filter(cost_records::status.eq("charged"))
        .count()
        .get_result(&mut conn)?;
    let with_hold: i64 = cost_records::table
        .filter(cost_records::hold_id.is_not_null())
        .count()
        .get_result(&mut conn)?;
    let wrong_hold: i64 = cost_records::table
        .inner_join(holds::table.on(holds::id.nullable().eq(cost_records::hold_id)))
        .filter(holds::job_id.ne(cost_records::job_id.nullable()))
        .count()
        .get_result(&mut conn)?;
    let open: i64 = holds::table
        .filter(holds::state.eq("open"))
        .count()
        .get_result(&mut conn)?;
    let got = (files, charged, with_hold, wrong_hold, open);
    let want = (e.files as i64, e.files as i64, e.held as i64, 0, 0);
    if got != want {
        bail!(
            "ledger after the run: (stored files, charged records, records with a hold, \
             records charged to another job's hold, open holds) = {got:?}, expected {want:?}"
        );
    }
    if audit {
        let report = audit::verify(&mut conn, None, &mut |_| {})?;
        if !report.is_clean() {
            bail!(
                "audit verify found {} discrepancies, e.g. {:?}",
                report.discrepancies.len(),
                report.discrepancies.first()
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The measured run, in a child process

#[derive(Debug, Serialize, Deserialize)]
struct ChildSpec {
    url: String,
    dir: PathBuf,
    sync: String,
}

/// What a child run reports (times in microseconds, memory in kB).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ChildOut {
    stored: u64,
    other_files: u64,
    batches: u64,
    charged: u64,
    unmatched: u64,
    overruns: u64,
    refunded: u64,
    waiting: u64,
    reconcile_batches: u64,
    scan_us: u64,
    reconcile_us: u64,
    total_us: u64,
    scan_cpu_us: u64,
    reconcile_cpu_us: u64,
    hwm_start_kb: u64,
    hwm_after_scan_kb: u64,
    hwm_end_kb: u64,
    idle_reconcile_us: u64,
}

fn child(spec: &ChildSpec) -> Result<ChildOut> {
    let hwm_start_kb = proc_status_kb("VmHWM")?;
    let sync = parse_sync(&spec.sync).ok_or_else(|| anyhow!("bad sync {}", spec.sync))?;
    let mut conn = asbb::db::connect_checked(
        &DbUrl::parse(&spec.url)?,
        &ConnectOptions {
            sqlite_synchronous: sync,
            ..ConnectOptions::default()
        },
    )?;
    // As the commands and the daemon do: on SQLite a thread checkpoints the WAL beside us.
    let checkpointer = if std::env::var("ASBB_BENCH_CHECKPOINTER").is_ok_and(|v| v.trim() == "0") {
        None
    } else {
        asbb::db::checkpoint::Checkpointer::start(
            &DbUrl::parse(&spec.url)?,
            &ConnectOptions {
                sqlite_synchronous: sync,
                ..ConnectOptions::default()
            },
            asbb::db::checkpoint::INTERVAL,
        )?
    };
    if let Some(c) = &checkpointer {
        c.relieve(&mut conn)?;
    }
    let dirs = SpoolDirs {
        asbx: Some(spec.dir.clone()),
        jobs: None,
        plans: None,
    };
    let cpu0 = cpu_us();
    let t0 = Instant::now();
    let scan = Intake::new(IntakeOptions::default()).scan(
        &mut conn,
        &dirs,
        Utc::now(),
        &|| false,
        &mut |_| {},
    )?;
    let t1 = Instant::now();
    let cpu1 = cpu_us();
    let hwm_after_scan_kb = proc_status_kb("VmHWM")?;
    let rec = reconcile::reconcile(
        &mut conn,
        &reconcile_ctx(),
        &ReconcilePolicy::default(),
        None,
        &|| false,
    )?;
    let t2 = Instant::now();
    let cpu2 = cpu_us();
    let hwm_end_kb = proc_status_kb("VmHWM")?;
    // A second pass with nothing left to do: what every later reconcile (`asbb-spoold` runs one
    // after each scan) pays for the runs already charged.
    let idle = reconcile::reconcile(
        &mut conn,
        &reconcile_ctx(),
        &ReconcilePolicy::default(),
        None,
        &|| false,
    )?;
    let idle_reconcile_us = t2.elapsed().as_micros() as u64;
    if idle.charged + idle.unmatched + idle.waiting != 0 {
        bail!("a second reconcile found work: {idle:?}");
    }
    Ok(ChildOut {
        stored: scan.stored,
        other_files: scan.handled() - scan.stored + scan.not_ready + scan.temporary,
        batches: scan.batches,
        charged: rec.charged,
        unmatched: rec.unmatched,
        overruns: rec.overruns,
        refunded: rec.refunded,
        waiting: rec.waiting,
        reconcile_batches: rec.batches,
        scan_us: (t1 - t0).as_micros() as u64,
        reconcile_us: (t2 - t1).as_micros() as u64,
        total_us: (t2 - t0).as_micros() as u64,
        scan_cpu_us: cpu1.saturating_sub(cpu0),
        reconcile_cpu_us: cpu2.saturating_sub(cpu1),
        hwm_start_kb,
        hwm_after_scan_kb,
        hwm_end_kb,
        idle_reconcile_us,
    })
}

/// Runs one measured run in a child process of its own.
fn run_child(spec: &ChildSpec) -> Result<ChildOut> {
    support::run_child(CHILD_ENV, spec, "run")
}

// ---------------------------------------------------------------------------------------------
// Statistics

#[derive(Debug, Clone, Copy)]
struct Stats {
    median: f64,
    min: f64,
    max: f64,
    n: usize,
}

impl Stats {
    fn of(samples: &[f64]) -> Stats {
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        if n == 0 {
            return Stats {
                median: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
                n,
            };
        }
        let median = if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        Stats {
            median,
            min: s[0],
            max: s[n - 1],
            n,
        }
    }

    /// `median` or `median (min–max)`.
    fn show(&self) -> String {
        if self.n > 1 {
            format!("{:.0} ({:.0}-{:.0})", self.median, self.min, self.max)
        } else {
            format!("{:.0}", self.median)
        }
    }

    fn json(&self) -> Value {
        json!({ "median": round1(self.median), "min": round1(self.min), "max": round1(self.max), "n": self.n })
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn rate(n: u64, micros: u64) -> f64 {
    n as f64 / (micros.max(1) as f64 / 1e6)
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// The runs

/// The measured runs of one configuration at one backlog.
struct Row {
    backend: Backend,
    config: String,
    files: usize,
    runs: Vec<ChildOut>,
    baseline: f64,
}

impl Row {
    fn stats(&self, f: impl Fn(&ChildOut) -> f64) -> Stats {
        Stats::of(&self.runs.iter().map(f).collect::<Vec<_>>())
    }

    fn intake(&self) -> Stats {
        self.stats(|r| rate(r.stored, r.scan_us))
    }

    fn reconcile(&self) -> Stats {
        self.stats(|r| rate(r.charged + r.unmatched, r.reconcile_us))
    }

    fn e2e(&self) -> Stats {
        self.stats(|r| rate(self.files as u64, r.total_us))
    }

    fn idle_ms(&self) -> Stats {
        self.stats(|r| r.idle_reconcile_us as f64 / 1000.0)
    }

    fn peak_kb(&self) -> u64 {
        self.runs.iter().map(|r| r.hwm_end_kb).max().unwrap_or(0)
    }

    fn cpu_share(&self) -> (f64, f64) {
        let share = |cpu: u64, us: u64| cpu as f64 / us.max(1) as f64 * 100.0;
        let s = self.stats(|r| share(r.scan_cpu_us, r.scan_us));
        let r = self.stats(|r| share(r.reconcile_cpu_us, r.reconcile_us));
        (s.median, r.median)
    }

    fn json(&self) -> Value {
        let (scan_cpu, rec_cpu) = self.cpu_share();
        let last = self.runs.last();
        json!({
            "backend": self.backend.as_str(),
            "config": self.config,
            "files": self.files,
            "rounds": self.runs.len(),
            "intake_files_per_s": self.intake().json(),
            "reconcile_records_per_s": self.reconcile().json(),
            "end_to_end_files_per_s": self.e2e().json(),
            "baseline_files_per_s": round1(self.baseline),
            "ratio_to_baseline": (self.e2e().median / self.baseline * 1000.0).round() / 1000.0,
            "peak_rss_kb": self.peak_kb(),
            "rss_start_kb": last.map(|r| r.hwm_start_kb),
            "peak_rss_after_scan_kb": last.map(|r| r.hwm_after_scan_kb),
            "client_cpu_percent": { "scan": round1(scan_cpu), "reconcile": round1(rec_cpu) },
            "idle_reconcile_ms": self.idle_ms().json(),
            "overruns": last.map(|r| r.overruns),
            "intake_transactions": last.map(|r| r.batches),
            "reconcile_transactions": last.map(|r| r.reconcile_batches),
        })
    }
}

/// One measured run: a fresh ledger copy, a fresh spool, the child, the checks.
fn one_run(
    p: &Params,
    store: &Store,
    spool: &Path,
    jobs: &[Job],
    ids: &[Option<i64>],
    sync: SqliteSync,
) -> Result<ChildOut> {
    let url = store.fresh_run()?;
    write_spool(spool, jobs, ids)?;
    let out = run_child(&ChildSpec {
        url: url_string(&url),
        dir: spool.to_path_buf(),
        sync: sync_name(sync).into(),
    })?;
    let e = expect(jobs);
    let got = (
        out.stored,
        out.other_files,
        out.charged,
        out.unmatched,
        out.refunded,
        out.waiting,
    );
    let want = (e.files, 0, e.held, e.unmatched, e.refunded, 0);
    if got != want {
        bail!(
            "{}: (stored, other files, charged, unmatched, refunded, waiting) = {got:?}, expected {want:?}",
            store.label
        );
    }
    check_spool_moved(spool, e.files)?;
    check_ledger(&url, e, p.audit)?;
    Ok(out)
}

fn bench_backend(
    p: &Params,
    backend: Backend,
    work: &Path,
    baselines: &[(usize, Stats)],
) -> Result<Vec<Row>> {
    let configs: Vec<(SqliteSync, String)> = match backend {
        Backend::Sqlite => p
            .syncs
            .iter()
            .map(|&s| (s, format!("synchronous={}", sync_name(s))))
            .collect(),
        Backend::Postgres => vec![(SqliteSync::Full, "server defaults".into())],
    };
    let spool = work.join("spool");
    let mut rows = Vec::new();
    for (files, rounds) in p.sizes() {
        let jobs = plan(files, p.accounts);
        let t = Instant::now();
        let (store, ids) = Store::prepare(p, backend, work, &jobs)?;
        eprintln!(
            "  {}: {} accounts and {} holds prepared in {:.1} s",
            store.label,
            p.accounts,
            expect(&jobs).held,
            t.elapsed().as_secs_f64()
        );
        if ids != sequential_hold_ids(&jobs) {
            eprintln!(
                "  note: {} assigned hold ids out of job order; its files name those ids",
                store.label
            );
        }
        let mut runs: Vec<Vec<ChildOut>> = vec![Vec::new(); configs.len()];
        for round in 0..rounds {
            // Alternate which configuration goes first, so that drift hits them alike.
            for k in 0..configs.len() {
                let c = if round % 2 == 0 {
                    k
                } else {
                    configs.len() - 1 - k
                };
                let t = Instant::now();
                let out = one_run(p, &store, &spool, &jobs, &ids, configs[c].0)
                    .with_context(|| format!("{} {}", store.label, configs[c].1))?;
                eprintln!(
                    "  {} {} round {}/{rounds}: scan {:.1} s, reconcile {:.1} s, peak RSS {:.1} MB ({:.1} s with setup and checks)",
                    store.label,
                    configs[c].1,
                    round + 1,
                    out.scan_us as f64 / 1e6,
                    out.reconcile_us as f64 / 1e6,
                    mb(out.hwm_end_kb),
                    t.elapsed().as_secs_f64()
                );
                runs[c].push(out);
            }
        }
        let baseline = baselines
            .iter()
            .find(|(n, _)| *n == files)
            .map_or(f64::NAN, |(_, s)| s.median);
        for ((_, config), runs) in configs.iter().zip(runs) {
            rows.push(Row {
                backend,
                config: config.clone(),
                files,
                runs,
                baseline,
            });
        }
    }
    Ok(rows)
}

fn print_rows(rows: &[Row]) {
    println!(
        "\nintake + reconcile, one child process per run; medians (min-max) over rounds; \
         CPU % = this process's CPU time / wall time:"
    );
    println!(
        "  {:<9} {:<20} {:>7} {:>6} {:>20} {:>20} {:>20} {:>8} {:>8} {:>11}",
        "backend",
        "config",
        "files",
        "rounds",
        "intake files/s",
        "reconcile recs/s",
        "end-to-end files/s",
        "x base",
        "peak MB",
        "CPU % s/r"
    );
    for r in rows {
        let (scan_cpu, rec_cpu) = r.cpu_share();
        println!(
            "  {:<9} {:<20} {:>7} {:>6} {:>20} {:>20} {:>20} {:>8.3} {:>8.1} {:>11}",
            r.backend.as_str(),
            r.config,
            r.files,
            r.runs.len(),
            r.intake().show(),
            r.reconcile().show(),
            r.e2e().show(),
            r.e2e().median / r.baseline,
            mb(r.peak_kb()),
            format!("{scan_cpu:.0}/{rec_cpu:.0}"),
        );
    }
}

fn print_memory(p: &Params, rows: &[Row]) {
    println!(
        "\npeak RSS (VmHWM) of the measured process against backlog size \
         (for the largest backlog also at process start and after the scan):"
    );
    for r in rows.iter().filter(|r| r.files == p.files) {
        let small = rows
            .iter()
            .find(|s| s.backend == r.backend && s.config == r.config && s.files != p.files);
        let start = r.runs.last().map_or(0, |o| o.hwm_start_kb);
        let after_scan = r.runs.last().map_or(0, |o| o.hwm_after_scan_kb);
        let compare = small.map_or(String::new(), |s| {
            format!("{:>7} files: {:>5.1} MB   ", s.files, mb(s.peak_kb()))
        });
        let growth = small.map_or(String::new(), |s| {
            format!("growth {:+.1} MB   ", mb(r.peak_kb()) - mb(s.peak_kb()))
        });
        println!(
            "  {:<9} {:<20} {compare}{:>7} files: {:>5.1} MB   {growth}(start {:.1} MB, after scan {:.1} MB)",
            r.backend.as_str(),
            r.config,
            r.files,
            mb(r.peak_kb()),
            mb(start),
            mb(after_scan),
        );
    }
    println!(
        "\na second reconcile right after the run, with nothing left to do (ms; what every later \
         reconcile pays for the runs already charged):"
    );
    for r in rows.iter().filter(|r| r.files == p.files) {
        let small = rows
            .iter()
            .find(|s| s.backend == r.backend && s.config == r.config && s.files != p.files);
        let compare = small.map_or(String::new(), |s| {
            format!("{:>7} charged: {:>8.1} ms   ", s.files, s.idle_ms().median)
        });
        println!(
            "  {:<9} {:<20} {compare}{:>7} charged: {:>8.1} ms",
            r.backend.as_str(),
            r.config,
            r.files,
            r.idle_ms().median,
        );
    }
}

/// The issue's targets, reported (never asserted).
fn targets(p: &Params, rows: &[Row]) -> Value {
    println!("\ntargets (at {} files):", p.files);
    let mut out = serde_json::Map::new();
    for r in rows.iter().filter(|r| r.files == p.files) {
        let (goal, default_config) = match r.backend {
            Backend::Sqlite => (10_000.0, r.config == "synchronous=full"),
            Backend::Postgres => (5_000.0, true),
        };
        let e2e = r.e2e().median;
        println!(
            "  {} {}{}: end to end >= {goal:.0} files/s: {e2e:.0} -> {}; peak RSS < 100 MB: {:.1} MB -> {}",
            r.backend.as_str(),
            r.config,
            if default_config { " (default)" } else { "" },
            met(e2e >= goal),
            mb(r.peak_kb()),
            met(mb(r.peak_kb()) < 100.0)
        );
        out.insert(
            format!("{} {}", r.backend.as_str(), r.config),
            json!({
                "end_to_end_files_per_s": round1(e2e),
                "goal_files_per_s": goal,
                "met": e2e >= goal,
                "peak_rss_mb": round1(mb(r.peak_kb())),
                "peak_rss_under_100_mb": mb(r.peak_kb()) < 100.0,
            }),
        );
    }
    Value::Object(out)
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}

fn run(full: bool) -> Result<()> {
    let started = Instant::now();
    let p = Params::from_env(full)?;
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let sizes = p.sizes();
    println!(
        "asbb spool benchmark ({}): backlogs of {} cost files over {} accounts; {cpus} CPUs, load {}",
        if full {
            "full"
        } else {
            "smoke; `cargo bench --bench spool` for the real sizes"
        },
        sizes
            .iter()
            .map(|(n, r)| format!("{n} ({r} round{})", if *r == 1 { "" } else { "s" }))
            .collect::<Vec<_>>()
            .join(" and "),
        p.accounts,
        loadavg()
    );
    let load_start = loadavg();
    std::fs::create_dir_all(&p.dir).with_context(|| format!("create {}", p.dir.display()))?;
    let work = tempfile::Builder::new()
        .prefix("asbb-spool-bench-")
        .tempdir_in(&p.dir)
        .with_context(|| format!("create a temporary directory in {}", p.dir.display()))?;
    println!("work directory: {}", work.path().display());

    // 1. The baseline, at each backlog.
    let spool = work.path().join("spool");
    let mut baselines = Vec::new();
    println!(
        "\nbaseline: list + classify + read (SHA-256) + parse + move to processed/, no database:"
    );
    println!(
        "  {:>7} {:>6} {:>10} {:>10} {:>10}",
        "files", "rounds", "files/s", "min", "max"
    );
    for &(files, _) in &sizes {
        let jobs = plan(files, p.accounts);
        let ids = sequential_hold_ids(&jobs);
        let mut samples = Vec::new();
        for _ in 0..p.baseline_rounds {
            write_spool(&spool, &jobs, &ids)?;
            let (n, took) = baseline(&spool)?;
            if n != files as u64 {
                bail!("the baseline saw {n} of {files} files");
            }
            check_spool_moved(&spool, n)?;
            samples.push(rate(n, took.as_micros() as u64));
        }
        let s = Stats::of(&samples);
        println!(
            "  {files:>7} {:>6} {:>10.0} {:>10.0} {:>10.0}",
            s.n, s.median, s.min, s.max
        );
        baselines.push((files, s));
    }

    // 2-5. The database runs.
    let mut rows = Vec::new();
    for &b in &p.backends {
        rows.extend(bench_backend(&p, b, work.path(), &baselines)?);
    }
    print_rows(&rows);
    print_memory(&p, &rows);
    let targets = if p.full {
        targets(&p, &rows)
    } else {
        println!("\ntargets: not evaluated at smoke sizes (run `cargo bench --bench spool`)");
        Value::Null
    };
    let took = started.elapsed();
    println!("\ntotal time {:.0} s", took.as_secs_f64());
    let summary = json!({
        "bench": "asbb-spool",
        "mode": if p.full { "full" } else { "smoke" },
        "params": {
            "files": p.files,
            "small_files": p.small_files,
            "rounds": p.rounds,
            "small_rounds": p.small_rounds,
            "baseline_rounds": p.baseline_rounds,
            "accounts": p.accounts,
            "intake_batch": IntakeOptions::default().batch_size,
            "reconcile_batch": ReconcilePolicy::default().batch_size,
        },
        "machine": { "cpus": cpus, "loadavg_start": load_start, "loadavg_end": loadavg() },
        "baseline_files_per_s": baselines.iter().map(|(n, s)| json!({ "files": n, "stats": s.json() })).collect::<Vec<_>>(),
        "runs": rows.iter().map(Row::json).collect::<Vec<_>>(),
        "targets": targets,
        "seconds": round1(took.as_secs_f64()),
    });
    println!("{summary}");
    if p.keep {
        let kept = work.keep();
        eprintln!("kept the work directory {}", kept.display());
    }
    Ok(())
}

fn main() -> ExitCode {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        let r = serde_json::from_str::<ChildSpec>(&spec)
            .map_err(anyhow::Error::from)
            .and_then(|spec| child(&spec))
            .and_then(|out| Ok(serde_json::to_string(&out)?));
        return match r {
            Ok(line) => {
                println!("RESULT {line}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e:#}");
                ExitCode::FAILURE
            }
        };
    }
    // `cargo bench` passes `--bench`; `cargo test` runs this target without it.
    let full = std::env::args().any(|a| a == "--bench");
    match run(full) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("spool benchmark failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}
