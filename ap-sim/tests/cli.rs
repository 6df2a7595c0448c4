//! The `ap-sim` binary as an administrator and a security officer use it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ap_sim::registers::part_checksum;
use ap_sim::MasterKey;

struct Sim {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
}

impl Sim {
    fn new(args: &[&str]) -> Sim {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("sim");
        let s = Sim { _tmp: tmp, dir };
        let mut a = vec!["init"];
        a.extend_from_slice(args);
        s.ok(&a);
        s
    }

    fn run(&self, args: &[&str], stdin: Option<&str>) -> Output {
        use std::io::Write;
        let mut c = Command::new(env!("CARGO_BIN_EXE_ap-sim"));
        c.arg("--dir").arg(&self.dir).args(args);
        c.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = c.spawn().unwrap();
        let mut input = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).unwrap();
        }
        drop(input);
        child.wait_with_output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args, None);
        assert!(
            o.status.success(),
            "ap-sim {args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// Runs a command that must fail, and checks that it changed nothing.
    fn refused(&self, args: &[&str], stdin: Option<&str>, expect: &str) {
        let before = self.state();
        let o = self.run(args, stdin);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "ap-sim {args:?} succeeded");
        assert!(
            err.contains(expect),
            "ap-sim {args:?}: expected {expect:?} in {err:?}"
        );
        assert_eq!(before, self.state(), "ap-sim {args:?} changed the state");
    }

    /// The adapters' state, without the audit trail's head (a refusal is recorded there).
    fn state(&self) -> Vec<u8> {
        let v: serde_json::Value =
            serde_json::from_slice(&fs::read(self.dir.join("state.json")).unwrap()).unwrap();
        serde_json::to_vec(&v["bus"]).unwrap()
    }

    fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["tke", "status", "--json"])).unwrap()
    }

    fn reg(&self, apqn: &str, mktype: &str, reg: &str) -> (String, Option<String>) {
        let st = self.status();
        let a = st["apqns"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["apqn"] == apqn)
            .unwrap()
            .clone();
        let r = a["registers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["mktype"] == mktype)
            .unwrap()[reg]
            .clone();
        (
            r["state"].as_str().unwrap().to_string(),
            r["mkvp"].as_str().map(str::to_string),
        )
    }

    fn mkvps(&self, apqn: &str) -> String {
        let card = &apqn[..2];
        fs::read_to_string(
            self.dir
                .join(format!("sys/devices/ap/card{card}/{apqn}/mkvps")),
        )
        .unwrap()
    }
}

const GROUP: &str = "08.002f,09.002f";

#[test]
fn default_layout_has_the_seed_004_apqns_sharing_master_keys() {
    let s = Sim::new(&[]);
    let (st8, cur8) = s.reg("08.002f", "aes", "current");
    let (_, cur9) = s.reg("09.002f", "aes", "current");
    assert_eq!(st8, "valid");
    assert_eq!(cur8, cur9, "08.002f and 09.002f share the AES master key");
    assert_ne!(
        s.reg("08.002f", "apka", "current").1,
        cur8,
        "AES and APKA keys differ"
    );
    assert_eq!(s.reg("0a.002f", "ep11", "current").0, "valid");
    let ls = s.ok(&["lszcrypt"]);
    for needle in [
        "08.002f",
        "CEX8C",
        "CCA-Coproc",
        "EP11-Coproc",
        "Accelerator",
        "online",
    ] {
        assert!(ls.contains(needle), "lszcrypt lacks {needle}: {ls}");
    }
    let mode = fs::metadata(s.dir.join("state.json")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );
}

#[test]
fn init_refuses_to_overwrite_without_force() {
    let s = Sim::new(&[]);
    s.refused(&["init"], None, "--force");
    let before = s.reg("08.002f", "aes", "current").1;
    s.ok(&["init", "--force"]);
    assert_ne!(
        before,
        s.reg("08.002f", "aes", "current").1,
        "--force makes new master keys"
    );
}

