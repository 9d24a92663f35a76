//! Finance reports over a large ledger: the journal export and a grant statement over
//! 1,000,000 journal entries (target: ≤ 10 s each with bounded memory on SQLite), on SQLite and
//! PostgreSQL, against two baselines measured in the same run:
//!
//! - **scan**: the same rows read with the same keyset-paged query (5,000 entries a page, in
//!   (effective_at, id) order), writing nothing — what reading the journal costs;
//! - **raw CSV**: that scan writing every column raw with the csv crate — what writing a file of
//!   that size costs, without attribution, F&A split, rounding or neutralisation.
//!
//! The ledger: 100 accounts linked to one 3-year grant (12-month budget periods, 30 % F&A,
//! carry-over none), hold + charge (+ release) cycles spread evenly over the grant's life, and
//! the period transitions booked as they come due — every entry written through the library
//! (`ledger::place_hold`, `ledger::charge_hold`, `grants::process`) in batched transactions.
//! It is built once on SQLite and kept in `target/bench-cache/` for later invocations (rebuilt
//! when the schema or the size changes); PostgreSQL gets a row-for-row copy of it (same ids,
//! same hashes), which `asbb audit verify` would accept like the original.
//!
//! Every measured run is a child process (this binary re-executed with
//! `ASBB_BENCH_REPORTS_CHILD`), so its peak resident memory (`VmHWM`) is its own.
//!
//! `cargo bench --bench reports` runs the full size; without `--bench` (as `cargo test
//! --all-targets` runs it) a smoke pass of a few thousand entries that fails only when a report
//! fails or does not tie out.
//!
//! | variable | meaning | default (full / smoke) |
//! |---|---|---|
//! | `ASBB_BENCH_REPORT_ENTRIES` | journal entries, about | 1000000 / 3000 |
//! | `ASBB_BENCH_ROUNDS` | measured rounds per task | 3 / 1 |
//! | `ASBB_BENCH_BACKENDS` | `sqlite`, `postgres` or both | both if a server is set / sqlite |
//! | `ASBB_TEST_POSTGRES_URL` | PostgreSQL server (admin URL) | — |

// Timings and ratios are floats; no money is computed here.
#![allow(clippy::float_arithmetic)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use asbb::db::grants::{self, NewGrant};
use asbb::db::ledger::{self, ChargeHold, HoldOutcome, HoldRequest, NewAccount, OpContext};
use asbb::db::{schema, ConnectOptions, Create, DbConn, DbUrl, SqliteSync};
use asbb::domain::grant::CarryOver;
use asbb::domain::{AccountName, UsdMicros};
use asbb::report::templates::Templates;
use asbb::report::{Format, Kind, Options, Request, Session};
use chrono::{DateTime, Duration, TimeZone, Utc};
use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::prelude::*;
use rust_decimal::Decimal;

const POSTGRES_ENV: &str = "ASBB_TEST_POSTGRES_URL";
const CHILD_ENV: &str = "ASBB_BENCH_REPORTS_CHILD";
const ACCOUNTS: usize = 100;
const GRANT: &str = "BENCH-GRANT-1";
/// Operations per prefill transaction (each in its own savepoint).
const OPS_PER_TRANSACTION: usize = 2_000;
/// Rows per INSERT when copying to PostgreSQL (within its 65,535 bind parameters).
const COPY_ROWS: i64 = 2_000;
const PAGE: i64 = 5_000;
const USERS: [&str; 5] = ["alice", "bob", "carol", "dave", "erin"];
const PARTITIONS: [&str; 3] = ["gpu-aws", "cpu-aws", "mem-aws"];

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap()
}

fn end() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap()
}

