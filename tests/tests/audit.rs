//! The audit trail as an auditor uses it: "when was the master key last changed, and can you
//! prove it?" — and what an intruder who can edit files cannot hide.

use std::fs;

use tests::{failpoint_bin_dir, World};

const CCA: &str = "08.002f,09.002f";

fn rotated_world() -> World {
    let w = World::new();
    w.ok("zkey", &["generate", "-N", "disk1", "-a", CCA, "--xts"]);
    w.load_new(CCA, "aes");
    w.ok("zkey", &["reencipher", "-a", CCA, "--to-new", "--staged"]);
    w.set(CCA, "aes");
    w.ok("zkey", &["reencipher", "-a", CCA, "--complete"]);
    w
}

#[test]
fn the_last_master_key_change_is_shown_and_proven() {
    let w = rotated_world();
    // A refused SET is on record too.
    let _ = w.fails("ap-sim", &["tke", "set", "-a", CCA, "-t", "aes", "--yes"]);
    let v = w.json("zkey", &["audit", "show", "--event", "tke-set", "--json"]);
    let recs = v["records"].as_array().unwrap();
    assert_eq!(recs.len(), 2, "{v}");
    assert_eq!(recs[0]["result"], "ok");
    assert!(recs[0]["old_mkvp"].is_string() && recs[0]["new_mkvp"].is_string());
    assert!(recs[1]["result"].as_str().unwrap().starts_with("failed:"));
    let status = w.json("ap-sim", &["tke", "status", "--json", "-a", "08.002f"]);
    let cur = status["apqns"][0]["registers"][0]["current"]["mkvp"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        recs[0]["new_mkvp"],
        cur.as_str(),
        "the recorded SET made today's CURRENT key"
    );
    let all = w.json("zkey", &["audit", "show", "--json"]);
    let events: Vec<&str> = all["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        events,
        [
            "generate",
            "tke-load-new",
            "reencipher-staged",
            "tke-set",
            "reencipher-complete",
            "tke-set"
        ]
    );
    let out = w.ok("zkey", &["audit", "verify"]);
    assert_eq!(out.matches("intact").count(), 2, "{out}");
    // Nothing secret is in the logs: no master key of the adapter's state appears.
    let state: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(w.sim.join("state.json")).unwrap()).unwrap();
    let secrets = state["bus"].to_string() + state["audit"]["key"].as_str().unwrap();
    let logs = fs::read_to_string(w.sim.join("audit.log")).unwrap()
        + &fs::read_to_string(w.repo.join("audit.log")).unwrap();
    let mut n = 0;
    for word in secrets
        .split('"')
        .filter(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        n += 1;
        assert!(!logs.contains(word), "a master key reached the audit log");
    }
    assert!(n >= 8, "only {n} secrets found in the state");
}

