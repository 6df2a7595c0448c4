//! A second user against root: links planted where root's commands read, append, lock or
//! write (the simulator's state files, the audit logs, the repository's files, an export
//! target in a world-writable directory), a simulator directory others can write or own, and a
//! user who may only read the repository. Root's victim file must come out byte-identical, with
//! its mode and owner, and each refusal must name the problem and the way out.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

use tests::World;

const CCA: &str = "08.002f,09.002f";
/// The attacker: a member of the repository's group, or the owner of a file of the simulator.
const ATTACKER: &str = "zkatk-b";
/// A user who may only read the repository and use the adapters.
const READER: &str = "zkrdr-b";

/// A user (with a group of the same name) for this file's tests; created if missing.
fn user(name: &str) -> (u32, u32) {
    static CREATE: Mutex<()> = Mutex::new(());
    let _g = CREATE.lock().unwrap_or_else(|e| e.into_inner());
    let id = |flag: &str| {
        Command::new("id")
            .args([flag, name])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
    };
    if id("-u").is_none() {
        let _ = Command::new("groupadd").arg(name).status();
        let st = Command::new("useradd")
            .args(["-M", "-N", "-g", name, "-s", "/usr/sbin/nologin", name])
            .status()
            .expect("useradd");
        assert!(st.success(), "useradd {name}");
    }
    (id("-u").expect("uid"), id("-g").expect("gid"))
}

fn root_only() -> bool {
    let uid = fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(1);
    if uid != 0 {
        eprintln!("SKIP: the second-user tests need root");
    }
    uid == 0
}

/// Runs a shell command as `who` (uid, gid), its groups cleared.
fn sh_as(who: (u32, u32), script: &str) -> Output {
    Command::new("setpriv")
        .args([
            &format!("--reuid={}", who.0),
            &format!("--regid={}", who.1),
            "--clear-groups",
            "--",
            "sh",
            "-c",
            script,
        ])
        .output()
        .expect("setpriv")
}

