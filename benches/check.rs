//! Check benchmark: the budget check in process and through `asbb-checkd` over loopback, each
//! against a baseline in the same run.
//!
//! 1. **Decision in process** on a ledger of 10,000 accounts: `db::check::price` + `commit`
//!    (estimate, idempotency lookup, hold decision, hold and journal rows), measured per check
//!    inside open write transactions of 100 checks, so the figure is the decision and not the
//!    disk sync; and per check with its own commit (`synchronous=full`), timed with the
//!    commit and its sync, which is what one check costs alone. Baseline: the same on a
//!    ledger of 10 accounts. On SQLite also the pages (WAL frames) a check writes, alone and
//!    eight to a commit: what the disk syncs and the checkpointer copies back.
//! 2. **asbb-checkd over loopback**, 16 concurrent clients on kept-alive connections, each
//!    sending checks for random accounts, to a server with as many workers as clients (the
//!    default `check.workers` is 4): throughput and p50/p99/p99.9/max latency with group commit
//!    (the default; on SQLite the WAL synced by the server's syncer thread while the writer
//!    goes on) against baselines in the same run: `GET /version` over the same connections
//!    (HTTP alone), on SQLite the group commit with each commit waiting for its own sync
//!    (`sync_thread = false`), and `max_batch = 1` (one commit per check). SQLite with
//!    `synchronous=full`; PostgreSQL beside it when `ASBB_TEST_POSTGRES_URL` is set.
//!
//! `cargo bench --bench check` runs the full sizes; without `--bench` (as `cargo test
//! --all-targets` runs it) a small smoke pass exercises the same paths in seconds and fails
//! only when an operation fails. Timings are never asserted.
//!
//! | variable | meaning | default (full / smoke) |
//! |---|---|---|
//! | `ASBB_BENCH_ACCOUNTS` | accounts | 10000 / 50 |
//! | `ASBB_BENCH_DECISIONS` | in-process checks per measurement | 5000 / 100 |
//! | `ASBB_BENCH_CLIENTS` | concurrent HTTP clients | 16 / 4 |
//! | `ASBB_BENCH_REQUESTS` | checks per client per measurement (2,000 × 16 keeps the group commit busy for about 5 s: several WAL restarts, which make the far tail) | 2000 / 10 |
//! | `ASBB_BENCH_HTTP_ROUNDS` | rounds of the asbb-checkd measurements, configurations alternating | 1 / 1 |

// Rates, ratios and percentiles of timings; no money is computed in floating point here.
#![allow(clippy::float_arithmetic)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use asbb::check::ServerConfig;
use asbb::db::check::{self, CheckRequest, Pricing};
use asbb::db::ledger::{self, NewAccount, OpContext};
use asbb::db::{ConnectOptions, Create, DbConn, DbUrl};
use asbb::domain::estimate::{Rates, Resources, TimeLimit};
use asbb::domain::{AccountName, UsdMicros};
use chrono::{TimeZone, Utc};
use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::Connection;
use rust_decimal::Decimal;

// The allocator asbb-checkd runs with (`src/bin/asbb-checkd.rs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

static SEQ: AtomicU64 = AtomicU64::new(1);

fn env_num(name: &str, default: usize) -> Result<usize> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("{name}={v} is not a number")),
        Err(_) => Ok(default),
    }
}

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

fn pricing() -> Pricing {
    let mut p = Pricing::default();
    p.partitions.insert(
        "aws".into(),
        Rates {
            cpu_hour: Decimal::from_str("0.05").unwrap(),
            gpu_hour: Decimal::from_str("3.06").unwrap(),
            minimum: UsdMicros::parse("0.01").unwrap(),
            max_time_seconds: Some(86_400),
            ..Default::default()
        },
    );
    p
}

fn ctx() -> OpContext {
    OpContext::at("bench", Utc::now())
}

