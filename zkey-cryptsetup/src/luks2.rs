//! LUKS2 header operations for volumes whose volume key is an IBM Z secure key.
//!
//! A "paes" volume stores the *secure* key (the adapter-wrapped token bytes, or the two tokens of
//! an XTS pair) where a plain LUKS2 volume stores the clear volume key: the kernel's `paes`
//! cipher unwraps it through the adapters at activation. Re-enciphering the secure key under a
//! new master key therefore changes the bytes of the LUKS2 volume key while the effective AES key
//! (and the data) stay the same; LUKS2 supports exactly that with *unbound* keyslots (a keyslot
//! holding a key that is not the segment's) and `CRYPT_VOLUME_KEY_SET` (make an unbound keyslot's
//! key the segment's key, leaving the previous keyslots unbound).
//!
//! Everything here goes through libcryptsetup (`libcryptsetup-rs`), which writes both header
//! copies itself with a sequence number, so each single call below is one atomic metadata commit:
//! a crash leaves the header before or after it, never between. The crash-safety argument of the
//! multi-step flows ([`crate::reencipher`]) is built on that, one commit per step, with a
//! `luks2` fail point after each commit (see [`crash_point`]).
//!
//! Tokens, as IBM's zkey-cryptsetup writes them:
//! ```text
//! {"type":"paes-verification-pattern","keyslots":[],"verification-pattern":"<64hex>"}
//! {"type":"paes-reencipher","keyslots":["<u>"],"verification-pattern":"<64hex>",
//!  "original-keyslot":N,"unbound-keyslot":U}
//! ```
//! They are parsed strictly ([`VpToken`], [`ReencipherToken`]): a malformed token is an error
//! naming the token and how to remove it, never silently ignored.

use std::fmt;
use std::path::{Path, PathBuf};

use libcryptsetup_rs::consts::flags::{CryptPbkdf, CryptVolumeKey};
use libcryptsetup_rs::consts::vals::{CryptKdf, EncryptionFormat, KeyslotInfo, LuksType};
use libcryptsetup_rs::{
    CryptDevice, CryptInit, CryptParamsLuks2, CryptParamsLuks2Ref, CryptPbkdfType,
    CryptSettingsHandle, CryptTokenInfo, Either, LibcryptErr, TokenInput,
};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::Error;

/// The LUKS2 limit on keyslots and on tokens.
const MAX_SLOTS: u32 = 32;
const MAX_TOKENS: u32 = 32;

/// `type` of the verification pattern token.
pub const VP_TOKEN_TYPE: &str = "paes-verification-pattern";
/// `type` of the staged re-encipher token.
pub const REENCIPHER_TOKEN_TYPE: &str = "paes-reencipher";

/// The cipher every volume of this crate uses: the kernel's protected-key AES.
pub const CIPHER: &str = "paes";

/// The `luks2` crash point, placed after every header commit of a multi-step flow. With the
/// `failpoints` feature, `FAILPOINTS=luks2=N*off->return` aborts the process (a crash: no
/// destructors, nothing flushed) at the N+1th commit; the binary arms it with
/// `ap_sim::durable::arm_crash_points()`. Without the feature it compiles to nothing.
pub fn crash_point() {
    fail::fail_point!("luks2", |_| std::process::abort());
}

pub use ap_sim::VerificationPattern;

/// The `paes-verification-pattern` token: the VP of the volume's effective key, so that a key
/// set later (setkey, re-encipher) can be proven to be the same AES key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VpToken {
    #[serde(rename = "type")]
    pub kind: String,
    pub keyslots: Vec<String>,
    #[serde(rename = "verification-pattern")]
    pub verification_pattern: VerificationPattern,
    /// Written by IBM's tool for `phmac` integrity volumes; kept when read, never written here.
    #[serde(
        rename = "integrity-verification-pattern",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub integrity_verification_pattern: Option<VerificationPattern>,
}

