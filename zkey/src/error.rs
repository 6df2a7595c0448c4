//! The errors of zkey's operations: each says what went wrong and what to do next.

use ap_sim::hsm::HsmError;
use ap_sim::sim::SimError;
use ap_sim::sysfs::SysfsError;
use ap_sim::token::TokenError;

use crate::repository::RepoError;

#[derive(Debug, thiserror::Error)]
pub enum ZkeyError {
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error(transparent)]
    Hsm(#[from] HsmError),
    #[error("the secure key is not valid: {0}")]
    Token(#[from] TokenError),
    #[error(transparent)]
    Sim(#[from] SimError),
    #[error(transparent)]
    Sysfs(#[from] SysfsError),
    #[error("the staged key of '{0}' is enciphered with the NEW master key, which is not set yet: the security officer must SET it first; both keys were kept")]
    NotYetSet(String),
    #[error("the staged key of '{name}' has verification pattern {staged}, but the key's is {expected}: it is not the same key, so it was not installed (both files were kept; remove the staged key with 'zkey reencipher --staged' again)")]
    VpMismatch {
        name: String,
        staged: ap_sim::VerificationPattern,
        expected: ap_sim::VerificationPattern,
    },
    /// A name refused for a new key.
    #[error(transparent)]
    Name(#[from] crate::keyname::KeyNameError),
    #[error("the APQN check failed:\n{0}(use --no-apqn-check to bind anyway)")]
    CrossCheck(String),
    #[error("{0}")]
    Invalid(String),
    /// The action was done, but its audit record could not be written.
    #[error("the action was done, but recording it in the audit log failed: {0}")]
    Audit(ap_sim::audit::AuditError),
    /// A filter (`-N`, `-a`, `-l`) that selects nothing: nothing was done.
    #[error("no key matches {0}: 'zkey list' shows the keys and their APQNs; nothing was changed")]
    NoMatch(String),
    /// Staging to NEW refused by the APQN cross-check (split or missing NEW registers).
    #[error(transparent)]
    NotReady(#[from] ap_sim::crosscheck::NotReady),
    /// A KMS plug-in's error with its notices, or a KMS key zkey refused or rolled back.
    #[error(transparent)]
    Kms(#[from] crate::kms::KmsError),
    /// A file the user named is too large for its format, or cannot be read.
    #[error(transparent)]
    Input(#[from] infra::input::InputError),
    /// A file of the repository that is a symbolic link, which is refused.
    #[error(transparent)]
    Untrusted(ap_sim::durable::Untrusted),
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

impl ZkeyError {
    /// The error of `action` on `path`: a refused link as itself, anything else as [`ZkeyError::Io`].
    pub fn io(action: &'static str, path: std::path::PathBuf, source: std::io::Error) -> ZkeyError {
        match ap_sim::durable::Untrusted::of(&source) {
            Some(u) => ZkeyError::Untrusted(u.clone()),
            None => ZkeyError::Io {
                action,
                path,
                source,
            },
        }
    }
}
