//! The volume operations that need the adapters as well as the header: format a volume with a
//! secure key, validate its key, write its VP token (setvp), and replace its key by another
//! secure key of the same AES key (setkey). Also the shared steps: unlocking a keyslot with the
//! passphrase tries the user has, and checking a secure key with the adapters.

use std::path::Path;

use ap_sim::hsm::{Hsm, HsmError, Register, Verification};
use ap_sim::token::SecureKey;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::luks2::{self, FormatOptions, SlotState, VerificationPattern, Volume, VpToken};
use crate::passphrase::{Passphrase, Supplier};
use crate::{Error, Ui};

/// A keyslot opened with the passphrase: its number, the volume key and the passphrase that
/// opened it (needed again for new keyslots under the same passphrase).
pub struct Unlocked {
    pub slot: u32,
    pub volume_key: Zeroizing<Vec<u8>>,
    pub passphrase: Passphrase,
}

/// Opens a keyslot bound to the volume key, asking for the passphrase as often as `pass` allows.
pub fn unlock(vol: &mut Volume, pass: &mut Supplier, ui: &mut dyn Ui) -> Result<Unlocked, Error> {
    let device = vol.name();
    let mut wrong = false;
    while let Some(p) = pass.next(&device)? {
        match vol.volume_key(p.as_bytes()) {
            Ok((slot, volume_key)) => {
                return Ok(Unlocked {
                    slot,
                    volume_key,
                    passphrase: p,
                })
            }
            Err(Error::WrongPassphrase { .. }) => {
                // cryptsetup's words, after every wrong try.
                ui.warn("No key available with this passphrase.");
                wrong = true;
            }
            Err(e) => return Err(e),
        }
    }
    if !wrong {
        return Err(Error::Passphrase(crate::passphrase::Error::NoMoreTries));
    }
    Err(Error::WrongPassphrase {
        device,
        slot: None,
        origin: Some(pass.origin()),
    })
}

/// Parses header key bytes as a secure key.
pub(crate) fn parse_key(device: &str, what: &str, bytes: &[u8]) -> Result<SecureKey, Error> {
    SecureKey::parse(bytes).map_err(|e| Error::NotSecureKey {
        device: device.into(),
        what: what.into(),
        why: e.to_string(),
    })
}

/// Checks `key` with the adapters. A key whose master key is gone is [`Error::KeyDead`].
pub(crate) fn verify(
    hsm: &Hsm,
    device: &str,
    what: &str,
    key: &SecureKey,
) -> Result<Verification, Error> {
    hsm.verify(key, None).map_err(|e| match e {
        HsmError::Unusable { mkvp, .. } => Error::KeyDead {
            device: device.into(),
            mkvp: mkvp.to_string(),
        },
        source => Error::Adapter {
            device: device.into(),
            what: what.into(),
            source: Box::new(source),
        },
    })
}

pub(crate) fn vp_of(
    hsm: &Hsm,
    device: &str,
    what: &str,
    key: &SecureKey,
) -> Result<VerificationPattern, Error> {
    hsm.verification_pattern(key, None)
        .map_err(|source| Error::Adapter {
            device: device.into(),
            what: what.into(),
            source: Box::new(source),
        })
}

/// What [`format`] made.
#[derive(Clone, Debug, Serialize)]
pub struct Formatted {
    pub keyslot: u32,
    pub verification_pattern: String,
    pub cipher: String,
    pub key_size_bits: usize,
}

/// What [`format`] did.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum FormatOutcome {
    Formatted(Formatted),
    /// The device is a LUKS2 volume of this very key already (its VP token has the key's
    /// VP): nothing was done, so that running the same command again is harmless.
    AlreadyFormatted {
        verification_pattern: String,
    },
}

/// A device checked for [`format_checked`] by [`check_format`]: blank, or its header's
/// destruction confirmed. Only [`check_format`] makes one.
pub struct FormatTarget {
    device: std::path::PathBuf,
    key: SecureKey,
    vp: VerificationPattern,
    /// Whether a header is there (and its destruction was confirmed).
    pub overwrites: bool,
}