impl VpToken {
    /// Parses a token's JSON text as the header holds it, strictly (unknown fields, a VP that
    /// is not 64 hex digits: refused). A pure function of outside input, fuzzed in `fuzz/`.
    pub fn from_json(json: &[u8]) -> Result<VpToken, String> {
        serde_json::from_slice(json).map_err(|e| e.to_string())
    }

    pub fn new(vp: VerificationPattern) -> Self {
        VpToken {
            kind: VP_TOKEN_TYPE.into(),
            keyslots: Vec::new(),
            verification_pattern: vp,
            integrity_verification_pattern: None,
        }
    }
}

/// The `paes-reencipher` token: a staged re-encipher in progress. `unbound-keyslot` holds the
/// re-enciphered secure key (and is the one keyslot the token is assigned to); `original-keyslot`
/// is the keyslot the passphrase opened when it was prepared.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReencipherToken {
    #[serde(rename = "type")]
    pub kind: String,
    pub keyslots: Vec<String>,
    #[serde(rename = "verification-pattern")]
    pub verification_pattern: VerificationPattern,
    #[serde(
        rename = "integrity-verification-pattern",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub integrity_verification_pattern: Option<VerificationPattern>,
    #[serde(rename = "original-keyslot")]
    pub original_keyslot: u32,
    #[serde(rename = "unbound-keyslot")]
    pub unbound_keyslot: u32,
    /// The master key verification pattern of the staged key (this suite's addition; IBM's
    /// tool neither writes nor reads it): it lets the header alone tell a stage for the NEW key
    /// loaded now from a stale one for a NEW key that was cleared or replaced.
    #[serde(rename = "zkey-mkvp", default, skip_serializing_if = "Option::is_none")]
    pub mkvp: Option<String>,
}

impl ReencipherToken {
    /// Parses a token's JSON text as the header holds it, strictly, and checks what can be
    /// checked without the header ([`ReencipherToken::check`]). Fuzzed in `fuzz/`.
    pub fn from_json(json: &[u8]) -> Result<ReencipherToken, String> {
        let t: ReencipherToken = serde_json::from_slice(json).map_err(|e| e.to_string())?;
        t.check()?;
        Ok(t)
    }

    /// The token's own consistency: assigned to exactly its unbound keyslot, which is not the
    /// original keyslot. (That the keyslot exists is the header's business.)
    pub fn check(&self) -> Result<(), String> {
        if self.keyslots != [self.unbound_keyslot.to_string()] {
            return Err(format!(
                "it is assigned to keyslots {:?}, not to its unbound-keyslot {}",
                self.keyslots, self.unbound_keyslot
            ));
        }
        if self.unbound_keyslot == self.original_keyslot {
            return Err(format!(
                "its unbound-keyslot and original-keyslot are both {}",
                self.unbound_keyslot
            ));
        }
        Ok(())
    }

    pub fn new(
        vp: VerificationPattern,
        original_keyslot: u32,
        unbound_keyslot: u32,
        mkvp: ap_sim::Mkvp,
    ) -> Self {
        ReencipherToken {
            mkvp: Some(mkvp.to_string()),
            kind: REENCIPHER_TOKEN_TYPE.into(),
            keyslots: vec![unbound_keyslot.to_string()],
            verification_pattern: vp,
            integrity_verification_pattern: None,
            original_keyslot,
            unbound_keyslot,
        }
    }
}

/// The PBKDF of new passphrase keyslots.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Pbkdf {
    /// libcryptsetup's LUKS2 default (argon2id, benchmarked to ~2 s and up to 1 GiB): what
    /// production volumes get.
    #[default]
    Default,
    /// A PBKDF with fixed costs and no benchmark, as `cryptsetup --pbkdf TYPE
    /// --pbkdf-force-iterations N` makes it. Tests use `pbkdf2` with 1000 iterations (the
    /// minimum libcryptsetup accepts) so that a keyslot costs milliseconds, not seconds.
    Forced {
        kind: PbkdfKind,
        iterations: u32,
        /// argon2 only: memory cost in KiB (libcryptsetup's default when `None`).
        memory_kb: Option<u32>,
        /// argon2 only: threads (libcryptsetup's default when `None`).
        parallel: Option<u32>,
        /// pbkdf2 only: the hash (sha256 when `None`).
        hash: Option<String>,
    },
}

