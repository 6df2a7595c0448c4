//! Master key change operations: one operation, with an id and durable state, that stages
//! every object a master key change touches before the SET and completes all of them after it.
//!
//! Modelled on openCryptoki's concurrent master key change (pkcshsm_mk_change) and ICSF's
//! coordinated change: `plan` lists what the change touches and checks the adapters before
//! anything changes; `start` stages every affected key (the operation moves INITIAL ->
//! REENCIPHERING -> REENCIPHERED) and ends with "safe to SET" or the exact list of what is not;
//! after the security officer's SET, `finalize` (FINALIZING) completes every key, keeps the
//! previous secure keys as a backup, verifies everything under the new CURRENT key, and the
//! operation is DONE; `cancel` (CANCELING) removes the staged copies while no APQN has the new
//! key set. A step that fails leaves the operation in ERROR with the reason; every step can be
//! run again after a crash and converges, because each per-key action is idempotent and the
//! state is written atomically after each change of state.
//!
//! Two operations conflict only if they share an APQN and a master key type. Keys generated or
//! imported while an operation is open are staged by [`stage_new_key`], so none is left behind.
//!
//! Files: `<repo>/mkchange/<id>.json` (the operation), `<repo>/mkchange/<id>/<name>.skey`
//! (backups of the previous secure keys, kept until the next change is finalized).

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use ap_sim::apqn::Apqn;
use ap_sim::durable;
use ap_sim::hsm::{HsmError, Register};
use ap_sim::registers::MkType;
use ap_sim::sysfs::Reading;
use ap_sim::token::{KeyType, SecureKey};
use ap_sim::Mkvp;

use crate::adapters::Adapters;
use crate::error::ZkeyError;
use crate::reencipher::{self, Mode, Outcome, Way};
use crate::repository::{KeyEntry, Writer};
use crate::volume::VolumeType;

/// The operation's life, as openCryptoki names it.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum State {
    Initial,
    Reenciphering,
    Reenciphered,
    Finalizing,
    Canceling,
    Error,
    Done,
    Canceled,
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&format!("{self:?}").to_uppercase())
    }
}

/// What a step of the operation does to its state.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// `start` (or its re-run) begins staging.
    Stage,
    /// Staging ended; `failed`: something could not be staged.
    Staged { failed: bool },
    /// `finalize` (or its re-run) begins completing, after the SET.
    Finalize,
    /// Completing ended.
    Finalized { failed: bool },
    /// `cancel` begins removing the staged copies, before any SET.
    Cancel,
    /// Cancelling ended.
    Canceled { failed: bool },
}

impl State {
    /// Still holding its APQNs and master key types.
    pub fn is_open(self) -> bool {
        !matches!(self, State::Done | State::Canceled)
    }

    /// The one transition function of the operation: the state after `step`, or why `step`
    /// is not allowed in this state. Every change of state goes through it.
    pub fn next(self, step: Step) -> Result<State, String> {
        use State::*;
        match (self, step) {
            (Initial | Reenciphering | Reenciphered | Error, Step::Stage) => Ok(Reenciphering),
            (Reenciphering, Step::Staged { failed }) => {
                Ok(if failed { Error } else { Reenciphered })
            }
            (Reenciphered | Finalizing | Error, Step::Finalize) => Ok(Finalizing),
            (Finalizing, Step::Finalized { failed }) => Ok(if failed { Error } else { Done }),
            (s, Step::Cancel) if s.is_open() => Ok(Canceling),
            (Canceling, Step::Canceled { failed }) => Ok(if failed { Error } else { Canceled }),
            (s, Step::Stage) => Err(format!(
                "it is {s}: only an operation that is not finalized or cancelled can stage"
            )),
            (s, Step::Finalize) => Err(format!(
                "it is {s}: only a staged (REENCIPHERED) operation can be finalized"
            )),
            (s, Step::Cancel) => Err(format!("it is already {s}")),
            (s, step) => Err(format!("it is {s}: {step:?} does not follow")),
        }
    }

    /// Keys made while the operation is in this state are staged into it.
    pub fn takes_new_keys(self) -> bool {
        matches!(
            self,
            State::Reenciphering | State::Reenciphered | State::Error
        )
    }
}

/// Moves `op` on by `step`, or says why it cannot.
fn advance(op: &mut Operation, step: Step) -> Result<(), ZkeyError> {
    op.state = op
        .state
        .next(step)
        .map_err(|why| ZkeyError::Invalid(format!("operation {}: {why}", op.id)))?;
    Ok(())
}

/// One master key type being changed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TypeChange {
    pub mktype: MkType,
    /// CURRENT when the operation started.
    pub old_mkvp: Option<Mkvp>,
    /// The new key the security officer announced (or the NEW register held at start).
    pub new_mkvp: Option<Mkvp>,
}

