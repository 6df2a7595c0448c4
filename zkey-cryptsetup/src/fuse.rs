//! The decrypted volume as a file, served over FUSE: the data path of `zkey-cryptsetup open`.
//!
//! On IBM Z, `zkey-cryptsetup open` (really `cryptsetup open`) asks dm-crypt for
//! `/dev/mapper/NAME`. The kernels this suite runs on may have no device-mapper, so instead a small
//! server process mounts a FUSE file system whose root *is* a regular file holding the decrypted
//! payload: reads are decrypted and writes encrypted with [`crate::xts::XtsEngine`], sector by
//! sector, exactly as dm-crypt `aes-xts-plain64` would on the same volume key (the plain64 tweak
//! counts 512-byte units from the start of the payload). The file can back a loop device
//! (`losetup -f --show FILE`), which then behaves like `/dev/mapper/NAME`: mkfs, mount, fsck.
//!
//! # Layout (what a user sees)
//!
//! Everything lives in one run directory: `$ZKEY_CRYPTSETUP_RUN_DIR`, else
//! [`DEFAULT_RUN_DIR`] (`/run/zkey-cryptsetup`), created mode 0700.
//!
//! | path | what it is |
//! |---|---|
//! | `RUN/NAME` | the decrypted volume: a single-file FUSE mount (the mount point is a regular file, the file system's root is the volume), mode 0600, size = payload size. The analogue of `/dev/mapper/NAME`. |
//! | `RUN/.NAME.pid` | the server's state file: pid, device and its identity (device and inode, or device number), offset, size, sector size (never key material). The server holds an exclusive `flock` on it for as long as it runs, so "is NAME open" is "is that lock held", and `close` waits for the lock to be released to know the server has exited. |
//! | `RUN/.open.lock` | `flock` held by [`open`] from its check that the device is not open under another name until the new server holds its own lock, so that two opens of one device under two names cannot both pass the check. |
//!
//! A single-file mount was chosen over a directory holding one file because the path then names
//! the volume itself, as `/dev/mapper/NAME` does, and there is nothing else to put in a directory.
//!
//! # Process model and the key
//!
//! The server must hold the volume's effective key and nothing else secret: not the
//! passphrase, not the secure key, not the simulator's state (every master key and the audit
//! key) that deriving the effective key reads. A process forked *after* those were in memory
//! would inherit every copy of them, including the ones nobody can zeroize (a `Vec` that grew
//! and left its old buffer behind, serde's and stdin's buffers, stack frames). So the server is
//! forked *before*: [`Server::spawn`] forks (twice, so the server is re-parented and never a
//! zombie of the caller) and the new process waits, with nothing secret in its memory, until
//! [`Server::open`] hands it the mapping (geometry and effective key) through a pipe. Callers
//! that handle secrets spawn first ([`crate::volume::open`] does it before it reads the
//! passphrase); [`open`] spawns and hands over at once, for callers that hold nothing but the
//! effective key. The key never passes through argv, the environment or a file.
//!
//! The server closes every inherited descriptor, detaches (`setsid`, stdio on `/dev/null`),
//! marks itself non-dumpable (`PR_SET_DUMPABLE` 0: no core dumps, no ptrace by other users) and,
//! as root, locks all its memory ([`infra::sys::lock_all_memory`]: every page that will ever hold
//! the key, the engine's key schedules, the stacks of its workers, is kept out of swap); without
//! root it `mlock`s the engine's key schedules only (best effort). It builds the XTS engine,
//! drops the raw key (zeroized), reports "mounted" or the error through a close-on-exec pipe,
//! and [`Server::open`] returns only when the kernel has completed the FUSE handshake. The
//! caller drops its copy of the key (zeroized) as soon as it is handed over. The server exits
//! when the file system is unmounted ([`close`], `umount`, or SIGTERM/SIGINT, which unmount it
//! lazily), or at once when the caller drops the [`Server`] without handing it a mapping; the
//! engine's round keys are zeroized as it is dropped.
//!
//! Forking, not re-executing the current binary, keeps this a library: any binary, including
//! test binaries, can call [`open`] without providing a hidden subcommand. The cost is the usual
//! fork-in-a-threaded-process rule: between `fork` and the end of set-up the child touches
//! nothing that another thread could hold locked (no stdio, no environment, its own thread pool).
//!
//! # Semantics (those of a block device)
//!
//! Reads past the end return end-of-file, reads that cross it are clamped. Writes that start at
//! or past the end fail with `ENOSPC`, writes that cross it are shortened. Any I/O error on the
//! underlying device is `EIO`. `fsync` and `flush` (every `close(2)`) call `fdatasync` on the
//! device. Unaligned writes read, decrypt, patch, re-encrypt and write back the partial sectors
//! at their edges; they are serialised against other writes by a lock, so two partial writes
//! into one sector never lose each other's bytes, while aligned writes and all reads proceed in
//! parallel on a pool of worker threads.

use std::ffi::{CString, OsStr};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;

use fuser::{
    FileAttr, FileType, Filesystem, KernelConfig, MountOption, ReplyAttr, ReplyData, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyWrite, Request, TimeOrNow,
};
use zeroize::Zeroizing;

use crate::xts::{XtsEngine, XtsError, SECTOR_SIZES};

/// Where mappings live unless `ZKEY_CRYPTSETUP_RUN_DIR` says otherwise.
pub const DEFAULT_RUN_DIR: &str = "/run/zkey-cryptsetup";
/// Environment variable overriding [`DEFAULT_RUN_DIR`] (tests use it).
pub const RUN_DIR_ENV: &str = "ZKEY_CRYPTSETUP_RUN_DIR";

