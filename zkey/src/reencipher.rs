//! Re-enciphering the keys of a repository around a master key change.
//!
//! Before the SET, `--staged` (the default towards NEW) writes the key re-enciphered with the
//! NEW master key beside the live one (`<name>.renc`), so the live key keeps working. After the
//! SET, `--complete` proves the staged key valid under the now CURRENT master key and its
//! verification pattern equal to the key's, and only then makes it the live key. A key under
//! OLD (the SET happened first) is re-enciphered OLD->CURRENT in place. Each key is handled on
//! its own: a failure is reported and counted, and the others go on.
//!
//! Crash safety comes from the order of durable steps: the staged file is written atomically, and
//! completing replaces `.skey`, then `.info`, then removes `.renc`, each atomically; a re-run
//! after a crash at any point finds either the staged file (and completes again, idempotently)
//! or no staged file and a live key that already verifies.

use serde::Serialize;

use ap_sim::apqn::Apqn;
use ap_sim::hsm::{Direction, HsmError, Register};
use ap_sim::token::{KeyType, SecureKey};
use ap_sim::Mkvp;

use crate::adapters::Adapters;
use crate::error::ZkeyError;
use crate::keyname::{KeyName, Pattern};
use crate::properties::Timestamp;
use crate::repository::{KeyEntry, Reader, RepoError, Writer};
use crate::volume::{Volume, VolumeType};

pub use ap_sim::reencipher::{Mode, Request, Way};

/// Which keys: all patterns must match (a key matches an APQN pattern if any of its APQNs does).
#[derive(Clone, Debug, Default)]
pub struct Selection {
    pub names: Option<Pattern>,
    pub apqns: Vec<Pattern>,
}

impl Selection {
    /// Whether any filter was given: an empty result is then an error ([`ZkeyError::NoMatch`]).
    pub fn is_filtered(&self) -> bool {
        self.names.is_some() || !self.apqns.is_empty()
    }

    /// The filters in words, for the error that says nothing matched.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(n) = &self.names {
            parts.push(format!("--name '{n}'"));
        }
        if !self.apqns.is_empty() {
            let a: Vec<&str> = self.apqns.iter().map(Pattern::as_str).collect();
            parts.push(format!("--apqns '{}'", a.join(",")));
        }
        parts.join(" ")
    }

    /// The selection as the user meant it among the repository's keys: a `-N` that spells a
    /// key's name exactly selects that key alone ([`Pattern::resolve`]). Every operation that
    /// takes a selection applies it under its lock, before it matches anything.
    pub fn resolve(&self, r: &Reader<'_>) -> Result<Selection, RepoError> {
        Ok(Selection {
            names: resolve_names(self.names.as_ref(), r)?,
            apqns: self.apqns.clone(),
        })
    }

    /// A damaged key has no readable APQNs: it is selected by name alone, and only when no
    /// APQN filter is given.
    pub fn matches_damaged(&self, name: &KeyName) -> bool {
        self.apqns.is_empty() && self.names.as_ref().is_none_or(|p| p.matches_name(name))
    }

    /// An error when a filter was given and `matched` is zero.
    pub fn require_match(&self, matched: usize) -> Result<(), ZkeyError> {
        if self.is_filtered() && matched == 0 {
            return Err(ZkeyError::NoMatch(self.describe()));
        }
        Ok(())
    }

    pub fn matches(&self, name: &KeyName, apqns: &[Apqn]) -> bool {
        self.names.as_ref().is_none_or(|p| p.matches_name(name))
            && (self.apqns.is_empty()
                || self
                    .apqns
                    .iter()
                    .any(|p| apqns.iter().any(|a| p.matches_apqn(a))))
    }
}

/// A `-N` pattern resolved among the repository's key names (see [`Selection::resolve`]), for
/// the operations that take a name pattern alone (crypttab, cryptsetup, kms refresh/import).
pub fn resolve_names(
    names: Option<&Pattern>,
    r: &Reader<'_>,
) -> Result<Option<Pattern>, RepoError> {
    Ok(match names {
        Some(p) if !p.is_literal() => Some(p.resolve(r.list_names()?.iter().map(KeyName::as_str))),
        other => other.cloned(),
    })
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "kebab-case", tag = "result")]
pub enum Outcome {
    /// The re-enciphered key (its master key pattern `mkvp`) was written beside the live one.
    Staged {
        from: Register,
        to: Register,
        mkvp: Mkvp,
    },
    /// The live key was replaced.
    InPlace {
        from: Register,
        to: Register,
        mkvp: Mkvp,
    },
    /// A staged key became the live key.
    Completed {
        mkvp: Mkvp,
    },
    Skipped {
        reason: String,
    },
    Failed {
        error: String,
    },
}

#[derive(Clone, Debug, Serialize)]
pub struct KeyResult {
    pub name: String,
    #[serde(flatten)]
    pub outcome: Outcome,
    /// The master key pattern of the key before the operation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_mkvp: Option<Mkvp>,
    /// LUKS2 volumes of the key whose headers hold their own copy of the key: they need
    /// `zkey-cryptsetup reencipher` as well.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub luks2_volumes: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub reenciphered: usize,
    pub skipped: usize,
    pub failed: usize,
}

