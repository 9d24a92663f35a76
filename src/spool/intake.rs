//! The intake loop shared by `asbb spool scan` and `asbb-spoold`: list a spool directory,
//! read and validate a bounded batch of files, record them in one transaction, and only then
//! move them to `processed/` or `rejected/`.
//!
//! Crash safety: a file is moved only after its record is committed, and a rescan recognises
//! an arrival it already recorded by its `file_key`, so killing the process at any point and
//! running it again converges to the same ledger with every file moved exactly once.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use walkdir::WalkDir;

use super::files::{self, Arrival, ErrorSidecar, Name, NameFacts, ReadRefusal};
use super::{cost, jobend, plan, Code, Kind, Limits, Parsed, Reason, Record};
use crate::db::ledger::LedgerError;
use crate::db::spool::{record_batch, Content, FileFacts, Outcome, Recorded};
use crate::db::{write_transaction, DbConn};

/// The spool directories; a kind without a directory is not scanned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpoolDirs {
    /// ASBX cost exports.
    pub asbx: Option<PathBuf>,
    /// Job-end records.
    pub jobs: Option<PathBuf>,
    /// ASBA plans.
    pub plans: Option<PathBuf>,
}

impl SpoolDirs {
    /// The configured directories with their kinds.
    pub fn each(&self) -> Vec<(Kind, &Path)> {
        let mut v = Vec::new();
        if let Some(d) = &self.jobs {
            v.push((Kind::JobEnd, d.as_path()));
        }
        if let Some(d) = &self.plans {
            v.push((Kind::Plan, d.as_path()));
        }
        if let Some(d) = &self.asbx {
            v.push((Kind::Cost, d.as_path()));
        }
        v
    }

    /// Whether no directory is configured.
    pub fn is_empty(&self) -> bool {
        self.asbx.is_none() && self.jobs.is_none() && self.plans.is_none()
    }
}

/// Directory entries listed, and sorted by name, before their files are read: a directory
/// lists its files in no useful order (by hash of the name on ext4), while the names carry the
/// job id (`job_<id>_cost.json`; name order is job order for ids of one length). Stored in name
/// order, a backlog's records get ids, and their index entries places, in job order, the order
/// their holds were placed in; reconcile then writes neighbouring pages. A window bounds the
/// memory whatever the backlog (about 160 bytes an entry, some 3 MB).
pub const SORT_WINDOW: usize = 20_000;

/// A directory listing in windows of [`SORT_WINDOW`] entries, each sorted by name. An error
/// comes as soon as the listing meets it (the scan stops there, as it would unsorted).
struct SortedWindows {
    walker: walkdir::IntoIter,
    window: std::vec::IntoIter<walkdir::DirEntry>,
    listed_all: bool,
}

impl SortedWindows {
    fn new(walker: walkdir::IntoIter) -> SortedWindows {
        SortedWindows {
            walker,
            window: Vec::new().into_iter(),
            listed_all: false,
        }
    }
}

impl Iterator for SortedWindows {
    type Item = walkdir::Result<walkdir::DirEntry>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(e) = self.window.next() {
                return Some(Ok(e));
            }
            if self.listed_all {
                return None;
            }
            let mut next = Vec::new();
            for entry in self.walker.by_ref().take(SORT_WINDOW) {
                match entry {
                    Ok(e) => next.push(e),
                    Err(e) => return Some(Err(e)),
                }
            }
            self.listed_all = next.len() < SORT_WINDOW;
            next.sort_unstable_by(|a, b| a.file_name().cmp(b.file_name()));
            self.window = next.into_iter();
        }
    }
}

/// Intake settings.
#[derive(Debug, Clone)]
pub struct IntakeOptions {
    /// Limits of the readers.
    pub limits: Limits,
    /// Largest file read.
    pub max_file_size: u64,
    /// How long an empty or unparsable file is retried before it is rejected.
    pub not_ready_grace: Duration,
    /// Files per transaction.
    pub batch_size: usize,
}

impl Default for IntakeOptions {
    fn default() -> Self {
        IntakeOptions {
            limits: Limits::default(),
            max_file_size: 1 << 20,
            not_ready_grace: Duration::from_secs(600),
            batch_size: 1000,
        }
    }
}

