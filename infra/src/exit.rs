//! The suite's exit codes: one table for every binary (`ap-sim`, `zkey`, `zkey-cryptsetup`,
//! the plug-ins), so that a script tests the same number whichever tool it runs.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done, or nothing to do |
//! | 1 | failed: some or all of what was asked could not be done (the message says what) |
//! | 2 | usage: a bad option, argument or filter; nothing was changed |
//! | 3 | at risk: not safe to SET, a key or volume is at risk, lost or unknown to the readiness model |

/// An exit code of the suite's table.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    Done = 0,
    Failed = 1,
    Usage = 2,
    AtRisk = 3,
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        std::process::ExitCode::from(e as u8)
    }
}
