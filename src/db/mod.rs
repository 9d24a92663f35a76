//! The database: the only module that knows diesel.
//!
//! One code base serves both backends through [`DbConn`], a diesel `MultiConnection` over
//! SQLite (the embedded default) and PostgreSQL (production, shared by several clusters). The
//! backend is chosen explicitly from the URL scheme, never by trial.
//!
//! Writers serialise per account: on SQLite every write transaction starts with
//! `BEGIN IMMEDIATE` (the database has one writer anyway, and taking the lock up front avoids
//! the deadlock of two readers upgrading); on PostgreSQL the account row is locked with
//! `SELECT … FOR UPDATE`, so accounts never wait on each other.

/// Runs the same diesel code on the concrete connection. Multi-row inserts are not available
/// through the generic `DbConn`, and every statement sent through it has its SQL text rebuilt
/// on each call (the derive serialises the query before the statement cache is consulted):
/// the hot paths of the ledger run on the concrete connection, where diesel reuses the
/// prepared statement without building any SQL.
macro_rules! on_backend {
    ($conn:expr, |$c:ident| $body:expr) => {
        match $conn {
            $crate::db::DbConn::Sqlite($c) => $body,
            $crate::db::DbConn::Postgres($c) => $body,
        }
    };
}

pub mod alerts;
pub mod allocations;
pub mod audit;
pub mod burn;
pub mod check;
pub mod checkpoint;
mod fixed;
pub mod grants;
pub mod ledger;
pub mod models;
mod pg_batch;
pub mod queries;
pub mod reconcile;
pub(crate) mod report;
pub mod schema;
pub mod spool;

use std::path::{Path, PathBuf};
use std::time::Duration;

use diesel::connection::{AnsiTransactionManager, SimpleConnection, TransactionManager};
use diesel::pg::PgConnection;
use diesel::sqlite::SqliteConnection;
use diesel::Connection;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

/// Migrations for SQLite, compiled into the binary.
pub const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
/// Migrations for PostgreSQL, compiled into the binary.
pub const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

mod conn {
    // The derive generates undocumented public items of its own.
    #![allow(missing_docs)]
    use diesel::pg::PgConnection;
    use diesel::sqlite::SqliteConnection;

    /// A connection to either backend.
    #[derive(diesel::MultiConnection)]
    pub enum DbConn {
        /// The embedded default.
        Sqlite(SqliteConnection),
        /// The production backend.
        Postgres(PgConnection),
    }
}

pub use conn::DbConn;

/// Which backend a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite file.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

impl Backend {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// A database location, parsed from a URL or a bare path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbUrl {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL connection string (kept as given; libpq parses it).
    Postgres(String),
}

/// Problems opening or checking the database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The URL names a backend asbb does not support.
    #[error("database url uses the unsupported scheme '{0}' (use a file path, sqlite://PATH, or postgres://…)")]
    UnsupportedScheme(String),
    /// The database URL is empty.
    #[error("database url is empty (set --database-url, ASBB_DATABASE_URL, or [database] url in the config file)")]
    EmptyUrl,
    /// The SQLite file does not exist and the command does not create it.
    #[error("database file {0} does not exist; create it with `asbb database migrate`")]
    MissingFile(PathBuf),
    /// Connecting failed.
    #[error("failed to connect to the {backend} database {location}: {source}")]
    Connect {
        /// Backend.
        backend: &'static str,
        /// Where (a path, or the URL without credentials).
        location: String,
        /// Cause.
        source: diesel::ConnectionError,
    },
    /// The schema is older than this build.
    #[error("database schema is not current: {pending} migration(s) pending (first: {first}); run `asbb database migrate`")]
    Unmigrated {
        /// How many migrations are missing.
        pending: usize,
        /// The first missing one.
        first: String,
    },
    /// The schema is newer than this build.
    #[error("database schema is newer than this asbb knows (unknown migration {0}); upgrade asbb before using this database")]
    TooNew(String),
    /// Running migrations failed.
    #[error("failed to migrate the database: {0}")]
    Migrate(String),
    /// Any other database error.
    #[error("database error: {0}")]
    Query(#[from] diesel::result::Error),
}

impl DbUrl {
    /// Parses `postgres://…`, `postgresql://…`, `sqlite://PATH`, `sqlite:PATH`, or a bare path.
    pub fn parse(url: &str) -> Result<DbUrl, DbError> {
        let u = url.trim();
        if u.is_empty() {
            return Err(DbError::EmptyUrl);
        }
        if u.starts_with("postgres://") || u.starts_with("postgresql://") {
            return Ok(DbUrl::Postgres(u.to_string()));
        }
        if let Some(path) = u
            .strip_prefix("sqlite://")
            .or_else(|| u.strip_prefix("sqlite:"))
        {
            if path.is_empty() {
                return Err(DbError::EmptyUrl);
            }
            return Ok(DbUrl::Sqlite(PathBuf::from(path)));
        }
        if let Some((scheme, _)) = u.split_once("://") {
            return Err(DbError::UnsupportedScheme(scheme.to_string()));
        }
        Ok(DbUrl::Sqlite(PathBuf::from(u)))
    }