/// What one scan did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ScanReport {
    /// New records stored.
    pub stored: u64,
    /// Files whose facts were already stored.
    pub duplicates: u64,
    /// Files with other facts for a run already stored (`asbb spool conflicts`).
    pub conflicts: u64,
    /// Files refused, now in `rejected/`.
    pub rejected: u64,
    /// Empty or unparsable files left for a later scan (within the grace period).
    pub not_ready: u64,
    /// Producers' temporary files left alone.
    pub temporary: u64,
    /// Files recorded by an earlier, interrupted scan and moved now.
    pub finished_moves: u64,
    /// Directories found among the files, left where they are.
    pub directories: Vec<String>,
    /// Files that could not be moved (they stay, and the next scan moves them).
    pub move_errors: Vec<String>,
    /// Transactions committed.
    pub batches: u64,
}

impl ScanReport {
    /// Files handled (recorded, refused or moved).
    pub fn handled(&self) -> u64 {
        self.stored + self.duplicates + self.conflicts + self.rejected + self.finished_moves
    }

    /// Whether something needs an administrator's eyes.
    pub fn has_problems(&self) -> bool {
        self.rejected > 0 || self.conflicts > 0 || !self.move_errors.is_empty()
    }

    fn add(&mut self, o: &ScanReport) {
        self.stored += o.stored;
        self.duplicates += o.duplicates;
        self.conflicts += o.conflicts;
        self.rejected += o.rejected;
        self.not_ready += o.not_ready;
        self.temporary += o.temporary;
        self.finished_moves += o.finished_moves;
        self.directories.extend(o.directories.iter().cloned());
        self.move_errors.extend(o.move_errors.iter().cloned());
        self.batches += o.batches;
    }
}

/// Why a scan stopped.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// A configured directory is missing or unreadable.
    #[error("spool directory {path}: {source} (check spool.{key} or --{flag})")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Config key.
        key: &'static str,
        /// Flag.
        flag: &'static str,
        /// Cause.
        source: std::io::Error,
    },
    /// The database failed; nothing of the current batch was recorded or moved.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// One file, read and judged, waiting for its batch's commit.
struct Prepared {
    path: PathBuf,
    name: String,
    file_key: String,
    sha256: String,
    size: u64,
    verdict: Verdict,
}

enum Verdict {
    Record(Box<Record>),
    Rejected(Vec<Reason>),
}

/// The intake: options plus what it has already logged.
pub struct Intake {
    opts: IntakeOptions,
    logged_unknown: HashSet<String>,
}

impl Intake {
    /// A new intake.
    pub fn new(opts: IntakeOptions) -> Intake {
        Intake {
            opts,
            logged_unknown: HashSet::new(),
        }
    }

    /// The options.
    pub fn options(&self) -> &IntakeOptions {
        &self.opts
    }

    /// One pass over every directory. `stop` is polled between batches (SIGTERM finishes the
    /// current batch); `progress` sees the running totals after each batch.
    pub fn scan(
        &mut self,
        conn: &mut DbConn,
        dirs: &SpoolDirs,
        now: DateTime<Utc>,
        stop: &dyn Fn() -> bool,
        progress: &mut dyn FnMut(&ScanReport),
    ) -> Result<ScanReport, IntakeError> {
        let mut total = ScanReport::default();
        for (kind, dir) in dirs.each() {
            if stop() {
                break;
            }
            self.scan_dir(conn, kind, dir, now, stop, &mut |r| {
                let mut t = total.clone();
                t.add(r);
                progress(&t);
            })
            .map(|r| total.add(&r))?;
        }
        crate::db::refresh_statistics(
            conn,
            &["spool_files", "cost_records", "job_end_records"],
            total.stored,
        );
        Ok(total)
    }

