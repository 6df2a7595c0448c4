//! Seed 004 end to end with data: a LUKS2 volume formatted with a repository key, data written
//! through the FUSE data path, the whole procedure (repository and volume, staged then complete)
//! across one and two AES master key rotations, and every byte compared after reopening.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tests::World;

const CCA: &str = "08.002f,09.002f";
const PW: &str = "disk1pw";

struct Volume {
    w: World,
    img: PathBuf,
    run: PathBuf,
}

impl Volume {
    fn new() -> Option<Volume> {
        if !Path::new("/dev/fuse").exists() || euid() != 0 {
            eprintln!("SKIP: the data path needs /dev/fuse and root");
            return None;
        }
        let w = World::new();
        let img = w.root.join("disk1.img");
        fs::File::create(&img).unwrap().set_len(64 << 20).unwrap();
        let pass = w.root.join("disk1.pass");
        fs::write(&pass, PW).unwrap();
        let vol = format!("{}:enc-disk1", img.display());
        w.ok(
            "zkey",
            &[
                "generate",
                "--name",
                "disk1",
                "--apqns",
                CCA,
                "--xts",
                "--volumes",
                &vol,
                "--set-dummy-passphrase",
                pass.to_str().unwrap(),
            ],
        );
        let run = w.root.join("run");
        let v = Volume { w, img, run };
        let out = v.zkey(&["cryptsetup", "-N", "disk1", "--run", "--format"]);
        assert!(out.contains("zkey-cryptsetup format"), "{out}");
        Some(v)
    }

    fn env(&self, bin: &str) -> std::process::Command {
        let mut c = self.w.cmd(bin);
        c.env("ZKEY_CRYPTSETUP_RUN_DIR", &self.run)
            .env("ZKEY_CRYPTSETUP_PBKDF", "pbkdf2")
            .env("ZKEY_CRYPTSETUP_PBKDF_FORCE_ITERATIONS", "1000");
        c
    }

