//! The budget status the advisor (ASBA) reads: one JSON document per account, written by
//! `asbb burn-rate compute` into `burn.status_dir` and answered live by `asbb status`. The
//! format is `spool-schemas/budget-status.v1.schema.json`; money is a decimal string.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::{json, Value};

use crate::db::burn::AccountBurn;
use crate::domain::burn::{analyse, recommend, BurnThresholds};
use crate::domain::UsdMicros;

/// The `schema_version` written.
pub const SCHEMA_VERSION: u32 = 1;

fn m(v: UsdMicros) -> Value {
    Value::String(v.to_string())
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn dec(d: Option<Decimal>) -> Value {
    d.map(|d| Value::String(d.normalize().to_string()))
        .unwrap_or(Value::Null)
}

/// What a burst of a given cost would do.
#[derive(Debug, Clone)]
pub struct Affordability {
    /// The cost asked about.
    pub cost: UsdMicros,
    /// The hold it would need (cost × hold buffer).
    pub hold: UsdMicros,
    /// Whether a hold of that size would be placed now.
    pub affordable: bool,
    /// The reason code when not.
    pub reason: Option<&'static str>,
    /// A sentence.
    pub message: String,
    /// The account's analysis with the cost committed.
    pub after: Box<AccountBurn>,
}

/// Works out whether `cost` is affordable for the analysed account, and its impact.
pub fn affordability(
    a: &AccountBurn,
    cost: UsdMicros,
    buffer: Decimal,
    overdraft: UsdMicros,
    th: &BurnThresholds,
) -> Affordability {
    let hold = cost.mul_decimal(buffer).unwrap_or(cost);
    let i = &a.inputs;
    let left = i
        .credited
        .checked_sub(i.charged)
        .and_then(|x| x.checked_sub(i.held))
        .and_then(|x| x.checked_add(overdraft))
        .unwrap_or(UsdMicros::ZERO);
    let (affordable, reason, message) = if a.context.status != "active" {
        (
            false,
            Some("account_inactive"),
            format!(
                "budget account '{}' is {}",
                a.context.name, a.context.status
            ),
        )
    } else if i.as_of < a.context.active.start {
        (
            false,
            Some("account_inactive"),
            format!("budget account '{}' has not started", a.context.name),
        )
    } else if i.as_of >= a.context.active.end {
        (
            false,
            Some("account_expired"),
            format!("budget account '{}' has ended", a.context.name),
        )
    } else if left < hold {
        (
            false,
            Some("insufficient_funds"),
            format!("${left} available; a burst of ${cost} needs a hold of ${hold}"),
        )
    } else {
        (
            true,
            None,
            format!("${left} available covers a hold of ${hold}"),
        )
    };
    let mut after_inputs = i.clone();
    after_inputs.held = i.held.checked_add(cost).unwrap_or(i.held);
    let after = AccountBurn {
        context: a.context.clone(),
        figures: analyse(&after_inputs, th),
        inputs: after_inputs,
    };
    Affordability {
        cost,
        hold,
        affordable,
        reason,
        message,
        after: Box::new(after),
    }
}

fn figures_json(a: &AccountBurn) -> Value {
    let i = &a.inputs;
    let f = &a.figures;
    let (decision, reasons) = recommend(f);
    json!({
        "limit": m(i.credited),
        "used": m(i.charged),
        "held": m(i.held),
        "available": m(f.projection.remaining),
        "utilization_percent": dec(f.utilisation_percent),
        "daily_burn": m(f.daily_rate),
        "expected_daily_burn": m(f.expected_daily_rate),
        "rate_7d": m(f.rate_7d),
        "rate_30d": m(f.rate_30d),
        "window_days": i.window.num_days(),
        "variance_percent": dec(f.variance_percent),
        "burn_status": f.status.as_str(),
        "health_score": f.health,
        "health_band": f.band.as_str(),
        "days_remaining": f.projection.days_left_in_period.floor().to_string().parse::<i64>().unwrap_or(0),
        "projected_depletion": f.projection.depletion.map(|d| d.format("%Y-%m-%d").to_string()),
        "risk_level": f.projection.risk.as_str(),
        "period": {
            "start": ts(i.period.start),
            "end": ts(i.period.end),
            "budget": m(i.period_budget),
            "spent": m(i.period_spent),
            "expected_to_date": m(f.period_expected),
            "projected_at_end": m(f.projection.period_end_spend),
            "projected_overrun": m(f.projection.period_overrun),
        },
        "horizon": {
            "start": ts(i.horizon.start),
            "end": ts(i.horizon.end),
            "budget": m(i.horizon_budget),
            "spent": m(i.horizon_spent),
            "projected_at_end": m(f.projection.horizon_end_spend),
            "projected_overrun": m(f.projection.horizon_overrun),
        },
        "recommendation": {
            "decision": decision.as_str(),
            "reasons": reasons.iter().map(|(code, message)| json!({"code": code, "message": message})).collect::<Vec<_>>(),
        },
    })
}

/// The status document of an analysed account.
pub fn status_json(
    a: &AccountBurn,
    as_of: DateTime<Utc>,
    generated_at: DateTime<Utc>,
    afford: Option<&Affordability>,
) -> Value {
    let mut v = json!({
        "schema_version": SCHEMA_VERSION,
        "account": a.context.name,
        "status": a.context.status,
        "as_of": ts(as_of),
        "generated_at": ts(generated_at),
        "grant": a.context.grant.as_ref().map(|g| json!({
            "number": g.grant.number,
            "share_percent": g.link.share.normalize().to_string(),
            "indirect_rate": g.grant.indirect_rate.normalize().to_string(),
        })),
    });
    if let (Value::Object(dst), Value::Object(src)) = (&mut v, figures_json(a)) {
        dst.extend(src);
    }
    if let Some(af) = afford {
        let after = &af.after;
        let share = if a.inputs.period_budget.micros() > 0 {
            crate::domain::burn::percent(
                Decimal::from(af.cost.micros()),
                Decimal::from(a.inputs.period_budget.micros()),
            )
        } else {
            None
        };
        let days = if a.figures.expected_daily_rate.micros() > 0 {
            Some(
                (Decimal::from(af.cost.micros())
                    / Decimal::from(a.figures.expected_daily_rate.micros()))
                .round_dp(1),
            )
        } else {
            None
        };
        let (decision, reasons) = recommend(&after.figures);
        v["affordability"] = json!({
            "cost": m(af.cost),
            "hold": m(af.hold),
            "affordable": af.affordable,
            "reason": af.reason,
            "message": af.message,
            "impact": {
                "available_after": m(after.figures.projection.remaining),
                "utilization_percent_after": dec(after.figures.utilisation_percent),
                "period_budget_percent": dec(share),
                "days_of_expected_burn": dec(days),
                "health_score_after": after.figures.health,
                "health_band_after": after.figures.band.as_str(),
                "risk_level_after": after.figures.projection.risk.as_str(),
                "projected_depletion_after": after.figures.projection.depletion.map(|d| d.format("%Y-%m-%d").to_string()),
                "decision_after": decision.as_str(),
                "reasons_after": reasons.iter().map(|(code, message)| json!({"code": code, "message": message})).collect::<Vec<_>>(),
            },
        });
    }
    v
}

/// Status files handed to the writing threads at once.
pub const FILES_PER_GROUP: usize = 256;

/// Threads writing one group of status files. Each file waits on the disk twice (its flush,
/// and the rename that frees the old file's blocks); with many in flight the file system
/// commits them together instead of one after the other.
pub const WRITER_THREADS: usize = 16;

/// Writes budget status files durably and atomically: each document goes to a temporary file in
/// the same directory, its data is flushed to disk (`fsync`), then it is renamed over
/// `<dir>/<account>.json`, and at the end the directory itself is flushed so that the renames
/// survive a power cut. A reader sees the old or the new document, never a part, and after a
/// crash a file is the old document or the new one, never empty.
///
/// Documents are serialised by the caller's thread and written in groups of
/// [`FILES_PER_GROUP`] by [`WRITER_THREADS`] threads: ten thousand accounts cost a few hundred
/// journal commits of the file system, not twenty thousand.
#[derive(Debug)]
pub struct StatusWriter {
    dir: PathBuf,
    pending: Vec<(String, Vec<u8>)>,
    written: u64,
}

impl StatusWriter {
    /// A writer into `dir` (created if missing).
    pub fn new(dir: &Path) -> std::io::Result<StatusWriter> {
        std::fs::create_dir_all(dir)?;
        Ok(StatusWriter {
            dir: dir.to_path_buf(),
            pending: Vec::with_capacity(FILES_PER_GROUP),
            written: 0,
        })
    }

    /// Writes `<account>.json` (in place once its group is written).
    pub fn write(&mut self, account: &str, v: &Value) -> std::io::Result<()> {
        let mut body = serde_json::to_vec_pretty(v)?;
        body.push(b'\n');
        self.pending.push((account.to_string(), body));
        if self.pending.len() >= FILES_PER_GROUP {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let dir = &self.dir;
        let per_thread = self.pending.len().div_ceil(WRITER_THREADS).max(1);
        std::thread::scope(|scope| {
            let workers: Vec<_> = self
                .pending
                .chunks(per_thread)
                .map(|group| {
                    scope.spawn(move || {
                        group
                            .iter()
                            .try_for_each(|(account, body)| write_one(dir, account, body))
                    })
                })
                .collect();
            workers.into_iter().try_for_each(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("a writer thread panicked")))
            })
        })?;
        self.written += self.pending.len() as u64;
        self.pending.clear();
        Ok(())
    }

    /// Writes what is left, then flushes the directory; returns the files written.
    pub fn finish(mut self) -> std::io::Result<u64> {
        self.flush()?;
        File::open(&self.dir)?.sync_all()?;
        Ok(self.written)
    }
}