    fn scan_dir(
        &mut self,
        conn: &mut DbConn,
        kind: Kind,
        dir: &Path,
        now: DateTime<Utc>,
        stop: &dyn Fn() -> bool,
        progress: &mut dyn FnMut(&ScanReport),
    ) -> Result<ScanReport, IntakeError> {
        let (key, flag) = match kind {
            Kind::Cost => ("asbx_dir", "asbx-dir"),
            Kind::JobEnd => ("jobs_dir", "jobs-dir"),
            Kind::Plan => ("plans_dir", "plans-dir"),
        };
        let dir_err = |source: std::io::Error| IntakeError::Dir {
            path: dir.to_path_buf(),
            key,
            flag,
            source,
        };
        let meta = std::fs::metadata(dir).map_err(dir_err)?;
        if !meta.is_dir() {
            return Err(dir_err(std::io::Error::other("not a directory")));
        }
        let walker = SortedWindows::new(
            WalkDir::new(dir)
                .min_depth(1)
                .max_depth(1)
                .follow_links(false)
                .into_iter(),
        );
        let mut reader = Reader {
            opts: &self.opts,
            logged_unknown: &mut self.logged_unknown,
        };
        // Three threads in a pipeline, so that the file system's work and the database's
        // overlap: the reader lists, reads and judges the next batch while this thread records
        // the current one, and the mover moves the files of the batch committed before. Each
        // channel holds one batch, which bounds the memory. The order of the steps for any one
        // file is unchanged (read, record, commit, move), and so is what a kill at any moment
        // leaves behind.
        std::thread::scope(|s| {
            let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<Ready, std::io::Error>>(1);
            let (done_tx, done_rx) = mpsc::sync_channel::<Committed>(1);
            let read = s.spawn(move || reader.read_batches(kind, walker, now, &ready_tx));
            let moves = s.spawn(move || {
                let mut report = ScanReport::default();
                for c in done_rx {
                    move_batch(dir, kind, now, c, &mut report);
                }
                report
            });
            let mut report = ScanReport::default();
            let mut outcome = Ok(());
            for ready in &ready_rx {
                let ready = match ready {
                    Ok(r) => r,
                    Err(io) => {
                        outcome = Err(dir_err(io));
                        break;
                    }
                };
                report.add(&ready.seen);
                if !ready.batch.is_empty() {
                    match record(conn, kind, now, &ready.batch) {
                        Ok(recorded) => {
                            report.batches += 1;
                            count(&recorded, &mut report);
                            // The mover stops only when this thread drops its channel.
                            let _ = done_tx.send(Committed {
                                batch: ready.batch,
                                recorded,
                            });
                        }
                        Err(e) => {
                            outcome = Err(e);
                            break;
                        }
                    }
                }
                progress(&report);
                if stop() {
                    break;
                }
            }
            // The reader stops at its next send; the mover finishes the committed batches.
            drop(ready_rx);
            drop(done_tx);
            if let Err(panic) = read.join() {
                std::panic::resume_unwind(panic);
            }
            let moved = moves
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            report.add(&moved);
            if !moved.move_errors.is_empty() {
                progress(&report);
            }
            outcome.map(|()| report)
        })
    }
}

/// A batch read and judged, with what the reader saw beside it.
struct Ready {
    batch: Vec<Prepared>,
    /// Temporary files, files not ready yet and directories met while reading the batch.
    seen: ScanReport,
}

/// A committed batch, waiting for its moves.
struct Committed {
    batch: Vec<Prepared>,
    recorded: Vec<Recorded>,
}

/// Lists, reads and judges files: the first stage of the intake.
struct Reader<'a> {
    opts: &'a IntakeOptions,
    logged_unknown: &'a mut HashSet<String>,
}

