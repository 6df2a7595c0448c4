//! A tamper-evident audit trail of key and master key events.
//!
//! Each record is one JSON line: what happened (event, command, APQNs, master key type, old and
//! new MKVPs, key names, result), when, by whom and where, chained to the previous record by its
//! MAC (`prev`) and authenticated by its own `mac`, an HMAC-SHA256 computed inside the adapter
//! with a key that never leaves the simulator's private state. The adapter also keeps each log's
//! head (last sequence number and MAC). So someone who can edit the log files but not the
//! adapter cannot forge a record (no key), change one (MAC), remove or reorder records (sequence
//! and chain), or cut the tail off (head).
//!
//! A record is appended (and fsynced) before the adapter confirms it as the new head, so a crash
//! between the two leaves one valid, unconfirmed record at the end, which [`AuditLog::verify`]
//! accepts and reports. A torn last line (a crash in the middle of the write) was never confirmed
//! and is cut off by the next append.
//!
//! An action and its record must not come apart in a crash, so an action that changes durable
//! state is recorded twice: an intent ([`AuditLog::append_intent`]: what will change) appended
//! before the change, and its result ([`AuditLog::append_result`], the same `intent_id`) after.
//! A log that refuses the intent (its tail was cut) thus stops the action before it changes
//! anything, and verification tells each action done, partly done, not done (failed) or unknown:
//! an intent without a result was interrupted by a crash (or is still running).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::apqn::Apqn;
use crate::mkvp::Mkvp;
use crate::registers::MkType;
use std::sync::Arc;

/// The MAC a first record chains to.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// How far from the end a last record is looked for on append.
const TAIL: u64 = 64 * 1024;

/// What a caller records. Never put key material or passphrases in any field.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Event {
    /// e.g. `tke-set`, `generate`, `reencipher-staged`, `mkchange-finalize`.
    pub event: String,
    /// The command, without secrets: its name and subcommand, and options that are not secret.
    pub command: String,
    #[serde(default)]
    pub apqns: Vec<Apqn>,
    pub mktype: Option<MkType>,
    pub old_mkvp: Option<Mkvp>,
    pub new_mkvp: Option<Mkvp>,
    #[serde(default)]
    pub keys: Vec<String>,
    /// `ok`, or `failed: why`.
    pub result: String,
    pub details: Option<String>,
}

/// Which half of an action a record is. A record without a phase (every record of an older
/// log, a refusal that changed nothing) stands alone.
#[derive(Copy, Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Appended before the durable change: what will change. Its `result` is `pending`.
    Intent,
    /// Appended after the change (or its failure): what happened.
    Result,
}

/// One line of the log.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub seq: u64,
    /// UTC, RFC 3339.
    pub time: String,
    /// The real user id's name (`uid N` when it has none): who ran the command.
    pub user: String,
    /// What `SUDO_USER` claimed, kept apart from `user` because any caller can set it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sudo_user: Option<String>,
    pub host: String,
    // Both absent on records that stand alone, so that older logs sign (and verify) unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// The action an intent announces and its results report (the same id on each).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent_id: Option<String>,
    #[serde(flatten)]
    pub event: Event,
    pub prev: String,
    pub mac: String,
}

impl Record {
    /// The bytes the MAC covers: the record as JSON with an empty `mac`.
    fn signed_bytes(&self) -> Vec<u8> {
        let mut r = self.clone();
        r.mac.clear();
        serde_json::to_vec(&r).expect("a record serialises")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// The log is a symbolic link (someone may have planted it to make root append elsewhere).
    #[error(transparent)]
    Untrusted(crate::durable::Untrusted),
    /// The file does not end where the adapter says it does: appending would chain new records
    /// past a gap, and the next verification would no longer see it.
    #[error("audit log {path}: {why}. Nothing was appended to it. Run `zkey audit verify` to see where it breaks, and keep the file as evidence")]
    Broken { path: PathBuf, why: String },
    /// The authenticator (the adapter) failed.
    #[error(transparent)]
    Adapter(Box<dyn std::error::Error + Send + Sync>),
}

/// The last record an authenticator confirmed for one audit log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditHead {
    pub seq: u64,
    pub mac: String,
}

