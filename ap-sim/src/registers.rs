//! Master key registers of one APQN, with the state transitions the hardware allows.
//!
//! CCA keeps NEW, CURRENT and OLD registers per master key type. Key parts build NEW up
//! (FIRST: partial, MIDDLE: XORed in, FINAL: full); SET moves CURRENT to OLD and NEW to CURRENT
//! and empties NEW, destroying the previous OLD. EP11 has one wrapping key: NEW goes
//! empty -> uncommitted -> committed and SET makes it CURRENT; there is no OLD, so blobs under
//! the previous wrapping key die at that moment.
//!
//! Every operation checks its precondition first and changes nothing when it fails, so a group
//! operation over several APQNs can check all of them before touching any.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::mkvp::{MasterKey, Mkvp};

/// The master key types the simulator models. `Asym` is rendered (as the kernel does) but never
/// loaded.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MkType {
    Aes,
    Apka,
    Ep11,
}

impl MkType {
    pub fn name(self) -> &'static str {
        match self {
            MkType::Aes => "aes",
            MkType::Apka => "apka",
            MkType::Ep11 => "ep11",
        }
    }
}

impl std::fmt::Display for MkType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for MkType {
    type Err = RegisterError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "aes" => Ok(MkType::Aes),
            "apka" => Ok(MkType::Apka),
            "ep11" | "wk" => Ok(MkType::Ep11),
            _ => Err(RegisterError::UnknownMkType(s.to_string())),
        }
    }
}

/// Which key part a TKE load is.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyPart {
    First,
    Middle,
    Final,
}

impl std::str::FromStr for KeyPart {
    type Err = RegisterError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "first" => Ok(KeyPart::First),
            "middle" => Ok(KeyPart::Middle),
            "final" | "last" => Ok(KeyPart::Final),
            _ => Err(RegisterError::UnknownPart(s.to_string())),
        }
    }
}

/// Why a register operation was refused. Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    #[error("unknown master key type '{0}': use aes, apka or ep11")]
    UnknownMkType(String),
    #[error("unknown key part '{0}': use first, middle or final")]
    UnknownPart(String),
    #[error("the NEW register is {0}: a FIRST key part needs it empty (run 'ap-sim tke clear-new' first)")]
    FirstNeedsEmpty(&'static str),
    #[error("the NEW register is {0}: load the FIRST key part before a MIDDLE or FINAL one")]
    PartBeforeFirst(&'static str),
    #[error("the NEW register is {0}: SET needs it {1} (load all key parts{2} first)")]
    SetNeedsNew(&'static str, &'static str, &'static str),
    #[error("the NEW register is {0}: only an uncommitted wrapping key can be committed")]
    CommitNeedsUncommitted(&'static str),
    #[error("the NEW register is {0}: a random key can only be loaded into an empty NEW register (run 'ap-sim tke clear-new' first)")]
    RandomNeedsEmpty(&'static str),
}

/// The NEW register of a CCA master key type.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(tag = "state", content = "value", rename_all = "lowercase")]
pub enum CcaNew {
    #[default]
    Empty,
    Partial(MasterKey),
    Full(MasterKey),
}

/// NEW, CURRENT and OLD of one CCA master key type on one APQN.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CcaRegisters {
    pub new: CcaNew,
    pub current: Option<MasterKey>,
    pub old: Option<MasterKey>,
}

/// The NEW wrapping key register of an EP11 domain. `Partial` is the simulator's name for key
/// parts loaded but not yet final; the kernel has no word for it and shows it as empty.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(tag = "state", content = "value", rename_all = "lowercase")]
pub enum Ep11New {
    #[default]
    Empty,
    Partial(MasterKey),
    Uncommitted(MasterKey),
    Committed(MasterKey),
}

/// The wrapping key registers of one EP11 domain: CURRENT and NEW, no OLD.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Ep11Registers {
    pub new: Ep11New,
    pub current: Option<MasterKey>,
}

/// The state words of a register, as sysfs and `tke status` print them.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegState {
    Empty,
    Partial,
    Full,
    Uncommitted,
    Committed,
    Valid,
    Invalid,
}

impl RegState {
    pub fn word(self) -> &'static str {
        match self {
            RegState::Empty => "empty",
            RegState::Partial => "partial",
            RegState::Full => "full",
            RegState::Uncommitted => "uncommitted",
            RegState::Committed => "committed",
            RegState::Valid => "valid",
            RegState::Invalid => "invalid",
        }
    }
}