fn peak_rss_kb() -> u64 {
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

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn account_name(i: usize) -> String {
    format!("bench-{i:03}")
}

fn connect(url: &str, create: Create) -> Result<DbConn> {
    let opts = ConnectOptions {
        sqlite_synchronous: SqliteSync::Normal,
        ..ConnectOptions::default()
    };
    Ok(asbb::db::connect(&DbUrl::parse(url)?, &opts, create)?)
}

/// A deterministic generator (xorshift), so every prefill is the same ledger.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// Builds the ledger on SQLite through the library; returns the number of entries.
fn prefill(url: &str, entries: u64) -> Result<i64> {
    let mut conn = connect(url, Create::Allow)?;
    asbb::db::migrate(&mut conn)?;
    let t0 = start();
    let ctx = OpContext::at("asbb-bench", t0);
    for i in 0..ACCOUNTS {
        ledger::create_account(
            &mut conn,
            &ctx,
            &NewAccount {
                name: AccountName::new(&account_name(i))?,
                display_name: format!("Bench lab {i}"),
                description: String::new(),
                starts_at: t0,
                ends_at: end(),
                overdraft: UsdMicros::ZERO,
                budget: UsdMicros::ZERO,
            },
        )?;
    }
    grants::create(
        &mut conn,
        &ctx,
        &NewGrant {
            number: GRANT.into(),
            agency: "National Science Foundation".into(),
            program: "Benchmarks".into(),
            pi: "Dr. Bench".into(),
            co_pis: vec![],
            institution: "Research University".into(),
            department: "Computing".into(),
            amount: UsdMicros::from_usd(300_000_000)?,
            start: t0,
            end: end(),
            period_months: 12,
            indirect_rate: Decimal::new(30, 2),
            federal_award_id: "47.070".into(),
            project_code: String::new(),
            cost_center: String::new(),
            carry_over: CarryOver::None,
            period_budgets: None,
        },
    )?;
    for i in 0..ACCOUNTS {
        grants::link(&mut conn, &ctx, GRANT, &account_name(i), Decimal::ONE)?;
    }
    let cycles = entries.saturating_sub(2 * ACCOUNTS as u64) / 3;
    let span = (end() - t0).num_seconds() - 7_200;
    let mut rng = Rng(0x5EED_0001);
    let mut boundaries: Vec<DateTime<Utc>> = (1..3)
        .map(|y| Utc.with_ymd_and_hms(2024 + y, 1, 1, 0, 0, 0).unwrap())
        .collect();
    let started = Instant::now();
    let mut done = 0u64;
    while done < cycles {
        let n = (cycles - done).min(OPS_PER_TRANSACTION as u64 / 2);
        asbb::db::write_transaction(&mut conn, |c| -> Result<()> {
            for k in done..done + n {
                let t = t0 + Duration::seconds(span * k as i64 / cycles as i64);
                while boundaries.first().is_some_and(|b| *b <= t) {
                    let b = boundaries.remove(0);
                    grants::process(c, &OpContext::at("asbb-bench", b), None, false)?;
                }
                let account = account_name(rng.below(ACCOUNTS));
                let job = (k + 1).to_string();
                let estimate = UsdMicros::from_micros(1_000_000 + rng.below(49_000_000) as i64)?;
                let key = format!("bench-{k}-hold");
                let hold = match ledger::place_hold(
                    c,
                    &OpContext::at("asbb-bench", t),
                    &HoldRequest {
                        account: &account,
                        partition: Some(PARTITIONS[rng.below(3)]),
                        estimate,
                        buffer: Decimal::new(12, 1),
                        cluster: Some("aws-burst"),
                        job_id: Some(&job),
                        user_name: Some(USERS[rng.below(5)]),
                        expires_at: Some(t + Duration::days(7)),
                        tasks: None,
                        key: &key,
                    },
                )? {
                    HoldOutcome::Placed { hold, .. } => hold,
                    HoldOutcome::Denied(d) => bail!("hold denied on {account}: {}", d.message),
                };
                let actual = UsdMicros::from_micros(
                    estimate.micros() / 100 * (30 + rng.below(71) as i64) + rng.below(9_999) as i64,
                )?;
                let key = format!("bench-{k}-charge");
                ledger::charge_hold(
                    c,
                    &OpContext::at("asbb-bench", t + Duration::hours(1)),
                    &ChargeHold {
                        hold_id: hold.id,
                        actual,
                        job_id: None,
                        reason: "",
                        key: &key,
                    },
                )?;
            }
            Ok(())
        })?;
        done += n;
        if done % 20_000 < n || done == cycles {
            eprintln!(
                "  prefill: {done}/{cycles} cycles, {:.0} s, {:.0} entries/s",
                started.elapsed().as_secs_f64(),
                (done * 3) as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    for b in boundaries {
        grants::process(&mut conn, &OpContext::at("asbb-bench", b), None, false)?;
    }
    let n: i64 = schema::journal::table.count().get_result(&mut conn)?;
    Ok(n)
}

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = schema::accounts)]
struct AccountsCopy {
    id: i64,
    name: String,
    display_name: String,
    description: String,
    starts_at: chrono::NaiveDateTime,
    ends_at: chrono::NaiveDateTime,
    status: String,
    overdraft_micros: i64,
    credited_micros: i64,
    charged_micros: i64,
    held_micros: i64,
    entry_count: i64,
    chain_head: String,
    settings_count: i64,
    settings_head: String,
    created_at: chrono::NaiveDateTime,
    updated_at: chrono::NaiveDateTime,
}

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = schema::account_partitions)]
struct AccountPartitionsCopy {
    account_id: i64,
    partition: String,
    limit_micros: Option<i64>,
    charged_micros: i64,
    held_micros: i64,
    updated_at: chrono::NaiveDateTime,
}

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = schema::holds)]
struct HoldsCopy {
    id: i64,
    account_id: i64,
    partition: Option<String>,
    cluster: Option<String>,
    job_id: Option<String>,
    user_name: Option<String>,
    estimate_micros: i64,
    buffer: String,
    amount_micros: i64,
    remaining_micros: i64,
    charged_micros: i64,
    state: String,
    flags: String,
    expires_at: Option<chrono::NaiveDateTime>,
    created_at: chrono::NaiveDateTime,
    resolved_at: Option<chrono::NaiveDateTime>,
    idempotency_key: String,
    tasks: Option<i64>,
    tasks_charged: i64,
}

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = schema::journal)]
struct JournalCopy {
    id: i64,
    account_id: i64,
    seq: i64,
    kind: String,
    amount_micros: i64,
    credited_delta_micros: i64,
    charged_delta_micros: i64,
    held_delta_micros: i64,
    hold_id: Option<i64>,
    cluster: Option<String>,
    job_id: Option<String>,
    partition: Option<String>,
    user_name: Option<String>,
    actor: String,
    reason: String,
    flags: String,
    idempotency_key: String,
    request_digest: String,
    effective_at: chrono::NaiveDateTime,
    recorded_at: chrono::NaiveDateTime,
    prev_hash: String,
    hash: String,
}

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = schema::account_changes)]
struct AccountChangesCopy {
    id: i64,
    account_id: i64,
    field: String,
    old_value: String,
    new_value: String,
    actor: String,
    reason: String,
    changed_at: chrono::NaiveDateTime,
    seq: i64,
    prev_hash: String,
    hash: String,
}

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = schema::grants)]
struct GrantsCopy {
    id: i64,
    number: String,
    agency: String,
    program: String,
    pi: String,
    co_pis: String,
    institution: String,
    department: String,
    amount_micros: i64,
    starts_at: chrono::NaiveDateTime,
    ends_at: chrono::NaiveDateTime,
    period_months: i64,
    indirect_rate: String,
    federal_award_id: String,
    project_code: String,
    cost_center: String,
    carry_over: String,
    status: String,
    created_by: String,
    created_at: chrono::NaiveDateTime,
    updated_at: chrono::NaiveDateTime,
    closed_at: Option<chrono::NaiveDateTime>,
    close_reason: String,
}

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = schema::grant_periods)]
struct GrantPeriodsCopy {
    grant_id: i64,
    number: i64,
    starts_at: chrono::NaiveDateTime,
    ends_at: chrono::NaiveDateTime,
    budget_micros: i64,
    status: String,
    carry_in_micros: i64,
    credited_micros: i64,
    spent_micros: Option<i64>,
    carried_out_micros: Option<i64>,
    expired_micros: Option<i64>,
    activated_at: Option<chrono::NaiveDateTime>,
    closed_at: Option<chrono::NaiveDateTime>,
}

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = schema::grant_links)]
struct GrantLinksCopy {
    id: i64,
    grant_id: i64,
    account_id: i64,
    share_percent: String,
    linked_at: chrono::NaiveDateTime,
    unlinked_at: Option<chrono::NaiveDateTime>,
    linked_by: String,
    unlinked_by: Option<String>,
}

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = schema::grant_period_accounts)]
struct GrantPeriodAccountsCopy {
    grant_id: i64,
    period: i64,
    account_id: i64,
    credited_micros: i64,
    credit_entry_id: Option<i64>,
    carry_in_micros: i64,
    activated_at: chrono::NaiveDateTime,
    spent_micros: Option<i64>,
    carried_micros: Option<i64>,
    expired_micros: Option<i64>,
    expiry_entry_id: Option<i64>,
    closed_at: Option<chrono::NaiveDateTime>,
    note: String,
}
macro_rules! copy_table {
    ($src:expr, $dst:expr, $table:path, $row:ty, $key:expr) => {{
        use $table as t;
        let mut offset = 0i64;
        loop {
            let rows: Vec<$row> = t::table
                .select(<$row>::as_select())
                .order($key)
                .limit(COPY_ROWS)
                .offset(offset)
                .load($src)?;
            if rows.is_empty() {
                break;
            }
            diesel::insert_into(t::table).values(&rows).execute($dst)?;
            offset += rows.len() as i64;
        }
        offset
    }};
}

