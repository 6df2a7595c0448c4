//! Creating keys and telling where each key stands: the logic under `zkey generate`,
//! `import`, `validate` and `list`.
//!
//! A key's standing goes beyond the reference's "valid/invalid": it says whether the next SET
//! of the security officer would hurt the key ([`Risk`]), because a key under OLD, or a key
//! under CURRENT that was not staged while a NEW master key is loaded, is lost silently on real
//! systems. `zkey validate --all` turns that into an exit code a cron job can check.

use serde::Serialize;

use ap_sim::apqn::Apqn;
use ap_sim::hsm::{Direction, HsmError, Register};
use ap_sim::token::{KeyType, SecureKey};
use ap_sim::Mkvp;

use crate::adapters::Adapters;
use crate::crosscheck::{cross_check, CrossCheck, Purpose};
use crate::error::ZkeyError;
use crate::properties::{KeyProperties, Timestamp, VerificationPattern};
use crate::repository::{DummyPassphrase, KeyEntry, Writer};
use crate::volume::{SectorSize, Volume, VolumeType};
use crate::KeyName;

/// What a new repository key is made of.
#[derive(Clone, Debug)]
pub struct NewKey {
    pub key_type: KeyType,
    pub bits: u32,
    pub xts: bool,
    pub description: Option<String>,
    pub apqns: Vec<Apqn>,
    pub volumes: Vec<Volume>,
    pub volume_type: VolumeType,
    pub sector_size: SectorSize,
    pub apqn_check: bool,
}

impl NewKey {
    pub fn apqn_slice(&self) -> Option<&[Apqn]> {
        (!self.apqns.is_empty()).then_some(self.apqns.as_slice())
    }
}

/// Checks APQNs for binding a key; the error carries the table and the verdict.
pub fn check_binding(
    ad: &Adapters,
    key_type: KeyType,
    apqns: &[Apqn],
    key_mkvp: Option<Mkvp>,
) -> Result<CrossCheck, ZkeyError> {
    let cc = cross_check(&ad.sysfs, key_type, apqns, key_mkvp, Purpose::Use)?;
    if !cc.is_proper() {
        return Err(ZkeyError::CrossCheck(format!(
            "{}{}",
            cc.table(),
            cc.report()
        )));
    }
    Ok(cc)
}

/// The properties of a new key, its verification pattern included.
pub fn properties_for(
    ad: &Adapters,
    key: &SecureKey,
    spec: &NewKey,
) -> Result<KeyProperties, ZkeyError> {
    let vp = ad.hsm.verification_pattern(key, spec.apqn_slice())?;
    Ok(KeyProperties {
        key_type: key.key_type().name().to_string(),
        cipher: Some("paes".into()),
        iv_mode: Some("plain64".into()),
        description: spec.description.clone(),
        volumes: spec.volumes.clone(),
        apqns: spec.apqns.clone(),
        sector_size: spec.sector_size,
        volume_type: spec.volume_type,
        verification_pattern: Some(vp),
        creation_time: Some(Timestamp::now()),
        ..KeyProperties::default()
    })
}

/// Makes a secure key in the adapter: random, or from a clear key.
pub fn make_key(
    ad: &Adapters,
    spec: &NewKey,
    clear: Option<&[u8]>,
) -> Result<SecureKey, ZkeyError> {
    if spec.apqn_check && !spec.apqns.is_empty() {
        check_binding(ad, spec.key_type, &spec.apqns, None)?;
    }
    Ok(match clear {
        Some(c) => ad
            .hsm
            .import_clear(spec.key_type, c, spec.xts, spec.apqn_slice())?,
        None => ad
            .hsm
            .generate(spec.key_type, spec.bits, spec.xts, spec.apqn_slice())?,
    })
}

/// Stores a new key in the repository, refusing volumes another key already has.
pub fn store_new(
    w: &Writer<'_>,
    ad: &Adapters,
    name: &KeyName,
    key: &SecureKey,
    spec: &NewKey,
    pass: Option<DummyPassphrase>,
) -> Result<KeyProperties, ZkeyError> {
    check_volumes_free(w, name, &spec.volumes)?;
    let props = properties_for(ad, key, spec)?;
    w.create_key(name, &key.to_bytes(), &props, pass)?;
    Ok(props)
}

