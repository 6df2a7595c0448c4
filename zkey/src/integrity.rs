//! Authenticated key properties: the `.info` MAC.
//!
//! The `__hash__` of a `.info` file (the reference's format) detects accidents, not intent: who
//! can write the repository can swap two keys' `.skey` files, edit the verification patterns in
//! their `.info` files to match, recompute the hashes, and every command would use the wrong
//! key for a volume. So zkey also writes a `__mac__` line ([`crate::properties`]): an HMAC over
//! the key's name and every property, computed inside the adapter with the key the audit trail
//! uses ([`ap_sim::audit::Authenticator`]), which never leaves the adapter. An edited property,
//! a `.info` copied to another key's name, or a swapped one fails the MAC; the properties hold
//! the key's verification pattern, and every operation that uses a `.skey` checks that its key
//! has that pattern ([`crate::keyops::check_same_key`]), which binds the authenticated
//! properties to the secure key's content: to its effective key, not its bytes, since those
//! change with every re-encipher, in a write of its own that a crash can separate from the
//! `.info`'s.
//!
//! Which adapter: the MAC key is the simulated adapters' one audit key, in their private state
//! and not in any APQN's registers, so it is the same for keys bound to different APQNs and
//! survives every master key change. It is lost only with the simulator itself (`ap-sim init
//! --force`), which loses every secure key too; the keys' properties then fail the MAC.
//!
//! Old repositories: a `.info` without a MAC line is accepted, as "not verified", until the
//! first command that changes the repository. Under the exclusive lock, that command gives every
//! such file a MAC (trusting it as it is then, once) and records in the adapter that this
//! repository's properties are authenticated. From then on a `.info` without a MAC is damage:
//! stripping the MAC line cannot downgrade a file to the unauthenticated format.
//!
//! Without an adapter (no simulator reachable) properties are read with their hash checked and
//! reported "not verified"; writing them needs the adapter.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use ap_sim::audit::{AuditError, AuditHead, Authenticator};
use serde::Serialize;

use crate::properties::Properties;

/// The MAC domain in the adapter; distinct from every audit log's name (`tke`, `zkey:<dir>`).
const DOMAIN: &str = "zkey-info";

/// How far a key's properties could be authenticated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "state", content = "why")]
pub enum Integrity {
    /// The MAC matches: the properties are the ones zkey wrote for this key name.
    Verified,
    /// An old-format file without a MAC, in a repository not upgraded yet: the next command
    /// that changes the repository gives it one.
    OldFormat,
    /// No adapter could check the MAC (the reason).
    NotVerified(String),
}

impl fmt::Display for Integrity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Integrity::Verified => f.write_str("verified"),
            Integrity::OldFormat => f.write_str(
                "not verified: old format without a MAC (the next change of the repository adds it)",
            ),
            Integrity::NotVerified(why) => write!(f, "not verified: {why}"),
        }
    }
}

/// Why authenticated properties were refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The MAC does not match the name and properties.
    BadMac,
    /// No MAC, in a repository whose properties are authenticated.
    MacMissing,
}

/// The adapter that authenticates a repository's properties.
#[derive(Clone)]
pub struct InfoAuth {
    auth: Arc<dyn Authenticator>,
    /// The adapter's record that this repository is upgraded, named by its canonical path.
    marker: String,
}

impl fmt::Debug for InfoAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InfoAuth")
            .field("marker", &self.marker)
            .finish_non_exhaustive()
    }
}

impl InfoAuth {
    pub fn new(repo_dir: &Path, auth: Arc<dyn Authenticator>) -> Self {
        let dir = std::fs::canonicalize(repo_dir).unwrap_or_else(|_| repo_dir.to_path_buf());
        InfoAuth {
            auth,
            marker: format!("{DOMAIN}:{}", dir.display()),
        }
    }

    /// The MAC of `props` for key `name`, lowercase hex.
    pub fn mac(&self, name: &str, props: &Properties) -> Result<String, AuditError> {
        let m = self.auth.macs(DOMAIN, &[&props.mac_input(name)])?;
        Ok(hex::encode(m[0]))
    }

    /// Whether the repository's properties are authenticated (upgraded) already.
    pub fn required(&self) -> Result<bool, AuditError> {
        Ok(self.auth.head(&self.marker)?.is_some())
    }

    /// Records in the adapter that every `.info` of the repository has a MAC now.
    pub fn mark_required(&self) -> Result<(), AuditError> {
        self.auth.set_head(
            &self.marker,
            AuditHead {
                seq: 1,
                mac: String::new(),
            },
        )
    }

    /// Checks the parsed properties of keys (name, properties), with one adapter call for all;
    /// `required` is [`Self::required`]. An adapter that fails leaves them "not verified".
    pub fn check_all(
        &self,
        keys: &[(&str, &Properties)],
        required: bool,
    ) -> Vec<Result<Integrity, Refusal>> {
        let inputs: Vec<Vec<u8>> = keys
            .iter()
            .filter(|(_, p)| p.mac().is_some())
            .map(|(n, p)| p.mac_input(n))
            .collect();
        let refs: Vec<&[u8]> = inputs.iter().map(Vec::as_slice).collect();
        let macs = if refs.is_empty() {
            Ok(Vec::new())
        } else {
            self.auth.macs(DOMAIN, &refs)
        };
        let mut macs = match macs {
            Ok(m) => Ok(m.into_iter()),
            Err(e) => Err(format!("the crypto adapter failed: {e}")),
        };
        keys.iter()
            .map(|(_, p)| match (p.mac(), &mut macs) {
                (None, _) if required => Err(Refusal::MacMissing),
                (None, _) => Ok(Integrity::OldFormat),
                (Some(_), Err(why)) => Ok(Integrity::NotVerified(why.clone())),
                (Some(stored), Ok(it)) => {
                    let computed = it.next().expect("one MAC per input");
                    if hex::decode(stored).is_ok_and(|s| constant_time_eq(&s, &computed)) {
                        Ok(Integrity::Verified)
                    } else {
                        Err(Refusal::BadMac)
                    }
                }
            })
            .collect()
    }
}

/// Compares without stopping at the first differing byte, as a MAC check should.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
