//! Real traffic for the fuzz targets `kmip_ttlv`, `plugin_request` and `plugin_response`: a
//! repository bound to PyKMIP (the failpoint build of the plug-in, which saves every TTLV
//! response it receives in `$ZKEY_KMIP_CAPTURE_DIR`) generates, lists, refreshes, re-enciphers
//! and removes keys, while a `tee` wrapper records the JSON lines between zkey and the plug-in.
//! Every captured response must decode, encode back to the same bytes and read as the answer
//! to the operations it was for; every line must parse on the side that reads it.
//!
//! With `ZKEY_FUZZ_SEEDS_OUT=DIR` the secret-free ones are also written to `DIR/<target>/`; the
//! seed corpora in `fuzz/corpus/` were made so (`ZKEY_FUZZ_SEEDS_OUT=$PWD/fuzz/corpus cargo test
//! -p tests --test kms_fuzz_seeds`). Every key in this run is a throwaway (a fresh simulator and
//! a fresh PyKMIP database), and still what carries key material is left out: `Get` responses
//! (a wrapped volume key) and lines with a secure key or token (a long hex string).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;

use kms_plugin::kmip::ttlv::Item;
use kms_plugin::kmip::{read_response, Operation};
use tests::{failpoint_bin_dir, KmipServer, World};

const CCA: &str = "08.002f,09.002f";

fn operation(name: &str) -> Operation {
    use Operation::*;
    [
        Create,
        Register,
        Locate,
        Get,
        GetAttributes,
        AddAttribute,
        ModifyAttribute,
        DeleteAttribute,
        Activate,
        Revoke,
        Destroy,
        Query,
        DiscoverVersions,
    ]
    .into_iter()
    .find(|o| format!("{o:?}") == name)
    .unwrap_or_else(|| panic!("unknown operation {name}"))
}

/// Whether `text` holds a run of 64 or more hex digits: a secure key, a token, a key part.
fn has_key_material(text: &str) -> bool {
    let mut run = 0;
    for b in text.bytes() {
        run = if b.is_ascii_hexdigit() { run + 1 } else { 0 };
        if run >= 64 {
            return true;
        }
    }
    false
}

#[test]
fn real_kmip_and_plugin_traffic_parses_and_makes_the_seed_corpora() {
    let srv = KmipServer::start();
    let mut w = World::with_bins(failpoint_bin_dir());
    let capture = w.root.join("ttlv");
    fs::create_dir(&capture).unwrap();
    w.set_env("ZKEY_KMIP_CAPTURE_DIR", &capture);
    w.bind_kmip(&srv, CCA);

    // From here on every session of the plug-in goes through a recorder.
    let lines = w.root.join("lines");
    fs::create_dir(&lines).unwrap();
    let wrapper = w.root.join("recorded-kmip");
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\ntee -a '{0}/requests' | '{1}' | tee -a '{0}/responses'\n",
            lines.display(),
            failpoint_bin_dir().join("zkey-kms-kmip").display()
        ),
    )
    .unwrap();
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(
        w.root.join("kms-plugins.conf"),
        format!("KMIP={}\n", wrapper.display()),
    )
    .unwrap();

    w.ok("zkey", &["kms", "info"]);
    w.ok("zkey", &["generate", "-N", "k1", "-d", "seed"]);
    w.ok(
        "zkey",
        &[
            "generate",
            "-N",
            "k2",
            "--xts",
            "--volume-type",
            "plain",
            "--volumes",
            "/dev/seed:enc-seed",
            "--no-volume-check",
        ],
    );
    w.ok("zkey", &["kms", "list"]);
    w.ok("zkey", &["kms", "refresh"]);
    w.load_new(CCA, "aes");
    w.ok("zkey", &["kms", "reencipher", "--to-new", "--staged"]);
    w.ok("zkey", &["remove", "-N", "k1", "--force"]);

    let out_dir = std::env::var_os("ZKEY_FUZZ_SEEDS_OUT").map(std::path::PathBuf::from);
    let save = |target: &str, name: &str, data: &[u8]| {
        if let Some(d) = &out_dir {
            let dir = d.join(target);
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join(name), data).unwrap();
        }
    };

    // TTLV: one seed per kind of response (the first one of each), none that carries a key.
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    let mut files: Vec<_> = fs::read_dir(&capture)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 10, "only {} responses captured", files.len());
    for f in &files {
        let data = fs::read(f).unwrap();
        let name = f.file_name().unwrap().to_str().unwrap().to_string();
        let ops_part = name
            .trim_end_matches(".ttlv")
            .splitn(3, '-')
            .nth(2)
            .expect("PID-SEQ-OPERATIONS.ttlv");
        let ops: Vec<Operation> = ops_part.split('+').map(operation).collect();
        let item = Item::decode(&data).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(item.encode().unwrap(), data, "{name} re-encodes");
        let results = read_response(&data, &ops).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(results.len(), ops.len(), "{name}");
        let n = kinds.entry(ops_part.to_string()).or_default();
        *n += 1;
        if *n == 1 && !ops.contains(&Operation::Get) {
            save(
                "kmip_ttlv",
                &format!("pykmip-{}", ops_part.to_lowercase()),
                &data,
            );
        }
    }
    for needed in [
        "DiscoverVersions",
        "Create",
        "GetAttributes",
        "Locate",
        "Revoke",
    ] {
        assert!(
            kinds.keys().any(|k| k.split('+').any(|o| o == needed)),
            "no {needed} response captured: {kinds:?}"
        );
    }

    // JSON lines: each side reads what the other wrote.
    let requests = fs::read_to_string(lines.join("requests")).unwrap();
    let responses = fs::read_to_string(lines.join("responses")).unwrap();
    let mut seen = BTreeMap::new();
    for line in requests.lines() {
        let r: zkey_kms_protocol::Request =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        let op = serde_json::to_value(&r).unwrap()["op"]
            .as_str()
            .unwrap()
            .to_string();
        if !has_key_material(line) && seen.insert(op.clone(), ()).is_none() {
            save(
                "plugin_request",
                &format!("zkey-{op}"),
                format!("{line}\n").as_bytes(),
            );
        }
    }
    assert!(
        seen.contains_key("hello") && seen.contains_key("list_keys"),
        "{seen:?}"
    );
    let mut saved = std::collections::BTreeSet::new();
    for (i, line) in responses.lines().enumerate() {
        let (result, _notices) = zkey_kms_protocol::parse_response::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("{line}: {e}"));
        let kind = if result.is_ok() { "ok" } else { "error" };
        if !has_key_material(line) && saved.insert(line) {
            save(
                "plugin_response",
                &format!("kmip-{i:02}-{kind}"),
                format!("{line}\n").as_bytes(),
            );
        }
    }
    assert!(saved.len() >= 5, "only {} key-free responses", saved.len());
    // A whole session, as a plug-in reads it: the first few requests, key-free.
    let session: String = requests
        .lines()
        .filter(|l| !has_key_material(l))
        .take(6)
        .map(|l| format!("{l}\n"))
        .collect();
    save("plugin_request", "zkey-session", session.as_bytes());
}