/// One file: temporary name, data flushed, renamed into place.
fn write_one(dir: &Path, account: &str, body: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{account}.json.tmp"));
    let mut f = File::create(&tmp)?;
    f.write_all(body)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, dir.join(format!("{account}.json")))
}

/// Writes one status file durably (see [`StatusWriter`]).
pub fn write_atomically(dir: &Path, account: &str, v: &Value) -> std::io::Result<()> {
    let mut w = StatusWriter::new(dir)?;
    w.write(account, v)?;
    w.finish().map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_files_are_replaced_whole_in_groups() {
        let dir = tempfile::tempdir().unwrap();
        let n = FILES_PER_GROUP * 2 + 3;
        for generation in 0..2 {
            let mut w = StatusWriter::new(dir.path()).unwrap();
            for i in 0..n {
                w.write(
                    &format!("acct-{i}"),
                    &json!({"generation": generation, "i": i}),
                )
                .unwrap();
            }
            assert_eq!(w.finish().unwrap(), n as u64);
            let names: Vec<String> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            assert_eq!(names.len(), n, "no temporary files are left: {names:?}");
            let v: Value = serde_json::from_str(
                &std::fs::read_to_string(dir.path().join(format!("acct-{}.json", n - 1))).unwrap(),
            )
            .unwrap();
            assert_eq!(v, json!({"generation": generation, "i": n - 1}));
        }
        // One file by itself; a directory that cannot be written is an error, not a panic.
        write_atomically(dir.path(), "solo", &json!({"x": 1})).unwrap();
        assert!(dir.path().join("solo.json").is_file());
        let file = dir.path().join("solo.json");
        assert!(StatusWriter::new(&file.join("sub")).is_err());
    }
}
