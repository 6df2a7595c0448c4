//! Secure key tokens: the byte layouts of CCA and EP11 AES secure keys, and the wrapping of clear
//! key material under a master key as the simulated adapters do it.
//!
//! A secure key is a clear AES key encrypted under an adapter's master key, in a token whose
//! header says what it is and which master key wraps it (the MKVP). zkey stores such tokens in
//! files and hands them to the kernel, which checks their structure and their MKVP before any
//! adapter sees them. This module reproduces both halves of that:
//!
//! - [`Token::parse`] checks structure only, exactly what can be checked without a master key
//!   (what the kernel's `pkey` driver checks), byte for byte against the real layouts, so files
//!   interchange with tools that know the real formats.
//! - [`Token::wrap`], [`Token::unwrap`] and [`Token::rewrap`] are what an adapter does with its
//!   master key. Real adapters use undocumented firmware algorithms; the simulator uses
//!   authenticated encryption that fits into the real field sizes. The shared primitives are in
//!   `crypto` (private): per-format keys derived from the master key with HMAC-SHA256 and
//!   distinct labels, AES-256-CTR with a random nonce, and HMAC-SHA256 tags.
//!
//! The formats, one submodule each with its offsets documented there:
//! - [`aesdata`]: CCA-AESDATA, 64 bytes (kernel `struct secaeskeytoken`).
//! - [`aescipher`]: CCA-AESCIPHER, 120/128/136 bytes (kernel `struct cipherkeytoken`).
//! - [`ep11`]: EP11-AES, 320 bytes, or 336 with a leading header (kernel `struct ep11keyblob`).
//! - [`ecc`]: the simulator's own APKA-wrapped P-256 private key token.
//! - [`rsa`]: the simulator's own APKA-wrapped RSA private key token (3072/4096 bits).
//!
//! Security properties the tests check for every format: a token unwraps only under the master
//! key that wrapped it; a wrong master key is recognised from the MKVP and reported as such, and
//! never yields key bytes; changing any single bit of a token makes `parse` or `unwrap` fail.
//! Clear key material is only ever held in [`Zeroizing`] buffers, and no `Debug` output shows
//! anything but a token's type, size and MKVP.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

use crate::adapter::Mode;
use crate::mkvp::{MasterKey, Mkvp};
use crate::registers::MkType;

pub mod aescipher;
pub mod aesdata;
mod crypto;
pub mod ecc;
pub mod ep11;
pub mod rsa;

use crypto::WrapKeys;

/// The secure key types zkey knows for AES volume keys.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyType {
    /// CCA internal AES DATA key token (version 0x04), the zkey default.
    CcaAesData,
    /// CCA variable-length symmetric AES CIPHER key token (version 0x05).
    CcaAesCipher,
    /// EP11 AES key blob.
    Ep11Aes,
}

impl KeyType {
    pub const ALL: [KeyType; 3] = [KeyType::CcaAesData, KeyType::CcaAesCipher, KeyType::Ep11Aes];

    /// The name zkey uses (`--key-type`).
    pub fn name(self) -> &'static str {
        match self {
            KeyType::CcaAesData => "CCA-AESDATA",
            KeyType::CcaAesCipher => "CCA-AESCIPHER",
            KeyType::Ep11Aes => "EP11-AES",
        }
    }

    /// The master key type that wraps keys of this type.
    pub fn mk_type(self) -> MkType {
        match self {
            KeyType::CcaAesData | KeyType::CcaAesCipher => MkType::Aes,
            KeyType::Ep11Aes => MkType::Ep11,
        }
    }

    /// The adapter mode that can use keys of this type.
    pub fn mode(self) -> Mode {
        match self {
            KeyType::CcaAesData | KeyType::CcaAesCipher => Mode::Cca,
            KeyType::Ep11Aes => Mode::Ep11,
        }
    }

    /// The length in bytes of a token of this type holding a `bits`-bit key, as [`Token::wrap`]
    /// makes it (EP11: the 320-byte form without the leading header). `bits` outside
    /// 128/192/256 are treated as 256.
    pub fn token_len(self, bits: u32) -> usize {
        match self {
            KeyType::CcaAesData => aesdata::LEN,
            KeyType::CcaAesCipher => aescipher::token_len(bits),
            KeyType::Ep11Aes => ep11::LEN,
        }
    }

    /// The verification pattern a token of this type carries for master key `mk`: the 8-byte
    /// CCA MKVP, or the first 16 bytes of the EP11 WKVP.
    pub fn pattern_of(self, mk: &MasterKey) -> Mkvp {
        match self.mk_type() {
            MkType::Ep11 => mk.ep11_wkvp().truncated(ep11::WKVP_LEN),
            MkType::Aes | MkType::Apka => mk.cca_mkvp(),
        }
    }

    /// The key derivation label of this type: distinct per type, so that the same master key
    /// wraps each type under unrelated keys.
    fn kdf_domain(self) -> &'static str {
        match self {
            KeyType::CcaAesData => aesdata::KDF_DOMAIN,
            KeyType::CcaAesCipher => aescipher::KDF_DOMAIN,
            KeyType::Ep11Aes => ep11::KDF_DOMAIN,
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for KeyType {
    type Err = TokenError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KeyType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| TokenError::UnknownKeyType(s.to_string()))
    }
}

