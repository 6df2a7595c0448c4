//! The APQN cross-check: do the adapters a key is bound to agree on its master keys?
//!
//! Before a key is bound to APQNs, validated or re-enciphered, zkey reads the kernel's view of
//! each APQN (sysfs: online state, card type, `mkvps`) and checks that they form one usable
//! domain group: every APQN exists, is online and of the key's mode and level, has a valid
//! CURRENT master key, all CURRENT keys agree, and the NEW registers agree. A master key change
//! in preparation on some APQNs only (seed 000's "NEW MASTER KEYS INCORRECT ON SC75") is a
//! finding of its own, an error when the operation needs the NEW key.

use std::collections::BTreeMap;

use crate::adapter::{Mode, Status};
use crate::apqn::Apqn;
use crate::registers::{MkType, RegState, RegView};
use crate::sysfs::{QueueInfo, Reading, SysfsError, SysfsTree};
use crate::table::Table;
use crate::token::KeyType;
use crate::Mkvp;
use serde::Serialize;

/// What the APQNs are checked for.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// Binding, generating, validating: CURRENT must agree; a half-loaded NEW is a warning.
    Use,
    /// Re-enciphering to NEW: additionally, every APQN must hold the same complete NEW key.
    ToNew,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
}

#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    pub severity: Severity,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub apqn: Option<Apqn>,
    pub message: String,
}

/// One APQN's registers for the key's master key type, as read from sysfs.
#[derive(Clone, Debug, Serialize)]
pub struct ApqnRegisters {
    pub apqn: Apqn,
    pub card_type: String,
    pub status: Option<Status>,
    pub new: Option<Reading>,
    pub current: Option<Reading>,
    /// `None` for EP11 (no OLD register) and where the state is unknown.
    pub old: Option<Reading>,
}

/// The outcome: a table of registers and findings, worst first.
#[derive(Clone, Debug, Serialize)]
pub struct CrossCheck {
    pub apqns: Vec<ApqnRegisters>,
    pub findings: Vec<Finding>,
}

impl CrossCheck {
    /// No error: the master key setup is proper for the purpose.
    pub fn is_proper(&self) -> bool {
        self.findings.iter().all(|f| f.severity < Severity::Error)
    }

    pub fn errors(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
    }

    /// Every one of `expected` APQNs shows an empty NEW register: no change of this type is
    /// in preparation there, so nothing of the type is to be staged (not an error). A partial
    /// or unreadable NEW register counts as loaded, so that the check says what is wrong.
    pub fn nothing_new(&self, expected: usize) -> bool {
        self.apqns.len() == expected
            && self.apqns.iter().all(|row| {
                matches!(
                    row.new,
                    Some(Reading::Known(RegView {
                        state: RegState::Empty,
                        ..
                    }))
                )
            })
    }

    /// The reference's `CARD.DOMAIN  NEW MK  CURRENT MK  OLD MK  TYPE` table.
    pub fn table(&self) -> String {
        let ep11_only = self.apqns.iter().all(|a| a.old.is_none());
        let mut header = vec!["CARD.DOMAIN", "NEW MK", "CURRENT MK"];
        if !ep11_only {
            header.push("OLD MK");
        }
        header.push("TYPE");
        let mut t = Table::new(header);
        for a in &self.apqns {
            let mut row = vec![
                a.apqn.to_string(),
                cell(a.new.as_ref()),
                cell(a.current.as_ref()),
            ];
            if !ep11_only {
                row.push(cell(a.old.as_ref()));
            }
            row.push(a.card_type.clone());
            t.row(row);
        }
        t.render()
    }

    /// Findings as lines an operator reads: `ERROR: ...`.
    pub fn report(&self) -> String {
        let mut out = String::new();
        for f in &self.findings {
            let tag = match f.severity {
                Severity::Info => "INFO",
                Severity::Warning => "WARNING",
                Severity::Error => "ERROR",
            };
            out.push_str(&format!("{tag}: {}\n", f.message));
        }
        if !self.is_proper() {
            out.push_str("Your master key setup is improper.\n");
        }
        out
    }
}

fn cell(r: Option<&Reading>) -> String {
    match (r, r.and_then(Reading::complete_mkvp)) {
        (None | Some(Reading::Unknown), _) => "-".into(),
        (_, Some(m)) => {
            let s = m.to_string();
            s[..s.len().min(32)].to_string()
        }
        (Some(Reading::Known(v)), None) => v.state.to_string(),
    }
}

/// The pattern of a register whose key is complete.
fn pattern(r: Option<&Reading>) -> Option<Mkvp> {
    r?.complete_mkvp()
}

