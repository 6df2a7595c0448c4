//! The `.info` MAC: who can write the repository but not the adapter cannot swap keys or edit
//! their properties unnoticed, however well they fix the old-style `__hash__`.

use std::fs;

use tests::info::forge;
use tests::World;

fn prop(props: &[(String, String)], name: &str) -> String {
    props.iter().find(|(n, _)| n == name).unwrap().1.clone()
}

fn set(mut props: Vec<(String, String)>, name: &str, value: &str) -> Vec<(String, String)> {
    props.iter_mut().find(|(n, _)| n == name).unwrap().1 = value.to_string();
    props
}

fn read_props(w: &World, key: &str) -> Vec<(String, String)> {
    let text = fs::read_to_string(w.repo.join(format!("{key}.info"))).unwrap();
    let mut v = Vec::new();
    forge(&text, |p| {
        v = p.clone();
        p
    });
    v
}

fn two_keys() -> World {
    let w = World::new();
    let img = w.root.join("img-a");
    fs::write(&img, vec![0u8; 16 << 20]).unwrap();
    let vol = format!("{}:enc_a", img.display());
    w.ok(
        "zkey",
        &["generate", "-N", "a", "-t", "plain", "--volumes", &vol],
    );
    w.ok("zkey", &["generate", "-N", "b", "-t", "plain"]);
    w
}

fn damaged(w: &World) -> Vec<String> {
    let j = w.json("zkey", &["list", "--json"]);
    j["damaged"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| format!("{}: {}", d["name"].as_str().unwrap(), d["damage"]))
        .collect()
}

/// Swap a's and b's `.skey`, swap the verification patterns in their `.info` files to match,
/// and fix both hashes: the old format cannot tell, the MAC does, and no command uses them.
#[test]
fn swapped_keys_with_fixed_hashes_are_detected_and_never_used() {
    let w = two_keys();
    let (pa, pb) = (read_props(&w, "a"), read_props(&w, "b"));
    let (vpa, vpb) = (
        prop(&pa, "verification-pattern"),
        prop(&pb, "verification-pattern"),
    );
    let r = |f: &str| w.repo.join(f);
    let (ka, kb) = (
        fs::read(r("a.skey")).unwrap(),
        fs::read(r("b.skey")).unwrap(),
    );
    fs::write(r("a.skey"), &kb).unwrap();
    fs::write(r("b.skey"), &ka).unwrap();
    for (key, vp) in [("a", &vpb), ("b", &vpa)] {
        let text = fs::read_to_string(r(&format!("{key}.info"))).unwrap();
        fs::write(
            r(&format!("{key}.info")),
            forge(&text, |p| set(p, "verification-pattern", vp)),
        )
        .unwrap();
    }
    let snap = w.repo_snapshot();

    let d = damaged(&w);
    assert_eq!(d.len(), 2, "{d:?}");
    assert!(d.iter().all(|x| x.contains("fails its MAC")), "{d:?}");
    let out = w.ok("zkey", &["validate", "-N", "a"]);
    assert!(
        out.contains("Invalid")
            && out.contains("fails its MAC")
            && out.contains("remove -N a --force"),
        "{out}"
    );
    let exported = w.root.join("a.out");
    for args in [
        &["export", "-N", "a", exported.to_str().unwrap()][..],
        &["cryptsetup", "-N", "a", "--run"][..],
        &["crypttab"][..],
    ] {
        let out = w.fails("zkey", args);
        assert!(
            out.contains("fails its MAC") && out.contains("restore its files from a backup"),
            "{args:?}: {out}"
        );
    }
    let out = w.ok("zkey", &["reencipher", "-N", "a", "--from-old"]);
    assert!(
        out.contains("damaged") && out.contains("fails its MAC"),
        "{out}"
    );
    assert!(!exported.exists());
    assert_eq!(
        w.repo_snapshot(),
        snap,
        "a refused command changed the repository"
    );
}

/// The same for whole key files under each other's names, and for an `.skey` swapped alone.
#[test]
fn renamed_key_files_and_a_swapped_skey_are_refused() {
    let w = two_keys();
    let r = |f: &str| w.repo.join(f);
    let swap = |x: &str, y: &str| {
        let (bx, by) = (fs::read(r(x)).unwrap(), fs::read(r(y)).unwrap());
        fs::write(r(x), by).unwrap();
        fs::write(r(y), bx).unwrap();
    };
    // Only the .skey files: the properties are authentic, the key in them is not theirs.
    swap("a.skey", "b.skey");
    let exported = w.root.join("a.out");
    let out = w.fails("zkey", &["export", "-N", "a", exported.to_str().unwrap()]);
    assert!(
        out.contains("holds another key") && out.contains("remove -N a --force"),
        "{out}"
    );
    let out = w.fails(
        "zkey",
        &["reencipher", "-N", "a", "--from-old", "--in-place"],
    );
    assert!(out.contains("holds another key"), "{out}");
    let out = w.fails("zkey", &["cryptsetup", "-N", "a", "--run"]);
    assert!(out.contains("holds another key"), "{out}");
    assert!(!exported.exists());
    // And the .info files with them: a complete key under another name.
    swap("a.info", "b.info");
    let d = damaged(&w);
    assert_eq!(d.len(), 2, "{d:?}");
    assert!(d.iter().all(|x| x.contains("fails its MAC")), "{d:?}");
}

