//! Checkpoints of the SQLite write-ahead log beside a busy writer.
//!
//! A SQLite connection that commits checkpoints the WAL itself once it is
//! [`WAL_AUTOCHECKPOINT_PAGES`] long: at the end of that
//! commit it copies thousands of pages back into the database file, and whatever waits for the
//! commit (the checks of a group commit, the next batch of a reconcile) waits for that too. The
//! [`Checkpointer`] does the copying on a thread and connection of its own instead, every
//! quarter of a second (asbb-checkd: every second), while the writer goes on: a passive
//! checkpoint never blocks a writer.
//! The writer then only checkpoints if the WAL grows ten times past the usual length
//! ([`WRITER_FALLBACK_PAGES`], e.g. when the checkpointer cannot connect), so the WAL stays
//! bounded whatever happens.
//!
//! A writer that never pauses leaves the WAL no moment to start over from its beginning (that
//! needs every frame copied back before the next write). Once the WAL is longer than the usual
//! length, the checkpointer follows its passive pass with a restart, which waits briefly
//! ([`RESTART_WAIT`]) for the write in hand and holds new writers up only while it copies what
//! was committed in between. A restart holds the checkpoint lock while it waits, so it must not
//! wait long: while it did (up to the busy timeout), nothing was copied back and a batch that
//! commits back to back (`asbb reconcile`) grew the WAL past a gigabyte. When the writer does
//! not pause, the checkpointer asks it instead: the batch loops call [`between_transactions`]
//! after each commit, and there the writer restarts the WAL itself, with no write in its way.
//! A restart holds the writer up for about 10 ms, so `asbb-checkd`, whose checks wait for
//! every commit, restarts at a longer WAL ([`Checkpointer::start_restarting_at`]).
//!
//! Those 10 ms are a sync of the database file, not the copying (a restart after a passive
//! pass copies a few hundred frames). SQLite syncs the database file only when a checkpoint
//! has copied the whole WAL; beside a writer that never pauses, only the restart does, so it
//! syncs every page the passive passes copied since the last restart. Syncing the file on the
//! checkpointer's own thread after each passive pass, or just before the restart, shortened
//! the restart to about 2 ms, yet made asbb-checkd's p99 worse (medians of eight alternating
//! benchmark runs: 6.3 ms after each pass and 6.9 ms before the restart, against 5.3 and
//! 5.2 ms without): while the checkpointer syncs, the writer's WAL syncs wait behind it on the
//! same disk, so every check in flight waits anyway.
//!
//! On PostgreSQL there is nothing to do: [`Checkpointer::start`] returns `None`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use diesel::connection::SimpleConnection;

use super::{connect, ConnectOptions, Create, DbConn, DbUrl, WAL_AUTOCHECKPOINT_PAGES};

/// How often the checkpointer looks at the WAL.
pub const INTERVAL: Duration = Duration::from_millis(250);

/// The WAL length, in pages, at which a writer working beside a checkpointer checkpoints by
/// itself after all.
pub const WRITER_FALLBACK_PAGES: i64 = 10 * WAL_AUTOCHECKPOINT_PAGES;

/// How long the checkpointer's restart of a long WAL waits for the writer in hand before it
/// leaves the restart to the writer ([`between_transactions`]).
pub const RESTART_WAIT: Duration = Duration::from_millis(10);

/// The WAL length, in pages, past which the checkpointer that could not restart the WAL asks
/// the writer to ([`between_transactions`]), for the usual restart length.
pub const WRITER_RESTART_PAGES: i64 = writer_restart_pages(WAL_AUTOCHECKPOINT_PAGES);

/// Past which length the checkpointer asks the writer to restart the WAL, when it restarts
/// it itself at `restart_pages`: three times that, and at most half the length at which the
/// writer checkpoints by itself.
const fn writer_restart_pages(restart_pages: i64) -> i64 {
    let limit = WRITER_FALLBACK_PAGES / 2;
    if 3 * restart_pages < limit {
        3 * restart_pages
    } else {
        limit
    }
}

/// How long a writer's restart in [`between_transactions`] waits for readers of the WAL.
const WRITER_RESTART_WAIT: Duration = Duration::from_millis(100);

