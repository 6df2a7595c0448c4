//! zkey's KMS plug-ins: the protocol between zkey and a plug-in, and the KMIP plug-in.
//!
//! - [`plugin`]: the versioned plug-in protocol (JSON lines on stdin/stdout, specified in the
//!   module doc), the types both sides share, the [`plugin::Plugin`] trait and
//!   [`plugin::serve`] loop for plug-in authors, and [`plugin::PluginClient`], which zkey uses
//!   to run a plug-in executable with timeouts.
//! - [`kmip`]: a KMIP 1.x client: the TTLV codec, mutual TLS with failover, the operations.
//! - [`identity`]: the plug-in's identity key (a secure ECC key) signing TLS handshakes,
//!   CSRs and certificates through the HSM.
//! - [`kmip_plugin`]: the KMIP plug-in itself (bin `zkey-kms-kmip`): configuration, key
//!   generation and transfer (wrapped, unwrapped inside the adapter), properties, listing,
//!   removal, re-encipher of its own keys.
//!
//! Design rule: clear key material (the identity private key, volume keys) never appears in
//! files, logs, errors, argv or the environment; the protocol carries only secure keys.

pub mod identity;
pub mod kmip;
pub mod kmip_plugin;
/// The protocol is its own crate, for plug-in authors and for zkey; re-exported under its old
/// path for this crate's modules and tests.
pub use zkey_kms_protocol as plugin;