/// The one inode: the file system's root, which is the volume file.
const ROOT_INO: u64 = fuser::FUSE_ROOT_ID;
/// Attributes never change behind the kernel's back (size is fixed), so cache them for long.
const ATTR_TTL: Duration = Duration::from_secs(3600);
/// How long [`open`] waits for the server to mount, and [`close`] for it to exit.
const SERVER_TIMEOUT: Duration = Duration::from_secs(30);
/// Worker threads serving requests: enough to keep a few devices' queues busy even on 2 cores.
const MIN_WORKERS: usize = 4;

/// Errors of the FUSE data path.
#[derive(Debug, thiserror::Error)]
pub enum FuseError {
    #[error("invalid mapping: {0}")]
    Invalid(String),
    #[error("invalid mapping name {0:?}: use 1-127 characters of A-Z a-z 0-9 . _ + -, not starting with '.'")]
    Name(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Xts(#[from] XtsError),
    #[error("mapping {0:?} is already open")]
    AlreadyOpen(String),
    /// The device is served already, under another name: two servers of one device would each
    /// cache and write it, and corrupt it.
    #[error("the device is open already as {name:?} ({})", file.display())]
    DeviceMapped { name: String, file: PathBuf },
    #[error("mapping {0:?} is not open")]
    NotOpen(String),
    #[error("mapping {0:?} is in use (a loop device, a mount or an open file holds it)")]
    Busy(String),
    #[error("FUSE is not available: {0}")]
    NoFuse(String),
    #[error("the server for {name:?} failed: {message}")]
    Server { name: String, message: String },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> FuseError {
    let context = context.into();
    move |source| FuseError::Io { context, source }
}

/// An unlocked volume: where its encrypted payload is and the key to read it with.
///
/// The key is the *effective* (clear) AES-XTS key, 32 or 64 bytes, as
/// `ap_sim::hsm::Hsm::effective_key` returns it; it is held in zeroizing memory and never
/// printed (`Debug` redacts it).
pub struct Mapping {
    /// The LUKS2 device or image file.
    pub device: PathBuf,
    /// Byte offset of the encrypted payload (the LUKS2 data segment's `offset`).
    pub data_offset: u64,
    /// Payload size in bytes, a multiple of `sector_size`.
    pub size: u64,
    /// Encryption sector size: 512, 1024, 2048 or 4096.
    pub sector_size: u32,
    key: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Mapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapping")
            .field("device", &self.device)
            .field("data_offset", &self.data_offset)
            .field("size", &self.size)
            .field("sector_size", &self.sector_size)
            .field("key", &format_args!("<{} bytes redacted>", self.key.len()))
            .finish()
    }
}

impl Mapping {
    /// Describes a payload of `size` bytes at `data_offset` in `device`; `size: None` means
    /// "to the end of the device" (LUKS2's `"size": "dynamic"`), rounded down to whole sectors.
    /// Checks the geometry against the device and the key (length, distinct halves) now, so
    /// that [`open`] fails before forking.
    pub fn new(
        device: impl Into<PathBuf>,
        data_offset: u64,
        size: Option<u64>,
        sector_size: u32,
        key: &[u8],
    ) -> Result<Self, FuseError> {
        let device = device.into();
        let ss = sector_size as usize;
        if !SECTOR_SIZES.contains(&ss) {
            return Err(XtsError::SectorSize(ss).into());
        }
        // Validates length and halves; the engine itself is rebuilt in the server.
        XtsEngine::new(key)?;
        if !data_offset.is_multiple_of(512) {
            return Err(FuseError::Invalid(format!(
                "data offset {data_offset} is not a multiple of 512 bytes"
            )));
        }
        let dev_len = device_len(&device)?;
        let avail = dev_len.checked_sub(data_offset).ok_or_else(|| {
            FuseError::Invalid(format!(
                "data offset {data_offset} is beyond the end of {} ({dev_len} bytes)",
                device.display()
            ))
        })?;
        let size = match size {
            Some(s) => {
                if !s.is_multiple_of(u64::from(sector_size)) || s == 0 {
                    return Err(FuseError::Invalid(format!(
                        "payload size {s} is not a positive multiple of the sector size {sector_size}"
                    )));
                }
                if s > avail {
                    return Err(FuseError::Invalid(format!(
                        "payload of {s} bytes at offset {data_offset} does not fit in {} ({dev_len} bytes)",
                        device.display()
                    )));
                }
                s
            }
            None => avail - avail % u64::from(sector_size),
        };
        if size == 0 {
            return Err(FuseError::Invalid(format!(
                "{} has no room for a payload after offset {data_offset}",
                device.display()
            )));
        }
        Ok(Mapping {
            device,
            data_offset,
            size,
            sector_size,
            key: Zeroizing::new(key.to_vec()),
        })
    }

    /// [`Mapping::new`] taking the HSM's effective key, which is dropped (zeroized) here.
    pub fn from_effective_key(
        device: impl Into<PathBuf>,
        data_offset: u64,
        size: Option<u64>,
        sector_size: u32,
        key: ap_sim::hsm::EffectiveKey,
    ) -> Result<Self, FuseError> {
        Self::new(device, data_offset, size, sector_size, key.as_bytes())
    }
}

/// Size of a regular file or block device.
fn device_len(device: &Path) -> Result<u64, FuseError> {
    let mut f = File::open(device).map_err(io_err(format!("open {}", device.display())))?;
    let meta = f
        .metadata()
        .map_err(io_err(format!("stat {}", device.display())))?;
    if meta.file_type().is_block_device() {
        f.seek(SeekFrom::End(0))
            .map_err(io_err(format!("size of {}", device.display())))
    } else if meta.is_file() {
        Ok(meta.len())
    } else {
        Err(FuseError::Invalid(format!(
            "{} is neither a block device nor a regular file",
            device.display()
        )))
    }
}

/// The run directory: `$ZKEY_CRYPTSETUP_RUN_DIR`, else [`DEFAULT_RUN_DIR`].
pub fn run_dir() -> PathBuf {
    std::env::var_os(RUN_DIR_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_RUN_DIR))
}

/// Refuses names that could escape the run directory or collide with the state files.
fn check_name(name: &str) -> Result<(), FuseError> {
    let ok = !name.is_empty()
        && name.len() <= 127
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(FuseError::Name(name.to_string()))
    }
}

