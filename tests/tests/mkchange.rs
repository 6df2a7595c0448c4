//! Master key changes run as one operation: plan, start (stage everything), the SET, finalize;
//! cancelled; interrupted at every step and resumed; keys made while it is open.

use std::fs;

use tests::{failpoint_bin_dir, World};

const CCA: &str = "08.002f,09.002f";
const EP11: &str = "0a.002f,0b.002f";

fn new_mkvp(w: &World, apqn: &str, mktype: &str) -> String {
    let v = w.json("ap-sim", &["tke", "status", "--json", "-a", apqn]);
    let regs = v["apqns"][0]["registers"].as_array().unwrap();
    let r = regs.iter().find(|r| r["mktype"] == mktype).unwrap();
    r["new"]["mkvp"].as_str().unwrap().to_string()
}

fn op_id(w: &World) -> String {
    let v = w.json("zkey", &["mkchange", "status", "--json"]);
    v["operations"].as_array().unwrap().last().unwrap()["operation"]["id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn with_volume(w: &World) -> std::path::PathBuf {
    let img = w.root.join("disk1.img");
    fs::File::create(&img).unwrap().set_len(64 << 20).unwrap();
    let vol = format!("{}:enc-disk1", img.display());
    w.ok(
        "zkey",
        &[
            "generate",
            "-N",
            "disk1",
            "-a",
            CCA,
            "--xts",
            "-l",
            &vol,
            "--gen-dummy-passphrase",
        ],
    );
    let o = w
        .cmd("zkey")
        .env("ZKEY_CRYPTSETUP_PBKDF", "pbkdf2")
        .env("ZKEY_CRYPTSETUP_PBKDF_FORCE_ITERATIONS", "1000")
        .args(["cryptsetup", "-N", "disk1", "--run", "--format"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    img
}

fn volume_vp(w: &World, img: &std::path::Path) -> serde_json::Value {
    let pass = w.repo.join("disk1.pass");
    w.json(
        "zkey-cryptsetup",
        &[
            "validate",
            img.to_str().unwrap(),
            "--json",
            "-d",
            pass.to_str().unwrap(),
        ],
    )
}

#[test]
fn seed_004_as_one_operation_with_a_volume_and_a_key_made_midway() {
    let w = World::new();
    let img = with_volume(&w);
    w.ok(
        "zkey",
        &["generate", "-N", "k2", "-a", CCA, "-K", "CCA-AESCIPHER"],
    );
    w.ok(
        "zkey",
        &["generate", "-N", "ep", "-a", EP11, "-K", "EP11-AES"],
    );
    let vol_before = volume_vp(&w, &img);
    w.load_new(CCA, "aes");
    let m = new_mkvp(&w, "08.002f", "aes");
    let plan = w.json(
        "zkey",
        &[
            "mkchange",
            "plan",
            "-a",
            CCA,
            "-t",
            "aes",
            "--new-mkvp",
            &format!("aes={m}"),
            "--json",
        ],
    );
    assert_eq!(plan["ready"], true, "{plan}");
    let names: Vec<&str> = plan["plan"]["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["disk1", "k2"],
        "the EP11 key is not part of an AES change"
    );
    let out = w.ok(
        "zkey",
        &[
            "mkchange",
            "start",
            "-a",
            CCA,
            "-t",
            "aes",
            "--new-mkvp",
            &format!("aes={m}"),
        ],
    );
    assert!(
        out.contains("SAFE TO SET")
            && out.contains("SECURITY OFFICER")
            && out.contains("zkey mkchange finalize -i"),
        "{out}"
    );
    let id = op_id(&w);
    // A key made while the operation is open is staged too.
    let out = w.ok("zkey", &["generate", "-N", "late", "-a", CCA]);
    assert!(out.contains(&format!("{id} is open")), "{out}");
    assert!(w.repo.join("late.renc").exists());
    let before = w.vps();
    // Finalize before the SET changes nothing.
    let err = w.fails("zkey", &["mkchange", "finalize", "-i", &id]);
    assert!(err.contains("SET has not been done yet"), "{err}");
    w.set(CCA, "aes");
    let out = w.ok("zkey", &["mkchange", "finalize", "-i", &id]);
    assert!(out.contains("DONE"), "{out}");
    w.all_current();
    assert_eq!(w.vps(), before);
    let vol_after = volume_vp(&w, &img);
    assert_eq!(
        vol_after["volume_key"]["verification_pattern"],
        vol_before["volume_key"]["verification_pattern"]
    );
    assert_eq!(vol_after["volume_key"]["state"], "current", "{vol_after}");
    assert!(
        w.repo.join(format!("mkchange/{id}/disk1.skey")).exists(),
        "the previous key is kept as a backup"
    );
    let v = w.json(
        "zkey",
        &["audit", "show", "--event", "mkchange-*", "--json"],
    );
    let ev: Vec<&str> = v["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["event"].as_str().unwrap())
        .collect();
    assert_eq!(ev, ["mkchange-start", "mkchange-finalize"]);
    // The next change starts clean and, once finalized, drops the older backups.
    w.load_new(CCA, "aes");
    w.ok("zkey", &["mkchange", "start", "-a", CCA, "-t", "aes"]);
    w.set(CCA, "aes");
    let id2 = op_id(&w);
    w.ok("zkey", &["mkchange", "finalize", "-i", &id2]);
    assert!(!w.repo.join(format!("mkchange/{id}")).exists());
    w.all_current();
}

#[test]
fn ep11_change_through_an_operation() {
    let w = World::new();
    w.ok(
        "zkey",
        &[
            "generate", "-N", "ep", "-a", EP11, "-K", "EP11-AES", "--xts",
        ],
    );
    let before = w.vps();
    w.load_new(EP11, "ep11");
    w.ok("zkey", &["mkchange", "start", "-a", EP11, "-t", "ep11"]);
    w.set(EP11, "ep11");
    w.ok("zkey", &["mkchange", "finalize", "-i", &op_id(&w)]);
    w.all_current();
    assert_eq!(w.vps(), before);
}

#[test]
fn cancel_only_before_the_set() {
    let w = World::new();
    w.ok("zkey", &["generate", "-N", "k", "-a", CCA]);
    w.load_new(CCA, "aes");
    w.ok("zkey", &["mkchange", "start", "-a", CCA, "-t", "aes"]);
    let id = op_id(&w);
    // Conflicts: the same APQN and type.
    let err = w.fails("zkey", &["mkchange", "start", "-a", "08.002f", "-t", "aes"]);
    assert!(
        err.contains("conflicting") || err.contains("shares"),
        "{err}"
    );
    w.ok("zkey", &["mkchange", "cancel", "-i", &id, "-F"]);
    assert!(!w.repo.join("k.renc").exists());
    let v = w.json("zkey", &["mkchange", "status", "-i", &id, "--json"]);
    assert_eq!(v["operations"][0]["operation"]["state"], "CANCELED");
    // After a SET on one APQN, a cancel is refused.
    w.ok("zkey", &["mkchange", "start", "-a", CCA, "-t", "aes"]);
    let id2 = op_id(&w);
    w.ok(
        "ap-sim",
        &["tke", "set", "-a", "08.002f", "-t", "aes", "--yes"],
    );
    let err = w.fails("zkey", &["mkchange", "cancel", "-i", &id2, "-F"]);
    assert!(err.contains("already set on 08.002f"), "{err}");
    let err = w.fails("zkey", &["mkchange", "finalize", "-i", &id2]);
    assert!(err.contains("done on 08.002f but not on 09.002f"), "{err}");
}

#[test]
fn the_security_officers_mistakes_are_caught() {
    let w = World::new();
    w.ok("zkey", &["generate", "-N", "k", "-a", CCA]);
    w.load_new(CCA, "aes");
    let snap = w.repo_snapshot();
    // A different key loaded than announced.
    let err = w.fails(
        "zkey",
        &[
            "mkchange",
            "start",
            "-a",
            CCA,
            "-t",
            "aes",
            "--new-mkvp",
            "aes=0123456789abcdef",
        ],
    );
    assert!(
        err.contains("different key was loaded than announced")
            && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(snap, w.repo_snapshot());
    // The SET done before anything was staged.
    let m = new_mkvp(&w, "08.002f", "aes");
    w.set(CCA, "aes");
    let err = w.fails(
        "zkey",
        &[
            "mkchange",
            "start",
            "-a",
            CCA,
            "-t",
            "aes",
            "--new-mkvp",
            &format!("aes={m}"),
        ],
    );
    assert!(err.contains("SET was done before"), "{err}");
    assert_eq!(snap, w.repo_snapshot());
    // NEW on some APQNs only.
    w.load_new("08.002f", "aes");
    let err = w.fails("zkey", &["mkchange", "start", "-a", CCA, "-t", "aes"]);
    assert!(err.contains("NEW MASTER KEYS INCORRECT"), "{err}");
}

#[test]
fn start_and_finalize_survive_a_crash_at_every_step() {
    for phase in ["start", "finalize", "cancel"] {
        let mut crashes = 0;
        for n in 0.. {
            let mut w = World::new();
            w.use_bins(failpoint_bin_dir());
            w.ok("zkey", &["generate", "-N", "a", "-a", CCA, "--xts"]);
            w.ok("zkey", &["generate", "-N", "b", "-a", CCA]);
            let before = w.vps();
            w.load_new(CCA, "aes");
            let start = ["mkchange", "start", "-a", CCA, "-t", "aes"];
            let hit = if phase == "start" {
                let tree = w.repo_tree();
                let hit = w.crash_at("zkey", n, &start);
                w.assert_audit_after_crash(&tree, n);
                hit
            } else if phase == "cancel" {
                w.ok("zkey", &start);
                let id = op_id(&w);
                let tree = w.repo_tree();
                let hit = w.crash_at("zkey", n, &["mkchange", "cancel", "-i", &id, "-F"]);
                w.assert_audit_after_crash(&tree, n);
                assert!(w.key_states().iter().all(|s| s.1), "cancel step {n}");
                w.ok("zkey", &["mkchange", "cancel", "-i", &id, "-F"]);
                assert!(
                    !w.repo_files().iter().any(|f| f.ends_with(".renc")),
                    "cancel step {n}: a staged key was left"
                );
                // After a cancel, the change can start again and run to the end.
                hit
            } else {
                w.ok("zkey", &start);
                w.set(CCA, "aes");
                let tree = w.repo_tree();
                let hit = w.crash_at("zkey", n, &["mkchange", "finalize", "-i", &op_id(&w)]);
                w.assert_audit_after_crash(&tree, n);
                hit
            };
            // After any crash every key still works ...
            assert!(
                w.key_states().iter().all(|s| s.1),
                "{phase} step {n}: {:?}",
                w.key_states()
            );
            // ... and running the step again converges.
            if phase != "finalize" {
                w.ok("zkey", &start);
                w.set(CCA, "aes");
            }
            w.ok("zkey", &["mkchange", "finalize", "-i", &op_id(&w)]);
            w.all_current();
            assert_eq!(w.vps(), before, "{phase} step {n}");
            if !hit {
                break;
            }
            crashes += 1;
        }
        assert!(crashes >= 4, "{phase}: only {crashes} crash points");
    }
}
