//! Re-encipher, validate, setvp and setkey through the real binary, checked with the real
//! cryptsetup.
mod common;
use common::*;

const STAGED_MSG: &str = "Staged re-enciphering is initiated for device '{}'. After the NEW master key has been set to become the CURRENT master key, run 'zkey-cryptsetup reencipher' with option '--complete' to complete the re-enciphering process.";

fn p(img: &std::path::Path) -> &str {
    img.to_str().unwrap()
}

fn validate_json(f: &Fixture, img: &std::path::Path) -> serde_json::Value {
    let o = f.run(&["validate", p(img), "--json"], b"disk1pw\n");
    serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", stderr(&o)))
}

fn keyslot_count(img: &std::path::Path) -> usize {
    let d = luks_dump(img);
    d.lines()
        .filter(|l| {
            l.trim_start().starts_with(|c: char| c.is_ascii_digit()) && l.contains(": luks2")
        })
        .count()
}

#[test]
fn staged_then_complete_across_one_rotation() {
    let f = Fixture::new();
    let img = f.format("v.img", true);
    let vp = volume_vp(&f.hsm, &img);
    f.load_new();
    let o = f.run(&["reencipher", p(&img), "--staged"], b"disk1pw\n");
    assert!(o.status.success(), "{}", stderr(&o));
    let out = flat(&stdout(&o));
    assert!(out.contains(&format!("The secure volume key of device '{}' is enciphered with the CURRENT master key and is being re-enciphered with the NEW master key.", p(&img))), "{out}");
    assert!(out.contains(&STAGED_MSG.replace("{}", p(&img))), "{out}");
    // Wrapped at 80 columns as IBM's tool prints it.
    assert!(stdout(&o).lines().all(|l| l.len() <= 80));
    let t = token_of(&img, "paes-reencipher").expect("reencipher token");
    let u = t["unbound-keyslot"].as_u64().unwrap();
    assert_eq!(t["keyslots"], serde_json::json!([u.to_string()]));
    assert_eq!(t["original-keyslot"], 0);
    assert_eq!(t["verification-pattern"], vp);
    assert!(
        luks_dump(&img).contains("luks2 (unbound)"),
        "{}",
        luks_dump(&img)
    );
    assert!(opens(&img, PW));
    let j = validate_json(&f, &img);
    assert_eq!(j["volume_key"]["state"], "current");
    assert_eq!(j["reencipher_pending"]["key"]["state"], "new");

    // Completing before the SET is refused, nothing changes.
    let before = header_bytes(&img);
    let o = f.run(&["reencipher", p(&img), "--complete", "-q"], b"disk1pw\n");
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not set yet"), "{}", stderr(&o));
    assert!(before == header_bytes(&img));

    f.set();
    let o = f.run(&["reencipher", p(&img), "--complete", "-q"], b"disk1pw\n");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(flat(&stdout(&o)).contains("completed successfully"));
    assert!(token_of(&img, "paes-reencipher").is_none());
    assert_eq!(volume_vp(&f.hsm, &img), vp);
    assert!(opens(&img, PW));
    assert_eq!(keyslot_count(&img), 1, "{}", luks_dump(&img));
    let j = validate_json(&f, &img);
    assert_eq!(j["volume_key"]["state"], "current");
    assert_eq!(j["valid"], true);
    assert!(j["reencipher_pending"].is_null());
    // --complete with nothing pending has nothing to do: exit 0 (the suite's exit code table),
    // and the header is left alone.
    let before = header_bytes(&img);
    let o = f.run(&["reencipher", p(&img), "--complete", "-q"], b"disk1pw\n");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).contains(&format!(
            "nothing to do: no re-encipher is pending for device '{}'",
            p(&img)
        )),
        "{}",
        stdout(&o)
    );
    assert!(before == header_bytes(&img));
}

#[test]
fn complete_after_two_rotations_re_enciphers_again() {
    let f = Fixture::new();
    let img = f.format("v.img", true);
    let vp = volume_vp(&f.hsm, &img);
    f.load_new();
    let o = f.run(&["reencipher", p(&img), "-s"], b"disk1pw\n");
    assert!(o.status.success(), "{}", stderr(&o));
    f.set();
    f.rotate(); // the staged key is under OLD now, the original one dead
    let o = f.run(&["reencipher", p(&img), "-q"], b"disk1pw\n");
    assert!(o.status.success(), "{}", stderr(&o));
    let all = flat(&format!("{}{}", stdout(&o), stderr(&o)));
    assert!(all.contains("the master key has changed again"), "{all}");
    assert_eq!(volume_vp(&f.hsm, &img), vp);
    assert!(opens(&img, PW));
    assert!(token_of(&img, "paes-reencipher").is_none());
    assert_eq!(validate_json(&f, &img)["volume_key"]["state"], "current");
    assert_eq!(keyslot_count(&img), 1, "{}", luks_dump(&img));
}

