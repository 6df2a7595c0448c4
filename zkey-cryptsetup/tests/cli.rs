//! The command line itself: version, the reference's abbreviations of the subcommands, and the
//! suite's exit codes (0 done or nothing to do, 1 failed, 2 usage, 3 at risk).
mod common;
use common::*;

fn p(img: &std::path::Path) -> &str {
    img.to_str().unwrap()
}

#[test]
fn version_with_v_and_long_option() {
    for flag in ["--version", "-v"] {
        let o = run_with(std::path::Path::new("/nonexistent"), &[flag], b"", &[]);
        assert_eq!(o.status.code(), Some(0), "{flag}: {}", stderr(&o));
        assert_eq!(
            stdout(&o).trim(),
            format!("zkey-cryptsetup {}", env!("CARGO_PKG_VERSION")),
            "{flag}"
        );
    }
    // -V is --verbose, as in the reference, not the version.
    let o = run_with(std::path::Path::new("/nonexistent"), &["-V"], b"", &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
}

#[test]
fn abbreviations_name_their_subcommands() {
    for (abbrev, full) in [
        ("re", "reencipher"),
        ("val", "validate"),
        ("setv", "setvp"),
        ("setk", "setkey"),
        ("op", "open"),
        ("cl", "close"),
        ("fo", "format"),
    ] {
        let o = run_with(
            std::path::Path::new("/nonexistent"),
            &[abbrev, "--help"],
            b"",
            &[],
        );
        assert_eq!(o.status.code(), Some(0), "{abbrev}: {}", stderr(&o));
        assert!(
            stdout(&o).contains(&format!("Usage: zkey-cryptsetup {full} ")),
            "{abbrev}: {}",
            stdout(&o)
        );
    }
    // And they run: `val` validates, `re` re-enciphers, `cl` closes.
    let f = Fixture::new();
    let img = f.format("v.img", true);
    let o = f.run(&["val", p(&img), "--json"], b"disk1pw\n");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["valid"], true);
    f.load_new();
    let o = f.run(&["re", p(&img), "-s"], b"disk1pw\n");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(token_of(&img, "paes-reencipher").is_some());
    let o = f.run(&["cl", "never-opened"], b"");
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("never-opened"), "{}", stderr(&o));
}

#[test]
fn the_long_help_lists_the_exit_codes() {
    let o = run_with(std::path::Path::new("/nonexistent"), &["--help"], b"", &[]);
    assert_eq!(o.status.code(), Some(0));
    let out = flat(&stdout(&o));
    for needle in [
        "Exit codes:",
        "0 done, or nothing to do",
        "1 failed",
        "2 usage",
        "3 validate: the volume key works but is at risk",
    ] {
        assert!(out.contains(needle), "{needle:?} not in {out}");
    }
}

#[test]
fn usage_errors_exit_2_and_change_nothing() {
    let f = Fixture::new();
    let img = f.image("b.img");
    let kf = f.dir.path().join("k");
    std::fs::write(&kf, f.key(false)).unwrap();
    let before = std::fs::read(&img).unwrap();
    for args in [
        vec!["reencipher"],
        vec!["reencipher", p(&img), "--staged", "--complete"],
        vec!["nosuchcommand"],
        vec![
            "format",
            p(&img),
            "-m",
            kf.to_str().unwrap(),
            "--sector-size",
            "1000",
            "-q",
        ],
        vec![
            "format",
            p(&img),
            "-m",
            kf.to_str().unwrap(),
            "--pbkdf",
            "pbkdf2",
            "-q",
        ],
    ] {
        let o = run_with(
            f.sim.dir(),
            &args,
            b"pw\n",
            &[
                ("ZKEY_CRYPTSETUP_PBKDF", ""),
                ("ZKEY_CRYPTSETUP_PBKDF_FORCE_ITERATIONS", ""),
            ],
        );
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(!stderr(&o).trim().is_empty(), "{args:?} said nothing");
    }
    assert!(before == std::fs::read(&img).unwrap());
}

#[test]
fn validate_exit_codes_follow_the_volume_through_a_rotation() {
    let f = Fixture::new();
    let img = f.format("v.img", true);
    let validate = |f: &Fixture| {
        let o = f.run(&["validate", p(&img)], b"disk1pw\n");
        (o.status.code(), flat(&stdout(&o)), stderr(&o))
    };
    // Fresh: valid, 0.
    let (code, out, err) = validate(&f);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(!out.contains("At risk"), "{out}");
    // Staged before the SET: the volume key still under CURRENT, nothing at risk yet.
    f.load_new();
    assert!(f
        .run(&["reencipher", p(&img), "-s"], b"disk1pw\n")
        .status
        .success());
    assert_eq!(validate(&f).0, Some(0));
    // After the SET the staged key waits for --complete: at risk, 3.
    f.set();
    let (code, out, _) = validate(&f);
    assert_eq!(code, Some(3), "{out}");
    assert!(out.contains("At risk: a staged re-encipher waits"), "{out}");
    let o = f.run(&["validate", p(&img), "--json"], b"disk1pw\n");
    assert_eq!(o.status.code(), Some(3));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["valid"], true);
    assert!(j["at_risk"].as_str().unwrap().contains("--complete"), "{j}");
    // Completed: 0 again; a second --complete has nothing to do, 0.
    let o = f.run(&["reencipher", p(&img), "--complete", "-q"], b"disk1pw\n");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(validate(&f).0, Some(0));
    let o = f.run(&["reencipher", p(&img), "--complete", "-q"], b"disk1pw\n");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(flat(&stdout(&o)).contains("nothing to do: no re-encipher is pending for device"));
    // One rotation without a re-encipher: under OLD, at risk, 3.
    f.rotate();
    let (code, out, _) = validate(&f);
    assert_eq!(code, Some(3), "{out}");
    assert!(
        out.contains("At risk: the volume key is enciphered with the OLD master key"),
        "{out}"
    );
    // Two: unusable, 1.
    f.rotate();
    let (code, out, _) = validate(&f);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("Invalid"), "{out}");
    // A wrong passphrase is a failure too.
    let o = f.run(&["validate", p(&img)], b"nope\n");
    assert_eq!(o.status.code(), Some(1));
}
