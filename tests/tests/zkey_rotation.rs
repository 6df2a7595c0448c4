//! Seed 004's repository steps, run literally against the simulated AP bus.

use tests::World;

const CCA: &str = "08.002f,09.002f";
const EP11: &str = "0a.002f,0b.002f";

fn make_keys(w: &World) {
    // An image not formatted yet: its header holds no key, so it is safe whatever the SET.
    let img = w.root.join("disk1.img");
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    w.ok(
        "zkey",
        &[
            "generate",
            "--name",
            "disk1",
            "--apqns",
            CCA,
            "--xts",
            "--volume-type",
            "luks2",
            "--volumes",
            &format!("{}:enc-disk1", img.display()),
        ],
    );
    w.ok(
        "zkey",
        &[
            "generate",
            "--name",
            "disk2",
            "--apqns",
            CCA,
            "--key-type",
            "CCA-AESCIPHER",
            "--keybits",
            "128",
        ],
    );
    w.ok(
        "zkey",
        &[
            "generate",
            "--name",
            "plain1",
            "--apqns",
            "08.002f",
            "--xts",
            "--volume-type",
            "plain",
        ],
    );
}

#[test]
fn seed_004_procedure_survives_two_aes_rotations() {
    let w = World::new();
    make_keys(&w);
    let before = w.vps();
    assert_eq!(before.len(), 3);
    for round in 0..2 {
        // 1. The security officer loads the new master key into NEW: random, then in key parts.
        if round == 0 {
            w.load_new(CCA, "aes");
        } else {
            w.load_parts(CCA, "aes", &[0x5a, 0xa7, 0x13]);
        }
        assert!(
            !w.run("zkey", &["validate", "--all"]).status.success(),
            "keys are at risk while NEW is loaded and nothing is staged"
        );
        // 3. Staged re-encipher, verbatim.
        let out = w.ok(
            "zkey",
            &[
                "reencipher",
                "--apqns",
                "08.002f,09.002f",
                "--to-new",
                "--staged",
            ],
        );
        assert!(
            out.contains("3 re-enciphered, 0 skipped, 0 failed"),
            "round {round}: {out}"
        );
        assert!(
            w.repo_files()
                .iter()
                .filter(|f| f.ends_with(".renc"))
                .count()
                == 3
        );
        w.ok("zkey", &["validate", "--all"]); // safe to SET now
                                              // Completing before the SET fails and keeps both keys.
        let err = w.fails(
            "zkey",
            &["reencipher", "--apqns", "08.002f,09.002f", "--complete"],
        );
        assert!(err.contains("not set yet"), "{err}");
        assert_eq!(
            w.repo_files()
                .iter()
                .filter(|f| f.ends_with(".renc"))
                .count(),
            3
        );
        // 4. The SET on the TKE.
        w.set(CCA, "aes");
        // 6. Complete, verbatim.
        let out = w.ok(
            "zkey",
            &["reencipher", "--apqns", "08.002f,09.002f", "--complete"],
        );
        assert!(
            out.contains("3 re-enciphered, 0 skipped, 0 failed"),
            "{out}"
        );
        assert!(!w.repo_files().iter().any(|f| f.ends_with(".renc")));
        w.all_current();
        assert_eq!(w.vps(), before, "the effective keys are unchanged");
        // A re-run has nothing to do.
        let out = w.ok(
            "zkey",
            &["reencipher", "--apqns", "08.002f,09.002f", "--complete"],
        );
        assert!(
            out.contains("0 re-enciphered, 3 skipped, 0 failed"),
            "{out}"
        );
    }
}