/// A volume belongs to one key: refuse those another key of the repository has, under this
/// name or another name of the same device (a second key for one device is how a `zkey
/// cryptsetup --format` for it destroys the first key's data).
pub fn check_volumes_free(
    w: &Writer<'_>,
    name: &KeyName,
    volumes: &[Volume],
) -> Result<(), ZkeyError> {
    // Without volumes there is nothing to collide with, and reading every key of the
    // repository for nothing made generating N keys in one batch cost O(N^2) reads.
    if volumes.is_empty() {
        return Ok(());
    }
    for e in w.entries()?.into_iter().flatten() {
        if &e.name == name {
            continue;
        }
        for v in volumes {
            let Some(o) = e
                .properties
                .volumes
                .iter()
                .find(|o| o.dm_name() == v.dm_name() || o.same_device(v))
            else {
                continue;
            };
            let undo = format!(
                "remove it there first with 'zkey change -N {} --volumes -{o}'",
                crate::keyname::quote(e.name.as_str())
            );
            if o.device() == v.device() || o.dm_name() == v.dm_name() {
                return Err(ZkeyError::Invalid(format!(
                    "volume {v} is already associated with key '{}': a volume has one key ({undo})",
                    e.name
                )));
            }
            let id = infra::device::DeviceId::of(&v.device_path())
                .map(|id| id.to_string())
                .unwrap_or_default();
            return Err(ZkeyError::Invalid(format!(
                "volume {v} is on the device of volume {o} of key '{}': {} and {} are two names of one device ({id}). A device has one key, and formatting it for a second key destroys the data of the first: use key '{}' for it, or {undo}",
                e.name,
                v.device(),
                o.device(),
                e.name
            )));
        }
    }
    Ok(())
}

/// Why the next SET would hurt a key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "risk")]
pub enum Risk {
    /// The key is already unusable.
    Lost,
    /// Under OLD: the next SET destroys it.
    EncipheredWithOld,
    /// Under CURRENT with a NEW master key loaded and no staged copy for it.
    NotStaged,
    /// The SET happened; the staged copy waits for `--complete`.
    CompletePending,
    /// The live key was re-enciphered to NEW in place: unusable until the SET.
    AwaitingSet,
}

impl Risk {
    /// Why the next SET hurts the key, without the command that helps (see [`Risk::advice`]).
    pub fn why(&self, key_type: KeyType) -> &'static str {
        match self {
            Risk::Lost => "the key is unusable: its master key is gone",
            Risk::EncipheredWithOld => "enciphered with the OLD master key: the next SET destroys it",
            Risk::NotStaged if key_type == KeyType::Ep11Aes => "a NEW wrapping key is loaded and the key is not staged: the SET makes it unusable",
            Risk::NotStaged => "a NEW master key is loaded and the key is not staged: after the SET it is under OLD, and the following SET destroys it",
            Risk::CompletePending => "the master key was SET and the staged key is not installed yet",
            Risk::AwaitingSet => "the key is enciphered with the NEW master key and cannot be used until the security officer SETs it",
        }
    }

    pub fn advice(&self, key_type: KeyType, name: &str) -> String {
        let name = crate::keyname::quote_selecting(name);
        match self {
            Risk::Lost => "the key is unusable: its master key is gone (restore it from a KMS with 'zkey kms refresh', or from a backup)".into(),
            Risk::EncipheredWithOld => format!("enciphered with the OLD master key: the next SET destroys it; run 'zkey reencipher -N {name} --from-old' now"),
            Risk::NotStaged if key_type == KeyType::Ep11Aes => format!("a NEW wrapping key is loaded and this key is not staged: the SET makes it unusable; run 'zkey reencipher -N {name} --to-new --staged' before the SET"),
            Risk::NotStaged => format!("a NEW master key is loaded and this key is not staged: after the SET it is under OLD, and the following SET destroys it; run 'zkey reencipher -N {name} --to-new --staged' before the SET"),
            Risk::CompletePending => format!("the master key was SET and the staged key is not installed yet: run 'zkey reencipher -N {name} --complete'"),
            Risk::AwaitingSet => "the key is enciphered with the NEW master key and cannot be used until the security officer SETs it".into(),
        }
    }
}

/// The staged copy (`.renc`) of a key.
#[derive(Clone, Debug, Serialize)]
pub struct StagedStatus {
    /// Where its master key sits: NEW (waiting for the SET), CURRENT, OLD; `None` if unusable.
    pub register: Option<Register>,
    pub mkvp: Option<Mkvp>,
}

