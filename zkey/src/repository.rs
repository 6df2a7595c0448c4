//! The secure key repository: a directory holding, per key `<name>`, the files
//!
//! | file          | content                                                        |
//! |---------------|----------------------------------------------------------------|
//! | `<name>.skey` | the secure key blob, opaque here                               |
//! | `<name>.info` | its properties ([`crate::properties`]), with hash and MAC       |
//! | `<name>.renc` | optional: a staged re-enciphered key, waiting for `--complete` |
//! | `<name>.pass` | optional: the dummy LUKS2 passphrase (16 random bytes or a copied file) |
//!
//! and `.lock`, the advisory lock every zkey process takes: shared to read, exclusive to write.
//! The API makes the lock impossible to forget: reading needs a [`Reader`] (from
//! [`Repository::read`]) and changing needs a [`Writer`] (from [`Repository::write`]), each
//! holding the lock for as long as it lives.
//!
//! # Location and permissions
//! `$ZKEY_REPOSITORY`, default `/etc/zkey/repository` ([`default_path`]). The directory must
//! be readable by the caller (and writable to change it) and not writable by others. Its files
//! are read with `O_NOFOLLOW`: a link a group member planted is refused, not followed. Every
//! file gets mode
//! `directory mode & 0664` and the directory's group, so that every member of the group
//! (`zkeyadm`) can use every key.
//!
//! # Durability and damage
//! Every file is replaced atomically (`ap_sim::durable::write_atomic`: temporary file, fsync,
//! rename, fsync directory) and removed durably. Multi-file changes are ordered so that a crash
//! leaves either the old state, the new state, or a *damaged* key that [`Reader::entries`]
//! reports, never a key that looks healthy but is not:
//! - creating writes `.skey` (and `.pass`) first and `.info` last: a crash leaves a key without
//!   `.info`, reported as [`Damage::MissingInfo`];
//! - removing deletes `.info` last, so a crash leaves files that are reported, not ignored.
//!
//! A damaged key is never used, changed or repaired by this module; its only way out is
//! [`Writer::remove_key`] (what `zkey remove --force` does), after which the key can be created
//! again, or restoring its files from a backup.

use std::collections::BTreeSet;
use std::fmt;
use std::fs::{self, OpenOptions};
use std::io;
use std::ops::Deref;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ap_sim::audit::{AuditError, AuditLog, Event, Intent};
use ap_sim::durable::{self, Lock, LockKind};
use rand::RngCore;
use std::sync::Mutex;
use zeroize::Zeroizing;

use crate::integrity::{InfoAuth, Integrity, Refusal};
use crate::keyname::{quote, quote_selecting, KeyName};
use crate::properties::{KeyProperties, Properties, PropertiesError, Timestamp};
use crate::volume::VolumeType;

/// The environment variable naming the repository directory.
pub const REPOSITORY_ENV: &str = "ZKEY_REPOSITORY";
/// The repository directory when `$ZKEY_REPOSITORY` is not set.
pub const DEFAULT_REPOSITORY: &str = "/etc/zkey/repository";
/// The group that [`Repository::create`] gives a new repository, when it exists.
pub const ADMIN_GROUP: &str = "zkeyadm";
/// The lock file inside the repository.
pub const LOCK_FILE: &str = ".lock";
/// Length of a generated dummy passphrase, as in the reference.
pub const DUMMY_PASSPHRASE_LEN: usize = 16;
/// Mode of a new repository directory. The setgid bit (beyond the reference's 0770) makes new
/// files inherit the directory's group at creation, so they never exist with the creator's
/// group even for the moment before the explicit chown.
pub const NEW_REPOSITORY_MODE: u32 = 0o2770;

/// The repository directory: `$ZKEY_REPOSITORY` if set and not empty, else
/// [`DEFAULT_REPOSITORY`].
pub fn default_path() -> PathBuf {
    match std::env::var_os(REPOSITORY_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(DEFAULT_REPOSITORY),
    }
}

/// One of the four files of a key.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum KeyFile {
    Skey,
    Info,
    Renc,
    Pass,
}

impl KeyFile {
    pub const ALL: [KeyFile; 4] = [KeyFile::Skey, KeyFile::Info, KeyFile::Renc, KeyFile::Pass];

    /// The file name extension, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            KeyFile::Skey => "skey",
            KeyFile::Info => "info",
            KeyFile::Renc => "renc",
            KeyFile::Pass => "pass",
        }
    }

    fn from_extension(ext: &str) -> Option<KeyFile> {
        KeyFile::ALL.into_iter().find(|f| f.extension() == ext)
    }
}

impl fmt::Display for KeyFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, ".{}", self.extension())
    }
}

/// What is wrong with a damaged key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Damage {
    /// `.info` (or another file) without `.skey`.
    MissingSkey,
    /// `.skey` (or another file) without `.info`: e.g. a crash while the key was created.
    MissingInfo,
    /// `.skey` is empty.
    EmptySkey,
    /// `.info` was changed outside zkey, or its `__hash__` line is missing.
    HashMismatch,
    /// `.info` cannot be read as properties.
    UnparsableInfo(PropertiesError),
    /// `.info`'s MAC does not match its properties and the key's name: edited, swapped or
    /// copied from another key outside zkey ([`crate::integrity`]).
    BadMac,
    /// `.info` has no MAC, in a repository whose properties are authenticated.
    MacMissing,
    /// A staged `.renc` without the key it belongs to.
    OrphanRenc,
    /// A `.pass` without the key it belongs to.
    OrphanPass,
    /// A file of the key cannot be read.
    Unreadable { file: KeyFile, reason: String },
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Damage::MissingSkey => f.write_str("the .skey file is missing"),
            Damage::MissingInfo => f.write_str("the .info file is missing"),
            Damage::EmptySkey => f.write_str("the .skey file is empty"),
            Damage::HashMismatch => {
                f.write_str("the .info file fails its integrity check (changed outside zkey)")
            }
            Damage::UnparsableInfo(e) => write!(f, "the .info file is invalid: {e}"),
            Damage::BadMac => f.write_str("the .info file fails its MAC: its properties were changed, or it belongs to another key, outside zkey (a swapped or edited key file)"),
            Damage::MacMissing => f.write_str("the .info file has no MAC, but this repository's properties are authenticated: it was replaced outside zkey"),
            Damage::OrphanRenc => f.write_str("a staged .renc file exists without the key"),
            Damage::OrphanPass => f.write_str("a .pass file exists without the key"),
            Damage::Unreadable { file, reason } => write!(f, "the {file} file: {reason}"),
        }
    }
}

