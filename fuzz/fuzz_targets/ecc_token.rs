//! The KMS plug-in's identity key token (an APKA-wrapped P-256 key): `EccKeyToken::parse`.
#![no_main]

use ap_sim::token::ecc::EccKeyToken;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = EccKeyToken::parse(data) {
        let _ = t.mkvp();
    }
});
