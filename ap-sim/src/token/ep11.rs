//! EP11-AES: an EP11 AES key blob (the kernel's `struct ep11keyblob`), 320 bytes, or 336 bytes
//! with a separate 16-byte header (`struct ep11kblob_header`) in front.
//!
//! Both forms start with the same 16-byte header layout, which is how the kernel tells them apart:
//!
//! | Offset | Len | Header field | Value |
//! |-------:|----:|--------------|-------|
//! | 0      | 1   | type | 0x00 (non-CCA) |
//! | 1      | 1   | header version | 0x00 |
//! | 2      | 2   | total length, big-endian | 320 or 336 |
//! | 4      | 1   | version | 0x03: header overlaid on the blob's session field (320 bytes); 0x06: header in front of the blob (336 bytes) |
//! | 5      | 1   | reserved | zero |
//! | 6      | 2   | key bit length, big-endian | 128, 192 or 256 |
//! | 8      | 8   | reserved | zero |
//!
//! The blob follows at `base` = 0 (version 0x03) or 16 (version 0x06); offsets are relative to it:
//!
//! | Offset | Len | Blob field | Value |
//! |-------:|----:|------------|-------|
//! | 0      | 32  | session field | zero = not bound to a session (version 0x03: bytes 0..16 hold the header, 16..32 must be zero) |
//! | 32     | 16  | WKVP | the first 16 bytes of the wrapping key's verification pattern |
//! | 48     | 8   | attributes, big-endian | must include 0x00200000 (may be exported to CPACF); new blobs: exactly that |
//! | 56     | 8   | mode | new blobs: zero; carried, not interpreted |
//! | 64     | 2   | magic, big-endian | 0x1234 |
//! | 66     | 14  | IV | random; the AES-CTR counter block is IV \|\| 0x0000 |
//! | 80     | 144 | encrypted key data | AES-256-CTR of the n-byte key, then zero |
//! | 224    | 32  | MAC | HMAC-SHA256 over every other byte of the token, header included |
//! | 256    | 64  | reserved | zero |
//!
//! A session-bound blob (non-zero session bytes) only works inside the EP11 session that made it;
//! zkey cannot use such keys for volumes, so parsing (`Token::parse`) rejects them with a specific error.
//! The full 32-byte MAC covers the header, the attributes and the mode, so none of them can be
//! changed without the wrapping key. A re-encipherment keeps the form, attributes and mode.

use zeroize::Zeroizing;

use super::crypto::{random, WrapKeys};
use super::{be16, check_fixed, check_zero, checked_bits, write_fixed, Fixed, TokenError};
use crate::mkvp::Mkvp;

/// Length of the form without a separate header (version 0x03).
pub const LEN: usize = 320;
/// Length of the form with a separate header (version 0x06).
pub const LEN_WITH_HEADER: usize = HEADER_LEN + LEN;
pub const HEADER_LEN: usize = 16;
pub const TOKEN_TYPE: u8 = 0x00;
pub const VERSION_OVERLAID: u8 = 0x03;
pub const VERSION_HEADER: u8 = 0x06;
pub const MAGIC: u16 = 0x1234;
/// Attribute: the key may be exported to CPACF as a protected key.
pub const ATTR_PKEY_EXTRACTABLE: u64 = 0x0020_0000;
/// Bytes of the WKVP a blob carries.
pub const WKVP_LEN: usize = 16;

pub const OFF_HDR_TYPE: usize = 0;
pub const OFF_HDR_VERSION_BYTE: usize = 1;
pub const OFF_HDR_LEN: usize = 2;
pub const OFF_HDR_VERSION: usize = 4;
pub const OFF_HDR_BITLEN: usize = 6;
/// Blob-relative offsets.
pub const OFF_SESSION: usize = 0;
pub const OFF_WKVP: usize = 32;
pub const OFF_ATTR: usize = 48;
pub const OFF_MODE: usize = 56;
pub const OFF_MAGIC: usize = 64;
pub const OFF_IV: usize = 66;
pub const IV_LEN: usize = 14;
pub const OFF_KEY_DATA: usize = 80;
pub const OFF_MAC: usize = 224;
pub const MAC_LEN: usize = 32;
pub const OFF_RESERVED: usize = 256;

