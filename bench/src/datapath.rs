//! The data path: the AES-XTS engine in memory, and a LUKS2 volume served through FUSE.
//!
//! `xts` absorbs what was the `xts-bench` example of zkey-cryptsetup (engine vs `openssl speed`
//! vs the `xts-mode` crate). `fuse` formats a LUKS2 volume with the zkey-cryptsetup library, maps
//! it as `zkey-cryptsetup open` does (unlock, effective key, `zkey_cryptsetup::fuse::open`) and
//! writes then reads the whole payload sequentially with O_DIRECT, so that the page cache serves
//! neither direction and every byte crosses the FUSE server. The baselines are the same engine
//! in memory (what the data path could reach if FUSE and the disk cost nothing) and the
//! underlying image file with O_DIRECT and no encryption (what the disk alone costs).

use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::process::Command;

use aes::cipher::KeyInit;
use anyhow::{bail, Context, Result};
use ap_sim::hsm::Hsm;
use ap_sim::token::KeyType;
use rand::RngCore;
use serde_json::{json, Value};
use zkey_cryptsetup::luks2::{FormatOptions, Pbkdf, PbkdfKind, Volume};
use zkey_cryptsetup::xts::XtsEngine;

use crate::util::{best_gbps, fuse_available, opt, ratio, time, Scratch};
use crate::Args;

const SECTOR: usize = 4096;

/// `openssl speed -mr` prints `+F:<n>:AES-256-XTS:<bytes per second>` for the one block size.
fn openssl_speed(decrypt: bool, seconds: u32) -> Option<f64> {
    let mut cmd = Command::new("openssl");
    cmd.args(["speed", "-mr", "-evp", "aes-256-xts", "-bytes", "4096"])
        .args(["-seconds", &seconds.to_string()]);
    if decrypt {
        cmd.arg("-decrypt");
    }
    let out = cmd.output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter(|l| l.starts_with("+F:"))
        .filter_map(|l| l.rsplit(':').next()?.trim().parse::<f64>().ok())
        .next_back()
        .map(|bps| bps / 1e9)
}

/// Engine throughput in memory over `buf`: (1 thread, all cores), each (encrypt, decrypt).
fn engine_gbps(engine: &XtsEngine, buf: &mut [u8], runs: usize) -> [[f64; 2]; 2] {
    let n = buf.len();
    [
        [
            best_gbps(runs, n, || engine.encrypt_sectors(buf, 0, SECTOR).unwrap()),
            best_gbps(runs, n, || engine.decrypt_sectors(buf, 0, SECTOR).unwrap()),
        ],
        [
            best_gbps(runs, n, || {
                engine.encrypt_sectors_parallel(buf, 0, SECTOR).unwrap()
            }),
            best_gbps(runs, n, || {
                engine.decrypt_sectors_parallel(buf, 0, SECTOR).unwrap()
            }),
        ],
    ]
}

fn random_xts_key() -> [u8; 64] {
    let mut key = [0u8; 64];
    rand::rngs::OsRng.fill_bytes(&mut key);
    key
}

