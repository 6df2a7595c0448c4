//! Bad input: a clear error naming the problem and the way out, a non-zero exit, and no change
//! on disk.
mod common;
use ap_sim::sim::Target;
use common::*;
use std::path::Path;

fn p(img: &Path) -> &str {
    img.to_str().unwrap()
}

/// Runs `args` (with the passphrase on stdin), expects a failure whose stderr contains every
/// one of `needles`, and checks that the image did not change.
fn refused(f: &Fixture, img: &Path, args: &[&str], input: &[u8], needles: &[&str]) {
    let before = std::fs::read(img).unwrap();
    let o = f.run(args, input);
    assert!(!o.status.success(), "{args:?} succeeded");
    let err = flat(&stderr(&o));
    for n in needles {
        assert!(err.contains(n), "{n:?} not in {err}");
    }
    assert!(!err.contains("disk1pw"), "the passphrase leaked: {err}");
    assert!(
        before == std::fs::read(img).unwrap(),
        "{args:?} changed the image"
    );
}

#[test]
fn not_a_luks2_device() {
    let f = Fixture::new();
    let img = f.image("zero.img");
    for cmd in ["reencipher", "validate", "setvp"] {
        refused(
            &f,
            &img,
            &[cmd, p(&img), "-q"],
            b"disk1pw\n",
            &["is not a LUKS2 volume"],
        );
    }
}

#[test]
fn wrong_passphrase() {
    let f = Fixture::new();
    let img = f.format("v.img", true);
    f.load_new();
    for args in [
        vec!["reencipher", p(&img), "--staged", "-q"],
        vec!["validate", p(&img)],
        vec!["setvp", p(&img)],
    ] {
        refused(
            &f,
            &img,
            &args,
            b"nope\n",
            &["No key available with this passphrase"],
        );
    }
}

#[test]
fn wrong_passphrase_while_a_re_encipher_is_pending() {
    let f = Fixture::new();
    let img = f.format("v.img", true);
    f.load_new();
    let o = f.run(&["reencipher", p(&img), "--staged"], b"disk1pw\n");
    assert!(o.status.success(), "{}", stderr(&o));
    f.set();
    let kf = f.dir.path().join("kf");
    std::fs::write(&kf, b"disk1pw\n").unwrap();
    for (args, way_out) in [
        (
            vec!["reencipher", p(&img), "--complete", "-q"],
            "stdin, which is not a terminal, so there was one try",
        ),
        (vec!["reencipher", p(&img), "-q"], "not a terminal"),
        (vec!["validate", p(&img)], "not a terminal"),
        (
            vec![
                "reencipher",
                p(&img),
                "-c",
                "-q",
                "-d",
                kf.to_str().unwrap(),
            ],
            "a trailing newline included",
        ),
    ] {
        let dump = luks_dump(&img);
        let o = f.run(&args, b"nope\n");
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        let err = flat(&stderr(&o));
        assert_eq!(
            err.matches("No key available with this passphrase.")
                .count(),
            1,
            "{args:?}: one try off a terminal: {err}"
        );
        assert!(err.contains(way_out), "{args:?}: {err}");
        assert!(!err.contains("os error"), "{args:?}: {err}");
        assert_eq!(dump, luks_dump(&img), "{args:?} changed the header");
        refused(
            &f,
            &img,
            &args,
            b"nope\n",
            &[
                "No key available with this passphrase",
                "no key available with this passphrase for",
            ],
        );
    }
}