impl Serialize for KeyType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for KeyType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Why a token could not be parsed, wrapped or unwrapped. `kind` names the format ("CCA-AESDATA",
/// …, "APKA ECC").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("unknown key type '{0}': use CCA-AESDATA, CCA-AESCIPHER or EP11-AES")]
    UnknownKeyType(String),
    #[error("{found} bytes are too short for a secure key token (the shortest has {min}): the file is truncated or is not a secure key")]
    TooShort { found: usize, min: usize },
    #[error("not a secure key token: type 0x{kind:02x} version 0x{version:02x} is none of CCA-AESDATA (0x01/0x04), CCA-AESCIPHER (0x01/0x05) or EP11-AES (0x00/0x03 or 0x00/0x06); check that the file holds a secure AES key")]
    UnknownFormat { kind: u8, version: u8 },
    #[error("this {kind} token must be {expected} bytes long but {found} bytes were given: the token is truncated or has trailing data")]
    Length {
        kind: &'static str,
        expected: usize,
        found: usize,
    },
    #[error("the {kind} token is malformed: its {field} at offset {offset} is {found} where {expected} is required; the token is corrupted or was not made in this format")]
    Field {
        kind: &'static str,
        field: &'static str,
        offset: usize,
        found: String,
        expected: String,
    },
    #[error("the {kind} token's key size field says {bits} bits: only 128, 192 and 256 exist; the token is corrupted")]
    KeyBits { kind: &'static str, bits: u32 },
    #[error("the {kind} token's check byte (LRC) does not match its contents: the token is corrupted; restore it from a backup")]
    Lrc { kind: &'static str },
    #[error("the EP11 key blob is bound to an EP11 session (its session field is not zero): session-bound keys cannot be used for volume encryption; generate the key again without a session")]
    SessionBound,
    #[error("the {kind} token does not allow export to CPACF ({detail}), so no protected key can be derived from it: generate or import the key with CPACF export allowed")]
    NotCpacfExportable {
        kind: &'static str,
        detail: &'static str,
    },
    #[error(
        "a clear AES key must be 16, 24 or 32 bytes (AES-128, AES-192, AES-256), not {0} bytes"
    )]
    ClearKeyLength(usize),
    #[error("the {kind} token is enciphered with the master key whose verification pattern is {token}, but the given master key's is {master}: use the master key that matches (the CURRENT or OLD register of an APQN holding it), or re-encipher the key")]
    WrongMasterKey {
        kind: &'static str,
        token: Mkvp,
        master: Mkvp,
    },
    #[error("the {kind} token failed authentication under its master key (the verification pattern matches but the token's MAC does not): it was modified or is corrupted; restore it from a backup")]
    Authentication { kind: &'static str },
    #[error("an XTS secure key needs two tokens of the same type and size, but the first half is a {first} token and the second a {second} token: the two halves do not belong together")]
    XtsMismatch { first: String, second: String },
    #[error("the two halves of the XTS key are enciphered with different master keys (MKVPs {first} and {second}): re-encipher both halves to the same master key")]
    XtsMkvpMismatch { first: Mkvp, second: Mkvp },
    #[error("AES-XTS takes two 128-bit or two 256-bit keys, not {0}-bit ones: generate the XTS key with 128 or 256 bits")]
    XtsKeyBits(u32),
    #[error("{found} bytes are neither one {kind} token ({single} bytes) nor an XTS pair of them ({double} bytes): the file is truncated or has trailing data")]
    SecureKeyLength {
        kind: &'static str,
        found: usize,
        single: usize,
        double: usize,
    },
    #[error("the {kind} token holds no valid P-256 public key: the token is corrupted; restore it from a backup")]
    EccPublicKey { kind: &'static str },
    #[error("the {kind} token's private key does not belong to the public key it carries: the token was built wrongly; generate the key again")]
    EccKeyMismatch { kind: &'static str },
    #[error("an RSA key of {0} bits cannot be an adapter's RSA key: only 3072 and 4096 bits are supported; generate the key again with one of them")]
    RsaKeyBits(u32),
    #[error("the {kind} token holds no valid RSA public key (its modulus must be full length and odd, its exponent 65537): the token is corrupted; restore it from a backup")]
    RsaPublicKey { kind: &'static str },
    #[error("the RSA key does not fit the {kind} token: it must have two primes and the public exponent 65537; generate it in the adapter")]
    RsaKeyShape { kind: &'static str },
    #[error("the {kind} token's private key does not belong to the public key it carries: the token was built wrongly; generate the key again")]
    RsaKeyMismatch { kind: &'static str },
}

/// The smallest token of any format (CCA-AESDATA). Anything shorter is not a token.
const MIN_TOKEN_LEN: usize = aesdata::LEN;

/// One structurally valid secure key token of a known type. Its `Debug` shows type, size and
/// MKVP only.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    key_type: KeyType,
    bits: u32,
    bytes: Vec<u8>,
}

impl Token {
    /// Checks the structure of `bytes` (lengths, type and version bytes, reserved and padding
    /// bytes, key size, the format's unkeyed checks) without any master key.
    pub fn parse(bytes: &[u8]) -> Result<Token, TokenError> {
        let (key_type, _) = identify(bytes)?;
        let bits = match key_type {
            KeyType::CcaAesData => aesdata::check(bytes)?,
            KeyType::CcaAesCipher => aescipher::check(bytes)?,
            KeyType::Ep11Aes => ep11::check(bytes)?,
        };
        Ok(Token {
            key_type,
            bits,
            bytes: bytes.to_vec(),
        })
    }

    pub fn key_type(&self) -> KeyType {
        self.key_type
    }

    /// The size of the wrapped AES key: 128, 192 or 256.
    pub fn key_bits(&self) -> u32 {
        self.bits
    }

    /// The verification pattern of the wrapping master key as the token stores it: 8 bytes for
    /// CCA, the 16-byte WKVP field for EP11.
    pub fn mkvp(&self) -> Mkvp {
        match self.key_type {
            KeyType::CcaAesData => aesdata::mkvp(&self.bytes),
            KeyType::CcaAesCipher => aescipher::mkvp(&self.bytes),
            KeyType::Ep11Aes => ep11::mkvp(&self.bytes),
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Whether `mk` is the master key this token names (by verification pattern). Says nothing
    /// about the token's integrity; [`Token::unwrap`] checks that.
    pub fn is_wrapped_by(&self, mk: &MasterKey) -> bool {
        self.mkvp().matches(&self.key_type.pattern_of(mk))
    }

    /// Wraps the clear AES key `clear` (16, 24 or 32 bytes) under `mk` into a new token.
    pub fn wrap(key_type: KeyType, clear: &[u8], mk: &MasterKey) -> Result<Token, TokenError> {
        Self::seal(key_type, clear, mk, Template::Fresh)
    }

    /// Wraps `clear` into the 336-byte EP11-AES form that carries a 16-byte header (version
    /// 0x06) in front of the 320-byte blob.
    pub fn wrap_ep11_with_header(clear: &[u8], mk: &MasterKey) -> Result<Token, TokenError> {
        Self::seal(KeyType::Ep11Aes, clear, mk, Template::Ep11WithHeader)
    }

    /// Authenticates the token under `mk` and returns the clear key. A master key other than
    /// the token's is refused by its verification pattern before any cryptography is done.
    pub fn unwrap(&self, mk: &MasterKey) -> Result<Zeroizing<Vec<u8>>, TokenError> {
        self.check_master_key(mk)?;
        let keys = WrapKeys::derive(mk, self.key_type.kdf_domain());
        match self.key_type {
            KeyType::CcaAesData => aesdata::open(&keys, &self.bytes),
            KeyType::CcaAesCipher => aescipher::open(&keys, &self.bytes),
            KeyType::Ep11Aes => ep11::open(&keys, &self.bytes),
        }
    }

    /// Re-enciphers the token from master key `from` to master key `to`: the same clear key and
    /// the same attributes (usage fields, EP11 form and attributes), a new MKVP and ciphertext.
    pub fn rewrap(&self, from: &MasterKey, to: &MasterKey) -> Result<Token, TokenError> {
        let clear = self.unwrap(from)?;
        Self::seal(self.key_type, &clear, to, Template::Like(self))
    }

    fn check_master_key(&self, mk: &MasterKey) -> Result<(), TokenError> {
        if self.is_wrapped_by(mk) {
            Ok(())
        } else {
            Err(TokenError::WrongMasterKey {
                kind: self.key_type.name(),
                token: self.mkvp(),
                master: self.key_type.pattern_of(mk),
            })
        }
    }

    /// Builds a token of `key_type` holding `clear` under `mk`, shaped after `template`.
    fn seal(
        key_type: KeyType,
        clear: &[u8],
        mk: &MasterKey,
        template: Template<'_>,
    ) -> Result<Token, TokenError> {
        let bits = clear_key_bits(clear)?;
        let keys = WrapKeys::derive(mk, key_type.kdf_domain());
        let pattern = key_type.pattern_of(mk);
        let like = match template {
            Template::Like(t) if t.key_type == key_type => Some(t.as_bytes()),
            _ => None,
        };
        let bytes = match key_type {
            KeyType::CcaAesData => aesdata::seal(&keys, &pattern, clear),
            KeyType::CcaAesCipher => aescipher::seal(&keys, &pattern, clear, like),
            KeyType::Ep11Aes => {
                let shape = match (like, template) {
                    (Some(t), _) => ep11::Shape::of(t),
                    (None, Template::Ep11WithHeader) => ep11::Shape::WITH_HEADER,
                    (None, _) => ep11::Shape::DEFAULT,
                };
                ep11::seal(&keys, &pattern, clear, shape)
            }
        };
        debug_assert!(Token::parse(&bytes).is_ok(), "a sealed token must parse");
        Ok(Token {
            key_type,
            bits,
            bytes,
        })
    }
}

/// What a new token copies its attributes from.
#[derive(Copy, Clone)]
enum Template<'a> {
    /// The defaults of [`Token::wrap`].
    Fresh,
    /// The defaults, but the EP11 form with the leading header.
    Ep11WithHeader,
    /// An existing token being re-enciphered: keep its usage and management fields.
    Like(&'a Token),
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("key_type", &self.key_type)
            .field("bits", &self.bits)
            .field("mkvp", &self.mkvp())
            .finish()
    }
}

/// A volume's secure key: one token, or two for AES-XTS (two tokens of the same type, size and
/// master key, concatenated in the key file).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SecureKey {
    halves: Vec<Token>,
}

impl SecureKey {
    /// The largest secure key file of any type: an XTS pair of EP11 tokens with their headers.
    /// Readers of key files stop there (`infra::input`), so `/dev/zero` is refused at once.
    pub const MAX_LEN: usize = 2 * ep11::LEN_WITH_HEADER;
    /// What a secure key file is, for bounded reads.
    pub const FILE: infra::input::Bound =
        infra::input::Bound::new("secure key", Self::MAX_LEN as u64);

    /// Parses a key file's contents: one token, or two concatenated tokens of the same type and
    /// size. The first token's header says how long one token is.
    pub fn parse(bytes: &[u8]) -> Result<SecureKey, TokenError> {
        let (key_type, single) = identify(bytes)?;
        if bytes.len() == single {
            return Ok(SecureKey::single(Token::parse(bytes)?));
        }
        if bytes.len() == 2 * single {
            let (a, b) = bytes.split_at(single);
            return SecureKey::xts(Token::parse(a)?, Token::parse(b)?);
        }
        Err(TokenError::SecureKeyLength {
            kind: key_type.name(),
            found: bytes.len(),
            single,
            double: 2 * single,
        })
    }

    pub fn single(t: Token) -> SecureKey {
        SecureKey { halves: vec![t] }
    }

    /// An XTS key from its two halves, which must be of the same type and token size, with
    /// 128- or 256-bit keys, wrapped by the same master key.
    pub fn xts(a: Token, b: Token) -> Result<SecureKey, TokenError> {
        if a.key_type != b.key_type || a.bits != b.bits || a.bytes.len() != b.bytes.len() {
            let describe =
                |t: &Token| format!("{}-byte {} {}-bit", t.bytes.len(), t.key_type, t.bits);
            return Err(TokenError::XtsMismatch {
                first: describe(&a),
                second: describe(&b),
            });
        }
        if a.bits == 192 {
            return Err(TokenError::XtsKeyBits(a.bits));
        }
        if a.mkvp() != b.mkvp() {
            return Err(TokenError::XtsMkvpMismatch {
                first: a.mkvp(),
                second: b.mkvp(),
            });
        }
        Ok(SecureKey { halves: vec![a, b] })
    }

    /// One token, or the two XTS halves in file order.
    pub fn halves(&self) -> &[Token] {
        &self.halves
    }

    pub fn is_xts(&self) -> bool {
        self.halves.len() == 2
    }

    pub fn key_type(&self) -> KeyType {
        self.halves[0].key_type
    }

    /// The AES key size of each half.
    pub fn key_bits(&self) -> u32 {
        self.halves[0].bits
    }

    /// The master key verification pattern (both XTS halves have the same).
    pub fn mkvp(&self) -> Mkvp {
        self.halves[0].mkvp()
    }

    /// The key file contents: the tokens concatenated.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.halves
            .iter()
            .flat_map(|t| t.as_bytes())
            .copied()
            .collect()
    }

    /// The key file length in bytes.
    pub fn len(&self) -> usize {
        self.halves.iter().map(|t| t.as_bytes().len()).sum()
    }

    /// Never true: a secure key has at least one token.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// Tells the format of a token from its first bytes (type at offset 0, version at offset 4 in
/// every format) and the token length its header declares, checked to be one the format has.
fn identify(bytes: &[u8]) -> Result<(KeyType, usize), TokenError> {
    if bytes.len() < MIN_TOKEN_LEN {
        return Err(TokenError::TooShort {
            found: bytes.len(),
            min: MIN_TOKEN_LEN,
        });
    }
    match (bytes[0], bytes[4]) {
        (aesdata::TOKEN_TYPE, aesdata::VERSION) => Ok((KeyType::CcaAesData, aesdata::LEN)),
        (aescipher::TOKEN_TYPE, aescipher::VERSION) => {
            Ok((KeyType::CcaAesCipher, aescipher::declared_len(bytes)?))
        }
        (ep11::TOKEN_TYPE, v) if v == ep11::VERSION_OVERLAID || v == ep11::VERSION_HEADER => {
            Ok((KeyType::Ep11Aes, ep11::declared_len(bytes)?))
        }
        (kind, version) => Err(TokenError::UnknownFormat { kind, version }),
    }
}

/// The AES key size of a clear key, or why it is not one.
fn clear_key_bits(clear: &[u8]) -> Result<u32, TokenError> {
    match clear.len() {
        16 | 24 | 32 => Ok(clear.len() as u32 * 8),
        n => Err(TokenError::ClearKeyLength(n)),
    }
}

/// A big-endian u16 at `off`; the caller has checked the length.
fn be16(t: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([t[off], t[off + 1]])
}

/// A field with one required value, for the table-driven checks and builders of each format.
struct Fixed {
    offset: usize,
    name: &'static str,
    value: &'static [u8],
}

const fn fixed(offset: usize, name: &'static str, value: &'static [u8]) -> Fixed {
    Fixed {
        offset,
        name,
        value,
    }
}

/// Checks every field of `table` in `t` (which is long enough), reporting the first mismatch.
fn check_fixed(kind: &'static str, t: &[u8], table: &[Fixed]) -> Result<(), TokenError> {
    for f in table {
        let found = &t[f.offset..f.offset + f.value.len()];
        if found != f.value {
            return Err(field_error(kind, f.name, f.offset, found, f.value));
        }
    }
    Ok(())
}

/// Writes every field of `table` into `t`.
fn write_fixed(t: &mut [u8], table: &[Fixed]) {
    for f in table {
        t[f.offset..f.offset + f.value.len()].copy_from_slice(f.value);
    }
}

/// Checks that `t[range]` is all zero (reserved bytes, padding, unused parts of fields).
fn check_zero(
    kind: &'static str,
    t: &[u8],
    range: std::ops::Range<usize>,
    name: &'static str,
) -> Result<(), TokenError> {
    let found = &t[range.clone()];
    if found.iter().any(|&b| b != 0) {
        return Err(TokenError::Field {
            kind,
            field: name,
            offset: range.start,
            found: format!("0x{}", hex::encode(found)),
            expected: "all zero".into(),
        });
    }
    Ok(())
}

fn field_error(
    kind: &'static str,
    field: &'static str,
    offset: usize,
    found: &[u8],
    expected: &[u8],
) -> TokenError {
    TokenError::Field {
        kind,
        field,
        offset,
        found: format!("0x{}", hex::encode(found)),
        expected: format!("0x{}", hex::encode(expected)),
    }
}

/// The key size encoded by a size field, checked to be an AES key size.
fn checked_bits(kind: &'static str, bits: u32) -> Result<u32, TokenError> {
    match bits {
        128 | 192 | 256 => Ok(bits),
        _ => Err(TokenError::KeyBits { kind, bits }),
    }
}

#[cfg(test)]
mod tests;
