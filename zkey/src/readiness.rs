//! The readiness model: one verdict per object a master key change touches, so that every
//! command that says whether a SET is safe says the same thing.
//!
//! The objects are the repository's keys, the LUKS2 volumes of those keys (their headers hold
//! their own copy of the secure key), and the KMS plug-in's own keys. Each gets a [`Verdict`]:
//!
//! | verdict | meaning |
//! |---|---|
//! | `safe` | works now and after the next SET (no change pending for its master key type, or not touched by it) |
//! | `staged` | a copy under the NEW master key waits beside it (or it was moved to NEW in place): the SET is safe for it |
//! | `at-risk` | the next SET destroys it, or makes it unusable until someone acts: the reason names the command |
//! | `lost` | unusable already: its master key is gone, its files are damaged, or the key file holds another key |
//! | `unknown` | the suite cannot tell (a device that is not there, a volume header that cannot tell CURRENT from OLD without the passphrase) |
//!
//! A SET is *safe* when a change is pending (a complete NEW key is loaded) and every object
//! under a master key type that changes is `safe` or `staged`. `zkey validate --all` exits 3
//! (the suite's "at risk" code) when any object is `at-risk` or `lost`, or when an object under
//! a changing type is `unknown`.
//!
//! What is read: the HSM for repository keys (verify, trial re-encipher to NEW), the LUKS2
//! header's tokens for volumes (no passphrase; the dummy passphrase zkey holds only where the
//! header alone cannot tell), and the MKVPs the plug-in reports for its keys against the
//! registers in sysfs. Nothing is changed.

use serde::Serialize;

use ap_sim::apqn::Apqn;
use ap_sim::registers::MkType;
use ap_sim::sysfs::Reading;
use ap_sim::token::KeyType;
use ap_sim::Mkvp;

use crate::adapters::Adapters;
use crate::error::ZkeyError;
use crate::keyops::{self, KeyStatus, Risk};
use crate::reencipher::Selection;
use crate::repository::{DamagedKey, KeyEntry, Reader};
use crate::volume::{Volume, VolumeType};

/// Where one object stands for the next SET.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Safe,
    Staged,
    AtRisk,
    Lost,
    Unknown,
}

impl Verdict {
    pub fn word(self) -> &'static str {
        match self {
            Verdict::Safe => "safe",
            Verdict::Staged => "staged",
            Verdict::AtRisk => "AT RISK",
            Verdict::Lost => "LOST",
            Verdict::Unknown => "unknown",
        }
    }

    /// Safe or staged: nothing to do before the SET.
    pub fn ready(self) -> bool {
        matches!(self, Verdict::Safe | Verdict::Staged)
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.word())
    }
}

/// What kind of object.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A repository key (`<name>.skey`).
    Key,
    /// A LUKS2 volume of a repository key.
    Volume,
    /// A KMS plug-in's own key (identity key, wrapping key).
    PluginKey,
}

impl Kind {
    pub fn word(self) -> &'static str {
        match self {
            Kind::Key => "key",
            Kind::Volume => "volume",
            Kind::PluginKey => "plug-in key",
        }
    }
}

/// One object and its verdict. Stable JSON schema: fields are only ever added.
#[derive(Clone, Debug, Serialize)]
pub struct Object {
    pub kind: Kind,
    /// The key's name, the volume as `device:dm-name`, or `PLUGIN identity-key`.
    pub name: String,
    /// For a volume: the repository key it belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub mktype: Option<MkType>,
    pub verdict: Verdict,
    /// Why, in words.
    pub reason: String,
    /// The command that makes it safe, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
}

/// A master key change that can be SET now: a complete NEW key of `mktype` on `apqns`.
#[derive(Clone, Debug, Serialize)]
pub struct Pending {
    pub mktype: MkType,
    pub apqns: Vec<Apqn>,
    /// The NEW key's pattern, `None` when the APQNs hold different NEW keys.
    pub new_mkvp: Option<Mkvp>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub safe: usize,
    pub staged: usize,
    pub at_risk: usize,
    pub lost: usize,
    pub unknown: usize,
}

