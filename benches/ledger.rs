//! Ledger benchmark: hold+charge cycles per second and `account show` latency on a ledger that
//! already holds 1,000 accounts and 1,000,000 journal entries, on SQLite and (when
//! `ASBB_TEST_POSTGRES_URL` is set) PostgreSQL.
//!
//! Every number is measured against a baseline in the same run: the same operations on a
//! freshly migrated ledger with the same accounts and no other entries. Rounds on the two
//! ledgers are interleaved so that load from other processes hits both alike; results are
//! medians (with min/max) and full/empty ratios.
//!
//! `cargo bench --bench ledger` runs the full sizes. Without `--bench` (as `cargo test
//! --all-targets` runs this target) it runs a small smoke pass on SQLite that exercises the
//! same code path in a few seconds; it never asserts on timings, but exits non-zero when a
//! ledger operation fails or the audit finds the prefilled chains broken.
//!
//! Everything is written through the library's own operations (`create_account`,
//! `place_hold`, `charge_hold`, `credit`), one transaction per call, so the hash chains and
//! cached balances are exactly what production would hold.
//!
//! Cycles are measured four ways: one transaction per call (`synchronous=full`, then
//! `normal`), 100 cycles per transaction with each call in its own savepoint, and through the
//! paths production takes in bulk, at their default batch sizes: holds group-committed 64 to a
//! transaction (as asbb-checkd commits concurrent checks, `[check] max_batch`), then their
//! charges 500 to a transaction with `ledger::charge_batch` (as `asbb reconcile` books its
//! batches of cost records, `[reconcile] batch_size`). Like asbb-checkd and `asbb reconcile`,
//! the production paths run on SQLite with a `db::checkpoint::Checkpointer` beside the writer
//! (`ASBB_BENCH_CHECKPOINTER=0` measures them without, for comparison). On SQLite one more
//! production round per ledger, with checkpoints held back, counts the WAL pages a cycle
//! writes: what the commits write and the checkpoints copy back, most of a cycle's cost.
//!
//! Environment overrides, for quicker experiments:
//!
//! | variable | meaning | default (full / smoke) |
//! |---|---|---|
//! | `ASBB_BENCH_ACCOUNTS` | accounts | 1000 / 20 |
//! | `ASBB_BENCH_ENTRIES` | journal entries before measuring | 1000000 / 2000 |
//! | `ASBB_BENCH_CYCLES` | hold+charge cycles per round | 2000 / 50 |
//! | `ASBB_BENCH_ROUNDS` | rounds per measurement | 5 / 3 |
//! | `ASBB_BENCH_SHOW_CALLS` | library `account show` calls per ledger | 1000 / 60 |
//! | `ASBB_BENCH_CLI_RUNS` | `asbb account show` processes per ledger | 20 / 3 |
//! | `ASBB_BENCH_BACKENDS` | `sqlite`, `postgres` or `sqlite,postgres` | both if a server is set / sqlite |
//! | `ASBB_BENCH_PREFILL_SYNC` | SQLite `synchronous` while prefilling (`full`/`normal`) | normal |
//! | `ASBB_BENCH_PG_THREADS` | PostgreSQL prefill connections (disjoint accounts) | 4 |
//! | `ASBB_BENCH_AUDIT` | `0` skips `audit::verify` of the prefilled ledger | 1 |
//! | `ASBB_BENCH_DIR` | directory for the SQLite files | the system temp dir |
//! | `ASBB_BENCH_MODES` | cycle configurations measured: `calls` (one or 100 cycles per transaction), `paths` (the production batch paths), or `calls,paths` | calls,paths |
//! | `ASBB_BENCH_KEEP` | `1` keeps the databases afterwards, for a closer look | 0 |
//! | `ASBB_BENCH_CHECKPOINTER` | `0`: the production paths without the thread that checkpoints the SQLite WAL beside the writer (which `asbb-checkd` and `asbb reconcile` run; see `db::checkpoint`), for comparison | 1 |
//! | `ASBB_BENCH_PREFILLED` | a SQLite full ledger kept by an earlier run (`ASBB_BENCH_KEEP=1`, same `ASBB_BENCH_ACCOUNTS`): a copy of it is measured instead of prefilling a new one; it is migrated first, so a schema change can be measured on the same history | unset |

// Rates, ratios and percentiles of timings; no money is computed in floating point here.
#![allow(clippy::float_arithmetic)]

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use asbb::db::ledger::{
    self, BatchCharge, BatchResult, BatchTarget, ChargeHold, HoldOutcome, HoldRequest, MoneyOp,
    NewAccount, OpContext,
};
use asbb::db::{
    audit, queries, schema, Backend, ConnectOptions, Create, DbConn, DbUrl, SqliteSync,
};
use asbb::domain::{AccountName, UsdMicros};
use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::prelude::*;
use rust_decimal::Decimal;
use serde_json::{json, Value};

#[path = "support/mod.rs"]
mod support;
use support::env_num;

/// Who the benchmark's operations are recorded as.
const ACTOR: &str = "asbb-bench";
/// The environment variable naming an admin URL of a PostgreSQL server.
const POSTGRES_ENV: &str = "ASBB_TEST_POSTGRES_URL";
const PARTITIONS: [&str; 3] = ["cpu", "gpu", "highmem"];
const USERS: [&str; 8] = [
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi",
];

/// Job numbers, unique across every database and thread of this process (idempotency keys are
/// built from them).
static NEXT_JOB: AtomicU64 = AtomicU64::new(1);
/// The synthetic clock: milliseconds after [`epoch`], one tick per operation.
static CLOCK_MS: AtomicI64 = AtomicI64::new(0);

fn epoch() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .single()
        .expect("valid date")
}

/// A fresh operation context, a millisecond after the previous one.
fn next_ctx() -> OpContext {
    let ms = CLOCK_MS.fetch_add(1, Ordering::Relaxed);
    OpContext::at(ACTOR, epoch() + TimeDelta::milliseconds(ms))
}

/// xorshift64*: deterministic, dependency-free, good enough to pick accounts.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

// ---------------------------------------------------------------------------------------------
// Parameters

struct Params {
    full: bool,
    accounts: usize,
    entries: u64,
    cycles: usize,
    rounds: usize,
    warmup: usize,
    show_calls: usize,
    cli_runs: usize,
    backends: Vec<Backend>,
    prefill_sync: SqliteSync,
    pg_threads: usize,
    audit: bool,
    dir: PathBuf,
    pg_admin: Option<String>,
    modes: Vec<Mode>,
    prefilled: Option<PathBuf>,
    checkpointer: bool,
}

