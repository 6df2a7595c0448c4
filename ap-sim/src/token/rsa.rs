//! An APKA-wrapped RSA private key: the key a KMS wraps volume keys for (PKCS #11
//! `CKM_RSA_AES_KEY_WRAP`, OpenBao's `byok-export`), kept as a secure key so that it is usable
//! only where the APKA master key is loaded. Only its public half ever leaves the adapter.
//!
//! Real CCA RSA private key tokens (type 0x1F, sections 0x30/0x31) are long variable-length
//! structures; this is the simulator's own layout, fixed for each modulus size. With `k` the
//! modulus length in bytes (384 for 3072 bits, 512 for 4096), it is `68 + 2k` bytes:
//!
//! | Offset | Len | Field | Value |
//! |-------:|----:|-------|-------|
//! | 0      | 1   | token type | 0xE5: not a CCA or EP11 token type, so real tools reject it rather than misread it |
//! | 1      | 1   | version | 0x01 |
//! | 2      | 2   | total length, big-endian | `68 + 2k` |
//! | 4      | 2   | modulus size in bits, big-endian | 3072 or 4096 |
//! | 6      | 2   | reserved | zero |
//! | 8      | 8   | MKVP | the APKA master key's 8-byte verification pattern |
//! | 16     | 4   | public exponent, big-endian | 65537 |
//! | 20     | k   | modulus n, big-endian | its top bit set, odd |
//! | 20+k   | 16  | nonce | random, the AES-CTR initial counter block |
//! | 36+k   | k   | encrypted private key | AES-256-CTR of p \|\| q, each `k/2` bytes big-endian |
//! | 36+2k  | 32  | tag | HMAC-SHA256 over bytes `0..36+2k` |
//!
//! The public key is readable without the master key (the host registers it with the KMS) but
//! is covered by the tag; after decryption p·q must equal that very modulus, so a token cannot
//! pair one key's public half with another's private half. Keys are derived from the APKA
//! master key with their own label, unrelated to the ECC and AES formats'.

use std::fmt;

use ::rsa::pkcs8::{EncodePublicKey, LineEnding};
use ::rsa::traits::{PrivateKeyParts, PublicKeyParts};
use ::rsa::{BigUint, RsaPrivateKey, RsaPublicKey};
use zeroize::{Zeroize, Zeroizing};

use super::crypto::{random, WrapKeys};
use super::{be16, check_fixed, check_zero, write_fixed, Fixed, TokenError};
use crate::mkvp::{MasterKey, Mkvp};

pub const TOKEN_TYPE: u8 = 0xE5;
pub const VERSION: u8 = 0x01;
/// The modulus sizes the adapter makes and accepts: 3072 bits (NIST's 128-bit level, what
/// OpenBao's `rsa-3072` is) and 4096.
pub const BITS: [u32; 2] = [3072, 4096];
/// The only public exponent: what every generator uses, and one value less to validate.
pub const PUBLIC_EXPONENT: u32 = 65537;

pub const OFF_TYPE: usize = 0;
pub const OFF_VERSION: usize = 1;
pub const OFF_LEN: usize = 2;
pub const OFF_BITS: usize = 4;
pub const OFF_MKVP: usize = 8;
pub const OFF_EXPONENT: usize = 16;
pub const OFF_MODULUS: usize = 20;
const NONCE_LEN: usize = 16;
const TAG_LEN: usize = 32;

const KDF_DOMAIN: &str = "APKA-RSA";
const KIND: &str = "APKA RSA";

const FIXED: &[Fixed] = &[
    super::fixed(OFF_TYPE, "token type", &[TOKEN_TYPE]),
    super::fixed(OFF_VERSION, "version", &[VERSION]),
    super::fixed(
        OFF_EXPONENT,
        "public exponent",
        &PUBLIC_EXPONENT.to_be_bytes(),
    ),
];

/// The token length for a modulus of `bits` bits.
pub fn token_len(bits: u32) -> usize {
    let k = bits as usize / 8;
    OFF_MODULUS + k + NONCE_LEN + k + TAG_LEN
}

/// Where the fields after the modulus start, for a modulus of `k` bytes.
struct Offsets {
    nonce: usize,
    private: usize,
    tag: usize,
}

