//! CCA-AESDATA: the 64-byte CCA internal AES DATA key token, version 0x04 (the kernel's
//! `struct secaeskeytoken`, zkey's default key type).
//!
//! | Offset | Len | Field | Value |
//! |-------:|----:|-------|-------|
//! | 0      | 1   | token type | 0x01 (CCA internal) |
//! | 1      | 3   | reserved | zero |
//! | 4      | 1   | version | 0x04 |
//! | 5      | 1   | reserved | zero |
//! | 6      | 1   | flags | 0x80: key present, encrypted under the AES master key |
//! | 7      | 1   | LRC | XOR of bytes 0..60 except this one |
//! | 8      | 8   | MKVP | the AES master key's 8-byte verification pattern |
//! | 16     | 32  | encrypted key | AES-256-CBC, zero IV, of the key zero-padded to 32 bytes |
//! | 48     | 8   | control vector | zero (a DATA key) |
//! | 56     | 2   | key bit size, big-endian | 128, 192 or 256 |
//! | 58     | 2   | key byte length, big-endian | 16, 24 or 32 |
//! | 60     | 4   | TVV | first 4 bytes of HMAC-SHA256 over bytes 0..60 |
//!
//! The real layout leaves no room for a nonce or a full-size tag, and the simulator keeps it
//! byte-compatible. So the encryption is deterministic (AES-CBC with a zero IV over a fixed,
//! key-sized plaintext: equal keys under one master key give equal ciphertexts, as on real
//! cards) and **the authenticator is only 32 bits**: a forger who can submit tokens to an adapter
//! succeeds with probability 2^-32 per try. The other formats carry 128- and 256-bit tags; prefer
//! them where that margin matters. The LRC is an unkeyed check that catches corruption at parse
//! time, before any master key is involved. Padding bytes after a shorter key must decrypt to
//! zero, which the TVV already guarantees; checking it costs nothing.

use zeroize::Zeroizing;

use super::crypto::WrapKeys;
use super::{check_fixed, check_zero, checked_bits, write_fixed, Fixed, TokenError};
use crate::mkvp::Mkvp;

/// Token length in bytes.
pub const LEN: usize = 64;
pub const TOKEN_TYPE: u8 = 0x01;
pub const VERSION: u8 = 0x04;
/// Flag: the key is present and encrypted under the AES master key.
pub const FLAG_MK_ENCRYPTED: u8 = 0x80;

pub const OFF_TYPE: usize = 0;
pub const OFF_VERSION: usize = 4;
pub const OFF_FLAGS: usize = 6;
pub const OFF_LRC: usize = 7;
pub const OFF_MKVP: usize = 8;
pub const OFF_KEY: usize = 16;
pub const OFF_CV: usize = 48;
pub const OFF_BIT_SIZE: usize = 56;
pub const OFF_BYTE_LEN: usize = 58;
pub const OFF_TVV: usize = 60;
/// Bytes of the encrypted key field.
pub const KEY_FIELD_LEN: usize = 32;
/// Bytes of the token validation value.
pub const TVV_LEN: usize = 4;

pub(super) const KDF_DOMAIN: &str = "CCA-AESDATA";
const KIND: &str = "CCA-AESDATA";

/// The fields whose value never varies.
const FIXED: &[Fixed] = &[
    super::fixed(OFF_TYPE, "token type", &[TOKEN_TYPE]),
    super::fixed(1, "reserved bytes", &[0; 3]),
    super::fixed(OFF_VERSION, "version", &[VERSION]),
    super::fixed(5, "reserved byte", &[0]),
    super::fixed(OFF_FLAGS, "flags", &[FLAG_MK_ENCRYPTED]),
];

/// The LRC over the authenticated part of the token, skipping the LRC byte itself.
fn lrc(t: &[u8]) -> u8 {
    t[..OFF_TVV]
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != OFF_LRC)
        .fold(0, |acc, (_, b)| acc ^ b)
}

/// Checks the structure of a token and returns its key size in bits.
pub(super) fn check(t: &[u8]) -> Result<u32, TokenError> {
    if t.len() != LEN {
        return Err(TokenError::Length {
            kind: KIND,
            expected: LEN,
            found: t.len(),
        });
    }
    check_fixed(KIND, t, FIXED)?;
    check_zero(KIND, t, OFF_CV..OFF_BIT_SIZE, "control vector (DATA)")?;
    let bits = checked_bits(KIND, super::be16(t, OFF_BIT_SIZE).into())?;
    let byte_len = super::be16(t, OFF_BYTE_LEN);
    if u32::from(byte_len) * 8 != bits {
        return Err(TokenError::Field {
            kind: KIND,
            field: "key byte length",
            offset: OFF_BYTE_LEN,
            found: byte_len.to_string(),
            expected: format!("{} (for a {bits}-bit key)", bits / 8),
        });
    }
    if lrc(t) != t[OFF_LRC] {
        return Err(TokenError::Lrc { kind: KIND });
    }
    Ok(bits)
}

pub(super) fn mkvp(t: &[u8]) -> Mkvp {
    Mkvp::from_slice(&t[OFF_MKVP..OFF_MKVP + 8]).expect("8 bytes are a valid MKVP")
}

/// Builds a token for `clear` (16, 24 or 32 bytes, checked by the caller).
pub(super) fn seal(keys: &WrapKeys, mkvp: &Mkvp, clear: &[u8]) -> Vec<u8> {
    let mut t = vec![0u8; LEN];
    write_fixed(&mut t, FIXED);
    t[OFF_MKVP..OFF_MKVP + 8].copy_from_slice(mkvp.as_bytes());
    let mut field = Zeroizing::new([0u8; KEY_FIELD_LEN]);
    field[..clear.len()].copy_from_slice(clear);
    keys.cbc_encrypt(&mut field);
    t[OFF_KEY..OFF_CV].copy_from_slice(&field[..]);
    t[OFF_BIT_SIZE..OFF_BYTE_LEN].copy_from_slice(&(clear.len() as u16 * 8).to_be_bytes());
    t[OFF_BYTE_LEN..OFF_TVV].copy_from_slice(&(clear.len() as u16).to_be_bytes());
    t[OFF_LRC] = lrc(&t);
    let tvv = keys.mac(&[&t[..OFF_TVV]]);
    t[OFF_TVV..].copy_from_slice(&tvv[..TVV_LEN]);
    t
}

/// Authenticates a checked token and decrypts its key.
pub(super) fn open(keys: &WrapKeys, t: &[u8]) -> Result<Zeroizing<Vec<u8>>, TokenError> {
    if !keys.verify(&[&t[..OFF_TVV]], &t[OFF_TVV..]) {
        return Err(TokenError::Authentication { kind: KIND });
    }
    let n = usize::from(super::be16(t, OFF_BYTE_LEN));
    let mut field = Zeroizing::new([0u8; KEY_FIELD_LEN]);
    field.copy_from_slice(&t[OFF_KEY..OFF_CV]);
    keys.cbc_decrypt(&mut field);
    if field[n..].iter().any(|&b| b != 0) {
        return Err(TokenError::Authentication { kind: KIND });
    }
    Ok(Zeroizing::new(field[..n].to_vec()))
}
