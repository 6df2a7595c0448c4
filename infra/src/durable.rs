//! Durable, atomic file replacement and advisory locks, shared by every crate of the suite.
//!
//! A reader sees either the old or the new content of a file, never a mix, and a crash at any
//! point leaves one of the two on disk: write a temporary file in the same directory, fsync it,
//! rename it over the target, fsync the directory.
//!
//! The temporary file's name is unpredictable (`.NAME.tmp.` and 16 random hex digits) and it is
//! created exclusively (`O_CREAT|O_EXCL|O_NOFOLLOW`), so that nobody who can write the directory
//! can make the write go through a link planted in advance; its mode is set on the open
//! descriptor. The rename replaces whatever `NAME` is, a link included, without following it.
//! Temporary files a crash left behind (they may hold keys) are removed by whoever next takes
//! the directory's exclusive [`Lock`].

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Atomically replaces `path` with `data`, created with `mode` (subject to the umask).
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    write_atomic_with(path, mode, None, true, |f| f.write_all(data))
}

/// [`write_atomic`], the new file also given group `gid`: on the open descriptor, before the
/// rename, so that no path (and no link someone swaps in) is followed to do it.
pub fn write_atomic_group(path: &Path, data: &[u8], mode: u32, gid: u32) -> io::Result<()> {
    write_atomic_with(path, mode, Some(gid), true, |f| f.write_all(data))
}

/// Like [`write_atomic`] but without fsync: for derived files (the sysfs tree) that are rebuilt
/// from durable state, where atomic visibility matters and durability does not.
pub fn replace_atomic(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    write_atomic_with(path, mode, None, false, |f| f.write_all(data))
}

fn write_atomic_with(
    path: &Path,
    mode: u32,
    gid: Option<u32>,
    sync: bool,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let (tmp, mut f) = create_temp(&dir, &name.to_string_lossy(), mode)?;
    let result = (|| {
        // The umask may have narrowed the mode: set it on the descriptor, as asked.
        if gid.is_some() {
            std::os::unix::fs::fchown(&f, None, gid)?;
        }
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

const TEMP_MARK: &str = ".tmp.";

/// A new temporary file beside `name` in `dir`, created exclusively under a random name.
fn create_temp(dir: &Path, name: &str, mode: u32) -> io::Result<(PathBuf, File)> {
    let mut last = None;
    for _ in 0..8 {
        let tmp = dir.join(format!(".{name}{TEMP_MARK}{:016x}", rand::random::<u64>()));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .mode(mode)
            .open(&tmp)
        {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.expect("eight tries"))
}

/// Removes the temporary files of atomic writes that a crash left in `dir` (they are named
/// `.NAME.tmp.*`; links and directories are left alone). The caller holds the exclusive lock
/// that every writer of `dir` takes, so none of them is being written.
pub fn remove_leftover_temps(dir: &Path) -> io::Result<usize> {
    let mut n = 0;
    for e in fs::read_dir(dir)?.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with('.') && name.contains(TEMP_MARK)) {
            continue;
        }
        if e.file_type().is_ok_and(|t| t.is_file()) && fs::remove_file(e.path()).is_ok() {
            n += 1;
        }
    }
    if n > 0 {
        sync_dir(dir)?;
    }
    Ok(n)
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
    /// Waits for the lock on `path` (created if missing, mode 0600). An exclusive lock first
    /// clears the temporary files a crash left in the lock's directory.
    pub fn acquire(path: &Path, kind: LockKind) -> io::Result<Lock> {
        let f = Self::open(path)?;
        match kind {
            LockKind::Shared => f.lock_shared()?,
            LockKind::Exclusive => {
                f.lock()?;
                remove_leftover_temps(&parent_dir(path))?;
            }
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
            Ok(()) => {
                if kind == LockKind::Exclusive {
                    remove_leftover_temps(&parent_dir(path))?;
                }
                Ok(Some(Lock { _file: f }))
            }
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
        // A temp a crashed run left, with a wide mode: it is never reused, and the next
        // exclusive lock of the directory removes it.
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
        let _l = Lock::acquire(&d.path().join(".lock"), LockKind::Exclusive).unwrap();
        assert!(!leftover.exists());
        assert_eq!(fs::read(&p).unwrap(), b"two", "the file itself stays");
    }

    #[test]
    fn the_group_is_set_on_the_descriptor_not_through_the_path() {
        use std::os::unix::fs::MetadataExt;
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP: chown to another group needs root");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        fs::write(&victim, b"x").unwrap();
        let before = fs::metadata(&victim).unwrap().gid();
        let p = d.path().join("key");
        write_atomic_group(&p, b"k", 0o640, 65534).unwrap();
        let m = fs::metadata(&p).unwrap();
        assert_eq!((m.gid(), m.mode() & 0o777), (65534, 0o640));
        // Replacing a link at the path gives the new file the group, never the link's target.
        std::fs::remove_file(&p).unwrap();
        std::os::unix::fs::symlink(&victim, &p).unwrap();
        write_atomic_group(&p, b"k", 0o640, 65534).unwrap();
        assert_eq!(fs::metadata(&victim).unwrap().gid(), before);
        assert_eq!(fs::read(&victim).unwrap(), b"x");
    }

    #[test]
    fn a_link_planted_where_the_temp_used_to_be_is_never_written_through() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        fs::write(&victim, b"root's file").unwrap();
        fs::set_permissions(&victim, fs::Permissions::from_mode(0o644)).unwrap();
        // The names an attacker could predict before (pid-based) and some random-looking ones.
        for n in [
            format!(".state.json.tmp.{}", std::process::id()),
            ".state.json.tmp.0000000000000000".to_string(),
        ] {
            std::os::unix::fs::symlink(&victim, d.path().join(n)).unwrap();
        }
        let target = d.path().join("state.json");
        write_atomic(&target, b"secret", 0o600).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"root's file");
        assert_eq!(
            fs::metadata(&victim).unwrap().permissions().mode() & 0o777,
            0o644
        );
        // A link at the target itself is replaced, not followed.
        let link = d.path().join("linked");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        write_atomic(&link, b"new", 0o600).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"root's file");
        assert!(!fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        // The cleanup removes no link and nothing but temps.
        let _l = Lock::acquire(&d.path().join(".lock"), LockKind::Exclusive).unwrap();
        assert!(victim.exists() && target.exists());
        assert_eq!(
            fs::read_dir(d.path())
                .unwrap()
                .filter(|e| e.as_ref().unwrap().file_type().unwrap().is_symlink())
                .count(),
            2
        );
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
