use super::*;
use crate::properties::Properties;
use std::sync::{Arc, Barrier};

const WAIT: Duration = Duration::from_secs(10);

fn name(s: &str) -> KeyName {
    KeyName::new(s).unwrap()
}

fn new_repo() -> (tempfile::TempDir, Repository) {
    let d = tempfile::tempdir().unwrap();
    let repo = Repository::create(d.path().join("repo")).unwrap();
    (d, repo)
}

fn props(description: &str) -> KeyProperties {
    KeyProperties {
        cipher: Some("paes".into()),
        iv_mode: Some("plain64".into()),
        description: Some(description.into()),
        volume_type: VolumeType::Luks2,
        ..KeyProperties::default()
    }
}

fn dir_names(repo: &Repository) -> BTreeSet<String> {
    fs::read_dir(repo.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

#[test]
fn create_and_read_round_trip() {
    let (_d, repo) = new_repo();
    let w = repo.write(WAIT).unwrap();
    let k = name("disk1");
    w.create_key(
        &k,
        b"SECURE-KEY-BYTES",
        &props("payroll"),
        Some(DummyPassphrase::Generate),
    )
    .unwrap();
    let e = w.entry(&k).unwrap();
    assert_eq!(e.secure_key, b"SECURE-KEY-BYTES");
    assert_eq!(e.properties.description.as_deref(), Some("payroll"));
    assert!(e.properties.creation_time.is_some());
    assert!(e.staged.is_none());
    assert!(e.has_pass);
    assert_eq!(w.read_pass(&k).unwrap().len(), DUMMY_PASSPHRASE_LEN);
    assert_eq!(w.list_names().unwrap(), vec![k.clone()]);
    drop(w);

    // A reader in a new "process" (new Repository) sees the same.
    let again = Repository::open(repo.path()).unwrap();
    let r = again.read(WAIT).unwrap();
    assert_eq!(r.entry(&k).unwrap().secure_key, b"SECURE-KEY-BYTES");
    assert!(matches!(
        r.entry(&name("nope")),
        Err(RepoError::KeyNotFound { .. })
    ));
}

#[test]
fn write_info_sets_update_time_and_keeps_unknown_properties() {
    let (_d, repo) = new_repo();
    let w = repo.write(WAIT).unwrap();
    let k = name("k");
    let mut p = props("one");
    p.set_other("digest", "sha256").unwrap();
    w.create_key(&k, b"key", &p, Some(DummyPassphrase::Generate))
        .unwrap();
    let mut p = w.entry(&k).unwrap().properties;
    assert!(p.update_time.is_none());
    p.description = Some("two".into());
    w.write_info(&k, &p).unwrap();
    let got = w.entry(&k).unwrap().properties;
    assert_eq!(got.description.as_deref(), Some("two"));
    assert_eq!(got.other("digest"), Some("sha256"));
    assert!(got.update_time.is_some());
    assert!(w.entry(&k).unwrap().has_pass);

    // Leaving LUKS2 drops the dummy passphrase.
    let mut p = got;
    p.volume_type = VolumeType::Plain;
    w.write_info(&k, &p).unwrap();
    assert!(!w.entry(&k).unwrap().has_pass);
    assert!(!repo.key_file(&k, KeyFile::Pass).exists());
}

#[test]
fn create_refuses_existing_or_partial_names_and_bad_input() {
    let (_d, repo) = new_repo();
    let w = repo.write(WAIT).unwrap();
    let k = name("k");
    w.create_key(&k, b"key", &props("x"), None).unwrap();
    assert!(matches!(
        w.create_key(&k, b"other", &props("y"), None),
        Err(RepoError::KeyExists { .. })
    ));
    assert_eq!(w.entry(&k).unwrap().secure_key, b"key");
    // Only a stray .pass: still refused, nothing overwritten.
    let stray = name("stray");
    fs::write(repo.key_file(&stray, KeyFile::Pass), b"p").unwrap();
    assert!(matches!(
        w.create_key(&stray, b"key", &props("x"), None),
        Err(RepoError::KeyExists { .. })
    ));
    assert!(!repo.key_file(&stray, KeyFile::Skey).exists());

    let fresh = name("fresh");
    assert!(matches!(
        w.create_key(&fresh, b"", &props("x"), None),
        Err(RepoError::Empty { .. })
    ));
    let mut plain = props("x");
    plain.volume_type = VolumeType::Plain;
    assert!(matches!(
        w.create_key(&fresh, b"k", &plain, Some(DummyPassphrase::Generate)),
        Err(RepoError::PassphraseNeedsLuks2 { .. })
    ));
    let mut bad = props("x");
    bad.description = Some("a\nb".into());
    assert!(matches!(
        w.create_key(&fresh, b"k", &bad, None),
        Err(RepoError::Properties { .. })
    ));
    // None of the failures left a file behind.
    assert!(!dir_names(&repo).iter().any(|f| f.starts_with("fresh")));
}

#[test]
fn hash_tamper_is_reported_as_damage() {
    let (_d, repo) = new_repo();
    let w = repo.write(WAIT).unwrap();
    let k = name("k");
    w.create_key(&k, b"key", &props("payroll"), None).unwrap();
    let path = repo.key_file(&k, KeyFile::Info);
    let text = fs::read_to_string(&path).unwrap();
    fs::write(&path, text.replace("payroll", "payrolX")).unwrap();
    match w.entry(&k) {
        Err(RepoError::Damaged(d)) => assert_eq!(d.damage, vec![Damage::HashMismatch]),
        other => panic!("tampered key accepted: {other:?}"),
    }
    // Damaged keys are not changed either.
    assert!(matches!(
        w.write_skey(&k, b"new"),
        Err(RepoError::Damaged(_))
    ));
    assert_eq!(fs::read(repo.key_file(&k, KeyFile::Skey)).unwrap(), b"key");
}

#[test]
fn entries_report_every_damage_kind_next_to_healthy_keys() {
    let (_d, repo) = new_repo();
    let w = repo.write(WAIT).unwrap();
    for n in ["a", "b", "c", "d", "e", "f", "g"] {
        w.create_key(&name(n), b"key", &props(n), None).unwrap();
    }
    let path = |n: &str, f| repo.key_file(&name(n), f);
    fs::remove_file(path("c", KeyFile::Skey)).unwrap();
    fs::remove_file(path("d", KeyFile::Info)).unwrap();
    let info = fs::read_to_string(path("e", KeyFile::Info)).unwrap();
    fs::write(path("e", KeyFile::Info), info.replace("=e\n", "=E\n")).unwrap();
    let mut p = Properties::new();
    p.set("sector-size", "513").unwrap();
    fs::write(path("f", KeyFile::Info), p.render()).unwrap();
    fs::write(path("g", KeyFile::Skey), b"").unwrap();
    fs::write(path("h", KeyFile::Renc), b"staged").unwrap();
    fs::write(path("i", KeyFile::Pass), b"pass").unwrap();
    // Not keys: hidden files, other extensions, directories.
    fs::write(repo.path().join(".x.skey.tmp.1"), b"").unwrap();
    fs::write(repo.path().join("notes.txt"), b"").unwrap();
    fs::create_dir(repo.path().join("KMIP.skey")).unwrap();

    let entries = w.entries().unwrap();
    let mut healthy = Vec::new();
    let mut damaged = Vec::new();
    for e in entries {
        match e {
            Ok(k) => healthy.push(k.name.to_string()),
            Err(d) => damaged.push((d.name.to_string(), d.damage)),
        }
    }
    assert_eq!(healthy, vec!["a", "b"]);
    let expect = |n: &str| damaged.iter().find(|(d, _)| d == n).unwrap().1.clone();
    assert_eq!(expect("c"), vec![Damage::MissingSkey]);
    assert_eq!(expect("d"), vec![Damage::MissingInfo]);
    assert_eq!(expect("e"), vec![Damage::HashMismatch]);
    assert!(matches!(
        expect("f").as_slice(),
        [Damage::UnparsableInfo(PropertiesError::InvalidValue { .. })]
    ));
    assert_eq!(expect("g"), vec![Damage::EmptySkey]);
    assert_eq!(
        expect("h"),
        vec![Damage::MissingSkey, Damage::MissingInfo, Damage::OrphanRenc]
    );
    assert_eq!(
        expect("i"),
        vec![Damage::MissingSkey, Damage::MissingInfo, Damage::OrphanPass]
    );
    assert_eq!(damaged.len(), 7);

    // The recovery path: remove --force clears each damaged key, healthy ones stay.
    for (n, _) in &damaged {
        w.remove_key(&name(n)).unwrap();
    }
    let left: Vec<String> = w
        .entries()
        .unwrap()
        .into_iter()
        .map(|e| e.unwrap().name.to_string())
        .collect();
    assert_eq!(left, vec!["a", "b"]);
}

#[test]
fn interrupted_create_leaves_a_reported_partial_key_that_remove_clears() {
    let (_d, repo) = new_repo();
    let w = repo.write(WAIT).unwrap();
    let k = name("k");
    // Simulate a crash after the first step of create_key: .skey written, .info not.
    repo.write_file(&repo.key_file(&k, KeyFile::Skey), b"key")
        .unwrap();
    assert!(matches!(w.entry(&k), Err(RepoError::Damaged(_))));
    assert!(matches!(
        w.create_key(&k, b"key", &props("x"), None),
        Err(RepoError::KeyExists { .. })
    ));
    w.remove_key(&k).unwrap();
    w.create_key(&k, b"key", &props("x"), None).unwrap();
    assert!(w.entry(&k).is_ok());
}

#[test]
fn file_modes_and_group_follow_the_directory() {
    let (_d, repo) = new_repo();
    let dir_meta = fs::metadata(repo.path()).unwrap();
    assert_eq!(dir_meta.mode() & 0o7777, NEW_REPOSITORY_MODE);
    let check = |repo: &Repository, mode: u32, gid: u32| {
        let w = repo.write(WAIT).unwrap();
        let k = name("m");
        let _ = w.remove_key(&k);
        w.create_key(&k, b"key", &props("x"), Some(DummyPassphrase::Generate))
            .unwrap();
        w.write_staged(&k, b"staged").unwrap();
        for f in KeyFile::ALL {
            let m = fs::metadata(repo.key_file(&k, f)).unwrap();
            assert_eq!(m.mode() & 0o7777, mode, "{f}");
            assert_eq!(m.gid(), gid, "{f}");
        }
    };
    check(&repo, 0o660, dir_meta.gid());

    // A directory with another mode and group (no setgid bit): files follow it explicitly.
    // Needs the right to chown to a foreign group, i.e. root, as these tests run.
    let foreign_gid = 54321;
    fs::set_permissions(repo.path(), fs::Permissions::from_mode(0o750)).unwrap();
    if std::os::unix::fs::chown(repo.path(), None, Some(foreign_gid)).is_ok() {
        let repo = Repository::open(repo.path()).unwrap();
        assert_eq!(repo.file_mode(), 0o640);
        check(&repo, 0o640, foreign_gid);
    }
}

#[test]
fn open_rejects_bad_directories() {
    let d = tempfile::tempdir().unwrap();
    assert!(matches!(
        Repository::open(d.path().join("missing")),
        Err(RepoError::Missing { .. })
    ));
    let file = d.path().join("file");
    fs::write(&file, b"").unwrap();
    assert!(matches!(
        Repository::open(&file),
        Err(RepoError::NotADirectory { .. })
    ));
    let open = d.path().join("open");
    fs::create_dir(&open).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
    let err = Repository::open(&open).unwrap_err();
    assert!(matches!(err, RepoError::WorldWritable { mode: 0o777, .. }));
    assert!(err.to_string().contains("chmod o-w"));
    let (_d2, repo) = new_repo();
    assert!(matches!(
        Repository::create(repo.path()),
        Err(RepoError::AlreadyExists { .. })
    ));
}

#[test]
fn atomic_replace_leaves_no_temporary_files() {
    let (_d, repo) = new_repo();
    let w = repo.write(WAIT).unwrap();
    let k = name("k");
    w.create_key(&k, b"v0", &props("x"), Some(DummyPassphrase::Generate))
        .unwrap();
    for i in 0..20 {
        w.write_skey(&k, format!("v{i}").as_bytes()).unwrap();
        w.write_staged(&k, b"s").unwrap();
        let p = w.entry(&k).unwrap().properties;
        w.write_info(&k, &p).unwrap();
        w.write_pass(&k, DummyPassphrase::Generate).unwrap();
    }
    let expected: BTreeSet<String> = [".lock", "k.skey", "k.info", "k.renc", "k.pass"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(dir_names(&repo), expected);
    assert_eq!(w.entry(&k).unwrap().secure_key, b"v19");
}

#[test]
fn concurrent_writers_lose_nothing() {
    let (_d, repo) = new_repo();
    let counter = name("counter");
    {
        let w = repo.write(WAIT).unwrap();
        let mut p = props("counter");
        p.set_other("count", "0").unwrap();
        w.create_key(&counter, b"key", &p, None).unwrap();
    }
    const THREADS: usize = 8;
    const ROUNDS: usize = 10;
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let path = repo.path().to_path_buf();
            let barrier = barrier.clone();
            let counter = counter.clone();
            std::thread::spawn(move || {
                // Each thread opens the repository on its own, like a separate process.
                let repo = Repository::open(&path).unwrap();
                barrier.wait();
                for r in 0..ROUNDS {
                    let w = repo.write(WAIT).unwrap();
                    w.create_key(&name(&format!("t{t}-r{r}")), b"key", &props("x"), None)
                        .unwrap();
                    // Read-modify-write: only correct if writers exclude each other.
                    let mut p = w.entry(&counter).unwrap().properties;
                    let n: usize = p.other("count").unwrap().parse().unwrap();
                    std::thread::yield_now();
                    p.set_other("count", &(n + 1).to_string()).unwrap();
                    w.write_info(&counter, &p).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let r = repo.read(WAIT).unwrap();
    assert_eq!(r.list_names().unwrap().len(), THREADS * ROUNDS + 1);
    let count = r.entry(&counter).unwrap().properties;
    assert_eq!(
        count.other("count"),
        Some((THREADS * ROUNDS).to_string().as_str())
    );
    assert!(r.entries().unwrap().iter().all(Result::is_ok));
}

#[test]
fn busy_after_the_wait() {
    let (_d, repo) = new_repo();
    let held = repo.write(WAIT).unwrap();
    let wait = Duration::from_millis(200);
    let start = Instant::now();
    let err = repo.read(wait).unwrap_err();
    assert!(start.elapsed() >= wait);
    match &err {
        RepoError::Busy { lock, waited } => {
            assert_eq!(lock, &repo.path().join(LOCK_FILE));
            assert!(*waited >= wait);
        }
        other => panic!("expected Busy, got {other:?}"),
    }
    assert!(err.to_string().contains("another zkey process"));
    assert!(matches!(
        repo.write(Duration::ZERO),
        Err(RepoError::Busy { .. })
    ));
    drop(held);
    // Readers share.
    let r1 = repo.read(Duration::ZERO).unwrap();
    let _r2 = repo.read(Duration::ZERO).unwrap();
    assert!(matches!(
        repo.write(Duration::from_millis(20)),
        Err(RepoError::Busy { .. })
    ));
    drop(r1);
}

#[test]
fn waiting_writer_gets_the_lock_when_it_is_released() {
    let (_d, repo) = new_repo();
    let held = repo.write(WAIT).unwrap();
    let path = repo.path().to_path_buf();
    let h = std::thread::spawn(move || {
        let repo = Repository::open(&path).unwrap();
        repo.write(Duration::from_secs(5)).map(|_| ())
    });
    std::thread::sleep(Duration::from_millis(100));
    drop(held);
    h.join().unwrap().unwrap();
}

#[test]
fn rename_moves_every_file() {
    let (_d, repo) = new_repo();
    let w = repo.write(WAIT).unwrap();
    let (a, b) = (name("a"), name("b"));
    w.create_key(&a, b"key", &props("x"), Some(DummyPassphrase::Generate))
        .unwrap();
    w.write_staged(&a, b"staged").unwrap();
    let before = w.entry(&a).unwrap();
    let pass = w.read_pass(&a).unwrap();
    w.rename_key(&a, &b).unwrap();
    assert!(matches!(w.entry(&a), Err(RepoError::KeyNotFound { .. })));
    let after = w.entry(&b).unwrap();
    assert_eq!(after.secure_key, before.secure_key);
    assert_eq!(after.properties, before.properties);
    assert_eq!(after.staged.as_deref(), Some(&b"staged"[..]));
    assert_eq!(w.read_pass(&b).unwrap(), pass);
    // Refuses to overwrite.
    w.create_key(&a, b"other", &props("y"), None).unwrap();
    assert!(matches!(
        w.rename_key(&a, &b),
        Err(RepoError::KeyExists { .. })
    ));
    assert_eq!(w.entry(&b).unwrap().secure_key, b"key");
}

#[test]
fn rename_rolls_back_when_a_file_fails() {
    let (_d, repo) = new_repo();
    let w = repo.write(WAIT).unwrap();
    let (a, b) = (name("a"), name("b"));
    w.create_key(&a, b"key", &props("x"), Some(DummyPassphrase::Generate))
        .unwrap();
    w.write_staged(&a, b"staged").unwrap();
    let before = w.entry(&a).unwrap();
    let calls = std::cell::Cell::new(0);
    let err = w
        .rename_with(&a, &b, |from, to| {
            calls.set(calls.get() + 1);
            if calls.get() == 3 {
                Err(io::Error::other("injected failure"))
            } else {
                fs::hard_link(from, to)
            }
        })
        .unwrap_err();
    assert!(matches!(err, RepoError::Io { .. }), "{err:?}");
    assert_eq!(calls.get(), 3);
    assert_eq!(w.entry(&a).unwrap(), before);
    assert!(!dir_names(&repo).iter().any(|f| f.starts_with("b.")));
}

#[test]
fn copy_copies_the_passphrase_not_the_key_into_pass() {
    let (_d, repo) = new_repo();
    let w = repo.write(WAIT).unwrap();
    let (a, b) = (name("a"), name("b"));
    let pass = Zeroizing::new(b"my dummy passphrase".to_vec());
    w.create_key(
        &a,
        b"SECURE",
        &props("x"),
        Some(DummyPassphrase::Given(pass)),
    )
    .unwrap();
    w.write_staged(&a, b"staged").unwrap();
    let mut p = w.entry(&a).unwrap().properties;
    p.volumes.clear();
    w.copy_key(&a, &b, &p).unwrap();
    let copy = w.entry(&b).unwrap();
    assert_eq!(copy.secure_key, b"SECURE");
    assert_eq!(&w.read_pass(&b).unwrap()[..], b"my dummy passphrase");
    assert!(copy.staged.is_none());
    assert!(w.entry(&a).is_ok());
}

#[test]
fn promote_staged_converges_after_a_crash_at_any_step() {
    let (_d, repo) = new_repo();
    let k = name("k");
    let setup = |w: &Writer| {
        let _ = w.remove_key(&k);
        w.create_key(&k, b"OLD", &props("x"), None).unwrap();
        w.write_staged(&k, b"NEW").unwrap();
    };
    let finish = |w: &Writer| {
        // The re-run: read, (verify), promote.
        let e = w.entry(&k).unwrap();
        let staged = e.staged.clone().expect("still staged after a crash");
        assert_eq!(
            w.promote_staged(&k, &staged, &e.properties).unwrap(),
            Promotion::Promoted
        );
        let e = w.entry(&k).unwrap();
        assert_eq!(e.secure_key, b"NEW");
        assert!(e.staged.is_none());
        assert!(e.properties.reencipher_time.is_some());
        assert!(!repo.key_file(&k, KeyFile::Renc).exists());
        // And again: nothing left to do.
        assert_eq!(
            w.promote_staged(&k, b"NEW", &e.properties).unwrap(),
            Promotion::NothingStaged
        );
        assert_eq!(w.entry(&k).unwrap().secure_key, b"NEW");
    };
    let w = repo.write(WAIT).unwrap();

    // No crash.
    setup(&w);
    finish(&w);
    // Crash after step 1 (.skey replaced).
    setup(&w);
    w.write_skey(&k, b"NEW").unwrap();
    finish(&w);
    // Crash after step 2 (.skey and .info written, .renc still there).
    setup(&w);
    w.write_skey(&k, b"NEW").unwrap();
    let mut p = w.entry(&k).unwrap().properties;
    p.reencipher_time = Some(Timestamp::now());
    w.write_info(&k, &p).unwrap();
    finish(&w);

    // A staged key that is not the verified one is refused, and nothing changes.
    setup(&w);
    let e = w.entry(&k).unwrap();
    assert!(matches!(
        w.promote_staged(&k, b"SOMETHING ELSE", &e.properties),
        Err(RepoError::StagedChanged { .. })
    ));
    assert_eq!(w.entry(&k).unwrap().secure_key, b"OLD");
    assert!(w.remove_staged(&k).unwrap());
    assert!(!w.remove_staged(&k).unwrap());
}

#[test]
fn passphrase_edits() {
    let (_d, repo) = new_repo();
    let w = repo.write(WAIT).unwrap();
    let k = name("k");
    w.create_key(&k, b"key", &props("x"), None).unwrap();
    assert!(matches!(
        w.read_pass(&k),
        Err(RepoError::NoPassphrase { .. })
    ));
    w.write_pass(&k, DummyPassphrase::Given(Zeroizing::new(b"pw".to_vec())))
        .unwrap();
    assert_eq!(&w.read_pass(&k).unwrap()[..], b"pw");
    assert!(w.remove_pass(&k).unwrap());
    assert!(!w.remove_pass(&k).unwrap());
    let mut p = w.entry(&k).unwrap().properties;
    p.volume_type = VolumeType::Plain;
    w.write_info(&k, &p).unwrap();
    assert!(matches!(
        w.write_pass(&k, DummyPassphrase::Generate),
        Err(RepoError::PassphraseNeedsLuks2 { .. })
    ));
}

#[test]
fn default_path_honours_the_environment_variable() {
    // Only reads the variable; asserting the fallback keeps the test free of env mutation.
    match std::env::var_os(REPOSITORY_ENV) {
        Some(v) if !v.is_empty() => assert_eq!(default_path(), PathBuf::from(v)),
        _ => assert_eq!(default_path(), PathBuf::from(DEFAULT_REPOSITORY)),
    }
}

#[test]
fn group_lookup_and_lock_file_permissions() {
    assert_eq!(group_id("root"), Some(0));
    assert_eq!(group_id("no-such-group-zkey-test"), None);
    assert_eq!(group_id("bad\0name"), None);
    let (_d, repo) = new_repo();
    // The lock file is usable by the whole group, not ap-sim's default 0600.
    let m = fs::metadata(repo.path().join(LOCK_FILE)).unwrap();
    assert_eq!(m.mode() & 0o7777, repo.file_mode());
    assert_eq!(m.gid(), fs::metadata(repo.path()).unwrap().gid());
}

#[test]
fn an_authenticated_repository_upgrades_old_files_once_and_refuses_swapped_ones() {
    let d = tempfile::tempdir().unwrap();
    let sim =
        ap_sim::sim::Simulator::init(d.path().join("sim"), &ap_sim::sim::Layout::default(), false)
            .unwrap();
    // Written without an adapter: the old format.
    let plain = Repository::create(d.path().join("repo")).unwrap();
    let (a, b) = (name("a"), name("b"));
    {
        let w = plain.write(WAIT).unwrap();
        w.create_key(&a, b"key a", &props("a"), None).unwrap();
        w.create_key(&b, b"key b", &props("b"), None).unwrap();
    }
    let info = |k: &KeyName| fs::read_to_string(plain.key_file(k, KeyFile::Info)).unwrap();
    assert!(!info(&a).contains("__mac__"));
    let repo = plain.clone().authenticated_by(Arc::new(sim));
    assert_eq!(
        repo.read(WAIT).unwrap().entry(&a).unwrap().integrity,
        Integrity::OldFormat
    );
    // A writer that changes nothing leaves the format alone; its first change gives every
    // file its MAC.
    drop(repo.write(WAIT).unwrap());
    assert!(!info(&a).contains("__mac__"));
    repo.write(WAIT).unwrap().changing().unwrap();
    assert!(info(&a).contains("\n__mac__=") && info(&b).contains("\n__mac__="));
    let r = repo.read(WAIT).unwrap();
    assert_eq!(r.entry(&a).unwrap().integrity, Integrity::Verified);
    drop(r);
    // Without the adapter it is only "not verified", never damaged.
    let e = plain.read(WAIT).unwrap().entry(&a).unwrap();
    assert!(matches!(e.integrity, Integrity::NotVerified(_)));
    // A's properties under b's name: the MAC covers the name.
    let (ia, ib) = (info(&a), info(&b));
    fs::write(plain.key_file(&a, KeyFile::Info), &ib).unwrap();
    fs::write(plain.key_file(&b, KeyFile::Info), &ia).unwrap();
    let r = repo.read(WAIT).unwrap();
    for k in [&a, &b] {
        match r.entry(k) {
            Err(RepoError::Damaged(d)) => assert_eq!(d.damage, vec![Damage::BadMac]),
            other => panic!("{other:?}"),
        }
    }
    drop(r);
    // Back in place, and then the old format again: a downgrade, refused.
    fs::write(plain.key_file(&a, KeyFile::Info), &ia).unwrap();
    fs::write(plain.key_file(&b, KeyFile::Info), &ib).unwrap();
    let mut p = Properties::parse(ia.as_bytes()).unwrap();
    p.set_mac(None);
    fs::write(plain.key_file(&a, KeyFile::Info), p.render()).unwrap();
    let r = repo.read(WAIT).unwrap();
    assert!(r.entry(&b).is_ok());
    match r.entry(&a) {
        Err(RepoError::Damaged(d)) => assert_eq!(d.damage, vec![Damage::MacMissing]),
        other => panic!("{other:?}"),
    }
}
