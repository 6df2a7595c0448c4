//! End-to-end tests of the FUSE data path: the decrypted volume file against an independent
//! decryption of the raw device, parallel readers, block-device semantics at the end, a loop
//! device with ext4 on it, and interoperability with the real `cryptsetup` in both directions.
//!
//! They need root and /dev/fuse; without them each test prints SKIP and passes.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rand::{Rng, RngCore, SeedableRng};
use zkey_cryptsetup::fuse::{self, FuseError, Mapping};
use zkey_cryptsetup::xts::XtsEngine;

fn fuse_usable(test: &str) -> bool {
    if !Path::new("/dev/fuse").exists() {
        eprintln!("SKIP {test}: /dev/fuse is missing (modprobe fuse)");
        return false;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP {test}: needs root to mount FUSE without fusermount3");
        return false;
    }
    true
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn random_key(rng: &mut impl RngCore) -> [u8; 64] {
    let mut k = [0u8; 64];
    rng.fill_bytes(&mut k);
    k
}

/// Decrypts the payload straight from the device file, without FUSE.
fn raw_decrypt(device: &Path, offset: u64, size: u64, ss: usize, key: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; size as usize];
    File::open(device)
        .unwrap()
        .read_exact_at(&mut buf, offset)
        .unwrap();
    XtsEngine::new(key)
        .unwrap()
        .decrypt_sectors_parallel(&mut buf, 0, ss)
        .unwrap();
    buf
}

struct Env {
    _dir: tempfile::TempDir,
    run: PathBuf,
    device: PathBuf,
}

fn env(dev_len: u64) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let device = dir.path().join("device.img");
    let f = File::create(&device).unwrap();
    f.set_len(dev_len).unwrap();
    Env {
        _dir: dir,
        run,
        device,
    }
}

#[test]
fn writes_through_the_file_are_dm_crypt_sectors_on_the_device() {
    if !fuse_usable("writes_through_the_file_are_dm_crypt_sectors_on_the_device") {
        return;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    for (ss, offset) in [(4096usize, 1u64 << 20), (512, 3 * 512)] {
        let size = 4u64 << 20;
        let e = env(offset + size + 8192);
        let key = random_key(&mut rng);
        let m = Mapping::new(&e.device, offset, Some(size), ss as u32, &key).unwrap();
        let file = fuse::open(m, "vol", &e.run).unwrap();
        assert_eq!(file, e.run.canonicalize().unwrap().join("vol"));
        assert_eq!(fs::metadata(&file).unwrap().len(), size);

        // The model: what the device decrypts to now (all-zero ciphertext), then our writes.
        let mut model = raw_decrypt(&e.device, offset, size, ss, &key);
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&file)
            .unwrap();
        for i in 0..200 {
            let len = match i % 4 {
                0 => rng.gen_range(1..64),
                1 => ss * rng.gen_range(1..8),
                2 => rng.gen_range(1..300_000),
                _ => rng.gen_range(1..3 * ss),
            };
            let at = if i % 4 == 1 {
                ss as u64 * rng.gen_range(0..(size - len as u64) / ss as u64)
            } else {
                rng.gen_range(0..size - len as u64)
            };
            let mut data = vec![0u8; len];
            rng.fill_bytes(&mut data);
            f.write_all_at(&data, at).unwrap();
            model[at as usize..at as usize + len].copy_from_slice(&data);
        }
        f.sync_all().unwrap();
        let mut back = vec![0u8; size as usize];
        f.read_exact_at(&mut back, 0).unwrap();
        assert!(
            back == model,
            "read back through FUSE differs (sector size {ss})"
        );
        let raw = raw_decrypt(&e.device, offset, size, ss, &key);
        assert!(
            raw == model,
            "device does not hold dm-crypt sectors (sector size {ss})"
        );
        // Nothing outside the payload was touched.
        let mut outside = vec![0u8; offset as usize];
        File::open(&e.device)
            .unwrap()
            .read_exact_at(&mut outside, 0)
            .unwrap();
        assert!(outside.iter().all(|b| *b == 0));
        let mut tail = vec![0u8; 8192];
        File::open(&e.device)
            .unwrap()
            .read_exact_at(&mut tail, offset + size)
            .unwrap();
        assert!(tail.iter().all(|b| *b == 0));

        // Block device semantics at the end.
        let mut buf = vec![0u8; 4096];
        assert_eq!(f.read_at(&mut buf, size - 100).unwrap(), 100);
        assert_eq!(buf[..100], model[size as usize - 100..]);
        assert_eq!(f.read_at(&mut buf, size).unwrap(), 0);
        assert_eq!(f.read_at(&mut buf, size + 12345).unwrap(), 0);
        let err = f.write_at(&[1, 2, 3], size).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
        assert_eq!(f.write_at(&[9u8; 100], size - 10).unwrap(), 10);
        assert!(f.set_len(size + 4096).is_err(), "the size is fixed");
        drop(f);

        let listed = fuse::list(&e.run).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!((listed[0].name.as_str(), listed[0].size), ("vol", size));
        assert_eq!(listed[0].sector_size, ss as u32);
        let again = Mapping::new(&e.device, offset, Some(size), ss as u32, &key).unwrap();
        assert!(matches!(
            fuse::open(again, "vol", &e.run),
            Err(FuseError::AlreadyOpen(_))
        ));

        fuse::close("vol", &e.run).unwrap();
        assert!(fuse::list(&e.run).unwrap().is_empty());
        assert!(!file.exists(), "close removes the volume file");
        assert!(matches!(
            fuse::close("vol", &e.run),
            Err(FuseError::NotOpen(_))
        ));
        let raw = raw_decrypt(&e.device, offset, size, ss, &key);
        assert_eq!(raw[size as usize - 10..], [9u8; 10]);
    }
}

