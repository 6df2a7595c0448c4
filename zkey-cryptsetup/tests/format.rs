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

/// The library's contract, whatever the caller's interface: a device that is the key's volume
/// already is left alone, and another key's volume is formatted over only on a yes to
/// `confirm_risk` (issue 11, finding 6).
#[test]
fn format_over_another_volume_needs_a_yes_and_the_same_key_is_nothing_to_do() {
    use zkey_cryptsetup::volume::{format, FormatOutcome};
    use zkey_cryptsetup::{Error, Recorder};
    let f = Fixture::new();
    let img = f.format("v.img", true);
    let before = std::fs::read(&img).unwrap();
    let other = f.key(true);
    let mut no = Recorder::answering(false);
    let err = format(&f.hsm, &img, &other, &fast(), PW, &mut no).unwrap_err();
    assert!(matches!(err, Error::HasHeader { .. }), "{err}");
    assert!(err.to_string().contains("--force"), "{err}");
    assert_eq!(no.questions.len(), 1, "the operator was asked");
    assert!(
        std::fs::read(&img).unwrap() == before,
        "the refused format changed the device"
    );

    let mine = zkey_cryptsetup::luks2::Volume::open(&img)
        .unwrap()
        .volume_key(PW)
        .unwrap()
        .1;
    let again = format(&f.hsm, &img, &mine, &fast(), PW, &mut no).unwrap();
    assert!(matches!(again, FormatOutcome::AlreadyFormatted { .. }));
    assert!(
        std::fs::read(&img).unwrap() == before,
        "a no-op changed the device"
    );

    let mut yes = Recorder::answering(true);
    let done = format(&f.hsm, &img, &other, &fast(), PW, &mut yes).unwrap();
    assert!(matches!(done, FormatOutcome::Formatted(_)));
    assert!(std::fs::read(&img).unwrap() != before);
}