fn sh_ok_as(who: (u32, u32), script: &str) {
    let o = sh_as(who, script);
    assert!(
        o.status.success(),
        "as {who:?}: {script}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Runs one of the world's binaries as `who`, with the world's environment.
fn run_as(w: &World, who: (u32, u32), bin: &str, args: &[&str]) -> Output {
    let c = w.cmd(bin);
    let mut s = Command::new("setpriv");
    s.args([
        &format!("--reuid={}", who.0),
        &format!("--regid={}", who.1),
        "--clear-groups",
        "--",
    ])
    .arg(c.get_program())
    .args(args)
    .env_clear()
    .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    for (k, v) in c.get_envs() {
        match v {
            Some(v) => s.env(k, v),
            None => s.env_remove(k),
        };
    }
    s.output().expect("setpriv")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    )
}

/// Root's file that the attacker wants overwritten, chmodded or chowned.
struct Victim {
    path: PathBuf,
    content: Vec<u8>,
}

impl Victim {
    fn new(w: &World) -> Victim {
        let path = w.root.join("victim");
        let content = b"root's file: must never change\n".to_vec();
        fs::write(&path, &content).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        Victim { path, content }
    }

    fn intact(&self, after: &str) {
        let m = fs::symlink_metadata(&self.path).unwrap();
        assert!(m.is_file(), "{after}: the victim is no longer a file");
        assert_eq!(
            fs::read(&self.path).unwrap(),
            self.content,
            "{after}: the victim's content changed"
        );
        assert_eq!(
            (m.mode() & 0o7777, m.uid(), m.gid()),
            (0o644, 0, 0),
            "{after}: the victim's mode or owner changed"
        );
    }
}

/// A world whose directories the other users can traverse (the temporary root is 0700).
fn world() -> World {
    let w = World::new();
    fs::set_permissions(&w.root, fs::Permissions::from_mode(0o755)).unwrap();
    w
}

fn gen(w: &World, name: &str) {
    w.ok(
        "zkey",
        &["generate", "-N", name, "-a", CCA, "--gen-dummy-passphrase"],
    );
}

/// The repository shared with the attacker's group, as README's "Environment and files" has it
/// (mode 2770, the key administrators' group).
fn share_repository(w: &World, group: u32) {
    for e in fs::read_dir(&w.repo).unwrap() {
        std::os::unix::fs::lchown(e.unwrap().path(), None, Some(group)).unwrap();
    }
    std::os::unix::fs::chown(&w.repo, None, Some(group)).unwrap();
    fs::set_permissions(&w.repo, fs::Permissions::from_mode(0o2770)).unwrap();
}

/// Replaces `name` in `dir` (as the attacker) with a link to the victim.
fn plant(atk: (u32, u32), dir: &Path, name: &str, victim: &Victim) {
    let p = dir.join(name);
    sh_ok_as(
        atk,
        &format!(
            "rm -f '{p}' && ln -s '{v}' '{p}'",
            p = p.display(),
            v = victim.path.display()
        ),
    );
}

#[test]
fn links_a_group_member_plants_in_the_repository_are_refused_and_never_followed() {
    if !root_only() {
        return;
    }
    let atk = user(ATTACKER);
    let w = world();
    let victim = Victim::new(&w);
    gen(&w, "k1");
    gen(&w, "k2");
    share_repository(&w, atk.1);

    // The repository's audit trail: root would truncate a torn "tail" and append to the target.
    let log = w.repo.join("audit.log");
    let saved = w.root.join("audit.log.saved");
    fs::rename(&log, &saved).unwrap();
    plant(atk, &w.repo, "audit.log", &victim);
    let out = w.fails("zkey", &["generate", "-N", "k3", "-a", CCA]);
    assert!(
        out.contains("audit.log is a symbolic link")
            && out.contains("replace it with the real file or remove it"),
        "{out}"
    );
    victim.intact("generate with a linked audit.log");
    fs::rename(&saved, &log).unwrap();

    // A key file: the key is reported damaged, with why, and never read through the link.
    plant(atk, &w.repo, "k1.skey", &victim);
    let out = w.ok("zkey", &["list"]);
    assert!(
        out.contains("DAMAGED") && out.contains("k1.skey is a symbolic link"),
        "{out}"
    );
    let (code, out) = w.code("zkey", &["validate"]);
    assert!(
        code != 0 || out.contains("k1.skey is a symbolic link"),
        "{out}"
    );
    let out = w.fails(
        "zkey",
        &["export", w.root.join("x").to_str().unwrap(), "-N", "k1"],
    );
    assert!(out.contains("k1.skey is a symbolic link"), "{out}");
    assert!(!w.root.join("x").exists());
    // Removing the damaged key removes the link, not its target.
    w.ok("zkey", &["remove", "-N", "k1", "--force"]);
    victim.intact("a linked .skey");

    // The lock file: root would create, open and flock the target.
    let lock = w.repo.join(".lock");
    plant(atk, &w.repo, ".lock", &victim);
    for args in [&["list"][..], &["generate", "-N", "k4", "-a", CCA]] {
        let out = w.fails("zkey", args);
        assert!(out.contains(".lock is a symbolic link"), "{args:?}: {out}");
    }
    victim.intact("a linked .lock");
    fs::remove_file(&lock).unwrap();

    // The KMS binding: root would parse the target as the repository's kms.conf.
    plant(atk, &w.repo, "kms.conf", &victim);
    let out = w.fails("zkey", &["list"]);
    assert!(out.contains("kms.conf is a symbolic link"), "{out}");
    victim.intact("a linked kms.conf");
    fs::remove_file(w.repo.join("kms.conf")).unwrap();

    // Temporary names, predictable or not, are never written through: the write succeeds.
    for n in [
        format!(".k5.skey.tmp.{}", std::process::id()),
        ".k5.info.tmp.0000000000000000".to_string(),
    ] {
        plant(atk, &w.repo, &n, &victim);
    }
    gen(&w, "k5");
    victim.intact("links at temporary names");
    let k5 = fs::symlink_metadata(w.repo.join("k5.skey")).unwrap();
    assert!(k5.is_file() && k5.gid() == atk.1 && k5.mode() & 0o777 == 0o660);
    w.ok("zkey", &["validate", "-N", "k2"]);
}

#[test]
fn an_export_into_a_world_writable_directory_never_writes_through_a_planted_link() {
    if !root_only() {
        return;
    }
    let atk = user(ATTACKER);
    let w = world();
    let victim = Victim::new(&w);
    gen(&w, "k1");
    let public = w.root.join("public");
    fs::create_dir(&public).unwrap();
    fs::set_permissions(&public, fs::Permissions::from_mode(0o1777)).unwrap();
    let out = public.join("k1.skey");
    plant(atk, &public, "k1.skey", &victim);
    let o = out.to_str().unwrap();
    let msg = w.fails("zkey", &["export", o, "-N", "k1"]);
    assert!(
        msg.contains("exists") && msg.contains("--force") && msg.contains("link"),
        "{msg}"
    );
    victim.intact("export onto a link");
    // Forced, the link is replaced by root's own file; its target is untouched.
    w.ok("zkey", &["export", o, "-N", "k1", "--force"]);
    victim.intact("export --force onto a link");
    let m = fs::symlink_metadata(&out).unwrap();
    assert!(m.is_file() && m.uid() == 0 && m.mode() & 0o777 == 0o600);
    assert_eq!(
        fs::read(&out).unwrap(),
        fs::read(w.repo.join("k1.skey")).unwrap()
    );
    // A key file made by generate is never written through a link either.
    let gen_out = public.join("new.skey");
    plant(atk, &public, "new.skey", &victim);
    let msg = w.fails("zkey", &["generate", gen_out.to_str().unwrap()]);
    assert!(msg.contains("exists"), "{msg}");
    victim.intact("generate FILE onto a link");
}

/// The simulator's directory made writable for the attacker's group, who swaps `name` for a
/// link: refused while the directory is writable for others, then (mode fixed as the message
/// says) refused because of the link itself.
fn simulator_link(name: &str, command: &[&str]) {
    let atk = user(ATTACKER);
    let w = world();
    let victim = Victim::new(&w);
    std::os::unix::fs::chown(&w.sim, None, Some(atk.1)).unwrap();
    fs::set_permissions(&w.sim, fs::Permissions::from_mode(0o770)).unwrap();
    let p = w.sim.join(name);
    if p.exists() {
        fs::rename(&p, w.sim.join(format!("{name}.orig"))).unwrap();
    }
    plant(atk, &w.sim, name, &victim);
    let out = w.fails("ap-sim", command);
    assert!(
        out.contains("has mode 0770") && out.contains("chmod go-w"),
        "{name}: {out}"
    );
    victim.intact(name);
    fs::set_permissions(&w.sim, fs::Permissions::from_mode(0o700)).unwrap();
    let out = w.fails("ap-sim", command);
    assert!(
        out.contains(&format!("{name} is a symbolic link"))
            && out.contains("replace it with the real file or remove it"),
        "{name}: {out}"
    );
    victim.intact(name);
}

#[test]
fn a_linked_state_json_is_refused() {
    if root_only() {
        simulator_link("state.json", &["tke", "status"]);
    }
}

#[test]
fn a_linked_sys_generation_is_refused() {
    if root_only() {
        simulator_link("sys.generation", &["tke", "status"]);
    }
}

#[test]
fn a_linked_tke_audit_log_is_refused() {
    if root_only() {
        simulator_link(
            "audit.log",
            &["tke", "load-new", "-a", CCA, "-t", "aes", "--random"],
        );
    }
}

#[test]
fn a_linked_simulator_lock_is_refused() {
    if root_only() {
        simulator_link(".lock", &["tke", "status"]);
    }
}

/// Every file and directory under `dir` with its mode, links left out.
fn modes(dir: &Path, out: &mut Vec<(PathBuf, u32, bool)>) {
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = fs::symlink_metadata(e.path()).unwrap();
        if m.file_type().is_symlink() {
            continue;
        }
        out.push((e.path(), m.mode() & 0o7777, m.is_dir()));
        if m.is_dir() {
            modes(&e.path(), out);
        }
    }
}

