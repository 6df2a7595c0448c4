//! zkey: secure keys for protected-key dm-crypt volumes, kept in a repository.
//!
//! This crate is the library under the `zkey` command. Its storage layer:
//! - [`keyname`]: valid key names and the wildcard patterns of `-N`, `-a` and `-l` filters.
//! - [`volume`]: volume associations (`device:dm-name`), volume types, sector sizes, and the
//!   `+`/`-`/replace edits of association lists.
//! - [`properties`]: the per-key `.info` file, its integrity hash and its typed view.
//! - [`repository`]: the repository directory, its lock, and the files of each key.
//!
//! The secure key itself is opaque here: the token layer (ap-sim) gives it meaning.

pub mod keyname;
pub mod properties;
pub mod repository;
pub mod volume;

pub use keyname::{KeyName, Pattern};
pub use properties::{KeyProperties, Properties};
pub use repository::{
    Damage, DamagedKey, DummyPassphrase, KeyEntry, KeyFile, Promotion, Reader, RepoError,
    Repository, Writer,
};
pub use volume::{Edit, SectorSize, Volume, VolumeType};