/// A PBKDF algorithm, named as cryptsetup names it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum PbkdfKind {
    Pbkdf2,
    Argon2i,
    Argon2id,
}

impl std::str::FromStr for PbkdfKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pbkdf2" => Ok(PbkdfKind::Pbkdf2),
            "argon2i" => Ok(PbkdfKind::Argon2i),
            "argon2id" => Ok(PbkdfKind::Argon2id),
            _ => Err(format!(
                "unknown PBKDF '{s}': use pbkdf2, argon2i or argon2id"
            )),
        }
    }
}

/// The environment variables that force a PBKDF, for tests and scripts that format many volumes.
pub const PBKDF_ENV: &str = "ZKEY_CRYPTSETUP_PBKDF";
pub const PBKDF_ITERATIONS_ENV: &str = "ZKEY_CRYPTSETUP_PBKDF_FORCE_ITERATIONS";

impl Pbkdf {
    /// What `$ZKEY_CRYPTSETUP_PBKDF` and `$ZKEY_CRYPTSETUP_PBKDF_FORCE_ITERATIONS` ask for, else
    /// the strong default (libcryptsetup's benchmarked argon2id).
    pub fn from_env() -> Result<Pbkdf, String> {
        let kind = std::env::var(PBKDF_ENV).ok().filter(|v| !v.is_empty());
        let iterations = std::env::var(PBKDF_ITERATIONS_ENV)
            .ok()
            .filter(|v| !v.is_empty());
        match (kind, iterations) {
            (None, None) => Ok(Pbkdf::Default),
            (kind, Some(n)) => Ok(Pbkdf::Forced {
                kind: kind
                    .as_deref()
                    .map(str::parse)
                    .transpose()?
                    .unwrap_or(PbkdfKind::Argon2id),
                iterations: n
                    .parse()
                    .map_err(|_| format!("{PBKDF_ITERATIONS_ENV}='{n}' is not a number"))?,
                memory_kb: None,
                parallel: None,
                hash: None,
            }),
            (Some(_), None) => Err(format!("{PBKDF_ENV} needs {PBKDF_ITERATIONS_ENV} as well")),
        }
    }

    fn to_crypt(&self) -> Result<Option<CryptPbkdfType>, LibcryptErr> {
        let Pbkdf::Forced {
            kind,
            iterations,
            memory_kb,
            parallel,
            hash,
        } = self
        else {
            return Ok(None);
        };
        let type_ = match kind {
            PbkdfKind::Pbkdf2 => CryptKdf::Pbkdf2,
            PbkdfKind::Argon2i => CryptKdf::Argon2I,
            PbkdfKind::Argon2id => CryptKdf::Argon2Id,
        };
        let default = CryptSettingsHandle::get_pbkdf_default(&LuksType::Luks2)?;
        let pbkdf2 = *kind == PbkdfKind::Pbkdf2;
        Ok(Some(CryptPbkdfType {
            type_,
            hash: Some(hash.clone().unwrap_or_else(|| "sha256".into())),
            time_ms: 0,
            iterations: *iterations,
            max_memory_kb: if pbkdf2 {
                0
            } else {
                memory_kb.unwrap_or(default.max_memory_kb)
            },
            parallel_threads: if pbkdf2 {
                0
            } else {
                parallel.unwrap_or(default.parallel_threads)
            },
            flags: CryptPbkdf::NO_BENCHMARK,
        }))
    }
}

/// How to format a volume.
#[derive(Clone, Debug)]
pub struct FormatOptions {
    /// Encryption sector size in bytes: 512, 1024, 2048 or 4096.
    pub sector_size: u32,
    pub pbkdf: Pbkdf,
    pub label: Option<String>,
}

