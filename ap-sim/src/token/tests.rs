//! Tests of the token layouts and of the wrapping's security properties, for every format.

use aes::cipher::{BlockDecrypt, KeyInit, KeyIvInit, StreamCipher};
use hmac::{Hmac, Mac};
use proptest::prelude::*;
use sha2::Sha256;

use super::*;

const BITS: [u32; 3] = [128, 192, 256];

fn mk(b: u8) -> MasterKey {
    MasterKey::from_bytes([b; 32])
}

fn clear(bits: u32) -> Vec<u8> {
    (0..(bits / 8) as u8)
        .map(|i| i.wrapping_mul(37) ^ 0xa5)
        .collect()
}

/// Every kind of token the module makes: each type in each size, plus the EP11 header form.
fn all_tokens(m: &MasterKey) -> Vec<(Token, Vec<u8>)> {
    let mut v = Vec::new();
    for t in KeyType::ALL {
        for bits in BITS {
            let c = clear(bits);
            v.push((Token::wrap(t, &c, m).unwrap(), c));
        }
    }
    for bits in BITS {
        let c = clear(bits);
        v.push((Token::wrap_ep11_with_header(&c, m).unwrap(), c));
    }
    v
}

/// An independent HMAC-SHA256, to check the documented derivation and tags.
fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut h = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap();
    for p in parts {
        h.update(p);
    }
    h.finalize().into_bytes().into()
}

fn derived(m: &MasterKey, domain: &str, purpose: &str) -> [u8; 32] {
    let label = format!("zkey-suite/ap-sim/token-wrap/v1/{domain}/{purpose}");
    hmac(m.as_bytes(), &[label.as_bytes()])
}

fn ctr(key: &[u8; 32], block: [u8; 16], data: &mut [u8]) {
    ctr::Ctr128BE::<aes::Aes256>::new(key.into(), &block.into()).apply_keystream(data);
}

// ---------------------------------------------------------------------------------------------
// Key types

#[test]
fn key_type_names_parse_and_serialise() {
    for t in KeyType::ALL {
        assert_eq!(t.name().parse::<KeyType>().unwrap(), t);
        assert_eq!(t.name().to_lowercase().parse::<KeyType>().unwrap(), t);
        assert_eq!(t.to_string(), t.name());
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, format!("\"{}\"", t.name()));
        assert_eq!(serde_json::from_str::<KeyType>(&json).unwrap(), t);
    }
    assert!(matches!(
        "AES".parse::<KeyType>(),
        Err(TokenError::UnknownKeyType(_))
    ));
    assert!(serde_json::from_str::<KeyType>("\"CCA-AES\"").is_err());
    assert_eq!(KeyType::CcaAesData.mk_type(), MkType::Aes);
    assert_eq!(KeyType::CcaAesCipher.mk_type(), MkType::Aes);
    assert_eq!(KeyType::Ep11Aes.mk_type(), MkType::Ep11);
    assert_eq!(KeyType::CcaAesCipher.mode(), Mode::Cca);
    assert_eq!(KeyType::Ep11Aes.mode(), Mode::Ep11);
    let lens: Vec<usize> = BITS
        .iter()
        .map(|&b| KeyType::CcaAesCipher.token_len(b))
        .collect();
    assert_eq!(lens, [120, 128, 136]);
    assert_eq!(KeyType::CcaAesData.token_len(128), 64);
    assert_eq!(KeyType::Ep11Aes.token_len(192), 320);
}

// ---------------------------------------------------------------------------------------------
// Round trips

#[test]
fn every_type_and_size_round_trips() {
    let m = mk(1);
    for (t, c) in all_tokens(&m) {
        let again = Token::parse(t.as_bytes()).unwrap();
        assert_eq!(again, t);
        assert_eq!(t.key_bits() as usize, c.len() * 8);
        assert_eq!(t.mkvp(), t.key_type().pattern_of(&m));
        assert!(t.is_wrapped_by(&m));
        assert_eq!(&t.unwrap(&m).unwrap()[..], &c[..]);
        if t.as_bytes().len() != ep11::LEN_WITH_HEADER {
            assert_eq!(t.as_bytes().len(), t.key_type().token_len(t.key_bits()));
        }
    }
}

#[test]
fn mkvp_lengths_are_8_for_cca_and_16_for_ep11() {
    let m = mk(2);
    for (t, _) in all_tokens(&m) {
        let want = if t.key_type() == KeyType::Ep11Aes {
            16
        } else {
            8
        };
        assert_eq!(t.mkvp().len(), want);
        assert!(t.mkvp().matches(&m.cca_mkvp()) || t.mkvp().matches(&m.ep11_wkvp()));
    }
}

#[test]
fn wrap_rejects_clear_keys_of_other_lengths() {
    for n in [0, 1, 15, 17, 31, 33, 64] {
        for t in KeyType::ALL {
            assert_eq!(
                Token::wrap(t, &vec![1; n], &mk(1)),
                Err(TokenError::ClearKeyLength(n))
            );
        }
    }
}

