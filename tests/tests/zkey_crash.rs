//! Kill zkey at every durable step of a staged and of a complete re-encipher: after each crash
//! every key still works, and a re-run finishes the job with the same effective keys.
//!
//! The `durable` crash point aborts the process (no cleanup, like a power cut seen from the
//! files) at the N+1th durable step: before a rename, after it, or before a removal.

use tests::{failpoint_bin_dir, World};

const CCA: &str = "08.002f,09.002f";

fn world_with_keys() -> (World, Vec<(String, Option<String>)>) {
    let mut w = World::new();
    w.use_bins(failpoint_bin_dir());
    w.ok("zkey", &["generate", "-N", "k1", "-a", CCA, "--xts"]);
    w.ok(
        "zkey",
        &["generate", "-N", "k2", "-a", CCA, "-K", "CCA-AESCIPHER"],
    );
    w.ok(
        "zkey",
        &[
            "generate", "-N", "k3", "-a", "08.002f", "--xts", "-t", "plain",
        ],
    );
    let vps = w
        .key_states()
        .into_iter()
        .map(|(n, _, _, vp)| (n, vp))
        .collect();
    (w, vps)
}

fn assert_usable_with(
    w: &World,
    vps: &[(String, Option<String>)],
    register: Option<&str>,
    step: usize,
) {
    let states = w.key_states();
    assert_eq!(
        states.len(),
        vps.len(),
        "step {step}: a key went missing: {states:?}"
    );
    for ((name, valid, reg, vp), (n0, vp0)) in states.iter().zip(vps) {
        assert_eq!(name, n0);
        assert!(*valid, "step {step}: key {name} is not usable");
        assert_eq!(vp, vp0, "step {step}: key {name} changed its effective key");
        if let Some(r) = register {
            assert_eq!(reg.as_deref(), Some(r), "step {step}: key {name}");
        }
    }
}

#[test]
fn staged_reencipher_survives_a_crash_at_every_step() {
    let mut crashes = 0;
    for n in 0.. {
        let (w, vps) = world_with_keys();
        w.load_new(CCA, "aes");
        let args = ["reencipher", "--apqns", CCA, "--to-new", "--staged"];
        let crashed = w.crash_at("zkey", n, &args);
        assert_usable_with(&w, &vps, Some("current"), n);
        // The re-run stages every key; SET and complete then end with the same keys.
        w.ok("zkey", &args);
        w.set(CCA, "aes");
        w.ok("zkey", &["reencipher", "--apqns", CCA, "--complete"]);
        assert_usable_with(&w, &vps, Some("current"), n);
        if !crashed {
            break;
        }
        crashes += 1;
    }
    assert!(crashes >= 6, "only {crashes} crash points were walked");
}

#[test]
fn complete_survives_a_crash_at_every_step() {
    let mut crashes = 0;
    for n in 0.. {
        let (w, vps) = world_with_keys();
        w.load_new(CCA, "aes");
        w.ok(
            "zkey",
            &["reencipher", "--apqns", CCA, "--to-new", "--staged"],
        );
        w.set(CCA, "aes");
        let args = ["reencipher", "--apqns", CCA, "--complete"];
        let crashed = w.crash_at("zkey", n, &args);
        // Live keys are under OLD or CURRENT: all usable, none lost.
        assert_usable_with(&w, &vps, None, n);
        w.ok("zkey", &args);
        assert_usable_with(&w, &vps, Some("current"), n);
        assert!(
            !w.repo_files().iter().any(|f| f.ends_with(".renc")),
            "step {n}: a staged key was left"
        );
        if !crashed {
            break;
        }
        crashes += 1;
    }
    assert!(crashes >= 12, "only {crashes} crash points were walked");
}

#[test]
fn in_place_from_old_survives_a_crash_at_every_step() {
    for n in 0.. {
        let (w, vps) = world_with_keys();
        w.load_new(CCA, "aes");
        w.set(CCA, "aes");
        let crashed = w.crash_at("zkey", n, &["reencipher", "--apqns", CCA]);
        assert_usable_with(&w, &vps, None, n);
        w.ok("zkey", &["reencipher", "--apqns", CCA]);
        assert_usable_with(&w, &vps, Some("current"), n);
        if !crashed {
            break;
        }
    }
}