#[test]
fn init_rejects_bad_layouts() {
    let tmp = tempfile::tempdir().unwrap();
    for args in [
        &["--card", "08=CEX3C"][..],
        &["--card", "zz=CEX8C"],
        &["--card", "08"],
        &["--domain", "xyz"],
        &["--card", "08=CEX8C", "--card", "8=CEX8P"],
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_ap-sim"))
            .arg("--dir")
            .arg(tmp.path().join("x"))
            .arg("init")
            .args(args)
            .output()
            .unwrap();
        assert!(!o.status.success(), "{args:?} accepted");
        assert!(!tmp.path().join("x/state.json").exists());
    }
}

fn part(b: u8) -> (String, String) {
    let k = MasterKey::from_bytes([b; 32]);
    (hex::encode([b; 32]), format!("{:02X}", part_checksum(&k)))
}

#[test]
fn key_parts_build_the_new_key_and_report_patterns() {
    let s = Sim::new(&[]);
    let (v1, c1) = part(0x11);
    let (v2, c2) = part(0x22);
    let (v3, c3) = part(0x47);
    let out = s.ok(&["tke", "checksum", "--value", &v1]);
    assert!(out.contains(&format!("Checksum     : {c1}")), "{out}");

    let o = s.run(
        &[
            "tke",
            "load-new",
            "-a",
            GROUP,
            "-t",
            "aes",
            "--part",
            "first",
            "--value",
            "-",
            "--checksum",
            &c1,
        ],
        Some(&v1),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(s.reg("08.002f", "aes", "new").0, "partial");
    assert!(s
        .mkvps("08.002f")
        .contains("AES NEW: partial 0x0000000000000000"));
    s.ok(&[
        "tke",
        "load-new",
        "-a",
        GROUP,
        "-t",
        "aes",
        "--part",
        "middle",
        "--value",
        &v2,
        "--checksum",
        &c2,
    ]);
    let out = s.ok(&[
        "tke",
        "load-new",
        "-a",
        GROUP,
        "-t",
        "aes",
        "--part",
        "final",
        "--value",
        &v3,
        "--checksum",
        &c3,
    ]);

    let expect = MasterKey::from_bytes([0x11 ^ 0x22 ^ 0x47; 32])
        .cca_mkvp()
        .to_string();
    assert!(
        out.contains(&format!("New master key verification pattern: {expect}")),
        "{out}"
    );
    assert_eq!(
        s.reg("09.002f", "aes", "new"),
        ("full".into(), Some(expect.clone()))
    );
    assert!(s
        .mkvps("09.002f")
        .contains(&format!("AES NEW: full 0x{expect}")));

    let cur = s.reg("08.002f", "aes", "current").1;
    s.ok(&["tke", "set", "-a", GROUP, "-t", "aes", "--yes"]);
    assert_eq!(s.reg("08.002f", "aes", "current").1, Some(expect));
    assert_eq!(s.reg("08.002f", "aes", "old").1, cur);
    assert_eq!(s.reg("08.002f", "aes", "new").0, "empty");
}

#[test]
fn wrong_parts_and_orders_are_refused_without_change() {
    let s = Sim::new(&[]);
    let (v, c) = part(0x31);
    let bad = if c == "00" { "01" } else { "00" };
    s.refused(
        &[
            "tke",
            "load-new",
            "-a",
            GROUP,
            "-t",
            "aes",
            "--part",
            "first",
            "--value",
            &v,
            "--checksum",
            bad,
        ],
        None,
        "checksum mismatch",
    );
    s.refused(
        &[
            "tke",
            "load-new",
            "-a",
            GROUP,
            "-t",
            "aes",
            "--part",
            "final",
            "--value",
            &v,
            "--checksum",
            &c,
        ],
        None,
        "FIRST",
    );
    s.refused(
        &[
            "tke",
            "load-new",
            "-a",
            GROUP,
            "-t",
            "aes",
            "--part",
            "first",
            "--value",
            "abcd",
            "--checksum",
            &c,
        ],
        None,
        "64 hex digits",
    );
    s.refused(
        &["tke", "set", "-a", GROUP, "-t", "aes", "--yes"],
        None,
        "full",
    );
    s.refused(
        &[
            "tke",
            "load-new",
            "-a",
            "08.002f,07.002f",
            "-t",
            "aes",
            "--random",
        ],
        None,
        "07.002f does not exist",
    );
    s.refused(
        &["tke", "load-new", "-a", "08.0x2g", "-t", "aes", "--random"],
        None,
        "domain",
    );
    s.refused(
        &["tke", "load-new", "-a", "0a.002f", "-t", "aes", "--random"],
        None,
        "no aes master key",
    );
    s.refused(
        &["tke", "load-new", "-a", GROUP, "-t", "des", "--random"],
        None,
        "unknown master key type",
    );
}

#[test]
fn set_is_all_or_nothing_across_the_group() {
    let s = Sim::new(&[]);
    // The security officer loaded NEW on 08.002f only: seed 000's "NEW MASTER KEYS INCORRECT".
    s.ok(&["tke", "load-new", "-a", "08.002f", "-t", "aes", "--random"]);
    s.refused(
        &["tke", "set", "-a", GROUP, "-t", "aes", "--yes"],
        None,
        "APQN 09.002f",
    );
    assert_eq!(
        s.reg("08.002f", "aes", "new").0,
        "full",
        "08.002f keeps its NEW key"
    );
    // Off a terminal, SET is never done without --yes.
    s.refused(&["tke", "set", "-a", "08.002f", "-t", "aes"], None, "--yes");
    // A different NEW key on each APQN is possible, so tools can be tested against it.
    s.ok(&["tke", "load-new", "-a", "09.002f", "-t", "aes", "--random"]);
    assert_ne!(
        s.reg("08.002f", "aes", "new").1,
        s.reg("09.002f", "aes", "new").1
    );
    s.ok(&["tke", "clear-new", "-a", GROUP, "-t", "aes"]);
    assert!(s
        .mkvps("08.002f")
        .starts_with("AES NEW: empty 0x0000000000000000\n"));
}

#[test]
fn ep11_wrapping_key_needs_commit_and_has_no_old() {
    let s = Sim::new(&[]);
    let g = "0a.002f,0b.002f";
    let cur = s.reg("0a.002f", "ep11", "current").1.unwrap();
    s.ok(&["tke", "load-new", "-a", g, "-t", "ep11", "--random"]);
    assert_eq!(s.reg("0b.002f", "ep11", "new").0, "uncommitted");
    assert!(s.mkvps("0a.002f").contains("WK NEW: uncommitted 0x"));
    s.refused(
        &["tke", "set", "-a", g, "-t", "ep11", "--yes"],
        None,
        "committed",
    );
    s.ok(&["tke", "commit", "-a", g]);
    let new = s.reg("0a.002f", "ep11", "new").1.unwrap();
    s.ok(&["tke", "set", "-a", g, "-t", "ep11", "--yes"]);
    assert_eq!(s.reg("0a.002f", "ep11", "current").1.unwrap(), new);
    assert_ne!(new, cur);
    let m = s.mkvps("0a.002f");
    assert!(m.starts_with(&format!("WK CUR: valid 0x{new}\n")), "{m}");
    assert!(m.ends_with("WK NEW: empty -\n"), "{m}");
}

#[test]
fn chzcrypt_and_faults_show_in_lszcrypt_and_status() {
    let s = Sim::new(&[]);
    s.ok(&["chzcrypt", "-d", "08"]);
    s.refused(&["chzcrypt", "-e", "08.002f"], None, "card is offline");
    s.ok(&["chzcrypt", "--config-off", "09"]);
    s.refused(&["chzcrypt", "-e", "09"], None, "deconfigured");
    s.ok(&["fault", "chkstop", "0a.002f"]);
    let v: serde_json::Value = serde_json::from_str(&s.ok(&["lszcrypt", "--json"])).unwrap();
    let text = v.to_string();
    for w in ["offline", "deconfig", "chkstop"] {
        assert!(text.contains(w), "lszcrypt --json lacks {w}: {text}");
    }
    assert_eq!(
        fs::read_to_string(s.dir.join("sys/devices/ap/card08/online")).unwrap(),
        "0\n"
    );
    assert_eq!(
        fs::read_to_string(s.dir.join("sys/devices/ap/card09/config")).unwrap(),
        "0\n"
    );
    s.ok(&["chzcrypt", "-e", "08"]);
    s.ok(&["chzcrypt", "--config-on", "09"]);
    s.ok(&["fault", "clear", "0a.002f"]);
    let ls = s.ok(&["lszcrypt"]);
    assert!(
        !ls.contains("offline") && !ls.contains("deconfig") && !ls.contains("chkstop"),
        "{ls}"
    );
}

/// Master keys live only in the private state file: no rendered file holds one.
#[test]
fn sysfs_tree_never_holds_a_master_key() {
    let s = Sim::new(&[]);
    s.ok(&["tke", "load-new", "-a", GROUP, "-t", "aes", "--random"]);
    s.ok(&["tke", "set", "-a", GROUP, "-t", "aes", "--yes"]);
    s.ok(&["tke", "load-new", "-a", GROUP, "-t", "apka", "--random"]);
    let state: serde_json::Value =
        serde_json::from_slice(&fs::read(s.dir.join("state.json")).unwrap()).unwrap();
    let mut keys = Vec::new();
    collect_keys(&state, &mut keys);
    assert!(keys.len() >= 10, "found {} keys in the state", keys.len());
    let mut files = 0;
    walk(&s.dir.join("sys"), &mut |p| {
        files += 1;
        let text = fs::read_to_string(p).unwrap_or_default().to_lowercase();
        for k in &keys {
            assert!(
                !text.contains(&k[..16]),
                "{} holds part of a master key",
                p.display()
            );
        }
    });
    assert!(files > 50, "only {files} sysfs files");
}

fn collect_keys(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s)
            if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) =>
        {
            out.push(s.clone())
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_keys(x, out)),
        serde_json::Value::Object(o) => o.values().for_each(|x| collect_keys(x, out)),
        _ => {}
    }
}

