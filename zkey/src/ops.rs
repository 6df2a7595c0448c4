//! zkey's operations, each complete: its checks, the durable change, the audit record, and the
//! staging of a key made while a master key change is open on its APQNs. The binary parses its
//! arguments, calls one of these and renders the typed result; the bench and any other library
//! caller get the same guarantees, since none of them can be skipped from outside.
//!
//! Questions (remove a key? drop a dummy passphrase?) go through [`Ui`], so a caller decides how
//! to ask (a terminal, `--force`, a test).

use std::path::Path;

use serde::Serialize;

use ap_sim::apqn::Apqn;
use ap_sim::audit::Event;
use ap_sim::durable;
use ap_sim::hsm::{Direction, Register};
use ap_sim::token::SecureKey;
use zeroize::Zeroizing;

use crate::adapters::Adapters;
use crate::error::ZkeyError;
use crate::keyops::{self, NewKey};
use crate::properties::Timestamp;
use crate::reencipher::{self, Mode, Report, Request, Selection, Way};
use crate::repository::{DummyPassphrase, Writer};
use crate::volume::{Edit, SectorSize, Volume, VolumeType};
use crate::KeyName;

pub use zkey_cryptsetup::Ui;

fn io<'p>(action: &'static str, path: &'p Path) -> impl FnOnce(std::io::Error) -> ZkeyError + 'p {
    move |source| ZkeyError::io(action, path.to_path_buf(), source)
}

fn ask(ui: &mut dyn Ui, question: &str, force: bool) -> Result<bool, ZkeyError> {
    if force {
        return Ok(true);
    }
    ui.confirm(question)
        .map_err(|e| ZkeyError::Invalid(e.to_string()))
}

use crate::audit::event;

fn key_event(name: &str, key_name: &KeyName, key: &SecureKey, apqns: &[Apqn]) -> Event {
    Event {
        mktype: Some(key.key_type().mk_type()),
        new_mkvp: Some(key.mkvp()),
        details: Some(format!(
            "{}, {} bits{}",
            key.key_type(),
            key.key_bits() * if key.is_xts() { 2 } else { 1 },
            if key.is_xts() { " (XTS)" } else { "" }
        )),
        ..event(name, &[key_name], apqns)
    }
}

use crate::audit::audited;

/// An intent: the event, saying what will change.
fn intent(ev: Event, change: String) -> Event {
    Event {
        details: Some(change),
        ..ev
    }
}

/// Where a new key's material comes from.
#[derive(Copy, Clone)]
pub enum Source<'a> {
    /// Random, generated inside the adapter.
    Random,
    /// From a clear key (`--clearkey`).
    Clear(&'a [u8]),
}

/// What `generate` and `import` did.
#[derive(Clone, Debug)]
pub struct Added {
    pub key: SecureKey,
    /// The key was generated in the bound KMS.
    pub in_kms: bool,
    /// The master key change operation that was open on the key's APQNs and staged it too.
    pub staged_in: Option<String>,
    /// The key is enciphered with the OLD master key (an import): re-encipher it soon.
    pub under_old: bool,
    /// What the KMS plug-in said.
    pub notices: Vec<String>,
}

/// A new key in a file (`zkey generate FILE`): never overwrites a file, never through a link.
pub fn generate_file(
    ad: &Adapters,
    file: &Path,
    spec: &NewKey,
    source: Source<'_>,
) -> Result<SecureKey, ZkeyError> {
    const HINT: &str = "remove it or choose another name";
    if std::fs::symlink_metadata(file).is_ok() {
        return Err(exists(file, HINT));
    }
    let key = keyops::make_key(ad, spec, clear(source))?;
    write_key_out(file, &key.to_bytes(), false, HINT)?;
    Ok(key)
}

fn clear(source: Source<'_>) -> Option<&[u8]> {
    match source {
        Source::Random => None,
        Source::Clear(c) => Some(c),
    }
}