#[test]
fn cipher_not_paes() {
    let f = Fixture::new();
    let img = f.image("aes.img");
    let o = cryptsetup(
        &[
            "luksFormat",
            "--type",
            "luks2",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
            "-q",
            "--key-file",
            "-",
            p(&img),
        ],
        b"disk1pw",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    refused(
        &f,
        &img,
        &["reencipher", p(&img), "-q"],
        b"disk1pw\n",
        &["not 'paes'", "aes-xts-plain64"],
    );
    refused(
        &f,
        &img,
        &["validate", p(&img)],
        b"disk1pw\n",
        &["not 'paes'"],
    );
}

fn import_token(img: &Path, id: u32, json: &str) {
    let o = cryptsetup(
        &[
            "token",
            "import",
            "--token-id",
            &id.to_string(),
            "--json-file",
            "-",
            p(img),
        ],
        json.as_bytes(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn malformed_reencipher_token() {
    let f = Fixture::new();
    let img = f.format("v.img", true);
    import_token(
        &img,
        5,
        r#"{"type":"paes-reencipher","keyslots":[],"verification-pattern":"zz"}"#,
    );
    refused(
        &f,
        &img,
        &["reencipher", p(&img), "-q"],
        b"disk1pw\n",
        &[
            "token 5 (paes-reencipher)",
            "is malformed",
            "cryptsetup token remove --token-id 5",
        ],
    );
    refused(&f, &img, &["validate", p(&img)], b"disk1pw\n", &["token 5"]);
}

#[test]
fn reencipher_token_not_matching_its_keyslot() {
    let f = Fixture::new();
    let img = f.format("v.img", true);
    let vp = volume_vp(&f.hsm, &img);
    import_token(
        &img,
        3,
        &format!(
            r#"{{"type":"paes-reencipher","keyslots":["0"],"verification-pattern":"{vp}","original-keyslot":0,"unbound-keyslot":7}}"#
        ),
    );
    refused(
        &f,
        &img,
        &["reencipher", p(&img), "--complete", "-q"],
        b"disk1pw\n",
        &["token 3", "not to its unbound-keyslot 7"],
    );
}

#[test]
fn malformed_vp_token() {
    let f = Fixture::new();
    let img = f.format("v.img", true);
    let o = cryptsetup(&["token", "remove", "--token-id", "0", p(&img)], b"");
    assert!(o.status.success());
    import_token(
        &img,
        0,
        r#"{"type":"paes-verification-pattern","keyslots":[],"verification-pattern":"00","extra":1}"#,
    );
    f.load_new();
    refused(
        &f,
        &img,
        &["reencipher", p(&img), "--staged", "-q"],
        b"disk1pw\n",
        &["token 0 (paes-verification-pattern)"],
    );
}

#[test]
fn vp_token_of_another_key_is_fatal() {
    let f = Fixture::new();
    let img = f.format("v.img", true);
    let o = cryptsetup(&["token", "remove", "--token-id", "0", p(&img)], b"");
    assert!(o.status.success());
    let other = "ab".repeat(32);
    import_token(
        &img,
        0,
        &format!(
            r#"{{"type":"paes-verification-pattern","keyslots":[],"verification-pattern":"{other}"}}"#
        ),
    );
    f.load_new();
    refused(
        &f,
        &img,
        &["reencipher", p(&img), "--staged", "-q"],
        b"disk1pw\n",
        &["different AES key", "nothing was changed"],
    );
}

#[test]
fn secure_key_rejected_by_the_adapters() {
    let f = Fixture::new();
    let img = f.format("v.img", true);
    f.load_new();
    f.sim.set_online(Target::Card(8), false).unwrap();
    f.sim.set_online(Target::Card(9), false).unwrap();
    refused(
        &f,
        &img,
        &["reencipher", p(&img), "--staged", "-q"],
        b"disk1pw\n",
        &["rejected by the crypto adapters", "no usable APQN"],
    );
    refused(
        &f,
        &img,
        &["setvp", p(&img)],
        b"disk1pw\n",
        &["rejected by the crypto adapters"],
    );
}

#[test]
fn not_a_secure_key_file_for_format() {
    let f = Fixture::new();
    let img = f.image("v.img");
    let kf = f.dir.path().join("junk.key");
    std::fs::write(&kf, [7u8; 64]).unwrap();
    refused(
        &f,
        &img,
        &[
            "format",
            p(&img),
            "-m",
            kf.to_str().unwrap(),
            "-q",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
        ],
        b"pw\n",
        &["is not a secure key"],
    );
}

#[test]
fn questions_without_a_terminal_need_batch_mode() {
    let f = Fixture::new();
    let img = f.format("v.img", true);
    f.load_new();
    let o = f.run(&["reencipher", p(&img), "--staged"], b"disk1pw\n");
    assert!(o.status.success(), "{}", stderr(&o));
    // A second --staged would cancel the pending one: it must ask, and without -q it cannot.
    refused(
        &f,
        &img,
        &["reencipher", p(&img), "--staged"],
        b"disk1pw\n",
        &["Do you want to cancel it", "-q/--batch-mode"],
    );
}
