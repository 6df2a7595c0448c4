//! Volumes that an alias or a slip must not destroy (issue 11, findings 6 and 7):
//! - one device under two names (a symlink, a hard link) gets one key: `zkey generate w2 -l
//!   alias:w2` is refused, naming w1;
//! - `zkey cryptsetup --format --run` and `zkey-cryptsetup format` never format over a LUKS
//!   header without a yes on a terminal or `--force` (batch mode is not a yes), and re-running
//!   them on the key's own volume is a no-op that says so; w1's data still reads back;
//! - `zkey-cryptsetup open` refuses a key its VP token disowns (what `validate` reports invalid),
//!   unless forced;
//! - one device is not opened under two names at once.
//!
//! The data path needs root and /dev/fuse: without them the tests say SKIP.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use tests::World;

const CCA: &str = "08.002f,09.002f";

fn data_path_available() -> bool {
    let root = fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false);
    if !Path::new("/dev/fuse").exists() || !root {
        eprintln!("SKIP: the data path needs /dev/fuse and root");
        return false;
    }
    true
}

struct Setup {
    w: World,
    img: PathBuf,
    data: Vec<u8>,
}

impl Setup {
    /// Key w1 with a LUKS2 volume on `w1.img`, formatted by `zkey cryptsetup --format --run`,
    /// and known data written through the data path.
    fn new() -> Setup {
        let mut w = World::new();
        w.set_env("ZKEY_CRYPTSETUP_PBKDF", "pbkdf2");
        w.set_env("ZKEY_CRYPTSETUP_PBKDF_FORCE_ITERATIONS", "1000");
        w.set_env("ZKEY_CRYPTSETUP_RUN_DIR", w.root.join("run"));
        let img = w.root.join("w1.img");
        fs::File::create(&img).unwrap().set_len(32 << 20).unwrap();
        w.ok(
            "zkey",
            &[
                "generate",
                "-N",
                "w1",
                "-a",
                CCA,
                "--xts",
                "-l",
                &format!("{}:w1", img.display()),
                "--gen-dummy-passphrase",
            ],
        );
        let out = w.ok("zkey", &["cryptsetup", "-N", "w1", "--format", "--run"]);
        assert!(out.contains("zkey-cryptsetup format"), "{out}");
        let data: Vec<u8> = (0..256 * 1024u32)
            .map(|i| (i * 7 + i / 4096) as u8)
            .collect();
        let s = Setup { w, img, data };
        s.with_open(&s.img.clone(), "w1", |f| {
            f.write_all(&s.data).unwrap();
        });
        s
    }

    fn pass(&self, key: &str) -> String {
        self.w
            .repo
            .join(format!("{key}.pass"))
            .display()
            .to_string()
    }

    fn run_file(&self, name: &str) -> PathBuf {
        self.w.root.join("run").join(name)
    }

    /// Opens `dev` as `name` with w1's passphrase, runs `f` on the decrypted file, closes it.
    fn with_open<T>(&self, dev: &Path, name: &str, f: impl FnOnce(&mut fs::File) -> T) -> T {
        self.w.ok(
            "zkey-cryptsetup",
            &[
                "open",
                dev.to_str().unwrap(),
                name,
                "--key-file",
                &self.pass("w1"),
            ],
        );
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.run_file(name))
            .unwrap();
        let out = f(&mut file);
        file.sync_all().unwrap();
        drop(file);
        self.w.ok("zkey-cryptsetup", &["close", name]);
        out
    }

    /// w1's data reads back byte for byte.
    fn check_data(&self) {
        let data = self.with_open(&self.img.clone(), "w1", |f| {
            let mut got = vec![0u8; self.data.len()];
            f.seek(SeekFrom::Start(0)).unwrap();
            f.read_exact(&mut got).unwrap();
            got
        });
        assert!(data == self.data, "w1's data is gone");
    }
}

#[test]
fn a_second_name_of_a_volume_device_is_refused_for_another_key() {
    if !data_path_available() {
        return;
    }
    let s = Setup::new();
    let alias = s.w.root.join("imgalias");
    std::os::unix::fs::symlink(&s.img, &alias).unwrap();
    let hard = s.w.root.join("imghard");
    fs::hard_link(&s.img, &hard).unwrap();
    let before = s.w.repo_snapshot();
    for (dev, dm) in [(&alias, "w2"), (&hard, "w3")] {
        let err = s.w.fails(
            "zkey",
            &[
                "generate",
                "-N",
                dm,
                "-a",
                CCA,
                "--xts",
                "-l",
                &format!("{}:{dm}", dev.display()),
            ],
        );
        assert!(
            err.contains("key 'w1'") && err.contains("two names of one device"),
            "{err}"
        );
    }
    assert_eq!(
        s.w.repo_snapshot(),
        before,
        "a refused generate changed the repository"
    );
    // Also when an existing key is given the alias later.
    s.w.ok("zkey", &["generate", "-N", "w4", "-a", CCA, "--xts"]);
    let err = s.w.fails(
        "zkey",
        &[
            "change",
            "-N",
            "w4",
            "-l",
            &format!("+{}:w4", alias.display()),
        ],
    );
    assert!(err.contains("key 'w1'"), "{err}");
    s.check_data();
}

