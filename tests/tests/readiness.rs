//! One truth for rotation safety: `validate --all`, `list`, `reencipher` and `mkchange` read
//! one readiness model, which sees repository keys, the LUKS2 volumes of those keys (through
//! their headers) and the plug-in's keys; filters that select nothing are errors.

use tests::World;

const CCA: &str = "08.002f,09.002f";
const PW: &str = "vol1pw\n";

/// A repository key with a LUKS2 volume formatted from it, whose passphrase zkey does not
/// hold (the operator types it).
fn world_with_volume() -> (World, String) {
    let mut w = World::new();
    w.set_env("ZKEY_CRYPTSETUP_PBKDF", "pbkdf2");
    w.set_env("ZKEY_CRYPTSETUP_PBKDF_FORCE_ITERATIONS", "1000");
    let img = w.root.join("vol1.img");
    std::fs::write(&img, vec![0u8; 32 << 20]).unwrap();
    let img = img.display().to_string();
    w.ok(
        "zkey",
        &[
            "generate",
            "-N",
            "vol1",
            "-a",
            CCA,
            "--xts",
            "-l",
            &format!("{img}:enc-vol1"),
        ],
    );
    w.ok("zkey", &["generate", "-N", "k2", "-a", CCA]);
    let o = w.typed(
        "zkey",
        &["cryptsetup", "-N", "vol1", "--format", "--run"],
        PW,
    );
    assert!(o.status.success(), "{o:?}");
    (w, img)
}