impl std::fmt::Display for RegState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.word())
    }
}

/// One register as seen from outside: its state and, where the key is complete, its pattern.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RegView {
    pub state: RegState,
    pub mkvp: Option<Mkvp>,
}

fn view_cur(k: &Option<MasterKey>, pat: fn(&MasterKey) -> Mkvp) -> RegView {
    match k {
        Some(k) => RegView {
            state: RegState::Valid,
            mkvp: Some(pat(k)),
        },
        None => RegView {
            state: RegState::Invalid,
            mkvp: None,
        },
    }
}

impl CcaRegisters {
    pub fn with_current(k: MasterKey) -> Self {
        CcaRegisters {
            new: CcaNew::Empty,
            current: Some(k),
            old: None,
        }
    }

    fn new_word(&self) -> &'static str {
        self.new_view().state.word()
    }

    pub fn new_view(&self) -> RegView {
        match &self.new {
            CcaNew::Empty => RegView {
                state: RegState::Empty,
                mkvp: None,
            },
            // The pattern of a partial key means nothing; the kernel prints zeros.
            CcaNew::Partial(_) => RegView {
                state: RegState::Partial,
                mkvp: None,
            },
            CcaNew::Full(k) => RegView {
                state: RegState::Full,
                mkvp: Some(k.cca_mkvp()),
            },
        }
    }
    pub fn current_view(&self) -> RegView {
        view_cur(&self.current, MasterKey::cca_mkvp)
    }
    pub fn old_view(&self) -> RegView {
        view_cur(&self.old, MasterKey::cca_mkvp)
    }

    /// Checks that `part` may be loaded now.
    pub fn check_part(&self, part: KeyPart) -> Result<(), RegisterError> {
        match (part, &self.new) {
            (KeyPart::First, CcaNew::Empty) => Ok(()),
            (KeyPart::First, _) => Err(RegisterError::FirstNeedsEmpty(self.new_word())),
            (_, CcaNew::Partial(_)) => Ok(()),
            (_, _) => Err(RegisterError::PartBeforeFirst(self.new_word())),
        }
    }

    pub fn load_part(&mut self, part: KeyPart, value: &MasterKey) -> Result<(), RegisterError> {
        self.check_part(part)?;
        self.new = match (part, std::mem::take(&mut self.new)) {
            (KeyPart::First, _) => CcaNew::Partial(value.clone()),
            (p, CcaNew::Partial(mut acc)) => {
                acc.xor_in(value);
                if p == KeyPart::Final {
                    CcaNew::Full(acc)
                } else {
                    CcaNew::Partial(acc)
                }
            }
            _ => unreachable!("check_part accepted"),
        };
        Ok(())
    }

    pub fn check_random(&self) -> Result<(), RegisterError> {
        match self.new {
            CcaNew::Empty => Ok(()),
            _ => Err(RegisterError::RandomNeedsEmpty(self.new_word())),
        }
    }

    /// Loads a complete key into an empty NEW register (a TKE's random key generation).
    pub fn load_full(&mut self, value: &MasterKey) -> Result<(), RegisterError> {
        self.check_random()?;
        self.new = CcaNew::Full(value.clone());
        Ok(())
    }

    pub fn check_set(&self) -> Result<(), RegisterError> {
        match self.new {
            CcaNew::Full(_) => Ok(()),
            _ => Err(RegisterError::SetNeedsNew(self.new_word(), "full", "")),
        }
    }

    /// SET: CURRENT -> OLD, NEW -> CURRENT, NEW emptied. The previous OLD is gone.
    pub fn set(&mut self) -> Result<(), RegisterError> {
        self.check_set()?;
        let CcaNew::Full(k) = std::mem::take(&mut self.new) else {
            unreachable!("check_set accepted")
        };
        self.old = self.current.replace(k);
        Ok(())
    }

    pub fn clear_new(&mut self) {
        self.new = CcaNew::Empty;
    }
}

impl Ep11Registers {
    pub fn with_current(k: MasterKey) -> Self {
        Ep11Registers {
            new: Ep11New::Empty,
            current: Some(k),
        }
    }

