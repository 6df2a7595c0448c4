//! zkey-cryptsetup: LUKS2 volumes whose volume key is an IBM Z secure key.
//!
//! A secure key is an AES key wrapped ("enciphered") by the master key of a crypto adapter; the
//! kernel's `paes` cipher unwraps it inside the adapter, so the clear key never sits in the
//! LUKS2 header. When the security officer changes the master key, the secure volume key must be
//! re-enciphered in the header (staged before the SET, completed after it), or the volume is lost
//! once the old master key is gone. This crate does that, as IBM's `zkey-cryptsetup` does, against
//! the simulated AP bus of `ap-sim`. It knows nothing of zkey's key repository: it takes secure
//! keys as bytes and volumes as paths.
//!
//! Modules, one concept each:
//! - [`luks2`]: header operations through libcryptsetup: format, keyslots, the VP and re-encipher
//!   tokens, the `luks2` crash point.
//! - [`passphrase`]: reading the passphrase from the terminal or a key file, as cryptsetup does.
//! - [`volume`]: the volume operations that need the adapters: format, validate, setvp, setkey.
//! - [`reencipher`]: staged, in-place and complete re-encipher of the secure volume key, and the
//!   cross-check that staging to NEW needs.
//! - [`status`]: a volume's standing for a readiness model, without a prompt or a write: the
//!   header alone ([`status::header_status`]), or the keys with a passphrase
//!   ([`status::key_status`]).
//! - [`xts`]: an AES-XTS engine bit-compatible with dm-crypt's `aes-xts-plain64`.
//! - [`fuse`]: the data path: an unlocked volume's decrypted payload served as a file, because
//!   the kernel has no dm-crypt for the simulator's `paes` (and this machine none at all).

pub mod fuse;
pub mod luks2;
pub mod passphrase;
pub mod reencipher;
pub mod status;
pub mod volume;
pub mod xts;

use ap_sim::hsm::HsmError;
use libcryptsetup_rs::LibcryptErr;