/// The database files whose checkpointer found the WAL long and the writer never pausing: their
/// writers restart the WAL in [`between_transactions`].
static RESTART_WANTED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
/// Whether `RESTART_WANTED` is not empty (read without the lock after every commit).
static ANY_RESTART_WANTED: AtomicBool = AtomicBool::new(false);

fn want_restart(file: &Path) {
    let Ok(mut list) = RESTART_WANTED.lock() else {
        return;
    };
    if !list.iter().any(|f| f == file) {
        list.push(file.to_path_buf());
    }
    ANY_RESTART_WANTED.store(true, Ordering::Release);
}

fn take_restart(file: &Path) -> bool {
    let Ok(mut list) = RESTART_WANTED.lock() else {
        return false;
    };
    let before = list.len();
    list.retain(|f| f != file);
    ANY_RESTART_WANTED.store(!list.is_empty(), Ordering::Release);
    list.len() != before
}

/// The file behind a SQLite connection's main database, as the checkpointer names it.
fn database_file(c: &mut diesel::SqliteConnection) -> Result<PathBuf, diesel::result::Error> {
    #[derive(diesel::QueryableByName)]
    struct Db {
        #[diesel(sql_type = diesel::sql_types::Text)]
        name: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        file: String,
    }
    let dbs: Vec<Db> = diesel::RunQueryDsl::load(diesel::sql_query("PRAGMA database_list"), c)?;
    let file = dbs
        .into_iter()
        .find(|d| d.name == "main")
        .map(|d| PathBuf::from(d.file))
        .unwrap_or_default();
    Ok(std::fs::canonicalize(&file).unwrap_or(file))
}

/// A restart of the WAL that waits at most `wait` for whoever is in its way, under the
/// connection's own busy timeout again afterwards. `None` on PostgreSQL.
fn restart_waiting_at_most(
    conn: &mut DbConn,
    wait: Duration,
) -> Result<Option<WalState>, diesel::result::Error> {
    #[derive(diesel::QueryableByName)]
    struct Timeout {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        timeout: i64,
    }
    let DbConn::Sqlite(c) = conn else {
        return Ok(None);
    };
    let own: Timeout =
        diesel::RunQueryDsl::get_result(diesel::sql_query("PRAGMA busy_timeout"), c)?;
    c.batch_execute(&format!("PRAGMA busy_timeout = {}", wait.as_millis()))?;
    let r = wal_checkpoint(conn, CheckpointMode::Restart);
    if let DbConn::Sqlite(c) = conn {
        c.batch_execute(&format!("PRAGMA busy_timeout = {}", own.timeout))?;
    }
    r
}

/// For a writer's batch loop, between two of its transactions: when the checkpointer could not
/// restart a long WAL because this writer never paused, restarts it here, where no write is in
/// the way (copying back only what was committed since the checkpointer's last pass, and
/// waiting at most a tenth of a second for readers). Otherwise (and on PostgreSQL) nothing; the
/// check costs an atomic load. Returns whether it restarted the WAL (for `/metrics`: a restart
/// holds the writer up for tens of milliseconds on a virtual disk).
pub fn between_transactions(conn: &mut DbConn) -> Result<bool, diesel::result::Error> {
    let DbConn::Sqlite(c) = conn else {
        return Ok(false);
    };
    if !ANY_RESTART_WANTED.load(Ordering::Acquire) {
        return Ok(false);
    }
    let file = database_file(c)?;
    if !take_restart(&file) {
        return Ok(false);
    }
    match restart_waiting_at_most(conn, WRITER_RESTART_WAIT)? {
        Some(s) if s.busy => {
            // A reader was still in the WAL: ask again after the next transaction.
            want_restart(&file);
            Ok(false)
        }
        Some(_) => Ok(true),
        None => Ok(false),
    }
}

/// How [`wal_checkpoint`] copies the WAL back into the SQLite database file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointMode {
    /// Copy what it can without waiting for anyone; writers carry on meanwhile.
    Passive,
    /// Copy everything, waiting (up to the busy timeout) for the writer in hand, and make the
    /// next writer start the WAL from its beginning. New writers wait while it runs.
    Restart,
}

/// What a checkpoint found: frames in the WAL and frames of them now in the database file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalState {
    /// The checkpoint could not finish (a reader or writer was in the way).
    pub busy: bool,
    /// Frames in the WAL.
    pub frames: i64,
    /// Of those, frames copied back.
    pub checkpointed: i64,
}

