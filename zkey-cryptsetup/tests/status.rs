//! The readiness model's view of a volume: the header alone, then the keys with a passphrase,
//! on real images at each step of a master key change, checked against the real cryptsetup.
mod common;
use common::*;

use std::path::Path;
use zkey_cryptsetup::status::{header_status, key_status, HeaderStatus, Keyslot, Luks2Header};
use zkey_cryptsetup::volume::KeyState;

fn p(img: &Path) -> &str {
    img.to_str().unwrap()
}

fn luks2(img: &Path) -> Luks2Header {
    match header_status(img).unwrap() {
        HeaderStatus::Luks2(h) => h,
        other => panic!("{other:?}"),
    }
}

/// The AES master key pattern of `register` ("new", "current", "old") on 08.002f.
fn mkvp(f: &Fixture, register: &str) -> String {
    let st = f
        .sim
        .register_status(Some(&["08.002f".parse().unwrap()]))
        .unwrap();
    let r = &st[0].registers[0];
    let view = match register {
        "new" => &r.new,
        "current" => &r.current,
        _ => r.old.as_ref().unwrap(),
    };
    view.mkvp.unwrap().to_string()
}

#[test]
fn devices_without_a_luks2_header_are_not_formatted() {
    let f = Fixture::new();
    let zero = f.image("zero.img");
    let junk = f.dir.path().join("junk");
    std::fs::write(&junk, b"not a volume at all").unwrap();
    let luks1 = f.image("luks1.img");
    let o = cryptsetup(
        &[
            "luksFormat",
            "--type",
            "luks1",
            "-q",
            "--pbkdf-force-iterations",
            "1000",
            "--key-file",
            "-",
            p(&luks1),
        ],
        b"pw",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        header_status(&luks1).unwrap(),
        HeaderStatus::Luks1 {
            device: p(&luks1).into()
        }
    );
    assert!(key_status(&f.hsm, &luks1, b"pw")
        .unwrap_err()
        .to_string()
        .contains("LUKS1"));
    for img in [&zero, &junk] {
        let before = std::fs::read(img).unwrap();
        let s = header_status(img).unwrap();
        assert_eq!(
            s,
            HeaderStatus::NotFormatted {
                device: p(img).into()
            }
        );
        assert_eq!(
            serde_json::to_value(&s).unwrap(),
            serde_json::json!({"format": "not-formatted", "device": p(img)})
        );
        assert!(before == std::fs::read(img).unwrap());
        // key_status is an error there, naming the problem.
        let e = key_status(&f.hsm, img, PW).unwrap_err();
        assert!(e.to_string().contains("is not a LUKS2 volume"), "{e}");
    }
    // A device that is not there is an error, not "not formatted".
    assert!(header_status(&f.dir.path().join("missing")).is_err());
}

#[test]
fn a_damaged_luks2_header_is_an_error_not_unformatted() {
    use std::io::{Seek, SeekFrom, Write};
    let f = Fixture::new();
    let img = f.format("v.img", true);
    // Garbage in the JSON area of both header copies (16 KiB each): the magic stays, the
    // checksums fail.
    let mut file = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    for at in [0x2000u64, 0x4000 + 0x2000] {
        file.seek(SeekFrom::Start(at)).unwrap();
        file.write_all(&[0x5a; 64]).unwrap();
    }
    drop(file);
    assert!(!cryptsetup(&["isLuks", p(&img)], b"").status.success());
    let e = header_status(&img).unwrap_err();
    assert!(e.to_string().contains("LUKS2 header cannot be read"), "{e}");
    assert!(e.to_string().contains("cryptsetup repair"), "{e}");
}