fn state_path(run_dir: &Path, name: &str) -> PathBuf {
    run_dir.join(format!(".{name}.pid"))
}

// ---------------------------------------------------------------------------------------------
// The file system

/// What every worker needs: the device, the engine and the geometry.
struct Volume {
    dev: File,
    engine: Box<XtsEngine>,
    data_offset: u64,
    size: u64,
    sector: u64,
    /// Read-modify-write of partial sectors takes this exclusively, every other write shared.
    rmw: RwLock<()>,
}

impl Volume {
    /// Reads and decrypts the whole sectors covering `[offset, offset + len)` of the payload.
    /// The caller has clamped the range to the payload.
    fn read_span(&self, offset: u64, len: u64) -> io::Result<(Vec<u8>, usize)> {
        let start = offset - offset % self.sector;
        let end = (offset + len).div_ceil(self.sector) * self.sector;
        let mut buf = vec![0u8; (end - start) as usize];
        self.dev.read_exact_at(&mut buf, self.data_offset + start)?;
        self.engine
            .decrypt_sectors(&mut buf, start / self.sector, self.sector as usize)
            .map_err(io::Error::other)?;
        Ok((buf, (offset - start) as usize))
    }

    fn read(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let (mut buf, skip) = self.read_span(offset, len)?;
        buf.drain(..skip);
        buf.truncate(len as usize);
        Ok(buf)
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let len = data.len() as u64;
        let aligned = offset.is_multiple_of(self.sector) && len.is_multiple_of(self.sector);
        if aligned {
            let _shared = self.rmw.read().unwrap_or_else(|e| e.into_inner());
            let mut buf = data.to_vec();
            self.engine
                .encrypt_sectors(&mut buf, offset / self.sector, self.sector as usize)
                .map_err(io::Error::other)?;
            return self.dev.write_all_at(&buf, self.data_offset + offset);
        }
        // Exclusive: another partial write into the same edge sector must not interleave
        // between our read and our write-back.
        let _exclusive = self.rmw.write().unwrap_or_else(|e| e.into_inner());
        let (mut buf, skip) = self.read_span(offset, len)?;
        buf[skip..skip + data.len()].copy_from_slice(data);
        let start = offset - offset % self.sector;
        self.engine
            .encrypt_sectors(&mut buf, start / self.sector, self.sector as usize)
            .map_err(io::Error::other)?;
        self.dev.write_all_at(&buf, self.data_offset + start)
    }
}

/// Whatever the device reports is an I/O error to the reader, as with a block device.
fn errno(_e: &io::Error) -> i32 {
    libc::EIO
}

struct VolumeFs {
    vol: Arc<Volume>,
    pool: rayon::ThreadPool,
    attr: FileAttr,
    on_ready: Option<Box<dyn FnOnce() + Send>>,
}

impl VolumeFs {
    fn new(vol: Volume, on_ready: Option<Box<dyn FnOnce() + Send>>) -> io::Result<Self> {
        let now = SystemTime::now();
        let attr = FileAttr {
            ino: ROOT_INO,
            size: vol.size,
            blocks: vol.size / 512,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            kind: FileType::RegularFile,
            perm: 0o600,
            nlink: 1,
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            rdev: 0,
            blksize: vol.sector as u32,
            flags: 0,
        };
        // A pool of its own, created in the server process: a global pool inherited through
        // fork would have no threads behind it.
        let workers = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .max(MIN_WORKERS);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(workers)
            .thread_name(|i| format!("zkey-fuse-{i}"))
            .build()
            .map_err(io::Error::other)?;
        Ok(VolumeFs {
            vol: Arc::new(vol),
            pool,
            attr,
            on_ready,
        })
    }
}

impl Filesystem for VolumeFs {
    fn init(&mut self, _req: &Request<'_>, config: &mut KernelConfig) -> Result<(), libc::c_int> {
        use fuser::consts::{FUSE_ASYNC_READ, FUSE_ATOMIC_O_TRUNC, FUSE_BIG_WRITES};
        // ATOMIC_O_TRUNC: O_TRUNC arrives as an open flag, which we ignore as a block device
        // does, instead of as a truncate we would have to refuse (`dd of=FILE` opens O_TRUNC).
        // Capabilities the kernel lacks are simply not enabled.
        let _ = config.add_capabilities(FUSE_ASYNC_READ | FUSE_ATOMIC_O_TRUNC | FUSE_BIG_WRITES);
        let _ = config.set_max_write(1024 * 1024);
        // The handshake is under way: the mount is usable from here on.
        if let Some(ready) = self.on_ready.take() {
            ready();
        }
        Ok(())
    }

