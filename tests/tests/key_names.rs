//! Key names that hold wildcard characters (issue 11, finding 5): `b[1]` is a name the
//! reference allows, but `-N 'b[1]'` read as a pattern selects `b1`, so `reencipher` staged the
//! wrong key and left `b[1]` to be lost at the SET, and validate's advice repeated the mistake.
//! Now a `-N` that spells a key's name exactly selects that key alone, advice quotes a command
//! that selects exactly its key (also through a shell, in a directory holding a file `b1`), and
//! new names with `[` or `]` are refused with the way to rename old ones.

use std::path::Path;
use std::process::Command;

use tests::World;

const CCA: &str = "08.002f,09.002f";

/// A repository with `b1` and `b[1]`. A new name with brackets is refused now, so `b[1]` is
/// made as an earlier zkey (or IBM's) made it: its files put in place under that name.
fn world_with_b1_and_legacy_b_1() -> World {
    let mut w = World::new();
    w.ok("zkey", &["generate", "-N", "b1", "-a", CCA]);
    w.ok("zkey", &["generate", "-N", "made", "-a", CCA]);
    // In the format of a repository that version wrote (no MAC, which binds a key's name).
    let old = w.root.join("old-repo");
    tests::info::old_format_repository(&w.repo, &old, |k| {
        if k == "made" {
            "b[1]".into()
        } else {
            k.into()
        }
    });
    w.repo = old;
    // The first change gives every key its MAC, b[1]'s bound to that name.
    w.ok("zkey", &["change", "-N", "b1", "-d", "the first"]);
    let names: Vec<String> = w.json("zkey", &["list", "--json"])["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["b1", "b[1]"]);
    w
}

fn staged(w: &World, name: &str) -> bool {
    w.repo.join(format!("{name}.renc")).exists()
}

/// Runs `line` as a user who copies it into a shell would: `sh -c`, the suite's binaries on
/// PATH, in a directory that holds a file `b1` (so an unquoted `b[1]` would become `b1`).
fn run_in_shell(w: &World, line: &str) -> std::process::Output {
    let cwd = w.root.join("cwd");
    std::fs::create_dir_all(&cwd).unwrap();
    std::fs::write(cwd.join("b1"), "").unwrap();
    let path = format!(
        "{}:{}",
        tests::bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Command::new("sh")
        .arg("-c")
        .arg(line)
        .current_dir(Path::new(&cwd))
        .env("PATH", path)
        .env("AP_SIM_DIR", &w.sim)
        .env("ZKEY_REPOSITORY", &w.repo)
        .env_remove("SYSFS_ROOT")
        .output()
        .unwrap()
}

#[test]
fn reencipher_of_a_name_with_brackets_stages_that_key_and_not_its_lookalike() {
    let w = world_with_b1_and_legacy_b_1();
    w.load_new(CCA, "aes");
    let out = w.ok(
        "zkey",
        &["reencipher", "-N", "b[1]", "--to-new", "--staged"],
    );
    assert!(staged(&w, "b[1]"), "b[1] was not staged: {out}");
    assert!(!staged(&w, "b1"), "b1 was staged in place of b[1]: {out}");
    // The other filters agree: list and validate show b[1] alone.
    let l = w.json("zkey", &["list", "-N", "b[1]", "--json"]);
    let names: Vec<&str> = l["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["b[1]"]);
    let v = w.json("zkey", &["validate", "-N", "b[1]", "--json"]);
    assert_eq!(v["keys"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["keys"][0]["name"], "b[1]");
    // A pattern that is no key's name is still a pattern.
    let l = w.json("zkey", &["list", "-N", "b[0-9]", "--json"]);
    assert_eq!(l["keys"].as_array().unwrap().len(), 1, "{l}");
    assert_eq!(l["keys"][0]["name"], "b1");
}

#[test]
fn validate_advice_run_through_a_shell_stages_exactly_the_key_it_names() {
    let w = world_with_b1_and_legacy_b_1();
    w.load_new(CCA, "aes");
    let (code, text) = w.code("zkey", &["validate", "--all"]);
    assert_eq!(code, 3, "{text}");
    let v = w.json("zkey", &["validate", "--json"]);
    let action = v["readiness"]["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["kind"] == "key" && o["name"] == "b[1]")
        .and_then(|o| o["action"].as_str())
        .unwrap_or_else(|| panic!("no action for b[1]: {v}"))
        .to_string();
    assert!(
        text.contains(&action),
        "the text output quotes another command:\n{text}"
    );
    let advice = v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "b[1]")
        .and_then(|k| k["advice"].as_str())
        .unwrap()
        .to_string();
    assert!(advice.contains(&action), "{advice} vs {action}");

    let o = run_in_shell(&w, &action);
    assert!(
        o.status.success(),
        "{action}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        staged(&w, "b[1]"),
        "the advice '{action}' did not stage b[1]"
    );
    assert!(!staged(&w, "b1"), "the advice '{action}' staged b1");
}

#[test]
fn new_names_with_brackets_are_refused_and_old_ones_can_be_renamed() {
    let w = world_with_b1_and_legacy_b_1();
    let before = w.repo_snapshot();
    for args in [
        &["generate", "-N", "c[1]", "-a", CCA][..],
        &["rename", "-N", "b1", "-w", "b[2]"],
        &["copy", "-N", "b1", "-w", "c]"],
    ] {
        let err = w.fails("zkey", args);
        assert!(
            err.contains("wildcard") && err.contains("zkey rename -N"),
            "{args:?}: {err}"
        );
    }
    // `audit.log` grows with every command that did something; nothing else may change.
    let files = |s: &[(String, Vec<u8>)]| -> Vec<(String, Vec<u8>)> {
        s.iter()
            .filter(|(n, _)| n != "audit.log")
            .cloned()
            .collect()
    };
    assert_eq!(files(&w.repo_snapshot()), files(&before));
    // The way out the error gives works, and the key is then selected by its new name.
    w.ok("zkey", &["rename", "-N", "b[1]", "-w", "b_1"]);
    let l = w.json("zkey", &["list", "-N", "b_1", "--json"]);
    assert_eq!(l["keys"].as_array().unwrap().len(), 1, "{l}");
}
