//! Kill zkey at every durable step of a staged and of a complete re-encipher: after each crash
//! every key still works, a re-run finishes the job with the same effective keys, and the audit
//! trail is intact with every change on disk announced by an intent (done or unknown).
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
        let before = w.repo_tree();
        let crashed = w.crash_at("zkey", n, &args);
        w.assert_audit_after_crash(&before, n);
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
        let before = w.repo_tree();
        let crashed = w.crash_at("zkey", n, &args);
        w.assert_audit_after_crash(&before, n);
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
        let before = w.repo_tree();
        let crashed = w.crash_at("zkey", n, &["reencipher", "--apqns", CCA]);
        w.assert_audit_after_crash(&before, n);
        assert_usable_with(&w, &vps, None, n);
        w.ok("zkey", &["reencipher", "--apqns", CCA]);
        assert_usable_with(&w, &vps, Some("current"), n);
        if !crashed {
            break;
        }
    }
}

#[test]
fn generate_and_its_record_never_come_apart() {
    let mut crashes = 0;
    for n in 0.. {
        let mut w = World::new();
        w.use_bins(failpoint_bin_dir());
        w.ok("zkey", &["generate", "-N", "k0", "-a", CCA]);
        let before = w.repo_tree();
        let crashed = w.crash_at("zkey", n, &["generate", "-N", "k1", "-a", CCA, "--xts"]);
        w.assert_audit_after_crash(&before, n);
        if !crashed {
            break;
        }
        crashes += 1;
    }
    assert!(crashes >= 4, "only {crashes} crash points were walked");
}

/// The TKE: a SET and its record never come apart (a crash after the registers' update used to
/// leave a SET that no record shows).
#[test]
fn a_tke_set_and_its_record_never_come_apart() {
    let mut crashes = 0;
    for n in 0.. {
        let mut w = World::new();
        w.use_bins(failpoint_bin_dir());
        w.load_new(CCA, "aes");
        let current = |w: &World| {
            w.json("ap-sim", &["tke", "status", "--json", "-a", "08.002f"])["apqns"][0]["registers"]
                [0]["current"]["mkvp"]
                .clone()
        };
        let cur0 = current(&w);
        let tke = w.sim.join("audit.log");
        let seen = tests::audit_records(&tke).len();
        let crashed = w.crash_at(
            "ap-sim",
            n,
            &["tke", "set", "-a", CCA, "-t", "aes", "--yes"],
        );
        let v = ap_sim::sim::Simulator::open(&w.sim)
            .unwrap()
            .tke_audit_log()
            .verify()
            .unwrap();
        assert!(v.intact && v.actions.unknown <= 1, "step {n}: {v:?}");
        let sets: Vec<_> = ap_sim::audit::actions(&tests::audit_records(&tke))
            .into_iter()
            .filter(|a| a.seq as usize > seen && a.event == "tke-set")
            .collect();
        use ap_sim::audit::ActionStatus::*;
        if current(&w) != cur0 {
            assert!(
                sets.len() == 1 && matches!(sets[0].status, Done | Unknown),
                "step {n}: the SET happened, its intent: {sets:?}"
            );
        } else {
            assert!(
                sets.iter().all(|a| a.status != Done),
                "step {n}: no SET happened, yet: {sets:?}"
            );
        }
        if !crashed {
            assert_eq!(sets.len(), 1);
            assert_eq!(sets[0].status, Done);
            break;
        }
        crashes += 1;
    }
    assert!(crashes >= 4, "only {crashes} crash points were walked");
}