/// Where one key stands within the operation.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ItemState {
    Pending,
    Staged,
    Completed,
    Failed,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeyItem {
    pub name: crate::KeyName,
    pub mktype: MkType,
    pub state: ItemState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A LUKS2 volume of an affected key: its header holds its own copy of the secure key.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VolumeItem {
    pub key: crate::KeyName,
    /// `device:dm-name`.
    pub volume: String,
    pub state: ItemState,
    /// zkey has the key's dummy passphrase and can open the header itself; otherwise the
    /// administrator runs `zkey-cryptsetup reencipher` (the item stays `pending`).
    pub passphrase_known: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A persisted operation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Operation {
    pub id: String,
    pub state: State,
    pub created: String,
    pub updated: String,
    pub apqns: Vec<Apqn>,
    pub types: Vec<TypeChange>,
    pub keys: Vec<KeyItem>,
    #[serde(default)]
    pub volumes: Vec<VolumeItem>,
    /// The KMS plug-in's own keys under a changed master key type.
    #[serde(default)]
    pub plugin_keys: Vec<PluginItem>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A KMS plug-in key (identity key under APKA, wrapping key under AES).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PluginItem {
    pub mktype: MkType,
    pub key: String,
    pub state: ItemState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Operation {
    pub fn mktypes(&self) -> impl Iterator<Item = MkType> + '_ {
        self.types.iter().map(|t| t.mktype)
    }

    fn conflicts_with(&self, apqns: &[Apqn], types: &[MkType]) -> bool {
        self.state.is_open()
            && self.apqns.iter().any(|a| apqns.contains(a))
            && self.mktypes().any(|t| types.contains(&t))
    }

    /// Keys not staged (or failed): what makes the SET unsafe.
    pub fn not_staged(&self) -> Vec<&KeyItem> {
        self.keys
            .iter()
            .filter(|k| !matches!(k.state, ItemState::Staged | ItemState::Completed))
            .collect()
    }
}

/// What a change is asked for.
#[derive(Clone, Debug)]
pub struct Request {
    pub apqns: Vec<Apqn>,
    pub types: Vec<MkType>,
    /// The new MKVPs the security officer announced, per type.
    pub announced: Vec<(MkType, Mkvp)>,
}

/// A preflight check and its verdict.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub check: String,
    pub ok: bool,
    pub detail: String,
}

/// What `plan` reports.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Plan {
    pub apqns: Vec<Apqn>,
    pub types: Vec<TypeChange>,
    pub keys: Vec<PlannedKey>,
    pub checks: Vec<Check>,
    /// The plug-in's own keys (identity, wrapping key) are listed here once a KMS is bound.
    pub plugin_keys: Vec<PlannedPluginKey>,
}

impl Plan {
    pub fn ready(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }
}

/// A plug-in key the change touches: the identity key under APKA, the wrapping key under AES.
#[derive(Clone, Debug, Serialize)]
pub struct PlannedPluginKey {
    pub key: String,
    pub mktype: MkType,
}

#[derive(Clone, Debug, Serialize)]
pub struct PlannedKey {
    pub name: crate::KeyName,
    pub mktype: MkType,
    pub register: Option<Register>,
    /// Lost at the SET unless re-enciphered first (e.g. under OLD, or not stageable).
    pub at_risk: Option<String>,
    pub luks2_volumes: Vec<VolumePlan>,
}

#[derive(Clone, Debug, Serialize)]
pub struct VolumePlan {
    pub volume: String,
    /// The device exists.
    pub reachable: bool,
    /// The key has a dummy passphrase file, so the header can be opened without asking.
    pub passphrase_known: bool,
}

fn dir(w: &Writer<'_>) -> PathBuf {
    w.repository().path().join("mkchange")
}

fn op_path(w: &Writer<'_>, id: &str) -> PathBuf {
    dir(w).join(format!("{id}.json"))
}

fn io(action: &'static str, path: PathBuf) -> impl FnOnce(std::io::Error) -> ZkeyError {
    move |source| ZkeyError::Io {
        action,
        path,
        source,
    }
}

/// Every operation of the repository, oldest first.
pub fn list(w: &crate::repository::Reader<'_>) -> Result<Vec<Operation>, ZkeyError> {
    let d = w.repository().path().join("mkchange");
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(&d) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io("reading", d)(e)),
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "json") {
            let text = std::fs::read(&p).map_err(io("reading", p.clone()))?;
            let op: Operation = serde_json::from_slice(&text).map_err(|e| {
                ZkeyError::Invalid(format!(
                    "{} is damaged: {e}; restore it from a backup",
                    p.display()
                ))
            })?;
            out.push(op);
        }
    }
    out.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
    Ok(out)
}

pub fn load(r: &crate::repository::Reader<'_>, id: &str) -> Result<Operation, ZkeyError> {
    list(r)?.into_iter().find(|o| o.id == id).ok_or_else(|| {
        ZkeyError::Invalid(format!(
            "no master key change operation '{id}': 'zkey mkchange list' shows them"
        ))
    })
}

fn save(w: &Writer<'_>, op: &mut Operation) -> Result<(), ZkeyError> {
    op.updated = ap_sim::audit::utc_now();
    let d = dir(w);
    if !d.exists() {
        std::fs::create_dir_all(&d).map_err(io("creating", d.clone()))?;
        durable::sync_dir(w.repository().path()).map_err(io("syncing", d.clone()))?;
    }
    let data = serde_json::to_vec_pretty(op).expect("an operation serialises");
    let p = op_path(w, &op.id);
    durable::write_atomic(&p, &data, w.repository().file_mode()).map_err(io("writing", p))
}

/// The NEW and CURRENT registers of `mktype` on an APQN, as sysfs shows them.
fn registers(
    ad: &Adapters,
    apqn: Apqn,
    mktype: MkType,
) -> Result<(Option<Reading>, Option<Reading>), ZkeyError> {
    let r = ad
        .sysfs
        .queue(apqn)?
        .and_then(|q| q.mkvps)
        .and_then(|m| m.of_type(mktype));
    Ok((r.map(|r| r.new), r.map(|r| r.current)))
}