/// The verdicts of every object in scope.
#[derive(Clone, Debug, Serialize)]
pub struct Readiness {
    /// The changes that can be SET now, read from the registers.
    pub pending: Vec<Pending>,
    pub objects: Vec<Object>,
    pub summary: Summary,
    /// A change is pending and every object is safe or staged.
    pub safe_to_set: bool,
    /// Something would be lost or hurt: the "at risk" exit code.
    pub at_risk: bool,
    /// The scope was a selection (a `-N`/`-a` filter, no plug-in keys): `safe_to_set` speaks
    /// for it only, and the headline says so.
    pub partial: bool,
    /// The full status of each repository key in scope, in repository order (damaged keys
    /// included), for the commands that show more than the verdict.
    #[serde(skip)]
    pub keys: Vec<KeyStatus>,
}

impl Readiness {
    fn new(
        pending: Vec<Pending>,
        objects: Vec<Object>,
        keys: Vec<KeyStatus>,
        partial: bool,
    ) -> Readiness {
        let mut s = Summary::default();
        for o in &objects {
            match o.verdict {
                Verdict::Safe => s.safe += 1,
                Verdict::Staged => s.staged += 1,
                Verdict::AtRisk => s.at_risk += 1,
                Verdict::Lost => s.lost += 1,
                Verdict::Unknown => s.unknown += 1,
            }
        }
        // A SET of one master key type touches only the objects under that type (and those of
        // a type nobody can tell): the others neither block it nor, while `unknown`, alarm.
        let changing: Vec<MkType> = pending.iter().map(|p| p.mktype).collect();
        let in_change = |o: &&Object| o.mktype.is_none_or(|t| changing.contains(&t));
        let safe_to_set =
            !changing.is_empty() && objects.iter().filter(in_change).all(|o| o.verdict.ready());
        let at_risk = s.at_risk + s.lost > 0
            || objects
                .iter()
                .filter(in_change)
                .any(|o| o.verdict == Verdict::Unknown);
        Readiness {
            pending,
            objects,
            summary: s,
            safe_to_set,
            at_risk,
            partial,
            keys,
        }
    }

    /// The objects that keep a SET from being safe, worst first.
    pub fn not_ready(&self) -> Vec<&Object> {
        let mut v: Vec<&Object> = self.objects.iter().filter(|o| !o.verdict.ready()).collect();
        v.sort_by_key(|o| std::cmp::Reverse(o.verdict));
        v
    }

    pub fn object(&self, kind: Kind, name: &str) -> Option<&Object> {
        self.objects
            .iter()
            .find(|o| o.kind == kind && o.name == name)
    }

    /// The one line every command prints: "SAFE TO SET ...", "NOT SAFE TO SET ..." or, with
    /// nothing pending, how many objects are at risk.
    pub fn headline(&self) -> String {
        let s = &self.summary;
        let counts = format!(
            "{} safe, {} staged, {} at risk, {} lost, {} unknown",
            s.safe, s.staged, s.at_risk, s.lost, s.unknown
        );
        if self.safe_to_set && self.partial {
            format!(
                "The selected objects are safe or staged for the new {} master key ({counts}); 'zkey validate --all' says whether the whole host is safe to SET.",
                self.pending_types()
            )
        } else if self.safe_to_set {
            format!(
                "SAFE TO SET: every key, volume and plug-in key is safe or staged for the new {} master key ({counts}).",
                self.pending_types()
            )
        } else if !self.pending.is_empty() {
            format!(
                "NOT SAFE TO SET the new {} master key: {} of {} objects are not staged ({counts}).",
                self.pending_types(),
                self.not_ready().len(),
                self.objects.len()
            )
        } else if self.at_risk {
            format!("AT RISK: no master key change is pending, but the next one would hurt these ({counts}).")
        } else {
            format!("No master key change is pending ({counts}).")
        }
    }

    fn pending_types(&self) -> String {
        let mut t: Vec<String> = self
            .pending
            .iter()
            .map(|p| p.mktype.to_string().to_uppercase())
            .collect();
        t.dedup();
        t.join(" and ")
    }
}

/// Which objects: the selection of repository keys, and optionally only what a change of
/// `types` on `apqns` touches (a master key change operation's scope).
#[derive(Clone, Debug, Default)]
pub struct Scope {
    pub keys: Selection,
    pub change: Option<(Vec<Apqn>, Vec<MkType>)>,
    /// Leave out the plug-in's keys (e.g. a `-N` filter that names repository keys).
    pub without_plugin_keys: bool,
    /// Cross-check each key's APQNs too (`validate` without `--no-apqn-check`).
    pub apqn_check: bool,
}

