//! `asbb-checkd`: the minimal HTTP endpoint SLURM's submit path asks.
//!
//! Routes: `POST /api/v1/budget/check` (price the job, hold its estimate), `GET /health`
//! (database reachable, schema current), `GET /metrics` (Prometheus text), `GET /version`.
//!
//! Threads, all started up front and never more:
//! - one **acceptor** hands connections to the workers through a bounded queue (a full queue is
//!   answered 503 `overloaded` at once);
//! - a fixed pool of **workers** reads requests with deadlines ([`http`]), validates and prices
//!   checks (reading plans on their own connections), and answers;
//! - one **writer** (on PostgreSQL, one per worker) owns a write connection. It takes every
//!   check waiting in its queue
//!   (up to `max_batch`) and commits them in one write transaction (`db::check::commit` joins
//!   the caller's transaction, without a savepoint): one disk sync for all of them. When one
//!   check fails, the batch is rolled back and its checks are written again one transaction
//!   each, so that one bad check cannot fail the others. Answers go out only after the commit
//!   is on disk;
//! - on SQLite with `synchronous = full`, one **syncer** makes the writer's commits durable:
//!   the writer commits without waiting for the disk and hands the answers over; the syncer
//!   syncs the WAL file (one `fdatasync` for every batch waiting) and only then answers, while
//!   the writer already writes the next batch (`sync_loop` says why that is as durable). When
//!   no check is waiting (one client asking one check at a time, as slurmctld does), the
//!   writer syncs and answers itself: there is nothing to overlap, and the answer is spared a
//!   thread hop;
//! - one **refresher** re-reads the estimate-vs-actual history for learned corrections;
//! - on SQLite, one **checkpointer** ([`db::checkpoint`]) copies the WAL back into the
//!   database file beside the writer, so that the writer never stops a batch of checks to do
//!   it at the end of a commit (that had been most of the p99 latency).
//!
//! SIGTERM stops the acceptor, lets the workers finish the request in hand, lets the writer
//! commit what it was given, and returns.

pub mod http;
pub mod metrics;
pub mod request;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::json;

use crate::db::check::{self, CheckAnswer, CheckError, CheckRequest, Priced, Pricing};
use crate::db::checkpoint::Checkpointer;
use crate::db::ledger::{LedgerError, OpContext};
use crate::db::{self, ConnectOptions, DbConn, DbUrl};
use crate::domain::estimate::History;
use metrics::Metrics;

/// Worker threads when the configuration does not say.
pub const WORKERS: usize = 4;

/// Largest request body when the configuration does not say; bigger ones are refused unread.
pub const BODY_BYTES_MAX: usize = 64 * 1024;

/// Connections waiting for a worker, per worker, before new ones are refused with 503.
const QUEUE_PER_WORKER: usize = 64;

/// Checks waiting for the writer before new ones are refused with 503.
const WRITER_QUEUE: usize = 4096;

/// How often idle threads look up to notice a shutdown.
const SHUTDOWN_POLL: Duration = Duration::from_millis(250);

/// Who the journal says placed a check's hold.
pub const ACTOR: &str = "asbb-checkd";

/// What the server needs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on, e.g. `127.0.0.1:8080` (unused with an inherited listener).
    pub listen: String,
    /// The database.
    pub db_url: DbUrl,
    /// How to connect.
    pub connect: ConnectOptions,
    /// Worker threads.
    pub workers: usize,
    /// Time a request has to arrive in full.
    pub request_timeout: Duration,
    /// Largest body.
    pub body_bytes_max: usize,
    /// Checks per group commit.
    pub max_batch: usize,
    /// The bearer token every request but `/health` must carry, if set.
    pub token: Option<String>,
    /// How jobs are priced.
    pub pricing: Pricing,
    /// How often the correction history is re-read.
    pub correction_refresh: Duration,
    /// How often the checkpointer copies the SQLite WAL back (after commits of the writer;
    /// [`CHECKPOINT_INTERVAL`] by default).
    pub checkpoint_interval: Duration,
    /// The WAL length, in pages, at which the checkpointer restarts the SQLite WAL
    /// ([`WAL_RESTART_PAGES`] by default).
    pub wal_restart_pages: i64,
    /// On SQLite with `synchronous = full`: sync the WAL on a thread of its own while the
    /// writer goes on (true, the default), or let each commit wait for its own sync (false;
    /// the benchmark's baseline). Answers wait for the sync either way.
    pub sync_thread: bool,
}

impl ServerConfig {
    /// A configuration with the defaults of `[check]` for everything but the database.
    pub fn new(listen: &str, db_url: DbUrl, connect: ConnectOptions) -> ServerConfig {
        ServerConfig {
            listen: listen.to_string(),
            db_url,
            connect,
            workers: WORKERS,
            request_timeout: Duration::from_secs(2),
            body_bytes_max: BODY_BYTES_MAX,
            max_batch: 64,
            token: None,
            pricing: Pricing::default(),
            correction_refresh: Duration::from_secs(60),
            checkpoint_interval: CHECKPOINT_INTERVAL,
            wal_restart_pages: WAL_RESTART_PAGES,
            sync_thread: true,
        }
    }
}