fn complete_pattern(r: Option<Reading>) -> Option<Mkvp> {
    r?.complete_mkvp()
}

fn key_mktype(key_type: &str) -> Option<MkType> {
    key_type.parse::<KeyType>().ok().map(KeyType::mk_type)
}

/// Whether a repository key belongs to the change: its master key type is changed and it is
/// bound to one of the APQNs (or unbound, with the CURRENT key of those APQNs).
fn affected(e: &KeyEntry, req_apqns: &[Apqn], types: &[TypeChange]) -> Option<MkType> {
    let t = key_mktype(&e.properties.key_type)?;
    let tc = types.iter().find(|c| c.mktype == t)?;
    let bound = e.properties.apqns.iter().any(|a| req_apqns.contains(a));
    let unbound_same_key = e.properties.apqns.is_empty()
        && SecureKey::parse(&e.secure_key)
            .is_ok_and(|k| tc.old_mkvp.is_some_and(|m| k.mkvp().matches(&m)));
    (bound || unbound_same_key).then_some(t)
}

/// Reads the registers and checks the adapters and keys for a change, changing nothing.
pub fn plan(w: &Writer<'_>, ad: &Adapters, req: &Request) -> Result<Plan, ZkeyError> {
    plan_besides(w, ad, req, None)
}

/// [`plan`], not counting the operation `resuming` as a conflict.
fn plan_besides(
    w: &Writer<'_>,
    ad: &Adapters,
    req: &Request,
    resuming: Option<&str>,
) -> Result<Plan, ZkeyError> {
    if req.apqns.is_empty() || req.types.is_empty() {
        return Err(ZkeyError::Invalid("name the APQNs (--apqns) and the master key types (--mktype aes,apka,ep11) of the change".into()));
    }
    let mut checks = Vec::new();
    let mut types = Vec::new();
    for &t in &req.types {
        let mut news = BTreeSet::new();
        let mut curs = BTreeSet::new();
        let mut missing = Vec::new();
        for &a in &req.apqns {
            let (new, cur) = registers(ad, a, t)?;
            if cur.is_none() {
                missing.push(a);
            }
            match complete_pattern(new) {
                Some(m) => {
                    news.insert(m.to_string());
                }
                None => {
                    news.insert(String::new());
                }
            }
            if let Some(m) = complete_pattern(cur) {
                curs.insert(m.to_string());
            }
        }
        let new_mkvp = (news.len() == 1)
            .then(|| news.iter().next().and_then(|s| s.parse::<Mkvp>().ok()))
            .flatten();
        let old_mkvp = (curs.len() == 1)
            .then(|| curs.iter().next().and_then(|s| s.parse::<Mkvp>().ok()))
            .flatten();
        let list = ap_sim::apqn::format_list;
        checks.push(Check {
            check: format!("{t}: APQNs hold {t} master keys"),
            ok: missing.is_empty(),
            detail: if missing.is_empty() {
                format!("all of {}", list(&req.apqns))
            } else {
                format!(
                    "{} cannot hold or show a {t} master key (offline, wrong type, or missing)",
                    list(&missing)
                )
            },
        });
        checks.push(Check {
            check: format!("{t}: CURRENT master keys agree"),
            ok: curs.len() == 1,
            detail: if curs.len() == 1 {
                format!("CURRENT {}", curs.iter().next().unwrap())
            } else {
                format!("{} different CURRENT keys", curs.len())
            },
        });
        let new_ok = new_mkvp.is_some();
        checks.push(Check {
            check: format!("{t}: NEW master key loaded, complete and identical on every APQN"),
            ok: new_ok,
            detail: if new_ok {
                format!("NEW {}", new_mkvp.unwrap())
            } else if news.contains("") && news.len() > 1 {
                "NEW MASTER KEYS INCORRECT: the NEW key is loaded on some APQNs only: the security officer must load it on all".into()
            } else if news.len() > 1 {
                "NEW MASTER KEYS INCORRECT: different NEW keys are loaded: the security officer must load the same key on all APQNs".into()
            } else {
                "no NEW master key is loaded: the security officer must load it with the TKE first".into()
            },
        });
        if let Some((_, announced)) = req.announced.iter().find(|(at, _)| *at == t) {
            let ok = new_mkvp.is_some_and(|m| m.matches(announced));
            checks.push(Check {
                check: format!("{t}: NEW master key is the one announced"),
                ok,
                detail: if ok { format!("{announced}") } else { format!("announced {announced}, loaded {}: a different key was loaded than announced", new_mkvp.map(|m| m.to_string()).unwrap_or_else(|| "none".into())) },
            });
        }
        if old_mkvp.is_some()
            && new_mkvp.is_none()
            && req
                .announced
                .iter()
                .any(|(at, m)| *at == t && old_mkvp.is_some_and(|o| o.matches(m)))
        {
            checks.push(Check {
                check: format!("{t}: SET not yet done"),
                ok: false,
                detail: "the announced key is already CURRENT: the SET was done before the keys were staged; re-encipher them from OLD with 'zkey reencipher --from-old'".into(),
            });
        }
        types.push(TypeChange {
            mktype: t,
            old_mkvp,
            new_mkvp: req
                .announced
                .iter()
                .find(|(at, _)| *at == t)
                .map(|(_, m)| *m)
                .or(new_mkvp),
        });
    }

    let ops = list(w)?;
    let conflicting: Vec<&str> = ops
        .iter()
        .filter(|o| o.conflicts_with(&req.apqns, &req.types) && Some(o.id.as_str()) != resuming)
        .map(|o| o.id.as_str())
        .collect();
    checks.push(Check {
        check: "no conflicting operation".into(),
        ok: conflicting.is_empty(),
        detail: if conflicting.is_empty() {
            "none shares an APQN and a master key type".into()
        } else {
            format!(
                "operation {} shares APQNs and master key types: finalize or cancel it first",
                conflicting.join(", ")
            )
        },
    });

    let mut keys = Vec::new();
    let mut invalid = Vec::new();
    for e in w.entries()? {
        let e = match e {
            Ok(e) => e,
            Err(d) => {
                invalid.push(format!("{} (damaged)", d.name));
                continue;
            }
        };
        let Some(t) = affected(&e, &req.apqns, &types) else {
            continue;
        };
        let key = SecureKey::parse(&e.secure_key);
        let within = (!e.properties.apqns.is_empty()).then_some(e.properties.apqns.as_slice());
        let register = key
            .as_ref()
            .ok()
            .and_then(|k| ad.hsm.verify(k, within).ok())
            .map(|v| v.register);
        let at_risk = match register {
            Some(Register::Current) => None,
            Some(Register::Old) => Some("enciphered with the OLD master key: the SET destroys it; re-encipher it with 'zkey reencipher --from-old' first".to_string()),
            _ => Some("not usable now: it cannot be staged".to_string()),
        };
        if at_risk.is_some() {
            invalid.push(e.name.to_string());
        }
        let luks2_volumes = if e.properties.volume_type == VolumeType::Luks2 {
            e.properties
                .volumes
                .iter()
                .map(|v| VolumePlan {
                    volume: v.to_string(),
                    reachable: crate::crypttab::device_path(v.device()).exists(),
                    passphrase_known: e.has_pass,
                })
                .collect()
        } else {
            Vec::new()
        };
        keys.push(PlannedKey {
            name: e.name.clone(),
            mktype: t,
            register,
            at_risk,
            luks2_volumes,
        });
    }
    checks.push(Check {
        check: "every affected key is valid under CURRENT (key check)".into(),
        ok: invalid.is_empty(),
        detail: if invalid.is_empty() {
            format!("{} keys checked", keys.len())
        } else {
            format!("not ready: {}", invalid.join(", "))
        },
    });
    let plugin_keys = plugin_keys_of(w, req)?;
    Ok(Plan {
        apqns: req.apqns.clone(),
        types,
        keys,
        checks,
        plugin_keys,
    })
}