impl Scope {
    /// Everything on this host: every repository key, its volumes, the plug-in's keys.
    pub fn all() -> Scope {
        Scope::default()
    }

    /// Less than everything: the verdict speaks for the selection only.
    pub fn is_partial(&self) -> bool {
        self.keys.is_filtered() || self.without_plugin_keys
    }
}

impl Scope {
    fn touches(&self, mktype: MkType, apqns: &[Apqn]) -> bool {
        match &self.change {
            None => true,
            Some((ca, ct)) => {
                ct.contains(&mktype) && (apqns.is_empty() || apqns.iter().any(|a| ca.contains(a)))
            }
        }
    }
}

/// What the bound KMS plug-in reports about its own keys.
#[derive(Clone, Debug, Default)]
pub enum PluginKeys {
    /// The repository is not bound to a KMS.
    #[default]
    Unbound,
    Known {
        plugin: String,
        keys: Vec<zkey_kms_protocol::PluginKeyStatus>,
    },
    /// The plug-in could not be asked: its keys are `unknown`.
    Unreadable { plugin: String, error: String },
}

/// Assesses every object in `scope`. The caller holds the repository lock (shared is enough).
pub fn assess(
    r: &Reader<'_>,
    ad: &Adapters,
    scope: &Scope,
    plugin_keys: &PluginKeys,
) -> Result<Readiness, ZkeyError> {
    let everywhere = pending(ad)?;
    let mut pending = everywhere.clone();
    if let Some((apqns, types)) = &scope.change {
        pending.retain(|p| types.contains(&p.mktype) && p.apqns.iter().any(|a| apqns.contains(a)));
    }
    let selection = scope.keys.resolve(r)?;
    let mut objects = Vec::new();
    let mut keys = Vec::new();
    for e in r.entries()? {
        match e {
            Ok(e) => {
                if !selection.matches(&e.name, &e.properties.apqns) {
                    continue;
                }
                let Some(t) = mktype_of(&e) else {
                    objects.push(damaged_object(e.name.as_str(), "its key type is unknown"));
                    keys.push(keyops::entry_status(ad, &e, false));
                    continue;
                };
                if !scope.touches(t, &e.properties.apqns) {
                    continue;
                }
                let st = keyops::entry_status(ad, &e, scope.apqn_check);
                objects.push(key_object(ad, &e, &st, t));
                objects.extend(volume_objects(r, ad, &e, &st, t, &everywhere));
                keys.push(st);
            }
            Err(d) => {
                if scope.change.is_none() && selection.matches_damaged(&d.name) {
                    objects.push(damaged(&d));
                    keys.push(keyops::damaged_status(&d));
                }
            }
        }
    }
    if !scope.without_plugin_keys {
        match plugin_keys {
            PluginKeys::Unbound => {}
            PluginKeys::Known { plugin, keys } => {
                for k in keys {
                    if scope.touches(k.mktype, &k.apqns) {
                        objects.push(plugin_object(ad, plugin, k)?);
                    }
                }
            }
            PluginKeys::Unreadable { plugin, error } => objects.push(Object {
                kind: Kind::PluginKey,
                name: format!("{plugin} keys"),
                key: None,
                mktype: None,
                verdict: Verdict::Unknown,
                reason: format!("the KMS plug-in cannot report its keys: {error}"),
                action: Some("zkey kms info".into()),
            }),
        }
    }
    Ok(Readiness::new(pending, objects, keys, scope.is_partial()))
}

/// The changes that can be SET now: per master key type, the online APQNs with a complete NEW
/// key.
pub fn pending(ad: &Adapters) -> Result<Vec<Pending>, ZkeyError> {
    let mut out: Vec<Pending> = Vec::new();
    for q in ad.sysfs.queues()? {
        if q.status != ap_sim::adapter::Status::Online {
            continue;
        }
        for t in [MkType::Aes, MkType::Apka, MkType::Ep11] {
            let regs = q.mkvps.as_ref().and_then(|m| m.of_type(t));
            let Some(new) = regs.and_then(|r| r.new.complete_mkvp()) else {
                continue;
            };
            match out.iter_mut().find(|p| p.mktype == t) {
                Some(p) => {
                    if p.new_mkvp.is_some_and(|m| !m.matches(&new)) {
                        p.new_mkvp = None;
                    }
                    p.apqns.push(q.apqn);
                }
                None => out.push(Pending {
                    mktype: t,
                    apqns: vec![q.apqn],
                    new_mkvp: Some(new),
                }),
            }
        }
    }
    Ok(out)
}

