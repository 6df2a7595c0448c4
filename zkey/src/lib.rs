//! zkey: the secure keys of encrypted volumes, kept in a repository and bound to crypto
//! adapters (APQNs), and their re-encipher around a master key change.
//!
//! This crate is the library under the `zkey` command; the binary only parses, prints and sets
//! the exit code. One concept per module:
//! - [`keyname`]: valid key names and the wildcard patterns of `-N`, `-a` and `-l` filters.
//! - [`volume`]: volume associations (`device:dm-name`), volume types, sector sizes, and the
//!   `+`/`-`/replace edits of association lists.
//! - [`properties`]: the per-key `.info` file, its integrity hash and its typed view.
//! - [`integrity`]: the `.info` MAC, made and checked inside the adapter.
//! - [`repository`]: the repository directory, its lock, and the files of each key.
//! - [`adapters`]: where the crypto adapters and their sysfs view are found.
//! - [`crosscheck`] (from `ap-sim`): whether a set of APQNs agrees on its master keys.
//! - [`keyops`]: making keys, and where each key stands (valid, at risk from the next SET).
//! - [`readiness`]: one verdict per key, volume and plug-in key for the next SET: the one
//!   truth `validate`, `list`, `mkchange` and the staging commands report.
//! - [`reencipher`]: staged, in-place and complete re-encipher of repository keys.
//! - [`ops`]: the operations the binary runs (generate, import, export, remove, rename, copy,
//!   change, reencipher), each with its audit record and the staging into an open change.
//! - [`kms`]: a repository bound to a key management server through a KMS plug-in.
//! - [`mkchange`]: master key change operations: plan, start, finalize, cancel.
//! - [`crypttab`]: crypttab lines and the commands that format and open the volumes.
//! - [`audit`]: the repository's audit log beside the TKE's, verified and queried.
//! - [`error`]: the errors of the operations above.

pub mod adapters;
pub mod audit;
pub mod crypttab;
pub mod error;
pub mod integrity;
pub mod keyname;
pub mod keyops;
pub mod kms;
pub mod mkchange;
pub mod ops;
pub mod properties;
pub mod readiness;
pub mod reencipher;
pub mod repository;
pub mod volume;

/// The APQN cross-check lives with the adapters' sysfs view, so that every staging command
/// (zkey-cryptsetup included) applies the same one.
pub use ap_sim::crosscheck;
pub use error::ZkeyError;
pub use keyname::{KeyName, Pattern};
pub use properties::{KeyProperties, Properties};
pub use repository::{
    Damage, DamagedKey, DummyPassphrase, KeyEntry, KeyFile, Promotion, Reader, RepoError,
    Repository, Writer,
};
pub use volume::{Edit, SectorSize, Volume, VolumeType};
