//! zkey's side of the audit trail: the repository's log (`<repo>/audit.log`, every key
//! lifecycle event) beside the TKE's log (`$AP_SIM_DIR/audit.log`), and the queries an auditor
//! asks of both ("when was the master key last changed, and can you prove it?").
//!
//! The records and their authentication are `ap_sim::audit`'s; this module names the logs,
//! merges them, filters them, and runs each repository action between its intent and its
//! results ([`audited`]), so that a crash never leaves a change without its record.

use serde::Serialize;

pub use ap_sim::audit::ActionStatus;
use ap_sim::audit::{ActionReport, AuditError, AuditLog, Event, Phase, Record, Verification};
use ap_sim::sim::Simulator;

use crate::keyname::Pattern;
use crate::repository::Repository;

/// Where a record comes from.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Zkey,
    Tke,
}

/// The repository's audit log. Its name in the adapter is tied to the repository's path, so a
/// log copied from another repository does not verify here.
pub fn repository_log(repo: &Repository, sim: &Simulator) -> AuditLog {
    let dir = std::fs::canonicalize(repo.path()).unwrap_or_else(|_| repo.path().to_path_buf());
    AuditLog::new(
        repo.path().join("audit.log"),
        format!("zkey:{}", dir.display()),
        sim.clone(),
    )
}

/// Both logs, the repository's first.
pub fn logs(repo: &Repository, sim: &Simulator) -> [(Source, AuditLog); 2] {
    [
        (Source::Zkey, repository_log(repo, sim)),
        (Source::Tke, sim.tke_audit_log()),
    ]
}

/// Verifies both logs, and says for each action without a result what to check. The caller
/// holds the repository's shared lock, so that no zkey command is between an intent and its
/// result (the TKE's actions last milliseconds, and only the TKE log can show one running).
pub fn verify_all(
    r: &crate::repository::Reader<'_>,
    sim: &Simulator,
) -> Result<Vec<Verification>, AuditError> {
    logs(r.repository(), sim)
        .iter()
        .map(|(src, l)| {
            let mut v = l.verify()?;
            for a in &mut v.unknown_actions {
                a.check = Some(what_to_check(*src, a));
            }
            Ok(v)
        })
        .collect()
}

/// Which records `show` prints; every given filter must match.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub event: Option<Pattern>,
    pub key: Option<Pattern>,
    pub apqn: Option<Pattern>,
    pub mktype: Option<ap_sim::MkType>,
    /// RFC 3339 prefix order: records at or after this time (`2026-11-01` works).
    pub since: Option<String>,
    pub source: Option<Source>,
}