/// A new repository key: in the bound KMS unless `local`, otherwise in the adapter; recorded
/// in the audit log and staged into an open master key change.
pub fn generate(
    w: &Writer<'_>,
    ad: &Adapters,
    name: &KeyName,
    spec: &NewKey,
    source: Source<'_>,
    local: bool,
    pass: Option<DummyPassphrase>,
) -> Result<Added, ZkeyError> {
    name.check_new()?;
    let bound = crate::kms::KmsConf::load(w)?.is_some() && !local;
    let what = intent(
        event("generate", &[name], &spec.apqns),
        format!("creates key '{name}'"),
    );
    let act = || {
        let (key, notices) = if bound {
            if matches!(source, Source::Clear(_)) || !spec.apqns.is_empty() {
                return Err(ZkeyError::Invalid("a key of a KMS-bound repository is generated in the KMS and uses the plug-in's APQNs: drop --clearkey/--apqns, or add --local for a local key".into()));
            }
            let (key, props, notices) = crate::kms::generate_with_notices(w, ad, name, spec)?;
            w.create_key(name, &key.to_bytes(), &props, pass)?;
            (key, notices)
        } else {
            let key = keyops::make_key(ad, spec, clear(source))?;
            keyops::store_new(w, ad, name, &key, spec, pass)?;
            (key, Vec::new())
        };
        let staged_in = crate::mkchange::stage_new_key(w, ad, &w.entry(name)?)?;
        Ok(Added {
            key,
            in_kms: bound,
            staged_in,
            under_old: false,
            notices,
        })
    };
    audited(w, ad, what, act, |a| {
        vec![key_event("generate", name, &a.key, &spec.apqns)]
    })
}

/// Adds a secure key file's key to the repository, cross-checked against its MKVP.
pub fn import(
    w: &Writer<'_>,
    ad: &Adapters,
    name: &KeyName,
    key: &SecureKey,
    spec: &NewKey,
    pass: Option<DummyPassphrase>,
) -> Result<Added, ZkeyError> {
    name.check_new()?;
    let v = ad.hsm.verify(key, spec.apqn_slice())?;
    if spec.apqn_check && !spec.apqns.is_empty() {
        keyops::check_binding(ad, key.key_type(), &spec.apqns, Some(key.mkvp()))?;
    }
    let what = intent(
        key_event("import", name, key, &spec.apqns),
        format!("creates key '{name}'"),
    );
    let act = || {
        keyops::store_new(w, ad, name, key, spec, pass)?;
        let staged_in = crate::mkchange::stage_new_key(w, ad, &w.entry(name)?)?;
        Ok(Added {
            key: key.clone(),
            in_kms: false,
            staged_in,
            under_old: v.register == Register::Old,
            notices: Vec::new(),
        })
    };
    audited(w, ad, what, act, |_| {
        vec![key_event("import", name, key, &spec.apqns)]
    })
}

/// Copies a repository key out into a file (mode 0600). An existing file is replaced only with
/// `force`, and then by rename: a link planted there is replaced, never written through.
pub fn export(
    r: &crate::repository::Reader<'_>,
    ad: Option<&Adapters>,
    name: &KeyName,
    file: &Path,
    force: bool,
) -> Result<(), ZkeyError> {
    let e = r.entry(name)?;
    // Without adapters (a backup on a machine without them) the key cannot be compared with
    // its properties; with them, a swapped .skey is refused.
    if let Some(ad) = ad {
        keyops::check_same_key(ad, &e)?;
    }
    write_key_out(
        file,
        &e.secure_key,
        force,
        "remove it, choose another file, or add --force to replace it",
    )
}

/// Writes a key file outside the repository (mode 0600). Without `force` an existing file, or
/// one planted while the key was written, is refused; with it, it is replaced by rename. Neither
/// ever writes through a link: in a world-writable directory another user may have put one there.
fn write_key_out(file: &Path, data: &[u8], force: bool, hint: &str) -> Result<(), ZkeyError> {
    if force {
        return durable::write_atomic(file, data, 0o600).map_err(io("writing", file));
    }
    if std::fs::symlink_metadata(file).is_ok() {
        return Err(exists(file, hint));
    }
    durable::write_new_atomic(file, data, 0o600).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => exists(file, hint),
        _ => io("writing", file)(e),
    })
}

fn exists(file: &Path, hint: &str) -> ZkeyError {
    ZkeyError::Invalid(format!(
        "{} exists: zkey does not overwrite it, nor write through a link there; {hint}",
        file.display()
    ))
}