fn new_id() -> String {
    let t = ap_sim::audit::utc_now();
    let digits: String = t.chars().filter(char::is_ascii_digit).collect();
    let mut r = [0u8; 2];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut r);
    format!("{}-{}", &digits[..14], hex::encode(r))
}

/// Starts (or resumes) an operation: stages every affected key. Refuses when the plan is not
/// ready, unless `resume` names an operation that is already under way.
pub fn start(
    w: &Writer<'_>,
    ad: &Adapters,
    req: &Request,
    dry_run: bool,
) -> Result<(Operation, Plan), ZkeyError> {
    let (op, plan) = start_steps(w, ad, req, dry_run)?;
    if !dry_run {
        audit(w, ad, &op, "start")?;
    }
    Ok((op, plan))
}

fn start_steps(
    w: &Writer<'_>,
    ad: &Adapters,
    req: &Request,
    dry_run: bool,
) -> Result<(Operation, Plan), ZkeyError> {
    // An operation for exactly these APQNs and types that did not get to the end is resumed.
    // An operation for exactly these APQNs and types that is not finalized yet is resumed: a
    // re-run after a crash (or after fixing a failed key) stages what is not staged yet.
    let resumable = list(w)?.into_iter().find(|o| {
        o.state.next(Step::Stage).is_ok()
            && o.apqns == req.apqns
            && o.mktypes().collect::<Vec<_>>() == req.types
    });
    let mut p = plan_besides(w, ad, req, resumable.as_ref().map(|o| o.id.as_str()))?;
    if !p.ready() {
        let failed: Vec<String> = p
            .checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| format!("- {}: {}", c.check, c.detail))
            .collect();
        // The same cross-check table every staging command prints, for the types whose NEW
        // registers are not ready.
        let mut tables = String::new();
        for &t in &req.types {
            if let Err(nr) = ap_sim::crosscheck::require_new(&ad.sysfs, t, &req.apqns)? {
                tables.push_str(&format!("\n{t}: {nr}"));
            }
        }
        return Err(ZkeyError::Invalid(format!(
            "the master key change cannot start; nothing was changed:\n{}{tables}",
            failed.join("\n")
        )));
    }
    let now = ap_sim::audit::utc_now();
    let mut op = resumable.unwrap_or_else(|| Operation {
        id: new_id(),
        state: State::Initial,
        created: now.clone(),
        updated: now,
        apqns: req.apqns.clone(),
        types: p.types.clone(),
        keys: Vec::new(),
        volumes: Vec::new(),
        plugin_keys: Vec::new(),
        error: None,
    });
    for k in &p.plugin_keys {
        if !op.plugin_keys.iter().any(|i| i.key == k.key) {
            op.plugin_keys.push(PluginItem {
                mktype: k.mktype,
                key: k.key.clone(),
                state: ItemState::Pending,
                error: None,
            });
        }
    }
    for k in &p.keys {
        for v in &k.luks2_volumes {
            if !op.volumes.iter().any(|i| i.volume == v.volume) {
                op.volumes.push(VolumeItem {
                    key: k.name.clone(),
                    volume: v.volume.clone(),
                    state: ItemState::Pending,
                    passphrase_known: v.passphrase_known,
                    error: None,
                });
            }
        }
        if !op.keys.iter().any(|i| i.name == k.name) {
            op.keys.push(KeyItem {
                name: k.name.clone(),
                mktype: k.mktype,
                state: ItemState::Pending,
                error: None,
            });
        }
    }
    if dry_run {
        return Ok((op, std::mem::take(&mut p)));
    }
    save(w, &mut op)?;
    advance(&mut op, Step::Stage)?;
    save(w, &mut op)?;
    for i in 0..op.keys.len() {
        if op.keys[i].state == ItemState::Staged {
            continue;
        }
        stage_item(w, ad, &mut op.keys[i]);
        save(w, &mut op)?;
    }
    volumes_and_plugin_keys(w, ad, &mut op, false)?;
    let failed = op.plugin_keys.iter().any(|p| p.state == ItemState::Failed)
        || !op.not_staged().is_empty()
        || op.volumes.iter().any(|v| v.state == ItemState::Failed);
    advance(&mut op, Step::Staged { failed })?;
    op.error = failed.then(|| "some keys or volumes could not be staged: see their errors, fix them and run 'zkey mkchange start' again".into());
    save(w, &mut op)?;
    Ok((op, p))
}