/// Copies the SQLite ledger row for row into a fresh PostgreSQL database.
fn copy_to_postgres(sqlite_url: &str, admin: &str, name: &str) -> Result<String> {
    let mut admin_conn = PgConnection::establish(admin).context("connect to PostgreSQL")?;
    admin_conn.batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\""))?;
    admin_conn.batch_execute(&format!("CREATE DATABASE \"{name}\""))?;
    let url = pg_url_with_database(admin, name);
    {
        let mut c = connect(&url, Create::Allow)?;
        asbb::db::migrate(&mut c)?;
    }
    let DbConn::Sqlite(mut src) = connect(sqlite_url, Create::Refuse)? else {
        bail!("not SQLite")
    };
    let mut dst = PgConnection::establish(&url)?;
    let started = Instant::now();
    dst.transaction(|dst| -> Result<()> {
        copy_table!(
            &mut src,
            dst,
            schema::accounts,
            AccountsCopy,
            schema::accounts::id
        );
        copy_table!(
            &mut src,
            dst,
            schema::account_changes,
            AccountChangesCopy,
            schema::account_changes::id
        );
        copy_table!(
            &mut src,
            dst,
            schema::account_partitions,
            AccountPartitionsCopy,
            (
                schema::account_partitions::account_id,
                schema::account_partitions::partition
            )
        );
        copy_table!(&mut src, dst, schema::holds, HoldsCopy, schema::holds::id);
        let n = copy_table!(
            &mut src,
            dst,
            schema::journal,
            JournalCopy,
            schema::journal::id
        );
        copy_table!(
            &mut src,
            dst,
            schema::grants,
            GrantsCopy,
            schema::grants::id
        );
        copy_table!(
            &mut src,
            dst,
            schema::grant_periods,
            GrantPeriodsCopy,
            (
                schema::grant_periods::grant_id,
                schema::grant_periods::number
            )
        );
        copy_table!(
            &mut src,
            dst,
            schema::grant_links,
            GrantLinksCopy,
            schema::grant_links::id
        );
        copy_table!(
            &mut src,
            dst,
            schema::grant_period_accounts,
            GrantPeriodAccountsCopy,
            (
                schema::grant_period_accounts::grant_id,
                schema::grant_period_accounts::period,
                schema::grant_period_accounts::account_id
            )
        );
        eprintln!(
            "  postgres: copied {n} journal entries in {:.0} s",
            started.elapsed().as_secs_f64()
        );
        Ok(())
    })?;
    dst.batch_execute("ANALYZE")?;
    Ok(url)
}

