//! Files in a spool directory: which names are picked up, how a file is read safely, and where
//! it goes afterwards. Nothing is ever deleted: a file ends in `processed/` or `rejected/`
//! beside it (a rejected one with `<name>.error.json`), or stays where it is.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{Code, Kind, Reason};
use crate::domain::names::JobId;

/// Where processed files go, beside the spool directory's incoming files.
pub const PROCESSED_DIR: &str = "processed";
/// Where rejected files go, with their `.error.json`.
pub const REJECTED_DIR: &str = "rejected";

/// What a file's name says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Name {
    /// A name this kind expects; carries what the name says (job id, cluster, plan id).
    Expected(NameFacts),
    /// A producer's temporary file (`.name`, `*.tmp`, `*.part`, `*~`): left alone.
    Temporary,
    /// Our own `processed/` and `rejected/` directories.
    Ours,
    /// Anything else: refused.
    Unexpected,
}

/// What an expected name carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameFacts {
    /// `job_<ID>_cost.json` and friends.
    Cost(JobId),
    /// `jobend.<cluster>.<ID>.<end>.json`.
    JobEnd {
        /// Cluster.
        cluster: String,
        /// Job.
        job: JobId,
    },
    /// `<plan-id>.json`.
    Plan(String),
}

/// Classifies a directory entry's name for a spool of `kind`.
pub fn classify(kind: Kind, name: &str) -> Name {
    if name == PROCESSED_DIR || name == REJECTED_DIR {
        return Name::Ours;
    }
    if name.starts_with('.')
        || name.ends_with(".tmp")
        || name.ends_with(".part")
        || name.ends_with('~')
    {
        return Name::Temporary;
    }
    let facts = match kind {
        Kind::Cost => cost_name(name).map(NameFacts::Cost),
        Kind::JobEnd => jobend_name(name),
        Kind::Plan => plan_name(name).map(NameFacts::Plan),
    };
    facts.map_or(Name::Unexpected, Name::Expected)
}

/// The job-id part of a file name: `[0-9]+([_+][0-9]+)?`.
fn name_job(id: &str) -> Option<JobId> {
    let ok = !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'_' || b == b'+')
        && id.as_bytes()[0].is_ascii_digit();
    if !ok {
        return None;
    }
    JobId::parse(id).ok()
}

fn cost_name(name: &str) -> Option<JobId> {
    let id = name
        .strip_prefix("job_")
        .and_then(|r| r.strip_suffix("_cost.json"))
        .or_else(|| {
            name.strip_prefix("job-").and_then(|r| {
                r.strip_suffix("-asbb-reconciliation.json")
                    .or_else(|| r.strip_suffix("-performance.json"))
            })
        })?;
    name_job(id)
}

fn jobend_name(name: &str) -> Option<NameFacts> {
    let rest = name.strip_prefix("jobend.")?.strip_suffix(".json")?;
    let mut parts = rest.split('.');
    let (cluster, id, end) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let cluster_ok = !cluster.is_empty()
        && cluster.len() <= 64
        && cluster
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let end_ok = !end.is_empty() && end.len() <= 12 && end.bytes().all(|b| b.is_ascii_digit());
    if !cluster_ok || !end_ok {
        return None;
    }
    Some(NameFacts::JobEnd {
        cluster: cluster.to_string(),
        job: name_job(id)?,
    })
}

fn plan_name(name: &str) -> Option<String> {
    let stem = name.strip_suffix(".json")?;
    let ok = !stem.is_empty()
        && stem.len() <= 128
        && stem.as_bytes()[0].is_ascii_alphanumeric()
        && stem
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    ok.then(|| stem.to_string())
}

/// A file as read from the spool.
#[derive(Debug, Clone)]
pub struct Arrival {
    /// Full path.
    pub path: PathBuf,
    /// File name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Last modification.
    pub modified: SystemTime,
    /// SHA-256 of the content, hex.
    pub sha256: String,
    /// Identifies this arrival: name, size, modification time, inode and content. A rescan
    /// after a crash computes the same key for the same file; a re-export gets a new one.
    pub file_key: String,
    /// The content, when it is UTF-8; `None` for a file that ends inside a character (most
    /// likely still being written).
    pub text: Option<String>,
}

/// Why a file could not be read at all.
#[derive(Debug)]
pub enum ReadRefusal {
    /// Gone between listing and reading (a producer renamed it): nothing to do.
    Vanished,
    /// A directory: refused, but left where it is (moving it could break a producer).
    Directory,
    /// Refused with this reason; the file goes to `rejected/`.
    Refused(Reason, Option<Box<Arrival>>),
}

