//! The simulator's directory: where the simulated hardware lives between processes.
//!
//! ```text
//! DIR/state.json       the bus and every master key register (mode 0600, never rendered)
//! DIR/.lock            flock: shared for readers, exclusive for changes
//! DIR/sys/             the sysfs tree, rendered from state.json after every change
//! DIR/sys.generation   which state generation the tree shows (to repair a tree a crash left stale)
//! DIR/audit.log        the TKE's audit trail: every load, commit, SET and clear, done or refused
//! ```
//!
//! Every change loads the state under the exclusive lock, applies the operation to a copy, and
//! only if the whole operation succeeded writes the state atomically and re-renders the tree. A
//! group operation over several APQNs is therefore all or nothing, and a refused one leaves the
//! state file untouched.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::adapter::{Bus, Card, CardType, Mode, Queue, QueueKeys, Status};
use crate::apqn::Apqn;
use crate::audit::{AuditError, AuditHead, AuditLog, Authenticator, Event};
use crate::durable::{self, Lock, LockKind};
use crate::mkvp::{MasterKey, Mkvp};
use crate::registers::{
    self, CcaRegisters, Ep11Registers, KeyPart, MkType, RegView, RegisterError,
};

/// The environment variable naming the simulator directory.
pub const DIR_ENV: &str = "AP_SIM_DIR";
/// Where the simulator lives when neither `--dir` nor `$AP_SIM_DIR` says otherwise.
pub const DEFAULT_DIR: &str = "/var/lib/ap-sim";

const STATE_FILE: &str = "state.json";
const LOCK_FILE: &str = ".lock";
const SYS_DIR: &str = "sys";
const GENERATION_FILE: &str = "sys.generation";
const AUDIT_FILE: &str = "audit.log";
/// The name of the TKE's audit log in the adapter.
pub const TKE_AUDIT_ID: &str = "tke";
const FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("no AP bus simulator in {0}: run 'ap-sim init' first, or point --dir / ${DIR_ENV} at an existing one")]
    NotInitialised(PathBuf),
    #[error("an AP bus simulator already exists in {0}: add --force to replace it (its master keys, and every secure key made with them, are lost)")]
    AlreadyInitialised(PathBuf),
    #[error("APQN {0} does not exist on this AP bus: 'ap-sim lszcrypt' lists the APQNs")]
    UnknownApqn(Apqn),
    #[error("card {0:02x} does not exist on this AP bus: 'ap-sim lszcrypt' lists the cards")]
    UnknownCard(u8),
    #[error("APQN {apqn} is on a {card_type} card ({mode}), which has no {mktype} master key")]
    WrongMode {
        apqn: Apqn,
        card_type: CardType,
        mode: &'static str,
        mktype: MkType,
    },
    #[error("APQN {0}: {1}")]
    Register(Apqn, RegisterError),
    #[error("key part checksum mismatch: the part entered has checksum {actual:02X}, not {expected:02X}; nothing was loaded, re-enter the part")]
    Checksum { expected: u8, actual: u8 },
    #[error("{0}")]
    Invalid(String),
    #[error("{action} failed on {target}: {why}")]
    Refused {
        action: &'static str,
        target: String,
        why: &'static str,
    },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// A file or directory of the simulator that someone else could have swapped: a symbolic
    /// link, another user's, or writable by others.
    #[error(transparent)]
    Untrusted(durable::Untrusted),
    #[error("{path} is damaged ({why}): restore it from a backup or re-create the simulator with 'ap-sim init --force'")]
    Corrupt { path: PathBuf, why: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SimError + '_ {
    move |source| match durable::Untrusted::of(&source) {
        Some(u) => SimError::Untrusted(u.clone()),
        None => SimError::Io {
            path: path.to_path_buf(),
            source,
        },
    }
}

/// The state directory holds the master keys: it is refused when another user owns it or
/// others can write it, since they could swap `state.json` for one holding their keys.
fn check_dir(dir: &Path) -> Result<(), SimError> {
    let meta = fs::metadata(dir).map_err(io_err(dir))?;
    durable::check_trusted(dir, &meta).map_err(io_err(dir))
}

/// Reads the state file, refused unless it is a regular file (not a link) that only its owner,
/// the caller or root, can write.
fn read_state(p: &Path) -> Result<zeroize::Zeroizing<Vec<u8>>, SimError> {
    use std::io::Read;
    let mut f = durable::open_trusted(p).map_err(io_err(p))?;
    let mut text = zeroize::Zeroizing::new(Vec::new());
    f.read_to_end(&mut text).map_err(io_err(p))?;
    Ok(text)
}

