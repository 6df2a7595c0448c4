//! The KMIP plug-in against a real PyKMIP 0.11 server on loopback, through the plug-in
//! protocol exactly as zkey drives it (the `zkey-kms-kmip` executable over stdin/stdout).
//!
//! Each test starts its own server(s) with `scripts/pykmip-server.sh` on a free port and its
//! own simulator. Nothing is skipped: if the server cannot be set up (no python3-venv, PyPI
//! unreachable), the test fails with the script's message.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ap_sim::hsm::{vp_of_effective, Hsm};
use ap_sim::sim::{Layout, Simulator};
use ap_sim::token::SecureKey;
use ap_sim::{Apqn, MkType};
use kms_plugin::identity::IdentityKey;
use kms_plugin::kmip::{self, tag, Client, Operation, TlsSettings};
use kms_plugin::plugin::{
    ConfigureStatus, ErrorCode, MkDirection, PluginClient, ReencipherMode, XtsPart,
};

const CCA: &str = "08.002f";

use tests::KmipServer as Server;

struct Env {
    sim_dir: tempfile::TempDir,
    repo: tempfile::TempDir,
    hsm: Hsm,
}

impl Env {
    fn new() -> Env {
        let sim_dir = tempfile::tempdir().unwrap();
        let sim = Simulator::init(sim_dir.path(), &Layout::default(), false).unwrap();
        Env {
            sim_dir,
            repo: tempfile::tempdir().unwrap(),
            hsm: Hsm::new(sim),
        }
    }

    fn cfg(&self) -> PathBuf {
        self.repo.path().join("KMIP")
    }

    fn plugin(&self) -> PluginClient {
        let cfg = self.cfg();
        PluginClient::spawn_with_env(
            Path::new(env!("CARGO_BIN_EXE_zkey-kms-kmip")),
            cfg.exists().then_some(cfg.as_path()),
            Duration::from_secs(60),
            &[("AP_SIM_DIR", self.sim_dir.path().as_os_str())],
        )
        .unwrap()
    }

    fn sim(&self) -> &Simulator {
        self.hsm.simulator()
    }

    /// Binds and configures the plug-in completely against `servers`, with `ca` trusted.
    fn configure(&self, srv: &Server, servers: &str, ca: &Path) -> PluginClient {
        let mut p = self.plugin();
        p.bind(&self.cfg()).unwrap();
        let r = p
            .configure(Some(vec![CCA.into()]), None, BTreeMap::new())
            .unwrap();
        assert_eq!(r.status, ConfigureStatus::Incomplete);
        assert!(r.missing.iter().any(|m| m.contains("--servers")), "{r:?}");
        assert!(
            r.missing.iter().any(|m| m.contains("--client-cert")),
            "{r:?}"
        );
        let csr = self.repo.path().join("client.csr");
        let opts = BTreeMap::from([
            ("gen-csr".to_string(), csr.display().to_string()),
            ("cert-subject".to_string(), "zkey-test".to_string()),
            ("servers".to_string(), servers.to_string()),
            ("server-ca".to_string(), ca.display().to_string()),
        ]);
        let r = p.configure(None, None, opts).unwrap();
        assert_eq!(r.status, ConfigureStatus::Incomplete);
        assert_eq!(r.missing.len(), 1, "{r:?}");
        let cert = self.repo.path().join("client.crt");
        srv.sign(&csr, &cert);
        let r = p
            .configure(
                None,
                None,
                BTreeMap::from([("client-cert".to_string(), cert.display().to_string())]),
            )
            .unwrap();
        assert_eq!(r.status, ConfigureStatus::Complete, "{r:?}");
        p
    }