/// Where a key stands.
#[derive(Clone, Debug, Serialize)]
pub struct KeyStatus {
    pub name: String,
    pub valid: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub key_type: Option<KeyType>,
    pub secure_key_size: usize,
    pub clear_key_bits: Option<u32>,
    pub xts: Option<bool>,
    /// The register holding the key's master key: CURRENT or OLD.
    pub register: Option<Register>,
    pub mkvp: Option<Mkvp>,
    pub verification_pattern: Option<VerificationPattern>,
    /// The stored VP differs from the key's: the key file was swapped.
    pub vp_mismatch: bool,
    /// Whether the adapter authenticated the key's properties (repository keys only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub integrity: Option<crate::integrity::Integrity>,
    /// No APQN the key may use is online: the key cannot be checked now (not a loss).
    #[serde(default)]
    pub unreachable: bool,
    pub staged: Option<StagedStatus>,
    pub risk: Option<Risk>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advice: Option<String>,
    pub apqns: Vec<Apqn>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub apqn_check: Option<CrossCheck>,
}

impl KeyStatus {
    /// A key nothing is known of yet (the start of every status).
    fn unknown(name: &str) -> KeyStatus {
        KeyStatus {
            name: name.to_string(),
            valid: false,
            error: None,
            key_type: None,
            secure_key_size: 0,
            clear_key_bits: None,
            xts: None,
            register: None,
            mkvp: None,
            verification_pattern: None,
            vp_mismatch: false,
            integrity: None,
            unreachable: false,
            staged: None,
            risk: None,
            advice: None,
            apqns: Vec::new(),
            apqn_check: None,
        }
    }

    /// Invalid, or hurt by the next SET.
    pub fn at_risk(&self) -> bool {
        !self.valid || self.risk.is_some()
    }
}

/// Works out a key's standing. Never fails: what cannot be known is reported in the status.
pub fn status(
    ad: &Adapters,
    name: &str,
    key_bytes: &[u8],
    staged: Option<&[u8]>,
    props: Option<&KeyProperties>,
    apqn_check: bool,
) -> KeyStatus {
    // One state for all the checks below (verify, VP, staged copy, risk): a consistent answer,
    // and one read of the simulator instead of one per check.
    let ad = &*ad.pinned();
    let apqns: Vec<Apqn> = props.map(|p| p.apqns.clone()).unwrap_or_default();
    let within = (!apqns.is_empty()).then_some(apqns.as_slice());
    let mut st = KeyStatus {
        secure_key_size: key_bytes.len(),
        apqns: apqns.clone(),
        ..KeyStatus::unknown(name)
    };
    let key = match SecureKey::parse(key_bytes) {
        Ok(k) => k,
        Err(e) => {
            st.error = Some(e.to_string());
            return st;
        }
    };
    st.key_type = Some(key.key_type());
    st.clear_key_bits = Some(key.key_bits() * if key.is_xts() { 2 } else { 1 });
    st.xts = Some(key.is_xts());
    st.mkvp = Some(key.mkvp());
    st.staged = staged.map(|s| staged_status(ad, s, within));
    match ad.hsm.verify(&key, within) {
        Ok(v) => {
            st.valid = true;
            st.register = Some(v.register);
            if let Ok(vp) = ad.hsm.verification_pattern(&key, within) {
                st.vp_mismatch = props
                    .and_then(|p| p.verification_pattern)
                    .is_some_and(|stored| stored != vp);
                st.verification_pattern = Some(vp);
            }
        }
        Err(e @ HsmError::OnlyNew { .. }) => {
            st.register = Some(Register::New);
            st.error = Some(e.to_string());
        }
        Err(e @ HsmError::NoApqn { .. }) => {
            st.unreachable = true;
            st.error = Some(e.to_string());
        }
        Err(e) => st.error = Some(e.to_string()),
    }
    if st.vp_mismatch {
        st.valid = false;
        st.error = Some("the key's verification pattern differs from the one stored when it was made: the key file was replaced by another key".into());
    }
    st.risk = risk(ad, &key, &st, within);
    st.advice = st.risk.as_ref().map(|r| r.advice(key.key_type(), name));
    if apqn_check && !apqns.is_empty() {
        st.apqn_check = cross_check(
            &ad.sysfs,
            key.key_type(),
            &apqns,
            Some(key.mkvp()),
            Purpose::Use,
        )
        .ok();
    }
    st
}

fn staged_status(ad: &Adapters, bytes: &[u8], within: Option<&[Apqn]>) -> StagedStatus {
    let Ok(k) = SecureKey::parse(bytes) else {
        return StagedStatus {
            register: None,
            mkvp: None,
        };
    };
    let register = match ad.hsm.verify(&k, within) {
        Ok(v) => Some(v.register),
        Err(HsmError::OnlyNew { .. }) => Some(Register::New),
        Err(_) => None,
    };
    StagedStatus {
        register,
        mkvp: Some(k.mkvp()),
    }
}