/// Reads a spool file without following symlinks, refusing what is not a small regular file.
pub fn read(kind: Kind, path: &Path, max_size: u64) -> Result<Arrival, ReadRefusal> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(ReadRefusal::Vanished),
        Err(e) => {
            return Err(ReadRefusal::Refused(
                Reason::file(Code::Unreadable, format!("cannot inspect the file: {e}")),
                None,
            ))
        }
    };
    let ft = meta.file_type();
    if ft.is_symlink() {
        return Err(ReadRefusal::Refused(
            Reason::file(
                Code::Symlink,
                "the name is a symbolic link; producers must write regular files",
            ),
            None,
        ));
    }
    if ft.is_dir() {
        return Err(ReadRefusal::Directory);
    }
    if !ft.is_file() {
        return Err(ReadRefusal::Refused(
            Reason::file(
                Code::NotAFile,
                "not a regular file (a socket, pipe or device)",
            ),
            None,
        ));
    }
    if meta.len() > max_size {
        return Err(ReadRefusal::Refused(
            Reason::file(
                Code::TooLarge,
                format!(
                    "{} bytes is more than the {max_size} bytes allowed (spool.max_file_size)",
                    meta.len()
                ),
            ),
            None,
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    let read = fs::File::open(path).and_then(|f| f.take(max_size + 1).read_to_end(&mut bytes));
    if let Err(e) = read {
        if e.kind() == io::ErrorKind::NotFound {
            return Err(ReadRefusal::Vanished);
        }
        return Err(ReadRefusal::Refused(
            Reason::file(Code::Unreadable, format!("cannot read the file: {e}")),
            None,
        ));
    }
    if bytes.len() as u64 > max_size {
        return Err(ReadRefusal::Refused(
            Reason::file(
                Code::TooLarge,
                format!("more than the {max_size} bytes allowed (spool.max_file_size)"),
            ),
            None,
        ));
    }
    let sha256 = hex(&Sha256::digest(&bytes));
    let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    let mtime_ns = modified
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let file_key = hex(&Sha256::digest(
        format!(
            "{}\n{name}\n{}\n{mtime_ns}\n{}\n{sha256}",
            kind.as_str(),
            bytes.len(),
            meta.ino()
        )
        .as_bytes(),
    ));
    let size = bytes.len() as u64;
    // A file that ends inside a multi-byte character is most likely still being written (ASBX
    // writes in place): that is "not ready", decided by the caller. Invalid bytes elsewhere are
    // refused at once.
    let (text, cut_short) = match String::from_utf8(bytes) {
        Ok(t) => (Some(t), false),
        Err(e) => (None, e.utf8_error().error_len().is_none()),
    };
    let arrival = Arrival {
        path: path.to_path_buf(),
        name,
        size,
        modified,
        sha256,
        file_key,
        text,
    };
    if arrival.text.is_none() && !cut_short {
        return Err(ReadRefusal::Refused(
            Reason::file(Code::NotUtf8, "the file is not UTF-8 text"),
            Some(Box::new(arrival)),
        ));
    }
    Ok(arrival)
}

/// How old a file is by its modification time, as of `now` (zero if it is from the future).
pub fn age(modified: SystemTime, now: DateTime<Utc>) -> Duration {
    let now: SystemTime = now.into();
    now.duration_since(modified).unwrap_or(Duration::ZERO)
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The sidecar written beside a rejected file.
#[derive(Debug, Serialize)]
pub struct ErrorSidecar<'a> {
    /// The file's name.
    pub file: &'a str,
    /// Its kind.
    pub kind: Kind,
    /// Every reason.
    pub reasons: &'a [Reason],
    /// When it was rejected (RFC 3339).
    pub rejected_at: String,
    /// SHA-256 of its content, when it could be read.
    pub sha256: Option<&'a str>,
}

/// Moves `path` into `dir/<sub>/`, creating it, never overwriting: a name already taken gets
/// a suffix from `tag`. Returns the new path.
///
/// The directory is created only when the rename finds it missing, and the rename itself
/// refuses to replace (`renameat2` with `RENAME_NOREPLACE`): one system call per file in the
/// common case, and no window in which another scanner's file of the same name could be
/// overwritten.
pub fn move_into(path: &Path, sub: &str, tag: &str) -> io::Result<PathBuf> {
    let parent = path.parent().unwrap_or(Path::new("."));
    let dest_dir = parent.join(sub);
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let short = &tag[..tag.len().min(12)];
    let mut n = 0u32;
    let mut made_dir = false;
    loop {
        let dest = dest_dir.join(match n {
            0 => name.to_string(),
            1 => format!("{name}.{short}"),
            _ => format!("{name}.{short}.{n}"),
        });
        match rename_no_replace(path, &dest) {
            Ok(true) => return Ok(dest),
            Ok(false) => n += 1,
            // The directory is missing (or the file vanished: then the retry says so).
            Err(e) if e.kind() == io::ErrorKind::NotFound && !made_dir => {
                fs::create_dir_all(&dest_dir)?;
                made_dir = true;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Renames `from` to `to` unless something is at `to` already (`Ok(false)`). Atomic with
/// `renameat2(RENAME_NOREPLACE)`; on a file system without it (some network file systems)
/// it looks first, then renames.
fn rename_no_replace(from: &Path, to: &Path) -> io::Result<bool> {
    #[cfg(target_os = "linux")]
    {
        use rustix::fs::{renameat_with, RenameFlags, CWD};
        use rustix::io::Errno;
        match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
            Ok(()) => return Ok(true),
            Err(Errno::EXIST) => return Ok(false),
            Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => {}
            Err(e) => return Err(e.into()),
        }
    }
    if fs::symlink_metadata(to).is_ok() {
        return Ok(false);
    }
    fs::rename(from, to)?;
    Ok(true)
}

/// Writes `<rejected>/<name>.error.json` atomically (temp file, fsync, rename).
pub fn write_sidecar(
    spool_dir: &Path,
    dest_name: &str,
    sidecar: &ErrorSidecar<'_>,
) -> io::Result<()> {
    let dir = spool_dir.join(REJECTED_DIR);
    fs::create_dir_all(&dir)?;
    let final_path = dir.join(format!("{dest_name}.error.json"));
    let tmp = dir.join(format!(".{dest_name}.error.json.tmp"));
    let mut f = fs::File::create(&tmp)?;
    let mut body = serde_json::to_vec_pretty(sidecar).map_err(io::Error::other)?;
    body.push(b'\n');
    f.write_all(&body)?;
    f.sync_all()?;
    fs::rename(&tmp, &final_path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_create_the_directory_and_never_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let put = |body: &str| {
            let p = dir.path().join("job_7_cost.json");
            fs::write(&p, body).unwrap();
            p
        };
        // The first move creates processed/; the next two find the name taken.
        let first = move_into(&put("one"), PROCESSED_DIR, "aaaaaaaaaaaaaaaa").unwrap();
        let second = move_into(&put("two"), PROCESSED_DIR, "bbbbbbbbbbbbbbbb").unwrap();
        let third = move_into(&put("three"), PROCESSED_DIR, "bbbbbbbbbbbbbbbb").unwrap();
        let processed = dir.path().join(PROCESSED_DIR);
        assert_eq!(first, processed.join("job_7_cost.json"));
        assert_eq!(second, processed.join("job_7_cost.json.bbbbbbbbbbbb"));
        assert_eq!(third, processed.join("job_7_cost.json.bbbbbbbbbbbb.2"));
        for (p, body) in [(&first, "one"), (&second, "two"), (&third, "three")] {
            assert_eq!(fs::read_to_string(p).unwrap(), body);
        }
        assert!(!dir.path().join("job_7_cost.json").exists());
        // A file that is gone is an error, not a loop.
        let gone = move_into(&dir.path().join("job_8_cost.json"), PROCESSED_DIR, "c");
        assert_eq!(gone.unwrap_err().kind(), io::ErrorKind::NotFound);
        // Asked directly, it refuses a name that is taken and leaves both files as they were.
        let p = put("four");
        assert!(!rename_no_replace(&p, &first).unwrap());
        assert_eq!(fs::read_to_string(&first).unwrap(), "one");
        assert_eq!(fs::read_to_string(&p).unwrap(), "four");
    }

    #[test]
    fn names_by_kind() {
        let job = |s: &str| JobId::parse(s).unwrap();
        assert_eq!(
            classify(Kind::Cost, "job_123_cost.json"),
            Name::Expected(NameFacts::Cost(job("123")))
        );
        assert_eq!(
            classify(Kind::Cost, "job-123_4-asbb-reconciliation.json"),
            Name::Expected(NameFacts::Cost(job("123_4")))
        );
        assert_eq!(
            classify(Kind::Cost, "job-9+1-performance.json"),
            Name::Expected(NameFacts::Cost(job("9+1")))
        );
        for bad in [
            "notes.txt",
            "job__cost.json",
            "job_12_cost.json.bak",
            "job_x_cost.json",
            "job_../1_cost.json",
        ] {
            assert_eq!(classify(Kind::Cost, bad), Name::Unexpected, "{bad}");
        }
        for tmp in [
            ".job_5_cost.json.tmp",
            "job_6_cost.json.part",
            "..job_1_cost.json",
            "x~",
        ] {
            assert_eq!(classify(Kind::Cost, tmp), Name::Temporary, "{tmp}");
        }
        assert_eq!(classify(Kind::Cost, "processed"), Name::Ours);
        assert_eq!(
            classify(Kind::JobEnd, "jobend.lab.1234_5.1737000500.json"),
            Name::Expected(NameFacts::JobEnd {
                cluster: "lab".into(),
                job: job("1234_5")
            })
        );
        assert_eq!(
            classify(Kind::JobEnd, "jobend.lab.1234.json"),
            Name::Unexpected
        );
        assert_eq!(
            classify(Kind::Plan, "plan-2025.09_a.json"),
            Name::Expected(NameFacts::Plan("plan-2025.09_a".into()))
        );
        assert_eq!(classify(Kind::Plan, "a b.json"), Name::Unexpected);
    }
}
