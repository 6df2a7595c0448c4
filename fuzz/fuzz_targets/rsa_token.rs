//! The adapter's RSA key token (an APKA-wrapped RSA private key): `RsaKeyToken::parse`.
#![no_main]

use ap_sim::token::rsa::RsaKeyToken;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = RsaKeyToken::parse(data) {
        let _ = (t.mkvp(), t.bits(), t.public_key_der());
    }
});