pub(super) const KDF_DOMAIN: &str = "EP11-AES";
const KIND: &str = "EP11-AES";

/// The header fields whose value never varies (the length, version and bit length vary).
const HEADER_FIXED: &[Fixed] = &[
    super::fixed(OFF_HDR_TYPE, "header type", &[TOKEN_TYPE]),
    super::fixed(OFF_HDR_VERSION_BYTE, "header version", &[0]),
    super::fixed(5, "reserved header byte", &[0]),
    super::fixed(8, "reserved header bytes", &[0; 8]),
];

/// What a blob looks like apart from its key: which form, and the attributes and mode it carries.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(super) struct Shape {
    with_header: bool,
    attributes: u64,
    mode: u64,
}

impl Shape {
    pub(super) const DEFAULT: Shape = Shape {
        with_header: false,
        attributes: ATTR_PKEY_EXTRACTABLE,
        mode: 0,
    };
    pub(super) const WITH_HEADER: Shape = Shape {
        with_header: true,
        ..Shape::DEFAULT
    };

    /// The shape of a checked token.
    pub(super) fn of(t: &[u8]) -> Shape {
        let base = base(t);
        Shape {
            with_header: base != 0,
            attributes: be64(t, base + OFF_ATTR),
            mode: be64(t, base + OFF_MODE),
        }
    }
}

/// Where the blob starts: after the header in the version 0x06 form.
fn base(t: &[u8]) -> usize {
    if t[OFF_HDR_VERSION] == VERSION_HEADER {
        HEADER_LEN
    } else {
        0
    }
}

fn be64(t: &[u8], off: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&t[off..off + 8]);
    u64::from_be_bytes(b)
}

/// Checks that the header's length field matches its version; returns the length. The caller
/// has checked that the version byte is 0x03 or 0x06.
pub(super) fn declared_len(t: &[u8]) -> Result<usize, TokenError> {
    let expected = if t[OFF_HDR_VERSION] == VERSION_HEADER {
        LEN_WITH_HEADER
    } else {
        LEN
    };
    let len = usize::from(be16(t, OFF_HDR_LEN));
    if len != expected {
        return Err(TokenError::Field {
            kind: KIND,
            field: "header length",
            offset: OFF_HDR_LEN,
            found: len.to_string(),
            expected: format!("{expected} for header version 0x{:02x}", t[OFF_HDR_VERSION]),
        });
    }
    Ok(len)
}

/// Checks the structure of a token and returns its key size in bits.
pub(super) fn check(t: &[u8]) -> Result<u32, TokenError> {
    if t.len() < HEADER_LEN {
        return Err(TokenError::TooShort {
            found: t.len(),
            min: LEN,
        });
    }
    let version = t[OFF_HDR_VERSION];
    if version != VERSION_OVERLAID && version != VERSION_HEADER {
        return Err(super::field_error(
            KIND,
            "header version",
            OFF_HDR_VERSION,
            &[version],
            &[VERSION_OVERLAID],
        ));
    }
    let len = declared_len(t)?;
    if t.len() != len {
        return Err(TokenError::Length {
            kind: KIND,
            expected: len,
            found: t.len(),
        });
    }
    check_fixed(KIND, t, HEADER_FIXED)?;
    let bits = checked_bits(KIND, be16(t, OFF_HDR_BITLEN).into())?;
    let base = base(t);
    // Version 0x03 overlays the header on the first half of the session field.
    let session_start = if base == 0 {
        HEADER_LEN
    } else {
        base + OFF_SESSION
    };
    if t[session_start..base + OFF_WKVP].iter().any(|&b| b != 0) {
        return Err(TokenError::SessionBound);
    }
    if be16(t, base + OFF_MAGIC) != MAGIC {
        return Err(super::field_error(
            KIND,
            "blob magic",
            base + OFF_MAGIC,
            &t[base + OFF_MAGIC..base + OFF_IV],
            &MAGIC.to_be_bytes(),
        ));
    }
    if be64(t, base + OFF_ATTR) & ATTR_PKEY_EXTRACTABLE == 0 {
        return Err(TokenError::NotCpacfExportable {
            kind: KIND,
            detail: "attribute 0x00200000 is off",
        });
    }
    let key_end = base + OFF_KEY_DATA + bits as usize / 8;
    check_zero(KIND, t, key_end..base + OFF_MAC, "unused key data")?;
    check_zero(KIND, t, base + OFF_RESERVED..len, "reserved bytes")?;
    Ok(bits)
}

