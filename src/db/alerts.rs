//! Alerts, persisted and deduplicated.
//!
//! Every condition has a `dedup_key` (e.g. `variance:account:ml-proj-001:warning`). While the
//! condition holds there is exactly one open alert for the key (a partial unique index
//! enforces it): evaluations update its `last_seen_at` and value, they do not raise it again.
//! When an evaluation finds the condition gone the alert is resolved; if it comes back later a
//! new alert is raised. A change of severity is a new key, so an escalation raises a new alert
//! and resolves the old one. Acknowledging marks an alert as seen; it stays open while its
//! condition holds.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use diesel::prelude::*;

use super::ledger::LedgerError;
use super::schema::{accounts, alerts, grants};
use super::{write_transaction, DbConn};
use crate::domain::time::{from_naive, to_naive};
use crate::domain::UsdMicros;

/// Alert severities, lowest first.
pub const SEVERITIES: [&str; 3] = ["info", "warning", "critical"];

/// An alert to raise (or keep open).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAlert {
    /// Deduplication key.
    pub dedup_key: String,
    /// What kind of condition: `spend_over_expected`, `health_low`, `utilisation`,
    /// `period_utilisation`, `projected_depletion`, `grant_ending`, `period_ending`,
    /// `allocations_finished`.
    pub kind: &'static str,
    /// `info`, `warning` or `critical`.
    pub severity: &'static str,
    /// `account`, `grant` or `schedule`.
    pub subject_kind: &'static str,
    /// Account name, grant number or schedule id.
    pub subject: String,
    /// The account concerned.
    pub account_id: Option<i64>,
    /// The grant concerned (for a linked account, its grant).
    pub grant_id: Option<i64>,
    /// A sentence for people.
    pub message: String,
    /// The measured value.
    pub value: String,
    /// The threshold it crossed.
    pub threshold: String,
}

/// A stored alert.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = alerts)]
pub struct AlertRow {
    /// Id (`alerts acknowledge ID`).
    pub id: i64,
    /// Deduplication key.
    pub dedup_key: String,
    /// Kind.
    pub kind: String,
    /// Severity.
    pub severity: String,
    /// Subject kind.
    pub subject_kind: String,
    /// Subject.
    pub subject: String,
    /// Account.
    pub account_id: Option<i64>,
    /// Grant.
    pub grant_id: Option<i64>,
    /// Message.
    pub message: String,
    /// Value.
    pub value: String,
    /// Threshold.
    pub threshold: String,
    /// When first raised (effective time).
    pub raised_at: chrono::NaiveDateTime,
    /// Last evaluation that found it.
    pub last_seen_at: chrono::NaiveDateTime,
    /// When its condition cleared.
    pub resolved_at: Option<chrono::NaiveDateTime>,
    /// When acknowledged.
    pub acknowledged_at: Option<chrono::NaiveDateTime>,
    /// By whom.
    pub acknowledged_by: Option<String>,
    /// Their notes.
    pub ack_notes: String,
    /// When the notification hook delivered it.
    pub notified_at: Option<chrono::NaiveDateTime>,
    /// Delivery attempts.
    pub notify_attempts: i64,
    /// Last delivery error.
    pub notify_error: String,
    /// When recorded (wall clock).
    pub recorded_at: chrono::NaiveDateTime,
}

impl AlertRow {
    /// Raised, as UTC.
    pub fn raised(&self) -> DateTime<Utc> {
        from_naive(self.raised_at)
    }

    /// Open = not resolved.
    pub fn is_open(&self) -> bool {
        self.resolved_at.is_none()
    }

    /// `open`, `acknowledged` or `resolved`.
    pub fn state(&self) -> &'static str {
        match (self.resolved_at, self.acknowledged_at) {
            (Some(_), _) => "resolved",
            (None, Some(_)) => "acknowledged",
            (None, None) => "open",
        }
    }
}

/// What a synchronisation did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Newly raised alert ids.
    pub raised: Vec<i64>,
    /// Alerts kept open (condition still holds).
    pub kept: usize,
    /// Alerts resolved.
    pub resolved: usize,
}

