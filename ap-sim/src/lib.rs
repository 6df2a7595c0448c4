//! A simulated IBM Z AP bus.
//!
//! Crypto adapters (cards) with usage domains (APQNs), the master key registers of every domain,
//! a TKE-like administration API, the secure key token formats, and the HSM operations on secure
//! keys that the rest of the suite calls where real code would call the kernel's `pkey` driver or
//! a CCA/EP11 library. The simulator keeps its state in one directory and renders a sysfs tree in
//! the kernel's format beside it, so tools that read `/sys/bus/ap` can be pointed at it.
//!
//! Layout of the crate, one concept per module:
//! - [`apqn`]: `card.domain` identifiers.
//! - [`mkvp`]: master key values and their verification patterns.
//! - [`registers`]: NEW/CURRENT/OLD registers and their transitions.
//! - [`adapter`]: cards, queues and their status: the simulated hardware as one value.
//! - [`sim`]: the simulator directory: private state file, lock, TKE and admin operations.
//! - [`sysfs`]: rendering the tree and parsing it (also a real `/sys`).
//! - [`crosscheck`]: whether the APQNs a key uses agree on its master keys (the reference's
//!   `CARD.DOMAIN  NEW MK  CURRENT MK  OLD MK` check), for every tool that binds or stages.
//! - [`lszcrypt`]: lszcrypt-style listings of a sysfs tree.
//! - [`token`]: secure key token layouts and the wrapping of key material.
//! - [`reencipher`]: how every command asks for a re-encipher: one `Way`, one `Mode`, one
//!   conflict rule for the flags.
//! - [`vp`]: the verification pattern that names an effective key (one type for the suite).
//! - [`hsm`]: the operations on secure keys: generate, import, verify, re-encipher, VP.
//! - [`audit`]: the tamper-evident audit trail, authenticated inside the adapter.
//! - `durable`, `table`, `exit`: re-exported from the `infra` crate.

pub mod adapter;
pub mod apqn;
pub mod audit;
pub mod crosscheck;
pub mod hsm;
pub mod lszcrypt;
pub mod mkvp;
pub mod reencipher;
pub mod registers;
pub mod sim;
pub mod sysfs;
pub mod token;
pub mod vp;

// The shared infrastructure moved below the simulator; these paths stay for its users.
pub use infra::{durable, exit, table};

pub use apqn::Apqn;
pub use mkvp::{MasterKey, Mkvp};
pub use registers::MkType;
pub use sim::Simulator;
pub use vp::VerificationPattern;
