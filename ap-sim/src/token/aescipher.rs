//! CCA-AESCIPHER: the CCA variable-length symmetric key token, version 0x05, holding an AES
//! CIPHER key (the kernel's `struct cipherkeytoken`). 120, 128 or 136 bytes for AES-128, -192
//! and -256: a 56-byte header and a wrapped payload of `wpllen / 8` bytes.
//!
//! | Offset | Len | Field | Value |
//! |-------:|----:|-------|-------|
//! | 0      | 1   | token type | 0x01 (CCA internal) |
//! | 1      | 1   | reserved | zero |
//! | 2      | 2   | total token length, big-endian | 56 + wpllen / 8 |
//! | 4      | 1   | version | 0x05 |
//! | 5      | 3   | reserved | zero |
//! | 8      | 1   | key material state | 0x03: wrapped under the AES master key |
//! | 9      | 1   | key verification pattern type | 0x01: MKVP |
//! | 10     | 16  | KVP field | the 8-byte MKVP, then 8 zero bytes |
//! | 26     | 1   | wrapping method | 0x02 (AESKW on real cards) |
//! | 27     | 1   | hash algorithm | 0x02 (SHA-256) |
//! | 28     | 1   | payload format version | 0x00 (payload sized by key length) |
//! | 29     | 1   | reserved | zero |
//! | 30     | 1   | associated data section (ADS) version | 0x01 |
//! | 31     | 1   | reserved | zero |
//! | 32     | 2   | ADS length, big-endian | 26 (bytes 30..56) |
//! | 34     | 1   | key label length | 0 |
//! | 35     | 1   | IEAS length | 0 |
//! | 36     | 1   | user-defined AD length | 0 |
//! | 37     | 1   | reserved | zero |
//! | 38     | 2   | wrapped payload length in bits, big-endian | 512 / 576 / 640 for AES-128 / -192 / -256 |
//! | 40     | 1   | reserved | zero |
//! | 41     | 1   | algorithm | 0x02 (AES) |
//! | 42     | 2   | key type, big-endian | 0x0001 (CIPHER) |
//! | 44     | 1   | key-usage field count | 2 |
//! | 45     | 4   | KUF1, KUF2 | new tokens: 0xC000 (ENCRYPT, DECRYPT), 0x0000 |
//! | 49     | 1   | key-management field count | 3 |
//! | 50     | 6   | KMF1, KMF2, KMF3 | KMF1 must have 0x0800 (XPRTCPAC); new tokens: 0x0800, 0, 0 |
//! | 56     | 16  | payload: nonce | random, the AES-CTR initial counter block |
//! | 72     | n   | payload: encrypted key | AES-256-CTR of the n-byte key |
//! | 72+n   | 16  | payload: tag | first 16 bytes of HMAC-SHA256 over bytes 0..72+n |
//! | 88+n   | …   | payload: padding | zero up to the end (16 bytes for every size) |
//!
//! The tag covers the whole header, so the key-usage and key-management fields cannot be changed
//! without the master key; the simulator does not interpret them beyond requiring XPRTCPAC, which
//! the kernel requires before it derives a protected key. A re-encipherment keeps them.

use zeroize::Zeroizing;

use super::crypto::{random, WrapKeys};
use super::{be16, check_fixed, check_zero, field_error, write_fixed, Fixed, TokenError};
use crate::mkvp::Mkvp;

pub const TOKEN_TYPE: u8 = 0x01;
pub const VERSION: u8 = 0x05;
pub const KEY_MATERIAL_WRAPPED: u8 = 0x03;
pub const KVP_TYPE_MKVP: u8 = 0x01;
pub const ALG_AES: u8 = 0x02;
pub const KEY_TYPE_CIPHER: u16 = 0x0001;
/// KMF1 bit: the key may be exported to CPACF as a protected key.
pub const KMF1_XPRT_CPAC: u16 = 0x0800;

