//! The OpenBao plug-in's REST client against a real `bao` dev server on loopback: keys created
//! and fetched wrapped for the adapter, failover past a server that is down, and each refusal
//! as its own typed error.

use std::time::Duration;

use ap_sim::hsm::{Hsm, HsmError, KeyWrapError};
use ap_sim::sim::{Layout, Simulator};
use ap_sim::token::KeyType;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use tests::{KmipServer, OpenBao};
use zeroize::Zeroizing;
use zkey_kms_openbao::{fetch_secure_key, BaoClient, BaoError, FetchError};

fn token_of(home: &std::path::Path) -> Zeroizing<String> {
    Zeroizing::new(
        std::fs::read_to_string(home.join(".vault-token"))
            .unwrap()
            .trim()
            .to_string(),
    )
}

fn client(servers: &[String], token: Zeroizing<String>) -> BaoClient {
    BaoClient::new(servers, token, "transit", None, Duration::from_secs(10)).unwrap()
}

fn down() -> String {
    format!("http://127.0.0.1:{}", KmipServer::free_port())
}

#[test]
fn keys_made_in_openbao_arrive_as_secure_keys_past_a_server_that_is_down() {
    let Some(bao) = OpenBao::start() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let hsm = Hsm::new(Simulator::init(tmp.path().join("sim"), &Layout::default(), false).unwrap());
    bao.root_ok(&["secrets", "enable", "transit"]);
    let first_down = down();
    let mut c = client(&[first_down.clone(), bao.addr()], token_of(bao.dir.path()));
    let rsa = hsm.generate_rsa(3072, None).unwrap();
    c.import_public_key("host1", &rsa.public_key_pem(), 3072)
        .unwrap();
    let notices = c.take_notices();
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert!(
        notices[0].contains(&bao.addr()) && notices[0].contains(&first_down),
        "{notices:?}"
    );
    let info = c.create_volume_key("vol1").unwrap();
    assert_eq!(
        (info.key_type.as_str(), info.latest_version, info.exportable),
        ("aes256-gcm96", 1, true)
    );
    // A name in use is refused, never reused as a "new" key.
    let e = c.create_volume_key("vol1").unwrap_err();
    assert!(e.to_string().contains("exists already"), "{e}");

    let (version, sk) = fetch_secure_key(
        &mut c,
        &hsm,
        &rsa,
        "host1",
        "vol1",
        KeyType::CcaAesCipher,
        None,
    )
    .unwrap();
    assert_eq!(
        (version, sk.key_type(), sk.key_bits()),
        (1, KeyType::CcaAesCipher, 256)
    );
    // It is OpenBao's key: what transit encrypts with it decrypts with the secure key.
    let arg = format!("plaintext={}", B64.encode(b"sector data"));
    let v = bao.root_json(&["write", "transit/encrypt/vol1", &arg]);
    let raw = B64
        .decode(
            v["data"]["ciphertext"]
                .as_str()
                .unwrap()
                .strip_prefix("vault:v1:")
                .unwrap(),
        )
        .unwrap();
    let plain = hsm
        .decrypt_aes_gcm(&sk, &raw[..12], &raw[12..], b"", None)
        .unwrap();
    assert_eq!(&plain[..], b"sector data");

    // After a rotation in OpenBao the latest version is delivered.
    bao.root_ok(&["write", "-f", "transit/keys/vol1/rotate"]);
    let (version, sk2) = fetch_secure_key(
        &mut c,
        &hsm,
        &rsa,
        "host1",
        "vol1",
        KeyType::CcaAesData,
        None,
    )
    .unwrap();
    assert_eq!(version, 2);
    assert_ne!(
        hsm.verification_pattern(&sk2, None).unwrap(),
        hsm.verification_pattern(&sk, None).unwrap()
    );

    // Every server down: one error naming each.
    let (a, b) = (down(), down());
    let mut dead = client(&[a.clone(), b.clone()], token_of(bao.dir.path()));
    let e = dead.key_info("vol1").unwrap_err();
    assert!(
        matches!(&e, BaoError::ServerDown(m) if m.contains(&a) && m.contains(&b)),
        "{e}"
    );
}