/// A key whose files are inconsistent, with everything that is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DamagedKey {
    pub name: KeyName,
    pub damage: Vec<Damage>,
}

impl fmt::Display for DamagedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list: Vec<String> = self.damage.iter().map(Damage::to_string).collect();
        write!(f, "key '{}' is damaged: {}", self.name, list.join("; "))
    }
}

/// A healthy key, read under the repository lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyEntry {
    pub name: KeyName,
    /// The `.skey` content.
    pub secure_key: Vec<u8>,
    pub properties: KeyProperties,
    /// The `.renc` content: a re-enciphered key waiting for `reencipher --complete`.
    pub staged: Option<Vec<u8>>,
    /// Whether a dummy passphrase (`.pass`) exists; read it with [`Reader::read_pass`].
    pub has_pass: bool,
    /// Whether the adapter authenticated the properties ([`crate::integrity`]).
    pub integrity: Integrity,
}

/// Where a dummy LUKS2 passphrase comes from.
pub enum DummyPassphrase {
    /// [`DUMMY_PASSPHRASE_LEN`] random bytes from the OS.
    Generate,
    /// Given content, e.g. a file the user named with `--set-dummy-passphrase`.
    Given(Zeroizing<Vec<u8>>),
}

impl DummyPassphrase {
    fn bytes(self) -> Zeroizing<Vec<u8>> {
        match self {
            DummyPassphrase::Generate => {
                let mut v = Zeroizing::new(vec![0u8; DUMMY_PASSPHRASE_LEN]);
                rand::rngs::OsRng.fill_bytes(&mut v);
                v
            }
            DummyPassphrase::Given(v) => v,
        }
    }
}

/// What happens to a key's dummy passphrase in [`Writer::change_key`].
pub enum PassphraseChange {
    Set(DummyPassphrase),
    Remove,
}

/// What [`Writer::promote_staged`] did.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Promotion {
    /// The staged key is now the key; `.renc` is gone.
    Promoted,
    /// There was no `.renc`: nothing to complete (the reference skips such keys).
    NothingStaged,
}