/// The answer to `GET /health`: status code and JSON body.
pub fn health(db_url: &DbUrl, opts: &ConnectOptions) -> (u16, serde_json::Value) {
    let backend = db_url.backend().as_str();
    match db::connect_checked(db_url, opts) {
        Ok(_) => (
            200,
            json!({"status": "ok", "database": backend, "schema": "current", "version": env!("CARGO_PKG_VERSION")}),
        ),
        Err(e) => {
            let reason = match e {
                db::DbError::Unmigrated { .. } | db::DbError::MissingFile(_) => {
                    "schema_not_current"
                }
                db::DbError::TooNew(_) => "schema_too_new",
                _ => "database_unavailable",
            };
            (
                503,
                json!({"status": "unavailable", "database": backend, "reason": reason, "message": e.to_string()}),
            )
        }
    }
}

/// A check that could not be decided, as it is answered: status, reason code, message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// HTTP status.
    pub status: u16,
    /// Reason code.
    pub reason: &'static str,
    /// The request field at fault, if one is.
    pub field: Option<&'static str>,
    /// For a person.
    pub message: String,
}

impl From<&CheckError> for Failure {
    fn from(e: &CheckError) -> Failure {
        let (status, reason, field) = match e {
            CheckError::Invalid { field, .. } => (400, "invalid_request", Some(*field)),
            CheckError::RequestIdConflict(_) => (409, "request_id_conflict", Some("request_id")),
            CheckError::InProgress(_) => (409, "request_in_progress", Some("request_id")),
            CheckError::UnknownHold(_) => (404, "unknown_hold", Some("replace_hold")),
            CheckError::Ledger(LedgerError::Db(_)) => (503, "database_unavailable", None),
            CheckError::Ledger(LedgerError::Invalid { .. }) => (400, "invalid_request", None),
            CheckError::Ledger(_) => (500, "internal_error", None),
        };
        Failure {
            status,
            reason,
            field,
            message: e.to_string(),
        }
    }
}

impl Failure {
    fn new(status: u16, reason: &'static str, message: impl Into<String>) -> Failure {
        Failure {
            status,
            reason,
            field: None,
            message: message.into(),
        }
    }

    /// The JSON body: `available` false, the reason code, the message.
    pub fn body(&self, request_id: Option<&str>) -> serde_json::Value {
        json!({
            "available": false,
            "reason": self.reason,
            "field": self.field,
            "message": self.message,
            "request_id": request_id,
        })
    }
}

/// The HTTP status of a decided check: 200, or 404 for an account that does not exist.
pub fn answer_status(a: &CheckAnswer) -> u16 {
    if a.reason == "unknown_account" {
        404
    } else {
        200
    }
}

struct Job {
    ctx: OpContext,
    req: CheckRequest,
    priced: Priced,
    reply: mpsc::Sender<Result<CheckAnswer, Failure>>,
}

/// A check's answer and where it goes.
type Reply = (
    mpsc::Sender<Result<CheckAnswer, Failure>>,
    Result<CheckAnswer, Failure>,
);

/// The WAL length, in pages (about 165 MB), at which asbb-checkd's checkpointer restarts the
/// SQLite WAL: four times the batch jobs' length. Each restart holds the writer, and with it
/// every check in flight, up for about 10 ms; at 5,000 checks a second (about 40,000 WAL
/// pages) that came every quarter of a second and was most of the p99 latency, now about once
/// a second. A WAL that is not written back to back starts over by itself, whatever its
/// length, so it grows this long only under a sustained stream of checks.
pub const WAL_RESTART_PAGES: i64 = 40_000;

/// How often asbb-checkd's checkpointer copies the SQLite WAL back: every second, not every
/// quarter of a second as for the batch jobs. Each pass copies every page the checks changed
/// since the last one, and a check changes the same hot pages (accounts, the open end of each
/// index) over and over; fewer passes copy them fewer times, so fewer database pages are
/// written back beside the writer's WAL syncs. Alternating runs of the check benchmark (16
/// clients, 48,000 checks a run, eight rounds in two runs of opposite order): p99 4.3–5.1 ms
/// against 5.0–6.3, lower in every round; the throughput and the far tail (p99.9, max)
/// moved with the order of the runs, not with the interval.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

/// Committed batches waiting for the syncer before the writer waits for it.
const SYNC_QUEUE: usize = 16;

struct Shared {
    cfg: ServerConfig,
    /// How the writer connects: with its own syncer, SQLite's commit does not wait for the disk.
    writer_connect: ConnectOptions,
    /// Set when the WAL could not be synced: nothing more is written, and `serve` fails.
    failed: OnceLock<String>,
    /// The WAL synced apart from the commits (SQLite at `synchronous = full`).
    wal: Option<WalFile>,
    /// Checks handed to the writers and not yet taken.
    jobs_waiting: AtomicUsize,
    stop: Arc<AtomicBool>,
    /// Connections handed to the workers and not yet picked up.
    queued: AtomicUsize,
    metrics: Metrics,
    histories: RwLock<HashMap<(String, String), History>>,
}

