//! Master key verification patterns (MKVPs) and the master key values they identify.
//!
//! A CCA MKVP is 8 bytes, an EP11 wrapping key verification pattern (WKVP) 32 bytes, of which
//! key blobs carry only the first 16. [`Mkvp::matches`] compares over the shorter of the two,
//! which is how the kernel and zkey compare a key's pattern with a register's.

use std::fmt;
use std::str::FromStr;

use rand::RngCore;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Bytes in a master key value (CCA AES and APKA master keys and EP11 wrapping keys are 256-bit).
pub const MASTER_KEY_LEN: usize = 32;

/// A master key value. It lives in the simulator's private state and in memory only: it has no
/// `Display`, its `Debug` is redacted, and it is zeroed when dropped.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct MasterKey([u8; MASTER_KEY_LEN]);

impl MasterKey {
    pub fn from_bytes(bytes: [u8; MASTER_KEY_LEN]) -> Self {
        MasterKey(bytes)
    }
    pub fn random() -> Self {
        let mut k = [0u8; MASTER_KEY_LEN];
        rand::rngs::OsRng.fill_bytes(&mut k);
        MasterKey(k)
    }
    pub fn as_bytes(&self) -> &[u8; MASTER_KEY_LEN] {
        &self.0
    }
    /// XORs in another key part, as a MIDDLE or FINAL key part load does.
    pub fn xor_in(&mut self, part: &MasterKey) {
        for (a, b) in self.0.iter_mut().zip(part.0.iter()) {
            *a ^= b;
        }
    }
    /// The CCA pattern: the first 8 bytes of SHA-256(0x01 || key).
    pub fn cca_mkvp(&self) -> Mkvp {
        Mkvp::from_slice(&pattern_digest(&self.0)[..8]).expect("8 is a valid length")
    }
    /// The EP11 pattern: the full 32 bytes of SHA-256(0x01 || key).
    pub fn ep11_wkvp(&self) -> Mkvp {
        Mkvp::from_slice(&pattern_digest(&self.0)).expect("32 is a valid length")
    }
}

fn pattern_digest(key: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(key);
    h.finalize().into()
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

// Serialised only into the simulator's private (0600) state file.
impl Serialize for MasterKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let h = zeroize::Zeroizing::new(hex::encode(self.0));
        s.serialize_str(&h)
    }
}

impl<'de> Deserialize<'de> for MasterKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = zeroize::Zeroizing::new(String::deserialize(d)?);
        let mut k = [0u8; MASTER_KEY_LEN];
        hex::decode_to_slice(s.as_str(), &mut k).map_err(serde::de::Error::custom)?;
        Ok(MasterKey(k))
    }
}

/// A verification pattern of 8, 16 or 32 bytes.
#[derive(Copy, Clone, PartialEq, Eq, Hash)]
pub struct Mkvp {
    bytes: [u8; 32],
    len: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MkvpError {
    #[error("'{0}' is not a verification pattern: give 16, 32 or 64 hex digits (an optional 0x prefix is allowed)")]
    Format(String),
}

impl Mkvp {
    /// A pattern from 8, 16 or 32 bytes; `None` for any other length.
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        if !matches!(b.len(), 8 | 16 | 32) {
            return None;
        }
        let mut bytes = [0u8; 32];
        bytes[..b.len()].copy_from_slice(b);
        Some(Mkvp {
            bytes,
            len: b.len() as u8,
        })
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
    pub fn len(&self) -> usize {
        self.len as usize
    }
    pub fn is_empty(&self) -> bool {
        false
    }
    /// Whether two patterns name the same key: equal over the shorter one's length. A key blob's
    /// 16-byte WKVP matches the register's 32-byte WKVP this way.
    pub fn matches(&self, other: &Mkvp) -> bool {
        let n = self.len.min(other.len) as usize;
        self.bytes[..n] == other.bytes[..n]
    }
    /// The first `n` bytes (n = 8 or 16), as stored in a key token.
    pub fn truncated(&self, n: usize) -> Mkvp {
        Mkvp::from_slice(&self.bytes[..n.min(self.len as usize)]).expect("valid length")
    }
}

impl fmt::Display for Mkvp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.as_bytes()))
    }
}

impl fmt::Debug for Mkvp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mkvp({self})")
    }
}

impl FromStr for Mkvp {
    type Err = MkvpError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let t = t
            .strip_prefix("0x")
            .or_else(|| t.strip_prefix("0X"))
            .unwrap_or(t);
        let bytes = hex::decode(t).map_err(|_| MkvpError::Format(s.to_string()))?;
        Mkvp::from_slice(&bytes).ok_or_else(|| MkvpError::Format(s.to_string()))
    }
}

impl Serialize for Mkvp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mkvp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cca_mkvp_is_sha256_of_01_and_key() {
        let k = MasterKey::from_bytes([0u8; 32]);
        let mut h = Sha256::new();
        h.update([1u8]);
        h.update([0u8; 32]);
        let d = h.finalize();
        assert_eq!(k.cca_mkvp().as_bytes(), &d[..8]);
        assert_eq!(k.ep11_wkvp().as_bytes(), &d[..]);
    }

    #[test]
    fn matches_over_shorter_length() {
        let k = MasterKey::random();
        let w = k.ep11_wkvp();
        assert!(w.truncated(16).matches(&w));
        assert!(w.matches(&w.truncated(16)));
        assert!(!MasterKey::random().ep11_wkvp().truncated(16).matches(&w));
    }

    #[test]
    fn parse_and_print() {
        let m: Mkvp = "0x1A7DFDEAFFEEDAC4".parse().unwrap();
        assert_eq!(m.to_string(), "1a7dfdeaffeedac4");
        assert!("0x123".parse::<Mkvp>().is_err());
        assert!("zz".repeat(8).parse::<Mkvp>().is_err());
    }

    #[test]
    fn master_key_debug_is_redacted() {
        let k = MasterKey::from_bytes([0xab; 32]);
        assert!(!format!("{k:?}").contains("ab"));
    }
}