pub fn xts(args: &Args) -> Result<Value> {
    let mib = if args.quick { 64 } else { 256 };
    let bytes = mib << 20;
    let runs = 3;
    let key = random_xts_key();
    let engine = XtsEngine::new(&key).context("random key halves differ")?;
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    let [[enc1, dec1], [encn, decn]] = engine_gbps(&engine, &mut buf, runs);

    let xm = xts_mode::Xts128::new(
        aes::Aes256::new_from_slice(&key[..32]).expect("32 bytes"),
        aes::Aes256::new_from_slice(&key[32..]).expect("32 bytes"),
    );
    let xm_enc = best_gbps(runs, bytes, || {
        for (i, s) in buf.chunks_exact_mut(SECTOR).enumerate() {
            xm.encrypt_sector(s, xts_mode::get_tweak_default(i as u128 * 8));
        }
    });
    let xm_dec = best_gbps(runs, bytes, || {
        for (i, s) in buf.chunks_exact_mut(SECTOR).enumerate() {
            xm.decrypt_sector(s, xts_mode::get_tweak_default(i as u128 * 8));
        }
    });
    let secs = if args.quick { 1 } else { 2 };
    let (ossl_enc, ossl_dec) = (openssl_speed(false, secs), openssl_speed(true, secs));
    let threads = rayon::current_num_threads();

    println!("AES-256-XTS, {mib} MiB in {SECTOR}-byte sectors, best of {runs}, GB/s (10^9 B/s)");
    println!("{:<34} {:>8} {:>8}", "", "encrypt", "decrypt");
    let row = |name: String, e: String, d: String| println!("{name:<34} {e:>8} {d:>8}");
    let f = |v: f64| format!("{v:.2}");
    row("engine, 1 thread".into(), f(enc1), f(dec1));
    row(format!("engine, all cores ({threads})"), f(encn), f(decn));
    row("xts-mode crate, 1 thread".into(), f(xm_enc), f(xm_dec));
    row(
        "openssl speed, 1 thread".into(),
        opt(ossl_enc),
        opt(ossl_dec),
    );
    row(
        "ratio engine(1) / openssl".into(),
        opt(ratio(enc1, ossl_enc)),
        opt(ratio(dec1, ossl_dec)),
    );
    row(
        "ratio engine(1) / xts-mode".into(),
        f(enc1 / xm_enc),
        f(dec1 / xm_dec),
    );
    row(
        format!("ratio engine({threads}) / openssl(1)"),
        opt(ratio(encn, ossl_enc)),
        opt(ratio(decn, ossl_dec)),
    );
    Ok(json!({
        "unit": "GB/s", "mib": mib, "sector_size": SECTOR, "threads": threads,
        "engine_1_thread": {"encrypt": enc1, "decrypt": dec1},
        "engine_all_cores": {"encrypt": encn, "decrypt": decn},
        "xts_mode_crate": {"encrypt": xm_enc, "decrypt": xm_dec},
        "openssl_speed_1_thread": {"encrypt": ossl_enc, "decrypt": ossl_dec},
        "ratio_engine_1_thread_to_openssl": {"encrypt": ratio(enc1, ossl_enc), "decrypt": ratio(dec1, ossl_dec)},
        "ratio_engine_1_thread_to_xts_mode": {"encrypt": enc1 / xm_enc, "decrypt": dec1 / xm_dec},
        "ratio_engine_all_cores_to_openssl": {"encrypt": ratio(encn, ossl_enc), "decrypt": ratio(decn, ossl_dec)},
    }))
}

/// A zeroed heap buffer aligned for O_DIRECT (4096 covers every logical block size in use):
/// `len` bytes at the first 4096-byte boundary of an allocation one alignment larger.
struct Aligned {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl Aligned {
    const ALIGN: usize = 4096;

