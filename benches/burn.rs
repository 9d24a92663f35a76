//! Allocation and burn-rate benchmark: `allocations process` and `burn-rate compute` over many
//! accounts with years of daily history, on SQLite and (when `ASBB_TEST_POSTGRES_URL` is set)
//! PostgreSQL, each against a baseline in the same run.
//!
//! Setup (timed, reported, not a measurement): N accounts, each with a monthly allocation
//! schedule over the whole history and a charge every `ASBB_BENCH_CHARGE_EVERY` days, written
//! through the library's own operations in batched transactions; then `allocations process`
//! catches up every month (the catch-up figure) and `burn-rate compute` writes every daily
//! snapshot (the snapshot catch-up figure).
//!
//! Measured, medians of `ASBB_BENCH_ROUNDS` rounds:
//! 1. `allocations process` for the next month (one credit per account) against the baseline of
//!    the same number of plain `ledger::credit` calls in batches of the same size;
//! 2. `burn-rate compute` for the next day (one snapshot per account, alerts) against the
//!    baseline of reading the same journal rows the run reads (a plain scan);
//!
//! Also the peak resident memory (`VmHWM`) of the process.
//!
//! `cargo bench --bench burn` runs the full size; without `--bench` (as `cargo test
//! --all-targets` runs it) a smoke pass of a few accounts that fails only when an operation
//! fails or the audit is not clean.
//!
//! | variable | meaning | default (full / smoke) |
//! |---|---|---|
//! | `ASBB_BENCH_ACCOUNTS` | accounts | 10000 / 10 |
//! | `ASBB_BENCH_DAYS` | days of history | 1095 / 60 |
//! | `ASBB_BENCH_CHARGE_EVERY` | days between an account's charges | 7 / 1 |
//! | `ASBB_BENCH_ROUNDS` | measured rounds | 3 / 1 |
//! | `ASBB_BENCH_BACKENDS` | `sqlite`, `postgres` or both | both if a server is set / sqlite |

#![allow(clippy::float_arithmetic)]

use std::time::Instant;

use anyhow::{bail, Context, Result};
use asbb::db::allocations::{self, ProcessFilter};
use asbb::db::burn::{self, ComputeOptions};
use asbb::db::ledger::{self, ChargeUnmatched, MoneyOp, NewAccount, OpContext};
use asbb::db::{audit, schema, write_transaction, ConnectOptions, Create, DbConn, DbUrl};
use asbb::domain::burn::BurnThresholds;
use asbb::domain::schedule::{Frequency, Schedule};
use asbb::domain::{AccountName, UsdMicros};
use chrono::{DateTime, Duration, TimeZone, Utc};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;

fn env_num(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .replace('_', "")
            .parse()
            .with_context(|| format!("{name}={v}")),
        _ => Ok(default),
    }
}

fn peak_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2023, 1, 1, 0, 0, 0).unwrap()
}

const BATCH: usize = 500;