fn mktype_of(e: &KeyEntry) -> Option<MkType> {
    e.properties
        .key_type
        .parse::<KeyType>()
        .ok()
        .map(KeyType::mk_type)
}

fn damaged_object(name: &str, why: &str) -> Object {
    Object {
        kind: Kind::Key,
        name: name.to_string(),
        key: None,
        mktype: None,
        verdict: Verdict::Lost,
        reason: format!("the key is damaged and cannot be used: {why}"),
        action: Some(format!(
            "restore the key's files from a backup, or remove it with 'zkey remove -N {} --force'",
            crate::keyname::quote(name)
        )),
    }
}

fn damaged(d: &DamagedKey) -> Object {
    damaged_object(d.name.as_str(), &d.to_string())
}

/// A repository key's verdict from its status.
pub fn key_verdict(st: &KeyStatus) -> (Verdict, String) {
    let reason = |r: &Risk| match st.key_type {
        Some(t) => r.why(t).to_string(),
        None => st.advice.clone().unwrap_or_else(|| format!("{r:?}")),
    };
    match &st.risk {
        _ if st.vp_mismatch => (
            Verdict::Lost,
            st.error
                .clone()
                .unwrap_or_else(|| "verification pattern mismatch".into()),
        ),
        Some(r @ Risk::Lost) => (Verdict::Lost, reason(r)),
        Some(Risk::AwaitingSet) => (
            Verdict::Staged,
            "re-enciphered in place to the NEW master key: usable after the SET".into(),
        ),
        Some(r) => (Verdict::AtRisk, reason(r)),
        None if st.staged.as_ref().and_then(|s| s.register) == Some(ap_sim::hsm::Register::New) => {
            (
                Verdict::Staged,
                "a copy under the NEW master key is staged; complete it after the SET".into(),
            )
        }
        None if st.valid => (
            Verdict::Safe,
            format!(
                "enciphered with the {} master key; no NEW master key is loaded for it",
                st.register.map(|r| r.name()).unwrap_or("CURRENT")
            ),
        ),
        None => (
            Verdict::Unknown,
            st.error
                .clone()
                .unwrap_or_else(|| "the key cannot be checked".into()),
        ),
    }
}

fn key_object(ad: &Adapters, e: &KeyEntry, st: &KeyStatus, t: MkType) -> Object {
    let (mut verdict, mut reason) = key_verdict(st);
    if verdict == Verdict::Lost
        && st
            .mkvp
            .is_some_and(|m| held_offline(ad, t, m, &e.properties.apqns))
    {
        verdict = Verdict::Unknown;
        reason = "its master key is held only by APQNs that are offline now: set them online (chzcrypt -e) to check it".into();
    }
    let name = e.name.as_str();
    let q = crate::keyname::quote_selecting(name);
    let action = match (&st.risk, verdict) {
        (Some(Risk::EncipheredWithOld), _) => Some(format!("zkey reencipher -N {q} --from-old")),
        (Some(Risk::NotStaged), _) => Some(format!("zkey reencipher -N {q} --to-new --staged")),
        (Some(Risk::CompletePending), _) => Some(format!("zkey reencipher -N {q} --complete")),
        (Some(Risk::Lost), _) if e.properties.is_kms_bound() => {
            Some(format!("zkey kms refresh -N {q}"))
        }
        _ => None,
    };
    Object {
        kind: Kind::Key,
        name: name.to_string(),
        key: None,
        mktype: Some(t),
        verdict,
        reason,
        action,
    }
}