fn stage_item(w: &Writer<'_>, ad: &Adapters, item: &mut KeyItem) {
    let res = w.entry(&item.name).map_err(ZkeyError::from).and_then(|e| {
        reencipher::reencipher_key(
            w,
            ad,
            &e,
            &reencipher::Request {
                way: Some(Way::ToNew),
                mode: Some(Mode::Staged),
            },
        )
    });
    match res {
        Ok(Outcome::Staged { .. }) => {
            item.state = ItemState::Staged;
            item.error = None;
        }
        Ok(Outcome::Skipped { reason }) | Ok(Outcome::Failed { error: reason }) => {
            item.state = ItemState::Failed;
            item.error = Some(reason);
        }
        Ok(_) => item.state = ItemState::Staged,
        Err(e) => {
            item.state = ItemState::Failed;
            item.error = Some(e.to_string());
        }
    }
}

/// Stages a key made while an operation is open on its APQNs and master key type, and adds it
/// to that operation. Returns the operation's id, if any.
pub fn stage_new_key(
    w: &Writer<'_>,
    ad: &Adapters,
    e: &KeyEntry,
) -> Result<Option<String>, ZkeyError> {
    for mut op in list(w)? {
        if !op.state.takes_new_keys() {
            continue;
        }
        let Some(t) = affected(e, &op.apqns, &op.types) else {
            continue;
        };
        let mut item = KeyItem {
            name: e.name.clone(),
            mktype: t,
            state: ItemState::Pending,
            error: None,
        };
        stage_item(w, ad, &mut item);
        op.keys.retain(|k| k.name != item.name);
        op.keys.push(item);
        if e.properties.volume_type == VolumeType::Luks2 {
            for v in &e.properties.volumes {
                let mut vi = VolumeItem {
                    key: e.name.clone(),
                    volume: v.to_string(),
                    state: ItemState::Pending,
                    passphrase_known: e.has_pass,
                    error: None,
                };
                if vi.passphrase_known {
                    volume_step(w, ad, &mut vi, Mode::Staged);
                }
                op.volumes.retain(|x| x.volume != vi.volume);
                op.volumes.push(vi);
            }
        }
        save(w, &mut op)?;
        return Ok(Some(op.id));
    }
    Ok(None)
}

/// The verdicts of everything the operation touches, read afresh (the operation's own item
/// states say what zkey did; this says where each object stands, also for what the
/// administrator staged by hand).
pub fn readiness(
    r: &crate::repository::Reader<'_>,
    ad: &Adapters,
    op: &Operation,
) -> Result<crate::readiness::Readiness, ZkeyError> {
    let scope = crate::readiness::Scope {
        change: Some((op.apqns.clone(), op.mktypes().collect())),
        ..Default::default()
    };
    let plugin = crate::readiness::plugin_facts(r)?;
    crate::readiness::assess(r, ad, &scope, &plugin)
}

/// The audit record of a step of the operation (start, finalize, cancel), written by the step.
fn audit(w: &Writer<'_>, ad: &Adapters, op: &Operation, step: &str) -> Result<(), ZkeyError> {
    let t = op.types.first();
    crate::audit::record_done(
        w,
        ad,
        ap_sim::audit::Event {
            event: format!("mkchange-{step}"),
            command: format!("zkey mkchange {step}"),
            apqns: op.apqns.clone(),
            mktype: t.map(|t| t.mktype),
            old_mkvp: t.and_then(|t| t.old_mkvp),
            new_mkvp: t.and_then(|t| t.new_mkvp),
            keys: op.keys.iter().map(|k| k.name.to_string()).collect(),
            result: match op.state {
                State::Error => format!(
                    "failed: {}",
                    op.error.as_deref().unwrap_or("see the operation")
                ),
                s => format!("ok: {s:?}").to_lowercase(),
            },
            details: Some(format!("operation {}", op.id)),
        },
    )
}

