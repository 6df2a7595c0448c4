//! Durable, atomic file replacement and advisory locks, shared by every crate of the suite.
//!
//! A reader sees either the old or the new content of a file, never a mix, and a crash at any
//! point leaves one of the two on disk: write a temporary file in the same directory, fsync it,
//! rename it over the target, fsync the directory.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Atomically replaces `path` with `data`, created with `mode` (subject to the umask).
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    write_atomic_with(path, mode, true, |f| f.write_all(data))
}

/// Like [`write_atomic`] but without fsync: for derived files (the sysfs tree) that are rebuilt
/// from durable state, where atomic visibility matters and durability does not.
pub fn replace_atomic(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    write_atomic_with(path, mode, false, |f| f.write_all(data))
}

fn write_atomic_with(
    path: &Path,
    mode: u32,
    sync: bool,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have narrowed the mode; a private file must not end up wider, and a
        // file that existed as a leftover temp keeps its old mode, so set it explicitly.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        fill(&mut f)?;
        if sync {
            f.sync_all()?;
        }
        crash_point();
        fs::rename(&tmp, path)?;
        if sync {
            sync_dir(&dir)?;
        }
        crash_point();
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Fsyncs a directory, so that a rename or unlink in it survives a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Removes a file durably; a file that is already gone is fine.
pub fn remove_durable(path: &Path) -> io::Result<()> {
    crash_point();
    match fs::remove_file(path) {
        Ok(()) => sync_dir(&parent_dir(path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// The `durable` fail point: with the `failpoints` feature, `FAILPOINTS=durable=N*off->return`
/// aborts the process (no destructors, no cleanup: a crash) at the N+1th durable step, before a
/// rename, after one, or before a removal. Crash tests walk N upwards until a command completes.
/// Arms the crash points named in `$FAILPOINTS`; every binary of the suite calls it first thing.
/// Without the `failpoints` feature it does nothing.
pub fn arm_crash_points() {
    #[cfg(feature = "failpoints")]
    std::mem::forget(fail::FailScenario::setup());
}

fn crash_point() {
    fail::fail_point!("durable", |_| std::process::abort());
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// An advisory `flock` held until dropped.
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

/// Shared (readers) or exclusive (writers).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum LockKind {
    Shared,
    Exclusive,
}

impl Lock {
    /// Waits for the lock on `path` (created if missing, mode 0600).
    pub fn acquire(path: &Path, kind: LockKind) -> io::Result<Lock> {
        let f = Self::open(path)?;
        match kind {
            LockKind::Shared => f.lock_shared()?,
            LockKind::Exclusive => f.lock()?,
        }
        Ok(Lock { _file: f })
    }

    /// Takes the lock only if nobody holds a conflicting one; `Ok(None)` when it is busy.
    pub fn try_acquire(path: &Path, kind: LockKind) -> io::Result<Option<Lock>> {
        let f = Self::open(path)?;
        let r = match kind {
            LockKind::Shared => f.try_lock_shared(),
            LockKind::Exclusive => f.try_lock(),
        };
        match r {
            Ok(()) => Ok(Some(Lock { _file: f })),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(e),
        }
    }

    fn open(path: &Path) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_content_and_sets_mode_despite_leftover_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        // A temp left by a crashed run of this same pid with a wide mode must not leak its mode.
        let leftover = d.path().join(format!(".f.tmp.{}", std::process::id()));
        fs::write(&leftover, b"junk").unwrap();
        fs::set_permissions(&leftover, fs::Permissions::from_mode(0o666)).unwrap();
        write_atomic(&p, b"one", 0o600).unwrap();
        write_atomic(&p, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(!leftover.exists());
    }

    #[test]
    fn exclusive_lock_excludes() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(".lock");
        let held = Lock::acquire(&p, LockKind::Exclusive).unwrap();
        assert!(Lock::try_acquire(&p, LockKind::Shared).unwrap().is_none());
        drop(held);
        let a = Lock::try_acquire(&p, LockKind::Shared).unwrap();
        assert!(a.is_some());
        assert!(Lock::try_acquire(&p, LockKind::Shared).unwrap().is_some());
        assert!(Lock::try_acquire(&p, LockKind::Exclusive)
            .unwrap()
            .is_none());
    }
}