fn offsets(k: usize) -> Offsets {
    let nonce = OFF_MODULUS + k;
    Offsets {
        nonce,
        private: nonce + NONCE_LEN,
        tag: nonce + NONCE_LEN + k,
    }
}

/// A structurally valid APKA RSA key token. Its `Debug` shows the modulus size and MKVP only.
#[derive(Clone, PartialEq, Eq)]
pub struct RsaKeyToken {
    bytes: Vec<u8>,
    public: RsaPublicKey,
}

impl RsaKeyToken {
    /// Wraps `secret` (two primes, exponent 65537, 3072 or 4096 bits) under the APKA master key
    /// `apka`.
    pub fn wrap(secret: &RsaPrivateKey, apka: &MasterKey) -> Result<RsaKeyToken, TokenError> {
        let bits = secret.n().bits() as u32;
        if !BITS.contains(&bits) {
            return Err(TokenError::RsaKeyBits(bits));
        }
        let k = bits as usize / 8;
        let half = k / 2;
        let primes = secret.primes();
        // Checked before anything is written: an error after a prime went into the buffer
        // would drop clear key material unwiped.
        if primes.len() != 2
            || primes.iter().any(|p| p.bits() > half * 8)
            || *secret.e() != BigUint::from(PUBLIC_EXPONENT)
        {
            return Err(TokenError::RsaKeyShape { kind: KIND });
        }
        let off = offsets(k);
        let len = token_len(bits);
        let mut t = vec![0u8; len];
        write_fixed(&mut t, FIXED);
        t[OFF_LEN..OFF_BITS].copy_from_slice(&(len as u16).to_be_bytes());
        t[OFF_BITS..OFF_BITS + 2].copy_from_slice(&(bits as u16).to_be_bytes());
        t[OFF_MKVP..OFF_EXPONENT].copy_from_slice(apka.cca_mkvp().as_bytes());
        put_be(
            &mut t[OFF_MODULUS..off.nonce],
            &Zeroizing::new(secret.n().to_bytes_be()),
        )?;
        let nonce = random::<NONCE_LEN>();
        t[off.nonce..off.private].copy_from_slice(&nonce);
        // The clear primes are in the token buffer only until the encryption below (their
        // sizes were checked above, so nothing fails in between), and their big-endian copies
        // are wiped on drop.
        for (i, p) in primes.iter().enumerate() {
            let start = off.private + i * half;
            put_be(
                &mut t[start..start + half],
                &Zeroizing::new(p.to_bytes_be()),
            )
            .expect("prime sizes checked");
        }
        let keys = wrap_keys(apka);
        keys.ctr_apply(&nonce, &mut t[off.private..off.tag]);
        let tag = keys.mac(&[&t[..off.tag]]);
        t[off.tag..].copy_from_slice(&tag);
        Ok(RsaKeyToken {
            bytes: t,
            public: secret.to_public_key(),
        })
    }

    /// Checks the structure of `bytes`: the length its modulus size gives, the fixed fields,
    /// and that the public key is a valid RSA key of that size.
    pub fn parse(bytes: &[u8]) -> Result<RsaKeyToken, TokenError> {
        if bytes.len() < OFF_MODULUS {
            return Err(TokenError::Length {
                kind: KIND,
                expected: token_len(BITS[0]),
                found: bytes.len(),
            });
        }
        let bits = u32::from(be16(bytes, OFF_BITS));
        if !BITS.contains(&bits) {
            return Err(TokenError::RsaKeyBits(bits));
        }
        let expected = token_len(bits);
        if bytes.len() != expected {
            return Err(TokenError::Length {
                kind: KIND,
                expected,
                found: bytes.len(),
            });
        }
        check_fixed(KIND, bytes, FIXED)?;
        if usize::from(be16(bytes, OFF_LEN)) != expected {
            return Err(TokenError::Field {
                kind: KIND,
                field: "token length",
                offset: OFF_LEN,
                found: format!("{}", be16(bytes, OFF_LEN)),
                expected: format!("{expected}"),
            });
        }
        check_zero(KIND, bytes, OFF_BITS + 2..OFF_MKVP, "reserved bytes")?;
        let off = offsets(bits as usize / 8);
        let n = BigUint::from_bytes_be(&bytes[OFF_MODULUS..off.nonce]);
        // Exactly `bits` bits and odd: an RSA modulus is a product of two odd primes whose
        // sizes make it full length.
        if n.bits() as u32 != bits || bytes[off.nonce - 1] & 1 == 0 {
            return Err(TokenError::RsaPublicKey { kind: KIND });
        }
        let public = RsaPublicKey::new(n, BigUint::from(PUBLIC_EXPONENT))
            .map_err(|_| TokenError::RsaPublicKey { kind: KIND })?;
        Ok(RsaKeyToken {
            bytes: bytes.to_vec(),
            public,
        })
    }