/// Repository errors. Each message names the path or key and the way out.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("the repository directory {path} does not exist: create it (Repository::create, or the package's installation does) or set {REPOSITORY_ENV} to an existing repository")]
    Missing { path: PathBuf },
    #[error("{path} is not a directory: set {REPOSITORY_ENV} to the repository directory")]
    NotADirectory { path: PathBuf },
    #[error("{path} already exists: open it instead of creating it")]
    AlreadyExists { path: PathBuf },
    #[error("you cannot read and write the repository {path}: run zkey as root or as a member of the directory's group (usually {ADMIN_GROUP}: `usermod -a -G {ADMIN_GROUP} USER`, then log in again)")]
    PermissionDenied { path: PathBuf },
    #[error("the repository {path} is writable by everyone (mode {mode:04o}), which is not accepted because anyone could replace keys: run `chmod o-w {path}`")]
    WorldWritable { path: PathBuf, mode: u32 },
    #[error(
        "cannot give {path} the group {group}: {source}; run as root or as a member of that group"
    )]
    Group {
        path: PathBuf,
        group: String,
        source: io::Error,
    },
    #[error("another zkey process holds the repository lock {lock} (waited {:.1}s): wait for it to finish and retry; `fuser -v {lock}` shows which process holds it", waited.as_secs_f64())]
    Busy { lock: PathBuf, waited: Duration },
    #[error("key '{name}' does not exist in the repository: `zkey list` shows the keys")]
    KeyNotFound { name: KeyName },
    #[error("key '{name}' already exists (possibly as a partial key, see `zkey list`): choose another name, or remove it first with `zkey remove -N {}` (add --force for a damaged key)", quote(.name.as_str()))]
    KeyExists { name: KeyName },
    #[error("{0}; it is not used: restore its files from a backup, or remove it with `zkey remove -N {name} --force`", name = quote(.0.name.as_str()))]
    Damaged(DamagedKey),
    #[error("refusing to store an empty {what} for key '{name}'")]
    Empty { name: KeyName, what: &'static str },
    #[error("key '{name}' has no dummy passphrase: create one with `zkey change -N {} --gen-dummy-passphrase`", quote(.name.as_str()))]
    NoPassphrase { name: KeyName },
    #[error("key '{name}' is not for LUKS2 volumes, and only LUKS2 volumes use a dummy passphrase: change the volume type to luks2 first")]
    PassphraseNeedsLuks2 { name: KeyName },
    #[error("the staged re-enciphered key of '{name}' is not the one that was verified: run `zkey reencipher --complete -N {}` again", quote_selecting(.name.as_str()))]
    StagedChanged { name: KeyName },
    #[error("the properties of key '{name}' cannot be authenticated, so they were not written: {why}; make sure the crypto adapters are reachable ($AP_SIM_DIR) and retry")]
    Unauthenticated { name: KeyName, why: String },
    #[error("the crypto adapter could not record that this repository's properties are authenticated ({why}); nothing else was changed: retry")]
    UpgradeFailed { why: String },
    #[error("the properties of key '{name}' cannot be stored: {source}")]
    Properties {
        name: KeyName,
        source: PropertiesError,
    },
    #[error("key '{new}' is complete, but removing the files of '{old}' failed ({source}): remove them with `zkey remove -N {} --force`", quote(.old.as_str()))]
    RenameIncomplete {
        old: KeyName,
        new: KeyName,
        source: io::Error,
    },
    #[error(transparent)]
    Input(#[from] infra::input::InputError),
    #[error("you can read the repository {path} but not change it, and this command changes it: run it as root or as a member of the directory's group who may write it (usually {ADMIN_GROUP}: `usermod -a -G {ADMIN_GROUP} USER`, then log in again)")]
    ReadOnly { path: PathBuf },
    /// A file of the repository that is a symbolic link.
    #[error(transparent)]
    Untrusted(durable::Untrusted),
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// The intent of a change could not be appended to the audit log, so the change was not made.
    #[error("nothing was changed: the change could not be announced in the audit log first: {0}")]
    Audit(AuditError),
}

/// An `Io` error for `path`, as a `map_err` argument.
fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> RepoError {
    let path = path.to_path_buf();
    move |source| match durable::Untrusted::of(&source) {
        Some(u) => RepoError::Untrusted(u.clone()),
        None => RepoError::Io {
            action,
            path,
            source,
        },
    }
}

/// An opened repository directory. Cheap to keep; it holds no lock until [`Repository::read`]
/// or [`Repository::write`].
#[derive(Clone, Debug)]
pub struct Repository {
    dir: PathBuf,
    /// Mode for every file: the directory's mode & 0664.
    file_mode: u32,
    /// Group for every file: the directory's group.
    gid: u32,
    /// The adapter that authenticates the properties, when one is attached.
    auth: Option<InfoAuth>,
    /// Whether the caller may change the repository; reading needs only read access.
    writable: bool,
}

impl Repository {
    /// Opens an existing repository. Checks that `path` is a directory the caller can read and
    /// that others cannot write, and makes sure the lock file exists. A caller who may only
    /// read it can list and validate; [`Repository::write`] then refuses with
    /// [`RepoError::ReadOnly`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self, RepoError> {
        let path = path.as_ref();
        let meta = fs::metadata(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => RepoError::Missing {
                path: path.to_path_buf(),
            },
            io::ErrorKind::PermissionDenied => RepoError::PermissionDenied {
                path: path.to_path_buf(),
            },
            _ => io_err("inspect", path)(e),
        })?;
        if !meta.is_dir() {
            return Err(RepoError::NotADirectory {
                path: path.to_path_buf(),
            });
        }
        if !accessible(path, false) {
            return Err(RepoError::PermissionDenied {
                path: path.to_path_buf(),
            });
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o002 != 0 {
            return Err(RepoError::WorldWritable {
                path: path.to_path_buf(),
                mode,
            });
        }
        let repo = Repository {
            dir: path.to_path_buf(),
            file_mode: mode & 0o664,
            gid: meta.gid(),
            auth: None,
            writable: accessible(path, true),
        };
        if repo.writable {
            repo.ensure_lock_file()?;
        }
        Ok(repo)
    }

    /// Creates a new, empty repository at `path` (parents are created as needed) with mode
    /// [`NEW_REPOSITORY_MODE`] and group [`ADMIN_GROUP`] if that group exists; otherwise the
    /// directory keeps the caller's group and the administrator should `chgrp` it to the
    /// group of the key administrators. Fails if `path` exists.
    pub fn create(path: impl AsRef<Path>) -> Result<Self, RepoError> {
        let path = path.as_ref();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(io_err("create", parent))?;
        }
        fs::DirBuilder::new()
            .mode(0o700)
            .create(path)
            .map_err(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => RepoError::AlreadyExists {
                    path: path.to_path_buf(),
                },
                _ => io_err("create", path)(e),
            })?;
        // Start private (0700) and widen only once the group is right, so the directory is
        // never open to the creator's unrelated group.
        let setup = || -> Result<(), RepoError> {
            if let Some(gid) = group_id(ADMIN_GROUP) {
                std::os::unix::fs::chown(path, None, Some(gid)).map_err(|source| {
                    RepoError::Group {
                        path: path.to_path_buf(),
                        group: ADMIN_GROUP.to_string(),
                        source,
                    }
                })?;
            }
            fs::set_permissions(path, fs::Permissions::from_mode(NEW_REPOSITORY_MODE))
                .map_err(io_err("set the mode of", path))?;
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                durable::sync_dir(parent).map_err(io_err("sync", parent))?;
            }
            Ok(())
        };
        if let Err(e) = setup() {
            let _ = fs::remove_dir(path);
            return Err(e);
        }
        Repository::open(path)
    }

    /// This repository with its properties authenticated by `auth` (the adapters'
    /// [`ap_sim::sim::Simulator`]): readers check every `.info`'s MAC, writers add one, and the
    /// first writer upgrades an old repository ([`crate::integrity`]). Without it, properties
    /// are read "not verified" and written in the old format.
    pub fn authenticated_by(
        mut self,
        auth: std::sync::Arc<dyn ap_sim::audit::Authenticator>,
    ) -> Self {
        self.auth = Some(InfoAuth::new(&self.dir, auth));
        self
    }

    /// The repository directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The mode every file of the repository gets.
    pub fn file_mode(&self) -> u32 {
        self.file_mode
    }

    /// The path of one file of a key (whether it exists or not), e.g. for crypttab lines.
    pub fn key_file(&self, name: &KeyName, file: KeyFile) -> PathBuf {
        self.dir
            .join(format!("{}.{}", name.as_str(), file.extension()))
    }

    fn lock_path(&self) -> PathBuf {
        self.dir.join(LOCK_FILE)
    }

    /// Takes the shared lock (waiting up to `wait`) for reading.
    pub fn read(&self, wait: Duration) -> Result<Reader<'_>, RepoError> {
        let lock = self.lock(LockKind::Shared, wait)?;
        Ok(Reader {
            repo: self,
            _lock: lock,
            auth: self.auth_state(),
        })
    }

    /// Takes the exclusive lock (waiting up to `wait`) for reading and changing. The first
    /// change with an adapter gives every old-format `.info` its MAC ([`crate::integrity`]).
    pub fn write(&self, wait: Duration) -> Result<Writer<'_>, RepoError> {
        if !self.writable {
            return Err(RepoError::ReadOnly {
                path: self.dir.clone(),
            });
        }
        let lock = self.lock(LockKind::Exclusive, wait)?;
        let w = Writer {
            reader: Reader {
                repo: self,
                _lock: lock,
                auth: self.auth_state(),
            },
            action: Mutex::new(Action::None),
            sealed: std::sync::atomic::AtomicBool::new(false),
        };
        Ok(w)
    }

    fn auth_state(&self) -> AuthState {
        match &self.auth {
            None => AuthState::None("no crypto adapter was available to check its MAC".into()),
            Some(a) => match a.required() {
                Ok(required) => AuthState::Adapter {
                    auth: a.clone(),
                    required,
                },
                Err(e) => AuthState::Failed(format!("the crypto adapter failed: {e}")),
            },
        }
    }

    /// Takes the repository lock, polling until `wait` has passed; then [`RepoError::Busy`].
    /// For callers that must hold the lock across work outside this module.
    pub fn lock(&self, kind: LockKind, wait: Duration) -> Result<Lock, RepoError> {
        if kind == LockKind::Exclusive && !self.writable {
            return Err(RepoError::ReadOnly {
                path: self.dir.clone(),
            });
        }
        let path = self.lock_path();
        let start = Instant::now();
        let mut delay = Duration::from_millis(5);
        loop {
            match Lock::try_acquire(&path, kind) {
                Ok(Some(lock)) => return Ok(lock),
                Ok(None) => {}
                Err(e) if durable::Untrusted::of(&e).is_some() => {
                    return Err(io_err("lock", &path)(e))
                }
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                    return Err(RepoError::PermissionDenied { path })
                }
                Err(e) => return Err(io_err("lock", &path)(e)),
            }
            let waited = start.elapsed();
            if waited >= wait {
                return Err(RepoError::Busy { lock: path, waited });
            }
            std::thread::sleep(delay.min(wait - waited));
            delay = (delay * 2).min(Duration::from_millis(100));
        }
    }

    /// Creates `.lock` with the repository's file mode and group if it is missing, so that
    /// every member of the group can lock (ap-sim's `Lock` would create it 0600).
    fn ensure_lock_file(&self) -> Result<(), RepoError> {
        let path = self.lock_path();
        let created = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(self.file_mode)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                return Err(RepoError::PermissionDenied {
                    path: self.dir.clone(),
                })
            }
            Err(e) => return Err(io_err("create", &path)(e)),
        };
        self.fix_owner(&path, &created)
    }

    /// Gives a new file the repository's mode and group, on its descriptor: a group member who
    /// swapped a link in at its name meanwhile would otherwise have root chmod the link's target.
    fn fix_owner(&self, path: &Path, f: &fs::File) -> Result<(), RepoError> {
        let meta = f.metadata().map_err(io_err("inspect", path))?;
        if meta.mode() & 0o7777 != self.file_mode {
            f.set_permissions(fs::Permissions::from_mode(self.file_mode))
                .map_err(io_err("set the mode of", path))?;
        }
        if meta.gid() != self.gid {
            std::os::unix::fs::fchown(f, None, Some(self.gid)).map_err(|source| {
                RepoError::Group {
                    path: path.to_path_buf(),
                    group: self.gid.to_string(),
                    source,
                }
            })?;
        }
        Ok(())
    }

    /// Atomically replaces a file of the repository, with the repository's mode and group.
    fn write_file(&self, path: &Path, data: &[u8]) -> Result<(), RepoError> {
        durable::write_atomic_group(path, data, self.file_mode, self.gid)
            .map_err(io_err("write", path))
    }

    fn remove_file(&self, path: &Path) -> Result<(), RepoError> {
        durable::remove_durable(path).map_err(io_err("remove", path))
    }
}