pub const OFF_TYPE: usize = 0;
pub const OFF_LEN: usize = 2;
pub const OFF_VERSION: usize = 4;
pub const OFF_KMS: usize = 8;
pub const OFF_KVP_TYPE: usize = 9;
pub const OFF_KVP: usize = 10;
pub const OFF_WRAP_METHOD: usize = 26;
pub const OFF_HASH_ALG: usize = 27;
pub const OFF_PAYLOAD_FORMAT: usize = 28;
pub const OFF_ADS_VERSION: usize = 30;
pub const OFF_ADS_LEN: usize = 32;
pub const OFF_WPLLEN: usize = 38;
pub const OFF_ALGORITHM: usize = 41;
pub const OFF_KEY_TYPE: usize = 42;
pub const OFF_KUF_COUNT: usize = 44;
pub const OFF_KUF1: usize = 45;
pub const OFF_KMF_COUNT: usize = 49;
pub const OFF_KMF1: usize = 50;
/// Header length; the payload starts here.
pub const HEADER_LEN: usize = 56;
pub const NONCE_LEN: usize = 16;
pub const TAG_LEN: usize = 16;
const OFF_NONCE: usize = HEADER_LEN;
const OFF_CIPHERTEXT: usize = HEADER_LEN + NONCE_LEN;

pub(super) const KDF_DOMAIN: &str = "CCA-AESCIPHER";
const KIND: &str = "CCA-AESCIPHER";

/// The header fields whose value never varies.
const FIXED: &[Fixed] = &[
    super::fixed(OFF_TYPE, "token type", &[TOKEN_TYPE]),
    super::fixed(1, "reserved byte", &[0]),
    super::fixed(OFF_VERSION, "version", &[VERSION]),
    super::fixed(5, "reserved bytes", &[0; 3]),
    super::fixed(OFF_KMS, "key material state", &[KEY_MATERIAL_WRAPPED]),
    super::fixed(
        OFF_KVP_TYPE,
        "key verification pattern type",
        &[KVP_TYPE_MKVP],
    ),
    super::fixed(OFF_KVP + 8, "unused half of the KVP field", &[0; 8]),
    super::fixed(OFF_WRAP_METHOD, "wrapping method", &[0x02]),
    super::fixed(OFF_HASH_ALG, "hash algorithm", &[0x02]),
    super::fixed(OFF_PAYLOAD_FORMAT, "payload format version", &[0x00]),
    super::fixed(29, "reserved byte", &[0]),
    super::fixed(OFF_ADS_VERSION, "ADS version", &[0x01]),
    super::fixed(31, "reserved byte", &[0]),
    super::fixed(OFF_ADS_LEN, "ADS length", &[0x00, 26]),
    super::fixed(34, "key label, IEAS and user AD lengths", &[0; 3]),
    super::fixed(37, "reserved byte", &[0]),
    super::fixed(40, "reserved byte", &[0]),
    super::fixed(OFF_ALGORITHM, "algorithm", &[ALG_AES]),
    super::fixed(OFF_KEY_TYPE, "key type", &KEY_TYPE_CIPHER.to_be_bytes()),
    super::fixed(OFF_KUF_COUNT, "key-usage field count", &[2]),
    super::fixed(OFF_KMF_COUNT, "key-management field count", &[3]),
];

/// The usage and management fields of a new token: KUF1 ENCRYPT|DECRYPT, KUF2 0, then KMFC and
/// KMF1 XPRTCPAC only (export-restricted except to CPACF), KMF2 and KMF3 0.
const DEFAULT_KUF_KMF: [u8; HEADER_LEN - OFF_KUF1] = [0xC0, 0, 0, 0, 3, 0x08, 0, 0, 0, 0, 0];

/// The wrapped payload length in bits for a key of `bits` bits (payload format 0x00).
pub fn wpllen(bits: u32) -> u16 {
    match bits {
        128 => 512,
        192 => 576,
        _ => 640,
    }
}

/// The token length for a key of `bits` bits.
pub fn token_len(bits: u32) -> usize {
    HEADER_LEN + usize::from(wpllen(bits)) / 8
}

/// The key size a token length stands for, if any.
pub(super) fn bits_for_len(len: usize) -> Option<u32> {
    [128, 192, 256].into_iter().find(|&b| token_len(b) == len)
}

/// Checks that the header's length field names a valid token length; returns it.
pub(super) fn declared_len(t: &[u8]) -> Result<usize, TokenError> {
    let len = usize::from(be16(t, OFF_LEN));
    match bits_for_len(len) {
        Some(_) => Ok(len),
        None => Err(TokenError::Field {
            kind: KIND,
            field: "token length",
            offset: OFF_LEN,
            found: len.to_string(),
            expected: "120, 128 or 136 (AES-128, -192, -256)".into(),
        }),
    }
}