/// The LUKS2 volumes of a key, judged by their headers.
fn volume_objects(
    r: &Reader<'_>,
    ad: &Adapters,
    e: &KeyEntry,
    st: &KeyStatus,
    t: MkType,
    pending: &[Pending],
) -> Vec<Object> {
    if e.properties.volume_type != VolumeType::Luks2 {
        return Vec::new();
    }
    // From the registers, not from the repository key: the volume's header holds its own copy
    // of the key, which may stand elsewhere than the repository's (never staged, moved in
    // place, left under OLD).
    let apqns = &e.properties.apqns;
    let new = pending
        .iter()
        .find(|p| p.mktype == t && (apqns.is_empty() || p.apqns.iter().any(|a| apqns.contains(a))));
    let new_loaded = new.is_some();
    let new_mkvp = new.and_then(|p| p.new_mkvp);
    e.properties
        .volumes
        .iter()
        .map(|v| {
            let (verdict, reason, action) = volume_verdict(r, ad, e, st, v, new_loaded, new_mkvp);
            Object {
                kind: Kind::Volume,
                name: v.to_string(),
                key: Some(e.name.to_string()),
                mktype: Some(t),
                verdict,
                reason,
                action,
            }
        })
        .collect()
}

fn volume_verdict(
    r: &Reader<'_>,
    ad: &Adapters,
    e: &KeyEntry,
    st: &KeyStatus,
    v: &Volume,
    new_loaded: bool,
    new_mkvp: Option<Mkvp>,
) -> (Verdict, String, Option<String>) {
    let device = crate::crypttab::device_path(v.device());
    let dev = crate::keyname::quote(&device.display().to_string());
    if !device.exists() {
        return (
            Verdict::Unknown,
            format!("the device {} is not there", device.display()),
            Some(format!("attach the device, or drop the association with 'zkey change -N {} --volumes -{v}'", crate::keyname::quote(e.name.as_str()))),
        );
    }
    use zkey_cryptsetup::status::HeaderStatus;
    let h = match zkey_cryptsetup::status::header_status(&device) {
        Ok(HeaderStatus::Luks2(h)) => h,
        Ok(HeaderStatus::NotFormatted { .. }) => {
            return (
                Verdict::Safe,
                "not formatted yet: the device holds no key".into(),
                None,
            )
        }
        Ok(HeaderStatus::Luks1 { .. }) => {
            return (
                Verdict::Unknown,
                "a LUKS1 volume: it holds no secure key zkey can re-encipher".into(),
                None,
            )
        }
        Err(err) => {
            return (
                Verdict::Unknown,
                format!("the LUKS2 header cannot be read: {err}"),
                Some(format!("zkey-cryptsetup validate {dev}")),
            )
        }
    };
    if let (Some(t), Some(vp)) = (&h.verification_pattern, st.verification_pattern) {
        if *t != vp.to_string() {
            return (
                Verdict::Unknown,
                format!("the volume's verification pattern {t} is not key '{}''s: the volume holds another key", e.name),
                Some(format!("zkey-cryptsetup validate {dev}")),
            );
        }
    }
    if e.has_pass {
        return by_passphrase(r, ad, e, &device, &dev, new_loaded);
    }
    let staged_mkvp = h
        .reencipher_pending
        .as_ref()
        .map(|p| p.mkvp.as_deref().and_then(|m| m.parse::<Mkvp>().ok()));
    let pending = staged_mkvp.is_some();
    match (pending, new_loaded) {
        (true, true) => match (staged_mkvp.flatten(), new_mkvp) {
            (Some(s), Some(n)) if s.matches(&n) => (
                Verdict::Staged,
                "a re-encipher to the NEW master key is staged in the header".into(),
                None,
            ),
            (Some(_), _) => (
                Verdict::AtRisk,
                "the stage in the header is for another NEW master key than the one loaded now (cleared or replaced): it does not survive the SET".into(),
                Some(format!("zkey-cryptsetup reencipher {dev} --staged")),
            ),
            (None, _) => (
                Verdict::Unknown,
                "a stage is pending in the header, but the tool that made it did not record its master key: the header cannot tell whether it is for the NEW key loaded now".into(),
                Some(format!("zkey-cryptsetup validate {dev}")),
            ),
        },
        (true, false) => (
            Verdict::AtRisk,
            "a staged re-encipher waits in the header: complete it after the SET, or the next SET destroys the volume key".into(),
            Some(format!("zkey-cryptsetup reencipher {dev} --complete")),
        ),
        (false, true) => (
            Verdict::AtRisk,
            "a NEW master key is loaded and the volume's header copy of the key is not staged".into(),
            Some(format!("zkey-cryptsetup reencipher {dev} --staged")),
        ),
        (false, false) => (
            Verdict::Unknown,
            "the header cannot tell whether the volume key is under the CURRENT or the OLD master key without the passphrase".into(),
            Some(format!("zkey-cryptsetup validate {dev}")),
        ),
    }
}

