//! Secure key files and single tokens (`.skey`, `.renc`, a LUKS2 volume key, `zkey import`):
//! `SecureKey::parse` and `Token::parse` must refuse garbage with an error, never panic, and
//! what they accept must survive a round trip through its bytes.
#![no_main]

use ap_sim::token::{SecureKey, Token};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(k) = SecureKey::parse(data) {
        let again = SecureKey::parse(&k.to_bytes()).expect("a parsed key re-parses");
        assert_eq!(again.to_bytes(), k.to_bytes());
        assert_eq!(again.mkvp(), k.mkvp());
        let _ = (k.key_type(), k.key_bits(), k.is_xts(), k.len());
    }
    if let Ok(t) = Token::parse(data) {
        let again = Token::parse(t.as_bytes()).expect("a parsed token re-parses");
        assert_eq!(again.as_bytes(), t.as_bytes());
        let _ = (t.key_type(), t.key_bits(), t.mkvp());
    }
});
