//! Files written whole or not at all: each goes to a temporary name in the target directory
//! and is renamed into place after it is flushed and synced, while its SHA-256 is computed as
//! it is written. A run killed at any point leaves the previous file (or none), never half of
//! one; a leftover temporary file is named `.NAME.tmp-PID` and is replaced by the next run.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// A written file: its name in the directory, size and checksum.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FileInfo {
    /// File name (no directory).
    pub name: String,
    /// Size in bytes.
    pub bytes: u64,
    /// SHA-256, lower-case hex.
    pub sha256: String,
    /// Data rows (CSV and JSON rows, the header not counted); `None` for other files.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
}

struct Hashing {
    file: File,
    hash: Sha256,
    bytes: u64,
}

impl Write for Hashing {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// A file being written.
pub struct AtomicFile {
    tmp: PathBuf,
    dest: PathBuf,
    out: Option<BufWriter<Hashing>>,
    committed: bool,
}

impl AtomicFile {
    /// Starts `dir/name`.
    pub fn create(dir: &Path, name: &str) -> io::Result<AtomicFile> {
        let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        let file = File::create(&tmp)?;
        Ok(AtomicFile {
            tmp,
            dest: dir.join(name),
            out: Some(BufWriter::with_capacity(
                256 * 1024,
                Hashing {
                    file,
                    hash: Sha256::new(),
                    bytes: 0,
                },
            )),
            committed: false,
        })
    }

    /// Where it will be.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Flushes, syncs, renames into place.
    pub fn commit(mut self, rows: Option<u64>) -> io::Result<FileInfo> {
        let out = self.out.take().expect("a file is committed once");
        let h = out.into_inner().map_err(|e| e.into_error())?;
        h.file.sync_all()?;
        std::fs::rename(&self.tmp, &self.dest)?;
        self.committed = true;
        let dest = self.dest.clone();
        if let Some(dir) = dest.parent() {
            sync_dir(dir);
        }
        Ok(FileInfo {
            name: dest
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            bytes: h.bytes,
            sha256: hex(&h.hash.finalize()),
            rows,
        })
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer()?.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.writer()?.flush()
    }
}

impl AtomicFile {
    fn writer(&mut self) -> io::Result<&mut BufWriter<Hashing>> {
        self.out
            .as_mut()
            .ok_or_else(|| io::Error::other("file already committed"))
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        // Not committed (an error on the way): leave no temporary file behind.
        if !self.committed && self.tmp.exists() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Writes `bytes` to `dir/name` atomically.
pub fn write_whole(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<FileInfo> {
    let mut f = AtomicFile::create(dir, name)?;
    f.write_all(bytes)?;
    f.commit(None)
}

/// Makes a rename durable (best effort: not every file system lets a directory be synced).
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_appears_only_when_committed() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = AtomicFile::create(dir.path(), "a.csv").unwrap();
        f.write_all(b"x,y\r\n").unwrap();
        assert!(!dir.path().join("a.csv").exists());
        let info = f.commit(Some(0)).unwrap();
        assert_eq!(std::fs::read(dir.path().join("a.csv")).unwrap(), b"x,y\r\n");
        assert_eq!(info.bytes, 5);
        assert_eq!(info.sha256, hex(&Sha256::digest(b"x,y\r\n")));
        let f = AtomicFile::create(dir.path(), "b.csv").unwrap();
        drop(f);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