/// What [`check_format`] found.
pub enum FormatCheck {
    /// Format it: blank, or a header whose destruction the operator confirmed.
    Go(FormatTarget),
    /// Formatted with this very key already: nothing to do.
    Already { verification_pattern: String },
}

/// Checks that formatting `device` with `secure_key` destroys nothing the operator did not
/// mean to destroy: the key must be usable (under CURRENT; OLD is accepted with a warning,
/// since it stops working at the next master key change), a device with the key's own LUKS2
/// header is [`FormatCheck::Already`], and one with any other LUKS header (or one that cannot
/// be read) is formatted only if [`Ui::confirm_risk`] says yes, else [`Error::HasHeader`]:
/// one device under two names, or the wrong device, must never lose its volume silently.
pub fn check_format(
    hsm: &Hsm,
    device: &Path,
    secure_key: &[u8],
    ui: &mut dyn Ui,
) -> Result<FormatCheck, Error> {
    use crate::status::HeaderStatus;
    let name = luks2::name(device);
    let key = parse_key(&name, "the volume key file", secure_key)?;
    let v = verify(hsm, &name, "the volume key", &key)?;
    if v.register == Register::Old {
        ui.warn(&format!(
            "The secure volume key for device '{name}' is enciphered with the OLD master key: re-encipher it (zkey reencipher, or zkey-cryptsetup reencipher after formatting) before the master key changes again."
        ));
    }
    let vp = vp_of(hsm, &name, "the volume key", &key)?;
    let what = match crate::status::header_status(device) {
        Ok(HeaderStatus::NotFormatted { .. }) => None,
        Ok(HeaderStatus::Luks2(h)) if h.verification_pattern == Some(vp.to_string()) => {
            return Ok(FormatCheck::Already {
                verification_pattern: vp.to_string(),
            })
        }
        Ok(HeaderStatus::Luks2(h)) => Some(match h.verification_pattern {
            Some(other) => format!(
                "a LUKS2 header of another key (verification pattern {other}, {})",
                h.cipher
            ),
            None => format!("a LUKS2 header ({}, no VP token)", h.cipher),
        }),
        Ok(HeaderStatus::Luks1 { .. }) => Some("a LUKS1 header".to_string()),
        Err(e) => Some(format!("a LUKS header that cannot be read ({e})")),
    };
    if let Some(what) = &what {
        if !ui.confirm_risk(&format!(
            "'{name}' already holds {what}. Formatting destroys that volume and all of its data. Format it anyway?"
        ))? {
            return Err(Error::HasHeader {
                device: name,
                what: what.clone(),
            });
        }
    }
    Ok(FormatCheck::Go(FormatTarget {
        device: device.to_path_buf(),
        key,
        vp,
        overwrites: what.is_some(),
    }))
}

/// Formats a device [`check_format`] cleared: see [`format`].
pub fn format_checked(
    target: FormatTarget,
    opts: &FormatOptions,
    passphrase: &[u8],
) -> Result<Formatted, Error> {
    let FormatTarget {
        device,
        key,
        vp,
        overwrites,
    } = target;
    // A passphrase prompt lies between the check and this: a header that appeared meanwhile
    // was not part of what the operator agreed to.
    if !overwrites
        && !matches!(
            crate::status::header_status(&device),
            Ok(crate::status::HeaderStatus::NotFormatted { .. })
        )
    {
        return Err(Error::HasHeader {
            device: luks2::name(&device),
            what: "a LUKS header written since it was checked".into(),
        });
    }
    let secure_key = Zeroizing::new(key.to_bytes());
    let secure_key = secure_key.as_slice();
    let keyslot = luks2::format(&device, secure_key, key.is_xts(), &vp, opts, passphrase)?;
    Ok(Formatted {
        keyslot,
        verification_pattern: vp.to_string(),
        cipher: format!(
            "paes-{}",
            if key.is_xts() {
                "xts-plain64"
            } else {
                "cbc-plain64"
            }
        ),
        key_size_bits: secure_key.len() * 8,
    })
}