impl Params {
    fn from_env(full: bool) -> Result<Params> {
        let pg_admin = std::env::var(POSTGRES_ENV)
            .ok()
            .map(|u| u.trim().to_string())
            .filter(|u| !u.is_empty());
        let backends = match std::env::var("ASBB_BENCH_BACKENDS") {
            Ok(list) if !list.trim().is_empty() => list
                .split(',')
                .map(|b| match b.trim() {
                    "sqlite" => Ok(Backend::Sqlite),
                    "postgres" | "postgresql" => Ok(Backend::Postgres),
                    other => Err(anyhow!(
                        "ASBB_BENCH_BACKENDS: unknown backend '{other}' (sqlite, postgres)"
                    )),
                })
                .collect::<Result<Vec<_>>>()?,
            _ if full && pg_admin.is_some() => vec![Backend::Sqlite, Backend::Postgres],
            _ => vec![Backend::Sqlite],
        };
        if backends.contains(&Backend::Postgres) && pg_admin.is_none() {
            bail!("ASBB_BENCH_BACKENDS names postgres but {POSTGRES_ENV} is not set");
        }
        let prefill_sync = match std::env::var("ASBB_BENCH_PREFILL_SYNC")
            .as_deref()
            .map(str::trim)
        {
            Ok("full") => SqliteSync::Full,
            Ok("normal") | Ok("") | Err(_) => SqliteSync::Normal,
            Ok(other) => bail!("ASBB_BENCH_PREFILL_SYNC={other}: use full or normal"),
        };
        let modes = match std::env::var("ASBB_BENCH_MODES") {
            Ok(list) if !list.trim().is_empty() => list
                .split(',')
                .map(|m| match m.trim() {
                    "calls" => Ok(Mode::Calls),
                    "paths" => Ok(Mode::Production),
                    other => Err(anyhow!(
                        "ASBB_BENCH_MODES: unknown configuration '{other}' (calls, paths)"
                    )),
                })
                .collect::<Result<Vec<_>>>()?,
            _ => vec![Mode::Calls, Mode::Production],
        };
        let p = Params {
            full,
            accounts: env_num("ASBB_BENCH_ACCOUNTS", if full { 1000 } else { 20 })?,
            entries: env_num("ASBB_BENCH_ENTRIES", if full { 1_000_000 } else { 2000 })?,
            cycles: env_num("ASBB_BENCH_CYCLES", if full { 2000 } else { 50 })?,
            rounds: env_num("ASBB_BENCH_ROUNDS", if full { 5 } else { 3 })?,
            warmup: if full { 200 } else { 10 },
            show_calls: env_num("ASBB_BENCH_SHOW_CALLS", if full { 1000 } else { 60 })?,
            cli_runs: env_num("ASBB_BENCH_CLI_RUNS", if full { 20 } else { 3 })?,
            backends,
            prefill_sync,
            pg_threads: env_num("ASBB_BENCH_PG_THREADS", 4)?,
            audit: std::env::var("ASBB_BENCH_AUDIT")
                .map(|v| v.trim() != "0")
                .unwrap_or(true),
            dir: std::env::var_os("ASBB_BENCH_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(std::env::temp_dir),
            pg_admin,
            modes,
            checkpointer: std::env::var("ASBB_BENCH_CHECKPOINTER")
                .map_or(true, |v| v.trim() != "0"),
            prefilled: std::env::var_os("ASBB_BENCH_PREFILLED")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
        };
        if p.accounts == 0
            || p.cycles == 0
            || p.rounds == 0
            || p.show_calls == 0
            || p.pg_threads == 0
        {
            bail!("accounts, cycles, rounds, show calls and PostgreSQL threads must be at least 1");
        }
        if p.entries < p.accounts as u64 {
            bail!(
                "ASBB_BENCH_ENTRIES ({}) must be at least the number of accounts ({})",
                p.entries,
                p.accounts
            );
        }
        Ok(p)
    }

    fn json(&self) -> Value {
        json!({
            "mode": if self.full { "full" } else { "smoke" },
            "accounts": self.accounts,
            "entries": self.entries,
            "cycles_per_round": self.cycles,
            "rounds": self.rounds,
            "warmup_cycles": self.warmup,
            "show_calls": self.show_calls,
            "cli_runs": self.cli_runs,
            "prefill_sqlite_synchronous": sync_name(self.prefill_sync),
            "prefill_pg_threads": self.pg_threads,
        })
    }
}

fn sync_name(s: SqliteSync) -> &'static str {
    match s {
        SqliteSync::Full => "full",
        SqliteSync::Normal => "normal",
    }
}