#[test]
fn many_parallel_readers() {
    if !fuse_usable("many_parallel_readers") {
        return;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let size = 8u64 << 20;
    let e = env(size);
    let key = random_key(&mut rng);
    // Fill the device with random ciphertext; the model is its independent decryption.
    let mut junk = vec![0u8; size as usize];
    rng.fill_bytes(&mut junk);
    fs::write(&e.device, &junk).unwrap();
    let model = raw_decrypt(&e.device, 0, size, 4096, &key);
    let m = Mapping::new(&e.device, 0, None, 4096, &key).unwrap();
    let file = fuse::open(m, "par", &e.run).unwrap();
    std::thread::scope(|s| {
        for t in 0..16u64 {
            let (file, model) = (&file, &model);
            s.spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(100 + t);
                let f = File::open(file).unwrap();
                for _ in 0..150 {
                    let len = rng.gen_range(1..200_000);
                    let at = rng.gen_range(0..size - len as u64);
                    let mut buf = vec![0u8; len];
                    f.read_exact_at(&mut buf, at).unwrap();
                    assert!(
                        buf == model[at as usize..at as usize + len],
                        "thread {t} at {at}+{len}"
                    );
                }
            });
        }
    });
    fuse::close("par", &e.run).unwrap();
}

#[test]
fn sigterm_unmounts_and_the_server_exits() {
    if !fuse_usable("sigterm_unmounts_and_the_server_exits") {
        return;
    }
    let e = env(1 << 20);
    let key = random_key(&mut rand::rngs::StdRng::seed_from_u64(3));
    let file = fuse::open(
        Mapping::new(&e.device, 0, None, 512, &key).unwrap(),
        "t",
        &e.run,
    )
    .unwrap();
    let pid = fuse::list(&e.run).unwrap()[0].pid;
    assert_ne!(pid, std::process::id(), "the server is a separate process");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !fuse::list(&e.run).unwrap().is_empty() || file.exists() {
        assert!(
            Instant::now() < deadline,
            "server still there after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn refuses_bad_names_and_reports_missing_mappings() {
    let e = env(1 << 20);
    let key = random_key(&mut rand::rngs::StdRng::seed_from_u64(4));
    for bad in ["../x", ".x", "a/b", ""] {
        let m = Mapping::new(&e.device, 0, None, 512, &key).unwrap();
        assert!(
            matches!(fuse::open(m, bad, &e.run), Err(FuseError::Name(_))),
            "{bad}"
        );
    }
    fs::create_dir_all(&e.run).unwrap();
    assert!(matches!(
        fuse::close("nothing", &e.run),
        Err(FuseError::NotOpen(_))
    ));
    assert!(fuse::list(&e.run).unwrap().is_empty());
    assert!(fuse::list(&e.run.join("absent")).unwrap().is_empty());
}

#[test]
fn loop_device_with_ext4_survives_close_and_reopen() {
    if !fuse_usable("loop_device_with_ext4_survives_close_and_reopen") {
        return;
    }
    if !have("losetup") || !have("mkfs.ext4") || !Path::new("/dev/loop-control").exists() {
        eprintln!(
            "SKIP loop_device_with_ext4_survives_close_and_reopen: no losetup/mkfs.ext4/loop"
        );
        return;
    }
    let size = 32u64 << 20;
    let offset = 2u64 << 20;
    let e = env(offset + size);
    let key = random_key(&mut rand::rngs::StdRng::seed_from_u64(5));
    let mnt = e.run.parent().unwrap().join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let content: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();

    let file = fuse::open(
        Mapping::new(&e.device, offset, Some(size), 4096, &key).unwrap(),
        "ext",
        &e.run,
    )
    .unwrap();
    let lo = run(Command::new("losetup").args(["-f", "--show"]).arg(&file));
    let cleanup_loop = |lo: &str| {
        let _ = Command::new("umount").arg(&mnt).output();
        let _ = Command::new("losetup").args(["-d", lo]).output();
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run(Command::new("mkfs.ext4").args(["-q", "-F", &lo]));
        run(Command::new("mount").arg(&lo).arg(&mnt));
        fs::write(mnt.join("hello.bin"), &content).unwrap();
        run(Command::new("umount").arg(&mnt));
        // Busy while the loop device holds the file.
        assert!(matches!(
            fuse::close("ext", &e.run),
            Err(FuseError::Busy(_))
        ));
    }));
    cleanup_loop(&lo);
    result.unwrap();
    close_after_loop_detach("ext", &e.run);

    // The plaintext is nowhere on the device: ext4's magic must not be visible in the clear.
    let raw = fs::read(&e.device).unwrap();
    assert!(!raw
        .windows(content.len().min(4096))
        .any(|w| w == &content[..4096]));

    let file = fuse::open(
        Mapping::new(&e.device, offset, Some(size), 4096, &key).unwrap(),
        "ext",
        &e.run,
    )
    .unwrap();
    let lo = run(Command::new("losetup").args(["-f", "--show"]).arg(&file));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run(Command::new("fsck.ext4").args(["-n", "-f", &lo]));
        run(Command::new("mount").arg(&lo).arg(&mnt));
        assert!(fs::read(mnt.join("hello.bin")).unwrap() == content);
    }));
    cleanup_loop(&lo);
    result.unwrap();
    close_after_loop_detach("ext", &e.run);
}