    /// A direct KMIP client with the plug-in's identity, for checks the plug-in never does
    /// (fetching a key in the clear to compare VPs).
    fn kmip(&self, servers: &str) -> Client {
        let cfg = self.cfg();
        let token = ap_sim::token::ecc::EccKeyToken::parse(
            &std::fs::read(cfg.join("identity-key.skey")).unwrap(),
        )
        .unwrap();
        let s = TlsSettings {
            servers: servers.split(',').map(|s| s.parse().unwrap()).collect(),
            server_ca_pem: std::fs::read(cfg.join("server-ca.pem")).unwrap(),
            client_cert_pem: std::fs::read(cfg.join("client-cert.pem")).unwrap(),
            identity: IdentityKey::new(token, self.hsm.clone(), None),
            connect_timeout: Duration::from_secs(5),
            io_timeout: Duration::from_secs(30),
            attempts: 1,
        };
        Client::connect(&s, &mut Vec::new()).unwrap()
    }

    fn vp(&self, key: &[u8]) -> String {
        self.hsm
            .verification_pattern(&SecureKey::parse(key).unwrap(), None)
            .unwrap()
            .to_string()
    }
}

fn clear_vp(c: &mut Client, id: &str) -> String {
    let p = c
        .call(
            Operation::Get,
            vec![kmip::ttlv::Item::text(tag::UNIQUE_IDENTIFIER, id)],
        )
        .unwrap();
    let m = p
        .child(tag::SYMMETRIC_KEY)
        .and_then(|k| k.child(tag::KEY_BLOCK))
        .and_then(|b| b.child(tag::KEY_VALUE))
        .and_then(|v| v.child(tag::KEY_MATERIAL))
        .and_then(|m| m.as_bytes())
        .unwrap()
        .to_vec();
    vp_of_effective(&m, false).to_string()
}

fn code(e: kms_plugin::plugin::ClientError) -> (Option<ErrorCode>, String) {
    (e.code(), e.to_string())
}

