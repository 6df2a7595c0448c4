//! Issue 11, finding 3: while `zkey-cryptsetup open` serves a volume, the server process holds
//! the volume's effective AES-XTS key and nothing else secret. The test opens a volume, reads
//! every master key of the simulator (AES CURRENT/OLD/NEW, APKA CURRENT/NEW, the EP11 wrapping
//! key, the audit MAC key) from its state file, and scans all readable memory of the running
//! server (`/proc/PID/mem` over the ranges of `/proc/PID/maps`) for each of them, raw and as the
//! hex the state file holds, for the passphrase and for the secure volume key. None may be there.
//!
//! So that it cannot pass because the scan sees nothing, the same scanner must find a marker in
//! this test's own memory, and (on a CPU with AES-NI, whose key schedule starts with the raw
//! key) the effective key in the server's, on locked pages only.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tests::{hex, World};

const CCA: &str = "08.002f,09.002f";

/// A readable range of a process's address space, with whether its pages are locked.
struct Range {
    start: u64,
    end: u64,
    name: String,
    locked: bool,
}

/// The readable ranges of `pid`, from maps, with smaps' `VmFlags` telling locked (`lo`) ones.
fn ranges(pid: &str) -> Vec<Range> {
    let smaps = fs::read_to_string(format!("/proc/{pid}/smaps")).expect("read smaps");
    let mut out: Vec<Range> = Vec::new();
    for line in smaps.lines() {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            if let Some(r) = out.last_mut() {
                r.locked = flags.split_whitespace().any(|f| f == "lo");
            }
            continue;
        }
        let mut f = line.split_whitespace();
        let (Some(span), Some(perms)) = (f.next(), f.next()) else {
            continue;
        };
        let Some((a, b)) = span.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) else {
            continue;
        };
        if perms.len() != 4 {
            continue;
        }
        let name = f.nth(3).unwrap_or("").to_string();
        if perms.starts_with('r') && name != "[vvar]" && name != "[vsyscall]" {
            out.push(Range {
                start,
                end,
                name,
                locked: false,
            });
        } else {
            // Keeps the VmFlags line of an unreadable range from landing on the previous one.
            out.push(Range {
                start: 0,
                end: 0,
                name: String::new(),
                locked: false,
            });
        }
    }
    out.retain(|r| r.end > r.start);
    out
}

/// Where in `pid`'s memory each needle occurs: (needle index, address, range locked?).
fn scan(pid: &str, needles: &[Vec<u8>]) -> Vec<(usize, u64, bool, String)> {
    assert!(needles.iter().all(|n| n.len() >= 8));
    // Candidates by their first 8 bytes: one lookup per offset instead of one per needle.
    let mut prefixes: Vec<(u64, usize)> = needles
        .iter()
        .enumerate()
        .map(|(i, n)| (u64::from_le_bytes(n[..8].try_into().unwrap()), i))
        .collect();
    prefixes.sort();
    let mem = fs::File::open(format!("/proc/{pid}/mem")).expect("open /proc/PID/mem");
    let mut hits = Vec::new();
    let mut readable = 0u64;
    for r in ranges(pid) {
        let mut buf = vec![0u8; (r.end - r.start) as usize];
        // A range can shrink or be unmapped meanwhile; read what can be read.
        let mut got = 0;
        while got < buf.len() {
            match mem.read_at(&mut buf[got..], r.start + got as u64) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        buf.truncate(got);
        readable += got as u64;
        if buf.len() < 8 {
            continue;
        }
        for off in 0..=buf.len() - 8 {
            let p = u64::from_le_bytes(buf[off..off + 8].try_into().unwrap());
            let first = prefixes.partition_point(|(q, _)| *q < p);
            for &(q, i) in &prefixes[first..] {
                if q != p {
                    break;
                }
                if buf[off..].starts_with(&needles[i]) {
                    hits.push((i, r.start + off as u64, r.locked, r.name.clone()));
                }
            }
        }
    }
    assert!(
        readable > 0,
        "nothing of process {pid}'s memory was readable"
    );
    hits
}

/// Every master key and the audit key in the simulator's state: each 64-hex-digit string
/// outside the audit heads (which are MACs, public in the logs).
fn master_keys(state: &serde_json::Value, out: &mut BTreeSet<String>) {
    match state {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                if k != "heads" {
                    master_keys(v, out);
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| master_keys(v, out)),
        serde_json::Value::String(s)
            if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) =>
        {
            out.insert(s.to_ascii_lowercase());
        }
        _ => {}
    }
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    use std::io::Read;
    fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut b)
        .unwrap();
    b
}