/// Where the SET stands on the operation's APQNs, per type.
#[derive(Clone, Debug, Serialize)]
pub struct SetStatus {
    pub mktype: MkType,
    /// APQNs whose CURRENT is the new key.
    pub set_on: Vec<Apqn>,
    /// APQNs whose CURRENT is still the old key (or another one).
    pub not_set_on: Vec<Apqn>,
    /// APQNs whose CURRENT is neither the old nor the announced key.
    pub unexpected: Vec<Apqn>,
}

pub fn set_status(ad: &Adapters, op: &Operation) -> Result<Vec<SetStatus>, ZkeyError> {
    let mut out = Vec::new();
    for t in &op.types {
        let mut s = SetStatus {
            mktype: t.mktype,
            set_on: vec![],
            not_set_on: vec![],
            unexpected: vec![],
        };
        for &a in &op.apqns {
            let cur = complete_pattern(registers(ad, a, t.mktype)?.1);
            match cur {
                Some(c) if t.new_mkvp.is_some_and(|n| n.matches(&c)) => s.set_on.push(a),
                Some(c) if t.old_mkvp.is_some_and(|o| o.matches(&c)) => s.not_set_on.push(a),
                _ => s.unexpected.push(a),
            }
        }
        out.push(s);
    }
    Ok(out)
}

/// After the SET: completes every key, keeping the previous secure keys as a backup.
pub fn finalize(
    w: &Writer<'_>,
    ad: &Adapters,
    id: &str,
    dry_run: bool,
) -> Result<Operation, ZkeyError> {
    let op = finalize_steps(w, ad, id, dry_run)?;
    if !dry_run {
        audit(w, ad, &op, "finalize")?;
    }
    Ok(op)
}

fn finalize_steps(
    w: &Writer<'_>,
    ad: &Adapters,
    id: &str,
    dry_run: bool,
) -> Result<Operation, ZkeyError> {
    let mut op = load(w, id)?;
    // A re-run after a crash that came after the last step has nothing left to do.
    if op.state == State::Done {
        return Ok(op);
    }
    if let Err(why) = op.state.next(Step::Finalize) {
        return Err(ZkeyError::Invalid(format!("operation {id}: {why}")));
    }
    let list = ap_sim::apqn::format_list;
    for s in set_status(ad, &op)? {
        if !s.unexpected.is_empty() {
            return Err(ZkeyError::Invalid(format!(
                "{}: the CURRENT master key of {} is neither the old nor the announced new key: a different key was set; nothing was changed",
                s.mktype,
                list(&s.unexpected)
            )));
        }
        if !s.not_set_on.is_empty() {
            let what = if s.set_on.is_empty() {
                "the SET has not been done yet".to_string()
            } else {
                format!(
                    "the SET was done on {} but not on {}",
                    list(&s.set_on),
                    list(&s.not_set_on)
                )
            };
            return Err(ZkeyError::Invalid(format!(
                "{}: {what}: the security officer must SET the new {} master key on {} first; nothing was changed",
                s.mktype,
                s.mktype,
                list(&s.not_set_on)
            )));
        }
    }
    if dry_run {
        return Ok(op);
    }
    advance(&mut op, Step::Finalize)?;
    save(w, &mut op)?;
    let backup_dir = dir(w).join(&op.id);
    for i in 0..op.keys.len() {
        if op.keys[i].state == ItemState::Completed {
            continue;
        }
        let res = finalize_item(w, ad, &backup_dir, &op.keys[i]);
        let item = &mut op.keys[i];
        match res {
            Ok(()) => {
                item.state = ItemState::Completed;
                item.error = None;
            }
            Err(e) => {
                item.state = ItemState::Failed;
                item.error = Some(e.to_string());
            }
        }
        save(w, &mut op)?;
    }
    volumes_and_plugin_keys(w, ad, &mut op, true)?;
    let mut failed: Vec<String> = op
        .keys
        .iter()
        .filter(|k| k.state != ItemState::Completed)
        .map(|k| k.name.to_string())
        .collect();
    failed.extend(
        op.plugin_keys
            .iter()
            .filter(|p| p.state != ItemState::Completed)
            .map(|p| p.key.clone()),
    );
    failed.extend(
        op.volumes
            .iter()
            .filter(|v| v.passphrase_known && v.state != ItemState::Completed)
            .map(|v| v.volume.clone()),
    );
    advance(
        &mut op,
        Step::Finalized {
            failed: !failed.is_empty(),
        },
    )?;
    if failed.is_empty() {
        op.error = None;
        drop_older_backups(w, &op.id)?;
    } else {
        op.error = Some(format!(
            "not completed: {}; fix them and run 'zkey mkchange finalize -i {}' again",
            failed.join(", "),
            op.id
        ));
    }
    save(w, &mut op)?;
    Ok(op)
}