#[test]
fn kmip_plugin_against_pykmip() {
    let srv = Server::start();
    let env = Env::new();
    let apqn: Apqn = CCA.parse().unwrap();
    let cca = [apqn, "09.002f".parse().unwrap()];
    let mut p = env.configure(&srv, &srv.addr(), &srv.ca());
    assert!(p.info().unwrap().configured);
    assert!(p.supports_key_type("CCA-AESDATA").unwrap());
    assert!(!p.supports_key_type("EP11-AES").unwrap());
    // The identity key never appears in the clear: the config dir holds only the token.
    let skey = std::fs::read(env.cfg().join("identity-key.skey")).unwrap();
    assert_eq!(skey.len(), ap_sim::token::ecc::LEN);

    // Generate: a secure key whose VP is the clear KMS key's.
    let props = BTreeMap::from([
        ("zkey-name".to_string(), "vol1".to_string()),
        ("volumes".to_string(), "/dev/dasdb1:enc1".to_string()),
    ]);
    let (key1, id1, label1) = p
        .generate_key("CCA-AESDATA", 256, XtsPart::Xts1, None, props)
        .unwrap();
    assert!(label1.starts_with("vol1-xts1-"), "{label1}");
    let mut direct = env.kmip(&srv.addr());
    assert_eq!(env.vp(&key1), clear_vp(&mut direct, &id1));
    let vp1 = env.vp(&key1);

    // Properties: set, remove, read back.
    p.set_key_properties(
        &id1,
        BTreeMap::from([
            ("volumes".to_string(), Some("/dev/dasdc1:enc2".to_string())),
            ("description".to_string(), Some("test key".to_string())),
            ("zkey-name-host1".to_string(), None),
        ]),
    )
    .unwrap();
    let got = p.get_key_properties(&id1).unwrap();
    assert_eq!(got["volumes"], "/dev/dasdc1:enc2");
    assert_eq!(got["description"], "test key");
    assert_eq!(got["xts-key"], "XTS-KEY-1");
    assert_eq!(got["zkey-name"], "vol1");

    // A second key, then list by label and by property.
    let (_, id2, _) = p
        .generate_key(
            "CCA-AESCIPHER",
            128,
            XtsPart::None,
            Some("other-key"),
            BTreeMap::from([("zkey-name".to_string(), "other".to_string())]),
        )
        .unwrap();
    let all = p.list_keys(None, BTreeMap::new(), BTreeMap::new()).unwrap();
    assert_eq!(all.len(), 2, "{all:?}");
    let l = p
        .list_keys(Some("vol1*"), BTreeMap::new(), BTreeMap::new())
        .unwrap();
    assert_eq!(l.len(), 1);
    assert_eq!(
        (l[0].key_id.as_str(), l[0].state.as_str(), l[0].bits),
        (id1.as_str(), "active", Some(256))
    );
    let l = p
        .list_keys(
            None,
            BTreeMap::from([("zkey-name".to_string(), "oth*".to_string())]),
            BTreeMap::new(),
        )
        .unwrap();
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].key_id, id2);

    // Import under another key type: same VP.
    let imported = p.import_key(&id1, "CCA-AESCIPHER").unwrap();
    assert_eq!(env.vp(&imported), vp1);
    let e = code(p.import_key("does-not-exist", "CCA-AESDATA").unwrap_err());
    assert_eq!(e.0, Some(ErrorCode::KeyNotFound), "{}", e.1);

    // Remove: revoked in the KMS, import refused with 'revoked'.
    p.remove_key(&id2, BTreeMap::new()).unwrap();
    let e = code(p.import_key(&id2, "CCA-AESDATA").unwrap_err());
    assert_eq!(e.0, Some(ErrorCode::KeyRevoked), "{}", e.1);
    assert!(e.1.contains("revoked"), "{}", e.1);
    let l = p
        .list_keys(Some("other*"), BTreeMap::new(), BTreeMap::new())
        .unwrap();
    assert_eq!(l[0].state, "deactivated");
    p.close().unwrap();

    // The AES master key moves on twice: the local secure key is lost, the wrapping key too;
    // refresh (import) gives a key under CURRENT with the same VP.
    for _ in 0..2 {
        env.sim().tke_load_random(&cca, MkType::Aes).unwrap();
        env.sim().tke_set(&cca, MkType::Aes).unwrap();
    }
    assert!(env
        .hsm
        .verify(&SecureKey::parse(&key1).unwrap(), None)
        .is_err());
    let mut p = env.plugin();
    let refreshed = p.import_key(&id1, "CCA-AESDATA").unwrap();
    assert_eq!(env.vp(&refreshed), vp1);
    let v = env
        .hsm
        .verify(&SecureKey::parse(&refreshed).unwrap(), None)
        .unwrap();
    assert_eq!(v.register, ap_sim::hsm::Register::Current);
    assert!(
        p.take_notices().iter().any(|n| n.contains("wrapping key")),
        "a replaced wrapping key is announced"
    );
    p.close().unwrap();

    // APKA master key change with the identity key staged and completed.
    env.sim().tke_load_random(&cca, MkType::Apka).unwrap();
    env.sim().tke_load_random(&cca, MkType::Aes).unwrap();
    let mut p = env.plugin();
    let r = p
        .reencipher(ReencipherMode::Staged, MkDirection::Auto, BTreeMap::new())
        .unwrap();
    assert_eq!(r.keys.len(), 2, "{r:?}");
    assert!(r.keys.iter().all(|k| k.action == "staged"), "{r:?}");
    assert!(env.cfg().join("identity-key.reenc").exists());
    assert!(env.cfg().join("wrapping-key.reenc").exists());
    // Completing before the SET is refused and changes nothing.
    assert!(p
        .reencipher(ReencipherMode::Complete, MkDirection::Auto, BTreeMap::new())
        .is_err());
    env.sim().tke_set(&cca, MkType::Apka).unwrap();
    env.sim().tke_set(&cca, MkType::Aes).unwrap();
    let r = p
        .reencipher(ReencipherMode::Auto, MkDirection::Auto, BTreeMap::new())
        .unwrap();
    assert!(r.keys.iter().all(|k| k.action == "completed"), "{r:?}");
    assert!(!env.cfg().join("identity-key.reenc").exists());
    p.close().unwrap();
    // A fresh session: a new TLS handshake signed with the re-enciphered identity key.
    let mut p = env.plugin();
    let again = p.import_key(&id1, "CCA-AESDATA").unwrap();
    assert_eq!(env.vp(&again), vp1);
    assert!(
        p.take_notices().is_empty(),
        "the staged wrapping key was kept"
    );
    // The OLD APKA master key moving out makes a non-re-enciphered key unusable; ours is fine.
    env.sim().tke_load_random(&cca, MkType::Apka).unwrap();
    env.sim().tke_set(&cca, MkType::Apka).unwrap();
    let r = p
        .reencipher(ReencipherMode::Auto, MkDirection::Auto, BTreeMap::new())
        .unwrap();
    assert_eq!(r.keys[0].action, "re-enciphered", "{r:?}");
    p.close().unwrap();
    let mut p = env.plugin();
    assert_eq!(env.vp(&p.import_key(&id1, "CCA-AESDATA").unwrap()), vp1);
    p.close().unwrap();
}