#[derive(Serialize, Deserialize)]
struct StateFile {
    format: u32,
    generation: u64,
    bus: Bus,
    /// The adapter-held secrets of the audit trail: its MAC key and each log's last record.
    #[serde(default)]
    audit: AuditState,
}

/// What the adapter keeps for the audit trail, beyond the reach of anyone who can only edit
/// the log files: the key that authenticates records, and each log's head (last sequence number
/// and MAC), so that a truncated log is detected.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct AuditState {
    key: Option<MasterKey>,
    #[serde(default)]
    heads: std::collections::BTreeMap<String, AuditHead>,
}

/// The adapters `ap-sim init` creates.
#[derive(Clone, Debug)]
pub struct Layout {
    pub cards: Vec<(u8, CardType)>,
    pub domains: Vec<u16>,
    /// Queues of the same mode and domain get the same master keys, as when a security officer
    /// loads one key into a domain group; otherwise each queue gets its own.
    pub shared_keys: bool,
}

impl Default for Layout {
    /// The APQNs of the seed 004 procedure (CCA 08.002f and 09.002f with shared master keys),
    /// two EP11 cards sharing a wrapping key, and an accelerator.
    fn default() -> Self {
        let t = |s: &str| s.parse::<CardType>().expect("valid literal");
        Layout {
            cards: vec![
                (0x08, t("CEX8C")),
                (0x09, t("CEX8C")),
                (0x0a, t("CEX8P")),
                (0x0b, t("CEX8P")),
                (0x0c, t("CEX8A")),
            ],
            domains: vec![0x002f],
            shared_keys: true,
        }
    }
}

/// What a TKE action records beyond its inputs.
#[derive(Clone, Debug, Default)]
struct Note {
    old: Option<Mkvp>,
    new: Option<Mkvp>,
    details: Option<String>,
}

/// One loaded key part, as a TKE panel reports it.
#[derive(Clone, Debug, Serialize)]
pub struct PartReport {
    pub checksum: String,
    pub part_vp: Mkvp,
    /// The new master key's pattern, once the FINAL part made it complete.
    pub new_mkvp: Option<Mkvp>,
}

/// The registers of one master key type on one APQN.
#[derive(Clone, Debug, Serialize)]
pub struct TypeRegisters {
    pub mktype: MkType,
    pub new: RegView,
    pub current: RegView,
    /// `None` for EP11, which has no OLD register.
    pub old: Option<RegView>,
}

/// What `tke status` shows for one APQN.
#[derive(Clone, Debug, Serialize)]
pub struct ApqnRegisters {
    pub apqn: Apqn,
    pub card_type: CardType,
    pub status: Status,
    pub registers: Vec<TypeRegisters>,
}

/// Which part of the bus an admin action targets: a whole card or one queue.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Card(u8),
    Queue(Apqn),
}

impl std::str::FromStr for Target {
    type Err = SimError;
    fn from_str(s: &str) -> Result<Self, SimError> {
        if s.contains('.') {
            return s
                .parse()
                .map(Target::Queue)
                .map_err(|e: crate::apqn::ApqnError| SimError::Invalid(e.to_string()));
        }
        let t = s.trim().trim_start_matches("0x");
        u8::from_str_radix(t, 16).map(Target::Card).map_err(|_| {
            SimError::Invalid(format!(
                "'{s}' is neither a card id (hex, e.g. 08) nor an APQN (e.g. 08.002f)"
            ))
        })
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Card(c) => write!(f, "card {c:02x}"),
            Target::Queue(a) => write!(f, "APQN {a}"),
        }
    }
}

/// A handle on a simulator directory.
///
/// Clones share one snapshot cache ([`Simulator::bus`]): a batch of HSM operations (validating
/// a repository of 100,000 keys costs several operations per key) reads `state.json` under the
/// shared lock every time, as it must to see a concurrent TKE change, but parses it only when
/// its bytes differ from the last parse.
#[derive(Clone)]
pub struct Simulator {
    dir: PathBuf,
    cache: Arc<Mutex<Option<Snapshot>>>,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the cache: it holds master keys.
        f.debug_struct("Simulator").field("dir", &self.dir).finish()
    }
}

