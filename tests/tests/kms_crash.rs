//! Kill zkey and the KMIP plug-in at every durable step of a staged and a complete
//! re-encipher of the plug-in's own keys around an APKA and AES master key change: after each
//! crash the plug-in still reaches the KMS, a re-run finishes the job, and the audit trail is
//! intact with the crashed command's intent on record.

use tests::{failpoint_bin_dir, KmipServer, World};

const CCA: &str = "08.002f,09.002f";

#[test]
fn plugin_key_reencipher_survives_a_crash_at_every_step() {
    let srv = KmipServer::start();
    for phase in ["staged", "complete"] {
        let mut crashes = 0;
        for n in 0.. {
            let mut w = World::with_bins(failpoint_bin_dir());
            w.bind_kmip(&srv, CCA);
            w.ok("zkey", &["generate", "-N", "k"]);
            w.load_new(CCA, "apka");
            w.load_new(CCA, "aes");
            let staged = ["kms", "reencipher", "--to-new", "--staged"];
            let hit = if phase == "staged" {
                let before = w.repo_tree();
                let hit = w.crash_at("zkey", n, &staged);
                w.assert_audit_after_crash(&before, n);
                hit
            } else {
                w.ok("zkey", &staged);
                w.set(CCA, "apka");
                w.set(CCA, "aes");
                let before = w.repo_tree();
                let hit = w.crash_at("zkey", n, &["kms", "reencipher", "--complete"]);
                w.assert_audit_after_crash(&before, n);
                hit
            };
            // The identity key still authenticates to the KMS after any crash.
            w.ok("zkey", &["kms", "refresh"]);
            if phase == "staged" {
                w.ok("zkey", &staged);
                w.set(CCA, "apka");
                w.set(CCA, "aes");
            }
            w.ok("zkey", &["kms", "reencipher", "--complete"]);
            let out = w.ok("zkey", &["kms", "refresh"]);
            assert!(out.contains("1 refreshed"), "{phase} step {n}: {out}");
            if !hit {
                break;
            }
            crashes += 1;
        }
        assert!(crashes >= 2, "{phase}: only {crashes} crash points");
    }
}