struct Closer<'a>(&'a World, &'a Path);

impl Drop for Closer<'_> {
    fn drop(&mut self) {
        let _ = self
            .0
            .cmd("zkey-cryptsetup")
            .env("ZKEY_CRYPTSETUP_RUN_DIR", self.1)
            .args(["close", "m1"])
            .output();
    }
}

#[test]
fn the_server_of_zkey_cryptsetup_open_holds_no_master_key_passphrase_or_secure_key() {
    server_holds_only_the_effective_key(Opener::ZkeyCryptsetup);
}

/// zkey forks the server before it reads the dummy passphrase and after dropping the state it
/// cached, but after listing the repository (secure keys) and using the adapters: freed heap of
/// that work may still hold copies of a master key or a secure key, so only the passphrase is
/// checked here. `zkey-cryptsetup open` is the path that keeps the server clean of all of them.
#[test]
fn the_server_of_zkey_cryptsetup_run_open_holds_no_passphrase() {
    server_holds_only_the_effective_key(Opener::ZkeyRun);
}

/// Who opens the volume.
#[derive(Clone, Copy, PartialEq)]
enum Opener {
    /// `zkey-cryptsetup open`, the passphrase typed (one line of stdin).
    ZkeyCryptsetup,
    /// `zkey cryptsetup --run --open`, with the key's dummy passphrase from the repository.
    ZkeyRun,
}

