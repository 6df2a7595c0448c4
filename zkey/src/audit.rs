//! zkey's side of the audit trail: the repository's log (`<repo>/audit.log`, every key
//! lifecycle event) beside the TKE's log (`$AP_SIM_DIR/audit.log`), and the queries an auditor
//! asks of both ("when was the master key last changed, and can you prove it?").
//!
//! The records and their authentication are `ap_sim::audit`'s; this module names the logs,
//! merges them, and filters them.

use serde::Serialize;

use ap_sim::audit::{AuditError, AuditLog, Event, Record, Verification};
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

pub fn verify_all(repo: &Repository, sim: &Simulator) -> Result<Vec<Verification>, AuditError> {
    logs(repo, sim).iter().map(|(_, l)| l.verify()).collect()
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
}

/// The records of both logs that match, oldest first.
pub fn show(repo: &Repository, sim: &Simulator, f: &Filter) -> Result<Vec<Entry>, AuditError> {
    let mut all = Vec::new();
    for (src, log) in logs(repo, sim) {
        all.extend(log.records()?.into_iter().map(|record| Entry {
            source: src,
            record,
        }));
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

/// Appends a repository event. Key lifecycle commands call it after they acted; a failure to
/// record is reported to the caller, who says that the action itself was done.
pub fn record(repo: &Repository, sim: &Simulator, event: Event) -> Result<(), AuditError> {
    repository_log(repo, sim).append(event).map(drop)
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

/// Records `event` in the repository's log, after the action was done.
pub fn record_done(
    w: &crate::repository::Writer<'_>,
    ad: &crate::adapters::Adapters,
    event: Event,
) -> Result<(), crate::ZkeyError> {
    record(w.repository(), ad.hsm.simulator(), event).map_err(crate::ZkeyError::Audit)
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