#[test]
fn failover_untrusted_certificate_and_server_down() {
    let srv = Server::start();
    let env = Env::new();
    // The first server's port is closed: the second one is used, with a notice.
    let closed = Server::free_port();
    let servers = format!("127.0.0.1:{closed},{}", srv.addr());
    let mut p = env.configure(&srv, &servers, &srv.ca());
    let notices = p.take_notices();
    assert!(
        notices
            .iter()
            .any(|n| n.contains(&format!("127.0.0.1:{closed}")) && n.contains("not reachable")),
        "{notices:?}"
    );
    let (key, id, _) = p
        .generate_key("CCA-AESDATA", 128, XtsPart::None, None, BTreeMap::new())
        .unwrap();
    assert!(!key.is_empty() && !id.is_empty());
    p.close().unwrap();

    // A server whose certificate another CA issued is refused.
    let other = Server::start();
    let mut p = env.plugin();
    p.configure(
        None,
        None,
        BTreeMap::from([
            ("server-ca".to_string(), other.ca().display().to_string()),
            ("servers".to_string(), srv.addr()),
        ]),
    )
    .map(drop)
    .unwrap_or(());
    let e = code(
        p.list_keys(None, BTreeMap::new(), BTreeMap::new())
            .unwrap_err(),
    );
    assert_eq!(e.0, Some(ErrorCode::CertificateNotTrusted), "{}", e.1);
    assert!(e.1.contains("--server-ca"), "{}", e.1);
    p.close().unwrap();
    // ... and a server that does not trust our client certificate ends the handshake.
    let mut p = env.plugin();
    let _ = p.configure(
        None,
        None,
        BTreeMap::from([
            ("server-ca".to_string(), other.ca().display().to_string()),
            ("servers".to_string(), other.addr()),
        ]),
    );
    let e = code(
        p.list_keys(None, BTreeMap::new(), BTreeMap::new())
            .unwrap_err(),
    );
    assert_eq!(e.0, Some(ErrorCode::TlsFailure), "{}", e.1);
    p.close().unwrap();

    // Every server down: a clear 'server down' error.
    let mut p = env.plugin();
    let _ = p.configure(
        None,
        None,
        BTreeMap::from([
            ("server-ca".to_string(), srv.ca().display().to_string()),
            ("servers".to_string(), srv.addr()),
        ]),
    );
    srv.stop();
    // The script waits for the server's process group to go; give the kernel a moment too.
    let gone = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        std::net::TcpStream::connect(srv.addr()).is_err()
    });
    assert!(gone, "the stopped server still accepts connections");
    // The session's connection is gone: the plug-in reconnects once, and finds no server.
    let e = code(p.import_key(&id, "CCA-AESDATA").unwrap_err());
    let notices = p.take_notices();
    assert!(
        notices.iter().any(|n| n.contains("reconnecting")),
        "{notices:?}"
    );
    assert_eq!(e.0, Some(ErrorCode::ServerDown), "{} {notices:?}", e.1);
    assert!(e.1.contains("connection refused"), "{} {notices:?}", e.1);
    p.close().unwrap();
}

