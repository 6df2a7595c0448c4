//! The AP bus as sysfs shows it: rendering the simulator's tree, and reading any tree (a real
//! `/sys` included).
//!
//! Tools such as lszcrypt and zkey know the AP bus only through sysfs (`$SYSFS_ROOT`, default
//! `/sys`). [`render`] writes the simulated [`Bus`](crate::adapter::Bus) under a root in the
//! kernel's exact layout and file formats (`drivers/s390/crypto/ap_*.c`, `zcrypt_*.c`), so that
//! those tools work unchanged on the simulator; [`SysfsTree`] reads such a tree back into typed
//! values, and [`parse_mkvps`] parses the one attribute with a structured format.
//!
//! Only master key verification patterns ever reach the tree; the master keys themselves stay in
//! the simulator's private state file.
//!
//! Submodules: [`mkvps`] (the `mkvps` attribute, both directions), `render` (writing the tree) and
//! `read` (reading it).

use std::io;
use std::path::{Path, PathBuf};

pub mod mkvps;
mod read;
mod render;

pub use mkvps::{parse_mkvps, CcaMkvps, CcaTypeMkvps, Ep11Mkvps, Mkvps, Reading};
pub use read::{CardInfo, QueueInfo, SysfsTree};
pub use render::render;

/// The card and queue driver names the tree binds devices to (lszcrypt's DRIVER column).
pub const CARD_DRIVER: &str = "cex4card";
pub const QUEUE_DRIVER: &str = "cex4queue";

/// Why a sysfs tree could not be read. Every variant names the file it is about.
#[derive(Debug, thiserror::Error)]
pub enum SysfsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} does not exist: this is not an AP bus sysfs tree (is the 'ap' kernel module loaded, or does SYSFS_ROOT point to the wrong directory?)")]
    NoApBus { path: PathBuf },
    #[error("{path}: unexpected content {content:?}: {why}")]
    Attribute {
        path: PathBuf,
        content: String,
        why: String,
    },
    #[error("{path}, line {line} {text:?}: {why}")]
    Mkvps {
        path: PathBuf,
        line: usize,
        text: String,
        why: String,
    },
}

impl SysfsError {
    fn io(path: &Path) -> impl FnOnce(io::Error) -> SysfsError + '_ {
        move |source| SysfsError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
