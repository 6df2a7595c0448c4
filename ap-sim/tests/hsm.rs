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

// ----- the APKA RSA key and CKM_RSA_AES_KEY_WRAP -----

/// What a KMS sends for `rsa` (PKCS #11 CKM_RSA_AES_KEY_WRAP, OpenBao's byok-export): the
/// ephemeral AES key under RSA-OAEP-SHA256, then `target` under it with RFC 5649.
fn rsa_aes_wrap(rsa: &rsa::RsaPublicKey, ephemeral: &[u8], target: &[u8]) -> Vec<u8> {
    let mut blob = rsa
        .encrypt(
            &mut rand::rngs::OsRng,
            rsa::Oaep::new::<sha2::Sha256>(),
            ephemeral,
        )
        .unwrap();
    let kwp = match ephemeral.len() {
        16 => aes_kw::KekAes128::from(<[u8; 16]>::try_from(ephemeral).unwrap())
            .wrap_with_padding_vec(target),
        24 => aes_kw::KekAes192::from(<[u8; 24]>::try_from(ephemeral).unwrap())
            .wrap_with_padding_vec(target),
        _ => aes_kw::KekAes256::from(<[u8; 32]>::try_from(ephemeral).unwrap())
            .wrap_with_padding_vec(target),
    };
    blob.extend_from_slice(&kwp.unwrap());
    blob
}

fn key_wrap_err(r: Result<SecureKey, HsmError>) -> ap_sim::hsm::KeyWrapError {
    match r {
        Err(HsmError::KeyWrap(e)) => e,
        other => panic!("expected a key wrap error, got {other:?}"),
    }
}

#[test]
fn a_ckm_rsa_aes_key_wrap_blob_unwraps_inside_the_adapter_into_the_same_secure_key() {
    let (_t, h) = setup();
    let rsa = h.generate_rsa(3072, None).unwrap();
    assert_eq!(h.verify_rsa(&rsa, None).unwrap(), Register::Current);
    for (i, t) in ALL_TYPES.into_iter().enumerate() {
        for len in [16usize, 24, 32] {
            let target: Vec<u8> = (0..len as u8).map(|b| b.wrapping_mul(29) ^ 0x3c).collect();
            let ephemeral = [[0x11u8; 16].as_slice(), &[0x22; 24], &[0x33; 32]][(i + len) % 3];
            let blob = rsa_aes_wrap(rsa.public_key(), ephemeral, &target);
            let sk = h.unwrap_rsa_aes_key_wrap(&rsa, &blob, t, None).unwrap();
            assert_eq!((sk.key_type(), sk.key_bits()), (t, len as u32 * 8));
            let imported = h.import_clear(t, &target, false, None).unwrap();
            assert_eq!(
                h.verification_pattern(&sk, None).unwrap(),
                h.verification_pattern(&imported, None).unwrap(),
                "{t} {len}"
            );
            assert_eq!(h.verify(&sk, None).unwrap().register, Register::Current);
        }
    }
}

#[test]
fn a_bad_ckm_rsa_aes_key_wrap_blob_is_named_and_yields_nothing() {
    use ap_sim::hsm::KeyWrapError as E;
    let (_t, h) = setup();
    let rsa = h.generate_rsa(3072, None).unwrap();
    let kt = KeyType::CcaAesData;
    let good = rsa_aes_wrap(rsa.public_key(), &[7; 32], &[9; 32]);
    assert_eq!(good.len(), 384 + 40);
    let unwrap = |b: &[u8]| key_wrap_err(h.unwrap_rsa_aes_key_wrap(&rsa, b, kt, None));
    // Wrapped for another RSA key: another host's, or a key the KMS holds for someone else.
    let other = h.generate_rsa(3072, None).unwrap();
    let for_other = rsa_aes_wrap(other.public_key(), &[7; 32], &[9; 32]);
    assert_eq!(unwrap(&for_other), E::Oaep);
    // Cut anywhere: inside the RSA block, inside the key wrap, or to a length that fits.
    for len in [0, 100, 384, 384 + 23, good.len() - 1] {
        assert!(
            matches!(unwrap(&good[..len]), E::Length { bits: 3072, .. }),
            "{len}"
        );
    }
    assert_eq!(unwrap(&good[..384 + 32]), E::Kwp);
    // A flipped bit in the OAEP padding or ciphertext, and in the key wrap.
    for at in [0, 200, 383] {
        let mut b = good.clone();
        b[at] ^= 0x01;
        assert_eq!(unwrap(&b), E::Oaep, "byte {at}");
    }
    for at in [384, 400, good.len() - 1] {
        let mut b = good.clone();
        b[at] ^= 0x80;
        assert_eq!(unwrap(&b), E::Kwp, "byte {at}");
    }
    // The two parts of two blobs do not combine.
    let second = rsa_aes_wrap(rsa.public_key(), &[8; 32], &[9; 32]);
    let mixed = [&good[..384], &second[384..]].concat();
    assert_eq!(unwrap(&mixed), E::Kwp);
    // Well-formed, but not what an AES volume key is.
    let mut odd_ephemeral = rsa
        .public_key()
        .encrypt(
            &mut rand::rngs::OsRng,
            rsa::Oaep::new::<sha2::Sha256>(),
            &[7; 20],
        )
        .unwrap();
    odd_ephemeral.extend_from_slice(&good[384..]);
    assert_eq!(unwrap(&odd_ephemeral), E::EphemeralKeyLength(20));
    let odd_target = rsa_aes_wrap(rsa.public_key(), &[7; 32], &[9; 20]);
    assert_eq!(unwrap(&odd_target), E::TargetKeyLength(20));
    // The good one still works.
    assert!(h.unwrap_rsa_aes_key_wrap(&rsa, &good, kt, None).is_ok());
}