    /// The backend.
    pub fn backend(&self) -> Backend {
        match self {
            DbUrl::Sqlite(_) => Backend::Sqlite,
            DbUrl::Postgres(_) => Backend::Postgres,
        }
    }

    /// A printable location with any password removed.
    pub fn redacted(&self) -> String {
        match self {
            DbUrl::Sqlite(p) => p.display().to_string(),
            DbUrl::Postgres(u) => redact_password(u),
        }
    }
}

fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

/// How to open a connection.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// How long a SQLite writer waits for the lock before giving up.
    pub busy_timeout: Duration,
    /// SQLite `synchronous` level: `full` survives power loss, `normal` (with WAL) survives a
    /// crashed process and is several times faster.
    pub sqlite_synchronous: SqliteSync,
}

/// SQLite durability level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqliteSync {
    /// fsync on every commit.
    Full,
    /// fsync at WAL checkpoints only.
    Normal,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            busy_timeout: Duration::from_secs(30),
            sqlite_synchronous: SqliteSync::Full,
        }
    }
}

/// Whether opening may create a missing SQLite file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    /// Only `asbb database migrate` creates the database.
    Allow,
    /// Every other command refuses a missing file.
    Refuse,
}

/// Opens a connection and sets it up (WAL, busy timeout, foreign keys on SQLite).
pub fn connect(url: &DbUrl, opts: &ConnectOptions, create: Create) -> Result<DbConn, DbError> {
    match url {
        DbUrl::Sqlite(path) => {
            if create == Create::Refuse && !sqlite_exists(path) {
                return Err(DbError::MissingFile(path.clone()));
            }
            let location = path.display().to_string();
            let mut c =
                SqliteConnection::establish(&location).map_err(|source| DbError::Connect {
                    backend: "sqlite",
                    location: location.clone(),
                    source,
                })?;
            let sync = match opts.sqlite_synchronous {
                SqliteSync::Full => "FULL",
                SqliteSync::Normal => "NORMAL",
            };
            // A 32 MiB page cache; temporary B-trees (sorts, savepoint journals) in memory; the
            // WAL checkpointed into the database every 10,000 pages (40 MiB) rather than the
            // default 1,000: the same hot pages (balances, index tails) are written back once
            // per checkpoint, and a batch job pays a tenth of the checkpoints.
            c.batch_execute(&format!(
                "PRAGMA busy_timeout = {}; PRAGMA journal_mode = WAL; PRAGMA synchronous = {sync}; PRAGMA foreign_keys = ON; PRAGMA cache_size = -32768; PRAGMA temp_store = MEMORY; PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES};",
                opts.busy_timeout.as_millis()
            ))?;
            Ok(DbConn::Sqlite(c))
        }
        DbUrl::Postgres(u) => {
            let mut c = PgConnection::establish(u).map_err(|source| DbError::Connect {
                backend: "postgres",
                location: redact_password(u),
                source,
            })?;
            c.batch_execute("SET TIME ZONE 'UTC'")?;
            Ok(DbConn::Postgres(c))
        }
    }
}

fn sqlite_exists(path: &Path) -> bool {
    path.as_os_str() == ":memory:" || path.exists()
}

/// Opens a connection and refuses a database whose schema is not exactly what this build knows.
pub fn connect_checked(url: &DbUrl, opts: &ConnectOptions) -> Result<DbConn, DbError> {
    let mut conn = connect(url, opts, Create::Refuse)?;
    check_schema(&mut conn)?;
    Ok(conn)
}

/// The state of the schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaStatus {
    /// Migrations applied, by version.
    pub applied: Vec<String>,
    /// Migrations this build has that are not applied.
    pub pending: Vec<String>,
    /// Applied migrations this build does not know.
    pub unknown: Vec<String>,
}