/// Formats `device` as a LUKS2 `paes` volume whose volume key is `secure_key` (a secure key
/// file's bytes: one token, or an XTS pair), with one keyslot under `passphrase` and the VP
/// token, after [`check_format`]: a device that is this key's volume already is left alone,
/// one with another header only with the operator's yes. This is the call `zkey cryptsetup
/// --run` makes.
pub fn format(
    hsm: &Hsm,
    device: &Path,
    secure_key: &[u8],
    opts: &FormatOptions,
    passphrase: &[u8],
    ui: &mut dyn Ui,
) -> Result<FormatOutcome, Error> {
    match check_format(hsm, device, secure_key, ui)? {
        FormatCheck::Already {
            verification_pattern,
        } => Ok(FormatOutcome::AlreadyFormatted {
            verification_pattern,
        }),
        FormatCheck::Go(t) => format_checked(t, opts, passphrase).map(FormatOutcome::Formatted),
    }
}

/// Where a secure key stands with the adapters, for reports.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    Current,
    Old,
    /// Under a NEW master key that is not set yet.
    New,
    Unusable,
}

/// One secure key as validate reports it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeyReport {
    pub keyslot: u32,
    pub key_type: String,
    pub key_bits: u32,
    pub xts: bool,
    pub state: KeyState,
    pub mkvp: String,
    /// The VP of the key, when the adapters can compute it (CURRENT or OLD).
    pub verification_pattern: Option<String>,
    /// Why the key is not usable, when it is not.
    pub problem: Option<String>,
}

/// A staged re-encipher as validate reports it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PendingReport {
    pub token_id: u32,
    pub original_keyslot: u32,
    pub unbound_keyslot: u32,
    pub verification_pattern: String,
    /// The re-enciphered key, when the passphrase opens its keyslot.
    pub key: Option<KeyReport>,
}

/// The report of `validate`. Stable JSON schema (`--json`): field names and the lowercase state
/// words do not change; new fields may be added.
#[derive(Clone, Debug, Serialize)]
pub struct ValidateReport {
    pub device: String,
    pub cipher: String,
    pub key_size_bits: usize,
    pub sector_size: u32,
    pub volume_key: KeyReport,
    /// The VP in the VP token, if there is one.
    pub vp_token: Option<String>,
    /// Whether the token's VP is the key's (None when either is unknown).
    pub vp_token_matches: Option<bool>,
    pub reencipher_pending: Option<PendingReport>,
    /// True when the volume key is usable (CURRENT or OLD) and agrees with its VP token.
    pub valid: bool,
    /// Why a valid volume is at risk, and what to do (`validate` exits 3): its key is under the
    /// OLD master key, which the next SET destroys, or a staged re-encipher waits for
    /// `--complete` after the SET. `None` when it is not at risk, and when it is not valid.
    pub at_risk: Option<String>,
}

/// Why a volume whose key works now is at risk (see [`ValidateReport::at_risk`]).
pub(crate) fn risk_of(
    device: &str,
    volume_key: &KeyReport,
    pending: Option<&PendingReport>,
) -> Option<String> {
    let staged = pending.and_then(|p| p.key.as_ref());
    if staged.is_some_and(|k| k.state == KeyState::Current) {
        return Some(format!(
            "a staged re-encipher waits for completion since the SET: run 'zkey-cryptsetup reencipher {device} --complete' before the next SET makes the volume key unusable"
        ));
    }
    (volume_key.state == KeyState::Old).then(|| {
        format!(
            "the volume key is enciphered with the OLD master key: re-encipher it with 'zkey-cryptsetup reencipher {device}' before the next SET makes it unusable"
        )
    })
}

fn key_report(hsm: &Hsm, device: &str, slot: u32, key: &SecureKey) -> KeyReport {
    let (state, problem) = match hsm.verify(key, None) {
        Ok(v) if v.register == Register::Old => (KeyState::Old, None),
        Ok(_) => (KeyState::Current, None),
        Err(HsmError::OnlyNew { .. }) => (KeyState::New, None),
        Err(e) => (KeyState::Unusable, Some(e.to_string())),
    };
    let vp = matches!(state, KeyState::Current | KeyState::Old)
        .then(|| vp_of(hsm, device, "the key", key).ok())
        .flatten();
    KeyReport {
        keyslot: slot,
        key_type: key.key_type().name().to_string(),
        key_bits: key.key_bits(),
        xts: key.is_xts(),
        state,
        mkvp: key.mkvp().to_string(),
        verification_pattern: vp.map(|v| v.to_string()),
        problem,
    }
}

