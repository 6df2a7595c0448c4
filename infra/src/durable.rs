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
//!
//! Reading goes through [`open_nofollow`] / [`read_nofollow`]: a file of the suite's own that
//! is a symbolic link is refused, never followed, since whoever can write its directory may have
//! planted the link to make root read, append to or lock another file. Files whose content is
//! trusted (the simulator's master keys) are also refused when someone other than the caller or
//! root owns them or can write them ([`open_trusted`], [`check_trusted`]).

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Atomically replaces `path` with `data`, created with `mode` (subject to the umask).
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    write_atomic_with(path, mode, None, true, Replace::Yes, |f| f.write_all(data))
}

/// [`write_atomic`] for a file that must not exist yet: `AlreadyExists` if anything, a link
/// included, is at `path` when the finished file is put there (by link(2), which neither
/// replaces nor follows), so a file planted after a caller looked is not replaced either.
pub fn write_new_atomic(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    write_atomic_with(path, mode, None, true, Replace::No, |f| f.write_all(data))
}

/// Whether the finished temporary file may replace what is at the target.
#[derive(Copy, Clone, PartialEq, Eq)]
enum Replace {
    Yes,
    No,
}

/// [`write_atomic`], the new file also given group `gid`: on the open descriptor, before the
/// rename, so that no path (and no link someone swaps in) is followed to do it.
pub fn write_atomic_group(path: &Path, data: &[u8], mode: u32, gid: u32) -> io::Result<()> {
    write_atomic_with(path, mode, Some(gid), true, Replace::Yes, |f| {
        f.write_all(data)
    })
}

/// Like [`write_atomic`] but without fsync: for derived files (the sysfs tree) that are rebuilt
/// from durable state, where atomic visibility matters and durability does not.
pub fn replace_atomic(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    write_atomic_with(path, mode, None, false, Replace::Yes, |f| f.write_all(data))
}

fn write_atomic_with(
    path: &Path,
    mode: u32,
    gid: Option<u32>,
    sync: bool,
    replace: Replace,
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
        match replace {
            Replace::Yes => fs::rename(&tmp, path)?,
            Replace::No => put_new(&tmp, path)?,
        }
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

/// Why a file of the suite's own is not used: carried inside the `io::Error` the readers here
/// return (get it back with [`Untrusted::of`]), so that callers can turn it into their typed error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Untrusted {
    /// The path is a symbolic link.
    Symlink { path: PathBuf },
    /// Owned by a user other than the caller and root.
    Owner { path: PathBuf, uid: u32, me: u32 },
    /// Writable by its group or by others.
    Writable { path: PathBuf, mode: u32 },
}

impl fmt::Display for Untrusted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Untrusted::Symlink { path } => write!(
                f,
                "{} is a symbolic link, which is not followed (whoever can write its directory could point it at another file): replace it with the real file or remove it",
                path.display()
            ),
            Untrusted::Owner { path, uid, me } => write!(
                f,
                "{} is owned by uid {uid}, not by you (uid {me}) or root, so its owner could replace its content: check it, then `chown {me} {}` (or `chown root`)",
                path.display(),
                path.display()
            ),
            Untrusted::Writable { path, mode } => write!(
                f,
                "{} has mode {mode:04o}: its group or others could replace its content: check it, then `chmod go-w {}`",
                path.display(),
                path.display()
            ),
        }
    }
}

impl std::error::Error for Untrusted {}

impl Untrusted {
    /// The refusal inside an error of [`open_nofollow`], [`read_nofollow`], [`open_trusted`],
    /// [`check_trusted`] or [`Lock::acquire`], if that is what it is.
    pub fn of(e: &io::Error) -> Option<&Untrusted> {
        e.get_ref()?.downcast_ref()
    }

    fn into_io(self) -> io::Error {
        io::Error::new(io::ErrorKind::PermissionDenied, self)
    }
}

/// O_NOFOLLOW's ELOOP on a link at the last component becomes [`Untrusted::Symlink`]: for
/// callers that open with O_NOFOLLOW themselves (e.g. to append).
pub fn nofollow_error(path: &Path, e: io::Error) -> io::Error {
    let link = e.raw_os_error() == Some(libc::ELOOP)
        && fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    if link {
        Untrusted::Symlink {
            path: path.to_path_buf(),
        }
        .into_io()
    } else {
        e
    }
}

/// Opens an existing file for reading; a symbolic link at `path` is refused, not followed.
pub fn open_nofollow(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| nofollow_error(path, e))
}

/// Reads a whole file; a symbolic link at `path` is refused, not followed.
pub fn read_nofollow(path: &Path) -> io::Result<Vec<u8>> {
    let mut f = open_nofollow(path)?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    Ok(buf)
}

/// Refuses a symbolic link at `path` (a missing path is fine): for a directory of the suite's
/// own, through which a planted link would redirect every write and rename to another directory.
pub fn refuse_link_at(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(Untrusted::Symlink {
            path: path.to_path_buf(),
        }
        .into_io()),
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Opens a directory (to fchmod or fsync it) without following a link at `path`.
pub fn open_dir_nofollow(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| nofollow_error(path, e))
}