#[test]
fn ctr_formats_use_fresh_nonces_and_aesdata_is_deterministic() {
    let m = mk(3);
    let c = clear(256);
    for t in [KeyType::CcaAesCipher, KeyType::Ep11Aes] {
        assert_ne!(
            Token::wrap(t, &c, &m).unwrap(),
            Token::wrap(t, &c, &m).unwrap()
        );
    }
    assert_eq!(
        Token::wrap(KeyType::CcaAesData, &c, &m).unwrap(),
        Token::wrap(KeyType::CcaAesData, &c, &m).unwrap()
    );
}

// ---------------------------------------------------------------------------------------------
// Byte layouts

#[test]
fn aesdata_layout() {
    let m = mk(4);
    for bits in BITS {
        let c = clear(bits);
        let tok = Token::wrap(KeyType::CcaAesData, &c, &m).unwrap();
        let t = tok.as_bytes();
        assert_eq!(t.len(), 64);
        assert_eq!(t[0], 0x01);
        assert_eq!(&t[1..4], &[0; 3]);
        assert_eq!(t[4], 0x04);
        assert_eq!(t[5], 0);
        assert_eq!(t[6], 0x80);
        assert_eq!(t[..60].iter().fold(0, |a, b| a ^ b), 0, "LRC");
        assert_eq!(&t[8..16], m.cca_mkvp().as_bytes());
        assert_eq!(&t[48..56], &[0; 8]);
        assert_eq!(u16::from_be_bytes([t[56], t[57]]) as u32, bits);
        assert_eq!(u16::from_be_bytes([t[58], t[59]]) as usize, c.len());
        // Independently: the key field is AES-256-CBC (zero IV) under the derived key.
        let enc = derived(&m, "CCA-AESDATA", "enc");
        let aes = aes::Aes256::new(&enc.into());
        // CBC with a zero IV: P0 = D(C0), P1 = D(C1) ^ C0.
        let mut blocks = [0u8; 32];
        blocks.copy_from_slice(&t[16..48]);
        let (p0, p1) = blocks.split_at_mut(16);
        aes.decrypt_block(p0.into());
        aes.decrypt_block(p1.into());
        p1.iter_mut().zip(&t[16..32]).for_each(|(p, c)| *p ^= c);
        let mut want = [0u8; 32];
        want[..c.len()].copy_from_slice(&c);
        assert_eq!(blocks, want);
        let tvv = hmac(&derived(&m, "CCA-AESDATA", "mac"), &[&t[..60]]);
        assert_eq!(&t[60..64], &tvv[..4]);
    }
}

#[test]
fn aescipher_layout() {
    let m = mk(5);
    for (bits, len, wpl) in [(128, 120, 512u16), (192, 128, 576), (256, 136, 640)] {
        let c = clear(bits);
        let tok = Token::wrap(KeyType::CcaAesCipher, &c, &m).unwrap();
        let t = tok.as_bytes();
        assert_eq!(t.len(), len);
        assert_eq!(t[0], 0x01);
        assert_eq!(u16::from_be_bytes([t[2], t[3]]) as usize, len);
        assert_eq!(t[4], 0x05);
        assert_eq!(t[8], 0x03);
        assert_eq!(t[9], 0x01);
        assert_eq!(&t[10..18], m.cca_mkvp().as_bytes());
        assert_eq!(&t[18..26], &[0; 8]);
        assert_eq!(&t[26..29], &[0x02, 0x02, 0x00]);
        assert_eq!(t[30], 0x01);
        assert_eq!(&t[32..34], &[0, 26]);
        assert_eq!(&t[34..37], &[0; 3]);
        assert_eq!(u16::from_be_bytes([t[38], t[39]]), wpl);
        assert_eq!(t[41], 0x02);
        assert_eq!(&t[42..44], &[0x00, 0x01]);
        assert_eq!(t[44], 2);
        assert_eq!(t[49], 3);
        assert_eq!(u16::from_be_bytes([t[50], t[51]]) & 0x0800, 0x0800);
        // Payload: nonce, CTR ciphertext, 16-byte tag over everything before it, zero padding.
        let n = c.len();
        let mut key = t[72..72 + n].to_vec();
        let nonce: [u8; 16] = t[56..72].try_into().unwrap();
        ctr(&derived(&m, "CCA-AESCIPHER", "enc"), nonce, &mut key);
        assert_eq!(key, c);
        let tag = hmac(&derived(&m, "CCA-AESCIPHER", "mac"), &[&t[..72 + n]]);
        assert_eq!(&t[72 + n..88 + n], &tag[..16]);
        assert!(t[88 + n..].iter().all(|&b| b == 0));
        assert_eq!(t.len() - (88 + n), 16);
    }
}

