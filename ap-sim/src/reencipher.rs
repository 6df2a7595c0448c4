//! How a re-encipher is asked for, once for the whole suite: a way between master key
//! registers and a mode, made from the same five flags (`--from-old`, `--to-new`, `--staged`,
//! `--in-place`, `--complete`) by every binary with one conflict rule (ripgrep's "low args to
//! high args": nothing downstream looks at a raw flag again).

use serde::Serialize;

pub use crate::hsm::Direction;

/// Which way; `None` in a [`Request`] picks it per key from the register its master key is in
/// (OLD: from OLD; CURRENT with a NEW key loaded: to NEW).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Way {
    ToNew,
    FromOld,
    /// `-o -n`: OLD -> CURRENT, then CURRENT -> NEW (repository keys and key files only).
    FromOldToNew,
}

impl Way {
    /// The single register step, for the tools that do one step at a time.
    pub fn direction(self) -> Option<Direction> {
        match self {
            Way::ToNew => Some(Direction::ToNew),
            Way::FromOld => Some(Direction::FromOld),
            Way::FromOldToNew => None,
        }
    }
}

/// How the result is stored; `None` in a [`Request`]: staged towards NEW, in place from OLD,
/// and complete when a stage is pending (the reference's defaults).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Beside the live key; completed after the SET.
    Staged,
    /// Replacing the live key at once.
    InPlace,
    /// Promote a staged key after the SET.
    Complete,
}

/// A re-encipher as asked for.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    pub way: Option<Way>,
    pub mode: Option<Mode>,
}

/// The five flags as a command line gives them.
#[derive(Copy, Clone, Debug, Default)]
pub struct Flags {
    pub from_old: bool,
    pub to_new: bool,
    pub staged: bool,
    pub in_place: bool,
    pub complete: bool,
}

/// Flags that contradict each other: a usage error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FlagError {
    #[error("give one of --staged, --in-place and --complete")]
    Modes,
    #[error("--complete installs what was staged: it takes no direction (--from-old, --to-new)")]
    CompleteWithDirection,
    #[error("give one direction: --from-old (after the SET) or --to-new (before it)")]
    TwoDirections,
}

impl Flags {
    /// The one conflict rule: at most one mode; `--complete` without a direction; both
    /// directions mean OLD -> CURRENT -> NEW (which [`Request::one_step`] refuses where a tool
    /// does one step at a time).
    pub fn request(self) -> Result<Request, FlagError> {
        let mode = match (self.staged, self.in_place, self.complete) {
            (false, false, false) => None,
            (true, false, false) => Some(Mode::Staged),
            (false, true, false) => Some(Mode::InPlace),
            (false, false, true) => Some(Mode::Complete),
            _ => return Err(FlagError::Modes),
        };
        let way = match (self.from_old, self.to_new) {
            (false, false) => None,
            (true, false) => Some(Way::FromOld),
            (false, true) => Some(Way::ToNew),
            (true, true) => Some(Way::FromOldToNew),
        };
        if mode == Some(Mode::Complete) && way.is_some() {
            return Err(FlagError::CompleteWithDirection);
        }
        Ok(Request { way, mode })
    }
}

impl Request {
    /// The direction of a tool that does one register step at a time (LUKS2 volumes, the KMS
    /// plug-in's keys): `-o -n` is refused there.
    pub fn one_step(self) -> Result<Option<Direction>, FlagError> {
        match self.way {
            None => Ok(None),
            Some(w) => w.direction().map(Some).ok_or(FlagError::TwoDirections),
        }
    }

    /// Staging (or re-enciphering in place) towards NEW: what the cross-check guards.
    pub fn towards_new(self) -> bool {
        self.way.is_some_and(|w| w != Way::FromOld) && self.mode != Some(Mode::Complete)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(from_old: bool, to_new: bool, staged: bool, in_place: bool, complete: bool) -> Flags {
        Flags {
            from_old,
            to_new,
            staged,
            in_place,
            complete,
        }
    }

    #[test]
    fn one_rule_for_every_combination() {
        for bits in 0u8..32 {
            let b = |i: u8| bits & (1 << i) != 0;
            let flags = f(b(0), b(1), b(2), b(3), b(4));
            let modes = [b(2), b(3), b(4)].iter().filter(|x| **x).count();
            let r = flags.request();
            match r {
                Err(FlagError::Modes) => assert!(modes > 1),
                Err(FlagError::CompleteWithDirection) => {
                    assert!(modes == 1 && b(4) && (b(0) || b(1)))
                }
                Err(FlagError::TwoDirections) => unreachable!("only one_step says that"),
                Ok(req) => {
                    assert!(modes <= 1);
                    assert_eq!(req.mode == Some(Mode::Complete), b(4));
                    assert_eq!(req.way == Some(Way::FromOldToNew), b(0) && b(1));
                    assert_eq!(req.one_step().is_err(), req.way == Some(Way::FromOldToNew));
                }
            }
        }
    }

    #[test]
    fn seed_004_flags() {
        let staged = f(false, true, true, false, false).request().unwrap();
        assert_eq!(staged.way, Some(Way::ToNew));
        assert_eq!(staged.mode, Some(Mode::Staged));
        assert!(staged.towards_new());
        let complete = f(false, false, false, false, true).request().unwrap();
        assert_eq!(
            complete,
            Request {
                way: None,
                mode: Some(Mode::Complete)
            }
        );
        assert!(!complete.towards_new());
    }
}
