//! A volume's standing for a readiness model (zkey asks it of every LUKS2 volume of a key before
//! a master key change), read without changing anything and without talking to the user.
//!
//! Two calls, by cost:
//! - [`header_status`] reads the LUKS2 header only: no passphrase, no PBKDF, no adapter. Whether
//!   the device is a LUKS2 volume at all, its cipher, keyslots, the VP token's VP and a pending
//!   `paes-reencipher` token.
//! - [`key_status`] opens the keyslots with a passphrase the caller holds (one PBKDF run for the
//!   volume key, one more for the key of a pending re-encipher) and asks the adapters where each
//!   secure key's master key is: CURRENT, OLD, NEW (not set yet) or none (unusable).
//!
//! Neither prompts, writes the header or returns key material; both are serde-serialisable for
//! `--json` output and for zkey's own records.

use std::path::Path;

use ap_sim::hsm::Hsm;
use serde::{Deserialize, Serialize};

use crate::luks2::{self, Loaded, SlotState, Volume};
use crate::volume::{reports, risk_of, KeyReport, PendingReport};
use crate::Error;

/// What the header of a device says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "format", rename_all = "kebab-case")]
pub enum HeaderStatus {
    /// No LUKS header: a blank device or file, or another format. Nothing to re-encipher;
    /// `zkey-cryptsetup format` (or `zkey cryptsetup`) makes it a volume.
    NotFormatted { device: String },
    /// A LUKS1 header: a LUKS1 volume cannot hold a secure volume key here, so it depends on
    /// no master key this suite manages.
    Luks1 { device: String },
    /// A LUKS2 header.
    Luks2(Luks2Header),
}

/// The parts of a LUKS2 header that matter to a master key change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Luks2Header {
    pub device: String,
    /// The cipher and mode, as `cryptsetup luksDump` shows them (`paes-xts-plain64`).
    pub cipher: String,
    /// Whether the cipher is `paes`, i.e. the volume key is a secure key. A clear-key volume
    /// has no master key to depend on, and nothing to re-encipher.
    pub secure_key: bool,
    /// The length of the volume key (the secure key's tokens) in bytes.
    pub volume_key_bytes: usize,
    /// The keyslots in use, in order.
    pub keyslots: Vec<Keyslot>,
    /// The VP of the `paes-verification-pattern` token, if there is one.
    pub verification_pattern: Option<String>,
    /// The `paes-reencipher` token of a staged re-encipher, if one is pending.
    pub reencipher_pending: Option<PendingToken>,
}

/// One keyslot in use.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keyslot {
    pub slot: u32,
    /// Holds the volume key (false: an unbound keyslot, such as a staged re-encipher's).
    pub bound: bool,
}

/// The `paes-reencipher` token: a staged re-encipher waits for `--complete`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingToken {
    pub token_id: u32,
    /// The keyslot the passphrase opened when the re-encipher was staged.
    pub original_keyslot: u32,
    /// The keyslot that holds the re-enciphered key.
    pub unbound_keyslot: u32,
    /// The VP the re-enciphered key must have (that of the volume key).
    pub verification_pattern: String,
    /// The MKVP of the staged key, when the tool that staged it recorded it (this suite does;
    /// IBM's zkey-cryptsetup does not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mkvp: Option<String>,
}

/// Reads the header of `device` only: no passphrase, no PBKDF, no adapter, no write. A device
/// without a LUKS header is [`HeaderStatus::NotFormatted`], a LUKS1 one [`HeaderStatus::Luks1`];
/// a device that cannot be read, a LUKS2 header that cannot be loaded (damaged), and a malformed
/// VP or re-encipher token are errors, as every other command reports them.
pub fn header_status(device: &Path) -> Result<HeaderStatus, Error> {
    let mut vol = match Volume::load(device)? {
        Loaded::NoLuks => {
            return Ok(HeaderStatus::NotFormatted {
                device: luks2::name(device),
            })
        }
        Loaded::Luks1 => {
            return Ok(HeaderStatus::Luks1 {
                device: luks2::name(device),
            })
        }
        Loaded::Luks2(vol) => vol,
    };
    let cipher = vol.cipher();
    let secure_key = cipher == luks2::CIPHER;
    let reencipher_pending = vol.reencipher_token()?.map(|t| PendingToken {
        token_id: t.id,
        original_keyslot: t.token.original_keyslot,
        unbound_keyslot: t.token.unbound_keyslot,
        verification_pattern: t.token.verification_pattern.to_string(),
        mkvp: t.token.mkvp.clone(),
    });
    Ok(HeaderStatus::Luks2(Luks2Header {
        device: vol.name(),
        cipher: format!("{cipher}-{}", vol.cipher_mode()),
        secure_key,
        volume_key_bytes: vol.volume_key_size(),
        keyslots: vol
            .keyslots()
            .into_iter()
            .map(|(slot, st)| Keyslot {
                slot,
                bound: st == SlotState::Bound,
            })
            .collect(),
        verification_pattern: vol
            .vp_token()?
            .map(|t| t.token.verification_pattern.to_string()),
        reencipher_pending,
    }))
}

/// Where the secure keys of a volume stand with the adapters.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeyStatus {
    pub device: String,
    /// The volume key: its keyslot, type, register (`state`: current, old, new, unusable),
    /// MKVP and, when the adapters can compute it, VP.
    pub volume_key: KeyReport,
    /// The pending re-encipher, if any; its `key` is the re-enciphered key's report when the
    /// passphrase opens the unbound keyslot (`None` otherwise).
    pub reencipher_pending: Option<PendingReport>,
    /// Why the volume is at risk although its key works, and what to do (as `validate`
    /// reports it): under OLD, or a staged re-encipher waits for `--complete` after the SET.
    pub at_risk: Option<String>,
}

/// Opens the volume key of `device` with `passphrase` (and the key of a pending re-encipher, if
/// the passphrase opens it too) and reports where each is enciphered. Never prompts and never
/// writes. A passphrase that opens no bound keyslot is [`Error::WrongPassphrase`]; a device
/// that is not a LUKS2 `paes` volume is [`Error::NotLuks2`] or [`Error::NotPaes`] (ask
/// [`header_status`] first to tell those apart without an error).
pub fn key_status(hsm: &Hsm, device: &Path, passphrase: &[u8]) -> Result<KeyStatus, Error> {
    let mut vol = Volume::open(device)?;
    let (slot, volume_key) = vol.volume_key(passphrase)?;
    let (volume_key, reencipher_pending) = reports(hsm, &mut vol, slot, &volume_key, passphrase)?;
    let device = vol.name();
    let at_risk = matches!(
        volume_key.state,
        crate::volume::KeyState::Current | crate::volume::KeyState::Old
    )
    .then(|| risk_of(&device, &volume_key, reencipher_pending.as_ref()))
    .flatten();
    Ok(KeyStatus {
        device,
        volume_key,
        reencipher_pending,
        at_risk,
    })
}