pub(super) fn mkvp(t: &[u8]) -> Mkvp {
    let off = base(t) + OFF_WKVP;
    Mkvp::from_slice(&t[off..off + WKVP_LEN]).expect("16 bytes are a valid WKVP")
}

/// The MAC input: every byte of the token except the MAC field.
fn mac_parts(t: &[u8]) -> [&[u8]; 2] {
    let base = base(t);
    [&t[..base + OFF_MAC], &t[base + OFF_RESERVED..]]
}

fn counter_block(iv: &[u8]) -> [u8; 16] {
    let mut block = [0u8; 16];
    block[..IV_LEN].copy_from_slice(iv);
    block
}

/// Builds a blob of `shape` for `clear` (16, 24 or 32 bytes, checked by the caller) under the
/// wrapping key with the 16-byte pattern `wkvp`.
pub(super) fn seal(keys: &WrapKeys, wkvp: &Mkvp, clear: &[u8], shape: Shape) -> Vec<u8> {
    let (len, base, version) = if shape.with_header {
        (LEN_WITH_HEADER, HEADER_LEN, VERSION_HEADER)
    } else {
        (LEN, 0, VERSION_OVERLAID)
    };
    let mut t = vec![0u8; len];
    write_fixed(&mut t, HEADER_FIXED);
    t[OFF_HDR_LEN..OFF_HDR_LEN + 2].copy_from_slice(&(len as u16).to_be_bytes());
    t[OFF_HDR_VERSION] = version;
    t[OFF_HDR_BITLEN..OFF_HDR_BITLEN + 2].copy_from_slice(&(clear.len() as u16 * 8).to_be_bytes());
    t[base + OFF_WKVP..base + OFF_ATTR].copy_from_slice(wkvp.as_bytes());
    t[base + OFF_ATTR..base + OFF_MODE].copy_from_slice(&shape.attributes.to_be_bytes());
    t[base + OFF_MODE..base + OFF_MAGIC].copy_from_slice(&shape.mode.to_be_bytes());
    t[base + OFF_MAGIC..base + OFF_IV].copy_from_slice(&MAGIC.to_be_bytes());
    let iv = random::<IV_LEN>();
    t[base + OFF_IV..base + OFF_KEY_DATA].copy_from_slice(&iv);
    let key = base + OFF_KEY_DATA..base + OFF_KEY_DATA + clear.len();
    // Encrypted in place: the clear key is in the token buffer only until the next statement.
    t[key.clone()].copy_from_slice(clear);
    keys.ctr_apply(&counter_block(&iv), &mut t[key]);
    let mac = keys.mac(&mac_parts(&t));
    t[base + OFF_MAC..base + OFF_RESERVED].copy_from_slice(&mac);
    t
}

/// Authenticates a checked blob and decrypts its key.
pub(super) fn open(keys: &WrapKeys, t: &[u8]) -> Result<Zeroizing<Vec<u8>>, TokenError> {
    let base = base(t);
    if !keys.verify(&mac_parts(t), &t[base + OFF_MAC..base + OFF_RESERVED]) {
        return Err(TokenError::Authentication { kind: KIND });
    }
    let n = usize::from(be16(t, OFF_HDR_BITLEN)) / 8;
    let mut key = Zeroizing::new(t[base + OFF_KEY_DATA..base + OFF_KEY_DATA + n].to_vec());
    keys.ctr_apply(
        &counter_block(&t[base + OFF_IV..base + OFF_KEY_DATA]),
        &mut key,
    );
    Ok(key)
}
