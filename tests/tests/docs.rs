//! Man pages and shell completions come from the clap definitions: a page exists for every
//! command and subcommand of every binary, `man -l` renders each, and the completion scripts
//! are valid for their shells.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use tests::bin_dir;

const BINS: &[&str] = &["ap-sim", "zkey", "zkey-cryptsetup"];

fn help(bin: &str, path: &[String]) -> String {
    let o = Command::new(bin_dir().join(bin))
        .args(path)
        .arg("--help")
        .output()
        .unwrap();
    assert!(o.status.success(), "{bin} {path:?} --help");
    String::from_utf8(o.stdout).unwrap()
}

/// Every subcommand path, read from the help texts (not from the generator under test).
fn commands(bin: &str, path: Vec<String>, out: &mut BTreeSet<String>) {
    out.insert(
        std::iter::once(bin.to_string())
            .chain(path.iter().cloned())
            .collect::<Vec<_>>()
            .join("-"),
    );
    let text = help(bin, &path);
    let Some(list) = text.split("Commands:\n").nth(1) else {
        return;
    };
    for line in list.lines().take_while(|l| l.starts_with("  ")) {
        let name = line.split_whitespace().next().unwrap();
        if name != "help" {
            let mut p = path.clone();
            p.push(name.to_string());
            commands(bin, p, out);
        }
    }
}

#[test]
fn a_man_page_for_every_subcommand_that_man_renders() {
    let dir = tempfile::tempdir().unwrap();
    for bin in BINS {
        let o = Command::new(bin_dir().join(bin))
            .args(["--generate", "man", "--generate-dir"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(o.status.success(), "{bin}: {o:?}");
        let mut want = BTreeSet::new();
        commands(bin, Vec::new(), &mut want);
        assert!(want.len() > 3, "{bin}: {want:?}");
        for page in &want {
            let file = dir.path().join(format!("{page}.1"));
            assert!(file.exists(), "no man page {}", file.display());
            if Path::new("/usr/bin/man").exists() {
                let r = Command::new("man")
                    .arg("-l")
                    .arg(&file)
                    .env("MANPAGER", "cat")
                    .env("MANWIDTH", "100")
                    .output()
                    .unwrap();
                let text = String::from_utf8_lossy(&r.stdout);
                assert!(
                    r.status.success() && text.contains("NAME"),
                    "man -l {page}: {r:?}"
                );
            }
        }
    }
}

#[test]
fn completion_scripts_for_bash_zsh_and_fish() {
    for bin in BINS {
        for (kind, shell) in [
            ("complete-bash", "bash"),
            ("complete-zsh", "zsh"),
            ("complete-fish", "fish"),
        ] {
            let o = Command::new(bin_dir().join(bin))
                .args(["--generate", kind])
                .output()
                .unwrap();
            assert!(o.status.success(), "{bin} {kind}");
            let text = String::from_utf8(o.stdout).unwrap();
            assert!(text.contains(bin), "{bin} {kind}: {text}");
            if shell == "bash" {
                // The script parses: bash -n checks its syntax without running it.
                let f = tempfile::NamedTempFile::new().unwrap();
                std::fs::write(f.path(), &text).unwrap();
                let ok = Command::new("bash")
                    .arg("-n")
                    .arg(f.path())
                    .status()
                    .unwrap();
                assert!(ok.success(), "{bin}: the bash completion does not parse");
            }
        }
    }
}
