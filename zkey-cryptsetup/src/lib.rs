//! LUKS2 volumes whose volume key is a secure key (see DESIGN.md in the shared folder).
//!
//! The data path lives here: [`xts`], an AES-XTS engine bit-compatible with dm-crypt's
//! `aes-xts-plain64`, and [`fuse`], which serves an unlocked volume's decrypted payload as a
//! file because the machines this suite targets may have no dm-crypt.

pub mod fuse;
pub mod xts;
