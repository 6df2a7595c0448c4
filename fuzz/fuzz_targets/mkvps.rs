//! The kernel's `mkvps` sysfs file (zkey reads it from a real `/sys` too): `parse_mkvps`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = ap_sim::sysfs::parse_mkvps(text);
    }
});
