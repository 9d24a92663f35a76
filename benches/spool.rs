//! Spool benchmark: intake + reconcile of a generated spool of cost files with their holds,
//! end to end, on SQLite and (when `ASBB_TEST_POSTGRES_URL` is set) PostgreSQL, against a
//! baseline in the same run that only reads, parses, hashes and renames the same files.
//!
//! Each measured run happens in a child process (this binary re-executed), so its peak resident
//! memory (`VmHWM`) is its own; the run is repeated at a tenth of the backlog to show that
//! memory does not grow with the backlog.
//!
//! `cargo bench --bench spool` runs the full size (100,000 files). Without `--bench` (as
//! `cargo test --all-targets` runs it) it runs a small smoke pass on SQLite; it never asserts on
//! timings, but fails when a file is not taken in or a run is not charged.
//!
//! | variable | meaning | default (full / smoke) |
//! |---|---|---|
//! | `ASBB_BENCH_FILES` | cost files (one per job) | 100000 / 300 |
//! | `ASBB_BENCH_ROUNDS` | baseline rounds (median) | 3 / 1 |
//! | `ASBB_BENCH_BACKENDS` | `sqlite`, `postgres` or both | both if a server is set / sqlite |
//! | `ASBB_BENCH_SYNC` | SQLite `synchronous` for the measured run (`full`/`normal`) | full |
//! | `ASBB_BENCH_DIR` | where the spool and the SQLite file live | the system temp dir |

// Rates and ratios of timings; no money is computed in floating point here.
#![allow(clippy::float_arithmetic)]

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use asbb::db::ledger::{self, HoldOutcome, HoldRequest, LedgerError, NewAccount, OpContext};
use asbb::db::reconcile::{self, ReconcilePolicy};
use asbb::db::{ConnectOptions, Create, DbConn, DbUrl, SqliteSync};
use asbb::domain::{AccountName, UsdMicros};
use asbb::spool::files::{self, Name, NameFacts};
use asbb::spool::intake::{Intake, IntakeOptions, SpoolDirs};
use asbb::spool::{cost, Kind, Limits, Parsed};
use chrono::{TimeZone, Utc};
use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::Connection;
use rust_decimal::Decimal;

const POSTGRES_ENV: &str = "ASBB_TEST_POSTGRES_URL";
const CHILD_ENV: &str = "ASBB_BENCH_SPOOL_CHILD";
const ACCOUNTS: usize = 100;

fn env_num(name: &str, default: usize) -> Result<usize> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .with_context(|| format!("{name}={v}: not a number")),
        Err(_) => Ok(default),
    }
}

fn ctx() -> OpContext {
    OpContext::at(
        "asbb-bench",
        Utc.with_ymd_and_hms(2026, 1, 2, 0, 0, 0).unwrap(),
    )
}

fn account(i: usize) -> String {
    format!("proj-{i:03}")
}

/// Accounts, and a hold for nine jobs in ten (every tenth is unmatched).
fn prepare_ledger(conn: &mut DbConn, files: usize) -> Result<()> {
    asbb::db::migrate(conn)?;
    asbb::db::write_transaction(conn, |conn| {
        for i in 0..ACCOUNTS {
            ledger::create_account(
                conn,
                &ctx(),
                &NewAccount {
                    name: AccountName::new(&account(i)).expect("valid"),
                    display_name: account(i),
                    description: String::new(),
                    starts_at: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
                    ends_at: Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap(),
                    overdraft: UsdMicros::ZERO,
                    budget: UsdMicros::from_usd(10_000_000).expect("in range"),
                },
            )?;
        }
        Ok::<_, LedgerError>(())
    })?;
    for chunk in (0..files).collect::<Vec<_>>().chunks(2000) {
        asbb::db::write_transaction(conn, |conn| {
            for &j in chunk {
                if j % 10 == 9 {
                    continue;
                }
                let job = (100_000 + j).to_string();
                let key = format!("bench-hold-{job}");
                let out = ledger::place_hold(
                    conn,
                    &ctx(),
                    &HoldRequest {
                        account: &account(j % ACCOUNTS),
                        partition: None,
                        estimate: UsdMicros::from_usd(20).expect("in range"),
                        buffer: Decimal::new(12, 1),
                        cluster: None,
                        job_id: Some(&job),
                        user_name: None,
                        expires_at: None,
                        tasks: None,
                        key: &key,
                    },
                )?;
                if let HoldOutcome::Denied(d) = out {
                    panic!("hold denied: {d:?}");
                }
            }
            Ok::<_, LedgerError>(())
        })?;
    }
    Ok(())
}

