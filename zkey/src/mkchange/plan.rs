//! What a change touches and whether it may start: the registers of its APQNs, the
//! preflight checks, the affected keys, volumes and plug-in keys, and where the SET stands.

#[allow(unused_imports)]
use super::*;

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

/// The NEW and CURRENT registers of `mktype` on an APQN, as sysfs shows them.
pub(super) fn registers(
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

pub(super) fn complete_pattern(r: Option<Reading>) -> Option<Mkvp> {
    r?.complete_mkvp()
}

pub(super) fn key_mktype(key_type: &str) -> Option<MkType> {
    key_type.parse::<KeyType>().ok().map(KeyType::mk_type)
}

/// Whether a repository key belongs to the change: its master key type is changed and it is
/// bound to one of the APQNs (or unbound, with the CURRENT key of those APQNs).
pub(super) fn affected(e: &KeyEntry, req_apqns: &[Apqn], types: &[TypeChange]) -> Option<MkType> {
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
pub(super) fn plan_besides(
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

/// Which of the KMS plug-in's keys a change touches: the identity key is under APKA, the
/// wrapping key under AES, both on the plug-in's CCA APQNs.
pub(super) fn plugin_keys_of(
    w: &Writer<'_>,
    req: &Request,
) -> Result<Vec<PlannedPluginKey>, ZkeyError> {
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