/// Whether the caller may read and search `dir`, and also write it if `write` (access(2), as
/// the reference checks).
fn accessible(dir: &Path, write: bool) -> bool {
    use nix::unistd::AccessFlags;
    let mut want = AccessFlags::R_OK | AccessFlags::X_OK;
    if write {
        want |= AccessFlags::W_OK;
    }
    // A path with a NUL byte is an error (EINVAL), so not accessible.
    nix::unistd::access(dir, want).is_ok()
}

/// The id of group `name`, if it exists (getgrnam_r, its buffer grown on ERANGE up to 1 MiB).
fn group_id(name: &str) -> Option<u32> {
    match nix::unistd::Group::from_name(name) {
        Ok(Some(group)) => Some(group.gid.as_raw()),
        _ => None,
    }
}

/// Which files of a key exist.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
struct Present {
    skey: bool,
    info: bool,
    renc: bool,
    pass: bool,
}

impl Present {
    fn any(self) -> bool {
        self.skey || self.info || self.renc || self.pass
    }
    fn get(self, file: KeyFile) -> bool {
        match file {
            KeyFile::Skey => self.skey,
            KeyFile::Info => self.info,
            KeyFile::Renc => self.renc,
            KeyFile::Pass => self.pass,
        }
    }
}

/// Read access to the repository under the shared (or, inside a [`Writer`], exclusive) lock.
#[derive(Debug)]
pub struct Reader<'r> {
    repo: &'r Repository,
    _lock: Lock,
    auth: AuthState,
}

/// Whether and how a reader authenticates properties.
#[derive(Clone, Debug)]
enum AuthState {
    /// No adapter attached (why): properties are "not verified", and written without a MAC.
    None(String),
    /// The attached adapter failed (why): properties are "not verified", and not written.
    Failed(String),
    /// `required`: the repository is upgraded, so a `.info` without a MAC is damage.
    Adapter { auth: InfoAuth, required: bool },
}

/// One key's files as read, before its properties are authenticated.
struct Raw {
    name: KeyName,
    present: Present,
    damage: Vec<Damage>,
    secure_key: Option<Vec<u8>>,
    properties: Option<Properties>,
    staged: Option<Vec<u8>>,
}