    fn zkey(&self, args: &[&str]) -> String {
        let o = self.env("zkey").args(args).output().unwrap();
        assert!(
            o.status.success(),
            "zkey {args:?}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// zkey-cryptsetup with the passphrase typed on stdin, as an operator would.
    fn zc(&self, args: &[&str]) -> std::process::Output {
        let mut child = self
            .env("zkey-cryptsetup")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(child.stdin.take().unwrap(), "{PW}").ok();
        child.wait_with_output().unwrap()
    }

    fn zc_ok(&self, args: &[&str]) -> String {
        let o = self.zc(args);
        assert!(
            o.status.success(),
            "zkey-cryptsetup {args:?}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    }

    fn dev(&self) -> &str {
        self.img.to_str().unwrap()
    }

    /// Opens the volume, runs `f` on the decrypted file, closes it.
    fn with_open<T>(&self, f: impl FnOnce(&mut fs::File) -> T) -> T {
        self.zc_ok(&["open", self.dev(), "enc-disk1"]);
        let guard = CloseGuard(self);
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.run.join("enc-disk1"))
            .unwrap();
        let out = f(&mut file);
        file.sync_all().unwrap();
        drop(file);
        drop(guard);
        out
    }

    fn rotate(&self) {
        self.w.load_new(CCA, "aes");
        // Steps 3 and 7 of seed 004, verbatim.
        self.zkey(&[
            "reencipher",
            "--apqns",
            "08.002f,09.002f",
            "--to-new",
            "--staged",
        ]);
        let out = self.zc_ok(&["reencipher", self.dev(), "--staged"]);
        let out = out.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(out.contains("is enciphered with the CURRENT master key and is being re-enciphered with the NEW master key"), "{out}");
        assert!(out.contains("Staged re-enciphering is initiated"), "{out}");
        self.w.set(CCA, "aes");
        self.zkey(&["reencipher", "--apqns", "08.002f,09.002f", "--complete"]);
        self.zc_ok(&["reencipher", self.dev(), "--complete"]);
    }

    fn luks_dump(&self) -> String {
        let o = std::process::Command::new("cryptsetup")
            .args(["luksDump", self.dev()])
            .output()
            .unwrap();
        assert!(o.status.success());
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

struct CloseGuard<'a>(&'a Volume);

impl Drop for CloseGuard<'_> {
    fn drop(&mut self) {
        let o = self
            .0
            .env("zkey-cryptsetup")
            .args(["close", "enc-disk1"])
            .output()
            .unwrap();
        assert!(
            o.status.success() || std::thread::panicking(),
            "close failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

fn euid() -> u32 {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap_or(1)
}

/// Known bytes: a pattern that differs per position, so a misplaced sector shows.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[i % 4] ^ seed)
        .collect()
}

fn write_data(f: &mut fs::File) -> Vec<(u64, Vec<u8>)> {
    let chunks = vec![
        (0u64, pattern(1 << 20, 1)),
        (5_000_000, pattern(300_001, 2)),
        (20 << 20, pattern(64 << 10, 3)),
    ];
    for (off, data) in &chunks {
        f.seek(SeekFrom::Start(*off)).unwrap();
        f.write_all(data).unwrap();
    }
    chunks
}

fn check_data(f: &mut fs::File, chunks: &[(u64, Vec<u8>)]) {
    for (off, data) in chunks {
        let mut got = vec![0u8; data.len()];
        f.seek(SeekFrom::Start(*off)).unwrap();
        f.read_exact(&mut got).unwrap();
        assert!(got == *data, "data at offset {off} changed");
    }
}

#[test]
fn data_survives_two_rotations_of_repository_and_volume() {
    let Some(v) = Volume::new() else { return };
    let dump = v.luks_dump();
    assert!(
        dump.contains("paes-xts-plain64") && dump.contains("paes-verification-pattern"),
        "{dump}"
    );
    let chunks = v.with_open(write_data);
    let raw_before = fs::read(&v.img).unwrap();
    assert!(
        !raw_before.windows(64).any(|w| w == &chunks[0].1[..64]),
        "the data is stored encrypted"
    );
    for round in 0..2 {
        v.rotate();
        v.with_open(|f| check_data(f, &chunks));
        let dump = v.luks_dump();
        assert!(
            !dump.contains("paes-reencipher"),
            "round {round}: the re-encipher token is gone"
        );
        let st = v.w.key_states();
        assert!(
            st.iter().all(|s| s.1 && s.2.as_deref() == Some("current")),
            "{st:?}"
        );
    }
    // The header still opens with the passphrase, by the real cryptsetup.
    let mut c = std::process::Command::new("cryptsetup")
        .args(["open", "--test-passphrase", v.dev()])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(c.stdin.take().unwrap(), "{PW}").unwrap();
    assert!(c.wait().unwrap().success());
}

#[test]
fn a_volume_left_behind_opens_after_one_set_and_is_refused_after_two() {
    let Some(v) = Volume::new() else { return };
    let chunks = v.with_open(write_data);
    v.w.load_new(CCA, "aes");
    v.w.set(CCA, "aes");
    // One SET: still opens, with a warning that the next SET makes it unusable.
    let out = v.zc_ok(&["open", v.dev(), "enc-disk1"]);
    {
        let _g = CloseGuard(&v);
        assert!(out.contains("OLD master key"), "{out}");
        let mut f = fs::File::open(v.run.join("enc-disk1")).unwrap();
        check_data(&mut f, &chunks);
    }
    v.w.load_new(CCA, "aes");
    v.w.set(CCA, "aes");
    let before = fs::read(&v.img).unwrap();
    let o = v.zc(&["reencipher", v.dev(), "--staged"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no adapter holds as CURRENT or OLD"), "{err}");
    assert!(
        fs::read(&v.img).unwrap() == before,
        "a refused re-encipher changed the volume"
    );
    let o = v.zc(&["open", v.dev(), "enc-disk1"]);
    assert!(!o.status.success(), "a dead key must not open");
    assert!(!v.run.join("enc-disk1").exists());
}