/// What the audit trail needs from the adapter that keeps it honest: MACs under a key that
/// never leaves it, and each log's head kept where whoever edits the log file cannot reach.
/// The simulator implements it; the trail does not depend on the simulator (rustls's
/// `CryptoProvider` model).
pub trait Authenticator: Send + Sync {
    /// HMAC-SHA256 of each of `data` for the log `log`.
    fn macs(&self, log: &str, data: &[&[u8]]) -> Result<Vec<[u8; 32]>, AuditError>;
    /// The last confirmed record of `log`.
    fn head(&self, log: &str) -> Result<Option<AuditHead>, AuditError>;
    /// Confirms a new last record; a head never moves backwards.
    fn set_head(&self, log: &str, head: AuditHead) -> Result<(), AuditError>;
}

/// Where verification found the log broken.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Break {
    /// The 1-based line of the first bad record (or the line after the last one, for a cut tail).
    pub line: usize,
    pub why: String,
}

/// The outcome of [`AuditLog::verify`].
#[derive(Clone, Debug, Serialize)]
pub struct Verification {
    pub log: String,
    pub path: PathBuf,
    pub records: usize,
    pub intact: bool,
    pub first_break: Option<Break>,
    /// The last record was written but not yet confirmed by the adapter (a crash in between).
    pub unconfirmed_tail: bool,
    /// The file ends in an incomplete line (a write torn by a crash or a full disk). It was never
    /// confirmed, is not counted in `records`, and the next append removes it.
    pub torn_tail: bool,
    /// How the actions recorded with an intent ended (none for a broken log).
    pub actions: ActionCounts,
    /// The intents without a result: each action was interrupted (a crash) or is still running,
    /// and whether its change happened is to be checked on the objects it names.
    pub unknown_actions: Vec<ActionReport>,
}

/// How an action recorded with an intent ended, by its result records.
#[derive(Copy, Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ActionStatus {
    /// Every result is `ok`.
    Done,
    /// Some results are `ok`, some `failed` (e.g. a re-encipher where some keys failed).
    PartlyDone,
    /// Every result is `failed`: the action reported that it did not make its change.
    NotDone,
    /// No result: the process ended between the intent and the result (a crash), or is still
    /// running. The change may or may not have happened.
    Unknown,
}

#[derive(Copy, Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct ActionCounts {
    pub done: usize,
    pub partly_done: usize,
    pub not_done: usize,
    pub unknown: usize,
}

/// One intent and how its action ended.
#[derive(Clone, Debug, Serialize)]
pub struct ActionReport {
    /// The intent's record.
    pub seq: u64,
    pub time: String,
    pub intent_id: String,
    pub event: String,
    pub apqns: Vec<Apqn>,
    pub keys: Vec<String>,
    pub details: Option<String>,
    pub status: ActionStatus,
    /// What to look at to see whether an unknown action's change happened (filled by the
    /// caller that knows the commands, e.g. zkey).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
}

/// Each intent of `records` (in log order) and how its action ended.
pub fn actions(records: &[Record]) -> Vec<ActionReport> {
    use std::collections::HashMap;
    // (any ok, any failed) per intent id.
    let mut outcome: HashMap<&str, (bool, bool)> = HashMap::new();
    for r in records {
        if let (Some(Phase::Result), Some(id)) = (r.phase, r.intent_id.as_deref()) {
            let o = outcome.entry(id).or_default();
            if r.event.result.starts_with("failed") {
                o.1 = true;
            } else {
                o.0 = true;
            }
        }
    }
    records
        .iter()
        .filter(|r| r.phase == Some(Phase::Intent))
        .filter_map(|r| {
            let id = r.intent_id.clone()?;
            let status = match outcome.get(id.as_str()) {
                None => ActionStatus::Unknown,
                Some((true, false)) => ActionStatus::Done,
                Some((true, true)) => ActionStatus::PartlyDone,
                Some((false, _)) => ActionStatus::NotDone,
            };
            Some(ActionReport {
                seq: r.seq,
                time: r.time.clone(),
                intent_id: id,
                event: r.event.event.clone(),
                apqns: r.event.apqns.clone(),
                keys: r.event.keys.clone(),
                details: r.event.details.clone(),
                status,
                check: None,
            })
        })
        .collect()
}

