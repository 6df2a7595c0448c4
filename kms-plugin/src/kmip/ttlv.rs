//! TTLV, the binary encoding of KMIP (OASIS KMIP 1.x/2.x, section "Message Encoding").
//!
//! Every item is Tag (3 bytes, big-endian), Type (1 byte), Length (4 bytes, big-endian, the
//! unpadded value length) and Value, padded with zeros to a multiple of 8 bytes. A Structure's
//! value is the concatenation of its items.
//!
//! The decoder is strict because its input comes from the network: lengths must fit the buffer
//! and match the type (4 for Integer/Enumeration/Interval, 8 for Long Integer/Boolean/Date-Time,
//! a multiple of 8 for Big Integer), padding must be zero, text must be UTF-8, a Boolean is 0 or
//! 1, nesting is bounded ([`MAX_DEPTH`]) and trailing bytes are refused. It never panics; every
//! refusal is a [`TtlvError`] saying where the input went wrong.

use std::fmt;

/// Deepest Structure nesting accepted. KMIP messages nest about 8 deep; the bound stops a
/// malicious peer from exhausting the stack.
pub const MAX_DEPTH: usize = 32;

/// The TTLV item types.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ItemType {
    Structure = 0x01,
    Integer = 0x02,
    LongInteger = 0x03,
    BigInteger = 0x04,
    Enumeration = 0x05,
    Boolean = 0x06,
    TextString = 0x07,
    ByteString = 0x08,
    DateTime = 0x09,
    Interval = 0x0A,
}

impl ItemType {
    fn from_byte(b: u8) -> Option<ItemType> {
        Some(match b {
            0x01 => ItemType::Structure,
            0x02 => ItemType::Integer,
            0x03 => ItemType::LongInteger,
            0x04 => ItemType::BigInteger,
            0x05 => ItemType::Enumeration,
            0x06 => ItemType::Boolean,
            0x07 => ItemType::TextString,
            0x08 => ItemType::ByteString,
            0x09 => ItemType::DateTime,
            0x0A => ItemType::Interval,
            _ => return None,
        })
    }
}

/// A TTLV value.
#[derive(Clone, PartialEq, Eq)]
pub enum Value {
    Structure(Vec<Item>),
    Integer(i32),
    LongInteger(i64),
    /// Two's complement, big-endian, a multiple of 8 bytes.
    BigInteger(Vec<u8>),
    Enumeration(u32),
    Boolean(bool),
    TextString(String),
    ByteString(Vec<u8>),
    /// Seconds since the Unix epoch.
    DateTime(i64),
    Interval(u32),
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Structure(items) => f.debug_list().entries(items).finish(),
            Value::Integer(v) => write!(f, "Integer({v})"),
            Value::LongInteger(v) => write!(f, "LongInteger({v})"),
            Value::BigInteger(v) => write!(f, "BigInteger({} bytes)", v.len()),
            Value::Enumeration(v) => write!(f, "Enumeration({v:#x})"),
            Value::Boolean(v) => write!(f, "Boolean({v})"),
            Value::TextString(v) => write!(f, "TextString({v:?})"),
            // Byte strings carry key material: never print them, not even in debug output.
            Value::ByteString(v) => write!(f, "ByteString({} bytes, <redacted>)", v.len()),
            Value::DateTime(v) => write!(f, "DateTime({v})"),
            Value::Interval(v) => write!(f, "Interval({v})"),
        }
    }
}

/// A tagged TTLV item.
#[derive(Clone, PartialEq, Eq)]
pub struct Item {
    /// The 24-bit tag (0x42xxxx for standard KMIP tags, 0x54xxxx for extensions).
    pub tag: u32,
    pub value: Value,
}

impl fmt::Debug for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:06X}={:?}", self.tag, self.value)
    }
}