fn request(account: &str) -> CheckRequest {
    CheckRequest {
        account: account.into(),
        partition: "aws".into(),
        resources: Resources {
            nodes: 1,
            cpus: 4,
            gpus: 1,
            memory_mb: 8192,
        },
        time_limit: Some(TimeLimit::Seconds(3600)),
        user: Some("alice".into()),
        ..Default::default()
    }
}

fn name(i: usize) -> String {
    format!("acct-{i:05}")
}

/// A fresh ledger with `n` accounts of a large budget.
fn ledger(url: &DbUrl, n: usize) -> Result<DbConn> {
    let mut conn = asbb::db::connect(url, &ConnectOptions::default(), Create::Allow)?;
    asbb::db::migrate(&mut conn)?;
    let start = Utc.with_ymd_and_hms(2020, 1, 1, 0, 0, 0).unwrap();
    let end = Utc.with_ymd_and_hms(2099, 1, 1, 0, 0, 0).unwrap();
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        asbb::db::write_transaction(&mut conn, |c| {
            for &i in chunk {
                ledger::create_account(
                    c,
                    &ctx(),
                    &NewAccount {
                        name: AccountName::new(&name(i)).unwrap(),
                        display_name: name(i),
                        description: String::new(),
                        starts_at: start,
                        ends_at: end,
                        overdraft: UsdMicros::ZERO,
                        budget: UsdMicros::from_usd(10_000_000).unwrap(),
                    },
                )?;
            }
            Ok::<_, ledger::LedgerError>(())
        })?;
    }
    Ok(conn)
}

struct Stats {
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1000.0;
    Stats {
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        p999_ms: at(0.999),
        max_ms: at(1.0),
    }
}

/// Checks in process, `per_commit` to a transaction: with more than one, each check is timed
/// inside the transaction (the decision); with one, each is timed with its commit and sync.
fn decisions(conn: &mut DbConn, accounts: usize, n: usize, per_commit: usize) -> Result<Stats> {
    let p = pricing();
    let batched = per_commit > 1;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ accounts as u64);
    let mut times = Vec::with_capacity(n);
    let mut done = 0;
    while done < n {
        let k = per_commit.min(n - done);
        let started = Instant::now();
        let r = asbb::db::write_transaction(conn, |c| {
            for _ in 0..k {
                let req = request(&name(rng.below(accounts)));
                let t = Instant::now();
                let a = check::check(c, &ctx(), &p, &req)?;
                if batched {
                    times.push(t.elapsed());
                }
                if !a.available {
                    return Err(check::CheckError::Invalid {
                        field: "bench",
                        message: format!("a check was denied: {}", a.message),
                    });
                }
            }
            Ok::<_, check::CheckError>(())
        });
        r?;
        if !batched {
            times.push(started.elapsed());
        }
        done += k;
    }
    Ok(stats(times))
}

/// The pages (WAL frames) checks on random accounts write, per check, in commits of
/// `per_commit`: what each commit has the disk sync and the checkpointer copy back. Counted
/// from the WAL's length, with SQLite's own checkpoints off meanwhile so that it keeps every
/// frame (the caller drops the connection afterwards, which checkpoints it).
fn wal_pages(
    conn: &mut DbConn,
    wal: &std::path::Path,
    accounts: usize,
    per_commit: usize,
) -> Result<f64> {
    let n = 2_000 / per_commit * per_commit;
    asbb::db::checkpoint::set_wal_autocheckpoint(conn, 0)?;
    if let DbConn::Sqlite(c) = conn {
        c.batch_execute("PRAGMA wal_checkpoint(TRUNCATE)")?;
    }
    decisions(conn, accounts, n, per_commit)?;
    let bytes = std::fs::read(wal).with_context(|| format!("reading {}", wal.display()))?;
    // The WAL header is 32 bytes (the page size at offset 8); each frame a 24-byte header
    // and a page.
    let page = u32::from_be_bytes(bytes[8..12].try_into()?) as usize;
    let frames = (bytes.len() - 32) / (page + 24);
    Ok(frames as f64 / n as f64)
}