impl<'r> Reader<'r> {
    pub fn repository(&self) -> &'r Repository {
        self.repo
    }

    fn exists(&self, path: &Path) -> Result<bool, RepoError> {
        match fs::symlink_metadata(path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("inspect", path)(e)),
        }
    }

    fn present(&self, name: &KeyName) -> Result<Present, RepoError> {
        let f = |file| self.exists(&self.repo.key_file(name, file));
        Ok(Present {
            skey: f(KeyFile::Skey)?,
            info: f(KeyFile::Info)?,
            renc: f(KeyFile::Renc)?,
            pass: f(KeyFile::Pass)?,
        })
    }

    /// The names of all keys, healthy or damaged, sorted. Files whose stem is not a valid key
    /// name (including hidden files such as `.lock` and temporaries) are not keys.
    pub fn list_names(&self) -> Result<Vec<KeyName>, RepoError> {
        let dir = &self.repo.dir;
        let mut names = BTreeSet::new();
        for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
            let entry = entry.map_err(io_err("list", dir))?;
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let file_name = entry.file_name();
            let Some(file_name) = file_name.to_str() else {
                continue;
            };
            let Some((stem, ext)) = file_name.rsplit_once('.') else {
                continue;
            };
            if KeyFile::from_extension(ext).is_none() {
                continue;
            }
            if let Ok(name) = KeyName::new(stem) {
                names.insert(name);
            }
        }
        Ok(names.into_iter().collect())
    }

    /// Reads one key's files, whatever their state. `Err` only for a key that does not exist or
    /// an I/O failure on the directory itself; unreadable files are reported as damage.
    fn read_raw(&self, name: &KeyName) -> Result<Raw, RepoError> {
        let p = self.present(name)?;
        if !p.any() {
            return Err(RepoError::KeyNotFound { name: name.clone() });
        }
        let mut damage = Vec::new();
        let read = |file: KeyFile, damage: &mut Vec<Damage>| -> Option<Vec<u8>> {
            if !p.get(file) {
                return None;
            }
            // Bounded: a device or FIFO planted as a key file is damage, not an endless read.
            let bound = match file {
                KeyFile::Skey | KeyFile::Renc => ap_sim::token::SecureKey::FILE,
                KeyFile::Pass => infra::input::PASSPHRASE,
                KeyFile::Info => {
                    infra::input::Bound::new("properties file", infra::input::TEXT_FILE_MAX)
                }
            };
            infra::input::read_own(&self.repo.key_file(name, file), bound)
                .map(|b| b.to_vec())
                .map_err(|e| {
                    damage.push(Damage::Unreadable {
                        file,
                        reason: e.to_string(),
                    })
                })
                .ok()
        };
        if !p.skey {
            damage.push(Damage::MissingSkey);
        }
        if !p.info {
            damage.push(Damage::MissingInfo);
        }
        let complete = p.skey && p.info;
        if p.renc && !complete {
            damage.push(Damage::OrphanRenc);
        }
        if p.pass && !complete {
            damage.push(Damage::OrphanPass);
        }
        let secure_key = read(KeyFile::Skey, &mut damage);
        if secure_key.as_ref().is_some_and(|k| k.is_empty()) {
            damage.push(Damage::EmptySkey);
        }
        let properties = read(KeyFile::Info, &mut damage).and_then(|data| {
            Properties::parse(&data)
                .map_err(|e| {
                    damage.push(match e {
                        PropertiesError::HashMismatch { .. } | PropertiesError::MissingHash => {
                            Damage::HashMismatch
                        }
                        other => Damage::UnparsableInfo(other),
                    })
                })
                .ok()
        });
        let staged = read(KeyFile::Renc, &mut damage);
        Ok(Raw {
            name: name.clone(),
            present: p,
            damage,
            secure_key,
            properties,
            staged,
        })
    }

    /// Authenticates the properties of `raws` (one adapter call for all of them) and makes
    /// each a healthy or a damaged key.
    fn finish(&self, raws: Vec<Raw>) -> Vec<Result<KeyEntry, DamagedKey>> {
        let verdicts: Vec<Option<Result<Integrity, Refusal>>> = match &self.auth {
            AuthState::None(why) | AuthState::Failed(why) => raws
                .iter()
                .map(|r| {
                    r.properties
                        .as_ref()
                        .map(|_| Ok(Integrity::NotVerified(why.clone())))
                })
                .collect(),
            AuthState::Adapter { auth, required } => {
                let props: Vec<(&str, &Properties)> = raws
                    .iter()
                    .filter_map(|r| r.properties.as_ref().map(|p| (r.name.as_str(), p)))
                    .collect();
                let mut checked = auth.check_all(&props, *required).into_iter();
                raws.iter()
                    .map(|r| r.properties.as_ref().and_then(|_| checked.next()))
                    .collect()
            }
        };
        raws.into_iter()
            .zip(verdicts)
            .map(|(mut r, verdict)| {
                let integrity = match verdict {
                    Some(Ok(i)) => Some(i),
                    Some(Err(Refusal::BadMac)) => {
                        r.damage.push(Damage::BadMac);
                        None
                    }
                    Some(Err(Refusal::MacMissing)) => {
                        r.damage.push(Damage::MacMissing);
                        None
                    }
                    None => None,
                };
                let properties = r.properties.as_ref().and_then(|p| {
                    KeyProperties::from_properties(p)
                        .map_err(|e| r.damage.push(Damage::UnparsableInfo(e)))
                        .ok()
                });
                match (r.secure_key, properties, integrity) {
                    (Some(secure_key), Some(properties), Some(integrity))
                        if r.damage.is_empty() =>
                    {
                        Ok(KeyEntry {
                            name: r.name,
                            secure_key,
                            properties,
                            staged: r.staged,
                            has_pass: r.present.pass,
                            integrity,
                        })
                    }
                    _ => Err(DamagedKey {
                        name: r.name,
                        damage: r.damage,
                    }),
                }
            })
            .collect()
    }

    /// Reads one key, whatever its state (see [`Self::read_raw`]).
    fn load(&self, name: &KeyName) -> Result<Result<KeyEntry, DamagedKey>, RepoError> {
        let raw = self.read_raw(name)?;
        Ok(self.finish(vec![raw]).pop().expect("one key in, one out"))
    }

    /// One healthy key; a damaged key is [`RepoError::Damaged`].
    pub fn entry(&self, name: &KeyName) -> Result<KeyEntry, RepoError> {
        self.load(name)?.map_err(RepoError::Damaged)
    }

    /// Every key, healthy ones as `Ok`, damaged ones as `Err` with what is wrong, sorted by
    /// name, so that `list` and `validate` can report damage next to the healthy keys.
    pub fn entries(&self) -> Result<Vec<Result<KeyEntry, DamagedKey>>, RepoError> {
        let mut raws = Vec::new();
        for name in self.list_names()? {
            match self.read_raw(&name) {
                Ok(raw) => raws.push(raw),
                // Vanished between listing and reading: impossible under the lock unless
                // someone bypasses zkey; it is then simply not there.
                Err(RepoError::KeyNotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(self.finish(raws))
    }

    /// The dummy passphrase of a healthy key.
    pub fn read_pass(&self, name: &KeyName) -> Result<Zeroizing<Vec<u8>>, RepoError> {
        let entry = self.entry(name)?;
        if !entry.has_pass {
            return Err(RepoError::NoPassphrase { name: name.clone() });
        }
        let path = self.repo.key_file(name, KeyFile::Pass);
        Ok(infra::input::read_own(&path, infra::input::PASSPHRASE)?)
    }
}

/// Read and write access to the repository under the exclusive lock.
#[derive(Debug)]
pub struct Writer<'r> {
    reader: Reader<'r>,
    action: Mutex<Action>,
    /// Whether old-format `.info` files were given their MAC: at the first change, so that a
    /// command its checks refuse changes nothing, not even the format.
    sealed: std::sync::atomic::AtomicBool,
}

/// The audit record of the action a [`Writer`] is doing.
#[derive(Debug)]
enum Action {
    None,
    /// Declared, nothing changed yet: the intent is appended at the first change.
    Declared(AuditLog, Event),
    Written(AuditLog, Intent),
}

impl<'r> Deref for Writer<'r> {
    type Target = Reader<'r>;
    fn deref(&self) -> &Reader<'r> {
        &self.reader
    }
}