/// Why a TTLV buffer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TtlvError {
    #[error("TTLV truncated at byte {0}: the server's message is incomplete")]
    Truncated(usize),
    #[error("TTLV item at byte {at} has the unknown type {ty:#04x}")]
    UnknownType { at: usize, ty: u8 },
    #[error("TTLV item at byte {at} of type {ty:?} has the invalid length {len}")]
    BadLength { at: usize, ty: ItemType, len: u32 },
    #[error("TTLV item at byte {0} has non-zero padding")]
    BadPadding(usize),
    #[error("TTLV text string at byte {0} is not UTF-8")]
    BadText(usize),
    #[error("TTLV boolean at byte {0} is neither 0 nor 1")]
    BadBoolean(usize),
    #[error("TTLV structures nest deeper than {MAX_DEPTH} at byte {0}")]
    TooDeep(usize),
    #[error("{0} bytes follow the TTLV message")]
    Trailing(usize),
    #[error("a TTLV tag must fit in 24 bits, not {0:#x}")]
    BadTag(u32),
    #[error("a TTLV value is too long to encode ({0} bytes)")]
    TooLong(usize),
}

impl Item {
    pub fn new(tag: u32, value: Value) -> Item {
        Item { tag, value }
    }

    pub fn structure(tag: u32, items: Vec<Item>) -> Item {
        Item::new(tag, Value::Structure(items))
    }

    pub fn text(tag: u32, s: impl Into<String>) -> Item {
        Item::new(tag, Value::TextString(s.into()))
    }

    pub fn bytes(tag: u32, b: impl Into<Vec<u8>>) -> Item {
        Item::new(tag, Value::ByteString(b.into()))
    }

    pub fn int(tag: u32, v: i32) -> Item {
        Item::new(tag, Value::Integer(v))
    }

    pub fn enumeration(tag: u32, v: u32) -> Item {
        Item::new(tag, Value::Enumeration(v))
    }

    /// The items of a Structure; empty for any other type.
    pub fn children(&self) -> &[Item] {
        match &self.value {
            Value::Structure(items) => items,
            _ => &[],
        }
    }

    /// The first child with `tag`.
    pub fn child(&self, tag: u32) -> Option<&Item> {
        self.children().iter().find(|i| i.tag == tag)
    }

    /// Every child with `tag`.
    pub fn all(&self, tag: u32) -> impl Iterator<Item = &Item> {
        self.children().iter().filter(move |i| i.tag == tag)
    }