    fn lookup(&mut self, _req: &Request<'_>, _parent: u64, _name: &OsStr, reply: ReplyEntry) {
        // The root is a file: there is nothing to look up.
        reply.error(libc::ENOTDIR);
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        if ino == ROOT_INO {
            reply.attr(&ATTR_TTL, &self.attr);
        } else {
            reply.error(libc::ENOENT);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn setattr(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        // The size is the payload's and ownership is fixed; times are accepted and ignored
        // (touch works, as on a device node).
        if size.is_some_and(|s| s != self.attr.size) {
            reply.error(libc::EINVAL);
        } else if mode.is_some() || uid.is_some() || gid.is_some() {
            reply.error(libc::EPERM);
        } else {
            reply.attr(&ATTR_TTL, &self.attr);
        }
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        if ino == ROOT_INO {
            reply.opened(0, 0);
        } else {
            reply.error(libc::ENOENT);
        }
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let Ok(offset) = u64::try_from(offset) else {
            return reply.error(libc::EINVAL);
        };
        if offset >= self.vol.size || size == 0 {
            return reply.data(&[]);
        }
        let len = u64::from(size).min(self.vol.size - offset);
        let vol = Arc::clone(&self.vol);
        self.pool.spawn(move || match vol.read(offset, len) {
            Ok(data) => {
                reply.data(&data);
                drop(Zeroizing::new(data));
            }
            Err(e) => reply.error(errno(&e)),
        });
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        let Ok(offset) = u64::try_from(offset) else {
            return reply.error(libc::EINVAL);
        };
        if data.is_empty() {
            return reply.written(0);
        }
        if offset >= self.vol.size {
            return reply.error(libc::ENOSPC);
        }
        let len = (data.len() as u64).min(self.vol.size - offset) as usize;
        // Copied: the request buffer is reused by the session loop as soon as we return.
        let data = Zeroizing::new(data[..len].to_vec());
        let vol = Arc::clone(&self.vol);
        self.pool.spawn(move || match vol.write(offset, &data) {
            Ok(()) => reply.written(len as u32),
            Err(e) => reply.error(errno(&e)),
        });
    }

    fn flush(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _lo: u64, reply: ReplyEmpty) {
        self.sync(reply);
    }

    fn fsync(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _ds: bool, reply: ReplyEmpty) {
        self.sync(reply);
    }
}

impl VolumeFs {
    /// `fdatasync` on a worker: writes already answered have reached the device (pwrite), so
    /// syncing after them makes them durable; the session loop keeps serving meanwhile.
    fn sync(&self, reply: ReplyEmpty) {
        let vol = Arc::clone(&self.vol);
        self.pool.spawn(move || match vol.dev.sync_data() {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        });
    }
}

/// Serves `mapping` at `mountpoint` in the calling process until the file system is unmounted.
///
/// `mountpoint` must be an existing regular file: the volume is mounted over it as a
/// single-file mount (the kernel takes the root's file type from the mount point).
/// `on_ready` runs once the kernel's FUSE handshake has started, i.e. once accesses to the
/// mount point reach this server. The key is consumed: it is zeroized as soon as the engine is
/// built, and the engine's round keys when this function returns.
pub fn serve(
    mapping: Mapping,
    mountpoint: &Path,
    on_ready: Option<Box<dyn FnOnce() + Send>>,
) -> Result<(), FuseError> {
    if !Path::new("/dev/fuse").exists() {
        return Err(FuseError::NoFuse("/dev/fuse is missing".into()));
    }
    let dev = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&mapping.device)
        .map_err(io_err(format!("open {}", mapping.device.display())))?;
    let engine = Box::new(XtsEngine::new(&mapping.key)?);
    // Best effort: keep the engine's key schedules out of swap and core dumps.
    let _ = infra::sys::protect_memory(&*engine);
    let Mapping {
        key,
        data_offset,
        size,
        sector_size,
        ..
    } = mapping;
    drop(key);
    let vol = Volume {
        dev,
        engine,
        data_offset,
        size,
        sector: u64::from(sector_size),
        rmw: RwLock::new(()),
    };
    let fs = VolumeFs::new(vol, on_ready).map_err(io_err("start worker threads"))?;
    let options = [
        MountOption::FSName("zkey-cryptsetup".into()),
        MountOption::DefaultPermissions,
        MountOption::NoSuid,
        MountOption::NoDev,
        MountOption::NoExec,
        MountOption::NoAtime,
    ];
    let mut session = fuser::Session::new(fs, mountpoint, &options).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENODEV) {
            FuseError::NoFuse(e.to_string())
        } else {
            FuseError::Io {
                context: format!("mount FUSE at {}", mountpoint.display()),
                source: e,
            }
        }
    })?;
    session
        .run()
        .map_err(io_err(format!("serve {}", mountpoint.display())))
    // Dropping the session drops the file system: worker pool joined, engine zeroized.
}

// ---------------------------------------------------------------------------------------------
// open / close / list

/// One active mapping, as [`list`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveMapping {
    pub name: String,
    /// The decrypted volume file, `RUN/NAME`.
    pub file: PathBuf,
    pub pid: u32,
    pub device: PathBuf,
    /// What `device` resolved to when it was opened (absent in state files of older versions).
    pub device_id: Option<infra::device::DeviceId>,
    pub data_offset: u64,
    pub size: u64,
    pub sector_size: u32,
}

fn write_state(f: &mut File, name: &str, m: &Mapping) -> io::Result<()> {
    let id = infra::device::DeviceId::of(&m.device)?;
    let text = format!(
        "pid={}\nname={name}\ndevice={}\ndevice_id={id}\ndata_offset={}\nsize={}\nsector_size={}\n",
        std::process::id(),
        m.device.display(),
        m.data_offset,
        m.size,
        m.sector_size
    );
    f.set_len(0)?;
    f.write_all_at(text.as_bytes(), 0)?;
    f.sync_all()
}

fn parse_state(run_dir: &Path, name: &str, text: &str) -> Option<ActiveMapping> {
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
            .map(str::to_string)
    };
    Some(ActiveMapping {
        name: name.to_string(),
        file: run_dir.join(name),
        pid: get("pid")?.parse().ok()?,
        device: PathBuf::from(get("device")?),
        device_id: get("device_id").and_then(|t| t.parse().ok()),
        data_offset: get("data_offset")?.parse().ok()?,
        size: get("size")?.parse().ok()?,
        sector_size: get("sector_size")?.parse().ok()?,
    })
}

/// Whether some process holds the state file's lock, i.e. the server runs. (std's file locks
/// are `flock(2)` locks on Linux, the kind the server holds.)
fn lock_held(f: &File) -> bool {
    if f.try_lock_shared().is_ok() {
        let _ = f.unlock();
        false
    } else {
        true
    }
}

/// Whether `path` is a mount point, from /proc/self/mountinfo (field 5, octal-escaped).
fn is_mountpoint(path: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.as_os_str().as_bytes();
    info.lines().any(|l| {
        l.split(' ')
            .nth(4)
            .is_some_and(|mp| unescape_mountinfo(mp) == want)
    })
}