/// With the dummy passphrase zkey holds, the volume key itself (and the key of a pending
/// stage) is judged, not just the header's tokens.
fn by_passphrase(
    r: &Reader<'_>,
    ad: &Adapters,
    e: &KeyEntry,
    device: &std::path::Path,
    dev: &str,
    new_loaded: bool,
) -> (Verdict, String, Option<String>) {
    use zkey_cryptsetup::volume::KeyState::{self, Current, New, Old, Unusable};
    let report = r
        .read_pass(&e.name)
        .map_err(|e| e.to_string())
        .and_then(|p| {
            zkey_cryptsetup::status::key_status(&ad.hsm, device, &p).map_err(|e| e.to_string())
        });
    let rep = match report {
        Ok(rep) => rep,
        Err(err) => {
            return (
                Verdict::Unknown,
                format!("the volume key cannot be read with the key's dummy passphrase: {err}"),
                Some(format!("zkey-cryptsetup validate {dev}")),
            )
        }
    };
    let staged: Option<KeyState> = rep
        .reencipher_pending
        .as_ref()
        .map(|p| p.key.as_ref().map_or(Unusable, |k| k.state.clone()));
    let stage = || Some(format!("zkey-cryptsetup reencipher {dev} --staged"));
    let complete = || Some(format!("zkey-cryptsetup reencipher {dev} --complete"));
    match (rep.volume_key.state, staged, new_loaded) {
        (New, _, _) => (
            Verdict::Staged,
            "the volume key was re-enciphered in place to the NEW master key: usable after the SET"
                .into(),
            None,
        ),
        (Current, Some(New), true) => (
            Verdict::Staged,
            "a copy of the volume key under the NEW master key is staged in the header".into(),
            None,
        ),
        (Current, _, true) => (
            Verdict::AtRisk,
            "a NEW master key is loaded and the volume's header copy of the key is not staged"
                .into(),
            stage(),
        ),
        (Current, _, false) => (
            Verdict::Safe,
            "the volume key is enciphered with the CURRENT master key".into(),
            None,
        ),
        // Staged, then the SET (maybe two): the staged key still completes, from OLD if need be.
        (Old | Unusable, Some(Current | Old), _) => (
            Verdict::AtRisk,
            "the master key was SET and the staged volume key is not completed yet".into(),
            complete(),
        ),
        (Old, _, _) => (
            Verdict::AtRisk,
            "the volume key is enciphered with the OLD master key: the next SET destroys it".into(),
            Some(format!("zkey-cryptsetup reencipher {dev} --in-place")),
        ),
        (Unusable, _, _) => {
            let t = e
                .properties
                .key_type
                .parse::<KeyType>()
                .map(KeyType::mk_type);
            let offline = match (t, rep.volume_key.mkvp.parse::<Mkvp>()) {
                (Ok(t), Ok(m)) => held_offline(ad, t, m, &e.properties.apqns),
                _ => false,
            };
            if offline {
                (
                    Verdict::Unknown,
                    "the volume key's master key is held only by APQNs that are offline now: set them online (chzcrypt -e) to check it".into(),
                    None,
                )
            } else {
                (
                    Verdict::Lost,
                    "the volume key's master key is gone".into(),
                    None,
                )
            }
        }
    }
}

/// Whether an APQN the key may use (`apqns`, or any when unbound) is not online and may hold
/// `mkvp` in a register of `t` (as the kernel, sysfs shows no registers of an offline queue): a
/// key that does not verify is then out of reach, not lost.
fn held_offline(ad: &Adapters, t: MkType, mkvp: Mkvp, apqns: &[Apqn]) -> bool {
    ad.sysfs.queues().is_ok_and(|qs| {
        qs.iter()
            .filter(|q| q.status != ap_sim::adapter::Status::Online)
            .filter(|q| apqns.is_empty() || apqns.contains(&q.apqn))
            .filter(|q| {
                matches!(
                    (&q.mode, t),
                    (Some(ap_sim::adapter::Mode::Cca), MkType::Aes | MkType::Apka)
                        | (Some(ap_sim::adapter::Mode::Ep11), MkType::Ep11)
                        | (None, _)
                )
            })
            .any(|q| match q.mkvps.as_ref().and_then(|m| m.of_type(t)) {
                // Unreadable, as the kernel shows an offline queue: it may hold the key.
                None => true,
                Some(r) => [Some(r.new), Some(r.current), r.old]
                    .into_iter()
                    .flatten()
                    .any(|x| {
                        x == Reading::Unknown || x.complete_mkvp().is_some_and(|m| m.matches(&mkvp))
                    }),
            })
    })
}