fn risk(ad: &Adapters, key: &SecureKey, st: &KeyStatus, within: Option<&[Apqn]>) -> Option<Risk> {
    let staged = st.staged.as_ref().and_then(|s| s.register);
    match (st.valid, st.register, staged) {
        // Staged, then the SET (or two: `--complete` brings a staged copy under OLD to CURRENT).
        (_, _, Some(Register::Current | Register::Old)) => Some(Risk::CompletePending),
        (false, _, _) if st.unreachable => None,
        (false, Some(Register::New), _) => Some(Risk::AwaitingSet),
        (false, _, _) => (!st.vp_mismatch).then_some(Risk::Lost),
        (true, Some(Register::Old), _) => Some(Risk::EncipheredWithOld),
        (true, Some(Register::Current), Some(Register::New)) => None,
        (true, Some(Register::Current), _) if new_loaded(ad, key, within) => Some(Risk::NotStaged),
        _ => None,
    }
}

/// Whether a NEW master key for `key` is loaded on the APQNs it would use: exactly when the key
/// could be re-enciphered to it now.
pub fn new_loaded(ad: &Adapters, key: &SecureKey, within: Option<&[Apqn]>) -> bool {
    ad.hsm.reencipher(key, Direction::ToNew, within).is_ok()
}

/// The status of a repository key.
pub fn entry_status(ad: &Adapters, e: &KeyEntry, apqn_check: bool) -> KeyStatus {
    KeyStatus {
        integrity: Some(e.integrity.clone()),
        ..status(
            ad,
            e.name.as_str(),
            &e.secure_key,
            e.staged.as_deref(),
            Some(&e.properties),
            apqn_check,
        )
    }
}

/// Refuses a repository key whose `.skey` holds another key than its properties name: the
/// verification pattern stored when the key was made (authenticated with the properties, see
/// [`crate::integrity`]) must be the one of the key in `.skey`. Every operation that uses a
/// key's `.skey` (re-encipher, format and open of its volumes, export) checks this first.
pub fn check_same_key(ad: &Adapters, e: &KeyEntry) -> Result<(), ZkeyError> {
    check_key_file(
        ad,
        e.name.as_str(),
        &e.secure_key,
        e.properties.verification_pattern,
        &e.properties.apqns,
    )
}

/// [`check_same_key`] of a key's `.skey` content read separately (e.g. by a volume plan).
pub fn check_key_file(
    ad: &Adapters,
    name: &str,
    secure_key: &[u8],
    stored: Option<VerificationPattern>,
    apqns: &[Apqn],
) -> Result<(), ZkeyError> {
    let Some(stored) = stored else {
        return Ok(());
    };
    let key = SecureKey::parse(secure_key)?;
    let within = (!apqns.is_empty()).then_some(apqns);
    let vp = match ad.hsm.verification_pattern(&key, within) {
        Ok(vp) => vp,
        // A key no adapter can use cannot be compared; the operation reports that itself.
        Err(_) => return Ok(()),
    };
    if vp != stored {
        return Err(ZkeyError::Invalid(format!(
            "key '{name}': its .skey file holds another key (verification pattern {vp}; the key's properties say {stored}): the file was replaced or swapped outside zkey, so it is not used. Restore the key's files from a backup, or remove it with 'zkey remove -N {} --force'",
            crate::keyname::quote(name)
        )));
    }
    Ok(())
}

/// The status of a repository key when no adapter can be reached: nothing about the key itself
/// is known, and its properties are "not verified" (`why`).
pub fn unverified_status(e: &KeyEntry, why: &str) -> KeyStatus {
    KeyStatus {
        error: Some(format!("not verified: {why}")),
        integrity: Some(e.integrity.clone()),
        unreachable: true,
        secure_key_size: e.secure_key.len(),
        apqns: e.properties.apqns.clone(),
        ..KeyStatus::unknown(e.name.as_str())
    }
}

/// The status of a key whose files are inconsistent.
pub fn damaged_status(d: &crate::DamagedKey) -> KeyStatus {
    KeyStatus {
        error: Some(d.to_string()),
        advice: Some(format!(
            "restore the key's files from a backup, or remove it with 'zkey remove -N {} --force'",
            crate::keyname::quote(d.name.as_str())
        )),
        ..KeyStatus::unknown(d.name.as_str())
    }
}