impl Reader<'_> {
    /// Sends batches of prepared files until the listing ends (the last one may be empty), it
    /// fails, or nobody receives any more.
    fn read_batches(
        &mut self,
        kind: Kind,
        mut walker: SortedWindows,
        now: DateTime<Utc>,
        out: &mpsc::SyncSender<Result<Ready, std::io::Error>>,
    ) {
        loop {
            let mut seen = ScanReport::default();
            let mut batch: Vec<Prepared> = Vec::with_capacity(self.opts.batch_size.min(4096));
            let mut exhausted = false;
            while batch.len() < self.opts.batch_size {
                let Some(entry) = walker.next() else {
                    exhausted = true;
                    break;
                };
                let entry = match entry {
                    Ok(e) => e,
                    Err(e) => {
                        let io = e
                            .into_io_error()
                            .unwrap_or_else(|| std::io::Error::other("directory loop"));
                        let _ = out.send(Err(io));
                        return;
                    }
                };
                if let Some(p) = self.prepare(kind, entry.path(), now, &mut seen) {
                    batch.push(p);
                }
            }
            if out.send(Ok(Ready { batch, seen })).is_err() || exhausted {
                return;
            }
        }
    }

    /// Reads and judges one directory entry; `None` when it is left where it is.
    fn prepare(
        &mut self,
        kind: Kind,
        path: &Path,
        now: DateTime<Utc>,
        report: &mut ScanReport,
    ) -> Option<Prepared> {
        let name = path.file_name()?.to_string_lossy().into_owned();
        let facts = match files::classify(kind, &name) {
            Name::Ours => return None,
            Name::Temporary => {
                report.temporary += 1;
                return None;
            }
            Name::Expected(f) => Some(f),
            Name::Unexpected => None,
        };
        let arrival = match files::read(kind, path, self.opts.max_file_size) {
            Ok(a) => a,
            Err(ReadRefusal::Vanished) => return None,
            Err(ReadRefusal::Directory) => {
                tracing::warn!(path = %path.display(), "not_a_file: a directory in the spool is left where it is");
                report.directories.push(name);
                return None;
            }
            Err(ReadRefusal::Refused(reason, arrival)) => {
                let (file_key, sha256, size) = match arrival {
                    Some(a) => (a.file_key.clone(), a.sha256.clone(), a.size),
                    None => (metadata_key(kind, path, &reason), String::new(), 0),
                };
                return Some(Prepared {
                    path: path.to_path_buf(),
                    name,
                    file_key,
                    sha256,
                    size,
                    verdict: Verdict::Rejected(vec![reason]),
                });
            }
        };
        let Some(facts) = facts else {
            return Some(rejected(
                arrival,
                vec![Reason::file(
                    Code::BadName,
                    format!("'{name}' matches no {kind} file name (see spool-schemas/README.md)"),
                )],
            ));
        };
        let parsed = match (&facts, arrival.text.as_deref()) {
            (_, None) => Parsed::NotReady(vec![Reason::file(
                Code::NotUtf8,
                "the file ends inside a UTF-8 character (a producer may still be writing it)",
            )]),
            (facts, Some(text)) => self.parse(facts, text),
        };
        match parsed {
            Parsed::Record(rec) => {
                if let Record::Cost(c) = &rec {
                    for k in &c.unknown_keys {
                        if self.logged_unknown.insert(k.clone()) {
                            tracing::info!(key = %k, file = %name, "ignoring an unknown key in cost exports (logged once)");
                        }
                    }
                }
                Some(Prepared {
                    path: arrival.path,
                    name,
                    file_key: arrival.file_key,
                    sha256: arrival.sha256,
                    size: arrival.size,
                    verdict: Verdict::Record(Box::new(rec)),
                })
            }
            Parsed::NotReady(reasons) => {
                if files::age(arrival.modified, now) < self.opts.not_ready_grace {
                    report.not_ready += 1;
                    None
                } else {
                    Some(rejected(arrival, reasons))
                }
            }
            Parsed::Rejected(reasons) => Some(rejected(arrival, reasons)),
        }
    }

    fn parse(&self, facts: &NameFacts, text: &str) -> Parsed<Record> {
        let lim = &self.opts.limits;
        match facts {
            NameFacts::Cost(job) => map(cost::read(Some(job), text, lim), Record::Cost),
            NameFacts::JobEnd { cluster, job } => {
                map(jobend::read(Some((cluster, job)), text), Record::JobEnd)
            }
            NameFacts::Plan(id) => map(plan::read(id, text, lim), Record::Plan),
        }
    }
}

/// Records a batch in one write transaction.
fn record(
    conn: &mut DbConn,
    kind: Kind,
    now: DateTime<Utc>,
    batch: &[Prepared],
) -> Result<Vec<Recorded>, IntakeError> {
    let recorded = write_transaction(conn, |conn| {
        crate::db::lock_batch(conn, crate::db::BatchLock::Intake)?;
        let items: Vec<(FileFacts<'_>, Content<'_>)> = batch
            .iter()
            .map(|p| {
                let content = match &p.verdict {
                    Verdict::Record(r) => Content::Record(r),
                    Verdict::Rejected(r) => Content::Rejected(r),
                };
                let facts = FileFacts {
                    kind,
                    name: &p.name,
                    file_key: &p.file_key,
                    sha256: &p.sha256,
                    size: p.size,
                };
                (facts, content)
            })
            .collect();
        let out = record_batch(conn, now, &items)?;
        Ok::<_, LedgerError>(out)
    })?;
    crate::db::checkpoint::between_transactions(conn).map_err(LedgerError::from)?;
    Ok(recorded)
}

