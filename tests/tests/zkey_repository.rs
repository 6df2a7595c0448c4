//! The repository as administrators use it: bad input refused without a trace, damage reported
//! and never used, concurrent processes, and the commands around the keys.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use tests::World;

const CCA: &str = "08.002f,09.002f";

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let w = World::new();
    w.ok(
        "zkey",
        &[
            "generate",
            "-N",
            "k1",
            "-a",
            CCA,
            "--volumes",
            "/dev/vda:enc1",
            "--no-volume-check",
        ],
    );
    w.ok("ap-sim", &["chzcrypt", "-d", "09.002f"]);
    let snap = w.repo_snapshot();
    let cases: &[(&[&str], &str)] = &[
        (
            &["generate", "-N", "x", "-a", "07.002f"],
            "07.002f does not exist",
        ),
        (
            &["generate", "-N", "x", "-a", "08.002f,09.002f"],
            "09.002f is offline",
        ),
        (
            &["generate", "-N", "x", "-a", "0a.002f"],
            "needs a CCA coprocessor",
        ),
        (
            &["generate", "-N", "x", "-K", "EP11-AES", "-a", "08.002f"],
            "needs an EP11 coprocessor",
        ),
        (&["generate", "-N", "k1", "-a", "08.002f"], "already exists"),
        (&["generate", "-N", "a b", "-a", "08.002f"], "name"),
        (&["generate", "-N", "x", "-k", "512"], "not an AES key size"),
        (&["generate", "-N", "x", "-k", "192", "--xts"], "XTS"),
        (&["generate", "-N", "x", "-a", "8.zz"], "domain"),
        (
            &[
                "generate",
                "-N",
                "x",
                "--volumes",
                "/dev/vda:enc2",
                "--no-volume-check",
            ],
            "already associated with key 'k1'",
        ),
        (
            &["generate", "-N", "x", "--volumes", "/nonexistent/disk:e"],
            "does not exist yet",
        ),
        (&["generate", "-N", "x", "--volumes", "/dev/vdb"], "dm"),
        (
            &[
                "generate",
                "-N",
                "x",
                "-t",
                "plain",
                "--gen-dummy-passphrase",
            ],
            "only for LUKS2",
        ),
        (&["change", "-N", "nosuch", "-d", "x"], "does not exist"),
        (
            &["change", "-N", "k1", "-a", "+0a.002f"],
            "needs a CCA coprocessor",
        ),
        (&["remove", "-N", "k1"], "--force"),
        (
            &["reencipher", "-N", "k1", "--to-new", "--in-place"],
            "--force",
        ),
        (
            &["export", "/tmp/zkey-nosuch/x", "-N", "nosuch"],
            "does not exist",
        ),
    ];
    for (args, expect) in cases {
        let err = w.fails("zkey", args);
        assert!(
            err.to_lowercase().contains(&expect.to_lowercase()),
            "zkey {args:?}: expected {expect:?} in:\n{err}"
        );
        assert_eq!(
            snap,
            w.repo_snapshot(),
            "zkey {args:?} changed the repository"
        );
    }
}

