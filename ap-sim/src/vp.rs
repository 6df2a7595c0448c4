//! The key verification pattern (VP): 32 bytes that name an effective AES key whatever master
//! key wraps it (32 zero bytes encrypted with the key). One type for the whole suite: the
//! adapters compute it, the repository stores it (`verification-pattern=` in `.info`), LUKS2
//! headers carry it in their tokens, the KMS keeps it as a property. Written as 64 lowercase hex
//! digits everywhere.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Copy, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct VerificationPattern([u8; 32]);

impl VerificationPattern {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        VerificationPattern(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl FromStr for VerificationPattern {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut out = [0u8; 32];
        if s.len() != 64 || hex::decode_to_slice(s, &mut out).is_err() {
            return Err(format!(
                "a verification pattern is 64 hex digits, not {:?}",
                s.chars().take(80).collect::<String>()
            ));
        }
        Ok(VerificationPattern(out))
    }
}

impl TryFrom<String> for VerificationPattern {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<VerificationPattern> for String {
    fn from(v: VerificationPattern) -> String {
        v.to_string()
    }
}

impl fmt::Display for VerificationPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for VerificationPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerificationPattern({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_both_ways_and_refused_otherwise() {
        let s = "8c42ee7e188bb4a44b44da5746bc1fe9173e2524121de6989364436f3327cc5a";
        let v: VerificationPattern = s.parse().unwrap();
        assert_eq!(v.to_string(), s);
        assert_eq!(s.to_uppercase().parse::<VerificationPattern>().unwrap(), v);
        assert_eq!(serde_json::to_string(&v).unwrap(), format!("\"{s}\""));
        assert!("abc".parse::<VerificationPattern>().is_err());
        assert!(s.replace('8', "g").parse::<VerificationPattern>().is_err());
    }
}