/// Counts what a committed batch recorded.
fn count(recorded: &[Recorded], report: &mut ScanReport) {
    for r in recorded {
        if r.already {
            report.finished_moves += 1;
        } else {
            match r.outcome {
                Outcome::Stored => report.stored += 1,
                Outcome::Duplicate => report.duplicates += 1,
                Outcome::Conflict => report.conflicts += 1,
                Outcome::Rejected => report.rejected += 1,
            }
        }
    }
}

/// Moves the files of a committed batch. A crash from here on leaves files the next scan
/// recognises.
fn move_batch(dir: &Path, kind: Kind, now: DateTime<Utc>, c: Committed, report: &mut ScanReport) {
    for (p, r) in c.batch.iter().zip(c.recorded) {
        let moved = if r.outcome == Outcome::Rejected {
            tracing::warn!(
                file = %p.name,
                reasons = %r.reasons.iter().map(|x| x.to_string()).collect::<Vec<_>>().join("; "),
                "rejected"
            );
            let sidecar = ErrorSidecar {
                file: &p.name,
                kind,
                reasons: &r.reasons,
                rejected_at: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                sha256: (!p.sha256.is_empty()).then_some(p.sha256.as_str()),
            };
            move_rejected(dir, &p.path, &p.file_key, &sidecar)
        } else {
            if r.outcome == Outcome::Conflict && !r.already {
                tracing::warn!(file = %p.name, "conflict: other facts for a run already stored; see `asbb spool conflicts`");
            }
            files::move_into(&p.path, files::PROCESSED_DIR, &p.file_key).map(|_| ())
        };
        if let Err(e) = moved {
            if e.kind() != std::io::ErrorKind::NotFound {
                report
                    .move_errors
                    .push(format!("{}: {e}", p.path.display()));
            }
        }
    }
}

fn map<T>(p: Parsed<T>, f: impl FnOnce(T) -> Record) -> Parsed<Record> {
    match p {
        Parsed::Record(r) => Parsed::Record(f(r)),
        Parsed::NotReady(r) => Parsed::NotReady(r),
        Parsed::Rejected(r) => Parsed::Rejected(r),
    }
}

fn rejected(a: Arrival, reasons: Vec<Reason>) -> Prepared {
    Prepared {
        name: a.name,
        path: a.path,
        file_key: a.file_key,
        sha256: a.sha256,
        size: a.size,
        verdict: Verdict::Rejected(reasons),
    }
}

/// The arrival key of a file that could not be read: from what `lstat` says.
fn metadata_key(kind: Kind, path: &Path, reason: &Reason) -> String {
    use sha2::{Digest, Sha256};
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(path).ok();
    let (size, mtime, ino) = m.map_or((0, 0, 0), |m| {
        (
            m.size(),
            m.mtime_nsec() + m.mtime() * 1_000_000_000,
            m.ino(),
        )
    });
    files::hex(&Sha256::digest(
        format!(
            "{}\n{}\nunread:{}\n{size}\n{mtime}\n{ino}",
            kind.as_str(),
            path.file_name().unwrap_or_default().to_string_lossy(),
            reason.code
        )
        .as_bytes(),
    ))
}

fn move_rejected(
    dir: &Path,
    path: &Path,
    tag: &str,
    sidecar: &ErrorSidecar<'_>,
) -> std::io::Result<()> {
    // Decide the destination name first so the sidecar sits beside the file it explains.
    let dest_dir = dir.join(files::REJECTED_DIR);
    std::fs::create_dir_all(&dest_dir)?;
    let name = sidecar.file;
    let mut dest_name = name.to_string();
    let short = &tag[..tag.len().min(12)];
    let mut n = 0;
    while std::fs::symlink_metadata(dest_dir.join(&dest_name)).is_ok() {
        n += 1;
        dest_name = if n == 1 {
            format!("{name}.{short}")
        } else {
            format!("{name}.{short}.{n}")
        };
    }
    files::write_sidecar(dir, &dest_name, sidecar)?;
    std::fs::rename(path, dest_dir.join(&dest_name))
}