fn tamper(w: &World, log: &std::path::Path, f: impl FnOnce(&mut Vec<String>)) -> String {
    let orig = fs::read_to_string(log).unwrap();
    let mut lines: Vec<String> = orig.lines().map(str::to_string).collect();
    f(&mut lines);
    fs::write(log, lines.join("\n") + "\n").unwrap();
    let o = w.run("zkey", &["audit", "verify"]);
    fs::write(log, orig).unwrap();
    assert!(!o.status.success(), "tampering went unnoticed");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn edits_truncation_and_reordering_are_detected() {
    let w = rotated_world();
    let tke = w.sim.join("audit.log");
    let repo = w.repo.join("audit.log");
    let out = tamper(&w, &tke, |l| {
        l[1] = l[1].replace("\"result\":\"ok\"", "\"result\":\"failed: no\"")
    });
    assert!(
        out.contains("BROKEN at record 2") && out.contains("MAC"),
        "{out}"
    );
    let out = tamper(&w, &tke, |l| l.truncate(1));
    assert!(out.contains("cut off"), "{out}");
    let out = tamper(&w, &repo, |l| l.swap(0, 1));
    assert!(out.contains("BROKEN at record 1"), "{out}");
    let out = tamper(&w, &repo, |l| {
        l.remove(0);
    });
    assert!(out.contains("BROKEN at record 1"), "{out}");
    w.ok("zkey", &["audit", "verify"]);
}

#[test]
fn a_cut_tail_stays_visible_after_more_changes() {
    let w = rotated_world();
    let repo = w.repo.join("audit.log");
    let orig = fs::read_to_string(&repo).unwrap();
    let lines: Vec<&str> = orig.lines().collect();
    let cut = lines[..lines.len() - 2].join("\n") + "\n";
    fs::write(&repo, &cut).unwrap();
    // Two ordinary changes: each is refused before it can chain past the gap.
    for name in ["later1", "later2"] {
        let err = w.fails("zkey", &["generate", "-N", name, "-a", CCA, "--xts"]);
        assert!(err.contains("tail was cut off"), "{err}");
    }
    assert_eq!(fs::read_to_string(&repo).unwrap(), cut, "nothing appended");
    let o = w.run("zkey", &["audit", "verify"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("cut off"));
}

#[test]
fn the_real_user_is_recorded_and_sudo_user_only_as_a_claim() {
    let mut w = World::new();
    w.set_env("SUDO_USER", "mallory");
    w.ok("zkey", &["generate", "-N", "k", "-a", CCA, "--xts"]);
    let v = w.json("zkey", &["audit", "show", "--event", "generate", "--json"]);
    let r = &v["records"][0];
    let id = std::process::Command::new("id")
        .arg("-run")
        .output()
        .unwrap();
    let me = String::from_utf8(id.stdout).unwrap().trim().to_string();
    assert_eq!(r["user"], me.as_str(), "{v}");
    assert_eq!(r["sudo_user"], "mallory", "{v}");
}

#[test]
fn generate_on_a_cut_log_changes_nothing() {
    let w = rotated_world();
    let repo = w.repo.join("audit.log");
    let orig = fs::read_to_string(&repo).unwrap();
    let lines: Vec<&str> = orig.lines().collect();
    fs::write(&repo, lines[..lines.len() - 1].join("\n") + "\n").unwrap();
    let before = w.repo_snapshot();
    let err = w.fails("zkey", &["generate", "-N", "later", "-a", CCA, "--xts"]);
    assert!(
        err.contains("tail was cut off") && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(
        w.repo_snapshot(),
        before,
        "the repository is byte-identical"
    );
    let err = w.fails("zkey", &["remove", "-N", "disk1", "--force"]);
    assert!(err.contains("nothing was changed"), "{err}");
    assert_eq!(w.repo_snapshot(), before);
}

#[test]
fn an_interrupted_action_is_unknown_and_says_what_to_check() {
    let mut w = World::new();
    w.ok("zkey", &["generate", "-N", "k0", "-a", CCA]);
    // A crash between the intent and the result: the first crash point after which the log
    // holds an intent for k1.
    w.use_bins(failpoint_bin_dir());
    let log = w.repo.join("audit.log");
    let clean = fs::read(&log).unwrap();
    let mut n = 0;
    loop {
        assert!(w.crash_at("zkey", n, &["generate", "-N", "k1", "-a", CCA]));
        if fs::read(&log).unwrap() != clean {
            break;
        }
        n += 1;
    }
    let v = w.json("zkey", &["audit", "verify", "--json"]);
    let log = &v["logs"][0];
    assert_eq!(log["intact"], true, "{v}");
    assert_eq!(log["actions"]["done"], 1, "{v}");
    assert_eq!(log["actions"]["unknown"], 1, "{v}");
    let u = &log["unknown_actions"][0];
    assert_eq!(u["event"], "generate", "{u}");
    assert_eq!(u["status"], "unknown", "{u}");
    assert!(
        u["check"].as_str().unwrap().contains("zkey validate -N k1"),
        "{u}"
    );
    let out = w.ok("zkey", &["audit", "verify"]);
    assert!(
        out.contains("1 done") && out.contains("1 unknown") && out.contains("UNKNOWN: generate k1"),
        "{out}"
    );
    // `show` lists each action once: k0's by its result, k1's by its intent, as unknown.
    let s = w.json("zkey", &["audit", "show", "--source", "zkey", "--json"]);
    let recs = s["records"].as_array().unwrap();
    assert_eq!(recs.len(), 2, "{s}");
    assert_eq!(recs[0]["status"], "done");
    assert_eq!(recs[0]["phase"], "result");
    assert_eq!(recs[1]["status"], "unknown");
    assert_eq!(recs[1]["phase"], "intent");
    assert_eq!(recs[0]["intent_id"].as_str().unwrap().len(), 16);
    // The next command appends after it, and the interrupted one stays unknown.
    w.ok("zkey", &["generate", "-N", "k2", "-a", CCA]);
    let v = w.json("zkey", &["audit", "verify", "--json"]);
    assert_eq!(v["logs"][0]["actions"]["unknown"], 1, "{v}");
    assert_eq!(v["logs"][0]["actions"]["done"], 2, "{v}");
}
