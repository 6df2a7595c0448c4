//! The repository at scale: the phases of a master key change over N keys, driven through the
//! zkey library (repository, keyops, reencipher) and the ap-sim HSM, as one `zkey` process per
//! command would, not one process per key.
//!
//! Phases, in order, each in a child process (this binary re-executed with [`PHASE_ARG`]) so
//! that the peak RSS it reports (its `VmHWM`) is that phase's alone:
//!
//! | phase      | what it does                                           | atomic writes per key |
//! |------------|--------------------------------------------------------|-----------------------|
//! | `generate` | `zkey generate -N k<i> -a 08.002f,09.002f -x` N times, one lock | 2 (.skey, .info) |
//! | `validate` | `zkey validate` (APQN cross-check on)                  | 0                     |
//! | `staged`   | `zkey reencipher --to-new --staged` after a TKE load   | 1 (.renc)             |
//! | `complete` | `zkey reencipher --complete` after the TKE SET         | 2 + a removal         |
//! | `list`     | `zkey list` (status of every key)                      | 0                     |
//!
//! The baseline is the I/O floor on the same disk, sampled just before and after each phase: files
//! written with `ap_sim::durable::write_atomic` (temporary file, fsync, rename, directory fsync:
//! what the repository does per file), N of them (at most 2,000, scaled to N) times the writes
//! per key of the phase; for the read-only phases, reading every file of the repository once. `ratio` is phase time / floor: how much
//! the phase costs beyond the disk work it cannot avoid.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ap_sim::registers::MkType;
use ap_sim::sim::Simulator;
use ap_sim::sysfs::SysfsTree;
use ap_sim::token::KeyType;
use serde_json::{json, Value};
use zkey::adapters::Adapters;
use zkey::keyops::{self, NewKey};
use zkey::reencipher::{self, Mode, Request, Selection, Way};
use zkey::{KeyName, Repository, SectorSize, VolumeType};

use crate::util::{cca_apqns, time, Scratch};
use crate::Args;

/// The hidden first argument that makes this binary run one phase.
pub const PHASE_ARG: &str = "__repo-phase";

const PHASES: [(&str, f64); 5] = [
    ("generate", 2.0),
    ("validate", 0.0),
    ("staged", 1.0),
    ("complete", 3.0),
    ("list", 0.0),
];

const LOCK_WAIT: Duration = Duration::from_secs(60);

/// The most atomic writes a floor measurement makes; beyond it the time is scaled to N.
const FLOOR_SAMPLE: usize = 2_000;

fn adapters(sim_dir: &Path) -> Result<Adapters> {
    let sim = Simulator::open(sim_dir)?;
    Ok(Adapters {
        sysfs: SysfsTree::new(sim.sys_root()),
        hsm: ap_sim::hsm::Hsm::new(sim),
    })
}

/// One phase, in the child: `PHASE SIM_DIR REPO_DIR N`. Prints `{"seconds", "ok", "detail"}`.
pub fn child_main(args: Vec<String>) -> Result<()> {
    let [phase, sim_dir, repo_dir, n] = &args[..] else {
        bail!("usage: bench {PHASE_ARG} PHASE SIM_DIR REPO_DIR N");
    };
    let n: usize = n.parse()?;
    let ad = adapters(Path::new(sim_dir))?;
    // Authenticated as the CLI's: every .info MAC is part of the cost.
    let repo = Repository::open(repo_dir)?
        .authenticated_by(std::sync::Arc::new(ad.hsm.simulator().clone()));
    let ((ok, detail), seconds) = time(|| run_phase(phase, &ad, &repo, n));
    let ok = ok?;
    let out = json!({"seconds": seconds, "ok": ok, "detail": detail, "vm_hwm_kib": vm_hwm_kib()});
    println!("{out}");
    Ok(())
}