/// Writes the spool: Go-like bodies, most found by job id, every fifth naming its hold number
/// (placed in order, so hold ids follow the jobs that have one).
fn write_spool(dir: &Path, files: usize) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    let mut hold_id = 0u64;
    for j in 0..files {
        let job = 100_000 + j;
        let has_hold = j % 10 != 9;
        if has_hold {
            hold_id += 1;
        }
        let reference = if has_hold && j % 5 == 0 {
            format!(r#","budget_transaction_id":"hold-{hold_id}""#)
        } else {
            String::new()
        };
        let body = format!(
            r#"{{"job_id":"{job}","account":"{}","actual_cost":{}.{:02},"job_state":"COMPLETED","user_id":"u{}","partition":"aws","started_at":"2026-01-02T00:00:00.123456789-07:00","completed_at":"2026-01-02T01:00:00Z","actual_wall_time":"1h0m0s","instance_types":["c5.xlarge"],"spot_savings":0.5{reference}}}"#,
            account(j % ACCOUNTS),
            j % 23,
            j % 100,
            j % 50
        );
        std::fs::write(dir.join(format!("job_{job}_cost.json")), body)?;
    }
    Ok(())
}

/// The baseline: list, read, hash, classify, parse and rename every file — no database.
fn baseline(dir: &Path) -> Result<(usize, Duration)> {
    let start = Instant::now();
    let processed = dir.join("processed");
    std::fs::create_dir_all(&processed)?;
    let lim = Limits::default();
    let mut n = 0;
    for entry in walkdir::WalkDir::new(dir).min_depth(1).max_depth(1) {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Name::Expected(NameFacts::Cost(job)) = files::classify(Kind::Cost, &name) else {
            continue;
        };
        let a = match files::read(Kind::Cost, entry.path(), 1 << 20) {
            Ok(a) => a,
            Err(e) => bail!("{name}: {e:?}"),
        };
        match cost::read(Some(&job), a.text.as_deref().unwrap_or(""), &lim) {
            Parsed::Record(r) => {
                std::hint::black_box(r);
            }
            other => bail!("{name} does not parse: {other:?}"),
        }
        std::fs::rename(entry.path(), processed.join(&name))?;
        n += 1;
    }
    Ok((n, start.elapsed()))
}

/// What a child run reports.
#[derive(Debug)]
struct ChildResult {
    files: u64,
    charged: u64,
    scan: Duration,
    reconcile: Duration,
    vm_hwm_kb: u64,
}

/// The measured run, in this (child) process: one `spool scan` pass and one `reconcile`, with
/// the production defaults (1,000 files and 500 records per transaction).
fn child(url: &str, dir: &Path, sync: SqliteSync) -> Result<()> {
    let mut conn = asbb::db::connect(
        &DbUrl::parse(url)?,
        &ConnectOptions {
            sqlite_synchronous: sync,
            ..ConnectOptions::default()
        },
        Create::Refuse,
    )?;
    let dirs = SpoolDirs {
        asbx: Some(dir.to_path_buf()),
        jobs: None,
        plans: None,
    };
    let t = Instant::now();
    let report = Intake::new(IntakeOptions::default()).scan(
        &mut conn,
        &dirs,
        Utc::now(),
        &|| false,
        &mut |_| {},
    )?;
    let scan = t.elapsed();
    let t = Instant::now();
    let r = reconcile::reconcile(
        &mut conn,
        &ctx(),
        &ReconcilePolicy::default(),
        None,
        &|| false,
    )?;
    let rec = t.elapsed();
    let hwm = std::fs::read_to_string("/proc/self/status")?
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmHWM:")
                .map(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>())
        })
        .transpose()?
        .unwrap_or(0);
    println!(
        "RESULT {} {} {} {} {}",
        report.stored,
        r.charged + r.unmatched,
        scan.as_micros(),
        rec.as_micros(),
        hwm
    );
    Ok(())
}

fn run_child(url: &str, dir: &Path, sync: &str) -> Result<ChildResult> {
    let exe = std::env::current_exe()?;
    let out = Command::new(exe)
        .env(CHILD_ENV, format!("{url}\n{}\n{sync}", dir.display()))
        .output()?;
    if !out.status.success() {
        bail!("child failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("RESULT "))
        .context("no result from the child")?;
    let f: Vec<u64> = line[7..]
        .split(' ')
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    Ok(ChildResult {
        files: f[0],
        charged: f[1],
        scan: Duration::from_micros(f[2]),
        reconcile: Duration::from_micros(f[3]),
        vm_hwm_kb: f[4],
    })
}

/// A fresh database on the backend: a SQLite file, or a new PostgreSQL database.
struct Db {
    url: String,
    drop: Option<(String, String)>,
}

impl Db {
    fn sqlite(dir: &Path, tag: &str) -> Db {
        let p = dir.join(format!("bench-{tag}.db"));
        for s in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{s}", p.display()));
        }
        Db {
            url: p.display().to_string(),
            drop: None,
        }
    }

    fn postgres(admin: &str, tag: &str) -> Result<Db> {
        let name = format!("asbb_bench_spool_{tag}_{}", std::process::id());
        let mut c = PgConnection::establish(admin)?;
        // Two statements: PostgreSQL runs a multi-statement string in one transaction, and
        // DROP/CREATE DATABASE refuse to run inside one.
        c.batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))?;
        c.batch_execute(&format!("CREATE DATABASE {name}"))?;
        let base = admin.rsplit_once('/').map_or(admin, |(b, _)| b);
        Ok(Db {
            url: format!("{base}/{name}"),
            drop: Some((admin.to_string(), name)),
        })
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        if let Some((admin, name)) = &self.drop {
            if let Ok(mut c) = PgConnection::establish(admin) {
                let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
            }
        }
    }
}