/// Which card types can serve a key type: mode and minimum generation.
fn requirement(kt: KeyType) -> (Mode, u8, &'static str) {
    match kt {
        KeyType::CcaAesData => (Mode::Cca, 4, "a CCA coprocessor (CEXnC)"),
        KeyType::CcaAesCipher => (Mode::Cca, 6, "a CCA coprocessor of CEX6C or later"),
        KeyType::Ep11Aes => (Mode::Ep11, 7, "an EP11 coprocessor of CEX7P or later"),
    }
}

fn generation(card_type: &str) -> Option<u8> {
    card_type.strip_prefix("CEX")?.get(..1)?.parse().ok()
}

/// Checks `apqns` for a key of `key_type`, enciphered with `key_mkvp` when the key exists.
pub fn cross_check(
    tree: &SysfsTree,
    key_type: KeyType,
    apqns: &[Apqn],
    key_mkvp: Option<Mkvp>,
    purpose: Purpose,
) -> Result<CrossCheck, SysfsError> {
    let mut findings = Vec::new();
    let mut rows = Vec::new();
    let mut err = |apqn: Option<Apqn>, sev: Severity, message: String| {
        findings.push(Finding {
            severity: sev,
            apqn,
            message,
        })
    };
    let (mode, min_gen, needs) = requirement(key_type);

    for &apqn in apqns {
        let Some(q) = tree.queue(apqn)? else {
            err(
                Some(apqn),
                Severity::Error,
                format!("APQN {apqn} does not exist: 'lszcrypt' lists the APQNs of this system"),
            );
            continue;
        };
        let row = registers_of(&q, key_type);
        if q.mode != Some(mode) || generation(&q.card_type).is_none_or(|g| g < min_gen) {
            err(
                Some(apqn),
                Severity::Error,
                format!(
                    "APQN {apqn} is a {} adapter: a {key_type} key needs {needs}",
                    q.card_type
                ),
            );
        } else if q.status != Status::Online {
            err(
                Some(apqn),
                Severity::Error,
                format!(
                    "APQN {apqn} is {}: set it online (chzcrypt -e) or leave it out",
                    q.status.word()
                ),
            );
        } else if q.mkvps.is_none() {
            err(Some(apqn), Severity::Warning, format!("the master key state of APQN {apqn} cannot be read (no mkvps attribute): its check is skipped"));
        } else if pattern(row.current.as_ref()).is_none() {
            err(Some(apqn), Severity::Error, format!("APQN {apqn} has no valid CURRENT master key: the security officer must set one first"));
        }
        rows.push(row);
    }

    let checked: Vec<&ApqnRegisters> = rows
        .iter()
        .filter(|r| pattern(r.current.as_ref()).is_some())
        .collect();
    check_new(&checked, purpose, &mut findings);
    match key_mkvp {
        Some(k) => check_key(&checked, k, &mut findings),
        None => check_currents_agree(&checked, &mut findings),
    }
    findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
    Ok(CrossCheck {
        apqns: rows,
        findings,
    })
}

/// Why staging to NEW is refused: the cross-check's table and findings. Every command that
/// stages (repository keys, LUKS2 volumes, the KMS plug-in's keys) reports it in these words.
#[derive(Clone, Debug, Serialize)]
pub struct NotReady(pub CrossCheck);

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the APQNs are not ready for re-enciphering to the NEW master key; nothing was changed:\n{}{}",
            self.0.table(),
            self.0.report()
        )
    }
}

impl std::error::Error for NotReady {}

/// Before anything of `mktype` is staged to NEW on `apqns`: each APQN exists, is online, shows
/// its registers, and all hold the same complete NEW master key. For keys without a
/// [`KeyType`] (the APKA identity key) and for callers that know only the master key type.
pub fn require_new(
    tree: &SysfsTree,
    mktype: MkType,
    apqns: &[Apqn],
) -> Result<Result<CrossCheck, NotReady>, SysfsError> {
    let mut findings = Vec::new();
    let mut rows = Vec::new();
    for &apqn in apqns {
        let Some(q) = tree.queue(apqn)? else {
            findings.push(Finding {
                severity: Severity::Error,
                apqn: Some(apqn),
                message: format!(
                    "APQN {apqn} does not exist: 'lszcrypt' lists the APQNs of this system"
                ),
            });
            continue;
        };
        let row = registers_for(&q, mktype);
        if q.status != Status::Online {
            findings.push(Finding {
                severity: Severity::Error,
                apqn: Some(apqn),
                message: format!(
                    "APQN {apqn} is {}: set it online (chzcrypt -e) or leave it out",
                    q.status.word()
                ),
            });
        } else if row.current.is_none() {
            findings.push(Finding {
                severity: Severity::Error,
                apqn: Some(apqn),
                message: format!("APQN {apqn} has no {mktype} master key registers"),
            });
        }
        rows.push(row);
    }
    let checked: Vec<&ApqnRegisters> = rows.iter().filter(|r| r.current.is_some()).collect();
    check_new(&checked, Purpose::ToNew, &mut findings);
    findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
    let cc = CrossCheck {
        apqns: rows,
        findings,
    };
    Ok(if cc.is_proper() {
        Ok(cc)
    } else {
        Err(NotReady(cc))
    })
}