impl<'r> Writer<'r> {
    /// Declares the action this writer is about to do: its intent is appended to `log` just
    /// before its first change ([`Writer::changing`]), so that a command refused by its checks
    /// leaves the log as it was, and a change is never on disk without its intent. Returns false
    /// (and declares nothing) while another action is declared: that one covers this one.
    pub fn intend(&self, log: AuditLog, intent: Event) -> bool {
        let mut a = self.action.lock().unwrap_or_else(|e| e.into_inner());
        if !matches!(*a, Action::None) {
            return false;
        }
        *a = Action::Declared(log, intent);
        true
    }

    /// Called before every durable change, here and by the operations for changes outside the
    /// repository's files (a KMS, a volume header): appends the declared intent the first time.
    /// If the log refuses it (its tail was cut), the change must not be made, and is not.
    pub fn changing(&self) -> Result<(), RepoError> {
        let mut a = self.action.lock().unwrap_or_else(|e| e.into_inner());
        if let Action::Declared(log, event) = &*a {
            let intent = log.append_intent(event.clone()).map_err(RepoError::Audit)?;
            *a = Action::Written(log.clone(), intent);
        }
        drop(a);
        if !self.sealed.swap(true, std::sync::atomic::Ordering::SeqCst) {
            self.seal_old_format()?;
        }
        Ok(())
    }

    /// Ends the declared action: its log and intent if the intent was written (something was
    /// changed, or begun to be), for the results to follow.
    pub fn end_action(&self) -> Option<(AuditLog, Intent)> {
        let mut a = self.action.lock().unwrap_or_else(|e| e.into_inner());
        match std::mem::replace(&mut *a, Action::None) {
            Action::Written(log, intent) => Some((log, intent)),
            _ => None,
        }
    }

    fn write_file(&self, path: &Path, data: &[u8]) -> Result<(), RepoError> {
        self.changing()?;
        self.repo.write_file(path, data)
    }

    fn remove_file(&self, path: &Path) -> Result<(), RepoError> {
        self.changing()?;
        self.repo.remove_file(path)
    }

    /// The `.info` content of `props`, with its MAC when an adapter is attached.
    fn render(&self, name: &KeyName, props: &KeyProperties) -> Result<String, RepoError> {
        let p = props
            .to_properties()
            .map_err(|source| RepoError::Properties {
                name: name.clone(),
                source,
            })?;
        self.seal(name, p)
    }

    fn seal(&self, name: &KeyName, mut p: Properties) -> Result<String, RepoError> {
        match &self.auth {
            AuthState::Adapter { auth, .. } => {
                let mac = auth
                    .mac(name.as_str(), &p)
                    .map_err(|e| RepoError::Unauthenticated {
                        name: name.clone(),
                        why: e.to_string(),
                    })?;
                p.set_mac(Some(mac));
            }
            // The old format, for library callers without adapters.
            AuthState::None(_) => p.set_mac(None),
            AuthState::Failed(why) => {
                return Err(RepoError::Unauthenticated {
                    name: name.clone(),
                    why: why.clone(),
                })
            }
        }
        Ok(p.render())
    }

    /// At the first change, once per repository: gives every old-format `.info` (its hash
    /// intact) a MAC, then records in the adapter that MACs are required from now on. The
    /// keys this command reads afterwards all have their MAC, so the reader's state stays.
    fn seal_old_format(&self) -> Result<(), RepoError> {
        let AuthState::Adapter {
            auth,
            required: false,
        } = &self.auth
        else {
            return Ok(());
        };
        for name in self.list_names()? {
            let raw = match self.read_raw(&name) {
                Ok(raw) => raw,
                Err(RepoError::KeyNotFound { .. }) => continue,
                Err(e) => return Err(e),
            };
            let Some(p) = raw.properties.filter(|p| p.mac().is_none()) else {
                continue;
            };
            let info = self.seal(&name, p)?;
            self.repo
                .write_file(&self.repo.key_file(&name, KeyFile::Info), info.as_bytes())?;
        }
        auth.mark_required()
            .map_err(|e| RepoError::UpgradeFailed { why: e.to_string() })
    }

    fn require_absent(&self, name: &KeyName) -> Result<(), RepoError> {
        if self.present(name)?.any() {
            return Err(RepoError::KeyExists { name: name.clone() });
        }
        Ok(())
    }

