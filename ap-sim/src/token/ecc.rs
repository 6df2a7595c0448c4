//! An APKA-wrapped P-256 private key: the KMS plug-in's TLS identity key, kept as a secure key
//! so that it is usable only where the APKA master key is loaded.
//!
//! Real CCA ECC private key tokens (type 0x1F) are long, variable-length structures the
//! simulator has no use for, so this is the simulator's own fixed layout, 161 bytes:
//!
//! | Offset | Len | Field | Value |
//! |-------:|----:|-------|-------|
//! | 0      | 1   | token type | 0xEC: not a CCA or EP11 token type, so real tools reject it rather than misread it |
//! | 1      | 1   | version | 0x01 |
//! | 2      | 2   | total length, big-endian | 161 |
//! | 4      | 1   | curve | 0x01: NIST P-256 |
//! | 5      | 3   | reserved | zero |
//! | 8      | 8   | MKVP | the APKA master key's 8-byte verification pattern |
//! | 16     | 65  | public key | SEC1 uncompressed point, 0x04 \|\| X \|\| Y |
//! | 81     | 16  | nonce | random, the AES-CTR initial counter block |
//! | 97     | 32  | encrypted private key | AES-256-CTR of the 32-byte big-endian scalar |
//! | 129    | 32  | tag | HMAC-SHA256 over bytes 0..129 |
//!
//! The public key is readable without the master key (the plug-in needs it for its certificate
//! request) but is covered by the tag, and after decryption the private scalar must generate that
//! very public key, so a token cannot pair one key's public half with another's private half.
//! Keys are derived from the APKA master key with their own label, unrelated to the AES formats'.

use std::fmt;

use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::{PublicKey, SecretKey};
use zeroize::{Zeroize, Zeroizing};

use super::crypto::{random, WrapKeys};
use super::{check_fixed, write_fixed, Fixed, TokenError};
use crate::mkvp::{MasterKey, Mkvp};

/// Token length in bytes.
pub const LEN: usize = 161;
pub const TOKEN_TYPE: u8 = 0xEC;
pub const VERSION: u8 = 0x01;
pub const CURVE_P256: u8 = 0x01;

pub const OFF_TYPE: usize = 0;
pub const OFF_VERSION: usize = 1;
pub const OFF_LEN: usize = 2;
pub const OFF_CURVE: usize = 4;
pub const OFF_MKVP: usize = 8;
pub const OFF_PUBLIC: usize = 16;
pub const PUBLIC_LEN: usize = 65;
pub const OFF_NONCE: usize = 81;
pub const OFF_PRIVATE: usize = 97;
pub const PRIVATE_LEN: usize = 32;
pub const OFF_TAG: usize = 129;
pub const TAG_LEN: usize = 32;

const KDF_DOMAIN: &str = "APKA-ECC-P256";
const KIND: &str = "APKA ECC";

const FIXED: &[Fixed] = &[
    super::fixed(OFF_TYPE, "token type", &[TOKEN_TYPE]),
    super::fixed(OFF_VERSION, "version", &[VERSION]),
    super::fixed(OFF_LEN, "token length", &(LEN as u16).to_be_bytes()),
    super::fixed(OFF_CURVE, "curve", &[CURVE_P256]),
    super::fixed(5, "reserved bytes", &[0; 3]),
];

/// A structurally valid APKA ECC key token. Its `Debug` shows the curve and MKVP only.
#[derive(Clone, PartialEq, Eq)]
pub struct EccKeyToken {
    bytes: Vec<u8>,
    public: PublicKey,
}