fn finalize_item(
    w: &Writer<'_>,
    ad: &Adapters,
    backup_dir: &std::path::Path,
    item: &KeyItem,
) -> Result<(), ZkeyError> {
    let name = &item.name;
    let e = w.entry(name)?;
    // Keep the previous secure key (still valid under OLD for CCA) until the next change.
    if e.staged.is_some() {
        std::fs::create_dir_all(backup_dir).map_err(io("creating", backup_dir.to_path_buf()))?;
        let b = backup_dir.join(format!("{}.skey", item.name));
        if !b.exists() {
            durable::write_atomic(&b, &e.secure_key, w.repository().file_mode())
                .map_err(io("writing", b))?;
        }
    }
    let out = match e.staged {
        Some(_) => reencipher::reencipher_key(
            w,
            ad,
            &e,
            &reencipher::Request {
                way: None,
                mode: Some(Mode::Complete),
            },
        )?,
        // Not staged (e.g. made while the SET happened): a CCA key under OLD goes in place.
        None => reencipher::reencipher_key(
            w,
            ad,
            &e,
            &reencipher::Request {
                way: None,
                mode: None,
            },
        )?,
    };
    if let Outcome::Failed { error } = out {
        return Err(ZkeyError::Invalid(error));
    }
    // Verify under the new CURRENT key.
    let e = w.entry(name)?;
    let key = SecureKey::parse(&e.secure_key)?;
    let within = (!e.properties.apqns.is_empty()).then_some(e.properties.apqns.as_slice());
    match ad.hsm.verify(&key, within) {
        Ok(v) if v.register == Register::Current => Ok(()),
        Ok(_) => Err(ZkeyError::Invalid("the key is still under the OLD master key".into())),
        Err(HsmError::Unusable { .. }) => Err(ZkeyError::Invalid("the key is unusable: it was not staged before the SET; restore it from a backup or a KMS".into())),
        Err(e) => Err(e.into()),
    }
}

/// Backups are kept until the next change is finalized: then the older ones go.
fn drop_older_backups(w: &Writer<'_>, keep: &str) -> Result<(), ZkeyError> {
    for op in list(w)? {
        let d = dir(w).join(&op.id);
        if op.id != keep && !op.state.is_open() && d.is_dir() {
            std::fs::remove_dir_all(&d).map_err(io("removing", d))?;
        }
    }
    Ok(())
}

/// Cancels an operation while no APQN has the new key set: removes the staged copies.
pub fn cancel(
    w: &Writer<'_>,
    ad: &Adapters,
    id: &str,
    dry_run: bool,
) -> Result<Operation, ZkeyError> {
    let op = cancel_steps(w, ad, id, dry_run)?;
    if !dry_run {
        audit(w, ad, &op, "cancel")?;
    }
    Ok(op)
}

fn cancel_steps(
    w: &Writer<'_>,
    ad: &Adapters,
    id: &str,
    dry_run: bool,
) -> Result<Operation, ZkeyError> {
    let mut op = load(w, id)?;
    // A re-run after a crash that came after the last step has nothing left to do.
    if op.state == State::Canceled {
        return Ok(op);
    }
    if let Err(why) = op.state.next(Step::Cancel) {
        return Err(ZkeyError::Invalid(format!("operation {id}: {why}")));
    }
    for s in set_status(ad, &op)? {
        if !s.set_on.is_empty() {
            return Err(ZkeyError::Invalid(format!(
                "{}: the new master key is already set on {}: the change cannot be cancelled any more; finalize it with 'zkey mkchange finalize -i {id}'",
                s.mktype,
                ap_sim::apqn::format_list(&s.set_on)
            )));
        }
    }
    if dry_run {
        return Ok(op);
    }
    advance(&mut op, Step::Cancel)?;
    save(w, &mut op)?;
    for k in op.keys.iter_mut() {
        match w.remove_staged(&k.name) {
            Ok(_) | Err(crate::RepoError::KeyNotFound { .. }) => k.state = ItemState::Pending,
            Err(e) => {
                k.state = ItemState::Failed;
                k.error = Some(e.to_string());
            }
        }
    }
    for v in op
        .volumes
        .iter_mut()
        .filter(|v| v.state == ItemState::Staged)
    {
        // The volume's staged slot is harmless while its token is pending; the next staged
        // re-encipher of the volume replaces it.
        v.state = ItemState::Pending;
        v.error = Some(format!("its staged keyslot is left pending: the next 'zkey-cryptsetup reencipher {} --staged' replaces it", device_of(&v.volume)));
    }
    let failed = !op.keys.iter().all(|k| k.state == ItemState::Pending);
    advance(&mut op, Step::Canceled { failed })?;
    save(w, &mut op)?;
    Ok(op)
}

/// Stages (or completes) every volume zkey can open and every plug-in key not done yet,
/// saving the operation after each, so that a re-run continues where a crash stopped.
fn volumes_and_plugin_keys(
    w: &Writer<'_>,
    ad: &Adapters,
    op: &mut Operation,
    complete: bool,
) -> Result<(), ZkeyError> {
    let (done, mode) = if complete {
        (ItemState::Completed, Mode::Complete)
    } else {
        (ItemState::Staged, Mode::Staged)
    };
    for i in 0..op.volumes.len() {
        if op.volumes[i].state != done && op.volumes[i].passphrase_known {
            volume_step(w, ad, &mut op.volumes[i], mode);
            save(w, op)?;
        }
    }
    for i in 0..op.plugin_keys.len() {
        if op.plugin_keys[i].state != done {
            plugin_step(w, ad, &mut op.plugin_keys[i], complete);
            save(w, op)?;
        }
    }
    Ok(())
}

fn device_of(volume: &str) -> String {
    crate::crypttab::volume_device(volume).display().to_string()
}

/// Answers a master key change's questions about a volume: yes to re-enciphering again, no to
/// destroying the previous key's keyslot, which stays as the backup until the next change.
struct OperationUi;

impl zkey_cryptsetup::Ui for OperationUi {
    fn info(&mut self, _msg: &str) {}
    fn warn(&mut self, _msg: &str) {}
    fn confirm(&mut self, _question: &str) -> Result<bool, zkey_cryptsetup::Error> {
        Ok(true)
    }
    fn confirm_destroy(&mut self, _question: &str) -> Result<bool, zkey_cryptsetup::Error> {
        Ok(false)
    }
}

