//! The zkey suite's shared infrastructure, below every crate that uses it: nothing here knows
//! about adapters, keys or volumes.
//!
//! - [`device`]: which device a path stands for (one device under two names is one).
//! - [`durable`]: atomic file replacement, directory fsync, advisory locks, crash points.
//! - [`input`]: reading files a user names, bounded by their format's size.
//! - [`glob`]: the one wildcard matcher (fnmatch-style, linear).
//! - [`table`]: aligned text tables for human output.
//! - [`exit`]: the exit codes every binary of the suite uses.
//! - [`time`]: the audit trail's and the key properties' time stamps.
//! - [`docs`]: man pages and shell completions generated from a binary's clap definitions.
//! - [`sys`]: the workspace's only `unsafe` code: fork, `_exit`, signal dispositions and the
//!   FUSE server's terminate handler, mlock/madvise of key material.

pub mod device;
pub mod docs;
pub mod durable;
pub mod exit;
pub mod glob;
pub mod input;
pub mod sys;
pub mod table;
pub mod time;