/// Serves on `cfg.listen` (or on `inherited`, a socket systemd passed in) until `stop` becomes
/// true; then finishes the requests in hand and returns.
pub fn serve(
    cfg: ServerConfig,
    inherited: Option<TcpListener>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<()> {
    let listener = match inherited {
        Some(l) => l,
        None => TcpListener::bind(&cfg.listen).map_err(|e| {
            std::io::Error::other(format!("failed to listen on {}: {e}", cfg.listen))
        })?,
    };
    let addr = listener.local_addr()?;
    // Logged with the bound address so that `--listen 127.0.0.1:0` tells where it went.
    tracing::info!(
        "asbb-checkd listening on {addr} ({} workers, {} database)",
        cfg.workers,
        cfg.db_url.backend().as_str()
    );
    let workers = cfg.workers.max(1);
    // SQLite with `synchronous = full`: the writer commits at `normal` (the commit does not
    // wait for the disk) and the syncer syncs the WAL before anyone is answered.
    let wal_db = match &cfg.db_url {
        DbUrl::Sqlite(path)
            if cfg.sync_thread && cfg.connect.sqlite_synchronous == db::SqliteSync::Full =>
        {
            Some(path.clone())
        }
        _ => None,
    };
    let mut writer_connect = cfg.connect.clone();
    if wal_db.is_some() {
        writer_connect.sqlite_synchronous = db::SqliteSync::Normal;
    }
    let shared = Arc::new(Shared {
        cfg,
        writer_connect,
        failed: OnceLock::new(),
        wal: wal_db.map(WalFile::new),
        jobs_waiting: AtomicUsize::new(0),
        stop: Arc::clone(&stop),
        queued: AtomicUsize::new(0),
        metrics: Metrics::default(),
        histories: RwLock::new(HashMap::new()),
    });
    refresh_histories(&shared);

    let (conn_tx, conn_rx) = mpsc::sync_channel::<TcpStream>(workers * QUEUE_PER_WORKER);
    let conn_rx = Arc::new(std::sync::Mutex::new(conn_rx));
    let (job_tx, job_rx) = mpsc::sync_channel::<Job>(WRITER_QUEUE);
    let job_rx = Arc::new(std::sync::Mutex::new(job_rx));
    // SQLite has one writer anyway: one thread that commits many checks at once. PostgreSQL
    // locks per account, so several writers commit in parallel (each still batching).
    let writers = match shared.cfg.db_url.backend() {
        db::Backend::Sqlite => 1,
        db::Backend::Postgres => workers,
    };
    let (syncer, durable) = if shared.wal.is_some() {
        let (tx, rx) = mpsc::sync_channel::<Vec<Reply>>(SYNC_QUEUE);
        let shared = Arc::clone(&shared);
        let t = std::thread::Builder::new()
            .name("checkd-sync".into())
            .spawn(move || sync_loop(&shared, &rx))?;
        (Some(t), Some(tx))
    } else {
        (None, None)
    };
    let mut writer_threads = Vec::with_capacity(writers);
    for i in 0..writers {
        let shared = Arc::clone(&shared);
        let rx = Arc::clone(&job_rx);
        let durable = durable.clone();
        writer_threads.push(
            std::thread::Builder::new()
                .name(format!("checkd-writer-{i}"))
                .spawn(move || write_loop(&shared, &rx, durable.as_ref()))?,
        );
    }
    // The writers hold the only senders: the syncer ends after the last of them.
    drop(durable);
    let refresher = {
        let shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("checkd-refresh".into())
            .spawn(move || refresh_loop(&shared))?
    };
    let checkpointer = Checkpointer::start_restarting_at(
        &shared.cfg.db_url,
        &shared.cfg.connect,
        shared.cfg.checkpoint_interval,
        shared.cfg.wal_restart_pages,
    )?;
    if let Some(c) = &checkpointer {
        let _ = shared.metrics.wal.set(c.stats());
    }
    let mut pool = Vec::with_capacity(workers);
    for i in 0..workers {
        let shared = Arc::clone(&shared);
        let rx = Arc::clone(&conn_rx);
        let jobs = job_tx.clone();
        pool.push(
            std::thread::Builder::new()
                .name(format!("checkd-worker-{i}"))
                .spawn(move || worker_loop(&shared, &rx, &jobs))?,
        );
    }
    drop(job_tx);
    let acceptor = {
        let shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("checkd-accept".into())
            .spawn(move || accept_loop(&shared, &listener, &conn_tx))?
    };
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(SHUTDOWN_POLL);
    }
    tracing::info!("asbb-checkd stopping: finishing the requests in hand");
    // Wake the acceptor out of accept(); it sees the stop flag and returns.
    wake(addr);
    let _ = acceptor.join();
    for w in pool {
        let _ = w.join();
    }
    for w in writer_threads {
        let _ = w.join();
    }
    if let Some(s) = syncer {
        let _ = s.join();
    }
    if let Some(c) = checkpointer {
        c.finish();
    }
    let _ = refresher.join();
    if let Some(e) = shared.failed.get() {
        tracing::error!("asbb-checkd stopped: {e}");
        return Err(std::io::Error::other(e.clone()));
    }
    tracing::info!("asbb-checkd stopped");
    Ok(())
}

fn wake(addr: SocketAddr) {
    let target = if addr.ip().is_unspecified() {
        SocketAddr::new(
            match addr {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            },
            addr.port(),
        )
    } else {
        addr
    };
    let _ = TcpStream::connect_timeout(&target, Duration::from_millis(500));
}