#[test]
fn improper_master_key_setup_is_shown_as_a_table_with_a_verdict() {
    let w = World::new();
    // Independent keys: 08.002f and 09.002f do not share a CURRENT master key.
    w.ok("ap-sim", &["init", "--force", "--independent-keys"]);
    let err = w.fails("zkey", &["generate", "-N", "x", "-a", CCA]);
    for needle in [
        "CARD.DOMAIN",
        "NEW MK",
        "CURRENT MK",
        "OLD MK",
        "CURRENT master keys differ",
        "Your master key setup is improper",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    assert!(w.repo_files().is_empty());
    w.ok(
        "zkey",
        &["generate", "-N", "x", "-a", CCA, "--no-apqn-check"],
    );
}

#[test]
fn damaged_keys_are_reported_and_never_used_or_deleted() {
    let w = World::new();
    w.ok("zkey", &["generate", "-N", "good", "-a", CCA]);
    w.ok("zkey", &["generate", "-N", "bad", "-a", CCA]);
    let info = w.repo.join("bad.info");
    let text = fs::read_to_string(&info)
        .unwrap()
        .replace("sector-size=0", "sector-size=4096");
    fs::write(&info, text).unwrap();
    fs::write(w.repo.join("orphan.renc"), b"x").unwrap();
    let list = w.ok("zkey", &["list"]);
    assert!(
        list.contains("DAMAGED: key 'bad'") && list.contains("integrity"),
        "{list}"
    );
    assert!(list.contains("orphan"), "{list}");
    let v = w.json("zkey", &["list", "--json"]);
    assert_eq!(v["keys"].as_array().unwrap().len(), 1);
    assert_eq!(v["damaged"].as_array().unwrap().len(), 2);
    assert!(!w.run("zkey", &["validate", "--all"]).status.success());
    w.load_new(CCA, "aes");
    let snap_bad = fs::read(&info).unwrap();
    let out = w.ok("zkey", &["reencipher", "--to-new", "--staged"]);
    assert!(out.contains("1 re-enciphered, 2 skipped"), "{out}");
    assert_eq!(fs::read(&info).unwrap(), snap_bad);
    assert!(
        !w.repo.join("bad.renc").exists(),
        "a damaged key is not re-enciphered"
    );
    // Recovery path: remove --force.
    w.ok("zkey", &["remove", "-N", "bad", "--force"]);
    assert!(!w.repo.join("bad.skey").exists() && !info.exists());
}

#[test]
fn concurrent_zkey_processes_lose_no_key() {
    let w = World::new();
    w.ok("zkey", &["generate", "-N", "seed", "-a", CCA]);
    let children: Vec<_> = (0..8)
        .map(|i| {
            w.cmd("zkey")
                .args(["generate", "-N", &format!("k{i}"), "-a", CCA, "--xts"])
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let listers: Vec<_> = (0..4)
        .map(|_| {
            w.cmd("zkey")
                .args(["list", "--json"])
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children.into_iter().chain(listers) {
        assert!(c.wait().unwrap().success());
    }
    let states = w.key_states();
    assert_eq!(states.len(), 9);
    assert!(states.iter().all(|s| s.1), "{states:?}");
}

#[test]
fn a_held_lock_gives_a_clear_busy_error() {
    let w = World::new();
    w.ok("zkey", &["generate", "-N", "k", "-a", CCA]);
    let _held =
        ap_sim::durable::Lock::acquire(&w.repo.join(".lock"), ap_sim::durable::LockKind::Exclusive)
            .unwrap();
    let o = w
        .cmd("zkey")
        .env("ZKEY_LOCK_WAIT", "1")
        .args(["generate", "-N", "k2"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("holds the repository lock"), "{err}");
    assert!(!w.repo.join("k2.skey").exists());
}

#[test]
fn key_files_import_export_rename_copy_and_modes() {
    let w = World::new();
    let f = w.root.join("k.skey");
    w.ok(
        "zkey",
        &[
            "generate",
            f.to_str().unwrap(),
            "-K",
            "CCA-AESCIPHER",
            "--xts",
        ],
    );
    assert_eq!(
        fs::metadata(&f).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(w
        .fails("zkey", &["generate", f.to_str().unwrap()])
        .contains("exists"));
    let v = w.json("zkey", &["validate", f.to_str().unwrap(), "--json"]);
    assert_eq!(v["keys"][0]["key_type"], "CCA-AESCIPHER");
    w.ok(
        "zkey",
        &[
            "import",
            f.to_str().unwrap(),
            "-N",
            "imp",
            "-a",
            CCA,
            "-d",
            "imported",
        ],
    );
    assert_eq!(
        fs::metadata(w.repo.join("imp.skey"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o660
    );
    let out = w.root.join("out.skey");
    w.ok("zkey", &["export", out.to_str().unwrap(), "-N", "imp"]);
    assert_eq!(fs::read(&out).unwrap(), fs::read(&f).unwrap());
    w.ok("zkey", &["rename", "-N", "imp", "-w", "renamed"]);
    w.ok(
        "zkey",
        &[
            "copy",
            "-N",
            "renamed",
            "-w",
            "copied",
            "-l",
            "/dev/x:enc-x",
        ],
    );
    let v = w.json("zkey", &["list", "--json"]);
    let names: Vec<_> = v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["copied", "renamed"]);
    assert_eq!(v["keys"][0]["volumes"][0], "/dev/x:enc-x");
    assert_eq!(v["keys"][1]["description"], "imported");
    // A key file is re-enciphered in place around a SET.
    w.load_new(CCA, "aes");
    w.set(CCA, "aes");
    w.ok("zkey", &["reencipher", f.to_str().unwrap()]);
    let v = w.json("zkey", &["validate", f.to_str().unwrap(), "--json"]);
    assert_eq!(v["keys"][0]["register"], "current");
}

#[test]
fn change_edits_associations_and_dummy_passphrases() {
    let w = World::new();
    w.ok(
        "zkey",
        &[
            "generate",
            "-N",
            "k",
            "-a",
            "08.002f",
            "--volumes",
            "/dev/a:ea",
            "--no-volume-check",
            "--gen-dummy-passphrase",
        ],
    );
    assert_eq!(fs::read(w.repo.join("k.pass")).unwrap().len(), 16);
    w.ok(
        "zkey",
        &[
            "change",
            "-N",
            "k",
            "-a",
            "+09.002f",
            "-l",
            "+/dev/b:eb",
            "--no-volume-check",
            "-d",
            "two disks",
        ],
    );
    let v = w.json("zkey", &["list", "--json"]);
    assert_eq!(
        v["keys"][0]["apqns"],
        serde_json::json!(["08.002f", "09.002f"])
    );
    assert_eq!(
        v["keys"][0]["volumes"],
        serde_json::json!(["/dev/a:ea", "/dev/b:eb"])
    );
    w.ok("zkey", &["change", "-N", "k", "-l", "-/dev/a:ea"]);
    w.ok("zkey", &["change", "-N", "k", "-t", "plain", "--force"]);
    assert!(
        !w.repo.join("k.pass").exists(),
        "leaving LUKS2 drops the dummy passphrase"
    );
    let v = w.json("zkey", &["list", "--json"]);
    assert_eq!(v["keys"][0]["volumes"], serde_json::json!(["/dev/b:eb"]));
    assert_eq!(v["keys"][0]["volume_type"], "plain");
}

#[test]
fn crypttab_and_cryptsetup_commands() {
    let w = World::new();
    w.ok(
        "zkey",
        &[
            "generate",
            "-N",
            "lk",
            "--xts",
            "--volumes",
            "UUID=1234-abcd:enc-l",
            "--gen-dummy-passphrase",
            "-S",
            "4096",
        ],
    );
    w.ok(
        "zkey",
        &[
            "generate",
            "-N",
            "pk",
            "--xts",
            "-t",
            "plain",
            "--volumes",
            "/dev/sdz:enc-p",
            "--no-volume-check",
        ],
    );
    let ct = w.ok("zkey", &["crypttab"]);
    let repo = w.repo.display().to_string();
    assert!(
        ct.contains(&format!("enc-l\tUUID=1234-abcd\t{repo}/lk.pass\tluks")),
        "{ct}"
    );
    assert!(
        ct.contains(&format!(
            "enc-p\t/dev/sdz\t{repo}/pk.skey\tplain,cipher=paes-xts-plain64,size=1024"
        )),
        "{ct}"
    );
    let cs = w.ok("zkey", &["cryptsetup", "-N", "lk"]);
    assert!(cs.contains(&format!("zkey-cryptsetup format /dev/disk/by-uuid/1234-abcd --volume-key-file {repo}/lk.skey --sector-size 4096")), "{cs}");
    assert!(
        cs.contains("zkey-cryptsetup open /dev/disk/by-uuid/1234-abcd enc-l"),
        "{cs}"
    );
    let cs = w.ok("zkey", &["cryptsetup", "-N", "pk", "--open"]);
    assert!(cs.contains(&format!("cryptsetup plainOpen --key-file {repo}/pk.skey --key-size 1024 --cipher paes-xts-plain64 /dev/sdz enc-p")), "{cs}");
}

#[test]
fn command_abbreviations_of_the_reference_work() {
    let w = World::new();
    w.ok("zkey", &["gen", "-N", "k", "-a", CCA]);
    w.ok("zkey", &["val", "-N", "k"]);
    w.ok("zkey", &["li"]);
    w.ok("zkey", &["re", "-N", "k"]);
    w.ok("zkey", &["rem", "-N", "k", "-F"]);
}

#[test]
fn temporary_files_a_crash_left_are_removed_by_the_next_change() {
    // A kill -9 between creating a temp file and renaming it leaves the temp behind; the
    // simulator's may hold every master key. The next command that changes the directory
    // removes them (under its exclusive lock); links planted there are left alone, not followed.
    let w = World::new();
    w.ok("zkey", &["generate", "-N", "k1", "-a", "08.002f,09.002f"]);
    let sim_temp = w.sim.join(".state.json.tmp.4242");
    let repo_temp = w.repo.join(".k1.skey.tmp.0123456789abcdef");
    std::fs::write(&sim_temp, b"{\"master keys\":...}").unwrap();
    std::fs::write(&repo_temp, b"a key").unwrap();
    let victim = w.root.join("victim");
    std::fs::write(&victim, b"keep").unwrap();
    let link = w.repo.join(".k1.info.tmp.4243");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    w.ok(
        "ap-sim",
        &[
            "tke",
            "load-new",
            "-a",
            "08.002f,09.002f",
            "-t",
            "aes",
            "--random",
        ],
    );
    assert!(
        !sim_temp.exists(),
        "the TKE's next change removes its leftover"
    );
    w.ok("zkey", &["reencipher", "-N", "k1", "--to-new", "--staged"]);
    assert!(
        !repo_temp.exists(),
        "zkey's next change removes its leftover"
    );
    assert!(
        std::fs::symlink_metadata(&link).is_ok(),
        "a link is not touched"
    );
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
}