impl Default for FormatOptions {
    fn default() -> Self {
        FormatOptions {
            sector_size: 4096,
            pbkdf: Pbkdf::Default,
            label: None,
        }
    }
}

/// What a keyslot is to the volume.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum SlotState {
    /// Holds the volume (segment) key.
    Bound,
    /// Holds another key (`--unbound`).
    Unbound,
}

/// A token found in the header, by id.
#[derive(Clone, Debug)]
pub struct Found<T> {
    pub id: u32,
    pub token: T,
}

/// An opened LUKS2 volume whose cipher is `paes`.
pub struct Volume {
    dev: CryptDevice,
    path: PathBuf,
}

impl fmt::Debug for Volume {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Volume({})", self.path.display())
    }
}

/// The display name of a device in messages.
pub(crate) fn name(path: &Path) -> String {
    path.display().to_string()
}

fn errno(e: &LibcryptErr) -> Option<i32> {
    match e {
        LibcryptErr::IOError(io) => io.raw_os_error(),
        _ => None,
    }
}

/// Formats `device` as LUKS2 with `secure_key` (one token, or an XTS pair) as its volume key:
/// cipher `paes`, mode `xts-plain64` for an XTS pair or `cbc-plain64` for a single key, key size
/// = the secure key's length, one passphrase keyslot, and the VP token. Everything on the device
/// before is lost. The caller has checked the key with the adapters and computed `vp`.
pub fn format(
    device: &Path,
    secure_key: &[u8],
    xts: bool,
    vp: &VerificationPattern,
    opts: &FormatOptions,
    passphrase: &[u8],
) -> Result<u32, Error> {
    if !matches!(opts.sector_size, 512 | 1024 | 2048 | 4096) {
        return Err(Error::Invalid(format!(
            "sector size {} is not 512, 1024, 2048 or 4096",
            opts.sector_size
        )));
    }
    let dev_name = name(device);
    let header = |op: &'static str| {
        let dev_name = dev_name.clone();
        move |source: LibcryptErr| Error::Header {
            device: dev_name,
            op,
            source,
        }
    };
    let mut dev = CryptInit::init(device).map_err(|e| Error::Open {
        device: dev_name.clone(),
        source: e,
    })?;
    let pbkdf = opts.pbkdf.to_crypt().map_err(header("set the PBKDF"))?;
    let params = CryptParamsLuks2 {
        pbkdf,
        integrity: None,
        integrity_params: None,
        data_alignment: 0,
        data_device: None,
        sector_size: opts.sector_size,
        label: opts.label.clone(),
        subsystem: None,
    };
    let mut params_ref: CryptParamsLuks2Ref<'_> =
        (&params).try_into().map_err(header("prepare the header"))?;
    let mode = if xts { "xts-plain64" } else { "cbc-plain64" };
    dev.context_handle()
        .format(
            EncryptionFormat::Luks2,
            (CIPHER, mode),
            None,
            Either::Left(secure_key),
            Some(&mut params_ref),
        )
        .map_err(header("format"))?;
    drop(params_ref);
    // crypt_format() left the PBKDF of `params` in the context: the keyslot below uses it.
    let slot = dev
        .keyslot_handle()
        .add_by_key(
            None,
            Some(Either::Left(secure_key)),
            passphrase,
            CryptVolumeKey::empty(),
        )
        .map_err(header("add the passphrase keyslot"))?;
    let mut vol = Volume {
        dev,
        path: device.to_path_buf(),
    };
    vol.set_vp_token(&VpToken::new(*vp))?;
    Ok(slot)
}

/// What [`Volume::load`] found on a device.
#[derive(Debug)]
pub enum Loaded {
    /// A LUKS2 header, whatever its cipher.
    Luks2(Volume),
    /// A LUKS1 header.
    Luks1,
    /// No LUKS header at all: a blank device, or another format.
    NoLuks,
}

