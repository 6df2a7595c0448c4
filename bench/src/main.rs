//! `bench`: the suite's benchmarks, each figure beside a baseline measured in the same run.
//!
//! ```sh
//! cargo run --release -p bench -- [--quick] [--json FILE] [--scale N]... [--dir DIR] [SUITE...]
//! ```
//!
//! Suites (all when none is named):
//! - `xts`: the AES-XTS engine in memory (1 thread, all cores) vs `openssl speed` and the
//!   `xts-mode` crate.
//! - `fuse`: sequential write/read of a LUKS2 volume served through `zkey_cryptsetup::fuse`
//!   (O_DIRECT) vs the same engine in memory. Needs root and `/dev/fuse`; skipped otherwise.
//! - `repo`: a zkey repository at 1,000 and 10,000 keys (`--quick`: 1,000; `--scale N`: exactly
//!   the sizes given, e.g. 100000): generate, validate, staged re-encipher, complete, list, each
//!   in a child process (so that its peak RSS is its own) vs the I/O floor of the same number of
//!   atomic, fsynced file writes on the same disk.
//! - `luks2`: `zkey-cryptsetup` staged and complete re-encipher of a volume vs
//!   `cryptsetup luksAddKey` on the same volume with the same PBKDF (pbkdf2, forced iterations).
//!
//! The machine this runs on is shared and noisy, which is why every figure has its baseline
//! from the same run and why ratios, not absolute numbers, are what to compare across runs.

mod datapath;
mod luks;
mod repo;
mod util;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

/// What the command line asked for.
pub struct Args {
    pub quick: bool,
    pub json: Option<PathBuf>,
    /// Repository sizes; empty: the defaults of the mode.
    pub scales: Vec<usize>,
    /// Where scratch files go (the disk whose I/O floor is measured); default: the system temp.
    pub dir: Option<PathBuf>,
    pub suites: Vec<String>,
}

const SUITES: [&str; 4] = ["xts", "fuse", "repo", "luks2"];

fn usage() -> String {
    format!(
        "usage: bench [--quick] [--json FILE] [--scale N]... [--dir DIR] [SUITE...]\n\
         suites: {} (default: all)",
        SUITES.join(", ")
    )
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        quick: false,
        json: None,
        scales: Vec::new(),
        dir: None,
        suites: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => args.quick = true,
            "--json" => args.json = Some(it.next().context("--json needs a file")?.into()),
            "--dir" => args.dir = Some(it.next().context("--dir needs a directory")?.into()),
            "--scale" => {
                let v = it.next().context("--scale needs a number of keys")?;
                let n: usize = v
                    .replace('_', "")
                    .parse()
                    .with_context(|| format!("--scale {v}: not a number"))?;
                if n == 0 {
                    bail!("--scale must be at least 1");
                }
                args.scales.push(n);
            }
            "-h" | "--help" => {
                println!("{}", usage());
                std::process::exit(0);
            }
            s if SUITES.contains(&s) => args.suites.push(s.to_string()),
            s => bail!("unknown argument '{s}'\n{}", usage()),
        }
    }
    if args.suites.is_empty() {
        args.suites = SUITES.iter().map(|s| s.to_string()).collect();
    }
    Ok(args)
}

fn main() -> Result<()> {
    // A repository phase runs in a child process of its own, so that its peak memory is its own.
    if std::env::args().nth(1).as_deref() == Some(repo::PHASE_ARG) {
        return repo::child_main(std::env::args().skip(2).collect());
    }
    ap_sim::durable::arm_crash_points();
    let args = parse_args()?;
    let scratch = util::Scratch::new(args.dir.as_deref())?;
    let mut results = serde_json::Map::new();
    results.insert("quick".into(), args.quick.into());
    results.insert("threads".into(), rayon::current_num_threads().into());
    for suite in &args.suites {
        println!("== {suite}");
        let r = match suite.as_str() {
            "xts" => datapath::xts(&args),
            "fuse" => datapath::fuse(&args, &scratch),
            "repo" => repo::run(&args, &scratch),
            "luks2" => luks::run(&args, &scratch),
            _ => unreachable!("checked by parse_args"),
        };
        let v = match r {
            Ok(v) => v,
            Err(e) => {
                // One suite failing must not hide the others' figures; the exit code says it.
                println!("FAILED: {e:#}");
                serde_json::json!({"error": format!("{e:#}")})
            }
        };
        results.insert(suite.clone(), v);
        println!();
    }
    let failed = results.values().any(|v| v.get("error").is_some());
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&serde_json::Value::Object(results))?;
        std::fs::write(path, text + "\n").with_context(|| format!("write {}", path.display()))?;
        println!("results written to {}", path.display());
    }
    if failed {
        bail!("at least one suite failed");
    }
    Ok(())
}