#[test]
fn the_rsa_key_survives_an_apka_change_when_reenciphered_and_dies_without() {
    let (_t, h) = setup();
    let rsa = h.generate_rsa(3072, None).unwrap();
    let blob = rsa_aes_wrap(rsa.public_key(), &[5; 32], &[6; 32]);
    let expected = ap_sim::hsm::vp_of_effective(&[6; 32], false);
    let vp_via = |t: &ap_sim::token::rsa::RsaKeyToken| {
        let sk = h
            .unwrap_rsa_aes_key_wrap(t, &blob, KeyType::CcaAesData, None)
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(h.verification_pattern(&sk, None).unwrap())
    };
    let g = parse_list("08.002f,09.002f").unwrap();
    // Staged: re-enciphered to NEW before the SET, the live one under CURRENT meanwhile.
    h.simulator().tke_load_random(&g, MkType::Apka).unwrap();
    let staged = h.reencipher_rsa(&rsa, Direction::ToNew, None).unwrap();
    assert_eq!(staged.public_key(), rsa.public_key());
    assert_ne!(staged.mkvp(), rsa.mkvp());
    assert!(matches!(
        h.verify_rsa(&staged, None),
        Err(HsmError::Unusable { .. })
    ));
    h.simulator().tke_set(&g, MkType::Apka).unwrap();
    assert_eq!(h.verify_rsa(&staged, None).unwrap(), Register::Current);
    assert_eq!(h.verify_rsa(&rsa, None).unwrap(), Register::Old);
    assert_eq!(vp_via(&staged).unwrap(), expected);
    assert_eq!(vp_via(&rsa).unwrap(), expected, "usable under OLD");
    // In place after the SET: OLD -> CURRENT; a key already under CURRENT stays as it is.
    let in_place = h.reencipher_rsa(&rsa, Direction::FromOld, None).unwrap();
    assert_eq!(in_place.mkvp(), staged.mkvp());
    assert_eq!(
        h.reencipher_rsa(&staged, Direction::FromOld, None).unwrap(),
        staged
    );
    // An AES master key change does not touch it.
    rotate(&h, KeyType::CcaAesData);
    assert_eq!(vp_via(&staged).unwrap(), expected);
    // A second APKA change: the key left under the first master key is gone.
    h.simulator().tke_load_random(&g, MkType::Apka).unwrap();
    h.simulator().tke_set(&g, MkType::Apka).unwrap();
    assert!(matches!(
        h.verify_rsa(&rsa, None),
        Err(HsmError::Unusable { .. })
    ));
    let e = vp_via(&rsa).unwrap_err();
    assert!(e.contains("cannot be used"), "{e}");
    assert!(h.reencipher_rsa(&rsa, Direction::FromOld, None).is_err());
    assert_eq!(vp_via(&staged).unwrap(), expected, "under OLD now");
    // Only 3072 and 4096 bits.
    assert!(matches!(
        h.generate_rsa(2048, None),
        Err(HsmError::Token(ap_sim::token::TokenError::RsaKeyBits(2048)))
    ));
}

#[test]
fn aes_gcm_decrypts_inside_the_adapter_with_a_secure_key() {
    use aes_gcm::aead::{Aead, KeyInit, Payload};
    let (_t, h) = setup();
    for t in ALL_TYPES {
        for clear in [vec![3u8; 16], vec![4u8; 32]] {
            let sk = h.import_clear(t, &clear, false, None).unwrap();
            let nonce = [9u8; 12];
            let msg = Payload {
                msg: b"the volume's passphrase",
                aad: b"context",
            };
            let ct = match clear.len() {
                16 => aes_gcm::Aes128Gcm::new_from_slice(&clear)
                    .unwrap()
                    .encrypt(&nonce.into(), msg),
                _ => aes_gcm::Aes256Gcm::new_from_slice(&clear)
                    .unwrap()
                    .encrypt(&nonce.into(), msg),
            }
            .unwrap();
            let plain = h
                .decrypt_aes_gcm(&sk, &nonce, &ct, b"context", None)
                .unwrap();
            assert_eq!(&plain[..], b"the volume's passphrase");
            let mut bad = ct.clone();
            bad[0] ^= 1;
            for (n, c, aad) in [
                (nonce, bad.as_slice(), b"context".as_slice()),
                (nonce, &ct, b"other"),
                ([8u8; 12], &ct, b"context"),
            ] {
                assert!(matches!(
                    h.decrypt_aes_gcm(&sk, &n, c, aad, None),
                    Err(HsmError::GcmAuthentication)
                ));
            }
        }
    }
    let k192 = h
        .import_clear(KeyType::CcaAesData, &[1; 24], false, None)
        .unwrap();
    assert!(h
        .decrypt_aes_gcm(&k192, &[0; 12], &[0; 32], b"", None)
        .is_err());
    let xts = h.generate(KeyType::CcaAesData, 256, true, None).unwrap();
    assert!(h
        .decrypt_aes_gcm(&xts, &[0; 12], &[0; 32], b"", None)
        .is_err());
}