    /// Creates a key. Refuses a name for which any of the four files exists. Sets
    /// `creation-time`. Crash-safe: `.skey` and `.pass` are written before `.info`, so an
    /// interrupted create leaves a key without `.info` that [`Reader::entries`] reports and
    /// [`Writer::remove_key`] clears. On an ordinary error the files written so far are removed.
    pub fn create_key(
        &self,
        name: &KeyName,
        secure_key: &[u8],
        props: &KeyProperties,
        pass: Option<DummyPassphrase>,
    ) -> Result<(), RepoError> {
        self.require_absent(name)?;
        if secure_key.is_empty() {
            return Err(RepoError::Empty {
                name: name.clone(),
                what: "secure key",
            });
        }
        if pass.is_some() && props.volume_type != VolumeType::Luks2 {
            return Err(RepoError::PassphraseNeedsLuks2 { name: name.clone() });
        }
        let pass = pass.map(DummyPassphrase::bytes);
        if pass.as_ref().is_some_and(|p| p.is_empty()) {
            return Err(RepoError::Empty {
                name: name.clone(),
                what: "dummy passphrase",
            });
        }
        let mut props = props.clone();
        props.creation_time = Some(Timestamp::now());
        // Render before touching the disk, so invalid properties leave nothing behind.
        let info = self.render(name, &props)?;

        let mut written = Vec::new();
        let result = (|| {
            let mut put = |file: KeyFile, data: &[u8]| {
                let path = self.repo.key_file(name, file);
                written.push(path.clone());
                self.write_file(&path, data)
            };
            put(KeyFile::Skey, secure_key)?;
            if let Some(pass) = &pass {
                put(KeyFile::Pass, pass)?;
            }
            put(KeyFile::Info, info.as_bytes())
        })();
        if result.is_err() {
            for path in written.iter().rev() {
                let _ = self.repo.remove_file(path);
            }
        }
        result
    }

    /// Replaces the secure key of a healthy key (in-place re-encipher, refresh).
    pub fn write_skey(&self, name: &KeyName, secure_key: &[u8]) -> Result<(), RepoError> {
        self.entry(name)?;
        if secure_key.is_empty() {
            return Err(RepoError::Empty {
                name: name.clone(),
                what: "secure key",
            });
        }
        self.write_file(&self.repo.key_file(name, KeyFile::Skey), secure_key)
    }

    /// Replaces the properties of a healthy key, setting `update-time` and a fresh hash. A key
    /// that is no longer for LUKS2 volumes loses its dummy passphrase, as in the reference.
    pub fn write_info(&self, name: &KeyName, props: &KeyProperties) -> Result<(), RepoError> {
        self.change_key(name, props, None)
    }

    /// Replaces a healthy key's properties and, with them, its dummy passphrase, as one change
    /// (`zkey change`): every check is made and every file rendered before the first write, so
    /// a refused change leaves the key as it was. The writes are ordered so that a crash between
    /// them leaves a healthy key: a new `.pass` first (a crash leaves the old properties with
    /// the new passphrase), then `.info`, then a `.pass` that goes away (a crash leaves an unused
    /// one). A key that is no longer for LUKS2 volumes loses its dummy passphrase.
    pub fn change_key(
        &self,
        name: &KeyName,
        props: &KeyProperties,
        pass: Option<PassphraseChange>,
    ) -> Result<(), RepoError> {
        let entry = self.entry(name)?;
        let (new_pass, remove) = match pass {
            Some(PassphraseChange::Set(d)) => {
                if props.volume_type != VolumeType::Luks2 {
                    return Err(RepoError::PassphraseNeedsLuks2 { name: name.clone() });
                }
                let bytes = d.bytes();
                if bytes.is_empty() {
                    return Err(RepoError::Empty {
                        name: name.clone(),
                        what: "dummy passphrase",
                    });
                }
                (Some(bytes), false)
            }
            Some(PassphraseChange::Remove) => (None, true),
            None => (None, false),
        };
        let remove = entry.has_pass && (remove || props.volume_type != VolumeType::Luks2);
        let mut props = props.clone();
        props.update_time = Some(Timestamp::now());
        let info = self.render(name, &props)?;
        if let Some(pass) = &new_pass {
            self.write_file(&self.repo.key_file(name, KeyFile::Pass), pass)?;
        }
        self.write_file(&self.repo.key_file(name, KeyFile::Info), info.as_bytes())?;
        if remove {
            self.remove_file(&self.repo.key_file(name, KeyFile::Pass))?;
        }
        Ok(())
    }

    fn put_info(&self, name: &KeyName, props: &KeyProperties) -> Result<(), RepoError> {
        let info = self.render(name, props)?;
        self.write_file(&self.repo.key_file(name, KeyFile::Info), info.as_bytes())
    }

    /// Stores a staged re-enciphered key (`.renc`), replacing an earlier one.
    pub fn write_staged(&self, name: &KeyName, secure_key: &[u8]) -> Result<(), RepoError> {
        self.entry(name)?;
        if secure_key.is_empty() {
            return Err(RepoError::Empty {
                name: name.clone(),
                what: "staged key",
            });
        }
        self.write_file(&self.repo.key_file(name, KeyFile::Renc), secure_key)
    }

    /// Removes a staged key of a healthy key; `Ok(false)` if there was none.
    pub fn remove_staged(&self, name: &KeyName) -> Result<bool, RepoError> {
        let entry = self.entry(name)?;
        if entry.staged.is_some() {
            self.remove_file(&self.repo.key_file(name, KeyFile::Renc))?;
        }
        Ok(entry.staged.is_some())
    }

    /// Sets (or replaces) the dummy passphrase of a healthy LUKS2 key.
    pub fn write_pass(&self, name: &KeyName, pass: DummyPassphrase) -> Result<(), RepoError> {
        let entry = self.entry(name)?;
        if entry.properties.volume_type != VolumeType::Luks2 {
            return Err(RepoError::PassphraseNeedsLuks2 { name: name.clone() });
        }
        let pass = pass.bytes();
        if pass.is_empty() {
            return Err(RepoError::Empty {
                name: name.clone(),
                what: "dummy passphrase",
            });
        }
        self.write_file(&self.repo.key_file(name, KeyFile::Pass), &pass)
    }