fn insert(
    conn: &mut DbConn,
    a: &NewAlert,
    at: DateTime<Utc>,
    recorded: DateTime<Utc>,
) -> Result<i64, LedgerError> {
    Ok(diesel::insert_into(alerts::table)
        .values((
            alerts::dedup_key.eq(&a.dedup_key),
            alerts::kind.eq(a.kind),
            alerts::severity.eq(a.severity),
            alerts::subject_kind.eq(a.subject_kind),
            alerts::subject.eq(&a.subject),
            alerts::account_id.eq(a.account_id),
            alerts::grant_id.eq(a.grant_id),
            alerts::message.eq(&a.message),
            alerts::value.eq(&a.value),
            alerts::threshold.eq(&a.threshold),
            alerts::raised_at.eq(to_naive(at)),
            alerts::last_seen_at.eq(to_naive(at)),
            alerts::recorded_at.eq(to_naive(recorded)),
        ))
        .returning(alerts::id)
        .get_result(conn)?)
}

/// Brings the open alerts of the evaluated `kinds` in line with `current` (the conditions that
/// hold as of `at`): new keys are raised, known ones kept, the others resolved. `subjects`
/// limits resolving to the subjects evaluated (`(subject_kind, subject)`); `None` means all.
pub fn sync(
    conn: &mut DbConn,
    kinds: &[&str],
    subjects: Option<&HashSet<(String, String)>>,
    current: &[NewAlert],
    at: DateTime<Utc>,
    recorded: DateTime<Utc>,
) -> Result<SyncReport, LedgerError> {
    write_transaction(conn, |conn| {
        let open: Vec<(i64, String, String, String, String, String)> = alerts::table
            .filter(alerts::resolved_at.is_null())
            .filter(alerts::kind.eq_any(kinds))
            .select((
                alerts::id,
                alerts::dedup_key,
                alerts::subject_kind,
                alerts::subject,
                alerts::value,
                alerts::threshold,
            ))
            .load(conn)?;
        let by_key: HashMap<&str, (i64, &str, &str)> = open
            .iter()
            .map(|(id, k, _, _, v, th)| (k.as_str(), (*id, v.as_str(), th.as_str())))
            .collect();
        let wanted: HashSet<&str> = current.iter().map(|a| a.dedup_key.as_str()).collect();
        let mut report = SyncReport::default();
        // Alerts whose value is unchanged only get seen again: one statement for all of them.
        let mut seen_again: Vec<i64> = Vec::new();
        for a in current {
            match by_key.get(a.dedup_key.as_str()) {
                Some((id, value, threshold)) => {
                    report.kept += 1;
                    if *value != a.value || *threshold != a.threshold {
                        diesel::update(alerts::table.find(*id))
                            .set((
                                alerts::last_seen_at.eq(to_naive(at)),
                                alerts::value.eq(&a.value),
                                alerts::threshold.eq(&a.threshold),
                                alerts::message.eq(&a.message),
                            ))
                            .execute(conn)?;
                    } else {
                        seen_again.push(*id);
                    }
                }
                None => report.raised.push(insert(conn, a, at, recorded)?),
            }
        }
        for chunk in seen_again.chunks(500) {
            diesel::update(alerts::table.filter(alerts::id.eq_any(chunk)))
                .set(alerts::last_seen_at.eq(to_naive(at)))
                .execute(conn)?;
        }
        let stale: Vec<i64> = open
            .iter()
            .filter(|(_, k, sk, s, _, _)| {
                !wanted.contains(k.as_str())
                    && subjects.is_none_or(|set| set.contains(&(sk.clone(), s.clone())))
            })
            .map(|(id, ..)| *id)
            .collect();
        for chunk in stale.chunks(500) {
            report.resolved += diesel::update(alerts::table.filter(alerts::id.eq_any(chunk)))
                .set(alerts::resolved_at.eq(Some(to_naive(at))))
                .execute(conn)?;
        }
        Ok(report)
    })
}

/// Raises the info alert that a schedule has credited everything it will (once).
pub(crate) fn raise_schedule_finished(
    conn: &mut DbConn,
    schedule_id: i64,
    account_id: i64,
    account: &str,
    credited: UsdMicros,
    at: DateTime<Utc>,
    recorded: DateTime<Utc>,
) -> Result<Option<i64>, LedgerError> {
    let key = format!("allocations_finished:schedule:{schedule_id}");
    let exists: i64 = alerts::table
        .filter(alerts::dedup_key.eq(&key))
        .count()
        .get_result(conn)?;
    if exists > 0 {
        return Ok(None);
    }
    let grant_id = super::grants::grant_of_account(conn, account_id)?;
    let a = NewAlert {
        dedup_key: key,
        kind: "allocations_finished",
        severity: "info",
        subject_kind: "schedule",
        subject: schedule_id.to_string(),
        account_id: Some(account_id),
        grant_id,
        message: format!(
            "allocation schedule {schedule_id} of '{account}' has finished: ${credited} credited, no more allocations will come"
        ),
        value: credited.to_string(),
        threshold: String::new(),
    };
    Ok(Some(insert(conn, &a, at, recorded)?))
}

