//! A repository bound to a real KMIP server (PyKMIP on loopback) through the KMIP plug-in:
//! seed 004's KMS steps, refresh as the way back after a lost rotation, and a repository
//! rebuilt from the KMS.

use std::fs;

use tests::{failpoint_bin_dir, KmipServer, World};

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

fn plugin_files(w: &World) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(w.repo.join("KMIP"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".reenc"))
        .collect();
    v.sort();
    v
}

/// Seed 004 step 2 when only one master key type changes: the plug-in key under the other type
/// is not affected and skipped, the affected one staged and completed; an EP11 change affects
/// neither; split or incomplete NEW registers are refused before anything is staged.
#[test]
fn kms_reencipher_skips_plugin_keys_a_change_does_not_affect() {
    let srv = KmipServer::start();
    let w = bound_world(&srv);
    w.ok("zkey", &["generate", "-N", "k"]);
    let staged = ["kms", "reencipher", "--to-new", "--staged"];

    // AES only.
    w.load_new(CCA, "aes");
    let out = w.ok("zkey", &staged);
    assert!(
        out.contains("identity-key (APKA): skipped: no NEW APKA master key is loaded on 08.002f,09.002f: not affected by this change"),
        "{out}"
    );
    assert!(out.contains("wrapping-key (AES): staged"), "{out}");
    assert_eq!(plugin_files(&w), ["wrapping-key.reenc"]);
    w.set(CCA, "aes");
    let out = w.ok("zkey", &["kms", "reencipher", "--complete"]);
    assert!(out.contains("wrapping-key (AES): completed"), "{out}");
    assert!(out.contains("identity-key (APKA): skipped"), "{out}");
    assert!(plugin_files(&w).is_empty());
    let out = w.ok("zkey", &["kms", "reencipher", "--complete"]);
    assert!(out.contains("Nothing to do"), "{out}");
    // The completed wrapping key is the one registered in the KMS: no replacement needed.
    let out = w.ok("zkey", &["kms", "refresh"]);
    assert!(out.contains("1 refreshed"), "{out}");
    assert!(!out.contains("registering a new one"), "{out}");

    // APKA only: the identity key, and the TLS identity still works after the SET.
    w.load_new(CCA, "apka");
    let out = w.ok("zkey", &staged);
    assert!(
        out.contains("wrapping-key (AES): skipped: no NEW AES master key is loaded on 08.002f,09.002f: not affected by this change"),
        "{out}"
    );
    assert_eq!(plugin_files(&w), ["identity-key.reenc"]);
    w.set(CCA, "apka");
    w.ok("zkey", &["kms", "reencipher", "--complete"]);
    assert!(plugin_files(&w).is_empty());
    let out = w.ok("zkey", &["kms", "refresh"]);
    assert!(out.contains("1 refreshed"), "{out}");

    // EP11 only: the plug-in's keys are CCA keys.
    w.load_new("0a.002f,0b.002f", "ep11");
    let out = w.ok("zkey", &staged);
    assert!(
        out.contains("identity-key (APKA): skipped: no NEW APKA master key")
            && out.contains("wrapping-key (AES): skipped: no NEW AES master key")
            && out.contains("Nothing to do"),
        "{out}"
    );
    assert!(plugin_files(&w).is_empty());

    // Split NEW registers: refused like 'zkey reencipher', nothing staged, not even the
    // key whose type is fine.
    w.load_new(CCA, "aes");
    w.load_new("08.002f", "apka");
    let out = w.fails("zkey", &staged);
    assert!(out.contains("NEW MASTER KEYS INCORRECT"), "{out}");
    assert!(plugin_files(&w).is_empty(), "{:?}", plugin_files(&w));
    // An incomplete NEW key (only the first part) is affected, and not ready either.
    w.ok(
        "ap-sim",
        &["tke", "clear-new", "-a", "08.002f", "-t", "apka"],
    );
    w.load_parts(CCA, "apka", &[0x11]);
    let o = w.run("zkey", &staged);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(plugin_files(&w).is_empty());
    // Both types ready: both staged.
    w.ok("ap-sim", &["tke", "clear-new", "-a", CCA, "-t", "apka"]);
    w.load_new(CCA, "apka");
    let out = w.ok("zkey", &["kms", "re", "--to-new", "--staged"]);
    assert!(out.contains("2 staged"), "{out}");
    assert_eq!(
        plugin_files(&w),
        ["identity-key.reenc", "wrapping-key.reenc"]
    );
    w.set(CCA, "aes");
    w.set(CCA, "apka");
    w.ok("zkey", &["kms", "reencipher", "--complete"]);
    let out = w.ok("zkey", &["kms", "refresh"]);
    assert!(out.contains("1 refreshed"), "{out}");
}

/// `zkey kms refresh` during a rotation keeps the repository key's staged copy, so the
/// rotation completes; what the plug-in reports (a replaced wrapping key) is shown.
#[test]
fn kms_refresh_keeps_a_staged_key_and_shows_the_plugins_notices() {
    let srv = KmipServer::start();
    let w = bound_world(&srv);
    w.ok("zkey", &["generate", "-N", "k"]);
    let before = w.vps();
    w.load_new(CCA, "aes");
    w.ok("zkey", &["kms", "reencipher", "--to-new", "--staged"]);
    w.ok("zkey", &["reencipher", "-N", "k", "--to-new", "--staged"]);
    assert!(w.repo.join("k.renc").exists());
    let out = w.ok("zkey", &["kms", "refresh"]);
    assert!(out.contains("1 refreshed"), "{out}");
    assert!(out.contains("k.renc is kept"), "{out}");
    assert!(w.repo.join("k.renc").exists(), "the staged key was dropped");
    w.set(CCA, "aes");
    w.ok("zkey", &["kms", "reencipher", "--complete"]);
    let v = w.json("zkey", &["reencipher", "-N", "k", "--complete", "--json"]);
    assert_eq!(v["keys"][0]["result"], "completed", "{v}");
    w.all_current();
    assert_eq!(w.vps(), before);

    // Two AES changes without re-enciphering the plug-in's wrapping key: refresh replaces it
    // in the KMS, and says so.
    for _ in 0..2 {
        w.load_new(CCA, "aes");
        w.set(CCA, "aes");
    }
    let out = w.ok("zkey", &["kms", "refresh"]);
    assert!(out.contains("1 refreshed"), "{out}");
    assert!(
        out.contains("KMS plug-in: the wrapping key is unusable")
            && out.contains("registering a new one"),
        "{out}"
    );
    assert_eq!(w.vps(), before);
    // JSON output stays JSON: the notices go to stderr.
    w.json("zkey", &["kms", "list", "--json"]);
}