/// Compares the applied migrations with the ones compiled in.
pub fn schema_status(conn: &mut DbConn) -> Result<SchemaStatus, DbError> {
    use diesel::migration::MigrationSource;
    let known: Vec<String> = match conn {
        DbConn::Sqlite(_) => {
            MigrationSource::<diesel::sqlite::Sqlite>::migrations(&SQLITE_MIGRATIONS)
                .map(|ms| ms.iter().map(|m| m.name().version().to_string()).collect())
        }
        DbConn::Postgres(_) => MigrationSource::<diesel::pg::Pg>::migrations(&POSTGRES_MIGRATIONS)
            .map(|ms| ms.iter().map(|m| m.name().version().to_string()).collect()),
    }
    .map_err(|e| DbError::Migrate(e.to_string()))?;
    let applied: Vec<String> = match conn {
        DbConn::Sqlite(c) => c.applied_migrations(),
        DbConn::Postgres(c) => c.applied_migrations(),
    }
    .map_err(|e| DbError::Migrate(e.to_string()))?
    .iter()
    .map(|v| v.to_string())
    .collect();
    let pending = known
        .iter()
        .filter(|k| !applied.contains(k))
        .cloned()
        .collect();
    let unknown = applied
        .iter()
        .filter(|a| !known.contains(a))
        .cloned()
        .collect();
    Ok(SchemaStatus {
        applied,
        pending,
        unknown,
    })
}

/// Refuses an unmigrated or newer-than-known schema.
pub fn check_schema(conn: &mut DbConn) -> Result<(), DbError> {
    let s = schema_status(conn)?;
    if let Some(u) = s.unknown.first() {
        return Err(DbError::TooNew(u.clone()));
    }
    if let Some(p) = s.pending.first() {
        return Err(DbError::Unmigrated {
            pending: s.pending.len(),
            first: p.clone(),
        });
    }
    Ok(())
}

/// Applies every pending migration; returns the versions applied. Refuses a newer schema.
pub fn migrate(conn: &mut DbConn) -> Result<Vec<String>, DbError> {
    let s = schema_status(conn)?;
    if let Some(u) = s.unknown.first() {
        return Err(DbError::TooNew(u.clone()));
    }
    let done = match conn {
        DbConn::Sqlite(c) => c.run_pending_migrations(SQLITE_MIGRATIONS),
        DbConn::Postgres(c) => c.run_pending_migrations(POSTGRES_MIGRATIONS),
    }
    .map_err(|e| DbError::Migrate(e.to_string()))?;
    Ok(done.iter().map(|v| v.to_string()).collect())
}

/// Reverts the most recent migration (for development and for testing reversibility).
pub fn revert_last(conn: &mut DbConn) -> Result<String, DbError> {
    let v = match conn {
        DbConn::Sqlite(c) => c.revert_last_migration(SQLITE_MIGRATIONS),
        DbConn::Postgres(c) => c.revert_last_migration(POSTGRES_MIGRATIONS),
    }
    .map_err(|e| DbError::Migrate(e.to_string()))?;
    Ok(v.to_string())
}

/// The backend of an open connection.
pub fn backend_of(conn: &DbConn) -> Backend {
    match conn {
        DbConn::Sqlite(_) => Backend::Sqlite,
        DbConn::Postgres(_) => Backend::Postgres,
    }
}

/// Rows a batch command must have changed before it refreshes the planner's statistics.
pub const BULK_CHANGE_ROWS: u64 = 5_000;

/// After a batch changed `changed` rows of `tables` (at least [`BULK_CHANGE_ROWS`]), refreshes
/// PostgreSQL's statistics of them (`ANALYZE`) instead of waiting for autovacuum. With the old
/// statistics the planner believed, say, that most cost records were still pending, and read
/// the next pending ones by walking the primary key past every charged run (81 ms at 100,000
/// runs, against 0.05 ms through the `(status, id)` index). SQLite's planner keeps no such
/// statistics here; nothing is done there. A failure is logged, never returned: the batch's
/// work is committed already.
pub fn refresh_statistics(conn: &mut DbConn, tables: &[&str], changed: u64) {
    if changed < BULK_CHANGE_ROWS {
        return;
    }
    if let DbConn::Postgres(c) = conn {
        let sql = format!("ANALYZE {}", tables.join(", "));
        if let Err(e) = c.batch_execute(&sql) {
            tracing::warn!("{sql} after {changed} changed rows failed: {e}");
        }
    }
}

/// Pages after which a SQLite connection checkpoints the WAL into the database file itself at
/// the end of a commit (`PRAGMA wal_autocheckpoint`, set by [`connect`]).
pub const WAL_AUTOCHECKPOINT_PAGES: i64 = 10_000;