    fn new(len: usize) -> Aligned {
        let buf = vec![0u8; len + Self::ALIGN];
        let addr = buf.as_ptr() as usize;
        let start = addr.next_multiple_of(Self::ALIGN) - addr;
        Aligned { buf, start, len }
    }
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

/// Sequential write then read of `len` bytes of `path` at `offset` with O_DIRECT, in 1 MiB
/// requests. Returns (write GB/s, read GB/s); the write includes the final fdatasync.
fn sequential_direct(path: &Path, offset: u64, len: usize) -> Result<(f64, f64)> {
    const CHUNK: usize = 1 << 20;
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .with_context(|| format!("open {} with O_DIRECT", path.display()))?;
    let mut buf = Aligned::new(CHUNK);
    rand::rngs::OsRng.fill_bytes(buf.as_mut());
    let (w, wsecs) = time(|| -> std::io::Result<()> {
        for i in 0..len / CHUNK {
            f.write_all_at(buf.as_mut(), offset + (i * CHUNK) as u64)?;
        }
        f.sync_data()
    });
    w.with_context(|| format!("write {}", path.display()))?;
    let (r, rsecs) = time(|| -> std::io::Result<()> {
        for i in 0..len / CHUNK {
            f.read_exact_at(buf.as_mut(), offset + (i * CHUNK) as u64)?;
        }
        Ok(())
    });
    r.with_context(|| format!("read {}", path.display()))?;
    Ok((len as f64 / wsecs / 1e9, len as f64 / rsecs / 1e9))
}

pub fn fuse(args: &Args, scratch: &Scratch) -> Result<Value> {
    if let Err(why) = fuse_available() {
        println!("SKIPPED: the FUSE data path needs root and /dev/fuse ({why})");
        return Ok(json!({"skipped": why}));
    }
    let mib = if args.quick { 64 } else { 256 };
    let bytes = mib << 20;
    let dir = scratch.sub("fuse")?;
    let sim = crate::util::simulator(&dir.join("sim"))?;
    let hsm = Hsm::new(sim);
    // LUKS2's default header area is 16 MiB; the payload follows it.
    let image = dir.join("volume.img");
    let f = std::fs::File::create(&image)?;
    f.set_len(((16 + mib) << 20) as u64)?;
    drop(f);
    let key = hsm.generate(KeyType::CcaAesData, 256, true, None)?;
    let pass = b"bench passphrase";
    let opts = FormatOptions {
        pbkdf: Pbkdf::Forced {
            kind: PbkdfKind::Pbkdf2,
            iterations: 1000,
            memory_kb: None,
            parallel: None,
            hash: None,
        },
        ..FormatOptions::default()
    };
    let mut ui = zkey_cryptsetup::Recorder::answering(true);
    zkey_cryptsetup::volume::format(&hsm, &image, &key.to_bytes(), &opts, pass, &mut ui)?;

    // What `zkey-cryptsetup open` does, with a run directory of our own.
    let mut vol = Volume::open(&image)?;
    let (_, volume_key) = vol.volume_key(pass)?;
    let secure = ap_sim::token::SecureKey::parse(&volume_key)?;
    let effective = hsm.effective_key(&secure, None)?;
    let (offset, sector) = (vol.data_offset_bytes(), vol.sector_size());
    drop(vol);
    let mapping = zkey_cryptsetup::fuse::Mapping::from_effective_key(
        &image, offset, None, sector, effective,
    )?;
    let run = dir.join("run");
    let name = "bench";
    let file = zkey_cryptsetup::fuse::open(mapping, name, &run)?;
    let measured = sequential_direct(&file, 0, bytes);
    // Close before looking at the result: a mount must not outlive the run.
    let closed = zkey_cryptsetup::fuse::close(name, &run);
    let (fuse_w, fuse_r) = measured?;
    closed?;
    let (raw_w, raw_r) = sequential_direct(&image, offset, bytes)?;

    let engine = XtsEngine::new(&random_xts_key()).context("random key halves differ")?;
    let mut buf = vec![0u8; bytes];
    let [[enc1, dec1], [encn, decn]] = engine_gbps(&engine, &mut buf, 2);
    if fuse_w <= 0.0 || fuse_r <= 0.0 {
        bail!("no throughput measured");
    }
    println!(
        "LUKS2 volume through FUSE, {mib} MiB sequential, 1 MiB O_DIRECT requests, GB/s (10^9 B/s)"
    );
    println!("{:<40} {:>8} {:>8}", "", "write", "read");
    println!(
        "{:<40} {:>8.2} {:>8.2}",
        "FUSE volume (encrypt/decrypt)", fuse_w, fuse_r
    );
    println!(
        "{:<40} {:>8.2} {:>8.2}",
        "image file, no encryption", raw_w, raw_r
    );
    println!(
        "{:<40} {:>8.2} {:>8.2}",
        "engine in memory, 1 thread", enc1, dec1
    );
    println!(
        "{:<40} {:>8.2} {:>8.2}",
        "engine in memory, all cores", encn, decn
    );
    println!(
        "{:<40} {:>8.2} {:>8.2}",
        "ratio FUSE / engine all cores",
        fuse_w / encn,
        fuse_r / decn
    );
    println!(
        "{:<40} {:>8.2} {:>8.2}",
        "ratio FUSE / raw file",
        fuse_w / raw_w,
        fuse_r / raw_r
    );
    Ok(json!({
        "unit": "GB/s", "mib": mib, "request_bytes": 1 << 20, "o_direct": true,
        "fuse_volume": {"write": fuse_w, "read": fuse_r},
        "raw_image_file": {"write": raw_w, "read": raw_r},
        "engine_1_thread": {"encrypt": enc1, "decrypt": dec1},
        "engine_all_cores": {"encrypt": encn, "decrypt": decn},
        "ratio_fuse_to_engine_all_cores": {"write": fuse_w / encn, "read": fuse_r / decn},
        "ratio_fuse_to_raw_file": {"write": fuse_w / raw_w, "read": fuse_r / raw_r},
    }))
}