    pub fn as_text(&self) -> Option<&str> {
        match &self.value {
            Value::TextString(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bytes(&self) -> Option<&[u8]> {
        match &self.value {
            Value::ByteString(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_enum(&self) -> Option<u32> {
        match self.value {
            Value::Enumeration(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i32> {
        match self.value {
            Value::Integer(v) => Some(v),
            _ => None,
        }
    }

    /// Encodes the item.
    pub fn encode(&self) -> Result<Vec<u8>, TtlvError> {
        let mut out = Vec::new();
        self.encode_into(&mut out)?;
        Ok(out)
    }

    fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), TtlvError> {
        if self.tag > 0x00FF_FFFF {
            return Err(TtlvError::BadTag(self.tag));
        }
        out.extend_from_slice(&self.tag.to_be_bytes()[1..]);
        let (ty, body): (ItemType, Vec<u8>) = match &self.value {
            Value::Structure(items) => {
                let mut b = Vec::new();
                for i in items {
                    i.encode_into(&mut b)?;
                }
                (ItemType::Structure, b)
            }
            Value::Integer(v) => (ItemType::Integer, v.to_be_bytes().to_vec()),
            Value::LongInteger(v) => (ItemType::LongInteger, v.to_be_bytes().to_vec()),
            Value::BigInteger(v) => {
                if !v.len().is_multiple_of(8) {
                    return Err(TtlvError::BadLength {
                        at: out.len(),
                        ty: ItemType::BigInteger,
                        len: v.len() as u32,
                    });
                }
                (ItemType::BigInteger, v.clone())
            }
            Value::Enumeration(v) => (ItemType::Enumeration, v.to_be_bytes().to_vec()),
            Value::Boolean(v) => (ItemType::Boolean, (*v as u64).to_be_bytes().to_vec()),
            Value::TextString(s) => (ItemType::TextString, s.as_bytes().to_vec()),
            Value::ByteString(b) => (ItemType::ByteString, b.clone()),
            Value::DateTime(v) => (ItemType::DateTime, v.to_be_bytes().to_vec()),
            Value::Interval(v) => (ItemType::Interval, v.to_be_bytes().to_vec()),
        };
        let len = u32::try_from(body.len()).map_err(|_| TtlvError::TooLong(body.len()))?;
        out.push(ty as u8);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&body);
        out.resize(out.len() + padding(body.len()), 0);
        Ok(())
    }

    /// Decodes exactly one item filling all of `buf`.
    pub fn decode(buf: &[u8]) -> Result<Item, TtlvError> {
        let (item, used) = decode_at(buf, 0, 0)?;
        if used != buf.len() {
            return Err(TtlvError::Trailing(buf.len() - used));
        }
        Ok(item)
    }
}

fn padding(len: usize) -> usize {
    (8 - len % 8) % 8
}

/// The total encoded length of the item whose 8-byte header is `header`, or None when the length
/// overflows. Used to read one message from a stream.
pub fn encoded_len(header: &[u8; 8]) -> Option<usize> {
    let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
    len.checked_add(padding(len))?.checked_add(8)
}

/// Decodes the item starting at `buf[at..]`; returns it and the offset after it.
fn decode_at(buf: &[u8], at: usize, depth: usize) -> Result<(Item, usize), TtlvError> {
    if depth > MAX_DEPTH {
        return Err(TtlvError::TooDeep(at));
    }
    let header = buf
        .get(at..at.checked_add(8).ok_or(TtlvError::Truncated(at))?)
        .ok_or(TtlvError::Truncated(at))?;
    let tag = u32::from_be_bytes([0, header[0], header[1], header[2]]);
    let ty = ItemType::from_byte(header[3]).ok_or(TtlvError::UnknownType { at, ty: header[3] })?;
    let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    let start = at + 8;
    let ulen = len as usize;
    let end = start.checked_add(ulen).ok_or(TtlvError::Truncated(at))?;
    let padded_end = end
        .checked_add(padding(ulen))
        .ok_or(TtlvError::Truncated(at))?;
    if padded_end > buf.len() {
        return Err(TtlvError::Truncated(at));
    }
    let body = &buf[start..end];
    if buf[end..padded_end].iter().any(|b| *b != 0) {
        return Err(TtlvError::BadPadding(at));
    }
    let bad_len = || TtlvError::BadLength { at, ty, len };
    let fixed = |n: usize| -> Result<(), TtlvError> {
        if ulen == n {
            Ok(())
        } else {
            Err(bad_len())
        }
    };
    let value = match ty {
        ItemType::Structure => {
            let mut items = Vec::new();
            let mut pos = start;
            while pos < end {
                let (item, next) = decode_at(&buf[..end], pos, depth + 1)?;
                items.push(item);
                pos = next;
            }
            Value::Structure(items)
        }
        ItemType::Integer => {
            fixed(4)?;
            Value::Integer(i32::from_be_bytes(body.try_into().map_err(|_| bad_len())?))
        }
        ItemType::Enumeration => {
            fixed(4)?;
            Value::Enumeration(u32::from_be_bytes(body.try_into().map_err(|_| bad_len())?))
        }
        ItemType::Interval => {
            fixed(4)?;
            Value::Interval(u32::from_be_bytes(body.try_into().map_err(|_| bad_len())?))
        }
        ItemType::LongInteger => {
            fixed(8)?;
            Value::LongInteger(i64::from_be_bytes(body.try_into().map_err(|_| bad_len())?))
        }
        ItemType::DateTime => {
            fixed(8)?;
            Value::DateTime(i64::from_be_bytes(body.try_into().map_err(|_| bad_len())?))
        }
        ItemType::Boolean => {
            fixed(8)?;
            match u64::from_be_bytes(body.try_into().map_err(|_| bad_len())?) {
                0 => Value::Boolean(false),
                1 => Value::Boolean(true),
                _ => return Err(TtlvError::BadBoolean(at)),
            }
        }
        ItemType::BigInteger => {
            if !ulen.is_multiple_of(8) {
                return Err(bad_len());
            }
            Value::BigInteger(body.to_vec())
        }
        ItemType::TextString => {
            Value::TextString(String::from_utf8(body.to_vec()).map_err(|_| TtlvError::BadText(at))?)
        }
        ItemType::ByteString => Value::ByteString(body.to_vec()),
    };
    Ok((Item { tag, value }, padded_end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn encodes_the_kmip_spec_examples() {
        // KMIP 1.4 spec, 9.1.2 examples.
        let i = Item::int(0x420020, 8);
        assert_eq!(
            hex::encode(i.encode().unwrap()),
            "42002002000000040000000800000000"
        );
        let t = Item::text(0x420020, "Hello World");
        assert_eq!(
            hex::encode(t.encode().unwrap()),
            "420020070000000b48656c6c6f20576f726c640000000000"
        );
        let s = Item::structure(
            0x420020,
            vec![Item::enumeration(0x420004, 254), Item::int(0x420005, 255)],
        );
        assert_eq!(
            hex::encode(s.encode().unwrap()),
            "42002001000000204200040500000004000000fe000000004200050200000004000000ff00000000"
        );
        let b = Item::new(0x420020, Value::Boolean(true));
        assert_eq!(
            hex::encode(b.encode().unwrap()),
            "42002006000000080000000000000001"
        );
    }

    #[test]
    fn refuses_malformed_input() {
        let good = Item::text(0x420020, "abc").encode().unwrap();
        assert!(matches!(
            Item::decode(&good[..10]),
            Err(TtlvError::Truncated(_))
        ));
        let mut pad = good.clone();
        pad[15] = 1;
        assert_eq!(Item::decode(&pad), Err(TtlvError::BadPadding(0)));
        let mut ty = good.clone();
        ty[3] = 0x0B;
        assert!(matches!(
            Item::decode(&ty),
            Err(TtlvError::UnknownType { .. })
        ));
        let mut trailing = good.clone();
        trailing.extend_from_slice(&[0; 8]);
        assert_eq!(Item::decode(&trailing), Err(TtlvError::Trailing(8)));
        let mut int = Item::int(1, 5).encode().unwrap();
        int[7] = 5;
        assert!(Item::decode(&int).is_err());
        let b = hex::decode("42002006000000080000000000000002").unwrap();
        assert_eq!(Item::decode(&b), Err(TtlvError::BadBoolean(0)));
        // A huge length must not allocate or overflow.
        let huge = hex::decode("42002008ffffffff").unwrap();
        assert!(Item::decode(&huge).is_err());
        // Deep nesting is bounded.
        let mut deep = Item::int(1, 1);
        for _ in 0..40 {
            deep = Item::structure(1, vec![deep]);
        }
        let enc = deep.encode().unwrap();
        assert!(matches!(Item::decode(&enc), Err(TtlvError::TooDeep(_))));
    }

    #[test]
    fn byte_strings_are_redacted_in_debug_output() {
        let i = Item::bytes(0x420043, vec![0xAB; 32]);
        let s = format!("{i:?}");
        assert!(!s.contains("ab") && !s.contains("171"), "{s}");
    }

    fn arb_item() -> impl Strategy<Value = Item> {
        let leaf = prop_oneof![
            any::<i32>().prop_map(Value::Integer),
            any::<i64>().prop_map(Value::LongInteger),
            proptest::collection::vec(any::<u8>(), 0..3)
                .prop_map(|v| Value::BigInteger(v.iter().flat_map(|b| [*b; 8]).collect())),
            any::<u32>().prop_map(Value::Enumeration),
            any::<bool>().prop_map(Value::Boolean),
            ".{0,20}".prop_map(Value::TextString),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::ByteString),
            any::<i64>().prop_map(Value::DateTime),
            any::<u32>().prop_map(Value::Interval),
        ];
        let leaf_item = (0u32..0x0100_0000, leaf).prop_map(|(tag, value)| Item { tag, value });
        leaf_item.prop_recursive(4, 32, 6, |inner| {
            (0u32..0x0100_0000, proptest::collection::vec(inner, 0..6))
                .prop_map(|(tag, items)| Item::structure(tag, items))
        })
    }

    proptest! {
        #[test]
        fn round_trips(item in arb_item()) {
            let enc = item.encode().unwrap();
            prop_assert_eq!(enc.len() % 8, 0);
            let hdr: [u8; 8] = enc[..8].try_into().unwrap();
            prop_assert_eq!(encoded_len(&hdr), Some(enc.len()));
            prop_assert_eq!(Item::decode(&enc).unwrap(), item);
        }

        #[test]
        fn never_panics_on_garbage(buf in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Item::decode(&buf);
        }

        #[test]
        fn never_panics_on_mutated_messages(item in arb_item(), at in any::<usize>(), b in any::<u8>()) {
            let mut enc = item.encode().unwrap();
            let i = at % enc.len();
            enc[i] = b;
            let _ = Item::decode(&enc);
            enc.truncate(i);
            let _ = Item::decode(&enc);
        }
    }
}