/// The reports of the volume key (from keyslot `slot`) and of a pending re-encipher's key,
/// when `passphrase` opens its unbound keyslot. Reads only.
pub(crate) fn reports(
    hsm: &Hsm,
    vol: &mut Volume,
    slot: u32,
    volume_key: &[u8],
    passphrase: &[u8],
) -> Result<(KeyReport, Option<PendingReport>), Error> {
    let name = vol.name();
    let key = parse_key(&name, "the volume key", volume_key)?;
    let volume_key = key_report(hsm, &name, slot, &key);
    let pending = match vol.reencipher_token()? {
        None => None,
        Some(t) => {
            let slot = t.token.unbound_keyslot;
            let key = vol
                .slot_key(slot, passphrase)
                .ok()
                .and_then(|b| SecureKey::parse(&b).ok())
                .map(|k| key_report(hsm, &name, slot, &k));
            Some(PendingReport {
                token_id: t.id,
                original_keyslot: t.token.original_keyslot,
                unbound_keyslot: slot,
                verification_pattern: t.token.verification_pattern.to_string(),
                key,
            })
        }
    };
    Ok((volume_key, pending))
}

/// Validates the secure volume key of `device`: which master key register holds its master key,
/// its MKVP and VP, whether the VP token agrees, and whether a re-encipher is pending. Changes
/// nothing.
pub fn validate(
    hsm: &Hsm,
    device: &Path,
    pass: &mut Supplier,
    ui: &mut dyn Ui,
) -> Result<ValidateReport, Error> {
    let mut vol = Volume::open(device)?;
    let name = vol.name();
    let u = unlock(&mut vol, pass, ui)?;
    let (volume_key, reencipher_pending) = reports(
        hsm,
        &mut vol,
        u.slot,
        &u.volume_key,
        u.passphrase.as_bytes(),
    )?;
    let vp_token = vol
        .vp_token()?
        .map(|t| t.token.verification_pattern.to_string());
    let vp_token_matches = match (&vp_token, &volume_key.verification_pattern) {
        (Some(t), Some(k)) => Some(t == k),
        _ => None,
    };
    let valid = matches!(volume_key.state, KeyState::Current | KeyState::Old)
        && vp_token_matches != Some(false);
    let at_risk = valid
        .then(|| risk_of(&name, &volume_key, reencipher_pending.as_ref()))
        .flatten();
    Ok(ValidateReport {
        device: name,
        cipher: format!("{}-{}", vol.cipher(), vol.cipher_mode()),
        key_size_bits: vol.volume_key_size() * 8,
        sector_size: vol.sector_size(),
        volume_key,
        vp_token,
        vp_token_matches,
        reencipher_pending,
        valid,
        at_risk,
    })
}

/// Writes (or rewrites) the VP token of `device` from its volume key. Returns the VP.
pub fn setvp(
    hsm: &Hsm,
    device: &Path,
    pass: &mut Supplier,
    ui: &mut dyn Ui,
) -> Result<VerificationPattern, Error> {
    let mut vol = Volume::open(device)?;
    let name = vol.name();
    let u = unlock(&mut vol, pass, ui)?;
    let key = parse_key(&name, "the volume key", &u.volume_key)?;
    verify(hsm, &name, "the volume key", &key)?;
    let vp = vp_of(hsm, &name, "the volume key", &key)?;
    vol.set_vp_token(&VpToken::new(vp))?;
    Ok(vp)
}