fn unescape_mountinfo(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// Unlocks `mapping` as `RUN/NAME` (`run_dir` is RUN; see [`run_dir`]): starts a detached
/// server process, waits until the file is live, and returns its path.
///
/// The server is forked here, so it inherits this process's memory as it is now: a caller that
/// has read a passphrase, a secure key or the simulator's state should [`Server::spawn`] before
/// that, and [`Server::open`] after.
pub fn open(mapping: Mapping, name: &str, run_dir: &Path) -> Result<PathBuf, FuseError> {
    check_name(name)?;
    Server::spawn()?.open(mapping, name, run_dir)
}

/// A server process forked before the caller touched anything secret, waiting to be handed one
/// mapping (see the module documentation). Dropping it without [`Server::open`] ends it.
#[derive(Debug)]
pub struct Server {
    /// Where the mapping goes: the write end of the hand-over pipe.
    handover: File,
    /// Where the server's one-line report comes from.
    report: OwnedFd,
}

/// Longest hand-over message: three paths of at most `PATH_MAX` bytes, the geometry, the key.
const HANDOVER_MAX: usize = 3 * (4 + 4096) + 8 + 8 + 4 + 4 + 64;

impl Server {
    /// Forks the server process, which waits for [`Server::open`]. Call it before reading any
    /// secret: the server's memory is a copy of this process's at this moment.
    pub fn spawn() -> Result<Server, FuseError> {
        if !Path::new("/dev/fuse").exists() {
            return Err(FuseError::NoFuse("/dev/fuse is missing".into()));
        }
        let (handover_rd, handover_wr) = pipe()?;
        let (report_rd, report_wr) = pipe()?;
        // The child only runs `server_child`, which keeps `fork`'s contract (it takes no lock
        // other threads of this process may hold, see the module documentation) and never
        // returns.
        let pid = match infra::sys::fork().map_err(io_err("fork"))? {
            infra::sys::Fork::Child => {
                drop(handover_wr);
                drop(report_rd);
                server_child(handover_rd, report_wr);
            }
            infra::sys::Fork::Parent(pid) => pid,
        };
        drop(handover_rd);
        drop(report_wr);
        // Reaping the intermediate child we just forked (it exits at once).
        while let Err(nix::errno::Errno::EINTR) = nix::sys::wait::waitpid(pid, None) {}
        Ok(Server {
            handover: File::from(handover_wr),
            report: report_rd,
        })
    }

    /// Hands `mapping` to the server as `RUN/NAME` (see [`open`]), waits until the file is
    /// live, and returns its path. This process's copy of the key is dropped (zeroized).
    pub fn open(self, mapping: Mapping, name: &str, run_dir: &Path) -> Result<PathBuf, FuseError> {
        check_name(name)?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(run_dir)
            .map_err(io_err(format!("create {}", run_dir.display())))?;
        // Canonical, so that the mount table comparison in close/list sees the same path.
        let run_dir = run_dir
            .canonicalize()
            .map_err(io_err(format!("resolve {}", run_dir.display())))?;
        let file = run_dir.join(name);
        let state = state_path(&run_dir, name);

        // One device, one mapping: two servers would each cache and write it. Checked and
        // started under the run directory's open lock, so two opens under two names cannot
        // both pass.
        let open_lock_path = run_dir.join(".open.lock");
        let open_lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(&open_lock_path)
            .map_err(io_err(format!("open {}", open_lock_path.display())))?;
        open_lock
            .lock()
            .map_err(io_err(format!("lock {}", open_lock_path.display())))?;
        let id = infra::device::DeviceId::of(&mapping.device)
            .map_err(io_err(format!("inspect {}", mapping.device.display())))?;
        if let Some(m) = list(&run_dir)?.into_iter().find(|m| {
            m.name != name
                && m.device_id.map_or_else(
                    || infra::device::DeviceId::same(&m.device, &mapping.device),
                    |o| o == id,
                )
        }) {
            return Err(FuseError::DeviceMapped {
                name: m.name,
                file: m.file,
            });
        }

        // The state file doubles as the lock that makes "open NAME" exclusive.
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&state)
            .map_err(io_err(format!("open {}", state.display())))?;
        if lock.try_lock().is_err() {
            return Err(FuseError::AlreadyOpen(name.to_string()));
        }
        if is_mountpoint(&file) {
            // A previous server died without unmounting: the mount is dead; clear it.
            let c = CString::new(file.as_os_str().as_bytes())
                .map_err(|_| FuseError::Name(name.to_string()))?;
            let _ = nix::mount::umount2(c.as_c_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        match fs::symlink_metadata(&file) {
            Ok(m) if m.is_file() => {}
            Ok(_) => {
                return Err(FuseError::Invalid(format!(
                    "{} exists and is not a regular file",
                    file.display()
                )))
            }
            Err(_) => {
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&file)
                    .map_err(io_err(format!("create {}", file.display())))?;
            }
        }
        write_state(&mut lock, name, &mapping)
            .map_err(io_err(format!("write {}", state.display())))?;

        let Server {
            mut handover,
            report,
        } = self;
        let message = encode_handover(&mapping, &file, &state)?;
        // Our copy of the key goes now; the pipe's buffer is the kernel's, freed once read.
        drop(mapping);
        let sent = handover.write_all(&message);
        drop(message);
        // EOF ends the message.
        drop(handover);
        // The server takes the lock over once it runs; release ours.
        drop(lock);
        let message = match sent {
            Err(e) => Some(format!("ERR hand the mapping over to the server: {e}")),
            Ok(()) => read_report(report, SERVER_TIMEOUT),
        };
        // The server holds its own lock now (or has failed): the next open's check sees it.
        drop(open_lock);
        match message.as_deref() {
            Some("OK") => Ok(file),
            other => {
                let message = match other {
                    Some(m) => m.strip_prefix("ERR ").unwrap_or(m).to_string(),
                    None => "no answer from the server".to_string(),
                };
                // Leave nothing behind if the server could not take the mapping over.
                if let Ok(f) = File::open(&state) {
                    if !lock_held(&f) {
                        let _ = fs::remove_file(&state);
                        if !is_mountpoint(&file) {
                            let _ = fs::remove_file(&file);
                        }
                    }
                }
                if message.contains("/dev/fuse") || message.contains("FUSE is not available") {
                    Err(FuseError::NoFuse(message))
                } else {
                    Err(FuseError::Server {
                        name: name.to_string(),
                        message,
                    })
                }
            }
        }
    }
}

/// The hand-over message: the mount point, the state file, the device (each a `u32` length and
/// the bytes), data offset and size (`u64`), sector size (`u32`), the key (`u32` length, bytes).
/// Built in one allocation of its final size, so no reallocation leaves a copy of the key.
fn encode_handover(
    m: &Mapping,
    file: &Path,
    state: &Path,
) -> Result<Zeroizing<Vec<u8>>, FuseError> {
    let paths = [file.as_os_str(), state.as_os_str(), m.device.as_os_str()];
    let len = paths.iter().map(|p| 4 + p.len()).sum::<usize>() + 8 + 8 + 4 + 4 + m.key.len();
    if len > HANDOVER_MAX {
        return Err(FuseError::Invalid(
            "the device or run directory path is too long".into(),
        ));
    }
    let mut out = Zeroizing::new(Vec::with_capacity(len));
    for p in paths {
        out.extend_from_slice(&(p.len() as u32).to_le_bytes());
        out.extend_from_slice(p.as_bytes());
    }
    out.extend_from_slice(&m.data_offset.to_le_bytes());
    out.extend_from_slice(&m.size.to_le_bytes());
    out.extend_from_slice(&m.sector_size.to_le_bytes());
    out.extend_from_slice(&(m.key.len() as u32).to_le_bytes());
    out.extend_from_slice(&m.key);
    debug_assert_eq!(out.len(), len);
    Ok(out)
}

/// What the server is handed: where to mount, its state file, and the mapping.
struct Handover {
    file: PathBuf,
    state: PathBuf,
    mapping: Mapping,
}

/// Reads [`encode_handover`]'s message; `None` for a malformed one.
fn decode_handover(b: &[u8]) -> Option<Handover> {
    struct Cursor<'a>(&'a [u8]);
    impl<'a> Cursor<'a> {
        fn take(&mut self, n: usize) -> Option<&'a [u8]> {
            if self.0.len() < n {
                return None;
            }
            let (head, rest) = self.0.split_at(n);
            self.0 = rest;
            Some(head)
        }
        fn u32(&mut self) -> Option<u32> {
            Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
        }
        fn u64(&mut self) -> Option<u64> {
            Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
        }
        fn path(&mut self) -> Option<PathBuf> {
            let n = self.u32()? as usize;
            Some(PathBuf::from(OsStr::from_bytes(self.take(n)?)))
        }
    }
    let mut c = Cursor(b);
    let (file, state, device) = (c.path()?, c.path()?, c.path()?);
    let data_offset = c.u64()?;
    let size = c.u64()?;
    let sector_size = c.u32()?;
    let n = c.u32()? as usize;
    let key = c.take(n)?;
    if !c.0.is_empty() {
        return None;
    }
    // The key goes straight into its zeroizing buffer of the exact size.
    let mapping = Mapping {
        device,
        data_offset,
        size,
        sector_size,
        key: Zeroizing::new(key.to_vec()),
    };
    Some(Handover {
        file,
        state,
        mapping,
    })
}

