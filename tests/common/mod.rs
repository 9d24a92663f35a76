//! Shared test databases: a fresh, migrated SQLite file per test, and (when
//! `ASBB_TEST_POSTGRES_URL` is set) a fresh PostgreSQL database per test, dropped afterwards.
//!
//! Use it with `mod common;` in a test file; [`db_test!`] runs one body on both backends.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use asbb::db::{ConnectOptions, DbConn, DbUrl};
use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::Connection;

/// The environment variable naming the PostgreSQL server for tests.
pub const POSTGRES_ENV: &str = "ASBB_TEST_POSTGRES_URL";

/// Which backend a test database lives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file in a temporary directory.
    Sqlite,
    /// A database of its own on the test PostgreSQL server.
    Postgres,
}

/// A test database; removed when dropped.
pub struct TestDb {
    /// The database URL to hand to asbb (a file path for SQLite).
    pub url: String,
    /// The backend.
    pub backend: Backend,
    /// Keeps the SQLite file's directory alive.
    dir: Option<tempfile::TempDir>,
    /// PostgreSQL: the admin URL and the name of the database to drop.
    pg: Option<PgCleanup>,
}

struct PgCleanup {
    admin_url: String,
    db_name: String,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A name no other test (in this or another process) uses at the same time.
fn unique_suffix() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
        .unwrap_or(0);
    format!("{}_{}_{:08x}", std::process::id(), n, nanos)
}

/// Replaces the database path segment of a PostgreSQL URL, keeping any `?query`.
pub fn pg_url_with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let (scheme, rest) = base
        .split_once("://")
        .unwrap_or_else(|| panic!("{POSTGRES_ENV} is not a postgres:// URL: {url}"));
    let authority = rest.split_once('/').map_or(rest, |(a, _)| a);
    let mut out = format!("{scheme}://{authority}/{database}");
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

fn migrate_url(url: &str) {
    let parsed = DbUrl::parse(url).expect("test database url parses");
    let mut conn = asbb::db::connect(&parsed, &ConnectOptions::default(), asbb::db::Create::Allow)
        .unwrap_or_else(|e| panic!("connect to test database {url}: {e}"));
    asbb::db::migrate(&mut conn).unwrap_or_else(|e| panic!("migrate test database {url}: {e}"));
}

impl TestDb {
    /// A fresh, migrated SQLite file in a temporary directory.
    pub fn sqlite() -> TestDb {
        let db = TestDb::unmigrated_sqlite();
        migrate_url(&db.url);
        db
    }

    /// A path in a fresh temporary directory; the file is not created.
    pub fn unmigrated_sqlite() -> TestDb {
        let dir = tempfile::Builder::new()
            .prefix("asbb-test-")
            .tempdir()
            .expect("create a temporary directory");
        let path: PathBuf = dir.path().join("asbb.db");
        TestDb {
            url: path.to_str().expect("temporary path is UTF-8").to_string(),
            backend: Backend::Sqlite,
            dir: Some(dir),
            pg: None,
        }
    }

    /// A fresh, migrated PostgreSQL database, or `None` when `ASBB_TEST_POSTGRES_URL` is
    /// unset. Panics when it is unset under CI (the `CI` variable): CI must test PostgreSQL.
    pub fn postgres() -> Option<TestDb> {
        let admin_url = match std::env::var(POSTGRES_ENV) {
            Ok(u) if !u.trim().is_empty() => u.trim().to_string(),
            _ => {
                if std::env::var_os("CI").is_some() {
                    panic!(
                        "{POSTGRES_ENV} is not set but CI is: the PostgreSQL tests must run in CI \
                         (start a server with scripts/pg-test-server or use scripts/test)"
                    );
                }
                return None;
            }
        };
        let db_name = format!("asbb_test_{}", unique_suffix());
        let mut admin = PgConnection::establish(&admin_url).unwrap_or_else(|e| {
            panic!("connect to the PostgreSQL test server ({POSTGRES_ENV}={admin_url}): {e}")
        });
        admin
            .batch_execute(&format!("CREATE DATABASE \"{db_name}\""))
            .unwrap_or_else(|e| panic!("CREATE DATABASE {db_name}: {e}"));
        drop(admin);
        let url = pg_url_with_database(&admin_url, &db_name);
        // From here on Drop removes the database, even if migrating fails.
        let db = TestDb {
            url,
            backend: Backend::Postgres,
            dir: None,
            pg: Some(PgCleanup { admin_url, db_name }),
        };
        migrate_url(&db.url);
        Some(db)
    }

    /// The parsed URL.
    pub fn db_url(&self) -> DbUrl {
        DbUrl::parse(&self.url).expect("test database url parses")
    }