/// Makes `new_key` (a secure key file's bytes) the volume key of `device`, as IBM's setkey does:
/// the key must be usable (under OLD only if the user confirms) and its VP must equal the VP
/// token's (no token: the user must confirm, since nothing then proves it is the same AES key).
/// It is added as an unbound keyslot under the passphrase, made the volume key, the VP token is
/// rewritten, and the user is asked whether to destroy the previous keyslot.
pub fn setkey(
    hsm: &Hsm,
    device: &Path,
    new_key: &[u8],
    pass: &mut Supplier,
    ui: &mut dyn Ui,
) -> Result<u32, Error> {
    let mut vol = Volume::open(device)?;
    let name = vol.name();
    if let Some(t) = vol.reencipher_token()? {
        return Err(Error::Invalid(format!(
            "a re-encipher is pending for device '{name}' (token {}): complete it with 'zkey-cryptsetup reencipher --complete' first",
            t.id
        )));
    }
    let key = parse_key(&name, "the new secure key", new_key)?;
    if new_key.len() != vol.volume_key_size() {
        return Err(Error::Invalid(format!(
            "the new secure key has {} bytes, but the volume key of '{name}' has {}: it is not the same kind of key",
            new_key.len(),
            vol.volume_key_size()
        )));
    }
    let v = verify(hsm, &name, "the new secure key", &key)?;
    if v.register == Register::Old
        && !ui.confirm(&format!(
            "The new secure key is enciphered with the OLD master key and will stop working at the next master key change. Set it for device '{name}' anyway?"
        ))?
    {
        return Err(Error::Declined("the new key is under the OLD master key".into()));
    }
    let vp = vp_of(hsm, &name, "the new secure key", &key)?;
    match vol.vp_token()? {
        Some(t) if t.token.verification_pattern != vp => {
            return Err(Error::VpMismatch {
                device: name,
                what: "the new secure key".into(),
                found: vp.to_string(),
                expected: t.token.verification_pattern.to_string(),
                expected_from: format!("the verification pattern token {}", t.id),
            })
        }
        Some(_) => {}
        None => {
            if !ui.confirm(&format!(
                "Device '{name}' has no verification pattern token, so it cannot be proven that the new secure key is the AES key the data is encrypted with. A wrong key makes the data unreadable. Set it anyway?"
            ))? {
                return Err(Error::Declined("no verification pattern token".into()));
            }
        }
    }
    let u = unlock(&mut vol, pass, ui)?;
    vol.reuse_pbkdf_of(u.slot)?;
    let slot = vol.add_unbound(new_key, u.passphrase.as_bytes())?;
    vol.activate_unbound(slot, u.passphrase.as_bytes())?;
    vol.set_vp_token(&VpToken::new(vp))?;
    offer_destroy(&mut vol, u.slot, slot, u.passphrase.as_bytes(), ui)?;
    Ok(slot)
}

/// Whether `slot` still exists and is unbound.
pub(crate) fn is_unbound(vol: &mut Volume, slot: u32) -> bool {
    vol.slot_state(slot) == Some(SlotState::Unbound)
}

/// `zkey-cryptsetup open`: unlocks the secure volume key, turns it into the effective key inside
/// the adapter, and serves the decrypted payload through FUSE as `RUN/NAME` (the analogue of
/// `/dev/mapper/NAME`). A key under OLD still opens, with a warning. A key whose VP is not the
/// VP token's (what `validate` reports invalid) opens only if [`Ui::confirm_risk`] says yes,
/// else [`Error::VpTokenMismatch`]: data written through the wrong key is lost. A device that
/// is open already under another name is [`Error::AlreadyMapped`].
///
/// The server process is forked first, before the passphrase, the secure key or the adapters'
/// state are read, so that it holds none of them (see [`crate::fuse`]). A caller that holds a
/// secret already (a passphrase to give) spawns the server before reading it and calls
/// [`open_on`].
pub fn open(
    hsm: &Hsm,
    device: &Path,
    name: &str,
    pass: &mut Supplier,
    ui: &mut dyn Ui,
) -> Result<std::path::PathBuf, Error> {
    open_on(spawn_server()?, hsm, device, name, pass, ui)
}

/// Forks the FUSE server that [`open_on`] hands the volume to: call it before reading secrets.
pub fn spawn_server() -> Result<crate::fuse::Server, Error> {
    crate::fuse::Server::spawn().map_err(|e| match e {
        crate::fuse::FuseError::NoFuse(_) => Error::NotAvailable(e.to_string()),
        e => Error::Invalid(format!("starting the data path's server failed: {e}")),
    })
}