/// `n` HTTP requests from each of `clients` threads; returns (requests/s, stats).
fn http_load(
    addr: SocketAddr,
    clients: usize,
    n: usize,
    accounts: usize,
    check: bool,
) -> Result<(f64, Stats)> {
    let started = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|t| {
            std::thread::spawn(move || -> Result<Vec<Duration>> {
                let mut rng = Rng(0xA5A5_5A5A ^ ((t as u64 + 1) * 7919));
                let mut conn: Option<TcpStream> = None;
                let mut times = Vec::with_capacity(n);
                let mut buf = vec![0u8; 16384];
                for _ in 0..n {
                    let raw = if check {
                        let body = format!(
                            r#"{{"account":"{}","partition":"aws","nodes":1,"cpus":4,"gpus":1,"memory":"8G","wall_time":"1:00:00","request_id":"b{}"}}"#,
                            name(rng.below(accounts)),
                            SEQ.fetch_add(1, Ordering::Relaxed)
                        );
                        format!("POST /api/v1/budget/check HTTP/1.1\r\nHost: b\r\nContent-Length: {}\r\n\r\n{body}", body.len())
                    } else {
                        "GET /version HTTP/1.1\r\nHost: b\r\n\r\n".to_string()
                    };
                    let t = Instant::now();
                    // Reconnect when the server closed the connection (it does when others wait).
                    let mut attempts = 0;
                    loop {
                        attempts += 1;
                        if conn.is_none() {
                            let s = TcpStream::connect(addr)?;
                            s.set_nodelay(true)?;
                            s.set_read_timeout(Some(Duration::from_secs(30)))?;
                            conn = Some(s);
                        }
                        let s = conn.as_mut().unwrap();
                        if s.write_all(raw.as_bytes()).is_err() {
                            conn = None;
                            continue;
                        }
                        let mut got = Vec::new();
                        let complete = loop {
                            let k = match s.read(&mut buf) {
                                Ok(k) => k,
                                Err(_) => break false,
                            };
                            if k == 0 {
                                break false;
                            }
                            got.extend_from_slice(&buf[..k]);
                            if let Some(h) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                                let head = String::from_utf8_lossy(&got[..h]).to_ascii_lowercase();
                                let len: usize = head
                                    .lines()
                                    .find_map(|l| l.strip_prefix("content-length:"))
                                    .and_then(|v| v.trim().parse().ok())
                                    .unwrap_or(0);
                                if got.len() >= h + 4 + len {
                                    if !head.starts_with("http/1.1 200") {
                                        bail!("answer: {}", String::from_utf8_lossy(&got));
                                    }
                                    if head.contains("connection: close") {
                                        conn = None;
                                    }
                                    break true;
                                }
                            }
                        };
                        if complete {
                            break;
                        }
                        conn = None;
                        if attempts > 3 {
                            bail!("no answer after {attempts} attempts");
                        }
                    }
                    times.push(t.elapsed());
                }
                Ok(times)
            })
        })
        .collect();
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.join().map_err(|_| anyhow::anyhow!("client panicked"))??);
    }
    let rate = all.len() as f64 / started.elapsed().as_secs_f64();
    Ok((rate, stats(all)))
}

fn serve(
    url: &DbUrl,
    max_batch: usize,
    workers: usize,
    sync_thread: bool,
) -> Result<(SocketAddr, Arc<AtomicBool>, std::thread::JoinHandle<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let mut cfg = ServerConfig::new("127.0.0.1:0", url.clone(), ConnectOptions::default());
    cfg.pricing = pricing();
    cfg.max_batch = max_batch;
    cfg.workers = workers;
    cfg.sync_thread = sync_thread;
    cfg.pricing.correction.enabled = false;
    let stop = Arc::new(AtomicBool::new(false));
    let s = Arc::clone(&stop);
    let h = std::thread::spawn(move || {
        if let Err(e) = asbb::check::serve(cfg, Some(listener), s) {
            eprintln!("server failed: {e}");
        }
    });
    Ok((addr, stop, h))
}

