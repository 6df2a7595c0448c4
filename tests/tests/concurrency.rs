//! Concurrency stress: zkey and zkey-cryptsetup processes and a TKE race on one repository and
//! one simulator, for a bounded number of rounds, and then nothing may be corrupt or lost.
//!
//! Racing: two generators (`zkey generate`), a re-encipher loop (`zkey reencipher` staged,
//! in place from OLD, `--complete`), readers (`zkey list --json`, `zkey validate --json`), a
//! LUKS2 volume's `zkey-cryptsetup reencipher`/`validate`, and the security officer loading and
//! SETting new AES master keys (`ap-sim tke load-new` / `set`) in between, uncoordinated.
//!
//! What must hold, during and after:
//! - every reader sees a whole repository: `list --json` parses and reports no damaged key at
//!   any time (changes are atomic and under the repository lock);
//! - every generated key is there at the end (no lost key), with no temporary file left over;
//! - every key is valid with the verification pattern it was made with, or, when the master
//!   key moved twice before the re-encipher loop reached it, reported as lost with a reason;
//!   never a wrong VP (a swapped or torn key) and never a silent failure;
//! - a command that loses a race fails with a message, never a panic;
//! - with `ZKEY_LOCK_WAIT=0` and the lock held, zkey fails at once with the "busy" error and
//!   changes nothing.

use std::fs;
use std::io::Write;
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use ap_sim::durable::{Lock, LockKind};
use tests::World;

const CCA: &str = "08.002f,09.002f";
const PW: &str = "concurrency passphrase";
/// Keys each generator makes.
const KEYS_PER_GENERATOR: usize = 10;
/// Master key rotations (load-new, then SET) the TKE makes.
const ROTATIONS: usize = 3;

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A command that may lose a race must still end as a program: success, or a failure that
/// says why. A panic or a signal is a bug.
fn no_crash(what: &str, o: &Output) {
    let t = text(o);
    assert!(o.status.code().is_some(), "{what} died: {}\n{t}", o.status);
    assert!(!t.contains("panicked"), "{what} panicked:\n{t}");
    if !o.status.success() {
        assert!(
            !String::from_utf8_lossy(&o.stderr).trim().is_empty()
                || !String::from_utf8_lossy(&o.stdout).trim().is_empty(),
            "{what} failed without saying why"
        );
    }
}

