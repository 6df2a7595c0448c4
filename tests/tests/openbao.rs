//! Keys delivered by a real OpenBao (dev server on loopback, `scripts/openbao.sh`) wrapped for
//! the adapter's RSA key and unwrapped inside the (simulated) adapter, never in the clear on the
//! host; and the OpenBao policy that lets a host fetch keys only that way.
//!
//! Everything OpenBao-side goes through the real `bao` CLI; the adapter side through `ap_sim`'s
//! HSM operations (the OpenBao plug-in that will join the two is not written yet).

use std::path::Path;

use ap_sim::hsm::{Hsm, HsmError, KeyWrapError};
use ap_sim::sim::{Layout, Simulator};
use ap_sim::token::rsa::RsaKeyToken;
use ap_sim::token::KeyType;
use ap_sim::MkType;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use tests::OpenBao;

/// Registers `rsa`'s public half as transit key `name` (an import of only a public key: OpenBao
/// then holds no private key for it and can only wrap for it).
fn register_public_key(bao: &OpenBao, dir: &Path, name: &str, rsa: &RsaKeyToken) {
    let pem = dir.join(format!("{name}.pub.pem"));
    std::fs::write(&pem, rsa.public_key_pem()).unwrap();
    let arg = format!("public_key=@{}", pem.display());
    bao.root_json(&[
        "write",
        &format!("transit/keys/{name}/import"),
        &arg,
        "type=rsa-3072",
    ]);
    let k = bao.root_json(&["read", &format!("transit/keys/{name}")]);
    assert_eq!(k["data"]["type"], "rsa-3072", "{k}");
}

/// `transit/byok-export/DEST/SRC` as the token in `home`: the CKM_RSA_AES_KEY_WRAP blob of
/// SRC's version 1 for DEST's public key.
fn byok_export(bao: &OpenBao, home: &Path, dest: &str, src: &str) -> Vec<u8> {
    let v = bao.json_as(
        home,
        &["read", &format!("transit/byok-export/{dest}/{src}")],
    );
    B64.decode(
        v["data"]["keys"]["1"]
            .as_str()
            .expect("a wrapped version 1"),
    )
    .expect("base64")
}

/// Encrypts `plain` with transit key `key`: `vault:v1:` base64(nonce || ciphertext || tag).
fn transit_encrypt(bao: &OpenBao, key: &str, plain: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let arg = format!("plaintext={}", B64.encode(plain));
    let v = bao.root_json(&["write", &format!("transit/encrypt/{key}"), &arg]);
    let ct = v["data"]["ciphertext"].as_str().unwrap();
    let raw = B64
        .decode(
            ct.strip_prefix("vault:v1:")
                .expect("a version 1 ciphertext"),
        )
        .unwrap();
    let (nonce, rest) = raw.split_at(12);
    (nonce.to_vec(), rest.to_vec())
}

/// A dev server with the transit engine, an exportable volume key `vol1` in it, and a
/// simulator whose RSA key is registered as `host1`; `None` where the tests SKIP.
fn transit_key_and_host() -> Option<(OpenBao, tempfile::TempDir, Hsm, RsaKeyToken)> {
    let bao = OpenBao::start()?;
    let tmp = tempfile::tempdir().unwrap();
    let hsm = Hsm::new(Simulator::init(tmp.path().join("sim"), &Layout::default(), false).unwrap());
    bao.root_ok(&["secrets", "enable", "transit"]);
    bao.root_json(&[
        "write",
        "-f",
        "transit/keys/vol1",
        "type=aes256-gcm96",
        "exportable=true",
    ]);
    let host = hsm.generate_rsa(3072, None).unwrap();
    register_public_key(&bao, tmp.path(), "host1", &host);
    Some((bao, tmp, hsm, host))
}