fn pg_url_with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let (scheme, rest) = base.split_once("://").unwrap_or(("postgres", base));
    let authority = rest.split_once('/').map_or(rest, |(a, _)| a);
    let mut out = format!("{scheme}://{authority}/{database}");
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

type JournalTuple = (
    i64,
    i64,
    i64,
    String,
    i64,
    i64,
    i64,
    i64,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
    String,
    String,
    String,
    String,
    chrono::NaiveDateTime,
    chrono::NaiveDateTime,
    String,
    String,
);

/// The baselines' read: every journal entry, keyset-paged in (effective_at, id) order like the
/// reports read it; `row` sees each.
fn scan(conn: &mut DbConn, mut row: impl FnMut(&JournalTuple) -> Result<()>) -> Result<u64> {
    use schema::journal as j;
    let mut last: Option<(chrono::NaiveDateTime, i64)> = None;
    let mut n = 0u64;
    loop {
        let mut q = j::table
            .select((
                j::id,
                j::account_id,
                j::seq,
                j::kind,
                j::amount_micros,
                j::credited_delta_micros,
                j::charged_delta_micros,
                j::held_delta_micros,
                j::hold_id,
                j::cluster,
                j::job_id,
                j::partition,
                j::user_name,
                j::actor,
                j::reason,
                j::flags,
                j::idempotency_key,
                j::request_digest,
                j::effective_at,
                j::recorded_at,
                j::prev_hash,
                j::hash,
            ))
            .order((j::effective_at, j::id))
            .limit(PAGE)
            .into_boxed();
        if let Some((t, id)) = last {
            q = q.filter(
                j::effective_at
                    .ge(t)
                    .and(j::effective_at.gt(t).or(j::id.gt(id))),
            );
        }
        let rows: Vec<JournalTuple> = q.load(conn)?;
        let Some(tail) = rows.last() else { break };
        last = Some((tail.18, tail.0));
        for r in &rows {
            row(r)?;
        }
        n += rows.len() as u64;
        if (rows.len() as i64) < PAGE {
            break;
        }
    }
    Ok(n)
}

