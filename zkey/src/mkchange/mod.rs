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
//! The module is split by concern: this file has the operation's typed state and its one
//! transition function ([`State::next`]); `store` keeps operations on disk, `plan` reads the
//! registers and works out what a change touches, `run` has the steps.
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

mod plan;
mod run;
mod store;

pub use plan::*;
pub use run::*;
pub use store::*;

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
