//! The notification hook: each new alert is handed to a configured command (run without a
//! shell, the alert as JSON on stdin and in `ASBB_ALERT_*` variables) and/or written as
//! `alert-<id>.json` into a spool directory, so sites can mail or chat it. An alert is marked
//! delivered only after every configured target took it; a failed or timed-out delivery is
//! retried on the next run, up to `alerts.notify_max_attempts` times.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::config::Config;
use crate::db::alerts::{self, AlertRow};
use crate::db::ledger::LedgerError;
use crate::db::DbConn;
use crate::domain::time::from_naive;

/// An alert as the hook and the spool receive it.
pub fn alert_json(a: &AlertRow) -> Value {
    let t =
        |n: chrono::NaiveDateTime| from_naive(n).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    json!({
        "id": a.id,
        "kind": a.kind,
        "severity": a.severity,
        "subject_kind": a.subject_kind,
        "subject": a.subject,
        "message": a.message,
        "value": a.value,
        "threshold": a.threshold,
        "raised_at": t(a.raised_at),
        "state": a.state(),
    })
}

fn run_hook(argv: &[&str], a: &AlertRow, body: &str, timeout: Duration) -> Result<(), String> {
    let mut child = Command::new(argv[0])
        .args(&argv[1..])
        .env("ASBB_ALERT_ID", a.id.to_string())
        .env("ASBB_ALERT_KIND", &a.kind)
        .env("ASBB_ALERT_SEVERITY", &a.severity)
        .env("ASBB_ALERT_SUBJECT", &a.subject)
        .env("ASBB_ALERT_MESSAGE", &a.message)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("failed to start {}: {e}", argv[0]))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its input is fine.
        let _ = stdin.write_all(body.as_bytes());
    }
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                return Err(format!("{} exited with {status}: {}", argv[0], err.trim()));
            }
            Ok(None) if started.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{} did not finish within {:?}", argv[0], timeout));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("failed to wait for {}: {e}", argv[0])),
        }
    }
}

fn write_spool(dir: &Path, a: &AlertRow, body: &str) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("failed to create {}: {e}", dir.display()))?;
    let tmp = dir.join(format!(".alert-{}.json.tmp", a.id));
    // Data on disk before the rename, the rename on disk before the alert counts as delivered:
    // a power cut leaves the old state or the whole file, never an empty one.
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(body.as_bytes())?;
        f.sync_all()
    };
    write().map_err(|e| format!("failed to write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join(format!("alert-{}.json", a.id)))
        .and_then(|()| std::fs::File::open(dir)?.sync_all())
        .map_err(|e| format!("failed to rename into {}: {e}", dir.display()))
}

/// Delivers every undelivered alert; returns how many were delivered and the errors.
pub fn deliver(
    conn: &mut DbConn,
    cfg: &Config,
    now: DateTime<Utc>,
) -> Result<(u64, Vec<String>), LedgerError> {
    let command = cfg.alerts.notify_command.trim();
    let spool = cfg.alerts.notify_spool_dir.trim();
    if command.is_empty() && spool.is_empty() {
        return Ok((0, Vec::new()));
    }
    let argv: Vec<&str> = command.split_whitespace().collect();
    let timeout = cfg.notify_timeout();
    let mut ok = 0;
    let mut failures = Vec::new();
    for a in alerts::undelivered(conn, cfg.alerts.notify_max_attempts as i64)? {
        let body = serde_json::to_string(&alert_json(&a)).expect("json serialises") + "\n";
        let mut result = Ok(());
        if !spool.is_empty() {
            result = write_spool(Path::new(spool), &a, &body);
        }
        if result.is_ok() && !argv.is_empty() {
            result = run_hook(&argv, &a, &body, timeout);
        }
        match result {
            Ok(()) => {
                alerts::record_delivery(conn, a.id, now, None)?;
                ok += 1;
            }
            Err(e) => {
                tracing::warn!(alert = a.id, "alert notification failed: {e}");
                alerts::record_delivery(conn, a.id, now, Some(&e))?;
                failures.push(format!("alert {}: {e}", a.id));
            }
        }
    }
    Ok((ok, failures))
}