impl Summary {
    fn add(&mut self, o: &Outcome) {
        match o {
            Outcome::Skipped { .. } => self.skipped += 1,
            Outcome::Failed { .. } => self.failed += 1,
            _ => self.reenciphered += 1,
        }
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} re-enciphered, {} skipped, {} failed",
            self.reenciphered, self.skipped, self.failed
        )
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub keys: Vec<KeyResult>,
    pub summary: Summary,
}

/// Re-enciphers every selected key of the repository; `each` sees each result as it is made
/// (for progress output). The caller holds the repository's exclusive lock.
pub fn reencipher_repository(
    repo: &Writer<'_>,
    adapters: &Adapters,
    sel: &Selection,
    opts: &Request,
    mut each: impl FnMut(&KeyResult),
) -> Result<Report, ZkeyError> {
    let sel = &sel.resolve(repo)?;
    let mut report = Report::default();
    for entry in repo.entries()? {
        let (name, outcome, volumes, old_mkvp) = match entry {
            Err(damaged) => {
                let name = damaged.name.clone();
                if !sel.names.as_ref().is_none_or(|p| p.matches_name(&name)) {
                    continue;
                }
                (
                    name,
                    Outcome::Skipped {
                        reason: format!("the key is damaged ({damaged}): it is left as it is"),
                    },
                    vec![],
                    None,
                )
            }
            Ok(e) => {
                if !sel.matches(&e.name, &e.properties.apqns) {
                    continue;
                }
                let outcome = reencipher_key(repo, adapters, &e, opts).unwrap_or_else(|err| {
                    Outcome::Failed {
                        error: err.to_string(),
                    }
                });
                let volumes = luks2_volumes(&e, &outcome);
                let old = SecureKey::parse(&e.secure_key).ok().map(|k| k.mkvp());
                (e.name.clone(), outcome, volumes, old)
            }
        };
        report.summary.add(&outcome);
        let r = KeyResult {
            name: name.as_str().to_string(),
            outcome,
            old_mkvp,
            luks2_volumes: volumes,
        };
        each(&r);
        report.keys.push(r);
    }
    sel.require_match(report.keys.len())?;
    Ok(report)
}

fn luks2_volumes(e: &KeyEntry, o: &Outcome) -> Vec<String> {
    let changed = matches!(
        o,
        Outcome::InPlace { .. } | Outcome::Completed { .. } | Outcome::Staged { .. }
    );
    if !changed || e.properties.volume_type != VolumeType::Luks2 {
        return vec![];
    }
    e.properties.volumes.iter().map(Volume::to_string).collect()
}

fn apqns_of(e: &KeyEntry) -> Option<&[Apqn]> {
    let a = &e.properties.apqns;
    (!a.is_empty()).then_some(a.as_slice())
}

/// Re-enciphers one healthy key as `opts` say (the per-key step of [`reencipher_repository`]).
/// The caller holds the repository's exclusive lock.
pub fn reencipher_key(
    repo: &Writer<'_>,
    ad: &Adapters,
    e: &KeyEntry,
    opts: &Request,
) -> Result<Outcome, ZkeyError> {
    // The verify, the choice of direction and the re-encipher of one key see one state.
    let ad = &*ad.pinned();
    let key = SecureKey::parse(&e.secure_key)?;
    crate::keyops::check_same_key(ad, e)?;
    if opts.mode == Some(Mode::Complete) {
        return complete(repo, ad, e, &key);
    }
    let apqns = apqns_of(e);
    let status = ad.hsm.verify(&key, apqns);
    let way = match (opts.way, &status) {
        (Some(w), _) => w,
        (None, Ok(v)) if v.register == Register::Old => Way::FromOld,
        (None, Ok(_)) if !crate::keyops::new_loaded(ad, &key, apqns) => {
            return Ok(Outcome::Skipped {
                reason: "the key is enciphered with the CURRENT master key and no NEW master key is loaded: nothing to do".into(),
            })
        }
        (None, Ok(_)) => Way::ToNew,
        (None, Err(HsmError::OnlyNew { .. })) => {
            return Ok(Outcome::Skipped { reason: "the key is already enciphered with the NEW master key".into() })
        }
        (None, Err(_)) => return Err(status.unwrap_err().into()),
    };
    let mode = opts.mode.unwrap_or(if way == Way::FromOld {
        Mode::InPlace
    } else {
        Mode::Staged
    });
    if way == Way::ToNew && status.is_ok() && !crate::keyops::new_loaded(ad, &key, apqns) {
        return Ok(Outcome::Skipped {
            reason: format!(
                "no NEW {} master key is loaded on its APQNs: not affected by this change",
                key.key_type().mk_type().to_string().to_uppercase()
            ),
        });
    }
    let (from, to, new) = match way {
        Way::ToNew => (
            Register::Current,
            Register::New,
            ad.hsm.reencipher(&key, Direction::ToNew, apqns)?,
        ),
        Way::FromOld => {
            if key.key_type() == KeyType::Ep11Aes {
                return Err(HsmError::Invalid("EP11 adapters have no OLD register: an EP11 key can only be re-enciphered to NEW, before the SET".into()).into());
            }
            if status
                .as_ref()
                .is_ok_and(|v| v.register == Register::Current)
            {
                return Ok(Outcome::Skipped {
                    reason: "the key is already enciphered with the CURRENT master key".into(),
                });
            }
            (
                Register::Old,
                Register::Current,
                ad.hsm.reencipher(&key, Direction::FromOld, apqns)?,
            )
        }
        Way::FromOldToNew => {
            let current = ad.hsm.reencipher(&key, Direction::FromOld, apqns)?;
            (
                Register::Old,
                Register::New,
                ad.hsm.reencipher(&current, Direction::ToNew, apqns)?,
            )
        }
    };
    match mode {
        Mode::Staged => {
            repo.write_staged(&e.name, &new.to_bytes())?;
            Ok(Outcome::Staged {
                from,
                to,
                mkvp: new.mkvp(),
            })
        }
        Mode::InPlace => {
            // Key first: a crash before the properties are written leaves the new key with the
            // old time stamp, which the VP still proves to be the same key.
            repo.write_skey(&e.name, &new.to_bytes())?;
            let mut props = e.properties.clone();
            props.reencipher_time = Some(Timestamp::now());
            repo.write_info(&e.name, &props)?;
            // A staged copy made before is stale now (it was made from the previous key).
            repo.remove_staged(&e.name)?;
            Ok(Outcome::InPlace {
                from,
                to,
                mkvp: new.mkvp(),
            })
        }
        Mode::Complete => unreachable!("handled above"),
    }
}