    fn new_word(&self) -> &'static str {
        match self.new {
            Ep11New::Empty => "empty",
            Ep11New::Partial(_) => "partial",
            Ep11New::Uncommitted(_) => "uncommitted",
            Ep11New::Committed(_) => "committed",
        }
    }

    /// NEW as the simulator knows it (`partial` included).
    pub fn new_view(&self) -> RegView {
        match &self.new {
            Ep11New::Empty => RegView {
                state: RegState::Empty,
                mkvp: None,
            },
            Ep11New::Partial(_) => RegView {
                state: RegState::Partial,
                mkvp: None,
            },
            Ep11New::Uncommitted(k) => RegView {
                state: RegState::Uncommitted,
                mkvp: Some(k.ep11_wkvp()),
            },
            Ep11New::Committed(k) => RegView {
                state: RegState::Committed,
                mkvp: Some(k.ep11_wkvp()),
            },
        }
    }
    pub fn current_view(&self) -> RegView {
        view_cur(&self.current, MasterKey::ep11_wkvp)
    }

    pub fn check_part(&self, part: KeyPart) -> Result<(), RegisterError> {
        match (part, &self.new) {
            (KeyPart::First, Ep11New::Empty) => Ok(()),
            (KeyPart::First, _) => Err(RegisterError::FirstNeedsEmpty(self.new_word())),
            (_, Ep11New::Partial(_)) => Ok(()),
            (_, _) => Err(RegisterError::PartBeforeFirst(self.new_word())),
        }
    }

    /// Key parts combine as for CCA; the FINAL part leaves the key uncommitted.
    pub fn load_part(&mut self, part: KeyPart, value: &MasterKey) -> Result<(), RegisterError> {
        self.check_part(part)?;
        self.new = match (part, std::mem::take(&mut self.new)) {
            (KeyPart::First, _) => Ep11New::Partial(value.clone()),
            (p, Ep11New::Partial(mut acc)) => {
                acc.xor_in(value);
                if p == KeyPart::Final {
                    Ep11New::Uncommitted(acc)
                } else {
                    Ep11New::Partial(acc)
                }
            }
            _ => unreachable!("check_part accepted"),
        };
        Ok(())
    }

    pub fn check_random(&self) -> Result<(), RegisterError> {
        match self.new {
            Ep11New::Empty => Ok(()),
            _ => Err(RegisterError::RandomNeedsEmpty(self.new_word())),
        }
    }

    /// Loads a complete wrapping key, uncommitted.
    pub fn load_full(&mut self, value: &MasterKey) -> Result<(), RegisterError> {
        self.check_random()?;
        self.new = Ep11New::Uncommitted(value.clone());
        Ok(())
    }

    pub fn check_commit(&self) -> Result<(), RegisterError> {
        match self.new {
            Ep11New::Uncommitted(_) => Ok(()),
            _ => Err(RegisterError::CommitNeedsUncommitted(self.new_word())),
        }
    }

    pub fn commit(&mut self) -> Result<(), RegisterError> {
        self.check_commit()?;
        let Ep11New::Uncommitted(k) = std::mem::take(&mut self.new) else {
            unreachable!("check_commit accepted")
        };
        self.new = Ep11New::Committed(k);
        Ok(())
    }

    pub fn check_set(&self) -> Result<(), RegisterError> {
        match self.new {
            Ep11New::Committed(_) => Ok(()),
            _ => Err(RegisterError::SetNeedsNew(
                self.new_word(),
                "committed",
                " and commit them",
            )),
        }
    }

    /// SET (finalize): NEW -> CURRENT. The previous wrapping key is gone: EP11 has no OLD.
    pub fn set(&mut self) -> Result<(), RegisterError> {
        self.check_set()?;
        let Ep11New::Committed(k) = std::mem::take(&mut self.new) else {
            unreachable!("check_set accepted")
        };
        self.current = Some(k);
        Ok(())
    }

    pub fn clear_new(&mut self) {
        self.new = Ep11New::Empty;
    }
}

/// The checksum digit a TKE shows for a key part so a custodian can check what was typed:
/// the first byte of SHA-256(0x00 || part), two hex digits.
pub fn part_checksum(part: &MasterKey) -> u8 {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(part.as_bytes());
    h.finalize()[0]
}

