//! What every suite shares: the scratch directory, timing, and a simulator to work against.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use ap_sim::sim::{Layout, Simulator};
use ap_sim::Apqn;

/// A scratch directory removed at the end of the run. Everything the benchmarks write goes
/// here, so the I/O floors are measured on the disk the measured code writes to.
pub struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new(parent: Option<&Path>) -> Result<Scratch> {
        let mut b = tempfile::Builder::new();
        b.prefix("zkey-bench.");
        let dir = match parent {
            Some(p) => b.tempdir_in(p),
            None => b.tempdir(),
        }
        .context("create the scratch directory")?;
        Ok(Scratch { dir })
    }

    /// A fresh, empty sub-directory.
    pub fn sub(&self, name: &str) -> Result<PathBuf> {
        let p = self.dir.path().join(name);
        if p.exists() {
            std::fs::remove_dir_all(&p).with_context(|| format!("clear {}", p.display()))?;
        }
        std::fs::create_dir_all(&p).with_context(|| format!("create {}", p.display()))?;
        Ok(p)
    }
}

/// Seconds taken by `f`.
pub fn time<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let t = Instant::now();
    let v = f();
    (v, t.elapsed().as_secs_f64())
}

/// The best of `runs` throughputs (GB/s, 10^9 B/s) of `f` over `bytes`: the question is what
/// the code can do, not how noisy the machine is at that moment.
pub fn best_gbps(runs: usize, bytes: usize, mut f: impl FnMut()) -> f64 {
    (0..runs)
        .map(|_| bytes as f64 / time(&mut f).1 / 1e9)
        .fold(0.0, f64::max)
}

/// The median of a non-empty sample.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The APQNs of seed 004: the default simulator's CCA domain group.
pub fn cca_apqns() -> Vec<Apqn> {
    ["08.002f", "09.002f"]
        .iter()
        .map(|s| s.parse().expect("valid literal"))
        .collect()
}

/// A fresh simulator with the default layout in `dir`.
pub fn simulator(dir: &Path) -> Result<Simulator> {
    Simulator::init(dir, &Layout::default(), true).context("initialise the simulator")
}

/// Whether this process can mount FUSE file systems (root and `/dev/fuse`).
pub fn fuse_available() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("not root".into());
    }
    if !Path::new("/dev/fuse").exists() {
        return Err("/dev/fuse is missing".into());
    }
    Ok(())
}

/// `a / b`, or `None` when the baseline is missing or zero.
pub fn ratio(a: f64, b: Option<f64>) -> Option<f64> {
    b.filter(|b| *b > 0.0).map(|b| a / b)
}

/// A number for a table, `n/a` when missing.
pub fn opt(v: Option<f64>) -> String {
    v.map_or("n/a".to_string(), |v| format!("{v:.2}"))
}