    /// Authenticates the token under the APKA master key `apka` and returns the private key
    /// (which zeroes itself when dropped).
    pub fn unwrap(&self, apka: &MasterKey) -> Result<RsaPrivateKey, TokenError> {
        let master = apka.cca_mkvp();
        if !self.mkvp().matches(&master) {
            return Err(TokenError::WrongMasterKey {
                kind: KIND,
                token: self.mkvp(),
                master,
            });
        }
        let keys = wrap_keys(apka);
        let k = self.bits() as usize / 8;
        let off = offsets(k);
        let t = &self.bytes;
        if !keys.verify(&[&t[..off.tag]], &t[off.tag..]) {
            return Err(TokenError::Authentication { kind: KIND });
        }
        let mut clear = Zeroizing::new(t[off.private..off.tag].to_vec());
        let nonce: [u8; NONCE_LEN] = t[off.nonce..off.private]
            .try_into()
            .expect("the nonce field is 16 bytes");
        keys.ctr_apply(&nonce, &mut clear);
        let (p, q) = clear.split_at(k / 2);
        let (mut p, mut q) = (BigUint::from_bytes_be(p), BigUint::from_bytes_be(q));
        let secret = RsaPrivateKey::from_p_q(p.clone(), q.clone(), BigUint::from(PUBLIC_EXPONENT));
        p.zeroize();
        q.zeroize();
        let secret = secret.map_err(|_| TokenError::RsaKeyMismatch { kind: KIND })?;
        if secret.n() != self.public.n() {
            return Err(TokenError::RsaKeyMismatch { kind: KIND });
        }
        Ok(secret)
    }

    /// Re-enciphers the token from APKA master key `from` to `to`: the same key pair, so
    /// whatever the KMS registered stays valid.
    pub fn rewrap(&self, from: &MasterKey, to: &MasterKey) -> Result<RsaKeyToken, TokenError> {
        RsaKeyToken::wrap(&self.unwrap(from)?, to)
    }

    /// The modulus size in bits: 3072 or 4096.
    pub fn bits(&self) -> u32 {
        u32::from(be16(&self.bytes, OFF_BITS))
    }

    /// The public key, readable without the master key.
    pub fn public_key(&self) -> &RsaPublicKey {
        &self.public
    }

    /// The public key as an X.509 SubjectPublicKeyInfo, DER.
    pub fn public_key_der(&self) -> Vec<u8> {
        self.public
            .to_public_key_der()
            .expect("a valid RSA public key encodes")
            .into_vec()
    }

    /// The public key as an X.509 SubjectPublicKeyInfo, PEM (`BEGIN PUBLIC KEY`): what
    /// OpenBao's `transit/keys/NAME/import` takes as `public_key`.
    pub fn public_key_pem(&self) -> String {
        self.public
            .to_public_key_pem(LineEnding::LF)
            .expect("a valid RSA public key encodes")
    }

    /// The APKA master key verification pattern (8 bytes).
    pub fn mkvp(&self) -> Mkvp {
        Mkvp::from_slice(&self.bytes[OFF_MKVP..OFF_EXPONENT]).expect("8 bytes are a valid MKVP")
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

fn wrap_keys(apka: &MasterKey) -> WrapKeys {
    WrapKeys::derive(apka, KDF_DOMAIN)
}

/// Writes the big-endian number `be` right-aligned into `field`, zero-padded on the left.
fn put_be(field: &mut [u8], be: &[u8]) -> Result<(), TokenError> {
    let pad = field
        .len()
        .checked_sub(be.len())
        .ok_or(TokenError::RsaKeyShape { kind: KIND })?;
    field[..pad].fill(0);
    field[pad..].copy_from_slice(be);
    Ok(())
}

impl fmt::Debug for RsaKeyToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RsaKeyToken")
            .field("bits", &self.bits())
            .field("mkvp", &self.mkvp())
            .finish()
    }
}
