//! Shared fixtures: a simulator in a tempdir, secure keys, image files, the real cryptsetup.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use ap_sim::hsm::Hsm;
use ap_sim::sim::{Layout, Simulator};
use ap_sim::token::KeyType;
use ap_sim::{Apqn, MkType};
use zkey_cryptsetup::luks2::{FormatOptions, Pbkdf, PbkdfKind};

pub const PW: &[u8] = b"disk1pw";

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub sim: Simulator,
    pub hsm: Hsm,
}

impl Fixture {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let sim = Simulator::init(dir.path().join("sim"), &Layout::default(), false).unwrap();
        let hsm = Hsm::new(sim.clone());
        Fixture { dir, sim, hsm }
    }

    pub fn cca_apqns() -> Vec<Apqn> {
        vec!["08.002f".parse().unwrap(), "09.002f".parse().unwrap()]
    }

    pub fn load_new(&self) {
        self.sim
            .tke_load_random(&Self::cca_apqns(), MkType::Aes)
            .unwrap();
    }

    pub fn set(&self) {
        self.sim.tke_set(&Self::cca_apqns(), MkType::Aes).unwrap();
    }

    /// One full rotation: load NEW, SET.
    pub fn rotate(&self) {
        self.load_new();
        self.set();
    }

    pub fn key(&self, xts: bool) -> Vec<u8> {
        self.hsm
            .generate(KeyType::CcaAesData, 256, xts, None)
            .unwrap()
            .to_bytes()
    }

    pub fn image(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(32 << 20).unwrap();
        p
    }

    pub fn format(&self, name: &str, xts: bool) -> PathBuf {
        let img = self.image(name);
        let key = self.key(xts);
        zkey_cryptsetup::volume::format(
            &self.hsm,
            &img,
            &key,
            &fast(),
            PW,
            &mut zkey_cryptsetup::Recorder::answering(true),
        )
        .unwrap();
        img
    }

    /// The binary with `AP_SIM_DIR` set, low-cost PBKDF and stdin = `input`.
    pub fn run(&self, args: &[&str], input: &[u8]) -> Output {
        run_with(self.sim.dir(), args, input, &[])
    }
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_zkey-cryptsetup"))
}

pub fn run_with(sim: &Path, args: &[&str], input: &[u8], env: &[(&str, &str)]) -> Output {
    use std::io::Write;
    let mut c = Command::new(bin());
    c.args(args)
        .env("AP_SIM_DIR", sim)
        .env_remove("FAILPOINTS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c.spawn().unwrap();
    child.stdin.take().unwrap().write_all(input).ok();
    child.wait_with_output().unwrap()
}

pub fn fast() -> FormatOptions {
    FormatOptions {
        sector_size: 4096,
        pbkdf: Pbkdf::Forced {
            kind: PbkdfKind::Pbkdf2,
            iterations: 1000,
            memory_kb: None,
            parallel: None,
            hash: None,
        },
        label: None,
    }
}

pub fn cryptsetup(args: &[&str], input: &[u8]) -> Output {
    use std::io::Write;
    let mut child = Command::new("cryptsetup")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cryptsetup (cryptsetup-bin) is installed");
    child.stdin.take().unwrap().write_all(input).ok();
    child.wait_with_output().unwrap()
}

pub fn luks_dump(img: &Path) -> String {
    let o = cryptsetup(&["luksDump", img.to_str().unwrap()], b"");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

/// `cryptsetup open --test-passphrase` with `pw` on stdin.
pub fn opens(img: &Path, pw: &[u8]) -> bool {
    cryptsetup(
        &[
            "open",
            "--test-passphrase",
            "--key-file",
            "-",
            img.to_str().unwrap(),
        ],
        pw,
    )
    .status
    .success()
}

pub fn token_json(img: &Path, id: u32) -> Option<serde_json::Value> {
    let o = cryptsetup(
        &[
            "token",
            "export",
            "--token-id",
            &id.to_string(),
            img.to_str().unwrap(),
        ],
        b"",
    );
    o.status
        .success()
        .then(|| serde_json::from_slice(&o.stdout).unwrap())
}

pub fn all_tokens(img: &Path) -> Vec<serde_json::Value> {
    (0..32).filter_map(|i| token_json(img, i)).collect()
}

pub fn token_of(img: &Path, kind: &str) -> Option<serde_json::Value> {
    all_tokens(img).into_iter().find(|t| t["type"] == kind)
}

/// The VP of the volume key, computed from the header through the adapters.
pub fn volume_vp(hsm: &Hsm, img: &Path) -> String {
    let mut vol = zkey_cryptsetup::luks2::Volume::open(img).unwrap();
    let (_, k) = vol.volume_key(PW).unwrap();
    let key = ap_sim::token::SecureKey::parse(&k).unwrap();
    hsm.verification_pattern(&key, None).unwrap().to_string()
}

pub fn header_bytes(img: &Path) -> Vec<u8> {
    let mut b = std::fs::read(img).unwrap();
    b.truncate(16 << 20);
    b
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
/// Collapses whitespace, so that wrapped output compares with a sentence.
pub fn flat(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