fn opts(sync: SqliteSync) -> ConnectOptions {
    ConnectOptions {
        sqlite_synchronous: sync,
        ..ConnectOptions::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Statistics

#[derive(Debug, Clone, Copy)]
struct Stats {
    median: f64,
    p95: f64,
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
                p95: f64::NAN,
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
        // Nearest rank.
        let rank = ((0.95 * n as f64).ceil() as usize).clamp(1, n);
        Stats {
            median,
            p95: s[rank - 1],
            min: s[0],
            max: s[n - 1],
            n,
        }
    }

    fn json(&self) -> Value {
        json!({ "median": round3(self.median), "p95": round3(self.p95), "min": round3(self.min), "max": round3(self.max), "n": self.n })
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

// ---------------------------------------------------------------------------------------------
// Databases

/// A benchmark database: a SQLite file in a temporary directory, or a PostgreSQL database
/// that is dropped again at the end.
struct BenchDb {
    name: String,
    /// The URL as handed to `asbb --database-url`.
    url: String,
    db_url: DbUrl,
    _dir: Option<tempfile::TempDir>,
    pg_drop: Option<(String, String)>,
}

impl BenchDb {
    fn create(p: &Params, backend: Backend, label: &str) -> Result<BenchDb> {
        let db = match backend {
            Backend::Sqlite => {
                let dir = tempfile::Builder::new()
                    .prefix("asbb-bench-")
                    .tempdir_in(&p.dir)
                    .with_context(|| {
                        format!("create a temporary directory in {}", p.dir.display())
                    })?;
                let path = dir.path().join(format!("{label}.db"));
                let url = path
                    .to_str()
                    .ok_or_else(|| anyhow!("temporary path is not UTF-8"))?
                    .to_string();
                BenchDb {
                    name: format!("sqlite {label}"),
                    db_url: DbUrl::Sqlite(path),
                    url,
                    _dir: Some(dir),
                    pg_drop: None,
                }
            }
            Backend::Postgres => {
                let admin = p
                    .pg_admin
                    .clone()
                    .ok_or_else(|| anyhow!("{POSTGRES_ENV} is not set"))?;
                let name = format!("asbb_bench_{}_{label}", std::process::id());
                let mut c = PgConnection::establish(&admin)
                    .with_context(|| format!("connect to {POSTGRES_ENV}"))?;
                // One statement per call: PostgreSQL runs a multi-statement batch as one
                // transaction, and neither statement may run inside one.
                c.batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .with_context(|| format!("drop database {name}"))?;
                c.batch_execute(&format!("CREATE DATABASE \"{name}\""))
                    .with_context(|| format!("create database {name}"))?;
                let url = pg_url_with_database(&admin, &name)?;
                BenchDb {
                    name: name.clone(),
                    db_url: DbUrl::Postgres(url.clone()),
                    url,
                    _dir: None,
                    pg_drop: Some((admin, name)),
                }
            }
        };
        let mut conn = asbb::db::connect(&db.db_url, &ConnectOptions::default(), Create::Allow)?;
        asbb::db::migrate(&mut conn)?;
        Ok(db)
    }

    fn connect(&self, sync: SqliteSync) -> Result<DbConn> {
        Ok(asbb::db::connect_checked(&self.db_url, &opts(sync))?)
    }

    fn sqlite_path(&self) -> Option<&Path> {
        match &self.db_url {
            DbUrl::Sqlite(p) => Some(p),
            DbUrl::Postgres(_) => None,
        }
    }
}

impl Drop for BenchDb {
    fn drop(&mut self) {
        if std::env::var("ASBB_BENCH_KEEP").is_ok_and(|v| v.trim() == "1") {
            if let Some(dir) = self._dir.take() {
                let _ = dir.keep();
            }
            self.pg_drop = None;
            eprintln!(
                "kept benchmark database {} ({})",
                self.name,
                redact(&self.url)
            );
            return;
        }
        let Some((admin, name)) = self.pg_drop.take() else {
            return;
        };
        let r = PgConnection::establish(&admin)
            .map_err(|e| e.to_string())
            .and_then(|mut c| {
                c.batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = r {
            eprintln!("warning: could not drop benchmark database {name}: {e}");
        }
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

fn journal_count(conn: &mut DbConn) -> Result<i64> {
    Ok(schema::journal::table.count().get_result(conn)?)
}

/// Bytes on disk: the SQLite file and its WAL, or `pg_database_size`.
fn db_size(conn: &mut DbConn, db: &BenchDb) -> Result<u64> {
    match conn {
        DbConn::Sqlite(_) => {
            let path = db
                .sqlite_path()
                .ok_or_else(|| anyhow!("not a SQLite database"))?;
            let mut wal = path.as_os_str().to_owned();
            wal.push("-wal");
            let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
            Ok(size(path) + size(Path::new(&wal)))
        }
        DbConn::Postgres(c) => {
            let n: i64 = diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
                "pg_database_size(current_database())",
            ))
            .get_result(c)?;
            Ok(u64::try_from(n).unwrap_or(0))
        }
    }
}

/// Server version and the settings that decide what a commit costs.
fn server_info(conn: &mut DbConn) -> Result<Value> {
    use diesel::dsl::sql;
    use diesel::sql_types::Text;
    Ok(match conn {
        DbConn::Sqlite(c) => {
            let v: String = diesel::select(sql::<Text>("sqlite_version()")).get_result(c)?;
            json!({ "sqlite_version": v })
        }
        DbConn::Postgres(c) => {
            let setting = |c: &mut PgConnection, name: &str| -> Result<String> {
                Ok(
                    diesel::select(sql::<Text>(&format!("current_setting('{name}')")))
                        .get_result(c)?,
                )
            };
            json!({
                "server_version": setting(c, "server_version")?,
                "fsync": setting(c, "fsync")?,
                "synchronous_commit": setting(c, "synchronous_commit")?,
                "full_page_writes": setting(c, "full_page_writes")?,
                "shared_buffers": setting(c, "shared_buffers")?,
            })
        }
    })
}

/// After prefilling: a WAL checkpoint on SQLite; `VACUUM ANALYZE` on PostgreSQL (the steady
/// state autovacuum reaches on a live server, done now so it does not run mid-measurement).
/// Checkpoints (SQLite) or vacuums (PostgreSQL) a ledger before it is measured, and writes a
/// SQLite file out to the disk: otherwise the kernel writes back the hundreds of MB a prefill
/// (or a copy) left in the page cache during the rounds, and slows their fsyncs at random.
fn settle_db(conn: &mut DbConn, db: &BenchDb) -> Result<()> {
    match conn {
        DbConn::Sqlite(c) => c.batch_execute("PRAGMA wal_checkpoint(TRUNCATE)")?,
        DbConn::Postgres(c) => c.batch_execute("VACUUM ANALYZE")?,
    }
    if let Some(path) = db.sqlite_path() {
        std::fs::File::open(path)?.sync_all()?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The workload, through the library

fn account_name(i: usize) -> String {
    format!("proj{i:04}")
}

fn create_accounts(conn: &mut DbConn, n: usize) -> Result<Vec<String>> {
    let starts_at = Utc
        .with_ymd_and_hms(2020, 1, 1, 0, 0, 0)
        .single()
        .expect("valid date");
    let ends_at = Utc
        .with_ymd_and_hms(2100, 1, 1, 0, 0, 0)
        .single()
        .expect("valid date");
    let mut names = Vec::with_capacity(n);
    for i in 0..n {
        let name = account_name(i);
        ledger::create_account(
            conn,
            &next_ctx(),
            &NewAccount {
                name: AccountName::new(&name)?,
                display_name: format!("Benchmark project {i}"),
                description: "created by benches/ledger.rs".into(),
                starts_at,
                ends_at,
                overdraft: UsdMicros::ZERO,
                // Far more than any run spends: a hold is never denied.
                budget: UsdMicros::from_usd(10_000_000)?,
            },
        )
        .with_context(|| format!("create account {name}"))?;
        names.push(name);
    }
    Ok(names)
}

/// A random job's hold: its account, job number, estimate and key.
struct JobHold {
    account: String,
    partition: &'static str,
    user: &'static str,
    job_id: String,
    estimate: UsdMicros,
    key: String,
    ctx: OpContext,
}

impl JobHold {
    fn new(accounts: &[String], rng: &mut Rng) -> Result<JobHold> {
        let job = NEXT_JOB.fetch_add(1, Ordering::Relaxed);
        Ok(JobHold {
            account: accounts[rng.below(accounts.len())].clone(),
            partition: PARTITIONS[rng.below(PARTITIONS.len())],
            user: USERS[rng.below(USERS.len())],
            job_id: job.to_string(),
            estimate: UsdMicros::from_micros(1_000_000 + rng.below(49_000_000) as i64)?,
            key: format!("bench-{job}-hold"),
            ctx: next_ctx(),
        })
    }

    fn request(&self) -> HoldRequest<'_> {
        HoldRequest {
            account: &self.account,
            partition: Some(self.partition),
            estimate: self.estimate,
            buffer: Decimal::new(12, 1),
            cluster: Some("aws-burst"),
            job_id: Some(&self.job_id),
            user_name: Some(self.user),
            expires_at: Some(self.ctx.effective_at + TimeDelta::days(7)),
            tasks: None,
            key: &self.key,
        }
    }

    /// 30-100 % of the estimate: always below the hold (estimate x 1.2), so a remainder is
    /// released and every cycle writes exactly three entries.
    fn actual(estimate: UsdMicros, rng: &mut Rng) -> Result<UsdMicros> {
        Ok(UsdMicros::from_micros(
            estimate.micros() / 100 * (30 + rng.below(71) as i64),
        )?)
    }
}

/// One job's life: a hold at submission, then the actual cost charged against it, which
/// releases the remainder. Two transactions, three journal entries.
fn cycle(conn: &mut DbConn, accounts: &[String], rng: &mut Rng) -> Result<()> {
    let j = JobHold::new(accounts, rng)?;
    let (account, hold_key, estimate) = (&j.account, &j.key, j.estimate);
    let hold = match ledger::place_hold(conn, &j.ctx, &j.request())
        .with_context(|| format!("place_hold on {account}"))?
    {
        HoldOutcome::Placed {
            hold,
            replayed: false,
            ..
        } => hold,
        HoldOutcome::Placed { replayed: true, .. } => {
            bail!("hold {hold_key} was unexpectedly a replay")
        }
        HoldOutcome::Denied(d) => bail!("hold on {account} denied: {}", d.message),
    };
    let actual = JobHold::actual(estimate, rng)?;
    let charge_key = format!("bench-{}-charge", j.job_id);
    let out = ledger::charge_hold(
        conn,
        &next_ctx(),
        &ChargeHold {
            hold_id: hold.id,
            actual,
            job_id: None,
            reason: "",
            key: &charge_key,
        },
    )
    .with_context(|| format!("charge_hold hold-{} on {account}", hold.id))?;
    if out.replayed || out.release.is_none() {
        bail!(
            "charge of hold-{} did not write a charge and a release",
            hold.id
        );
    }
    Ok(())
}

/// What `asbb account show` reads, through the same library calls.
fn account_show(conn: &mut DbConn, name: &str) -> Result<()> {
    let acct = queries::account(conn, name)?;
    let parts = queries::partitions(conn, name)?;
    let act = queries::activity(conn, name)?;
    let changes = queries::account_changes(conn, name)?;
    black_box((acct, parts, act, changes));
    Ok(())
}

struct Prefill {
    cycles: u64,
    credits: u64,
    elapsed: Duration,
    threads: usize,
}

/// Fills the ledger to `total_entries` (accounts' initial credits included) with hold+charge
/// cycles spread over the accounts, plus at most two extra credits to hit the count exactly.
fn prefill(
    db: &BenchDb,
    accounts: &[String],
    total_entries: u64,
    threads: usize,
    sync: SqliteSync,
) -> Result<Prefill> {
    let rest = total_entries.saturating_sub(accounts.len() as u64);
    let cycles = rest / 3;
    let credits = rest % 3;
    let threads = threads.clamp(1, accounts.len());
    let done = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let step = (cycles / 10).max(1);
    let start = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let mut handles = Vec::new();
        for t in 0..threads {
            let n = cycles / threads as u64 + u64::from((t as u64) < cycles % threads as u64);
            // Disjoint accounts per connection: on PostgreSQL they never wait on each other's
            // row locks (on SQLite there is one thread).
            let mine: Vec<String> = accounts.iter().skip(t).step_by(threads).cloned().collect();
            let (done, stop) = (&done, &stop);
            handles.push(s.spawn(move || -> Result<()> {
                let mut conn = db.connect(sync)?;
                let mut rng = Rng::new(0x00B0_D6E7 + t as u64);
                for _ in 0..n {
                    if stop.load(Ordering::Relaxed) {
                        return Ok(());
                    }
                    if let Err(e) = cycle(&mut conn, &mine, &mut rng) {
                        stop.store(true, Ordering::Relaxed);
                        return Err(e);
                    }
                    let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                    if d % step == 0 || d == cycles {
                        let secs = start.elapsed().as_secs_f64();
                        eprintln!(
                            "  {}: prefill {:>3}% {d}/{cycles} cycles, {} entries, {secs:.0} s, {:.0} cycles/s",
                            db.name,
                            d * 100 / cycles,
                            accounts.len() as u64 + 3 * d,
                            d as f64 / secs
                        );
                    }
                }
                Ok(())
            }));
        }
        let mut first_err = None;
        for h in handles {
            let r = h
                .join()
                .map_err(|_| anyhow!("a prefill thread panicked"))
                .and_then(|r| r);
            if let (Err(e), None) = (r, &first_err) {
                first_err = Some(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    })?;
    let mut conn = db.connect(sync)?;
    for i in 0..credits {
        let key = format!("bench-prefill-credit-{i}");
        ledger::credit(
            &mut conn,
            &next_ctx(),
            &MoneyOp {
                account: &accounts[0],
                amount: UsdMicros::from_usd(1000)?,
                reason: "top-up",
                key: &key,
                job_id: None,
                partition: None,
            },
        )?;
    }
    Ok(Prefill {
        cycles,
        credits,
        elapsed: start.elapsed(),
        threads,
    })
}

/// Replaces the freshly migrated full ledger with a copy of `src`, a full ledger an earlier
/// run kept, migrates it, and moves the job counter and the clock past its history so that no
/// idempotency key repeats. Returns the connection, the account names and the entry count.
fn reuse_prefilled(
    db: &BenchDb,
    src: &Path,
    n_accounts: usize,
) -> Result<(DbConn, Vec<String>, i64)> {
    use diesel::dsl::sql;
    use diesel::sql_types::{BigInt, Nullable, Text};
    let dst = db
        .sqlite_path()
        .ok_or_else(|| anyhow!("ASBB_BENCH_PREFILLED applies to SQLite only"))?;
    for suffix in ["-wal", "-shm"] {
        let mut from = src.as_os_str().to_owned();
        from.push(suffix);
        if Path::new(&from).exists() {
            bail!(
                "ASBB_BENCH_PREFILLED {}: it has a {suffix} file; open it once so that it is checkpointed",
                src.display()
            );
        }
        let mut side = dst.as_os_str().to_owned();
        side.push(suffix);
        let _ = std::fs::remove_file(Path::new(&side));
    }
    let t = Instant::now();
    std::fs::copy(src, dst)
        .with_context(|| format!("copy ASBB_BENCH_PREFILLED {}", src.display()))?;
    let mut conn = asbb::db::connect(&db.db_url, &ConnectOptions::default(), Create::Refuse)?;
    asbb::db::migrate(&mut conn)?;
    let accounts: Vec<String> = (0..n_accounts).map(account_name).collect();
    let known: i64 = schema::accounts::table
        .filter(schema::accounts::name.eq_any(&accounts))
        .count()
        .get_result(&mut conn)?;
    if usize::try_from(known).ok() != Some(n_accounts) {
        bail!(
            "ASBB_BENCH_PREFILLED {} has {known} of the {n_accounts} accounts {}..; set ASBB_BENCH_ACCOUNTS to the run that kept it",
            src.display(),
            account_name(0)
        );
    }
    let max_job: Option<i64> = schema::journal::table
        .select(sql::<Nullable<BigInt>>("MAX(CAST(job_id AS INTEGER))"))
        .get_result(&mut conn)?;
    NEXT_JOB.fetch_max(
        u64::try_from(max_job.unwrap_or(0)).unwrap_or(0) + 1,
        Ordering::Relaxed,
    );
    let last: Option<String> = schema::journal::table
        .select(sql::<Nullable<Text>>("MAX(effective_at)"))
        .get_result(&mut conn)?;
    if let Some(last) = last {
        let at = chrono::NaiveDateTime::parse_from_str(&last, "%Y-%m-%d %H:%M:%S%.f")
            .with_context(|| format!("the last effective time {last}"))?
            .and_utc();
        CLOCK_MS.fetch_max((at - epoch()).num_milliseconds() + 1, Ordering::Relaxed);
    }
    let entries = journal_count(&mut conn)?;
    eprintln!(
        "  {}: copied and migrated {} ({entries} entries) in {:.1} s",
        db.name,
        src.display(),
        t.elapsed().as_secs_f64()
    );
    drop(conn);
    Ok((db.connect(SqliteSync::Full)?, accounts, entries))
}

// ---------------------------------------------------------------------------------------------
// Measurements

/// One round of `n` cycles; returns cycles per second.
/// `n` cycles; with `batch` > 1, `batch` cycles share one write transaction (each operation
/// in its own savepoint), as the batch jobs commit.
fn cycle_round(
    conn: &mut DbConn,
    accounts: &[String],
    rng: &mut Rng,
    n: usize,
    batch: usize,
) -> Result<f64> {
    let start = Instant::now();
    if batch <= 1 {
        for _ in 0..n {
            cycle(conn, accounts, rng)?;
        }
    } else {
        let mut left = n;
        while left > 0 {
            let this = left.min(batch);
            asbb::db::write_transaction(conn, |c| -> Result<()> {
                for _ in 0..this {
                    cycle(c, accounts, rng)?;
                }
                Ok(())
            })?;
            left -= this;
        }
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// `n` cycles through the paths production takes, with their default batch sizes: holds
/// group-committed `hold_batch` to a transaction, each in its own savepoint (as asbb-checkd
/// commits concurrent checks, up to `[check] max_batch`), then their charges booked
/// `charge_batch` to a transaction with `ledger::charge_batch` (as `asbb reconcile` books its
/// batches of cost records, `[reconcile] batch_size`).
fn production_round(
    conn: &mut DbConn,
    accounts: &[String],
    rng: &mut Rng,
    n: usize,
    (hold_batch, charge_batch): (usize, usize),
) -> Result<f64> {
    let start = Instant::now();
    let mut left = n;
    let mut placed: Vec<(i64, UsdMicros, String)> = Vec::with_capacity(charge_batch);
    while left > 0 || !placed.is_empty() {
        if left > 0 && placed.len() < charge_batch {
            let this = left.min(hold_batch).min(charge_batch - placed.len());
            asbb::db::write_transaction(conn, |c| -> Result<()> {
                for _ in 0..this {
                    let j = JobHold::new(accounts, rng)?;
                    match ledger::place_hold(c, &j.ctx, &j.request())? {
                        HoldOutcome::Placed {
                            hold,
                            replayed: false,
                            ..
                        } => {
                            let actual = JobHold::actual(j.estimate, rng)?;
                            placed.push((hold.id, actual, format!("bench-{}-charge", j.job_id)));
                        }
                        other => bail!("hold {} was not placed: {other:?}", j.key),
                    }
                }
                Ok(())
            })?;
            left -= this;
            continue;
        }
        let items: Vec<BatchCharge<'_>> = placed
            .iter()
            .map(|(hold_id, actual, key)| BatchCharge {
                target: BatchTarget::Hold(ChargeHold {
                    hold_id: *hold_id,
                    actual: *actual,
                    job_id: None,
                    reason: "",
                    key,
                }),
                refund: None,
            })
            .collect();
        match ledger::charge_batch(conn, &next_ctx(), &items)? {
            BatchResult::Booked(b) if b.len() == items.len() => {}
            other => bail!("charge_batch did not book the batch: {other:?}"),
        }
        placed.clear();
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// The pages one production cycle writes to the SQLite WAL (what the commits write, and the
/// checkpoints copy back): one round of `n` cycles with checkpoints held back, counted from
/// the WAL's frame count. The WAL is emptied first and copied back afterwards.
fn wal_pages_per_cycle(conn: &mut DbConn, accounts: &[String], n: usize) -> Result<f64> {
    use asbb::db::checkpoint::{set_wal_autocheckpoint, wal_checkpoint, CheckpointMode};
    let frames = |conn: &mut DbConn, mode| -> Result<i64> {
        let w = wal_checkpoint(conn, mode)?.context("not a SQLite ledger")?;
        if w.busy {
            bail!("the WAL checkpoint was busy: another connection is open");
        }
        Ok(w.frames)
    };
    set_wal_autocheckpoint(conn, 0)?;
    frames(conn, CheckpointMode::Restart)?;
    let mut rng = Rng::new(0x3A1);
    production_round(conn, accounts, &mut rng, n, production_batches())?;
    let written = frames(conn, CheckpointMode::Restart)?;
    set_wal_autocheckpoint(conn, asbb::db::WAL_AUTOCHECKPOINT_PAGES)?;
    Ok(written as f64 / n as f64)
}

/// The production batch sizes: `[check] max_batch` holds per group commit and
/// `[reconcile] batch_size` charges per transaction, from the built-in defaults.
fn production_batches() -> (usize, usize) {
    let cfg = asbb::config::Config::default();
    (
        usize::try_from(cfg.check.max_batch).unwrap_or(64).max(1),
        asbb::db::reconcile::ReconcilePolicy::default()
            .batch_size
            .max(1),
    )
}

/// Cycles per transaction in the batched configurations.
const BATCH_CYCLES: usize = 100;

/// How a configuration runs its cycles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `place_hold` and `charge_hold`, `batch` cycles per transaction (1: each on its own).
    Calls,
    /// The production batch paths: group-committed holds, `charge_batch` charges.
    Production,
}

struct Pair {
    empty: Stats,
    full: Stats,
}

impl Pair {
    fn ratio(&self) -> f64 {
        self.full.median / self.empty.median
    }

    fn json(&self, unit: &str) -> Value {
        json!({ "unit": unit, "empty": self.empty.json(), "full": self.full.json(), "ratio_full_over_empty": round3(self.ratio()) })
    }
}

/// Hold+charge throughput, rounds interleaved between the two ledgers (which goes first
/// alternates), after a warm-up on each.
fn measure_cycles(
    p: &Params,
    full: &mut DbConn,
    empty: &mut DbConn,
    accounts: &[String],
    seed: u64,
    batch: usize,
    mode: Mode,
) -> Result<Pair> {
    let mut rng = Rng::new(seed);
    let mut round = |conn: &mut DbConn, n: usize| match mode {
        Mode::Calls => cycle_round(conn, accounts, &mut rng, n, batch),
        Mode::Production => production_round(conn, accounts, &mut rng, n, production_batches()),
    };
    round(full, p.warmup)?;
    round(empty, p.warmup)?;
    let (mut f, mut e) = (Vec::new(), Vec::new());
    for r in 0..p.rounds {
        if r % 2 == 0 {
            e.push(round(empty, p.cycles)?);
            f.push(round(full, p.cycles)?);
        } else {
            f.push(round(full, p.cycles)?);
            e.push(round(empty, p.cycles)?);
        }
    }
    Ok(Pair {
        empty: Stats::of(&e),
        full: Stats::of(&f),
    })
}

/// Latency of the library's `account show` reads, in ms, on random accounts, in interleaved
/// batches.
fn measure_show(
    p: &Params,
    full: &mut DbConn,
    empty: &mut DbConn,
    accounts: &[String],
) -> Result<Pair> {
    let mut rng = Rng::new(0x5403);
    for name in accounts.iter().take(20) {
        account_show(full, name)?;
        account_show(empty, name)?;
    }
    let batches = p.rounds.max(1);
    let (mut f, mut e) = (Vec::new(), Vec::new());
    for b in 0..batches {
        let n = p.show_calls / batches + usize::from(b < p.show_calls % batches);
        for (conn, out) in [(&mut *empty, &mut e), (&mut *full, &mut f)] {
            for _ in 0..n {
                let name = &accounts[rng.below(accounts.len())];
                let t = Instant::now();
                account_show(conn, name)?;
                out.push(ms(t.elapsed()));
            }
        }
    }
    Ok(Pair {
        empty: Stats::of(&e),
        full: Stats::of(&f),
    })
}

/// Wall time of a real `asbb account show` process (connect, schema check, queries, output),
/// alternating between the ledgers.
fn measure_cli(
    p: &Params,
    bin: &Path,
    full: &BenchDb,
    empty: &BenchDb,
    accounts: &[String],
) -> Result<(Pair, Stats)> {
    let mut rng = Rng::new(0xC11);
    let run = |args: &[&str]| -> Result<f64> {
        let t = Instant::now();
        let out = Command::new(bin)
            .args(args)
            .output()
            .with_context(|| format!("run {}", bin.display()))?;
        let elapsed = ms(t.elapsed());
        if !out.status.success() {
            bail!(
                "`asbb {}` failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(elapsed)
    };
    let show =
        |db: &BenchDb, name: &str| run(&["--database-url", &db.url, "account", "show", name]);
    // One untimed run each: the binary and the database pages are then in the page cache.
    show(full, &accounts[0])?;
    show(empty, &accounts[0])?;
    // The floor: starting the process without touching a database.
    let mut floor = Vec::new();
    let (mut f, mut e) = (Vec::new(), Vec::new());
    for i in 0..p.cli_runs {
        let name = &accounts[rng.below(accounts.len())];
        floor.push(run(&["--version"])?);
        if i % 2 == 0 {
            e.push(show(empty, name)?);
            f.push(show(full, name)?);
        } else {
            f.push(show(full, name)?);
            e.push(show(empty, name)?);
        }
    }
    Ok((
        Pair {
            empty: Stats::of(&e),
            full: Stats::of(&f),
        },
        Stats::of(&floor),
    ))
}

// ---------------------------------------------------------------------------------------------
// One backend

fn bench_backend(p: &Params, backend: Backend) -> Result<Value> {
    let label = backend.as_str();
    println!("\n== {label} ==");
    let full_db = BenchDb::create(p, backend, "full")?;
    let empty_db = BenchDb::create(p, backend, "empty")?;
    println!("full ledger:  {}", redact(&full_db.url));
    println!("empty ledger: {}", redact(&empty_db.url));

    // Prefill the full ledger.
    let prefill_sync = if backend == Backend::Sqlite {
        p.prefill_sync
    } else {
        SqliteSync::Full
    };
    let threads = if backend == Backend::Postgres {
        p.pg_threads
    } else {
        1
    };
    let reuse = match (&p.prefilled, backend) {
        (Some(src), Backend::Sqlite) => Some(src.as_path()),
        _ => None,
    };
    let (mut conn, info, accounts, accounts_time, pre, entries) = if let Some(src) = reuse {
        let (mut conn, accounts, entries) = reuse_prefilled(&full_db, src, p.accounts)?;
        let info = server_info(&mut conn)?;
        let pre = Prefill {
            cycles: 0,
            credits: 0,
            elapsed: Duration::ZERO,
            threads: 0,
        };
        (conn, info, accounts, Duration::ZERO, pre, entries)
    } else {
        let mut conn = full_db.connect(prefill_sync)?;
        let info = server_info(&mut conn)?;
        let t = Instant::now();
        let accounts = create_accounts(&mut conn, p.accounts)?;
        let accounts_time = t.elapsed();
        eprintln!(
            "  {}: {} accounts created in {:.1} s; prefilling ...",
            full_db.name,
            accounts.len(),
            accounts_time.as_secs_f64()
        );
        let pre = prefill(&full_db, &accounts, p.entries, threads, prefill_sync)?;
        let entries = journal_count(&mut conn)?;
        if u64::try_from(entries).ok() != Some(p.entries) {
            bail!(
                "prefill wrote {entries} journal entries, expected {}",
                p.entries
            );
        }
        (conn, info, accounts, accounts_time, pre, entries)
    };
    let t = Instant::now();
    settle_db(&mut conn, &full_db)?;
    let settle_time = t.elapsed();
    let full_size = db_size(&mut conn, &full_db)?;
    drop(conn);

    // The baseline ledger: the same accounts, nothing else.
    let mut conn = empty_db.connect(SqliteSync::Full)?;
    let t = Instant::now();
    create_accounts(&mut conn, p.accounts)?;
    let empty_accounts_time = t.elapsed();
    settle_db(&mut conn, &empty_db)?;
    drop(conn);

    println!(
        "prefill: {} accounts in {:.1} s; {} hold+charge cycles ({} entries) + {} credits in {:.1} s \
         ({:.0} cycles/s, {}, {} connection(s)); {entries} entries; {:.0} MB; settle ({}) {:.1} s",
        accounts.len(),
        accounts_time.as_secs_f64(),
        pre.cycles,
        pre.cycles * 3,
        pre.credits,
        pre.elapsed.as_secs_f64(),
        pre.cycles as f64 / pre.elapsed.as_secs_f64(),
        if backend == Backend::Sqlite { format!("synchronous={}", sync_name(prefill_sync)) } else { "server defaults".into() },
        pre.threads,
        full_size as f64 / 1e6,
        if backend == Backend::Sqlite { "wal_checkpoint" } else { "VACUUM ANALYZE" },
        settle_time.as_secs_f64(),
    );

    // Hold+charge throughput, per durability setting.
    // (durability, cycles per transaction): one transaction per call first (the primary
    // figure), then the batched form the batch jobs use.
    let configs: &[(SqliteSync, usize, Mode)] = if backend == Backend::Sqlite {
        &[
            (SqliteSync::Full, 1, Mode::Calls),
            (SqliteSync::Normal, 1, Mode::Calls),
            (SqliteSync::Full, BATCH_CYCLES, Mode::Calls),
            (SqliteSync::Full, BATCH_CYCLES, Mode::Production),
        ]
    } else {
        &[
            (SqliteSync::Full, 1, Mode::Calls),
            (SqliteSync::Full, BATCH_CYCLES, Mode::Calls),
            (SqliteSync::Full, BATCH_CYCLES, Mode::Production),
        ]
    };
    let mut cycles_json = serde_json::Map::new();
    println!(
        "\nhold+charge cycles/s: {} rounds x {} cycles per ledger (after {} warm-up); one transaction per call, or batched",
        p.rounds, p.cycles, p.warmup
    );
    println!(
        "  {:<22} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "config", "empty med", "min", "max", "full med", "min", "max"
    );
    let mut primary = None;
    for (i, &(sync, batch, mode)) in configs.iter().enumerate() {
        if !p.modes.contains(&mode) {
            continue;
        }
        let mut f = full_db.connect(sync)?;
        let mut e = empty_db.connect(sync)?;
        // The production paths (asbb-checkd, asbb reconcile) run with a thread that
        // checkpoints the SQLite WAL beside the writer; so do these rounds, one per ledger.
        let checkpointers = if mode == Mode::Production && p.checkpointer {
            let mut started = Vec::new();
            for (db, conn) in [(&full_db, &mut f), (&empty_db, &mut e)] {
                if let Some(c) = asbb::db::checkpoint::Checkpointer::start(
                    &db.db_url,
                    &opts(sync),
                    asbb::db::checkpoint::INTERVAL,
                )? {
                    c.relieve(conn)?;
                    started.push(c);
                }
            }
            started
        } else {
            Vec::new()
        };
        let pair = measure_cycles(
            p,
            &mut f,
            &mut e,
            &accounts,
            0xC7C1E + i as u64,
            batch,
            mode,
        )?;
        drop(checkpointers);
        let wal_pages = if mode == Mode::Production && backend == Backend::Sqlite {
            Some((
                wal_pages_per_cycle(&mut e, &accounts, p.cycles)?,
                wal_pages_per_cycle(&mut f, &accounts, p.cycles)?,
            ))
        } else {
            None
        };
        let batched = match (mode, batch) {
            (Mode::Production, _) => {
                let (h, c) = production_batches();
                format!(", batch paths {h}/{c}")
            }
            (Mode::Calls, 1) => String::new(),
            (Mode::Calls, _) => format!(", {batch}/txn"),
        };
        let cfg = if backend == Backend::Sqlite {
            format!("synchronous={}{batched}", sync_name(sync))
        } else {
            format!("default{batched}")
        };
        println!(
            "  {cfg:<22} {:>10.0} {:>10.0} {:>10.0} {:>10.0} {:>10.0} {:>10.0}   full/empty {:.3}",
            pair.empty.median,
            pair.empty.min,
            pair.empty.max,
            pair.full.median,
            pair.full.min,
            pair.full.max,
            pair.ratio()
        );
        let batched = match (mode, batch) {
            (Mode::Production, _) => "_batch_paths".to_string(),
            (Mode::Calls, 1) => String::new(),
            (Mode::Calls, _) => format!("_batched_{batch}"),
        };
        let key = if backend == Backend::Sqlite {
            format!("synchronous_{}{batched}", sync_name(sync))
        } else {
            format!("default{batched}")
        };
        let mut entry = pair.json("cycles/s");
        if let Some((empty, full)) = wal_pages {
            println!(
                "  {:<22} {empty:>10.2} {:>10} {:>10} {full:>10.2}   (one more round each, checkpoints held back)",
                "WAL pages per cycle", "", ""
            );
            entry["wal_pages_per_cycle"] =
                serde_json::json!({"empty": round3(empty), "full": round3(full)});
        }
        cycles_json.insert(key, entry);
        if primary.is_none() {
            primary = Some(pair.full.median);
        }
    }

    // account show through the library.
    let mut f = full_db.connect(SqliteSync::Full)?;
    let mut e = empty_db.connect(SqliteSync::Full)?;
    let show = measure_show(p, &mut f, &mut e, &accounts)?;
    println!("\naccount show, library (account + partitions + activity + account_changes), {} calls per ledger, ms:", p.show_calls);
    print_latency(&show);

    // account show as a process.
    let cli = match option_env!("CARGO_BIN_EXE_asbb")
        .map(PathBuf::from)
        .filter(|b| b.exists())
    {
        Some(bin) => {
            let (pair, floor) = measure_cli(p, &bin, &full_db, &empty_db, &accounts)?;
            println!(
                "\n`asbb account show` process ({}), {} runs per ledger, ms:",
                bin.display(),
                p.cli_runs
            );
            print_latency(&pair);
            println!(
                "  process floor, `asbb --version`: median {:.3} ms (min {:.3}, max {:.3})",
                floor.median, floor.min, floor.max
            );
            json!({
                "binary": bin.display().to_string(),
                "ms": pair.json("ms"),
                "version_floor_ms": floor.json(),
            })
        }
        None => {
            println!("\n`asbb account show` process: skipped (no built asbb binary)");
            json!({ "skipped": "no built asbb binary" })
        }
    };

    // The prefilled chains must verify.
    let audit_json = if p.audit {
        let t = Instant::now();
        let report = audit::verify(&mut f, None, &mut |_| {})?;
        let took = t.elapsed();
        println!(
            "\naudit verify of the full ledger: {} accounts, {} entries, {} holds in {:.1} s: {}",
            report.accounts,
            report.entries,
            report.holds,
            took.as_secs_f64(),
            if report.is_clean() {
                "clean".to_string()
            } else {
                format!("{} discrepancies", report.discrepancies.len())
            }
        );
        if !report.is_clean() {
            bail!(
                "audit verify found discrepancies in the prefilled ledger: {:?}",
                report.discrepancies.first()
            );
        }
        json!({ "entries": report.entries, "seconds": round3(took.as_secs_f64()), "clean": true })
    } else {
        json!({ "skipped": true })
    };
    let end_entries = journal_count(&mut f)?;
    drop((f, e));

    Ok(json!({
        "server": info,
        "prefill": {
            "accounts_seconds": round3(accounts_time.as_secs_f64()),
            "cycles": pre.cycles,
            "extra_credits": pre.credits,
            "seconds": round3(pre.elapsed.as_secs_f64()),
            "cycles_per_second": round3(pre.cycles as f64 / pre.elapsed.as_secs_f64()),
            "connections": pre.threads,
            "sqlite_synchronous": (backend == Backend::Sqlite).then_some(sync_name(prefill_sync)),
            "entries": entries,
            "bytes": full_size,
            "settle_seconds": round3(settle_time.as_secs_f64()),
            "empty_accounts_seconds": round3(empty_accounts_time.as_secs_f64()),
        },
        "cycles_per_second": cycles_json,
        "primary_cycles_per_second_full": primary.map(round3),
        "account_show_library_ms": show.json("ms"),
        "account_show_process": cli,
        "audit": audit_json,
        "entries_at_end": end_entries,
    }))
}

fn print_latency(pair: &Pair) {
    println!(
        "  {:<8} {:>9} {:>9} {:>9} {:>9}",
        "ledger", "median", "p95", "min", "max"
    );
    for (name, s) in [("empty", &pair.empty), ("full", &pair.full)] {
        println!(
            "  {name:<8} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
            s.median, s.p95, s.min, s.max
        );
    }
    println!("  full/empty (medians) {:.3}", pair.ratio());
}

fn redact(url: &str) -> String {
    DbUrl::parse(url)
        .map(|u| u.redacted())
        .unwrap_or_else(|_| url.to_string())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn run(full: bool) -> Result<()> {
    let p = Params::from_env(full)?;
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "asbb ledger benchmark ({}): {} accounts, {} journal entries, {} rounds x {} cycles; {cpus} CPUs, load {}",
        if full { "full" } else { "smoke; `cargo bench --bench ledger` for the real sizes" },
        p.accounts,
        p.entries,
        p.rounds,
        p.cycles,
        loadavg()
    );
    let load_start = loadavg();
    let mut results = serde_json::Map::new();
    for &b in &p.backends {
        results.insert(b.as_str().to_string(), bench_backend(&p, b)?);
    }
    let load_end = loadavg();
    let targets = if full {
        targets(&p, &results)
    } else {
        println!("\ntargets: not evaluated at smoke sizes (run `cargo bench --bench ledger`)");
        serde_json::Map::new()
    };
    let summary = json!({
        "bench": "asbb-ledger",
        "params": p.json(),
        "machine": { "cpus": cpus, "loadavg_start": load_start, "loadavg_end": load_end },
        "results": results,
        "targets": targets,
    });
    println!("{summary}");
    Ok(())
}

/// The targets, reported (never asserted): >= 5,000 hold+charge cycles/s on SQLite
/// with its default durability, and `account show` under 5 ms.
fn targets(p: &Params, results: &serde_json::Map<String, Value>) -> serde_json::Map<String, Value> {
    let sqlite_cycles = results
        .get("sqlite")
        .and_then(|s| s["cycles_per_second"]["synchronous_full"]["full"]["median"].as_f64());
    let mut targets = serde_json::Map::new();
    println!("\ntargets (at {} entries):", p.entries);
    if let Some(c) = sqlite_cycles {
        println!(
            "  sqlite hold+charge >= 5000 cycles/s (synchronous=full): {c:.0} -> {}",
            met(c >= 5000.0)
        );
        targets.insert(
            "sqlite_cycles_per_second_ge_5000".into(),
            json!({ "value": c, "met": c >= 5000.0 }),
        );
    }
    let batched_key = format!("synchronous_full_batched_{BATCH_CYCLES}");
    if let Some(c) = results
        .get("sqlite")
        .and_then(|s| s["cycles_per_second"][&batched_key]["full"]["median"].as_f64())
    {
        println!(
            "  sqlite hold+charge >= 5000 cycles/s (synchronous=full, {BATCH_CYCLES} cycles per transaction): {c:.0} -> {}",
            met(c >= 5000.0)
        );
        targets.insert(
            "sqlite_batched_cycles_per_second_ge_5000".into(),
            json!({ "value": c, "met": c >= 5000.0 }),
        );
    }
    let paths_key = "synchronous_full_batch_paths".to_string();
    if let Some(c) = results
        .get("sqlite")
        .and_then(|s| s["cycles_per_second"][&paths_key]["full"]["median"].as_f64())
    {
        println!(
            "  sqlite hold+charge >= 5000 cycles/s (synchronous=full, production batch paths): {c:.0} -> {}",
            met(c >= 5000.0)
        );
        targets.insert(
            "sqlite_batch_paths_cycles_per_second_ge_5000".into(),
            json!({ "value": c, "met": c >= 5000.0 }),
        );
    }
    for (name, r) in results {
        for (what, v) in [
            (
                "library",
                r["account_show_library_ms"]["full"]["median"].as_f64(),
            ),
            (
                "process",
                r["account_show_process"]["ms"]["full"]["median"].as_f64(),
            ),
        ] {
            if let Some(v) = v {
                println!(
                    "  {name} account show ({what}) < 5 ms: median {v:.3} ms -> {}",
                    met(v < 5.0)
                );
                targets.insert(
                    format!("{name}_account_show_{what}_lt_5ms"),
                    json!({ "value": v, "met": v < 5.0 }),
                );
            }
        }
    }
    targets
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}

fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; `cargo test` runs this target without it.
    let full = std::env::args().any(|a| a == "--bench");
    match run(full) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ledger benchmark failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}