impl EccKeyToken {
    /// Wraps `secret` under the APKA master key `apka`.
    pub fn wrap(secret: &SecretKey, apka: &MasterKey) -> EccKeyToken {
        let keys = WrapKeys::derive(apka, KDF_DOMAIN);
        let public = secret.public_key();
        let mut t = vec![0u8; LEN];
        write_fixed(&mut t, FIXED);
        t[OFF_MKVP..OFF_PUBLIC].copy_from_slice(apka.cca_mkvp().as_bytes());
        t[OFF_PUBLIC..OFF_NONCE].copy_from_slice(public.to_encoded_point(false).as_bytes());
        let nonce = random::<16>();
        t[OFF_NONCE..OFF_PRIVATE].copy_from_slice(&nonce);
        let mut scalar = secret.to_bytes();
        // Encrypted in place: the clear scalar is in the token buffer only until the next
        // statement, and the temporary copy is wiped.
        t[OFF_PRIVATE..OFF_TAG].copy_from_slice(&scalar);
        scalar.as_mut_slice().zeroize();
        keys.ctr_apply(&nonce, &mut t[OFF_PRIVATE..OFF_TAG]);
        let tag = keys.mac(&[&t[..OFF_TAG]]);
        t[OFF_TAG..].copy_from_slice(&tag);
        EccKeyToken { bytes: t, public }
    }

    /// Checks the structure of `bytes`, including that the public key is a valid P-256 point.
    pub fn parse(bytes: &[u8]) -> Result<EccKeyToken, TokenError> {
        if bytes.len() != LEN {
            return Err(TokenError::Length {
                kind: KIND,
                expected: LEN,
                found: bytes.len(),
            });
        }
        check_fixed(KIND, bytes, FIXED)?;
        let point = &bytes[OFF_PUBLIC..OFF_NONCE];
        // 65 bytes with a 0x04 prefix: the uncompressed form is the only one the layout allows.
        if point[0] != 0x04 {
            return Err(TokenError::EccPublicKey { kind: KIND });
        }
        let public = PublicKey::from_sec1_bytes(point)
            .map_err(|_| TokenError::EccPublicKey { kind: KIND })?;
        Ok(EccKeyToken {
            bytes: bytes.to_vec(),
            public,
        })
    }

    /// Authenticates the token under the APKA master key `apka` and returns the private key.
    pub fn unwrap(&self, apka: &MasterKey) -> Result<SecretKey, TokenError> {
        let master = apka.cca_mkvp();
        if !self.mkvp().matches(&master) {
            return Err(TokenError::WrongMasterKey {
                kind: KIND,
                token: self.mkvp(),
                master,
            });
        }
        let keys = WrapKeys::derive(apka, KDF_DOMAIN);
        let t = &self.bytes;
        if !keys.verify(&[&t[..OFF_TAG]], &t[OFF_TAG..]) {
            return Err(TokenError::Authentication { kind: KIND });
        }
        let mut scalar = Zeroizing::new([0u8; PRIVATE_LEN]);
        scalar.copy_from_slice(&t[OFF_PRIVATE..OFF_TAG]);
        let nonce: [u8; 16] = t[OFF_NONCE..OFF_PRIVATE]
            .try_into()
            .expect("the nonce field is 16 bytes");
        keys.ctr_apply(&nonce, &mut scalar[..]);
        let secret = SecretKey::from_slice(&scalar[..])
            .map_err(|_| TokenError::EccKeyMismatch { kind: KIND })?;
        if secret.public_key() != self.public {
            return Err(TokenError::EccKeyMismatch { kind: KIND });
        }
        Ok(secret)
    }

    /// Re-enciphers the token from APKA master key `from` to `to`.
    pub fn rewrap(&self, from: &MasterKey, to: &MasterKey) -> Result<EccKeyToken, TokenError> {
        Ok(EccKeyToken::wrap(&self.unwrap(from)?, to))
    }

    /// The public key, readable without the master key.
    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    /// The APKA master key verification pattern (8 bytes).
    pub fn mkvp(&self) -> Mkvp {
        Mkvp::from_slice(&self.bytes[OFF_MKVP..OFF_PUBLIC]).expect("8 bytes are a valid MKVP")
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl fmt::Debug for EccKeyToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EccKeyToken")
            .field("curve", &"P-256")
            .field("mkvp", &self.mkvp())
            .finish()
    }
}