#[test]
fn format_never_destroys_an_existing_header_without_a_yes_and_a_rerun_is_a_no_op() {
    if !data_path_available() {
        return;
    }
    let s = Setup::new();
    // An alias the repository cannot see: associated before it existed.
    let late = s.w.root.join("late");
    s.w.ok(
        "zkey",
        &[
            "generate",
            "-N",
            "w2",
            "-a",
            CCA,
            "--xts",
            "-l",
            &format!("{}:w2", late.display()),
            "--no-volume-check",
            "--gen-dummy-passphrase",
        ],
    );
    std::os::unix::fs::symlink(&s.img, &late).unwrap();
    let image = fs::read(&s.img).unwrap();

    // The slip: zkey's format of w2's volume, off a terminal, is refused.
    let err =
        s.w.fails("zkey", &["cryptsetup", "-N", "w2", "--format", "--run"]);
    assert!(
        err.contains("already holds a LUKS2 header of another key") && err.contains("--force"),
        "{err}"
    );
    assert!(
        fs::read(&s.img).unwrap() == image,
        "the refused format changed the device"
    );
    // zkey-cryptsetup's own format: batch mode (-q) is not a yes for this.
    let skey2 = s.w.repo.join("w2.skey").display().to_string();
    let err = s.w.fails(
        "zkey-cryptsetup",
        &[
            "format",
            late.to_str().unwrap(),
            "-m",
            &skey2,
            "-q",
            "--key-file",
            &s.pass("w2"),
        ],
    );
    assert!(
        err.contains("already holds") && err.contains("--force"),
        "{err}"
    );
    assert!(
        fs::read(&s.img).unwrap() == image,
        "the refused format changed the device"
    );
    s.check_data();

    // Formatting the key's own volume again is a no-op that says so.
    let out =
        s.w.ok("zkey", &["cryptsetup", "-N", "w1", "--format", "--run"]);
    assert!(
        out.contains("already") && out.contains("nothing to do"),
        "{out}"
    );
    let skey1 = s.w.repo.join("w1.skey").display().to_string();
    let out = s.w.ok(
        "zkey-cryptsetup",
        &["format", s.img.to_str().unwrap(), "-m", &skey1, "-q"],
    );
    assert!(out.contains("nothing to do"), "{out}");
    s.check_data();

    // --force is the way through, for a volume that really is no longer needed.
    s.w.ok(
        "zkey",
        &["cryptsetup", "-N", "w2", "--format", "--run", "--force"],
    );
    assert!(fs::read(&s.img).unwrap() != image, "--force did not format");
}

#[test]
fn open_refuses_a_key_that_the_vp_token_disowns_unless_forced() {
    if !data_path_available() {
        return;
    }
    let s = Setup::new();
    let dev = s.img.to_str().unwrap().to_string();
    // The token of another key, as a slip with setkey/setvp or a tampered header leaves it.
    let other: ap_sim::VerificationPattern = "ab".repeat(32).parse().unwrap();
    zkey_cryptsetup::luks2::Volume::open(&s.img)
        .unwrap()
        .set_vp_token(&zkey_cryptsetup::luks2::VpToken::new(other))
        .unwrap();
    let (code, out) = s.w.code(
        "zkey-cryptsetup",
        &["validate", &dev, "--key-file", &s.pass("w1")],
    );
    assert_eq!(code, 1, "validate must call it invalid: {out}");
    for extra in [&[][..], &["-q"]] {
        let mut args = vec!["open", &dev, "m1", "--key-file"];
        let pass = s.pass("w1");
        args.push(&pass);
        args.extend_from_slice(extra);
        let err = s.w.fails("zkey-cryptsetup", &args);
        assert!(
            err.contains("VP token")
                && err.contains(&"ab".repeat(32))
                && err.contains("setvp")
                && err.contains("--force"),
            "{err}"
        );
        assert!(
            !s.run_file("m1").exists() || fs::metadata(s.run_file("m1")).unwrap().len() == 0,
            "a mapping was made"
        );
    }
    let pass = s.pass("w1");
    s.w.ok(
        "zkey-cryptsetup",
        &["open", &dev, "m1", "--key-file", &pass, "--force"],
    );
    s.w.ok("zkey-cryptsetup", &["close", "m1"]);
}

#[test]
fn one_device_is_not_opened_under_two_names_at_once() {
    if !data_path_available() {
        return;
    }
    let s = Setup::new();
    let alias = s.w.root.join("imgalias");
    std::os::unix::fs::symlink(&s.img, &alias).unwrap();
    let pass = s.pass("w1");
    let dev = s.img.to_str().unwrap();
    s.w.ok("zkey-cryptsetup", &["open", dev, "m1", "--key-file", &pass]);
    for d in [dev, alias.to_str().unwrap()] {
        let err =
            s.w.fails("zkey-cryptsetup", &["open", d, "m2", "--key-file", &pass]);
        assert!(
            err.contains("open already as 'm1'") && err.contains("zkey-cryptsetup close m1"),
            "{err}"
        );
        assert!(!s.run_file("m2").exists(), "a second mapping was made");
    }
    s.w.ok("zkey-cryptsetup", &["close", "m1"]);
    // Closed, the device opens under the other name.
    s.w.ok("zkey-cryptsetup", &["open", dev, "m2", "--key-file", &pass]);
    s.w.ok("zkey-cryptsetup", &["close", "m2"]);
    s.check_data();
}