#[test]
fn a_hanging_or_crashing_plugin_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    let hang = d.path().join("hang");
    std::fs::write(&hang, "#!/bin/sh\nexec sleep 30\n").unwrap();
    let crash = d.path().join("crash");
    std::fs::write(&crash, "#!/bin/sh\necho 'plugin broke' >&2\nexit 3\n").unwrap();
    for f in [&hang, &crash] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let e = PluginClient::spawn(&hang, None, Duration::from_millis(500))
        .err()
        .unwrap();
    assert!(e.to_string().contains("did not answer"), "{e}");
    let e = PluginClient::spawn(&crash, None, Duration::from_secs(5))
        .err()
        .unwrap();
    assert!(e.to_string().contains("plugin broke"), "{e}");
    // The registry file.
    let conf = d.path().join("kms-plugins.conf");
    std::fs::write(
        &conf,
        format!("KMIP={}\n", env!("CARGO_BIN_EXE_zkey-kms-kmip")),
    )
    .unwrap();
    std::env::set_var("ZKEY_KMS_PLUGINS", &conf);
    let mut p = PluginClient::open("KMIP", None).unwrap();
    assert_eq!(p.hello().name, "KMIP");
    let e = code(p.info().unwrap_err());
    assert_eq!(e.0, Some(ErrorCode::NotBound), "{}", e.1);
    p.close().unwrap();
    assert!(PluginClient::open("NOPE", None).is_err());
}

/// `key_status`: the plug-in's own keys with the MKVPs of their tokens, live and staged, and
/// the master key types a readiness check needs; a staging that skips the key whose type has
/// no NEW master key loaded.
#[test]
fn key_status_reports_the_plugin_keys_and_reencipher_skips_unaffected_ones() {
    let srv = Server::start();
    let env = Env::new();
    let cca: Vec<Apqn> = ["08.002f", "09.002f"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let mut p = env.configure(&srv, &srv.addr(), &srv.ca());
    let current = |t: MkType| {
        let st = env.sim().register_status(Some(&cca[..1])).unwrap();
        let r = st[0].registers.iter().find(|r| r.mktype == t).unwrap();
        (r.current.mkvp.unwrap(), r.new.mkvp)
    };
    let st = p.key_status().unwrap();
    let by = |st: &kms_plugin::plugin::KeyStatusReport, k: &str| {
        st.keys.iter().find(|s| s.key == k).unwrap().clone()
    };
    let id = by(&st, "identity-key");
    let wk = by(&st, "wrapping-key");
    assert_eq!(st.keys.len(), 2, "{st:?}");
    assert_eq!(
        (id.mktype, id.key_type.as_str(), id.apqns.as_slice()),
        (MkType::Apka, "CCA-ECC-P256", &cca[..1])
    );
    assert_eq!(
        (wk.mktype, wk.key_type.as_str()),
        (MkType::Aes, "CCA-AESDATA")
    );
    assert_eq!(id.mkvp, current(MkType::Apka).0);
    assert_eq!(wk.mkvp, current(MkType::Aes).0);
    assert_eq!((id.staged_mkvp, wk.staged_mkvp), (None, None));

    // Only the AES master key changes: the wrapping key is staged, the identity key skipped.
    env.sim().tke_load_random(&cca, MkType::Aes).unwrap();
    let r = p
        .reencipher(ReencipherMode::Staged, MkDirection::ToNew, BTreeMap::new())
        .unwrap();
    let action = |k: &str| {
        let e = r.keys.iter().find(|e| e.key == k).unwrap();
        (e.action.clone(), e.detail.clone(), e.mktype)
    };
    let (a, d, t) = action("identity-key");
    assert_eq!((a.as_str(), t), ("skipped", Some(MkType::Apka)), "{d}");
    assert!(
        d.contains("no NEW APKA master key is loaded on 08.002f"),
        "{d}"
    );
    assert_eq!(action("wrapping-key").0, "staged", "{r:?}");
    assert!(!env.cfg().join("identity-key.reenc").exists());
    let st = p.key_status().unwrap();
    assert_eq!(by(&st, "wrapping-key").staged_mkvp, current(MkType::Aes).1);
    assert_eq!(
        by(&st, "wrapping-key").mkvp,
        wk.mkvp,
        "the live key is untouched"
    );
    assert_eq!(by(&st, "identity-key").staged_mkvp, None);
    p.close().unwrap();
}