/// What the server counted, from `GET /metrics`.
struct Counts {
    /// The writer's group commits.
    commits: u64,
    /// Checks they committed.
    committed: u64,
    /// Syncs of the WAL by the syncer.
    syncs: u64,
    /// On SQLite: the checkpointer's checkpoints, how many of them restarted the WAL, and the
    /// restarts the writer did itself.
    wal: Option<(u64, u64, u64)>,
}

/// The server's counts so far.
fn group_commits(addr: SocketAddr) -> Result<Counts> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let counter = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
            .with_context(|| format!("{name} missing from /metrics"))
    };
    let wal = match (
        counter("asbb_check_wal_checkpoints_total "),
        counter("asbb_check_wal_restarts_total "),
        counter("asbb_check_wal_writer_restarts_total "),
    ) {
        (Ok(c), Ok(r), Ok(w)) => Some((c, r, w)),
        _ => None,
    };
    Ok(Counts {
        commits: counter("asbb_check_commits_total ")?,
        committed: counter("asbb_check_committed_total ")?,
        syncs: counter("asbb_check_syncs_total ")?,
        wal,
    })
}

fn line(label: &str, s: &Stats) {
    println!(
        "  {label:<48} p50 {:>7.3} ms   p99 {:>7.3} ms   p99.9 {:>7.3} ms   max {:>7.3} ms",
        s.p50_ms, s.p99_ms, s.p999_ms, s.max_ms
    );
}

fn backend(label: &str, url: DbUrl, p: &Params) -> Result<()> {
    println!("\n{label}");
    let mut conn = ledger(&url, p.accounts)?;
    let small_url = match &url {
        DbUrl::Sqlite(path) => DbUrl::Sqlite(path.with_extension("small.db")),
        DbUrl::Postgres(_) => url.clone(),
    };
    if let DbUrl::Sqlite(_) = small_url {
        let mut small = ledger(&small_url, 10)?;
        let base = decisions(&mut small, 10, p.decisions, 100)?;
        let full = decisions(&mut conn, p.accounts, p.decisions, 100)?;
        line("decision, 10 accounts (baseline)", &base);
        line(&format!("decision, {} accounts", p.accounts), &full);
        println!(
            "  p99 ratio {:.2} (target p99 <= 1 ms)",
            full.p99_ms / base.p99_ms
        );
    } else {
        let full = decisions(&mut conn, p.accounts, p.decisions, 100)?;
        line(&format!("decision, {} accounts", p.accounts), &full);
    }
    let alone = decisions(&mut conn, p.accounts, p.decisions / 10 + 1, 1)?;
    line("one check with its own commit and sync", &alone);
    if let DbUrl::Sqlite(path) = &url {
        let wal = path.with_extension("db-wal");
        let one = wal_pages(&mut conn, &wal, p.accounts, 1)?;
        let eight = wal_pages(&mut conn, &wal, p.accounts, 8)?;
        println!(
            "  pages a check writes (WAL frames), committed alone / 8 to a commit: {one:.2} / {eight:.2}"
        );
    }
    drop(conn);

    // Group commit as asbb-checkd runs it (on SQLite the WAL synced by a thread of its own
    // while the writer goes on), against two baselines: on SQLite the same with each commit
    // waiting for its own sync (`sync_thread = false`, as before the syncer), and one commit
    // per check (`max_batch = 1`, each syncing itself). Rounds alternate the configurations.
    let sqlite = matches!(url, DbUrl::Sqlite(_));
    let mut configs = vec![("group commit", 64, true)];
    if sqlite {
        configs.push(("group commit, each commit syncs (baseline)", 64, false));
    }
    configs.push(("max_batch = 1 (baseline)", 1, false));
    for round in 1..=p.http_rounds {
        if p.http_rounds > 1 {
            println!("  round {round}/{}", p.http_rounds);
        }
        for (i, &(what, batch, sync_thread)) in configs.iter().enumerate() {
            let (addr, stop, h) = serve(&url, batch, p.clients, sync_thread)?;
            std::thread::sleep(Duration::from_millis(200));
            if i == 0 && round == 1 {
                let (rate, s) = http_load(addr, p.clients, p.requests, p.accounts, false)?;
                println!(
                    "  GET /version, {} clients (HTTP baseline): {rate:>8.0} req/s",
                    p.clients
                );
                line("", &s);
            }
            let (rate, s) = http_load(addr, p.clients, p.requests, p.accounts, true)?;
            // As many workers as clients: a worker answers one connection at a time and waits
            // for the writer, so fewer workers would cap the group commits (`check.workers`,
            // default 4).
            println!(
                "  checks, {} clients, {} workers, {what}: {rate:>8.0} checks/s",
                p.clients, p.clients
            );
            line("", &s);
            let Counts {
                commits,
                committed,
                syncs,
                wal,
            } = group_commits(addr)?;
            if let Some((checkpoints, restarts, by_writer)) = wal {
                // A restart holds the writer up while it syncs the database file: the checks
                // in flight then make the far tail (p99.9, max).
                println!(
                    "  {:<48} WAL: {checkpoints} checkpoints, {} restarts ({by_writer} by the writer)",
                    "",
                    restarts + by_writer
                );
            }
            if commits > 0 {
                let synced = if syncs > 0 {
                    format!(
                        ", {syncs} WAL syncs ({:.1} commits a sync)",
                        commits as f64 / syncs as f64
                    )
                } else {
                    String::new()
                };
                println!(
                    "  {:<48} {committed} checks in {commits} commits ({:.1} a commit){synced}",
                    "",
                    committed as f64 / commits as f64
                );
            }
            stop.store(true, Ordering::Relaxed);
            let _ = h.join();
        }
    }
    Ok(())
}