fn measure(db: &Db, work: &Path, files: usize, sync: &str) -> Result<ChildResult> {
    let t = Instant::now();
    let mut conn = asbb::db::connect(
        &DbUrl::parse(&db.url)?,
        &ConnectOptions {
            sqlite_synchronous: SqliteSync::Normal,
            ..ConnectOptions::default()
        },
        Create::Allow,
    )?;
    prepare_ledger(&mut conn, files)?;
    drop(conn);
    let spool = work.join("spool");
    write_spool(&spool, files)?;
    eprintln!(
        "  prepared {files} holds and files in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let r = run_child(&db.url, &spool, sync)?;
    if r.files != files as u64 || r.charged != files as u64 {
        bail!(
            "took in {} and charged {} of {files} files",
            r.files,
            r.charged
        );
    }
    Ok(r)
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> ExitCode {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        let mut parts = spec.splitn(3, '\n');
        let (url, dir, sync) = (
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or("full"),
        );
        let sync = if sync == "normal" {
            SqliteSync::Normal
        } else {
            SqliteSync::Full
        };
        return match child(url, Path::new(dir), sync) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("child: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("spool bench failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let full = std::env::args().any(|a| a == "--bench");
    let files = env_num("ASBB_BENCH_FILES", if full { 100_000 } else { 300 })?;
    let rounds = env_num("ASBB_BENCH_ROUNDS", if full { 3 } else { 1 })?.max(1);
    let sync = std::env::var("ASBB_BENCH_SYNC").unwrap_or_else(|_| "full".into());
    let pg = std::env::var(POSTGRES_ENV)
        .ok()
        .filter(|s| !s.trim().is_empty());
    let backends: Vec<String> = match std::env::var("ASBB_BENCH_BACKENDS") {
        Ok(b) => b.split(',').map(|s| s.trim().to_string()).collect(),
        Err(_) if full && pg.is_some() => vec!["sqlite".into(), "postgres".into()],
        Err(_) => vec!["sqlite".into()],
    };
    let base_dir: PathBuf = std::env::var_os("ASBB_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let work = tempfile::Builder::new()
        .prefix("asbb-spool-bench")
        .tempdir_in(&base_dir)?;
    println!(
        "spool benchmark ({}): {files} cost files, {ACCOUNTS} accounts, 9 in 10 with a hold; SQLite synchronous={sync}",
        if full { "full" } else { "smoke; `cargo bench --bench spool` for the real size" }
    );

    // Baseline: read, hash, parse and rename only.
    let mut base_rates = Vec::new();
    for _ in 0..rounds {
        let spool = work.path().join("spool");
        write_spool(&spool, files)?;
        let (n, d) = baseline(&spool)?;
        if n != files {
            bail!("baseline saw {n} of {files} files");
        }
        base_rates.push(rate(n as u64, d));
    }
    let base = median(base_rates.clone());
    println!(
        "baseline (read + sha256 + parse + rename, no database): {:.0} files/s (median of {rounds}; min {:.0}, max {:.0})",
        base,
        base_rates.iter().cloned().fold(f64::INFINITY, f64::min),
        base_rates.iter().cloned().fold(0.0, f64::max)
    );
    println!();
    println!("| backend | intake files/s | reconcile runs/s | end to end files/s | ratio to baseline | peak RSS |");
    println!("|---|---|---|---|---|---|");
    for b in &backends {
        let db = match b.as_str() {
            "sqlite" => Db::sqlite(work.path(), "full"),
            "postgres" => Db::postgres(
                pg.as_deref()
                    .context("ASBB_BENCH_BACKENDS names postgres but no server is set")?,
                "full",
            )?,
            other => bail!("unknown backend {other}"),
        };
        let r = measure(&db, work.path(), files, &sync)?;
        let e2e = rate(r.files, r.scan + r.reconcile);
        println!(
            "| {b} | {:.0} | {:.0} | {:.0} | {:.3} | {:.1} MB |",
            rate(r.files, r.scan),
            rate(r.charged, r.reconcile),
            e2e,
            e2e / base,
            r.vm_hwm_kb as f64 / 1024.0
        );
    }
    // Memory against backlog size: the same run at a tenth of the files.
    let small = (files / 10).max(10);
    let db = Db::sqlite(work.path(), "small");
    let r = measure(&db, work.path(), small, &sync)?;
    println!();
    println!(
        "peak RSS at a backlog of {small} files (SQLite): {:.1} MB — compare with the {files}-file row above",
        r.vm_hwm_kb as f64 / 1024.0
    );
    Ok(())
}
