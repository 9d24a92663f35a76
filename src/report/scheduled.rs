//! `asbb report --scheduled`, the timer job: the daily and month-end report sets.
//!
//! - **Daily** (`reports.daily`): for each complete UTC day, `DIR/daily/YYYY-MM-DD/`, with the
//!   reports of that day (entries effective in it) as the ledger stood at its end.
//! - **Month-end** (`reports.monthly`): for each complete month, `DIR/monthly/YYYY-MM/`; grant
//!   statements (every grant running in the month, all its periods as of the month's end) and
//!   account statements (every account, the month) come one file per grant or account.
//!
//! **Safe to run twice, safe to kill.** A set is built in a hidden temporary directory
//! (`.NAME.tmp-PID`) beside its final place and renamed into place once every file and its
//! `manifest.json` are written and synced. A set that exists is never rewritten, so a second
//! run (or two at once) writes nothing new; a killed run leaves only its temporary directory,
//! which the next run removes and builds again. Missed days and months within
//! `reports.catch_up` are written by the next run, each as of its own end.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde::Serialize;

use super::{
    ensure_dir, io_err, month_start, next_month, write_readme, Format, Kind, Manifest, Options,
    ReportError, Request, Session, Written,
};
use crate::db::report as data;
use crate::db::DbConn;

/// What the timer job writes.
#[derive(Debug, Clone)]
pub struct Plan {
    /// `reports.dir`.
    pub dir: PathBuf,
    /// The daily set.
    pub daily: Vec<Kind>,
    /// The month-end set.
    pub monthly: Vec<Kind>,
    /// Formats.
    pub formats: Vec<Format>,
    /// How far back missed sets are written.
    pub catch_up: Duration,
}

/// One set, written now or found in place.
#[derive(Debug, Clone, Serialize)]
pub struct SetOutcome {
    /// `daily` or `monthly`.
    pub set: &'static str,
    /// The day or month.
    pub label: String,
    /// Its directory.
    pub path: PathBuf,
    /// `written` or `present`.
    pub status: &'static str,
    /// Files in it (the manifest excluded), when written now.
    pub files: usize,
}

fn day_start(d: NaiveDate) -> DateTime<Utc> {
    crate::db::burn::day_start(d)
}

/// Writes every set that is due and missing, as of `now`.
pub fn run(
    conn: &mut DbConn,
    templates: &super::Templates,
    opts: Options,
    plan: &Plan,
    now: DateTime<Utc>,
    progress: &mut dyn FnMut(u64),
) -> Result<Vec<SetOutcome>, ReportError> {
    ensure_dir(&plan.dir)?;
    let first = data::ledger_mark(conn, None)?;
    let first_day = {
        use diesel::prelude::*;
        let t: Option<chrono::NaiveDateTime> = crate::db::schema::journal::table
            .select(diesel::dsl::min(crate::db::schema::journal::effective_at))
            .get_result(conn)?;
        t.map(|t| crate::domain::time::from_naive(t).date_naive())
    };
    let mut out = Vec::new();
    let Some(first_day) = first_day.filter(|_| first.entries > 0) else {
        return Ok(out);
    };
    let earliest = (now - plan.catch_up).date_naive().max(first_day);
    let mut session = Session::new(conn, templates, opts)?;
    if !plan.daily.is_empty() {
        let mut d = earliest;
        while day_start(d + Duration::days(1)) <= now {
            let (a, b) = (day_start(d), day_start(d + Duration::days(1)));
            out.push(write_set(
                &mut session,
                plan,
                &plan.daily,
                "daily",
                &d.format("%Y-%m-%d").to_string(),
                a,
                b,
                now,
                progress,
            )?);
            d += Duration::days(1);
        }
    }
    if !plan.monthly.is_empty() {
        let mut m = month_start(
            chrono::Datelike::year(&earliest),
            chrono::Datelike::month(&earliest),
        );
        while next_month(m) <= now {
            let end = next_month(m);
            if end > now - plan.catch_up {
                out.push(write_set(
                    &mut session,
                    plan,
                    &plan.monthly,
                    "monthly",
                    &m.format("%Y-%m").to_string(),
                    m,
                    end,
                    now,
                    progress,
                )?);
            }
            m = end;
        }
    }
    Ok(out)
}

