//! `asbb-checkd` as a real process: checks, health, metrics, reason codes for every kind of bad
//! request (never a hang), the bearer token, and a clean shutdown on SIGTERM.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Checkd {
    child: Child,
    addr: String,
}

impl Checkd {
    fn start(db_url: &str) -> Checkd {
        Checkd::start_with(db_url, "")
    }

    fn start_with(db_url: &str, config_text: &str) -> Checkd {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("asbb.toml");
        let token = dir.path().join("token");
        std::fs::write(&token, "s3cret\n").unwrap();
        std::fs::write(
            &config,
            config_text.replace("TOKEN_FILE", token.to_str().unwrap()),
        )
        .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_asbb-checkd"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--database-url",
                db_url,
                "--config",
                config.to_str().unwrap(),
            ])
            .env("ASBB_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("checkd exited before listening")
                .unwrap();
            if let Some(rest) = line.split("listening on ").nth(1) {
                break rest.split_whitespace().next().unwrap().to_string();
            }
        };
        // Keep draining stderr so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Checkd { child, addr }
    }

    fn request(&self, raw: &str) -> (u16, serde_json::Value) {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        // A hang would fail here instead of blocking the test forever.
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(raw.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let code: u16 = out.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body = out.split("\r\n\r\n").nth(1).unwrap_or("");
        (
            code,
            serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
        )
    }

    fn stop(mut self) -> Option<i32> {
        self.terminate()
    }

    fn terminate(&mut self) -> Option<i32> {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        self.child.wait().unwrap().code()
    }
}