#[test]
fn ep11_layouts() {
    let m = mk(6);
    for bits in BITS {
        let c = clear(bits);
        for (tok, base, version, len) in [
            (Token::wrap(KeyType::Ep11Aes, &c, &m).unwrap(), 0, 0x03, 320),
            (Token::wrap_ep11_with_header(&c, &m).unwrap(), 16, 0x06, 336),
        ] {
            let t = tok.as_bytes();
            assert_eq!(t.len(), len);
            assert_eq!(&t[..2], &[0x00, 0x00]);
            assert_eq!(u16::from_be_bytes([t[2], t[3]]) as usize, len);
            assert_eq!(t[4], version);
            assert_eq!(u16::from_be_bytes([t[6], t[7]]) as u32, bits);
            assert_eq!(&t[8..16], &[0; 8]);
            assert!(t[16..base + 32].iter().all(|&b| b == 0), "session");
            assert_eq!(&t[base + 32..base + 48], &m.ep11_wkvp().as_bytes()[..16]);
            assert_eq!(&t[base + 48..base + 56], &0x0020_0000u64.to_be_bytes());
            assert_eq!(&t[base + 56..base + 64], &[0; 8]);
            assert_eq!(&t[base + 64..base + 66], &[0x12, 0x34]);
            let mut block = [0u8; 16];
            block[..14].copy_from_slice(&t[base + 66..base + 80]);
            let n = c.len();
            let mut key = t[base + 80..base + 80 + n].to_vec();
            ctr(&derived(&m, "EP11-AES", "enc"), block, &mut key);
            assert_eq!(key, c);
            assert!(t[base + 80 + n..base + 224].iter().all(|&b| b == 0));
            let mac = hmac(
                &derived(&m, "EP11-AES", "mac"),
                &[&t[..base + 224], &t[base + 256..]],
            );
            assert_eq!(&t[base + 224..base + 256], &mac);
            assert!(t[base + 256..].iter().all(|&b| b == 0));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Master keys

#[test]
fn a_wrong_master_key_is_named_as_such_and_yields_nothing() {
    let (right, wrong) = (mk(7), mk(8));
    for (t, _) in all_tokens(&right) {
        assert!(!t.is_wrapped_by(&wrong));
        match t.unwrap(&wrong) {
            Err(TokenError::WrongMasterKey {
                kind,
                token,
                master,
            }) => {
                assert_eq!(kind, t.key_type().name());
                assert_eq!(token, t.mkvp());
                assert_eq!(master, t.key_type().pattern_of(&wrong));
                let msg = t.unwrap(&wrong).unwrap_err().to_string();
                assert!(msg.contains(&token.to_string()) && msg.contains("re-encipher"));
            }
            other => panic!("{:?}: expected WrongMasterKey, got {other:?}", t),
        }
        assert!(t.rewrap(&wrong, &right).is_err());
    }
}

#[test]
fn a_token_claiming_another_mkvp_fails_authentication() {
    // A token whose MKVP field was forged to name the key at hand still does not open.
    let (right, other) = (mk(9), mk(10));
    let tok = Token::wrap(KeyType::CcaAesCipher, &clear(256), &right).unwrap();
    let mut b = tok.as_bytes().to_vec();
    b[10..18].copy_from_slice(other.cca_mkvp().as_bytes());
    let forged = Token::parse(&b).unwrap();
    assert_eq!(
        forged.unwrap(&other),
        Err(TokenError::Authentication {
            kind: "CCA-AESCIPHER"
        })
    );
    assert!(forged.unwrap(&right).is_err());
}

#[test]
fn rewrap_changes_the_master_key_and_keeps_the_clear_key() {
    let (old, new) = (mk(11), mk(12));
    for (t, c) in all_tokens(&old) {
        let r = t.rewrap(&old, &new).unwrap();
        assert_eq!(r.key_type(), t.key_type());
        assert_eq!(r.key_bits(), t.key_bits());
        assert_eq!(r.as_bytes().len(), t.as_bytes().len(), "form kept");
        assert_ne!(r.mkvp(), t.mkvp());
        assert_eq!(r.mkvp(), r.key_type().pattern_of(&new));
        assert_eq!(&r.unwrap(&new).unwrap()[..], &c[..]);
        assert!(matches!(
            r.unwrap(&old),
            Err(TokenError::WrongMasterKey { .. })
        ));
        assert_eq!(Token::parse(r.as_bytes()).unwrap(), r);
    }
}

/// Re-signs a CCA-AESCIPHER token after editing its header, as only the master key holder can.
fn resign_cipher(b: &mut [u8], m: &MasterKey) {
    let keys = WrapKeys::derive(m, aescipher::KDF_DOMAIN);
    let n = b.len() - 56 - 16 - 16 - 16;
    let tag = keys.mac(&[&b[..72 + n]]);
    b[72 + n..88 + n].copy_from_slice(&tag[..16]);
}

#[test]
fn rewrap_keeps_cipher_usage_fields_and_ep11_attributes() {
    let (old, new) = (mk(13), mk(14));
    let tok = Token::wrap(KeyType::CcaAesCipher, &clear(256), &old).unwrap();
    let mut b = tok.as_bytes().to_vec();
    b[45..49].copy_from_slice(&[0x80, 0x00, 0x02, 0x00]);
    b[50..52].copy_from_slice(&[0xC8, 0x00]);
    resign_cipher(&mut b, &old);
    let edited = Token::parse(&b).unwrap();
    let r = edited.rewrap(&old, &new).unwrap();
    assert_eq!(&r.as_bytes()[44..56], &b[44..56]);

    let e = Token::wrap_ep11_with_header(&clear(128), &old).unwrap();
    let r = e.rewrap(&old, &new).unwrap();
    assert_eq!(r.as_bytes().len(), 336);
    assert_eq!(r.as_bytes()[4], 0x06);
}

// ---------------------------------------------------------------------------------------------
// Tampering

/// Flips every bit of `bytes` in turn; `accepted` says whether the flipped bytes were accepted.
fn assert_every_bit_flip_rejected(name: &str, bytes: &[u8], accepted: impl Fn(&[u8]) -> bool) {
    let mut b = bytes.to_vec();
    for i in 0..b.len() * 8 {
        b[i / 8] ^= 1 << (i % 8);
        assert!(
            !accepted(&b),
            "{name}: flipping bit {} of byte {} was accepted",
            i % 8,
            i / 8
        );
        b[i / 8] ^= 1 << (i % 8);
    }
    assert!(
        accepted(&b),
        "{name}: the unmodified token must be accepted"
    );
}

#[test]
fn flipping_any_bit_of_any_token_is_detected() {
    let m = mk(15);
    for (t, _) in all_tokens(&m)
        .into_iter()
        .filter(|(t, _)| t.key_bits() == 256)
    {
        let name = format!("{:?}/{}", t.key_type(), t.as_bytes().len());
        assert_every_bit_flip_rejected(&name, t.as_bytes(), |b| {
            Token::parse(b).is_ok_and(|t| t.unwrap(&m).is_ok())
        });
        assert_every_bit_flip_rejected(&name, t.as_bytes(), |b| {
            SecureKey::parse(b).is_ok_and(|k| k.halves()[0].unwrap(&m).is_ok())
        });
    }
}

#[test]
fn flipping_any_bit_of_an_ecc_token_is_detected() {
    let apka = mk(16);
    let secret = p256::SecretKey::random(&mut rand::rngs::OsRng);
    let t = ecc::EccKeyToken::wrap(&secret, &apka);
    assert_every_bit_flip_rejected("ECC", t.as_bytes(), |b| {
        ecc::EccKeyToken::parse(b).is_ok_and(|t| t.unwrap(&apka).is_ok())
    });
}

// ---------------------------------------------------------------------------------------------
// Structure checks

fn parse_err(b: &[u8]) -> TokenError {
    Token::parse(b).expect_err("must be rejected")
}

#[test]
fn parse_rejects_wrong_lengths() {
    let m = mk(17);
    for (t, _) in all_tokens(&m) {
        let b = t.as_bytes();
        for cut in [1, 16] {
            assert!(Token::parse(&b[..b.len() - cut]).is_err());
        }
        let mut long = b.to_vec();
        long.push(0);
        assert!(matches!(parse_err(&long), TokenError::Length { .. }));
    }
    assert_eq!(
        parse_err(&[0x01; 10]),
        TokenError::TooShort { found: 10, min: 64 }
    );
    assert!(matches!(parse_err(&[]), TokenError::TooShort { .. }));
}

#[test]
fn parse_rejects_unknown_type_and_version_bytes() {
    let m = mk(18);
    for (t, _) in all_tokens(&m) {
        for (off, v) in [(0, 0x02), (0, 0x1f), (4, 0x07), (4, 0x01)] {
            let mut b = t.as_bytes().to_vec();
            b[off] = v;
            assert!(matches!(parse_err(&b), TokenError::UnknownFormat { .. }));
        }
    }
}

#[test]
fn parse_rejects_bad_bit_sizes() {
    let m = mk(19);
    let data = Token::wrap(KeyType::CcaAesData, &clear(256), &m).unwrap();
    for bits in [0u16, 64, 129, 384, 512] {
        let mut b = data.as_bytes().to_vec();
        b[56..58].copy_from_slice(&bits.to_be_bytes());
        assert!(matches!(parse_err(&b), TokenError::KeyBits { .. }));
    }
    let mut b = data.as_bytes().to_vec();
    b[58..60].copy_from_slice(&24u16.to_be_bytes());
    assert!(matches!(
        parse_err(&b),
        TokenError::Field {
            field: "key byte length",
            ..
        }
    ));

    let ep = Token::wrap(KeyType::Ep11Aes, &clear(128), &m).unwrap();
    let mut b = ep.as_bytes().to_vec();
    b[6..8].copy_from_slice(&100u16.to_be_bytes());
    assert!(matches!(parse_err(&b), TokenError::KeyBits { .. }));

    // CCA-AESCIPHER: the payload length must match the token length.
    let ci = Token::wrap(KeyType::CcaAesCipher, &clear(256), &m).unwrap();
    let mut b = ci.as_bytes().to_vec();
    b[38..40].copy_from_slice(&512u16.to_be_bytes());
    assert!(matches!(
        parse_err(&b),
        TokenError::Field { offset: 38, .. }
    ));
    let mut b = ci.as_bytes().to_vec();
    b[2..4].copy_from_slice(&200u16.to_be_bytes());
    assert!(matches!(parse_err(&b), TokenError::Field { offset: 2, .. }));
}

#[test]
fn parse_rejects_session_bound_ep11_blobs() {
    let m = mk(20);
    for (t, base) in [
        (Token::wrap(KeyType::Ep11Aes, &clear(256), &m).unwrap(), 0),
        (Token::wrap_ep11_with_header(&clear(256), &m).unwrap(), 16),
    ] {
        for off in [16, 31, base + 31] {
            let mut b = t.as_bytes().to_vec();
            b[off] = 0x5e;
            assert_eq!(parse_err(&b), TokenError::SessionBound);
            assert!(parse_err(&b).to_string().contains("session"));
        }
    }
}

#[test]
fn parse_rejects_keys_not_exportable_to_cpacf() {
    let m = mk(21);
    let ci = Token::wrap(KeyType::CcaAesCipher, &clear(256), &m).unwrap();
    let mut b = ci.as_bytes().to_vec();
    b[50] &= !0x08;
    assert!(matches!(
        parse_err(&b),
        TokenError::NotCpacfExportable { .. }
    ));
    let ep = Token::wrap(KeyType::Ep11Aes, &clear(256), &m).unwrap();
    let mut b = ep.as_bytes().to_vec();
    b[48..56].copy_from_slice(&0u64.to_be_bytes());
    assert!(matches!(
        parse_err(&b),
        TokenError::NotCpacfExportable { .. }
    ));
}

#[test]
fn parse_rejects_non_zero_reserved_and_padding_bytes() {
    let m = mk(22);
    let data = Token::wrap(KeyType::CcaAesData, &clear(128), &m).unwrap();
    for off in [1, 5, 48] {
        let mut b = data.as_bytes().to_vec();
        b[off] = 1;
        assert!(matches!(parse_err(&b), TokenError::Field { offset, .. } if offset == off));
    }
    let mut b = data.as_bytes().to_vec();
    b[20] ^= 1;
    assert_eq!(
        parse_err(&b),
        TokenError::Lrc {
            kind: "CCA-AESDATA"
        }
    );
    let ci = Token::wrap(KeyType::CcaAesCipher, &clear(128), &m).unwrap();
    let mut b = ci.as_bytes().to_vec();
    *b.last_mut().unwrap() = 1;
    assert!(matches!(parse_err(&b), TokenError::Field { field, .. } if field == "payload padding"));
    let ep = Token::wrap(KeyType::Ep11Aes, &clear(128), &m).unwrap();
    for off in [80 + 16, 300] {
        let mut b = ep.as_bytes().to_vec();
        b[off] = 1;
        assert!(matches!(parse_err(&b), TokenError::Field { offset, .. } if offset <= off));
    }
}

#[test]
fn debug_output_shows_no_key_material() {
    let m = mk(23);
    for (t, c) in all_tokens(&m) {
        let d = format!("{t:?} {:?}", SecureKey::single(t.clone()));
        assert!(d.contains(&t.mkvp().to_string()));
        assert!(!d.contains(&hex::encode(&c[..4])));
        assert!(!d.contains(&hex::encode(&t.as_bytes()[20..24])));
    }
    let e = ecc::EccKeyToken::wrap(&p256::SecretKey::random(&mut rand::rngs::OsRng), &m);
    let d = format!("{e:?}");
    assert!(d.contains(&m.cca_mkvp().to_string()));
    assert!(!d.contains(&hex::encode(&e.as_bytes()[100..104])));
}

// ---------------------------------------------------------------------------------------------
// XTS

fn pair(t: KeyType, bits: u32, m: &MasterKey) -> (Token, Token) {
    (
        Token::wrap(t, &clear(bits), m).unwrap(),
        Token::wrap(t, &vec![0x11; bits as usize / 8], m).unwrap(),
    )
}

#[test]
fn xts_keys_split_into_their_halves() {
    let m = mk(24);
    for (t, len) in [
        (KeyType::CcaAesData, 128),
        (KeyType::CcaAesCipher, 272),
        (KeyType::Ep11Aes, 640),
    ] {
        let (a, b) = pair(t, 256, &m);
        let mut bytes = a.as_bytes().to_vec();
        bytes.extend_from_slice(b.as_bytes());
        assert_eq!(bytes.len(), len);
        let k = SecureKey::parse(&bytes).unwrap();
        assert!(k.is_xts());
        assert_eq!(k.halves(), &[a.clone(), b.clone()]);
        assert_eq!(k.key_type(), t);
        assert_eq!(k.key_bits(), 256);
        assert_eq!(k.mkvp(), a.mkvp());
        assert_eq!(k.len(), len);
        assert_eq!(k.to_bytes(), bytes);
        assert_eq!(SecureKey::xts(a, b).unwrap(), k);
    }
    let a = Token::wrap_ep11_with_header(&clear(128), &m).unwrap();
    let b = Token::wrap_ep11_with_header(&clear(128), &m).unwrap();
    let k = SecureKey::parse(&[a.as_bytes(), b.as_bytes()].concat()).unwrap();
    assert_eq!(k.len(), 672);
    assert_eq!(k.key_bits(), 128);
}

#[test]
fn a_single_token_is_not_split_even_when_its_length_is_even() {
    // A 128-byte CCA-AESCIPHER token (AES-192) is as long as two CCA-AESDATA tokens.
    let m = mk(25);
    for (t, _) in all_tokens(&m) {
        let k = SecureKey::parse(t.as_bytes()).unwrap();
        assert!(!k.is_xts());
        assert_eq!(k.halves(), std::slice::from_ref(&t));
        assert_eq!(k.to_bytes(), t.as_bytes());
    }
}

#[test]
fn xts_rejects_mixed_halves() {
    let m = mk(26);
    let d256 = Token::wrap(KeyType::CcaAesData, &clear(256), &m).unwrap();
    let d128 = Token::wrap(KeyType::CcaAesData, &clear(128), &m).unwrap();
    let c256 = Token::wrap(KeyType::CcaAesCipher, &clear(256), &m).unwrap();
    let c128 = Token::wrap(KeyType::CcaAesCipher, &clear(128), &m).unwrap();
    let e256 = Token::wrap(KeyType::Ep11Aes, &clear(256), &m).unwrap();
    let h256 = Token::wrap_ep11_with_header(&clear(256), &m).unwrap();
    let cat = |a: &Token, b: &Token| [a.as_bytes(), b.as_bytes()].concat();

    assert!(matches!(
        SecureKey::parse(&cat(&d256, &d128)),
        Err(TokenError::XtsMismatch { .. })
    ));
    assert!(matches!(
        SecureKey::parse(&cat(&c256, &c128)),
        Err(TokenError::SecureKeyLength {
            single: 136,
            double: 272,
            found: 256,
            ..
        })
    ));
    assert!(SecureKey::parse(&cat(&e256, &h256)).is_err());
    assert!(SecureKey::parse(&cat(&d256, &c256)).is_err());
    for (a, b) in [(&d256, &c256), (&c256, &e256), (&e256, &h256)] {
        assert!(matches!(
            SecureKey::xts(a.clone(), b.clone()),
            Err(TokenError::XtsMismatch { .. })
        ));
    }
    // Garbage after a valid first half.
    let mut b = d256.as_bytes().to_vec();
    b.extend_from_slice(&[0u8; 64]);
    assert!(SecureKey::parse(&b).is_err());
    // Three tokens.
    let three = [d256.as_bytes(), d256.as_bytes(), d256.as_bytes()].concat();
    assert!(matches!(
        SecureKey::parse(&three),
        Err(TokenError::SecureKeyLength { .. })
    ));
}

#[test]
fn xts_rejects_192_bit_halves_and_different_master_keys() {
    let m = mk(27);
    let (a, b) = pair(KeyType::CcaAesCipher, 192, &m);
    assert_eq!(SecureKey::xts(a, b), Err(TokenError::XtsKeyBits(192)));
    let a = Token::wrap(KeyType::Ep11Aes, &clear(256), &m).unwrap();
    let b = Token::wrap(KeyType::Ep11Aes, &clear(256), &mk(28)).unwrap();
    assert!(matches!(
        SecureKey::parse(&[a.as_bytes(), b.as_bytes()].concat()),
        Err(TokenError::XtsMkvpMismatch { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// ECC

#[test]
fn ecc_token_round_trips_and_rewraps() {
    let (apka, next) = (mk(29), mk(30));
    let secret = p256::SecretKey::random(&mut rand::rngs::OsRng);
    let t = ecc::EccKeyToken::wrap(&secret, &apka);
    let b = t.as_bytes();
    assert_eq!(b.len(), ecc::LEN);
    assert_eq!(&b[..8], &[0xEC, 0x01, 0x00, 161, 0x01, 0, 0, 0]);
    assert_eq!(&b[8..16], apka.cca_mkvp().as_bytes());
    assert_eq!(b[16], 0x04);
    assert_eq!(t.mkvp(), apka.cca_mkvp());
    let parsed = ecc::EccKeyToken::parse(b).unwrap();
    assert_eq!(parsed, t);
    assert_eq!(parsed.public_key(), secret.public_key());
    assert_eq!(parsed.unwrap(&apka).unwrap(), secret);
    assert!(matches!(
        t.unwrap(&next),
        Err(TokenError::WrongMasterKey {
            kind: "APKA ECC",
            ..
        })
    ));
    let r = t.rewrap(&apka, &next).unwrap();
    assert_eq!(r.mkvp(), next.cca_mkvp());
    assert_eq!(r.public_key(), secret.public_key());
    assert_eq!(r.unwrap(&next).unwrap(), secret);
    assert!(r.unwrap(&apka).is_err());
}

#[test]
fn ecc_parse_rejects_bad_structure() {
    let apka = mk(31);
    let t = ecc::EccKeyToken::wrap(&p256::SecretKey::random(&mut rand::rngs::OsRng), &apka);
    assert!(matches!(
        ecc::EccKeyToken::parse(&t.as_bytes()[..160]),
        Err(TokenError::Length { .. })
    ));
    for (off, v) in [(0, 0x1f), (1, 2), (3, 160), (4, 2), (6, 1), (16, 0x02)] {
        let mut b = t.as_bytes().to_vec();
        b[off] = v;
        assert!(ecc::EccKeyToken::parse(&b).is_err(), "offset {off}");
    }
    // A point that is not on the curve.
    let mut b = t.as_bytes().to_vec();
    b[17..81].fill(0xff);
    assert_eq!(
        ecc::EccKeyToken::parse(&b),
        Err(TokenError::EccPublicKey { kind: "APKA ECC" })
    );
}

#[test]
fn ecc_token_with_a_swapped_public_key_does_not_unwrap() {
    // Even with a valid tag (made with the master key), the private key must match the public.
    let apka = mk(32);
    let t = ecc::EccKeyToken::wrap(&p256::SecretKey::random(&mut rand::rngs::OsRng), &apka);
    let other = p256::SecretKey::random(&mut rand::rngs::OsRng).public_key();
    let mut b = t.as_bytes().to_vec();
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    b[16..81].copy_from_slice(other.to_encoded_point(false).as_bytes());
    let keys = WrapKeys::derive(&apka, "APKA-ECC-P256");
    let tag = keys.mac(&[&b[..129]]);
    b[129..].copy_from_slice(&tag);
    let swapped = ecc::EccKeyToken::parse(&b).unwrap();
    assert_eq!(
        swapped.unwrap(&apka),
        Err(TokenError::EccKeyMismatch { kind: "APKA ECC" })
    );
}

// ---------------------------------------------------------------------------------------------
// Robustness

fn valid_samples() -> Vec<Vec<u8>> {
    let m = mk(33);
    let mut v: Vec<Vec<u8>> = all_tokens(&m)
        .into_iter()
        .map(|(t, _)| t.as_bytes().to_vec())
        .collect();
    let xts = [v[2].clone(), v[2].clone()].concat();
    v.push(xts);
    v.push(
        ecc::EccKeyToken::wrap(&p256::SecretKey::random(&mut rand::rngs::OsRng), &m)
            .as_bytes()
            .to_vec(),
    );
    v
}

fn parse_everything(b: &[u8]) {
    let m = mk(33);
    if let Ok(t) = Token::parse(b) {
        let _ = (t.key_bits(), t.mkvp(), t.unwrap(&m));
    }
    if let Ok(k) = SecureKey::parse(b) {
        let _ = (k.key_bits(), k.mkvp(), k.len(), k.to_bytes());
    }
    if let Ok(e) = ecc::EccKeyToken::parse(b) {
        let _ = (e.public_key(), e.unwrap(&m));
    }
}

proptest! {
    #[test]
    fn parsers_never_panic_on_arbitrary_bytes(b in proptest::collection::vec(any::<u8>(), 0..700)) {
        parse_everything(&b);
    }

    /// Valid tokens with some bytes overwritten and the length changed reach the deeper checks.
    #[test]
    fn parsers_never_panic_on_mutated_tokens(
        which in 0usize..13,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        new_len in proptest::option::of(0usize..700),
    ) {
        let samples = valid_samples();
        let mut b = samples[which % samples.len()].clone();
        for (i, v) in edits {
            let i = i.index(b.len());
            b[i] = v;
        }
        if let Some(n) = new_len {
            b.resize(n, 0);
        }
        parse_everything(&b);
    }
}

// ---------------------------------------------------------------------------------------------
// APKA RSA

/// One 3072-bit key pair for all RSA token tests (generation takes a second or more).
fn rsa_secret() -> &'static ::rsa::RsaPrivateKey {
    static KEY: std::sync::OnceLock<::rsa::RsaPrivateKey> = std::sync::OnceLock::new();
    KEY.get_or_init(|| ::rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 3072).unwrap())
}

#[test]
fn rsa_token_round_trips_exports_its_public_key_and_rewraps() {
    use ::rsa::pkcs8::DecodePublicKey;
    use ::rsa::traits::{PrivateKeyParts, PublicKeyParts};
    let (a, b) = (mk(30), mk(31));
    let t = rsa::RsaKeyToken::wrap(rsa_secret(), &a).unwrap();
    assert_eq!(t.as_bytes().len(), rsa::token_len(3072));
    assert_eq!(t.as_bytes().len(), 68 + 2 * 384);
    assert_eq!((t.bits(), t.mkvp()), (3072, a.cca_mkvp()));
    let again = rsa::RsaKeyToken::parse(t.as_bytes()).unwrap();
    assert_eq!(again, t);
    assert_eq!(again.unwrap(&a).unwrap().primes(), rsa_secret().primes());
    let spki = ::rsa::RsaPublicKey::from_public_key_der(&t.public_key_der()).unwrap();
    assert_eq!(spki.n(), rsa_secret().n());
    let pem = t.public_key_pem();
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{pem}");
    assert_eq!(
        ::rsa::RsaPublicKey::from_public_key_pem(&pem).unwrap(),
        spki
    );
    // A re-encipher keeps the key pair, so what a KMS registered stays valid.
    let moved = t.rewrap(&a, &b).unwrap();
    assert_eq!(moved.public_key(), t.public_key());
    assert_eq!(moved.mkvp(), b.cca_mkvp());
    assert_eq!(moved.unwrap(&b).unwrap().primes(), rsa_secret().primes());
    assert!(matches!(
        moved.unwrap(&a),
        Err(TokenError::WrongMasterKey {
            kind: "APKA RSA",
            ..
        })
    ));
    assert!(t.rewrap(&b, &a).is_err(), "the wrong source master key");
}

#[test]
fn flipping_any_bit_of_an_rsa_token_is_detected() {
    let apka = mk(32);
    let t = rsa::RsaKeyToken::wrap(rsa_secret(), &apka).unwrap();
    // parse plus the tag check; every flip fails one of them before any RSA arithmetic.
    assert_every_bit_flip_rejected("RSA", t.as_bytes(), |b| {
        rsa::RsaKeyToken::parse(b).is_ok_and(|t| t.unwrap(&apka).is_ok())
    });
}

#[test]
fn rsa_token_parse_rejects_other_lengths_sizes_and_fields() {
    let t = rsa::RsaKeyToken::wrap(rsa_secret(), &mk(33)).unwrap();
    let b = t.as_bytes();
    let parse = |b: &[u8]| rsa::RsaKeyToken::parse(b).expect_err("must be rejected");
    for len in [0, 1, 19, b.len() - 1, b.len() + 1] {
        let mut v = b.to_vec();
        v.resize(len, 0);
        assert!(
            matches!(
                parse(&v),
                TokenError::Length {
                    kind: "APKA RSA",
                    ..
                }
            ),
            "{len}"
        );
    }
    let mut v = b.to_vec();
    v[4..6].copy_from_slice(&2048u16.to_be_bytes());
    assert_eq!(parse(&v), TokenError::RsaKeyBits(2048));
    // A 4096-bit size field on a 3072-bit token: the length no longer fits.
    v[4..6].copy_from_slice(&4096u16.to_be_bytes());
    assert!(matches!(parse(&v), TokenError::Length { .. }));
    for (off, name) in [(0, "token type"), (1, "version"), (19, "public exponent")] {
        let mut v = b.to_vec();
        v[off] ^= 0x40;
        assert!(
            matches!(parse(&v), TokenError::Field { field, .. } if field == name),
            "{name}"
        );
    }
    let mut v = b.to_vec();
    v[3] ^= 1;
    assert!(matches!(
        parse(&v),
        TokenError::Field {
            field: "token length",
            ..
        }
    ));
    let mut v = b.to_vec();
    v[7] = 1;
    assert!(matches!(
        parse(&v),
        TokenError::Field {
            field: "reserved bytes",
            ..
        }
    ));
    // A modulus that is even, or shorter than its size field says.
    let mut v = b.to_vec();
    v[rsa::OFF_MODULUS + 383] ^= 1;
    assert_eq!(parse(&v), TokenError::RsaPublicKey { kind: "APKA RSA" });
    let mut v = b.to_vec();
    v[rsa::OFF_MODULUS] = 0;
    assert_eq!(parse(&v), TokenError::RsaPublicKey { kind: "APKA RSA" });
}

#[test]
fn an_rsa_token_pairing_another_public_key_is_refused_even_when_signed() {
    use ::rsa::traits::PublicKeyParts;
    // Someone with the master key could build such a token; the adapter still refuses it
    // rather than decrypt with a key that is not the one the KMS was given.
    let apka = mk(34);
    let mut b = rsa::RsaKeyToken::wrap(rsa_secret(), &apka)
        .unwrap()
        .as_bytes()
        .to_vec();
    let other = ::rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 3072).unwrap();
    b[rsa::OFF_MODULUS..rsa::OFF_MODULUS + 384].copy_from_slice(&other.n().to_bytes_be());
    let tag_at = b.len() - 32;
    let tag = hmac(&derived(&apka, "APKA-RSA", "mac"), &[&b[..tag_at]]);
    b[tag_at..].copy_from_slice(&tag);
    let t = rsa::RsaKeyToken::parse(&b).unwrap();
    assert_eq!(
        t.unwrap(&apka).unwrap_err(),
        TokenError::RsaKeyMismatch { kind: "APKA RSA" }
    );
}

#[test]
fn rsa_token_wrap_refuses_keys_it_cannot_hold_and_debug_shows_no_key() {
    let small = ::rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 1024).unwrap();
    assert_eq!(
        rsa::RsaKeyToken::wrap(&small, &mk(35)).unwrap_err(),
        TokenError::RsaKeyBits(1024)
    );
    let t = rsa::RsaKeyToken::wrap(rsa_secret(), &mk(35)).unwrap();
    let d = format!("{t:?}");
    assert!(
        d.contains("3072") && d.contains(&mk(35).cca_mkvp().to_string()),
        "{d}"
    );
    assert!(!d.contains(&hex::encode(&t.as_bytes()[420..424])));
}