struct Params {
    accounts: usize,
    decisions: usize,
    clients: usize,
    requests: usize,
    http_rounds: usize,
}

fn main() -> Result<()> {
    let full = std::env::args().any(|a| a == "--bench");
    let p = Params {
        accounts: env_num("ASBB_BENCH_ACCOUNTS", if full { 10_000 } else { 50 })?,
        decisions: env_num("ASBB_BENCH_DECISIONS", if full { 5_000 } else { 100 })?,
        clients: env_num("ASBB_BENCH_CLIENTS", if full { 16 } else { 4 })?,
        requests: env_num("ASBB_BENCH_REQUESTS", if full { 2000 } else { 10 })?,
        http_rounds: env_num("ASBB_BENCH_HTTP_ROUNDS", 1)?.max(1),
    };
    println!(
        "check benchmark ({}): {} accounts, {} clients; the machine may be shared: compare ratios",
        if full { "full" } else { "smoke" },
        p.accounts,
        p.clients
    );
    let dir = tempfile::tempdir()?;
    backend(
        "SQLite (synchronous=full)",
        DbUrl::Sqlite(dir.path().join("bench.db")),
        &p,
    )?;
    if let Ok(admin) = std::env::var("ASBB_TEST_POSTGRES_URL") {
        let db = format!("asbb_bench_check_{}", std::process::id());
        let mut c = PgConnection::establish(&admin)?;
        c.batch_execute(&format!("CREATE DATABASE \"{db}\""))?;
        let (base, query) = admin
            .split_once('?')
            .map_or((admin.as_str(), None), |(b, q)| (b, Some(q)));
        let (scheme, rest) = base.split_once("://").context("bad postgres url")?;
        let authority = rest.split_once('/').map_or(rest, |(a, _)| a);
        let mut url = format!("{scheme}://{authority}/{db}");
        if let Some(q) = query {
            url = format!("{url}?{q}");
        }
        let r = backend("PostgreSQL", DbUrl::Postgres(url), &p);
        let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"));
        r?;
    }
    Ok(())
}