impl Filter {
    fn matches(&self, src: Source, r: &Record) -> bool {
        self.source.is_none_or(|s| s == src)
            && self
                .event
                .as_ref()
                .is_none_or(|p| p.matches(&r.event.event))
            && self
                .key
                .as_ref()
                .is_none_or(|p| r.event.keys.iter().any(|k| p.matches(k)))
            && self
                .apqn
                .as_ref()
                .is_none_or(|p| r.event.apqns.iter().any(|a| p.matches_apqn(a)))
            && self.mktype.is_none_or(|t| r.event.mktype == Some(t))
            && self
                .since
                .as_ref()
                .is_none_or(|t| r.time.as_str() >= t.as_str())
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Entry {
    pub source: Source,
    #[serde(flatten)]
    pub record: Record,
    /// For a result or an intent: how its action ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<ActionStatus>,
    /// For an intent without a result: what to check.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
}

/// The records of both logs that match, oldest first: each action once. An intent that has
/// results is shown through them (each with the action's status); an intent without one is
/// shown itself, as `unknown`, with what to check.
pub fn show(
    r: &crate::repository::Reader<'_>,
    sim: &Simulator,
    f: &Filter,
) -> Result<Vec<Entry>, AuditError> {
    let mut all = Vec::new();
    for (src, log) in logs(r.repository(), sim) {
        let records = log.records()?;
        let actions: std::collections::HashMap<String, ActionReport> =
            ap_sim::audit::actions(&records)
                .into_iter()
                .map(|a| (a.intent_id.clone(), a))
                .collect();
        for record in records {
            let action = record.intent_id.as_ref().and_then(|id| actions.get(id));
            let unknown = action.is_some_and(|a| a.status == ActionStatus::Unknown);
            if record.phase == Some(Phase::Intent) && !unknown {
                continue;
            }
            all.push(Entry {
                source: src,
                status: action.map(|a| a.status),
                check: action.filter(|_| unknown).map(|a| what_to_check(src, a)),
                record,
            });
        }
    }
    // A -N that spells a recorded key's name exactly selects that key alone, as everywhere.
    let f = Filter {
        key: f
            .key
            .as_ref()
            .map(|p| p.resolve(all.iter().flat_map(|e| e.record.event.keys.iter()))),
        ..f.clone()
    };
    let mut out: Vec<Entry> = all
        .into_iter()
        .filter(|e| f.matches(e.source, &e.record))
        .collect();
    out.sort_by(|a, b| a.record.time.cmp(&b.record.time));
    Ok(out)
}

/// Runs `act`, an action on the repository, between its intent and its results in the
/// repository's log. The intent is appended just before the action's first change (see
/// [`Writer::changing`](crate::repository::Writer::changing)): if the log refuses it, nothing is
/// changed. The results (`results` of what `act` returned, or `failed: why`) follow the action.
/// An action that changed nothing writes no intent: its results, if any (failures it reports),
/// stand alone, and a command its checks refused leaves the log as it was.
pub fn audited<T>(
    w: &crate::repository::Writer<'_>,
    ad: &crate::adapters::Adapters,
    intent: Event,
    act: impl FnOnce() -> Result<T, crate::ZkeyError>,
    results: impl FnOnce(&T) -> Vec<Event>,
) -> Result<T, crate::ZkeyError> {
    use crate::ZkeyError;
    let log = repository_log(w.repository(), ad.hsm.simulator());
    if !w.intend(log.clone(), intent) {
        // An action already declared covers this one.
        return act();
    }
    let res = act();
    let ended = w.end_action();
    match (res, ended) {
        (Ok(t), None) => {
            for ev in results(&t) {
                log.append(ev).map_err(ZkeyError::Audit)?;
            }
            Ok(t)
        }
        (Ok(t), Some((log, intent))) => {
            let mut evs = results(&t);
            if evs.is_empty() {
                evs.push(Event {
                    result: "ok".into(),
                    ..intent.event.clone()
                });
            }
            for ev in evs {
                log.append_result(&intent, ev).map_err(ZkeyError::Audit)?;
            }
            Ok(t)
        }
        (Err(e), Some((log, intent))) => {
            // The action's error is what the caller must see; if its result cannot be recorded
            // either, the intent stays unknown, which verification reports.
            let _ = log.append_result(
                &intent,
                Event {
                    result: format!("failed: {e}"),
                    ..intent.event.clone()
                },
            );
            Err(e)
        }
        (Err(e), None) => Err(e),
    }
}

/// A repository event as the operations write it: `name` is the event (`generate`,
/// `kms-bind`...), the command is `zkey` and its first word.
pub fn event(name: &str, keys: &[&crate::KeyName], apqns: &[ap_sim::Apqn]) -> Event {
    Event {
        event: name.to_string(),
        command: format!("zkey {}", name.split('-').next().unwrap_or(name)),
        apqns: apqns.to_vec(),
        keys: keys.iter().map(|k| k.to_string()).collect(),
        result: "ok".into(),
        ..Event::default()
    }
}

/// What to look at to see whether an action that has no result (a crash) made its change.
pub fn what_to_check(src: Source, a: &ActionReport) -> String {
    let apqns = ap_sim::apqn::format_list(&a.apqns);
    match src {
        Source::Tke => {
            format!("the master key registers: `ap-sim tke status -a {apqns}` (or `zkey validate`)")
        }
        Source::Zkey if a.event.starts_with("mkchange") => {
            "the operation: `zkey mkchange list`, and the keys: `zkey validate`".into()
        }
        Source::Zkey if a.event.starts_with("kms") => {
            "the KMS binding and its keys: `zkey kms info`, `zkey kms list`".into()
        }
        Source::Zkey if a.keys.is_empty() => "the repository: `zkey list`, `zkey validate`".into(),
        Source::Zkey => {
            let names: Vec<String> = a
                .keys
                .iter()
                .map(|k| format!("`zkey validate -N {}`", crate::keyname::quote_selecting(k)))
                .collect();
            format!("whether the keys exist and work: {}", names.join(", "))
        }
    }
}

/// The records of a re-encipher: one per kind of result (staged, in place, completed, failed),
/// naming the keys, with the master key patterns where all keys of the kind share them.
pub fn reencipher_events(report: &crate::reencipher::Report) -> Vec<Event> {
    use crate::reencipher::{KeyResult, Outcome};
    use std::collections::BTreeMap;
    let mut groups: BTreeMap<&str, Vec<&KeyResult>> = BTreeMap::new();
    for r in &report.keys {
        let kind = match r.outcome {
            Outcome::Staged { .. } => "reencipher-staged",
            Outcome::InPlace { .. } => "reencipher-in-place",
            Outcome::Completed { .. } => "reencipher-complete",
            Outcome::Failed { .. } => "reencipher-failed",
            Outcome::Skipped { .. } => continue,
        };
        groups.entry(kind).or_default().push(r);
    }
    groups
        .into_iter()
        .map(|(kind, rs)| {
            let same = |f: &dyn Fn(&KeyResult) -> Option<ap_sim::Mkvp>| {
                let first = f(rs[0]);
                rs.iter().all(|r| f(r) == first).then_some(first).flatten()
            };
            let new = |r: &KeyResult| match r.outcome {
                Outcome::Staged { mkvp, .. }
                | Outcome::InPlace { mkvp, .. }
                | Outcome::Completed { mkvp } => Some(mkvp),
                _ => None,
            };
            let errors: Vec<String> = rs
                .iter()
                .filter_map(|r| match &r.outcome {
                    Outcome::Failed { error } => Some(format!("{}: {error}", r.name)),
                    _ => None,
                })
                .collect();
            Event {
                event: kind.to_string(),
                command: "zkey reencipher".into(),
                keys: rs.iter().map(|r| r.name.clone()).collect(),
                old_mkvp: same(&|r| r.old_mkvp),
                new_mkvp: same(&new),
                result: if errors.is_empty() {
                    "ok".into()
                } else {
                    format!("failed: {}", errors.join("; "))
                },
                ..Event::default()
            }
        })
        .collect()
}