/// Removes a key after asking (a KMS-bound key is deactivated in the KMS first; if that fails
/// nothing is removed). `force` also removes a damaged key, without asking. Returns what the
/// KMS plug-in said.
pub fn remove(
    w: &Writer<'_>,
    ad: &Adapters,
    name: &KeyName,
    force: bool,
    ui: &mut dyn Ui,
) -> Result<crate::kms::Notices, ZkeyError> {
    let volumes = match w.entry(name) {
        Ok(e) => e.properties.volumes.clone(),
        Err(crate::RepoError::Damaged(_)) if force => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    let mut q = format!("Remove key '{name}'? The key is destroyed: data encrypted with it can no longer be decrypted");
    if !volumes.is_empty() {
        q.push_str(&format!(
            " (volumes: {})",
            crate::volume::format_volume_list(&volumes)
        ));
    }
    if !ask(ui, &q, force)? {
        return Err(ZkeyError::Invalid(format!("key '{name}' was not removed")));
    }
    let act = || {
        let mut notices = Vec::new();
        if let Ok(e) = w.entry(name) {
            if e.properties.is_kms_bound() {
                w.changing()?;
                notices = crate::kms::remove_with_notices(w, &e.properties)
                    .map_err(|e| ZkeyError::Invalid(format!("{e}; the key was not removed")))?;
            }
        }
        w.remove_key(name)?;
        Ok(notices)
    };
    let ev = event("remove", &[name], &[]);
    let what = intent(ev.clone(), format!("removes key '{name}'"));
    audited(w, ad, what, act, |_| vec![ev])
}

/// Renames a key.
pub fn rename(
    w: &Writer<'_>,
    ad: &Adapters,
    name: &KeyName,
    new_name: &KeyName,
) -> Result<(), ZkeyError> {
    new_name.check_new()?;
    let ev = event("rename", &[name, new_name], &[]);
    let what = intent(ev.clone(), format!("renames '{name}' to '{new_name}'"));
    audited(
        w,
        ad,
        what,
        || Ok(w.rename_key(name, new_name)?),
        |_| {
            vec![Event {
                details: Some(format!("renamed to '{new_name}'")),
                ..ev
            }]
        },
    )
}

/// Copies a key under a new name, with `volumes` (none by default: a volume has one key).
pub fn copy(
    w: &Writer<'_>,
    ad: &Adapters,
    name: &KeyName,
    new_name: &KeyName,
    volumes: Vec<Volume>,
) -> Result<(), ZkeyError> {
    new_name.check_new()?;
    let e = w.entry(name)?;
    let mut props = e.properties.clone();
    props.volumes = volumes;
    keyops::check_volumes_free(w, new_name, &props.volumes)?;
    props.creation_time = Some(Timestamp::now());
    let ev = event("copy", &[name, new_name], &props.apqns);
    let what = intent(ev.clone(), format!("copies '{name}' to '{new_name}'"));
    audited(
        w,
        ad,
        what,
        || Ok(w.copy_key(name, new_name, &props)?),
        |_| {
            vec![Event {
                details: Some(format!("copied to '{new_name}'")),
                ..ev
            }]
        },
    )
}

/// What `zkey change` asks for; `None` leaves a property as it is.
#[derive(Default)]
pub struct Change {
    pub description: Option<String>,
    pub volumes: Option<Edit<Volume>>,
    pub volume_check: bool,
    pub apqns: Option<Edit<Apqn>>,
    pub apqn_check: bool,
    pub sector_size: Option<SectorSize>,
    pub volume_type: Option<VolumeType>,
    pub passphrase: Option<PassphraseChange>,
    pub force: bool,
}

pub use crate::repository::PassphraseChange;

/// Changes a key's properties: every check and question comes first, so a refused change
/// changes nothing.
pub fn change(
    w: &Writer<'_>,
    ad: &Adapters,
    name: &KeyName,
    c: Change,
    ui: &mut dyn Ui,
) -> Result<(), ZkeyError> {
    let e = w.entry(name)?;
    let mut p = e.properties.clone();
    if let Some(d) = c.description {
        p.description = (!d.is_empty()).then_some(d);
    }
    if let Some(edit) = &c.volumes {
        if c.volume_check && !matches!(edit, Edit::Remove(_)) {
            edit.items()
                .iter()
                .try_for_each(crate::volume::check_device)?;
        }
        edit.apply(&mut p.volumes)
            .map_err(|e| ZkeyError::Invalid(e.to_string()))?;
        keyops::check_volumes_free(w, name, &p.volumes)?;
    }
    if let Some(edit) = &c.apqns {
        let before = p.apqns.clone();
        edit.apply(&mut p.apqns)
            .map_err(|e| ZkeyError::Invalid(e.to_string()))?;
        let added: Vec<Apqn> = p
            .apqns
            .iter()
            .filter(|x| !before.contains(x))
            .copied()
            .collect();
        if c.apqn_check && !added.is_empty() {
            let key = SecureKey::parse(&e.secure_key)?;
            keyops::check_binding(ad, key.key_type(), &added, Some(key.mkvp()))?;
        }
    }
    if let Some(s) = c.sector_size {
        p.sector_size = s;
    }
    let removing = matches!(c.passphrase, Some(PassphraseChange::Remove));
    if let Some(t) = c.volume_type {
        if t != VolumeType::Luks2
            && e.has_pass
            && !removing
            && !ask(
                ui,
                "Leaving LUKS2 removes the key's dummy passphrase. Continue?",
                c.force,
            )?
        {
            return Err(ZkeyError::Invalid("nothing was changed".into()));
        }
        p.volume_type = t;
    }
    if removing && !ask(ui, &format!("Remove the dummy passphrase of '{name}'? Volumes that open only with it can no longer be opened"), c.force)? {
        return Err(ZkeyError::Invalid("the dummy passphrase was not removed; nothing was changed".into()));
    }
    let ev = event("change", &[name], &p.apqns);
    let what = intent(ev.clone(), format!("changes the properties of '{name}'"));
    audited(
        w,
        ad,
        what,
        || Ok(w.change_key(name, &p, c.passphrase)?),
        |_| {
            vec![Event {
                details: Some("properties changed".into()),
                ..ev
            }]
        },
    )
}

/// What `zkey reencipher` of repository keys did, and where everything stands after it.
#[derive(Clone, Debug, Serialize)]
pub struct Reenciphered {
    #[serde(flatten)]
    pub report: Report,
    pub readiness: crate::readiness::Readiness,
}

/// Re-enciphers the selected repository keys: the staging preflight (one complete NEW key on
/// every APQN, or nothing changes), each key, one audit record per kind of result, and the
/// readiness of the whole host afterwards. In place towards NEW asks first.
pub fn reencipher(
    w: &Writer<'_>,
    ad: &Adapters,
    sel: &Selection,
    opts: &Request,
    force: bool,
    ui: &mut dyn Ui,
    each: impl FnMut(&reencipher::KeyResult),
) -> Result<Reenciphered, ZkeyError> {
    if opts.way == Some(Way::ToNew) && opts.mode == Some(Mode::InPlace) && !ask(ui, "In-place re-enciphering to NEW makes the keys unusable until the security officer SETs the new master key, and lost if the NEW key is cleared instead. Continue?", force)? {
        return Err(ZkeyError::Invalid("nothing was re-enciphered (use --staged to keep the keys usable until the SET)".into()));
    }
    if opts.way.is_some_and(|w| w != Way::FromOld) && opts.mode != Some(Mode::Complete) {
        reencipher::preflight_to_new(ad, w, sel)?;
    }
    // The intent names the selected keys: what to check if the re-encipher is cut short.
    let keys: Vec<String> = w
        .entries()?
        .into_iter()
        .map(|e| match e {
            Ok(e) => (sel.matches(&e.name, &e.properties.apqns), e.name),
            Err(d) => (sel.matches_damaged(&d.name), d.name),
        })
        .filter(|(m, _)| *m)
        .map(|(_, n)| n.to_string())
        .collect();
    let what = Event {
        event: "reencipher".into(),
        command: "zkey reencipher".into(),
        keys,
        details: Some(
            format!(
                "re-enciphers the selected keys ({:?}, {:?})",
                opts.way, opts.mode
            )
            .to_lowercase(),
        ),
        ..Event::default()
    };
    let report = audited(
        w,
        ad,
        what,
        || reencipher::reencipher_repository(w, ad, sel, opts, each),
        crate::audit::reencipher_events,
    )?;
    // Whether the SET is safe now is a question about the whole host, not the selection.
    let readiness = crate::readiness::assess(
        w,
        ad,
        &crate::readiness::Scope::all(),
        &crate::readiness::plugin_facts(w)?,
    )?;
    Ok(Reenciphered { report, readiness })
}

/// Re-enciphers a key file in place or into `output` (`zkey reencipher FILE`).
pub fn reencipher_file(
    ad: &Adapters,
    file: &Path,
    output: Option<&Path>,
    way: Option<Way>,
    mode: Option<Mode>,
) -> Result<(), ZkeyError> {
    if matches!(mode, Some(Mode::Staged | Mode::Complete)) {
        return Err(ZkeyError::Invalid("--staged and --complete work on repository keys; a key file is re-enciphered in place (or to --output)".into()));
    }
    let bytes = read_key_file(file)?;
    let key = SecureKey::parse(&bytes)
        .map_err(|e| ZkeyError::Invalid(format!("{}: {e}", file.display())))?;
    let way = match way {
        Some(w) => w,
        None if ad.hsm.verify(&key, None)?.register == Register::Old => Way::FromOld,
        None => Way::ToNew,
    };
    let new = match way {
        Way::ToNew => ad.hsm.reencipher(&key, Direction::ToNew, None)?,
        Way::FromOld => ad.hsm.reencipher(&key, Direction::FromOld, None)?,
        Way::FromOldToNew => {
            let cur = ad.hsm.reencipher(&key, Direction::FromOld, None)?;
            ad.hsm.reencipher(&cur, Direction::ToNew, None)?
        }
    };
    let out = output.unwrap_or(file);
    durable::write_atomic(out, &new.to_bytes(), 0o600).map_err(io("writing", out))
}

/// A clear AES key file (`generate -c`): at most an XTS pair of AES-256 keys.
pub const CLEAR_KEY_FILE: infra::input::Bound = infra::input::Bound::new("clear AES key", 64);

/// Reads a secure key file, bounded by the largest secure key.
pub fn read_key_file(file: &Path) -> Result<Zeroizing<Vec<u8>>, ZkeyError> {
    Ok(infra::input::read_bounded(file, SecureKey::FILE)?)
}

/// Reads a clear key file (`generate -c`), bounded by the largest clear key.
pub fn read_clear_key_file(file: &Path) -> Result<Zeroizing<Vec<u8>>, ZkeyError> {
    Ok(infra::input::read_bounded(file, CLEAR_KEY_FILE)?)
}

/// Reads a passphrase file (a dummy passphrase, a volume's passphrase), bounded as cryptsetup
/// bounds key files.
pub fn read_passphrase_file(file: &Path) -> Result<Zeroizing<Vec<u8>>, ZkeyError> {
    Ok(infra::input::read_bounded(file, infra::input::PASSPHRASE)?)
}

/// `zkey kms bind`: binds the repository to a plug-in, and records it.
pub fn kms_bind(
    w: &Writer<'_>,
    ad: &Adapters,
    plugin: &str,
) -> Result<(crate::kms::KmsConf, crate::kms::Notices), ZkeyError> {
    let ev = Event {
        details: Some(format!("bound to {plugin}")),
        ..event("kms-bind", &[], &[])
    };
    let what = intent(ev.clone(), format!("binds the repository to {plugin}"));
    audited(w, ad, what, || crate::kms::bind(w, plugin), |_| vec![ev])
}

/// `zkey kms unbind`: asks, deconfigures the plug-in, makes the keys local, and records it.
/// Returns the plug-in's name and how many keys became local.
pub fn kms_unbind(
    w: &Writer<'_>,
    ad: &Adapters,
    force: bool,
    ui: &mut dyn Ui,
) -> Result<(String, usize, crate::kms::Notices), ZkeyError> {
    let c = crate::kms::require(w)?;
    if !ask(ui, &format!("Unbind the repository from the KMS plug-in '{}'? Its keys stay, as local keys that can no longer be refreshed from the KMS", c.kms), force)? {
        return Err(ZkeyError::Invalid("the repository stays bound".into()));
    }
    let what = intent(
        event("kms-unbind", &[], &[]),
        format!("unbinds the repository from {}", c.kms),
    );
    let (n, notices) = audited(
        w,
        ad,
        what,
        || crate::kms::unbind(w),
        |(n, _)| {
            vec![Event {
                details: Some(format!("unbound from {}; {n} keys made local", c.kms)),
                ..event("kms-unbind", &[], &[])
            }]
        },
    )?;
    Ok((c.kms, n, notices))
}

/// `zkey kms configure`, recorded.
pub fn kms_configure(
    w: &Writer<'_>,
    ad: &Adapters,
    apqns: Option<Vec<Apqn>>,
    options: std::collections::BTreeMap<String, String>,
) -> Result<(zkey_kms_protocol::ConfigureResult, crate::kms::Notices), ZkeyError> {
    let ev = event("kms-configure", &[], &[]);
    let what = intent(ev.clone(), "configures the KMS plug-in".into());
    audited(
        w,
        ad,
        what,
        || crate::kms::configure(w, ad, apqns, options),
        |_| vec![ev],
    )
}

/// `zkey kms reencipher`: the plug-in's own keys, recorded when any changed.
pub fn kms_reencipher(
    w: &Writer<'_>,
    ad: &Adapters,
    mode: zkey_kms_protocol::ReencipherMode,
    direction: zkey_kms_protocol::MkDirection,
) -> Result<(zkey_kms_protocol::ReencipherReport, crate::kms::Notices), ZkeyError> {
    let details = format!("{mode:?}, {direction:?}").to_lowercase();
    let what = intent(
        event("kms-reencipher", &[], &[]),
        format!("re-enciphers the plug-in's keys ({details})"),
    );
    audited(
        w,
        ad,
        what,
        || {
            // The plug-in changes its own files.
            w.changing()?;
            crate::kms::reencipher(w, ad, mode, direction, None)
        },
        |(rep, _)| {
            let changed = rep.changed();
            if changed.is_empty() {
                return vec![];
            }
            vec![Event {
                keys: changed,
                details: Some(details.clone()),
                ..event("kms-reencipher", &[], &[])
            }]
        },
    )
}

/// `zkey kms import`: repository keys rebuilt from the KMS, recorded.
pub fn kms_import(
    w: &Writer<'_>,
    ad: &Adapters,
    label: Option<&str>,
    names: Option<&crate::Pattern>,
    volume_check: bool,
) -> Result<(Vec<crate::kms::KeyOutcome>, crate::kms::Notices), ZkeyError> {
    let what = intent(
        event("kms-import", &[], &[]),
        "creates repository keys from the KMS".into(),
    );
    audited(
        w,
        ad,
        what,
        || {
            crate::kms::import(w, ad, label, names, |v| {
                !volume_check || crate::volume::check_device(v).is_ok()
            })
        },
        |(outs, _)| outcomes("kms-import", outs, crate::kms::Done::Imported),
    )
}

/// `zkey kms refresh`: bound keys re-imported under the CURRENT master key, recorded.
pub fn kms_refresh(
    w: &Writer<'_>,
    ad: &Adapters,
    names: Option<&crate::Pattern>,
    reload_properties: bool,
) -> Result<(Vec<crate::kms::KeyOutcome>, crate::kms::Notices), ZkeyError> {
    let what = intent(
        event("kms-refresh", &[], &[]),
        "replaces bound keys with their copies from the KMS".into(),
    );
    audited(
        w,
        ad,
        what,
        || crate::kms::refresh(w, ad, names, reload_properties),
        |(outs, _)| outcomes("kms-refresh", outs, crate::kms::Done::Refreshed),
    )
}

/// The record of an import or refresh: the keys it did.
fn outcomes(name: &str, outs: &[crate::kms::KeyOutcome], done: crate::kms::Done) -> Vec<Event> {
    let keys = outs
        .iter()
        .filter(|o| o.result == done)
        .map(|o| o.name.clone())
        .collect();
    vec![Event {
        keys,
        ..event(name, &[], &[])
    }]
}