fn server_holds_only_the_effective_key(opener: Opener) {
    if !Path::new("/dev/fuse").exists() || !nix_euid_is_root() {
        eprintln!("SKIP: the data path needs /dev/fuse and root");
        return;
    }
    let w = World::new();
    // Every register the simulator has, filled: AES OLD, CURRENT and NEW, APKA CURRENT and NEW,
    // the EP11 wrapping key; the audit key is made by the first audited command.
    w.load_new(CCA, "aes");
    w.set(CCA, "aes");
    w.load_new(CCA, "aes");
    w.load_new(CCA, "apka");
    let passphrase = format!("pw-{}", hex(&random_bytes(12)));
    let pass_file = w.root.join("pass");
    fs::write(&pass_file, &passphrase).unwrap();
    let img = w.root.join("disk.img");
    fs::File::create(&img).unwrap().set_len(32 << 20).unwrap();
    let run: PathBuf = w.root.join("run");
    let env = |bin: &str| {
        let mut c = w.cmd(bin);
        c.env("ZKEY_CRYPTSETUP_RUN_DIR", &run)
            .env("ZKEY_CRYPTSETUP_PBKDF", "pbkdf2")
            .env("ZKEY_CRYPTSETUP_PBKDF_FORCE_ITERATIONS", "1000");
        c
    };
    w.ok(
        "zkey",
        &[
            "generate",
            "-N",
            "disk",
            "-a",
            CCA,
            "--xts",
            "-l",
            &format!("{}:m1", img.display()),
            "--set-dummy-passphrase",
            pass_file.to_str().unwrap(),
        ],
    );
    let o = env("zkey")
        .args(["cryptsetup", "-N", "disk", "--run", "--format"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let o = match opener {
        Opener::ZkeyCryptsetup => {
            let mut child = env("zkey-cryptsetup")
                .args(["open", img.to_str().unwrap(), "m1"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            writeln!(child.stdin.take().unwrap(), "{passphrase}").unwrap();
            child.wait_with_output().unwrap()
        }
        Opener::ZkeyRun => env("zkey")
            .args(["cryptsetup", "-N", "disk", "--run", "--open"])
            .output()
            .unwrap(),
    };
    assert!(o.status.success(), "open: {o:?}");
    let _close = Closer(&w, &run);
    let state = fs::read_to_string(run.join(".m1.pid")).unwrap();
    let pid = state
        .lines()
        .find_map(|l| l.strip_prefix("pid="))
        .expect("the state file names the server")
        .to_string();
    // The mount is live: the server answers a read.
    let mut sector = vec![0u8; 4096];
    fs::File::open(run.join("m1"))
        .unwrap()
        .read_exact_at(&mut sector, 0)
        .unwrap();

    let sim_state: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(w.sim.join("state.json")).unwrap()).unwrap();
    let mut keys = BTreeSet::new();
    master_keys(&sim_state, &mut keys);
    assert!(
        sim_state["audit"]["key"].as_str().is_some(),
        "the audit key exists"
    );
    // AES OLD, CURRENT, NEW; APKA CURRENT, NEW; EP11 CURRENT; the audit key.
    assert!(keys.len() >= 7, "only {} keys in the state", keys.len());
    let skey = fs::read(w.repo.join("disk.skey")).unwrap();
    assert_eq!(skey.len(), 128, "an XTS pair of CCA-AESDATA tokens");

    let mut needles: Vec<(String, Vec<u8>)> = Vec::new();
    for k in &keys {
        needles.push((format!("master key {}..", &k[..8]), unhex(k)));
        needles.push((
            format!("master key {}.. (hex)", &k[..8]),
            k.as_bytes().to_vec(),
        ));
    }
    needles.push(("secure key, first token".into(), skey[..64].to_vec()));
    needles.push(("secure key, second token".into(), skey[64..].to_vec()));
    if opener == Opener::ZkeyRun {
        needles.clear();
    }
    needles.push(("the passphrase".into(), passphrase.as_bytes().to_vec()));

    // The scanner finds what is there: a marker in this process's own memory.
    let marker = random_bytes(32);
    let own = scan("self", std::slice::from_ref(&marker));
    assert!(!own.is_empty(), "the scanner did not find its own marker");

    let bytes: Vec<Vec<u8>> = needles.iter().map(|(_, b)| b.clone()).collect();
    let hits = scan(&pid, &bytes);
    let found: BTreeSet<&str> = hits.iter().map(|h| needles[h.0].0.as_str()).collect();
    assert!(
        found.is_empty(),
        "the server {pid} holds {found:?} (at {:?})",
        hits.iter()
            .map(|h| format!("{:#x} {}", h.1, h.3))
            .collect::<Vec<_>>()
    );

    // The key it must hold, it holds, on locked pages: with AES-NI the first round keys of each
    // schedule are the two halves of the effective key.
    let aes_ni = fs::read_to_string("/proc/cpuinfo")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "aes"));
    if aes_ni {
        let sim = ap_sim::sim::Simulator::open(&w.sim).unwrap();
        let key = ap_sim::token::SecureKey::parse(&skey).unwrap();
        let eff = ap_sim::hsm::Hsm::new(sim)
            .effective_key(&key, None)
            .unwrap();
        let e = eff.as_bytes();
        let halves = vec![e[..16].to_vec(), e[32..48].to_vec()];
        let hits = scan(&pid, &halves);
        for half in 0..2 {
            assert!(
                hits.iter().any(|h| h.0 == half),
                "half {half} of the effective key is not in the server's memory: the scan does not see it"
            );
        }
        let unlocked: Vec<String> = hits
            .iter()
            .filter(|h| !h.2)
            .map(|h| format!("{:#x} {}", h.1, h.3))
            .collect();
        assert!(
            unlocked.is_empty(),
            "the effective key is on pages that are not locked: {unlocked:?}"
        );
    }
}

fn nix_euid_is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        .unwrap_or(false)
}