/// Filters for listing alerts.
#[derive(Debug, Clone, Default)]
pub struct AlertFilter {
    /// Only alerts of this grant (its own and its linked accounts').
    pub grant: Option<String>,
    /// Only alerts of this account.
    pub account: Option<String>,
    /// Only this severity.
    pub severity: Option<String>,
    /// Include resolved alerts.
    pub all: bool,
    /// At most this many, newest first.
    pub limit: Option<i64>,
}

/// Alerts, newest first.
pub fn list(conn: &mut DbConn, f: &AlertFilter) -> Result<Vec<AlertRow>, LedgerError> {
    let mut q = alerts::table
        .select(AlertRow::as_select())
        .order(alerts::id.desc())
        .into_boxed();
    if let Some(g) = &f.grant {
        let id: i64 = grants::table
            .filter(grants::number.eq(g))
            .select(grants::id)
            .get_result(conn)
            .optional()?
            .ok_or_else(|| {
                LedgerError::invalid("--grant", format!("no grant '{g}' (see `asbb grant list`)"))
            })?;
        q = q.filter(alerts::grant_id.eq(id));
    }
    if let Some(a) = &f.account {
        let id: i64 = accounts::table
            .filter(accounts::name.eq(a))
            .select(accounts::id)
            .get_result(conn)
            .optional()?
            .ok_or_else(|| LedgerError::UnknownAccount(a.clone()))?;
        q = q.filter(alerts::account_id.eq(id));
    }
    if let Some(s) = &f.severity {
        let s = s.to_ascii_lowercase();
        if !SEVERITIES.contains(&s.as_str()) {
            return Err(LedgerError::invalid(
                "--severity",
                format!("'{s}' is not a severity (info, warning, critical)"),
            ));
        }
        q = q.filter(alerts::severity.eq(s));
    }
    if !f.all {
        q = q.filter(alerts::resolved_at.is_null());
    }
    if let Some(n) = f.limit {
        q = q.limit(n);
    }
    Ok(q.load(conn)?)
}

/// One alert.
pub fn get(conn: &mut DbConn, id: i64) -> Result<AlertRow, LedgerError> {
    alerts::table
        .find(id)
        .select(AlertRow::as_select())
        .get_result(conn)
        .optional()?
        .ok_or_else(|| {
            LedgerError::invalid("ID", format!("no alert {id} (see `asbb alerts list`)"))
        })
}

/// Acknowledges an alert. Acknowledging again replaces the notes.
pub fn acknowledge(
    conn: &mut DbConn,
    id: i64,
    user: &str,
    notes: &str,
    at: DateTime<Utc>,
) -> Result<AlertRow, LedgerError> {
    if user.trim().is_empty() {
        return Err(LedgerError::invalid(
            "--user",
            "say who acknowledges the alert",
        ));
    }
    if notes.len() > super::ledger::TEXT_LEN_MAX {
        return Err(LedgerError::invalid("--notes", "longer than 1000 bytes"));
    }
    write_transaction(conn, |conn| {
        get(conn, id)?;
        diesel::update(alerts::table.find(id))
            .set((
                alerts::acknowledged_at.eq(Some(to_naive(at))),
                alerts::acknowledged_by.eq(Some(user.trim())),
                alerts::ack_notes.eq(notes),
            ))
            .execute(conn)?;
        get(conn, id)
    })
}

/// Alerts the notification hook has not delivered yet, oldest first, fewer than
/// `max_attempts` tries so far.
pub fn undelivered(conn: &mut DbConn, max_attempts: i64) -> Result<Vec<AlertRow>, LedgerError> {
    Ok(alerts::table
        .filter(alerts::notified_at.is_null())
        .filter(alerts::notify_attempts.lt(max_attempts))
        .order(alerts::id)
        .select(AlertRow::as_select())
        .load(conn)?)
}

/// Records a delivery attempt.
pub fn record_delivery(
    conn: &mut DbConn,
    id: i64,
    at: DateTime<Utc>,
    error: Option<&str>,
) -> Result<(), LedgerError> {
    diesel::update(alerts::table.find(id))
        .set((
            alerts::notified_at.eq(error.is_none().then(|| to_naive(at))),
            alerts::notify_attempts.eq(alerts::notify_attempts + 1),
            alerts::notify_error.eq(error.unwrap_or("")),
        ))
        .execute(conn)?;
    Ok(())
}