#[test]
fn a_clear_key_luks2_volume_is_luks2_without_a_secure_key() {
    let f = Fixture::new();
    let img = f.image("aes.img");
    let o = cryptsetup(
        &[
            "luksFormat",
            "--type",
            "luks2",
            "-q",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
            "--key-file",
            "-",
            p(&img),
        ],
        b"pw",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let h = luks2(&img);
    assert!(!h.secure_key);
    assert!(h.cipher.starts_with("aes-"), "{}", h.cipher);
    assert_eq!(h.verification_pattern, None);
    assert_eq!(h.reencipher_pending, None);
    let e = key_status(&f.hsm, &img, b"pw").unwrap_err();
    assert!(e.to_string().contains("not 'paes'"), "{e}");
}

#[test]
fn header_and_keys_through_a_staged_rotation() {
    let f = Fixture::new();
    let img = f.format("v.img", true);
    let vp = volume_vp(&f.hsm, &img);

    // Fresh.
    let bytes = header_bytes(&img);
    let h = luks2(&img);
    assert_eq!(
        h,
        Luks2Header {
            device: p(&img).into(),
            cipher: "paes-xts-plain64".into(),
            secure_key: true,
            volume_key_bytes: 128,
            keyslots: vec![Keyslot {
                slot: 0,
                bound: true
            }],
            verification_pattern: Some(vp.clone()),
            reencipher_pending: None,
        }
    );
    assert_eq!(
        token_of(&img, "paes-verification-pattern").unwrap()["verification-pattern"],
        vp
    );
    let k = key_status(&f.hsm, &img, PW).unwrap();
    assert_eq!(k.volume_key.state, KeyState::Current);
    assert_eq!(k.volume_key.mkvp, mkvp(&f, "current"));
    assert_eq!(k.volume_key.verification_pattern.as_deref(), Some(&*vp));
    assert!(k.reencipher_pending.is_none() && k.at_risk.is_none());
    assert!(matches!(
        key_status(&f.hsm, &img, b"nope"),
        Err(zkey_cryptsetup::Error::WrongPassphrase { .. })
    ));
    assert!(bytes == header_bytes(&img), "a status call wrote");

    // Staged: the token as the real cryptsetup shows it; the staged key under NEW.
    f.load_new();
    let o = f.run(&["reencipher", p(&img), "--staged"], b"disk1pw\n");
    assert!(o.status.success(), "{}", stderr(&o));
    let bytes = header_bytes(&img);
    let t = token_of(&img, "paes-reencipher").unwrap();
    let h = luks2(&img);
    let pend = h.reencipher_pending.clone().expect("pending");
    assert_eq!(
        pend.unbound_keyslot as u64,
        t["unbound-keyslot"].as_u64().unwrap()
    );
    assert_eq!(pend.original_keyslot, 0);
    assert_eq!(pend.verification_pattern, vp);
    assert!(luks_dump(&img).contains(&format!("{}: luks2 (unbound)", pend.unbound_keyslot)));
    assert_eq!(
        h.keyslots,
        vec![
            Keyslot {
                slot: 0,
                bound: true
            },
            Keyslot {
                slot: pend.unbound_keyslot,
                bound: false
            }
        ]
    );
    let j = serde_json::to_value(header_status(&img).unwrap()).unwrap();
    assert_eq!(j["format"], "luks2");
    assert_eq!(
        j["reencipher_pending"]["unbound_keyslot"],
        pend.unbound_keyslot
    );
    let new = mkvp(&f, "new");
    let k = key_status(&f.hsm, &img, PW).unwrap();
    assert_eq!(k.volume_key.state, KeyState::Current);
    let staged = k.reencipher_pending.as_ref().unwrap().key.as_ref().unwrap();
    assert_eq!(staged.state, KeyState::New);
    assert_eq!(staged.mkvp, new);
    assert!(k.at_risk.is_none());
    assert!(bytes == header_bytes(&img), "a status call wrote");

    // After the SET: the volume key under OLD, the staged one under CURRENT: at risk.
    let old = mkvp(&f, "current");
    f.set();
    let k = key_status(&f.hsm, &img, PW).unwrap();
    assert_eq!(k.volume_key.state, KeyState::Old);
    assert_eq!(k.volume_key.mkvp, old);
    let staged = k.reencipher_pending.as_ref().unwrap().key.as_ref().unwrap();
    assert_eq!(staged.state, KeyState::Current);
    assert_eq!(staged.mkvp, new);
    assert!(
        k.at_risk.as_deref().unwrap().contains("--complete"),
        "{k:?}"
    );
    serde_json::to_string(&k).unwrap();

    // Completed: no token, the volume key under CURRENT.
    let o = f.run(&["reencipher", p(&img), "--complete", "-q"], b"disk1pw\n");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(token_of(&img, "paes-reencipher").is_none());
    let h = luks2(&img);
    assert_eq!(h.reencipher_pending, None);
    assert_eq!(h.verification_pattern, Some(vp.clone()));
    let k = key_status(&f.hsm, &img, PW).unwrap();
    assert_eq!(k.volume_key.state, KeyState::Current);
    assert_eq!(k.volume_key.mkvp, new);
    assert_eq!(k.volume_key.keyslot, pend.unbound_keyslot);
    assert!(k.reencipher_pending.is_none() && k.at_risk.is_none());

    // One more SET without a re-encipher: under OLD; two: unusable.
    f.rotate();
    assert_eq!(
        key_status(&f.hsm, &img, PW).unwrap().volume_key.state,
        KeyState::Old
    );
    f.rotate();
    let k = key_status(&f.hsm, &img, PW).unwrap();
    assert_eq!(k.volume_key.state, KeyState::Unusable);
    assert!(k.at_risk.is_none(), "unusable is past at risk: {k:?}");
}