    /// Removes the dummy passphrase of a healthy key; `Ok(false)` if there was none.
    pub fn remove_pass(&self, name: &KeyName) -> Result<bool, RepoError> {
        let entry = self.entry(name)?;
        if entry.has_pass {
            self.remove_file(&self.repo.key_file(name, KeyFile::Pass))?;
        }
        Ok(entry.has_pass)
    }

    /// Removes every file of a key, healthy or damaged: this is also the recovery path for a
    /// partial key (`zkey remove --force`). `.info` goes last, so an interrupted remove leaves
    /// a key that is reported as damaged, never one that silently lost its properties.
    /// Confirmation and KMS deregistration are the caller's business and come first.
    pub fn remove_key(&self, name: &KeyName) -> Result<(), RepoError> {
        if !self.present(name)?.any() {
            return Err(RepoError::KeyNotFound { name: name.clone() });
        }
        for file in [KeyFile::Renc, KeyFile::Pass, KeyFile::Skey, KeyFile::Info] {
            self.remove_file(&self.repo.key_file(name, file))?;
        }
        Ok(())
    }

    /// Renames a healthy key. Every file is first hard-linked to its new name (which fails
    /// rather than overwrite anything), but `.info`, written anew with a MAC for the new name; if one link fails, the new links are removed and the
    /// key is unchanged. Only then are the old names removed, `.info` last. A crash in the
    /// first phase leaves the old key intact plus a partial new one; in the second a complete
    /// new key plus a partial old one: both are reported and cleared with `remove --force`.
    /// The repository must be on a file system with hard links (any Linux /etc is).
    pub fn rename_key(&self, old: &KeyName, new: &KeyName) -> Result<(), RepoError> {
        self.rename_with(old, new, |from, to| fs::hard_link(from, to))
    }

    fn rename_with(
        &self,
        old: &KeyName,
        new: &KeyName,
        link: impl Fn(&Path, &Path) -> io::Result<()>,
    ) -> Result<(), RepoError> {
        let entry = self.entry(old)?;
        if old == new {
            return Ok(());
        }
        self.require_absent(new)?;
        self.changing()?;
        let order = [KeyFile::Skey, KeyFile::Pass, KeyFile::Renc, KeyFile::Info];
        let files: Vec<KeyFile> = order
            .into_iter()
            .filter(|f| match f {
                KeyFile::Pass => entry.has_pass,
                KeyFile::Renc => entry.staged.is_some(),
                _ => true,
            })
            .collect();
        // The MAC binds `.info` to the key's name: the new name gets its own, sealed for it.
        let info = self.render(new, &entry.properties)?;
        let mut linked: Vec<PathBuf> = Vec::new();
        for &file in &files {
            let (from, to) = (self.repo.key_file(old, file), self.repo.key_file(new, file));
            let done = if file == KeyFile::Info {
                self.repo.write_file(&to, info.as_bytes())
            } else {
                link(&from, &to).map_err(io_err("link", &to))
            };
            if let Err(e) = done {
                for path in linked.iter().rev() {
                    let _ = fs::remove_file(path);
                }
                let _ = durable::sync_dir(&self.repo.dir);
                return Err(e);
            }
            linked.push(to);
        }
        durable::sync_dir(&self.repo.dir).map_err(io_err("sync", &self.repo.dir))?;
        let mut unlink_order = files;
        unlink_order.sort_by_key(|f| *f == KeyFile::Info);
        for file in unlink_order {
            durable::remove_durable(&self.repo.key_file(old, file)).map_err(|source| {
                RepoError::RenameIncomplete {
                    old: old.clone(),
                    new: new.clone(),
                    source,
                }
            })?;
        }
        Ok(())
    }

    /// Copies a healthy key to a new name with the given properties (the caller decides which
    /// to keep: the reference drops volumes and KMS binding). The dummy passphrase is copied
    /// from `.pass` (the reference copies `.skey` into it; we do not). A staged `.renc` is not
    /// copied: it belongs to the original key's re-encipher.
    pub fn copy_key(
        &self,
        src: &KeyName,
        dst: &KeyName,
        props: &KeyProperties,
    ) -> Result<(), RepoError> {
        let entry = self.entry(src)?;
        let pass = if entry.has_pass {
            Some(DummyPassphrase::Given(self.read_pass(src)?))
        } else {
            None
        };
        self.create_key(dst, &entry.secure_key, props, pass)
    }

    /// Completes a staged re-encipher: `.skey` := `.renc`, write `.info` (with
    /// `reencipher-time` and `update-time` set), delete `.renc`.
    ///
    /// Contract: the caller has just verified `verified_staged` (the `.renc` content it read
    /// from [`Reader::entry`] under this same lock) as valid under the CURRENT master key with
    /// the expected verification pattern; if `.renc` now differs, nothing is changed.
    ///
    /// Crash-safe and idempotent: after a crash at any step `.renc` still exists until the
    /// last step, so a re-run (read, verify, promote) writes the same bytes again and
    /// converges; after the last step there is nothing staged and the key is skipped.
    pub fn promote_staged(
        &self,
        name: &KeyName,
        verified_staged: &[u8],
        props: &KeyProperties,
    ) -> Result<Promotion, RepoError> {
        let entry = self.entry(name)?;
        let Some(staged) = entry.staged else {
            return Ok(Promotion::NothingStaged);
        };
        if staged != verified_staged {
            return Err(RepoError::StagedChanged { name: name.clone() });
        }
        self.write_file(&self.repo.key_file(name, KeyFile::Skey), &staged)?;
        let mut props = props.clone();
        let now = Timestamp::now();
        props.reencipher_time = Some(now.clone());
        props.update_time = Some(now);
        self.put_info(name, &props)?;
        self.remove_file(&self.repo.key_file(name, KeyFile::Renc))?;
        Ok(Promotion::Promoted)
    }
}

#[cfg(test)]
mod tests;