#[test]
fn a_key_left_behind_is_flagged_survives_one_set_and_is_lost_at_the_second() {
    let w = World::new();
    make_keys(&w);
    w.load_new(CCA, "aes");
    let list = w.ok("zkey", &["list"]);
    assert!(list.contains("AT RISK"), "{list}");
    w.set(CCA, "aes");
    // Under OLD: valid, loudly at risk, and re-enciphered in place without a direction given.
    let v = w.json("zkey", &["validate", "--json", "-N", "disk1"]);
    assert_eq!(v["keys"][0]["register"], "old");
    assert_eq!(v["keys"][0]["risk"]["risk"], "enciphered-with-old");
    let out = w.ok("zkey", &["reencipher", "-N", "disk*"]);
    assert!(out.contains("2 re-enciphered"), "{out}");
    w.load_new(CCA, "aes");
    w.set(CCA, "aes");
    let states = w.key_states();
    let disk1 = states.iter().find(|s| s.0 == "disk1").unwrap();
    assert!(disk1.1, "disk1 was re-enciphered in time");
    let plain1 = states.iter().find(|s| s.0 == "plain1").unwrap();
    assert!(
        !plain1.1,
        "plain1 was never re-enciphered and died at the second SET"
    );
    assert!(!w.run("zkey", &["validate", "--all"]).status.success());
}

#[test]
fn ep11_keys_must_be_staged_before_the_set() {
    let w = World::new();
    w.ok(
        "zkey",
        &[
            "generate", "-N", "ep", "-K", "EP11-AES", "--apqns", EP11, "--xts",
        ],
    );
    w.ok(
        "zkey",
        &["generate", "-N", "late", "-K", "EP11-AES", "--apqns", EP11],
    );
    let before = w.vps();
    w.load_new(EP11, "ep11");
    w.ok(
        "zkey",
        &[
            "reencipher",
            "--apqns",
            EP11,
            "-N",
            "ep",
            "--to-new",
            "--staged",
        ],
    );
    let v = w.json("zkey", &["validate", "--json", "-N", "late"]);
    assert!(
        v["keys"][0]["advice"]
            .as_str()
            .unwrap()
            .contains("unusable"),
        "{v}"
    );
    w.set(EP11, "ep11");
    w.ok(
        "zkey",
        &["reencipher", "--apqns", EP11, "--complete", "-N", "ep"],
    );
    let states = w.key_states();
    assert!(states
        .iter()
        .any(|s| s.0 == "ep" && s.1 && s.3 == before.iter().find(|b| b.0 == "ep").unwrap().1));
    assert!(
        states.iter().any(|s| s.0 == "late" && !s.1),
        "an EP11 key not staged dies at the first SET"
    );
    let err = w.fails("zkey", &["reencipher", "-N", "late", "--from-old"]);
    assert!(err.contains("1 failed"), "{err}");
}

#[test]
fn staging_is_refused_while_one_apqn_lacks_the_new_key() {
    let w = World::new();
    make_keys(&w);
    w.load_new("08.002f", "aes");
    let snap = w.repo_snapshot();
    let err = w.fails(
        "zkey",
        &["reencipher", "--apqns", CCA, "--to-new", "--staged"],
    );
    assert!(
        err.contains("loaded on 08.002f but not on 09.002f"),
        "{err}"
    );
    assert!(err.contains("NEW MASTER KEYS INCORRECT"), "{err}");
    assert_eq!(snap, w.repo_snapshot(), "nothing changed");
    // Different NEW keys on the two APQNs are refused too.
    w.load_new("09.002f", "aes");
    let err = w.fails(
        "zkey",
        &["reencipher", "--apqns", CCA, "--to-new", "--staged"],
    );
    assert!(err.contains("NEW master keys differ"), "{err}");
    assert_eq!(snap, w.repo_snapshot());
}

#[test]
fn master_key_moved_twice_while_staged_is_completed_from_old() {
    let w = World::new();
    make_keys(&w);
    let before = w.vps();
    w.load_new(CCA, "aes");
    w.ok(
        "zkey",
        &["reencipher", "--apqns", CCA, "--to-new", "--staged"],
    );
    w.set(CCA, "aes");
    // A second SET before complete: the staged keys are under OLD now, the live keys lost.
    w.load_new(CCA, "aes");
    w.set(CCA, "aes");
    let out = w.ok("zkey", &["reencipher", "--apqns", CCA, "--complete"]);
    assert!(out.contains("3 re-enciphered"), "{out}");
    w.all_current();
    assert_eq!(w.vps(), before);
}