/// One measured task, in this (child) process.
fn child(task: &str, url: &str, out: &Path) -> Result<()> {
    let mut conn = connect(url, Create::Refuse)?;
    std::fs::create_dir_all(out)?;
    let started = Instant::now();
    let rows = match task {
        "scan" => scan(&mut conn, |_| Ok(()))?,
        "raw-csv" => {
            let mut w = csv::Writer::from_writer(std::io::BufWriter::new(std::fs::File::create(
                out.join("raw.csv"),
            )?));
            let n = scan(&mut conn, |r| {
                w.write_record([
                    r.0.to_string(),
                    r.1.to_string(),
                    r.2.to_string(),
                    r.3.clone(),
                    r.4.to_string(),
                    r.5.to_string(),
                    r.6.to_string(),
                    r.7.to_string(),
                    r.8.map(|x| x.to_string()).unwrap_or_default(),
                    r.9.clone().unwrap_or_default(),
                    r.10.clone().unwrap_or_default(),
                    r.11.clone().unwrap_or_default(),
                    r.12.clone().unwrap_or_default(),
                    r.13.clone(),
                    r.14.clone(),
                    r.15.clone(),
                    r.16.clone(),
                    r.18.to_string(),
                    r.19.to_string(),
                    r.20.clone(),
                    r.21.clone(),
                ])?;
                Ok(())
            })?;
            w.flush()?;
            n
        }
        "journal" | "grant-statement" => {
            let templates = Templates::shipped();
            let mut s = Session::new(&mut conn, &templates, Options::default())?;
            let (kind, grant, formats) = if task == "journal" {
                (Kind::Journal, None, vec![Format::Csv])
            } else {
                (
                    Kind::GrantStatement,
                    Some(GRANT.to_string()),
                    vec![Format::Csv, Format::Html],
                )
            };
            let req = Request {
                kind,
                grant,
                account: None,
                period: None,
                from: None,
                to: None,
                as_of: None,
                formats,
            };
            let mut read = 0u64;
            let w = s.write(&req, out, None, &mut |n| read += n)?;
            let _ = w;
            read
        }
        other => bail!("unknown task {other}"),
    };
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({ "secs": secs, "rows": rows, "peak_rss_kb": peak_rss_kb() })
    );
    Ok(())
}