/// [`open`] with a server spawned beforehand ([`spawn_server`]).
pub fn open_on(
    server: crate::fuse::Server,
    hsm: &Hsm,
    device: &Path,
    name: &str,
    pass: &mut Supplier,
    ui: &mut dyn Ui,
) -> Result<std::path::PathBuf, Error> {
    let mut vol = Volume::open(device)?;
    let dev = vol.name();
    let what = "the secure volume key";
    let unlocked = unlock(&mut vol, pass, ui)?;
    let key = parse_key(&dev, what, &unlocked.volume_key)?;
    if verify(hsm, &dev, what, &key)?.register == Register::Old {
        ui.warn(&format!(
            "The secure volume key of device '{dev}' is enciphered with the OLD master key: the next SET makes the volume unusable. Re-encipher it now with 'zkey-cryptsetup reencipher {dev}'."
        ));
    }
    let vp = vp_of(hsm, &dev, what, &key)?;
    if let Some(t) = vol.vp_token()? {
        let expected = t.token.verification_pattern;
        if expected != vp
            && !ui.confirm_risk(&format!(
                "The volume key of '{dev}' has verification pattern {vp}, but the volume's VP token says {expected}: it may not be the key the data was written with, and writing through a wrong key destroys the data. Open it anyway?"
            ))?
        {
            return Err(Error::VpTokenMismatch {
                device: dev,
                found: vp.to_string(),
                expected: expected.to_string(),
            });
        }
    }
    let effective = hsm
        .effective_key(&key, None)
        .map_err(|source| Error::Adapter {
            device: dev.clone(),
            what: what.into(),
            source: Box::new(source),
        })?;
    let mapping = crate::fuse::Mapping::from_effective_key(
        device,
        vol.data_offset_bytes(),
        None,
        vol.sector_size(),
        effective,
    )
    .map_err(|e| Error::Invalid(format!("'{dev}': {e}")))?;
    drop(vol);
    server
        .open(mapping, name, &crate::fuse::run_dir())
        .map_err(|e| match e {
            crate::fuse::FuseError::DeviceMapped { name, file } => Error::AlreadyMapped {
                device: dev,
                name,
                file: file.display().to_string(),
            },
            e => Error::Invalid(format!("opening '{dev}' as '{name}' failed: {e}")),
        })
}

/// `zkey-cryptsetup close`: unmounts the mapping and waits for its server to exit.
pub fn close(name: &str) -> Result<(), Error> {
    crate::fuse::close(name, &crate::fuse::run_dir())
        .map_err(|e| Error::Invalid(format!("closing '{name}' failed: {e}")))
}

/// After the key of `new_slot` became the volume key: asks whether to destroy `old_slot` (now
/// unbound, holding the previous secure key) and does it, but only once the passphrase has
/// opened `new_slot` as a bound keyslot, so that the volume keeps opening with it.
pub(crate) fn offer_destroy(
    vol: &mut Volume,
    old_slot: u32,
    new_slot: u32,
    passphrase: &[u8],
    ui: &mut dyn Ui,
) -> Result<Option<u32>, Error> {
    if old_slot == new_slot || !is_unbound(vol, old_slot) {
        return Ok(None);
    }
    let name = vol.name();
    let (opened, _) = vol.volume_key(passphrase)?;
    if vol.slot_state(opened) != Some(SlotState::Bound) {
        return Ok(None);
    }
    // Keeping the slot is the safe answer, so without a terminal to ask on it is kept.
    let destroy = match ui.confirm_destroy(&format!(
        "Keyslot {old_slot} of device '{name}' holds the previous secure volume key and no longer opens the volume. Destroy it?"
    )) {
        Ok(yes) => yes,
        Err(Error::Declined(_)) => false,
        Err(e) => return Err(e),
    };
    if !destroy {
        ui.info(&format!(
            "Keyslot {old_slot} of device '{name}' is kept as an unbound keyslot; remove it later with 'cryptsetup luksKillSlot {name} {old_slot}'."
        ));
        return Ok(None);
    }
    vol.destroy_keyslot(old_slot)?;
    Ok(Some(old_slot))
}