/// The key part verification pattern a TKE shows beside the checksum (the CCA pattern of the
/// part's value on its own).
pub fn part_vp(part: &MasterKey) -> Mkvp {
    part.cca_mkvp()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn k(b: u8) -> MasterKey {
        MasterKey::from_bytes([b; 32])
    }

    #[test]
    fn parts_combine_by_xor_and_set_rotates() {
        let mut r = CcaRegisters::with_current(k(1));
        r.load_part(KeyPart::First, &k(0x0f)).unwrap();
        assert_eq!(r.new_view().state, RegState::Partial);
        assert_eq!(r.new_view().mkvp, None);
        r.load_part(KeyPart::Middle, &k(0xf0)).unwrap();
        r.load_part(KeyPart::Final, &k(0x01)).unwrap();
        assert_eq!(
            r.new_view(),
            RegView {
                state: RegState::Full,
                mkvp: Some(k(0xfe).cca_mkvp())
            }
        );
        r.set().unwrap();
        assert_eq!(r.current_view().mkvp, Some(k(0xfe).cca_mkvp()));
        assert_eq!(r.old_view().mkvp, Some(k(1).cca_mkvp()));
        assert_eq!(r.new_view().state, RegState::Empty);
    }

    #[test]
    fn refused_operations_change_nothing() {
        let mut r = CcaRegisters::with_current(k(1));
        assert_eq!(
            r.load_part(KeyPart::Final, &k(2)),
            Err(RegisterError::PartBeforeFirst("empty"))
        );
        assert_eq!(
            r.load_part(KeyPart::Middle, &k(2)),
            Err(RegisterError::PartBeforeFirst("empty"))
        );
        assert!(r.set().is_err());
        assert_eq!(r.new_view().state, RegState::Empty);
        r.load_part(KeyPart::First, &k(2)).unwrap();
        assert!(r.set().is_err(), "SET with a partial NEW");
        assert!(r.load_part(KeyPart::First, &k(3)).is_err());
        assert!(r.load_full(&k(3)).is_err());
        assert_eq!(r.current_view().mkvp, Some(k(1).cca_mkvp()));
    }

    #[test]
    fn ep11_needs_commit_and_has_no_old() {
        let mut r = Ep11Registers::with_current(k(1));
        r.load_full(&k(2)).unwrap();
        assert_eq!(r.new_view().state, RegState::Uncommitted);
        assert!(r.set().is_err());
        r.commit().unwrap();
        assert!(r.commit().is_err());
        r.set().unwrap();
        assert_eq!(r.current_view().mkvp, Some(k(2).ep11_wkvp()));
        assert_eq!(r.new_view().state, RegState::Empty);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Part(KeyPart, u8),
        Random(u8),
        Set,
        Clear,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (
                prop_oneof![
                    Just(KeyPart::First),
                    Just(KeyPart::Middle),
                    Just(KeyPart::Final)
                ],
                any::<u8>()
            )
                .prop_map(|(p, b)| Op::Part(p, b)),
            any::<u8>().prop_map(Op::Random),
            Just(Op::Set),
            Just(Op::Clear),
        ]
    }

    proptest! {
        /// Against a plain model: a key is usable exactly while it is CURRENT or OLD, a refused
        /// operation leaves every register as it was, and SET needs a full NEW.
        #[test]
        fn cca_registers_follow_the_model(ops in proptest::collection::vec(op(), 0..40)) {
            let mut r = CcaRegisters::with_current(k(0));
            let mut model_cur = Some(k(0).cca_mkvp());
            let mut model_old: Option<Mkvp> = None;
            for o in ops {
                let before = (r.new_view(), r.current_view(), r.old_view());
                let res = match &o {
                    Op::Part(p, b) => r.load_part(*p, &k(*b)),
                    Op::Random(b) => r.load_full(&k(*b)),
                    Op::Set => {
                        let full = before.0.mkvp;
                        let res = r.set();
                        if res.is_ok() {
                            model_old = model_cur;
                            model_cur = full;
                        }
                        res
                    }
                    Op::Clear => { r.clear_new(); Ok(()) }
                };
                if res.is_err() {
                    prop_assert_eq!(before, (r.new_view(), r.current_view(), r.old_view()));
                }
                prop_assert_eq!(r.current_view().mkvp, model_cur);
                prop_assert_eq!(r.old_view().mkvp, model_old);
            }
        }
    }
}