/// The last state parsed by [`Simulator::bus`]: the exact bytes of `state.json` and the bus they
/// hold. Keyed by the whole content, not by mtime or inode (an inode is reused after a rename,
/// and mtime has a coarse granularity on some file systems), so a hit is the same state by
/// construction. Both the text and the bus hold master keys and are zeroed when dropped.
///
/// Only a state whose sysfs tree was current when it was parsed is cached. A tree goes stale
/// only when a writer crashes between storing a *new* state and rendering it, which changes the
/// bytes and so misses the cache: a hit needs no second look at `sys.generation`.
struct Snapshot {
    text: zeroize::Zeroizing<Vec<u8>>,
    bus: Bus,
}

impl Simulator {
    /// The directory to use: `explicit` (from `--dir`), else `$AP_SIM_DIR`, else [`DEFAULT_DIR`].
    pub fn locate(explicit: Option<&Path>) -> PathBuf {
        explicit
            .map(Path::to_path_buf)
            .or_else(|| {
                std::env::var_os(DIR_ENV)
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from)
            })
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DIR))
    }

    /// Opens an existing simulator.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Simulator, SimError> {
        let dir = dir.into();
        match fs::symlink_metadata(dir.join(STATE_FILE)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(SimError::NotInitialised(dir))
            }
            _ => {}
        }
        check_dir(&dir)?;
        Ok(Simulator::handle(dir))
    }

    /// Opens the simulator named by `$AP_SIM_DIR` (or the default directory).
    pub fn from_env() -> Result<Simulator, SimError> {
        Self::open(Self::locate(None))
    }

    /// Creates a simulator with fresh random CURRENT master keys. Refuses an existing one
    /// unless `force`.
    pub fn init(
        dir: impl Into<PathBuf>,
        layout: &Layout,
        force: bool,
    ) -> Result<Simulator, SimError> {
        let dir = dir.into();
        validate_layout(layout)?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            durable::create_dir_all_mode(parent, 0o755).map_err(io_err(parent))?;
        }
        durable::create_dir_all_mode(&dir, 0o700).map_err(io_err(&dir))?;
        check_dir(&dir)?;
        let sim = Simulator::handle(dir);
        let _lock = sim.lock(LockKind::Exclusive)?;
        if fs::symlink_metadata(sim.state_path()).is_ok() && !force {
            return Err(SimError::AlreadyInitialised(sim.dir));
        }
        let bus = build_bus(layout);
        // The audit trail outlives a re-initialised bus: its key and heads carry over, so the logs
        // written so far stay verifiable.
        let (generation, audit) = match sim.load() {
            Ok(old) => (old.generation + 1, old.audit),
            // A state file someone could have swapped is not silently replaced either.
            Err(e @ SimError::Untrusted(_)) => return Err(e),
            Err(_) => (1, AuditState::default()),
        };
        let sys = sim.sys_root();
        if sys.exists() {
            fs::remove_dir_all(&sys).map_err(io_err(&sys))?;
        }
        sim.store(&StateFile {
            format: FORMAT,
            generation,
            bus,
            audit,
        })?;
        Ok(sim)
    }

    fn handle(dir: PathBuf) -> Simulator {
        Simulator {
            dir,
            cache: Arc::new(Mutex::new(None)),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The rendered sysfs tree: point `SYSFS_ROOT` here.
    pub fn sys_root(&self) -> PathBuf {
        self.dir.join(SYS_DIR)
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    fn lock(&self, kind: LockKind) -> Result<Lock, SimError> {
        let p = self.dir.join(LOCK_FILE);
        Lock::acquire(&p, kind).map_err(io_err(&p))
    }

    fn load(&self) -> Result<StateFile, SimError> {
        let p = self.state_path();
        let text = read_state(&p)?;
        Self::parse(&p, &text)
    }

    fn parse(p: &Path, text: &[u8]) -> Result<StateFile, SimError> {
        let p = p.to_path_buf();
        let st: StateFile = serde_json::from_slice(text).map_err(|e| SimError::Corrupt {
            path: p.clone(),
            why: e.to_string(),
        })?;
        if st.format != FORMAT {
            return Err(SimError::Corrupt {
                path: p,
                why: format!("unknown format {}", st.format),
            });
        }
        Ok(st)
    }

    fn store(&self, st: &StateFile) -> Result<(), SimError> {
        let p = self.state_path();
        let text =
            zeroize::Zeroizing::new(serde_json::to_vec_pretty(st).expect("state serialises"));
        durable::write_atomic(&p, &text, 0o600).map_err(io_err(&p))?;
        self.render(st)
    }

    fn render(&self, st: &StateFile) -> Result<(), SimError> {
        let sys = self.sys_root();
        crate::sysfs::render(&st.bus, &sys).map_err(io_err(&sys))?;
        let g = self.dir.join(GENERATION_FILE);
        durable::replace_atomic(&g, st.generation.to_string().as_bytes(), 0o644).map_err(io_err(&g))
    }

    /// `None` when the tree must be rendered (no generation file, or one that does not parse).
    fn rendered_generation(&self) -> Result<Option<u64>, SimError> {
        let g = self.dir.join(GENERATION_FILE);
        match durable::read_nofollow(&g) {
            Ok(b) => Ok(String::from_utf8_lossy(&b).trim().parse().ok()),
            Err(e) if durable::Untrusted::of(&e).is_some() => Err(io_err(&g)(e)),
            Err(_) => Ok(None),
        }
    }

    /// A consistent snapshot of the bus, master keys included: for the HSM operations.
    /// Repairs a sysfs tree that a crash between the state write and the render left stale.
    ///
    /// Every call reads the state under the shared lock (so a change by another process is seen
    /// by the next operation, as on real hardware), but parses it only when it differs from the
    /// last state this handle (or a clone) parsed: see [`Snapshot`].
    pub fn bus(&self) -> Result<Bus, SimError> {
        let p = self.state_path();
        let text = {
            let _l = self.lock(LockKind::Shared)?;
            read_state(&p)?
        };
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cache.as_ref().filter(|c| c.text == text) {
            return Ok(c.bus.clone());
        }
        let st = Self::parse(&p, &text)?;
        if self.rendered_generation()? != Some(st.generation) {
            let _l = self.lock(LockKind::Exclusive)?;
            let st = self.load()?;
            self.render(&st)?;
            // Not cached: the next call parses again and finds the tree current.
            return Ok(st.bus);
        }
        let bus = st.bus.clone();
        *cache = Some(Snapshot { text, bus: st.bus });
        Ok(bus)
    }

    /// Drops (zeroizes) the snapshot this handle and its clones keep of the state, master keys
    /// included: before forking a process that must not inherit them. The next operation reads
    /// the state again.
    pub fn forget_state(&self) {
        *self.cache.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Applies `op` to the bus as one atomic change: all of it is stored, or (on error) none.
    pub fn update<T>(
        &self,
        op: impl FnOnce(&mut Bus) -> Result<T, SimError>,
    ) -> Result<T, SimError> {
        self.update_state(|st| op(&mut st.bus))
    }

    fn update_state<T>(
        &self,
        op: impl FnOnce(&mut StateFile) -> Result<T, SimError>,
    ) -> Result<T, SimError> {
        let _l = self.lock(LockKind::Exclusive)?;
        let mut st = self.load()?;
        let out = op(&mut st)?;
        st.generation += 1;
        self.store(&st)?;
        Ok(out)
    }

    // ----- audit trail secrets -----

    /// HMAC-SHA256 of `data` for the audit log `log`, with the adapter's audit key (made on
    /// first use). The key never leaves the simulator's private state.
    pub fn audit_mac(&self, log: &str, data: &[u8]) -> Result<[u8; 32], SimError> {
        Ok(self.audit_macs(log, &[data])?[0])
    }

    /// [`Simulator::audit_mac`] of many records at once, reading the state once.
    pub fn audit_macs(&self, log: &str, data: &[&[u8]]) -> Result<Vec<[u8; 32]>, SimError> {
        let key = {
            let _l = self.lock(LockKind::Shared)?;
            self.load()?.audit.key
        };
        let key = match key {
            Some(k) => k,
            None => self.update_state(|st| {
                Ok(st.audit.key.get_or_insert_with(MasterKey::random).clone())
            })?,
        };
        use hmac::Mac;
        let base =
            hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).expect("any key length");
        Ok(data
            .iter()
            .map(|d| {
                let mut m = base.clone();
                m.update(log.as_bytes());
                m.update(&[0]);
                m.update(d);
                m.finalize().into_bytes().into()
            })
            .collect())
    }

    /// Records a log's new head; a head never moves backwards.
    pub fn audit_set_head(&self, log: &str, head: AuditHead) -> Result<(), SimError> {
        self.update_state(|st| {
            let cur = st
                .audit
                .heads
                .entry(log.to_string())
                .or_insert_with(|| head.clone());
            if head.seq >= cur.seq {
                *cur = head;
            }
            Ok(())
        })
    }

    /// The last record of `log` the adapter confirmed, if any.
    pub fn audit_head(&self, log: &str) -> Result<Option<AuditHead>, SimError> {
        let _l = self.lock(LockKind::Shared)?;
        Ok(self.load()?.audit.heads.get(log).cloned())
    }

    /// Runs `op` on a copy of the bus and discards it: whether an update would succeed.
    pub fn check<T>(
        &self,
        op: impl FnOnce(&mut Bus) -> Result<T, SimError>,
    ) -> Result<T, SimError> {
        let _l = self.lock(LockKind::Shared)?;
        op(&mut self.load()?.bus)
    }

    // ----- TKE -----

    /// Loads one random key into NEW of every APQN given (all share it). Returns its pattern.
    pub fn tke_load_random(&self, apqns: &[Apqn], mktype: MkType) -> Result<Mkvp, SimError> {
        let key = MasterKey::random();
        let mkvp = pattern(mktype, &key);
        self.tke_audited("load-new", apqns, mktype, |bus| {
            for_each_register(bus, apqns, mktype, |r| match r {
                RegMut::Cca(r) => r.load_full(&key),
                RegMut::Ep11(r) => r.load_full(&key),
            })?;
            Ok((
                mkvp,
                Note {
                    new: Some(mkvp),
                    details: Some("random key".into()),
                    ..Note::default()
                },
            ))
        })
    }

    /// Loads a key part into NEW of every APQN given, after checking the custodian's checksum.
    pub fn tke_load_part(
        &self,
        apqns: &[Apqn],
        mktype: MkType,
        part: KeyPart,
        value: &MasterKey,
        checksum: u8,
    ) -> Result<PartReport, SimError> {
        let part_vp = registers::part_vp(value);
        self.tke_audited("load-part", apqns, mktype, |bus| {
            let actual = registers::part_checksum(value);
            if actual != checksum {
                return Err(SimError::Checksum {
                    expected: checksum,
                    actual,
                });
            }
            for_each_register(bus, apqns, mktype, |r| match r {
                RegMut::Cca(r) => r.load_part(part, value),
                RegMut::Ep11(r) => r.load_part(part, value),
            })?;
            // After a FINAL part every APQN holds the same complete key; report its pattern.
            let view = register_views(bus, apqns[0], mktype)?;
            let new_mkvp = view.new.mkvp.filter(|_| part == KeyPart::Final);
            let details = format!("{part:?} key part, part VP {part_vp}").to_lowercase();
            let report = PartReport {
                checksum: format!("{actual:02X}"),
                part_vp,
                new_mkvp,
            };
            Ok((
                report,
                Note {
                    new: new_mkvp,
                    details: Some(details),
                    ..Note::default()
                },
            ))
        })
    }

    /// EP11: commits an uncommitted NEW wrapping key.
    pub fn tke_commit(&self, apqns: &[Apqn]) -> Result<(), SimError> {
        self.tke_audited("commit", apqns, MkType::Ep11, |bus| {
            for_each_register(bus, apqns, MkType::Ep11, |r| match r {
                RegMut::Ep11(r) => r.commit(),
                RegMut::Cca(_) => unreachable!("mode checked"),
            })?;
            let new = apqns
                .first()
                .and_then(|a| register_views(bus, *a, MkType::Ep11).ok())
                .and_then(|v| v.new.mkvp);
            Ok((
                (),
                Note {
                    new,
                    ..Note::default()
                },
            ))
        })
    }

    /// SET: NEW becomes CURRENT on every APQN given, or on none.
    pub fn tke_set(&self, apqns: &[Apqn], mktype: MkType) -> Result<(), SimError> {
        self.tke_audited("set", apqns, mktype, |bus| {
            let before = apqns
                .first()
                .and_then(|a| register_views(bus, *a, mktype).ok());
            set_all(bus, apqns, mktype)?;
            let note = Note {
                old: before.as_ref().and_then(|v| v.current.mkvp),
                new: before.as_ref().and_then(|v| v.new.mkvp),
                details: None,
            };
            Ok(((), note))
        })
    }

    /// Whether [`Simulator::tke_set`] would succeed now, so a caller can ask before it acts.
    /// A refusal is recorded in the TKE audit log like a refused SET.
    pub fn tke_check_set(&self, apqns: &[Apqn], mktype: MkType) -> Result<(), SimError> {
        match self.check(|bus| set_all(bus, apqns, mktype)) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.tke_record("set", apqns, mktype, Err(&e), Note::default())?;
                Err(e)
            }
        }
    }

    pub fn tke_clear_new(&self, apqns: &[Apqn], mktype: MkType) -> Result<(), SimError> {
        self.tke_audited("clear-new", apqns, mktype, |bus| {
            let old = apqns
                .first()
                .and_then(|a| register_views(bus, *a, mktype).ok())
                .and_then(|v| v.new.mkvp);
            for_each_register(bus, apqns, mktype, |r| {
                match r {
                    RegMut::Cca(r) => r.clear_new(),
                    RegMut::Ep11(r) => r.clear_new(),
                }
                Ok(())
            })?;
            Ok((
                (),
                Note {
                    old,
                    ..Note::default()
                },
            ))
        })
    }

    /// The TKE's own audit log: every TKE action, done or refused.
    pub fn tke_audit_log(&self) -> AuditLog {
        AuditLog::new(self.dir.join(AUDIT_FILE), TKE_AUDIT_ID, self.clone())
    }

    /// Runs a TKE action as one update between its intent and its result in the TKE audit log,
    /// so that a crash between the update and its record leaves an intent that verification
    /// reports as unknown, never a change of the registers that is not on record. A log that
    /// refuses the intent stops the action before it changes anything.
    fn tke_audited<T>(
        &self,
        action: &str,
        apqns: &[Apqn],
        mktype: MkType,
        op: impl FnOnce(&mut Bus) -> Result<(T, Note), SimError>,
    ) -> Result<T, SimError> {
        let log = self.tke_audit_log();
        let intent = log
            .append_intent(tke_event(action, apqns, mktype, Note::default(), String::new()))
            .map_err(|e| {
                SimError::Invalid(format!(
                    "the TKE action was not done: its intent could not be recorded in the audit log: {e}"
                ))
            })?;
        let res = self.update(op);
        let (outcome, note) = match &res {
            Ok((_, n)) => (Ok(()), n.clone()),
            Err(e) => (Err(e), Note::default()),
        };
        let event = tke_event(action, apqns, mktype, note, result_text(outcome));
        log.append_result(&intent, event)
            .map_err(|e| unrecorded(outcome, e))?;
        res.map(|(t, _)| t)
    }

    /// Records a refusal that changed nothing (no intent: there was no change to announce).
    fn tke_record(
        &self,
        action: &str,
        apqns: &[Apqn],
        mktype: MkType,
        outcome: Result<(), &SimError>,
        note: Note,
    ) -> Result<(), SimError> {
        let event = tke_event(action, apqns, mktype, note, result_text(outcome));
        self.tke_audit_log()
            .append(event)
            .map(drop)
            .map_err(|e| unrecorded(outcome, e))
    }

    /// The registers of the given APQNs (all APQNs with master keys when `None`).
    pub fn register_status(&self, apqns: Option<&[Apqn]>) -> Result<Vec<ApqnRegisters>, SimError> {
        let bus = self.bus()?;
        let list: Vec<Apqn> = match apqns {
            Some(l) => l.to_vec(),
            None => bus
                .apqns()
                .filter(|a| {
                    bus.queue(*a)
                        .is_some_and(|(c, _)| c.mode() != Mode::Accelerator)
                })
                .collect(),
        };
        list.into_iter()
            .map(|apqn| {
                let (card, queue) = bus.queue(apqn).ok_or(SimError::UnknownApqn(apqn))?;
                let registers = card
                    .mode()
                    .mk_types()
                    .iter()
                    .map(|t| register_views(&bus, apqn, *t))
                    .collect::<Result<_, _>>()?;
                Ok(ApqnRegisters {
                    apqn,
                    card_type: card.card_type,
                    status: Bus::queue_status(card, queue),
                    registers,
                })
            })
            .collect()
    }

    // ----- adapter administration (chzcrypt) -----

    /// Sets a card (and all its queues) or one queue online or offline.
    pub fn set_online(&self, target: Target, online: bool) -> Result<(), SimError> {
        self.update(|bus| match target {
            Target::Card(c) => {
                let card = bus.cards.get_mut(&c).ok_or(SimError::UnknownCard(c))?;
                if online && !card.config {
                    return Err(SimError::Refused { action: "setting online", target: target.to_string(), why: "the card is deconfigured (ENODEV): configure it first with 'ap-sim chzcrypt --config-on'" });
                }
                card.online = online;
                card.queues.values_mut().for_each(|q| q.online = online);
                Ok(())
            }
            Target::Queue(a) => {
                let card = bus.cards.get(&a.card()).ok_or(SimError::UnknownApqn(a))?;
                if online && (!card.online || !card.config) {
                    return Err(SimError::Refused { action: "setting online", target: target.to_string(), why: "its card is offline (EINVAL): set the card online first" });
                }
                bus.queue_mut(a).ok_or(SimError::UnknownApqn(a))?.online = online;
                Ok(())
            }
        })
    }

    /// Configures or deconfigures a card, as `chzcrypt --config-on/--config-off` does.
    pub fn set_config(&self, card: u8, config: bool) -> Result<(), SimError> {
        self.update(|bus| {
            let c = bus
                .cards
                .get_mut(&card)
                .ok_or(SimError::UnknownCard(card))?;
            c.config = config;
            if config {
                // A card that comes back into the configuration is brought online by the bus scan.
                c.online = true;
                c.queues.values_mut().for_each(|q| q.online = true);
            }
            Ok(())
        })
    }

    /// Puts a card or queue into check-stop (a hardware fault), or clears it.
    pub fn set_chkstop(&self, target: Target, chkstop: bool) -> Result<(), SimError> {
        self.update(|bus| {
            match target {
                Target::Card(c) => {
                    bus.cards
                        .get_mut(&c)
                        .ok_or(SimError::UnknownCard(c))?
                        .chkstop = chkstop
                }
                Target::Queue(a) => {
                    bus.queue_mut(a).ok_or(SimError::UnknownApqn(a))?.chkstop = chkstop
                }
            }
            Ok(())
        })
    }
}

