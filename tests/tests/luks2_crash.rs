//! Crash walks over `zkey-cryptsetup reencipher`: kill the binary at the N-th LUKS2 header commit
//! (`FAILPOINTS=luks2=N*off->return`, an abort: no destructors, nothing flushed) for N = 0, 1, 2,
//! ... until the command completes; after each crash the real `cryptsetup open --test-passphrase`
//! must open the volume, a re-run must finish the job, and the volume key's verification pattern
//! must be unchanged.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use ap_sim::hsm::Hsm;
use ap_sim::sim::{Layout, Simulator};
use ap_sim::token::{KeyType, SecureKey};
use ap_sim::{Apqn, MkType};
use zkey_cryptsetup::luks2::{FormatOptions, Pbkdf, PbkdfKind, Volume};

const PW: &[u8] = b"disk1pw";

/// The zkey-cryptsetup binary built with the `failpoints` feature (into target/failpoints, so
/// that the normal binaries never carry crash points), checked to really have them.
fn binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let built = tests::failpoint_bin_dir().join("zkey-cryptsetup");
        assert!(
            has_crash_points(&built),
            "{} has no luks2 crash points",
            built.display()
        );
        built
    })
}

/// Whether `bin` aborts at the first luks2 crash point (format writes the VP token).
fn has_crash_points(bin: &Path) -> bool {
    if !bin.is_file() {
        return false;
    }
    let f = Fixture::new();
    let img = f.image();
    let kf = f.dir.path().join("probe.key");
    std::fs::write(&kf, f.key(true)).unwrap();
    let o = run(
        bin,
        f.sim.dir(),
        &[
            "format",
            img.to_str().unwrap(),
            "-m",
            kf.to_str().unwrap(),
            "-q",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
        ],
        Some("luks2=return"),
    );
    o.status.signal() == Some(libc_sigabrt())
}

fn libc_sigabrt() -> i32 {
    6
}

fn run(bin: &Path, sim: &Path, args: &[&str], failpoints: Option<&str>) -> Output {
    use std::io::Write;
    let mut c = Command::new(bin);
    c.args(args)
        .env("AP_SIM_DIR", sim)
        .env_remove("FAILPOINTS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(fp) = failpoints {
        c.env("FAILPOINTS", fp);
    }
    let mut child = c.spawn().unwrap();
    child.stdin.take().unwrap().write_all(b"disk1pw\n").ok();
    child.wait_with_output().unwrap()
}

struct Fixture {
    dir: tempfile::TempDir,
    sim: Simulator,
    hsm: Hsm,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let sim = Simulator::init(dir.path().join("sim"), &Layout::default(), false).unwrap();
        let hsm = Hsm::new(sim.clone());
        Fixture { dir, sim, hsm }
    }
    fn apqns() -> Vec<Apqn> {
        vec!["08.002f".parse().unwrap(), "09.002f".parse().unwrap()]
    }
    fn load_new(&self) {
        self.sim
            .tke_load_random(&Self::apqns(), MkType::Aes)
            .unwrap();
    }
    fn set(&self) {
        self.sim.tke_set(&Self::apqns(), MkType::Aes).unwrap();
    }
    fn key(&self, xts: bool) -> Vec<u8> {
        self.hsm
            .generate(KeyType::CcaAesData, 256, xts, None)
            .unwrap()
            .to_bytes()
    }
    fn image(&self) -> PathBuf {
        let p = self.dir.path().join("v.img");
        std::fs::File::create(&p)
            .unwrap()
            .set_len(32 << 20)
            .unwrap();
        p
    }
    fn volume(&self) -> PathBuf {
        let img = self.image();
        let opts = FormatOptions {
            sector_size: 4096,
            pbkdf: Pbkdf::Forced {
                kind: PbkdfKind::Pbkdf2,
                iterations: 1000,
                memory_kb: None,
                parallel: None,
                hash: None,
            },
            label: None,
        };
        zkey_cryptsetup::volume::format(
            &self.hsm,
            &img,
            &self.key(true),
            &opts,
            PW,
            &mut zkey_cryptsetup::Recorder::answering(true),
        )
        .unwrap();
        img
    }
    /// The VP of the volume key; of the VP token when the volume key is dead (its master key
    /// gone after two rotations): the adapters cannot compute it then.
    fn vp(&self, img: &Path) -> String {
        let mut vol = Volume::open(img).unwrap();
        let (_, k) = vol.volume_key(PW).unwrap();
        match self
            .hsm
            .verification_pattern(&SecureKey::parse(&k).unwrap(), None)
        {
            Ok(vp) => vp.to_string(),
            Err(_) => vol
                .vp_token()
                .unwrap()
                .unwrap()
                .token
                .verification_pattern
                .to_string(),
        }
    }
    fn pending(&self, img: &Path) -> bool {
        Volume::open(img)
            .unwrap()
            .reencipher_token()
            .unwrap()
            .is_some()
    }
    fn slots(&self, img: &Path) -> usize {
        Volume::open(img).unwrap().keyslots().len()
    }
}

fn opens(img: &Path) -> bool {
    use std::io::Write;
    let mut c = Command::new("cryptsetup")
        .args(["open", "--test-passphrase", "--key-file", "-"])
        .arg(img)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cryptsetup-bin is installed");
    c.stdin.take().unwrap().write_all(PW).ok();
    c.wait().unwrap().success()
}

