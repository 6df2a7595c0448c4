//! The data path: `zkey-cryptsetup open DEVICE NAME` / `close NAME`.
//!
//! Placeholder until the AES-XTS engine and the FUSE data path land (written in another
//! worktree; that module replaces this file). The expected entry points, which the CLI calls:
//!
//! ```ignore
//! pub fn open(hsm: &ap_sim::hsm::Hsm, device: &Path, name: &str,
//!             pass: &mut crate::passphrase::Supplier, ui: &mut dyn crate::Ui)
//!     -> Result<(), crate::Error>;
//! pub fn close(name: &str) -> Result<(), crate::Error>;
//! ```

use std::path::Path;

use ap_sim::hsm::Hsm;

use crate::passphrase::Supplier;
use crate::{Error, Ui};

/// Opens `device` as `name` through the FUSE data path. Not available yet.
pub fn open(
    _hsm: &Hsm,
    device: &Path,
    name: &str,
    _pass: &mut Supplier,
    _ui: &mut dyn Ui,
) -> Result<(), Error> {
    Err(Error::NotAvailable(format!(
        "opening '{}' as '{name}' is not yet available: the FUSE data path is not part of this build",
        device.display()
    )))
}

/// Closes the volume opened as `name`. Not available yet.
pub fn close(name: &str) -> Result<(), Error> {
    Err(Error::NotAvailable(format!(
        "closing '{name}' is not yet available: the FUSE data path is not part of this build"
    )))
}
