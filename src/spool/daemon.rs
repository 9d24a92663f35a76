//! The loop of `asbb-spoold`: notify only wakes it; every wake-up rescans the spool
//! directories with the same intake as `asbb spool scan`, in bounded batches, then reconciles
//! what came in. A periodic rescan covers missed events and NFS spools, where inotify sees
//! nothing. A stop request (SIGTERM) is honoured between batches: the current batch is
//! committed and moved, then the loop exits.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use notify::{RecursiveMode, Watcher};

use super::intake::{Intake, IntakeOptions, SpoolDirs};
use crate::db::ledger::OpContext;
use crate::db::reconcile::{self, ReconcilePolicy};
use crate::db::{self, ConnectOptions, DbUrl};

/// What the daemon needs.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// Directories to watch.
    pub dirs: SpoolDirs,
    /// Intake settings.
    pub intake: IntakeOptions,
    /// Rescan even without events this often.
    pub rescan_interval: Duration,
    /// Reconcile after intake (`None`: intake only).
    pub reconcile: Option<ReconcilePolicy>,
    /// The database.
    pub db_url: DbUrl,
    /// How to connect.
    pub connect: ConnectOptions,
    /// Stop after the first pass (for tests and one-shot use).
    pub once: bool,
}

/// How long the loop waits for more events after the first one, so a burst of files is taken
/// in as one batch.
const SETTLE: Duration = Duration::from_millis(100);
/// How often a waiting loop looks at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(200);
/// Wait after a database failure before trying again.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// Runs until `stop` is set. Returns an error only when it cannot start (a spool directory
/// cannot be watched); database failures are logged and retried.
pub fn run(cfg: &DaemonConfig, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel::<()>();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if ev.is_ok() {
            let _ = tx.send(());
        }
    })?;
    for (kind, dir) in cfg.dirs.each() {
        watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(|e| anyhow::anyhow!("cannot watch the {kind} spool {}: {e}", dir.display()))?;
        tracing::info!(kind = %kind, dir = %dir.display(), "watching");
    }
    let mut intake = Intake::new(cfg.intake.clone());
    // On SQLite a thread checkpoints the WAL beside this writer (see `db::checkpoint`).
    let checkpointer =
        db::checkpoint::Checkpointer::start(&cfg.db_url, &cfg.connect, db::checkpoint::INTERVAL)?;
    let mut conn = None;
    let should_stop = || stop.load(Ordering::SeqCst);
    loop {
        if conn.is_none() {
            let opened = db::connect_checked(&cfg.db_url, &cfg.connect).and_then(|mut c| {
                if let Some(k) = &checkpointer {
                    k.relieve(&mut c)?;
                }
                Ok(c)
            });
            match opened {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    tracing::error!(error = %e, "database unavailable; retrying");
                    if wait(&rx, RETRY_AFTER, &should_stop) == Wake::Stop || cfg.once {
                        return Err(anyhow::anyhow!("database unavailable: {e}"));
                    }
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("connected above");
        match pass(c, cfg, &mut intake, &should_stop) {
            Ok(()) => {}
            Err(e) => {
                tracing::error!(error = %e, "pass failed; reconnecting");
                conn = None;
                if cfg.once {
                    return Err(e);
                }
            }
        }
        if cfg.once || should_stop() {
            tracing::info!("stopping");
            return Ok(());
        }
        if wait(&rx, cfg.rescan_interval, &should_stop) == Wake::Stop {
            tracing::info!("stopping");
            return Ok(());
        }
    }
}

fn pass(
    conn: &mut db::DbConn,
    cfg: &DaemonConfig,
    intake: &mut Intake,
    stop: &dyn Fn() -> bool,
) -> anyhow::Result<()> {
    let now = Utc::now();
    let report = intake.scan(conn, &cfg.dirs, now, stop, &mut |_| {})?;
    if report.handled() > 0 || report.has_problems() {
        tracing::info!(
            stored = report.stored,
            duplicates = report.duplicates,
            conflicts = report.conflicts,
            rejected = report.rejected,
            not_ready = report.not_ready,
            "intake"
        );
    }
    for e in &report.move_errors {
        tracing::warn!(error = %e, "could not move a file; the next pass retries");
    }
    if let Some(policy) = &cfg.reconcile {
        if stop() {
            return Ok(());
        }
        let ctx = OpContext::at("asbb-spoold", Utc::now());
        let r = reconcile::reconcile(conn, &ctx, policy, None, stop)?;
        if r.charged + r.unmatched + r.waiting > 0 {
            tracing::info!(
                charged = r.charged,
                unmatched = r.unmatched,
                overruns = r.overruns,
                refunded = r.refunded,
                waiting = r.waiting,
                "reconcile"
            );
        }
    }
    Ok(())
}

#[derive(Debug, PartialEq, Eq)]
enum Wake {
    Event,
    Timeout,
    Stop,
}

/// Waits for a file event (then lets a burst settle), the timeout, or a stop request.
fn wait(rx: &mpsc::Receiver<()>, timeout: Duration, stop: &dyn Fn() -> bool) -> Wake {
    let deadline = Instant::now() + timeout;
    loop {
        if stop() {
            return Wake::Stop;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Wake::Timeout;
        }
        match rx.recv_timeout(left.min(STOP_POLL)) {
            Ok(()) => {
                let settle = Instant::now() + SETTLE;
                while let Some(l) = settle.checked_duration_since(Instant::now()) {
                    if rx.recv_timeout(l).is_err() {
                        break;
                    }
                }
                return Wake::Event;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return Wake::Timeout,
        }
    }
}