/// The LUKS magic of the primary header, and of a LUKS2 secondary header.
const LUKS_MAGIC: &[u8; 6] = b"LUKS\xba\xbe";
const LUKS2_SECONDARY_MAGIC: &[u8; 6] = b"SKUL\xba\xbe";
/// Where a LUKS2 secondary header may start: right after a primary of 16 KiB to 4 MiB.
const LUKS2_SECONDARY_OFFSETS: [u64; 9] = [
    0x4000, 0x8000, 0x10000, 0x20000, 0x40000, 0x80000, 0x100000, 0x200000, 0x400000,
];

/// The LUKS version whose magic `device` carries, if any: the primary header's, else (2) a
/// LUKS2 secondary header's. What tells a damaged LUKS2 header from no header at all.
fn luks_version(device: &Path) -> std::io::Result<Option<u16>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(device)?;
    let mut at = |offset: u64, buf: &mut [u8; 8]| -> std::io::Result<bool> {
        f.seek(SeekFrom::Start(offset))?;
        match f.read_exact(buf) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
            Err(e) => Err(e),
        }
    };
    let mut buf = [0u8; 8];
    if at(0, &mut buf)? && &buf[..6] == LUKS_MAGIC {
        return Ok(Some(u16::from_be_bytes([buf[6], buf[7]])));
    }
    for offset in LUKS2_SECONDARY_OFFSETS {
        if !at(offset, &mut buf)? {
            break;
        }
        if &buf[..6] == LUKS2_SECONDARY_MAGIC {
            return Ok(Some(2));
        }
    }
    Ok(None)
}

impl Volume {
    /// Reads the LUKS2 header of `device`, whatever its cipher. A device with no LUKS header,
    /// or a LUKS1 one, is not an error; a device that cannot be read is, and so is a LUKS2
    /// header that libcryptsetup cannot load (damaged: saying "not formatted" would hide it).
    pub fn load(device: &Path) -> Result<Loaded, Error> {
        let dev_name = name(device);
        let mut dev = CryptInit::init(device).map_err(|e| Error::Open {
            device: dev_name.clone(),
            source: e,
        })?;
        let err = match dev
            .context_handle()
            .load::<()>(Some(EncryptionFormat::Luks2), None)
        {
            Ok(()) => {
                return Ok(Loaded::Luks2(Volume {
                    dev,
                    path: device.to_path_buf(),
                }))
            }
            Err(e) => e,
        };
        match luks_version(device) {
            Ok(None) => Ok(Loaded::NoLuks),
            Ok(Some(1)) => Ok(Loaded::Luks1),
            Ok(Some(_)) => Err(Error::NotLuks2 {
                device: dev_name.clone(),
                why: format!(
                    "its LUKS2 header cannot be read ({err}); 'cryptsetup repair {dev_name}' may restore it from the other header copy, or restore a header backup with 'cryptsetup luksHeaderRestore'"
                ),
            }),
            Err(source) => Err(Error::Read {
                what: "the device",
                path: dev_name,
                source,
            }),
        }
    }