/// Everything that can go wrong, each naming the device and the way out. No variant ever holds
/// key material or a passphrase.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open '{device}': {source}")]
    Open { device: String, source: LibcryptErr },
    #[error("'{device}' is not a LUKS2 volume ({why}): zkey-cryptsetup works on LUKS2 volumes formatted with a secure key (zkey-cryptsetup format, or zkey cryptsetup)")]
    NotLuks2 { device: String, why: String },
    #[error("the cipher of '{device}' is '{cipher}', not 'paes': its volume key is not a secure key, so there is nothing to validate or re-encipher (a clear-key volume must be converted first)")]
    NotPaes { device: String, cipher: String },
    /// No keyslot (or not keyslot `slot`) opens with the passphrase. `origin`, set once every
    /// try is used up, says where the passphrases came from and so what to do about it.
    #[error("no key available with this passphrase for '{device}'{}{}", slot.map(|s| format!(" in keyslot {s}")).unwrap_or_default(), origin.as_ref().map(|o| format!(": {o}")).unwrap_or_default())]
    WrongPassphrase {
        device: String,
        slot: Option<u32>,
        origin: Option<passphrase::Origin>,
    },
    #[error("token {id} ({kind}) of '{device}' is malformed: {why}. Inspect it with 'cryptsetup token export --token-id {id} {device}' and remove it with 'cryptsetup token remove --token-id {id} {device}' if it is stale")]
    BadToken {
        device: String,
        id: u32,
        kind: &'static str,
        why: String,
    },
    #[error("{what} of '{device}' is not a secure key: {why}")]
    NotSecureKey {
        device: String,
        what: String,
        why: String,
    },
    #[error("{what} of '{device}' is rejected by the crypto adapters: {source}")]
    Adapter {
        device: String,
        what: String,
        source: Box<HsmError>,
    },
    #[error("the secure volume key of '{device}' is enciphered with the master key {mkvp}, which no adapter holds as CURRENT or OLD any more (the master key changed at least twice since it was last re-enciphered): it cannot be re-enciphered. Restore the volume key from a backup, or set it with 'zkey-cryptsetup setkey' from a secure key of the same AES key under the CURRENT master key")]
    KeyDead { device: String, mkvp: String },
    #[error("the verification pattern of {what} of '{device}' is {found}, but {expected_from} says {expected}: it is a different AES key; nothing was changed")]
    VpMismatch {
        device: String,
        what: String,
        found: String,
        expected: String,
        expected_from: String,
    },
    #[error("the re-enciphered secure volume key in keyslot {slot} of '{device}' is enciphered with the NEW master key, which is not set yet: run 'zkey-cryptsetup reencipher --complete' after the NEW master key has been set to become the CURRENT master key")]
    NotYetSet { device: String, slot: u32 },
    #[error("no staged re-encipher is pending for '{device}': run 'zkey-cryptsetup reencipher --staged' first")]
    NoPending { device: String },
    #[error("'{device}': {op} failed: {source}")]
    Header {
        device: String,
        op: &'static str,
        source: LibcryptErr,
    },
    /// The APQNs do not agree on a complete NEW master key: staging to NEW is refused, in the
    /// words and table zkey uses.
    #[error(transparent)]
    NotReady(#[from] ap_sim::crosscheck::NotReady),
    #[error("cannot read the AP bus from sysfs (SYSFS_ROOT names where it is, else the simulator's own tree): {0}")]
    Sysfs(String),
    #[error("operation cancelled: {0}")]
    Declined(String),
    /// `format` of a device that holds a LUKS header already, not confirmed.
    #[error("'{device}' already holds {what}: formatting it destroys that volume's key and so all of its data. Nothing was changed. If the device is the volume of another key (a second name of one device), use that key; if the volume is really no longer needed, answer yes on a terminal or add --force")]
    HasHeader { device: String, what: String },
    /// `open` of a volume whose key is not the one its VP token names, not confirmed.
    #[error("the volume key of '{device}' has verification pattern {found}, but the volume's VP token says {expected} ('zkey-cryptsetup validate' reports the volume invalid): it may not be the key the data was written with, and data written through a wrong key destroys the volume. Not opened. If the key is right and the token wrong, rewrite the token with 'zkey-cryptsetup setvp {device}'; to open anyway, answer yes on a terminal or add --force")]
    VpTokenMismatch {
        device: String,
        found: String,
        expected: String,
    },
    /// `open` of a device that is open already under another name.
    #[error("'{device}' is open already as '{name}' ({file}): a second mapping of one device would let two caches write it, which corrupts it. Use {file}, or close it first with 'zkey-cryptsetup close {name}'")]
    AlreadyMapped {
        device: String,
        name: String,
        file: String,
    },
    #[error(transparent)]
    Passphrase(#[from] passphrase::Error),
    #[error("cannot read {what} '{path}': {source}")]
    Read {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotAvailable(String),
}

/// The conversation with the user: messages and yes/no questions. The CLI answers questions on
/// the terminal (or "yes" in batch mode); tests script the answers.
pub trait Ui {
    /// A message for the user (one paragraph, unwrapped).
    fn info(&mut self, msg: &str);
    /// A warning (one paragraph, unwrapped).
    fn warn(&mut self, msg: &str);
    /// Asks a yes/no question; `Ok(false)` is "no".
    fn confirm(&mut self, question: &str) -> Result<bool, Error>;
    /// Asks whether to destroy the keyslot of a previous secure key after a complete. Callers
    /// that keep previous keys as a backup (a master key change operation) answer no.
    fn confirm_destroy(&mut self, question: &str) -> Result<bool, Error> {
        self.confirm(question)
    }
    /// Asks before something that loses data if the operator is wrong (formatting over a LUKS
    /// header, opening a key its VP token disowns). Batch mode does not answer it: only a
    /// person on a terminal, or `--force`. `Ok(false)` when nobody can be asked; the operation
    /// then refuses with an error that says why and how to force it.
    fn confirm_risk(&mut self, question: &str) -> Result<bool, Error> {
        let _ = question;
        Ok(false)
    }
}

/// A [`Ui`] that records messages and answers every question with `answer` (batch mode in tests,
/// or a library caller that has already decided).
#[derive(Debug, Default)]
pub struct Recorder {
    pub answer: bool,
    pub messages: Vec<String>,
    pub questions: Vec<String>,
}

impl Recorder {
    pub fn answering(answer: bool) -> Self {
        Recorder {
            answer,
            ..Default::default()
        }
    }
}

impl Ui for Recorder {
    fn info(&mut self, msg: &str) {
        self.messages.push(msg.to_string());
    }
    fn warn(&mut self, msg: &str) {
        self.messages.push(format!("WARNING: {msg}"));
    }
    fn confirm(&mut self, question: &str) -> Result<bool, Error> {
        self.questions.push(question.to_string());
        Ok(self.answer)
    }
    fn confirm_risk(&mut self, question: &str) -> Result<bool, Error> {
        self.confirm(question)
    }
}
