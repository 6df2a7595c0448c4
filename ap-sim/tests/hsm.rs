//! The HSM operations against the register model: what survives a SET and what dies.

use ap_sim::apqn::{parse_list, Apqn};
use ap_sim::hsm::{Direction, Hsm, HsmError, Register};
use ap_sim::sim::{Layout, Simulator, Target};
use ap_sim::token::{KeyType, SecureKey};
use ap_sim::MkType;

const ALL_TYPES: [KeyType; 3] = [KeyType::CcaAesData, KeyType::CcaAesCipher, KeyType::Ep11Aes];

fn setup() -> (tempfile::TempDir, Hsm) {
    let tmp = tempfile::tempdir().unwrap();
    let sim = Simulator::init(tmp.path().join("sim"), &Layout::default(), false).unwrap();
    (tmp, Hsm::new(sim))
}

fn group(t: KeyType) -> (Vec<Apqn>, MkType) {
    match t {
        KeyType::Ep11Aes => (parse_list("0a.002f,0b.002f").unwrap(), MkType::Ep11),
        _ => (parse_list("08.002f,09.002f").unwrap(), MkType::Aes),
    }
}

/// The TKE's load + (commit) + SET.
fn rotate(h: &Hsm, t: KeyType) {
    load_new(h, t);
    set(h, t);
}

fn load_new(h: &Hsm, t: KeyType) {
    let (g, mk) = group(t);
    h.simulator().tke_load_random(&g, mk).unwrap();
    if mk == MkType::Ep11 {
        h.simulator().tke_commit(&g).unwrap();
    }
}

fn set(h: &Hsm, t: KeyType) {
    let (g, mk) = group(t);
    h.simulator().tke_set(&g, mk).unwrap();
}

#[test]
fn generated_keys_verify_under_current_with_a_stable_vp() {
    let (_t, h) = setup();
    for t in ALL_TYPES {
        for (bits, xts) in [
            (128, false),
            (192, false),
            (256, false),
            (128, true),
            (256, true),
        ] {
            let k = h.generate(t, bits, xts, None).unwrap();
            assert_eq!((k.key_type(), k.key_bits(), k.is_xts()), (t, bits, xts));
            let v = h.verify(&k, None).unwrap();
            assert_eq!(v.register, Register::Current);
            assert_eq!(v.current_apqns, group(t).0, "{t} {bits}");
            let vp = h.verification_pattern(&k, None).unwrap();
            assert_eq!(vp.to_string().len(), 64);
            // The stored bytes parse back to the same key.
            let again = SecureKey::parse(&k.to_bytes()).unwrap();
            assert_eq!(h.verification_pattern(&again, None).unwrap(), vp);
        }
    }
}

#[test]
fn cca_key_survives_one_set_as_old_and_dies_at_the_second() {
    let (_t, h) = setup();
    let k = h.generate(KeyType::CcaAesData, 256, true, None).unwrap();
    let vp = h.verification_pattern(&k, None).unwrap();
    rotate(&h, KeyType::CcaAesData);
    let v = h.verify(&k, None).unwrap();
    assert_eq!(v.register, Register::Old, "usable under OLD after one SET");
    assert_eq!(h.verification_pattern(&k, None).unwrap(), vp);
    rotate(&h, KeyType::CcaAesData);
    assert!(matches!(h.verify(&k, None), Err(HsmError::Unusable { .. })));
    assert!(h.effective_key(&k, None).is_err());
    assert!(h.reencipher(&k, Direction::FromOld, None).is_err());
}

#[test]
fn ep11_key_dies_at_the_first_set() {
    let (_t, h) = setup();
    let k = h.generate(KeyType::Ep11Aes, 256, false, None).unwrap();
    rotate(&h, KeyType::Ep11Aes);
    assert!(matches!(h.verify(&k, None), Err(HsmError::Unusable { .. })));
    let e = h.reencipher(&k, Direction::FromOld, None).unwrap_err();
    assert!(e.to_string().contains("no OLD register"), "{e}");
}

#[test]
fn staged_reencipher_becomes_current_at_the_set_with_the_same_vp() {
    let (_t, h) = setup();
    for t in ALL_TYPES {
        let k = h.generate(t, 256, true, None).unwrap();
        let vp = h.verification_pattern(&k, None).unwrap();
        let e = h.reencipher(&k, Direction::ToNew, None).unwrap_err();
        assert!(
            e.to_string().contains("load the new master key"),
            "{t}: {e}"
        );
        load_new(&h, t);
        let staged = h.reencipher(&k, Direction::ToNew, None).unwrap();
        assert_ne!(staged.mkvp(), k.mkvp());
        assert!(
            matches!(h.verify(&staged, None), Err(HsmError::OnlyNew { .. })),
            "{t}: staged key is not usable before the SET"
        );
        assert_eq!(h.verify(&k, None).unwrap().register, Register::Current);
        let again = h.reencipher(&k, Direction::ToNew, None).unwrap();
        assert_eq!(
            again.mkvp(),
            staged.mkvp(),
            "a re-run stages to the same NEW key"
        );
        let e = h.reencipher(&staged, Direction::ToNew, None).unwrap_err();
        assert!(
            e.to_string().contains("already enciphered with the NEW"),
            "{e}"
        );
        set(&h, t);
        let v = h.verify(&staged, None).unwrap();
        assert_eq!(v.register, Register::Current);
        assert_eq!(h.verification_pattern(&staged, None).unwrap(), vp);
        // Survives a second rotation once re-enciphered again.
        rotate(&h, t);
        if t == KeyType::Ep11Aes {
            assert!(h.verify(&staged, None).is_err());
        } else {
            let completed = h.reencipher(&staged, Direction::FromOld, None).unwrap();
            assert_eq!(
                h.verify(&completed, None).unwrap().register,
                Register::Current
            );
            assert_eq!(h.verification_pattern(&completed, None).unwrap(), vp);
        }
    }
}