/// An intent appended to a log: its action's results are appended with [`AuditLog::append_result`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Intent {
    pub id: String,
    /// The intent as written: its event, command, APQNs and keys are what the results repeat.
    pub event: Event,
}

/// One audit log file and the adapter that authenticates it.
#[derive(Clone)]
pub struct AuditLog {
    path: PathBuf,
    id: String,
    auth: Arc<dyn Authenticator>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.path)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> AuditError + '_ {
    move |source| match crate::durable::Untrusted::of(&source) {
        Some(u) => AuditError::Untrusted(u.clone()),
        None => AuditError::Io {
            path: path.to_path_buf(),
            source,
        },
    }
}

impl AuditLog {
    /// `id` names the log in the adapter (e.g. `tke`, or `zkey:<repository>`).
    pub fn new(
        path: impl Into<PathBuf>,
        id: impl Into<String>,
        auth: impl Authenticator + 'static,
    ) -> Self {
        AuditLog {
            path: path.into(),
            id: id.into(),
            auth: Arc::new(auth),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Appends an event that stands alone (a refusal that changed nothing); returns the record
    /// as written. An action that changes durable state appends an intent and a result instead.
    pub fn append(&self, event: Event) -> Result<Record, AuditError> {
        self.append_as(event, None, None)
    }

    /// Appends the intent of an action, before the action changes anything: if this fails
    /// (the log refuses appends, the adapter is gone), the action must not be done. Its
    /// `result` is set to `pending`.
    pub fn append_intent(&self, mut event: Event) -> Result<Intent, AuditError> {
        event.result = "pending".into();
        let id = format!("{:016x}", rand::random::<u64>());
        self.append_as(event.clone(), Some(Phase::Intent), Some(id.clone()))?;
        Ok(Intent { id, event })
    }

    /// Appends a result of the action `intent` announced: `event.result` is `ok...` or
    /// `failed: why`. An action may have several (one per kind of outcome).
    pub fn append_result(&self, intent: &Intent, event: Event) -> Result<Record, AuditError> {
        self.append_as(event, Some(Phase::Result), Some(intent.id.clone()))
    }

    fn append_as(
        &self,
        event: Event,
        phase: Option<Phase>,
        intent_id: Option<String>,
    ) -> Result<Record, AuditError> {
        let p = &self.path;
        let mut f = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o640)
            // A link planted at the log's name is refused: root would append to its target.
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(p)
            .map_err(|e| io_err(p)(crate::durable::nofollow_error(p, e)))?;
        f.lock().map_err(io_err(p))?;
        let last = cut_torn_tail_and_read_last(&mut f).map_err(io_err(p))?;
        self.check_ends_at_head(last.as_ref())?;
        let mut rec = Record {
            seq: last.as_ref().map_or(1, |r| r.seq + 1),
            time: utc_now(),
            user: current_user(),
            sudo_user: claimed_sudo_user(),
            host: hostname(),
            phase,
            intent_id,
            event,
            prev: last.map_or_else(|| GENESIS.to_string(), |r| r.mac),
            mac: String::new(),
        };
        rec.mac = hex::encode(self.auth.macs(&self.id, &[&rec.signed_bytes()])?[0]);
        let mut line = serde_json::to_vec(&rec).expect("a record serialises");
        line.push(b'\n');
        f.write_all(&line).map_err(io_err(p))?;
        f.sync_all().map_err(io_err(p))?;
        self.auth.set_head(
            &self.id,
            AuditHead {
                seq: rec.seq,
                mac: rec.mac.clone(),
            },
        )?;
        Ok(rec)
    }

    /// Refuses to append unless the log ends at the head the adapter confirmed (or the one record
    /// after it that a crash left unconfirmed). Without this, records cut off the tail would be
    /// hidden by the next appends: their sequence numbers would pass the head again and
    /// verification would find nothing missing. A forged or altered record is `verify`'s to find.
    fn check_ends_at_head(&self, last: Option<&Record>) -> Result<(), AuditError> {
        match self.auth.head(&self.id)? {
            None => Ok(()),
            Some(head) => {
                end_against_head(&head, last)
                    .map(drop)
                    .map_err(|why| AuditError::Broken {
                        path: self.path.clone(),
                        why,
                    })
            }
        }
    }

    /// Every record that parses, in file order (for `show`; `verify` is the proof).
    pub fn records(&self) -> Result<Vec<Record>, AuditError> {
        Ok(self
            .lines()?
            .0
            .into_iter()
            .filter_map(|l| serde_json::from_str(&l).ok())
            .collect())
    }

    /// The complete lines, and whether an incomplete one followed them. Read under a shared lock
    /// so that a record being appended (written, then confirmed by the adapter) is never seen
    /// half done: a writer holds the exclusive lock across both steps.
    fn lines(&self) -> Result<(Vec<String>, bool), AuditError> {
        let p = &self.path;
        let mut f = match crate::durable::open_nofollow(p) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), false)),
            Err(e) => return Err(io_err(p)(e)),
        };
        f.lock_shared().map_err(io_err(p))?;
        let mut text = String::new();
        f.read_to_string(&mut text).map_err(io_err(p))?;
        let torn = !text.is_empty() && !text.ends_with('\n');
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        if torn {
            lines.pop();
        }
        Ok((lines, torn))
    }

    /// Proves the log intact, or names the first bad record.
    pub fn verify(&self) -> Result<Verification, AuditError> {
        let (lines, torn_tail) = self.lines()?;
        let parsed: Vec<Result<Record, String>> = lines
            .iter()
            .map(|l| serde_json::from_str::<Record>(l).map_err(|e| e.to_string()))
            .collect();
        let signed: Vec<Vec<u8>> = parsed
            .iter()
            .map(|r| r.as_ref().map(Record::signed_bytes).unwrap_or_default())
            .collect();
        let refs: Vec<&[u8]> = signed.iter().map(Vec::as_slice).collect();
        let macs = self.auth.macs(&self.id, &refs)?;
        let mut out = Verification {
            log: self.id.clone(),
            path: self.path.clone(),
            records: lines.len(),
            intact: true,
            first_break: None,
            unconfirmed_tail: false,
            torn_tail,
            actions: ActionCounts::default(),
            unknown_actions: Vec::new(),
        };
        let mut prev = GENESIS.to_string();
        for (i, (rec, mac)) in parsed.iter().zip(&macs).enumerate() {
            let line = i + 1;
            let why = match rec {
                Err(e) => Some(format!("not a record ({e})")),
                Ok(r) if r.seq != line as u64 => Some(format!("sequence number {} where {line} was expected: records were removed or reordered", r.seq)),
                Ok(r) if r.prev != prev => Some("it does not chain to the record before it: records were removed, inserted or reordered".into()),
                Ok(r) if r.mac != hex::encode(mac) => Some("its MAC does not match: the record was altered or forged".into()),
                Ok(r) => {
                    prev = r.mac.clone();
                    None
                }
            };
            if let Some(why) = why {
                out.intact = false;
                out.first_break = Some(Break { line, why });
                return Ok(out);
            }
        }
        let last = parsed.last().and_then(|r| r.as_ref().ok());
        let head = self.auth.head(&self.id)?;
        let broken = |why: String| Break {
            line: lines.len() + 1,
            why,
        };
        out.first_break = match (head, last) {
            (None, None) => None,
            (None, Some(_)) => Some(Break {
                line: 1,
                why: "the adapter has no record of this log: it was not written on this system"
                    .into(),
            }),
            (Some(h), last) => match end_against_head(&h, last) {
                Ok(End::Confirmed) => None,
                Ok(End::Unconfirmed) => {
                    out.unconfirmed_tail = true;
                    None
                }
                Err(why) => Some(broken(why)),
            },
        };
        out.intact = out.first_break.is_none();
        if out.intact {
            let records: Vec<Record> = parsed.into_iter().flatten().collect();
            for a in actions(&records) {
                let c = &mut out.actions;
                match a.status {
                    ActionStatus::Done => c.done += 1,
                    ActionStatus::PartlyDone => c.partly_done += 1,
                    ActionStatus::NotDone => c.not_done += 1,
                    ActionStatus::Unknown => c.unknown += 1,
                }
                if a.status == ActionStatus::Unknown {
                    out.unknown_actions.push(a);
                }
            }
        }
        Ok(out)
    }
}