#[test]
fn ap_sim_init_under_umask_000_gives_the_kernels_modes() {
    let w = World::new();
    let dir = w.root.join("fresh/sim");
    let bin = w.cmd("ap-sim").get_program().to_owned();
    let o = Command::new("sh")
        .arg("-c")
        .arg("umask 000; exec \"$0\" init --dir \"$1\"")
        .arg(&bin)
        .arg(&dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o7777;
    assert_eq!(mode(&dir), 0o700, "the state directory");
    assert_eq!(mode(&dir.join("state.json")), 0o600);
    assert_eq!(mode(&w.root.join("fresh")), 0o755, "a parent it made");
    let mut all = Vec::new();
    modes(&dir.join("sys"), &mut all);
    // The attributes with a store function in the kernel (ap_bus.c, ap_card.c, ap_queue.c,
    // zcrypt_card.c, zcrypt_queue.c).
    let bus_rw = [
        "ap_domain",
        "apmask",
        "aqmask",
        "poll_thread",
        "poll_timeout",
        "config_time",
    ];
    let card_rw = ["online", "config", "request_count"];
    let queue_rw = ["online", "request_count", "reset"];
    let mut writable = 0;
    for (p, m, is_dir) in &all {
        let rel = p.strip_prefix(dir.join("sys")).unwrap();
        let parts: Vec<&str> = rel.iter().map(|c| c.to_str().unwrap()).collect();
        let name = *parts.last().unwrap();
        let rw = match parts.as_slice() {
            ["bus", "ap", _] => bus_rw.contains(&name),
            ["devices", "ap", _, _] => card_rw.contains(&name),
            ["devices", "ap", _, _, _] => queue_rw.contains(&name),
            _ => false,
        };
        let want = match (is_dir, rw) {
            (true, _) => 0o755,
            (false, true) => 0o644,
            (false, false) => 0o444,
        };
        writable += usize::from(rw && !is_dir);
        assert_eq!(*m, want, "{}: mode {m:04o}", rel.display());
    }
    assert!(
        writable > bus_rw.len() + card_rw.len(),
        "the writable attributes exist"
    );
    assert_eq!(
        mode(&dir.join("sys/devices/ap/card08/08.002f/config")),
        0o444,
        "a queue's config is read-only in the kernel"
    );
    assert_eq!(
        mode(&dir.join("sys/devices/ap/card08/08.002f/mkvps")),
        0o444
    );
}

#[test]
fn a_state_file_or_directory_another_user_owns_is_refused_and_left_alone() {
    if !root_only() {
        return;
    }
    let atk = user(ATTACKER);
    let w = world();
    let state = w.sim.join("state.json");
    let before = fs::read(&state).unwrap();
    // The other user's file, as if they had swapped in one with master keys they know.
    std::os::unix::fs::chown(&state, Some(atk.0), Some(atk.1)).unwrap();
    for args in [
        &["tke", "status"][..],
        &["tke", "load-new", "-a", CCA, "-t", "aes", "--random"],
    ] {
        let out = w.fails("ap-sim", args);
        assert!(
            out.contains("state.json is owned by uid")
                && out.contains(&atk.0.to_string())
                && out.contains("chown"),
            "{args:?}: {out}"
        );
    }
    let out = w.fails("zkey", &["generate", "-N", "k", "-a", CCA]);
    assert!(out.contains("state.json is owned by uid"), "{out}");
    assert_eq!(fs::read(&state).unwrap(), before, "the state is unchanged");
    assert_eq!(fs::metadata(&state).unwrap().uid(), atk.0);
    let out = w.fails("ap-sim", &["init", "--force"]);
    assert!(out.contains("state.json is owned by uid"), "{out}");
    assert_eq!(fs::read(&state).unwrap(), before);

    // Its directory, owned by another user: they could swap the file at any time.
    std::os::unix::fs::chown(&state, Some(0), Some(0)).unwrap();
    w.ok("ap-sim", &["tke", "status"]);
    std::os::unix::fs::chown(&w.sim, Some(atk.0), None).unwrap();
    let out = w.fails("ap-sim", &["tke", "status"]);
    assert!(
        out.contains(&format!("{} is owned by uid {}", w.sim.display(), atk.0)),
        "{out}"
    );
    assert_eq!(fs::read(&state).unwrap(), before);
}

#[test]
fn a_user_who_may_only_read_the_repository_can_list_and_validate_it() {
    if !root_only() {
        return;
    }
    let rdr = user(READER);
    let w = world();
    gen(&w, "k1");
    // The repository readable by the reader's group, not writable by it.
    for e in fs::read_dir(&w.repo).unwrap() {
        std::os::unix::fs::lchown(e.unwrap().path(), None, Some(rdr.1)).unwrap();
    }
    std::os::unix::fs::chown(&w.repo, None, Some(rdr.1)).unwrap();
    fs::set_permissions(&w.repo, fs::Permissions::from_mode(0o2750)).unwrap();
    for f in [".lock", "k1.skey", "k1.info", "k1.pass", "audit.log"] {
        let p = w.repo.join(f);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
    }
    // The adapters (on real hardware, /dev/z90crypt) usable by the reader's group.
    for p in [w.sim.clone(), w.sim.join("state.json"), w.sim.join(".lock")] {
        std::os::unix::fs::chown(&p, None, Some(rdr.1)).unwrap();
    }
    fs::set_permissions(&w.sim, fs::Permissions::from_mode(0o750)).unwrap();
    for f in ["state.json", ".lock"] {
        fs::set_permissions(w.sim.join(f), fs::Permissions::from_mode(0o640)).unwrap();
    }
    let before = w.repo_snapshot();
    let lock_before = fs::read(w.repo.join(".lock")).unwrap();

    let o = run_as(&w, rdr, "zkey", &["list"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("k1"), "{}", text(&o));
    let o = run_as(&w, rdr, "zkey", &["validate"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("1 keys are valid"), "{}", text(&o));
    let o = run_as(&w, rdr, "zkey", &["validate", "-N", "k1", "--json"]);
    assert!(o.status.success(), "{}", text(&o));

    // A change needs write access, and says so.
    let o = run_as(&w, rdr, "zkey", &["generate", "-N", "k2", "-a", CCA]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("can read the repository") && text(&o).contains("but not change it"),
        "{}",
        text(&o)
    );
    let o = run_as(&w, rdr, "zkey", &["remove", "-N", "k1", "--force"]);
    assert!(text(&o).contains("not change it"), "{}", text(&o));
    assert_eq!(w.repo_snapshot(), before, "nothing changed");
    assert_eq!(fs::read(w.repo.join(".lock")).unwrap(), lock_before);
}

#[test]
fn a_linked_directory_in_the_repository_does_not_redirect_roots_writes() {
    if !root_only() {
        return;
    }
    let atk = user(ATTACKER);
    let mut w = world();
    gen(&w, "k1");
    share_repository(&w, atk.1);
    // Root's directory, which the plug-in's bind would chmod 0770 and fill with its files.
    let victim_dir = w.root.join("etc");
    fs::create_dir(&victim_dir).unwrap();
    fs::set_permissions(&victim_dir, fs::Permissions::from_mode(0o755)).unwrap();
    let conf = w.root.join("kms-plugins.conf");
    let plugin = w.cmd("zkey-kms-kmip").get_program().to_owned();
    fs::write(&conf, format!("KMIP={}\n", plugin.to_str().unwrap())).unwrap();
    w.set_env("ZKEY_KMS_PLUGINS", &conf);
    for name in ["KMIP", "mkchange"] {
        sh_ok_as(
            atk,
            &format!(
                "ln -s '{}' '{}'",
                victim_dir.display(),
                w.repo.join(name).display()
            ),
        );
    }
    let out = w.fails("zkey", &["kms", "bind", "KMIP"]);
    assert!(out.contains("KMIP is a symbolic link"), "{out}");
    let out = w.fails("zkey", &["mkchange", "status"]);
    assert!(out.contains("mkchange is a symbolic link"), "{out}");
    let m = fs::metadata(&victim_dir).unwrap();
    assert_eq!((m.mode() & 0o7777, m.uid()), (0o755, 0));
    assert_eq!(
        fs::read_dir(&victim_dir).unwrap().count(),
        0,
        "nothing was written there"
    );
    assert!(!w.repo.join("kms.conf").exists(), "not bound");
}
