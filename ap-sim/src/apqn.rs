//! APQN identifiers: an adapter (card) and a usage domain, written `card.domain` in hex.
//!
//! Users type APQNs loosely (`8.2f`, `08.002F`); every place that stores or prints one uses the
//! kernel's normal form `%02x.%04x`, so that comparing two strings never depends on how a user
//! typed them. Parsing is the only way to make an [`Apqn`], so an out-of-range id cannot exist.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The highest card id the AP bus addresses (`ap_max_adapter_id`).
pub const MAX_CARD: u8 = 0xff;
/// The highest domain id the AP bus addresses.
pub const MAX_DOMAIN: u16 = 0xffff;

/// One AP queue: `card.domain`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Apqn {
    card: u8,
    domain: u16,
}

/// Why a string is not an APQN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApqnError {
    #[error("'{0}' is not an APQN: write it as CARD.DOMAIN in hex, e.g. 08.002f")]
    Format(String),
    #[error("'{0}': the card id must be hex from 00 to ff")]
    Card(String),
    #[error("'{0}': the domain id must be hex from 0000 to ffff")]
    Domain(String),
    #[error("no APQN given: name at least one, e.g. --apqns 08.002f,09.002f")]
    Empty,
}

impl Apqn {
    pub const fn new(card: u8, domain: u16) -> Self {
        Apqn { card, domain }
    }
    pub const fn card(self) -> u8 {
        self.card
    }
    pub const fn domain(self) -> u16 {
        self.domain
    }
}

impl fmt::Display for Apqn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}.{:04x}", self.card, self.domain)
    }
}

fn hex_field(s: &str) -> Option<u32> {
    let s = s.trim();
    let s = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    if s.is_empty() || s.len() > 8 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(s, 16).ok()
}

impl FromStr for Apqn {
    type Err = ApqnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (card, domain) = s
            .trim()
            .split_once('.')
            .ok_or_else(|| ApqnError::Format(s.to_string()))?;
        let card = hex_field(card)
            .filter(|c| *c <= MAX_CARD as u32)
            .ok_or_else(|| ApqnError::Card(s.to_string()))?;
        let domain = hex_field(domain)
            .filter(|d| *d <= MAX_DOMAIN as u32)
            .ok_or_else(|| ApqnError::Domain(s.to_string()))?;
        Ok(Apqn::new(card as u8, domain as u16))
    }
}

impl Serialize for Apqn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Apqn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Parses a comma-separated APQN list (`08.002f,09.002f`): normalised, in the given order,
/// duplicates dropped. An empty list is an error, because every caller that takes a list
/// means "these APQNs", never "none".
pub fn parse_list(s: &str) -> Result<Vec<Apqn>, ApqnError> {
    let mut out: Vec<Apqn> = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let apqn: Apqn = part.parse()?;
        if !out.contains(&apqn) {
            out.push(apqn);
        }
    }
    if out.is_empty() {
        return Err(ApqnError::Empty);
    }
    Ok(out)
}

/// A non-empty, duplicate-free APQN list, as a command-line option takes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApqnList(Vec<Apqn>);

impl ApqnList {
    pub fn as_slice(&self) -> &[Apqn] {
        &self.0
    }
    pub fn into_vec(self) -> Vec<Apqn> {
        self.0
    }
}

impl FromStr for ApqnList {
    type Err = ApqnError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_list(s).map(ApqnList)
    }
}

impl fmt::Display for ApqnList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_list(&self.0))
    }
}

/// Formats a list the way it is parsed: `08.002f,09.002f`.
pub fn format_list(apqns: &[Apqn]) -> String {
    apqns
        .iter()
        .map(Apqn::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_loose_input() {
        assert_eq!("8.2f".parse::<Apqn>().unwrap().to_string(), "08.002f");
        assert_eq!(
            "0x08.0x002F".parse::<Apqn>().unwrap().to_string(),
            "08.002f"
        );
        assert_eq!(
            " ff.ffff ".parse::<Apqn>().unwrap(),
            Apqn::new(0xff, 0xffff)
        );
    }

    #[test]
    fn rejects_malformed_and_out_of_range() {
        for bad in [
            "", "08", "08.", ".002f", "100.0001", "08.10000", "g8.002f", "08.00 2f", "8.-1",
        ] {
            assert!(bad.parse::<Apqn>().is_err(), "{bad:?} parsed");
        }
        assert!(matches!("100.1".parse::<Apqn>(), Err(ApqnError::Card(_))));
        assert!(matches!(
            "1.10000".parse::<Apqn>(),
            Err(ApqnError::Domain(_))
        ));
    }

    #[test]
    fn list_keeps_order_and_drops_duplicates() {
        let l = parse_list("09.002f, 8.2f,09.2f").unwrap();
        assert_eq!(format_list(&l), "09.002f,08.002f");
        assert_eq!(parse_list(" , "), Err(ApqnError::Empty));
        assert!(parse_list("08.002f,zz").is_err());
    }

    #[test]
    fn serde_round_trip_uses_normal_form() {
        let a: Apqn = serde_json::from_str("\"8.2f\"").unwrap();
        assert_eq!(serde_json::to_string(&a).unwrap(), "\"08.002f\"");
    }
}