/// `losetup -d` only marks a loop device for removal while something (udev's blkid probe after
/// mkfs or umount) still has it open; until it is really gone the file is busy.
fn close_after_loop_detach(name: &str, run: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match fuse::close(name, run) {
            Err(FuseError::Busy(_)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            other => return other.unwrap(),
        }
    }
}

fn luks_format_args(vk: &Path, pw: &Path) -> Vec<String> {
    [
        "-q",
        "--type",
        "luks2",
        "--cipher",
        "aes-xts-plain64",
        "--key-size",
        "512",
        "--volume-key-file",
        vk.to_str().unwrap(),
        "--key-file",
        pw.to_str().unwrap(),
        "--pbkdf",
        "pbkdf2",
        "--pbkdf-force-iterations",
        "1000",
        "--sector-size",
        "4096",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn segment0(header: &Path) -> (u64, u32) {
    let json = run(Command::new("cryptsetup")
        .args(["luksDump", "--dump-json-metadata"])
        .arg(header));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let seg = &v["segments"]["0"];
    assert_eq!(seg["encryption"], "aes-xts-plain64");
    (
        seg["offset"].as_str().unwrap().parse().unwrap(),
        seg["sector_size"].as_u64().unwrap() as u32,
    )
}

/// Data written through our file, then decrypted in place by `cryptsetup reencrypt --decrypt`
/// (offline; cryptsetup only supports that with a detached header and data offset 0).
#[test]
fn cryptsetup_decrypts_what_we_wrote() {
    if !fuse_usable("cryptsetup_decrypts_what_we_wrote") {
        return;
    }
    if !have("cryptsetup") {
        eprintln!("SKIP cryptsetup_decrypts_what_we_wrote: no cryptsetup (apt-get install cryptsetup-bin)");
        return;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(6);
    let size = 8u64 << 20;
    let e = env(size);
    let dir = e.run.parent().unwrap().to_path_buf();
    let (vk, pw, hdr) = (dir.join("vk"), dir.join("pw"), dir.join("hdr"));
    let key = random_key(&mut rng);
    fs::write(&vk, key).unwrap();
    fs::write(&pw, b"test passphrase").unwrap();
    run(Command::new("cryptsetup")
        .arg("luksFormat")
        .args(luks_format_args(&vk, &pw))
        .arg("--header")
        .arg(&hdr)
        .arg(&e.device));
    let (offset, ss) = segment0(&hdr);
    assert_eq!((offset, ss), (0, 4096));

    let mut plain = vec![0u8; size as usize];
    rng.fill_bytes(&mut plain);
    let file = fuse::open(
        Mapping::new(&e.device, offset, None, ss, &key).unwrap(),
        "cs",
        &e.run,
    )
    .unwrap();
    let f = OpenOptions::new().write(true).open(&file).unwrap();
    f.write_all_at(&plain, 0).unwrap();
    f.sync_all().unwrap();
    drop(f);
    fuse::close("cs", &e.run).unwrap();
    assert!(
        fs::read(&e.device).unwrap() != plain,
        "the device holds ciphertext"
    );

    run(Command::new("cryptsetup")
        .args([
            "reencrypt",
            "--decrypt",
            "-q",
            "--force-offline-reencrypt",
            "--key-file",
        ])
        .arg(&pw)
        .arg("--header")
        .arg(&hdr)
        .arg(&e.device));
    assert!(
        fs::read(&e.device).unwrap() == plain,
        "cryptsetup's decryption differs from what we wrote"
    );
}

/// Data encrypted in place by `cryptsetup reencrypt --encrypt` (header in front, real data
/// offset), read back through our file.
#[test]
fn we_read_what_cryptsetup_encrypted() {
    if !fuse_usable("we_read_what_cryptsetup_encrypted") {
        return;
    }
    if !have("cryptsetup") {
        eprintln!("SKIP we_read_what_cryptsetup_encrypted: no cryptsetup (apt-get install cryptsetup-bin)");
        return;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let reduce = 16u64 << 20;
    let e = env(0);
    let dir = e.run.parent().unwrap().to_path_buf();
    let (vk, pw) = (dir.join("vk"), dir.join("pw"));
    let key = random_key(&mut rng);
    fs::write(&vk, key).unwrap();
    fs::write(&pw, b"test passphrase").unwrap();
    let mut plain = vec![0u8; 24 << 20];
    rng.fill_bytes(&mut plain);
    fs::write(&e.device, &plain).unwrap();
    run(Command::new("cryptsetup")
        .args([
            "reencrypt",
            "--encrypt",
            "--reduce-device-size",
            &reduce.to_string(),
        ])
        .args(luks_format_args(&vk, &pw))
        .arg(&e.device));
    let (offset, ss) = segment0(&e.device);
    assert!(offset > 0);
    // What cryptsetup kept: the first (size - reduce) bytes of the original data.
    let kept = plain.len() - reduce as usize;

    let file = fuse::open(
        Mapping::new(&e.device, offset, None, ss, &key).unwrap(),
        "enc",
        &e.run,
    )
    .unwrap();
    let mut back = vec![0u8; kept];
    File::open(&file)
        .unwrap()
        .read_exact_at(&mut back, 0)
        .unwrap();
    fuse::close("enc", &e.run).unwrap();
    assert!(
        back == plain[..kept],
        "our decryption differs from what cryptsetup encrypted"
    );
}