fn verdict(v: &serde_json::Value, kind: &str, name: &str) -> String {
    v["readiness"]["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["kind"] == kind && o["name"].as_str().unwrap().starts_with(name))
        .unwrap_or_else(|| panic!("no {kind} {name} in {v}"))["verdict"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn an_unstaged_volume_of_a_staged_key_is_not_safe_to_set_until_its_header_is_staged() {
    let (w, img) = world_with_volume();
    w.load_new(CCA, "aes");
    w.ok(
        "zkey",
        &["reencipher", "--apqns", CCA, "--to-new", "--staged"],
    );
    // Every repository key is staged, the volume's header copy is not: not safe.
    let (code, out) = w.code("zkey", &["validate", "--all"]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("NOT SAFE TO SET"), "{out}");
    assert!(
        out.contains(&format!("zkey-cryptsetup reencipher {img} --staged")),
        "{out}"
    );
    let v = w.json("zkey", &["validate", "--json"]);
    assert_eq!(verdict(&v, "volume", &img), "at-risk");
    assert_eq!(verdict(&v, "key", "vol1"), "staged");
    assert_eq!(v["readiness"]["safe_to_set"], false);
    let list = w.ok("zkey", &["list"]);
    assert!(list.contains("*** AT RISK: volume"), "{list}");
    // The operator stages the volume by hand: the header's token says so, no passphrase needed.
    let o = w.typed("zkey-cryptsetup", &["reencipher", &img, "--staged"], PW);
    assert!(o.status.success(), "{o:?}");
    let out = w.ok("zkey", &["validate", "--all"]);
    assert!(out.contains("SAFE TO SET"), "{out}");
    assert!(!out.contains("NOT SAFE"), "{out}");
    // mkchange agrees (it used to ask for the volume already staged).
    let (code, out) = w.code("zkey", &["mkchange", "start", "-a", CCA, "-t", "aes"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("SAFE TO SET"), "{out}");
    assert!(!out.contains("zkey-cryptsetup reencipher"), "{out}");
    // After the SET the volume waits for --complete: at risk, and says so.
    w.set(CCA, "aes");
    let v = w.json("zkey", &["validate", "--json"]);
    assert_eq!(verdict(&v, "volume", &img), "at-risk");
    let o = w.typed("zkey-cryptsetup", &["reencipher", &img, "--complete"], PW);
    assert!(o.status.success(), "{o:?}");
    w.ok("zkey", &["reencipher", "--apqns", CCA, "--complete"]);
    // Completed, no change pending: the header cannot tell CURRENT from OLD without the
    // passphrase, and says so without alarming.
    let v = w.json("zkey", &["validate", "--json"]);
    assert_eq!(verdict(&v, "volume", &img), "unknown");
    let (code, out) = w.code("zkey", &["validate", "--all"]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn with_the_dummy_passphrase_the_volume_key_itself_is_judged() {
    let (w, img) = world_with_volume();
    let pass = w.root.join("pw");
    std::fs::write(&pass, PW.trim_end()).unwrap();
    w.ok(
        "zkey",
        &[
            "change",
            "-N",
            "vol1",
            "--set-dummy-passphrase",
            pass.to_str().unwrap(),
        ],
    );
    let v = w.json("zkey", &["validate", "--json"]);
    assert_eq!(verdict(&v, "volume", &img), "safe");
    // A SET without staging: the repository key and the volume key are under OLD now.
    w.load_new(CCA, "aes");
    w.set(CCA, "aes");
    let v = w.json("zkey", &["validate", "--json"]);
    assert_eq!(verdict(&v, "volume", &img), "at-risk");
    assert_eq!(verdict(&v, "key", "vol1"), "at-risk");
    let (code, _) = w.code("zkey", &["validate", "--all"]);
    assert_eq!(code, 3);
}

#[test]
fn a_volume_device_that_is_not_there_is_unknown_and_blocks_the_set() {
    let w = World::new();
    w.ok(
        "zkey",
        &[
            "generate",
            "-N",
            "gone",
            "-a",
            CCA,
            "-l",
            "/dev/nosuchdisk:enc-gone",
            "--no-volume-check",
        ],
    );
    w.load_new(CCA, "aes");
    w.ok(
        "zkey",
        &["reencipher", "-N", "gone", "--to-new", "--staged"],
    );
    let (code, out) = w.code("zkey", &["validate", "--all"]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("/dev/nosuchdisk is not there"), "{out}");
}

#[test]
fn filters_that_match_nothing_are_errors_and_apqn_filters_are_normalised() {
    let w = World::new();
    w.ok("zkey", &["generate", "-N", "k1", "-a", CCA]);
    w.ok("zkey", &["generate", "-N", "k2", "-a", CCA]);
    w.load_new(CCA, "aes");
    let before = w.repo_snapshot();
    for args in [
        &[
            "reencipher",
            "--apqns",
            "08.002e,09.002e",
            "--to-new",
            "--staged",
        ][..],
        &["reencipher", "-N", "nosuchkey", "--to-new", "--staged"],
        &["validate", "-N", "nosuchkey"],
        &["validate", "-a", "08.002e"],
        &["list", "-N", "nosuchkey"],
        &["list", "-K", "EP11-AES"],
    ] {
        let (code, out) = w.code("zkey", args);
        assert_eq!(code, 2, "{args:?}: {out}");
        assert!(out.contains("no key matches"), "{args:?}: {out}");
    }
    let (_, out) = w.code(
        "zkey",
        &[
            "reencipher",
            "--apqns",
            "08.002e,09.002e",
            "--to-new",
            "--staged",
        ],
    );
    assert!(out.contains("--apqns '08.002e,09.002e'"), "{out}");
    assert_eq!(w.repo_snapshot(), before, "nothing changed");
    // 08.2f is 08.002f: the short spelling selects the same keys.
    let out = w.ok(
        "zkey",
        &[
            "reencipher",
            "--apqns",
            "08.2f,09.2f",
            "--to-new",
            "--staged",
        ],
    );
    assert!(
        out.contains("2 re-enciphered, 0 skipped, 0 failed"),
        "{out}"
    );
    let v = w.json("zkey", &["validate", "-a", "8.2f", "--json"]);
    assert_eq!(v["keys"].as_array().unwrap().len(), 2);
    // A wildcard still matches the normal form.
    let v = w.json("zkey", &["validate", "-a", "08.*", "--json"]);
    assert_eq!(v["keys"].as_array().unwrap().len(), 2);
}

#[test]
fn every_command_reports_the_same_verdicts() {
    let (w, img) = world_with_volume();
    w.load_new(CCA, "aes");
    w.ok("zkey", &["reencipher", "-N", "k2", "--to-new", "--staged"]);
    let v = w.json("zkey", &["validate", "--json"]);
    let l = w.json("zkey", &["list", "--json"]);
    let verdicts = |keys: &serde_json::Value| -> Vec<(String, String)> {
        keys.as_array()
            .unwrap()
            .iter()
            .map(|k| {
                (
                    k["name"].as_str().unwrap().to_string(),
                    k["verdict"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let from_validate: Vec<(String, String)> = v["readiness"]["objects"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["kind"] == "key")
        .map(|o| {
            (
                o["name"].as_str().unwrap().to_string(),
                o["verdict"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(verdicts(&l["keys"]), from_validate);
    assert_eq!(
        from_validate,
        [
            ("k2".to_string(), "staged".to_string()),
            ("vol1".to_string(), "at-risk".to_string())
        ]
    );
    let plan = w.json(
        "zkey",
        &["mkchange", "plan", "-a", CCA, "-t", "aes", "--json"],
    );
    let objs = plan["readiness"]["objects"].as_array().unwrap();
    assert!(objs.iter().any(
        |o| o["name"].as_str() == Some(&format!("{img}:enc-vol1")) && o["verdict"] == "at-risk"
    ));
}

#[test]
fn seed_004_step_3_for_a_change_of_another_master_key_type_is_nothing_to_do() {
    let w = World::new();
    w.ok("zkey", &["generate", "-N", "k1", "-a", CCA]);
    // An APKA change: the repository's AES keys are not affected.
    w.load_new(CCA, "apka");
    let before = w.repo_snapshot();
    let out = w.ok(
        "zkey",
        &["reencipher", "--apqns", CCA, "--to-new", "--staged"],
    );
    assert!(
        out.contains("no NEW AES master key is loaded on its APQNs: not affected by this change"),
        "{out}"
    );
    assert!(
        out.contains("0 re-enciphered, 1 skipped, 0 failed"),
        "{out}"
    );
    assert_eq!(w.repo_snapshot(), before);
    // A NEW AES key on one APQN of the group only is still refused.
    w.ok(
        "ap-sim",
        &["tke", "load-new", "-a", "08.002f", "-t", "aes", "--random"],
    );
    let err = w.fails(
        "zkey",
        &["reencipher", "--apqns", CCA, "--to-new", "--staged"],
    );
    assert!(err.contains("NEW MASTER KEYS INCORRECT"), "{err}");
    assert_eq!(w.repo_snapshot(), before);
}

#[test]
fn a_key_out_of_reach_is_unknown_not_lost_and_a_copy_staged_before_two_sets_is_recoverable() {
    let w = World::new();
    w.ok("zkey", &["generate", "-N", "k08", "-a", "08.002f"]);
    w.ok("zkey", &["generate", "-N", "k2", "-a", CCA]);
    // Card 08 offline: k08 cannot be checked, but its master key is not gone.
    w.ok("ap-sim", &["chzcrypt", "-d", "08"]);
    let v = w.json("zkey", &["validate", "--json"]);
    assert_eq!(verdict(&v, "key", "k08"), "unknown", "{v}");
    w.ok("ap-sim", &["chzcrypt", "-e", "08"]);
    // Staged, SET, not completed, SET again: the live key is dead, the staged copy under OLD
    // completes (it is brought from OLD to CURRENT): at risk with the command, not lost.
    w.load_new(CCA, "aes");
    w.ok("zkey", &["reencipher", "-N", "k2", "--to-new", "--staged"]);
    w.set(CCA, "aes");
    w.load_new(CCA, "aes");
    w.set(CCA, "aes");
    let v = w.json("zkey", &["validate", "--json", "-N", "k2"]);
    assert_eq!(verdict(&v, "key", "k2"), "at-risk", "{v}");
    let out = w.ok("zkey", &["reencipher", "-N", "k2", "--complete"]);
    assert!(out.contains("1 re-enciphered"), "{out}");
    let v = w.json("zkey", &["validate", "--json", "-N", "k2"]);
    assert_eq!(verdict(&v, "key", "k2"), "safe", "{v}");
}

#[test]
fn a_change_of_one_type_is_judged_by_the_objects_under_that_type() {
    // An AES volume the header cannot judge (no passphrase held) stays `unknown`: it neither
    // blocks nor alarms an EP11 change, and validate and mkchange agree.
    let (w, _img) = world_with_volume();
    w.ok(
        "zkey",
        &[
            "generate",
            "-N",
            "e1",
            "-a",
            "0a.002f,0b.002f",
            "-K",
            "EP11-AES",
        ],
    );
    w.load_new("0a.002f,0b.002f", "ep11");
    w.ok("zkey", &["reencipher", "-N", "e1", "--to-new", "--staged"]);
    let (code, out) = w.code("zkey", &["validate", "--all"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("SAFE TO SET"), "{out}");
    let (code, out) = w.code(
        "zkey",
        &["mkchange", "start", "-a", "0a.002f,0b.002f", "-t", "ep11"],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("SAFE TO SET"), "{out}");
}