/// Runs `f` in a write transaction: `BEGIN IMMEDIATE` on SQLite (the write lock is taken up
/// front, waiting up to the busy timeout), a plain `BEGIN` on PostgreSQL (callers lock the rows
/// they change). Commits on `Ok`, rolls back on `Err`.
///
/// **Batches.** Called inside another write transaction, `f` runs in a savepoint instead: every
/// ledger operation then joins the caller's transaction, and one that fails is rolled back on
/// its own without spoiling the others. Batch jobs (spool intake, reconciliation) wrap a bounded
/// number of operations this way so that they pay for one commit, not one per operation. On
/// PostgreSQL the accounts an operation locks stay locked until the batch commits: keep batches
/// small and visit accounts in a stable order so two batch jobs cannot deadlock.
pub fn write_transaction<T, E>(
    conn: &mut DbConn,
    f: impl FnOnce(&mut DbConn) -> Result<T, E>,
) -> Result<T, E>
where
    E: From<diesel::result::Error>,
{
    if in_transaction(conn)? {
        return conn.transaction(f);
    }
    match conn {
        DbConn::Sqlite(c) => AnsiTransactionManager::begin_transaction_sql(c, "BEGIN IMMEDIATE")?,
        DbConn::Postgres(c) => AnsiTransactionManager::begin_transaction(c)?,
    }
    match f(conn) {
        Ok(value) => {
            <DbConn as Connection>::TransactionManager::commit_transaction(conn)?;
            Ok(value)
        }
        Err(e) => {
            // The caller's error matters more than a failed rollback; a broken connection is
            // discarded by the caller anyway.
            let _ = <DbConn as Connection>::TransactionManager::rollback_transaction(conn);
            Err(e)
        }
    }
}

/// Like [`write_transaction`], but inside a caller's transaction it runs `f` in that
/// transaction directly, without a savepoint: for work that decides everything before it
/// writes, so that only a database error can stop it half-way, and the caller's transaction
/// then fails as a whole.
///
/// Why not a savepoint: SQLite keeps the original of every page a savepoint touches in its
/// statement journal, and every later statement that closes truncates that journal by walking
/// it from the start. A savepoint around hundreds of statements made each of them cost time
/// in proportion to everything written before it.
pub fn joined_write_transaction<T, E>(
    conn: &mut DbConn,
    f: impl FnOnce(&mut DbConn) -> Result<T, E>,
) -> Result<T, E>
where
    E: From<diesel::result::Error>,
{
    if in_transaction(conn)? {
        return f(conn);
    }
    write_transaction(conn, f)
}

/// Whether a transaction is open on the connection.
fn in_transaction(conn: &mut DbConn) -> diesel::QueryResult<bool> {
    Ok(
        <DbConn as Connection>::TransactionManager::transaction_manager_status_mut(conn)
            .transaction_depth()?
            .is_some(),
    )
}

/// Batch jobs that must not run two at a time against one ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchLock {
    /// Spool intake (`asbb spool scan`, `asbb-spoold`).
    Intake,
    /// Reconciliation and recovery.
    Reconcile,
}

/// Serialises batch transactions of one kind: on PostgreSQL with a transaction-scoped advisory
/// lock (several hosts may run the same timer); on SQLite `BEGIN IMMEDIATE` already does.
pub fn lock_batch(conn: &mut DbConn, which: BatchLock) -> Result<(), diesel::result::Error> {
    use diesel::RunQueryDsl;
    if let DbConn::Postgres(c) = conn {
        let key = match which {
            BatchLock::Intake => 0x6173_6262_0001_i64,
            BatchLock::Reconcile => 0x6173_6262_0002_i64,
        };
        diesel::sql_query(format!("SELECT pg_advisory_xact_lock({key})")).execute(c)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_choose_the_backend_by_scheme() {
        assert_eq!(
            DbUrl::parse("/var/lib/asbb/asbb.db").unwrap(),
            DbUrl::Sqlite("/var/lib/asbb/asbb.db".into())
        );
        assert_eq!(
            DbUrl::parse("sqlite:///tmp/x.db").unwrap(),
            DbUrl::Sqlite("/tmp/x.db".into())
        );
        assert_eq!(
            DbUrl::parse("sqlite://rel.db").unwrap(),
            DbUrl::Sqlite("rel.db".into())
        );
        assert_eq!(DbUrl::parse("asbb.db").unwrap().backend(), Backend::Sqlite);
        assert_eq!(
            DbUrl::parse("postgres://u@h/db").unwrap().backend(),
            Backend::Postgres
        );
        assert_eq!(
            DbUrl::parse("postgresql://u@h/db").unwrap().backend(),
            Backend::Postgres
        );
        assert!(
            matches!(DbUrl::parse("mysql://h/db"), Err(DbError::UnsupportedScheme(s)) if s == "mysql")
        );
        assert!(matches!(DbUrl::parse("  "), Err(DbError::EmptyUrl)));
    }

    #[test]
    fn passwords_are_redacted() {
        let u = DbUrl::parse("postgres://asbb:secret@db.example/asbb").unwrap();
        assert_eq!(u.redacted(), "postgres://asbb:***@db.example/asbb");
        assert!(!u.redacted().contains("secret"));
    }
}