#[test]
fn in_place_from_old_by_default() {
    let f = Fixture::new();
    let img = f.format("v.img", false);
    let vp = volume_vp(&f.hsm, &img);
    f.rotate();
    let j = validate_json(&f, &img);
    assert_eq!(j["volume_key"]["state"], "old");
    let o = f.run(&["reencipher", p(&img), "-q"], b"disk1pw\n");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(flat(&stdout(&o)).contains("is enciphered with the OLD master key and is being re-enciphered with the CURRENT master key."));
    assert!(flat(&stderr(&o)).contains("enciphered with the OLD master key: it stops working"));
    assert_eq!(volume_vp(&f.hsm, &img), vp);
    assert_eq!(validate_json(&f, &img)["volume_key"]["state"], "current");
    assert!(opens(&img, PW));
    assert!(luks_dump(&img).contains("cipher: paes-cbc-plain64"));
}

#[test]
fn a_dead_key_is_refused_and_nothing_changes() {
    let f = Fixture::new();
    let img = f.format("v.img", true);
    f.rotate();
    f.rotate();
    let before = header_bytes(&img);
    let o = f.run(&["reencipher", p(&img), "-q"], b"disk1pw\n");
    assert!(!o.status.success());
    assert!(
        flat(&stderr(&o)).contains("no adapter holds as CURRENT or OLD"),
        "{}",
        stderr(&o)
    );
    assert!(before == header_bytes(&img));
    let o = f.run(&["validate", p(&img), "--json"], b"disk1pw\n");
    assert!(!o.status.success());
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["volume_key"]["state"], "unusable");
    assert_eq!(j["valid"], false);
}

#[test]
fn validate_json_schema_and_setvp() {
    let f = Fixture::new();
    let img = f.format("v.img", true);
    let j = validate_json(&f, &img);
    for k in [
        "device",
        "cipher",
        "key_size_bits",
        "sector_size",
        "volume_key",
        "vp_token",
        "vp_token_matches",
        "reencipher_pending",
        "valid",
    ] {
        assert!(j.get(k).is_some(), "{k} missing in {j}");
    }
    for k in [
        "keyslot",
        "key_type",
        "key_bits",
        "xts",
        "state",
        "mkvp",
        "verification_pattern",
        "problem",
    ] {
        assert!(j["volume_key"].get(k).is_some(), "{k} missing");
    }
    assert_eq!(j["cipher"], "paes-xts-plain64");
    assert_eq!(j["volume_key"]["key_type"], "CCA-AESDATA");
    assert_eq!(j["vp_token_matches"], true);
    // Remove the VP token with the real cryptsetup, then setvp writes it again.
    let o = cryptsetup(&["token", "remove", "--token-id", "0", p(&img)], b"");
    assert!(o.status.success());
    assert!(validate_json(&f, &img)["vp_token"].is_null());
    let o = f.run(&["setvp", p(&img), "-d", "-"], b"disk1pw");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        token_of(&img, "paes-verification-pattern").unwrap()["verification-pattern"],
        volume_vp(&f.hsm, &img)
    );
    // Human output names the state.
    let o = f.run(&["validate", p(&img)], b"disk1pw\n");
    assert!(stdout(&o).contains("CURRENT master key"), "{}", stdout(&o));
}