#[test]
fn refusals_are_typed_and_name_the_way_out() {
    let Some(bao) = OpenBao::start() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let hsm = Hsm::new(Simulator::init(tmp.path().join("sim"), &Layout::default(), false).unwrap());
    bao.root_ok(&["secrets", "enable", "transit"]);
    let mut root = client(&[bao.addr()], token_of(bao.dir.path()));
    let host1 = hsm.generate_rsa(3072, None).unwrap();
    let host2 = hsm.generate_rsa(3072, None).unwrap();
    root.import_public_key("host1", &host1.public_key_pem(), 3072)
        .unwrap();
    root.import_public_key("host2", &host2.public_key_pem(), 3072)
        .unwrap();
    root.create_volume_key("vol1").unwrap();

    // A key deleted in OpenBao (or never made).
    let e = root.key_info("gone").unwrap_err();
    assert!(
        matches!(&e, BaoError::KeyNotFound { name, .. } if name == "gone"),
        "{e}"
    );
    assert!(e.to_string().contains("deleted in OpenBao"), "{e}");
    assert!(matches!(
        fetch_secure_key(
            &mut root,
            &hsm,
            &host1,
            "host1",
            "gone",
            KeyType::CcaAesData,
            None
        ),
        Err(FetchError::Bao(BaoError::KeyNotFound { .. }))
    ));
    // A key that is no volume key (the host's own public key).
    assert!(matches!(
        fetch_secure_key(
            &mut root,
            &hsm,
            &host1,
            "host1",
            "host2",
            KeyType::CcaAesData,
            None
        ),
        Err(FetchError::KeyType { .. })
    ));
    // Wrapped for another host's key: refused by the adapter, nothing made.
    assert!(matches!(
        fetch_secure_key(
            &mut root,
            &hsm,
            &host1,
            "host2",
            "vol1",
            KeyType::CcaAesData,
            None
        ),
        Err(FetchError::Hsm(HsmError::KeyWrap(KeyWrapError::Oaep)))
    ));

    // A token whose policy lets it read the keys and export them for host1 only.
    let policy = tmp.path().join("host1.hcl");
    std::fs::write(
        &policy,
        "path \"transit/byok-export/host1/*\" { capabilities = [\"read\"] }\n\
         path \"transit/keys/vol1\" { capabilities = [\"read\"] }\n\
         path \"transit/export/*\" { capabilities = [\"deny\"] }\n",
    )
    .unwrap();
    bao.root_ok(&["policy", "write", "host1", policy.to_str().unwrap()]);
    let t = bao.root_json(&["token", "create", "-policy=host1", "-no-default-policy"]);
    let token = Zeroizing::new(t["auth"]["client_token"].as_str().unwrap().to_string());
    let mut host = client(&[bao.addr()], token);
    assert!(fetch_secure_key(
        &mut host,
        &hsm,
        &host1,
        "host1",
        "vol1",
        KeyType::CcaAesData,
        None
    )
    .is_ok());
    let e = host.byok_export("host2", "vol1").unwrap_err();
    assert!(
        matches!(&e, BaoError::PermissionDenied { path, .. } if path.contains("byok-export/host2")),
        "{e}"
    );
    assert!(e.to_string().contains("policy"), "{e}");
    let e = host.create_volume_key("vol2").unwrap_err();
    assert!(matches!(e, BaoError::PermissionDenied { .. }), "{e}");
    // A wrong token is the same refusal, and the token is in no message.
    let mut bad = client(&[bao.addr()], Zeroizing::new("s.not-a-token".into()));
    let e = bad.key_info("vol1").unwrap_err();
    assert!(matches!(e, BaoError::PermissionDenied { .. }), "{e}");
    assert!(!format!("{e} {e:?} {bad:?}").contains("not-a-token"));
    // URLs that are none.
    for u in ["127.0.0.1:8200", "ftp://x", ""] {
        assert!(
            matches!(
                BaoClient::new(
                    &[u.to_string()],
                    Zeroizing::new(String::new()),
                    "transit",
                    None,
                    Duration::from_secs(1)
                ),
                Err(BaoError::BadUrl(_))
            ),
            "{u}"
        );
    }
}