/// This process's peak resident set (`VmHWM` of /proc/self/status), in KiB. Not getrusage's
/// `ru_maxrss`: Linux carries that across execve, so a child forked from a parent that had
/// touched 256 MiB (the data path suites) reported the parent's peak.
fn vm_hwm_kib() -> Option<u64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Returns (keys that came out as expected, a short description).
fn run_phase(phase: &str, ad: &Adapters, repo: &Repository, n: usize) -> (Result<usize>, String) {
    let r = (|| -> Result<(usize, String)> {
        match phase {
            "generate" => {
                let spec = NewKey {
                    key_type: KeyType::CcaAesData,
                    bits: 256,
                    xts: true,
                    description: Some("bench".into()),
                    apqns: cca_apqns(),
                    volumes: vec![],
                    volume_type: VolumeType::Luks2,
                    sector_size: SectorSize::DEFAULT,
                    apqn_check: true,
                };
                let w = repo.write(LOCK_WAIT)?;
                for i in 0..n {
                    let name = KeyName::new(&format!("k{i:06}"))?;
                    // The CLI's operation: audit record and staging into an open change
                    // included.
                    zkey::ops::generate(
                        &w,
                        ad,
                        &name,
                        &spec,
                        zkey::ops::Source::Random,
                        true,
                        None,
                    )?;
                }
                Ok((n, "keys stored".into()))
            }
            "validate" | "list" => {
                let r = repo.read(LOCK_WAIT)?;
                let check = phase == "validate";
                let mut valid = 0;
                let mut out = Vec::new();
                for e in r.entries()? {
                    let e = e.map_err(|d| anyhow::anyhow!("{d}"))?;
                    let st = keyops::entry_status(ad, &e, check);
                    valid += usize::from(st.valid);
                    if !check {
                        // What `list --json` prints: the rendering is part of the cost.
                        out.push(serde_json::to_value(&st)?);
                    }
                }
                std::hint::black_box(out);
                Ok((valid, "valid keys".into()))
            }
            "staged" | "complete" => {
                let opts = if phase == "staged" {
                    Request {
                        way: Some(Way::ToNew),
                        mode: Some(Mode::Staged),
                    }
                } else {
                    Request {
                        way: None,
                        mode: Some(Mode::Complete),
                    }
                };
                let w = repo.write(LOCK_WAIT)?;
                let report = zkey::ops::reencipher(
                    &w,
                    ad,
                    &Selection::default(),
                    &opts,
                    true,
                    &mut zkey_cryptsetup::Recorder::answering(true),
                    |_| {},
                )?
                .report;
                if report.summary.failed > 0 {
                    let first = report
                        .keys
                        .iter()
                        .find(|k| matches!(k.outcome, reencipher::Outcome::Failed { .. }));
                    bail!("{} failed, e.g. {first:?}", report.summary.failed);
                }
                Ok((report.summary.reenciphered, "re-enciphered".into()))
            }
            other => bail!("unknown phase {other}"),
        }
    })();
    match r {
        Ok((k, d)) => (Ok(k), d),
        Err(e) => (Err(e), String::new()),
    }
}

/// What a child phase reported, with its peak RSS.
struct PhaseRun {
    seconds: f64,
    ok: usize,
    maxrss_mib: f64,
}

fn run_child(phase: &str, sim: &Path, repo: &Path, n: usize) -> Result<PhaseRun> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .arg(PHASE_ARG)
        .args([phase.as_ref(), sim.as_os_str(), repo.as_os_str()])
        .arg(n.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .context("start the phase")?;
    let mut out = String::new();
    child
        .stdout
        .take()
        .expect("piped")
        .read_to_string(&mut out)?;
    let status = child.wait()?;
    if !status.success() {
        bail!("phase {phase} failed ({status})");
    }
    let v: Value = serde_json::from_str(out.trim()).context("phase output")?;
    Ok(PhaseRun {
        seconds: v["seconds"].as_f64().context("seconds")?,
        ok: v["ok"].as_u64().context("ok")? as usize,
        maxrss_mib: v["vm_hwm_kib"].as_f64().context("VmHWM")? / 1024.0,
    })
}

/// Seconds to write `n` files of `size` bytes atomically and durably in a fresh directory.
fn write_floor(dir: &Path, n: usize, size: usize) -> Result<f64> {
    std::fs::create_dir_all(dir)?;
    let data = vec![0x5au8; size];
    let (r, secs) = time(|| -> std::io::Result<()> {
        for i in 0..n {
            ap_sim::durable::write_atomic(&dir.join(format!("f{i:06}")), &data, 0o660)?;
        }
        Ok(())
    });
    r?;
    std::fs::remove_dir_all(dir)?;
    Ok(secs)
}

/// Seconds to read every file of `dir` once.
fn read_floor(dir: &Path) -> Result<f64> {
    let files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    let (r, secs) = time(|| -> std::io::Result<usize> {
        files
            .iter()
            .map(|p| std::fs::read(p).map(|d| d.len()))
            .sum()
    });
    r?;
    Ok(secs)
}

/// The sizes to run: `--scale` as given, else 1,000 (`--quick`) or 1,000 and 10,000.
fn scales(args: &Args) -> Vec<usize> {
    if !args.scales.is_empty() {
        args.scales.clone()
    } else if args.quick {
        vec![1_000]
    } else {
        vec![1_000, 10_000]
    }
}