#[derive(diesel::QueryableByName)]
struct WalCheckpointRow {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    busy: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    log: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    checkpointed: i64,
}

/// Checkpoints a SQLite database's WAL; `None` on PostgreSQL, which has no such thing.
pub fn wal_checkpoint(
    conn: &mut DbConn,
    mode: CheckpointMode,
) -> Result<Option<WalState>, diesel::result::Error> {
    let DbConn::Sqlite(c) = conn else {
        return Ok(None);
    };
    let sql = match mode {
        CheckpointMode::Passive => "PRAGMA wal_checkpoint(PASSIVE)",
        CheckpointMode::Restart => "PRAGMA wal_checkpoint(RESTART)",
    };
    let row: WalCheckpointRow = diesel::RunQueryDsl::get_result(diesel::sql_query(sql), c)?;
    Ok(Some(WalState {
        busy: row.busy != 0,
        frames: row.log,
        checkpointed: row.checkpointed,
    }))
}

/// Sets after how many WAL pages this SQLite connection checkpoints at the end of its own
/// commits (0: never; another thread or process does it). Nothing on PostgreSQL.
pub fn set_wal_autocheckpoint(conn: &mut DbConn, pages: i64) -> Result<(), diesel::result::Error> {
    if let DbConn::Sqlite(c) = conn {
        c.batch_execute(&format!("PRAGMA wal_autocheckpoint = {}", pages.max(0)))?;
    }
    Ok(())
}

/// Hands the checkpoints of `conn`, a writer's connection, to the checkpointer: the writer
/// checkpoints only past [`WRITER_FALLBACK_PAGES`]. Nothing on PostgreSQL.
pub fn relieve(conn: &mut DbConn) -> Result<(), diesel::result::Error> {
    set_wal_autocheckpoint(conn, WRITER_FALLBACK_PAGES)
}

/// What the checkpointer did.
#[derive(Debug, Default)]
pub struct WalStats {
    /// Checkpoints run.
    pub checkpoints: AtomicU64,
    /// Of those, restarts of the WAL.
    pub restarts: AtomicU64,
    /// Frames in the WAL at the last checkpoint.
    pub frames: AtomicI64,
}

/// The checkpointer thread of one SQLite database. Dropping it (or [`finish`](Self::finish))
/// stops the thread after a last pass.
#[derive(Debug)]
pub struct Checkpointer {
    stop: Arc<AtomicBool>,
    stats: Arc<WalStats>,
    handle: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts checkpointing `url` every `interval`, restarting the WAL once it is
    /// [`WAL_AUTOCHECKPOINT_PAGES`] long; `None` on PostgreSQL.
    pub fn start(
        url: &DbUrl,
        opts: &ConnectOptions,
        interval: Duration,
    ) -> std::io::Result<Option<Checkpointer>> {
        Checkpointer::start_restarting_at(url, opts, interval, WAL_AUTOCHECKPOINT_PAGES)
    }