#[test]
fn an_openbao_key_reaches_a_secure_key_only_wrapped_for_the_adapter() {
    let Some((bao, tmp, hsm, host)) = transit_key_and_host() else {
        return;
    };

    // The key OpenBao created, delivered wrapped, becomes a secure key of each CCA type: data
    // OpenBao encrypts with it decrypts inside the adapter with the secure key.
    let blob = byok_export(&bao, bao.dir.path(), "host1", "vol1");
    assert_eq!(
        blob.len(),
        384 + 40,
        "RSA-OAEP block, then RFC 5649 of 32 bytes"
    );
    let (nonce, ct) = transit_encrypt(&bao, "vol1", b"a volume passphrase");
    for kt in [KeyType::CcaAesData, KeyType::CcaAesCipher, KeyType::Ep11Aes] {
        let sk = hsm.unwrap_rsa_aes_key_wrap(&host, &blob, kt, None).unwrap();
        assert_eq!((sk.key_type(), sk.key_bits()), (kt, 256));
        let plain = hsm.decrypt_aes_gcm(&sk, &nonce, &ct, b"", None).unwrap();
        assert_eq!(&plain[..], b"a volume passphrase", "{kt}");
    }

    // A blob for another host's key does not unwrap with this one.
    let other = hsm.generate_rsa(3072, None).unwrap();
    register_public_key(&bao, tmp.path(), "host2", &other);
    let for_other = byok_export(&bao, bao.dir.path(), "host2", "vol1");
    assert!(matches!(
        hsm.unwrap_rsa_aes_key_wrap(&host, &for_other, KeyType::CcaAesData, None),
        Err(HsmError::KeyWrap(KeyWrapError::Oaep))
    ));

    // After an APKA master key change the re-enciphered RSA key is the same key pair: OpenBao
    // needs no new registration, and a fresh export still unwraps.
    let cca = ap_sim::apqn::parse_list("08.002f,09.002f").unwrap();
    hsm.simulator().tke_load_random(&cca, MkType::Apka).unwrap();
    let staged = hsm
        .reencipher_rsa(&host, ap_sim::hsm::Direction::ToNew, None)
        .unwrap();
    hsm.simulator().tke_set(&cca, MkType::Apka).unwrap();
    let again = byok_export(&bao, bao.dir.path(), "host1", "vol1");
    let sk = hsm
        .unwrap_rsa_aes_key_wrap(&staged, &again, KeyType::CcaAesData, None)
        .unwrap();
    let plain = hsm.decrypt_aes_gcm(&sk, &nonce, &ct, b"", None).unwrap();
    assert_eq!(&plain[..], b"a volume passphrase");
}

/// The policy the README documents for a host: export keys wrapped for its own RSA key, and
/// nothing else of transit's exports.
const HOST1_POLICY: &str = r#"
path "transit/byok-export/host1/*" {
  capabilities = ["read"]
}
path "transit/export/*" {
  capabilities = ["deny"]
}
"#;

#[test]
fn the_host_policy_allows_byok_export_to_its_own_key_only_and_never_in_the_clear() {
    let Some((bao, tmp, hsm, host)) = transit_key_and_host() else {
        return;
    };
    register_public_key(
        &bao,
        tmp.path(),
        "host2",
        &hsm.generate_rsa(3072, None).unwrap(),
    );
    let policy = tmp.path().join("host1.hcl");
    std::fs::write(&policy, HOST1_POLICY).unwrap();
    bao.root_ok(&["policy", "write", "host1", policy.to_str().unwrap()]);
    let t = bao.root_json(&["token", "create", "-policy=host1", "-no-default-policy"]);
    let home = bao.home_for_token("host1", t["auth"]["client_token"].as_str().unwrap());

    // The clear export is possible (the key is exportable, as byok-export requires: root gets
    // it), so the 403s below are the policy's doing.
    let clear = bao.root_json(&["read", "transit/export/encryption-key/vol1"]);
    assert!(clear["data"]["keys"]["1"].is_string(), "{clear}");
    for path in [
        "transit/export/encryption-key/vol1",
        "transit/export/encryption-key/vol1/1",
        "transit/byok-export/host2/vol1",
        "transit/keys/vol1",
    ] {
        let out = bao.run_as(&home, &["read", path], None);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{path} must be denied");
        assert!(
            err.contains("Code: 403") && err.contains("permission denied"),
            "{path}: {err}"
        );
        assert!(out.stdout.is_empty(), "{path}: nothing returned");
    }
    let blob = byok_export(&bao, &home, "host1", "vol1");
    let sk = hsm
        .unwrap_rsa_aes_key_wrap(&host, &blob, KeyType::CcaAesData, None)
        .unwrap();
    // The same key as the clear export: compared by verification pattern, here in the test
    // only (the host never sees the clear key).
    let clear = B64
        .decode(clear["data"]["keys"]["1"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        hsm.verification_pattern(&sk, None).unwrap(),
        ap_sim::hsm::vp_of_effective(&clear, false)
    );
}