fn accept_loop(shared: &Shared, listener: &TcpListener, tx: &SyncSender<TcpStream>) {
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        let mut stream = match stream {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("failed to accept a connection: {e}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        shared.queued.fetch_add(1, Ordering::Relaxed);
        match tx.try_send(stream) {
            Ok(()) => {}
            Err(TrySendError::Full(s) | TrySendError::Disconnected(s)) => {
                shared.queued.fetch_sub(1, Ordering::Relaxed);
                stream = s;
                let f = Failure::new(503, "overloaded", "every worker is busy; try again");
                shared.metrics.request(503);
                let _ = http::respond(
                    &mut stream,
                    503,
                    "application/json",
                    f.body(None).to_string().as_bytes(),
                    false,
                );
            }
        }
    }
}

fn worker_loop(
    shared: &Shared,
    rx: &std::sync::Mutex<mpsc::Receiver<TcpStream>>,
    jobs: &SyncSender<Job>,
) {
    let mut conn: Option<DbConn> = None;
    loop {
        let next = {
            let Ok(guard) = rx.lock() else { return };
            guard.recv_timeout(SHUTDOWN_POLL)
        };
        match next {
            Ok(stream) => {
                shared.queued.fetch_sub(1, Ordering::Relaxed);
                serve_connection(shared, stream, &mut conn, jobs);
            }
            Err(RecvTimeoutError::Timeout) => {
                if shared.stop.load(Ordering::Relaxed) {
                    return;
                }
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

fn serve_connection(
    shared: &Shared,
    mut stream: TcpStream,
    conn: &mut Option<DbConn>,
    jobs: &SyncSender<Job>,
) {
    let limits = http::Limits {
        request_timeout: shared.cfg.request_timeout,
        body_bytes_max: shared.cfg.body_bytes_max,
    };
    let mut buf = Vec::new();
    let mut first = true;
    loop {
        // Between requests, give the connection up when others wait for a worker or we stop.
        let mut idle = || {
            first
                || (!shared.stop.load(Ordering::Relaxed)
                    && shared.queued.load(Ordering::Relaxed) == 0)
        };
        let req = match http::read_request(&mut stream, &mut buf, &limits, &mut idle) {
            Ok(r) => r,
            Err(http::ReadError::Closed) => return,
            Err(e) => {
                let (code, f) = match e {
                    http::ReadError::Timeout => (
                        408,
                        Failure::new(
                            408,
                            "request_timeout",
                            format!(
                                "the request did not arrive within {} ms",
                                limits.request_timeout.as_millis()
                            ),
                        ),
                    ),
                    http::ReadError::HeadTooLarge => (
                        431,
                        Failure::new(
                            431,
                            "headers_too_large",
                            format!(
                                "request heads are limited to {} bytes",
                                http::HEAD_BYTES_MAX
                            ),
                        ),
                    ),
                    http::ReadError::BodyTooLarge(n) => (
                        413,
                        Failure::new(
                            413,
                            "body_too_large",
                            format!(
                                "request bodies are limited to {} bytes; this one announced {n}",
                                limits.body_bytes_max
                            ),
                        ),
                    ),
                    http::ReadError::LengthRequired => (
                        411,
                        Failure::new(
                            411,
                            "length_required",
                            "send the body with a Content-Length (chunked bodies are not accepted)",
                        ),
                    ),
                    http::ReadError::Malformed(m) => (
                        400,
                        Failure::new(
                            400,
                            "malformed_http",
                            format!("not an HTTP/1.1 request: {m}"),
                        ),
                    ),
                    http::ReadError::Closed => return,
                };
                shared.metrics.request(code);
                let _ = http::respond(
                    &mut stream,
                    code,
                    "application/json",
                    f.body(None).to_string().as_bytes(),
                    false,
                );
                return;
            }
        };
        first = false;
        let keep_alive = req.keep_alive
            && !shared.stop.load(Ordering::Relaxed)
            && shared.queued.load(Ordering::Relaxed) == 0;
        let (code, content_type, body) = route(shared, &req, conn, jobs);
        shared.metrics.request(code);
        if http::respond(&mut stream, code, content_type, body.as_bytes(), keep_alive).is_err()
            || !keep_alive
        {
            return;
        }
    }
}

fn authorized(shared: &Shared, req: &http::Request) -> bool {
    let Some(token) = &shared.cfg.token else {
        return true;
    };
    let given = req
        .header("authorization")
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
        .unwrap_or("");
    // Compare in constant time: the length may leak, the content does not.
    given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

fn route(
    shared: &Shared,
    req: &http::Request,
    conn: &mut Option<DbConn>,
    jobs: &SyncSender<Job>,
) -> (u16, &'static str, String) {
    const JSON: &str = "application/json";
    let fail = |f: Failure| (f.status, JSON, f.body(None).to_string());
    let method = req.method.as_str();
    let path = req.path.as_str();
    let known = ["/api/v1/budget/check", "/health", "/metrics", "/version"];
    if !known.contains(&path) {
        return fail(Failure::new(
            404,
            "not_found",
            format!("no endpoint {path}"),
        ));
    }
    if path != "/health" && !authorized(shared, req) {
        return fail(Failure::new(
            401,
            "unauthorized",
            "send Authorization: Bearer <token> (check.token_file)",
        ));
    }
    match (method, path) {
        ("POST", "/api/v1/budget/check") => {
            let started = Instant::now();
            let (code, body, outcome, reason) = match budget_check(shared, req, conn, jobs) {
                Ok(a) => {
                    let outcome = if a.available { "allowed" } else { "denied" };
                    let reason = a.reason.clone();
                    (
                        answer_status(&a),
                        serde_json::to_string(&a).expect("answers serialise"),
                        outcome,
                        reason,
                    )
                }
                Err((f, rid)) => {
                    let outcome = if f.status >= 500 { "error" } else { "rejected" };
                    (
                        f.status,
                        f.body(rid.as_deref()).to_string(),
                        outcome,
                        f.reason.to_string(),
                    )
                }
            };
            shared.metrics.check(outcome, &reason, started.elapsed());
            (code, JSON, body)
        }
        ("GET", "/health") => {
            let (code, body) = health(&shared.cfg.db_url, &shared.cfg.connect);
            (code, JSON, body.to_string())
        }
        ("GET", "/metrics") => {
            let holds = with_conn(shared, conn, |c| {
                check::holds_outstanding(c).map_err(|e| Failure::from(&e))
            })
            .ok()
            .map(|(n, usd)| (n, usd.to_string()));
            (
                200,
                "text/plain; version=0.0.4",
                shared.metrics.render(holds),
            )
        }
        ("GET", "/version") => (
            200,
            JSON,
            json!({"version": env!("CARGO_PKG_VERSION")}).to_string(),
        ),
        _ => {
            let allowed = if path == "/api/v1/budget/check" {
                "POST"
            } else {
                "GET"
            };
            fail(Failure::new(
                405,
                "method_not_allowed",
                format!("use {allowed} {path}"),
            ))
        }
    }
}

/// Runs `f` on the worker's read connection, opening it first if needed; a failed database
/// call drops the connection so the next request opens a fresh one.
fn with_conn<T>(
    shared: &Shared,
    conn: &mut Option<DbConn>,
    f: impl FnOnce(&mut DbConn) -> Result<T, Failure>,
) -> Result<T, Failure> {
    if conn.is_none() {
        *conn = Some(
            db::connect_checked(&shared.cfg.db_url, &shared.cfg.connect)
                .map_err(|e| Failure::new(503, "database_unavailable", e.to_string()))?,
        );
    }
    let c = conn.as_mut().expect("connected above");
    let r = f(c);
    if matches!(&r, Err(f) if f.status == 503) {
        *conn = None;
    }
    r
}

type CheckResult = Result<CheckAnswer, (Failure, Option<String>)>;

fn budget_check(
    shared: &Shared,
    req: &http::Request,
    conn: &mut Option<DbConn>,
    jobs: &SyncSender<Job>,
) -> CheckResult {
    let raw = request::from_json(&req.body).map_err(|e| (Failure::from(&e), None))?;
    let rid = raw.request_id.clone();
    let fail = |e: Failure| (e, rid.clone());
    let creq = raw.validate().map_err(|e| fail(Failure::from(&e)))?;
    let pricing = &shared.cfg.pricing;
    let history = if pricing.correction.enabled {
        shared
            .histories
            .read()
            .ok()
            .and_then(|h| {
                h.get(&(creq.account.clone(), creq.partition.clone()))
                    .copied()
            })
            .unwrap_or_default()
    } else {
        History::default()
    };
    let priced = with_conn(shared, conn, |c| {
        check::price(c, pricing, &creq, history).map_err(|e| Failure::from(&e))
    })
    .map_err(fail)?;
    let (tx, rx) = mpsc::channel();
    let job = Job {
        ctx: OpContext::at(ACTOR, Utc::now()),
        req: creq,
        priced,
        reply: tx,
    };
    shared.jobs_waiting.fetch_add(1, Ordering::AcqRel);
    match jobs.try_send(job) {
        Ok(()) => {}
        Err(_) => {
            shared.jobs_waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(fail(Failure::new(
                503,
                "overloaded",
                "too many checks are waiting to be written; try again",
            )));
        }
    }
    // The writer answers after its commit; waiting longer than the database may wait for a
    // lock would only keep a worker from other clients.
    let wait = shared.cfg.connect.busy_timeout + Duration::from_secs(5);
    match rx.recv_timeout(wait) {
        Ok(r) => r.map_err(fail),
        Err(_) => Err(fail(Failure::new(
            503,
            "database_busy",
            "the ledger did not answer in time; retry with the same request_id to learn the outcome",
        ))),
    }
}

fn write_loop(
    shared: &Shared,
    rx: &std::sync::Mutex<mpsc::Receiver<Job>>,
    durable: Option<&SyncSender<Vec<Reply>>>,
) {
    let mut conn: Option<DbConn> = None;
    let max = shared.cfg.max_batch.max(1);
    loop {
        // Take what is waiting, then let another writer take the next batch.
        let batch = {
            let Ok(rx) = rx.lock() else { return };
            let first = match rx.recv_timeout(SHUTDOWN_POLL) {
                Ok(j) => j,
                Err(RecvTimeoutError::Timeout) => continue,
                // Every worker has finished: nothing more will come.
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let mut batch = vec![first];
            while batch.len() < max {
                match rx.try_recv() {
                    Ok(j) => batch.push(j),
                    Err(_) => break,
                }
            }
            shared.jobs_waiting.fetch_sub(batch.len(), Ordering::AcqRel);
            batch
        };
        let mut batch = batch;
        // Accounts in a stable order, so that two writers (two checkd on one PostgreSQL)
        // lock them in the same order.
        batch.sort_by(|a, b| a.req.account.cmp(&b.req.account));
        write_batch(shared, &mut conn, batch, durable);
        if let Some(c) = conn.as_mut() {
            // The next batch waits meanwhile, but only when the checkpointer could not restart
            // a long WAL because this writer never paused.
            match db::checkpoint::between_transactions(c) {
                Ok(true) => {
                    shared
                        .metrics
                        .writer_restarts
                        .fetch_add(1, Ordering::Relaxed);
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!("restarting the WAL failed: {e}");
                    conn = None;
                }
            }
        }
    }
}

fn write_batch(
    shared: &Shared,
    conn: &mut Option<DbConn>,
    batch: Vec<Job>,
    durable: Option<&SyncSender<Vec<Reply>>>,
) {
    if let Some(e) = shared.failed.get() {
        let f = Failure::new(503, "database_unavailable", e.clone());
        for j in batch {
            let _ = j.reply.send(Err(f.clone()));
        }
        return;
    }
    if conn.is_none() {
        // On SQLite the checkpointer thread copies the WAL back, not the writer; the writer
        // does only if the WAL grows ten times longer than the checkpointer lets it (a
        // checkpointer that cannot connect, say), so that it stays bounded whatever happens.
        let opened =
            db::connect_checked(&shared.cfg.db_url, &shared.writer_connect).and_then(|mut c| {
                db::checkpoint::relieve(&mut c)?;
                Ok(c)
            });
        match opened {
            Ok(c) => {
                *conn = Some(c);
                // Before this connection writes: a write-back error reaches only descriptors
                // open when it happens.
                if let Some(w) = &shared.wal {
                    w.attach();
                }
            }
            Err(e) => {
                let f = Failure::new(503, "database_unavailable", e.to_string());
                for j in batch {
                    let _ = j.reply.send(Err(f.clone()));
                }
                return;
            }
        }
    }
    let c = conn.as_mut().expect("connected above");
    let pricing = &shared.cfg.pricing;
    // The checks join this transaction without savepoints (`check::commit`): one that fails
    // may have written part of itself, so the whole batch is rolled back and, below, written
    // again one check a transaction.
    let result = db::write_transaction(c, |c| {
        let mut out = Vec::with_capacity(batch.len());
        for j in &batch {
            out.push(check::commit(c, &j.ctx, pricing, &j.req, &j.priced)?);
        }
        Ok::<_, CheckError>(out)
    });
    match result {
        Ok(results) => {
            shared.metrics.commits.fetch_add(1, Ordering::Relaxed);
            shared
                .metrics
                .committed
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            let replies: Vec<Reply> = batch
                .into_iter()
                .zip(results)
                .map(|(j, r)| (j.reply, Ok(r)))
                .collect();
            match (durable, &shared.wal) {
                // Nothing waiting to be written meanwhile (a client that sends one check at a
                // time, as slurmctld does): sync here, and spare the answers a thread hop.
                (Some(_), Some(wal)) if shared.jobs_waiting.load(Ordering::Acquire) == 0 => {
                    sync_and_answer(shared, wal, replies);
                }
                // Answered by the syncer once the WAL is on disk. Every answer of a committed
                // batch goes that way, a denial or a replayed answer too: what it says must
                // not be lost.
                (Some(tx), _) => {
                    if let Err(mpsc::SendError(replies)) = tx.send(replies) {
                        let f = Failure::new(
                            503,
                            "database_unavailable",
                            "the WAL syncer has stopped; retry with the same request_id",
                        );
                        for (to, _) in replies {
                            let _ = to.send(Err(f.clone()));
                        }
                    }
                }
                (None, _) => {
                    for (to, r) in replies {
                        let _ = to.send(r);
                    }
                }
            }
        }
        Err(e) => {
            // A check refused for what it asks (a request id reused for another request, a
            // hold to replace that does not exist) leaves the connection as good as it was.
            if e.is_db_failure() {
                *conn = None;
            }
            if batch.len() == 1 {
                let f = Failure::from(&e);
                for j in batch {
                    let _ = j.reply.send(Err(f.clone()));
                }
            } else {
                // One commit for many failed (a check refused, a deadlock, a lost connection):
                // try each alone, so one bad check cannot fail the others.
                if e.is_db_failure() {
                    tracing::warn!(
                        "a group commit of {} checks failed ({e}); writing them one by one",
                        batch.len()
                    );
                }
                for j in batch {
                    write_batch(shared, conn, vec![j], durable);
                }
            }
        }
    }
}

/// The syncer: makes the writer's commits durable, then answers them.
///
/// The writer commits at `synchronous = normal`: SQLite writes the WAL frames of the
/// transaction but does not wait for the disk. This thread takes every committed batch
/// waiting, syncs the WAL file once (`fdatasync`: what was written before the call is on disk
/// when it returns), and only then sends the answers; meanwhile the writer writes the next
/// batch. An answer therefore promises exactly what it promised at `synchronous = full`: a
/// crash or a power cut after it cannot lose the hold. SQLite keeps the database consistent at
/// `normal` (frames after the last sync are dropped whole on recovery, and the WAL header is
/// synced when the WAL starts over); what the sync adds is that answered transactions are
/// among those kept. Other connections may read a transaction before it is synced, as a
/// commit of theirs (at `full`) syncs the WAL with it.
///
/// A failed sync leaves the batch's fate unknown: its checks are answered 503, nothing more is
/// written, and the server stops with an error (a restart lets SQLite recover the WAL).
fn sync_loop(shared: &Shared, rx: &mpsc::Receiver<Vec<Reply>>) {
    let Some(wal) = &shared.wal else { return };
    loop {
        let mut waiting = match rx.recv() {
            Ok(r) => r,
            // Every writer has finished.
            Err(_) => return,
        };
        while let Ok(more) = rx.try_recv() {
            waiting.extend(more);
        }
        sync_and_answer(shared, wal, waiting);
    }
}

/// Syncs the WAL, then sends the answers; if the sync fails (now or before), answers 503
/// instead and stops the server (see [`sync_loop`]).
fn sync_and_answer(shared: &Shared, wal: &WalFile, replies: Vec<Reply>) {
    match wal.sync() {
        Ok(()) => {
            shared.metrics.syncs.fetch_add(1, Ordering::Relaxed);
            for (to, r) in replies {
                let _ = to.send(r);
            }
        }
        Err(msg) => {
            if shared.failed.set(msg.clone()).is_ok() {
                tracing::error!("{msg}");
            }
            shared.stop.store(true, Ordering::Relaxed);
            let f = Failure::new(
                503,
                "database_unavailable",
                format!("{msg}; retry with the same request_id once asbb-checkd is back"),
            );
            for (to, _) in replies {
                let _ = to.send(Err(f.clone()));
            }
        }
    }
}

/// The WAL file SQLite writes beside the database at `db_path` (SQLite resolves symbolic links
/// before it appends `-wal`).
fn wal_path(db_path: &Path) -> std::io::Result<PathBuf> {
    let mut p = std::fs::canonicalize(db_path)?.into_os_string();
    p.push("-wal");
    Ok(PathBuf::from(p))
}

/// The first four bytes of every SQLite WAL (the last bit names the checksum byte order).
const WAL_MAGIC: [[u8; 4]; 2] = [[0x37, 0x7f, 0x06, 0x82], [0x37, 0x7f, 0x06, 0x83]];

/// The WAL of the writer's database, held open for its syncs.
///
/// Linux reports a failed write-back to each descriptor open when it happened, once, and
/// SQLite's own descriptors of the file (the checkpointer's, which syncs the WAL before it
/// copies it back) may see it first. So the file is opened when the writer connects, before it
/// writes, and kept for as long as it is the file at the WAL's name (a reconnection to the
/// same file keeps the older descriptor). Syncs go through it one at a time, and a failure
/// sticks: once a sync has failed, no later one succeeds, since the pages it could not write
/// may be gone from memory and a successful sync would then answer for a WAL whose recovery
/// stops before them.
struct WalFile {
    db_path: PathBuf,
    held: std::sync::Mutex<HeldWal>,
}

#[derive(Default)]
struct HeldWal {
    /// The open WAL.
    file: Option<OpenWal>,
    /// Why a sync failed; every later sync fails with it.
    failed: Option<String>,
}

impl WalFile {
    fn new(db_path: PathBuf) -> WalFile {
        WalFile {
            db_path,
            held: std::sync::Mutex::new(HeldWal::default()),
        }
    }

    /// After the writer (re)connects: opens the WAL now, unless the one held is still the file
    /// at its name. A WAL that cannot be opened yet is opened at the first sync, which fails if
    /// it still cannot.
    fn attach(&self) {
        let Ok(mut held) = self.held.lock() else {
            return;
        };
        if held.failed.is_some() {
            return;
        }
        let Ok(w) = open_wal(&self.db_path) else {
            return;
        };
        if !matches!(&held.file, Some(h) if (h.dev, h.ino) == (w.dev, w.ino)) {
            held.file = Some(w);
        }
    }

    /// Syncs the WAL to disk (`fdatasync`), or says why it could not.
    fn sync(&self) -> Result<(), String> {
        let mut held = self
            .held
            .lock()
            .map_err(|_| "the WAL syncer failed earlier".to_string())?;
        if let Some(e) = &held.failed {
            return Err(e.clone());
        }
        let r = sync_held(&self.db_path, &mut held.file).map_err(|e| {
            format!(
                "syncing the SQLite WAL of {} failed: {e}; the last checks may not be on disk",
                self.db_path.display()
            )
        });
        if let Err(e) = &r {
            held.failed = Some(e.clone());
        }
        r
    }
}

/// Opens a WAL, checking that it is one (empty is fine: a checkpoint truncated it and
/// everything is in the synced database file).
fn open_wal(db_path: &Path) -> std::io::Result<OpenWal> {
    use std::os::unix::fs::MetadataExt;
    let path = wal_path(db_path)?;
    let f = std::fs::File::open(&path)?;
    let m = f.metadata()?;
    if m.len() >= 4 {
        let mut magic = [0u8; 4];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut magic, 0)?;
        if !WAL_MAGIC.contains(&magic) {
            return Err(std::io::Error::other(format!(
                "{} is not a SQLite WAL",
                path.display()
            )));
        }
    }
    Ok(OpenWal {
        file: f,
        dev: m.dev(),
        ino: m.ino(),
        path,
    })
}

/// A WAL held open, with its name as resolved when it was opened (as SQLite resolved it) and
/// its device and inode.
struct OpenWal {
    file: std::fs::File,
    path: PathBuf,
    dev: u64,
    ino: u64,
}

fn sync_held(db_path: &Path, file: &mut Option<OpenWal>) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    if file.is_none() {
        *file = Some(open_wal(db_path)?);
    }
    let w = file.as_ref().expect("opened above");
    let (f, path) = (&w.file, &w.path);
    // The file at the WAL's name must be the one held: recovery reads that one.
    match std::fs::metadata(path) {
        Ok(m) if (m.dev(), m.ino()) == (w.dev, w.ino) => {}
        Ok(_) => {
            return Err(std::io::Error::other(format!(
                "{} is no longer the WAL the writer writes (moved or replaced)",
                path.display()
            )))
        }
        // SQLite deletes the WAL when its last connection closes, after copying all of it into
        // the synced database file: nothing is left to sync.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && f.metadata()?.nlink() == 0 => {
            return Ok(())
        }
        Err(e) => return Err(e),
    }
    f.sync_data()
}

fn refresh_histories(shared: &Shared) {
    if !shared.cfg.pricing.correction.enabled {
        return;
    }
    let since = check::since(Utc::now(), &shared.cfg.pricing);
    let r = db::connect_checked(&shared.cfg.db_url, &shared.cfg.connect)
        .map_err(|e| e.to_string())
        .and_then(|mut c| check::histories(&mut c, since).map_err(|e| e.to_string()));
    match r {
        Ok(h) => {
            if let Ok(mut w) = shared.histories.write() {
                *w = h;
            }
        }
        Err(e) => tracing::warn!("failed to read the estimate history for corrections: {e}"),
    }
}

fn refresh_loop(shared: &Shared) {
    let mut last = Instant::now();
    while !shared.stop.load(Ordering::Relaxed) {
        std::thread::sleep(SHUTDOWN_POLL);
        if last.elapsed() >= shared.cfg.correction_refresh {
            refresh_histories(shared);
            last = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // SQLite names the WAL after the database file it resolved: through a symbolic link, the
    // WAL lies beside the target, and that is the file to sync.
    #[test]
    fn the_wal_is_found_beside_the_resolved_database_file() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let db = real.join("ledger.db");
        std::fs::write(&db, b"").unwrap();
        let link = dir.path().join("link.db");
        std::os::unix::fs::symlink(&db, &link).unwrap();
        let expected = std::fs::canonicalize(&real).unwrap().join("ledger.db-wal");
        assert_eq!(wal_path(&link).unwrap(), expected);
        assert_eq!(wal_path(&db).unwrap(), expected);
    }

    #[test]
    fn only_the_wal_the_writer_writes_is_synced_and_a_failure_sticks() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        let wal = dir.path().join("t.db-wal");
        let url = DbUrl::Sqlite(db.clone());
        let mut c = db::connect(&url, &ConnectOptions::default(), db::Create::Allow).unwrap();
        let exec = |c: &mut DbConn, sql: &str| {
            diesel::connection::SimpleConnection::batch_execute(c, sql).unwrap()
        };
        exec(
            &mut c,
            "CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1);",
        );
        let w = WalFile::new(db.clone());
        w.attach();
        w.sync().unwrap();
        // Truncated by a checkpoint, the same file: nothing left to sync, still fine.
        exec(&mut c, "PRAGMA wal_checkpoint(TRUNCATE);");
        assert_eq!(std::fs::metadata(&wal).unwrap().len(), 0);
        w.sync().unwrap();
        exec(&mut c, "INSERT INTO t VALUES (2);");
        w.sync().unwrap();
        // Another file at the WAL's name: recovery would read that one. The failure sticks,
        // also once the right file is back.
        std::fs::rename(&wal, dir.path().join("moved")).unwrap();
        std::fs::write(&wal, b"not a WAL").unwrap();
        let e = w.sync().unwrap_err();
        assert!(e.contains("is no longer the WAL the writer writes"), "{e}");
        std::fs::rename(dir.path().join("moved"), &wal).unwrap();
        assert_eq!(w.sync().unwrap_err(), e);

        // Opened afresh: a file that is not a WAL is refused, and so is none at all.
        std::fs::write(&wal, b"not a WAL").unwrap();
        let fresh = WalFile::new(db.clone());
        fresh.attach();
        let e = fresh.sync().unwrap_err();
        assert!(e.contains("is not a SQLite WAL"), "{e}");
        std::fs::remove_file(&wal).unwrap();
        let e = WalFile::new(db.clone()).sync().unwrap_err();
        assert!(e.contains("No such file"), "{e}");
    }
}