impl Drop for Checkd {
    // A failed test must not leave its server running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn post(body: &str, extra: &str) -> String {
    format!(
        "POST /api/v1/budget/check HTTP/1.1\r\nHost: x\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

const CONFIG: &str = r#"
[check]
token_file = "TOKEN_FILE"
request_timeout = "1s"
[partitions.aws]
cpu_hour = "0.60"
"#;

/// The ledger of most tests: account `lab` with $10.
fn ledger(db: &common::TestDb) {
    account(db, "lab", "Lab");
}

/// Creates an account with $10 through the CLI.
fn account(db: &common::TestDb, account: &str, name: &str) {
    let o = Command::new(env!("CARGO_BIN_EXE_asbb"))
        .args([
            "account",
            "create",
            "--account",
            account,
            "--name",
            name,
            "--budget",
            "10",
            "--start",
            "2020-01-01",
            "--end",
            "2099-12-31",
        ])
        .env("ASBB_DATABASE_URL", &db.url)
        .env("ASBB_CONFIG", "/dev/null")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

const AUTH: &str = "Authorization: Bearer s3cret\r\n";

db_test!(the_budget_check_over_http, |db| {
    ledger(&db);
    let c = Checkd::start_with(&db.url, CONFIG);
    let job = r#"{"account":"lab","partition":"aws","nodes":1,"cpus":2,"wall_time":"1:00:00","user_id":"alice","request_id":"r-1"}"#;
    let (code, a) = c.request(&post(job, AUTH));
    assert_eq!(code, 200, "{a}");
    assert_eq!(
        (
            &a["available"],
            &a["reason"],
            &a["estimated_cost"],
            &a["hold_amount"],
            &a["budget_remaining"]
        ),
        (
            &true.into(),
            &"ok".into(),
            &"1.20".into(),
            &"1.44".into(),
            &"8.56".into()
        )
    );
    let hold = a["transaction_id"].as_str().unwrap().to_string();
    // A retry with the same request id: the first answer, no second hold.
    let (code, again) = c.request(&post(job, AUTH));
    assert_eq!(
        (code, again["transaction_id"].as_str(), &again["replayed"]),
        (200, Some(hold.as_str()), &true.into())
    );
    let (code, e) = c.request(&post(&job.replace("2,", "3,"), AUTH));
    assert_eq!(
        (code, e["reason"].as_str()),
        (409, Some("request_id_conflict"))
    );
    // Denied: 200 with available false; an unknown account: 404.
    let (code, d) = c.request(&post(
        r#"{"account":"lab","partition":"aws","cpus":64,"wall_time":"1-00:00:00"}"#,
        AUTH,
    ));
    assert_eq!(
        (code, d["available"].as_bool(), d["reason"].as_str()),
        (200, Some(false), Some("insufficient_funds"))
    );
    let (code, d) = c.request(&post(r#"{"account":"nobody","partition":"aws"}"#, AUTH));
    assert_eq!((code, d["reason"].as_str()), (404, Some("unknown_account")));
    // Bad requests, each with a reason and the field.
    for (body, field) in [
        ("{not json", "body"),
        (
            r#"{"account":"lab","partition":"aws","nodes":"two"}"#,
            "nodes",
        ),
        (
            r#"{"account":"lab","partition":"aws","wall_time":"whenever"}"#,
            "wall_time",
        ),
        (
            r#"{"account":"lab","partition":"aws","colour":"red"}"#,
            "body",
        ),
        (r#"{"partition":"aws"}"#, "account"),
    ] {
        let (code, e) = c.request(&post(body, AUTH));
        assert_eq!(
            (code, e["reason"].as_str(), e["field"].as_str()),
            (400, Some("invalid_request"), Some(field)),
            "{body}: {e}"
        );
        assert_eq!(e["available"], false);
    }
    // No token, a wrong token: 401; /health needs none.
    let (code, e) = c.request(&post(job, ""));
    assert_eq!((code, e["reason"].as_str()), (401, Some("unauthorized")));
    let (code, _) = c.request(&post(job, "Authorization: Bearer wrong\r\n"));
    assert_eq!(code, 401);
    let (code, _) = c.request("GET /health HTTP/1.0\r\n\r\n");
    assert_eq!(code, 200);
    // Too big, announced: refused unread. Chunked: refused.
    let (code, e) = c.request(&format!(
        "POST /api/v1/budget/check HTTP/1.1\r\n{AUTH}Content-Length: 99999999\r\n\r\n"
    ));
    assert_eq!((code, e["reason"].as_str()), (413, Some("body_too_large")));
    let (code, e) = c.request(&format!("POST /api/v1/budget/check HTTP/1.1\r\n{AUTH}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"));
    assert_eq!((code, e["reason"].as_str()), (411, Some("length_required")));
    // A slow client (announces 50 bytes, sends 5): 408 after the request timeout, no hang.
    let (code, e) = c.request(&format!(
        "POST /api/v1/budget/check HTTP/1.1\r\n{AUTH}Content-Length: 50\r\n\r\n{{\"ac"
    ));
    assert_eq!((code, e["reason"].as_str()), (408, Some("request_timeout")));
    // Keep-alive: two requests on one connection.
    let mut s = TcpStream::connect(&c.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let one = format!("GET /version HTTP/1.1\r\n{AUTH}\r\n");
    s.write_all(format!("{one}{one}").as_bytes()).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while String::from_utf8_lossy(&got)
        .matches("HTTP/1.1 200")
        .count()
        < 2
    {
        let n = s.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "connection closed early: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    // Metrics: checks by outcome, the latency histogram, holds outstanding.
    let mut m = TcpStream::connect(&c.addr).unwrap();
    m.write_all(format!("GET /metrics HTTP/1.0\r\n{AUTH}\r\n").as_bytes())
        .unwrap();
    let mut text = String::new();
    m.read_to_string(&mut text).unwrap();
    for want in [
        "asbb_checks_total{outcome=\"allowed\",reason=\"ok\"} 2",
        "asbb_checks_total{outcome=\"denied\",reason=\"insufficient_funds\"} 1",
        "asbb_checks_total{outcome=\"rejected\",reason=\"invalid_request\"} 5",
        "asbb_check_duration_seconds_count",
        "asbb_holds_outstanding 1",
        "asbb_holds_outstanding_usd 1.44",
    ] {
        assert!(text.contains(want), "{want} missing from\n{text}");
    }
    assert_eq!(c.stop(), Some(0));
});

db_test!(health_of_a_migrated_ledger, |db| {
    let c = Checkd::start(&db.url);
    let (code, body) = c.request("GET /health HTTP/1.0\r\n\r\n");
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["status"], "ok");
    assert_eq!(body["schema"], "current");
    let (code, body) = c.request("POST /health HTTP/1.0\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(
        (code, body["reason"].as_str()),
        (405, Some("method_not_allowed"))
    );
    let (code, body) = c.request("GET /nope HTTP/1.0\r\n\r\n");
    assert_eq!((code, body["reason"].as_str()), (404, Some("not_found")));
    let (code, body) = c.request("POST /health HTTP/1.0\r\nContent-Length: 10000000\r\n\r\n");
    assert_eq!(
        (code, body["reason"].as_str()),
        (413, Some("body_too_large"))
    );
    assert_eq!(c.stop(), Some(0), "SIGTERM is a clean exit");
});

#[test]
fn health_reports_a_database_that_is_not_ready() {
    let db = common::TestDb::unmigrated_sqlite();
    let c = Checkd::start(&db.url);
    let (code, body) = c.request("GET /health HTTP/1.0\r\n\r\n");
    assert_eq!(code, 503);
    assert_eq!(body["reason"], "schema_not_current");
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("asbb database migrate"));
    assert_eq!(c.stop(), Some(0));
}

fn metric(text: &str, name: &str) -> Option<i64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Holds in the SQLite database file itself, without its write-ahead log: what has been
/// checkpointed.
fn holds_in_database_file(path: &std::path::Path) -> i64 {
    use diesel::{Connection, QueryableByName, RunQueryDsl};
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut c =
        diesel::SqliteConnection::establish(&format!("file:{}?immutable=1", path.display()))
            .unwrap();
    diesel::sql_query("SELECT COUNT(*) AS n FROM holds")
        .get_result::<N>(&mut c)
        .unwrap()
        .n
}

// On SQLite the writer leaves checkpoints to a thread of their own, which copies what the
// writer committed back into the database file while checkd keeps running.
#[test]
fn the_checkpointer_copies_committed_checks_into_the_database_file() {
    let db = common::TestDb::sqlite();
    ledger(&db);
    let path = db.sqlite_path().unwrap();
    assert_eq!(holds_in_database_file(&path), 0);
    let c = Checkd::start_with(&db.url, CONFIG);
    for i in 0..3 {
        let job = format!(
            r#"{{"account":"lab","partition":"aws","cpus":1,"wall_time":"10","request_id":"cp-{i}"}}"#
        );
        let (code, a) = c.request(&post(&job, AUTH));
        assert_eq!((code, &a["reason"]), (200, &"ok".into()), "{a}");
    }
    // Still running, connections open: only a checkpoint puts the holds in the file. The
    // checkpointer passes every quarter of a second.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while holds_in_database_file(&path) < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(holds_in_database_file(&path), 3);
    let mut m = TcpStream::connect(&c.addr).unwrap();
    m.write_all(format!("GET /metrics HTTP/1.0\r\n{AUTH}\r\n").as_bytes())
        .unwrap();
    let mut text = String::new();
    m.read_to_string(&mut text).unwrap();
    assert!(
        metric(&text, "asbb_check_wal_checkpoints_total").unwrap_or(0) >= 1,
        "{text}"
    );
    assert_eq!(
        metric(&text, "asbb_check_wal_restarts_total"),
        Some(0),
        "{text}"
    );
    assert_eq!(c.stop(), Some(0));
}

fn metrics_text(c: &Checkd) -> String {
    let mut m = TcpStream::connect(&c.addr).unwrap();
    m.write_all(format!("GET /metrics HTTP/1.0\r\n{AUTH}\r\n").as_bytes())
        .unwrap();
    let mut text = String::new();
    m.read_to_string(&mut text).unwrap();
    text
}

// On SQLite with `synchronous = full` the writer commits without waiting for the disk and a
// thread of its own syncs the WAL before the answers go out; at `normal` nothing is synced per
// commit, so there is no such thread.
#[test]
fn checks_on_sqlite_full_are_answered_after_a_sync_of_the_wal() {
    for (sync, synced) in [("full", true), ("normal", false)] {
        let db = common::TestDb::sqlite();
        ledger(&db);
        let c = Checkd::start_with(
            &db.url,
            &format!("{CONFIG}\n[database]\nsqlite_synchronous = \"{sync}\"\n"),
        );
        for i in 0..4 {
            let job = format!(
                r#"{{"account":"lab","partition":"aws","cpus":1,"wall_time":"10","request_id":"s-{i}"}}"#
            );
            let (code, a) = c.request(&post(&job, AUTH));
            assert_eq!((code, &a["reason"]), (200, &"ok".into()), "{sync}: {a}");
        }
        let text = metrics_text(&c);
        let commits = metric(&text, "asbb_check_commits_total").unwrap();
        let syncs = metric(&text, "asbb_check_syncs_total").unwrap();
        assert_eq!(commits, 4, "{sync}: {text}");
        if synced {
            // One sync may cover several commits, never none.
            assert!((1..=commits).contains(&syncs), "{sync}: {text}");
        } else {
            assert_eq!(syncs, 0, "{sync}: {text}");
        }
        assert_eq!(c.stop(), Some(0), "{sync}");
    }
}

// A WAL that cannot be synced leaves the last commit's fate unknown: its check is answered
// 503 rather than allowed, and checkd stops with an error instead of answering more checks
// it cannot make durable. Here the file at the WAL's name is replaced by one that is not a
// WAL (SQLite goes on writing the file it has open, under its new name).
#[test]
fn a_wal_that_cannot_be_synced_stops_checkd_with_an_error() {
    let db = common::TestDb::sqlite();
    ledger(&db);
    let path = db.sqlite_path().unwrap();
    let mut c = Checkd::start_with(&db.url, CONFIG);
    let job = |i: u32| {
        format!(
            r#"{{"account":"lab","partition":"aws","cpus":1,"wall_time":"10","request_id":"w-{i}"}}"#
        )
    };
    let (code, a) = c.request(&post(&job(1), AUTH));
    assert_eq!((code, &a["reason"]), (200, &"ok".into()), "{a}");
    let mut wal = path.clone().into_os_string();
    wal.push("-wal");
    let wal = std::path::PathBuf::from(wal);
    std::fs::rename(&wal, wal.with_extension("db-wal.moved")).unwrap();
    std::fs::write(&wal, b"this is not a write-ahead log").unwrap();
    let (code, a) = c.request(&post(&job(2), AUTH));
    assert_eq!(
        (code, &a["reason"]),
        (503, &"database_unavailable".into()),
        "{a}"
    );
    assert!(
        a["message"]
            .as_str()
            .unwrap()
            .contains("is no longer the WAL the writer writes"),
        "{a}"
    );
    let status = c.child.wait().unwrap();
    assert_eq!(status.code(), Some(1), "checkd must stop with an error");
}

/// Counts rows of the ledger with a query returning `n`.
fn count(db: &common::TestDb, sql: &str) -> i64 {
    use diesel::{QueryableByName, RunQueryDsl};
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut c = db.conn();
    diesel::sql_query(sql).get_result::<N>(&mut c).unwrap().n
}

// The writer commits many checks in one transaction, without a savepoint per check. A check
// that fails after writing part of itself (here the `checks` row is refused, after the hold
// was placed) must take nothing with it: the batch is rolled back, its other checks are
// written again one by one and answered, and the failed one leaves no hold behind.
db_test!(
    a_check_that_fails_half_written_leaves_nothing_and_spares_its_batch,
    |db| {
        ledger(&db);
        account(&db, "bad", "Bad");
        {
            use diesel::connection::SimpleConnection;
            let mut c = db.conn();
            let sql = if db.url.starts_with("postgres") {
                "CREATE FUNCTION refuse_bad() RETURNS trigger AS $$ BEGIN \
               IF NEW.account = 'bad' THEN RAISE EXCEPTION 'injected failure'; END IF; \
               RETURN NEW; END $$ LANGUAGE plpgsql; \
             CREATE TRIGGER refuse_bad BEFORE INSERT ON checks \
               FOR EACH ROW EXECUTE FUNCTION refuse_bad();"
            } else {
                "CREATE TRIGGER refuse_bad BEFORE INSERT ON checks WHEN NEW.account = 'bad' \
             BEGIN SELECT RAISE(ABORT, 'injected failure'); END;"
            };
            c.batch_execute(sql).unwrap();
        }
        let config = CONFIG.replace(
            "request_timeout = \"1s\"\n",
            "request_timeout = \"1s\"\nworkers = 8\n",
        );
        assert!(config.contains("workers = 8"));
        let c = Checkd::start_with(&db.url, &config);
        // Eight clients at once, so that checks share group commits; every other one asks for the
        // account whose `checks` rows are refused.
        let addr = c.addr.clone();
        let answers: Vec<(String, u16, serde_json::Value)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
            .map(|t| {
                let addr = addr.clone();
                s.spawn(move || {
                    let account = if t % 2 == 0 { "lab" } else { "bad" };
                    (0..5)
                        .map(|i| {
                            let job = format!(
                                r#"{{"account":"{account}","partition":"aws","cpus":1,"wall_time":"10","request_id":"h-{t}-{i}"}}"#
                            );
                            let mut s = TcpStream::connect(&addr).unwrap();
                            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                            s.write_all(post(&job, AUTH).as_bytes()).unwrap();
                            let mut out = String::new();
                            s.read_to_string(&mut out).unwrap();
                            let code = out.split_whitespace().nth(1).unwrap().parse().unwrap();
                            let body = out.split("\r\n\r\n").nth(1).unwrap_or("");
                            (account.to_string(), code, serde_json::from_str(body).unwrap())
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        for (account, code, a) in &answers {
            if account == "lab" {
                assert_eq!((*code, &a["reason"]), (200, &"ok".into()), "{a}");
            } else {
                assert_eq!(*code, 503, "{a}");
                assert_eq!(a["available"], false, "{a}");
            }
        }
        let lab = "(SELECT id FROM accounts WHERE name = 'lab')";
        let bad = "(SELECT id FROM accounts WHERE name = 'bad')";
        // Each allowed check placed its hold once, with its journal entry and its `checks` row.
        for (sql, want) in [
            (
                format!("SELECT COUNT(*) AS n FROM holds WHERE account_id = {lab}"),
                20,
            ),
            (
                format!(
                    "SELECT COUNT(*) AS n FROM journal WHERE account_id = {lab} AND kind = 'hold'"
                ),
                20,
            ),
            (
                "SELECT COUNT(*) AS n FROM checks WHERE account = 'lab'".to_string(),
                20,
            ),
            // The refused ones left nothing: no hold, no entry, nothing held on the account.
            (
                format!("SELECT COUNT(*) AS n FROM holds WHERE account_id = {bad}"),
                0,
            ),
            (
                format!(
                    "SELECT COUNT(*) AS n FROM journal WHERE account_id = {bad} AND kind = 'hold'"
                ),
                0,
            ),
            (
                "SELECT held_micros AS n FROM accounts WHERE name = 'bad'".to_string(),
                0,
            ),
        ] {
            assert_eq!(count(&db, &sql), want, "{sql}");
        }
        assert_eq!(c.stop(), Some(0));
    }
);