pub fn run(args: &Args, scratch: &Scratch) -> Result<Value> {
    let apqns = cca_apqns();
    let mut per_scale = serde_json::Map::new();
    // keys/s and ratio to the floor per phase and scale, for the linearity verdict.
    let mut rates: Vec<(usize, Vec<f64>, Vec<f64>)> = Vec::new();
    println!(
        "{:>7} {:<9} {:>9} {:>10} {:>9} {:>9} {:>7}",
        "keys", "phase", "seconds", "keys/s", "peak MiB", "floor s", "ratio"
    );
    for n in scales(args) {
        let dir = scratch.sub(&format!("repo-{n}"))?;
        let (sim_dir, repo_dir) = (dir.join("sim"), dir.join("repository"));
        let sim = crate::util::simulator(&sim_dir)?;
        Repository::create(&repo_dir)?;
        let mut phases = serde_json::Map::new();
        let (mut rate, mut to_floor) = (Vec::new(), Vec::new());
        let mut write_s = None;
        for (phase, writes_per_key) in PHASES {
            match phase {
                "staged" => {
                    sim.tke_load_random(&apqns, MkType::Aes)?;
                }
                "complete" => sim.tke_set(&apqns, MkType::Aes)?,
                _ => {}
            }
            // The disk's fsync latency drifts several-fold over minutes here, so the floor of
            // a write phase is sampled just before and just after it, and averaged: at most
            // FLOOR_SAMPLE/2 writes each, the size of a .info file (the larger per key).
            let sample = (n / 2).clamp(1, FLOOR_SAMPLE / 2);
            let floor_dir = dir.join("floor");
            let before = if writes_per_key > 0.0 {
                write_floor(&floor_dir, sample, 700)?
            } else {
                0.0
            };
            let r = run_child(phase, &sim_dir, &repo_dir, n)?;
            if r.ok != n {
                bail!("{phase} at {n} keys: {} keys as expected, not {n}", r.ok);
            }
            let floor = if writes_per_key > 0.0 {
                let after = write_floor(&floor_dir, sample, 700)?;
                let per_write = (before + after) / (2 * sample) as f64;
                write_s = Some(per_write * n as f64);
                per_write * n as f64 * writes_per_key
            } else {
                read_floor(&repo_dir)?
            };
            let keys_s = n as f64 / r.seconds;
            println!(
                "{n:>7} {phase:<9} {:>9.2} {keys_s:>10.0} {:>9.1} {floor:>9.2} {:>7.2}",
                r.seconds,
                r.maxrss_mib,
                r.seconds / floor
            );
            rate.push(keys_s);
            to_floor.push(r.seconds / floor);
            phases.insert(
                phase.into(),
                json!({
                    "seconds": r.seconds, "keys_per_second": keys_s, "peak_rss_mib": r.maxrss_mib,
                    "floor_seconds": floor,
                    "floor": if writes_per_key > 0.0 {
                        format!("{writes_per_key} atomic fsynced writes per key")
                    } else {
                        "reading every file of the repository".into()
                    },
                    "ratio_to_floor": r.seconds / floor,
                }),
            );
        }
        phases.insert(
            "floor_one_atomic_write_ms_last".into(),
            json!(write_s.map(|s| s * 1e3 / n as f64)),
        );
        per_scale.insert(n.to_string(), Value::Object(phases));
        rates.push((n, rate, to_floor));
        // Each scale's files go before the next is made: 100,000 keys are ~200,000 files.
        std::fs::remove_dir_all(&dir).ok();
    }
    // Linearity is judged on the cost relative to the floor, not on raw keys/s: the disk here
    // is shared and its fsync latency varies several-fold between minutes, which would make a
    // linear phase look superlinear (or better than linear) on raw times alone. The floor also
    // grows linearly with N, so a constant ratio to it is linear cost.
    let mut linear = serde_json::Map::new();
    if let (Some((n0, r0, f0)), Some((n1, r1, f1))) = (rates.first(), rates.last()) {
        if n1 > n0 {
            println!("growth from {n0} to {n1} keys: (ratio to floor at {n0}) / (ratio to floor at {n1}) and (keys/s at {n1}) / (keys/s at {n0}); 1.0 is linear, below 0.5 is not, in both");
            for (i, (phase, _)) in PHASES.iter().enumerate() {
                let q = f0[i] / f1[i];
                let raw = r1[i] / r0[i];
                // Both views must agree; when the disk moved under one of them, say so.
                let verdict = match (q >= 0.5, raw >= 0.5) {
                    (true, true) => "linear",
                    (false, false) => "NOT linear",
                    _ => "unclear (disk latency moved)",
                };
                println!("  {phase:<9} {q:>5.2} {raw:>5.2}  {verdict}");
                linear.insert(
                    phase.to_string(),
                    json!({"floor_normalised": q, "raw_rate_ratio": raw, "verdict": verdict}),
                );
            }
        }
    }
    Ok(json!({"scales": per_scale, "linearity": linear}))
}
