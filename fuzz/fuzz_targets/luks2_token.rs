//! The JSON of the LUKS2 tokens zkey-cryptsetup reads from a header (anyone who can write the
//! device can write them): the VP token and the re-encipher token.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zkey_cryptsetup::luks2::{ReencipherToken, VpToken};

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = VpToken::from_json(data) {
        let json = serde_json::to_vec(&t).expect("a token serialises");
        assert_eq!(VpToken::from_json(&json).expect("re-parses"), t);
    }
    if let Ok(t) = ReencipherToken::from_json(data) {
        let json = serde_json::to_vec(&t).expect("a token serialises");
        assert_eq!(ReencipherToken::from_json(&json).expect("re-parses"), t);
    }
});