/// The help of every 'zkey kms' option, and the reference's abbreviations.
#[test]
fn kms_commands_are_documented_and_abbreviate() {
    let w = World::new();
    for cmd in [
        "plugins",
        "bind",
        "unbind",
        "info",
        "configure",
        "reencipher",
        "list",
        "import",
        "refresh",
    ] {
        let help = w.ok("zkey", &["kms", cmd, "--help"]);
        for line in help.lines() {
            let t = line.trim_start();
            // An option or positional line is "-x, --name <V>  help" or "<NAME>  help".
            if t.starts_with('-') || t.starts_with('<') {
                let words: Vec<&str> = t.split("  ").filter(|s| !s.trim().is_empty()).collect();
                assert!(
                    words.len() >= 2,
                    "zkey kms {cmd}: no help for '{t}':\n{help}"
                );
            }
        }
    }
    for (abbrev, full) in [
        ("re", "Re-encipher the plug-in's own keys"),
        ("li", "The keys in the KMS"),
        ("im", "Rebuild repository keys from the KMS"),
        ("ref", "Re-import bound keys"),
    ] {
        let help = w.ok("zkey", &["kms", abbrev, "--help"]);
        assert!(help.contains(full), "zkey kms {abbrev}: {help}");
    }
}

/// The zkey names of the keys the KMS holds active.
fn active_in_kms(w: &World) -> Vec<String> {
    let v = w.json("zkey", &["kms", "list", "--json"]);
    let mut names: Vec<String> = v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| {
            k["state"]
                .as_str()
                .unwrap_or_default()
                .eq_ignore_ascii_case("active")
        })
        .map(|k| {
            k["properties"]["zkey-name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    names.sort();
    names
}

/// Runs zkey with the plug-in's test faults armed (FAILPOINTS, failpoint build only).
fn with_faults(w: &World, faults: &str, args: &[&str]) -> std::process::Output {
    w.cmd("zkey")
        .env("FAILPOINTS", faults)
        .args(args)
        .output()
        .expect("spawn")
}

/// A KMS-bound generate that fails half-way leaves nothing active in the KMS; a name the KMS
/// has already is refused; and an entry broken anyway (the rollback failed too) fails alone in
/// 'zkey kms import', the good keys are imported.
#[test]
fn kms_generate_rolls_back_and_import_skips_a_broken_entry() {
    let srv = KmipServer::start();
    let mut w = World::with_bins(failpoint_bin_dir());
    w.bind_kmip(&srv, CCA);
    let gen_x = ["generate", "-N", "x", "--xts"];

    // The second XTS half fails: the first one is removed again.
    let o = with_faults(&w, "kms-generate=1*off->return", &gen_x);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("removed again"), "{err}");
    assert!(!w.repo.join("x.skey").exists());
    assert!(active_in_kms(&w).is_empty(), "{:?}", active_in_kms(&w));
    // Linking the halves fails: both are removed.
    let o = with_faults(&w, "kms-set-properties=return", &gen_x);
    assert_eq!(o.status.code(), Some(1));
    assert!(active_in_kms(&w).is_empty(), "{:?}", active_in_kms(&w));
    // Without a fault the same name works.
    w.ok("zkey", &gen_x);
    w.ok("zkey", &["generate", "-N", "y"]);
    assert_eq!(active_in_kms(&w), ["x", "y"]);

    // A name the repository has is refused before the KMS makes anything.
    let err = w.fails("zkey", &["generate", "-N", "y"]);
    assert!(err.contains("key 'y' already exists"), "{err}");
    assert_eq!(active_in_kms(&w), ["x", "y"]);
    // A name the KMS holds already (the repository lost it) is refused before anything is made.
    for f in ["x.skey", "x.info"] {
        fs::remove_file(w.repo.join(f)).unwrap();
    }
    let err = w.fails("zkey", &gen_x);
    assert!(
        err.contains("already holds an active key named 'x'"),
        "{err}"
    );
    assert_eq!(active_in_kms(&w), ["x", "y"]);

    // A fault in the rollback too: a half-made key stays, and the error names it.
    let o = with_faults(
        &w,
        "kms-generate=1*off->return;kms-remove=return",
        &["generate", "-N", "broken", "--xts"],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("could be removed again: revoke KMS ID"),
        "{err}"
    );
    assert_eq!(active_in_kms(&w), ["broken", "x", "y"]);

    // Import: x comes back, y is there already, the broken entry fails alone and is named.
    let o = w.run("zkey", &["kms", "import", "--no-volume-check"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("Key 'x': imported"), "{out}");
    assert!(
        out.contains("Key 'broken': FAILED") && out.contains("no link to the second"),
        "{out}"
    );
    assert!(out.contains("1 imported, 1 skipped, 1 failed"), "{out}");
    w.all_current();
    assert!(w.repo.join("x.skey").exists());
}