fn pipe() -> Result<(OwnedFd, OwnedFd), FuseError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| FuseError::Io {
        context: "pipe".into(),
        source: e.into(),
    })
}

/// Reads the server's one-line report ("OK" or "ERR message") until EOF or timeout.
fn read_report(rd: OwnedFd, timeout: Duration) -> Option<String> {
    let deadline = Instant::now() + timeout;
    let mut f = File::from(rd);
    let mut out = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
        match poll(&mut [PollFd::new(f.as_fd(), PollFlags::POLLIN)], timeout) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) | Ok(0) => return None,
            Ok(_) => {}
        }
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.contains(&b'\n') {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&out);
    text.lines().next().map(str::to_string)
}

/// The forked side of [`Server::spawn`]: detach, wait for the mapping, become the server,
/// report, serve, clean up, exit.
fn server_child(handover: OwnedFd, report: OwnedFd) -> ! {
    // `exit_immediately` (`_exit`) skips the parent's atexit handlers and destructors, which
    // belong to the parent. This process has one thread, so its own fork is unrestricted.
    let _ = nix::unistd::setsid();
    match infra::sys::fork() {
        Ok(infra::sys::Fork::Child) => {}
        Err(e) => {
            let mut w = File::from(report);
            let _ = writeln!(w, "ERR fork: {e}");
            infra::sys::exit_immediately(1);
        }
        Ok(infra::sys::Fork::Parent(_)) => infra::sys::exit_immediately(0),
    }
    // The report pipe's reader may be gone by the time a late error is written.
    let _ = infra::sys::ignore_signal(Signal::SIGPIPE);
    let _ = nix::sys::prctl::set_dumpable(false);
    close_inherited_fds(&[handover.as_raw_fd(), report.as_raw_fd()]);
    redirect_stdio();
    // Before the key arrives, so that every page it ever lands on is locked. Only as root: under
    // a memory-lock limit, locking future mappings would make later allocations fail.
    if nix::unistd::geteuid().is_root() {
        let _ = infra::sys::lock_all_memory();
    }
    let mut report = File::from(report);
    let Some(Handover {
        file,
        state,
        mapping,
    }) = receive(handover, &mut report)
    else {
        infra::sys::exit_immediately(0)
    };
    let code = match server_main(mapping, &file, &state, &mut report) {
        Ok(()) => 0,
        Err(e) => {
            // Only reaches the parent if it is still waiting (set-up failures).
            let _ = writeln!(report, "ERR {e}");
            1
        }
    };
    let _ = fs::remove_file(&state);
    let _ = fs::remove_file(&file);
    infra::sys::exit_immediately(code)
}