/// Walks the crash points of `cmd` on fresh set-ups made by `setup`, re-running with `rerun`
/// (when it returns a command) after each crash, and checks with `check` at the end of each walk.
fn walk(
    setup: impl Fn(&Fixture) -> PathBuf,
    cmd: &[&str],
    rerun: impl Fn(&Fixture, &Path) -> Option<Vec<&'static str>>,
    check: impl Fn(&Fixture, &Path),
) -> u32 {
    let bin = binary();
    for n in 0..64 {
        let f = Fixture::new();
        let img = setup(&f);
        let vp = f.vp(&img);
        let mut args: Vec<&str> = cmd.to_vec();
        args.insert(1, img.to_str().unwrap());
        let o = run(
            bin,
            f.sim.dir(),
            &args,
            Some(&format!("luks2={n}*off->return")),
        );
        if o.status.success() {
            check(&f, &img);
            assert_eq!(f.vp(&img), vp);
            return n;
        }
        assert_eq!(
            o.status.signal(),
            Some(libc_sigabrt()),
            "step {n}: not a crash: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            opens(&img),
            "step {n}: the volume does not open after the crash"
        );
        // zkey-cryptsetup records nothing itself; the TKE's log it shares the adapter with
        // stays intact, every TKE action in it done.
        let v = f.sim.tke_audit_log().verify().unwrap();
        assert!(v.intact && v.actions.unknown == 0, "step {n}: {v:?}");
        assert_eq!(
            f.vp(&img),
            vp,
            "step {n}: the volume key changed its AES key"
        );
        if let Some(mut again) = rerun(&f, &img) {
            again.insert(1, img.to_str().unwrap());
            let o = run(bin, f.sim.dir(), &again, None);
            assert!(
                o.status.success(),
                "step {n}: re-run failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        assert!(
            opens(&img),
            "step {n}: the volume does not open after the re-run"
        );
        assert_eq!(f.vp(&img), vp, "step {n}");
        check(&f, &img);
    }
    panic!("the command never completed");
}

#[test]
fn the_test_binary_has_crash_points() {
    assert!(has_crash_points(binary()));
}

#[test]
fn crash_walk_staged_prepare() {
    let steps = walk(
        |f| {
            let img = f.volume();
            f.load_new();
            img
        },
        &["reencipher", "--staged", "-q"],
        |f, img| (!f.pending(img)).then(|| vec!["reencipher", "--staged", "-q"]),
        |f, img| {
            assert!(f.pending(img));
            assert_eq!(f.slots(img), 2, "an orphan keyslot was leaked");
            // And it completes after the SET with the same VP.
            f.set();
            let o = run(
                binary(),
                f.sim.dir(),
                &["reencipher", img.to_str().unwrap(), "--complete", "-q"],
                None,
            );
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            assert!(opens(img));
            assert_eq!(f.slots(img), 1);
        },
    );
    assert!(steps >= 2, "{steps}");
}

#[test]
fn crash_walk_complete() {
    let steps = walk(
        |f| {
            let img = f.volume();
            f.load_new();
            let o = run(
                binary(),
                f.sim.dir(),
                &["reencipher", img.to_str().unwrap(), "--staged", "-q"],
                None,
            );
            assert!(o.status.success());
            f.set();
            img
        },
        &["reencipher", "--complete", "-q"],
        |f, img| {
            f.pending(img)
                .then(|| vec!["reencipher", "--complete", "-q"])
        },
        |f, img| {
            assert!(!f.pending(img));
            assert_eq!(f.slots(img), 1);
        },
    );
    assert!(steps >= 3, "{steps}");
}

#[test]
fn crash_walk_complete_after_two_rotations() {
    let steps = walk(
        |f| {
            let img = f.volume();
            f.load_new();
            let o = run(
                binary(),
                f.sim.dir(),
                &["reencipher", img.to_str().unwrap(), "--staged", "-q"],
                None,
            );
            assert!(o.status.success());
            f.set();
            f.load_new();
            f.set();
            img
        },
        &["reencipher", "--complete", "-q"],
        |f, img| {
            f.pending(img)
                .then(|| vec!["reencipher", "--complete", "-q"])
        },
        |f, img| {
            assert!(!f.pending(img));
            // A crash right after the token moved to the new keyslot leaves the previous
            // unbound keyslot (under OLD) behind: at most that one extra.
            assert!(f.slots(img) <= 2);
        },
    );
    assert!(steps >= 6, "{steps}");
}

#[test]
fn crash_walk_in_place_from_old() {
    let steps = walk(
        |f| {
            let img = f.volume();
            f.load_new();
            f.set();
            img
        },
        &["reencipher", "--in-place", "-q"],
        |f, img| {
            let (_, k) = Volume::open(img).unwrap().volume_key(PW).unwrap();
            let old = f
                .hsm
                .verify(&SecureKey::parse(&k).unwrap(), None)
                .unwrap()
                .register
                == ap_sim::hsm::Register::Old;
            (f.pending(img) || old).then(|| vec!["reencipher", "-q"])
        },
        |f, img| {
            assert!(!f.pending(img));
            assert_eq!(f.slots(img), 1);
            let (_, k) = Volume::open(img).unwrap().volume_key(PW).unwrap();
            assert_eq!(
                f.hsm
                    .verify(&SecureKey::parse(&k).unwrap(), None)
                    .unwrap()
                    .register,
                ap_sim::hsm::Register::Current
            );
        },
    );
    assert!(steps >= 4, "{steps}");
}
