//! The security officer's view of the master key registers (`ap-sim tke status --json`) and
//! the master key patterns inside secure key tokens: an oracle for "which keys can still be
//! used" that does not go through zkey.

use std::path::Path;

use serde_json::Value;

use crate::World;

/// One register: its state word (`empty`, `partial`, `full`, `uncommitted`, `committed`,
/// `valid`, `invalid`) and pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reg {
    pub state: String,
    pub mkvp: Option<String>,
}

impl Reg {
    fn parse(v: &Value) -> Option<Reg> {
        if v.is_null() {
            return None;
        }
        Some(Reg {
            state: v["state"].as_str().unwrap_or_default().to_string(),
            mkvp: v["mkvp"].as_str().map(str::to_string),
        })
    }

    /// Holds a master key that a secure key can be enciphered with: a complete NEW key (CCA
    /// `full`, EP11 `committed`), or a valid CURRENT or OLD key.
    pub fn usable(&self) -> bool {
        matches!(self.state.as_str(), "full" | "committed" | "valid") && self.mkvp.is_some()
    }

    /// Usable and holding the key with pattern `mkvp`.
    pub fn holds(&self, mkvp: &str) -> bool {
        self.usable() && self.mkvp.as_deref().is_some_and(|m| mkvp_matches(m, mkvp))
    }
}

/// NEW, CURRENT and OLD (no OLD on EP11) of one master key type on one APQN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypeRegs {
    pub mktype: String,
    pub new: Reg,
    pub current: Reg,
    pub old: Option<Reg>,
}

/// A register slot.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Slot {
    New,
    Current,
    Old,
}

impl TypeRegs {
    pub fn slot(&self, s: Slot) -> Option<&Reg> {
        match s {
            Slot::New => Some(&self.new),
            Slot::Current => Some(&self.current),
            Slot::Old => self.old.as_ref(),
        }
    }

    /// Whether one of `slots` holds the key with pattern `mkvp`.
    pub fn holds(&self, mkvp: &str, slots: &[Slot]) -> bool {
        slots
            .iter()
            .any(|s| self.slot(*s).is_some_and(|r| r.holds(mkvp)))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApqnRegs {
    /// `08.002f`
    pub apqn: String,
    pub card_type: String,
    pub online: bool,
    pub types: Vec<TypeRegs>,
}

impl ApqnRegs {
    pub fn get(&self, mktype: &str) -> Option<&TypeRegs> {
        self.types.iter().find(|t| t.mktype == mktype)
    }
}

/// Every APQN's registers, as the TKE shows them (offline APQNs included).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registers {
    pub apqns: Vec<ApqnRegs>,
}

impl Registers {
    /// Reads `ap-sim tke status --json`.
    pub fn read(w: &World) -> Result<Registers, String> {
        let o = w.run("ap-sim", &["tke", "status", "--json"]);
        if !o.status.success() {
            return Err(format!(
                "ap-sim tke status failed: {}",
                String::from_utf8_lossy(&o.stderr)
            ));
        }
        let v: Value = serde_json::from_slice(&o.stdout)
            .map_err(|e| format!("ap-sim tke status --json: {e}"))?;
        Registers::parse(&v)
    }

    pub fn parse(v: &Value) -> Result<Registers, String> {
        let mut apqns = Vec::new();
        for a in v["apqns"].as_array().ok_or("no apqns array")? {
            let mut types = Vec::new();
            for r in a["registers"].as_array().into_iter().flatten() {
                types.push(TypeRegs {
                    mktype: r["mktype"].as_str().unwrap_or_default().to_string(),
                    new: Reg::parse(&r["new"]).ok_or("no NEW register")?,
                    current: Reg::parse(&r["current"]).ok_or("no CURRENT register")?,
                    old: Reg::parse(&r["old"]),
                });
            }
            apqns.push(ApqnRegs {
                apqn: a["apqn"].as_str().unwrap_or_default().to_string(),
                card_type: a["card_type"].as_str().unwrap_or_default().to_string(),
                online: a["status"].as_str() == Some("online"),
                types,
            });
        }
        Ok(Registers { apqns })
    }

    pub fn apqn(&self, apqn: &str) -> Option<&ApqnRegs> {
        self.apqns.iter().find(|a| a.apqn == apqn)
    }

    /// The APQNs that have master key type `mktype`.
    pub fn with_type(&self, mktype: &str) -> Vec<&ApqnRegs> {
        self.apqns
            .iter()
            .filter(|a| a.get(mktype).is_some())
            .collect()
    }

    /// Whether, on one of `apqns` (all APQNs of the type when empty; offline ones only with
    /// `offline_too`), one of `slots` of `mktype` holds `mkvp`.
    pub fn holds(
        &self,
        mktype: &str,
        apqns: &[String],
        mkvp: &str,
        slots: &[Slot],
        offline_too: bool,
    ) -> bool {
        self.with_type(mktype)
            .into_iter()
            .filter(|a| apqns.is_empty() || apqns.contains(&a.apqn))
            .filter(|a| offline_too || a.online)
            .any(|a| a.get(mktype).is_some_and(|t| t.holds(mkvp, slots)))
    }
}

/// Master key patterns compare over the shorter of the two (a key token carries 16 of an EP11
/// wrapping key pattern's 32 bytes).
pub fn mkvp_matches(a: &str, b: &str) -> bool {
    let n = a.len().min(b.len());
    n > 0 && a[..n].eq_ignore_ascii_case(&b[..n])
}

/// The master key pattern and master key type (`aes`, `ep11`) of a secure key token (one
/// token, or an XTS pair), read from its bytes.
pub fn token_mkvp(bytes: &[u8]) -> Option<(String, String)> {
    let k = ap_sim::token::SecureKey::parse(bytes).ok()?;
    Some((k.mkvp().to_string(), k.key_type().mk_type().to_string()))
}

/// [`token_mkvp`] of a key file; `None` when the file is missing or no token.
pub fn file_mkvp(path: &Path) -> Option<(String, String)> {
    token_mkvp(&std::fs::read(path).ok()?)
}