/// `list --json` must parse and show no damaged key, whenever it runs.
fn check_list(w: &World) -> Vec<String> {
    let o = w.run("zkey", &["list", "--json"]);
    assert!(o.status.success(), "list failed: {}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("list --json is JSON");
    let damaged = v["damaged"].as_array().expect("damaged");
    assert!(damaged.is_empty(), "damaged keys seen: {damaged:?}");
    v["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k["name"].as_str().expect("name").to_string())
        .collect()
}

fn zkey_cryptsetup(w: &World, run: &std::path::Path, args: &[&str]) -> Output {
    let mut child = w
        .cmd("zkey-cryptsetup")
        .env("ZKEY_CRYPTSETUP_RUN_DIR", run)
        .env("ZKEY_CRYPTSETUP_PBKDF", "pbkdf2")
        .env("ZKEY_CRYPTSETUP_PBKDF_FORCE_ITERATIONS", "1000")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Typed once; a command that needs no passphrase just never reads it.
    let _ = writeln!(child.stdin.take().expect("stdin"), "{PW}");
    child.wait_with_output().expect("wait")
}

#[test]
fn racing_commands_leave_no_damaged_or_lost_key() {
    let w = World::new();
    // A LUKS2 volume with a repository key, formatted before the race.
    let img = w.root.join("disk.img");
    fs::File::create(&img).unwrap().set_len(32 << 20).unwrap();
    let pass = w.root.join("disk.pass");
    fs::write(&pass, PW).unwrap();
    let run = w.root.join("run");
    let vol = format!("{}:enc-disk", img.display());
    w.ok(
        "zkey",
        &[
            "generate",
            "-N",
            "disk",
            "-a",
            CCA,
            "-x",
            "-l",
            &vol,
            "--set-dummy-passphrase",
            pass.to_str().unwrap(),
        ],
    );
    let o = w
        .cmd("zkey")
        .env("ZKEY_CRYPTSETUP_RUN_DIR", &run)
        .env("ZKEY_CRYPTSETUP_PBKDF", "pbkdf2")
        .env("ZKEY_CRYPTSETUP_PBKDF_FORCE_ITERATIONS", "1000")
        .args(["cryptsetup", "-N", "disk", "--run", "--format"])
        .output()
        .unwrap();
    assert!(o.status.success(), "format: {}", text(&o));
    let dev = img.to_str().unwrap();

    let generated = Mutex::new(vec!["disk".to_string()]);
    // The writers (generators, TKE) run a fixed number of rounds; the others loop while any
    // writer is still at work, and at least a few rounds, so that they overlap the writers.
    let writers = AtomicUsize::new(3);
    let racing = || writers.load(Ordering::SeqCst) > 0;
    let done = || {
        writers.fetch_sub(1, Ordering::SeqCst);
    };
    let lists = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let gens: Vec<_> = (0..2)
            .map(|g| {
                let (w, generated, done) = (&w, &generated, &done);
                s.spawn(move || {
                    for i in 0..KEYS_PER_GENERATOR {
                        let name = format!("gen{g}-{i}");
                        let o = w.run("zkey", &["generate", "-N", &name, "-a", CCA, "-x"]);
                        no_crash("generate", &o);
                        // The TKE loads and SETs both APQNs in one atomic change, so the
                        // APQN cross-check never sees them disagree: generate must work.
                        assert!(o.status.success(), "generate {name}: {}", text(&o));
                        generated.lock().unwrap().push(name);
                    }
                    done();
                })
            })
            .collect();
        s.spawn(|| {
            for _ in 0..ROTATIONS {
                w.load_new(CCA, "aes");
                std::thread::sleep(std::time::Duration::from_millis(300));
                w.set(CCA, "aes");
                std::thread::sleep(std::time::Duration::from_millis(300));
            }
            done();
        });
        s.spawn(|| {
            let mut round = 0;
            while racing() || round < 4 {
                for args in [
                    &["reencipher", "--staged"][..],
                    &["reencipher"][..],
                    &["reencipher", "--complete"][..],
                ] {
                    no_crash("zkey reencipher", &w.run("zkey", args));
                }
                round += 1;
            }
        });
        s.spawn(|| {
            let mut round = 0;
            while racing() || round < 4 {
                let o = zkey_cryptsetup(&w, &run, &["reencipher", dev]);
                no_crash("zkey-cryptsetup reencipher", &o);
                let o = zkey_cryptsetup(&w, &run, &["validate", dev]);
                no_crash("zkey-cryptsetup validate", &o);
                round += 1;
            }
        });
        s.spawn(|| {
            while racing() {
                check_list(&w);
                let o = w.run("zkey", &["validate", "--json"]);
                no_crash("validate", &o);
                let _: serde_json::Value =
                    serde_json::from_slice(&o.stdout).expect("validate --json is JSON");
                lists.fetch_add(1, Ordering::SeqCst);
            }
        });
        for g in gens {
            g.join().expect("generator");
        }
    });
    assert!(
        lists.load(Ordering::SeqCst) > 0,
        "the readers never ran during the race"
    );

    // No lost key, no damage, no leftovers of interrupted writes.
    let names = check_list(&w);
    for n in generated.lock().unwrap().iter() {
        assert!(
            names.contains(n),
            "key {n} was lost; the repository has {names:?}"
        );
    }
    let leftovers: Vec<_> = w
        .repo_files()
        .into_iter()
        .filter(|f| f.contains(".tmp."))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

    // Every key valid with its own VP, or lost (the master key moved twice before the
    // re-encipher loop reached it) and reported so.
    let v = w.json("zkey", &["validate", "--json"]);
    eprintln!(
        "after the race: {} keys, {} valid; {} list/validate rounds overlapped the writers",
        v["keys"].as_array().map_or(0, Vec::len),
        v["summary"]["valid"],
        lists.load(Ordering::SeqCst)
    );
    for k in v["keys"].as_array().expect("keys") {
        let name = k["name"].as_str().unwrap();
        assert_eq!(k["vp_mismatch"], false, "{name} has another key's VP: {k}");
        if k["valid"] != true {
            assert!(
                k["error"].is_string(),
                "{name} invalid without a reason: {k}"
            );
            assert_eq!(
                k["risk"]["risk"], "lost",
                "{name} invalid but not lost: {k}"
            );
        }
    }
    // The volume's header is whole: cryptsetup reads it, and zkey-cryptsetup validates it or
    // says the key is gone.
    let dump = std::process::Command::new("cryptsetup")
        .args(["luksDump", dev])
        .output()
        .unwrap();
    assert!(dump.status.success(), "luksDump: {}", text(&dump));
    let o = zkey_cryptsetup(&w, &run, &["validate", dev]);
    no_crash("final zkey-cryptsetup validate", &o);
    assert!(!text(&o).contains("malformed"), "{}", text(&o));
}

#[test]
fn busy_repository_fails_at_once_with_zero_wait() {
    let w = World::new();
    w.ok("zkey", &["generate", "-N", "first", "-a", CCA]);
    let before = w.repo_snapshot();
    let busy = |args: &[&str]| {
        let t0 = std::time::Instant::now();
        let o = w
            .cmd("zkey")
            .env("ZKEY_LOCK_WAIT", "0")
            .args(args)
            .output()
            .unwrap();
        assert!(!o.status.success(), "{args:?} succeeded with the lock held");
        let t = text(&o);
        assert!(
            t.contains("another zkey process holds the repository lock"),
            "{args:?}: {t}"
        );
        assert!(t0.elapsed().as_secs() < 10, "{args:?} waited");
    };
    let lock = w.repo.join(".lock");
    {
        let _held = Lock::acquire(&lock, LockKind::Exclusive).unwrap();
        busy(&["generate", "-N", "second", "-a", CCA]);
        busy(&["list"]);
        busy(&["validate"]);
        busy(&["reencipher", "--complete"]);
        // No zkey command is between an intent and its result while verify reads.
        busy(&["audit", "verify"]);
    }
    {
        // Readers share the lock; writers still may not enter.
        let _held = Lock::acquire(&lock, LockKind::Shared).unwrap();
        let o = w
            .cmd("zkey")
            .env("ZKEY_LOCK_WAIT", "0")
            .arg("list")
            .output()
            .unwrap();
        assert!(o.status.success(), "list under a shared lock: {}", text(&o));
        busy(&["generate", "-N", "second", "-a", CCA]);
        busy(&["remove", "-N", "first", "--force"]);
    }
    assert_eq!(
        w.repo_snapshot(),
        before,
        "a refused command changed the repository"
    );
}
