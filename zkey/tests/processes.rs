//! Separate processes (this test binary re-run as workers) share one repository: the
//! exclusive lock must serialise their read-modify-write of one key and lose no new key.

use std::process::{Command, Stdio};
use std::time::Duration;

use zkey::{KeyName, KeyProperties, Repository, VolumeType};

const REPO_ENV: &str = "ZKEY_TEST_WORKER_REPO";
const ID_ENV: &str = "ZKEY_TEST_WORKER_ID";
const WORKERS: usize = 4;
const ROUNDS: usize = 8;
const WAIT: Duration = Duration::from_secs(30);

fn name(s: &str) -> KeyName {
    KeyName::new(s).unwrap()
}

/// The worker body; does nothing unless started by `processes_exclude_each_other`.
#[test]
#[ignore = "run as a child process by processes_exclude_each_other"]
fn worker() {
    let (Ok(path), Ok(id)) = (std::env::var(REPO_ENV), std::env::var(ID_ENV)) else {
        return;
    };
    let repo = Repository::open(path).unwrap();
    for r in 0..ROUNDS {
        let w = repo.write(WAIT).unwrap();
        let props = KeyProperties {
            volume_type: VolumeType::Plain,
            ..KeyProperties::default()
        };
        w.create_key(&name(&format!("p{id}-{r}")), b"key", &props, None)
            .unwrap();
        let counter = name("counter");
        let mut p = w.entry(&counter).unwrap().properties;
        let n: usize = p.other("count").unwrap().parse().unwrap();
        std::thread::sleep(Duration::from_millis(2));
        p.set_other("count", &(n + 1).to_string()).unwrap();
        w.write_info(&counter, &p).unwrap();
    }
}

#[test]
fn processes_exclude_each_other() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("repo");
    let repo = Repository::create(&path).unwrap();
    {
        let w = repo.write(WAIT).unwrap();
        let mut p = KeyProperties::default();
        p.set_other("count", "0").unwrap();
        w.create_key(&name("counter"), b"key", &p, None).unwrap();
    }
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..WORKERS)
        .map(|i| {
            Command::new(&exe)
                .args(["--exact", "worker", "--ignored", "--test-threads=1"])
                .env(REPO_ENV, &path)
                .env(ID_ENV, i.to_string())
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success(), "a worker failed");
    }
    let r = repo.read(WAIT).unwrap();
    assert_eq!(r.list_names().unwrap().len(), WORKERS * ROUNDS + 1);
    let p = r.entry(&name("counter")).unwrap().properties;
    assert_eq!(
        p.other("count"),
        Some((WORKERS * ROUNDS).to_string().as_str())
    );
}
