mod common;
use common::*;

#[test]
fn format_writes_a_sound_paes_header_with_vp_token() {
    let f = Fixture::new();
    let img = f.format("vol.img", true);
    let dump = luks_dump(&img);
    assert!(dump.contains("Version:       \t2"), "{dump}");
    assert!(dump.contains("cipher: paes-xts-plain64"), "{dump}");
    assert!(dump.contains("sector: 4096 [bytes]"), "{dump}");
    assert!(dump.contains("Key:        1024 bits"), "{dump}");
    assert!(dump.contains("PBKDF:      pbkdf2"), "{dump}");
    let t = token_json(&img, 0).expect("token 0");
    assert_eq!(t["type"], "paes-verification-pattern");
    assert_eq!(t["keyslots"], serde_json::json!([]));
    assert_eq!(t["verification-pattern"], volume_vp(&f.hsm, &img));
    assert!(opens(&img, PW));
    assert!(!opens(&img, b"wrong"));
}