/// Edit a property (the volumes: another device for a's key) and fix the hash: detected; the
/// untouched key stays valid and verified, also across a master key change and re-encipher (the
/// MAC key is not a master key, and the keys' verification patterns do not change).
#[test]
fn an_edited_property_is_detected_and_an_untouched_key_is_verified() {
    let w = two_keys();
    let cca = "08.002f,09.002f";
    w.load_new(cca, "aes");
    w.ok("zkey", &["reencipher", "--to-new", "--staged"]);
    w.set(cca, "aes");
    w.ok("zkey", &["reencipher", "--complete"]);
    let v = w.json("zkey", &["validate", "--json"]);
    for k in v["keys"].as_array().unwrap() {
        assert_eq!(k["valid"], true, "{k}");
        assert_eq!(k["register"], "current", "{k}");
        assert_eq!(k["integrity"]["state"], "verified", "{k}");
    }
    let p = w.repo.join("a.info");
    let text = fs::read_to_string(&p).unwrap();
    fs::write(
        &p,
        forge(&text, |props| set(props, "volumes", "/dev/victim:enc_a")),
    )
    .unwrap();
    let d = damaged(&w);
    assert_eq!(d.len(), 1, "{d:?}");
    assert!(
        d[0].starts_with("a: ") && d[0].contains("fails its MAC"),
        "{d:?}"
    );
    let out = w.ok("zkey", &["validate", "-N", "b"]);
    assert!(
        out.contains("Valid") && out.contains("Properties:            verified"),
        "{out}"
    );
    // Stripping the MAC line (the old format) does not help either once the repository is
    // authenticated.
    fs::write(&p, &text).unwrap();
    assert!(damaged(&w).is_empty());
    fs::write(
        &p,
        forge(&text, |props| {
            props.into_iter().filter(|(n, _)| n != "__mac__").collect()
        }),
    )
    .unwrap();
    let d = damaged(&w);
    assert!(d.len() == 1 && d[0].contains("has no MAC"), "{d:?}");
}

/// A repository written by zkey before the MAC (the reference's format, no `__mac__` line):
/// read as "not verified", usable, upgraded by the next change, protected from then on.
#[test]
fn a_repository_of_the_old_format_stays_usable_and_is_upgraded_by_the_next_change() {
    let w = two_keys();
    // The same keys as the old code wrote them, in a repository the adapter has not seen.
    let old = w.root.join("old-repo");
    tests::info::old_format_repository(&w.repo, &old, str::to_string);
    for k in ["a", "b"] {
        let text = fs::read_to_string(old.join(format!("{k}.info"))).unwrap();
        assert!(!text.contains("__mac__"), "{text}");
    }
    let mut w = w;
    w.set_env("ZKEY_REPOSITORY", &old);
    let v = w.json("zkey", &["validate", "--json"]);
    for k in v["keys"].as_array().unwrap() {
        assert_eq!(k["valid"], true, "{k}");
        assert_eq!(k["integrity"]["state"], "old-format", "{k}");
    }
    let out = w.ok("zkey", &["list"]);
    assert!(out.contains("not verified: old format"), "{out}");
    let exported = w.root.join("b.out");
    w.ok("zkey", &["export", "-N", "b", exported.to_str().unwrap()]);
    // A command refused under the lock changes nothing, not even the format.
    let files = |dir: &std::path::Path| -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|f| f.unwrap())
            .filter(|f| !f.file_name().to_string_lossy().starts_with('.'))
            .map(|f| {
                (
                    f.file_name().into_string().unwrap(),
                    fs::read(f.path()).unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let before = files(&old);
    let err = w.fails("zkey", &["rename", "-N", "a", "-w", "b"]);
    assert!(err.contains("exists"), "{err}");
    assert_eq!(
        files(&old),
        before,
        "a refused rename changed the repository"
    );
    // The first change (of b) gives every key its MAC, a's too.
    w.ok("zkey", &["change", "-N", "b", "-d", "upgraded"]);
    for k in ["a", "b"] {
        let text = fs::read_to_string(old.join(format!("{k}.info"))).unwrap();
        assert!(text.contains("\n__mac__="), "{k}: {text}");
    }
    let v = w.json("zkey", &["validate", "--json"]);
    for k in v["keys"].as_array().unwrap() {
        assert_eq!(k["valid"], true, "{k}");
        assert_eq!(k["integrity"]["state"], "verified", "{k}");
    }
    // From now on an old-format file is a downgrade.
    let p = old.join("a.info");
    let text = fs::read_to_string(&p).unwrap();
    fs::write(
        &p,
        forge(&text, |p| {
            p.into_iter().filter(|(n, _)| n != "__mac__").collect()
        }),
    )
    .unwrap();
    let d = damaged(&w);
    assert!(d.len() == 1 && d[0].contains("has no MAC"), "{d:?}");
}

/// Without the adapters nothing can be authenticated, but the repository is still listed: every
/// key "not verified", and nothing is changed.
#[test]
fn without_adapters_list_still_works_and_says_not_verified() {
    let mut w = two_keys();
    let snap = w.repo_snapshot();
    w.set_env("AP_SIM_DIR", w.root.join("no-such-simulator"));
    let o = w.run("zkey", &["list"]);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{out}{err}");
    assert!(err.contains("cannot be reached"), "{err}");
    for k in ["a", "b"] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("{k} ")) && l.contains("not verified")),
            "{out}"
        );
    }
    let j = w.json("zkey", &["list", "--json"]);
    for k in j["keys"].as_array().unwrap() {
        assert_eq!(k["status"]["integrity"]["state"], "not-verified", "{k}");
    }
    assert_eq!(w.repo_snapshot(), snap);
}