    /// Opens the LUKS2 header of `device` and checks that it is a `paes` volume.
    pub fn open(device: &Path) -> Result<Volume, Error> {
        let dev_name = name(device);
        let mut vol = match Volume::load(device)? {
            Loaded::Luks2(vol) => vol,
            Loaded::Luks1 => {
                return Err(Error::NotLuks2 {
                    device: dev_name,
                    why: "it is a LUKS1 volume".to_string(),
                })
            }
            Loaded::NoLuks => {
                return Err(Error::NotLuks2 {
                    device: dev_name,
                    why: "no LUKS2 header found".to_string(),
                })
            }
        };
        let cipher = vol.cipher();
        if cipher != CIPHER {
            return Err(Error::NotPaes {
                device: dev_name,
                cipher: format!("{cipher}-{}", vol.cipher_mode()),
            });
        }
        Ok(vol)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn name(&self) -> String {
        name(&self.path)
    }

    pub fn cipher(&mut self) -> String {
        self.dev
            .status_handle()
            .get_cipher()
            .unwrap_or_else(|_| "?".into())
    }

    pub fn cipher_mode(&mut self) -> String {
        self.dev
            .status_handle()
            .get_cipher_mode()
            .unwrap_or_else(|_| "?".into())
    }

    /// The volume key size in bytes (the secure key's length).
    pub fn volume_key_size(&mut self) -> usize {
        self.dev.status_handle().get_volume_key_size().max(0) as usize
    }

    pub fn sector_size(&mut self) -> u32 {
        libcryptsetup_rs::get_sector_size(Some(&mut self.dev)).max(0) as u32
    }

    /// Where the encrypted payload starts, in bytes (libcryptsetup counts 512-byte sectors).
    pub fn data_offset_bytes(&mut self) -> u64 {
        self.dev.status_handle().get_data_offset() * 512
    }

    fn header_err(&self, op: &'static str) -> impl FnOnce(LibcryptErr) -> Error {
        let device = self.name();
        move |source| Error::Header { device, op, source }
    }

    /// The keyslots in use and whether each holds the volume key.
    pub fn keyslots(&mut self) -> Vec<(u32, SlotState)> {
        (0..MAX_SLOTS)
            .filter_map(|s| match self.dev.keyslot_handle().status(s) {
                Ok(KeyslotInfo::Active | KeyslotInfo::ActiveLast) => Some((s, SlotState::Bound)),
                Ok(KeyslotInfo::Unbound) => Some((s, SlotState::Unbound)),
                _ => None,
            })
            .collect()
    }

    pub fn slot_state(&mut self, slot: u32) -> Option<SlotState> {
        match self.dev.keyslot_handle().status(slot) {
            Ok(KeyslotInfo::Active | KeyslotInfo::ActiveLast) => Some(SlotState::Bound),
            Ok(KeyslotInfo::Unbound) => Some(SlotState::Unbound),
            _ => None,
        }
    }

    /// The volume key, from the first keyslot bound to it that `passphrase` opens. Returns that
    /// keyslot too. A passphrase that opens no bound keyslot is [`Error::WrongPassphrase`].
    pub fn volume_key(&mut self, passphrase: &[u8]) -> Result<(u32, Zeroizing<Vec<u8>>), Error> {
        let size = self.volume_key_size();
        self.get_key(None, size, passphrase)
    }

    /// The key held by keyslot `slot` (bound or unbound), opened with `passphrase`.
    pub fn slot_key(&mut self, slot: u32, passphrase: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
        let size = self
            .dev
            .keyslot_handle()
            .get_key_size(slot)
            .map_err(self.header_err("read a keyslot's key size"))? as usize;
        self.get_key(Some(slot), size, passphrase).map(|(_, k)| k)
    }

    fn get_key(
        &mut self,
        slot: Option<u32>,
        size: usize,
        passphrase: &[u8],
    ) -> Result<(u32, Zeroizing<Vec<u8>>), Error> {
        let mut buf = Zeroizing::new(vec![0u8; size]);
        match self
            .dev
            .volume_key_handle()
            .get(slot, &mut buf, Some(passphrase))
        {
            Ok((s, n)) => {
                buf.truncate(n);
                Ok((s as u32, buf))
            }
            // EPERM is libcryptsetup's "no keyslot opens with this passphrase". Asked for any
            // keyslot, libcryptsetup 2.6 answers with the error of the last keyslot it looked at,
            // and an unbound keyslot (a staged re-encipher's) is ENOENT, "unusable for the
            // volume key": the passphrase opened none of the bound ones all the same.
            Err(e) if errno(&e) == Some(1) || (slot.is_none() && errno(&e) == Some(2)) => {
                Err(Error::WrongPassphrase {
                    device: self.name(),
                    slot,
                    origin: None,
                })
            }
            Err(e) => Err(self.header_err("open a keyslot")(e)),
        }
    }

    /// Makes new keyslots use the PBKDF of `slot` (type, hash, iterations, memory, threads)
    /// without a benchmark, as IBM's tool does with cryptsetup 2.1 and later: the re-enciphered
    /// key gets the protection its passphrase had.
    pub fn reuse_pbkdf_of(&mut self, slot: u32) -> Result<(), Error> {
        let mut p = self
            .dev
            .keyslot_handle()
            .get_pbkdf(slot)
            .map_err(self.header_err("read the PBKDF of a keyslot"))?;
        p.flags |= CryptPbkdf::NO_BENCHMARK;
        p.time_ms = 0;
        self.dev
            .settings_handle()
            .set_pbkdf_type(&p)
            .map_err(self.header_err("set the PBKDF"))
    }

    /// Adds `key` as an unbound keyslot (not the volume key) under `passphrase`. One commit.
    pub fn add_unbound(&mut self, key: &[u8], passphrase: &[u8]) -> Result<u32, Error> {
        let slot = self
            .dev
            .keyslot_handle()
            .add_by_key(
                None,
                Some(Either::Left(key)),
                passphrase,
                CryptVolumeKey::NO_SEGMENT,
            )
            .map_err(self.header_err("add an unbound keyslot"))?;
        crash_point();
        Ok(slot)
    }

    /// Makes the key of unbound keyslot `slot` the volume key (`CRYPT_VOLUME_KEY_SET`): the slot
    /// becomes bound and every keyslot bound before becomes unbound. One commit.
    pub fn activate_unbound(&mut self, slot: u32, passphrase: &[u8]) -> Result<(), Error> {
        let key = self.slot_key(slot, passphrase)?;
        self.dev
            .keyslot_handle()
            .add_by_key(
                Some(slot),
                Some(Either::Left(&key)),
                passphrase,
                CryptVolumeKey::SET,
            )
            .map_err(self.header_err("make the unbound keyslot's key the volume key"))?;
        crash_point();
        Ok(())
    }

    /// Destroys keyslot `slot`. One commit.
    pub fn destroy_keyslot(&mut self, slot: u32) -> Result<(), Error> {
        self.dev
            .keyslot_handle()
            .destroy(slot)
            .map_err(self.header_err("destroy a keyslot"))?;
        crash_point();
        Ok(())
    }

    /// The ids and JSON of every token of type `kind`.
    fn tokens_of(&mut self, kind: &str) -> Result<Vec<(u32, serde_json::Value)>, Error> {
        let mut out = Vec::new();
        for id in 0..MAX_TOKENS {
            let ty = match self.dev.token_handle().status(id) {
                Ok(
                    CryptTokenInfo::External(t)
                    | CryptTokenInfo::ExternalUnknown(t)
                    | CryptTokenInfo::Internal(t)
                    | CryptTokenInfo::InternalUnknown(t),
                ) => t,
                _ => continue,
            };
            if ty == kind {
                let json = self
                    .dev
                    .token_handle()
                    .json_get(id)
                    .map_err(self.header_err("read a token"))?;
                out.push((id, json));
            }
        }
        Ok(out)
    }

    fn parse_token<T: serde::de::DeserializeOwned>(
        &self,
        kind: &'static str,
        id: u32,
        json: serde_json::Value,
    ) -> Result<T, Error> {
        serde_json::from_value(json).map_err(|e| Error::BadToken {
            device: self.name(),
            id,
            kind,
            why: e.to_string(),
        })
    }

    /// The VP token, if there is one. Two of them are an error: which one is right is unknown.
    pub fn vp_token(&mut self) -> Result<Option<Found<VpToken>>, Error> {
        let mut all = self.tokens_of(VP_TOKEN_TYPE)?;
        if all.len() > 1 {
            return Err(Error::BadToken {
                device: self.name(),
                id: all[1].0,
                kind: VP_TOKEN_TYPE,
                why: format!("token {} is a second token of this type", all[1].0),
            });
        }
        all.pop()
            .map(|(id, json)| {
                self.parse_token(VP_TOKEN_TYPE, id, json)
                    .map(|token| Found { id, token })
            })
            .transpose()
    }

    /// Writes the VP token, replacing an existing one. One commit.
    pub fn set_vp_token(&mut self, token: &VpToken) -> Result<u32, Error> {
        let json = serde_json::to_value(token).map_err(|e| Error::Invalid(e.to_string()))?;
        // Replace in place when one exists, so that a crash cannot leave two or none.
        let existing = self.tokens_of(VP_TOKEN_TYPE)?.first().map(|(id, _)| *id);
        let input = match existing {
            Some(id) => TokenInput::ReplaceToken(id, &json),
            None => TokenInput::AddToken(&json),
        };
        let id = self
            .dev
            .token_handle()
            .json_set(input)
            .map_err(self.header_err("write the verification pattern token"))?;
        crash_point();
        Ok(id)
    }

    /// The pending re-encipher token, if there is one, checked against the keyslots: it must be
    /// assigned to exactly its `unbound-keyslot`, which must exist.
    pub fn reencipher_token(&mut self) -> Result<Option<Found<ReencipherToken>>, Error> {
        let mut all = self.tokens_of(REENCIPHER_TOKEN_TYPE)?;
        if all.len() > 1 {
            return Err(Error::BadToken {
                device: self.name(),
                id: all[1].0,
                kind: REENCIPHER_TOKEN_TYPE,
                why: format!("token {} is a second token of this type", all[1].0),
            });
        }
        let Some((id, json)) = all.pop() else {
            return Ok(None);
        };
        let token: ReencipherToken = self.parse_token(REENCIPHER_TOKEN_TYPE, id, json)?;
        let device = self.name();
        let bad = |why: String| Error::BadToken {
            device: device.clone(),
            id,
            kind: REENCIPHER_TOKEN_TYPE,
            why,
        };
        token.check().map_err(bad)?;
        if self.slot_state(token.unbound_keyslot).is_none() {
            return Err(bad(format!(
                "its unbound-keyslot {} does not exist",
                token.unbound_keyslot
            )));
        }
        Ok(Some(Found { id, token }))
    }

    /// Writes the re-encipher token as a new token. One commit.
    pub fn add_reencipher_token(&mut self, token: &ReencipherToken) -> Result<u32, Error> {
        let json = serde_json::to_value(token).map_err(|e| Error::Invalid(e.to_string()))?;
        let id = self
            .dev
            .token_handle()
            .json_set(TokenInput::AddToken(&json))
            .map_err(self.header_err("write the re-encipher token"))?;
        crash_point();
        Ok(id)
    }

    /// Replaces token `id` with `token`. One commit.
    pub fn replace_reencipher_token(
        &mut self,
        id: u32,
        token: &ReencipherToken,
    ) -> Result<(), Error> {
        let json = serde_json::to_value(token).map_err(|e| Error::Invalid(e.to_string()))?;
        self.dev
            .token_handle()
            .json_set(TokenInput::ReplaceToken(id, &json))
            .map_err(self.header_err("rewrite the re-encipher token"))?;
        crash_point();
        Ok(())
    }

    /// Removes token `id`. One commit.
    pub fn remove_token(&mut self, id: u32) -> Result<(), Error> {
        self.dev
            .token_handle()
            .json_set(TokenInput::RemoveToken(id))
            .map_err(self.header_err("remove a token"))?;
        crash_point();
        Ok(())
    }

    /// The unbound keyslots no re-encipher token refers to.
    pub fn orphan_unbound_slots(&mut self) -> Result<Vec<u32>, Error> {
        let referenced = self
            .tokens_of(REENCIPHER_TOKEN_TYPE)?
            .into_iter()
            .filter_map(|(_, j)| j.get("unbound-keyslot").and_then(|v| v.as_u64()))
            .collect::<Vec<_>>();
        Ok(self
            .keyslots()
            .into_iter()
            .filter(|(s, st)| *st == SlotState::Unbound && !referenced.contains(&(*s as u64)))
            .map(|(s, _)| s)
            .collect())
    }
}