fn walk(p: &Path, f: &mut dyn FnMut(&Path)) {
    for e in fs::read_dir(p).unwrap() {
        let e = e.unwrap();
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            walk(&e.path(), f);
        } else if ft.is_file() {
            f(&e.path());
        }
    }
}

/// Several security officers' and admins' processes at once: every change lands whole, and a
/// reader of the sysfs tree never sees a torn mkvps file.
#[test]
fn concurrent_processes_never_tear_state_or_mkvps() {
    let s = Sim::new(&[
        "--card", "08=CEX8C", "--card", "09=CEX8C", "--domain", "2f", "--domain", "30",
    ]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let dir = s.dir.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut reads = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for apqn in ["08.002f", "09.0030"] {
                    let p = dir.join(format!("sys/devices/ap/card{}/{apqn}/mkvps", &apqn[..2]));
                    let text = fs::read_to_string(&p).unwrap();
                    ap_sim::sysfs::parse_mkvps(&text)
                        .unwrap_or_else(|e| panic!("torn mkvps {text:?}: {e}"));
                    reads += 1;
                }
            }
            reads
        })
    };
    let rounds = 6;
    let workers: Vec<_> = ["08.002f,09.002f", "08.0030,09.0030"]
        .into_iter()
        .map(|g| {
            let dir = s.dir.clone();
            std::thread::spawn(move || {
                for _ in 0..rounds {
                    for args in [
                        &["tke", "load-new", "-a", g, "-t", "aes", "--random"][..],
                        &["tke", "set", "-a", g, "-t", "aes", "--yes"],
                    ] {
                        let o = Command::new(env!("CARGO_BIN_EXE_ap-sim"))
                            .arg("--dir")
                            .arg(&dir)
                            .args(args)
                            .output()
                            .unwrap();
                        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
                    }
                }
            })
        })
        .collect();
    workers.into_iter().for_each(|w| w.join().unwrap());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(reader.join().unwrap() > 0);
    // Each group went through exactly `rounds` SETs, each a whole one: both APQNs agree.
    for (a, b) in [("08.002f", "09.002f"), ("08.0030", "09.0030")] {
        assert_eq!(s.reg(a, "aes", "current"), s.reg(b, "aes", "current"));
        assert_eq!(s.reg(a, "aes", "old"), s.reg(b, "aes", "old"));
        assert_eq!(s.reg(a, "aes", "new").0, "empty");
    }
}

#[test]
fn env_points_tools_at_the_simulator() {
    let s = Sim::new(&[]);
    let out = s.ok(&["env"]);
    assert!(out.contains("export AP_SIM_DIR="));
    assert!(out.contains("/sys\n"), "{out}");
}

#[test]
fn commands_on_a_missing_simulator_say_how_to_create_one() {
    let tmp = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_ap-sim"))
        .arg("--dir")
        .arg(tmp.path())
        .args(["tke", "status"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("ap-sim init"));
}