fn registers_of(q: &QueueInfo, key_type: KeyType) -> ApqnRegisters {
    registers_for(q, key_type.mk_type())
}

fn registers_for(q: &QueueInfo, mktype: MkType) -> ApqnRegisters {
    let r = q.mkvps.as_ref().and_then(|m| m.of_type(mktype));
    ApqnRegisters {
        apqn: q.apqn,
        card_type: q.card_type.clone(),
        status: Some(q.status),
        new: r.map(|r| r.new),
        current: r.map(|r| r.current),
        old: r.and_then(|r| r.old),
    }
}

fn list(apqns: &[Apqn]) -> String {
    crate::apqn::format_list(apqns)
}

/// NEW registers must agree: all empty, or all holding the same complete key.
fn check_new(rows: &[&ApqnRegisters], purpose: Purpose, findings: &mut Vec<Finding>) {
    let mut by_new: BTreeMap<Option<String>, Vec<Apqn>> = BTreeMap::new();
    for r in rows {
        by_new
            .entry(pattern(r.new.as_ref()).map(|m| m.to_string()))
            .or_default()
            .push(r.apqn);
    }
    let loaded: Vec<_> = by_new.iter().filter(|(k, _)| k.is_some()).collect();
    let missing = by_new.get(&None).cloned().unwrap_or_default();
    let mut push = |sev, message| {
        findings.push(Finding {
            severity: sev,
            apqn: None,
            message,
        })
    };
    if loaded.len() > 1 {
        let detail = loaded
            .iter()
            .map(|(k, a)| format!("{} on {}", k.as_deref().unwrap_or("-"), list(a)))
            .collect::<Vec<_>>()
            .join("; ");
        push(Severity::Error, format!("the NEW master keys differ across the APQNs ({detail}): the security officer must load the same new master key on every APQN"));
    } else if loaded.len() == 1 && !missing.is_empty() {
        let (_, have) = loaded[0];
        let sev = if purpose == Purpose::ToNew {
            Severity::Error
        } else {
            Severity::Warning
        };
        push(sev, format!(
            "the NEW master key is loaded on {} but not on {}: the security officer must load it there too (NEW MASTER KEYS INCORRECT)",
            list(have),
            list(&missing)
        ));
    } else if loaded.is_empty() && purpose == Purpose::ToNew && !rows.is_empty() {
        push(Severity::Error, format!("no NEW master key is loaded on {}: the security officer must load it with the TKE first", list(&rows.iter().map(|r| r.apqn).collect::<Vec<_>>())));
    }
}

fn check_key(rows: &[&ApqnRegisters], key: Mkvp, findings: &mut Vec<Finding>) {
    let mut on_old = Vec::new();
    let mut on_new = Vec::new();
    for r in rows {
        let is = |reg: Option<&Reading>| pattern(reg).is_some_and(|m| m.matches(&key));
        if is(r.current.as_ref()) {
            continue;
        } else if is(r.old.as_ref()) {
            on_old.push(r.apqn);
        } else if is(r.new.as_ref()) {
            on_new.push(r.apqn);
        } else {
            findings.push(Finding {
                severity: Severity::Error,
                apqn: Some(r.apqn),
                message: format!("APQN {}: the key's master key ({key}) is in none of its registers: the key cannot be used there", r.apqn),
            });
        }
    }
    if !on_old.is_empty() && !on_new.is_empty() {
        findings.push(Finding {
            severity: Severity::Error,
            apqn: None,
            message: format!("the key's master key is OLD on {} but NEW on {}: the APQNs are in different stages of a master key change", list(&on_old), list(&on_new)),
        });
    } else if !on_old.is_empty() {
        findings.push(Finding {
            severity: Severity::Warning,
            apqn: None,
            message: format!("the key is enciphered with the OLD master key of {}: re-encipher it ('zkey reencipher --from-old') before the next SET destroys it", list(&on_old)),
        });
    } else if !on_new.is_empty() {
        findings.push(Finding {
            severity: Severity::Info,
            apqn: None,
            message: format!(
                "the key is enciphered with the NEW master key of {}, which is not set yet",
                list(&on_new)
            ),
        });
    }
}