#[test]
fn from_old_on_a_current_key_returns_it_unchanged() {
    let (_t, h) = setup();
    let k = h.generate(KeyType::CcaAesCipher, 128, false, None).unwrap();
    assert_eq!(
        h.reencipher(&k, Direction::FromOld, None)
            .unwrap()
            .to_bytes(),
        k.to_bytes()
    );
}

#[test]
fn unavailable_apqns_are_not_used() {
    let (_t, h) = setup();
    let only8 = parse_list("08.002f").unwrap();
    let k = h
        .generate(KeyType::CcaAesData, 256, false, Some(&only8))
        .unwrap();
    for (target, on) in [
        (Target::Card(8), false),
        (Target::Queue("08.002f".parse().unwrap()), false),
    ] {
        h.simulator().set_online(target, on).unwrap();
        let e = h.verify(&k, Some(&only8)).unwrap_err();
        assert!(e.to_string().contains("offline"), "{e}");
        // Another APQN of the group with the same master key still serves it.
        assert_eq!(
            h.verify(&k, None).unwrap().current_apqns,
            parse_list("09.002f").unwrap()
        );
        h.simulator().set_online(Target::Card(8), true).unwrap();
    }
    h.simulator().set_chkstop(Target::Card(9), true).unwrap();
    h.simulator().set_config(8, false).unwrap();
    let e = h
        .generate(KeyType::CcaAesData, 256, false, None)
        .unwrap_err();
    assert!(
        e.to_string().contains("deconfig") && e.to_string().contains("chkstop"),
        "{e}"
    );
    let e = h
        .verify(&k, Some(&parse_list("07.0001").unwrap()))
        .unwrap_err();
    assert!(e.to_string().contains("does not exist"), "{e}");
}

#[test]
fn keys_of_other_adapters_are_unusable_here() {
    let (_t, h) = setup();
    let (_t2, other) = setup();
    let foreign = other
        .generate(KeyType::CcaAesData, 256, false, None)
        .unwrap();
    assert!(matches!(
        h.verify(&foreign, None),
        Err(HsmError::Unusable { .. })
    ));
}

#[test]
fn a_flipped_bit_is_detected_not_used() {
    let (_t, h) = setup();
    for t in ALL_TYPES {
        let k = h.generate(t, 256, false, None).unwrap().to_bytes();
        for byte in [16usize, 40, k.len() - 1] {
            let mut bad = k.clone();
            bad[byte] ^= 0x01;
            let ok = SecureKey::parse(&bad)
                .ok()
                .map(|k| h.effective_key(&k, None).is_ok());
            assert_ne!(
                ok,
                Some(true),
                "{t}: byte {byte} flipped and the key still unwrapped"
            );
        }
    }
}

#[test]
fn clear_key_import_gives_the_same_effective_key() {
    let (_t, h) = setup();
    let clear: Vec<u8> = (0u8..64).collect();
    let k = h
        .import_clear(KeyType::CcaAesData, &clear, true, None)
        .unwrap();
    assert_eq!(h.effective_key(&k, None).unwrap().as_bytes(), &clear[..]);
    assert_eq!(
        h.verification_pattern(&k, None).unwrap(),
        ap_sim::hsm::vp_of_effective(&clear, true)
    );
    assert!(h
        .import_clear(KeyType::CcaAesData, &[0u8; 20], false, None)
        .is_err());
    assert!(
        h.import_clear(KeyType::CcaAesData, &[9u8; 64], true, None)
            .is_err(),
        "equal XTS halves"
    );
    assert!(h.generate(KeyType::CcaAesData, 192, true, None).is_err());
    assert!(h.generate(KeyType::CcaAesData, 512, false, None).is_err());
}

#[test]
fn ecc_identity_key_signs_and_survives_an_apka_change() {
    use p256::ecdsa::signature::Verifier;
    let (_t, h) = setup();
    let key = h.generate_ecc(None).unwrap();
    let msg = b"TLS 1.2 handshake transcript";
    let check = |tok: &ap_sim::token::ecc::EccKeyToken| {
        let der = h.sign_ecc(tok, msg, None).unwrap();
        let sig = p256::ecdsa::Signature::from_der(&der).unwrap();
        p256::ecdsa::VerifyingKey::from(&key.public_key())
            .verify(msg, &sig)
            .unwrap();
    };
    check(&key);
    let g = parse_list("08.002f,09.002f").unwrap();
    h.simulator().tke_load_random(&g, MkType::Apka).unwrap();
    let staged = h.reencipher_ecc(&key, Direction::ToNew, None).unwrap();
    assert_eq!(staged.public_key(), key.public_key());
    h.simulator().tke_set(&g, MkType::Apka).unwrap();
    assert_eq!(h.verify_ecc(&staged, None).unwrap(), Register::Current);
    assert_eq!(h.verify_ecc(&key, None).unwrap(), Register::Old);
    check(&staged);
    // An AES master key change does not touch it.
    rotate(&h, KeyType::CcaAesData);
    check(&staged);
}