/// A plug-in key's verdict from its MKVPs and the registers of its APQNs.
fn plugin_object(
    ad: &Adapters,
    plugin: &str,
    p: &zkey_kms_protocol::PluginKeyStatus,
) -> Result<Object, ZkeyError> {
    let (mut cur, mut old, mut new) = (Vec::new(), Vec::new(), Vec::new());
    for &a in &p.apqns {
        let Some(q) = ad.sysfs.queue(a)? else {
            continue;
        };
        if q.status != ap_sim::adapter::Status::Online {
            continue;
        }
        if let Some(r) = q.mkvps.as_ref().and_then(|m| m.of_type(p.mktype)) {
            cur.extend(r.current.complete_mkvp());
            old.extend(r.old.and_then(|o| o.complete_mkvp()));
            new.extend(r.new.complete_mkvp());
        }
    }
    let is = |set: &[Mkvp], m: Mkvp| !set.is_empty() && set.iter().all(|x| x.matches(&m));
    let any = |set: &[Mkvp], m: Mkvp| set.iter().any(|x| x.matches(&m));
    let staged_new = p.staged_mkvp.is_some_and(|s| is(&new, s));
    let t = p.mktype.to_string().to_uppercase();
    let (verdict, reason, action) = if is(&cur, p.mkvp) {
        if new.is_empty() {
            (
                Verdict::Safe,
                format!(
                    "enciphered with the CURRENT {t} master key; no NEW {t} master key is loaded"
                ),
                None,
            )
        } else if staged_new {
            (
                Verdict::Staged,
                format!("a copy under the NEW {t} master key is staged"),
                None,
            )
        } else {
            (
                Verdict::AtRisk,
                format!("a NEW {t} master key is loaded and the key is not staged"),
                Some("zkey kms reencipher --to-new --staged".into()),
            )
        }
    } else if any(&old, p.mkvp) {
        let complete_pending = p.staged_mkvp.is_some_and(|s| is(&cur, s));
        (
            Verdict::AtRisk,
            if complete_pending {
                format!("the {t} master key was SET and the staged copy is not completed yet")
            } else {
                format!("enciphered with the OLD {t} master key: the next SET destroys it")
            },
            Some(if complete_pending {
                "zkey kms reencipher --complete".into()
            } else {
                "zkey kms reencipher --from-old --in-place".into()
            }),
        )
    } else if any(&new, p.mkvp) {
        (
            Verdict::Staged,
            format!("re-enciphered in place to the NEW {t} master key: usable after the SET"),
            None,
        )
    } else if cur.is_empty() {
        (
            Verdict::Unknown,
            format!(
                "none of its APQNs ({}) is online with a {t} master key",
                ap_sim::apqn::format_list(&p.apqns)
            ),
            None,
        )
    } else {
        (
            Verdict::Lost,
            format!("its {t} master key ({}) is in no register any more", p.mkvp),
            None,
        )
    };
    Ok(Object {
        kind: Kind::PluginKey,
        name: format!("{plugin} {}", p.key),
        key: None,
        mktype: Some(p.mktype),
        verdict,
        reason,
        action,
    })
}

/// What the bound KMS plug-in reports about its own keys (nothing when the repository is not
/// bound). A plug-in that cannot be asked makes its keys `unknown`, not the command fail.
pub fn plugin_facts(r: &Reader<'_>) -> Result<PluginKeys, ZkeyError> {
    let Some(conf) = crate::kms::KmsConf::load(r)? else {
        return Ok(PluginKeys::Unbound);
    };
    Ok(match crate::kms::key_status(r) {
        Ok((keys, _)) => PluginKeys::Known {
            plugin: conf.kms,
            keys,
        },
        Err(e) => PluginKeys::Unreadable {
            plugin: conf.kms,
            error: e.to_string(),
        },
    })
}
