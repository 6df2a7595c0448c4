//! A repository bound to a real KMIP server (PyKMIP on loopback) through the KMIP plug-in:
//! seed 004's KMS steps, refresh as the way back after a lost rotation, and a repository
//! rebuilt from the KMS.

use std::fs;

use tests::{KmipServer, World};

const CCA: &str = "08.002f,09.002f";

fn bound_world(srv: &KmipServer) -> World {
    let mut w = World::new();
    w.bind_kmip(srv, CCA);
    w.ok("zkey", &["kms", "plugins"]);
    w
}

#[test]
fn kms_bound_keys_through_rotations_refresh_and_disaster_recovery() {
    let srv = KmipServer::start();
    let w = bound_world(&srv);
    w.ok(
        "zkey",
        &[
            "generate",
            "-N",
            "disk1",
            "--xts",
            "--volume-type",
            "plain",
            "--volumes",
            "/dev/disk1:enc-disk1",
            "--no-volume-check",
            "-d",
            "data",
        ],
    );
    w.ok("zkey", &["generate", "-N", "disk2"]);
    w.ok("zkey", &["generate", "-N", "local1", "--local", "-a", CCA]);
    let v = w.json("zkey", &["list", "--json"]);
    let kms: Vec<_> = v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["name"].as_str().unwrap().to_string(),
                k["kms"].as_str().map(str::to_string),
            )
        })
        .collect();
    assert_eq!(
        kms,
        [
            ("disk1".into(), Some("KMIP".into())),
            ("disk2".into(), Some("KMIP".into())),
            ("local1".into(), None)
        ]
    );
    let listed = w.json("zkey", &["kms", "list", "--json"]);
    assert_eq!(listed["keys"].as_array().unwrap().len(), 2, "{listed}");
    let before = w.vps();

    // Seed 004 with the KMS plug-in: AES and APKA master keys change together.
    w.load_new(CCA, "aes");
    w.load_new(CCA, "apka");
    w.ok("zkey", &["kms", "reencipher", "--to-new", "--staged"]);
    w.ok(
        "zkey",
        &[
            "reencipher",
            "--apqns",
            "08.002f,09.002f",
            "--to-new",
            "--staged",
        ],
    );
    w.set(CCA, "aes");
    w.set(CCA, "apka");
    w.ok("zkey", &["kms", "reencipher", "--complete"]);
    w.ok(
        "zkey",
        &["reencipher", "--apqns", "08.002f,09.002f", "--complete"],
    );
    assert_eq!(w.vps(), before);
    // The TLS identity works after the APKA change: a refresh talks to the server.
    let out = w.ok("zkey", &["kms", "refresh"]);
    assert!(out.contains("2 refreshed, 0 skipped, 0 failed"), "{out}");

    // The same change as one operation: the plug-in's identity (APKA) and wrapping (AES)
    // keys are staged and completed with the repository keys.
    w.load_new(CCA, "aes");
    w.load_new(CCA, "apka");
    let plan = w.ok("zkey", &["mkchange", "plan", "-a", CCA, "-t", "aes,apka"]);
    assert!(
        plan.contains("KMIP identity key (apka)") && plan.contains("KMIP wrapping key (aes)"),
        "{plan}"
    );
    let out = w.ok("zkey", &["mkchange", "start", "-a", CCA, "-t", "aes,apka"]);
    assert!(out.contains("SAFE TO SET"), "{out}");
    w.set(CCA, "aes");
    w.set(CCA, "apka");
    let st = w.json("zkey", &["mkchange", "status", "--json"]);
    let id = st["operations"][0]["operation"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let out = w.ok("zkey", &["mkchange", "finalize", "-i", &id]);
    assert!(out.contains("DONE"), "{out}");
    assert_eq!(w.vps(), before);
    let out = w.ok("zkey", &["kms", "refresh"]);
    assert!(
        out.contains("2 refreshed"),
        "the plug-in still talks to the KMS: {out}"
    );

    // Two AES rotations without any re-encipher: the local copies are lost ...
    for _ in 0..2 {
        w.load_new(CCA, "aes");
        w.set(CCA, "aes");
    }
    let states = w.key_states();
    assert!(states.iter().all(|s| !s.1), "{states:?}");
    // ... and come back from the KMS, checked against their VP.
    let out = w.ok("zkey", &["kms", "refresh"]);
    assert!(out.contains("2 refreshed"), "{out}");
    let states = w.key_states();
    assert!(
        states
            .iter()
            .filter(|s| s.0 != "local1")
            .all(|s| s.1 && s.2.as_deref() == Some("current")),
        "{states:?}"
    );
    assert_eq!(
        w.vps()
            .into_iter()
            .filter(|v| v.0 != "local1")
            .collect::<Vec<_>>(),
        before
            .iter()
            .filter(|v| v.0 != "local1")
            .cloned()
            .collect::<Vec<_>>()
    );

    // Disaster recovery: the repository's key files are gone; the KMS rebuilds them.
    for f in w.repo_files() {
        if f.ends_with(".skey") || f.ends_with(".info") {
            fs::remove_file(w.repo.join(f)).unwrap();
        }
    }
    let out = w.ok("zkey", &["kms", "import", "--no-volume-check"]);
    assert!(out.contains("2 imported"), "{out}");
    let v = w.json("zkey", &["list", "--json"]);
    let disk1 = v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "disk1")
        .unwrap()
        .clone();
    assert_eq!(disk1["volumes"][0], "/dev/disk1:enc-disk1");
    assert_eq!(disk1["description"], "data");
    assert_eq!(
        w.vps(),
        before
            .iter()
            .filter(|v| v.0 != "local1")
            .cloned()
            .collect::<Vec<_>>()
    );

    // Remove deactivates the key in the KMS first.
    w.ok("zkey", &["remove", "-N", "disk2", "--force"]);
    let listed = w.json("zkey", &["kms", "list", "--json"]);
    let d2 = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["properties"]["zkey-name"] == "disk2")
        .unwrap()
        .clone();
    assert_ne!(
        d2["state"].as_str().unwrap().to_lowercase(),
        "active",
        "{d2}"
    );
    let audit = w.json("zkey", &["audit", "show", "--event", "kms-*", "--json"]);
    let ev: Vec<&str> = audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["event"].as_str().unwrap())
        .collect();
    assert!(
        ev.contains(&"kms-bind") && ev.contains(&"kms-refresh") && ev.contains(&"kms-import"),
        "{ev:?}"
    );
}
