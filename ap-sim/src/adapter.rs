//! Adapters (cards), their domains (queues) and the master key registers each queue holds:
//! the simulated hardware, as one value that the state file stores and the sysfs tree renders.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::apqn::Apqn;
use crate::registers::{CcaRegisters, Ep11Registers, MkType};

/// What a card does: the letter at the end of its type (`CEX8C`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// `A`: accelerator, no master keys.
    Accelerator,
    /// `C`: CCA coprocessor.
    Cca,
    /// `P`: EP11 coprocessor.
    Ep11,
}

impl Mode {
    /// lszcrypt's MODE column.
    pub fn lszcrypt_name(self) -> &'static str {
        match self {
            Mode::Accelerator => "Accelerator",
            Mode::Cca => "CCA-Coproc",
            Mode::Ep11 => "EP11-Coproc",
        }
    }
    pub fn letter(self) -> char {
        match self {
            Mode::Accelerator => 'A',
            Mode::Cca => 'C',
            Mode::Ep11 => 'P',
        }
    }
    /// The master key types a queue of this mode holds.
    pub fn mk_types(self) -> &'static [MkType] {
        match self {
            Mode::Accelerator => &[],
            Mode::Cca => &[MkType::Aes, MkType::Apka],
            Mode::Ep11 => &[MkType::Ep11],
        }
    }
}

/// A card type such as `CEX8C`: generation 4..=8 and a mode.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct CardType {
    generation: u8,
    mode: Mode,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CardTypeError {
    #[error("'{0}' is not a card type: use CEX<n><A|C|P> with n from 4 to 8, e.g. CEX8C (CCA), CEX8P (EP11), CEX8A (accelerator)")]
    Format(String),
}

impl CardType {
    pub const MIN_GENERATION: u8 = 4;
    pub const MAX_GENERATION: u8 = 8;

    pub fn new(generation: u8, mode: Mode) -> Option<Self> {
        (Self::MIN_GENERATION..=Self::MAX_GENERATION)
            .contains(&generation)
            .then_some(CardType { generation, mode })
    }
    pub fn generation(self) -> u8 {
        self.generation
    }
    pub fn mode(self) -> Mode {
        self.mode
    }
    /// The kernel's `hwtype`: 10 for CEX4 up to 14 for CEX8.
    pub fn hwtype(self) -> u8 {
        self.generation + 6
    }
    /// The kernel's `ap_functions` bits for this mode (APSC, MEX4K, CRT4K, COPRO, ACCEL, EP11, APXA).
    pub fn ap_functions(self) -> u32 {
        match self.mode {
            Mode::Cca => 0x9200_0000,
            Mode::Accelerator => 0xEA00_0000,
            Mode::Ep11 => 0x8600_0000,
        }
    }
}

impl fmt::Display for CardType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CEX{}{}", self.generation, self.mode.letter())
    }
}

impl FromStr for CardType {
    type Err = CardTypeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || CardTypeError::Format(s.to_string());
        let u = s.trim().to_ascii_uppercase();
        let rest = u.strip_prefix("CEX").ok_or_else(err)?;
        // By characters, not bytes: the last one may be any character of a sysfs `type` file
        // or a command line (splitting "CEX0ճ" at its last byte panicked; found by fuzzing).
        let mut chars = rest.chars();
        let letter = chars.next_back().ok_or_else(err)?;
        let generation: u8 = chars.as_str().parse().map_err(|_| err())?;
        let mode = match letter {
            'A' => Mode::Accelerator,
            'C' => Mode::Cca,
            'P' => Mode::Ep11,
            _ => return Err(err()),
        };
        CardType::new(generation, mode).ok_or_else(err)
    }
}

impl Serialize for CardType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for CardType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// The master key registers a queue holds, by mode.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum QueueKeys {
    Accelerator,
    Cca {
        aes: CcaRegisters,
        apka: CcaRegisters,
    },
    Ep11 {
        wk: Ep11Registers,
    },
}

/// One domain of a card: an AP queue.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Queue {
    pub online: bool,
    pub chkstop: bool,
    pub keys: QueueKeys,
}

/// One adapter.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Card {
    #[serde(rename = "type")]
    pub card_type: CardType,
    pub serialnr: String,
    pub online: bool,
    pub config: bool,
    pub chkstop: bool,
    /// EP11 only: the API ordinal and firmware version sysfs shows.
    #[serde(default)]
    pub api_ordinal: u32,
    #[serde(default)]
    pub fw_version: (u32, u32),
    pub queues: BTreeMap<u16, Queue>,
}

impl Card {
    pub fn mode(&self) -> Mode {
        self.card_type.mode()
    }
}

/// Whether a queue can take requests, and if not, why: the first reason that applies.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Online,
    Offline,
    Deconfig,
    Chkstop,
}

impl Status {
    pub fn word(self) -> &'static str {
        match self {
            Status::Online => "online",
            Status::Offline => "offline",
            Status::Deconfig => "deconfig",
            Status::Chkstop => "chkstop",
        }
    }
}

/// The whole simulated AP bus.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Bus {
    pub cards: BTreeMap<u8, Card>,
}

impl Bus {
    pub fn card(&self, id: u8) -> Option<&Card> {
        self.cards.get(&id)
    }
    pub fn queue(&self, apqn: Apqn) -> Option<(&Card, &Queue)> {
        let card = self.cards.get(&apqn.card())?;
        Some((card, card.queues.get(&apqn.domain())?))
    }
    pub fn queue_mut(&mut self, apqn: Apqn) -> Option<&mut Queue> {
        self.cards
            .get_mut(&apqn.card())?
            .queues
            .get_mut(&apqn.domain())
    }
    /// Every APQN, in card then domain order.
    pub fn apqns(&self) -> impl Iterator<Item = Apqn> + '_ {
        self.cards
            .iter()
            .flat_map(|(c, card)| card.queues.keys().map(move |d| Apqn::new(*c, *d)))
    }
    /// A card's status: deconfigured and check-stopped win over offline.
    pub fn card_status(card: &Card) -> Status {
        if !card.config {
            Status::Deconfig
        } else if card.chkstop {
            Status::Chkstop
        } else if !card.online {
            Status::Offline
        } else {
            Status::Online
        }
    }
    /// A queue's status, its card's state included.
    pub fn queue_status(card: &Card, queue: &Queue) -> Status {
        match Self::card_status(card) {
            Status::Online if queue.chkstop => Status::Chkstop,
            Status::Online if !queue.online => Status::Offline,
            s => s,
        }
    }
    pub fn status(&self, apqn: Apqn) -> Option<Status> {
        self.queue(apqn).map(|(c, q)| Self::queue_status(c, q))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_types_parse_and_print() {
        let t: CardType = "cex8c".parse().unwrap();
        assert_eq!(t.to_string(), "CEX8C");
        assert_eq!(t.hwtype(), 14);
        assert_eq!("CEX4A".parse::<CardType>().unwrap().hwtype(), 10);
        // The last two: a multi-byte last character (a panic before, found by fuzzing).
        for bad in [
            "CEX3C", "CEX9P", "CEX8", "CEX8X", "EX8C", "", "CEXC", "CEX0ճ", "CEXé",
        ] {
            assert!(bad.parse::<CardType>().is_err(), "{bad}");
        }
    }
}