/// Stages or completes a volume's header copy of the key, opening it with the key's dummy
/// passphrase.
fn volume_step(w: &Writer<'_>, ad: &Adapters, item: &mut VolumeItem, mode: Mode) {
    use zkey_cryptsetup::passphrase::{Passphrase, Source, Supplier};
    let res = (|| -> Result<(), ZkeyError> {
        let name = &item.key;
        let pass = w.read_pass(name)?;
        let mut supplier = Supplier::new(Source::Given(Passphrase::new(pass.to_vec())));
        let device = device_of(&item.volume);
        let opts = reencipher::Request {
            mode: Some(mode),
            way: (mode == Mode::Staged).then_some(Way::ToNew),
        };
        zkey_cryptsetup::reencipher::reencipher(
            &ad.hsm,
            std::path::Path::new(&device),
            opts,
            &mut supplier,
            &mut OperationUi,
        )
        .map_err(|e| ZkeyError::Invalid(e.to_string()))?;
        Ok(())
    })();
    match res {
        Ok(()) => {
            item.state = if mode == Mode::Complete {
                ItemState::Completed
            } else {
                ItemState::Staged
            };
            item.error = None;
        }
        Err(e) => {
            item.state = ItemState::Failed;
            item.error = Some(e.to_string());
        }
    }
}

/// Which of the KMS plug-in's keys a change touches: the identity key is under APKA, the
/// wrapping key under AES, both on the plug-in's CCA APQNs.
fn plugin_keys_of(w: &Writer<'_>, req: &Request) -> Result<Vec<PlannedPluginKey>, ZkeyError> {
    let Some(conf) = crate::kms::KmsConf::load(w)? else {
        return Ok(Vec::new());
    };
    if !conf.cca_apqns.iter().any(|a| req.apqns.contains(a)) {
        return Ok(Vec::new());
    }
    Ok(req
        .types
        .iter()
        .filter_map(|&t| {
            let what = match t {
                MkType::Apka => "identity key",
                MkType::Aes => "wrapping key",
                MkType::Ep11 => return None,
            };
            Some(PlannedPluginKey {
                key: format!("{} {what} ({t})", conf.kms),
                mktype: t,
            })
        })
        .collect())
}

/// Stages (before the SET) or completes (after it) one plug-in key through the plug-in. A
/// complete re-run after a crash finds nothing staged: the key is then checked to be CURRENT.
fn plugin_step(w: &Writer<'_>, ad: &Adapters, item: &mut PluginItem, complete: bool) {
    use zkey_kms_protocol::{MkDirection, ReencipherMode};
    let t = Some(item.mktype);
    // Staging must stage: a key the plug-in skipped (no NEW master key of its type loaded)
    // is not staged for this change.
    let run = |mode, direction| {
        let (rep, _) = crate::kms::reencipher(w, ad, mode, direction, t)?;
        match rep.keys.iter().find(|k| !complete && !k.changed()) {
            Some(k) => Err(ZkeyError::Invalid(format!(
                "{}: {}: {}",
                k.key, k.action, k.detail
            ))),
            None => Ok(rep),
        }
    };
    let res = if complete {
        run(ReencipherMode::Complete, MkDirection::Auto)
            .or_else(|_| run(ReencipherMode::InPlace, MkDirection::FromOld))
    } else {
        run(ReencipherMode::Staged, MkDirection::ToNew)
    };
    match res {
        Ok(_) => {
            item.state = if complete {
                ItemState::Completed
            } else {
                ItemState::Staged
            };
            item.error = None;
        }
        Err(e) => {
            item.state = ItemState::Failed;
            item.error = Some(e.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_transition_function_allows_exactly_the_documented_moves() {
        use State::*;
        let all = [
            Initial,
            Reenciphering,
            Reenciphered,
            Finalizing,
            Canceling,
            Error,
            Done,
            Canceled,
        ];
        let steps = [
            Step::Stage,
            Step::Staged { failed: false },
            Step::Staged { failed: true },
            Step::Finalize,
            Step::Finalized { failed: false },
            Step::Finalized { failed: true },
            Step::Cancel,
            Step::Canceled { failed: false },
            Step::Canceled { failed: true },
        ];
        let mut allowed = Vec::new();
        for s in all {
            for st in steps {
                if let Ok(n) = s.next(st) {
                    allowed.push((s, st, n));
                }
            }
        }
        // Staging and finalizing resume after a crash or a fix; nothing leaves DONE or
        // CANCELED; a SET can only be finalized from a staged (or failed) operation.
        for (s, st, n) in &allowed {
            assert!(s.is_open(), "{s:?} --{st:?}--> {n:?}");
        }
        assert_eq!(Reenciphered.next(Step::Finalize), Ok(Finalizing));
        assert!(Initial.next(Step::Finalize).is_err());
        assert!(Reenciphering.next(Step::Finalize).is_err());
        assert_eq!(Finalizing.next(Step::Finalized { failed: false }), Ok(Done));
        assert_eq!(Error.next(Step::Stage), Ok(Reenciphering));
        assert!(Done.next(Step::Cancel).is_err());
        assert!(Canceled.next(Step::Stage).is_err());
        assert_eq!(allowed.len(), 4 + 2 + 3 + 2 + 6 + 2);
    }
}