    /// Like [`start`](Self::start), but the WAL is restarted only once it is `restart_pages`
    /// long (at most half of [`WRITER_FALLBACK_PAGES`]). A restart holds the writer up while it
    /// copies what was committed since the pass before it and syncs the database file (about
    /// 10 ms on a virtual disk): a writer that commits back to back pays that once per
    /// `restart_pages` pages, so `asbb-checkd` restarts less often than the batch jobs.
    pub fn start_restarting_at(
        url: &DbUrl,
        opts: &ConnectOptions,
        interval: Duration,
        restart_pages: i64,
    ) -> std::io::Result<Option<Checkpointer>> {
        let restart_pages = restart_pages.clamp(1, WRITER_FALLBACK_PAGES / 2);
        if !matches!(url, DbUrl::Sqlite(_)) {
            return Ok(None);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(WalStats::default());
        let handle = {
            let (url, opts) = (url.clone(), opts.clone());
            let (stop, stats) = (Arc::clone(&stop), Arc::clone(&stats));
            std::thread::Builder::new()
                .name("asbb-checkpoint".into())
                .spawn(move || run(&url, &opts, interval, restart_pages, &stop, &stats))?
        };
        Ok(Some(Checkpointer {
            stop,
            stats,
            handle: Some(handle),
        }))
    }

    /// What it did so far.
    pub fn stats(&self) -> Arc<WalStats> {
        Arc::clone(&self.stats)
    }

    /// Hands the checkpoints of `conn`, a writer's connection, to this checkpointer ([`relieve`]).
    pub fn relieve(&self, conn: &mut DbConn) -> Result<(), diesel::result::Error> {
        relieve(conn)
    }

    /// Stops the thread after a last pass, and waits for it.
    pub fn finish(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        if let Some(h) = self.handle.take() {
            self.stop.store(true, Ordering::Relaxed);
            h.thread().unpark();
            let _ = h.join();
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

fn run(
    url: &DbUrl,
    opts: &ConnectOptions,
    interval: Duration,
    restart_pages: i64,
    stop: &AtomicBool,
    stats: &WalStats,
) {
    let mut conn: Option<DbConn> = None;
    // A failure is logged once, not every pass, and so is the recovery.
    let mut failing = false;
    loop {
        let last = stop.load(Ordering::Relaxed);
        match pass(url, opts, restart_pages, &mut conn, stats) {
            Ok(()) if failing => {
                tracing::info!("checkpointer: checkpointing again");
                failing = false;
            }
            Ok(()) => {}
            Err(e) if !failing => {
                tracing::warn!(
                    "checkpointer: {e}; meanwhile the writer checkpoints past {WRITER_FALLBACK_PAGES} pages"
                );
                failing = true;
            }
            Err(_) => {}
        }
        if last {
            return;
        }
        std::thread::park_timeout(interval);
    }
}

fn pass(
    url: &DbUrl,
    opts: &ConnectOptions,
    restart_pages: i64,
    conn: &mut Option<DbConn>,
    stats: &WalStats,
) -> Result<(), String> {
    if conn.is_none() {
        *conn = Some(
            connect(url, opts, Create::Refuse).map_err(|e| format!("failed to connect: {e}"))?,
        );
    }
    let c = conn.as_mut().expect("connected above");
    let r = wal_checkpoint(c, CheckpointMode::Passive).and_then(|state| match state {
        Some(s) if s.frames >= restart_pages => {
            stats.checkpoints.fetch_add(1, Ordering::Relaxed);
            let again = restart_waiting_at_most(c, RESTART_WAIT)?;
            match (again, url) {
                (Some(a), DbUrl::Sqlite(file)) if a.busy => {
                    // The writer did not pause. Past a few times the usual length it restarts
                    // the WAL between its transactions (copying back what was committed since
                    // this pass, which costs it time; hence not at once).
                    if a.frames >= writer_restart_pages(restart_pages) {
                        let file = std::fs::canonicalize(file).unwrap_or_else(|_| file.clone());
                        want_restart(&file);
                    }
                }
                _ => {
                    stats.restarts.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(again.or(state))
        }
        other => Ok(other),
    });
    match r {
        Ok(s) => {
            if let Some(s) = s {
                stats.checkpoints.fetch_add(1, Ordering::Relaxed);
                stats.frames.store(s.frames, Ordering::Relaxed);
            }
            Ok(())
        }
        Err(e) => {
            *conn = None;
            Err(format!("checkpoint of the WAL failed: {e}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SQLite ledger with a table `t` in a temporary directory, a writer connection and a
    /// checkpointer looking every 20 ms.
    fn writer_beside_a_checkpointer() -> (tempfile::TempDir, DbConn, Checkpointer) {
        let dir = tempfile::tempdir().unwrap();
        let url = DbUrl::Sqlite(dir.path().join("t.db"));
        let opts = ConnectOptions::default();
        let mut w = connect(&url, &opts, Create::Allow).unwrap();
        w.batch_execute("CREATE TABLE t (x BLOB)").unwrap();
        let c = Checkpointer::start(&url, &opts, Duration::from_millis(20))
            .unwrap()
            .expect("a checkpointer for SQLite");
        c.relieve(&mut w).unwrap();
        (dir, w, c)
    }

    /// One transaction that writes about `pages` pages.
    fn commit_pages(w: &mut DbConn, pages: u32) {
        w.batch_execute(&format!(
            "BEGIN IMMEDIATE; \
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {pages}) \
             INSERT INTO t SELECT randomblob(4000) FROM n; COMMIT;"
        ))
        .unwrap();
    }

    // A writer that commits back to back, 100,000 pages in all, calling between_transactions
    // after each commit as the batch loops do: the WAL starts over well before it reaches the
    // length at which the writer would checkpoint by itself, although the checkpointer never
    // finds the writer pausing for a restart of its own.
    #[test]
    fn a_writer_that_never_pauses_restarts_the_wal_when_asked() {
        let (dir, mut w, c) = writer_beside_a_checkpointer();
        let wal = dir.path().join("t.db-wal");
        let mut longest = 0;
        let mut restarted = 0;
        // Long transactions with short gaps, as a reconcile's batches.
        for _ in 0..100 {
            commit_pages(&mut w, 1000);
            restarted += u32::from(between_transactions(&mut w).unwrap());
            // The WAL file never shrinks: its length is the longest the WAL has been.
            longest = std::fs::metadata(&wal).map_or(0, |m| m.len());
        }
        c.finish();
        let frames = (longest / 4120) as i64;
        assert!(
            frames < 2 * WRITER_RESTART_PAGES,
            "the WAL grew to {frames} frames"
        );
        assert!(restarted > 0, "the writer never restarted the WAL itself");
    }

    // A writer that commits without pause, 12,000 pages in all: more than the length at which
    // it would have checkpointed by itself. The checkpointer copies the WAL back and, once it
    // is long, makes it start over; the writer never checkpoints.
    #[test]
    fn a_busy_writer_leaves_checkpoints_and_restarts_to_the_checkpointer() {
        let (dir, mut w, c) = writer_beside_a_checkpointer();
        let opts = ConnectOptions::default();
        let stats = c.stats();
        for _ in 0..120 {
            commit_pages(&mut w, 100);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while stats.restarts.load(Ordering::Relaxed) == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        c.finish();
        assert!(stats.restarts.load(Ordering::Relaxed) >= 1, "{stats:?}");
        assert!(stats.checkpoints.load(Ordering::Relaxed) >= 2, "{stats:?}");
        // Everything committed is in the database file, read without the WAL.
        let mut r = connect(
            &DbUrl::Sqlite(
                format!("file:{}?immutable=1", dir.path().join("t.db").display()).into(),
            ),
            &opts,
            Create::Allow,
        )
        .unwrap();
        let DbConn::Sqlite(r) = &mut r else {
            unreachable!()
        };
        #[derive(diesel::QueryableByName)]
        struct N {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let n: N =
            diesel::RunQueryDsl::get_result(diesel::sql_query("SELECT COUNT(*) AS n FROM t"), r)
                .unwrap();
        assert_eq!(n.n, 12_000);
    }

    // asbb-checkd restarts the WAL at a longer length than the batch jobs: the same 12,000
    // pages that make the usual checkpointer restart (above) are only copied back by one that
    // restarts at 30,000, and its writer's limit is unchanged.
    #[test]
    fn a_checkpointer_restarting_at_a_longer_wal_leaves_a_shorter_one_alone() {
        assert_eq!(WRITER_RESTART_PAGES, 3 * WAL_AUTOCHECKPOINT_PAGES);
        assert_eq!(writer_restart_pages(40_000), WRITER_FALLBACK_PAGES / 2);
        let dir = tempfile::tempdir().unwrap();
        let url = DbUrl::Sqlite(dir.path().join("t.db"));
        let opts = ConnectOptions::default();
        let mut w = connect(&url, &opts, Create::Allow).unwrap();
        w.batch_execute("CREATE TABLE t (x BLOB)").unwrap();
        let c = Checkpointer::start_restarting_at(&url, &opts, Duration::from_millis(20), 30_000)
            .unwrap()
            .expect("a checkpointer for SQLite");
        c.relieve(&mut w).unwrap();
        let stats = c.stats();
        for _ in 0..120 {
            commit_pages(&mut w, 100);
        }
        let before = stats.checkpoints.load(Ordering::Relaxed);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while stats.checkpoints.load(Ordering::Relaxed) < before + 3
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        c.finish();
        assert_eq!(stats.restarts.load(Ordering::Relaxed), 0, "{stats:?}");
        assert!(stats.frames.load(Ordering::Relaxed) >= 12_000, "{stats:?}");
    }

    #[test]
    fn nothing_to_do_on_postgres() {
        let url = DbUrl::Postgres("postgres://nobody@127.0.0.1:1/none".into());
        assert!(
            Checkpointer::start(&url, &ConnectOptions::default(), INTERVAL)
                .unwrap()
                .is_none()
        );
    }
}