fn run_child(task: &str, url: &str, out: &Path) -> Result<(f64, u64, u64)> {
    let exe = std::env::current_exe()?;
    let o = std::process::Command::new(exe)
        .env(CHILD_ENV, format!("{task}\n{url}\n{}", out.display()))
        .output()?;
    if !o.status.success() {
        bail!("{task} failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    let line = String::from_utf8_lossy(&o.stdout);
    let v: serde_json::Value = serde_json::from_str(line.trim().lines().last().unwrap_or(""))
        .with_context(|| format!("child output: {line}"))?;
    Ok((
        v["secs"].as_f64().unwrap_or(0.0),
        v["rows"].as_u64().unwrap_or(0),
        v["peak_rss_kb"].as_u64().unwrap_or(0),
    ))
}

/// Checks that the reports of a backend tie out (the smoke pass's only failure condition
/// besides an error): the journal re-totals to the accounts, the grant closes at their balance.
fn check(url: &str, out: &Path) -> Result<()> {
    let mut conn = connect(url, Create::Refuse)?;
    let accounts = asbb::db::queries::accounts(&mut conn, None)?;
    let credited: i64 = accounts.iter().map(|a| a.balances.credited.micros()).sum();
    let charged: i64 = accounts.iter().map(|a| a.balances.charged.micros()).sum();
    let mut r = csv::Reader::from_path(out.join("journal.csv"))?;
    let h = r.headers()?.clone();
    let idx = |name: &str| {
        h.iter()
            .position(|x| x.trim_start_matches('\u{feff}') == name)
            .ok_or_else(|| anyhow!("no column {name}"))
    };
    let (ci, chi) = (
        idx("Credited change (micro-USD)")?,
        idx("Charged change (micro-USD)")?,
    );
    let (mut c, mut ch) = (0i64, 0i64);
    for rec in r.records() {
        let rec = rec?;
        c += rec[ci].parse::<i64>()?;
        ch += rec[chi].parse::<i64>()?;
    }
    if (c, ch) != (credited, charged) {
        bail!("journal export re-totals to {c}/{ch}, the ledger has {credited}/{charged}");
    }
    let text = std::fs::read_to_string(out.join(format!("grant-statement-{GRANT}.csv")))?;
    let last = text.lines().last().unwrap_or("");
    let closing = asbb::domain::UsdMicros::from_stored(credited - charged).to_cents_string();
    if !last.contains(&format!(",{closing},")) {
        bail!("grant statement total {last} does not close at {closing}");
    }
    Ok(())
}

fn main() -> Result<()> {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        let mut parts = spec.splitn(3, '\n');
        let (task, url, out) = (
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        return child(task, url, Path::new(out));
    }
    let full = std::env::args().any(|a| a == "--bench");
    let entries = env_num(
        "ASBB_BENCH_REPORT_ENTRIES",
        if full { 1_000_000 } else { 3_000 },
    );
    let rounds = env_num("ASBB_BENCH_ROUNDS", if full { 3 } else { 1 }).max(1) as usize;
    let pg_admin = std::env::var(POSTGRES_ENV)
        .ok()
        .filter(|u| !u.trim().is_empty());
    let backends: Vec<&str> = match std::env::var("ASBB_BENCH_BACKENDS").as_deref() {
        Ok("sqlite") => vec!["sqlite"],
        Ok("postgres") => vec!["postgres"],
        _ if pg_admin.is_some() && full => vec!["sqlite", "postgres"],
        _ => vec!["sqlite"],
    };
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let cache = target.join("bench-cache");
    std::fs::create_dir_all(&cache)?;
    // The cache is keyed by the size and by the migrations' text: a schema change rebuilds it.
    let migrations = {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
        for e in walkdir::WalkDir::new(root).sort_by_file_name() {
            let e = e?;
            if e.file_type().is_file() {
                h.update(std::fs::read(e.path())?);
            }
        }
        h.finalize()
            .iter()
            .take(4)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let sqlite_path = cache.join(format!("reports-{entries}-{migrations}.db"));
    let sqlite_url = sqlite_path
        .to_str()
        .ok_or_else(|| anyhow!("cache path is not UTF-8"))?
        .to_string();
    let have = sqlite_path.exists()
        && connect(&sqlite_url, Create::Refuse)
            .ok()
            .and_then(|mut c| asbb::db::check_schema(&mut c).ok().map(|_| c))
            .and_then(|mut c| {
                schema::journal::table
                    .count()
                    .get_result::<i64>(&mut c)
                    .ok()
            })
            .is_some_and(|n| n as u64 + 1_000 >= entries);
    let n_entries = if have {
        eprintln!("reusing the prepared ledger {}", sqlite_path.display());
        let mut c = connect(&sqlite_url, Create::Refuse)?;
        schema::journal::table.count().get_result::<i64>(&mut c)?
    } else {
        for ext in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{sqlite_url}{ext}"));
        }
        eprintln!(
            "preparing a ledger of about {entries} entries in {} (kept for later runs)",
            sqlite_path.display()
        );
        let tmp_url = format!("{sqlite_url}.building");
        for ext in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{tmp_url}{ext}"));
        }
        let n = prefill(&tmp_url, entries)?;
        {
            let mut c = connect(&tmp_url, Create::Refuse)?;
            c.batch_execute("PRAGMA wal_checkpoint(TRUNCATE)")?;
        }
        std::fs::rename(&tmp_url, &sqlite_path)?;
        n
    };
    let scratch = tempfile::Builder::new()
        .prefix("asbb-bench-reports-")
        .tempdir()?;
    let mut results = Vec::new();
    for backend in &backends {
        let url = match *backend {
            "sqlite" => sqlite_url.clone(),
            _ => copy_to_postgres(
                &sqlite_url,
                pg_admin
                    .as_deref()
                    .ok_or_else(|| anyhow!("{POSTGRES_ENV} is not set"))?,
                &format!("asbb_bench_reports_{}", std::process::id()),
            )?,
        };
        for task in ["scan", "raw-csv", "journal", "grant-statement"] {
            let mut secs = Vec::new();
            let mut rss = 0u64;
            let mut rows = 0u64;
            for r in 0..rounds {
                let out = scratch.path().join(format!("{backend}-{task}-{r}"));
                let (s, n, kb) = run_child(task, &url, &out)?;
                secs.push(s);
                rss = rss.max(kb);
                rows = n;
                if r + 1 < rounds {
                    let _ = std::fs::remove_dir_all(&out);
                }
            }
            let m = median(secs.clone());
            eprintln!("  {backend} {task}: median {m:.2} s over {rounds} round(s) ({secs:.2?}), {rows} entries, peak RSS {} MiB", rss / 1024);
            results.push((backend.to_string(), task, m, rss, rows));
        }
        let last = rounds - 1;
        let out = scratch.path().join(format!("{backend}-journal-{last}"));
        let gs = scratch
            .path()
            .join(format!("{backend}-grant-statement-{last}"));
        std::fs::copy(
            gs.join(format!("grant-statement-{GRANT}.csv")),
            out.join(format!("grant-statement-{GRANT}.csv")),
        )?;
        check(&url, &out)?;
        if *backend == "postgres" {
            if let Some(admin) = &pg_admin {
                let mut c = PgConnection::establish(admin)?;
                let _ = c.batch_execute(&format!(
                    "DROP DATABASE IF EXISTS \"asbb_bench_reports_{}\" WITH (FORCE)",
                    std::process::id()
                ));
            }
        }
    }
    let mut stdout = std::io::stdout().lock();
    writeln!(
        stdout,
        "\nreports over {n_entries} journal entries ({}; machine shared, figures noisy):",
        if full {
            "full"
        } else {
            "smoke; `cargo bench --bench reports` for the real size"
        }
    )?;
    writeln!(
        stdout,
        "{:<9} {:<16} {:>9} {:>9} {:>11} {:>10}",
        "backend", "task", "median s", "x scan", "x raw csv", "peak MiB"
    )?;
    for (b, task, m, rss, _) in &results {
        let base = |t: &str| {
            results
                .iter()
                .find(|r| &r.0 == b && r.1 == t)
                .map(|r| r.2)
                .unwrap_or(f64::NAN)
        };
        writeln!(
            stdout,
            "{b:<9} {task:<16} {m:>9.2} {:>9.2} {:>11.2} {:>10}",
            m / base("scan"),
            m / base("raw-csv"),
            rss / 1024
        )?;
    }
    if full {
        for (b, task, m, rss, _) in &results {
            if *b == "sqlite" && (*task == "journal" || *task == "grant-statement") {
                writeln!(
                    stdout,
                    "target {task} <= 10 s on SQLite: {} ({m:.2} s, peak {} MiB)",
                    if *m <= 10.0 { "met" } else { "MISSED" },
                    rss / 1024
                )?;
            }
        }
    }
    let json: Vec<serde_json::Value> = results
        .iter()
        .map(|(b, t, m, rss, rows)| serde_json::json!({"backend": b, "task": t, "median_secs": m, "peak_rss_kb": rss, "entries": rows}))
        .collect();
    writeln!(
        stdout,
        "{}",
        serde_json::json!({"bench": "asbb-reports", "mode": if full { "full" } else { "smoke" }, "entries": n_entries, "results": json})
    )?;
    Ok(())
}
