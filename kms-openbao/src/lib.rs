//! The zkey OpenBao plug-in, in progress: OpenBao's transit engine over its REST API, with the
//! volume keys created in OpenBao and delivered only wrapped for an RSA key that the (simulated)
//! adapter holds, so that no volume key is ever in the clear on the host and, unlike the KMIP
//! plug-in, no wrapping key ever goes to the KMS.
//!
//! What exists: [`client`], the REST client (several servers tried in order, typed errors), and
//! [`fetch_secure_key`], the delivery of one key into a secure key. The plug-in protocol side
//! (`PluginV1`, the zkey commands, authentication by certificate or AppRole) is not written yet.

pub mod client;

use ap_sim::hsm::{Hsm, HsmError};
use ap_sim::token::rsa::RsaKeyToken;
use ap_sim::token::{KeyType, SecureKey};
use ap_sim::Apqn;

pub use client::{BaoClient, BaoError, KeyInfo};

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Bao(#[from] BaoError),
    #[error("the key fetched from OpenBao cannot be unwrapped in the adapter: {0}")]
    Hsm(#[from] HsmError),
    #[error("the OpenBao key '{name}' is a {key_type} key, not an {expected} volume key: use a key the plug-in created")]
    KeyType {
        name: String,
        key_type: String,
        expected: &'static str,
    },
}

/// Fetches the latest version of OpenBao volume key `volume_key` wrapped for the host key
/// `host_key` (the transit name under which `rsa_key`'s public half was imported) and unwraps
/// it inside the adapter into a secure key of `key_type`: the clear key never reaches this
/// process. Returns the key version with it.
pub fn fetch_secure_key(
    bao: &mut BaoClient,
    hsm: &Hsm,
    rsa_key: &RsaKeyToken,
    host_key: &str,
    volume_key: &str,
    key_type: KeyType,
    apqns: Option<&[Apqn]>,
) -> Result<(u32, SecureKey), FetchError> {
    let info = bao.key_info(volume_key)?;
    if info.key_type != client::VOLUME_KEY_TYPE {
        return Err(FetchError::KeyType {
            name: volume_key.to_string(),
            key_type: info.key_type,
            expected: client::VOLUME_KEY_TYPE,
        });
    }
    let (version, blob) = bao.byok_export(host_key, volume_key)?;
    let key = hsm.unwrap_rsa_aes_key_wrap(rsa_key, &blob, key_type, apqns)?;
    Ok((version, key))
}