#[test]
fn key_file_options_as_cryptsetup() {
    let f = Fixture::new();
    let img = f.format("v.img", true);
    let kf = f.dir.path().join("kf");
    std::fs::write(&kf, b"XXdisk1pwYY").unwrap();
    let o = f.run(
        &[
            "validate",
            p(&img),
            "-d",
            kf.to_str().unwrap(),
            "-o",
            "2",
            "-l",
            "7",
        ],
        b"",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = f.run(
        &["validate", p(&img), "--key-file", kf.to_str().unwrap()],
        b"",
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("No key available with this passphrase"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn setkey_same_aes_key_and_refuses_another() {
    let f = Fixture::new();
    let img = f.format("v.img", true);
    let vp = volume_vp(&f.hsm, &img);
    f.rotate();
    // The same AES key under CURRENT: re-encipher the volume key from OLD outside the volume.
    let mut vol = zkey_cryptsetup::luks2::Volume::open(&img).unwrap();
    let (_, k) = vol.volume_key(PW).unwrap();
    drop(vol);
    let key = ap_sim::token::SecureKey::parse(&k).unwrap();
    let again = f
        .hsm
        .reencipher(&key, ap_sim::hsm::Direction::FromOld, None)
        .unwrap();
    let kf = f.dir.path().join("same.key");
    std::fs::write(&kf, again.to_bytes()).unwrap();
    let other = f.dir.path().join("other.key");
    std::fs::write(&other, f.key(true)).unwrap();

    let before = header_bytes(&img);
    let o = f.run(
        &["setkey", p(&img), "-m", other.to_str().unwrap(), "-q"],
        b"disk1pw\n",
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("different AES key"), "{}", stderr(&o));
    assert!(before == header_bytes(&img));

    let o = f.run(
        &["setkey", p(&img), "-m", kf.to_str().unwrap(), "-q"],
        b"disk1pw\n",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(volume_vp(&f.hsm, &img), vp);
    assert_eq!(validate_json(&f, &img)["volume_key"]["state"], "current");
    assert!(opens(&img, PW));
    assert_eq!(keyslot_count(&img), 1);
}

#[test]
fn format_through_the_binary() {
    let f = Fixture::new();
    let img = f.image("b.img");
    let kf = f.dir.path().join("k");
    std::fs::write(&kf, f.key(false)).unwrap();
    let o = f.run(
        &[
            "format",
            p(&img),
            "--volume-key-file",
            kf.to_str().unwrap(),
            "--sector-size",
            "512",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
            "-q",
        ],
        b"pw2\n",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let d = luks_dump(&img);
    assert!(
        d.contains("cipher: paes-cbc-plain64") && d.contains("sector: 512 [bytes]"),
        "{d}"
    );
    assert!(opens(&img, b"pw2"));
    assert!(token_of(&img, "paes-verification-pattern").is_some());
}

#[test]
fn close_of_a_name_that_is_not_open_is_an_error() {
    let f = Fixture::new();
    let o = f.run(&["close", "never-opened"], b"");
    assert!(!o.status.success());
    assert!(stderr(&o).contains("never-opened"), "{}", stderr(&o));
}

#[test]
fn staging_is_refused_while_the_new_master_key_is_on_some_apqns_only() {
    let f = Fixture::new();
    let img = f.format("v.img", true);
    // The security officer loaded the NEW key on 08.002f but not on its peer 09.002f.
    f.sim
        .tke_load_random(&["08.002f".parse().unwrap()], ap_sim::MkType::Aes)
        .unwrap();
    let dump = luks_dump(&img);
    let before = header_bytes(&img);
    for args in [
        vec!["reencipher", p(&img), "--staged"],
        vec!["reencipher", p(&img), "--staged", "--to-new"],
        vec!["reencipher", p(&img), "--in-place", "--to-new", "-q"],
        vec!["reencipher", p(&img)],
    ] {
        let o = f.run(&args, b"disk1pw\n");
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stdout(&o));
        let err = stderr(&o);
        assert!(err.contains("NEW MASTER KEYS INCORRECT"), "{args:?}: {err}");
        // zkey's words and table.
        assert!(
            err.contains("the APQNs are not ready for re-enciphering to the NEW master key; nothing was changed"),
            "{err}"
        );
        assert!(
            err.contains("CARD.DOMAIN") && err.contains("09.002f"),
            "{err}"
        );
        assert!(err.contains("Your master key setup is improper."), "{err}");
        assert!(before == header_bytes(&img), "{args:?} touched the header");
        assert_eq!(dump, luks_dump(&img));
    }
    // A pending stage is not cancelled for a re-stage that would be refused.
    f.sim
        .tke_clear_new(&["08.002f".parse().unwrap()], ap_sim::MkType::Aes)
        .unwrap();
    f.load_new();
    let o = f.run(&["reencipher", p(&img), "--staged"], b"disk1pw\n");
    assert!(o.status.success(), "{}", stderr(&o));
    let staged = header_bytes(&img);
    f.sim
        .tke_clear_new(&["09.002f".parse().unwrap()], ap_sim::MkType::Aes)
        .unwrap();
    // Without -q: refused before the question whether to cancel the pending stage is asked.
    let o = f.run(&["reencipher", p(&img), "--staged"], b"disk1pw\n");
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(
        !stderr(&o).contains("no terminal to ask on"),
        "{}",
        stderr(&o)
    );
    assert!(
        stderr(&o).contains("NEW MASTER KEYS INCORRECT"),
        "{}",
        stderr(&o)
    );
    assert!(
        staged == header_bytes(&img),
        "the pending stage was touched"
    );
}

#[test]
fn staging_goes_ahead_with_the_new_master_key_on_every_apqn_of_the_group() {
    let f = Fixture::new();
    let img = f.format("v.img", true);
    f.load_new();
    let o = f.run(&["reencipher", p(&img), "--staged"], b"disk1pw\n");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(token_of(&img, "paes-reencipher").is_some());
    assert_eq!(
        validate_json(&f, &img)["reencipher_pending"]["key"]["state"],
        "new"
    );
}

#[test]
fn another_domain_group_without_a_new_master_key_does_not_block_staging() {
    use ap_sim::sim::{Layout, Simulator};
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout {
        domains: vec![0x002f, 0x0030],
        ..Layout::default()
    };
    let sim = Simulator::init(dir.path().join("sim"), &layout, false).unwrap();
    let hsm = ap_sim::hsm::Hsm::new(sim.clone());
    let f = Fixture { dir, sim, hsm };
    // The key is made under 002f's master key; domain 0030 is another group with its own.
    let key = f
        .hsm
        .generate(
            ap_sim::token::KeyType::CcaAesData,
            256,
            true,
            Some(&Fixture::cca_apqns()),
        )
        .unwrap();
    let img = f.image("v.img");
    zkey_cryptsetup::volume::format(
        &f.hsm,
        &img,
        &key.to_bytes(),
        &fast(),
        PW,
        &mut zkey_cryptsetup::Recorder::answering(true),
    )
    .unwrap();
    f.load_new(); // on 08.002f and 09.002f only
    let o = f.run(&["reencipher", p(&img), "--staged"], b"disk1pw\n");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(token_of(&img, "paes-reencipher").is_some());
}
