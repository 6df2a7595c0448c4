//! Throughput of the AES-256-XTS engine against two baselines measured in the same run.
//!
//! ```sh
//! cargo run --release -p zkey-cryptsetup --example xts-bench [-- --json] [--mib N]
//! ```
//!
//! Encrypts and decrypts N MiB (default 256) in 4 KiB sectors with the engine on one thread and
//! on all cores, with the `xts-mode` crate (one block at a time, one thread), and runs
//! `openssl speed -evp aes-256-xts -bytes 4096 -seconds 2` (one thread). Prints GB/s (10^9 B/s)
//! and the engine's ratio to each baseline; `--json` prints one JSON object instead.

use std::process::Command;
use std::time::Instant;

use aes::cipher::KeyInit;
use rand::RngCore;
use zkey_cryptsetup::xts::XtsEngine;

const SECTOR: usize = 4096;

fn best_of<F: FnMut()>(runs: usize, bytes: usize, mut f: F) -> f64 {
    // Best of several runs: the question is what the code can do, not how noisy the machine is.
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            bytes as f64 / t.elapsed().as_secs_f64() / 1e9
        })
        .fold(0.0, f64::max)
}

/// `openssl speed -mr` prints `+F:<n>:AES-256-XTS:<bytes per second>` for the one block size.
fn openssl_speed(decrypt: bool) -> Option<f64> {
    let mut cmd = Command::new("openssl");
    cmd.args([
        "speed",
        "-mr",
        "-evp",
        "aes-256-xts",
        "-bytes",
        "4096",
        "-seconds",
        "2",
    ]);
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

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let json = args.iter().any(|a| a == "--json");
    let mib: usize = args
        .iter()
        .position(|a| a == "--mib")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let bytes = mib * 1024 * 1024;

    let mut key = [0u8; 64];
    rand::rngs::OsRng.fill_bytes(&mut key);
    let engine = XtsEngine::new(&key).expect("random key halves differ");
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buf);

    let runs = 3;
    let enc1 = best_of(runs, bytes, || {
        engine.encrypt_sectors(&mut buf, 0, SECTOR).unwrap()
    });
    let dec1 = best_of(runs, bytes, || {
        engine.decrypt_sectors(&mut buf, 0, SECTOR).unwrap()
    });
    let encn = best_of(runs, bytes, || {
        engine
            .encrypt_sectors_parallel(&mut buf, 0, SECTOR)
            .unwrap()
    });
    let decn = best_of(runs, bytes, || {
        engine
            .decrypt_sectors_parallel(&mut buf, 0, SECTOR)
            .unwrap()
    });

    let xm = xts_mode::Xts128::new(
        aes::Aes256::new_from_slice(&key[..32]).unwrap(),
        aes::Aes256::new_from_slice(&key[32..]).unwrap(),
    );
    let xm_enc = best_of(runs, bytes, || {
        for (i, s) in buf.chunks_exact_mut(SECTOR).enumerate() {
            xm.encrypt_sector(s, xts_mode::get_tweak_default(i as u128 * 8));
        }
    });
    let xm_dec = best_of(runs, bytes, || {
        for (i, s) in buf.chunks_exact_mut(SECTOR).enumerate() {
            xm.decrypt_sector(s, xts_mode::get_tweak_default(i as u128 * 8));
        }
    });
    let ossl_enc = openssl_speed(false);
    let ossl_dec = openssl_speed(true);
    let threads = rayon::current_num_threads();
    let ratio = |a: f64, b: Option<f64>| b.filter(|b| *b > 0.0).map(|b| a / b);

    if json {
        let v = serde_json::json!({
            "cipher": "aes-256-xts", "sector_size": SECTOR, "mib": mib, "threads": threads,
            "unit": "GB/s",
            "engine_1_thread": {"encrypt": enc1, "decrypt": dec1},
            "engine_all_cores": {"encrypt": encn, "decrypt": decn},
            "xts_mode_crate": {"encrypt": xm_enc, "decrypt": xm_dec},
            "openssl_speed_1_thread": {"encrypt": ossl_enc, "decrypt": ossl_dec},
            "ratio_engine_1_thread_to_openssl": {"encrypt": ratio(enc1, ossl_enc), "decrypt": ratio(dec1, ossl_dec)},
            "ratio_engine_1_thread_to_xts_mode": {"encrypt": enc1 / xm_enc, "decrypt": dec1 / xm_dec},
            "ratio_engine_all_cores_to_openssl": {"encrypt": ratio(encn, ossl_enc), "decrypt": ratio(decn, ossl_dec)},
        });
        println!("{v}");
        return;
    }
    let f = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.2}"));
    println!("AES-256-XTS, {mib} MiB in {SECTOR}-byte sectors, best of {runs}, GB/s (10^9 B/s)");
    println!("{:<34} {:>8} {:>8}", "", "encrypt", "decrypt");
    println!("{:<34} {:>8.2} {:>8.2}", "engine, 1 thread", enc1, dec1);
    println!(
        "{:<34} {:>8.2} {:>8.2}",
        format!("engine, all cores ({threads})"),
        encn,
        decn
    );
    println!(
        "{:<34} {:>8.2} {:>8.2}",
        "xts-mode crate, 1 thread", xm_enc, xm_dec
    );
    println!(
        "{:<34} {:>8} {:>8}",
        "openssl speed, 1 thread",
        f(ossl_enc),
        f(ossl_dec)
    );
    println!(
        "{:<34} {:>8} {:>8}",
        "ratio engine(1) / openssl",
        f(ratio(enc1, ossl_enc)),
        f(ratio(dec1, ossl_dec))
    );
    println!(
        "{:<34} {:>8.2} {:>8.2}",
        "ratio engine(1) / xts-mode",
        enc1 / xm_enc,
        dec1 / xm_dec
    );
    println!(
        "{:<34} {:>8} {:>8}",
        format!("ratio engine({threads}) / openssl(1)"),
        f(ratio(encn, ossl_enc)),
        f(ratio(decn, ossl_dec))
    );
}