/// Refuses `meta` (of `path`) unless the caller or root owns it and neither its group nor
/// others can write it: the conditions under which nobody else can change what it says.
pub fn check_trusted(path: &Path, meta: &fs::Metadata) -> io::Result<()> {
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(Untrusted::Owner {
            path: path.to_path_buf(),
            uid: meta.uid(),
            me,
        }
        .into_io());
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(Untrusted::Writable {
            path: path.to_path_buf(),
            mode,
        }
        .into_io());
    }
    Ok(())
}

/// [`open_nofollow`], and the open file (not the path, which could be swapped meanwhile) must
/// pass [`check_trusted`].
pub fn open_trusted(path: &Path) -> io::Result<File> {
    let f = open_nofollow(path)?;
    check_trusted(path, &f.metadata()?)?;
    Ok(f)
}

/// Puts the finished `tmp` at `path` unless something is there: link(2), or on a file system
/// without hard links rename(2) with RENAME_NOREPLACE; neither follows a link at `path`.
fn put_new(tmp: &Path, path: &Path) -> io::Result<()> {
    match fs::hard_link(tmp, path) {
        Ok(()) => fs::remove_file(tmp),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EOPNOTSUPP)) => {
            use nix::fcntl::{renameat2, RenameFlags};
            renameat2(None, tmp, None, path, RenameFlags::RENAME_NOREPLACE).map_err(io::Error::from)
        }
        Err(e) => Err(e),
    }
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

/// Creates `dir` and its missing parents, each new one with exactly `mode` (set explicitly, so
/// that a umask of 000 cannot widen it); directories that exist are left as they are.
pub fn create_dir_all_mode(dir: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_all_mode(parent, mode)?;
    }
    match fs::DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => fs::set_permissions(dir, fs::Permissions::from_mode(mode)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
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
    /// Waits for the lock on `path` (created if missing, mode 0600; a symbolic link there is
    /// refused). An exclusive lock first clears the temporary files a crash left in the lock's
    /// directory. A shared lock needs only read access to an existing lock file.
    pub fn acquire(path: &Path, kind: LockKind) -> io::Result<Lock> {
        let f = Self::open(path, kind)?;
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
        let f = Self::open(path, kind)?;
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

    fn open(path: &Path, kind: LockKind) -> io::Result<File> {
        // flock needs no write access: a reader who may only read the directory can still
        // wait for its writers.
        if kind == LockKind::Shared {
            match open_nofollow(path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                r => return r,
            }
        }
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| nofollow_error(path, e))
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
    fn a_link_is_refused_by_name_by_readers_and_by_locks() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        fs::write(&victim, b"root's file").unwrap();
        let link = d.path().join("state.json");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let e = read_nofollow(&link).unwrap_err();
        assert_eq!(
            Untrusted::of(&e),
            Some(&Untrusted::Symlink { path: link.clone() })
        );
        assert!(e.to_string().contains("is a symbolic link"), "{e}");
        assert!(e
            .to_string()
            .contains("replace it with the real file or remove it"));
        let lock = d.path().join(".lock");
        std::os::unix::fs::symlink(&victim, &lock).unwrap();
        for kind in [LockKind::Shared, LockKind::Exclusive] {
            let e = Lock::acquire(&lock, kind).unwrap_err();
            assert!(Untrusted::of(&e).is_some(), "{e}");
        }
        assert_eq!(fs::read(&victim).unwrap(), b"root's file");
        // A missing file stays NotFound, for callers that treat it as "none yet".
        let e = read_nofollow(&d.path().join("nothing")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn files_others_can_write_are_not_trusted() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.json");
        fs::write(&p, b"{}").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(open_trusted(&p).is_ok());
        fs::set_permissions(&p, fs::Permissions::from_mode(0o620)).unwrap();
        let e = open_trusted(&p).unwrap_err();
        assert!(matches!(
            Untrusted::of(&e),
            Some(Untrusted::Writable { mode: 0o620, .. })
        ));
        assert!(e.to_string().contains("chmod go-w"), "{e}");
        if nix::unistd::geteuid().is_root() {
            fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
            std::os::unix::fs::chown(&p, Some(65534), None).unwrap();
            let e = open_trusted(&p).unwrap_err();
            assert!(matches!(
                Untrusted::of(&e),
                Some(Untrusted::Owner { uid: 65534, .. })
            ));
            assert!(e.to_string().contains("chown"), "{e}");
        }
    }

    #[test]
    fn a_new_file_never_replaces_what_is_there() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        fs::write(&victim, b"root's file").unwrap();
        let out = d.path().join("out.key");
        std::os::unix::fs::symlink(&victim, &out).unwrap();
        let e = write_new_atomic(&out, b"key", 0o600).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&victim).unwrap(), b"root's file");
        assert!(fs::symlink_metadata(&out).unwrap().file_type().is_symlink());
        let fresh = d.path().join("fresh.key");
        write_new_atomic(&fresh, b"key", 0o600).unwrap();
        assert_eq!(fs::read(&fresh).unwrap(), b"key");
        assert_eq!(
            fs::read_dir(d.path()).unwrap().count(),
            3,
            "no temp is left"
        );
    }

    #[test]
    fn directories_get_their_mode_whatever_the_umask() {
        let d = tempfile::tempdir().unwrap();
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::empty());
        let p = d.path().join("a/b");
        let r = create_dir_all_mode(&p, 0o700);
        nix::sys::stat::umask(old);
        r.unwrap();
        for q in [d.path().join("a"), p] {
            assert_eq!(fs::metadata(&q).unwrap().mode() & 0o7777, 0o700);
        }
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