fn check_currents_agree(rows: &[&ApqnRegisters], findings: &mut Vec<Finding>) {
    let mut by_cur: BTreeMap<String, Vec<Apqn>> = BTreeMap::new();
    for r in rows {
        if let Some(m) = pattern(r.current.as_ref()) {
            by_cur.entry(m.to_string()).or_default().push(r.apqn);
        }
    }
    if by_cur.len() > 1 {
        let detail = by_cur
            .iter()
            .map(|(m, a)| format!("{m} on {}", list(a)))
            .collect::<Vec<_>>()
            .join("; ");
        findings.push(Finding {
            severity: Severity::Error,
            apqn: None,
            message: format!("the CURRENT master keys differ across the APQNs ({detail}): a key can only be bound to APQNs that share one master key"),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apqn::parse_list;
    use crate::sim::{Layout, Simulator};
    use crate::MkType;

    fn sim() -> (tempfile::TempDir, Simulator, SysfsTree) {
        let t = tempfile::tempdir().unwrap();
        let s = Simulator::init(t.path().join("s"), &Layout::default(), false).unwrap();
        let tree = SysfsTree::new(s.sys_root());
        (t, s, tree)
    }

    fn cur(s: &Simulator, apqn: &str) -> Mkvp {
        let st = s.register_status(Some(&parse_list(apqn).unwrap())).unwrap();
        st[0].registers[0].current.mkvp.unwrap()
    }

    #[test]
    fn a_shared_domain_group_is_proper() {
        let (_t, s, tree) = sim();
        let g = parse_list("08.002f,09.002f").unwrap();
        let cc = cross_check(
            &tree,
            KeyType::CcaAesData,
            &g,
            Some(cur(&s, "08.002f")),
            Purpose::Use,
        )
        .unwrap();
        assert!(cc.is_proper(), "{}", cc.report());
        assert!(cc.findings.is_empty());
        assert!(
            cc.table()
                .starts_with("CARD.DOMAIN  NEW MK  CURRENT MK        OLD MK   TYPE\n"),
            "{}",
            cc.table()
        );
        let cc = cross_check(
            &tree,
            KeyType::Ep11Aes,
            &parse_list("0a.002f").unwrap(),
            None,
            Purpose::Use,
        )
        .unwrap();
        assert!(!cc.table().contains("OLD MK"), "EP11 has no OLD register");
    }

    #[test]
    fn old_key_warns_and_split_stages_are_errors() {
        let (_t, s, tree) = sim();
        let g = parse_list("08.002f,09.002f").unwrap();
        let key = cur(&s, "08.002f");
        s.tke_load_random(&g, MkType::Aes).unwrap();
        let cc = cross_check(&tree, KeyType::CcaAesData, &g, Some(key), Purpose::ToNew).unwrap();
        assert!(cc.is_proper(), "{}", cc.report());
        // SET on 08.002f only: the key is OLD there and still CURRENT on 09.002f.
        s.tke_set(&g[..1], MkType::Aes).unwrap();
        let cc = cross_check(&tree, KeyType::CcaAesData, &g, Some(key), Purpose::Use).unwrap();
        assert!(
            cc.report().contains("OLD master key of 08.002f"),
            "{}",
            cc.report()
        );
        assert!(
            cc.report()
                .contains("NEW master key is loaded on 09.002f but not on 08.002f"),
            "{}",
            cc.report()
        );
        // A key made under the new CURRENT of 08.002f is NEW on 09.002f: not yet set there.
        let newkey = cur(&s, "08.002f");
        let cc = cross_check(&tree, KeyType::CcaAesData, &g, Some(newkey), Purpose::Use).unwrap();
        assert!(
            cc.findings
                .iter()
                .any(|f| f.severity == Severity::Info && f.message.contains("not set yet")),
            "{}",
            cc.report()
        );
        let cc = cross_check(&tree, KeyType::CcaAesData, &g, None, Purpose::Use).unwrap();
        assert!(
            !cc.is_proper() && cc.report().contains("CURRENT master keys differ"),
            "{}",
            cc.report()
        );
    }

    #[test]
    fn missing_offline_and_wrong_type_apqns_are_errors() {
        let (_t, s, tree) = sim();
        s.set_online(crate::sim::Target::Card(9), false).unwrap();
        let cc = cross_check(
            &tree,
            KeyType::CcaAesCipher,
            &parse_list("07.0001,09.002f,0a.002f,0c.002f").unwrap(),
            None,
            Purpose::Use,
        )
        .unwrap();
        let r = cc.report();
        for needle in [
            "07.0001 does not exist",
            "09.002f is offline",
            "0a.002f is a CEX8P adapter",
            "0c.002f is a CEX8A adapter",
            "improper",
        ] {
            assert!(r.contains(needle), "{needle}: {r}");
        }
    }
}