/// Waits for the hand-over message; `None` when the caller gave up (EOF before any byte) or
/// the message is malformed (reported).
fn receive(handover: OwnedFd, report: &mut File) -> Option<Handover> {
    // A fixed buffer, never grown: a reallocation would leave a copy of the key behind.
    let mut buf = Zeroizing::new(vec![0u8; HANDOVER_MAX + 1]);
    let mut f = File::from(handover);
    let mut got = 0;
    while got < buf.len() {
        match f.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                let _ = writeln!(report, "ERR read the mapping from the caller: {e}");
                return None;
            }
        }
    }
    if got == 0 {
        return None;
    }
    let h = decode_handover(&buf[..got]);
    if h.is_none() {
        let _ = writeln!(report, "ERR the caller handed over a malformed mapping");
    }
    h
}

fn server_main(
    mapping: Mapping,
    file: &Path,
    state: &Path,
    report: &mut File,
) -> Result<(), FuseError> {
    let mut lock = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(state)
        .map_err(io_err(format!("open {}", state.display())))?;
    // The parent holds the lock until it has reaped our intermediate parent; wait for it.
    let deadline = Instant::now() + SERVER_TIMEOUT;
    while lock.try_lock().is_err() {
        if Instant::now() > deadline {
            return Err(FuseError::AlreadyOpen(
                file.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    write_state(&mut lock, &name, &mapping)
        .map_err(io_err(format!("write {}", state.display())))?;
    install_signal_handlers(file);
    let reporter = report
        .try_clone()
        .map_err(io_err("duplicate the report pipe"))?;
    let ready: Box<dyn FnOnce() + Send> = Box::new(move || {
        let mut r = reporter;
        let _ = r.write_all(b"OK\n");
        // Dropping closes our end, so the parent sees EOF.
    });
    // The lock stays held (by `lock`) until this process exits: `close` waits for that.
    let result = serve(mapping, file, Some(ready));
    drop(lock);
    result
}

/// Closes every descriptor except `keep`: the parent's files, sockets and other threads' pipes
/// must not stay open for the server's lifetime.
fn close_inherited_fds(keep: &[RawFd]) {
    let fds: Vec<RawFd> = match fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect(),
        Err(_) => (3..1024).collect(),
    };
    for fd in fds {
        if fd > 2 && !keep.contains(&fd) {
            // Descriptors this process will never use again: their owners are the parent's
            // values, which this child never drops (it leaves through `_exit`). The directory
            // handle above is already closed, so an EBADF for it is harmless.
            let _ = nix::unistd::close(fd);
        }
    }
}

fn redirect_stdio() {
    if let Ok(null) = OpenOptions::new().read(true).write(true).open("/dev/null") {
        for fd in 0..3 {
            let _ = nix::unistd::dup2(null.as_raw_fd(), fd);
        }
    }
}

/// SIGTERM and SIGINT unmount the volume file lazily: the session loop then sees ENODEV and
/// the server exits normally, zeroizing the key, instead of dying with the mount left dangling.
/// SIGHUP (the terminal of `open`'s caller going away) is ignored.
fn install_signal_handlers(file: &Path) {
    if infra::sys::unmount_on_terminate(file).is_err() {
        return;
    }
    let _ = infra::sys::ignore_signal(Signal::SIGHUP);
}

/// Closes `RUN/NAME`: unmounts the volume file and waits until its server has exited (and so
/// has zeroized the key). Fails with [`FuseError::Busy`] while something still uses the file,
/// e.g. a loop device (`losetup -d` it first).
pub fn close(name: &str, run_dir: &Path) -> Result<(), FuseError> {
    check_name(name)?;
    let run_dir = run_dir
        .canonicalize()
        .map_err(|_| FuseError::NotOpen(name.to_string()))?;
    let file = run_dir.join(name);
    let state = state_path(&run_dir, name);
    let lock = File::open(&state).ok();
    let running = lock.as_ref().is_some_and(lock_held);
    let mounted = is_mountpoint(&file);
    if !running && !mounted {
        // Nothing to do but tidy up a crashed server's leftovers.
        let had_state = state.exists();
        let _ = fs::remove_file(&state);
        if had_state {
            let _ = fs::remove_file(&file);
        }
        return Err(FuseError::NotOpen(name.to_string()));
    }
    if mounted {
        unmount(name, &file)?;
    }
    if let Some(lock) = lock {
        let deadline = Instant::now() + SERVER_TIMEOUT;
        // The server's exit releases its lock.
        while lock.try_lock().is_err() {
            if Instant::now() > deadline {
                return Err(FuseError::Server {
                    name: name.to_string(),
                    message: "still running after the unmount".into(),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    // Normally the server removed both already.
    let _ = fs::remove_file(&state);
    if !is_mountpoint(&file) {
        let _ = fs::remove_file(&file);
    }
    Ok(())
}

fn unmount(name: &str, file: &Path) -> Result<(), FuseError> {
    let c =
        CString::new(file.as_os_str().as_bytes()).map_err(|_| FuseError::Name(name.to_string()))?;
    // A process that forks while it has the file open holds a copy of the descriptor until the
    // child execs (O_CLOEXEC closes it only then): a short EBUSY that a brief retry outlasts.
    // A holder that stays (a loop device, an open file) is still reported as busy.
    let mut tries = 0;
    let err = loop {
        let err = match nix::mount::umount2(c.as_c_str(), nix::mount::MntFlags::empty()) {
            Ok(()) => return Ok(()),
            Err(e) => io::Error::from(e),
        };
        tries += 1;
        if err.raw_os_error() != Some(libc::EBUSY) || tries >= 20 {
            break err;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    match err.raw_os_error() {
        Some(libc::EBUSY) => Err(FuseError::Busy(name.to_string())),
        Some(libc::EPERM) => {
            // Not root: the setuid helper can unmount what this user mounted.
            let out = std::process::Command::new("fusermount3")
                .arg("-u")
                .arg(file)
                .output()
                .map_err(io_err("run fusermount3 -u"))?;
            if out.status.success() {
                Ok(())
            } else if String::from_utf8_lossy(&out.stderr).contains("busy") {
                Err(FuseError::Busy(name.to_string()))
            } else {
                Err(FuseError::Io {
                    context: format!("unmount {}", file.display()),
                    source: err,
                })
            }
        }
        _ => Err(FuseError::Io {
            context: format!("unmount {}", file.display()),
            source: err,
        }),
    }
}

/// The mappings whose server is running in `run_dir`, sorted by name.
pub fn list(run_dir: &Path) -> Result<Vec<ActiveMapping>, FuseError> {
    let dir = match fs::read_dir(run_dir) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(format!("read {}", run_dir.display()))(e)),
    };
    let run_dir = run_dir.canonicalize().unwrap_or_else(|_| run_dir.into());
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let fname = entry.file_name();
        let Some(name) = fname
            .to_str()
            .and_then(|f| f.strip_prefix('.')?.strip_suffix(".pid"))
        else {
            continue;
        };
        if check_name(name).is_err() {
            continue;
        }
        let Ok(f) = File::open(entry.path()) else {
            continue;
        };
        if !lock_held(&f) {
            continue;
        }
        let mut text = String::new();
        if (&f).read_to_string(&mut text).is_err() {
            continue;
        }
        if let Some(m) = parse_state(&run_dir, name, &text) {
            out.push(m);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "enc-vol_1.x+y", &"n".repeat(127)] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".hidden", "a/b", "..", "a b", "ä", &"n".repeat(128)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn mountinfo_unescape() {
        assert_eq!(unescape_mountinfo(r"/run/a\040b"), b"/run/a b");
        assert_eq!(unescape_mountinfo(r"/x\134y"), b"/x\\y");
        assert_eq!(unescape_mountinfo(r"/tail\04"), b"/tail\\04");
    }

    #[test]
    fn state_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("dev");
        fs::write(&dev, vec![0u8; 1 << 20]).unwrap();
        let mut key = [1u8; 64];
        key[0] = 2;
        let m = Mapping::new(&dev, 4096, None, 4096, &key).unwrap();
        assert_eq!(m.size, (1 << 20) - 4096);
        let mut f = File::create(dir.path().join("s")).unwrap();
        write_state(&mut f, "vol", &m).unwrap();
        let text = fs::read_to_string(dir.path().join("s")).unwrap();
        assert!(!text.contains("0101"), "no key material in the state file");
        let a = parse_state(dir.path(), "vol", &text).unwrap();
        assert_eq!(
            a.device_id,
            Some(infra::device::DeviceId::of(&dev).unwrap())
        );
        assert_eq!(
            (a.device, a.data_offset, a.size, a.sector_size),
            (dev, 4096, m.size, 4096)
        );
        assert!(!format!("{m:?}").contains("[1, 1"), "Debug redacts the key");
    }

    #[test]
    fn the_handover_carries_the_mapping_and_refuses_anything_else() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("dev");
        fs::write(&dev, vec![0u8; 1 << 20]).unwrap();
        let mut key = [7u8; 64];
        key[63] = 9;
        let m = Mapping::new(&dev, 8192, Some(65536), 512, &key).unwrap();
        let msg = encode_handover(&m, Path::new("/run/x/v"), Path::new("/run/x/.v.pid")).unwrap();
        assert_eq!(msg.capacity(), msg.len(), "built in one allocation");
        let h = decode_handover(&msg).unwrap();
        assert_eq!(h.file, Path::new("/run/x/v"));
        assert_eq!(h.state, Path::new("/run/x/.v.pid"));
        let g = &h.mapping;
        assert_eq!(
            (&g.device, g.data_offset, g.size, g.sector_size),
            (&dev, 8192, 65536, 512)
        );
        assert_eq!(&g.key[..], &key[..]);
        for cut in [0, 3, msg.len() - 1] {
            assert!(decode_handover(&msg[..cut]).is_none(), "cut at {cut}");
        }
        let mut long = msg.to_vec();
        long.push(0);
        assert!(decode_handover(&long).is_none(), "trailing byte");
    }

    #[test]
    fn mapping_geometry_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("dev");
        fs::write(&dev, vec![0u8; 64 * 1024]).unwrap();
        let mut key = [1u8; 64];
        key[0] = 2;
        let e = |r: Result<Mapping, FuseError>| r.unwrap_err().to_string();
        assert!(e(Mapping::new(&dev, 0, None, 4000, &key)).contains("sector size"));
        assert!(e(Mapping::new(&dev, 100, None, 512, &key)).contains("multiple of 512"));
        assert!(e(Mapping::new(&dev, 0, Some(1000), 512, &key)).contains("multiple"));
        assert!(e(Mapping::new(&dev, 4096, Some(64 * 1024), 512, &key)).contains("does not fit"));
        assert!(e(Mapping::new(&dev, 1 << 20, None, 512, &key)).contains("beyond the end"));
        assert!(e(Mapping::new(&dev, 0, None, 512, &[3u8; 64])).contains("equal"));
        assert!(e(Mapping::new(dir.path().join("missing"), 0, None, 512, &key)).contains("open"));
        assert!(e(Mapping::new(dir.path(), 0, None, 512, &key)).contains("neither"));
        // Dynamic size rounds down to whole sectors.
        let m = Mapping::new(&dev, 512, None, 4096, &key).unwrap();
        assert_eq!(m.size, 64 * 1024 - 4096);
    }
}