/// Promotes `<name>.renc` once it is valid under CURRENT and names the same effective key.
fn complete(
    repo: &Writer<'_>,
    ad: &Adapters,
    e: &KeyEntry,
    live: &SecureKey,
) -> Result<Outcome, ZkeyError> {
    let Some(staged) = e.staged.as_deref() else {
        return Ok(Outcome::Skipped {
            reason: "no staged re-encipher is pending".into(),
        });
    };
    let apqns = apqns_of(e);
    let mut staged = SecureKey::parse(staged)?;
    match ad.hsm.verify(&staged, apqns) {
        Ok(v) if v.register == Register::Current => {}
        // The master key moved on twice: bring the staged key from OLD to CURRENT first, and
        // stage that, so that what gets promoted is what was verified.
        Ok(_) => {
            staged = ad.hsm.reencipher(&staged, Direction::FromOld, apqns)?;
            repo.write_staged(&e.name, &staged.to_bytes())?;
        }
        Err(HsmError::OnlyNew { .. }) => {
            return Err(ZkeyError::NotYetSet(e.name.as_str().to_string()));
        }
        Err(err) => return Err(err.into()),
    }
    let vp = ad.hsm.verification_pattern(&staged, apqns)?;
    let expected = match e.properties.verification_pattern {
        Some(vp) => vp,
        None => ad.hsm.verification_pattern(live, apqns)?,
    };
    if vp != expected {
        return Err(ZkeyError::VpMismatch {
            name: e.name.as_str().to_string(),
            staged: vp,
            expected,
        });
    }
    let mut props = e.properties.clone();
    props.reencipher_time = Some(Timestamp::now());
    repo.promote_staged(&e.name, &staged.to_bytes(), &props)?;
    Ok(Outcome::Completed {
        mkvp: staged.mkvp(),
    })
}

/// Before staging to NEW: every APQN of the selected keys must hold the same complete NEW
/// master key (per key type), so that a domain group with the NEW key on some APQNs only is
/// refused before any key is touched, not halfway through.
pub fn preflight_to_new(ad: &Adapters, w: &Writer<'_>, sel: &Selection) -> Result<(), ZkeyError> {
    let sel = &sel.resolve(w)?;
    let mut groups: std::collections::BTreeMap<KeyType, Vec<Apqn>> = Default::default();
    for e in w.entries()?.into_iter().flatten() {
        if !sel.matches(&e.name, &e.properties.apqns) {
            continue;
        }
        let Ok(t) = e.properties.key_type.parse::<KeyType>() else {
            continue;
        };
        let g = groups.entry(t).or_default();
        for a in &e.properties.apqns {
            if !g.contains(a) {
                g.push(*a);
            }
        }
    }
    for (t, apqns) in groups {
        let cc = crate::crosscheck::cross_check(
            &ad.sysfs,
            t,
            &apqns,
            None,
            crate::crosscheck::Purpose::ToNew,
        )?;
        // Keys whose master key type has nothing in NEW are not part of a change: each is
        // skipped with a line that says so; a NEW key on some APQNs only is refused.
        if !cc.is_proper() && !cc.nothing_new(apqns.len()) {
            return Err(ZkeyError::NotReady(crate::crosscheck::NotReady(cc)));
        }
    }
    Ok(())
}
