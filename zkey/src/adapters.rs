//! Where zkey finds the crypto adapters: the HSM operations (the simulated adapters of
//! `$AP_SIM_DIR`) and the kernel's view of them (the sysfs tree at `$SYSFS_ROOT`, by default the
//! simulator's own `DIR/sys`). On real hardware these would be the pkey ioctls and `/sys`.

use std::borrow::Cow;
use std::path::PathBuf;

use ap_sim::hsm::Hsm;
use ap_sim::sim::{SimError, Simulator};
use ap_sim::sysfs::SysfsTree;

/// The environment variable that overrides where sysfs is read (as in s390-tools).
pub const SYSFS_ENV: &str = "SYSFS_ROOT";

/// The adapters zkey works with.
#[derive(Clone, Debug)]
pub struct Adapters {
    pub hsm: Hsm,
    pub sysfs: SysfsTree,
}

impl Adapters {
    /// The simulator named by `$AP_SIM_DIR` (default `/var/lib/ap-sim`) and the sysfs tree named
    /// by `$SYSFS_ROOT` (default: the simulator's tree).
    pub fn from_env() -> Result<Adapters, SimError> {
        let sim = Simulator::from_env()?;
        let root = std::env::var_os(SYSFS_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| sim.sys_root());
        // Make sure the tree reflects the state before anyone reads it.
        sim.bus()?;
        Ok(Adapters {
            sysfs: SysfsTree::new(root),
            hsm: Hsm::new(sim),
        })
    }

    /// These adapters with the HSM pinned to the bus as it is now ([`Hsm::pinned`]): the several
    /// HSM operations behind one key's status or re-encipher then see one state and read it
    /// once, instead of once per operation. If the state cannot be read now, the adapters as
    /// they are: each operation then reports that error itself, as it would have.
    pub fn pinned(&self) -> Cow<'_, Adapters> {
        match self.hsm.pinned() {
            Ok(hsm) => Cow::Owned(Adapters {
                hsm,
                sysfs: self.sysfs.clone(),
            }),
            Err(_) => Cow::Borrowed(self),
        }
    }
}

/// `repo` with its properties authenticated by the adapters of `$AP_SIM_DIR`
/// ([`crate::integrity`]); as it is when they cannot be reached, so that reading still works
/// (every key's properties "not verified"); every command that writes needs the adapters anyway.
pub fn authenticated(repo: crate::Repository) -> crate::Repository {
    match Simulator::from_env() {
        Ok(sim) => repo.authenticated_by(std::sync::Arc::new(sim)),
        Err(_) => repo,
    }
}