/// Where a log's last record stands against the head the adapter confirmed.
enum End {
    Confirmed,
    /// The one record after the head, written by an append that crashed before confirming it.
    Unconfirmed,
}

/// The one rule for how a log may end, which append and verify both apply; `Err` says why not.
fn end_against_head(head: &AuditHead, last: Option<&Record>) -> Result<End, String> {
    match last {
        None => Err(format!(
            "the log is empty, but the adapter confirmed {} records: it was truncated or replaced",
            head.seq
        )),
        Some(r) if r.seq < head.seq => Err(format!(
            "the log ends at record {}, but the adapter confirmed {} records: its tail was cut off",
            r.seq, head.seq
        )),
        Some(r) if r.seq == head.seq && r.mac == head.mac => Ok(End::Confirmed),
        Some(r) if r.seq == head.seq + 1 && r.prev == head.mac => Ok(End::Unconfirmed),
        Some(r) if r.seq > head.seq + 1 => Err(format!(
            "the log has records beyond the {} the adapter confirmed",
            head.seq
        )),
        Some(_) => {
            Err("the last record is not the one the adapter confirmed: the log was replaced".into())
        }
    }
}

/// Drops a partial last line (a torn write that was never confirmed) and returns the last record.
fn cut_torn_tail_and_read_last(f: &mut File) -> io::Result<Option<Record>> {
    let len = f.metadata()?.len();
    let start = len.saturating_sub(TAIL);
    f.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::new();
    f.read_to_end(&mut tail)?;
    let complete = match tail.iter().rposition(|b| *b == b'\n') {
        Some(i) => i + 1,
        None if start == 0 => 0,
        None => {
            return Err(io::Error::other(
                "the last audit record is longer than 64 KiB",
            ))
        }
    };
    if complete < tail.len() {
        f.set_len(start + complete as u64)?;
        f.sync_all()?;
    }
    let body = &tail[..complete];
    let last_line = body
        .strip_suffix(b"\n")
        .unwrap_or(body)
        .rsplit(|b| *b == b'\n')
        .next()
        .unwrap_or_default();
    if last_line.is_empty() {
        return Ok(None);
    }
    Ok(serde_json::from_slice(last_line).ok())
}