/// Checks the structure of a token and returns its key size in bits.
pub(super) fn check(t: &[u8]) -> Result<u32, TokenError> {
    if t.len() < HEADER_LEN {
        return Err(TokenError::TooShort {
            found: t.len(),
            min: token_len(128),
        });
    }
    let len = declared_len(t)?;
    if t.len() != len {
        return Err(TokenError::Length {
            kind: KIND,
            expected: len,
            found: t.len(),
        });
    }
    let bits = bits_for_len(len).unwrap_or(256);
    check_fixed(KIND, t, FIXED)?;
    let wpl = wpllen(bits).to_be_bytes();
    if t[OFF_WPLLEN..OFF_WPLLEN + 2] != wpl {
        return Err(field_error(
            KIND,
            "wrapped payload length (bits)",
            OFF_WPLLEN,
            &t[OFF_WPLLEN..OFF_WPLLEN + 2],
            &wpl,
        ));
    }
    if be16(t, OFF_KMF1) & KMF1_XPRT_CPAC == 0 {
        return Err(TokenError::NotCpacfExportable {
            kind: KIND,
            detail: "KMF1 bit XPRTCPAC is off",
        });
    }
    check_zero(
        KIND,
        t,
        OFF_CIPHERTEXT + key_len(bits) + TAG_LEN..len,
        "payload padding",
    )?;
    Ok(bits)
}

fn key_len(bits: u32) -> usize {
    bits as usize / 8
}

pub(super) fn mkvp(t: &[u8]) -> Mkvp {
    Mkvp::from_slice(&t[OFF_KVP..OFF_KVP + 8]).expect("8 bytes are a valid MKVP")
}

/// Builds a token for `clear` (16, 24 or 32 bytes, checked by the caller). `like`, a valid
/// token, supplies the key-usage and key-management fields.
pub(super) fn seal(keys: &WrapKeys, mkvp: &Mkvp, clear: &[u8], like: Option<&[u8]>) -> Vec<u8> {
    let bits = clear.len() as u32 * 8;
    let len = token_len(bits);
    let mut t = vec![0u8; len];
    write_fixed(&mut t, FIXED);
    t[OFF_LEN..OFF_LEN + 2].copy_from_slice(&(len as u16).to_be_bytes());
    t[OFF_KVP..OFF_KVP + 8].copy_from_slice(mkvp.as_bytes());
    t[OFF_WPLLEN..OFF_WPLLEN + 2].copy_from_slice(&wpllen(bits).to_be_bytes());
    t[OFF_KUF1..HEADER_LEN].copy_from_slice(match like {
        Some(old) => &old[OFF_KUF1..HEADER_LEN],
        None => &DEFAULT_KUF_KMF,
    });
    let nonce = random::<NONCE_LEN>();
    t[OFF_NONCE..OFF_CIPHERTEXT].copy_from_slice(&nonce);
    let off_tag = OFF_CIPHERTEXT + clear.len();
    // Encrypted in place: the clear key never sits anywhere but in this region, and only
    // until the next statement.
    t[OFF_CIPHERTEXT..off_tag].copy_from_slice(clear);
    keys.ctr_apply(&nonce, &mut t[OFF_CIPHERTEXT..off_tag]);
    let tag = keys.mac(&[&t[..off_tag]]);
    t[off_tag..off_tag + TAG_LEN].copy_from_slice(&tag[..TAG_LEN]);
    t
}

/// Authenticates a checked token and decrypts its key.
pub(super) fn open(keys: &WrapKeys, t: &[u8]) -> Result<Zeroizing<Vec<u8>>, TokenError> {
    let n = bits_for_len(t.len()).map_or(0, key_len);
    let off_tag = OFF_CIPHERTEXT + n;
    if n == 0 || !keys.verify(&[&t[..off_tag]], &t[off_tag..off_tag + TAG_LEN]) {
        return Err(TokenError::Authentication { kind: KIND });
    }
    let nonce: [u8; NONCE_LEN] = t[OFF_NONCE..OFF_CIPHERTEXT]
        .try_into()
        .expect("the nonce field is 16 bytes");
    let mut key = Zeroizing::new(t[OFF_CIPHERTEXT..off_tag].to_vec());
    keys.ctr_apply(&nonce, &mut key);
    Ok(key)
}
