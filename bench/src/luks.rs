//! LUKS2 re-encipher: `zkey-cryptsetup reencipher --staged` and `--complete` of one volume
//! through the library, vs `cryptsetup luksAddKey` on the same volume with the same PBKDF.
//!
//! A staged re-encipher unlocks a keyslot, re-enciphers the secure volume key in the adapter
//! and adds it as an unbound keyslot plus a token; completing unlocks again, verifies, and turns
//! the unbound keyslot into the volume key's. Each of those is dominated by keyslot work, so the
//! natural yardstick is what cryptsetup itself needs to add one keyslot (unlock one, write one)
//! with the same PBKDF: pbkdf2 at forced iterations, as the tests use. The baseline runs the
//! `cryptsetup` CLI, so it includes a process start (a few ms), which a `zkey-cryptsetup`
//! command would pay as well.

use std::process::Command;

use anyhow::{bail, Context, Result};
use ap_sim::hsm::Hsm;
use ap_sim::registers::MkType;
use ap_sim::token::KeyType;
use serde_json::{json, Value};
use zkey_cryptsetup::luks2::{FormatOptions, Pbkdf, PbkdfKind};
use zkey_cryptsetup::passphrase::{Passphrase, Source, Supplier};
use zkey_cryptsetup::reencipher::{self, Mode, Outcome, Request};

use crate::util::{cca_apqns, median, time, Scratch};
use crate::Args;

const ITERATIONS: u32 = 1000;
const PASSPHRASE: &[u8] = b"bench passphrase";

fn supplier() -> Supplier {
    Supplier::new(Source::Given(Passphrase::new(PASSPHRASE.to_vec())))
}

pub fn run(args: &Args, scratch: &Scratch) -> Result<Value> {
    let rounds = if args.quick { 3 } else { 7 };
    let dir = scratch.sub("luks2")?;
    let sim = crate::util::simulator(&dir.join("sim"))?;
    let hsm = Hsm::new(sim.clone());
    let image = dir.join("volume.img");
    std::fs::File::create(&image)?.set_len(32 << 20)?;
    let key = hsm.generate(KeyType::CcaAesData, 256, true, None)?;
    let opts = FormatOptions {
        pbkdf: Pbkdf::Forced {
            kind: PbkdfKind::Pbkdf2,
            iterations: ITERATIONS,
            memory_kb: None,
            parallel: None,
            hash: None,
        },
        ..FormatOptions::default()
    };
    let mut ui = zkey_cryptsetup::Recorder::answering(true);
    zkey_cryptsetup::volume::format(&hsm, &image, &key.to_bytes(), &opts, PASSPHRASE, &mut ui)?;

    let apqns = cca_apqns();
    let (mut staged, mut complete) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        sim.tke_load_random(&apqns, MkType::Aes)?;
        let (r, s) = time(|| {
            let o = Request {
                mode: Some(Mode::Staged),
                way: None,
            };
            reencipher::reencipher(&hsm, &image, o, &mut supplier(), &mut ui)
        });
        if !matches!(r?, Outcome::Staged { .. }) {
            bail!("staged re-encipher did not stage");
        }
        staged.push(s);
        sim.tke_set(&apqns, MkType::Aes)?;
        let (r, s) = time(|| {
            let o = Request {
                mode: Some(Mode::Complete),
                way: None,
            };
            reencipher::reencipher(&hsm, &image, o, &mut supplier(), &mut ui)
        });
        if !matches!(r?, Outcome::Completed { .. }) {
            bail!("complete did not complete");
        }
        complete.push(s);
    }

    // The baseline last: every luksAddKey leaves a keyslot behind, which would make unlocking
    // in the rounds above try more keyslots.
    let pass_file = dir.join("pass");
    std::fs::write(&pass_file, PASSPHRASE)?;
    let mut add = Vec::new();
    for i in 0..rounds {
        let new_file = dir.join(format!("new{i}"));
        std::fs::write(&new_file, format!("new passphrase {i}"))?;
        let (out, s) = time(|| {
            Command::new("cryptsetup")
                .args(["luksAddKey", "--batch-mode", "--pbkdf", "pbkdf2"])
                .args(["--pbkdf-force-iterations", &ITERATIONS.to_string()])
                .arg("--key-file")
                .arg(&pass_file)
                .arg(&image)
                .arg(&new_file)
                .output()
        });
        let out = out.context("run cryptsetup (package cryptsetup-bin)")?;
        if !out.status.success() {
            bail!(
                "cryptsetup luksAddKey failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        add.push(s);
    }
    let (st, co, ad) = (median(staged), median(complete), median(add));
    println!("LUKS2 volume, pbkdf2 at {ITERATIONS} iterations, median of {rounds}, ms");
    println!("{:<44} {:>8} {:>7}", "", "ms", "ratio");
    println!(
        "{:<44} {:>8.1} {:>7}",
        "cryptsetup luksAddKey (baseline)",
        ad * 1e3,
        "1.00"
    );
    println!(
        "{:<44} {:>8.1} {:>7.2}",
        "zkey-cryptsetup reencipher --staged",
        st * 1e3,
        st / ad
    );
    println!(
        "{:<44} {:>8.1} {:>7.2}",
        "zkey-cryptsetup reencipher --complete",
        co * 1e3,
        co / ad
    );
    Ok(json!({
        "unit": "seconds", "rounds": rounds, "pbkdf": "pbkdf2", "iterations": ITERATIONS,
        "cryptsetup_luksAddKey": ad,
        "staged": st, "complete": co,
        "ratio_staged_to_luksAddKey": st / ad,
        "ratio_complete_to_luksAddKey": co / ad,
    }))
}