fn current_user() -> String {
    let uid = nix::unistd::getuid();
    match nix::unistd::User::from_uid(uid) {
        Ok(Some(user)) => user.name,
        _ => format!("uid {uid}"),
    }
}

fn claimed_sudo_user() -> Option<String> {
    std::env::var("SUDO_USER").ok().filter(|u| !u.is_empty())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

pub use infra::time::utc_now;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{Layout, Simulator};

    fn setup() -> (tempfile::TempDir, AuditLog) {
        let t = tempfile::tempdir().unwrap();
        let sim = Simulator::init(t.path().join("sim"), &Layout::default(), false).unwrap();
        let log = AuditLog::new(t.path().join("audit.log"), "test", sim);
        (t, log)
    }

    fn ev(n: usize) -> Event {
        Event {
            event: "generate".into(),
            command: "zkey generate".into(),
            keys: vec![format!("k{n}")],
            result: "ok".into(),
            ..Event::default()
        }
    }

    /// The start of a record, as a crash or a full disk leaves it.
    fn append_torn_line(log: &AuditLog) {
        let mut f = OpenOptions::new().append(true).open(log.path()).unwrap();
        f.write_all(b"{\"seq\":2,\"ti").unwrap();
    }

    fn lines(log: &AuditLog) -> Vec<String> {
        std::fs::read_to_string(log.path())
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn write(log: &AuditLog, lines: &[String]) {
        let mut t = lines.join("\n");
        if !lines.is_empty() {
            t.push('\n');
        }
        std::fs::write(log.path(), t).unwrap();
    }

    #[test]
    fn an_untouched_log_verifies() {
        let (_t, log) = setup();
        assert!(
            log.verify().unwrap().intact,
            "an empty log of a fresh adapter"
        );
        for i in 0..5 {
            log.append(ev(i)).unwrap();
        }
        let v = log.verify().unwrap();
        assert!(v.intact && v.records == 5 && !v.unconfirmed_tail, "{v:?}");
        assert_eq!(log.records().unwrap()[4].event.keys, ["k4"]);
    }

    #[test]
    fn edits_removals_reorders_forgeries_and_truncation_are_detected() {
        let (_t, log) = setup();
        for i in 0..5 {
            log.append(ev(i)).unwrap();
        }
        let orig = lines(&log);
        let check = |mutated: Vec<String>, line: usize, needle: &str| {
            write(&log, &mutated);
            let v = log.verify().unwrap();
            assert!(!v.intact, "undetected: {needle}");
            let b = v.first_break.unwrap();
            assert_eq!(b.line, line, "{b:?}");
            assert!(b.why.contains(needle), "{b:?}");
        };
        check(
            {
                let mut l = orig.clone();
                l[2] = l[2].replace("\"k2\"", "\"evil\"");
                l
            },
            3,
            "MAC",
        );
        check(
            {
                let mut l = orig.clone();
                l.remove(1);
                l
            },
            2,
            "sequence",
        );
        check(
            {
                let mut l = orig.clone();
                l.swap(1, 2);
                l
            },
            2,
            "sequence",
        );
        check(orig[..3].to_vec(), 4, "cut off");
        check(Vec::new(), 1, "truncated");
        // A forged record with a valid-looking chain but no key to make its MAC.
        let mut forged: Record = serde_json::from_str(&orig[4]).unwrap();
        forged.seq = 6;
        forged.prev = forged.mac.clone();
        forged.event.keys = vec!["forged".into()];
        let mut l = orig.clone();
        l.push(serde_json::to_string(&forged).unwrap());
        check(l, 6, "MAC");
        // Renumbered after removing a record: the chain gives it away.
        let mut l = orig.clone();
        l.remove(1);
        for (i, x) in l.iter_mut().enumerate() {
            let mut r: Record = serde_json::from_str(x).unwrap();
            r.seq = i as u64 + 1;
            *x = serde_json::to_string(&r).unwrap();
        }
        check(l, 2, "chain");
        write(&log, &orig);
        assert!(log.verify().unwrap().intact);
    }

    #[test]
    fn a_torn_last_line_is_cut_and_an_unconfirmed_record_accepted() {
        let (_t, log) = setup();
        log.append(ev(0)).unwrap();
        append_torn_line(&log);
        log.append(ev(1)).unwrap();
        let v = log.verify().unwrap();
        assert!(v.intact && v.records == 2, "{v:?}");
        // A record written whose head update never happened (a crash in between).
        let last: Record = serde_json::from_str(lines(&log).last().unwrap()).unwrap();
        let mut r = Record {
            seq: 3,
            prev: last.mac.clone(),
            mac: String::new(),
            ..last
        };
        r.mac = hex::encode(log.auth.macs("test", &[&r.signed_bytes()]).unwrap()[0]);
        let mut l = lines(&log);
        l.push(serde_json::to_string(&r).unwrap());
        write(&log, &l);
        let v = log.verify().unwrap();
        assert!(v.intact && v.unconfirmed_tail, "{v:?}");
    }

    #[test]
    fn a_cut_tail_is_not_hidden_by_later_appends() {
        let (_t, log) = setup();
        for i in 0..5 {
            log.append(ev(i)).unwrap();
        }
        let cut = lines(&log)[..3].to_vec();
        write(&log, &cut);
        for i in 5..7 {
            let e = log.append(ev(i)).unwrap_err();
            assert!(e.to_string().contains("tail was cut off"), "{e}");
        }
        assert_eq!(lines(&log), cut, "nothing was appended past the gap");
        let v = log.verify().unwrap();
        assert!(!v.intact, "{v:?}");
        write(&log, &[]);
        let e = log.append(ev(9)).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
    }

    #[test]
    fn a_replaced_last_record_is_refused() {
        let (_t, log) = setup();
        for i in 0..3 {
            log.append(ev(i)).unwrap();
        }
        let mut l = lines(&log);
        let mut r: Record = serde_json::from_str(&l[2]).unwrap();
        r.mac = GENESIS.into();
        l[2] = serde_json::to_string(&r).unwrap();
        write(&log, &l);
        let e = log.append(ev(9)).unwrap_err();
        assert!(e.to_string().contains("replaced"), "{e}");
        assert_eq!(lines(&log), l, "nothing was appended");
    }

    #[test]
    fn records_without_intents_sign_as_before_and_verify() {
        let (_t, log) = setup();
        log.append(ev(0)).unwrap();
        let line = &lines(&log)[0];
        assert!(
            !line.contains("phase") && !line.contains("intent_id"),
            "a record that stands alone has the older format: {line}"
        );
        let v = log.verify().unwrap();
        assert!(v.intact && v.actions == ActionCounts::default(), "{v:?}");
    }

    #[test]
    fn each_intent_is_done_partly_done_not_done_or_unknown() {
        let (_t, log) = setup();
        let result = |i: &Intent, r: &str| {
            log.append_result(
                i,
                Event {
                    result: r.into(),
                    ..i.event.clone()
                },
            )
            .unwrap();
        };
        let done = log.append_intent(ev(1)).unwrap();
        let partly = log.append_intent(ev(2)).unwrap();
        let not_done = log.append_intent(ev(3)).unwrap();
        result(&partly, "ok");
        result(&done, "ok");
        result(&partly, "failed: k2: no");
        result(&not_done, "failed: refused");
        let unknown = log.append_intent(ev(4)).unwrap();
        assert_ne!(done.id, partly.id);
        let v = log.verify().unwrap();
        assert!(v.intact, "{v:?}");
        assert_eq!(
            v.actions,
            ActionCounts {
                done: 1,
                partly_done: 1,
                not_done: 1,
                unknown: 1
            }
        );
        assert_eq!(v.unknown_actions.len(), 1);
        let u = &v.unknown_actions[0];
        assert_eq!((u.intent_id.as_str(), u.seq), (unknown.id.as_str(), 8));
        assert_eq!(u.keys, ["k4"]);
        let recs = log.records().unwrap();
        assert_eq!(recs[0].phase, Some(Phase::Intent));
        assert_eq!(recs[0].event.result, "pending");
        let st: Vec<ActionStatus> = actions(&recs).iter().map(|a| a.status).collect();
        use ActionStatus::*;
        assert_eq!(st, [Done, PartlyDone, NotDone, Unknown]);
    }

    #[test]
    fn an_intent_refused_by_a_cut_log_is_not_written() {
        let (_t, log) = setup();
        for i in 0..3 {
            log.append(ev(i)).unwrap();
        }
        let cut = lines(&log)[..2].to_vec();
        write(&log, &cut);
        let e = log.append_intent(ev(9)).unwrap_err();
        assert!(e.to_string().contains("tail was cut off"), "{e}");
        assert_eq!(lines(&log), cut);
    }

    #[test]
    fn a_torn_line_is_reported_precisely_and_then_removed() {
        let (_t, log) = setup();
        log.append(ev(0)).unwrap();
        append_torn_line(&log);
        let v = log.verify().unwrap();
        assert!(v.intact && v.torn_tail && v.records == 1, "{v:?}");
        log.append(ev(1)).unwrap();
        let v = log.verify().unwrap();
        assert!(v.intact && !v.torn_tail && v.records == 2, "{v:?}");
    }
}