fn set_all(bus: &mut Bus, apqns: &[Apqn], mktype: MkType) -> Result<(), SimError> {
    for_each_register(bus, apqns, mktype, |r| match r {
        RegMut::Cca(r) => r.set(),
        RegMut::Ep11(r) => r.set(),
    })
}

fn validate_layout(layout: &Layout) -> Result<(), SimError> {
    if layout.cards.is_empty() {
        return Err(SimError::Invalid(
            "the layout has no cards: give at least one --card ID=TYPE".into(),
        ));
    }
    if layout.domains.is_empty() {
        return Err(SimError::Invalid(
            "the layout has no domains: give at least one --domain".into(),
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (id, _) in &layout.cards {
        if !seen.insert(id) {
            return Err(SimError::Invalid(format!("card {id:02x} is given twice")));
        }
    }
    if let Some(d) = layout.domains.iter().find(|d| **d > 0xff) {
        return Err(SimError::Invalid(format!(
            "domain {d:04x} is above the AP bus's highest usage domain (00ff)"
        )));
    }
    Ok(())
}

fn serial(id: u8, mode: Mode) -> String {
    // 8 characters, as real CCA and EP11 serial numbers.
    format!("SIM{}{id:04X}", mode.letter())
}

fn build_bus(layout: &Layout) -> Bus {
    use std::collections::BTreeMap;
    // One key per (mode, domain, type) when shared, else a fresh one per queue.
    let mut shared: BTreeMap<(u8, u16, MkType), MasterKey> = BTreeMap::new();
    let mut key = |mode: Mode, domain: u16, t: MkType| {
        if layout.shared_keys {
            let m = mode.letter() as u8;
            shared
                .entry((m, domain, t))
                .or_insert_with(MasterKey::random)
                .clone()
        } else {
            MasterKey::random()
        }
    };
    let mut bus = Bus::default();
    for (id, ty) in &layout.cards {
        let mode = ty.mode();
        let queues = layout
            .domains
            .iter()
            .map(|d| {
                let keys = match mode {
                    Mode::Accelerator => QueueKeys::Accelerator,
                    Mode::Cca => QueueKeys::Cca {
                        aes: CcaRegisters::with_current(key(mode, *d, MkType::Aes)),
                        apka: CcaRegisters::with_current(key(mode, *d, MkType::Apka)),
                    },
                    Mode::Ep11 => QueueKeys::Ep11 {
                        wk: Ep11Registers::with_current(key(mode, *d, MkType::Ep11)),
                    },
                };
                (
                    *d,
                    Queue {
                        online: true,
                        chkstop: false,
                        keys,
                    },
                )
            })
            .collect();
        let ep11 = mode == Mode::Ep11;
        bus.cards.insert(
            *id,
            Card {
                card_type: *ty,
                serialnr: serial(*id, mode),
                online: true,
                config: true,
                chkstop: false,
                api_ordinal: if ep11 { 6 } else { 0 },
                fw_version: if ep11 { (7, 19) } else { (0, 0) },
                queues,
            },
        );
    }
    bus
}

fn pattern(mktype: MkType, key: &MasterKey) -> Mkvp {
    match mktype {
        MkType::Ep11 => key.ep11_wkvp(),
        _ => key.cca_mkvp(),
    }
}

enum RegMut<'a> {
    Cca(&'a mut CcaRegisters),
    Ep11(&'a mut Ep11Registers),
}

/// Resolves the register set of `mktype` on `apqn`.
fn registers_mut(bus: &mut Bus, apqn: Apqn, mktype: MkType) -> Result<RegMut<'_>, SimError> {
    let card_type = bus
        .card(apqn.card())
        .map(|c| c.card_type)
        .ok_or(SimError::UnknownApqn(apqn))?;
    let q = bus.queue_mut(apqn).ok_or(SimError::UnknownApqn(apqn))?;
    let wrong = || SimError::WrongMode {
        apqn,
        card_type,
        mode: card_type.mode().lszcrypt_name(),
        mktype,
    };
    match (&mut q.keys, mktype) {
        (QueueKeys::Cca { aes, .. }, MkType::Aes) => Ok(RegMut::Cca(aes)),
        (QueueKeys::Cca { apka, .. }, MkType::Apka) => Ok(RegMut::Cca(apka)),
        (QueueKeys::Ep11 { wk }, MkType::Ep11) => Ok(RegMut::Ep11(wk)),
        _ => Err(wrong()),
    }
}

/// Runs `op` on the `mktype` registers of every APQN. The caller's `update` discards the whole
/// copy if any APQN fails, so the group succeeds or fails as one.
fn for_each_register(
    bus: &mut Bus,
    apqns: &[Apqn],
    mktype: MkType,
    mut op: impl FnMut(RegMut<'_>) -> Result<(), RegisterError>,
) -> Result<(), SimError> {
    if apqns.is_empty() {
        return Err(SimError::Invalid(
            "no APQN given: name the domain group with --apqns".into(),
        ));
    }
    for apqn in apqns {
        let r = registers_mut(bus, *apqn, mktype)?;
        op(r).map_err(|e| SimError::Register(*apqn, e))?;
    }
    Ok(())
}

/// The registers of one type on one APQN, as seen from outside.
pub fn register_views(bus: &Bus, apqn: Apqn, mktype: MkType) -> Result<TypeRegisters, SimError> {
    let (card, q) = bus.queue(apqn).ok_or(SimError::UnknownApqn(apqn))?;
    let card_type = card.card_type;
    match (&q.keys, mktype) {
        (QueueKeys::Cca { aes: r, .. }, MkType::Aes)
        | (QueueKeys::Cca { apka: r, .. }, MkType::Apka) => Ok(TypeRegisters {
            mktype,
            new: r.new_view(),
            current: r.current_view(),
            old: Some(r.old_view()),
        }),
        (QueueKeys::Ep11 { wk }, MkType::Ep11) => Ok(TypeRegisters {
            mktype,
            new: wk.new_view(),
            current: wk.current_view(),
            old: None,
        }),
        _ => Err(SimError::WrongMode {
            apqn,
            card_type,
            mode: card_type.mode().lszcrypt_name(),
            mktype,
        }),
    }
}
fn tke_event(action: &str, apqns: &[Apqn], mktype: MkType, note: Note, result: String) -> Event {
    Event {
        event: format!("tke-{action}"),
        command: format!("ap-sim tke {action}"),
        apqns: apqns.to_vec(),
        mktype: Some(mktype),
        old_mkvp: note.old,
        new_mkvp: note.new,
        keys: Vec::new(),
        result,
        details: note.details,
    }
}

fn result_text(outcome: Result<(), &SimError>) -> String {
    match outcome {
        Ok(()) => "ok".to_string(),
        Err(e) => format!("failed: {e}"),
    }
}

fn unrecorded(outcome: Result<(), &SimError>, e: AuditError) -> SimError {
    let done = if outcome.is_ok() {
        "was done"
    } else {
        "was refused"
    };
    SimError::Invalid(format!(
        "the TKE action {done}, but it could not be recorded in the audit log: {e}"
    ))
}

/// The adapter keeps the audit trail honest: the MAC key and the logs' heads are in its
/// private state.
impl Authenticator for Simulator {
    fn macs(&self, log: &str, data: &[&[u8]]) -> Result<Vec<[u8; 32]>, AuditError> {
        self.audit_macs(log, data).map_err(AuditError::from)
    }

    fn head(&self, log: &str) -> Result<Option<AuditHead>, AuditError> {
        self.audit_head(log).map_err(AuditError::from)
    }

    fn set_head(&self, log: &str, head: AuditHead) -> Result<(), AuditError> {
        self.audit_set_head(log, head).map_err(AuditError::from)
    }
}

impl From<SimError> for AuditError {
    fn from(e: SimError) -> Self {
        AuditError::Adapter(Box::new(e))
    }
}
