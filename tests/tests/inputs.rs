//! Input files bounded by their format, and commands that change all or nothing.

use std::time::{Duration, Instant};

use tests::World;

/// `zkey import /dev/zero` (and every other file a user names) is refused at once with what
/// kind of file was expected and its largest size, and nothing is changed.
#[test]
fn an_endless_input_file_is_refused_at_once_and_changes_nothing() {
    let w = World::new();
    w.ok("zkey", &["generate", "-N", "k1", "-t", "luks2"]);
    let snap = w.repo_snapshot();
    let cases: &[(&str, &[&str], &str)] = &[
        (
            "zkey",
            &["import", "/dev/zero", "-N", "z"],
            "/dev/zero is larger than any secure key (672 bytes max)",
        ),
        (
            "zkey",
            &["validate", "/dev/zero"],
            "/dev/zero is larger than any secure key (672 bytes max)",
        ),
        (
            "zkey",
            &["reencipher", "/dev/zero"],
            "/dev/zero is larger than any secure key (672 bytes max)",
        ),
        (
            "zkey",
            &["generate", "-N", "z", "-c", "/dev/zero"],
            "/dev/zero is larger than any clear AES key (64 bytes max)",
        ),
        (
            "zkey",
            &["generate", "-N", "z", "--set-dummy-passphrase", "/dev/zero"],
            "/dev/zero is larger than any passphrase file (8388608 bytes max)",
        ),
        (
            "zkey",
            &[
                "change",
                "-N",
                "k1",
                "-d",
                "x",
                "--set-dummy-passphrase",
                "/dev/zero",
            ],
            "/dev/zero is larger than any passphrase file (8388608 bytes max)",
        ),
        (
            "zkey-cryptsetup",
            &["setkey", "/dev/null", "-m", "/dev/zero"],
            "/dev/zero is larger than any secure key (672 bytes max)",
        ),
    ];
    for (bin, args, want) in cases {
        let t = Instant::now();
        let out = w.fails(bin, args);
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{bin} {args:?} took {:?}",
            t.elapsed()
        );
        assert!(out.contains(want), "{bin} {args:?}: {out}");
        assert_eq!(
            w.repo_snapshot(),
            snap,
            "{bin} {args:?} changed the repository"
        );
    }
}

/// `zkey change -d X --set-dummy-passphrase F` with a passphrase that cannot be set (a missing
/// file, a key that is not for LUKS2, an empty file) changes neither the description nor
/// anything else, and exits 1.
#[test]
fn a_change_that_fails_in_part_changes_nothing() {
    let w = World::new();
    w.ok(
        "zkey",
        &["generate", "-N", "plain", "-t", "plain", "-d", "old"],
    );
    w.ok(
        "zkey",
        &["generate", "-N", "lk", "-t", "luks2", "-d", "old"],
    );
    let empty = w.root.join("empty");
    std::fs::write(&empty, b"").unwrap();
    let snap = w.repo_snapshot();
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "change",
                "-N",
                "plain",
                "-d",
                "X",
                "--set-dummy-passphrase",
                "/nonexistent",
            ],
            "/nonexistent",
        ),
        (
            &["change", "-N", "plain", "-d", "X", "--gen-dummy-passphrase"],
            "not for LUKS2 volumes",
        ),
        (
            &[
                "change",
                "-N",
                "lk",
                "-d",
                "X",
                "--set-dummy-passphrase",
                empty.to_str().unwrap(),
            ],
            "empty dummy passphrase",
        ),
    ];
    for (args, want) in cases {
        let (code, out) = w.code("zkey", args);
        assert_eq!(code, 1, "{args:?}: {out}");
        assert!(out.contains(want), "{args:?}: {out}");
        assert_eq!(w.repo_snapshot(), snap, "{args:?} changed the repository");
    }
    // The same change with a good passphrase does all of it.
    w.ok(
        "zkey",
        &["change", "-N", "lk", "-d", "X", "--gen-dummy-passphrase"],
    );
    let info = std::fs::read_to_string(w.repo.join("lk.info")).unwrap();
    assert!(info.contains("\ndescription=X\n"), "{info}");
    assert!(w.repo.join("lk.pass").exists());
}

/// A passphrase piped to stdin is one line, bounded like a passphrase file: endless input
/// without a newline is refused at once, and the volume is not formatted.
#[test]
fn an_endless_passphrase_on_stdin_is_refused_at_once() {
    let w = World::new();
    let img = w.root.join("img");
    std::fs::write(&img, vec![0u8; 16 << 20]).unwrap();
    let vol = format!("{}:enc_img", img.display());
    w.ok(
        "zkey",
        &["generate", "-N", "lk", "-t", "luks2", "--volumes", &vol],
    );
    let t = Instant::now();
    let o = w
        .cmd("zkey")
        .args(["cryptsetup", "-N", "lk", "--format", "--run"])
        .stdin(std::fs::File::open("/dev/zero").unwrap())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    assert!(
        err.contains("stdin is larger than any passphrase (8388608 bytes max)"),
        "{err}"
    );
    assert!(
        std::fs::read(&img).unwrap().iter().all(|b| *b == 0),
        "the volume was written"
    );
}