    /// A checked connection (`asbb::db::connect_checked` with default options).
    pub fn conn(&self) -> DbConn {
        asbb::db::connect_checked(&self.db_url(), &ConnectOptions::default())
            .unwrap_or_else(|e| panic!("connect to test database {}: {e}", self.url))
    }

    /// The SQLite file, for SQLite databases.
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        match self.backend {
            Backend::Sqlite => Some(PathBuf::from(&self.url)),
            Backend::Postgres => None,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(pg) = self.pg.take() else { return };
        let result = PgConnection::establish(&pg.admin_url)
            .map_err(|e| e.to_string())
            .and_then(|mut c| {
                c.batch_execute(&format!(
                    "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                    pg.db_name
                ))
                .map_err(|e| e.to_string())
            });
        if let Err(e) = result {
            // Never panic in Drop (it may run while unwinding); leave a trace instead.
            eprintln!("warning: could not drop test database {}: {e}", pg.db_name);
        }
    }
}

/// Runs the body once per available backend, as `#[test]` functions named `sqlite` and
/// `postgres` inside a module called `$name`. The postgres variant is skipped (with a note)
/// when `ASBB_TEST_POSTGRES_URL` is unset.
///
/// Needs `mod common;` at the root of the test crate: each integration test file is its own
/// crate, and `$crate` (the test crate itself here) names `$crate::common::TestDb`.
#[macro_export]
macro_rules! db_test {
    ($name:ident, |$db:ident| $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[test]
            fn sqlite() {
                let $db = $crate::common::TestDb::sqlite();
                $body
            }

            #[test]
            fn postgres() {
                match $crate::common::TestDb::postgres() {
                    Some($db) => $body,
                    None => eprintln!("ASBB_TEST_POSTGRES_URL not set: postgres variant skipped"),
                }
            }
        }
    };
}

#[derive(diesel::QueryableByName)]
struct SqlitePlanRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
    detail: String,
}

#[derive(diesel::QueryableByName)]
struct PgPlanRow {
    #[diesel(sql_type = diesel::sql_types::Text, column_name = "QUERY PLAN")]
    line: String,
}

/// The query plan of `sql`, one line per step (SQLite's `EXPLAIN QUERY PLAN` details,
/// PostgreSQL's `EXPLAIN` lines with sequential scans forbidden, so the index that applies
/// shows even on a tiny table).
pub fn query_plan(conn: &mut DbConn, sql: &str) -> Vec<String> {
    use diesel::RunQueryDsl;
    match conn {
        DbConn::Sqlite(c) => diesel::sql_query(format!("EXPLAIN QUERY PLAN {sql}"))
            .load::<SqlitePlanRow>(c)
            .unwrap()
            .into_iter()
            .map(|r| r.detail)
            .collect(),
        DbConn::Postgres(c) => {
            // A tiny table is cheapest to scan whole; forbid that to see which index applies.
            c.batch_execute("SET enable_seqscan = off").unwrap();
            let plan = diesel::sql_query(format!("EXPLAIN {sql}"))
                .load::<PgPlanRow>(c)
                .unwrap()
                .into_iter()
                .map(|r| r.line)
                .collect();
            c.batch_execute("SET enable_seqscan = on").unwrap();
            plan
        }
    }
}

#[derive(diesel::QueryableByName)]
struct IndexRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
    name: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    def: String,
}

/// The indexes of `table` (those declared; not the ones behind a primary key) as (name,
/// columns in order), on either backend.
pub fn index_columns(conn: &mut DbConn, table: &str) -> Vec<(String, Vec<String>)> {
    use diesel::RunQueryDsl;
    let rows: Vec<IndexRow> = match conn {
        DbConn::Sqlite(c) => diesel::sql_query(
            "SELECT name, sql AS def FROM sqlite_master \
             WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL",
        )
        .bind::<diesel::sql_types::Text, _>(table)
        .load(c)
        .unwrap(),
        DbConn::Postgres(c) => diesel::sql_query(
            "SELECT indexname AS name, indexdef AS def FROM pg_indexes \
             WHERE schemaname = current_schema() AND tablename = $1 \
             AND indexname NOT LIKE '%_pkey'",
        )
        .bind::<diesel::sql_types::Text, _>(table)
        .load(c)
        .unwrap(),
    };
    rows.into_iter()
        .map(|r| {
            let open = r.def.find('(').expect("an index lists its columns");
            let close = open + r.def[open..].find(')').expect("a closed column list");
            let cols = r.def[open + 1..close]
                .split(',')
                .map(|c| c.trim().to_string())
                .collect();
            (r.name, cols)
        })
        .collect()
}
