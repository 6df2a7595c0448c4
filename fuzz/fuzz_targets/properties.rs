//! `.info` files: `Properties::parse` and `KeyProperties::parse` on the raw input, and, since
//! almost no random input passes the integrity hash, the typed parser again on the input's
//! `name=value` pairs re-rendered with a valid hash. What parses must render and parse back to
//! the same properties.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zkey::{KeyProperties, Properties};

fn round_trip(kp: &KeyProperties) {
    if let Ok(text) = kp.render() {
        let again = KeyProperties::parse(text.as_bytes()).expect("rendered properties parse");
        assert_eq!(&again, kp, "render/parse round trip changed the properties");
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = Properties::parse(data);
    if let Ok(kp) = KeyProperties::parse(data) {
        round_trip(&kp);
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut props = Properties::new();
    for line in text.lines() {
        if let Some((name, value)) = line.split_once('=') {
            if name != "__hash__" {
                let _ = props.set(name, value);
            }
        }
    }
    let rendered = props.render();
    let reparsed = Properties::parse(rendered.as_bytes()).expect("rendered properties parse");
    assert_eq!(reparsed.render(), rendered);
    if let Ok(kp) = KeyProperties::parse(rendered.as_bytes()) {
        round_trip(&kp);
    }
});