/// Removes what killed runs left of one set (hidden `.LABEL.tmp-*` directories).
fn remove_leftovers(parent: &Path, label: &str) -> Result<(), ReportError> {
    let prefix = format!(".{label}.tmp-");
    for e in std::fs::read_dir(parent).map_err(io_err(parent))? {
        let e = e.map_err(io_err(parent))?;
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            let p = e.path();
            // Another run may be writing this one right now; that run then fails its rename
            // and reports the set present, never a half set.
            std::fs::remove_dir_all(&p).map_err(io_err(&p))?;
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn write_set(
    s: &mut Session<'_>,
    plan: &Plan,
    kinds: &[Kind],
    set: &'static str,
    label: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    now: DateTime<Utc>,
    progress: &mut dyn FnMut(u64),
) -> Result<SetOutcome, ReportError> {
    let parent = plan.dir.join(set);
    ensure_dir(&parent)?;
    let final_dir = parent.join(label);
    if final_dir.join("manifest.json").exists() {
        return Ok(SetOutcome {
            set,
            label: label.into(),
            path: final_dir,
            status: "present",
            files: 0,
        });
    }
    remove_leftovers(&parent, label)?;
    let tmp = parent.join(format!(".{label}.tmp-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
    let mut written: Vec<Written> = Vec::new();
    let base = |kind: Kind| Request {
        kind,
        grant: None,
        account: None,
        period: None,
        from: Some(from),
        to: Some(to),
        as_of: Some(to),
        formats: plan.formats.clone(),
    };
    for kind in kinds {
        match kind {
            Kind::GrantStatement => {
                let grants: Vec<(String, DateTime<Utc>, DateTime<Utc>)> = s
                    .grants
                    .grants
                    .values()
                    .map(|g| (g.grant.number.clone(), g.grant.start, g.grant.end))
                    .collect();
                for (number, start, end) in grants {
                    if start >= to || end <= from {
                        continue;
                    }
                    let req = Request {
                        grant: Some(number.clone()),
                        from: None,
                        to: None,
                        ..base(*kind)
                    };
                    let name = format!("grant-statement-{}", super::file_safe(&number));
                    written.push(s.write(&req, &tmp, Some(&name), progress)?);
                }
            }
            Kind::AccountStatement => {
                let accounts = crate::db::queries::accounts(s.conn, None)?;
                for a in accounts {
                    if a.starts_at >= to {
                        continue;
                    }
                    let req = Request {
                        account: Some(a.name.clone()),
                        ..base(*kind)
                    };
                    let name = format!("account-statement-{}", super::file_safe(&a.name));
                    written.push(s.write(&req, &tmp, Some(&name), progress)?);
                }
            }
            k => {
                written.push(s.write(&base(*k), &tmp, Some(k.as_str()), progress)?);
            }
        }
    }
    let readme = write_readme(&tmp, s.templates)?;
    let mark = s.mark(Some(to))?;
    let manifest = Manifest::new(now, Some(to), &mark, s.templates, written, vec![readme]);
    let files = manifest.files.len();
    manifest.write(&tmp, "manifest.json")?;
    super::write::sync_dir(&tmp);
    match std::fs::rename(&tmp, &final_dir) {
        Ok(()) => {
            super::write::sync_dir(&parent);
            Ok(SetOutcome {
                set,
                label: label.into(),
                path: final_dir,
                status: "written",
                files,
            })
        }
        Err(_) if final_dir.join("manifest.json").exists() => {
            // Another run finished the same set first: keep theirs.
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(SetOutcome {
                set,
                label: label.into(),
                path: final_dir,
                status: "present",
                files: 0,
            })
        }
        Err(e) => Err(ReportError::Io {
            path: final_dir,
            source: e,
        }),
    }
}
