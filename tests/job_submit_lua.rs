//! `slurm/job_submit.lua` outside slurmctld: `lua5.1` runs it (through `tests/lua/harness.lua`,
//! a stand-in for slurmctld's `slurm` table) against a stand-in asbb-checkd whose every answer
//! the test chooses: kept-open connections, a connection closed while idle or just as a check
//! goes out, no answer, half an answer, a refusal. The end-to-end test in `slurm/e2e/run`
//! runs the script inside a real slurmctld against the real asbb-checkd.
//!
//! Needs `lua5.1` with luasocket (Debian: lua5.1, lua-socket; `scripts/test` installs them
//! when it runs as root). Without them each test says so and passes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn have_lua() -> bool {
    let ok = Command::new("lua5.1")
        .args(["-e", "require('socket')"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("skipped: lua5.1 with luasocket is not installed (Debian: lua5.1 lua-socket)");
    }
    ok
}

/// What the stand-in asbb-checkd does with the request it just read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Act {
    /// Answers (allowed, a hold) and keeps the connection open.
    Answer,
    /// Answers and then closes the connection, as asbb-checkd does with one idle too long.
    AnswerThenClose,
    /// Closes the connection without answering (asbb-checkd restarted as the check came in).
    CloseUnanswered,
    /// Never answers.
    Silent,
    /// Sends the headers and half the body, then nothing.
    Truncated,
    /// Answers that the budget cannot cover the job.
    Refuse,
}

/// A request the stand-in read: on which connection (1, 2, …) and its request id.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    conn: usize,
    request_id: String,
}

struct Checkd {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Checkd {
    /// Acts on the Nth request (from 1) as `plan(N)` says.
    fn start(plan: fn(usize) -> Act) -> Checkd {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = Arc::clone(&seen);
        std::thread::spawn(move || {
            let requests = Arc::new(AtomicUsize::new(0));
            for (i, stream) in listener.incoming().enumerate() {
                let Ok(stream) = stream else { return };
                let (s, requests) = (Arc::clone(&s), Arc::clone(&requests));
                std::thread::spawn(move || serve(stream, i + 1, &requests, &s, plan));
            }
        });
        Checkd { addr, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve(
    stream: TcpStream,
    conn: usize,
    requests: &AtomicUsize,
    seen: &Mutex<Vec<Seen>>,
    plan: fn(usize) -> Act,
) {
    let mut r = BufReader::new(stream.try_clone().unwrap());
    let mut w = stream;
    loop {
        let mut length = 0usize;
        let mut line = String::new();
        // The request line and headers; the end of the stream ends the connection.
        loop {
            line.clear();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap();
                }
            }
        }
        let mut body = vec![0u8; length];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let v: serde_json::Value = serde_json::from_slice(&body).expect("the check is JSON");
        let n = requests.fetch_add(1, Ordering::SeqCst) + 1;
        seen.lock().unwrap().push(Seen {
            conn,
            request_id: v["request_id"].as_str().unwrap_or_default().to_string(),
        });
        let answer = |available: bool| {
            let b = if available {
                format!(
                    r#"{{"available":true,"transaction_id":"hold-{n}","estimated_cost":"0.10","hold_amount":"0.12","budget_remaining":"9.88","message":"held","reason":"held"}}"#
                )
            } else {
                r#"{"available":false,"transaction_id":null,"estimated_cost":"28.80","hold_amount":"34.56","budget_remaining":"1.00","message":"budget account 'proj' has $1.00 available; this job needs a hold of $34.56","reason":"insufficient_funds"}"#.to_string()
            };
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
                b.len()
            )
        };
        match plan(n) {
            Act::Answer => {
                if w.write_all(answer(true).as_bytes()).is_err() {
                    return;
                }
            }
            Act::AnswerThenClose => {
                let _ = w.write_all(answer(true).as_bytes());
                return;
            }
            Act::CloseUnanswered => return,
            Act::Silent => {
                std::thread::sleep(Duration::from_secs(5));
                return;
            }
            Act::Truncated => {
                let a = answer(true);
                let _ = w.write_all(&a.as_bytes()[..a.len() - 40]);
                std::thread::sleep(Duration::from_secs(5));
                return;
            }
            Act::Refuse => {
                if w.write_all(answer(false).as_bytes()).is_err() {
                    return;
                }
            }
        }
    }
}

/// One submission as the harness printed it.
#[derive(Debug)]
struct Submitted {
    accepted: bool,
    comment: String,
    ms: u64,
    user: String,
}

/// Runs the harness with `commands` against `checkd`; `timeout` and `fail_policy` as in
/// asbb_submit.conf. Returns the submissions and what the script logged.
fn run(checkd: &Checkd, fail_policy: &str, commands: &str) -> (Vec<Submitted>, String) {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("asbb_submit.conf");
    std::fs::write(
        &conf,
        format!(
            "method = http\nurl = http://{}/api/v1/budget/check\ntimeout = 1\nfail_policy = {fail_policy}\ncluster = c1\n",
            checkd.addr
        ),
    )
    .unwrap();
    let mut child = Command::new("lua5.1")
        .arg(root().join("tests/lua/harness.lua"))
        .arg(root().join("slurm/job_submit.lua"))
        .arg(&conf)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(commands.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "the harness failed: {log}");
    let subs = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let field = |k: &str| {
                let at = l
                    .find(&format!("{k}="))
                    .unwrap_or_else(|| panic!("{k} in {l}"))
                    + k.len()
                    + 1;
                let rest = &l[at..];
                if k == "user" {
                    rest.to_string()
                } else {
                    rest.split(' ').next().unwrap().to_string()
                }
            };
            Submitted {
                accepted: field("rc") == "0",
                comment: field("comment"),
                ms: field("ms").parse().unwrap(),
                user: field("user"),
            }
        })
        .collect();
    (subs, log)
}