fn setup(conn: &mut DbConn, accounts: usize, days: i64, every: i64) -> Result<()> {
    let t0 = start();
    let end = t0 + Duration::days(days + 400);
    let ctx = OpContext::at("bench", t0);
    for chunk in (0..accounts).collect::<Vec<_>>().chunks(BATCH) {
        write_transaction(conn, |conn| -> Result<()> {
            for i in chunk {
                let name = format!("acct-{i:05}");
                ledger::create_account(
                    conn,
                    &ctx,
                    &NewAccount {
                        name: AccountName::new(&name)?,
                        display_name: name.clone(),
                        description: String::new(),
                        starts_at: t0,
                        ends_at: end,
                        overdraft: UsdMicros::ZERO,
                        budget: UsdMicros::ZERO,
                    },
                )?;
                let terms = Schedule::new(
                    t0,
                    end,
                    UsdMicros::from_usd(300)?,
                    UsdMicros::from_usd(1_000_000)?,
                    Frequency::Monthly,
                )?;
                allocations::create_schedule(conn, &ctx, &name, &terms, "")?;
            }
            Ok(())
        })?;
    }
    // Daily history: one charge per account every `every` days.
    let mut jobs: Vec<(usize, i64)> = Vec::new();
    let mut d = 0;
    while d < days {
        for i in 0..accounts {
            if (d + i as i64) % every == 0 {
                jobs.push((i, d));
            }
        }
        d += 1;
    }
    let t = Instant::now();
    for chunk in jobs.chunks(BATCH) {
        write_transaction(conn, |conn| -> Result<()> {
            for (i, d) in chunk {
                let name = format!("acct-{i:05}");
                let key = format!("bench:{i}:{d}");
                let at = t0 + Duration::days(*d) + Duration::hours(9);
                ledger::charge_without_hold(
                    conn,
                    &OpContext::at("bench", at),
                    &ChargeUnmatched {
                        account: &name,
                        amount: UsdMicros::from_micros(((*i as i64 % 17) + 3) * 1_000_000)?,
                        partition: None,
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
    }
    eprintln!(
        "  {} charges in {:.1} s",
        jobs.len(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

fn run(url: &str, full: bool) -> Result<serde_json::Value> {
    let accounts = env_num("ASBB_BENCH_ACCOUNTS", if full { 10_000 } else { 10 })? as usize;
    let days = env_num("ASBB_BENCH_DAYS", if full { 1095 } else { 60 })? as i64;
    let every = env_num("ASBB_BENCH_CHARGE_EVERY", if full { 7 } else { 1 })?.max(1) as i64;
    let rounds = env_num("ASBB_BENCH_ROUNDS", if full { 3 } else { 1 })?.max(1) as usize;
    let parsed = DbUrl::parse(url)?;
    let mut conn = asbb::db::connect(&parsed, &ConnectOptions::default(), Create::Allow)?;
    if let DbConn::Sqlite(c) = &mut conn {
        c.batch_execute("PRAGMA synchronous = NORMAL")?;
    }
    asbb::db::migrate(&mut conn)?;
    let t = Instant::now();
    setup(&mut conn, accounts, days, every)?;
    let setup_s = t.elapsed().as_secs_f64();
    let t0 = start();
    let history_end = t0 + Duration::days(days);
    let t = Instant::now();
    let r = allocations::process(
        &mut conn,
        &OpContext::at("bench", history_end),
        &ProcessFilter::default(),
        false,
    )?;
    let alloc_catch_up_s = t.elapsed().as_secs_f64();
    let credits_catch_up = r.periods.len();
    let opts = ComputeOptions {
        window_days: 30,
        thresholds: BurnThresholds::default(),
    };
    let t = Instant::now();
    let c = burn::compute(&mut conn, history_end, history_end, &opts, &mut |_, _| {})?;
    let burn_catch_up_s = t.elapsed().as_secs_f64();
    let snapshots_catch_up = c.days_written;
    let mut alloc = Vec::new();
    let mut alloc_base = Vec::new();
    let mut compute = Vec::new();
    let mut compute_base = Vec::new();
    let mut month = history_end;
    for round in 0..rounds {
        // allocations process for the next month: one credit per account.
        month = month.checked_add_months(chrono::Months::new(1)).unwrap();
        let t = Instant::now();
        let r = allocations::process(
            &mut conn,
            &OpContext::at("bench", month),
            &ProcessFilter::default(),
            false,
        )?;
        alloc.push(t.elapsed().as_secs_f64());
        if r.failures() > 0 {
            bail!(
                "allocations failed: {:?}",
                r.periods.iter().find(|p| p.error.is_some())
            );
        }
        // Baseline: the same number of plain credits in batches of the same size.
        let t = Instant::now();
        let n = r.periods.len();
        for chunk in (0..n)
            .collect::<Vec<_>>()
            .chunks(allocations::SCHEDULES_PER_TRANSACTION as usize)
        {
            write_transaction(&mut conn, |conn| -> Result<()> {
                for i in chunk {
                    let name = format!("acct-{:05}", i % accounts);
                    let key = format!("bench-base:{round}:{i}");
                    ledger::credit(
                        conn,
                        &OpContext::at("bench", month),
                        &MoneyOp {
                            account: &name,
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
        alloc_base.push(t.elapsed().as_secs_f64());
        // burn-rate compute for the next day(s) since the last run.
        let day = month + Duration::days(1);
        let t = Instant::now();
        burn::compute(&mut conn, day, day, &opts, &mut |_, _| {})?;
        compute.push(t.elapsed().as_secs_f64());
        // Baseline: a plain scan of the journal rows of the window the run reads.
        let t = Instant::now();
        let rows: Vec<(i64, i64)> = schema::journal::table
            .filter(
                schema::journal::effective_at
                    .ge(asbb::domain::time::to_naive(month - Duration::days(31))),
            )
            .select((
                schema::journal::account_id,
                schema::journal::charged_delta_micros,
            ))
            .load(&mut conn)?;
        std::hint::black_box(rows.len());
        compute_base.push(t.elapsed().as_secs_f64());
    }
    let report = audit::verify(&mut conn, None, &mut |_| {})?;
    if !report.is_clean() {
        bail!("audit found {} discrepancies", report.discrepancies.len());
    }
    let (a, ab, c, cb) = (
        median(alloc),
        median(alloc_base),
        median(compute),
        median(compute_base),
    );
    Ok(serde_json::json!({
        "accounts": accounts, "days": days, "charge_every_days": every, "journal_entries": report.entries,
        "setup_s": setup_s,
        "allocations_catch_up_s": alloc_catch_up_s, "allocations_catch_up_credits": credits_catch_up,
        "burn_catch_up_s": burn_catch_up_s, "snapshots_catch_up": snapshots_catch_up,
        "allocations_process_s": a, "allocations_baseline_s": ab, "allocations_ratio": a / ab.max(1e-9),
        "burn_compute_s": c, "burn_scan_baseline_s": cb, "burn_ratio": c / cb.max(1e-9),
        "peak_rss_mb": peak_kb() as f64 / 1024.0,
    }))
}

fn main() -> Result<()> {
    let full = std::env::args().any(|a| a == "--bench");
    let pg = std::env::var("ASBB_TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.trim().is_empty());
    let backends = std::env::var("ASBB_BENCH_BACKENDS").unwrap_or_else(|_| {
        if full && pg.is_some() {
            "sqlite,postgres".into()
        } else {
            "sqlite".into()
        }
    });
    let dir = tempfile_dir()?;
    for b in backends.split(',').map(str::trim) {
        let url = match b {
            "sqlite" => dir.join("burn.db").display().to_string(),
            "postgres" => {
                let admin = pg.clone().context("ASBB_TEST_POSTGRES_URL is not set")?;
                let name = format!("asbb_bench_burn_{}", std::process::id());
                let mut c = diesel::pg::PgConnection::establish(&admin)?;
                c.batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {name}; CREATE DATABASE {name}"
                ))?;
                let (base, _) = admin.rsplit_once('/').context("postgres url")?;
                format!("{base}/{name}")
            }
            other => bail!("unknown backend {other}"),
        };
        eprintln!("{b}: preparing");
        let v = run(&url, full)?;
        println!("{b}: {}", serde_json::to_string_pretty(&v)?);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!("asbb-bench-burn-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}