#[test]
fn checks_share_one_kept_connection_and_each_attaches_its_hold() {
    if !have_lua() {
        return;
    }
    let checkd = Checkd::start(|_| Act::Answer);
    let (subs, log) = run(&checkd, "closed", "submit\nsubmit\nsubmit\n");
    let comments: Vec<&str> = subs.iter().map(|s| s.comment.as_str()).collect();
    assert_eq!(
        comments,
        ["asbb:hold-1", "asbb:hold-2", "asbb:hold-3"],
        "{log}"
    );
    assert!(subs.iter().all(|s| s.accepted));
    let seen = checkd.seen();
    assert!(seen.iter().all(|s| s.conn == 1), "one connection: {seen:?}");
    let mut ids: Vec<&str> = seen.iter().map(|s| s.request_id.as_str()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 3, "a request id per submission: {seen:?}");
    assert!(ids.iter().all(|i| i.starts_with("c1:submit:")), "{ids:?}");
    assert!(log.contains("hold-1 of $0.12 held"), "{log}");
}

#[test]
fn after_the_server_closed_a_kept_connection_the_next_check_goes_out_once_on_a_new_one() {
    if !have_lua() {
        return;
    }
    // The first answer is followed by the server closing the connection, as asbb-checkd does
    // after 2 s idle: the next check goes out on a new connection, and only once (the script
    // sees the closed connection before it sends, or resends when the send fails; from here
    // the two look alike).
    let checkd = Checkd::start(|n| {
        if n == 1 {
            Act::AnswerThenClose
        } else {
            Act::Answer
        }
    });
    let (subs, log) = run(&checkd, "closed", "submit\nsleep 0.2\nsubmit\n");
    assert!(subs.iter().all(|s| s.accepted), "{subs:?} {log}");
    assert_eq!(subs[1].comment, "asbb:hold-2");
    let seen = checkd.seen();
    assert_eq!(seen.len(), 2, "each check sent once: {seen:?}");
    assert_eq!((seen[0].conn, seen[1].conn), (1, 2), "{seen:?}");
}

#[test]
fn a_check_lost_on_a_kept_connection_is_sent_once_more_with_the_same_request_id() {
    if !have_lua() {
        return;
    }
    // The second check reaches the server, which closes the connection without answering:
    // the script sends it again on a new connection, with the same request id (asbb-checkd
    // would answer a check it had already taken with its first answer, and hold nothing twice).
    let checkd = Checkd::start(|n| {
        if n == 2 {
            Act::CloseUnanswered
        } else {
            Act::Answer
        }
    });
    let (subs, log) = run(&checkd, "closed", "submit\nsubmit\nsubmit\n");
    assert!(subs.iter().all(|s| s.accepted), "{subs:?} {log}");
    let seen = checkd.seen();
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert_eq!(
        seen[1].request_id, seen[2].request_id,
        "resent as it was: {seen:?}"
    );
    assert_eq!((seen[1].conn, seen[2].conn), (1, 2), "{seen:?}");
    assert_ne!(seen[2].request_id, seen[3].request_id);
    assert_eq!(seen[3].conn, 2, "the new connection is kept: {seen:?}");
    assert_eq!(subs[1].comment, "asbb:hold-3");
}

#[test]
fn no_answer_within_the_timeout_applies_the_fail_policy_and_is_not_retried() {
    if !have_lua() {
        return;
    }
    let checkd = Checkd::start(|_| Act::Silent);
    let (subs, log) = run(&checkd, "open", "submit\n");
    let s = &subs[0];
    assert!(s.accepted, "fail_policy=open accepts: {s:?}");
    assert_eq!(s.comment, "asbb:unchecked");
    assert!(
        (900..2500).contains(&s.ms),
        "gave up after the 1 s timeout: {s:?}"
    );
    assert!(
        log.contains("no answer within 1 s (timeout)") && log.contains("fail_policy=open"),
        "{log}"
    );
    assert_eq!(checkd.seen().len(), 1, "a timeout is not retried");

    let checkd = Checkd::start(|_| Act::Silent);
    let t = Instant::now();
    let (subs, log) = run(&checkd, "closed", "submit\n");
    assert!(t.elapsed() < Duration::from_secs(4));
    let s = &subs[0];
    assert!(!s.accepted, "fail_policy=closed refuses: {s:?}");
    assert!(
        s.user
            .contains("the budget check is unavailable (no answer within 1 s (timeout))"),
        "{s:?} {log}"
    );
}

#[test]
fn half_an_answer_is_a_failure_not_a_hang() {
    if !have_lua() {
        return;
    }
    let checkd = Checkd::start(|_| Act::Truncated);
    let (subs, _) = run(&checkd, "closed", "submit\n");
    let s = &subs[0];
    assert!(!s.accepted, "{s:?}");
    assert!(s.user.contains("the answer broke off"), "{s:?}");
    assert!(s.ms < 2500, "{s:?}");
}

#[test]
fn a_refusal_is_shown_to_the_user_with_its_reason() {
    if !have_lua() {
        return;
    }
    let checkd = Checkd::start(|_| Act::Refuse);
    // A refusal is the budget's answer, not a failure: fail_policy=open does not accept it.
    let (subs, log) = run(&checkd, "open", "submit\n");
    let s = &subs[0];
    assert!(!s.accepted, "{s:?}");
    assert_eq!(s.comment, "nil", "no AdminComment: {s:?}");
    assert_eq!(
        s.user,
        "asbb: job refused: budget account 'proj' has $1.00 available; this job needs a hold of $34.56 (insufficient_funds)"
    );
    assert!(log.contains("refused"), "{log}");
}
